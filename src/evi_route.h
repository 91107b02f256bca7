/* The event_route queue (SPEC §5.4): handlers run after the current message's processing,
 * in raise order, one at a time, with nested raises queued behind (EVI_HANDLER_DEPTH_MAX
 * deep). The bus (evi.c) queues; the loop runs the queue before it sleeps. */
#ifndef LUNASIP_EVI_ROUTE_H
#define LUNASIP_EVI_ROUTE_H

#include <stddef.h>
#include <stdint.h>

struct evi_param;

/* What the bus remembers per event about the script's handlers: whether event_route[name]
 * exists, valid while epoch is the current one (evi_handlers_changed moves it). */
struct evi_route_cache {
    int has;
    uint32_t epoch;
};

/* Whether a raise of this event should queue its handler: yes when the script has one or
 * nobody asked yet (the dispatcher asks the installed script, outside Lua). */
int evi_route_wanted(const struct evi_route_cache *c);
/* Queues event_route[name] with a copy of the params. name and c must live until the queue
 * is run or cleared (the bus's events do). Returns 1 when queued, 0 when refused (too deep,
 * out of memory: logged and counted). */
int evi_route_queue(const char *name, struct evi_route_cache *c, const struct evi_param *p, size_t n);
/* Handlers wait in the queue. */
int evi_route_pending(void);
/* Forgets every queued handler (shutdown). */
void evi_route_clear(void);

#endif
