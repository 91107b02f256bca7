/* Configuration loader: lunasip.conf (SPEC §3.1) and proxies.conf (SPEC §3.2). Each file is a
 * Lua chunk run in an empty sandbox (no library at all, JIT off, an instruction budget and a
 * memory cap); the globals it sets are then read, defaulted and validated key by key.
 *
 * Who uses what. Most keys are validated now so that a typo fails at startup, but take effect
 * only when the feature that reads them lands:
 *   core.log_level, core.syslog_facility ......... logging (log.c, main.c)
 *   core.script ................................... Lua VM (server.lua)
 *   core.nameservers; proxies.conf use_dns, use_dns_cache, dns_cache_time, use_naptr,
 *     use_srv, transport_preference, force_transport_preference, ip_type_preference,
 *     dns_failover_on_503, use_blacklist, blacklist_time .. DNS and target selection (RFC 3263)
 *   core.control_socket ........................... control socket (SPEC §8)
 *   core.metrics_listen ........................... metrics endpoint (SPEC §8)
 *   core.shutdown_grace ........................... graceful shutdown (SPEC §2)
 *   core.workers .................................. worker processes (SPEC §10)
 *   sip.listen (udp now; tcp/tls/ws/wss) .......... transports
 *   sip.advertised_address, sip.local_domains ..... proxy core (Via/Record-Route, myself)
 *   sip.max_message_size .......................... SIP parser / transports
 *   sip.tcp_connect_timeout, header_timeout, connection_idle_timeout, max_connections,
 *     max_connections_per_ip ...................... stream transports (TCP/TLS/WS)
 *   sip.tls_handshake_timeout, tls.* .............. TLS transport
 *   sip.outbound_flow_secret ...................... Outbound flow tokens (RFC 5626)
 *   websocket.* ................................... WebSocket transport (RFC 7118/6455)
 *   pike.* ........................................ per-source flood protection
 *   events.* ...................................... event bus (src/evi.c) and its sinks
 *   proxies.conf do_record_routing, record_route_all, timer_B/C/F,
 *     callback_on_server_tls_handshake ............ proxy core and transactions
 *
 * Conventions. A key set to nil is the same as an absent key (Lua cannot tell them apart), so
 * optional settings whose default is "on" take `false` to disable them (core.control_socket);
 * `false` is also accepted wherever nil is the default. Relative paths are resolved against the
 * config dir. Every string is capped at CONFIG_READ_STR_MAX bytes and every list at a fixed
 * count.
 *
 * The sandbox and the typed readers (config_read_get_*) live in config_read.c; this file is the
 * schema: which keys exist, their defaults and the checks specific to each. */

#include "config.h"
#include "config_read.h"

#include <lua.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

#define CONF_LIST_MAX    1024         /* entries per list */
#define CONF_PROFILES_MAX 1000

/* ------------------------------------------------------------------------------------------
 * List entries (config_read_item_fn) */

#define ALLOWED_NAMESERVER "\"IP\", \"IP:PORT\" or \"[IPv6]:PORT\""

/* Nameserver: stored normalised as "IPv4:PORT" or "[IPv6]:PORT", port 53 by default. */
static int item_nameserver(struct config_read *r, const char *path, const char *s, size_t len,
                           char **out)
{
    char host[64], buf[256];
    int family, port;
    int rc = config_read_parse_hostport(s, len, 1, host, &family, &port);
    if (rc == CONFIG_READ_HP_NO_PORT)
        port = 53;
    else if (rc == CONFIG_READ_HP_BAD_PORT)
        return config_read_fail(r, path, ALLOWED_NAMESERVER " with a port from 1 to 65535",
                                "bad port in '%s'", config_read_show(buf, sizeof(buf), s, len));
    else if (rc != CONFIG_READ_HP_OK)
        return config_read_fail(r, path, ALLOWED_NAMESERVER " (an address, not a name)",
                                "'%s' is not an IP address",
                                config_read_show(buf, sizeof(buf), s, len));
    if (asprintf(out, family == AF_INET6 ? "[%s]:%d" : "%s:%d", host, port) == -1) {
        *out = NULL;
        return config_read_fail_oom(r, path);
    }
    return 0;
}

/* A domain of sip.local_domains: a host name or an IP address, stored lower-case. */
static int item_domain(struct config_read *r, const char *path, const char *s, size_t len,
                       char **out)
{
    char host[64], buf[256];
    int family, port;
    if (!config_read_valid_hostname(s, len, 0) &&
        config_read_parse_hostport(s, len, 1, host, &family, &port) != CONFIG_READ_HP_NO_PORT)
        return config_read_fail(r, path, "host names such as \"example.com\" or IP addresses",
                                "'%s' is not a host name or IP address",
                                config_read_show(buf, sizeof(buf), s, len));
    if ((*out = config_read_lower_dup(s, len)) == NULL)
        return config_read_fail_oom(r, path);
    return 0;
}

/* An origin of websocket.allowed_origins, compared exactly with the Origin header. */
static int item_origin(struct config_read *r, const char *path, const char *s, size_t len,
                       char **out)
{
    char buf[256];
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c >= 0x7f)
            return config_read_fail(r, path, "exact origins such as \"https://www.example.com\"",
                                    "'%s' contains a space or a non-printable byte",
                                    config_read_show(buf, sizeof(buf), s, len));
    }
    if ((*out = strndup(s, len)) == NULL)
        return config_read_fail_oom(r, path);
    return 0;
}

/* ------------------------------------------------------------------------------------------
 * lunasip.conf */

static const char *const proto_names[] = { "udp", "tcp", "tls", "ws", "wss", NULL };

#define ALLOWED_LISTEN "\"PROTO:IPv4:PORT\" or \"PROTO:[IPv6]:PORT\" with PROTO one of " \
    "udp, tcp, tls, ws, wss and an IP address (a listener binds to an address, not a name)"

static const char *const default_listen[] = {
    "udp:127.0.0.1:5060", "tcp:127.0.0.1:5060", "tls:127.0.0.1:5061",
    "ws:127.0.0.1:10080", "wss:127.0.0.1:10443",
};

static int parse_listen(struct config_read *r, const char *path, const char *s, size_t len,
                        struct config_listen *l)
{
    char buf[256];
    const char *c = memchr(s, ':', len);
    size_t pl = c ? (size_t)(c - s) : len;
    int proto = -1;
    for (int i = 0; proto_names[i]; i++)
        if (strlen(proto_names[i]) == pl && memcmp(proto_names[i], s, pl) == 0)
            proto = i;
    if (proto < 0)
        return config_read_fail(r, path, "udp, tcp, tls, ws, wss", "unknown transport '%s'",
                                config_read_show(buf, sizeof(buf), s, pl));
    if (len >= sizeof(l->text))
        return config_read_fail(r, path, ALLOWED_LISTEN, "'%s' is too long",
                                config_read_show(buf, sizeof(buf), s, len));
    int rc = config_read_parse_hostport(c + 1, len - pl - 1, 0, l->host, &l->family, &l->port);
    config_read_show(buf, sizeof(buf), c + 1, len - pl - 1);
    switch (rc) {
    case CONFIG_READ_HP_OK:
        break;
    case CONFIG_READ_HP_NO_PORT:
        return config_read_fail(r, path, ALLOWED_LISTEN, "missing port in '%s'", buf);
    case CONFIG_READ_HP_BAD_PORT:
        return config_read_fail(r, path, "a port from 1 to 65535", "bad port in '%s'", buf);
    case CONFIG_READ_HP_BARE_V6:
        return config_read_fail(r, path, ALLOWED_LISTEN,
                                "IPv6 address '%s' must be written in brackets", buf);
    default:
        return config_read_fail(r, path, ALLOWED_LISTEN, "'%s' is not an IP address and port", buf);
    }
    l->proto = (enum config_listen_proto)proto;
    memcpy(l->text, s, len);
    l->text[len] = 0;
    return 0;
}

/* Two listeners clash when they bind the same socket: same protocol, or both stream
 * protocols (tcp, tls, ws, wss share the TCP port space), on the same address and port. */
static int listen_clash(const struct config_listen *a, const struct config_listen *b)
{
    int sa = a->proto != CONFIG_LISTEN_UDP, sb = b->proto != CONFIG_LISTEN_UDP;
    return a->port == b->port && a->family == b->family && strcmp(a->host, b->host) == 0 &&
           (a->proto == b->proto || (sa && sb));
}

/* sip.listen: the strings come from the generic list reader; each is then parsed into a
 * listener and checked against the ones before it. */
static int get_listen(struct config_read *r, int t, struct config *c)
{
    const char *path = "sip.listen";
    char **strs = NULL;
    size_t n = 0;
    if (config_read_get_str_list(r, t, "sip", "listen", 256, ALLOWED_LISTEN, NULL, &strs, &n) != 0)
        return -1;
    if (strs == NULL)
        return 0; /* absent: the default listeners stay */
    int rc = 0;
    struct config_listen *v = NULL;
    if (n == 0)
        rc = config_read_fail(r, path, "at least one listener", "empty list");
    else if ((v = calloc(n, sizeof(*v))) == NULL)
        rc = config_read_fail_oom(r, path);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        char ip[64];
        snprintf(ip, sizeof(ip), "%s[%zu]", path, i + 1);
        rc = parse_listen(r, ip, strs[i], strlen(strs[i]), &v[i]);
        for (size_t j = 0; rc == 0 && j < i; j++)
            if (listen_clash(&v[i], &v[j]))
                rc = config_read_fail(r, ip, "each address and port once per protocol; tcp, "
                                      "tls, ws and wss share the TCP port space",
                                      "'%s' clashes with sip.listen[%zu] '%s'",
                                      v[i].text, j + 1, v[j].text);
    }
    for (size_t i = 0; i < n; i++)
        free(strs[i]);
    free(strs);
    if (rc != 0) {
        free(v);
        return -1;
    }
    free(c->listen);
    c->listen = v;
    c->nlisten = n;
    return 0;
}

static int get_tls_sni(struct config_read *r, int t, struct config *c)
{
    static const char *const sni_keys[] = { "certificate", "private_key", NULL };
    static const char *allowed = "{ [\"host.name\"] = { certificate = PATH, private_key = PATH } }";
    lua_State *L = r->L;
    const char *base = "tls.sni";
    int st = config_read_push_table(r, t, "tls", "sni", allowed);
    if (st <= 0)
        return st == 0 ? (lua_pop(L, 1), 0) : -1;
    size_t n = 0, cap = 0;
    struct config_tls_sni *v = NULL;
    int rc = 0;
    lua_pushnil(L);
    while (rc == 0 && lua_next(L, st) != 0) {
        char kp[320], fp[400], buf[256];
        config_read_key_path(L, -2, base, kp, sizeof(kp));
        int vt = lua_gettop(L);
        const char *name;
        size_t len;
        if (lua_type(L, -2) != LUA_TSTRING) {
            rc = config_read_fail(r, kp, allowed, "key is not a host name");
            break;
        }
        name = lua_tolstring(L, -2, &len);
        if (!config_read_valid_hostname(name, len, 1)) {
            rc = config_read_fail(r, kp, "host names such as \"sip.example.com\" or "
                                  "\"*.example.com\"", "'%s' is not a host name",
                                  config_read_show(buf, sizeof(buf), name, len));
            break;
        }
        if (lua_type(L, vt) != LUA_TTABLE) {
            rc = config_read_fail_type(r, kp, "a table", lua_type(L, vt), allowed);
            break;
        }
        if (n >= CONF_LIST_MAX) {
            rc = config_read_fail(r, base, allowed, "too many entries (max %d)", CONF_LIST_MAX);
            break;
        }
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 4;
            struct config_tls_sni *nv = realloc(v, ncap * sizeof(*v));
            if (nv == NULL) {
                rc = config_read_fail_oom(r, kp);
                break;
            }
            v = nv;
            cap = ncap;
        }
        struct config_tls_sni *e = &v[n++];
        memset(e, 0, sizeof(*e));
        if ((e->name = config_read_lower_dup(name, len)) == NULL) {
            rc = config_read_fail_oom(r, kp);
            break;
        }
        for (size_t j = 0; j + 1 < n; j++)
            if (strcmp(v[j].name, e->name) == 0)
                rc = config_read_fail(r, kp, "each host name once", "duplicate of another entry "
                                      "(names are compared without case)");
        if (rc == 0)
            rc = config_read_check_keys(r, vt, kp, sni_keys);
        for (int k = 0; rc == 0 && sni_keys[k]; k++) {
            char **dst = k == 0 ? &e->certificate : &e->private_key;
            rc = config_read_get_path(r, vt, kp, sni_keys[k], 0, dst);
            if (rc == 0 && *dst == NULL) {
                snprintf(fp, sizeof(fp), "%s.%s", kp, sni_keys[k]);
                rc = config_read_fail(r, fp, "a file path (relative to the config dir)", "missing");
            }
        }
        lua_pop(L, 1);
    }
    if (rc != 0) {
        lua_settop(L, st - 1);
        for (size_t i = 0; i < n; i++) {
            free(v[i].name);
            free(v[i].certificate);
            free(v[i].private_key);
        }
        free(v);
        return -1;
    }
    lua_pop(L, 1);
    c->tls_sni = v;
    c->ntls_sni = n;
    return 0;
}

static int sni_cmp(const void *a, const void *b)
{
    return strcmp(((const struct config_tls_sni *)a)->name, ((const struct config_tls_sni *)b)->name);
}

static int read_core(struct config_read *r, int t, struct config *c)
{
    static const char *const levels[] = { "debug", "info", "notice", "warn", "error", NULL };
    char buf[256];
    const char *s;
    size_t len;
    int v, was_false;

    v = (int)c->log_level;
    if (config_read_get_enum(r, t, "core", "log_level", levels, &v) != 0)
        return -1;
    c->log_level = (enum log_level)v;

    int rc = config_read_get_str(r, t, "core", "syslog_facility", 0,
                                 "daemon, user, local0 .. local7", &s, &len, NULL);
    if (rc < 0)
        return -1;
    if (rc > 0) {
        char *f = strndup(s, len);
        if (f == NULL)
            return config_read_fail_oom(r, "core.syslog_facility");
        if (!log_facility_valid(f)) {
            free(f);
            return config_read_fail(r, "core.syslog_facility", "daemon, user, local0 .. local7",
                                    "unknown facility '%s'",
                                    config_read_show(buf, sizeof(buf), s, len));
        }
        free(c->syslog_facility);
        c->syslog_facility = f;
    }

    if (config_read_get_str_list(r, t, "core", "nameservers", 16, "nil (use /etc/resolv.conf) "
                                 "or a non-empty list of " ALLOWED_NAMESERVER, item_nameserver,
                                 &c->nameservers, &c->nnameservers) != 0)
        return -1;
    if (c->nameservers != NULL && c->nnameservers == 0)
        return config_read_fail(r, "core.nameservers", "nil (use /etc/resolv.conf) or a non-empty "
                                "list of " ALLOWED_NAMESERVER, "empty list");

    if (config_read_get_path(r, t, "core", "control_socket", 1, &c->control_socket) != 0)
        return -1;
    if (c->control_socket != NULL &&
        strlen(c->control_socket) >= sizeof(((struct sockaddr_un *)0)->sun_path))
        return config_read_fail(r, "core.control_socket", "a path of at most 107 bytes once made "
                                "absolute, or false", "'%s' is too long for a unix socket",
                                config_read_show(buf, sizeof(buf), c->control_socket,
                                                 strlen(c->control_socket)));

    rc = config_read_get_str(r, t, "core", "metrics_listen", 1,
                             "nil or \"IPv4:PORT\" or \"[IPv6]:PORT\"", &s, &len, &was_false);
    if (rc < 0)
        return -1;
    if (rc > 0) {
        char host[64];
        int family, port;
        if (config_read_parse_hostport(s, len, 0, host, &family, &port) != CONFIG_READ_HP_OK)
            return config_read_fail(r, "core.metrics_listen", "nil or \"IPv4:PORT\" or "
                                    "\"[IPv6]:PORT\" with an IP address and a port from 1 to "
                                    "65535", "'%s' is not an address and port",
                                    config_read_show(buf, sizeof(buf), s, len));
        free(c->metrics_listen);
        if (asprintf(&c->metrics_listen, family == AF_INET6 ? "[%s]:%d" : "%s:%d", host, port) == -1) {
            c->metrics_listen = NULL;
            return config_read_fail_oom(r, "core.metrics_listen");
        }
    }

    if (config_read_get_num(r, t, "core", "shutdown_grace", 0, 0, 3600,
                            &c->shutdown_grace) != 0 ||
        config_read_get_int(r, t, "core", "workers", 1, 64, &c->workers) != 0 ||
        config_read_get_path(r, t, "core", "script", 0, &c->script) != 0)
        return -1;
    return 0;
}

static int read_sip(struct config_read *r, int t, struct config *c)
{
    char buf[256];
    const char *s;
    size_t len;
    int was_false;

    if (get_listen(r, t, c) != 0)
        return -1;

    int rc = config_read_get_str(r, t, "sip", "advertised_address", 1,
                                 "nil, a host name or an IP address", &s, &len, &was_false);
    if (rc < 0)
        return -1;
    if (rc > 0) {
        char host[64];
        int family, port;
        char *v;
        if (config_read_parse_hostport(s, len, 1, host, &family, &port) == CONFIG_READ_HP_NO_PORT) {
            /* Stored the way it is written in Via: IPv6 in brackets. */
            if (asprintf(&v, family == AF_INET6 ? "[%s]" : "%s", host) == -1)
                v = NULL;
        } else if (config_read_valid_hostname(s, len, 0)) {
            v = config_read_lower_dup(s, len);
        } else {
            return config_read_fail(r, "sip.advertised_address",
                                    "nil, a host name or an IP address (no port)",
                                    "'%s' is not a host name or IP address",
                                    config_read_show(buf, sizeof(buf), s, len));
        }
        if (v == NULL)
            return config_read_fail_oom(r, "sip.advertised_address");
        free(c->advertised_address);
        c->advertised_address = v;
    }

    if (config_read_get_str_list(r, t, "sip", "local_domains", CONF_LIST_MAX,
                                 "a list of host names or IP addresses", item_domain,
                                 &c->local_domains, &c->nlocal_domains) != 0)
        return -1;

    if (config_read_get_int(r, t, "sip", "max_message_size", 512, 1048576,
                            &c->max_message_size) != 0 ||
        config_read_get_num(r, t, "sip", "tcp_connect_timeout", 0, 1, 86400,
                            &c->tcp_connect_timeout) != 0 ||
        config_read_get_num(r, t, "sip", "tls_handshake_timeout", 0, 1, 86400,
                            &c->tls_handshake_timeout) != 0 ||
        config_read_get_num(r, t, "sip", "header_timeout", 0, 1, 86400,
                            &c->header_timeout) != 0 ||
        config_read_get_num(r, t, "sip", "connection_idle_timeout", 0, 1, 86400,
                            &c->connection_idle_timeout) != 0 ||
        config_read_get_int(r, t, "sip", "max_connections", 1, 10000000,
                            &c->max_connections) != 0 ||
        config_read_get_int(r, t, "sip", "max_connections_per_ip", 1, 10000000,
                            &c->max_connections_per_ip) != 0)
        return -1;
    if (c->max_connections_per_ip > c->max_connections)
        return config_read_fail(r, "sip.max_connections_per_ip",
                                "an integer from 1 to sip.max_connections",
                                "%d exceeds sip.max_connections (%d)", c->max_connections_per_ip,
                                c->max_connections);

    rc = config_read_get_str(r, t, "sip", "outbound_flow_secret", 1, "nil (random per start) or "
                             "a string of 16 to 4096 bytes", &s, &len, &was_false);
    if (rc < 0)
        return -1;
    if (rc > 0) {
        if (len < 16)
            return config_read_fail(r, "sip.outbound_flow_secret", "nil (random per start) or a "
                                    "string of 16 to 4096 bytes",
                                    "secret of %zu bytes is too short", len);
        if (config_read_set_str(r, "sip.outbound_flow_secret", &c->outbound_flow_secret, s,
                                len) != 0)
            return -1;
    }
    return 0;
}

static int read_websocket(struct config_read *r, int t, struct config *c)
{
    if (config_read_get_int(r, t, "websocket", "max_message_size", 512, 16 << 20,
                            &c->ws_max_message_size) != 0 ||
        config_read_get_int(r, t, "websocket", "max_frame_size", 512, 16 << 20,
                            &c->ws_max_frame_size) != 0 ||
        config_read_get_num(r, t, "websocket", "keepalive_interval", 0, 1, 86400,
                            &c->ws_keepalive_interval) != 0 ||
        config_read_get_num(r, t, "websocket", "pong_timeout", 0, 1, 86400,
                            &c->ws_pong_timeout) != 0)
        return -1;
    return config_read_get_str_list(r, t, "websocket", "allowed_origins", CONF_LIST_MAX,
                                    "nil (any origin) or a list of exact origins such as "
                                    "\"https://www.example.com\"", item_origin,
                                    &c->ws_allowed_origins, &c->nws_allowed_origins);
}

static int read_tls(struct config_read *r, int t, struct config *c)
{
    static const char *const versions[] = { "1.2", "1.3", NULL };
    static const char *const verify[] = { "none", "optional", "required", NULL };
    int v;
    if (config_read_get_path(r, t, "tls", "certificate", 0, &c->tls_certificate) != 0 ||
        config_read_get_path(r, t, "tls", "private_key", 0, &c->tls_private_key) != 0 ||
        config_read_get_path(r, t, "tls", "ca_file", 1, &c->tls_ca_file) != 0)
        return -1;
    v = strcmp(c->tls_min_version, "1.3") == 0;
    if (config_read_get_enum(r, t, "tls", "min_version", versions, &v) != 0 ||
        config_read_set_str(r, "tls.min_version", &c->tls_min_version, versions[v],
                            strlen(versions[v])) != 0)
        return -1;
    v = (int)c->tls_verify_client;
    if (config_read_get_enum(r, t, "tls", "verify_client", verify, &v) != 0)
        return -1;
    c->tls_verify_client = (enum config_verify_client)v;
    if (get_tls_sni(r, t, c) != 0)
        return -1;
    if (c->ntls_sni > 1)
        qsort(c->tls_sni, c->ntls_sni, sizeof(*c->tls_sni), sni_cmp);
    return 0;
}

static int read_pike(struct config_read *r, int t, struct config *c)
{
    if (config_read_get_bool(r, t, "pike", "enabled", &c->pike_enabled) != 0 ||
        config_read_get_num(r, t, "pike", "window", 0, 1, 86400, &c->pike_window) != 0 ||
        config_read_get_int(r, t, "pike", "max_requests", 1, 1000000, &c->pike_max_requests) != 0 ||
        config_read_get_num(r, t, "pike", "ban_time", 0, 1, 86400, &c->pike_ban_time) != 0)
        return -1;
    return 0;
}

static int read_events(struct config_read *r, int t, struct config *c)
{
    static const char *const overflow[] = { "drop_oldest", "drop_newest", NULL };
    int v = (int)c->events_overflow;
    if (config_read_get_int(r, t, "events", "queue_limit", 1, 10000000,
                            &c->events_queue_limit) != 0 ||
        config_read_get_enum(r, t, "events", "overflow", overflow, &v) != 0 ||
        config_read_get_num(r, t, "events", "connect_timeout", 0, 1, 300, &c->events_connect_timeout) != 0 ||
        config_read_get_num(r, t, "events", "send_timeout", 0, 1, 300, &c->events_send_timeout) != 0 ||
        config_read_get_num(r, t, "events", "retry_max", 0.5, 0, 3600, &c->events_retry_max) != 0 ||
        config_read_get_int(r, t, "events", "heartbeat", 0, 3600, &c->events_heartbeat) != 0)
        return -1;
    c->events_overflow = (enum config_overflow)v;
    return 0;
}

static int set_defaults(struct config_read *r, struct config *c)
{
    c->log_level = LOG_LVL_INFO;
    c->shutdown_grace = 5;
    c->workers = 1;
    c->max_message_size = 65535;
    c->tcp_connect_timeout = 2;
    c->tls_handshake_timeout = 4;
    c->header_timeout = 10;
    c->connection_idle_timeout = 7200;
    c->max_connections = 20000;
    c->max_connections_per_ip = 200;
    c->ws_max_message_size = 65536;
    c->ws_max_frame_size = 65536;
    c->ws_keepalive_interval = 60;
    c->ws_pong_timeout = 10;
    c->tls_verify_client = CONFIG_VERIFY_OPTIONAL;
    c->pike_enabled = 1;
    c->pike_window = 2;
    c->pike_max_requests = 50;
    c->pike_ban_time = 60;
    c->events_queue_limit = 10000;
    c->events_overflow = CONFIG_OVERFLOW_DROP_OLDEST;
    c->events_connect_timeout = 2;
    c->events_send_timeout = 5;
    c->events_retry_max = 30;
    c->events_heartbeat = 10;

    size_t n = sizeof(default_listen) / sizeof(default_listen[0]);
    if ((c->syslog_facility = strdup("daemon")) == NULL ||
        (c->tls_min_version = strdup("1.2")) == NULL ||
        (c->listen = calloc(n, sizeof(*c->listen))) == NULL ||
        config_read_resolve_path(r, "core.control_socket", "lunasip.ctl", 11,
                                 &c->control_socket) != 0 ||
        config_read_resolve_path(r, "core.script", "server.lua", 10, &c->script) != 0 ||
        config_read_resolve_path(r, "tls.certificate", "tls/server.crt", 14,
                                 &c->tls_certificate) != 0 ||
        config_read_resolve_path(r, "tls.private_key", "tls/server.key", 14,
                                 &c->tls_private_key) != 0)
        return config_read_fail_oom(r, "defaults");
    c->nlisten = n;
    for (size_t i = 0; i < n; i++)
        if (parse_listen(r, "sip.listen", default_listen[i], strlen(default_listen[i]),
                         &c->listen[i]) != 0)
            return -1;
    return 0;
}

void config_free(struct config *c)
{
    if (c == NULL)
        return;
    free(c->dir);
    free(c->file);
    free(c->syslog_facility);
    config_read_free_strv(c->nameservers, c->nnameservers);
    free(c->control_socket);
    free(c->metrics_listen);
    free(c->script);
    free(c->listen);
    free(c->advertised_address);
    config_read_free_strv(c->local_domains, c->nlocal_domains);
    free(c->outbound_flow_secret);
    config_read_free_strv(c->ws_allowed_origins, c->nws_allowed_origins);
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

static int ends_with_slash(const char *s)
{
    size_t n = strlen(s);
    return n > 0 && s[n - 1] == '/';
}

/* Resolves the config dir: dir when given, else the directory of file. Returns a malloc'd
 * absolute path or NULL with err filled. */
static char *resolve_dir(const char *dir, const char *file, char *err, size_t errlen)
{
    char *d;
    if (dir == NULL) {
        const char *slash = strrchr(file, '/');
        d = slash == NULL ? strdup(".") : slash == file ? strdup("/") : strndup(file, (size_t)(slash - file));
        if (d == NULL) {
            snprintf(err, errlen, "%s: out of memory", file);
            return NULL;
        }
    } else {
        d = strdup(dir);
        if (d == NULL) {
            snprintf(err, errlen, "%s: out of memory", dir);
            return NULL;
        }
    }
    char *abs = realpath(d, NULL);
    if (abs == NULL)
        snprintf(err, errlen, "%s: cannot use as config dir: %s", d, strerror(errno));
    free(d);
    return abs;
}

/* Takes nothing; on success *out owns every string (free with config_free). On failure *out
 * is zeroed and err says what and where. A relative file is taken relative to the current
 * directory, as typed on the command line. */
int config_load(const char *dir, const char *file, struct config *out, char *err, size_t errlen)
{
    static const char *const sections[] = { "core", "sip", "websocket", "tls", "pike", "events", NULL };
    static int (*const readers[])(struct config_read *, int, struct config *) = {
        read_core, read_sip, read_websocket, read_tls, read_pike, read_events,
    };
    static const char *const core_keys[] = { "log_level", "syslog_facility", "nameservers",
        "control_socket", "metrics_listen", "shutdown_grace", "workers", "script", NULL };
    static const char *const sip_keys[] = { "listen", "advertised_address", "local_domains",
        "max_message_size", "tcp_connect_timeout", "tls_handshake_timeout", "header_timeout",
        "connection_idle_timeout", "max_connections", "max_connections_per_ip",
        "outbound_flow_secret", NULL };
    static const char *const websocket_keys[] = { "max_message_size", "max_frame_size",
        "keepalive_interval", "pong_timeout", "allowed_origins", NULL };
    static const char *const tls_keys[] = { "certificate", "private_key", "ca_file",
        "min_version", "verify_client", "sni", NULL };
    static const char *const pike_keys[] = { "enabled", "window", "max_requests", "ban_time", NULL };
    static const char *const events_keys[] = { "queue_limit", "overflow", "connect_timeout",
                                               "send_timeout", "retry_max", "heartbeat", NULL };
    static const char *const *const keys[] = {
        core_keys, sip_keys, websocket_keys, tls_keys, pike_keys, events_keys,
    };
    struct config_read_sandbox sb;
    char *path = NULL;
    int missing;

    memset(out, 0, sizeof(*out));
    if (dir == NULL && file == NULL) {
        snprintf(err, errlen, "config_load: no config dir or file given");
        return -1;
    }
    if (file != NULL)
        path = strdup(file);
    else if (asprintf(&path, "%s%slunasip.conf", dir, ends_with_slash(dir) ? "" : "/") == -1)
        path = NULL;
    if (path == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    struct config_read r = { .L = NULL, .file = path, .dir = NULL, .err = err, .errlen = errlen };
    if ((out->dir = resolve_dir(dir, path, err, errlen)) == NULL)
        goto fail;
    r.dir = out->dir;
    if (set_defaults(&r, out) != 0)
        goto fail;
    if ((r.L = config_read_sandbox_run(&sb, path, &missing, err, errlen)) == NULL)
        goto fail;
    if (config_read_check_keys(&r, 1, "", sections) != 0)
        goto fail;
    for (int i = 0; sections[i]; i++) {
        char allowed[64];
        snprintf(allowed, sizeof(allowed), "a table of %s settings", sections[i]);
        int t = config_read_push_table(&r, 1, "", sections[i], allowed);
        if (t < 0)
            goto fail;
        int rc = t > 0 ? config_read_check_keys(&r, t, sections[i], keys[i]) : 0;
        if (rc == 0 && t > 0)
            rc = readers[i](&r, t, out);
        lua_settop(r.L, 1);
        if (rc != 0)
            goto fail;
    }
    lua_close(r.L);
    if ((out->file = realpath(path, NULL)) == NULL) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        r.L = NULL;
        goto fail;
    }
    free(path);
    return 0;

fail:
    if (r.L != NULL)
        lua_close(r.L);
    config_free(out);
    free(path);
    return -1;
}

/* ------------------------------------------------------------------------------------------
 * proxies.conf */

static const char *const proxy_keys[] = {
    "do_record_routing", "record_route_all", "use_dns", "use_dns_cache", "dns_cache_time",
    "use_naptr", "use_srv", "transport_preference", "force_transport_preference",
    "ip_type_preference", "dns_failover_on_503", "use_blacklist", "blacklist_time",
    "timer_B", "timer_C", "timer_F", "callback_on_server_tls_handshake", NULL,
};

static void proxy_defaults(struct config_proxy *p)
{
    memset(p, 0, sizeof(*p));
    p->do_record_routing = 1;
    p->record_route_all = 0;
    p->use_dns = 1;
    p->use_dns_cache = 1;
    p->dns_cache_time = 300;
    p->use_naptr = 1;
    p->use_srv = 1;
    p->transport_preference[0] = CONFIG_LISTEN_TLS;
    p->transport_preference[1] = CONFIG_LISTEN_TCP;
    p->transport_preference[2] = CONFIG_LISTEN_UDP;
    p->ntransport_preference = 3;
    p->force_transport_preference = 0;
    p->ip_type_preference[0] = AF_INET;
    p->ip_type_preference[1] = AF_INET6;
    p->nip_type_preference = 2;
    p->dns_failover_on_503 = 1;
    p->use_blacklist = 1;
    p->blacklist_time = 10;
    p->timer_B = 32;
    p->timer_C = 120;
    p->timer_F = 32;
    p->callback_on_server_tls_handshake = 1;
}

/* A preference list: distinct names out of names[], mapped through values[]. Read as a
 * list of strings (config_read_get_str_list), then each entry looked up. */
static int get_pref(struct config_read *r, int t, const char *sect, const char *key,
                    const char *const *names, const int *values, int max, int *out, int *nout)
{
    char path[160], ip[200], allowed[160], buf[256], names_s[64];
    config_read_join_names(names, names_s, sizeof(names_s));
    snprintf(allowed, sizeof(allowed), "a non-empty list of distinct values out of %s", names_s);
    config_read_field_path(path, sizeof(path), sect, key);
    char **v = NULL;
    size_t n = 0;
    if (config_read_get_str_list(r, t, sect, key, (size_t)max, allowed, NULL, &v, &n) != 0)
        return -1;
    if (!v)
        return 0; /* absent: the default stays */
    int tmp[3], rc = n == 0 ? config_read_fail(r, path, allowed, "empty list") : 0;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        snprintf(ip, sizeof(ip), "%s[%zu]", path, i + 1);
        int found = -1;
        for (int k = 0; names[k]; k++)
            if (strcmp(names[k], v[i]) == 0)
                found = k;
        if (found < 0) {
            rc = config_read_fail(r, ip, allowed, "unknown value '%s'",
                                  config_read_show(buf, sizeof(buf), v[i], strlen(v[i])));
            break;
        }
        for (size_t j = 0; rc == 0 && j < i; j++)
            if (tmp[j] == values[found])
                rc = config_read_fail(r, ip, allowed, "'%s' listed twice", names[found]);
        tmp[i] = values[found];
    }
    config_read_free_strv(v, n);
    if (rc != 0)
        return -1;
    memcpy(out, tmp, n * sizeof(int));
    *nout = (int)n;
    return 0;
}

static int read_proxy(struct config_read *r, int t, const char *name, struct config_proxy *p)
{
    static const char *const transports[] = { "tls", "tcp", "udp", NULL };
    static const int transport_values[] = { CONFIG_LISTEN_TLS, CONFIG_LISTEN_TCP, CONFIG_LISTEN_UDP };
    static const char *const iptypes[] = { "ipv4", "ipv6", NULL };
    static const int iptype_values[] = { AF_INET, AF_INET6 };

    if (config_read_check_keys(r, t, name, proxy_keys) != 0 ||
        config_read_get_bool(r, t, name, "do_record_routing", &p->do_record_routing) != 0 ||
        config_read_get_bool(r, t, name, "record_route_all", &p->record_route_all) != 0 ||
        config_read_get_bool(r, t, name, "use_dns", &p->use_dns) != 0 ||
        config_read_get_bool(r, t, name, "use_dns_cache", &p->use_dns_cache) != 0 ||
        config_read_get_int(r, t, name, "dns_cache_time", 0, 604800, &p->dns_cache_time) != 0 ||
        config_read_get_bool(r, t, name, "use_naptr", &p->use_naptr) != 0 ||
        config_read_get_bool(r, t, name, "use_srv", &p->use_srv) != 0 ||
        get_pref(r, t, name, "transport_preference", transports, transport_values, 3,
                 p->transport_preference, &p->ntransport_preference) != 0 ||
        config_read_get_bool(r, t, name, "force_transport_preference",
                             &p->force_transport_preference) != 0 ||
        get_pref(r, t, name, "ip_type_preference", iptypes, iptype_values, 2,
                 p->ip_type_preference, &p->nip_type_preference) != 0 ||
        config_read_get_bool(r, t, name, "dns_failover_on_503", &p->dns_failover_on_503) != 0 ||
        config_read_get_bool(r, t, name, "use_blacklist", &p->use_blacklist) != 0 ||
        config_read_get_int(r, t, name, "blacklist_time", 0, 86400, &p->blacklist_time) != 0 ||
        config_read_get_num(r, t, name, "timer_B", 0, 1, 3600, &p->timer_B) != 0 ||
        config_read_get_num(r, t, name, "timer_C", 0, 1, 3600, &p->timer_C) != 0 ||
        config_read_get_num(r, t, name, "timer_F", 0, 1, 3600, &p->timer_F) != 0 ||
        config_read_get_bool(r, t, name, "callback_on_server_tls_handshake",
                             &p->callback_on_server_tls_handshake) != 0)
        return -1;
    return 0;
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void config_proxies_free(struct config_proxies *p)
{
    if (p == NULL)
        return;
    for (size_t i = 0; i < p->nprofiles; i++)
        free(p->profiles[i].name);
    free(p->profiles);
    memset(p, 0, sizeof(*p));
}

/* Profiles come out as default_proxy first, then the others sorted by name; each other
 * profile starts from default_proxy as loaded (OverSIP). */
int config_proxies_load(const char *dir, struct config_proxies *out, char *err, size_t errlen)
{
    struct config_read_sandbox sb;
    char *path = NULL;
    char **names = NULL;
    size_t nnames = 0;
    int missing;
    struct config_read r = { .L = NULL, .file = NULL, .dir = dir, .err = err, .errlen = errlen };

    memset(out, 0, sizeof(*out));
    if (dir == NULL || asprintf(&path, "%s%sproxies.conf", dir, ends_with_slash(dir) ? "" : "/") == -1) {
        snprintf(err, errlen, "config_proxies_load: no config dir or out of memory");
        return -1;
    }
    r.file = path;
    r.L = config_read_sandbox_run(&sb, path, &missing, err, errlen);
    if (r.L == NULL && !missing)
        goto fail;

    if (r.L != NULL) {
        lua_State *L = r.L;
        size_t cap = 0;
        int has_default = 0;
        lua_pushnil(L);
        while (lua_next(L, 1) != 0) {
            char kp[320];
            size_t len;
            config_read_key_path(L, -2, "", kp, sizeof(kp));
            const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &len) : NULL;
            int vty = lua_type(L, -1);
            lua_pop(L, 1);
            if (k == NULL || !config_read_is_ident(k, len)) {
                lua_pop(L, 1);
                config_read_fail(&r, kp, "identifiers of at most 64 characters",
                                 "bad profile name");
                goto fail;
            }
            if (vty != LUA_TTABLE) {
                lua_pop(L, 1);
                config_read_fail_type(&r, kp, "a table", vty, "a table of proxy settings");
                goto fail;
            }
            if (strcmp(k, "default_proxy") == 0) {
                has_default = 1;
                continue;
            }
            if (nnames >= CONF_PROFILES_MAX) {
                lua_pop(L, 1);
                config_read_fail(&r, kp, "at most 1000 profiles", "too many profiles");
                goto fail;
            }
            if (nnames == cap) {
                size_t ncap = cap ? cap * 2 : 8;
                char **nv = realloc(names, ncap * sizeof(*names));
                if (nv == NULL) {
                    lua_pop(L, 1);
                    config_read_fail_oom(&r, kp);
                    goto fail;
                }
                names = nv;
                cap = ncap;
            }
            if ((names[nnames] = strndup(k, len)) == NULL) {
                lua_pop(L, 1);
                config_read_fail_oom(&r, kp);
                goto fail;
            }
            nnames++;
        }
        (void)has_default;
        if (nnames > 1)
            qsort(names, nnames, sizeof(*names), name_cmp);
    }

    out->profiles = calloc(nnames + 1, sizeof(*out->profiles));
    if (out->profiles == NULL) {
        config_read_fail_oom(&r, "default_proxy");
        goto fail;
    }
    proxy_defaults(&out->profiles[0]);
    if ((out->profiles[0].name = strdup("default_proxy")) == NULL) {
        config_read_fail_oom(&r, "default_proxy");
        goto fail;
    }
    out->nprofiles = 1;
    if (r.L != NULL) {
        int t = config_read_push_table(&r, 1, "", "default_proxy", "a table of proxy settings");
        int rc = t > 0 ? read_proxy(&r, t, "default_proxy", &out->profiles[0]) : t;
        lua_settop(r.L, 1);
        if (rc != 0)
            goto fail;
    }
    for (size_t i = 0; i < nnames; i++) {
        struct config_proxy *p = &out->profiles[out->nprofiles];
        *p = out->profiles[0];
        p->name = names[i];
        names[i] = NULL;
        out->nprofiles++;
        int t = config_read_push_table(&r, 1, "", p->name, "a table of proxy settings");
        int rc = t > 0 ? read_proxy(&r, t, p->name, p) : -1;
        lua_settop(r.L, 1);
        if (rc != 0)
            goto fail;
    }
    free(names);
    if (r.L != NULL)
        lua_close(r.L);
    free(path);
    return 0;

fail:
    for (size_t i = 0; i < nnames; i++)
        free(names[i]);
    free(names);
    if (r.L != NULL)
        lua_close(r.L);
    config_proxies_free(out);
    free(path);
    return -1;
}

/* NULL or "" names default_proxy. Borrows p; the result lives as long as p. */
const struct config_proxy *config_proxies_find(const struct config_proxies *p, const char *name)
{
    if (name == NULL || *name == 0)
        name = "default_proxy";
    for (size_t i = 0; i < p->nprofiles; i++)
        if (strcmp(p->profiles[i].name, name) == 0)
            return &p->profiles[i];
    return NULL;
}
