/* Outbound flows (RFC 5626) and the flow tokens lunasip writes into Record-Route and Path:
 * the user part of our URI names the flow a request came on (a stream connection by id,
 * or a UDP listener and source address), signed with HMAC-SHA256 under
 * sip.outbound_flow_secret (random per start when unset) so a peer cannot forge one. A
 * request whose Route names one of our tokens goes over that flow, or gets 430 Flow Failed
 * when the flow is gone (RFC 5626 §5.3). A token also carries a number drawn at each start,
 * so a token of a previous run (with a configured secret) names a flow that is gone, never
 * a connection of this run that happens to have the same id. */
#ifndef LUNASIP_FLOW_H
#define LUNASIP_FLOW_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "sip_msg.h"

struct listener;

struct flow {
    enum sip_transport transport;
    uint64_t conn_id;               /* stream transports */
    struct sockaddr_storage addr;   /* UDP: the peer */
    socklen_t addrlen;
    struct sockaddr_storage local;  /* UDP: the listener's address */
    socklen_t locallen;
};

/* Sets the HMAC key (secret NULL: 32 random bytes from getrandom) and draws the start
 * number. Call once, at start (sip.outbound_flow_secret changes need a restart). Returns 0
 * or -1 (no randomness). */
int flow_init(const char *secret, size_t len);

/* The flow a message came on (its transport, connection id or UDP listener + source). */
void flow_of_msg(const struct sip_msg *m, struct flow *f);

/* Writes the token for f (URL-safe base64 without padding, a valid SIP user part, at most
 * FLOW_TOKEN_MAX characters) and a NUL; returns its length. */
#define FLOW_TOKEN_MAX 96
size_t flow_token(const struct flow *f, char out[FLOW_TOKEN_MAX + 1]);

/* Decodes a user part: 1 and *f when it is one of our tokens with a valid signature, 0 when
 * it does not look like a token at all, -1 when it looks like one but the signature or
 * the layout is wrong (forged or from another secret: counted, logged once a minute). */
int flow_token_parse(const char *s, size_t len, struct flow *f);

/* RFC 5626 §5.1 as OverSIP reads it: the request is initial, has a single Via, and its
 * Contact (one only) carries ";ob" (or, for REGISTER, Supported: outbound with reg-id
 * and +sip.instance on the Contact). req:incoming_outbound_requested() answers this. */
int flow_outbound_requested(const struct sip_msg *m);

/* 1 when f is the flow m came on (a request from the flow's own client, not for it). */
int flow_is_msg_flow(const struct flow *f, const struct sip_msg *m);

#endif
