/* Event sink http:// (SPEC §6): each JSON-RPC notification is POSTed to the URL, one
 * request at a time on a keep-alive HTTP/1.1 connection driven by the event loop (RFC 9112:
 * message framing by Content-Length, chunked or close, §6.3; persistence, §9.3). No https.
 *
 * Failure semantics (README "Event sinks"), http://IP:PORT/path or http://[IPv6]:PORT/path:
 *   delivered  the server answered 2xx.
 *   failed     any other final status (EPROTO): the connection stays open when the
 *              answer was well framed; no answer within events.send_timeout of the
 *              request's start (ETIMEDOUT); the connection closed or reset before the
 *              answer (ECONNRESET); an answer that is not HTTP/1.x or whose head passes
 *              HTTP_HEAD_MAX bytes (EPROTO). The last three also set the sink DOWN.
 *   state      UP once the server answers (whatever the status) or, after being DOWN,
 *              accepts a connection again; DOWN when a connect fails (refused, or not done
 *              within events.connect_timeout) or an exchange fails as above. While DOWN
 *              it reconnects after 0.5 s doubling up to events.retry_max; the delay starts
 *              over with the next answer. The connection is opened when the first event
 *              comes and kept open.
 *   waiting    jobs are taken one at a time, only on a connected, idle connection: while
 *              connecting or waiting to reconnect they stay in the core's queue
 *              (events.queue_limit, events.overflow). While DOWN, a job of a virtual: set
 *              that has other members to try fails at once (ENOTCONN).
 *   keep-alive a server that closes an idle connection is fine: the next event opens a new
 *              one. A request sent on a reused connection that dies before any byte of the
 *              answer is sent again once on a new connection (the server closed it while
 *              the request was on its way; it never saw it). "Connection: close" and
 *              HTTP/1.0 answers close the connection after the body.
 *   bounded    an answer's head is at most HTTP_HEAD_MAX bytes, its body (discarded) at most
 *              HTTP_BODY_MAX: beyond, the connection is closed (the status already counted). */
#include "evi_sink.h"

#include <errno.h>
#include <ev.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "log.h"
#include "version.h"

#define HTTP_HEAD_MAX   8192          /* bytes of a response head */
#define HTTP_BODY_MAX   (1024 * 1024) /* bytes of a response body we read to keep the connection */
#define HTTP_LINE_MAX   1024          /* a chunk-size line or one trailer line */
#define HTTP_PATH_MAX   2048
#define HTTP_READS_MAX  16            /* reads per wake-up */

enum http_conn {
    H_IDLE = 0,     /* no connection (none yet, or closed after an answer) */
    H_CONNECTING,
    H_READY,        /* connected */
    H_BACKOFF,      /* waiting to reconnect after a failure */
};

enum http_rx {
    RX_NONE = 0,    /* no exchange: bytes from the server are a protocol error */
    RX_HEAD,
    RX_LEN,         /* body framed by Content-Length */
    RX_CHUNK_SIZE,
    RX_CHUNK_DATA,
    RX_CHUNK_END,   /* the CRLF after a chunk's data */
    RX_TRAILER,
    RX_CLOSE,       /* body framed by the end of the connection */
};

struct http_sink {
    struct evi_sink base;
    struct sockaddr_storage dst;
    unsigned dstlen;
    char *host;                /* the Host header: the URL's authority as written */
    char *path;
    int fd;
    enum http_conn conn;
    unsigned served;           /* answers completed on this connection */
    int busy;                  /* an exchange runs (request out, answer not complete) */
    struct evi_job *job;       /* the job of the exchange, until its status is known */
    char *req;                 /* the request head */
    size_t req_len, req_cap;
    const char *body;          /* borrowed from job */
    size_t body_len, sent;
    enum http_rx rx;
    int rx_any;                /* a byte of the answer arrived */
    int keep_alive;
    char *hbuf;                /* the answer's head, HTTP_HEAD_MAX */
    size_t hlen;
    char line[HTTP_LINE_MAX];
    size_t llen;
    uint64_t remaining, body_total, trailer_total;
    int last_status;
    double backoff;
    ev_io rio, wio;
    ev_timer conn_timer, xchg_timer, retry_timer;
};

/* The socket as logs and errors show it (passwords masked by the core). */
static const char *sock_name(const struct evi_sink *s)
{
    return s->shown ? s->shown : s->socket ? s->socket : s->addr;
}

static void set_down(struct http_sink *h, const char *why)
{
    if (h->base.state != EVI_SINK_DOWN)
        evi_sink_set_state(&h->base, EVI_SINK_DOWN, why);
}

static void set_down_errno(struct http_sink *h, const char *what, int err)
{
    if (h->base.state == EVI_SINK_DOWN)
        return;
    char why[160];
    snprintf(why, sizeof(why), "%s: %s", what, strerror(err));
    evi_sink_set_state(&h->base, EVI_SINK_DOWN, why);
}

static void pump(struct http_sink *h);
static void start_connect(struct http_sink *h);

/* Forgets the connection (no state change, no job touched). */
static void close_conn(struct http_sink *h)
{
    struct ev_loop *loop = h->base.loop;
    ev_io_stop(loop, &h->rio);
    ev_io_stop(loop, &h->wio);
    ev_timer_stop(loop, &h->conn_timer);
    if (h->fd >= 0) {
        close(h->fd);
        h->fd = -1;
    }
    h->conn = H_IDLE;
    h->served = 0;
}

/* Ends the exchange (the job is reported already, or given back). */
static void end_exchange(struct http_sink *h)
{
    ev_timer_stop(h->base.loop, &h->xchg_timer);
    h->busy = 0;
    h->job = NULL;
    h->rx = RX_NONE;
    h->hlen = h->llen = 0;
}

static void schedule_retry(struct http_sink *h)
{
    h->conn = H_BACKOFF;
    ev_timer_stop(h->base.loop, &h->retry_timer);
    ev_timer_set(&h->retry_timer, evi_sink_backoff(&h->backoff), 0.);
    ev_timer_start(h->base.loop, &h->retry_timer);
}

/* The exchange failed before its status was known: the job fails with err, the sink goes
 * DOWN (why), the connection is closed and a reconnect scheduled. */
static void exchange_failed(struct http_sink *h, int err, const char *why)
{
    struct evi_job *j = h->job;
    close_conn(h);
    end_exchange(h);
    schedule_retry(h);
    set_down(h, why);
    if (j)
        evi_job_done(j, err);
}

/* The connection broke: err is a positive errno (reset, write error), 0 for an orderly close
 * by the server. */
static void conn_broken(struct http_sink *h, int err, const char *what)
{
    if (!h->busy || h->rx == RX_CLOSE) {
        /* idle: the server closed a keep-alive connection; or the body ended with it */
        close_conn(h);
        end_exchange(h);
        pump(h);
        return;
    }
    if (!h->job) {
        /* the status was counted; the body was cut short: only the connection is lost */
        close_conn(h);
        end_exchange(h);
        pump(h);
        return;
    }
    if (!h->rx_any && h->served > 0) {
        /* a reused connection the server had closed while our request was on its way:
         * it never saw the request. Send it again, once, on a new connection (served is
         * 0 there, so a second failure fails the job). */
        struct evi_job *j = h->job;
        close_conn(h);
        end_exchange(h);
        evi_sink_untake(&h->base, j);
        start_connect(h);
        return;
    }
    char why[160];
    if (err == 0)
        snprintf(why, sizeof(why), "%s before the answer", what);
    else
        snprintf(why, sizeof(why), "%s before the answer: %s", what, strerror(err));
    exchange_failed(h, err ? -err : -ECONNRESET, why);
}

/* ---------------------------------------------------------------------------------------- */
/* the answer                                                                                */

static int lower_eq(const char *a, size_t alen, const char *lit)
{
    size_t n = strlen(lit);
    return alen == n && strncasecmp(a, lit, n) == 0;
}

static void trim(const char **p, size_t *n)
{
    while (*n && (**p == ' ' || **p == '\t')) {
        (*p)++;
        (*n)--;
    }
    while (*n && ((*p)[*n - 1] == ' ' || (*p)[*n - 1] == '\t' || (*p)[*n - 1] == '\r'))
        (*n)--;
}

/* Whether the comma-separated list v (n bytes) holds token tok; *last is set to whether it
 * is the last element. */
static int has_token(const char *v, size_t n, const char *tok, int *last)
{
    int found = 0;
    if (last)
        *last = 0;
    while (n) {
        const char *c = memchr(v, ',', n);
        size_t el = c ? (size_t)(c - v) : n;
        const char *e = v;
        size_t en = el;
        trim(&e, &en);
        int is = lower_eq(e, en, tok);
        found |= is;
        if (last)
            *last = is;
        if (!c)
            break;
        v = c + 1;
        n -= el + 1;
    }
    return found;
}

struct head {
    int status, minor;
    int chunked, te_other, has_len, conn_close, conn_keep;
    uint64_t len;
};

/* Parses a complete answer head (b, n bytes, ending with its empty line). 0 or -EPROTO
 * (not an HTTP/1.x status line, a header line without colon, a bad or conflicting
 * Content-Length). */
static int parse_head(const char *b, size_t n, struct head *hd)
{
    memset(hd, 0, sizeof(*hd));
    const char *nl = memchr(b, '\n', n);
    if (!nl)
        return -EPROTO;
    size_t sl = (size_t)(nl - b);
    if (sl && b[sl - 1] == '\r')
        sl--;
    if (sl < 12 || memcmp(b, "HTTP/1.", 7) != 0 || b[7] < '0' || b[7] > '9' || b[8] != ' ')
        return -EPROTO;
    for (int i = 9; i < 12; i++)
        if (b[i] < '0' || b[i] > '9')
            return -EPROTO;
    if (sl > 12 && b[12] != ' ')
        return -EPROTO;
    hd->minor = b[7] - '0';
    hd->status = (b[9] - '0') * 100 + (b[10] - '0') * 10 + (b[11] - '0');
    if (hd->status < 100)
        return -EPROTO;
    const char *p = nl + 1, *end = b + n;
    while (p < end) {
        const char *e = memchr(p, '\n', (size_t)(end - p));
        size_t ln = e ? (size_t)(e - p) : (size_t)(end - p);
        const char *next = e ? e + 1 : end;
        if (ln && p[ln - 1] == '\r')
            ln--;
        if (ln == 0)
            break; /* the empty line */
        if (p[0] == ' ' || p[0] == '\t') {
            p = next; /* obsolete folding of a header we do not read */
            continue;
        }
        const char *colon = memchr(p, ':', ln);
        if (!colon || colon == p)
            return -EPROTO;
        size_t nlen = (size_t)(colon - p);
        const char *v = colon + 1;
        size_t vn = ln - nlen - 1;
        trim(&v, &vn);
        if (lower_eq(p, nlen, "content-length")) {
            uint64_t x = 0;
            if (vn == 0 || vn > 18)
                return -EPROTO;
            for (size_t i = 0; i < vn; i++) {
                if (v[i] < '0' || v[i] > '9')
                    return -EPROTO;
                x = x * 10 + (uint64_t)(v[i] - '0');
            }
            if (hd->has_len && hd->len != x)
                return -EPROTO;
            hd->has_len = 1;
            hd->len = x;
        } else if (lower_eq(p, nlen, "transfer-encoding")) {
            int last;
            if (has_token(v, vn, "chunked", &last) && last)
                hd->chunked = 1;
            else
                hd->te_other = 1;
        } else if (lower_eq(p, nlen, "connection")) {
            if (has_token(v, vn, "close", NULL))
                hd->conn_close = 1;
            if (has_token(v, vn, "keep-alive", NULL))
                hd->conn_keep = 1;
        }
        p = next;
    }
    return 0;
}

/* The answer is complete. */
static void answer_done(struct http_sink *h)
{
    int keep = h->keep_alive && h->sent == h->req_len + h->body_len;
    end_exchange(h);
    h->backoff = EVI_BACKOFF_MIN;
    if (keep)
        h->served++;
    else
        close_conn(h);
    pump(h);
}

/* A final status arrived: the job is reported now, the body is read (and discarded) only
 * to keep the connection. */
static void report_status(struct http_sink *h, int status)
{
    struct evi_job *j = h->job;
    h->job = NULL;
    if (h->base.state != EVI_SINK_UP) {
        char why[64];
        snprintf(why, sizeof(why), "answered %d", status);
        evi_sink_set_state(&h->base, EVI_SINK_UP, why);
    }
    int ok = status >= 200 && status <= 299;
    if (!ok && status != h->last_status)
        LOG_WARN("event socket %s: POST answered %d: events to it count as failed", sock_name(&h->base),
                 status);
    h->last_status = status;
    if (j)
        evi_job_done(j, ok ? 0 : -EPROTO);
}

/* Appends to the line buffer up to and including a newline. Returns bytes used; *done is
 * set when the line is complete (the line is then line[0..llen) without CR/LF), -1 when
 * it passes HTTP_LINE_MAX. */
static ssize_t line_take(struct http_sink *h, const char *p, size_t n, int *done)
{
    const char *nl = memchr(p, '\n', n);
    size_t take = nl ? (size_t)(nl - p) + 1 : n;
    *done = nl != NULL;
    size_t data = nl ? take - 1 : take;
    if (h->llen + data > sizeof(h->line))
        return -1;
    memcpy(h->line + h->llen, p, data);
    h->llen += data;
    if (*done && h->llen && h->line[h->llen - 1] == '\r')
        h->llen--;
    return (ssize_t)take;
}

/* Feeds answer bytes. Returns the bytes used (the answer may complete before n: the rest
 * is then unsolicited), or a negative errno for a protocol error. */
static ssize_t feed(struct http_sink *h, const char *p, size_t n)
{
    size_t used = 0;
    while (used < n && h->rx != RX_NONE) {
        const char *q = p + used;
        size_t left = n - used;
        switch (h->rx) {
        case RX_NONE:
            break;
        case RX_HEAD: {
            size_t room = HTTP_HEAD_MAX - h->hlen;
            size_t take = left < room ? left : room;
            size_t from = h->hlen > 3 ? h->hlen - 3 : 0;
            memcpy(h->hbuf + h->hlen, q, take);
            h->hlen += take;
            size_t end = 0;
            for (size_t i = from; i < h->hlen; i++) {
                if (h->hbuf[i] != '\n')
                    continue;
                if (i + 1 < h->hlen && h->hbuf[i + 1] == '\n') {
                    end = i + 2;
                    break;
                }
                if (i + 2 < h->hlen && h->hbuf[i + 1] == '\r' && h->hbuf[i + 2] == '\n') {
                    end = i + 3;
                    break;
                }
            }
            if (!end) {
                if (h->hlen == HTTP_HEAD_MAX)
                    return -EMSGSIZE;
                used += take;
                break;
            }
            /* bytes of this read past the head belong to the body */
            used += take - (h->hlen - end);
            struct head hd;
            if (parse_head(h->hbuf, end, &hd) < 0)
                return -EPROTO;
            h->hlen = 0;
            if (hd.status < 200) {
                if (hd.status == 101)
                    return -EPROTO;
                break; /* interim (100 Continue): the final answer follows */
            }
            h->keep_alive = hd.minor >= 1 ? !hd.conn_close : (hd.conn_keep && !hd.conn_close);
            h->body_total = h->trailer_total = 0;
            report_status(h, hd.status);
            if (hd.status == 204 || hd.status == 304) {
                h->rx = RX_NONE;
            } else if (hd.chunked) {
                h->rx = RX_CHUNK_SIZE;
                h->llen = 0;
            } else if (hd.te_other) {
                h->rx = RX_CLOSE;
                h->keep_alive = 0;
            } else if (hd.has_len) {
                if (hd.len > HTTP_BODY_MAX)
                    return -EMSGSIZE;
                h->remaining = hd.len;
                h->rx = hd.len ? RX_LEN : RX_NONE;
            } else {
                h->rx = RX_CLOSE;
                h->keep_alive = 0;
            }
            if (h->rx == RX_NONE)
                return (ssize_t)used;
            break;
        }
        case RX_LEN:
        case RX_CHUNK_DATA: {
            size_t take = left < h->remaining ? left : (size_t)h->remaining;
            h->remaining -= take;
            used += take;
            if (h->remaining == 0) {
                if (h->rx == RX_LEN) {
                    h->rx = RX_NONE;
                    return (ssize_t)used;
                }
                h->rx = RX_CHUNK_END;
                h->llen = 0;
            }
            break;
        }
        case RX_CHUNK_SIZE:
        case RX_CHUNK_END:
        case RX_TRAILER: {
            int done;
            ssize_t t = line_take(h, q, left, &done);
            if (t < 0)
                return -EPROTO;
            used += (size_t)t;
            if (h->rx == RX_TRAILER) {
                h->trailer_total += (uint64_t)t;
                if (h->trailer_total > HTTP_HEAD_MAX)
                    return -EMSGSIZE;
            }
            if (!done)
                break;
            size_t ll = h->llen;
            h->llen = 0;
            if (h->rx == RX_CHUNK_END) {
                if (ll != 0)
                    return -EPROTO;
                h->rx = RX_CHUNK_SIZE;
            } else if (h->rx == RX_TRAILER) {
                if (ll == 0) {
                    h->rx = RX_NONE;
                    return (ssize_t)used;
                }
            } else {
                uint64_t size = 0;
                size_t i = 0;
                for (; i < ll; i++) {
                    char c = h->line[i];
                    int d = c >= '0' && c <= '9' ? c - '0'
                          : (c | 0x20) >= 'a' && (c | 0x20) <= 'f' ? (c | 0x20) - 'a' + 10 : -1;
                    if (d < 0)
                        break;
                    if (size > HTTP_BODY_MAX)
                        return -EMSGSIZE;
                    size = size * 16 + (uint64_t)d;
                }
                if (i == 0 || (i < ll && h->line[i] != ';' && h->line[i] != ' ' && h->line[i] != '\t'))
                    return -EPROTO;
                h->body_total += size;
                if (h->body_total > HTTP_BODY_MAX)
                    return -EMSGSIZE;
                if (size == 0) {
                    h->rx = RX_TRAILER;
                } else {
                    h->remaining = size;
                    h->rx = RX_CHUNK_DATA;
                }
            }
            break;
        }
        case RX_CLOSE:
            h->body_total += left;
            used += left;
            if (h->body_total > HTTP_BODY_MAX)
                return -EMSGSIZE;
            break;
        }
    }
    return (ssize_t)used;
}

static void on_read(struct ev_loop *loop, ev_io *w, int revents)
{
    struct http_sink *h = w->data;
    char buf[16384];
    for (int i = 0; i < HTTP_READS_MAX && h->fd >= 0; i++) {
        ssize_t n = read(h->fd, buf, sizeof(buf));
        if (n == 0) {
            conn_broken(h, 0, "connection closed");
            return;
        }
        if (n == -1) {
            int e = errno;
            if (e == EINTR)
                continue;
            if (e == EAGAIN || e == EWOULDBLOCK)
                return;
            conn_broken(h, e, "receive");
            return;
        }
        if (!h->busy || h->rx == RX_NONE) {
            /* nothing asked: a server that talks out of turn loses the connection */
            close_conn(h);
            end_exchange(h);
            pump(h);
            return;
        }
        h->rx_any = 1;
        ssize_t used = feed(h, buf, (size_t)n);
        if (used < 0) {
            if (h->job) {
                char why[128];
                snprintf(why, sizeof(why), "bad answer: %s",
                         used == -EMSGSIZE ? "head longer than 8 KB" : "not HTTP/1.x");
                exchange_failed(h, -EPROTO, why);
            } else {
                /* the status was counted; the body is too big or malformed */
                close_conn(h);
                end_exchange(h);
                pump(h);
            }
            return;
        }
        if (h->rx == RX_NONE) {
            if ((size_t)used < (size_t)n)
                h->keep_alive = 0; /* bytes past the answer: we cannot trust the framing */
            answer_done(h);
            return;
        }
    }
}

/* ---------------------------------------------------------------------------------------- */
/* the request                                                                               */

static void write_req(struct http_sink *h)
{
    size_t total = h->req_len + h->body_len;
    while (h->sent < total) {
        struct iovec iov[2];
        int k = 0;
        if (h->sent < h->req_len) {
            iov[k].iov_base = h->req + h->sent;
            iov[k].iov_len = h->req_len - h->sent;
            k++;
            iov[k].iov_base = (void *)h->body;
            iov[k].iov_len = h->body_len;
            k++;
        } else {
            iov[k].iov_base = (void *)(h->body + (h->sent - h->req_len));
            iov[k].iov_len = total - h->sent;
            k++;
        }
        struct msghdr mh = { .msg_iov = iov, .msg_iovlen = (size_t)k };
        ssize_t n = sendmsg(h->fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n == -1) {
            int e = errno;
            if (e == EINTR)
                continue;
            if (e == EAGAIN || e == EWOULDBLOCK) {
                ev_io_start(h->base.loop, &h->wio);
                return;
            }
            conn_broken(h, e, "send");
            return;
        }
        h->sent += (size_t)n;
    }
    ev_io_stop(h->base.loop, &h->wio);
}

/* Starts the exchange of one job on the idle connection. Takes ownership of j. */
static void start_request(struct http_sink *h, struct evi_job *j)
{
    h->job = j;
    h->body = evi_job_json(j, &h->body_len);
    int n = snprintf(h->req, h->req_cap,
                     "POST %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: lunasip/" LUNASIP_VERSION "\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                     h->path, h->host, h->body_len);
    h->req_len = n > 0 && (size_t)n < h->req_cap ? (size_t)n : 0; /* req_cap covers it */
    h->sent = 0;
    h->busy = 1;
    h->rx = RX_HEAD;
    h->rx_any = 0;
    h->hlen = h->llen = 0;
    ev_timer_set(&h->xchg_timer, evi_sink_config()->send_timeout, 0.);
    ev_timer_start(h->base.loop, &h->xchg_timer);
    write_req(h);
}

static void pump(struct http_sink *h)
{
    if (h->busy)
        return;
    switch (h->conn) {
    case H_READY: {
        struct evi_job *j = evi_sink_take(&h->base);
        if (j)
            start_request(h, j);
        break;
    }
    case H_IDLE:
        if (evi_sink_queued(&h->base))
            start_connect(h);
        break;
    case H_CONNECTING:
    case H_BACKOFF:
        evi_sink_fail_fast(&h->base);
        break;
    }
}

static void http_flush(struct evi_sink *s)
{
    pump((struct http_sink *)s);
}

/* ---------------------------------------------------------------------------------------- */
/* the connection                                                                            */

static void connect_failed(struct http_sink *h, int err)
{
    close_conn(h);
    schedule_retry(h);
    set_down_errno(h, "connect", err);
    evi_sink_fail_fast(&h->base);
}

static void connected(struct http_sink *h)
{
    struct ev_loop *loop = h->base.loop;
    ev_timer_stop(loop, &h->conn_timer);
    ev_io_stop(loop, &h->wio);
    ev_io_set(&h->rio, h->fd, EV_READ);
    ev_io_start(loop, &h->rio);
    h->conn = H_READY;
    h->served = 0;
    if (h->base.state == EVI_SINK_DOWN)
        evi_sink_set_state(&h->base, EVI_SINK_UP, "connected");
    pump(h);
}

static void start_connect(struct http_sink *h)
{
    struct ev_loop *loop = h->base.loop;
    int fd = socket(h->dst.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        connect_failed(h, errno);
        return;
    }
    int one = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) == -1) {
        /* harmless: only latency */
    }
    h->fd = fd;
    h->conn = H_CONNECTING;
    ev_io_set(&h->wio, fd, EV_WRITE);
    if (connect(fd, (struct sockaddr *)&h->dst, h->dstlen) == 0) {
        connected(h);
        return;
    }
    int e = errno;
    if (e != EINPROGRESS && e != EINTR) { /* EINTR: the connect goes on asynchronously */
        connect_failed(h, e);
        return;
    }
    ev_io_start(loop, &h->wio);
    ev_timer_set(&h->conn_timer, evi_sink_config()->connect_timeout, 0.);
    ev_timer_start(loop, &h->conn_timer);
}

static void on_write(struct ev_loop *loop, ev_io *w, int revents)
{
    struct http_sink *h = w->data;
    if (h->conn == H_CONNECTING) {
        int err = 0;
        socklen_t sl = sizeof(err);
        if (getsockopt(h->fd, SOL_SOCKET, SO_ERROR, &err, &sl) == -1)
            err = errno;
        if (err)
            connect_failed(h, err);
        else
            connected(h);
        return;
    }
    if (h->busy)
        write_req(h);
    else
        ev_io_stop(loop, w);
}

static void on_connect_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    connect_failed(w->data, ETIMEDOUT);
}

static void on_exchange_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct http_sink *h = w->data;
    if (!h->job) {
        /* the status was counted; the body did not come in time */
        close_conn(h);
        end_exchange(h);
        pump(h);
        return;
    }
    char why[128];
    snprintf(why, sizeof(why), "no answer within %.1f s", evi_sink_config()->send_timeout);
    exchange_failed(h, -ETIMEDOUT, why);
}

/* While DOWN the connection is tried again even with nothing queued: a virtual: set
 * waits for this member to come UP before it sends it events again. */
static void on_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct http_sink *h = w->data;
    h->conn = H_IDLE;
    if (h->base.state == EVI_SINK_DOWN)
        start_connect(h);
    else
        pump(h);
}

/* ---------------------------------------------------------------------------------------- */
/* open / close                                                                              */

/* "http://IP:PORT/path" or "http://[IPv6]:PORT/path"; the port defaults to 80, the path to
 * "/". Refuses https (no TLS here), user info, host names (no DNS yet), fragments and
 * bytes that would break the request line. */
static int http_open(struct evi_sink *s, int check_only, char *err, size_t errlen)
{
    struct http_sink *h = (struct http_sink *)s;
    const char *url = s->addr;
    const char *expect = "expected http://IP:PORT/path or http://[IPv6]:PORT/path";
    const char *why = NULL;
    if (strncasecmp(url, "https://", 8) == 0) {
        snprintf(err, errlen, "%s: https is not supported; %s", sock_name(s), expect);
        return -EINVAL;
    }
    if (strncasecmp(url, "http://", 7) != 0) {
        snprintf(err, errlen, "%s: not an http:// URL; %s", sock_name(s), expect);
        return -EINVAL;
    }
    const char *auth = url + 7;
    size_t alen = strcspn(auth, "/?#");
    const char *path = auth + alen;
    size_t plen = strlen(path);
    if (memchr(auth, '@', alen))
        why = "user info (user@) is not supported";
    else if (*path == '?' || *path == '#')
        why = "the path must start with /";
    else if (memchr(path, '#', plen))
        why = "a URL fragment (#) cannot be sent";
    else if (plen > HTTP_PATH_MAX)
        why = "path longer than 2048 bytes";
    for (size_t i = 0; !why && i < plen; i++)
        if ((unsigned char)path[i] <= 0x20 || (unsigned char)path[i] >= 0x7f)
            why = "the path has a space, control or non-ASCII byte (percent-encode it)";
    if (why) {
        const char *at = memchr(auth, '@', alen);
        if (at) /* never echo a password */
            snprintf(err, errlen, "http://***@%s: %s; %s", at + 1, why, expect);
        else
            snprintf(err, errlen, "%s: %s; %s", sock_name(s), why, expect);
        return -EINVAL;
    }
    /* the port is optional in a URL: 80 */
    char hostport[INET6_ADDRSTRLEN + 16];
    const char *hp = auth;
    size_t hplen = alen;
    int has_port;
    if (alen && auth[0] == '[') {
        const char *rb = memchr(auth, ']', alen);
        has_port = !rb || (size_t)(rb - auth) + 1 < alen; /* a bad one is explained below */
    } else {
        has_port = memchr(auth, ':', alen) != NULL;
    }
    if (!has_port && alen && alen + 4 < sizeof(hostport)) {
        memcpy(hostport, auth, alen);
        memcpy(hostport + alen, ":80", 3);
        hp = hostport;
        hplen = alen + 3;
    }
    struct sockaddr_storage ss;
    unsigned sl = 0;
    if (evi_parse_ipport_why(hp, hplen, &ss, &sl, &why) < 0) {
        snprintf(err, errlen, "%s: %s; %s", sock_name(s), why, expect);
        return -EINVAL;
    }
    if (check_only)
        return 0;
    h->host = strndup(auth, alen);
    h->path = strdup(plen ? path : "/");
    h->req_cap = strlen(h->path) + alen + 256;
    h->req = malloc(h->req_cap);
    h->hbuf = malloc(HTTP_HEAD_MAX);
    if (!h->host || !h->path || !h->req || !h->hbuf) {
        free(h->host);
        free(h->path);
        free(h->req);
        free(h->hbuf);
        h->host = h->path = h->req = h->hbuf = NULL;
        snprintf(err, errlen, "%s: out of memory", sock_name(s));
        return -ENOMEM;
    }
    h->dst = ss;
    h->dstlen = sl;
    h->fd = -1;
    h->backoff = EVI_BACKOFF_MIN;
    ev_io_init(&h->rio, on_read, -1, EV_READ);
    ev_io_init(&h->wio, on_write, -1, EV_WRITE);
    ev_timer_init(&h->conn_timer, on_connect_timeout, 1.0, 0.);
    ev_timer_init(&h->xchg_timer, on_exchange_timeout, 1.0, 0.);
    ev_timer_init(&h->retry_timer, on_retry, 1.0, 0.);
    h->rio.data = h->wio.data = h;
    h->conn_timer.data = h->xchg_timer.data = h->retry_timer.data = h;
    return 0;
}

/* Cancels the job in flight, stops every watcher, closes the connection. Never blocks. */
static void http_close(struct evi_sink *s)
{
    struct http_sink *h = (struct http_sink *)s;
    if (!h->hbuf)
        return; /* opened with check_only, or open failed */
    struct evi_job *j = h->job;
    close_conn(h);
    end_exchange(h);
    ev_timer_stop(s->loop, &h->retry_timer);
    if (j)
        evi_job_done(j, -ECANCELED);
    free(h->host);
    free(h->path);
    free(h->req);
    free(h->hbuf);
    h->host = h->path = h->req = h->hbuf = NULL;
}

const struct evi_sink_ops evi_http_ops = {
    .scheme = "http",
    .size = sizeof(struct http_sink),
    .open = http_open,
    .flush = http_flush,
    .close = http_close,
};
