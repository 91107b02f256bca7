/* WebSocket for SIP, server side: the opening handshake (RFC 6455 §4.2.1 reading the
 * client's request, §4.2.2 the answer; RFC 7118 §4.1 the sip subprotocol) and the base
 * framing (RFC 6455 §5.2-5.5, §7.4 close codes, §8.1 UTF-8 text). Pure functions over byte
 * buffers: src/conn.c does the I/O. */
#include "ws.h"

#include <mbedtls/base64.h>
#include <mbedtls/sha1.h>
#include <mbedtls/version.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11" /* RFC 6455 §1.3 */
#define KEY_B64_LEN 24                                 /* base64 of 16 bytes */

/* ----- small text helpers ----- */

static int lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

/* 1 when s[0..n) equals the NUL-terminated lit, ignoring ASCII case. */
static int ieq(const char *s, size_t n, const char *lit)
{
    size_t i = 0;
    for (; i < n && lit[i]; i++)
        if (lower((unsigned char)s[i]) != lower((unsigned char)lit[i]))
            return 0;
    return i == n && !lit[i];
}

static int is_ows(int c)
{
    return c == ' ' || c == '\t';
}

/* RFC 7230 §3.2.6 tchar: the characters of a method or a header name. */
static int is_tchar(int c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return 1;
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int is_digit(int c)
{
    return c >= '0' && c <= '9';
}

static int is_hex(int c)
{
    return is_digit(c) || (lower(c) >= 'a' && lower(c) <= 'f');
}

static struct sip_str slice(const char *s, size_t n)
{
    struct sip_str v = { s, (uint32_t)n };
    return v;
}

/* 1 when the comma-separated list s[0..n) holds tok (RFC 7230 §7 #rule: empty elements and
 * OWS around them are allowed), compared case-insensitively. */
static int list_has(const char *s, size_t n, const char *tok)
{
    size_t i = 0;
    while (i <= n) {
        size_t j = i;
        while (j < n && s[j] != ',')
            j++;
        size_t a = i, b = j;
        while (a < b && is_ows((unsigned char)s[a]))
            a++;
        while (b > a && is_ows((unsigned char)s[b - 1]))
            b--;
        if (ieq(s + a, b - a, tok))
            return 1;
        i = j + 1;
    }
    return 0;
}

/* 1 when some header called name lists tok: Connection, Upgrade and Sec-WebSocket-Protocol
 * may each come as several header lines (RFC 7230 §3.2.2). */
static int headers_have(const struct ws_http_request *r, const char *name, const char *tok)
{
    for (size_t i = 0; i < r->nhdrs; i++) {
        const struct ws_http_header *h = &r->hdrs[i];
        if (ieq(h->name.s, h->name.len, name) && list_has(h->value.s, h->value.len, tok))
            return 1;
    }
    return 0;
}

/* ----- the opening handshake ----- */

/* The index past the empty lines a client may send before its request line (RFC 7230 §3.5:
 * a server SHOULD ignore at least one). */
static size_t skip_empty_lines(const char *buf, size_t n)
{
    size_t i = 0;
    for (;;) {
        if (i < n && buf[i] == '\n')
            i++;
        else if (n - i >= 2 && buf[i] == '\r' && buf[i + 1] == '\n')
            i += 2;
        else
            return i;
    }
}

/* Lines end in CRLF; a bare LF is accepted too (RFC 7230 §3.5), a bare CR is not (it is a
 * control character and the line is refused). */
long ws_http_head_len(const char *buf, size_t len, size_t max)
{
    size_t n = len < max ? len : max;
    size_t start = skip_empty_lines(buf, n);
    for (size_t i = start + 1; i < n; i++) {
        if (buf[i] != '\n')
            continue;
        if (buf[i - 1] == '\n' || (buf[i - 1] == '\r' && i >= start + 2 && buf[i - 2] == '\n'))
            return (long)(i + 1);
    }
    return len >= max ? -1 : 0;
}

/* The next line of buf[*pos..len) without its line end, advancing *pos past it. Returns 0,
 * or -1 when no LF is left. */
static int next_line(const char *buf, size_t len, size_t *pos, const char **s, size_t *n)
{
    const char *p = buf + *pos;
    const char *lf = memchr(p, '\n', len - *pos);
    if (!lf)
        return -1;
    size_t l = (size_t)(lf - p);
    if (l && p[l - 1] == '\r')
        l--;
    *s = p;
    *n = l;
    *pos += (size_t)(lf - p) + 1;
    return 0;
}

/* RFC 7230 §3.1.1: method SP request-target SP HTTP-version, each part strictly formed. */
static int parse_request_line(const char *s, size_t n, struct ws_http_request *r)
{
    size_t i = 0;
    while (i < n && is_tchar((unsigned char)s[i]))
        i++;
    if (i == 0 || i == n || s[i] != ' ')
        return -1;
    r->method = slice(s, i);
    size_t t = ++i;
    while (i < n && (unsigned char)s[i] > 0x20 && (unsigned char)s[i] < 0x7f)
        i++;
    if (i == t || i == n || s[i] != ' ')
        return -1;
    r->target = slice(s + t, i - t);
    const char *v = s + i + 1;
    size_t vn = n - i - 1;
    if (vn != 8 || memcmp(v, "HTTP/", 5) != 0 || !is_digit((unsigned char)v[5]) || v[6] != '.' ||
        !is_digit((unsigned char)v[7]))
        return -1;
    r->version = slice(v, vn);
    return 0;
}

/* RFC 7230 §3.2: field-name ":" OWS field-value OWS. A line starting with whitespace
 * (obs-fold) or with whitespace before the colon is refused (§3.2.4), and so are control
 * characters in the value; obs-text (bytes above 0x7f) is allowed. */
static int parse_header_line(const char *s, size_t n, struct ws_http_header *h)
{
    size_t i = 0;
    while (i < n && is_tchar((unsigned char)s[i]))
        i++;
    if (i == 0 || i == n || s[i] != ':')
        return -1;
    h->name = slice(s, i);
    size_t a = i + 1, b = n;
    for (size_t k = a; k < b; k++) {
        unsigned char c = (unsigned char)s[k];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return -1;
    }
    while (a < b && is_ows((unsigned char)s[a]))
        a++;
    while (b > a && is_ows((unsigned char)s[b - 1]))
        b--;
    h->value = slice(s + a, b - a);
    return 0;
}

/* RFC 7230 §5.4 Host = uri-host [ ":" port ] (RFC 3986 §3.2.2): an IP literal in brackets
 * or a reg-name / IPv4 address, then at most 5 port digits. Must not be empty: a WebSocket
 * URI always has an authority. */
static int host_valid(const char *s, size_t n)
{
    size_t i = 0;
    if (n && s[0] == '[') {
        for (i = 1; i < n && s[i] != ']'; i++) {
            int c = (unsigned char)s[i];
            if (!is_hex(c) && c != ':' && c != '.')
                return 0;
        }
        if (i == n || i == 1)
            return 0;
        i++;
    } else {
        for (; i < n && s[i] != ':'; i++) {
            int c = (unsigned char)s[i];
            if (c == '%') {
                if (n - i < 3 || !is_hex((unsigned char)s[i + 1]) || !is_hex((unsigned char)s[i + 2]))
                    return 0;
                i += 2;
            } else if (!(lower(c) >= 'a' && lower(c) <= 'z') && !is_digit(c) && !(c && strchr("-._~!$&'()*+,;=", c))) {
                return 0;
            }
        }
        if (i == 0)
            return 0;
    }
    if (i == n)
        return 1;
    if (s[i] != ':' || n - i - 1 > 5)
        return 0;
    for (i++; i < n; i++)
        if (!is_digit((unsigned char)s[i]))
            return 0;
    return 1;
}

/* RFC 6455 §4.2.1 item 5: base64 that decodes to 16 bytes, i.e. 22 characters of the
 * alphabet and "==". */
static int key_valid(const char *s, size_t n)
{
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (n != KEY_B64_LEN || s[22] != '=' || s[23] != '=')
        return 0;
    for (size_t i = 0; i < 22; i++)
        if (!s[i] || !strchr(alphabet, s[i]))
            return 0;
    unsigned char raw[18];
    size_t olen = 0;
    return mbedtls_base64_decode(raw, sizeof(raw), &olen, (const unsigned char *)s, n) == 0 && olen == 16;
}

/* The headers ws_http_request keeps a slice of: the first occurrence. Those RFC 7230 §5.4 and
 * RFC 6455 §11.3.1/§11.3.5 (and RFC 6454 §7.3) allow only once are refused when repeated. */
static const struct {
    const char *name;
    size_t off;
    int unique;
    const char *dup;
} known[] = {
    { "host", offsetof(struct ws_http_request, host), 1, "duplicate Host" },
    { "origin", offsetof(struct ws_http_request, origin), 1, "duplicate Origin" },
    { "sec-websocket-key", offsetof(struct ws_http_request, key), 1, "duplicate Sec-WebSocket-Key" },
    { "sec-websocket-version", offsetof(struct ws_http_request, ws_version), 1, "duplicate Sec-WebSocket-Version" },
    { "sec-websocket-protocol", offsetof(struct ws_http_request, protocols), 0, NULL },
    { "upgrade", offsetof(struct ws_http_request, upgrade), 0, NULL },
    { "connection", offsetof(struct ws_http_request, connection), 0, NULL },
};

static int refuse(const char **why, int code, const char *text)
{
    if (why)
        *why = text;
    return code;
}

/* Borrows buf: every slice of *r points into it. Syntax first (400, 431), then the
 * semantics in the order a client can act on: 505, 405, 400 (Host, Upgrade, Connection),
 * 426 (a client speaking another version may use another key scheme), 400 (the key). */
int ws_http_parse(const char *buf, size_t len, struct ws_http_request *r, const char **why)
{
    memset(r, 0, sizeof(*r));
    if (why)
        *why = NULL;
    if (len > WS_HEAD_MAX)
        return refuse(why, 431, "HTTP head too large");
    size_t pos = skip_empty_lines(buf, len);
    const char *s;
    size_t n;
    if (next_line(buf, len, &pos, &s, &n) != 0 || parse_request_line(s, n, r) != 0)
        return refuse(why, 400, "malformed request line");
    for (;;) {
        if (next_line(buf, len, &pos, &s, &n) != 0)
            return refuse(why, 400, "HTTP head without its empty line");
        if (n == 0)
            break;
        if (r->nhdrs == WS_MAX_HEADERS)
            return refuse(why, 431, "too many header lines");
        struct ws_http_header *h = &r->hdrs[r->nhdrs];
        if (parse_header_line(s, n, h) != 0)
            return refuse(why, 400, "malformed header line");
        r->nhdrs++;
        for (size_t k = 0; k < sizeof(known) / sizeof(known[0]); k++) {
            if (!ieq(h->name.s, h->name.len, known[k].name))
                continue;
            struct sip_str *field = (struct sip_str *)((char *)r + known[k].off);
            if (!field->s)
                *field = h->value;
            else if (known[k].unique)
                return refuse(why, 400, known[k].dup);
        }
    }
    if (pos != len)
        return refuse(why, 400, "bytes after the HTTP head");
    /* RFC 6455 §4.2.1 item 1: HTTP/1.1 or higher */
    if (r->version.s[5] != '1' || r->version.s[7] == '0')
        return refuse(why, 505, "HTTP version not supported");
    if (r->method.len != 3 || memcmp(r->method.s, "GET", 3) != 0)
        return refuse(why, 405, "method is not GET");
    if (!r->host.s)
        return refuse(why, 400, "no Host");
    if (!host_valid(r->host.s, r->host.len))
        return refuse(why, 400, "invalid Host");
    if (!headers_have(r, "upgrade", "websocket"))
        return refuse(why, 400, "no Upgrade: websocket");
    if (!headers_have(r, "connection", "upgrade"))
        return refuse(why, 400, "no Connection: upgrade");
    if (!r->ws_version.s || !ieq(r->ws_version.s, r->ws_version.len, "13"))
        return refuse(why, 426, "Sec-WebSocket-Version is not 13");
    if (!r->key.s)
        return refuse(why, 400, "no Sec-WebSocket-Key");
    if (!key_valid(r->key.s, r->key.len))
        return refuse(why, 400, "Sec-WebSocket-Key is not base64 of 16 bytes");
    return 0;
}

int ws_has_sip_protocol(const struct ws_http_request *r)
{
    return headers_have(r, "sec-websocket-protocol", "sip");
}

struct sip_str ws_http_header(const struct ws_http_request *r, const char *name)
{
    for (size_t i = 0; i < r->nhdrs; i++)
        if (ieq(r->hdrs[i].name.s, r->hdrs[i].name.len, name))
            return r->hdrs[i].value;
    return slice(NULL, 0);
}

void ws_accept_key(const char *key, size_t klen, char out[29])
{
    unsigned char digest[20];
    mbedtls_sha1_context c;
    mbedtls_sha1_init(&c);
#if MBEDTLS_VERSION_NUMBER >= 0x03000000
    int rc = mbedtls_sha1_starts(&c);
    rc = rc ? rc : mbedtls_sha1_update(&c, (const unsigned char *)key, klen);
    rc = rc ? rc : mbedtls_sha1_update(&c, (const unsigned char *)WS_GUID, sizeof(WS_GUID) - 1);
    rc = rc ? rc : mbedtls_sha1_finish(&c, digest);
#else
    int rc = mbedtls_sha1_starts_ret(&c);
    rc = rc ? rc : mbedtls_sha1_update_ret(&c, (const unsigned char *)key, klen);
    rc = rc ? rc : mbedtls_sha1_update_ret(&c, (const unsigned char *)WS_GUID, sizeof(WS_GUID) - 1);
    rc = rc ? rc : mbedtls_sha1_finish_ret(&c, digest);
#endif
    mbedtls_sha1_free(&c);
    size_t olen = 0;
    if (rc != 0 || mbedtls_base64_encode((unsigned char *)out, 29, &olen, digest, sizeof(digest)) != 0 || olen != 28)
        memset(out, 0, 29); /* software SHA-1 does not fail; never a half-written key */
}

/* Appends to a bounded output; once something does not fit, the whole answer is refused. */
struct out {
    char *p;
    size_t cap, n;
    int over;
};

static void put(struct out *o, const char *s, size_t n)
{
    if (o->over || n > o->cap - o->n) {
        o->over = 1;
        return;
    }
    memcpy(o->p + o->n, s, n);
    o->n += n;
}

static void puts_out(struct out *o, const char *s)
{
    put(o, s, strlen(s));
}

static long out_len(const struct out *o)
{
    return o->over ? -1 : (long)o->n;
}

/* Borrows r: only its key is read, which ws_http_parse validated. */
long ws_http_accept(const struct ws_http_request *r, char *out, size_t cap)
{
    if (!r->key.s)
        return -1;
    char accept[29];
    ws_accept_key(r->key.s, r->key.len, accept);
    struct out o = { out, cap, 0, 0 };
    puts_out(&o, "HTTP/1.1 101 Switching Protocols\r\n"
                 "Upgrade: websocket\r\n"
                 "Connection: Upgrade\r\n"
                 "Sec-WebSocket-Accept: ");
    puts_out(&o, accept);
    puts_out(&o, "\r\nSec-WebSocket-Protocol: sip\r\n\r\n");
    return out_len(&o);
}

static const char *phrase(int code)
{
    switch (code) {
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return code >= 500 ? "Server Error" : "Client Error";
    }
}

/* reason may come from Lua (on_ws_upgrade): a control character in it (CR, LF) would split
 * the answer, so each becomes a space (RFC 7230 §3.1.2 reason-phrase: HTAB, SP, VCHAR,
 * obs-text). extra is the caller's own header lines, copied as they are. */
long ws_http_reject(int code, const char *reason, const char *extra, char *out, size_t cap)
{
    if (code < 100 || code > 999)
        return -1;
    struct out o = { out, cap, 0, 0 };
    char line[16];
    snprintf(line, sizeof(line), "HTTP/1.1 %d ", code);
    puts_out(&o, line);
    if (!reason)
        reason = phrase(code);
    for (const char *c = reason; *c; c++) {
        unsigned char b = (unsigned char)*c;
        put(&o, (b < 0x20 && b != '\t') || b == 0x7f ? " " : c, 1);
    }
    puts_out(&o, "\r\n");
    if (code == 426) /* RFC 6455 §4.2.2 item 4 */
        puts_out(&o, "Sec-WebSocket-Version: 13\r\n");
    if (code == 405) /* RFC 7231 §6.5.5: a 405 lists the methods allowed */
        puts_out(&o, "Allow: GET\r\n");
    puts_out(&o, "Connection: close\r\nContent-Length: 0\r\n");
    if (extra)
        puts_out(&o, extra);
    puts_out(&o, "\r\n");
    return out_len(&o);
}

/* ----- UTF-8 (RFC 3629 §4), validated incrementally ----- */

/* The states of the validator: what the next byte may be. A sequence's first byte picks
 * the range of its second (E0: no overlong; ED: no surrogate; F0: no overlong; F4: not
 * above U+10FFFF); the bytes after the second are any 80..BF. */
enum {
    U_ACCEPT = 0, /* between characters */
    U_REJECT,     /* invalid, for good */
    U_CONT1,      /* one more 80..BF */
    U_CONT2,      /* two more */
    U_CONT3,      /* three more */
    U_E0,         /* A0..BF, then one more */
    U_ED,         /* 80..9F, then one more */
    U_F0,         /* 90..BF, then two more */
    U_F4,         /* 80..8F, then two more */
};

static uint32_t utf8_step(uint32_t st, unsigned b)
{
    switch (st) {
    case U_ACCEPT:
        if (b < 0x80)
            return U_ACCEPT;
        if (b >= 0xc2 && b <= 0xdf)
            return U_CONT1;
        if (b == 0xe0)
            return U_E0;
        if (b == 0xed)
            return U_ED;
        if (b >= 0xe1 && b <= 0xef)
            return U_CONT2;
        if (b == 0xf0)
            return U_F0;
        if (b >= 0xf1 && b <= 0xf3)
            return U_CONT3;
        if (b == 0xf4)
            return U_F4;
        return U_REJECT; /* a stray continuation, C0/C1 (overlong), F5..FF */
    case U_CONT1:
        return b >= 0x80 && b <= 0xbf ? U_ACCEPT : U_REJECT;
    case U_CONT2:
        return b >= 0x80 && b <= 0xbf ? U_CONT1 : U_REJECT;
    case U_CONT3:
        return b >= 0x80 && b <= 0xbf ? U_CONT2 : U_REJECT;
    case U_E0:
        return b >= 0xa0 && b <= 0xbf ? U_CONT1 : U_REJECT;
    case U_ED:
        return b >= 0x80 && b <= 0x9f ? U_CONT1 : U_REJECT;
    case U_F0:
        return b >= 0x90 && b <= 0xbf ? U_CONT2 : U_REJECT;
    case U_F4:
        return b >= 0x80 && b <= 0x8f ? U_CONT2 : U_REJECT;
    default:
        return U_REJECT;
    }
}

/* Runs the validator over s[0..n) from state st; ASCII goes 8 bytes at a time. */
static uint32_t utf8_run(uint32_t st, const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n && st != U_REJECT) {
        if (st == U_ACCEPT) {
            uint64_t w;
            while (n - i >= 8 && (memcpy(&w, s + i, 8), (w & 0x8080808080808080ull) == 0))
                i += 8;
            if (i == n)
                break;
        }
        st = utf8_step(st, s[i++]);
    }
    return st;
}

int ws_utf8_valid(const uint8_t *buf, size_t len)
{
    return utf8_run(U_ACCEPT, buf, len) == U_ACCEPT;
}

/* ----- framing ----- */

void ws_parser_init(struct ws_parser *p, size_t max_frame, size_t max_message)
{
    memset(p, 0, sizeof(*p));
    p->max_frame = max_frame;
    p->max_message = max_message;
    p->msg_op = WS_OP_CONT;
    p->utf8_state = U_ACCEPT;
}

void ws_parser_free(struct ws_parser *p)
{
    free(p->msg);
    p->msg = NULL;
    p->msg_len = p->msg_cap = 0;
    p->msg_op = WS_OP_CONT;
}

/* Records the first protocol violation; it is what every later call answers. */
static size_t fail(struct ws_parser *p, struct ws_result *r, uint16_t code, const char *why)
{
    p->failed = 1;
    memset(&p->err, 0, sizeof(p->err));
    p->err.ev = WS_EV_ERROR;
    p->err.code = code;
    p->err.why = why;
    *r = p->err;
    return 0;
}

/* RFC 6455 §7.4: the codes an endpoint may put on the wire. 1004 is reserved, 1005, 1006
 * and 1015 are for reporting only, 1016-2999 are for future RFCs, 3000-4999 for
 * registered and private use. */
static int close_code_ok(unsigned c)
{
    if (c < 1000 || c >= 5000 || (c >= 1016 && c <= 2999))
        return 0;
    return c != 1004 && c != 1005 && c != 1006 && c != 1015;
}

/* RFC 6455 §5.3: payload[i] ^= key[i % 4], eight bytes at a time where it can. */
static void unmask(uint8_t *d, size_t n, const uint8_t key[4])
{
    uint8_t k8[8];
    for (int i = 0; i < 8; i++)
        k8[i] = key[i & 3];
    uint64_t kw, w;
    memcpy(&kw, k8, 8);
    size_t i = 0;
    for (; n - i >= 8; i += 8) {
        memcpy(&w, d + i, 8);
        w ^= kw;
        memcpy(d + i, &w, 8);
    }
    for (; i < n; i++)
        d[i] ^= key[i & 3];
}

/* Appends a fragment to the message being reassembled. The caller checked on the frame
 * header that the message stays within max_message, so the buffer never grows beyond it. */
static int msg_append(struct ws_parser *p, const uint8_t *d, size_t n)
{
    if (n > p->msg_cap - p->msg_len) {
        size_t need = p->msg_len + n;
        size_t cap = p->msg_cap ? p->msg_cap : 1024;
        while (cap < need)
            cap = cap > SIZE_MAX / 2 ? SIZE_MAX : cap * 2;
        if (cap > p->max_message)
            cap = p->max_message;
        uint8_t *m = realloc(p->msg, cap);
        if (!m)
            return -1;
        p->msg = m;
        p->msg_cap = cap;
    }
    memcpy(p->msg + p->msg_len, d, n);
    p->msg_len += n;
    return 0;
}

/* Borrows buf and unmasks the frame it consumes in place. Every check that the header alone
 * decides (§5.2 RSV, opcode, mask; §5.4 fragmentation; §5.5 control frames; the size limits)
 * is made as soon as those header bytes are there, so a peer cannot make us wait for (or
 * buffer) a payload we would refuse. */
size_t ws_parse(struct ws_parser *p, uint8_t *buf, size_t len, struct ws_result *r)
{
    memset(r, 0, sizeof(*r));
    r->ev = WS_EV_NONE;
    if (p->failed) {
        *r = p->err;
        return 0;
    }
    if (p->msg_op == WS_OP_CONT && p->msg) {
        /* the last reassembled message was handed out by the previous call: let it go, so
         * an idle connection holds no buffer */
        free(p->msg);
        p->msg = NULL;
        p->msg_len = p->msg_cap = 0;
    }
    if (len < 2)
        return 0;
    int fin = buf[0] & 0x80;
    unsigned op = buf[0] & 0x0f, len7 = buf[1] & 0x7f;
    if (buf[0] & 0x70)
        return fail(p, r, WS_CLOSE_PROTOCOL, "RSV bit set with no extension negotiated");
    switch (op) {
    case WS_OP_CONT: case WS_OP_TEXT: case WS_OP_BINARY:
    case WS_OP_CLOSE: case WS_OP_PING: case WS_OP_PONG:
        break;
    default:
        return fail(p, r, WS_CLOSE_PROTOCOL, "unknown opcode");
    }
    if (!(buf[1] & 0x80)) /* §5.1: a server closes on an unmasked frame */
        return fail(p, r, WS_CLOSE_PROTOCOL, "unmasked frame from the client");
    int control = (op & 0x8) != 0;
    if (control) {
        if (!fin)
            return fail(p, r, WS_CLOSE_PROTOCOL, "fragmented control frame");
        if (len7 > 125)
            return fail(p, r, WS_CLOSE_PROTOCOL, "control frame payload above 125 bytes");
    } else if (op == WS_OP_CONT && p->msg_op == WS_OP_CONT) {
        return fail(p, r, WS_CLOSE_PROTOCOL, "continuation frame with no message started");
    } else if (op != WS_OP_CONT && p->msg_op != WS_OP_CONT) {
        return fail(p, r, WS_CLOSE_PROTOCOL, "new message while a fragmented one is pending");
    }
    size_t hl = 2;
    uint64_t plen = len7;
    if (len7 == 126) {
        if (len < 4)
            return 0;
        plen = (uint64_t)buf[2] << 8 | buf[3];
        hl = 4;
        if (plen < 126)
            return fail(p, r, WS_CLOSE_PROTOCOL, "16-bit length not in its minimal form");
    } else if (len7 == 127) {
        if (len < 10)
            return 0;
        plen = 0;
        for (int i = 2; i < 10; i++)
            plen = plen << 8 | buf[i];
        hl = 10;
        if (plen >> 63)
            return fail(p, r, WS_CLOSE_PROTOCOL, "64-bit length with its top bit set");
        if (plen <= 0xffff)
            return fail(p, r, WS_CLOSE_PROTOCOL, "64-bit length not in its minimal form");
    }
    if (plen > p->max_frame)
        return fail(p, r, WS_CLOSE_TOO_BIG, "frame above websocket.max_frame_size");
    size_t pending = op == WS_OP_CONT ? p->msg_len : 0;
    if (!control && plen > p->max_message - pending)
        return fail(p, r, WS_CLOSE_TOO_BIG, "message above websocket.max_message_size");
    hl += 4; /* the masking key */
    size_t n = (size_t)plen; /* plen <= max_frame, a size_t */
    if (len < hl || len - hl < n)
        return 0;
    uint8_t *pl = buf + hl;
    unmask(pl, n, buf + hl - 4);
    size_t used = hl + n;
    r->opcode = (enum ws_opcode)op;
    switch (op) {
    case WS_OP_PING:
    case WS_OP_PONG:
        r->ev = op == WS_OP_PING ? WS_EV_PING : WS_EV_PONG;
        r->data = pl;
        r->len = n;
        return used;
    case WS_OP_CLOSE: /* §5.5.1 */
        r->ev = WS_EV_CLOSE;
        if (n == 0) {
            r->code = WS_CLOSE_NO_STATUS;
            r->data = pl;
            return used;
        }
        if (n == 1)
            return fail(p, r, WS_CLOSE_PROTOCOL, "close frame with a 1-byte payload");
        r->code = (uint16_t)(pl[0] << 8 | pl[1]);
        if (!close_code_ok(r->code))
            return fail(p, r, WS_CLOSE_PROTOCOL, "close code not allowed on the wire");
        if (!ws_utf8_valid(pl + 2, n - 2))
            return fail(p, r, WS_CLOSE_BAD_DATA, "close reason not valid UTF-8");
        r->data = pl + 2;
        r->len = n - 2;
        return used;
    case WS_OP_TEXT:
    case WS_OP_BINARY:
        if (fin) { /* a whole message in one frame: handed out in place, no copy */
            if (op == WS_OP_TEXT && !ws_utf8_valid(pl, n))
                return fail(p, r, WS_CLOSE_BAD_DATA, "text message not valid UTF-8");
            r->ev = WS_EV_MESSAGE;
            r->data = pl;
            r->len = n;
            return used;
        }
        p->msg_op = (enum ws_opcode)op; /* §5.4: the first fragment */
        p->msg_len = 0;
        p->utf8_state = U_ACCEPT;
        break;
    default: /* WS_OP_CONT with a message pending */
        break;
    }
    r->opcode = p->msg_op;
    if (p->msg_op == WS_OP_TEXT) {
        /* §8.1: fail fast, as each fragment arrives; a sequence may span fragments */
        p->utf8_state = utf8_run(p->utf8_state, pl, n);
        if (p->utf8_state == U_REJECT)
            return fail(p, r, WS_CLOSE_BAD_DATA, "text message not valid UTF-8");
    }
    if (n && msg_append(p, pl, n) != 0)
        return fail(p, r, WS_CLOSE_ERROR, "out of memory reassembling a message");
    if (!fin)
        return used;
    if (p->msg_op == WS_OP_TEXT && p->utf8_state != U_ACCEPT)
        return fail(p, r, WS_CLOSE_BAD_DATA, "text message ends inside a UTF-8 sequence");
    r->ev = WS_EV_MESSAGE;
    r->data = p->msg ? p->msg : pl; /* pl: an empty message, never a NULL pointer */
    r->len = p->msg_len;
    p->msg_op = WS_OP_CONT;
    return used;
}

size_t ws_frame_header(uint8_t out[10], enum ws_opcode op, size_t len)
{
    out[0] = (uint8_t)(0x80 | (op & 0x0f));
    if (len < 126) {
        out[1] = (uint8_t)len;
        return 2;
    }
    if (len <= 0xffff) {
        out[1] = 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        return 4;
    }
    out[1] = 127;
    uint64_t l = len;
    for (int i = 9; i >= 2; i--, l >>= 8)
        out[i] = (uint8_t)l;
    return 10;
}

/* §5.5.1: the reason is cut at the last character boundary within 123 bytes; what follows
 * an invalid byte is dropped too, so the peer never sees a reason it must reject (§8.1). */
size_t ws_close_frame(uint8_t out[127], uint16_t code, const char *reason)
{
    out[0] = 0x80 | WS_OP_CLOSE;
    if (code == 0) {
        out[1] = 0;
        return 2;
    }
    out[2] = (uint8_t)(code >> 8);
    out[3] = (uint8_t)code;
    size_t keep = 0;
    if (reason) {
        uint32_t st = U_ACCEPT;
        for (size_t i = 0; i < 123 && reason[i]; i++) {
            st = utf8_step(st, (unsigned char)reason[i]);
            if (st == U_REJECT)
                break;
            if (st == U_ACCEPT)
                keep = i + 1;
        }
        memcpy(out + 4, reason, keep);
    }
    out[1] = (uint8_t)(2 + keep);
    return 4 + keep;
}
