/* Configuration loader: lunasip.conf (SPEC §3.1) and proxies.conf (SPEC §3.2). Each file is a
 * Lua chunk run in an empty sandbox (no library at all, JIT off, an instruction budget and a
 * memory cap); the globals it sets are then read, defaulted and validated key by key.
 *
 * Who uses what. Most keys are validated now so that a typo fails at startup, but take effect
 * only when the feature that reads them lands:
 *   core.log_level, core.syslog_facility ......... logging (log.c, main.c)
 *   core.script ................................... Lua VM (server.lua)
 *   core.nameservers; proxies.conf use_dns, use_dns_cache, dns_cache_time, use_naptr,
 *     use_srv, transport_preference, force_transport_preference, ip_type_preference,
 *     dns_failover_on_503, use_blacklist, blacklist_time .. DNS and target selection (RFC 3263)
 *   core.control_socket ........................... control socket (SPEC §8)
 *   core.metrics_listen ........................... metrics endpoint (SPEC §8)
 *   core.shutdown_grace ........................... graceful shutdown (SPEC §2)
 *   core.workers .................................. worker processes (SPEC §10)
 *   sip.listen (udp now; tcp/tls/ws/wss) .......... transports
 *   sip.advertised_address, sip.local_domains ..... proxy core (Via/Record-Route, myself)
 *   sip.max_message_size .......................... SIP parser / transports
 *   sip.tcp_connect_timeout, header_timeout, connection_idle_timeout, max_connections,
 *     max_connections_per_ip ...................... stream transports (TCP/TLS/WS)
 *   sip.tls_handshake_timeout, tls.* .............. TLS transport
 *   sip.outbound_flow_secret ...................... Outbound flow tokens (RFC 5626)
 *   websocket.* ................................... WebSocket transport (RFC 7118/6455)
 *   pike.* ........................................ per-source flood protection
 *   events.* ...................................... event bus queue
 *   proxies.conf do_record_routing, record_route_all, timer_B/C/F,
 *     callback_on_server_tls_handshake ............ proxy core and transactions
 *
 * Conventions. A key set to nil is the same as an absent key (Lua cannot tell them apart), so
 * optional settings whose default is "on" take `false` to disable them (core.control_socket);
 * `false` is also accepted wherever nil is the default. Relative paths are resolved against the
 * config dir. Every string is capped at CONF_STR_MAX bytes and every list at a fixed count. */

#include "config.h"

#include <lua.h>
#include <lauxlib.h>
#include <luajit.h>

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#define CONF_STR_MAX     4096         /* bytes per string value */
#define CONF_LIST_MAX    1024         /* entries per list */
#define CONF_MEM_LIMIT   (16u << 20)  /* bytes the chunk may allocate */
#define CONF_INSN_LIMIT  10000000L    /* VM instructions the chunk may run */
#define CONF_HOOK_STEP   1000
#define CONF_PROFILES_MAX 1000
#define CONF_NAME_MAX    64

/* ------------------------------------------------------------------------------------------
 * Sandbox */

struct sandbox {
    lua_Alloc inner;
    void *inner_ud;
    size_t used, limit;
    long insns;
    int over_memory, over_time;
    int line;                 /* current line when the instruction budget ran out */
};

/* Counts live bytes and refuses growth beyond the limit; the Lua core turns a NULL into a
 * "not enough memory" error. Frees and shrinks always go through. */
static void *sb_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    struct sandbox *sb = ud;
    if (ptr == NULL)
        osize = 0;
    if (nsize > osize && nsize - osize > sb->limit - sb->used) {
        sb->over_memory = 1;
        return NULL;
    }
    void *p = sb->inner(sb->inner_ud, ptr, osize, nsize);
    if (p != NULL || nsize == 0) {
        /* Blocks allocated before the wrapper was installed are not counted: clamp. */
        sb->used = sb->used > osize ? sb->used - osize : 0;
        sb->used += nsize;
    }
    return p;
}

static void sb_hook(lua_State *L, lua_Debug *ar)
{
    void *ud;
    lua_getallocf(L, &ud);
    struct sandbox *sb = ud;
    sb->insns += CONF_HOOK_STEP;
    if (sb->insns < CONF_INSN_LIMIT)
        return;
    sb->over_time = 1;
    if (lua_getinfo(L, "l", ar))
        sb->line = ar->currentline;
    lua_pushliteral(L, "takes too long");
    lua_error(L);
}

/* Copies a Lua message into err, escaping control bytes. */
static void copy_msg(char *err, size_t errlen, const char *msg)
{
    size_t o = 0;
    if (errlen == 0)
        return;
    for (const unsigned char *p = (const unsigned char *)msg; *p && o + 5 < errlen; p++) {
        if (*p < 0x20 || *p == 0x7f)
            o += (size_t)snprintf(err + o, errlen - o, "\\x%02x", *p);
        else
            err[o++] = (char)*p;
    }
    err[o] = 0;
}

/* Loads and runs path in a fresh, library-less state. On success returns the state with the
 * chunk's environment table at stack index 1; the caller lua_closes it (sb must outlive it).
 * *missing is set when the file does not exist. */
static lua_State *sandbox_run(struct sandbox *sb, const char *path, int *missing,
                              char *err, size_t errlen)
{
    struct stat st;
    *missing = 0;
    if (stat(path, &st) == -1) {
        *missing = errno == ENOENT;
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", path);
        return NULL;
    }
    lua_State *L = luaL_newstate();
    if (L == NULL) {
        snprintf(err, errlen, "%s: cannot create a Lua state", path);
        return NULL;
    }
    /* No library is opened, so the JIT is off already; say so in case that ever changes:
     * the count hook does not fire inside compiled traces. */
    luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
    memset(sb, 0, sizeof(*sb));
    sb->inner = lua_getallocf(L, &sb->inner_ud);
    sb->limit = CONF_MEM_LIMIT;
    lua_setallocf(L, sb_alloc, sb);

    /* "t": text only; LuaJIT bytecode is not verified and must never come from a file. */
    if (luaL_loadfilex(L, path, "t") != 0) {
        const char *m = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "load error";
        if (strstr(m, "wrong mode") != NULL)
            snprintf(err, errlen, "%s: precompiled (binary) chunk refused; allowed: Lua source text",
                     path);
        else
            copy_msg(err, errlen, m);
        lua_close(L);
        return NULL;
    }
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setfenv(L, -3);
    lua_insert(L, 1);                          /* env, chunk */
    lua_sethook(L, sb_hook, LUA_MASKCOUNT, CONF_HOOK_STEP);
    int rc = lua_pcall(L, 0, 0, 0);
    lua_sethook(L, NULL, 0, 0);
    sb->limit = SIZE_MAX;                      /* reading the result must not fail */
    if (rc != 0) {
        if (sb->over_time)
            snprintf(err, errlen, "%s:%d: takes too long (more than %ld Lua instructions); "
                     "allowed: a configuration that runs straight through", path, sb->line,
                     CONF_INSN_LIMIT);
        else if (sb->over_memory || rc == LUA_ERRMEM)
            snprintf(err, errlen, "%s: uses too much memory (more than %u MiB); allowed: a "
                     "configuration of reasonable size", path, CONF_MEM_LIMIT >> 20);
        else
            copy_msg(err, errlen, lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1)
                                                                  : "error while running");
        lua_close(L);
        return NULL;
    }
    lua_settop(L, 1);
    return L;
}

/* ------------------------------------------------------------------------------------------
 * Error reporting */

struct rd {
    lua_State *L;
    const char *file;
    const char *dir;          /* absolute config dir, for relative paths */
    char *err;
    size_t errlen;
};

/* Makes an untrusted value printable in an error: control bytes escaped, capped at 48 bytes. */
static const char *show(char *buf, size_t cap, const char *s, size_t len)
{
    size_t o = 0, i = 0;
    for (; i < len && i < 48 && o + 8 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f || c == '"' || c == '\\')
            o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", c);
        else
            buf[o++] = (char)c;
    }
    if (i < len && o + 4 <= cap) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o] = 0;
    return buf;
}

static int fail(struct rd *r, const char *path, const char *allowed, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(struct rd *r, const char *path, const char *allowed, const char *fmt, ...)
{
    char problem[320];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(problem, sizeof(problem), fmt, ap);
    va_end(ap);
    snprintf(r->err, r->errlen, "%s: %s: %s; allowed: %s", r->file, path, problem, allowed);
    return -1;
}

static int fail_type(struct rd *r, const char *path, const char *want, int ty, const char *allowed)
{
    return fail(r, path, allowed, "expected %s, got %s", want, lua_typename(r->L, ty));
}

static int fail_oom(struct rd *r, const char *path)
{
    snprintf(r->err, r->errlen, "%s: %s: out of memory", r->file, path);
    return -1;
}

static int is_ident(const char *s, size_t len)
{
    static const char *const keywords[] = {
        "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto", "if",
        "in", "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while",
    };
    if (len == 0 || len > CONF_NAME_MAX || (s[0] >= '0' && s[0] <= '9'))
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_'))
            return 0;
    }
    for (size_t i = 0; i < sizeof(keywords) / sizeof(keywords[0]); i++)
        if (strlen(keywords[i]) == len && memcmp(keywords[i], s, len) == 0)
            return 0;
    return 1;
}

/* Writes base + the key at stack index k as a path: "sip.listen", "sip.listen[3]",
 * "tls.sni[\"a.example.com\"]". */
static void key_path(lua_State *L, int k, const char *base, char *out, size_t cap)
{
    int ty = lua_type(L, k);
    if (ty == LUA_TSTRING) {
        size_t len;
        const char *s = lua_tolstring(L, k, &len);
        char buf[256];
        if (is_ident(s, len))
            snprintf(out, cap, "%s%s%.*s", base, *base ? "." : "", (int)len, s);
        else
            snprintf(out, cap, "%s[\"%s\"]", base, show(buf, sizeof(buf), s, len));
    } else if (ty == LUA_TNUMBER) {
        snprintf(out, cap, "%s[%.14g]", base, lua_tonumber(L, k));
    } else {
        snprintf(out, cap, "%s[<%s>]", base, lua_typename(L, ty));
    }
}

static void join_names(const char *const *names, char *out, size_t cap)
{
    size_t o = 0;
    out[0] = 0;
    for (size_t i = 0; names[i] && o < cap; i++)
        o += (size_t)snprintf(out + o, cap - o, "%s%s", i ? ", " : "", names[i]);
}

/* Levenshtein distance, capped: only used to suggest a near key in an error. */
static size_t edit_distance(const char *a, size_t la, const char *b, size_t lb)
{
    size_t row[CONF_NAME_MAX + 1];
    if (la > CONF_NAME_MAX || lb > CONF_NAME_MAX)
        return SIZE_MAX;
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t prev = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t cur = row[j];
            size_t best = prev + (a[i - 1] != b[j - 1]);
            if (row[j] + 1 < best)
                best = row[j] + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            prev = cur;
        }
    }
    return row[lb];
}

/* Refuses any key of the table at index t that is not in names (NULL-terminated). */
static int check_keys(struct rd *r, int t, const char *base, const char *const *names)
{
    lua_State *L = r->L;
    lua_pushnil(L);
    while (lua_next(L, t) != 0) {
        lua_pop(L, 1);
        const char *k = NULL;
        size_t len = 0;
        int known = 0;
        if (lua_type(L, -1) == LUA_TSTRING) {
            k = lua_tolstring(L, -1, &len);
            for (size_t i = 0; names[i] && !known; i++)
                known = strlen(names[i]) == len && memcmp(names[i], k, len) == 0;
        }
        if (known)
            continue;
        char path[320], allowed[640];
        key_path(L, -1, base, path, sizeof(path));
        join_names(names, allowed, sizeof(allowed));
        const char *near = NULL;
        size_t bestd = 3;
        for (size_t i = 0; k && names[i]; i++) {
            size_t d = edit_distance(k, len, names[i], strlen(names[i]));
            if (d < bestd) {
                bestd = d;
                near = names[i];
            }
        }
        lua_pop(L, 1);
        if (near)
            return fail(r, path, allowed, "unknown key (did you mean '%s'?)", near);
        return fail(r, path, allowed, "unknown key");
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * Typed field readers. Each takes the table at absolute index t and the section path; a nil
 * field leaves *out (the default) untouched. They return 0 or -1 with the error filled. */

static int push_field(struct rd *r, int t, const char *key)
{
    lua_pushstring(r->L, key);
    lua_rawget(r->L, t);
    return lua_type(r->L, -1);
}

static void field_path(char *out, size_t cap, const char *sect, const char *key)
{
    snprintf(out, cap, "%s.%s", sect, key);
}

static int get_bool(struct rd *r, int t, const char *sect, const char *key, int *out)
{
    char path[160];
    int ty = push_field(r, t, key);
    if (ty == LUA_TBOOLEAN)
        *out = lua_toboolean(r->L, -1);
    lua_pop(r->L, 1);
    if (ty == LUA_TNIL || ty == LUA_TBOOLEAN)
        return 0;
    field_path(path, sizeof(path), sect, key);
    return fail_type(r, path, "a boolean", ty, "true or false");
}

/* The value at the top of the stack (a number) against [min, max]; pops nothing. */
static int check_int(struct rd *r, const char *path, long min, long max, int *out)
{
    char allowed[96];
    snprintf(allowed, sizeof(allowed), "an integer from %ld to %ld", min, max);
    double d = lua_tonumber(r->L, -1);
    if (isnan(d))
        return fail(r, path, allowed, "expected an integer, got NaN");
    if (d != floor(d))
        return fail(r, path, allowed, "expected an integer, got %.14g", d);
    if (d < (double)min || d > (double)max)
        return fail(r, path, allowed, "%.14g is out of range", d);
    *out = (int)d;
    return 0;
}

static int get_int(struct rd *r, int t, const char *sect, const char *key, long min, long max,
                   int *out)
{
    char path[160], allowed[96];
    field_path(path, sizeof(path), sect, key);
    int ty = push_field(r, t, key);
    int rc = 0;
    if (ty == LUA_TNUMBER) {
        rc = check_int(r, path, min, max, out);
    } else if (ty != LUA_TNIL) {
        snprintf(allowed, sizeof(allowed), "an integer from %ld to %ld", min, max);
        rc = fail_type(r, path, "a number", ty, allowed);
    }
    lua_pop(r->L, 1);
    return rc;
}

/* A number in (min, max] when min_open, else [min, max]. */
static int get_num(struct rd *r, int t, const char *sect, const char *key, double min,
                   int min_open, double max, double *out)
{
    char path[160], allowed[96];
    field_path(path, sizeof(path), sect, key);
    snprintf(allowed, sizeof(allowed), min_open ? "a number > %g and <= %g" : "a number from %g to %g",
             min, max);
    int ty = push_field(r, t, key);
    int rc = 0;
    if (ty == LUA_TNUMBER) {
        double d = lua_tonumber(r->L, -1);
        if (isnan(d))
            rc = fail(r, path, allowed, "expected a number, got NaN");
        else if (!(min_open ? d > min : d >= min) || !(d <= max))
            rc = fail(r, path, allowed, "%.14g is out of range", d);
        else
            *out = d;
    } else if (ty != LUA_TNIL) {
        rc = fail_type(r, path, "a number", ty, allowed);
    }
    lua_pop(r->L, 1);
    return rc;
}

/* Checks that the string at the top of the stack is 1..CONF_STR_MAX bytes without NUL;
 * returns it (borrowed from the state; anchored by the table that holds it). */
static const char *check_str(struct rd *r, const char *path, const char *allowed, size_t *len)
{
    const char *s = lua_tolstring(r->L, -1, len);
    if (*len == 0) {
        fail(r, path, allowed, "empty string");
        return NULL;
    }
    if (*len > CONF_STR_MAX) {
        fail(r, path, allowed, "string of %zu bytes is too long (max %d)", *len, CONF_STR_MAX);
        return NULL;
    }
    if (memchr(s, 0, *len) != NULL) {
        fail(r, path, allowed, "string contains a NUL byte");
        return NULL;
    }
    return s;
}

/* Reads an optional string: returns 1 with *s set, 0 when nil (or false if allow_false, with
 * *was_false set), -1 on error. */
static int get_str(struct rd *r, int t, const char *sect, const char *key, int allow_false,
                   const char *allowed, const char **s, size_t *len, int *was_false)
{
    char path[160];
    field_path(path, sizeof(path), sect, key);
    int ty = push_field(r, t, key);
    int rc = 0;
    if (was_false)
        *was_false = 0;
    if (ty == LUA_TSTRING) {
        *s = check_str(r, path, allowed, len);
        rc = *s ? 1 : -1;
    } else if (ty == LUA_TBOOLEAN && allow_false && !lua_toboolean(r->L, -1)) {
        if (was_false)
            *was_false = 1;
    } else if (ty != LUA_TNIL) {
        rc = fail_type(r, path, "a string", ty, allowed);
    }
    lua_pop(r->L, 1);
    return rc;
}

/* Replaces *dst with a copy of s[0..len) (or NULL when s is NULL). */
static int set_str(struct rd *r, const char *path, char **dst, const char *s, size_t len)
{
    char *n = NULL;
    if (s != NULL && (n = strndup(s, len)) == NULL)
        return fail_oom(r, path);
    free(*dst);
    *dst = n;
    return 0;
}

static int get_enum(struct rd *r, int t, const char *sect, const char *key,
                    const char *const *names, int *out)
{
    char path[160], allowed[256], buf[256];
    const char *s;
    size_t len;
    field_path(path, sizeof(path), sect, key);
    join_names(names, allowed, sizeof(allowed));
    int rc = get_str(r, t, sect, key, 0, allowed, &s, &len, NULL);
    if (rc <= 0)
        return rc;
    for (int i = 0; names[i]; i++) {
        if (strlen(names[i]) == len && memcmp(names[i], s, len) == 0) {
            *out = i;
            return 0;
        }
    }
    return fail(r, path, allowed, "unknown value '%s'", show(buf, sizeof(buf), s, len));
}

/* Resolves a relative path against the config dir; refuses results longer than PATH_MAX. */
static int resolve_path(struct rd *r, const char *path, const char *s, size_t len, char **out)
{
    char *p;
    if (s[0] == '/') {
        p = strndup(s, len);
    } else {
        size_t dl = strlen(r->dir);
        if (dl + 1 + len >= PATH_MAX)
            return fail(r, path, "a path shorter than PATH_MAX", "path too long");
        p = malloc(dl + 1 + len + 1);
        if (p != NULL) {
            memcpy(p, r->dir, dl);
            p[dl] = '/';
            memcpy(p + dl + 1, s, len);
            p[dl + 1 + len] = 0;
        }
    }
    if (p == NULL)
        return fail_oom(r, path);
    free(*out);
    *out = p;
    return 0;
}

/* A path-valued key: a string resolved against the config dir; false (when allowed) gives
 * NULL. */
static int get_path(struct rd *r, int t, const char *sect, const char *key, int allow_false,
                    char **out)
{
    char path[160];
    const char *s;
    size_t len;
    int was_false;
    const char *allowed = allow_false ? "a file path (relative to the config dir) or false"
                                      : "a file path (relative to the config dir)";
    field_path(path, sizeof(path), sect, key);
    int rc = get_str(r, t, sect, key, allow_false, allowed, &s, &len, &was_false);
    if (rc < 0)
        return -1;
    if (was_false) {
        free(*out);
        *out = NULL;
        return 0;
    }
    if (rc == 0)
        return 0;
    return resolve_path(r, path, s, len, out);
}

/* Checks that the table at t is a list 1..n (no other key, no hole) of at most max
 * entries. */
static int check_list(struct rd *r, int t, const char *path, size_t max, const char *allowed,
                      size_t *n)
{
    lua_State *L = r->L;
    size_t count = 0;
    double top = 0;
    lua_pushnil(L);
    while (lua_next(L, t) != 0) {
        lua_pop(L, 1);
        double d = lua_type(L, -1) == LUA_TNUMBER ? lua_tonumber(L, -1) : -1;
        if (d < 1 || d != floor(d) || d > (double)max) {
            char kp[320];
            key_path(L, -1, path, kp, sizeof(kp));
            lua_pop(L, 1);
            if (d > (double)max && d == floor(d))
                return fail(r, kp, allowed, "too many entries (max %zu)", max);
            return fail(r, kp, allowed, "not a list entry");
        }
        if (d > top)
            top = d;
        count++;
    }
    if ((double)count != top)
        return fail(r, path, allowed, "list has holes (%zu entries up to index %.0f)", count, top);
    *n = count;
    return 0;
}

/* Validates one list entry at the top of the stack and stores a copy in *out. */
typedef int (*item_fn)(struct rd *r, const char *path, const char *s, size_t len, char **out);

static void free_strv(char **v, size_t n)
{
    for (size_t i = 0; v && i < n; i++)
        free(v[i]);
    free(v);
}

/* An optional list of strings. nil (or false) leaves *out untouched; otherwise *out is
 * replaced by a non-NULL array (even for {}), each entry checked and copied by fn (or copied
 * as is when fn is NULL). */
static int get_str_list(struct rd *r, int t, const char *sect, const char *key, size_t max,
                        const char *allowed, item_fn fn, char ***out, size_t *nout)
{
    lua_State *L = r->L;
    char path[160], ip[200];
    field_path(path, sizeof(path), sect, key);
    int ty = push_field(r, t, key);
    if (ty == LUA_TNIL || (ty == LUA_TBOOLEAN && !lua_toboolean(L, -1))) {
        lua_pop(L, 1);
        return 0;
    }
    if (ty != LUA_TTABLE) {
        lua_pop(L, 1);
        return fail_type(r, path, "a table (list of strings)", ty, allowed);
    }
    int lt = lua_gettop(L);
    size_t n;
    if (check_list(r, lt, path, max, allowed, &n) != 0) {
        lua_pop(L, 1);
        return -1;
    }
    char **v = calloc(n ? n : 1, sizeof(*v));
    if (v == NULL) {
        lua_pop(L, 1);
        return fail_oom(r, path);
    }
    for (size_t i = 0; i < n; i++) {
        snprintf(ip, sizeof(ip), "%s[%zu]", path, i + 1);
        lua_rawgeti(L, lt, (int)i + 1);
        int ety = lua_type(L, -1);
        const char *s = NULL;
        size_t len = 0;
        int rc;
        if (ety != LUA_TSTRING)
            rc = fail_type(r, ip, "a string", ety, allowed);
        else if ((s = check_str(r, ip, allowed, &len)) == NULL)
            rc = -1;
        else if (fn)
            rc = fn(r, ip, s, len, &v[i]);
        else
            rc = (v[i] = strndup(s, len)) ? 0 : fail_oom(r, ip);
        lua_pop(L, 1);
        if (rc != 0) {
            free_strv(v, n);
            lua_pop(L, 1);
            return -1;
        }
    }
    lua_pop(L, 1);
    free_strv(*out, *nout);
    *out = v;
    *nout = n;
    return 0;
}

/* Pushes the sub-table key of t (nil allowed); returns its absolute index, 0 when nil, -1 on
 * error. Leaves the table (or nil) pushed in every case but error. */
static int push_table(struct rd *r, int t, const char *base, const char *key, const char *allowed)
{
    char path[160];
    int ty = push_field(r, t, key);
    if (ty == LUA_TTABLE)
        return lua_gettop(r->L);
    if (ty == LUA_TNIL)
        return 0;
    lua_pop(r->L, 1);
    if (*base)
        field_path(path, sizeof(path), base, key);
    else
        snprintf(path, sizeof(path), "%s", key);
    return fail_type(r, path, "a table", ty, allowed);
}

/* ------------------------------------------------------------------------------------------
 * Addresses and names */

static int parse_port(const char *s, size_t len, int *port)
{
    if (len < 1 || len > 5)
        return -1;
    int v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (v < 1 || v > 65535)
        return -1;
    *port = v;
    return 0;
}

enum {
    HP_OK = 0,
    HP_BAD_ADDR = -1,
    HP_BAD_PORT = -2,
    HP_NO_PORT = -3,
    HP_BARE_V6 = -4,
};

/* Parses "IPv4[:PORT]", "[IPv6][:PORT]" and, when bare_v6, "IPv6" without brackets or port.
 * The host is normalised by inet_ntop into host (64 bytes); *port = 0 when absent. Names are
 * refused: the caller wants an address. */
static int parse_hostport(const char *s, size_t len, int bare_v6, char *host, int *family, int *port)
{
    char tmp[64];
    unsigned char bin[16];
    const char *h, *p = NULL;
    size_t hl, pl = 0;
    *port = 0;
    if (len == 0)
        return HP_BAD_ADDR;
    if (s[0] == '[') {
        const char *end = memchr(s, ']', len);
        if (end == NULL)
            return HP_BAD_ADDR;
        h = s + 1;
        hl = (size_t)(end - h);
        size_t rest = len - (size_t)(end + 1 - s);
        if (rest > 0) {
            if (end[1] != ':')
                return HP_BAD_ADDR;
            p = end + 2;
            pl = rest - 1;
        }
        *family = AF_INET6;
    } else {
        const char *c1 = memchr(s, ':', len);
        if (c1 != NULL && memchr(c1 + 1, ':', len - (size_t)(c1 + 1 - s)) != NULL) {
            if (!bare_v6)
                return HP_BARE_V6;
            h = s;
            hl = len;
            *family = AF_INET6;
        } else {
            h = s;
            hl = c1 ? (size_t)(c1 - s) : len;
            if (c1) {
                p = c1 + 1;
                pl = len - hl - 1;
            }
            *family = AF_INET;
        }
    }
    if (hl == 0 || hl >= sizeof(tmp))
        return HP_BAD_ADDR;
    memcpy(tmp, h, hl);
    tmp[hl] = 0;
    if (inet_pton(*family, tmp, bin) != 1)
        return HP_BAD_ADDR;
    if (inet_ntop(*family, bin, host, 64) == NULL)
        return HP_BAD_ADDR;
    if (p == NULL)
        return HP_NO_PORT;
    if (parse_port(p, pl, port) != 0)
        return HP_BAD_PORT;
    return HP_OK;
}

/* RFC 1123 host name: dot-separated labels of letters, digits and '-', not starting or ending
 * with '-', the last one not all digits. With wildcard, a leading "*." label is allowed. */
static int valid_hostname(const char *s, size_t len, int wildcard)
{
    if (wildcard && len > 2 && s[0] == '*' && s[1] == '.') {
        s += 2;
        len -= 2;
    }
    if (len == 0 || len > 253)
        return 0;
    size_t start = 0;
    int all_digits = 1;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || s[i] == '.') {
            size_t ll = i - start;
            if (ll == 0 || ll > 63 || s[start] == '-' || s[i - 1] == '-')
                return 0;
            if (i == len && all_digits)
                return 0;
            start = i + 1;
            all_digits = 1;
            continue;
        }
        char c = s[i];
        if (c >= '0' && c <= '9')
            continue;
        all_digits = 0;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-'))
            return 0;
    }
    return 1;
}

static char *lower_dup(const char *s, size_t len)
{
    char *d = strndup(s, len);
    for (size_t i = 0; d && i < len; i++)
        if (d[i] >= 'A' && d[i] <= 'Z')
            d[i] = (char)(d[i] - 'A' + 'a');
    return d;
}

#define ALLOWED_NAMESERVER "\"IP\", \"IP:PORT\" or \"[IPv6]:PORT\""

/* Nameserver: stored normalised as "IPv4:PORT" or "[IPv6]:PORT", port 53 by default. */
static int item_nameserver(struct rd *r, const char *path, const char *s, size_t len, char **out)
{
    char host[64], buf[256];
    int family, port;
    int rc = parse_hostport(s, len, 1, host, &family, &port);
    if (rc == HP_NO_PORT)
        port = 53;
    else if (rc == HP_BAD_PORT)
        return fail(r, path, ALLOWED_NAMESERVER " with a port from 1 to 65535",
                    "bad port in '%s'", show(buf, sizeof(buf), s, len));
    else if (rc != HP_OK)
        return fail(r, path, ALLOWED_NAMESERVER " (an address, not a name)",
                    "'%s' is not an IP address", show(buf, sizeof(buf), s, len));
    if (asprintf(out, family == AF_INET6 ? "[%s]:%d" : "%s:%d", host, port) == -1) {
        *out = NULL;
        return fail_oom(r, path);
    }
    return 0;
}

/* A domain of sip.local_domains: a host name or an IP address, stored lower-case. */
static int item_domain(struct rd *r, const char *path, const char *s, size_t len, char **out)
{
    char host[64], buf[256];
    int family, port;
    if (!valid_hostname(s, len, 0) && parse_hostport(s, len, 1, host, &family, &port) != HP_NO_PORT)
        return fail(r, path, "host names such as \"example.com\" or IP addresses",
                    "'%s' is not a host name or IP address", show(buf, sizeof(buf), s, len));
    if ((*out = lower_dup(s, len)) == NULL)
        return fail_oom(r, path);
    return 0;
}

/* An origin of websocket.allowed_origins, compared exactly with the Origin header. */
static int item_origin(struct rd *r, const char *path, const char *s, size_t len, char **out)
{
    char buf[256];
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c >= 0x7f)
            return fail(r, path, "exact origins such as \"https://www.example.com\"",
                        "'%s' contains a space or a non-printable byte",
                        show(buf, sizeof(buf), s, len));
    }
    if ((*out = strndup(s, len)) == NULL)
        return fail_oom(r, path);
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * lunasip.conf */

static const char *const proto_names[] = { "udp", "tcp", "tls", "ws", "wss", NULL };

#define ALLOWED_LISTEN "\"PROTO:IPv4:PORT\" or \"PROTO:[IPv6]:PORT\" with PROTO one of " \
    "udp, tcp, tls, ws, wss and an IP address (a listener binds to an address, not a name)"

static const char *const default_listen[] = {
    "udp:127.0.0.1:5060", "tcp:127.0.0.1:5060", "tls:127.0.0.1:5061",
    "ws:127.0.0.1:10080", "wss:127.0.0.1:10443",
};

static int parse_listen(struct rd *r, const char *path, const char *s, size_t len,
                        struct config_listen *l)
{
    char buf[256];
    const char *c = memchr(s, ':', len);
    size_t pl = c ? (size_t)(c - s) : len;
    int proto = -1;
    for (int i = 0; proto_names[i]; i++)
        if (strlen(proto_names[i]) == pl && memcmp(proto_names[i], s, pl) == 0)
            proto = i;
    if (proto < 0)
        return fail(r, path, "udp, tcp, tls, ws, wss", "unknown transport '%s'",
                    show(buf, sizeof(buf), s, pl));
    if (len >= sizeof(l->text))
        return fail(r, path, ALLOWED_LISTEN, "'%s' is too long", show(buf, sizeof(buf), s, len));
    int rc = parse_hostport(c + 1, len - pl - 1, 0, l->host, &l->family, &l->port);
    show(buf, sizeof(buf), c + 1, len - pl - 1);
    switch (rc) {
    case HP_OK:
        break;
    case HP_NO_PORT:
        return fail(r, path, ALLOWED_LISTEN, "missing port in '%s'", buf);
    case HP_BAD_PORT:
        return fail(r, path, "a port from 1 to 65535", "bad port in '%s'", buf);
    case HP_BARE_V6:
        return fail(r, path, ALLOWED_LISTEN, "IPv6 address '%s' must be written in brackets", buf);
    default:
        return fail(r, path, ALLOWED_LISTEN, "'%s' is not an IP address and port", buf);
    }
    l->proto = (enum config_listen_proto)proto;
    memcpy(l->text, s, len);
    l->text[len] = 0;
    return 0;
}

/* Two listeners clash when they bind the same socket: same protocol, or both stream
 * protocols (tcp, tls, ws, wss share the TCP port space), on the same address and port. */
static int listen_clash(const struct config_listen *a, const struct config_listen *b)
{
    int sa = a->proto != CONFIG_LISTEN_UDP, sb = b->proto != CONFIG_LISTEN_UDP;
    return a->port == b->port && a->family == b->family && strcmp(a->host, b->host) == 0 &&
           (a->proto == b->proto || (sa && sb));
}

static int get_listen(struct rd *r, int t, struct config *c)
{
    lua_State *L = r->L;
    const char *path = "sip.listen";
    int ty = push_field(r, t, "listen");
    if (ty == LUA_TNIL) {
        lua_pop(L, 1);
        return 0;
    }
    if (ty != LUA_TTABLE) {
        lua_pop(L, 1);
        return fail_type(r, path, "a table (list of strings)", ty, ALLOWED_LISTEN);
    }
    int lt = lua_gettop(L);
    size_t n;
    if (check_list(r, lt, path, 256, ALLOWED_LISTEN, &n) != 0) {
        lua_pop(L, 1);
        return -1;
    }
    if (n == 0) {
        lua_pop(L, 1);
        return fail(r, path, "at least one listener", "empty list");
    }
    struct config_listen *v = calloc(n, sizeof(*v));
    if (v == NULL) {
        lua_pop(L, 1);
        return fail_oom(r, path);
    }
    for (size_t i = 0; i < n; i++) {
        char ip[64];
        snprintf(ip, sizeof(ip), "%s[%zu]", path, i + 1);
        lua_rawgeti(L, lt, (int)i + 1);
        int ety = lua_type(L, -1);
        const char *s;
        size_t len;
        int rc;
        if (ety != LUA_TSTRING)
            rc = fail_type(r, ip, "a string", ety, ALLOWED_LISTEN);
        else if ((s = check_str(r, ip, ALLOWED_LISTEN, &len)) == NULL)
            rc = -1;
        else
            rc = parse_listen(r, ip, s, len, &v[i]);
        lua_pop(L, 1);
        for (size_t j = 0; rc == 0 && j < i; j++)
            if (listen_clash(&v[i], &v[j]))
                rc = fail(r, ip, "each address and port once per protocol; tcp, tls, ws and wss "
                          "share the TCP port space", "'%s' clashes with sip.listen[%zu] '%s'",
                          v[i].text, j + 1, v[j].text);
        if (rc != 0) {
            free(v);
            lua_pop(L, 1);
            return -1;
        }
    }
    lua_pop(L, 1);
    free(c->listen);
    c->listen = v;
    c->nlisten = n;
    return 0;
}

static int get_tls_sni(struct rd *r, int t, struct config *c)
{
    static const char *const sni_keys[] = { "certificate", "private_key", NULL };
    static const char *allowed = "{ [\"host.name\"] = { certificate = PATH, private_key = PATH } }";
    lua_State *L = r->L;
    const char *base = "tls.sni";
    int st = push_table(r, t, "tls", "sni", allowed);
    if (st <= 0)
        return st == 0 ? (lua_pop(L, 1), 0) : -1;
    size_t n = 0, cap = 0;
    struct config_tls_sni *v = NULL;
    int rc = 0;
    lua_pushnil(L);
    while (rc == 0 && lua_next(L, st) != 0) {
        char kp[320], fp[400], buf[256];
        key_path(L, -2, base, kp, sizeof(kp));
        int vt = lua_gettop(L);
        const char *name;
        size_t len;
        if (lua_type(L, -2) != LUA_TSTRING) {
            rc = fail(r, kp, allowed, "key is not a host name");
            break;
        }
        name = lua_tolstring(L, -2, &len);
        if (!valid_hostname(name, len, 1)) {
            rc = fail(r, kp, "host names such as \"sip.example.com\" or \"*.example.com\"",
                      "'%s' is not a host name", show(buf, sizeof(buf), name, len));
            break;
        }
        if (lua_type(L, vt) != LUA_TTABLE) {
            rc = fail_type(r, kp, "a table", lua_type(L, vt), allowed);
            break;
        }
        if (n >= CONF_LIST_MAX) {
            rc = fail(r, base, allowed, "too many entries (max %d)", CONF_LIST_MAX);
            break;
        }
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 4;
            struct config_tls_sni *nv = realloc(v, ncap * sizeof(*v));
            if (nv == NULL) {
                rc = fail_oom(r, kp);
                break;
            }
            v = nv;
            cap = ncap;
        }
        struct config_tls_sni *e = &v[n++];
        memset(e, 0, sizeof(*e));
        if ((e->name = lower_dup(name, len)) == NULL) {
            rc = fail_oom(r, kp);
            break;
        }
        for (size_t j = 0; j + 1 < n; j++)
            if (strcmp(v[j].name, e->name) == 0)
                rc = fail(r, kp, "each host name once", "duplicate of another entry "
                          "(names are compared without case)");
        if (rc == 0)
            rc = check_keys(r, vt, kp, sni_keys);
        for (int k = 0; rc == 0 && sni_keys[k]; k++) {
            char **dst = k == 0 ? &e->certificate : &e->private_key;
            rc = get_path(r, vt, kp, sni_keys[k], 0, dst);
            if (rc == 0 && *dst == NULL) {
                snprintf(fp, sizeof(fp), "%s.%s", kp, sni_keys[k]);
                rc = fail(r, fp, "a file path (relative to the config dir)", "missing");
            }
        }
        lua_pop(L, 1);
    }
    if (rc != 0) {
        lua_settop(L, st - 1);
        for (size_t i = 0; i < n; i++) {
            free(v[i].name);
            free(v[i].certificate);
            free(v[i].private_key);
        }
        free(v);
        return -1;
    }
    lua_pop(L, 1);
    c->tls_sni = v;
    c->ntls_sni = n;
    return 0;
}

static int sni_cmp(const void *a, const void *b)
{
    return strcmp(((const struct config_tls_sni *)a)->name, ((const struct config_tls_sni *)b)->name);
}

static int read_core(struct rd *r, int t, struct config *c)
{
    static const char *const levels[] = { "debug", "info", "notice", "warn", "error", NULL };
    char buf[256];
    const char *s;
    size_t len;
    int v, was_false;

    v = (int)c->log_level;
    if (get_enum(r, t, "core", "log_level", levels, &v) != 0)
        return -1;
    c->log_level = (enum log_level)v;

    int rc = get_str(r, t, "core", "syslog_facility", 0, "daemon, user, local0 .. local7", &s,
                     &len, NULL);
    if (rc < 0)
        return -1;
    if (rc > 0) {
        char *f = strndup(s, len);
        if (f == NULL)
            return fail_oom(r, "core.syslog_facility");
        if (!log_facility_valid(f)) {
            free(f);
            return fail(r, "core.syslog_facility", "daemon, user, local0 .. local7",
                        "unknown facility '%s'", show(buf, sizeof(buf), s, len));
        }
        free(c->syslog_facility);
        c->syslog_facility = f;
    }

    if (get_str_list(r, t, "core", "nameservers", 16, "nil (use /etc/resolv.conf) or a non-empty "
                     "list of " ALLOWED_NAMESERVER, item_nameserver, &c->nameservers,
                     &c->nnameservers) != 0)
        return -1;
    if (c->nameservers != NULL && c->nnameservers == 0)
        return fail(r, "core.nameservers", "nil (use /etc/resolv.conf) or a non-empty list of "
                    ALLOWED_NAMESERVER, "empty list");

    if (get_path(r, t, "core", "control_socket", 1, &c->control_socket) != 0)
        return -1;
    if (c->control_socket != NULL &&
        strlen(c->control_socket) >= sizeof(((struct sockaddr_un *)0)->sun_path))
        return fail(r, "core.control_socket", "a path of at most 107 bytes once made absolute, "
                    "or false", "'%s' is too long for a unix socket",
                    show(buf, sizeof(buf), c->control_socket, strlen(c->control_socket)));

    rc = get_str(r, t, "core", "metrics_listen", 1, "nil or \"IPv4:PORT\" or \"[IPv6]:PORT\"", &s,
                 &len, &was_false);
    if (rc < 0)
        return -1;
    if (rc > 0) {
        char host[64];
        int family, port;
        if (parse_hostport(s, len, 0, host, &family, &port) != HP_OK)
            return fail(r, "core.metrics_listen", "nil or \"IPv4:PORT\" or \"[IPv6]:PORT\" with an "
                        "IP address and a port from 1 to 65535", "'%s' is not an address and port",
                        show(buf, sizeof(buf), s, len));
        free(c->metrics_listen);
        if (asprintf(&c->metrics_listen, family == AF_INET6 ? "[%s]:%d" : "%s:%d", host, port) == -1) {
            c->metrics_listen = NULL;
            return fail_oom(r, "core.metrics_listen");
        }
    }

    if (get_num(r, t, "core", "shutdown_grace", 0, 0, 3600, &c->shutdown_grace) != 0 ||
        get_int(r, t, "core", "workers", 1, 64, &c->workers) != 0 ||
        get_path(r, t, "core", "script", 0, &c->script) != 0)
        return -1;
    return 0;
}

static int read_sip(struct rd *r, int t, struct config *c)
{
    char buf[256];
    const char *s;
    size_t len;
    int was_false;

    if (get_listen(r, t, c) != 0)
        return -1;

    int rc = get_str(r, t, "sip", "advertised_address", 1, "nil, a host name or an IP address",
                     &s, &len, &was_false);
    if (rc < 0)
        return -1;
    if (rc > 0) {
        char host[64];
        int family, port;
        char *v;
        if (parse_hostport(s, len, 1, host, &family, &port) == HP_NO_PORT) {
            /* Stored the way it is written in Via: IPv6 in brackets. */
            if (asprintf(&v, family == AF_INET6 ? "[%s]" : "%s", host) == -1)
                v = NULL;
        } else if (valid_hostname(s, len, 0)) {
            v = lower_dup(s, len);
        } else {
            return fail(r, "sip.advertised_address", "nil, a host name or an IP address (no port)",
                        "'%s' is not a host name or IP address", show(buf, sizeof(buf), s, len));
        }
        if (v == NULL)
            return fail_oom(r, "sip.advertised_address");
        free(c->advertised_address);
        c->advertised_address = v;
    }

    if (get_str_list(r, t, "sip", "local_domains", CONF_LIST_MAX,
                     "a list of host names or IP addresses", item_domain, &c->local_domains,
                     &c->nlocal_domains) != 0)
        return -1;

    if (get_int(r, t, "sip", "max_message_size", 512, 1048576, &c->max_message_size) != 0 ||
        get_num(r, t, "sip", "tcp_connect_timeout", 0, 1, 86400, &c->tcp_connect_timeout) != 0 ||
        get_num(r, t, "sip", "tls_handshake_timeout", 0, 1, 86400, &c->tls_handshake_timeout) != 0 ||
        get_num(r, t, "sip", "header_timeout", 0, 1, 86400, &c->header_timeout) != 0 ||
        get_num(r, t, "sip", "connection_idle_timeout", 0, 1, 86400, &c->connection_idle_timeout) != 0 ||
        get_int(r, t, "sip", "max_connections", 1, 10000000, &c->max_connections) != 0 ||
        get_int(r, t, "sip", "max_connections_per_ip", 1, 10000000, &c->max_connections_per_ip) != 0)
        return -1;
    if (c->max_connections_per_ip > c->max_connections)
        return fail(r, "sip.max_connections_per_ip", "an integer from 1 to sip.max_connections",
                    "%d exceeds sip.max_connections (%d)", c->max_connections_per_ip,
                    c->max_connections);

    rc = get_str(r, t, "sip", "outbound_flow_secret", 1, "nil (random per start) or a string of "
                 "16 to 4096 bytes", &s, &len, &was_false);
    if (rc < 0)
        return -1;
    if (rc > 0) {
        if (len < 16)
            return fail(r, "sip.outbound_flow_secret", "nil (random per start) or a string of 16 "
                        "to 4096 bytes", "secret of %zu bytes is too short", len);
        if (set_str(r, "sip.outbound_flow_secret", &c->outbound_flow_secret, s, len) != 0)
            return -1;
    }
    return 0;
}

static int read_websocket(struct rd *r, int t, struct config *c)
{
    if (get_int(r, t, "websocket", "max_message_size", 512, 16 << 20, &c->ws_max_message_size) != 0 ||
        get_int(r, t, "websocket", "max_frame_size", 512, 16 << 20, &c->ws_max_frame_size) != 0 ||
        get_num(r, t, "websocket", "keepalive_interval", 0, 1, 86400, &c->ws_keepalive_interval) != 0 ||
        get_num(r, t, "websocket", "pong_timeout", 0, 1, 86400, &c->ws_pong_timeout) != 0)
        return -1;
    return get_str_list(r, t, "websocket", "allowed_origins", CONF_LIST_MAX,
                        "nil (any origin) or a list of exact origins such as "
                        "\"https://www.example.com\"", item_origin, &c->ws_allowed_origins,
                        &c->nws_allowed_origins);
}

static int read_tls(struct rd *r, int t, struct config *c)
{
    static const char *const versions[] = { "1.2", "1.3", NULL };
    static const char *const verify[] = { "none", "optional", "required", NULL };
    int v;
    if (get_path(r, t, "tls", "certificate", 0, &c->tls_certificate) != 0 ||
        get_path(r, t, "tls", "private_key", 0, &c->tls_private_key) != 0 ||
        get_path(r, t, "tls", "ca_file", 1, &c->tls_ca_file) != 0)
        return -1;
    v = strcmp(c->tls_min_version, "1.3") == 0;
    if (get_enum(r, t, "tls", "min_version", versions, &v) != 0 ||
        set_str(r, "tls.min_version", &c->tls_min_version, versions[v], strlen(versions[v])) != 0)
        return -1;
    v = (int)c->tls_verify_client;
    if (get_enum(r, t, "tls", "verify_client", verify, &v) != 0)
        return -1;
    c->tls_verify_client = (enum config_verify_client)v;
    if (get_tls_sni(r, t, c) != 0)
        return -1;
    if (c->ntls_sni > 1)
        qsort(c->tls_sni, c->ntls_sni, sizeof(*c->tls_sni), sni_cmp);
    return 0;
}

static int read_pike(struct rd *r, int t, struct config *c)
{
    if (get_bool(r, t, "pike", "enabled", &c->pike_enabled) != 0 ||
        get_num(r, t, "pike", "window", 0, 1, 86400, &c->pike_window) != 0 ||
        get_int(r, t, "pike", "max_requests", 1, 1000000, &c->pike_max_requests) != 0 ||
        get_num(r, t, "pike", "ban_time", 0, 1, 86400, &c->pike_ban_time) != 0)
        return -1;
    return 0;
}

static int read_events(struct rd *r, int t, struct config *c)
{
    static const char *const overflow[] = { "drop_oldest", "drop_newest", NULL };
    int v = (int)c->events_overflow;
    if (get_int(r, t, "events", "queue_limit", 1, 10000000, &c->events_queue_limit) != 0 ||
        get_enum(r, t, "events", "overflow", overflow, &v) != 0)
        return -1;
    c->events_overflow = (enum config_overflow)v;
    return 0;
}

static int set_defaults(struct rd *r, struct config *c)
{
    c->log_level = LOG_LVL_INFO;
    c->shutdown_grace = 5;
    c->workers = 1;
    c->max_message_size = 65535;
    c->tcp_connect_timeout = 2;
    c->tls_handshake_timeout = 4;
    c->header_timeout = 10;
    c->connection_idle_timeout = 7200;
    c->max_connections = 20000;
    c->max_connections_per_ip = 200;
    c->ws_max_message_size = 65536;
    c->ws_max_frame_size = 65536;
    c->ws_keepalive_interval = 60;
    c->ws_pong_timeout = 10;
    c->tls_verify_client = CONFIG_VERIFY_OPTIONAL;
    c->pike_enabled = 1;
    c->pike_window = 2;
    c->pike_max_requests = 50;
    c->pike_ban_time = 60;
    c->events_queue_limit = 10000;
    c->events_overflow = CONFIG_OVERFLOW_DROP_OLDEST;

    size_t n = sizeof(default_listen) / sizeof(default_listen[0]);
    if ((c->syslog_facility = strdup("daemon")) == NULL ||
        (c->tls_min_version = strdup("1.2")) == NULL ||
        (c->listen = calloc(n, sizeof(*c->listen))) == NULL ||
        resolve_path(r, "core.control_socket", "lunasip.ctl", 11, &c->control_socket) != 0 ||
        resolve_path(r, "core.script", "server.lua", 10, &c->script) != 0 ||
        resolve_path(r, "tls.certificate", "tls/server.crt", 14, &c->tls_certificate) != 0 ||
        resolve_path(r, "tls.private_key", "tls/server.key", 14, &c->tls_private_key) != 0)
        return fail_oom(r, "defaults");
    c->nlisten = n;
    for (size_t i = 0; i < n; i++)
        if (parse_listen(r, "sip.listen", default_listen[i], strlen(default_listen[i]),
                         &c->listen[i]) != 0)
            return -1;
    return 0;
}

void config_free(struct config *c)
{
    if (c == NULL)
        return;
    free(c->dir);
    free(c->file);
    free(c->syslog_facility);
    free_strv(c->nameservers, c->nnameservers);
    free(c->control_socket);
    free(c->metrics_listen);
    free(c->script);
    free(c->listen);
    free(c->advertised_address);
    free_strv(c->local_domains, c->nlocal_domains);
    free(c->outbound_flow_secret);
    free_strv(c->ws_allowed_origins, c->nws_allowed_origins);
    free(c->tls_certificate);
    free(c->tls_private_key);
    free(c->tls_ca_file);
    free(c->tls_min_version);
    for (size_t i = 0; i < c->ntls_sni; i++) {
        free(c->tls_sni[i].name);
        free(c->tls_sni[i].certificate);
        free(c->tls_sni[i].private_key);
    }
    free(c->tls_sni);
    memset(c, 0, sizeof(*c));
}

static int ends_with_slash(const char *s)
{
    size_t n = strlen(s);
    return n > 0 && s[n - 1] == '/';
}

/* Resolves the config dir: dir when given, else the directory of file. Returns a malloc'd
 * absolute path or NULL with err filled. */
static char *resolve_dir(const char *dir, const char *file, char *err, size_t errlen)
{
    char *d;
    if (dir == NULL) {
        const char *slash = strrchr(file, '/');
        d = slash == NULL ? strdup(".") : slash == file ? strdup("/") : strndup(file, (size_t)(slash - file));
        if (d == NULL) {
            snprintf(err, errlen, "%s: out of memory", file);
            return NULL;
        }
    } else {
        d = strdup(dir);
        if (d == NULL) {
            snprintf(err, errlen, "%s: out of memory", dir);
            return NULL;
        }
    }
    char *abs = realpath(d, NULL);
    if (abs == NULL)
        snprintf(err, errlen, "%s: cannot use as config dir: %s", d, strerror(errno));
    free(d);
    return abs;
}

/* Takes nothing; on success *out owns every string (free with config_free). On failure *out
 * is zeroed and err says what and where. A relative file is taken relative to the current
 * directory, as typed on the command line. */
int config_load(const char *dir, const char *file, struct config *out, char *err, size_t errlen)
{
    static const char *const sections[] = { "core", "sip", "websocket", "tls", "pike", "events", NULL };
    static int (*const readers[])(struct rd *, int, struct config *) = {
        read_core, read_sip, read_websocket, read_tls, read_pike, read_events,
    };
    static const char *const core_keys[] = { "log_level", "syslog_facility", "nameservers",
        "control_socket", "metrics_listen", "shutdown_grace", "workers", "script", NULL };
    static const char *const sip_keys[] = { "listen", "advertised_address", "local_domains",
        "max_message_size", "tcp_connect_timeout", "tls_handshake_timeout", "header_timeout",
        "connection_idle_timeout", "max_connections", "max_connections_per_ip",
        "outbound_flow_secret", NULL };
    static const char *const websocket_keys[] = { "max_message_size", "max_frame_size",
        "keepalive_interval", "pong_timeout", "allowed_origins", NULL };
    static const char *const tls_keys[] = { "certificate", "private_key", "ca_file",
        "min_version", "verify_client", "sni", NULL };
    static const char *const pike_keys[] = { "enabled", "window", "max_requests", "ban_time", NULL };
    static const char *const events_keys[] = { "queue_limit", "overflow", NULL };
    static const char *const *const keys[] = {
        core_keys, sip_keys, websocket_keys, tls_keys, pike_keys, events_keys,
    };
    struct sandbox sb;
    char *path = NULL;
    int missing;

    memset(out, 0, sizeof(*out));
    if (dir == NULL && file == NULL) {
        snprintf(err, errlen, "config_load: no config dir or file given");
        return -1;
    }
    if (file != NULL)
        path = strdup(file);
    else if (asprintf(&path, "%s%slunasip.conf", dir, ends_with_slash(dir) ? "" : "/") == -1)
        path = NULL;
    if (path == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    struct rd r = { .L = NULL, .file = path, .dir = NULL, .err = err, .errlen = errlen };
    if ((out->dir = resolve_dir(dir, path, err, errlen)) == NULL)
        goto fail;
    r.dir = out->dir;
    if (set_defaults(&r, out) != 0)
        goto fail;
    if ((r.L = sandbox_run(&sb, path, &missing, err, errlen)) == NULL)
        goto fail;
    if (check_keys(&r, 1, "", sections) != 0)
        goto fail;
    for (int i = 0; sections[i]; i++) {
        char allowed[64];
        snprintf(allowed, sizeof(allowed), "a table of %s settings", sections[i]);
        int t = push_table(&r, 1, "", sections[i], allowed);
        if (t < 0)
            goto fail;
        int rc = t > 0 ? check_keys(&r, t, sections[i], keys[i]) : 0;
        if (rc == 0 && t > 0)
            rc = readers[i](&r, t, out);
        lua_settop(r.L, 1);
        if (rc != 0)
            goto fail;
    }
    lua_close(r.L);
    if ((out->file = realpath(path, NULL)) == NULL) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        r.L = NULL;
        goto fail;
    }
    free(path);
    return 0;

fail:
    if (r.L != NULL)
        lua_close(r.L);
    config_free(out);
    free(path);
    return -1;
}

/* ------------------------------------------------------------------------------------------
 * proxies.conf */

static const char *const proxy_keys[] = {
    "do_record_routing", "record_route_all", "use_dns", "use_dns_cache", "dns_cache_time",
    "use_naptr", "use_srv", "transport_preference", "force_transport_preference",
    "ip_type_preference", "dns_failover_on_503", "use_blacklist", "blacklist_time",
    "timer_B", "timer_C", "timer_F", "callback_on_server_tls_handshake", NULL,
};

static void proxy_defaults(struct config_proxy *p)
{
    memset(p, 0, sizeof(*p));
    p->do_record_routing = 1;
    p->record_route_all = 0;
    p->use_dns = 1;
    p->use_dns_cache = 1;
    p->dns_cache_time = 300;
    p->use_naptr = 1;
    p->use_srv = 1;
    p->transport_preference[0] = CONFIG_LISTEN_TLS;
    p->transport_preference[1] = CONFIG_LISTEN_TCP;
    p->transport_preference[2] = CONFIG_LISTEN_UDP;
    p->ntransport_preference = 3;
    p->force_transport_preference = 0;
    p->ip_type_preference[0] = AF_INET;
    p->ip_type_preference[1] = AF_INET6;
    p->nip_type_preference = 2;
    p->dns_failover_on_503 = 1;
    p->use_blacklist = 1;
    p->blacklist_time = 10;
    p->timer_B = 32;
    p->timer_C = 120;
    p->timer_F = 32;
    p->callback_on_server_tls_handshake = 1;
}

/* A preference list: distinct names out of names[], mapped through values[]. */
static int get_pref(struct rd *r, int t, const char *sect, const char *key,
                    const char *const *names, const int *values, int max, int *out, int *nout)
{
    lua_State *L = r->L;
    char path[160], ip[200], allowed[160], buf[256], names_s[64];
    join_names(names, names_s, sizeof(names_s));
    snprintf(allowed, sizeof(allowed), "a non-empty list of distinct values out of %s", names_s);
    field_path(path, sizeof(path), sect, key);
    int ty = push_field(r, t, key);
    if (ty == LUA_TNIL) {
        lua_pop(L, 1);
        return 0;
    }
    if (ty != LUA_TTABLE) {
        lua_pop(L, 1);
        return fail_type(r, path, "a table (list of strings)", ty, allowed);
    }
    int lt = lua_gettop(L);
    size_t n;
    int tmp[3];
    int rc = check_list(r, lt, path, (size_t)max, allowed, &n);
    if (rc == 0 && n == 0)
        rc = fail(r, path, allowed, "empty list");
    for (size_t i = 0; rc == 0 && i < n; i++) {
        snprintf(ip, sizeof(ip), "%s[%zu]", path, i + 1);
        lua_rawgeti(L, lt, (int)i + 1);
        int ety = lua_type(L, -1);
        if (ety != LUA_TSTRING) {
            rc = fail_type(r, ip, "a string", ety, allowed);
        } else {
            size_t len;
            const char *s = lua_tolstring(L, -1, &len);
            int found = -1;
            for (int k = 0; names[k]; k++)
                if (strlen(names[k]) == len && memcmp(names[k], s, len) == 0)
                    found = k;
            if (found < 0)
                rc = fail(r, ip, allowed, "unknown value '%s'", show(buf, sizeof(buf), s, len));
            for (size_t j = 0; rc == 0 && j < i; j++)
                if (tmp[j] == values[found])
                    rc = fail(r, ip, allowed, "'%s' listed twice", names[found]);
            if (rc == 0)
                tmp[i] = values[found];
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    if (rc != 0)
        return -1;
    memcpy(out, tmp, n * sizeof(int));
    *nout = (int)n;
    return 0;
}

static int read_proxy(struct rd *r, int t, const char *name, struct config_proxy *p)
{
    static const char *const transports[] = { "tls", "tcp", "udp", NULL };
    static const int transport_values[] = { CONFIG_LISTEN_TLS, CONFIG_LISTEN_TCP, CONFIG_LISTEN_UDP };
    static const char *const iptypes[] = { "ipv4", "ipv6", NULL };
    static const int iptype_values[] = { AF_INET, AF_INET6 };

    if (check_keys(r, t, name, proxy_keys) != 0 ||
        get_bool(r, t, name, "do_record_routing", &p->do_record_routing) != 0 ||
        get_bool(r, t, name, "record_route_all", &p->record_route_all) != 0 ||
        get_bool(r, t, name, "use_dns", &p->use_dns) != 0 ||
        get_bool(r, t, name, "use_dns_cache", &p->use_dns_cache) != 0 ||
        get_int(r, t, name, "dns_cache_time", 0, 604800, &p->dns_cache_time) != 0 ||
        get_bool(r, t, name, "use_naptr", &p->use_naptr) != 0 ||
        get_bool(r, t, name, "use_srv", &p->use_srv) != 0 ||
        get_pref(r, t, name, "transport_preference", transports, transport_values, 3,
                 p->transport_preference, &p->ntransport_preference) != 0 ||
        get_bool(r, t, name, "force_transport_preference", &p->force_transport_preference) != 0 ||
        get_pref(r, t, name, "ip_type_preference", iptypes, iptype_values, 2,
                 p->ip_type_preference, &p->nip_type_preference) != 0 ||
        get_bool(r, t, name, "dns_failover_on_503", &p->dns_failover_on_503) != 0 ||
        get_bool(r, t, name, "use_blacklist", &p->use_blacklist) != 0 ||
        get_int(r, t, name, "blacklist_time", 0, 86400, &p->blacklist_time) != 0 ||
        get_num(r, t, name, "timer_B", 0, 1, 3600, &p->timer_B) != 0 ||
        get_num(r, t, name, "timer_C", 0, 1, 3600, &p->timer_C) != 0 ||
        get_num(r, t, name, "timer_F", 0, 1, 3600, &p->timer_F) != 0 ||
        get_bool(r, t, name, "callback_on_server_tls_handshake",
                 &p->callback_on_server_tls_handshake) != 0)
        return -1;
    return 0;
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void config_proxies_free(struct config_proxies *p)
{
    if (p == NULL)
        return;
    for (size_t i = 0; i < p->nprofiles; i++)
        free(p->profiles[i].name);
    free(p->profiles);
    memset(p, 0, sizeof(*p));
}

/* Profiles come out as default_proxy first, then the others sorted by name; each other
 * profile starts from default_proxy as loaded (OverSIP). */
int config_proxies_load(const char *dir, struct config_proxies *out, char *err, size_t errlen)
{
    struct sandbox sb;
    char *path = NULL;
    char **names = NULL;
    size_t nnames = 0;
    int missing;
    struct rd r = { .L = NULL, .file = NULL, .dir = dir, .err = err, .errlen = errlen };

    memset(out, 0, sizeof(*out));
    if (dir == NULL || asprintf(&path, "%s%sproxies.conf", dir, ends_with_slash(dir) ? "" : "/") == -1) {
        snprintf(err, errlen, "config_proxies_load: no config dir or out of memory");
        return -1;
    }
    r.file = path;
    r.L = sandbox_run(&sb, path, &missing, err, errlen);
    if (r.L == NULL && !missing)
        goto fail;

    if (r.L != NULL) {
        lua_State *L = r.L;
        size_t cap = 0;
        int has_default = 0;
        lua_pushnil(L);
        while (lua_next(L, 1) != 0) {
            char kp[320];
            size_t len;
            key_path(L, -2, "", kp, sizeof(kp));
            const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &len) : NULL;
            int vty = lua_type(L, -1);
            lua_pop(L, 1);
            if (k == NULL || !is_ident(k, len)) {
                lua_pop(L, 1);
                fail(&r, kp, "identifiers of at most 64 characters", "bad profile name");
                goto fail;
            }
            if (vty != LUA_TTABLE) {
                lua_pop(L, 1);
                fail_type(&r, kp, "a table", vty, "a table of proxy settings");
                goto fail;
            }
            if (strcmp(k, "default_proxy") == 0) {
                has_default = 1;
                continue;
            }
            if (nnames >= CONF_PROFILES_MAX) {
                lua_pop(L, 1);
                fail(&r, kp, "at most 1000 profiles", "too many profiles");
                goto fail;
            }
            if (nnames == cap) {
                size_t ncap = cap ? cap * 2 : 8;
                char **nv = realloc(names, ncap * sizeof(*names));
                if (nv == NULL) {
                    lua_pop(L, 1);
                    fail_oom(&r, kp);
                    goto fail;
                }
                names = nv;
                cap = ncap;
            }
            if ((names[nnames] = strndup(k, len)) == NULL) {
                lua_pop(L, 1);
                fail_oom(&r, kp);
                goto fail;
            }
            nnames++;
        }
        (void)has_default;
        if (nnames > 1)
            qsort(names, nnames, sizeof(*names), name_cmp);
    }

    out->profiles = calloc(nnames + 1, sizeof(*out->profiles));
    if (out->profiles == NULL) {
        fail_oom(&r, "default_proxy");
        goto fail;
    }
    proxy_defaults(&out->profiles[0]);
    if ((out->profiles[0].name = strdup("default_proxy")) == NULL) {
        fail_oom(&r, "default_proxy");
        goto fail;
    }
    out->nprofiles = 1;
    if (r.L != NULL) {
        int t = push_table(&r, 1, "", "default_proxy", "a table of proxy settings");
        int rc = t > 0 ? read_proxy(&r, t, "default_proxy", &out->profiles[0]) : t;
        lua_settop(r.L, 1);
        if (rc != 0)
            goto fail;
    }
    for (size_t i = 0; i < nnames; i++) {
        struct config_proxy *p = &out->profiles[out->nprofiles];
        *p = out->profiles[0];
        p->name = names[i];
        names[i] = NULL;
        out->nprofiles++;
        int t = push_table(&r, 1, "", p->name, "a table of proxy settings");
        int rc = t > 0 ? read_proxy(&r, t, p->name, p) : -1;
        lua_settop(r.L, 1);
        if (rc != 0)
            goto fail;
    }
    free(names);
    if (r.L != NULL)
        lua_close(r.L);
    free(path);
    return 0;

fail:
    for (size_t i = 0; i < nnames; i++)
        free(names[i]);
    free(names);
    if (r.L != NULL)
        lua_close(r.L);
    config_proxies_free(out);
    free(path);
    return -1;
}

/* NULL or "" names default_proxy. Borrows p; the result lives as long as p. */
const struct config_proxy *config_proxies_find(const struct config_proxies *p, const char *name)
{
    if (name == NULL || *name == 0)
        name = "default_proxy";
    for (size_t i = 0; i < p->nprofiles; i++)
        if (strcmp(p->profiles[i].name, name) == 0)
            return &p->profiles[i];
    return NULL;
}
