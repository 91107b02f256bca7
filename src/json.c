/* JSON writer (RFC 8259 §7 escaping), also of trees the parser made. The parser half of
 * json.h lives in json_parse.c. */
#include "json.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int grow(struct json_buf *b, size_t more)
{
    if (b->oom)
        return -1;
    size_t need = b->len + more + 1; /* room for the NUL of json_cstr */
    if (b->max && need > b->max + 1) {
        b->oom = 1;
        b->over = 1;
        return -1;
    }
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 128;
    while (cap < need)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = 1;
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

int json_raw(struct json_buf *b, const char *s, size_t n)
{
    if (grow(b, n) != 0)
        return -1;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}

int json_rawz(struct json_buf *b, const char *s)
{
    return json_raw(b, s, strlen(s));
}

size_t json_utf8_len(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    if (n == 0)
        return 0;
    unsigned c = s[0];
    if (c < 0x80)
        return 1;
    size_t len;
    unsigned min, cp;
    if ((c & 0xe0) == 0xc0) { len = 2; cp = c & 0x1f; min = 0x80; }
    else if ((c & 0xf0) == 0xe0) { len = 3; cp = c & 0x0f; min = 0x800; }
    else if ((c & 0xf8) == 0xf0) { len = 4; cp = c & 0x07; min = 0x10000; }
    else return 0;
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

int json_str(struct json_buf *b, const char *str, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)str;
    if (grow(b, n + 2) != 0)
        return -1;
    b->p[b->len++] = '"';
    size_t i = 0;
    while (i < n) {
        /* copy the longest run that needs no escaping at once */
        size_t j = i;
        while (j < n && s[j] >= 0x20 && s[j] < 0x80 && s[j] != '"' && s[j] != '\\')
            j++;
        if (j > i && json_raw(b, (const char *)s + i, j - i) != 0)
            return -1;
        i = j;
        if (i >= n)
            break;
        unsigned char c = s[i];
        char esc[8];
        size_t elen = 2;
        esc[0] = '\\';
        if (c == '"' || c == '\\') esc[1] = (char)c;
        else if (c == '\n') esc[1] = 'n';
        else if (c == '\r') esc[1] = 'r';
        else if (c == '\t') esc[1] = 't';
        else if (c == '\b') esc[1] = 'b';
        else if (c == '\f') esc[1] = 'f';
        else if (c >= 0x80) {
            size_t l = json_utf8_len((const char *)s + i, n - i);
            if (l > 0) {
                if (json_raw(b, (const char *)s + i, l) != 0)
                    return -1;
                i += l;
                continue;
            }
            /* not UTF-8: the byte as the code point of the same value, in UTF-8 */
            char u[2] = { (char)(0xc0 | (c >> 6)), (char)(0x80 | (c & 0x3f)) };
            if (json_raw(b, u, 2) != 0)
                return -1;
            i++;
            continue;
        } else {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            elen = 6;
        }
        if (json_raw(b, esc, elen) != 0)
            return -1;
        i++;
    }
    return json_raw(b, "\"", 1);
}

int json_strz(struct json_buf *b, const char *s)
{
    if (!s)
        return json_raw(b, "null", 4);
    return json_str(b, s, strlen(s));
}

int json_int(struct json_buf *b, int64_t v)
{
    char t[24];
    int n = snprintf(t, sizeof(t), "%" PRId64, v);
    return json_raw(b, t, (size_t)n);
}

int json_uint(struct json_buf *b, uint64_t v)
{
    char t[24];
    int n = snprintf(t, sizeof(t), "%" PRIu64, v);
    return json_raw(b, t, (size_t)n);
}

int json_double(struct json_buf *b, double v)
{
    if (!isfinite(v))
        return json_raw(b, "null", 4);
    char t[40];
    int n = snprintf(t, sizeof(t), "%.17g", v);
    return json_raw(b, t, (size_t)n);
}

static int indent_to(struct json_buf *b, int n)
{
    static const char sp[] = "                                ";
    while (n > 0) {
        int k = n < 32 ? n : 32;
        json_raw(b, sp, (size_t)k);
        n -= k;
    }
    return b->oom ? -1 : 0;
}

int json_write_val(struct json_buf *b, const struct json_val *v, int indent)
{
    switch (v->type) {
    case JSON_NULL: return json_rawz(b, "null");
    case JSON_TRUE: return json_rawz(b, "true");
    case JSON_FALSE: return json_rawz(b, "false");
    case JSON_NUMBER: return json_raw(b, v->s, v->slen);
    case JSON_STRING: return json_str(b, v->s, v->slen);
    case JSON_ARRAY:
    case JSON_OBJECT:
        break;
    }
    int obj = v->type == JSON_OBJECT;
    if (v->n == 0)
        return json_rawz(b, obj ? "{}" : "[]");
    json_rawz(b, obj ? "{" : "[");
    for (size_t i = 0; i < v->n && !b->oom; i++) {
        if (i)
            json_raw(b, ",", 1);
        if (indent >= 0) {
            json_raw(b, "\n", 1);
            indent_to(b, indent + 2);
        }
        if (obj) {
            json_str(b, v->kids[i].key, v->kids[i].klen);
            json_rawz(b, indent >= 0 ? ": " : ":");
        }
        json_write_val(b, &v->kids[i], indent >= 0 ? indent + 2 : -1);
    }
    if (indent >= 0) {
        json_raw(b, "\n", 1);
        indent_to(b, indent);
    }
    return json_rawz(b, obj ? "}" : "]");
}

const char *json_cstr(struct json_buf *b)
{
    if (grow(b, 0) != 0)
        return NULL;
    b->p[b->len] = 0;
    return b->p;
}

void json_buf_free(struct json_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
    b->oom = 0;
    b->over = 0;
}

void json_buf_reset(struct json_buf *b)
{
    b->len = 0;
    b->oom = 0;
    b->over = 0;
}
