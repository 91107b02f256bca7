/* The outgoing side of the proxy core: what a forwarded request looks like and where it leaves
 * (RFC 3261 §16.6: Max-Forwards, Via, Record-Route; RFC 3327 Path; RFC 3581 received/rport;
 * RFC 5626 §5.3 flow tokens; RFC 5658 double Record-Route; RFC 7118 WebSocket clients). */
#include "proxy.h"
#include "proxy_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "conn.h"
#include "flow.h"
#include "log.h"
#include "sip_msg.h"
#include "stats.h"
#include "udp.h"

static struct listener *listeners;
static const char *advertised;

/* ----- configuration: the listeners that name us ----- */

void proxy_set_listeners(struct listener *list, const char *adv)
{
    listeners = list;
    advertised = adv;
}

/* The listener to send from towards a family over a transport: the one the request came
 * on when it fits. For a stream transport with no listener of its own (an outgoing TCP
 * connection from a lunasip that only listens on UDP), any listener of the family names
 * us in Via and Record-Route. */
struct listener *listener_for_tp(int family, enum sip_transport tp, struct listener *prefer)
{
    if (prefer && prefer->family == family && prefer->transport == tp)
        return prefer;
    for (struct listener *l = listeners; l; l = l->next)
        if (l->family == family && l->transport == tp)
            return l;
    if (tp != SIP_TP_UDP)
        for (struct listener *l = listeners; l; l = l->next)
            if (l->family == family)
                return l;
    return NULL;
}

static struct listener *listener_for(int family, struct listener *prefer)
{
    return listener_for_tp(family, SIP_TP_UDP, prefer);
}

static const char *via_transport(enum sip_transport tp)
{
    switch (tp) {
    case SIP_TP_TCP: return "TCP";
    case SIP_TP_TLS: return "TLS";
    case SIP_TP_WS: return "WS";
    case SIP_TP_WSS: return "WSS";
    default: return "UDP";
    }
}

/* "host:port" of a listener as it goes into Via, Record-Route and Path. */
static int local_hostport(const struct listener *l, char *out, size_t cap)
{
    if (advertised)
        return snprintf(out, cap, "%s:%d", advertised, l->port);
    return snprintf(out, cap, l->family == AF_INET6 ? "[%s]:%d" : "%s:%d", l->host, l->port);
}

/* ----- the request as it goes out (§16.6) ----- */

/* RFC 3261 §18.2.1 and RFC 3581 §4: received (and rport's value) on the top Via. */
static int fix_upstream_via(struct sip_msg *m)
{
    char ip[64];
    int port = 0;
    if (sockaddr_ip_port((const struct sockaddr *)&m->src, ip, sizeof(ip), &port) != 0)
        return 0;
    const struct sip_via *v = &m->via1;
    struct sip_str host = v->host;
    if (host.len > 2 && host.s[0] == '[') {
        host.s++;
        host.len -= 2;
    }
    int need_received = !(host.len == strlen(ip) && strncasecmp(host.s, ip, host.len) == 0);
    /* a WebSocket client's Via names no reachable address (RFC 7118 §5: often a .invalid
     * host): received and rport always, so responses and requests find its connection */
    int ws = m->transport == SIP_TP_WS || m->transport == SIP_TP_WSS;
    if (!need_received && !v->has_rport && !ws)
        return 0;
    int i = sip_msg_hdr_find_id(m, SIP_HDR_VIA, 0);
    if (i < 0)
        return 0;
    struct sip_str hv = sip_msg_hdr_value(m, (uint32_t)i), item;
    const char *p = hv.s, *end = hv.s + hv.len;
    if (sip_list_next(&p, end, &item) != 1)
        return 0;
    char buf[2048];
    size_t n = 0;
    size_t head = v->params.len ? (size_t)(v->params.s - item.s) : item.len; /* up to the first param */
    if (head > item.len || head + 200 > sizeof(buf))
        return 0;
    if (v->params.len)
        head--; /* the ';' before the params */
    memcpy(buf, item.s, head);
    n = head;
    const char *pp = v->params.s, *pend = v->params.s + v->params.len;
    struct sip_str pn, pv;
    while (v->params.len && sip_param_next(&pp, pend, &pn, &pv) == 1) {
        if (sip_str_casecmp(pn, "received") == 0)
            continue;
        if (sip_str_casecmp(pn, "rport") == 0) {
            n += (size_t)snprintf(buf + n, sizeof(buf) - n, ";rport=%d", port);
            continue;
        }
        if (n + pn.len + pv.len + 2 >= sizeof(buf) - 100)
            return 0;
        buf[n++] = ';';
        memcpy(buf + n, pn.s, pn.len);
        n += pn.len;
        if (pv.s) {
            buf[n++] = '=';
            memcpy(buf + n, pv.s, pv.len);
            n += pv.len;
        }
    }
    n += (size_t)snprintf(buf + n, sizeof(buf) - n, ";received=%s", ip);
    if (ws && !v->has_rport)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, ";rport=%d", port);
    /* the rest of this Via line, when it lists more via-parms */
    struct sip_str rest = sip_str_trim((struct sip_str){ p, (uint32_t)(end - p) });
    if (rest.len && rest.s[0] == ',') {
        if (n + rest.len + 2 >= sizeof(buf))
            return 0;
        memcpy(buf + n, ", ", 2);
        n += 2;
        rest = sip_str_trim((struct sip_str){ rest.s + 1, rest.len - 1 });
        memcpy(buf + n, rest.s, rest.len);
        n += rest.len;
    }
    if (sip_msg_hdr_delete(m, "Via", 3, 1) < 0)
        return -1;
    return sip_msg_hdr_insert(m, "Via", 3, buf, n);
}

#define PROXY_DEFAULT_MAX_FORWARDS 70

/* Edits done once per routing: Max-Forwards (§16.6 step 3) and the upstream Via. */
int prepare(struct pctx *c)
{
    struct sip_msg *m = c->req;
    if (m->proxied)
        return 0;
    m->proxied = 1;
    if (c->kind == CTX_UAC)
        return 0;
    if (fix_upstream_via(m) < 0)
        return -ENOMEM;
    if (m->max_forwards_final)
        return 0; /* the script's check_max_forwards set the outgoing value */
    char mf[16];
    int n, cur = sip_msg_max_forwards(m);
    if (cur < 0)
        n = snprintf(mf, sizeof(mf), "%d", PROXY_DEFAULT_MAX_FORWARDS);
    else
        n = snprintf(mf, sizeof(mf), "%d", cur > 0 ? cur - 1 : 0);
    struct sip_str v = { mf, (uint32_t)n };
    return sip_msg_hdr_set(m, "Max-Forwards", 12, &v, 1) < 0 ? -ENOMEM : 0;
}

/* Whether this request gets Record-Route (or Path for REGISTER) from us. */
static int wants_rr(struct pctx *c)
{
    struct sip_msg *m = c->req;
    if (c->kind != CTX_PROXY || !c->do_rr)
        return 0;
    if (c->rr_all || m->method == SIP_METHOD_NOTIFY) /* RFC 6665 §4.3: in-dialog NOTIFY too */
        return 1;
    if (m->to.tag.len)
        return 0;
    switch (m->method) {
    case SIP_METHOD_INVITE: case SIP_METHOD_SUBSCRIBE: case SIP_METHOD_REFER: case SIP_METHOD_REGISTER:
        return 1;
    default:
        return 0;
    }
}

/* One Record-Route or Path line naming us, with a flow token as user part when given
 * (RFC 5626 §5.3, with ";ob"). */
static size_t rr_line(char *buf, size_t cap, const char *name, const char *tok, const char *hp,
                      enum sip_transport tp)
{
    int t = tok && tok[0];
    if (t)
        stats.flow_tokens_sent++;
    return (size_t)snprintf(buf, cap, "%s: <sip:%s%s%s;transport=%s;lr%s>\r\n", name, t ? tok : "", t ? "@" : "", hp,
                            sip_transport_name(tp), t ? ";ob" : "");
}

/* Builds the bytes for one target: the request with its edits, and right after the start
 * line our Via and our Record-Route/Path line(s). Two lines when the transport or IP family
 * changes (RFC 5658), or when both sides are flows: the line facing the client carries the
 * flow token of its connection when it came over a WebSocket or asked for Outbound
 * (RFC 5626), the line facing the target the token of the flow it goes over (out_token).
 * Returns the length, or -1. */
long build_request(struct pctx *c, struct listener *out_l, enum sip_transport out_tp, const char *out_token,
                          const char *branch, char **bufp)
{
    struct sip_msg *m = c->req;
    size_t cap = (size_t)m->len + 2048;
    char *ser = NULL, *buf = NULL;
    long sn = -1;
    /* the script's edits may have grown the message: retry larger, up to what a datagram
     * (or a stream message of sip.max_message_size) could ever carry */
    while (sn < 0 && cap <= 262144) {
        char *n2 = realloc(ser, cap);
        if (!n2)
            break;
        ser = n2;
        sn = sip_msg_serialize(m, ser, cap);
        cap *= 2;
    }
    const char *eol = sn > 0 ? memchr(ser, '\n', (size_t)sn) : NULL;
    if (eol)
        buf = malloc((size_t)sn + 1024); /* + our Via and up to two Record-Route/Path lines */
    size_t total = (size_t)sn + 1024;
    if (!eol || !buf) {
        free(ser);
        free(buf);
        return -1;
    }
    size_t start = (size_t)(eol + 1 - ser);
    char hp[128];
    local_hostport(out_l, hp, sizeof(hp));
    size_t n = 0;
    memcpy(buf, ser, start);
    n = start;
    n += (size_t)snprintf(buf + n, total - n, "Via: SIP/2.0/%s %s;branch=%s\r\n", via_transport(out_tp), hp,
                          branch);
    if (wants_rr(c)) {
        /* RFC 3327 §5.2: Path only for a UA that announced support for it */
        int reg = m->method == SIP_METHOD_REGISTER;
        const char *name = reg ? "Path" : "Record-Route";
        struct listener *in_l = m->listener;
        if (!reg || sip_msg_has_option_tag(m, SIP_HDR_SUPPORTED, "path")) {
            char in_tok[FLOW_TOKEN_MAX + 1] = "";
            if (m->transport == SIP_TP_WS || m->transport == SIP_TP_WSS || flow_outbound_requested(m)) {
                struct flow f;
                flow_of_msg(m, &f);
                flow_token(&f, in_tok);
            }
            int out_t = out_token && out_token[0];
            int dbl = (in_l && (in_l->family != out_l->family || m->transport != out_tp)) || (in_tok[0] && out_t);
            n += rr_line(buf + n, total - n, name, dbl ? out_token : in_tok[0] ? in_tok : out_token, hp, out_tp);
            if (dbl) {
                char ihp[128];
                local_hostport(in_l ? in_l : out_l, ihp, sizeof(ihp));
                n += rr_line(buf + n, total - n, name, in_tok, ihp, m->transport);
            }
        }
    }
    memcpy(buf + n, ser + start, (size_t)sn - start);
    n += (size_t)sn - start;
    free(ser);
    *bufp = buf;
    return (long)n;
}

/* ----- where it leaves: flows and connections ----- */

/* Where a target goes out: the listener that names us in Via and Record-Route, the
 * connection for a stream transport (the flow a token named; else one to the address,
 * reused, else a new tcp/tls one: lunasip never opens WebSocket connections), and the flow
 * token of the outgoing flow when it is one (a WebSocket client, a flow named by a token).
 * Returns 0, or -ENOTCONN (flow gone, no WebSocket connection to that address),
 * -EAFNOSUPPORT, or the error of conn_connect. */
int out_path(struct pctx *c, const struct target *t, struct listener **out_l, uint64_t *conn_id,
                    char tok[FLOW_TOKEN_MAX + 1])
{
    tok[0] = 0;
    *conn_id = 0;
    if (t->transport == SIP_TP_UDP) {
        struct listener *l = NULL;
        if (t->udp_flow)
            for (struct listener *x = listeners; x && !l; x = x->next)
                if (x->transport == SIP_TP_UDP && sockaddr_same(&x->addr, &t->local))
                    l = x;
        if (!l)
            l = listener_for(t->addr.ss_family, c->req->listener);
        if (!l)
            return -EAFNOSUPPORT;
        if (t->udp_flow) {
            struct flow f;
            memset(&f, 0, sizeof(f));
            f.transport = SIP_TP_UDP;
            memcpy(&f.addr, &t->addr, t->addrlen);
            f.addrlen = t->addrlen;
            memcpy(&f.local, &l->addr, l->addrlen);
            f.locallen = l->addrlen;
            flow_token(&f, tok);
        }
        *out_l = l;
        return 0;
    }
    struct conn *cn = NULL;
    if (t->conn_id) {
        cn = conn_get(t->conn_id);
        if (!cn)
            return -ENOTCONN;
    } else {
        cn = conn_find(t->transport, (const struct sockaddr *)&t->addr, t->addrlen);
        if (!cn) {
            if (t->transport == SIP_TP_WS || t->transport == SIP_TP_WSS)
                return -ENOTCONN;
            int rc = conn_connect(t->transport, (const struct sockaddr *)&t->addr, t->addrlen, NULL, &cn);
            if (rc != 0)
                return rc;
            cn->no_server_tls_cb = !c->server_tls_cb;
        }
    }
    struct listener *l = cn->listener ? cn->listener : listener_for_tp(t->addr.ss_family, t->transport, NULL);
    if (!l)
        return -EAFNOSUPPORT;
    if (t->conn_id || cn->transport == SIP_TP_WS || cn->transport == SIP_TP_WSS) {
        struct flow f;
        memset(&f, 0, sizeof(f));
        f.transport = cn->transport;
        f.conn_id = cn->id;
        flow_token(&f, tok);
    }
    *out_l = l;
    *conn_id = cn->id;
    return 0;
}

/* RFC 5626 §5.3: the last Route of ours that req:loose_route() consumed named a flow.
 * Returns 1 with the target set (or the 430/403 error), 0 when the request is not for a
 * flow (no token, or the flow is the one it came on: a request from the flow's client). */
int flow_target(struct pctx *c)
{
    struct sip_msg *m = c->req;
    struct flow f;
    int r = flow_token_parse(m->route_user.s, m->route_user.len, &f);
    if (r == 0 || (r == 1 && flow_is_msg_flow(&f, m)))
        return 0;
    if (r < 0) {
        set_error(c, 403, "Invalid Flow Token", "flow_forged");
        return 1;
    }
    struct target *t = &c->targets[0];
    memset(t, 0, sizeof(*t));
    if (f.transport == SIP_TP_UDP) {
        t->transport = SIP_TP_UDP;
        memcpy(&t->addr, &f.addr, f.addrlen);
        t->addrlen = f.addrlen;
        t->udp_flow = 1;
        memcpy(&t->local, &f.local, f.locallen);
        sockaddr_ip_port((const struct sockaddr *)&t->addr, t->ip, sizeof(t->ip), &t->port);
    } else {
        struct conn *cn = f.conn_id ? conn_get(f.conn_id) : NULL;
        if (!cn || cn->state == CONN_CLOSING) {
            stats.flow_failed++;
            LOG_INFO("430 Flow Failed: the %s flow of the Route token is gone, Call-ID %.*s",
                     sip_transport_name(f.transport), (int)(m->call_id.len > 80 ? 80 : m->call_id.len), m->call_id.s);
            set_error(c, 430, "Flow Failed", "flow_failed");
            return 1;
        }
        t->transport = cn->transport;
        memcpy(&t->addr, &cn->remote, cn->remote_len);
        t->addrlen = cn->remote_len;
        t->conn_id = cn->id;
        snprintf(t->ip, sizeof(t->ip), "%.47s", cn->remote_ip);
        t->port = cn->remote_port;
    }
    stats.flow_routed++;
    c->ntargets = 1;
    return 1;
}
