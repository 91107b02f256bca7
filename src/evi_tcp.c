/* Event sink tcp: (SPEC §6): one persistent connection per sink carrying newline-delimited
 * JSON-RPC notifications (each payload followed by "\n"), driven by the event loop: a
 * non-blocking connect, writes gathered from the jobs themselves (no copy), reconnect with
 * backoff. Never waits on the peer: a peer that accepts and never reads costs a bounded
 * amount of memory and no time.
 *
 * Failure semantics (README "Event sinks"), tcp:IP:PORT or tcp:[IPv6]:PORT:
 *   state      UNKNOWN while the first connect runs, UP once connected, DOWN when a
 *              connect fails or a connection breaks. Reconnects after 0.5 s, doubling up to
 *              events.retry_max; the delay starts over once a connection has lived
 *              TCP_STABLE_SECS (a peer that accepts and closes at once, or hangs, is not
 *              hammered).
 *   delivered  the job's last byte (its newline) was written into the kernel's socket
 *              buffer (TCP_SNDBUF, fixed). Bytes the kernel held when the connection broke
 *              are lost unnoticed: TCP gives no receipt (use http:// for one per event).
 *   waiting    no jobs are taken while connecting or waiting to reconnect: they stay in the
 *              core's queue (events.queue_limit, events.overflow). While DOWN, a job of a
 *              virtual: set with other members to try fails at once (ENOTCONN).
 *   failed     connect refused or not done within events.connect_timeout: the sink goes
 *              DOWN (no job is lost to it). A connection reset or closed by the peer: the
 *              job half written fails (ECONNRESET / EPIPE), the jobs not yet started go
 *              back to the head of the queue for the next connection. A peer that reads
 *              nothing while output waits for events.send_timeout is hung: the connection
 *              is closed, every job taken fails with ETIMEDOUT, the sink goes DOWN.
 *   bounded    at most TCP_OUT_CAP bytes (TCP_INFLIGHT_MAX jobs) are taken at a time;
 *              what the peer sends is read and discarded. */
#include "evi_sink.h"

#include <errno.h>
#include <ev.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define TCP_OUT_CAP      (256 * 1024) /* bytes taken and not yet in the kernel */
/* The kernel's send buffer for the connection (it doubles the value). Fixed rather than
 * autotuned (up to net.ipv4.tcp_wmem's 4 MB): bytes in it count as delivered, so this bounds
 * what a hung peer can swallow unnoticed, and how long it takes to notice it. */
#define TCP_SNDBUF       (128 * 1024)
#define TCP_INFLIGHT_MAX 1024         /* jobs taken and not yet in the kernel */
#define TCP_IOV_JOBS     64           /* jobs per sendmsg (two iovecs each) */
#define TCP_FLUSH_ROUNDS 4            /* fill+write rounds per flush: ~1 MB, then yield */
#define TCP_READS_MAX    16           /* reads per wake-up of a peer that talks */
#define TCP_STABLE_SECS  10.0         /* a connection that lived this long resets the backoff */

enum tcp_conn {
    TCP_IDLE = 0,      /* no connection, no attempt scheduled (before the first) */
    TCP_CONNECTING,
    TCP_CONNECTED,
    TCP_BACKOFF,       /* waiting to reconnect */
};

struct tcp_job {
    struct evi_job *j;
    const char *p;     /* the payload, borrowed from j while we own j */
    size_t len;        /* payload bytes; the newline makes len + 1 on the wire */
};

struct tcp_sink {
    struct evi_sink base;
    struct sockaddr_storage dst;
    unsigned dstlen;
    int fd;
    enum tcp_conn conn;
    ev_io rio, wio;
    ev_timer conn_timer;    /* connect_timeout */
    ev_timer stall_timer;   /* send_timeout without progress */
    ev_timer retry_timer;   /* backoff */
    double backoff;
    ev_tstamp connected_at;
    ev_tstamp last_progress;
    struct tcp_job *ring;   /* jobs taken, oldest first; TCP_INFLIGHT_MAX slots */
    size_t rhead, rlen;
    size_t off;             /* bytes of the oldest job already written (its newline included) */
    size_t bytes;           /* bytes taken and not written */
};

static const char newline = '\n';

/* The socket as logs and errors show it (passwords masked by the core). */
static const char *sock_name(const struct evi_sink *s)
{
    return s->shown ? s->shown : s->socket ? s->socket : s->addr;
}

static void set_state(struct tcp_sink *t, enum evi_sink_state st, const char *why)
{
    if (t->base.state != st)
        evi_sink_set_state(&t->base, st, why);
}

static void set_down_errno(struct tcp_sink *t, const char *what, int err)
{
    if (t->base.state == EVI_SINK_DOWN)
        return;
    char why[160];
    snprintf(why, sizeof(why), "%s: %s", what, strerror(err));
    evi_sink_set_state(&t->base, EVI_SINK_DOWN, why);
}

static struct tcp_job *ring_at(struct tcp_sink *t, size_t i)
{
    return &t->ring[(t->rhead + i) % TCP_INFLIGHT_MAX];
}

static struct evi_job *ring_pop(struct tcp_sink *t)
{
    struct evi_job *j = t->ring[t->rhead].j;
    t->rhead = (t->rhead + 1) % TCP_INFLIGHT_MAX;
    t->rlen--;
    return j;
}

static void start_connect(struct tcp_sink *t);

static void schedule_retry(struct tcp_sink *t)
{
    t->conn = TCP_BACKOFF;
    ev_timer_stop(t->base.loop, &t->retry_timer);
    ev_timer_set(&t->retry_timer, evi_sink_backoff(&t->backoff), 0.);
    ev_timer_start(t->base.loop, &t->retry_timer);
}

/* Closes the connection. err is why (a negative errno). The job half written fails with
 * err; the others fail too when all_fail (a hung peer: they waited send_timeout already),
 * else they go back to the head of the core's queue, in order, for the next connection
 * (before the sink goes DOWN, so the core fails those of them that are fail-fast). Then
 * the sink goes DOWN (why) and a reconnect is scheduled. */
static void drop_conn(struct tcp_sink *t, int err, int all_fail, const char *why)
{
    struct ev_loop *loop = t->base.loop;
    ev_io_stop(loop, &t->rio);
    ev_io_stop(loop, &t->wio);
    ev_timer_stop(loop, &t->stall_timer);
    ev_timer_stop(loop, &t->conn_timer);
    if (t->fd >= 0) {
        close(t->fd);
        t->fd = -1;
    }
    if (ev_now(loop) - t->connected_at >= TCP_STABLE_SECS)
        t->backoff = EVI_BACKOFF_MIN;
    schedule_retry(t);
    /* detach the ring first: nothing below may find jobs in it */
    size_t head = t->rhead, n = t->rlen, half = t->off > 0;
    t->rhead = t->rlen = t->off = t->bytes = 0;
    for (size_t i = n; i-- > half;) {
        struct evi_job *j = t->ring[(head + i) % TCP_INFLIGHT_MAX].j;
        if (!all_fail)
            evi_sink_untake(&t->base, j);
    }
    if (t->base.state != EVI_SINK_DOWN)
        evi_sink_set_state(&t->base, EVI_SINK_DOWN, why);
    for (size_t i = 0; i < n; i++)
        if (i < half || all_fail)
            evi_job_done(t->ring[(head + i) % TCP_INFLIGHT_MAX].j, err);
}

static void drop_conn_errno(struct tcp_sink *t, const char *what, int err)
{
    char why[160];
    snprintf(why, sizeof(why), "%s: %s", what, strerror(err));
    drop_conn(t, -err, 0, why);
}

/* Marks the first n written bytes done: every job whose newline went is delivered. */
static void consumed(struct tcp_sink *t, size_t n)
{
    t->bytes -= n;
    while (n && t->rlen) {
        struct tcp_job *tj = &t->ring[t->rhead];
        size_t left = tj->len + 1 - t->off;
        if (n < left) {
            t->off += n;
            return;
        }
        n -= left;
        t->off = 0;
        evi_job_done(ring_pop(t), 0);
    }
}

/* Writes what is taken until done or the kernel is full. Returns 0 (all written, or
 * waiting for room with the write watcher and stall timer armed) or a negative errno
 * (the connection is broken; the caller drops it). */
static int write_out(struct tcp_sink *t)
{
    struct ev_loop *loop = t->base.loop;
    while (t->rlen) {
        struct iovec iov[2 * TCP_IOV_JOBS];
        int k = 0;
        size_t skip = t->off;
        for (size_t i = 0; i < t->rlen && k < 2 * TCP_IOV_JOBS; i++) {
            struct tcp_job *tj = ring_at(t, i);
            if (skip < tj->len) {
                iov[k].iov_base = (void *)(tj->p + skip);
                iov[k].iov_len = tj->len - skip;
                k++;
            }
            iov[k].iov_base = (void *)&newline;
            iov[k].iov_len = 1;
            k++;
            skip = 0;
        }
        struct msghdr mh = { .msg_iov = iov, .msg_iovlen = (size_t)k };
        ssize_t n = sendmsg(t->fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n == -1) {
            int e = errno;
            if (e == EINTR)
                continue;
            if (e == EAGAIN || e == EWOULDBLOCK) {
                if (!ev_is_active(&t->wio))
                    ev_io_start(loop, &t->wio);
                if (!ev_is_active(&t->stall_timer)) {
                    t->last_progress = ev_now(loop);
                    double to = evi_sink_config()->send_timeout;
                    ev_timer_set(&t->stall_timer, to, 0.);
                    ev_timer_start(loop, &t->stall_timer);
                }
                return 0;
            }
            return -e;
        }
        t->last_progress = ev_now(loop);
        consumed(t, (size_t)n);
    }
    ev_io_stop(loop, &t->wio);
    ev_timer_stop(loop, &t->stall_timer);
    return 0;
}

/* Takes jobs while below the caps. */
static void fill(struct tcp_sink *t)
{
    while (t->bytes < TCP_OUT_CAP && t->rlen < TCP_INFLIGHT_MAX) {
        struct evi_job *j = evi_sink_take(&t->base);
        if (!j)
            return;
        struct tcp_job *tj = ring_at(t, t->rlen);
        tj->j = j;
        tj->p = evi_job_json(j, &tj->len);
        t->rlen++;
        t->bytes += tj->len + 1;
    }
}

/* Connected: alternately take and write until the kernel is full, the queue is empty or
 * TCP_FLUSH_ROUNDS went (then the core gives us another turn). */
static void pump(struct tcp_sink *t)
{
    for (int round = 0; round < TCP_FLUSH_ROUNDS; round++) {
        fill(t);
        if (!t->rlen)
            return;
        int r = write_out(t);
        if (r < 0) {
            drop_conn_errno(t, "send", -r);
            return;
        }
        if (ev_is_active(&t->wio))
            return; /* the kernel is full: on_write resumes */
    }
    if (evi_sink_queued(&t->base))
        evi_sink_kick(&t->base);
}

static void tcp_flush(struct evi_sink *s)
{
    struct tcp_sink *t = (struct tcp_sink *)s;
    switch (t->conn) {
    case TCP_CONNECTED:
        if (!ev_is_active(&t->wio))
            pump(t);
        break;
    case TCP_IDLE:
        start_connect(t);
        break;
    case TCP_CONNECTING:
    case TCP_BACKOFF:
        evi_sink_fail_fast(&t->base);
        break;
    }
}

static void connected(struct tcp_sink *t)
{
    struct ev_loop *loop = t->base.loop;
    ev_timer_stop(loop, &t->conn_timer);
    ev_io_stop(loop, &t->wio);
    ev_io_set(&t->wio, t->fd, EV_WRITE);
    ev_io_set(&t->rio, t->fd, EV_READ);
    ev_io_start(loop, &t->rio);
    t->conn = TCP_CONNECTED;
    t->connected_at = ev_now(loop);
    set_state(t, EVI_SINK_UP, "connected");
    pump(t);
}

static void connect_failed(struct tcp_sink *t, int err)
{
    struct ev_loop *loop = t->base.loop;
    ev_timer_stop(loop, &t->conn_timer);
    ev_io_stop(loop, &t->wio);
    if (t->fd >= 0) {
        close(t->fd);
        t->fd = -1;
    }
    set_down_errno(t, "connect", err);
    schedule_retry(t);
    evi_sink_fail_fast(&t->base);
}

static void start_connect(struct tcp_sink *t)
{
    struct ev_loop *loop = t->base.loop;
    int fd = socket(t->dst.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        connect_failed(t, errno);
        return;
    }
    int one = 1, sndbuf = TCP_SNDBUF;
    /* we gather whole events into each write ourselves: no need to wait for ACKs */
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) == -1 ||
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)) == -1) {
        /* harmless: latency, or a bigger buffer */
    }
    t->fd = fd;
    t->conn = TCP_CONNECTING;
    if (connect(fd, (struct sockaddr *)&t->dst, t->dstlen) == 0) {
        connected(t);
        return;
    }
    int e = errno;
    if (e != EINPROGRESS && e != EINTR) { /* EINTR: the connect goes on asynchronously */
        connect_failed(t, e);
        return;
    }
    ev_io_set(&t->wio, fd, EV_WRITE);
    ev_io_start(loop, &t->wio);
    ev_timer_set(&t->conn_timer, evi_sink_config()->connect_timeout, 0.);
    ev_timer_start(loop, &t->conn_timer);
}

static void on_write(struct ev_loop *loop, ev_io *w, int revents)
{
    struct tcp_sink *t = w->data;
    if (t->conn == TCP_CONNECTING) {
        int err = 0;
        socklen_t sl = sizeof(err);
        if (getsockopt(t->fd, SOL_SOCKET, SO_ERROR, &err, &sl) == -1)
            err = errno;
        if (err)
            connect_failed(t, err);
        else
            connected(t);
        return;
    }
    int r = write_out(t);
    if (r < 0) {
        drop_conn_errno(t, "send", -r);
        return;
    }
    if (!ev_is_active(&t->wio))
        pump(t);
}

/* Reads and discards what the peer says; notices EOF and resets. */
static void on_read(struct ev_loop *loop, ev_io *w, int revents)
{
    struct tcp_sink *t = w->data;
    char buf[4096];
    for (int i = 0; i < TCP_READS_MAX; i++) {
        ssize_t n = read(t->fd, buf, sizeof(buf));
        if (n > 0)
            continue;
        if (n == 0) {
            drop_conn(t, -EPIPE, 0, "connection closed by the peer");
            return;
        }
        int e = errno;
        if (e == EINTR)
            continue;
        if (e == EAGAIN || e == EWOULDBLOCK)
            return;
        drop_conn_errno(t, "receive", e);
        return;
    }
}

static void on_connect_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    connect_failed(w->data, ETIMEDOUT);
}

/* Output waited: a peer that moved no byte for send_timeout is hung. The check is lazy
 * (one timer, re-armed for the remainder) so a write costs no timer update. */
static void on_stall(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct tcp_sink *t = w->data;
    double to = evi_sink_config()->send_timeout;
    double left = t->last_progress + to - ev_now(loop);
    if (left > 0.001) {
        ev_timer_set(&t->stall_timer, left, 0.);
        ev_timer_start(loop, &t->stall_timer);
        return;
    }
    char why[128];
    snprintf(why, sizeof(why), "peer not reading: no progress for %.1f s", to);
    drop_conn(t, -ETIMEDOUT, 1, why);
}

static void on_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct tcp_sink *t = w->data;
    t->conn = TCP_IDLE;
    start_connect(t);
}

static int tcp_open(struct evi_sink *s, int check_only, char *err, size_t errlen)
{
    struct tcp_sink *t = (struct tcp_sink *)s;
    const char *why;
    struct sockaddr_storage ss;
    unsigned sl = 0;
    if (evi_parse_ipport_why(s->addr, strlen(s->addr), &ss, &sl, &why) < 0) {
        snprintf(err, errlen, "%s: %s; expected tcp:IP:PORT or tcp:[IPv6]:PORT", sock_name(s), why);
        return -EINVAL;
    }
    if (check_only)
        return 0;
    t->ring = calloc(TCP_INFLIGHT_MAX, sizeof(*t->ring));
    if (!t->ring) {
        snprintf(err, errlen, "%s: out of memory", sock_name(s));
        return -ENOMEM;
    }
    t->dst = ss;
    t->dstlen = sl;
    t->fd = -1;
    t->backoff = EVI_BACKOFF_MIN;
    ev_io_init(&t->rio, on_read, -1, EV_READ);
    ev_io_init(&t->wio, on_write, -1, EV_WRITE);
    ev_timer_init(&t->conn_timer, on_connect_timeout, 1.0, 0.);
    ev_timer_init(&t->stall_timer, on_stall, 1.0, 0.);
    ev_timer_init(&t->retry_timer, on_retry, 1.0, 0.);
    t->rio.data = t->wio.data = t;
    t->conn_timer.data = t->stall_timer.data = t->retry_timer.data = t;
    /* a persistent connection: start it on the next loop turn (not from inside open,
     * where the core is still setting the sink up), so the first event finds it up */
    if (s->loop) {
        t->conn = TCP_BACKOFF;
        ev_timer_set(&t->retry_timer, 0., 0.);
        ev_timer_start(s->loop, &t->retry_timer);
    }
    return 0;
}

/* Cancels what is taken, stops every watcher, closes the connection. Never blocks. */
static void tcp_close(struct evi_sink *s)
{
    struct tcp_sink *t = (struct tcp_sink *)s;
    if (!t->ring)
        return; /* opened with check_only, or open failed */
    struct ev_loop *loop = s->loop;
    ev_io_stop(loop, &t->rio);
    ev_io_stop(loop, &t->wio);
    ev_timer_stop(loop, &t->conn_timer);
    ev_timer_stop(loop, &t->stall_timer);
    ev_timer_stop(loop, &t->retry_timer);
    if (t->fd >= 0) {
        close(t->fd);
        t->fd = -1;
    }
    while (t->rlen)
        evi_job_done(ring_pop(t), -ECANCELED);
    t->off = t->bytes = 0;
    free(t->ring);
    t->ring = NULL;
}

const struct evi_sink_ops evi_tcp_ops = {
    .scheme = "tcp",
    .size = sizeof(struct tcp_sink),
    .open = tcp_open,
    .flush = tcp_flush,
    .close = tcp_close,
};
