/* TLS with mbedTLS: the server and client configurations built from lunasip.conf's tls
 * table (certificate, private key, SNI certificates, ca_file, min_version, verify_client),
 * non-blocking sessions over a socket for src/conn.c, the peer chain as PEM for the
 * handshake callbacks, the checks behind lunasip.tls.validate and
 * lunasip.tls.sip_identities (RFC 5922 §7.1), and the self-signed pair written on first run.
 *
 * mbedTLS 2.28 (Debian bookworm) speaks TLS 1.2; TLS 1.3 is used only when the library
 * was built with it (MBEDTLS_SSL_PROTO_TLS1_3), else tls.min_version = "1.3" is a config
 * error naming the key. */
#ifndef LUNASIP_TLS_H
#define LUNASIP_TLS_H

#include <stddef.h>

struct config;
struct tls_ctx;
struct tls_session;

/* Builds the contexts from cfg (paths are absolute already). Reads and checks every file:
 * an unreadable or invalid certificate or key, a key that does not match its certificate,
 * a bad ca_file, an SNI entry missing a file: -1 with err naming the file and the key
 * ("tls.sni[\"sip.example.com\"].certificate: /etc/lunasip/x.crt: cannot read: ..."). The
 * client context trusts tls.ca_file, else the system bundle
 * (/etc/ssl/certs/ca-certificates.crt) when it exists. Refcount 1. */
int tls_ctx_new(const struct config *cfg, struct tls_ctx **out, char *err, size_t errlen);
void tls_ctx_ref(struct tls_ctx *c);
void tls_ctx_unref(struct tls_ctx *c);   /* frees at zero (sessions hold references) */

/* 1 when this mbedTLS can speak TLS 1.3. */
int tls_have_13(void);

/* When cert_path and key_path both do not exist, writes a self-signed RSA 2048 (or EC
 * P-256) pair there, valid 10 years, CN and subjectAltName DNS "localhost" plus URI
 * "sip:localhost" and IP 127.0.0.1/::1, key file mode 0600; creates the directory
 * (0700) when missing. Returns 1 when written, 0 when both already exist, -1 with err
 * (one exists without the other, or a write error). */
int tls_generate_self_signed(const char *cert_path, const char *key_path, char *err, size_t errlen);

/* ----- sessions ----- */

enum tls_rc {
    TLS_OK = 0,
    TLS_WANT_READ = -1,   /* call again when the fd is readable */
    TLS_WANT_WRITE = -2,  /* call again when the fd is writable */
    TLS_CLOSED = -3,      /* close_notify received, or EOF */
    TLS_FAIL = -4,        /* fatal: tls_session_error tells */
};

/* A server session (we accepted fd) or a client session (we connected; server_name is
 * the SNI to send and the name the server certificate must match when verify is set, or
 * NULL for an IP target: no SNI, no name check). The session takes a reference on ctx;
 * it does not own fd. Returns NULL when out of memory. */
struct tls_session *tls_session_server(struct tls_ctx *ctx, int fd);
struct tls_session *tls_session_client(struct tls_ctx *ctx, int fd, const char *server_name, int verify);
void tls_session_free(struct tls_session *s);

/* Advances the handshake: TLS_OK when done, TLS_WANT_READ/WRITE, or TLS_FAIL (for a server
 * session with verify_client = required this includes a client without a valid
 * certificate). */
int tls_handshake(struct tls_session *s);
/* Reads decrypted bytes: > 0 the count, or TLS_WANT_READ/WANT_WRITE/CLOSED/FAIL. */
long tls_read(struct tls_session *s, void *buf, size_t len);
/* Writes: > 0 the bytes taken (maybe fewer than len), or TLS_WANT_WRITE/WANT_READ/FAIL.
 * After a WANT_*, call again with the same bytes (mbedTLS's rule). */
long tls_write(struct tls_session *s, const void *buf, size_t len);
/* Decrypted bytes already buffered inside the session (the fd will not wake for them). */
size_t tls_pending(const struct tls_session *s);
/* Sends close_notify (best effort, non-blocking). */
void tls_close_notify(struct tls_session *s);
/* The last failure as text ("handshake: X509 - Certificate verification failed", ...). */
const char *tls_session_error(const struct tls_session *s);

/* After the handshake: the negotiated version ("TLSv1.2"), the SNI name the client asked
 * for (server sessions; NULL when none), and the result of chain verification:
 * 1 verified against the trusted CAs, 0 no certificate presented, -1 presented but not
 * verified (verify_client optional lets the script decide). */
const char *tls_session_version(const struct tls_session *s);
const char *tls_session_sni(const struct tls_session *s);
int tls_session_verified(const struct tls_session *s);

/* The peer's certificate chain, leaf first, as PEM strings: *out is one malloc'd block
 * holding n NUL-terminated strings back to back (free() it), *n their count. Returns 0
 * (n may be 0: no certificate) or -1 when out of memory. */
int tls_session_peer_pems(const struct tls_session *s, char **out, size_t *n);

/* ----- lunasip.tls for Lua ----- */

/* Verifies a chain given as PEM strings (leaf first) against tls.ca_file of the running
 * config, else the system bundle. Returns 1 valid, 0 invalid with err filled ("certificate
 * has expired", "not trusted", "no certificate", "cannot parse certificate 2"). */
int tls_validate_pems(const struct tls_ctx *ctx, const char *const *pems, const size_t *lens, size_t n,
                      char *err, size_t errlen);

/* RFC 5922 §7.1: the SIP identities of a certificate: each subjectAltName URI with scheme
 * sip (its host part, lower-case), and when there is none, each subjectAltName DNS name;
 * when there is no subjectAltName at all, the subject CN. Writes them into out as
 * NUL-separated strings (out has cap bytes) and returns their count, or -1 when the PEM
 * does not parse. */
int tls_sip_identities(const char *pem, size_t len, char *out, size_t cap);

#endif
