/* The C side of the Lua message API: a handle table (slot id + generation) so Lua never
 * holds a pointer to a message that can die, and the lunasip_* accessors the LuaJIT FFI
 * calls on the hot path. SPEC §5.2; STYLE "The C–Lua boundary". */
#include "lapi.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "flow.h"
#include "log.h"
#include "proxy.h"
#include "sip_msg.h"
#include "sip_reply.h"
#include "stats.h"
#include "txn.h"
#include "udp.h"

struct slot {
    struct sip_msg *m;      /* NULL when free */
    uint32_t gen;
    uint32_t next_free;
    unsigned state;         /* LAPI_ST_* */
    uint8_t force_rport;
    char *last_reply;       /* messages without a listener keep their answer here */
    size_t last_reply_len;
};

static struct slot *slots;
static uint32_t nslots, slots_cap, free_head;
static char scratch[128]; /* formatted addresses; Lua copies them at once */

uint32_t lapi_msg_bind(struct sip_msg *m, uint32_t *gen)
{
    uint32_t id = free_head;
    if (id) {
        free_head = slots[id].next_free;
    } else {
        if (nslots == 0)
            nslots = 1; /* slot 0 means "no handle" */
        if (nslots >= slots_cap) {
            uint32_t cap = slots_cap ? slots_cap * 2 : 64; /* geometric: no O(n) copy per bind */
            struct slot *n = realloc(slots, sizeof(*slots) * cap);
            if (!n)
                return 0;
            slots = n;
            slots_cap = cap;
        }
        id = nslots++;
        memset(&slots[id], 0, sizeof(slots[id]));
    }
    struct slot *s = &slots[id];
    s->m = m;
    s->state = 0;
    s->force_rport = 0;
    s->last_reply = NULL;
    s->last_reply_len = 0;
    sip_msg_ref(m);
    m->handle = id;
    *gen = s->gen;
    return id;
}

unsigned lapi_msg_unbind(struct sip_msg *m)
{
    uint32_t id = m->handle;
    if (!id || id >= nslots || slots[id].m != m)
        return 0;
    struct slot *s = &slots[id];
    unsigned st = s->state;
    s->m = NULL;
    s->gen++;
    free(s->last_reply);
    s->last_reply = NULL;
    s->next_free = free_head;
    free_head = id;
    m->handle = 0;
    sip_msg_unref(m);
    return st;
}

static struct slot *slot_get(uint32_t h, uint32_t g)
{
    if (h == 0 || h >= nslots || slots[h].gen != g || !slots[h].m)
        return NULL;
    return &slots[h];
}

uint32_t lapi_msg_generation(const struct sip_msg *m, uint32_t *gen)
{
    uint32_t id = m->handle;
    if (!id || id >= nslots || slots[id].m != m)
        return 0;
    *gen = slots[id].gen;
    return id;
}

unsigned lapi_msg_state(const struct sip_msg *m)
{
    uint32_t id = m->handle;
    if (!id || id >= nslots || slots[id].m != m)
        return 0;
    return slots[id].state;
}

void lapi_msg_set_state(struct sip_msg *m, unsigned bits)
{
    uint32_t id = m->handle;
    if (id && id < nslots && slots[id].m == m)
        slots[id].state |= bits;
}

struct sip_msg *lapi_msg_get(uint32_t h, uint32_t g)
{
    struct slot *sl = slot_get(h, g);
    return sl ? sl->m : NULL;
}

#define GET_MSG(h, g) \
    struct slot *sl = slot_get((h), (g)); \
    if (!sl) return LAPI_GONE; \
    struct sip_msg *m = sl->m

static int first_value(struct sip_msg *m, enum sip_hdr_id id, struct sip_str *v)
{
    int i = sip_msg_hdr_find_id(m, id, 0);
    if (i < 0)
        return LAPI_NONE;
    *v = sip_msg_hdr_value(m, (uint32_t)i);
    return LAPI_OK;
}

static int tag_of(struct sip_msg *m, enum sip_hdr_id id, const char **p, size_t *len)
{
    struct sip_str v;
    struct sip_nameaddr na;
    if (first_value(m, id, &v) != LAPI_OK || sip_nameaddr_parse(v.s, v.len, 0, &na) != 0 || !na.tag.len)
        return LAPI_NONE;
    *p = na.tag.s;
    *len = na.tag.len;
    return LAPI_OK;
}

int lunasip_msg_str(uint32_t h, uint32_t g, int field, const char **p, size_t *len)
{
    GET_MSG(h, g);
    struct sip_str v = { NULL, 0 };
    int port;
    switch (field) {
    case LAPI_F_METHOD:
        if (!m->is_request) return LAPI_NONE;
        v = m->method_str;
        break;
    case LAPI_F_RURI:
        if (!m->is_request) return LAPI_NONE;
        v = m->ruri_str;
        break;
    case LAPI_F_CALL_ID:
        if (first_value(m, SIP_HDR_CALL_ID, &v) != LAPI_OK) return LAPI_NONE;
        break;
    case LAPI_F_BODY:
        v = m->body;
        if (!v.s) { *p = ""; *len = 0; return LAPI_OK; }
        break;
    case LAPI_F_REASON:
        if (m->is_request) return LAPI_NONE;
        v = m->reason;
        if (!v.s) { *p = ""; *len = 0; return LAPI_OK; }
        break;
    case LAPI_F_SOURCE_IP:
        if (!m->srclen || sockaddr_ip_port((struct sockaddr *)&m->src, scratch, sizeof(scratch), &port) != 0)
            return LAPI_NONE;
        *p = scratch;
        *len = strlen(scratch);
        return LAPI_OK;
    case LAPI_F_LOCAL_IP:
        if (!m->dstlen || sockaddr_ip_port((struct sockaddr *)&m->dst, scratch, sizeof(scratch), &port) != 0)
            return LAPI_NONE;
        *p = scratch;
        *len = strlen(scratch);
        return LAPI_OK;
    case LAPI_F_TRANSPORT:
        *p = sip_transport_name(m->transport);
        *len = strlen(*p);
        return LAPI_OK;
    case LAPI_F_FROM:
        if (first_value(m, SIP_HDR_FROM, &v) != LAPI_OK) return LAPI_NONE;
        break;
    case LAPI_F_TO:
        if (first_value(m, SIP_HDR_TO, &v) != LAPI_OK) return LAPI_NONE;
        break;
    case LAPI_F_FROM_TAG:
        return tag_of(m, SIP_HDR_FROM, p, len);
    case LAPI_F_TO_TAG:
        return tag_of(m, SIP_HDR_TO, p, len);
    default:
        return LAPI_EINVAL;
    }
    *p = v.s;
    *len = v.len;
    return LAPI_OK;
}

/* The number of a CSeq value ("314159 INVITE"): 0 with *num and *rest (the offset of the
 * method after LWS), or -1 when the number is missing or above 2^32-1. */
static int cseq_number(const char *v, size_t vlen, uint64_t *num, size_t *rest)
{
    size_t d = 0;
    while (d < vlen && v[d] >= '0' && v[d] <= '9')
        d++;
    if (d == 0 || sip_parse_uint(v, d, 0xffffffffULL, num) != 0)
        return -1;
    while (d < vlen && (v[d] == ' ' || v[d] == '\t'))
        d++;
    *rest = d;
    return 0;
}

int lunasip_msg_int(uint32_t h, uint32_t g, int field, int64_t *out)
{
    GET_MSG(h, g);
    char ip[64];
    int port, n;
    struct sip_str v;
    uint64_t u;
    size_t rest;
    switch (field) {
    case LAPI_I_IS_REQUEST: *out = m->is_request; return LAPI_OK;
    case LAPI_I_STATUS:
        if (m->is_request) return LAPI_NONE;
        *out = m->status;
        return LAPI_OK;
    case LAPI_I_CSEQ:
        /* the current header, so an edit is seen */
        if (first_value(m, SIP_HDR_CSEQ, &v) != LAPI_OK || cseq_number(v.s, v.len, &u, &rest) != 0)
            return LAPI_NONE;
        *out = (int64_t)u;
        return LAPI_OK;
    case LAPI_I_MAX_FORWARDS:
        /* the current header, so an edit (check_max_forwards) is seen */
        if ((n = sip_msg_max_forwards(m)) < 0)
            return LAPI_NONE;
        *out = n;
        return LAPI_OK;
    case LAPI_I_SOURCE_PORT:
        if (!m->srclen || sockaddr_ip_port((struct sockaddr *)&m->src, ip, sizeof(ip), &port) != 0)
            return LAPI_NONE;
        *out = port;
        return LAPI_OK;
    case LAPI_I_LOCAL_PORT:
        if (!m->dstlen || sockaddr_ip_port((struct sockaddr *)&m->dst, ip, sizeof(ip), &port) != 0)
            return LAPI_NONE;
        *out = port;
        return LAPI_OK;
    case LAPI_I_VIA_COUNT: *out = m->nvia; return LAPI_OK;
    case LAPI_I_CONN_ID: *out = (int64_t)m->conn_id; return LAPI_OK;
    default: return LAPI_EINVAL;
    }
}

/* iter: high 32 bits = header index + 1 (0 = not started), low 32 bits = offset of the
 * next list element inside that header's value, or UINT32_MAX when it is exhausted. */
int lunasip_msg_header(uint32_t h, uint32_t g, const char *name, size_t nlen, uint64_t *iter,
                       const char **p, size_t *len)
{
    GET_MSG(h, g);
    uint32_t idx = (uint32_t)(*iter >> 32), off = (uint32_t)*iter;
    int i = idx ? (int)idx - 1 : sip_msg_hdr_find(m, name, nlen, 0);
    if (idx && off == UINT32_MAX) {
        i = sip_msg_hdr_find(m, name, nlen, idx);
        off = 0;
    }
    while (i >= 0) {
        struct sip_str v = sip_msg_hdr_value(m, (uint32_t)i);
        if (m->hdrs[i].flags & SIP_HDR_F_LIST) {
            const char *q = v.s + off, *end = v.s + v.len;
            struct sip_str item;
            int r = q < end ? sip_list_next(&q, end, &item) : 0;
            if (r == 1) {
                *p = item.s;
                *len = item.len;
                *iter = ((uint64_t)(i + 1) << 32) | (q >= end ? UINT32_MAX : (uint32_t)(q - v.s));
                return LAPI_OK;
            }
            if (r < 0 && off == 0) {
                /* not a well-formed list: give the value as it is */
                *p = v.s;
                *len = v.len;
                *iter = ((uint64_t)(i + 1) << 32) | UINT32_MAX;
                return LAPI_OK;
            }
        } else if (off == 0) {
            *p = v.s;
            *len = v.len;
            *iter = ((uint64_t)(i + 1) << 32) | UINT32_MAX;
            return LAPI_OK;
        }
        i = sip_msg_hdr_find(m, name, nlen, (uint32_t)i + 1);
        off = 0;
    }
    return LAPI_NONE;
}

static int edit_status(int rc)
{
    if (rc >= 0) return LAPI_OK;
    return rc == -ENOMEM ? LAPI_ENOMEM : LAPI_EINVAL;
}

/* Values written into the headers the core relies on must stay parseable: a script that
 * sets From to garbage gets an error, not a message no peer can read. */
static int value_ok(const char *name, size_t nlen, const char *v, size_t vlen)
{
    struct sip_nameaddr na;
    struct sip_via via;
    struct sip_str item;
    const char *p = v, *end = v + vlen;
    uint64_t u;
    switch (sip_hdr_lookup(name, nlen)) {
    case SIP_HDR_FROM:
    case SIP_HDR_TO:
        return sip_nameaddr_parse(v, vlen, 0, &na) == 0;
    case SIP_HDR_CONTACT:
    case SIP_HDR_ROUTE:
    case SIP_HDR_RECORD_ROUTE:
    case SIP_HDR_PATH: {
        int r, n = 0;
        while ((r = sip_list_next(&p, end, &item)) == 1) {
            if (sip_nameaddr_parse(item.s, item.len, 1, &na) != 0)
                return 0;
            n++;
        }
        return r == 0 && n > 0;
    }
    case SIP_HDR_VIA: {
        int r, n = 0;
        while ((r = sip_list_next(&p, end, &item)) == 1) {
            if (sip_via_parse(item.s, item.len, &via) != 0)
                return 0;
            n++;
        }
        return r == 0 && n > 0;
    }
    case SIP_HDR_CSEQ: {
        size_t rest;
        return cseq_number(v, vlen, &u, &rest) == 0 && rest > 0 && sip_is_token(v + rest, vlen - rest) &&
               (v[rest - 1] == ' ' || v[rest - 1] == '\t');
    }
    case SIP_HDR_MAX_FORWARDS:
        return sip_parse_uint(v, vlen, 255, &u) == 0;
    case SIP_HDR_CONTENT_LENGTH:
        return sip_parse_uint(v, vlen, 16u << 20, &u) == 0;
    case SIP_HDR_CALL_ID:
        /* word ["@" word]: visible characters, no LWS */
        if (vlen == 0)
            return 0;
        for (size_t i = 0; i < vlen; i++)
            if ((unsigned char)v[i] <= ' ' || v[i] == 0x7f)
                return 0;
        return 1;
    default:
        return 1;
    }
}

int lunasip_msg_edit(uint32_t h, uint32_t g, int op, const char *name, size_t nlen, const char *v, size_t vlen)
{
    GET_MSG(h, g);
    int n;
    switch (op) {
    case LAPI_E_DELETE:
        n = sip_msg_hdr_delete(m, name, nlen, 0);
        return n < 0 ? edit_status(n) : n;
    case LAPI_E_DELETE_TOP:
        n = sip_msg_hdr_delete_top_value(m, name, nlen);
        return n < 0 ? edit_status(n) : n;
    case LAPI_E_INSERT:
        if (!value_ok(name, nlen, v, vlen))
            return LAPI_EINVAL;
        return edit_status(sip_msg_hdr_insert(m, name, nlen, v, vlen));
    case LAPI_E_APPEND:
        if (!value_ok(name, nlen, v, vlen))
            return LAPI_EINVAL;
        return edit_status(sip_msg_hdr_append(m, name, nlen, v, vlen));
    default: return LAPI_EINVAL;
    }
}

int lunasip_msg_set_header(uint32_t h, uint32_t g, const char *name, size_t nlen, const struct sip_str *vals, size_t n)
{
    GET_MSG(h, g);
    for (size_t i = 0; i < n; i++)
        if (!value_ok(name, nlen, vals[i].s, vals[i].len))
            return LAPI_EINVAL;
    return edit_status(sip_msg_hdr_set(m, name, nlen, vals, n));
}

int lunasip_msg_set_ruri(uint32_t h, uint32_t g, const char *s, size_t len)
{
    GET_MSG(h, g);
    if (!m->is_request)
        return LAPI_NONE;
    return edit_status(sip_msg_set_ruri(m, s, len));
}

/* Checks Lua-built header lines: "Name: value\r\n" each, a token name, no CR/LF/NUL in
 * the value, and none of the headers the response builder writes itself. */
static int valid_extra_headers(const char *p, size_t len)
{
    const char *end = p + len;
    while (p < end) {
        const char *eol = memchr(p, '\r', (size_t)(end - p));
        if (!eol || eol + 1 >= end || eol[1] != '\n')
            return 0;
        const char *colon = memchr(p, ':', (size_t)(eol - p));
        if (!colon || !sip_is_token(p, (size_t)(colon - p)))
            return 0;
        for (const char *q = colon + 1; q < eol; q++)
            if (*q == '\n' || *q == 0)
                return 0;
        switch (sip_hdr_lookup(p, (size_t)(colon - p))) {
        case SIP_HDR_VIA: case SIP_HDR_FROM: case SIP_HDR_TO: case SIP_HDR_CALL_ID:
        case SIP_HDR_CSEQ: case SIP_HDR_CONTENT_LENGTH:
            return 0;
        default:
            break;
        }
        p = eol + 2;
    }
    return 1;
}

int lunasip_msg_reply(uint32_t h, uint32_t g, int code, const char *reason, size_t rlen,
                      const char *hdrs, size_t hlen, const char *body, size_t blen)
{
    GET_MSG(h, g);
    if (!m->is_request || m->method == SIP_METHOD_ACK || code < 100 || code > 699)
        return LAPI_EINVAL;
    if (reason) {
        for (size_t i = 0; i < rlen; i++)
            if (reason[i] == '\r' || reason[i] == '\n' || reason[i] == 0)
                return LAPI_EINVAL;
    }
    if (hlen && !valid_extra_headers(hdrs, hlen))
        return LAPI_EINVAL;
    if (sl->state & LAPI_ST_FINAL)
        return LAPI_EDONE;

    struct sip_reply_src src;
    if (sip_reply_src_from_msg(m, &src) != 0)
        return LAPI_ESEND;
    src.force_rport = sl->force_rport;
    size_t cap = 1024 + hlen + blen + rlen + (size_t)m->head_len;
    char stackbuf[8192];
    char *buf = cap <= sizeof(stackbuf) ? stackbuf : malloc(cap);
    if (!buf)
        return LAPI_ENOMEM;
    long n = sip_reply_build(&src, code, reason, rlen, hdrs, hlen, body, blen, buf, cap);
    int rc = LAPI_OK;
    if (n < 0) {
        rc = LAPI_ESEND;
    } else if (m->txn) {
        /* through the server transaction: retransmissions get the same answer */
        if (code >= 200)
            proxy_before_local_final(m);
        int trc = txn_server_reply(m->txn, code, buf, (size_t)n);
        if (trc == -EALREADY)
            rc = LAPI_EDONE;
        else if (trc != 0)
            rc = LAPI_ESEND;
    } else if (!m->listener) {
        free(sl->last_reply);
        sl->last_reply = malloc((size_t)n);
        if (sl->last_reply) {
            memcpy(sl->last_reply, buf, (size_t)n);
            sl->last_reply_len = (size_t)n;
        }
    } else if (sip_reply_send(&src, buf, (size_t)n) != 0) {
        rc = LAPI_ESEND;
    }
    if (buf != stackbuf)
        free(buf);
    if (rc == LAPI_OK)
        sl->state |= code >= 200 ? LAPI_ST_FINAL : LAPI_ST_PROV;
    return rc;
}

int lunasip_msg_fix_nat(uint32_t h, uint32_t g)
{
    GET_MSG(h, g);
    sl->force_rport = 1;
    if (m->txn && m->listener) {
        /* answers already on their way keep their destination; later ones go back to the
         * source address and port */
        struct sip_reply_src src;
        struct txn_dest d = *txn_dest(m->txn);
        if (sip_reply_src_from_msg(m, &src) == 0) {
            src.force_rport = 1;
            if (sip_reply_dest(&src, &d.addr, &d.addrlen) == 0)
                txn_set_dest(m->txn, &d);
        }
    }
    return LAPI_OK;
}

/* Local identity: listener addresses (with port), advertised address, local_domains. */
struct local_name {
    char *host;
    int port; /* 0 = any */
};
static struct local_name *locals;
static size_t nlocals;

static int add_local(const char *host, int port)
{
    struct local_name *n = realloc(locals, sizeof(*locals) * (nlocals + 1));
    if (!n)
        return -ENOMEM;
    locals = n;
    locals[nlocals].host = strdup(host);
    if (!locals[nlocals].host)
        return -ENOMEM;
    locals[nlocals++].port = port;
    return 0;
}

int lapi_add_local_address(const char *host, int port) { return add_local(host, port); }
int lapi_add_local_domain(const char *domain) { return add_local(domain, 0); }

void lapi_clear_local(void)
{
    for (size_t i = 0; i < nlocals; i++)
        free(locals[i].host);
    free(locals);
    locals = NULL;
    nlocals = 0;
}

int lapi_host_is_local(struct sip_str host, int port)
{
    if (host.len >= 2 && host.s[0] == '[')
        host = (struct sip_str){ host.s + 1, host.len - 2 };
    for (size_t i = 0; i < nlocals; i++) {
        size_t n = strlen(locals[i].host);
        if (n != host.len || strncasecmp(locals[i].host, host.s, n) != 0)
            continue;
        if (locals[i].port == 0 || port == locals[i].port)
            return 1;
    }
    return 0;
}

/* Whether a parsed URI names this lunasip: its host is a listener address (and its port,
 * default 5060/5061, that listener's port), the advertised address or a local domain. */
static int uri_is_local(const struct sip_uri *u)
{
    if (u->scheme != SIP_URI_SIP && u->scheme != SIP_URI_SIPS)
        return 0;
    return lapi_host_is_local(u->host, u->port ? u->port : (u->scheme == SIP_URI_SIPS ? 5061 : 5060));
}

int lunasip_msg_destination_myself(uint32_t h, uint32_t g)
{
    GET_MSG(h, g);
    return m->is_request && uri_is_local(&m->ruri);
}

int lunasip_msg_outbound_requested(uint32_t h, uint32_t g)
{
    GET_MSG(h, g);
    return m->is_request ? (flow_outbound_requested(m) ? 1 : 0) : 0;
}

int lunasip_uri_is_local(const char *s, size_t len)
{
    struct sip_uri u;
    if (sip_uri_parse(s, len, &u) != 0)
        return 0;
    return uri_is_local(&u);
}

long lunasip_msg_serialize(uint32_t h, uint32_t g, char *buf, size_t cap)
{
    GET_MSG(h, g);
    return sip_msg_serialize(m, buf, cap);
}

int lunasip_msg_parse(const char *buf, size_t len, uint32_t *h, uint32_t *g, const char **reason)
{
    struct sip_parse_error err = { 0, NULL };
    struct sip_msg *m = sip_msg_parse(buf, len, SIP_PARSE_DATAGRAM, &err);
    if (!m) {
        *reason = err.reason ? err.reason : "malformed";
        return err.status ? err.status : 1;
    }
    *h = lapi_msg_bind(m, g);
    sip_msg_unref(m); /* the handle holds the only reference */
    if (!*h)
        return LAPI_ENOMEM;
    return LAPI_OK;
}

int lunasip_msg_free(uint32_t h, uint32_t g)
{
    GET_MSG(h, g);
    lapi_msg_unbind(m);
    return LAPI_OK;
}

int lunasip_msg_last_reply(uint32_t h, uint32_t g, const char **p, size_t *len)
{
    GET_MSG(h, g);
    (void)m;
    if (!sl->last_reply)
        return LAPI_NONE;
    *p = sl->last_reply;
    *len = sl->last_reply_len;
    return LAPI_OK;
}

void lunasip_log(int level, const char *msg, size_t len)
{
    if (level < LOG_LVL_DEBUG || level > LOG_LVL_ERROR)
        level = LOG_LVL_INFO;
    if ((enum log_level)level < log_current_level)
        return;
    log_write_raw((enum log_level)level, "lua", msg, len);
}

int lunasip_log_enabled(int level)
{
    return (enum log_level)level >= log_current_level;
}

/* req:loose_route() (RFC 3261 §16.4): undoes a strict-routing previous hop (the R-URI is
 * ours: the last Route value becomes the R-URI), then removes the top Route when it is
 * ours, and the next one too when it is ours as well (the double Record-Route of a
 * transport or IP family change). Returns 1 when a Route of ours was consumed (the request
 * is to be routed onward), 0 when none, or a negative status. */
int lunasip_msg_loose_route(uint32_t h, uint32_t g)
{
    GET_MSG(h, g);
    if (!m->is_request)
        return LAPI_EINVAL;
    enum { MAXR = 64 };
    struct sip_str vals[MAXR];
    size_t n = 0;
    for (int i = sip_msg_hdr_find_id(m, SIP_HDR_ROUTE, 0); i >= 0; i = sip_msg_hdr_find_id(m, SIP_HDR_ROUTE, (uint32_t)i + 1)) {
        struct sip_str v = sip_msg_hdr_value(m, (uint32_t)i), item;
        const char *p = v.s, *end = v.s + v.len;
        while (sip_list_next(&p, end, &item) == 1) {
            if (n == MAXR)
                return 0; /* more Route values than any real route set: leave it alone */
            vals[n++] = item;
        }
    }
    if (n == 0)
        return 0;
    size_t first = 0, last = n;
    int strict = 0, consumed = 0;
    struct sip_uri ru;
    if (sip_uri_parse(m->ruri_str.s, m->ruri_str.len, &ru) == 0 && uri_is_local(&ru)) {
        struct sip_str lr;
        struct sip_nameaddr na;
        if (sip_param_get(ru.params, "lr", &lr) == 1 &&
            sip_nameaddr_parse(vals[n - 1].s, vals[n - 1].len, 0, &na) == 0) {
            if (sip_msg_set_ruri(m, na.uri_str.s, na.uri_str.len) != 0)
                return LAPI_ENOMEM;
            last--;
            strict = 1;
        }
    }
    while (consumed < 2 && first < last) {
        struct sip_nameaddr na;
        if (sip_nameaddr_parse(vals[first].s, vals[first].len, 0, &na) != 0 || !uri_is_local(&na.uri))
            break;
        /* a flow token of ours (RFC 5626 §5.3): the proxy core sends over that flow */
        if (na.uri.user.len)
            m->route_user = na.uri.user;
        first++;
        consumed++;
    }
    if (first == 0 && last == n)
        return 0;
    if (last > first) {
        if (sip_msg_hdr_set(m, "Route", 5, vals + first, last - first) < 0)
            return LAPI_ENOMEM;
    } else if (sip_msg_hdr_delete(m, "Route", 5, 0) < 0) {
        return LAPI_ENOMEM;
    }
    return strict || consumed ? 1 : 0;
}

/* req:check_max_forwards(n) (RFC 3261 §16.3 step 3): 0 when Max-Forwards is 0 (the caller
 * answers 483); else clamps it to n and returns 1. A missing one is written as n and
 * marked final: that is the value the request leaves with (as §16.6 step 3 adds 70),
 * where a received one is still decremented by the proxy core. */
int lunasip_msg_clamp_max_forwards(uint32_t h, uint32_t g, int n)
{
    GET_MSG(h, g);
    if (!m->is_request || n < 1 || n > 255)
        return LAPI_EINVAL;
    int cur = sip_msg_max_forwards(m);
    int absent = cur == -1;
    if (cur == 0)
        return 0;
    if (cur < 0 || cur > n) {
        char buf[8];
        int len = snprintf(buf, sizeof(buf), "%d", n);
        struct sip_str nv = { buf, (uint32_t)len };
        if (sip_msg_hdr_set(m, "Max-Forwards", 12, &nv, 1) < 0)
            return LAPI_ENOMEM;
        if (absent)
            m->max_forwards_final = 1;
    }
    return 1;
}
