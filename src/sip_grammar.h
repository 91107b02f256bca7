/* SIP grammar primitives: URIs, name-addr, Via, generic params and comma lists.
 * RFC 3261 §25.1 (ABNF), §19.1 (SIP/SIPS URI), RFC 3966 (tel), RFC 5118 (IPv6 references).
 * Everything here is zero-copy: results are slices into the caller's buffer. */
#ifndef LUNASIP_SIP_GRAMMAR_H
#define LUNASIP_SIP_GRAMMAR_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* A slice of bytes; never NUL-terminated, may contain NUL. len 0 + s NULL = absent. */
struct sip_str {
    const char *s;
    uint32_t len;
};

#define SIP_STR_LIT(lit) ((struct sip_str){ (lit), (uint32_t)(sizeof(lit) - 1) })

enum sip_uri_scheme {
    SIP_URI_OTHER = 0, /* any other scheme: parsed as scheme ":" opaque */
    SIP_URI_SIP,
    SIP_URI_SIPS,
    SIP_URI_TEL,
};

enum sip_host_type {
    SIP_HOST_NONE = 0,
    SIP_HOST_NAME,
    SIP_HOST_IPV4,
    SIP_HOST_IPV6, /* host slice includes the [ ] */
};

struct sip_uri {
    enum sip_uri_scheme scheme;
    enum sip_host_type host_type;
    struct sip_str scheme_str; /* as written, without ':' */
    struct sip_str user;       /* sip/sips: userinfo user part (escaped form); tel: the number */
    struct sip_str password;
    struct sip_str host;
    struct sip_str port_str;
    struct sip_str params;     /* after the first ';' up to '?' or end, without the leading ';' */
    struct sip_str headers;    /* after '?', without it */
    struct sip_str opaque;     /* SIP_URI_OTHER: everything after "scheme:" */
    uint16_t port;             /* 0 when absent */
};

/* Parses a whole URI (no surrounding spaces or <>). sip/sips per RFC 3261 §25.1 (userinfo
 * with escapes and the unreserved/user-unreserved set, hostname, IPv4, IPv6 reference
 * tolerant of the RFC 5118 §4.10 three-colon form, port 0..65535, params, headers);
 * tel per RFC 3966 loosely (number then ;params); any other scheme that is a valid
 * scheme token is accepted as opaque. Returns 0, or -1 when malformed. */
int sip_uri_parse(const char *s, size_t len, struct sip_uri *out);

/* name-addr or addr-spec with header params, as in From/To/Contact/Route/Record-Route
 * (RFC 3261 §20.10, §25.1). display is the display name as written (quotes included
 * when quoted, trimmed of LWS); uri_str is the URI between <> (or the bare addr-spec,
 * in which case params after ';' are header params, not URI params, RFC 3261 §20.10).
 * Refuses unbalanced quotes, unclosed <, spaces inside <...>, unquoted display names
 * with non-token characters, and a bare addr-spec containing ',', ';' before the params
 * is fine, '?' is not (§20 "must be enclosed in <>" rule). tag is found in params.
 * allow_star: accept "*" (Contact in REGISTER). Returns 0 or -1. */
struct sip_nameaddr {
    struct sip_str display;
    struct sip_str uri_str;
    struct sip_uri uri;
    struct sip_str params; /* header params without the leading ';' */
    struct sip_str tag;
    int is_star;
};
int sip_nameaddr_parse(const char *s, size_t len, int allow_star, struct sip_nameaddr *out);

/* One via-parm (RFC 3261 §20.42, §25.1): sent-protocol LWS sent-by *(SEMI via-params).
 * Accepts LWS around '/', ':' and ';' and '=' (RFC 4475 wsinv), any transport token,
 * received with or without [] (RFC 5118 §4.5). branch/received/rport/maddr are slices
 * of the param values (has_rport is set for a bare ";rport"). Returns 0 or -1. */
struct sip_via {
    struct sip_str proto_name;    /* "SIP" */
    struct sip_str proto_version; /* "2.0" */
    struct sip_str transport;     /* "UDP", "TCP", ... as written */
    struct sip_str host;
    struct sip_str port_str;
    struct sip_str params;        /* without the leading ';' */
    struct sip_str branch;
    struct sip_str received;
    struct sip_str rport;         /* value, empty when bare */
    struct sip_str maddr;
    enum sip_host_type host_type;
    uint16_t port;                /* 0 when absent */
    uint8_t has_rport;
    uint8_t has_received;
};
int sip_via_parse(const char *s, size_t len, struct sip_via *out);

/* Iterates ";name[=value]" params. *p starts at the first name (no leading ';').
 * value is a token, a quoted string (quotes kept) or an IPv6 reference; LWS around
 * '=' and ';' is skipped. Returns 1 with name/value filled (value.len 0 and value.s
 * NULL for a bare name), 0 at the end, -1 when malformed (empty name or value, a
 * trailing ';', any other separator). Names and unquoted values also take the URI
 * paramchar set (escapes, ':' '/' '[' ']' '&' '$' ...) so the same iterator reads
 * sip_uri.params as well as header params, and a bare IPv6 received= value. */
int sip_param_next(const char **p, const char *end, struct sip_str *name, struct sip_str *value);

/* Finds a param by name (case-insensitive) in a params slice. Returns 1 found, 0 not,
 * -1 malformed params. value as in sip_param_next. */
int sip_param_get(struct sip_str params, const char *name, struct sip_str *value);

/* Splits a comma-separated header value into elements, skipping commas inside quoted
 * strings and <...>. Each item is trimmed of LWS. Returns 1 with an item, 0 at the end,
 * -1 when malformed (unbalanced quote or <, empty element). */
int sip_list_next(const char **p, const char *end, struct sip_str *item);

/* Character classes and small helpers used by the parsers. */
int sip_is_token(const char *s, size_t len);           /* RFC 3261 token, non-empty */
int sip_str_casecmp(struct sip_str a, const char *b);  /* 0 when equal ignoring ASCII case */
/* Parses 1..10 decimal digits into *out, refusing values above max. Returns 0 or -1. */
int sip_parse_uint(const char *s, size_t len, uint64_t max, uint64_t *out);
/* Trims SP/HTAB/CR/LF (folding) from both ends. */
struct sip_str sip_str_trim(struct sip_str v);


/* Private to the parsers (sip_grammar.c, sip_msg.c). */

/* s[0..n) equals lit ignoring ASCII case, where lit holds only lower-case letters, digits and
 * "-./:" (a header or param name, "sip/2.0"). A word at a time: the case bit 0x20 is ORed
 * into s exactly where lit has bit 0x40 set, i.e. at its letters, so "-" never matches CR.
 * Tails are compared with overlapping loads, never beyond s + n. Meant for a constant lit
 * and n (every use), where the lit words fold into immediates. */
static inline int sip_ieq_word_(const char *s, const char *lit, size_t w)
{
    if (w == 4) {
        uint32_t a, b;
        memcpy(&a, s, 4);
        memcpy(&b, lit, 4);
        return (a | ((b >> 1) & 0x20202020u)) == b;
    }
    uint64_t a, b;
    memcpy(&a, s, 8);
    memcpy(&b, lit, 8);
    return (a | ((b >> 1) & 0x2020202020202020ull)) == b;
}

static inline int sip_ieq_lit(const char *s, const char *lit, size_t n)
{
    if (n >= 8) {
        size_t i = 0;
        for (; i + 8 <= n; i += 8)
            if (!sip_ieq_word_(s + i, lit + i, 8))
                return 0;
        return i == n || sip_ieq_word_(s + n - 8, lit + n - 8, 8);
    }
    if (n >= 4)
        return sip_ieq_word_(s, lit, 4) && sip_ieq_word_(s + n - 4, lit + n - 4, 4);
    uint32_t a = 0, b = 0; /* 1..3 bytes, gathered so a constant n leaves no loop */
    if (n == 0)
        return 1;
    a = (unsigned char)s[0];
    b = (unsigned char)lit[0];
    if (n >= 2) {
        a |= (uint32_t)(unsigned char)s[1] << 8;
        b |= (uint32_t)(unsigned char)lit[1] << 8;
    }
    if (n >= 3) {
        a |= (uint32_t)(unsigned char)s[2] << 16;
        b |= (uint32_t)(unsigned char)lit[2] << 16;
    }
    return (a | ((b >> 1) & 0x202020u)) == b;
}

/* Four bytes as a 32-bit load of them reads (for compares against memcpy'd words). */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define SIP_LE32(a, b, c, d) (((uint32_t)(a) << 24) | ((uint32_t)(b) << 16) | ((uint32_t)(c) << 8) | (uint32_t)(d))
#else
#define SIP_LE32(a, b, c, d) ((uint32_t)(a) | ((uint32_t)(b) << 8) | ((uint32_t)(c) << 16) | ((uint32_t)(d) << 24))
#endif

/* Byte search for the parsers, sixteen bytes per step where SSE2 is baseline (x86-64), eight
 * (SWAR) elsewhere. [lo, end) is readable and lo <= p: a tail shorter than sixteen bytes is
 * read with one load ending at end (when end - lo allows), never beyond end. */
#ifdef __SSE2__
static inline unsigned sip_mask16_(const char *p, unsigned char c)
{
    __m128i x = _mm_loadu_si128((const __m128i *)(const void *)p);
    return (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(x, _mm_set1_epi8((char)c)));
}

/* bytes <= 0x0d: CR, LF and the few CTLs below them */
static inline unsigned sip_mask16_ctl_(const char *p)
{
    __m128i x = _mm_loadu_si128((const __m128i *)(const void *)p);
    return (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_min_epu8(x, _mm_set1_epi8(0x0d)), x));
}
#endif

/* First c in [p, end), or end. */
static inline const char *sip_find_byte_(const char *lo, const char *p, const char *end, unsigned char c)
{
#ifdef __SSE2__
    for (; end - p >= 16; p += 16) {
        unsigned mk = sip_mask16_(p, c);
        if (mk)
            return p + __builtin_ctz(mk);
    }
    if (p < end && end - lo >= 16) {
        unsigned mk = sip_mask16_(end - 16, c) >> (16 - (end - p));
        return mk ? p + __builtin_ctz(mk) : end;
    }
#else
    const uint64_t ones = 0x0101010101010101ull, low7 = 0x7f7f7f7f7f7f7f7full;
    for (; end - p >= 8; p += 8) {
        uint64_t x;
        memcpy(&x, p, 8);
        x ^= ones * c;
        uint64_t t = ~(((x & low7) + low7) | x | low7); /* exact: no false flags */
        if (t) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
            return p + (__builtin_clzll(t) >> 3);
#else
            return p + (__builtin_ctzll(t) >> 3);
#endif
        }
    }
    (void)lo;
#endif
    while (p < end && (unsigned char)*p != c)
        p++;
    return p;
}

/* First CR or LF in [p, end), or end (other bytes below 0x0e are flagged by the vector test
 * and passed over here). */
static inline const char *sip_find_eol_(const char *lo, const char *p, const char *end)
{
#ifdef __SSE2__
    for (; end - p >= 16; p += 16) {
        for (unsigned mk = sip_mask16_ctl_(p); mk; mk &= mk - 1) {
            const char *q = p + __builtin_ctz(mk);
            if (*q == '\r' || *q == '\n')
                return q;
        }
    }
    if (p < end && end - lo >= 16) {
        for (unsigned mk = sip_mask16_ctl_(end - 16) >> (16 - (end - p)); mk; mk &= mk - 1) {
            const char *q = p + __builtin_ctz(mk);
            if (*q == '\r' || *q == '\n')
                return q;
        }
        return end;
    }
#else
    /* SWAR: the zero-borrow test flags bytes below 0x0e, the lowest flag being exact */
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    while (end - p >= 8) {
        uint64_t x;
        memcpy(&x, p, 8);
        uint64_t t = (x - ones * 0x0e) & ~x & highs;
        if (t) {
            const char *e8 = p + 8;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
            p += __builtin_ctzll(t) >> 3;
#endif
            for (; p < e8; p++)
                if (*p == '\r' || *p == '\n')
                    return p;
            continue;
        }
        p += 8;
    }
    (void)lo;
#endif
    while (p < end && *p != '\r' && *p != '\n')
        p++;
    return p;
}

/* Zeroes n bytes (a parser's output struct) with plain vector stores: for the couple of
 * hundred bytes of a struct sip_uri / sip_via / sip_nameaddr the compiler would emit a
 * `rep stos`, whose start-up costs more than the stores. */
static inline void sip_zero_(void *p, size_t n)
{
#ifdef __SSE2__
    char *c = (char *)p;
    size_t i = 0;
    __m128i z = _mm_setzero_si128();
    __asm__("" : "+x"(z)); /* opaque zero: keeps the stores from being merged into a memset */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC unroll 16
#endif
    for (; i + 16 <= n; i += 16)
        _mm_storeu_si128((__m128i *)(void *)(c + i), z);
    if (i < n)
        memset(c + i, 0, n - i);
#else
    memset(p, 0, n);
#endif
}

#endif
