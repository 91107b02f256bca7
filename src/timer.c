/* Timers on a millisecond clock: one binary min-heap ordered by (deadline, arming sequence),
 * driven by a single libev ev_timer in the daemon or by a virtual clock in tests. Serves the
 * RFC 3261 §17 transaction timers and the proxy core. */
#include <errno.h>
#include <stdlib.h>
#include <time.h>

#include <ev.h>

#include "timer.h"

/* A heap slot carries a copy of the ordering key so sifting never dereferences a timer. */
struct slot {
    uint64_t when;
    uint64_t seq;
    struct timer *t;
};

static struct slot *heap;
static size_t heap_n, heap_cap;
static uint64_t next_seq;

static int virtual_clock;
static uint64_t virtual_now;

static struct ev_loop *ev_loop_;
static ev_timer ev_tick;
static ev_prepare ev_prep;
#define TIMER_SLACK_MS 20
static uint64_t armed_when;   /* deadline the ev_timer is set for; UINT64_MAX when stopped */

static inline int slot_less(const struct slot *a, const struct slot *b)
{
    return a->when < b->when || (a->when == b->when && a->seq < b->seq);
}

static inline void slot_set(size_t i, struct slot s)
{
    heap[i] = s;
    s.t->idx = (uint32_t)(i + 1);
}

static void sift_up(size_t i, struct slot s)
{
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!slot_less(&s, &heap[p]))
            break;
        slot_set(i, heap[p]);
        i = p;
    }
    slot_set(i, s);
}

static void sift_down(size_t i, struct slot s)
{
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= heap_n)
            break;
        if (c + 1 < heap_n && slot_less(&heap[c + 1], &heap[c]))
            c++;
        if (!slot_less(&heap[c], &s))
            break;
        slot_set(i, heap[c]);
        i = c;
    }
    slot_set(i, s);
}

/* Removes the slot at heap index i (0-based) and fixes the heap. */
static void heap_remove(size_t i)
{
    heap[i].t->idx = 0;
    heap_n--;
    if (i == heap_n)
        return;
    struct slot last = heap[heap_n];
    if (i > 0 && slot_less(&last, &heap[(i - 1) / 2]))
        sift_up(i, last);
    else
        sift_down(i, last);
}

void timer_init(struct timer *t, void (*cb)(struct timer *t))
{
    t->when = 0;
    t->idx = 0;
    t->cb = cb;
}

uint64_t timer_now(void)
{
    if (virtual_clock)
        return virtual_now;
    if (ev_loop_)
        return (uint64_t)(ev_now(ev_loop_) * 1000.0);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

size_t timer_count(void)
{
    return heap_n;
}

int timer_start(struct timer *t, uint64_t after_ms)
{
    struct slot s = { timer_now() + after_ms, next_seq++, t };
    t->when = s.when;
    if (t->idx) {
        /* re-arm in place: the new key is never smaller in seq, maybe smaller in time */
        size_t i = t->idx - 1;
        if (i > 0 && slot_less(&s, &heap[(i - 1) / 2]))
            sift_up(i, s);
        else
            sift_down(i, s);
        return 0;
    }
    if (heap_n == heap_cap) {
        size_t ncap = heap_cap ? heap_cap * 2 : 256;
        if (ncap > UINT32_MAX - 1)
            return -ENOMEM;
        struct slot *nh = realloc(heap, ncap * sizeof(*nh));
        if (!nh)
            return -ENOMEM;
        heap = nh;
        heap_cap = ncap;
    }
    heap_n++;
    sift_up(heap_n - 1, s);
    return 0;
}

void timer_stop(struct timer *t)
{
    if (t->idx)
        heap_remove(t->idx - 1);
}

/* Pops and fires the earliest timer if it is due at now. Returns 0 when none is. */
static int fire_one(uint64_t now)
{
    if (heap_n == 0 || heap[0].when > now)
        return 0;
    struct timer *t = heap[0].t;
    heap_remove(0);
    t->cb(t);
    return 1;
}

void timer_run(uint64_t now)
{
    while (fire_one(now))
        ;
}

void timer_use_virtual_clock(uint64_t start_ms)
{
    virtual_clock = 1;
    virtual_now = start_ms;
}

void timer_advance(uint64_t ms)
{
    uint64_t target = virtual_now + ms;
    while (heap_n && heap[0].when <= target) {
        if (heap[0].when > virtual_now)
            virtual_now = heap[0].when; /* the callback sees its own deadline */
        fire_one(virtual_now);
    }
    virtual_now = target;
}

/* ----- libev driver ----- */

/* Sets the one ev_timer to the earliest deadline. Called once per loop iteration (prepare)
 * and after each run, so arming a timer costs only the heap operation. */
static void ev_sync(struct ev_loop *loop)
{
    uint64_t want = heap_n ? heap[0].when : UINT64_MAX;
    if (want == armed_when)
        return;
    ev_timer_stop(loop, &ev_tick);
    armed_when = want;
    if (want == UINT64_MAX)
        return;
    uint64_t now = timer_now();
    /* Coalescing: wake at the next TIMER_SLACK_MS boundary at or after the deadline, so
     * the thousands of transaction timers a busy proxy ends per second (Timers J, K, L,
     * M, ...) cost tens of wake-ups a second, not one each. A timer fires at most
     * TIMER_SLACK_MS late, never early. +0.5 ms: libev must not wake us just before the
     * ms boundary our clock truncates to. */
    uint64_t at = (want + TIMER_SLACK_MS - 1) / TIMER_SLACK_MS * TIMER_SLACK_MS;
    double after = at > now ? (double)(at - now) / 1000.0 + 0.0005 : 0.0;
    ev_timer_set(&ev_tick, after, 0.0);
    ev_timer_start(loop, &ev_tick);
}

static void on_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)w;
    (void)revents;
    armed_when = UINT64_MAX; /* a one-shot: it is stopped now */
    timer_run(timer_now());
    ev_sync(loop);
}

static void on_prepare(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)w;
    (void)revents;
    ev_sync(loop);
}

void timer_attach(struct ev_loop *loop)
{
    if (ev_loop_)
        timer_detach();
    ev_loop_ = loop;
    armed_when = UINT64_MAX;
    ev_timer_init(&ev_tick, on_tick, 0.0, 0.0);
    ev_prepare_init(&ev_prep, on_prepare);
    ev_prepare_start(loop, &ev_prep);
    ev_unref(loop); /* the prepare watcher alone must not keep the loop running */
    ev_sync(loop);
}

void timer_detach(void)
{
    if (!ev_loop_)
        return;
    ev_ref(ev_loop_);
    ev_prepare_stop(ev_loop_, &ev_prep);
    ev_timer_stop(ev_loop_, &ev_tick);
    armed_when = UINT64_MAX;
    ev_loop_ = NULL;
}

void timer_shutdown(void)
{
    for (size_t i = 0; i < heap_n; i++)
        heap[i].t->idx = 0;
    free(heap);
    heap = NULL;
    heap_n = heap_cap = 0;
}
