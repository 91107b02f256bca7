/* lunasip: command line, start-up order (config, Lua, listeners, PID file, privileges,
 * on_started), signals (HUP reload, USR1 user reload, TERM/INT graceful shutdown) and
 * daemon mode. SPEC §2, §5.6. */
#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <libgen.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "conn.h"
#include "ctl.h"
#include "evi.h"
#include "flow.h"
#include "lapi.h"
#include "lapi_conn.h"
#include "log.h"
#include "lvm.h"
#include "metrics.h"
#include "proxy.h"
#include "sip_core.h"
#include "sip_msg.h"
#include "stats.h"
#include "timer.h"
#include "tls.h"
#include "txn.h"
#include "udp.h"
#include "version.h"


static struct {
    const char *config_dir;
    const char *config_file;
    const char *pidfile;
    const char *user, *group;
    const char *level;
    int foreground, check;
} opt;

static struct config cfg;
static struct config_proxies proxies;
static struct listener *listeners;
static struct tls_ctx *tls;       /* NULL when no tls:/wss: listener and no usable certificate */
static char lua_dir[PATH_MAX];
static struct ev_loop *loop;
static int terminating;
static ev_signal sig_hup, sig_usr1, sig_term, sig_int;
static ev_timer drain_timer;
static double drain_deadline;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: lunasip [-c DIR|--config-dir DIR] [-f FILE] [--foreground] [-t|--check]\n"
            "               [-P PIDFILE] [-u USER] [-g GROUP] [-l LEVEL] [-v|--version] [-h]\n"
            "  -c, --config-dir DIR  configuration directory (default: conf/ beside the\n"
            "                        checkout of the binary, else /etc/lunasip)\n"
            "  -f, --config-file F   lunasip.conf to read instead of DIR/lunasip.conf\n"
            "      --foreground      stay in the foreground and log to stderr\n"
            "  -t, --check           validate every config file and server.lua, then exit 0/1\n"
            "  -P, --pid-file FILE   write the PID here once every listener is bound\n"
            "  -u, --user USER       drop privileges to USER after binding\n"
            "  -g, --group GROUP     drop privileges to GROUP after binding\n"
            "  -l, --log-level LVL   debug|info|notice|warn|error (overrides core.log_level)\n"
            "  -v, --version         print the version\n"
            "  -h, --help            this help\n");
}

static int is_dir_with(const char *dir, const char *file)
{
    char p[PATH_MAX];
    struct stat st;
    if (snprintf(p, sizeof(p), "%s/%s", dir, file) >= (int)sizeof(p))
        return 0;
    return stat(p, &st) == 0;
}

/* "conf" (or "lua") beside the checkout the binary lives in: ./lunasip at the top, or
 * build/<mode>/lunasip two levels below it. */
static int beside_binary(const char *sub, const char *probe, char *out, size_t outlen)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0)
        return -1;
    exe[n] = 0;
    char *dir = dirname(exe);
    const char *ups[] = { "", "/../.." };
    for (int i = 0; i < 2; i++) {
        char cand[PATH_MAX], real[PATH_MAX];
        snprintf(cand, sizeof(cand), "%s%s/%s", dir, ups[i], sub);
        if (is_dir_with(cand, probe) && realpath(cand, real)) {
            snprintf(out, outlen, "%s", real);
            return 0;
        }
    }
    return -1;
}

static int load_script(struct lvm **out, char *err, size_t errlen)
{
    struct lvm_env env = { lua_dir, cfg.dir, cfg.script };
    return lvm_create(&env, out, err, errlen);
}

static int same_listen(const struct config *a, const struct config *b)
{
    if (a->nlisten != b->nlisten)
        return 0;
    for (size_t i = 0; i < a->nlisten; i++)
        if (strcmp(a->listen[i].text, b->listen[i].text) != 0)
            return 0;
    return 1;
}

/* SPEC §5.6: read the files again, build a new Lua state, validate, then swap. On any
 * error the running config and script stay. lunasip.conf changes other than the log
 * level need a restart: they are reported, not applied. */
static void events_config(const struct config *c, struct evi_config *e)
{
    e->queue_limit = c->events_queue_limit;
    e->drop_newest = c->events_overflow == CONFIG_OVERFLOW_DROP_NEWEST;
    e->connect_timeout = c->events_connect_timeout;
    e->send_timeout = c->events_send_timeout;
    e->retry_max = c->events_retry_max;
    e->heartbeat = c->events_heartbeat;
}

static int wants_tls(const struct config *c)
{
    for (size_t i = 0; i < c->nlisten; i++)
        if (c->listen[i].proto == CONFIG_LISTEN_TLS || c->listen[i].proto == CONFIG_LISTEN_WSS)
            return 1;
    return 0;
}

/* The TLS contexts of c. With a tls:/wss: listener they are required: when the
 * certificate and key are both missing at their default place (<config dir>/tls/), a
 * self-signed pair is written there first, so a fresh install serves TLS and WSS. Without
 * one, a certificate that loads still serves outgoing TLS; one that does not is no error
 * (outgoing TLS then fails, logged). */
static int make_tls(const struct config *c, struct tls_ctx **out, char *err, size_t errlen)
{
    *out = NULL;
    int need = wants_tls(c);
    if (need) {
        char dcrt[PATH_MAX], dkey[PATH_MAX];
        snprintf(dcrt, sizeof(dcrt), "%s/tls/server.crt", c->dir);
        snprintf(dkey, sizeof(dkey), "%s/tls/server.key", c->dir);
        if (strcmp(c->tls_certificate, dcrt) == 0 && strcmp(c->tls_private_key, dkey) == 0) {
            char gerr[512];
            int g = tls_generate_self_signed(dcrt, dkey, gerr, sizeof(gerr));
            if (g < 0) {
                snprintf(err, errlen, "%s: tls.certificate: %s", c->file, gerr);
                return -1;
            }
            if (g > 0)
                LOG_NOTICE("generated a self-signed certificate for TLS and WSS: %s (key %s); set "
                           "tls.certificate and tls.private_key to serve your own",
                           dcrt, dkey);
        }
    }
    char terr[1024];
    if (tls_ctx_new(c, out, terr, sizeof(terr)) != 0) {
        *out = NULL;
        if (need) {
            snprintf(err, errlen, "%s: %s", c->file, terr);
            return -1;
        }
        LOG_DEBUG("no TLS context (outgoing TLS unavailable): %s", terr);
    }
    return 0;
}

/* conn_hooks.on_close: transactions that sent over a failed connection fail now, then
 * the Lua side (on_disconnection, cvars). */
static void on_conn_close(struct conn *c, int was_open, int client_closed, int failed)
{
    if (failed)
        txn_conn_failed(c->id);
    lapi_conn_closed(c, was_open, client_closed);
    proxy_run_pending();
}

static int do_reload(char *err, size_t errlen)
{
    struct config ncfg;
    struct config_proxies nprox;
    struct lvm *vm;

    LOG_NOTICE("reloading configuration and %s", cfg.script);
    if (config_load(cfg.dir, opt.config_file, &ncfg, err, errlen) != 0) {
        stats.reloads_failed++;
        LOG_ERROR("reload failed, keeping the running configuration: %s", err);
        return -1;
    }
    if (config_proxies_load(cfg.dir, &nprox, err, errlen) != 0) {
        stats.reloads_failed++;
        LOG_ERROR("reload failed, keeping the running configuration: %s", err);
        config_free(&ncfg);
        return -1;
    }
    if (!same_listen(&cfg, &ncfg))
        LOG_NOTICE("sip.listen changed in %s: restart lunasip to apply it", ncfg.file);
    if (strcmp(ncfg.script, cfg.script) != 0)
        LOG_NOTICE("core.script changed in %s: restart lunasip to apply it", ncfg.file);
    struct tls_ctx *ntls = NULL;
    if (make_tls(&ncfg, &ntls, err, errlen) != 0) {
        stats.reloads_failed++;
        LOG_ERROR("reload failed, keeping the running configuration: %s", err);
        config_proxies_free(&nprox);
        config_free(&ncfg);
        return -1;
    }
    if (!opt.level && ncfg.log_level != cfg.log_level) {
        log_set_level(ncfg.log_level);
        cfg.log_level = ncfg.log_level;
    }
    /* limits, timeouts and certificates apply to what comes next; live connections and
     * their TLS sessions stay as they are */
    conn_configure(&ncfg, ntls);
    lapi_set_tls_ctx(ntls);
    if (tls)
        tls_ctx_unref(tls);
    tls = ntls;
    struct evi_config ecfg;
    events_config(&ncfg, &ecfg);
    config_free(&ncfg);
    evi_script_load_begin();
    if (load_script(&vm, err, errlen) != 0) {
        evi_script_load_end(0);
        stats.reloads_failed++;
        LOG_ERROR("reload failed, the running script stays: %s", err);
        config_proxies_free(&nprox);
        return -1;
    }
    config_proxies_free(&proxies);
    proxies = nprox;
    proxy_set_profiles(&proxies);
    lvm_install(vm);
    evi_handlers_changed();
    evi_script_load_end(1);
    evi_configure(&ecfg);
    stats.reloads_ok++;
    LOG_NOTICE("reload done: %s is now generation %u", cfg.script, lvm_generation(vm));
    return 0;
}

/* SIGHUP and `lunasip ctl reload`: SPEC §5.6, then E_CORE_RELOAD (and core:reload). */
static int reload(char *err, size_t errlen)
{
    err[0] = 0;
    /* flatstore files reopen on every HUP, even when the new config is refused: log
     * rotation relies on it */
    evi_reopen(NULL);
    int rc = do_reload(err, errlen);
    /* the error's first line (file:line: message), not the traceback under it */
    struct evi_param p[] = {
        EVI_STR("status", rc == 0 ? "ok" : "failed"),
        EVI_STRN("error", err, strcspn(err, "\n")),
    };
    if (rc == 0)
        p[1].type = EVI_T_NIL; /* SPEC §5.5: error is null after a good reload */
    evi_raise_core("E_CORE_RELOAD", p, 2);
    return rc;
}

static void raise_pid_version(const char *name)
{
    struct evi_param p[] = {
        EVI_INT("pid", getpid()),
        EVI_STR("version", LUNASIP_VERSION),
    };
    evi_raise_core(name, p, 2);
}

static int on_has_event_route(const char *name)
{
    return lvm_current ? lvm_has_event_route(lvm_current, name) : 0;
}

static void on_run_event_route(const char *name)
{
    if (lvm_current)
        lvm_event_route(lvm_current, name);
}

static void user_reload(void)
{
    if (lvm_current)
        lvm_system_event(lvm_current, "on_user_reload", NULL);
    proxy_run_pending();
}

/* Graceful shutdown: routings in flight get up to core.shutdown_grace to finish; new
 * requests are refused with 503 meanwhile. */
static void on_drain(struct ev_loop *l, ev_timer *w, int revents)
{
    (void)w;
    (void)revents;
    size_t left = proxy_inflight();
    if (left == 0 || ev_now(l) >= drain_deadline) {
        if (left)
            LOG_NOTICE("shutdown grace over: abandoning %zu routing(s) still waiting for an answer", left);
        ev_break(l, EVBREAK_ALL);
    }
}

static void on_conn_drain(struct ev_loop *l, ev_timer *w, int revents)
{
    (void)w;
    (void)revents;
    if (conn_count() == 0 || ev_now(l) >= drain_deadline)
        ev_break(l, EVBREAK_ALL);
}

static void on_signal(struct ev_loop *l, ev_signal *w, int revents)
{
    if (w->signum == SIGHUP) {
        char err[CONFIG_ERR_MAX + 512];
        if (!terminating)
            reload(err, sizeof(err));
    } else if (w->signum == SIGUSR1) {
        LOG_NOTICE("SIGUSR1: running SystemEvents.on_user_reload");
        user_reload();
    } else {
        if (terminating) {
            LOG_NOTICE("second %s: exiting now", w->signum == SIGTERM ? "SIGTERM" : "SIGINT");
            ev_break(l, EVBREAK_ALL);
            return;
        }
        terminating = 1;
        LOG_NOTICE("%s: shutting down", w->signum == SIGTERM ? "SIGTERM" : "SIGINT");
        raise_pid_version("E_CORE_TERMINATING");
        sip_core_draining = 1;
        if (lvm_current)
            lvm_system_event(lvm_current, "on_terminated", NULL);
        proxy_run_pending();
        drain_deadline = ev_now(l) + cfg.shutdown_grace;
        ev_timer_init(&drain_timer, on_drain, 0., 0.05);
        ev_timer_start(l, &drain_timer);
    }
}

static int drop_privileges(void)
{
    if (opt.group) {
        struct group *gr = getgrnam(opt.group);
        if (!gr) {
            LOG_ERROR("-g %s: no such group", opt.group);
            return -1;
        }
        if (cfg.control_socket && chown(cfg.control_socket, (uid_t)-1, gr->gr_gid) == -1)
            LOG_WARN("-g %s: cannot hand %s over: %s", opt.group, cfg.control_socket, strerror(errno));
        if (setgroups(0, NULL) == -1 || setgid(gr->gr_gid) == -1) {
            LOG_ERROR("-g %s: %s", opt.group, strerror(errno));
            return -1;
        }
    }
    if (opt.user) {
        struct passwd *pw = getpwnam(opt.user);
        if (!pw) {
            LOG_ERROR("-u %s: no such user", opt.user);
            return -1;
        }
        if (!opt.group && (setgroups(0, NULL) == -1 || setgid(pw->pw_gid) == -1)) {
            LOG_ERROR("-u %s: setgid: %s", opt.user, strerror(errno));
            return -1;
        }
        /* the control socket stays usable by the user lunasip runs as */
        if (cfg.control_socket && chown(cfg.control_socket, pw->pw_uid, opt.group ? (gid_t)-1 : pw->pw_gid) == -1)
            LOG_WARN("-u %s: cannot hand %s over: %s", opt.user, cfg.control_socket, strerror(errno));
        if (setuid(pw->pw_uid) == -1) {
            LOG_ERROR("-u %s: %s", opt.user, strerror(errno));
            return -1;
        }
    }
    return 0;
}

static int write_pidfile(pid_t pid)
{
    if (!opt.pidfile)
        return 0;
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof(tmp), "%s.tmp", opt.pidfile);
    FILE *f = fopen(tmp, "w");
    if (!f || fprintf(f, "%d\n", (int)pid) < 0 || fclose(f) != 0 || rename(tmp, opt.pidfile) != 0) {
        fprintf(stderr, "lunasip: cannot write the PID file %s: %s\n", opt.pidfile, strerror(errno));
        return -1;
    }
    return 0;
}

static int bind_listeners(void)
{
    char err[256];
    struct listener **tail = &listeners;
    for (size_t i = 0; i < cfg.nlisten; i++) {
        const struct config_listen *cl = &cfg.listen[i];
        struct listener *l;
        if (cl->proto != CONFIG_LISTEN_UDP) {
            if (conn_listen(loop, cl, &l, err, sizeof(err)) != 0) {
                LOG_ERROR("cannot listen on %s", err);
                return -1;
            }
        } else if (udp_listen(loop, cl, cfg.max_message_size, sip_core_on_datagram, &l, err, sizeof(err)) != 0) {
            LOG_ERROR("cannot listen on %s", err);
            return -1;
        }
        *tail = l;
        tail = &l->next;
        lapi_add_local_address(l->host, l->port);
        LOG_NOTICE("listening on %s", l->name);
    }
    if (!listeners) {
        LOG_ERROR("%s: sip.listen is empty; lunasip has nothing to serve", cfg.file);
        return -1;
    }
    if (cfg.advertised_address) {
        /* config keeps an IPv6 advertised address in brackets; URIs are compared without */
        char host[256];
        const char *a = cfg.advertised_address;
        size_t n = strlen(a);
        if (n > 2 && a[0] == '[' && n - 2 < sizeof(host)) {
            memcpy(host, a + 1, n - 2);
            host[n - 2] = 0;
            a = host;
        }
        lapi_add_local_domain(a);
    }
    for (size_t i = 0; i < cfg.nlocal_domains; i++)
        lapi_add_local_domain(cfg.local_domains[i]);
    return 0;
}

static void daemonize(void)
{
    pid_t pid = fork();
    if (pid == -1) {
        fprintf(stderr, "lunasip: fork: %s\n", strerror(errno));
        exit(1);
    }
    if (pid > 0) {
        /* every listener is bound: the PID file may now say where we run */
        _exit(write_pidfile(pid) == 0 ? 0 : 1);
    }
    setsid();
    int fd = open("/dev/null", O_RDWR);
    if (fd >= 0) {
        dup2(fd, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        if (fd > 2)
            close(fd);
    }
    ev_loop_fork(loop);
    log_open_syslog("lunasip", cfg.syslog_facility);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "config-dir", required_argument, NULL, 'c' },
        { "config-file", required_argument, NULL, 'f' },
        { "foreground", no_argument, NULL, 'F' },
        { "check", no_argument, NULL, 't' },
        { "pid-file", required_argument, NULL, 'P' },
        { "user", required_argument, NULL, 'u' },
        { "group", required_argument, NULL, 'g' },
        { "log-level", required_argument, NULL, 'l' },
        { "version", no_argument, NULL, 'v' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    if (argc > 1 && strcmp(argv[1], "ctl") == 0) {
        char d[PATH_MAX];
        if (beside_binary("conf", "lunasip.conf", d, sizeof(d)) != 0)
            snprintf(d, sizeof(d), "/etc/lunasip");
        return ctl_client_main(argc - 1, argv + 1, d);
    }
    int c;
    while ((c = getopt_long(argc, argv, "c:f:tP:u:g:l:vh", longopts, NULL)) != -1) {
        switch (c) {
        case 'c': opt.config_dir = optarg; break;
        case 'f': opt.config_file = optarg; break;
        case 'F': opt.foreground = 1; break;
        case 't': opt.check = 1; break;
        case 'P': opt.pidfile = optarg; break;
        case 'u': opt.user = optarg; break;
        case 'g': opt.group = optarg; break;
        case 'l': opt.level = optarg; break;
        case 'v': printf("lunasip %s\n", LUNASIP_VERSION); return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "lunasip: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    enum log_level lvl = LOG_LVL_INFO;
    if (opt.level && log_level_parse(opt.level, &lvl) != 0) {
        fprintf(stderr, "lunasip: -l %s: unknown level; allowed: debug, info, notice, warn, error\n", opt.level);
        return 2;
    }

    char dirbuf[PATH_MAX];
    if (!opt.config_dir) {
        if (beside_binary("conf", "lunasip.conf", dirbuf, sizeof(dirbuf)) == 0)
            opt.config_dir = dirbuf;
        else
            opt.config_dir = "/etc/lunasip";
    }
    const char *env_lua = getenv("LUNASIP_LUA_DIR");
    if (env_lua)
        snprintf(lua_dir, sizeof(lua_dir), "%s", env_lua);
    else if (beside_binary("lua", "lunasip.lua", lua_dir, sizeof(lua_dir)) != 0)
        snprintf(lua_dir, sizeof(lua_dir), "/usr/share/lunasip/lua");

    char err[CONFIG_ERR_MAX + 512];
    if (config_load(opt.config_dir, opt.config_file, &cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "lunasip: %s\n", err);
        return 1;
    }
    log_set_level(opt.level ? lvl : cfg.log_level);
    if (config_proxies_load(cfg.dir, &proxies, err, sizeof(err)) != 0) {
        fprintf(stderr, "lunasip: %s\n", err);
        return 1;
    }
    struct lvm *vm;
    evi_script_load_begin();
    if (load_script(&vm, err, sizeof(err)) != 0) {
        evi_script_load_end(0);
        fprintf(stderr, "lunasip: %s\n", err);
        return 1;
    }
    if (opt.check) {
        evi_script_load_end(0);
        printf("lunasip: %s, proxies.conf and %s are valid\n", cfg.file, cfg.script);
        lvm_unref(vm);
        config_proxies_free(&proxies);
        config_free(&cfg);
        return 0;
    }
    lvm_install(vm);

    signal(SIGPIPE, SIG_IGN);
    loop = ev_default_loop(EVFLAG_AUTO);
    if (!loop) {
        fprintf(stderr, "lunasip: cannot create the event loop\n");
        return 1;
    }
    if (make_tls(&cfg, &tls, err, sizeof(err)) != 0) {
        fprintf(stderr, "lunasip: %s\n", err);
        return 1;
    }
    if (flow_init(cfg.outbound_flow_secret, cfg.outbound_flow_secret ? strlen(cfg.outbound_flow_secret) : 0) != 0) {
        fprintf(stderr, "lunasip: no randomness for the flow token key (getrandom failed)\n");
        return 1;
    }
    conn_init(loop);
    conn_configure(&cfg, tls);
    lapi_set_tls_ctx(tls);
    {
        static const struct conn_hooks hooks = { sip_core_on_stream, lapi_conn_ws_upgrade, lapi_conn_tls_handshake,
                                                 NULL, on_conn_close };
        conn_set_hooks(&hooks);
    }
    if (bind_listeners() != 0)
        return 1;
    if (cfg.metrics_listen) {
        char merr[256];
        if (metrics_start(loop, cfg.metrics_listen, merr, sizeof(merr)) != 0) {
            LOG_ERROR("core.metrics_listen: %s", merr);
            return 1;
        }
    }
    sip_core_init();
    timer_attach(loop);
    proxy_set_profiles(&proxies);
    proxy_set_listeners(listeners, cfg.advertised_address);
    if (opt.foreground) {
        if (write_pidfile(getpid()) != 0)
            return 1;
    } else {
        daemonize();
    }
    if (cfg.control_socket) {
        static const struct ctl_hooks hooks = { reload, user_reload };
        char cerr[512];
        if (ctl_start(loop, cfg.control_socket, &hooks, cerr, sizeof(cerr)) != 0) {
            LOG_ERROR("core.control_socket: %s", cerr);
            return 1;
        }
    }
    if (drop_privileges() != 0)
        return 1;
    /* after the fork of daemon mode: sinks may start threads */
    {
        static const struct evi_hooks hooks = { on_has_event_route, on_run_event_route, proxy_run_pending };
        struct evi_config ecfg;
        events_config(&cfg, &ecfg);
        evi_init(loop, &ecfg);
        evi_set_hooks(&hooks);
        evi_script_load_end(1); /* the subscriptions server.lua made while it loaded */
    }

    ev_signal_init(&sig_hup, on_signal, SIGHUP);
    ev_signal_init(&sig_usr1, on_signal, SIGUSR1);
    ev_signal_init(&sig_term, on_signal, SIGTERM);
    ev_signal_init(&sig_int, on_signal, SIGINT);
    ev_signal_start(loop, &sig_hup);
    ev_signal_start(loop, &sig_usr1);
    ev_signal_start(loop, &sig_term);
    ev_signal_start(loop, &sig_int);

    LOG_NOTICE("lunasip %s started (pid %d, config %s, script %s)", LUNASIP_VERSION, (int)getpid(), cfg.dir, cfg.script);
    lvm_system_event(lvm_current, "on_started", NULL);
    proxy_run_pending();
    raise_pid_version("E_CORE_STARTED");
    ev_run(loop, 0);

    LOG_NOTICE("lunasip stopped");
    ctl_stop();
    metrics_stop();
    evi_shutdown(1.0);
    txn_shutdown();
    proxy_shutdown();
    /* stream connections get their close (WebSocket 1001) and a moment to flush it */
    for (struct listener *l = listeners; l; l = l->next) {
        if (l->transport == SIP_TP_UDP)
            udp_stop(loop, l);
        else
            conn_listener_stop(loop, l);
    }
    if (conn_shutdown() > 0) {
        ev_timer_stop(loop, &drain_timer);
        ev_timer_init(&drain_timer, on_conn_drain, 0.02, 0.02);
        ev_timer_start(loop, &drain_timer);
        drain_deadline = ev_now(loop) + 1.0;
        ev_run(loop, 0);
        ev_timer_stop(loop, &drain_timer);
    }
    conn_shutdown_now();
    timer_detach();
    timer_shutdown();
    while (listeners) {
        struct listener *n = listeners->next;
        if (listeners->transport == SIP_TP_UDP)
            udp_close(loop, listeners);
        else
            conn_listener_close(loop, listeners);
        listeners = n;
    }
    conn_configure(NULL, NULL);
    lapi_set_tls_ctx(NULL);
    if (tls)
        tls_ctx_unref(tls);
    lvm_install(NULL);
    lapi_clear_local();
    config_proxies_free(&proxies);
    config_free(&cfg);
    sip_msg_cache_flush();
    if (opt.pidfile)
        unlink(opt.pidfile);
    ev_loop_destroy(loop);
    return 0;
}
