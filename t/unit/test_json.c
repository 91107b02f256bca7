/* Unit tests of json_parse.c (and its round trip with json.c): RFC 8259 grammar accepted
 * and refused, escapes and surrogate pairs, UTF-8 validation, integer detection, the depth
 * and value caps; every input ends right before a guard page so an over-read faults. */
#include <stdint.h>

#include "json.h"
#include "test.h"

static struct json_val *parse_g(const char *s, size_t len, char *err, size_t errlen)
{
    struct guard_buf g = guard_alloc(s, len);
    struct json_val *v = json_parse(g.data, len, err, errlen);
    guard_free(&g);
    return v;
}

static struct json_val *parse(const char *s)
{
    char err[128];
    struct json_val *v = parse_g(s, strlen(s), err, sizeof(err));
    if (!v)
        fprintf(stderr, "  (parse of %s: %s)\n", s, err);
    return v;
}

static int refused(const char *s, size_t len, const char *want_err)
{
    char err[128] = "";
    struct json_val *v = parse_g(s, len, err, sizeof(err));
    if (v) {
        json_free(v);
        fprintf(stderr, "  accepted: %.*s\n", (int)len, s);
        return 0;
    }
    if (strncmp(err, "offset ", 7) != 0) {
        fprintf(stderr, "  error without an offset: %s\n", err);
        return 0;
    }
    if (want_err && !strstr(err, want_err)) {
        fprintf(stderr, "  error '%s' does not say '%s'\n", err, want_err);
        return 0;
    }
    return 1;
}
#define REFUSED(lit, why) CHECK_MSG(refused(lit, sizeof(lit) - 1, why), "%s", lit)

static void test_scalars(void)
{
    struct json_val *v;
    v = parse("null");
    CHECK(v && v->type == JSON_NULL);
    json_free(v);
    v = parse(" true ");
    CHECK(v && v->type == JSON_TRUE);
    json_free(v);
    v = parse("\t\r\nfalse\n");
    CHECK(v && v->type == JSON_FALSE);
    json_free(v);
    v = parse("\"hi\"");
    CHECK(v && v->type == JSON_STRING && v->slen == 2 && strcmp(v->s, "hi") == 0);
    json_free(v);
    v = parse("\"\"");
    CHECK(v && v->type == JSON_STRING && v->slen == 0 && v->s && v->s[0] == 0);
    json_free(v);
}

static void test_numbers(void)
{
    struct json_val *v;
    v = parse("0");
    CHECK(v && v->type == JSON_NUMBER && v->is_int && v->i == 0 && strcmp(v->s, "0") == 0);
    json_free(v);
    v = parse("-0");
    CHECK(v && v->is_int && v->i == 0);
    json_free(v);
    v = parse("42");
    CHECK(v && v->is_int && v->i == 42 && v->num == 42.0);
    json_free(v);
    v = parse("-17");
    CHECK(v && v->is_int && v->i == -17);
    json_free(v);
    v = parse("9223372036854775807");
    CHECK(v && v->is_int && v->i == INT64_MAX);
    json_free(v);
    v = parse("-9223372036854775808");
    CHECK(v && v->is_int && v->i == INT64_MIN);
    json_free(v);
    v = parse("9223372036854775808");
    CHECK(v && v->type == JSON_NUMBER && !v->is_int && v->num > 9.2e18);
    json_free(v);
    v = parse("-9223372036854775809");
    CHECK(v && !v->is_int);
    json_free(v);
    v = parse("123456789012345678901234567890");
    CHECK(v && !v->is_int && strcmp(v->s, "123456789012345678901234567890") == 0);
    json_free(v);
    v = parse("1.5");
    CHECK(v && !v->is_int && v->num == 1.5 && strcmp(v->s, "1.5") == 0);
    json_free(v);
    v = parse("1e3");
    CHECK(v && !v->is_int && v->num == 1000.0);
    json_free(v);
    v = parse("-2.5E-1");
    CHECK(v && !v->is_int && v->num == -0.25);
    json_free(v);
    v = parse("1E+2");
    CHECK(v && v->num == 100.0);
    json_free(v);
    REFUSED("01", "leading zero");
    REFUSED("-", "invalid number");
    REFUSED("+1", "unexpected");
    REFUSED("1.", "digit expected");
    REFUSED(".5", "unexpected");
    REFUSED("1e", "exponent");
    REFUSED("1e+", "exponent");
    REFUSED("0x10", "trailing");
    REFUSED("NaN", NULL);
    REFUSED("Infinity", NULL);
    REFUSED("-Infinity", NULL);
    REFUSED("1 2", "trailing");
}

static void test_strings(void)
{
    struct json_val *v;
    v = parse("\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\"");
    CHECK(v && v->slen == 12 && memcmp(v->s, "a\"b\\c/d\b\f\n\r\t", 12) == 0);
    json_free(v);
    v = parse("\"\\u0041\\u00e9\\u20AC\"");  /* A, e-acute (2 bytes), euro (3 bytes) */
    CHECK(v && v->slen == 6 && memcmp(v->s, "A\xc3\xa9\xe2\x82\xac", 6) == 0);
    json_free(v);
    v = parse("\"\\ud83d\\ude00\"");  /* U+1F600 from a surrogate pair */
    CHECK(v && v->slen == 4 && memcmp(v->s, "\xf0\x9f\x98\x80", 4) == 0);
    json_free(v);
    v = parse("\"x\\u0000y\"");  /* an embedded NUL is kept */
    CHECK(v && v->slen == 3 && memcmp(v->s, "x\0y", 3) == 0);
    json_free(v);
    v = parse("\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"");  /* raw UTF-8 passes through */
    CHECK(v && v->slen == 9);
    json_free(v);
    REFUSED("\"abc", "unterminated");
    REFUSED("\"abc\\\"", "unterminated");
    REFUSED("\"a\\x\"", "invalid escape");
    REFUSED("\"a\\u12\"", "\\u");
    REFUSED("\"a\\u12g4\"", "\\u");
    REFUSED("\"\\ud83d\"", "lone high");
    REFUSED("\"\\ud83dx\"", "lone high");
    REFUSED("\"\\ud83d\\u0041\"", "lone high");
    REFUSED("\"\\ude00\"", "lone low");
    REFUSED("\"a\nb\"", "control");
    REFUSED("\"a\tb\"", "control");
    REFUSED("\"\x01\"", "control");
    REFUSED("\"\xff\"", "UTF-8");
    REFUSED("\"\xc3\"", "UTF-8");              /* truncated sequence */
    REFUSED("\"\xc0\xaf\"", "UTF-8");          /* overlong '/' */
    REFUSED("\"\xe0\x80\xaf\"", "UTF-8");      /* overlong, 3 bytes */
    REFUSED("\"\xed\xa0\x80\"", "UTF-8");      /* encoded surrogate U+D800 */
    REFUSED("\"\xf4\x90\x80\x80\"", "UTF-8");  /* above U+10FFFF */
    REFUSED("\"\x80\"", "UTF-8");              /* lone continuation byte */
    REFUSED("'a'", "unexpected");
}

static void test_containers(void)
{
    struct json_val *v = parse(" { \"jsonrpc\" : \"2.0\", \"id\": 7, \"params\": [1, \"two\", true, null, {}, []] } ");
    CHECK(v && v->type == JSON_OBJECT && v->n == 3);
    if (v && v->n == 3) {
        CHECK(v->kids[0].klen == 7 && strcmp(v->kids[0].key, "jsonrpc") == 0);
        const struct json_val *id = json_get(v, "id");
        CHECK(id && id->type == JSON_NUMBER && id->is_int && id->i == 7);
        const struct json_val *p = json_get(v, "params");
        CHECK(p && p->type == JSON_ARRAY && p->n == 6);
        if (p && p->n == 6) {
            CHECK(p->kids[0].i == 1 && p->kids[0].key == NULL);
            CHECK(p->kids[1].type == JSON_STRING && strcmp(p->kids[1].s, "two") == 0);
            CHECK(p->kids[2].type == JSON_TRUE && p->kids[3].type == JSON_NULL);
            CHECK(p->kids[4].type == JSON_OBJECT && p->kids[4].n == 0);
            CHECK(p->kids[5].type == JSON_ARRAY && p->kids[5].n == 0);
        }
        CHECK(json_get(v, "missing") == NULL);
        CHECK(json_get(p, "id") == NULL);  /* not an object */
    }
    json_free(v);

    /* member names are unescaped; a repeated name answers the last */
    v = parse("{\"a\\u0062\":1,\"x\":1,\"x\":2}");
    CHECK(v && json_get(v, "ab") && json_get(v, "ab")->i == 1);
    CHECK(v && json_get(v, "x") && json_get(v, "x")->i == 2);
    json_free(v);

    REFUSED("", "value expected");
    REFUSED("   ", "value expected");
    REFUSED("[", "value expected");
    REFUSED("[1", "expected");
    REFUSED("[1,]", "unexpected");
    REFUSED("[,1]", "unexpected");
    REFUSED("[1 2]", "expected");
    REFUSED("{", "member name");
    REFUSED("{\"a\"}", "':'");
    REFUSED("{\"a\":}", "unexpected");
    REFUSED("{\"a\":1,}", "member name");
    REFUSED("{a:1}", "member name");
    REFUSED("{\"a\":1", "expected");
    REFUSED("{\"a\":1]", "expected");
    REFUSED("[1]]", "trailing");
    REFUSED("tru", "literal");
    REFUSED("nul", "literal");
    REFUSED("truex", "trailing");
    REFUSED("[1]\x00", "trailing");
    REFUSED("\xef\xbb\xbf[1]", "unexpected");  /* RFC 8259 §8.1: no BOM */

    /* the offset points at the fault */
    char err[128];
    struct json_val *bad = parse_g("[1, 2, x]", 9, err, sizeof(err));
    CHECK_MSG(!bad && strncmp(err, "offset 7:", 9) == 0, "%s", err);
    json_free(bad);
    /* a tiny error buffer is still NUL-terminated; no buffer at all is allowed */
    char small[8];
    bad = parse_g("[x]", 3, small, sizeof(small));
    CHECK(!bad && strlen(small) < sizeof(small));
    bad = parse_g("[x]", 3, NULL, 0);
    CHECK(!bad);
}

static void test_caps(void)
{
    char buf[256];
    /* JSON_MAX_DEPTH nested arrays parse; one more is refused */
    size_t n = 0;
    for (int i = 0; i < JSON_MAX_DEPTH; i++)
        buf[n++] = '[';
    for (int i = 0; i < JSON_MAX_DEPTH; i++)
        buf[n++] = ']';
    struct json_val *v = parse_g(buf, n, NULL, 0);
    CHECK(v != NULL);
    json_free(v);
    n = 0;
    for (int i = 0; i <= JSON_MAX_DEPTH; i++)
        buf[n++] = '[';
    for (int i = 0; i <= JSON_MAX_DEPTH; i++)
        buf[n++] = ']';
    CHECK(refused(buf, n, "nesting"));
    n = 0;
    for (int i = 0; i <= JSON_MAX_DEPTH; i++) {
        memcpy(buf + n, "{\"a\":", 5);
        n += 5;
    }
    buf[n++] = '1';
    for (int i = 0; i <= JSON_MAX_DEPTH; i++)
        buf[n++] = '}';
    CHECK(refused(buf, n, "nesting"));

    /* a deep document far past the cap is refused without recursing into it */
    size_t big = 1000000;
    char *deep = malloc(big);
    memset(deep, '[', big);
    CHECK(refused(deep, big, "nesting"));
    free(deep);

    /* JSON_MAX_ITEMS values (the array counts as one) parse; one more is refused */
    size_t cap = (size_t)JSON_MAX_ITEMS * 2 + 16;
    char *items = malloc(cap);
    n = 0;
    items[n++] = '[';
    for (int i = 0; i < JSON_MAX_ITEMS - 1; i++) {
        items[n++] = '0';
        items[n++] = ',';
    }
    items[n - 1] = ']';
    v = parse_g(items, n, NULL, 0);
    CHECK(v && v->n == (size_t)JSON_MAX_ITEMS - 1);
    json_free(v);
    items[n - 1] = ',';
    items[n++] = '0';
    items[n++] = ']';
    CHECK(refused(items, n, "values"));
    free(items);
}

/* what json.c writes, json_parse reads back to the same bytes */
static void test_round_trip(void)
{
    static const char *strs[] = {
        "", "plain", "quote\" backslash\\ slash/", "ctl \x01\x1f\x7f nl\n cr\r tab\t",
        "utf8 \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80",
    };
    for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++) {
        struct json_buf b = { 0 };
        json_rawz(&b, "{\"k\":");
        json_strz(&b, strs[i]);
        json_rawz(&b, ",\"n\":");
        json_int(&b, -1234567890123LL);
        json_rawz(&b, ",\"u\":");
        json_uint(&b, UINT64_MAX);
        json_rawz(&b, ",\"d\":");
        json_double(&b, 0.1);
        json_rawz(&b, "}");
        const char *s = json_cstr(&b);
        struct json_val *v = s ? parse(s) : NULL;
        CHECK_MSG(v != NULL, "round trip %zu: %s", i, s ? s : "(oom)");
        if (v) {
            const struct json_val *k = json_get(v, "k");
            CHECK(k && k->type == JSON_STRING && k->slen == strlen(strs[i]) && memcmp(k->s, strs[i], k->slen) == 0);
            const struct json_val *nn = json_get(v, "n");
            CHECK(nn && nn->is_int && nn->i == -1234567890123LL);
            const struct json_val *u = json_get(v, "u");
            CHECK(u && !u->is_int && strcmp(u->s, "18446744073709551615") == 0);
            const struct json_val *d = json_get(v, "d");
            CHECK(d && d->num == 0.1);
        }
        json_free(v);
        json_buf_free(&b);
    }
    /* a byte that is not UTF-8 is written as its code point, and reads back as that */
    struct json_buf b = { 0 };
    json_str(&b, "\xff", 1);
    struct json_val *v = parse(json_cstr(&b));
    CHECK(v && v->slen == 2 && memcmp(v->s, "\xc3\xbf", 2) == 0);
    json_free(v);
    json_buf_free(&b);
    /* the embedded NUL survives both ways */
    json_str(&b, "a\0b", 3);
    v = parse(json_cstr(&b));
    CHECK(v && v->slen == 3 && memcmp(v->s, "a\0b", 3) == 0);
    json_free(v);
    json_buf_free(&b);
}

/* every prefix of valid documents is parsed without reading past its end (guard page) */
static void test_truncations(void)
{
    static const char *docs[] = {
        "{\"jsonrpc\":\"2.0\",\"id\":\"a\\u00e9\",\"method\":\"evi:raise\",\"params\":[\"E\",{\"a\":-1.5e3,\"b\":[true,false,null]}]}",
        "\"\\ud83d\\ude00\\n\xf0\x9f\x98\x80\"",
    };
    for (size_t d = 0; d < sizeof(docs) / sizeof(docs[0]); d++) {
        size_t len = strlen(docs[d]);
        struct json_val *v = parse_g(docs[d], len, NULL, 0);
        CHECK(v != NULL);
        json_free(v);
        int all_refused = 1;
        for (size_t i = 0; i < len; i++) {
            char err[96];
            v = parse_g(docs[d], i, err, sizeof(err));
            if (v)  /* no strict prefix of these documents is itself a document */
                all_refused = 0;
            json_free(v);
        }
        CHECK_MSG(all_refused, "doc %zu: a prefix parsed", d);
    }
}

int main(void)
{
    test_scalars();
    test_numbers();
    test_strings();
    test_containers();
    test_caps();
    test_round_trip();
    test_truncations();
    TEST_DONE();
}
