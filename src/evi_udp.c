/* Event sinks udp: and unix: (SPEC §6): every job is one datagram carrying exactly the
 * JSON-RPC notification (no newline), sent from the event loop on a connected non-blocking
 * socket. Also evi_parse_ipport, the "IP:PORT" parser the core and the other drivers share.
 *
 * Failure semantics (README "Event sinks"):
 *
 * udp:IP:PORT, udp:[IPv6]:PORT (literal addresses only: no DNS yet)
 *   delivered  the kernel accepted the datagram and no ICMP error for it had come back by
 *              the end of the flush that sent it. On loopback a closed port answers during
 *              the send itself, so every datagram to it is counted failed; across a network
 *              the ICMP error may come later, and then the next send reports it.
 *   failed     a send error: ECONNREFUSED (nobody listens), ENETUNREACH, EHOSTUNREACH,
 *              EPERM (a firewall), ...: the job fails with that errno and the sink goes
 *              DOWN. A payload above 65507 bytes (65527 over IPv6) fails with EMSGSIZE
 *              without changing the state.
 *   up         the next datagram delivered brings the sink UP again. While DOWN jobs are
 *              still sent: each datagram is the probe that tells when the receiver is back.
 *              A virtual: set sends nothing to a DOWN member, so after 0.5 s (doubling up
 *              to events.retry_max while probes keep failing) the sink leaves DOWN for
 *              UNKNOWN, and the next event tries it again.
 *   slow       EAGAIN (our socket buffer is full): no more jobs are taken; the one that
 *              got EAGAIN is sent when the socket turns writable. If it does not within
 *              events.send_timeout, that job fails with ETIMEDOUT and the sink goes DOWN.
 *
 * unix:/absolute/path (a datagram socket; the path is at most 107 bytes)
 *   delivered  the datagram is in the receiver's queue (the kernel says so synchronously).
 *   failed     no receiver: the path is missing (ENOENT), nobody is bound to it or the
 *              receiver went away (ECONNREFUSED): the job fails and the sink goes DOWN.
 *              A receiver restarted on the same path is found again by reconnecting,
 *              which is tried once per job.
 *   up         while DOWN the path is connected to again after 0.5 s, doubling up to
 *              events.retry_max: once a receiver is bound the sink is UP without an
 *              event having to be lost on it.
 *   slow       the receiver's queue is full (EAGAIN): wait for room up to
 *              events.send_timeout, then as for udp.
 *
 * sendmmsg is not used: it returns the count sent and drops the error of the datagram that
 * stopped the batch, and that error (ECONNREFUSED) is what tells a dead receiver. One send
 * per datagram and one SO_ERROR check per flush keep every refusal attributed. */
#include "evi_sink.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>


#define DG_FLUSH_MAX   256      /* datagrams per flush; the core calls again for the rest */
#define UDP4_MAX_PAYLOAD 65507  /* 65535 - 20 (IPv4) - 8 (UDP) */
#define UDP6_MAX_PAYLOAD 65527  /* 65535 - 8: the IPv6 payload length excludes its header */

/* ---------------------------------------------------------------------------------------- */
/* IP:PORT                                                                                   */

/* Parses "a.b.c.d:PORT" or "[v6]:PORT" (len bytes, not NUL-terminated). On failure *why
 * says what is wrong in words an operator can act on. Refuses host names (no DNS yet),
 * IPv6 without brackets, zone ids, ports outside 1..65535 and any trailing text. */
int evi_parse_ipport_why(const char *s, size_t len, struct sockaddr_storage *ss, unsigned *sslen,
                         const char **why)
{
    const char *dummy;
    if (!why)
        why = &dummy;
    *why = NULL;
    if (len == 0) {
        *why = "address missing";
        return -EINVAL;
    }
    char host[INET6_ADDRSTRLEN + 1];
    const char *port;
    size_t plen;
    int v6 = s[0] == '[';
    if (v6) {
        const char *rb = memchr(s, ']', len);
        if (!rb) {
            *why = "unterminated [IPv6] address";
            return -EINVAL;
        }
        size_t hlen = (size_t)(rb - s - 1);
        if (hlen == 0 || hlen >= sizeof(host)) {
            *why = "bad IPv6 address";
            return -EINVAL;
        }
        memcpy(host, s + 1, hlen);
        host[hlen] = 0;
        if (memchr(host, '%', hlen)) {
            *why = "IPv6 zone ids are not supported";
            return -EINVAL;
        }
        const char *after = rb + 1;
        size_t alen = len - (size_t)(after - s);
        if (alen == 0) {
            *why = "port missing";
            return -EINVAL;
        }
        if (after[0] != ':') {
            *why = "unexpected text after the ]";
            return -EINVAL;
        }
        port = after + 1;
        plen = alen - 1;
    } else {
        const char *colon = memchr(s, ':', len);
        size_t hlen = colon ? (size_t)(colon - s) : len;
        if (colon && memchr(colon + 1, ':', len - hlen - 1)) {
            *why = "an IPv6 address must be written in brackets, [IPv6]:PORT";
            return -EINVAL;
        }
        int name = 0;
        for (size_t i = 0; i < hlen; i++)
            if ((s[i] | 0x20) >= 'a' && (s[i] | 0x20) <= 'z')
                name = 1;
        if (name) {
            *why = "host names are not supported (no DNS yet), give an IP address";
            return -EINVAL;
        }
        if (hlen == 0 || hlen >= sizeof(host)) {
            *why = hlen ? "bad IPv4 address" : "address missing";
            return -EINVAL;
        }
        memcpy(host, s, hlen);
        host[hlen] = 0;
        if (!colon) {
            struct in_addr a;
            *why = inet_pton(AF_INET, host, &a) == 1 ? "port missing" : "bad IPv4 address";
            return -EINVAL;
        }
        port = colon + 1;
        plen = len - hlen - 1;
    }
    if (plen == 0) {
        *why = "port missing";
        return -EINVAL;
    }
    unsigned long p = 0;
    for (size_t i = 0; i < plen; i++) {
        if (port[i] < '0' || port[i] > '9') {
            *why = "the port is not a number";
            return -EINVAL;
        }
        if (p <= 65535)
            p = p * 10 + (unsigned long)(port[i] - '0');
    }
    if (p == 0 || p > 65535) {
        *why = "port out of range 1..65535";
        return -EINVAL;
    }
    memset(ss, 0, sizeof(*ss));
    if (v6) {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
        if (inet_pton(AF_INET6, host, &a6->sin6_addr) != 1) {
            *why = "bad IPv6 address";
            return -EINVAL;
        }
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)p);
        *sslen = sizeof(*a6);
    } else {
        struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
        if (inet_pton(AF_INET, host, &a4->sin_addr) != 1) {
            *why = "bad IPv4 address";
            return -EINVAL;
        }
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)p);
        *sslen = sizeof(*a4);
    }
    return 0;
}

int evi_parse_ipport(const char *s, size_t len, struct sockaddr_storage *ss, unsigned *sslen)
{
    return evi_parse_ipport_why(s, len, ss, sslen, NULL);
}

/* ---------------------------------------------------------------------------------------- */
/* the datagram sinks                                                                        */

struct dgram_sink {
    struct evi_sink base;
    int fd;                       /* -1 until the first job (and after a unix receiver left) */
    int is_unix;
    struct sockaddr_storage dst;
    socklen_t dstlen;
    size_t max_payload;           /* 0 = the kernel's limit (unix) */
    struct evi_job *prev;         /* udp: sent; reported once no ICMP error showed for it */
    struct evi_job *blocked;      /* taken, got EAGAIN: goes first when writable */
    ev_io wio;
    ev_timer wtimer;              /* send_timeout while blocked */
    ev_timer rtimer;              /* while DOWN: when to try the receiver again */
    double backoff;
};

/* The socket as logs and errors show it (passwords masked by the core). */
static const char *sock_name(const struct evi_sink *s)
{
    return s->shown ? s->shown : s->socket ? s->socket : s->addr;
}

static void set_state(struct dgram_sink *d, enum evi_sink_state st, const char *why)
{
    if (d->base.state == st)
        return;
    struct ev_loop *loop = d->base.loop;
    if (st == EVI_SINK_DOWN) {
        ev_timer_stop(loop, &d->rtimer);
        ev_timer_set(&d->rtimer, evi_sink_backoff(&d->backoff), 0.);
        ev_timer_start(loop, &d->rtimer);
    } else if (st == EVI_SINK_UP) {
        ev_timer_stop(loop, &d->rtimer);
        d->backoff = EVI_BACKOFF_MIN;
    }
    evi_sink_set_state(&d->base, st, why);
}

/* Errors that say something about the receiver (it is DOWN), as opposed to one job. */
static int is_dest_error(int err)
{
    return err != EMSGSIZE && err != ENOBUFS && err != ENOMEM;
}

/* Reports j failed with -err; when the error is the receiver's, the sink goes DOWN first,
 * so a virtual: set that retries the job elsewhere already sees this member down. */
static void job_fail(struct dgram_sink *d, struct evi_job *j, int err)
{
    if (is_dest_error(err) && d->base.state != EVI_SINK_DOWN) {
        char why[160];
        snprintf(why, sizeof(why), "send: %s", strerror(err));
        set_state(d, EVI_SINK_DOWN, why);
    }
    evi_job_done(j, -err);
}

static void dg_close_fd(struct dgram_sink *d)
{
    if (d->fd < 0)
        return;
    ev_io_stop(d->base.loop, &d->wio);
    close(d->fd);
    d->fd = -1;
}

/* Opens and connects the socket. For unix: the receiver must be bound now (ENOENT,
 * ECONNREFUSED otherwise). Returns 0 or a negative errno. */
static int dg_connect(struct dgram_sink *d)
{
    int fd = socket(d->dst.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1)
        return -errno;
    for (;;) {
        if (connect(fd, (struct sockaddr *)&d->dst, d->dstlen) == 0)
            break;
        int e = errno;
        if (e == EINTR)
            continue;
        close(fd);
        return -e;
    }
    d->fd = fd;
    ev_io_set(&d->wio, fd, EV_WRITE);
    return 0;
}

/* A datagram went out. unix: it is in the receiver's queue, done. udp: the previous one
 * is confirmed (this send would have failed had an ICMP error come back for it), and
 * this one waits for the next send or for settle(). */
static void dg_sent(struct dgram_sink *d, struct evi_job *j)
{
    if (d->is_unix) {
        set_state(d, EVI_SINK_UP, "the receiver takes datagrams");
        evi_job_done(j, 0);
        return;
    }
    struct evi_job *p = d->prev;
    d->prev = j;
    if (p) {
        set_state(d, EVI_SINK_UP, "datagrams accepted");
        evi_job_done(p, 0);
    }
}

/* udp: reports the datagram last sent, delivered unless the socket holds an error for it
 * (the ICMP port unreachable of a loopback receiver arrives during the send). */
static void dg_settle(struct dgram_sink *d)
{
    struct evi_job *p = d->prev;
    if (!p)
        return;
    d->prev = NULL;
    int soerr = 0;
    socklen_t sl = sizeof(soerr);
    if (d->fd >= 0 && getsockopt(d->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == -1)
        soerr = 0; /* cannot tell: the kernel took the datagram, count it delivered */
    if (soerr) {
        job_fail(d, p, soerr);
        return;
    }
    set_state(d, EVI_SINK_UP, "datagrams accepted");
    evi_job_done(p, 0);
}

/* Sends j. Returns 0 when j was consumed (sent, or failed and reported), -EAGAIN when the
 * socket has no room (j is still the caller's). */
static int dg_send(struct dgram_sink *d, struct evi_job *j)
{
    size_t len;
    const char *p = evi_job_json(j, &len);
    if (d->max_payload && len > d->max_payload) {
        evi_job_done(j, -EMSGSIZE);
        return 0;
    }
    int retried = 0;
    for (;;) {
        if (d->fd < 0) {
            int r = dg_connect(d);
            if (r < 0) {
                job_fail(d, j, -r);
                return 0;
            }
        }
        if (send(d->fd, p, len, MSG_DONTWAIT | MSG_NOSIGNAL) != -1) {
            dg_sent(d, j);
            return 0;
        }
        int e = errno;
        if (e == EINTR)
            continue;
        if (e == EAGAIN || e == EWOULDBLOCK)
            return -EAGAIN;
        if (!retried && d->is_unix && (e == ECONNREFUSED || e == ENOTCONN || e == ECONNRESET || e == EPIPE)) {
            /* our peer socket is gone; a receiver restarted on the path is a new one */
            retried = 1;
            dg_close_fd(d);
            continue;
        }
        if (!retried && !d->is_unix && e == ECONNREFUSED && d->prev) {
            /* the refusal is the previous datagram's: this one did not leave, try it now */
            retried = 1;
            struct evi_job *pj = d->prev;
            d->prev = NULL;
            job_fail(d, pj, ECONNREFUSED);
            continue;
        }
        job_fail(d, j, e);
        return 0;
    }
}

static void dg_block(struct dgram_sink *d, struct evi_job *j)
{
    d->blocked = j;
    ev_io_start(d->base.loop, &d->wio);
    if (!ev_is_active(&d->wtimer)) {
        double to = evi_sink_config()->send_timeout;
        ev_timer_set(&d->wtimer, to > 0 ? to : 1.0, 0.);
        ev_timer_start(d->base.loop, &d->wtimer);
    }
}

/* Takes and sends jobs until the queue is empty, the socket is full or DG_FLUSH_MAX went
 * out (then asks the core for another turn, so a burst of events cannot hold the loop). */
static void dg_run(struct dgram_sink *d)
{
    int n = 0;
    while (!d->blocked) {
        if (n == DG_FLUSH_MAX) {
            if (evi_sink_queued(&d->base))
                evi_sink_kick(&d->base);
            break;
        }
        struct evi_job *j = evi_sink_take(&d->base);
        if (!j)
            break;
        n++;
        if (dg_send(d, j) == -EAGAIN)
            dg_block(d, j);
    }
    if (!d->is_unix)
        dg_settle(d);
}

static void dg_flush(struct evi_sink *s)
{
    dg_run((struct dgram_sink *)s);
}

static void on_writable(struct ev_loop *loop, ev_io *w, int revents)
{
    struct dgram_sink *d = w->data;
    ev_io_stop(loop, &d->wio);
    struct evi_job *j = d->blocked;
    d->blocked = NULL;
    if (j && dg_send(d, j) == -EAGAIN) {
        d->blocked = j;            /* spurious wake-up: the deadline stays */
        ev_io_start(loop, &d->wio);
        return;
    }
    ev_timer_stop(loop, &d->wtimer);
    dg_run(d);
}

static void on_send_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct dgram_sink *d = w->data;
    ev_io_stop(loop, &d->wio);
    struct evi_job *j = d->blocked;
    d->blocked = NULL;
    char why[128];
    snprintf(why, sizeof(why), "%s for %.1f s", d->is_unix ? "receiver's queue full" : "socket buffer full",
             evi_sink_config()->send_timeout);
    set_state(d, EVI_SINK_DOWN, why);
    if (j)
        evi_job_done(j, -ETIMEDOUT);
    if (!d->is_unix)
        dg_settle(d);
    if (evi_sink_queued(&d->base))
        evi_sink_kick(&d->base);
}

/* The receiver was DOWN for a while. unix: connect to the path again (no datagram is
 * needed to know a receiver is bound). udp: only a datagram can tell, so the sink becomes
 * UNKNOWN and the next event (a virtual: set's too) is the probe. */
static void on_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct dgram_sink *d = w->data;
    if (d->base.state != EVI_SINK_DOWN || d->blocked)
        return; /* blocked: on_writable or on_send_timeout decides */
    if (!d->is_unix) {
        evi_sink_set_state(&d->base, EVI_SINK_UNKNOWN, NULL);
        if (evi_sink_queued(&d->base))
            evi_sink_kick(&d->base);
        return;
    }
    dg_close_fd(d);
    int r = dg_connect(d);
    if (r == 0) {
        set_state(d, EVI_SINK_UP, "a receiver is bound again");
        if (evi_sink_queued(&d->base))
            evi_sink_kick(&d->base);
        return;
    }
    ev_timer_set(&d->rtimer, evi_sink_backoff(&d->backoff), 0.);
    ev_timer_start(loop, &d->rtimer);
}

static void dg_init(struct dgram_sink *d)
{
    d->fd = -1;
    d->backoff = EVI_BACKOFF_MIN;
    ev_timer_init(&d->rtimer, on_retry, 1.0, 0.);
    d->rtimer.data = d;
    ev_io_init(&d->wio, on_writable, -1, EV_WRITE);
    d->wio.data = d;
    ev_timer_init(&d->wtimer, on_send_timeout, 1.0, 0.);
    d->wtimer.data = d;
}

static int udp_open(struct evi_sink *s, int check_only, char *err, size_t errlen)
{
    struct dgram_sink *d = (struct dgram_sink *)s;
    const char *why;
    unsigned sl = 0;
    struct sockaddr_storage ss;
    if (evi_parse_ipport_why(s->addr, strlen(s->addr), &ss, &sl, &why) < 0) {
        snprintf(err, errlen, "%s: %s; expected udp:IP:PORT or udp:[IPv6]:PORT", sock_name(s), why);
        return -EINVAL;
    }
    if (check_only)
        return 0;
    d->dst = ss;
    d->dstlen = sl;
    d->is_unix = 0;
    d->max_payload = ss.ss_family == AF_INET6 ? UDP6_MAX_PAYLOAD : UDP4_MAX_PAYLOAD;
    dg_init(d);
    return 0;
}

static int unix_open(struct evi_sink *s, int check_only, char *err, size_t errlen)
{
    struct dgram_sink *d = (struct dgram_sink *)s;
    const char *path = s->addr;
    size_t len = strlen(path);
    struct sockaddr_un un;
    const char *why = NULL;
    if (len == 0)
        why = "path missing";
    else if (path[0] != '/')
        why = "the path must be absolute";
    else if (len > sizeof(un.sun_path) - 1)
        why = "path longer than 107 bytes";
    if (why) {
        snprintf(err, errlen, "%s: %s; expected unix:/absolute/path of a datagram socket", sock_name(s), why);
        return -EINVAL;
    }
    if (check_only)
        return 0;
    memset(&un, 0, sizeof(un));
    un.sun_family = AF_UNIX;
    memcpy(un.sun_path, path, len + 1);
    memset(&d->dst, 0, sizeof(d->dst));
    memcpy(&d->dst, &un, sizeof(un));
    d->dstlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
    d->is_unix = 1;
    d->max_payload = 0;
    dg_init(d);
    return 0;
}

/* Completes what was taken (the datagram sent last counts delivered: the kernel has it),
 * stops the watchers, closes the socket. Never blocks. */
static void dg_close(struct evi_sink *s)
{
    struct dgram_sink *d = (struct dgram_sink *)s;
    ev_timer_stop(s->loop, &d->wtimer);
    ev_timer_stop(s->loop, &d->rtimer);
    ev_io_stop(s->loop, &d->wio);
    struct evi_job *p = d->prev, *b = d->blocked;
    d->prev = d->blocked = NULL;
    if (p)
        evi_job_done(p, 0);
    if (b)
        evi_job_done(b, -ECANCELED);
    dg_close_fd(d);
}

const struct evi_sink_ops evi_udp_ops = {
    .scheme = "udp",
    .size = sizeof(struct dgram_sink),
    .open = udp_open,
    .flush = dg_flush,
    .close = dg_close,
};

const struct evi_sink_ops evi_unix_ops = {
    .scheme = "unix",
    .size = sizeof(struct dgram_sink),
    .open = unix_open,
    .flush = dg_flush,
    .close = dg_close,
};
