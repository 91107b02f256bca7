/* Unit tests for src/sip_grammar.c: RFC 3261 §25.1 URIs, name-addr, Via, params and comma
 * lists, with the RFC 4475 and RFC 5118 torture vectors (literal and from t/data/torture).
 * Every parser input is placed with guard_alloc so that an over-read faults. */
#include <stdint.h>

#include "sip_grammar.h"
#include "test.h"

/* The input under test lives in one guard buffer, replaced by the next place() call: the
 * slices of a parse stay valid until the next parse. */
static struct guard_buf cur;
static int cur_live;

static const char *place(const void *data, size_t len)
{
    if (cur_live)
        guard_free(&cur);
    cur = guard_alloc(data, len);
    cur_live = 1;
    return cur.data;
}

static int uri_n(const char *s, size_t n, struct sip_uri *u)
{
    return sip_uri_parse(place(s, n), n, u);
}

static int na_n(const char *s, size_t n, int star, struct sip_nameaddr *na)
{
    return sip_nameaddr_parse(place(s, n), n, star, na);
}

static int via_n(const char *s, size_t n, struct sip_via *v)
{
    return sip_via_parse(place(s, n), n, v);
}

/* Literals may hold NUL bytes, so lengths come from sizeof, never strlen. */
#define URI(lit, u) uri_n((lit), sizeof(lit) - 1, (u))
#define NA(lit, star, na) na_n((lit), sizeof(lit) - 1, (star), (na))
#define VIA(lit, v) via_n((lit), sizeof(lit) - 1, (v))
#define CHECK_ABSENT(slice) CHECK((slice).s == NULL && (slice).len == 0)

static struct sip_str S(const char *s, size_t n)
{
    return (struct sip_str){ s, (uint32_t)n };
}

static void test_helpers(void)
{
    uint64_t v = 0;
    const char *p;

    p = place("4294967295", 10);
    CHECK(sip_parse_uint(p, 10, 4294967295u, &v) == 0 && v == 4294967295u);
    p = place("4294967296", 10);
    CHECK(sip_parse_uint(p, 10, 4294967295u, &v) == -1);
    p = place("00068", 5);
    CHECK(sip_parse_uint(p, 5, 255, &v) == 0 && v == 68);
    p = place("9999999999", 10);
    CHECK(sip_parse_uint(p, 10, UINT64_MAX, &v) == 0 && v == 9999999999u);
    p = place("99999999999", 11);
    CHECK(sip_parse_uint(p, 11, UINT64_MAX, &v) == -1);
    p = place("256", 3);
    CHECK(sip_parse_uint(p, 3, 255, &v) == -1);
    p = place("12a", 3);
    CHECK(sip_parse_uint(p, 3, 1000, &v) == -1);
    p = place("-1", 2);
    CHECK(sip_parse_uint(p, 2, 1000, &v) == -1);
    p = place("0", 1);
    CHECK(sip_parse_uint(p, 0, 1000, &v) == -1);
    CHECK(sip_parse_uint(p, 1, 0, &v) == 0 && v == 0);

    p = place("!interesting-Method0123456789_*+`.%indeed'~", 43);
    CHECK(sip_is_token(p, 43));
    p = place("RE%47IST%45R", 12);
    CHECK(sip_is_token(p, 12));
    p = place("a,b", 3);
    CHECK(!sip_is_token(p, 3));
    CHECK(!sip_is_token(p, 0));
    p = place("a\0b", 3);
    CHECK(!sip_is_token(p, 3));

    p = place("BrAnCh", 6);
    CHECK(sip_str_casecmp(S(p, 6), "branch") == 0);
    CHECK(sip_str_casecmp(S(p, 6), "branc") != 0);
    CHECK(sip_str_casecmp(S(p, 5), "branch") != 0);
    CHECK(sip_str_casecmp(S(p, 6), "brancx") != 0);
    CHECK(sip_str_casecmp(S(NULL, 0), "") == 0);

    p = place(" \t\r\n a b\r\n ", 11);
    struct sip_str t = sip_str_trim(S(p, 11));
    CHECK_STR(t, "a b");
    p = place(" \t ", 3);
    t = sip_str_trim(S(p, 3));
    CHECK(t.len == 0);
    t = sip_str_trim(S(NULL, 0));
    CHECK_ABSENT(t);
}

static void test_uri_basic(void)
{
    struct sip_uri u;

    CHECK(URI("sip:alice:secret@atlanta.example.com:5061;transport=tcp;lr?Subject=hi&Priority=urgent", &u) == 0);
    CHECK(u.scheme == SIP_URI_SIP);
    CHECK_STR(u.scheme_str, "sip");
    CHECK_STR(u.user, "alice");
    CHECK_STR(u.password, "secret");
    CHECK_STR(u.host, "atlanta.example.com");
    CHECK(u.host_type == SIP_HOST_NAME);
    CHECK_STR(u.port_str, "5061");
    CHECK(u.port == 5061);
    CHECK_STR(u.params, "transport=tcp;lr");
    CHECK_STR(u.headers, "Subject=hi&Priority=urgent");

    CHECK(URI("SIPS:Example.COM", &u) == 0);
    CHECK(u.scheme == SIP_URI_SIPS);
    CHECK_STR(u.scheme_str, "SIPS");
    CHECK_ABSENT(u.user);
    CHECK_STR(u.host, "Example.COM");
    CHECK(u.port == 0);
    CHECK_ABSENT(u.port_str);
    CHECK_ABSENT(u.params);
    CHECK_ABSENT(u.headers);

    CHECK(URI("sip:192.0.2.1:0", &u) == 0 && u.host_type == SIP_HOST_IPV4 && u.port == 0);
    CHECK_STR(u.port_str, "0");
    CHECK(URI("sip:127.0.0.1:5080", &u) == 0);
    CHECK(u.host_type == SIP_HOST_IPV4 && u.port == 5080);
    CHECK(URI("sip:user@example.com.", &u) == 0);
    CHECK_STR(u.host, "example.com.");
    CHECK(URI("sip:user:@host", &u) == 0 && u.password.s != NULL && u.password.len == 0);
    CHECK(URI("sip:3com.example.com", &u) == 0 && u.host_type == SIP_HOST_NAME);

    /* ports */
    CHECK(URI("sip:host:65535", &u) == 0 && u.port == 65535);
    CHECK(URI("sip:host:65536", &u) == -1);
    CHECK(URI("sip:host:99999999999", &u) == -1);
    CHECK(URI("sip:host:", &u) == -1);
    CHECK(URI("sip:host:50x", &u) == -1);

    /* hosts */
    CHECK(URI("sip:999.1.1.1", &u) == -1);
    CHECK(URI("sip:1.2.3", &u) == -1);
    CHECK(URI("sip:1.2.3.4.5", &u) == -1);
    CHECK(URI("sip:a..b", &u) == -1);
    CHECK(URI("sip:.a", &u) == -1);
    CHECK(URI("sip:user@", &u) == -1);
    CHECK(URI("sip:", &u) == -1);
    CHECK(URI("sip:host_name", &u) == -1);

    /* userinfo */
    CHECK(URI("sip:@host", &u) == -1);
    CHECK(URI("sip:us%4Ger@host", &u) == -1);
    CHECK(URI("sip:user%4@host", &u) == -1);
    CHECK(URI("sip:user%@host", &u) == -1);
    CHECK(URI("sip:a:b:c@host", &u) == -1);
    CHECK(URI("sip:+1-212-555-1212:1234@gateway.com;user=phone", &u) == 0);
    CHECK_STR(u.user, "+1-212-555-1212");
    CHECK_STR(u.password, "1234");
    CHECK_STR(u.params, "user=phone");

    /* params and headers */
    CHECK(URI("sip:host;;lr", &u) == -1);
    CHECK(URI("sip:host;lr;", &u) == -1);
    CHECK(URI("sip:host;a=", &u) == -1);
    CHECK(URI("sip:host;a=%zz", &u) == -1);
    CHECK(URI("sip:host;maddr=[2001:db8::1];x=a/b:c$d&e", &u) == 0);
    CHECK_STR(u.params, "maddr=[2001:db8::1];x=a/b:c$d&e");
    CHECK(URI("sip:host?", &u) == -1);
    CHECK(URI("sip:host?a", &u) == -1);
    CHECK(URI("sip:host?a=&b=c", &u) == 0);
    CHECK_STR(u.headers, "a=&b=c");
    CHECK(URI("sip:host?a=b&", &u) == -1);

    /* no whitespace or delimiters anywhere inside a URI (RFC 4475 lwsruri, ltgtruri) */
    CHECK(URI("sip:user@example.com; lr", &u) == -1);
    CHECK(URI("sip:user@example.com;", &u) == -1);
    CHECK(URI("sip:us er@example.com", &u) == -1);
    CHECK(URI("sip:user@example.com ", &u) == -1);
    CHECK(URI(" sip:user@example.com", &u) == -1);
    CHECK(URI("sip:user@example.com\r\n", &u) == -1);
    CHECK(URI("sip:user@exa\tmple.com", &u) == -1);
    CHECK(URI("<sip:user@example.com>", &u) == -1);
    CHECK(URI("sip:user@example.com>", &u) == -1);
    CHECK(URI("sip:\"user\"@example.com", &u) == -1);
    CHECK(URI("sip:user@example.com\0", &u) == -1);
    CHECK(URI("", &u) == -1);
}

static void test_uri_rfc4475(void)
{
    struct sip_uri u;

    /* §3.1.1.2 intmeth: user holds ';' '?' '/' ','; the '@' decides there is a userinfo */
    CHECK(URI("sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com", &u) == 0);
    CHECK_STR(u.user, "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*");
    CHECK_STR(u.password, "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)");
    CHECK_STR(u.host, "example.com");
    CHECK_ABSENT(u.params);
    CHECK_ABSENT(u.headers);

    /* §3.1.1.9 semiuri */
    CHECK(URI("sip:user;par=u%40example.net@example.com", &u) == 0);
    CHECK_STR(u.user, "user;par=u%40example.net");
    CHECK_STR(u.host, "example.com");
    CHECK_ABSENT(u.params);

    /* §3.1.1.3 esc01 */
    CHECK(URI("sip:sips%3Auser%40example.com@example.net", &u) == 0);
    CHECK_STR(u.user, "sips%3Auser%40example.com");
    CHECK_STR(u.host, "example.net");
    CHECK(URI("sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31", &u) == 0);
    CHECK_STR(u.params, "%6C%72;n%61me=v%61lue%25%34%31");

    /* §3.1.1.4 escnull */
    CHECK(URI("sip:null-%00-null@example.com", &u) == 0);
    CHECK_STR(u.user, "null-%00-null");
    CHECK(URI("sip:%00%00@host5.example.com", &u) == 0);
    CHECK_STR(u.user, "%00%00");

    /* §3.1.2.11 escruri: escaped headers are grammatical; the message layer judges them */
    CHECK(URI("sip:user@example.com?Route=%3Csip:example.com%3E", &u) == 0);
    CHECK_STR(u.headers, "Route=%3Csip:example.com%3E");

    /* tel (RFC 3966) */
    CHECK(URI("tel:+1-201-555-0123;phone-context=example.com", &u) == 0);
    CHECK(u.scheme == SIP_URI_TEL);
    CHECK_STR(u.user, "+1-201-555-0123");
    CHECK_STR(u.params, "phone-context=example.com");
    CHECK_ABSENT(u.host);
    CHECK(URI("TEL:7042;phone-context=+1-201", &u) == 0 && u.scheme == SIP_URI_TEL);
    CHECK(URI("tel:", &u) == -1);
    CHECK(URI("tel:+", &u) == -1);
    CHECK(URI("tel:+1 201", &u) == -1);
    CHECK(URI("tel:+1201?x=y", &u) == -1);

    /* §3.3.2-3.3.4: unknown schemes are opaque */
    CHECK(URI("nobodyKnowsThisScheme:totallyopaquecontent", &u) == 0);
    CHECK(u.scheme == SIP_URI_OTHER);
    CHECK_STR(u.scheme_str, "nobodyKnowsThisScheme");
    CHECK_STR(u.opaque, "totallyopaquecontent");
    CHECK(URI("soap.beep://192.0.2.103:3002", &u) == 0);
    CHECK_STR(u.scheme_str, "soap.beep");
    CHECK_STR(u.opaque, "//192.0.2.103:3002");
    CHECK_ABSENT(u.host);
    CHECK(URI("isbn:2983792873", &u) == 0);
    CHECK_STR(u.opaque, "2983792873");
    CHECK(URI("http://www.example.com", &u) == 0);
    CHECK_STR(u.scheme_str, "http");
    CHECK(URI("name:John_Smith", &u) == 0);
    CHECK(URI("foo:", &u) == -1);
    CHECK(URI("foo:a b", &u) == -1);
    CHECK(URI("1foo:bar", &u) == -1);
    CHECK(URI("f_o:bar", &u) == -1);
    CHECK(URI("nocolon", &u) == -1);
}

static void test_uri_ipv6(void)
{
    struct sip_uri u;

    /* RFC 5118 §4.1, §4.4 */
    CHECK(URI("sip:[2001:db8::10]", &u) == 0);
    CHECK(u.host_type == SIP_HOST_IPV6);
    CHECK_STR(u.host, "[2001:db8::10]");
    CHECK(URI("sip:[2001:db8::10]:5070", &u) == 0);
    CHECK_STR(u.host, "[2001:db8::10]");
    CHECK(u.port == 5070);
    /* §4.3: one address, no port */
    CHECK(URI("sip:[2001:db8::10:5070]", &u) == 0);
    CHECK_STR(u.host, "[2001:db8::10:5070]");
    CHECK(u.port == 0 && u.port_str.s == NULL);
    /* §4.2: no brackets -> host "2001", bad port */
    CHECK(URI("sip:2001:db8::10", &u) == -1);
    /* §4.9 IPv4-mapped */
    CHECK(URI("sip:[::ffff:192.0.2.10]:19823", &u) == 0);
    CHECK_STR(u.host, "[::ffff:192.0.2.10]");
    CHECK(u.port == 19823);
    CHECK(URI("sip:ted@[::ffff:192.0.2.2]", &u) == 0 && u.host_type == SIP_HOST_IPV6);
    /* §4.10: both the correct and the buggy three-colon form */
    CHECK(URI("sip:user@[2001:db8::192.0.2.1]", &u) == 0);
    CHECK(URI("sip:user@[2001:db8:::192.0.2.1]", &u) == 0);
    CHECK_STR(u.host, "[2001:db8:::192.0.2.1]");
    CHECK(URI("sip:[::1]", &u) == 0);
    CHECK(URI("sip:[::]", &u) == 0);
    CHECK(URI("sip:[1:2:3:4:5:6:7:8]", &u) == 0);
    CHECK(URI("sip:[1:2:3:4:5:6:192.0.2.1]", &u) == 0);
    CHECK(URI("sip:[2001:db8::10", &u) == -1);
    CHECK(URI("sip:[2001:db8::g]", &u) == -1);
    CHECK(URI("sip:[2001:db8]", &u) == -1);
    CHECK(URI("sip:[]", &u) == -1);
    CHECK(URI("sip:[1::2::3]", &u) == -1);
    CHECK(URI("sip:[1::::2]", &u) == -1);
    CHECK(URI("sip:[1:::2]", &u) == -1);
    CHECK(URI("sip:[12345::1]", &u) == -1);
    CHECK(URI("sip:[1:2:3:4:5:6:7:8:9]", &u) == -1);
    CHECK(URI("sip:[:1::2]", &u) == -1);
    CHECK(URI("sip:[::1.2.3.256]", &u) == -1);
    CHECK(URI("sip:[::1.2.3.4:5]", &u) == -1);
    CHECK(URI("sip:[2001:db8::10]5070", &u) == -1);
}

static void test_params(void)
{
    struct sip_str n, v;
    const char *p, *end;

    static const char in[] = "lr;transport=tcp ;  maddr = [2001:db8::1];\r\n q=\"a;b\" ;%6Cx=v%61l";
    p = place(in, sizeof(in) - 1);
    end = p + sizeof(in) - 1;
    CHECK(sip_param_next(&p, end, &n, &v) == 1);
    CHECK_STR(n, "lr");
    CHECK_ABSENT(v);
    CHECK(sip_param_next(&p, end, &n, &v) == 1);
    CHECK_STR(n, "transport");
    CHECK_STR(v, "tcp");
    CHECK(sip_param_next(&p, end, &n, &v) == 1);
    CHECK_STR(n, "maddr");
    CHECK_STR(v, "[2001:db8::1]");
    CHECK(sip_param_next(&p, end, &n, &v) == 1);
    CHECK_STR(n, "q");
    CHECK_STR(v, "\"a;b\"");
    CHECK(sip_param_next(&p, end, &n, &v) == 1);
    CHECK_STR(n, "%6Cx");
    CHECK_STR(v, "v%61l");
    CHECK(sip_param_next(&p, end, &n, &v) == 0);
    CHECK(sip_param_next(&p, end, &n, &v) == 0);

    struct sip_str ps;
    p = place("Tag=abc;received=2001:db8::9:255;rport", 38);
    ps = S(p, 38);
    CHECK(sip_param_get(ps, "tag", &v) == 1);
    CHECK_STR(v, "abc");
    CHECK(sip_param_get(ps, "RECEIVED", &v) == 1);
    CHECK_STR(v, "2001:db8::9:255");
    CHECK(sip_param_get(ps, "rport", &v) == 1);
    CHECK_ABSENT(v);
    CHECK(sip_param_get(ps, "branch", &v) == 0);
    CHECK(sip_param_get(ps, "ta", &v) == 0);
    CHECK(sip_param_get(S(NULL, 0), "tag", &v) == 0);

    p = place("a;;b", 4);
    CHECK(sip_param_get(S(p, 4), "b", &v) == -1);
    p = place("a;", 2);
    CHECK(sip_param_get(S(p, 2), "z", &v) == -1);
    p = place("a; \t", 4);
    CHECK(sip_param_get(S(p, 4), "z", &v) == -1);
    p = place("a=", 2);
    CHECK(sip_param_get(S(p, 2), "z", &v) == -1);
    p = place("a=\"open", 7);
    CHECK(sip_param_get(S(p, 7), "z", &v) == -1);
    p = place("a=b,c", 5);
    CHECK(sip_param_get(S(p, 5), "z", &v) == -1);
    p = place(";a", 2);
    CHECK(sip_param_get(S(p, 2), "a", &v) == -1);
}

static void test_list(void)
{
    struct sip_str it;
    const char *p, *end;

    static const char in[] = " \"Doe, John\" <sip:a@b>;q=1 ,<sip:c@d;x=1,2>,\r\n sip:e@f ";
    p = place(in, sizeof(in) - 1);
    end = p + sizeof(in) - 1;
    CHECK(sip_list_next(&p, end, &it) == 1);
    CHECK_STR(it, "\"Doe, John\" <sip:a@b>;q=1");
    CHECK(sip_list_next(&p, end, &it) == 1);
    CHECK_STR(it, "<sip:c@d;x=1,2>");
    CHECK(sip_list_next(&p, end, &it) == 1);
    CHECK_STR(it, "sip:e@f");
    CHECK(sip_list_next(&p, end, &it) == 0);

    static const char bad01[] = "SIP/2.0/UDP 192.0.2.15;;,;,,";
    p = place(bad01, sizeof(bad01) - 1);
    end = p + sizeof(bad01) - 1;
    CHECK(sip_list_next(&p, end, &it) == 1);
    CHECK_STR(it, "SIP/2.0/UDP 192.0.2.15;;");
    CHECK(sip_list_next(&p, end, &it) == 1);
    CHECK_STR(it, ";");
    CHECK(sip_list_next(&p, end, &it) == -1);

    p = place("a,,b", 4);
    end = p + 4;
    CHECK(sip_list_next(&p, end, &it) == 1 && sip_list_next(&p, end, &it) == -1);
    p = place(",a", 2);
    CHECK(sip_list_next(&p, p + 2, &it) == -1);
    p = place("a, ", 3);
    end = p + 3;
    CHECK(sip_list_next(&p, end, &it) == 1 && sip_list_next(&p, end, &it) == -1);
    p = place("a , \t,b", 7);
    end = p + 7;
    CHECK(sip_list_next(&p, end, &it) == 1 && sip_list_next(&p, end, &it) == -1);
    p = place("\"a,b", 4);
    CHECK(sip_list_next(&p, p + 4, &it) == -1);
    p = place("<sip:a,b", 8);
    CHECK(sip_list_next(&p, p + 8, &it) == -1);
    p = place(" \r\n ", 4);
    CHECK(sip_list_next(&p, p + 4, &it) == 0);
    p = place("x", 1);
    CHECK(sip_list_next(&p, p, &it) == 0);
    p = place("\"a\\\"b,c\" <x>", 13);
    end = p + 13;
    CHECK(sip_list_next(&p, end, &it) == 1);
    CHECK(it.len == 13);
}

static void test_nameaddr(void)
{
    struct sip_nameaddr na;

    /* RFC 4475 §3.1.1.6 lwsdisp */
    CHECK(NA("caller<sip:caller@example.com>;tag=323", 0, &na) == 0);
    CHECK_STR(na.display, "caller");
    CHECK_STR(na.uri_str, "sip:caller@example.com");
    CHECK_STR(na.uri.user, "caller");
    CHECK_STR(na.params, "tag=323");
    CHECK_STR(na.tag, "323");

    /* §3.1.1.2 intmeth To: quoted-pairs escaping BEL, NUL and DEL */
    static const char to[] = "\"BEL:\\\x07 NUL:\\\0 DEL:\\\x7f\" <sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com>";
    CHECK(na_n(to, sizeof(to) - 1, 0, &na) == 0);
    CHECK(na.display.len == 22 && memcmp(na.display.s, "\"BEL:\\\x07 NUL:\\\0 DEL:\\\x7f\"", 22) == 0);
    CHECK_STR(na.uri.user, "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*");
    CHECK_STR(na.uri.host, "example.com");
    CHECK_ABSENT(na.tag);
    /* a raw NUL in a quoted string is not qdtext */
    static const char rawnul[] = "\"a\0b\" <sip:x@y>";
    CHECK(na_n(rawnul, sizeof(rawnul) - 1, 0, &na) == -1);

    /* intmeth From: token display name, UTF-8 quoted param value */
    CHECK(NA("token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%=\"\xd1\x80\xd0\xb0\xd0\xb1\xd0\xbe\xd1\x82\xd0\xb0\xd1\x8e\xd1\x89\xd0\xb8\xd0\xb9\";tag=_token~1'+`*%!-.", 0, &na) == 0);
    CHECK_STR(na.display, "token1~` token2'+_ token3*%!.-");
    CHECK_STR(na.uri.user, "mundane");
    CHECK_STR(na.tag, "_token~1'+`*%!-.");

    /* §3.1.1.1 wsinv: folding and LWS around ';' and '=' */
    CHECK(NA("\r\n sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n", 0, &na) == 0);
    CHECK_ABSENT(na.display);
    CHECK_STR(na.uri_str, "sip:vivekg@chair-dnrc.example.com");
    CHECK_STR(na.params, "tag    = 1918181833n");
    CHECK_STR(na.tag, "1918181833n");
    CHECK(NA("\"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8", 0, &na) == 0);
    CHECK_STR(na.display, "\"J Rosenberg \\\\\\\"\"");
    CHECK_STR(na.tag, "98asjd8");
    CHECK(NA("\r\n <sip:services.example.com;lr;unknownwith=value;unknown-no-value>", 0, &na) == 0);
    CHECK_STR(na.uri.params, "lr;unknownwith=value;unknown-no-value");
    CHECK_ABSENT(na.params);

    /* longreq: quoted display name directly followed by '<' */
    CHECK(NA("\"I have a user name\"<sip:user@example.com:6000;p=v>", 0, &na) == 0);
    CHECK(na.uri.port == 6000);
    CHECK(NA("A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe", 0, &na) == 0);
    CHECK_STR(na.display, "A. Bell");
    CHECK(NA("\"%Z%45\" <sip:resource@example.com>", 0, &na) == 0);
    CHECK(NA("\"\" <sip:a@b>", 0, &na) == 0);
    CHECK_STR(na.display, "\"\"");
    CHECK(NA("<sip:I%20have%20spaces@example.net>;tag=938", 0, &na) == 0);
    CHECK_STR(na.uri.user, "I%20have%20spaces");

    /* §3.3.12 cparam01: in a bare addr-spec everything after ';' is a header param */
    CHECK(NA("sip:+19725552222@gw1.example.net;unknownparam", 0, &na) == 0);
    CHECK_STR(na.uri_str, "sip:+19725552222@gw1.example.net");
    CHECK_ABSENT(na.uri.params);
    CHECK_STR(na.params, "unknownparam");
    /* §3.3.13 cparam02: inside <> it is a uri-param */
    CHECK(NA("<sip:+19725552222@gw1.example.net;unknownparam>", 0, &na) == 0);
    CHECK_STR(na.uri.params, "unknownparam");
    CHECK_ABSENT(na.params);
    /* §3.3.14 regescrt: escaped header legal inside <> */
    CHECK(NA("<sip:user@example.com?Route=%3Csip:sip.example.com%3E>", 0, &na) == 0);
    CHECK_STR(na.uri.headers, "Route=%3Csip:sip.example.com%3E");
    /* §3.3.4 unksm2 */
    CHECK(NA("isbn:2983792873", 0, &na) == 0 && na.uri.scheme == SIP_URI_OTHER);
    CHECK(NA("<http://www.example.com>;tag=3234233", 0, &na) == 0);
    CHECK_STR(na.tag, "3234233");
    CHECK(NA("<name:John_Smith>", 0, &na) == 0);
    CHECK(NA("tel:+1-201-555-0123;phone-context=example.com", 0, &na) == 0);
    CHECK_STR(na.params, "phone-context=example.com");
    CHECK(NA("\"Caller\" <sip:caller@[2001:db8::1]>", 0, &na) == 0);
    CHECK(na.uri.host_type == SIP_HOST_IPV6);
    CHECK(NA("sip:user@[2001:db8:::192.0.2.1]", 0, &na) == 0);
    CHECK(NA("sip:%75se%72@example.com", 0, &na) == 0);

    /* Contact "*" */
    CHECK(NA("*", 1, &na) == 0 && na.is_star);
    CHECK(NA("  * ", 1, &na) == 0 && na.is_star);
    CHECK(NA("*", 0, &na) == -1);
    CHECK(NA("*;expires=0", 1, &na) == -1);

    /* refused */
    CHECK(NA("\"Mr. J. User <sip:j.user@example.com>", 0, &na) == -1);            /* quotbal */
    CHECK(NA("Bell, Alexander <sip:a.g.bell@example.com>;tag=43", 0, &na) == -1); /* baddn */
    CHECK(NA("Watson, Thomas <sip:t.watson@example.org>", 0, &na) == -1);
    CHECK(NA("\"Watson, Thomas\" < sip:t.watson@example.org >", 0, &na) == -1);    /* badaspec */
    CHECK(NA("<sip:t.watson@example.org >", 0, &na) == -1);
    CHECK(NA("sip:user@example.com?Route=%3Csip:sip.example.com%3E", 0, &na) == -1); /* regbadct */
    CHECK(NA("sip:a@b,sip:c@d", 0, &na) == -1);
    CHECK(NA("\"Joe\" <sip:joe@example.org>;;;;", 0, &na) == -1);                /* badinv01 */
    CHECK(NA("<sip:user@host>;;,", 0, &na) == -1);
    CHECK(NA("<sip:user@host>;", 0, &na) == -1);
    CHECK(NA("<sip:user@host> ; \r\n ", 0, &na) == -1);
    CHECK(NA("<sip:user@host>;tag=1,", 0, &na) == -1);
    CHECK(NA("<sip:user@host>;tag", 0, &na) == -1);
    CHECK(NA("<sip:user@host>;tag=\"q\"", 0, &na) == -1);
    CHECK(NA("<sip:user@host>;tag=", 0, &na) == -1);
    CHECK(NA("<sip:user@host", 0, &na) == -1);
    CHECK(NA("<sip:user@host>x", 0, &na) == -1);
    CHECK(NA("<sip:user@host> <sip:a@b>", 0, &na) == -1);
    CHECK(NA("alan@jasomi.com", 0, &na) == -1);                                  /* test.dat */
    CHECK(NA("\"a\" b <sip:x@y>", 0, &na) == -1);
    CHECK(NA("Bob", 0, &na) == -1);
    CHECK(NA("<>", 0, &na) == -1);
    CHECK(NA("", 0, &na) == -1);
    CHECK(NA(" \r\n ", 0, &na) == -1);
    CHECK(NA("sip:a@b c", 0, &na) == -1);
    CHECK(NA("<sip:a@b>;p=\"x", 0, &na) == -1);
    CHECK(NA("<sip:a@b>;p=a/b", 0, &na) == -1);
}

static void test_via(void)
{
    struct sip_via v;

    CHECK(VIA("SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds", &v) == 0);
    CHECK_STR(v.proto_name, "SIP");
    CHECK_STR(v.proto_version, "2.0");
    CHECK_STR(v.transport, "UDP");
    CHECK_STR(v.host, "pc33.atlanta.com");
    CHECK(v.host_type == SIP_HOST_NAME);
    CHECK(v.port == 0);
    CHECK_STR(v.branch, "z9hG4bK776asdhds");
    CHECK_STR(v.params, "branch=z9hG4bK776asdhds");
    CHECK(!v.has_rport && !v.has_received);

    /* RFC 4475 §3.1.1.1 wsinv */
    CHECK(VIA("SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw", &v) == 0);
    CHECK_STR(v.proto_version, "2.0");
    CHECK_STR(v.transport, "UDP");
    CHECK_STR(v.host, "192.0.2.2");
    CHECK(v.host_type == SIP_HOST_IPV4);
    CHECK_STR(v.branch, "390skdjuw");
    CHECK(VIA("SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8", &v) == 0);
    CHECK_STR(v.transport, "TCP");
    CHECK_STR(v.host, "spindle.example.com");
    CHECK_STR(v.branch, "z9hG4bK9ikj8");
    CHECK(VIA(" SIP  /    2.0   / UDP  192.168.255.111   ; branch=\r\n z9hG4bK30239", &v) == 0);
    CHECK_STR(v.branch, "z9hG4bK30239");

    /* ports, LWS around ':' */
    CHECK(VIA("SIP/2.0/UDP c.example.com:5060;branch=z9hG4bKkdjuw", &v) == 0);
    CHECK(v.port == 5060);
    CHECK_STR(v.port_str, "5060");
    CHECK(VIA("SIP/2.0/TCP host : 5070", &v) == 0 && v.port == 5070);
    CHECK_ABSENT(v.params);
    CHECK(VIA("SIP/2.0/UDP host:65536;branch=z9hG4bK1", &v) == -1);
    CHECK(VIA("SIP/2.0/UDP host:;branch=z9hG4bK1", &v) == -1);

    /* RFC 5118 */
    CHECK(VIA("SIP/2.0/UDP [2001:db8::9:1]:6050;branch=z9hG4bKas3-111", &v) == 0);
    CHECK_STR(v.host, "[2001:db8::9:1]");
    CHECK(v.host_type == SIP_HOST_IPV6 && v.port == 6050);
    CHECK(VIA("SIP/2.0/UDP [2001:db8::9:1];received=2001:db8::9:255;branch=z9hG4bKas3", &v) == 0);
    CHECK(v.has_received);
    CHECK_STR(v.received, "2001:db8::9:255");
    CHECK_STR(v.branch, "z9hG4bKas3");
    CHECK(VIA("SIP/2.0/UDP [2001:db8::9:1];received=[2001:db8::9:255];branch=z9hG4bKas3", &v) == 0);
    CHECK_STR(v.received, "[2001:db8::9:255]");
    CHECK_STR(v.branch, "z9hG4bKas3");
    CHECK(VIA("SIP/2.0/UDP [::ffff:192.0.2.10]:19823;branch=z9hG4bKbh19", &v) == 0);
    CHECK(v.port == 19823);
    CHECK(VIA("SIP/2.0/TCP [2001:db8::9:255];branch=z9hG4bK451jj;received=192.0.2.200", &v) == 0);
    CHECK_STR(v.received, "192.0.2.200");

    /* rport (RFC 3581), maddr, ttl, generic params */
    CHECK(VIA("SIP/2.0/UDP h;rport;branch=z9hG4bK1", &v) == 0);
    CHECK(v.has_rport && v.rport.len == 0);
    CHECK(VIA("SIP/2.0/UDP h;branch=z9hG4bK1;rport=5061;received=10.0.0.1", &v) == 0);
    CHECK(v.has_rport);
    CHECK_STR(v.rport, "5061");
    CHECK(VIA("SIP/2.0/UDP h;rport=70000", &v) == -1);
    CHECK(VIA("SIP/2.0/UDP h;maddr=224.2.0.1;ttl=16;branch=z9hG4bK1;x-id=\"a b\";flag", &v) == 0);
    CHECK_STR(v.maddr, "224.2.0.1");
    CHECK_STR(v.params, "maddr=224.2.0.1;ttl=16;branch=z9hG4bK1;x-id=\"a b\";flag");
    CHECK(VIA("SIP/2.0/UDP h;ttl=256", &v) == -1);
    CHECK(VIA("SIP/2.0/UDP h;maddr=a..b", &v) == -1);
    CHECK(VIA("SIP/2.0/UDP h;received=example.com", &v) == -1);
    CHECK(VIA("SIP/2.0/UDP h;received=1.2.3", &v) == -1);
    CHECK(VIA("SIP/2.0/UDP h;received", &v) == -1);
    CHECK(VIA("SIP/2.0/UDP h;branch=", &v) == -1);
    CHECK(VIA("SIP/2.0/UDP h;branch", &v) == -1);
    CHECK(VIA("SIP/2.0/UDP iftgw.example.com", &v) == 0 && v.branch.s == NULL);

    /* transports and versions are tokens judged by the caller (transports, badvers) */
    CHECK(VIA("SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en", &v) == 0);
    CHECK_STR(v.transport, "UNKNOWN");
    CHECK(VIA("SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw", &v) == 0);
    CHECK_STR(v.proto_version, "7.0");
    CHECK(VIA("SIP/2.0/UDP 255.255.255.255;branch=z9hG4bK1saber23", &v) == 0);

    /* refused: stray separators (badinv01) and broken sent-protocol / sent-by */
    CHECK(VIA("SIP/2.0/UDP 192.0.2.15;;", &v) == -1);
    CHECK(VIA("SIP/2.0/UDP 192.0.2.15;", &v) == -1);
    CHECK(VIA("SIP/2.0/UDP 192.0.2.15 ; ", &v) == -1);
    CHECK(VIA(";", &v) == -1);
    CHECK(VIA("SIP/2.0/UDP 192.0.2.15;branch=z9hG4bK1,", &v) == -1);
    CHECK(VIA("SIP/2.0/UDPhost", &v) == -1);
    CHECK(VIA("SIP/2.0 host", &v) == -1);
    CHECK(VIA("SIP//UDP host", &v) == -1);
    CHECK(VIA("SIP/2.0/UDP", &v) == -1);
    CHECK(VIA("SIP/2.0/UDP ", &v) == -1);
    CHECK(VIA("SIP/2.0/UDP host extra", &v) == -1);
    CHECK(VIA("SIP/2.0/UDP 2001:db8::1", &v) == -1);
    CHECK(VIA("SIP/2.0/UDP [2001:db8::1", &v) == -1);
    CHECK(VIA("", &v) == -1);
}

/* Runs every parser on every prefix of valid inputs, each prefix in its own guard buffer:
 * ASan plus the PROT_NONE page turn any read past s+len into a crash. */
static void test_prefixes(void)
{
    static const char *const uris[] = {
        "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com",
        "sips:alice:pw@[2001:db8:::192.0.2.1]:5061;maddr=[::1];lr?a=b%20c&d=",
        "sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31",
        "tel:+1-201-555-0123;phone-context=example.com",
        "soap.beep://192.0.2.103:3002",
        "sip:192.0.2.1:5060",
    };
    static const char *const nas[] = {
        "\"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8",
        "token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%=\"\xd1\x80\xd0\xb0\";tag=_token~1'+`*%!-.",
        "sip:+19725552222@gw1.example.net;unknownparam ; x = \"y\"",
        "caller<sip:caller@[2001:db8::1]:5060>;tag=323;p=[::1]",
    };
    static const char *const vias[] = {
        "SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8",
        "SIP/2.0/UDP [2001:db8::9:1]:6050;received=2001:db8::9:255;rport=5060;branch=z9hG4bKas3",
        "SIP/2.0/UDP 10.0.0.1 : 5060;maddr=[::1];ttl=1;received=[::1];x=\"a\\\"b\";rport",
    };
    int ok = 1;
    for (size_t i = 0; i < sizeof(uris) / sizeof(uris[0]); i++) {
        size_t n = strlen(uris[i]);
        struct sip_uri u;
        for (size_t k = 0; k < n; k++)
            (void)uri_n(uris[i], k, &u);
        ok &= uri_n(uris[i], n, &u) == 0;
        const char *p = place(uris[i], n), *end = p + n;
        struct sip_str a, b;
        while (sip_param_next(&p, end, &a, &b) == 1)
            ;
    }
    CHECK(ok);
    ok = 1;
    for (size_t i = 0; i < sizeof(nas) / sizeof(nas[0]); i++) {
        size_t n = strlen(nas[i]);
        struct sip_nameaddr na;
        for (size_t k = 0; k < n; k++) {
            (void)na_n(nas[i], k, 1, &na);
            const char *p = place(nas[i], k), *end = p + k;
            struct sip_str it;
            while (sip_list_next(&p, end, &it) == 1)
                ;
        }
        ok &= na_n(nas[i], n, 0, &na) == 0;
    }
    CHECK(ok);
    ok = 1;
    for (size_t i = 0; i < sizeof(vias) / sizeof(vias[0]); i++) {
        size_t n = strlen(vias[i]);
        struct sip_via v;
        for (size_t k = 0; k < n; k++)
            (void)via_n(vias[i], k, &v);
        ok &= via_n(vias[i], n, &v) == 0;
    }
    CHECK(ok);
}

/* ---- RFC 4475 / RFC 5118 corpus from t/data/torture ---- */

static char *read_opt(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fclose(f);
    return test_read_file(path, len);
}

static char torture_dir[512];

static char *torture_file(const char *name, size_t *len)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", torture_dir, name);
    return read_opt(path, len);
}

/* Header fields of the message whose names match (full or compact form): the raw value,
 * folding included, as the message layer hands it over. */
struct tfield { const char *name; size_t nlen; const char *val; size_t vlen; };

static size_t torture_fields(const char *m, size_t len, struct tfield *out, size_t cap)
{
    const char *p = m, *end = m + len, *hdr_end = memmem(m, len, "\r\n\r\n", 4);
    size_t n = 0;
    if (hdr_end)
        end = hdr_end + 2;
    const char *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
    if (!eol)
        return 0;
    p = eol + 2; /* skip the start line */
    while (p < end && n < cap) {
        const char *line = p, *colon = NULL, *q = p;
        for (;;) { /* logical line: CRLF not followed by SP/HTAB ends it */
            const char *e = memmem(q, (size_t)(end - q), "\r\n", 2);
            if (!e) { q = end; break; }
            q = e + 2;
            if (q >= end || (*q != ' ' && *q != '\t')) { q = e; break; }
        }
        colon = memchr(line, ':', (size_t)(q - line));
        if (colon) {
            const char *ne = colon;
            while (ne > line && (ne[-1] == ' ' || ne[-1] == '\t'))
                ne--;
            out[n].name = line;
            out[n].nlen = (size_t)(ne - line);
            out[n].val = colon + 1;
            out[n].vlen = (size_t)(q - colon - 1);
            n++;
        }
        p = q + 2;
    }
    return n;
}

static int name_is(const struct tfield *f, const char *full, const char *compact)
{
    return sip_str_casecmp(S(f->name, f->nlen), full) == 0 ||
           sip_str_casecmp(S(f->name, f->nlen), compact) == 0;
}

/* Which (file, header) pairs must be refused; every other Via/From/To/Contact/Route in the
 * corpus must parse. */
static const struct { const char *file, *hdr; } torture_bad[] = {
    { "badinv01.dat", "Via" },  { "badinv01.dat", "Contact" }, { "quotbal.dat", "To" },
    { "badaspec.dat", "To" },   { "baddn.dat", "From" },       { "baddn.dat", "To" },
    { "regbadct.dat", "Contact" }, { "test.dat", "To" },       { "test.dat", "From" },
};
static const char *const ruri_bad[] = { "ipv6-bad.dat", "ltgtruri.dat", "lwsruri.dat" };

static int expect_bad(const char *file, const char *hdr)
{
    for (size_t i = 0; i < sizeof(torture_bad) / sizeof(torture_bad[0]); i++)
        if (!strcmp(torture_bad[i].file, file) && !strcmp(torture_bad[i].hdr, hdr))
            return 1;
    return 0;
}

/* Parses one header value the way the message layer does: split lists with sip_list_next,
 * then parse each element. Returns 0 when all parse, -1 when any is refused. Each value is
 * also run prefix by prefix through a guard buffer. */
static int torture_value(const char *val, size_t vlen, const char *hdr)
{
    int is_via = !strcmp(hdr, "Via"), is_list = is_via || !strcmp(hdr, "Contact") || !strcmp(hdr, "Route");
    for (size_t k = 0; k < vlen; k++) {
        struct sip_nameaddr na;
        struct sip_via v;
        if (is_via)
            (void)via_n(val, k, &v);
        else
            (void)na_n(val, k, 1, &na);
    }
    char *copy = malloc(vlen ? vlen : 1);
    memcpy(copy, val, vlen);
    struct guard_buf g = guard_alloc(copy, vlen);
    const char *p = g.data, *end = g.data + vlen;
    struct sip_str it = sip_str_trim(S(p, vlen));
    int rc = 0, r;
    if (!is_list) {
        struct sip_nameaddr na;
        rc = sip_nameaddr_parse(it.s, it.len, 0, &na);
    } else {
        while ((r = sip_list_next(&p, end, &it)) == 1) {
            struct sip_nameaddr na;
            struct sip_via v;
            struct guard_buf e = guard_alloc(it.s, it.len);
            if ((is_via ? sip_via_parse(e.data, it.len, &v) : sip_nameaddr_parse(e.data, it.len, 1, &na)) != 0)
                rc = -1;
            guard_free(&e);
        }
        if (r < 0)
            rc = -1;
    }
    guard_free(&g);
    free(copy);
    return rc;
}

static void test_torture(void)
{
    size_t mlen;
    char *man = NULL;
    const char *dirs[] = { "t/data/torture", NULL };
    char alt[512];
    /* also relative to this source file, for runs from another directory */
    const char *slash = strrchr(__FILE__, '/');
    snprintf(alt, sizeof(alt), "%.*s/../data/torture", slash ? (int)(slash - __FILE__) : 1,
             slash ? __FILE__ : ".");
    dirs[1] = alt;
    for (int i = 0; i < 2 && !man; i++) {
        snprintf(torture_dir, sizeof(torture_dir), "%s", dirs[i]);
        man = torture_file("MANIFEST.tsv", &mlen);
    }
    CHECK_MSG(man != NULL, "t/data/torture/MANIFEST.tsv not found (run from the repo root)");
    if (!man)
        return;

    int files = 0, ruri_ok = 1, hdr_ok = 1, bad_seen = 0;
    char *save = NULL;
    for (char *line = strtok_r(man, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char fname[128];
        const char *tab = strchr(line, '\t');
        if (!tab || (size_t)(tab - line) >= sizeof(fname) || !strstr(line, ".dat\t"))
            continue;
        memcpy(fname, line, (size_t)(tab - line));
        fname[tab - line] = 0;
        size_t len;
        char *m = torture_file(fname, &len);
        CHECK_MSG(m != NULL, "missing %s", fname);
        if (!m)
            continue;
        files++;

        /* the Request-URI: second SP-separated element of a request line (runs of SP are
         * lwsstart's problem, not the URI's) */
        if (strncmp(m, "SIP/", 4) != 0) {
            const char *sp = memchr(m, ' ', len);
            if (sp) {
                const char *u = sp + 1, *ue;
                while (u < m + len && *u == ' ')
                    u++;
                ue = u;
                while (ue < m + len && *ue != ' ' && *ue != '\r')
                    ue++;
                struct sip_uri uri;
                int want = 0;
                for (size_t i = 0; i < sizeof(ruri_bad) / sizeof(ruri_bad[0]); i++)
                    if (!strcmp(fname, ruri_bad[i]))
                        want = -1;
                int got = uri_n(u, (size_t)(ue - u), &uri);
                if (got != want) {
                    ruri_ok = 0;
                    fprintf(stderr, "  %s: R-URI '%.*s' got %d want %d\n", fname, (int)(ue - u), u, got, want);
                }
            }
        }

        struct tfield f[128];
        size_t nf = torture_fields(m, len, f, 128);
        for (size_t i = 0; i < nf; i++) {
            const char *hdr = name_is(&f[i], "Via", "v") ? "Via" :
                              name_is(&f[i], "From", "f") ? "From" :
                              name_is(&f[i], "To", "t") ? "To" :
                              name_is(&f[i], "Contact", "m") ? "Contact" :
                              name_is(&f[i], "Route", "Route") ? "Route" :
                              name_is(&f[i], "Record-Route", "Record-Route") ? "Route" : NULL;
            if (!hdr)
                continue;
            int want = expect_bad(fname, hdr) ? -1 : 0;
            int got = torture_value(f[i].val, f[i].vlen, hdr);
            if (want)
                bad_seen++;
            if (got != want) {
                hdr_ok = 0;
                fprintf(stderr, "  %s: %s '%.*s' got %d want %d\n", fname, hdr, (int)f[i].vlen,
                        f[i].val, got, want);
            }
        }
        free(m);
    }
    free(man);
    CHECK_MSG(files >= 60, "only %d torture files", files);
    CHECK(ruri_ok);
    CHECK(hdr_ok);
    CHECK_MSG(bad_seen == (int)(sizeof(torture_bad) / sizeof(torture_bad[0])),
              "saw %d of the refused headers", bad_seen);
}

int main(void)
{
    test_helpers();
    test_uri_basic();
    test_uri_rfc4475();
    test_uri_ipv6();
    test_params();
    test_list();
    test_nameaddr();
    test_via();
    test_prefixes();
    test_torture();
    if (cur_live)
        guard_free(&cur);
    TEST_DONE();
}
