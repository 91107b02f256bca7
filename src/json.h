/* JSON for the event interface and the control socket (RFC 8259): a growing-buffer writer
 * (event payloads, control answers) and a bounded parser (control requests, SPEC §8).
 * Output is always valid UTF-8: a byte that is not part of valid UTF-8 is written as the
 * code point of the same value (\u00XX), so any SIP header value can be carried. */
#ifndef LUNASIP_JSON_H
#define LUNASIP_JSON_H

#include <stddef.h>
#include <stdint.h>

/* ----- writer ----- */

struct json_buf {
    char *p;
    size_t len, cap;
    size_t max;   /* 0 = unbounded; else appends past max set oom */
    int oom;      /* an append failed (out of memory or past max): the content is unusable */
    int over;     /* ... because it went past max */
};

/* Appends; on failure sets b->oom and returns -1 (later appends are then no-ops). */
int json_raw(struct json_buf *b, const char *s, size_t n);
int json_rawz(struct json_buf *b, const char *s);
int json_str(struct json_buf *b, const char *s, size_t n);   /* quoted and escaped */
int json_strz(struct json_buf *b, const char *s);            /* NULL writes null */
int json_int(struct json_buf *b, int64_t v);
int json_uint(struct json_buf *b, uint64_t v);
int json_double(struct json_buf *b, double v);                /* %.17g; non-finite as null */
/* Length of the valid UTF-8 sequence at s (1..4 bytes), or 0 when the bytes there are not
 * UTF-8: overlong forms, surrogates and code points above U+10FFFF are refused (RFC 3629 §3). */
size_t json_utf8_len(const char *s, size_t n);
/* b->p NUL-terminated (the NUL is not counted in len); NULL after oom. */
const char *json_cstr(struct json_buf *b);
void json_buf_free(struct json_buf *b);
void json_buf_reset(struct json_buf *b);  /* len = 0, oom cleared, storage kept */

/* ----- parser ----- */

enum json_type {
    JSON_NULL = 0,
    JSON_FALSE,
    JSON_TRUE,
    JSON_NUMBER,
    JSON_STRING,
    JSON_ARRAY,
    JSON_OBJECT,
};

/* A parsed value. Strings are unescaped, NUL-terminated copies (s, slen; an embedded \u0000
 * is kept, so use slen). Arrays and objects hold n children in kids; an object's children
 * carry their member name in key/klen. The whole tree is one allocation owner: json_free. */
struct json_val {
    enum json_type type;
    char *key; size_t klen;          /* member name (objects' children only) */
    char *s; size_t slen;            /* JSON_STRING, and the number's source text */
    double num;                      /* JSON_NUMBER */
    int is_int; int64_t i;           /* JSON_NUMBER that is an integer within int64 */
    struct json_val *kids; size_t n; /* JSON_ARRAY, JSON_OBJECT */
};

#define JSON_MAX_DEPTH 32
#define JSON_MAX_ITEMS 10000   /* values in one document */

/* Parses exactly one JSON text (surrounding whitespace allowed) of len bytes. Returns a tree
 * or NULL with err set ("offset N: what is wrong"). Refuses depth above JSON_MAX_DEPTH,
 * more than JSON_MAX_ITEMS values, invalid UTF-8 and lone surrogates. */
struct json_val *json_parse(const char *s, size_t len, char *err, size_t errlen);
void json_free(struct json_val *v);
/* Writes a parsed tree back as JSON: on one line when indent < 0, else with two spaces per
 * level, starting at indent. Numbers keep their source text. */
int json_write_val(struct json_buf *b, const struct json_val *v, int indent);
/* The member of an object named key, or NULL. */
const struct json_val *json_get(const struct json_val *obj, const char *key);

#endif
