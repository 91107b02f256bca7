-- The lunasip Lua library: `local lunasip = require "lunasip"` in server.lua.
-- SPEC §5: lunasip.Uri, lunasip.NameAddr, lunasip.log, lunasip.Proxy, lunasip.Uac and
-- lunasip.UacRequest, lunasip.events (raise_event & co., also set as globals by the core),
-- lunasip.Connection (stream connections) and lunasip.tls (certificate checks), and the
-- dispatchers the core calls: one for every request it hands to SipEvents.on_request,
-- one for what happens to a routing (src/lapi.h), and three for event_route (src/lvm.c).
local uri = require "lunasip.uri"
local Message = require "lunasip.message"
local proxy = require "lunasip.proxy"
local uac = require "lunasip.uac"
local events = require "lunasip.events"
local Connection = require "lunasip.connection"

local lunasip = {
  version = "0.1.0",
  Uri = uri.Uri,
  NameAddr = uri.NameAddr,
  Message = Message,
  Proxy = proxy.Proxy,
  Uac = uac.Uac,
  UacRequest = uac.UacRequest,
  log = require "lunasip.log",
  events = events,
  Connection = Connection,
  tls = require "lunasip.tls",
}

local wrap = Message.wrap

--- Called by the core (src/lvm.c) with a message handle; errors propagate to the core's
--- traceback handler, which logs them and answers 500.
function lunasip._dispatch_request(h, g)
  local on_request = SipEvents and SipEvents.on_request
  if not on_request then
    error("SipEvents.on_request is not defined in server.lua", 0)
  end
  on_request(wrap(h, g))
end

--- Called by the core for each event of a routing started by proxy:route or uac:route:
--- lunasip._dispatch_proxy(ctx, event, a1, a2, a3) -> LAPI_R_* bits (drop = 1, abort = 2).
--- Events (src/lapi.h): "target" (transport, ip, port), "provisional" / "success" /
--- "failure" (response handle h, g), "canceled", "invite_timeout", "error" (status,
--- reason, code) and "done" (the ctx is forgotten). An error in a callback propagates.
lunasip._dispatch_proxy = proxy.dispatch

--- event_route: lunasip._dispatch_event(name) runs event_route[name];
--- lunasip._has_event_route(name) says whether there is one; lunasip._check_event_routes()
--- validates the table after server.lua ran (nil or an error message).
lunasip._dispatch_event = events.dispatch
lunasip._has_event_route = events.has_route
lunasip._check_event_routes = events.check

--- Connections: the core calls lunasip.connection's _dispatch (WebSocketEvents and the TLS
--- handshake callbacks) and _release (a connection closed) directly (src/lapi_conn.c).

return lunasip
