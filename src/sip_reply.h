/* Responses lunasip generates itself (from Lua's req:reply or from the core: 400, 416,
 * 420, 481, 500) and their delivery. RFC 3261 §8.2.6 (constructing the response),
 * §18.2.1/§18.2.2 (received, sending responses), RFC 3581 (rport). */
#ifndef LUNASIP_SIP_REPLY_H
#define LUNASIP_SIP_REPLY_H

#include <stddef.h>
#include <sys/socket.h>

#include "sip_msg.h"

struct listener;

/* A response copies every Via: as many as a message may have header lines. */
#define SIP_REPLY_MAX_VIAS SIP_MSG_MAX_HEADERS
#define SIP_REPLY_TAG_LEN 16

/* What a response copies from its request, as slices borrowed from the request. Built
 * from a parsed message, or salvaged from bytes the parser refused so that a malformed
 * request still gets its 400. */
struct sip_reply_src {
    struct sip_str vias[SIP_REPLY_MAX_VIAS]; /* Via header values, top first (may be folded) */
    uint32_t nvias;
    struct sip_via via1;                     /* the top via-parm, parsed */
    struct sip_str from, to, call_id, cseq;  /* header values; len 0 when missing */
    struct sip_str timestamp;                /* copied into 100 (RFC 3261 §8.2.6.1) */
    int to_has_tag;
    char tag[SIP_REPLY_TAG_LEN + 1];         /* To tag we add (stable for this request) */
    enum sip_method method;
    struct listener *listener;
    const struct sockaddr *src;
    socklen_t srclen;
    int force_rport;                         /* req:fix_nat(): answer to the source port */
    enum sip_transport transport;            /* what it came on */
    uint64_t conn_id;                        /* stream transports: answer on this connection */
};

/* Fills s from a parsed request (borrowing it). Returns 0 or -1 (too many Vias). */
int sip_reply_src_from_msg(struct sip_msg *m, struct sip_reply_src *s);
/* Fills s from raw request bytes the parser refused. Returns 0, or -1 when no response
 * can be routed (not a request, an ACK, no parsable top Via). */
int sip_reply_src_salvage(const char *buf, size_t len, struct sip_reply_src *s);

/* The To tag lunasip adds to its responses to one request: a keyed hash of Call-ID,
 * From tag and CSeq number, so retransmissions and the ACK of a non-2xx carry it too. */
void sip_reply_tag(struct sip_str call_id, struct sip_str from_tag, uint32_t cseq, char out[SIP_REPLY_TAG_LEN + 1]);

/* Builds a response. extra: already validated header lines ("Name: value\r\n" each),
 * copied as they are; body with its Content-Length. Returns the length or -1 when cap
 * is too small. */
long sip_reply_build(const struct sip_reply_src *s, int code, const char *reason, size_t rlen,
                     const char *extra, size_t elen, const char *body, size_t blen,
                     char *out, size_t cap);

/* Sends a built response where RFC 3261 §18.2.2 and RFC 3581 say: the source address and
 * port when rport was asked for (or fix_nat), else maddr, else the source address with
 * the sent-by port (default 5060, 5061 for TLS). Refuses broadcast and unspecified
 * destinations. Returns 0 or a negative errno. */
int sip_reply_send(const struct sip_reply_src *s, const char *buf, size_t len);
/* Where sip_reply_send would send: fills dst. Returns 0 or a negative errno (refused
 * destination, logged and counted). */
int sip_reply_dest(const struct sip_reply_src *s, struct sockaddr_storage *dst, socklen_t *dstlen);

/* The buffer size sip_reply_build needs for these extra headers, reason and body. */
size_t sip_reply_size(const struct sip_reply_src *s, size_t rlen, size_t elen, size_t blen);

/* Convenience: build (in a buffer sized for it) and send; reason NULL = the standard
 * phrase. Returns 0 or <0. */
int sip_reply_simple(const struct sip_reply_src *s, int code, const char *reason,
                     const char *extra, size_t elen);

const char *sip_reason_phrase(int code);

#endif
