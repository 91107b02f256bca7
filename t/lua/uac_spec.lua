-- lunasip.UacRequest and lunasip.Uac (lua/lunasip/uac.lua): building, checking and
-- serialising the requests lunasip originates, and uac:route through the C core.
local ffi = require "ffi"
local lunasip = require "lunasip"
local proxymod = require "lunasip.proxy"
local uacmod = require "lunasip.uac"
local C = require("lunasip.ffi").C
local UacRequest, Uac, Uri, NameAddr = lunasip.UacRequest, lunasip.Uac, lunasip.Uri, lunasip.NameAddr

local HAVE_C = pcall(function()
  return C.lunasip_proxy_profile, C.lunasip_uac_route, C.lunasip_proxy_route, C.lunasip_proxy_blacklist
end)

local function raises(text, f)
  local ok, err = pcall(f)
  assert.is_false(ok, "expected an error")
  err = tostring(err)
  local line = debug.getinfo(f, "S").linedefined
  assert.matches("uac_spec%.lua:" .. line .. ": ", err)
  assert.truthy(err:find(text, 1, true), "error '" .. err .. "' lacks '" .. text .. "'")
end

local function base(extra)
  local t = { method = "OPTIONS", ruri = "sip:bob@127.0.0.1:5099", from = "<sip:lunasip@127.0.0.1>",
              to = "Bob <sip:bob@127.0.0.1:5099>" }
  for k, v in pairs(extra or {}) do t[k] = v end
  return t
end

-- Splits serialised text into start line, header lines and body.
local function split(s)
  local head, body = s:match("^(.-)\r\n\r\n(.*)$")
  assert(head, "no empty line")
  local lines = {}
  for l in (head .. "\r\n"):gmatch("(.-)\r\n") do lines[#lines + 1] = l end
  return table.remove(lines, 1), lines, body
end

describe("UacRequest.new", function()
  it("exposes the fields, with a random From tag, a random Call-ID and CSeq 1", function()
    local r = UacRequest.new(base())
    assert.equal("OPTIONS", r.method)
    assert.equal(Uri, getmetatable(r.ruri))
    assert.equal("sip:bob@127.0.0.1:5099", tostring(r.ruri))
    assert.equal(NameAddr, getmetatable(r.from))
    assert.matches("^%x+$", r.from.tag)
    assert.equal(r.from.tag, r.from_tag)
    assert.equal("Bob", r.to.display_name)
    assert.is_nil(r.to.tag)
    assert.matches("^%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x%x+$", r.call_id)
    assert.equal(1, r.cseq)
    assert.is_nil(r.contact)
    assert.is_nil(r.max_forwards)
    assert.same({}, r.tvars)
    local r2 = UacRequest.new(base())
    assert.are_not.equal(r.call_id, r2.call_id)
    assert.are_not.equal(r.from.tag, r2.from.tag)
    assert.are_not.equal(r.tvars, r2.tvars)
  end)

  it("keeps a given tag, Call-ID and CSeq, and takes Uri / NameAddr objects", function()
    local from = NameAddr.parse("<sip:lunasip@127.0.0.1>;tag=abc")
    local r = UacRequest.new(base { from = from, ruri = Uri.parse("sip:127.0.0.1:5099"), to = NameAddr.parse("<sip:b@c>"),
                                    call_id = "id1@lunasip", cseq = 42, contact = "<sip:lunasip@127.0.0.1:5060>",
                                    max_forwards = 10 })
    assert.equal("abc", r.from_tag)
    assert.equal("id1@lunasip", r.call_id)
    assert.equal(42, r.cseq)
    assert.equal("sip:lunasip@127.0.0.1:5060", tostring(r.contact.uri))
    assert.equal(10, r.max_forwards)
  end)

  it("does not change the caller's From object when it adds the tag", function()
    local from = NameAddr.parse("<sip:lunasip@127.0.0.1>")
    local r = UacRequest.new(base { from = from })
    assert.is_nil(from.tag)
    assert.is_string(r.from.tag)
  end)

  it("refuses bad fields, at the caller", function()
    raises("expected a table", function() UacRequest.new("OPTIONS") end)
    raises("method must be a token", function() UacRequest.new(base { method = "OPT IONS" }) end)
    raises("method must be a token", function() UacRequest.new(base { method = false }) end)
    raises("ruri: invalid URI", function() UacRequest.new(base { ruri = "not a uri" }) end)
    raises("ruri must be a string or a Uri", function() UacRequest.new(base { ruri = 5 }) end)
    raises("ruri must be a string or a Uri", function() UacRequest.new(base { ruri = "sip:a@b\r\nX: y" }) end)
    local nofrom = base()
    nofrom.from = nil
    raises("from is required", function() UacRequest.new(nofrom) end)
    raises("from must be a string or a NameAddr", function() UacRequest.new(base { from = false }) end)
    raises("to: invalid name-addr", function() UacRequest.new(base { to = "<sip:" }) end)
    raises("from must be a string or a NameAddr", function() UacRequest.new(base { from = "<sip:a@b>\r\nX: y" }) end)
    raises("contact: invalid name-addr", function() UacRequest.new(base { contact = "*" }) end)
    raises("call_id must be a non-empty string", function() UacRequest.new(base { call_id = "a b" }) end)
    raises("call_id must be a non-empty string", function() UacRequest.new(base { call_id = "" }) end)
    raises("cseq must be an integer 0..2147483647", function() UacRequest.new(base { cseq = -1 }) end)
    raises("cseq must be an integer 0..2147483647", function() UacRequest.new(base { cseq = 2 ^ 31 }) end)
    raises("cseq must be an integer 0..2147483647", function() UacRequest.new(base { cseq = 1.5 }) end)
    raises("max_forwards must be an integer 0..255", function() UacRequest.new(base { max_forwards = 256 }) end)
    raises("body must be a string", function() UacRequest.new(base { body = 1 }) end)
    raises("a body needs a content_type", function() UacRequest.new(base { body = "hi" }) end)
    local ct = base { body = "hi", content_type = "text/plain\r\nX: y" }
    raises("content_type must be a non-empty string", function() UacRequest.new(ct) end)
  end)

  it("checks headers as req:reply does, at the caller", function()
    raises("headers must be a table", function() UacRequest.new(base { headers = "X-A: 1" }) end)
    local crlf, nul = { ["X-A"] = "1\r\nVia: evil" }, { "X-A: 1\0" }
    raises("value must be a string without CR, LF or NUL", function() UacRequest.new(base { headers = crlf }) end)
    raises("value must be a string without CR, LF or NUL", function() UacRequest.new(base { headers = nul }) end)
    raises("bad header name", function() UacRequest.new(base { headers = { ["X A"] = "1" } }) end)
    raises("is not 'Name: value'", function() UacRequest.new(base { headers = { "no colon" } }) end)
  end)

  it("refuses in headers what it builds from its fields (and Via), compact forms too", function()
    for _, name in ipairs { "Via", "v", "From", "f", "To", "t", "Call-ID", "i", "CSeq", "Max-Forwards",
                            "Contact", "m", "Content-Type", "c", "Content-Length", "l" } do
      raises("header " .. name .. " is built from the request's fields",
             function() UacRequest.new(base { headers = { name .. ": x" } }) end)
    end
  end)
end)

describe("UacRequest serialisation", function()
  it("writes start line, From, To, Call-ID, CSeq, Content-Length and no Via", function()
    local r = UacRequest.new(base { call_id = "c1", cseq = 7 })
    local start, lines, body = split(r:serialize())
    assert.equal("OPTIONS sip:bob@127.0.0.1:5099 SIP/2.0", start)
    assert.same({
      "From: <sip:lunasip@127.0.0.1>;tag=" .. r.from_tag,
      'To: "Bob" <sip:bob@127.0.0.1:5099>',
      "Call-ID: c1",
      "CSeq: 7 OPTIONS",
      "Content-Length: 0",
    }, lines)
    assert.equal("", body)
    assert.equal(r:serialize(), tostring(r))
  end)

  it("adds Max-Forwards, Contact, extra headers in order, Content-Type and the body", function()
    local r = UacRequest.new(base {
      method = "MESSAGE", call_id = "c2", max_forwards = 5, contact = "<sip:lunasip@127.0.0.1:5060>",
      headers = { "X-One: 1", "Subject: hi: there", "X-One: 2" }, body = "hello", content_type = "text/plain",
    })
    local start, lines, body = split(r:serialize())
    assert.equal("MESSAGE sip:bob@127.0.0.1:5099 SIP/2.0", start)
    assert.same({
      "From: <sip:lunasip@127.0.0.1>;tag=" .. r.from_tag,
      'To: "Bob" <sip:bob@127.0.0.1:5099>',
      "Call-ID: c2",
      "CSeq: 1 MESSAGE",
      "Max-Forwards: 5",
      "Contact: <sip:lunasip@127.0.0.1:5060>",
      "X-One: 1",
      "Subject: hi: there",
      "X-One: 2",
      "Content-Type: text/plain",
      "Content-Length: 5",
    }, lines)
    assert.equal("hello", body)
  end)

  it("takes a map of headers with lists of values", function()
    local r = UacRequest.new(base { headers = { ["X-List"] = { "a", "b" }, ["X-Num"] = 3 } })
    local s = r:serialize()
    assert.matches("\r\nX%-List: a\r\nX%-List: b\r\n", s)
    assert.matches("\r\nX%-Num: 3\r\n", s)
  end)

  it("serialises to a message lunasip's parser takes once a Via is added", function()
    local r = UacRequest.new(base { body = "v=0\r\n", content_type = "application/sdp", headers = { "X-A: 1" } })
    local s = r:serialize()
    local withvia = s:gsub("\r\n", "\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKtest\r\n", 1)
    local m = assert(lunasip.Message.parse(withvia))
    assert.equal("OPTIONS", m.method)
    assert.equal(r.call_id, m.call_id)
    assert.equal(1, m.cseq)
    assert.equal(r.from_tag, m.from_tag)
    assert.equal("1", m:header("X-A"))
    assert.equal("v=0\r\n", m.body)
    m:release()
  end)

  it("draws hex ids of the asked size", function()
    assert.matches("^%x+$", uacmod._random_hex(8))
    assert.equal(16, #uacmod._random_hex(8))
    assert.equal(32, #uacmod._random_hex(16))
  end)
end)

describe("uac:route argument checks", function()
  it("refuses what is not a UacRequest and bad destinations, at the caller", function()
    local u = setmetatable({ profile = "test" }, Uac)
    local r = UacRequest.new(base())
    raises("expected a lunasip.UacRequest", function() u:route({ method = "OPTIONS" }) end)
    raises("call it as uac:route", function() u.route(r) end)
    raises("dst_port must be an integer 1..65535", function() u:route(r, "127.0.0.1", 70000) end)
    raises("dst_transport must be one of", function() u:route(r, "127.0.0.1", 5060, "quic") end)
  end)

  it("shares the Proxy callbacks", function()
    local u = setmetatable({ profile = "test" }, Uac)
    for _, name in ipairs { "on_provisional_response", "on_success_response", "on_failure_response", "on_canceled",
                            "on_invite_timeout", "on_error", "on_target", "abort_routing", "drop_response",
                            "add_target_to_blacklist" } do
      assert.is_function(u[name], name)
    end
  end)
end)

describe("lunasip.Uac with the core", function()
  local loaded = false
  local function need_c()
    if not HAVE_C then
      pending("liblunasip.so has no lunasip_uac_route yet (src/proxy.c)")
      return false
    end
    if not loaded then
      pcall(ffi.cdef, [[
struct config_proxies { void *profiles; size_t nprofiles; };
int config_proxies_load(const char *dir, struct config_proxies *out, char *err, size_t errlen);
void proxy_set_profiles(const struct config_proxies *p);
]])
      local p = ffi.new("struct config_proxies")
      local err = ffi.new("char[512]")
      assert(C.config_proxies_load("conf", p, err, 512) == 0, ffi.string(err))
      rawset(_G, "__lunasip_test_uac_profiles", p)
      C.proxy_set_profiles(p)
      loaded = true
    end
    return true
  end

  it("Uac.new refuses an unknown profile, at the caller", function()
    if not need_c() then return end
    raises("proxy profile 'nope' is not defined in proxies.conf", function() Uac.new("nope") end)
    assert.equal("default_proxy", Uac.new().profile)
  end)

  it("route hands the request to the core and registers its ctx", function()
    if not need_c() then return end
    local u = Uac.new("proxy_out"):on_error(function() end)
    local r = UacRequest.new(base())
    local before = {}
    for k in pairs(proxymod._ctxs) do before[k] = true end
    assert.is_true(u:route(r, "127.0.0.1", 5099, "udp"))
    local found
    for k, e in pairs(proxymod._ctxs) do
      if not before[k] then found = e end
    end
    assert.is_table(found)
    assert.equal(u, found.owner)
    assert.equal(r, found.request)
  end)

  it("route raises with the core's reason when the request does not parse", function()
    if not need_c() then return end
    local u = Uac.new()
    local r = UacRequest.new(base())
    r.call_id = "" -- broken after the checks of new
    raises("route: ", function() u:route(r) end)
  end)

  it("route raises for a method the core does not originate (ACK, CANCEL)", function()
    if not need_c() then return end
    local u = Uac.new()
    local ack = UacRequest.new(base { method = "ACK" })
    raises("route: a Uac sends requests other than ACK and CANCEL", function() u:route(ack) end)
  end)

  it("route answers nil, err when the profile vanished (a reload without it)", function()
    if not need_c() then return end
    local u = setmetatable({ profile = "vanished" }, Uac)
    assert.same({ nil, "proxy profile 'vanished' is not defined in proxies.conf" }, { u:route(UacRequest.new(base())) })
  end)
end)
