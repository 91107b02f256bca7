/* `lunasip ctl [-c DIR | -s SOCKET] COMMAND [ARGS...]` (SPEC §2, §8): sends one JSON-RPC 2.0
 * request to the control socket of a running lunasip and prints its result. Blocking is fine
 * here: this is a short-lived command-line process, every wait bounded by a timeout. */
#include "ctl.h"

#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "json.h"

#define CLIENT_CONNECT_TIMEOUT 5    /* s */
#define CLIENT_ANSWER_TIMEOUT  30   /* s */
#define CLIENT_ANSWER_MAX      (16 * 1024 * 1024)
#define CLIENT_REQUEST_MAX     (64 * 1024) /* the server's line cap */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: lunasip ctl [-c DIR | -s SOCKET] COMMAND [ARGS...]\n"
            "  -c, --config-dir DIR  the instance whose config dir is DIR (its core.control_socket;\n"
            "                        default: conf/ beside the checkout of the binary, else /etc/lunasip)\n"
            "  -s, --socket SOCKET   the control socket to talk to\n"
            "  -h, --help            this help\n"
            "ARGS are the command's params in order: an arg that is a JSON object or array is sent\n"
            "as JSON, an integer as a number, anything else as a string. The result is printed as\n"
            "JSON (a string bare); an error answer prints 'error CODE: message' and exits 1.\n"
            "commands (OpenSIPS names as aliases):\n"
            "  reload                                  re-read proxies.conf and server.lua (as SIGHUP)\n"
            "  user_reload                             run SystemEvents.on_user_reload (as SIGUSR1)\n"
            "  evi:subscribe|event_subscribe EVENT SOCKET [EXPIRE]\n"
            "                                          subscribe SOCKET for EXPIRE s (default 3600;\n"
            "                                          0 unsubscribes; again refreshes)\n"
            "  evi:unsubscribe EVENT SOCKET            remove a subscription\n"
            "  evi:list|events_list                    the published events\n"
            "  evi:subscribers|subscribers_list [EVENT [SOCKET]]\n"
            "                                          subscriptions and the seconds they have left\n"
            "  evi:raise|raise_event EVENT [PARAMS]    raise EVENT; PARAMS a JSON object or array\n"
            "  evi:flat_rotate|evi_flat_rotate [PATH]  reopen flatstore files\n"
            "  stats [PREFIX]                          counters and event sinks\n"
            "  connections                             stream connections\n"
            "  registrations                           registered contacts\n"
            "  log_level [LEVEL]                       show or set debug|info|notice|warn|error\n"
            "  version                                 the running version\n"
            "  help|which                              the commands the running instance knows\n"
            "example: lunasip ctl event_subscribe E_MY_EVENT udp:127.0.0.1:8888 3600\n");
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}


/* An argument as a param: JSON object/array as is, an integer as a number, else a string. */
static void add_arg(struct json_buf *b, const char *arg)
{
    struct json_val *v = json_parse(arg, strlen(arg), NULL, 0);
    if (v && (v->type == JSON_OBJECT || v->type == JSON_ARRAY || (v->type == JSON_NUMBER && v->is_int)))
        json_write_val(b, v, -1);
    else
        json_strz(b, arg);
    json_free(v);
}

/* Connects to path within CLIENT_CONNECT_TIMEOUT (a unix connect waits only when the
 * listener's backlog is full). Returns the fd, or -1 with a message printed. */
static int connect_to(const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof(sa.sun_path)) {
        fprintf(stderr, "lunasip ctl: %s: a unix socket path is at most %zu bytes\n", path, sizeof(sa.sun_path) - 1);
        return -1;
    }
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        fprintf(stderr, "lunasip ctl: socket: %s\n", strerror(errno));
        return -1;
    }
    struct timeval tv = { CLIENT_CONNECT_TIMEOUT, 0 };
    if (setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) == -1) {
        fprintf(stderr, "lunasip ctl: setsockopt: %s\n", strerror(errno));
        close(fd);
        return -1;
    }
    int rc;
    do
        rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
    while (rc == -1 && errno == EINTR);
    if (rc == -1) {
        int e = errno;
        if (e == ENOENT || e == ECONNREFUSED)
            fprintf(stderr, "lunasip ctl: no lunasip is listening on %s (%s): is it running, with this "
                    "core.control_socket?\n", path, strerror(e));
        else if (e == EAGAIN || e == EWOULDBLOCK || e == ETIMEDOUT)
            fprintf(stderr, "lunasip ctl: %s: no connection within %d s (the instance is busy or hung)\n", path,
                    CLIENT_CONNECT_TIMEOUT);
        else
            fprintf(stderr, "lunasip ctl: cannot connect to %s: %s\n", path, strerror(e));
        close(fd);
        return -1;
    }
    return fd;
}

static int send_all(int fd, const char *p, size_t n, const char *path)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w == -1) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "lunasip ctl: sending to %s: %s\n", path,
                    errno == EAGAIN ? "timed out" : strerror(errno));
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads up to the first newline within CLIENT_ANSWER_TIMEOUT. Returns the line (malloc'd,
 * NUL-terminated, newline removed) or NULL with a message printed. */
static char *read_line(int fd, const char *path, size_t *len)
{
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    double deadline = now_s() + CLIENT_ANSWER_TIMEOUT;
    if (!buf) {
        fprintf(stderr, "lunasip ctl: out of memory\n");
        return NULL;
    }
    for (;;) {
        char *nl = memchr(buf, '\n', n);
        if (nl) {
            *nl = 0;
            *len = (size_t)(nl - buf);
            return buf;
        }
        if (n == cap) {
            if (cap >= CLIENT_ANSWER_MAX) {
                fprintf(stderr, "lunasip ctl: the answer from %s is above %d bytes\n", path, CLIENT_ANSWER_MAX);
                break;
            }
            char *p = realloc(buf, cap * 2);
            if (!p) {
                fprintf(stderr, "lunasip ctl: out of memory\n");
                break;
            }
            buf = p;
            cap *= 2;
        }
        double left = deadline - now_s();
        if (left <= 0) {
            fprintf(stderr, "lunasip ctl: no answer from %s within %d s\n", path, CLIENT_ANSWER_TIMEOUT);
            break;
        }
        struct pollfd pfd = { fd, POLLIN, 0 };
        int pr = poll(&pfd, 1, (int)(left * 1000) + 1);
        if (pr == -1) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "lunasip ctl: poll: %s\n", strerror(errno));
            break;
        }
        if (pr == 0)
            continue; /* the deadline check above reports it */
        ssize_t r = recv(fd, buf + n, cap - n, 0);
        if (r == -1) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "lunasip ctl: reading from %s: %s\n", path, strerror(errno));
            break;
        }
        if (r == 0) {
            fprintf(stderr, "lunasip ctl: %s closed the connection without an answer\n", path);
            break;
        }
        n += (size_t)r;
    }
    free(buf);
    return NULL;
}

/* Prints the answer: the result on stdout (0), or the error on stderr (1). */
static int print_answer(const char *line, size_t len, const char *path)
{
    char err[128];
    struct json_val *a = json_parse(line, len, err, sizeof(err));
    if (!a || a->type != JSON_OBJECT) {
        fprintf(stderr, "lunasip ctl: %s answered something that is not a JSON-RPC answer%s%s\n", path,
                a ? "" : ": ", a ? "" : err);
        json_free(a);
        return 1;
    }
    const struct json_val *res = json_get(a, "result"), *e = json_get(a, "error");
    int status = 0;
    if (e) {
        const struct json_val *code = json_get(e, "code"), *msg = json_get(e, "message");
        fprintf(stderr, "error %s: %s\n", code && code->type == JSON_NUMBER ? code->s : "?",
                msg && msg->type == JSON_STRING ? msg->s : "(no message)");
        status = 1;
    } else if (!res) {
        fprintf(stderr, "lunasip ctl: %s answered neither a result nor an error\n", path);
        status = 1;
    } else if (res->type == JSON_STRING) {
        fwrite(res->s, 1, res->slen, stdout);
        fputc('\n', stdout);
    } else {
        struct json_buf b = { 0 };
        json_write_val(&b, res, 0);
        json_raw(&b, "\n", 1);
        if (b.oom) {
            fprintf(stderr, "lunasip ctl: out of memory\n");
            status = 1;
        } else {
            fwrite(b.p, 1, b.len, stdout);
        }
        json_buf_free(&b);
    }
    json_free(a);
    if (fflush(stdout) != 0) {
        fprintf(stderr, "lunasip ctl: writing the result: %s\n", strerror(errno));
        status = 1;
    }
    return status;
}

int ctl_client_main(int argc, char **argv, const char *default_dir)
{
    static const struct option longopts[] = {
        { "config-dir", required_argument, NULL, 'c' },
        { "socket", required_argument, NULL, 's' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *dir = NULL, *sock = NULL;
    int c;
    optind = 1;
    opterr = 1;
    /* '+': options end at COMMAND, so an argument like -1 is the command's */
    while ((c = getopt_long(argc, argv, "+c:s:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'c': dir = optarg; break;
        case 's': sock = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (dir && sock) {
        fprintf(stderr, "lunasip ctl: -c and -s exclude each other\n");
        usage(stderr);
        return 2;
    }
    if (optind >= argc) {
        fprintf(stderr, "lunasip ctl: a COMMAND is required\n");
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[optind];

    struct config cfg;
    int have_cfg = 0;
    if (!sock) {
        char err[CONFIG_ERR_MAX + 64];
        if (!dir)
            dir = default_dir;
        if (config_load(dir, NULL, &cfg, err, sizeof(err)) != 0) {
            fprintf(stderr, "lunasip ctl: %s\n", err);
            return 1;
        }
        have_cfg = 1;
        if (!cfg.control_socket) {
            fprintf(stderr, "lunasip ctl: %s disables the control socket (core.control_socket = false); "
                    "set it to a path and restart lunasip, or give -s SOCKET\n", cfg.file);
            config_free(&cfg);
            return 1;
        }
        sock = cfg.control_socket;
    }

    struct json_buf req = { 0 };
    json_rawz(&req, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":");
    json_strz(&req, cmd);
    json_rawz(&req, ",\"params\":[");
    for (int i = optind + 1; i < argc; i++) {
        if (i > optind + 1)
            json_rawz(&req, ",");
        add_arg(&req, argv[i]);
    }
    json_rawz(&req, "]}\n");
    int status = 1;
    if (req.oom) {
        fprintf(stderr, "lunasip ctl: out of memory\n");
    } else if (req.len > CLIENT_REQUEST_MAX) {
        fprintf(stderr, "lunasip ctl: the request is %zu bytes; the control socket takes at most %d\n", req.len - 1,
                CLIENT_REQUEST_MAX);
    } else {
        int fd = connect_to(sock);
        if (fd != -1) {
            size_t len;
            char *line = NULL;
            if (send_all(fd, req.p, req.len, sock) == 0)
                line = read_line(fd, sock, &len);
            if (line)
                status = print_answer(line, len, sock);
            free(line);
            close(fd);
        }
    }
    json_buf_free(&req);
    if (have_cfg)
        config_free(&cfg);
    return status;
}
