/* Stream listeners: the tcp:, tls:, ws: and wss: entries of sip.listen, bound and accepting on
 * the loop. Accepting enforces max_connections and max_connections_per_ip (SPEC §3.1), and
 * pauses on EMFILE/ENFILE; each accepted socket becomes a connection of src/conn.c. */
#include "conn_int.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "stats.h"
#include "tls.h"
#include "udp.h"

#define CONN_ACCEPT_BATCH 64        /* accepts per wake-up of one listener */
#define CONN_ACCEPT_PAUSE 0.5       /* EMFILE/ENFILE: seconds without accepting */
#define CONN_LOG_EVERY 60.0         /* rate-limited logs: once a minute */

/* A stream listener: the struct listener of udp.h first, so conn_listener_* take it. */
struct slistener {
    struct listener l;
    ev_timer pause;              /* accepting paused (EMFILE) */
    int stopped;
    ev_tstamp emfile_log_at;
    struct slistener *next;
};

static struct slistener *listeners;
static ev_tstamp total_refused_log_at, tls_missing_log_at;

/* ----- listeners ----- */

static void refuse(struct slistener *sl, int fd, const char *ip, const char *why, ev_tstamp *log_at)
{
    struct linger lg = { 1, 0 }; /* reset: no TIME_WAIT left behind by a flood */
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(fd);
    stats.conn_refused_limit++;
    ev_tstamp t = now();
    if (!*log_at || t - *log_at >= CONN_LOG_EVERY) {
        *log_at = t;
        LOG_WARN("%s: refusing connections from %s: %s (logged once a minute)", sl->l.name, ip, why);
    }
}

static void accept_one(struct slistener *sl, int fd, const struct sockaddr *sa, socklen_t salen)
{
    char ip[64];
    int port;
    if (sockaddr_ip_port(sa, ip, sizeof(ip), &port) != 0)
        strcpy(ip, "?");
    if (nconns >= lim.max_conns) {
        char why[80];
        snprintf(why, sizeof(why), "sip.max_connections (%zu) reached", lim.max_conns);
        refuse(sl, fd, ip, why, &total_refused_log_at);
        return;
    }
    struct addr_key ik;
    uint64_t ih;
    ip_key_of(sa, salen, &ik, &ih);
    struct ip_entry *e = ip_find(&ik, ih);
    if (e && e->n_in >= lim.max_per_ip) {
        char why[80];
        snprintf(why, sizeof(why), "sip.max_connections_per_ip (%zu) reached", lim.max_per_ip);
        refuse(sl, fd, ip, why, &e->refused_log_at);
        return;
    }
    enum sip_transport tp = sl->l.transport;
    if ((tp == SIP_TP_TLS || tp == SIP_TP_WSS) && !g_tls) {
        close(fd);
        if (!tls_missing_log_at || now() - tls_missing_log_at >= CONN_LOG_EVERY) {
            tls_missing_log_at = now();
            LOG_ERROR("%s: no TLS context configured: closing connections", sl->l.name);
        }
        return;
    }
    struct conn *c = conn_new(fd, tp, 0, sa, salen, &sl->l);
    if (!c) {
        LOG_WARN("%s: out of memory accepting from %s", sl->l.name, ip);
        return;
    }
    stats.conn_accepted++;
    LOG_DEBUG("%s: accepted", c->priv->name);
    switch (tp) {
    case SIP_TP_TLS:
    case SIP_TP_WSS:
        c->tls = tls_session_server(g_tls, c->priv->fd);
        if (!c->tls) {
            tls_failed(c, "out of memory");
            return;
        }
        c->state = CONN_TLS;
        c->priv->t_state = now();
        c->priv->hs_want = EV_READ;
        io_update(c);
        timer_update(c);
        break;
    case SIP_TP_WS:
        enter_ws_upgrade(c);
        break;
    default:
        set_open(c);
        break;
    }
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
    struct slistener *sl = w->data;
    for (int i = 0; i < CONN_ACCEPT_BATCH; i++) {
        struct sockaddr_storage ss;
        socklen_t slen = sizeof(ss);
        int fd = accept4(sl->l.fd, (struct sockaddr *)&ss, &slen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd == -1) {
            int e = errno;
            if (e == EINTR || e == ECONNABORTED || e == EPROTO || e == ENETDOWN || e == ENOPROTOOPT ||
                e == EHOSTDOWN || e == ENONET || e == EHOSTUNREACH || e == EOPNOTSUPP || e == ENETUNREACH)
                continue; /* accept(2): errors of that connection; the next may be fine */
            if (e == EAGAIN || e == EWOULDBLOCK)
                return;
            /* EMFILE, ENFILE, ENOBUFS, ENOMEM: the connection stays in the backlog and the
             * socket stays readable; pause rather than spin on it */
            ev_tstamp t = ev_now(loop);
            if (!sl->emfile_log_at || t - sl->emfile_log_at >= CONN_LOG_EVERY) {
                sl->emfile_log_at = t;
                LOG_WARN("%s: accept: %s: pausing for %g s (logged once a minute)", sl->l.name, strerror(e),
                         CONN_ACCEPT_PAUSE);
            }
            ev_io_stop(loop, &sl->l.io);
            ev_timer_set(&sl->pause, CONN_ACCEPT_PAUSE, 0.);
            ev_timer_start(loop, &sl->pause);
            return;
        }
        accept_one(sl, fd, (struct sockaddr *)&ss, slen);
    }
}

static void on_accept_resume(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct slistener *sl = w->data;
    if (!sl->stopped)
        ev_io_start(loop, &sl->l.io);
}

int conn_listen(struct ev_loop *loop, const struct config_listen *cl, struct listener **out, char *err,
                size_t errlen)
{
    enum sip_transport tp;
    switch (cl->proto) {
    case CONFIG_LISTEN_TCP: tp = SIP_TP_TCP; break;
    case CONFIG_LISTEN_TLS: tp = SIP_TP_TLS; break;
    case CONFIG_LISTEN_WS: tp = SIP_TP_WS; break;
    case CONFIG_LISTEN_WSS: tp = SIP_TP_WSS; break;
    default:
        snprintf(err, errlen, "%s: not a stream transport", cl->text);
        return -EINVAL;
    }
    if (!g_loop)
        conn_init(loop);
    struct slistener *sl = calloc(1, sizeof(*sl));
    if (!sl) {
        snprintf(err, errlen, "%s: out of memory", cl->text);
        return -ENOMEM;
    }
    struct listener *l = &sl->l;
    struct sip_str host = { cl->host, strlen(cl->host) };
    l->transport = tp;
    l->family = cl->family;
    if (sockaddr_from_ip(host, cl->port, &l->addr, &l->addrlen) != 0 || l->addr.ss_family != cl->family) {
        snprintf(err, errlen, "%s: not an IP address", cl->text);
        free(sl);
        return -EINVAL;
    }
    const char *what = "socket";
    int one = 1;
    l->fd = socket(cl->family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (l->fd == -1)
        goto fail;
    setsockopt(l->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (cl->family == AF_INET6)
        setsockopt(l->fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    what = "bind";
    if (bind(l->fd, (struct sockaddr *)&l->addr, l->addrlen) == -1)
        goto fail;
    what = "listen";
    if (listen(l->fd, 1024) == -1)
        goto fail;
    what = "getsockname";
    l->addrlen = sizeof(l->addr);
    if (getsockname(l->fd, (struct sockaddr *)&l->addr, &l->addrlen) == -1)
        goto fail;
    sockaddr_ip_port((struct sockaddr *)&l->addr, l->host, sizeof(l->host), &l->port);
    snprintf(l->name, sizeof(l->name), cl->family == AF_INET6 ? "%s:[%s]:%d" : "%s:%s:%d", sip_transport_name(tp),
             l->host, l->port);
    ev_io_init(&l->io, on_accept, l->fd, EV_READ);
    l->io.data = sl;
    ev_timer_init(&sl->pause, on_accept_resume, 0., 0.);
    sl->pause.data = sl;
    ev_io_start(loop, &l->io);
    sl->next = listeners;
    listeners = sl;
    *out = l;
    return 0;

fail: {
        int e = errno;
        snprintf(err, errlen, "%s: %s: %s", cl->text, what, strerror(e));
        if (l->fd != -1)
            close(l->fd);
        free(sl);
        return -e;
    }
}

void conn_listener_stop(struct ev_loop *loop, struct listener *l)
{
    struct slistener *sl = (struct slistener *)l;
    sl->stopped = 1;
    ev_io_stop(loop, &l->io);
    ev_timer_stop(loop, &sl->pause);
}

void conn_listener_close(struct ev_loop *loop, struct listener *l)
{
    struct slistener *sl = (struct slistener *)l;
    conn_listener_stop(loop, l);
    for (struct slistener **pp = &listeners; *pp; pp = &(*pp)->next)
        if (*pp == sl) {
            *pp = sl->next;
            break;
        }
    /* connections keep no dangling pointer to it */
    for (struct conn *c = all_head; c; c = c->priv->next)
        if (c->listener == l)
            c->listener = NULL;
    close(l->fd);
    free(sl);
}

/* The first listener of transport tp and address family family (conn_connect: the Via
 * sent-by of an outgoing connection), or NULL. */
struct listener *listener_find(enum sip_transport tp, int family)
{
    struct listener *l = NULL;
    for (struct slistener *sl = listeners; sl; sl = sl->next)
        if (sl->l.transport == tp && sl->l.family == family) {
            l = &sl->l;
            break;
        }
    return l;
}
