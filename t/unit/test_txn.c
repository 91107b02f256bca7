/* Unit tests of txn.c on the virtual clock with a capturing send hook: every state and
 * timer of the four RFC 3261 §17 machines, RFC 6026 (Accepted, L, M), RFC 4320, matching
 * (§17.1.3, §17.2.3, RFC 2543), the ACK and CANCEL bytes, Timer C, txn_server_expire,
 * callbacks that end their own transaction, and txn_shutdown. */
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>

#include "log.h"
#include "sip_msg.h"
#include "stats.h"
#include "test.h"
#include "timer.h"
#include "txn.h"

/* ----- capture ----- */

#define MAX_SENT 256
static char *sent[MAX_SENT];
static size_t sent_len[MAX_SENT];
static uint64_t sent_at[MAX_SENT];
static enum sip_transport sent_tp[MAX_SENT];
static int nsent;
static int send_error;   /* returned by the hook when non-zero */

static int capture(const struct txn_dest *d, const char *buf, size_t len)
{
    if (send_error)
        return send_error;
    if (nsent < MAX_SENT) {
        sent[nsent] = malloc(len + 1);
        memcpy(sent[nsent], buf, len);
        sent[nsent][len] = 0;
        sent_len[nsent] = len;
        sent_at[nsent] = timer_now();
        sent_tp[nsent] = d->transport;
        nsent++;
    }
    return 0;
}

static void clear_sent(void)
{
    for (int i = 0; i < nsent; i++)
        free(sent[i]);
    nsent = 0;
}

static const char *last_sent(void)
{
    return nsent ? sent[nsent - 1] : "";
}

static int starts(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* ----- messages ----- */

static struct sip_msg *parse(const char *s)
{
    struct sip_parse_error err;
    struct guard_buf g = guard_alloc(s, strlen(s));
    struct sip_msg *m = sip_msg_parse(g.data, strlen(s), SIP_PARSE_DATAGRAM, &err);
    guard_free(&g);
    if (!m)
        fprintf(stderr, "parse failed (%s):\n%s\n", err.reason ? err.reason : "?", s);
    return m;
}

static char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static char *fmt(const char *f, ...)
{
    static char bufs[8][4096];
    static int k;
    char *b = bufs[k++ & 7];
    va_list ap;
    va_start(ap, f);
    vsnprintf(b, 4096, f, ap);
    va_end(ap);
    return b;
}

/* A request as a UAC upstream sends it to us (server side). branch may be "" (RFC 2543). */
static struct sip_msg *req_in(const char *method, const char *branch, const char *sentby, unsigned cseq,
                              const char *to_tag, const char *from_tag)
{
    return parse(fmt("%s sip:bob@biloxi.example.com SIP/2.0\r\n"
                     "Via: SIP/2.0/UDP %s%s%s\r\n"
                     "Max-Forwards: 70\r\n"
                     "From: Alice <sip:alice@atlanta.example.com>;tag=%s\r\n"
                     "To: Bob <sip:bob@biloxi.example.com>%s%s\r\n"
                     "Call-ID: c-%s@atlanta.example.com\r\n"
                     "CSeq: %u %s\r\n"
                     "Content-Length: 0\r\n\r\n",
                     method, sentby, *branch ? ";branch=" : "", branch, from_tag,
                     *to_tag ? ";tag=" : "", to_tag, from_tag, cseq, method));
}

/* A response we send from a server transaction (bytes only). */
static const char *resp_out(int status, const char *method, unsigned cseq, const char *to_tag)
{
    return fmt("SIP/2.0 %d Whatever\r\n"
               "Via: SIP/2.0/UDP client.atlanta.example.com;branch=z9hG4bKup\r\n"
               "From: Alice <sip:alice@atlanta.example.com>;tag=ft\r\n"
               "To: Bob <sip:bob@biloxi.example.com>%s%s\r\n"
               "Call-ID: c-ft@atlanta.example.com\r\n"
               "CSeq: %u %s\r\n"
               "Content-Length: 0\r\n\r\n",
               status, *to_tag ? ";tag=" : "", to_tag, cseq, method);
}

/* The INVITE we send downstream (client side). */
static const char *invite_out(const char *branch)
{
    return fmt("INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
               "Via: SIP/2.0/UDP proxy.example.com:5060;branch=%s, SIP/2.0/UDP client.atlanta.example.com;branch=z9hG4bKup\r\n"
               "Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n"
               "Max-Forwards: 69\r\n"
               "From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n"
               "To: Bob\r\n <sip:bob@biloxi.example.com>\r\n"
               "Route: <sip:p3.example.com;lr>\r\n"
               "Call-ID: 3848276298220188511@atlanta.example.com\r\n"
               "CSeq: 31862 INVITE\r\n"
               "Contact: <sip:alice@client.atlanta.example.com>\r\n"
               "Content-Type: application/sdp\r\n"
               "Content-Length: 5\r\n\r\nv=0\r\n",
               branch);
}

static const char *options_out(const char *branch, const char *method)
{
    return fmt("%s sip:bob@biloxi.example.com SIP/2.0\r\n"
               "Via: SIP/2.0/UDP proxy.example.com:5060;branch=%s\r\n"
               "Max-Forwards: 70\r\n"
               "From: <sip:alice@atlanta.example.com>;tag=a1\r\n"
               "To: <sip:bob@biloxi.example.com>\r\n"
               "Call-ID: opt-%s\r\n"
               "CSeq: 7 %s\r\n"
               "Content-Length: 0\r\n\r\n",
               method, branch, branch, method);
}

/* A response to our request (client side). */
static struct sip_msg *resp_in(int status, const char *branch, const char *method, unsigned cseq, const char *to_tag)
{
    return parse(fmt("SIP/2.0 %d Whatever\r\n"
                     "Via: SIP/2.0/UDP proxy.example.com:5060;branch=%s\r\n"
                     "Via: SIP/2.0/UDP client.atlanta.example.com;branch=z9hG4bKup\r\n"
                     "From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n"
                     "To: Bob <sip:bob@biloxi.example.com>%s%s\r\n"
                     "Call-ID: 3848276298220188511@atlanta.example.com\r\n"
                     "CSeq: %u %s\r\n"
                     "Content-Length: 0\r\n\r\n",
                     status, branch, *to_tag ? ";tag=" : "", to_tag, cseq, method));
}

/* Receives a response built by resp_in; returns txn_client_receive's result. */
static int rx_resp(int status, const char *branch, const char *method, const char *to_tag)
{
    struct sip_msg *m = resp_in(status, branch, method, strcmp(method, "OPTIONS") == 0 ? 7 : 31862, to_tag);
    if (!m)
        return -1;
    int r = txn_client_receive(m);
    sip_msg_unref(m);
    return r;
}

/* Receives a request built by req_in. */
static enum txn_rx rx_req(const char *method, const char *branch, const char *sentby, unsigned cseq,
                          const char *to_tag, const char *from_tag, struct txn **out)
{
    struct sip_msg *m = req_in(method, branch, sentby, cseq, to_tag, from_tag);
    if (!m)
        return (enum txn_rx)-1;
    enum txn_rx r = txn_server_receive(m, out);
    sip_msg_unref(m);
    return r;
}

/* ----- the TU ----- */

struct tu {
    int responses, last_status;
    int fails;
    enum txn_fail why;
    int timer_c, no_ack, terminated;
    struct txn *t;
    int shutdown_on_response, shutdown_on_fail, cancel_on_timer_c, reply_on_no_ack, poke_on_terminated;
    int rc;
};

static void on_response(void *p, struct txn *ct, struct sip_msg *resp)
{
    struct tu *u = p;
    if (!u)
        return;
    CHECK(ct == u->t);
    u->responses++;
    u->last_status = resp->status;
    if (u->shutdown_on_response)
        txn_shutdown();
}

static void on_client_fail(void *p, struct txn *ct, enum txn_fail why)
{
    struct tu *u = p;
    if (!u)
        return;
    CHECK(ct == u->t);
    u->fails++;
    u->why = why;
    if (u->shutdown_on_fail)
        txn_shutdown();
}

static void on_timer_c(void *p, struct txn *ct)
{
    struct tu *u = p;
    if (!u)
        return;
    u->timer_c++;
    if (u->cancel_on_timer_c)
        u->rc = txn_client_cancel(ct, "SIP;cause=408", 13);
}

static void on_server_no_ack(void *p, struct txn *st)
{
    struct tu *u = p;
    if (!u)
        return;
    CHECK(st == u->t);
    u->no_ack++;
    if (u->reply_on_no_ack)
        u->rc = txn_server_reply(st, 500, "x", 1);
}

static void on_terminated(void *p, struct txn *t)
{
    struct tu *u = p;
    if (!u)
        return;
    CHECK(t == u->t);
    u->terminated++;
    if (u->poke_on_terminated) {
        CHECK(txn_state(t) == TXN_TERMINATED);
        (void)txn_status(t);
        (void)txn_branch(t);
        if (txn_kind(t) <= TXN_SERVER_NON_INVITE) {
            CHECK(txn_server_reply(t, 200, "x", 1) == -EALREADY);
            CHECK(txn_request(t) == NULL);
            txn_server_expire(t, 100); /* must not arm anything */
        } else {
            CHECK(txn_client_cancel(t, NULL, 0) == (txn_kind(t) == TXN_CLIENT_INVITE ? -EALREADY : -EINVAL));
        }
    }
}

static const struct txn_user_ops ops = { on_response, on_client_fail, on_timer_c, on_server_no_ack, on_terminated };

static const struct txn_dest udp = { .transport = SIP_TP_UDP };
static const struct txn_dest tcp = { .transport = SIP_TP_TCP };

static struct txn *server_new(const char *method, const char *branch, const struct txn_dest *d, struct tu *u,
                              struct sip_msg **keep)
{
    struct sip_msg *m = req_in(method, branch, "client.atlanta.example.com:5070", 1, "", "ft");
    struct txn *t = m ? txn_server_create(m, d, &ops, u) : NULL;
    if (u)
        u->t = t;
    if (keep)
        *keep = m;
    else if (m)
        sip_msg_unref(m);
    return t;
}

static int client_new(const char *buf, const struct txn_dest *d, uint32_t timer_C, struct tu *u, struct txn **out)
{
    struct txn_client_params p = { .buf = buf, .len = strlen(buf), .dest = *d, .timer_C_ms = timer_C };
    int r = txn_client_create(&p, &ops, u, out);
    if (u)
        u->t = r == 0 ? *out : NULL;
    return r;
}

static size_t live(void)
{
    return txn_count(TXN_SERVER_INVITE) + txn_count(TXN_SERVER_NON_INVITE) + txn_count(TXN_CLIENT_INVITE) +
           txn_count(TXN_CLIENT_NON_INVITE);
}

/* Ends a test: nothing may remain (neither transactions nor their timers). */
static void settle(void)
{
    txn_shutdown();
    CHECK(live() == 0);
    CHECK(timer_count() == 0);
    clear_sent();
    send_error = 0;
}

#define SENTBY "client.atlanta.example.com:5070"

/* ----- INVITE server (§17.2.1, RFC 6026) ----- */

static void test_invite_server(void)
{
    struct tu u = { 0 };
    struct sip_msg *req;
    struct txn *st = server_new("INVITE", "z9hG4bKs1", &udp, &u, &req), *o;
    CHECK(st != NULL);
    CHECK(txn_kind(st) == TXN_SERVER_INVITE && txn_state(st) == TXN_PROCEEDING);
    CHECK(txn_request(st) == req && req->refcount == 2);
    CHECK_STR(txn_branch(st), "z9hG4bKs1");
    CHECK(txn_dest(st)->transport == SIP_TP_UDP);
    CHECK(txn_user(st) == &u);
    CHECK(txn_count(TXN_SERVER_INVITE) == 1);
    CHECK(nsent == 0); /* nothing sent at creation */

    /* a retransmission before any response: absorbed, nothing to resend */
    uint64_t abs0 = stats.txn_retrans_absorbed;
    CHECK(rx_req("INVITE", "z9hG4bKs1", SENTBY, 1, "", "ft", &o) == TXN_RX_ABSORBED && o == st);
    CHECK(nsent == 0 && stats.txn_retrans_absorbed == abs0 + 1);
    /* same branch, other sent-by, other method, other branch: not this transaction */
    CHECK(rx_req("INVITE", "z9hG4bKs1", "elsewhere.example.com:5070", 1, "", "ft", &o) == TXN_RX_NEW && !o);
    CHECK(rx_req("INVITE", "z9hG4bKs1", "client.atlanta.example.com", 1, "", "ft", &o) == TXN_RX_NEW);
    CHECK(rx_req("OPTIONS", "z9hG4bKs1", SENTBY, 1, "", "ft", &o) == TXN_RX_NEW);
    CHECK(rx_req("CANCEL", "z9hG4bKs1", SENTBY, 1, "", "ft", &o) == TXN_RX_NEW);
    CHECK(rx_req("INVITE", "z9hG4bKs2", SENTBY, 1, "", "ft", &o) == TXN_RX_NEW);
    /* sent-by host compares case-insensitively */
    CHECK(rx_req("INVITE", "z9hG4bKs1", "CLIENT.atlanta.example.com:5070", 1, "", "ft", &o) == TXN_RX_ABSORBED);

    /* 100 then 180: sent; a retransmitted INVITE gets the latest provisional */
    const char *r100 = resp_out(100, "INVITE", 1, "");
    CHECK(txn_server_reply(st, 100, r100, strlen(r100)) == 0);
    CHECK(nsent == 1 && starts(last_sent(), "SIP/2.0 100"));
    CHECK(txn_state(st) == TXN_PROCEEDING && txn_status(st) == 100);
    CHECK(rx_req("INVITE", "z9hG4bKs1", SENTBY, 1, "", "ft", &o) == TXN_RX_ABSORBED);
    CHECK(nsent == 2 && starts(last_sent(), "SIP/2.0 100"));
    const char *r180 = resp_out(180, "INVITE", 1, "t1");
    CHECK(txn_server_reply(st, 180, r180, strlen(r180)) == 0);
    CHECK(rx_req("INVITE", "z9hG4bKs1", SENTBY, 1, "", "ft", &o) == TXN_RX_ABSORBED);
    CHECK(nsent == 4 && starts(last_sent(), "SIP/2.0 180"));
    CHECK(txn_request(st) == req);
    /* an ACK before any final: absorbed, no state change */
    CHECK(rx_req("ACK", "z9hG4bKs1", SENTBY, 1, "t1", "ft", &o) == TXN_RX_ABSORBED);
    CHECK(txn_state(st) == TXN_PROCEEDING);

    /* bad statuses */
    CHECK(txn_server_reply(st, 99, "x", 1) == -EINVAL);
    CHECK(txn_server_reply(st, 700, "x", 1) == -EINVAL);

    /* 486: Completed, request released, Timer G doubling up to T2 */
    clear_sent();
    uint64_t t0 = timer_now();
    uint64_t rt0 = stats.txn_retransmits;
    const char *r486 = resp_out(486, "INVITE", 1, "t1");
    CHECK(txn_server_reply(st, 486, r486, strlen(r486)) == 0);
    CHECK(txn_state(st) == TXN_COMPLETED && txn_status(st) == 486);
    CHECK(txn_request(st) == NULL && req->refcount == 1);
    CHECK(txn_server_reply(st, 200, "x", 1) == -EALREADY);
    CHECK(txn_server_reply(st, 487, "x", 1) == -EALREADY);
    timer_advance(11500);
    /* sent at 0, then G: 500, 1500, 3500, 7500, 11500 */
    CHECK(nsent == 6);
    static const uint64_t g[] = { 0, 500, 1500, 3500, 7500, 11500 };
    for (int i = 0; i < 6 && i < nsent; i++) {
        CHECK_MSG(sent_at[i] == t0 + g[i], "G %d at %llu", i, (unsigned long long)(sent_at[i] - t0));
        CHECK(strcmp(sent[i], r486) == 0);
    }
    CHECK(stats.txn_retransmits == rt0 + 5);
    /* a retransmitted INVITE gets the final again */
    CHECK(rx_req("INVITE", "z9hG4bKs1", SENTBY, 1, "", "ft", &o) == TXN_RX_ABSORBED && o == st);
    CHECK(nsent == 7 && strcmp(last_sent(), r486) == 0);
    /* the ACK: Confirmed, Timer G stops, Timer I (T4) runs */
    CHECK(rx_req("ACK", "z9hG4bKs1", SENTBY, 1, "t1", "ft", &o) == TXN_RX_ABSORBED && o == st);
    CHECK(txn_state(st) == TXN_CONFIRMED);
    abs0 = stats.txn_retrans_absorbed;
    CHECK(rx_req("ACK", "z9hG4bKs1", SENTBY, 1, "t1", "ft", &o) == TXN_RX_ABSORBED);
    CHECK(stats.txn_retrans_absorbed == abs0 + 1);
    CHECK(rx_req("INVITE", "z9hG4bKs1", SENTBY, 1, "", "ft", &o) == TXN_RX_ABSORBED);
    CHECK(nsent == 7); /* Confirmed: absorbed silently */
    timer_advance(4999);
    CHECK(nsent == 7 && txn_state(st) == TXN_CONFIRMED && u.terminated == 0);
    timer_advance(1);
    CHECK(u.terminated == 1 && txn_count(TXN_SERVER_INVITE) == 0);
    CHECK(rx_req("INVITE", "z9hG4bKs1", SENTBY, 1, "", "ft", &o) == TXN_RX_NEW);
    sip_msg_unref(req);
    settle();

    /* Timer H: no ACK; Timer G keeps going until then; on_server_no_ack, then gone */
    struct tu h = { .reply_on_no_ack = 1 };
    st = server_new("INVITE", "z9hG4bKs3", &udp, &h, NULL);
    const char *r500 = resp_out(500, "INVITE", 1, "t3");
    uint64_t noack0 = stats.txn_no_ack;
    t0 = timer_now();
    CHECK(txn_server_reply(st, 500, r500, strlen(r500)) == 0);
    timer_advance(31999);
    CHECK(h.no_ack == 0 && txn_state(st) == TXN_COMPLETED);
    CHECK(nsent == 11); /* the final + G at 0.5 1.5 3.5 7.5 11.5 15.5 19.5 23.5 27.5 31.5 s */
    CHECK(sent_at[10] == t0 + 31500);
    timer_advance(1);
    CHECK(h.no_ack == 1 && h.terminated == 1 && h.rc == -EALREADY);
    CHECK(stats.txn_no_ack == noack0 + 1);
    CHECK(nsent == 11);
    settle();

    /* 2xx: Accepted (RFC 6026), later 2xx sent too, no retransmission by us, INVITE
     * retransmissions absorbed silently, ACK passed to the TU, Timer L */
    struct tu a = { 0 };
    st = server_new("INVITE", "z9hG4bKs4", &udp, &a, &req);
    const char *r200 = resp_out(200, "INVITE", 1, "t4");
    CHECK(txn_server_reply(st, 200, r200, strlen(r200)) == 0);
    CHECK(txn_state(st) == TXN_ACCEPTED && txn_request(st) == NULL && req->refcount == 1);
    const char *r200b = resp_out(200, "INVITE", 1, "t4b");
    CHECK(txn_server_reply(st, 200, r200b, strlen(r200b)) == 0);
    CHECK(nsent == 2 && strcmp(last_sent(), r200b) == 0);
    CHECK(txn_server_reply(st, 486, r486, strlen(r486)) == -EALREADY);
    CHECK(txn_server_reply(st, 180, r180, strlen(r180)) == -EALREADY);
    CHECK(rx_req("INVITE", "z9hG4bKs4", SENTBY, 1, "", "ft", &o) == TXN_RX_ABSORBED && o == st);
    CHECK(nsent == 2);
    CHECK(rx_req("ACK", "z9hG4bKs4", SENTBY, 1, "t4", "ft", &o) == TXN_RX_ACK_ACCEPTED && o == st);
    timer_advance(20000);
    CHECK(nsent == 2 && txn_state(st) == TXN_ACCEPTED);
    timer_advance(11999);
    CHECK(a.terminated == 0);
    timer_advance(1);
    CHECK(a.terminated == 1);
    sip_msg_unref(req);
    settle();

    /* TCP: no Timer G; Timer I is 0 */
    struct tu c = { 0 };
    st = server_new("INVITE", "z9hG4bKs5", &tcp, &c, NULL);
    CHECK(txn_server_reply(st, 486, r486, strlen(r486)) == 0);
    timer_advance(20000);
    CHECK(nsent == 1 && sent_tp[0] == SIP_TP_TCP);
    CHECK(rx_req("ACK", "z9hG4bKs5", SENTBY, 1, "t1", "ft", &o) == TXN_RX_ABSORBED && o == st);
    CHECK(txn_state(st) == TXN_CONFIRMED && c.terminated == 0);
    timer_advance(0);
    CHECK(c.terminated == 1);
    settle();

    /* TCP, no ACK: Timer H still applies (64*T1) */
    struct tu d = { 0 };
    st = server_new("INVITE", "z9hG4bKs6", &tcp, &d, NULL);
    CHECK(txn_server_reply(st, 603, r486, strlen(r486)) == 0);
    timer_advance(32000);
    CHECK(d.no_ack == 1 && d.terminated == 1 && nsent == 1);
    settle();

    /* a send failure: returned, counted, the state machine still moves */
    struct tu e = { 0 };
    st = server_new("INVITE", "z9hG4bKs7", &udp, &e, NULL);
    uint64_t se0 = stats.txn_send_errors;
    send_error = -EPERM;
    CHECK(txn_server_reply(st, 486, r486, strlen(r486)) == -EPERM);
    CHECK(txn_state(st) == TXN_COMPLETED && stats.txn_send_errors == se0 + 1);
    timer_advance(500); /* Timer G retries; fails again, counted */
    CHECK(stats.txn_send_errors == se0 + 2);
    send_error = 0;
    timer_advance(1000);
    CHECK(nsent == 1 && strcmp(last_sent(), r486) == 0);
    settle();
}

/* ----- non-INVITE server (§17.2.2) ----- */

static void test_non_invite_server(void)
{
    struct tu u = { 0 };
    struct sip_msg *req;
    struct txn *st = server_new("OPTIONS", "z9hG4bKn1", &udp, &u, &req), *o;
    CHECK(st && txn_kind(st) == TXN_SERVER_NON_INVITE && txn_state(st) == TXN_TRYING);
    CHECK(txn_count(TXN_SERVER_NON_INVITE) == 1);
    /* Trying: a retransmission is absorbed with nothing to send */
    CHECK(rx_req("OPTIONS", "z9hG4bKn1", SENTBY, 1, "", "ft", &o) == TXN_RX_ABSORBED && o == st);
    CHECK(nsent == 0);
    /* an ACK never matches a non-INVITE transaction */
    CHECK(rx_req("ACK", "z9hG4bKn1", SENTBY, 1, "", "ft", &o) == TXN_RX_NEW);
    /* Proceeding resends the provisional */
    const char *r100 = resp_out(100, "OPTIONS", 1, "");
    CHECK(txn_server_reply(st, 100, r100, strlen(r100)) == 0);
    CHECK(txn_state(st) == TXN_PROCEEDING && txn_request(st) == req);
    CHECK(rx_req("OPTIONS", "z9hG4bKn1", SENTBY, 1, "", "ft", &o) == TXN_RX_ABSORBED);
    CHECK(nsent == 2 && strcmp(sent[1], r100) == 0);
    /* Completed resends the final; Timer J = 64*T1 over UDP */
    const char *r200 = resp_out(200, "OPTIONS", 1, "n1");
    CHECK(txn_server_reply(st, 200, r200, strlen(r200)) == 0);
    CHECK(txn_state(st) == TXN_COMPLETED && txn_status(st) == 200 && txn_request(st) == NULL);
    CHECK(req->refcount == 1);
    CHECK(txn_server_reply(st, 200, r200, strlen(r200)) == -EALREADY);
    CHECK(txn_server_reply(st, 180, r100, strlen(r100)) == -EALREADY);
    CHECK(rx_req("OPTIONS", "z9hG4bKn1", SENTBY, 1, "", "ft", &o) == TXN_RX_ABSORBED);
    CHECK(nsent == 4 && strcmp(sent[3], r200) == 0);
    timer_advance(31999);
    CHECK(u.terminated == 0 && nsent == 4); /* no retransmission of a non-INVITE final */
    timer_advance(1);
    CHECK(u.terminated == 1 && txn_count(TXN_SERVER_NON_INVITE) == 0);
    sip_msg_unref(req);
    settle();

    /* TCP: Timer J is 0; a final straight from Trying */
    struct tu v = { 0 };
    st = server_new("REGISTER", "z9hG4bKn2", &tcp, &v, NULL);
    const char *r4 = resp_out(401, "REGISTER", 1, "n2");
    CHECK(txn_server_reply(st, 401, r4, strlen(r4)) == 0);
    CHECK(txn_state(st) == TXN_COMPLETED && v.terminated == 0);
    timer_advance(0);
    CHECK(v.terminated == 1);
    settle();

    /* an unknown method matches by its name */
    struct tu w = { 0 };
    st = server_new("FOO", "z9hG4bKn3", &udp, &w, NULL);
    CHECK(st != NULL);
    CHECK(rx_req("FOO", "z9hG4bKn3", SENTBY, 1, "", "ft", &o) == TXN_RX_ABSORBED && o == st);
    CHECK(rx_req("BAR", "z9hG4bKn3", SENTBY, 1, "", "ft", &o) == TXN_RX_NEW);
    /* an ACK can never create one */
    struct sip_msg *ack = req_in("ACK", "z9hG4bKn4", SENTBY, 1, "", "ft");
    CHECK(txn_server_create(ack, &udp, &ops, &w) == NULL);
    sip_msg_unref(ack);
    settle();
    CHECK(w.terminated == 1);
}

/* ----- CANCEL on the server side (§9.2) and txn_server_expire ----- */

static void test_server_cancel_and_expire(void)
{
    struct tu ui = { 0 }, uc = { 0 };
    struct txn *inv = server_new("INVITE", "z9hG4bKc1", &udp, &ui, NULL), *o;
    /* the CANCEL is its own transaction; it finds its INVITE */
    struct sip_msg *cancel = req_in("CANCEL", "z9hG4bKc1", SENTBY, 1, "", "ft");
    CHECK(txn_server_receive(cancel, &o) == TXN_RX_NEW && o == NULL);
    CHECK(txn_server_find_invite(cancel) == inv);
    struct txn *cst = txn_server_create(cancel, &udp, &ops, &uc);
    uc.t = cst;
    CHECK(cst && txn_kind(cst) == TXN_SERVER_NON_INVITE);
    /* its retransmission matches the CANCEL transaction, not the INVITE */
    CHECK(txn_server_receive(cancel, &o) == TXN_RX_ABSORBED && o == cst);
    /* a retransmitted INVITE still matches the INVITE */
    CHECK(rx_req("INVITE", "z9hG4bKc1", SENTBY, 1, "", "ft", &o) == TXN_RX_ABSORBED && o == inv);
    /* other branch or other sent-by: no INVITE */
    struct sip_msg *c2 = req_in("CANCEL", "z9hG4bKc2", SENTBY, 1, "", "ft");
    CHECK(txn_server_find_invite(c2) == NULL);
    sip_msg_unref(c2);
    c2 = req_in("CANCEL", "z9hG4bKc1", "other.example.com", 1, "", "ft");
    CHECK(txn_server_find_invite(c2) == NULL);
    sip_msg_unref(c2);
    /* still found once the INVITE is completed, not once it is gone */
    const char *r487 = resp_out(487, "INVITE", 1, "c1");
    CHECK(txn_server_reply(inv, 487, r487, strlen(r487)) == 0);
    CHECK(txn_server_find_invite(cancel) == inv);
    timer_advance(32000);
    CHECK(ui.terminated == 1 && ui.no_ack == 1);
    CHECK(txn_server_find_invite(cancel) == NULL);
    sip_msg_unref(cancel);
    settle();
    CHECK(uc.terminated == 1);

    /* txn_server_expire: nobody answers, the transaction goes (counted) */
    struct tu e1 = { 0 }, e2 = { 0 }, e3 = { 0 };
    struct txn *s1 = server_new("OPTIONS", "z9hG4bKe1", &udp, &e1, NULL);
    struct txn *s2 = server_new("INVITE", "z9hG4bKe2", &udp, &e2, NULL);
    struct txn *s3 = server_new("MESSAGE", "z9hG4bKe3", &udp, &e3, NULL);
    uint64_t un0 = stats.txn_unanswered;
    txn_server_expire(s1, 1000);
    txn_server_expire(s2, 1000);
    txn_server_expire(s3, 1000);
    txn_server_expire(s3, 0); /* disarmed */
    const char *r100 = resp_out(100, "INVITE", 1, "");
    CHECK(txn_server_reply(s2, 100, r100, strlen(r100)) == 0); /* a provisional does not stop it */
    timer_advance(999);
    CHECK(e1.terminated == 0 && e2.terminated == 0);
    timer_advance(1);
    CHECK(e1.terminated == 1 && e2.terminated == 1 && e3.terminated == 0);
    CHECK(stats.txn_unanswered == un0 + 2);
    /* answered in time: not expired */
    txn_server_expire(s3, 500);
    const char *r200 = resp_out(200, "MESSAGE", 1, "e3");
    CHECK(txn_server_reply(s3, 200, r200, strlen(r200)) == 0);
    timer_advance(600);
    CHECK(e3.terminated == 0 && stats.txn_unanswered == un0 + 2);
    settle();
    CHECK(e3.terminated == 1);
}

/* ----- RFC 2543 requests (no magic cookie), §17.2.3 ----- */

static void test_rfc2543(void)
{
    struct tu u = { 0 };
    struct txn *o;
    struct sip_msg *inv = req_in("INVITE", "", SENTBY, 5, "", "f2543");
    struct txn *st = txn_server_create(inv, &udp, &ops, &u);
    u.t = st;
    CHECK(st != NULL);
    CHECK(txn_branch(st).len == 0);
    /* the same INVITE again: a retransmission */
    CHECK(rx_req("INVITE", "", SENTBY, 5, "", "f2543", &o) == TXN_RX_ABSORBED && o == st);
    /* any of the fields different: another transaction */
    CHECK(rx_req("INVITE", "", SENTBY, 6, "", "f2543", &o) == TXN_RX_NEW);
    CHECK(rx_req("INVITE", "", "other.example.com:5070", 5, "", "f2543", &o) == TXN_RX_NEW);
    CHECK(rx_req("INVITE", "", SENTBY, 5, "x", "f2543", &o) == TXN_RX_NEW);
    /* same Call-ID (derived from the From tag in req_in) but another From tag */
    struct sip_msg *m = parse("INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
                              "Via: SIP/2.0/UDP " SENTBY "\r\n"
                              "From: Alice <sip:alice@atlanta.example.com>;tag=zzz\r\n"
                              "To: Bob <sip:bob@biloxi.example.com>\r\n"
                              "Call-ID: c-f2543@atlanta.example.com\r\n"
                              "CSeq: 5 INVITE\r\n\r\n");
    CHECK(m && txn_server_receive(m, &o) == TXN_RX_NEW);
    sip_msg_unref(m);
    /* other R-URI */
    m = parse("INVITE sip:carol@biloxi.example.com SIP/2.0\r\n"
              "Via: SIP/2.0/UDP " SENTBY "\r\n"
              "From: Alice <sip:alice@atlanta.example.com>;tag=f2543\r\n"
              "To: Bob <sip:bob@biloxi.example.com>\r\n"
              "Call-ID: c-f2543@atlanta.example.com\r\n"
              "CSeq: 5 INVITE\r\n\r\n");
    CHECK(m && txn_server_receive(m, &o) == TXN_RX_NEW);
    sip_msg_unref(m);
    /* a cookie request with the same fields does not match a 2543 transaction */
    CHECK(rx_req("INVITE", "z9hG4bKq", SENTBY, 5, "", "f2543", &o) == TXN_RX_NEW);

    /* the CANCEL: its INVITE by the 2543 fields; it is not a retransmission of it */
    struct sip_msg *cancel = req_in("CANCEL", "", SENTBY, 5, "", "f2543");
    CHECK(txn_server_find_invite(cancel) == st);
    CHECK(txn_server_receive(cancel, &o) == TXN_RX_NEW);
    sip_msg_unref(cancel);

    /* an ACK before any final matches nothing (no To tag of ours yet) */
    CHECK(rx_req("ACK", "", SENTBY, 5, "tt", "f2543", &o) == TXN_RX_NEW);
    /* 404 with To tag tt: the ACK with that tag is ours, another tag is not */
    const char *r404 = resp_out(404, "INVITE", 5, "tt");
    CHECK(txn_server_reply(st, 404, r404, strlen(r404)) == 0);
    CHECK(rx_req("ACK", "", SENTBY, 5, "other", "f2543", &o) == TXN_RX_NEW);
    CHECK(txn_state(st) == TXN_COMPLETED);
    CHECK(rx_req("INVITE", "", SENTBY, 5, "", "f2543", &o) == TXN_RX_ABSORBED);
    CHECK(nsent == 2 && strcmp(last_sent(), r404) == 0);
    CHECK(rx_req("ACK", "", SENTBY, 5, "tt", "f2543", &o) == TXN_RX_ABSORBED && o == st);
    CHECK(txn_state(st) == TXN_CONFIRMED);
    settle();
    CHECK(u.terminated == 1);
    sip_msg_unref(inv);

    /* 2xx: the ACK with our tag goes to the TU (Accepted) */
    struct tu v = { 0 };
    inv = req_in("INVITE", "", SENTBY, 9, "", "g2543");
    st = txn_server_create(inv, &udp, &ops, &v);
    v.t = st;
    sip_msg_unref(inv);
    const char *r200 = resp_out(200, "INVITE", 9, "ok");
    CHECK(txn_server_reply(st, 200, r200, strlen(r200)) == 0);
    CHECK(rx_req("ACK", "", SENTBY, 9, "ok", "g2543", &o) == TXN_RX_ACK_ACCEPTED && o == st);
    /* a non-INVITE 2543 transaction: retransmission by the same fields */
    struct tu w = { 0 };
    struct sip_msg *bye = req_in("BYE", "", SENTBY, 10, "ok", "g2543");
    struct txn *bt = txn_server_create(bye, &udp, &ops, &w);
    w.t = bt;
    sip_msg_unref(bye);
    CHECK(rx_req("BYE", "", SENTBY, 10, "ok", "g2543", &o) == TXN_RX_ABSORBED && o == bt);
    CHECK(rx_req("BYE", "", SENTBY, 10, "", "g2543", &o) == TXN_RX_NEW);
    settle();
}

/* ----- INVITE client (§17.1.1, RFC 6026 §8.4, Timer C §16.6/§16.7) ----- */

static const char *expected_ack(const char *branch, const char *to_tag)
{
    return fmt("ACK sip:bob@biloxi.example.com SIP/2.0\r\n"
               "Via: SIP/2.0/UDP proxy.example.com:5060;branch=%s\r\n"
               "Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n"
               "Route: <sip:p3.example.com;lr>\r\n"
               "Max-Forwards: 70\r\n"
               "From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n"
               "To: Bob <sip:bob@biloxi.example.com>;tag=%s\r\n"
               "Call-ID: 3848276298220188511@atlanta.example.com\r\n"
               "CSeq: 31862 ACK\r\n"
               "Content-Length: 0\r\n\r\n",
               branch, to_tag);
}

static void test_invite_client(void)
{
    struct tu u = { 0 };
    struct txn *ct;
    const char *inv = invite_out("z9hG4bKi1");
    char invcopy[4096];
    snprintf(invcopy, sizeof(invcopy), "%s", inv);
    uint64_t t0 = timer_now();
    CHECK(client_new(invcopy, &udp, 0, &u, &ct) == 0);
    CHECK(txn_kind(ct) == TXN_CLIENT_INVITE && txn_state(ct) == TXN_CALLING);
    CHECK(txn_status(ct) == 0 && txn_request(ct) == NULL);
    CHECK_STR(txn_branch(ct), "z9hG4bKi1");
    CHECK(nsent == 1 && strcmp(sent[0], invcopy) == 0);
    /* Timer A: 500, 1500, 3500, 7500, 15500, 31500; Timer B at 32 s */
    uint64_t to0 = stats.txn_timeouts;
    timer_advance(31999);
    static const uint64_t a[] = { 0, 500, 1500, 3500, 7500, 15500, 31500 };
    CHECK(nsent == 7);
    for (int i = 0; i < 7 && i < nsent; i++) {
        CHECK_MSG(sent_at[i] == t0 + a[i], "A %d at %llu", i, (unsigned long long)(sent_at[i] - t0));
        CHECK(strcmp(sent[i], invcopy) == 0);
    }
    CHECK(u.fails == 0);
    timer_advance(1);
    CHECK(u.fails == 1 && u.why == TXN_FAIL_TIMEOUT && u.terminated == 1);
    CHECK(stats.txn_timeouts == to0 + 1 && txn_count(TXN_CLIENT_INVITE) == 0);
    CHECK(nsent == 7); /* nothing sent on Timer B (no 408 from the transaction layer) */
    CHECK(rx_resp(180, "z9hG4bKi1", "INVITE", "x") == 0);
    settle();

    /* profile Timer B; 1xx: Proceeding, retransmissions stop, no Timer B; every 1xx to the TU */
    struct tu p = { 0 };
    struct txn_client_params prm = { .buf = invcopy, .len = strlen(invcopy), .dest = udp, .timer_B_ms = 4000 };
    CHECK(txn_client_create(&prm, &ops, &p, &ct) == 0);
    p.t = ct;
    timer_advance(600);
    CHECK(nsent == 2);
    CHECK(rx_resp(100, "z9hG4bKi1", "INVITE", "") == 1);
    CHECK(txn_state(ct) == TXN_PROCEEDING && p.responses == 1 && p.last_status == 100);
    CHECK(rx_resp(183, "z9hG4bKi1", "INVITE", "x") == 1 && p.responses == 2);
    CHECK(rx_resp(180, "z9hG4bKi1", "INVITE", "x") == 1 && p.responses == 3);
    timer_advance(60000);
    CHECK(nsent == 2 && p.fails == 0 && txn_state(ct) == TXN_PROCEEDING);
    /* a CANCEL's response or another branch does not match */
    CHECK(rx_resp(200, "z9hG4bKi1", "CANCEL", "") == 0);
    CHECK(rx_resp(200, "z9hG4bKi9", "INVITE", "") == 0);
    CHECK(p.responses == 3);
    /* 486: the ACK (exact bytes), Completed, the TU sees it once */
    CHECK(rx_resp(486, "z9hG4bKi1", "INVITE", "8321234356") == 1);
    CHECK(txn_state(ct) == TXN_COMPLETED && txn_status(ct) == 486);
    CHECK(p.responses == 4 && p.last_status == 486);
    CHECK(nsent == 3);
    const char *ack = expected_ack("z9hG4bKi1", "8321234356");
    CHECK_MSG(strcmp(last_sent(), ack) == 0, "ACK:\n%s\nwant:\n%s", last_sent(), ack);
    struct sip_msg *am = parse(last_sent());
    CHECK(am && am->method == SIP_METHOD_ACK && am->cseq == 31862 && am->cseq_method == SIP_METHOD_ACK);
    if (am)
        sip_msg_unref(am);
    /* a retransmitted 486: ACKed again, absorbed */
    uint64_t ra0 = stats.txn_resp_retrans_absorbed;
    CHECK(rx_resp(486, "z9hG4bKi1", "INVITE", "8321234356") == 1);
    CHECK(p.responses == 4 && nsent == 4 && strcmp(last_sent(), ack) == 0);
    CHECK(stats.txn_resp_retrans_absorbed == ra0 + 1);
    CHECK(rx_resp(180, "z9hG4bKi1", "INVITE", "x") == 1 && p.responses == 4);
    CHECK(txn_client_cancel(ct, NULL, 0) == -EALREADY);
    /* Timer D: 32 s over UDP */
    timer_advance(31999);
    CHECK(p.terminated == 0);
    timer_advance(1);
    CHECK(p.terminated == 1);
    CHECK(rx_resp(486, "z9hG4bKi1", "INVITE", "8321234356") == 0);
    settle();

    /* 2xx: Accepted, Timer M, every later 2xx to the TU, other responses absorbed */
    struct tu k = { 0 };
    CHECK(client_new(invcopy, &udp, 0, &k, &ct) == 0);
    CHECK(rx_resp(200, "z9hG4bKi1", "INVITE", "a") == 1);
    CHECK(txn_state(ct) == TXN_ACCEPTED && k.responses == 1 && txn_status(ct) == 200);
    CHECK(nsent == 1); /* no ACK from us for a 2xx */
    CHECK(rx_resp(200, "z9hG4bKi1", "INVITE", "a") == 1 && k.responses == 2);
    CHECK(rx_resp(200, "z9hG4bKi1", "INVITE", "b") == 1 && k.responses == 3);
    CHECK(rx_resp(180, "z9hG4bKi1", "INVITE", "c") == 1 && k.responses == 3);
    CHECK(rx_resp(486, "z9hG4bKi1", "INVITE", "c") == 1 && k.responses == 3 && nsent == 1);
    timer_advance(10000);
    CHECK(nsent == 1); /* no retransmissions */
    timer_advance(21999);
    CHECK(k.terminated == 0);
    timer_advance(1);
    CHECK(k.terminated == 1);
    settle();

    /* TCP: no Timer A; Timer D is 0 */
    struct tu r = { 0 };
    CHECK(client_new(invcopy, &tcp, 0, &r, &ct) == 0);
    timer_advance(10000);
    CHECK(nsent == 1 && sent_tp[0] == SIP_TP_TCP);
    CHECK(rx_resp(603, "z9hG4bKi1", "INVITE", "d") == 1);
    CHECK(nsent == 2 && starts(last_sent(), "ACK "));
    CHECK(txn_state(ct) == TXN_COMPLETED && r.terminated == 0);
    timer_advance(0);
    CHECK(r.terminated == 1);
    settle();

    /* Timer C: armed at creation, not reset by 100, reset by 180, fires once, the
     * transaction lives on */
    struct tu c = { 0 };
    CHECK(client_new(invcopy, &udp, 10000, &c, &ct) == 0);
    timer_advance(100);
    CHECK(rx_resp(100, "z9hG4bKi1", "INVITE", "") == 1);
    timer_advance(9899);
    CHECK(c.timer_c == 0);
    timer_advance(1);
    CHECK(c.timer_c == 1 && txn_state(ct) == TXN_PROCEEDING);
    CHECK(rx_resp(180, "z9hG4bKi1", "INVITE", "x") == 1); /* re-armed: 10 s from now */
    timer_advance(6000);
    CHECK(rx_resp(180, "z9hG4bKi1", "INVITE", "x") == 1); /* reset again */
    timer_advance(9999);
    CHECK(c.timer_c == 1);
    timer_advance(1);
    CHECK(c.timer_c == 2);
    settle();

    /* Timer C while Calling (C shorter than B): the TU cancels from it; the CANCEL is held
     * until a provisional */
    struct tu c2 = { .cancel_on_timer_c = 1 };
    CHECK(client_new(invcopy, &udp, 2000, &c2, &ct) == 0);
    timer_advance(2000);
    CHECK(c2.timer_c == 1 && c2.rc == 0 && txn_state(ct) == TXN_CALLING);
    CHECK(rx_resp(180, "z9hG4bKi1", "INVITE", "x") == 1);
    CHECK(starts(last_sent(), "CANCEL ") && strstr(last_sent(), "Reason: SIP;cause=408\r\n") != NULL);
    timer_advance(20000); /* cancelled: Timer C is over */
    CHECK(c2.timer_c == 1);
    settle();

    /* creation errors: nothing created, no callback */
    struct tu z = { 0 };
    uint64_t se0 = stats.txn_send_errors;
    send_error = -ENETUNREACH;
    CHECK(client_new(invcopy, &udp, 1000, &z, &ct) == -ENETUNREACH);
    send_error = 0;
    CHECK(stats.txn_send_errors == se0 + 1);
    CHECK(live() == 0 && timer_count() == 0);
    CHECK(client_new("garbage", &udp, 0, &z, &ct) == -EINVAL);
    CHECK(client_new(invite_out("nocookie"), &udp, 0, &z, &ct) == -EINVAL);
    CHECK(client_new(options_out("z9hG4bKack", "ACK"), &udp, 0, &z, &ct) == -EINVAL);
    struct txn_client_params bad = { .buf = NULL, .len = 0, .dest = udp };
    CHECK(txn_client_create(&bad, &ops, &z, &ct) == -EINVAL);
    /* a response is not a request */
    CHECK(client_new(resp_out(200, "INVITE", 1, "x"), &udp, 0, &z, &ct) == -EINVAL);
    CHECK(live() == 0 && nsent == 0);
    settle();
    CHECK(z.terminated == 0 && z.responses == 0 && z.fails == 0);

    /* a retransmission that cannot be sent: counted; a hard error ends the transaction
     * (§17.1.4), a transient one does not */
    struct tu f = { 0 };
    CHECK(client_new(invcopy, &udp, 0, &f, &ct) == 0);
    send_error = -ENOBUFS;
    timer_advance(500);
    CHECK(f.fails == 0 && txn_state(ct) == TXN_CALLING);
    send_error = -EHOSTUNREACH;
    timer_advance(1000);
    CHECK(f.fails == 1 && f.why == TXN_FAIL_TRANSPORT && f.terminated == 1);
    settle();

    /* odd responses match nothing and do not crash */
    struct sip_msg *m = parse("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h\r\nFrom: <sip:a@b>;tag=1\r\n"
                              "To: <sip:a@b>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n\r\n");
    CHECK(m && txn_client_receive(m) == 0);
    if (m)
        sip_msg_unref(m);
    CHECK(txn_client_receive(NULL) == 0);
    struct sip_msg *rq = req_in("INVITE", "z9hG4bKi1", SENTBY, 1, "", "ft");
    CHECK(txn_client_receive(rq) == 0);
    CHECK(txn_server_receive(NULL, NULL) == TXN_RX_NEW);
    sip_msg_unref(rq);
}

/* ----- non-INVITE client (§17.1.2, RFC 4320) ----- */

static void test_non_invite_client(void)
{
    struct tu u = { 0 };
    struct txn *ct;
    char req[2048];
    snprintf(req, sizeof(req), "%s", options_out("z9hG4bKo1", "OPTIONS"));
    uint64_t t0 = timer_now();
    CHECK(client_new(req, &udp, 0, &u, &ct) == 0);
    CHECK(txn_kind(ct) == TXN_CLIENT_NON_INVITE && txn_state(ct) == TXN_TRYING);
    /* Timer E: 500, 1500, 3500, 7500, then every T2 (4 s); Timer F at 32 s, no 408 */
    timer_advance(31999);
    static const uint64_t e[] = { 0, 500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500 };
    CHECK(nsent == 11);
    for (int i = 0; i < 11 && i < nsent; i++)
        CHECK_MSG(sent_at[i] == t0 + e[i], "E %d at %llu", i, (unsigned long long)(sent_at[i] - t0));
    CHECK(u.fails == 0);
    timer_advance(1);
    CHECK(u.fails == 1 && u.why == TXN_FAIL_TIMEOUT && u.terminated == 1 && u.responses == 0);
    CHECK(nsent == 11);
    settle();

    /* Proceeding: retransmissions go on, every T2 (RFC 4320 §4.2) */
    struct tu p = { 0 };
    t0 = timer_now();
    CHECK(client_new(req, &udp, 0, &p, &ct) == 0);
    timer_advance(600);
    CHECK(rx_resp(100, "z9hG4bKo1", "OPTIONS", "") == 1);
    CHECK(txn_state(ct) == TXN_PROCEEDING && p.responses == 1);
    timer_advance(13000 - 600);
    /* 0, 500, then 1500 (armed in Trying), then T2: 5500, 9500 */
    CHECK(nsent == 5);
    CHECK(nsent == 5 && sent_at[2] == t0 + 1500 && sent_at[3] == t0 + 5500 && sent_at[4] == t0 + 9500);
    CHECK(rx_resp(180, "z9hG4bKo1", "OPTIONS", "") == 1 && p.responses == 2);
    /* final: Completed, Timer K (T4), retransmissions of it absorbed */
    CHECK(rx_resp(404, "z9hG4bKo1", "OPTIONS", "t") == 1);
    CHECK(txn_state(ct) == TXN_COMPLETED && txn_status(ct) == 404 && p.responses == 3 && p.last_status == 404);
    uint64_t ra0 = stats.txn_resp_retrans_absorbed;
    CHECK(rx_resp(404, "z9hG4bKo1", "OPTIONS", "t") == 1 && p.responses == 3);
    CHECK(rx_resp(200, "z9hG4bKo1", "OPTIONS", "t") == 1 && p.responses == 3);
    CHECK(stats.txn_resp_retrans_absorbed == ra0 + 2);
    int n = nsent;
    timer_advance(4999);
    CHECK(p.terminated == 0 && nsent == n);
    timer_advance(1);
    CHECK(p.terminated == 1);
    CHECK(rx_resp(404, "z9hG4bKo1", "OPTIONS", "t") == 0);
    settle();

    /* a final straight from Trying; TCP: no Timer E, Timer K is 0, Timer F still applies */
    struct tu t = { 0 };
    CHECK(client_new(req, &tcp, 0, &t, &ct) == 0);
    timer_advance(20000);
    CHECK(nsent == 1);
    CHECK(rx_resp(200, "z9hG4bKo1", "OPTIONS", "t") == 1 && t.responses == 1);
    CHECK(txn_state(ct) == TXN_COMPLETED && t.terminated == 0);
    timer_advance(0);
    CHECK(t.terminated == 1);
    struct tu t2 = { 0 };
    struct txn_client_params prm = { .buf = req, .len = strlen(req), .dest = tcp, .timer_F_ms = 8000 };
    CHECK(txn_client_create(&prm, &ops, &t2, &ct) == 0);
    t2.t = ct;
    timer_advance(8000);
    CHECK(t2.fails == 1 && t2.why == TXN_FAIL_TIMEOUT && nsent == 2);
    /* not an INVITE: no CANCEL */
    struct tu t3 = { 0 };
    CHECK(client_new(req, &tcp, 0, &t3, &ct) == 0);
    CHECK(txn_client_cancel(ct, NULL, 0) == -EINVAL);
    settle();
}

/* ----- CANCEL (§9.1) ----- */

static const char *expected_cancel(const char *branch, const char *reason)
{
    return fmt("CANCEL sip:bob@biloxi.example.com SIP/2.0\r\n"
               "Via: SIP/2.0/UDP proxy.example.com:5060;branch=%s\r\n"
               "Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n"
               "Route: <sip:p3.example.com;lr>\r\n"
               "Max-Forwards: 70\r\n"
               "From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n"
               "To: Bob <sip:bob@biloxi.example.com>\r\n"
               "Call-ID: 3848276298220188511@atlanta.example.com\r\n"
               "CSeq: 31862 CANCEL\r\n"
               "%s%s%s"
               "Content-Length: 0\r\n\r\n",
               branch, reason ? "Reason: " : "", reason ? reason : "", reason ? "\r\n" : "");
}

static void test_cancel(void)
{
    char inv[4096];
    snprintf(inv, sizeof(inv), "%s", invite_out("z9hG4bKx1"));
    struct txn *ct;

    /* in Proceeding: sent at once, its own transaction; responses to it absorbed */
    struct tu u = { 0 };
    CHECK(client_new(inv, &udp, 0, &u, &ct) == 0);
    CHECK(rx_resp(180, "z9hG4bKx1", "INVITE", "b") == 1);
    CHECK(txn_client_cancel(ct, "SIP;cause=200;text=\"Call completed elsewhere\"", 45) == 0);
    CHECK(nsent == 2);
    const char *want = expected_cancel("z9hG4bKx1", "SIP;cause=200;text=\"Call completed elsewhere\"");
    CHECK_MSG(strcmp(last_sent(), want) == 0, "CANCEL:\n%s\nwant:\n%s", last_sent(), want);
    struct sip_msg *cm = parse(last_sent());
    CHECK(cm && cm->method == SIP_METHOD_CANCEL && cm->cseq == 31862);
    if (cm)
        sip_msg_unref(cm);
    CHECK(txn_count(TXN_CLIENT_NON_INVITE) == 1);
    CHECK(txn_client_cancel(ct, NULL, 0) == -EALREADY);
    /* the CANCEL is retransmitted (Timer E) until answered */
    timer_advance(500);
    CHECK(nsent == 3 && starts(last_sent(), "CANCEL "));
    CHECK(rx_resp(200, "z9hG4bKx1", "CANCEL", "b") == 1);
    CHECK(u.responses == 1); /* the TU never sees it */
    timer_advance(2000);
    CHECK(nsent == 3);
    /* the INVITE's 487: ACK, to the TU */
    CHECK(rx_resp(487, "z9hG4bKx1", "INVITE", "b") == 1);
    CHECK(u.responses == 2 && u.last_status == 487 && starts(last_sent(), "ACK "));
    CHECK(txn_state(ct) == TXN_COMPLETED);
    timer_advance(64000);
    CHECK(u.fails == 0 && u.terminated == 1 && live() == 0);
    settle();

    /* in Calling: held, sent on the first provisional (100 included) */
    struct tu h = { 0 };
    CHECK(client_new(inv, &udp, 0, &h, &ct) == 0);
    CHECK(txn_client_cancel(ct, NULL, 0) == 0);
    CHECK(nsent == 1 && txn_count(TXN_CLIENT_NON_INVITE) == 0);
    CHECK(txn_client_cancel(ct, NULL, 0) == -EALREADY);
    timer_advance(500); /* the INVITE is still retransmitted meanwhile */
    CHECK(nsent == 2 && starts(last_sent(), "INVITE "));
    CHECK(rx_resp(100, "z9hG4bKx1", "INVITE", "") == 1);
    CHECK(nsent == 3 && strcmp(last_sent(), expected_cancel("z9hG4bKx1", NULL)) == 0);
    CHECK(txn_count(TXN_CLIENT_NON_INVITE) == 1 && h.responses == 1);
    CHECK(rx_resp(180, "z9hG4bKx1", "INVITE", "") == 1 && nsent == 3); /* only once */
    settle();

    /* in Calling with a Reason, sent on 180 */
    struct tu r = { 0 };
    CHECK(client_new(inv, &udp, 0, &r, &ct) == 0);
    CHECK(txn_client_cancel(ct, "SIP;cause=480", 13) == 0);
    CHECK(rx_resp(180, "z9hG4bKx1", "INVITE", "b") == 1);
    CHECK(strcmp(last_sent(), expected_cancel("z9hG4bKx1", "SIP;cause=480")) == 0);
    settle();

    /* in Calling, a final first: the CANCEL is never sent */
    struct tu d = { 0 };
    CHECK(client_new(inv, &udp, 0, &d, &ct) == 0);
    CHECK(txn_client_cancel(ct, "SIP;cause=480", 13) == 0);
    CHECK(rx_resp(486, "z9hG4bKx1", "INVITE", "b") == 1);
    CHECK(d.responses == 1 && starts(last_sent(), "ACK "));
    timer_advance(40000);
    for (int i = 0; i < nsent; i++)
        CHECK(!starts(sent[i], "CANCEL"));
    CHECK(d.fails == 0 && d.terminated == 1);
    settle();

    /* a 2xx after our CANCEL: Accepted as usual, the guard is off */
    struct tu a = { 0 };
    CHECK(client_new(inv, &udp, 0, &a, &ct) == 0);
    CHECK(rx_resp(180, "z9hG4bKx1", "INVITE", "b") == 1);
    CHECK(txn_client_cancel(ct, NULL, 0) == 0);
    CHECK(rx_resp(200, "z9hG4bKx1", "INVITE", "b") == 1);
    CHECK(txn_state(ct) == TXN_ACCEPTED && a.responses == 2);
    CHECK(txn_client_cancel(ct, NULL, 0) == -EALREADY);
    timer_advance(40000);
    CHECK(a.fails == 0 && a.terminated == 1);
    settle();

    /* the 64*T1 guard: no final after our CANCEL, the INVITE transaction is destroyed; the
     * CANCEL's own timeout is ignored */
    struct tu g = { 0 };
    CHECK(client_new(inv, &udp, 0, &g, &ct) == 0);
    timer_advance(1000);
    CHECK(rx_resp(183, "z9hG4bKx1", "INVITE", "b") == 1);
    CHECK(txn_client_cancel(ct, NULL, 0) == 0);
    timer_advance(31999);
    CHECK(g.fails == 0);
    timer_advance(1);
    CHECK(g.fails == 1 && g.why == TXN_FAIL_CANCEL_TIMEOUT && g.terminated == 1);
    CHECK(live() == 0);
    settle();

    /* misuse */
    struct tu x = { 0 };
    CHECK(client_new(inv, &udp, 0, &x, &ct) == 0);
    CHECK(txn_client_cancel(ct, "a\r\nX-Injected: 1", 17) == -EINVAL);
    CHECK(txn_client_cancel(NULL, NULL, 0) == -EINVAL);
    struct txn *st = server_new("INVITE", "z9hG4bKx9", &udp, NULL, NULL);
    CHECK(txn_client_cancel(st, NULL, 0) == -EINVAL);
    CHECK(txn_server_reply(ct, 200, "x", 1) == -EINVAL);
    settle();
}

/* ----- callbacks that end their own transaction, and txn_shutdown ----- */

static void test_reentrancy(void)
{
    char inv[4096];
    snprintf(inv, sizeof(inv), "%s", invite_out("z9hG4bKr1"));
    struct txn *ct;

    /* on_response shuts everything down, its own transaction included */
    struct tu a = { .shutdown_on_response = 1, .poke_on_terminated = 1 }, b = { 0 };
    CHECK(client_new(inv, &udp, 0, &a, &ct) == 0);
    struct txn *st = server_new("INVITE", "z9hG4bKr2", &udp, &b, NULL);
    CHECK(st != NULL);
    CHECK(rx_resp(486, "z9hG4bKr1", "INVITE", "t") == 1);
    CHECK(a.responses == 1 && a.terminated == 1 && b.terminated == 1 && live() == 0);
    CHECK(timer_count() == 0);
    settle();

    /* on_client_fail (Timer B) shuts down: terminated once */
    struct tu f = { .shutdown_on_fail = 1, .poke_on_terminated = 1 };
    CHECK(client_new(inv, &tcp, 0, &f, &ct) == 0);
    timer_advance(32000);
    CHECK(f.fails == 1 && f.terminated == 1);
    settle();

    /* on_terminated pokes at its own transaction (server and client) */
    struct tu s = { .poke_on_terminated = 1 }, c = { .poke_on_terminated = 1 };
    st = server_new("OPTIONS", "z9hG4bKr3", &tcp, &s, NULL);
    const char *r200 = resp_out(200, "OPTIONS", 1, "x");
    CHECK(txn_server_reply(st, 200, r200, strlen(r200)) == 0);
    timer_advance(0);
    CHECK(s.terminated == 1);
    CHECK(client_new(inv, &udp, 0, &c, &ct) == 0);
    CHECK(rx_resp(200, "z9hG4bKr1", "INVITE", "x") == 1);
    timer_advance(32000);
    CHECK(c.terminated == 1);
    CHECK(timer_count() == 0);
    settle();

    /* txn_shutdown with live transactions of every kind and state: on_terminated for each,
     * nothing sent */
    struct tu k[8];
    memset(k, 0, sizeof(k));
    struct sip_msg *keep;
    st = server_new("INVITE", "z9hG4bKz1", &udp, &k[0], &keep);
    const char *r486 = resp_out(486, "INVITE", 1, "x");
    txn_server_reply(st, 486, r486, strlen(r486));
    server_new("INVITE", "z9hG4bKz2", &udp, &k[1], NULL);
    server_new("BYE", "z9hG4bKz3", &udp, &k[2], NULL);
    struct sip_msg *old = req_in("INVITE", "", SENTBY, 3, "", "zz");
    k[3].t = txn_server_create(old, &udp, &ops, &k[3]);
    sip_msg_unref(old);
    CHECK(client_new(inv, &udp, 5000, &k[4], &ct) == 0);
    CHECK(txn_client_cancel(ct, NULL, 0) == 0); /* held CANCEL with the guard */
    char opt[2048];
    snprintf(opt, sizeof(opt), "%s", options_out("z9hG4bKz5", "OPTIONS"));
    CHECK(client_new(opt, &udp, 0, &k[5], &ct) == 0);
    snprintf(inv, sizeof(inv), "%s", invite_out("z9hG4bKz6"));
    CHECK(client_new(inv, &udp, 0, &k[6], &ct) == 0);
    CHECK(rx_resp(180, "z9hG4bKz6", "INVITE", "x") == 1);
    CHECK(txn_client_cancel(ct, NULL, 0) == 0); /* a live CANCEL transaction */
    CHECK(live() == 8);
    CHECK(keep->refcount == 1);
    clear_sent();
    txn_shutdown();
    CHECK(nsent == 0 && live() == 0 && timer_count() == 0);
    for (int i = 0; i < 7; i++)
        CHECK_MSG(k[i].terminated == 1, "k[%d] terminated %d", i, k[i].terminated);
    CHECK(keep->refcount == 1);
    sip_msg_unref(keep);
    /* usable again afterwards */
    struct tu again = { 0 };
    CHECK(client_new(opt, &udp, 0, &again, &ct) == 0);
    settle();
    CHECK(again.terminated == 1);
}

/* ----- many transactions: the tables grow and keep matching ----- */

static void test_many(void)
{
    enum { N = 5000 };
    char br[64];
    static struct txn *ts[N];
    for (int i = 0; i < N; i++) {
        snprintf(br, sizeof(br), "z9hG4bKm%d", i);
        ts[i] = server_new(i & 1 ? "INVITE" : "OPTIONS", br, &udp, NULL, NULL);
    }
    CHECK(txn_count(TXN_SERVER_INVITE) + txn_count(TXN_SERVER_NON_INVITE) == N);
    int bad = 0;
    for (int i = 0; i < N; i++) {
        struct txn *o;
        snprintf(br, sizeof(br), "z9hG4bKm%d", i);
        if (rx_req(i & 1 ? "INVITE" : "OPTIONS", br, SENTBY, 1, "", "ft", &o) != TXN_RX_ABSORBED || o != ts[i])
            bad++;
    }
    CHECK(bad == 0);
    /* client side */
    char req[2048];
    int cbad = 0;
    for (int i = 0; i < N; i++) {
        struct txn *ct;
        snprintf(br, sizeof(br), "z9hG4bKcm%d", i);
        snprintf(req, sizeof(req), "%s", options_out(br, "OPTIONS"));
        if (client_new(req, &udp, 0, NULL, &ct) != 0)
            cbad++;
    }
    CHECK(cbad == 0 && txn_count(TXN_CLIENT_NON_INVITE) == N);
    for (int i = 0; i < N; i += 2) {
        snprintf(br, sizeof(br), "z9hG4bKcm%d", i);
        if (rx_resp(200, br, "OPTIONS", "t") != 1)
            cbad++;
    }
    CHECK(cbad == 0);
    timer_advance(5000); /* Timer K for half of them */
    CHECK(txn_count(TXN_CLIENT_NON_INVITE) == N / 2);
    settle();
}

static void test_branch(void)
{
    char a[TXN_BRANCH_MAX], b[TXN_BRANCH_MAX];
    size_t n = txn_branch_new(a, NULL, 0);
    CHECK(n == strlen(a) && n > 7 + 6 && strncmp(a, "z9hG4bK", 7) == 0);
    size_t m = txn_branch_new(b, NULL, 0);
    CHECK(m == strlen(b) && strcmp(a, b) != 0);
    CHECK(strncmp(a, b, 13) == 0); /* same process prefix */
    /* a token: alphanumerics only */
    int ok = 1;
    for (size_t i = 0; i < n; i++)
        if (!((a[i] >= 'a' && a[i] <= 'z') || (a[i] >= 'A' && a[i] <= 'Z') || (a[i] >= '0' && a[i] <= '9')))
            ok = 0;
    CHECK(ok);
    n = txn_branch_new(a, "4711abcd", 8);
    CHECK(n == strlen(a) && n > 9 && strcmp(a + n - 9, ".4711abcd") == 0);
    char longhash[200];
    memset(longhash, 'h', sizeof(longhash));
    n = txn_branch_new(a, longhash, sizeof(longhash));
    CHECK(n == TXN_BRANCH_MAX - 1 && strlen(a) == n);
    /* unique over many */
    enum { K = 20000 };
    char (*all)[TXN_BRANCH_MAX] = malloc(K * sizeof(*all));
    for (int i = 0; i < K; i++)
        txn_branch_new(all[i], NULL, 0);
    int dup = 0;
    for (int i = 1; i < K; i++)
        if (strcmp(all[i], all[i - 1]) == 0)
            dup++;
    CHECK(dup == 0);
    CHECK(strcmp(all[0], all[K - 1]) != 0);
    free(all);
}

static void test_timer_values(void)
{
    const struct txn_timer_values *v = txn_timer_values();
    CHECK(v->T1 == 500 && v->T2 == 4000 && v->T4 == 5000);
    struct txn_timer_values nv = { 100, 400, 1000 };
    txn_set_timer_values(&nv);
    /* Timer E with T1 = 100, T2 = 400: 100, 300, 700, 1100; F = 64*T1 = 6400 */
    struct tu u = { 0 };
    struct txn *ct;
    char req[2048];
    snprintf(req, sizeof(req), "%s", options_out("z9hG4bKtv", "OPTIONS"));
    uint64_t t0 = timer_now();
    CHECK(client_new(req, &udp, 0, &u, &ct) == 0);
    timer_advance(1100);
    CHECK(nsent == 5 && sent_at[1] == t0 + 100 && sent_at[2] == t0 + 300 && sent_at[3] == t0 + 700 &&
          sent_at[4] == t0 + 1100);
    timer_advance(5300);
    CHECK(u.fails == 1);
    settle();
    struct txn_timer_values zero = { 0, 0, 0 };
    txn_set_timer_values(&zero); /* refused */
    CHECK(txn_timer_values()->T1 == 100);
    struct txn_timer_values def = { 500, 4000, 5000 };
    txn_set_timer_values(&def);
}

int main(void)
{
    log_set_level(LOG_LVL_WARN); /* Timer H and friends log at info: keep the output readable */
    timer_use_virtual_clock(1000000);
    /* the default hook: nothing can be sent */
    struct txn *ct;
    struct txn_client_params p = { .buf = options_out("z9hG4bKd", "OPTIONS"), .dest = udp };
    p.len = strlen(p.buf);
    CHECK(txn_client_create(&p, &ops, NULL, &ct) == -ENOSYS);
    txn_set_send(capture);

    test_branch();
    test_invite_server();
    test_non_invite_server();
    test_server_cancel_and_expire();
    test_rfc2543();
    test_invite_client();
    test_non_invite_client();
    test_cancel();
    test_reentrancy();
    test_timer_values();
    test_many();

    txn_shutdown();
    timer_shutdown();
    sip_msg_cache_flush();
    clear_sent();
    TEST_DONE();
}
