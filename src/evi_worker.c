/* A thread per event sink for the sinks that must block (src/evi_flat.c, src/evi_rabbitmq.c):
 * the loop-side in-flight table, the hand-over of job bytes to the thread, and the way back
 * (results, state changes, log lines) through one mutex-protected list and an ev_async.
 * SPEC §6 ("never block SIP": the loop never waits on a file or a broker).
 *
 * Ownership: the worker is shared by the loop and the thread and counted (one reference
 * each); whoever lets go last frees it. Closing the sink never waits for a thread that may be
 * stuck in a broker call: it cancels the jobs in flight, marks the worker stopped (after
 * which the thread sends nothing more to the loop), cuts a guarded blocking call, joins for
 * at most CLOSE_JOIN_MS, and otherwise detaches the thread, which then frees what it holds. */
#include "evi_worker.h"

#include <errno.h>
#include <ev.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CLOSE_JOIN_MS     50     /* what close gives the thread to finish before detaching it */
#define WATCHDOG_PERIOD   0.25   /* s between checks of a guarded call (while jobs are out) */
#define WORKER_TEXT_MAX   512    /* bytes of a state reason or log line from the thread */

enum witem_kind {
    WK_RESULT = 0,
    WK_STATE,
    WK_LOG,
};

struct slot {
    struct evi_job *job;
    uint32_t gen;
    uint32_t next_free;
};

struct evi_worker {
    pthread_mutex_t mu;
    int refs;                        /* the loop's + the thread's */

    /* shared, under mu */
    struct evi_wlist todo;           /* loop -> thread */
    struct evi_wlist done;           /* thread -> loop: results, states, log lines */
    unsigned reopen;
    int stop;                        /* closed: the thread leaves, nothing goes to the loop */
    struct evi_worker_settings set;
    int guard_fd;                    /* -1: no guarded call */
    double guard_deadline;
    int guard_fired;
    ev_async async;                  /* ev_async_send is the one libev call the thread makes */

    int wake_fd;                     /* eventfd: the loop wakes the thread */

    /* loop side */
    struct evi_sink *sink;
    struct ev_loop *loop;
    ev_timer watchdog;               /* runs while jobs are out (a guarded call needs them) */
    int watchdog_on;
    int flat;
    int closed;
    struct slot *slots;
    uint32_t free_head;              /* index + 1 of the first free slot, 0 = none */
    size_t inflight;
    int down_err;
    pthread_t thread;
    char *name;

    /* the thread's */
    void (*main)(struct evi_worker *w, void *arg);
    void *arg;
    void (*arg_free)(void *arg);
};

/* ------------------------------------------------------------------------------------------
 * Lists */

void evi_wlist_push(struct evi_wlist *l, struct evi_witem *it)
{
    it->next = NULL;
    if (l->tail)
        l->tail->next = it;
    else
        l->head = it;
    l->tail = it;
    l->n++;
}

struct evi_witem *evi_wlist_pop(struct evi_wlist *l)
{
    struct evi_witem *it = l->head;
    if (!it)
        return NULL;
    l->head = it->next;
    if (!l->head)
        l->tail = NULL;
    l->n--;
    it->next = NULL;
    return it;
}

void evi_wlist_append(struct evi_wlist *to, struct evi_wlist *from)
{
    if (!from->head)
        return;
    if (to->tail)
        to->tail->next = from->head;
    else
        to->head = from->head;
    to->tail = from->tail;
    to->n += from->n;
    from->head = from->tail = NULL;
    from->n = 0;
}

void evi_wlist_prepend(struct evi_wlist *to, struct evi_wlist *from)
{
    if (!from->head)
        return;
    from->tail->next = to->head;
    if (!to->tail)
        to->tail = from->tail;
    to->head = from->head;
    to->n += from->n;
    from->head = from->tail = NULL;
    from->n = 0;
}

static void wlist_free(struct evi_wlist *l)
{
    struct evi_witem *it;
    while ((it = evi_wlist_pop(l)) != NULL)
        free(it);
}

/* ------------------------------------------------------------------------------------------
 * Life cycle */

double evi_worker_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void worker_free(struct evi_worker *w)
{
    wlist_free(&w->todo);
    wlist_free(&w->done);
    if (w->wake_fd >= 0)
        close(w->wake_fd);
    pthread_mutex_destroy(&w->mu);
    free(w->slots);
    free(w->name);
    free(w);
}

static void worker_unref(struct evi_worker *w)
{
    pthread_mutex_lock(&w->mu);
    int left = --w->refs;
    pthread_mutex_unlock(&w->mu);
    if (left == 0)
        worker_free(w);
}

static void *thread_main(void *p)
{
    struct evi_worker *w = p;
    w->main(w, w->arg);
    if (w->arg_free)
        w->arg_free(w->arg);
    worker_unref(w);
    return NULL;
}

static void settings_of(struct evi_worker_settings *out)
{
    const struct evi_config *c = evi_sink_config();
    /* the core keeps every value usable (evi_configure) */
    out->connect_timeout = c->connect_timeout;
    out->send_timeout = c->send_timeout;
    out->retry_max = c->retry_max;
    out->heartbeat = c->heartbeat;
}

static void on_async(struct ev_loop *loop, ev_async *a, int revents);
static void on_watchdog(struct ev_loop *loop, ev_timer *t, int revents);

int evi_worker_start(struct evi_sink *s, const struct evi_worker_def *def, struct evi_worker **out,
                     char *err, size_t errlen)
{
    struct evi_worker *w = calloc(1, sizeof(*w));
    if (!w) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    w->wake_fd = -1;
    w->guard_fd = -1;
    if (pthread_mutex_init(&w->mu, NULL) != 0) {
        free(w);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    w->slots = calloc(EVI_WORKER_INFLIGHT, sizeof(*w->slots));
    w->name = strdup(def->name ? def->name : s->shown ? s->shown : s->socket);
    w->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (!w->slots || !w->name || w->wake_fd == -1) {
        int e = w->wake_fd == -1 && w->slots && w->name ? errno : ENOMEM;
        snprintf(err, errlen, "cannot set up its thread: %s", strerror(e));
        worker_free(w);
        return -e;
    }
    for (uint32_t i = 0; i < EVI_WORKER_INFLIGHT; i++)
        w->slots[i].next_free = i + 2 <= EVI_WORKER_INFLIGHT ? i + 2 : 0;
    w->free_head = 1;
    w->sink = s;
    w->loop = s->loop;
    w->flat = def->flat;
    w->down_err = -ENOTCONN;
    w->main = def->main;
    w->arg = def->arg;
    w->arg_free = def->arg_free;
    settings_of(&w->set);
    w->refs = 2;

    ev_async_init(&w->async, on_async);
    w->async.data = w;
    ev_async_start(w->loop, &w->async);
    if (def->watchdog) {
        ev_timer_init(&w->watchdog, on_watchdog, WATCHDOG_PERIOD, WATCHDOG_PERIOD);
        w->watchdog.data = w;
        w->watchdog_on = 1;
    }

    /* the thread takes no signal: SIGHUP, SIGTERM... stay the loop's */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&w->thread, NULL, thread_main, w);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        ev_async_stop(w->loop, &w->async);
        snprintf(err, errlen, "cannot start its thread: %s", strerror(rc));
        worker_free(w);
        return -rc;
    }
    *out = w;
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * Loop side */

static void wake(struct evi_worker *w)
{
    uint64_t one = 1;
    ssize_t n;
    do
        n = write(w->wake_fd, &one, sizeof(one));
    while (n == -1 && errno == EINTR);
    /* EAGAIN means the counter is already non-zero: the thread wakes anyway */
}

void evi_worker_flush(struct evi_worker *w)
{
    if (w->closed)
        return;
    struct evi_sink *s = w->sink;
    struct evi_wlist batch = { NULL, NULL, 0 };
    struct evi_worker_settings set;
    memset(&set, 0, sizeof(set));   /* compared bytewise below */
    settings_of(&set);
    while (w->inflight < EVI_WORKER_INFLIGHT && !w->closed) {
        struct evi_job *j = evi_sink_take(s);
        if (!j)
            break;
        int ff = evi_job_fail_fast(j);
        if (ff && s->state == EVI_SINK_DOWN) {
            /* a virtual set has another member to try: do not hold it here */
            evi_job_done(j, w->down_err);
            continue;
        }
        size_t len;
        const char *data = w->flat ? evi_job_flat(j, &len) : evi_job_json(j, &len);
        struct evi_witem *it = data ? malloc(sizeof(*it) + len + 1) : NULL;
        if (!it) {
            evi_job_done(j, -ENOMEM);
            continue;
        }
        memset(it, 0, sizeof(*it));
        uint32_t idx = w->free_head - 1;
        struct slot *sl = &w->slots[idx];
        w->free_head = sl->next_free;
        sl->job = j;
        sl->gen++;
        w->inflight++;
        it->slot = idx;
        it->gen = sl->gen;
        it->fail_fast = ff;
        it->kind = WK_RESULT;
        it->len = len;
        memcpy(it->data, data, len);
        it->data[len] = '\0';
        evi_wlist_push(&batch, it);
    }
    if (w->watchdog_on && w->inflight && !ev_is_active(&w->watchdog))
        ev_timer_start(w->loop, &w->watchdog);
    int news = batch.n > 0;
    pthread_mutex_lock(&w->mu);
    if (memcmp(&w->set, &set, sizeof(set)) != 0) {   /* a reload changed events = {} */
        w->set = set;
        news = 1;
    }
    evi_wlist_append(&w->todo, &batch);
    pthread_mutex_unlock(&w->mu);
    if (news)
        wake(w);
}

void evi_worker_reopen(struct evi_worker *w)
{
    if (w->closed)
        return;
    pthread_mutex_lock(&w->mu);
    w->reopen++;
    pthread_mutex_unlock(&w->mu);
    wake(w);
}

/* Releases slot idx and returns its job (NULL when the result is stale). */
static struct evi_job *slot_release(struct evi_worker *w, uint32_t idx, uint32_t gen)
{
    if (idx >= EVI_WORKER_INFLIGHT)
        return NULL;
    struct slot *sl = &w->slots[idx];
    if (sl->gen != gen || !sl->job)
        return NULL;
    struct evi_job *j = sl->job;
    sl->job = NULL;
    sl->next_free = w->free_head;
    w->free_head = idx + 1;
    w->inflight--;
    return j;
}

/* Drains what the thread sent: results (evi_job_done), state changes, log lines. A call
 * into the core may close this sink (the last subscription went with the job): from then
 * on the rest is only freed. */
static void on_async(struct ev_loop *loop, ev_async *a, int revents)
{
    (void)loop;
    (void)revents;
    struct evi_worker *w = a->data;
    struct evi_wlist got;
    pthread_mutex_lock(&w->mu);
    got = w->done;
    w->done.head = w->done.tail = NULL;
    w->done.n = 0;
    w->refs++;
    pthread_mutex_unlock(&w->mu);
    int freed = 0;
    struct evi_witem *it;
    while ((it = evi_wlist_pop(&got)) != NULL) {
        if (w->closed) {
            free(it);
            continue;
        }
        switch (it->kind) {
        case WK_RESULT: {
            struct evi_job *j = slot_release(w, it->slot, it->gen);
            int err = it->err;
            free(it);
            if (j) {
                freed = 1;
                evi_job_done(j, err);
            }
            break;
        }
        case WK_STATE:
            if (it->mark == EVI_SINK_DOWN)
                w->down_err = it->err < 0 ? it->err : -ENOTCONN;
            evi_sink_set_state(w->sink, (enum evi_sink_state)it->mark, it->data);
            free(it);
            break;
        default:
            log_write((enum log_level)it->mark, "event socket %s: %s", w->name, it->data);
            free(it);
            break;
        }
    }
    if (!w->closed) {
        if (w->watchdog_on && !w->inflight && ev_is_active(&w->watchdog))
            ev_timer_stop(w->loop, &w->watchdog);
        if (freed && evi_sink_queued(w->sink))
            evi_sink_kick(w->sink);
    }
    worker_unref(w);
}

/* Cuts a guarded call that overran its deadline (a broker that stopped reading). */
static void on_watchdog(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct evi_worker *w = t->data;
    double now = evi_worker_now();
    pthread_mutex_lock(&w->mu);
    if (w->guard_fd >= 0 && !w->guard_fired && now >= w->guard_deadline) {
        shutdown(w->guard_fd, SHUT_RDWR);
        w->guard_fired = 1;
    }
    pthread_mutex_unlock(&w->mu);
}

void evi_worker_close(struct evi_worker *w)
{
    w->closed = 1;
    for (uint32_t i = 0; i < EVI_WORKER_INFLIGHT; i++) {
        struct evi_job *j = w->slots[i].job;
        if (!j)
            continue;
        w->slots[i].job = NULL;
        w->inflight--;
        evi_job_done(j, -ECANCELED);
    }
    pthread_mutex_lock(&w->mu);
    w->stop = 1;
    if (w->guard_fd >= 0 && !w->guard_fired) {
        shutdown(w->guard_fd, SHUT_RDWR);
        w->guard_fired = 1;
    }
    pthread_mutex_unlock(&w->mu);
    wake(w);
    ev_async_stop(w->loop, &w->async);
    if (w->watchdog_on)
        ev_timer_stop(w->loop, &w->watchdog);

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += CLOSE_JOIN_MS * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    if (pthread_timedjoin_np(w->thread, NULL, &ts) != 0) {
        LOG_INFO("event socket %s: its thread is still in a call; it ends on its own", w->name);
        pthread_detach(w->thread);
    }
    worker_unref(w);
}

/* ------------------------------------------------------------------------------------------
 * Thread side */

int evi_worker_stopping(struct evi_worker *w)
{
    pthread_mutex_lock(&w->mu);
    int st = w->stop;
    pthread_mutex_unlock(&w->mu);
    return st;
}

void evi_worker_grab(struct evi_worker *w, struct evi_wlist *into, unsigned *reopen)
{
    pthread_mutex_lock(&w->mu);
    evi_wlist_append(into, &w->todo);
    if (reopen)
        *reopen = w->reopen;
    pthread_mutex_unlock(&w->mu);
}

int evi_worker_wait(struct evi_worker *w, int fd, int timeout_ms)
{
    struct pollfd p[2] = {
        { .fd = w->wake_fd, .events = POLLIN },
        { .fd = fd, .events = POLLIN },
    };
    int n = poll(p, fd >= 0 ? 2 : 1, timeout_ms);
    if (n <= 0)
        return 0;
    if (p[0].revents) {
        uint64_t v;
        ssize_t r;
        do
            r = read(w->wake_fd, &v, sizeof(v));
        while (r == -1 && errno == EINTR);
    }
    return fd >= 0 && p[1].revents != 0;
}

/* Appends it to the way back and wakes the loop; after close it is only freed. */
static void post(struct evi_worker *w, struct evi_witem *it)
{
    pthread_mutex_lock(&w->mu);
    if (w->stop) {
        pthread_mutex_unlock(&w->mu);
        free(it);
        return;
    }
    evi_wlist_push(&w->done, it);
    ev_async_send(w->loop, &w->async);
    pthread_mutex_unlock(&w->mu);
}

void evi_worker_done(struct evi_worker *w, struct evi_witem *it, int err)
{
    it->kind = WK_RESULT;
    it->err = err;
    post(w, it);
}

static struct evi_witem *text_item(int kind, int mark, int err, const char *fmt, va_list ap)
{
    char buf[WORKER_TEXT_MAX];
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    if (n < 0)
        n = 0;
    if ((size_t)n >= sizeof(buf))
        n = sizeof(buf) - 1;
    struct evi_witem *it = malloc(sizeof(*it) + (size_t)n + 1);
    if (!it)
        return NULL;
    memset(it, 0, sizeof(*it));
    it->kind = kind;
    it->mark = mark;
    it->err = err;
    it->len = (size_t)n;
    memcpy(it->data, buf, (size_t)n);
    it->data[n] = '\0';
    return it;
}

void evi_worker_state(struct evi_worker *w, enum evi_sink_state st, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    struct evi_witem *it = text_item(WK_STATE, (int)st, err, fmt, ap);
    va_end(ap);
    if (it)
        post(w, it);
}

void evi_worker_log(struct evi_worker *w, enum log_level l, const char *fmt, ...)
{
    if (l < log_current_level)
        return;
    va_list ap;
    va_start(ap, fmt);
    struct evi_witem *it = text_item(WK_LOG, (int)l, 0, fmt, ap);
    va_end(ap);
    if (it)
        post(w, it);
}

void evi_worker_settings(struct evi_worker *w, struct evi_worker_settings *out)
{
    pthread_mutex_lock(&w->mu);
    *out = w->set;
    pthread_mutex_unlock(&w->mu);
}

void evi_worker_guard(struct evi_worker *w, int fd, double timeout)
{
    pthread_mutex_lock(&w->mu);
    w->guard_fd = fd;
    w->guard_deadline = evi_worker_now() + timeout;
    w->guard_fired = 0;
    if (w->stop && fd >= 0) {   /* closing already: do not start a call that could hang */
        shutdown(fd, SHUT_RDWR);
        w->guard_fired = 1;
    }
    pthread_mutex_unlock(&w->mu);
}

int evi_worker_unguard(struct evi_worker *w)
{
    pthread_mutex_lock(&w->mu);
    int fired = w->guard_fired;
    w->guard_fd = -1;
    w->guard_fired = 0;
    pthread_mutex_unlock(&w->mu);
    return fired;
}

double evi_worker_backoff(struct evi_worker *w, double *backoff)
{
    struct evi_worker_settings set;
    evi_worker_settings(w, &set);
    double d = *backoff <= 0 ? 0.5 : *backoff * 2;
    if (d > set.retry_max)
        d = set.retry_max;
    *backoff = d;
    return d;
}
