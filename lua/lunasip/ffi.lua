-- The C functions the lunasip Lua library calls through the LuaJIT FFI (src/lapi.h,
-- src/sip_grammar.h). Inside lunasip they are resolved in the running binary (ffi.C);
-- under busted they come from build/<mode>/liblunasip.so (LUNASIP_LIB).
local ffi = require "ffi"

ffi.cdef [[
struct sip_str { const char *s; uint32_t len; };
struct sip_uri {
  int scheme; int host_type;
  struct sip_str scheme_str, user, password, host, port_str, params, headers, opaque;
  uint16_t port;
};
struct sip_nameaddr {
  struct sip_str display; struct sip_str uri_str; struct sip_uri uri;
  struct sip_str params; struct sip_str tag; int is_star;
};
int sip_uri_parse(const char *s, size_t len, struct sip_uri *out);
int sip_nameaddr_parse(const char *s, size_t len, int allow_star, struct sip_nameaddr *out);
int sip_param_next(const char **p, const char *end, struct sip_str *name, struct sip_str *value);

int lunasip_msg_str(uint32_t h, uint32_t g, int field, const char **p, size_t *len);
int lunasip_msg_int(uint32_t h, uint32_t g, int field, int64_t *out);
int lunasip_msg_header(uint32_t h, uint32_t g, const char *name, size_t nlen, uint64_t *iter,
                       const char **p, size_t *len);
int lunasip_msg_edit(uint32_t h, uint32_t g, int op, const char *name, size_t nlen, const char *v, size_t vlen);
int lunasip_msg_set_header(uint32_t h, uint32_t g, const char *name, size_t nlen, const struct sip_str *vals, size_t n);
int lunasip_msg_set_ruri(uint32_t h, uint32_t g, const char *s, size_t len);
int lunasip_msg_reply(uint32_t h, uint32_t g, int code, const char *reason, size_t rlen,
                      const char *hdrs, size_t hlen, const char *body, size_t blen);
int lunasip_msg_fix_nat(uint32_t h, uint32_t g);
int lunasip_msg_destination_myself(uint32_t h, uint32_t g);
int lunasip_uri_is_local(const char *s, size_t len);
int lunasip_msg_loose_route(uint32_t h, uint32_t g);
int lunasip_msg_clamp_max_forwards(uint32_t h, uint32_t g, int n);
long lunasip_msg_serialize(uint32_t h, uint32_t g, char *buf, size_t cap);
int lunasip_msg_parse(const char *buf, size_t len, uint32_t *h, uint32_t *g, const char **reason);
int lunasip_msg_free(uint32_t h, uint32_t g);
int lunasip_msg_last_reply(uint32_t h, uint32_t g, const char **p, size_t *len);
void lunasip_log(int level, const char *msg, size_t len);
int lunasip_log_enabled(int level);

int lunasip_proxy_profile(const char *name, size_t len);
int lunasip_proxy_events(uint32_t ctx, unsigned mask);
int lunasip_proxy_route(uint32_t h, uint32_t g, const char *profile, size_t plen,
                        const char *host, size_t hlen, int port, int transport, uint32_t *ctx);
int lunasip_uac_route(const char *buf, size_t len, const char *profile, size_t plen,
                      const char *host, size_t hlen, int port, int transport, uint32_t *ctx,
                      const char **err);
int lunasip_proxy_blacklist(uint32_t ctx, int timeout, int status, const char *reason, size_t rlen);

struct evi_param { const char *name; size_t nlen; int type; const char *s; size_t slen; int64_t i; };
int lunasip_event_raise(const char *name, size_t nlen, const struct evi_param *p, size_t n, int with_handlers);
int lunasip_event_subscribe(const char *ev, size_t elen, const char *sock, size_t slen, double expire,
                            char *err, size_t errlen);
int lunasip_event_unsubscribe(const char *ev, size_t elen, const char *sock, size_t slen);
int lunasip_event_current(const char **name, size_t *nparams);
int lunasip_event_param(size_t idx, const char **name, size_t *nlen, int *type, const char **s,
                        size_t *slen, int64_t *i);
void lunasip_event_route_changed(void);
int lunasip_event_name_valid(const char *s, size_t n);

int lunasip_msg_outbound_requested(uint32_t h, uint32_t g);
struct lunasip_conn_info {
  char transport[8];
  int remote_port, local_port;
  char remote_ip[64], local_ip[64];
  char tls_version[32];
  char tls_sni[256];
};
int lunasip_conn_info(uint64_t id, struct lunasip_conn_info *out);
int lunasip_conn_is_open(uint64_t id);
int lunasip_conn_close(uint64_t id);
int lunasip_conn_http_reject(uint64_t id, int code, const char *reason, size_t rlen);
int lunasip_tls_validate(const char *const *pems, const size_t *lens, size_t n, char *err, size_t errlen);
int lunasip_tls_sip_identities(const char *pem, size_t len, char *out, size_t cap);
]]

local C
if pcall(function() return ffi.C.lunasip_msg_str end) then
  C = ffi.C
else
  C = ffi.load(os.getenv("LUNASIP_LIB") or "liblunasip.so")
end

return {
  C = C,
  -- status codes (src/lapi.h)
  OK = 0, NONE = -1, GONE = -2, EINVAL = -3, EDONE = -4, ESEND = -5, ENOMEM = -6,
  -- what lunasip._dispatch_proxy returns (LAPI_R_*), the transport argument LAPI_TP_ANY
  R_DROP = 1, R_ABORT = 2, TP_ANY = -1,
  -- limits of src/lapi.h: LAPI_REASON_MAX, LAPI_TLS_MAX_CHAIN
  REASON_MAX = 256, TLS_MAX_CHAIN = 16,
}
