/* The WebSocket side of stream connections (ws:, wss:): the opening handshake with its origin
 * check (RFC 6455 §4.2.1, RFC 7118 §4.1), frames in and out, pings and the closing handshake
 * (RFC 6455 §5, §5.5, §7; RFC 7118 §5). Sockets, buffers, timers: src/conn.c. */
#include "conn_int.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "stats.h"
#include "ws.h"

/* ----- the upgrade ----- */

void enter_ws_upgrade(struct conn *c)
{
    c->state = CONN_WS_UPGRADE;
    c->priv->t_state = now(); /* header_timeout: the upgrade request must come in time */
    io_update(c);
    timer_update(c);
}

static int origin_allowed(struct sip_str o)
{
    if (!o.s)
        return 0;
    for (size_t i = 0; i < lim.norigins; i++)
        if (strlen(lim.origins[i]) == o.len && memcmp(lim.origins[i], o.s, o.len) == 0)
            return 1;
    return 0;
}

static void ws_reject(struct conn *c, int code, const char *reason, const char *why)
{
    char out[512];
    stats.ws_rejected++;
    LOG_NOTICE("%s: WebSocket upgrade refused with %d: %s", c->priv->name, code, why);
    set_why(c, "WebSocket upgrade refused");
    long n = ws_http_reject(code, reason, NULL, out, sizeof(out));
    if (n < 0)
        n = ws_http_reject(code, NULL, NULL, out, sizeof(out));
    if (n > 0 && out_add(c, out, (size_t)n, NULL, 0, 0) == -EPIPE)
        return;
    begin_close(c, 0, 0, NULL);
}

/* The opening handshake (RFC 6455 §4.2.1, RFC 7118 §4.1). Returns the head length once
 * accepted (the bytes after it are frames), 0 when more bytes are needed, -1 when the
 * connection is leaving (refused, closed by the hook). The sip subprotocol missing is
 * refused with 400: the request is well-formed HTTP but unusable for SIP (RFC 7118 §4.1
 * says the server must not complete the handshake); 426 would tell the client to change
 * its WebSocket version, which is not the problem. */
long process_upgrade(struct conn *c, char *buf, size_t len)
{
    struct conn_priv *p = c->priv;
    long hl = ws_http_head_len(buf, len, WS_HEAD_MAX);
    if (hl == 0)
        return 0;
    if (hl < 0) {
        ws_reject(c, 431, NULL, "request head larger than 8192 bytes");
        return -1;
    }
    struct ws_http_request req;
    const char *why = "malformed request";
    int code = ws_http_parse(buf, (size_t)hl, &req, &why);
    if (code) {
        ws_reject(c, code, NULL, why ? why : "malformed request");
        return -1;
    }
    if (!ws_has_sip_protocol(&req)) {
        ws_reject(c, 400, NULL, "the sip WebSocket subprotocol is required (RFC 7118)");
        return -1;
    }
    if (lim.origins_set && !origin_allowed(req.origin)) {
        char w[200];
        snprintf(w, sizeof(w), "origin '%.*s' not in websocket.allowed_origins", req.origin.s ? (int)req.origin.len : 0,
                 req.origin.s ? req.origin.s : "");
        ws_reject(c, 403, NULL, w);
        return -1;
    }
    if (hooks.on_ws_upgrade) {
        const char *reason = NULL;
        conn_ref(c);
        int st = hooks.on_ws_upgrade(c, &req, &reason);
        int gone = c->state != CONN_WS_UPGRADE;
        conn_unref(c);
        if (gone)
            return -1;
        if (st != 0) {
            if (st < 400 || st > 599) {
                st = 500;
                reason = NULL;
            }
            ws_reject(c, st, reason, "refused by WebSocketEvents.on_connection");
            return -1;
        }
    }
    char out[512];
    long n = ws_http_accept(&req, out, sizeof(out));
    if (n < 0) {
        ws_reject(c, 500, NULL, "cannot build the 101 answer");
        return -1;
    }
    if (out_add(c, out, (size_t)n, NULL, 0, 0) != 0)
        return -1;
    stats.ws_upgrades++;
    ws_parser_init(&p->wsp, lim.ws_max_frame, lim.ws_max_msg);
    p->wsp_init = 1;
    LOG_DEBUG("%s: WebSocket upgraded", p->name);
    set_open(c);
    return c->state == CONN_OPEN ? hl : -1;
}

/* ----- output: frames ----- */

static void ws_control(struct conn *c, enum ws_opcode op, const void *data, size_t len)
{
    uint8_t hdr[10];
    size_t hl = ws_frame_header(hdr, op, len);
    out_add(c, hdr, hl, data, len, 0);
}

/* One SIP message as one text frame (RFC 7118 §5), for conn_send. Borrows buf. Returns
 * out_add's result. */
int send_ws_text(struct conn *c, const char *buf, size_t len)
{
    uint8_t hdr[10];
    size_t hl = ws_frame_header(hdr, WS_OP_TEXT, len);
    return out_add(c, hdr, hl, buf, len, 1);
}

/* websocket.keepalive_interval of silence: a ping (RFC 6455 §5.5.2), whose pong must come
 * within websocket.pong_timeout (on_timer closes otherwise). */
void send_ws_ping(struct conn *c)
{
    struct conn_priv *p = c->priv;
    stats.ws_pings_sent++;
    p->last_ping = now();
    p->pong_wait = 1;
    p->pong_deadline = p->last_ping + lim.ws_pong;
    ws_control(c, WS_OP_PING, "lunasip", 7);
}

/* The close frame of begin_close (RFC 6455 §5.5.1): code 1000 when 0, reason may be NULL.
 * Returns out_add's result. */
int send_ws_close(struct conn *c, uint16_t code, const char *reason)
{
    uint8_t f[127];
    size_t n = ws_close_frame(f, code ? code : WS_CLOSE_NORMAL, reason);
    return out_add(c, f, n, NULL, 0, 0);
}

/* ----- input: frames ----- */

/* Frames after the upgrade (RFC 6455 §5): one SIP message per WebSocket message (RFC 7118
 * §5), pings answered, the peer's close echoed (§5.5.1), protocol errors closed with
 * their code (§7.4.1). Returns bytes consumed. */
size_t process_ws(struct conn *c, char *buf, size_t len)
{
    struct conn_priv *p = c->priv;
    size_t pos = 0;
    while (c->state == CONN_OPEN && pos < len) {
        struct ws_result r;
        size_t n = ws_parse(&p->wsp, (uint8_t *)buf + pos, len - pos, &r);
        pos += n;
        switch (r.ev) {
        case WS_EV_NONE:
            if (n == 0)
                return pos;
            break;
        case WS_EV_MESSAGE:
            deliver(c, (const char *)r.data, r.len);
            break;
        case WS_EV_PING:
            conn_touch(c);
            ws_control(c, WS_OP_PONG, r.data, r.len);
            break;
        case WS_EV_PONG:
            p->pong_wait = 0;
            break;
        case WS_EV_CLOSE: {
            uint16_t code = (r.code == 0 || r.code == WS_CLOSE_NO_STATUS) ? WS_CLOSE_NORMAL : r.code;
            p->client_closed = 1;
            p->ws_code = r.code ? r.code : WS_CLOSE_NO_STATUS;
            set_why(c, "closed by the peer");
            LOG_DEBUG("%s: WebSocket close %u from the peer", p->name, (unsigned)r.code);
            begin_close(c, 1, code, NULL);
            return len;
        }
        case WS_EV_ERROR:
            stats.ws_protocol_errors++;
            if (r.code == WS_CLOSE_TOO_BIG)
                stats.conn_oversized++;
            LOG_NOTICE("closing %s: WebSocket %u: %s", p->name, (unsigned)r.code, r.why ? r.why : "protocol error");
            set_why(c, r.why ? r.why : "WebSocket protocol error");
            begin_close(c, 1, r.code ? r.code : WS_CLOSE_PROTOCOL, NULL);
            return len;
        }
    }
    return pos;
}
