/* libFuzzer driver for the grammar primitives: URI, name-addr, Via, params, lists. */
#include <stddef.h>
#include <stdint.h>

#include "sip_grammar.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    struct sip_uri u;
    struct sip_nameaddr na;
    struct sip_via v;
    struct sip_str name, value, item;
    sip_uri_parse(s, size, &u);
    if (sip_nameaddr_parse(s, size, 1, &na) == 0 && na.params.len) {
        const char *p = na.params.s;
        while (sip_param_next(&p, na.params.s + na.params.len, &name, &value) == 1)
            ;
    }
    sip_via_parse(s, size, &v);
    const char *p = s;
    while (sip_list_next(&p, s + size, &item) == 1)
        ;
    return 0;
}
