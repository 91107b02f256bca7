/* The FFI side of the Lua event API (SPEC §5.4): raise_event, subscribe_event,
 * unsubscribe_event and fetch_event_params call these (lua/lunasip/events.lua). Like every
 * lunasip_* FFI function they never touch a lua_State; handlers run later, from the loop. */
#include <errno.h>
#include <string.h>

#include "evi.h"
#include "lapi.h"

int lunasip_event_raise(const char *name, size_t nlen, const struct evi_param *p, size_t n, int with_handlers)
{
    return evi_raise(name, nlen, p, n, with_handlers);
}

int lunasip_event_subscribe(const char *ev, size_t elen, const char *sock, size_t slen, double expire,
                            char *err, size_t errlen)
{
    if (errlen)
        err[0] = 0;
    return evi_subscribe(ev, elen, sock, slen, expire, EVI_SRC_SCRIPT, err, errlen);
}

int lunasip_event_unsubscribe(const char *ev, size_t elen, const char *sock, size_t slen)
{
    return evi_unsubscribe(ev, elen, sock, slen);
}

int lunasip_event_current(const char **name, size_t *nparams)
{
    const struct evi_param *p;
    if (evi_current_params(&p, nparams) != 0)
        return LAPI_NONE;
    *name = evi_current_name();
    return LAPI_OK;
}

int lunasip_event_param(size_t idx, const char **name, size_t *nlen, int *type, const char **s,
                        size_t *slen, int64_t *i)
{
    const struct evi_param *p;
    size_t n;
    if (evi_current_params(&p, &n) != 0 || idx >= n)
        return LAPI_NONE;
    *name = p[idx].name;
    *nlen = p[idx].name ? p[idx].nlen : 0;
    *type = p[idx].type;
    *s = p[idx].s;
    *slen = p[idx].slen;
    *i = p[idx].i;
    return LAPI_OK;
}

void lunasip_event_route_changed(void)
{
    evi_handlers_changed();
}

int lunasip_event_name_valid(const char *s, size_t n)
{
    return evi_name_valid(s, n);
}
