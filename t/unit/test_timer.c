/* Unit tests of timer.c: heap order, ties in arming order, stop and re-arm (from callbacks
 * too), the virtual clock seen by callbacks, many timers, and the libev driver. */
#include <ev.h>
#include <stdint.h>

#include "test.h"
#include "timer.h"

#define container_of(p, type, member) ((type *)(void *)((char *)(p) - offsetof(type, member)))

struct rec {
    struct timer t;
    int id;
    int fired;
    uint64_t at;        /* timer_now() seen by the callback */
    uint64_t rearm_ms;  /* re-arm itself this many times, every rearm_ms */
    int rearms;
    struct timer *stop_other;
    struct timer *arm_other;
};

static int order[64];
static int norder;

static void on_rec(struct timer *t)
{
    struct rec *r = container_of(t, struct rec, t);
    r->fired++;
    r->at = timer_now();
    if (norder < 64)
        order[norder++] = r->id;
    if (r->stop_other)
        timer_stop(r->stop_other);
    if (r->arm_other)
        timer_start(r->arm_other, 0);
    if (r->rearms > 0) {
        r->rearms--;
        timer_start(&r->t, r->rearm_ms);
    }
}

static void rec_init(struct rec *r, int id)
{
    memset(r, 0, sizeof(*r));
    r->id = id;
    timer_init(&r->t, on_rec);
}

/* many timers: deadlines from an LCG, checked to fire in nondecreasing order */
static uint64_t last_when;
static int many_ok = 1, many_fired;

static void on_many(struct timer *t)
{
    if (timer_now() < last_when || timer_now() != t->when)
        many_ok = 0;
    last_when = timer_now();
    many_fired++;
}

static int tick_fired;
static void on_tick(struct timer *t)
{
    (void)t;
    tick_fired++;
}

/* The libev driver, first (the virtual clock, once on, stays on): timers 20 and 40 ms
 * ahead fire from ev_run on the loop's clock, and the loop ends when none is armed. */
static void test_libev(void)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    CHECK(loop != NULL);
    if (!loop)
        return;
    timer_attach(loop);
    ev_now_update(loop);
    uint64_t start = timer_now();
    CHECK(start == (uint64_t)(ev_now(loop) * 1000.0));
    struct timer a, b;
    timer_init(&a, on_tick);
    timer_init(&b, on_tick);
    CHECK(timer_start(&a, 20) == 0);
    CHECK(timer_start(&b, 40) == 0);
    ev_run(loop, 0); /* returns once both fired: the prepare watcher holds no reference */
    CHECK(tick_fired == 2);
    CHECK(timer_now() >= start + 40);
    CHECK(timer_count() == 0);
    timer_detach();
    /* detached: the monotonic clock */
    uint64_t m = timer_now();
    CHECK(m > 0);
    ev_loop_destroy(loop);
}

int main(void)
{
    test_libev();
    timer_use_virtual_clock(1000);
    CHECK(timer_now() == 1000);
    CHECK(timer_count() == 0);

    /* ordering: armed out of order, fired by deadline; callbacks see their own deadline */
    struct rec r[8];
    for (int i = 0; i < 8; i++)
        rec_init(&r[i], i);
    CHECK(!timer_armed(&r[0].t));
    CHECK(timer_start(&r[0].t, 300) == 0);
    CHECK(timer_start(&r[1].t, 100) == 0);
    CHECK(timer_start(&r[2].t, 200) == 0);
    CHECK(timer_armed(&r[0].t) && timer_count() == 3);
    CHECK(r[1].t.when == 1100);
    timer_advance(150);
    CHECK(r[1].fired == 1 && r[1].at == 1100 && r[0].fired == 0);
    CHECK(timer_now() == 1150);
    CHECK(!timer_armed(&r[1].t));
    timer_advance(1000);
    CHECK(norder == 3 && order[0] == 1 && order[1] == 2 && order[2] == 0);
    CHECK(r[2].at == 1200 && r[0].at == 1300);
    CHECK(timer_now() == 2150);
    CHECK(timer_count() == 0);

    /* ties fire in arming order, whatever the heap shape; re-arming moves to the back */
    norder = 0;
    for (int i = 0; i < 8; i++)
        CHECK(timer_start(&r[i].t, 50) == 0);
    CHECK(timer_start(&r[3].t, 50) == 0); /* re-armed: now last among equals */
    timer_advance(50);
    CHECK(norder == 8);
    CHECK(order[0] == 0 && order[1] == 1 && order[2] == 2 && order[3] == 4 && order[6] == 7 && order[7] == 3);

    /* stop: harmless twice and when never armed; the others still fire */
    norder = 0;
    timer_start(&r[0].t, 10);
    timer_start(&r[1].t, 20);
    timer_start(&r[2].t, 30);
    timer_stop(&r[1].t);
    timer_stop(&r[1].t);
    timer_stop(&r[4].t);
    CHECK(timer_count() == 2);
    timer_advance(100);
    CHECK(norder == 2 && order[0] == 0 && order[1] == 2);

    /* re-arm to an earlier and a later deadline */
    norder = 0;
    timer_start(&r[0].t, 100);
    timer_start(&r[1].t, 200);
    timer_start(&r[1].t, 50);
    timer_start(&r[0].t, 300);
    timer_advance(400);
    CHECK(norder == 2 && order[0] == 1 && order[1] == 0);

    /* a callback re-arming itself: fires at each period, seeing its own deadline */
    for (int i = 0; i < 8; i++)
        rec_init(&r[i], i);
    norder = 0;
    uint64_t t0 = timer_now();
    r[0].rearms = 3;
    r[0].rearm_ms = 100;
    timer_start(&r[0].t, 100);
    timer_advance(1000); /* one advance, four firings at their own deadlines */
    CHECK(r[0].fired == 4);
    CHECK(r[0].at == t0 + 400);

    /* a callback stopping another due timer at the same instant: it never fires */
    norder = 0;
    r[1].stop_other = &r[2].t;
    timer_start(&r[1].t, 10);
    timer_start(&r[2].t, 10);
    timer_advance(10);
    CHECK(r[1].fired == 1 && r[2].fired == 0);

    /* a callback arming a timer already due runs it in the same call (timer_run too) */
    r[3].arm_other = &r[4].t;
    timer_start(&r[3].t, 5);
    timer_advance(5);
    CHECK(r[3].fired == 1 && r[4].fired == 1 && r[4].at == r[3].at);
    r[3].arm_other = NULL;
    timer_start(&r[3].t, 0);
    timer_start(&r[5].t, 1);
    timer_run(timer_now()); /* only what is due at now */
    CHECK(r[3].fired == 2 && r[5].fired == 0);
    timer_run(timer_now() + 1);
    CHECK(r[5].fired == 1);

    /* many timers: random deadlines, random stops, all fire in order, heap grows */
    enum { N = 20000 };
    struct timer *many = calloc(N, sizeof(*many));
    uint32_t x = 12345;
    int start_errors = 0;
    for (int i = 0; i < N; i++) {
        timer_init(&many[i], on_many);
        x = x * 1103515245u + 12345u;
        start_errors += timer_start(&many[i], (x >> 8) % 100000) != 0;
    }
    CHECK(start_errors == 0);
    CHECK(timer_count() == N);
    int stopped = 0;
    for (int i = 0; i < N; i += 7) {
        timer_stop(&many[i]);
        stopped++;
    }
    CHECK(timer_count() == (size_t)(N - stopped));
    last_when = 0;
    timer_advance(100000);
    CHECK(many_ok);
    CHECK(many_fired == N - stopped);
    CHECK(timer_count() == 0);
    for (int i = 0; i < N; i++)
        if (timer_armed(&many[i]))
            many_ok = 0;
    CHECK(many_ok);
    /* armed and forgotten by timer_shutdown */
    for (int i = 0; i < 100; i++)
        timer_start(&many[i], 10 + (uint64_t)i);
    timer_shutdown();
    CHECK(timer_count() == 0 && !timer_armed(&many[5]));
    free(many);

    timer_shutdown();
    TEST_DONE();
}
