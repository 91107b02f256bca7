/* JSON parser (RFC 8259): strict grammar, UTF-8 validated (RFC 8259 §8.1), \u escapes with
 * surrogate pairs (§7), bounded depth and value count so a hostile control request cannot
 * exhaust the stack or the heap. The writer half of json.h lives in json.c. */
#include "json.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct parser {
    const unsigned char *p, *end, *start;
    size_t items;
    char *err;
    size_t errlen;
    int failed;
};

static void fail(struct parser *ps, const unsigned char *at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void fail(struct parser *ps, const unsigned char *at, const char *fmt, ...)
{
    if (ps->failed)
        return;
    ps->failed = 1;
    if (!ps->err || ps->errlen == 0)
        return;
    int n = snprintf(ps->err, ps->errlen, "offset %zu: ", (size_t)(at - ps->start));
    if (n < 0 || (size_t)n >= ps->errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ps->err + n, ps->errlen - (size_t)n, fmt, ap);
    va_end(ap);
}

static void skip_ws(struct parser *ps)
{
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

/* Frees what v owns (not v itself). */
static void val_clear(struct json_val *v)
{
    free(v->key);
    free(v->s);
    for (size_t i = 0; i < v->n; i++)
        val_clear(&v->kids[i]);
    free(v->kids);
    memset(v, 0, sizeof(*v));
}

static int hex4(const unsigned char *s, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = s[i], d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return -1;
        v = (v << 4) | d;
    }
    *out = v;
    return 0;
}

static size_t utf8_put(unsigned char *o, unsigned cp)
{
    if (cp < 0x80) { o[0] = (unsigned char)cp; return 1; }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xc0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xe0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (unsigned char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (unsigned char)(0xf0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (unsigned char)(0x80 | (cp & 0x3f));
    return 4;
}

/* A string at ps->p (on its opening quote). Returns a malloc'd, NUL-terminated, unescaped
 * copy (its length in *len), or NULL on error. An escape never produces more bytes than it
 * spans (a \u escape: 6 bytes -> at most 3; a surrogate pair: 12 -> 4), so the span bounds
 * the copy. */
static char *parse_string(struct parser *ps, size_t *len)
{
    const unsigned char *q = ps->p + 1;
    /* first pass: find the closing quote, so the copy is allocated once */
    const unsigned char *e = q;
    while (e < ps->end && *e != '"') {
        if (*e == '\\')
            e++;
        e++;
    }
    if (e >= ps->end) {
        fail(ps, ps->p, "unterminated string");
        return NULL;
    }
    unsigned char *out = malloc((size_t)(e - q) + 1);
    if (!out) {
        fail(ps, ps->p, "out of memory");
        return NULL;
    }
    size_t o = 0;
    while (q < e) {
        unsigned c = *q;
        if (c == '\\') {
            unsigned char x = q[1];
            switch (x) {
            case '"': out[o++] = '"'; q += 2; continue;
            case '\\': out[o++] = '\\'; q += 2; continue;
            case '/': out[o++] = '/'; q += 2; continue;
            case 'b': out[o++] = '\b'; q += 2; continue;
            case 'f': out[o++] = '\f'; q += 2; continue;
            case 'n': out[o++] = '\n'; q += 2; continue;
            case 'r': out[o++] = '\r'; q += 2; continue;
            case 't': out[o++] = '\t'; q += 2; continue;
            case 'u': break;
            default:
                fail(ps, q, "invalid escape");
                goto bad;
            }
            unsigned cp, lo;
            if (e - q < 6 || hex4(q + 2, &cp) != 0) {
                fail(ps, q, "invalid \\u escape");
                goto bad;
            }
            if (cp >= 0xdc00 && cp <= 0xdfff) {
                fail(ps, q, "lone low surrogate");
                goto bad;
            }
            if (cp >= 0xd800 && cp <= 0xdbff) {
                /* RFC 8259 §7: a character outside the BMP is a pair of escapes */
                if (e - q < 12 || q[6] != '\\' || q[7] != 'u' || hex4(q + 8, &lo) != 0 ||
                    lo < 0xdc00 || lo > 0xdfff) {
                    fail(ps, q, "lone high surrogate");
                    goto bad;
                }
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                q += 6;
            }
            o += utf8_put(out + o, cp);
            q += 6;
            continue;
        }
        if (c < 0x20) {
            fail(ps, q, "control character in string");
            goto bad;
        }
        if (c < 0x80) {
            out[o++] = (unsigned char)c;
            q++;
            continue;
        }
        size_t l = json_utf8_len((const char *)q, (size_t)(e - q));
        if (l == 0) {
            fail(ps, q, "invalid UTF-8");
            goto bad;
        }
        memcpy(out + o, q, l);
        o += l;
        q += l;
    }
    out[o] = 0;
    *len = o;
    ps->p = e + 1;
    return (char *)out;
bad:
    free(out);
    return NULL;
}

static int parse_number(struct parser *ps, struct json_val *v)
{
    const unsigned char *s = ps->p, *q = s;
    int neg = 0, integral = 1;
    if (q < ps->end && *q == '-') {
        neg = 1;
        q++;
    }
    if (q >= ps->end || *q < '0' || *q > '9') {
        fail(ps, s, "invalid number");
        return -1;
    }
    if (*q == '0') {
        q++;
        if (q < ps->end && *q >= '0' && *q <= '9') {
            fail(ps, s, "leading zero in number");
            return -1;
        }
    } else {
        while (q < ps->end && *q >= '0' && *q <= '9')
            q++;
    }
    if (q < ps->end && *q == '.') {
        integral = 0;
        q++;
        if (q >= ps->end || *q < '0' || *q > '9') {
            fail(ps, q, "digit expected after '.'");
            return -1;
        }
        while (q < ps->end && *q >= '0' && *q <= '9')
            q++;
    }
    if (q < ps->end && (*q == 'e' || *q == 'E')) {
        integral = 0;
        q++;
        if (q < ps->end && (*q == '+' || *q == '-'))
            q++;
        if (q >= ps->end || *q < '0' || *q > '9') {
            fail(ps, q, "digit expected in exponent");
            return -1;
        }
        while (q < ps->end && *q >= '0' && *q <= '9')
            q++;
    }
    size_t n = (size_t)(q - s);
    v->s = malloc(n + 1);
    if (!v->s) {
        fail(ps, s, "out of memory");
        return -1;
    }
    memcpy(v->s, s, n);
    v->s[n] = 0;
    v->slen = n;
    v->type = JSON_NUMBER;
    /* the grammar above is a subset of strtod's, so strtod consumes exactly n bytes */
    v->num = strtod(v->s, NULL);
    if (integral) {
        /* accumulate negatively: INT64_MIN has no positive counterpart */
        int64_t acc = 0;
        int ok = 1;
        for (size_t i = (size_t)neg; i < n; i++) {
            int d = v->s[i] - '0';
            if (acc < (INT64_MIN + d) / 10) {
                ok = 0;
                break;
            }
            acc = acc * 10 - d;
        }
        if (ok && !neg && acc == INT64_MIN)
            ok = 0;
        if (ok) {
            v->is_int = 1;
            v->i = neg ? acc : -acc;
        }
    }
    ps->p = q;
    return 0;
}

static int parse_value(struct parser *ps, struct json_val *v, int depth);

static int add_kid(struct parser *ps, struct json_val *parent, size_t *cap, struct json_val *kid)
{
    if (parent->n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 4;
        struct json_val *k = realloc(parent->kids, ncap * sizeof(*k));
        if (!k) {
            fail(ps, ps->p, "out of memory");
            return -1;
        }
        parent->kids = k;
        *cap = ncap;
    }
    parent->kids[parent->n++] = *kid;
    return 0;
}

/* An array or an object at ps->p (on its opening bracket); depth counts this container. */
static int parse_container(struct parser *ps, struct json_val *v, int depth)
{
    int is_obj = *ps->p == '{';
    unsigned char close = is_obj ? '}' : ']';
    if (depth > JSON_MAX_DEPTH) {
        fail(ps, ps->p, "nesting deeper than %d", JSON_MAX_DEPTH);
        return -1;
    }
    v->type = is_obj ? JSON_OBJECT : JSON_ARRAY;
    ps->p++;
    size_t cap = 0;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == close) {
        ps->p++;
        return 0;
    }
    for (;;) {
        struct json_val kid;
        memset(&kid, 0, sizeof(kid));
        skip_ws(ps);
        if (is_obj) {
            if (ps->p >= ps->end || *ps->p != '"') {
                fail(ps, ps->p, "member name expected");
                return -1;
            }
            kid.key = parse_string(ps, &kid.klen);
            if (!kid.key)
                return -1;
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':') {
                free(kid.key);
                fail(ps, ps->p, "':' expected");
                return -1;
            }
            ps->p++;
        }
        if (parse_value(ps, &kid, depth) != 0 || add_kid(ps, v, &cap, &kid) != 0) {
            val_clear(&kid);
            return -1;
        }
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
            continue;
        }
        if (ps->p < ps->end && *ps->p == close) {
            ps->p++;
            return 0;
        }
        fail(ps, ps->p, is_obj ? "',' or '}' expected" : "',' or ']' expected");
        return -1;
    }
}

static int literal(struct parser *ps, const char *word, size_t n)
{
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0) {
        fail(ps, ps->p, "invalid literal");
        return -1;
    }
    ps->p += n;
    return 0;
}

/* One value; on error v may hold partial contents (the caller clears it). */
static int parse_value(struct parser *ps, struct json_val *v, int depth)
{
    skip_ws(ps);
    if (ps->p >= ps->end) {
        fail(ps, ps->p, "value expected");
        return -1;
    }
    if (++ps->items > JSON_MAX_ITEMS) {
        fail(ps, ps->p, "more than %d values", JSON_MAX_ITEMS);
        return -1;
    }
    switch (*ps->p) {
    case '{':
    case '[':
        return parse_container(ps, v, depth + 1);
    case '"':
        v->type = JSON_STRING;
        v->s = parse_string(ps, &v->slen);
        return v->s ? 0 : -1;
    case 't':
        v->type = JSON_TRUE;
        return literal(ps, "true", 4);
    case 'f':
        v->type = JSON_FALSE;
        return literal(ps, "false", 5);
    case 'n':
        v->type = JSON_NULL;
        return literal(ps, "null", 4);
    default:
        if (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9'))
            return parse_number(ps, v);
        fail(ps, ps->p, "unexpected character");
        return -1;
    }
}

struct json_val *json_parse(const char *s, size_t len, char *err, size_t errlen)
{
    struct parser ps = { (const unsigned char *)s, (const unsigned char *)s + len,
                         (const unsigned char *)s, 0, err, errlen, 0 };
    if (err && errlen)
        err[0] = 0;
    struct json_val *v = calloc(1, sizeof(*v));
    if (!v) {
        fail(&ps, ps.p, "out of memory");
        return NULL;
    }
    if (parse_value(&ps, v, 0) != 0) {
        json_free(v);
        return NULL;
    }
    skip_ws(&ps);
    if (ps.p != ps.end) {
        fail(&ps, ps.p, "trailing data after the value");
        json_free(v);
        return NULL;
    }
    return v;
}

void json_free(struct json_val *v)
{
    if (!v)
        return;
    val_clear(v);
    free(v);
}

/* A repeated member name (allowed by RFC 8259 §4, whose behaviour it leaves open) answers
 * the last one, as ECMAScript's JSON.parse does. */
const struct json_val *json_get(const struct json_val *obj, const char *key)
{
    if (!obj || obj->type != JSON_OBJECT)
        return NULL;
    size_t kl = strlen(key);
    for (size_t i = obj->n; i-- > 0;) {
        const struct json_val *k = &obj->kids[i];
        if (k->klen == kl && memcmp(k->key, key, kl) == 0)
            return k;
    }
    return NULL;
}
