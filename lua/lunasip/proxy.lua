-- lunasip.Proxy (SPEC §5.3): stateful routing of a request with a proxies.conf profile
-- (RFC 3261 §16), with OverSIP's callbacks. proxy:route() only registers the routing with
-- the core (src/lapi.h, "Proxy and Uac"); the core runs it after the handler returns and
-- reports what happens through lunasip._dispatch_proxy, which lands in dispatch() below.
-- lunasip.Uac (lua/lunasip/uac.lua) shares the callbacks and the dispatcher.
local ffi = require "ffi"
local core = require "lunasip.ffi"
local Message = require "lunasip.message"
local C = core.C

local type, error, tostring, setmetatable, getmetatable, rawset, xpcall, pairs, ipairs =
  type, error, tostring, setmetatable, getmetatable, rawset, xpcall, pairs, ipairs
local traceback = debug.traceback

local pctx = ffi.new("uint32_t[1]")

-- Routings in flight: ctx id (from the core) -> { owner = Proxy|Uac, request = the request
-- object (a Message or a UacRequest) }. An entry lives from route() to the "done" event.
local ctxs = {}

-- The dispatch running now: { entry =, id =, event =, response =, flags = } or nil. The
-- methods below that act "on the ctx being dispatched" (abort_routing, drop_response,
-- add_target_to_blacklist) read it.
local frame = nil

local transports = { udp = 0, tcp = 1, tls = 2, ws = 3, wss = 4 } -- enum sip_transport

------------------------------------------------------------------------- callbacks
-- The callback setters, shared by Proxy and Uac. Each takes a function (or nil to remove
-- it) and returns the object, so calls can be chained.
local callbacks = {}
local callback_names = {
  "on_provisional_response", "on_success_response", "on_failure_response", "on_canceled",
  "on_invite_timeout", "on_error", "on_target",
}
for _, name in ipairs(callback_names) do
  local slot = "_" .. name
  callbacks[name] = function(self, fn)
    if fn ~= nil and type(fn) ~= "function" then
      error(name .. ": expected a function", 2)
    end
    rawset(self, slot, fn)
    return self
  end
end

-- The frame of a dispatch running for self, or a misuse error raised at the caller of
-- the method (level 3).
local function frame_of(self, what)
  if not frame then
    error(what .. ": only valid inside a callback of this proxy", 3)
  end
  if frame.entry.owner ~= self then
    error(what .. ": called on another proxy than the one whose callback is running", 3)
  end
  return frame
end

--- proxy:abort_routing(): from on_target, refuses this target: the core sends nothing to
--- it (the script may answer the request itself).
function callbacks:abort_routing()
  local f = frame_of(self, "abort_routing")
  if f.event ~= "target" then error("abort_routing: only valid inside on_target", 2) end
  f.abort = true
end

--- proxy:drop_response(response?): from a response callback, the response is not
--- forwarded; from on_error, on_canceled or on_invite_timeout, the core does not send
--- its own answer (the script answers instead). response, when given, must be the one
--- being handled.
function callbacks:drop_response(response)
  local f = frame_of(self, "drop_response")
  if f.event == "target" then error("drop_response: not valid inside on_target (use abort_routing)", 2) end
  if response ~= nil and response ~= f.response then
    error("drop_response: not the response being handled", 2)
  end
  f.drop = true
end

--- proxy:add_target_to_blacklist(timeout?, status?, reason?): the current target is
--- skipped for timeout seconds (2..3000; nil = the profile's blacklist_time), answered
--- with status (nil = 403) and reason (nil = "Destination Blacklisted") meanwhile.
--- Returns true, or nil, "no current target".
function callbacks:add_target_to_blacklist(timeout, status, reason)
  local f = frame_of(self, "add_target_to_blacklist")
  if timeout ~= nil and (type(timeout) ~= "number" or timeout % 1 ~= 0 or timeout < 2 or timeout > 3000) then
    error("add_target_to_blacklist: timeout must be an integer 2..3000 (seconds)", 2)
  end
  if status ~= nil and (type(status) ~= "number" or status % 1 ~= 0 or status < 300 or status > 699) then
    error("add_target_to_blacklist: status must be an integer 300..699", 2)
  end
  if reason ~= nil and (type(reason) ~= "string" or reason:find("[%z\r\n]")) then
    error("add_target_to_blacklist: reason must be a string without CR, LF or NUL", 2)
  end
  local rc = C.lunasip_proxy_blacklist(f.id, timeout or 0, status or 0, reason, reason and #reason or 0)
  if rc == core.OK then return true end
  if rc == core.NONE then return nil, "no current target" end
  if rc == core.EINVAL then error("add_target_to_blacklist: refused by the core", 2) end
  return nil, "failed (" .. tostring(rc) .. ")"
end

------------------------------------------------------------------------ dispatcher
-- Checks and converts the routing arguments shared by proxy:route and uac:route; errors
-- are raised at the caller of route (level 3).
local function route_args(host, port, transport)
  if host ~= nil and (type(host) ~= "string" or host == "" or host:find("[%s%z]")) then
    error("route: dst_host must be a non-empty string without spaces", 3)
  end
  if port ~= nil and (type(port) ~= "number" or port % 1 ~= 0 or port < 1 or port > 65535) then
    error("route: dst_port must be an integer 1..65535", 3)
  end
  local tp = core.TP_ANY
  if transport ~= nil then
    tp = type(transport) == "string" and transports[transport:lower()]
    if not tp then
      error("route: dst_transport must be one of \"udp\", \"tcp\", \"tls\", \"ws\", \"wss\"", 3)
    end
  end
  return host, host and #host or 0, port or 0, tp
end

-- Runs on an error inside a callback: the message with the callback's own traceback, so
-- the core's log shows where in server.lua it failed.
local function with_traceback(e)
  return traceback(tostring(e), 2)
end

local function run(cb, ...)
  return xpcall(cb, with_traceback, ...)
end

local response_events = {
  provisional = "_on_provisional_response",
  success = "_on_success_response",
  failure = "_on_failure_response",
}
local plain_events = {
  canceled = "_on_canceled",
  invite_timeout = "_on_invite_timeout",
}

--- The core's report on a routing (src/lapi.h): calls the owner's callback for event and
--- returns the LAPI_R_* bits the callback asked for (drop = 1, abort = 2). An error in
--- the callback is raised again (with its traceback) once the dispatcher's own state is
--- restored.
local function dispatch(ctx, event, a1, a2, a3)
  local entry = ctxs[ctx]
  if event == "done" then
    ctxs[ctx] = nil
    return 0
  end
  if not entry then return 0 end -- not ours (or already forgotten): nothing to call
  local owner = entry.owner
  local cb, ok, err
  local f = { entry = entry, id = ctx, event = event, drop = false, abort = false }
  local saved = frame
  if event == "target" then
    cb = owner._on_target
    if cb then
      frame = f
      ok, err = run(cb, { transport = a1, ip = a2, port = a3 })
    end
  elseif response_events[event] then
    cb = owner[response_events[event]]
    if cb then
      local response = Message.wrap(a1, a2)
      rawset(response, "tvars", entry.request.tvars)
      f.response = response
      frame = f
      ok, err = run(cb, response)
    end
  elseif plain_events[event] then
    cb = owner[plain_events[event]]
    if cb then
      frame = f
      ok, err = run(cb)
    end
  elseif event == "error" then
    cb = owner._on_error
    if cb then
      frame = f
      ok, err = run(cb, a1, a2, a3)
    end
  else
    error("lunasip._dispatch_proxy: unknown event '" .. tostring(event) .. "'", 2)
  end
  frame = saved
  if cb and not ok then error(err, 0) end
  return (f.drop and core.R_DROP or 0) + (f.abort and core.R_ABORT or 0)
end

---------------------------------------------------------------------------- Proxy
local Proxy = {}
Proxy.__index = Proxy
for k, f in pairs(callbacks) do Proxy[k] = f end

local function check_profile(profile, what)
  if profile == nil then profile = "default_proxy" end
  if type(profile) ~= "string" or profile == "" then
    error(what .. ": profile must be a non-empty string", 3)
  end
  if C.lunasip_proxy_profile(profile, #profile) ~= core.OK then
    error("proxy profile '" .. profile .. "' is not defined in proxies.conf", 3)
  end
  return profile
end

--- lunasip.Proxy.new(profile?): a proxy with a profile of proxies.conf (default
--- "default_proxy"). One object may route any number of requests, one after the other or
--- at the same time; its callbacks serve them all.
function Proxy.new(profile)
  profile = check_profile(profile, "Proxy.new")
  return setmetatable({ profile = profile }, Proxy)
end

-- The answer of lunasip_proxy_route / lunasip_uac_route for a runtime failure.
local function route_failure(rc, profile)
  if rc == core.EDONE then return nil, "already answered" end
  if rc == core.GONE then return nil, "gone" end
  if rc == core.NONE then return nil, "proxy profile '" .. profile .. "' is not defined in proxies.conf" end
  if rc == core.ENOMEM then return nil, "out of memory" end
  return nil, "routing failed (" .. tostring(rc) .. ")"
end

-- The events the core delivers for a routing (src/lapi.h LAPI_EV_*): only those the owner
-- has a callback for, so a Proxy without callbacks costs no Lua call after route().
local event_bits = {
  { "_on_target", 0x01 }, { "_on_provisional_response", 0x02 }, { "_on_success_response", 0x04 },
  { "_on_failure_response", 0x08 }, { "_on_canceled", 0x10 }, { "_on_invite_timeout", 0x20 },
  { "_on_error", 0x40 },
}
local LAPI_EV_DONE = 0x80

local function register(ctx, owner, request)
  local mask = 0
  for i = 1, #event_bits do
    local e = event_bits[i]
    if owner[e[1]] then mask = mask + e[2] end
  end
  if mask ~= 0 then
    ctxs[ctx] = { owner = owner, request = request }
    mask = mask + LAPI_EV_DONE
  end
  C.lunasip_proxy_events(ctx, mask)
end

--- proxy:route(request, dst_host?, dst_port?, dst_transport?): routes request statefully
--- after the handler returns: to dst_host (port, transport: "udp"|"tcp"|"tls"|"ws"|"wss")
--- when given, else to the top Route, else to the R-URI (RFC 3263). Returns true, or nil,
--- err: "already answered" (answered, or already being routed), "gone".
function Proxy:route(request, host, port, transport)
  if getmetatable(self) ~= Proxy then error("route: call it as proxy:route(request, ...)", 2) end
  if not Message.is(request) then error("route: request must be a request object", 2) end
  local hlen, tp
  host, hlen, port, tp = route_args(host, port, transport)
  local p = self.profile
  local rc = C.lunasip_proxy_route(request._h, request._g, p, #p, host, hlen, port, tp, pctx)
  if rc == core.OK then
    register(pctx[0], self, request)
    return true
  end
  if rc == core.EINVAL then
    error("route: the core refused the request or the destination (a response, a CANCEL, a request " ..
          "the core did not receive, or a bad dst_host?)", 2)
  end
  return route_failure(rc, p)
end

return {
  Proxy = Proxy,
  callbacks = callbacks,
  dispatch = dispatch,
  route_args = route_args,
  route_failure = route_failure,
  check_profile = check_profile,
  register = register,
  -- tests: the routings in flight, by ctx id
  _ctxs = ctxs,
}
