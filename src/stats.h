/* Process-wide counters, read by logs, tests and (later) the control socket and metrics.
 * Plain integers: lunasip runs one event loop per process. */
#ifndef LUNASIP_STATS_H
#define LUNASIP_STATS_H

#include <stdint.h>

struct stats {
    uint64_t rx_datagrams;
    uint64_t rx_keepalives;
    uint64_t rx_requests;
    uint64_t rx_responses;
    uint64_t rx_oversized;        /* datagram above sip.max_message_size: dropped */
    uint64_t rx_malformed;        /* request answered 4xx/5xx by the parser, or dropped */
    uint64_t rx_dropped;          /* dropped without an answer (no Via, bad response, ...) */
    uint64_t rx_responses_dropped;/* responses not ours (no transaction layer matched) */
    uint64_t rx_acks_absorbed;
    uint64_t tx_replies;
    uint64_t tx_errors;           /* sendto failures */
    uint64_t lua_errors;
    uint64_t lua_slow;
    uint64_t lua_unanswered;      /* on_request returned without answering */
    uint64_t reloads_ok;
    uint64_t reloads_failed;
};

extern struct stats stats;

#endif
