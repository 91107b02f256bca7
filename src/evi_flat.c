/* Event sink flatstore: (SPEC §6): appends each event's flatstore line ("E_NAME,v1,v2\n",
 * escaped by the core) to a file, from a thread of its own (src/evi_worker.c) so the event
 * loop never waits on the disk. The file is reopened on SIGHUP and evi:flat_rotate.
 *
 * Failure semantics (README "Event sinks"):
 *
 * flatstore:/absolute/path/file
 *   delivered  write() took the whole line (in the kernel's page cache: no fsync). Lines
 *              are written in the order raised, several per writev when they queue up.
 *              The file is opened O_WRONLY|O_APPEND|O_CREAT, mode 0640: several sinks (or
 *              processes) appending to the same file each add whole lines.
 *   failed     the file cannot be opened (a missing directory, EACCES, ...) or a write
 *              fails (ENOSPC, EIO, ...): the sink goes DOWN with that errno. Jobs of a
 *              virtual: set with another member to try fail at once with it; other jobs
 *              are held (up to 1024 taken, the rest in the core's bounded queue, where
 *              events.overflow applies) and written when the file can be written again.
 *   up         the file opened (when nothing waits) or a write succeeded after a failure.
 *              While DOWN the file is reopened with backoff: 0.5 s doubling up to
 *              events.retry_max.
 *   rotation   reopen (SIGHUP, `lunasip ctl evi:flat_rotate [PATH]`) closes the file and
 *              opens the path again before the next write: `mv file file.1` then reopen
 *              starts a new file; lines written before the reopen are in file.1, none lost.
 *   torn line  a write cut short by ENOSPC is resumed at the byte where it stopped; another
 *              writer's line may land in between.
 *   closing    jobs still held when the sink closes (lunasip exits, or its last subscription
 *              went and the core stopped waiting for them) are cancelled (ECANCELED); one
 *              being written at that moment may still reach the file. */
#include "evi_sink.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "evi_worker.h"
#include "log.h"

#define FLAT_IOV_MAX 64   /* lines per writev */

struct flat_sink {
    struct evi_sink base;
    struct evi_worker *w;
};

/* The thread's own state. */
struct flat_thread {
    char *path;
    int fd;
    int down;              /* the last state posted was DOWN */
    int posted_up;
    int err;               /* -errno of the last failure */
    double backoff, next_try;
    struct evi_wlist held; /* taken, not yet written (in order) */
};

static void flat_arg_free(void *arg)
{
    struct flat_thread *t = arg;
    free(t->path);
    free(t);
}

/* Opens the file; 0 or -errno. */
static int flat_open(struct flat_thread *t)
{
    int fd;
    do
        fd = open(t->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0640);
    while (fd == -1 && errno == EINTR);
    if (fd == -1)
        return -errno;
    t->fd = fd;
    return 0;
}

static void flat_close(struct flat_thread *t)
{
    if (t->fd >= 0)
        close(t->fd);
    t->fd = -1;
}

static void go_down(struct evi_worker *w, struct flat_thread *t, int err, const char *what)
{
    t->err = err;
    t->next_try = evi_worker_now() + evi_worker_backoff(w, &t->backoff);
    /* every failed attempt is reported: the core logs the transition once and keeps
     * virtual sets off this sink while the reports go on */
    evi_worker_state(w, EVI_SINK_DOWN, err, "%s %s: %s", what, t->path, strerror(-err));
    t->down = 1;
    t->posted_up = 0;
}

static void go_up(struct evi_worker *w, struct flat_thread *t)
{
    t->backoff = 0;
    if (t->down || !t->posted_up) {
        evi_worker_state(w, EVI_SINK_UP, 0, "writing %s", t->path);
        t->down = 0;
        t->posted_up = 1;
    }
}

/* Fails the held jobs that a virtual set can send elsewhere. */
static void fail_fast_jobs(struct evi_worker *w, struct flat_thread *t)
{
    struct evi_wlist keep = { NULL, NULL, 0 };
    struct evi_witem *it;
    while ((it = evi_wlist_pop(&t->held)) != NULL) {
        if (it->fail_fast)
            evi_worker_done(w, it, t->err);
        else
            evi_wlist_push(&keep, it);
    }
    t->held = keep;
}

/* Writes the held lines, FLAT_IOV_MAX per writev; 0 when all went, -errno on failure (the
 * lines not written stay held; one cut short keeps its offset). */
static int write_held(struct evi_worker *w, struct flat_thread *t)
{
    while (t->held.head) {
        struct iovec iov[FLAT_IOV_MAX];
        int n = 0;
        for (struct evi_witem *it = t->held.head; it && n < FLAT_IOV_MAX; it = it->next, n++) {
            iov[n].iov_base = it->data + it->off;
            iov[n].iov_len = it->len - it->off;
        }
        ssize_t wr = writev(t->fd, iov, n);
        if (wr == -1) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        size_t left = (size_t)wr;
        while (t->held.head) {
            struct evi_witem *it = t->held.head;
            size_t rest = it->len - it->off;
            if (left < rest) {
                it->off += left;
                break;
            }
            left -= rest;
            evi_worker_done(w, evi_wlist_pop(&t->held), 0);
        }
        if (wr == 0)
            return -EIO;
    }
    return 0;
}

static void flat_main(struct evi_worker *w, void *arg)
{
    struct flat_thread *t = arg;
    unsigned reopen_seen = 0, reopen_now = 0;
    evi_worker_grab(w, &t->held, &reopen_seen);
    int rc = flat_open(t);
    if (rc == 0)
        go_up(w, t);
    else
        go_down(w, t, rc, "cannot open");

    while (!evi_worker_stopping(w)) {
        evi_worker_grab(w, &t->held, &reopen_now);
        if (reopen_now != reopen_seen) {
            reopen_seen = reopen_now;
            flat_close(t);
            t->next_try = 0;
            evi_worker_log(w, LOG_LVL_INFO, "reopening %s", t->path);
        }
        double now = evi_worker_now();
        if (t->fd < 0 && now >= t->next_try) {
            rc = flat_open(t);
            if (rc != 0)
                go_down(w, t, rc, "cannot open");
            else if (!t->held.head)
                go_up(w, t);
        }
        if (t->fd >= 0 && t->held.head) {
            rc = write_held(w, t);
            if (rc == 0) {
                go_up(w, t);
            } else {
                flat_close(t);
                go_down(w, t, rc, "cannot write");
                fail_fast_jobs(w, t);
            }
            continue;
        }
        if (t->fd < 0) {
            if (t->down)
                fail_fast_jobs(w, t);
            double left = t->next_try - evi_worker_now();
            evi_worker_wait(w, -1, left <= 0 ? 0 : (int)(left * 1000) + 1);
            continue;
        }
        evi_worker_wait(w, -1, -1);
    }
    flat_close(t);
    /* cancelled on the loop side already: nothing to report */
    struct evi_witem *it;
    while ((it = evi_wlist_pop(&t->held)) != NULL)
        free(it);
}

/* ------------------------------------------------------------------------------------------
 * The driver */

static int flat_open_sink(struct evi_sink *s, int check_only, char *err, size_t errlen)
{
    struct flat_sink *f = (struct flat_sink *)s;
    const char *p = s->addr;
    size_t len = strlen(p);
    if (len == 0 || p[0] != '/') {
        snprintf(err, errlen, "%s: the path must be absolute; expected flatstore:/path/file", s->socket);
        return -EINVAL;
    }
    if (len >= PATH_MAX) {
        snprintf(err, errlen, "flatstore: path longer than %d bytes", PATH_MAX - 1);
        return -EINVAL;
    }
    if (p[len - 1] == '/') {
        snprintf(err, errlen, "%s: names a directory; expected flatstore:/path/file", s->socket);
        return -EINVAL;
    }
    if (check_only)
        return 0;
    struct flat_thread *t = calloc(1, sizeof(*t));
    if (!t || !(t->path = strdup(p))) {
        free(t);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    t->fd = -1;
    struct evi_worker_def def = {
        .flat = 1,
        .watchdog = 0,
        .name = s->shown ? s->shown : s->socket,
        .main = flat_main,
        .arg = t,
        .arg_free = flat_arg_free,
    };
    int rc = evi_worker_start(s, &def, &f->w, err, errlen);
    if (rc != 0)
        flat_arg_free(t);
    return rc;
}

static void flat_flush(struct evi_sink *s)
{
    struct flat_sink *f = (struct flat_sink *)s;
    if (f->w)
        evi_worker_flush(f->w);
}

static void flat_close_sink(struct evi_sink *s)
{
    struct flat_sink *f = (struct flat_sink *)s;
    if (f->w)
        evi_worker_close(f->w);
    f->w = NULL;
}

static void flat_reopen(struct evi_sink *s)
{
    struct flat_sink *f = (struct flat_sink *)s;
    if (f->w)
        evi_worker_reopen(f->w);
}

const struct evi_sink_ops evi_flat_ops = {
    .scheme = "flatstore",
    .size = sizeof(struct flat_sink),
    .open = flat_open_sink,
    .flush = flat_flush,
    .close = flat_close_sink,
    .reopen = flat_reopen,
    .flat = 1,
};
