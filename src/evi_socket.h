/* Event socket texts (SPEC §6): which driver a socket names, the normal form subscriptions
 * are compared in, and the masking of passwords for logs and answers. */
#ifndef LUNASIP_EVI_SOCKET_H
#define LUNASIP_EVI_SOCKET_H

#include <stddef.h>

struct evi_sink_ops;

#define EVI_SOCKETS_ALLOWED "udp:IP:PORT, unix:/path, tcp:IP:PORT, flatstore:/path/file, " \
    "rabbitmq:[USER[:PASS]@]HOST[:PORT]/[exchange=X;persistent;]ROUTING_KEY, " \
    "http://IP:PORT/path or virtual:PARALLEL|FAILOVER|ROUND-ROBIN SOCKET SOCKET..."

/* The driver of a concrete socket text (s, n bytes), with *addr pointing past its
 * "scheme:" (for http://, at the whole text); NULL when no driver has that scheme. The
 * test driver (evi_set_test_driver) is tried first. */
const struct evi_sink_ops *evi_socket_driver(const char *s, size_t n, const char **addr);

/* Copies s (n bytes) into out trimmed, with the members of a virtual socket separated by one
 * space: the form subscriptions are stored and compared in. NULL when it does not fit. */
char *evi_socket_normalize(const char *s, size_t n, char *out, size_t outlen);

/* evi_socket_mask is declared in evi.h, evi_set_test_driver in evi_sink.h. */

#endif
