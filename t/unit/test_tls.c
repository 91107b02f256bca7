/* Unit tests of tls.c: real handshakes between a server and a client session over a
 * non-blocking socketpair (data both ways, partial writes, close_notify, EOF, EPIPE), SNI
 * certificate choice, verify_client none/optional/required, the RFC 5922 name check of
 * outgoing connections, peer chains as PEM, validate(), sip_identities() on each test
 * certificate of t/data/tls (see its README), the self-signed pair, and the error texts of
 * tls_ctx_new. Run from the repo root. */
#include "test.h"

#include "config.h"
#include "log.h"
#include "tls.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>

#define D "t/data/tls/"

static char errbuf[512];
static char tmpdir[64];

/* ----- fixtures ----- */

struct sni_spec { const char *name, *crt, *key; };

/* A struct config with only what tls_ctx_new reads, every string owned. */
static void cfg_make(struct config *c, const char *crt, const char *key, const char *ca,
                     enum config_verify_client vc, const struct sni_spec *sni, size_t nsni)
{
    memset(c, 0, sizeof(*c));
    c->tls_certificate = crt ? strdup(crt) : NULL;
    c->tls_private_key = key ? strdup(key) : NULL;
    c->tls_ca_file = ca ? strdup(ca) : NULL;
    c->tls_min_version = strdup("1.2");
    c->tls_verify_client = vc;
    if (nsni) {
        c->tls_sni = calloc(nsni, sizeof(*c->tls_sni));
        for (size_t i = 0; i < nsni; i++) {
            c->tls_sni[i].name = strdup(sni[i].name);
            c->tls_sni[i].certificate = sni[i].crt ? strdup(sni[i].crt) : NULL;
            c->tls_sni[i].private_key = sni[i].key ? strdup(sni[i].key) : NULL;
        }
        c->ntls_sni = nsni;
    }
}

static void cfg_drop(struct config *c)
{
    free(c->tls_certificate);
    free(c->tls_private_key);
    free(c->tls_ca_file);
    free(c->tls_min_version);
    for (size_t i = 0; i < c->ntls_sni; i++) {
        free(c->tls_sni[i].name);
        free(c->tls_sni[i].certificate);
        free(c->tls_sni[i].private_key);
    }
    free(c->tls_sni);
    memset(c, 0, sizeof(*c));
}

/* A context from a certificate pair in t/data/tls, trusting ca.crt. NULL on failure. */
static struct tls_ctx *ctx_of(const char *name, enum config_verify_client vc, const struct sni_spec *sni,
                              size_t nsni)
{
    char crt[128], key[128];
    snprintf(crt, sizeof(crt), D "%s.crt", name);
    snprintf(key, sizeof(key), D "%s.key", name);
    struct config c;
    cfg_make(&c, crt, key, D "ca.crt", vc, sni, nsni);
    struct tls_ctx *ctx = NULL;
    errbuf[0] = 0;
    if (tls_ctx_new(&c, &ctx, errbuf, sizeof(errbuf)) != 0)
        fprintf(stderr, "tls_ctx_new(%s): %s\n", name, errbuf);
    cfg_drop(&c);
    return ctx;
}

/* tls_ctx_new on a hand-made config; returns its result, errbuf has the text. */
static int try_ctx(struct config *c)
{
    struct tls_ctx *ctx = NULL;
    errbuf[0] = 0;
    int rc = tls_ctx_new(c, &ctx, errbuf, sizeof(errbuf));
    tls_ctx_unref(ctx);
    cfg_drop(c);
    return rc;
}

static void nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl == -1 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) == -1) {
        perror("fcntl");
        exit(2);
    }
}

static void pair(int sv[2])
{
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == -1) {
        perror("socketpair");
        exit(2);
    }
    nonblock(sv[0]);
    nonblock(sv[1]);
}

/* A bare mbedTLS client that presents no certificate (our client sessions always present
 * tls.certificate), on its own BIO. */
struct bare {
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    mbedtls_ssl_config conf;
    mbedtls_ssl_context ssl;
    int fd;
};

static int bare_send(void *p, const unsigned char *b, size_t n)
{
    ssize_t r = send(*(int *)p, b, n, MSG_NOSIGNAL);
    if (r == -1)
        return errno == EAGAIN ? MBEDTLS_ERR_SSL_WANT_WRITE : -1;
    return (int)r;
}

static int bare_recv(void *p, unsigned char *b, size_t n)
{
    ssize_t r = recv(*(int *)p, b, n, 0);
    if (r == -1)
        return errno == EAGAIN ? MBEDTLS_ERR_SSL_WANT_READ : -1;
    return (int)r;
}

static void bare_init(struct bare *b, int fd)
{
    mbedtls_entropy_init(&b->entropy);
    mbedtls_ctr_drbg_init(&b->drbg);
    mbedtls_ssl_config_init(&b->conf);
    mbedtls_ssl_init(&b->ssl);
    b->fd = fd;
    if (mbedtls_ctr_drbg_seed(&b->drbg, mbedtls_entropy_func, &b->entropy, NULL, 0) != 0 ||
        mbedtls_ssl_config_defaults(&b->conf, MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_TRANSPORT_STREAM,
                                    MBEDTLS_SSL_PRESET_DEFAULT) != 0) {
        fprintf(stderr, "bare client setup failed\n");
        exit(2);
    }
    mbedtls_ssl_conf_authmode(&b->conf, MBEDTLS_SSL_VERIFY_NONE);
    mbedtls_ssl_conf_rng(&b->conf, mbedtls_ctr_drbg_random, &b->drbg);
    if (mbedtls_ssl_setup(&b->ssl, &b->conf) != 0)
        exit(2);
    mbedtls_ssl_set_bio(&b->ssl, &b->fd, bare_send, bare_recv, NULL);
}

static void bare_free(struct bare *b)
{
    mbedtls_ssl_free(&b->ssl);
    mbedtls_ssl_config_free(&b->conf);
    mbedtls_ctr_drbg_free(&b->drbg);
    mbedtls_entropy_free(&b->entropy);
}

/* One end of a handshake: a session of ours or a bare client. */
struct end {
    struct tls_session *s;
    struct bare *b;
    int rc;
};

static int step(struct end *e)
{
    if (e->s != NULL)
        return tls_handshake(e->s);
    int r = mbedtls_ssl_handshake(&e->b->ssl);
    return r == 0 ? TLS_OK : r == MBEDTLS_ERR_SSL_WANT_READ ? TLS_WANT_READ
         : r == MBEDTLS_ERR_SSL_WANT_WRITE ? TLS_WANT_WRITE : TLS_FAIL;
}

/* Steps both ends alternately until both are done or one failed (then a few more steps
 * so the other sees the alert). */
static void run_handshake(struct end *srv, struct end *cli)
{
    srv->rc = cli->rc = TLS_WANT_READ;
    int after_fail = 0;
    for (int i = 0; i < 200; i++) {
        if (cli->rc != TLS_OK && cli->rc != TLS_FAIL)
            cli->rc = step(cli);
        if (srv->rc != TLS_OK && srv->rc != TLS_FAIL)
            srv->rc = step(srv);
        if (srv->rc == TLS_OK && cli->rc == TLS_OK)
            return;
        if ((srv->rc == TLS_FAIL || cli->rc == TLS_FAIL) && ++after_fail > 4)
            return;
    }
}

/* A handshake between server ctx and a client session (name, verify); leaves the sessions
 * in srv->s and cli->s and the fds in sv (drop_pair frees them). */
static void connect_pair(struct tls_ctx *sctx, struct tls_ctx *cctx, const char *name, int verify,
                         struct end *srv, struct end *cli, int sv[2])
{
    pair(sv);
    memset(srv, 0, sizeof(*srv));
    memset(cli, 0, sizeof(*cli));
    srv->s = tls_session_server(sctx, sv[0]);
    cli->s = tls_session_client(cctx, sv[1], name, verify);
    run_handshake(srv, cli);
}

static void drop_pair(struct end *srv, struct end *cli, int sv[2])
{
    tls_session_free(srv->s);
    tls_session_free(cli->s);
    if (sv[0] != -1)
        close(sv[0]);
    close(sv[1]);
}

/* The subject of the peer's leaf certificate ("CN=..."), from tls_session_peer_pems. */
static void peer_subject(const struct tls_session *s, char *out, size_t cap)
{
    char *pems;
    size_t n;
    out[0] = 0;
    if (tls_session_peer_pems(s, &pems, &n) != 0 || n == 0)
        return;
    mbedtls_x509_crt crt;
    mbedtls_x509_crt_init(&crt);
    if (mbedtls_x509_crt_parse(&crt, (const unsigned char *)pems, strlen(pems) + 1) == 0)
        mbedtls_x509_dn_gets(out, cap, &crt.subject);
    mbedtls_x509_crt_free(&crt);
    free(pems);
}

static int contains(const char *hay, const char *needle)
{
    return hay != NULL && strstr(hay, needle) != NULL;
}

/* ----- handshakes and data ----- */

static struct tls_ctx *server_ctx, *client_ctx;

static void test_handshake_and_data(void)
{
    struct end srv, cli;
    int sv[2];
    connect_pair(server_ctx, client_ctx, "server.test", 1, &srv, &cli, sv);
    CHECK(srv.s != NULL && cli.s != NULL);
    CHECK_MSG(srv.rc == TLS_OK && cli.rc == TLS_OK, "srv %d (%s) cli %d (%s)", srv.rc,
              tls_session_error(srv.s), cli.rc, tls_session_error(cli.s));
    CHECK(strcmp(tls_session_version(cli.s), "TLSv1.2") == 0);
    CHECK(strcmp(tls_session_version(srv.s), "TLSv1.2") == 0);
    CHECK(tls_session_verified(cli.s) == 1);            /* server.crt by ca.crt, name server.test */
    CHECK(tls_session_verified(srv.s) == 1);            /* optional: client.crt presented */
    CHECK(strcmp(tls_session_sni(srv.s), "server.test") == 0);
    CHECK(tls_session_sni(cli.s) == NULL);              /* a server-side notion */
    CHECK(tls_handshake(cli.s) == TLS_OK);              /* done stays done */
    CHECK(strcmp(tls_session_error(cli.s), "no error") == 0);

    char buf[256];
    CHECK(tls_read(srv.s, buf, sizeof(buf)) == TLS_WANT_READ);
    CHECK(tls_write(cli.s, "hello", 5) == 5);
    CHECK(tls_read(srv.s, buf, sizeof(buf)) == 5 && memcmp(buf, "hello", 5) == 0);
    CHECK(tls_write(srv.s, "0123456789", 10) == 10);
    CHECK(tls_read(cli.s, buf, 4) == 4 && memcmp(buf, "0123", 4) == 0);
    CHECK(tls_pending(cli.s) == 6);                     /* the rest of the record, decrypted */
    CHECK(tls_read(cli.s, buf, sizeof(buf)) == 6 && memcmp(buf, "456789", 6) == 0);
    CHECK(tls_pending(cli.s) == 0);

    /* 1 MiB through a socketpair that holds far less: WANT_WRITE, then the same bytes again */
    size_t total = 1 << 20, sent = 0, got = 0;
    unsigned char *out = malloc(total), *in = malloc(total);
    for (size_t i = 0; i < total; i++)
        out[i] = (unsigned char)(i * 7 + (i >> 11));
    int want_write = 0, ok = 1;
    for (int rounds = 0; (sent < total || got < total) && rounds < 100000 && ok; rounds++) {
        while (sent < total) { /* until the socket is full */
            long w = tls_write(srv.s, out + sent, total - sent);
            if (w > 0) {
                sent += (size_t)w;
                continue;
            }
            if (w == TLS_WANT_WRITE)
                want_write++;
            else
                ok = 0;
            break;
        }
        while (got < total) {
            long r = tls_read(cli.s, in + got, total - got);
            if (r > 0) {
                got += (size_t)r;
                continue;
            }
            if (r != TLS_WANT_READ)
                ok = 0;
            break;
        }
    }
    CHECK_MSG(ok && sent == total && got == total, "sent %zu got %zu: %s", sent, got, tls_session_error(cli.s));
    CHECK(want_write > 0);
    CHECK(memcmp(in, out, total) == 0);
    free(out);
    free(in);

    /* close_notify: the other side reads TLS_CLOSED */
    tls_close_notify(cli.s);
    CHECK(tls_read(srv.s, buf, sizeof(buf)) == TLS_CLOSED);
    CHECK(contains(tls_session_error(srv.s), "close_notify"));
    drop_pair(&srv, &cli, sv);

    /* EOF without close_notify */
    connect_pair(server_ctx, client_ctx, "server.test", 1, &srv, &cli, sv);
    CHECK(srv.rc == TLS_OK && cli.rc == TLS_OK);
    shutdown(sv[0], SHUT_WR);
    CHECK(tls_read(cli.s, buf, sizeof(buf)) == TLS_CLOSED);
    /* the peer is gone: send gets EPIPE (MSG_NOSIGNAL: no SIGPIPE), a failure */
    close(sv[0]);
    sv[0] = -1;
    long w = 0;
    for (int i = 0; i < 4 && w != TLS_FAIL; i++)
        w = tls_write(cli.s, "x", 1);
    CHECK(w == TLS_FAIL);
    CHECK_MSG(contains(tls_session_error(cli.s), "write: ") &&
              (contains(tls_session_error(cli.s), "Broken pipe") ||
               contains(tls_session_error(cli.s), "reset")), "%s", tls_session_error(cli.s));
    drop_pair(&srv, &cli, sv);

    /* a peer that is not TLS */
    pair(sv);
    struct tls_session *s = tls_session_server(server_ctx, sv[0]);
    CHECK(send(sv[1], "OPTIONS sip:x SIP/2.0\r\n\r\n", 25, 0) == 25);
    CHECK(tls_handshake(s) == TLS_FAIL);
    CHECK(contains(tls_session_error(s), "handshake: SSL - "));
    CHECK(tls_handshake(s) == TLS_FAIL);                /* failed stays failed */
    CHECK(tls_read(s, buf, sizeof(buf)) == TLS_FAIL);
    tls_session_free(s);
    close(sv[0]);
    close(sv[1]);

    /* EOF in the middle of a handshake is a failure, not TLS_CLOSED */
    pair(sv);
    s = tls_session_client(client_ctx, sv[1], "server.test", 1);
    CHECK(tls_handshake(s) == TLS_WANT_READ);
    size_t hello = 0;                                   /* the ClientHello, unanswered */
    for (ssize_t r; (r = recv(sv[0], buf, sizeof(buf), 0)) > 0;)
        hello += (size_t)r;
    CHECK(hello > 0);
    close(sv[0]);
    CHECK(tls_handshake(s) == TLS_FAIL);
    CHECK(contains(tls_session_error(s), "closed by peer"));
    tls_session_free(s);
    close(sv[1]);
}

/* A session keeps its context alive after the last other reference goes. */
static void test_refcount(void)
{
    struct tls_ctx *sctx = ctx_of("server", CONFIG_VERIFY_NONE, NULL, 0);
    struct tls_ctx *cctx = ctx_of("client", CONFIG_VERIFY_NONE, NULL, 0);
    int sv[2];
    pair(sv);
    struct end srv = { tls_session_server(sctx, sv[0]), NULL, 0 };
    struct end cli = { tls_session_client(cctx, sv[1], "server.test", 1), NULL, 0 };
    tls_ctx_unref(sctx);
    tls_ctx_unref(cctx);
    run_handshake(&srv, &cli);
    CHECK(srv.rc == TLS_OK && cli.rc == TLS_OK);
    CHECK(tls_session_verified(srv.s) == 0);            /* verify_client none: not asked */
    char *pems;
    size_t n = 9;
    CHECK(tls_session_peer_pems(srv.s, &pems, &n) == 0 && n == 0 && pems == NULL);
    drop_pair(&srv, &cli, sv);                          /* frees the contexts (ASan tells) */
}

/* ----- SNI ----- */

static void test_sni(void)
{
    static const struct { const char *ask, *sni, *subject; } cases[] = {
        { "sip.example.com", "sip.example.com", "CN=sip.example.com" },
        { "SIP.Example.COM", "sip.example.com", "CN=sip.example.com" },  /* names without case */
        { "sip.example.com.", "sip.example.com", "CN=sip.example.com" }, /* absolute form */
        { "example.com", "example.com", "CN=sip.example.com" },
        { "foo.example.org", "foo.example.org", "CN=dns.example.org" },  /* "*.example.org" */
        { "a.b.example.org", "a.b.example.org", "CN=server.test" },      /* one label only */
        { "example.org", "example.org", "CN=server.test" },
        { "unknown.test", "unknown.test", "CN=server.test" },            /* default */
        { NULL, NULL, "CN=server.test" },                                /* no SNI */
        { "127.0.0.1", NULL, "CN=server.test" },                         /* never an address */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct end srv, cli;
        int sv[2];
        connect_pair(server_ctx, client_ctx, cases[i].ask, 0, &srv, &cli, sv);
        char subj[128];
        peer_subject(cli.s, subj, sizeof(subj));
        const char *got = tls_session_sni(srv.s);
        CHECK_MSG(srv.rc == TLS_OK && cli.rc == TLS_OK && strcmp(subj, cases[i].subject) == 0 &&
                  (cases[i].sni ? got && strcmp(got, cases[i].sni) == 0 : got == NULL),
                  "ask %s: rc %d/%d subject '%s' sni '%s'", cases[i].ask ? cases[i].ask : "(none)",
                  srv.rc, cli.rc, subj, got ? got : "(null)");
        drop_pair(&srv, &cli, sv);
    }
}

/* RFC 5922 §7.3: the client matches the name against the SIP identities, exactly. */
static void test_client_name_check(void)
{
    static const struct { const char *name; int verify, ok, verified; const char *err; } cases[] = {
        { "server.test", 1, 1, 1, NULL },
        { "localhost", 1, 1, 1, NULL },
        { "wrong.test", 1, 0, 0, "certificate name does not match" },
        { "wrong.test", 0, 1, -1, NULL },                  /* recorded, not fatal */
        { "example.com", 1, 1, 1, NULL },                  /* URI sip:example.com, no DNS SAN of it */
        { "sip.example.com", 1, 0, 0, "does not match" },  /* DNS SANs ignored beside sip URIs */
        { "sip.example.com", 0, 1, -1, NULL },
        { "dns.example.org", 1, 1, 1, NULL },
        { "foo.example.org", 1, 0, 0, "does not match" },  /* no wildcard matching (§7.2) */
        { "Dns.Example.Org", 1, 1, 1, NULL },
        { NULL, 1, 1, 1, NULL },                           /* IP target: chain only */
        { "127.0.0.1", 1, 1, 1, NULL },                    /* an IP literal: iPAddress SANs */
        { "::1", 1, 0, 0, "does not match" },
        { "[::1]", 0, 1, -1, NULL },
        { "127.0.0.2", 1, 0, 0, "does not match" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct end srv, cli;
        int sv[2];
        connect_pair(server_ctx, client_ctx, cases[i].name, cases[i].verify, &srv, &cli, sv);
        int ok = cases[i].ok ? srv.rc == TLS_OK && cli.rc == TLS_OK &&
                               tls_session_verified(cli.s) == cases[i].verified
                             : cli.rc == TLS_FAIL && srv.rc == TLS_FAIL &&
                               contains(tls_session_error(cli.s), cases[i].err);
        CHECK_MSG(ok, "%s verify %d: rc %d/%d verified %d: %s / %s", cases[i].name ? cases[i].name : "(none)",
                  cases[i].verify, srv.rc, cli.rc, tls_session_verified(cli.s), tls_session_error(cli.s),
                  tls_session_error(srv.s));
        drop_pair(&srv, &cli, sv);
    }

    /* untrusted and expired server certificates */
    static const struct { const char *crt, *name, *err; } bad[] = {
        { "self_signed", "self.test", "not trusted" },
        { "expired", "expired.test", "certificate has expired" },
    };
    for (size_t i = 0; i < 2; i++) {
        struct tls_ctx *sctx = ctx_of(bad[i].crt, CONFIG_VERIFY_NONE, NULL, 0);
        CHECK(sctx != NULL);
        struct end srv, cli;
        int sv[2];
        connect_pair(sctx, client_ctx, bad[i].name, 1, &srv, &cli, sv);
        CHECK_MSG(cli.rc == TLS_FAIL && contains(tls_session_error(cli.s), bad[i].err) &&
                  contains(tls_session_error(cli.s), "handshake: X509 - Certificate verification failed"),
                  "%s: %d %s", bad[i].crt, cli.rc, tls_session_error(cli.s));
        CHECK(srv.rc == TLS_FAIL);                       /* the client's alert */
        drop_pair(&srv, &cli, sv);
        connect_pair(sctx, client_ctx, bad[i].name, 0, &srv, &cli, sv);
        CHECK(cli.rc == TLS_OK && tls_session_verified(cli.s) == -1);
        drop_pair(&srv, &cli, sv);
        tls_ctx_unref(sctx);
    }
}

/* ----- verify_client ----- */

/* verified as the server sees it, for a client of ctx (NULL: bare, no certificate). */
static int client_verified(struct tls_ctx *sctx, struct tls_ctx *cctx, int *srv_rc, char *err, size_t errlen)
{
    int sv[2];
    pair(sv);
    struct bare b;
    struct end srv = { tls_session_server(sctx, sv[0]), NULL, 0 };
    struct end cli = { NULL, NULL, 0 };
    if (cctx != NULL) {
        cli.s = tls_session_client(cctx, sv[1], "server.test", 1);
    } else {
        bare_init(&b, sv[1]);
        cli.b = &b;
    }
    run_handshake(&srv, &cli);
    *srv_rc = srv.rc;
    snprintf(err, errlen, "%s", tls_session_error(srv.s));
    int v = srv.rc == TLS_OK ? tls_session_verified(srv.s) : -9;
    if (cctx == NULL)
        bare_free(&b);
    tls_session_free(srv.s);
    tls_session_free(cli.s);
    close(sv[0]);
    close(sv[1]);
    return v;
}

static void test_verify_client(void)
{
    struct tls_ctx *req = ctx_of("server", CONFIG_VERIFY_REQUIRED, NULL, 0);
    struct tls_ctx *opt = ctx_of("server", CONFIG_VERIFY_OPTIONAL, NULL, 0);
    struct tls_ctx *none = ctx_of("server", CONFIG_VERIFY_NONE, NULL, 0);
    struct tls_ctx *self = ctx_of("self_signed", CONFIG_VERIFY_NONE, NULL, 0);
    struct tls_ctx *expired = ctx_of("expired", CONFIG_VERIFY_NONE, NULL, 0);
    CHECK(req && opt && none && self && expired);
    char err[256];
    int rc;

    CHECK(client_verified(req, NULL, &rc, err, sizeof(err)) == -9 && rc == TLS_FAIL);
    CHECK_MSG(contains(err, "handshake: SSL - No client certification received"), "%s", err);
    CHECK(client_verified(req, client_ctx, &rc, err, sizeof(err)) == 1 && rc == TLS_OK);
    CHECK(client_verified(req, self, &rc, err, sizeof(err)) == -9 && rc == TLS_FAIL);
    CHECK_MSG(contains(err, "not trusted"), "%s", err);
    CHECK(client_verified(req, expired, &rc, err, sizeof(err)) == -9);
    CHECK_MSG(contains(err, "certificate has expired"), "%s", err);

    CHECK(client_verified(opt, NULL, &rc, err, sizeof(err)) == 0 && rc == TLS_OK);
    CHECK(client_verified(opt, client_ctx, &rc, err, sizeof(err)) == 1);
    CHECK(client_verified(opt, self, &rc, err, sizeof(err)) == -1 && rc == TLS_OK);
    CHECK(client_verified(opt, expired, &rc, err, sizeof(err)) == -1);

    CHECK(client_verified(none, client_ctx, &rc, err, sizeof(err)) == 0 && rc == TLS_OK);
    CHECK(client_verified(none, NULL, &rc, err, sizeof(err)) == 0);

    tls_ctx_unref(req);
    tls_ctx_unref(opt);
    tls_ctx_unref(none);
    tls_ctx_unref(self);
    tls_ctx_unref(expired);
}

/* ----- peer chains ----- */

static void test_peer_pems(void)
{
    size_t slen, clen, calen;
    char *server_pem = test_read_file(D "server.crt", &slen);
    char *client_pem = test_read_file(D "client.crt", &clen);
    char *ca_pem = test_read_file(D "ca.crt", &calen);

    struct end srv, cli;
    int sv[2];
    connect_pair(server_ctx, client_ctx, "server.test", 1, &srv, &cli, sv);
    char *pems;
    size_t n;
    CHECK(tls_session_peer_pems(cli.s, &pems, &n) == 0 && n == 1);
    CHECK(pems != NULL && strcmp(pems, server_pem) == 0); /* the file's PEM, byte for byte */
    const char *one[1] = { pems };
    size_t lens[1] = { pems ? strlen(pems) : 0 };
    CHECK(tls_validate_pems(server_ctx, one, lens, 1, errbuf, sizeof(errbuf)) == 1);
    free(pems);
    CHECK(tls_session_peer_pems(srv.s, &pems, &n) == 0 && n == 1);
    CHECK(pems != NULL && strcmp(pems, client_pem) == 0);
    free(pems);
    drop_pair(&srv, &cli, sv);

    /* a certificate file with its chain: both come out, leaf first */
    char chain[128];
    snprintf(chain, sizeof(chain), "%s/chain.crt", tmpdir);
    FILE *f = fopen(chain, "w");
    fputs(server_pem, f);
    fputs(ca_pem, f);
    fclose(f);
    struct config c;
    cfg_make(&c, chain, D "server.key", D "ca.crt", CONFIG_VERIFY_NONE, NULL, 0);
    struct tls_ctx *sctx = NULL;
    CHECK(tls_ctx_new(&c, &sctx, errbuf, sizeof(errbuf)) == 0);
    cfg_drop(&c);
    connect_pair(sctx, client_ctx, "server.test", 1, &srv, &cli, sv);
    CHECK(cli.rc == TLS_OK);
    CHECK(tls_session_peer_pems(cli.s, &pems, &n) == 0 && n == 2);
    if (pems != NULL && n == 2) {
        size_t l0 = strlen(pems);
        CHECK(strcmp(pems, server_pem) == 0);
        CHECK(strcmp(pems + l0 + 1, ca_pem) == 0);
        const char *two[2] = { pems, pems + l0 + 1 };
        size_t two_lens[2] = { l0, strlen(pems + l0 + 1) };
        CHECK(tls_validate_pems(server_ctx, two, two_lens, 2, errbuf, sizeof(errbuf)) == 1);
    }
    free(pems);
    drop_pair(&srv, &cli, sv);
    tls_ctx_unref(sctx);
    unlink(chain);
    free(server_pem);
    free(client_pem);
    free(ca_pem);
}

/* ----- validate ----- */

static int validate_file(const struct tls_ctx *ctx, const char *name)
{
    char path[128];
    size_t len;
    snprintf(path, sizeof(path), D "%s.crt", name);
    char *pem = test_read_file(path, &len);
    struct guard_buf g = guard_alloc(pem, len); /* no NUL after it: a copy must be made */
    const char *p[1] = { g.data };
    errbuf[0] = 0;
    int rc = tls_validate_pems(ctx, p, &len, 1, errbuf, sizeof(errbuf));
    guard_free(&g);
    free(pem);
    return rc;
}

static void test_validate(void)
{
    CHECK(validate_file(server_ctx, "server") == 1);
    CHECK(validate_file(server_ctx, "client") == 1);
    CHECK(validate_file(server_ctx, "sip_uri") == 1);
    CHECK(validate_file(server_ctx, "expired") == 0 && strcmp(errbuf, "certificate has expired") == 0);
    CHECK(validate_file(server_ctx, "self_signed") == 0 && strcmp(errbuf, "not trusted") == 0);
    CHECK(validate_file(server_ctx, "ca") == 1);         /* a trusted root itself */

    struct config c;
    cfg_make(&c, D "server.crt", D "server.key", D "other_ca.crt", CONFIG_VERIFY_NONE, NULL, 0);
    struct tls_ctx *other = NULL;
    CHECK(tls_ctx_new(&c, &other, errbuf, sizeof(errbuf)) == 0);
    cfg_drop(&c);
    CHECK(validate_file(other, "server") == 0 && strcmp(errbuf, "not trusted") == 0);
    tls_ctx_unref(other);

    size_t len;
    char *pem = test_read_file(D "server.crt", &len);
    const char *p[2] = { "garbage", pem };
    size_t lens[2] = { 7, len };
    CHECK(tls_validate_pems(server_ctx, p, lens, 1, errbuf, sizeof(errbuf)) == 0 &&
          strcmp(errbuf, "cannot parse certificate 1") == 0);
    p[0] = pem;
    p[1] = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    lens[0] = len;
    lens[1] = strlen(p[1]);
    CHECK(tls_validate_pems(server_ctx, p, lens, 2, errbuf, sizeof(errbuf)) == 0 &&
          strcmp(errbuf, "cannot parse certificate 2") == 0);
    CHECK(tls_validate_pems(server_ctx, p, lens, 0, errbuf, sizeof(errbuf)) == 0 &&
          strcmp(errbuf, "no certificate") == 0);
    lens[0] = 0;
    CHECK(tls_validate_pems(server_ctx, p, lens, 1, errbuf, sizeof(errbuf)) == 0 &&
          strcmp(errbuf, "cannot parse certificate 1") == 0);
    free(pem);
}

/* ----- RFC 5922 §7.1 identities ----- */

/* The identities of a certificate file, joined with ',' ("" none, "ERR" unparsable). */
static const char *ids_of(const char *name, size_t cap)
{
    static char joined[512];
    char path[128], out[512];
    size_t len;
    snprintf(path, sizeof(path), D "%s.crt", name);
    char *pem = test_read_file(path, &len);
    int n = tls_sip_identities(pem, len, out, cap);
    free(pem);
    if (n < 0)
        return "ERR";
    joined[0] = 0;
    for (int i = 0, off = 0; i < n; i++) {
        if (i)
            strcat(joined, ",");
        strcat(joined, out + off);
        off += (int)strlen(out + off) + 1;
    }
    return joined;
}

static void test_sip_identities(void)
{
    static const struct { const char *crt, *ids; } cases[] = {
        { "sip_uri", "example.com" },               /* not alice@, sips:, https:, nor DNS */
        { "dns_only", "dns.example.org,*.example.org" },
        { "cn_only", "cn.example.net" },
        { "server", "server.test,localhost" },      /* the IP SAN is no SIP identity */
        { "client", "client.test" },
        { "self_signed", "self.test" },
        { "expired", "expired.test" },
        { "ca", "" },                               /* no SAN; its CN is not a DNS name */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *got = ids_of(cases[i].crt, 512);
        CHECK_MSG(strcmp(got, cases[i].ids) == 0, "%s: got '%s' want '%s'", cases[i].crt, got, cases[i].ids);
    }
    /* out too small: only what fits whole */
    CHECK(strcmp(ids_of("dns_only", 20), "dns.example.org") == 0);
    CHECK(strcmp(ids_of("dns_only", 5), "") == 0);
    char out[64];
    CHECK(tls_sip_identities("not a certificate", 17, out, sizeof(out)) == -1);
    CHECK(tls_sip_identities("", 0, out, sizeof(out)) == -1);
}

/* ----- the self-signed pair ----- */

static void test_self_signed(void)
{
    char dir[128], crt[160], key[160];
    snprintf(dir, sizeof(dir), "%s/gen/tls", tmpdir);
    snprintf(crt, sizeof(crt), "%s/server.crt", dir);
    snprintf(key, sizeof(key), "%s/server.key", dir);
    errbuf[0] = 0;
    CHECK_MSG(tls_generate_self_signed(crt, key, errbuf, sizeof(errbuf)) == 1, "%s", errbuf);
    struct stat st;
    CHECK(stat(dir, &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 0777) == 0700);
    CHECK(stat(key, &st) == 0 && (st.st_mode & 0777) == 0600);
    CHECK(stat(crt, &st) == 0 && st.st_size > 0);
    CHECK(tls_generate_self_signed(crt, key, errbuf, sizeof(errbuf)) == 0); /* both there */

    size_t len;
    char *pem = test_read_file(crt, &len);
    char out[256];
    CHECK(tls_sip_identities(pem, len, out, sizeof(out)) == 1 && strcmp(out, "localhost") == 0);
    mbedtls_x509_crt x;
    mbedtls_x509_crt_init(&x);
    CHECK(mbedtls_x509_crt_parse(&x, (const unsigned char *)pem, len + 1) == 0);
    char subj[64];
    mbedtls_x509_dn_gets(subj, sizeof(subj), &x.subject);
    CHECK(strcmp(subj, "CN=localhost") == 0);
    int years = x.valid_to.year - x.valid_from.year;
    CHECK(x.version == 3 && (years == 10 || years == 11)); /* from a day back */
    /* mbedTLS lists the dNSName; the URI and IPs are there for tls_sip_identities and openssl */
    CHECK(x.subject_alt_names.buf.len == 9 && memcmp(x.subject_alt_names.buf.p, "localhost", 9) == 0);
    mbedtls_x509_crt_free(&x);

    /* it loads, serves, and trusts itself as ca_file */
    struct config c;
    cfg_make(&c, crt, key, crt, CONFIG_VERIFY_NONE, NULL, 0);
    struct tls_ctx *gctx = NULL;
    CHECK_MSG(tls_ctx_new(&c, &gctx, errbuf, sizeof(errbuf)) == 0, "%s", errbuf);
    cfg_drop(&c);
    if (gctx != NULL) {
        const char *p[1] = { pem };
        CHECK(tls_validate_pems(gctx, p, &len, 1, errbuf, sizeof(errbuf)) == 1);
        struct end srv, cli;
        int sv[2];
        connect_pair(gctx, gctx, "localhost", 1, &srv, &cli, sv);
        CHECK_MSG(srv.rc == TLS_OK && cli.rc == TLS_OK && tls_session_verified(cli.s) == 1, "%s",
                  tls_session_error(cli.s));
        drop_pair(&srv, &cli, sv);
        connect_pair(gctx, client_ctx, "localhost", 0, &srv, &cli, sv);
        CHECK(cli.rc == TLS_OK && tls_session_verified(cli.s) == -1); /* not trusted by ca.crt */
        drop_pair(&srv, &cli, sv);
        tls_ctx_unref(gctx);
    }
    free(pem);

    /* one without the other: refused, nothing written */
    unlink(crt);
    CHECK(tls_generate_self_signed(crt, key, errbuf, sizeof(errbuf)) == -1);
    CHECK(contains(errbuf, key) && contains(errbuf, "exists but"));
    CHECK(stat(crt, &st) == -1);
    unlink(key);
    /* an unwritable place */
    CHECK(tls_generate_self_signed("/proc/lunasip-test/x.crt", "/proc/lunasip-test/x.key", errbuf,
                                   sizeof(errbuf)) == -1);
    CHECK(contains(errbuf, "cannot create the directory"));
    rmdir(dir);
    snprintf(dir, sizeof(dir), "%s/gen", tmpdir);
    rmdir(dir);
}

/* ----- tls_ctx_new errors ----- */

static void test_ctx_errors(void)
{
    struct config c;
    char want[512], garbage[128], emptyf[128];
    snprintf(garbage, sizeof(garbage), "%s/garbage.pem", tmpdir);
    snprintf(emptyf, sizeof(emptyf), "%s/empty.pem", tmpdir);
    FILE *f = fopen(garbage, "w");
    fputs("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n", f);
    fclose(f);
    fclose(fopen(emptyf, "w"));

    cfg_make(&c, D "server.crt", D "server.key", D "ca.crt", CONFIG_VERIFY_OPTIONAL, NULL, 0);
    CHECK(try_ctx(&c) == 0);

    cfg_make(&c, D "missing.crt", D "server.key", NULL, CONFIG_VERIFY_NONE, NULL, 0);
    CHECK(try_ctx(&c) == -1);
    CHECK_MSG(strcmp(errbuf, "tls.certificate: " D "missing.crt: cannot read: No such file or directory") == 0,
              "%s", errbuf);

    cfg_make(&c, D "server.crt", D "missing.key", NULL, CONFIG_VERIFY_NONE, NULL, 0);
    CHECK(try_ctx(&c) == -1);
    CHECK_MSG(strcmp(errbuf, "tls.private_key: " D "missing.key: cannot read: No such file or directory") == 0,
              "%s", errbuf);

    cfg_make(&c, D "server.crt", D "client.key", NULL, CONFIG_VERIFY_NONE, NULL, 0);
    CHECK(try_ctx(&c) == -1);
    CHECK_MSG(strncmp(errbuf, "tls.private_key: " D "client.key: does not match tls.certificate " D
                      "server.crt", 70) == 0, "%s", errbuf);

    cfg_make(&c, garbage, D "server.key", NULL, CONFIG_VERIFY_NONE, NULL, 0);
    CHECK(try_ctx(&c) == -1);
    snprintf(want, sizeof(want), "tls.certificate: %s: not a valid certificate: ", garbage);
    CHECK_MSG(strncmp(errbuf, want, strlen(want)) == 0 && contains(errbuf, " - "), "%s", errbuf);

    cfg_make(&c, emptyf, D "server.key", NULL, CONFIG_VERIFY_NONE, NULL, 0);
    CHECK(try_ctx(&c) == -1);
    CHECK_MSG(contains(errbuf, "tls.certificate: ") && contains(errbuf, emptyf), "%s", errbuf);

    cfg_make(&c, D "server.crt", D "server.crt", NULL, CONFIG_VERIFY_NONE, NULL, 0);
    CHECK(try_ctx(&c) == -1);
    CHECK_MSG(contains(errbuf, "tls.private_key: " D "server.crt: not a valid private key: PK - "), "%s", errbuf);

    cfg_make(&c, D, D "server.key", NULL, CONFIG_VERIFY_NONE, NULL, 0);
    CHECK(try_ctx(&c) == -1);
    CHECK_MSG(contains(errbuf, "cannot read: Is a directory"), "%s", errbuf);

    cfg_make(&c, D "server.crt", D "server.key", D "missing-ca.crt", CONFIG_VERIFY_NONE, NULL, 0);
    CHECK(try_ctx(&c) == -1);
    CHECK_MSG(strcmp(errbuf, "tls.ca_file: " D "missing-ca.crt: cannot read: No such file or directory") == 0,
              "%s", errbuf);

    cfg_make(&c, D "server.crt", D "server.key", garbage, CONFIG_VERIFY_NONE, NULL, 0);
    CHECK(try_ctx(&c) == -1);
    CHECK_MSG(contains(errbuf, "tls.ca_file: ") && contains(errbuf, "not a valid certificate"), "%s", errbuf);

    static const struct sni_spec missing[] = {
        { "ok.example.com", D "dns_only.crt", D "dns_only.key" },
        { "sip.example.com", D "nope.crt", D "sip_uri.key" },
    };
    cfg_make(&c, D "server.crt", D "server.key", NULL, CONFIG_VERIFY_NONE, missing, 2);
    CHECK(try_ctx(&c) == -1);
    CHECK_MSG(strcmp(errbuf, "tls.sni[\"sip.example.com\"].certificate: " D
                     "nope.crt: cannot read: No such file or directory") == 0, "%s", errbuf);

    static const struct sni_spec mismatch[] = { { "sip.example.com", D "sip_uri.crt", D "dns_only.key" } };
    cfg_make(&c, D "server.crt", D "server.key", NULL, CONFIG_VERIFY_NONE, mismatch, 1);
    CHECK(try_ctx(&c) == -1);
    CHECK_MSG(strncmp(errbuf, "tls.sni[\"sip.example.com\"].private_key: " D "dns_only.key: does not match "
                      "tls.sni[\"sip.example.com\"].certificate " D "sip_uri.crt", 120) == 0, "%s", errbuf);

    static const struct sni_spec nokey[] = { { "sip.example.com", D "sip_uri.crt", NULL } };
    cfg_make(&c, D "server.crt", D "server.key", NULL, CONFIG_VERIFY_NONE, nokey, 1);
    CHECK(try_ctx(&c) == -1);
    CHECK_MSG(strcmp(errbuf, "tls.sni[\"sip.example.com\"].private_key: missing") == 0, "%s", errbuf);

    cfg_make(&c, D "server.crt", D "server.key", NULL, CONFIG_VERIFY_NONE, NULL, 0);
    free(c.tls_min_version);
    c.tls_min_version = strdup("1.3");
    int rc = try_ctx(&c);
    if (tls_have_13())
        CHECK(rc == 0);
    else
        CHECK_MSG(rc == -1 && strncmp(errbuf, "tls.min_version: \"1.3\" is not available", 39) == 0, "%s", errbuf);

    /* a ca_file of which one certificate parses: accepted (the rest is logged) */
    char partial[128];
    snprintf(partial, sizeof(partial), "%s/partial.pem", tmpdir);
    size_t calen;
    char *ca_pem = test_read_file(D "ca.crt", &calen);
    f = fopen(partial, "w");
    fputs(ca_pem, f);
    fputs("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", f);
    fclose(f);
    free(ca_pem);
    cfg_make(&c, D "server.crt", D "server.key", partial, CONFIG_VERIFY_NONE, NULL, 0);
    CHECK_MSG(try_ctx(&c) == 0, "%s", errbuf);
    /* ... but the certificate file must parse whole */
    cfg_make(&c, partial, D "server.key", NULL, CONFIG_VERIFY_NONE, NULL, 0);
    CHECK(try_ctx(&c) == -1);
    CHECK_MSG(contains(errbuf, "1 of its certificates cannot be parsed"), "%s", errbuf);
    unlink(partial);

    /* not a regular file: refused before anything blocks on it */
    char fifo[128];
    snprintf(fifo, sizeof(fifo), "%s/fifo", tmpdir);
    CHECK(mkfifo(fifo, 0600) == 0);
    cfg_make(&c, D "server.crt", D "server.key", fifo, CONFIG_VERIFY_NONE, NULL, 0);
    CHECK(try_ctx(&c) == -1);
    CHECK_MSG(contains(errbuf, "tls.ca_file: ") && contains(errbuf, "cannot read: not a regular file"), "%s", errbuf);
    unlink(fifo);

    /* tls_validate_pems without a context (TLS not configured) */
    const char *p[1] = { "x" };
    size_t lens[1] = { 1 };
    CHECK(tls_validate_pems(NULL, p, lens, 1, errbuf, sizeof(errbuf)) == 0 && contains(errbuf, "not trusted"));

    unlink(garbage);
    unlink(emptyf);
}

int main(void)
{
    log_set_level(LOG_LVL_ERROR); /* the partial ca_file warning is expected */
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/lunasip-test-tls-XXXXXX");
    if (mkdtemp(tmpdir) == NULL) {
        perror("mkdtemp");
        return 2;
    }
    static const struct sni_spec sni[] = {
        { "sip.example.com", D "sip_uri.crt", D "sip_uri.key" },
        { "Example.COM", D "sip_uri.crt", D "sip_uri.key" },   /* compared without case */
        { "*.example.org", D "dns_only.crt", D "dns_only.key" },
        { "dns.example.org", D "dns_only.crt", D "dns_only.key" },
    };
    server_ctx = ctx_of("server", CONFIG_VERIFY_OPTIONAL, sni, sizeof(sni) / sizeof(sni[0]));
    client_ctx = ctx_of("client", CONFIG_VERIFY_OPTIONAL, NULL, 0);
    CHECK(server_ctx != NULL && client_ctx != NULL);
    CHECK(tls_have_13() == 0 || tls_have_13() == 1);
    if (server_ctx == NULL || client_ctx == NULL)
        TEST_DONE();

    test_handshake_and_data();
    test_refcount();
    test_sni();
    test_client_name_check();
    test_verify_client();
    test_peer_pems();
    test_validate();
    test_sip_identities();
    test_self_signed();
    test_ctx_errors();

    tls_ctx_unref(server_ctx);
    tls_ctx_unref(client_ctx);
    rmdir(tmpdir);
    TEST_DONE();
}
