/* STUN Binding server for SIP's UDP ports: RFC 5389 §6 (message format), §7.3 (processing a
 * request), §10.1.2 (no authentication: RFC 5626 §8.4 keepalive servers need none), §15.2
 * (XOR-MAPPED-ADDRESS), §15.5 (FINGERPRINT), §15.9 (UNKNOWN-ATTRIBUTES). Pure functions: the
 * caller (sip_core.c) receives and sends. */
#include "stun.h"

#include <netinet/in.h>
#include <string.h>

#define M_BINDING_REQUEST  0x0001
#define M_BINDING_SUCCESS  0x0101
#define M_BINDING_ERROR    0x0111

#define A_XOR_MAPPED_ADDRESS 0x0020
#define A_ERROR_CODE         0x0009
#define A_UNKNOWN_ATTRIBUTES 0x000A
#define A_FINGERPRINT        0x8028
#define FINGERPRINT_XOR      0x5354554eu

#define UNKNOWN_MAX 8

static uint16_t get16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

uint32_t stun_crc32(const uint8_t *p, size_t n)
{
    static uint32_t table[256];
    if (!table[1]) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++)
                c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
            table[i] = c;
        }
    }
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++)
        c = table[(c ^ p[i]) & 0xff] ^ (c >> 8);
    return c ^ 0xffffffffu;
}

int stun_is_message(const uint8_t *buf, size_t len)
{
    if (len < STUN_HEADER || (buf[0] & 0xc0) != 0)
        return 0;
    size_t mlen = get16(buf + 2);
    return (mlen & 3) == 0 && mlen + STUN_HEADER == len && get32(buf + 4) == STUN_COOKIE;
}

/* Attributes a Binding server without credentials may meet and ignore: RFC 5389's own and
 * ICE's (RFC 8445 §16.1), which a client may send on a keepalive. */
static int known(uint16_t t)
{
    switch (t) {
    case 0x0006: /* USERNAME */
    case 0x0008: /* MESSAGE-INTEGRITY */
    case 0x001C: /* MESSAGE-INTEGRITY-SHA256 (RFC 8489) */
    case 0x001D: /* PASSWORD-ALGORITHM */
    case 0x001E: /* USERHASH */
    case 0x0014: /* REALM */
    case 0x0015: /* NONCE */
    case 0x0024: /* PRIORITY */
    case 0x0025: /* USE-CANDIDATE */
        return 1;
    default:
        return 0;
    }
}

static size_t finish(uint8_t *out, size_t n, int fingerprint)
{
    if (fingerprint) {
        put16(out + 2, (uint16_t)(n + 8 - STUN_HEADER)); /* the length covers FINGERPRINT */
        put16(out + n, A_FINGERPRINT);
        put16(out + n + 2, 4);
        put32(out + n + 4, stun_crc32(out, n) ^ FINGERPRINT_XOR);
        n += 8;
    }
    put16(out + 2, (uint16_t)(n - STUN_HEADER));
    return n;
}

size_t stun_answer(const uint8_t *req, size_t len, const struct sockaddr *src, uint8_t *out, size_t outlen)
{
    if (outlen < STUN_RESPONSE_MAX || !stun_is_message(req, len))
        return 0;
    if (get16(req) != M_BINDING_REQUEST) /* indications, responses, other methods: no answer */
        return 0;
    uint16_t unknown[UNKNOWN_MAX];
    size_t nunknown = 0;
    int fingerprint = 0;
    for (size_t off = STUN_HEADER; off < len;) {
        if (len - off < 4)
            return 0;
        uint16_t type = get16(req + off), alen = get16(req + off + 2);
        size_t padded = ((size_t)alen + 3) & ~(size_t)3;
        if (padded > len - off - 4)
            return 0;
        if (type == A_FINGERPRINT) {
            /* §15.5: the last attribute, the CRC of everything before it */
            if (alen != 4 || off + 8 != len ||
                get32(req + off + 4) != (stun_crc32(req, off) ^ FINGERPRINT_XOR))
                return 0;
            fingerprint = 1;
        } else if (type < 0x8000 && !known(type) && nunknown < UNKNOWN_MAX) {
            unknown[nunknown++] = type; /* comprehension-required, and not understood */
        }
        off += 4 + padded;
    }
    memset(out, 0, STUN_RESPONSE_MAX);
    memcpy(out + 4, req + 4, 16); /* magic cookie and transaction id */
    size_t n = STUN_HEADER;
    if (nunknown) {
        /* §7.3.1: 420 (Unknown Attribute), listing them */
        put16(out, M_BINDING_ERROR);
        static const char reason[] = "Unknown Attribute";
        size_t rlen = sizeof(reason) - 1;
        put16(out + n, A_ERROR_CODE);
        put16(out + n + 2, (uint16_t)(4 + rlen));
        out[n + 6] = 4;  /* class */
        out[n + 7] = 20; /* number */
        memcpy(out + n + 8, reason, rlen);
        n += 4 + ((4 + rlen + 3) & ~(size_t)3);
        put16(out + n, A_UNKNOWN_ATTRIBUTES);
        put16(out + n + 2, (uint16_t)(2 * nunknown));
        for (size_t i = 0; i < nunknown; i++)
            put16(out + n + 4 + 2 * i, unknown[i]);
        n += 4 + ((2 * nunknown + 3) & ~(size_t)3);
        return finish(out, n, fingerprint);
    }
    put16(out, M_BINDING_SUCCESS);
    put16(out + n, A_XOR_MAPPED_ADDRESS);
    if (src->sa_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)src;
        put16(out + n + 2, 8);
        out[n + 5] = 0x01;
        put16(out + n + 6, (uint16_t)(ntohs(a->sin_port) ^ (STUN_COOKIE >> 16)));
        put32(out + n + 8, ntohl(a->sin_addr.s_addr) ^ STUN_COOKIE);
        n += 12;
    } else if (src->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)src;
        put16(out + n + 2, 20);
        out[n + 5] = 0x02;
        put16(out + n + 6, (uint16_t)(ntohs(a->sin6_port) ^ (STUN_COOKIE >> 16)));
        for (int i = 0; i < 16; i++) /* XOR with the cookie and the transaction id */
            out[n + 8 + i] = a->sin6_addr.s6_addr[i] ^ req[4 + i];
        n += 24;
    } else {
        return 0;
    }
    return finish(out, n, fingerprint);
}
