/* The SIP message: zero-copy parse, validation, header access, an edit list applied on
 * serialisation, and Content-Length framing for stream transports.
 * RFC 3261 §7 (messages), §8.2 / §16.3 (request validation), §18.3 (framing), §20. */
#ifndef LUNASIP_SIP_MSG_H
#define LUNASIP_SIP_MSG_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "sip_grammar.h"

enum sip_method {
    SIP_METHOD_OTHER = 0,
    SIP_METHOD_INVITE,
    SIP_METHOD_ACK,
    SIP_METHOD_BYE,
    SIP_METHOD_CANCEL,
    SIP_METHOD_OPTIONS,
    SIP_METHOD_REGISTER,
    SIP_METHOD_PRACK,
    SIP_METHOD_SUBSCRIBE,
    SIP_METHOD_NOTIFY,
    SIP_METHOD_PUBLISH,
    SIP_METHOD_INFO,
    SIP_METHOD_REFER,
    SIP_METHOD_MESSAGE,
    SIP_METHOD_UPDATE,
};

/* Known headers; compact forms map to the same id (RFC 3261 §7.3.3, IANA list). */
enum sip_hdr_id {
    SIP_HDR_OTHER = 0,
    SIP_HDR_VIA,            /* v */
    SIP_HDR_FROM,           /* f */
    SIP_HDR_TO,             /* t */
    SIP_HDR_CALL_ID,        /* i */
    SIP_HDR_CSEQ,
    SIP_HDR_MAX_FORWARDS,
    SIP_HDR_CONTENT_LENGTH, /* l */
    SIP_HDR_CONTENT_TYPE,   /* c */
    SIP_HDR_CONTACT,        /* m */
    SIP_HDR_ROUTE,
    SIP_HDR_RECORD_ROUTE,
    SIP_HDR_PATH,
    SIP_HDR_PROXY_REQUIRE,
    SIP_HDR_REQUIRE,
    SIP_HDR_SUPPORTED,      /* k */
    SIP_HDR_UNSUPPORTED,
    SIP_HDR_EXPIRES,
    SIP_HDR_CONTENT_ENCODING, /* e */
    SIP_HDR_SUBJECT,        /* s */
    SIP_HDR_EVENT,          /* o */
    SIP_HDR_REFER_TO,       /* r */
    SIP_HDR_ALLOW_EVENTS,   /* u */
    SIP_HDR_REFERRED_BY,    /* b */
    SIP_HDR_SESSION_EXPIRES,/* x */
    SIP_HDR_ACCEPT_CONTACT, /* a */
    SIP_HDR_REJECT_CONTACT, /* j */
    SIP_HDR_REQUEST_DISPOSITION, /* d */
    SIP_HDR_IDENTITY,       /* y */
    SIP_HDR_ALLOW,
    SIP_HDR_REASON,
    SIP_HDR_AUTHORIZATION,
    SIP_HDR_PROXY_AUTHORIZATION,
    SIP_HDR_WWW_AUTHENTICATE,
    SIP_HDR_PROXY_AUTHENTICATE,
    SIP_HDR_USER_AGENT,
    SIP_HDR_SERVER,
    /* added for list detection (SIP_HDR_F_LIST); appended so earlier values keep their number */
    SIP_HDR_ACCEPT,
    SIP_HDR_ACCEPT_ENCODING,
    SIP_HDR_ACCEPT_LANGUAGE,
    SIP_HDR_CONTENT_LANGUAGE,
    SIP_HDR_IN_REPLY_TO,
    SIP_HDR_CALL_INFO,
    SIP_HDR_ALERT_INFO,
    SIP_HDR_ERROR_INFO,
    SIP_HDR_WARNING,
    SIP_HDR_SERVICE_ROUTE,
    SIP_HDR__COUNT
};

/* Flags of a header entry. */
#define SIP_HDR_F_FOLDED  0x01u /* value contains CRLF folding: read it through sip_msg_hdr_value */
#define SIP_HDR_F_NEW     0x02u /* added by an edit: name and value live in the message arena */
#define SIP_HDR_F_DELETED 0x04u /* removed by an edit: kept for serialisation bookkeeping */
#define SIP_HDR_F_LIST    0x08u /* a header whose value is a comma-separated list (Via, Contact, Route, ...) */

struct sip_hdr {
    struct sip_str name;  /* as written (compact or full); for NEW headers the name given */
    struct sip_str value; /* trimmed raw value; may contain folding when F_FOLDED */
    struct sip_str line;  /* original bytes of the whole header line incl. CRLF (NEW: empty) */
    uint16_t id;          /* enum sip_hdr_id */
    uint16_t flags;
};

/* Why a message was refused; status is the response a request gets (0 = drop). */
struct sip_parse_error {
    int status;          /* 400, 505, 0 ... */
    const char *reason;  /* static string, e.g. "Bad Via" (used as reason phrase and log) */
};

enum sip_transport {
    SIP_TP_UDP = 0,
    SIP_TP_TCP,
    SIP_TP_TLS,
    SIP_TP_WS,
    SIP_TP_WSS,
};

/* Limits: a message with more header lines than this is refused (400). */
#define SIP_MSG_MAX_HEADERS 512

struct sip_msg_arena; /* private: edit storage */
struct txn;

/* A parsed message. Reference-counted (sip_msg_ref/unref); owns its buffer (a copy of the
 * received bytes, never modified). Slices point into buf or into the arena. */
struct sip_msg {
    int refcount;
    uint8_t is_request;

    /* start line */
    enum sip_method method;
    struct sip_str method_str;
    struct sip_str ruri_str;     /* current R-URI (after an edit: arena) */
    struct sip_uri ruri;
    struct sip_str version;      /* "SIP/2.0" */
    int status;                  /* responses: 100..699 */
    struct sip_str reason;

    /* headers, in wire order, edits included (deleted entries flagged) */
    struct sip_hdr *hdrs;
    uint32_t nhdrs;
    uint32_t hdrs_cap;

    /* validated essentials, as received (not updated by edits) */
    struct sip_via via1;         /* top Via */
    uint32_t nvia;               /* number of via-parms in the message */
    struct sip_nameaddr from, to;
    struct sip_str call_id;
    uint32_t cseq;
    enum sip_method cseq_method;
    struct sip_str cseq_method_str;
    int max_forwards;            /* -1 when absent */
    int64_t content_length;      /* -1 when absent */
    struct sip_str body;

    const char *buf;             /* owned copy of the message bytes */
    uint32_t len;                /* bytes of this message (head + body) */
    uint32_t head_len;           /* start line + headers + empty line */
    uint8_t ruri_edited;
    uint8_t body_edited;         /* sip_msg_set_body was called: Content-Length is rewritten */
    uint32_t start_len;          /* bytes of the received start line incl. CRLF */

    /* where it came from (filled by the transport) */
    enum sip_transport transport;
    struct sockaddr_storage src;
    socklen_t srclen;
    struct sockaddr_storage dst; /* local address it arrived on */
    socklen_t dstlen;
    void *listener;              /* struct listener *, borrowed */
    uint64_t conn_id;            /* stream transports: the connection it came on (src/conn.h),
                                  * 0 for UDP */
    struct sip_str route_user;   /* req:loose_route(): the user part of the last Route of
                                  * ours it consumed (a flow token, src/flow.h), in buf */

    uint32_t handle;             /* Lua handle slot, 0 = none (see lapi.c) */
    struct txn *txn;             /* requests: the server transaction answering it, set and
                                  * cleared by its transaction user (sip_core.c, proxy.c) */
    uint8_t max_forwards_final;  /* req:check_max_forwards added the missing Max-Forwards:
                                  * it leaves as written (the core does not decrement it) */
    uint8_t proxied;             /* the proxy core made its once-only edits (Max-Forwards,
                                  * received/rport): a re-routing does not repeat them */

    struct sip_msg_arena *arena;
};

/* Parses one message from buf[0..len). flags: SIP_PARSE_DATAGRAM (UDP: a missing
 * Content-Length means "rest of the datagram", bytes beyond Content-Length are ignored,
 * RFC 3261 §18.3) or SIP_PARSE_STREAM (Content-Length mandatory, len must be exactly the
 * framed length). Copies buf. Validates: start line (method token, R-URI syntax, SP
 * separators exactly once, version SIP/2.0 else 505), header line syntax, every Via,
 * From, To, Call-ID, CSeq (<= 2^32-1, method equal to the request's), Max-Forwards
 * (<= 255), Content-Length (one value, digits, not beyond the data), Contact (when
 * present), single-valued headers present once, and for requests the mandatory headers
 * of RFC 3261 §8.1.1. Returns the message (refcount 1) or NULL with *err filled.
 * A response with a syntax problem gets err->status 0 (drop). */
#define SIP_PARSE_DATAGRAM 0x1u
#define SIP_PARSE_STREAM   0x2u
struct sip_msg *sip_msg_parse(const char *buf, size_t len, unsigned flags, struct sip_parse_error *err);

void sip_msg_ref(struct sip_msg *m);
void sip_msg_unref(struct sip_msg *m);   /* frees at zero */
/* Released message blocks of the usual sizes are kept on a small bounded free list for the
 * next parse (single-threaded, like the rest of lunasip). This frees them; call it at exit
 * (main, test teardown) so leak checkers see a clean heap. Safe to call any time. */
void sip_msg_cache_flush(void);

/* Stream framing (RFC 3261 §18.3): returns the total length of the first message in
 * buf (head + Content-Length body) when complete, -2 when more bytes are needed, -1 when
 * the head is malformed for framing (no/invalid/multiple Content-Length, head or total
 * above max). Leading CRLFs (keepalives) are not skipped here: see sip_frame_skip_crlf. */
long sip_frame(const char *buf, size_t len, size_t max);
/* Returns how many leading CRLF bytes buf starts with. */
size_t sip_frame_skip_crlf(const char *buf, size_t len);

/* Header lookup. name matches full or compact form, case-insensitively. */
enum sip_hdr_id sip_hdr_lookup(const char *name, size_t len);
/* Canonical full name of a known header ("Call-ID"), NULL for SIP_HDR_OTHER. */
const char *sip_hdr_name(enum sip_hdr_id id);
/* Index of the first live header named name at or after from, or -1. */
int sip_msg_hdr_find(const struct sip_msg *m, const char *name, size_t len, uint32_t from);
int sip_msg_hdr_find_id(const struct sip_msg *m, enum sip_hdr_id id, uint32_t from);
/* 1 when a header of that id (Supported, Require, ...) lists the option tag (compared
 * ignoring case) in any of its values. */
int sip_msg_has_option_tag(struct sip_msg *m, enum sip_hdr_id id, const char *tag);
/* The value of header i with folding replaced by a single SP (unfolded copies live in
 * the arena, so the result stays valid as long as the message). */
struct sip_str sip_msg_hdr_value(struct sip_msg *m, uint32_t i);

/* The current Max-Forwards value (edits included): 0..255, -1 when absent, -2 when the
 * value is not a number. m->max_forwards keeps the value as received. */
int sip_msg_max_forwards(struct sip_msg *m);

/* Edits (recorded, applied by sip_msg_serialize; reads see them at once).
 * Values are copied into the message arena. Return 0 or -ENOMEM/-EINVAL (bad name/value:
 * names must be tokens, values must not contain CR or LF). */
int sip_msg_hdr_delete(struct sip_msg *m, const char *name, size_t nlen, int only_first); /* returns count deleted */
int sip_msg_hdr_insert(struct sip_msg *m, const char *name, size_t nlen, const char *v, size_t vlen); /* before the first of that name, else at the top */
/* Removes the top value of a header: the first element of a list header line (the rest of
 * that line stays in place), or the whole first line otherwise. Returns 1, 0 when absent,
 * or -ENOMEM. */
int sip_msg_hdr_delete_top_value(struct sip_msg *m, const char *name, size_t nlen);
int sip_msg_hdr_append(struct sip_msg *m, const char *name, size_t nlen, const char *v, size_t vlen); /* after the last of that name, else at the end */
/* Replaces every header of that name by the given values, at the position of the first. */
int sip_msg_hdr_set(struct sip_msg *m, const char *name, size_t nlen, const struct sip_str *vals, size_t n);
int sip_msg_set_ruri(struct sip_msg *m, const char *s, size_t len); /* -EINVAL when not a valid URI */
/* Replaces the body; Content-Length is rewritten on serialisation. */
int sip_msg_set_body(struct sip_msg *m, const char *s, size_t len);

/* Serialises the message with its edits into out (cap bytes). Unchanged header lines are
 * copied byte-exact; Content-Length is kept as received unless the body changed. Returns
 * the length, or -1 when cap is too small. */
long sip_msg_serialize(const struct sip_msg *m, char *out, size_t cap);

/* Copies bytes into the message arena (for values that must live as long as m). */
const char *sip_msg_strdup(struct sip_msg *m, const char *s, size_t len);

/* Name of a known method, NULL for SIP_METHOD_OTHER (use the message's method_str). */
const char *sip_method_name(enum sip_method m);
/* Case-sensitive (RFC 3261 §7.1): "invite" is SIP_METHOD_OTHER. */
enum sip_method sip_method_lookup(const char *s, size_t len);
const char *sip_transport_name(enum sip_transport t); /* "udp", "tcp", ... */

#endif
