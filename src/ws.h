/* WebSocket for SIP (RFC 6455, RFC 7118), server side: the HTTP opening handshake and the
 * framing, as pure functions over byte buffers. src/conn.c does the I/O and calls these;
 * nothing here touches a socket, the loop or Lua, so t/unit/test_ws.c and
 * t/fuzz/fuzz_ws.c drive it directly. */
#ifndef LUNASIP_WS_H
#define LUNASIP_WS_H

#include <stddef.h>
#include <stdint.h>

#include "sip_grammar.h" /* struct sip_str */

/* ----- the opening handshake (RFC 6455 §4.2) ----- */

#define WS_MAX_HEADERS 64
#define WS_HEAD_MAX 8192        /* a larger HTTP head is refused (431) */
/* More header lines than WS_MAX_HEADERS are refused with 431 too (RFC 6585 §5). */

struct ws_http_header {
    struct sip_str name, value; /* value trimmed of surrounding whitespace */
};

/* A parsed upgrade request; every sip_str points into the buffer given to ws_http_parse. */
struct ws_http_request {
    struct sip_str method, target, version;        /* "GET", "/path?q", "HTTP/1.1" */
    struct sip_str host, origin, key, protocols, ws_version, upgrade, connection;
    struct ws_http_header hdrs[WS_MAX_HEADERS];    /* every header, in order */
    size_t nhdrs;
};

/* The length of the HTTP head in buf (through the empty line) when complete; 0 when more
 * bytes are needed; -1 when no complete head fits in max bytes (answer 431 and close). */
long ws_http_head_len(const char *buf, size_t len, size_t max);

/* Parses and validates an upgrade request head (exactly the head_len bytes). Returns 0 when
 * it is a valid RFC 6455 opening handshake, else the HTTP status to answer with *why a short
 * text for the log:
 *   400 malformed request line or header, missing/invalid Host, Upgrade: websocket,
 *       Connection: upgrade (a token in a list), Sec-WebSocket-Key (base64 of 16 bytes);
 *   405 a method other than GET;
 *   426 Sec-WebSocket-Version missing or other than 13 (the answer carries
 *       Sec-WebSocket-Version: 13);
 *   431 a head above WS_HEAD_MAX bytes or with more than WS_MAX_HEADERS header lines;
 *   505 an HTTP version other than HTTP/1.1 (or higher 1.x).
 * The sip subprotocol is not checked here (see ws_has_sip_protocol). */
int ws_http_parse(const char *buf, size_t len, struct ws_http_request *r, const char **why);

/* 1 when Sec-WebSocket-Protocol lists "sip" (RFC 7118 §4.1; tokens compared
 * case-insensitively), else 0. */
int ws_has_sip_protocol(const struct ws_http_request *r);

/* The first value of header name (case-insensitive) or a sip_str with s NULL. */
struct sip_str ws_http_header(const struct ws_http_request *r, const char *name);

/* Sec-WebSocket-Accept for a key (RFC 6455 §4.2.2: base64(SHA-1(key + GUID))), written as
 * 28 characters and a NUL. */
void ws_accept_key(const char *key, size_t klen, char out[29]);

/* The 101 Switching Protocols answer, with Sec-WebSocket-Accept and
 * Sec-WebSocket-Protocol: sip. Returns its length, or -1 when cap is too small. */
long ws_http_accept(const struct ws_http_request *r, char *out, size_t cap);

/* An error answer: status line (reason NULL = the standard phrase; control characters in
 * reason become spaces), Sec-WebSocket-Version: 13 for 426, Allow: GET for 405,
 * Connection: close, Content-Length: 0 and, when extra is not NULL, those header lines
 * ("Name: value\r\n" each) before the empty line. Returns its length, or -1 when cap is too
 * small or code is not 3 digits. */
long ws_http_reject(int code, const char *reason, const char *extra, char *out, size_t cap);

/* ----- framing (RFC 6455 §5) ----- */

enum ws_opcode {
    WS_OP_CONT = 0x0,
    WS_OP_TEXT = 0x1,
    WS_OP_BINARY = 0x2,
    WS_OP_CLOSE = 0x8,
    WS_OP_PING = 0x9,
    WS_OP_PONG = 0xA,
};

/* Close codes (RFC 6455 §7.4.1) lunasip sends. */
#define WS_CLOSE_NORMAL 1000
#define WS_CLOSE_GOING_AWAY 1001
#define WS_CLOSE_PROTOCOL 1002
#define WS_CLOSE_BAD_DATA 1007      /* text that is not UTF-8 */
#define WS_CLOSE_POLICY 1008
#define WS_CLOSE_TOO_BIG 1009
#define WS_CLOSE_ERROR 1011
#define WS_CLOSE_NO_STATUS 1005     /* reported for a close frame without a code; never sent */
#define WS_CLOSE_ABNORMAL 1006      /* reported when the connection ended without a close frame; never sent */

enum ws_event {
    WS_EV_NONE = 0,   /* consumed bytes (a whole non-final fragment, or nothing) */
    WS_EV_MESSAGE,    /* a complete data message: opcode TEXT or BINARY, data/len */
    WS_EV_PING,       /* data/len: the payload, to echo in a pong */
    WS_EV_PONG,
    WS_EV_CLOSE,      /* the peer's close: code (1005 when the frame had none), reason */
    WS_EV_ERROR,      /* protocol violation: close with code (1002, 1007, 1009; 1011 when
                       * memory runs out), why */
};

struct ws_result {
    enum ws_event ev;
    enum ws_opcode opcode;
    const uint8_t *data;   /* borrowed: points into buf (a one-frame message, control
                            * frames) or into the parser (a reassembled message); valid
                            * until the next ws_parse or ws_parser_free, and while the
                            * consumed bytes of buf stay where they are */
    size_t len;
    uint16_t code;
    const char *why;       /* ERROR: static text for the log */
};

/* Reassembly state of one connection. Server side: every frame must be masked. */
struct ws_parser {
    size_t max_frame;      /* websocket.max_frame_size: a larger frame payload → 1009 */
    size_t max_message;    /* websocket.max_message_size: a larger message → 1009 */
    /* private */
    uint8_t *msg;          /* the message being reassembled (malloc'd, grows to max_message) */
    size_t msg_len, msg_cap;
    enum ws_opcode msg_op; /* TEXT/BINARY while fragments are pending, CONT when none */
    uint32_t utf8_state;   /* incremental UTF-8 validation of a text message */
    int failed;            /* after an ERROR every call returns the same ERROR */
    struct ws_result err;
};

void ws_parser_init(struct ws_parser *p, size_t max_frame, size_t max_message);
void ws_parser_free(struct ws_parser *p);

/* Parses at most one frame from buf[0..len) and returns the bytes consumed; unmasks the
 * payload in place (buf is the connection's input buffer). When a frame is incomplete it
 * consumes nothing and sets WS_EV_NONE: call again with more bytes. The checks, each an
 * ERROR with its close code:
 *   1002 an unmasked frame; RSV bits set; an unknown opcode; a control frame with a payload
 *        above 125 or not final; a continuation with no message started; a new TEXT/BINARY
 *        while a fragmented message is pending; a 64-bit length with its top bit set, or a
 *        length not in its minimal form; a close payload of 1 byte; a close code that may
 *        not be sent on the wire (below 1000, 1004-1006, 1015, 1016-2999, 5000 and up);
 *   1007 a text message (checked as fragments arrive, and at its end) or a close reason
 *        that is not valid UTF-8;
 *   1009 a frame payload above max_frame, a message above max_message (checked on the
 *        header, before the payload is read).
 * Control frames may arrive between fragments. An ERROR consumes nothing. */
size_t ws_parse(struct ws_parser *p, uint8_t *buf, size_t len, struct ws_result *r);

/* The header of an unmasked server frame (FIN set) carrying len bytes: writes 2, 4 or 10
 * bytes into out and returns how many. */
size_t ws_frame_header(uint8_t out[10], enum ws_opcode op, size_t len);

/* A complete close frame: code (0 = no payload at all) and an optional reason, cut so the
 * payload stays within 125 bytes and valid UTF-8. Returns its length (at most 127). */
size_t ws_close_frame(uint8_t out[127], uint16_t code, const char *reason);

/* 1 when buf is valid UTF-8 (RFC 3629: no overlongs, no surrogates, at most U+10FFFF). */
int ws_utf8_valid(const uint8_t *buf, size_t len);

#endif
