/* The event bus (SPEC §5.4, §5.5, §6): named events raised by the core, built-in modules and
 * scripts; event_route handlers run after the current message's processing; subscriptions
 * deliver the OpenSIPS >= 3.1 JSON-RPC notification (or a flatstore line) to sinks through a
 * bounded queue per sink, off the SIP path. Single-threaded: every function here runs on the
 * event loop's thread. Sink drivers see src/evi_sink.h. */
#ifndef LUNASIP_EVI_H
#define LUNASIP_EVI_H

#include <stddef.h>
#include <stdint.h>

struct ev_loop;

/* Event names: 1..EVI_NAME_MAX bytes of [A-Za-z0-9_:.-]. */
#define EVI_NAME_MAX    64
#define EVI_EVENTS_MAX  4096   /* distinct events (built-in + custom) */
#define EVI_PARAMS_MAX  64     /* params per raise */
#define EVI_PAYLOAD_MAX (64 * 1024) /* bytes of one JSON payload */
#define EVI_SOCKET_MAX  512    /* bytes of a socket string */
#define EVI_SUBS_MAX    256    /* subscriptions per event */
#define EVI_VIRTUAL_MAX 16     /* members of a virtual: socket */
#define EVI_HANDLER_DEPTH_MAX 8 /* raise_event inside event_route, nested */

enum evi_type {
    EVI_T_STR = 0,
    EVI_T_INT,
    EVI_T_BOOL,
    EVI_T_NIL,
};

/* One parameter of a raise. name NULL = positional (then every param of the raise must be
 * positional: the payload's params is an array). Borrowed for the time of the call. */
struct evi_param {
    const char *name; size_t nlen;
    int type;                 /* enum evi_type */
    const char *s; size_t slen;  /* EVI_T_STR */
    int64_t i;                /* EVI_T_INT; EVI_T_BOOL 0/1 */
};

#define EVI_STR(n, v)  { (n), sizeof(n) - 1, EVI_T_STR, (v), (v) ? strlen(v) : 0, 0 }
#define EVI_STRN(n, v, l) { (n), sizeof(n) - 1, EVI_T_STR, (v), (l), 0 }
#define EVI_INT(n, v)  { (n), sizeof(n) - 1, EVI_T_INT, NULL, 0, (int64_t)(v) }
#define EVI_BOOL(n, v) { (n), sizeof(n) - 1, EVI_T_BOOL, NULL, 0, (v) ? 1 : 0 }

/* What lunasip.conf's events = { ... } sets (SPEC §3.1; the timeouts are lunasip's own). */
struct evi_config {
    int queue_limit;          /* jobs queued per sink */
    int drop_newest;          /* overflow: 0 = drop the oldest queued job, 1 = refuse the new one */
    double connect_timeout;   /* s, tcp/http/rabbitmq connect (and AMQP login) */
    double send_timeout;      /* s, a write that makes no progress for this long fails */
    double retry_max;         /* s, reconnect backoff: 0.5 s doubling up to this */
    int heartbeat;            /* s, AMQP heartbeat; 0 = off */
};

/* Set up with the loop (listeners bound, before on_started). evi_configure applies a
 * reloaded events = {} (new limits apply to later jobs). */
int evi_init(struct ev_loop *loop, const struct evi_config *cfg);
void evi_configure(const struct evi_config *cfg);
/* Gives the sinks up to grace seconds to deliver what is queued (the loop keeps running
 * inside this call), then closes every sink and frees everything. */
void evi_shutdown(double grace);

/* Publishes name (idempotent). Returns the event id (>= 0), -EINVAL for a bad name, -ENOSPC
 * past EVI_EVENTS_MAX. */
int evi_publish(const char *name, size_t len);
/* 1 when name is a valid event name. */
int evi_name_valid(const char *name, size_t len);
/* The id of a published event, or -ENOENT. */
int evi_find(const char *name, size_t len);

/* Raises an event: publishes the name on first use, queues a delivery for every subscriber
 * and, when with_handlers, queues event_route[name] to run after the current processing.
 * Never blocks and never enters Lua. Returns the number of subscriptions the event was
 * queued for (>= 0), or -EINVAL (bad name, bad or mixed params, too many params),
 * -E2BIG (payload above EVI_PAYLOAD_MAX), -ENOSPC, -ENOMEM. */
int evi_raise(const char *name, size_t nlen, const struct evi_param *p, size_t n, int with_handlers);
/* The same for the core's built-in events: always with handlers; a name with a
 * Kamailio-style alias (E_CORE_STARTED -> core:started, E_CORE_RELOAD -> core:reload) is
 * raised under both names. */
int evi_raise_core(const char *name, const struct evi_param *p, size_t n);

/* ----- subscriptions (SPEC §6) ----- */

enum evi_src {
    EVI_SRC_SCRIPT = 0,  /* subscribe_event() from server.lua */
    EVI_SRC_CTL,         /* the control socket */
};

/* Subscribes socket (SPEC §6 syntax) to event, publishing the event name if new. expire in
 * seconds, 0 = never. Subscribing again the same socket text refreshes the expiry. Returns
 * 0, or a negative errno with err filled ("udp:1.2.3: port missing; allowed: ..."):
 * -EINVAL bad name or socket, -ENOSPC too many subscriptions, -ENOMEM. */
int evi_subscribe(const char *event, size_t elen, const char *socket, size_t slen, double expire,
                  enum evi_src src, char *err, size_t errlen);
/* 0, or -ENOENT when no such subscription. */
int evi_unsubscribe(const char *event, size_t elen, const char *socket, size_t slen);
/* Copies socket into out with the password of every rabbitmq: member replaced by "***",
 * for logs and answers (always NUL-terminated, truncated to outlen). */
void evi_socket_mask(const char *socket, char *out, size_t outlen);
/* Only checks a socket string (config checks, control socket). 0 or -EINVAL with err. */
int evi_socket_check(const char *socket, size_t slen, char *err, size_t errlen);

/* Script loads: subscriptions made while server.lua is being loaded take effect only when
 * that script is installed (a script that fails to load leaves none behind). */
void evi_script_load_begin(void);
void evi_script_load_end(int installed);

/* ----- introspection (control socket, metrics) ----- */

struct evi_event_info {
    const char *name;
    int id;
    int builtin;
    size_t nsubs;
    uint64_t raised;
};
/* Event by id (0..evi_event_count()-1): 0 or -ENOENT. */
size_t evi_event_count(void);
int evi_event_info(int id, struct evi_event_info *out);

struct evi_sub_info {
    const char *socket;  /* with passwords masked (evi_socket_mask) */
    double expire;      /* the period subscribed for, 0 = never */
    double expires_in;  /* seconds left, 0 = never */
    int src;            /* enum evi_src */
    uint64_t delivered, dropped;
};
/* The idx-th subscription of event id: 0 or -ENOENT past the end. */
int evi_sub_info(int id, size_t idx, struct evi_sub_info *out);

struct evi_sink_info {
    const char *socket;    /* a concrete sink (virtual: members are listed on their own),
                            * with its password masked */
    const char *state;     /* "unknown" | "up" | "down" */
    size_t queued;
    uint64_t delivered, failed, dropped;
};
size_t evi_sink_count(void);
int evi_sink_info(size_t idx, struct evi_sink_info *out);

/* Reopens what sinks keep open across writes (flatstore files): SIGHUP, evi:flat_rotate.
 * path NULL = every flatstore sink, else those writing that file. Returns how many. */
int evi_reopen(const char *path);

/* ----- event_route (the Lua side is wired by main through these hooks) ----- */

struct evi_hooks {
    /* Whether the current script has event_route[name]: 1 yes, 0 no. Called outside Lua. */
    int (*has_handler)(const char *name);
    /* Runs event_route[name] (evi_current_* answer for it meanwhile). */
    void (*run_handler)(const char *name);
    /* After a batch of handlers ran (the proxy runs routings they registered). */
    void (*after_handlers)(void);
};
void evi_set_hooks(const struct evi_hooks *h);
/* The script changed (reload) or assigned event_route at run time: forget cached answers. */
void evi_handlers_changed(void);
/* Runs the queued handlers now, in raise order, including those their raises queue (up to
 * EVI_HANDLER_DEPTH_MAX deep). The loop also runs them before it next sleeps. */
void evi_run_handlers(void);

/* The event whose handler is running: its name and params (borrowed, valid until the
 * handler returns). NULL / -ENOENT outside an event_route. */
const char *evi_current_name(void);
int evi_current_params(const struct evi_param **p, size_t *n);

#endif
