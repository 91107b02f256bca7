/* The SIP message object: a one-pass, zero-copy parse and validation of a request or response,
 * header access with lazy unfolding, edits recorded and applied on serialisation, stream framing.
 * RFC 3261 §7 (format), §7.3.1 (folding), §7.3.3 (compact forms), §7.5 / §18.3 (framing),
 * §8.2.2 / §16.3 (request validation), §20; RFC 4475 and RFC 5118 torture messages. */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "sip_msg.h"

#define INLINE static inline __attribute__((always_inline))

/* ---- character classes ----------------------------------------------------------------- */

#define C_TOKEN 0x01u /* RFC 3261 §25.1 token: alphanum / "-" "." "!" "%" "*" "_" "+" "`" "'" "~" */
#define C_WSP   0x02u /* SP, HTAB */
#define C_DIGIT 0x04u
#define C_EOL   0x08u /* CR, LF: end a line (anything else, NUL included, is line content) */
#define C_NOCID 0x10u /* refused in a Call-ID: CTLs, SP, DEL */
#define C_SPEOL 0x20u /* SP, CR, LF: end a Request-URI */

static const uint8_t ctab[256] = {
    [0 ... 8] = C_NOCID,
    ['\t'] = C_WSP | C_NOCID,
    ['\n'] = C_EOL | C_NOCID | C_SPEOL,
    [11 ... 12] = C_NOCID,
    ['\r'] = C_EOL | C_NOCID | C_SPEOL,
    [14 ... 31] = C_NOCID,
    [' '] = C_WSP | C_NOCID | C_SPEOL,
    ['!'] = C_TOKEN, ['%'] = C_TOKEN, ['\''] = C_TOKEN, ['*'] = C_TOKEN, ['+'] = C_TOKEN,
    ['-'] = C_TOKEN, ['.'] = C_TOKEN,
    ['0' ... '9'] = C_TOKEN | C_DIGIT,
    ['A' ... 'Z'] = C_TOKEN,
    ['_'] = C_TOKEN, ['`'] = C_TOKEN,
    ['a' ... 'z'] = C_TOKEN,
    ['~'] = C_TOKEN,
    [127] = C_NOCID,
};

#define CLS(c) (ctab[(unsigned char)(c)])
#define IS_WSP(c) (CLS(c) & C_WSP)

static inline unsigned char lc(unsigned char c) { return (c >= 'A' && c <= 'Z') ? (unsigned char)(c | 0x20) : c; }

#define ieq sip_ieq_lit /* sip_grammar.h */

static int ieq2(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (lc((unsigned char)a[i]) != lc((unsigned char)b[i]))
            return 0;
    return 1;
}

static int is_token(const char *s, size_t n)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!(CLS(s[i]) & C_TOKEN))
            return 0;
    return 1;
}

#define STR(p, n) ((struct sip_str){ (p), (uint32_t)(n) })

/* ---- arena: a chunk list owned by the message, freed by sip_msg_unref ------------------
 * The first chunk may live inside the message block (the room left between the header array
 * and the received bytes); it goes with the block, never through free(). */

struct sip_msg_arena {
    struct sip_msg_arena *next;
    size_t used, cap;
    char data[];
};

#define ARENA_CHUNK 2048u
#define SIP_MSG_MAX_LEN (16u << 20)      /* refuse inputs above 16 MiB: slices are 32-bit */
#define MAX_EDIT_HDRS (2 * SIP_MSG_MAX_HEADERS)
#define INLINE_HDRS 24u

/* ---- message blocks --------------------------------------------------------------------
 * One malloc per message: [size | struct sip_msg | INLINE_HDRS entries | spare | bytes]. The
 * received bytes sit at the very end of the block so that an over-read runs off the
 * allocation (AddressSanitizer sees it); the spare room in between becomes the first arena
 * chunk. Blocks of the two standard sizes are kept on a small free list when released: a
 * server parses and drops messages at a steady rate, and the allocator's large-chunk path
 * was a tenth of a parse. The list is bounded (MSG_CACHE_MAX per size) and, like the rest
 * of lunasip, single-threaded; sip_msg_cache_flush() empties it. Under AddressSanitizer
 * nothing is cached, so a use after sip_msg_unref still faults. */
struct msg_block {
    size_t size; /* bytes of the whole allocation */
    struct sip_msg m;
};

#define MSG_BLOCK_SMALL 4096u
#define MSG_BLOCK_LARGE 8192u
#define MSG_CACHE_MAX 8u
#define ARENA_INLINE_MIN 256u /* less spare room than this is not worth an arena chunk */

#if defined(__SANITIZE_ADDRESS__)
#define MSG_CACHE 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MSG_CACHE 0
#endif
#endif
#ifndef MSG_CACHE
#define MSG_CACHE 1
#endif

static struct msg_block *msg_cache[2][MSG_CACHE_MAX];
static unsigned msg_ncached[2];

static struct msg_block *block_of(struct sip_msg *m)
{
    return (struct msg_block *)(void *)((char *)m - offsetof(struct msg_block, m));
}

static struct msg_block *block_get(size_t need)
{
    size_t size = need;
    int cls = -1;
    if (need <= MSG_BLOCK_SMALL) {
        size = MSG_BLOCK_SMALL;
        cls = 0;
    } else if (need <= MSG_BLOCK_LARGE) {
        size = MSG_BLOCK_LARGE;
        cls = 1;
    }
    if (MSG_CACHE && cls >= 0 && msg_ncached[cls])
        return msg_cache[cls][--msg_ncached[cls]];
    struct msg_block *b = malloc(size);
    if (b)
        b->size = size;
    return b;
}

static void block_put(struct msg_block *b)
{
    int cls = b->size == MSG_BLOCK_SMALL ? 0 : b->size == MSG_BLOCK_LARGE ? 1 : -1;
    if (MSG_CACHE && cls >= 0 && msg_ncached[cls] < MSG_CACHE_MAX) {
        msg_cache[cls][msg_ncached[cls]++] = b;
        return;
    }
    free(b);
}

void sip_msg_cache_flush(void)
{
    for (int c = 0; c < 2; c++) {
        while (msg_ncached[c])
            free(msg_cache[c][--msg_ncached[c]]);
    }
}

static char *arena_alloc(struct sip_msg *m, size_t n)
{
    struct sip_msg_arena *a = m->arena;
    if (!a || a->cap - a->used < n) {
        size_t cap = n > ARENA_CHUNK ? n : ARENA_CHUNK;
        a = malloc(sizeof(*a) + cap);
        if (!a)
            return NULL;
        a->cap = cap;
        a->used = 0;
        /* keep the chunk with more room at the head: a big one-off must not strand it */
        if (m->arena && m->arena->cap - m->arena->used > cap - n) {
            a->next = m->arena->next;
            m->arena->next = a;
        } else {
            a->next = m->arena;
            m->arena = a;
        }
    }
    char *p = a->data + a->used;
    a->used += n;
    return p;
}

const char *sip_msg_strdup(struct sip_msg *m, const char *s, size_t len)
{
    if (len > SIP_MSG_MAX_LEN)
        return NULL;
    char *p = arena_alloc(m, len ? len : 1);
    if (p && len)
        memcpy(p, s, len);
    return p;
}

/* ---- names ------------------------------------------------------------------------------ */

static const char *const method_names[] = {
    [SIP_METHOD_INVITE] = "INVITE", [SIP_METHOD_ACK] = "ACK", [SIP_METHOD_BYE] = "BYE",
    [SIP_METHOD_CANCEL] = "CANCEL", [SIP_METHOD_OPTIONS] = "OPTIONS",
    [SIP_METHOD_REGISTER] = "REGISTER", [SIP_METHOD_PRACK] = "PRACK",
    [SIP_METHOD_SUBSCRIBE] = "SUBSCRIBE", [SIP_METHOD_NOTIFY] = "NOTIFY",
    [SIP_METHOD_PUBLISH] = "PUBLISH", [SIP_METHOD_INFO] = "INFO", [SIP_METHOD_REFER] = "REFER",
    [SIP_METHOD_MESSAGE] = "MESSAGE", [SIP_METHOD_UPDATE] = "UPDATE",
};

const char *sip_method_name(enum sip_method m)
{
    if ((unsigned)m >= sizeof(method_names) / sizeof(method_names[0]))
        return NULL;
    return method_names[m];
}

/* Methods are case-sensitive (RFC 3261 §7.1) and never unescaped: "RE%47IST%45R" is OTHER. */
enum sip_method sip_method_lookup(const char *s, size_t len)
{
#define M(lit, id) if (memcmp(s, lit, len) == 0) return id
    switch (len) {
    case 3: M("ACK", SIP_METHOD_ACK); M("BYE", SIP_METHOD_BYE); break;
    case 4: M("INFO", SIP_METHOD_INFO); break;
    case 5: M("PRACK", SIP_METHOD_PRACK); M("REFER", SIP_METHOD_REFER); break;
    case 6:
        M("INVITE", SIP_METHOD_INVITE); M("CANCEL", SIP_METHOD_CANCEL);
        M("NOTIFY", SIP_METHOD_NOTIFY); M("UPDATE", SIP_METHOD_UPDATE);
        break;
    case 7:
        M("OPTIONS", SIP_METHOD_OPTIONS); M("PUBLISH", SIP_METHOD_PUBLISH);
        M("MESSAGE", SIP_METHOD_MESSAGE);
        break;
    case 8: M("REGISTER", SIP_METHOD_REGISTER); break;
    case 9: M("SUBSCRIBE", SIP_METHOD_SUBSCRIBE); break;
    default: break;
    }
#undef M
    return SIP_METHOD_OTHER;
}

const char *sip_transport_name(enum sip_transport t)
{
    switch (t) {
    case SIP_TP_UDP: return "udp";
    case SIP_TP_TCP: return "tcp";
    case SIP_TP_TLS: return "tls";
    case SIP_TP_WS: return "ws";
    case SIP_TP_WSS: return "wss";
    }
    return "unknown";
}

static const char *const hdr_names[SIP_HDR__COUNT] = {
    [SIP_HDR_VIA] = "Via", [SIP_HDR_FROM] = "From", [SIP_HDR_TO] = "To",
    [SIP_HDR_CALL_ID] = "Call-ID", [SIP_HDR_CSEQ] = "CSeq", [SIP_HDR_MAX_FORWARDS] = "Max-Forwards",
    [SIP_HDR_CONTENT_LENGTH] = "Content-Length", [SIP_HDR_CONTENT_TYPE] = "Content-Type",
    [SIP_HDR_CONTACT] = "Contact", [SIP_HDR_ROUTE] = "Route", [SIP_HDR_RECORD_ROUTE] = "Record-Route",
    [SIP_HDR_PATH] = "Path", [SIP_HDR_PROXY_REQUIRE] = "Proxy-Require", [SIP_HDR_REQUIRE] = "Require",
    [SIP_HDR_SUPPORTED] = "Supported", [SIP_HDR_UNSUPPORTED] = "Unsupported",
    [SIP_HDR_EXPIRES] = "Expires", [SIP_HDR_CONTENT_ENCODING] = "Content-Encoding",
    [SIP_HDR_SUBJECT] = "Subject", [SIP_HDR_EVENT] = "Event", [SIP_HDR_REFER_TO] = "Refer-To",
    [SIP_HDR_ALLOW_EVENTS] = "Allow-Events", [SIP_HDR_REFERRED_BY] = "Referred-By",
    [SIP_HDR_SESSION_EXPIRES] = "Session-Expires", [SIP_HDR_ACCEPT_CONTACT] = "Accept-Contact",
    [SIP_HDR_REJECT_CONTACT] = "Reject-Contact", [SIP_HDR_REQUEST_DISPOSITION] = "Request-Disposition",
    [SIP_HDR_IDENTITY] = "Identity", [SIP_HDR_ALLOW] = "Allow", [SIP_HDR_REASON] = "Reason",
    [SIP_HDR_AUTHORIZATION] = "Authorization", [SIP_HDR_PROXY_AUTHORIZATION] = "Proxy-Authorization",
    [SIP_HDR_WWW_AUTHENTICATE] = "WWW-Authenticate", [SIP_HDR_PROXY_AUTHENTICATE] = "Proxy-Authenticate",
    [SIP_HDR_USER_AGENT] = "User-Agent", [SIP_HDR_SERVER] = "Server", [SIP_HDR_ACCEPT] = "Accept",
    [SIP_HDR_ACCEPT_ENCODING] = "Accept-Encoding", [SIP_HDR_ACCEPT_LANGUAGE] = "Accept-Language",
    [SIP_HDR_CONTENT_LANGUAGE] = "Content-Language", [SIP_HDR_IN_REPLY_TO] = "In-Reply-To",
    [SIP_HDR_CALL_INFO] = "Call-Info", [SIP_HDR_ALERT_INFO] = "Alert-Info",
    [SIP_HDR_ERROR_INFO] = "Error-Info", [SIP_HDR_WARNING] = "Warning",
    [SIP_HDR_SERVICE_ROUTE] = "Service-Route",
};

const char *sip_hdr_name(enum sip_hdr_id id)
{
    return (unsigned)id < SIP_HDR__COUNT ? hdr_names[id] : NULL;
}

/* Headers whose value is a comma-separated list (RFC 3261 §7.3.1 and the extensions): the
 * entry's SIP_HDR_F_LIST flag, or 0. */
#define L SIP_HDR_F_LIST
static const uint8_t hdr_is_list[SIP_HDR__COUNT] = {
    [SIP_HDR_VIA] = L, [SIP_HDR_CONTACT] = L, [SIP_HDR_ROUTE] = L, [SIP_HDR_RECORD_ROUTE] = L,
    [SIP_HDR_PATH] = L, [SIP_HDR_ALLOW] = L, [SIP_HDR_SUPPORTED] = L, [SIP_HDR_REQUIRE] = L,
    [SIP_HDR_PROXY_REQUIRE] = L, [SIP_HDR_UNSUPPORTED] = L, [SIP_HDR_ACCEPT] = L,
    [SIP_HDR_ACCEPT_ENCODING] = L, [SIP_HDR_ACCEPT_LANGUAGE] = L, [SIP_HDR_ALLOW_EVENTS] = L,
    [SIP_HDR_CONTENT_ENCODING] = L, [SIP_HDR_CONTENT_LANGUAGE] = L, [SIP_HDR_IN_REPLY_TO] = L,
    [SIP_HDR_CALL_INFO] = L, [SIP_HDR_ALERT_INFO] = L, [SIP_HDR_ERROR_INFO] = L,
    [SIP_HDR_WARNING] = L, [SIP_HDR_REASON] = L, [SIP_HDR_SERVICE_ROUTE] = L,
};
#undef L

/* Full names and the one-letter compact forms of RFC 3261 §7.3.3 and later RFCs (a compact
 * form only when the name is exactly one letter). A switch on the length, then on the first
 * letter, then one case-insensitive compare: no hashing, no strlen. */
INLINE enum sip_hdr_id hdr_lookup(const char *s, size_t len)
{
#define H(lit, id) if (len == sizeof(lit) - 1 && ieq(s, lit, sizeof(lit) - 1)) return id
    if (len == 0)
        return SIP_HDR_OTHER;
    unsigned char c = (unsigned char)(s[0] | 0x20); /* only ever compared with letters */
    switch (len) {
    case 1:
        switch (c) {
        case 'v': return SIP_HDR_VIA;
        case 'f': return SIP_HDR_FROM;
        case 't': return SIP_HDR_TO;
        case 'i': return SIP_HDR_CALL_ID;
        case 'm': return SIP_HDR_CONTACT;
        case 'l': return SIP_HDR_CONTENT_LENGTH;
        case 'c': return SIP_HDR_CONTENT_TYPE;
        case 'e': return SIP_HDR_CONTENT_ENCODING;
        case 's': return SIP_HDR_SUBJECT;
        case 'k': return SIP_HDR_SUPPORTED;
        case 'o': return SIP_HDR_EVENT;
        case 'r': return SIP_HDR_REFER_TO;
        case 'u': return SIP_HDR_ALLOW_EVENTS;
        case 'b': return SIP_HDR_REFERRED_BY;
        case 'x': return SIP_HDR_SESSION_EXPIRES;
        case 'a': return SIP_HDR_ACCEPT_CONTACT;
        case 'j': return SIP_HDR_REJECT_CONTACT;
        case 'd': return SIP_HDR_REQUEST_DISPOSITION;
        case 'y': return SIP_HDR_IDENTITY;
        default: return SIP_HDR_OTHER;
        }
    case 2: H("to", SIP_HDR_TO); break;
    case 3: H("via", SIP_HDR_VIA); break;
    case 4:
        if (c == 'f') { H("from", SIP_HDR_FROM); }
        else if (c == 'c') { H("cseq", SIP_HDR_CSEQ); }
        else if (c == 'p') { H("path", SIP_HDR_PATH); }
        break;
    case 5:
        if (c == 'r') { H("route", SIP_HDR_ROUTE); }
        else if (c == 'a') { H("allow", SIP_HDR_ALLOW); }
        else if (c == 'e') { H("event", SIP_HDR_EVENT); }
        break;
    case 6:
        if (c == 'a') { H("accept", SIP_HDR_ACCEPT); }
        else if (c == 'r') { H("reason", SIP_HDR_REASON); }
        else if (c == 's') { H("server", SIP_HDR_SERVER); }
        break;
    case 7:
        if (c == 'c') { H("call-id", SIP_HDR_CALL_ID); H("contact", SIP_HDR_CONTACT); }
        else if (c == 's') { H("subject", SIP_HDR_SUBJECT); }
        else if (c == 'r') { H("require", SIP_HDR_REQUIRE); }
        else if (c == 'e') { H("expires", SIP_HDR_EXPIRES); }
        else if (c == 'w') { H("warning", SIP_HDR_WARNING); }
        break;
    case 8:
        if (c == 'r') { H("refer-to", SIP_HDR_REFER_TO); }
        else if (c == 'i') { H("identity", SIP_HDR_IDENTITY); }
        break;
    case 9:
        if (c == 's') { H("supported", SIP_HDR_SUPPORTED); }
        else if (c == 'c') { H("call-info", SIP_HDR_CALL_INFO); }
        break;
    case 10:
        if (c == 'a') { H("alert-info", SIP_HDR_ALERT_INFO); }
        else if (c == 'e') { H("error-info", SIP_HDR_ERROR_INFO); }
        else if (c == 'u') { H("user-agent", SIP_HDR_USER_AGENT); }
        break;
    case 11:
        if (c == 'r') { H("referred-by", SIP_HDR_REFERRED_BY); }
        else if (c == 'u') { H("unsupported", SIP_HDR_UNSUPPORTED); }
        else if (c == 'i') { H("in-reply-to", SIP_HDR_IN_REPLY_TO); }
        break;
    case 12:
        if (c == 'm') { H("max-forwards", SIP_HDR_MAX_FORWARDS); }
        else if (c == 'r') { H("record-route", SIP_HDR_RECORD_ROUTE); }
        else if (c == 'c') { H("content-type", SIP_HDR_CONTENT_TYPE); }
        else if (c == 'a') { H("allow-events", SIP_HDR_ALLOW_EVENTS); }
        break;
    case 13:
        if (c == 'p') { H("proxy-require", SIP_HDR_PROXY_REQUIRE); }
        else if (c == 'a') { H("authorization", SIP_HDR_AUTHORIZATION); }
        else if (c == 's') { H("service-route", SIP_HDR_SERVICE_ROUTE); }
        break;
    case 14:
        if (c == 'c') { H("content-length", SIP_HDR_CONTENT_LENGTH); }
        else if (c == 'a') { H("accept-contact", SIP_HDR_ACCEPT_CONTACT); }
        else if (c == 'r') { H("reject-contact", SIP_HDR_REJECT_CONTACT); }
        break;
    case 15:
        if (c == 'a') { H("accept-encoding", SIP_HDR_ACCEPT_ENCODING); H("accept-language", SIP_HDR_ACCEPT_LANGUAGE); }
        else if (c == 's') { H("session-expires", SIP_HDR_SESSION_EXPIRES); }
        break;
    case 16:
        if (c == 'c') { H("content-encoding", SIP_HDR_CONTENT_ENCODING); H("content-language", SIP_HDR_CONTENT_LANGUAGE); }
        else if (c == 'w') { H("www-authenticate", SIP_HDR_WWW_AUTHENTICATE); }
        break;
    case 18: H("proxy-authenticate", SIP_HDR_PROXY_AUTHENTICATE); break;
    case 19:
        if (c == 'r') { H("request-disposition", SIP_HDR_REQUEST_DISPOSITION); }
        else if (c == 'p') { H("proxy-authorization", SIP_HDR_PROXY_AUTHORIZATION); }
        break;
    default: break;
    }
#undef H
    return SIP_HDR_OTHER;
}

enum sip_hdr_id sip_hdr_lookup(const char *s, size_t len)
{
    return hdr_lookup(s, len);
}

/* ---- the header array ------------------------------------------------------------------ */

static struct sip_hdr *inline_hdrs(const struct sip_msg *m) { return (struct sip_hdr *)(void *)(m + 1); }

/* Makes room for one more entry (the first INLINE_HDRS live in the message block). */
static int hdrs_reserve(struct sip_msg *m, uint32_t limit)
{
    if (m->nhdrs < m->hdrs_cap)
        return 0;
    if (m->hdrs_cap >= limit)
        return -E2BIG;
    uint32_t cap = m->hdrs_cap * 2;
    if (cap > limit)
        cap = limit;
    struct sip_hdr *h;
    if (m->hdrs == inline_hdrs(m)) {
        h = malloc(cap * sizeof(*h));
        if (h)
            memcpy(h, m->hdrs, m->nhdrs * sizeof(*h));
    } else {
        h = realloc(m->hdrs, cap * sizeof(*h));
    }
    if (!h)
        return -ENOMEM;
    m->hdrs = h;
    m->hdrs_cap = cap;
    return 0;
}

/* ---- parsing ------------------------------------------------------------------------------ */

#define ERR(st, why) do { err->status = (st); err->reason = (why); return -1; } while (0)

/* Exactly "SIP/2.0", any case (RFC 3261 §7.1). */
static int is_sip20(const char *v, size_t n)
{
    return n == 7 && ieq(v, "sip/2.0", 7);
}

/* "SIP/" 1*DIGIT "." 1*DIGIT: a well-formed version we do not speak (505, RFC 3261 §21.5.7;
 * RFC 4475 badvers). Anything else in that place is a malformed line (400). */
static int is_sip_version(const char *v, size_t n)
{
    if (n < 7 || !ieq(v, "sip/", 4))
        return 0;
    size_t i = 4, d = 0;
    while (i < n && (CLS(v[i]) & C_DIGIT)) i++, d++;
    if (!d || i >= n || v[i] != '.')
        return 0;
    i++;
    d = 0;
    while (i < n && (CLS(v[i]) & C_DIGIT)) i++, d++;
    return d && i == n;
}

/* The first SP, CR or LF in [p, end), or end; [lo, end) is readable. */
INLINE const char *uri_end(const char *lo, const char *p, const char *end)
{
#ifdef __SSE2__
    const __m128i lim = _mm_set1_epi8(0x20);
    for (; end - p >= 16; p += 16) {
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)p);
        unsigned mk = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_min_epu8(x, lim), x));
        for (; mk; mk &= mk - 1) { /* bytes <= SP: the stops and other CTLs */
            const char *q = p + __builtin_ctz(mk);
            if (CLS(*q) & C_SPEOL)
                return q;
        }
    }
#endif
    (void)lo;
    while (p < end && !(CLS(*p) & C_SPEOL))
        p++;
    return p;
}

/* Request-Line = Method SP Request-URI SP SIP-Version CRLF (RFC 3261 §7.1, §25.1), strictly:
 * one SP between elements, none trailing, no <> or LWS in the URI, no ?headers in it
 * (§19.1.1: headers are not allowed in a Request-URI). RFC 4475 lwsstart, trws, ltgtruri,
 * lwsruri and escruri are therefore 400 rather than repaired: a proxy that guessed would
 * forward something the sender never wrote. */
static int parse_request_line(struct sip_msg *m, const char *p, const char *end, const char **next,
                              struct sip_parse_error *err)
{
    const char *s = p;
    while (p < end && (CLS(*p) & C_TOKEN))
        p++;
    if (p == s || p >= end || *p != ' ')
        ERR(400, "Bad Request-Line");
    m->method_str = STR(s, p - s);
    m->method = sip_method_lookup(s, (size_t)(p - s));
    s = ++p;
    p = uri_end(m->buf, p, end);
    if (p == s || p >= end || *p != ' ')
        ERR(400, "Bad Request-Line");
    const char *u = s;
    size_t ulen = (size_t)(p - s);
    s = ++p;
    if (end - p >= 9 && ieq(p, "sip/2.0", 7) && p[7] == '\r')
        p += 7; /* the usual version, without the scan */
    else
        while (p < end && !(CLS(*p) & C_EOL))
            p++;
    if (end - p < 2 || p[0] != '\r' || p[1] != '\n')
        ERR(400, "Bad Request-Line");
    if (!is_sip20(s, (size_t)(p - s))) {
        if (is_sip_version(s, (size_t)(p - s)))
            ERR(505, "Version Not Supported");
        ERR(400, "Bad Request-Line");
    }
    m->version = STR(s, p - s);
    if (sip_uri_parse(u, ulen, &m->ruri) != 0)
        ERR(400, "Bad Request-URI");
    if ((m->ruri.scheme == SIP_URI_SIP || m->ruri.scheme == SIP_URI_SIPS) &&
        (m->ruri.headers.s || m->ruri.headers.len))
        ERR(400, "Headers not allowed in Request-URI");
    m->ruri_str = STR(u, ulen);
    *next = p + 2;
    return 0;
}

/* Status-Line = SIP-Version SP Status-Code SP Reason-Phrase CRLF (RFC 3261 §7.2). The code
 * is exactly three digits 100..699 (RFC 4475 bigcode); the reason may be empty (noreason)
 * and holds any byte but CR/LF (UTF-8 in unreason). Liberal in one point: a missing SP
 * before an empty reason is accepted, a response is not worth dropping for it. */
static int parse_status_line(struct sip_msg *m, const char *p, const char *end, const char **next,
                             struct sip_parse_error *err)
{
    const char *s = p;
    while (p < end && *p != ' ' && !(CLS(*p) & C_EOL))
        p++;
    if (!is_sip20(s, (size_t)(p - s)) || p >= end || *p != ' ')
        ERR(0, "Bad Status-Line");
    m->version = STR(s, p - s);
    p++;
    if (end - p < 4 || !(CLS(p[0]) & C_DIGIT) || !(CLS(p[1]) & C_DIGIT) || !(CLS(p[2]) & C_DIGIT) ||
        (p[3] != ' ' && p[3] != '\r'))
        ERR(0, "Bad Status-Code");
    int code = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
    if (code < 100 || code > 699)
        ERR(0, "Bad Status-Code");
    m->status = code;
    p += 3;
    if (*p == ' ')
        p++;
    s = p;
    while (p < end && !(CLS(*p) & C_EOL))
        p++;
    if (end - p < 2 || p[0] != '\r' || p[1] != '\n')
        ERR(0, "Bad Status-Line");
    m->reason = STR(s, p - s);
    *next = p + 2;
    return 0;
}

/* Per-id bookkeeping of the header pass, for the ids validate() looks at (VIA..CONTACT);
 * every other id is counted in slot 0. */
#define HC_SLOTS (SIP_HDR_CONTACT + 1)
struct hcount {
    uint32_t n[HC_SLOTS];
    uint32_t first[HC_SLOTS];
};

/* Header lines (RFC 3261 §7.3): name = token, LWS allowed before ':', value trimmed,
 * CRLF followed by SP/HTAB continues the value (folding, flagged, unfolded lazily).
 * Only CRLF ends a line: a bare CR or LF is refused, so nothing we forward can be read
 * differently by a lenient peer. NUL and other CTLs are left to the grammar of each header
 * (RFC 4475 intmeth quotes NUL in a display name). Returns 0 with *next after the empty line. */
static int parse_headers(struct sip_msg *m, const char *p, const char *end, struct hcount *hc,
                         const char **next, struct sip_parse_error *err)
{
    /* the entry array, its count and the per-id counts in locals: stores through hdrs
     * cannot then be taken for writes to m or *hc, which kept them in memory */
    const char *lo = m->buf;
    struct sip_hdr *hdrs = m->hdrs;
    uint32_t n = m->nhdrs, cap = m->hdrs_cap;
    uint32_t cnt[HC_SLOTS] = { 0 }, first[HC_SLOTS] = { 0 };
    for (;;) {
        if (end - p < 2)
            ERR(400, "Incomplete header section");
        if (p[0] == '\r') {
            if (p[1] != '\n')
                ERR(400, "Bad header line");
            *next = p + 2;
            m->nhdrs = n;
            memcpy(hc->n, cnt, sizeof(cnt));
            memcpy(hc->first, first, sizeof(first));
            return 0;
        }
        /* name: up to ':' less trailing LWS. A known name is a token by construction, so
         * only unknown ones are checked char by char (a line without ':' ends up here too,
         * with a CR in its "name"). */
        const char *line = p;
        unsigned ctl = 0; /* with have16: bytes <= 0x0d among the sixteen at line */
        int have16 = 0;
#ifdef __SSE2__
        /* one load gives the ':' of a usual name and the first line break candidates */
        if (end - p >= 16) {
            unsigned cm = sip_mask16_(p, ':');
            ctl = sip_mask16_ctl_(p);
            if (cm && (ctl == 0 || (cm & -cm) < (ctl & -ctl))) {
                p += __builtin_ctz(cm);
                have16 = 1;
            }
        }
#endif
        if (!have16) {
            p = sip_find_byte_(lo, p, end, ':');
            if (p >= end)
                ERR(400, "Bad header line");
        }
        const char *nend = p;
        while (nend > line && IS_WSP(nend[-1]))
            nend--;
        enum sip_hdr_id id = hdr_lookup(line, (size_t)(nend - line));
        if (id == SIP_HDR_OTHER && !is_token(line, (size_t)(nend - line)))
            ERR(400, "Bad header line");
        p++;
        /* leading LWS, folds included; the usual none or one SP without the loop */
        if (end - p >= 2 && (unsigned char)*p <= ' ') {
            if (p[0] == ' ' && (unsigned char)p[1] > ' ') {
                p++;
            } else {
                while (p < end && (CLS(*p) & (C_WSP | C_EOL))) {
                    if (IS_WSP(*p))
                        p++;
                    else if (end - p >= 3 && p[0] == '\r' && p[1] == '\n' && IS_WSP(p[2]))
                        p += 3;
                    else
                        break;
                }
            }
        }
        const char *vs = p, *from = p;
        unsigned folded = 0;
        p = NULL;
        if (have16 && vs - line < 16) {
            for (unsigned mk = ctl & (0xffffu << (vs - line)); mk; mk &= mk - 1) {
                const char *q = line + __builtin_ctz(mk);
                if (*q == '\r' || *q == '\n') {
                    p = q;
                    break;
                }
            }
            from = line + 16; /* [vs, line + 16) holds no line break */
        }
        if (!p)
            p = sip_find_eol_(lo, from, end);
        for (;;) {
            if (end - p < 2)
                ERR(400, "Incomplete header section");
            if (p[0] != '\r' || p[1] != '\n')
                ERR(400, "Bad header line");
            if (end - p >= 3 && IS_WSP(p[2])) {
                folded = SIP_HDR_F_FOLDED;
                p = sip_find_eol_(lo, p + 3, end);
                continue;
            }
            break;
        }
        const char *ve = p;
        while (ve > vs && (CLS(ve[-1]) & (C_WSP | C_EOL)))
            ve--;
        p += 2;
        if (folded && !memchr(vs, '\r', (size_t)(ve - vs)))
            folded = 0; /* the only fold was trailing whitespace */
        if (n == cap) {
            m->nhdrs = n;
            int r = hdrs_reserve(m, SIP_MSG_MAX_HEADERS);
            if (r == -E2BIG)
                ERR(400, "Too many headers");
            if (r != 0)
                ERR(0, "Out of memory");
            hdrs = m->hdrs;
            cap = m->hdrs_cap;
        }
        struct sip_hdr *h = &hdrs[n];
        h->name = STR(line, nend - line);
        h->value = STR(vs, ve - vs);
        h->line = STR(line, p - line);
        h->id = (uint16_t)id;
        h->flags = (uint16_t)(folded | hdr_is_list[id]);
        unsigned k = id < HC_SLOTS ? id : SIP_HDR_OTHER;
        if (cnt[k]++ == 0)
            first[k] = n;
        n++;
    }
}

/* Error path only: does the head hold a Via line? A request without one cannot be answered
 * (responses follow the Via, RFC 3261 §18.2.2), so its refusal is a silent drop. */
static int head_has_via(const char *p, const char *end)
{
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    while (nl && nl + 1 < end) {
        p = nl + 1;
        if (*p == '\r' || *p == '\n')
            return 0; /* end of the head */
        const char *s = p;
        while (p < end && (CLS(*p) & C_TOKEN))
            p++;
        if (sip_hdr_lookup(s, (size_t)(p - s)) == SIP_HDR_VIA) {
            while (p < end && IS_WSP(*p))
                p++;
            if (p < end && *p == ':')
                return 1;
        }
        nl = memchr(p, '\n', (size_t)(end - p));
    }
    return 0;
}

/* 1*DIGIT with nothing else, at most max (leading zeros fine: RFC 4475 wsinv). */
INLINE int parse_digits(struct sip_str v, uint64_t max, uint64_t *out)
{
    uint64_t x = 0;
    if (v.len == 0)
        return -1;
    for (uint32_t i = 0; i < v.len; i++) {
        unsigned d = (unsigned)((unsigned char)v.s[i] - '0');
        if (d > 9)
            return -1;
        x = x * 10 + d;
        if (x > max)
            return -1; /* stops before any overflow: max < 2^63 / 10 in every use */
    }
    *out = x;
    return 0;
}

/* Call-ID = word ["@" word] (§25.1), taken liberally (RFC 4475 intmeth): any byte but CTLs,
 * SP and DEL. Eight bytes at a time: flags bytes below 0x21 (bytes >= 0x80 are masked by
 * ~x) and bytes equal to 0x7f. */
static int callid_ok(struct sip_str v)
{
    const char *p = v.s, *e = v.s + v.len;
    if (v.len == 0)
        return 0;
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    for (; e - p >= 8; p += 8) {
        uint64_t x, d;
        memcpy(&x, p, 8);
        d = x ^ (ones * 0x7f);
        if ((((x - ones * 0x21) & ~x) | ((d - ones) & ~d)) & highs)
            return 0;
    }
    for (; p < e; p++)
        if (CLS(*p) & C_NOCID)
            return 0;
    return 1;
}

/* CSeq = 1*DIGIT LWS Method (RFC 3261 §20.16), number <= 2^32-1 (§8.1.1.5, RFC 4475 scalar02). */
static int parse_cseq(struct sip_str v, uint32_t *num, struct sip_str *meth)
{
    uint32_t i = 0;
    uint64_t x = 0;
    for (; i < v.len; i++) {
        unsigned d = (unsigned)((unsigned char)v.s[i] - '0');
        if (d > 9)
            break;
        x = x * 10 + d;
        if (x > 0xffffffffu)
            return -1;
    }
    if (i == 0)
        return -1;
    uint32_t j = i;
    while (j < v.len && IS_WSP(v.s[j]))
        j++;
    if (j == i || !is_token(v.s + j, v.len - j))
        return -1;
    *num = (uint32_t)x;
    *meth = STR(v.s + j, v.len - j);
    return 0;
}

/* sip_list_next over a value, with the common one-element case (no comma anywhere) answered
 * without splitting: the value is already trimmed and the element parser that follows
 * refuses whatever sip_list_next would (empty, unbalanced quote or <). */
struct list_it {
    const char *q, *end;
    int single; /* 1: the whole value is the one element, 2: it was returned */
};

static void list_start(struct list_it *it, struct sip_str v)
{
    it->q = v.s;
    it->end = v.s + v.len;
    it->single = v.len && sip_find_byte_(v.s, v.s, it->end, ',') == it->end;
}

static int list_next(struct list_it *it, struct sip_str *item)
{
    if (it->single) {
        if (it->single == 2)
            return 0;
        it->single = 2;
        *item = STR(it->q, it->end - it->q);
        return 1;
    }
    return sip_list_next(&it->q, it->end, item);
}

/* sip_msg_hdr_value without the call for the usual unfolded header. */
INLINE struct sip_str hdr_val(struct sip_msg *m, uint32_t i)
{
    if (!(m->hdrs[i].flags & SIP_HDR_F_FOLDED))
        return m->hdrs[i].value;
    return sip_msg_hdr_value(m, i);
}

/* The essentials (RFC 3261 §8.1.1, §8.2.2, §16.3 step 1): every Via, From, To, Call-ID,
 * CSeq, Max-Forwards, Content-Length and Contact. Other headers are left alone so an
 * element that does not use them never rejects for them (RFC 4475 baddate, wsinv's
 * UnknownHeaderWithUnusualValue). Errors carry 400; the caller turns them into drops for
 * responses and for requests without a Via. */
static int validate(struct sip_msg *m, const struct hcount *hc, struct sip_parse_error *err)
{
    struct sip_str v, item;
    int r;

    for (uint32_t i = hc->first[SIP_HDR_VIA], left = hc->n[SIP_HDR_VIA]; left; i++) {
        if (m->hdrs[i].id != SIP_HDR_VIA)
            continue;
        left--;
        v = hdr_val(m, i);
        if (!v.s)
            ERR(0, "Out of memory");
        int items = 0;
        struct list_it it;
        for (list_start(&it, v); (r = list_next(&it, &item)) == 1; items++) {
            struct sip_via other, *via = m->nvia == 0 ? &m->via1 : &other; /* top one in place */
            if (sip_via_parse(item.s, item.len, via) != 0 ||
                via->proto_name.len != 3 || !ieq(via->proto_name.s, "sip", 3) ||
                via->proto_version.len != 3 || memcmp(via->proto_version.s, "2.0", 3) != 0)
                ERR(400, "Bad Via");
            m->nvia++;
        }
        if (r < 0 || items == 0)
            ERR(400, "Bad Via");
    }

    if (hc->n[SIP_HDR_FROM] == 0) ERR(400, "Missing From");
    if (hc->n[SIP_HDR_FROM] > 1) ERR(400, "Duplicate From");
    v = hdr_val(m, hc->first[SIP_HDR_FROM]);
    if (!v.s || sip_nameaddr_parse(v.s, v.len, 0, &m->from) != 0)
        ERR(400, "Bad From");

    if (hc->n[SIP_HDR_TO] == 0) ERR(400, "Missing To");
    if (hc->n[SIP_HDR_TO] > 1) ERR(400, "Duplicate To");
    v = hdr_val(m, hc->first[SIP_HDR_TO]);
    if (!v.s || sip_nameaddr_parse(v.s, v.len, 0, &m->to) != 0)
        ERR(400, "Bad To");

    if (hc->n[SIP_HDR_CALL_ID] == 0) ERR(400, "Missing Call-ID");
    if (hc->n[SIP_HDR_CALL_ID] > 1) ERR(400, "Duplicate Call-ID");
    v = hdr_val(m, hc->first[SIP_HDR_CALL_ID]);
    if (!v.s || !callid_ok(v))
        ERR(400, "Bad Call-ID");
    m->call_id = v;

    if (hc->n[SIP_HDR_CSEQ] == 0) ERR(400, "Missing CSeq");
    if (hc->n[SIP_HDR_CSEQ] > 1) ERR(400, "Duplicate CSeq");
    v = hdr_val(m, hc->first[SIP_HDR_CSEQ]);
    if (!v.s || parse_cseq(v, &m->cseq, &m->cseq_method_str) != 0)
        ERR(400, "Bad CSeq");
    m->cseq_method = sip_method_lookup(m->cseq_method_str.s, m->cseq_method_str.len);
    if (m->is_request && (m->cseq_method_str.len != m->method_str.len ||
                          memcmp(m->cseq_method_str.s, m->method_str.s, m->method_str.len) != 0))
        ERR(400, "CSeq method mismatch"); /* §8.1.1.5; RFC 4475 mismatch01/02 */

    uint64_t x;
    m->max_forwards = -1;
    if (hc->n[SIP_HDR_MAX_FORWARDS] > 1)
        ERR(400, "Bad Max-Forwards");
    if (hc->n[SIP_HDR_MAX_FORWARDS]) {
        v = hdr_val(m, hc->first[SIP_HDR_MAX_FORWARDS]);
        if (!v.s || parse_digits(v, 255, &x) != 0)
            ERR(400, "Bad Max-Forwards");
        m->max_forwards = (int)x;
    }

    m->content_length = -1;
    if (hc->n[SIP_HDR_CONTENT_LENGTH] > 1)
        ERR(400, "Bad Content-Length"); /* RFC 4475 mcl01 */
    if (hc->n[SIP_HDR_CONTENT_LENGTH]) {
        v = hdr_val(m, hc->first[SIP_HDR_CONTENT_LENGTH]);
        if (!v.s || parse_digits(v, SIP_MSG_MAX_LEN, &x) != 0)
            ERR(400, "Bad Content-Length"); /* RFC 4475 ncl: never use it */
        m->content_length = (int64_t)x;
    }

    for (uint32_t i = hc->first[SIP_HDR_CONTACT], left = hc->n[SIP_HDR_CONTACT]; left; i++) {
        if (m->hdrs[i].id != SIP_HDR_CONTACT)
            continue;
        left--;
        v = hdr_val(m, i);
        if (!v.s)
            ERR(0, "Out of memory");
        int items = 0;
        struct list_it it;
        for (list_start(&it, v); (r = list_next(&it, &item)) == 1; items++) {
            struct sip_nameaddr na;
            if (sip_nameaddr_parse(item.s, item.len, 1, &na) != 0)
                ERR(400, "Bad Contact");
        }
        if (r < 0 || items == 0)
            ERR(400, "Bad Contact");
    }
    return 0;
}

static int parse_all(struct sip_msg *m, const char *p, const char *end, unsigned flags,
                     struct sip_parse_error *err)
{
    struct hcount hc;
    const char *next;

    if (end - p >= 4 && ieq(p, "sip/", 4)) {
        if (parse_status_line(m, p, end, &next, err) != 0)
            return -1;
    } else {
        m->is_request = 1;
        if (parse_request_line(m, p, end, &next, err) != 0)
            return -1;
    }
    m->start_len = (uint32_t)(next - p);
    if (parse_headers(m, next, end, &hc, &next, err) != 0)
        return -1;
    m->head_len = (uint32_t)(next - p);
    if (hc.n[SIP_HDR_VIA] == 0)
        ERR(0, "Missing Via");
    if (validate(m, &hc, err) != 0)
        return -1;

    /* Framing, RFC 3261 §18.3: over a datagram a missing Content-Length means the rest of
     * the datagram and bytes beyond it are ignored (RFC 4475 dblreq); a stream needs it. */
    size_t rest = (size_t)(end - next);
    if (m->content_length < 0) {
        if (flags & SIP_PARSE_STREAM)
            ERR(400, "Missing Content-Length");
        m->body = STR(next, rest);
    } else {
        if ((uint64_t)m->content_length > rest)
            ERR(400, "Content-Length larger than message"); /* RFC 4475 clerr */
        if ((flags & SIP_PARSE_STREAM) && (uint64_t)m->content_length != rest)
            ERR(400, "Bad Content-Length");
        m->body = STR(next, m->content_length);
    }
    m->len = m->head_len + m->body.len;
    return 0;
}

/* Parses one message. Takes nothing from the caller: buf is copied into the message block
 * (struct, inline header array and the bytes, in one malloc) before parsing, and every
 * slice points into that copy or the arena. Leading CRLFs (keepalives, §7.5) are skipped. */
struct sip_msg *sip_msg_parse(const char *buf, size_t len, unsigned flags, struct sip_parse_error *err)
{
    struct sip_parse_error dummy;
    if (!err)
        err = &dummy;
    err->status = 0;
    err->reason = NULL;
    size_t skip = sip_frame_skip_crlf(buf, len);
    buf += skip;
    len -= skip;
    if (len == 0) {
        err->reason = "Empty message";
        return NULL;
    }
    if (len > SIP_MSG_MAX_LEN) {
        err->reason = "Message too large";
        return NULL;
    }
    const size_t fixed = sizeof(struct msg_block) + INLINE_HDRS * sizeof(struct sip_hdr);
    struct msg_block *b = block_get(fixed + len);
    if (!b) {
        err->reason = "Out of memory";
        return NULL;
    }
    struct sip_msg *m = &b->m;
    /* via1, from and to (600 bytes) are left as they are: a parse that succeeds has written
     * all three in full (their parsers zero them first), and one that fails frees the block */
    sip_zero_(m, offsetof(struct sip_msg, via1));
    m->nvia = 0;
    sip_zero_(&m->call_id, sizeof(*m) - offsetof(struct sip_msg, call_id));
    m->refcount = 1;
    m->hdrs = inline_hdrs(m);
    m->hdrs_cap = INLINE_HDRS;
    char *copy = (char *)b + b->size - len; /* last in the block: an over-read leaves it */
    size_t spare = b->size - fixed - len;
    if (spare >= ARENA_INLINE_MIN) {
        struct sip_msg_arena *a = (struct sip_msg_arena *)(void *)(m->hdrs + INLINE_HDRS);
        a->next = NULL;
        a->used = 0;
        a->cap = spare - sizeof(*a);
        m->arena = a;
    }
    memcpy(copy, buf, len);
    m->buf = copy;
    m->max_forwards = -1;
    m->content_length = -1;
    if (parse_all(m, copy, copy + len, flags, err) != 0) {
        /* a request refused after its header section was read has a Via (parse_all checks
         * that first), so the rescan is only for refusals in the head itself */
        if (m->is_request && err->status && !m->head_len && !head_has_via(copy, copy + len)) {
            err->status = 0;
            err->reason = "Missing Via";
        }
        if (!m->is_request)
            err->status = 0;
        sip_msg_unref(m);
        return NULL;
    }
    return m;
}

void sip_msg_ref(struct sip_msg *m)
{
    m->refcount++;
}

void sip_msg_unref(struct sip_msg *m)
{
    if (!m || --m->refcount > 0)
        return;
    struct msg_block *b = block_of(m);
    uintptr_t lo = (uintptr_t)b, hi = lo + b->size;
    struct sip_msg_arena *a = m->arena, *n;
    for (; a; a = n) {
        n = a->next;
        if ((uintptr_t)a < lo || (uintptr_t)a >= hi)
            free(a); /* the inline chunk goes with the block */
    }
    if (m->hdrs != inline_hdrs(m))
        free(m->hdrs);
    block_put(b);
}

/* ---- stream framing --------------------------------------------------------------------- */

size_t sip_frame_skip_crlf(const char *buf, size_t len)
{
    size_t i = 0;
    while (len - i >= 2 && buf[i] == '\r' && buf[i + 1] == '\n')
        i += 2;
    return i;
}

/* Finds the end of the head (CRLFCRLF) within max bytes, then the one Content-Length (full
 * or compact, any case, LWS before ':', value possibly folded) among the header lines;
 * everything else is left to sip_msg_parse. Each call rescans from the start: the work is
 * O(min(len, max)) per call with memchr doing most of it, so a transport calling it on every
 * read pays at most max bytes of scanning per read; no state to keep per connection. */
long sip_frame(const char *buf, size_t len, size_t max)
{
    size_t lim = len < max ? len : max;
    const char *e = buf + lim, *p = buf, *head_end = NULL;
    while (p < e && (p = memchr(p, '\n', (size_t)(e - p))) != NULL) {
        if (p - buf >= 3 && p[-1] == '\r' && p[-2] == '\n' && p[-3] == '\r') {
            head_end = p + 1;
            break;
        }
        p++;
    }
    if (!head_end)
        return len >= max ? -1 : -2;

    int ncl = 0;
    uint64_t cl = 0;
    const char *q = memchr(buf, '\n', (size_t)(head_end - buf)) + 1; /* after the start line */
    const char *hend = head_end - 2;                                  /* the empty line */
    while (q < hend) {
        /* one logical header: up to a CRLF not followed by SP/HTAB */
        const char *le = q;
        for (;;) {
            le = memchr(le, '\n', (size_t)(hend - le));
            if (!le) { le = hend; break; }
            le++;
            if (le >= hend || !IS_WSP(*le))
                break;
        }
        const char *s = q, *n = q;
        while (n < le && (CLS(*n) & C_TOKEN))
            n++;
        size_t nl = (size_t)(n - s);
        if ((nl == 1 && lc((unsigned char)*s) == 'l') || (nl == 14 && ieq(s, "content-length", 14))) {
            while (n < le && IS_WSP(*n))
                n++;
            if (n < le && *n == ':') {
                if (++ncl > 1)
                    return -1;
                n++;
                while (n < le && (CLS(*n) & (C_WSP | C_EOL)))
                    n++;
                const char *d = n;
                while (n < le && (CLS(*n) & C_DIGIT)) {
                    cl = cl * 10 + (uint64_t)(*n - '0');
                    if (cl > max)
                        return -1;
                    n++;
                }
                if (n == d)
                    return -1;
                while (n < le && (CLS(*n) & (C_WSP | C_EOL)))
                    n++;
                if (n != le)
                    return -1;
            }
        }
        q = le;
    }
    if (ncl == 0)
        return -1;
    uint64_t total = (uint64_t)(head_end - buf) + cl;
    if (total > max)
        return -1;
    if (total > len)
        return -2;
    return (long)total;
}

/* ---- reads -------------------------------------------------------------------------------- */

int sip_msg_hdr_find_id(const struct sip_msg *m, enum sip_hdr_id id, uint32_t from)
{
    for (uint32_t i = from; i < m->nhdrs; i++)
        if (m->hdrs[i].id == id && !(m->hdrs[i].flags & SIP_HDR_F_DELETED))
            return (int)i;
    return -1;
}

/* Known names compare by id, so "v" finds "Via:" lines and "Via" finds "v:" lines;
 * unknown names compare case-insensitively with each other. */
int sip_msg_hdr_find(const struct sip_msg *m, const char *name, size_t len, uint32_t from)
{
    enum sip_hdr_id id = sip_hdr_lookup(name, len);
    if (id != SIP_HDR_OTHER)
        return sip_msg_hdr_find_id(m, id, from);
    for (uint32_t i = from; i < m->nhdrs; i++) {
        const struct sip_hdr *h = &m->hdrs[i];
        if (h->id == SIP_HDR_OTHER && !(h->flags & SIP_HDR_F_DELETED) && h->name.len == len &&
            ieq2(h->name.s, name, len))
            return (int)i;
    }
    return -1;
}

/* Folding (RFC 3261 §7.3.1): each *WSP CRLF 1*WSP run becomes one SP. The copy goes to the
 * arena and replaces the entry's value, so the work is done once per header. The line
 * slice is left as received: serialisation still copies the original bytes. */
struct sip_str sip_msg_hdr_value(struct sip_msg *m, uint32_t i)
{
    if (i >= m->nhdrs)
        return (struct sip_str){ NULL, 0 };
    struct sip_hdr *h = &m->hdrs[i];
    if (!(h->flags & SIP_HDR_F_FOLDED))
        return h->value;
    char *o = arena_alloc(m, h->value.len);
    if (!o)
        return (struct sip_str){ NULL, 0 };
    const char *p = h->value.s, *e = p + h->value.len;
    size_t n = 0;
    while (p < e) {
        const char *q = sip_find_eol_(h->value.s, p, e); /* copy up to the next line break */
        memcpy(o + n, p, (size_t)(q - p));
        n += (size_t)(q - p);
        p = q;
        if (p < e) {
            while (n > 0 && IS_WSP(o[n - 1]))
                n--;
            while (p < e && (CLS(*p) & (C_WSP | C_EOL)))
                p++;
            o[n++] = ' ';
        }
    }
    h->value = STR(o, n);
    h->flags &= (uint16_t)~SIP_HDR_F_FOLDED;
    return h->value;
}

/* ---- edits -------------------------------------------------------------------------------- */

/* A value we can write as one header line: no CR, LF or NUL (header injection). */
static int value_ok(const char *v, size_t n)
{
    if (n > SIP_MSG_MAX_LEN)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (v[i] == '\r' || v[i] == '\n' || v[i] == '\0')
            return 0;
    return 1;
}

/* Inserts a NEW entry at index pos; name and value are copied to the arena. */
static int hdr_insert_at(struct sip_msg *m, uint32_t pos, const char *name, size_t nlen,
                         const char *v, size_t vlen)
{
    int r = hdrs_reserve(m, MAX_EDIT_HDRS);
    if (r != 0)
        return -ENOMEM;
    char *s = arena_alloc(m, nlen + vlen + 1);
    if (!s)
        return -ENOMEM;
    memcpy(s, name, nlen);
    if (vlen)
        memcpy(s + nlen, v, vlen);
    memmove(&m->hdrs[pos + 1], &m->hdrs[pos], (m->nhdrs - pos) * sizeof(m->hdrs[0]));
    struct sip_hdr *h = &m->hdrs[pos];
    enum sip_hdr_id id = sip_hdr_lookup(name, nlen);
    h->name = STR(s, nlen);
    h->value = STR(s + nlen, vlen);
    h->line = (struct sip_str){ NULL, 0 };
    h->id = (uint16_t)id;
    h->flags = (uint16_t)(SIP_HDR_F_NEW | (hdr_is_list[id] ? SIP_HDR_F_LIST : 0));
    m->nhdrs++;
    return 0;
}

int sip_msg_hdr_delete(struct sip_msg *m, const char *name, size_t nlen, int only_first)
{
    if (!is_token(name, nlen))
        return -EINVAL;
    int n = 0;
    for (int i = sip_msg_hdr_find(m, name, nlen, 0); i >= 0; i = sip_msg_hdr_find(m, name, nlen, (uint32_t)i + 1)) {
        m->hdrs[i].flags |= SIP_HDR_F_DELETED;
        n++;
        if (only_first)
            break;
    }
    return n;
}

int sip_msg_hdr_insert(struct sip_msg *m, const char *name, size_t nlen, const char *v, size_t vlen)
{
    if (!is_token(name, nlen) || !value_ok(v, vlen))
        return -EINVAL;
    int i = sip_msg_hdr_find(m, name, nlen, 0);
    return hdr_insert_at(m, i >= 0 ? (uint32_t)i : 0, name, nlen, v, vlen);
}

int sip_msg_hdr_append(struct sip_msg *m, const char *name, size_t nlen, const char *v, size_t vlen)
{
    if (!is_token(name, nlen) || !value_ok(v, vlen))
        return -EINVAL;
    int last = -1;
    for (int i = sip_msg_hdr_find(m, name, nlen, 0); i >= 0; i = sip_msg_hdr_find(m, name, nlen, (uint32_t)i + 1))
        last = i;
    return hdr_insert_at(m, last >= 0 ? (uint32_t)last + 1 : m->nhdrs, name, nlen, v, vlen);
}

/* All-or-nothing: every value is checked before anything changes. */
int sip_msg_hdr_set(struct sip_msg *m, const char *name, size_t nlen, const struct sip_str *vals, size_t n)
{
    if (!is_token(name, nlen) || n > MAX_EDIT_HDRS)
        return -EINVAL;
    for (size_t k = 0; k < n; k++)
        if (!value_ok(vals[k].s, vals[k].len))
            return -EINVAL;
    if (m->nhdrs + n > MAX_EDIT_HDRS)
        return -ENOMEM;
    int first = sip_msg_hdr_find(m, name, nlen, 0);
    uint32_t pos = first >= 0 ? (uint32_t)first : m->nhdrs;
    sip_msg_hdr_delete(m, name, nlen, 0);
    for (size_t k = 0; k < n; k++) {
        int r = hdr_insert_at(m, pos + (uint32_t)k, name, nlen, vals[k].s, vals[k].len);
        if (r != 0)
            return r;
    }
    return 0;
}

/* The new R-URI must be a valid URI without spaces or ?headers (§19.1.1); it is copied to
 * the arena and the start line is rebuilt on serialisation. Requests only. */
int sip_msg_set_ruri(struct sip_msg *m, const char *s, size_t len)
{
    if (!m->is_request || len == 0 || !value_ok(s, len))
        return -EINVAL;
    for (size_t i = 0; i < len; i++)
        if (IS_WSP(s[i]))
            return -EINVAL;
    struct sip_uri u;
    if (sip_uri_parse(s, len, &u) != 0)
        return -EINVAL;
    if ((u.scheme == SIP_URI_SIP || u.scheme == SIP_URI_SIPS) && (u.headers.s || u.headers.len))
        return -EINVAL;
    const char *c = sip_msg_strdup(m, s, len);
    if (!c)
        return -ENOMEM;
    if (sip_uri_parse(c, len, &m->ruri) != 0)
        return -EINVAL; /* cannot happen: same bytes */
    m->ruri_str = STR(c, len);
    m->ruri_edited = 1;
    return 0;
}

int sip_msg_set_body(struct sip_msg *m, const char *s, size_t len)
{
    if (len > SIP_MSG_MAX_LEN)
        return -EINVAL;
    const char *c = sip_msg_strdup(m, s, len);
    if (!c)
        return -ENOMEM;
    m->body = STR(c, len);
    m->body_edited = 1;
    return 0;
}

/* ---- serialisation ------------------------------------------------------------------------ */

struct wr {
    char *o;
    size_t n, cap;
    int over;
};

static void put(struct wr *w, const void *s, size_t n)
{
    if (w->over || w->cap - w->n < n) {
        w->over = 1;
        return;
    }
    if (n)
        memcpy(w->o + w->n, s, n);
    w->n += n;
}

static void put_uint(struct wr *w, uint64_t x)
{
    char b[24];
    size_t i = sizeof(b);
    do {
        b[--i] = (char)('0' + x % 10);
        x /= 10;
    } while (x);
    put(w, b + i, sizeof(b) - i);
}

/* Writes the received bytes where nothing changed, one memcpy per run of contiguous
 * original lines; edits in between. Content-Length: kept as received unless the body
 * changed; added when the message had none (RFC 3261 §20.14, a forwarded message needs it
 * whatever the next transport is). Never writes beyond cap. */
long sip_msg_serialize(const struct sip_msg *m, char *out, size_t cap)
{
    struct wr w = { out, 0, cap, 0 };
    if (m->ruri_edited) {
        put(&w, m->method_str.s, m->method_str.len);
        put(&w, " ", 1);
        put(&w, m->ruri_str.s, m->ruri_str.len);
        put(&w, " ", 1);
        put(&w, m->version.s, m->version.len);
        put(&w, "\r\n", 2);
    } else {
        put(&w, m->buf, m->start_len);
    }
    const char *run = NULL;
    size_t runlen = 0;
    int cl_live = 0;
    for (uint32_t i = 0; i < m->nhdrs; i++) {
        const struct sip_hdr *h = &m->hdrs[i];
        int skip = (h->flags & SIP_HDR_F_DELETED) || (m->body_edited && h->id == SIP_HDR_CONTENT_LENGTH);
        if (!skip && h->id == SIP_HDR_CONTENT_LENGTH)
            cl_live = 1;
        if (!skip && !(h->flags & SIP_HDR_F_NEW) && run && run + runlen == h->line.s) {
            runlen += h->line.len;
            continue;
        }
        if (run)
            put(&w, run, runlen);
        run = NULL;
        if (skip)
            continue;
        if (h->flags & SIP_HDR_F_NEW) {
            put(&w, h->name.s, h->name.len);
            put(&w, ": ", 2);
            put(&w, h->value.s, h->value.len);
            put(&w, "\r\n", 2);
        } else {
            run = h->line.s;
            runlen = h->line.len;
        }
    }
    if (run)
        put(&w, run, runlen);
    if (!cl_live) {
        put(&w, "Content-Length: ", 16);
        put_uint(&w, m->body.len);
        put(&w, "\r\n", 2);
    }
    put(&w, "\r\n", 2);
    put(&w, m->body.s, m->body.len);
    if (w.over || w.n > (size_t)0x7fffffff)
        return -1;
    return (long)w.n;
}

/* See sip_msg.h. */
int sip_msg_hdr_delete_top_value(struct sip_msg *m, const char *name, size_t nlen)
{
    int i = sip_msg_hdr_find(m, name, nlen, 0);
    if (i < 0)
        return 0;
    if (m->hdrs[i].flags & SIP_HDR_F_LIST) {
        struct sip_str v = sip_msg_hdr_value(m, (uint32_t)i), item;
        const char *p = v.s, *end = v.s + v.len;
        if (sip_list_next(&p, end, &item) == 1 && p < end) {
            /* more elements follow: keep them as this header's new value */
            struct sip_str rest = sip_str_trim((struct sip_str){ p, (uint32_t)(end - p) });
            if (rest.len && rest.s[0] == ',')
                rest = sip_str_trim((struct sip_str){ rest.s + 1, rest.len - 1 });
            if (rest.len) {
                int rc = sip_msg_hdr_delete(m, name, nlen, 1);
                if (rc < 0)
                    return rc;
                rc = sip_msg_hdr_insert(m, name, nlen, rest.s, rest.len);
                return rc < 0 ? rc : 1;
            }
        }
    }
    return sip_msg_hdr_delete(m, name, nlen, 1);
}

/* See sip_msg.h. */
int sip_msg_max_forwards(struct sip_msg *m)
{
    int i = sip_msg_hdr_find_id(m, SIP_HDR_MAX_FORWARDS, 0);
    if (i < 0)
        return -1;
    struct sip_str v = sip_str_trim(sip_msg_hdr_value(m, (uint32_t)i));
    uint64_t u;
    if (sip_parse_uint(v.s, v.len, 255, &u) != 0)
        return -2;
    return (int)u;
}

int sip_msg_has_option_tag(struct sip_msg *m, enum sip_hdr_id id, const char *tag)
{
    for (int i = sip_msg_hdr_find_id(m, id, 0); i >= 0; i = sip_msg_hdr_find_id(m, id, (uint32_t)i + 1)) {
        struct sip_str v = sip_msg_hdr_value(m, (uint32_t)i), item;
        const char *p = v.s, *end = v.s + v.len;
        while (sip_list_next(&p, end, &item) == 1)
            if (sip_str_casecmp(item, tag) == 0)
                return 1;
    }
    return 0;
}
