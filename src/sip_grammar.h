/* SIP grammar primitives: URIs, name-addr, Via, generic params and comma lists.
 * RFC 3261 §25.1 (ABNF), §19.1 (SIP/SIPS URI), RFC 3966 (tel), RFC 5118 (IPv6 references).
 * Everything here is zero-copy: results are slices into the caller's buffer. */
#ifndef LUNASIP_SIP_GRAMMAR_H
#define LUNASIP_SIP_GRAMMAR_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

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
 * "-./:" (a header or param name, "sip/2.0"). Eight bytes per step: the case bit 0x20 is ORed
 * into s exactly where lit has bit 0x40 set, i.e. at its letters, so "-" never matches CR.
 * Reads exactly n bytes of s; with a constant n (every use) the loads are inlined. */
static inline int sip_ieq_lit(const char *s, const char *lit, size_t n)
{
    const uint64_t m = 0x2020202020202020ull;
    uint64_t a, b;
    for (; n >= 8; s += 8, lit += 8, n -= 8) {
        memcpy(&a, s, 8);
        memcpy(&b, lit, 8);
        if ((a | ((b >> 1) & m)) != b)
            return 0;
    }
    if (n == 0)
        return 1;
    a = b = 0;
    memcpy(&a, s, n);
    memcpy(&b, lit, n);
    return (a | ((b >> 1) & m)) == b;
}

/* Four bytes as a 32-bit load of them reads (for compares against memcpy'd words). */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define SIP_LE32(a, b, c, d) (((uint32_t)(a) << 24) | ((uint32_t)(b) << 16) | ((uint32_t)(c) << 8) | (uint32_t)(d))
#else
#define SIP_LE32(a, b, c, d) ((uint32_t)(a) | ((uint32_t)(b) << 8) | ((uint32_t)(c) << 16) | ((uint32_t)(d) << 24))
#endif

#endif
