/* Configuration: lunasip.conf (SPEC §3.1) and proxies.conf (SPEC §3.2), Lua chunks run in
 * an empty sandbox, every key parsed, defaulted and validated. An error names the file,
 * the key path and what is allowed. */
#ifndef LUNASIP_CONFIG_H
#define LUNASIP_CONFIG_H

#include <stddef.h>

#include "log.h"

#define CONFIG_ERR_MAX 512

enum config_listen_proto {
    CONFIG_LISTEN_UDP = 0,
    CONFIG_LISTEN_TCP,
    CONFIG_LISTEN_TLS,
    CONFIG_LISTEN_WS,
    CONFIG_LISTEN_WSS,
};

struct config_listen {
    enum config_listen_proto proto;
    char host[64];   /* IPv4 dotted or IPv6 without brackets, validated by inet_pton */
    int family;      /* AF_INET or AF_INET6 */
    int port;        /* 1..65535 */
    char text[96];   /* as written, for logs */
};

struct config_tls_sni {
    char *name;
    char *certificate;
    char *private_key;
};

enum config_overflow {
    CONFIG_OVERFLOW_DROP_OLDEST = 0,
    CONFIG_OVERFLOW_DROP_NEWEST,
};

enum config_verify_client {
    CONFIG_VERIFY_NONE = 0,
    CONFIG_VERIFY_OPTIONAL,
    CONFIG_VERIFY_REQUIRED,
};

struct config_proxy {
    char *name;
    int do_record_routing, record_route_all;
    int use_dns, use_dns_cache, dns_cache_time;
    int use_naptr, use_srv;
    int transport_preference[3]; /* CONFIG_LISTEN_UDP/TCP/TLS in order; ntransport_preference used */
    int ntransport_preference;
    int force_transport_preference;
    int ip_type_preference[2];   /* AF_INET / AF_INET6 in order */
    int nip_type_preference;
    int dns_failover_on_503;
    int use_blacklist, blacklist_time;
    double timer_B, timer_C, timer_F;
    int callback_on_server_tls_handshake;
};

/* Everything of lunasip.conf, with paths made absolute against the config dir. */
struct config {
    char *dir;                   /* config dir, absolute */
    char *file;                  /* lunasip.conf path */

    /* core */
    enum log_level log_level;
    char *syslog_facility;
    char **nameservers; size_t nnameservers; /* NULL = resolv.conf; entries "IP[:PORT]",
                                             * normalised to "IPv4:PORT" / "[IPv6]:PORT" (53) */
    char *control_socket;        /* absolute path or NULL (disabled: `control_socket = false`) */
    char *metrics_listen;        /* "IP:PORT" or NULL */
    double shutdown_grace;
    int workers;
    char *script;                /* absolute path of server.lua */

    /* sip */
    struct config_listen *listen; size_t nlisten;
    char *advertised_address;    /* NULL = bound IP; IPv6 stored in brackets, names lower-case */
    char **local_domains; size_t nlocal_domains;
    int max_message_size;
    double tcp_connect_timeout, tls_handshake_timeout, header_timeout, connection_idle_timeout;
    int max_connections, max_connections_per_ip;
    char *outbound_flow_secret;  /* NULL = random per start */

    /* websocket */
    int ws_max_message_size, ws_max_frame_size;
    double ws_keepalive_interval, ws_pong_timeout;
    char **ws_allowed_origins; size_t nws_allowed_origins; /* NULL = any; {} = non-NULL, 0: none */

    /* tls (paths absolute) */
    char *tls_certificate, *tls_private_key, *tls_ca_file;
    char *tls_min_version;       /* "1.2" | "1.3" */
    enum config_verify_client tls_verify_client;
    struct config_tls_sni *tls_sni; size_t ntls_sni;

    /* pike */
    int pike_enabled; double pike_window; int pike_max_requests; double pike_ban_time;

    /* events */
    int events_queue_limit;
    enum config_overflow events_overflow;
    double events_connect_timeout;  /* tcp/http/rabbitmq connect (and AMQP login) */
    double events_send_timeout;     /* a delivery that makes no progress for this long fails */
    double events_retry_max;        /* reconnect backoff: 0.5 s doubling up to this */
    int events_heartbeat;           /* AMQP heartbeat, s; 0 = off */
};

/* proxies.conf: named profiles; default_proxy always present. */
struct config_proxies {
    struct config_proxy *profiles; size_t nprofiles;
};

/* Loads <dir>/lunasip.conf (file overrides the path when non-NULL). On error returns -1
 * with err filled ("<file>: <key.path>: <what is wrong>; allowed: ..."); a missing file
 * is an error. Caller frees with config_free. */
int config_load(const char *dir, const char *file, struct config *out, char *err, size_t errlen);
void config_free(struct config *c);

/* Loads <dir>/proxies.conf; a missing file yields only default_proxy with defaults. */
int config_proxies_load(const char *dir, struct config_proxies *out, char *err, size_t errlen);
void config_proxies_free(struct config_proxies *p);
const struct config_proxy *config_proxies_find(const struct config_proxies *p, const char *name);

#endif
