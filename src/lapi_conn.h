/* The Lua side of stream connections (SPEC §5.1, §5.2): the connection objects that
 * msg.connection and the callbacks' conn argument are (remote/local address, transport,
 * cvars, close(), http_reject()), the WebSocketEvents and SipEvents TLS callbacks, and
 * lunasip.tls.validate / sip_identities. src/main.c plugs these into src/conn.h's hooks. */
#ifndef LUNASIP_LAPI_CONN_H
#define LUNASIP_LAPI_CONN_H

#include <stdint.h>

struct conn;
struct tls_ctx;
struct ws_http_request;

/* conn_hooks.on_ws_upgrade: WebSocketEvents.on_connection(conn, http_request) in the
 * current script. Returns 0 to accept; the status the script gave to conn:http_reject(code,
 * reason) (reason kept until the next call); 500 when the handler raised an error (logged
 * with its traceback); 0 when there is no handler. */
int lapi_conn_ws_upgrade(struct conn *c, const struct ws_http_request *r, const char **reason);

/* conn_hooks.on_tls_handshake: server_side 1 (we accepted): on a tls: connection
 * SipEvents.on_client_tls_handshake(conn, pems), on wss: WebSocketEvents.on_client_tls_handshake;
 * server_side 0 (we connected): SipEvents.on_server_tls_handshake(conn, pems).
 * pems: a Lua list of PEM strings, leaf first (empty when the peer sent none). Returns -1
 * when the handler returned false, called conn:close() or raised an error; else 0. */
int lapi_conn_tls_handshake(struct conn *c, int server_side);

/* conn_hooks.on_close, the Lua part: WebSocketEvents.on_disconnection(conn, client_closed)
 * for a ws/wss connection that was open, then the connection's cvars are released in every
 * Lua state that holds them. Objects Lua still holds answer nil/false afterwards
 * (conn:is_open() false, close() a no-op), never touch freed memory. */
void lapi_conn_closed(struct conn *c, int was_open, int client_closed);

/* The TLS context lunasip.tls.validate checks against (set at start and on reload). The
 * context is referenced (tls_ctx_ref) until the next call; lapi_set_tls_ctx(NULL) at exit
 * drops it. NULL: validate against the system bundle. */
void lapi_set_tls_ctx(struct tls_ctx *ctx);

/* For src/lvm.c, not main.c: the loader of require "lunasip.core_conn", put in
 * package.preload of every state (a lua_CFunction: { import_cvars = f }). */
struct lua_State;
int lapi_conn_luaopen(struct lua_State *L);
/* For src/lvm.c: a reload installs vm; the cvars of every live connection that an older state
 * holds and vm does not are copied into vm (plain values only, see lua/lunasip/connection.lua)
 * before the older state may close. */
struct lvm;
void lapi_conn_adopt(struct lvm *vm);

#endif
