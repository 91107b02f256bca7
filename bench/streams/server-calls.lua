-- lunasip bench: the routing of the call-flow benchmark over TCP (bench/stream_bench.py, part
-- "calls"): bench/proxy/server.lua with the called phone reached over TCP, the same job
-- Kamailio does with record_route(); t_relay() (bench/kamailio/proxy-tcp.cfg). Initial requests
-- are record-routed and proxied statefully to the called phone through the proxy_out profile
-- (bench/proxy/proxies.conf); in-dialog requests (ACK, BYE) follow their Route set, whose
-- Request-URI (the callee's Contact) says transport=tcp. The bench sets the called phone's
-- address in the environment.
local lunasip = require "lunasip"

local UAS_IP = os.getenv("LUNASIP_BENCH_UAS_IP") or "127.0.0.1"
local UAS_PORT = tonumber(os.getenv("LUNASIP_BENCH_UAS_PORT") or "5062")

function SipEvents.on_request(request)
  if not request:check_max_forwards(10) then return end

  if request:is_in_dialog() then
    if request:loose_route() then
      lunasip.Proxy.new("proxy_out"):route(request)
    elseif request.method ~= "ACK" then
      request:reply(404)
    end
    return
  end

  local proxy = lunasip.Proxy.new("proxy_out")
  proxy:route(request, UAS_IP, UAS_PORT, "tcp")
end
