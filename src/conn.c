/* Stream connections (SPEC §4 "Transports"): tcp:, tls:, ws: and wss: listeners, accepted
 * and outgoing connections on the libev loop, SIP framing by Content-Length (RFC 3261
 * §18.3), double-CRLF keepalives (RFC 5626 §4.4.1), TLS sessions through src/tls.h, and
 * every limit of SPEC §3.1 (connections, per-IP, header_timeout, idle, sizes, queued
 * output). The WebSocket upgrade and framing (RFC 6455, RFC 7118) are in src/conn_ws.c, the
 * listeners and the accept path in src/conn_listen.c, the table (by id, by address, per IP)
 * in src/conn_table.c; src/conn_int.h holds what they share.
 *
 * Lifetime. A connection enters the table at accept/connect with one reference (the
 * table's). conn_close only moves it to CONN_CLOSING (flush, close frame, close_notify,
 * shutdown, a short linger); it leaves the table in finish(), which never runs inside a
 * hook or inside a conn_* call: it runs from the loop (an io or timer callback of the
 * connection itself, or the reaper, an ev_prepare that finishes connections whose close
 * was asked from elsewhere). finish() calls on_close once and drops the table's reference;
 * the struct is freed when the last reference goes. */
#include "conn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "config.h"
#include "conn_int.h"
#include "evi.h"
#include "log.h"
#include "stats.h"
#include "tls.h"
#include "udp.h"
#include "ws.h"

#define CONN_OUT_MAX (4u << 20)     /* queued output above this: the peer does not read */
#define CONN_CLOSE_FLUSH 2.0        /* conn_close: flush + linger bound, seconds */
#define CONN_READS_MAX 16           /* reads per wake-up of one connection */
#define CONN_TLS_CHUNK 16384        /* bytes per tls_write (one record) */
#define CONN_RBUF 65536             /* the shared read buffer */
#define CONN_IBUF_KEEP 16384        /* a per-connection input buffer larger than this is freed
                                     * when it empties (20,000 idle connections cost nothing) */

/* ----- state ----- */

struct conn_block {
    struct conn c;
    struct conn_priv p;
};

struct conn_limits lim = {
    .max_msg = 65535, .connect_to = 2, .hs_to = 4, .header_to = 10, .idle_to = 7200,
    .max_conns = 20000, .max_per_ip = 200, .ws_max_msg = 65536, .ws_max_frame = 65536,
    .ws_ka = 60, .ws_pong = 10,
};

struct ev_loop *g_loop;
struct conn_hooks hooks;
struct tls_ctx *g_tls;
static uint64_t next_id = 1;
static struct conn *reap_head, *reap_tail;
static ev_prepare reaper;
static char rbuf[CONN_RBUF];
static int no_hooks;             /* conn_shutdown_now: leaving without callbacks */

static void on_io(struct ev_loop *loop, ev_io *w, int revents);
static void on_timer(struct ev_loop *loop, ev_timer *w, int revents);
static void read_input(struct conn *c);

ev_tstamp now(void)
{
    return ev_now(g_loop);
}

static int is_ws(const struct conn *c)
{
    return c->transport == SIP_TP_WS || c->transport == SIP_TP_WSS;
}

static size_t out_queued(const struct conn_priv *p)
{
    return p->olen - p->ooff;
}

/* "tcp:1.2.3.4:5060" / "tcp:[::1]:5060" */
static void fmt_addr(char *out, size_t cap, const char *tp, const char *ip, int port, int v6)
{
    snprintf(out, cap, v6 ? "%s[%s]:%d" : "%s%s:%d", tp, ip, port);
}

static void update_name(struct conn *c)
{
    struct conn_priv *p = c->priv;
    char l[80], r[80];
    fmt_addr(l, sizeof(l), "", c->local_ip[0] ? c->local_ip : "?", c->local_port, c->local.ss_family == AF_INET6);
    fmt_addr(r, sizeof(r), "", c->remote_ip, c->remote_port, c->remote.ss_family == AF_INET6);
    snprintf(p->name, sizeof(p->name), "%s:%s%s%s", sip_transport_name(c->transport), l, c->outgoing ? "->" : "<-", r);
}

static void fill_local(struct conn *c)
{
    c->local_len = sizeof(c->local);
    if (getsockname(c->priv->fd, (struct sockaddr *)&c->local, &c->local_len) == -1 ||
        sockaddr_ip_port((struct sockaddr *)&c->local, c->local_ip, sizeof(c->local_ip), &c->local_port) != 0) {
        c->local_len = 0;
        c->local_ip[0] = 0;
        c->local_port = 0;
    }
    update_name(c);
}

/* ----- references, finishing ----- */

void conn_ref(struct conn *c)
{
    c->priv->refs++;
}

void conn_unref(struct conn *c)
{
    struct conn_priv *p = c->priv;
    if (--p->refs > 0)
        return;
    /* only finish() drops the table's reference, so the connection is out of the table */
    free(p->ibuf);
    free(p->obuf);
    free(p->tls_name);
    if (p->wsp_init)
        ws_parser_free(&p->wsp);
    free(container_of(c, struct conn_block, c));
}

/* After a graceful close the socket is shut for writing and handed to a linger: it reads
 * and discards until the peer's EOF, or CONN_CLOSE_FLUSH seconds, then closes. Closing at
 * once with unread input would send a reset, and a reset can destroy what we wrote last
 * (a close frame, an HTTP error, a response) before the peer reads it. The connection
 * has left the table by then: on_close does not wait for the peer. */
struct lingerer {
    int fd;
    ev_io io;
    ev_timer timer;
    struct lingerer *prev, *next;
};
static struct lingerer *lingers;

static void linger_end(struct lingerer *lg)
{
    ev_io_stop(g_loop, &lg->io);
    ev_timer_stop(g_loop, &lg->timer);
    close(lg->fd);
    if (lg->prev)
        lg->prev->next = lg->next;
    else
        lingers = lg->next;
    if (lg->next)
        lg->next->prev = lg->prev;
    free(lg);
}

static void on_linger_read(struct ev_loop *loop, ev_io *w, int revents)
{
    struct lingerer *lg = w->data;
    for (int i = 0; i < CONN_READS_MAX; i++) {
        ssize_t n = read(lg->fd, rbuf, sizeof(rbuf));
        if (n > 0 || (n == -1 && errno == EINTR))
            continue;
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        break; /* EOF or an error: the peer is done */
    }
    linger_end(lg);
}

static void on_linger_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    linger_end(w->data);
}

static int linger_start(int fd)
{
    struct lingerer *lg = calloc(1, sizeof(*lg));
    if (!lg)
        return -ENOMEM;
    lg->fd = fd;
    ev_io_init(&lg->io, on_linger_read, fd, EV_READ);
    lg->io.data = lg;
    ev_timer_init(&lg->timer, on_linger_timeout, CONN_CLOSE_FLUSH, 0.);
    lg->timer.data = lg;
    ev_io_start(g_loop, &lg->io);
    ev_timer_start(g_loop, &lg->timer);
    lg->next = lingers;
    if (lingers)
        lingers->prev = lg;
    lingers = lg;
    return 0;
}

/* The first reason given for a close wins: it is what the events report. */
void set_why(struct conn *c, const char *why)
{
    if (!c->priv->why)
        c->priv->why = why;
}

/* SPEC §5.5: E_CORE_TCP_DISCONNECT for every stream connection that was open (tcp, tls,
 * ws, wss: src is the peer, dst lunasip), E_WS_CLOSED for a WebSocket one. */
static void raise_close_events(struct conn *c)
{
    struct conn_priv *p = c->priv;
    const char *why = p->why ? p->why : p->client_closed ? "closed by the peer" : "closed";
    struct evi_param d[] = {
        EVI_STR("src_ip", c->remote_ip),
        EVI_INT("src_port", c->remote_port),
        EVI_STR("dst_ip", c->local_ip),
        EVI_INT("dst_port", c->local_port),
        EVI_STR("proto", sip_transport_name(c->transport)),
        EVI_STR("reason", why),
    };
    evi_raise_core("E_CORE_TCP_DISCONNECT", d, 6);
    if (is_ws(c)) {
        struct evi_param w[] = {
            EVI_STR("src_ip", c->remote_ip),
            EVI_INT("src_port", c->remote_port),
            EVI_INT("code", p->ws_code ? p->ws_code : WS_CLOSE_ABNORMAL),
            EVI_STR("reason", why),
            EVI_BOOL("client_closed", p->client_closed),
        };
        evi_raise_core("E_WS_CLOSED", w, 5);
    }
}

/* Takes c out of the table: stops its watchers, closes the socket, calls on_close (once),
 * drops the table's reference. Runs only from the loop (never inside a hook of c). */
static void finish(struct conn *c)
{
    struct conn_priv *p = c->priv;
    if (c->state == CONN_CLOSED)
        return;
    int was_open = p->opened;
    int failed = (c->outgoing && !p->opened) || p->force_failed || p->out_written < p->sip_end;
    ev_io_stop(g_loop, &p->io);
    ev_timer_stop(g_loop, &p->timer);
    p->io_events = 0;
    if (c->tls) {
        tls_session_free(c->tls);
        c->tls = NULL;
    }
    if (p->fd >= 0) {
        if (!p->linger || linger_start(p->fd) != 0)
            close(p->fd);
        p->fd = -1;
    }
    table_remove(c);
    c->state = CONN_CLOSED;
    stats.conn_closed++;
    free(p->ibuf);
    p->ibuf = NULL;
    p->ilen = p->icap = 0;
    free(p->obuf);
    p->obuf = NULL;
    p->olen = p->ooff = p->ocap = 0;
    if (p->wsp_init) {
        ws_parser_free(&p->wsp);
        p->wsp_init = 0;
    }
    LOG_DEBUG("%s: closed (%s%s%s)", p->name, was_open ? "was open" : "never opened",
              p->client_closed ? ", by the peer" : "", failed ? ", output lost" : "");
    if (was_open && !no_hooks)
        raise_close_events(c);
    if (hooks.on_close && !no_hooks)
        hooks.on_close(c, was_open, p->client_closed, failed);
    conn_unref(c);
}

static void on_reap(struct ev_loop *loop, ev_prepare *w, int revents)
{
    while (reap_head) {
        struct conn *c = reap_head;
        reap_head = c->priv->reap_next;
        if (!reap_head)
            reap_tail = NULL;
        c->priv->reap_next = NULL;
        c->priv->in_reap = 0;
        finish(c);
        conn_unref(c);
    }
    ev_prepare_stop(loop, w);
}

/* Closes without flushing: the connection stops all I/O now and leaves the table from
 * the reaper, before the loop next waits. Safe anywhere (inside hooks, conn_send). */
static void close_now(struct conn *c)
{
    struct conn_priv *p = c->priv;
    if (c->state == CONN_CLOSED || p->aborting)
        return;
    p->aborting = 1;
    c->state = CONN_CLOSING;
    ev_io_stop(g_loop, &p->io);
    p->io_events = 0;
    ev_timer_stop(g_loop, &p->timer);
    if (!p->in_reap) {
        p->in_reap = 1;
        conn_ref(c);
        if (reap_tail)
            reap_tail->priv->reap_next = c;
        else
            reap_head = c;
        reap_tail = c;
        ev_prepare_start(g_loop, &reaper);
    }
}

/* ----- the io watcher and the timer ----- */

void io_update(struct conn *c)
{
    struct conn_priv *p = c->priv;
    int ev = 0;
    int out_ev = p->tls_wwant == TLS_WANT_READ ? EV_READ : EV_WRITE;
    switch (c->state) {
    case CONN_CONNECTING:
        ev = EV_WRITE;
        break;
    case CONN_TLS:
        ev = p->hs_want ? p->hs_want : EV_READ;
        break;
    case CONN_WS_UPGRADE:
    case CONN_OPEN:
        ev = EV_READ;
        if (out_queued(p))
            ev |= out_ev;
        break;
    case CONN_CLOSING:
        if (p->aborting)
            ev = 0;
        else if (out_queued(p))
            ev = out_ev;
        break;
    case CONN_CLOSED:
        ev = 0;
        break;
    }
    if (ev == p->io_events)
        return;
    ev_io_stop(g_loop, &p->io);
    p->io_events = ev;
    if (ev) {
        ev_io_set(&p->io, p->fd, ev);
        ev_io_start(g_loop, &p->io);
    }
}

static ev_tstamp dmin(ev_tstamp a, ev_tstamp b)
{
    return a < b ? a : b;
}

/* The next moment something must be checked for c, or 0 for none. */
static ev_tstamp next_deadline(const struct conn *c)
{
    const struct conn_priv *p = c->priv;
    switch (c->state) {
    case CONN_CONNECTING:
        return p->t_state + lim.connect_to;
    case CONN_TLS:
        return p->t_state + lim.hs_to;
    case CONN_WS_UPGRADE:
        return p->t_state + lim.header_to;
    case CONN_OPEN: {
        ev_tstamp d = p->last_used + lim.idle_to;
        if (p->msg_start)
            d = dmin(d, p->msg_start + lim.header_to);
        if (is_ws(c)) {
            if (p->pong_wait)
                d = dmin(d, p->pong_deadline);
            else
                d = dmin(d, (p->last_rx > p->last_ping ? p->last_rx : p->last_ping) + lim.ws_ka);
        }
        return d;
    }
    case CONN_CLOSING:
        return p->aborting ? 0 : p->close_deadline;
    case CONN_CLOSED:
        break;
    }
    return 0;
}

/* Arms the timer for the next deadline. Lazy: a timer armed for an earlier moment is left
 * alone (it fires, finds nothing due and re-arms), so conn_touch on every message costs no
 * heap operation; only a deadline earlier than the armed one restarts it. */
void timer_update(struct conn *c)
{
    struct conn_priv *p = c->priv;
    ev_tstamp d = next_deadline(c);
    if (!d) {
        ev_timer_stop(g_loop, &p->timer);
        return;
    }
    if (ev_is_active(&p->timer) && p->timer_at <= d)
        return;
    ev_timer_stop(g_loop, &p->timer);
    ev_tstamp after = d - now();
    ev_timer_set(&p->timer, after > 0 ? after : 0., 0.);
    ev_timer_start(g_loop, &p->timer);
    p->timer_at = d;
}

/* ----- output ----- */

static int writable_state(const struct conn *c)
{
    return (c->state == CONN_WS_UPGRADE || c->state == CONN_OPEN || c->state == CONN_CLOSING) &&
           !c->priv->aborting && !c->priv->shut_wr;
}

/* Writes queued output until done or the socket is full. Returns 0, or -errno when the
 * connection is broken (the caller closes it). TLS: a write that asked to be retried is
 * retried with the same bytes and length (mbedTLS's rule). */
static int out_flush(struct conn *c)
{
    struct conn_priv *p = c->priv;
    while (p->ooff < p->olen) {
        size_t len = p->olen - p->ooff;
        long n;
        if (c->tls) {
            if (p->tls_wlen)
                len = p->tls_wlen;
            else if (len > CONN_TLS_CHUNK)
                len = CONN_TLS_CHUNK;
            n = tls_write(c->tls, p->obuf + p->ooff, len);
            if (n == TLS_WANT_WRITE || n == TLS_WANT_READ) {
                p->tls_wlen = len;
                p->tls_wwant = (int)n;
                return 0;
            }
            if (n <= 0) {
                LOG_DEBUG("%s: TLS write: %s", p->name, tls_session_error(c->tls));
                return -EPIPE;
            }
            p->tls_wlen = 0;
            p->tls_wwant = 0;
        } else {
            n = send(p->fd, p->obuf + p->ooff, len, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n == -1) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    return 0;
                return -errno;
            }
        }
        p->ooff += (size_t)n;
        p->out_written += (uint64_t)n;
    }
    p->ooff = p->olen = 0;
    if (p->ocap > CONN_IBUF_KEEP * 4) {
        free(p->obuf);
        p->obuf = NULL;
        p->ocap = 0;
    }
    return 0;
}

/* The socket broke (reset, EPIPE, a TLS failure while writing): the peer's doing. */
static void broken(struct conn *c, const char *what, int err)
{
    LOG_DEBUG("%s: %s: %s", c->priv->name, what, strerror(err));
    set_why(c, "connection error");
    c->priv->client_closed = 1;
    close_now(c);
}

/* Queues the bytes a (alen) then b (blen) as one unit (a frame header and its payload);
 * when nothing is queued and the state allows it, plain sockets write them at once with
 * one sendmsg and queue only the rest. sip marks the end of a SIP message (for the
 * failed flag of on_close). Borrows a and b. Returns 0, -ENOBUFS (over CONN_OUT_MAX,
 * nothing queued), or -EPIPE (the connection broke; it is being closed). */
int out_add(struct conn *c, const void *a, size_t alen, const void *b, size_t blen, int sip)
{
    struct conn_priv *p = c->priv;
    size_t total = alen + blen, done = 0;
    if (out_queued(p) + total > CONN_OUT_MAX)
        return -ENOBUFS;
    p->out_in += total;
    if (sip)
        p->sip_end = p->out_in;
    if (!out_queued(p) && !c->tls && writable_state(c)) {
        struct iovec iov[2] = { { (void *)a, alen }, { (void *)b, blen } };
        struct msghdr mh = { .msg_iov = iov, .msg_iovlen = blen ? 2 : 1 };
        ssize_t n;
        do
            n = sendmsg(p->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        while (n == -1 && errno == EINTR);
        if (n == -1) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                broken(c, "send", errno);
                return -EPIPE;
            }
            n = 0;
        }
        done = (size_t)n;
        p->out_written += done;
        if (done == total)
            return 0;
    }
    size_t rest = total - done;
    if (p->ooff && p->ocap - p->olen < rest) {
        memmove(p->obuf, p->obuf + p->ooff, p->olen - p->ooff);
        p->olen -= p->ooff;
        p->ooff = 0;
    }
    if (p->ocap - p->olen < rest) {
        size_t ncap = p->ocap ? p->ocap : 4096;
        while (ncap - p->olen < rest)
            ncap *= 2;
        char *nb = realloc(p->obuf, ncap);
        if (!nb) {
            broken(c, "queue", ENOMEM);
            return -EPIPE;
        }
        p->obuf = nb;
        p->ocap = ncap;
    }
    if (done < alen) {
        memcpy(p->obuf + p->olen, (const char *)a + done, alen - done);
        p->olen += alen - done;
        done = alen;
    }
    if (blen) {
        memcpy(p->obuf + p->olen, (const char *)b + (done - alen), blen - (done - alen));
        p->olen += blen - (done - alen);
    }
    if (c->tls && writable_state(c) && !p->tls_wlen) {
        int r = out_flush(c);
        if (r < 0) {
            broken(c, "send", -r);
            return -EPIPE;
        }
    }
    io_update(c);
    return 0;
}

/* ----- closing ----- */

/* CLOSING, not aborting: flushes (bounded by close_deadline); once the output is gone
 * sends close_notify, shuts the write side and leaves the table, the socket lingering
 * (see struct lingerer) unless the peer closed already. */
static void closing_progress(struct conn *c)
{
    struct conn_priv *p = c->priv;
    if (c->state != CONN_CLOSING || p->aborting)
        return;
    if (out_queued(p)) {
        int r = out_flush(c);
        if (r < 0) {
            broken(c, "send", -r);
            return;
        }
        if (out_queued(p)) {
            io_update(c);
            timer_update(c);
            return;
        }
    }
    if (!p->shut_wr) {
        if (c->tls)
            tls_close_notify(c->tls);
        shutdown(p->fd, SHUT_WR);
        p->shut_wr = 1;
    }
    p->linger = !p->peer_eof;
    close_now(c);
}

/* Starts a graceful close: a WebSocket close frame when ws_frame and the connection is an
 * open WebSocket, then closing_progress. Not yet open (connecting, handshaking): at once. */
void begin_close(struct conn *c, int ws_frame, uint16_t code, const char *reason)
{
    struct conn_priv *p = c->priv;
    if (c->state == CONN_CLOSING || c->state == CONN_CLOSED)
        return;
    if (c->state == CONN_CONNECTING || c->state == CONN_TLS) {
        close_now(c);
        return;
    }
    enum conn_state was = c->state;
    c->state = CONN_CLOSING;
    p->close_deadline = now() + CONN_CLOSE_FLUSH;
    if (ws_frame && was == CONN_OPEN && is_ws(c) && !p->ws_code)
        p->ws_code = code ? code : WS_CLOSE_NORMAL;
    set_why(c, reason ? reason : "closed by lunasip");
    p->msg_start = 0;
    if (ws_frame && was == CONN_OPEN && is_ws(c)) {
        if (send_ws_close(c, code, reason) == -EPIPE)
            return;
    }
    closing_progress(c);
}

void conn_close(struct conn *c, uint16_t ws_code, const char *reason)
{
    if (!c)
        return;
    begin_close(c, 1, ws_code, reason);
}

/* ----- input: SIP over tcp/tls ----- */

void deliver(struct conn *c, const char *buf, size_t len)
{
    conn_touch(c);
    if (hooks.on_message) {
        conn_ref(c);
        hooks.on_message(c, buf, len);
        conn_unref(c);
    }
}

/* sip_frame said -1: too big (the head or the Content-Length total above the limit) or
 * unframable (no/bad/several Content-Length). Framed again without the size limit, a
 * message that frames (or would, given more bytes) was only too big. */
static void framing_error(struct conn *c, const char *buf, size_t len)
{
    struct conn_priv *p = c->priv;
    long r = sip_frame(buf, len, (size_t)1 << 40);
    if (r == -1 && len >= lim.max_msg && !memmem(buf, lim.max_msg, "\r\n\r\n", 4))
        r = -2; /* no head end within the limit: an oversized head */
    if (r != -1) {
        stats.conn_oversized++;
        LOG_NOTICE("closing %s: a message above sip.max_message_size (%zu bytes)", p->name, lim.max_msg);
        set_why(c, "message too large");
    } else {
        set_why(c, "framing error");
        stats.conn_framing_errors++;
        LOG_NOTICE("closing %s: a message that cannot be framed (missing, invalid or repeated Content-Length)",
                   p->name);
    }
    begin_close(c, 0, 0, NULL);
}

/* RFC 5626 §4.4.1: between messages, CRLFCRLF is a ping (answered with CRLF), a lone CRLF
 * a pong (ignored). CRLFs that might still become a ping (nothing after them yet) are
 * kept. Then messages framed by Content-Length (RFC 3261 §18.3). Returns bytes consumed. */
static size_t process_sip(struct conn *c, const char *buf, size_t len)
{
    struct conn_priv *p = c->priv;
    size_t pos = 0;
    while (c->state == CONN_OPEN && pos < len) {
        const char *b = buf + pos;
        size_t n = len - pos;
        if (!p->msg_start) {
            size_t crlf = sip_frame_skip_crlf(b, n);
            int only = crlf == n || (crlf + 1 == n && b[crlf] == '\r');
            if (crlf || (n == 1 && b[0] == '\r')) {
                size_t used = 0;
                while (crlf - used >= 4) {
                    stats.conn_keepalives++;
                    conn_touch(c);
                    used += 4;
                    if (out_add(c, "\r\n", 2, NULL, 0, 0) == -EPIPE)
                        return len;
                }
                if (only) {
                    pos += used;
                    break; /* wait: a CRLF alone may be the first half of a ping */
                }
                pos += crlf;
                continue;
            }
            p->msg_start = now();
            p->head_done = 0;
        }
        long r = sip_frame(b, n, lim.max_msg);
        if (r > 0) {
            p->msg_start = 0;
            pos += (size_t)r;
            deliver(c, b, (size_t)r);
            continue;
        }
        if (r == -1) {
            framing_error(c, b, n);
            return len;
        }
        /* incomplete: once the head is there, the body gets its own header_timeout */
        if (!p->head_done && memmem(b, n, "\r\n\r\n", 4)) {
            p->head_done = 1;
            p->msg_start = now();
        }
        break;
    }
    return pos;
}

/* Consumes what it can of buf (the input of c so far). Returns the bytes used. */
static size_t process(struct conn *c, char *buf, size_t len)
{
    size_t pos = 0;
    if (c->state == CONN_WS_UPGRADE) {
        long r = process_upgrade(c, buf, len);
        if (r <= 0)
            return r == 0 ? 0 : len;
        pos = (size_t)r;
    }
    if (c->state != CONN_OPEN)
        return len;
    if (is_ws(c)) {
        pos += process_ws(c, buf + pos, len - pos);
        /* a WebSocket message still incomplete (a partial frame, or fragments pending)
         * must complete within header_timeout, as a SIP head must: no slow drip of
         * fragments keeps a connection */
        if (c->state == CONN_OPEN) {
            struct conn_priv *p = c->priv;
            int partial = pos < len || p->wsp.msg_op != WS_OP_CONT;
            if (partial && !p->msg_start) {
                p->msg_start = now();
                p->head_done = 0;
                timer_update(c);
            } else if (!partial) {
                p->msg_start = 0;
            }
        }
    } else {
        pos += process_sip(c, buf + pos, len - pos);
    }
    return pos;
}

static size_t in_limit(const struct conn *c)
{
    size_t l;
    if (c->state == CONN_WS_UPGRADE)
        l = WS_HEAD_MAX + 1;
    else if (is_ws(c))
        l = lim.ws_max_frame + 14 + 1;
    else
        l = lim.max_msg + 1;
    return l < 4096 ? 4096 : l;
}

static int in_grow(struct conn_priv *p, size_t want)
{
    if (p->icap >= want)
        return 0;
    char *nb = realloc(p->ibuf, want);
    if (!nb)
        return -ENOMEM;
    p->ibuf = nb;
    p->icap = want;
    return 0;
}

static int reading_state(const struct conn *c)
{
    return c->state == CONN_OPEN || c->state == CONN_WS_UPGRADE;
}

/* The peer's EOF (or close_notify): what is queued still goes out, then the close. */
static void peer_closed(struct conn *c)
{
    struct conn_priv *p = c->priv;
    p->client_closed = 1;
    p->peer_eof = 1;
    set_why(c, "closed by the peer");
    LOG_DEBUG("%s: closed by the peer", p->name);
    if (out_queued(p))
        begin_close(c, 0, 0, NULL);
    else
        close_now(c);
}

/* Reads while there is input (bounded per wake-up). With nothing kept from before, the
 * read goes to the shared buffer and only an unfinished tail is copied into the
 * connection's own. */
static void read_input(struct conn *c)
{
    struct conn_priv *p = c->priv;
    for (int i = 0; i < CONN_READS_MAX; i++) {
        if (!reading_state(c))
            return;
        char *dst;
        size_t space;
        if (p->ilen == 0) {
            dst = rbuf;
            space = sizeof(rbuf);
        } else {
            if (p->ilen == p->icap) {
                size_t l = in_limit(c);
                if (p->icap >= l) {
                    /* cannot happen with sane parsers: they decide within the limit */
                    stats.conn_oversized++;
                    LOG_NOTICE("closing %s: input above the size limits (%zu bytes)", p->name, p->icap);
                    begin_close(c, 1, WS_CLOSE_TOO_BIG, NULL);
                    return;
                }
                size_t want = p->icap * 2;
                if (want > l)
                    want = l;
                if (in_grow(p, want) != 0) {
                    broken(c, "read", ENOMEM);
                    return;
                }
            }
            dst = p->ibuf + p->ilen;
            space = p->icap - p->ilen;
        }
        long n;
        if (c->tls) {
            n = tls_read(c->tls, dst, space);
            if (n == TLS_WANT_READ || n == TLS_WANT_WRITE)
                return;
            if (n == TLS_CLOSED) {
                peer_closed(c);
                return;
            }
            if (n <= 0) {
                LOG_NOTICE("closing %s: TLS: %s", p->name, tls_session_error(c->tls));
                close_now(c);
                return;
            }
        } else {
            n = read(p->fd, dst, space);
            if (n == -1) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    return;
                broken(c, "read", errno);
                return;
            }
            if (n == 0) {
                peer_closed(c);
                return;
            }
        }
        p->last_rx = now();
        conn_ref(c);
        if (dst == rbuf) {
            size_t used = process(c, rbuf, (size_t)n);
            size_t left = (size_t)n - used;
            if (left && reading_state(c)) {
                if (in_grow(p, left < 4096 ? 4096 : left) != 0) {
                    conn_unref(c);
                    broken(c, "read", ENOMEM);
                    return;
                }
                memcpy(p->ibuf, rbuf + used, left);
                p->ilen = left;
            }
        } else {
            p->ilen += (size_t)n;
            size_t used = process(c, p->ibuf, p->ilen);
            if (!reading_state(c) || used >= p->ilen) {
                p->ilen = 0;
            } else if (used) {
                memmove(p->ibuf, p->ibuf + used, p->ilen - used);
                p->ilen -= used;
            }
            if (p->ilen == 0 && p->icap > CONN_IBUF_KEEP) {
                free(p->ibuf);
                p->ibuf = NULL;
                p->icap = 0;
            }
        }
        int more = (size_t)n == space || (c->tls && tls_pending(c->tls));
        conn_unref(c);
        if (!more)
            return;
    }
    /* budget spent: plain sockets wake us again (level-triggered); bytes a TLS session
     * decrypted already would not */
    if (c->tls && reading_state(c) && tls_pending(c->tls))
        ev_feed_event(g_loop, &p->io, EV_READ);
}

/* ----- opening ----- */

void set_open(struct conn *c)
{
    struct conn_priv *p = c->priv;
    ev_tstamp t = now();
    c->state = CONN_OPEN;
    p->opened = 1;
    p->last_used = p->last_rx = p->last_ping = t;
    p->msg_start = 0;
    conn_ref(c);
    if (hooks.on_open)
        hooks.on_open(c);
    if (c->state == CONN_OPEN) {
        if (out_queued(c->priv)) {
            int r = out_flush(c);
            if (r < 0)
                broken(c, "send", -r);
        }
        if (c->state == CONN_OPEN) {
            io_update(c);
            timer_update(c);
        }
    }
    conn_unref(c);
}

void tls_failed(struct conn *c, const char *why)
{
    struct conn_priv *p = c->priv;
    stats.tls_handshake_failed++;
    if (c->outgoing)
        stats.conn_connect_failed++;
    LOG_NOTICE("%s: TLS handshake failed: %s", p->name, why);
    set_why(c, "TLS handshake failed");
    struct evi_param e[] = {
        EVI_STR("src_ip", c->remote_ip),
        EVI_INT("src_port", c->remote_port),
        EVI_STR("proto", sip_transport_name(c->transport)),
        EVI_STR("reason", why ? why : ""),
    };
    evi_raise_core("E_TLS_HANDSHAKE_FAILED", e, 4);
    close_now(c);
}

/* Drives the handshake (non-blocking); when done: the on_tls_handshake hook, then OPEN
 * (tls) or the WebSocket upgrade (wss). */
static void tls_step(struct conn *c)
{
    struct conn_priv *p = c->priv;
    int rc = tls_handshake(c->tls);
    if (rc == TLS_WANT_READ || rc == TLS_WANT_WRITE) {
        p->hs_want = rc == TLS_WANT_READ ? EV_READ : EV_WRITE;
        io_update(c);
        timer_update(c);
        return;
    }
    if (rc != TLS_OK) {
        tls_failed(c, rc == TLS_CLOSED ? "closed by the peer" : tls_session_error(c->tls));
        return;
    }
    stats.tls_handshakes++;
    LOG_DEBUG("%s: TLS handshake done (%s)", p->name, tls_session_version(c->tls) ? tls_session_version(c->tls) : "?");
    if (hooks.on_tls_handshake) {
        conn_ref(c);
        int r = hooks.on_tls_handshake(c, !c->outgoing);
        int gone = c->state != CONN_TLS;
        conn_unref(c);
        if (r != 0) {
            stats.tls_rejected++;
            LOG_NOTICE("closing %s: rejected by the TLS handshake callback", p->name);
            set_why(c, "rejected by the TLS handshake callback");
            close_now(c);
            return;
        }
        if (gone)
            return;
    }
    if (c->transport == SIP_TP_WSS)
        enter_ws_upgrade(c);
    else
        set_open(c);
    /* the peer's first bytes may already sit decrypted in the session */
    if (reading_state(c) && tls_pending(c->tls))
        read_input(c);
}

static void connect_failed(struct conn *c, int err)
{
    char dst[96];
    fmt_addr(dst, sizeof(dst), "", c->remote_ip, c->remote_port, c->remote.ss_family == AF_INET6);
    stats.conn_connect_failed++;
    LOG_NOTICE("cannot connect to %s:%s: %s", sip_transport_name(c->transport), dst,
               err == ETIMEDOUT ? "no answer within sip.tcp_connect_timeout" : strerror(err));
    close_now(c);
}

static void connect_done(struct conn *c)
{
    struct conn_priv *p = c->priv;
    int err = 0;
    socklen_t sl = sizeof(err);
    if (getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &err, &sl) == -1)
        err = errno;
    if (err) {
        connect_failed(c, err);
        return;
    }
    stats.conn_connected++;
    fill_local(c);
    LOG_DEBUG("%s: connected", p->name);
    if (c->tls) {
        c->state = CONN_TLS;
        p->t_state = now();
        tls_step(c);
    } else {
        set_open(c);
    }
}

static void on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    struct conn *c = w->data;
    struct conn_priv *p = c->priv;
    conn_ref(c);
    switch (c->state) {
    case CONN_CONNECTING:
        connect_done(c);
        break;
    case CONN_TLS:
        tls_step(c);
        break;
    case CONN_WS_UPGRADE:
    case CONN_OPEN:
        if (out_queued(p) && ((revents & EV_WRITE) || p->tls_wwant == TLS_WANT_READ)) {
            int r = out_flush(c);
            if (r < 0) {
                broken(c, "send", -r);
                break;
            }
        }
        if ((revents & EV_READ) && reading_state(c))
            read_input(c);
        break;
    case CONN_CLOSING:
        if (p->aborting)
            break;
        if (out_queued(p))
            closing_progress(c);
        break;
    case CONN_CLOSED:
        break;
    }
    if (c->state != CONN_CLOSED && !p->aborting) {
        io_update(c);
        timer_update(c);
    }
    conn_unref(c);
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct conn *c = w->data;
    struct conn_priv *p = c->priv;
    ev_tstamp t = now() + 1e-3; /* libev may wake a hair early against ev_now */
    conn_ref(c);
    switch (c->state) {
    case CONN_CONNECTING:
        if (t >= p->t_state + lim.connect_to)
            connect_failed(c, ETIMEDOUT);
        break;
    case CONN_TLS:
        if (t >= p->t_state + lim.hs_to) {
            char why[80];
            snprintf(why, sizeof(why), "not done within sip.tls_handshake_timeout (%g s)", lim.hs_to);
            tls_failed(c, why);
        }
        break;
    case CONN_WS_UPGRADE:
        if (t >= p->t_state + lim.header_to) {
            stats.conn_header_timeout++;
            LOG_NOTICE("closing %s: no complete WebSocket upgrade request in %g s", p->name, lim.header_to);
            set_why(c, "header timeout");
            begin_close(c, 0, 0, NULL);
        }
        break;
    case CONN_OPEN:
        if (p->msg_start && t >= p->msg_start + lim.header_to) {
            stats.conn_header_timeout++;
            LOG_NOTICE("closing %s: no complete message %s in %g s", p->name, p->head_done ? "body" : "head",
                       lim.header_to);
            set_why(c, "header timeout");
            begin_close(c, 0, 0, NULL);
        } else if (t >= p->last_used + lim.idle_to) {
            stats.conn_idle_timeout++;
            LOG_INFO("closing %s: unused for %g s (sip.connection_idle_timeout)", p->name, lim.idle_to);
            begin_close(c, 1, WS_CLOSE_GOING_AWAY, "idle");
        } else if (is_ws(c) && p->pong_wait && t >= p->pong_deadline) {
            stats.ws_pong_timeouts++;
            LOG_NOTICE("closing %s: no WebSocket pong within %g s", p->name, lim.ws_pong);
            set_why(c, "no pong");
            close_now(c);
        } else if (is_ws(c) && !p->pong_wait &&
                   t >= (p->last_rx > p->last_ping ? p->last_rx : p->last_ping) + lim.ws_ka) {
            send_ws_ping(c);
        }
        break;
    case CONN_CLOSING:
        if (!p->aborting && t >= p->close_deadline) {
            if (out_queued(p))
                LOG_NOTICE("%s: output not flushed within %g s of the close", p->name, CONN_CLOSE_FLUSH);
            close_now(c);
        }
        break;
    case CONN_CLOSED:
        break;
    }
    if (c->state != CONN_CLOSED && !p->aborting)
        timer_update(c);
    conn_unref(c);
}

/* Allocates a connection on fd (owned from now on) to/from remote and enters it in the
 * table. Returns NULL (fd closed) when out of memory. */
struct conn *conn_new(int fd, enum sip_transport tp, int outgoing, const struct sockaddr *remote, socklen_t rlen,
                      struct listener *l)
{
    struct conn_block *b = calloc(1, sizeof(*b));
    if (!b) {
        close(fd);
        return NULL;
    }
    struct conn *c = &b->c;
    struct conn_priv *p = &b->p;
    c->priv = p;
    p->pub = c;
    p->fd = fd;
    p->refs = 1;
    c->id = next_id++;
    c->transport = tp;
    c->outgoing = outgoing;
    c->listener = l;
    memcpy(&c->remote, remote, rlen);
    c->remote_len = rlen;
    if (sockaddr_ip_port(remote, c->remote_ip, sizeof(c->remote_ip), &c->remote_port) != 0)
        strcpy(c->remote_ip, "?");
    ev_io_init(&p->io, on_io, fd, EV_READ);
    p->io.data = c;
    ev_timer_init(&p->timer, on_timer, 0., 0.);
    p->timer.data = c;
    p->last_used = p->last_rx = p->last_ping = p->t_state = now();
    int one = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) == -1) {
        /* harmless: only latency */
    }
    fill_local(c);
    if (table_add(c) != 0) {
        close(fd);
        free(b);
        return NULL;
    }
    return c;
}

/* ----- the public operations ----- */

void conn_init(struct ev_loop *loop)
{
    g_loop = loop;
    init_seed();
    ev_prepare_init(&reaper, on_reap);
}

void conn_set_hooks(const struct conn_hooks *h)
{
    if (h)
        hooks = *h;
    else
        memset(&hooks, 0, sizeof(hooks));
}

static void free_origins(void)
{
    for (size_t i = 0; i < lim.norigins; i++)
        free(lim.origins[i]);
    free(lim.origins);
    lim.origins = NULL;
    lim.norigins = 0;
    lim.origins_set = 0;
}

void conn_configure(const struct config *cfg, struct tls_ctx *tls)
{
    if (tls)
        tls_ctx_ref(tls);
    if (g_tls)
        tls_ctx_unref(g_tls);
    g_tls = tls;
    if (!cfg) {
        free_origins(); /* exit: let go of what the last configuration left */
        return;
    }
    lim.max_msg = cfg->max_message_size > 0 ? (size_t)cfg->max_message_size : 65535;
    lim.connect_to = cfg->tcp_connect_timeout;
    lim.hs_to = cfg->tls_handshake_timeout;
    lim.header_to = cfg->header_timeout;
    lim.idle_to = cfg->connection_idle_timeout;
    lim.max_conns = cfg->max_connections > 0 ? (size_t)cfg->max_connections : 1;
    lim.max_per_ip = cfg->max_connections_per_ip > 0 ? (size_t)cfg->max_connections_per_ip : 1;
    lim.ws_max_msg = cfg->ws_max_message_size > 0 ? (size_t)cfg->ws_max_message_size : 65536;
    lim.ws_max_frame = cfg->ws_max_frame_size > 0 ? (size_t)cfg->ws_max_frame_size : 65536;
    lim.ws_ka = cfg->ws_keepalive_interval;
    lim.ws_pong = cfg->ws_pong_timeout;
    free_origins();
    if (cfg->ws_allowed_origins) {
        lim.origins = calloc(cfg->nws_allowed_origins + 1, sizeof(char *));
        if (lim.origins) {
            for (size_t i = 0; i < cfg->nws_allowed_origins; i++) {
                lim.origins[i] = strdup(cfg->ws_allowed_origins[i]);
                if (!lim.origins[i])
                    break; /* out of memory: fewer origins allowed, never more */
                lim.norigins++;
            }
        }
        lim.origins_set = 1; /* even when empty or short: refuse rather than allow all */
    }
}

int conn_connect(enum sip_transport tp, const struct sockaddr *dst, socklen_t dstlen, const char *tls_name,
                 struct conn **out)
{
    if (tp != SIP_TP_TCP && tp != SIP_TP_TLS)
        return -EPROTONOSUPPORT;
    if (tp == SIP_TP_TLS && !g_tls)
        return -EPROTONOSUPPORT;
    if (!g_loop)
        return -EINVAL;
    if ((dst->sa_family != AF_INET && dst->sa_family != AF_INET6) || dstlen > sizeof(struct sockaddr_storage))
        return -EAFNOSUPPORT;
    if (nconns >= lim.max_conns)
        return -EMFILE;
    int fd = socket(dst->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1)
        return -errno;
    if (connect(fd, dst, dstlen) == -1 && errno != EINPROGRESS && errno != EINTR) {
        int e = errno;
        char ip[64], name[96];
        int port = 0;
        if (sockaddr_ip_port(dst, ip, sizeof(ip), &port) != 0)
            strcpy(ip, "?");
        fmt_addr(name, sizeof(name), "", ip, port, dst->sa_family == AF_INET6);
        close(fd);
        stats.conn_connect_failed++;
        LOG_NOTICE("cannot connect to %s:%s: %s", sip_transport_name(tp), name, strerror(e));
        return -e;
    }
    /* the Via sent-by: a listener of the same transport and family */
    struct listener *l = listener_find(tp, dst->sa_family);
    struct conn *c = conn_new(fd, tp, 1, dst, dstlen, l);
    if (!c)
        return -ENOMEM;
    struct conn_priv *p = c->priv;
    if (tp == SIP_TP_TLS) {
        if (tls_name && !(p->tls_name = strdup(tls_name)))
            goto nomem;
        c->tls = tls_session_client(g_tls, p->fd, p->tls_name, p->tls_name != NULL);
        if (!c->tls)
            goto nomem;
    }
    c->state = CONN_CONNECTING;
    p->t_state = now();
    /* connected or not, the socket wakes us writable: connect_done decides, from the loop,
     * so no hook runs before the caller has *out */
    io_update(c);
    timer_update(c);
    *out = c;
    return 0;

nomem:
    /* never announced: leaves without callbacks, as if conn_connect had not been called */
    ev_io_stop(g_loop, &p->io);
    if (c->tls)
        tls_session_free(c->tls);
    c->tls = NULL;
    close(p->fd);
    p->fd = -1;
    table_remove(c);
    c->state = CONN_CLOSED;
    conn_unref(c);
    return -ENOMEM;
}

int conn_send(struct conn *c, const char *buf, size_t len)
{
    if (!c || c->state == CONN_CLOSING || c->state == CONN_CLOSED)
        return -EPIPE;
    if (!c->outgoing && c->state != CONN_OPEN)
        return -ENOTCONN;
    struct conn_priv *p = c->priv;
    conn_touch(c);
    int r;
    if (is_ws(c)) {
        r = send_ws_text(c, buf, len);
    } else {
        r = out_add(c, buf, len, NULL, 0, 1);
    }
    if (r == -ENOBUFS) {
        stats.conn_send_overflow++;
        LOG_NOTICE("closing %s: more than %u bytes of output queued (the peer does not read)", p->name,
                   CONN_OUT_MAX);
        p->force_failed = 1;
        set_why(c, "output not read by the peer");
        close_now(c);
    }
    return r;
}

void conn_touch(struct conn *c)
{
    if (c && c->state != CONN_CLOSED)
        c->priv->last_used = now();
}

size_t conn_shutdown(void)
{
    for (struct conn *c = all_head; c; c = c->priv->next)
        begin_close(c, 1, WS_CLOSE_GOING_AWAY, "shutting down");
    return nconns;
}

void conn_shutdown_now(void)
{
    no_hooks = 1;
    while (all_head)
        finish(all_head);
    while (reap_head) {
        struct conn *c = reap_head;
        reap_head = c->priv->reap_next;
        c->priv->in_reap = 0;
        conn_unref(c);
    }
    reap_tail = NULL;
    no_hooks = 0;
    while (lingers)
        linger_end(lingers);
    if (g_loop)
        ev_prepare_stop(g_loop, &reaper);
    table_free();
    free_origins();
    if (g_tls)
        tls_ctx_unref(g_tls);
    g_tls = NULL;
}

const char *conn_name(const struct conn *c)
{
    return c->priv->name;
}
