/* The RFC 3261 §17 transaction layer: INVITE and non-INVITE client and server state
 * machines with every timer (A–K, RFC 6026's L and M, and the proxy's Timer C of §16.6
 * step 11) on src/timer.h, matching per §17.1.3 / §17.2.3 (RFC 2543 requests without the
 * magic cookie included), retransmission absorption, the hop-by-hop ACK for non-2xx
 * finals (§17.1.1.3) and CANCEL construction (§9.1). RFC 4320 and RFC 6026 apply. */
#ifndef LUNASIP_TXN_H
#define LUNASIP_TXN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "sip_msg.h"

struct listener;
struct txn;

enum txn_kind {
    TXN_SERVER_INVITE = 0,
    TXN_SERVER_NON_INVITE,
    TXN_CLIENT_INVITE,
    TXN_CLIENT_NON_INVITE,
};

enum txn_state {
    TXN_CALLING = 0,     /* INVITE client: sent, nothing received */
    TXN_TRYING,          /* non-INVITE client and server: nothing sent/received yet */
    TXN_PROCEEDING,
    TXN_COMPLETED,
    TXN_CONFIRMED,       /* INVITE server: ACK received for a non-2xx (Timer I) */
    TXN_ACCEPTED,        /* RFC 6026: INVITE after a 2xx (Timer L server, Timer M client) */
    TXN_TERMINATED,
};

/* Where a transaction sends: the socket to use and the peer address. */
struct txn_dest {
    struct listener *l;
    enum sip_transport transport;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    uint64_t conn_id;   /* stream transports: the connection to use (src/conn.h); when it is
                         * gone, tcp/tls open a new one to addr, ws/wss cannot */
};

/* The transmit hook (UDP now; stream transports later). Returns 0 or -errno. Unit tests
 * replace it to capture what a transaction sends. */
typedef int (*txn_send_fn)(const struct txn_dest *d, const char *buf, size_t len);
void txn_set_send(txn_send_fn fn);

/* Global timer values in ms (RFC 3261 §17.1.1.1 defaults: 500, 4000, 5000). */
struct txn_timer_values {
    uint32_t T1, T2, T4;
};
void txn_set_timer_values(const struct txn_timer_values *v);
const struct txn_timer_values *txn_timer_values(void);

/* Why a client transaction ended without a final response (txn_user_ops.on_client_fail). */
enum txn_fail {
    TXN_FAIL_TIMEOUT = 0,   /* Timer B (INVITE) or Timer F (non-INVITE) */
    TXN_FAIL_TRANSPORT,     /* a (re)transmission could not be sent (§17.1.4) */
    TXN_FAIL_CANCEL_TIMEOUT,/* 64*T1 after our CANCEL, still no final (§9.1): destroyed */
};

/* The transaction user (the proxy core, the Uac, or the core for requests answered from
 * Lua). tu is an opaque pointer given at creation; any callback may be NULL. Callbacks
 * run from txn_*_receive or from a timer; they may call any txn_* function, including
 * ones that terminate the transaction they were called for (the free is deferred until
 * the callback returns). */
struct txn_user_ops {
    /* Client: a response the TU must see (RFC 3261 §17.1.1.2 / §17.1.2.2): every 1xx
     * (100 included), the first final, and with RFC 6026 every 2xx of an INVITE while
     * Accepted. Borrowed for the call; the TU may ref it. The top Via is still ours. */
    void (*on_response)(void *tu, struct txn *ct, struct sip_msg *resp);
    /* Client: ended without a final response; the transaction terminates right after. */
    void (*on_client_fail)(void *tu, struct txn *ct, enum txn_fail why);
    /* Client INVITE: Timer C fired (§16.8). The transaction is still alive; the TU
     * decides (txn_client_cancel and a 408 upstream, typically). */
    void (*on_timer_c)(void *tu, struct txn *ct);
    /* Server INVITE: Timer H fired, the ACK for our non-2xx never came (§17.2.1). */
    void (*on_server_no_ack)(void *tu, struct txn *st);
    /* Either side: the transaction is about to be freed; drop every pointer to it.
     * Called exactly once per transaction that was created successfully. */
    void (*on_terminated)(void *tu, struct txn *t);
};

/* ----- server transactions ----- */

enum txn_rx {
    TXN_RX_NEW = 0,      /* no transaction matches: the caller creates one (or, for an
                          * ACK, treats it as the ACK of a 2xx: stateless) */
    TXN_RX_ABSORBED,     /* a retransmission: the last response was resent if there is
                          * one; or the ACK of our non-2xx (Completed → Confirmed) */
    TXN_RX_ACK_ACCEPTED, /* an ACK matching an INVITE server transaction in Accepted
                          * (RFC 6026 §7.1: passed to the TU, i.e. routed like any 2xx ACK) */
};

/* Matches a received request against the server transactions (§17.2.3: branch with the
 * magic cookie + sent-by + method, ACK matching its INVITE; without the cookie the
 * RFC 2543 rules: R-URI, To tag, From tag, Call-ID, CSeq, top Via, and for an ACK the To
 * tag of the response we sent). CANCEL matches only a CANCEL transaction (its own
 * retransmissions). Handles the absorption itself. *out gets the matched transaction
 * (borrowed) or NULL. */
enum txn_rx txn_server_receive(struct sip_msg *req, struct txn **out);

/* Creates the server transaction for req (not an ACK) and indexes it. Takes a reference
 * on req, kept until the transaction reaches Completed/Accepted/Terminated (txn_request
 * returns NULL after that). reply_dest is where responses go (RFC 3261 §18.2.2, computed
 * by the caller). INVITE starts in Proceeding, anything else in Trying; nothing is sent
 * (the TU sends 100 Trying through txn_server_reply when it wants). Returns NULL when out
 * of memory. */
struct txn *txn_server_create(struct sip_msg *req, const struct txn_dest *reply_dest,
                              const struct txn_user_ops *ops, void *tu);

/* Sends a response (buf, len: the complete message, copied) through st and runs the
 * state machine: 1xx → Proceeding; INVITE 2xx → Accepted (Timer L, RFC 6026) and later
 * 2xx are sent too; INVITE 3xx–6xx → Completed (Timer G retransmits over UDP, Timer H);
 * non-INVITE final → Completed (Timer J: 64*T1 over UDP, 0 otherwise). The last response
 * is kept for retransmissions. Returns 0, -EALREADY when a final was already sent and
 * this is not an INVITE 2xx, -EINVAL for a bad status, or the send error. */
int txn_server_reply(struct txn *st, int status, const char *buf, size_t len);

/* The INVITE server transaction a CANCEL targets (§9.2: same top Via branch and sent-by,
 * or the RFC 2543 fields), in any state but Terminated; NULL when none. */
struct txn *txn_server_find_invite(struct sip_msg *cancel);

/* A guard for a server transaction nobody answers: after ms, if no final response was
 * sent, the transaction is terminated (counted, logged at debug). 0 disarms. */
void txn_server_expire(struct txn *st, uint64_t ms);

/* ----- client transactions ----- */

struct txn_client_params {
    const char *buf;            /* the request exactly as it goes on the wire (copied); its
                                 * top Via is ours, with a magic-cookie branch */
    size_t len;
    struct txn_dest dest;
    uint32_t timer_B_ms;        /* profile timer_B (INVITE) */
    uint32_t timer_F_ms;        /* profile timer_F (non-INVITE) */
    uint32_t timer_C_ms;        /* INVITE: proxy Timer C, 0 = none */
};

/* Creates a client transaction, indexes it by its branch and CSeq method, sends the
 * request and arms its timers (A+B or E+F, and C). The request is parsed once here for
 * the ACK and CANCEL it may need to build. Returns 0 and *out, or a negative errno with
 * nothing created and no callback ever fired: -EINVAL (request unparsable or without our
 * branch), -ENOMEM, or the error of the first send. */
int txn_client_create(const struct txn_client_params *p, const struct txn_user_ops *ops, void *tu,
                      struct txn **out);

/* Matches a received response (§17.1.3: top Via branch + CSeq method) and runs the
 * state machine: passes what the TU must see to ops->on_response, sends the ACK of a
 * non-2xx final (and again for each retransmission of it while Completed), stops
 * retransmissions on a 1xx, resets Timer C on a 1xx other than 100 (§16.7 step 2).
 * Returns 1 when a transaction took it, 0 when none matches (the caller forwards it
 * statelessly or drops it). */
int txn_client_receive(struct sip_msg *resp);

/* Cancels an INVITE client transaction (§9.1): when Proceeding, sends a CANCEL (same
 * R-URI, Call-ID, From, To, CSeq number, Route set and top Via as the INVITE; reason, when
 * non-NULL, is the value of a Reason header to copy, RFC 3326) as its own non-INVITE
 * client transaction whose responses and failure are absorbed; when still Calling, the
 * CANCEL is held and sent when the first provisional arrives (or never, if a final comes
 * first). Arms the 64*T1 guard after which the INVITE transaction is destroyed with
 * TXN_FAIL_CANCEL_TIMEOUT if no final came. Returns 0, -EALREADY when already cancelled
 * or a final was received, -EINVAL when not an INVITE client transaction. */
int txn_client_cancel(struct txn *ct, const char *reason, size_t rlen);

/* ----- common ----- */

enum txn_kind txn_kind(const struct txn *t);
enum txn_state txn_state(const struct txn *t);
/* Server: the request (borrowed) while Trying/Proceeding, else NULL. */
struct sip_msg *txn_request(const struct txn *t);
/* Client: the final status received so far (0 none); server: the last status sent. */
int txn_status(const struct txn *t);
/* Client: the branch of our Via (borrowed, lives as long as t). */
struct sip_str txn_branch(const struct txn *t);
/* Client: where it sends. Server: where responses go. */
const struct txn_dest *txn_dest(const struct txn *t);
/* Changes where a transaction sends from now on (req:fix_nat on a server transaction). */
void txn_set_dest(struct txn *t, const struct txn_dest *d);
void txn_set_user(struct txn *t, const struct txn_user_ops *ops, void *tu);
void *txn_user(const struct txn *t);
/* The ops given with the user: which kind of user tu is. */
const struct txn_user_ops *txn_user_ops(const struct txn *t);

/* A stream connection failed (an outgoing connect that never opened, or one closed with
 * output queued): every client transaction that sends over it and has no final response
 * yet fails at once with TXN_FAIL_TRANSPORT (RFC 3261 §17.1.4) instead of waiting for
 * Timer B/F. */
void txn_conn_failed(uint64_t conn_id);

/* Counters of live transactions per kind (stats, tests). */
size_t txn_count(enum txn_kind k);

/* Terminates every transaction at once (shutdown, test teardown): on_terminated runs for
 * each, nothing is sent. */
void txn_shutdown(void);

/* Our branch: "z9hG4bK" + a prefix unique to this process start + a counter, with an
 * optional loop-detection hash appended (RFC 3261 §16.6 step 8). Writes a NUL-terminated
 * string of at most TXN_BRANCH_MAX bytes and returns its length. */
#define TXN_BRANCH_MAX 64
size_t txn_branch_new(char *out, const char *loop_hash, size_t loop_len);

#endif
