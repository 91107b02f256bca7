-- server.lua of t/integration/test_proxy_api.py: the Proxy and Uac API (SPEC §5.3) driven
-- by raw UDP peers. Every handler call is logged at info level as one line
--   [lua] CB <what> <Call-ID> <details...>
-- which the tests read from lunasip.log. The request's X-Case header picks the routing:
--   plain     route to the R-URI (in-dialog requests: loose_route first, then the R-URI)
--   serial    route to the R-URI; on_failure_response routes again, with a new Proxy, to
--             127.0.0.1:<X-Next-Port> (serial forking)
--   drop199   on_failure_response: proxy:drop_response(response), request:reply(480, "Gone")
--   abort     on_target: proxy:abort_routing()
--   bl        profile "bl" (timer_F = 1, blacklist_time = 3)
--   bl_add    on_failure_response: proxy:add_target_to_blacklist(5, 503, "Bye")
--   dns       proxy:route(request, "example.invalid", 5060, "udp")
--   tcp       proxy:route(request, "127.0.0.1", <R-URI port>, "tcp")
--   reload    profile "X"; every line carries the script version @VERSION@
-- X-Profile: NAME overrides the profile (default "fast").
-- @UAC_PEER@ / @UAC_SILENT@ (ports, 0 = off): SystemEvents.on_started sends a Uac OPTIONS
-- to 127.0.0.1:@UAC_PEER@, SystemEvents.on_user_reload one to 127.0.0.1:@UAC_SILENT@ (profile "bl").
local lunasip = require "lunasip"

local VERSION = "@VERSION@"
local UAC_PEER = @UAC_PEER@
local UAC_SILENT = @UAC_SILENT@

local function cb(what, cid, ...)
  local parts = { "CB", what, tostring(cid) }
  for i = 1, select("#", ...) do parts[#parts + 1] = tostring((select(i, ...))) end
  lunasip.log.info("%s", table.concat(parts, " "))
end

local function tv(r)
  return "tvars=" .. tostring(r.tvars and r.tvars.mark)
end

-- All the callbacks of a Proxy or Uac, logged under a label.
local function watch(p, label, cid)
  p:on_provisional_response(function(r) cb(label .. ".provisional", cid, r.status_code, tv(r)) end)
  p:on_success_response(function(r) cb(label .. ".success", cid, r.status_code, tv(r)) end)
  p:on_failure_response(function(r) cb(label .. ".failure", cid, r.status_code, tv(r)) end)
  p:on_canceled(function() cb(label .. ".canceled", cid) end)
  p:on_invite_timeout(function() cb(label .. ".invite_timeout", cid, VERSION) end)
  p:on_error(function(status, reason, code) cb(label .. ".error", cid, status, code, reason) end)
  p:on_target(function(t) cb(label .. ".target", cid, t.transport, t.ip, t.port) end)
  return p
end

function SipEvents.on_request(req)
  local cid, m = req.call_id, req.method
  local case = req:header("X-Case") or "plain"
  cb("on_request", cid, m, case, VERSION)
  if case == "hold" then
    return -- neither answered nor routed: the core keeps the transaction
  end
  if case == "clamp" and not req:check_max_forwards(10) then
    cb("max_forwards_zero", cid, m)
    return
  end
  if req:is_in_dialog() then
    cb("loose_route", cid, m, tostring(req:loose_route()))
  end
  local profile = req:header("X-Profile") or (case == "bl" and "bl") or (case == "reload" and "X") or "fast"
  local proxy = watch(lunasip.Proxy.new(profile), "A", cid)
  req.tvars.mark = "mark-" .. m
  local u = req.ruri
  local host, port = u.host, u.port or 5060

  if case == "serial" then
    proxy:on_failure_response(function(r)
      cb("A.failure", cid, r.status_code, tv(r))
      local next_port = tonumber(req:header("X-Next-Port"))
      local p2 = watch(lunasip.Proxy.new("fast"), "B", cid)
      local ok, err = p2:route(req, "127.0.0.1", next_port, "udp")
      cb("reroute", cid, tostring(ok), tostring(err))
    end)
  elseif case == "drop199" then
    proxy:on_failure_response(function(r)
      cb("A.failure", cid, r.status_code, tv(r))
      proxy:drop_response(r)
      local ok, err = req:reply(480, "Gone")
      cb("reply480", cid, tostring(ok), tostring(err))
    end)
  elseif case == "abort" then
    proxy:on_target(function(t)
      cb("A.target", cid, t.transport, t.ip, t.port)
      proxy:abort_routing()
    end)
  elseif case == "bl_add" then
    proxy:on_failure_response(function(r)
      cb("A.failure", cid, r.status_code, tv(r))
      local ok, err = proxy:add_target_to_blacklist(5, 503, "Bye")
      cb("blacklisted", cid, tostring(ok), tostring(err))
    end)
  elseif case == "dns" then
    host, port = "example.invalid", 5060
  end

  local ok, err
  if case == "tcp" then
    ok, err = proxy:route(req, host, port, "tcp")
  else
    ok, err = proxy:route(req, host, port, "udp")
  end
  cb("route", cid, tostring(ok), tostring(err))
end

local function uac_options(port, label, profile)
  local uac = lunasip.Uac.new(profile)
  local r = lunasip.UacRequest.new{ method = "OPTIONS", ruri = "sip:127.0.0.1:" .. port,
                                    from = "<sip:lunasip@test>", to = "<sip:peer@test>" }
  r.tvars.mark = "uac-" .. label
  -- the callbacks know the Call-ID the request got
  watch(uac, label, r.call_id)
  local ok, err = uac:route(r)
  cb(label .. ".route", r.call_id, tostring(ok), tostring(err))
end

function SystemEvents.on_started()
  cb("on_started", "-", VERSION)
  if UAC_PEER ~= 0 then uac_options(UAC_PEER, "U", "fast") end
end

function SystemEvents.on_user_reload()
  cb("on_user_reload", "-", VERSION)
  if UAC_SILENT ~= 0 then uac_options(UAC_SILENT, "S", "bl") end
end
