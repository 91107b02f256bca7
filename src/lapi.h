/* The C side of the Lua message API (SPEC §5.2): handles that Lua holds instead of raw
 * pointers, and the lunasip_* functions the LuaJIT FFI calls (lua/lunasip/ffi.lua
 * declares the same prototypes). Every FFI function returns an int status and fills
 * out-parameters; none touches a lua_State. */
#ifndef LUNASIP_LAPI_H
#define LUNASIP_LAPI_H

#include <stddef.h>
#include <stdint.h>

#include "sip_grammar.h"

struct sip_msg;

/* Status codes of the FFI functions. */
#define LAPI_OK      0
#define LAPI_NONE   -1 /* no such value (header absent, not a request, ...) */
#define LAPI_GONE   -2 /* the handle outlived its message */
#define LAPI_EINVAL -3 /* misuse: bad argument (Lua raises an error) */
#define LAPI_EDONE  -4 /* request already answered with a final response */
#define LAPI_ESEND  -5 /* the response could not be sent */
#define LAPI_ENOMEM -6

/* Per-request state bits returned by lapi_msg_unbind. */
#define LAPI_ST_FINAL   0x1u /* a final response was sent */
#define LAPI_ST_PROV    0x2u /* a provisional response was sent */
#define LAPI_ST_ROUTED  0x4u /* proxy:route() took the request */

/* Gives m a handle for Lua (takes a reference on m). Returns the slot id (>0), with
 * *gen its generation, or 0 when out of memory. */
uint32_t lapi_msg_bind(struct sip_msg *m, uint32_t *gen);
/* The generation of m's handle into *gen; returns the slot or 0 when m has none. */
uint32_t lapi_msg_generation(const struct sip_msg *m, uint32_t *gen);
/* The LAPI_ST_* bits of m's handle (0 when it has none). */
unsigned lapi_msg_state(const struct sip_msg *m);
/* Marks m answered (a final response sent by the core or a transaction user). */
void lapi_msg_set_state(struct sip_msg *m, unsigned bits);
/* The message behind a handle, or NULL when gone (borrowed). */
struct sip_msg *lapi_msg_get(uint32_t h, uint32_t g);
/* Ends the handle: later calls through it answer LAPI_GONE; drops the reference.
 * Returns the LAPI_ST_* bits gathered while it lived. */
unsigned lapi_msg_unbind(struct sip_msg *m);

/* String fields for lunasip_msg_str. */
enum lapi_str_field {
    LAPI_F_METHOD = 0,
    LAPI_F_RURI,
    LAPI_F_CALL_ID,
    LAPI_F_BODY,
    LAPI_F_REASON,
    LAPI_F_SOURCE_IP,
    LAPI_F_TRANSPORT,
    LAPI_F_FROM,
    LAPI_F_TO,
    LAPI_F_FROM_TAG,
    LAPI_F_TO_TAG,
    LAPI_F_LOCAL_IP,
};

/* Integer fields for lunasip_msg_int. */
enum lapi_int_field {
    LAPI_I_IS_REQUEST = 0,
    LAPI_I_STATUS,
    LAPI_I_CSEQ,
    LAPI_I_MAX_FORWARDS,
    LAPI_I_SOURCE_PORT,
    LAPI_I_LOCAL_PORT,
    LAPI_I_VIA_COUNT,
    LAPI_I_CONN_ID,      /* the stream connection it came on (src/conn.h), 0 for UDP */
};

/* Header edit operations for lunasip_msg_edit. */
enum lapi_edit_op {
    LAPI_E_DELETE = 0,
    LAPI_E_DELETE_TOP,
    LAPI_E_INSERT,
    LAPI_E_APPEND,
};

int lunasip_msg_str(uint32_t h, uint32_t g, int field, const char **p, size_t *len);
int lunasip_msg_int(uint32_t h, uint32_t g, int field, int64_t *out);
/* Header values in order; list headers (Via, Contact, Route, ...) yield one element per
 * call. *iter starts at 0. Returns LAPI_OK with a value, LAPI_NONE at the end. */
int lunasip_msg_header(uint32_t h, uint32_t g, const char *name, size_t nlen, uint64_t *iter,
                       const char **p, size_t *len);
int lunasip_msg_edit(uint32_t h, uint32_t g, int op, const char *name, size_t nlen, const char *v, size_t vlen);
int lunasip_msg_set_header(uint32_t h, uint32_t g, const char *name, size_t nlen, const struct sip_str *vals, size_t n);
int lunasip_msg_set_ruri(uint32_t h, uint32_t g, const char *s, size_t len);
/* Answers the request. hdrs: "Name: value\r\n" lines built by Lua, validated here (token
 * names, no CR/LF/NUL in values, none of the headers the core writes). */
int lunasip_msg_reply(uint32_t h, uint32_t g, int code, const char *reason, size_t rlen,
                      const char *hdrs, size_t hlen, const char *body, size_t blen);
/* req:fix_nat(): answers go to the source address and port (RFC 3581 behaviour even
 * without rport). */
int lunasip_msg_fix_nat(uint32_t h, uint32_t g);
/* req:destination_myself(): the R-URI host (and port, when given) is one of ours. */
int lunasip_msg_destination_myself(uint32_t h, uint32_t g);
/* req:check_max_forwards(n): 0 at Max-Forwards 0, else 1 once it is at most n. */
int lunasip_msg_clamp_max_forwards(uint32_t h, uint32_t g, int n);
/* req:loose_route(): 1 when a Route of ours was consumed (RFC 3261 §16.4), 0 when none. */
int lunasip_msg_loose_route(uint32_t h, uint32_t g);
/* req:incoming_outbound_requested(): flow_outbound_requested (src/flow.h), 1 or 0 (0 for
 * a response). */
int lunasip_msg_outbound_requested(uint32_t h, uint32_t g);
/* Whether a URI (bare, no <>) names this lunasip (loose routing, Route checks). */
int lunasip_uri_is_local(const char *s, size_t len);
/* The serialised message with its edits into buf (for tests and logging).
 * Returns the length or a negative status. */
long lunasip_msg_serialize(uint32_t h, uint32_t g, char *buf, size_t cap);

/* Parses raw bytes into a handle-bound message (tests and tools: lunasip.Message.parse).
 * The message stays alive until lunasip_msg_free. Returns LAPI_OK and h/g, or the parse
 * status (400/505/...) as a positive number with *reason set. */
int lunasip_msg_parse(const char *buf, size_t len, uint32_t *h, uint32_t *g, const char **reason);
int lunasip_msg_free(uint32_t h, uint32_t g);
/* The last response a handle-bound message without a listener would have sent (tests). */
int lunasip_msg_last_reply(uint32_t h, uint32_t g, const char **p, size_t *len);

/* lunasip.log.*: level 0..4 as enum log_level. */
void lunasip_log(int level, const char *msg, size_t len);
int lunasip_log_enabled(int level);

/* Local identity used by destination_myself (filled by main from the listeners). */
int lapi_add_local_address(const char *host, int port);
int lapi_add_local_domain(const char *domain);
void lapi_clear_local(void);
/* Whether host (brackets allowed) and port name this lunasip: a listener address with its
 * port, the advertised address or a local domain (any port). */
int lapi_host_is_local(struct sip_str host, int port);

/* ----- Proxy and Uac (SPEC §5.3; src/proxy.c) -----
 *
 * proxy:route() and uac:route() only register the routing: the core runs it after the
 * current Lua handler returns (FFI functions never call back into Lua), then reports what
 * happens by calling, at top level in the Lua state that routed,
 *
 *     lunasip._dispatch_proxy(ctx, event, a1, a2, a3)   -- returns a number of LAPI_R_* bits
 *
 * with event one of
 *     "target"         a1 = transport ("udp"...), a2 = ip, a3 = port   (before each send)
 *     "provisional"    a1, a2 = response handle (h, g)   (1xx other than 100)
 *     "success"        a1, a2 = response handle          (each 2xx)
 *     "failure"        a1, a2 = response handle          (the final 3xx-6xx to be forwarded)
 *     "canceled"       -                                 (the caller sent CANCEL)
 *     "invite_timeout" -                                 (Timer C)
 *     "error"          a1 = status, a2 = reason, a3 = code string ("client_timeout", ...)
 *     "done"           -   the ctx is over: no further event for it; Lua forgets it
 * A response handle lives for the call only. For a Proxy, the request handle stays valid
 * until "done" (so callbacks may read it, or answer it from on_error). */
#define LAPI_R_DROP  0x1 /* proxy:drop_response() was called: do not forward / reply */
#define LAPI_R_ABORT 0x2 /* proxy:abort_routing() was called in on_target */

#define LAPI_TP_ANY (-1) /* transport argument: any (else enum sip_transport) */

/* LAPI_OK when proxies.conf defines that profile, else LAPI_NONE. */
int lunasip_proxy_profile(const char *name, size_t len);
/* Registers stateful routing of request (h, g) with a profile. host NULL (hlen 0) = from
 * the top Route, else the R-URI; port 0 = default; transport LAPI_TP_ANY or an enum
 * sip_transport value. Returns LAPI_OK and *ctx (> 0); LAPI_EINVAL for bad arguments or a
 * response handle; LAPI_NONE for an unknown profile; LAPI_EDONE when the request already
 * has a final answer or is being routed; LAPI_GONE. An ACK is forwarded statelessly:
 * *ctx is still given, and only "target", "error" and "done" can follow. */
int lunasip_proxy_route(uint32_t h, uint32_t g, const char *profile, size_t plen,
                        const char *host, size_t hlen, int port, int transport, uint32_t *ctx);
/* Routes a request lunasip originates (lunasip.Uac). buf: the whole request without Via
 * (start line, headers, empty line, body); the core adds our Via and, when absent,
 * Max-Forwards: 70. Same routing arguments as lunasip_proxy_route (host NULL = from the
 * R-URI). Returns LAPI_OK and *ctx; LAPI_EINVAL with *err (static text) when the request
 * does not parse; LAPI_NONE for an unknown profile. */
int lunasip_uac_route(const char *buf, size_t len, const char *profile, size_t plen,
                      const char *host, size_t hlen, int port, int transport, uint32_t *ctx,
                      const char **err);
/* Which events the routing ctx (just registered, not started) delivers to Lua: LAPI_EV_*
 * bits; "done" only with LAPI_EV_DONE. Without this call every event is delivered.
 * LAPI_OK or LAPI_NONE (no such pending ctx). */
#define LAPI_EV_TARGET         0x01
#define LAPI_EV_PROVISIONAL    0x02
#define LAPI_EV_SUCCESS        0x04
#define LAPI_EV_FAILURE        0x08
#define LAPI_EV_CANCELED       0x10
#define LAPI_EV_INVITE_TIMEOUT 0x20
#define LAPI_EV_ERROR          0x40
#define LAPI_EV_DONE           0x80
int lunasip_proxy_events(uint32_t ctx, unsigned mask);
/* proxy:add_target_to_blacklist(timeout, status, reason) for the ctx's current target:
 * timeout 0 = the profile's blacklist_time (else 2..3000 s), status 0 = 403, reason NULL =
 * "Destination Blacklisted". LAPI_OK, LAPI_NONE (no current target), LAPI_EINVAL. */
int lunasip_proxy_blacklist(uint32_t ctx, int timeout, int status, const char *reason, size_t rlen);

/* ----- Connections and lunasip.tls (SPEC §5.1-§5.3; src/lapi_conn.c) -----
 * lua/lunasip/connection.lua and lua/lunasip/tls.lua call these. Lua holds connection ids,
 * never pointers: every call looks the connection up (conn_get) and answers LAPI_GONE once
 * it has left the table. */

/* What Lua keeps of a connection (copied: nothing points into the connection). */
struct lunasip_conn_info {
    char transport[8];      /* "tcp", "tls", "ws", "wss" */
    int remote_port, local_port;
    char remote_ip[64], local_ip[64];   /* without brackets */
    char tls_version[32];   /* "TLSv1.2"; "" when not TLS */
    char tls_sni[256];      /* the SNI name the client asked for; "" when none */
};
/* Fills *out; marks the connection as known to Lua (its state is released in every Lua
 * state when it closes). LAPI_OK or LAPI_GONE. */
int lunasip_conn_info(uint64_t id, struct lunasip_conn_info *out);
/* 1 while the connection is in the table and neither closing nor asked to close; else 0. */
int lunasip_conn_is_open(uint64_t id);
/* conn:close(). Inside a handshake callback or WebSocketEvents.on_connection for that very
 * connection it rejects it (the hook's answer); else the close is scheduled for when the
 * running Lua code has returned (the loop's next turn): a handler never closes a
 * connection under the core's feet. LAPI_OK, or LAPI_GONE when it is gone or closing. */
int lunasip_conn_close(uint64_t id);
/* conn:http_reject(code, reason): LAPI_OK; LAPI_NONE outside WebSocketEvents.on_connection
 * for that connection; LAPI_EINVAL for a code outside 400..699 or a reason longer than
 * LAPI_REASON_MAX or holding CR, LF or NUL (reason NULL: the standard phrase). */
#define LAPI_REASON_MAX 256
int lunasip_conn_http_reject(uint64_t id, int code, const char *reason, size_t rlen);
/* lunasip.tls.validate: 1 valid, 0 invalid with err filled (tls_validate_pems against the
 * context of lapi_set_tls_ctx). More than LAPI_TLS_MAX_CHAIN certificates: 0, "chain too long". */
#define LAPI_TLS_MAX_CHAIN 16
int lunasip_tls_validate(const char *const *pems, const size_t *lens, size_t n, char *err, size_t errlen);
/* lunasip.tls.sip_identities: tls_sip_identities (the count, or -1 when it does not parse). */
int lunasip_tls_sip_identities(const char *pem, size_t len, char *out, size_t cap);

/* ----- Events (SPEC §5.4; src/evi.c, src/lapi_evi.c) -----
 * raise_event, subscribe_event, unsubscribe_event and fetch_event_params of
 * lua/lunasip/events.lua. The params array is struct evi_param (src/evi.h). */
struct evi_param;
/* Returns the number of subscriptions queued for, or a negative errno (-EINVAL bad name or
 * params, -E2BIG payload too large, -ENOSPC, -ENOMEM). with_handlers: the script has
 * event_route[name]. */
int lunasip_event_raise(const char *name, size_t nlen, const struct evi_param *p, size_t n, int with_handlers);
/* 0, or a negative errno with err filled. expire in seconds, 0 = never. */
int lunasip_event_subscribe(const char *ev, size_t elen, const char *sock, size_t slen, double expire,
                            char *err, size_t errlen);
/* 0 or -ENOENT. */
int lunasip_event_unsubscribe(const char *ev, size_t elen, const char *sock, size_t slen);
/* The event whose event_route runs: LAPI_OK with its name and param count, LAPI_NONE outside. */
int lunasip_event_current(const char **name, size_t *nparams);
/* Param idx of the running event: name (NULL when positional), type, value. */
int lunasip_event_param(size_t idx, const char **name, size_t *nlen, int *type, const char **s,
                        size_t *slen, int64_t *i);
/* event_route was assigned at run time: forget which events have handlers. */
void lunasip_event_route_changed(void);
/* 1 when s is a valid event name. */
int lunasip_event_name_valid(const char *s, size_t n);

#endif
