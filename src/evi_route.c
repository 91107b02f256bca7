/* The event_route queue (SPEC §5.4): a FIFO of handler invocations, each with its own copy
 * of the params, run one at a time by evi_run_handlers before the loop sleeps. A raise inside
 * a handler is queued behind the others, one level deeper; past EVI_HANDLER_DEPTH_MAX the
 * handler is not run (logged, counted). Which script runs them is the hooks' business: the
 * installed one when they run. */
#include "evi_route.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "evi.h"
#include "log.h"
#include "stats.h"

/* A queued event_route invocation: the params are copied into one block. */
struct hitem {
    struct hitem *next;
    const char *name;
    struct evi_route_cache *cache;
    int depth;
    size_t n;
    struct evi_param *p;
};

static struct {
    struct hitem *head, **tail;
    int running;
    struct hitem *current;
    struct evi_hooks hooks;
    uint32_t epoch;
} R = { .tail = &R.head, .epoch = 1 };

int evi_route_wanted(const struct evi_route_cache *c)
{
    if (!R.hooks.run_handler)
        return 0;
    if (c->epoch == R.epoch)
        return c->has;
    return 1; /* unknown: queue, the dispatcher asks the script */
}

int evi_route_queue(const char *name, struct evi_route_cache *c, const struct evi_param *p, size_t n)
{
    int depth = R.current ? R.current->depth + 1 : 0;
    if (depth > EVI_HANDLER_DEPTH_MAX) {
        stats.events_depth_capped++;
        LOG_WARN("event_route[\"%s\"] not run: raised %d handlers deep (limit %d)", name, depth,
                 EVI_HANDLER_DEPTH_MAX);
        return 0;
    }
    size_t sz = sizeof(struct hitem) + n * sizeof(struct evi_param);
    for (size_t i = 0; i < n; i++)
        sz += (p[i].name ? p[i].nlen + 1 : 0) + (p[i].type == EVI_T_STR ? p[i].slen + 1 : 0);
    struct hitem *h = malloc(sz);
    if (!h) {
        LOG_ERROR("event_route[\"%s\"] not run: out of memory", name);
        return 0;
    }
    h->next = NULL;
    h->name = name;
    h->cache = c;
    h->depth = depth;
    h->n = n;
    h->p = (struct evi_param *)(h + 1);
    char *blob = (char *)(h->p + n);
    for (size_t i = 0; i < n; i++) {
        h->p[i] = p[i];
        if (p[i].name) {
            memcpy(blob, p[i].name, p[i].nlen);
            blob[p[i].nlen] = 0;
            h->p[i].name = blob;
            blob += p[i].nlen + 1;
        }
        if (p[i].type == EVI_T_STR) {
            if (p[i].slen)
                memcpy(blob, p[i].s, p[i].slen);
            blob[p[i].slen] = 0;
            h->p[i].s = blob;
            blob += p[i].slen + 1;
        } else {
            h->p[i].s = NULL;
            h->p[i].slen = 0;
        }
    }
    *R.tail = h;
    R.tail = &h->next;
    return 1;
}

int evi_route_pending(void)
{
    return R.head != NULL;
}

void evi_route_clear(void)
{
    struct hitem *h;
    while ((h = R.head) != NULL) {
        R.head = h->next;
        free(h);
    }
    R.tail = &R.head;
}

void evi_set_hooks(const struct evi_hooks *h)
{
    if (h)
        R.hooks = *h;
    else
        memset(&R.hooks, 0, sizeof(R.hooks));
    evi_handlers_changed();
}

void evi_handlers_changed(void)
{
    if (++R.epoch == 0)
        R.epoch = 1;
}

void evi_run_handlers(void)
{
    if (R.running || R.current)
        return;
    R.running = 1;
    int ran = 0;
    struct hitem *h;
    while ((h = R.head) != NULL) {
        R.head = h->next;
        if (!R.head)
            R.tail = &R.head;
        struct evi_route_cache *c = h->cache;
        if (c->epoch != R.epoch && R.hooks.has_handler) {
            c->has = R.hooks.has_handler(h->name) ? 1 : 0;
            c->epoch = R.epoch;
        }
        if (c->has && R.hooks.run_handler) {
            R.current = h;
            stats.events_handlers++;
            R.hooks.run_handler(h->name);
            R.current = NULL;
            ran = 1;
        }
        free(h);
    }
    R.running = 0;
    if (ran && R.hooks.after_handlers)
        R.hooks.after_handlers();
}

const char *evi_current_name(void)
{
    return R.current ? R.current->name : NULL;
}

int evi_current_params(const struct evi_param **p, size_t *n)
{
    if (!R.current)
        return -ENOENT;
    *p = R.current->p;
    *n = R.current->n;
    return 0;
}
