/* Event socket texts (SPEC §6): the driver table and scheme lookup, the normal form of a
 * socket text, and password masking (a rabbitmq: socket carries its AMQP credentials; logs,
 * control answers, metrics and E_EVENT_DROPPED show them as USER:***@). */
#include "evi_socket.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "evi.h"
#include "evi_sink.h"

void evi_socket_mask(const char *s, char *out, size_t outlen)
{
    size_t o = 0;
    if (!outlen)
        return;
    while (*s && o + 1 < outlen) {
        if (strncmp(s, "rabbitmq:", 9) == 0) {
            /* rabbitmq:[USER[:PASS]@]HOST...: the member ends at a blank */
            /* the credentials end at the last '@' before the first '/', as the driver reads them */
            size_t end = strcspn(s, " \t");
            const char *slash = memchr(s + 9, '/', end - 9);
            size_t auth = slash ? (size_t)(slash - s) : end;
            const char *at = memrchr(s, '@', auth);
            const char *colon = at ? memchr(s + 9, ':', (size_t)(at - s - 9)) : NULL;
            if (at && colon) {
                size_t head = (size_t)(colon + 1 - s);
                int n = snprintf(out + o, outlen - o, "%.*s***", (int)head, s);
                o += n > 0 ? (size_t)n : 0;
                if (o >= outlen)
                    o = outlen - 1;
                s = at;
                continue;
            }
        }
        out[o++] = *s++;
    }
    out[o] = 0;
}

static const struct evi_sink_ops *const *drivers(void)
{
    static const struct evi_sink_ops *const d[] = {
        &evi_udp_ops, &evi_unix_ops, &evi_tcp_ops, &evi_flat_ops, &evi_rabbitmq_ops, &evi_http_ops, NULL,
    };
    return d;
}

static const struct evi_sink_ops *test_driver;

void evi_set_test_driver(const struct evi_sink_ops *ops)
{
    test_driver = ops;
}

const struct evi_sink_ops *evi_socket_driver(const char *s, size_t n, const char **addr)
{
    if (test_driver) {
        size_t l = strlen(test_driver->scheme);
        if (n > l && strncmp(s, test_driver->scheme, l) == 0 && s[l] == ':') {
            *addr = s + l + 1;
            return test_driver;
        }
    }
    for (const struct evi_sink_ops *const *d = drivers(); *d; d++) {
        const char *sc = (*d)->scheme;
        size_t l = strlen(sc);
        if (strcmp(sc, "http") == 0) {
            if (n > 7 && strncasecmp(s, "http://", 7) == 0) {
                *addr = s;
                return *d;
            }
            continue;
        }
        if (n > l && strncmp(s, sc, l) == 0 && s[l] == ':') {
            *addr = s + l + 1;
            return *d;
        }
    }
    return NULL;
}

char *evi_socket_normalize(const char *s, size_t n, char *out, size_t outlen)
{
    while (n && (*s == ' ' || *s == '\t'))
        s++, n--;
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    size_t o = 0;
    int sp = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == ' ' || c == '\t') {
            sp = 1;
            continue;
        }
        if (sp && o + 1 < outlen)
            out[o++] = ' ';
        sp = 0;
        if (o + 1 >= outlen)
            return NULL;
        out[o++] = c;
    }
    out[o] = 0;
    return out;
}
