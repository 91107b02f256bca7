/* Timers for the transaction layer and the proxy core: a binary min-heap on a millisecond
 * clock. In the daemon one libev watcher drives it (timer_attach); unit tests drive a
 * virtual clock by hand (timer_use_virtual_clock + timer_advance), so every RFC 3261 §17
 * timer can be tested without sleeping. Single-threaded, like the rest of lunasip. */
#ifndef LUNASIP_TIMER_H
#define LUNASIP_TIMER_H

#include <stddef.h>
#include <stdint.h>

struct ev_loop;

struct timer {
    uint64_t when;                 /* deadline on the timer clock (ms) */
    uint32_t idx;                  /* heap position + 1; 0 = not armed */
    void (*cb)(struct timer *t);   /* runs once per expiry; may re-arm or stop any timer */
};

/* Prepares t (not armed). Must be called before timer_start. */
void timer_init(struct timer *t, void (*cb)(struct timer *t));
/* Arms t to fire after_ms from timer_now(); re-arms when already armed. Returns 0 or
 * -ENOMEM (the heap could not grow; t stays unarmed). */
int timer_start(struct timer *t, uint64_t after_ms);
/* Disarms t; harmless when not armed. */
void timer_stop(struct timer *t);
static inline int timer_armed(const struct timer *t) { return t->idx != 0; }

/* The timer clock in ms: the loop's time (ev_now) when attached, the virtual clock in
 * tests, else CLOCK_MONOTONIC. */
uint64_t timer_now(void);
/* Number of armed timers (tests, stats). */
size_t timer_count(void);

/* Runs every timer whose deadline is <= now, earliest first (ties in arming order).
 * A callback that arms a timer already due runs it in the same call. */
void timer_run(uint64_t now);

/* Daemon: a libev watcher fires timer_run at the earliest deadline. */
void timer_attach(struct ev_loop *loop);
void timer_detach(void);

/* Tests: the clock becomes virtual, starting at start_ms, and moves only through
 * timer_advance, which walks forward firing each due timer at its own deadline (so a
 * callback sees timer_now() equal to its deadline). */
void timer_use_virtual_clock(uint64_t start_ms);
void timer_advance(uint64_t ms);

/* Frees the heap storage (exit, test teardown). Armed timers are forgotten. */
void timer_shutdown(void);

#endif
