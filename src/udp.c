/* UDP transport: binds the udp: listeners of sip.listen, reads datagrams in batches with
 * recvmmsg (one wake-up, one syscall for many requests under load) and sends answers.
 * RFC 3261 §18 (transport layer), RFC 3581 (rport: the source port is kept per datagram). */
#include "udp.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "stats.h"

#define UDP_BATCH 32

/* One set of receive buffers shared by every listener: the loop is single-threaded and a
 * datagram is copied by the parser before the next read. */
static char *rx_bufs[UDP_BATCH];
static size_t rx_buf_size;
static udp_on_datagram rx_cb;
/* The recvmmsg vectors, set up once (ensure_buffers): the kernel only rewrites msg_len,
 * msg_flags and msg_namelen, and the latter is reset for the entries a call filled. */
static struct mmsghdr rx_msgs[UDP_BATCH];
static struct iovec rx_iov[UDP_BATCH];
static struct sockaddr_storage rx_src[UDP_BATCH];

/* Sends made while a received batch is processed are queued and leave together with
 * sendmmsg when the batch is done: one syscall, and one chance for the woken peers to
 * preempt us, instead of one per message (a proxied INVITE sends 100 Trying and the
 * INVITE; a burst of requests sends a burst of answers). Bounded: a full queue flushes. */
#define UDP_TX_MAX 64
#define UDP_TX_BYTES (256 * 1024)
struct tx_entry {
    int fd;
    struct sockaddr_storage dst;
    socklen_t dstlen;
    size_t off, len;
};
static struct tx_entry tx_q[UDP_TX_MAX];
static struct mmsghdr tx_msgs[UDP_TX_MAX];
static struct iovec tx_iov[UDP_TX_MAX];
static char *tx_buf;
static size_t tx_n, tx_used;
static int tx_batching;

static void tx_flush(void)
{
    size_t i = 0;
    while (i < tx_n) {
        /* one sendmmsg per run of messages on the same socket */
        size_t j = i;
        while (j < tx_n && tx_q[j].fd == tx_q[i].fd) {
            tx_iov[j].iov_base = tx_buf + tx_q[j].off;
            tx_iov[j].iov_len = tx_q[j].len;
            memset(&tx_msgs[j], 0, sizeof(tx_msgs[j]));
            tx_msgs[j].msg_hdr.msg_name = &tx_q[j].dst;
            tx_msgs[j].msg_hdr.msg_namelen = tx_q[j].dstlen;
            tx_msgs[j].msg_hdr.msg_iov = &tx_iov[j];
            tx_msgs[j].msg_hdr.msg_iovlen = 1;
            j++;
        }
        size_t k = i;
        while (k < j) {
            int n = sendmmsg(tx_q[k].fd, &tx_msgs[k], (unsigned)(j - k), MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n == -1) {
                if (errno == EINTR)
                    continue;
                /* this one failed (unreachable, buffer full, ...): count it, send the rest */
                stats.tx_errors++;
                k++;
                continue;
            }
            k += (size_t)n;
        }
        i = j;
    }
    tx_n = 0;
    tx_used = 0;
}

void udp_batch_begin(void)
{
    tx_batching++;
}

void udp_batch_end(void)
{
    if (--tx_batching == 0 && tx_n)
        tx_flush();
}


int sockaddr_ip_port(const struct sockaddr *sa, char *ip, size_t iplen, int *port)
{
    if (sa->sa_family == AF_INET) {
        /* by hand: inet_ntop formats IPv4 with sprintf, and this runs for every answer */
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        const unsigned char *b = (const unsigned char *)&s4->sin_addr;
        if (iplen < 16)
            return -1;
        char *o = ip;
        for (int i = 0; i < 4; i++) {
            unsigned v = b[i];
            if (v >= 100)
                *o++ = (char)('0' + v / 100);
            if (v >= 10)
                *o++ = (char)('0' + v / 10 % 10);
            *o++ = (char)('0' + v % 10);
            *o++ = i < 3 ? '.' : 0;
        }
        *port = ntohs(s4->sin_port);
        return 0;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        if (!inet_ntop(AF_INET6, &s6->sin6_addr, ip, (socklen_t)iplen))
            return -1;
        *port = ntohs(s6->sin6_port);
        return 0;
    }
    return -1;
}

static int ensure_buffers(int max_size)
{
    size_t want = (size_t)max_size + 1; /* one spare byte detects an oversized datagram */
    if (rx_buf_size >= want)
        return 0;
    for (int i = 0; i < UDP_BATCH; i++) {
        char *b = realloc(rx_bufs[i], want);
        if (!b)
            return -ENOMEM;
        rx_bufs[i] = b;
    }
    rx_buf_size = want;
    for (int i = 0; i < UDP_BATCH; i++) {
        rx_iov[i].iov_base = rx_bufs[i];
        rx_iov[i].iov_len = rx_buf_size;
        memset(&rx_msgs[i].msg_hdr, 0, sizeof(rx_msgs[i].msg_hdr));
        rx_msgs[i].msg_hdr.msg_name = &rx_src[i];
        rx_msgs[i].msg_hdr.msg_namelen = sizeof(rx_src[i]);
        rx_msgs[i].msg_hdr.msg_iov = &rx_iov[i];
        rx_msgs[i].msg_hdr.msg_iovlen = 1;
    }
    return 0;
}

/* See udp.h. */
int sockaddr_from_ip(struct sip_str host, int port, struct sockaddr_storage *sa, socklen_t *salen)
{
    char tmp[64];
    if (host.len >= 2 && host.s[0] == '[')
        host = (struct sip_str){ host.s + 1, host.len - 2 };
    if (host.len == 0 || host.len >= sizeof(tmp))
        return -1;
    memcpy(tmp, host.s, host.len);
    tmp[host.len] = 0;
    memset(sa, 0, sizeof(*sa));
    struct sockaddr_in *s4 = (struct sockaddr_in *)sa;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)sa;
    if (inet_pton(AF_INET, tmp, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        *salen = sizeof(*s4);
        return 0;
    }
    if (inet_pton(AF_INET6, tmp, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        *salen = sizeof(*s6);
        return 0;
    }
    return -1;
}

/* Drains the socket in batches; each datagram is handed to the callback, oversized and
 * truncated ones are dropped and counted. Stops at EAGAIN or after a bounded number of
 * batches so one busy socket cannot starve the others. */
static void on_readable(struct ev_loop *loop, ev_io *w, int revents)
{
    struct listener *l = w->data;
    struct mmsghdr *msgs = rx_msgs;
    struct sockaddr_storage *src = rx_src;

    for (int round = 0; round < 8; round++) {
        int n = recvmmsg(l->fd, msgs, UDP_BATCH, MSG_DONTWAIT, NULL);
        if (n == -1) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                LOG_WARN("%s: recvmmsg: %s", l->name, strerror(errno));
            return;
        }
        udp_batch_begin();
        for (int i = 0; i < n; i++) {
            size_t len = msgs[i].msg_len;
            stats.rx_datagrams++;
            if (len >= rx_buf_size || (msgs[i].msg_hdr.msg_flags & MSG_TRUNC)) {
                char ip[64];
                int port = 0;
                stats.rx_oversized++;
                if (sockaddr_ip_port((struct sockaddr *)&src[i], ip, sizeof(ip), &port) != 0)
                    strcpy(ip, "?");
                LOG_NOTICE("%s: dropped a datagram from %s:%d larger than sip.max_message_size (%zu bytes)",
                           l->name, ip, port, rx_buf_size - 1);
                continue;
            }
            rx_cb(l, rx_bufs[i], len, (struct sockaddr *)&src[i], msgs[i].msg_hdr.msg_namelen);
        }
        udp_batch_end();
        for (int i = 0; i < n; i++)
            msgs[i].msg_hdr.msg_namelen = sizeof(src[i]);
        if (n < UDP_BATCH)
            return;
    }
}

int udp_listen(struct ev_loop *loop, const struct config_listen *cl, int max_size,
               udp_on_datagram cb, struct listener **out, char *err, size_t errlen)
{
    struct listener *l = calloc(1, sizeof(*l));
    int one = 1;
    if (!l || ensure_buffers(max_size) != 0) {
        free(l);
        snprintf(err, errlen, "%s: out of memory", cl->text);
        return -ENOMEM;
    }
    rx_cb = cb;
    l->transport = SIP_TP_UDP;
    l->family = cl->family;
    if (cl->family == AF_INET6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&l->addr;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)cl->port);
        if (inet_pton(AF_INET6, cl->host, &s6->sin6_addr) != 1)
            goto bad_addr;
        l->addrlen = sizeof(*s6);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&l->addr;
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)cl->port);
        if (inet_pton(AF_INET, cl->host, &s4->sin_addr) != 1)
            goto bad_addr;
        l->addrlen = sizeof(*s4);
    }
    l->fd = socket(cl->family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (l->fd == -1) {
        int e = errno;
        snprintf(err, errlen, "%s: socket: %s", cl->text, strerror(e));
        free(l);
        return -e;
    }
    setsockopt(l->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (cl->family == AF_INET6)
        setsockopt(l->fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    /* Room for bursts: a proxy that answers from Lua must not lose datagrams to a small
     * default socket buffer while a handler runs. */
    int rcvbuf = 4 * 1024 * 1024;
    setsockopt(l->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    if (bind(l->fd, (struct sockaddr *)&l->addr, l->addrlen) == -1) {
        int e = errno;
        snprintf(err, errlen, "%s: bind: %s", cl->text, strerror(e));
        close(l->fd);
        free(l);
        return -e;
    }
    l->addrlen = sizeof(l->addr);
    if (getsockname(l->fd, (struct sockaddr *)&l->addr, &l->addrlen) == -1) {
        int e = errno;
        snprintf(err, errlen, "%s: getsockname: %s", cl->text, strerror(e));
        close(l->fd);
        free(l);
        return -e;
    }
    sockaddr_ip_port((struct sockaddr *)&l->addr, l->host, sizeof(l->host), &l->port);
    snprintf(l->name, sizeof(l->name), cl->family == AF_INET6 ? "udp:[%s]:%d" : "udp:%s:%d", l->host, l->port);
    ev_io_init(&l->io, on_readable, l->fd, EV_READ);
    l->io.data = l;
    ev_io_start(loop, &l->io);
    *out = l;
    return 0;

bad_addr:
    snprintf(err, errlen, "%s: not an IP address", cl->text);
    free(l);
    return -EINVAL;
}

void udp_stop(struct ev_loop *loop, struct listener *l)
{
    ev_io_stop(loop, &l->io);
}

void udp_close(struct ev_loop *loop, struct listener *l)
{
    if (tx_n)
        tx_flush();
    ev_io_stop(loop, &l->io);
    close(l->fd);
    free(l);
    free(tx_buf); /* allocated again by the next batched send, if any */
    tx_buf = NULL;
}

int udp_send(struct listener *l, const struct sockaddr *dst, socklen_t dstlen, const char *buf, size_t len)
{
    if (len > 65507)
        return -EMSGSIZE; /* never fits a datagram: say so now, queued or not */
    if (tx_batching && dstlen <= sizeof(struct sockaddr_storage)) {
        if (!tx_buf && !(tx_buf = malloc(UDP_TX_BYTES)))
            goto direct;
        if (tx_n == UDP_TX_MAX || tx_used + len > UDP_TX_BYTES)
            tx_flush();
        if (len > UDP_TX_BYTES)
            goto direct;
        struct tx_entry *e = &tx_q[tx_n++];
        e->fd = l->fd;
        memcpy(&e->dst, dst, dstlen);
        e->dstlen = dstlen;
        e->off = tx_used;
        e->len = len;
        memcpy(tx_buf + tx_used, buf, len);
        tx_used += len;
        return 0;
    }
direct:
    for (;;) {
        ssize_t n = sendto(l->fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL, dst, dstlen);
        if (n >= 0)
            return 0;
        if (errno == EINTR)
            continue;
        stats.tx_errors++;
        return -errno;
    }
}

int sockaddr_same(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
    return a->ss_family == AF_INET6 && x->sin6_port == y->sin6_port &&
           memcmp(&x->sin6_addr, &y->sin6_addr, 16) == 0;
}
