/* STUN Binding on SIP's UDP ports (RFC 5389, as RFC 5626 §4.4.2 and §8.4 use it for
 * keepalives): a Binding request is answered with the source address it came from. A
 * datagram is told apart from SIP by its first byte (RFC 5389 §6, RFC 7983 §7). */
#ifndef LUNASIP_STUN_H
#define LUNASIP_STUN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define STUN_HEADER     20
#define STUN_COOKIE     0x2112A442u
#define STUN_RESPONSE_MAX 128   /* the largest answer stun_answer builds */

/* 1 when buf looks like a STUN message (first two bits 0, the magic cookie, a length that is
 * the rest of the datagram in 4-byte units): a SIP message never starts with a byte < 0x40. */
int stun_is_message(const uint8_t *buf, size_t len);

/* Answers a STUN message received from src (RFC 5389 §10.1.2 and §7.3):
 *   - a Binding request: a success response with XOR-MAPPED-ADDRESS (and FINGERPRINT when
 *     the request carried one);
 *   - a Binding request with an unknown comprehension-required attribute: a 420 error
 *     response listing them in UNKNOWN-ATTRIBUTES;
 *   - anything else (an indication, a response, another method, a malformed message, a bad
 *     FINGERPRINT): nothing.
 * Returns the answer's length in out (at most STUN_RESPONSE_MAX bytes), 0 to answer nothing. */
size_t stun_answer(const uint8_t *req, size_t len, const struct sockaddr *src, uint8_t *out, size_t outlen);

/* CRC-32 (ISO 3309, as FINGERPRINT uses it). */
uint32_t stun_crc32(const uint8_t *p, size_t n);

#endif
