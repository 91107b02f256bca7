/* The core's handling of received SIP: keepalives, parsing, validation answers, the
 * RFC 3261 §16.3 checks that need no routing, and the hand-off to server.lua. */
#ifndef LUNASIP_SIP_CORE_H
#define LUNASIP_SIP_CORE_H

#include <stddef.h>
#include <sys/socket.h>

struct listener;

struct sip_msg;
struct txn;

/* Answers req with a response of lunasip's own (status line, copied Vias, From, To with
 * our tag, Call-ID, CSeq, extra header lines): through st when given, so retransmissions
 * get it again, else statelessly. A final answer marks req answered for Lua. Returns 0
 * or a negative errno. */
int sip_core_reply(struct sip_msg *req, struct txn *st, int code, const char *reason, const char *extra,
                   size_t elen);

/* Set during a graceful shutdown: new requests are answered 503. */
extern int sip_core_draining;

/* Sets the transaction layer's transmit hook. */
void sip_core_init(void);

struct conn;
struct txn_dest;

/* Sends a message where d says: UDP from d->l; a stream transport over d->conn_id, else
 * an open connection to d->addr, else (tcp, tls) a new one. The transaction layer's
 * transmit hook. Returns 0 or -errno (-ENOTCONN: no WebSocket connection). */
int sip_core_send(const struct txn_dest *d, const char *buf, size_t len);

/* conn_hooks.on_message: one complete SIP message from a stream connection, borrowed. */
void sip_core_on_stream(struct conn *c, const char *buf, size_t len);

/* The udp_on_datagram callback: one datagram, borrowed. */
void sip_core_on_datagram(struct listener *l, const char *buf, size_t len,
                          const struct sockaddr *src, socklen_t srclen);

#endif
