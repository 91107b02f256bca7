/* The proxy core (RFC 3261 §16, SPEC §4 "Proxy core", §5.3): stateful routing started by
 * lunasip.Proxy and lunasip.Uac, with Max-Forwards, loop detection, Via, Record-Route and
 * Path, serial failover over the targets of a destination, the blacklist, CANCEL hop by
 * hop, Timer C, response processing (§16.7) with the Lua callbacks, 199 (RFC 6228) and the
 * stateless forwarding of 2xx ACKs and of responses that match no transaction. */
#ifndef LUNASIP_PROXY_H
#define LUNASIP_PROXY_H

#include <stddef.h>

struct config_proxies;
struct listener;
struct sip_msg;
struct txn;

/* The profiles new routings use (main, at start and after each reload). The pointer is
 * borrowed until the next call: a routing copies what it needs when it starts, so a
 * reload changes new transactions only. */
void proxy_set_profiles(const struct config_proxies *p);
/* The listeners (a list linked by ->next) and the advertised address (NULL: each
 * listener's own IP) used for Via, Record-Route and Path. */
void proxy_set_listeners(struct listener *list, const char *advertised);

/* Runs the routings registered by the Lua handler that just returned (lunasip_proxy_route
 * and lunasip_uac_route never call back into Lua themselves). The core calls it after
 * every entry into Lua. */
void proxy_run_pending(void);

/* A CANCEL matched the INVITE server transaction inv (RFC 3261 §16.10): the CANCEL has
 * already been answered 200 by the caller. Cancels the pending client transaction with
 * the CANCEL's Reason copied, runs on_canceled, or answers 487 at once when the INVITE is
 * not being routed. */
void proxy_on_cancel(struct txn *inv, struct sip_msg *cancel);

/* A response no client transaction took (§16.7 "If none is found ... as a stateless
 * proxy"): forwarded by its second Via when the top Via is ours, else dropped. */
void proxy_on_stray_response(struct sip_msg *resp);

/* A final answer of the script's own is about to go out for req: when it answers from
 * on_failure_response, the 199 of the early dialog that failure ends goes first. */
void proxy_before_local_final(struct sip_msg *req);

/* Routings still waiting for their final answer (graceful shutdown waits for them). */
size_t proxy_inflight(void);

/* Frees every routing context (shutdown, after txn_shutdown). */
void proxy_shutdown(void);

#endif
