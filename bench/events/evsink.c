/* bench/events/evsink.c: the receiving end of the event-delivery bench (bench/evi_bench.py).
 * Counts what lunasip's event sinks deliver, as fast as one thread can, and publishes the
 * counts in a small shared file the bench reads without talking to it (mmap):
 *
 *   evsink udp  IP:PORT   STATFILE    datagrams (recvmmsg, a 64 MB receive buffer)
 *   evsink unix PATH      STATFILE    datagrams on a unix datagram socket bound to PATH
 *   evsink tcp  IP:PORT   STATFILE    newline-delimited messages, any number of connections
 *   evsink http IP:PORT   STATFILE    HTTP/1.1 requests (Content-Length bodies, keep-alive,
 *                                     pipelining), each answered "200 OK", Content-Length 0
 *
 * STATFILE holds struct evsink_stat (below): messages, bytes, connections accepted, protocol
 * errors, CLOCK_MONOTONIC ns of the first and of the last message, and ready = 1 once the
 * socket listens. The bench stops it with SIGTERM. Loopback only; no dependencies. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

struct evsink_stat {        /* the bench reads this layout: 8 little-endian uint64 */
    volatile uint64_t msgs, bytes, conns, errors, first_ns, last_ns, ready, spare;
};

static struct evsink_stat *st;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void count(uint64_t msgs, uint64_t bytes)
{
    if (!msgs)
        return;
    uint64_t t = now_ns();
    if (!st->first_ns)
        st->first_ns = t;
    st->bytes += bytes;
    st->last_ns = t;
    __atomic_store_n(&st->msgs, st->msgs + msgs, __ATOMIC_RELEASE);
}

static void die(const char *what)
{
    fprintf(stderr, "evsink: %s: %s\n", what, strerror(errno));
    exit(1);
}

static int parse_ipport(const char *s, struct sockaddr_in *sa)
{
    char ip[64];
    const char *c = strrchr(s, ':');
    if (!c || (size_t)(c - s) >= sizeof(ip))
        return -1;
    memcpy(ip, s, (size_t)(c - s));
    ip[c - s] = 0;
    memset(sa, 0, sizeof(*sa));
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)atoi(c + 1));
    return inet_pton(AF_INET, ip, &sa->sin_addr) == 1 ? 0 : -1;
}

#define BATCH 64
#define DGRAM_MAX 65536

static void run_dgram(int fd)
{
    static char bufs[BATCH][DGRAM_MAX];
    struct mmsghdr m[BATCH];
    struct iovec iov[BATCH];
    for (int i = 0; i < BATCH; i++) {
        iov[i].iov_base = bufs[i];
        iov[i].iov_len = DGRAM_MAX;
        memset(&m[i], 0, sizeof(m[i]));
        m[i].msg_hdr.msg_iov = &iov[i];
        m[i].msg_hdr.msg_iovlen = 1;
    }
    st->ready = 1;
    for (;;) {
        int n = recvmmsg(fd, m, BATCH, MSG_WAITFORONE, NULL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("recvmmsg");
        }
        uint64_t bytes = 0;
        for (int i = 0; i < n; i++)
            bytes += m[i].msg_len;
        count((uint64_t)n, bytes);
    }
}

static int big_rcvbuf(int fd)
{
    int sz = 64 * 1024 * 1024;
    /* SO_RCVBUFFORCE passes net.core.rmem_max as root; else take what SO_RCVBUF gives */
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &sz, sizeof(sz)) != 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
    return 0;
}

/* ----- stream receivers (tcp, http): one epoll loop, any number of connections ----- */

#define CONN_BUF (256 * 1024)

struct conn {
    int fd;
    size_t len;            /* bytes buffered (http: an incomplete request) */
    char buf[CONN_BUF];
};

static const char OK200[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

/* http: consumes every complete request in c->buf; returns how many, -1 on a bad request.
 * *bytes gets the bytes of the bodies. */
static int http_requests(struct conn *c, uint64_t *bytes)
{
    int n = 0;
    size_t off = 0;
    for (;;) {
        char *head = c->buf + off;
        size_t avail = c->len - off;
        char *end = memmem(head, avail, "\r\n\r\n", 4);
        if (!end)
            break;
        size_t hlen = (size_t)(end - head) + 4;
        long clen = 0;
        for (char *p = head; p < end;) {
            char *eol = memmem(p, (size_t)(end - p) + 2, "\r\n", 2);
            if (!eol)
                break;
            if ((size_t)(eol - p) > 15 && strncasecmp(p, "content-length:", 15) == 0)
                clen = strtol(p + 15, NULL, 10);
            else if ((size_t)(eol - p) > 18 && strncasecmp(p, "transfer-encoding:", 18) == 0)
                return -1; /* lunasip sends Content-Length; chunked is not expected here */
            p = eol + 2;
        }
        if (clen < 0 || hlen + (size_t)clen > sizeof(c->buf))
            return -1;
        if (avail < hlen + (size_t)clen)
            break;
        *bytes += (uint64_t)clen;
        off += hlen + (size_t)clen;
        n++;
    }
    if (off) {
        memmove(c->buf, c->buf + off, c->len - off);
        c->len -= off;
    }
    return n;
}

static void run_stream(int lfd, int http)
{
    int ep = epoll_create1(0);
    if (ep < 0)
        die("epoll_create1");
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) != 0)
        die("epoll_ctl");
    static char out[64 * 1024];
    st->ready = 1;
    for (;;) {
        struct epoll_event evs[64];
        int n = epoll_wait(ep, evs, 64, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c) {
                int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd < 0)
                    continue;
                int one = 1;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                c = calloc(1, sizeof(*c));
                if (!c) {
                    close(fd);
                    continue;
                }
                c->fd = fd;
                struct epoll_event cev = { .events = EPOLLIN, .data.ptr = c };
                epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                st->conns++;
                continue;
            }
            for (;;) {
                ssize_t r = read(c->fd, c->buf + c->len, sizeof(c->buf) - c->len);
                if (r < 0 && errno == EINTR)
                    continue;
                if (r <= 0) {
                    if (r < 0 && errno == EAGAIN)
                        break;
                    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                    close(c->fd);
                    free(c);
                    c = NULL;
                    break;
                }
                if (!http) {
                    uint64_t nl = 0;
                    for (const char *p = c->buf, *e = c->buf + r; (p = memchr(p, '\n', (size_t)(e - p))); p++)
                        nl++;
                    count(nl, (uint64_t)r);
                    continue; /* c->len stays 0: only newlines matter */
                }
                c->len += (size_t)r;
                uint64_t bytes = 0;
                int reqs = http_requests(c, &bytes);
                if (reqs < 0 || c->len == sizeof(c->buf)) {
                    st->errors++;
                    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                    close(c->fd);
                    free(c);
                    c = NULL;
                    break;
                }
                /* answer every complete request, pipelined or not, in one write */
                size_t olen = 0;
                for (int k = 0; k < reqs; k++) {
                    if (olen + sizeof(OK200) - 1 > sizeof(out)) {
                        if (write(c->fd, out, olen) < 0)
                            st->errors++;
                        olen = 0;
                    }
                    memcpy(out + olen, OK200, sizeof(OK200) - 1);
                    olen += sizeof(OK200) - 1;
                }
                if (olen && write(c->fd, out, olen) != (ssize_t)olen)
                    st->errors++;
                count((uint64_t)reqs, bytes);
                if ((size_t)r < sizeof(c->buf) / 2)
                    break; /* drained for now */
            }
        }
    }
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: evsink udp|unix|tcp|http ADDRESS STATFILE\n");
        return 2;
    }
    const char *mode = argv[1], *addr = argv[2];
    int fd = open(argv[3], O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        die(argv[3]);
    if (ftruncate(fd, sizeof(struct evsink_stat)) != 0)
        die("ftruncate");
    st = mmap(NULL, sizeof(*st), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (st == MAP_FAILED)
        die("mmap");
    close(fd);
    signal(SIGPIPE, SIG_IGN);

    if (strcmp(mode, "udp") == 0) {
        struct sockaddr_in sa;
        if (parse_ipport(addr, &sa) != 0)
            return fprintf(stderr, "evsink: bad IP:PORT %s\n", addr), 2;
        int s = socket(AF_INET, SOCK_DGRAM, 0);
        big_rcvbuf(s);
        if (bind(s, (struct sockaddr *)&sa, sizeof(sa)) != 0)
            die("bind");
        run_dgram(s);
    } else if (strcmp(mode, "unix") == 0) {
        struct sockaddr_un su = { .sun_family = AF_UNIX };
        if (strlen(addr) >= sizeof(su.sun_path))
            return fprintf(stderr, "evsink: path too long\n"), 2;
        strcpy(su.sun_path, addr);
        unlink(addr);
        int s = socket(AF_UNIX, SOCK_DGRAM, 0);
        big_rcvbuf(s);
        if (bind(s, (struct sockaddr *)&su, sizeof(su)) != 0)
            die("bind");
        run_dgram(s);
    } else if (strcmp(mode, "tcp") == 0 || strcmp(mode, "http") == 0) {
        struct sockaddr_in sa;
        if (parse_ipport(addr, &sa) != 0)
            return fprintf(stderr, "evsink: bad IP:PORT %s\n", addr), 2;
        int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        int one = 1;
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(s, (struct sockaddr *)&sa, sizeof(sa)) != 0)
            die("bind");
        if (listen(s, 128) != 0)
            die("listen");
        run_stream(s, mode[0] == 'h');
    } else {
        fprintf(stderr, "evsink: unknown mode %s\n", mode);
        return 2;
    }
    return 0;
}
