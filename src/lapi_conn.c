/* The Lua side of stream connections (SPEC §5.1-§5.3, §5.6): the hooks src/main.c plugs into
 * src/conn.h (WebSocketEvents.on_connection / on_disconnection and the TLS handshake
 * callbacks), the FFI functions behind lua/lunasip/connection.lua and lua/lunasip/tls.lua,
 * and the copy of a connection's cvars from an older Lua state into a newer one. */
#include "lapi_conn.h"

#include <ctype.h>
#include <lauxlib.h>
#include <lua.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "lapi.h"
#include "log.h"
#include "lvm.h"
#include "sip_msg.h"
#include "timer.h"
#include "tls.h"
#include "ws.h"

/* The Lua module holding the connection objects of a state (package.loaded[...]):
 * _objects[id] = object (its cvars in object._cv), _dispatch, _release. */
#define CONN_MODULE "lunasip.connection"
/* Nesting of cvars tables copied across states; deeper tables are not carried over. */
#define COPY_DEPTH 32

static struct tls_ctx *tls_cur; /* lunasip.tls.validate's trust (referenced) */

/* The connection a hook is asking Lua about: conn:close() on it rejects it, and inside
 * WebSocketEvents.on_connection conn:http_reject() gives the HTTP status. */
struct judge {
    uint64_t id;   /* 0: no hook running */
    int ws;        /* on_connection: http_reject allowed */
    int rejected;  /* conn:close() was called */
    int http_code; /* conn:http_reject(code) */
};
static struct judge judge;
static char reject_reason[LAPI_REASON_MAX + 1]; /* the hook's *reason, until the next upgrade */

/* A closed connection, kept for on_disconnection and the release of its Lua state when it
 * closed while Lua code was running (FFI code must never re-enter Lua). */
struct closed_conn {
    uint64_t id;
    struct lunasip_conn_info info;
    int ws_open;       /* a ws/wss connection that had opened: on_disconnection runs */
    int client_closed;
    int known;         /* some Lua state may hold an object for it */
    char name[96];     /* conn_name, for log lines */
};

/* Deferred work, run from the loop by a 0 ms timer: closes asked by conn:close(), and
 * connections that closed while Lua ran. */
static struct timer deferred;
static int deferred_ready;
static uint64_t *close_ids;
static size_t nclose, close_cap;
static struct closed_conn *closed;
static size_t nclosed, closed_cap;

static void run_deferred(struct timer *t);

static void arm_deferred(void)
{
    if (!deferred_ready) {
        timer_init(&deferred, run_deferred);
        deferred_ready = 1;
    }
    if (!timer_armed(&deferred) && timer_start(&deferred, 0) != 0)
        LOG_ERROR("connections: out of memory scheduling deferred work");
}

static void fill_info(const struct conn *c, struct lunasip_conn_info *out)
{
    memset(out, 0, sizeof(*out));
    snprintf(out->transport, sizeof(out->transport), "%s", sip_transport_name(c->transport));
    snprintf(out->remote_ip, sizeof(out->remote_ip), "%s", c->remote_ip);
    snprintf(out->local_ip, sizeof(out->local_ip), "%s", c->local_ip);
    out->remote_port = c->remote_port;
    out->local_port = c->local_port;
    if (c->tls) {
        const char *v = tls_session_version(c->tls), *sni = tls_session_sni(c->tls);
        if (v)
            snprintf(out->tls_version, sizeof(out->tls_version), "%s", v);
        if (sni)
            snprintf(out->tls_sni, sizeof(out->tls_sni), "%s", sni);
    }
}

/* ----- calling Lua ----- */

/* Pushes package.loaded[CONN_MODULE][name] (raw reads: no metamethod runs outside a
 * pcall). Returns 0, or -1 with nothing pushed when the module is not loaded. */
static int push_module_field(lua_State *L, const char *name)
{
    lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        return -1;
    }
    lua_pushstring(L, CONN_MODULE);
    lua_rawget(L, -2);
    lua_remove(L, -2);
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        return -1;
    }
    lua_pushstring(L, name);
    lua_rawget(L, -2);
    lua_remove(L, -2);
    return 0;
}

/* Whether the script defines table.fn (raw reads, as above). */
static int has_handler(lua_State *L, const char *table, const char *fn)
{
    int yes = 0;
    lua_pushstring(L, table);
    lua_rawget(L, LUA_GLOBALSINDEX);
    if (lua_istable(L, -1)) {
        lua_pushstring(L, fn);
        lua_rawget(L, -2);
        yes = lua_isfunction(L, -1);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return yes;
}

static void push_opt(lua_State *L, const char *s)
{
    if (s[0])
        lua_pushstring(L, s);
    else
        lua_pushnil(L);
}

/* The 8 values connection._dispatch takes to build the object: id, transport, remote ip,
 * remote port, local ip, local port, tls version, tls sni. */
static void push_info(lua_State *L, uint64_t id, const struct lunasip_conn_info *in)
{
    lua_pushnumber(L, (lua_Number)id);
    lua_pushstring(L, in->transport);
    lua_pushstring(L, in->remote_ip);
    lua_pushinteger(L, in->remote_port);
    lua_pushstring(L, in->local_ip);
    lua_pushinteger(L, in->local_port);
    push_opt(L, in->tls_version);
    push_opt(L, in->tls_sni);
}

/* Runs table.fn(conn, arg) in the current state through connection._dispatch (which builds
 * or finds the connection object); push_arg pushes arg. Returns 1 when the handler
 * accepted or there is none, 0 when it returned false, -1 when it raised an error (logged
 * with its traceback). *ran: the handler exists (Lua now knows the connection). */
static int dispatch(const char *table, const char *fn, uint64_t id, const struct lunasip_conn_info *info,
                    void (*push_arg)(lua_State *L, const void *arg), const void *arg, const char *name,
                    int *ran)
{
    struct lvm *vm = lvm_current;
    *ran = 0;
    if (!vm)
        return 1;
    lua_State *L = lvm_lua(vm);
    int top = lua_gettop(L), rc;
    if (!has_handler(L, table, fn))
        return 1;
    *ran = 1;
    char what[192];
    snprintf(what, sizeof(what), "%s.%s (%s)", table, fn, name);
    lvm_ref(vm);
    if (push_module_field(L, "_dispatch") != 0 || !lua_isfunction(L, -1)) {
        LOG_ERROR("%s: the lunasip library has no %s._dispatch", what, CONN_MODULE);
        rc = -1;
    } else {
        lua_pushstring(L, table);
        lua_pushstring(L, fn);
        push_info(L, id, info);
        push_arg(L, arg);
        if (lvm_call(vm, 11, 1, what) != 0)
            rc = -1;
        else
            rc = lua_toboolean(L, -1) ? 1 : 0;
    }
    lua_settop(L, top);
    lvm_unref(vm);
    return rc;
}

static void push_str(lua_State *L, struct sip_str s)
{
    if (s.s)
        lua_pushlstring(L, s.s, s.len);
    else
        lua_pushnil(L);
}

/* The http_request table of WebSocketEvents.on_connection (Lua adds the header() method):
 * method, uri (the request target), path, query (nil without '?'), version, host, origin
 * (nil when absent), headers (lower-case name -> first value). */
static void push_http_request(lua_State *L, const void *arg)
{
    const struct ws_http_request *r = arg;
    lua_createtable(L, 0, 8);
    push_str(L, r->method);
    lua_setfield(L, -2, "method");
    push_str(L, r->target);
    lua_setfield(L, -2, "uri");
    const char *q = r->target.s ? memchr(r->target.s, '?', r->target.len) : NULL;
    if (q) {
        lua_pushlstring(L, r->target.s, (size_t)(q - r->target.s));
        lua_setfield(L, -2, "path");
        lua_pushlstring(L, q + 1, r->target.len - (size_t)(q - r->target.s) - 1);
        lua_setfield(L, -2, "query");
    } else {
        push_str(L, r->target);
        lua_setfield(L, -2, "path");
    }
    push_str(L, r->version);
    lua_setfield(L, -2, "version");
    push_str(L, r->host);
    lua_setfield(L, -2, "host");
    push_str(L, r->origin);
    lua_setfield(L, -2, "origin");
    size_t n = r->nhdrs < WS_MAX_HEADERS ? r->nhdrs : WS_MAX_HEADERS;
    lua_createtable(L, 0, (int)n);
    for (size_t i = 0; i < n; i++) {
        const struct ws_http_header *h = &r->hdrs[i];
        if (!h->name.s)
            continue;
        luaL_Buffer b;
        luaL_buffinit(L, &b);
        for (uint32_t k = 0; k < h->name.len; k++)
            luaL_addchar(&b, (char)tolower((unsigned char)h->name.s[k]));
        luaL_pushresult(&b);
        lua_pushvalue(L, -1);
        lua_rawget(L, -3);
        if (lua_isnil(L, -1)) { /* the first value wins */
            lua_pop(L, 1);
            push_str(L, h->value.s ? h->value : (struct sip_str){ "", 0 });
            lua_rawset(L, -3);
        } else {
            lua_pop(L, 2);
        }
    }
    lua_setfield(L, -2, "headers");
}

/* The peer's certificate chain as a Lua list of PEM strings, leaf first (empty when it
 * sent none). */
static void push_pems(lua_State *L, const void *arg)
{
    const struct conn *c = arg;
    char *buf = NULL;
    size_t n = 0;
    lua_newtable(L);
    if (!c->tls)
        return;
    if (tls_session_peer_pems(c->tls, &buf, &n) != 0) {
        LOG_ERROR("%s: out of memory reading the peer's certificates", conn_name(c));
        return;
    }
    const char *p = buf;
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(p);
        lua_pushlstring(L, p, len);
        lua_rawseti(L, -2, (int)i + 1);
        p += len + 1;
    }
    free(buf);
}

static void push_bool(lua_State *L, const void *arg)
{
    lua_pushboolean(L, *(const int *)arg);
}

/* Drops the connection's object (and so its cvars) in every Lua state. */
static void release_everywhere(uint64_t id)
{
    struct lvm *vm = lvm_first(), *next;
    for (; vm; vm = next) {
        lua_State *L = lvm_lua(vm);
        int top = lua_gettop(L);
        lvm_ref(vm);
        if (push_module_field(L, "_release") == 0 && lua_isfunction(L, -1)) {
            lua_pushnumber(L, (lua_Number)id);
            lvm_call(vm, 1, 0, "releasing a connection's Lua state");
        }
        lua_settop(L, top);
        next = lvm_next(vm);
        lvm_unref(vm);
    }
}

static void run_closed(const struct closed_conn *cc)
{
    int ran = 0;
    if (cc->ws_open)
        dispatch("WebSocketEvents", "on_disconnection", cc->id, &cc->info, push_bool, &cc->client_closed, cc->name,
                 &ran);
    if (cc->known || ran)
        release_everywhere(cc->id);
}

static void run_deferred(struct timer *t)
{
    (void)t;
    /* take the lists: what runs below may add to them */
    uint64_t *ids = close_ids;
    size_t n = nclose;
    close_ids = NULL;
    nclose = close_cap = 0;
    for (size_t i = 0; i < n; i++) {
        struct conn *c = conn_get(ids[i]);
        if (c && c->state < CONN_CLOSING)
            conn_close(c, 0, NULL);
    }
    free(ids);
    struct closed_conn *cc = closed;
    n = nclosed;
    closed = NULL;
    nclosed = closed_cap = 0;
    for (size_t i = 0; i < n; i++)
        run_closed(&cc[i]);
    free(cc);
}

/* ----- the hooks (src/lapi_conn.h) ----- */

int lapi_conn_ws_upgrade(struct conn *c, const struct ws_http_request *r, const char **reason)
{
    struct lunasip_conn_info info;
    struct judge saved = judge;
    int ran, code = 0;
    *reason = NULL;
    reject_reason[0] = 0;
    fill_info(c, &info);
    judge = (struct judge){ c->id, 1, 0, 0 };
    int rc = dispatch("WebSocketEvents", "on_connection", c->id, &info, push_http_request, r, conn_name(c), &ran);
    if (ran)
        c->lua_ref = 1;
    if (rc < 0) {
        code = 500; /* no script text leaks to the peer */
    } else if (judge.http_code) {
        code = judge.http_code;
        if (reject_reason[0])
            *reason = reject_reason;
    } else if (rc == 0 || judge.rejected) {
        code = 403;
    }
    judge = saved;
    return code;
}

int lapi_conn_tls_handshake(struct conn *c, int server_side)
{
    const char *table = "SipEvents", *fn = "on_server_tls_handshake";
    struct lunasip_conn_info info;
    struct judge saved = judge;
    int ran;
    if (!server_side && c->no_server_tls_cb)
        return 0;
    if (server_side) {
        fn = "on_client_tls_handshake";
        if (c->transport == SIP_TP_WSS)
            table = "WebSocketEvents";
    }
    fill_info(c, &info);
    judge = (struct judge){ c->id, 0, 0, 0 };
    int rc = dispatch(table, fn, c->id, &info, push_pems, c, conn_name(c), &ran);
    if (ran)
        c->lua_ref = 1;
    int rejected = rc != 1 || judge.rejected;
    judge = saved;
    return rejected ? -1 : 0;
}

void lapi_conn_closed(struct conn *c, int was_open, int client_closed)
{
    struct closed_conn cc;
    cc.ws_open = was_open && (c->transport == SIP_TP_WS || c->transport == SIP_TP_WSS);
    cc.known = c->lua_ref != 0;
    if (!cc.known && !cc.ws_open)
        return;
    cc.id = c->id;
    cc.client_closed = client_closed ? 1 : 0;
    fill_info(c, &cc.info);
    snprintf(cc.name, sizeof(cc.name), "%s", conn_name(c));
    c->lua_ref = 0;
    if (!lvm_active) {
        run_closed(&cc);
        return;
    }
    /* src/conn.c calls on_close from the loop only; should a close ever be reported while
     * Lua code runs (inside an FFI call), Lua learns it from the loop's next turn */
    if (nclosed == closed_cap) {
        size_t cap = closed_cap ? closed_cap * 2 : 8;
        struct closed_conn *n = realloc(closed, cap * sizeof(*closed));
        if (!n) {
            LOG_ERROR("%s: out of memory: Lua keeps its cvars until the state is replaced", cc.name);
            return;
        }
        closed = n;
        closed_cap = cap;
    }
    closed[nclosed++] = cc;
    arm_deferred();
}

void lapi_set_tls_ctx(struct tls_ctx *ctx)
{
    if (ctx)
        tls_ctx_ref(ctx);
    if (tls_cur)
        tls_ctx_unref(tls_cur);
    tls_cur = ctx;
}

/* ----- FFI (src/lapi.h) ----- */

int lunasip_conn_info(uint64_t id, struct lunasip_conn_info *out)
{
    struct conn *c = conn_get(id);
    if (!c)
        return LAPI_GONE;
    fill_info(c, out);
    c->lua_ref = 1;
    return LAPI_OK;
}

static int close_pending(uint64_t id)
{
    for (size_t i = 0; i < nclose; i++)
        if (close_ids[i] == id)
            return 1;
    return 0;
}

int lunasip_conn_is_open(uint64_t id)
{
    struct conn *c = conn_get(id);
    if (!c || c->state >= CONN_CLOSING)
        return 0;
    if (judge.id == id && (judge.rejected || judge.http_code))
        return 0;
    return !close_pending(id);
}

int lunasip_conn_close(uint64_t id)
{
    struct conn *c = conn_get(id);
    if (!c || c->state >= CONN_CLOSING)
        return LAPI_GONE;
    if (judge.id == id) {
        judge.rejected = 1; /* the hook answers: 403 or a failed handshake */
        return LAPI_OK;
    }
    if (close_pending(id))
        return LAPI_OK;
    if (nclose == close_cap) {
        size_t cap = close_cap ? close_cap * 2 : 8;
        uint64_t *n = realloc(close_ids, cap * sizeof(*close_ids));
        if (!n)
            return LAPI_ENOMEM;
        close_ids = n;
        close_cap = cap;
    }
    close_ids[nclose++] = id;
    arm_deferred();
    return LAPI_OK;
}

int lunasip_conn_http_reject(uint64_t id, int code, const char *reason, size_t rlen)
{
    if (code < 400 || code > 699 || (reason && rlen > LAPI_REASON_MAX))
        return LAPI_EINVAL;
    for (size_t i = 0; reason && i < rlen; i++)
        if (reason[i] == '\r' || reason[i] == '\n' || reason[i] == 0)
            return LAPI_EINVAL;
    if (!judge.id || judge.id != id || !judge.ws)
        return LAPI_NONE;
    judge.http_code = code;
    if (reason) {
        memcpy(reject_reason, reason, rlen);
        reject_reason[rlen] = 0;
    } else {
        reject_reason[0] = 0;
    }
    return LAPI_OK;
}

int lunasip_tls_validate(const char *const *pems, const size_t *lens, size_t n, char *err, size_t errlen)
{
    if (errlen)
        err[0] = 0;
    if (n > LAPI_TLS_MAX_CHAIN) {
        snprintf(err, errlen, "chain too long (more than %d certificates)", LAPI_TLS_MAX_CHAIN);
        return 0;
    }
    int rc = tls_validate_pems(tls_cur, pems, lens, n, err, errlen);
    if (rc != 1 && errlen && !err[0])
        snprintf(err, errlen, "not valid");
    return rc == 1 ? 1 : 0;
}

int lunasip_tls_sip_identities(const char *pem, size_t len, char *out, size_t cap)
{
    if (cap == 0)
        return -1;
    out[0] = 0;
    return tls_sip_identities(pem, len, out, cap);
}

/* ----- cvars across a reload (SPEC §5.6) ----- */

static void copy_table(lua_State *S, int si, lua_State *L, int di, int seen, int depth);

/* Pushes onto L a copy of the value at S's index si: strings, numbers, booleans and tables
 * of those; nil for anything else (functions, userdata, cdata, coroutines: they belong to
 * their state). seen (an index in L) maps source tables to their copies, so shared and
 * cyclic tables stay shared. */
static void copy_value(lua_State *S, int si, lua_State *L, int seen, int depth)
{
    size_t n;
    const char *p;
    switch (lua_type(S, si)) {
    case LUA_TSTRING:
        p = lua_tolstring(S, si, &n);
        lua_pushlstring(L, p, n);
        return;
    case LUA_TNUMBER:
        lua_pushnumber(L, lua_tonumber(S, si));
        return;
    case LUA_TBOOLEAN:
        lua_pushboolean(L, lua_toboolean(S, si));
        return;
    case LUA_TTABLE:
        break;
    default:
        lua_pushnil(L);
        return;
    }
    if (depth >= COPY_DEPTH) {
        lua_pushnil(L);
        return;
    }
    void *key = (void *)lua_topointer(S, si);
    lua_pushlightuserdata(L, key);
    lua_rawget(L, seen);
    if (!lua_isnil(L, -1))
        return;
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushlightuserdata(L, key);
    lua_pushvalue(L, -2);
    lua_rawset(L, seen);
    copy_table(S, si, L, lua_gettop(L), seen, depth + 1);
}

/* Copies the plain entries of S's table at si into L's table at di (raw reads and writes:
 * no metamethod runs in either state). */
static void copy_table(lua_State *S, int si, lua_State *L, int di, int seen, int depth)
{
    if (si < 0)
        si = lua_gettop(S) + si + 1;
    if (!lua_checkstack(S, 4))
        return;
    luaL_checkstack(L, 6, "copying cvars");
    lua_pushnil(S);
    while (lua_next(S, si)) {
        int kt = lua_type(S, -2), vt = lua_type(S, -1);
        if ((kt == LUA_TSTRING || kt == LUA_TNUMBER || kt == LUA_TBOOLEAN) &&
            (vt == LUA_TSTRING || vt == LUA_TNUMBER || vt == LUA_TBOOLEAN || vt == LUA_TTABLE)) {
            copy_value(S, -2, L, seen, depth);
            copy_value(S, lua_gettop(S), L, seen, depth);
            if (lua_isnil(L, -1))
                lua_pop(L, 2);
            else
                lua_rawset(L, di);
        }
        lua_pop(S, 1);
    }
}

/* Pushes onto S the cvars table S holds for connection id and returns 1, or pushes nothing
 * and returns 0. */
static int push_cvars(lua_State *S, lua_Number id)
{
    int top = lua_gettop(S);
    if (!lua_checkstack(S, 4) || push_module_field(S, "_objects") != 0)
        return 0;
    if (lua_istable(S, -1)) {
        lua_pushnumber(S, id);
        lua_rawget(S, -2);
        if (lua_istable(S, -1)) {
            lua_pushstring(S, "_cv");
            lua_rawget(S, -2);
            if (lua_istable(S, -1)) {
                lua_replace(S, top + 1);
                lua_settop(S, top + 1);
                return 1;
            }
        }
    }
    lua_settop(S, top);
    return 0;
}

struct copy_job {
    lua_State *S;
    int dest_ref; /* the destination table in L's registry */
};

static int do_copy(lua_State *L)
{
    struct copy_job *job = lua_touserdata(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, job->dest_ref);
    lua_newtable(L); /* seen: the root first, for a cvars table that holds itself */
    lua_pushlightuserdata(L, (void *)lua_topointer(job->S, -1));
    lua_pushvalue(L, 2);
    lua_rawset(L, 3);
    copy_table(job->S, -1, L, 2, 3, 1);
    return 0;
}

/* import_cvars(id, t): copies into t the plain values another live state keeps in that
 * connection's cvars (the newest such state). Returns true when one had them. */
static int l_import_cvars(lua_State *L)
{
    lua_Number id = luaL_checknumber(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_pushvalue(L, 2);
    struct copy_job job = { NULL, luaL_ref(L, LUA_REGISTRYINDEX) }; /* may raise: before S is touched */
    int found = 0;
    for (struct lvm *vm = lvm_first(); vm; vm = lvm_next(vm)) {
        lua_State *S = lvm_lua(vm);
        if (S == L)
            continue;
        int top = lua_gettop(S);
        if (!push_cvars(S, id))
            continue;
        job.S = S;
        found = 1;
        if (lua_cpcall(L, do_copy, &job) != 0) {
            LOG_ERROR("copying a connection's cvars between Lua states: %s", lua_tostring(L, -1));
            lua_pop(L, 1);
            found = 0;
        }
        lua_settop(S, top);
        break;
    }
    luaL_unref(L, LUA_REGISTRYINDEX, job.dest_ref);
    lua_pushboolean(L, found);
    return 1;
}

/* ----- cvars at a reload: what the older states keep goes to the new one ----- */

struct adopt_job {
    lua_State *S; /* the older state: its object's _f and _cv tables on top */
    lua_Number id;
};

/* In the new state L: Connection._adopt(id, copy of _f, copy of _cv). Run under lua_cpcall. */
static int do_adopt(lua_State *L)
{
    struct adopt_job *job = lua_touserdata(L, 1);
    lua_settop(L, 0);
    if (push_module_field(L, "_adopt") != 0 || !lua_isfunction(L, -1))
        return 0;
    lua_pushnumber(L, job->id);
    for (int i = -2; i <= -1; i++) { /* _f then _cv */
        lua_newtable(L);
        int dest = lua_gettop(L);
        lua_newtable(L); /* seen */
        lua_pushlightuserdata(L, (void *)lua_topointer(job->S, i));
        lua_pushvalue(L, dest);
        lua_rawset(L, dest + 1);
        copy_table(job->S, i, L, dest, dest + 1, 1);
        lua_pop(L, 1);
    }
    lua_call(L, 3, 0);
    return 0;
}

/* Copies into vm the cvars of every connection an older state knows and vm does not. */
void lapi_conn_adopt(struct lvm *vm)
{
    lua_State *L = lvm_lua(vm);
    for (struct lvm *o = lvm_first(); o; o = lvm_next(o)) {
        lua_State *S = lvm_lua(o);
        if (S == L)
            continue;
        int top = lua_gettop(S);
        if (!lua_checkstack(S, 8) || push_module_field(S, "_objects") != 0)
            continue;
        if (!lua_istable(S, -1)) {
            lua_settop(S, top);
            continue;
        }
        int objs = lua_gettop(S);
        lua_pushnil(S);
        while (lua_next(S, objs)) {
            /* key: id, value: object; its _f and _cv */
            if (lua_type(S, -2) == LUA_TNUMBER && lua_istable(S, -1)) {
                lua_pushstring(S, "_f");
                lua_rawget(S, -2);
                lua_pushstring(S, "_cv");
                lua_rawget(S, -3);
                if (lua_istable(S, -2) && lua_istable(S, -1)) {
                    struct adopt_job job = { S, lua_tonumber(S, -4) };
                    if (lua_cpcall(L, do_adopt, &job) != 0) {
                        LOG_ERROR("reload: copying the cvars of connection %.0f: %s", job.id, lua_tostring(L, -1));
                        lua_pop(L, 1);
                    }
                }
                lua_pop(S, 2);
            }
            lua_pop(S, 1);
        }
        lua_settop(S, top);
    }
}

int lapi_conn_luaopen(lua_State *L)
{
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, l_import_cvars);
    lua_setfield(L, -2, "import_cvars");
    return 1;
}
