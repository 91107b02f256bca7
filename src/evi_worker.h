/* A thread per event sink, for the sinks that must block (flatstore: file writes, rabbitmq:
 * a broker connection), so the event loop never does. SPEC §6 ("never block SIP").
 *
 * The loop side (evi_worker_start/flush/reopen/close, on the loop's thread) takes jobs from
 * the sink's queue while the thread has room (EVI_WORKER_INFLIGHT), copies their bytes into
 * items the thread owns, and keeps the job pointers in an in-flight table. The thread (the
 * driver's main function) never touches a job or the core: it hands each item back with
 * evi_worker_done and reports state changes and log lines, all through one mutex-protected
 * list that an ev_async drains on the loop, where evi_job_done is called exactly once per
 * taken job. */
#ifndef LUNASIP_EVI_WORKER_H
#define LUNASIP_EVI_WORKER_H

#include <stddef.h>
#include <stdint.h>

#include "evi_sink.h"
#include "log.h"

#define EVI_WORKER_INFLIGHT 1024   /* jobs taken and not yet reported, per sink */

/* One job's bytes, owned by whoever holds the item: the loop until evi_worker_flush hands it
 * over, then the thread until evi_worker_done hands it back. */
struct evi_witem {
    struct evi_witem *next;
    uint32_t slot, gen;   /* the loop's in-flight entry (opaque to the thread) */
    int fail_fast;        /* evi_job_fail_fast at take time */
    int kind;             /* (internal) */
    int err;              /* (internal) the result */
    int mark;             /* free for the driver's thread */
    uint64_t tag;         /* free for the driver's thread (an AMQP delivery tag) */
    size_t off;           /* free for the driver's thread (bytes already written) */
    size_t len;
    char data[];          /* len bytes, plus a NUL */
};

/* A FIFO of items (the thread's own queues). */
struct evi_wlist {
    struct evi_witem *head, *tail;
    size_t n;
};

void evi_wlist_push(struct evi_wlist *l, struct evi_witem *it);
struct evi_witem *evi_wlist_pop(struct evi_wlist *l);
/* Moves every item of from to the end of to (from is left empty). */
void evi_wlist_append(struct evi_wlist *to, struct evi_wlist *from);
/* Moves every item of from to the front of to, keeping from's order. */
void evi_wlist_prepend(struct evi_wlist *to, struct evi_wlist *from);

struct evi_worker;

/* The settings a thread reads (a copy of evi_sink_config(), refreshed at each flush). */
struct evi_worker_settings {
    double connect_timeout, send_timeout, retry_max;
    int heartbeat;
};

struct evi_worker_def {
    int flat;                 /* copy the flatstore line (else the JSON-RPC notification) */
    int watchdog;             /* run the send watchdog (evi_worker_guard) */
    const char *name;         /* for log lines: the socket with any secret masked (copied) */
    /* The thread's body: runs until evi_worker_stopping(w), then returns. arg is the
     * thread's (freed with arg_free, in the thread, after main returns). */
    void (*main)(struct evi_worker *w, void *arg);
    void *arg;
    void (*arg_free)(void *arg);
};

/* ----- loop side ----- */

/* Starts the thread for sink s. On success the thread owns def->arg; on failure (a negative
 * errno, err filled) the caller still does. */
int evi_worker_start(struct evi_sink *s, const struct evi_worker_def *def, struct evi_worker **out,
                     char *err, size_t errlen);
/* Takes the jobs the thread has room for and hands their bytes to it. */
void evi_worker_flush(struct evi_worker *w);
/* Asks the thread to reopen what it keeps open (flatstore: the file). */
void evi_worker_reopen(struct evi_worker *w);
/* Completes every job in flight with -ECANCELED, tells the thread to stop and lets go of w
 * without blocking (a thread stuck in a broker call finishes on its own and frees w). */
void evi_worker_close(struct evi_worker *w);

/* ----- thread side ----- */

/* 1 once the sink is closed: the thread cleans up and returns. */
int evi_worker_stopping(struct evi_worker *w);
/* Moves the items handed over since the last call to the end of into; *reopen (when not
 * NULL) gets the count of reopen requests so far. */
void evi_worker_grab(struct evi_worker *w, struct evi_wlist *into, unsigned *reopen);
/* Sleeps until new items, a reopen or stop request, fd readable (fd >= 0) or timeout_ms
 * (-1: no limit). Returns 1 when fd is readable, else 0. */
int evi_worker_wait(struct evi_worker *w, int fd, int timeout_ms);
/* Hands it back with its result (0 delivered, negative errno failed); it is gone. */
void evi_worker_done(struct evi_worker *w, struct evi_witem *it, int err);
/* The sink's state changed (EVI_SINK_UP or EVI_SINK_DOWN with the errno of the failure);
 * why is formatted into the log line of the transition. */
void evi_worker_state(struct evi_worker *w, enum evi_sink_state st, int err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* A log line, written on the loop's thread, prefixed with the sink's (masked) name. */
void evi_worker_log(struct evi_worker *w, enum log_level l, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The current settings. */
void evi_worker_settings(struct evi_worker *w, struct evi_worker_settings *out);
/* Watchdog (def->watchdog): while a guard is set, a call blocked on socket fd for more than
 * timeout seconds is cut by shutting the socket down from the loop's thread (and closing
 * the sink does it at once). evi_worker_unguard returns 1 when it fired. */
void evi_worker_guard(struct evi_worker *w, int fd, double timeout);
int evi_worker_unguard(struct evi_worker *w);
/* CLOCK_MONOTONIC in seconds. */
double evi_worker_now(void);
/* The next reconnect delay: 0.5 s doubling up to retry_max (*backoff 0 = first failure). */
double evi_worker_backoff(struct evi_worker *w, double *backoff);

#endif
