/* libFuzzer driver for src/ws.c. The input is read as an HTTP upgrade head (ws_http_head_len,
 * ws_http_parse, and the answers built from what parsed), as UTF-8 (checked against a
 * plain decoder, and as a close reason), and, after a first byte that picks the limits and
 * a chunk size, as a stream of client frames: parsed whole, then fed again in chunks into a
 * second parser, which must report the same events (framing does not depend on how the
 * bytes arrive). ws_parse unmasks in place, so each pass works on its own copy. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ws.h"

#define EV_MAX 4096

static void check(int cond)
{
    if (!cond)
        abort();
}

static int in(const char *s, uint32_t n, const char *buf, size_t len)
{
    return s >= buf && s + n <= buf + len;
}

static void fuzz_http(const uint8_t *data, size_t size)
{
    char *buf = malloc(size ? size : 1);
    memcpy(buf, data, size);
    long hl = ws_http_head_len(buf, size, WS_HEAD_MAX);
    check(hl >= -1 && hl <= (long)size && hl <= WS_HEAD_MAX);
    size_t plen = hl > 0 ? (size_t)hl : size; /* a head, or the raw bytes as one */
    struct ws_http_request r;
    const char *why = NULL;
    int st = ws_http_parse(buf, plen, &r, &why);
    check(st == 0 || st == 400 || st == 405 || st == 426 || st == 431 || st == 505);
    check((st == 0) == (why == NULL));
    check(r.nhdrs <= WS_MAX_HEADERS);
    for (size_t i = 0; i < r.nhdrs; i++)
        check(in(r.hdrs[i].name.s, r.hdrs[i].name.len, buf, plen) && in(r.hdrs[i].value.s, r.hdrs[i].value.len, buf, plen));
    char out[512];
    if (st == 0) {
        check(r.key.len == 24 && r.host.s && r.method.len == 3);
        struct sip_str h = ws_http_header(&r, "host");
        check(h.s == r.host.s && h.len == r.host.len);
        (void)ws_has_sip_protocol(&r);
        long n = ws_http_accept(&r, out, sizeof(out));
        check(n > 0 && (size_t)n < sizeof(out) && memcmp(out + n - 4, "\r\n\r\n", 4) == 0);
        check(ws_http_accept(&r, out, (size_t)n - 1) == -1);
    } else {
        long n = ws_http_reject(st, NULL, NULL, out, sizeof(out));
        check(n > 0 && memcmp(out + n - 4, "\r\n\r\n", 4) == 0);
        /* a reason taken from the input never splits the answer */
        char reason[64];
        size_t rl = size < sizeof(reason) - 1 ? size : sizeof(reason) - 1;
        memcpy(reason, data, rl);
        reason[rl] = 0;
        n = ws_http_reject(st, reason, NULL, out, sizeof(out));
        check(n > 0);
        char *eol = memchr(out, '\n', (size_t)n);
        check(eol && eol[-1] == '\r' && !memchr(out, '\r', (size_t)(eol - 1 - out)));
    }
    free(buf);
}

/* RFC 3629 the plain way: decode each sequence, then refuse overlongs, surrogates and
 * values above U+10FFFF. */
static int utf8_reference(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        uint8_t b = s[i];
        size_t len;
        uint32_t cp, min;
        if (b < 0x80) {
            i++;
            continue;
        } else if ((b & 0xe0) == 0xc0) {
            len = 2, cp = b & 0x1f, min = 0x80;
        } else if ((b & 0xf0) == 0xe0) {
            len = 3, cp = b & 0x0f, min = 0x800;
        } else if ((b & 0xf8) == 0xf0) {
            len = 4, cp = b & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        if (n - i < len)
            return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += len;
    }
    return 1;
}

static void fuzz_utf8(const uint8_t *data, size_t size)
{
    check(ws_utf8_valid(data, size) == utf8_reference(data, size));
    char reason[200];
    size_t rl = size < sizeof(reason) - 1 ? size : sizeof(reason) - 1;
    memcpy(reason, data, rl);
    reason[rl] = 0;
    uint8_t frame[127];
    size_t n = ws_close_frame(frame, 1000, reason);
    check(n >= 4 && n <= 127 && frame[0] == 0x88 && frame[1] == n - 2);
    check(ws_utf8_valid(frame + 4, n - 4) && memcmp(frame + 4, reason, n - 4) == 0);
    uint8_t h[10];
    size_t hn = ws_frame_header(h, WS_OP_BINARY, size * 331);
    check(hn == (size * 331 < 126 ? 2 : size * 331 <= 0xffff ? 4 : 10));
}

struct event {
    enum ws_event ev;
    enum ws_opcode opcode;
    uint16_t code;
    size_t len, consumed_total;
    uint32_t hash;
};

static uint32_t fnv(const uint8_t *d, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ d[i]) * 16777619u;
    return h;
}

/* Checks one result's invariants and records it. */
static void note(struct event *evs, size_t *nev, const struct ws_parser *p, const struct ws_result *r, size_t total)
{
    switch (r->ev) {
    case WS_EV_MESSAGE:
        check(r->opcode == WS_OP_TEXT || r->opcode == WS_OP_BINARY);
        check(r->len <= p->max_message && (r->len == 0 || r->data));
        if (r->opcode == WS_OP_TEXT)
            check(utf8_reference(r->data, r->len));
        break;
    case WS_EV_PING:
    case WS_EV_PONG:
        check(r->len <= 125 && r->len <= p->max_frame);
        break;
    case WS_EV_CLOSE:
        check(r->len <= 123 && utf8_reference(r->data, r->len));
        check(r->code == 1005 || (r->code >= 1000 && r->code < 5000));
        break;
    case WS_EV_ERROR:
        check(r->code == 1002 || r->code == 1007 || r->code == 1009 || r->code == 1011);
        check(r->why != NULL);
        break;
    default:
        break;
    }
    if (*nev < EV_MAX) {
        struct event *e = &evs[(*nev)++];
        memset(e, 0, sizeof(*e)); /* padding too: events are compared with memcmp */
        e->ev = r->ev;
        e->opcode = r->opcode;
        e->code = r->code;
        e->len = r->len;
        e->consumed_total = total;
        e->hash = r->ev == WS_EV_ERROR ? 0 : fnv(r->data, r->len);
    }
}

static struct event evs1[EV_MAX], evs2[EV_MAX];

static void fuzz_frames(const uint8_t *data, size_t size)
{
    if (size < 1)
        return;
    static const size_t limits[4][2] = { { 125, 125 }, { 200, 300 }, { 4096, 16384 }, { 65536, 65536 } };
    size_t max_frame = limits[data[0] & 3][0], max_message = limits[data[0] & 3][1];
    size_t chunk = (size_t)(data[0] >> 2) + 1;
    const uint8_t *in_ = data + 1;
    size_t len = size - 1;

    /* pass 1: everything at once */
    uint8_t *buf = malloc(len ? len : 1);
    memcpy(buf, in_, len);
    struct ws_parser p;
    struct ws_result r;
    size_t nev1 = 0, off = 0;
    ws_parser_init(&p, max_frame, max_message);
    for (;;) {
        size_t n = ws_parse(&p, buf + off, len - off, &r);
        check(n <= len - off);
        if (r.ev == WS_EV_ERROR) {
            check(n == 0);
            note(evs1, &nev1, &p, &r, off);
            struct ws_result again;
            check(ws_parse(&p, buf + off, len - off, &again) == 0);
            check(again.ev == WS_EV_ERROR && again.code == r.code && again.why == r.why);
            break;
        }
        if (n == 0) {
            check(r.ev == WS_EV_NONE);
            break;
        }
        off += n;
        if (r.ev != WS_EV_NONE)
            note(evs1, &nev1, &p, &r, off);
    }
    ws_parser_free(&p);
    free(buf);

    /* pass 2: in chunks, the consumed bytes dropped as a connection would */
    uint8_t *acc = malloc(len ? len : 1);
    size_t have = 0, fed = 0, total = 0, nev2 = 0;
    int failed = 0;
    ws_parser_init(&p, max_frame, max_message);
    while (fed < len && !failed) {
        size_t c = len - fed < chunk ? len - fed : chunk;
        memcpy(acc + have, in_ + fed, c);
        have += c;
        fed += c;
        for (;;) {
            size_t n = ws_parse(&p, acc, have, &r);
            check(n <= have);
            if (r.ev == WS_EV_ERROR) {
                note(evs2, &nev2, &p, &r, total);
                failed = 1;
                break;
            }
            if (n == 0)
                break;
            total += n;
            if (r.ev != WS_EV_NONE)
                note(evs2, &nev2, &p, &r, total);
            memmove(acc, acc + n, have - n);
            have -= n;
        }
    }
    ws_parser_free(&p);
    free(acc);

    check(nev1 == nev2);
    for (size_t i = 0; i < nev1; i++)
        check(memcmp(&evs1[i], &evs2[i], sizeof(evs1[i])) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_http(data, size);
    fuzz_utf8(data, size);
    fuzz_frames(data, size);
    return 0;
}
