/* Unit tests for config.c: the shipped conf/ loads, defaults, every kind of validation error
 * (file, key path and "allowed" in the message), the sandbox (no libraries, instruction and
 * memory limits, no bytecode) and proxies.conf inheritance. Run from the repo root. */
#include "test.h"

#include "config.h"

#include <arpa/inet.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>

static char tmpdir[64];
static char errbuf[CONFIG_ERR_MAX];

static void write_file(const char *dir, const char *name, const char *text, size_t len)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(text, 1, len, f) != len) {
        perror(path);
        exit(2);
    }
    fclose(f);
}

static void remove_file(const char *dir, const char *name)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    unlink(path);
}

/* Writes text as <tmpdir>/lunasip.conf and loads it. */
static int load_conf(const char *text, struct config *c)
{
    write_file(tmpdir, "lunasip.conf", text, strlen(text));
    errbuf[0] = 0;
    return config_load(tmpdir, NULL, c, errbuf, sizeof(errbuf));
}

static int load_proxies(const char *text, struct config_proxies *p)
{
    write_file(tmpdir, "proxies.conf", text, strlen(text));
    errbuf[0] = 0;
    return config_proxies_load(tmpdir, p, errbuf, sizeof(errbuf));
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = s ? strlen(s) : 0, b = strlen(suffix);
    return s && a >= b && strcmp(s + a - b, suffix) == 0;
}

static int dbl_eq(double a, double b)
{
    return a == b;
}

static void test_shipped(void)
{
    struct config c;
    int rc = config_load("conf", NULL, &c, errbuf, sizeof(errbuf));
    CHECK_MSG(rc == 0, "shipped conf: %s", errbuf);
    if (rc != 0)
        return;
    CHECK(c.dir && c.dir[0] == '/' && ends_with(c.dir, "/conf"));
    CHECK(ends_with(c.file, "/conf/lunasip.conf") && c.file[0] == '/');
    CHECK(c.log_level == LOG_LVL_INFO);
    CHECK(strcmp(c.syslog_facility, "daemon") == 0);
    CHECK(c.nameservers == NULL && c.nnameservers == 0);
    CHECK(ends_with(c.control_socket, "/conf/lunasip.ctl") && c.control_socket[0] == '/');
    CHECK(c.metrics_listen == NULL);
    CHECK(dbl_eq(c.shutdown_grace, 5));
    CHECK(c.workers == 1);
    CHECK(ends_with(c.script, "/conf/server.lua"));
    CHECK(c.nlisten == 6);
    if (c.nlisten == 6) {
        CHECK(c.listen[2].proto == CONFIG_LISTEN_TCP && strcmp(c.listen[2].text, "tcp:127.0.0.1:5060") == 0);
        CHECK(c.listen[3].proto == CONFIG_LISTEN_TLS && c.listen[3].port == 5061);
        CHECK(c.listen[4].proto == CONFIG_LISTEN_WS && c.listen[4].port == 10080);
        CHECK(c.listen[5].proto == CONFIG_LISTEN_WSS && c.listen[5].port == 10443);
        CHECK(c.listen[0].proto == CONFIG_LISTEN_UDP && c.listen[0].family == AF_INET);
        CHECK(strcmp(c.listen[0].host, "127.0.0.1") == 0 && c.listen[0].port == 5060);
        CHECK(strcmp(c.listen[0].text, "udp:127.0.0.1:5060") == 0);
        CHECK(c.listen[1].proto == CONFIG_LISTEN_UDP && c.listen[1].family == AF_INET6);
        CHECK(strcmp(c.listen[1].host, "::1") == 0 && c.listen[1].port == 5060);
        CHECK(strcmp(c.listen[1].text, "udp:[::1]:5060") == 0);
    }
    CHECK(c.advertised_address == NULL);
    CHECK(c.nlocal_domains == 0);
    CHECK(c.max_message_size == 65535);
    CHECK(dbl_eq(c.tcp_connect_timeout, 2) && dbl_eq(c.tls_handshake_timeout, 4));
    CHECK(dbl_eq(c.header_timeout, 10) && dbl_eq(c.connection_idle_timeout, 7200));
    CHECK(c.max_connections == 20000 && c.max_connections_per_ip == 200);
    CHECK(c.outbound_flow_secret == NULL);
    CHECK(c.ws_max_message_size == 65536 && c.ws_max_frame_size == 65536);
    CHECK(dbl_eq(c.ws_keepalive_interval, 60) && dbl_eq(c.ws_pong_timeout, 10));
    CHECK(c.ws_allowed_origins == NULL);
    CHECK(ends_with(c.tls_certificate, "/conf/tls/server.crt"));
    CHECK(ends_with(c.tls_private_key, "/conf/tls/server.key"));
    CHECK(c.tls_ca_file == NULL);
    CHECK(strcmp(c.tls_min_version, "1.2") == 0);
    CHECK(c.tls_verify_client == CONFIG_VERIFY_OPTIONAL);
    CHECK(c.ntls_sni == 0);
    CHECK(c.pike_enabled == 1 && dbl_eq(c.pike_window, 2) && c.pike_max_requests == 50 &&
          dbl_eq(c.pike_ban_time, 60));
    CHECK(c.events_queue_limit == 10000 && c.events_overflow == CONFIG_OVERFLOW_DROP_OLDEST);
    CHECK(dbl_eq(c.events_connect_timeout, 2) && dbl_eq(c.events_send_timeout, 5) &&
          dbl_eq(c.events_retry_max, 30) && c.events_heartbeat == 10);
    config_free(&c);
    CHECK(c.listen == NULL && c.dir == NULL);

    struct config_proxies p;
    rc = config_proxies_load("conf", &p, errbuf, sizeof(errbuf));
    CHECK_MSG(rc == 0, "shipped proxies: %s", errbuf);
    if (rc != 0)
        return;
    CHECK(p.nprofiles == 2);
    const struct config_proxy *d = config_proxies_find(&p, NULL);
    const struct config_proxy *o = config_proxies_find(&p, "proxy_out");
    CHECK(d != NULL && strcmp(d->name, "default_proxy") == 0);
    CHECK(o != NULL && dbl_eq(o->timer_B, 6) && dbl_eq(o->timer_F, 6) && dbl_eq(o->timer_C, 60));
    CHECK(o != NULL && o->ntransport_preference == 3 && o->transport_preference[0] == CONFIG_LISTEN_TLS);
    CHECK(d != NULL && dbl_eq(d->timer_C, 120) && d->dns_cache_time == 300);
    config_proxies_free(&p);
}

static void test_defaults(void)
{
    struct config c;
    int rc = load_conf("-- nothing set\n", &c);
    CHECK_MSG(rc == 0, "%s", errbuf);
    if (rc != 0)
        return;
    static const char *const want[] = { "udp:127.0.0.1:5060", "tcp:127.0.0.1:5060",
        "tls:127.0.0.1:5061", "ws:127.0.0.1:10080", "wss:127.0.0.1:10443" };
    static const enum config_listen_proto protos[] = { CONFIG_LISTEN_UDP, CONFIG_LISTEN_TCP,
        CONFIG_LISTEN_TLS, CONFIG_LISTEN_WS, CONFIG_LISTEN_WSS };
    static const int ports[] = { 5060, 5060, 5061, 10080, 10443 };
    CHECK(c.nlisten == 5);
    for (size_t i = 0; i < 5 && i < c.nlisten; i++) {
        CHECK(strcmp(c.listen[i].text, want[i]) == 0);
        CHECK(c.listen[i].proto == protos[i] && c.listen[i].port == ports[i]);
        CHECK(strcmp(c.listen[i].host, "127.0.0.1") == 0 && c.listen[i].family == AF_INET);
    }
    CHECK(c.log_level == LOG_LVL_INFO && c.workers == 1 && dbl_eq(c.shutdown_grace, 5));
    CHECK(ends_with(c.control_socket, "/lunasip.ctl") && ends_with(c.script, "/server.lua"));
    CHECK(strncmp(c.control_socket, c.dir, strlen(c.dir)) == 0);
    CHECK(c.max_message_size == 65535 && c.max_connections == 20000);
    CHECK(strcmp(c.tls_min_version, "1.2") == 0 && c.tls_verify_client == CONFIG_VERIFY_OPTIONAL);
    CHECK(ends_with(c.tls_certificate, "/tls/server.crt"));
    CHECK(c.pike_enabled && c.pike_max_requests == 50);
    CHECK(c.events_queue_limit == 10000 && c.events_overflow == CONFIG_OVERFLOW_DROP_OLDEST);
    config_free(&c);

    /* Empty tables are the same as absent ones. */
    rc = load_conf("core = {} sip = {} websocket = {} tls = {} pike = {} events = {}\n", &c);
    CHECK_MSG(rc == 0, "%s", errbuf);
    CHECK(rc == 0 && c.nlisten == 5 && c.ws_max_frame_size == 65536);
    config_free(&c);
}

static void test_full(void)
{
    struct config c;
    int rc = load_conf(
        "core = {\n"
        "  log_level = 'debug', syslog_facility = 'local3',\n"
        "  nameservers = { '127.0.0.1:5353', '::1', '[2001:db8::1]:53', '8.8.8.8' },\n"
        "  control_socket = false, metrics_listen = '[::1]:9090',\n"
        "  shutdown_grace = 0, workers = 4, script = '/srv/route.lua',\n"
        "}\n"
        "sip = {\n"
        "  listen = { 'udp:0.0.0.0:5060', 'tcp:0.0.0.0:5060', 'udp:[::]:5060', 'wss:[::1]:443',\n"
        "             'tls:0.0.0.0:5061', 'ws:127.0.0.1:80' },\n"
        "  advertised_address = '2001:DB8::5', local_domains = { 'Example.COM', '192.0.2.1' },\n"
        "  max_message_size = 512, tcp_connect_timeout = 0.5, tls_handshake_timeout = 86400,\n"
        "  header_timeout = 3, connection_idle_timeout = 60, max_connections = 10,\n"
        "  max_connections_per_ip = 10, outbound_flow_secret = '0123456789abcdef',\n"
        "}\n"
        "websocket = { max_message_size = 16777216, max_frame_size = 1024, keepalive_interval = 5,\n"
        "  pong_timeout = 1.5, allowed_origins = { 'https://a.example.com' } }\n"
        "tls = { certificate = 'c.pem', private_key = '/k.pem', ca_file = 'ca.pem', min_version = '1.3',\n"
        "  verify_client = 'required', sni = { ['Z.example.com'] = { certificate = 'z.crt', private_key = 'z.key' },\n"
        "  ['*.a.example.com'] = { certificate = '/a.crt', private_key = 'a.key' } } }\n"
        "pike = { enabled = false, window = 1, max_requests = 1, ban_time = 0.25 }\n"
        "events = { queue_limit = 10000000, overflow = 'drop_newest', connect_timeout = 0.5,\n"
        "  send_timeout = 300, retry_max = 0.5, heartbeat = 0 }\n", &c);
    CHECK_MSG(rc == 0, "%s", errbuf);
    if (rc != 0)
        return;
    CHECK(c.log_level == LOG_LVL_DEBUG && strcmp(c.syslog_facility, "local3") == 0);
    CHECK(c.nnameservers == 4);
    if (c.nnameservers == 4) {
        CHECK(strcmp(c.nameservers[0], "127.0.0.1:5353") == 0);
        CHECK(strcmp(c.nameservers[1], "[::1]:53") == 0);
        CHECK(strcmp(c.nameservers[2], "[2001:db8::1]:53") == 0);
        CHECK(strcmp(c.nameservers[3], "8.8.8.8:53") == 0);
    }
    CHECK(c.control_socket == NULL);
    CHECK(c.metrics_listen && strcmp(c.metrics_listen, "[::1]:9090") == 0);
    CHECK(dbl_eq(c.shutdown_grace, 0) && c.workers == 4 && strcmp(c.script, "/srv/route.lua") == 0);
    CHECK(c.nlisten == 6);
    if (c.nlisten == 6) {
        CHECK(c.listen[2].family == AF_INET6 && strcmp(c.listen[2].host, "::") == 0);
        CHECK(c.listen[3].proto == CONFIG_LISTEN_WSS && c.listen[3].port == 443);
        CHECK(c.listen[5].proto == CONFIG_LISTEN_WS && c.listen[5].port == 80);
    }
    CHECK(c.advertised_address && strcmp(c.advertised_address, "[2001:db8::5]") == 0);
    CHECK(c.nlocal_domains == 2 && strcmp(c.local_domains[0], "example.com") == 0 &&
          strcmp(c.local_domains[1], "192.0.2.1") == 0);
    CHECK(c.max_message_size == 512 && dbl_eq(c.tcp_connect_timeout, 0.5));
    CHECK(dbl_eq(c.tls_handshake_timeout, 86400) && dbl_eq(c.header_timeout, 3));
    CHECK(c.max_connections == 10 && c.max_connections_per_ip == 10);
    CHECK(c.outbound_flow_secret && strcmp(c.outbound_flow_secret, "0123456789abcdef") == 0);
    CHECK(c.ws_max_message_size == 16777216 && c.ws_max_frame_size == 1024);
    CHECK(dbl_eq(c.ws_keepalive_interval, 5) && dbl_eq(c.ws_pong_timeout, 1.5));
    CHECK(c.nws_allowed_origins == 1 && strcmp(c.ws_allowed_origins[0], "https://a.example.com") == 0);
    CHECK(ends_with(c.tls_certificate, "/c.pem") && strncmp(c.tls_certificate, c.dir, strlen(c.dir)) == 0);
    CHECK(strcmp(c.tls_private_key, "/k.pem") == 0 && ends_with(c.tls_ca_file, "/ca.pem"));
    CHECK(strcmp(c.tls_min_version, "1.3") == 0 && c.tls_verify_client == CONFIG_VERIFY_REQUIRED);
    CHECK(c.ntls_sni == 2);
    if (c.ntls_sni == 2) {   /* sorted by name, names lower-cased */
        CHECK(strcmp(c.tls_sni[0].name, "*.a.example.com") == 0);
        CHECK(strcmp(c.tls_sni[0].certificate, "/a.crt") == 0 && ends_with(c.tls_sni[0].private_key, "/a.key"));
        CHECK(strcmp(c.tls_sni[1].name, "z.example.com") == 0 && ends_with(c.tls_sni[1].certificate, "/z.crt"));
    }
    CHECK(c.pike_enabled == 0 && dbl_eq(c.pike_window, 1) && c.pike_max_requests == 1 &&
          dbl_eq(c.pike_ban_time, 0.25));
    CHECK(c.events_queue_limit == 10000000 && c.events_overflow == CONFIG_OVERFLOW_DROP_NEWEST);
    CHECK(dbl_eq(c.events_connect_timeout, 0.5) && dbl_eq(c.events_send_timeout, 300) &&
          dbl_eq(c.events_retry_max, 0.5) && c.events_heartbeat == 0);
    config_free(&c);

    /* An empty allowed_origins list is kept apart from nil (= any origin). */
    rc = load_conf("websocket = { allowed_origins = {} }\n", &c);
    CHECK(rc == 0 && c.ws_allowed_origins != NULL && c.nws_allowed_origins == 0);
    config_free(&c);

    /* -f: another file, relative paths still against the config dir. */
    write_file(tmpdir, "other.conf", "core = { workers = 7 }\n", 23);
    char other[128];
    snprintf(other, sizeof(other), "%s/other.conf", tmpdir);
    rc = config_load(tmpdir, other, &c, errbuf, sizeof(errbuf));
    CHECK_MSG(rc == 0, "%s", errbuf);
    CHECK(rc == 0 && c.workers == 7 && ends_with(c.file, "/other.conf"));
    config_free(&c);
    rc = config_load(NULL, other, &c, errbuf, sizeof(errbuf));
    CHECK_MSG(rc == 0 && c.workers == 7 && ends_with(c.script, "/server.lua"), "%s", errbuf);
    config_free(&c);
    remove_file(tmpdir, "other.conf");
}

struct bad_case {
    const char *conf;
    const char *path;     /* key path the error must name */
    const char *also;     /* another substring, or NULL */
};

static const struct bad_case bad_conf[] = {
    { "core = { workres = 2 }", "core.workres: unknown key", "did you mean 'workers'" },
    { "foo = 1", "foo: unknown key", "core, sip, websocket, tls, pike, events" },
    { "core = 5", "core: expected a table, got number", NULL },
    { "core = { [1] = 2 }", "core[1]: unknown key", "log_level, syslog_facility" },
    { "core = { workers = '2' }", "core.workers: expected a number, got string", "1 to 64" },
    { "core = { workers = 0 }", "core.workers: 0 is out of range", "1 to 64" },
    { "core = { workers = 65 }", "core.workers: 65 is out of range", NULL },
    { "core = { workers = 1.5 }", "core.workers: expected an integer", NULL },
    { "core = { workers = 0/0 }", "core.workers: expected an integer, got NaN", NULL },
    { "sip = { header_timeout = 0/0 }", "sip.header_timeout: expected a number, got NaN", NULL },
    { "sip = { header_timeout = 1/0 }", "sip.header_timeout: inf is out of range", NULL },
    { "core = { log_level = 'verbose' }", "core.log_level: unknown value 'verbose'", "debug, info, notice, warn, error" },
    { "core = { log_level = 3 }", "core.log_level: expected a string, got number", NULL },
    { "core = { syslog_facility = 'kern' }", "core.syslog_facility: unknown facility 'kern'", "local0" },
    { "core = { nameservers = { 'dns.google' } }", "core.nameservers[1]: 'dns.google' is not an IP address", NULL },
    { "core = { nameservers = { '1.1.1.1', '1.1.1.1:0' } }", "core.nameservers[2]: bad port", NULL },
    { "core = { nameservers = {} }", "core.nameservers: empty list", NULL },
    { "core = { nameservers = '1.1.1.1' }", "core.nameservers: expected a table", NULL },
    { "core = { metrics_listen = '127.0.0.1' }", "core.metrics_listen: '127.0.0.1' is not an address and port", NULL },
    { "core = { metrics_listen = 'localhost:9090' }", "core.metrics_listen:", NULL },
    { "core = { shutdown_grace = -1 }", "core.shutdown_grace: -1 is out of range", "0 to 3600" },
    { "core = { shutdown_grace = 3601 }", "core.shutdown_grace: 3601 is out of range", NULL },
    { "core = { script = '' }", "core.script: empty string", NULL },
    { "core = { script = true }", "core.script: expected a string, got boolean", NULL },
    { "core = { script = 'a\\0b' }", "core.script: string contains a NUL byte", NULL },
    { "local s = 'x' for i = 1, 13 do s = s .. s end core = { script = s }", "core.script: string of 8192 bytes is too long", NULL },
    { "core = { control_socket = '/tmp/" "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.ctl' }",
      "core.control_socket:", "too long for a unix socket" },
    { "sip = { listen = { 'udp:127.0.0.1:5060', 'tcp:127.0.0.1:5060', 'sctp:127.0.0.1:5060' } }",
      "sip.listen[3]: unknown transport 'sctp'", "allowed: udp, tcp, tls, ws, wss" },
    { "sip = { listen = { 'udp:localhost:5060' } }", "sip.listen[1]: 'localhost:5060' is not an IP address", "not a name" },
    { "sip = { listen = { 'udp:127.0.0.1:70000' } }", "sip.listen[1]: bad port", "1 to 65535" },
    { "sip = { listen = { 'udp:127.0.0.1:0' } }", "sip.listen[1]: bad port", NULL },
    { "sip = { listen = { 'udp:127.0.0.1' } }", "sip.listen[1]: missing port", NULL },
    { "sip = { listen = { 'udp:::1:5060' } }", "sip.listen[1]: IPv6 address", "brackets" },
    { "sip = { listen = { 'udp:127.0.0.1:5060', 'udp:127.0.0.1:5060' } }", "sip.listen[2]: 'udp:127.0.0.1:5060' clashes with sip.listen[1]", NULL },
    { "sip = { listen = { 'tcp:[::1]:5060', 'ws:[0::1]:5060' } }", "sip.listen[2]:", "clashes" },
    { "sip = { listen = {} }", "sip.listen: empty list", "at least one listener" },
    { "sip = { listen = { foo = 'udp:127.0.0.1:5060' } }", "sip.listen.foo: not a list entry", NULL },
    { "sip = { listen = { [1] = 'udp:127.0.0.1:5060', [3] = 'udp:127.0.0.1:5062' } }", "sip.listen: list has holes", NULL },
    { "sip = { listen = { 5060 } }", "sip.listen[1]: expected a string, got number", NULL },
    { "sip = { listen = 'udp:127.0.0.1:5060' }", "sip.listen: expected a table", NULL },
    { "sip = { max_message_size = 100 }", "sip.max_message_size: 100 is out of range", "512 to 1048576" },
    { "sip = { max_message_size = 2000000 }", "sip.max_message_size: 2000000 is out of range", NULL },
    { "sip = { header_timeout = 0 }", "sip.header_timeout: 0 is out of range", "> 0 and <= 86400" },
    { "sip = { connection_idle_timeout = 86401 }", "sip.connection_idle_timeout: 86401 is out of range", NULL },
    { "sip = { tcp_connect_timeout = 'fast' }", "sip.tcp_connect_timeout: expected a number, got string", NULL },
    { "sip = { max_connections = 0 }", "sip.max_connections: 0 is out of range", NULL },
    { "sip = { max_connections = 10, max_connections_per_ip = 20 }", "sip.max_connections_per_ip: 20 exceeds sip.max_connections", NULL },
    { "sip = { outbound_flow_secret = 'short' }", "sip.outbound_flow_secret: secret of 5 bytes is too short", NULL },
    { "sip = { advertised_address = 'bad host!' }", "sip.advertised_address: 'bad host!' is not a host name", NULL },
    { "sip = { advertised_address = '1.2.3.4:5060' }", "sip.advertised_address:", NULL },
    { "sip = { local_domains = { 'example.com', 'exa mple.com' } }", "sip.local_domains[2]:", NULL },
    { "sip = { lisen = {} }", "sip.lisen: unknown key (did you mean 'listen'?)", NULL },
    { "websocket = { max_frame_size = 17000000 }", "websocket.max_frame_size: 17000000 is out of range", "512 to 16777216" },
    { "websocket = { pong_timeout = 0 }", "websocket.pong_timeout: 0 is out of range", NULL },
    { "websocket = { allowed_origins = { 1 } }", "websocket.allowed_origins[1]: expected a string", NULL },
    { "websocket = { allowed_origins = { 'https://a b' } }", "websocket.allowed_origins[1]:", NULL },
    { "websocket = { max_mesage_size = 1 }", "websocket.max_mesage_size: unknown key", "max_message_size" },
    { "tls = { min_version = '1.1' }", "tls.min_version: unknown value '1.1'", "1.2, 1.3" },
    { "tls = { min_version = 1.3 }", "tls.min_version: expected a string, got number", NULL },
    { "tls = { verify_client = 'maybe' }", "tls.verify_client: unknown value 'maybe'", "none, optional, required" },
    { "tls = { certificate = 5 }", "tls.certificate: expected a string, got number", NULL },
    { "tls = { sni = { ['bad name!'] = { certificate = 'a', private_key = 'b' } } }", "tls.sni[\"bad name!\"]: 'bad name!' is not a host name", NULL },
    { "tls = { sni = { ['a.example.com'] = { certificate = 'a' } } }", "tls.sni[\"a.example.com\"].private_key: missing", NULL },
    { "tls = { sni = { ['a.example.com'] = { certificate = 'a', private_key = 'b', chain = 'c' } } }", "tls.sni[\"a.example.com\"].chain: unknown key", "certificate, private_key" },
    { "tls = { sni = { ['a.example.com'] = 'x' } }", "tls.sni[\"a.example.com\"]: expected a table, got string", NULL },
    { "tls = { sni = { 'a.example.com' } }", "tls.sni[1]: key is not a host name", NULL },
    { "tls = { sni = { ['A.example.com'] = { certificate = 'a', private_key = 'b' }, ['a.example.com'] = { certificate = 'a', private_key = 'b' } } }", "tls.sni[", "duplicate" },
    { "pike = { enabled = 'yes' }", "pike.enabled: expected a boolean, got string", "true or false" },
    { "pike = { window = 0 }", "pike.window: 0 is out of range", NULL },
    { "pike = { max_requests = -5 }", "pike.max_requests: -5 is out of range", NULL },
    { "events = { queue_limit = 0 }", "events.queue_limit: 0 is out of range", "1 to 10000000" },
    { "events = { queue_limit = 10000001 }", "events.queue_limit: 10000001 is out of range", NULL },
    { "events = { overflow = 'block' }", "events.overflow: unknown value 'block'", "drop_oldest, drop_newest" },
    { "events = { connect_timeout = 0 }", "events.connect_timeout: 0 is out of range", NULL },
    { "events = { send_timeout = 301 }", "events.send_timeout: 301 is out of range", NULL },
    { "events = { retry_max = 0.25 }", "events.retry_max: 0.25 is out of range", NULL },
    { "events = { heartbeat = -1 }", "events.heartbeat: -1 is out of range", NULL },
    { "events = { heartbeat = 1.5 }", "events.heartbeat", NULL },
    { "events = { linger = 3 }", "events.linger: unknown key", NULL },
    { "events = { overflow = 'x\\n2026-11-23 FAKE' }", "events.overflow: unknown value 'x\\x0a2026", NULL },
};

static void test_bad_conf(void)
{
    char want[256];
    snprintf(want, sizeof(want), "%s/lunasip.conf: ", tmpdir);
    for (size_t i = 0; i < sizeof(bad_conf) / sizeof(bad_conf[0]); i++) {
        const struct bad_case *b = &bad_conf[i];
        struct config c;
        int rc = load_conf(b->conf, &c);
        CHECK_MSG(rc == -1, "case %zu (%s) loaded", i, b->conf);
        CHECK_MSG(strncmp(errbuf, want, strlen(want)) == 0, "case %zu: no file name: %s", i, errbuf);
        CHECK_MSG(strstr(errbuf, b->path) != NULL, "case %zu: want '%s' in: %s", i, b->path, errbuf);
        CHECK_MSG(strstr(errbuf, "; allowed: ") != NULL, "case %zu: no 'allowed' in: %s", i, errbuf);
        CHECK_MSG(b->also == NULL || strstr(errbuf, b->also) != NULL, "case %zu: want '%s' in: %s",
                  i, b->also, errbuf);
        CHECK_MSG(c.listen == NULL && c.dir == NULL && c.script == NULL, "case %zu: not zeroed", i);
        if (getenv("TEST_VERBOSE"))
            fprintf(stderr, "%s\n", errbuf);
        config_free(&c);   /* harmless on a failed load */
    }
}

static const struct bad_case bad_proxies[] = {
    { "default_proxy = { timer_B = 0 }", "default_proxy.timer_B: 0 is out of range", "> 0 and <= 3600" },
    { "proxy_out = { timer_C = 4000 }", "proxy_out.timer_C: 4000 is out of range", NULL },
    { "proxy_out = { timer_F = 'x' }", "proxy_out.timer_F: expected a number, got string", NULL },
    { "proxy_out = { transport_preference = { 'tls', 'tls' } }", "proxy_out.transport_preference[2]: 'tls' listed twice", "tls, tcp, udp" },
    { "proxy_out = { transport_preference = { 'sctp' } }", "proxy_out.transport_preference[1]: unknown value 'sctp'", NULL },
    { "proxy_out = { transport_preference = { 'tls', 'tcp', 'udp', 'tls' } }", "proxy_out.transport_preference[4]: too many entries", NULL },
    { "proxy_out = { ip_type_preference = { 'ipv5' } }", "proxy_out.ip_type_preference[1]: unknown value 'ipv5'", "ipv4, ipv6" },
    { "proxy_out = { ip_type_preference = {} }", "proxy_out.ip_type_preference: empty list", NULL },
    { "proxy_out = { ip_type_preference = 'ipv4' }", "proxy_out.ip_type_preference: expected a table", NULL },
    { "proxy_out = { use_dns = 1 }", "proxy_out.use_dns: expected a boolean, got number", NULL },
    { "proxy_out = { tmer_B = 1 }", "proxy_out.tmer_B: unknown key (did you mean 'timer_B'?)", "do_record_routing" },
    { "proxy_out = 5", "proxy_out: expected a table, got number", NULL },
    { "default_proxy = { blacklist_time = -1 }", "default_proxy.blacklist_time: -1 is out of range", NULL },
    { "default_proxy = { dns_cache_time = 1.5 }", "default_proxy.dns_cache_time: expected an integer", NULL },
};

static void test_bad_proxies(void)
{
    char want[256];
    snprintf(want, sizeof(want), "%s/proxies.conf: ", tmpdir);
    for (size_t i = 0; i < sizeof(bad_proxies) / sizeof(bad_proxies[0]); i++) {
        const struct bad_case *b = &bad_proxies[i];
        struct config_proxies p;
        int rc = load_proxies(b->conf, &p);
        CHECK_MSG(rc == -1, "proxies case %zu (%s) loaded", i, b->conf);
        CHECK_MSG(strncmp(errbuf, want, strlen(want)) == 0, "proxies case %zu: no file name: %s", i, errbuf);
        CHECK_MSG(strstr(errbuf, b->path) != NULL, "proxies case %zu: want '%s' in: %s", i, b->path, errbuf);
        CHECK_MSG(strstr(errbuf, "; allowed: ") != NULL, "proxies case %zu: no 'allowed': %s", i, errbuf);
        CHECK_MSG(b->also == NULL || strstr(errbuf, b->also) != NULL, "proxies case %zu: want '%s' in: %s",
                  i, b->also, errbuf);
        CHECK(p.profiles == NULL && p.nprofiles == 0);
        if (getenv("TEST_VERBOSE"))
            fprintf(stderr, "%s\n", errbuf);
        config_proxies_free(&p);
    }
    remove_file(tmpdir, "proxies.conf");
}

static void test_proxies(void)
{
    struct config_proxies p;
    /* Missing file: default_proxy only. */
    remove_file(tmpdir, "proxies.conf");
    int rc = config_proxies_load(tmpdir, &p, errbuf, sizeof(errbuf));
    CHECK_MSG(rc == 0, "%s", errbuf);
    CHECK(p.nprofiles == 1 && strcmp(p.profiles[0].name, "default_proxy") == 0);
    const struct config_proxy *d = config_proxies_find(&p, "default_proxy");
    CHECK(d != NULL && d->do_record_routing == 1 && d->record_route_all == 0 && d->use_dns == 1 &&
          d->use_dns_cache == 1 && d->dns_cache_time == 300 && d->use_naptr == 1 && d->use_srv == 1);
    CHECK(d != NULL && d->ntransport_preference == 3 && d->transport_preference[0] == CONFIG_LISTEN_TLS &&
          d->transport_preference[1] == CONFIG_LISTEN_TCP && d->transport_preference[2] == CONFIG_LISTEN_UDP);
    CHECK(d != NULL && d->force_transport_preference == 0 && d->nip_type_preference == 2 &&
          d->ip_type_preference[0] == AF_INET && d->ip_type_preference[1] == AF_INET6);
    CHECK(d != NULL && d->dns_failover_on_503 == 1 && d->use_blacklist == 1 && d->blacklist_time == 10);
    CHECK(d != NULL && dbl_eq(d->timer_B, 32) && dbl_eq(d->timer_C, 120) && dbl_eq(d->timer_F, 32) &&
          d->callback_on_server_tls_handshake == 1);
    CHECK(config_proxies_find(&p, "nope") == NULL);
    config_proxies_free(&p);

    /* Inheritance from default_proxy as loaded; profiles sorted after default_proxy. */
    rc = load_proxies(
        "zeta = { timer_F = 3, ip_type_preference = { 'ipv6' } }\n"
        "default_proxy = { timer_B = 10, use_srv = false, transport_preference = { 'udp', 'tcp' } }\n"
        "alpha = { use_srv = true, record_route_all = true }\n", &p);
    CHECK_MSG(rc == 0, "%s", errbuf);
    if (rc == 0) {
        CHECK(p.nprofiles == 3);
        CHECK(strcmp(p.profiles[0].name, "default_proxy") == 0);
        CHECK(strcmp(p.profiles[1].name, "alpha") == 0 && strcmp(p.profiles[2].name, "zeta") == 0);
        const struct config_proxy *z = config_proxies_find(&p, "zeta");
        const struct config_proxy *a = config_proxies_find(&p, "alpha");
        d = config_proxies_find(&p, "");
        CHECK(d && dbl_eq(d->timer_B, 10) && d->use_srv == 0 && d->ntransport_preference == 2);
        CHECK(z && dbl_eq(z->timer_B, 10) && dbl_eq(z->timer_F, 3) && dbl_eq(z->timer_C, 120));
        CHECK(z && z->use_srv == 0 && z->ntransport_preference == 2 &&
              z->transport_preference[0] == CONFIG_LISTEN_UDP && z->transport_preference[1] == CONFIG_LISTEN_TCP);
        CHECK(z && z->nip_type_preference == 1 && z->ip_type_preference[0] == AF_INET6);
        CHECK(a && a->use_srv == 1 && a->record_route_all == 1 && dbl_eq(a->timer_B, 10));
        CHECK(a && a->nip_type_preference == 2);
    }
    config_proxies_free(&p);
    CHECK(p.profiles == NULL);
    remove_file(tmpdir, "proxies.conf");
}

/* Syntax and runtime errors, the sandbox and its limits. */
static void test_sandbox(void)
{
    struct config c;
    char want[256];

    int rc = load_conf("core = {\n  workers = 2,\n  log_level = = 'info',\n}\n", &c);
    snprintf(want, sizeof(want), "%s/lunasip.conf:3:", tmpdir);
    CHECK_MSG(rc == -1 && strstr(errbuf, want) != NULL, "syntax error: %s", errbuf);

    time_t t0 = time(NULL);
    rc = load_conf("core = {}\nwhile true do end\n", &c);
    CHECK_MSG(rc == -1 && strstr(errbuf, "takes too long") && strstr(errbuf, "lunasip.conf:2:"),
              "endless loop: %s", errbuf);
    CHECK(time(NULL) - t0 < 10);
    rc = load_conf("local function f() return f() end\nf()\n", &c);
    CHECK_MSG(rc == -1 && strstr(errbuf, "takes too long"), "endless tail call: %s", errbuf);
    rc = load_conf("local function f() f() end\nf()\n", &c);
    CHECK_MSG(rc == -1 && strstr(errbuf, "stack overflow"), "recursion: %s", errbuf);

    rc = load_conf("local s = 'x'\nfor i = 1, 40 do s = s .. s end\n", &c);
    CHECK_MSG(rc == -1 && strstr(errbuf, "too much memory"), "memory: %s", errbuf);
    rc = load_conf("local t = {}\nfor i = 1, 1e6 do t[i] = { i, i, i, i } end\n", &c);
    CHECK_MSG(rc == -1 && strstr(errbuf, "too much memory"), "memory (tables): %s", errbuf);

    static const char *const forbidden[] = {
        "os.exit(3)", "require('os')", "io.write('x')", "print('x')", "loadstring('x')()",
        "dofile('/etc/passwd')", "setmetatable({}, {})", "local x = ('x'):rep(3)",
        "string.rep('x', 1e9)", "jit.on()", "debug.sethook()", "ffi = require 'ffi'",
        "getfenv(1).core = {}", "rawset(_G, 'core', {})", "collectgarbage('stop')",
    };
    for (size_t i = 0; i < sizeof(forbidden) / sizeof(forbidden[0]); i++) {
        rc = load_conf(forbidden[i], &c);
        CHECK_MSG(rc == -1 && strstr(errbuf, "lunasip.conf:1: attempt to"), "'%s': %s", forbidden[i], errbuf);
    }

    /* Bytecode is refused (it is not verified). */
    write_file(tmpdir, "lunasip.conf", "\033LJ\002\000\000\000", 7);
    rc = config_load(tmpdir, NULL, &c, errbuf, sizeof(errbuf));
    CHECK_MSG(rc == -1 && strstr(errbuf, "lunasip.conf: precompiled (binary) chunk refused; allowed:"),
              "bytecode: %s", errbuf);

    /* A runtime error carries file:line. */
    rc = load_conf("core = {}\ncore.workers = nil + 1\n", &c);
    CHECK_MSG(rc == -1 && strstr(errbuf, "lunasip.conf:2:"), "runtime error: %s", errbuf);

    /* Locals are fine; only globals are settings. */
    rc = load_conf("local w = 2 * 3\ncore = { workers = w }\n", &c);
    CHECK_MSG(rc == 0 && c.workers == 6, "%s", errbuf);
    config_free(&c);

    /* Missing file, missing dir, a directory in place of the file. */
    remove_file(tmpdir, "lunasip.conf");
    rc = config_load(tmpdir, NULL, &c, errbuf, sizeof(errbuf));
    CHECK_MSG(rc == -1 && strstr(errbuf, "lunasip.conf: cannot open"), "missing: %s", errbuf);
    rc = config_load("/nonexistent/lunasip-dir", NULL, &c, errbuf, sizeof(errbuf));
    CHECK_MSG(rc == -1 && strstr(errbuf, "/nonexistent/lunasip-dir"), "missing dir: %s", errbuf);
    char sub[128];
    snprintf(sub, sizeof(sub), "%s/lunasip.conf", tmpdir);
    mkdir(sub, 0700);
    rc = config_load(tmpdir, NULL, &c, errbuf, sizeof(errbuf));
    CHECK_MSG(rc == -1 && strstr(errbuf, "not a regular file"), "dir as file: %s", errbuf);
    rmdir(sub);
}

int main(void)
{
    strcpy(tmpdir, "/tmp/lunasip-test-config-XXXXXX");
    if (mkdtemp(tmpdir) == NULL) {
        perror("mkdtemp");
        return 2;
    }
    test_shipped();
    test_defaults();
    test_full();
    test_bad_conf();
    test_bad_proxies();
    test_proxies();
    test_sandbox();
    remove_file(tmpdir, "lunasip.conf");
    remove_file(tmpdir, "proxies.conf");
    rmdir(tmpdir);
    TEST_DONE();
}
