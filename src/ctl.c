/* The control socket (SPEC §8): JSON-RPC 2.0 over a unix stream socket, one request per line
 * (batches as the JSON-RPC 2.0 spec §6 allows), with OpenSIPS' MI command names kept as
 * aliases and its parameter conventions (positional or named, numbers also as strings).
 * Non-blocking on the loop: input lines, clients and unread output are all bounded. */
#include "ctl.h"

#include <errno.h>
#include <ev.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "conn.h"
#include "evi.h"
#include "json.h"
#include "log.h"
#include "stats.h"
#include "version.h"

#define CTL_MAX_CLIENTS  64
#define CTL_LINE_MAX     (64 * 1024)       /* one request line, newline excluded */
#define CTL_ANSWER_MAX   (1024 * 1024)     /* one answer */
#define CTL_OUT_MAX      (2 * 1024 * 1024) /* answers queued to a client that does not read */
#define CTL_STALL        10.0              /* s a client may leave answers unread */
#define CTL_PARAMS_MAX   3                 /* params of any command */
#define CTL_EXPIRE_DEFAULT 3600            /* SPEC §6: subscriptions from the control socket */

/* JSON-RPC 2.0 §5.1 codes, and the HTTP-like ones OpenSIPS' MI answers for failed commands */
#define RPC_PARSE_ERROR      (-32700)
#define RPC_INVALID_REQUEST  (-32600)
#define RPC_METHOD_NOT_FOUND (-32601)
#define RPC_INVALID_PARAMS   (-32602)
#define RPC_BAD_VALUE        400
#define RPC_NOT_FOUND        404
#define RPC_TOO_LARGE        413
#define RPC_FAILED           500
#define RPC_UNAVAILABLE      503

struct client {
    int fd;
    ev_io rio, wio;
    ev_timer stall;         /* armed while answers wait to be written */
    char *in;
    size_t inlen, incap;
    struct json_buf out;
    size_t outoff;          /* bytes of out already written */
    int closing;            /* write what is queued, then close */
    struct client *prev, *next;
};

static struct {
    struct ev_loop *loop;
    int fd;
    ev_io io;
    ev_timer pause;          /* accept paused after EMFILE/ENFILE */
    struct ctl_hooks hooks;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    dev_t dev;
    ino_t ino;
    struct client *clients;
    size_t nclients;
    ev_tstamp last_full_log;
} ctl = { .fd = -1 };

/* ------------------------------------------------------------------------------------------
 * commands */

struct call {
    const char *method;                 /* canonical name */
    const struct json_val *p[CTL_PARAMS_MAX];
    struct json_buf *res;               /* the result value, when the command succeeds */
    int code;
    char msg[640];
};

static int call_fail(struct call *c, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int call_fail(struct call *c, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->msg, sizeof(c->msg), fmt, ap);
    va_end(ap);
    c->code = code;
    return -1;
}

/* One declared param: "name" or "name|alias" (OpenSIPS' own name), optional or required. */
struct param_spec {
    const char *names;
    int required;
};

struct cmd {
    const char *name;
    const char *alias;                  /* the OpenSIPS MI name, or NULL */
    struct param_spec params[CTL_PARAMS_MAX];
    int (*run)(struct call *c);
    const char *help;
};

static const struct cmd cmds[];

/* A param as a string: a JSON string, or a number's text (an event named "123" given as a
 * number by `lunasip ctl`). NUL bytes are refused: names and paths are C strings. */
static int param_str(struct call *c, int i, const char *what, const char **s, size_t *len)
{
    const struct json_val *v = c->p[i];
    if (v->type == JSON_STRING || v->type == JSON_NUMBER) {
        if (memchr(v->s, 0, v->slen))
            return call_fail(c, RPC_INVALID_PARAMS, "param '%s' holds a NUL byte", what);
        *s = v->s;
        *len = v->slen;
        return 0;
    }
    return call_fail(c, RPC_INVALID_PARAMS, "param '%s' must be a string", what);
}

/* A param as an integer: a JSON integer, or a string holding one (OpenSIPS MI clients send
 * numbers as strings). */
static int param_int(struct call *c, int i, const char *what, int64_t *out)
{
    const struct json_val *v = c->p[i];
    if (v->type == JSON_NUMBER && v->is_int) {
        *out = v->i;
        return 0;
    }
    if (v->type == JSON_STRING && v->slen > 0 && v->slen < 21) {
        char *end;
        errno = 0;
        long long n = strtoll(v->s, &end, 10);
        if (errno == 0 && end == v->s + v->slen && (v->s[0] == '-' || (v->s[0] >= '0' && v->s[0] <= '9'))) {
            *out = n;
            return 0;
        }
    }
    return call_fail(c, RPC_INVALID_PARAMS, "param '%s' must be an integer", what);
}

static int names_match(const char *names, const char *key, size_t klen)
{
    const char *p = names;
    for (;;) {
        const char *bar = strchr(p, '|');
        size_t n = bar ? (size_t)(bar - p) : strlen(p);
        if (n == klen && memcmp(p, key, n) == 0)
            return 1;
        if (!bar)
            return 0;
        p = bar + 1;
    }
}

static int param_count(const struct cmd *cmd)
{
    int n = 0;
    while (n < CTL_PARAMS_MAX && cmd->params[n].names)
        n++;
    return n;
}

static void param_list(const struct cmd *cmd, char *out, size_t len)
{
    size_t o = 0;
    out[0] = 0;
    for (int i = 0; i < param_count(cmd) && o < len; i++) {
        const char *nm = cmd->params[i].names;
        int n = (int)strcspn(nm, "|");
        int w = snprintf(out + o, len - o, "%s%s%.*s%s", i ? ", " : "", cmd->params[i].required ? "" : "[",
                         n, nm, cmd->params[i].required ? "" : "]");
        if (w < 0)
            break;
        o += (size_t)w;
    }
    if (o == 0)
        snprintf(out, len, "none");
}

/* Maps the request's params (absent, positional array, or named object) onto the command's
 * declared ones. A null counts as absent. Refuses extra, unknown and missing params. */
static int bind_params(struct call *c, const struct cmd *cmd, const struct json_val *params)
{
    int np = param_count(cmd);
    char allowed[160];
    memset(c->p, 0, sizeof(c->p));
    if (params && params->type == JSON_ARRAY) {
        if (params->n > (size_t)np) {
            param_list(cmd, allowed, sizeof(allowed));
            return call_fail(c, RPC_INVALID_PARAMS, "%s takes at most %d param%s (%s), got %zu", cmd->name, np,
                             np == 1 ? "" : "s", allowed, params->n);
        }
        for (size_t i = 0; i < params->n; i++)
            c->p[i] = params->kids[i].type == JSON_NULL ? NULL : &params->kids[i];
    } else if (params && params->type == JSON_OBJECT) {
        for (size_t k = 0; k < params->n; k++) {
            const struct json_val *v = &params->kids[k];
            int found = -1;
            for (int i = 0; i < np && found < 0; i++)
                if (names_match(cmd->params[i].names, v->key, v->klen))
                    found = i;
            if (found < 0) {
                param_list(cmd, allowed, sizeof(allowed));
                return call_fail(c, RPC_INVALID_PARAMS, "%s has no param '%.64s'; allowed: %s", cmd->name, v->key,
                                 allowed);
            }
            c->p[found] = v->type == JSON_NULL ? NULL : v;
        }
    }
    for (int i = 0; i < np; i++) {
        if (cmd->params[i].required && !c->p[i]) {
            param_list(cmd, allowed, sizeof(allowed));
            return call_fail(c, RPC_INVALID_PARAMS, "%s: missing param '%.*s' (params: %s)", cmd->name,
                             (int)strcspn(cmd->params[i].names, "|"), cmd->params[i].names, allowed);
        }
    }
    return 0;
}

static int errno_code(int rc)
{
    switch (rc) {
    case -EINVAL: return RPC_BAD_VALUE;
    case -ENOENT: return RPC_NOT_FOUND;
    case -E2BIG: return RPC_TOO_LARGE;
    case -ENOSPC: return RPC_UNAVAILABLE;
    default: return RPC_FAILED;
    }
}

static int ok_result(struct call *c)
{
    return json_rawz(c->res, "\"OK\"");
}

static int cmd_reload(struct call *c)
{
    char err[1024] = "";
    if (!ctl.hooks.reload)
        return call_fail(c, RPC_FAILED, "reload is not available");
    if (ctl.hooks.reload(err, sizeof(err)) != 0)
        return call_fail(c, RPC_FAILED, "reload failed, the running configuration stays: %s",
                         err[0] ? err : "unknown error");
    return ok_result(c);
}

static int cmd_user_reload(struct call *c)
{
    if (!ctl.hooks.user_reload)
        return call_fail(c, RPC_FAILED, "user_reload is not available");
    ctl.hooks.user_reload();
    return ok_result(c);
}

static int cmd_version(struct call *c)
{
    json_rawz(c->res, "{\"name\":\"lunasip\",\"version\":");
    json_strz(c->res, LUNASIP_VERSION);
    return json_rawz(c->res, "}");
}

static int cmd_log_level(struct call *c)
{
    enum log_level prev = log_current_level;
    if (c->p[0]) {
        const char *s = NULL;
        size_t n = 0;
        enum log_level l;
        if (param_str(c, 0, "level", &s, &n) != 0)
            return -1;
        if (log_level_parse(s, &l) != 0)
            return call_fail(c, RPC_INVALID_PARAMS, "unknown log level '%.32s'; allowed: debug, info, notice, warn, error", s);
        log_set_level(l);
        if (l != prev)
            LOG_NOTICE("ctl: log level changed from %s to %s", log_level_name(prev), log_level_name(l));
    }
    json_rawz(c->res, "{\"level\":");
    json_strz(c->res, log_level_name(log_current_level));
    if (c->p[0]) {
        json_rawz(c->res, ",\"previous\":");
        json_strz(c->res, log_level_name(prev));
    }
    return json_rawz(c->res, "}");
}

static int cmd_subscribe(struct call *c)
{
    const char *ev = NULL, *sock = NULL;
    size_t elen = 0, slen = 0;
    int64_t expire = CTL_EXPIRE_DEFAULT;
    if (param_str(c, 0, "event", &ev, &elen) != 0 || param_str(c, 1, "socket", &sock, &slen) != 0)
        return -1;
    if (c->p[2] && param_int(c, 2, "expire", &expire) != 0)
        return -1;
    if (expire < 0 || expire > INT32_MAX)
        return call_fail(c, RPC_INVALID_PARAMS, "param 'expire' must be 0..%d seconds (0 = unsubscribe)", INT32_MAX);
    if (expire == 0) {
        /* OpenSIPS: an expire of 0 unsubscribes */
        int rc = evi_unsubscribe(ev, elen, sock, slen);
        if (rc != 0)
            return call_fail(c, errno_code(rc), "%.*s is not subscribed to %.*s", (int)slen, sock, (int)elen, ev);
        return ok_result(c);
    }
    char err[600] = "";
    int rc = evi_subscribe(ev, elen, sock, slen, (double)expire, EVI_SRC_CTL, err, sizeof(err));
    if (rc != 0)
        return call_fail(c, errno_code(rc), "%s", err[0] ? err : strerror(-rc));
    return ok_result(c);
}

static int cmd_unsubscribe(struct call *c)
{
    const char *ev = NULL, *sock = NULL;
    size_t elen = 0, slen = 0;
    if (param_str(c, 0, "event", &ev, &elen) != 0 || param_str(c, 1, "socket", &sock, &slen) != 0)
        return -1;
    int rc = evi_unsubscribe(ev, elen, sock, slen);
    if (rc != 0)
        return call_fail(c, errno_code(rc), "%.*s is not subscribed to %.*s", (int)slen, sock, (int)elen, ev);
    return ok_result(c);
}

static int cmd_events(struct call *c)
{
    size_t n = evi_event_count();
    int first = 1;
    json_rawz(c->res, "{\"Events\":[");
    for (size_t id = 0; id < n; id++) {
        struct evi_event_info ei;
        if (evi_event_info((int)id, &ei) != 0)
            continue;
        json_rawz(c->res, first ? "{\"name\":" : ",{\"name\":");
        first = 0;
        json_strz(c->res, ei.name);
        json_rawz(c->res, ",\"id\":");
        json_int(c->res, ei.id);
        json_rawz(c->res, ",\"subscribers\":");
        json_uint(c->res, ei.nsubs);
        json_rawz(c->res, ",\"raised\":");
        json_uint(c->res, ei.raised);
        json_rawz(c->res, "}");
    }
    return json_rawz(c->res, "]}");
}

/* One event with its subscribers (those with socket sock, when given); returns how many
 * subscribers it wrote. */
static size_t write_event_subs(struct call *c, const struct evi_event_info *ei, const char *sock, size_t slen,
                               int *first, int empty_too)
{
    size_t shown = 0;
    struct evi_sub_info si;
    for (size_t i = 0; evi_sub_info(ei->id, i, &si) == 0; i++) {
        if (sock && (strlen(si.socket) != slen || memcmp(si.socket, sock, slen) != 0))
            continue;
        if (shown == 0) {
            json_rawz(c->res, *first ? "{\"name\":" : ",{\"name\":");
            *first = 0;
            json_strz(c->res, ei->name);
            json_rawz(c->res, ",\"id\":");
            json_int(c->res, ei->id);
            json_rawz(c->res, ",\"subscribers\":[");
        } else {
            json_rawz(c->res, ",");
        }
        shown++;
        json_rawz(c->res, "{\"socket\":");
        json_strz(c->res, si.socket);
        json_rawz(c->res, ",\"expire\":");
        if (si.expires_in > 0)
            json_int(c->res, (int64_t)ceil(si.expires_in)); /* seconds left */
        else
            json_rawz(c->res, "\"never\"");
        json_rawz(c->res, ",\"source\":");
        json_rawz(c->res, si.src == EVI_SRC_CTL ? "\"ctl\"" : "\"script\"");
        json_rawz(c->res, ",\"delivered\":");
        json_uint(c->res, si.delivered);
        json_rawz(c->res, ",\"dropped\":");
        json_uint(c->res, si.dropped);
        json_rawz(c->res, "}");
    }
    if (shown)
        json_rawz(c->res, "]}");
    else if (empty_too) {
        json_rawz(c->res, *first ? "{\"name\":" : ",{\"name\":");
        *first = 0;
        json_strz(c->res, ei->name);
        json_rawz(c->res, ",\"id\":");
        json_int(c->res, ei->id);
        json_rawz(c->res, ",\"subscribers\":[]}");
    }
    return shown;
}

/* OpenSIPS' subscribers_list: every event that has subscribers, or one event (with its
 * subscribers, possibly none), or one subscriber of one event. */
static int cmd_subscribers(struct call *c)
{
    const char *ev = NULL, *sock = NULL;
    size_t elen = 0, slen = 0;
    int first = 1;
    if (c->p[0] && param_str(c, 0, "event", &ev, &elen) != 0)
        return -1;
    if (c->p[1] && param_str(c, 1, "socket", &sock, &slen) != 0)
        return -1;
    json_rawz(c->res, "{\"Events\":[");
    if (ev) {
        int id = evi_find(ev, elen);
        struct evi_event_info ei;
        if (id < 0 || evi_event_info(id, &ei) != 0)
            return call_fail(c, RPC_NOT_FOUND, "unknown event %.*s", (int)elen, ev);
        if (write_event_subs(c, &ei, sock, slen, &first, !sock) == 0 && sock)
            return call_fail(c, RPC_NOT_FOUND, "%.*s is not subscribed to %.*s", (int)slen, sock, (int)elen, ev);
    } else {
        size_t n = evi_event_count();
        for (size_t id = 0; id < n; id++) {
            struct evi_event_info ei;
            if (evi_event_info((int)id, &ei) == 0 && ei.nsubs > 0)
                write_event_subs(c, &ei, sock, slen, &first, 0);
        }
    }
    return json_rawz(c->res, "]}");
}

/* evi:raise: params as a JSON object (named, in the object's key order) or an array
 * (positional); values string, integer, boolean or null (JSON has no other scalar evi takes). */
static int cmd_raise(struct call *c)
{
    const char *ev = NULL;
    size_t elen = 0;
    struct evi_param ep[EVI_PARAMS_MAX];
    size_t n = 0;
    if (param_str(c, 0, "event", &ev, &elen) != 0)
        return -1;
    const struct json_val *pv = c->p[1];
    if (pv) {
        if (pv->type != JSON_OBJECT && pv->type != JSON_ARRAY)
            return call_fail(c, RPC_INVALID_PARAMS, "param 'params' must be a JSON object (named) or array (positional)");
        if (pv->n > EVI_PARAMS_MAX)
            return call_fail(c, RPC_INVALID_PARAMS, "at most %d event params, got %zu", EVI_PARAMS_MAX, pv->n);
        for (size_t i = 0; i < pv->n; i++) {
            const struct json_val *v = &pv->kids[i];
            struct evi_param *p = &ep[n++];
            memset(p, 0, sizeof(*p));
            p->name = pv->type == JSON_OBJECT ? v->key : NULL;
            p->nlen = pv->type == JSON_OBJECT ? v->klen : 0;
            switch (v->type) {
            case JSON_STRING: p->type = EVI_T_STR; p->s = v->s; p->slen = v->slen; break;
            case JSON_TRUE: p->type = EVI_T_BOOL; p->i = 1; break;
            case JSON_FALSE: p->type = EVI_T_BOOL; p->i = 0; break;
            case JSON_NULL: p->type = EVI_T_NIL; break;
            case JSON_NUMBER:
                if (v->is_int) {
                    p->type = EVI_T_INT;
                    p->i = v->i;
                    break;
                }
                /* evi carries no floating point */
                /* fall through */
            default:
                if (pv->type == JSON_OBJECT)
                    return call_fail(c, RPC_INVALID_PARAMS, "event param '%.64s': a string, integer, boolean or null "
                                     "is expected", v->key);
                return call_fail(c, RPC_INVALID_PARAMS, "event param %zu: a string, integer, boolean or null is "
                                 "expected", i + 1);
            }
        }
    }
    int rc = evi_raise(ev, elen, ep, n, 1);
    if (rc == -EINVAL)
        return call_fail(c, RPC_BAD_VALUE, "cannot raise '%.*s': invalid event name (1..%d of A-Z a-z 0-9 _ : . -) "
                         "or param names", (int)(elen > 80 ? 80 : elen), ev, EVI_NAME_MAX);
    if (rc == -E2BIG)
        return call_fail(c, RPC_TOO_LARGE, "cannot raise %.*s: the payload is above %d bytes", (int)elen, ev,
                         EVI_PAYLOAD_MAX);
    if (rc < 0)
        return call_fail(c, errno_code(rc), "cannot raise %.*s: %s", (int)elen, ev, strerror(-rc));
    return ok_result(c);
}

static int cmd_flat_rotate(struct call *c)
{
    const char *path = NULL;
    size_t plen = 0;
    char buf[EVI_SOCKET_MAX + 1];
    if (c->p[0]) {
        if (param_str(c, 0, "path", &path, &plen) != 0)
            return -1;
        if (plen > 10 && memcmp(path, "flatstore:", 10) == 0) { /* the socket text works too */
            path += 10;
            plen -= 10;
        }
        if (plen == 0 || plen > EVI_SOCKET_MAX)
            return call_fail(c, RPC_INVALID_PARAMS, "param 'path' must be 1..%d bytes", EVI_SOCKET_MAX);
        memcpy(buf, path, plen);
        buf[plen] = 0;
        path = buf;
    }
    int n = evi_reopen(path);
    if (n < 0)
        return call_fail(c, errno_code(n), "reopen failed: %s", strerror(-n));
    LOG_NOTICE("ctl: %d flatstore file%s reopened%s%s", n, n == 1 ? "" : "s", path ? " for " : "", path ? path : "");
    json_rawz(c->res, "{\"reopened\":");
    json_int(c->res, n);
    return json_rawz(c->res, "}");
}

static int cmd_stats(struct call *c)
{
    const char *pre = "";
    size_t plen = 0;
    int first = 1;
    if (c->p[0] && param_str(c, 0, "prefix", &pre, &plen) != 0)
        return -1;
    json_rawz(c->res, "{");
    for (const struct stats_field *f = stats_fields; f->name; f++) {
        if (strncmp(f->name, pre, plen) != 0)
            continue;
        json_rawz(c->res, first ? "" : ",");
        first = 0;
        json_strz(c->res, f->name);
        json_rawz(c->res, ":");
        json_uint(c->res, stats_get(f));
    }
    /* the per-sink counters answer "sinks" (and the "events" prefix they belong to) */
    if (strncmp("sinks", pre, plen) == 0 || strncmp("events", pre, plen) == 0) {
        size_t n = evi_sink_count();
        int sfirst = 1;
        json_rawz(c->res, first ? "\"sinks\":[" : ",\"sinks\":[");
        first = 0;
        for (size_t i = 0; i < n; i++) {
            struct evi_sink_info si;
            if (evi_sink_info(i, &si) != 0)
                continue;
            json_rawz(c->res, sfirst ? "{\"socket\":" : ",{\"socket\":");
            sfirst = 0;
            json_strz(c->res, si.socket);
            json_rawz(c->res, ",\"state\":");
            json_strz(c->res, si.state);
            json_rawz(c->res, ",\"queued\":");
            json_uint(c->res, si.queued);
            json_rawz(c->res, ",\"delivered\":");
            json_uint(c->res, si.delivered);
            json_rawz(c->res, ",\"failed\":");
            json_uint(c->res, si.failed);
            json_rawz(c->res, ",\"dropped\":");
            json_uint(c->res, si.dropped);
            json_rawz(c->res, "}");
        }
        json_rawz(c->res, "]");
    }
    if (first)
        return call_fail(c, RPC_NOT_FOUND, "no counter name starts with '%.64s'", pre);
    return json_rawz(c->res, "}");
}

struct conn_list {
    struct call *c;
    int first;
};

static void list_conn(struct conn *cn, void *arg)
{
    struct conn_list *l = arg;
    static const char *const states[] = { "connecting", "tls", "ws_upgrade", "open", "closing", "closed" };
    json_rawz(l->c->res, l->first ? "{\"id\":" : ",{\"id\":");
    l->first = 0;
    json_uint(l->c->res, cn->id);
    json_rawz(l->c->res, ",\"transport\":");
    json_strz(l->c->res, sip_transport_name(cn->transport));
    json_rawz(l->c->res, ",\"direction\":");
    json_strz(l->c->res, cn->outgoing ? "out" : "in");
    json_rawz(l->c->res, ",\"state\":");
    json_strz(l->c->res, (unsigned)cn->state < 6 ? states[cn->state] : "?");
    json_rawz(l->c->res, ",\"remote_ip\":");
    json_strz(l->c->res, cn->remote_ip);
    json_rawz(l->c->res, ",\"remote_port\":");
    json_uint(l->c->res, (uint64_t)cn->remote_port);
    json_rawz(l->c->res, ",\"local_ip\":");
    json_strz(l->c->res, cn->local_ip);
    json_rawz(l->c->res, ",\"local_port\":");
    json_uint(l->c->res, (uint64_t)cn->local_port);
    json_rawz(l->c->res, "}");
}

/* Every stream connection (tcp, tls, ws, wss) in the table, accepted and outgoing. */
static int cmd_connections(struct call *c)
{
    struct conn_list l = { c, 1 };
    json_rawz(c->res, "[");
    conn_foreach(list_conn, &l);
    return json_rawz(c->res, "]");
}

/* The registrar (SPEC §7) arrives later; until then there is no location service to list. */
static int cmd_registrations(struct call *c)
{
    return json_rawz(c->res, "[]");
}

static int cmd_help(struct call *c)
{
    json_rawz(c->res, "[");
    for (const struct cmd *k = cmds; k->name; k++) {
        char plist[160];
        param_list(k, plist, sizeof(plist));
        json_rawz(c->res, k == cmds ? "{\"name\":" : ",{\"name\":");
        json_strz(c->res, k->name);
        json_rawz(c->res, ",\"alias\":");
        json_strz(c->res, k->alias);
        json_rawz(c->res, ",\"params\":");
        json_strz(c->res, plist);
        json_rawz(c->res, ",\"help\":");
        json_strz(c->res, k->help);
        json_rawz(c->res, "}");
    }
    return json_rawz(c->res, "]");
}

static const struct cmd cmds[] = {
    { "reload", NULL, { { NULL, 0 } }, cmd_reload,
      "re-read proxies.conf and server.lua and swap them in, as SIGHUP (SPEC 5.6)" },
    { "user_reload", NULL, { { NULL, 0 } }, cmd_user_reload,
      "run SystemEvents.on_user_reload, as SIGUSR1" },
    { "evi:subscribe", "event_subscribe", { { "event", 1 }, { "socket", 1 }, { "expire", 0 } }, cmd_subscribe,
      "subscribe socket to event for expire seconds (default 3600; 0 unsubscribes; again refreshes)" },
    { "evi:unsubscribe", NULL, { { "event", 1 }, { "socket", 1 } }, cmd_unsubscribe,
      "remove a subscription" },
    { "evi:list", "events_list", { { NULL, 0 } }, cmd_events, "the published events" },
    { "evi:subscribers", "subscribers_list", { { "event", 0 }, { "socket", 0 } }, cmd_subscribers,
      "subscriptions with the seconds they have left" },
    { "evi:raise", "raise_event", { { "event", 1 }, { "params", 0 } }, cmd_raise,
      "raise event with params: a JSON object (named) or array (positional)" },
    { "evi:flat_rotate", "evi_flat_rotate", { { "path|path_to_file", 0 } }, cmd_flat_rotate,
      "reopen flatstore files (every one, or those writing path)" },
    { "stats", NULL, { { "prefix", 0 } }, cmd_stats, "counters and event sinks (names starting with prefix)" },
    { "connections", NULL, { { NULL, 0 } }, cmd_connections, "stream connections" },
    { "registrations", NULL, { { NULL, 0 } }, cmd_registrations, "registered contacts" },
    { "log_level", NULL, { { "level", 0 } }, cmd_log_level,
      "the log level; with level (debug|info|notice|warn|error) set it" },
    { "version", NULL, { { NULL, 0 } }, cmd_version, "the running version" },
    { "help", "which", { { NULL, 0 } }, cmd_help, "this list" },
    { NULL, NULL, { { NULL, 0 } }, NULL, NULL },
};

static const struct cmd *cmd_find(const char *name, size_t len)
{
    for (const struct cmd *k = cmds; k->name; k++) {
        if ((strlen(k->name) == len && memcmp(k->name, name, len) == 0) ||
            (k->alias && strlen(k->alias) == len && memcmp(k->alias, name, len) == 0))
            return k;
    }
    return NULL;
}

/* ------------------------------------------------------------------------------------------
 * JSON-RPC 2.0 framing */

static void write_id(struct json_buf *b, const struct json_val *id)
{
    if (!id || id->type == JSON_NULL)
        json_rawz(b, "null");
    else if (id->type == JSON_NUMBER)
        json_raw(b, id->s, id->slen);
    else
        json_str(b, id->s, id->slen);
}

static void write_error(struct json_buf *b, const struct json_val *id, int code, const char *msg)
{
    stats.ctl_errors++;
    json_rawz(b, "{\"jsonrpc\":\"2.0\",\"id\":");
    write_id(b, id);
    json_rawz(b, ",\"error\":{\"code\":");
    json_int(b, code);
    json_rawz(b, ",\"message\":");
    json_strz(b, msg);
    json_rawz(b, "}}");
}

/* One request object: runs it and writes its answer to b. Returns 1 when an answer was
 * written, 0 for a notification (JSON-RPC 2.0 §4.1: never answered, even on error). */
static int handle_request(struct json_buf *b, const struct json_val *req)
{
    stats.ctl_requests++;
    if (req->type != JSON_OBJECT) {
        LOG_INFO("ctl: invalid request: not a JSON object");
        write_error(b, NULL, RPC_INVALID_REQUEST, "invalid request: a JSON-RPC 2.0 request is a JSON object");
        return 1;
    }
    const struct json_val *ver = json_get(req, "jsonrpc"), *method = json_get(req, "method");
    const struct json_val *id = json_get(req, "id"), *params = json_get(req, "params");
    const char *why = NULL;
    if (id && id->type != JSON_STRING && id->type != JSON_NUMBER && id->type != JSON_NULL) {
        why = "\"id\" must be a string, a number or null";
        id = NULL;
    } else if (!ver || ver->type != JSON_STRING || strcmp(ver->s, "2.0") != 0 || ver->slen != 3)
        why = "\"jsonrpc\" must be \"2.0\"";
    else if (!method || method->type != JSON_STRING || method->slen == 0)
        why = "\"method\" must be a non-empty string";
    else if (params && params->type != JSON_ARRAY && params->type != JSON_OBJECT)
        why = "\"params\" must be an array or an object";
    if (why) {
        char msg[128];
        snprintf(msg, sizeof(msg), "invalid request: %s", why);
        LOG_INFO("ctl: %s", msg);
        write_error(b, id, RPC_INVALID_REQUEST, msg);
        return 1;
    }
    const struct cmd *cmd = cmd_find(method->s, method->slen);
    if (!cmd) {
        LOG_INFO("ctl: %.64s: error %d: method not found", method->s, RPC_METHOD_NOT_FOUND);
        if (!id) {
            stats.ctl_errors++;
            return 0;
        }
        char msg[128];
        snprintf(msg, sizeof(msg), "method not found: %.64s (try help)", method->s);
        write_error(b, id, RPC_METHOD_NOT_FOUND, msg);
        return 1;
    }
    /* params (raise_event's may carry what the operator keeps private) at debug level only */
    if (log_current_level <= LOG_LVL_DEBUG) {
        struct json_buf pb = { .max = 512 };
        if (params)
            json_write_val(&pb, params, -1);
        LOG_DEBUG("ctl: request %s %.*s%s", cmd->name, (int)pb.len, pb.len ? pb.p : "", pb.oom ? "..." : "");
        json_buf_free(&pb);
    }

    struct json_buf res = { .max = CTL_ANSWER_MAX };
    struct call c = { .method = cmd->name, .res = &res };
    int rc = bind_params(&c, cmd, params);
    if (rc == 0)
        rc = cmd->run(&c);
    if (rc == 0 && res.oom)
        rc = call_fail(&c, RPC_TOO_LARGE, "the answer is above %d bytes or memory ran out; narrow the request",
                       CTL_ANSWER_MAX);
    if (rc == 0) {
        LOG_INFO("ctl: %s: ok", cmd->name);
    } else if (cmd->run == cmd_raise) {
        /* the message may quote a param's name: debug only, as the request */
        LOG_INFO("ctl: %s: error %d", cmd->name, c.code);
        LOG_DEBUG("ctl: %s: error %d: %s", cmd->name, c.code, c.msg);
    } else {
        LOG_INFO("ctl: %s: error %d: %s", cmd->name, c.code, c.msg);
    }
    int answered = 0;
    if (id) {
        if (rc == 0) {
            json_rawz(b, "{\"jsonrpc\":\"2.0\",\"id\":");
            write_id(b, id);
            json_rawz(b, ",\"result\":");
            json_raw(b, res.p, res.len);
            json_rawz(b, "}");
        } else {
            write_error(b, id, c.code, c.msg);
        }
        answered = 1;
    } else if (rc != 0) {
        stats.ctl_errors++;
    }
    json_buf_free(&res);
    return answered;
}

/* One line: a request or a batch (JSON-RPC 2.0 §6). Appends the answer line, if any, to b. */
static void handle_line(struct json_buf *b, const char *line, size_t len)
{
    char err[128];
    struct json_val *req = json_parse(line, len, err, sizeof(err));
    if (!req) {
        char msg[192];
        stats.ctl_requests++;
        snprintf(msg, sizeof(msg), "parse error: %s", err);
        LOG_INFO("ctl: %s", msg);
        write_error(b, NULL, RPC_PARSE_ERROR, msg);
        json_rawz(b, "\n");
        return;
    }
    if (req->type == JSON_ARRAY) {
        if (req->n == 0) {
            stats.ctl_requests++;
            LOG_INFO("ctl: invalid request: empty batch");
            write_error(b, NULL, RPC_INVALID_REQUEST, "invalid request: empty batch");
            json_rawz(b, "\n");
        } else {
            size_t start = b->len;
            int any = 0;
            json_rawz(b, "[");
            for (size_t i = 0; i < req->n; i++) {
                size_t before = b->len;
                if (any)
                    json_rawz(b, ",");
                if (handle_request(b, &req->kids[i]))
                    any = 1;
                else if (!b->oom)
                    b->len = before;
            }
            if (any)
                json_rawz(b, "]\n");
            else if (!b->oom)
                b->len = start; /* only notifications: no answer at all */
        }
    } else if (handle_request(b, req)) {
        json_rawz(b, "\n");
    }
    json_free(req);
}

/* ------------------------------------------------------------------------------------------
 * clients */

static void client_close(struct client *c, const char *why)
{
    if (why)
        LOG_WARN("ctl: closing client %d: %s", c->fd, why);
    ev_io_stop(ctl.loop, &c->rio);
    ev_io_stop(ctl.loop, &c->wio);
    ev_timer_stop(ctl.loop, &c->stall);
    if (close(c->fd) == -1 && errno != EINTR)
        LOG_WARN("ctl: close: %s", strerror(errno));
    if (c->prev)
        c->prev->next = c->next;
    else
        ctl.clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    ctl.nclients--;
    free(c->in);
    json_buf_free(&c->out);
    free(c);
}

/* Writes what it can of the queued answers. Returns 0, or -1 when c was closed. */
static int client_flush(struct client *c)
{
    while (c->outoff < c->out.len) {
        ssize_t n = send(c->fd, c->out.p + c->outoff, c->out.len - c->outoff, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            if (errno != EPIPE && errno != ECONNRESET)
                LOG_WARN("ctl: send: %s", strerror(errno));
            client_close(c, NULL);
            return -1;
        }
        c->outoff += (size_t)n;
        ev_timer_again(ctl.loop, &c->stall); /* progress: the client reads */
    }
    if (c->outoff == c->out.len) {
        json_buf_reset(&c->out);
        c->outoff = 0;
        ev_io_stop(ctl.loop, &c->wio);
        ev_timer_stop(ctl.loop, &c->stall);
        if (c->closing) {
            client_close(c, NULL);
            return -1;
        }
        return 0;
    }
    if (c->out.len - c->outoff > CTL_OUT_MAX) {
        char why[96];
        snprintf(why, sizeof(why), "%zu bytes of answers unread (more than %d)", c->out.len - c->outoff, CTL_OUT_MAX);
        client_close(c, why);
        return -1;
    }
    if (c->outoff > 0 && c->outoff >= c->out.len / 2) {
        memmove(c->out.p, c->out.p + c->outoff, c->out.len - c->outoff);
        c->out.len -= c->outoff;
        c->outoff = 0;
    }
    if (!ev_is_active(&c->wio))
        ev_io_start(ctl.loop, &c->wio);
    if (!ev_is_active(&c->stall))
        ev_timer_again(ctl.loop, &c->stall);
    return 0;
}

static void on_client_write(struct ev_loop *loop, ev_io *w, int revents)
{
    client_flush((struct client *)w->data);
}

static void on_client_stall(struct ev_loop *loop, ev_timer *w, int revents)
{
    char why[96];
    struct client *c = w->data;
    snprintf(why, sizeof(why), "it left %zu bytes of answers unread for %.0f s", c->out.len - c->outoff, CTL_STALL);
    client_close(c, why);
}

/* Takes the complete lines of c->in; a line above CTL_LINE_MAX is answered with an error
 * and the client is closed once that answer is written. */
static void on_client_read(struct ev_loop *loop, ev_io *w, int revents)
{
    struct client *c = w->data;
    for (;;) {
        if (c->inlen == c->incap) {
            size_t ncap = c->incap ? c->incap * 2 : 4096;
            if (ncap > CTL_LINE_MAX + 1)
                ncap = CTL_LINE_MAX + 1;
            char *p = realloc(c->in, ncap);
            if (!p) {
                client_close(c, "out of memory");
                return;
            }
            c->in = p;
            c->incap = ncap;
        }
        ssize_t n = recv(c->fd, c->in + c->inlen, c->incap - c->inlen, MSG_DONTWAIT);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            if (errno != ECONNRESET)
                LOG_WARN("ctl: recv: %s", strerror(errno));
            client_close(c, NULL);
            return;
        }
        if (n == 0) {
            /* the client is done sending: answer what it sent, then close */
            c->closing = 1;
            ev_io_stop(loop, &c->rio);
            break;
        }
        size_t scan = c->inlen, start = 0;
        c->inlen += (size_t)n;
        for (size_t i = scan; i < c->inlen; i++) {
            if (c->in[i] != '\n')
                continue;
            size_t len = i - start;
            if (len > 0 && c->in[start + len - 1] == '\r')
                len--;
            size_t k = start;
            while (k < start + len && (c->in[k] == ' ' || c->in[k] == '\t'))
                k++;
            if (k < start + len)
                handle_line(&c->out, c->in + start, len);
            start = i + 1;
        }
        if (start > 0) {
            memmove(c->in, c->in + start, c->inlen - start);
            c->inlen -= start;
        }
        if (c->inlen > CTL_LINE_MAX) {
            char msg[96];
            stats.ctl_requests++;
            snprintf(msg, sizeof(msg), "invalid request: a request line is longer than %d bytes", CTL_LINE_MAX);
            LOG_INFO("ctl: %s; closing the client", msg);
            write_error(&c->out, NULL, RPC_INVALID_REQUEST, msg);
            json_rawz(&c->out, "\n");
            c->closing = 1;
            c->inlen = 0;
            ev_io_stop(loop, &c->rio);
            shutdown(c->fd, SHUT_RD);
            break;
        }
        if (c->out.oom) {
            client_close(c, "its unread answers went past the cap (or memory ran out)");
            return;
        }
        if (c->out.len - c->outoff > CTL_OUT_MAX)
            break; /* client_flush below closes it unless the kernel takes the bytes */
    }
    if (c->out.oom) {
        client_close(c, "its unread answers went past the cap (or memory ran out)");
        return;
    }
    client_flush(c);
}

static void on_pause_over(struct ev_loop *loop, ev_timer *w, int revents)
{
    if (ctl.fd != -1)
        ev_io_start(loop, &ctl.io);
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
    for (int burst = 0; burst < 64; burst++) {
        int fd = accept4(ctl.fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd == -1) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            LOG_ERROR("ctl: accept: %s; pausing the control socket for 1 s", strerror(errno));
            /* EMFILE/ENFILE: the pending connection stays readable; retry later, not in a spin */
            ev_io_stop(loop, &ctl.io);
            ev_timer_set(&ctl.pause, 1.0, 0.);
            ev_timer_start(loop, &ctl.pause);
            return;
        }
        if (ctl.nclients >= CTL_MAX_CLIENTS) {
            static const char busy[] = "{\"jsonrpc\":\"2.0\",\"id\":null,\"error\":{\"code\":503,\"message\":"
                                       "\"too many control clients (64); try again later\"}}\n";
            ssize_t rc = send(fd, busy, sizeof(busy) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
            (void)rc; /* best effort: the client is refused either way */
            close(fd);
            if (ev_now(loop) - ctl.last_full_log >= 10.0) {
                ctl.last_full_log = ev_now(loop);
                LOG_WARN("ctl: refusing a client: %d control clients already connected", CTL_MAX_CLIENTS);
            }
            continue;
        }
        struct client *c = calloc(1, sizeof(*c));
        if (!c) {
            LOG_ERROR("ctl: out of memory for a client");
            close(fd);
            continue;
        }
        c->fd = fd;
        c->out.max = CTL_OUT_MAX + CTL_ANSWER_MAX + 4096;
        ev_io_init(&c->rio, on_client_read, fd, EV_READ);
        ev_io_init(&c->wio, on_client_write, fd, EV_WRITE);
        ev_init(&c->stall, on_client_stall);
        c->stall.repeat = CTL_STALL;
        c->rio.data = c->wio.data = c->stall.data = c;
        c->next = ctl.clients;
        if (ctl.clients)
            ctl.clients->prev = c;
        ctl.clients = c;
        ctl.nclients++;
        ev_io_start(loop, &c->rio);
    }
}

/* ------------------------------------------------------------------------------------------
 * listener */

/* A socket file at path: answered by a live process (-EADDRINUSE), stale (removed, 0), or
 * something else that is not ours to remove (-EEXIST). Absent: 0. */
static int clear_stale(const char *path, char *err, size_t errlen)
{
    struct stat st;
    if (lstat(path, &st) == -1) {
        if (errno == ENOENT)
            return 0;
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -errno;
    }
    if (!S_ISSOCK(st.st_mode)) {
        snprintf(err, errlen, "%s exists and is not a socket; remove it or choose another core.control_socket", path);
        return -EEXIST;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -errno;
    }
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
    int e = errno;
    close(fd);
    if (rc == 0 || e == EAGAIN) {
        snprintf(err, errlen, "%s: another lunasip is listening there (stop it, or give this one another "
                 "core.control_socket)", path);
        return -EADDRINUSE;
    }
    if (e != ECONNREFUSED) {
        snprintf(err, errlen, "%s: cannot tell whether it is in use: %s", path, strerror(e));
        return -e;
    }
    if (unlink(path) == -1 && errno != ENOENT) {
        snprintf(err, errlen, "%s: cannot remove the stale socket: %s", path, strerror(errno));
        return -errno;
    }
    LOG_NOTICE("ctl: removed the stale control socket %s", path);
    return 0;
}

int ctl_start(struct ev_loop *loop, const char *path, const struct ctl_hooks *hooks, char *err, size_t errlen)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    size_t plen = strlen(path);
    if (ctl.fd != -1) {
        snprintf(err, errlen, "the control socket is already open");
        return -1;
    }
    if (plen == 0 || plen >= sizeof(sa.sun_path)) {
        snprintf(err, errlen, "%s: a unix socket path is 1..%zu bytes", path, sizeof(sa.sun_path) - 1);
        return -1;
    }
    if (clear_stale(path, err, errlen) != 0)
        return -1;
    memcpy(sa.sun_path, path, plen + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    struct stat st;
    /* chmod before listen: nobody can connect in between (ECONNREFUSED until listen) */
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == -1) {
        snprintf(err, errlen, "bind %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (chmod(path, 0660) == -1 || lstat(path, &st) == -1 || listen(fd, CTL_MAX_CLIENTS) == -1) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        close(fd);
        unlink(path);
        return -1;
    }
    ctl.loop = loop;
    ctl.fd = fd;
    ctl.dev = st.st_dev;
    ctl.ino = st.st_ino;
    memcpy(ctl.path, path, plen + 1);
    if (hooks)
        ctl.hooks = *hooks;
    ev_io_init(&ctl.io, on_accept, fd, EV_READ);
    ev_io_start(loop, &ctl.io);
    ev_init(&ctl.pause, on_pause_over);
    LOG_NOTICE("control socket on %s", path);
    return 0;
}

void ctl_stop(void)
{
    if (ctl.fd == -1)
        return;
    while (ctl.clients)
        client_close(ctl.clients, NULL);
    ev_io_stop(ctl.loop, &ctl.io);
    ev_timer_stop(ctl.loop, &ctl.pause);
    close(ctl.fd);
    ctl.fd = -1;
    /* remove the file only if it is still ours (not replaced by another instance) */
    struct stat st;
    if (lstat(ctl.path, &st) == 0 && st.st_dev == ctl.dev && st.st_ino == ctl.ino && unlink(ctl.path) == -1)
        LOG_WARN("ctl: cannot remove %s: %s", ctl.path, strerror(errno));
}
