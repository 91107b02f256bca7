/* The event bus: event registry, raises, event_route handler queue, subscriptions with expiry,
 * virtual delivery policies and the bounded per-sink job queues that keep delivery off the
 * SIP path. SPEC §5.4, §5.5, §6. The sink drivers are in src/evi_<kind>.c (src/evi_sink.h),
 * the event_route queue in src/evi_route.c, socket texts in src/evi_socket.c.
 *
 * Flow of one raise: the params are encoded once into the JSON-RPC notification (and, when a
 * flatstore sink listens, the flatstore line), shared by reference by one job per delivery.
 * A job waits in its sink's queue until the driver takes it (the loop's prepare watcher calls
 * the drivers' flush before the loop sleeps), and comes back through evi_job_done. A virtual:
 * subscription moves a failed job on to its next member; a job nobody delivered is counted as
 * dropped and reported once a second as E_EVENT_DROPPED. A sink whose last subscription goes
 * lingers until what was raised before is out. */
#include "evi.h"
#include "evi_sink.h"
#include "evi_route.h"
#include "evi_socket.h"

#include <errno.h>
#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "json.h"
#include "log.h"
#include "stats.h"
#include "timer.h"

#define HOLD_MS        30000   /* SPEC §6: FAILOVER holds a failed member down for 30 s */
#define REPORT_MS      1000    /* E_EVENT_DROPPED at most once a second per subscription */

/* ------------------------------------------------------------------------------------------
 * Types */

struct evi_payload {
    int refs;
    struct evi_event *ev;
    char *json; size_t json_len;
    char *flat; size_t flat_len;   /* NULL when no flatstore sink wanted it */
};

enum policy {
    POL_DIRECT = 0,
    POL_PARALLEL,
    POL_FAILOVER,
    POL_RR,
};

struct member {
    struct evi_sink *sink;
    uint64_t hold_until;  /* ms; held down while now < hold_until and the sink did not come up */
    uint32_t hold_gen;    /* the sink's up_gen when it was held */
};

struct evi_sub {
    struct evi_event *ev;
    char *socket;
    char *shown;               /* socket with passwords masked */
    enum policy pol;
    struct member m[EVI_VIRTUAL_MAX];
    size_t nm;
    size_t rr;                 /* ROUND-ROBIN: where the next event starts */
    int needs_flat;
    double expire;             /* s, 0 = never */
    uint64_t expires_at;       /* ms on the timer clock */
    struct timer timer;
    int src;
    int refs;                  /* 1 while subscribed + 1 per live job */
    int dead;
    uint64_t delivered, dropped, unreported;
    struct evi_sub *report_next;
    int report_listed;
};

struct evi_event {
    char name[EVI_NAME_MAX + 1];
    size_t nlen;
    int id;
    int builtin;
    uint64_t raised;
    struct evi_sub **subs;
    size_t nsubs, subcap;
    struct evi_route_cache route;  /* does the script have event_route[name] */
};

struct evi_job {
    struct evi_payload *p;
    struct evi_sub *sub;
    struct evi_sink *sink;      /* where it is queued or taken */
    uint8_t member;             /* index into sub->m */
    uint8_t fail_fast;
    uint8_t taken;
    uint32_t tried;             /* members tried (bit per index) */
    struct evi_job *free_next;
};

/* ------------------------------------------------------------------------------------------
 * State */

static struct {
    struct ev_loop *loop;
    struct evi_config cfg;
    int inited;

    struct evi_event **events;
    size_t nevents, evcap;
    int *hash;               /* open addressing: event id + 1, 0 = empty */
    size_t hcap;

    struct evi_sink *sinks;  /* every open sink */
    struct evi_sink *dirty;  /* sinks to flush before the loop sleeps */
    ev_prepare prepare;
    ev_idle idle;

    struct evi_job *free_jobs;
    size_t nfree_jobs;


    struct evi_sub *reports;
    struct timer report_timer;
    struct timer linger_timer;

    int loading;
    struct pending *pending, **ptail;
    int shutting_down;
    int builtins_done;
} E = { .ptail = &E.pending };

/* Subscriptions made while a script loads (evi_script_load_begin). */
struct pending {
    struct pending *next;
    int unsubscribe;
    char *event, *socket;
    double expire;
};

static const struct evi_config default_cfg = { 10000, 0, 2.0, 5.0, 30.0, 10 };

static const char *const builtin_names[] = {
    "E_CORE_STARTED", "E_CORE_TERMINATING", "E_CORE_RELOAD", "E_CORE_THRESHOLD",
    "E_CORE_TCP_DISCONNECT", "E_TLS_HANDSHAKE_FAILED", "E_WS_CLOSED", "E_PIKE_BLOCKED",
    "E_DESTINATION_STATUS", "E_UL_CONTACT_INSERT", "E_UL_CONTACT_DELETE", "E_EVENT_DROPPED",
    "tm:local-request", "core:started", "core:reload", NULL,
};

/* ------------------------------------------------------------------------------------------
 * Registry */

int evi_name_valid(const char *s, size_t n)
{
    if (n == 0 || n > EVI_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == ':' || c == '.' || c == '-'))
            return 0;
    }
    return 1;
}

static uint32_t name_hash(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static int lookup(const char *s, size_t n)
{
    if (!E.hcap)
        return -ENOENT;
    size_t mask = E.hcap - 1;
    for (size_t i = name_hash(s, n) & mask;; i = (i + 1) & mask) {
        int v = E.hash[i];
        if (!v)
            return -ENOENT;
        struct evi_event *ev = E.events[v - 1];
        if (ev->nlen == n && memcmp(ev->name, s, n) == 0)
            return v - 1;
    }
}

static int rehash(size_t cap)
{
    int *h = calloc(cap, sizeof(*h));
    if (!h)
        return -ENOMEM;
    for (size_t k = 0; k < E.nevents; k++) {
        struct evi_event *ev = E.events[k];
        size_t i = name_hash(ev->name, ev->nlen) & (cap - 1);
        while (h[i])
            i = (i + 1) & (cap - 1);
        h[i] = (int)k + 1;
    }
    free(E.hash);
    E.hash = h;
    E.hcap = cap;
    return 0;
}

static int publish(const char *s, size_t n, int builtin)
{
    if (!evi_name_valid(s, n))
        return -EINVAL;
    int id = lookup(s, n);
    if (id >= 0)
        return id;
    if (E.nevents >= EVI_EVENTS_MAX)
        return -ENOSPC;
    if ((E.nevents + 1) * 2 > E.hcap && rehash(E.hcap ? E.hcap * 2 : 64) != 0)
        return -ENOMEM;
    if (E.nevents == E.evcap) {
        size_t cap = E.evcap ? E.evcap * 2 : 32;
        struct evi_event **a = realloc(E.events, cap * sizeof(*a));
        if (!a)
            return -ENOMEM;
        E.events = a;
        E.evcap = cap;
    }
    struct evi_event *ev = calloc(1, sizeof(*ev));
    if (!ev)
        return -ENOMEM;
    memcpy(ev->name, s, n);
    ev->nlen = n;
    ev->id = (int)E.nevents;
    ev->builtin = builtin;
    E.events[E.nevents++] = ev;
    size_t i = name_hash(s, n) & (E.hcap - 1);
    while (E.hash[i])
        i = (i + 1) & (E.hcap - 1);
    E.hash[i] = ev->id + 1;
    if (!builtin)
        LOG_INFO("event %.*s published", (int)n, s);
    return ev->id;
}

static void publish_builtins(void)
{
    if (E.builtins_done)
        return;
    E.builtins_done = 1;
    for (int i = 0; builtin_names[i]; i++)
        publish(builtin_names[i], strlen(builtin_names[i]), 1);
}

int evi_publish(const char *name, size_t len)
{
    publish_builtins();
    return publish(name, len, 0);
}

int evi_find(const char *name, size_t len)
{
    publish_builtins();
    return lookup(name, len);
}

/* ------------------------------------------------------------------------------------------
 * Payloads */

static void payload_unref(struct evi_payload *p)
{
    if (--p->refs > 0)
        return;
    free(p->json);
    free(p->flat);
    free(p);
}

static int params_valid(const struct evi_param *p, size_t n)
{
    if (n > EVI_PARAMS_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if ((p[i].name != NULL) != (p[0].name != NULL))
            return 0; /* named and positional mixed */
        if (p[i].name) {
            if (p[i].nlen == 0 || p[i].nlen > EVI_NAME_MAX)
                return 0;
            for (size_t k = 0; k < p[i].nlen; k++)
                if ((unsigned char)p[i].name[k] < 0x20)
                    return 0;
        }
        if (p[i].type < EVI_T_STR || p[i].type > EVI_T_NIL)
            return 0;
        if (p[i].type == EVI_T_STR && !p[i].s && p[i].slen)
            return 0;
    }
    return 1;
}

static void json_value(struct json_buf *b, const struct evi_param *p)
{
    switch (p->type) {
    case EVI_T_STR: json_str(b, p->s ? p->s : "", p->slen); break;
    case EVI_T_INT: json_int(b, p->i); break;
    case EVI_T_BOOL: json_rawz(b, p->i ? "true" : "false"); break;
    default: json_rawz(b, "null"); break;
    }
}

/* {"jsonrpc":"2.0","method":"NAME","params":{...}|[...]} (params absent when empty): the
 * OpenSIPS >= 3.1 notification. */
static int build_json(struct evi_payload *pl, const struct evi_param *p, size_t n)
{
    struct json_buf b = { .max = EVI_PAYLOAD_MAX };
    json_rawz(&b, "{\"jsonrpc\":\"2.0\",\"method\":");
    json_str(&b, pl->ev->name, pl->ev->nlen);
    if (n) {
        int named = p[0].name != NULL;
        json_rawz(&b, named ? ",\"params\":{" : ",\"params\":[");
        for (size_t i = 0; i < n; i++) {
            if (i)
                json_raw(&b, ",", 1);
            if (named) {
                json_str(&b, p[i].name, p[i].nlen);
                json_raw(&b, ":", 1);
            }
            json_value(&b, &p[i]);
        }
        json_raw(&b, named ? "}" : "]", 1);
    }
    json_raw(&b, "}", 1);
    if (b.oom) {
        int big = b.over;
        json_buf_free(&b);
        return big ? -E2BIG : -ENOMEM;
    }
    pl->json = b.p;
    pl->json_len = b.len;
    return 0;
}

/* "NAME,v1,v2\n" with ',' '\n' '\r' and '\\' escaped by a backslash (SPEC §6). */
static int build_flat(struct evi_payload *pl, const struct evi_param *p, size_t n)
{
    struct json_buf b = { .max = 2 * EVI_PAYLOAD_MAX };
    json_raw(&b, pl->ev->name, pl->ev->nlen);
    for (size_t i = 0; i < n; i++) {
        json_raw(&b, ",", 1);
        char num[24];
        switch (p[i].type) {
        case EVI_T_STR:
            for (size_t k = 0; k < p[i].slen; k++) {
                char c = p[i].s[k];
                if (c == ',' || c == '\\')
                    json_raw(&b, "\\", 1), json_raw(&b, &c, 1);
                else if (c == '\n')
                    json_raw(&b, "\\n", 2);
                else if (c == '\r')
                    json_raw(&b, "\\r", 2);
                else
                    json_raw(&b, &c, 1);
            }
            break;
        case EVI_T_INT:
            json_raw(&b, num, (size_t)snprintf(num, sizeof(num), "%lld", (long long)p[i].i));
            break;
        case EVI_T_BOOL:
            json_rawz(&b, p[i].i ? "true" : "false");
            break;
        default:
            break;
        }
    }
    json_raw(&b, "\n", 1);
    if (b.oom) {
        json_buf_free(&b);
        return -ENOMEM;
    }
    pl->flat = b.p;
    pl->flat_len = b.len;
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * Jobs and sink queues */

static struct evi_job *job_new(struct evi_payload *p, struct evi_sub *sub)
{
    struct evi_job *j = E.free_jobs;
    if (j) {
        E.free_jobs = j->free_next;
        E.nfree_jobs--;
        memset(j, 0, sizeof(*j));
    } else if (!(j = calloc(1, sizeof(*j)))) {
        return NULL;
    }
    j->p = p;
    p->refs++;
    j->sub = sub;
    sub->refs++;
    return j;
}

static void sub_unref(struct evi_sub *s);

static void job_free(struct evi_job *j)
{
    payload_unref(j->p);
    sub_unref(j->sub);
    if (E.nfree_jobs < 4096) {
        j->free_next = E.free_jobs;
        E.free_jobs = j;
        E.nfree_jobs++;
    } else {
        free(j);
    }
}

static void mark_dirty(struct evi_sink *s)
{
    if (s->flush_pending)
        return;
    s->flush_pending = 1;
    s->dirty_next = E.dirty;
    E.dirty = s;
    if (E.loop && !ev_is_active(&E.idle))
        ev_idle_start(E.loop, &E.idle); /* the loop must not sleep before flushing */
}

static int q_grow(struct evi_sink *s)
{
    size_t cap = s->qcap ? s->qcap * 2 : 16;
    struct evi_job **q = malloc(cap * sizeof(*q));
    if (!q)
        return -ENOMEM;
    for (size_t i = 0; i < s->qlen; i++)
        q[i] = s->q[(s->qhead + i) % s->qcap];
    free(s->q);
    s->q = q;
    s->qcap = cap;
    s->qhead = 0;
    return 0;
}

static struct evi_job *q_pop_front(struct evi_sink *s)
{
    if (!s->qlen)
        return NULL;
    struct evi_job *j = s->q[s->qhead];
    s->qhead = (s->qhead + 1) % s->qcap;
    s->qlen--;
    return j;
}

static void job_fail(struct evi_job *j, int err);

/* Queues j on sink s (SPEC §6: bounded, with the overflow policy). */
static void enqueue(struct evi_sink *s, struct evi_job *j)
{
    j->sink = s;
    j->taken = 0;
    /* a member that reported DOWN lately is not worth waiting for; later, a job probes it */
    if (s->state == EVI_SINK_DOWN && j->fail_fast && timer_now() < s->down_since + HOLD_MS) {
        job_fail(j, -ENOTCONN);
        return;
    }
    if ((int)s->qlen >= E.cfg.queue_limit) {
        s->dropped++;
        if (E.cfg.drop_newest) {
            job_fail(j, -ENOBUFS);
            return;
        }
        job_fail(q_pop_front(s), -ENOBUFS);
    }
    if (s->qlen == s->qcap && q_grow(s) != 0) {
        job_fail(j, -ENOMEM);
        return;
    }
    s->q[(s->qhead + s->qlen) % s->qcap] = j;
    s->qlen++;
    stats.events_queued++;
    mark_dirty(s);
}

struct evi_job *evi_sink_take(struct evi_sink *s)
{
    struct evi_job *j = q_pop_front(s);
    if (j) {
        j->taken = 1;
        s->taken++;
    }
    return j;
}

void evi_sink_untake(struct evi_sink *s, struct evi_job *j)
{
    if (s->qlen == s->qcap && q_grow(s) != 0) {
        evi_job_done(j, -ENOMEM);
        return;
    }
    s->qhead = (s->qhead + s->qcap - 1) % s->qcap;
    s->q[s->qhead] = j;
    s->qlen++;
    if (j->taken)
        s->taken--;
    j->taken = 0;
    j->sink = s;
}

size_t evi_sink_queued(const struct evi_sink *s)
{
    return s->qlen;
}

void evi_sink_kick(struct evi_sink *s)
{
    mark_dirty(s);
}

const struct evi_config *evi_sink_config(void)
{
    return &E.cfg;
}

const char *evi_job_json(struct evi_job *j, size_t *len)
{
    *len = j->p->json_len;
    return j->p->json;
}

const char *evi_job_flat(struct evi_job *j, size_t *len)
{
    *len = j->p->flat_len;
    return j->p->flat;
}

const char *evi_job_event(const struct evi_job *j)
{
    return j->p->ev->name;
}

int evi_job_fail_fast(const struct evi_job *j)
{
    return j->fail_fast;
}

/* ------------------------------------------------------------------------------------------
 * Delivery policies */

static int member_held(const struct member *m, uint64_t now)
{
    return now < m->hold_until && m->sink->up_gen == m->hold_gen;
}

/* The next member of j's virtual set to try: untried and not held, else (last resort) the
 * first untried one. -1 when every member was tried. */
static int next_member(struct evi_sub *sub, struct evi_job *j, size_t start)
{
    uint64_t now = timer_now();
    int fallback = -1;
    for (size_t k = 0; k < sub->nm; k++) {
        size_t i = (start + k) % sub->nm;
        if (j->tried & (1u << i))
            continue;
        if (!member_held(&sub->m[i], now))
            return (int)i;
        if (fallback < 0)
            fallback = (int)i;
    }
    return fallback;
}

/* Puts j on member i; fail-fast when another untried member remains after it. */
static void send_to_member(struct evi_sub *sub, struct evi_job *j, int i)
{
    j->member = (uint8_t)i;
    j->tried |= 1u << i;
    j->fail_fast = 0;
    for (size_t k = 0; k < sub->nm; k++)
        if (!(j->tried & (1u << k)))
            j->fail_fast = 1;
    enqueue(sub->m[i].sink, j);
}

static void schedule_report(struct evi_sub *sub)
{
    if (!sub->report_listed) {
        sub->report_listed = 1;
        sub->refs++;
        sub->report_next = E.reports;
        E.reports = sub;
    }
    if (!timer_armed(&E.report_timer) && E.inited)
        timer_start(&E.report_timer, REPORT_MS);
}

static void job_lost(struct evi_job *j)
{
    struct evi_sub *sub = j->sub;
    sub->dropped++;
    stats.events_dropped++;
    if (!E.shutting_down && !sub->dead) {
        sub->unreported++;
        schedule_report(sub);
    }
    job_free(j);
}

/* A delivery attempt failed: a virtual set tries its next member, else the event is lost. */
static void job_fail(struct evi_job *j, int err)
{
    struct evi_sub *sub = j->sub;
    struct evi_sink *s = j->sink;
    if (s)
        s->failed++;
    stats.events_failed++;
    if (err == -ECANCELED || E.shutting_down) { /* the sink is closing: nothing to retry on */
        job_lost(j);
        return;
    }
    if (sub->pol == POL_FAILOVER || sub->pol == POL_RR) {
        struct member *m = &sub->m[j->member];
        m->hold_until = timer_now() + HOLD_MS;
        m->hold_gen = m->sink->up_gen;
        if (!sub->dead) {
            int i = next_member(sub, j, sub->pol == POL_RR ? j->member + 1u : 0);
            if (i >= 0) {
                LOG_DEBUG("event %s to %s failed (%s): trying %s", j->p->ev->name, m->sink->shown,
                          strerror(-err), sub->m[i].sink->shown);
                send_to_member(sub, j, i);
                return;
            }
        }
    }
    job_lost(j);
}

void evi_job_done(struct evi_job *j, int err)
{
    if (j->taken) {
        j->taken = 0;
        j->sink->taken--;
    }
    if (err < 0) {
        job_fail(j, err);
        return;
    }
    j->sink->delivered++;
    j->sub->delivered++;
    stats.events_delivered++;
    job_free(j);
}

/* Starts the delivery of payload p to subscription sub. */
static void deliver(struct evi_sub *sub, struct evi_payload *p)
{
    if (sub->pol == POL_DIRECT || sub->pol == POL_PARALLEL) {
        for (size_t i = 0; i < sub->nm; i++) {
            struct evi_job *j = job_new(p, sub);
            if (!j) {
                sub->dropped++;
                stats.events_dropped++;
                continue;
            }
            j->member = (uint8_t)i;
            j->tried = 1u << i;
            enqueue(sub->m[i].sink, j);
        }
        return;
    }
    struct evi_job *j = job_new(p, sub);
    if (!j) {
        sub->dropped++;
        stats.events_dropped++;
        return;
    }
    /* ROUND-ROBIN: the next event starts past the member this one goes to, so a member
     * that is held does not hand its turn to its neighbour on top of the neighbour's own */
    int i = next_member(sub, j, sub->pol == POL_RR ? sub->rr : 0);
    if (sub->pol == POL_RR)
        sub->rr = ((size_t)i + 1) % sub->nm;
    send_to_member(sub, j, i);
}

/* ------------------------------------------------------------------------------------------
 * Sinks */

static char *masked_dup(const char *s)
{
    char buf[EVI_SOCKET_MAX + 8];
    evi_socket_mask(s, buf, sizeof(buf));
    return strdup(buf);
}

/* Opens (or only checks) a concrete sink for text s (NUL-terminated). */
static int sink_open(const char *s, int check_only, struct evi_sink **out, char *err, size_t errlen)
{
    const char *addr = NULL;
    const struct evi_sink_ops *ops = evi_socket_driver(s, strlen(s), &addr);
    if (!ops) {
        snprintf(err, errlen, "'%s': unknown event socket; allowed: " EVI_SOCKETS_ALLOWED, s);
        return -EINVAL;
    }
    if (!check_only) {
        for (struct evi_sink *k = E.sinks; k; k = k->next)
            if (strcmp(k->socket, s) == 0) {
                k->lingering = 0; /* subscribed again before it closed */
                *out = k;
                return 0;
            }
    }
    struct evi_sink *k = calloc(1, ops->size);
    if (!k || !(k->socket = strdup(s)) || !(k->shown = masked_dup(s))) {
        if (k)
            free(k->socket);
        free(k);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    k->ops = ops;
    k->loop = E.loop;
    k->addr = k->socket + (addr - s);
    int rc = ops->open(k, check_only, err, errlen);
    if (rc != 0 || check_only) {
        free(k->socket);
        free(k->shown);
        free(k);
        return rc;
    }
    k->next = E.sinks;
    E.sinks = k;
    *out = k;
    LOG_INFO("event socket %s opened", k->shown);
    return 0;
}

#define LINGER_MAX_MS 10000
#define LINGER_TICK_MS 100

static void on_linger(struct timer *t);

/* The last subscription let the sink go: it stays open while jobs raised before are still
 * queued or held by the driver (up to connect + send timeout, at most 10 s), so an
 * unsubscribe or an expiry does not lose them. Closed from the loop, never from inside a
 * driver's own callback. */
static void sink_unref(struct evi_sink *s)
{
    if (--s->refs > 0)
        return;
    uint64_t now = timer_now();
    if (!E.shutting_down && (s->qlen || s->taken)) {
        if (!s->lingering) {
            double ms = (E.cfg.connect_timeout + E.cfg.send_timeout) * 1000.0;
            s->lingering = 1;
            s->linger_until = now + (ms < 1000 ? 1000 : ms > LINGER_MAX_MS ? LINGER_MAX_MS : (uint64_t)ms);
            LOG_DEBUG("event socket %s: %zu event(s) still to deliver before it closes", s->shown,
                      s->qlen + s->taken);
        }
        if (now < s->linger_until) {
            if (E.inited && !timer_armed(&E.linger_timer))
                timer_start(&E.linger_timer, LINGER_TICK_MS);
            return;
        }
    }
    for (struct evi_sink **pp = &E.sinks; *pp; pp = &(*pp)->next)
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    for (struct evi_sink **pp = &E.dirty; *pp; pp = &(*pp)->dirty_next)
        if (*pp == s) {
            *pp = s->dirty_next;
            break;
        }
    s->flush_pending = 0;
    struct evi_job *j;
    while ((j = q_pop_front(s)) != NULL)
        job_fail(j, -ECANCELED);
    s->ops->close(s);
    LOG_INFO("event socket %s closed", s->shown);
    free(s->q);
    free(s->socket);
    free(s->shown);
    free(s);
}

static void on_linger(struct timer *t)
{
    (void)t;
    int left = 0;
    struct evi_sink *s = E.sinks;
    while (s) {
        struct evi_sink *next = s->next;
        if (s->lingering && s->refs == 0) {
            s->refs++;
            sink_unref(s); /* closes it when done or out of time */
        }
        s = next;
    }
    for (s = E.sinks; s; s = s->next)
        if (s->lingering && s->refs == 0)
            left = 1;
    if (left)
        timer_start(&E.linger_timer, LINGER_TICK_MS);
}

void evi_sink_set_state(struct evi_sink *s, enum evi_sink_state st, const char *why)
{
    if (st == EVI_SINK_DOWN)
        s->down_since = timer_now();
    if (s->state == st && st != EVI_SINK_DOWN)
        return;
    enum evi_sink_state old = s->state;
    s->state = st;
    if (st == EVI_SINK_UP) {
        s->up_gen++;
        if (old == EVI_SINK_DOWN)
            LOG_NOTICE("event socket %s is up again%s%s", s->shown, why ? ": " : "", why ? why : "");
        else
            LOG_INFO("event socket %s is up%s%s", s->shown, why ? ": " : "", why ? why : "");
        mark_dirty(s);
    } else if (st == EVI_SINK_DOWN) {
        if (old != EVI_SINK_DOWN)
            LOG_WARN("event socket %s is down: %s", s->shown, why ? why : "delivery failed");
        evi_sink_fail_fast(s); /* queued fail-fast jobs go to their next member now */
    }
}

void evi_sink_fail_fast(struct evi_sink *s)
{
    if (s->state != EVI_SINK_DOWN)
        return;
    size_t n = s->qlen;
    for (size_t k = 0; k < n; k++) {
        struct evi_job *j = q_pop_front(s);
        if (j->fail_fast)
            job_fail(j, -ENOTCONN);
        else
            s->q[(s->qhead + s->qlen++) % s->qcap] = j;
    }
}

double evi_sink_backoff(double *next)
{
    double d = *next < EVI_BACKOFF_MIN ? EVI_BACKOFF_MIN : *next;
    if (d > E.cfg.retry_max)
        d = E.cfg.retry_max;
    *next = d * 2;
    return d;
}

/* ------------------------------------------------------------------------------------------
 * Subscriptions */

static void sub_unref(struct evi_sub *s)
{
    if (--s->refs > 0)
        return;
    free(s->socket);
    free(s->shown);
    free(s);
}

static void sub_remove(struct evi_sub *sub)
{
    struct evi_event *ev = sub->ev;
    for (size_t i = 0; i < ev->nsubs; i++)
        if (ev->subs[i] == sub) {
            memmove(&ev->subs[i], &ev->subs[i + 1], (ev->nsubs - i - 1) * sizeof(*ev->subs));
            ev->nsubs--;
            break;
        }
    sub->dead = 1;
    timer_stop(&sub->timer);
    /* closing sinks completes jobs that reference sub: its own reference keeps it */
    for (size_t i = 0; i < sub->nm; i++)
        sink_unref(sub->m[i].sink);
    sub->nm = 0;
    sub_unref(sub); /* the subscription's own reference */
}

static void on_expire(struct timer *t)
{
    struct evi_sub *sub = (struct evi_sub *)((char *)t - offsetof(struct evi_sub, timer));
    stats.events_expired++;
    LOG_INFO("subscription of %s to %s expired", sub->ev->name, sub->shown);
    sub_remove(sub);
}

/* Parses a socket text into sub's policy and members (opened unless check_only). */
static int parse_socket(const char *sock, struct evi_sub *sub, int check_only, char *err, size_t errlen)
{
    if (strncmp(sock, "virtual:", 8) != 0) {
        sub->pol = POL_DIRECT;
        sub->nm = 0;
        struct evi_sink *k = NULL;
        int rc = sink_open(sock, check_only, &k, err, errlen);
        if (rc != 0)
            return rc;
        if (!check_only) {
            k->refs++;
            sub->m[0].sink = k;
            sub->nm = 1;
        }
        return 0;
    }
    const char *p = sock + 8;
    const char *sp = strchr(p, ' ');
    size_t plen = sp ? (size_t)(sp - p) : strlen(p);
    if (plen == 8 && memcmp(p, "PARALLEL", 8) == 0)
        sub->pol = POL_PARALLEL;
    else if (plen == 8 && memcmp(p, "FAILOVER", 8) == 0)
        sub->pol = POL_FAILOVER;
    else if (plen == 11 && memcmp(p, "ROUND-ROBIN", 11) == 0)
        sub->pol = POL_RR;
    else {
        snprintf(err, errlen, "'%s': unknown virtual policy '%.*s'; allowed: PARALLEL, FAILOVER, "
                 "ROUND-ROBIN (upper case)", sock, (int)plen, p);
        return -EINVAL;
    }
    if (!sp) {
        snprintf(err, errlen, "'%s': a virtual socket needs at least one member socket", sock);
        return -EINVAL;
    }
    sub->nm = 0;
    p = sp + 1;
    while (*p) {
        const char *e = strchr(p, ' ');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        char one[EVI_SOCKET_MAX];
        snprintf(one, sizeof(one), "%.*s", (int)l, p);
        int rc;
        if (strncmp(one, "virtual:", 8) == 0) {
            snprintf(err, errlen, "'%s': a virtual socket cannot contain another one", sock);
            rc = -EINVAL;
        } else if (sub->nm >= EVI_VIRTUAL_MAX) {
            snprintf(err, errlen, "'%s': more than %d members", sock, EVI_VIRTUAL_MAX);
            rc = -EINVAL;
        } else {
            struct evi_sink *k = NULL;
            rc = sink_open(one, check_only, &k, err, errlen);
            if (rc == 0 && !check_only) {
                for (size_t i = 0; i < sub->nm; i++)
                    if (sub->m[i].sink == k) {
                        snprintf(err, errlen, "'%s': member %s is listed twice", sock, one);
                        rc = -EINVAL;
                    }
                if (rc == 0) {
                    k->refs++;
                    sub->m[sub->nm].sink = k;
                }
            }
            if (rc == 0)
                sub->nm++;
        }
        if (rc != 0) {
            if (!check_only)
                for (size_t i = 0; i < sub->nm; i++)
                    sink_unref(sub->m[i].sink);
            sub->nm = 0;
            return rc;
        }
        p += l;
        if (*p == ' ')
            p++;
    }
    if (check_only)
        sub->nm = 0;
    return 0;
}

/* Error texts quote the socket: never with its password. */
static int masked_err(int rc, char *err, size_t errlen)
{
    if (rc != 0 && errlen) {
        char tmp[1024];
        snprintf(tmp, sizeof(tmp), "%s", err);
        evi_socket_mask(tmp, err, errlen);
    }
    return rc;
}

static int socket_check(const char *socket, size_t slen, char *err, size_t errlen);

int evi_socket_check(const char *socket, size_t slen, char *err, size_t errlen)
{
    return masked_err(socket_check(socket, slen, err, errlen), err, errlen);
}

static int socket_check(const char *socket, size_t slen, char *err, size_t errlen)
{
    char norm[EVI_SOCKET_MAX];
    if (slen >= EVI_SOCKET_MAX || memchr(socket, 0, slen) || !evi_socket_normalize(socket, slen, norm, sizeof(norm))) {
        snprintf(err, errlen, "event socket longer than %d bytes or with a NUL byte", EVI_SOCKET_MAX - 1);
        return -EINVAL;
    }
    struct evi_sub tmp;
    memset(&tmp, 0, sizeof(tmp));
    return parse_socket(norm, &tmp, 1, err, errlen);
}

static struct evi_sub *find_sub(struct evi_event *ev, const char *norm)
{
    for (size_t i = 0; i < ev->nsubs; i++)
        if (strcmp(ev->subs[i]->socket, norm) == 0)
            return ev->subs[i];
    return NULL;
}

static void set_expiry(struct evi_sub *sub, double expire)
{
    sub->expire = expire;
    if (expire > 0) {
        uint64_t ms = (uint64_t)(expire * 1000.0);
        sub->expires_at = timer_now() + ms;
        timer_start(&sub->timer, ms);
    } else {
        sub->expires_at = 0;
        timer_stop(&sub->timer);
    }
}

static int subscribe_now(const char *event, size_t elen, const char *norm, double expire, int src,
                         char *err, size_t errlen)
{
    int id = evi_publish(event, elen);
    if (id < 0) {
        if (id == -EINVAL)
            snprintf(err, errlen, "'%.*s': not an event name (1..%d of A-Z a-z 0-9 _ : . -)",
                     (int)(elen > 80 ? 80 : elen), event, EVI_NAME_MAX);
        else
            snprintf(err, errlen, "cannot publish %.*s: %s", (int)(elen > 80 ? 80 : elen), event, strerror(-id));
        return id;
    }
    struct evi_event *ev = E.events[id];
    struct evi_sub *sub = find_sub(ev, norm);
    if (sub) {
        set_expiry(sub, expire);
        if (expire > 0)
            LOG_INFO("subscription of %s to %s refreshed (expires in %g s)", ev->name, sub->shown, expire);
        else
            LOG_INFO("subscription of %s to %s refreshed (never expires)", ev->name, sub->shown);
        return 0;
    }
    if (ev->nsubs >= EVI_SUBS_MAX) {
        snprintf(err, errlen, "%s already has %d subscriptions", ev->name, EVI_SUBS_MAX);
        return -ENOSPC;
    }
    if (ev->nsubs == ev->subcap) {
        size_t cap = ev->subcap ? ev->subcap * 2 : 4;
        struct evi_sub **a = realloc(ev->subs, cap * sizeof(*a));
        if (!a) {
            snprintf(err, errlen, "out of memory");
            return -ENOMEM;
        }
        ev->subs = a;
        ev->subcap = cap;
    }
    sub = calloc(1, sizeof(*sub));
    if (!sub || !(sub->socket = strdup(norm)) || !(sub->shown = masked_dup(norm))) {
        if (sub)
            free(sub->socket);
        free(sub);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    sub->ev = ev;
    sub->src = src;
    sub->refs = 1;
    timer_init(&sub->timer, on_expire);
    int rc = parse_socket(norm, sub, 0, err, errlen);
    if (rc != 0) {
        free(sub->socket);
        free(sub->shown);
        free(sub);
        return rc;
    }
    for (size_t i = 0; i < sub->nm; i++)
        if (sub->m[i].sink->ops->flat)
            sub->needs_flat = 1;
    ev->subs[ev->nsubs++] = sub;
    set_expiry(sub, expire);
    if (expire > 0)
        LOG_INFO("%s subscribed to %s (expires in %g s)", sub->shown, ev->name, expire);
    else
        LOG_INFO("%s subscribed to %s (never expires)", sub->shown, ev->name);
    return 0;
}

static int add_pending(int unsub, const char *event, size_t elen, const char *norm, double expire)
{
    struct pending *p = calloc(1, sizeof(*p));
    if (!p || !(p->event = strndup(event, elen)) || !(p->socket = strdup(norm))) {
        if (p)
            free(p->event);
        free(p);
        return -ENOMEM;
    }
    p->unsubscribe = unsub;
    p->expire = expire;
    *E.ptail = p;
    E.ptail = &p->next;
    return 0;
}

static int subscribe(const char *event, size_t elen, const char *socket, size_t slen, double expire,
                     enum evi_src src, char *err, size_t errlen);

int evi_subscribe(const char *event, size_t elen, const char *socket, size_t slen, double expire,
                  enum evi_src src, char *err, size_t errlen)
{
    return masked_err(subscribe(event, elen, socket, slen, expire, src, err, errlen), err, errlen);
}

static int subscribe(const char *event, size_t elen, const char *socket, size_t slen, double expire,
                     enum evi_src src, char *err, size_t errlen)
{
    char norm[EVI_SOCKET_MAX];
    if (!evi_name_valid(event, elen)) {
        snprintf(err, errlen, "'%.*s': not an event name (1..%d of A-Z a-z 0-9 _ : . -)",
                 (int)(elen > 80 ? 80 : elen), event, EVI_NAME_MAX);
        return -EINVAL;
    }
    if (!(expire >= 0) || expire > 10 * 365 * 86400.0) {
        snprintf(err, errlen, "expire %g: must be 0 (never) or a number of seconds", expire);
        return -EINVAL;
    }
    if (slen >= EVI_SOCKET_MAX || memchr(socket, 0, slen) || !evi_socket_normalize(socket, slen, norm, sizeof(norm)) ||
        !norm[0]) {
        snprintf(err, errlen, "event socket empty, longer than %d bytes or with a NUL byte; allowed: "
                 EVI_SOCKETS_ALLOWED, EVI_SOCKET_MAX - 1);
        return -EINVAL;
    }
    if (E.loading && src == EVI_SRC_SCRIPT) {
        int rc = socket_check(norm, strlen(norm), err, errlen);
        if (rc == 0 && (rc = add_pending(0, event, elen, norm, expire)) != 0)
            snprintf(err, errlen, "out of memory");
        return rc;
    }
    if (!E.inited) {
        int rc = socket_check(norm, strlen(norm), err, errlen);
        if (rc != 0)
            return rc;
        snprintf(err, errlen, "the event interface is not running");
        return -EAGAIN;
    }
    return subscribe_now(event, elen, norm, expire, src, err, errlen);
}

int evi_unsubscribe(const char *event, size_t elen, const char *socket, size_t slen)
{
    char norm[EVI_SOCKET_MAX];
    if (slen >= EVI_SOCKET_MAX || !evi_socket_normalize(socket, slen, norm, sizeof(norm)))
        return -ENOENT;
    if (E.loading) {
        if (!evi_name_valid(event, elen))
            return -ENOENT;
        return add_pending(1, event, elen, norm, 0);
    }
    int id = lookup(event, elen);
    if (id < 0)
        return -ENOENT;
    struct evi_sub *sub = find_sub(E.events[id], norm);
    if (!sub)
        return -ENOENT;
    LOG_INFO("%s unsubscribed from %s", sub->shown, E.events[id]->name);
    sub_remove(sub);
    return 0;
}

void evi_script_load_begin(void)
{
    E.loading = 1;
}

void evi_script_load_end(int installed)
{
    E.loading = 0;
    struct pending *p = E.pending;
    E.pending = NULL;
    E.ptail = &E.pending;
    while (p) {
        struct pending *n = p->next;
        if (installed) {
            char err[512];
            if (p->unsubscribe)
                evi_unsubscribe(p->event, strlen(p->event), p->socket, strlen(p->socket));
            else if (subscribe_now(p->event, strlen(p->event), p->socket, p->expire, EVI_SRC_SCRIPT, err,
                                   sizeof(err)) != 0)
            {
                char shown[EVI_SOCKET_MAX + 8], why[1024];
                evi_socket_mask(p->socket, shown, sizeof(shown));
                evi_socket_mask(err, why, sizeof(why));
                LOG_ERROR("subscribe_event(%s, %s): %s", p->event, shown, why);
            }
        }
        free(p->event);
        free(p->socket);
        free(p);
        p = n;
    }
}

/* ------------------------------------------------------------------------------------------
 * Raising */

int evi_raise(const char *name, size_t nlen, const struct evi_param *p, size_t n, int with_handlers)
{
    if (!params_valid(p, n))
        return -EINVAL;
    if (E.loading) {
        /* server.lua is loading and may yet be refused: it raises nothing (SPEC 5.6) */
        LOG_DEBUG("raise_event(%.*s) while server.lua loads: ignored", (int)nlen, name);
        return 0;
    }
    int id = evi_publish(name, nlen);
    if (id < 0)
        return id;
    struct evi_event *ev = E.events[id];
    ev->raised++;
    stats.events_raised++;
    if (with_handlers && evi_route_wanted(&ev->route) && evi_route_queue(ev->name, &ev->route, p, n) &&
        E.loop && !ev_is_active(&E.idle))
        ev_idle_start(E.loop, &E.idle); /* the handler runs before the loop sleeps */
    if (!ev->nsubs || !E.inited)
        return 0;
    struct evi_payload *pl = calloc(1, sizeof(*pl));
    if (!pl)
        return -ENOMEM;
    pl->refs = 1;
    pl->ev = ev;
    int rc = build_json(pl, p, n);
    int flat = 0;
    for (size_t i = 0; rc == 0 && i < ev->nsubs; i++)
        flat |= ev->subs[i]->needs_flat;
    if (rc == 0 && flat)
        rc = build_flat(pl, p, n);
    if (rc != 0) {
        /* lost for every subscriber: counted and reported like any other drop */
        LOG_WARN("event %s not delivered to its %zu subscription(s): %s", ev->name, ev->nsubs,
                 rc == -E2BIG ? "payload above 64 KB" : "out of memory");
        for (size_t i = 0; i < ev->nsubs; i++) {
            struct evi_sub *sub = ev->subs[i];
            sub->dropped++;
            sub->unreported++;
            stats.events_dropped++;
            schedule_report(sub);
        }
        payload_unref(pl);
        return rc;
    }
    /* deliveries can fail synchronously and end subscriptions' jobs: walk a snapshot */
    size_t ns = ev->nsubs;
    struct evi_sub *snap[EVI_SUBS_MAX];
    memcpy(snap, ev->subs, ns * sizeof(*snap));
    for (size_t i = 0; i < ns; i++)
        snap[i]->refs++;
    for (size_t i = 0; i < ns; i++) {
        if (!snap[i]->dead)
            deliver(snap[i], pl);
        sub_unref(snap[i]);
    }
    payload_unref(pl);
    return (int)ns;
}

int evi_raise_core(const char *name, const struct evi_param *p, size_t n)
{
    int rc = evi_raise(name, strlen(name), p, n, 1);
    const char *alias = NULL;
    if (strcmp(name, "E_CORE_STARTED") == 0)
        alias = "core:started";
    else if (strcmp(name, "E_CORE_RELOAD") == 0)
        alias = "core:reload";
    if (alias) {
        int r2 = evi_raise(alias, strlen(alias), p, n, 1);
        if (rc >= 0 && r2 > 0)
            rc += r2;
    }
    return rc;
}

/* ------------------------------------------------------------------------------------------
 * Drop reports (SPEC §5.5 E_EVENT_DROPPED, rate-limited) */

static void on_report(struct timer *t)
{
    (void)t;
    struct evi_sub *list = E.reports;
    E.reports = NULL;
    while (list) {
        struct evi_sub *sub = list;
        list = sub->report_next;
        sub->report_listed = 0;
        uint64_t n = sub->unreported;
        sub->unreported = 0;
        if (n) {
            LOG_WARN("%llu event(s) %s to %s dropped in the last second (%llu in all)",
                     (unsigned long long)n, sub->ev->name, sub->shown, (unsigned long long)sub->dropped);
            /* drops of E_EVENT_DROPPED itself are logged, never raised again */
            if (strcmp(sub->ev->name, "E_EVENT_DROPPED") != 0) {
                struct evi_param p[] = {
                    EVI_STRN("event", sub->ev->name, sub->ev->nlen),
                    EVI_STR("socket", sub->shown),
                    EVI_INT("count", n),
                };
                evi_raise("E_EVENT_DROPPED", 15, p, 3, 1);
            }
        }
        sub_unref(sub);
    }
}

/* ------------------------------------------------------------------------------------------
 * The loop: handlers, then flushes, before the loop sleeps */

static void flush_dirty(void)
{
    /* a flush may kick sinks (its own included): those wait for the next round */
    struct evi_sink *list = E.dirty;
    E.dirty = NULL;
    while (list) {
        struct evi_sink *s = list;
        list = s->dirty_next;
        s->flush_pending = 0;
        s->refs++;
        s->ops->flush(s);
        sink_unref(s);
    }
}

static void on_prepare(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
    for (int round = 0; round < 4 && (evi_route_pending() || E.dirty); round++) {
        evi_run_handlers();
        flush_dirty();
    }
    if (!evi_route_pending() && !E.dirty && ev_is_active(&E.idle))
        ev_idle_stop(E.loop, &E.idle);
}

static void on_idle(struct ev_loop *loop, ev_idle *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
    /* only keeps the loop from sleeping while work waits; on_prepare does it */
}

int evi_init(struct ev_loop *loop, const struct evi_config *cfg)
{
    publish_builtins();
    E.loop = loop;
    evi_configure(cfg ? cfg : &default_cfg);
    timer_init(&E.report_timer, on_report);
    timer_init(&E.linger_timer, on_linger);
    if (loop) {
        ev_prepare_init(&E.prepare, on_prepare);
        ev_prepare_start(loop, &E.prepare);
        ev_unref(loop); /* the prepare watcher alone must not keep ev_run alive */
        ev_idle_init(&E.idle, on_idle);
    }
    E.inited = 1;
    return 0;
}

/* Takes cfg, a value out of range replaced by its default (lunasip.conf is validated; this
 * keeps the drivers free of checks of their own). */
void evi_configure(const struct evi_config *cfg)
{
    if (!cfg)
        return;
    E.cfg = *cfg;
    if (E.cfg.queue_limit < 1)
        E.cfg.queue_limit = 1;
    if (!(E.cfg.connect_timeout > 0))
        E.cfg.connect_timeout = default_cfg.connect_timeout;
    if (!(E.cfg.send_timeout > 0))
        E.cfg.send_timeout = default_cfg.send_timeout;
    if (!(E.cfg.retry_max >= EVI_BACKOFF_MIN))
        E.cfg.retry_max = EVI_BACKOFF_MIN;
    if (E.cfg.heartbeat < 0)
        E.cfg.heartbeat = 0;
}

static size_t busy_sinks(void)
{
    size_t n = 0;
    for (struct evi_sink *s = E.sinks; s; s = s->next)
        if (s->qlen || s->taken)
            n++;
    return n;
}

static void on_grace_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
}

void evi_shutdown(double grace)
{
    if (!E.inited)
        return;
    /* let the sinks deliver what is queued, for at most grace seconds */
    if (E.loop && grace > 0 && busy_sinks()) {
        ev_timer tick;
        ev_timer_init(&tick, on_grace_tick, 0.02, 0.02);
        ev_timer_start(E.loop, &tick);
        ev_tstamp deadline = ev_now(E.loop) + grace;
        while (busy_sinks() && ev_now(E.loop) < deadline)
            ev_run(E.loop, EVRUN_ONCE);
        ev_timer_stop(E.loop, &tick);
    }
    E.shutting_down = 1;
    uint64_t lost_before = stats.events_dropped;
    for (size_t i = 0; i < E.nevents; i++) {
        struct evi_event *ev = E.events[i];
        while (ev->nsubs)
            sub_remove(ev->subs[ev->nsubs - 1]);
    }
    if (stats.events_dropped > lost_before)
        LOG_WARN("%llu event delivery(ies) still queued at exit were dropped",
                 (unsigned long long)(stats.events_dropped - lost_before));
    while (E.reports) {
        struct evi_sub *s = E.reports;
        E.reports = s->report_next;
        s->report_listed = 0;
        sub_unref(s);
    }
    timer_stop(&E.report_timer);
    timer_stop(&E.linger_timer);
    /* sinks left lingering close now */
    while (E.sinks) {
        struct evi_sink *s = E.sinks;
        s->refs++;
        sink_unref(s);
    }
    evi_route_clear();
    evi_script_load_end(0);
    if (E.loop) {
        ev_ref(E.loop);
        ev_prepare_stop(E.loop, &E.prepare);
        ev_idle_stop(E.loop, &E.idle);
    }
    for (size_t i = 0; i < E.nevents; i++) {
        free(E.events[i]->subs);
        free(E.events[i]);
    }
    free(E.events);
    free(E.hash);
    while (E.free_jobs) {
        struct evi_job *j = E.free_jobs;
        E.free_jobs = j->free_next;
        free(j);
    }
    memset(&E, 0, sizeof(E));
    E.ptail = &E.pending;
}

/* ------------------------------------------------------------------------------------------
 * Introspection */

size_t evi_event_count(void)
{
    publish_builtins();
    return E.nevents;
}

int evi_event_info(int id, struct evi_event_info *out)
{
    if (id < 0 || (size_t)id >= E.nevents)
        return -ENOENT;
    struct evi_event *ev = E.events[id];
    out->name = ev->name;
    out->id = ev->id;
    out->builtin = ev->builtin;
    out->nsubs = ev->nsubs;
    out->raised = ev->raised;
    return 0;
}

int evi_sub_info(int id, size_t idx, struct evi_sub_info *out)
{
    if (id < 0 || (size_t)id >= E.nevents || idx >= E.events[id]->nsubs)
        return -ENOENT;
    struct evi_sub *s = E.events[id]->subs[idx];
    out->socket = s->shown;
    out->expire = s->expire;
    out->expires_in = 0;
    if (s->expires_at) {
        uint64_t now = timer_now();
        out->expires_in = s->expires_at > now ? (double)(s->expires_at - now) / 1000.0 : 0.001;
    }
    out->src = s->src;
    out->delivered = s->delivered;
    out->dropped = s->dropped;
    return 0;
}

size_t evi_sink_count(void)
{
    size_t n = 0;
    for (struct evi_sink *s = E.sinks; s; s = s->next)
        n++;
    return n;
}

int evi_sink_info(size_t idx, struct evi_sink_info *out)
{
    static const char *const names[] = { "unknown", "up", "down" };
    struct evi_sink *s = E.sinks;
    while (s && idx--)
        s = s->next;
    if (!s)
        return -ENOENT;
    out->socket = s->shown;
    out->state = names[s->state];
    out->queued = s->qlen;
    out->delivered = s->delivered;
    out->failed = s->failed;
    out->dropped = s->dropped;
    return 0;
}

int evi_reopen(const char *path)
{
    int n = 0;
    for (struct evi_sink *s = E.sinks; s; s = s->next) {
        if (!s->ops->reopen)
            continue;
        if (path && strcmp(s->addr, path) != 0)
            continue;
        s->ops->reopen(s);
        n++;
    }
    return n;
}
