/* The core's handling of received SIP: keepalives (CRLF, and STUN Binding through
 * src/stun.c), parsing with the answers the parser
 * decided (400/505, or a silent drop), the request checks of RFC 3261 §16.3 that need no
 * routing (416 scheme, 420 Proxy-Require), the server transactions (RFC 3261 §17.2),
 * CANCEL matching (§9.2), 2xx ACKs, responses to the client transactions,
 * and the hand-off to SipEvents.on_request with a 500 when the handler fails. */
#include "sip_core.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "lapi.h"
#include "log.h"
#include "lvm.h"
#include "proxy.h"
#include "sip_msg.h"
#include "sip_reply.h"
#include "stats.h"
#include "stun.h"
#include "txn.h"
#include "udp.h"

int sip_core_draining;

static void src_text(const struct sockaddr *src, char *buf, size_t len)
{
    char ip[64];
    int port = 0;
    if (sockaddr_ip_port(src, ip, sizeof(ip), &port) != 0)
        snprintf(buf, len, "?");
    else
        snprintf(buf, len, src->sa_family == AF_INET6 ? "[%s]:%d" : "%s:%d", ip, port);
}

/* A message the parser refused: requests get the status it chose, built from whatever
 * Via/From/To/Call-ID/CSeq can be salvaged; responses and hopeless requests are dropped. */
static void refuse(struct listener *l, struct conn *cn, const char *buf, size_t len, const struct sockaddr *src,
                   socklen_t srclen, const struct sip_parse_error *err)
{
    char from[80];
    struct sip_reply_src rs;
    src_text(src, from, sizeof(from));
    stats.rx_malformed++;
    if (err->status == 0 || sip_reply_src_salvage(buf, len, &rs) != 0) {
        stats.rx_dropped++;
        LOG_INFO("dropped a malformed message from %s: %s", from, err->reason ? err->reason : "unparsable");
        return;
    }
    rs.listener = l;
    rs.src = src;
    rs.srclen = srclen;
    rs.transport = cn ? cn->transport : SIP_TP_UDP;
    rs.conn_id = cn ? cn->id : 0;
    int rc = sip_reply_simple(&rs, err->status, err->reason, NULL, 0);
    LOG_INFO("%s %d (%s) to a malformed request from %s, Call-ID %.*s", rc == 0 ? "answered" : "could not send",
             err->status, err->reason ? err->reason : "", from,
             (int)(rs.call_id.len > 80 ? 80 : rs.call_id.len), rs.call_id.s);
}

/* One reply source for every answer the core builds: sip_reply_src is large (it can hold
 * every Via) and filling it calls back into nothing, so one static copy serves. */
static struct sip_reply_src reply_src;

int sip_core_reply(struct sip_msg *req, struct txn *st, int code, const char *reason, const char *extra,
                   size_t elen)
{
    if (sip_reply_src_from_msg(req, &reply_src) != 0) {
        stats.rx_dropped++;
        return -EINVAL;
    }
    if (!st)
        return sip_reply_simple(&reply_src, code, reason, extra, elen);
    size_t rlen = reason ? strlen(reason) : 0;
    char stackbuf[4096];
    size_t cap = sip_reply_size(&reply_src, rlen, elen, 0);
    char *buf = cap <= sizeof(stackbuf) ? stackbuf : malloc(cap);
    long n = buf ? sip_reply_build(&reply_src, code, reason, rlen, extra, elen, NULL, 0, buf, cap) : -1;
    int rc = n > 0 ? txn_server_reply(st, code, buf, (size_t)n) : -ENOMEM;
    if (rc == 0 && code >= 200)
        lapi_msg_set_state(req, LAPI_ST_FINAL);
    if (buf != stackbuf)
        free(buf);
    return rc;
}

/* Where responses to m go (RFC 3261 §18.2.2, RFC 3581), for its server transaction: over
 * a stream transport, the connection the request came on (and when it is gone, tcp/tls
 * open one to the source address and the Via port). */
static int reply_dest(struct sip_msg *m, struct txn_dest *d)
{
    memset(d, 0, sizeof(*d));
    d->l = m->listener;
    d->transport = m->transport;
    d->conn_id = m->conn_id;
    if (sip_reply_src_from_msg(m, &reply_src) != 0)
        return -EINVAL;
    return sip_reply_dest(&reply_src, &d->addr, &d->addrlen);
}

static void reply_core(struct sip_msg *m, int code, const char *reason, const char *extra, size_t elen)
{
    sip_core_reply(m, m->txn, code, reason, extra, elen);
}

/* The core is the user of a server transaction until a proxy routing takes it over:
 * when it ends, the request's Lua handle ends with it. */
static void on_core_txn_terminated(void *tu, struct txn *t)
{
    struct sip_msg *m = tu;
    if (m->txn == t)
        m->txn = NULL;
    if (m->handle)
        lapi_msg_unbind(m); /* may free m */
}

static const struct txn_user_ops core_ops = { NULL, NULL, NULL, NULL, on_core_txn_terminated };

/* Leaves a server transaction to finish alone (answered by Lua, nothing to route). */
static void core_release(struct sip_msg *m)
{
    if (m->txn) {
        txn_set_user(m->txn, NULL, NULL);
        m->txn = NULL;
    }
    if (m->handle)
        lapi_msg_unbind(m);
}

int sip_core_send(const struct txn_dest *d, const char *buf, size_t len)
{
    int rc;
    if (d->transport == SIP_TP_UDP) {
        rc = udp_send(d->l, (const struct sockaddr *)&d->addr, d->addrlen, buf, len);
    } else {
        /* conn_find never returns a closing connection */
        struct conn *cn = d->conn_id ? conn_get(d->conn_id) : NULL;
        if (!cn || cn->state == CONN_CLOSING)
            cn = conn_find(d->transport, (const struct sockaddr *)&d->addr, d->addrlen);
        rc = 0;
        if (!cn) {
            /* RFC 3261 §18.2.2: the connection is gone; a WebSocket client cannot be reached
             * any other way, a tcp/tls peer gets a new connection */
            if (d->transport == SIP_TP_WS || d->transport == SIP_TP_WSS)
                rc = -ENOTCONN;
            else
                rc = conn_connect(d->transport, (const struct sockaddr *)&d->addr, d->addrlen, NULL, &cn);
        }
        if (rc == 0)
            rc = conn_send(cn, buf, len);
    }
    if (rc == 0)
        stats.tx_messages++;
    return rc;
}

void sip_core_init(void)
{
    txn_set_send(sip_core_send);
}

/* RFC 3261 §16.3 step 5: lunasip supports no extension that a proxy must understand, so
 * any Proxy-Require gets 420 with its option tags listed in Unsupported; a value that is
 * not a list of option tags gets 400. Never ignored. */
static int check_proxy_require(struct sip_msg *m)
{
    size_t total = 0;
    int i;
    for (i = sip_msg_hdr_find_id(m, SIP_HDR_PROXY_REQUIRE, 0); i >= 0;
         i = sip_msg_hdr_find_id(m, SIP_HDR_PROXY_REQUIRE, (uint32_t)i + 1))
        total += sip_msg_hdr_value(m, (uint32_t)i).len + 2;
    if (total == 0)
        return 0;
    char *uns = malloc(total + 32);
    if (!uns) {
        reply_core(m, 500, NULL, NULL, 0);
        return 1;
    }
    size_t n = (size_t)sprintf(uns, "Unsupported: ");
    int found = 0, bad = 0;
    for (i = sip_msg_hdr_find_id(m, SIP_HDR_PROXY_REQUIRE, 0); i >= 0 && !bad;
         i = sip_msg_hdr_find_id(m, SIP_HDR_PROXY_REQUIRE, (uint32_t)i + 1)) {
        struct sip_str v = sip_msg_hdr_value(m, (uint32_t)i), item;
        const char *p = v.s, *end = v.s + v.len;
        int r;
        while ((r = sip_list_next(&p, end, &item)) == 1) {
            if (!sip_is_token(item.s, item.len)) {
                bad = 1;
                break;
            }
            if (found++) {
                memcpy(uns + n, ", ", 2);
                n += 2;
            }
            memcpy(uns + n, item.s, item.len);
            n += item.len;
        }
        if (r < 0 || v.len == 0)
            bad = 1;
    }
    if (bad || !found) {
        reply_core(m, 400, "Bad Proxy-Require", NULL, 0);
    } else {
        memcpy(uns + n, "\r\n", 2);
        reply_core(m, 420, NULL, uns, n + 2);
    }
    free(uns);
    return 1;
}

/* An ACK whose To tag is the one lunasip put in its own final answer to this request:
 * it acknowledges that answer and ends here (RFC 3261 §17.2.1, stateless form). */
static int ack_is_ours(struct sip_msg *m)
{
    char tag[SIP_REPLY_TAG_LEN + 1];
    if (m->to.tag.len != SIP_REPLY_TAG_LEN)
        return 0;
    sip_reply_tag(m->call_id, m->from.tag, m->cseq, tag);
    return memcmp(tag, m->to.tag.s, SIP_REPLY_TAG_LEN) == 0;
}

/* CANCEL (RFC 3261 §9.2, §16.10): answered 200 through its own transaction when it
 * matches an INVITE transaction, which is then cancelled; 481 otherwise. Never Lua's. */
static void on_cancel(struct sip_msg *m)
{
    struct txn *inv = txn_server_find_invite(m);
    if (!inv) {
        reply_core(m, 481, NULL, NULL, 0);
        return;
    }
    struct txn_dest d;
    if (reply_dest(m, &d) == 0) {
        struct txn *st = txn_server_create(m, &d, NULL, NULL);
        if (st)
            sip_core_reply(m, st, 200, NULL, NULL, 0);
    }
    proxy_on_cancel(inv, m);
}

/* The ACK of a 2xx (a transaction of its own that no server transaction takes): to Lua,
 * which routes it statelessly with proxy:route. */
static void on_ack(struct sip_msg *m)
{
    if (ack_is_ours(m)) {
        stats.rx_acks_absorbed++;
        return;
    }
    if (!lvm_current)
        return;
    lvm_on_request(lvm_current, m);
    proxy_run_pending();
    if (m->handle)
        lapi_msg_unbind(m);
}

static void dispatch(struct sip_msg *m);

static void on_request(struct sip_msg *m)
{
    stats.rx_requests++;
    struct txn *st = NULL;
    enum txn_rx rx = txn_server_receive(m, &st);
    if (rx == TXN_RX_ABSORBED)
        return;
    if (m->method == SIP_METHOD_ACK) {
        on_ack(m);
        return;
    }
    if (m->ruri.scheme == SIP_URI_OTHER) {
        /* RFC 3261 §16.3 step 2 (and §8.2.2.1) */
        reply_core(m, 416, NULL, NULL, 0);
        return;
    }
    if (m->method == SIP_METHOD_CANCEL) {
        on_cancel(m);
        return;
    }
    if (check_proxy_require(m))
        return;
    if (!lvm_current || sip_core_draining) {
        reply_core(m, 503, NULL, NULL, 0);
        return;
    }

    /* the server transaction (RFC 3261 §17.2), answering from where §18.2.2 says */
    struct txn_dest d;
    if (reply_dest(m, &d) != 0) {
        stats.rx_dropped++;
        return;
    }
    uint32_t gen;
    if (!lapi_msg_bind(m, &gen)) {
        stats.rx_dropped++;
        return;
    }
    st = txn_server_create(m, &d, &core_ops, m);
    if (!st) {
        lapi_msg_unbind(m);
        reply_core(m, 500, NULL, NULL, 0);
        return;
    }
    m->txn = st;
    sip_msg_ref(m); /* the handle may end below while we still look at m */

    int res = lvm_on_request(lvm_current, m);
    proxy_run_pending();
    unsigned state = lapi_msg_state(m);
    if (!(state & LAPI_ST_ROUTED)) {
        if ((res & LVM_REQ_FAILED) && !(state & LAPI_ST_FINAL)) {
            reply_core(m, 500, NULL, NULL, 0); /* no error text ever reaches the peer */
            state |= LAPI_ST_FINAL;
        }
        if (state & LAPI_ST_FINAL) {
            core_release(m);
        } else if (m->txn) {
            /* nobody answered: the transaction waits, then ends without an answer */
            stats.lua_unanswered++;
            LOG_DEBUG("%.*s not answered by server.lua, Call-ID %.*s", (int)m->method_str.len, m->method_str.s,
                      (int)m->call_id.len, m->call_id.s);
            txn_server_expire(m->txn, 64 * (uint64_t)txn_timer_values()->T1);
        }
    }
    sip_msg_unref(m);
}

void sip_core_on_datagram(struct listener *l, const char *buf, size_t len,
                          const struct sockaddr *src, socklen_t srclen)
{
    if (sip_frame_skip_crlf(buf, len) == len) {
        stats.rx_keepalives++; /* RFC 5626 §3.5.1 CRLF keepalive over UDP: nothing to answer */
        return;
    }
    if (stun_is_message((const uint8_t *)buf, len)) {
        /* RFC 5626 §4.4.2 / §8.4: a STUN keepalive on the SIP port, answered with the
         * address it came from; what is not a Binding request gets nothing */
        uint8_t out[STUN_RESPONSE_MAX];
        stats.rx_stun++;
        size_t n = stun_answer((const uint8_t *)buf, len, src, out, sizeof(out));
        if (n && udp_send(l, src, srclen, (const char *)out, n) == 0)
            stats.tx_stun++;
        return;
    }
    struct sip_parse_error err = { 0, NULL };
    struct sip_msg *m = sip_msg_parse(buf, len, SIP_PARSE_DATAGRAM, &err);
    if (!m) {
        refuse(l, NULL, buf, len, src, srclen, &err);
        return;
    }
    m->transport = SIP_TP_UDP;
    memcpy(&m->src, src, srclen);
    m->srclen = srclen;
    memcpy(&m->dst, &l->addr, l->addrlen);
    m->dstlen = l->addrlen;
    m->listener = l;
    dispatch(m);
}

void sip_core_on_stream(struct conn *c, const char *buf, size_t len)
{
    /* tcp/tls: conn.c framed it by Content-Length; ws/wss: one WebSocket message, where
     * RFC 7118 leaves Content-Length optional, as in a datagram */
    int ws = c->transport == SIP_TP_WS || c->transport == SIP_TP_WSS;
    struct sip_parse_error err = { 0, NULL };
    struct sip_msg *m = sip_msg_parse(buf, len, ws ? SIP_PARSE_DATAGRAM : SIP_PARSE_STREAM, &err);
    if (!m) {
        refuse(c->listener, c, buf, len, (const struct sockaddr *)&c->remote, c->remote_len, &err);
        return;
    }
    m->transport = c->transport;
    memcpy(&m->src, &c->remote, c->remote_len);
    m->srclen = c->remote_len;
    memcpy(&m->dst, &c->local, c->local_len);
    m->dstlen = c->local_len;
    m->listener = c->listener;
    m->conn_id = c->id;
    dispatch(m);
}

static void dispatch(struct sip_msg *m)
{
    if (m->is_request) {
        on_request(m);
    } else {
        stats.rx_responses++;
        if (!txn_client_receive(m))
            proxy_on_stray_response(m); /* RFC 3261 §16.7: as a stateless proxy */
    }
    sip_msg_unref(m);
}
