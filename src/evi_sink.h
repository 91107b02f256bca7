/* The contract between the event bus (src/evi.c) and its sink drivers (src/evi_udp.c: udp:
 * and unix:, src/evi_tcp.c, src/evi_http.c, src/evi_flat.c, src/evi_rabbitmq.c). SPEC §6.
 *
 * A sink is one concrete destination ("tcp:127.0.0.1:9000"), shared by every subscription
 * that names it (one connection, one queue). The core owns the sink's bounded queue of jobs
 * (events.queue_limit, overflow policy) and calls the driver's flush when jobs wait. The
 * driver takes jobs from the queue (evi_sink_take) as fast as its destination accepts them
 * and reports each one exactly once with evi_job_done: 0 when delivered, a negative errno
 * when delivery failed. A job the driver has not taken stays in the core's queue, where
 * overflow applies; so a driver that cannot deliver right now simply stops taking.
 *
 * Every function here runs on the loop's thread. A driver that has to block (a file, a
 * broker) does so in a thread of its own: it copies the bytes it needs out of the job, hands
 * them to its thread, and calls evi_job_done back on the loop's thread (ev_async). It never
 * lets its thread touch a job or the core.
 *
 * Failure semantics are the driver's to define (documented in its file and in the README):
 * what is "delivered" (UDP: sendto accepted it; TCP: written to the kernel; HTTP: a 2xx;
 * RabbitMQ: a publisher confirm), what is "failed", and when it is down. */
#ifndef LUNASIP_EVI_SINK_H
#define LUNASIP_EVI_SINK_H

#include <stddef.h>
#include <stdint.h>

#include "evi.h"

struct ev_loop;
struct evi_job;

enum evi_sink_state {
    EVI_SINK_UNKNOWN = 0, /* not tried yet, or connecting: jobs are offered */
    EVI_SINK_UP,
    EVI_SINK_DOWN,        /* fail-fast jobs (virtual members) fail at once; others wait */
};

struct evi_sink_ops;

/* The core's part of a sink. A driver's own struct starts with it:
 *     struct tcp_sink { struct evi_sink base; int fd; ... };
 * and the core allocates ops->size zeroed bytes. Fields marked (core) are not the driver's. */
struct evi_sink {
    const struct evi_sink_ops *ops;
    struct ev_loop *loop;
    char *socket;                 /* the text as subscribed, e.g. "udp:127.0.0.1:8888" */
    char *shown;                  /* the same with any password masked ("rabbitmq:u:***@h/k"):
                                   * what logs and answers show */
    const char *addr;             /* socket past "scheme:" ("127.0.0.1:8888"); for http the
                                   * whole "http://..." */
    enum evi_sink_state state;    /* set through evi_sink_set_state */
    uint32_t up_gen;              /* bumped on every transition to UP (core) */

    /* (core) */
    struct evi_job **q; size_t qhead, qlen, qcap;
    uint64_t down_since;          /* timer clock ms of the last DOWN report */
    size_t taken;                 /* jobs the driver holds */
    int lingering;                /* unsubscribed: open until its jobs are out (or linger_until) */
    uint64_t linger_until;
    int refs;
    int flush_pending;
    struct evi_sink *next, *dirty_next;
    uint64_t delivered, failed, dropped;
};

struct evi_sink_ops {
    const char *scheme;   /* "udp", "unix", "tcp", "flatstore", "rabbitmq", "http" */
    size_t size;          /* sizeof the driver's struct */
    /* Parses and validates s->addr and prepares the sink (it may start connecting now).
     * On error returns a negative errno and fills err with what is wrong and what is
     * allowed, e.g. "tcp:1.2.3.4: port missing; expected tcp:IP:PORT". The core frees s.
     * With check_only, only validates (evi_socket_check): no socket, thread or file. */
    int (*open)(struct evi_sink *s, int check_only, char *err, size_t errlen);
    /* Jobs are queued (or the driver asked with evi_sink_kick): take what can go now. */
    void (*flush)(struct evi_sink *s);
    /* The sink is no longer subscribed to (or lunasip exits): complete every job taken
     * (evi_job_done(j, -ECANCELED)), stop watchers and threads, free what open allocated
     * (not s itself). Must not block: a thread is told to stop and left to finish. */
    void (*close)(struct evi_sink *s);
    /* Optional: reopen what is kept open (flatstore: the file, after a rotation). */
    void (*reopen)(struct evi_sink *s);
    /* 1 when the driver sends evi_job_flat lines rather than the JSON (the core then builds
     * them at raise time). */
    int flat;
};

/* ----- what drivers call ----- */

/* The oldest queued job, now owned by the driver until evi_job_done; NULL when none. */
struct evi_job *evi_sink_take(struct evi_sink *s);
/* Puts a taken job back at the head of the queue (a confirm that never came, to publish
 * again after a reconnect). Only for jobs not yet reported. */
void evi_sink_untake(struct evi_sink *s, struct evi_job *j);
/* Jobs waiting in the core's queue. */
size_t evi_sink_queued(const struct evi_sink *s);
/* Reports a taken job: 0 delivered, negative errno failed. The job is gone after this. */
void evi_job_done(struct evi_job *j, int err);
/* The sink's state changed (logged once per transition with why). DOWN fails at once the
 * queued jobs that are fail-fast, and for 30 s after it (each DOWN report restarts the 30 s)
 * new fail-fast jobs fail without being queued; after that one is queued again, as a probe.
 * Report DOWN again on every failed attempt (a refused reconnect, a failed send). UP bumps
 * up_gen and lets a virtual set use the sink again at once. */
void evi_sink_set_state(struct evi_sink *s, enum evi_sink_state st, const char *why);
/* Asks the core to call flush again before the loop next sleeps (the socket became
 * writable, a connection came up, a thread finished jobs). */
void evi_sink_kick(struct evi_sink *s);
/* The events = {} settings (timeouts, heartbeat): every value is usable as it is (the core
 * replaces a zero or negative one by its default). */
const struct evi_config *evi_sink_config(void);
/* Fails at once (-ENOTCONN) every queued job that is fail-fast, when s is DOWN: a driver that
 * cannot deliver for a while (connecting, backing off) lets virtual sets move on. The other
 * jobs keep their order. */
void evi_sink_fail_fast(struct evi_sink *s);
/* Reconnect backoff (SPEC 6): the delay to wait now. *next holds the state: below
 * EVI_BACKOFF_MIN (0 included) starts over at EVI_BACKOFF_MIN; each call doubles it, up to
 * events.retry_max. */
#define EVI_BACKOFF_MIN 0.5
double evi_sink_backoff(double *next);

/* ----- what a job carries ----- */

/* The JSON-RPC notification, {"jsonrpc":"2.0","method":"E_X","params":{...}}, no newline. */
const char *evi_job_json(struct evi_job *j, size_t *len);
/* The flatstore line, "E_X,v1,v2\n" (built on first use). NULL when out of memory. */
const char *evi_job_flat(struct evi_job *j, size_t *len);
const char *evi_job_event(const struct evi_job *j);
/* 1 when the job belongs to a virtual: set that has other members to try: the driver
 * should fail it at once rather than hold it while the destination is down. */
int evi_job_fail_fast(const struct evi_job *j);

/* The drivers (each in its own file). */
extern const struct evi_sink_ops evi_udp_ops, evi_unix_ops, evi_tcp_ops, evi_http_ops,
    evi_flat_ops, evi_rabbitmq_ops;

/* Tests: a driver tried before the built-in ones (NULL removes it). */
void evi_set_test_driver(const struct evi_sink_ops *ops);

/* Shared by drivers: "IP:PORT" or "[IPv6]:PORT" into a sockaddr; 0 or -EINVAL. */
struct sockaddr_storage;
int evi_parse_ipport(const char *s, size_t len, struct sockaddr_storage *ss, unsigned *sslen);
/* The same; on failure *why (may be NULL) says what is wrong, e.g. "port missing". */
int evi_parse_ipport_why(const char *s, size_t len, struct sockaddr_storage *ss, unsigned *sslen,
                         const char **why);

#endif
