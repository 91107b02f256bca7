/* Internal to the proxy core: only src/proxy.c and src/proxy_out.c include this header. The
 * routing context and its targets (RFC 3261 §16), and what the routing state machine
 * (src/proxy.c) and the outgoing side (src/proxy_out.c, §16.6) call in each other. */
#ifndef LUNASIP_PROXY_INT_H
#define LUNASIP_PROXY_INT_H

#include <stdint.h>
#include <sys/socket.h>

#include "flow.h"
#include "sip_msg.h"

struct listener;
struct lvm;
struct txn;

/* Hidden: the module's own, as when they were statics of one file. Out of the dynamic
 * symbol table (-rdynamic, liblunasip.so). */
#pragma GCC visibility push(hidden)

/* An IP destination is one target. The RFC 3263 lists DNS brings will be allocated per
 * routing; until then every routing has one target and serial failover happens through
 * on_failure_response / on_error re-routing. */
#define PROXY_MAX_TARGETS 1

struct target {
    enum sip_transport transport;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char ip[48];                 /* INET6_ADDRSTRLEN */
    int port;
    uint64_t conn_id;            /* a stream flow named by a Route flow token (src/flow.h) */
    uint8_t udp_flow;            /* a UDP flow named by a token: send from local */
    struct sockaddr_storage local;
};

enum ctx_kind {
    CTX_PROXY = 0, /* a received request, with its server transaction */
    CTX_ACK,       /* the ACK of a 2xx: forwarded statelessly */
    CTX_UAC,       /* a request lunasip originates */
};

/* One routing: from lunasip_proxy_route / lunasip_uac_route until both transactions are
 * gone and Lua has been told "done". Holds a reference on its request and on the Lua
 * state that routed it (its callbacks run there even after a reload). */
struct pctx {
    uint32_t id;
    enum ctx_kind kind;
    enum sip_method method;      /* of req, which goes early after a 2xx to an INVITE */
    struct lvm *vm;
    struct sip_msg *req;
    struct txn *st;              /* PROXY: the server transaction (we are its user) */
    struct txn *ct;              /* the current client transaction */

    /* the profile, copied when the routing starts */
    uint8_t do_rr, rr_all, use_blacklist, failover_503, server_tls_cb;
    int blacklist_time;
    uint32_t timer_B, timer_C, timer_F;

    struct target targets[PROXY_MAX_TARGETS];
    int ntargets, cur;
    int err_status;              /* a failure found when routing was registered */
    const char *err_reason, *err_code;

    uint8_t canceled;
    uint8_t final_sent;          /* a final response went upstream (or was given up) */
    uint8_t lua_done;            /* "done" delivered */
    uint8_t timer_c_fired;
    uint8_t success_seen;
    uint8_t early;               /* the current branch forwarded a provisional with a To tag */
    uint8_t wants_199;           /* the INVITE announced Supported/Require: 199 */
    uint8_t queued;
    char loop8[9];               /* PROXY: the loop-detection part of our branches */
    uint8_t in_final_cb;
    uint8_t handed_over;         /* another routing took the request over */
    struct sip_msg *cur_failure; /* the failure being shown to on_failure_response */         /* on_failure_response / on_error running: may re-route */
    unsigned events;             /* LAPI_EV_* delivered to Lua */
    int busy;                    /* > 0 while a callback runs: frees are deferred */
    struct pctx *next_pending;
    struct pctx *all_next, **all_pprev; /* every live context, for the forced shutdown */
};

/* src/proxy.c */

/* Records the first routing error of c (status, reason and code are static text). */
void set_error(struct pctx *c, int status, const char *reason, const char *code);

/* src/proxy_out.c */

struct listener *listener_for_tp(int family, enum sip_transport tp, struct listener *prefer);
int prepare(struct pctx *c);
long build_request(struct pctx *c, struct listener *out_l, enum sip_transport out_tp, const char *out_token,
                   const char *branch, char **bufp);
int out_path(struct pctx *c, const struct target *t, struct listener **out_l, uint64_t *conn_id,
             char tok[FLOW_TOKEN_MAX + 1]);
int flow_target(struct pctx *c);

#pragma GCC visibility pop

#endif
