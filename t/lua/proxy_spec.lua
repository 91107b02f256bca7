-- lunasip.Proxy (lua/lunasip/proxy.lua) and lunasip._dispatch_proxy: the callbacks, the
-- event protocol of src/lapi.h ("Proxy and Uac") driven directly with fake routings, and
-- proxy:route through the C core (lunasip_proxy_*).
local ffi = require "ffi"
local lunasip = require "lunasip"
local proxymod = require "lunasip.proxy"
local C = require("lunasip.ffi").C
local Message, Proxy, Uac, UacRequest = lunasip.Message, lunasip.Proxy, lunasip.Uac, lunasip.UacRequest
local dispatch = lunasip._dispatch_proxy

-- The C side of Proxy/Uac (src/proxy.c) may be missing from an older liblunasip.so.
local HAVE_C = pcall(function()
  return C.lunasip_proxy_profile, C.lunasip_proxy_route, C.lunasip_uac_route, C.lunasip_proxy_blacklist
end)

-- Loads conf/proxies.conf into the core, as main does at start (src/config.h, src/proxy.h).
local profiles_loaded = false
local function load_profiles()
  if profiles_loaded then return end
  pcall(ffi.cdef, [[
struct config_proxies { void *profiles; size_t nprofiles; };
int config_proxies_load(const char *dir, struct config_proxies *out, char *err, size_t errlen);
void proxy_set_profiles(const struct config_proxies *p);
]])
  local p = ffi.new("struct config_proxies")
  local err = ffi.new("char[512]")
  assert(C.config_proxies_load("conf", p, err, 512) == 0, ffi.string(err))
  -- kept for the whole run: the core borrows it
  rawset(_G, "__lunasip_test_profiles", p)
  C.proxy_set_profiles(p)
  profiles_loaded = true
end

local function request(o)
  o = o or {}
  local method = o.method or "INVITE"
  local lines = {
    method .. " " .. (o.ruri or "sip:bob@127.0.0.1:5099") .. " SIP/2.0",
    "Via: SIP/2.0/UDP 127.0.0.1:5098;branch=z9hG4bK776asdhds" .. (o.branch or ""),
    "Max-Forwards: 70",
    "To: Bob <sip:bob@biloxi.example.com>" .. (o.totag and (";tag=" .. o.totag) or ""),
    "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774",
    "Call-ID: " .. (o.call_id or "a84b4c76e66710@pc33.atlanta.example.com"),
    "CSeq: 314159 " .. method,
    "Content-Length: 0",
  }
  return table.concat(lines, "\r\n") .. "\r\n\r\n"
end

local RESPONSES = {
  [180] = "Ringing", [200] = "OK", [486] = "Busy Here",
}
local function response(code)
  return table.concat({
    "SIP/2.0 " .. code .. " " .. RESPONSES[code],
    "Via: SIP/2.0/UDP 127.0.0.1:5098;branch=z9hG4bK776asdhds",
    "To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf",
    "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774",
    "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
    "CSeq: 314159 INVITE",
    "X-Trace: one",
    "Content-Length: 0",
  }, "\r\n") .. "\r\n\r\n"
end

local live = {}
local function parse(raw)
  local m = assert(Message.parse(raw))
  live[#live + 1] = m
  return m
end

after_each(function()
  for i = #live, 1, -1 do
    live[i]:release()
    live[i] = nil
  end
end)

-- A Proxy object without the C core (Proxy.new asks the core for the profile).
local function fake_proxy()
  return setmetatable({ profile = "test" }, Proxy)
end

-- Registers a fake routing as proxy:route would, with ctx ids far from the core's.
local next_ctx = 1000000
local function fake_route(owner, req)
  next_ctx = next_ctx + 1
  proxymod.register(next_ctx, owner, req)
  return next_ctx
end

-- Delivers a response event for ctx with a response parsed from code.
local function respond(ctx, event, code)
  local r = parse(response(code))
  return dispatch(ctx, event, r._h, r._g)
end

-- Asserts that f raises an error pointing at the spec line that defined f and whose
-- message contains text.
local function raises(text, f)
  local ok, err = pcall(f)
  assert.is_false(ok, "expected an error")
  err = tostring(err)
  local line = debug.getinfo(f, "S").linedefined
  assert.matches("proxy_spec%.lua:" .. line .. ": ", err)
  assert.truthy(err:find(text, 1, true), "error '" .. err .. "' lacks '" .. text .. "'")
end

describe("lunasip.Proxy callbacks", function()
  it("are exported with the dispatcher", function()
    assert.is_function(Proxy.new)
    assert.is_function(Uac.new)
    assert.is_function(UacRequest.new)
    assert.is_function(lunasip._dispatch_proxy)
  end)

  it("take a function or nil and return the proxy", function()
    local p = fake_proxy()
    for _, name in ipairs { "on_provisional_response", "on_success_response", "on_failure_response",
                            "on_canceled", "on_invite_timeout", "on_error", "on_target" } do
      assert.equal(p, p[name](p, function() end))
      assert.equal(p, p[name](p, nil))
    end
  end)

  it("refuse a value that is not a function, at the caller", function()
    local p = fake_proxy()
    raises("on_success_response: expected a function", function() p:on_success_response("x") end)
    raises("on_target: expected a function", function() p:on_target({}) end)
  end)
end)

describe("lunasip._dispatch_proxy", function()
  it("gives on_target a {transport, ip, port} table and returns 0", function()
    local p, seen = fake_proxy(), nil
    p:on_target(function(t) seen = t end)
    local ctx = fake_route(p, parse(request()))
    assert.equal(0, dispatch(ctx, "target", "tcp", "192.0.2.7", 5070))
    assert.same({ transport = "tcp", ip = "192.0.2.7", port = 5070 }, seen)
  end)

  it("returns 2 when on_target calls abort_routing", function()
    local p = fake_proxy()
    p:on_target(function(t) if t.ip == "192.0.2.66" then p:abort_routing() end end)
    local ctx = fake_route(p, parse(request()))
    assert.equal(2, dispatch(ctx, "target", "udp", "192.0.2.66", 5060))
    assert.equal(0, dispatch(ctx, "target", "udp", "192.0.2.67", 5060))
  end)

  it("calls the response callbacks with the response, sharing the request's tvars", function()
    local p = fake_proxy()
    local calls = {}
    local function cb(kind)
      return function(resp)
        calls[#calls + 1] = { kind, resp.status_code, resp.reason_phrase, resp:header("X-Trace"), resp.tvars.who }
      end
    end
    p:on_provisional_response(cb("prov")):on_success_response(cb("ok")):on_failure_response(cb("fail"))
    local req = parse(request())
    req.tvars.who = "alice"
    local ctx = fake_route(p, req)
    assert.equal(0, respond(ctx, "provisional", 180))
    assert.equal(0, respond(ctx, "success", 200))
    assert.equal(0, respond(ctx, "failure", 486))
    assert.same({ { "prov", 180, "Ringing", "one", "alice" }, { "ok", 200, "OK", "one", "alice" },
                  { "fail", 486, "Busy Here", "one", "alice" } }, calls)
  end)

  it("lets a response callback write tvars the next callback reads", function()
    local p = fake_proxy()
    local req = parse(request())
    p:on_provisional_response(function(resp) resp.tvars.rang = true end)
    local rang
    p:on_success_response(function(resp) rang = resp.tvars.rang end)
    local ctx = fake_route(p, req)
    respond(ctx, "provisional", 180)
    respond(ctx, "success", 200)
    assert.is_true(rang)
    assert.is_true(req.tvars.rang)
  end)

  it("lets a callback edit the response's headers", function()
    local p = fake_proxy()
    local r = parse(response(200))
    p:on_success_response(function(resp)
      assert.is_true(resp:set_header("X-Trace", "two"))
      assert.is_true(resp:append_header("X-Added", "yes"))
      assert.equal(1, resp:delete_header("Call-ID") and 1)
    end)
    local ctx = fake_route(p, parse(request()))
    assert.equal(0, dispatch(ctx, "success", r._h, r._g))
    assert.equal("two", r:header("X-Trace"))
    assert.equal("yes", r:header("X-Added"))
    assert.matches("X%-Added: yes\r\n", tostring(r))
  end)

  it("returns 1 when a callback calls drop_response (with or without the response)", function()
    local p = fake_proxy()
    p:on_failure_response(function(resp) p:drop_response(resp) end)
    p:on_success_response(function() p:drop_response() end)
    p:on_provisional_response(function() end)
    local ctx = fake_route(p, parse(request()))
    assert.equal(1, respond(ctx, "failure", 486))
    assert.equal(1, respond(ctx, "success", 200))
    assert.equal(0, respond(ctx, "provisional", 180))
  end)

  it("drop_response refuses a response other than the one being handled", function()
    local p = fake_proxy()
    local other = parse(response(200))
    local err
    p:on_failure_response(function() err = select(2, pcall(p.drop_response, p, other)) end)
    local ctx = fake_route(p, parse(request()))
    assert.equal(0, respond(ctx, "failure", 486))
    assert.matches("not the response being handled", err)
  end)

  it("calls on_canceled and on_invite_timeout without arguments", function()
    local p = fake_proxy()
    local got = {}
    p:on_canceled(function(...) got[#got + 1] = { "canceled", select("#", ...) } end)
    p:on_invite_timeout(function(...) got[#got + 1] = { "timeout", select("#", ...) } end)
    local ctx = fake_route(p, parse(request()))
    assert.equal(0, dispatch(ctx, "canceled"))
    assert.equal(0, dispatch(ctx, "invite_timeout"))
    assert.same({ { "canceled", 0 }, { "timeout", 0 } }, got)
  end)

  it("calls on_error with status, reason and code; drop_response there returns 1", function()
    local p = fake_proxy()
    local got
    p:on_error(function(status, reason, code)
      got = { status, reason, code }
      if code == "no_dns_resolution" then p:drop_response() end
    end)
    local ctx = fake_route(p, parse(request()))
    assert.equal(0, dispatch(ctx, "error", 408, "Request Timeout", "client_timeout"))
    assert.same({ 408, "Request Timeout", "client_timeout" }, got)
    assert.equal(1, dispatch(ctx, "error", 404, "No DNS Resolution", "no_dns_resolution"))
  end)

  it("is fine with a missing callback", function()
    local ctx = fake_route(fake_proxy(), parse(request()))
    assert.equal(0, dispatch(ctx, "target", "udp", "192.0.2.1", 5060))
    assert.equal(0, respond(ctx, "provisional", 180))
    assert.equal(0, respond(ctx, "success", 200))
    assert.equal(0, respond(ctx, "failure", 486))
    assert.equal(0, dispatch(ctx, "canceled"))
    assert.equal(0, dispatch(ctx, "invite_timeout"))
    assert.equal(0, dispatch(ctx, "error", 500, "Server Internal Error", "x"))
    assert.equal(0, dispatch(ctx, "done"))
  end)

  it("forgets the ctx on done: later events call nothing", function()
    local p, n = fake_proxy(), 0
    p:on_target(function() n = n + 1 end)
    local ctx = fake_route(p, parse(request()))
    dispatch(ctx, "target", "udp", "192.0.2.1", 5060)
    assert.equal(0, dispatch(ctx, "done"))
    assert.is_nil(proxymod._ctxs[ctx])
    assert.equal(0, dispatch(ctx, "target", "udp", "192.0.2.1", 5060))
    assert.equal(1, n)
    assert.equal(0, dispatch(ctx, "done"))
  end)

  it("answers 0 for a ctx it does not know", function()
    assert.equal(0, dispatch(987654321, "target", "udp", "192.0.2.1", 5060))
    assert.equal(0, dispatch(987654321, "done"))
  end)

  it("raises for an event it does not know", function()
    local ctx = fake_route(fake_proxy():on_error(function() end), parse(request()))
    assert.has_error(function() dispatch(ctx, "bogus") end,
                     "lunasip._dispatch_proxy: unknown event 'bogus'")
  end)

  it("lets a callback's error through, with its traceback, and stays consistent", function()
    local p = fake_proxy()
    p:on_success_response(function() p:drop_response(); error("boom") end)
    p:on_target(function() p:abort_routing() end)
    local ctx = fake_route(p, parse(request()))
    local r = parse(response(200))
    local ok, err = pcall(dispatch, ctx, "success", r._h, r._g)
    assert.is_false(ok)
    assert.matches("proxy_spec%.lua:%d+: boom", err)
    assert.matches("stack traceback", err)
    -- no callback is running any more: the proxy's methods say so
    assert.has_error(function() p:abort_routing() end, nil)
    local ok2, err2 = pcall(p.abort_routing, p)
    assert.is_false(ok2)
    assert.matches("only valid inside a callback", err2)
    -- the routing is still known: the next event and done work as usual
    assert.equal(2, dispatch(ctx, "target", "udp", "192.0.2.1", 5060))
    assert.equal(0, dispatch(ctx, "done"))
    assert.is_nil(proxymod._ctxs[ctx])
  end)

  it("keeps each dispatch's state apart when a callback dispatches another ctx", function()
    local outer, inner = fake_proxy(), fake_proxy()
    local ictx
    inner:on_target(function() end)
    outer:on_target(function()
      assert.equal(0, dispatch(ictx, "target", "udp", "192.0.2.2", 5060))
      outer:abort_routing()
    end)
    local octx = fake_route(outer, parse(request()))
    ictx = fake_route(inner, parse(request({ call_id = "inner" })))
    assert.equal(2, dispatch(octx, "target", "udp", "192.0.2.1", 5060))
  end)

  it("routes one proxy's several requests to the right request's tvars", function()
    local p = fake_proxy()
    local seen = {}
    p:on_success_response(function(resp) seen[#seen + 1] = resp.tvars.n end)
    local r1, r2 = parse(request({ call_id = "one" })), parse(request({ call_id = "two" }))
    r1.tvars.n, r2.tvars.n = 1, 2
    local c1, c2 = fake_route(p, r1), fake_route(p, r2)
    respond(c2, "success", 200)
    respond(c1, "success", 200)
    assert.same({ 2, 1 }, seen)
  end)

  it("gives a Uac's callbacks the UacRequest's tvars", function()
    local u = setmetatable({ profile = "test" }, Uac)
    local req = UacRequest.new { method = "OPTIONS", ruri = "sip:127.0.0.1:5099", from = "<sip:lunasip@127.0.0.1>",
                                 to = "<sip:127.0.0.1:5099>" }
    req.tvars.probe = "p1"
    local got
    u:on_success_response(function(resp) got = { resp.tvars.probe, resp.status_code } end)
    local ctx = fake_route(u, req)
    assert.equal(0, respond(ctx, "success", 200))
    assert.same({ "p1", 200 }, got)
    assert.equal(0, dispatch(ctx, "done"))
  end)
end)

describe("abort_routing, drop_response, add_target_to_blacklist: misuse", function()
  it("are errors outside a callback of that proxy", function()
    local p = fake_proxy()
    raises("abort_routing: only valid inside a callback", function() p:abort_routing() end)
    raises("drop_response: only valid inside a callback", function() p:drop_response() end)
    raises("add_target_to_blacklist: only valid inside a callback", function() p:add_target_to_blacklist() end)
  end)

  it("are errors from another proxy's callback", function()
    local p, other = fake_proxy(), fake_proxy()
    local err
    p:on_target(function() err = select(2, pcall(other.abort_routing, other)) end)
    dispatch(fake_route(p, parse(request())), "target", "udp", "192.0.2.1", 5060)
    assert.matches("another proxy", err)
  end)

  it("abort_routing is for on_target only; drop_response is not for on_target", function()
    local p = fake_proxy()
    local e1, e2
    p:on_success_response(function() e1 = select(2, pcall(p.abort_routing, p)) end)
    p:on_target(function() e2 = select(2, pcall(p.drop_response, p)) end)
    local ctx = fake_route(p, parse(request()))
    assert.equal(0, respond(ctx, "success", 200))
    assert.equal(0, dispatch(ctx, "target", "udp", "192.0.2.1", 5060))
    assert.matches("only valid inside on_target", e1)
    assert.matches("not valid inside on_target", e2)
  end)

  it("add_target_to_blacklist checks timeout, status and reason", function()
    local p = fake_proxy()
    local errs = {}
    p:on_target(function()
      for _, args in ipairs { { 1 }, { 3001 }, { 2.5 }, { "10" }, { 10, 200 }, { 10, 700 }, { 10, 403, 5 },
                              { 10, 403, "a\r\nb" } } do
        errs[#errs + 1] = select(2, pcall(p.add_target_to_blacklist, p, args[1], args[2], args[3]))
      end
    end)
    dispatch(fake_route(p, parse(request())), "target", "udp", "192.0.2.1", 5060)
    assert.equal(8, #errs)
    for i = 1, 4 do assert.matches("timeout must be an integer 2..3000", errs[i], nil, true) end
    for i = 5, 6 do assert.matches("status must be an integer 300..699", errs[i], nil, true) end
    for i = 7, 8 do assert.matches("reason must be a string", errs[i], nil, true) end
  end)
end)

describe("proxy:route argument checks", function()
  it("refuses what is not a request object, at the caller", function()
    local p = fake_proxy()
    raises("request must be a request object", function() p:route("INVITE sip:x SIP/2.0") end)
    raises("request must be a request object", function() p:route(nil) end)
    raises("call it as proxy:route", function() p.route({}, parse(request())) end)
  end)

  it("refuses a bad dst_host, dst_port or dst_transport, at the caller", function()
    local p, req = fake_proxy(), parse(request())
    raises("dst_host must be a non-empty string", function() p:route(req, "") end)
    raises("dst_host must be a non-empty string", function() p:route(req, 5060) end)
    raises("dst_host must be a non-empty string", function() p:route(req, "a b") end)
    raises("dst_port must be an integer 1..65535", function() p:route(req, "127.0.0.1", 0) end)
    raises("dst_port must be an integer 1..65535", function() p:route(req, "127.0.0.1", 65536) end)
    raises("dst_port must be an integer 1..65535", function() p:route(req, "127.0.0.1", "5060") end)
    raises("dst_transport must be one of", function() p:route(req, "127.0.0.1", 5060, "sctp") end)
    raises("dst_transport must be one of", function() p:route(req, "127.0.0.1", 5060, 1) end)
  end)

  it("maps transport names to the core's numbers", function()
    for name, n in pairs { udp = 0, tcp = 1, tls = 2, ws = 3, wss = 4, UDP = 0, WSS = 4 } do
      local _, _, _, tp = proxymod.route_args("h", nil, name)
      assert.equal(n, tp)
    end
    assert.same({ nil, 0, 0, -1 }, { proxymod.route_args(nil, nil, nil) })
    assert.same({ "h.example.com", 13, 5070, -1 }, { proxymod.route_args("h.example.com", 5070, nil) })
  end)
end)

describe("lunasip.Proxy with the core", function()
  local function need_c()
    if not HAVE_C then
      pending("liblunasip.so has no lunasip_proxy_* yet (src/proxy.c)")
      return false
    end
    load_profiles()
    return true
  end

  it("Proxy.new refuses a profile proxies.conf does not define, at the caller", function()
    if not need_c() then return end
    raises("proxy profile 'no_such_profile' is not defined in proxies.conf",
           function() Proxy.new("no_such_profile") end)
    raises("profile must be a non-empty string", function() Proxy.new(42) end)
  end)

  it("Proxy.new takes default_proxy by default and proxy_out from the shipped proxies.conf", function()
    if not need_c() then return end
    assert.equal("default_proxy", Proxy.new().profile)
    assert.equal("proxy_out", Proxy.new("proxy_out").profile)
  end)

  it("route does not register a proxy without callbacks (the core then calls no Lua for it)", function()
    if not need_c() then return end
    local p = Proxy.new("proxy_out")
    local req = parse(request({ method = "ACK", totag = "a6c85cf" }))
    local before = 0
    for _ in pairs(proxymod._ctxs) do before = before + 1 end
    assert.is_true(p:route(req, "127.0.0.1", 5099, "udp"))
    local after = 0
    for _ in pairs(proxymod._ctxs) do after = after + 1 end
    assert.equal(before, after)
  end)

  it("route registers the routing under the core's ctx id (an in-dialog ACK: stateless)", function()
    if not need_c() then return end
    local p = Proxy.new("proxy_out")
    local seen
    p:on_target(function(t) seen = t.ip end)
    -- Message.parse gives no server transaction: only an ACK can be routed from here
    local req = parse(request({ method = "ACK", totag = "a6c85cf" }))
    local before = {}
    for k in pairs(proxymod._ctxs) do before[k] = true end
    assert.is_true(p:route(req, "127.0.0.1", 5099, "udp"))
    local ctx
    for k, e in pairs(proxymod._ctxs) do
      if not before[k] then ctx = k; assert.equal(p, e.owner); assert.equal(req, e.request) end
    end
    assert.is_number(ctx)
    -- the core's events for that ctx reach this proxy
    assert.equal(0, dispatch(ctx, "target", "udp", "127.0.0.1", 5099))
    assert.equal("127.0.0.1", seen)
    assert.equal(0, dispatch(ctx, "done"))
    assert.is_nil(proxymod._ctxs[ctx])
  end)

  it("route answers nil, 'already answered' for an answered request and 'gone' for a released one", function()
    if not need_c() then return end
    local p = Proxy.new()
    local req = parse(request({ branch = "r2" }))
    assert.is_true(req:reply(486))
    assert.same({ nil, "already answered" }, { p:route(req) })
    local gone = assert(Message.parse(request({ branch = "r3" })))
    gone:release()
    assert.same({ nil, "gone" }, { p:route(gone) })
  end)

  it("route refuses a response, and a request the core did not receive, at the caller", function()
    if not need_c() then return end
    local p = Proxy.new()
    local r = parse(response(200))
    raises("the core refused", function() p:route(r) end)
    local req = parse(request())
    raises("the core refused", function() p:route(req) end)
  end)

  it("add_target_to_blacklist without a current target answers nil, err", function()
    if not need_c() then return end
    local p = fake_proxy()
    local got
    p:on_error(function() got = { p:add_target_to_blacklist(10, 403, "Nope") } end)
    dispatch(fake_route(p, parse(request())), "error", 500, "x", "y")
    assert.same({ nil, "no current target" }, got)
  end)
end)
