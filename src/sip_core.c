/* The core's handling of received SIP: keepalives, parsing with the answers the parser
 * decided (400/505, or a silent drop), the request checks of RFC 3261 §16.3 that need no
 * routing (416 scheme, 420 Proxy-Require), CANCEL and ACK without a transaction layer,
 * and the hand-off to SipEvents.on_request with a 500 when the handler fails. */
#include "sip_core.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lapi.h"
#include "log.h"
#include "lvm.h"
#include "sip_msg.h"
#include "sip_reply.h"
#include "stats.h"
#include "udp.h"

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
static void refuse(struct listener *l, const char *buf, size_t len, const struct sockaddr *src,
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
    int rc = sip_reply_simple(&rs, err->status, err->reason, NULL, 0);
    LOG_INFO("%s %d (%s) to a malformed request from %s, Call-ID %.*s", rc == 0 ? "answered" : "could not send",
             err->status, err->reason ? err->reason : "", from,
             (int)(rs.call_id.len > 80 ? 80 : rs.call_id.len), rs.call_id.s);
}

static void reply_core(struct sip_msg *m, int code, const char *reason, const char *extra, size_t elen)
{
    struct sip_reply_src rs;
    if (sip_reply_src_from_msg(m, &rs) != 0) {
        stats.rx_dropped++;
        return;
    }
    sip_reply_simple(&rs, code, reason, extra, elen);
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

static void on_request(struct sip_msg *m)
{
    stats.rx_requests++;
    if (m->ruri.scheme == SIP_URI_OTHER && m->method != SIP_METHOD_ACK) {
        /* RFC 3261 §16.3 step 2 (and §8.2.2.1) */
        reply_core(m, 416, NULL, NULL, 0);
        return;
    }
    if (m->method != SIP_METHOD_ACK && m->method != SIP_METHOD_CANCEL && check_proxy_require(m))
        return;
    if (m->method == SIP_METHOD_CANCEL) {
        /* Every answer lunasip gives is final at once, so no transaction is ever
         * pending to cancel (RFC 3261 §9.2). */
        reply_core(m, 481, NULL, NULL, 0);
        return;
    }
    if (m->method == SIP_METHOD_ACK && ack_is_ours(m)) {
        stats.rx_acks_absorbed++;
        return;
    }
    if (!lvm_current) {
        reply_core(m, 503, NULL, NULL, 0);
        return;
    }
    int st = lvm_on_request(lvm_current, m);
    if ((st & LVM_REQ_FAILED) && !(st & LAPI_ST_FINAL) && m->method != SIP_METHOD_ACK) {
        reply_core(m, 500, NULL, NULL, 0); /* no error text ever reaches the peer */
        return;
    }
    if (!(st & (LAPI_ST_FINAL | LVM_REQ_FAILED)) && m->method != SIP_METHOD_ACK) {
        stats.lua_unanswered++;
        LOG_DEBUG("%.*s not answered by server.lua, Call-ID %.*s", (int)m->method_str.len, m->method_str.s,
                  (int)m->call_id.len, m->call_id.s);
    }
}

void sip_core_on_datagram(struct listener *l, const char *buf, size_t len,
                          const struct sockaddr *src, socklen_t srclen)
{
    if (sip_frame_skip_crlf(buf, len) == len) {
        stats.rx_keepalives++; /* RFC 5626 §3.5.1 CRLF keepalive over UDP: nothing to answer */
        return;
    }
    struct sip_parse_error err = { 0, NULL };
    struct sip_msg *m = sip_msg_parse(buf, len, SIP_PARSE_DATAGRAM, &err);
    if (!m) {
        refuse(l, buf, len, src, srclen, &err);
        return;
    }
    m->transport = SIP_TP_UDP;
    memcpy(&m->src, src, srclen);
    m->srclen = srclen;
    memcpy(&m->dst, &l->addr, l->addrlen);
    m->dstlen = l->addrlen;
    m->listener = l;
    if (m->is_request) {
        on_request(m);
    } else {
        /* No transaction layer yet: no response is ours (RFC 3261 §18.1.2). */
        char from[80];
        stats.rx_responses++;
        stats.rx_responses_dropped++;
        src_text(src, from, sizeof(from));
        LOG_DEBUG("dropped a %d response from %s matching no transaction, Call-ID %.*s", m->status, from,
                  (int)m->call_id.len, m->call_id.s);
    }
    sip_msg_unref(m);
}
