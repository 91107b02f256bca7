/* Lua VM lifecycle: builds a LuaJIT state for server.lua, validates what the script
 * defined, runs the OverSIP-style callbacks under a traceback handler, and keeps a
 * replaced state alive while anything still references it. SPEC §5, §5.1, §5.6. */
#include "lvm.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "evi.h"
#include "lapi.h"
#include "lapi_conn.h"
#include "log.h"
#include "sip_msg.h"
#include "stats.h"

struct lvm {
    lua_State *L;
    int refs;
    unsigned gen;
    int ref_dispatch;   /* lunasip._dispatch_request */
    int ref_proxy;      /* lunasip._dispatch_proxy */
    int ref_traceback;  /* message handler */
    int ref_event;      /* lunasip._dispatch_event */
    int ref_has_event;  /* lunasip._has_event_route */
    struct lvm *next;   /* the list of live states, newest first */
};

struct lvm *lvm_current;
struct lvm *lvm_active;
static unsigned next_gen = 1;
static struct lvm *all_states; /* every state not closed yet (lvm_first) */

/* The message handler of every pcall: the error with a traceback of the failing stack. */
static int traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (!msg)
        msg = lua_isnoneornil(L, 1) ? "(error object is nil)" : "(error object is not a string)";
    luaL_traceback(L, L, msg, 1);
    return 1;
}

/* LuaJIT shortens chunk names to LUA_IDSIZE ("...tail/of/server.lua:3: ..."); an operator
 * needs the whole path. Copies in to out, replacing every "..." followed by a tail of path
 * (up to the next ':') with path itself. */
static void expand_path(const char *in, const char *path, char *out, size_t outlen)
{
    size_t plen = path ? strlen(path) : 0, o = 0;
    const char *p = in;
    while (*p && o + 1 < outlen) {
        if (plen && p[0] == '.' && p[1] == '.' && p[2] == '.') {
            const char *t = p + 3, *colon = strchr(t, ':');
            size_t tl = colon ? (size_t)(colon - t) : 0;
            if (tl > 0 && tl < plen && memcmp(path + plen - tl, t, tl) == 0) {
                size_t n = plen < outlen - 1 - o ? plen : outlen - 1 - o;
                memcpy(out + o, path, n);
                o += n;
                p = colon;
                continue;
            }
        }
        out[o++] = *p++;
    }
    out[o] = 0;
}

static const char *script_path; /* for expand_path in log_lua_error */

/* Logs a multi-line Lua error one line at a time (log lines never embed newlines). */
static void log_lua_error(const char *what, const char *raw)
{
    char err[8192];
    expand_path(raw ? raw : "(no message)", script_path, err, sizeof(err));
    const char *p = err;
    int first = 1;
    while (*p) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        if (first)
            LOG_ERROR("%s: %.*s", what, (int)n, p);
        else
            LOG_ERROR("  %.*s", (int)n, p);
        first = 0;
        p += n;
        if (*p == '\n')
            p++;
    }
}

static const char *const callback_tables[] = { "SystemEvents", "SipEvents", "WebSocketEvents", NULL };
static const char *const callback_names[][8] = {
    { "on_started", "on_user_reload", "on_terminated", NULL },
    { "on_request", "on_client_tls_handshake", "on_server_tls_handshake", NULL },
    { "on_connection", "on_disconnection", "on_client_tls_handshake", NULL },
};

/* After the script ran: the callback tables must still be tables and hold only known
 * callbacks, each a function. A typo (SipEvents.on_requets) is an error, not silence. */
static int validate(lua_State *L, const char *script, char *err, size_t errlen)
{
    for (int t = 0; callback_tables[t]; t++) {
        lua_getglobal(L, callback_tables[t]);
        if (!lua_istable(L, -1)) {
            snprintf(err, errlen, "%s: %s must stay a table, got %s", script, callback_tables[t],
                     luaL_typename(L, -1));
            lua_pop(L, 1);
            return -1;
        }
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
            int known = 0;
            for (int i = 0; k && callback_names[t][i]; i++)
                if (strcmp(k, callback_names[t][i]) == 0)
                    known = 1;
            if (!known) {
                char allowed[256] = "";
                for (int i = 0; callback_names[t][i]; i++) {
                    strncat(allowed, i ? ", " : "", sizeof(allowed) - strlen(allowed) - 1);
                    strncat(allowed, callback_names[t][i], sizeof(allowed) - strlen(allowed) - 1);
                }
                snprintf(err, errlen, "%s: %s.%s: unknown callback; allowed: %s", script,
                         callback_tables[t], k ? k : "(non-string key)", allowed);
                lua_pop(L, 3);
                return -1;
            }
            if (!lua_isfunction(L, -1)) {
                snprintf(err, errlen, "%s: %s.%s: expected a function, got %s", script,
                         callback_tables[t], k, luaL_typename(L, -1));
                lua_pop(L, 3);
                return -1;
            }
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    return 0;
}

/* After the script ran: event_route entries are event names mapped to functions (the
 * table checks assignments itself; this catches a script that replaced it). */
static int validate_event_routes(lua_State *L, const char *script, char *err, size_t errlen)
{
    lua_getglobal(L, "lunasip");
    lua_getfield(L, -1, "_check_event_routes");
    if (lua_isfunction(L, -1) && lua_pcall(L, 0, 1, 1) == 0 && lua_isstring(L, -1)) {
        snprintf(err, errlen, "%s: %s", script, lua_tostring(L, -1));
        lua_settop(L, 1);
        return -1;
    }
    lua_settop(L, 1);
    return 0;
}

/* Runs the bootstrap: paths, callback tables, the lunasip library, the event globals. */
static int bootstrap(lua_State *L, const struct lvm_env *env, char *err, size_t errlen)
{
    static const char code[] =
        "local lua_dir, conf_dir = ...\n"
        "package.path = lua_dir .. '/?.lua;' .. lua_dir .. '/?/init.lua;' ..\n"
        "  conf_dir .. '/lib/?.lua;' .. conf_dir .. '/lib/?/init.lua;' .. package.path\n"
        "SystemEvents, SipEvents, WebSocketEvents = {}, {}, {}\n"
        "lunasip = require 'lunasip'\n"
        "local ev = lunasip.events\n"
        "raise_event, subscribe_event, unsubscribe_event = ev.raise_event, ev.subscribe_event, ev.unsubscribe_event\n"
        "fetch_event_params, event_route = ev.fetch_event_params, ev.event_route\n"
        "return lunasip._dispatch_request, lunasip._dispatch_proxy\n";
    if (luaL_loadbuffer(L, code, sizeof(code) - 1, "=lunasip-bootstrap") != 0) {
        snprintf(err, errlen, "bootstrap: %s", lua_tostring(L, -1));
        return -1;
    }
    lua_pushstring(L, env->lua_dir);
    lua_pushstring(L, env->conf_dir);
    if (lua_pcall(L, 2, 2, 1) != 0) {
        snprintf(err, errlen, "loading the lunasip Lua library from %s: %s", env->lua_dir, lua_tostring(L, -1));
        return -1;
    }
    if (!lua_isfunction(L, -2) || !lua_isfunction(L, -1)) {
        snprintf(err, errlen, "%s/lunasip.lua: _dispatch_request or _dispatch_proxy missing", env->lua_dir);
        return -1;
    }
    return 0;
}

int lvm_create(const struct lvm_env *env, struct lvm **out, char *err, size_t errlen)
{
    struct lvm *vm = calloc(1, sizeof(*vm));
    if (!vm) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    lua_State *L = luaL_newstate();
    if (!L) {
        free(vm);
        snprintf(err, errlen, "cannot create a Lua state (out of memory)");
        return -1;
    }
    luaL_openlibs(L);
    /* require "lunasip.core_conn": the C functions of lua/lunasip/connection.lua that need
     * a lua_State (copying cvars between states on reload) */
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, lapi_conn_luaopen);
    lua_setfield(L, -2, "lunasip.core_conn");
    lua_pop(L, 2);
    lua_pushcfunction(L, traceback); /* stack[1]: the message handler for every pcall */
    if (bootstrap(L, env, err, errlen) != 0)
        goto fail;
    vm->ref_proxy = luaL_ref(L, LUA_REGISTRYINDEX);
    vm->ref_dispatch = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushvalue(L, 1);
    vm->ref_traceback = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_getglobal(L, "lunasip");
    lua_getfield(L, -1, "_dispatch_event");
    lua_getfield(L, -2, "_has_event_route");
    if (!lua_isfunction(L, -1) || !lua_isfunction(L, -2)) {
        snprintf(err, errlen, "%s/lunasip.lua: _dispatch_event or _has_event_route missing", env->lua_dir);
        goto fail;
    }
    vm->ref_has_event = luaL_ref(L, LUA_REGISTRYINDEX);
    vm->ref_event = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pop(L, 1);

    if (luaL_loadfile(L, env->script) != 0 || lua_pcall(L, 0, 0, 1) != 0) {
        /* "path:line: message", the path possibly shortened by LuaJIT */
        expand_path(lua_tostring(L, -1), env->script, err, errlen);
        goto fail;
    }
    if (validate(L, env->script, err, errlen) != 0 || validate_event_routes(L, env->script, err, errlen) != 0)
        goto fail;
    lua_settop(L, 0);
    vm->L = L;
    vm->refs = 1;
    script_path = env->script; /* lives in the config, as long as the process */
    vm->gen = next_gen++;
    vm->next = all_states;
    all_states = vm;
    *out = vm;
    return 0;

fail:
    lua_close(L);
    free(vm);
    return -1;
}

void lvm_ref(struct lvm *vm)
{
    vm->refs++;
}

void lvm_unref(struct lvm *vm)
{
    if (!vm || --vm->refs > 0)
        return;
    LOG_DEBUG("closing Lua state %u", vm->gen);
    for (struct lvm **pp = &all_states; *pp; pp = &(*pp)->next)
        if (*pp == vm) {
            *pp = vm->next;
            break;
        }
    lua_close(vm->L);
    free(vm);
}

void lvm_install(struct lvm *vm)
{
    struct lvm *old = lvm_current;
    lvm_current = vm;
    if (vm)
        lapi_conn_adopt(vm); /* connections' cvars survive the reload (SPEC §5.6) */
    if (old)
        lvm_unref(old);
}

unsigned lvm_generation(const struct lvm *vm)
{
    return vm->gen;
}

struct lua_State *lvm_lua(struct lvm *vm)
{
    return vm->L;
}

struct lvm *lvm_first(void)
{
    return all_states;
}

struct lvm *lvm_next(const struct lvm *vm)
{
    return vm->next;
}

/* lua_pcall in vm with lvm_active naming it for the time of the call (nested calls
 * restore the outer one). */
static int vm_pcall(struct lvm *vm, int nargs, int nresults, int errfunc)
{
    struct lvm *prev = lvm_active;
    lvm_active = vm;
    int rc = lua_pcall(vm->L, nargs, nresults, errfunc);
    lvm_active = prev;
    return rc;
}

/* The coarse clock (a few ms of resolution, no TSC read) is enough to catch a handler
 * slower than 100 ms, and it is read twice per request. */
static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void check_slow(const char *what, int64_t t0, const struct sip_msg *m)
{
    int64_t us = now_us() - t0;
    if (us < LVM_SLOW_US)
        return;
    stats.lua_slow++;
    /* SPEC §5.5 E_CORE_THRESHOLD: source, time (µs), extra (the Call-ID when there is one) */
    struct evi_param p[] = {
        EVI_STR("source", what),
        EVI_INT("time", us),
        EVI_STRN("extra", m ? m->call_id.s : "", m ? m->call_id.len : 0),
    };
    evi_raise_core("E_CORE_THRESHOLD", p, 3);
    if (m)
        LOG_WARN("%s took %lld ms (threshold %d ms), Call-ID %.*s", what, (long long)(us / 1000),
                 LVM_SLOW_US / 1000, (int)m->call_id.len, m->call_id.s);
    else
        LOG_WARN("%s took %lld ms (threshold %d ms)", what, (long long)(us / 1000), LVM_SLOW_US / 1000);
}

/* Calls the function under nargs arguments on the stack, timed and with its error logged as
 * what's (errfunc: the traceback handler's index). 0, or -1 when it raised an error. */
static int call_logged(struct lvm *vm, int nargs, int nresults, int errfunc, const char *what)
{
    int64_t t0 = now_us();
    int rc = 0;
    if (vm_pcall(vm, nargs, nresults, errfunc) != 0) {
        stats.lua_errors++;
        log_lua_error(what, lua_tostring(vm->L, -1));
        lua_pop(vm->L, 1);
        rc = -1;
    }
    check_slow(what, t0, NULL);
    return rc;
}

int lvm_call(struct lvm *vm, int nargs, int nresults, const char *what)
{
    lua_State *L = vm->L;
    int base = lua_gettop(L) - nargs; /* the function */
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->ref_traceback);
    lua_insert(L, base);
    int rc = call_logged(vm, nargs, nresults, base, what);
    lua_remove(L, base);
    return rc;
}

int lvm_system_event(struct lvm *vm, const char *name, const char *arg)
{
    lua_State *L = vm->L;
    char what[64];
    int rc = 0;
    lvm_ref(vm);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->ref_traceback);
    lua_getglobal(L, "SystemEvents");
    lua_getfield(L, -1, name);
    if (lua_isfunction(L, -1)) {
        snprintf(what, sizeof(what), "SystemEvents.%s", name);
        int nargs = 0;
        if (arg) {
            lua_pushstring(L, arg);
            nargs = 1;
        }
        rc = call_logged(vm, nargs, 0, -3 - nargs, what);
    }
    lua_settop(L, 0);
    lvm_unref(vm);
    return rc;
}

int lvm_on_request(struct lvm *vm, struct sip_msg *m)
{
    lua_State *L = vm->L;
    uint32_t gen = 0;
    uint32_t h = m->handle;
    if (!h && !(h = lapi_msg_bind(m, &gen)))
        return LVM_REQ_FAILED;
    if (gen == 0)
        lapi_msg_generation(m, &gen);
    lvm_ref(vm);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->ref_traceback);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->ref_dispatch);
    lua_pushnumber(L, h);
    lua_pushnumber(L, gen);
    int64_t t0 = now_us();
    int rc = 0;
    if (vm_pcall(vm, 2, 0, 1) != 0) {
        char what[160];
        stats.lua_errors++;
        snprintf(what, sizeof(what), "SipEvents.on_request failed (Call-ID %.*s)",
                 (int)(m->call_id.len > 80 ? 80 : m->call_id.len), m->call_id.s);
        log_lua_error(what, lua_tostring(L, -1));
        rc = -1;
    }
    check_slow("SipEvents.on_request", t0, m);
    lua_settop(L, 0);
    lvm_unref(vm);
    unsigned st = lapi_msg_state(m);
    return (int)(st | (rc < 0 ? LVM_REQ_FAILED : 0));
}

int lvm_proxy_event(struct lvm *vm, uint32_t ctx, const struct lvm_proxy_ev *ev, const struct sip_msg *m)
{
    lua_State *L = vm->L;
    int nargs = 2, flags = 0;
    lvm_ref(vm);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->ref_traceback);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->ref_proxy);
    lua_pushnumber(L, ctx);
    lua_pushstring(L, ev->event);
    if (ev->h) {
        lua_pushnumber(L, ev->h);
        lua_pushnumber(L, ev->g);
        nargs += 2;
    } else if (ev->s1) {
        if (ev->s3) { /* error: status, reason, code */
            lua_pushinteger(L, ev->n);
            lua_pushstring(L, ev->s1);
            lua_pushstring(L, ev->s3);
        } else {      /* target: transport, ip, port */
            lua_pushstring(L, ev->s1);
            lua_pushstring(L, ev->s2);
            lua_pushinteger(L, ev->n);
        }
        nargs += 3;
    }
    int64_t t0 = now_us();
    if (vm_pcall(vm, nargs, 1, 1) != 0) {
        char what[160];
        stats.lua_errors++;
        if (m)
            snprintf(what, sizeof(what), "proxy callback for \"%s\" failed (Call-ID %.*s)", ev->event,
                     (int)(m->call_id.len > 80 ? 80 : m->call_id.len), m->call_id.s);
        else
            snprintf(what, sizeof(what), "proxy callback for \"%s\" failed", ev->event);
        log_lua_error(what, lua_tostring(L, -1));
        flags = LVM_REQ_FAILED;
    } else if (lua_isnumber(L, -1)) {
        flags = (int)lua_tointeger(L, -1);
    }
    char what[64];
    snprintf(what, sizeof(what), "proxy callback \"%s\"", ev->event);
    check_slow(what, t0, m);
    lua_settop(L, 0);
    lvm_unref(vm);
    return flags;
}

int lvm_has_event_route(struct lvm *vm, const char *name)
{
    lua_State *L = vm->L;
    int yes = 0;
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->ref_traceback);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->ref_has_event);
    lua_pushstring(L, name);
    if (vm_pcall(vm, 1, 1, 1) == 0)
        yes = lua_toboolean(L, -1);
    lua_settop(L, 0);
    return yes;
}

int lvm_event_route(struct lvm *vm, const char *name)
{
    lua_State *L = vm->L;
    int rc = 0;
    char what[96];
    snprintf(what, sizeof(what), "event_route[\"%s\"]", name);
    lvm_ref(vm);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->ref_traceback);
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->ref_event);
    lua_pushstring(L, name);
    if ((rc = call_logged(vm, 1, 0, 1, what)) != 0)
        stats.events_handler_errors++;
    lua_settop(L, 0);
    lvm_unref(vm);
    return rc;
}
