/* Unit tests of stun.c: the RFC 5769 test vectors (the sample request's FINGERPRINT, the
 * XOR-MAPPED-ADDRESS of the IPv4 and IPv6 sample responses), answers to Binding requests
 * with and without FINGERPRINT, 420 for unknown comprehension-required attributes, and
 * silence for everything else (indications, responses, bad lengths, bad FINGERPRINT, SIP). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>

#include "stun.h"
#include "test.h"

/* RFC 5769 §2.1: the sample request (SOFTWARE, PRIORITY, ICE-CONTROLLED, USERNAME,
 * MESSAGE-INTEGRITY, FINGERPRINT). */
static const uint8_t sample_request[] = {
    0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74, 0x65, 0x73,
    0x74, 0x20, 0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e, 0x00, 0x01, 0xff,
    0x80, 0x29, 0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36, 0x00, 0x06, 0x00, 0x09,
    0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76, 0x59, 0x20, 0x20, 0x20, 0x00, 0x08, 0x00, 0x14,
    0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e, 0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49,
    0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5, 0x7a, 0x3b, 0xcf,
};

static struct sockaddr_in v4(const char *ip, int port)
{
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, ip, &a.sin_addr);
    return a;
}

static struct sockaddr_in6 v6(const char *ip, int port)
{
    struct sockaddr_in6 a;
    memset(&a, 0, sizeof(a));
    a.sin6_family = AF_INET6;
    a.sin6_port = htons((uint16_t)port);
    inet_pton(AF_INET6, ip, &a.sin6_addr);
    return a;
}

/* A Binding request with the sample's transaction id, optional extra attributes and an
 * optional FINGERPRINT. */
static size_t binding(uint8_t *out, const uint8_t *attrs, size_t alen, int fingerprint)
{
    memcpy(out, sample_request, 20);
    if (alen)
        memcpy(out + 20, attrs, alen);
    size_t n = 20 + alen;
    if (fingerprint) {
        out[2] = (uint8_t)((n + 8 - 20) >> 8);
        out[3] = (uint8_t)(n + 8 - 20);
        uint32_t crc = stun_crc32(out, n) ^ 0x5354554eu;
        uint8_t fp[8] = { 0x80, 0x28, 0, 4, (uint8_t)(crc >> 24), (uint8_t)(crc >> 16), (uint8_t)(crc >> 8), (uint8_t)crc };
        memcpy(out + n, fp, 8);
        n += 8;
    }
    out[2] = (uint8_t)((n - 20) >> 8);
    out[3] = (uint8_t)(n - 20);
    return n;
}

/* Finds attribute type in a message; returns its value offset or 0. */
static size_t find_attr(const uint8_t *m, size_t n, uint16_t type, uint16_t *len)
{
    for (size_t off = 20; off + 4 <= n;) {
        uint16_t t = (uint16_t)(m[off] << 8 | m[off + 1]), l = (uint16_t)(m[off + 2] << 8 | m[off + 3]);
        if (t == type) {
            *len = l;
            return off + 4;
        }
        off += 4 + ((l + 3u) & ~3u);
    }
    return 0;
}

static void test_vectors(void)
{
    /* the sample request's FINGERPRINT is what our CRC computes */
    size_t n = sizeof(sample_request);
    CHECK(stun_is_message(sample_request, n));
    uint32_t want = 0xe57a3bcfu;
    CHECK((stun_crc32(sample_request, n - 8) ^ 0x5354554eu) == want);

    /* it is a Binding request with attributes we may ignore: answered, from 192.0.2.1:32853 */
    uint8_t out[STUN_RESPONSE_MAX];
    struct sockaddr_in a4 = v4("192.0.2.1", 32853);
    size_t r = stun_answer(sample_request, n, (struct sockaddr *)&a4, out, sizeof(out));
    CHECK(r > 20);
    CHECK(out[0] == 0x01 && out[1] == 0x01);
    CHECK(memcmp(out + 4, sample_request + 4, 16) == 0);
    CHECK((size_t)((out[2] << 8 | out[3]) + 20) == r);
    uint16_t len = 0;
    size_t x = find_attr(out, r, 0x0020, &len);
    /* RFC 5769 §2.2: XOR-MAPPED-ADDRESS of 192.0.2.1:32853 */
    static const uint8_t want4[] = { 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43 };
    CHECK(x && len == 8 && memcmp(out + x, want4, 8) == 0);
    /* the request had FINGERPRINT, so the answer has a valid one, last */
    size_t f = find_attr(out, r, 0x8028, &len);
    CHECK(f == r - 4 && len == 4);
    if (f == r - 4) {
        uint32_t got = (uint32_t)out[f] << 24 | (uint32_t)out[f + 1] << 16 | (uint32_t)out[f + 2] << 8 | out[f + 3];
        CHECK(got == (stun_crc32(out, r - 8) ^ 0x5354554eu));
    }
    /* our answer is itself a STUN message our own check accepts */
    CHECK(stun_is_message(out, r));

    /* RFC 5769 §2.3: XOR-MAPPED-ADDRESS of [2001:db8:1234:5678:11:2233:4455:6677]:32853 */
    struct sockaddr_in6 a6 = v6("2001:db8:1234:5678:11:2233:4455:6677", 32853);
    r = stun_answer(sample_request, n, (struct sockaddr *)&a6, out, sizeof(out));
    static const uint8_t want6[] = { 0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa, 0xa5, 0xd3,
                                     0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9 };
    x = find_attr(out, r, 0x0020, &len);
    CHECK(x && len == 20 && memcmp(out + x, want6, 20) == 0);
}

static void test_answers(void)
{
    uint8_t req[128], out[STUN_RESPONSE_MAX];
    struct sockaddr_in a4 = v4("127.0.0.1", 5070);
    /* a bare Binding request (what RFC 5626 keepalives send): success, no FINGERPRINT */
    size_t n = binding(req, NULL, 0, 0);
    size_t r = stun_answer(req, n, (struct sockaddr *)&a4, out, sizeof(out));
    CHECK(r == 32);
    uint16_t len;
    CHECK(find_attr(out, r, 0x8028, &len) == 0);

    /* an unknown comprehension-required attribute: 420 with UNKNOWN-ATTRIBUTES */
    static const uint8_t unknown[] = { 0x00, 0x33, 0x00, 0x01, 0xaa, 0, 0, 0, 0x7f, 0xff, 0x00, 0x00 };
    n = binding(req, unknown, sizeof(unknown), 1);
    r = stun_answer(req, n, (struct sockaddr *)&a4, out, sizeof(out));
    CHECK(r > 20 && out[0] == 0x01 && out[1] == 0x11);
    size_t e = find_attr(out, r, 0x0009, &len);
    CHECK(e && out[e + 2] == 4 && out[e + 3] == 20);
    size_t u = find_attr(out, r, 0x000A, &len);
    CHECK(u && len == 4 && out[u] == 0x00 && out[u + 1] == 0x33 && out[u + 2] == 0x7f && out[u + 3] == 0xff);
    CHECK(find_attr(out, r, 0x8028, &len) != 0);
    /* an unknown comprehension-optional attribute is ignored */
    static const uint8_t optional[] = { 0x80, 0x99, 0x00, 0x02, 1, 2, 0, 0 };
    n = binding(req, optional, sizeof(optional), 0);
    r = stun_answer(req, n, (struct sockaddr *)&a4, out, sizeof(out));
    CHECK(r == 32 && out[1] == 0x01);

    /* silence: a bad FINGERPRINT, an indication, a response, another method, bad lengths */
    n = binding(req, NULL, 0, 1);
    req[n - 1] ^= 1;
    CHECK(stun_answer(req, n, (struct sockaddr *)&a4, out, sizeof(out)) == 0);
    n = binding(req, NULL, 0, 0);
    req[1] = 0x11; /* Binding indication */
    CHECK(stun_answer(req, n, (struct sockaddr *)&a4, out, sizeof(out)) == 0);
    req[0] = 0x01; req[1] = 0x01; /* a success response */
    CHECK(stun_answer(req, n, (struct sockaddr *)&a4, out, sizeof(out)) == 0);
    req[0] = 0x00; req[1] = 0x03; /* Allocate */
    CHECK(stun_answer(req, n, (struct sockaddr *)&a4, out, sizeof(out)) == 0);
    n = binding(req, optional, sizeof(optional), 0);
    CHECK(stun_answer(req, n - 4, (struct sockaddr *)&a4, out, sizeof(out)) == 0); /* length lies */
    static const uint8_t overrun[] = { 0x80, 0x99, 0x00, 0x40 };
    n = binding(req, overrun, sizeof(overrun), 0);
    CHECK(stun_answer(req, n, (struct sockaddr *)&a4, out, sizeof(out)) == 0);
    /* FINGERPRINT not last: refused */
    n = binding(req, NULL, 0, 1);
    memcpy(req + n, optional, sizeof(optional));
    n += sizeof(optional);
    req[3] = (uint8_t)(n - 20);
    CHECK(stun_answer(req, n, (struct sockaddr *)&a4, out, sizeof(out)) == 0);

    /* never STUN: SIP, CRLF, short datagrams, no cookie */
    static const char sip[] = "OPTIONS sip:a@b SIP/2.0\r\n\r\n";
    CHECK(!stun_is_message((const uint8_t *)sip, sizeof(sip) - 1));
    CHECK(!stun_is_message((const uint8_t *)"\r\n\r\n", 4));
    n = binding(req, NULL, 0, 0);
    CHECK(stun_is_message(req, n) && !stun_is_message(req, n - 1));
    req[4] = 0;
    CHECK(!stun_is_message(req, n));
    /* every prefix of the sample request, before a guard page: no over-read, no answer */
    for (size_t k = 0; k < sizeof(sample_request); k++) {
        struct guard_buf g = guard_alloc(sample_request, k);
        CHECK(stun_answer((const uint8_t *)g.data, k, (struct sockaddr *)&a4, out, sizeof(out)) == 0);
        guard_free(&g);
    }
}

int main(void)
{
    test_vectors();
    test_answers();
    TEST_DONE();
}
