/* libFuzzer driver for the message parser, editor and stream framing: any input must
 * parse or be refused without a crash, an over-read or a leak; what parses must serialise
 * and re-parse. Seeds: t/data/torture. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sip_msg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct sip_parse_error err;
    const char *buf = (const char *)data;
    struct sip_msg *m = sip_msg_parse(buf, size, SIP_PARSE_DATAGRAM, &err);
    if (m) {
        sip_msg_hdr_insert(m, "X-Fuzz", 6, "1", 1);
        sip_msg_hdr_delete(m, "Via", 3, 1);
        size_t cap = size + 4096;
        char *out = malloc(cap);
        long n = sip_msg_serialize(m, out, cap);
        if (n > 0) {
            struct sip_msg *m2 = sip_msg_parse(out, (size_t)n, SIP_PARSE_DATAGRAM, &err);
            if (m2)
                sip_msg_unref(m2);
        }
        free(out);
        sip_msg_unref(m);
    }
    long f = sip_frame(buf, size, 65535);
    if (f > 0) {
        if ((size_t)f > size)
            abort(); /* framing promised bytes that are not there */
        struct sip_msg *s = sip_msg_parse(buf, (size_t)f, SIP_PARSE_STREAM, &err);
        if (s)
            sip_msg_unref(s);
    }
    return 0;
}
