/* Outbound flow tokens (RFC 5626 §5.2, §5.3): see flow.h. Layout of a token, before
 * URL-safe base64: version (1), transport (1), start number (4), then for a stream
 * connection its id (8), for UDP the local and remote addresses (family 1, port 2, IP 4 or
 * 16, each); then the first FLOW_MAC bytes of HMAC-SHA256 over all of that. The user part
 * is "Ls" followed by the base64 text, so a user part that does not start so is not ours. */
#include "flow.h"

#include <arpa/inet.h>
#include <errno.h>
#include <mbedtls/md.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "log.h"
#include "sip_grammar.h"
#include "stats.h"
#include "udp.h"

#define FLOW_VERSION 1
#define FLOW_MAC 12
#define FLOW_PREFIX "Ls"
#define FLOW_PREFIX_LEN 2
#define FLOW_RAW_MAX (1 + 1 + 4 + 2 * (1 + 2 + 16) + FLOW_MAC)

static unsigned char key[32];
static uint32_t start_no;

int flow_init(const char *secret, size_t len)
{
    /* called once, at start: the start number and, without a secret, the key are drawn
     * here; a token therefore never outlives the process unless a secret is configured */
    if (getrandom(&start_no, sizeof(start_no), 0) != (ssize_t)sizeof(start_no))
        return -1;
    if (secret && len) {
        /* a configured secret of any length: its SHA-256 is the key */
        const mbedtls_md_info_t *md = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
        return mbedtls_md(md, (const unsigned char *)secret, len, key) == 0 ? 0 : -1;
    }
    size_t got = 0;
    while (got < sizeof(key)) {
        ssize_t n = getrandom(key + got, sizeof(key) - got, 0);
        if (n <= 0) {
            if (n < 0 && errno == EINTR)
                continue;
            return -1;
        }
        got += (size_t)n;
    }
    return 0;
}

static int mac(const unsigned char *in, size_t len, unsigned char out[32])
{
    const mbedtls_md_info_t *md = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
    return mbedtls_md_hmac(md, key, sizeof(key), in, len, out);
}

void flow_of_msg(const struct sip_msg *m, struct flow *f)
{
    memset(f, 0, sizeof(*f));
    f->transport = m->transport;
    f->conn_id = m->conn_id;
    if (m->transport == SIP_TP_UDP) {
        memcpy(&f->addr, &m->src, m->srclen);
        f->addrlen = m->srclen;
        memcpy(&f->local, &m->dst, m->dstlen);
        f->locallen = m->dstlen;
    }
}

static size_t put_addr(unsigned char *p, const struct sockaddr_storage *a)
{
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)a;
        p[0] = 6;
        memcpy(p + 1, &s6->sin6_port, 2);
        memcpy(p + 3, &s6->sin6_addr, 16);
        return 19;
    }
    const struct sockaddr_in *s4 = (const struct sockaddr_in *)a;
    p[0] = 4;
    memcpy(p + 1, &s4->sin_port, 2);
    memcpy(p + 3, &s4->sin_addr, 4);
    return 7;
}

static long get_addr(const unsigned char *p, size_t len, struct sockaddr_storage *a, socklen_t *alen)
{
    memset(a, 0, sizeof(*a));
    if (len >= 7 && p[0] == 4) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)a;
        s4->sin_family = AF_INET;
        memcpy(&s4->sin_port, p + 1, 2);
        memcpy(&s4->sin_addr, p + 3, 4);
        *alen = sizeof(*s4);
        return 7;
    }
    if (len >= 19 && p[0] == 6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)a;
        s6->sin6_family = AF_INET6;
        memcpy(&s6->sin6_port, p + 1, 2);
        memcpy(&s6->sin6_addr, p + 3, 16);
        *alen = sizeof(*s6);
        return 19;
    }
    return -1;
}

static const char b64u[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static size_t b64u_encode(const unsigned char *in, size_t len, char *out)
{
    size_t n = 0, i = 0;
    for (; i + 2 < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[n++] = b64u[v >> 18];
        out[n++] = b64u[(v >> 12) & 63];
        out[n++] = b64u[(v >> 6) & 63];
        out[n++] = b64u[v & 63];
    }
    if (len - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[n++] = b64u[v >> 18];
        out[n++] = b64u[(v >> 12) & 63];
    } else if (len - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[n++] = b64u[v >> 18];
        out[n++] = b64u[(v >> 12) & 63];
        out[n++] = b64u[(v >> 6) & 63];
    }
    out[n] = 0;
    return n;
}

static int b64u_val(char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '-') return 62;
    if (c == '_') return 63;
    return -1;
}

/* Returns the decoded length, or -1 (bad character, impossible length, too long). */
static long b64u_decode(const char *s, size_t len, unsigned char *out, size_t cap)
{
    if (len % 4 == 1)
        return -1;
    size_t n = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64u_val(s[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (n == cap)
                return -1;
            out[n++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    return (long)n;
}

size_t flow_token(const struct flow *f, char out[FLOW_TOKEN_MAX + 1])
{
    unsigned char raw[FLOW_RAW_MAX], h[32];
    size_t n = 0;
    raw[n++] = FLOW_VERSION;
    raw[n++] = (unsigned char)f->transport;
    memcpy(raw + n, &start_no, 4);
    n += 4;
    if (f->transport == SIP_TP_UDP) {
        n += put_addr(raw + n, &f->local);
        n += put_addr(raw + n, &f->addr);
    } else {
        for (int i = 7; i >= 0; i--)
            raw[n++] = (unsigned char)(f->conn_id >> (8 * i));
    }
    if (mac(raw, n, h) != 0) {
        out[0] = 0;
        return 0;
    }
    memcpy(raw + n, h, FLOW_MAC);
    n += FLOW_MAC;
    memcpy(out, FLOW_PREFIX, FLOW_PREFIX_LEN);
    return FLOW_PREFIX_LEN + b64u_encode(raw, n, out + FLOW_PREFIX_LEN);
}

static void forged(const char *why)
{
    static time_t last;
    time_t now = time(NULL);
    stats.flow_forged++;
    if (now - last >= 60) {
        last = now;
        LOG_NOTICE("refused a flow token in a Route: %s (logged once a minute)", why);
    }
}

int flow_token_parse(const char *s, size_t len, struct flow *f)
{
    if (len <= FLOW_PREFIX_LEN || memcmp(s, FLOW_PREFIX, FLOW_PREFIX_LEN) != 0 || len > FLOW_TOKEN_MAX)
        return 0;
    unsigned char raw[FLOW_RAW_MAX + 4], h[32];
    long n = b64u_decode(s + FLOW_PREFIX_LEN, len - FLOW_PREFIX_LEN, raw, sizeof(raw));
    if (n < 2 + 4 + FLOW_MAC + 8)
        return 0; /* too short to be one of ours: some other user part */
    size_t body = (size_t)n - FLOW_MAC;
    if (raw[0] != FLOW_VERSION) {
        forged("unknown version");
        return -1;
    }
    if (mac(raw, body, h) != 0) {
        forged("cannot compute the HMAC");
        return -1;
    }
    /* constant time: the comparison leaks nothing about how many bytes matched */
    unsigned char diff = 0;
    for (size_t i = 0; i < FLOW_MAC; i++)
        diff |= (unsigned char)(h[i] ^ raw[body + i]);
    if (diff) {
        forged("bad signature (forged, or made under another outbound_flow_secret)");
        return -1;
    }
    memset(f, 0, sizeof(*f));
    f->transport = (enum sip_transport)raw[1];
    uint32_t sn;
    memcpy(&sn, raw + 2, 4);
    size_t p = 6;
    if (f->transport == SIP_TP_UDP) {
        long a = get_addr(raw + p, body - p, &f->local, &f->locallen);
        long b = a > 0 ? get_addr(raw + p + (size_t)a, body - p - (size_t)a, &f->addr, &f->addrlen) : -1;
        if (b < 0 || p + (size_t)a + (size_t)b != body) {
            forged("bad layout");
            return -1;
        }
    } else if (f->transport <= SIP_TP_WSS && body == p + 8) {
        for (int i = 0; i < 8; i++)
            f->conn_id = f->conn_id << 8 | raw[p + (size_t)i];
        /* a token of a previous run names a connection that is gone: id 0 never exists */
        if (sn != start_no)
            f->conn_id = 0;
    } else {
        forged("bad layout");
        return -1;
    }
    return 1;
}

int flow_outbound_requested(const struct sip_msg *m)
{
    struct sip_msg *mm = (struct sip_msg *)m;
    if (!m->is_request || m->to.tag.len || m->nvia != 1)
        return 0;
    int i = sip_msg_hdr_find_id(mm, SIP_HDR_CONTACT, 0);
    if (i < 0 || sip_msg_hdr_find_id(mm, SIP_HDR_CONTACT, (uint32_t)i + 1) >= 0)
        return 0;
    struct sip_str v = sip_msg_hdr_value(mm, (uint32_t)i), item;
    const char *p = v.s, *end = v.s + v.len;
    struct sip_nameaddr na;
    if (sip_list_next(&p, end, &item) != 1 || sip_nameaddr_parse(item.s, item.len, 0, &na) != 0 || na.is_star)
        return 0;
    if (sip_list_next(&p, end, &item) == 1)
        return 0; /* more than one contact */
    struct sip_str pv;
    if (m->method == SIP_METHOD_REGISTER)
        return sip_msg_has_option_tag(mm, SIP_HDR_SUPPORTED, "outbound") && sip_param_get(na.params, "reg-id", &pv) == 1 &&
               sip_param_get(na.params, "+sip.instance", &pv) == 1;
    return sip_param_get(na.uri.params, "ob", &pv) == 1;
}

int flow_is_msg_flow(const struct flow *f, const struct sip_msg *m)
{
    if (f->transport != m->transport)
        return 0;
    if (f->transport != SIP_TP_UDP)
        return f->conn_id == m->conn_id;
    return sockaddr_same(&f->addr, &m->src) && sockaddr_same(&f->local, &m->dst);
}
