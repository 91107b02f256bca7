/* Internal to the config module: only config.c includes this header. The generic half of the
 * loader: runs a file as a Lua chunk in an empty sandbox, then reads the table it leaves with
 * typed, validated getters whose errors name the file, the key path and what is allowed. */
#ifndef LUNASIP_CONFIG_READ_H
#define LUNASIP_CONFIG_READ_H

#include <stddef.h>

#include <lua.h>

#define CONFIG_READ_STR_MAX   4096  /* bytes per string value */
#define CONFIG_READ_NAME_MAX  64    /* bytes per identifier (config_read_is_ident) */

/* The budget of one run; filled by config_read_sandbox_run, private to config_read.c. */
struct config_read_sandbox {
    lua_Alloc inner;
    void *inner_ud;
    size_t used, limit;
    long insns;
    int over_memory, over_time;
    int line;                 /* current line when the instruction budget ran out */
};

/* A reader over the state a sandbox run left: errors go to err, prefixed with file. */
struct config_read {
    lua_State *L;
    const char *file;
    const char *dir;          /* absolute config dir, for relative paths */
    char *err;
    size_t errlen;
};

/* Runs path in a fresh, library-less state; on success the chunk's environment table is at
 * stack index 1 and the caller lua_closes the state (sb must outlive it). NULL with err filled
 * on failure; *missing is set when the file does not exist. */
lua_State *config_read_sandbox_run(struct config_read_sandbox *sb, const char *path,
                                   int *missing, char *err, size_t errlen);

/* Error reporting. Each fills r->err as "FILE: PATH: PROBLEM; allowed: ALLOWED" and returns
 * -1. config_read_show makes an untrusted value printable into buf and returns buf. */
int config_read_fail(struct config_read *r, const char *path, const char *allowed,
                     const char *fmt, ...) __attribute__((format(printf, 4, 5)));
int config_read_fail_type(struct config_read *r, const char *path, const char *want, int ty,
                          const char *allowed);
int config_read_fail_oom(struct config_read *r, const char *path);
const char *config_read_show(char *buf, size_t cap, const char *s, size_t len);

/* Key names and paths. */
int config_read_is_ident(const char *s, size_t len);
void config_read_key_path(lua_State *L, int k, const char *base, char *out, size_t cap);
void config_read_field_path(char *out, size_t cap, const char *sect, const char *key);
void config_read_join_names(const char *const *names, char *out, size_t cap);
int config_read_check_keys(struct config_read *r, int t, const char *base,
                           const char *const *names);

/* Typed field readers: the table at absolute index t, the section path sect; a nil field
 * leaves *out (the default) untouched. 0 or -1 with the error filled, unless said otherwise. */
int config_read_push_field(struct config_read *r, int t, const char *key);
int config_read_push_table(struct config_read *r, int t, const char *base, const char *key,
                           const char *allowed);
int config_read_get_bool(struct config_read *r, int t, const char *sect, const char *key,
                         int *out);
int config_read_get_int(struct config_read *r, int t, const char *sect, const char *key,
                        long min, long max, int *out);
int config_read_get_num(struct config_read *r, int t, const char *sect, const char *key,
                        double min, int min_open, double max, double *out);
const char *config_read_check_str(struct config_read *r, const char *path, const char *allowed,
                                  size_t *len);
int config_read_get_str(struct config_read *r, int t, const char *sect, const char *key,
                        int allow_false, const char *allowed, const char **s, size_t *len,
                        int *was_false);
int config_read_set_str(struct config_read *r, const char *path, char **dst, const char *s,
                        size_t len);
int config_read_get_enum(struct config_read *r, int t, const char *sect, const char *key,
                         const char *const *names, int *out);
int config_read_resolve_path(struct config_read *r, const char *path, const char *s, size_t len,
                             char **out);
int config_read_get_path(struct config_read *r, int t, const char *sect, const char *key,
                         int allow_false, char **out);
int config_read_check_list(struct config_read *r, int t, const char *path, size_t max,
                           const char *allowed, size_t *n);

/* Validates one list entry (s, len) and stores a malloc'd copy in *out. */
typedef int (*config_read_item_fn)(struct config_read *r, const char *path, const char *s,
                                   size_t len, char **out);

int config_read_get_str_list(struct config_read *r, int t, const char *sect, const char *key,
                             size_t max, const char *allowed, config_read_item_fn fn,
                             char ***out, size_t *nout);
void config_read_free_strv(char **v, size_t n);

/* Addresses and names. config_read_parse_hostport returns one of these. */
enum config_read_hostport {
    CONFIG_READ_HP_OK = 0,
    CONFIG_READ_HP_BAD_ADDR = -1,
    CONFIG_READ_HP_BAD_PORT = -2,
    CONFIG_READ_HP_NO_PORT = -3,
    CONFIG_READ_HP_BARE_V6 = -4,
};

int config_read_parse_hostport(const char *s, size_t len, int bare_v6, char *host, int *family,
                               int *port);
int config_read_valid_hostname(const char *s, size_t len, int wildcard);
char *config_read_lower_dup(const char *s, size_t len);

#endif
