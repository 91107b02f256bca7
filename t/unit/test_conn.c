/* src/conn.c on a real libev loop over loopback: SIP framing and keepalives, limits,
 * timeouts, outgoing connections, the WebSocket upgrade and frames, TLS when the test
 * certificates are there, and on_close exactly once for every connection. */
#include <arpa/inet.h>
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>

#include "test.h"

#include "config.h"
#include "conn.h"
#include "log.h"
#include "sip_msg.h"
#include "stats.h"
#include "tls.h"
#include "udp.h"
#include "ws.h"

static struct ev_loop *loop;

/* ----- what the hooks saw ----- */

#define MAX_MSGS 64
#define MAX_CONNS 256

struct seen_msg {
    uint64_t id;
    char *buf;
    size_t len;
};
static struct seen_msg msgs[MAX_MSGS];
static int nmsgs;

struct seen_conn {
    uint64_t id;
    int outgoing;
    int opens, closes;
    int was_open, client_closed, failed;
    int in_hook;               /* a hook of this connection is running */
};
static struct seen_conn seen[MAX_CONNS];
static int nseen;
static int nested_close;       /* on_close ran inside another hook of the same connection */

/* test modes */
static int close_in_message;   /* on_message closes its connection */
static int echo_in_message;    /* on_message answers "ECHO <len>" on the connection */
static int ws_upgrade_answer;  /* on_ws_upgrade returns this */
static int tls_hs_answer;      /* on_tls_handshake returns this */
static int tls_hs_calls, tls_hs_server_side;
static struct conn *last_open;

static struct seen_conn *seen_of(struct conn *c)
{
    for (int i = 0; i < nseen; i++)
        if (seen[i].id == c->id)
            return &seen[i];
    if (nseen == MAX_CONNS)
        abort();
    seen[nseen].id = c->id;
    seen[nseen].outgoing = c->outgoing;
    return &seen[nseen++];
}

static void reset_msgs(void)
{
    for (int i = 0; i < nmsgs; i++)
        free(msgs[i].buf);
    nmsgs = 0;
}

static void on_message(struct conn *c, const char *buf, size_t len)
{
    struct seen_conn *s = seen_of(c);
    s->in_hook++;
    if (nmsgs < MAX_MSGS) {
        msgs[nmsgs].id = c->id;
        msgs[nmsgs].buf = malloc(len + 1);
        memcpy(msgs[nmsgs].buf, buf, len);
        msgs[nmsgs].buf[len] = 0;
        msgs[nmsgs].len = len;
        nmsgs++;
    }
    if (echo_in_message) {
        char out[64];
        int n = snprintf(out, sizeof(out), "ECHO %zu", len);
        conn_send(c, out, (size_t)n);
    }
    if (close_in_message) {
        conn_close(c, 0, NULL);
        conn_close(c, 0, NULL); /* idempotent */
        /* the struct stays valid; nothing else arrives for it */
        CHECK(c->state == CONN_CLOSING);
        CHECK(conn_send(c, "x", 1) == -EPIPE);
    }
    s->in_hook--;
}

static void on_open(struct conn *c)
{
    struct seen_conn *s = seen_of(c);
    s->opens++;
    last_open = c;
}

static void on_close(struct conn *c, int was_open, int client_closed, int failed)
{
    struct seen_conn *s = seen_of(c);
    if (last_open == c)
        last_open = NULL;
    if (s->in_hook)
        nested_close++;
    s->closes++;
    s->was_open = was_open;
    s->client_closed = client_closed;
    s->failed = failed;
    CHECK(c->state == CONN_CLOSED);
    CHECK(conn_get(c->id) == NULL);
}

static int on_ws_upgrade(struct conn *c, const struct ws_http_request *r, const char **reason)
{
    if (ws_upgrade_answer >= 400)
        *reason = "Go Away";
    return ws_upgrade_answer;
}

static int on_tls_handshake(struct conn *c, int server_side)
{
    tls_hs_calls++;
    if (server_side)
        tls_hs_server_side++;
    return tls_hs_answer;
}

static const struct conn_hooks test_hooks = {
    .on_message = on_message,
    .on_ws_upgrade = on_ws_upgrade,
    .on_tls_handshake = on_tls_handshake,
    .on_open = on_open,
    .on_close = on_close,
};

/* ----- loop helpers ----- */

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void on_tick(struct ev_loop *l, ev_timer *w, int revents)
{
}

static void spin_once(void)
{
    ev_timer t;
    ev_timer_init(&t, on_tick, 0.005, 0.);
    ev_timer_start(loop, &t);
    ev_run(loop, EVRUN_ONCE);
    ev_timer_stop(loop, &t);
}

static void spin(double secs)
{
    double end = mono() + secs;
    while (mono() < end)
        spin_once();
}

#define WAIT_FOR(cond, secs) __extension__({ \
    double end_ = mono() + (secs); \
    while (!(cond) && mono() < end_) \
        spin_once(); \
    (cond); \
})

/* ----- client sockets ----- */

static int client_connect_from(int port, const char *src_ip)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        perror("socket");
        exit(2);
    }
    struct sockaddr_in sa = { .sin_family = AF_INET };
    if (src_ip) {
        inet_pton(AF_INET, src_ip, &sa.sin_addr);
        if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == -1) {
            perror("bind");
            exit(2);
        }
    }
    sa.sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == -1) {
        perror("connect");
        exit(2);
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    fcntl(fd, F_SETFL, O_NONBLOCK);
    return fd;
}

static int client_connect(int port)
{
    return client_connect_from(port, NULL);
}

static void client_send(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n == -1 && (errno == EAGAIN || errno == EINTR)) {
            spin_once();
            continue;
        }
        if (n == -1) {
            perror("send");
            return;
        }
        p += n;
        len -= (size_t)n;
    }
}

static void client_send_str(int fd, const char *s)
{
    client_send(fd, s, strlen(s));
}

/* Reads what fd has into buf (appending at *len) while spinning the loop, until want
 * bytes are there, EOF, or secs pass. Returns 1 when EOF (or a reset) was seen. */
static int client_read(int fd, char *buf, size_t cap, size_t *len, size_t want, double secs)
{
    double end = mono() + secs;
    for (;;) {
        if (*len >= want || *len == cap)
            return 0;
        ssize_t n = recv(fd, buf + *len, cap - *len, MSG_DONTWAIT);
        if (n > 0) {
            *len += (size_t)n;
            if (*len >= want || *len == cap)
                return 0;
            continue;
        }
        if (n == 0 || (n == -1 && errno != EAGAIN && errno != EINTR))
            return 1;
        if (mono() >= end)
            return 0;
        spin_once();
    }
}

/* 1 when fd sees EOF/reset within secs (discarding data). */
static int client_eof(int fd, double secs)
{
    char b[4096];
    size_t len = 0;
    double end = mono() + secs;
    while (mono() < end) {
        len = 0;
        if (client_read(fd, b, sizeof(b), &len, sizeof(b), end - mono()))
            return 1;
    }
    return 0;
}

/* ----- configuration ----- */

static struct config cfg;

static void base_config(void)
{
    memset(&cfg, 0, sizeof(cfg));
    cfg.max_message_size = 4096;
    cfg.tcp_connect_timeout = 2;
    cfg.tls_handshake_timeout = 2;
    cfg.header_timeout = 10;
    cfg.connection_idle_timeout = 100;
    cfg.max_connections = 1000;
    cfg.max_connections_per_ip = 100;
    cfg.ws_max_message_size = 65536;
    cfg.ws_max_frame_size = 65536;
    cfg.ws_keepalive_interval = 100;
    cfg.ws_pong_timeout = 10;
}

static struct listener *listen_on(enum config_listen_proto proto)
{
    struct config_listen cl = { .proto = proto, .family = AF_INET, .port = 0 };
    strcpy(cl.host, "127.0.0.1");
    snprintf(cl.text, sizeof(cl.text), "test:127.0.0.1:0");
    struct listener *l = NULL;
    char err[256];
    int r = conn_listen(loop, &cl, &l, err, sizeof(err));
    CHECK_MSG(r == 0, "%s", err);
    if (r != 0)
        exit(1);
    return l;
}

static const char *sip_msg(char *out, size_t cap, const char *body)
{
    snprintf(out, cap,
             "OPTIONS sip:a@example.com SIP/2.0\r\n"
             "Via: SIP/2.0/TCP 127.0.0.1:5060;branch=z9hG4bK1\r\n"
             "Call-ID: x@y\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
             "Content-Length: %zu\r\n\r\n%s",
             strlen(body), body);
    return out;
}

static struct seen_conn *seen_last(void)
{
    return nseen ? &seen[nseen - 1] : NULL;
}

/* ----- tests ----- */

static void test_framing_and_keepalive(struct listener *l)
{
    char m1[512], m2[512], both[1100];
    sip_msg(m1, sizeof(m1), "");
    sip_msg(m2, sizeof(m2), "hello body");
    snprintf(both, sizeof(both), "%s%s\r\n\r\n", m1, m2);
    reset_msgs();
    uint64_t ka = stats.conn_keepalives, acc = stats.conn_accepted;
    int fd = client_connect(l->port);
    client_send_str(fd, both);
    CHECK(WAIT_FOR(nmsgs == 2, 2));
    CHECK(stats.conn_accepted == acc + 1);
    CHECK(nmsgs == 2 && msgs[0].len == strlen(m1) && memcmp(msgs[0].buf, m1, msgs[0].len) == 0);
    CHECK(nmsgs == 2 && msgs[1].len == strlen(m2) && memcmp(msgs[1].buf, m2, msgs[1].len) == 0);
    char rb[16];
    size_t rl = 0;
    client_read(fd, rb, sizeof(rb), &rl, 2, 2);
    CHECK(rl == 2 && memcmp(rb, "\r\n", 2) == 0);
    CHECK(stats.conn_keepalives == ka + 1);

    /* a single CRLF (a pong) is skipped silently, a split ping still answered */
    client_send_str(fd, "\r\n");
    spin(0.05);
    client_send_str(fd, "\r\n");
    rl = 0;
    client_read(fd, rb, sizeof(rb), &rl, 2, 2);
    CHECK(rl == 2 && stats.conn_keepalives == ka + 2);
    client_send_str(fd, "\r\n");
    client_send_str(fd, m1);
    CHECK(WAIT_FOR(nmsgs == 3, 2));
    CHECK(nmsgs == 3 && msgs[2].len == strlen(m1) && memcmp(msgs[2].buf, m1, msgs[2].len) == 0);
    rl = 0;
    client_read(fd, rb, sizeof(rb), &rl, 1, 0.1);
    CHECK(rl == 0); /* no answer to the lone CRLF */

    /* byte by byte, with a CRLF before it */
    char m3[512];
    sip_msg(m3, sizeof(m3), "0123456789");
    client_send_str(fd, "\r\n");
    for (size_t i = 0; i < strlen(m3); i++) {
        client_send(fd, m3 + i, 1);
        spin_once();
    }
    CHECK(WAIT_FOR(nmsgs == 4, 2));
    CHECK(nmsgs == 4 && msgs[3].len == strlen(m3) && memcmp(msgs[3].buf, m3, msgs[3].len) == 0);

    /* the connection is found by address for reuse and by id */
    struct conn *c = conn_get(msgs[0].id);
    CHECK(c != NULL);
    if (c) {
        CHECK(conn_find(SIP_TP_TCP, (struct sockaddr *)&c->remote, c->remote_len) == c);
        CHECK(conn_find(SIP_TP_TLS, (struct sockaddr *)&c->remote, c->remote_len) == NULL);
        CHECK(conn_count_ip((struct sockaddr *)&c->remote) >= 1);
        CHECK(strstr(conn_name(c), "tcp:127.0.0.1:") == conn_name(c) && strstr(conn_name(c), "<-127.0.0.1:"));
        /* send from the server side; the client reads it */
        CHECK(conn_send(c, "SIP/2.0 200 OK\r\n\r\n", 18) == 0);
        char ob[64];
        size_t ol = 0;
        client_read(fd, ob, sizeof(ob), &ol, 18, 2);
        CHECK(ol == 18 && memcmp(ob, "SIP/2.0 200 OK\r\n\r\n", 18) == 0);
    }

    /* the peer closes: on_close with client_closed */
    uint64_t id = msgs[0].id;
    close(fd);
    CHECK(WAIT_FOR(conn_get(id) == NULL, 2));
    struct seen_conn *s = NULL;
    for (int i = 0; i < nseen; i++)
        if (seen[i].id == id)
            s = &seen[i];
    CHECK(s && s->closes == 1 && s->was_open == 1 && s->client_closed == 1 && s->failed == 0);
}

static void test_oversized_and_framing(struct listener *l)
{
    /* Content-Length above max_message_size (4096) */
    uint64_t over = stats.conn_oversized, ferr = stats.conn_framing_errors;
    int fd = client_connect(l->port);
    client_send_str(fd, "MESSAGE sip:a SIP/2.0\r\nVia: SIP/2.0/TCP x;branch=z9hG4bK2\r\nContent-Length: 5000\r\n\r\n");
    CHECK(client_eof(fd, 2));
    CHECK(stats.conn_oversized == over + 1);
    close(fd);

    /* a head that never ends, above the limit */
    fd = client_connect(l->port);
    char big[6000];
    memset(big, 'a', sizeof(big));
    memcpy(big, "INVITE sip:a SIP/2.0\r\nX: ", 25);
    client_send(fd, big, sizeof(big));
    CHECK(client_eof(fd, 2));
    CHECK(stats.conn_oversized == over + 2);
    close(fd);

    /* no Content-Length: cannot be framed on a stream */
    fd = client_connect(l->port);
    client_send_str(fd, "OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/TCP x;branch=z9hG4bK3\r\n\r\n");
    CHECK(client_eof(fd, 2));
    CHECK(stats.conn_framing_errors == ferr + 1);
    close(fd);
}

static void test_header_timeout(struct listener *l)
{
    base_config();
    cfg.header_timeout = 0.3;
    conn_configure(&cfg, NULL);
    uint64_t ht = stats.conn_header_timeout;

    /* slowloris: a byte every 50 ms keeps the connection busy but never completes the head */
    int fd = client_connect(l->port);
    const char *head = "OPTIONS sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1;branch=z9hG4bK9\r\n";
    double t0 = mono();
    int closed = 0;
    for (size_t i = 0; i < strlen(head) && !closed; i++) {
        if (send(fd, head + i, 1, MSG_NOSIGNAL) != 1)
            break;
        double until = mono() + 0.05;
        while (mono() < until) {
            spin_once();
            char b[64];
            ssize_t n = recv(fd, b, sizeof(b), MSG_DONTWAIT);
            if (n == 0 || (n == -1 && errno != EAGAIN)) {
                closed = 1;
                break;
            }
        }
    }
    if (!closed)
        closed = client_eof(fd, 1);
    double took = mono() - t0;
    CHECK(closed);
    CHECK_MSG(took >= 0.25 && took < 0.9, "closed after %.3f s", took);
    CHECK(stats.conn_header_timeout == ht + 1);
    close(fd);

    /* an idle connection (no partial message) is not touched by header_timeout */
    fd = client_connect(l->port);
    spin(0.5);
    char b[8];
    ssize_t n = recv(fd, b, sizeof(b), MSG_DONTWAIT);
    CHECK(n == -1 && errno == EAGAIN);
    CHECK(stats.conn_header_timeout == ht + 1);
    close(fd);
    spin(0.05);
    base_config();
    conn_configure(&cfg, NULL);
}

static void test_per_ip_limit(struct listener *l)
{
    base_config();
    cfg.max_connections_per_ip = 2;
    conn_configure(&cfg, NULL);
    uint64_t refused = stats.conn_refused_limit;
    int a = client_connect_from(l->port, "127.0.0.5");
    int b = client_connect_from(l->port, "127.0.0.5");
    spin(0.05);
    int c = client_connect_from(l->port, "127.0.0.5");
    CHECK(client_eof(c, 2));
    CHECK(stats.conn_refused_limit == refused + 1);
    int d = client_connect_from(l->port, "127.0.0.5");
    CHECK(client_eof(d, 2));
    CHECK(stats.conn_refused_limit == refused + 2);
    struct sockaddr_in sa = { .sin_family = AF_INET };
    inet_pton(AF_INET, "127.0.0.5", &sa.sin_addr);
    CHECK(conn_count_ip((struct sockaddr *)&sa) == 2);
    /* another IP is not affected */
    int e = client_connect_from(l->port, "127.0.0.6");
    spin(0.05);
    CHECK(!client_eof(e, 0.1));
    /* the first two are alive */
    CHECK(!client_eof(a, 0.05) && !client_eof(b, 0.05));
    close(a);
    close(b);
    close(c);
    close(d);
    close(e);
    CHECK(WAIT_FOR(conn_count_ip((struct sockaddr *)&sa) == 0, 2));
    base_config();
    conn_configure(&cfg, NULL);
}

static void test_total_limit(struct listener *l)
{
    spin(0.05);
    base_config();
    cfg.max_connections = (int)conn_count() + 1;
    cfg.max_connections_per_ip = cfg.max_connections;
    conn_configure(&cfg, NULL);
    uint64_t refused = stats.conn_refused_limit;
    int a = client_connect(l->port);
    spin(0.05);
    int b = client_connect(l->port);
    CHECK(client_eof(b, 2));
    CHECK(stats.conn_refused_limit == refused + 1);
    /* outgoing ones too: -EMFILE */
    struct conn *oc = NULL;
    CHECK(conn_connect(SIP_TP_TCP, (struct sockaddr *)&l->addr, l->addrlen, NULL, &oc) == -EMFILE);
    close(a);
    close(b);
    spin(0.1);
    base_config();
    conn_configure(&cfg, NULL);
}

static void test_connect(struct listener *l)
{
    reset_msgs();
    uint64_t connected = stats.conn_connected;
    struct conn *c = NULL;
    int r = conn_connect(SIP_TP_TCP, (struct sockaddr *)&l->addr, l->addrlen, NULL, &c);
    CHECK(r == 0 && c != NULL);
    if (!c)
        return;
    uint64_t id = c->id;
    conn_ref(c);
    CHECK(c->outgoing == 1 && c->state == CONN_CONNECTING);
    CHECK(conn_find(SIP_TP_TCP, (struct sockaddr *)&l->addr, l->addrlen) == c);
    CHECK(c->listener == l);
    /* queued before the connection is open: leaves once it is */
    char m1[512];
    sip_msg(m1, sizeof(m1), "from the client side");
    CHECK(conn_send(c, m1, strlen(m1)) == 0);
    CHECK(WAIT_FOR(nmsgs == 1, 2));
    CHECK(stats.conn_connected == connected + 1);
    CHECK(c->state == CONN_OPEN && c->local_port > 0);
    CHECK(strstr(conn_name(c), "->127.0.0.1:") != NULL);
    CHECK(nmsgs == 1 && msgs[0].len == strlen(m1) && memcmp(msgs[0].buf, m1, msgs[0].len) == 0);
    /* and back over the accepted side */
    struct conn *s = nmsgs ? conn_get(msgs[0].id) : NULL;
    CHECK(s && s != c && !s->outgoing);
    if (s) {
        char m2[512];
        sip_msg(m2, sizeof(m2), "from the server side");
        CHECK(conn_send(s, m2, strlen(m2)) == 0);
        CHECK(WAIT_FOR(nmsgs == 2, 2));
        CHECK(nmsgs == 2 && msgs[1].id == id && memcmp(msgs[1].buf, m2, msgs[1].len) == 0);
    }
    struct seen_conn *sc = seen_of(c);
    CHECK(sc->opens == 1);
    /* we close: the server side sees the peer close */
    conn_close(c, 0, NULL);
    CHECK(c->state == CONN_CLOSING);
    CHECK(sc->closes == 0); /* on_close never runs inside conn_close */
    CHECK(WAIT_FOR(sc->closes == 1, 3));
    CHECK(sc->was_open == 1 && sc->client_closed == 0 && sc->failed == 0);
    CHECK(c->state == CONN_CLOSED && conn_get(id) == NULL);
    conn_unref(c);

    /* a closed port: failed = 1, never open (or refused at once) */
    int probe = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET };
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    socklen_t sl = sizeof(sa);
    bind(probe, (struct sockaddr *)&sa, sizeof(sa));
    getsockname(probe, (struct sockaddr *)&sa, &sl);
    close(probe); /* the port is now (very likely) closed */
    uint64_t failed = stats.conn_connect_failed;
    struct conn *f = NULL;
    r = conn_connect(SIP_TP_TCP, (struct sockaddr *)&sa, sizeof(sa), NULL, &f);
    if (r == 0) {
        struct seen_conn *sf = seen_of(f);
        CHECK(WAIT_FOR(sf->closes == 1, 3));
        CHECK(sf->was_open == 0 && sf->failed == 1 && sf->client_closed == 0 && sf->opens == 0);
    } else {
        CHECK(r == -ECONNREFUSED);
    }
    CHECK(stats.conn_connect_failed == failed + 1);

    /* ws and tls without a context are refused */
    CHECK(conn_connect(SIP_TP_WS, (struct sockaddr *)&sa, sizeof(sa), NULL, &f) == -EPROTONOSUPPORT);
    CHECK(conn_connect(SIP_TP_TLS, (struct sockaddr *)&sa, sizeof(sa), NULL, &f) == -EPROTONOSUPPORT);
}

static void test_close_in_hook(struct listener *l)
{
    reset_msgs();
    close_in_message = 1;
    echo_in_message = 1;
    nested_close = 0;
    char m[512], two[1100];
    sip_msg(m, sizeof(m), "");
    snprintf(two, sizeof(two), "%s%s", m, m);
    int fd = client_connect(l->port);
    client_send_str(fd, two);
    /* only the first is delivered; its answer (sent before the close) is flushed */
    char rb[64];
    size_t rl = 0;
    int eof = client_read(fd, rb, sizeof(rb), &rl, sizeof(rb), 2);
    if (!eof)
        eof = client_eof(fd, 2);
    CHECK(eof);
    char want[32];
    snprintf(want, sizeof(want), "ECHO %zu", strlen(m));
    CHECK_MSG(rl == strlen(want) && memcmp(rb, want, rl) == 0, "got %zu bytes", rl);
    CHECK(nmsgs == 1);
    close(fd);
    CHECK(nmsgs == 1 && WAIT_FOR(conn_get(msgs[0].id) == NULL, 1));
    CHECK(nested_close == 0);
    close_in_message = 0;
    echo_in_message = 0;
}

static void test_idle_timeout(struct listener *l)
{
    base_config();
    cfg.connection_idle_timeout = 0.3;
    conn_configure(&cfg, NULL);
    uint64_t idle = stats.conn_idle_timeout;
    int fd = client_connect(l->port);
    spin(0.05);
    struct seen_conn *s = seen_last();
    /* use keeps it: a message at 0.2 s moves the deadline */
    spin(0.2);
    char m[512];
    sip_msg(m, sizeof(m), "");
    client_send_str(fd, m);
    spin(0.2);
    char b[8];
    ssize_t n = recv(fd, b, sizeof(b), MSG_DONTWAIT);
    CHECK(n == -1 && errno == EAGAIN);
    double t0 = mono();
    CHECK(client_eof(fd, 2));
    double took = mono() - t0;
    CHECK_MSG(took < 0.5, "%.3f", took);
    CHECK(stats.conn_idle_timeout == idle + 1);
    CHECK(WAIT_FOR(s->closes == 1, 3));
    CHECK(s->was_open == 1 && s->client_closed == 0);
    close(fd);
    base_config();
    conn_configure(&cfg, NULL);
}

static void test_send_overflow(struct listener *l)
{
    last_open = NULL;
    int fd = client_connect(l->port);
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    CHECK(WAIT_FOR(last_open && !last_open->outgoing && last_open->state == CONN_OPEN, 2));
    struct conn *c = last_open;
    conn_ref(c);
    struct seen_conn *s = seen_of(c);
    uint64_t ov = stats.conn_send_overflow;
    static char chunk[60000];
    memset(chunk, 'x', sizeof(chunk));
    int r = 0, i;
    for (i = 0; i < 1000 && r == 0; i++)
        r = conn_send(c, chunk, sizeof(chunk));
    CHECK(r == -ENOBUFS);
    CHECK(stats.conn_send_overflow == ov + 1);
    CHECK(conn_send(c, "x", 1) == -EPIPE);
    CHECK(WAIT_FOR(s->closes == 1, 3));
    CHECK(s->failed == 1);
    conn_unref(c);
    close(fd);
}

/* ----- WebSocket ----- */

static size_t ws_client_frame(uint8_t *out, int op, const void *payload, size_t len)
{
    static const uint8_t key[4] = { 0x37, 0xfa, 0x21, 0x3d };
    size_t h = 0;
    out[h++] = (uint8_t)(0x80 | op);
    if (len < 126) {
        out[h++] = (uint8_t)(0x80 | len);
    } else {
        out[h++] = 0x80 | 126;
        out[h++] = (uint8_t)(len >> 8);
        out[h++] = (uint8_t)len;
    }
    memcpy(out + h, key, 4);
    h += 4;
    for (size_t i = 0; i < len; i++)
        out[h + i] = ((const uint8_t *)payload)[i] ^ key[i % 4];
    return h + len;
}

static const char *ws_request =
    "GET /sip HTTP/1.1\r\n"
    "Host: 127.0.0.1\r\n"
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Origin: http://example.com\r\n"
    "Sec-WebSocket-Protocol: sip\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n";

/* Upgrades fd; returns 1 when the 101 came with the RFC 6455 §1.3 accept key. */
static int ws_upgrade(int fd, const char *req)
{
    client_send_str(fd, req);
    char rb[1024];
    size_t rl = 0;
    double end = mono() + 2;
    while (mono() < end) {
        if (client_read(fd, rb, sizeof(rb) - 1, &rl, sizeof(rb) - 1, 0.01))
            break;
        rb[rl] = 0;
        if (strstr(rb, "\r\n\r\n"))
            break;
    }
    rb[rl] = 0;
    return strncmp(rb, "HTTP/1.1 101", 12) == 0 && strstr(rb, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") != NULL;
}

static int ws_status(int fd, const char *req)
{
    client_send_str(fd, req);
    char rb[1024];
    size_t rl = 0;
    client_read(fd, rb, sizeof(rb) - 1, &rl, 12, 2);
    rb[rl] = 0;
    return rl >= 12 ? atoi(rb + 9) : 0;
}

/* Reads one server frame (unmasked). Returns the opcode or -1. */
static int ws_read_frame(int fd, uint8_t *payload, size_t cap, size_t *plen)
{
    uint8_t b[70000];
    size_t bl = 0;
    client_read(fd, (char *)b, sizeof(b), &bl, 2, 2);
    if (bl < 2)
        return -1;
    size_t len = b[1] & 0x7f, h = 2;
    if (b[1] & 0x80)
        return -2; /* a server never masks */
    if (len == 126) {
        client_read(fd, (char *)b, sizeof(b), &bl, 4, 2);
        len = (size_t)b[2] << 8 | b[3];
        h = 4;
    }
    client_read(fd, (char *)b, sizeof(b), &bl, h + len, 2);
    if (bl < h + len || len > cap)
        return -1;
    memcpy(payload, b + h, len);
    *plen = len;
    return b[0] & 0x0f;
}

static void test_ws(void)
{
    struct listener *l = listen_on(CONFIG_LISTEN_WS);
    CHECK(l->transport == SIP_TP_WS && strncmp(l->name, "ws:127.0.0.1:", 13) == 0);
    reset_msgs();
    uint64_t up = stats.ws_upgrades, rej = stats.ws_rejected;
    int fd = client_connect(l->port);
    CHECK(ws_upgrade(fd, ws_request));
    CHECK(stats.ws_upgrades == up + 1);
    char m[512];
    sip_msg(m, sizeof(m), "over websocket");
    uint8_t f[1200];
    size_t fl = ws_client_frame(f, WS_OP_TEXT, m, strlen(m));
    /* a ping in the same write, after the message */
    fl += ws_client_frame(f + fl, WS_OP_PING, "abc", 3);
    client_send(fd, f, fl);
    CHECK(WAIT_FOR(nmsgs == 1, 2));
    CHECK(nmsgs == 1 && msgs[0].len == strlen(m) && memcmp(msgs[0].buf, m, msgs[0].len) == 0);
    uint8_t pl[70000];
    size_t plen = 0;
    CHECK(ws_read_frame(fd, pl, sizeof(pl), &plen) == WS_OP_PONG);
    CHECK(plen == 3 && memcmp(pl, "abc", 3) == 0);

    /* sending from lunasip: a text frame */
    struct conn *c = nmsgs ? conn_get(msgs[0].id) : NULL;
    CHECK(c && c->transport == SIP_TP_WS);
    if (c) {
        CHECK(conn_send(c, m, strlen(m)) == 0);
        CHECK(ws_read_frame(fd, pl, sizeof(pl), &plen) == WS_OP_TEXT);
        CHECK(plen == strlen(m) && memcmp(pl, m, plen) == 0);
    }

    /* the peer's close (no code): answered with 1000, client_closed */
    struct seen_conn *s = c ? seen_of(c) : NULL;
    fl = ws_client_frame(f, WS_OP_CLOSE, "", 0);
    client_send(fd, f, fl);
    CHECK(ws_read_frame(fd, pl, sizeof(pl), &plen) == WS_OP_CLOSE);
    CHECK(plen == 2 && pl[0] == 0x03 && pl[1] == 0xe8);
    close(fd);
    if (s) {
        CHECK(WAIT_FOR(s->closes == 1, 3));
        CHECK(s->was_open == 1 && s->client_closed == 1 && s->failed == 0);
    }

    /* a protocol error (unmasked frame): close 1002 */
    uint64_t perr = stats.ws_protocol_errors;
    fd = client_connect(l->port);
    CHECK(ws_upgrade(fd, ws_request));
    uint8_t unmasked[] = { 0x81, 0x01, 'x' };
    client_send(fd, unmasked, sizeof(unmasked));
    CHECK(ws_read_frame(fd, pl, sizeof(pl), &plen) == WS_OP_CLOSE);
    CHECK(plen >= 2 && pl[0] == 0x03 && pl[1] == 0xea);
    CHECK(stats.ws_protocol_errors == perr + 1);
    close(fd);

    /* no sip subprotocol: 400; a refusing hook: its code */
    fd = client_connect(l->port);
    char req[1024];
    snprintf(req, sizeof(req), "%s", ws_request);
    char *proto = strstr(req, "Sec-WebSocket-Protocol: sip\r\n");
    memmove(proto, proto + 29, strlen(proto + 29) + 1);
    CHECK(ws_status(fd, req) == 400);
    CHECK(client_eof(fd, 3));
    close(fd);
    ws_upgrade_answer = 403;
    fd = client_connect(l->port);
    CHECK(ws_status(fd, ws_request) == 403);
    close(fd);
    ws_upgrade_answer = 0;

    /* allowed_origins */
    base_config();
    char *origins[] = { "https://good.example" };
    cfg.ws_allowed_origins = origins;
    cfg.nws_allowed_origins = 1;
    conn_configure(&cfg, NULL);
    fd = client_connect(l->port);
    CHECK(ws_status(fd, ws_request) == 403);
    close(fd);
    fd = client_connect(l->port);
    snprintf(req, sizeof(req), "%s", ws_request);
    char *o = strstr(req, "http://example.com");
    memmove(o + 20, o + 18, strlen(o + 18) + 1);
    memcpy(o, "https://good.example", 20);
    CHECK(ws_upgrade(fd, req));
    close(fd);
    CHECK(stats.ws_rejected == rej + 3);

    /* keepalive: ping after keepalive_interval, closed when no pong */
    base_config();
    cfg.ws_keepalive_interval = 0.2;
    cfg.ws_pong_timeout = 0.2;
    conn_configure(&cfg, NULL);
    uint64_t pings = stats.ws_pings_sent, pto = stats.ws_pong_timeouts;
    fd = client_connect(l->port);
    CHECK(ws_upgrade(fd, ws_request));
    CHECK(ws_read_frame(fd, pl, sizeof(pl), &plen) == WS_OP_PING);
    CHECK(stats.ws_pings_sent == pings + 1);
    /* answer: the connection lives on and gets another ping */
    fl = ws_client_frame(f, WS_OP_PONG, pl, plen);
    client_send(fd, f, fl);
    CHECK(ws_read_frame(fd, pl, sizeof(pl), &plen) == WS_OP_PING);
    /* do not answer: closed */
    CHECK(client_eof(fd, 2));
    CHECK(stats.ws_pong_timeouts == pto + 1);
    close(fd);
    base_config();
    conn_configure(&cfg, NULL);

    /* header_timeout applies to the upgrade request */
    base_config();
    cfg.header_timeout = 0.2;
    conn_configure(&cfg, NULL);
    uint64_t ht = stats.conn_header_timeout;
    fd = client_connect(l->port);
    client_send_str(fd, "GET / HTTP/1.1\r\n");
    CHECK(client_eof(fd, 3));
    CHECK(stats.conn_header_timeout == ht + 1);
    close(fd);
    base_config();
    conn_configure(&cfg, NULL);

    spin(0.1);
    conn_listener_close(loop, l);
}

/* ----- TLS ----- */

static void test_tls(void)
{
    if (access("t/data/tls/server.crt", R_OK) != 0) {
        printf("skipping TLS: no t/data/tls/server.crt\n");
        return;
    }
    base_config();
    char cert[256], key[256], ca[256];
    snprintf(cert, sizeof(cert), "t/data/tls/server.crt");
    snprintf(key, sizeof(key), "t/data/tls/server.key");
    snprintf(ca, sizeof(ca), "t/data/tls/ca.crt");
    cfg.tls_certificate = cert;
    cfg.tls_private_key = key;
    cfg.tls_ca_file = ca;
    cfg.tls_min_version = "1.2";
    cfg.tls_verify_client = CONFIG_VERIFY_OPTIONAL;
    struct tls_ctx *ctx = NULL;
    char err[512];
    if (tls_ctx_new(&cfg, &ctx, err, sizeof(err)) != 0) {
        printf("skipping TLS: %s\n", err);
        return;
    }
    conn_configure(&cfg, ctx);
    tls_ctx_unref(ctx); /* conn holds its own reference */
    struct listener *l = listen_on(CONFIG_LISTEN_TLS);
    reset_msgs();
    tls_hs_calls = tls_hs_server_side = 0;
    uint64_t hs = stats.tls_handshakes;

    struct conn *c = NULL;
    CHECK(conn_connect(SIP_TP_TLS, (struct sockaddr *)&l->addr, l->addrlen, NULL, &c) == 0);
    if (c) {
        conn_ref(c);
        char m[512];
        sip_msg(m, sizeof(m), "over tls");
        CHECK(conn_send(c, m, strlen(m)) == 0);
        CHECK(WAIT_FOR(nmsgs == 1, 3));
        CHECK(nmsgs == 1 && msgs[0].len == strlen(m) && memcmp(msgs[0].buf, m, msgs[0].len) == 0);
        CHECK(stats.tls_handshakes == hs + 2);
        CHECK(tls_hs_calls == 2 && tls_hs_server_side == 1);
        struct conn *s = nmsgs ? conn_get(msgs[0].id) : NULL;
        CHECK(s && s->transport == SIP_TP_TLS && s->tls != NULL);
        if (s) {
            /* several messages back, and a ping */
            char big[3000];
            memset(big, 'b', sizeof(big) - 1);
            big[sizeof(big) - 1] = 0;
            char m2[3600];
            sip_msg(m2, sizeof(m2), big);
            for (int i = 0; i < 3; i++)
                CHECK(conn_send(s, m2, strlen(m2)) == 0);
            CHECK(WAIT_FOR(nmsgs == 4, 3));
            CHECK(nmsgs == 4 && msgs[3].len == strlen(m2) && msgs[3].id == c->id);
        }
        struct seen_conn *sc = seen_of(c);
        conn_close(c, 0, NULL);
        CHECK(WAIT_FOR(sc->closes == 1, 3));
        CHECK(sc->failed == 0 && sc->was_open == 1);
        conn_unref(c);
    }

    /* a rejecting handshake callback */
    uint64_t rejected = stats.tls_rejected;
    tls_hs_answer = -1;
    c = NULL;
    CHECK(conn_connect(SIP_TP_TLS, (struct sockaddr *)&l->addr, l->addrlen, NULL, &c) == 0);
    if (c) {
        struct seen_conn *sc = seen_of(c);
        CHECK(WAIT_FOR(sc->closes == 1, 3));
        CHECK(sc->was_open == 0 && sc->failed == 1);
    }
    CHECK(stats.tls_rejected >= rejected + 1);
    tls_hs_answer = 0;

    /* a plain-text client on the TLS port: the handshake fails */
    uint64_t hsf = stats.tls_handshake_failed;
    int fd = client_connect(l->port);
    client_send_str(fd, "OPTIONS sip:a SIP/2.0\r\n\r\n");
    CHECK(client_eof(fd, 3));
    CHECK(stats.tls_handshake_failed == hsf + 1);
    close(fd);

    base_config();
    conn_configure(&cfg, NULL);
    spin(0.1);
    conn_listener_close(loop, l);
}

static void test_tls_handshake_timeout(void)
{
    if (access("t/data/tls/server.crt", R_OK) != 0)
        return;
    base_config();
    cfg.tls_certificate = "t/data/tls/server.crt";
    cfg.tls_private_key = "t/data/tls/server.key";
    cfg.tls_min_version = "1.2";
    cfg.tls_verify_client = CONFIG_VERIFY_NONE;
    struct tls_ctx *ctx = NULL;
    char err[512];
    if (tls_ctx_new(&cfg, &ctx, err, sizeof(err)) != 0)
        return;
    cfg.tls_handshake_timeout = 0.2;
    conn_configure(&cfg, ctx);
    tls_ctx_unref(ctx);
    struct listener *l = listen_on(CONFIG_LISTEN_TLS);
    uint64_t hsf = stats.tls_handshake_failed;
    int fd = client_connect(l->port);
    double t0 = mono();
    CHECK(client_eof(fd, 2));
    CHECK_MSG(mono() - t0 < 0.6, "%.3f", mono() - t0);
    CHECK(stats.tls_handshake_failed == hsf + 1);
    close(fd);
    spin(0.05);
    conn_listener_close(loop, l);
    base_config();
    conn_configure(&cfg, NULL);
}


/* ----- wss: a TLS client driven from here ----- */

static struct tls_session *tc_connect(int port, struct tls_ctx *ctx, int *fdp)
{
    int fd = client_connect(port);
    struct tls_session *s = tls_session_client(ctx, fd, NULL, 0);
    double end = mono() + 3;
    int rc;
    while ((rc = tls_handshake(s)) == TLS_WANT_READ || rc == TLS_WANT_WRITE) {
        if (mono() > end)
            break;
        spin_once();
    }
    CHECK(rc == TLS_OK);
    *fdp = fd;
    return s;
}

static void tc_write(struct tls_session *s, const void *buf, size_t len)
{
    const char *p = buf;
    double end = mono() + 3;
    while (len && mono() < end) {
        long n = tls_write(s, p, len);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
        } else if (n == TLS_WANT_READ || n == TLS_WANT_WRITE) {
            spin_once();
        } else {
            break;
        }
    }
    CHECK(len == 0);
}

/* Reads until want bytes, EOF or secs; returns 1 on EOF/close. */
static int tc_read(struct tls_session *s, char *buf, size_t cap, size_t *len, size_t want, double secs)
{
    double end = mono() + secs;
    while (*len < want && *len < cap) {
        long n = tls_read(s, buf + *len, cap - *len);
        if (n > 0) {
            *len += (size_t)n;
            continue;
        }
        if (n != TLS_WANT_READ && n != TLS_WANT_WRITE)
            return 1;
        if (mono() >= end)
            return 0;
        spin_once();
    }
    return 0;
}

static void test_wss(void)
{
    if (access("t/data/tls/server.crt", R_OK) != 0)
        return;
    base_config();
    cfg.tls_certificate = "t/data/tls/server.crt";
    cfg.tls_private_key = "t/data/tls/server.key";
    cfg.tls_min_version = "1.2";
    cfg.tls_verify_client = CONFIG_VERIFY_NONE;
    struct tls_ctx *ctx = NULL;
    char err[512];
    if (tls_ctx_new(&cfg, &ctx, err, sizeof(err)) != 0) {
        printf("skipping wss: %s\n", err);
        return;
    }
    conn_configure(&cfg, ctx);
    struct listener *l = listen_on(CONFIG_LISTEN_WSS);
    CHECK(l->transport == SIP_TP_WSS && strncmp(l->name, "wss:127.0.0.1:", 14) == 0);
    reset_msgs();
    int fd;
    struct tls_session *s = tc_connect(l->port, ctx, &fd);
    /* the upgrade and the first frame in one write: the frame waits in the session */
    char m[512];
    sip_msg(m, sizeof(m), "over wss");
    char out[2048];
    size_t ol = strlen(ws_request);
    memcpy(out, ws_request, ol);
    ol += ws_client_frame((uint8_t *)out + ol, WS_OP_TEXT, m, strlen(m));
    tc_write(s, out, ol);
    char rb[2048];
    size_t rl = 0;
    double end = mono() + 3;
    while (mono() < end && !memmem(rb, rl, "\r\n\r\n", 4))
        if (tc_read(s, rb, sizeof(rb), &rl, rl + 1, 0.05))
            break;
    CHECK(rl > 12 && strncmp(rb, "HTTP/1.1 101", 12) == 0);
    CHECK(WAIT_FOR(nmsgs == 1, 3));
    CHECK(nmsgs == 1 && msgs[0].len == strlen(m) && memcmp(msgs[0].buf, m, msgs[0].len) == 0);
    struct conn *c = nmsgs ? conn_get(msgs[0].id) : NULL;
    CHECK(c && c->transport == SIP_TP_WSS);
    if (c) {
        struct seen_conn *sc = seen_of(c);
        CHECK(conn_send(c, "hello", 5) == 0);
        rl = 0;
        tc_read(s, rb, sizeof(rb), &rl, 7, 3);
        CHECK(rl == 7 && (uint8_t)rb[0] == 0x81 && rb[1] == 5 && memcmp(rb + 2, "hello", 5) == 0);
        /* lunasip closes: a close frame 1001 with our reason */
        conn_close(c, WS_CLOSE_GOING_AWAY, "bye");
        rl = 0;
        tc_read(s, rb, sizeof(rb), &rl, 7, 3);
        CHECK(rl == 7 && (uint8_t)rb[0] == 0x88 && rb[1] == 5 && (uint8_t)rb[2] == 0x03 && (uint8_t)rb[3] == 0xe9);
        CHECK(WAIT_FOR(sc->closes == 1, 3));
        CHECK(sc->was_open == 1 && sc->client_closed == 0 && sc->failed == 0);
    }
    tls_session_free(s);
    close(fd);
    tls_ctx_unref(ctx);
    spin(0.05);
    conn_listener_close(loop, l);
    base_config();
    conn_configure(&cfg, NULL);
}

/* ----- EMFILE: accepting pauses instead of spinning ----- */

static double cpu_secs(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void test_emfile(struct listener *l)
{
    spin(0.05);
    uint64_t acc = stats.conn_accepted;
    int cl[3];
    for (int i = 0; i < 3; i++)
        cl[i] = client_connect(l->port); /* in the backlog, not accepted yet */
    struct rlimit old, low;
    getrlimit(RLIMIT_NOFILE, &old);
    low = old;
    low.rlim_cur = 512;
    if (setrlimit(RLIMIT_NOFILE, &low) != 0) {
        printf("skipping EMFILE: setrlimit\n");
        return;
    }
    static int fill[600];
    int nfill = 0;
    while (nfill < 600) {
        int d = dup(0);
        if (d == -1)
            break;
        fill[nfill++] = d;
    }
    double cpu0 = cpu_secs();
    spin(0.3);
    double cpu = cpu_secs() - cpu0;
    CHECK(stats.conn_accepted == acc);
    CHECK_MSG(cpu < 0.2, "%.3f s of CPU in 0.3 s while out of descriptors", cpu);
    for (int i = 0; i < nfill; i++)
        close(fill[i]);
    setrlimit(RLIMIT_NOFILE, &old);
    CHECK(WAIT_FOR(stats.conn_accepted == acc + 3, 2));
    for (int i = 0; i < 3; i++)
        close(cl[i]);
    spin(0.05);
}

static void test_shutdown(struct listener *l)
{
    int a = client_connect(l->port);
    int b = client_connect(l->port);
    CHECK(WAIT_FOR(conn_count() >= 2, 2));
    size_t n = conn_shutdown();
    CHECK(n >= 2);
    CHECK(WAIT_FOR(conn_count() == 0, 3));
    CHECK(client_eof(a, 1) && client_eof(b, 1));
    close(a);
    close(b);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    log_set_level(LOG_LVL_ERROR);
    if (getenv("CONN_DEBUG"))
        log_set_level(LOG_LVL_DEBUG);
    loop = ev_default_loop(0);
    conn_init(loop);
    conn_set_hooks(&test_hooks);
    base_config();
    conn_configure(&cfg, NULL);

    struct listener *l = listen_on(CONFIG_LISTEN_TCP);
    CHECK(l->transport == SIP_TP_TCP && l->port > 0 && strncmp(l->name, "tcp:127.0.0.1:", 14) == 0);

    test_framing_and_keepalive(l);
    test_oversized_and_framing(l);
    test_header_timeout(l);
    test_per_ip_limit(l);
    test_total_limit(l);
    test_connect(l);
    test_close_in_hook(l);
    test_idle_timeout(l);
    test_send_overflow(l);
    test_ws();
    test_tls();
    test_tls_handshake_timeout();
    test_wss();
    test_emfile(l);
    test_shutdown(l);

    /* every connection left the table exactly once */
    spin(0.1);
    CHECK(conn_count() == 0);
    int bad = 0;
    for (int i = 0; i < nseen; i++)
        if (seen[i].closes != 1) {
            bad++;
            fprintf(stderr, "connection %llu closed %d times\n", (unsigned long long)seen[i].id, seen[i].closes);
        }
    CHECK(bad == 0);
    CHECK(nested_close == 0);
    CHECK(nseen > 20);

    conn_listener_close(loop, l);
    conn_shutdown_now();
    reset_msgs();
    ev_loop_destroy(loop);
    TEST_DONE();
}
