/* UDP transport: listeners from sip.listen (IPv4 and IPv6), batched receive, send.
 * RFC 3261 §18.1.1/§18.2 (datagram transport), §18.3 (trailing bytes ignored). */
#ifndef LUNASIP_UDP_H
#define LUNASIP_UDP_H

#include <ev.h>
#include <stddef.h>
#include <sys/socket.h>

#include "config.h"
#include "sip_msg.h"

struct listener {
    enum sip_transport transport;
    int fd;
    int family;
    struct sockaddr_storage addr;   /* bound address (port resolved when 0 was asked) */
    socklen_t addrlen;
    char host[64];                  /* bound IP as text, without brackets */
    int port;
    char name[96];                  /* "udp:127.0.0.1:5060" for logs */
    ev_io io;
    struct listener *next;
};

/* The receive callback: one datagram of len bytes from src, borrowed for the call only. */
typedef void (*udp_on_datagram)(struct listener *l, const char *buf, size_t len,
                                const struct sockaddr *src, socklen_t srclen);

/* Binds a UDP socket for cl (non-blocking, IPV6_V6ONLY for v6, SO_REUSEADDR) and
 * starts reading on loop. max_size is sip.max_message_size: a larger datagram is dropped
 * and counted. Returns 0 and *out, or -errno with err filled. */
int udp_listen(struct ev_loop *loop, const struct config_listen *cl, int max_size,
               udp_on_datagram cb, struct listener **out, char *err, size_t errlen);
/* Stops reading (graceful shutdown) without closing. */
void udp_stop(struct ev_loop *loop, struct listener *l);
void udp_close(struct ev_loop *loop, struct listener *l);

/* Sends one datagram; never blocks (EAGAIN counts as a failed send). Returns 0 or -errno.
 * Between udp_batch_begin and udp_batch_end (the processing of a received batch) the
 * datagram is queued and sent with the others by one sendmmsg at the end; a failure then
 * is only counted (stats.tx_errors), as a loss on the network would be. */
int udp_send(struct listener *l, const struct sockaddr *dst, socklen_t dstlen, const char *buf, size_t len);

void udp_batch_begin(void);
void udp_batch_end(void);

/* Fills sa from an IP literal (IPv6 with or without brackets) and a port. Returns 0, or
 * -1 when host is not an IP address (a name, or garbage). */
int sockaddr_from_ip(struct sip_str host, int port, struct sockaddr_storage *sa, socklen_t *salen);

/* Formats an address as "IP" and port; returns 0 or -1. */
int sockaddr_ip_port(const struct sockaddr *sa, char *ip, size_t iplen, int *port);

/* 1 when a and b are the same IP address and port (family, address and port compared;
 * padding, IPv6 flow label and scope ignored). */
int sockaddr_same(const struct sockaddr_storage *a, const struct sockaddr_storage *b);

#endif
