/* The metrics endpoint (SPEC §8): a minimal HTTP/1.x server (RFC 9112 request line only) on
 * core.metrics_listen that answers GET /metrics with the Prometheus text exposition format
 * 0.0.4: every stats.h counter, the event bus per event and per sink. Non-blocking on the
 * loop; each connection serves one request within a deadline and is closed. */
#include "metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "evi.h"
#include "json.h"
#include "log.h"
#include "stats.h"
#include "version.h"

#define METRICS_MAX_CLIENTS 32
#define METRICS_HEAD_MAX    8192            /* request head; more is 431 */
#define METRICS_BODY_MAX    (8 * 1024 * 1024)
#define METRICS_DEADLINE    10.0            /* s to send the request and take the answer */

struct mclient {
    int fd;
    ev_io rio, wio;
    ev_timer deadline;
    char in[METRICS_HEAD_MAX];
    size_t inlen;
    struct json_buf out;
    size_t outoff;
    struct mclient *prev, *next;
};

static struct {
    struct ev_loop *loop;
    int fd;
    ev_io io;
    ev_timer pause;
    struct mclient *clients;
    size_t nclients;
    char name[80];
} M = { .fd = -1 };

/* ------------------------------------------------------------------------------------------
 * exposition text */

/* A label value: backslash, double quote and newline escaped (exposition format 0.0.4). */
static void label_value(struct json_buf *b, const char *s)
{
    const char *run = s;
    for (; *s; s++) {
        const char *esc = *s == '\\' ? "\\\\" : *s == '"' ? "\\\"" : *s == '\n' ? "\\n" : NULL;
        if (!esc)
            continue;
        json_raw(b, run, (size_t)(s - run));
        json_rawz(b, esc);
        run = s + 1;
    }
    json_raw(b, run, (size_t)(s - run));
}

static void family(struct json_buf *b, const char *name, const char *type, const char *help)
{
    /* help texts are ours: no backslash or newline to escape */
    json_rawz(b, "# HELP ");
    json_rawz(b, name);
    json_rawz(b, " ");
    json_rawz(b, help);
    json_rawz(b, "\n# TYPE ");
    json_rawz(b, name);
    json_rawz(b, " ");
    json_rawz(b, type);
    json_rawz(b, "\n");
}

static void sample(struct json_buf *b, const char *name, const char *label, const char *value, uint64_t v)
{
    json_rawz(b, name);
    if (label) {
        json_rawz(b, "{");
        json_rawz(b, label);
        json_rawz(b, "=\"");
        label_value(b, value);
        json_rawz(b, "\"}");
    }
    json_rawz(b, " ");
    json_uint(b, v);
    json_rawz(b, "\n");
}

enum sink_field { SINK_QUEUED = 0, SINK_DELIVERED, SINK_FAILED, SINK_DROPPED };

static void sink_family(struct json_buf *b, const char *name, const char *type, const char *help,
                        enum sink_field f)
{
    size_t n = evi_sink_count();
    family(b, name, type, help);
    for (size_t i = 0; i < n; i++) {
        struct evi_sink_info si;
        if (evi_sink_info(i, &si) != 0)
            continue;
        uint64_t v = f == SINK_QUEUED ? si.queued : f == SINK_DELIVERED ? si.delivered
                   : f == SINK_FAILED ? si.failed : si.dropped;
        sample(b, name, "socket", si.socket, v);
    }
}

int metrics_render(struct json_buf *b)
{
    family(b, "lunasip_info", "gauge", "lunasip build information (always 1)");
    sample(b, "lunasip_info", "version", LUNASIP_VERSION, 1);

    char name[128];
    for (const struct stats_field *f = stats_fields; f->name; f++) {
        snprintf(name, sizeof(name), "lunasip_%s_total", f->name);
        family(b, name, "counter", f->help);
        sample(b, name, NULL, NULL, stats_get(f));
    }

    /* the event bus: per event, then per concrete sink (members of virtual: sets included) */
    size_t nev = evi_event_count();
    uint64_t nsubs = 0;
    family(b, "lunasip_event_raised_total", "counter", "times each event was raised");
    for (size_t id = 0; id < nev; id++) {
        struct evi_event_info ei;
        if (evi_event_info((int)id, &ei) != 0)
            continue;
        nsubs += ei.nsubs;
        sample(b, "lunasip_event_raised_total", "event", ei.name, ei.raised);
    }
    family(b, "lunasip_event_subscribers", "gauge", "subscriptions of each event");
    for (size_t id = 0; id < nev; id++) {
        struct evi_event_info ei;
        if (evi_event_info((int)id, &ei) == 0)
            sample(b, "lunasip_event_subscribers", "event", ei.name, ei.nsubs);
    }
    family(b, "lunasip_events_subscriptions", "gauge", "event subscriptions, every event");
    sample(b, "lunasip_events_subscriptions", NULL, NULL, nsubs);
    family(b, "lunasip_event_sinks", "gauge", "event sinks open");
    sample(b, "lunasip_event_sinks", NULL, NULL, evi_sink_count());

    sink_family(b, "lunasip_event_sink_delivered_total", "counter", "events delivered by each sink", SINK_DELIVERED);
    sink_family(b, "lunasip_event_sink_failed_total", "counter", "event delivery attempts that failed, by sink",
                SINK_FAILED);
    sink_family(b, "lunasip_event_sink_dropped_total", "counter", "events each sink lost (queue overflow, failure)",
                SINK_DROPPED);
    sink_family(b, "lunasip_event_sink_queued", "gauge", "events waiting in each sink's queue", SINK_QUEUED);
    family(b, "lunasip_event_sink_up", "gauge", "1 when the sink is up, 0 when down or not tried yet");
    for (size_t i = 0; i < evi_sink_count(); i++) {
        struct evi_sink_info si;
        if (evi_sink_info(i, &si) == 0)
            sample(b, "lunasip_event_sink_up", "socket", si.socket, strcmp(si.state, "up") == 0);
    }
    return b->oom ? -1 : 0;
}

/* ------------------------------------------------------------------------------------------
 * HTTP */

static void mclient_close(struct mclient *c)
{
    ev_io_stop(M.loop, &c->rio);
    ev_io_stop(M.loop, &c->wio);
    ev_timer_stop(M.loop, &c->deadline);
    close(c->fd);
    if (c->prev)
        c->prev->next = c->next;
    else
        M.clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    M.nclients--;
    json_buf_free(&c->out);
    free(c);
}

static void mclient_flush(struct mclient *c)
{
    while (c->outoff < c->out.len) {
        ssize_t n = send(c->fd, c->out.p + c->outoff, c->out.len - c->outoff, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                if (!ev_is_active(&c->wio))
                    ev_io_start(M.loop, &c->wio);
                return;
            }
            mclient_close(c);
            return;
        }
        c->outoff += (size_t)n;
    }
    /* all written: Connection: close */
    shutdown(c->fd, SHUT_WR);
    mclient_close(c);
}

static void on_mclient_write(struct ev_loop *loop, ev_io *w, int revents)
{
    mclient_flush(w->data);
}

static void on_mclient_deadline(struct ev_loop *loop, ev_timer *w, int revents)
{
    mclient_close(w->data);
}

/* Queues an answer: status line, headers, and (unless head_only) the body. */
static void answer(struct mclient *c, const char *status, const char *extra, const char *ctype, const char *body,
                   size_t blen, int head_only)
{
    char h[512];
    int n = snprintf(h, sizeof(h),
                     "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%sConnection: close\r\n\r\n", status,
                     ctype, blen, extra ? extra : "");
    json_raw(&c->out, h, (size_t)n);
    if (!head_only)
        json_raw(&c->out, body, blen);
    ev_io_stop(M.loop, &c->rio);
    if (c->out.oom) {
        mclient_close(c);
        return;
    }
    mclient_flush(c);
}

static void answer_text(struct mclient *c, const char *status, const char *extra, const char *text, int head_only)
{
    answer(c, status, extra, "text/plain; charset=utf-8", text, strlen(text), head_only);
}

/* The request head is complete: only its request line matters (RFC 9112 §3). */
static void serve(struct mclient *c, size_t headlen)
{
    const char *p = c->in, *end = c->in + headlen;
    const char *sp1 = memchr(p, ' ', (size_t)(end - p));
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    const char *sp2 = sp1 && eol ? memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1)) : NULL;
    if (!sp1 || !eol || !sp2 || sp1 > eol || sp1 == p) {
        answer_text(c, "400 Bad Request", NULL, "bad request line\n", 0);
        return;
    }
    size_t vlen = (size_t)(eol - sp2 - 1);
    if (vlen > 0 && sp2[vlen] == '\r')
        vlen--;
    if (vlen != 8 || (memcmp(sp2 + 1, "HTTP/1.1", 8) != 0 && memcmp(sp2 + 1, "HTTP/1.0", 8) != 0)) {
        answer_text(c, "400 Bad Request", NULL, "HTTP/1.0 or HTTP/1.1 only\n", 0);
        return;
    }
    size_t mlen = (size_t)(sp1 - p), tlen = (size_t)(sp2 - sp1 - 1);
    const char *target = sp1 + 1;
    int get = mlen == 3 && memcmp(p, "GET", 3) == 0, head = mlen == 4 && memcmp(p, "HEAD", 4) == 0;
    int is_metrics = (tlen == 8 && memcmp(target, "/metrics", 8) == 0) ||
                     (tlen > 8 && memcmp(target, "/metrics?", 9) == 0);
    if (!is_metrics) {
        answer_text(c, "404 Not Found", NULL, "not found; metrics are at /metrics\n", head);
        return;
    }
    if (!get && !head) {
        answer_text(c, "405 Method Not Allowed", "Allow: GET, HEAD\r\n", "only GET and HEAD\n", 0);
        return;
    }
    struct json_buf body = { .max = METRICS_BODY_MAX };
    if (metrics_render(&body) != 0) {
        json_buf_free(&body);
        answer_text(c, "500 Internal Server Error", NULL, "out of memory\n", head);
        return;
    }
    answer(c, "200 OK", NULL, "text/plain; version=0.0.4; charset=utf-8", body.p, body.len, head);
    json_buf_free(&body);
}

static void on_mclient_read(struct ev_loop *loop, ev_io *w, int revents)
{
    struct mclient *c = w->data;
    for (;;) {
        if (c->inlen == sizeof(c->in)) {
            answer_text(c, "431 Request Header Fields Too Large", NULL, "request head above 8192 bytes\n", 0);
            return;
        }
        ssize_t n = recv(c->fd, c->in + c->inlen, sizeof(c->in) - c->inlen, MSG_DONTWAIT);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            mclient_close(c);
            return;
        }
        if (n == 0) {
            mclient_close(c);
            return;
        }
        size_t scan = c->inlen > 3 ? c->inlen - 3 : 0;
        c->inlen += (size_t)n;
        /* the head ends at an empty line (CRLF CRLF, or bare LF LF as RFC 9112 §2.2 tolerates) */
        for (size_t i = scan; i < c->inlen; i++) {
            if (c->in[i] != '\n')
                continue;
            if ((i >= 1 && c->in[i - 1] == '\n') || (i >= 2 && c->in[i - 1] == '\r' && c->in[i - 2] == '\n')) {
                serve(c, i + 1);
                return;
            }
        }
    }
}

static void on_pause_over(struct ev_loop *loop, ev_timer *w, int revents)
{
    if (M.fd != -1)
        ev_io_start(loop, &M.io);
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
    for (int burst = 0; burst < 64; burst++) {
        int fd = accept4(M.fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd == -1) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            LOG_ERROR("metrics: accept: %s; pausing %s for 1 s", strerror(errno), M.name);
            ev_io_stop(loop, &M.io);
            ev_timer_set(&M.pause, 1.0, 0.);
            ev_timer_start(loop, &M.pause);
            return;
        }
        if (M.nclients >= METRICS_MAX_CLIENTS) {
            static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                                       "Connection: close\r\n\r\n";
            ssize_t rc = send(fd, busy, sizeof(busy) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
            (void)rc; /* best effort */
            close(fd);
            continue;
        }
        struct mclient *c = calloc(1, sizeof(*c));
        if (!c) {
            close(fd);
            continue;
        }
        c->fd = fd;
        c->out.max = METRICS_BODY_MAX + 1024;
        ev_io_init(&c->rio, on_mclient_read, fd, EV_READ);
        ev_io_init(&c->wio, on_mclient_write, fd, EV_WRITE);
        ev_timer_init(&c->deadline, on_mclient_deadline, METRICS_DEADLINE, 0.);
        c->rio.data = c->wio.data = c->deadline.data = c;
        c->next = M.clients;
        if (M.clients)
            M.clients->prev = c;
        M.clients = c;
        M.nclients++;
        ev_io_start(loop, &c->rio);
        ev_timer_start(loop, &c->deadline);
    }
}

/* "IPv4:PORT" or "[IPv6]:PORT" into sa. 0 or -1. */
static int parse_listen(const char *s, struct sockaddr_storage *sa, socklen_t *salen)
{
    char host[64];
    const char *colon;
    if (s[0] == '[') {
        const char *rb = strchr(s, ']');
        if (!rb || rb[1] != ':' || (size_t)(rb - s - 1) >= sizeof(host))
            return -1;
        memcpy(host, s + 1, (size_t)(rb - s - 1));
        host[rb - s - 1] = 0;
        colon = rb + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon || (size_t)(colon - s) >= sizeof(host))
            return -1;
        memcpy(host, s, (size_t)(colon - s));
        host[colon - s] = 0;
    }
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || end == colon + 1 || port < 1 || port > 65535)
        return -1;
    memset(sa, 0, sizeof(*sa));
    struct sockaddr_in *s4 = (struct sockaddr_in *)sa;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)sa;
    if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        *salen = sizeof(*s4);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        *salen = sizeof(*s6);
        return 0;
    }
    return -1;
}

int metrics_start(struct ev_loop *loop, const char *listen_on, char *err, size_t errlen)
{
    struct sockaddr_storage sa;
    socklen_t salen;
    if (M.fd != -1) {
        snprintf(err, errlen, "the metrics endpoint is already open");
        return -1;
    }
    if (parse_listen(listen_on, &sa, &salen) != 0) {
        snprintf(err, errlen, "%s: expected IPv4:PORT or [IPv6]:PORT", listen_on);
        return -1;
    }
    int fd = socket(sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        snprintf(err, errlen, "%s: socket: %s", listen_on, strerror(errno));
        return -1;
    }
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == -1 ||
        (sa.ss_family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) == -1) ||
        bind(fd, (struct sockaddr *)&sa, salen) == -1 || listen(fd, 64) == -1) {
        snprintf(err, errlen, "%s: %s", listen_on, strerror(errno));
        close(fd);
        return -1;
    }
    M.loop = loop;
    M.fd = fd;
    snprintf(M.name, sizeof(M.name), "%s", listen_on);
    ev_io_init(&M.io, on_accept, fd, EV_READ);
    ev_io_start(loop, &M.io);
    ev_init(&M.pause, on_pause_over);
    LOG_NOTICE("metrics on http://%s/metrics", listen_on);
    return 0;
}

void metrics_stop(void)
{
    if (M.fd == -1)
        return;
    while (M.clients)
        mclient_close(M.clients);
    ev_io_stop(M.loop, &M.io);
    ev_timer_stop(M.loop, &M.pause);
    close(M.fd);
    M.fd = -1;
}
