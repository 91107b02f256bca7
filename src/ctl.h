/* The control socket (SPEC §8): JSON-RPC 2.0 over a unix stream socket, one request per
 * line, with OpenSIPS' command names kept as aliases; and `lunasip ctl`, its client. */
#ifndef LUNASIP_CTL_H
#define LUNASIP_CTL_H

#include <stddef.h>

struct ev_loop;

/* What the daemon does for commands that are not the control socket's own. */
struct ctl_hooks {
    /* `reload`: as SIGHUP. 0, or -1 with err filled (the running config stays). */
    int (*reload)(char *err, size_t errlen);
    /* `user_reload`: as SIGUSR1 (SystemEvents.on_user_reload). */
    void (*user_reload)(void);
};

/* Listens on path (a stale socket file is replaced; a live one, answered by another
 * instance, is an error). 0, or -1 with err filled. */
int ctl_start(struct ev_loop *loop, const char *path, const struct ctl_hooks *hooks, char *err, size_t errlen);
/* Closes the listener and every client connection, unlinks the socket file. */
void ctl_stop(void);

/* `lunasip ctl [-c DIR | -s SOCKET] COMMAND [ARGS...]` (argv[0] is "ctl"). Prints the JSON
 * result; returns the exit status (0, 1 on an error answer or no answer, 2 on usage).
 * default_dir: the config dir used without -c/-s. */
int ctl_client_main(int argc, char **argv, const char *default_dir);

#endif
