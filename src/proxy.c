/* The proxy core: stateful routing for lunasip.Proxy and lunasip.Uac (RFC 3261 §16), the
 * state machine of a routing: loop detection (§16.3 step 4), serial failover over the targets
 * of a destination with a blacklist, response processing (§16.7: 100 absorbed, 503 → next
 * target or 500, the Lua callbacks, RFC 6228 199), CANCEL (§16.10) and Timer C (§16.8), and the
 * stateless paths: 2xx ACKs (§16.11) and responses matching no transaction. The forwarded
 * request itself (§16.6: Max-Forwards, Via, Record-Route/Path) is built in src/proxy_out.c. */
#include "proxy.h"
#include "proxy_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config.h"
#include "conn.h"
#include "evi.h"
#include "flow.h"
#include "lapi.h"
#include "log.h"
#include "lvm.h"
#include "sip_msg.h"
#include "sip_core.h"
#include "sip_reply.h"
#include "stats.h"
#include "timer.h"
#include "txn.h"
#include "udp.h"

static const struct config_proxies *profiles;
static struct pctx *pending_head, *pending_tail;
static struct pctx *all_ctx;
static struct pctx *dispatching;  /* the ctx whose Lua callback is running */
static uint32_t next_id = 1;
static size_t inflight;           /* routings Lua has not been told "done" of */

/* ----- the blacklist: targets that failed, for blacklist_time seconds ----- */

struct bl_entry {
    struct sockaddr_storage addr;
    socklen_t addrlen;
    enum sip_transport transport;
    uint64_t until;              /* timer clock, ms */
    int status;
    char reason[64];
    const char *code;
    struct bl_entry *next;
};
static struct bl_entry *blacklist;

static int same_target(const struct bl_entry *e, const struct target *t)
{
    return e->transport == t->transport && e->addrlen == t->addrlen && memcmp(&e->addr, &t->addr, t->addrlen) == 0;
}

static const struct bl_entry *bl_find(const struct target *t)
{
    uint64_t now = timer_now();
    for (struct bl_entry **pp = &blacklist; *pp;) {
        struct bl_entry *e = *pp;
        if (e->until <= now) {
            *pp = e->next;
            free(e);
            continue;
        }
        if (same_target(e, t))
            return e;
        pp = &e->next;
    }
    return NULL;
}

static int bl_add(const struct target *t, int seconds, int status, const char *reason, size_t rlen, const char *code)
{
    struct bl_entry *e = NULL;
    for (struct bl_entry *x = blacklist; x; x = x->next)
        if (same_target(x, t))
            e = x;
    if (!e) {
        e = calloc(1, sizeof(*e));
        if (!e)
            return -ENOMEM;
        e->next = blacklist;
        blacklist = e;
    }
    memcpy(&e->addr, &t->addr, t->addrlen);
    e->addrlen = t->addrlen;
    e->transport = t->transport;
    e->until = timer_now() + (uint64_t)seconds * 1000;
    e->status = status;
    if (rlen >= sizeof(e->reason))
        rlen = sizeof(e->reason) - 1;
    memcpy(e->reason, reason, rlen);
    e->reason[rlen] = 0;
    e->code = code;
    LOG_INFO("target %s:%s:%d blacklisted for %d s (%d %s)", sip_transport_name(t->transport), t->ip, t->port,
             seconds, status, e->reason);
    return 0;
}

/* ----- configuration ----- */

void proxy_set_profiles(const struct config_proxies *p)
{
    profiles = p;
}

/* ----- contexts ----- */

static struct pctx *ctx_new(enum ctx_kind kind, struct sip_msg *req, const struct config_proxy *prof)
{
    struct pctx *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->id = next_id++;
    inflight++;
    c->all_next = all_ctx;
    if (all_ctx)
        all_ctx->all_pprev = &c->all_next;
    all_ctx = c;
    c->all_pprev = &all_ctx;
    if (next_id == 0)
        next_id = 1;
    c->kind = kind;
    c->events = 0xff;
    c->req = req;
    c->method = req->method;
    sip_msg_ref(req);
    c->vm = lvm_active ? lvm_active : lvm_current;
    if (c->vm)
        lvm_ref(c->vm);
    c->do_rr = (uint8_t)prof->do_record_routing;
    c->rr_all = (uint8_t)prof->record_route_all;
    c->use_blacklist = (uint8_t)prof->use_blacklist;
    c->failover_503 = (uint8_t)prof->dns_failover_on_503;
    c->server_tls_cb = (uint8_t)prof->callback_on_server_tls_handshake;
    c->blacklist_time = prof->blacklist_time;
    c->timer_B = (uint32_t)(prof->timer_B * 1000);
    c->timer_C = (uint32_t)(prof->timer_C * 1000);
    c->timer_F = (uint32_t)(prof->timer_F * 1000);
    return c;
}

static const struct txn_user_ops server_ops, client_ops;

/* Frees c once nothing can reach it any more: both transactions gone, Lua told, no
 * callback running. */
/* Lets go of the request: its Lua handle and the message (the routing may go on
 * without it, forwarding the 2xx retransmissions of an answered INVITE). */
static void drop_req(struct pctx *c)
{
    if (!c->req)
        return;
    if (!c->handed_over && c->kind == CTX_PROXY) {
        if (c->req->handle)
            lapi_msg_unbind(c->req);
        c->req->txn = NULL; /* ours (or none): the message may outlive the transaction */
    }
    sip_msg_unref(c->req);
    c->req = NULL;
}

static void ctx_maybe_free(struct pctx *c)
{
    /* Lua is done with the request: its handle goes now, and after a 2xx to an INVITE
     * the message too, not when the transactions that linger for retransmissions end
     * (Timers L and M: 32 s) */
    if (!c->busy && c->lua_done && c->req) {
        if (c->success_seen && c->method == SIP_METHOD_INVITE)
            drop_req(c);
        else if (!c->handed_over && c->kind == CTX_PROXY && c->req->handle)
            lapi_msg_unbind(c->req);
    }
    if (c->busy || c->st || c->ct || !c->lua_done || c->queued)
        return;
    drop_req(c);
    if (c->vm)
        lvm_unref(c->vm);
    *c->all_pprev = c->all_next;
    if (c->all_next)
        c->all_next->all_pprev = c->all_pprev;
    free(c);
}

/* Delivers one event to lunasip._dispatch_proxy; returns the LAPI_R_* bits. */
static unsigned event_bit(const char *e)
{
    switch (e[0]) {
    case 't': return LAPI_EV_TARGET;
    case 'p': return LAPI_EV_PROVISIONAL;
    case 's': return LAPI_EV_SUCCESS;
    case 'f': return LAPI_EV_FAILURE;
    case 'c': return LAPI_EV_CANCELED;
    case 'i': return LAPI_EV_INVITE_TIMEOUT;
    case 'e': return LAPI_EV_ERROR;
    default: return LAPI_EV_DONE;
    }
}

static int dispatch(struct pctx *c, const struct lvm_proxy_ev *ev)
{
    if (!c->vm || c->lua_done || !(c->events & event_bit(ev->event)))
        return 0;
    struct pctx *prev = dispatching;
    dispatching = c;
    c->busy++;
    int r = lvm_proxy_event(c->vm, c->id, ev, c->req);
    c->busy--;
    dispatching = prev;
    proxy_run_pending(); /* routings the callback registered */
    return r & (LAPI_R_DROP | LAPI_R_ABORT);
}

static int dispatch_simple(struct pctx *c, const char *event)
{
    struct lvm_proxy_ev ev = { event, 0, 0, NULL, NULL, NULL, 0 };
    return dispatch(c, &ev);
}

/* Stops being the user of a transaction (it lives on alone: absorbing retransmissions). */
static void release_ct(struct pctx *c)
{
    if (c->ct) {
        txn_set_user(c->ct, NULL, NULL);
        c->ct = NULL;
    }
}

static void release_st(struct pctx *c)
{
    if (c->st) {
        txn_set_user(c->st, NULL, NULL);
        if (c->req && c->req->txn == c->st)
            c->req->txn = NULL;
        c->st = NULL;
    }
}

static int dispatch_response(struct pctx *c, const char *event, struct sip_msg *resp)
{
    if (!c->vm || c->lua_done || !(c->events & event_bit(event)))
        return 0;
    uint32_t g;
    uint32_t h = lapi_msg_bind(resp, &g);
    if (!h)
        return 0;
    struct lvm_proxy_ev ev = { event, h, g, NULL, NULL, NULL, 0 };
    int r = dispatch(c, &ev);
    lapi_msg_unbind(resp);
    return r;
}

/* Tells Lua the routing is over (once), then frees what can be freed. */
static void ctx_finish(struct pctx *c)
{
    if (!c->lua_done) {
        dispatch_simple(c, "done");
        c->lua_done = 1;
        inflight--;
    }
    /* the request handle is not needed by anyone any more */
    if (c->kind == CTX_PROXY && c->req && c->req->handle && !c->busy && !c->handed_over)
        lapi_msg_unbind(c->req);
    /* After a 2xx to an INVITE both transactions stay ours (RFC 6026: later 2xx go
     * upstream); otherwise they finish alone. */
    if (!(c->success_seen && c->method == SIP_METHOD_INVITE)) {
        release_ct(c);
        release_st(c);
    }
    ctx_maybe_free(c);
}

/* ----- answering upstream ----- */

/* Sends a response of our own to the request of c through its server transaction. */
static void reply_local(struct pctx *c, int status, const char *reason)
{
    if (c->kind != CTX_PROXY || !c->st || c->req->method == SIP_METHOD_ACK)
        return;
    sip_core_reply(c->req, c->st, status, reason, NULL, 0);
    if (status >= 200)
        c->final_sent = 1;
}

/* Forwards a response (our Via already removed) upstream through the server transaction. */
static void forward_response(struct pctx *c, struct sip_msg *resp, int status)
{
    if (c->kind != CTX_PROXY || !c->st)
        return;
    size_t cap = (size_t)resp->len + 4096;
    char stackbuf[8192];
    char *buf = cap <= sizeof(stackbuf) ? stackbuf : malloc(cap);
    if (!buf)
        return;
    long n = sip_msg_serialize(resp, buf, cap);
    if (n > 0 && status != resp->status && n > 12) {
        /* 503 → 500 (RFC 3261 §16.7 step 6): rewrite the status line */
        char line[64];
        int ll = snprintf(line, sizeof(line), "SIP/2.0 %d %s\r\n", status, sip_reason_phrase(status));
        const char *eol = memchr(buf, '\n', (size_t)n);
        if (eol) {
            size_t old = (size_t)(eol + 1 - buf);
            if ((size_t)n - old + (size_t)ll <= cap) {
                memmove(buf + ll, buf + old, (size_t)n - old);
                memcpy(buf, line, (size_t)ll);
                n = n - (long)old + ll;
            }
        }
    }
    if (n > 0 && txn_server_reply(c->st, status, buf, (size_t)n) == 0) {
        if (status >= 200) {
            if (c->req)
                lapi_msg_set_state(c->req, LAPI_ST_FINAL);
            c->final_sent = 1;
        }
    }
    if (buf != stackbuf)
        free(buf);
}

/* RFC 6228 §6: an early dialog of a branch ends without its final going upstream: tell
 * the UAC with a 199 that carries the branch's To tag. Built from that final. */
static void send_199(struct pctx *c, struct sip_msg *resp)
{
    if (!c->wants_199 || !c->early || !c->st || c->final_sent || resp->to.tag.len == 0)
        return;
    char buf[8192];
    size_t n = 0;
    n += (size_t)snprintf(buf, sizeof(buf), "SIP/2.0 199 Early Dialog Terminated\r\n");
    for (uint32_t i = 0; i < resp->nhdrs; i++) {
        const struct sip_hdr *h = &resp->hdrs[i];
        if (h->flags & SIP_HDR_F_DELETED)
            continue;
        if (h->id != SIP_HDR_VIA && h->id != SIP_HDR_FROM && h->id != SIP_HDR_TO && h->id != SIP_HDR_CALL_ID &&
            h->id != SIP_HDR_CSEQ)
            continue;
        struct sip_str v = sip_msg_hdr_value(resp, i);
        const char *name = sip_hdr_name((enum sip_hdr_id)h->id);
        size_t need = strlen(name) + 4 + v.len;
        if (n + need + 32 > sizeof(buf))
            return;
        n += (size_t)sprintf(buf + n, "%s: ", name);
        memcpy(buf + n, v.s, v.len);
        n += v.len;
        memcpy(buf + n, "\r\n", 2);
        n += 2;
    }
    n += (size_t)sprintf(buf + n, "Content-Length: 0\r\n\r\n");
    txn_server_reply(c->st, 199, buf, n);
    c->early = 0;
}

/* ----- routing ----- */

static void try_next(struct pctx *c, int status, const char *reason, const char *code, struct sip_msg *resp);

/* No target left (OverSIP's semantics): a response from downstream goes through
 * on_failure_response and upstream (503 as 500); otherwise on_error(status, reason, code)
 * and a local answer with that status. drop_response suppresses the answer. */
static void no_more_targets(struct pctx *c, int status, const char *reason, const char *code, struct sip_msg *resp)
{
    int flags;
    if (resp) {
        int st = resp->status == 503 ? 500 : resp->status;
        c->in_final_cb = 1;
        c->cur_failure = resp;
        flags = c->canceled ? 0 : dispatch_response(c, "failure", resp);
        c->cur_failure = NULL;
        c->in_final_cb = 0;
        if (flags & LAPI_R_DROP)
            send_199(c, resp);
        else
            forward_response(c, resp, st);
    } else {
        if (!status) {
            status = 500;
            reason = "No Target";
            code = "no_target";
        }
        stats.proxy_errors++;
        LOG_INFO("routing %.*s failed: %d %s (%s), Call-ID %.*s", (int)c->req->method_str.len, c->req->method_str.s,
                 status, reason, code, (int)(c->req->call_id.len > 80 ? 80 : c->req->call_id.len),
                 c->req->call_id.s);
        struct lvm_proxy_ev ev = { "error", 0, 0, reason, NULL, code, status };
        c->in_final_cb = 1;
        flags = dispatch(c, &ev);
        c->in_final_cb = 0;
        int non_invite_timeout = status == 408 && c->req->method != SIP_METHOD_INVITE;
        if (!(flags & LAPI_R_DROP) && !(lapi_msg_state(c->req) & LAPI_ST_FINAL)) {
            if (non_invite_timeout) {
                /* RFC 4320 §4.2: never a 408 to a non-INVITE; the client times out itself */
                if (c->st)
                    txn_server_expire(c->st, 64 * (uint64_t)txn_timer_values()->T1);
            } else {
                reply_local(c, status, reason);
            }
        }
    }
    c->final_sent = 1;
    ctx_finish(c);
}

/* RFC 3261 §16.6 step 8 / §16.3 step 4: the loop-detection part of our branch, a hash of
 * what identifies this request as it arrived (the top Via excluded: it is ours when a
 * request comes back). */
/* FNV-1a over one field, then a separator so adjacent fields cannot trade bytes. */
static uint64_t fnv(uint64_t h, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ULL;
    }
    h ^= 0xff;
    return h * 0x100000001b3ULL;
}
#define FNV_INIT 0xcbf29ce484222325ULL

static uint32_t loop_hash(struct sip_msg *m)
{
    uint64_t h = FNV_INIT;
    h = fnv(h, m->ruri_str.s, m->ruri_str.len);
    h = fnv(h, m->from.tag.s, m->from.tag.len);
    h = fnv(h, m->to.tag.s, m->to.tag.len);
    h = fnv(h, m->call_id.s, m->call_id.len);
    h = fnv(h, (const char *)&m->cseq, sizeof(m->cseq));
    for (uint32_t i = 0; i < m->nhdrs; i++) {
        const struct sip_hdr *hd = &m->hdrs[i];
        if (hd->id == SIP_HDR_PROXY_REQUIRE || hd->id == SIP_HDR_PROXY_AUTHORIZATION)
            h = fnv(h, hd->value.s, hd->value.len);
    }
    return (uint32_t)(h ^ (h >> 32));
}

/* A Via of ours whose branch carries this request's loop hash: a loop, not a spiral. */
static int is_loop(struct sip_msg *m, const char *hash8)
{
    for (int i = sip_msg_hdr_find_id(m, SIP_HDR_VIA, 0); i >= 0; i = sip_msg_hdr_find_id(m, SIP_HDR_VIA, (uint32_t)i + 1)) {
        struct sip_str v = sip_msg_hdr_value(m, (uint32_t)i), item;
        const char *p = v.s, *end = v.s + v.len;
        while (sip_list_next(&p, end, &item) == 1) {
            struct sip_via via;
            if (sip_via_parse(item.s, item.len, &via) != 0 || via.branch.len < 9)
                continue;
            if (!lapi_host_is_local(via.host, via.port ? via.port : 5060))
                continue;
            if (memcmp(via.branch.s + via.branch.len - 8, hash8, 8) == 0 && via.branch.s[via.branch.len - 9] == '.')
                return 1;
        }
    }
    return 0;
}

/* SPEC §5.5 tm:local-request: a request lunasip generated (a Uac request, a CANCEL). */
static void raise_local_request(struct sip_msg *m, const char *method)
{
    if (!m)
        return;
    struct sip_str from = { "", 0 }, to = { "", 0 };
    int i = sip_msg_hdr_find_id(m, SIP_HDR_FROM, 0);
    if (i >= 0)
        from = sip_msg_hdr_value(m, (uint32_t)i);
    if ((i = sip_msg_hdr_find_id(m, SIP_HDR_TO, 0)) >= 0)
        to = sip_msg_hdr_value(m, (uint32_t)i);
    struct evi_param p[] = {
        EVI_STR("method", method ? method : ""),
        EVI_STRN("ruri", m->ruri_str.s, m->ruri_str.len),
        EVI_STRN("from", from.s, from.len),
        EVI_STRN("to", to.s, to.len),
        EVI_STRN("call_id", m->call_id.s, m->call_id.len),
    };
    if (!method)
        p[0] = (struct evi_param)EVI_STRN("method", m->method_str.s, m->method_str.len);
    evi_raise_core("tm:local-request", p, 5);
}

static int send_to(struct pctx *c, const struct target *t)
{
    struct listener *out_l = NULL;
    uint64_t conn_id = 0;
    char out_tok[FLOW_TOKEN_MAX + 1];
    int rc = out_path(c, t, &out_l, &conn_id, out_tok);
    if (rc != 0)
        return rc;
    rc = prepare(c);
    if (rc != 0)
        return rc;
    char branch[TXN_BRANCH_MAX + 1];
    if (c->kind == CTX_PROXY) {
        txn_branch_new(branch, c->loop8, 8);
    } else {
        txn_branch_new(branch, NULL, 0);
    }
    char *buf = NULL;
    long n = build_request(c, out_l, t->transport, out_tok, branch, &buf);
    if (n < 0)
        return -ENOMEM;
    struct txn_client_params p;
    memset(&p, 0, sizeof(p));
    p.buf = buf;
    p.len = (size_t)n;
    p.dest.l = out_l;
    p.dest.transport = t->transport;
    p.dest.conn_id = conn_id;
    memcpy(&p.dest.addr, &t->addr, t->addrlen);
    p.dest.addrlen = t->addrlen;
    p.timer_B_ms = c->timer_B;
    p.timer_F_ms = c->timer_F;
    p.timer_C_ms = c->req->method == SIP_METHOD_INVITE ? c->timer_C : 0;
    struct txn *ct = NULL;
    rc = txn_client_create(&p, &client_ops, c, &ct);
    free(buf);
    if (rc != 0)
        return rc;
    c->ct = ct;
    c->early = 0;
    if (c->kind == CTX_UAC)
        raise_local_request(c->req, NULL);
    return 0;
}

static void try_next(struct pctx *c, int status, const char *reason, const char *code, struct sip_msg *resp)
{
    while (c->cur < c->ntargets) {
        const struct target *t = &c->targets[c->cur++];
        if (c->use_blacklist) {
            const struct bl_entry *e = bl_find(t);
            if (e) {
                LOG_DEBUG("target %s:%d is blacklisted", t->ip, t->port);
                status = e->status;
                reason = e->reason;
                code = e->code;
                resp = NULL;
                continue;
            }
        }
        struct lvm_proxy_ev ev = { "target", 0, 0, sip_transport_name(t->transport), t->ip, NULL, t->port };
        if (dispatch(c, &ev) & LAPI_R_ABORT) {
            LOG_NOTICE("routing aborted for target %s:%s:%d", sip_transport_name(t->transport), t->ip, t->port);
            no_more_targets(c, 403, "Destination Aborted", "destination_aborted", NULL);
            return;
        }
        if (c->final_sent ||
            (c->kind == CTX_PROXY && (!c->st || (lapi_msg_state(c->req) & LAPI_ST_FINAL)))) {
            c->final_sent = 1;
            ctx_finish(c); /* answered from on_target */
            return;
        }
        int rc = send_to(c, t);
        if (rc == 0)
            return;
        LOG_NOTICE("cannot send to %s:%s:%d: %s", sip_transport_name(t->transport), t->ip, t->port, strerror(-rc));
        if (c->use_blacklist)
            bl_add(t, c->blacklist_time, 500, "Connection Error", 16, "connection_error");
        status = 500;
        reason = "Connection Error";
        code = "connection_error";
        resp = NULL;
    }
    no_more_targets(c, status, reason, code, resp);
}

/* ----- transaction user callbacks ----- */

static void on_client_response(void *tu, struct txn *ct, struct sip_msg *resp)
{
    struct pctx *c = tu;
    int st = resp->status;
    if (ct != c->ct)
        return;
    c->busy++;
    sip_msg_hdr_delete_top_value(resp, "Via", 3); /* our own (§16.7 step 3) */
    if (st < 200) {
        if (st > 100 && !c->canceled && !c->timer_c_fired && !c->final_sent) {
            int flags = dispatch_response(c, "provisional", resp);
            if (!(flags & LAPI_R_DROP) && c->st) {
                forward_response(c, resp, st);
                if (resp->to.tag.len)
                    c->early = 1;
            }
        }
    } else if (st < 300) {
        if (!c->success_seen) {
            c->success_seen = 1;
            int flags = dispatch_response(c, "success", resp);
            if (!(flags & LAPI_R_DROP))
                forward_response(c, resp, st);
        } else {
            forward_response(c, resp, st); /* another 2xx (RFC 6026): upstream too */
        }
        c->final_sent = 1; /* (the ACK of a 2xx to an originated INVITE is the script's job) */
        ctx_finish(c);
    } else if (c->timer_c_fired || c->final_sent) {
        /* we answered already (408 on Timer C): the 487 stops here */
        ctx_finish(c);
    } else if (c->canceled) {
        forward_response(c, resp, st); /* the 487, no callback (OverSIP) */
        ctx_finish(c);
    } else if (st == 503 && c->failover_503 && c->cur < c->ntargets) {
        send_199(c, resp);
        release_ct(c);
        try_next(c, 0, NULL, NULL, resp);
    } else {
        release_ct(c);
        no_more_targets(c, 0, NULL, NULL, resp);
    }
    c->busy--;
    ctx_maybe_free(c);
}

static void on_client_fail(void *tu, struct txn *ct, enum txn_fail why)
{
    struct pctx *c = tu;
    if (ct != c->ct)
        return;
    release_ct(c);
    c->busy++;
    if (c->final_sent || c->lua_done) {
        /* nothing to decide any more */
    } else if (why == TXN_FAIL_CANCEL_TIMEOUT) {
        reply_local(c, 487, NULL);
        ctx_finish(c);
    } else if (c->canceled) {
        reply_local(c, 487, NULL);
        ctx_finish(c);
    } else {
        const struct target *t = &c->targets[c->cur - 1];
        int timeout = why == TXN_FAIL_TIMEOUT;
        if (c->use_blacklist)
            bl_add(t, c->blacklist_time, timeout ? 408 : 500, timeout ? "Client Timeout" : "Connection Error",
                   timeout ? 14 : 16, timeout ? "client_timeout" : "connection_error");
        if (timeout)
            try_next(c, 408, "Request Timeout", "client_timeout", NULL);
        else
            try_next(c, 500, "Connection Error", "connection_error", NULL);
    }
    c->busy--;
    ctx_maybe_free(c);
}

/* RFC 3261 §16.8: Timer C fired. CANCEL the branch and answer 408 upstream (OverSIP's
 * on_invite_timeout runs first; drop_response there keeps the 408 back). */
static void on_timer_c(void *tu, struct txn *ct)
{
    struct pctx *c = tu;
    if (ct != c->ct || c->final_sent)
        return;
    c->busy++;
    c->timer_c_fired = 1;
    static const char why[] = "SIP;cause=408;text=\"Timer C\"";
    if (txn_client_cancel(ct, why, sizeof(why) - 1) == 0)
        raise_local_request(c->req, "CANCEL");
    int flags = dispatch_simple(c, "invite_timeout");
    if (!(flags & LAPI_R_DROP) && !(lapi_msg_state(c->req) & LAPI_ST_FINAL))
        reply_local(c, 408, "Request Timeout");
    c->final_sent = 1;
    ctx_finish(c);
    c->busy--;
    ctx_maybe_free(c);
}

static void on_terminated(void *tu, struct txn *t)
{
    struct pctx *c = tu;
    if (t == c->st) {
        c->st = NULL;
        if (c->req && c->req->txn == t)
            c->req->txn = NULL;
        if (!c->lua_done && !c->ct && !c->busy) {
            c->final_sent = 1;
            ctx_finish(c);
            return;
        }
    }
    if (t == c->ct)
        c->ct = NULL;
    ctx_maybe_free(c);
}

static void on_server_no_ack(void *tu, struct txn *st)
{
    (void)tu;
    (void)st;
}

static const struct txn_user_ops server_ops = { NULL, NULL, NULL, on_server_no_ack, on_terminated };
static const struct txn_user_ops client_ops = { on_client_response, on_client_fail, on_timer_c, NULL, on_terminated };

/* ----- registering a routing (FFI, no Lua re-entry) ----- */

static const struct config_proxy *find_profile(const char *name, size_t len)
{
    char buf[128];
    if (!profiles || len == 0 || len >= sizeof(buf))
        return NULL;
    memcpy(buf, name, len);
    buf[len] = 0;
    return config_proxies_find(profiles, buf);
}

int lunasip_proxy_profile(const char *name, size_t len)
{
    return find_profile(name, len) ? LAPI_OK : LAPI_NONE;
}

void set_error(struct pctx *c, int status, const char *reason, const char *code)
{
    if (!c->err_status) {
        c->err_status = status;
        c->err_reason = reason;
        c->err_code = code;
    }
}

/* Fills c's targets from an explicit destination or from a URI (top Route, else the
 * R-URI). An IP literal gives one target; a name needs DNS, which lunasip does not do
 * yet: that is a routing error reported through on_error. */
static void resolve(struct pctx *c, const char *host, size_t hlen, int port, int transport)
{
    struct sip_uri u;
    int tp = transport;
    int secure = 0;
    if ((!host || hlen == 0) && c->kind != CTX_UAC && c->req->route_user.len && flow_target(c))
        return;
    if (!host || hlen == 0) {
        struct sip_msg *m = c->req;
        int i = c->kind == CTX_PROXY ? sip_msg_hdr_find_id(m, SIP_HDR_ROUTE, 0) : -1;
        struct sip_str us;
        struct sip_nameaddr na;
        if (i >= 0) {
            struct sip_str v = sip_msg_hdr_value(m, (uint32_t)i), item;
            const char *p = v.s, *end = v.s + v.len;
            if (sip_list_next(&p, end, &item) != 1 || sip_nameaddr_parse(item.s, item.len, 0, &na) != 0) {
                set_error(c, 400, "Bad Route", "bad_route");
                return;
            }
            u = na.uri;
        } else {
            us = m->ruri_str;
            if (sip_uri_parse(us.s, us.len, &u) != 0) {
                set_error(c, 400, "Bad Request-URI", "bad_ruri");
                return;
            }
        }
        if (u.scheme != SIP_URI_SIP && u.scheme != SIP_URI_SIPS) {
            set_error(c, 416, "Unsupported URI Scheme", "unsupported_uri_scheme");
            return;
        }
        secure = u.scheme == SIP_URI_SIPS;
        host = u.host.s;
        hlen = u.host.len;
        if (!port)
            port = u.port;
        if (tp == LAPI_TP_ANY) {
            struct sip_str tv;
            if (sip_param_get(u.params, "transport", &tv) == 1 && tv.len) {
                if (sip_str_casecmp(tv, "udp") == 0) tp = SIP_TP_UDP;
                else if (sip_str_casecmp(tv, "tcp") == 0) tp = secure ? SIP_TP_TLS : SIP_TP_TCP;
                else if (sip_str_casecmp(tv, "tls") == 0) tp = SIP_TP_TLS;
                else if (sip_str_casecmp(tv, "ws") == 0) tp = SIP_TP_WS;
                else if (sip_str_casecmp(tv, "wss") == 0) tp = SIP_TP_WSS;
                else {
                    set_error(c, 478, "Unsupported Transport", "unsupported_transport");
                    return;
                }
            }
        }
    }
    if (tp == LAPI_TP_ANY)
        tp = secure ? SIP_TP_TLS : SIP_TP_UDP;
    if (hlen >= 2 && host[0] == '[' && host[hlen - 1] == ']') {
        host++;
        hlen -= 2;
    }
    struct target *t = &c->targets[0];
    char hbuf[256];
    if (hlen == 0 || hlen >= sizeof(hbuf)) {
        set_error(c, 400, "Bad Destination", "bad_destination");
        return;
    }
    memcpy(hbuf, host, hlen);
    hbuf[hlen] = 0;
    if (port <= 0)
        port = tp == SIP_TP_TLS || tp == SIP_TP_WSS ? 5061 : 5060;
    memset(t, 0, sizeof(*t));
    t->transport = (enum sip_transport)tp;
    t->port = port;
    if (sockaddr_from_ip((struct sip_str){ host, (uint32_t)hlen }, port, &t->addr, &t->addrlen) != 0) {
        LOG_NOTICE("cannot route to '%s': DNS resolution is not available in this lunasip yet; "
                   "route to an IP address", hbuf);
        set_error(c, 478, "Destination Requires DNS", "no_dns");
        return;
    }
    if (!listener_for_tp(t->addr.ss_family, t->transport, NULL)) {
        int v6 = t->addr.ss_family == AF_INET6;
        set_error(c, 478, v6 ? "Destination Requires Unsupported IPv6" : "Destination Requires Unsupported IPv4",
                  v6 ? "no_ipv6" : "no_ipv4");
        return;
    }
    snprintf(t->ip, sizeof(t->ip), "%.47s", hbuf);
    c->ntargets = 1;
}

static void enqueue(struct pctx *c)
{
    c->queued = 1;
    c->next_pending = NULL;
    if (pending_tail)
        pending_tail->next_pending = c;
    else
        pending_head = c;
    pending_tail = c;
}

int lunasip_proxy_route(uint32_t h, uint32_t g, const char *profile, size_t plen,
                        const char *host, size_t hlen, int port, int transport, uint32_t *ctx)
{
    struct sip_msg *m = lapi_msg_get(h, g);
    if (!m)
        return LAPI_GONE;
    if (!m->is_request || m->method == SIP_METHOD_CANCEL || port < 0 || port > 65535 ||
        transport < LAPI_TP_ANY || transport > SIP_TP_WSS || (hlen && !host))
        return LAPI_EINVAL;
    const struct config_proxy *prof = find_profile(profile, plen);
    if (!prof)
        return LAPI_NONE;
    enum ctx_kind kind = m->method == SIP_METHOD_ACK ? CTX_ACK : CTX_PROXY;
    struct pctx *prev = NULL;
    if (kind == CTX_PROXY) {
        unsigned st = lapi_msg_state(m);
        if (st & LAPI_ST_FINAL)
            return LAPI_EDONE;
        if (st & LAPI_ST_ROUTED) {
            /* serial forking from on_failure_response / on_error (as in OverSIP): the new
             * routing takes the server transaction over; the old one answers nothing */
            prev = dispatching;
            if (!prev || prev->kind != CTX_PROXY || prev->req != m || !prev->in_final_cb || !prev->st)
                return LAPI_EDONE;
        }
        if (!m->txn)
            return LAPI_EINVAL; /* not received by the core (Message.parse in tests) */
    }
    struct pctx *c = ctx_new(kind, m, prof);
    if (!c)
        return LAPI_ENOMEM;
    if (prev) {
        if (prev->cur_failure)
            send_199(prev, prev->cur_failure); /* its early dialog ends here (RFC 6228) */
        prev->st = NULL; /* handed over: m->txn stays, now served by c */
        prev->handed_over = 1;
    }
    if (kind == CTX_PROXY) {
        c->st = m->txn;
        txn_set_user(c->st, &server_ops, c);
        lapi_msg_set_state(m, LAPI_ST_ROUTED);
        c->wants_199 = m->method == SIP_METHOD_INVITE &&
                       (sip_msg_has_option_tag(m, SIP_HDR_SUPPORTED, "199") || sip_msg_has_option_tag(m, SIP_HDR_REQUIRE, "199"));
    }
    resolve(c, hlen ? host : NULL, hlen, port, transport);
    enqueue(c);
    *ctx = c->id;
    return LAPI_OK;
}

int lunasip_uac_route(const char *buf, size_t len, const char *profile, size_t plen,
                      const char *host, size_t hlen, int port, int transport, uint32_t *ctx,
                      const char **err)
{
    *err = NULL;
    if (!buf || len == 0 || len > 65535 || port < 0 || port > 65535 || transport < LAPI_TP_ANY ||
        transport > SIP_TP_WSS || (hlen && !host)) {
        *err = "bad arguments";
        return LAPI_EINVAL;
    }
    const struct config_proxy *prof = find_profile(profile, plen);
    if (!prof)
        return LAPI_NONE;
    const char *eol = memchr(buf, '\n', len);
    if (!eol) {
        *err = "no start line";
        return LAPI_EINVAL;
    }
    /* a placeholder Via (replaced by ours when sent) so the request parses as any other */
    static const char via[] = "Via: SIP/2.0/UDP 0.0.0.0;branch=z9hG4bKuac\r\n";
    static const char mf[] = "Max-Forwards: 70\r\n";
    size_t start = (size_t)(eol + 1 - buf);
    char *raw = malloc(len + sizeof(via) + sizeof(mf));
    if (!raw)
        return LAPI_ENOMEM;
    memcpy(raw, buf, start);
    memcpy(raw + start, via, sizeof(via) - 1);
    size_t n = start + sizeof(via) - 1;
    int has_mf = 0;
    for (const char *p = buf + start; p + 13 <= buf + len; ) {
        if (strncasecmp(p, "Max-Forwards:", 13) == 0)
            has_mf = 1;
        const char *e = memchr(p, '\n', (size_t)(buf + len - p));
        if (!e || e == p + 1)
            break;
        p = e + 1;
    }
    if (!has_mf) {
        memcpy(raw + n, mf, sizeof(mf) - 1);
        n += sizeof(mf) - 1;
    }
    memcpy(raw + n, buf + start, len - start);
    n += len - start;
    struct sip_parse_error perr = { 0, NULL };
    struct sip_msg *m = sip_msg_parse(raw, n, SIP_PARSE_DATAGRAM, &perr);
    free(raw);
    if (!m) {
        *err = perr.reason ? perr.reason : "the request does not parse";
        return LAPI_EINVAL;
    }
    if (!m->is_request || m->method == SIP_METHOD_ACK || m->method == SIP_METHOD_CANCEL) {
        sip_msg_unref(m);
        *err = "a Uac sends requests other than ACK and CANCEL";
        return LAPI_EINVAL;
    }
    /* drop the placeholder Via: the one built per target goes on top */
    sip_msg_hdr_delete(m, "Via", 3, 1);
    struct pctx *c = ctx_new(CTX_UAC, m, prof);
    sip_msg_unref(m);
    if (!c)
        return LAPI_ENOMEM;
    resolve(c, hlen ? host : NULL, hlen, port, transport);
    enqueue(c);
    *ctx = c->id;
    return LAPI_OK;
}

int lunasip_proxy_events(uint32_t ctx, unsigned mask)
{
    if (pending_tail && pending_tail->id == ctx) {
        pending_tail->events = mask & 0xff;
        return LAPI_OK;
    }
    for (struct pctx *c = pending_head; c; c = c->next_pending) {
        if (c->id == ctx) {
            c->events = mask & 0xff;
            return LAPI_OK;
        }
    }
    return LAPI_NONE;
}

int lunasip_proxy_blacklist(uint32_t ctx, int timeout, int status, const char *reason, size_t rlen)
{
    struct pctx *c = dispatching;
    if (!c || c->id != ctx || c->cur == 0)
        return LAPI_NONE;
    if (timeout != 0 && (timeout < 2 || timeout > 3000))
        return LAPI_EINVAL;
    if (status != 0 && (status < 300 || status > 699))
        return LAPI_EINVAL;
    if (reason) {
        for (size_t i = 0; i < rlen; i++)
            if (reason[i] == '\r' || reason[i] == '\n' || reason[i] == 0)
                return LAPI_EINVAL;
    } else {
        reason = "Destination Blacklisted";
        rlen = strlen(reason);
    }
    return bl_add(&c->targets[c->cur - 1], timeout ? timeout : c->blacklist_time, status ? status : 403, reason,
                  rlen, "destination_blacklisted") == 0 ? LAPI_OK : LAPI_ENOMEM;
}

/* ----- running registered routings ----- */

/* RFC 3261 §16.11: the ACK of a 2xx is forwarded statelessly. Its branch is derived from
 * the incoming one, so a retransmitted ACK goes out with the same branch. */
static void forward_ack(struct pctx *c)
{
    const struct target *t = &c->targets[0];
    struct lvm_proxy_ev ev = { "target", 0, 0, sip_transport_name(t->transport), t->ip, NULL, t->port };
    if (dispatch(c, &ev) & LAPI_R_ABORT)
        return;
    struct listener *out_l = NULL;
    char out_tok[FLOW_TOKEN_MAX + 1];
    struct txn_dest d;
    memset(&d, 0, sizeof(d));
    if (out_path(c, t, &out_l, &d.conn_id, out_tok) != 0 || prepare(c) != 0)
        return;
    uint64_t h = fnv(fnv(FNV_INIT, c->req->via1.branch.s, c->req->via1.branch.len), c->req->call_id.s,
                     c->req->call_id.len);
    char branch[40];
    snprintf(branch, sizeof(branch), "z9hG4bKsl%016llx", (unsigned long long)h);
    char *buf = NULL;
    long n = build_request(c, out_l, t->transport, out_tok, branch, &buf);
    if (n < 0)
        return;
    d.l = out_l;
    d.transport = t->transport;
    memcpy(&d.addr, &t->addr, t->addrlen);
    d.addrlen = t->addrlen;
    if (sip_core_send(&d, buf, (size_t)n) == 0)
        stats.proxy_stateless++;
    free(buf);
}

static void start(struct pctx *c)
{
    struct sip_msg *m = c->req;
    c->busy++;
    if (c->kind == CTX_PROXY && !c->st) {
        c->final_sent = 1; /* the transaction ended before we could route */
    } else if (c->err_status) {
        no_more_targets(c, c->err_status, c->err_reason, c->err_code, NULL);
    } else if (c->kind == CTX_ACK) {
        if (m->max_forwards_final || sip_msg_max_forwards(m) != 0)
            forward_ack(c);
    } else if (c->kind == CTX_PROXY && !m->max_forwards_final && sip_msg_max_forwards(m) == 0) {
        /* RFC 3261 §16.3 step 3 */
        stats.proxy_too_many_hops++;
        no_more_targets(c, 483, "Too Many Hops", "too_many_hops", NULL);
    } else {
        if (c->kind == CTX_PROXY) {
            snprintf(c->loop8, sizeof(c->loop8), "%08x", loop_hash(m));
            if (is_loop(m, c->loop8)) {
                stats.proxy_loops++;
                no_more_targets(c, 482, "Loop Detected", "loop_detected", NULL);
                goto out;
            }
            stats.proxy_requests++;
            /* RFC 3261 §16.2: 100 Trying at once, the next hop may take a while */
            if (m->method == SIP_METHOD_INVITE && !(lapi_msg_state(m) & LAPI_ST_PROV) && txn_status(c->st) == 0)
                reply_local(c, 100, NULL);
        }
        try_next(c, 0, NULL, NULL, NULL);
    }
out:
    c->busy--;
    if (c->kind != CTX_PROXY || c->final_sent || !c->st)
        if (!c->ct)
            ctx_finish(c);
}

void proxy_run_pending(void)
{
    static int running;
    if (running)
        return; /* the outer call drains the queue */
    running = 1;
    while (pending_head) {
        struct pctx *c = pending_head;
        pending_head = c->next_pending;
        if (!pending_head)
            pending_tail = NULL;
        c->queued = 0;
        start(c);
    }
    running = 0;
}

/* ----- CANCEL and stray responses ----- */

void proxy_on_cancel(struct txn *inv, struct sip_msg *cancel)
{
    stats.proxy_cancels++;
    if (txn_user_ops(inv) != &server_ops) {
        /* not being routed: nobody else will answer the INVITE */
        struct sip_msg *req = txn_request(inv);
        if (req && !(lapi_msg_state(req) & LAPI_ST_FINAL) && txn_status(inv) < 200)
            sip_core_reply(req, inv, 487, NULL, NULL, 0);
        return;
    }
    struct pctx *c = txn_user(inv);
    if (c->canceled || c->final_sent)
        return;
    c->canceled = 1;
    c->busy++;
    dispatch_simple(c, "canceled");
    /* RFC 3326 §2: every Reason of the caller's CANCEL goes into ours (one per protocol) */
    char reason[1024];
    size_t rlen = 0;
    for (int i = sip_msg_hdr_find_id(cancel, SIP_HDR_REASON, 0); i >= 0;
         i = sip_msg_hdr_find_id(cancel, SIP_HDR_REASON, (uint32_t)i + 1)) {
        struct sip_str v = sip_msg_hdr_value(cancel, (uint32_t)i);
        if (rlen + v.len + 2 > sizeof(reason))
            break;
        if (rlen) {
            memcpy(reason + rlen, ", ", 2);
            rlen += 2;
        }
        memcpy(reason + rlen, v.s, v.len);
        rlen += v.len;
    }
    int crc = c->ct ? txn_client_cancel(c->ct, rlen ? reason : NULL, rlen) : -EALREADY;
    if (crc == -EINVAL && rlen) /* a Reason the CANCEL builder refuses: cancel without it */
        crc = txn_client_cancel(c->ct, NULL, 0);
    if (crc == 0) {
        /* the 487 (or a late 2xx) comes back through the client transaction */
        raise_local_request(c->req, "CANCEL");
    } else if (!c->final_sent && !c->ct) {
        reply_local(c, 487, NULL);
        ctx_finish(c);
    }
    c->busy--;
    ctx_maybe_free(c);
}

/* Whether a branch is one this process generated: "z9hG4bK" and our per-start prefix. */
static int branch_is_ours(struct sip_str b)
{
    static char mine[TXN_BRANCH_MAX + 1];
    static size_t plen;
    if (!plen) {
        txn_branch_new(mine, NULL, 0);
        plen = 15; /* "z9hG4bK" + the 8-character process prefix */
    }
    return b.len > plen && memcmp(b.s, mine, plen) == 0;
}

void proxy_on_stray_response(struct sip_msg *resp)
{
    const struct sip_via *v = &resp->via1;
    if (resp->status == 100 || resp->nvia < 2 || !branch_is_ours(v->branch) ||
        !lapi_host_is_local(v->host, v->port ? v->port : 5060)) {
        stats.rx_responses_dropped++;
        LOG_DEBUG("dropped a %d response matching no transaction, Call-ID %.*s", resp->status,
                  (int)resp->call_id.len, resp->call_id.s);
        return;
    }
    if (sip_msg_hdr_delete_top_value(resp, "Via", 3) != 1)
        return;
    /* the next Via, as a request's top Via would be answered (§18.2.2, RFC 3581) */
    int i = sip_msg_hdr_find_id(resp, SIP_HDR_VIA, 0);
    if (i < 0)
        return;
    struct sip_str hv = sip_msg_hdr_value(resp, (uint32_t)i), item;
    const char *p = hv.s, *end = hv.s + hv.len;
    struct sip_via via;
    if (sip_list_next(&p, end, &item) != 1 || sip_via_parse(item.s, item.len, &via) != 0)
        return;
    struct sip_str host = via.has_received && via.received.len ? via.received : via.host;
    int port = via.port ? via.port : 5060;
    if (via.has_rport && via.rport.len) {
        uint64_t rp;
        if (sip_parse_uint(via.rport.s, via.rport.len, 65535, &rp) == 0 && rp)
            port = (int)rp;
    }
    struct sockaddr_storage dst;
    socklen_t dlen;
    if (sockaddr_from_ip(host, port, &dst, &dlen) != 0)
        return; /* a name: no DNS yet */
    enum sip_transport tp = SIP_TP_UDP;
    if (sip_str_casecmp(via.transport, "TCP") == 0) tp = SIP_TP_TCP;
    else if (sip_str_casecmp(via.transport, "TLS") == 0) tp = SIP_TP_TLS;
    else if (sip_str_casecmp(via.transport, "WS") == 0) tp = SIP_TP_WS;
    else if (sip_str_casecmp(via.transport, "WSS") == 0) tp = SIP_TP_WSS;
    struct txn_dest d;
    memset(&d, 0, sizeof(d));
    d.l = listener_for_tp(dst.ss_family, tp, resp->listener);
    if (!d.l)
        return;
    d.transport = tp;
    memcpy(&d.addr, &dst, dlen);
    d.addrlen = dlen;
    char buf[16384];
    long n = sip_msg_serialize(resp, buf, sizeof(buf));
    if (n > 0 && sip_core_send(&d, buf, (size_t)n) == 0)
        stats.proxy_stateless++;
}

void proxy_before_local_final(struct sip_msg *req)
{
    struct pctx *c = dispatching;
    if (c && c->kind == CTX_PROXY && c->req == req && c->cur_failure)
        send_199(c, c->cur_failure);
}

size_t proxy_inflight(void)
{
    return inflight;
}

void proxy_shutdown(void)
{
    while (pending_head) {
        struct pctx *c = pending_head;
        pending_head = c->next_pending;
        c->queued = 0;
        if (!c->lua_done)
            inflight--;
        c->lua_done = 1;
        ctx_maybe_free(c);
    }
    pending_tail = NULL;
    /* a forced exit (a second SIGTERM) leaves routings whose end Lua was never told: the
     * transactions are gone already (txn_shutdown), so they go too */
    while (all_ctx) {
        struct pctx *c = all_ctx;
        if (!c->lua_done)
            inflight--;
        c->busy = 0;
        c->st = c->ct = NULL;
        c->lua_done = 1;
        c->queued = 0;
        ctx_maybe_free(c);
    }
    while (blacklist) {
        struct bl_entry *e = blacklist->next;
        free(blacklist);
        blacklist = e;
    }
}
