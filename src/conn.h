/* Stream connections: the tcp:, tls:, ws: and wss: listeners of sip.listen, accepted and
 * outgoing connections, their TLS sessions (src/tls.h) and WebSocket framing (src/ws.h),
 * SIP framing by Content-Length (RFC 3261 §18.3), double-CRLF keepalives answered with a
 * single CRLF (RFC 5626 §4.4.1), WebSocket pings, and every limit of SPEC §3.1:
 * max_connections, max_connections_per_ip, header_timeout, connection_idle_timeout,
 * tcp_connect_timeout, tls_handshake_timeout, sip.max_message_size,
 * websocket.max_frame_size/max_message_size. Everything is non-blocking on the loop.
 *
 * The core sees complete SIP messages through conn_hooks and sends through conn_send /
 * conn_connect. A connection has an id that is never reused while the process lives
 * (flow tokens and Lua hold ids, never pointers). */
#ifndef LUNASIP_CONN_H
#define LUNASIP_CONN_H

#include <ev.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "sip_msg.h" /* enum sip_transport */

struct config;
struct config_listen;
struct listener;
struct tls_ctx;
struct ws_http_request;

enum conn_state {
    CONN_CONNECTING = 0, /* outgoing: connect() in progress */
    CONN_TLS,            /* TLS handshake in progress */
    CONN_WS_UPGRADE,     /* ws/wss: waiting for (or judging) the HTTP upgrade */
    CONN_OPEN,           /* SIP flows */
    CONN_CLOSING,        /* flushing output (a WebSocket close, an HTTP error) then closing */
    CONN_CLOSED,         /* gone from the table; the struct lives until its last ref */
};

/* The public part of a connection. Read-only outside src/conn*.c. */
struct conn {
    uint64_t id;                     /* unique for the process's life, never 0 */
    enum sip_transport transport;    /* SIP_TP_TCP, _TLS, _WS or _WSS */
    enum conn_state state;
    int outgoing;                    /* 1: lunasip connected; 0: accepted */
    struct listener *listener;       /* accepted on; for outgoing, the listener of the same
                                      * transport and family (Via sent-by), may be NULL */
    struct sockaddr_storage remote, local;
    socklen_t remote_len, local_len;
    char remote_ip[64], local_ip[64];/* without brackets */
    int remote_port, local_port;
    int lua_ref;                     /* owned by src/lapi: the Lua side of the connection
                                      * (cvars), or 0 when Lua never looked at it */
    uint8_t no_server_tls_cb;        /* outgoing tls: opened by a proxy profile with
                                      * callback_on_server_tls_handshake = false, so
                                      * SipEvents.on_server_tls_handshake is not run */
    void *tls;                       /* struct tls_session * while TLS runs, else NULL */
    /* the rest is private to src/conn*.c */
    struct conn_priv *priv;
};

/* What the core provides. Every hook may be NULL. Hooks run on the loop; a hook may call
 * conn_close on its connection (the struct stays valid until the hook returns): the close
 * only starts there, nothing more is delivered for that connection, and its on_close runs
 * later from the loop. Hooks never nest for one connection: on_close never runs inside
 * conn_close, conn_send or another hook. */
struct conn_hooks {
    /* One complete SIP message (framed by Content-Length on tcp/tls, one WebSocket message
     * on ws/wss), borrowed for the call. */
    void (*on_message)(struct conn *c, const char *buf, size_t len);
    /* ws/wss: a valid upgrade request with the sip subprotocol, from an allowed origin.
     * Returns 0 to accept (101 is sent), or an HTTP status 400..599 to refuse (any other
     * non-zero value refuses with 500), with *reason (static, or kept by the hook's owner
     * until the next call: it is written after the hook returns; NULL = standard phrase).
     * WebSocketEvents.on_connection runs here. */
    int (*on_ws_upgrade)(struct conn *c, const struct ws_http_request *r, const char **reason);
    /* TLS handshake done. server_side 1: we accepted (the peer is a client; its chain may
     * be empty); 0: we connected (the peer is a server). Returns 0 to go on, -1 to close
     * (counted as tls_rejected). The on_*_tls_handshake callbacks run here. */
    int (*on_tls_handshake)(struct conn *c, int server_side);
    /* The connection reached CONN_OPEN (SIP may flow): accepted tcp/tls, ws after the 101,
     * outgoing after connect/handshake. */
    void (*on_open)(struct conn *c);
    /* The connection is leaving the table (any reason). was_open: it had reached
     * CONN_OPEN; client_closed: the peer closed it (EOF, RST, WebSocket close from the
     * peer) rather than lunasip. failed: an outgoing connection that never opened, or one
     * that closed with queued output: what was sent through it is lost (transactions
     * that used it fail at once, RFC 3261 §17.1.4). Called exactly once per connection,
     * from the loop once the connection's output is flushed (or given up, 2 s at most after
     * conn_close), never inside conn_close; conn_get(c->id) is NULL by then and
     * c->state is CONN_CLOSED. Not called by conn_shutdown_now. */
    void (*on_close)(struct conn *c, int was_open, int client_closed, int failed);
};

/* Stores the loop every connection runs on (timers, accepted and outgoing sockets). Call
 * once at start, before conn_listen and conn_connect. */
void conn_init(struct ev_loop *loop);

void conn_set_hooks(const struct conn_hooks *h);

/* Reads the limits and timeouts of cfg, and the TLS context to use for new handshakes
 * (referenced; NULL when there is no TLS). Called at start and on every reload; live
 * connections keep their session's context, new limits apply to what comes next (the
 * timeouts of live connections included). cfg NULL (exit): only drops the TLS context
 * reference and the copied allowed_origins. */
void conn_configure(const struct config *cfg, struct tls_ctx *tls);
/* (cfg NULL, tls NULL releases what conn_configure holds: at exit, after conn_shutdown_now.) */

/* Binds a tcp:, tls:, ws: or wss: listener (non-blocking, SO_REUSEADDR, IPV6_V6ONLY,
 * backlog 1024) and starts accepting on loop. Returns 0 and *out (a struct listener of
 * src/udp.h with transport set), or -errno with err filled ("tcp:127.0.0.1:5060: bind:
 * Address already in use"). */
int conn_listen(struct ev_loop *loop, const struct config_listen *cl, struct listener **out, char *err,
                size_t errlen);
/* Stops accepting (graceful shutdown) / closes the listening socket. */
void conn_listener_stop(struct ev_loop *loop, struct listener *l);
void conn_listener_close(struct ev_loop *loop, struct listener *l);

/* ----- finding and opening connections ----- */

/* The connection with that id while it is in the table (any state but CLOSED), else NULL.
 * The pointer is borrowed: valid until its on_close returns, unless conn_ref'd. */
struct conn *conn_get(uint64_t id);

/* An existing connection of transport tp to the peer dst (accepted and open, or outgoing
 * open or still connecting; never one that is closing) for reuse (RFC 3261 §18.1.1,
 * RFC 5923 spirit); the most recently used when several. NULL when none. */
struct conn *conn_find(enum sip_transport tp, const struct sockaddr *dst, socklen_t dstlen);

/* Opens an outgoing tcp or tls connection to dst (non-blocking connect bounded by
 * sip.tcp_connect_timeout, then for tls a client handshake bounded by
 * tls_handshake_timeout, with SNI and certificate name check against tls_name when it is
 * not NULL). Data may be queued with conn_send at once; it leaves when the connection is
 * open. Returns 0 and *out (borrowed, as conn_get's), or -errno (-EPROTONOSUPPORT for
 * ws/wss, and for tls without a TLS context: lunasip never opens WebSocket connections;
 * -EMFILE at max_connections; an immediate connect error, logged and counted as
 * conn_connect_failed). After 0 no hook runs before the caller is back on the loop: a
 * later failure arrives as on_close(was_open 0, failed 1). */
int conn_connect(enum sip_transport tp, const struct sockaddr *dst, socklen_t dstlen, const char *tls_name,
                 struct conn **out);

/* ----- using a connection ----- */

/* Queues one complete SIP message (a WebSocket text frame on ws/wss) and writes what the
 * socket takes now. Returns 0, -EPIPE when the connection is closing or closed (or broke
 * on this write: it is then closed), -ENOTCONN for an accepted connection not open yet
 * (TLS handshake, WebSocket upgrade), -ENOBUFS when more than 4 MB would be queued (the
 * connection is then closed: a peer that does not read, counted as conn_send_overflow).
 * Never blocks. */
int conn_send(struct conn *c, const char *buf, size_t len);

/* Closes: queued output is flushed first (bounded by 2 s), a WebSocket gets a close frame
 * (code 1000 when 0 is given, reason may be NULL), a TLS session a close_notify. The state
 * becomes CONN_CLOSING at once (conn_send then answers -EPIPE, nothing more is received);
 * on_close runs later from the loop, once the connection leaves the table. A connection
 * still connecting or in its TLS handshake closes without flushing. Idempotent. */
void conn_close(struct conn *c, uint16_t ws_code, const char *reason);

/* Marks the connection used now (connection_idle_timeout counts from the last use). Sending
 * and receiving SIP do it already. */
void conn_touch(struct conn *c);

/* Keeps the struct alive past its on_close (a Lua handle, a pending callback). */
void conn_ref(struct conn *c);
void conn_unref(struct conn *c);

/* ----- whole-table operations ----- */

/* Live connections: total, and for one remote IP (limits, control socket). */
size_t conn_count(void);
size_t conn_count_ip(const struct sockaddr *addr);

/* Calls fn for each connection in the table (the control socket's `connections`). fn must
 * not close connections. */
void conn_foreach(void (*fn)(struct conn *c, void *arg), void *arg);

/* Graceful shutdown: closes every connection (WebSocket close 1001 "shutting down"),
 * flushing what is queued; returns the number still in the table (conn_count()): run the
 * loop until it is 0 (each leaves with its on_close) or the grace ends. conn_shutdown_now
 * then closes whatever is left at once, without calling on_close, drops the table's
 * references (a struct someone still conn_ref's is freed at their conn_unref) and frees
 * the module's memory (at exit, for leak checkers). Listeners are left to their owner. */
size_t conn_shutdown(void);
void conn_shutdown_now(void);

/* "tcp:1.2.3.4:5060<-5.6.7.8:40000" (accepted: local<-remote) or
 * "tcp:1.2.3.4:40000->5.6.7.8:5060" (outgoing: local->remote), IPv6 in brackets, for logs.
 * Kept in the connection: valid as long as the struct. */
const char *conn_name(const struct conn *c);

#endif
