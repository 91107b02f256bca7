-- conf/server.lua, the shipped routing script: fed parsed requests through
-- lunasip._dispatch_request, with lunasip.Proxy replaced by a recorder (the routing
-- itself is the core's and is tested in t/integration).
local ffi = require "ffi"
local lunasip = require "lunasip"
local C = require("lunasip.ffi").C
local Message = lunasip.Message

pcall(ffi.cdef, [[
int lapi_add_local_address(const char *host, int port);
void lapi_clear_local(void);
]])
pcall(ffi.cdef, [[void log_set_level(int l);]])

local function request(o)
  o = o or {}
  local method = o.method or "INVITE"
  local lines = {
    method .. " " .. (o.ruri or "sip:bob@biloxi.example.com") .. " SIP/2.0",
    "Via: SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bK776asdhds",
    "Max-Forwards: " .. (o.mf or 70),
    "To: Bob <sip:bob@biloxi.example.com>" .. (o.totag and (";tag=" .. o.totag) or ""),
    "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774",
    "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
    "CSeq: 314159 " .. method,
  }
  for _, h in ipairs(o.headers or {}) do lines[#lines + 1] = h end
  lines[#lines + 1] = "Content-Length: 0"
  return table.concat(lines, "\r\n") .. "\r\n\r\n"
end

describe("conf/server.lua", function()
  local saved_sip, saved_sys, saved_proxy
  local routed, live

  -- A stand-in for lunasip.Proxy that records what server.lua asks of it.
  local function recorder()
    local Fake = {}
    Fake.__index = function(self, k)
      if k:match("^on_") then
        return function(p, fn) p.callbacks[k] = fn; return p end
      end
      return Fake[k]
    end
    function Fake.new(profile)
      return setmetatable({ profile = profile, callbacks = {} }, Fake)
    end
    function Fake:route(req, host, port, transport)
      routed[#routed + 1] = { proxy = self, req = req, host = host, port = port, transport = transport }
      return true
    end
    return Fake
  end

  local function handle(raw)
    local m = assert(Message.parse(raw))
    live[#live + 1] = m
    lunasip._dispatch_request(m._h, m._g)
    return m
  end

  local function status(m)
    local r = m:last_reply()
    return r and tonumber(r:match("^SIP/2%.0 (%d+)")), r
  end

  before_each(function()
    saved_sip, saved_sys = rawget(_G, "SipEvents"), rawget(_G, "SystemEvents")
    saved_proxy = lunasip.Proxy
    rawset(_G, "SipEvents", {})
    rawset(_G, "SystemEvents", {})
    -- the event globals the core's bootstrap sets (src/lvm.c)
    local ev = lunasip.events
    rawset(_G, "event_route", ev.event_route)
    rawset(_G, "raise_event", ev.raise_event)
    rawset(_G, "subscribe_event", ev.subscribe_event)
    rawset(_G, "unsubscribe_event", ev.unsubscribe_event)
    rawset(_G, "fetch_event_params", ev.fetch_event_params)
    lunasip.Proxy = recorder()
    routed, live = {}, {}
    C.lapi_add_local_address("127.0.0.1", 5060)
    C.log_set_level(3) -- the script's info lines would clutter the test output
    assert(loadfile("conf/server.lua"))()
  end)

  after_each(function()
    for _, m in ipairs(live) do m:release() end
    lunasip.Proxy = saved_proxy
    rawset(_G, "SipEvents", saved_sip)
    rawset(_G, "SystemEvents", saved_sys)
    C.lapi_clear_local()
    C.log_set_level(1) -- info, the default
  end)

  it("handles a refused reload in event_route[\"E_CORE_RELOAD\"]", function()
    assert.is_function(event_route["E_CORE_RELOAD"])
  end)

  it("defines the OverSIP callbacks", function()
    assert.is_function(SipEvents.on_request)
    assert.is_function(SystemEvents.on_started)
    assert.is_function(SystemEvents.on_terminated)
    assert.is_function(SystemEvents.on_user_reload)
  end)

  it("answers an OPTIONS addressed to lunasip with 200 and Allow", function()
    local m = handle(request { method = "OPTIONS", ruri = "sip:127.0.0.1:5060" })
    local code, raw = status(m)
    assert.equal(200, code)
    assert.matches("\r\nAllow: INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER\r\n", raw)
    local p = handle(request { method = "OPTIONS", ruri = "sip:probe@127.0.0.1" })
    assert.equal(200, status(p))
    assert.equal(0, #routed)
  end)

  it("proxies an initial request to the upstream with the proxy_out profile", function()
    local m = handle(request())
    assert.is_nil(m:last_reply())
    assert.equal(1, #routed)
    local r = routed[1]
    assert.equal(m._h, r.req._h)
    assert.equal("proxy_out", r.proxy.profile)
    assert.same({ "127.0.0.1", 5080, "udp" }, { r.host, r.port, r.transport })
    for _, cb in ipairs { "on_success_response", "on_failure_response", "on_error", "on_canceled",
                          "on_invite_timeout" } do
      assert.is_function(r.proxy.callbacks[cb], cb)
    end
    -- the callbacks only log
    r.proxy.callbacks.on_error(408, "Request Timeout", "client_timeout")
    r.proxy.callbacks.on_canceled()
    r.proxy.callbacks.on_invite_timeout()
  end)

  it("proxies an OPTIONS for someone else upstream", function()
    handle(request { method = "OPTIONS", ruri = "sip:alice@example.net" })
    assert.equal(1, #routed)
  end)

  it("clamps Max-Forwards to 10 and answers 483 at 0", function()
    local m = handle(request { mf = 70 })
    assert.equal(10, m.max_forwards)
    local z = handle(request { mf = 0 })
    assert.equal(483, status(z))
    assert.equal(1, #routed)
  end)

  it("removes a Route to lunasip from an initial request and proxies it", function()
    local m = handle(request { headers = { "Route: <sip:127.0.0.1:5060;lr>" } })
    assert.is_false(m:has_header("Route"))
    assert.equal(1, #routed)
  end)

  it("refuses an initial request with a preloaded Route elsewhere: 403", function()
    local m = handle(request { headers = { "Route: <sip:p1.example.com;lr>" } })
    local code, raw = status(m)
    assert.equal(403, code)
    assert.matches("^SIP/2%.0 403 Preloaded Route not allowed\r\n", raw)
    assert.equal(0, #routed)
  end)

  it("routes an in-dialog request by its Route set (no fixed destination)", function()
    local m = handle(request { method = "BYE", totag = "a6c85cf",
                               headers = { "Route: <sip:127.0.0.1:5060;lr>, <sip:p2.example.com;lr>" } })
    assert.equal(1, #routed)
    assert.is_nil(routed[1].host)
    assert.equal("proxy_out", routed[1].proxy.profile)
    assert.same({ "<sip:p2.example.com;lr>" }, m:header_all("Route"))
  end)

  it("answers 404 to an in-dialog request with no Route to lunasip, drops such an ACK", function()
    local m = handle(request { method = "BYE", totag = "a6c85cf" })
    assert.equal(404, status(m))
    local a = handle(request { method = "ACK", totag = "a6c85cf" })
    assert.is_nil(a:last_reply())
    assert.equal(0, #routed)
  end)

  it("drops an initial ACK and never answers an ACK at Max-Forwards 0", function()
    assert.is_nil(handle(request { method = "ACK" }):last_reply())
    assert.is_nil(handle(request { method = "ACK", totag = "x", mf = 0 }):last_reply())
    assert.equal(0, #routed)
  end)
end)
