/* Event sink rabbitmq: (SPEC §6): publishes each event's JSON-RPC notification to a RabbitMQ
 * broker (AMQP 0-9-1, librabbitmq) from a thread of its own (src/evi_worker.c): one
 * connection per sink, channel 1, publisher confirms. The event loop never waits on it.
 *
 * rabbitmq:[USER[:PASS]@]HOST[:PORT]/[exchange=X;persistent;]ROUTING_KEY
 *   USER:PASS default guest:guest (the last '@' before the first '/' ends them: a password
 *   may hold '@' and ':' but not '/'), PORT 5672, vhost "/", HOST a name
 *   (resolved in the thread), an IPv4 address or [IPv6]; exchange default "" (the default
 *   exchange: the routing key names the queue); persistent: delivery_mode 2. Messages carry
 *   content_type application/json and are published mandatory. The password never appears
 *   in a log line (s->shown, USER:***@, names the sink in every line).
 *
 * Failure semantics (README "Event sinks"):
 *   delivered  the broker confirmed the message (basic.ack with confirm.select on): it is
 *              in every queue the routing matched, on disk first when persistent and the
 *              queue is durable.
 *   failed     the broker nacked it (EPROTO); it returned it as unroutable, no queue bound
 *              for the routing key (EHOSTUNREACH; the message is not kept anywhere).
 *   down       connect, login, channel or confirm.select failed (each bounded by
 *              events.connect_timeout), the exchange named does not exist (checked with a
 *              passive declare on connect), the connection was lost (the broker closed it,
 *              a socket error, no heartbeat for twice events.heartbeat), or a publish made no
 *              progress for events.send_timeout (a broker that stopped reading: the loop's
 *              watchdog shuts the socket down; librabbitmq 0.11 also waits inside a publish
 *              once the heartbeat is overdue, so a hung broker is noticed within twice the
 *              heartbeat plus send_timeout). Every failed attempt is reported DOWN. Reconnects
 *              are tried at once after a connection that worked is lost, then with backoff:
 *              0.5 s doubling up to events.retry_max.
 *   while down jobs of a virtual: set with another member to try fail at once (ENOTCONN or
 *              the connect error); others are held (up to 1024 taken, the rest in the core's
 *              bounded queue, where events.overflow applies) and published on reconnect.
 *   at-least-once  messages published whose confirm had not come when the connection died
 *              are published again after the reconnect (fail-fast ones fail instead, with
 *              ECONNRESET): the broker may have routed them before it died, so a consumer
 *              can see a message twice; it never misses one that was not reported failed.
 *              A transient message (no `persistent`) sitting in a queue dies with a broker
 *              restart; use `persistent` and a durable queue to survive one.
 *   closing    jobs not confirmed when the sink closes (lunasip exits, or its last
 *              subscription went and the core stopped waiting for them) are cancelled
 *              (ECANCELED) and may still reach the broker. */
#include "evi_sink.h"

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <arpa/inet.h>
#include <errno.h>
#include <linux/sockios.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/time.h>

#include "evi_worker.h"
#include "log.h"

#define RMQ_DEFAULT_PORT   5672
#define RMQ_SHORTSTR_MAX   255          /* AMQP shortstr: exchange, routing key, user, pass */
#define RMQ_HOST_MAX       253
#define RMQ_FRAME_MAX      131072
#define RMQ_CLOSE_RPC_MS   100          /* the polite connection.close at the end */
#define RMQ_RETURN_LOG_S   10.0         /* at most one "returned" line per sink per this */
#define RMQ_SYNTAX "rabbitmq:[USER[:PASS]@]HOST[:PORT]/[exchange=X;persistent;]ROUTING_KEY"

struct rmq_conf {
    char *host;            /* no brackets */
    int port;
    char *user, *pass;
    char *exchange;        /* "" = the default exchange */
    char *rkey;
    int persistent;
    char *hostport;        /* for log lines: "host:port" / "[v6]:port" */
};

struct rmq_sink {
    struct evi_sink base;
    struct evi_worker *w;
};

/* ------------------------------------------------------------------------------------------
 * Parsing */

static void conf_free(struct rmq_conf *c)
{
    free(c->host);
    free(c->user);
    free(c->pass);
    free(c->exchange);
    free(c->rkey);
    free(c->hostport);
}

/* The last '@' before the first '/' ends the USER[:PASS] part; NULL when there is none. */
static const char *userinfo_end(const char *a, size_t n)
{
    const char *slash = memchr(a, '/', n);
    const char *end = slash ? slash : a + n;
    const char *at = NULL;
    for (const char *p = a; p < end; p++)
        if (*p == '@')
            at = p;
    return at;
}

static char *dupn(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

/* Parses addr (the text past "rabbitmq:") into c. shown is the socket with the password
 * masked, for the error text. */
static int conf_parse(const char *addr, struct rmq_conf *c, const char *shown, char *err, size_t errlen)
{
    size_t n = strlen(addr);
    const char *at = userinfo_end(addr, n);
    const char *h = addr;
    memset(c, 0, sizeof(*c));
    c->port = RMQ_DEFAULT_PORT;
    if (at) {
        const char *colon = memchr(addr, ':', (size_t)(at - addr));
        size_t ulen = colon ? (size_t)(colon - addr) : (size_t)(at - addr);
        size_t plen = colon ? (size_t)(at - colon - 1) : 0;
        if (ulen == 0 || ulen > RMQ_SHORTSTR_MAX || plen > RMQ_SHORTSTR_MAX) {
            snprintf(err, errlen, "%s: bad USER[:PASS] (1..255 bytes each); expected " RMQ_SYNTAX, shown);
            return -EINVAL;
        }
        c->user = dupn(addr, ulen);
        c->pass = colon ? dupn(colon + 1, plen) : strdup("guest");
        h = at + 1;
    } else {
        c->user = strdup("guest");
        c->pass = strdup("guest");
    }
    const char *slash = strchr(h, '/');
    if (!slash) {
        snprintf(err, errlen, "%s: '/ROUTING_KEY' missing; expected " RMQ_SYNTAX, shown);
        return -EINVAL;
    }
    /* HOST[:PORT] */
    const char *hend = slash, *port = NULL;
    if (*h == '[') {
        const char *rb = memchr(h, ']', (size_t)(slash - h));
        if (!rb) {
            snprintf(err, errlen, "%s: unterminated [IPv6] address; expected " RMQ_SYNTAX, shown);
            return -EINVAL;
        }
        char tmp[INET6_ADDRSTRLEN + 1];
        struct in6_addr a6;
        size_t hl = (size_t)(rb - h - 1);
        if (hl == 0 || hl >= sizeof(tmp)) {
            snprintf(err, errlen, "%s: bad IPv6 address; expected " RMQ_SYNTAX, shown);
            return -EINVAL;
        }
        memcpy(tmp, h + 1, hl);
        tmp[hl] = '\0';
        if (inet_pton(AF_INET6, tmp, &a6) != 1) {
            snprintf(err, errlen, "%s: bad IPv6 address '%s'; expected " RMQ_SYNTAX, shown, tmp);
            return -EINVAL;
        }
        c->host = strdup(tmp);
        if (rb + 1 < slash) {
            if (rb[1] != ':') {
                snprintf(err, errlen, "%s: unexpected text after ']'; expected " RMQ_SYNTAX, shown);
                return -EINVAL;
            }
            port = rb + 2;
        }
    } else {
        const char *colon = memchr(h, ':', (size_t)(slash - h));
        if (colon) {
            if (memchr(colon + 1, ':', (size_t)(slash - colon - 1))) {
                snprintf(err, errlen, "%s: an IPv6 address goes in brackets; expected " RMQ_SYNTAX, shown);
                return -EINVAL;
            }
            hend = colon;
            port = colon + 1;
        }
        size_t hl = (size_t)(hend - h);
        if (hl == 0 || hl > RMQ_HOST_MAX) {
            snprintf(err, errlen, "%s: host missing; expected " RMQ_SYNTAX, shown);
            return -EINVAL;
        }
        for (size_t i = 0; i < hl; i++) {
            char ch = h[i];
            if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                  ch == '.' || ch == '-' || ch == '_')) {
                snprintf(err, errlen, "%s: bad character in host; expected " RMQ_SYNTAX, shown);
                return -EINVAL;
            }
        }
        c->host = dupn(h, hl);
    }
    if (port) {
        long v = 0;
        const char *p = port;
        if (p == slash) {
            snprintf(err, errlen, "%s: port missing after ':'; expected " RMQ_SYNTAX, shown);
            return -EINVAL;
        }
        for (; p < slash; p++) {
            if (*p < '0' || *p > '9' || v > 65535) {
                v = -1;
                break;
            }
            v = v * 10 + (*p - '0');
        }
        if (v < 1 || v > 65535) {
            snprintf(err, errlen, "%s: port must be 1..65535; expected " RMQ_SYNTAX, shown);
            return -EINVAL;
        }
        c->port = (int)v;
    }
    /* [exchange=X;][persistent;]ROUTING_KEY */
    const char *p = slash + 1;
    for (;;) {
        if (strncmp(p, "exchange=", 9) == 0) {
            const char *semi = strchr(p + 9, ';');
            if (!semi) {
                snprintf(err, errlen, "%s: 'exchange=X' must end with ';'; expected " RMQ_SYNTAX, shown);
                return -EINVAL;
            }
            if ((size_t)(semi - p - 9) > RMQ_SHORTSTR_MAX) {
                snprintf(err, errlen, "%s: exchange name above %d bytes", shown, RMQ_SHORTSTR_MAX);
                return -EINVAL;
            }
            free(c->exchange);
            c->exchange = dupn(p + 9, (size_t)(semi - p - 9));
            p = semi + 1;
        } else if (strncmp(p, "persistent;", 11) == 0) {
            c->persistent = 1;
            p += 11;
        } else {
            break;
        }
    }
    if (*p == '\0') {
        snprintf(err, errlen, "%s: routing key missing; expected " RMQ_SYNTAX, shown);
        return -EINVAL;
    }
    if (strlen(p) > RMQ_SHORTSTR_MAX) {
        snprintf(err, errlen, "%s: routing key above %d bytes", shown, RMQ_SHORTSTR_MAX);
        return -EINVAL;
    }
    c->rkey = strdup(p);
    if (!c->exchange)
        c->exchange = strdup("");
    size_t hpl = strlen(c->host) + 16;
    c->hostport = malloc(hpl);
    if (c->hostport)
        snprintf(c->hostport, hpl, strchr(c->host, ':') ? "[%s]:%d" : "%s:%d", c->host, c->port);
    if (!c->host || !c->user || !c->pass || !c->rkey || !c->exchange || !c->hostport) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * The thread */

struct rmq_thread {
    struct rmq_conf c;
    amqp_connection_state_t conn;
    int fd;
    struct evi_wlist pending;      /* to publish, in order */
    struct evi_wlist unconf;       /* published, confirm awaited, in delivery-tag order */
    uint64_t next_tag;
    int down, posted_up;
    int err;                       /* -errno of the last failure (fail-fast jobs get it) */
    double backoff, next_try;
    double up_since;
    int acked_any;                 /* this connection confirmed something */
    double next_tick;
    /* a basic.return being read: its content header, then body frames */
    int ret_state;                 /* 0 none, 1 header awaited, 2 body */
    size_t ret_need, ret_len;
    char *ret_buf;
    int ret_code;
    char ret_text[128];
    double ret_logged;
    uint64_t ret_count;
};

static void thread_free(void *arg)
{
    struct rmq_thread *t = arg;
    conf_free(&t->c);
    free(t->ret_buf);
    free(t);
}

static struct timeval tv_of(double s)
{
    struct timeval tv;
    if (s < 0.001)
        s = 0.001;
    tv.tv_sec = (time_t)s;
    tv.tv_usec = (suseconds_t)((s - (double)tv.tv_sec) * 1e6);
    return tv;
}

/* A librabbitmq status as a negative errno. */
static int err_of(int status, int fallback)
{
    switch (status) {
    case AMQP_STATUS_NO_MEMORY:
        return -ENOMEM;
    case AMQP_STATUS_TIMEOUT:
    case AMQP_STATUS_HEARTBEAT_TIMEOUT:
        return -ETIMEDOUT;
    case AMQP_STATUS_HOSTNAME_RESOLUTION_FAILED:
        return -EHOSTUNREACH;
    case AMQP_STATUS_CONNECTION_CLOSED:
    case AMQP_STATUS_SOCKET_CLOSED:
        return -ECONNRESET;
    case AMQP_STATUS_SOCKET_ERROR:
    case AMQP_STATUS_TCP_ERROR:
        return fallback;
    default:
        return -EPROTO;
    }
}

/* Words for a librabbitmq status; a socket error says which (errno, read right after). */
static const char *status_text(int status, int err)
{
    if (status == AMQP_STATUS_HEARTBEAT_TIMEOUT)
        return "no heartbeat from the broker";
    if ((status == AMQP_STATUS_SOCKET_ERROR || status == AMQP_STATUS_TCP_ERROR) && err != 0 &&
        err != EINPROGRESS && err != EAGAIN)
        return strerror(err);
    return amqp_error_string2(status);
}

/* Describes a failed RPC reply into why; returns the errno. */
static int rpc_why(amqp_rpc_reply_t r, const char *what, char *why, size_t n)
{
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION) {
        snprintf(why, n, "%s: %s", what, amqp_error_string2(r.library_error));
        return err_of(r.library_error, -ECONNRESET);
    }
    if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION) {
        if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD && r.reply.decoded) {
            amqp_connection_close_t *m = r.reply.decoded;
            snprintf(why, n, "%s: the broker closed the connection: %u %.*s", what, m->reply_code,
                     (int)m->reply_text.len, (const char *)m->reply_text.bytes);
            return m->reply_code == 403 ? -EACCES : -ECONNRESET;
        }
        if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD && r.reply.decoded) {
            amqp_channel_close_t *m = r.reply.decoded;
            snprintf(why, n, "%s: the broker closed the channel: %u %.*s", what, m->reply_code,
                     (int)m->reply_text.len, (const char *)m->reply_text.bytes);
            return m->reply_code == 404 ? -ENOENT : m->reply_code == 403 ? -EACCES : -EPROTO;
        }
        snprintf(why, n, "%s: unexpected answer from the broker (method 0x%08x)", what, r.reply.id);
        return -EPROTO;
    }
    if (r.reply_type == AMQP_RESPONSE_NONE) {
        snprintf(why, n, "%s: no answer", what);
        return -EPROTO;
    }
    return 0;
}

static void conn_drop(struct rmq_thread *t)
{
    if (t->conn)
        amqp_destroy_connection(t->conn);
    t->conn = NULL;
    t->fd = -1;
    t->ret_state = 0;
    free(t->ret_buf);
    t->ret_buf = NULL;
}

/* Connects, logs in, opens channel 1, checks the exchange and turns confirms on; each step
 * bounded by connect_timeout. 0 or -errno with why filled. */
static int rmq_connect(struct evi_worker *w, struct rmq_thread *t, char *why, size_t n)
{
    struct evi_worker_settings set;
    evi_worker_settings(w, &set);
    struct timeval tv = tv_of(set.connect_timeout);
    t->conn = amqp_new_connection();
    if (!t->conn) {
        snprintf(why, n, "out of memory");
        return -ENOMEM;
    }
    amqp_socket_t *sock = amqp_tcp_socket_new(t->conn);
    if (!sock) {
        conn_drop(t);
        snprintf(why, n, "out of memory");
        return -ENOMEM;
    }
    errno = 0;
    int st = amqp_socket_open_noblock(sock, t->c.host, t->c.port, &tv);
    if (st != AMQP_STATUS_OK) {
        /* librabbitmq leaves errno at EINPROGRESS when the non-blocking connect failed */
        int e = errno;
        int known = e != 0 && e != EINPROGRESS;
        int rc = err_of(st, known ? -e : -ECONNREFUSED);
        if (st == AMQP_STATUS_SOCKET_ERROR || st == AMQP_STATUS_TCP_ERROR)
            snprintf(why, n, "cannot connect to %s: %s", t->c.hostport,
                     known ? strerror(e) : "connection refused or unreachable");
        else
            snprintf(why, n, "cannot connect to %s: %s", t->c.hostport, amqp_error_string2(st));
        conn_drop(t);
        return rc;
    }
    t->fd = amqp_get_sockfd(t->conn);
    amqp_set_handshake_timeout(t->conn, &tv);
    amqp_set_rpc_timeout(t->conn, &tv);
    char what[RMQ_SHORTSTR_MAX + RMQ_HOST_MAX + 32];
    snprintf(what, sizeof(what), "login to %s as %s", t->c.hostport, t->c.user);
    int rc = rpc_why(amqp_login(t->conn, "/", 0, RMQ_FRAME_MAX, set.heartbeat, AMQP_SASL_METHOD_PLAIN,
                                t->c.user, t->c.pass), what, why, n);
    if (rc == 0) {
        amqp_channel_open(t->conn, 1);
        rc = rpc_why(amqp_get_rpc_reply(t->conn), "channel.open", why, n);
    }
    if (rc == 0 && t->c.exchange[0]) {
        amqp_exchange_declare(t->conn, 1, amqp_cstring_bytes(t->c.exchange), amqp_cstring_bytes("direct"),
                              1, 0, 0, 0, amqp_empty_table);
        char wx[RMQ_SHORTSTR_MAX + 64];
        snprintf(wx, sizeof(wx), "exchange '%s' (it must exist on the broker)", t->c.exchange);
        rc = rpc_why(amqp_get_rpc_reply(t->conn), wx, why, n);
    }
    if (rc == 0) {
        amqp_confirm_select(t->conn, 1);
        rc = rpc_why(amqp_get_rpc_reply(t->conn), "confirm.select", why, n);
    }
    if (rc != 0) {
        conn_drop(t);
        return rc;
    }
    t->next_tag = 1;
    t->acked_any = 0;
    t->up_since = evi_worker_now();
    t->next_tick = 0;
    return 0;
}

/* Fails the jobs a virtual set can send elsewhere (list l). */
static void fail_fast_jobs(struct evi_worker *w, struct evi_wlist *l, int err)
{
    struct evi_wlist keep = { NULL, NULL, 0 };
    struct evi_witem *it;
    while ((it = evi_wlist_pop(l)) != NULL) {
        if (it->fail_fast)
            evi_worker_done(w, it, err);
        else
            evi_wlist_push(&keep, it);
    }
    *l = keep;
}

/* The connection died (err, why): unconfirmed messages go back in front of the pending
 * ones to be published again (at-least-once), fail-fast ones fail. */
static void rmq_lost(struct evi_worker *w, struct rmq_thread *t, int err, const char *why)
{
    double now = evi_worker_now();
    conn_drop(t);
    size_t again = 0;
    struct evi_wlist back = { NULL, NULL, 0 };
    struct evi_witem *it;
    while ((it = evi_wlist_pop(&t->unconf)) != NULL) {
        if (it->fail_fast) {
            evi_worker_done(w, it, -ECONNRESET);
        } else {
            it->mark = 0;
            evi_wlist_push(&back, it);
            again++;
        }
    }
    evi_wlist_prepend(&t->pending, &back);
    t->err = err;
    fail_fast_jobs(w, &t->pending, err);
    evi_worker_state(w, EVI_SINK_DOWN, err, "connection to %s lost: %s", t->c.hostport, why);
    t->down = 1;
    t->posted_up = 0;
    if (again)
        evi_worker_log(w, LOG_LVL_NOTICE, "%zu message(s) published without a confirm will be published "
                       "again after reconnecting (at-least-once)", again);
    /* a connection that worked: try again at once; one that failed right away: back off */
    if (t->acked_any || now - t->up_since >= 2.0) {
        t->backoff = 0;
        t->next_try = now;
    } else {
        t->next_try = now + evi_worker_backoff(w, &t->backoff);
    }
}

/* Settles the unconfirmed messages up to tag (multiple) or tag alone: err, or for a
 * message the broker returned unroutable, EHOSTUNREACH. */
static void settle(struct evi_worker *w, struct rmq_thread *t, uint64_t tag, int multiple, int err)
{
    struct evi_witem *prev = NULL, *it = t->unconf.head;
    while (it) {
        struct evi_witem *next = it->next;
        if (it->tag > tag)
            break;
        if (multiple || it->tag == tag) {
            if (prev)
                prev->next = next;
            else
                t->unconf.head = next;
            if (t->unconf.tail == it)
                t->unconf.tail = prev;
            t->unconf.n--;
            int res = err ? err : it->mark ? -EHOSTUNREACH : 0;
            if (res == 0)
                t->acked_any = 1;
            evi_worker_done(w, it, res);
            if (!multiple)
                break;
        } else {
            prev = it;
        }
        it = next;
    }
}

/* A basic.return's body is complete: marks the first unconfirmed message with those bytes
 * (the ack that follows fails it). */
static void returned(struct evi_worker *w, struct rmq_thread *t)
{
    for (struct evi_witem *it = t->unconf.head; it; it = it->next) {
        if (!it->mark && it->len == t->ret_len && memcmp(it->data, t->ret_buf, it->len) == 0) {
            it->mark = 1;
            break;
        }
    }
    t->ret_count++;
    double now = evi_worker_now();
    if (now - t->ret_logged >= RMQ_RETURN_LOG_S) {
        evi_worker_log(w, LOG_LVL_WARN, "%llu message(s) returned unroutable (%d %s): no queue is bound "
                       "for routing key '%s' on exchange '%s'", (unsigned long long)t->ret_count,
                       t->ret_code, t->ret_text, t->c.rkey, t->c.exchange[0] ? t->c.exchange : "(default)");
        t->ret_logged = now;
        t->ret_count = 0;
    }
    t->ret_state = 0;
    free(t->ret_buf);
    t->ret_buf = NULL;
}

/* One frame from the broker; 0, or -errno with why filled when the connection must go. */
static int on_frame(struct evi_worker *w, struct rmq_thread *t, amqp_frame_t *f, char *why, size_t n)
{
    if (f->frame_type == AMQP_FRAME_METHOD) {
        amqp_method_number_t id = f->payload.method.id;
        void *d = f->payload.method.decoded;
        if (id == AMQP_CONNECTION_CLOSE_METHOD) {
            amqp_connection_close_t *m = d;
            snprintf(why, n, "the broker closed the connection: %u %.*s", m->reply_code,
                     (int)m->reply_text.len, (const char *)m->reply_text.bytes);
            amqp_connection_close_ok_t ok = { 0 };
            amqp_send_method(t->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
            return -ECONNRESET;
        }
        if (f->channel != 1)
            return 0;
        switch (id) {
        case AMQP_BASIC_ACK_METHOD: {
            amqp_basic_ack_t *m = d;
            settle(w, t, m->delivery_tag, m->multiple, 0);
            break;
        }
        case AMQP_BASIC_NACK_METHOD: {
            amqp_basic_nack_t *m = d;
            evi_worker_log(w, LOG_LVL_WARN, "the broker nacked message(s) up to #%llu",
                           (unsigned long long)m->delivery_tag);
            settle(w, t, m->delivery_tag, m->multiple, -EPROTO);
            break;
        }
        case AMQP_BASIC_RETURN_METHOD: {
            amqp_basic_return_t *m = d;
            t->ret_state = 1;
            t->ret_code = m->reply_code;
            snprintf(t->ret_text, sizeof(t->ret_text), "%.*s", (int)m->reply_text.len,
                     (const char *)m->reply_text.bytes);
            break;
        }
        case AMQP_CHANNEL_CLOSE_METHOD: {
            amqp_channel_close_t *m = d;
            snprintf(why, n, "the broker closed the channel: %u %.*s", m->reply_code,
                     (int)m->reply_text.len, (const char *)m->reply_text.bytes);
            amqp_channel_close_ok_t ok = { 0 };
            amqp_send_method(t->conn, 1, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
            return m->reply_code == 404 ? -ENOENT : m->reply_code == 403 ? -EACCES : -EPROTO;
        }
        default:
            break;
        }
        return 0;
    }
    if (f->channel != 1 || t->ret_state == 0)
        return 0;
    if (f->frame_type == AMQP_FRAME_HEADER && t->ret_state == 1) {
        uint64_t size = f->payload.properties.body_size;
        t->ret_need = size > EVI_PAYLOAD_MAX * 2 ? 0 : (size_t)size;
        t->ret_len = 0;
        free(t->ret_buf);
        t->ret_buf = malloc(t->ret_need + 1);
        t->ret_state = 2;
        if (!t->ret_buf || size == 0)
            returned(w, t);
    } else if (f->frame_type == AMQP_FRAME_BODY && t->ret_state == 2) {
        amqp_bytes_t b = f->payload.body_fragment;
        size_t k = b.len;
        if (k > t->ret_need - t->ret_len)
            k = t->ret_need - t->ret_len;
        memcpy(t->ret_buf + t->ret_len, b.bytes, k);
        t->ret_len += k;
        if (t->ret_len >= t->ret_need)
            returned(w, t);
    }
    return 0;
}

/* Reads the frames the broker sent: waits up to timeout_ms for the first, then takes only
 * what is there. A wait also sends our heartbeat when due (a send the watchdog bounds by
 * send_timeout) and notices a missing one. */
static int read_frames(struct evi_worker *w, struct rmq_thread *t, int timeout_ms, double send_timeout,
                       char *why, size_t n)
{
    for (int k = 0; k < 4096; k++) {
        amqp_frame_t f;
        struct timeval tv = { 0, timeout_ms * 1000 };
        evi_worker_guard(w, t->fd, send_timeout);
        errno = 0;
        int st = amqp_simple_wait_frame_noblock(t->conn, &f, &tv);
        int e = errno;
        int fired = evi_worker_unguard(w);
        timeout_ms = 0;
        if (st == AMQP_STATUS_TIMEOUT && !fired)
            return 0;
        if (st != AMQP_STATUS_OK) {
            if (fired)
                snprintf(why, n, "a heartbeat send made no progress for %g s (the broker does not read)",
                         send_timeout);
            else
                snprintf(why, n, "%s", status_text(st, e));
            return fired ? -ETIMEDOUT : err_of(st, e > 0 && e != EAGAIN ? -e : -ECONNRESET);
        }
        int rc = on_frame(w, t, &f, why, n);
        amqp_maybe_release_buffers_on_channel(t->conn, f.channel);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int publish(struct evi_worker *w, struct rmq_thread *t, struct evi_witem *it, double send_timeout,
                   char *why, size_t n)
{
    amqp_basic_properties_t props;
    memset(&props, 0, sizeof(props));
    props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
    props.content_type = amqp_cstring_bytes("application/json");
    props.delivery_mode = t->c.persistent ? 2 : 1;
    amqp_bytes_t body = { it->len, it->data };
    evi_worker_guard(w, t->fd, send_timeout);
    errno = 0;
    int st = amqp_basic_publish(t->conn, 1, amqp_cstring_bytes(t->c.exchange), amqp_cstring_bytes(t->c.rkey),
                                1, 0, &props, body);
    int e = errno;
    int fired = evi_worker_unguard(w);
    if (st != AMQP_STATUS_OK) {
        if (fired) {
            snprintf(why, n, "a publish made no progress for %g s (the broker does not read)", send_timeout);
            return -ETIMEDOUT;
        }
        snprintf(why, n, "publish: %s", status_text(st, e));
        return err_of(st, e > 0 && e != EAGAIN ? -e : -ECONNRESET);
    }
    it->tag = t->next_tag++;
    it->mark = 0;
    return 0;
}

/* The polite goodbye, only when it cannot hang: our send queue is empty, the answer is
 * awaited RMQ_CLOSE_RPC_MS at most. */
static void rmq_goodbye(struct rmq_thread *t)
{
    int queued = 0;
    if (t->conn && ioctl(t->fd, SIOCOUTQ, &queued) == 0 && queued == 0) {
        struct timeval tv = { 0, RMQ_CLOSE_RPC_MS * 1000 };
        amqp_set_rpc_timeout(t->conn, &tv);
        amqp_connection_close(t->conn, AMQP_REPLY_SUCCESS);
    }
    conn_drop(t);
}

static void rmq_main(struct evi_worker *w, void *arg)
{
    struct rmq_thread *t = arg;
    char why[384];
    while (!evi_worker_stopping(w)) {
        evi_worker_grab(w, &t->pending, NULL);
        struct evi_worker_settings set;
        evi_worker_settings(w, &set);
        double now = evi_worker_now();

        if (!t->conn) {
            if (t->down)
                fail_fast_jobs(w, &t->pending, t->err);
            if (now < t->next_try) {
                double left = t->next_try - now;
                evi_worker_wait(w, -1, (int)(left * 1000) + 1);
                continue;
            }
            int rc = rmq_connect(w, t, why, sizeof(why));
            if (rc == 0) {
                if (t->down || !t->posted_up) {
                    evi_worker_state(w, EVI_SINK_UP, 0, "connected to %s%s", t->c.hostport,
                                     t->pending.n ? ", publishing what waited" : "");
                    t->down = 0;
                    t->posted_up = 1;
                }
            } else {
                t->err = rc;
                t->next_try = evi_worker_now() + evi_worker_backoff(w, &t->backoff);
                /* every failed attempt is reported: the core logs the transition once and
                 * keeps virtual sets off this sink while the reports go on */
                if (t->down)
                    evi_worker_log(w, LOG_LVL_DEBUG, "%s (next try in %.1f s)", why, t->backoff);
                evi_worker_state(w, EVI_SINK_DOWN, rc, "%s", why);
                t->down = 1;
                t->posted_up = 0;
                fail_fast_jobs(w, &t->pending, rc);
            }
            continue;
        }

        int rc = 0;
        struct evi_witem *it;
        while (rc == 0 && (it = evi_wlist_pop(&t->pending)) != NULL) {
            rc = publish(w, t, it, set.send_timeout, why, sizeof(why));
            if (rc == 0) {
                evi_wlist_push(&t->unconf, it);
            } else {
                struct evi_wlist one = { it, it, 1 };
                it->next = NULL;
                evi_wlist_prepend(&t->pending, &one);
            }
        }
        if (rc == 0 && (amqp_frames_enqueued(t->conn) || amqp_data_in_buffer(t->conn)))
            rc = read_frames(w, t, 0, set.send_timeout, why, sizeof(why));
        now = evi_worker_now();
        if (rc == 0 && now >= t->next_tick) {
            /* a wait of 1 ms lets librabbitmq send our heartbeat and notice a missing one */
            rc = read_frames(w, t, 1, set.send_timeout, why, sizeof(why));
            double tick = set.heartbeat > 0 ? set.heartbeat / 4.0 : 1.0;
            t->next_tick = now + (tick < 0.1 ? 0.1 : tick);
        }
        if (rc == 0) {
            double left = t->next_tick - evi_worker_now();
            if (evi_worker_wait(w, t->fd, left <= 0 ? 0 : (int)(left * 1000) + 1))
                rc = read_frames(w, t, 0, set.send_timeout, why, sizeof(why));
        }
        if (rc != 0)
            rmq_lost(w, t, rc, why);
    }
    rmq_goodbye(t);
    /* cancelled on the loop side already: nothing to report */
    struct evi_witem *it;
    while ((it = evi_wlist_pop(&t->pending)) != NULL)
        free(it);
    while ((it = evi_wlist_pop(&t->unconf)) != NULL)
        free(it);
}

/* ------------------------------------------------------------------------------------------
 * The driver */

static int rmq_open(struct evi_sink *s, int check_only, char *err, size_t errlen)
{
    struct rmq_sink *r = (struct rmq_sink *)s;
    const char *shown = s->shown ? s->shown : "rabbitmq:(socket)";
    struct rmq_thread *t = calloc(1, sizeof(*t));
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    t->fd = -1;
    int rc = conf_parse(s->addr, &t->c, shown, err, errlen);
    if (rc != 0 || check_only) {
        thread_free(t);
        return rc;
    }
    struct evi_worker_def def = {
        .flat = 0,
        .watchdog = 1,
        .name = shown,
        .main = rmq_main,
        .arg = t,
        .arg_free = thread_free,
    };
    rc = evi_worker_start(s, &def, &r->w, err, errlen);
    if (rc != 0)
        thread_free(t);
    return rc;
}

static void rmq_flush(struct evi_sink *s)
{
    struct rmq_sink *r = (struct rmq_sink *)s;
    if (r->w)
        evi_worker_flush(r->w);
}

static void rmq_close(struct evi_sink *s)
{
    struct rmq_sink *r = (struct rmq_sink *)s;
    if (r->w)
        evi_worker_close(r->w);
    r->w = NULL;
}

const struct evi_sink_ops evi_rabbitmq_ops = {
    .scheme = "rabbitmq",
    .size = sizeof(struct rmq_sink),
    .open = rmq_open,
    .flush = rmq_flush,
    .close = rmq_close,
    .reopen = NULL,
};
