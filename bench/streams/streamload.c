/* bench/streams/streamload.c: the load generator of the stream-transport bench
 * (bench/stream_bench.py). SIP over TCP, TLS, WebSocket (RFC 7118, masked frames,
 * Sec-WebSocket-Protocol: sip) and WSS, one epoll loop per thread, non-blocking sockets;
 * TLS through mbedTLS as a client that verifies nothing and never resumes a session
 * (no session id kept, tickets off): every TLS handshake is a full one.
 *
 *   streamload msgs MODE IP PORT [options]   MODE tcp|tls|ws|wss. -c N connections, each
 *       with at most -w W OPTIONS requests in flight (pipelined: a new request leaves when a
 *       response arrives). -r RATE caps the requests sent per second over all connections
 *       (0, the default: as fast as the responses come back).
 *   streamload hs MODE IP PORT [options]     MODE tls|tcp|ws|wss. -c K connections in
 *       parallel, each: connect, (TLS handshake, WebSocket upgrade), one OPTIONS, read its
 *       200, close (TLS close_notify first), then the next connection at once.
 *
 *   -d SEC   the measured window (default 3); -W SEC warm-up before it (default 0.5)
 *   -t T     threads, each with its share of the connections (default 1)
 *   -p PID[,PID...]  the server's processes: the sum of se.sum_exec_runtime of every thread
 *            of each is read at the start and at the end of the window (exact CPU time)
 *   -m METHOD  OPTIONS (default) or MESSAGE (with a short text/plain body)
 *   -g GROUPS  the elliptic curves the TLS client offers, in order, comma-separated mbedTLS
 *            names (x25519,secp256r1,...); by default mbedTLS's own list (every curve it has,
 *            largest first), which offers secp521r1 as OpenSSL's default list does
 *
 * Every connection is open (msgs) before the warm-up starts; what the server answers is
 * checked: a response other than 200, a malformed frame or response, or a connection the
 * server closes counts as an error. At the end one line on stdout:
 *   result mode=... sent=N ok=N bad=N errors=N ... per_s=X server_cpu_ns=N ...
 * (machine_cpu_ns: every task of the machine over the window, -1 when unknown).
 * Loopback use only; links mbedTLS (a dependency of lunasip already). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <mbedtls/base64.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/ecp.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/sha1.h>
#include <mbedtls/ssl.h>

enum mode { M_TCP = 0, M_TLS, M_WS, M_WSS };
enum cstate { C_IDLE = 0, C_CONNECTING, C_TLS, C_UPGRADE, C_OPEN };

static const char *const mode_names[] = { "tcp", "tls", "ws", "wss" };
static const char *const via_names[] = { "TCP", "TLS", "WS", "WSS" };

/* options */
static int hs_mode;           /* 0: msgs, 1: hs */
static enum mode mode;
static struct sockaddr_in dst;
static char dst_ip[64];
static int dst_port;
static int nconns = 50, window = 8, nthreads = 1;
static double rate, seconds = 3.0, warmup = 0.5;
static const char *method = "OPTIONS";
static int server_pids[64], nserver_pids;
static mbedtls_ecp_group_id curves[16]; /* -g: the groups the client offers; none: mbedTLS's list */

static volatile int stop_flag;       /* threads stop */
static volatile int measuring;       /* 1 inside the window: latencies are recorded */

#define INBUF (256 * 1024)
#define OUTBUF (256 * 1024)

struct conn {
    int fd;
    int idx;
    enum cstate state;
    int epout;                    /* EPOLLOUT armed */
    mbedtls_ssl_context ssl;
    int ssl_init;
    size_t tls_wlen;              /* a TLS write that said WANT_WRITE: retry with this length */
    char *in;
    size_t inlen;
    char *out;
    size_t outlen, outoff;
    int inflight;
    uint32_t seq;
    char local[64];               /* ip:port for Via */
    char wskey[32];               /* our Sec-WebSocket-Key */
    uint64_t *sent_ns;            /* ring of send times, window entries */
    unsigned rhead, rtail;
    int sent_one;                 /* hs: the OPTIONS left */
};

struct counters {                /* written by one thread, read by main */
    volatile uint64_t sent, ok, bad, errors, closed_by_peer, cycles, opened, lat_n, lat_sum_ns, lat_max_ns;
};

struct thr {
    int id;
    pthread_t th;
    int ep;
    struct conn *conns;
    int n;
    struct counters c;
    double rate;                   /* this thread's share */
    uint64_t t_rate0;              /* when rate limiting started */
    uint64_t rate_sent;            /* requests sent under the rate limit */
    unsigned rr;                   /* round-robin start for the rate limiter */
    volatile int ready;            /* msgs: every connection open once */
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    mbedtls_ssl_config conf;
    uint64_t prng;
    char cipher[96], version[32];
    char errmsg[256];
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *fmt, const char *arg)
{
    fprintf(stderr, "streamload: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
    exit(2);
}

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* ---- server CPU: se.sum_exec_runtime of every thread of every PID, in ns ---- */

static uint64_t server_cpu_ns(void)
{
    uint64_t total = 0;
    for (int i = 0; i < nserver_pids; i++) {
        char path[128];
        snprintf(path, sizeof(path), "/proc/%d/task", server_pids[i]);
        DIR *d = opendir(path);
        if (!d)
            continue;
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (e->d_name[0] < '0' || e->d_name[0] > '9')
                continue;
            char sp[300], line[256];
            snprintf(sp, sizeof(sp), "/proc/%d/task/%s/sched", server_pids[i], e->d_name);
            FILE *f = fopen(sp, "r");
            if (!f)
                continue;
            while (fgets(line, sizeof(line), f)) {
                if (strncmp(line, "se.sum_exec_runtime", 19) == 0) {
                    char *colon = strchr(line, ':');
                    if (colon) {
                        /* "ms.ns": integer milliseconds, a dot, 6 digits */
                        char *dot = strchr(colon, '.');
                        uint64_t ms = strtoull(colon + 1, NULL, 10), frac = 0;
                        if (dot) {
                            char digits[7] = "000000";
                            for (int k = 0; k < 6 && isdigit((unsigned char)dot[1 + k]); k++)
                                digits[k] = dot[1 + k];
                            frac = strtoull(digits, NULL, 10);
                        }
                        total += ms * 1000000u + frac;
                    }
                    break;
                }
            }
            fclose(f);
        }
        closedir(d);
    }
    return total;
}

/* CPU time of everything on the machine (the root cpuacct cgroup, as sip_bench.py's
 * machine_cpu_ns), 0 when unknown: tells how much other work ran during the window */
static uint64_t machine_cpu_ns(void)
{
    static const char *const paths[] = { "/sys/fs/cgroup/cpuacct/cpuacct.usage",
                                         "/sys/fs/cgroup/cpu,cpuacct/cpuacct.usage", NULL };
    for (int i = 0; paths[i]; i++) {
        FILE *f = fopen(paths[i], "r");
        if (!f)
            continue;
        unsigned long long v = 0;
        int ok = fscanf(f, "%llu", &v) == 1;
        fclose(f);
        if (ok)
            return v;
    }
    FILE *f = fopen("/sys/fs/cgroup/cpu.stat", "r");
    if (f) {
        char line[128];
        unsigned long long v;
        while (fgets(line, sizeof(line), f))
            if (sscanf(line, "usage_usec %llu", &v) == 1) {
                fclose(f);
                return v * 1000u;
            }
        fclose(f);
    }
    return 0;
}

static uint64_t self_cpu_ns(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000u +
           (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000u;
}

/* ---- TLS ---- */

static int bio_send(void *ctx, const unsigned char *buf, size_t len)
{
    int fd = *(int *)ctx;
    ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
    if (n >= 0)
        return (int)n;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        return MBEDTLS_ERR_SSL_WANT_WRITE;
    return errno == EPIPE || errno == ECONNRESET ? MBEDTLS_ERR_NET_CONN_RESET : MBEDTLS_ERR_NET_SEND_FAILED;
}

static int bio_recv(void *ctx, unsigned char *buf, size_t len)
{
    int fd = *(int *)ctx;
    ssize_t n = recv(fd, buf, len, 0);
    if (n >= 0)
        return (int)n;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        return MBEDTLS_ERR_SSL_WANT_READ;
    return errno == ECONNRESET ? MBEDTLS_ERR_NET_CONN_RESET : MBEDTLS_ERR_NET_RECV_FAILED;
}

static int is_tls(void)
{
    return mode == M_TLS || mode == M_WSS;
}

static int is_ws(void)
{
    return mode == M_WS || mode == M_WSS;
}

static void tls_setup(struct thr *t)
{
    char pers[32];
    snprintf(pers, sizeof(pers), "streamload-%d", t->id);
    mbedtls_entropy_init(&t->entropy);
    mbedtls_ctr_drbg_init(&t->drbg);
    mbedtls_ssl_config_init(&t->conf);
    if (mbedtls_ctr_drbg_seed(&t->drbg, mbedtls_entropy_func, &t->entropy, (const unsigned char *)pers,
                              strlen(pers)) != 0)
        die("%s", "ctr_drbg_seed failed");
    if (mbedtls_ssl_config_defaults(&t->conf, MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_TRANSPORT_STREAM,
                                    MBEDTLS_SSL_PRESET_DEFAULT) != 0)
        die("%s", "ssl_config_defaults failed");
    /* a load generator: no chain to check (the server's is self-signed); the handshake's
     * cryptography (key exchange, the server's signature) is done in full all the same */
    mbedtls_ssl_conf_authmode(&t->conf, MBEDTLS_SSL_VERIFY_NONE);
    mbedtls_ssl_conf_rng(&t->conf, mbedtls_ctr_drbg_random, &t->drbg);
#if defined(MBEDTLS_SSL_SESSION_TICKETS)
    mbedtls_ssl_conf_session_tickets(&t->conf, MBEDTLS_SSL_SESSION_TICKETS_DISABLED);
#endif
    if (curves[0] != MBEDTLS_ECP_DP_NONE)
        mbedtls_ssl_conf_curves(&t->conf, curves);
}

/* ---- connection I/O ---- */

/* > 0 bytes, 0 EOF, -1 would block, -2 error */
static ssize_t c_read(struct conn *c, char *buf, size_t len)
{
    if (is_tls()) {
        int r = mbedtls_ssl_read(&c->ssl, (unsigned char *)buf, len);
        if (r > 0)
            return r;
        if (r == MBEDTLS_ERR_SSL_WANT_READ || r == MBEDTLS_ERR_SSL_WANT_WRITE)
            return -1;
        if (r == 0 || r == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY || r == MBEDTLS_ERR_SSL_CONN_EOF)
            return 0;
        return -2;
    }
    ssize_t n = recv(c->fd, buf, len, 0);
    if (n >= 0)
        return n;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        return -1;
    return -2;
}

/* >= 0 bytes taken, -1 would block, -2 error */
static ssize_t c_write(struct conn *c, const char *buf, size_t len)
{
    if (is_tls()) {
        if (c->tls_wlen)
            len = c->tls_wlen;   /* mbedTLS: retry a blocked write with the same length */
        int r = mbedtls_ssl_write(&c->ssl, (const unsigned char *)buf, len);
        if (r >= 0) {
            c->tls_wlen = 0;
            return r;
        }
        if (r == MBEDTLS_ERR_SSL_WANT_WRITE || r == MBEDTLS_ERR_SSL_WANT_READ) {
            c->tls_wlen = len > 16384 ? 16384 : len; /* mbedTLS writes at most one record */
            return -1;
        }
        return -2;
    }
    ssize_t n = send(c->fd, buf, len, MSG_NOSIGNAL);
    if (n >= 0)
        return n;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        return -1;
    return -2;
}

static void arm(struct thr *t, struct conn *c, int out)
{
    if (c->epout == out)
        return;
    struct epoll_event ev = { .events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c };
    epoll_ctl(t->ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->epout = out;
}

static void conn_close(struct thr *t, struct conn *c, int graceful)
{
    if (c->fd < 0)
        return;
    if (graceful && is_tls() && c->state == C_OPEN)
        (void)mbedtls_ssl_close_notify(&c->ssl); /* best effort, non-blocking */
    epoll_ctl(t->ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->state = C_IDLE;
    c->inlen = c->outlen = c->outoff = 0;
    c->inflight = 0;
    c->tls_wlen = 0;
    c->rhead = c->rtail = 0;
    c->sent_one = 0;
}

static int conn_open(struct thr *t, struct conn *c)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(t->errmsg, sizeof(t->errmsg), "socket: %s", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->fd = fd;
    c->state = C_CONNECTING;
    c->epout = 1;
    struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT, .data.ptr = c };
    if (connect(fd, (struct sockaddr *)&dst, sizeof(dst)) != 0 && errno != EINPROGRESS) {
        snprintf(t->errmsg, sizeof(t->errmsg), "connect: %s", strerror(errno));
        close(fd);
        c->fd = -1;
        c->state = C_IDLE;
        return -1;
    }
    epoll_ctl(t->ep, EPOLL_CTL_ADD, fd, &ev);
    return 0;
}

/* ---- requests ---- */

static void out_reserve(struct conn *c, size_t need)
{
    if (c->outoff && c->outoff == c->outlen)
        c->outoff = c->outlen = 0;
    if (c->outlen + need > OUTBUF && c->outoff) {
        memmove(c->out, c->out + c->outoff, c->outlen - c->outoff);
        c->outlen -= c->outoff;
        c->outoff = 0;
    }
}

/* Appends one request (framed for ws/wss) to c->out. */
static void add_request(struct thr *t, struct conn *c)
{
    char msg[1024];
    const char *body = strcmp(method, "MESSAGE") == 0 ? "lunasip stream bench" : "";
    size_t blen = strlen(body);
    uint32_t seq = ++c->seq;
    int n;
    if (is_ws())
        n = snprintf(msg, sizeof(msg),
                     "%s sip:bench@%s:%d;transport=%s SIP/2.0\r\n"
                     "Via: SIP/2.0/%s t%dc%d.invalid;branch=z9hG4bK-%d-%d-%u;rport\r\n"
                     "Max-Forwards: 70\r\n"
                     "From: <sip:load@t%dc%d.invalid>;tag=%d-%d\r\n"
                     "To: <sip:bench@%s:%d>\r\n"
                     "Call-ID: %d-%d-%u@streamload\r\n"
                     "CSeq: %u %s\r\n"
                     "Contact: <sip:load@t%dc%d.invalid;transport=%s>\r\n"
                     "User-Agent: lunasip-bench streamload\r\n"
                     "%s"
                     "Content-Length: %zu\r\n\r\n%s",
                     method, dst_ip, dst_port, mode_names[mode], via_names[mode], t->id, c->idx, t->id, c->idx,
                     seq, t->id, c->idx, t->id, c->idx, dst_ip, dst_port, t->id, c->idx, seq, seq, method, t->id,
                     c->idx, mode_names[mode], blen ? "Content-Type: text/plain\r\n" : "", blen, body);
    else
        n = snprintf(msg, sizeof(msg),
                     "%s sip:bench@%s:%d;transport=%s SIP/2.0\r\n"
                     "Via: SIP/2.0/%s %s;branch=z9hG4bK-%d-%d-%u;rport\r\n"
                     "Max-Forwards: 70\r\n"
                     "From: <sip:load@%s>;tag=%d-%d\r\n"
                     "To: <sip:bench@%s:%d>\r\n"
                     "Call-ID: %d-%d-%u@streamload\r\n"
                     "CSeq: %u %s\r\n"
                     "Contact: <sip:load@%s;transport=%s>\r\n"
                     "User-Agent: lunasip-bench streamload\r\n"
                     "%s"
                     "Content-Length: %zu\r\n\r\n%s",
                     method, dst_ip, dst_port, mode_names[mode], via_names[mode], c->local, t->id, c->idx, seq,
                     c->local, t->id, c->idx, dst_ip, dst_port, t->id, c->idx, seq, seq, method, c->local,
                     mode_names[mode], blen ? "Content-Type: text/plain\r\n" : "", blen, body);
    size_t len = (size_t)n;
    out_reserve(c, len + 14);
    if (c->outlen + len + 14 > OUTBUF)
        return; /* cannot happen with window * 1 KB < OUTBUF */
    char *o = c->out + c->outlen;
    if (is_ws()) {
        /* RFC 6455 §5.2: FIN, opcode 1 (text), MASK, length, masking key, masked payload */
        size_t h = 0;
        o[h++] = (char)0x81;
        if (len < 126) {
            o[h++] = (char)(0x80 | len);
        } else {
            o[h++] = (char)(0x80 | 126);
            o[h++] = (char)(len >> 8);
            o[h++] = (char)(len & 0xff);
        }
        uint32_t key = (uint32_t)xorshift(&t->prng);
        unsigned char mk[4];
        memcpy(mk, &key, 4);
        memcpy(o + h, mk, 4);
        h += 4;
        for (size_t i = 0; i < len; i++)
            o[h + i] = (char)(msg[i] ^ mk[i & 3]);
        c->outlen += h + len;
    } else {
        memcpy(o, msg, len);
        c->outlen += len;
    }
    c->inflight++;
    if (c->sent_ns) {
        c->sent_ns[c->rhead % (unsigned)window] = now_ns();
        c->rhead++;
    }
    t->c.sent++;
}

/* Writes what c->out holds; -1 on a connection error. */
static int flush_out(struct thr *t, struct conn *c)
{
    while (c->outoff < c->outlen) {
        ssize_t n = c_write(c, c->out + c->outoff, c->outlen - c->outoff);
        if (n == -1) {
            arm(t, c, 1);
            return 0;
        }
        if (n < 0)
            return -1;
        c->outoff += (size_t)n;
    }
    c->outoff = c->outlen = 0;
    if (c->state == C_OPEN || c->state == C_UPGRADE)
        arm(t, c, 0);
    return 0;
}

/* How many requests the rate limiter lets leave now (a large number without a limit). */
static long rate_allow(struct thr *t)
{
    if (t->rate <= 0)
        return 1L << 40;
    double el = (double)(now_ns() - t->t_rate0) / 1e9;
    double allowed = t->rate * el - (double)t->rate_sent;
    return allowed > 0 ? (long)allowed : 0;
}

/* msgs: tops c up to `window` requests in flight within the rate allowance *budget. */
static void top_up(struct thr *t, struct conn *c, long *budget)
{
    while (c->inflight < window && *budget > 0) {
        add_request(t, c);
        (*budget)--;
        t->rate_sent++;
    }
}

/* ---- responses ---- */

static int starts_200(const char *p, size_t len)
{
    return len >= 12 && memcmp(p, "SIP/2.0 200 ", 12) == 0;
}

static void got_response(struct thr *t, struct conn *c, const char *p, size_t len)
{
    if (starts_200(p, len))
        t->c.ok++;
    else {
        if (t->c.bad == 0) {
            size_t l = len < 60 ? len : 60;
            char first[64];
            memcpy(first, p, l);
            first[l] = 0;
            char *cr = strpbrk(first, "\r\n");
            if (cr)
                *cr = 0;
            snprintf(t->errmsg, sizeof(t->errmsg), "unexpected answer: %s", first);
        }
        t->c.bad++;
    }
    if (c->inflight > 0)
        c->inflight--;
    if (c->sent_ns && c->rtail != c->rhead) {
        uint64_t d = now_ns() - c->sent_ns[c->rtail % (unsigned)window];
        c->rtail++;
        if (measuring) {
            t->c.lat_n++;
            t->c.lat_sum_ns += d;
            if (d > t->c.lat_max_ns)
                t->c.lat_max_ns = d;
        }
    }
}

/* The Content-Length of a SIP head (long or compact form), 0 when absent. */
static long content_length(const char *h, size_t len)
{
    const char *p = h, *end = h + len;
    while (p < end) {
        const char *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
        if (!eol)
            eol = end;
        size_t l = (size_t)(eol - p);
        const char *v = NULL;
        if (l > 15 && strncasecmp(p, "Content-Length", 14) == 0)
            v = p + 14;
        else if (l > 2 && (p[0] == 'l' || p[0] == 'L') && (p[1] == ':' || p[1] == ' ' || p[1] == '\t'))
            v = p + 1;
        if (v) {
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            if (v < eol && *v == ':') {
                v++;
                return strtol(v, NULL, 10);
            }
        }
        p = eol + 2;
    }
    return 0;
}

/* Consumes complete messages from c->in. Returns -1 on a protocol error. */
static int parse_in(struct thr *t, struct conn *c)
{
    size_t off = 0;
    for (;;) {
        char *p = c->in + off;
        size_t avail = c->inlen - off;
        if (is_ws()) {
            if (avail < 2)
                break;
            unsigned char b0 = (unsigned char)p[0], b1 = (unsigned char)p[1];
            uint64_t plen = b1 & 0x7f;
            size_t h = 2;
            if (b1 & 0x80) {
                snprintf(t->errmsg, sizeof(t->errmsg), "masked frame from the server");
                return -1;
            }
            if (plen == 126) {
                if (avail < 4)
                    break;
                plen = ((uint64_t)(unsigned char)p[2] << 8) | (unsigned char)p[3];
                h = 4;
            } else if (plen == 127) {
                if (avail < 10)
                    break;
                plen = 0;
                for (int i = 0; i < 8; i++)
                    plen = (plen << 8) | (unsigned char)p[2 + i];
                h = 10;
            }
            if (plen > INBUF - 16) {
                snprintf(t->errmsg, sizeof(t->errmsg), "frame of %llu bytes", (unsigned long long)plen);
                return -1;
            }
            if (avail < h + plen)
                break;
            int op = b0 & 0x0f;
            if (op == 1 || op == 2 || op == 0) {
                if (op != 0 && !(b0 & 0x80)) {
                    snprintf(t->errmsg, sizeof(t->errmsg), "fragmented message");
                    return -1;
                }
                if (op != 0)
                    got_response(t, c, p + h, (size_t)plen);
            } else if (op == 9 && plen < 126) { /* ping: a masked pong with the same data */
                out_reserve(c, plen + 8);
                char *o = c->out + c->outlen;
                o[0] = (char)0x8a;
                o[1] = (char)(0x80 | plen);
                memset(o + 2, 0, 4); /* a zero masking key: the payload stays as it is */
                memcpy(o + 6, p + h, plen);
                c->outlen += 6 + plen;
            } else if (op == 8) {
                snprintf(t->errmsg, sizeof(t->errmsg), "the server closed the WebSocket");
                return -1;
            }
            off += h + (size_t)plen;
        } else {
            while (avail >= 2 && p[0] == '\r' && p[1] == '\n') { /* keepalive CRLFs */
                p += 2;
                off += 2;
                avail -= 2;
            }
            char *e = memmem(p, avail, "\r\n\r\n", 4);
            if (!e) {
                if (avail > 16384) {
                    snprintf(t->errmsg, sizeof(t->errmsg), "no end of head in 16 KB");
                    return -1;
                }
                break;
            }
            size_t hl = (size_t)(e - p) + 4;
            long cl = content_length(p, hl);
            if (cl < 0 || cl > 65536) {
                snprintf(t->errmsg, sizeof(t->errmsg), "bad Content-Length");
                return -1;
            }
            if (avail < hl + (size_t)cl)
                break;
            got_response(t, c, p, hl + (size_t)cl);
            off += hl + (size_t)cl;
        }
    }
    if (off) {
        memmove(c->in, c->in + off, c->inlen - off);
        c->inlen -= off;
    }
    return 0;
}

/* ---- the connection state machine ---- */

static void start_ws_upgrade(struct thr *t, struct conn *c)
{
    unsigned char raw[16];
    for (int i = 0; i < 16; i += 8) {
        uint64_t r = xorshift(&t->prng);
        memcpy(raw + i, &r, 8);
    }
    size_t olen = 0;
    mbedtls_base64_encode((unsigned char *)c->wskey, sizeof(c->wskey), &olen, raw, 16);
    c->wskey[olen] = 0;
    int n = snprintf(c->out + c->outlen, OUTBUF - c->outlen,
                     "GET / HTTP/1.1\r\n"
                     "Host: %s:%d\r\n"
                     "Upgrade: websocket\r\n"
                     "Connection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n"
                     "Sec-WebSocket-Protocol: sip\r\n"
                     "User-Agent: lunasip-bench streamload\r\n\r\n",
                     dst_ip, dst_port, c->wskey);
    c->outlen += (size_t)n;
    c->state = C_UPGRADE;
}

/* The 101: status, Sec-WebSocket-Accept (RFC 6455 §4.2.2) and the sip subprotocol.
 * Returns the head's length, 0 when incomplete, -1 when refused. */
static long check_upgrade(struct thr *t, struct conn *c)
{
    char *e = memmem(c->in, c->inlen, "\r\n\r\n", 4);
    if (!e)
        return c->inlen > 8192 ? -1 : 0;
    size_t hl = (size_t)(e - c->in) + 4;
    char head[8192 + 1];
    size_t l = hl < 8192 ? hl : 8192;
    memcpy(head, c->in, l);
    head[l] = 0;
    if (strncmp(head, "HTTP/1.1 101", 12) != 0) {
        char *cr = strchr(head, '\r');
        if (cr)
            *cr = 0;
        snprintf(t->errmsg, sizeof(t->errmsg), "upgrade refused: %.200s", head);
        return -1;
    }
    char want[64];
    unsigned char sha[20];
    char cat[96];
    snprintf(cat, sizeof(cat), "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", c->wskey);
    mbedtls_sha1_ret((const unsigned char *)cat, strlen(cat), sha);
    size_t olen = 0;
    mbedtls_base64_encode((unsigned char *)want, sizeof(want), &olen, sha, 20);
    want[olen] = 0;
    int accept_ok = 0, proto_ok = 0;
    for (char *line = strstr(head, "\r\n"); line && line[2]; line = strstr(line + 2, "\r\n")) {
        char *h = line + 2;
        if (strncasecmp(h, "Sec-WebSocket-Accept:", 21) == 0) {
            char *v = h + 21;
            while (*v == ' ')
                v++;
            accept_ok = strncmp(v, want, olen) == 0;
        } else if (strncasecmp(h, "Sec-WebSocket-Protocol:", 23) == 0) {
            char *v = h + 23;
            while (*v == ' ')
                v++;
            proto_ok = strncasecmp(v, "sip", 3) == 0;
        }
    }
    if (!accept_ok || !proto_ok) {
        snprintf(t->errmsg, sizeof(t->errmsg), "101 without %s", !accept_ok ? "the right Sec-WebSocket-Accept"
                                                                           : "Sec-WebSocket-Protocol: sip");
        return -1;
    }
    return (long)hl;
}

static void became_open(struct thr *t, struct conn *c)
{
    c->state = C_OPEN;
    t->c.opened++;
    if (hs_mode) {
        long one = 1;
        top_up(t, c, &one); /* no rate limit in hs mode */
        c->sent_one = 1;
    } else {
        long b = rate_allow(t);
        top_up(t, c, &b);
    }
}

static void fail(struct thr *t, struct conn *c, const char *why)
{
    if (why && !t->errmsg[0])
        snprintf(t->errmsg, sizeof(t->errmsg), "%s", why);
    t->c.errors++;
    conn_close(t, c, 0);
}

static void tls_start(struct thr *t, struct conn *c)
{
    if (!c->ssl_init) {
        mbedtls_ssl_init(&c->ssl);
        if (mbedtls_ssl_setup(&c->ssl, &t->conf) != 0)
            die("%s", "ssl_setup failed");
        c->ssl_init = 1;
    } else {
        mbedtls_ssl_session_reset(&c->ssl); /* a fresh session: nothing to resume from */
    }
    mbedtls_ssl_set_bio(&c->ssl, &c->fd, bio_send, bio_recv, NULL);
    c->state = C_TLS;
}

static void on_connected(struct thr *t, struct conn *c)
{
    struct sockaddr_in la;
    socklen_t ll = sizeof(la);
    getsockname(c->fd, (struct sockaddr *)&la, &ll);
    char ip[32];
    inet_ntop(AF_INET, &la.sin_addr, ip, sizeof(ip));
    snprintf(c->local, sizeof(c->local), "%s:%d", ip, ntohs(la.sin_port));
    if (is_tls())
        tls_start(t, c);
    else if (is_ws())
        start_ws_upgrade(t, c);
    else
        became_open(t, c);
}

static void handle(struct thr *t, struct conn *c, uint32_t events)
{
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof(err);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) {
            char m[128];
            snprintf(m, sizeof(m), "connect: %s", strerror(err));
            fail(t, c, m);
            return;
        }
        if (!(events & (EPOLLOUT | EPOLLIN)))
            return;
        on_connected(t, c);
    }
    if (c->state == C_TLS) {
        int r = mbedtls_ssl_handshake(&c->ssl);
        if (r == MBEDTLS_ERR_SSL_WANT_READ) {
            arm(t, c, 0);
            return;
        }
        if (r == MBEDTLS_ERR_SSL_WANT_WRITE) {
            arm(t, c, 1);
            return;
        }
        if (r != 0) {
            char m[160], e[100];
            mbedtls_strerror(r, e, sizeof(e));
            snprintf(m, sizeof(m), "TLS handshake: -0x%04x %s", (unsigned)-r, e);
            fail(t, c, m);
            return;
        }
        if (!t->cipher[0]) {
            snprintf(t->cipher, sizeof(t->cipher), "%s", mbedtls_ssl_get_ciphersuite(&c->ssl));
            snprintf(t->version, sizeof(t->version), "%s", mbedtls_ssl_get_version(&c->ssl));
        }
        if (is_ws())
            start_ws_upgrade(t, c);
        else
            became_open(t, c);
    }
    /* read everything there is (TLS may hold decrypted bytes the socket no longer shows) */
    if (c->state == C_UPGRADE || c->state == C_OPEN) {
        for (;;) {
            if (c->inlen == INBUF) {
                fail(t, c, "input buffer full");
                return;
            }
            ssize_t n = c_read(c, c->in + c->inlen, INBUF - c->inlen);
            if (n == -1)
                break;
            if (n == 0) {
                t->c.closed_by_peer++;
                fail(t, c, "the server closed the connection");
                return;
            }
            if (n < 0) {
                fail(t, c, "read error");
                return;
            }
            c->inlen += (size_t)n;
            if (c->state == C_UPGRADE) {
                long hl = check_upgrade(t, c);
                if (hl < 0) {
                    fail(t, c, NULL);
                    return;
                }
                if (hl == 0)
                    continue;
                memmove(c->in, c->in + hl, c->inlen - (size_t)hl);
                c->inlen -= (size_t)hl;
                became_open(t, c);
            }
            if (parse_in(t, c) != 0) {
                fail(t, c, NULL);
                return;
            }
            if (n < 4096 && !is_tls())
                break; /* a short read: the socket is drained */
        }
        if (c->state == C_OPEN) {
            if (hs_mode) {
                if (c->sent_one && c->inflight == 0) { /* the 200 came: one cycle done */
                    t->c.cycles++;
                    conn_close(t, c, 1);
                    if (!stop_flag && conn_open(t, c) != 0)
                        t->c.errors++;
                    return;
                }
            } else {
                long b = rate_allow(t);
                top_up(t, c, &b);
            }
        }
    }
    if (c->fd >= 0 && flush_out(t, c) != 0)
        fail(t, c, "write error");
}

/* rate-limited msgs: on every tick, hand the allowance out round-robin */
static void rate_tick(struct thr *t)
{
    long b = rate_allow(t);
    if (b <= 0)
        return;
    for (int k = 0; k < t->n && b > 0; k++) {
        struct conn *c = &t->conns[(t->rr + (unsigned)k) % (unsigned)t->n];
        if (c->state != C_OPEN || c->inflight >= window)
            continue;
        top_up(t, c, &b);
        if (flush_out(t, c) != 0)
            fail(t, c, "write error");
    }
    t->rr++;
}

static void *thread_main(void *arg)
{
    struct thr *t = arg;
    t->ep = epoll_create1(EPOLL_CLOEXEC);
    t->prng = 0x9e3779b97f4a7c15ULL ^ ((uint64_t)t->id << 32) ^ now_ns();
    if (is_tls())
        tls_setup(t);
    for (int i = 0; i < t->n; i++) {
        struct conn *c = &t->conns[i];
        c->idx = i;
        c->fd = -1;
        c->in = malloc(INBUF);
        c->out = malloc(OUTBUF);
        c->sent_ns = hs_mode ? NULL : calloc((size_t)window, sizeof(uint64_t));
        if (!c->in || !c->out)
            die("%s", "out of memory");
    }
    t->t_rate0 = now_ns();
    for (int i = 0; i < t->n; i++)
        if (conn_open(t, &t->conns[i]) != 0)
            t->c.errors++;
    struct epoll_event evs[256];
    uint64_t last_retry = 0;
    int limited = t->rate > 0 && !hs_mode;
    while (!stop_flag) {
        int n = epoll_wait(t->ep, evs, 256, limited ? 1 : 50);
        for (int i = 0; i < n; i++)
            handle(t, evs[i].data.ptr, evs[i].events);
        if (limited)
            rate_tick(t);
        int open = 0;
        uint64_t now = now_ns();
        for (int i = 0; i < t->n; i++) {
            struct conn *c = &t->conns[i];
            if (c->state == C_OPEN)
                open++;
            else if (c->state == C_IDLE && !stop_flag && now - last_retry > 100000000u) {
                /* a connection that failed: open it again (counted as an error already) */
                if (conn_open(t, c) != 0)
                    t->c.errors++;
            }
        }
        if (now - last_retry > 100000000u)
            last_retry = now;
        if (!t->ready && (hs_mode || open == t->n)) {
            t->t_rate0 = now_ns(); /* the rate limit counts from here: no burst of catch-up */
            t->rate_sent = 0;
            t->ready = 1;
        }
    }
    for (int i = 0; i < t->n; i++) {
        conn_close(t, &t->conns[i], 0);
        if (t->conns[i].ssl_init)
            mbedtls_ssl_free(&t->conns[i].ssl);
    }
    return NULL;
}

static void snap(struct thr *ts, struct counters *sum)
{
    memset(sum, 0, sizeof(*sum));
    for (int i = 0; i < nthreads; i++) {
        struct counters *c = &ts[i].c;
        sum->sent += c->sent;
        sum->ok += c->ok;
        sum->bad += c->bad;
        sum->errors += c->errors;
        sum->closed_by_peer += c->closed_by_peer;
        sum->cycles += c->cycles;
        sum->opened += c->opened;
        sum->lat_n += c->lat_n;
        sum->lat_sum_ns += c->lat_sum_ns;
        if (c->lat_max_ns > sum->lat_max_ns)
            sum->lat_max_ns = c->lat_max_ns;
    }
}

static void sleep_s(double s)
{
    struct timespec ts = { (time_t)s, (long)((s - (double)(time_t)s) * 1e9) };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static void usage(void)
{
    fprintf(stderr, "usage: streamload msgs|hs tcp|tls|ws|wss IP PORT [-c N] [-w W] [-r RATE] [-d SEC] [-W SEC] "
                    "[-t THREADS] [-p PID,...] [-m OPTIONS|MESSAGE] [-g CURVE,...]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 5)
        usage();
    if (strcmp(argv[1], "msgs") == 0)
        hs_mode = 0;
    else if (strcmp(argv[1], "hs") == 0)
        hs_mode = 1;
    else
        usage();
    int m = -1;
    for (int i = 0; i < 4; i++)
        if (strcmp(argv[2], mode_names[i]) == 0)
            m = i;
    if (m < 0)
        usage();
    mode = (enum mode)m;
    snprintf(dst_ip, sizeof(dst_ip), "%s", argv[3]);
    dst_port = atoi(argv[4]);
    memset(&dst, 0, sizeof(dst));
    dst.sin_family = AF_INET;
    dst.sin_port = htons((uint16_t)dst_port);
    if (inet_pton(AF_INET, dst_ip, &dst.sin_addr) != 1)
        die("bad IPv4 address %s", dst_ip);
    int opt;
    optind = 5;
    int ncurves = 0;
    while ((opt = getopt(argc, argv, "c:w:r:d:W:t:p:m:g:")) != -1) {
        switch (opt) {
        case 'c': nconns = atoi(optarg); break;
        case 'w': window = atoi(optarg); break;
        case 'r': rate = atof(optarg); break;
        case 'd': seconds = atof(optarg); break;
        case 'W': warmup = atof(optarg); break;
        case 't': nthreads = atoi(optarg); break;
        case 'm': method = optarg; break;
        case 'g':
            for (char *tok = strtok(optarg, ","); tok && ncurves < 15; tok = strtok(NULL, ",")) {
                const mbedtls_ecp_curve_info *ci = mbedtls_ecp_curve_info_from_name(tok);
                if (!ci)
                    die("unknown curve %s", tok);
                curves[ncurves++] = ci->grp_id;
            }
            curves[ncurves] = MBEDTLS_ECP_DP_NONE;
            break;
        case 'p':
            for (char *s = optarg; *s && nserver_pids < 64;) {
                server_pids[nserver_pids++] = (int)strtol(s, &s, 10);
                if (*s == ',')
                    s++;
                else
                    break;
            }
            break;
        default: usage();
        }
    }
    if (nconns < 1 || window < 1 || window > 200 || nthreads < 1 || nthreads > nconns || seconds <= 0)
        usage();
    if (strcmp(method, "OPTIONS") != 0 && strcmp(method, "MESSAGE") != 0)
        usage();
    signal(SIGPIPE, SIG_IGN);

    struct thr *ts = calloc((size_t)nthreads, sizeof(*ts));
    struct conn *all = calloc((size_t)nconns, sizeof(*all));
    if (!ts || !all)
        die("%s", "out of memory");
    for (int i = 0, at = 0; i < nthreads; i++) {
        ts[i].id = i;
        ts[i].n = nconns / nthreads + (i < nconns % nthreads ? 1 : 0);
        ts[i].conns = all + at;
        ts[i].rate = rate / nthreads;
        at += ts[i].n;
    }
    for (int i = 0; i < nthreads; i++)
        pthread_create(&ts[i].th, NULL, thread_main, &ts[i]);

    /* every connection open (msgs), at most 15 s */
    uint64_t t_setup = now_ns();
    for (;;) {
        int ready = 0;
        for (int i = 0; i < nthreads; i++)
            ready += ts[i].ready;
        if (ready == nthreads)
            break;
        if (now_ns() - t_setup > 15000000000ULL) {
            struct counters s;
            snap(ts, &s);
            fprintf(stderr, "streamload: only %llu of %d connections opened in 15 s (%s)\n",
                    (unsigned long long)s.opened, nconns, ts[0].errmsg[0] ? ts[0].errmsg : "no error seen");
            stop_flag = 1;
            for (int i = 0; i < nthreads; i++)
                pthread_join(ts[i].th, NULL);
            printf("result mode=%s kind=%s error=setup opened=%llu\n", mode_names[mode], hs_mode ? "hs" : "msgs",
                   (unsigned long long)s.opened);
            return 1;
        }
        sleep_s(0.01);
    }
    double setup_s = (double)(now_ns() - t_setup) / 1e9;
    sleep_s(warmup);

    struct counters a, b;
    measuring = 1;
    uint64_t mach0 = machine_cpu_ns();
    uint64_t cpu0 = server_cpu_ns(), self0 = self_cpu_ns(), t0 = now_ns();
    snap(ts, &a);
    sleep_s(seconds);
    snap(ts, &b);
    uint64_t t1 = now_ns(), cpu1 = server_cpu_ns(), self1 = self_cpu_ns();
    uint64_t mach1 = machine_cpu_ns();
    measuring = 0;
    stop_flag = 1;
    for (int i = 0; i < nthreads; i++)
        pthread_join(ts[i].th, NULL);

    double el = (double)(t1 - t0) / 1e9;
    uint64_t ok = b.ok - a.ok, cycles = b.cycles - a.cycles;
    uint64_t done = hs_mode ? cycles : ok;
    uint64_t lat_n = b.lat_n - a.lat_n;
    const char *cipher = "-", *version = "-", *err = "-";
    for (int i = 0; i < nthreads; i++) {
        if (ts[i].cipher[0] && cipher[0] == '-') {
            cipher = ts[i].cipher;
            version = ts[i].version;
        }
        if (ts[i].errmsg[0] && err[0] == '-')
            err = ts[i].errmsg;
    }
    char errq[300];
    size_t k = 0;
    for (const char *s = err; *s && k < sizeof(errq) - 1; s++)
        errq[k++] = (*s == ' ') ? '_' : *s;
    errq[k] = 0;
    printf("result mode=%s kind=%s conns=%d window=%d threads=%d rate=%.0f seconds=%.3f setup_s=%.3f "
           "sent=%llu ok=%llu bad=%llu errors=%llu closed_by_peer=%llu cycles=%llu opened=%llu "
           "per_s=%.1f server_cpu_ns=%llu client_cpu_ns=%llu server_us_per=%.3f client_us_per=%.3f "
           "machine_cpu_ns=%lld lat_mean_us=%.1f lat_max_us=%.1f total_ok=%llu total_errors=%llu cipher=%s version=%s first_error=%s\n",
           mode_names[mode], hs_mode ? "hs" : "msgs", nconns, hs_mode ? 1 : window, nthreads, rate, el, setup_s,
           (unsigned long long)(b.sent - a.sent), (unsigned long long)ok, (unsigned long long)(b.bad - a.bad),
           (unsigned long long)(b.errors - a.errors), (unsigned long long)(b.closed_by_peer - a.closed_by_peer),
           (unsigned long long)cycles, (unsigned long long)(b.opened - a.opened), done / el,
           (unsigned long long)(cpu1 - cpu0), (unsigned long long)(self1 - self0),
           done ? (double)(cpu1 - cpu0) / 1e3 / (double)done : 0.0,
           done ? (double)(self1 - self0) / 1e3 / (double)done : 0.0,
           mach0 && mach1 ? (long long)(mach1 - mach0) : -1LL, lat_n ? (double)(b.lat_sum_ns - a.lat_sum_ns) / 1e3 / (double)lat_n : 0.0, (double)b.lat_max_ns / 1e3,
           (unsigned long long)b.ok, (unsigned long long)b.errors, cipher, version, errq);
    fflush(stdout);
    return 0;
}
