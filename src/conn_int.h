/* Internal to the stream-connection module: only src/conn*.c include this header. The private
 * half of struct conn, the limits of SPEC §3.1, and what the connection manager (src/conn.c),
 * its WebSocket side (RFC 6455, RFC 7118), its listeners and its table call in each other. */
#ifndef LUNASIP_CONN_INT_H
#define LUNASIP_CONN_INT_H

#include <ev.h>
#include <stddef.h>
#include <stdint.h>

#include "conn.h"
#include "ws.h"

/* Hidden: the module's own, as when they were statics of one file. Out of the dynamic
 * symbol table (-rdynamic, liblunasip.so), and calls inside a file may still be inlined
 * under -fPIC (no semantic interposition). */
#pragma GCC visibility push(hidden)

#define container_of(p, type, member) ((type *)(void *)((char *)(p) - offsetof(type, member)))

/* A node of src/conn_table.c's hash tables (by id, by address, by IP). */
struct hnode {
    struct hnode *next;
    uint64_t h;
};

/* An address as a hash key: transport, family, port and the 16 address bytes. */
struct addr_key {
    uint8_t tp, family;
    uint16_t port;
    uint8_t ip[16];
};

/* Connections per remote IP: n all of them (conn_count_ip), n_in the accepted ones (the
 * max_connections_per_ip limit: lunasip's own connections to a busy peer do not count
 * against that peer's clients). Removed when n drops to 0. */
struct ip_entry {
    struct hnode node;
    struct addr_key key;
    size_t n, n_in;
    ev_tstamp refused_log_at;
};

/* The private half of a connection (c->priv), allocated with its struct conn. */
struct conn_priv {
    struct conn *pub;
    int fd;
    int refs;
    ev_io io;
    ev_timer timer;
    ev_tstamp timer_at;          /* deadline the timer is armed for */
    struct hnode id_node, addr_node;
    struct addr_key akey;
    struct ip_entry *ip;
    struct conn *prev, *next;    /* every connection in the table */
    struct conn *reap_next;
    char name[192];
    char *tls_name;              /* outgoing tls: SNI / name to verify, owned */

    /* times (ev_now) */
    ev_tstamp t_state;           /* entering CONNECTING, TLS or WS_UPGRADE */
    ev_tstamp msg_start;         /* first byte of the partial SIP message, 0 = none */
    const char *why;             /* why it closes (static text), for E_CORE_TCP_DISCONNECT */
    uint16_t ws_code;            /* the WebSocket close code sent or received, 0 = none */
    ev_tstamp last_used, last_rx, last_ping, pong_deadline, close_deadline;

    /* input: bytes kept between reads (a partial message); empty most of the time */
    char *ibuf;
    size_t ilen, icap;
    /* output: one buffer, bytes [ooff, olen) not yet written */
    char *obuf;
    size_t ooff, olen, ocap;
    uint64_t out_in, out_written, sip_end; /* stream offsets: queued, written, end of the
                                            * last SIP message queued (failed = sip lost) */
    size_t tls_wlen;             /* a tls_write that asked to be retried with these bytes */
    int tls_wwant;               /* TLS_WANT_READ / TLS_WANT_WRITE of that write, else 0 */
    int hs_want;                 /* EV_READ / EV_WRITE the handshake waits for */
    int io_events;               /* what the io watcher is started with (0: stopped) */

    struct ws_parser wsp;

    unsigned head_done : 1;      /* the partial message's head is complete (body pending) */
    unsigned opened : 1;         /* reached CONN_OPEN once */
    unsigned client_closed : 1;
    unsigned force_failed : 1;
    unsigned aborting : 1;       /* finishing without flushing (reaper) */
    unsigned in_reap : 1;
    unsigned shut_wr : 1;
    unsigned linger : 1;         /* finish hands the socket to a linger */
    unsigned peer_eof : 1;
    unsigned pong_wait : 1;
    unsigned wsp_init : 1;
};

/* The limits and timeouts (SPEC §3.1), set by conn_configure. */
struct conn_limits {
    size_t max_msg;
    double connect_to, hs_to, header_to, idle_to;
    size_t max_conns, max_per_ip;
    size_t ws_max_msg, ws_max_frame;
    double ws_ka, ws_pong;
    char **origins;              /* NULL with origins_set 0: any origin */
    size_t norigins;
    int origins_set;
};

extern struct conn_limits lim;
extern struct conn_hooks hooks;
extern struct ev_loop *g_loop;
extern struct tls_ctx *g_tls;    /* for new handshakes, NULL without TLS */
extern struct conn *all_head;    /* every connection in the table (src/conn_table.c) */
extern size_t nconns;

/* ----- src/conn.c ----- */

ev_tstamp now(void);
void set_why(struct conn *c, const char *why);
void io_update(struct conn *c);
void timer_update(struct conn *c);
int out_add(struct conn *c, const void *a, size_t alen, const void *b, size_t blen, int sip);
void begin_close(struct conn *c, int ws_frame, uint16_t code, const char *reason);
void deliver(struct conn *c, const char *buf, size_t len);
void set_open(struct conn *c);
void tls_failed(struct conn *c, const char *why);
struct conn *conn_new(int fd, enum sip_transport tp, int outgoing, const struct sockaddr *remote, socklen_t rlen,
                      struct listener *l);

/* ----- src/conn_ws.c ----- */

void enter_ws_upgrade(struct conn *c);
long process_upgrade(struct conn *c, char *buf, size_t len);
size_t process_ws(struct conn *c, char *buf, size_t len);
int send_ws_text(struct conn *c, const char *buf, size_t len);
void send_ws_ping(struct conn *c);
int send_ws_close(struct conn *c, uint16_t code, const char *reason);

/* ----- src/conn_listen.c ----- */

struct listener *listener_find(enum sip_transport tp, int family);

/* ----- src/conn_table.c ----- */

void init_seed(void);
struct ip_entry *ip_find(const struct addr_key *k, uint64_t h);
void ip_key_of(const struct sockaddr *sa, socklen_t len, struct addr_key *k, uint64_t *h);
int table_add(struct conn *c);
void table_remove(struct conn *c);
void table_free(void);

#pragma GCC visibility pop

#endif
