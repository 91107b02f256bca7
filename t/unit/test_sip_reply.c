/* Unit tests of sip_reply.c: response construction (RFC 3261 §8.2.6.2), the received/rport
 * rewrite of the top Via (§18.2.1, RFC 3581), salvage of refused requests, To tags. */
#include <arpa/inet.h>
#include <netinet/in.h>

#include "sip_msg.h"
#include "sip_reply.h"
#include "test.h"

static struct sip_msg *parse(const char *s, struct sockaddr_in *src)
{
    struct sip_parse_error err;
    struct guard_buf g = guard_alloc(s, strlen(s));
    struct sip_msg *m = sip_msg_parse(g.data, strlen(s), SIP_PARSE_DATAGRAM, &err);
    guard_free(&g);
    if (m && src) {
        memcpy(&m->src, src, sizeof(*src));
        m->srclen = sizeof(*src);
    }
    return m;
}

static const char *req_rport =
    "OPTIONS sip:bob@example.com SIP/2.0\r\n"
    "Via: SIP/2.0/UDP host.example.com:5070;branch=z9hG4bK1;rport, SIP/2.0/TCP second.example.com\r\n"
    "Via: SIP/2.0/UDP third.example.com;branch=z9hG4bK3\r\n"
    "From: <sip:alice@example.com>;tag=abc\r\n"
    "To: <sip:bob@example.com>\r\n"
    "Call-ID: c1@example.com\r\n"
    "CSeq: 7 OPTIONS\r\n"
    "Timestamp: 54\r\n"
    "Content-Length: 0\r\n\r\n";

int main(void)
{
    struct sockaddr_in src = { .sin_family = AF_INET, .sin_port = htons(40000) };
    inet_pton(AF_INET, "127.0.0.9", &src.sin_addr);
    char out[4096];

    /* the response copies Vias, From, To (+tag), Call-ID, CSeq; received and rport filled */
    struct sip_msg *m = parse(req_rport, &src);
    CHECK(m != NULL);
    struct sip_reply_src rs;
    CHECK(sip_reply_src_from_msg(m, &rs) == 0);
    CHECK(rs.nvias == 2);
    long n = sip_reply_build(&rs, 200, NULL, 0, "X-A: 1\r\n", 8, "hi", 2, out, sizeof(out));
    CHECK(n > 0);
    out[n > 0 ? n : 0] = 0;
    CHECK(strncmp(out, "SIP/2.0 200 OK\r\n", 16) == 0);
    CHECK(strstr(out, "Via: SIP/2.0/UDP host.example.com:5070;branch=z9hG4bK1;received=127.0.0.9;rport=40000, SIP/2.0/TCP second.example.com\r\n") != NULL);
    CHECK(strstr(out, "Via: SIP/2.0/UDP third.example.com;branch=z9hG4bK3\r\n") != NULL);
    CHECK(strstr(out, "To: <sip:bob@example.com>;tag=") != NULL);
    CHECK(strstr(out, "X-A: 1\r\nContent-Length: 2\r\n\r\nhi") != NULL);
    CHECK(strstr(out, "Timestamp") == NULL); /* only a 100 copies it */
    /* the result parses as a response */
    struct sip_parse_error err;
    struct sip_msg *r = sip_msg_parse(out, (size_t)n, SIP_PARSE_DATAGRAM, &err);
    CHECK(r != NULL && !r->is_request && r->status == 200);
    CHECK(r && r->to.tag.len == SIP_REPLY_TAG_LEN);
    if (r)
        sip_msg_unref(r);

    /* 100 Trying: no To tag, Timestamp copied (§8.2.6.1) */
    n = sip_reply_build(&rs, 100, NULL, 0, NULL, 0, NULL, 0, out, sizeof(out));
    out[n > 0 ? n : 0] = 0;
    CHECK(strstr(out, "To: <sip:bob@example.com>\r\n") != NULL);
    CHECK(strstr(out, "Timestamp: 54\r\n") != NULL);

    /* a buffer too small fails cleanly, and sip_reply_size is enough */
    CHECK(sip_reply_build(&rs, 200, NULL, 0, NULL, 0, NULL, 0, out, 40) == -1);
    size_t need = sip_reply_size(&rs, 0, 8, 2);
    char *big = malloc(need);
    CHECK(sip_reply_build(&rs, 486, "Busy", 4, "X-A: 1\r\n", 8, "hi", 2, big, need) > 0);
    free(big);

    /* the To tag is stable for one request, differs with the CSeq number */
    char t1[SIP_REPLY_TAG_LEN + 1], t2[SIP_REPLY_TAG_LEN + 1], t3[SIP_REPLY_TAG_LEN + 1];
    sip_reply_tag(SIP_STR_LIT("c1"), SIP_STR_LIT("abc"), 7, t1);
    sip_reply_tag(SIP_STR_LIT("c1"), SIP_STR_LIT("abc"), 7, t2);
    sip_reply_tag(SIP_STR_LIT("c1"), SIP_STR_LIT("abc"), 8, t3);
    CHECK(strcmp(t1, t2) == 0);
    CHECK(strcmp(t1, t3) != 0);
    CHECK(strcmp(rs.tag, (sip_reply_tag(m->call_id, m->from.tag, m->cseq, t3), t3)) == 0);
    sip_msg_unref(m);

    /* without rport: received only when the sent-by host is not the source address */
    const char *plain =
        "OPTIONS sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.9:5099;branch=z9hG4bK2\r\n"
        "From: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.com>\r\nCall-ID: c2\r\nCSeq: 1 OPTIONS\r\n\r\n";
    m = parse(plain, &src);
    CHECK(m && sip_reply_src_from_msg(m, &rs) == 0);
    n = sip_reply_build(&rs, 200, NULL, 0, NULL, 0, NULL, 0, out, sizeof(out));
    out[n > 0 ? n : 0] = 0;
    CHECK(strstr(out, "Via: SIP/2.0/UDP 127.0.0.9:5099;branch=z9hG4bK2\r\n") != NULL);
    sip_msg_unref(m);

    /* salvage: a request the parser refused still yields what a 400 needs */
    const char *bad =
        "INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.15;;,;,,\r\n"
        "From: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.com>\r\nCall-ID: c3\r\nCSeq: 1 INVITE\r\n\r\n";
    CHECK(sip_reply_src_salvage(bad, strlen(bad), &rs) == 0);
    CHECK_STR(rs.via1.host, "192.0.2.15");
    CHECK_STR(rs.call_id, "c3");
    rs.src = (struct sockaddr *)&src;
    rs.srclen = sizeof(src);
    n = sip_reply_build(&rs, 400, "Bad Via", 7, NULL, 0, NULL, 0, out, sizeof(out));
    out[n > 0 ? n : 0] = 0;
    CHECK(strstr(out, "SIP/2.0 400 Bad Via\r\nVia: SIP/2.0/UDP 192.0.2.15;received=127.0.0.9\r\n") != NULL);
    /* no answer to an ACK, a response, or bytes with no Via */
    const char *ack = "ACK sip:b@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n\r\n";
    CHECK(sip_reply_src_salvage(ack, strlen(ack), &rs) == -1);
    const char *resp = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h\r\n\r\n";
    CHECK(sip_reply_src_salvage(resp, strlen(resp), &rs) == -1);
    const char *novia = "OPTIONS sip:b@example.com SIP/2.0\r\nCall-ID: x\r\n\r\n";
    CHECK(sip_reply_src_salvage(novia, strlen(novia), &rs) == -1);
    /* every prefix of the refused request: no over-read */
    for (size_t k = 0; k <= strlen(bad); k++) {
        struct guard_buf g = guard_alloc(bad, k);
        sip_reply_src_salvage(g.data, k, &rs);
        guard_free(&g);
    }
    CHECK(strcmp(sip_reason_phrase(483), "Too Many Hops") == 0);
    CHECK(strcmp(sip_reason_phrase(499), "Client Error") == 0);
    TEST_DONE();
}
