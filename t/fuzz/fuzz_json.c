/* libFuzzer driver for the JSON parser of the control socket (src/json_parse.c): any input
 * parses or is refused without a crash, and what parses writes back out (json.c) as a
 * document that parses again. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "json.h"

static void emit(struct json_buf *b, const struct json_val *v)
{
    switch (v->type) {
    case JSON_NULL: json_rawz(b, "null"); break;
    case JSON_FALSE: json_rawz(b, "false"); break;
    case JSON_TRUE: json_rawz(b, "true"); break;
    case JSON_NUMBER:
        if (v->is_int)
            json_int(b, v->i);
        else
            json_double(b, v->num);
        break;
    case JSON_STRING: json_str(b, v->s, v->slen); break;
    case JSON_ARRAY:
    case JSON_OBJECT:
        json_raw(b, v->type == JSON_ARRAY ? "[" : "{", 1);
        for (size_t i = 0; i < v->n; i++) {
            if (i)
                json_raw(b, ",", 1);
            if (v->type == JSON_OBJECT) {
                json_str(b, v->kids[i].key, v->kids[i].klen);
                json_raw(b, ":", 1);
            }
            emit(b, &v->kids[i]);
        }
        json_raw(b, v->type == JSON_ARRAY ? "]" : "}", 1);
        break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[128];
    struct json_val *v = json_parse((const char *)data, size, err, sizeof(err));
    if (!v)
        return 0;
    struct json_buf b = { 0 };
    emit(&b, v);
    json_free(v);
    if (!b.oom) {
        struct json_val *again = json_parse(b.p, b.len, err, sizeof(err));
        if (!again)
            abort(); /* our own output must parse */
        json_free(again);
    }
    json_buf_free(&b);
    return 0;
}
