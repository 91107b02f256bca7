/* Responses lunasip generates: construction per RFC 3261 §8.2.6.2 (Via, From, To, Call-ID,
 * CSeq copied; a To tag added), the received/rport rewrite of the top Via (§18.2.1,
 * RFC 3581 §4) and the choice of destination (§18.2.2, RFC 3581 §4). */
#include "sip_reply.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "log.h"
#include "sip_core.h"
#include "stats.h"
#include "txn.h"
#include "udp.h"

static uint64_t tag_key[2];
static int tag_key_ready;

const char *sip_reason_phrase(int code)
{
    switch (code) {
    case 100: return "Trying";
    case 180: return "Ringing";
    case 181: return "Call Is Being Forwarded";
    case 182: return "Queued";
    case 183: return "Session Progress";
    case 199: return "Early Dialog Terminated";
    case 200: return "OK";
    case 202: return "Accepted";
    case 204: return "No Notification";
    case 300: return "Multiple Choices";
    case 301: return "Moved Permanently";
    case 302: return "Moved Temporarily";
    case 305: return "Use Proxy";
    case 380: return "Alternative Service";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 407: return "Proxy Authentication Required";
    case 408: return "Request Timeout";
    case 410: return "Gone";
    case 413: return "Request Entity Too Large";
    case 414: return "Request-URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Unsupported URI Scheme";
    case 420: return "Bad Extension";
    case 421: return "Extension Required";
    case 423: return "Interval Too Brief";
    case 429: return "Provide Referrer Identity";
    case 430: return "Flow Failed";
    case 439: return "First Hop Lacks Outbound Support";
    case 480: return "Temporarily Unavailable";
    case 481: return "Call/Transaction Does Not Exist";
    case 482: return "Loop Detected";
    case 483: return "Too Many Hops";
    case 484: return "Address Incomplete";
    case 485: return "Ambiguous";
    case 486: return "Busy Here";
    case 487: return "Request Terminated";
    case 488: return "Not Acceptable Here";
    case 489: return "Bad Event";
    case 491: return "Request Pending";
    case 493: return "Undecipherable";
    case 494: return "Security Agreement Required";
    case 500: return "Server Internal Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Server Time-out";
    case 505: return "Version Not Supported";
    case 513: return "Message Too Large";
    case 580: return "Precondition Failure";
    case 600: return "Busy Everywhere";
    case 603: return "Decline";
    case 604: return "Does Not Exist Anywhere";
    case 606: return "Not Acceptable";
    default:
        if (code < 200) return "Session Progress";
        if (code < 300) return "OK";
        if (code < 400) return "Redirection";
        if (code < 500) return "Client Error";
        if (code < 600) return "Server Error";
        return "Global Failure";
    }
}

/* A keyed 64-bit mix, eight bytes at a time (multiply-xorshift rounds, then the
 * splitmix64 finaliser): tags must be stable per request and not guessable from outside,
 * and this runs for every answer. */
static uint64_t mix(uint64_t h, const char *s, size_t len)
{
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0x9e3779b97f4a7c15ULL;
        h ^= h >> 29;
        s += 8;
        len -= 8;
    }
    uint64_t w = 0;
    if (len)
        memcpy(&w, s, len);
    h = (h ^ w ^ ((uint64_t)len << 56)) * 0x9e3779b97f4a7c15ULL;
    return h ^ (h >> 29);
}

static uint64_t fin(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void sip_reply_tag(struct sip_str call_id, struct sip_str from_tag, uint32_t cseq, char out[SIP_REPLY_TAG_LEN + 1])
{
    if (!tag_key_ready) {
        if (getrandom(tag_key, sizeof(tag_key), 0) != (ssize_t)sizeof(tag_key)) {
            tag_key[0] = 0x9e3779b97f4a7c15ULL ^ (uint64_t)(uintptr_t)&tag_key;
            tag_key[1] = 0xd1b54a32d192ed03ULL;
        }
        tag_key_ready = 1;
    }
    uint64_t h = 0xcbf29ce484222325ULL ^ tag_key[0];
    h = mix(h, call_id.s, call_id.len);
    h = mix(h ^ 0xff, from_tag.s, from_tag.len);
    h = (h ^ cseq ^ 0xfe00000000ULL) * 0x9e3779b97f4a7c15ULL;
    h = fin(h ^ tag_key[1]);
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < SIP_REPLY_TAG_LEN; i++)
        out[i] = hex[(h >> (60 - 4 * i)) & 0xf];
    out[SIP_REPLY_TAG_LEN] = 0;
}

int sip_reply_src_from_msg(struct sip_msg *m, struct sip_reply_src *s)
{
    /* one pass over the header array: this runs for every answer lunasip gives */
    s->nvias = 0;
    s->transport = m->transport;
    s->conn_id = m->conn_id;
    s->from = s->to = s->call_id = s->cseq = s->timestamp = (struct sip_str){ NULL, 0 };
    for (uint32_t i = 0; i < m->nhdrs; i++) {
        const struct sip_hdr *h = &m->hdrs[i];
        if (h->flags & SIP_HDR_F_DELETED)
            continue;
        switch (h->id) {
        case SIP_HDR_VIA:
            if (s->nvias == SIP_REPLY_MAX_VIAS)
                return -1;
            s->vias[s->nvias++] = sip_msg_hdr_value(m, i);
            break;
        case SIP_HDR_FROM: if (!s->from.s) s->from = sip_msg_hdr_value(m, i); break;
        case SIP_HDR_TO: if (!s->to.s) s->to = sip_msg_hdr_value(m, i); break;
        case SIP_HDR_CALL_ID: if (!s->call_id.s) s->call_id = sip_msg_hdr_value(m, i); break;
        case SIP_HDR_CSEQ: if (!s->cseq.s) s->cseq = sip_msg_hdr_value(m, i); break;
        case SIP_HDR_OTHER:
            if (!s->timestamp.s && h->name.len == 9 && sip_str_casecmp(h->name, "Timestamp") == 0)
                s->timestamp = sip_msg_hdr_value(m, i);
            break;
        default:
            break;
        }
    }
    if (s->nvias == 0)
        return -1;
    s->via1 = m->via1;
    s->to_has_tag = m->to.tag.len > 0;
    if (!s->to_has_tag)
        sip_reply_tag(m->call_id, m->from.tag, m->cseq, s->tag);
    else
        s->tag[0] = 0;
    s->method = m->method;
    s->listener = m->listener;
    s->src = (const struct sockaddr *)&m->src;
    s->srclen = m->srclen;
    s->force_rport = 0;
    return 0;
}

/* Finds the end of the header line starting at p (folding continues a line). Returns
 * the end of the logical line (before its CRLF) and sets *next to the next line. */
static const char *line_end(const char *p, const char *end, const char **next)
{
    const char *q = p;
    for (;;) {
        const char *nl = memchr(q, '\n', (size_t)(end - q));
        if (!nl) {
            *next = end;
            return end;
        }
        if (nl + 1 < end && (nl[1] == ' ' || nl[1] == '\t')) {
            q = nl + 1;
            continue;
        }
        *next = nl + 1;
        return (nl > p && nl[-1] == '\r') ? nl - 1 : nl;
    }
}

int sip_reply_src_salvage(const char *buf, size_t len, struct sip_reply_src *s)
{
    const char *p = buf, *end = buf + len, *next;
    memset(s, 0, sizeof(*s));
    const char *le = line_end(p, end, &next);
    /* A request line: method SP ...; responses and garbage get no answer. */
    const char *sp = memchr(p, ' ', (size_t)(le - p));
    if (!sp || sp == p || (le - p >= 4 && memcmp(p, "SIP/", 4) == 0))
        return -1;
    if (!sip_is_token(p, (size_t)(sp - p)))
        return -1;
    s->method = sip_method_lookup(p, (size_t)(sp - p));
    if (s->method == SIP_METHOD_ACK)
        return -1; /* RFC 3261 §17.2.1: an ACK is never answered */
    for (p = next; p < end; p = next) {
        le = line_end(p, end, &next);
        if (le == p)
            break; /* empty line: end of the head */
        const char *colon = memchr(p, ':', (size_t)(le - p));
        if (!colon)
            continue;
        const char *ne = colon;
        while (ne > p && (ne[-1] == ' ' || ne[-1] == '\t'))
            ne--;
        struct sip_str v = sip_str_trim((struct sip_str){ colon + 1, (uint32_t)(le - colon - 1) });
        switch (sip_hdr_lookup(p, (size_t)(ne - p))) {
        case SIP_HDR_VIA:
            if (s->nvias < SIP_REPLY_MAX_VIAS)
                s->vias[s->nvias++] = v;
            break;
        case SIP_HDR_FROM: if (!s->from.len) s->from = v; break;
        case SIP_HDR_TO: if (!s->to.len) s->to = v; break;
        case SIP_HDR_CALL_ID: if (!s->call_id.len) s->call_id = v; break;
        case SIP_HDR_CSEQ: if (!s->cseq.len) s->cseq = v; break;
        default: break;
        }
    }
    if (s->nvias == 0)
        return -1;
    const char *vp = s->vias[0].s;
    struct sip_str item;
    if (sip_list_next(&vp, s->vias[0].s + s->vias[0].len, &item) != 1 ||
        sip_via_parse(item.s, item.len, &s->via1) != 0) {
        /* A broken top Via (RFC 4475 badinv01: stray ';' and ','): its sent-protocol and
         * sent-by may still say where the 400 goes; its params are not trusted. */
        const char *b = s->vias[0].s, *e = b;
        while (e < b + s->vias[0].len && *e != ';' && *e != ',')
            e++;
        struct sip_str head = sip_str_trim((struct sip_str){ b, (uint32_t)(e - b) });
        if (!head.len || sip_via_parse(head.s, head.len, &s->via1) != 0)
            return -1;
        s->vias[0] = head;
    }
    /* The tag inputs, as in sip_reply_src_from_msg, so an ACK that parses finds it. */
    struct sip_nameaddr na;
    struct sip_str from_tag = s->from;
    if (s->from.len && sip_nameaddr_parse(s->from.s, s->from.len, 0, &na) == 0)
        from_tag = na.tag;
    struct sip_nameaddr to;
    s->to_has_tag = s->to.len && sip_nameaddr_parse(s->to.s, s->to.len, 0, &to) == 0 && to.tag.len > 0;
    uint64_t cseq = 0;
    size_t nd = 0;
    while (nd < s->cseq.len && nd < 10 && s->cseq.s[nd] >= '0' && s->cseq.s[nd] <= '9')
        nd++;
    if (nd && sip_parse_uint(s->cseq.s, nd, 0xffffffffULL, &cseq) != 0)
        cseq = 0;
    sip_reply_tag(s->call_id, from_tag, (uint32_t)cseq, s->tag);
    return 0;
}

/* Output helpers: append to a bounded buffer; the first overflow poisons the result. */
struct out {
    char *p;
    size_t len, cap;
    int overflow;
};

static void put(struct out *o, const char *s, size_t n)
{
    if (o->overflow || o->len + n > o->cap) {
        o->overflow = 1;
        return;
    }
    memcpy(o->p + o->len, s, n);
    o->len += n;
}

#define PUTS(o, lit) put((o), (lit), sizeof(lit) - 1)

/* A copied header value: folding (CR/LF) becomes SP so the line stays one line. */
static void put_value(struct out *o, struct sip_str v)
{
    if (!v.len)
        return;
    if (!memchr(v.s, '\n', v.len) && !memchr(v.s, '\r', v.len)) {
        put(o, v.s, v.len); /* the usual case: nothing folded */
        return;
    }
    if (o->overflow || o->len + v.len > o->cap) {
        o->overflow = 1;
        return;
    }
    char *d = o->p + o->len;
    for (uint32_t i = 0; i < v.len; i++) {
        char c = v.s[i];
        d[i] = (c == '\r' || c == '\n') ? ' ' : c;
    }
    o->len += v.len;
}

/* Decimal without printf: this runs for every answer. */
static void put_uint(struct out *o, uint64_t v)
{
    char tmp[20];
    int i = sizeof(tmp);
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    put(o, tmp + i, sizeof(tmp) - (size_t)i);
}

static void put_cstr(struct out *o, const char *s)
{
    put(o, s, strlen(s));
}

/* Whether the sent-by host is literally the source address (then no received is needed
 * unless rport asks for it, RFC 3261 §18.2.1). */
static int host_is_ip(struct sip_str host, const char *ip)
{
    size_t n = strlen(ip);
    if (host.len >= 2 && host.s[0] == '[')
        host = (struct sip_str){ host.s + 1, host.len - 2 };
    return host.len == n && strncasecmp(host.s, ip, n) == 0;
}

/* The top Via of a response: the request's top via-parm with received (the source IP)
 * and rport (the source port) filled in, then the rest of that header line unchanged. */
static void put_top_via(struct out *o, const struct sip_reply_src *s)
{
    const struct sip_via *v = &s->via1;
    char ip[64] = "";
    int port = 0;
    int have_src = s->src && s->srclen && sockaddr_ip_port(s->src, ip, sizeof(ip), &port) == 0;

    put(o, v->proto_name.s, v->proto_name.len);
    PUTS(o, "/");
    put(o, v->proto_version.s, v->proto_version.len);
    PUTS(o, "/");
    put(o, v->transport.s, v->transport.len);
    PUTS(o, " ");
    put(o, v->host.s, v->host.len);
    if (v->port_str.len) {
        PUTS(o, ":");
        put(o, v->port_str.s, v->port_str.len);
    }
    const char *pp = v->params.s, *pe = v->params.s + v->params.len;
    struct sip_str name, val;
    while (v->params.len && sip_param_next(&pp, pe, &name, &val) == 1) {
        if (sip_str_casecmp(name, "rport") == 0 || sip_str_casecmp(name, "received") == 0)
            continue;
        PUTS(o, ";");
        put(o, name.s, name.len);
        if (val.s) {
            PUTS(o, "=");
            put(o, val.s, val.len);
        }
    }
    /* a message that did not come from the network (tests, tools) has no source to name */
    int want_rport = have_src && (v->has_rport || s->force_rport);
    if (have_src && (want_rport || !host_is_ip(v->host, ip))) {
        PUTS(o, ";received=");
        put_cstr(o, ip);
    }
    if (want_rport) {
        PUTS(o, ";rport=");
        put_uint(o, (uint64_t)port);
    }
    else if (!have_src && v->has_rport)
        PUTS(o, ";rport");
}

long sip_reply_build(const struct sip_reply_src *s, int code, const char *reason, size_t rlen,
                     const char *extra, size_t elen, const char *body, size_t blen,
                     char *outbuf, size_t cap)
{
    struct out o = { outbuf, 0, cap, 0 };
    if (!reason) {
        reason = sip_reason_phrase(code);
        rlen = strlen(reason);
    }
    if (code < 100 || code > 999)
        return -1;
    PUTS(&o, "SIP/2.0 ");
    put_uint(&o, (uint64_t)code);
    PUTS(&o, " ");
    put(&o, reason, rlen);
    PUTS(&o, "\r\n");
    for (uint32_t i = 0; i < s->nvias; i++) {
        PUTS(&o, "Via: ");
        if (i == 0) {
            /* the first element of the first Via line is the one we rewrite */
            const char *vp = s->vias[0].s, *ve = s->vias[0].s + s->vias[0].len;
            struct sip_str item;
            put_top_via(&o, s);
            if (sip_list_next(&vp, ve, &item) == 1 && item.s + item.len < ve)
                put_value(&o, (struct sip_str){ item.s + item.len, (uint32_t)(ve - item.s - item.len) });
        } else {
            put_value(&o, s->vias[i]);
        }
        PUTS(&o, "\r\n");
    }
    if (s->from.len) {
        PUTS(&o, "From: ");
        put_value(&o, s->from);
        PUTS(&o, "\r\n");
    }
    if (s->to.len) {
        PUTS(&o, "To: ");
        put_value(&o, s->to);
        /* RFC 3261 §8.2.6.2: a UAS adds a To tag to responses other than 100 */
        if (!s->to_has_tag && code != 100) {
            PUTS(&o, ";tag=");
            put(&o, s->tag, SIP_REPLY_TAG_LEN);
        }
        PUTS(&o, "\r\n");
    }
    if (s->call_id.len) {
        PUTS(&o, "Call-ID: ");
        put_value(&o, s->call_id);
        PUTS(&o, "\r\n");
    }
    if (s->cseq.len) {
        PUTS(&o, "CSeq: ");
        put_value(&o, s->cseq);
        PUTS(&o, "\r\n");
    }
    if (code == 100 && s->timestamp.len) {
        PUTS(&o, "Timestamp: ");
        put_value(&o, s->timestamp);
        PUTS(&o, "\r\n");
    }
    if (elen)
        put(&o, extra, elen);
    PUTS(&o, "Content-Length: ");
    put_uint(&o, blen);
    PUTS(&o, "\r\n\r\n");
    if (blen)
        put(&o, body, blen);
    return o.overflow ? -1 : (long)o.len;
}

/* Destinations lunasip never sends to: unspecified, broadcast (RFC 4475 §3.3.10), port 0. */
static int forbidden_dst(const struct sockaddr_storage *sa)
{
    if (sa->ss_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        uint32_t a = ntohl(s4->sin_addr.s_addr);
        return a == 0 || a == 0xffffffffu || s4->sin_port == 0;
    }
    const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
    return IN6_IS_ADDR_UNSPECIFIED(&s6->sin6_addr) || s6->sin6_port == 0;
}

int sip_reply_dest(const struct sip_reply_src *s, struct sockaddr_storage *dst, socklen_t *dstlen)
{
    const struct sip_via *v = &s->via1;
    int port = v->port ? v->port : (sip_str_casecmp(v->transport, "TLS") == 0 ? 5061 : 5060);

    if (v->has_rport || s->force_rport) {
        /* RFC 3581 §4: back to the source IP and port the request came from */
        memcpy(dst, s->src, s->srclen);
        *dstlen = s->srclen;
    } else if (v->maddr.len && sockaddr_from_ip(v->maddr, port, dst, dstlen) == 0) {
        /* RFC 3261 §18.2.2: maddr wins over the source address */
    } else {
        /* the received address (the source) with the sent-by port */
        memcpy(dst, s->src, s->srclen);
        *dstlen = s->srclen;
        if (dst->ss_family == AF_INET)
            ((struct sockaddr_in *)dst)->sin_port = htons((uint16_t)port);
        else
            ((struct sockaddr_in6 *)dst)->sin6_port = htons((uint16_t)port);
    }
    if (forbidden_dst(dst)) {
        stats.tx_errors++;
        LOG_NOTICE("response not sent: destination is broadcast, unspecified or port 0");
        return -EINVAL;
    }
    if (dst->ss_family != s->src->sa_family) {
        stats.tx_errors++;
        LOG_NOTICE("response not sent: maddr is of another IP family than the listener");
        return -EAFNOSUPPORT;
    }
    return 0;
}

int sip_reply_send(const struct sip_reply_src *s, const char *buf, size_t len)
{
    struct sockaddr_storage dst;
    socklen_t dstlen;
    int rc = sip_reply_dest(s, &dst, &dstlen);
    if (rc != 0)
        return rc;
    if (s->transport != SIP_TP_UDP) {
        /* over the connection the request came on (conn_id), see sip_core_send */
        struct txn_dest d;
        memset(&d, 0, sizeof(d));
        d.l = s->listener;
        d.transport = s->transport;
        d.conn_id = s->conn_id;
        memcpy(&d.addr, &dst, dstlen);
        d.addrlen = dstlen;
        rc = sip_core_send(&d, buf, len);
    } else {
        rc = udp_send(s->listener, (struct sockaddr *)&dst, dstlen, buf, len);
    }
    if (rc == 0)
        stats.tx_replies++;
    else
        LOG_WARN("sending a response failed: %s", strerror(-rc));
    return rc;
}

size_t sip_reply_size(const struct sip_reply_src *s, size_t rlen, size_t elen, size_t blen)
{
    size_t n = 512 + rlen + elen + blen; /* status line, names, tag, received/rport, CL */
    for (uint32_t i = 0; i < s->nvias; i++)
        n += 16 + s->vias[i].len;
    n += s->via1.host.len + s->via1.params.len + 128;
    n += s->from.len + s->to.len + s->call_id.len + s->cseq.len + s->timestamp.len + 64;
    return n;
}

int sip_reply_simple(const struct sip_reply_src *s, int code, const char *reason,
                     const char *extra, size_t elen)
{
    char stackbuf[8192];
    size_t rlen = reason ? strlen(reason) : 0;
    size_t cap = sip_reply_size(s, rlen, elen, 0);
    char *buf = cap <= sizeof(stackbuf) ? stackbuf : malloc(cap);
    if (!buf)
        return -ENOMEM;
    long n = sip_reply_build(s, code, reason, rlen, extra, elen, NULL, 0, buf, cap);
    int rc = n < 0 ? -EMSGSIZE : sip_reply_send(s, buf, (size_t)n);
    if (buf != stackbuf)
        free(buf);
    if (rc == -EMSGSIZE)
        LOG_ERROR("a %d response could not be built (%zu bytes planned)", code, cap);
    return rc;
}
