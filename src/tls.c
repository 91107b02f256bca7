/* TLS with mbedTLS 2.28: the server and client configurations built from lunasip.conf's tls
 * table (SNI certificates per RFC 6066 §3), non-blocking sessions over a socket, the peer
 * chain as PEM, chain validation, the SIP identities of a certificate (RFC 5922 §7.1) and the
 * server name check of outgoing connections by them (RFC 5922 §7.2, §7.3). */
#include "tls.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <mbedtls/asn1.h>
#include <mbedtls/asn1write.h>
#include <mbedtls/bignum.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecp.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/oid.h>
#include <mbedtls/pem.h>
#include <mbedtls/pk.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_cache.h>
#include <mbedtls/version.h>
#include <mbedtls/x509_crt.h>

#include "config.h"
#include "log.h"

#define TLS_SYSTEM_BUNDLE "/etc/ssl/certs/ca-certificates.crt"
#define TLS_PEM_MAX   (64 * 1024)         /* one certificate handed in from Lua */
#define TLS_CHAIN_MAX 16                  /* certificates in a chain handed in from Lua */
#define TLS_FILE_MAX  (1024 * 1024)       /* a certificate or key file */
#define TLS_CA_MAX    (16 * 1024 * 1024)  /* a CA bundle */
#define TLS_NAME_MAX  253                 /* a DNS name (RFC 1035 §2.3.4, without the root dot) */
#define TLS_IDS_MAX   2048                /* identities of one certificate, for the name check */

static const char pem_begin[] = "-----BEGIN CERTIFICATE-----\n";
static const char pem_end[] = "-----END CERTIFICATE-----\n";

struct sni_cert {
    char *name;                  /* owned copy, lower-case, maybe "*.example.com" */
    mbedtls_x509_crt crt;
    mbedtls_pk_context key;
};

struct tls_ctx {
    int refs;
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;     /* seeded once, shared by every session */
    mbedtls_x509_crt cert;             /* tls.certificate (with its chain) */
    mbedtls_pk_context key;
    mbedtls_x509_crt *ca;              /* tls.ca_file or the system bundle; may hold none */
    struct sni_cert *sni;
    size_t nsni;
    mbedtls_ssl_cache_context cache;   /* server-side session resumption */
    mbedtls_ssl_config server, client_verify, client_noverify;
};

struct tls_session {
    mbedtls_ssl_context ssl;
    struct tls_ctx *ctx;
    int fd;
    int server;
    int done;                          /* handshake complete */
    int failed;                        /* handshake failed: stays failed */
    int sys_errno;                     /* errno of the last failed send/recv */
    char *name;                        /* server: SNI asked for; client: the name to match */
    unsigned char ip[16];              /* client: the name is an IP literal of iplen bytes */
    size_t iplen;
    char err[512];
};

/* ----- helpers ----- */

static void errf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void errf(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static const char *mbed_err(int ret, char *buf, size_t len)
{
    mbedtls_strerror(ret, buf, len);
    return buf;
}

static struct tls_session *session_of(mbedtls_ssl_context *ssl)
{
    return (struct tls_session *)(void *)((char *)ssl - offsetof(struct tls_session, ssl));
}

/* Reads path whole into a malloc'd, NUL-terminated buffer (mbedTLS's PEM parsers want the
 * NUL counted in the length). Returns 0, or -errno: -EFBIG beyond cap, -EINVAL for what is
 * not a regular file (a FIFO would block the loop). */
static int read_file(const char *path, size_t cap, unsigned char **out, size_t *len)
{
    int fd;
    do
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    while (fd == -1 && errno == EINTR);
    if (fd == -1)
        return -errno;
    struct stat st;
    int e = fstat(fd, &st) == -1 ? errno : S_ISDIR(st.st_mode) ? EISDIR
          : !S_ISREG(st.st_mode) ? EINVAL : (size_t)st.st_size > cap ? EFBIG : 0;
    if (e != 0) {
        close(fd);
        return -e;
    }
    size_t size = (size_t)st.st_size, n = 0;
    unsigned char *buf = malloc(size + 1);
    if (buf == NULL) {
        close(fd);
        return -ENOMEM;
    }
    while (n < size) {
        ssize_t r = read(fd, buf + n, size - n);
        if (r == -1 && errno == EINTR)
            continue;
        if (r == -1) {
            e = errno;
            free(buf);
            close(fd);
            return -e;
        }
        if (r == 0)
            break; /* shrank meanwhile */
        n += (size_t)r;
    }
    close(fd);
    buf[n] = 0;
    *out = buf;
    *len = n;
    return 0;
}

static const char *read_error(int rc)
{
    return rc == -EFBIG ? "file too large" : rc == -EINVAL ? "not a regular file" : strerror(-rc);
}

static void free_secret(unsigned char *buf, size_t len)
{
    if (buf != NULL) {
        mbedtls_platform_zeroize(buf, len);
        free(buf);
    }
}

/* Parses the certificate file of config key `key` into crt. */
static int load_crt(mbedtls_x509_crt *crt, const char *key, const char *path, size_t cap,
                    char *err, size_t errlen)
{
    unsigned char *buf;
    size_t len;
    char e[160];
    int rc = read_file(path, cap, &buf, &len);
    if (rc != 0) {
        errf(err, errlen, "%s: %s: cannot read: %s", key, path, read_error(rc));
        return -1;
    }
    int ret = mbedtls_x509_crt_parse(crt, buf, len + 1);
    free(buf);
    if (ret < 0) {
        errf(err, errlen, "%s: %s: not a valid certificate: %s", key, path, mbed_err(ret, e, sizeof(e)));
        return -1;
    }
    if (crt->version == 0) {
        errf(err, errlen, "%s: %s: no certificate in the file", key, path);
        return -1;
    }
    if (ret > 0) {
        if (strcmp(key, "tls.ca_file") != 0) {
            errf(err, errlen, "%s: %s: %d of its certificates cannot be parsed", key, path, ret);
            return -1;
        }
        LOG_WARN("%s: %s: %d of its certificates cannot be parsed, ignored", key, path, ret);
    }
    return 0;
}

/* Parses the private key of config key `key` and checks it against crt (whose config key is
 * crt_key). Encrypted keys are refused: there is no passphrase setting. */
static int load_key(mbedtls_pk_context *pk, const mbedtls_x509_crt *crt, const char *key,
                    const char *path, const char *crt_key, const char *crt_path, char *err, size_t errlen)
{
    unsigned char *buf;
    size_t len;
    char e[160];
    int rc = read_file(path, TLS_FILE_MAX, &buf, &len);
    if (rc != 0) {
        errf(err, errlen, "%s: %s: cannot read: %s", key, path, read_error(rc));
        return -1;
    }
    int ret = mbedtls_pk_parse_key(pk, buf, len + 1, NULL, 0);
    free_secret(buf, len);
    if (ret != 0) {
        errf(err, errlen, "%s: %s: not a valid private key: %s", key, path, mbed_err(ret, e, sizeof(e)));
        return -1;
    }
    /* mbedtls_pk_check_pair takes non-const contexts but only reads them */
    if ((ret = mbedtls_pk_check_pair((mbedtls_pk_context *)&crt->pk, pk)) != 0) {
        errf(err, errlen, "%s: %s: does not match %s %s (%s)", key, path, crt_key, crt_path,
             mbed_err(ret, e, sizeof(e)));
        return -1;
    }
    return 0;
}

/* ----- RFC 5922 §7.1 identities ----- */

struct idbuf {
    char *out;
    size_t cap, used;
    int count;
};

/* Appends an identity lower-cased, once. Values holding bytes outside printable ASCII are
 * skipped: the output is NUL-separated and goes to logs and scripts. An identity that does
 * not fit in the remaining room is left out (counted only when written). */
static void id_add(struct idbuf *b, const unsigned char *s, size_t len)
{
    if (len == 0 || len > TLS_NAME_MAX + 2)
        return;
    for (size_t i = 0; i < len; i++)
        if (s[i] < 0x21 || s[i] > 0x7e)
            return;
    for (size_t off = 0; off < b->used;) {
        size_t l = strlen(b->out + off);
        if (l == len && strncasecmp(b->out + off, (const char *)s, len) == 0)
            return;
        off += l + 1;
    }
    if (b->cap - b->used < len + 1)
        return;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = s[i];
        b->out[b->used + i] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
    }
    b->out[b->used + len] = 0;
    b->used += len + 1;
    b->count++;
}

/* The host part of a sip: URI without a user part (RFC 5922 §7.1 step 1), or len 0. */
static size_t sip_uri_host(const unsigned char *u, size_t len, const unsigned char **host)
{
    if (len < 5 || strncasecmp((const char *)u, "sip:", 4) != 0 || memchr(u, '@', len) != NULL)
        return 0;
    const unsigned char *p = u + 4, *end = u + len;
    const unsigned char *q = p;
    if (*p == '[') { /* IPv6 reference */
        while (q < end && *q != ']')
            q++;
        if (q == end)
            return 0;
        q++;
    } else {
        while (q < end && *q != ':' && *q != ';' && *q != '?')
            q++;
    }
    *host = p;
    return (size_t)(q - p);
}

/* Walks the subjectAltName extension of crt (mbedTLS 2.28 keeps only dNSName and otherName
 * entries in subject_alt_names, so the raw extensions are read) and calls visit for each
 * GeneralName of context tag `want` ([2] dNSName, [6] URI, [7] iPAddress) with its value.
 * Returns -1 when the certificate has no subjectAltName, else 0. */
static int san_walk(const mbedtls_x509_crt *crt, int want,
                    void (*visit)(void *arg, const unsigned char *v, size_t len), void *arg)
{
    static const unsigned char oid_san[] = MBEDTLS_OID_SUBJECT_ALT_NAME;
    unsigned char *p = crt->v3_ext.p, *end;
    size_t len;
    if (p == NULL || crt->v3_ext.len == 0)
        return -1;
    end = p + crt->v3_ext.len;
    if (mbedtls_asn1_get_tag(&p, end, &len, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE) != 0)
        return -1;
    end = p + len;
    while (p < end) {
        size_t elen, olen, vlen;
        int critical;
        if (mbedtls_asn1_get_tag(&p, end, &elen, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE) != 0)
            return -1;
        unsigned char *eend = p + elen;
        if (mbedtls_asn1_get_tag(&p, eend, &olen, MBEDTLS_ASN1_OID) != 0)
            return -1;
        int is_san = olen == sizeof(oid_san) - 1 && memcmp(p, oid_san, olen) == 0;
        p += olen;
        (void)mbedtls_asn1_get_bool(&p, eend, &critical); /* DEFAULT FALSE: may be absent */
        if (mbedtls_asn1_get_tag(&p, eend, &vlen, MBEDTLS_ASN1_OCTET_STRING) != 0)
            return -1;
        if (!is_san) {
            p = eend;
            continue;
        }
        unsigned char *q = p, *vend = p + vlen;
        size_t slen;
        if (mbedtls_asn1_get_tag(&q, vend, &slen, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE) != 0)
            return 0; /* mbedTLS accepted the certificate, so this does not happen */
        vend = q + slen;
        while (q < vend) {
            int tag = *q++;
            size_t glen;
            if (mbedtls_asn1_get_len(&q, vend, &glen) != 0)
                return 0;
            if (tag == (MBEDTLS_ASN1_CONTEXT_SPECIFIC | want))
                visit(arg, q, glen);
            q += glen;
        }
        return 0;
    }
    return -1;
}

static void visit_sip_uri(void *arg, const unsigned char *v, size_t len)
{
    const unsigned char *host;
    size_t hlen = sip_uri_host(v, len, &host);
    if (hlen)
        id_add(arg, host, hlen);
}

static void visit_dns(void *arg, const unsigned char *v, size_t len)
{
    id_add(arg, v, len);
}

struct ip_match {
    const unsigned char *ip;
    size_t len;
    int found;
};

static void visit_ip(void *arg, const unsigned char *v, size_t len)
{
    struct ip_match *m = arg;
    if (len == m->len && memcmp(v, m->ip, len) == 0)
        m->found = 1;
}

/* A CN that reads as a DNS name (letters, digits, '-', '.', a leading "*." allowed). */
static int dns_like(const unsigned char *s, size_t len)
{
    if (len == 0 || len > TLS_NAME_MAX)
        return 0;
    size_t i = len > 2 && s[0] == '*' && s[1] == '.' ? 2 : 0;
    for (; i < len; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '-' || s[i] == '.'))
            return 0;
    return 1;
}

/* RFC 5922 §7.1: sip: URI hosts; else, when there is none, the dNSNames; the CN only when
 * the certificate has no subjectAltName at all. */
static int crt_identities(const mbedtls_x509_crt *crt, char *out, size_t cap)
{
    struct idbuf b = { out, cap, 0, 0 };
    if (san_walk(crt, MBEDTLS_X509_SAN_UNIFORM_RESOURCE_IDENTIFIER, visit_sip_uri, &b) == 0) {
        if (b.count == 0)
            san_walk(crt, MBEDTLS_X509_SAN_DNS_NAME, visit_dns, &b);
        return b.count;
    }
    for (const mbedtls_x509_name *n = &crt->subject; n != NULL; n = n->next)
        if (n->oid.p != NULL && MBEDTLS_OID_CMP(MBEDTLS_OID_AT_CN, &n->oid) == 0 &&
            dns_like(n->val.p, n->val.len))
            id_add(&b, n->val.p, n->val.len);
    return b.count;
}

/* Parses one PEM (or DER) certificate of len bytes, not necessarily NUL-terminated. */
static int parse_one(mbedtls_x509_crt *chain, const char *pem, size_t len)
{
    if (pem == NULL || len == 0 || len > TLS_PEM_MAX)
        return -1;
    unsigned char *buf = malloc(len + 1);
    if (buf == NULL)
        return -1;
    memcpy(buf, pem, len);
    buf[len] = 0;
    /* the NUL counts for a PEM; a DER certificate is exactly len bytes */
    int pemish = memmem(buf, len, "-----BEGIN", 10) != NULL;
    int ret = mbedtls_x509_crt_parse(chain, buf, pemish ? len + 1 : len);
    free(buf);
    return ret == 0 ? 0 : -1;
}

int tls_sip_identities(const char *pem, size_t len, char *out, size_t cap)
{
    mbedtls_x509_crt crt;
    mbedtls_x509_crt_init(&crt);
    int n = -1;
    if (parse_one(&crt, pem, len) == 0)
        n = crt_identities(&crt, out, cap);
    mbedtls_x509_crt_free(&crt);
    return n;
}

/* Readable text of x509 verification flags, "; "-joined. */
static void describe_flags(uint32_t flags, char *out, size_t cap)
{
    static const struct { uint32_t bits; const char *text; } known[] = {
        { MBEDTLS_X509_BADCERT_EXPIRED, "certificate has expired" },
        { MBEDTLS_X509_BADCERT_FUTURE, "certificate is not yet valid" },
        { MBEDTLS_X509_BADCERT_NOT_TRUSTED, "not trusted" },
        { MBEDTLS_X509_BADCERT_REVOKED, "certificate has been revoked" },
        { MBEDTLS_X509_BADCERT_CN_MISMATCH, "certificate name does not match" },
        { MBEDTLS_X509_BADCERT_KEY_USAGE | MBEDTLS_X509_BADCERT_EXT_KEY_USAGE |
          MBEDTLS_X509_BADCERT_NS_CERT_TYPE, "certificate not allowed for this use" },
        { MBEDTLS_X509_BADCERT_BAD_MD | MBEDTLS_X509_BADCERT_BAD_PK | MBEDTLS_X509_BADCERT_BAD_KEY,
          "certificate uses an unacceptable algorithm or key" },
        { MBEDTLS_X509_BADCERT_MISSING, "no certificate" },
        { MBEDTLS_X509_BADCERT_SKIP_VERIFY, "verification skipped" },
    };
    size_t n = 0;
    out[0] = 0;
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
        if (!(flags & known[i].bits))
            continue;
        flags &= ~known[i].bits;
        int w = snprintf(out + n, cap - n, "%s%s", n ? "; " : "", known[i].text);
        if (w < 0 || (size_t)w >= cap - n)
            return;
        n += (size_t)w;
    }
    if (flags)
        snprintf(out + n, cap - n, "%sinvalid certificate (flags 0x%x)", n ? "; " : "", (unsigned)flags);
}

int tls_validate_pems(const struct tls_ctx *ctx, const char *const *pems, const size_t *lens, size_t n,
                      char *err, size_t errlen)
{
    if (n == 0) {
        errf(err, errlen, "no certificate");
        return 0;
    }
    if (n > TLS_CHAIN_MAX) {
        errf(err, errlen, "too many certificates (max %d)", TLS_CHAIN_MAX);
        return 0;
    }
    if (ctx == NULL) {
        errf(err, errlen, "not trusted (TLS is not configured)");
        return 0;
    }
    mbedtls_x509_crt chain;
    mbedtls_x509_crt_init(&chain);
    int ok = 0;
    size_t i;
    for (i = 0; i < n; i++)
        if (parse_one(&chain, pems[i], lens[i]) != 0)
            break;
    if (i < n) {
        errf(err, errlen, "cannot parse certificate %zu", i + 1);
    } else {
        uint32_t flags = 0;
        int ret = mbedtls_x509_crt_verify(&chain, ctx->ca, NULL, NULL, &flags, NULL, NULL);
        if (ret == 0) {
            ok = 1;
        } else if (flags) {
            char text[256];
            describe_flags(flags, text, sizeof(text));
            errf(err, errlen, "%s", text);
        } else {
            char e[160];
            errf(err, errlen, "%s", mbed_err(ret, e, sizeof(e)));
        }
    }
    mbedtls_x509_crt_free(&chain);
    return ok;
}

/* ----- contexts ----- */

int tls_have_13(void)
{
#if defined(MBEDTLS_SSL_PROTO_TLS1_3)
    return 1;
#else
    return 0;
#endif
}

/* RFC 6066 §3 on the server: records the name the client asked for and picks the
 * certificate of the matching tls.sni entry (exact name, else "*.rest" for one leading
 * label), else keeps the default one. A name we cannot use is not an error: the default
 * certificate answers and the peer decides. */
static int on_sni(void *p, mbedtls_ssl_context *ssl, const unsigned char *name, size_t len)
{
    struct tls_ctx *c = p;
    struct tls_session *s = session_of(ssl);
    if (len > 0 && name[len - 1] == '.')
        len--;
    if (len == 0 || len > TLS_NAME_MAX)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (name[i] < 0x21 || name[i] > 0x7e)
            return 0;
    free(s->name);
    if ((s->name = malloc(len + 1)) == NULL)
        return 0;
    for (size_t i = 0; i < len; i++)
        s->name[i] = (char)(name[i] >= 'A' && name[i] <= 'Z' ? name[i] + 32 : name[i]);
    s->name[len] = 0;
    const char *dot = strchr(s->name, '.');
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < c->nsni; i++) {
            const char *n = c->sni[i].name;
            int hit = pass == 0 ? strcasecmp(n, s->name) == 0
                                : n[0] == '*' && n[1] == '.' && dot != NULL && dot > s->name &&
                                  strcasecmp(n + 1, dot) == 0;
            if (hit)
                return mbedtls_ssl_set_hs_own_cert(ssl, &c->sni[i].crt, &c->sni[i].key);
        }
    }
    return 0;
}

/* Outgoing connections: the server name is checked against the certificate's SIP
 * identities (RFC 5922 §7.3: exact, case-insensitive, no wildcard or suffix match, §7.2),
 * replacing mbedTLS's DNS name / CN check; an IP literal against its iPAddress entries
 * (RFC 5280 §4.2.1.6). Only the leaf's flags change. */
static int on_verify(void *p, mbedtls_x509_crt *crt, int depth, uint32_t *flags)
{
    struct tls_session *s = p;
    if (depth != 0 || s->name == NULL)
        return 0;
    int match = 0;
    if (s->iplen) {
        struct ip_match m = { s->ip, s->iplen, 0 };
        san_walk(crt, MBEDTLS_X509_SAN_IP_ADDRESS, visit_ip, &m);
        match = m.found;
    } else {
        char ids[TLS_IDS_MAX];
        int n = crt_identities(crt, ids, sizeof(ids));
        for (int i = 0, off = 0; i < n && !match; i++) {
            match = strcasecmp(ids + off, s->name) == 0;
            off += (int)strlen(ids + off) + 1;
        }
    }
    if (match)
        *flags &= ~(uint32_t)MBEDTLS_X509_BADCERT_CN_MISMATCH;
    else
        *flags |= MBEDTLS_X509_BADCERT_CN_MISMATCH;
    return 0;
}

static void ctx_free(struct tls_ctx *c)
{
    mbedtls_ssl_config_free(&c->server);
    mbedtls_ssl_config_free(&c->client_verify);
    mbedtls_ssl_config_free(&c->client_noverify);
    mbedtls_ssl_cache_free(&c->cache);
    for (size_t i = 0; i < c->nsni; i++) {
        mbedtls_x509_crt_free(&c->sni[i].crt);
        mbedtls_pk_free(&c->sni[i].key);
        free(c->sni[i].name);
    }
    free(c->sni);
    if (c->ca != NULL) {
        mbedtls_x509_crt_free(c->ca);
        free(c->ca);
    }
    mbedtls_x509_crt_free(&c->cert);
    mbedtls_pk_free(&c->key);
    mbedtls_ctr_drbg_free(&c->drbg);
    mbedtls_entropy_free(&c->entropy);
    free(c);
}

/* Key exchange groups, cheapest first: mbedTLS 2.28's default order starts with
 * secp521r1, which a client offering it gets, at about twice the handshake CPU of x25519
 * or P-256 for no practical gain. The others stay for clients that offer nothing else. */
static const mbedtls_ecp_group_id curves[] = {
#if defined(MBEDTLS_ECP_DP_CURVE25519_ENABLED)
    MBEDTLS_ECP_DP_CURVE25519,
#endif
    MBEDTLS_ECP_DP_SECP256R1,
    MBEDTLS_ECP_DP_SECP384R1,
    MBEDTLS_ECP_DP_SECP521R1,
    MBEDTLS_ECP_DP_NONE,
};

static int conf_common(struct tls_ctx *c, mbedtls_ssl_config *conf, int endpoint, int authmode,
                       int minor, char *err, size_t errlen)
{
    char e[160];
    int ret = mbedtls_ssl_config_defaults(conf, endpoint, MBEDTLS_SSL_TRANSPORT_STREAM,
                                          MBEDTLS_SSL_PRESET_DEFAULT);
    if (ret == 0)
        ret = mbedtls_ssl_conf_own_cert(conf, &c->cert, &c->key);
    if (ret != 0) {
        errf(err, errlen, "tls: %s", mbed_err(ret, e, sizeof(e)));
        return -1;
    }
    mbedtls_ssl_conf_rng(conf, mbedtls_ctr_drbg_random, &c->drbg);
    mbedtls_ssl_conf_ca_chain(conf, c->ca, NULL);
    mbedtls_ssl_conf_authmode(conf, authmode);
    mbedtls_ssl_conf_min_version(conf, MBEDTLS_SSL_MAJOR_VERSION_3, minor);
    mbedtls_ssl_conf_curves(conf, curves);
    return 0;
}

int tls_ctx_new(const struct config *cfg, struct tls_ctx **out, char *err, size_t errlen)
{
    static const char pers[] = "lunasip tls";
    char e[160];
    *out = NULL;

    /* tls.min_version: the config accepts "1.2" and "1.3" */
    const char *minv = cfg->tls_min_version ? cfg->tls_min_version : "1.2";
    int minor;
    if (strcmp(minv, "1.2") == 0) {
        minor = MBEDTLS_SSL_MINOR_VERSION_3;
    } else if (strcmp(minv, "1.3") == 0 && tls_have_13()) {
        minor = 4; /* MBEDTLS_SSL_MINOR_VERSION_4 */
    } else if (strcmp(minv, "1.3") == 0) {
        errf(err, errlen, "tls.min_version: \"1.3\" is not available: mbedTLS %s speaks TLS 1.2 "
             "only; allowed: \"1.2\"", MBEDTLS_VERSION_STRING);
        return -1;
    } else {
        errf(err, errlen, "tls.min_version: \"%s\" is not supported; allowed: \"1.2\"%s", minv,
             tls_have_13() ? ", \"1.3\"" : "");
        return -1;
    }
    if (cfg->tls_certificate == NULL || cfg->tls_private_key == NULL) {
        errf(err, errlen, "%s: not set", cfg->tls_certificate == NULL ? "tls.certificate" : "tls.private_key");
        return -1;
    }

    struct tls_ctx *c = calloc(1, sizeof(*c));
    if (c == NULL || (c->ca = calloc(1, sizeof(*c->ca))) == NULL ||
        (cfg->ntls_sni && (c->sni = calloc(cfg->ntls_sni, sizeof(*c->sni))) == NULL)) {
        if (c != NULL) {
            free(c->ca);
            free(c);
        }
        errf(err, errlen, "tls: out of memory");
        return -1;
    }
    c->refs = 1;
    mbedtls_entropy_init(&c->entropy);
    mbedtls_ctr_drbg_init(&c->drbg);
    mbedtls_x509_crt_init(&c->cert);
    mbedtls_pk_init(&c->key);
    mbedtls_x509_crt_init(c->ca);
    mbedtls_ssl_cache_init(&c->cache);
    mbedtls_ssl_config_init(&c->server);
    mbedtls_ssl_config_init(&c->client_verify);
    mbedtls_ssl_config_init(&c->client_noverify);
    c->nsni = cfg->ntls_sni;
    for (size_t i = 0; i < c->nsni; i++) {
        mbedtls_x509_crt_init(&c->sni[i].crt);
        mbedtls_pk_init(&c->sni[i].key);
    }

    int ret = mbedtls_ctr_drbg_seed(&c->drbg, mbedtls_entropy_func, &c->entropy,
                                    (const unsigned char *)pers, sizeof(pers) - 1);
    if (ret != 0) {
        errf(err, errlen, "tls: cannot seed the random generator: %s", mbed_err(ret, e, sizeof(e)));
        goto fail;
    }
    if (load_crt(&c->cert, "tls.certificate", cfg->tls_certificate, TLS_FILE_MAX, err, errlen) != 0 ||
        load_key(&c->key, &c->cert, "tls.private_key", cfg->tls_private_key, "tls.certificate",
                 cfg->tls_certificate, err, errlen) != 0)
        goto fail;
    for (size_t i = 0; i < c->nsni; i++) {
        const struct config_tls_sni *s = &cfg->tls_sni[i];
        char kc[320], kk[320];
        snprintf(kc, sizeof(kc), "tls.sni[\"%s\"].certificate", s->name ? s->name : "");
        snprintf(kk, sizeof(kk), "tls.sni[\"%s\"].private_key", s->name ? s->name : "");
        if (s->name == NULL || s->name[0] == 0) {
            errf(err, errlen, "tls.sni: an entry has no host name");
            goto fail;
        }
        if ((c->sni[i].name = strdup(s->name)) == NULL) {
            errf(err, errlen, "tls: out of memory");
            goto fail;
        }
        for (char *p = c->sni[i].name; *p; p++)
            if (*p >= 'A' && *p <= 'Z')
                *p = (char)(*p + 32);
        if (s->certificate == NULL || s->private_key == NULL) {
            errf(err, errlen, "%s: missing", s->certificate == NULL ? kc : kk);
            goto fail;
        }
        if (load_crt(&c->sni[i].crt, kc, s->certificate, TLS_FILE_MAX, err, errlen) != 0 ||
            load_key(&c->sni[i].key, &c->sni[i].crt, kk, s->private_key, kc, s->certificate,
                     err, errlen) != 0)
            goto fail;
    }
    int have_ca_file = cfg->tls_ca_file != NULL;
    if (have_ca_file) {
        if (load_crt(c->ca, "tls.ca_file", cfg->tls_ca_file, TLS_CA_MAX, err, errlen) != 0)
            goto fail;
    } else if (access(TLS_SYSTEM_BUNDLE, R_OK) == 0) {
        ret = mbedtls_x509_crt_parse_file(c->ca, TLS_SYSTEM_BUNDLE);
        if (ret < 0)
            LOG_WARN("tls: %s: %s; no certificate is trusted", TLS_SYSTEM_BUNDLE,
                     mbed_err(ret, e, sizeof(e)));
    }

    static const int modes[] = {
        [CONFIG_VERIFY_NONE] = MBEDTLS_SSL_VERIFY_NONE,
        [CONFIG_VERIFY_OPTIONAL] = MBEDTLS_SSL_VERIFY_OPTIONAL,
        [CONFIG_VERIFY_REQUIRED] = MBEDTLS_SSL_VERIFY_REQUIRED,
    };
    unsigned vc = (unsigned)cfg->tls_verify_client;
    if (vc > CONFIG_VERIFY_REQUIRED) {
        errf(err, errlen, "tls.verify_client: invalid; allowed: none, optional, required");
        goto fail;
    }
    if (conf_common(c, &c->server, MBEDTLS_SSL_IS_SERVER, modes[vc], minor, err, errlen) != 0 ||
        conf_common(c, &c->client_verify, MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_VERIFY_REQUIRED, minor,
                    err, errlen) != 0 ||
        conf_common(c, &c->client_noverify, MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_VERIFY_OPTIONAL, minor,
                    err, errlen) != 0)
        goto fail;
    mbedtls_ssl_conf_sni(&c->server, on_sni, c);
    mbedtls_ssl_conf_session_cache(&c->server, &c->cache, mbedtls_ssl_cache_get, mbedtls_ssl_cache_set);
    /* The CA names in a CertificateRequest help a client pick its certificate; the system
     * bundle's ~150 names would only bloat it (mbedTLS cuts the list at its buffer size). */
    mbedtls_ssl_conf_cert_req_ca_list(&c->server, have_ca_file ? MBEDTLS_SSL_CERT_REQ_CA_LIST_ENABLED
                                                               : MBEDTLS_SSL_CERT_REQ_CA_LIST_DISABLED);
    *out = c;
    return 0;
fail:
    ctx_free(c);
    return -1;
}

void tls_ctx_ref(struct tls_ctx *c)
{
    __atomic_add_fetch(&c->refs, 1, __ATOMIC_RELAXED);
}

void tls_ctx_unref(struct tls_ctx *c)
{
    if (c != NULL && __atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) == 0)
        ctx_free(c);
}

/* ----- sessions ----- */

/* The BIO on our non-blocking fd. send() with MSG_NOSIGNAL: a peer gone away is an error
 * of this connection, never a SIGPIPE for the process. */
static int bio_send(void *p, const unsigned char *buf, size_t len)
{
    struct tls_session *s = p;
    if (len > INT_MAX)
        len = INT_MAX;
    for (;;) {
        ssize_t n = send(s->fd, buf, len, MSG_NOSIGNAL);
        if (n != -1)
            return (int)n;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return MBEDTLS_ERR_SSL_WANT_WRITE;
        s->sys_errno = errno;
        if (errno == EPIPE || errno == ECONNRESET)
            return MBEDTLS_ERR_NET_CONN_RESET;
        return MBEDTLS_ERR_NET_SEND_FAILED;
    }
}

static int bio_recv(void *p, unsigned char *buf, size_t len)
{
    struct tls_session *s = p;
    if (len > INT_MAX)
        len = INT_MAX;
    for (;;) {
        ssize_t n = recv(s->fd, buf, len, 0);
        if (n != -1)
            return (int)n; /* 0: EOF, mbedTLS answers MBEDTLS_ERR_SSL_CONN_EOF */
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return MBEDTLS_ERR_SSL_WANT_READ;
        s->sys_errno = errno;
        if (errno == EPIPE || errno == ECONNRESET)
            return MBEDTLS_ERR_NET_CONN_RESET;
        return MBEDTLS_ERR_NET_RECV_FAILED;
    }
}

static struct tls_session *session_new(struct tls_ctx *ctx, const mbedtls_ssl_config *conf, int fd, int server)
{
    struct tls_session *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    mbedtls_ssl_init(&s->ssl);
    if (mbedtls_ssl_setup(&s->ssl, conf) != 0) {
        mbedtls_ssl_free(&s->ssl);
        free(s);
        return NULL;
    }
    s->fd = fd;
    s->server = server;
    s->ctx = ctx;
    tls_ctx_ref(ctx);
    mbedtls_ssl_set_bio(&s->ssl, s, bio_send, bio_recv, NULL);
    return s;
}

struct tls_session *tls_session_server(struct tls_ctx *ctx, int fd)
{
    return session_new(ctx, &ctx->server, fd, 1);
}

struct tls_session *tls_session_client(struct tls_ctx *ctx, int fd, const char *server_name, int verify)
{
    struct tls_session *s = session_new(ctx, verify ? &ctx->client_verify : &ctx->client_noverify, fd, 0);
    if (s == NULL || server_name == NULL || server_name[0] == 0)
        return s;
    size_t len = strlen(server_name);
    if (server_name[len - 1] == '.')
        len--;
    if ((s->name = strndup(server_name, len)) == NULL)
        goto fail;
    /* An IP literal (a caller should pass NULL, but it is cheap to get right): no SNI
     * (RFC 6066 §3 forbids addresses there), and the iPAddress entries must hold it. */
    char lit[INET6_ADDRSTRLEN + 2];
    const char *a = s->name;
    size_t alen = strlen(a);
    if (alen > 2 && alen < sizeof(lit) && a[0] == '[' && a[alen - 1] == ']') {
        memcpy(lit, a + 1, alen - 2);
        lit[alen - 2] = 0;
        a = lit;
    }
    if (inet_pton(AF_INET, a, s->ip) == 1)
        s->iplen = 4;
    else if (inet_pton(AF_INET6, a, s->ip) == 1)
        s->iplen = 16;
    else if (mbedtls_ssl_set_hostname(&s->ssl, s->name) != 0) /* SNI, and mbedTLS's name check */
        goto fail;
    mbedtls_ssl_set_verify(&s->ssl, on_verify, s); /* ... which on_verify replaces */
    return s;
fail:
    tls_session_free(s);
    return NULL;
}

void tls_session_free(struct tls_session *s)
{
    if (s == NULL)
        return;
    mbedtls_ssl_free(&s->ssl);
    free(s->name);
    tls_ctx_unref(s->ctx);
    free(s);
}

/* Maps an mbedTLS result of operation `what` to enum tls_rc, recording the failure text. */
static int map_rc(struct tls_session *s, int ret, const char *what)
{
    char e[160];
    switch (ret) {
    case MBEDTLS_ERR_SSL_WANT_READ:
        return TLS_WANT_READ;
    case MBEDTLS_ERR_SSL_WANT_WRITE:
        return TLS_WANT_WRITE;
    case 0:
    case MBEDTLS_ERR_SSL_CONN_EOF:
        snprintf(s->err, sizeof(s->err), "%s: connection closed by peer", what);
        return TLS_CLOSED;
    case MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY:
        snprintf(s->err, sizeof(s->err), "%s: close_notify received", what);
        return TLS_CLOSED;
    case MBEDTLS_ERR_NET_CONN_RESET:
    case MBEDTLS_ERR_NET_SEND_FAILED:
    case MBEDTLS_ERR_NET_RECV_FAILED:
        snprintf(s->err, sizeof(s->err), "%s: %s (%s)", what, mbed_err(ret, e, sizeof(e)),
                 strerror(s->sys_errno));
        return TLS_FAIL;
    case MBEDTLS_ERR_X509_CERT_VERIFY_FAILED: {
        char text[128];
        describe_flags(mbedtls_ssl_get_verify_result(&s->ssl), text, sizeof(text));
        snprintf(s->err, sizeof(s->err), "%s: %s: %s", what, mbed_err(ret, e, sizeof(e)), text);
        return TLS_FAIL;
    }
    default:
        snprintf(s->err, sizeof(s->err), "%s: %s", what, mbed_err(ret, e, sizeof(e)));
        return TLS_FAIL;
    }
}

int tls_handshake(struct tls_session *s)
{
    if (s->done)
        return TLS_OK;
    if (s->failed)
        return TLS_FAIL;
    int ret = mbedtls_ssl_handshake(&s->ssl);
    if (ret == 0) {
        s->done = 1;
        return TLS_OK;
    }
    int rc = map_rc(s, ret, "handshake");
    if (rc == TLS_CLOSED)
        rc = TLS_FAIL; /* EOF in the middle of a handshake is a failed handshake */
    if (rc == TLS_FAIL)
        s->failed = 1;
    return rc;
}

long tls_read(struct tls_session *s, void *buf, size_t len)
{
    if (s->failed)
        return TLS_FAIL;
    if (len == 0)
        return 0;
    int ret = mbedtls_ssl_read(&s->ssl, buf, len);
    if (ret > 0)
        return ret;
    return map_rc(s, ret, "read");
}

long tls_write(struct tls_session *s, const void *buf, size_t len)
{
    if (s->failed)
        return TLS_FAIL;
    if (len == 0)
        return 0;
    int ret = mbedtls_ssl_write(&s->ssl, buf, len);
    if (ret > 0)
        return ret;
    int rc = map_rc(s, ret, "write");
    return rc == TLS_CLOSED ? TLS_FAIL : rc;
}

/* Decrypted bytes, or 1 when a whole record waits undecrypted in mbedTLS's input buffer:
 * either way a tls_read now makes progress although the fd may never wake again. */
size_t tls_pending(const struct tls_session *s)
{
    size_t n = mbedtls_ssl_get_bytes_avail(&s->ssl);
    if (n == 0 && mbedtls_ssl_check_pending(&s->ssl))
        n = 1;
    return n;
}

void tls_close_notify(struct tls_session *s)
{
    if (s->done && !s->failed)
        (void)mbedtls_ssl_close_notify(&s->ssl);
}

const char *tls_session_error(const struct tls_session *s)
{
    return s->err[0] ? s->err : "no error";
}

const char *tls_session_version(const struct tls_session *s)
{
    return s->done ? mbedtls_ssl_get_version(&s->ssl) : "none";
}

const char *tls_session_sni(const struct tls_session *s)
{
    return s->server ? s->name : NULL;
}

int tls_session_verified(const struct tls_session *s)
{
    if (!s->done || mbedtls_ssl_get_peer_cert(&s->ssl) == NULL)
        return 0;
    return mbedtls_ssl_get_verify_result(&s->ssl) == 0 ? 1 : -1;
}

int tls_session_peer_pems(const struct tls_session *s, char **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    const mbedtls_x509_crt *chain = mbedtls_ssl_get_peer_cert(&s->ssl);
    size_t total = 0, count = 0;
    for (const mbedtls_x509_crt *c = chain; c != NULL && c->version != 0; c = c->next) {
        size_t olen = 0;
        mbedtls_pem_write_buffer(pem_begin, pem_end, c->raw.p, c->raw.len, NULL, 0, &olen);
        total += olen; /* counts the NUL */
        count++;
    }
    if (count == 0)
        return 0;
    char *buf = malloc(total);
    if (buf == NULL)
        return -1;
    size_t off = 0;
    for (const mbedtls_x509_crt *c = chain; c != NULL && c->version != 0; c = c->next) {
        size_t olen = 0;
        if (mbedtls_pem_write_buffer(pem_begin, pem_end, c->raw.p, c->raw.len,
                                     (unsigned char *)buf + off, total - off, &olen) != 0) {
            free(buf);
            return -1;
        }
        off += olen;
    }
    *out = buf;
    *n = count;
    return 0;
}

/* ----- the self-signed pair of a first run ----- */

/* Creates dir and its missing parents, mode 0700. */
static int mkdir_p(const char *dir)
{
    char path[PATH_MAX];
    size_t len = strlen(dir);
    if (len == 0 || len >= sizeof(path))
        return len == 0 ? 0 : -ENAMETOOLONG;
    memcpy(path, dir, len + 1);
    for (char *p = path + 1;; p++) {
        if (*p != '/' && *p != 0)
            continue;
        char c = *p;
        *p = 0;
        if (mkdir(path, 0700) == -1 && errno != EEXIST)
            return -errno;
        *p = c;
        if (c == 0)
            return 0;
    }
}

static int mkdir_parent(const char *file)
{
    const char *slash = strrchr(file, '/');
    if (slash == NULL || slash == file)
        return 0;
    char dir[PATH_MAX];
    size_t len = (size_t)(slash - file);
    if (len >= sizeof(dir))
        return -ENAMETOOLONG;
    memcpy(dir, file, len);
    dir[len] = 0;
    return mkdir_p(dir);
}

/* Writes a new file (never replaces one) with mode. Returns 0 or -errno. */
static int write_new(const char *path, const void *data, size_t len, mode_t mode)
{
    int fd;
    do
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    while (fd == -1 && errno == EINTR);
    if (fd == -1)
        return -errno;
    int e = 0;
    if (fchmod(fd, mode) == -1)
        e = errno;
    for (size_t off = 0; e == 0 && off < len;) {
        ssize_t n = write(fd, (const char *)data + off, len - off);
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1)
            e = errno;
        else
            off += (size_t)n;
    }
    if (e == 0 && fsync(fd) == -1)
        e = errno;
    if (close(fd) == -1 && e == 0)
        e = errno;
    if (e != 0) {
        unlink(path);
        return -e;
    }
    return 0;
}

static int write_general_name(unsigned char **p, unsigned char *start, int tag, const void *v, size_t len)
{
    int ret;
    size_t n = 0;
    MBEDTLS_ASN1_CHK_ADD(n, mbedtls_asn1_write_raw_buffer(p, start, v, len));
    MBEDTLS_ASN1_CHK_ADD(n, mbedtls_asn1_write_len(p, start, len));
    MBEDTLS_ASN1_CHK_ADD(n, mbedtls_asn1_write_tag(p, start, (unsigned char)(MBEDTLS_ASN1_CONTEXT_SPECIFIC | tag)));
    return (int)n;
}

/* subjectAltName: DNS localhost, URI sip:localhost, IP 127.0.0.1, IP ::1 (mbedTLS 2.28's
 * writer has no SAN helper). ASN.1 is written backwards from end; *der gets the start. */
static int san_der(unsigned char *buf, size_t size, unsigned char **der)
{
    static const unsigned char v4[4] = { 127, 0, 0, 1 };
    static const unsigned char v6[16] = { [15] = 1 };
    unsigned char *p = buf + size;
    int ret;
    size_t n = 0;
    MBEDTLS_ASN1_CHK_ADD(n, write_general_name(&p, buf, MBEDTLS_X509_SAN_IP_ADDRESS, v6, sizeof(v6)));
    MBEDTLS_ASN1_CHK_ADD(n, write_general_name(&p, buf, MBEDTLS_X509_SAN_IP_ADDRESS, v4, sizeof(v4)));
    MBEDTLS_ASN1_CHK_ADD(n, write_general_name(&p, buf, MBEDTLS_X509_SAN_UNIFORM_RESOURCE_IDENTIFIER,
                                               "sip:localhost", 13));
    MBEDTLS_ASN1_CHK_ADD(n, write_general_name(&p, buf, MBEDTLS_X509_SAN_DNS_NAME, "localhost", 9));
    MBEDTLS_ASN1_CHK_ADD(n, mbedtls_asn1_write_len(&p, buf, n));
    MBEDTLS_ASN1_CHK_ADD(n, mbedtls_asn1_write_tag(&p, buf, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE));
    *der = p;
    return (int)n;
}

/* Builds the EC P-256 key and the certificate, both PEM, into key_pem/crt_pem. */
static int make_pair(unsigned char *key_pem, size_t key_size, unsigned char *crt_pem, size_t crt_size,
                     char *err, size_t errlen)
{
    static const char pers[] = "lunasip self-signed";
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    mbedtls_pk_context pk;
    mbedtls_x509write_cert crt;
    mbedtls_mpi serial;
    unsigned char rnd[16], san[128], *der = NULL;
    char from[16], to[16], e[160];
    const char *step = "seed";
    int ret;

    mbedtls_entropy_init(&entropy);
    mbedtls_ctr_drbg_init(&drbg);
    mbedtls_pk_init(&pk);
    mbedtls_x509write_crt_init(&crt);
    mbedtls_mpi_init(&serial);

    /* from a day back (a peer whose clock lags must not see "not yet valid"), 10 years */
    time_t now = time(NULL), before = now - 86400, later = now + (time_t)3653 * 86400;
    struct tm tm;
    gmtime_r(&before, &tm);
    strftime(from, sizeof(from), "%Y%m%d%H%M%S", &tm);
    gmtime_r(&later, &tm);
    strftime(to, sizeof(to), "%Y%m%d%H%M%S", &tm);

    if ((ret = mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &entropy, (const unsigned char *)pers,
                                     sizeof(pers) - 1)) != 0)
        goto out;
    step = "key";
    if ((ret = mbedtls_pk_setup(&pk, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY))) != 0 ||
        (ret = mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(pk), mbedtls_ctr_drbg_random,
                                   &drbg)) != 0 ||
        (ret = mbedtls_pk_write_key_pem(&pk, key_pem, key_size)) != 0)
        goto out;
    step = "certificate";
    if ((ret = mbedtls_ctr_drbg_random(&drbg, rnd, sizeof(rnd))) != 0)
        goto out;
    rnd[0] &= 0x7f; /* a positive serial (RFC 5280 §4.1.2.2) */
    rnd[0] |= 0x40;
    int sanlen = san_der(san, sizeof(san), &der);
    if (sanlen < 0) {
        ret = sanlen;
        goto out;
    }
    mbedtls_x509write_crt_set_version(&crt, MBEDTLS_X509_CRT_VERSION_3);
    mbedtls_x509write_crt_set_md_alg(&crt, MBEDTLS_MD_SHA256);
    mbedtls_x509write_crt_set_subject_key(&crt, &pk);
    mbedtls_x509write_crt_set_issuer_key(&crt, &pk);
    if ((ret = mbedtls_mpi_read_binary(&serial, rnd, sizeof(rnd))) != 0 ||
        (ret = mbedtls_x509write_crt_set_serial(&crt, &serial)) != 0 ||
        (ret = mbedtls_x509write_crt_set_subject_name(&crt, "CN=localhost")) != 0 ||
        (ret = mbedtls_x509write_crt_set_issuer_name(&crt, "CN=localhost")) != 0 ||
        (ret = mbedtls_x509write_crt_set_validity(&crt, from, to)) != 0 ||
        (ret = mbedtls_x509write_crt_set_basic_constraints(&crt, 0, -1)) != 0 ||
        (ret = mbedtls_x509write_crt_set_key_usage(&crt, MBEDTLS_X509_KU_DIGITAL_SIGNATURE)) != 0 ||
        (ret = mbedtls_x509write_crt_set_subject_key_identifier(&crt)) != 0 ||
        (ret = mbedtls_x509write_crt_set_extension(&crt, MBEDTLS_OID_SUBJECT_ALT_NAME,
                                                   MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_ALT_NAME), 0,
                                                   der, (size_t)sanlen)) != 0 ||
        (ret = mbedtls_x509write_crt_pem(&crt, crt_pem, crt_size, mbedtls_ctr_drbg_random, &drbg)) != 0)
        goto out;
out:
    if (ret != 0)
        errf(err, errlen, "cannot make the self-signed %s: %s", step, mbed_err(ret, e, sizeof(e)));
    mbedtls_mpi_free(&serial);
    mbedtls_x509write_crt_free(&crt);
    mbedtls_pk_free(&pk);
    mbedtls_ctr_drbg_free(&drbg);
    mbedtls_entropy_free(&entropy);
    return ret == 0 ? 0 : -1;
}

int tls_generate_self_signed(const char *cert_path, const char *key_path, char *err, size_t errlen)
{
    struct stat st;
    int have_cert = lstat(cert_path, &st) == 0, have_key = lstat(key_path, &st) == 0;
    if (have_cert && have_key)
        return 0;
    if (have_cert || have_key) {
        errf(err, errlen, "%s exists but %s does not: provide both or neither (a self-signed pair "
             "is written only when both are missing)", have_cert ? cert_path : key_path,
             have_cert ? key_path : cert_path);
        return -1;
    }
    int rc;
    if ((rc = mkdir_parent(cert_path)) != 0 || (rc = mkdir_parent(key_path)) != 0) {
        errf(err, errlen, "cannot create the directory of %s: %s", rc == 0 ? key_path : cert_path,
             strerror(-rc));
        return -1;
    }
    unsigned char key_pem[1024], crt_pem[4096];
    int ret = -1;
    if (make_pair(key_pem, sizeof(key_pem), crt_pem, sizeof(crt_pem), err, errlen) != 0)
        goto out;
    if ((rc = write_new(key_path, key_pem, strlen((char *)key_pem), 0600)) != 0) {
        errf(err, errlen, "%s: cannot write: %s", key_path, strerror(-rc));
        goto out;
    }
    if ((rc = write_new(cert_path, crt_pem, strlen((char *)crt_pem), 0644)) != 0) {
        unlink(key_path);
        errf(err, errlen, "%s: cannot write: %s", cert_path, strerror(-rc));
        goto out;
    }
    ret = 1;
out:
    mbedtls_platform_zeroize(key_pem, sizeof(key_pem));
    return ret;
}
