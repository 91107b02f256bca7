/* The RFC 3261 §17 transaction layer: the four state machines (§17.1.1, §17.1.2, §17.2.1,
 * §17.2.2) with RFC 6026 (Accepted, Timers L and M) and RFC 4320 (no 408 for non-INVITE),
 * matching (§17.1.3, §17.2.3 with the RFC 2543 fallback), the hop-by-hop ACK (§17.1.1.3),
 * CANCEL (§9.1) and the proxy's Timer C (§16.6 step 11, §16.7 step 2). */
#include "txn.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "stats.h"
#include "timer.h"

#define COOKIE "z9hG4bK"
#define COOKIE_LEN 7
#define TIMER_D_UDP_MS 32000u

#define container_of(p, type, member) ((type *)(void *)((char *)(p) - offsetof(type, member)))

enum {
    F_RFC2543 = 0x01,     /* server: matched by the RFC 2543 fields, not a branch */
    F_CANCELLED = 0x02,   /* client INVITE: txn_client_cancel was called (t_aux is the guard) */
    F_CANCEL_HELD = 0x04, /* client INVITE: CANCEL waits for the first provisional */
};

/* RFC 2543 key fields of a server transaction (ex[] entries). */
enum { EX_RURI = 0, EX_TO_TAG, EX_FROM_TAG, EX_CALL_ID, EX_VIA_TP, EX_VIA_PARAMS, EX__COUNT };

/* A client request kept while it may be retransmitted or be the model of an ACK or a
 * CANCEL (one allocation: the wire bytes, then for an INVITE the pieces those need). */
struct creq {
    uint32_t len;
    uint32_t cseq;
    struct sip_str ruri, via, routes, from, to, call_id; /* slices of bytes[] (INVITE) */
    char bytes[];
};

struct server_part {
    struct sip_msg *req;        /* referenced while Trying/Proceeding */
    char *resp;                 /* last response sent (for retransmissions) */
    uint32_t resp_len, resp_cap;
    char *to_tag;               /* RFC 2543 INVITE: To tag of our final (ACK matching) */
    uint32_t to_tag_len;
};

struct client_part {
    struct creq *req;
    char *ack;                  /* INVITE Completed: the ACK of the non-2xx */
    uint32_t ack_len;
    uint32_t timer_F_ms;        /* for our CANCEL */
    uint32_t timer_C_ms;
    char *reason;               /* Reason value of a held CANCEL */
    uint32_t reason_len;
};

struct txn {
    struct txn *hnext, **hpprev; /* hash chain */
    uint64_t hash;
    const struct txn_user_ops *ops;
    void *tu;
    struct timer t_retx;        /* A, E, G */
    struct timer t_main;        /* B, D, F, H, I, J, K, L, M */
    struct timer t_aux;         /* client INVITE: C, then the CANCEL guard; server: expire */
    uint32_t retx_ms;           /* next retransmission interval */
    int status;
    uint8_t kind, state, flags;
    uint16_t busy;              /* callbacks running for it: the free waits */
    uint16_t port;              /* server: top Via sent-by port (0 absent) */
    enum sip_method method;
    uint32_t cseq;              /* server RFC 2543 */
    struct sip_str branch, host, mstr; /* into the key bytes after ex[] */
    union {
        struct server_part s;
        struct client_part c;
    } u;
    struct txn_dest dest;
    uint32_t nex;
    struct sip_str ex[];        /* RFC 2543 fields, then the key bytes */
};

struct htab {
    struct txn **b;
    size_t mask;
    size_t n;
};

static struct htab srv_tab, cli_tab;
static size_t live[4];
static int shutting_down;

static int send_default(const struct txn_dest *d, const char *buf, size_t len)
{
    (void)d;
    (void)buf;
    (void)len;
    return -ENOSYS;
}

static txn_send_fn send_fn = send_default;
static struct txn_timer_values tv = { 500, 4000, 5000 };

void txn_set_send(txn_send_fn fn)
{
    send_fn = fn ? fn : send_default;
}

void txn_set_timer_values(const struct txn_timer_values *v)
{
    if (v && v->T1 && v->T2 && v->T4)
        tv = *v;
}

const struct txn_timer_values *txn_timer_values(void)
{
    return &tv;
}

static inline uint64_t t64(void) { return 64ull * tv.T1; }

/* ----- randomness: hash keys (network keys: flooding resistance) and branch prefix ----- */

static uint64_t hk0, hk1;
static char branch_prefix[8];
static int seeded;

static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void seed(void)
{
    static const char b32[] = "abcdefghijklmnopqrstuvwxyz234567";
    uint64_t r[3];
    size_t got = 0;
    while (got < sizeof(r)) {
        ssize_t n = getrandom((char *)r + got, sizeof(r) - got, 0);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            break;
        }
        got += (size_t)n;
    }
    if (got < sizeof(r)) { /* no getrandom (old kernel, seccomp): time and pid, still varied */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t x = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
        x ^= (uint64_t)getpid() << 32;
        for (int i = 0; i < 3; i++)
            r[i] ^= splitmix(&x);
    }
    hk0 = r[0];
    hk1 = r[1];
    for (int i = 0; i < 8; i++)
        branch_prefix[i] = b32[(r[2] >> (5 * i)) & 31];
    seeded = 1;
}

/* SipHash-1-3: branches and Call-IDs come from the network, so the buckets must not be
 * predictable. */
#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND do { \
    v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32); \
    v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2; \
    v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0; \
    v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32); \
} while (0)

static uint64_t siphash13(const char *s, size_t len, uint64_t k0, uint64_t k1)
{
    uint64_t v0 = 0x736f6d6570736575ull ^ k0, v1 = 0x646f72616e646f6dull ^ k1;
    uint64_t v2 = 0x6c7967656e657261ull ^ k0, v3 = 0x7465646279746573ull ^ k1;
    const unsigned char *p = (const unsigned char *)s;
    size_t left = len;
    for (; left >= 8; p += 8, left -= 8) {
        uint64_t m;
        memcpy(&m, p, 8);
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t b = (uint64_t)len << 56;
    for (size_t i = 0; i < left; i++)
        b |= (uint64_t)p[i] << (8 * i);
    v3 ^= b;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

static uint64_t hash_branch(struct sip_str b)
{
    if (!seeded)
        seed();
    return siphash13(b.s, b.len, hk0, hk1);
}

static uint64_t hash_2543(struct sip_str call_id, uint32_t cseq, struct sip_str from_tag)
{
    if (!seeded)
        seed();
    uint64_t h = siphash13(call_id.s, call_id.len, hk0, hk1);
    return siphash13(from_tag.s, from_tag.len, hk0 ^ h, hk1 ^ cseq);
}

/* ----- hash tables: chained, power-of-two buckets, doubled when the load passes 1 ----- */

static void htab_grow(struct htab *h)
{
    size_t nb = (h->mask + 1) * 2;
    struct txn **b = calloc(nb, sizeof(*b));
    if (!b)
        return; /* keep the old size: slower, still correct */
    for (size_t i = 0; i <= h->mask; i++) {
        struct txn *t = h->b[i], *next;
        for (; t; t = next) {
            next = t->hnext;
            struct txn **head = &b[t->hash & (nb - 1)];
            t->hnext = *head;
            if (*head)
                (*head)->hpprev = &t->hnext;
            *head = t;
            t->hpprev = head;
        }
    }
    free(h->b);
    h->b = b;
    h->mask = nb - 1;
}

static int htab_insert(struct htab *h, struct txn *t)
{
    if (!h->b) {
        h->b = calloc(1024, sizeof(*h->b));
        if (!h->b)
            return -ENOMEM;
        h->mask = 1023;
    } else if (h->n > h->mask) {
        htab_grow(h);
    }
    struct txn **head = &h->b[t->hash & h->mask];
    t->hnext = *head;
    if (*head)
        (*head)->hpprev = &t->hnext;
    *head = t;
    t->hpprev = head;
    h->n++;
    return 0;
}

static struct htab *tab_of(const struct txn *t)
{
    return t->kind <= TXN_SERVER_NON_INVITE ? &srv_tab : &cli_tab;
}

static void htab_unlink(struct txn *t)
{
    if (!t->hpprev)
        return;
    *t->hpprev = t->hnext;
    if (t->hnext)
        t->hnext->hpprev = t->hpprev;
    t->hpprev = NULL;
    t->hnext = NULL;
    tab_of(t)->n--;
}

static inline struct txn *htab_head(const struct htab *h, uint64_t hash)
{
    return h->b ? h->b[hash & h->mask] : NULL;
}

/* ----- small helpers ----- */

static inline int str_eq(struct sip_str a, struct sip_str b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.s, b.s, a.len) == 0);
}

static int str_ieq(struct sip_str a, struct sip_str b)
{
    if (a.len != b.len)
        return 0;
    for (uint32_t i = 0; i < a.len; i++) {
        unsigned char x = (unsigned char)a.s[i], y = (unsigned char)b.s[i];
        if (x >= 'A' && x <= 'Z')
            x |= 0x20;
        if (y >= 'A' && y <= 'Z')
            y |= 0x20;
        if (x != y)
            return 0;
    }
    return 1;
}

static inline int has_cookie(struct sip_str b)
{
    return b.len > COOKIE_LEN && memcmp(b.s, COOKIE, COOKIE_LEN) == 0;
}

/* Copies s to *w and returns the slice of the copy. */
static struct sip_str put_str(char **w, struct sip_str s)
{
    struct sip_str r = { *w, s.len };
    if (s.len)
        memcpy(*w, s.s, s.len);
    *w += s.len;
    return r;
}

struct wr {
    char *p;
};

static void wr_mem(struct wr *w, const void *s, size_t n)
{
    if (n)
        memcpy(w->p, s, n);
    w->p += n;
}

#define WR_LIT(w, lit) wr_mem((w), (lit), sizeof(lit) - 1)
#define WR_STR(w, str) wr_mem((w), (str).s, (str).len)

static void wr_u32(struct wr *w, uint32_t x)
{
    char tmp[10];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + x % 10);
        x /= 10;
    } while (x);
    while (n)
        *w->p++ = tmp[--n];
}

/* Counted transmission; nothing leaves during txn_shutdown. */
static int xmit(const struct txn_dest *d, const char *buf, size_t len)
{
    if (shutting_down)
        return 0;
    int r = send_fn(d, buf, len);
    if (r != 0)
        stats.txn_send_errors++;
    return r;
}

static int transient(int err)
{
    return err == -EAGAIN || err == -EWOULDBLOCK || err == -ENOBUFS || err == -EINTR || err == -ENOMEM;
}

/* ----- lifetime ----- */

static void hold(struct txn *t)
{
    t->busy++;
}

static void release(struct txn *t)
{
    if (--t->busy == 0 && t->state == TXN_TERMINATED)
        free(t);
}

static void drop_buffers(struct txn *t)
{
    if (t->kind <= TXN_SERVER_NON_INVITE) {
        if (t->u.s.req)
            sip_msg_unref(t->u.s.req);
        free(t->u.s.resp);
        free(t->u.s.to_tag);
        memset(&t->u.s, 0, sizeof(t->u.s));
    } else {
        free(t->u.c.req);
        free(t->u.c.ack);
        free(t->u.c.reason);
        t->u.c.req = NULL;
        t->u.c.ack = NULL;
        t->u.c.reason = NULL;
        t->u.c.ack_len = t->u.c.reason_len = 0;
    }
}

/* Terminated (§17.1.1.2, §17.2.1 ...): unindexed, timers stopped, buffers freed, the TU
 * told once; the memory goes when the last callback running for it returns. */
static void terminate(struct txn *t)
{
    if (t->state == TXN_TERMINATED)
        return;
    t->state = TXN_TERMINATED;
    htab_unlink(t);
    timer_stop(&t->t_retx);
    timer_stop(&t->t_main);
    timer_stop(&t->t_aux);
    drop_buffers(t);
    live[t->kind]--;
    hold(t);
    if (t->ops && t->ops->on_terminated)
        t->ops->on_terminated(t->tu, t);
    release(t);
}

/* Arms a state timer; a 0 delay (reliable transports) fires on the next timer run, so a
 * transaction handed to the caller stays valid until the call returns. Out of memory for
 * the heap: the transaction cannot end by itself, so it ends now. */
static void arm(struct txn *t, struct timer *tm, uint64_t ms)
{
    if (timer_start(tm, ms) != 0) {
        LOG_INFO("txn: no memory for a timer, transaction terminated");
        terminate(t);
    }
}

/* Client: the transaction ends without a final response; the TU hears why first. */
static void client_fail(struct txn *t, enum txn_fail why)
{
    if (t->ops && t->ops->on_client_fail)
        t->ops->on_client_fail(t->tu, t, why);
    terminate(t);
}

static void on_retx(struct timer *tm);
static void on_main(struct timer *tm);
static void on_aux(struct timer *tm);

static struct txn *txn_alloc(size_t extra, enum txn_kind kind)
{
    struct txn *t = calloc(1, sizeof(*t) + extra);
    if (!t)
        return NULL;
    t->kind = (uint8_t)kind;
    timer_init(&t->t_retx, on_retx);
    timer_init(&t->t_main, on_main);
    timer_init(&t->t_aux, on_aux);
    return t;
}

/* ----- server transactions ----- */

static int method_is(const struct txn *t, enum sip_method m, struct sip_str mstr)
{
    if (t->method != m)
        return 0;
    return m != SIP_METHOD_OTHER || str_eq(t->mstr, mstr);
}

enum match_mode {
    MATCH_REQUEST = 0,  /* the request's own method (ACK: the INVITE) */
    MATCH_CANCELLED,    /* the INVITE a CANCEL targets (§9.2) */
};

/* §17.2.3: the server transaction a request belongs to, or NULL. */
static struct txn *server_lookup(const struct sip_msg *m, enum match_mode mode)
{
    const struct sip_via *v = &m->via1;
    enum sip_method want = m->method;
    int is_ack = want == SIP_METHOD_ACK && mode == MATCH_REQUEST;
    if (want == SIP_METHOD_ACK || mode == MATCH_CANCELLED)
        want = SIP_METHOD_INVITE;

    if (has_cookie(v->branch)) {
        uint64_t h = hash_branch(v->branch);
        for (struct txn *t = htab_head(&srv_tab, h); t; t = t->hnext)
            if (t->hash == h && !(t->flags & F_RFC2543) && str_eq(t->branch, v->branch) &&
                t->port == v->port && str_ieq(t->host, v->host) && method_is(t, want, m->method_str))
                return t;
        return NULL;
    }
    /* RFC 2543: R-URI, To tag (ACK: the tag of our response), From tag, Call-ID, CSeq,
     * top Via. */
    uint64_t h = hash_2543(m->call_id, m->cseq, m->from.tag);
    for (struct txn *t = htab_head(&srv_tab, h); t; t = t->hnext) {
        if (t->hash != h || !(t->flags & F_RFC2543) || t->cseq != m->cseq ||
            !method_is(t, want, m->method_str) ||
            !str_eq(t->ex[EX_CALL_ID], m->call_id) || !str_eq(t->ex[EX_FROM_TAG], m->from.tag) ||
            !str_eq(t->ex[EX_RURI], m->ruri_str) ||
            t->port != v->port || !str_ieq(t->host, v->host) ||
            !str_ieq(t->ex[EX_VIA_TP], v->transport) || !str_eq(t->ex[EX_VIA_PARAMS], v->params))
            continue;
        if (is_ack) {
            struct sip_str tag = { t->u.s.to_tag, t->u.s.to_tag_len };
            if (!t->u.s.to_tag || !str_eq(tag, m->to.tag))
                continue;
        } else if (!str_eq(t->ex[EX_TO_TAG], m->to.tag)) {
            continue;
        }
        return t;
    }
    return NULL;
}

/* Resends the last response (a retransmission we were asked for or Timer G). */
static void server_resend(struct txn *t)
{
    if (t->u.s.resp)
        xmit(&t->dest, t->u.s.resp, t->u.s.resp_len);
}

/* Borrows req. A retransmission is answered here from the kept response (§17.2.1,
 * §17.2.2); the TU never sees it. */
enum txn_rx txn_server_receive(struct sip_msg *req, struct txn **out)
{
    if (out)
        *out = NULL;
    if (!req || !req->is_request)
        return TXN_RX_NEW;
    struct txn *t = server_lookup(req, MATCH_REQUEST);
    if (!t)
        return TXN_RX_NEW;
    enum txn_rx rx = TXN_RX_ABSORBED;
    hold(t);
    if (req->method == SIP_METHOD_ACK) {
        switch (t->state) {
        case TXN_COMPLETED: /* §17.2.1: the ACK of our non-2xx; Timer I absorbs its copies */
            t->state = TXN_CONFIRMED;
            timer_stop(&t->t_retx);
            arm(t, &t->t_main, t->dest.transport == SIP_TP_UDP ? tv.T4 : 0);
            break;
        case TXN_ACCEPTED: /* RFC 6026 §7.1: the TU routes it */
            rx = TXN_RX_ACK_ACCEPTED;
            break;
        case TXN_CONFIRMED:
            stats.txn_retrans_absorbed++;
            break;
        default: /* no final sent yet: nothing it could acknowledge */
            break;
        }
    } else {
        stats.txn_retrans_absorbed++;
        switch (t->state) {
        case TXN_PROCEEDING: /* §17.2.1 / §17.2.2: the last provisional again */
        case TXN_COMPLETED:  /* the final again */
            server_resend(t);
            break;
        default: /* Trying: nothing to send yet; Confirmed, Accepted: absorbed (RFC 6026) */
            break;
        }
    }
    if (out && t->state != TXN_TERMINATED)
        *out = t;
    release(t);
    return rx;
}

/* Takes a reference on req (dropped at the first final) and copies only the matching key
 * into the transaction's one allocation: branch, sent-by and method, or for RFC 2543 the
 * R-URI, tags, Call-ID and top Via fields. */
struct txn *txn_server_create(struct sip_msg *req, const struct txn_dest *reply_dest,
                              const struct txn_user_ops *ops, void *tu)
{
    if (!req || !req->is_request || req->method == SIP_METHOD_ACK || !reply_dest || shutting_down)
        return NULL;
    const struct sip_via *v = &req->via1;
    int rfc2543 = !has_cookie(v->branch);
    struct sip_str mstr = req->method == SIP_METHOD_OTHER ? req->method_str : (struct sip_str){ NULL, 0 };
    struct sip_str ex[EX__COUNT] = { req->ruri_str, req->to.tag, req->from.tag, req->call_id,
                                     v->transport, v->params };
    size_t nex = rfc2543 ? EX__COUNT : 0;
    size_t bytes = v->host.len + mstr.len + (rfc2543 ? 0 : v->branch.len);
    for (size_t i = 0; i < nex; i++)
        bytes += ex[i].len;
    enum txn_kind kind = req->method == SIP_METHOD_INVITE ? TXN_SERVER_INVITE : TXN_SERVER_NON_INVITE;
    struct txn *t = txn_alloc(nex * sizeof(struct sip_str) + bytes, kind);
    if (!t)
        return NULL;
    t->nex = (uint32_t)nex;
    char *w = (char *)(t->ex + nex);
    if (rfc2543) {
        for (size_t i = 0; i < nex; i++)
            t->ex[i] = put_str(&w, ex[i]);
        t->flags |= F_RFC2543;
        t->hash = hash_2543(req->call_id, req->cseq, req->from.tag);
    } else {
        t->branch = put_str(&w, v->branch);
        t->hash = hash_branch(v->branch);
    }
    t->host = put_str(&w, v->host);
    t->mstr = put_str(&w, mstr);
    t->port = v->port;
    t->method = req->method;
    t->cseq = req->cseq;
    t->ops = ops;
    t->tu = tu;
    t->dest = *reply_dest;
    t->state = kind == TXN_SERVER_INVITE ? TXN_PROCEEDING : TXN_TRYING; /* §17.2.1, §17.2.2 */
    if (htab_insert(&srv_tab, t) != 0) {
        free(t);
        return NULL;
    }
    sip_msg_ref(req);
    t->u.s.req = req;
    live[kind]++;
    return t;
}

/* The To tag of a response we send (RFC 2543 ACK matching): parsed only for those. */
static void keep_to_tag(struct txn *t, const char *buf, size_t len)
{
    struct sip_parse_error err;
    struct sip_msg *r = sip_msg_parse(buf, len, SIP_PARSE_DATAGRAM, &err);
    if (!r)
        return;
    if (r->to.tag.len) {
        char *c = malloc(r->to.tag.len);
        if (c) {
            memcpy(c, r->to.tag.s, r->to.tag.len);
            free(t->u.s.to_tag);
            t->u.s.to_tag = c;
            t->u.s.to_tag_len = r->to.tag.len;
        }
    }
    sip_msg_unref(r);
}

static int keep_response(struct txn *t, const char *buf, size_t len)
{
    if (len > UINT32_MAX)
        return -ENOMEM;
    if (len > t->u.s.resp_cap) {
        char *n = malloc(len);
        if (!n)
            return -ENOMEM;
        free(t->u.s.resp);
        t->u.s.resp = n;
        t->u.s.resp_cap = (uint32_t)len;
    }
    memcpy(t->u.s.resp, buf, len);
    t->u.s.resp_len = (uint32_t)len;
    return 0;
}

static void drop_request(struct txn *t)
{
    if (t->u.s.req) {
        sip_msg_unref(t->u.s.req);
        t->u.s.req = NULL;
    }
}

/* Copies buf (kept for retransmissions unless it is a 2xx, which is never retransmitted
 * by us: RFC 6026). A send failure leaves the state machine moving: over UDP the peer's retransmission (or
 * Timer G) gets the response another chance; the caller gets the error. */
int txn_server_reply(struct txn *st, int status, const char *buf, size_t len)
{
    if (!st || st->kind > TXN_SERVER_NON_INVITE || status < 100 || status > 699 || !buf || !len)
        return -EINVAL;
    int invite = st->kind == TXN_SERVER_INVITE;
    int ok2xx = invite && status >= 200 && status < 300;
    if (st->state == TXN_TERMINATED)
        return -EALREADY;
    if (invite && st->state == TXN_ACCEPTED) {
        if (!ok2xx)
            return -EALREADY;
        st->status = status; /* RFC 6026 §7.1: the TU's later 2xx go out as they are */
        return xmit(&st->dest, buf, len);
    }
    if (st->state != TXN_TRYING && st->state != TXN_PROCEEDING)
        return -EALREADY;
    if (!ok2xx && keep_response(st, buf, len) != 0)
        return -ENOMEM;
    int err = xmit(&st->dest, buf, len);
    st->status = status;
    if (status < 200) {
        st->state = TXN_PROCEEDING;
        return err;
    }
    timer_stop(&st->t_aux);
    drop_request(st);
    if ((st->flags & F_RFC2543) && invite)
        keep_to_tag(st, buf, len);
    hold(st);
    if (ok2xx) { /* RFC 6026 §7.1: Accepted, Timer L */
        st->state = TXN_ACCEPTED;
        free(st->u.s.resp);
        st->u.s.resp = NULL;
        st->u.s.resp_len = st->u.s.resp_cap = 0;
        arm(st, &st->t_main, t64());
    } else if (invite) { /* §17.2.1: Completed, Timer G over UDP, Timer H */
        st->state = TXN_COMPLETED;
        if (st->dest.transport == SIP_TP_UDP) {
            st->retx_ms = tv.T1;
            arm(st, &st->t_retx, st->retx_ms);
        }
        if (st->state == TXN_COMPLETED)
            arm(st, &st->t_main, t64());
    } else { /* §17.2.2: Completed, Timer J */
        st->state = TXN_COMPLETED;
        arm(st, &st->t_main, st->dest.transport == SIP_TP_UDP ? t64() : 0);
    }
    release(st);
    return err;
}

struct txn *txn_server_find_invite(struct sip_msg *cancel)
{
    if (!cancel || !cancel->is_request)
        return NULL;
    struct txn *t = server_lookup(cancel, MATCH_CANCELLED);
    return t && t->kind == TXN_SERVER_INVITE ? t : NULL;
}

void txn_server_expire(struct txn *st, uint64_t ms)
{
    if (!st || st->kind > TXN_SERVER_NON_INVITE)
        return;
    if (ms == 0 || (st->state != TXN_TRYING && st->state != TXN_PROCEEDING)) {
        timer_stop(&st->t_aux);
        return;
    }
    arm(st, &st->t_aux, ms);
}

/* ----- client transactions ----- */

static struct txn *client_lookup(const struct sip_msg *r)
{
    if (!r->via1.branch.len)
        return NULL;
    uint64_t h = hash_branch(r->via1.branch);
    for (struct txn *t = htab_head(&cli_tab, h); t; t = t->hnext)
        if (t->hash == h && str_eq(t->branch, r->via1.branch) &&
            method_is(t, r->cseq_method, r->cseq_method_str))
            return t;
    return NULL;
}

/* The first via-parm of the first Via header, as written. */
static struct sip_str top_via_text(struct sip_msg *m)
{
    int i = sip_msg_hdr_find_id(m, SIP_HDR_VIA, 0);
    struct sip_str v = i >= 0 ? sip_msg_hdr_value(m, (uint32_t)i) : (struct sip_str){ NULL, 0 };
    struct sip_str item = { NULL, 0 };
    const char *p = v.s;
    if (!v.s || sip_list_next(&p, v.s + v.len, &item) != 1)
        return (struct sip_str){ NULL, 0 };
    return item;
}

static struct sip_str hdr_text(struct sip_msg *m, enum sip_hdr_id id)
{
    int i = sip_msg_hdr_find_id(m, id, 0);
    return i >= 0 ? sip_msg_hdr_value(m, (uint32_t)i) : (struct sip_str){ NULL, 0 };
}

/* Builds the creq of a request about to be sent: its bytes, and for an INVITE what the
 * ACK and the CANCEL copy from it (R-URI, top Via, Route set, From, To, Call-ID, CSeq). */
static struct creq *creq_build(struct sip_msg *m, const char *buf, size_t len)
{
    int invite = m->method == SIP_METHOD_INVITE;
    struct sip_str via = { NULL, 0 }, from = via, to = via;
    size_t extra = 0, routes = 0;
    if (invite) {
        via = top_via_text(m);
        from = hdr_text(m, SIP_HDR_FROM);
        to = hdr_text(m, SIP_HDR_TO);
        if (!via.s || !from.s || !to.s)
            return NULL;
        for (int i = sip_msg_hdr_find_id(m, SIP_HDR_ROUTE, 0); i >= 0;
             i = sip_msg_hdr_find_id(m, SIP_HDR_ROUTE, (uint32_t)i + 1)) {
            struct sip_str r = sip_msg_hdr_value(m, (uint32_t)i);
            if (!r.s)
                return NULL;
            routes += sizeof("Route: \r\n") - 1 + r.len;
        }
        extra = m->ruri_str.len + via.len + routes + from.len + to.len + m->call_id.len;
    }
    struct creq *q = malloc(sizeof(*q) + len + extra);
    if (!q)
        return NULL;
    memset(q, 0, sizeof(*q));
    memcpy(q->bytes, buf, len);
    q->len = (uint32_t)len;
    q->cseq = m->cseq;
    if (!invite)
        return q;
    char *w = q->bytes + len;
    q->ruri = put_str(&w, m->ruri_str);
    q->via = put_str(&w, via);
    q->routes.s = w;
    q->routes.len = (uint32_t)routes;
    for (int i = sip_msg_hdr_find_id(m, SIP_HDR_ROUTE, 0); i >= 0;
         i = sip_msg_hdr_find_id(m, SIP_HDR_ROUTE, (uint32_t)i + 1)) {
        struct sip_str r = sip_msg_hdr_value(m, (uint32_t)i);
        struct wr wr = { w };
        WR_LIT(&wr, "Route: ");
        WR_STR(&wr, r);
        WR_LIT(&wr, "\r\n");
        w = wr.p;
    }
    q->from = put_str(&w, from);
    q->to = put_str(&w, to);
    q->call_id = put_str(&w, m->call_id);
    return q;
}

/* The request line, Via, Route set, Max-Forwards and From shared by the ACK and the
 * CANCEL; returns the byte count of what build_hop writes. */
static size_t hop_size(const struct creq *q, const char *method, struct sip_str to, size_t extra)
{
    return strlen(method) * 2 + q->ruri.len + q->via.len + q->routes.len + q->from.len + to.len +
           q->call_id.len + extra + 11 + /* the SP after the method, up to 10 CSeq digits */
           sizeof(" SIP/2.0\r\nVia: \r\nMax-Forwards: 70\r\nFrom: \r\nTo: \r\nCall-ID: \r\nCSeq:  \r\n") - 1 +
           sizeof("Content-Length: 0\r\n\r\n") - 1;
}

/* §17.1.1.3 (ACK, to = the response's To) and §9.1 (CANCEL, to = the INVITE's To, with an
 * optional Reason). Returns the length written into out (hop_size bytes are enough). */
static size_t build_hop(const struct creq *q, const char *method, struct sip_str to,
                        struct sip_str reason, char *out)
{
    struct wr w = { out };
    size_t ml = strlen(method);
    wr_mem(&w, method, ml);
    WR_LIT(&w, " ");
    WR_STR(&w, q->ruri);
    WR_LIT(&w, " SIP/2.0\r\nVia: ");
    WR_STR(&w, q->via);
    WR_LIT(&w, "\r\n");
    WR_STR(&w, q->routes);
    WR_LIT(&w, "Max-Forwards: 70\r\nFrom: ");
    WR_STR(&w, q->from);
    WR_LIT(&w, "\r\nTo: ");
    WR_STR(&w, to);
    WR_LIT(&w, "\r\nCall-ID: ");
    WR_STR(&w, q->call_id);
    WR_LIT(&w, "\r\nCSeq: ");
    wr_u32(&w, q->cseq);
    WR_LIT(&w, " ");
    wr_mem(&w, method, ml);
    WR_LIT(&w, "\r\n");
    if (reason.len) {
        WR_LIT(&w, "Reason: ");
        WR_STR(&w, reason);
        WR_LIT(&w, "\r\n");
    }
    WR_LIT(&w, "Content-Length: 0\r\n\r\n");
    return (size_t)(w.p - out);
}

/* Sends our CANCEL as its own non-INVITE client transaction (nobody listens to it). */
static void send_cancel(struct txn *ct, struct sip_str reason)
{
    const struct creq *q = ct->u.c.req;
    if (!q)
        return;
    size_t cap = hop_size(q, "CANCEL", q->to, reason.len ? reason.len + sizeof("Reason: \r\n") : 0);
    char *buf = malloc(cap);
    if (!buf) {
        stats.txn_send_errors++;
        return;
    }
    size_t n = build_hop(q, "CANCEL", q->to, reason, buf);
    struct txn_client_params cp = { .buf = buf, .len = n, .dest = ct->dest, .timer_F_ms = ct->u.c.timer_F_ms };
    struct txn *cx;
    int r = txn_client_create(&cp, NULL, NULL, &cx);
    if (r != 0)
        LOG_DEBUG("txn: CANCEL not sent: %s", strerror(-r));
    free(buf);
}

/* Copies p->buf (the wire bytes, plus for an INVITE the ACK/CANCEL pieces) into one block
 * and the branch and method into the transaction; the parse is temporary. The request is
 * sent only once the timers are armed and the transaction indexed, so a failure at any step
 * leaves nothing behind. */
int txn_client_create(const struct txn_client_params *p, const struct txn_user_ops *ops, void *tu,
                      struct txn **out)
{
    if (!p || !p->buf || !p->len || p->len > UINT32_MAX / 2 || !out)
        return -EINVAL;
    if (shutting_down)
        return -ECANCELED;
    struct sip_parse_error perr;
    struct sip_msg *m = sip_msg_parse(p->buf, p->len, SIP_PARSE_DATAGRAM, &perr);
    if (!m)
        return -EINVAL;
    int err = -EINVAL;
    struct txn *t = NULL;
    struct creq *q = NULL;
    if (!m->is_request || m->method == SIP_METHOD_ACK || !has_cookie(m->via1.branch))
        goto fail;
    err = -ENOMEM;
    struct sip_str mstr = m->method == SIP_METHOD_OTHER ? m->method_str : (struct sip_str){ NULL, 0 };
    int invite = m->method == SIP_METHOD_INVITE;
    t = txn_alloc(m->via1.branch.len + mstr.len, invite ? TXN_CLIENT_INVITE : TXN_CLIENT_NON_INVITE);
    q = t ? creq_build(m, p->buf, p->len) : NULL;
    if (!q)
        goto fail;
    char *w = (char *)t->ex;
    t->branch = put_str(&w, m->via1.branch);
    t->mstr = put_str(&w, mstr);
    t->method = m->method;
    t->hash = hash_branch(t->branch);
    t->ops = ops;
    t->tu = tu;
    t->dest = p->dest;
    t->u.c.timer_F_ms = p->timer_F_ms ? p->timer_F_ms : (uint32_t)t64();
    t->u.c.timer_C_ms = invite ? p->timer_C_ms : 0;
    t->state = invite ? TXN_CALLING : TXN_TRYING;
    sip_msg_unref(m);
    m = NULL;
    /* §17.1.1.2 / §17.1.2.2: A or E (UDP only) at T1, B or F, and the proxy's Timer C */
    int udp = p->dest.transport == SIP_TP_UDP;
    t->retx_ms = tv.T1;
    if ((udp && timer_start(&t->t_retx, t->retx_ms) != 0) ||
        timer_start(&t->t_main, invite ? (p->timer_B_ms ? p->timer_B_ms : t64()) : t->u.c.timer_F_ms) != 0 ||
        (t->u.c.timer_C_ms && timer_start(&t->t_aux, t->u.c.timer_C_ms) != 0))
        goto fail;
    if (htab_insert(&cli_tab, t) != 0)
        goto fail;
    err = xmit(&t->dest, p->buf, p->len);
    if (err != 0) {
        htab_unlink(t);
        goto fail;
    }
    if (!invite && !udp) { /* nothing to retransmit, no ACK or CANCEL to build */
        free(q);
        q = NULL;
    }
    t->u.c.req = q;
    live[t->kind]++;
    *out = t;
    return 0;
fail:
    if (t) {
        timer_stop(&t->t_retx);
        timer_stop(&t->t_main);
        timer_stop(&t->t_aux);
        free(t);
    }
    free(q);
    if (m)
        sip_msg_unref(m);
    return err;
}

static void deliver(struct txn *t, struct sip_msg *resp)
{
    if (t->ops && t->ops->on_response)
        t->ops->on_response(t->tu, t, resp);
}

static void client_drop_request(struct txn *t)
{
    free(t->u.c.req);
    t->u.c.req = NULL;
    free(t->u.c.reason);
    t->u.c.reason = NULL;
    t->u.c.reason_len = 0;
    t->flags &= (uint8_t)~F_CANCEL_HELD;
}

/* §17.1.1.3: builds and keeps the ACK of a non-2xx final, from the INVITE and the
 * response's To (with its tag). */
static void build_ack(struct txn *t, struct sip_msg *resp)
{
    const struct creq *q = t->u.c.req;
    struct sip_str to = hdr_text(resp, SIP_HDR_TO);
    if (!q || !to.s)
        return;
    char *buf = malloc(hop_size(q, "ACK", to, 0));
    if (!buf) {
        stats.txn_send_errors++;
        return;
    }
    t->u.c.ack = buf;
    t->u.c.ack_len = (uint32_t)build_hop(q, "ACK", to, (struct sip_str){ NULL, 0 }, buf);
}

static void client_invite_response(struct txn *t, struct sip_msg *resp)
{
    int code = resp->status;
    switch (t->state) {
    case TXN_CALLING:
    case TXN_PROCEEDING:
        if (code < 200) {
            if (t->state == TXN_CALLING) { /* §17.1.1.2: no more retransmissions, no Timer B */
                t->state = TXN_PROCEEDING;
                timer_stop(&t->t_retx);
                timer_stop(&t->t_main);
                if (t->flags & F_CANCEL_HELD) { /* §9.1: now the CANCEL may go */
                    t->flags &= (uint8_t)~F_CANCEL_HELD;
                    send_cancel(t, (struct sip_str){ t->u.c.reason, t->u.c.reason_len });
                    free(t->u.c.reason);
                    t->u.c.reason = NULL;
                    t->u.c.reason_len = 0;
                }
            }
            if (code > 100 && t->u.c.timer_C_ms && !(t->flags & F_CANCELLED)) /* §16.7 step 2 */
                arm(t, &t->t_aux, t->u.c.timer_C_ms);
            if (t->state != TXN_TERMINATED)
                deliver(t, resp);
            return;
        }
        t->status = code;
        timer_stop(&t->t_retx);
        timer_stop(&t->t_main);
        timer_stop(&t->t_aux);
        if (code < 300) { /* RFC 6026 §8.4: Accepted, Timer M; the ACK is the TU's */
            t->state = TXN_ACCEPTED;
            client_drop_request(t);
            arm(t, &t->t_main, t64());
        } else { /* §17.1.1.2: ACK, Completed, Timer D */
            build_ack(t, resp);
            client_drop_request(t);
            if (t->u.c.ack)
                xmit(&t->dest, t->u.c.ack, t->u.c.ack_len);
            t->state = TXN_COMPLETED;
            arm(t, &t->t_main, t->dest.transport == SIP_TP_UDP ? TIMER_D_UDP_MS : 0);
        }
        if (t->state != TXN_TERMINATED)
            deliver(t, resp);
        return;
    case TXN_COMPLETED: /* a retransmitted final: ACKed again, absorbed */
        if (code >= 300 && t->u.c.ack)
            xmit(&t->dest, t->u.c.ack, t->u.c.ack_len);
        stats.txn_resp_retrans_absorbed++;
        return;
    case TXN_ACCEPTED: /* RFC 6026 §8.4: every 2xx goes to the TU */
        if (code >= 200 && code < 300)
            deliver(t, resp);
        else
            stats.txn_resp_retrans_absorbed++;
        return;
    default:
        return;
    }
}

static void client_non_invite_response(struct txn *t, struct sip_msg *resp)
{
    int code = resp->status;
    if (t->state == TXN_COMPLETED) {
        stats.txn_resp_retrans_absorbed++;
        return;
    }
    if (t->state != TXN_TRYING && t->state != TXN_PROCEEDING)
        return;
    if (code < 200) { /* §17.1.2.2: Proceeding; Timer E goes on, at T2 from its next firing */
        t->state = TXN_PROCEEDING;
        deliver(t, resp);
        return;
    }
    t->status = code; /* §17.1.2.2: Completed, Timer K */
    t->state = TXN_COMPLETED;
    timer_stop(&t->t_retx);
    timer_stop(&t->t_main);
    client_drop_request(t);
    arm(t, &t->t_main, t->dest.transport == SIP_TP_UDP ? tv.T4 : 0);
    if (t->state != TXN_TERMINATED)
        deliver(t, resp);
}

/* Borrows resp; the TU may take a reference from on_response. */
int txn_client_receive(struct sip_msg *resp)
{
    if (!resp || resp->is_request || resp->status < 100)
        return 0;
    struct txn *t = client_lookup(resp);
    if (!t)
        return 0;
    hold(t);
    if (t->kind == TXN_CLIENT_INVITE)
        client_invite_response(t, resp);
    else
        client_non_invite_response(t, resp);
    release(t);
    return 1;
}

static int reason_ok(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0')
            return 0;
    return 1;
}

/* A reason with CR, LF or NUL is refused (-EINVAL): it would forge headers. */
int txn_client_cancel(struct txn *ct, const char *reason, size_t rlen)
{
    if (!ct || ct->kind != TXN_CLIENT_INVITE)
        return -EINVAL;
    if (!reason)
        rlen = 0;
    if (rlen > 1024 || !reason_ok(reason, rlen))
        return -EINVAL;
    if ((ct->flags & F_CANCELLED) || (ct->state != TXN_CALLING && ct->state != TXN_PROCEEDING))
        return -EALREADY;
    ct->flags |= F_CANCELLED;
    hold(ct);
    /* §9.1 and §16.10: the INVITE gets 64*T1 for its final after our CANCEL; Timer C is
     * over, the TU has decided */
    arm(ct, &ct->t_aux, t64());
    if (ct->state == TXN_PROCEEDING) {
        send_cancel(ct, (struct sip_str){ reason, (uint32_t)rlen });
    } else if (ct->state == TXN_CALLING) { /* §9.1: no CANCEL before a provisional */
        ct->flags |= F_CANCEL_HELD;
        if (rlen && (ct->u.c.reason = malloc(rlen)) != NULL) {
            memcpy(ct->u.c.reason, reason, rlen);
            ct->u.c.reason_len = (uint32_t)rlen;
        }
    }
    release(ct);
    return 0;
}

/* ----- timers ----- */

static void on_retx(struct timer *tm)
{
    struct txn *t = container_of(tm, struct txn, t_retx);
    hold(t);
    if (t->kind == TXN_SERVER_INVITE) { /* Timer G: min(2G, T2) */
        if (t->state == TXN_COMPLETED) {
            stats.txn_retransmits++;
            server_resend(t);
            t->retx_ms = t->retx_ms * 2 < tv.T2 ? t->retx_ms * 2 : tv.T2;
            arm(t, &t->t_retx, t->retx_ms);
        }
    } else if (t->kind >= TXN_CLIENT_INVITE && t->u.c.req &&
               (t->state == TXN_CALLING || t->state == TXN_TRYING || t->state == TXN_PROCEEDING)) {
        stats.txn_retransmits++;
        int r = xmit(&t->dest, t->u.c.req->bytes, t->u.c.req->len);
        if (r != 0 && !transient(r)) { /* §17.1.4 */
            LOG_DEBUG("txn: retransmission failed: %s", strerror(-r));
            client_fail(t, TXN_FAIL_TRANSPORT);
        } else {
            if (t->kind == TXN_CLIENT_INVITE) /* Timer A: 2A */
                t->retx_ms *= 2;
            else if (t->state == TXN_PROCEEDING) /* Timer E in Proceeding: T2 (RFC 4320 §4.2) */
                t->retx_ms = tv.T2;
            else /* Timer E in Trying: min(2E, T2) */
                t->retx_ms = t->retx_ms * 2 < tv.T2 ? t->retx_ms * 2 : tv.T2;
            arm(t, &t->t_retx, t->retx_ms);
        }
    }
    release(t);
}

static void on_main(struct timer *tm)
{
    struct txn *t = container_of(tm, struct txn, t_main);
    hold(t);
    switch (t->kind) {
    case TXN_SERVER_INVITE:
        if (t->state == TXN_COMPLETED) { /* Timer H */
            stats.txn_no_ack++;
            LOG_INFO("txn: Timer H fired: no ACK for our %d", t->status);
            timer_stop(&t->t_retx);
            if (t->ops && t->ops->on_server_no_ack)
                t->ops->on_server_no_ack(t->tu, t);
        }
        terminate(t); /* H, I, L */
        break;
    case TXN_SERVER_NON_INVITE: /* J */
        terminate(t);
        break;
    case TXN_CLIENT_INVITE:
        if (t->state == TXN_CALLING) { /* Timer B */
            stats.txn_timeouts++;
            LOG_DEBUG("txn: Timer B: INVITE unanswered");
            client_fail(t, TXN_FAIL_TIMEOUT);
        } else {
            terminate(t); /* D, M */
        }
        break;
    case TXN_CLIENT_NON_INVITE:
        if (t->state == TXN_TRYING || t->state == TXN_PROCEEDING) { /* Timer F; never a 408 (RFC 4320) */
            stats.txn_timeouts++;
            LOG_DEBUG("txn: Timer F: request unanswered");
            client_fail(t, TXN_FAIL_TIMEOUT);
        } else {
            terminate(t); /* K */
        }
        break;
    }
    release(t);
}

static void on_aux(struct timer *tm)
{
    struct txn *t = container_of(tm, struct txn, t_aux);
    hold(t);
    if (t->kind <= TXN_SERVER_NON_INVITE) { /* txn_server_expire */
        if (t->state == TXN_TRYING || t->state == TXN_PROCEEDING) {
            stats.txn_unanswered++;
            LOG_DEBUG("txn: server transaction unanswered, expired");
            terminate(t);
        }
    } else if (t->kind == TXN_CLIENT_INVITE && (t->state == TXN_CALLING || t->state == TXN_PROCEEDING)) {
        if (t->flags & F_CANCELLED) { /* §9.1 / §16.10: no final 64*T1 after our CANCEL */
            LOG_DEBUG("txn: no final response after CANCEL, transaction destroyed");
            client_fail(t, TXN_FAIL_CANCEL_TIMEOUT);
        } else if (t->ops && t->ops->on_timer_c) { /* §16.8 */
            LOG_DEBUG("txn: Timer C fired");
            t->ops->on_timer_c(t->tu, t);
        }
    }
    release(t);
}

/* ----- common ----- */

enum txn_kind txn_kind(const struct txn *t)
{
    return (enum txn_kind)t->kind;
}

enum txn_state txn_state(const struct txn *t)
{
    return (enum txn_state)t->state;
}

struct sip_msg *txn_request(const struct txn *t)
{
    if (t->kind > TXN_SERVER_NON_INVITE || (t->state != TXN_TRYING && t->state != TXN_PROCEEDING))
        return NULL;
    return t->u.s.req;
}

int txn_status(const struct txn *t)
{
    return t->status;
}

struct sip_str txn_branch(const struct txn *t)
{
    return t->branch;
}

const struct txn_dest *txn_dest(const struct txn *t)
{
    return &t->dest;
}

void txn_set_user(struct txn *t, const struct txn_user_ops *ops, void *tu)
{
    t->ops = ops;
    t->tu = tu;
}

void *txn_user(const struct txn *t)
{
    return t->tu;
}

void txn_set_dest(struct txn *t, const struct txn_dest *d)
{
    t->dest = *d;
}

const struct txn_user_ops *txn_user_ops(const struct txn *t)
{
    return t->ops;
}

size_t txn_count(enum txn_kind k)
{
    return (unsigned)k < 4 ? live[k] : 0;
}

void txn_conn_failed(uint64_t conn_id)
{
    if (!conn_id || !cli_tab.b)
        return;
    size_t n = 0, cap = 0;
    struct txn **v = NULL;
    for (size_t i = 0; i <= cli_tab.mask; i++)
        for (struct txn *t = cli_tab.b[i]; t; t = t->hnext) {
            if (t->dest.conn_id != conn_id || t->state == TXN_TERMINATED || t->state == TXN_COMPLETED ||
                t->state == TXN_ACCEPTED)
                continue;
            if (n == cap) {
                size_t nc = cap ? cap * 2 : 16;
                struct txn **nv = realloc(v, nc * sizeof(*v));
                if (!nv)
                    goto run; /* the rest will end by Timer B/F */
                v = nv;
                cap = nc;
            }
            hold(t);
            v[n++] = t;
        }
run:
    for (size_t i = 0; i < n; i++) {
        struct txn *t = v[i];
        if (t->state == TXN_CALLING || t->state == TXN_TRYING || t->state == TXN_PROCEEDING) {
            LOG_DEBUG("txn: the connection of a client transaction failed");
            client_fail(t, TXN_FAIL_TRANSPORT);
        }
        release(t);
    }
    free(v);
}

void txn_shutdown(void)
{
    int was = shutting_down;
    shutting_down = 1;
    struct htab *tabs[2] = { &srv_tab, &cli_tab };
    for (int pass = 0; pass < 8 && (srv_tab.n || cli_tab.n); pass++)
        for (int k = 0; k < 2; k++)
            for (size_t i = 0; tabs[k]->b && i <= tabs[k]->mask; i++)
                while (tabs[k]->b && i <= tabs[k]->mask && tabs[k]->b[i])
                    terminate(tabs[k]->b[i]);
    for (int k = 0; k < 2; k++)
        if (tabs[k]->n == 0) {
            free(tabs[k]->b);
            *tabs[k] = (struct htab){ NULL, 0, 0 };
        }
    shutting_down = was;
}

size_t txn_branch_new(char *out, const char *loop_hash, size_t loop_len)
{
    static const char b32[] = "abcdefghijklmnopqrstuvwxyz234567";
    static uint64_t counter;
    if (!seeded)
        seed();
    char *p = out;
    memcpy(p, COOKIE, COOKIE_LEN);
    p += COOKIE_LEN;
    memcpy(p, branch_prefix, sizeof(branch_prefix));
    p += sizeof(branch_prefix);
    uint64_t c = counter++;
    char tmp[13];
    int n = 0;
    do {
        tmp[n++] = b32[c & 31];
        c >>= 5;
    } while (c);
    while (n)
        *p++ = tmp[--n];
    if (loop_hash && loop_len) {
        size_t room = TXN_BRANCH_MAX - 2 - (size_t)(p - out); /* '.' and the NUL */
        if (loop_len > room)
            loop_len = room;
        *p++ = '.';
        memcpy(p, loop_hash, loop_len);
        p += loop_len;
    }
    *p = 0;
    return (size_t)(p - out);
}
