/* The metrics endpoint (SPEC §8, core.metrics_listen): GET /metrics answers the counters of
 * stats.h and the event bus in the Prometheus text exposition format 0.0.4. */
#ifndef LUNASIP_METRICS_H
#define LUNASIP_METRICS_H

#include <stddef.h>

struct ev_loop;
struct json_buf;

/* Listens on listen ("IPv4:PORT" or "[IPv6]:PORT", as config.c normalises
 * core.metrics_listen). 0, or -1 with err filled. */
int metrics_start(struct ev_loop *loop, const char *listen, char *err, size_t errlen);
/* Closes the listener and every connection. */
void metrics_stop(void);

/* Appends the exposition text to b (what GET /metrics answers). 0, or -1 when b ran out
 * (b->oom). */
int metrics_render(struct json_buf *b);

#endif
