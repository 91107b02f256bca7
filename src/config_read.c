/* The generic half of the configuration loader (see config_read.h): a Lua sandbox to run a
 * config file in, and typed, validated readers over the table it leaves. Nothing here knows a
 * lunasip key; config.c holds the schema. */

#include "config_read.h"

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

#define CONFIG_READ_MEM_LIMIT   (16u << 20)  /* bytes the chunk may allocate */
#define CONFIG_READ_INSN_LIMIT  10000000L    /* VM instructions the chunk may run */
#define CONFIG_READ_HOOK_STEP   1000

/* ------------------------------------------------------------------------------------------
 * Sandbox */

/* Counts live bytes and refuses growth beyond the limit; the Lua core turns a NULL into a
 * "not enough memory" error. Frees and shrinks always go through. */
static void *sb_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    struct config_read_sandbox *sb = ud;
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
    struct config_read_sandbox *sb = ud;
    sb->insns += CONFIG_READ_HOOK_STEP;
    if (sb->insns < CONFIG_READ_INSN_LIMIT)
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
lua_State *config_read_sandbox_run(struct config_read_sandbox *sb, const char *path, int *missing,
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
    sb->limit = CONFIG_READ_MEM_LIMIT;
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
    lua_sethook(L, sb_hook, LUA_MASKCOUNT, CONFIG_READ_HOOK_STEP);
    int rc = lua_pcall(L, 0, 0, 0);
    lua_sethook(L, NULL, 0, 0);
    sb->limit = SIZE_MAX;                      /* reading the result must not fail */
    if (rc != 0) {
        if (sb->over_time)
            snprintf(err, errlen, "%s:%d: takes too long (more than %ld Lua instructions); "
                     "allowed: a configuration that runs straight through", path, sb->line,
                     CONFIG_READ_INSN_LIMIT);
        else if (sb->over_memory || rc == LUA_ERRMEM)
            snprintf(err, errlen, "%s: uses too much memory (more than %u MiB); allowed: a "
                     "configuration of reasonable size", path, CONFIG_READ_MEM_LIMIT >> 20);
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

/* Makes an untrusted value printable in an error: control bytes escaped, capped at 48 bytes. */
const char *config_read_show(char *buf, size_t cap, const char *s, size_t len)
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

int config_read_fail(struct config_read *r, const char *path, const char *allowed,
                     const char *fmt, ...)
{
    char problem[320];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(problem, sizeof(problem), fmt, ap);
    va_end(ap);
    snprintf(r->err, r->errlen, "%s: %s: %s; allowed: %s", r->file, path, problem, allowed);
    return -1;
}

int config_read_fail_type(struct config_read *r, const char *path, const char *want, int ty,
                          const char *allowed)
{
    return config_read_fail(r, path, allowed, "expected %s, got %s", want, lua_typename(r->L, ty));
}

int config_read_fail_oom(struct config_read *r, const char *path)
{
    snprintf(r->err, r->errlen, "%s: %s: out of memory", r->file, path);
    return -1;
}

int config_read_is_ident(const char *s, size_t len)
{
    static const char *const keywords[] = {
        "and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto", "if",
        "in", "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while",
    };
    if (len == 0 || len > CONFIG_READ_NAME_MAX || (s[0] >= '0' && s[0] <= '9'))
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
void config_read_key_path(lua_State *L, int k, const char *base, char *out, size_t cap)
{
    int ty = lua_type(L, k);
    if (ty == LUA_TSTRING) {
        size_t len;
        const char *s = lua_tolstring(L, k, &len);
        char buf[256];
        if (config_read_is_ident(s, len))
            snprintf(out, cap, "%s%s%.*s", base, *base ? "." : "", (int)len, s);
        else
            snprintf(out, cap, "%s[\"%s\"]", base, config_read_show(buf, sizeof(buf), s, len));
    } else if (ty == LUA_TNUMBER) {
        snprintf(out, cap, "%s[%.14g]", base, lua_tonumber(L, k));
    } else {
        snprintf(out, cap, "%s[<%s>]", base, lua_typename(L, ty));
    }
}

void config_read_join_names(const char *const *names, char *out, size_t cap)
{
    size_t o = 0;
    out[0] = 0;
    for (size_t i = 0; names[i] && o < cap; i++)
        o += (size_t)snprintf(out + o, cap - o, "%s%s", i ? ", " : "", names[i]);
}

/* Levenshtein distance, capped: only used to suggest a near key in an error. */
static size_t edit_distance(const char *a, size_t la, const char *b, size_t lb)
{
    size_t row[CONFIG_READ_NAME_MAX + 1];
    if (la > CONFIG_READ_NAME_MAX || lb > CONFIG_READ_NAME_MAX)
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
int config_read_check_keys(struct config_read *r, int t, const char *base, const char *const *names)
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
        config_read_key_path(L, -1, base, path, sizeof(path));
        config_read_join_names(names, allowed, sizeof(allowed));
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
            return config_read_fail(r, path, allowed, "unknown key (did you mean '%s'?)", near);
        return config_read_fail(r, path, allowed, "unknown key");
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * Typed field readers. Each takes the table at absolute index t and the section path; a nil
 * field leaves *out (the default) untouched. They return 0 or -1 with the error filled. */

int config_read_push_field(struct config_read *r, int t, const char *key)
{
    lua_pushstring(r->L, key);
    lua_rawget(r->L, t);
    return lua_type(r->L, -1);
}

void config_read_field_path(char *out, size_t cap, const char *sect, const char *key)
{
    snprintf(out, cap, "%s.%s", sect, key);
}

int config_read_get_bool(struct config_read *r, int t, const char *sect, const char *key, int *out)
{
    char path[160];
    int ty = config_read_push_field(r, t, key);
    if (ty == LUA_TBOOLEAN)
        *out = lua_toboolean(r->L, -1);
    lua_pop(r->L, 1);
    if (ty == LUA_TNIL || ty == LUA_TBOOLEAN)
        return 0;
    config_read_field_path(path, sizeof(path), sect, key);
    return config_read_fail_type(r, path, "a boolean", ty, "true or false");
}

/* The value at the top of the stack (a number) against [min, max]; pops nothing. */
static int check_int(struct config_read *r, const char *path, long min, long max, int *out)
{
    char allowed[96];
    snprintf(allowed, sizeof(allowed), "an integer from %ld to %ld", min, max);
    double d = lua_tonumber(r->L, -1);
    if (isnan(d))
        return config_read_fail(r, path, allowed, "expected an integer, got NaN");
    if (d != floor(d))
        return config_read_fail(r, path, allowed, "expected an integer, got %.14g", d);
    if (d < (double)min || d > (double)max)
        return config_read_fail(r, path, allowed, "%.14g is out of range", d);
    *out = (int)d;
    return 0;
}

int config_read_get_int(struct config_read *r, int t, const char *sect, const char *key,
                        long min, long max, int *out)
{
    char path[160], allowed[96];
    config_read_field_path(path, sizeof(path), sect, key);
    int ty = config_read_push_field(r, t, key);
    int rc = 0;
    if (ty == LUA_TNUMBER) {
        rc = check_int(r, path, min, max, out);
    } else if (ty != LUA_TNIL) {
        snprintf(allowed, sizeof(allowed), "an integer from %ld to %ld", min, max);
        rc = config_read_fail_type(r, path, "a number", ty, allowed);
    }
    lua_pop(r->L, 1);
    return rc;
}

/* A number in (min, max] when min_open, else [min, max]. */
int config_read_get_num(struct config_read *r, int t, const char *sect, const char *key,
                        double min, int min_open, double max, double *out)
{
    char path[160], allowed[96];
    config_read_field_path(path, sizeof(path), sect, key);
    snprintf(allowed, sizeof(allowed), min_open ? "a number > %g and <= %g" : "a number from %g to %g",
             min, max);
    int ty = config_read_push_field(r, t, key);
    int rc = 0;
    if (ty == LUA_TNUMBER) {
        double d = lua_tonumber(r->L, -1);
        if (isnan(d))
            rc = config_read_fail(r, path, allowed, "expected a number, got NaN");
        else if (!(min_open ? d > min : d >= min) || !(d <= max))
            rc = config_read_fail(r, path, allowed, "%.14g is out of range", d);
        else
            *out = d;
    } else if (ty != LUA_TNIL) {
        rc = config_read_fail_type(r, path, "a number", ty, allowed);
    }
    lua_pop(r->L, 1);
    return rc;
}

/* Checks that the string at the top of the stack is 1..CONFIG_READ_STR_MAX bytes without NUL;
 * returns it (borrowed from the state; anchored by the table that holds it). */
const char *config_read_check_str(struct config_read *r, const char *path, const char *allowed,
                                  size_t *len)
{
    const char *s = lua_tolstring(r->L, -1, len);
    if (*len == 0) {
        config_read_fail(r, path, allowed, "empty string");
        return NULL;
    }
    if (*len > CONFIG_READ_STR_MAX) {
        config_read_fail(r, path, allowed, "string of %zu bytes is too long (max %d)", *len,
                         CONFIG_READ_STR_MAX);
        return NULL;
    }
    if (memchr(s, 0, *len) != NULL) {
        config_read_fail(r, path, allowed, "string contains a NUL byte");
        return NULL;
    }
    return s;
}

/* Reads an optional string: returns 1 with *s set, 0 when nil (or false if allow_false, with
 * *was_false set), -1 on error. */
int config_read_get_str(struct config_read *r, int t, const char *sect, const char *key,
                        int allow_false, const char *allowed, const char **s, size_t *len,
                        int *was_false)
{
    char path[160];
    config_read_field_path(path, sizeof(path), sect, key);
    int ty = config_read_push_field(r, t, key);
    int rc = 0;
    if (was_false)
        *was_false = 0;
    if (ty == LUA_TSTRING) {
        *s = config_read_check_str(r, path, allowed, len);
        rc = *s ? 1 : -1;
    } else if (ty == LUA_TBOOLEAN && allow_false && !lua_toboolean(r->L, -1)) {
        if (was_false)
            *was_false = 1;
    } else if (ty != LUA_TNIL) {
        rc = config_read_fail_type(r, path, "a string", ty, allowed);
    }
    lua_pop(r->L, 1);
    return rc;
}

/* Replaces *dst with a copy of s[0..len) (or NULL when s is NULL). */
int config_read_set_str(struct config_read *r, const char *path, char **dst, const char *s,
                        size_t len)
{
    char *n = NULL;
    if (s != NULL && (n = strndup(s, len)) == NULL)
        return config_read_fail_oom(r, path);
    free(*dst);
    *dst = n;
    return 0;
}

int config_read_get_enum(struct config_read *r, int t, const char *sect, const char *key,
                         const char *const *names, int *out)
{
    char path[160], allowed[256], buf[256];
    const char *s;
    size_t len;
    config_read_field_path(path, sizeof(path), sect, key);
    config_read_join_names(names, allowed, sizeof(allowed));
    int rc = config_read_get_str(r, t, sect, key, 0, allowed, &s, &len, NULL);
    if (rc <= 0)
        return rc;
    for (int i = 0; names[i]; i++) {
        if (strlen(names[i]) == len && memcmp(names[i], s, len) == 0) {
            *out = i;
            return 0;
        }
    }
    return config_read_fail(r, path, allowed, "unknown value '%s'",
                            config_read_show(buf, sizeof(buf), s, len));
}

/* Resolves a relative path against the config dir; refuses results longer than PATH_MAX. */
int config_read_resolve_path(struct config_read *r, const char *path, const char *s, size_t len,
                             char **out)
{
    char *p;
    if (s[0] == '/') {
        p = strndup(s, len);
    } else {
        size_t dl = strlen(r->dir);
        if (dl + 1 + len >= PATH_MAX)
            return config_read_fail(r, path, "a path shorter than PATH_MAX", "path too long");
        p = malloc(dl + 1 + len + 1);
        if (p != NULL) {
            memcpy(p, r->dir, dl);
            p[dl] = '/';
            memcpy(p + dl + 1, s, len);
            p[dl + 1 + len] = 0;
        }
    }
    if (p == NULL)
        return config_read_fail_oom(r, path);
    free(*out);
    *out = p;
    return 0;
}

/* A path-valued key: a string resolved against the config dir; false (when allowed) gives
 * NULL. */
int config_read_get_path(struct config_read *r, int t, const char *sect, const char *key,
                         int allow_false, char **out)
{
    char path[160];
    const char *s;
    size_t len;
    int was_false;
    const char *allowed = allow_false ? "a file path (relative to the config dir) or false"
                                      : "a file path (relative to the config dir)";
    config_read_field_path(path, sizeof(path), sect, key);
    int rc = config_read_get_str(r, t, sect, key, allow_false, allowed, &s, &len, &was_false);
    if (rc < 0)
        return -1;
    if (was_false) {
        free(*out);
        *out = NULL;
        return 0;
    }
    if (rc == 0)
        return 0;
    return config_read_resolve_path(r, path, s, len, out);
}

/* Checks that the table at t is a list 1..n (no other key, no hole) of at most max
 * entries. */
int config_read_check_list(struct config_read *r, int t, const char *path, size_t max,
                           const char *allowed, size_t *n)
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
            config_read_key_path(L, -1, path, kp, sizeof(kp));
            lua_pop(L, 1);
            if (d > (double)max && d == floor(d))
                return config_read_fail(r, kp, allowed, "too many entries (max %zu)", max);
            return config_read_fail(r, kp, allowed, "not a list entry");
        }
        if (d > top)
            top = d;
        count++;
    }
    if ((double)count != top)
        return config_read_fail(r, path, allowed, "list has holes (%zu entries up to index %.0f)",
                                count, top);
    *n = count;
    return 0;
}

void config_read_free_strv(char **v, size_t n)
{
    for (size_t i = 0; v && i < n; i++)
        free(v[i]);
    free(v);
}

/* An optional list of strings. nil (or false) leaves *out untouched; otherwise *out is
 * replaced by a non-NULL array (even for {}), each entry checked and copied by fn (or copied
 * as is when fn is NULL). */
int config_read_get_str_list(struct config_read *r, int t, const char *sect, const char *key,
                             size_t max, const char *allowed, config_read_item_fn fn, char ***out,
                             size_t *nout)
{
    lua_State *L = r->L;
    char path[160], ip[200];
    config_read_field_path(path, sizeof(path), sect, key);
    int ty = config_read_push_field(r, t, key);
    if (ty == LUA_TNIL || (ty == LUA_TBOOLEAN && !lua_toboolean(L, -1))) {
        lua_pop(L, 1);
        return 0;
    }
    if (ty != LUA_TTABLE) {
        lua_pop(L, 1);
        return config_read_fail_type(r, path, "a table (list of strings)", ty, allowed);
    }
    int lt = lua_gettop(L);
    size_t n;
    if (config_read_check_list(r, lt, path, max, allowed, &n) != 0) {
        lua_pop(L, 1);
        return -1;
    }
    char **v = calloc(n ? n : 1, sizeof(*v));
    if (v == NULL) {
        lua_pop(L, 1);
        return config_read_fail_oom(r, path);
    }
    for (size_t i = 0; i < n; i++) {
        snprintf(ip, sizeof(ip), "%s[%zu]", path, i + 1);
        lua_rawgeti(L, lt, (int)i + 1);
        int ety = lua_type(L, -1);
        const char *s = NULL;
        size_t len = 0;
        int rc;
        if (ety != LUA_TSTRING)
            rc = config_read_fail_type(r, ip, "a string", ety, allowed);
        else if ((s = config_read_check_str(r, ip, allowed, &len)) == NULL)
            rc = -1;
        else if (fn)
            rc = fn(r, ip, s, len, &v[i]);
        else
            rc = (v[i] = strndup(s, len)) ? 0 : config_read_fail_oom(r, ip);
        lua_pop(L, 1);
        if (rc != 0) {
            config_read_free_strv(v, n);
            lua_pop(L, 1);
            return -1;
        }
    }
    lua_pop(L, 1);
    config_read_free_strv(*out, *nout);
    *out = v;
    *nout = n;
    return 0;
}

/* Pushes the sub-table key of t (nil allowed); returns its absolute index, 0 when nil, -1 on
 * error. Leaves the table (or nil) pushed in every case but error. */
int config_read_push_table(struct config_read *r, int t, const char *base, const char *key,
                           const char *allowed)
{
    char path[160];
    int ty = config_read_push_field(r, t, key);
    if (ty == LUA_TTABLE)
        return lua_gettop(r->L);
    if (ty == LUA_TNIL)
        return 0;
    lua_pop(r->L, 1);
    if (*base)
        config_read_field_path(path, sizeof(path), base, key);
    else
        snprintf(path, sizeof(path), "%s", key);
    return config_read_fail_type(r, path, "a table", ty, allowed);
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

/* Parses "IPv4[:PORT]", "[IPv6][:PORT]" and, when bare_v6, "IPv6" without brackets or port.
 * The host is normalised by inet_ntop into host (64 bytes); *port = 0 when absent. Names are
 * refused: the caller wants an address. */
int config_read_parse_hostport(const char *s, size_t len, int bare_v6, char *host, int *family,
                               int *port)
{
    char tmp[64];
    unsigned char bin[16];
    const char *h, *p = NULL;
    size_t hl, pl = 0;
    *port = 0;
    if (len == 0)
        return CONFIG_READ_HP_BAD_ADDR;
    if (s[0] == '[') {
        const char *end = memchr(s, ']', len);
        if (end == NULL)
            return CONFIG_READ_HP_BAD_ADDR;
        h = s + 1;
        hl = (size_t)(end - h);
        size_t rest = len - (size_t)(end + 1 - s);
        if (rest > 0) {
            if (end[1] != ':')
                return CONFIG_READ_HP_BAD_ADDR;
            p = end + 2;
            pl = rest - 1;
        }
        *family = AF_INET6;
    } else {
        const char *c1 = memchr(s, ':', len);
        if (c1 != NULL && memchr(c1 + 1, ':', len - (size_t)(c1 + 1 - s)) != NULL) {
            if (!bare_v6)
                return CONFIG_READ_HP_BARE_V6;
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
        return CONFIG_READ_HP_BAD_ADDR;
    memcpy(tmp, h, hl);
    tmp[hl] = 0;
    if (inet_pton(*family, tmp, bin) != 1)
        return CONFIG_READ_HP_BAD_ADDR;
    if (inet_ntop(*family, bin, host, 64) == NULL)
        return CONFIG_READ_HP_BAD_ADDR;
    if (p == NULL)
        return CONFIG_READ_HP_NO_PORT;
    if (parse_port(p, pl, port) != 0)
        return CONFIG_READ_HP_BAD_PORT;
    return CONFIG_READ_HP_OK;
}

/* RFC 1123 host name: dot-separated labels of letters, digits and '-', not starting or ending
 * with '-', the last one not all digits. With wildcard, a leading "*." label is allowed. */
int config_read_valid_hostname(const char *s, size_t len, int wildcard)
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

char *config_read_lower_dup(const char *s, size_t len)
{
    char *d = strndup(s, len);
    for (size_t i = 0; d && i < len; i++)
        if (d[i] >= 'A' && d[i] <= 'Z')
            d[i] = (char)(d[i] - 'A' + 'a');
    return d;
}
