/* libFuzzer driver for the JSON parser of the control socket (src/json_parse.c): any input
 * parses or is refused without a crash, and what parses writes back out (json_write_val,
 * compact or pretty) as a document that parses again. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[128];
    struct json_val *v = json_parse((const char *)data, size, err, sizeof(err));
    if (!v)
        return 0;
    struct json_buf b = { 0 };
    json_write_val(&b, v, (int)(size & 1) - 1); /* compact or pretty */
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
