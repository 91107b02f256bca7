/* Unit tests of the event bus (evi.c) with a scripted sink driver ("test:NAME"): payload
 * bytes (JSON-RPC notification, flatstore line), raise validation, queue limits and both
 * overflow policies, E_EVENT_DROPPED reports, PARALLEL / FAILOVER / ROUND-ROBIN with members
 * down and back up, fail-fast on DOWN, subscription expiry on the (virtual) timer clock,
 * script-load subscriptions, event_route ordering and the depth cap, and shutdown. */
#include <errno.h>
#include <ev.h>
#include <stdint.h>

#include "evi.h"
#include "evi_sink.h"
#include "log.h"
#include "stats.h"
#include "test.h"
#include "timer.h"

/* ----- the scripted driver ----- */

enum mode {
    M_ACCEPT = 0, /* take and deliver everything at once */
    M_FAIL,       /* take and fail everything (-ECONNREFUSED), going DOWN */
    M_HOLD,       /* take nothing */
};

struct tsink {
    struct evi_sink base;
    char name[32];
};

#define NT 8
static struct {
    char name[32];
    enum mode mode;
    int open, closed, flushes;
    char got[8192];   /* delivered payloads, each followed by '|' */
} T[NT];

static int tidx(const char *name)
{
    for (int i = 0; i < NT; i++)
        if (strcmp(T[i].name, name) == 0)
            return i;
    for (int i = 0; i < NT; i++)
        if (!T[i].name[0]) {
            snprintf(T[i].name, sizeof(T[i].name), "%s", name);
            return i;
        }
    abort();
}

static int t_open(struct evi_sink *s, int check_only, char *err, size_t errlen)
{
    if (!s->addr[0] || strchr(s->addr, ':')) {
        snprintf(err, errlen, "test: bad name");
        return -EINVAL;
    }
    if (!check_only) {
        struct tsink *t = (struct tsink *)s;
        snprintf(t->name, sizeof(t->name), "%s", s->addr);
        T[tidx(t->name)].open++;
    }
    return 0;
}

static void t_flush(struct evi_sink *s)
{
    struct tsink *t = (struct tsink *)s;
    int i = tidx(t->name);
    T[i].flushes++;
    if (T[i].mode == M_HOLD)
        return;
    struct evi_job *j;
    while ((j = evi_sink_take(s)) != NULL) {
        if (T[i].mode == M_FAIL) {
            evi_sink_set_state(s, EVI_SINK_DOWN, "scripted failure");
            evi_job_done(j, -ECONNREFUSED);
            continue;
        }
        size_t len;
        const char *p = s->ops->flat ? evi_job_flat(j, &len) : evi_job_json(j, &len);
        size_t o = strlen(T[i].got);
        if (o + len + 2 < sizeof(T[i].got)) {
            memcpy(T[i].got + o, p, len);
            T[i].got[o + len] = '|';
            T[i].got[o + len + 1] = 0;
        }
        evi_sink_set_state(s, EVI_SINK_UP, NULL);
        evi_job_done(j, 0);
    }
}

static void t_close(struct evi_sink *s)
{
    struct tsink *t = (struct tsink *)s;
    T[tidx(t->name)].closed++;
}

static void t_reopen(struct evi_sink *s)
{
    evi_sink_kick(s);
}

static const struct evi_sink_ops test_ops = { "test", sizeof(struct tsink), t_open, t_flush, t_close, t_reopen, 0 };
static const struct evi_sink_ops flat_ops = { "tflat", sizeof(struct tsink), t_open, t_flush, t_close, t_reopen, 1 };
static const struct evi_sink_ops *cur_ops = &test_ops;

static struct ev_loop *loop;

static void reset(void)
{
    memset(T, 0, sizeof(T));
}

/* One loop iteration: handlers, then flushes. */
static void spin(void)
{
    ev_run(loop, EVRUN_NOWAIT);
}

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

static int sub(const char *ev, const char *sock, double expire)
{
    char err[512];
    int rc = evi_subscribe(ev, strlen(ev), sock, strlen(sock), expire, EVI_SRC_CTL, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "  subscribe %s %s: %s\n", ev, sock, err);
    return rc;
}

static int unsub(const char *ev, const char *sock)
{
    return evi_unsubscribe(ev, strlen(ev), sock, strlen(sock));
}

static int raise1(const char *ev, int64_t id)
{
    struct evi_param p[] = { EVI_INT("id", id) };
    return evi_raise(ev, strlen(ev), p, 1, 0);
}

static void setup(const struct evi_config *cfg)
{
    reset();
    evi_set_test_driver(cur_ops);
    evi_init(loop, cfg);
}

static const struct evi_config small = { 4, 0, 1, 1, 1, 0 };
#define LINGER_TEST_MS 200

/* ----- payloads ----- */

static void test_payloads(void)
{
    setup(NULL);
    CHECK(sub("E_MY_EVENT", "test:a", 0) == 0);
    struct evi_param named[] = {
        EVI_STR("caller", "alice"), EVI_INT("code", 200), EVI_BOOL("ok", 1),
        { "none", 4, EVI_T_NIL, NULL, 0, 0 }, EVI_STR("q", "a\"b\\c\nd\x01"),
    };
    CHECK(evi_raise("E_MY_EVENT", 10, named, 5, 0) == 1);
    struct evi_param pos[] = { { NULL, 0, EVI_T_STR, "x", 1, 0 }, { NULL, 0, EVI_T_INT, NULL, 0, -5 } };
    CHECK(evi_raise("E_MY_EVENT", 10, pos, 2, 0) == 1);
    CHECK(evi_raise("E_MY_EVENT", 10, NULL, 0, 0) == 1);
    struct evi_param bad8[] = { EVI_STR("v", "caf\xe9 \xc3\xa9") };
    CHECK(evi_raise("E_MY_EVENT", 10, bad8, 1, 0) == 1);
    spin();
    int a = tidx("a");
    const char *want =
        "{\"jsonrpc\":\"2.0\",\"method\":\"E_MY_EVENT\",\"params\":{\"caller\":\"alice\",\"code\":200,"
        "\"ok\":true,\"none\":null,\"q\":\"a\\\"b\\\\c\\nd\\u0001\"}}|"
        "{\"jsonrpc\":\"2.0\",\"method\":\"E_MY_EVENT\",\"params\":[\"x\",-5]}|"
        "{\"jsonrpc\":\"2.0\",\"method\":\"E_MY_EVENT\"}|"
        "{\"jsonrpc\":\"2.0\",\"method\":\"E_MY_EVENT\",\"params\":{\"v\":\"caf\xc3\xa9 \xc3\xa9\"}}|";
    CHECK_MSG(strcmp(T[a].got, want) == 0, "got %s", T[a].got);
    CHECK(stats.events_delivered >= 4);

    /* flatstore lines: delimiter, newline, CR and backslash escaped */
    cur_ops = &flat_ops;
    evi_set_test_driver(cur_ops);
    CHECK(sub("E_FLAT", "tflat:f", 0) == 0);
    struct evi_param fp[] = { EVI_STR("a", "x,y"), EVI_STR("b", "l1\nl2\r"), EVI_STR("c", "back\\slash"),
                              EVI_INT("d", 7), EVI_BOOL("e", 0), { "f", 1, EVI_T_NIL, NULL, 0, 0 } };
    CHECK(evi_raise("E_FLAT", 6, fp, 6, 0) == 1);
    spin();
    int f = tidx("f");
    CHECK_MSG(strcmp(T[f].got, "E_FLAT,x\\,y,l1\\nl2\\r,back\\\\slash,7,false,\n|") == 0, "got %s", T[f].got);
    cur_ops = &test_ops;
    evi_shutdown(0);
}

static void test_raise_validation(void)
{
    setup(NULL);
    CHECK(evi_raise("", 0, NULL, 0, 0) == -EINVAL);
    CHECK(evi_raise("E X", 3, NULL, 0, 0) == -EINVAL);
    char longname[80];
    memset(longname, 'E', sizeof(longname));
    CHECK(evi_raise(longname, 65, NULL, 0, 0) == -EINVAL);
    CHECK(evi_raise(longname, 64, NULL, 0, 0) == 0);
    struct evi_param mixed[] = { EVI_INT("a", 1), { NULL, 0, EVI_T_INT, NULL, 0, 2 } };
    CHECK(evi_raise("E_X", 3, mixed, 2, 0) == -EINVAL);
    struct evi_param badtype[] = { { "a", 1, 9, NULL, 0, 0 } };
    CHECK(evi_raise("E_X", 3, badtype, 1, 0) == -EINVAL);
    struct evi_param many[EVI_PARAMS_MAX + 1];
    for (int i = 0; i <= EVI_PARAMS_MAX; i++)
        many[i] = (struct evi_param)EVI_INT("n", i);
    CHECK(evi_raise("E_X", 3, many, EVI_PARAMS_MAX + 1, 0) == -EINVAL);
    CHECK(sub("E_BIG", "test:big", 0) == 0);
    static char huge[EVI_PAYLOAD_MAX];
    memset(huge, 'x', sizeof(huge));
    struct evi_param hp[] = { EVI_STRN("h", huge, sizeof(huge)) };
    CHECK(evi_raise("E_BIG", 5, hp, 1, 0) == -E2BIG);
    /* a raise with no subscriber is fine, and publishes the name */
    CHECK(evi_find("E_NEW_ONE", 9) == -ENOENT);
    CHECK(evi_raise("E_NEW_ONE", 9, NULL, 0, 0) == 0);
    CHECK(evi_find("E_NEW_ONE", 9) >= 0);
    CHECK(evi_find("E_CORE_STARTED", 14) >= 0);
    CHECK(evi_find("tm:local-request", 16) >= 0);
    evi_shutdown(0);
}

static void test_sockets(void)
{
    setup(NULL);
    char err[512];
    CHECK(evi_socket_check("bogus:1", 7, err, sizeof(err)) == -EINVAL && strstr(err, "unknown event socket"));
    CHECK(evi_socket_check("virtual:SOMETIMES test:a", 24, err, sizeof(err)) == -EINVAL && strstr(err, "PARALLEL"));
    CHECK(evi_socket_check("virtual:FAILOVER", 16, err, sizeof(err)) == -EINVAL && strstr(err, "at least one"));
    CHECK(evi_socket_check("virtual:FAILOVER virtual:PARALLEL test:a", 40, err, sizeof(err)) == -EINVAL);
    CHECK(evi_socket_check("test:a:b", 8, err, sizeof(err)) == -EINVAL && strstr(err, "bad name"));
    CHECK(evi_socket_check("  virtual:FAILOVER   test:a  test:b ", 36, err, sizeof(err)) == 0);
    CHECK(sub("E_S", "virtual:FAILOVER test:a test:a", 0) == -EINVAL);
    CHECK(T[tidx("a")].open == 1 && T[tidx("a")].closed == 1); /* opened, then let go */
    CHECK(evi_subscribe("E S", 3, "test:a", 6, 0, EVI_SRC_CTL, err, sizeof(err)) == -EINVAL);
    CHECK(evi_subscribe("E_S", 3, "test:a", 6, -1, EVI_SRC_CTL, err, sizeof(err)) == -EINVAL);
    /* the text is normalised: extra blanks do not make another subscription */
    CHECK(sub("E_S", "virtual:FAILOVER  test:a\ttest:b", 0) == 0);
    CHECK(sub("E_S", " virtual:FAILOVER test:a test:b ", 0) == 0);
    int id = evi_find("E_S", 3);
    struct evi_sub_info si;
    CHECK(evi_sub_info(id, 0, &si) == 0 && strcmp(si.socket, "virtual:FAILOVER test:a test:b") == 0);
    CHECK(evi_sub_info(id, 1, &si) == -ENOENT);
    /* one sink per socket text, shared */
    CHECK(sub("E_T", "test:a", 0) == 0);
    CHECK(T[tidx("a")].open == 2);
    CHECK(evi_sink_count() == 2);
    CHECK(unsub("E_S", "virtual:FAILOVER test:a test:b") == 0);
    CHECK(T[tidx("b")].closed == 1 && T[tidx("a")].closed == 1); /* a still used by E_T */
    CHECK(unsub("E_S", "test:a") == -ENOENT);
    CHECK(unsub("E_T", "test:a") == 0);
    CHECK(T[tidx("a")].closed == 2);
    CHECK(evi_sink_count() == 0);
    evi_shutdown(0);
}

static void test_mask(void)
{
    char out[256];
    evi_socket_mask("rabbitmq:user:secret@127.0.0.1:5672/key", out, sizeof(out));
    CHECK_MSG(strcmp(out, "rabbitmq:user:***@127.0.0.1:5672/key") == 0, "got %s", out);
    evi_socket_mask("virtual:FAILOVER rabbitmq:u:p@h/k flatstore:/x@y:z rabbitmq:guest@h/k rabbitmq:h/a:b@c", out,
                    sizeof(out));
    CHECK_MSG(strcmp(out, "virtual:FAILOVER rabbitmq:u:***@h/k flatstore:/x@y:z rabbitmq:guest@h/k rabbitmq:h/a:b@c") == 0,
              "got %s", out);
    evi_socket_mask("rabbitmq:u:p@ss@h/k@x", out, sizeof(out));
    CHECK_MSG(strcmp(out, "rabbitmq:u:***@h/k@x") == 0, "got %s", out);
    evi_socket_mask("'rabbitmq:u:pw@h/k': bad", out, sizeof(out));
    CHECK_MSG(strcmp(out, "'rabbitmq:u:***@h/k': bad") == 0, "got %s", out);
    evi_socket_mask("rabbitmq:u:secret@h/k", out, 12);
    CHECK(strlen(out) == 11 && !strstr(out, "secret"));
    char err[512];
    setup(NULL);
    CHECK(evi_subscribe("E_M", 3, "rabbitmq:u:secret@h", 19, 0, EVI_SRC_CTL, err, sizeof(err)) != 0);
    CHECK_MSG(!strstr(err, "secret"), "err %s", err);
    evi_shutdown(0);
}

/* ----- queues ----- */

static void test_overflow(void)
{
    setup(&small);
    T[tidx("slow")].mode = M_HOLD;
    CHECK(sub("E_Q", "test:slow", 0) == 0);
    CHECK(sub("E_EVENT_DROPPED", "test:watch", 0) == 0);
    uint64_t dropped0 = stats.events_dropped;
    for (int i = 1; i <= 10; i++)
        raise1("E_Q", i);
    spin();
    struct evi_sink_info si;
    int found = 0;
    for (size_t k = 0; k < evi_sink_count(); k++)
        if (evi_sink_info(k, &si) == 0 && strcmp(si.socket, "test:slow") == 0) {
            found = 1;
            CHECK(si.queued == 4 && si.dropped == 6);
        }
    CHECK(found);
    CHECK(stats.events_dropped - dropped0 == 6);
    /* drop_oldest: 7..10 wait */
    T[tidx("slow")].mode = M_ACCEPT;
    raise1("E_Q", 11); /* drops 7 */
    spin();
    int s = tidx("slow");
    CHECK_MSG(count(T[s].got, "\"id\":") == 4 && strstr(T[s].got, "\"id\":8}") && strstr(T[s].got, "\"id\":11}") &&
              !strstr(T[s].got, "\"id\":7}"), "got %s", T[s].got);
    /* the drops are reported once, a second later, with their count */
    CHECK(!T[tidx("watch")].got[0]);
    timer_advance(1000);
    spin();
    CHECK_MSG(strstr(T[tidx("watch")].got, "{\"jsonrpc\":\"2.0\",\"method\":\"E_EVENT_DROPPED\",\"params\":{\"event\":\"E_Q\","
                     "\"socket\":\"test:slow\",\"count\":7}}") != NULL, "got %s", T[tidx("watch")].got);
    evi_shutdown(0);

    /* drop_newest keeps the first ones */
    struct evi_config dn = small;
    dn.drop_newest = 1;
    setup(&dn);
    T[tidx("slow")].mode = M_HOLD;
    CHECK(sub("E_Q", "test:slow", 0) == 0);
    for (int i = 1; i <= 6; i++)
        raise1("E_Q", i);
    T[tidx("slow")].mode = M_ACCEPT;
    CHECK(evi_reopen("slow") == 1); /* the test driver's reopen kicks a flush */
    spin();
    s = tidx("slow");
    CHECK_MSG(strstr(T[s].got, "\"id\":1}") && strstr(T[s].got, "\"id\":4}") && !strstr(T[s].got, "\"id\":5}"),
              "got %s", T[s].got);
    evi_shutdown(0);
}

/* ----- policies ----- */

static void test_parallel(void)
{
    setup(NULL);
    T[tidx("dead")].mode = M_FAIL;
    CHECK(sub("E_P", "virtual:PARALLEL test:a test:dead test:b", 0) == 0);
    for (int i = 1; i <= 3; i++)
        raise1("E_P", i);
    spin();
    CHECK(count(T[tidx("a")].got, "E_P") == 3 && count(T[tidx("b")].got, "E_P") == 3);
    struct evi_sub_info si;
    CHECK(evi_sub_info(evi_find("E_P", 3), 0, &si) == 0 && si.delivered == 6 && si.dropped == 3);
    evi_shutdown(0);
}

static void test_failover(void)
{
    timer_use_virtual_clock(1000);
    setup(NULL);
    T[tidx("one")].mode = M_FAIL;
    CHECK(sub("E_F", "virtual:FAILOVER test:one test:two test:three", 0) == 0);
    raise1("E_F", 1);
    spin();
    CHECK(strstr(T[tidx("two")].got, "\"id\":1}") && !T[tidx("three")].got[0]);
    int fl = T[tidx("one")].flushes;
    /* one is held down: the next ones go straight to two */
    raise1("E_F", 2);
    raise1("E_F", 3);
    spin();
    CHECK(T[tidx("one")].flushes == fl);
    CHECK(count(T[tidx("two")].got, "E_F") == 3);
    /* two fails too: three takes over */
    T[tidx("two")].mode = M_FAIL;
    raise1("E_F", 4);
    spin();
    CHECK(strstr(T[tidx("three")].got, "\"id\":4}") != NULL);
    /* one comes back (reports UP): it is used again at once, without waiting 30 s */
    T[tidx("one")].mode = M_ACCEPT;
    /* find one's sink: a direct subscription shares it, and delivering makes it UP */
    CHECK(sub("E_ONE", "test:one", 0) == 0);
    raise1("E_ONE", 0);
    spin();
    raise1("E_F", 5);
    spin();
    CHECK_MSG(strstr(T[tidx("one")].got, "\"id\":5}") != NULL, "one got %s", T[tidx("one")].got);
    /* two is still held; after 30 s it would be tried again */
    T[tidx("one")].mode = M_FAIL;
    T[tidx("two")].mode = M_ACCEPT;
    raise1("E_F", 6);
    spin();
    CHECK(strstr(T[tidx("three")].got, "\"id\":6}") != NULL); /* one failed, two held: three */
    timer_advance(30001);
    raise1("E_F", 7);
    spin();
    CHECK(strstr(T[tidx("two")].got, "\"id\":7}") != NULL);
    /* every member failing: dropped, counted */
    T[tidx("two")].mode = M_FAIL;
    T[tidx("three")].mode = M_FAIL;
    uint64_t d0 = stats.events_dropped;
    raise1("E_F", 8);
    spin();
    CHECK(stats.events_dropped == d0 + 1);
    evi_shutdown(0);
}

static void test_failover_fail_fast(void)
{
    /* a member that holds jobs (say, reconnecting) while DOWN: queued fail-fast jobs move on */
    setup(NULL);
    T[tidx("slow")].mode = M_HOLD;
    CHECK(sub("E_FF", "virtual:FAILOVER test:slow test:b", 0) == 0);
    raise1("E_FF", 1);
    raise1("E_FF", 2);
    spin();
    CHECK(!T[tidx("b")].got[0]);
    /* take the slow sink down */
    T[tidx("slow")].mode = M_FAIL; /* its next flush takes nothing: it is DOWN via a failing job */
    CHECK(sub("E_DIRECT", "test:slow", 0) == 0);
    raise1("E_DIRECT", 0); /* the slow sink flushes, fails the first job, goes DOWN */
    spin();
    spin();
    CHECK_MSG(count(T[tidx("b")].got, "E_FF") == 2, "b got %s", T[tidx("b")].got);
    evi_shutdown(0);
}

static void test_round_robin(void)
{
    timer_use_virtual_clock(1000);
    setup(NULL);
    CHECK(sub("E_R", "virtual:ROUND-ROBIN test:a test:b test:c", 0) == 0);
    for (int i = 1; i <= 6; i++)
        raise1("E_R", i);
    spin();
    CHECK(count(T[tidx("a")].got, "E_R") == 2 && count(T[tidx("b")].got, "E_R") == 2 &&
          count(T[tidx("c")].got, "E_R") == 2);
    CHECK(strstr(T[tidx("a")].got, "\"id\":1}") && strstr(T[tidx("b")].got, "\"id\":2}") &&
          strstr(T[tidx("c")].got, "\"id\":3}") && strstr(T[tidx("a")].got, "\"id\":4}"));
    /* b down: every event still delivered, over a and c */
    T[tidx("b")].mode = M_FAIL;
    uint64_t d0 = stats.events_dropped;
    for (int i = 7; i <= 12; i++) {
        raise1("E_R", i);
        spin();
    }
    CHECK(stats.events_dropped == d0);
    CHECK(count(T[tidx("a")].got, "E_R") + count(T[tidx("c")].got, "E_R") == 10);
    CHECK(count(T[tidx("b")].got, "E_R") == 2);
    evi_shutdown(0);
}

/* ----- subscriptions ----- */

static void test_expiry(void)
{
    timer_use_virtual_clock(5000);
    setup(NULL);
    CHECK(sub("E_X", "test:a", 2) == 0);
    int id = evi_find("E_X", 3);
    struct evi_sub_info si;
    CHECK(evi_sub_info(id, 0, &si) == 0 && si.expire == 2 && si.expires_in > 1.9 && si.expires_in <= 2);
    timer_advance(1500);
    CHECK(sub("E_X", "test:a", 2) == 0); /* refresh */
    timer_advance(1500);
    CHECK(evi_sub_info(id, 0, &si) == 0);
    uint64_t e0 = stats.events_expired;
    timer_advance(600);
    CHECK(evi_sub_info(id, 0, &si) == -ENOENT); /* removed by its timer, no raise needed */
    CHECK(stats.events_expired == e0 + 1);
    CHECK(T[tidx("a")].closed == 1);
    CHECK(raise1("E_X", 1) == 0);
    evi_shutdown(0);
}

static void test_unsubscribe_keeps_queued(void)
{
    timer_use_virtual_clock(1000);
    setup(NULL);
    /* raised, then unsubscribed before the loop ran: still delivered */
    CHECK(sub("E_U", "test:u", 0) == 0);
    CHECK(raise1("E_U", 1) == 1);
    CHECK(unsub("E_U", "test:u") == 0);
    CHECK(T[tidx("u")].closed == 0);
    spin();
    CHECK_MSG(strstr(T[tidx("u")].got, "\"id\":1}") != NULL, "got %s", T[tidx("u")].got);
    timer_advance(LINGER_TEST_MS);
    CHECK(T[tidx("u")].closed == 1);
    /* a sink that cannot deliver is closed after its linger time, the events counted */
    T[tidx("h")].mode = M_HOLD;
    CHECK(sub("E_U", "test:h", 0) == 0);
    raise1("E_U", 2);
    spin();
    uint64_t d0 = stats.events_dropped;
    CHECK(unsub("E_U", "test:h") == 0);
    timer_advance(500);
    CHECK(T[tidx("h")].closed == 0);
    timer_advance(11000);
    CHECK(T[tidx("h")].closed == 1);
    CHECK(stats.events_dropped == d0 + 1);
    /* subscribing again while it lingers keeps the same sink */
    T[tidx("g")].mode = M_HOLD;
    CHECK(sub("E_U", "test:g", 0) == 0);
    raise1("E_U", 3);
    CHECK(unsub("E_U", "test:g") == 0);
    CHECK(sub("E_U", "test:g", 0) == 0);
    timer_advance(11000);
    CHECK(T[tidx("g")].closed == 0 && T[tidx("g")].open == 1);
    evi_shutdown(0);
    CHECK(T[tidx("g")].closed == 1);
}

static void test_backoff_and_config(void)
{
    struct evi_config c = { 0, 0, 0, -1, 0.1, -3 }; /* every value out of range */
    setup(&c);
    const struct evi_config *k = evi_sink_config();
    CHECK(k->queue_limit == 1 && k->connect_timeout == 2.0 && k->send_timeout == 5.0 &&
          k->retry_max == EVI_BACKOFF_MIN && k->heartbeat == 0);
    evi_shutdown(0);
    struct evi_config r = { 10, 0, 1, 1, 3, 0 };
    setup(&r);
    double next = 0, seen[6];
    for (int i = 0; i < 6; i++)
        seen[i] = evi_sink_backoff(&next);
    CHECK(seen[0] == 0.5 && seen[1] == 1 && seen[2] == 2 && seen[3] == 3 && seen[5] == 3);
    next = EVI_BACKOFF_MIN; /* a connection that lived: start over */
    CHECK(evi_sink_backoff(&next) == 0.5);
    evi_shutdown(0);
}

static void test_script_load(void)
{
    setup(NULL);
    char err[256];
    evi_script_load_begin();
    CHECK(evi_subscribe("E_L", 3, "test:a", 6, 0, EVI_SRC_SCRIPT, err, sizeof(err)) == 0);
    CHECK(evi_subscribe("E_L", 3, "bad:x", 5, 0, EVI_SRC_SCRIPT, err, sizeof(err)) == -EINVAL);
    CHECK(evi_sink_count() == 0);
    evi_script_load_end(0);
    CHECK(evi_sink_count() == 0 && raise1("E_L", 1) == 0);
    evi_script_load_begin();
    CHECK(evi_subscribe("E_L", 3, "test:a", 6, 0, EVI_SRC_SCRIPT, err, sizeof(err)) == 0);
    evi_script_load_end(1);
    CHECK(raise1("E_L", 1) == 1);
    evi_shutdown(0);
}

/* ----- event_route ----- */

static char hlog[2048];
static int self_raise;

static int h_has(const char *name)
{
    return strcmp(name, "E_NOBODY") != 0;
}

static void h_run(const char *name)
{
    const struct evi_param *p;
    size_t n;
    CHECK(evi_current_params(&p, &n) == 0);
    size_t o = strlen(hlog);
    snprintf(hlog + o, sizeof(hlog) - o, "%s(%zu%s%.*s)", name, n, n ? ":" : "",
             n && p[0].type == EVI_T_STR ? (int)p[0].slen : 0, n && p[0].type == EVI_T_STR ? p[0].s : "");
    if (strcmp(name, "E_A") == 0) {
        struct evi_param q[] = { EVI_STR("from", "A") };
        evi_raise("E_C", 3, q, 1, 1); /* queued behind E_B */
    }
    if (strcmp(name, "E_SELF") == 0) {
        self_raise++;
        evi_raise("E_SELF", 6, NULL, 0, 1);
    }
}

static int after_calls;
static void h_after(void)
{
    after_calls++;
}

static void test_handlers(void)
{
    setup(NULL);
    static const struct evi_hooks hooks = { h_has, h_run, h_after };
    evi_set_hooks(&hooks);
    hlog[0] = 0;
    struct evi_param a[] = { EVI_STR("k", "va") }, b[] = { EVI_STR("k", "vb") };
    evi_raise("E_A", 3, a, 1, 1);
    evi_raise("E_NOBODY", 8, NULL, 0, 1);
    evi_raise("E_B", 3, b, 1, 1);
    evi_raise("E_QUIET", 7, NULL, 0, 0); /* without handlers */
    CHECK(hlog[0] == 0); /* nothing runs inside the raise */
    const struct evi_param *p;
    size_t n;
    CHECK(evi_current_params(&p, &n) == -ENOENT && evi_current_name() == NULL);
    spin();
    CHECK_MSG(strcmp(hlog, "E_A(1:va)E_B(1:vb)E_C(1:A)") == 0, "got %s", hlog);
    CHECK(after_calls == 1);
    /* nesting is capped */
    uint64_t c0 = stats.events_depth_capped;
    self_raise = 0;
    evi_raise("E_SELF", 6, NULL, 0, 1);
    spin();
    CHECK(self_raise == EVI_HANDLER_DEPTH_MAX + 1);
    CHECK(stats.events_depth_capped == c0 + 1);
    evi_set_hooks(NULL);
    evi_shutdown(0);
}

static void test_shutdown_with_queued(void)
{
    setup(NULL);
    T[tidx("slow")].mode = M_HOLD;
    CHECK(sub("E_Z", "test:slow", 0) == 0);
    CHECK(sub("E_Z", "virtual:FAILOVER test:slow test:x", 0) == 0);
    for (int i = 0; i < 20; i++)
        raise1("E_Z", i);
    spin();
    uint64_t d0 = stats.events_dropped;
    evi_shutdown(0.05); /* nothing can go: dropped and counted, nothing leaks */
    CHECK(stats.events_dropped > d0);
    CHECK(T[tidx("slow")].closed == 1);
}

int main(void)
{
    loop = ev_loop_new(EVFLAG_AUTO);
    log_set_level(LOG_LVL_ERROR); /* the bus logs every subscription: keep the output to failures */
    timer_use_virtual_clock(1000);
    test_payloads();
    test_raise_validation();
    test_sockets();
    test_mask();
    test_overflow();
    test_parallel();
    test_failover();
    test_failover_fail_fast();
    test_round_robin();
    test_expiry();
    test_unsubscribe_keeps_queued();
    test_backoff_and_config();
    test_script_load();
    test_handlers();
    test_shutdown_with_queued();
    evi_set_test_driver(NULL);
    timer_shutdown();
    ev_loop_destroy(loop);
    TEST_DONE();
}
