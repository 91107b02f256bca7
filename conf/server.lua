--[[
  server.lua — your routing logic. lunasip calls the functions you define here.

  * Edit this file, then send SIGHUP to reload it without a restart:
        kill -HUP $(pidof lunasip)
    A file with an error is refused (the error and its line go to the log) and the
    running version keeps serving.
  * SIGUSR1 calls SystemEvents.on_user_reload (reopen your own data, say).
  * The full Lua (LuaJIT) standard library is available; your own modules go in
    lib/ next to this file and are found by require.
  * An error in a handler is logged with its traceback and the request is answered
    500 (the error text never reaches the peer); lunasip keeps running.
  * A handler that takes longer than 100 ms is logged: never block in a handler.

  The request object (SPEC §5.2), the most used parts:
    request.method, request.ruri (a lunasip.Uri; assign a string to change it),
    request.from / request.to (lunasip.NameAddr), request.from_tag, request.to_tag,
    request.call_id, request.cseq, request.max_forwards, request.body,
    request.transport ("udp"...), request.source_ip, request.source_port,
    request:header(name), request:header_all(name), request:set_header(name, value),
    request:insert_header / append_header / delete_header / delete_header_top,
    request:reply(code, reason, headers, body), request:check_max_forwards(n),
    request:is_initial(), request:is_in_dialog(), request:destination_myself(),
    request:loose_route(), request:fix_nat(), request.tvars (a table of yours that the
    response callbacks see as response.tvars).

  Stateful proxying (SPEC §5.3), as in OverSIP:
    local proxy = lunasip.Proxy.new("proxy_out")   -- a profile of proxies.conf
    proxy:on_success_response(function(response) ... end)   -- also on_provisional_response,
    proxy:route(request)                  -- on_failure_response, on_canceled, on_error, ...
    proxy:route(request, host, port, "udp"|"tcp"|"tls"|"ws"|"wss")   -- a fixed next hop

  Events (SPEC §5.4, as in OpenSIPS), globals:
    raise_event("E_MY_EVENT", { caller = "alice", code = 200 })   -- to every subscriber
    subscribe_event("E_MY_EVENT", "udp:127.0.0.1:8888")            -- or tcp:, unix:, http://,
                                                  -- flatstore:, rabbitmq:, virtual:FAILOVER ...
    event_route["E_MY_EVENT"] = function()        -- runs after the current request is done
      local caller = fetch_event_params("caller")
    end
  or from a shell: lunasip ctl event_subscribe E_MY_EVENT udp:127.0.0.1:8888 3600
]]

-- Where initial requests go: every new call, registration or out-of-dialog request
-- that is not for lunasip itself is proxied to this host (your registrar, PBX, or SIP
-- provider). port and transport may be nil: the next hop is then found with DNS
-- (RFC 3263). In-dialog requests follow their Route headers instead.
local UPSTREAM = { host = "127.0.0.1", port = 5080, transport = "udp" }

local lunasip = require "lunasip"
local log = lunasip.log

-- Called once, after every listener is bound and before the first request.
function SystemEvents.on_started()
  log.notice("server.lua loaded: proxying initial requests to %s:%s (%s)",
             UPSTREAM.host, tostring(UPSTREAM.port or "SRV"), UPSTREAM.transport or "any transport")
end

-- Called on SIGUSR1.
function SystemEvents.on_user_reload()
  log.notice("user reload requested")
end

-- Built-in events have handlers too (the README lists them all with their params).
event_route["E_CORE_RELOAD"] = function()
  local status, err = fetch_event_params("status", "error")
  if status ~= "ok" then
    log.warn("reload refused, still running the previous server.lua: %s", err)
  end
end

-- Called on SIGTERM/SIGINT, before lunasip exits. error is nil on a normal shutdown.
function SystemEvents.on_terminated(error)
  log.notice("lunasip is stopping")
end

-- A proxy with the "proxy_out" profile of proxies.conf whose callbacks log what
-- becomes of request. A proxy per request lets the callbacks name the request.
local function logging_proxy(request)
  local what = request.method .. " " .. tostring(request.ruri) .. " (Call-ID " .. tostring(request.call_id) .. ")"
  local proxy = lunasip.Proxy.new("proxy_out")
  proxy:on_success_response(function(response)
    log.info("%s: %d %s", what, response.status_code, response.reason_phrase)
  end)
  proxy:on_failure_response(function(response)
    log.info("%s: %d %s", what, response.status_code, response.reason_phrase)
  end)
  proxy:on_error(function(status, reason, code)
    log.info("%s: error %d %s (%s)", what, status, reason, code)
  end)
  proxy:on_canceled(function()
    log.info("%s: canceled by the caller", what)
  end)
  proxy:on_invite_timeout(function()
    log.info("%s: no final answer in time (Timer C)", what)
  end)
  return proxy
end

local function route(request, ...)
  local ok, err = logging_proxy(request):route(request, ...)
  if not ok then
    log.warn("%s %s not routed: %s", request.method, tostring(request.ruri), err)
  end
end

-- Called for every new request except CANCEL (handled by the core) and the ACK of a
-- negative answer lunasip gave (absorbed by the core).
function SipEvents.on_request(request)
  -- RFC 3261 §16.3: refuse requests that have travelled too far (483 at 0), and let
  -- no request travel more than 10 more hops.
  if not request:check_max_forwards(10) then
    return
  end

  -- Answers go back to where the request came from (source IP and port), whatever its
  -- Via says: the client may be behind a NAT.
  request:fix_nat()

  -- In-dialog requests follow the route set lunasip recorded (Record-Route).
  if request:is_in_dialog() then
    if request:loose_route() then
      route(request)
    elseif request.method ~= "ACK" then
      log.info("%s %s: in-dialog request without a Route to us: 404", request.method, tostring(request.ruri))
      request:reply(404, "Not Here")
    end
    -- an ACK nobody routes is dropped: it is never answered
    return
  end

  -- Initial requests. A Route to lunasip (the client's outbound proxy) is ours to
  -- remove; any other Route is a preloaded route lunasip does not follow.
  request:loose_route()
  if request:has_header("Route") then
    if request.method ~= "ACK" then
      request:reply(403, "Preloaded Route not allowed")
    end
    return
  end

  -- Keepalive and monitoring probes addressed to lunasip (its address in the R-URI):
  -- answer OPTIONS ourselves.
  if request.method == "OPTIONS" and request:destination_myself() then
    request:reply(200, "OK", { Allow = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER" })
    return
  end

  -- An ACK outside any dialog and transaction has nowhere to go.
  if request.method == "ACK" then
    return
  end

  route(request, UPSTREAM.host, UPSTREAM.port, UPSTREAM.transport)
end
