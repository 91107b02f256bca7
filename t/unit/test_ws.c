/* Unit tests of ws.c: the RFC 6455 §1.3 accept key, the opening handshake (every refusal and
 * the status it answers), the §5.7 framing examples, every rule of ws_parse with its close
 * code, fragments fed byte by byte, limits exact at their boundary, UTF-8 edge cases
 * (RFC 3629) including sequences split across fragments, and the frames we write. */
#include <stdint.h>

#include "test.h"
#include "ws.h"

/* ----- helpers ----- */

static const uint8_t mask_key[4] = { 0x37, 0xfa, 0x21, 0x3d }; /* RFC 6455 §5.7 */

/* A client frame: b0 as given (FIN, RSV, opcode), masked with mask_key when masked, the
 * payload length in form 0 (minimal), 16 or 64. Returns its size. */
static size_t cframe(uint8_t *out, uint8_t b0, int masked, int form, const void *payload, size_t n)
{
    size_t i = 0;
    out[i++] = b0;
    uint8_t m = masked ? 0x80 : 0;
    if (form == 64 || (form == 0 && n > 0xffff)) {
        out[i++] = m | 127;
        for (int k = 7; k >= 0; k--)
            out[i++] = (uint8_t)((uint64_t)n >> (8 * k));
    } else if (form == 16 || (form == 0 && n > 125)) {
        out[i++] = m | 126;
        out[i++] = (uint8_t)(n >> 8);
        out[i++] = (uint8_t)n;
    } else {
        out[i++] = m | (uint8_t)n;
    }
    if (masked) {
        memcpy(out + i, mask_key, 4);
        i += 4;
    }
    for (size_t k = 0; k < n; k++)
        out[i + k] = ((const uint8_t *)payload)[k] ^ (masked ? mask_key[k & 3] : 0);
    return i + n;
}

/* Parses bytes copied so that they end right before a guard page. The copy lives until the
 * next feed, so r->data may be checked in between. */
static struct guard_buf fed;
static int fed_live;

static size_t feed(struct ws_parser *p, const void *bytes, size_t n, struct ws_result *r)
{
    if (fed_live)
        guard_free(&fed);
    fed = guard_alloc(bytes, n);
    fed_live = 1;
    return ws_parse(p, (uint8_t *)fed.data, n, r);
}

static int data_is(const struct ws_result *r, const void *want, size_t n)
{
    return r->len == n && (n == 0 || memcmp(r->data, want, n) == 0);
}

/* One frame into a fresh parser: the error code it closes with, or 0 when it parsed. */
static uint16_t one_frame_error(const uint8_t *f, size_t n, size_t max_frame, size_t max_message)
{
    struct ws_parser p;
    struct ws_result r;
    ws_parser_init(&p, max_frame, max_message);
    feed(&p, f, n, &r);
    ws_parser_free(&p);
    return r.ev == WS_EV_ERROR ? r.code : 0;
}

/* The handshake: ws_http_parse of a whole head placed before a guard page. */
static int http_status(const char *head, const char **why)
{
    struct ws_http_request r;
    size_t n = strlen(head);
    struct guard_buf g = guard_alloc(head, n);
    const char *w = "unset";
    int st = ws_http_parse(g.data, n, &r, &w);
    guard_free(&g);
    if (why)
        *why = w;
    return st;
}

#define H_HOST "Host: sip.example.com\r\n"
#define H_UPG "Upgrade: websocket\r\n"
#define H_CONN "Connection: Upgrade\r\n"
#define H_KEY "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
#define H_VER "Sec-WebSocket-Version: 13\r\n"
#define H_PROTO "Sec-WebSocket-Protocol: sip\r\n"
#define RL "GET / HTTP/1.1\r\n"

#define STATUS(want, head) do { \
    const char *why_; \
    int st_ = http_status(head, &why_); \
    CHECK_MSG(st_ == (want), "status %d want %d (%s) for %s", st_, (want), why_ ? why_ : "-", #head); \
} while (0)

/* ----- the opening handshake ----- */

static void test_accept_key(void)
{
    char out[29];
    ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", 24, out); /* RFC 6455 §1.3 */
    CHECK(strcmp(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") == 0);
    CHECK(strlen(out) == 28);
}

static void test_rfc_request(void)
{
    /* RFC 6455 §1.2 (with sip added to the subprotocols) */
    const char *head = "GET /chat HTTP/1.1\r\n"
                       "Host: server.example.com\r\n"
                       "Upgrade: websocket\r\n"
                       "Connection: Upgrade\r\n"
                       "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                       "Origin: http://example.com\r\n"
                       "Sec-WebSocket-Protocol: chat, superchat\r\n"
                       "Sec-WebSocket-Version: 13\r\n"
                       "\r\n";
    size_t n = strlen(head);
    struct guard_buf g = guard_alloc(head, n);
    CHECK(ws_http_head_len(g.data, n, WS_HEAD_MAX) == (long)n);
    struct ws_http_request r;
    const char *why = "unset";
    CHECK(ws_http_parse(g.data, n, &r, &why) == 0);
    CHECK(why == NULL);
    CHECK_STR(r.method, "GET");
    CHECK_STR(r.target, "/chat");
    CHECK_STR(r.version, "HTTP/1.1");
    CHECK_STR(r.host, "server.example.com");
    CHECK_STR(r.origin, "http://example.com");
    CHECK_STR(r.key, "dGhlIHNhbXBsZSBub25jZQ==");
    CHECK_STR(r.protocols, "chat, superchat");
    CHECK_STR(r.ws_version, "13");
    CHECK_STR(r.upgrade, "websocket");
    CHECK_STR(r.connection, "Upgrade");
    CHECK(r.nhdrs == 7);
    CHECK_STR(r.hdrs[0].name, "Host");
    CHECK_STR(r.hdrs[6].value, "13");
    CHECK(ws_has_sip_protocol(&r) == 0);
    struct sip_str h = ws_http_header(&r, "ORIGIN");
    CHECK_STR(h, "http://example.com");
    h = ws_http_header(&r, "X-Missing");
    CHECK(h.s == NULL && h.len == 0);

    static const char want[] = "HTTP/1.1 101 Switching Protocols\r\n"
                               "Upgrade: websocket\r\n"
                               "Connection: Upgrade\r\n"
                               "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                               "Sec-WebSocket-Protocol: sip\r\n"
                               "\r\n";
    char out[256];
    long len = ws_http_accept(&r, out, sizeof(out));
    CHECK(len == (long)sizeof(want) - 1 && memcmp(out, want, sizeof(want) - 1) == 0);
    CHECK(ws_http_accept(&r, out, sizeof(want) - 1) == (long)sizeof(want) - 1); /* exact fit */
    CHECK(ws_http_accept(&r, out, sizeof(want) - 2) == -1);
    guard_free(&g);
}

static void test_sip_protocol(void)
{
    /* RFC 7118 §4.1: the sip subprotocol, among others, on one or several lines */
    const char *heads[] = {
        RL H_HOST H_UPG H_CONN H_KEY H_VER "Sec-WebSocket-Protocol: sip\r\n\r\n",
        RL H_HOST H_UPG H_CONN H_KEY H_VER "Sec-WebSocket-Protocol: chat , SIP\r\n\r\n",
        RL H_HOST H_UPG H_CONN H_KEY H_VER "Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol: sip\r\n\r\n",
        RL H_HOST H_UPG H_CONN H_KEY H_VER "Sec-WebSocket-Protocol: sips, sip2\r\n\r\n",
        RL H_HOST H_UPG H_CONN H_KEY H_VER "\r\n",
    };
    const int want[] = { 1, 1, 1, 0, 0 };
    for (size_t i = 0; i < sizeof(heads) / sizeof(heads[0]); i++) {
        struct ws_http_request r;
        const char *why;
        CHECK(ws_http_parse(heads[i], strlen(heads[i]), &r, &why) == 0);
        CHECK_MSG(ws_has_sip_protocol(&r) == want[i], "head %zu", i);
    }
}

static void test_head_len(void)
{
    const char *head = RL H_HOST "\r\n";
    size_t n = strlen(head);
    struct guard_buf g = guard_alloc(head, n);
    CHECK(ws_http_head_len(g.data, n, 8192) == (long)n);
    int prefixes_ok = 1; /* every prefix: more bytes needed */
    for (size_t k = 0; k < n; k++) {
        struct guard_buf p = guard_alloc(head, k);
        if (ws_http_head_len(p.data, k, 8192) != 0)
            prefixes_ok = 0;
        guard_free(&p);
    }
    CHECK(prefixes_ok);
    CHECK(ws_http_head_len(g.data, n, n) == (long)n);  /* exactly at the limit */
    CHECK(ws_http_head_len(g.data, n, n - 1) == -1);   /* one byte over */
    guard_free(&g);

    /* bytes after the head (a first frame) are not part of it */
    const char *more = RL H_HOST "\r\n\x81\x85";
    CHECK(ws_http_head_len(more, strlen(more), 8192) == (long)n);
    /* bare LF line ends, and the empty lines a client may send first (RFC 7230 §3.5) */
    const char *lf = "GET / HTTP/1.1\nHost: a\n\n";
    CHECK(ws_http_head_len(lf, strlen(lf), 8192) == (long)strlen(lf));
    const char *lead = "\r\n" RL H_HOST "\r\n";
    CHECK(ws_http_head_len(lead, strlen(lead), 8192) == (long)strlen(lead));
    CHECK(ws_http_head_len("\r\n", 2, 8192) == 0);
    CHECK(ws_http_head_len("\r\n\r\n", 4, 8192) == 0);
    /* no end within max */
    char big[WS_HEAD_MAX + 16];
    memset(big, 'a', sizeof(big));
    CHECK(ws_http_head_len(big, sizeof(big), WS_HEAD_MAX) == -1);
    CHECK(ws_http_head_len(big, WS_HEAD_MAX - 1, WS_HEAD_MAX) == 0);
}

static void test_handshake_accepts(void)
{
    STATUS(0, RL H_HOST H_UPG H_CONN H_KEY H_VER "\r\n");
    STATUS(0, RL H_HOST H_UPG H_CONN H_KEY H_VER H_PROTO "\r\n");
    STATUS(0, "GET /ws?x=1 HTTP/1.1\r\n" H_HOST H_UPG H_CONN H_KEY H_VER "\r\n");
    /* names in any case, values trimmed, tokens in lists in any case */
    STATUS(0, RL "HOST: a\r\nUPGRADE:   WebSocket  \r\nconnection:\tkeep-alive, UPGRADE\r\n"
              "sec-websocket-key:dGhlIHNhbXBsZSBub25jZQ==\r\nSEC-WEBSOCKET-VERSION: 13 \r\n\r\n");
    STATUS(0, RL H_HOST "Upgrade: h2c, websocket\r\n" H_CONN H_KEY H_VER "\r\n");
    STATUS(0, RL H_HOST H_UPG "Connection: keep-alive\r\nConnection: Upgrade\r\n" H_KEY H_VER "\r\n");
    STATUS(0, RL H_HOST H_UPG "Connection: ,, upgrade,\r\n" H_KEY H_VER "\r\n");
    STATUS(0, "GET / HTTP/1.2\r\n" H_HOST H_UPG H_CONN H_KEY H_VER "\r\n"); /* a higher 1.x */
    STATUS(0, RL "Host: 192.0.2.1:8080\r\n" H_UPG H_CONN H_KEY H_VER "\r\n");
    STATUS(0, RL "Host: [2001:db8::1]:443\r\n" H_UPG H_CONN H_KEY H_VER "\r\n");
    STATUS(0, RL "Host: [::1]\r\n" H_UPG H_CONN H_KEY H_VER "\r\n");
    STATUS(0, RL "Host: ex%41mple.com\r\n" H_UPG H_CONN H_KEY H_VER "\r\n");
    STATUS(0, "GET / HTTP/1.1\n" "Host: a\n" "Upgrade: websocket\n" "Connection: Upgrade\n"
              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\n" "Sec-WebSocket-Version: 13\n\n");
    STATUS(0, "\r\n" RL H_HOST H_UPG H_CONN H_KEY H_VER "\r\n");
    STATUS(0, RL H_HOST H_UPG H_CONN "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n" H_VER "\r\n");
    STATUS(0, RL H_HOST H_UPG H_CONN H_KEY H_VER "X-Obs: caf\xc3\xa9\r\n\r\n"); /* obs-text */
}

static void test_handshake_refusals(void)
{
    /* 400: the request line */
    STATUS(400, "GET  / HTTP/1.1\r\n" H_HOST H_UPG H_CONN H_KEY H_VER "\r\n");
    STATUS(400, "GET /\r\n" H_HOST H_UPG H_CONN H_KEY H_VER "\r\n");
    STATUS(400, "GET / HTTP/1.1 \r\n" H_HOST H_UPG H_CONN H_KEY H_VER "\r\n");
    STATUS(400, "GET / HTTX/1.1\r\n" H_HOST H_UPG H_CONN H_KEY H_VER "\r\n");
    STATUS(400, "GET / HTTP/11\r\n" H_HOST H_UPG H_CONN H_KEY H_VER "\r\n");
    STATUS(400, "GET / HTTP/1.1x\r\n" H_HOST H_UPG H_CONN H_KEY H_VER "\r\n");
    STATUS(400, "G(T / HTTP/1.1\r\n" H_HOST H_UPG H_CONN H_KEY H_VER "\r\n");
    STATUS(400, "GET /\x7f HTTP/1.1\r\n" H_HOST H_UPG H_CONN H_KEY H_VER "\r\n");
    STATUS(400, "GET / HTTP/1.1\r\r\n" H_HOST H_UPG H_CONN H_KEY H_VER "\r\n");
    STATUS(400, "");
    STATUS(400, "\r\n");
    /* 400: header lines */
    STATUS(400, RL H_HOST "Bad Name: x\r\n" H_UPG H_CONN H_KEY H_VER "\r\n");
    STATUS(400, RL "Host : a\r\n" H_UPG H_CONN H_KEY H_VER "\r\n");
    STATUS(400, RL H_HOST " folded\r\n" H_UPG H_CONN H_KEY H_VER "\r\n");
    STATUS(400, RL H_HOST "NoColon\r\n" H_UPG H_CONN H_KEY H_VER "\r\n");
    STATUS(400, RL H_HOST ": novalue\r\n" H_UPG H_CONN H_KEY H_VER "\r\n");
    STATUS(400, RL H_HOST "X: a\rb\r\n" H_UPG H_CONN H_KEY H_VER "\r\n");
    STATUS(400, RL H_HOST "X: a\x01" "b\r\n" H_UPG H_CONN H_KEY H_VER "\r\n");
    /* 400: the head's end */
    STATUS(400, RL H_HOST H_UPG H_CONN H_KEY H_VER);
    STATUS(400, RL H_HOST H_UPG H_CONN H_KEY H_VER "\r\nX");
    /* 405, 505 */
    STATUS(405, "POST / HTTP/1.1\r\n" H_HOST H_UPG H_CONN H_KEY H_VER "\r\n");
    STATUS(405, "get / HTTP/1.1\r\n" H_HOST H_UPG H_CONN H_KEY H_VER "\r\n");
    STATUS(505, "GET / HTTP/1.0\r\n" H_HOST H_UPG H_CONN H_KEY H_VER "\r\n");
    STATUS(505, "GET / HTTP/2.0\r\n" H_HOST H_UPG H_CONN H_KEY H_VER "\r\n");
    STATUS(505, "GET / HTTP/0.9\r\n" H_HOST H_UPG H_CONN H_KEY H_VER "\r\n");
    /* 400: Host */
    STATUS(400, RL H_UPG H_CONN H_KEY H_VER "\r\n");
    STATUS(400, RL "Host:\r\n" H_UPG H_CONN H_KEY H_VER "\r\n");
    STATUS(400, RL "Host: a b\r\n" H_UPG H_CONN H_KEY H_VER "\r\n");
    STATUS(400, RL "Host: a:123456\r\n" H_UPG H_CONN H_KEY H_VER "\r\n");
    STATUS(400, RL "Host: a:80x\r\n" H_UPG H_CONN H_KEY H_VER "\r\n");
    STATUS(400, RL "Host: [::1\r\n" H_UPG H_CONN H_KEY H_VER "\r\n");
    STATUS(400, RL "Host: []\r\n" H_UPG H_CONN H_KEY H_VER "\r\n");
    STATUS(400, RL "Host: :80\r\n" H_UPG H_CONN H_KEY H_VER "\r\n");
    STATUS(400, RL "Host: a/b\r\n" H_UPG H_CONN H_KEY H_VER "\r\n");
    STATUS(400, RL "Host: a%4\r\n" H_UPG H_CONN H_KEY H_VER "\r\n");
    STATUS(400, RL H_HOST "Host: b\r\n" H_UPG H_CONN H_KEY H_VER "\r\n");
    /* 400: Upgrade, Connection */
    STATUS(400, RL H_HOST H_CONN H_KEY H_VER "\r\n");
    STATUS(400, RL H_HOST "Upgrade: websocketx\r\n" H_CONN H_KEY H_VER "\r\n");
    STATUS(400, RL H_HOST "Upgrade: web socket\r\n" H_CONN H_KEY H_VER "\r\n");
    STATUS(400, RL H_HOST H_UPG H_KEY H_VER "\r\n");
    STATUS(400, RL H_HOST H_UPG "Connection: upgraded\r\n" H_KEY H_VER "\r\n");
    STATUS(400, RL H_HOST H_UPG "Connection: keep-alive\r\n" H_KEY H_VER "\r\n");
    /* 426: the version */
    STATUS(426, RL H_HOST H_UPG H_CONN H_KEY "\r\n");
    STATUS(426, RL H_HOST H_UPG H_CONN H_KEY "Sec-WebSocket-Version: 8\r\n\r\n");
    STATUS(426, RL H_HOST H_UPG H_CONN H_KEY "Sec-WebSocket-Version: 13, 8\r\n\r\n");
    STATUS(426, RL H_HOST H_UPG H_CONN "Sec-WebSocket-Version: 7\r\n\r\n"); /* before the key */
    STATUS(400, RL H_HOST H_UPG H_CONN H_KEY H_VER H_VER "\r\n");
    /* 400: the key */
    STATUS(400, RL H_HOST H_UPG H_CONN H_VER "\r\n");
    STATUS(400, RL H_HOST H_UPG H_CONN "Sec-WebSocket-Key:\r\n" H_VER "\r\n");
    STATUS(400, RL H_HOST H_UPG H_CONN "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ\r\n" H_VER "\r\n");
    STATUS(400, RL H_HOST H_UPG H_CONN "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZXh4eHg=\r\n" H_VER "\r\n");
    STATUS(400, RL H_HOST H_UPG H_CONN "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25j\r\n" H_VER "\r\n");
    STATUS(400, RL H_HOST H_UPG H_CONN "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub2!jZQ==\r\n" H_VER "\r\n");
    STATUS(400, RL H_HOST H_UPG H_CONN "Sec-WebSocket-Key: dGhlIHNhbXBs ZSBub25jZQ==\r\n" H_VER "\r\n");
    STATUS(400, RL H_HOST H_UPG H_CONN "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=A\r\n" H_VER "\r\n");
    STATUS(400, RL H_HOST H_UPG H_CONN H_KEY H_KEY H_VER "\r\n");
    STATUS(400, RL H_HOST "Origin: a\r\nOrigin: b\r\n" H_UPG H_CONN H_KEY H_VER "\r\n");

    const char *why = NULL;
    CHECK(http_status("POST / HTTP/1.1\r\n\r\n", &why) == 405 && why && *why);
}

/* 431: more header lines than WS_MAX_HEADERS, or a head above WS_HEAD_MAX; equal passes. */
static void test_handshake_limits(void)
{
    static char head[WS_HEAD_MAX + 64];
    const char *base = RL H_HOST H_UPG H_CONN H_KEY H_VER;
    for (int extra = WS_MAX_HEADERS - 5; extra <= WS_MAX_HEADERS - 4; extra++) {
        size_t n = (size_t)snprintf(head, sizeof(head), "%s", base);
        for (int i = 0; i < extra; i++)
            n += (size_t)snprintf(head + n, sizeof(head) - n, "X-%d: v\r\n", i);
        snprintf(head + n, sizeof(head) - n, "\r\n");
        int want = 5 + extra <= WS_MAX_HEADERS ? 0 : 431;
        const char *why;
        int st = http_status(head, &why);
        CHECK_MSG(st == want, "%d headers: %d (%s)", 5 + extra, st, why ? why : "-");
    }
    struct ws_http_request r;
    const char *why;
    CHECK(ws_http_parse(head, strlen(head), &r, &why) == 431);
    CHECK(r.nhdrs == WS_MAX_HEADERS);

    /* a head of exactly WS_HEAD_MAX bytes passes, one more is 431 */
    for (size_t total = WS_HEAD_MAX; total <= WS_HEAD_MAX + 1; total++) {
        size_t n = (size_t)snprintf(head, sizeof(head), "%sX-Pad: ", base);
        size_t pad = total - n - 4; /* the pad's CRLF and the empty line */
        memset(head + n, 'p', pad);
        memcpy(head + n + pad, "\r\n\r\n", 5);
        CHECK(strlen(head) == total);
        CHECK(http_status(head, NULL) == (total <= WS_HEAD_MAX ? 0 : 431));
        CHECK(ws_http_head_len(head, total, WS_HEAD_MAX) == (total <= WS_HEAD_MAX ? (long)total : -1));
    }
}

static void test_reject(void)
{
    char out[512];
    static const char want426[] = "HTTP/1.1 426 Upgrade Required\r\n"
                                  "Sec-WebSocket-Version: 13\r\n"
                                  "Connection: close\r\n"
                                  "Content-Length: 0\r\n"
                                  "\r\n";
    long n = ws_http_reject(426, NULL, NULL, out, sizeof(out));
    CHECK(n == (long)sizeof(want426) - 1 && memcmp(out, want426, (size_t)n) == 0);
    CHECK(ws_http_reject(426, NULL, NULL, out, sizeof(want426) - 1) == (long)sizeof(want426) - 1);
    CHECK(ws_http_reject(426, NULL, NULL, out, sizeof(want426) - 2) == -1);

    static const char want403[] = "HTTP/1.1 403 Origin not allowed\r\n"
                                  "Connection: close\r\n"
                                  "Content-Length: 0\r\n"
                                  "X-A: 1\r\nX-B: 2\r\n"
                                  "\r\n";
    n = ws_http_reject(403, "Origin not allowed", "X-A: 1\r\nX-B: 2\r\n", out, sizeof(out));
    CHECK(n == (long)sizeof(want403) - 1 && memcmp(out, want403, (size_t)n) == 0);

    n = ws_http_reject(405, NULL, NULL, out, sizeof(out));
    CHECK(n > 0 && memcmp(out, "HTTP/1.1 405 Method Not Allowed\r\n", 33) == 0);
    CHECK(n > 0 && memmem(out, (size_t)n, "\r\nAllow: GET\r\n", 14) != NULL);
    n = ws_http_reject(400, NULL, NULL, out, sizeof(out));
    CHECK(n > 0 && memcmp(out, "HTTP/1.1 400 Bad Request\r\n", 26) == 0);
    CHECK(n > 0 && memmem(out, (size_t)n, "Sec-WebSocket-Version", 21) == NULL);
    n = ws_http_reject(431, NULL, NULL, out, sizeof(out));
    CHECK(n > 0 && memcmp(out, "HTTP/1.1 431 Request Header Fields Too Large\r\n", 46) == 0);
    n = ws_http_reject(505, NULL, NULL, out, sizeof(out));
    CHECK(n > 0 && memcmp(out, "HTTP/1.1 505 HTTP Version Not Supported\r\n", 41) == 0);
    /* a reason from Lua cannot split the answer */
    n = ws_http_reject(403, "no\r\nSet-Cookie: x", NULL, out, sizeof(out));
    CHECK(n > 0 && memcmp(out, "HTTP/1.1 403 no  Set-Cookie: x\r\n", 32) == 0);
    CHECK(ws_http_reject(42, NULL, NULL, out, sizeof(out)) == -1);
    CHECK(ws_http_reject(1000, NULL, NULL, out, sizeof(out)) == -1);
    CHECK(ws_http_reject(400, NULL, NULL, out, 0) == -1);
}

/* ----- framing ----- */

/* RFC 6455 §5.7, the examples a server may receive (masked) */
static void test_rfc_examples(void)
{
    struct ws_parser p;
    struct ws_result r;
    ws_parser_init(&p, 65536, 65536);

    /* A single-frame masked text message */
    static const uint8_t hello[] = { 0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58 };
    CHECK(feed(&p, hello, sizeof(hello), &r) == sizeof(hello));
    CHECK(r.ev == WS_EV_MESSAGE && r.opcode == WS_OP_TEXT && data_is(&r, "Hello", 5));
    CHECK(r.data == (const uint8_t *)fed.data + 6); /* unmasked in place, no copy */

    /* A fragmented unmasked text message, "Hel" + "lo", here masked as a client must */
    uint8_t f[64];
    size_t n1 = cframe(f, 0x01, 1, 0, "Hel", 3);
    CHECK(feed(&p, f, n1, &r) == n1 && r.ev == WS_EV_NONE);
    size_t n2 = cframe(f, 0x80, 1, 0, "lo", 2);
    CHECK(feed(&p, f, n2, &r) == n2);
    CHECK(r.ev == WS_EV_MESSAGE && r.opcode == WS_OP_TEXT && data_is(&r, "Hello", 5));

    /* Unmasked Ping, masked here; the masked Pong as given */
    size_t n3 = cframe(f, 0x89, 1, 0, "Hello", 5);
    CHECK(feed(&p, f, n3, &r) == n3 && r.ev == WS_EV_PING && data_is(&r, "Hello", 5));
    static const uint8_t pong[] = { 0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58 };
    CHECK(feed(&p, pong, sizeof(pong), &r) == sizeof(pong) && r.ev == WS_EV_PONG && data_is(&r, "Hello", 5));

    /* 256 bytes binary in one frame (16-bit length) */
    uint8_t payload[256], big[300];
    for (int i = 0; i < 256; i++)
        payload[i] = (uint8_t)i;
    size_t n4 = cframe(big, 0x82, 1, 0, payload, 256);
    CHECK(n4 == 2 + 2 + 4 + 256 && big[1] == (0x80 | 126) && big[2] == 0x01 && big[3] == 0x00);
    CHECK(feed(&p, big, n4, &r) == n4);
    CHECK(r.ev == WS_EV_MESSAGE && r.opcode == WS_OP_BINARY && data_is(&r, payload, 256));

    /* The unmasked "Hello" is refused by a server (§5.1) */
    static const uint8_t unmasked[] = { 0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f };
    CHECK(feed(&p, unmasked, sizeof(unmasked), &r) == 0);
    CHECK(r.ev == WS_EV_ERROR && r.code == WS_CLOSE_PROTOCOL && r.why);
    ws_parser_free(&p);
}

/* 64 KiB binary in one frame: the 64-bit length form, and one more byte. */
static void test_64bit_length(void)
{
    size_t n = 65537;
    uint8_t *payload = malloc(n), *f = malloc(n + 14);
    for (size_t i = 0; i < n; i++)
        payload[i] = (uint8_t)(i * 7);
    struct ws_parser p;
    struct ws_result r;
    ws_parser_init(&p, 1 << 20, 1 << 20);
    /* §5.7: 0x82 0x7F 0x0000000000010000 */
    size_t fl = cframe(f, 0x82, 1, 0, payload, 65536);
    static const uint8_t hdr[] = { 0x82, 0xff, 0, 0, 0, 0, 0, 1, 0, 0 };
    CHECK(fl == 14 + 65536 && memcmp(f, hdr, sizeof(hdr)) == 0);
    CHECK(feed(&p, f, fl, &r) == fl && r.ev == WS_EV_MESSAGE && data_is(&r, payload, 65536));
    fl = cframe(f, 0x82, 1, 0, payload, n);
    CHECK(feed(&p, f, fl - 1, &r) == 0 && r.ev == WS_EV_NONE); /* one byte short */
    CHECK(feed(&p, f, fl, &r) == fl && r.ev == WS_EV_MESSAGE && data_is(&r, payload, n));
    ws_parser_free(&p);
    free(payload);
    free(f);
}

/* Every prefix of a frame is incomplete: nothing consumed, nothing unmasked. */
static void test_incomplete(void)
{
    uint8_t f[300], copy[300], pay[200];
    memset(pay, 'x', sizeof(pay));
    const size_t lens[] = { 0, 5, 125, 200 };
    for (size_t k = 0; k < 4; k++) {
        size_t n = cframe(f, 0x81, 1, 0, pay, lens[k]);
        int ok = 1;
        for (size_t cut = 0; cut < n; cut++) {
            struct ws_parser p;
            struct ws_result r;
            ws_parser_init(&p, 1000, 1000);
            memcpy(copy, f, n);
            struct guard_buf g = guard_alloc(copy, cut);
            size_t used = ws_parse(&p, (uint8_t *)g.data, cut, &r);
            if (used != 0 || r.ev != WS_EV_NONE || memcmp(g.data, f, cut) != 0)
                ok = 0;
            guard_free(&g);
            ws_parser_free(&p);
        }
        CHECK_MSG(ok, "prefixes of a %zu-byte payload", lens[k]);
    }
}

/* A stream fed one byte at a time: a fragmented masked text message with a ping between its
 * fragments and a 2-byte character split across them, then a close. */
static void test_byte_by_byte(void)
{
    uint8_t stream[256], buf[256];
    size_t n = 0;
    n += cframe(stream + n, 0x01, 1, 0, "Hel", 3);
    n += cframe(stream + n, 0x89, 1, 0, "pi", 2);
    n += cframe(stream + n, 0x00, 1, 0, "lo \xc3", 4);
    n += cframe(stream + n, 0x8a, 1, 0, "", 0);
    n += cframe(stream + n, 0x80, 1, 0, "\xa9!", 2);
    n += cframe(stream + n, 0x88, 1, 0, "\x03\xe8" "bye", 5);

    struct ws_parser p;
    ws_parser_init(&p, 100, 100);
    size_t have = 0, fed_bytes = 0;
    int nnone = 0, nping = 0, npong = 0, nmsg = 0, nclose = 0, nerr = 0, calls_over_1 = 0;
    while (fed_bytes < n) {
        buf[have++] = stream[fed_bytes++];
        for (;;) {
            struct ws_result r;
            size_t used = ws_parse(&p, buf, have, &r);
            if (used > have)
                calls_over_1++;
            if (r.ev == WS_EV_ERROR) {
                nerr++;
                break;
            }
            if (r.ev == WS_EV_PING && data_is(&r, "pi", 2))
                nping++;
            if (r.ev == WS_EV_PONG && r.len == 0)
                npong++;
            if (r.ev == WS_EV_MESSAGE && r.opcode == WS_OP_TEXT && data_is(&r, "Hello \xc3\xa9!", 9))
                nmsg++;
            if (r.ev == WS_EV_CLOSE && r.code == 1000 && data_is(&r, "bye", 3))
                nclose++;
            if (r.ev == WS_EV_NONE && used)
                nnone++;
            if (!used)
                break;
            memmove(buf, buf + used, have - used);
            have -= used;
        }
    }
    CHECK(nerr == 0 && calls_over_1 == 0);
    CHECK(nnone == 2);
    CHECK(nping == 1 && npong == 1);
    CHECK(nmsg == 1);
    CHECK(nclose == 1);
    CHECK(have == 0);
    ws_parser_free(&p);
}

/* Several frames in one buffer: one per call. */
static void test_consecutive(void)
{
    uint8_t b[64];
    size_t n1 = cframe(b, 0x81, 1, 0, "one", 3);
    size_t n2 = cframe(b + n1, 0x82, 1, 0, "two", 3);
    struct ws_parser p;
    struct ws_result r;
    ws_parser_init(&p, 100, 100);
    struct guard_buf g = guard_alloc(b, n1 + n2);
    uint8_t *d = (uint8_t *)g.data;
    CHECK(ws_parse(&p, d, n1 + n2, &r) == n1 && r.ev == WS_EV_MESSAGE && data_is(&r, "one", 3));
    CHECK(ws_parse(&p, d + n1, n2, &r) == n2 && r.ev == WS_EV_MESSAGE && r.opcode == WS_OP_BINARY &&
          data_is(&r, "two", 3));
    CHECK(ws_parse(&p, d + n1 + n2, 0, &r) == 0 && r.ev == WS_EV_NONE);
    guard_free(&g);
    ws_parser_free(&p);
}

static void test_empty_messages(void)
{
    uint8_t f[32];
    struct ws_parser p;
    struct ws_result r;
    ws_parser_init(&p, 100, 100);
    size_t n = cframe(f, 0x81, 1, 0, "", 0);
    CHECK(feed(&p, f, n, &r) == 6 && r.ev == WS_EV_MESSAGE && r.len == 0 && r.data != NULL);
    n = cframe(f, 0x02, 1, 0, "", 0);
    CHECK(feed(&p, f, n, &r) == 6 && r.ev == WS_EV_NONE);
    n = cframe(f, 0x00, 1, 0, "", 0);
    CHECK(feed(&p, f, n, &r) == 6 && r.ev == WS_EV_NONE);
    n = cframe(f, 0x80, 1, 0, "", 0);
    CHECK(feed(&p, f, n, &r) == 6 && r.ev == WS_EV_MESSAGE && r.opcode == WS_OP_BINARY && r.len == 0 &&
          r.data != NULL);
    n = cframe(f, 0x89, 1, 0, "", 0);
    CHECK(feed(&p, f, n, &r) == 6 && r.ev == WS_EV_PING && r.len == 0);
    ws_parser_free(&p);
}

/* 1002: each protocol rule, on the header alone where the header decides. */
static void test_protocol_errors(void)
{
    uint8_t f[512], big[200];
    memset(big, 'a', sizeof(big));
    size_t n;

    n = cframe(f, 0x81, 0, 0, "Hi", 2);
    CHECK(one_frame_error(f, n, 100, 100) == 1002); /* unmasked */
    CHECK(one_frame_error(f, 2, 100, 100) == 1002); /* decided on two bytes */
    for (uint8_t rsv = 0x10; rsv <= 0x40; rsv <<= 1) {
        n = cframe(f, (uint8_t)(0x81 | rsv), 1, 0, "Hi", 2);
        CHECK_MSG(one_frame_error(f, n, 100, 100) == 1002, "rsv %#x", rsv);
    }
    for (uint8_t op = 3; op <= 0xf; op++) {
        if (op >= 8 && op <= 0xa)
            continue;
        n = cframe(f, (uint8_t)(0x80 | op), 1, 0, "Hi", 2);
        CHECK_MSG(one_frame_error(f, n, 100, 100) == 1002, "opcode %#x", op);
    }
    /* control frames: 125 is the most, and never fragmented */
    n = cframe(f, 0x89, 1, 0, big, 125);
    CHECK(one_frame_error(f, n, 1000, 1000) == 0);
    n = cframe(f, 0x89, 1, 0, big, 126);
    CHECK(one_frame_error(f, n, 1000, 1000) == 1002);
    CHECK(one_frame_error(f, 2, 1000, 1000) == 1002); /* decided before the length */
    n = cframe(f, 0x8a, 1, 16, big, 5); /* a 16-bit length on a control frame */
    CHECK(one_frame_error(f, n, 1000, 1000) == 1002);
    n = cframe(f, 0x09, 1, 0, "p", 1);
    CHECK(one_frame_error(f, n, 1000, 1000) == 1002);
    n = cframe(f, 0x08, 1, 0, "\x03\xe8", 2);
    CHECK(one_frame_error(f, n, 1000, 1000) == 1002);
    n = cframe(f, 0x0a, 1, 0, "", 0);
    CHECK(one_frame_error(f, n, 1000, 1000) == 1002);
    /* continuation with nothing started */
    n = cframe(f, 0x80, 1, 0, "x", 1);
    CHECK(one_frame_error(f, n, 100, 100) == 1002);
    n = cframe(f, 0x00, 1, 0, "x", 1);
    CHECK(one_frame_error(f, n, 100, 100) == 1002);
    /* non-minimal and top-bit lengths */
    n = cframe(f, 0x82, 1, 16, big, 125);
    CHECK(one_frame_error(f, n, 1000, 1000) == 1002);
    n = cframe(f, 0x82, 1, 16, big, 126);
    CHECK(one_frame_error(f, n, 1000, 1000) == 0);
    n = cframe(f, 0x82, 1, 64, big, 0);
    CHECK(one_frame_error(f, n, 1000, 1000) == 1002);
    n = cframe(f, 0x82, 1, 64, big, 200);
    CHECK(one_frame_error(f, n, 1000, 1000) == 1002);
    static const uint8_t len65535[] = { 0x82, 0xff, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
    CHECK(one_frame_error(len65535, sizeof(len65535), 1 << 20, 1 << 20) == 1002);
    static const uint8_t topbit[] = { 0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 1 };
    CHECK(one_frame_error(topbit, sizeof(topbit), SIZE_MAX, SIZE_MAX) == 1002);
    static const uint8_t huge[] = { 0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
    CHECK(one_frame_error(huge, sizeof(huge), 1 << 20, 1 << 20) == 1009);
    CHECK(one_frame_error(huge, 9, 1 << 20, 1 << 20) == 0); /* length not all there yet */

    /* a new data message while a fragmented one is pending */
    for (int op = 1; op <= 2; op++) {
        struct ws_parser p;
        struct ws_result r;
        ws_parser_init(&p, 100, 100);
        n = cframe(f, 0x01, 1, 0, "a", 1);
        CHECK(feed(&p, f, n, &r) == n && r.ev == WS_EV_NONE);
        n = cframe(f, (uint8_t)(0x80 | op), 1, 0, "b", 1);
        CHECK(feed(&p, f, n, &r) == 0 && r.ev == WS_EV_ERROR && r.code == 1002);
        ws_parser_free(&p);
    }
}

/* After an ERROR, every call answers it again and consumes nothing. */
static void test_error_sticks(void)
{
    uint8_t f[64];
    struct ws_parser p;
    struct ws_result r;
    ws_parser_init(&p, 100, 100);
    size_t n = cframe(f, 0x81, 1, 0, "\xff", 1);
    CHECK(feed(&p, f, n, &r) == 0 && r.ev == WS_EV_ERROR && r.code == 1007);
    const char *why = r.why;
    n = cframe(f, 0x81, 1, 0, "ok", 2);
    CHECK(feed(&p, f, n, &r) == 0 && r.ev == WS_EV_ERROR && r.code == 1007 && r.why == why);
    CHECK(feed(&p, f, 0, &r) == 0 && r.ev == WS_EV_ERROR && r.code == 1007);
    ws_parser_free(&p);
}

static void test_close_frames(void)
{
    uint8_t f[256];
    struct ws_parser p;
    struct ws_result r;
    size_t n;

    ws_parser_init(&p, 1000, 1000);
    n = cframe(f, 0x88, 1, 0, "", 0);
    CHECK(feed(&p, f, n, &r) == n && r.ev == WS_EV_CLOSE && r.code == WS_CLOSE_NO_STATUS && r.len == 0);
    n = cframe(f, 0x88, 1, 0, "\x03\xe9going", 7);
    CHECK(feed(&p, f, n, &r) == n && r.ev == WS_EV_CLOSE && r.code == 1001 && data_is(&r, "going", 5));
    n = cframe(f, 0x88, 1, 0, "\x03\xe8" "d\xc3\xa9j\xc3\xa0", 8);
    CHECK(feed(&p, f, n, &r) == n && r.ev == WS_EV_CLOSE && r.code == 1000 && r.len == 6);
    ws_parser_free(&p);

    /* a 1-byte payload */
    n = cframe(f, 0x88, 1, 0, "\x03", 1);
    CHECK(one_frame_error(f, n, 1000, 1000) == 1002);
    /* a reason that is not UTF-8 */
    n = cframe(f, 0x88, 1, 0, "\x03\xe8\xc0\xaf", 4);
    CHECK(one_frame_error(f, n, 1000, 1000) == 1007);
    n = cframe(f, 0x88, 1, 0, "\x03\xe8" "ab\xe2\x82", 6);
    CHECK(one_frame_error(f, n, 1000, 1000) == 1007);
    /* 125 bytes: code and a 123-byte reason */
    uint8_t pay[125];
    pay[0] = 0x0f;
    pay[1] = 0xa0; /* 4000 */
    memset(pay + 2, 'r', 123);
    n = cframe(f, 0x88, 1, 0, pay, 125);
    ws_parser_init(&p, 1000, 1000);
    CHECK(feed(&p, f, n, &r) == n && r.ev == WS_EV_CLOSE && r.code == 4000 && r.len == 123);
    ws_parser_free(&p);

    /* each code: allowed on the wire, or 1002 (RFC 6455 §7.4) */
    static const struct { uint16_t code; int ok; } codes[] = {
        { 0, 0 }, { 999, 0 }, { 1000, 1 }, { 1001, 1 }, { 1002, 1 }, { 1003, 1 }, { 1004, 0 },
        { 1005, 0 }, { 1006, 0 }, { 1007, 1 }, { 1008, 1 }, { 1009, 1 }, { 1010, 1 }, { 1011, 1 },
        { 1012, 1 }, { 1013, 1 }, { 1014, 1 }, { 1015, 0 }, { 1016, 0 }, { 2000, 0 }, { 2999, 0 },
        { 3000, 1 }, { 3999, 1 }, { 4000, 1 }, { 4999, 1 }, { 5000, 0 }, { 65535, 0 },
    };
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        uint8_t c[2] = { (uint8_t)(codes[i].code >> 8), (uint8_t)codes[i].code };
        n = cframe(f, 0x88, 1, 0, c, 2);
        ws_parser_init(&p, 1000, 1000);
        feed(&p, f, n, &r);
        if (codes[i].ok)
            CHECK_MSG(r.ev == WS_EV_CLOSE && r.code == codes[i].code && r.len == 0, "code %u", codes[i].code);
        else
            CHECK_MSG(r.ev == WS_EV_ERROR && r.code == 1002, "code %u", codes[i].code);
        ws_parser_free(&p);
    }
}

/* 1009 at the boundary: equal passes, one more fails, and the check needs only the header. */
static void test_limits(void)
{
    static uint8_t f[1200], pay[1100];
    memset(pay, 'm', sizeof(pay));
    size_t n;

    /* max_frame = 200 */
    n = cframe(f, 0x81, 1, 0, pay, 200);
    CHECK(one_frame_error(f, n, 200, 1000) == 0);
    n = cframe(f, 0x81, 1, 0, pay, 201);
    CHECK(one_frame_error(f, n, 200, 1000) == 1009);
    CHECK(one_frame_error(f, 4, 200, 1000) == 1009); /* header only, no mask, no payload */
    n = cframe(f, 0x89, 1, 0, pay, 11); /* control frames too */
    CHECK(one_frame_error(f, n, 10, 1000) == 1009);
    n = cframe(f, 0x89, 1, 0, pay, 10);
    CHECK(one_frame_error(f, n, 10, 1000) == 0);

    /* max_message = 300 for a single frame */
    n = cframe(f, 0x82, 1, 0, pay, 300);
    CHECK(one_frame_error(f, n, 1000, 300) == 0);
    n = cframe(f, 0x82, 1, 0, pay, 301);
    CHECK(one_frame_error(f, n, 1000, 300) == 1009);
    CHECK(one_frame_error(f, 4, 1000, 300) == 1009);
    n = cframe(f, 0x88, 1, 0, "\x03\xe8" "abcdefgh", 10); /* control frames are not messages */
    CHECK(one_frame_error(f, n, 1000, 5) == 0);

    /* max_message = 300 across fragments of max_frame 200 */
    for (size_t second = 100; second <= 101; second++) {
        struct ws_parser p;
        struct ws_result r;
        ws_parser_init(&p, 200, 300);
        n = cframe(f, 0x01, 1, 0, pay, 200);
        CHECK(feed(&p, f, n, &r) == n && r.ev == WS_EV_NONE);
        n = cframe(f, 0x89, 1, 0, pay, 50); /* a ping between does not count */
        CHECK(feed(&p, f, n, &r) == n && r.ev == WS_EV_PING);
        n = cframe(f, 0x80, 1, 0, pay, second);
        if (second == 100) {
            CHECK(feed(&p, f, n, &r) == n && r.ev == WS_EV_MESSAGE && r.len == 300);
            CHECK(p.msg_cap <= 300);
        } else {
            CHECK(feed(&p, f, 4, &r) == 0 && r.ev == WS_EV_ERROR && r.code == 1009);
        }
        ws_parser_free(&p);
    }
    /* many small fragments up to exactly max_message */
    {
        struct ws_parser p;
        struct ws_result r;
        ws_parser_init(&p, 1000, 1000);
        int ok = 1;
        for (int i = 0; i < 10; i++) {
            n = cframe(f, i == 0 ? 0x02 : 0x00, 1, 0, pay, 100);
            if (feed(&p, f, n, &r) != n || r.ev != WS_EV_NONE)
                ok = 0;
        }
        CHECK(ok && p.msg_len == 1000 && p.msg_cap == 1000);
        n = cframe(f, 0x80, 1, 0, pay, 0);
        CHECK(feed(&p, f, n, &r) == n && r.ev == WS_EV_MESSAGE && r.len == 1000);
        /* the next message starts afresh */
        n = cframe(f, 0x02, 1, 0, pay, 1000);
        CHECK(feed(&p, f, n, &r) == n && r.ev == WS_EV_NONE);
        n = cframe(f, 0x80, 1, 0, pay, 1);
        CHECK(feed(&p, f, n, &r) == 0 && r.ev == WS_EV_ERROR && r.code == 1009);
        ws_parser_free(&p);
    }
}

/* 1007 on text: whole frames, fragments as they arrive, sequences split across fragments. */
static void test_text_utf8(void)
{
    uint8_t f[64];
    struct ws_parser p;
    struct ws_result r;
    size_t n;

    n = cframe(f, 0x81, 1, 0, "caf\xc3\xa9", 5);
    CHECK(one_frame_error(f, n, 100, 100) == 0);
    n = cframe(f, 0x81, 1, 0, "caf\xc3", 4);
    CHECK(one_frame_error(f, n, 100, 100) == 1007);
    n = cframe(f, 0x81, 1, 0, "\xed\xa0\x80", 3);
    CHECK(one_frame_error(f, n, 100, 100) == 1007);
    n = cframe(f, 0x82, 1, 0, "\xff\xfe", 2); /* binary is not checked */
    CHECK(one_frame_error(f, n, 100, 100) == 0);

    /* "€" (E2 82 AC) split 1+2 and 2+1 across fragments: valid */
    for (int split = 1; split <= 2; split++) {
        ws_parser_init(&p, 100, 100);
        n = cframe(f, 0x01, 1, 0, "\xe2\x82\xac", (size_t)split);
        CHECK(feed(&p, f, n, &r) == n && r.ev == WS_EV_NONE);
        n = cframe(f, 0x80, 1, 0, "\xe2\x82\xac" + split, (size_t)(3 - split));
        CHECK(feed(&p, f, n, &r) == n && r.ev == WS_EV_MESSAGE && data_is(&r, "\xe2\x82\xac", 3));
        ws_parser_free(&p);
    }
    /* U+1F600 split over four fragments */
    ws_parser_init(&p, 100, 100);
    static const char emoji[] = "\xf0\x9f\x98\x80";
    int ok = 1;
    for (int i = 0; i < 4; i++) {
        n = cframe(f, (uint8_t)((i == 0 ? 0x01 : 0x00) | (i == 3 ? 0x80 : 0)), 1, 0, emoji + i, 1);
        if (feed(&p, f, n, &r) != n || r.ev != (i == 3 ? WS_EV_MESSAGE : WS_EV_NONE))
            ok = 0;
    }
    CHECK(ok && data_is(&r, emoji, 4));
    ws_parser_free(&p);

    /* invalid across the boundary: E2 then 'A' */
    ws_parser_init(&p, 100, 100);
    n = cframe(f, 0x01, 1, 0, "x\xe2", 2);
    CHECK(feed(&p, f, n, &r) == n && r.ev == WS_EV_NONE);
    n = cframe(f, 0x80, 1, 0, "A", 1);
    CHECK(feed(&p, f, n, &r) == 0 && r.ev == WS_EV_ERROR && r.code == 1007);
    ws_parser_free(&p);

    /* fail fast: an invalid byte in a non-final fragment */
    ws_parser_init(&p, 100, 100);
    n = cframe(f, 0x01, 1, 0, "ok\xc0\x80", 4);
    CHECK(feed(&p, f, n, &r) == 0 && r.ev == WS_EV_ERROR && r.code == 1007);
    ws_parser_free(&p);

    /* the message ends inside a sequence: the last fragment is valid so far, yet truncated */
    ws_parser_init(&p, 100, 100);
    n = cframe(f, 0x01, 1, 0, "ab", 2);
    CHECK(feed(&p, f, n, &r) == n && r.ev == WS_EV_NONE);
    n = cframe(f, 0x80, 1, 0, "\xf0\x9f\x98", 3);
    CHECK(feed(&p, f, n, &r) == 0 && r.ev == WS_EV_ERROR && r.code == 1007);
    ws_parser_free(&p);

    /* a ping between fragments does not disturb a pending sequence */
    ws_parser_init(&p, 100, 100);
    n = cframe(f, 0x01, 1, 0, "\xc3", 1);
    CHECK(feed(&p, f, n, &r) == n && r.ev == WS_EV_NONE);
    n = cframe(f, 0x89, 1, 0, "\xff", 1);
    CHECK(feed(&p, f, n, &r) == n && r.ev == WS_EV_PING);
    n = cframe(f, 0x80, 1, 0, "\xa9", 1);
    CHECK(feed(&p, f, n, &r) == n && r.ev == WS_EV_MESSAGE && data_is(&r, "\xc3\xa9", 2));
    ws_parser_free(&p);

    /* binary fragments are never checked */
    ws_parser_init(&p, 100, 100);
    n = cframe(f, 0x02, 1, 0, "\xc3", 1);
    CHECK(feed(&p, f, n, &r) == n && r.ev == WS_EV_NONE);
    n = cframe(f, 0x80, 1, 0, "\xff", 1);
    CHECK(feed(&p, f, n, &r) == n && r.ev == WS_EV_MESSAGE && r.opcode == WS_OP_BINARY && data_is(&r, "\xc3\xff", 2));
    ws_parser_free(&p);
}

/* A fragmented message left pending is freed by ws_parser_free (ASan checks the leak). */
static void test_free_pending(void)
{
    uint8_t f[64];
    struct ws_parser p;
    struct ws_result r;
    ws_parser_init(&p, 100, 100);
    size_t n = cframe(f, 0x01, 1, 0, "pending", 7);
    CHECK(feed(&p, f, n, &r) == n && r.ev == WS_EV_NONE && p.msg != NULL);
    ws_parser_free(&p);
    CHECK(p.msg == NULL);
}

/* ----- UTF-8 ----- */

static void test_utf8(void)
{
#define V(s) ws_utf8_valid((const uint8_t *)(s), sizeof(s) - 1)
    CHECK(V("") == 1);
    CHECK(V("plain ASCII, and more than eight bytes of it") == 1);
    CHECK(V("\xc2\x80") == 1);             /* U+0080 */
    CHECK(V("\xdf\xbf") == 1);             /* U+07FF */
    CHECK(V("\xe0\xa0\x80") == 1);         /* U+0800 */
    CHECK(V("\xe2\x82\xac") == 1);         /* € */
    CHECK(V("\xed\x9f\xbf") == 1);         /* U+D7FF, before the surrogates */
    CHECK(V("\xee\x80\x80") == 1);         /* U+E000, after them */
    CHECK(V("\xef\xbf\xbf") == 1);         /* U+FFFF */
    CHECK(V("\xf0\x90\x80\x80") == 1);     /* U+10000 */
    CHECK(V("\xf4\x8f\xbf\xbf") == 1);     /* U+10FFFF */
    CHECK(V("\x00") == 1);                 /* NUL is a character */
    /* overlongs */
    CHECK(V("\xc0\x80") == 0);
    CHECK(V("\xc1\xbf") == 0);
    CHECK(V("\xe0\x80\x80") == 0);
    CHECK(V("\xe0\x9f\xbf") == 0);
    CHECK(V("\xf0\x80\x80\x80") == 0);
    CHECK(V("\xf0\x8f\xbf\xbf") == 0);
    /* surrogates */
    CHECK(V("\xed\xa0\x80") == 0);         /* U+D800 */
    CHECK(V("\xed\xbf\xbf") == 0);         /* U+DFFF */
    CHECK(V("\xed\xa0\xbd\xed\xb8\x80") == 0); /* a CESU-8 pair */
    /* above U+10FFFF */
    CHECK(V("\xf4\x90\x80\x80") == 0);
    CHECK(V("\xf5\x80\x80\x80") == 0);
    CHECK(V("\xf8\x88\x80\x80\x80") == 0);
    CHECK(V("\xfe") == 0);
    CHECK(V("\xff") == 0);
    /* stray continuations, truncations */
    CHECK(V("\x80") == 0);
    CHECK(V("a\xbf" "b") == 0);
    CHECK(V("\xc3") == 0);
    CHECK(V("\xe2\x82") == 0);
    CHECK(V("\xf0\x9f\x98") == 0);
    CHECK(V("\xe2\x82" "A") == 0);
    CHECK(V("\xc3\xc3\xa9") == 0);
    /* around the 8-byte fast path: one bad byte at each offset of a 24-byte ASCII run */
    int ok = 1;
    for (int at = 0; at < 24; at++) {
        uint8_t b[24];
        memset(b, 'a', sizeof(b));
        b[at] = 0x80;
        if (ws_utf8_valid(b, sizeof(b)))
            ok = 0;
        b[at] = 0x7f;
        if (!ws_utf8_valid(b, sizeof(b)))
            ok = 0;
    }
    CHECK(ok);
    CHECK(V("aaaaaaaaaaaaaaa\xc3\xa9") == 1);
    CHECK(V("aaaaaaaa\xc3") == 0);
#undef V
}

/* ----- what we write ----- */

static void test_frame_header(void)
{
    uint8_t h[10];
    CHECK(ws_frame_header(h, WS_OP_TEXT, 0) == 2 && h[0] == 0x81 && h[1] == 0);
    CHECK(ws_frame_header(h, WS_OP_TEXT, 125) == 2 && h[1] == 125);
    CHECK(ws_frame_header(h, WS_OP_BINARY, 126) == 4 && h[0] == 0x82 && h[1] == 126 && h[2] == 0 && h[3] == 126);
    CHECK(ws_frame_header(h, WS_OP_TEXT, 65535) == 4 && h[2] == 0xff && h[3] == 0xff);
    static const uint8_t want[] = { 0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0 };
    CHECK(ws_frame_header(h, WS_OP_TEXT, 65536) == 10 && memcmp(h, want, 10) == 0);
    CHECK(ws_frame_header(h, WS_OP_PONG, 5) == 2 && h[0] == 0x8a && h[1] == 5);
    CHECK(ws_frame_header(h, WS_OP_CLOSE, 2) == 2 && h[0] == 0x88);
}

/* Our close frame, masked as a client would, parses back to the same code and reason. */
static void roundtrip_close(const uint8_t *frame, size_t n, uint16_t code, struct ws_result *out, int *ok)
{
    uint8_t f[200];
    size_t m = cframe(f, frame[0], 1, 0, frame + 2, n - 2);
    struct ws_parser p;
    ws_parser_init(&p, 200, 200);
    *ok = feed(&p, f, m, out) == m && out->ev == WS_EV_CLOSE && out->code == code;
    ws_parser_free(&p);
}

static void test_close_frame(void)
{
    uint8_t out[127];
    struct ws_result r;
    int ok;
    CHECK(ws_close_frame(out, 0, "ignored") == 2 && out[0] == 0x88 && out[1] == 0);
    CHECK(ws_close_frame(out, 1000, NULL) == 4 && out[1] == 2 && out[2] == 0x03 && out[3] == 0xe8);
    CHECK(ws_close_frame(out, 1000, "") == 4);
    size_t n = ws_close_frame(out, 1001, "bye");
    CHECK(n == 7 && out[1] == 5 && memcmp(out + 4, "bye", 3) == 0);
    roundtrip_close(out, n, 1001, &r, &ok);
    CHECK(ok && data_is(&r, "bye", 3));

    char longr[300];
    memset(longr, 'x', sizeof(longr) - 1);
    longr[sizeof(longr) - 1] = 0;
    n = ws_close_frame(out, 1009, longr);
    CHECK(n == 127 && out[1] == 125);
    roundtrip_close(out, n, 1009, &r, &ok);
    CHECK(ok && r.len == 123);

    /* 123 bytes exactly, 2-byte characters: 61 fit (122 bytes), the 62nd would cross */
    char e[200] = "";
    for (int i = 0; i < 62; i++)
        strcat(e, "\xc3\xa9");
    n = ws_close_frame(out, 1000, e);
    CHECK(n == 4 + 122 && out[1] == 124 && ws_utf8_valid(out + 4, 122));
    roundtrip_close(out, n, 1000, &r, &ok);
    CHECK(ok);
    /* 3-byte characters: 41 fill the 123 bytes exactly */
    char eu[200] = "";
    for (int i = 0; i < 42; i++)
        strcat(eu, "\xe2\x82\xac");
    n = ws_close_frame(out, 1000, eu);
    CHECK(n == 127 && ws_utf8_valid(out + 4, 123));
    /* 4-byte characters: 30 fit (120 bytes) */
    char em[200] = "";
    for (int i = 0; i < 31; i++)
        strcat(em, "\xf0\x9f\x98\x80");
    n = ws_close_frame(out, 1000, em);
    CHECK(n == 4 + 120);
    /* an invalid byte: the reason stops before it */
    n = ws_close_frame(out, 1011, "oops\xff tail");
    CHECK(n == 8 && memcmp(out + 4, "oops", 4) == 0);
    n = ws_close_frame(out, 1011, "trunc\xe2\x82");
    CHECK(n == 9 && memcmp(out + 4, "trunc", 5) == 0);
    roundtrip_close(out, n, 1011, &r, &ok);
    CHECK(ok);
}

int main(void)
{
    test_accept_key();
    test_rfc_request();
    test_sip_protocol();
    test_head_len();
    test_handshake_accepts();
    test_handshake_refusals();
    test_handshake_limits();
    test_reject();
    test_rfc_examples();
    test_64bit_length();
    test_incomplete();
    test_byte_by_byte();
    test_consecutive();
    test_empty_messages();
    test_protocol_errors();
    test_error_sticks();
    test_close_frames();
    test_limits();
    test_text_utf8();
    test_free_pending();
    test_utf8();
    test_frame_header();
    test_close_frame();
    if (fed_live)
        guard_free(&fed);
    TEST_DONE();
}
