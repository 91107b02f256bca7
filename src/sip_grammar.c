/* SIP grammar primitives: zero-copy, single-pass parsers for URIs, name-addr, Via, params
 * and comma lists. RFC 3261 §25.1 (ABNF), §19.1, §20.10, §20.42; RFC 3966 (tel, loosely);
 * RFC 5118 (IPv6 references). Reads only s[0..len), never allocates, never needs a NUL. */
#include <string.h>

#include "sip_grammar.h"

/* Character classes, one bit each, looked up in a 256-entry table built at compile time. */
enum {
    CT_ALPHA  = 1u << 0,
    CT_DIGIT  = 1u << 1,
    CT_HEX    = 1u << 2,
    CT_TOKEN  = 1u << 3,  /* RFC 3261 token: alphanum - . ! % * _ + ` ' ~ */
    CT_USER   = 1u << 4,  /* unreserved / user-unreserved (escapes handled apart) */
    CT_PASS   = 1u << 5,  /* unreserved / & = + $ , */
    CT_PARAM  = 1u << 6,  /* paramchar minus escaped: param-unreserved / unreserved */
    CT_HNV    = 1u << 7,  /* hnv-unreserved / unreserved */
    CT_HOST   = 1u << 8,  /* hostname chars: alphanum - . */
    CT_SCHEME = 1u << 9,  /* ALPHA / DIGIT / + - . */
    CT_OPAQUE = 1u << 10, /* visible ASCII except < > " (no whitespace) */
    CT_UINFO  = 1u << 11, /* anything that may appear in userinfo before '@' */
    CT_QDTEXT = 1u << 12, /* quoted-string text: SP HTAB 0x21 0x23-5B 0x5D-7E UTF8-NONASCII */
    CT_HVAL   = 1u << 13, /* unquoted header-param value: token, plus ':' for a bare IPv6 */
    CT_PANY   = 1u << 14, /* tolerant param name/value: token or paramchar */
    CT_WS     = 1u << 15, /* SP HTAB CR LF */
    CT_V6     = 1u << 16, /* inside an IPv6 reference: HEXDIG : . */
    CT_TEL    = 1u << 17, /* tel number chars, loosely: HEXDIG * # - . ( ) + */
    CT_LSPEC  = 1u << 18, /* what sip_list_next must look at: , " < */
    CT_ASTOP  = 1u << 19, /* ends a bare addr-spec: ; , ? SP HTAB CR LF */
    CT_LABEL  = 1u << 20, /* inside a hostname label: alphanum - */
    CT_HALPHA = 1u << 21, /* a label char that makes a host a name, not an IPv4: ALPHA - */
    CT_UXTRA  = 1u << 22, /* in userinfo but not in user: ':' (password) and '%' (escapes) */
    CT_COLON  = 1u << 23, /* ':', the one CT_HVAL byte that is not a token byte */
    CT_NASTOP = 1u << 24, /* not CT_ASTOP */
    CT_NLSPEC = 1u << 25, /* not CT_LSPEC */
};

#define IS_ALPHA(c) (((c) >= 'a' && (c) <= 'z') || ((c) >= 'A' && (c) <= 'Z'))
#define IS_DIGIT(c) ((c) >= '0' && (c) <= '9')
#define IS_ALNUM(c) (IS_ALPHA(c) || IS_DIGIT(c))
#define IS_HEX(c) (IS_DIGIT(c) || ((c) >= 'a' && (c) <= 'f') || ((c) >= 'A' && (c) <= 'F'))
#define IS_MARK(c) ((c) == '-' || (c) == '_' || (c) == '.' || (c) == '!' || (c) == '~' || \
                    (c) == '*' || (c) == '\'' || (c) == '(' || (c) == ')')
#define IS_UNRES(c) (IS_ALNUM(c) || IS_MARK(c))
#define IS_TOKEN(c) (IS_ALNUM(c) || (c) == '-' || (c) == '.' || (c) == '!' || (c) == '%' || \
                     (c) == '*' || (c) == '_' || (c) == '+' || (c) == '`' || (c) == '\'' || (c) == '~')
#define IS_USERX(c) ((c) == '&' || (c) == '=' || (c) == '+' || (c) == '$' || (c) == ',' || \
                     (c) == ';' || (c) == '?' || (c) == '/')
#define IS_PASSX(c) ((c) == '&' || (c) == '=' || (c) == '+' || (c) == '$' || (c) == ',')
#define IS_PARAMX(c) ((c) == '[' || (c) == ']' || (c) == '/' || (c) == ':' || (c) == '&' || \
                      (c) == '+' || (c) == '$')
#define IS_HNVX(c) ((c) == '[' || (c) == ']' || (c) == '/' || (c) == '?' || (c) == ':' || \
                    (c) == '+' || (c) == '$')
#define IS_WS(c) ((c) == ' ' || (c) == '\t' || (c) == '\r' || (c) == '\n')

#define CLS(c) ( \
    (IS_ALPHA(c) ? CT_ALPHA : 0u) | (IS_DIGIT(c) ? CT_DIGIT : 0u) | (IS_HEX(c) ? CT_HEX : 0u) | \
    (IS_TOKEN(c) ? CT_TOKEN : 0u) | \
    (IS_UNRES(c) || IS_USERX(c) ? CT_USER : 0u) | \
    (IS_UNRES(c) || IS_PASSX(c) ? CT_PASS : 0u) | \
    (IS_UNRES(c) || IS_PARAMX(c) ? CT_PARAM : 0u) | \
    (IS_UNRES(c) || IS_HNVX(c) ? CT_HNV : 0u) | \
    (IS_ALNUM(c) || (c) == '-' || (c) == '.' ? CT_HOST : 0u) | \
    (IS_ALNUM(c) || (c) == '+' || (c) == '-' || (c) == '.' ? CT_SCHEME : 0u) | \
    ((c) > 0x20 && (c) < 0x7f && (c) != '<' && (c) != '>' && (c) != '"' ? CT_OPAQUE : 0u) | \
    (IS_UNRES(c) || IS_USERX(c) || (c) == ':' || (c) == '%' ? CT_UINFO : 0u) | \
    ((c) == ' ' || (c) == '\t' || (c) == 0x21 || ((c) >= 0x23 && (c) <= 0x5b) || \
     ((c) >= 0x5d && (c) <= 0x7e) || (c) >= 0x80 ? CT_QDTEXT : 0u) | \
    (IS_TOKEN(c) || (c) == ':' ? CT_HVAL : 0u) | \
    (IS_TOKEN(c) || IS_UNRES(c) || IS_PARAMX(c) ? CT_PANY : 0u) | \
    (IS_WS(c) ? CT_WS : 0u) | \
    (IS_HEX(c) || (c) == ':' || (c) == '.' ? CT_V6 : 0u) | \
    (IS_HEX(c) || (c) == '*' || (c) == '#' || (c) == '-' || (c) == '.' || (c) == '(' || \
     (c) == ')' || (c) == '+' ? CT_TEL : 0u) | \
    ((c) == ',' || (c) == '"' || (c) == '<' ? CT_LSPEC : 0u) | \
    ((c) == ';' || (c) == ',' || (c) == '?' || IS_WS(c) ? CT_ASTOP : 0u) | \
    (IS_ALNUM(c) || (c) == '-' ? CT_LABEL : 0u) | \
    (IS_ALPHA(c) || (c) == '-' ? CT_HALPHA : 0u) | \
    ((c) == ':' || (c) == '%' ? CT_UXTRA : 0u) | \
    ((c) == ':' ? CT_COLON : 0u) | \
    ((c) == ';' || (c) == ',' || (c) == '?' || IS_WS(c) ? 0u : CT_NASTOP) | \
    ((c) == ',' || (c) == '"' || (c) == '<' ? 0u : CT_NLSPEC))

#define R4(b) CLS(b), CLS((b) + 1), CLS((b) + 2), CLS((b) + 3)
#define R16(b) R4(b), R4((b) + 4), R4((b) + 8), R4((b) + 12)
#define R64(b) R16(b), R16((b) + 16), R16((b) + 32), R16((b) + 48)
static const uint32_t ctab[256] = { R64(0), R64(64), R64(128), R64(192) };

#define CT(c) (ctab[(unsigned char)(c)])

#define INLINE static inline __attribute__((always_inline))

INLINE struct sip_str slice(const char *a, const char *b)
{
    return (struct sip_str){ a, (uint32_t)(b - a) };
}

/* ---- class scans ----------------------------------------------------------------------
 * Scanning a run of one class is most of the parse: four bytes per step, unrolled (about a
 * third of the instructions of a byte loop, and the common runs are short enough that a
 * vector version paid for its set-up in no case measured). The watch class wcls (0 for
 * none) reports whether any byte passed belongs to it (a ':' in a value, a '%' in a user
 * part) so that no second pass is needed. */

#define SCAN_STEP(i)      \
    t = CT(p[i]);         \
    if (!(t & cls)) {     \
        p += i;           \
        goto out;         \
    }                     \
    a |= t;

/* The first byte of [p, end) outside cls; *seen |= wcls when a byte of wcls was passed. */
INLINE const char *scan_w(const char *p, const char *end, uint32_t cls, uint32_t wcls, uint32_t *seen)
{
    uint32_t a = 0, t;
    for (; end - p >= 4; p += 4) {
        SCAN_STEP(0)
        SCAN_STEP(1)
        SCAN_STEP(2)
        SCAN_STEP(3)
    }
    while (p < end && ((t = CT(*p)) & cls)) {
        a |= t;
        p++;
    }
out:
    *seen |= a & wcls;
    return p;
}

/* The first byte of [p, end) outside cls. */
INLINE const char *scan(const char *p, const char *end, uint32_t cls)
{
    uint32_t seen = 0;
    return scan_w(p, end, cls, 0, &seen);
}

/* Skips LWS (RFC 3261 §25.1): SP/HTAB, and a line break (CRLF, or a lone LF) only when the
 * next line starts with SP/HTAB, i.e. header folding. A bare CR or LF is not LWS. */
static const char *skip_lws_slow(const char *p, const char *end)
{
    while (p < end) {
        char c = *p;
        if (c == ' ' || c == '\t')
            p++;
        else if (c == '\r' && end - p >= 3 && p[1] == '\n' && (p[2] == ' ' || p[2] == '\t'))
            p += 3;
        else if (c == '\n' && end - p >= 2 && (p[1] == ' ' || p[1] == '\t'))
            p += 2;
        else
            break;
    }
    return p;
}

/* The usual cases answered inline: no LWS at all (any byte above SP starts no LWS), or one
 * SP before such a byte. */
INLINE const char *skip_lws(const char *p, const char *end)
{
    if (p >= end || (unsigned char)*p > ' ')
        return p;
    if (*p == ' ' && end - p >= 2 && (unsigned char)p[1] > ' ')
        return p + 1;
    return skip_lws_slow(p, end);
}

/* Scans a run of cls characters and "%" HEXDIG HEXDIG escapes. Returns where the run ends,
 * or NULL when a '%' is not followed by two hex digits (RFC 3261 escaped), inside [p, end). */
INLINE const char *scan_esc(const char *p, const char *end, uint32_t cls)
{
    for (;;) {
        p = scan(p, end, cls);
        if (p >= end || *p != '%')
            return p;
        if (end - p < 3 || !(CT(p[1]) & CT(p[2]) & CT_HEX))
            return NULL;
        p += 3;
    }
}

/* Skips a quoted-string starting at the opening '"'. Accepts qdtext (UTF-8 included),
 * folding, and quoted-pairs "\" followed by any of %x00-09 / %x0B-0C / %x0E-7F. Refuses
 * raw control characters and an unterminated string. Returns the byte after the closing
 * quote or NULL. */
static const char *skip_quoted(const char *p, const char *end)
{
    p++;
    for (;;) {
        p = scan(p, end, CT_QDTEXT);
        if (p >= end)
            return NULL;
        unsigned char c = (unsigned char)*p;
        if (c == '"') {
            return p + 1;
        } else if (c == '\\') {
            if (end - p < 2)
                return NULL;
            c = (unsigned char)p[1];
            if (c == '\n' || c == '\r' || c > 0x7f)
                return NULL;
            p += 2;
        } else {
            const char *q = skip_lws_slow(p, end); /* folding inside the string */
            if (q == p)
                return NULL;
            p = q;
        }
    }
}

/* IPv4address (RFC 3261 §25.1): exactly four 1*3DIGIT octets of value 0..255. */
static int ipv4_ok(const char *p, const char *e)
{
    if (e - p < 7 || e - p > 15)
        return 0;
    unsigned dots = 0, v = 0, nd = 0; /* nd: digits of the octet so far (<= 15, no overflow
                                         that matters: more than 3 refuses) */
    for (; p < e; p++) {
        unsigned d = (unsigned)((unsigned char)*p - '0');
        if (d <= 9) {
            v = v * 10 + d;
            nd++;
        } else if (*p == '.' && nd - 1 <= 2 && v <= 255 && dots < 3) {
            dots++;
            v = 0;
            nd = 0;
        } else {
            return 0;
        }
    }
    return dots == 3 && nd - 1 <= 2 && v <= 255;
}

/* IPv6address (RFC 3261 §25.1 / RFC 4291 §2.2): hex groups of 1..4 digits, one "::" at most,
 * an optional dotted IPv4 tail, 8 groups without "::" and at most 7 with it. Tolerates the
 * RFC 5118 §4.10 three-colon form ("2001:db8:::192.0.2.1") right before an IPv4 tail, which
 * RFC 3261's ABNF bug produced and RFC 5118 says must be accepted. */
static int ipv6_ok(const char *p, const char *e)
{
    int colons = 0, groups = 0, comp = 0, v4 = 0, lastrun = 0;
    if (p < e && *p == ':' && (e - p < 2 || p[1] != ':'))
        return 0; /* a lone leading ':' */
    while (p < e) {
        if (*p == ':') {
            int run = 0;
            while (p < e && *p == ':') {
                run++;
                p++;
            }
            colons += run;
            if (run > 3 || (run > 1 && comp))
                return 0;
            if (run > 1)
                comp = run;
            if (p == e && run == 1)
                return 0; /* a lone trailing ':' */
            lastrun = run;
            continue;
        }
        const char *g = p;
        int dot = 0;
        while (p < e && *p != ':') {
            if (*p == '.')
                dot = 1;
            else if (!(CT(*p) & CT_HEX))
                return 0;
            p++;
        }
        if (dot) {
            if (p != e || !ipv4_ok(g, p))
                return 0;
            groups += 2;
            v4 = 1;
        } else {
            if (p - g > 4)
                return 0;
            groups++;
        }
    }
    if (colons < 2)
        return 0;
    if (comp == 3 && !(v4 && lastrun == 3))
        return 0;
    return comp ? groups <= 7 : groups == 8;
}

#ifdef __SSE2__
/* Masks of the sixteen bytes at q: hostname characters (alphanum - .), dots, and the ones
 * that make a name rather than an IPv4 address (ALPHA -). */
INLINE void host_masks(const char *q, unsigned *host, unsigned *dot, unsigned *name)
{
    __m128i x = _mm_loadu_si128((const __m128i *)(const void *)q);
    __m128i a = _mm_sub_epi8(_mm_or_si128(x, _mm_set1_epi8(0x20)), _mm_set1_epi8('a'));
    __m128i alpha = _mm_cmpeq_epi8(_mm_min_epu8(a, _mm_set1_epi8(25)), a);
    __m128i d = _mm_sub_epi8(x, _mm_set1_epi8('0'));
    __m128i digit = _mm_cmpeq_epi8(_mm_min_epu8(d, _mm_set1_epi8(9)), d);
    __m128i nm = _mm_or_si128(alpha, _mm_cmpeq_epi8(x, _mm_set1_epi8('-')));
    __m128i dt = _mm_cmpeq_epi8(x, _mm_set1_epi8('.'));
    *name = (unsigned)_mm_movemask_epi8(nm);
    *dot = (unsigned)_mm_movemask_epi8(dt);
    *host = (unsigned)_mm_movemask_epi8(_mm_or_si128(_mm_or_si128(nm, digit), dt));
}
#endif

/* host = hostname / IPv4address / IPv6reference (RFC 3261 §25.1). Hostnames are taken
 * tolerantly (any alphanum/'-' labels, optional trailing dot; RFC 1123 allows a leading
 * digit) but refuse empty labels; a host made only of digits and dots must be a valid IPv4
 * address. One pass: with SSE2, sixteen bytes per step give the extent, the dots (an empty
 * label is a dot first or right after another) and whether any letter or '-' makes it a
 * name; [lo, end) is readable, so a short tail is one load ending at end. Returns the end of
 * the host, or NULL. */
INLINE const char *parse_host(const char *lo, const char *p, const char *end, struct sip_str *host,
                              enum sip_host_type *type)
{
    const char *s = p;
    if (p < end && *p == '[') {
        const char *q = scan(p + 1, end, CT_V6);
        if (q >= end || *q != ']' || !ipv6_ok(p + 1, q))
            return NULL;
        *host = slice(s, q + 1);
        *type = SIP_HOST_IPV6;
        return q + 1;
    }
    int isname;
#ifdef __SSE2__
    if (end - lo >= 16) {
        unsigned prevdot = 1, anyname = 0; /* a dot first is an empty label */
        while (p < end) {
            unsigned hm, dm, nm;
            if (end - p >= 16) {
                host_masks(p, &hm, &dm, &nm);
            } else {
                unsigned sh = (unsigned)(16 - (end - p)); /* bits from end on read 0: stops */
                host_masks(end - 16, &hm, &dm, &nm);
                hm >>= sh;
                dm >>= sh;
                nm >>= sh;
            }
            unsigned n = (unsigned)__builtin_ctz((~hm & 0xffffu) | 0x10000u);
            unsigned in = (1u << n) - 1;
            dm &= in;
            if (dm & ((dm << 1) | prevdot))
                return NULL; /* ".." or a leading '.' */
            anyname |= nm & in;
            p += n;
            if (n < 16)
                break;
            prevdot = dm >> 15;
        }
        if (p == s)
            return NULL;
        isname = anyname != 0;
    } else
#endif
    {
        uint32_t acc = 0;
        for (;;) {
            const char *l = p;
            p = scan_w(p, end, CT_LABEL, CT_HALPHA, &acc);
            if (p == l)
                return NULL; /* empty label: nothing at all, a leading '.' */
            if (p >= end || *p != '.')
                break;
            p++;
            if (p >= end || !(CT(*p) & CT_LABEL)) {
                if (p < end && *p == '.')
                    return NULL; /* ".." */
                break;           /* a trailing dot ends the name */
            }
        }
        isname = (acc & CT_HALPHA) != 0;
    }
    if (!isname) {
        if (!ipv4_ok(s, p))
            return NULL;
        *type = SIP_HOST_IPV4;
    } else {
        *type = SIP_HOST_NAME;
    }
    *host = slice(s, p);
    return p;
}

/* port = 1*DIGIT, 0..65535; at most 10 digits (leading zeros allowed, as sip_parse_uint).
 * Returns the end or NULL. */
INLINE const char *parse_port(const char *p, const char *end, struct sip_str *ps, uint16_t *port)
{
    size_t lim = (size_t)(end - p), i = 0;
    uint64_t v = 0;
    if (lim > 11)
        lim = 11; /* an eleventh digit is enough to refuse */
    for (; i < lim; i++) {
        unsigned d = (unsigned)((unsigned char)p[i] - '0');
        if (d > 9)
            break;
        v = v * 10 + d;
    }
    if (i == 0 || i > 10 || v > 65535)
        return NULL;
    *ps = slice(p, p + i);
    *port = (uint16_t)v;
    return p + i;
}

/* uri-parameters after the first ';': 1*paramchar ["=" 1*paramchar] separated by ';'
 * (RFC 3261 §25.1). An empty name or value (";;", a trailing ';', "a=") is refused.
 * Stops at '?' or any other character the caller must judge. Returns the end or NULL. */
static const char *uri_params(const char *p, const char *end)
{
    for (;;) {
        const char *q = scan_esc(p, end, CT_PARAM);
        if (!q || q == p)
            return NULL;
        p = q;
        if (p < end && *p == '=') {
            q = scan_esc(p + 1, end, CT_PARAM);
            if (!q || q == p + 1)
                return NULL;
            p = q;
        }
        if (p < end && *p == ';') {
            p++;
            continue;
        }
        return p;
    }
}

/* headers after '?': hname "=" hvalue *("&" hname "=" hvalue), hvalue may be empty. */
static const char *uri_headers(const char *p, const char *end)
{
    for (;;) {
        const char *q = scan_esc(p, end, CT_HNV);
        if (!q || q == p || q >= end || *q != '=')
            return NULL;
        p = scan_esc(q + 1, end, CT_HNV);
        if (!p)
            return NULL;
        if (p < end && *p == '&') {
            p++;
            continue;
        }
        return p;
    }
}

/* uri-parameters after the ';' at p: sets *params (without the ';') and returns the end,
 * or NULL when malformed. */
static const char *opt_params(const char *p, const char *end, struct sip_str *params)
{
    const char *ps = p + 1, *e = uri_params(ps, end);
    if (e)
        *params = slice(ps, e);
    return e;
}

/* SIP-URI / SIPS-URI after "scheme:" (RFC 3261 §25.1). userinfo exists exactly when an '@'
 * comes before any character that cannot be in userinfo: user may itself hold ';' '?' '/'
 * (RFC 4475 §3.1.1.2, §3.1.1.9), so the first '@' decides, not the first ';'. The scan for
 * that '@' also tells whether the user part needs a second look (a ':' or a '%'). */
static int parse_sip(const char *lo, const char *p, const char *end, struct sip_uri *out)
{
    uint32_t acc = 0;
    const char *q = scan_w(p, end, CT_UINFO, CT_UXTRA, &acc);
    if (q < end && *q == '@') {
        if (!(acc & CT_UXTRA)) {
            if (q == p)
                return -1;
            out->user = slice(p, q); /* only user characters: nothing more to check */
        } else {
            const char *u = scan_esc(p, q, CT_USER);
            if (!u || u == p)
                return -1;
            out->user = slice(p, u);
            if (u < q) {
                if (*u != ':')
                    return -1;
                const char *pw = scan_esc(u + 1, q, CT_PASS);
                if (pw != q)
                    return -1;
                out->password = slice(u + 1, q);
            }
        }
        p = q + 1;
    }
    p = parse_host(lo, p, end, &out->host, &out->host_type);
    if (!p)
        return -1;
    if (p < end && *p == ':') {
        p = parse_port(p + 1, end, &out->port_str, &out->port);
        if (!p)
            return -1;
    }
    if (p < end && *p == ';' && !(p = opt_params(p, end, &out->params)))
        return -1;
    if (p < end && *p == '?') {
        const char *hs = p + 1;
        p = uri_headers(hs, end);
        if (!p)
            return -1;
        out->headers = slice(hs, p);
    }
    return p == end ? 0 : -1;
}

/* tel URI, loosely after RFC 3966 §3: a non-empty number of digits, visual separators and
 * escapes with at least one digit, then uri-parameters. No headers. */
static int parse_tel(const char *p, const char *end, struct sip_uri *out)
{
    const char *q = scan_esc(p, end, CT_TEL);
    if (!q || q == p)
        return -1;
    const char *d = p;
    while (d < q && !(CT(*d) & CT_HEX))
        d++;
    if (d == q)
        return -1;
    out->user = slice(p, q);
    if (q < end && *q == ';' && !(q = opt_params(q, end, &out->params)))
        return -1;
    return q == end ? 0 : -1;
}

static inline int lc(int c)
{
    return (c >= 'A' && c <= 'Z') ? c + 32 : c;
}

INLINE uint32_t load32(const char *p)
{
    uint32_t x;
    memcpy(&x, p, 4);
    return x;
}

/* sip_uri_parse into an already zeroed *out. "sip:" and "sips:" are recognised with one
 * load (the case bit is forced on the letters only, so ':' matches exactly). */
static int uri_parse_z(const char *s, size_t len, struct sip_uri *out)
{
    if (len == 0 || len > UINT32_MAX)
        return -1;
    const char *end = s + len;
    if (len >= 5) {
        uint32_t w = load32(s);
        if ((w | SIP_LE32(0x20, 0x20, 0x20, 0)) == SIP_LE32('s', 'i', 'p', ':')) {
            out->scheme_str = slice(s, s + 3);
            out->scheme = SIP_URI_SIP;
            return parse_sip(s, s + 4, end, out);
        }
        if ((w | SIP_LE32(0x20, 0x20, 0x20, 0x20)) == SIP_LE32('s', 'i', 'p', 's') && s[4] == ':') {
            out->scheme_str = slice(s, s + 4);
            out->scheme = SIP_URI_SIPS;
            return parse_sip(s, s + 5, end, out);
        }
    }
    if (!(CT(*s) & CT_ALPHA))
        return -1;
    const char *p = scan(s + 1, end, CT_SCHEME);
    if (p >= end || *p != ':')
        return -1;
    out->scheme_str = slice(s, p);
    size_t n = (size_t)(p - s);
    p++;
    if ((n == 3 || n == 4) && lc(s[0]) == 's' && lc(s[1]) == 'i' && lc(s[2]) == 'p' &&
        (n == 3 || lc(s[3]) == 's')) {
        out->scheme = n == 3 ? SIP_URI_SIP : SIP_URI_SIPS;
        return parse_sip(s, p, end, out);
    }
    if (n == 3 && lc(s[0]) == 't' && lc(s[1]) == 'e' && lc(s[2]) == 'l') {
        out->scheme = SIP_URI_TEL;
        return parse_tel(p, end, out);
    }
    out->scheme = SIP_URI_OTHER;
    if (p == end || scan(p, end, CT_OPAQUE) != end)
        return -1;
    out->opaque = slice(p, end);
    return 0;
}

int sip_uri_parse(const char *s, size_t len, struct sip_uri *out)
{
    sip_zero_(out, sizeof(*out));
    return uri_parse_z(s, len, out);
}

/* One ";name[=value]" step shared by the public iterator (tolerant classes, a superset
 * of every params slice the parsers here return) and the header parsers (strict classes).
 * value: quoted-string, IPv6 reference (strict mode; the tolerant class takes [ ] as
 * plain chars), or 1*vcls. LWS is skipped around '=' and ';'. A trailing ';' and an
 * empty name or value are malformed. *vtok tells whether the value is a token (what the
 * callers check for branch and tag), found during the scan instead of by a second one. */
INLINE int param_step(const char **pp, const char *end, struct sip_str *name,
                      struct sip_str *value, int *vtok, uint32_t ncls, uint32_t vcls)
{
    const char *p = skip_lws(*pp, end);
    if (p >= end) {
        *pp = end;
        return 0;
    }
    const char *n = p;
    p = scan(p, end, ncls);
    if (p == n)
        return -1;
    *name = slice(n, p);
    *value = (struct sip_str){ NULL, 0 };
    *vtok = 0;
    p = skip_lws(p, end);
    if (p < end && *p == '=') {
        p = skip_lws(p + 1, end);
        const char *v = p;
        if (p < end && *p == '"') {
            p = skip_quoted(p, end);
            if (!p)
                return -1;
        } else if (p < end && *p == '[' && !(CT('[') & vcls)) {
            const char *q = scan(p + 1, end, CT_V6);
            if (q >= end || *q != ']')
                return -1;
            p = q + 1;
        } else {
            uint32_t colon = 0; /* in CT_HVAL, ':' is the one byte not in a token */
            p = scan_w(p, end, vcls, CT_COLON, &colon);
            *vtok = !colon;
        }
        if (p == v)
            return -1;
        *value = slice(v, p);
        p = skip_lws(p, end);
    }
    if (p < end) {
        if (*p != ';')
            return -1;
        p = skip_lws(p + 1, end);
        if (p >= end)
            return -1;
    }
    *pp = p;
    return 1;
}

int sip_param_next(const char **p, const char *end, struct sip_str *name, struct sip_str *value)
{
    int vtok;
    return param_step(p, end, name, value, &vtok, CT_PANY, CT_PANY);
}

int sip_param_get(struct sip_str params, const char *name, struct sip_str *value)
{
    if (!params.s)
        return 0;
    const char *p = params.s, *end = params.s + params.len;
    struct sip_str n, v;
    int r, vtok;
    while ((r = param_step(&p, end, &n, &v, &vtok, CT_PANY, CT_PANY)) == 1) {
        if (sip_str_casecmp(n, name) == 0) {
            if (value)
                *value = v;
            return 1;
        }
    }
    return r;
}

/* Splits at commas outside quoted strings and <...>. An empty element (leading, doubled or
 * trailing comma) is malformed: after the last item a trailing comma leaves *p on the comma
 * so that the next call reports it. */
int sip_list_next(const char **pp, const char *end, struct sip_str *item)
{
    const char *p = *pp;
    while (p < end && (CT(*p) & CT_WS))
        p++;
    if (p >= end) {
        *pp = end;
        return 0;
    }
    if (*p == ',')
        return -1;
    const char *s = p;
    while (p < end) {
        char c = *p;
        if (!(CT(c) & CT_LSPEC)) {
            p = scan(p + 1, end, CT_NLSPEC);
        } else if (c == ',') {
            break;
        } else if (c == '"') {
            p = skip_quoted(p, end);
            if (!p)
                return -1;
        } else {
            const char *g = memchr(p, '>', (size_t)(end - p));
            if (!g)
                return -1;
            p = g + 1;
        }
    }
    *item = sip_str_trim(slice(s, p));
    if (p < end) {
        const char *n = p + 1;
        while (n < end && (CT(*n) & CT_WS))
            n++;
        *pp = n < end ? n : p;
    } else {
        *pp = end;
    }
    return 1;
}

INLINE struct sip_str trim(const char *s, size_t len)
{
    const char *p = s, *e = s + len;
    while (p < e && (CT(*p) & CT_WS))
        p++;
    while (e > p && (CT(e[-1]) & CT_WS))
        e--;
    return slice(p, e);
}

/* Header params after a name-addr/addr-spec: [LWS] *(";" generic-param) to the end.
 * generic-param = token [ "=" (token / host / quoted-string) ] (RFC 3261 §25.1); tag must
 * be "tag=" token (§20.20). */
static int nameaddr_params(const char *p, const char *end, struct sip_nameaddr *out)
{
    p = skip_lws(p, end);
    if (p == end)
        return 0;
    if (*p != ';')
        return -1;
    p = skip_lws(p + 1, end);
    if (p >= end)
        return -1;
    out->params = slice(p, end);
    struct sip_str n, v;
    int r, vtok;
    while ((r = param_step(&p, end, &n, &v, &vtok, CT_TOKEN, CT_HVAL)) == 1) {
        if (!out->tag.s && n.len == 3 && sip_ieq_lit(n.s, "tag", 3)) {
            if (!v.s || !vtok)
                return -1;
            out->tag = v;
        }
    }
    return r;
}

/* The first of ; , ? SP HTAB CR LF in [p, end), or end; [lo, end) is readable. */
INLINE const char *find_astop(const char *lo, const char *p, const char *end)
{
#ifdef __SSE2__
#define ASTOP16(q, mk)                                                                           \
    do {                                                                                         \
        __m128i x_ = _mm_loadu_si128((const __m128i *)(const void *)(q));                        \
        __m128i s_ = _mm_or_si128(_mm_cmpeq_epi8(x_, _mm_set1_epi8(';')),                        \
                                  _mm_cmpeq_epi8(x_, _mm_set1_epi8(',')));                       \
        s_ = _mm_or_si128(s_, _mm_cmpeq_epi8(x_, _mm_set1_epi8('?')));                           \
        s_ = _mm_or_si128(s_, _mm_cmpeq_epi8(x_, _mm_set1_epi8(' ')));                           \
        s_ = _mm_or_si128(s_, _mm_cmpeq_epi8(x_, _mm_set1_epi8('\t')));                          \
        s_ = _mm_or_si128(s_, _mm_cmpeq_epi8(x_, _mm_set1_epi8('\r')));                          \
        s_ = _mm_or_si128(s_, _mm_cmpeq_epi8(x_, _mm_set1_epi8('\n')));                          \
        (mk) = (unsigned)_mm_movemask_epi8(s_);                                                  \
    } while (0)
    unsigned mk;
    for (; end - p >= 16; p += 16) {
        ASTOP16(p, mk);
        if (mk)
            return p + __builtin_ctz(mk);
    }
    if (p < end && end - lo >= 16) {
        ASTOP16(end - 16, mk);
        mk >>= 16 - (end - p);
        return mk ? p + __builtin_ctz(mk) : end;
    }
#undef ASTOP16
#endif
    (void)lo;
    return scan(p, end, CT_NASTOP);
}

/* A bare addr-spec (RFC 3261 §20.10): the URI runs to the first ';' or LWS, everything
 * after ';' is header params. A URI holding ',' or '?' must be in <> (§20.10), so refused. */
static int nameaddr_bare(const char *lo, const char *p, const char *end, struct sip_nameaddr *out)
{
    const char *q = find_astop(lo, p, end);
    if (q < end && (*q == ',' || *q == '?'))
        return -1;
    if (uri_parse_z(p, (size_t)(q - p), &out->uri) != 0)
        return -1;
    out->uri_str = slice(p, q);
    return nameaddr_params(q, end, out);
}

/* name-addr = [display-name] LAQUOT addr-spec RAQUOT, or addr-spec, then header params.
 * display-name is a quoted-string or *(token LWS); LWS before '<' is optional (RFC 4475
 * §3.1.1.6 lwsdisp). Refused: unbalanced quotes, unquoted non-token display names (',' in
 * baddn), anything but a bare URI inside <> (spaces in badaspec), an unclosed '<'. */
int sip_nameaddr_parse(const char *s, size_t len, int allow_star, struct sip_nameaddr *out)
{
    sip_zero_(out, sizeof(*out));
    if (len == 0 || len > UINT32_MAX)
        return -1;
    struct sip_str t = trim(s, len);
    const char *p = t.s, *end = t.s + t.len;
    if (p >= end)
        return -1;
    if (*p == '*' && t.len == 1) {
        if (!allow_star)
            return -1;
        out->is_star = 1;
        return 0;
    }
    if (*p == '"') {
        const char *q = skip_quoted(p, end);
        if (!q)
            return -1;
        out->display = slice(p, q);
        p = skip_lws(q, end);
        if (p >= end || *p != '<')
            return -1;
    } else if (*p != '<') {
        const char *d = p, *dend = p;
        for (;;) {
            const char *q = scan(p, end, CT_TOKEN);
            if (q == p)
                return -1;
            if (p == d && q < end && *q == ':')
                return nameaddr_bare(t.s, d, end, out);
            dend = q;
            p = skip_lws(q, end);
            if (p < end && *p == '<')
                break;
            if (p == q)
                return -1;
        }
        out->display = slice(d, dend);
    }
    const char *u = p + 1;
    const char *g = sip_find_byte_(t.s, u, end, '>');
    if (g == end || uri_parse_z(u, (size_t)(g - u), &out->uri) != 0)
        return -1;
    out->uri_str = slice(u, g);
    return nameaddr_params(g + 1, end, out);
}

/* Checks a Via received value: IPv4, IPv6 bare (RFC 3261) or in [] (RFC 5118 §4.5). A valid
 * IPv4 address holds neither '[' nor ':', so trying it first changes no answer. */
static int received_ok(struct sip_str v)
{
    const char *p = v.s, *e = v.s + v.len;
    if (ipv4_ok(p, e))
        return 1;
    if (v.len >= 2 && *p == '[')
        return e[-1] == ']' && ipv6_ok(p + 1, e - 1);
    if (memchr(p, ':', v.len))
        return ipv6_ok(p, e);
    return 0;
}

/* 1..10 digits, at most max (sip_parse_uint without the call). */
INLINE int uint_ok(struct sip_str v, uint64_t max)
{
    if (v.len == 0 || v.len > 10)
        return 0;
    uint64_t x = 0;
    for (uint32_t i = 0; i < v.len; i++) {
        unsigned d = (unsigned)((unsigned char)v.s[i] - '0');
        if (d > 9)
            return 0;
        x = x * 10 + d;
    }
    return x <= max;
}

/* via-parm (RFC 3261 §20.42, §25.1) with LWS around '/', ':', ';' and '=' (RFC 4475
 * §3.1.1.1). Known params are checked: branch a token, received an IP address, rport empty
 * or a port, ttl 0..255, maddr a host. Stray ';' are refused (RFC 4475 §3.1.2.1 badinv01).
 * The usual "SIP/2.0/" prefix is taken with one compare; anything else goes through the
 * general token / LWS / '/' steps, which give the same slices for that prefix. */
int sip_via_parse(const char *s, size_t len, struct sip_via *out)
{
    sip_zero_(out, sizeof(*out));
    if (len == 0 || len > UINT32_MAX)
        return -1;
    struct sip_str t = trim(s, len);
    const char *p = t.s, *end = t.s + t.len, *q;
    if (end - p >= 8 && sip_ieq_lit(p, "sip/2.0/", 8)) {
        out->proto_name = slice(p, p + 3);
        out->proto_version = slice(p + 4, p + 7);
        p = skip_lws(p + 8, end);
        q = scan(p, end, CT_TOKEN);
        if (q == p)
            return -1;
        out->transport = slice(p, q);
        p = q;
    } else {
        struct sip_str *proto[3] = { &out->proto_name, &out->proto_version, &out->transport };
        for (int i = 0; i < 3; i++) {
            if (i) {
                p = skip_lws(p, end);
                if (p >= end || *p != '/')
                    return -1;
                p = skip_lws(p + 1, end);
            }
            q = scan(p, end, CT_TOKEN);
            if (q == p)
                return -1;
            *proto[i] = slice(p, q);
            p = q;
        }
    }
    q = skip_lws(p, end);
    if (q == p)
        return -1;
    p = parse_host(t.s, q, end, &out->host, &out->host_type);
    if (!p)
        return -1;
    q = skip_lws(p, end);
    if (q < end && *q == ':') {
        p = parse_port(skip_lws(q + 1, end), end, &out->port_str, &out->port);
        if (!p)
            return -1;
        q = skip_lws(p, end);
    }
    p = q;
    if (p == end)
        return 0;
    if (*p != ';')
        return -1;
    p = skip_lws(p + 1, end);
    if (p >= end)
        return -1;
    out->params = slice(p, end);
    struct sip_str n, v;
    int r, vtok;
    while ((r = param_step(&p, end, &n, &v, &vtok, CT_TOKEN, CT_HVAL)) == 1) {
        switch (n.len) {
        case 6:
            if (sip_ieq_lit(n.s, "branch", 6)) {
                if (!v.s || !vtok)
                    return -1;
                if (!out->branch.s)
                    out->branch = v;
            }
            break;
        case 8:
            if (sip_ieq_lit(n.s, "received", 8)) {
                if (!v.s || !received_ok(v))
                    return -1;
                if (!out->has_received) {
                    out->received = v;
                    out->has_received = 1;
                }
            }
            break;
        case 5:
            if (sip_ieq_lit(n.s, "rport", 5)) {
                if (v.s && !uint_ok(v, 65535))
                    return -1;
                if (!out->has_rport) {
                    out->rport = v;
                    out->has_rport = 1;
                }
            } else if (sip_ieq_lit(n.s, "maddr", 5)) {
                struct sip_str h;
                enum sip_host_type ht;
                if (!v.s || parse_host(v.s, v.s, v.s + v.len, &h, &ht) != v.s + v.len)
                    return -1;
                if (!out->maddr.s)
                    out->maddr = v;
            }
            break;
        case 3:
            if (sip_ieq_lit(n.s, "ttl", 3)) {
                if (!v.s || !uint_ok(v, 255))
                    return -1;
            }
            break;
        default:
            break;
        }
    }
    return r;
}

int sip_is_token(const char *s, size_t len)
{
    if (len == 0)
        return 0;
    const char *end = s + len;
    return scan(s, end, CT_TOKEN) == end;
}

int sip_str_casecmp(struct sip_str a, const char *b)
{
    for (uint32_t i = 0; i < a.len; i++) {
        if (b[i] == '\0' || lc((unsigned char)a.s[i]) != lc((unsigned char)b[i]))
            return 1;
    }
    return b[a.len] != '\0';
}

int sip_parse_uint(const char *s, size_t len, uint64_t max, uint64_t *out)
{
    if (len == 0 || len > 10)
        return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned d = (unsigned)((unsigned char)s[i] - '0');
        if (d > 9)
            return -1;
        v = v * 10 + d;
    }
    if (v > max)
        return -1;
    if (out)
        *out = v;
    return 0;
}

struct sip_str sip_str_trim(struct sip_str v)
{
    if (!v.s)
        return v;
    return trim(v.s, v.len);
}
