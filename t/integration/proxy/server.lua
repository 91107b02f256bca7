-- server.lua of the proxy tests (t/integration/test_proxy.py): a stateful proxy that sends
-- every request to its Request-URI's host:port over UDP (an in-dialog request after
-- loose_route), and writes one line per handler call to @CB_FILE@:
--   <handler> <Call-ID> <method of the request> [details]
-- Test knobs, as headers of the request:
--   X-Test-Profile: NAME         Proxy.new(NAME) instead of proxy_out
--   X-Test-Core-Max-Forwards: 1  skip check_max_forwards: the core's own check (proxy:route)
local lunasip = require "lunasip"

local cb = assert(io.open("@CB_FILE@", "a"))
cb:setvbuf("line")

local function rec(...)
  local n = select("#", ...)
  local parts = { ... }
  for i = 1, n do parts[i] = tostring(parts[i]) end
  cb:write(table.concat(parts, " ", 1, n), "\n")
end

local function mark(r)
  local tv = r.tvars
  return "tvars=" .. tostring(tv and tv.mark)
end

function SipEvents.on_request(req)
  local cid, m = req.call_id, req.method
  rec("on_request", cid, m, "max_forwards=" .. tostring(req.max_forwards),
      req:is_in_dialog() and "in-dialog" or "initial")
  if not req:header("X-Test-Core-Max-Forwards") then
    if not req:check_max_forwards(70) then
      rec("max_forwards_refused", cid, m)
      return
    end
  end
  if req:is_in_dialog() then
    req:loose_route()
  end
  local proxy = lunasip.Proxy.new(req:header("X-Test-Profile") or "proxy_out")
  req.tvars.mark = "mark-" .. m
  proxy:on_provisional_response(function(r) rec("on_provisional_response", cid, m, r.status_code, mark(r)) end)
  proxy:on_success_response(function(r) rec("on_success_response", cid, m, r.status_code, mark(r)) end)
  proxy:on_failure_response(function(r) rec("on_failure_response", cid, m, r.status_code, mark(r)) end)
  proxy:on_canceled(function() rec("on_canceled", cid, m) end)
  proxy:on_invite_timeout(function() rec("on_invite_timeout", cid, m) end)
  proxy:on_error(function(status, reason, code) rec("on_error", cid, m, status, code, reason) end)
  proxy:on_target(function(t) rec("on_target", cid, m, t.transport, t.ip, t.port) end)
  local u = req.ruri
  proxy:route(req, u.host, u.port or 5060, "udp")
end
