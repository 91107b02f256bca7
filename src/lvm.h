/* The Lua VM lifecycle: one LuaJIT state per loaded server.lua, reference-counted so a
 * reload can swap in a new state while work started by the old one finishes. SPEC §5, §5.6. */
#ifndef LUNASIP_LVM_H
#define LUNASIP_LVM_H

#include <stddef.h>
#include <stdint.h>

struct lua_State;
struct sip_msg;

struct lvm_env {
    const char *lua_dir;   /* the lunasip Lua library (lua/) */
    const char *conf_dir;  /* config dir: its lib/ is on package.path */
    const char *script;    /* absolute path of server.lua */
};

struct lvm;

/* The state new events go to. */
extern struct lvm *lvm_current;
/* The state whose Lua code is running right now (NULL outside Lua): work a handler starts
 * (a proxy routing) belongs to it, even when a reload installed another one since. */
extern struct lvm *lvm_active;

/* Builds a new state: standard libraries, the lunasip library, the callback tables, then
 * runs the script and checks what it defined. On error returns -1 with err holding
 * "file:line: message" and nothing is leaked. The new state has one reference. */
int lvm_create(const struct lvm_env *env, struct lvm **out, char *err, size_t errlen);
void lvm_ref(struct lvm *vm);
void lvm_unref(struct lvm *vm);       /* closes the state at zero */
/* Makes vm the current state (taking over the caller's reference) and drops the
 * current one's reference: the old state lives on while anything else holds it. The
 * cvars the older states keep for live connections are copied into vm first
 * (lapi_conn_adopt). Call from the loop, never from inside Lua. */
void lvm_install(struct lvm *vm);
unsigned lvm_generation(const struct lvm *vm);

/* SystemEvents.<name>(arg): on_started, on_user_reload, on_terminated. A missing handler
 * is fine; an error is logged with its traceback. Returns 0 or -1 on error. */
int lvm_system_event(struct lvm *vm, const char *name, const char *arg);

/* SipEvents.on_request(request) for a request the core accepted. The request gets a Lua
 * handle when it has none; the caller unbinds it (lapi_msg_unbind) when no callback can
 * use it any more. Returns the LAPI_ST_*
 * bits of what the handler did (answered finally, provisionally), plus LVM_REQ_FAILED
 * when it raised an error (logged with its traceback; the caller answers 500). */
#define LVM_REQ_FAILED 0x100
int lvm_on_request(struct lvm *vm, struct sip_msg *m);

/* One event of a proxy or uac routing, delivered to lunasip._dispatch_proxy (the
 * protocol is in lapi.h): a response handle (h != 0), or a target (s1 transport, s2 ip,
 * n port), or an error (n status, s1 reason, s3 code), or nothing. */
struct lvm_proxy_ev {
    const char *event;
    uint32_t h, g;
    const char *s1, *s2, *s3;
    int n;
};
/* Calls lunasip._dispatch_proxy(ctx, event, ...) in vm. m (may be NULL) names the
 * request in log lines. Returns the LAPI_R_* bits the callbacks set, or LVM_REQ_FAILED
 * when one raised an error (logged with its traceback). */
int lvm_proxy_event(struct lvm *vm, uint32_t ctx, const struct lvm_proxy_ev *ev, const struct sip_msg *m);

/* event_route (SPEC §5.4): whether vm's script has a handler for the event, and running it
 * (an error is logged with its traceback; returns 0 or -1). Called from the loop, never
 * from inside Lua. */
int lvm_has_event_route(struct lvm *vm, const char *name);
int lvm_event_route(struct lvm *vm, const char *name);

/* ----- for the Lua side of connections (src/lapi_conn.c) ----- */

/* The lua_State of vm. Only for code that runs from the loop (never from an FFI call). */
struct lua_State *lvm_lua(struct lvm *vm);
/* Every state still alive, the current one and those a reload replaced but something
 * still references, newest first: for (vm = lvm_first(); vm; vm = lvm_next(vm)). */
struct lvm *lvm_first(void);
struct lvm *lvm_next(const struct lvm *vm);
/* Calls the function under nargs arguments on top of vm's stack under the traceback
 * handler, timed like every handler (LVM_SLOW_US), with lvm_active set. On success the
 * nresults results replace the function and its arguments; on error the error is logged
 * with its traceback as "what: ..." and nothing is left. Returns 0 or -1. The caller
 * holds a reference on vm. */
int lvm_call(struct lvm *vm, int nargs, int nresults, const char *what);

/* Handlers slower than this are logged and raise E_CORE_THRESHOLD (SPEC §5). */
#define LVM_SLOW_US 100000

#endif
