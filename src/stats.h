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
    uint64_t tx_messages;         /* sent by transactions (requests, responses, ACK, CANCEL) */
    uint64_t tx_errors;           /* sendto failures */
    uint64_t lua_errors;
    uint64_t lua_slow;
    uint64_t lua_unanswered;      /* on_request returned without answering */
    uint64_t reloads_ok;
    uint64_t reloads_failed;

    /* transaction layer (src/txn.c) */
    uint64_t txn_retrans_absorbed;  /* request retransmissions absorbed by a server txn */
    uint64_t txn_resp_retrans_absorbed; /* response retransmissions absorbed by a client txn */
    uint64_t txn_retransmits;       /* our own retransmissions (Timers A, E, G) */
    uint64_t txn_timeouts;          /* client transactions ended by Timer B or F */
    uint64_t txn_no_ack;            /* Timer H fired */
    uint64_t txn_unanswered;        /* server transactions ended by txn_server_expire */
    uint64_t txn_send_errors;

    /* proxy core (src/proxy.c) */
    uint64_t proxy_requests;        /* requests routed statefully */
    uint64_t proxy_stateless;       /* ACKs of 2xx and responses forwarded statelessly */
    uint64_t proxy_loops;           /* 482 */
    uint64_t proxy_too_many_hops;   /* 483 */
    uint64_t proxy_cancels;         /* CANCELs matched to an INVITE */
    uint64_t proxy_errors;          /* routing ended in on_error */
};

extern struct stats stats;

#endif
