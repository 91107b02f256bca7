-- lunasip.Message (lua/lunasip/message.lua): the request/response object of SPEC §5.2 on
-- messages made with Message.parse (no network: replies are kept for msg:last_reply()).
local ffi = require "ffi"
local lunasip = require "lunasip"
local C = require("lunasip.ffi").C
local Message, Uri, NameAddr = lunasip.Message, lunasip.Uri, lunasip.NameAddr

-- The local identity loose_route and destination_myself compare against (src/lapi.h).
pcall(ffi.cdef, [[
int lapi_add_local_address(const char *host, int port);
int lapi_add_local_domain(const char *domain);
void lapi_clear_local(void);
]])

local function torture(name)
  local f = assert(io.open("t/data/torture/" .. name, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

-- A request: o.method, o.ruri, o.mf (false = no Max-Forwards), o.totag, o.vias (extra
-- Via values), o.headers (extra lines), o.body.
local function request(o)
  o = o or {}
  local method = o.method or "INVITE"
  local lines = {
    method .. " " .. (o.ruri or "sip:bob@biloxi.example.com") .. " SIP/2.0",
    "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds",
  }
  for _, v in ipairs(o.vias or {}) do lines[#lines + 1] = "Via: " .. v end
  if o.mf ~= false then lines[#lines + 1] = "Max-Forwards: " .. (o.mf or 70) end
  lines[#lines + 1] = "To: Bob <sip:bob@biloxi.example.com>" .. (o.totag and (";tag=" .. o.totag) or "")
  lines[#lines + 1] = "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774"
  lines[#lines + 1] = "Call-ID: " .. (o.call_id or "a84b4c76e66710@pc33.atlanta.example.com")
  lines[#lines + 1] = "CSeq: 314159 " .. method
  for _, h in ipairs(o.headers or {}) do lines[#lines + 1] = h end
  local body = o.body or ""
  lines[#lines + 1] = "Content-Length: " .. #body
  return table.concat(lines, "\r\n") .. "\r\n\r\n" .. body
end

local RESPONSE = table.concat({
  "SIP/2.0 180 Ringing",
  "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds;received=192.0.2.1",
  "To: Bob <sip:bob@biloxi.example.com>;tag=a6c85cf",
  "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774",
  "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
  "CSeq: 314159 INVITE",
  "Contact: <sip:bob@192.0.2.4>",
  "Content-Length: 0",
}, "\r\n") .. "\r\n\r\n"

-- Every message parsed here is released after its test.
local live = {}
local function parse(raw)
  local m, err = Message.parse(raw)
  assert(m, err)
  live[#live + 1] = m
  return m
end

-- Asserts that f raises an error pointing at the spec line that defined f (misuse errors
-- are raised with level 2) and whose message contains text.
local function raises(text, f)
  local ok, err = pcall(f)
  assert.is_false(ok, "expected an error")
  err = tostring(err)
  local line = debug.getinfo(f, "S").linedefined
  assert.matches("message_spec%.lua:" .. line .. ": ", err)
  assert.truthy(err:find(text, 1, true), "error '" .. err .. "' lacks '" .. text .. "'")
end

-- Splits a serialised response into its status line, headers (list of {name, value}) and body.
local function split_response(raw)
  local head, body = raw:match("^(.-)\r\n\r\n(.*)$")
  assert(head, "no empty line in the reply")
  local lines = {}
  for l in (head .. "\r\n"):gmatch("(.-)\r\n") do lines[#lines + 1] = l end
  local status = table.remove(lines, 1)
  local hdrs = {}
  for _, l in ipairs(lines) do
    local n, v = l:match("^([^:]+):%s*(.*)$")
    hdrs[#hdrs + 1] = { n, v }
  end
  return status, hdrs, body
end

local function values(hdrs, name)
  local out = {}
  for _, h in ipairs(hdrs) do
    if h[1]:lower() == name:lower() then out[#out + 1] = h[2] end
  end
  return out
end

after_each(function()
  for i = #live, 1, -1 do
    live[i]:release()
    live[i] = nil
  end
end)

describe("Message.parse", function()
  it("answers nil, err for bytes that are not a SIP message and never raises", function()
    for _, s in ipairs { "", "\r\n", "garbage", "INVITE", "SIP/2.0 200 OK\r\n\r\n",
                         "INVITE sip:a@b SIP/2.0\r\n\r\n", string.rep("A", 100000) } do
      local ok, m, err = pcall(Message.parse, s)
      assert.is_true(ok)
      assert.is_nil(m)
      assert.is_string(err)
    end
  end)

  it("gives the status and reason of a refused request (RFC 4475 invalid messages)", function()
    local cases = {
      ["badvers.dat"] = "^505", ["scalar02.dat"] = "^400", ["insuf.dat"] = "^400",
      ["mismatch01.dat"] = "^400", ["ltgtruri.dat"] = "^400", ["ncl.dat"] = "^400",
      ["multi01.dat"] = "^400", ["badinv01.dat"] = "^400", ["ipv6-bad.dat"] = "^400",
      ["escruri.dat"] = "^400", ["quotbal.dat"] = "^400",
    }
    for file, pat in pairs(cases) do
      local m, err = Message.parse(torture(file))
      assert.is_nil(m, file)
      assert.matches(pat, err, nil, false)
    end
  end)

  it("refuses a non-string with an error at the caller", function()
    raises("expected a string", function() Message.parse(nil) end)
  end)

  it("accepts every valid RFC 4475 / RFC 5118 message and re-parses its serialisation", function()
    for _, file in ipairs { "wsinv.dat", "intmeth.dat", "esc01.dat", "escnull.dat", "esc02.dat",
                            "lwsdisp.dat", "longreq.dat", "dblreq.dat", "semiuri.dat",
                            "transports.dat", "mpart01.dat", "unreason.dat", "noreason.dat",
                            "unkscm.dat", "novelsc.dat", "unksm2.dat", "bext01.dat", "invut.dat",
                            "regaut01.dat", "bcast.dat", "zeromf.dat", "cparam01.dat",
                            "cparam02.dat", "regescrt.dat", "sdp01.dat", "inv2543.dat",
                            "ipv6-good.dat", "port-ambiguous.dat", "port-unambiguous.dat",
                            "via-received-param-with-delim.dat", "via-received-param-no-delim.dat",
                            "ipv6-in-sdp.dat", "mult-ip-in-header.dat", "mult-ip-in-sdp.dat",
                            "ipv4-mapped-ipv6.dat", "ipv6-bug-abnf-3-colons.dat",
                            "ipv6-correct-abnf-2-colons.dat" } do
      local m, err = Message.parse(torture(file))
      assert.is_truthy(m, file .. ": " .. tostring(err))
      if m then
        local again, err2 = Message.parse(tostring(m))
        assert.is_truthy(again, file .. " re-parse: " .. tostring(err2))
        if again then
          assert.equal(m.call_id, again.call_id)
          assert.equal(m.body, again.body)
          again:release()
        end
        m:release()
      end
    end
  end)
end)

describe("request accessors", function()
  it("read a plain INVITE", function()
    local m = parse(request { body = "v=0\r\n", headers = { "Content-Type: application/sdp",
                                                          "Contact: <sip:alice@pc33.atlanta.example.com>" } })
    assert.equal("INVITE", m.method)
    assert.equal("sip:bob@biloxi.example.com", tostring(m.ruri))
    assert.equal("biloxi.example.com", m.ruri.host)
    assert.equal("a84b4c76e66710@pc33.atlanta.example.com", m.call_id)
    assert.equal(314159, m.cseq)
    assert.equal("Alice", m.from.display_name)
    assert.equal("sip:alice@atlanta.example.com", tostring(m.from.uri))
    assert.equal("1928301774", m.from_tag)
    assert.equal("Bob", m.to.display_name)
    assert.is_nil(m.to_tag)
    assert.equal("sip:alice@pc33.atlanta.example.com", tostring(m.contact.uri))
    assert.equal("v=0\r\n", m.body)
    assert.equal(70, m.max_forwards)
    assert.is_nil(m.status_code)
    assert.is_nil(m.reason_phrase)
    assert.equal("udp", m.transport)
  end)

  it("have no source address for a parsed message", function()
    local m = parse(request())
    assert.is_nil(m.source_ip)
    assert.is_nil(m.source_port)
    assert.equal("udp", m.connection.transport)
    assert.is_nil(m.connection.remote_ip)
    assert.is_nil(m.cvars)
  end)

  it("give an empty body and no contact when there are none", function()
    local m = parse(request())
    assert.equal("", m.body)
    assert.is_nil(m.contact)
    assert.is_nil(m:header("Contact"))
  end)

  it("read RFC 4475 wsinv (folding, LWS, compact forms, leading zeros)", function()
    local m = parse(torture("wsinv.dat"))
    assert.equal("INVITE", m.method)
    assert.equal("sip:vivekg@chair-dnrc.example.com;unknownparam", tostring(m.ruri))
    assert.is_true(m.ruri:param("unknownparam"))
    assert.equal(68, m.max_forwards)
    assert.equal(9, m.cseq)
    assert.equal("wsinv.ndaksdj@192.0.2.1", m.call_id)
    assert.equal('J Rosenberg \\"', m.from.display_name)
    assert.equal("98asjd8", m.from_tag)
    assert.equal("1918181833n", m.to_tag)
    assert.equal("1918181833n", m.to.tag)
    assert.equal("sip:vivekg@chair-dnrc.example.com", tostring(m.to.uri))
    assert.equal('Quoted string ""', m.contact.display_name)
    assert.equal("newvalue", m.contact:param("NewParam"))
    assert.equal("0.33", m.contact:param("q"))
    assert.is_true(m.contact:param("secondparam"))
    assert.equal(150, #m.body)
    assert.matches("^v=0\r\n", m.body)
  end)

  it("read RFC 4475 messages: zero Max-Forwards, no Max-Forwards, unknown schemes, escapes", function()
    local z = parse(torture("zeromf.dat"))
    assert.equal(0, z.max_forwards)
    local old = parse(torture("inv2543.dat"))
    assert.is_nil(old.max_forwards)
    assert.is_nil(old.from_tag)
    local u = parse(torture("unkscm.dat"))
    assert.equal("nobodyknowsthisscheme", u.ruri.scheme)
    assert.equal("totallyopaquecontent", u.ruri.opaque)
    local e = parse(torture("esc01.dat"))
    assert.equal("sips%3Auser%40example.com", e.ruri.user)
    assert.is_true(e.contact.uri:param("lr")) -- written ;%6C%72
    local i = parse(torture("intmeth.dat"))
    assert.equal("!interesting-Method0123456789_*+`.%indeed'~", i.method)
    assert.equal(255, i.max_forwards)
  end)

  it("read more RFC 4475 messages: trailing datagram bytes, binary body, long values, % that is no escape", function()
    local d = parse(torture("dblreq.dat"))
    assert.equal("REGISTER", d.method)
    assert.equal("", d.body)
    assert.is_nil(tostring(d):find("INVITE", 1, true)) -- the trailing bytes are not part of it
    local mp = parse(torture("mpart01.dat"))
    assert.equal(tonumber(mp:header("Content-Length")), #mp.body)
    assert.truthy(mp.body:find("\0", 1, true))
    local long = parse(torture("longreq.dat"))
    assert.equal(34, #long:header_all("Via"))
    assert.equal(103, #long.to.display_name)
    assert.equal(6000, long.to.uri.port)
    local e2 = parse(torture("esc02.dat"))
    assert.equal("RE%47IST%45R", e2.method)
    assert.equal("%Z%45", e2.from.display_name)
    assert.equal(2, #e2:header_all("Contact")) -- C%6Fntact is another header
    local en = parse(torture("escnull.dat"))
    assert.equal("null-%00-null", en.to.uri.user)
    assert.equal(2, #en:header_all("Contact"))
    local tr = parse(torture("transports.dat"))
    local kinds = {}
    for _, v in ipairs(tr:header_all("Via")) do kinds[#kinds + 1] = v:match("^SIP/2%.0/(%u+)") end
    assert.same({ "UDP", "SCTP", "TLS", "UNKNOWN", "TCP" }, kinds)
  end)

  it("read Contact: * as no contact", function()
    local m = parse(request { method = "REGISTER", headers = { "Contact: *", "Expires: 0" } })
    assert.is_nil(m.contact)
    assert.equal("*", m:header("Contact"))
  end)

  it("read a response", function()
    local r = parse(RESPONSE)
    assert.equal(180, r.status_code)
    assert.equal("Ringing", r.reason_phrase)
    assert.is_nil(r.method)
    assert.is_nil(r.ruri)
    assert.is_nil(r.max_forwards)
    assert.equal(314159, r.cseq)
    assert.equal("a6c85cf", r.to_tag)
    assert.equal("1928301774", r.from_tag)
    assert.equal("sip:bob@192.0.2.4", tostring(r.contact.uri))
    assert.equal("", r.body)
  end)

  it("read odd reason phrases (RFC 4475 unreason, noreason)", function()
    local u = parse(torture("unreason.dat"))
    assert.equal(200, u.status_code)
    assert.equal("= 2**3 * 5**2 но сто девяносто девять - простое", u.reason_phrase)
    local n = parse(torture("noreason.dat"))
    assert.equal(100, n.status_code)
    assert.equal("", n.reason_phrase)
  end)

  it("keep tvars per message object", function()
    local a, b = parse(request()), parse(request())
    a.tvars.x = 1
    assert.equal(1, a.tvars.x)
    assert.equal(a.tvars, a.tvars)
    assert.is_nil(b.tvars.x)
    assert.are_not.equal(a.tvars, b.tvars)
  end)

  it("give tvars to responses too, and let a script replace the table", function()
    local r = parse(RESPONSE)
    assert.same({}, r.tvars)
    r.tvars.seen = 180
    assert.equal(180, r.tvars.seen)
    local shared = { who = "alice" }
    r.tvars = shared
    assert.equal(shared, r.tvars)
  end)

  it("Message.is tells message objects from other values", function()
    assert.is_true(Message.is(parse(request())))
    assert.is_true(Message.is(parse(RESPONSE)))
    assert.is_false(Message.is({}))
    assert.is_false(Message.is("INVITE"))
    assert.is_false(Message.is(nil))
  end)

  it("refuse assignment to read-only fields", function()
    local m = parse(request())
    raises("read-only", function() m.method = "BYE" end)
    raises("read-only", function() m.call_id = "x" end)
    raises("read-only", function() m.from_tag = "x" end)
    assert.equal("INVITE", m.method)
  end)
end)

describe("header reads", function()
  local RAW = table.concat({
    "INVITE sip:bob@biloxi.example.com SIP/2.0",
    "v: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds",
    "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKnashds8, SIP/2.0/TCP 10.0.0.1;branch=z9hG4bK1",
    "Max-Forwards: 70",
    "t: Bob <sip:bob@biloxi.example.com>",
    "f: Alice <sip:alice@atlanta.example.com>;tag=1928301774",
    "i: a84b4c76e66710@pc33.atlanta.example.com",
    "CSeq: 314159 INVITE",
    'm: "Doe, John" <sip:alice@pc33.atlanta.example.com>, <sip:alice@192.0.2.1>',
    "Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>",
    "Route: <sip:p3.example.com;lr>",
    "Subject: hello",
    " world",
    "Date: Sat, 13 Nov 2010 23:29:00 GMT",
    "k: path, outbound",
    "X-Custom: one, two",
    "c: application/sdp",
    "l: 4",
    "", "v=0\n" }, "\r\n")

  it("find full names by compact form and compact forms by full name", function()
    local m = parse(RAW)
    assert.equal("a84b4c76e66710@pc33.atlanta.example.com", m.call_id)
    assert.equal(m:header("i"), m:header("Call-ID"))
    assert.equal("application/sdp", m:header("Content-Type"))
    assert.equal("4", m:header("content-length"))
    assert.equal("1928301774", m.from_tag)
    assert.equal("SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds", m:header("Via"))
    assert.equal(m:header("v"), m:header("VIA"))
  end)

  it("header_all splits list headers into elements, across lines and in order", function()
    local m = parse(RAW)
    assert.same({ "SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds",
                  "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKnashds8",
                  "SIP/2.0/TCP 10.0.0.1;branch=z9hG4bK1" }, m:header_all("Via"))
    assert.same(m:header_all("Via"), m:header_all("v"))
    assert.same({ "<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>", "<sip:p3.example.com;lr>" },
                m:header_all("Route"))
    assert.same({ "path", "outbound" }, m:header_all("Supported"))
    assert.equal("<sip:p1.example.com;lr>", m:header("Route"))
  end)

  it("header_all keeps commas inside quoted strings and does not split non-list headers", function()
    local m = parse(RAW)
    assert.same({ '"Doe, John" <sip:alice@pc33.atlanta.example.com>', "<sip:alice@192.0.2.1>" },
                m:header_all("Contact"))
    assert.equal("Doe, John", m.contact.display_name)
    assert.same({ "Sat, 13 Nov 2010 23:29:00 GMT" }, m:header_all("Date"))
    assert.same({ "one, two" }, m:header_all("X-Custom"))
  end)

  it("unfold folded values", function()
    local m = parse(RAW)
    assert.equal("hello world", m:header("Subject"))
    local w = parse(torture("wsinv.dat"))
    assert.equal("newfangled value continued newfangled value", w:header("NewFangledHeader"))
    assert.equal("SIP  /   2.0 /UDP 192.0.2.2;branch=390skdjuw", w:header("Via"))
    assert.equal("<sip:services.example.com;lr;unknownwith=value;unknown-no-value>", w:header("Route"))
  end)

  it("wsinv: 3 Vias over a folded Via line and a compact v: line with a comma", function()
    local w = parse(torture("wsinv.dat"))
    local vias = w:header_all("Via")
    assert.equal(3, #vias)
    assert.matches("192%.0%.2%.2;branch=390skdjuw$", vias[1])
    assert.matches("spindle%.example%.com.*z9hG4bK9ikj8$", vias[2])
    assert.matches("192%.168%.255%.111.*z9hG4bK30239$", vias[3])
    assert.equal(";;,,;;,;", w:header("UnknownHeaderWithUnusualValue"))
    assert.equal("", w:header("Subject"))
    assert.is_true(w:has_header("s"))
  end)

  it("has_header is case-insensitive and false for absent headers", function()
    local m = parse(RAW)
    assert.is_true(m:has_header("X-Custom"))
    assert.is_true(m:has_header("x-custom"))
    assert.is_true(m:has_header("Contact"))
    assert.is_false(m:has_header("X-Nope"))
    assert.is_nil(m:header("X-Nope"))
    assert.same({}, m:header_all("X-Nope"))
  end)

  it("raise for a bad header name", function()
    local m = parse(RAW)
    raises("non-empty string", function() m:header(5) end)
    raises("non-empty string", function() m:header_all("") end)
    raises("non-empty string", function() m:has_header(nil) end)
  end)
end)

describe("header edits", function()
  it("set_header replaces every line of that name by one value, in place", function()
    local m = parse(request { headers = { "X-A: 1", "Subject: s", "X-A: 2" } })
    assert.is_true(m:set_header("X-A", "new"))
    assert.equal("new", m:header("X-A"))
    assert.same({ "new" }, m:header_all("X-A"))
    local s = tostring(m)
    assert.matches("X%-A: new\r\nSubject: s\r\n", s)
    assert.is_nil(s:find("X-A: 2", 1, true))
  end)

  it("set_header with a list writes one line per value; a number is a string", function()
    local m = parse(request())
    assert.is_true(m:set_header("X-List", { "a", "b", "c" }))
    assert.same({ "a", "b", "c" }, m:header_all("X-List"))
    assert.matches("X%-List: a\r\nX%-List: b\r\nX%-List: c\r\n", tostring(m))
    m:set_header("X-N", 42)
    assert.equal("42", m:header("X-N"))
  end)

  it("set_header with an empty list deletes; with nil it raises (a nil is a mistake)", function()
    local m = parse(request { headers = { "X-E: 1" } })
    raises("must be a string", function() m:set_header("X-E", nil) end)
    assert.equal("1", m:header("X-E"))
    assert.is_true(m:set_header("X-E", {}))
    assert.is_false(m:has_header("X-E"))
  end)

  it("set_header of a list header splits its value on reads", function()
    local m = parse(request())
    m:set_header("Route", "<sip:a.example.com;lr>, <sip:b.example.com;lr>")
    assert.same({ "<sip:a.example.com;lr>", "<sip:b.example.com;lr>" }, m:header_all("Route"))
  end)

  it("set_header matches names case-insensitively and serialises long values", function()
    local m = parse(request { headers = { "X-Custom: 0" } })
    m:set_header("x-custom", "1")
    m:set_header("X-CUSTOM", "2")
    assert.same({ "2" }, m:header_all("X-Custom"))
    m:set_header("X-Big", string.rep("y", 70000))
    local again = assert(Message.parse(tostring(m)))
    live[#live + 1] = again
    assert.equal(70000, #again:header("X-Big"))
  end)

  it("set_header on a known header is seen by the field reads", function()
    local m = parse(request())
    m:set_header("From", '"New" <sip:new@example.com>;tag=n1')
    assert.equal("n1", m.from_tag)
    assert.equal("New", m.from.display_name)
    m:set_header("To", "<sip:bob@biloxi.example.com>;tag=t9")
    assert.equal("t9", m.to_tag)
    assert.is_true(m:is_in_dialog())
    m:set_header("Max-Forwards", "12")
    assert.equal(12, m.max_forwards)
    m:set_header("Contact", "<sip:c@192.0.2.7>")
    assert.equal("192.0.2.7", m.contact.uri.host)
    m:set_header("Call-ID", "new-call-id")
    assert.equal("new-call-id", m.call_id)
    m.ruri = "sip:x@y.example.com"
    assert.equal("sip:x@y.example.com", tostring(m.ruri))
  end)

  it("set_header('CSeq') is seen by msg.cseq", function()
    local m = parse(request())
    m:set_header("CSeq", "2 INVITE")
    assert.equal("2 INVITE", m:header("CSeq"))
    assert.equal(2, m.cseq)
  end)

  it("set_header by compact name replaces the full-name header and vice versa", function()
    local m = parse(torture("wsinv.dat"))
    m:set_header("f", '"New" <sip:new@example.com>;tag=n1')
    assert.equal("n1", m.from_tag)
    assert.same({ '"New" <sip:new@example.com>;tag=n1' }, m:header_all("From"))
    m:set_header("Contact", "<sip:x@y>")
    assert.same({ "<sip:x@y>" }, m:header_all("m"))
  end)

  it("insert_header goes before the first of that name, append_header after the last", function()
    local m = parse(request { headers = { "X-C: one" } })
    assert.is_true(m:insert_header("X-C", "zero"))
    assert.is_true(m:append_header("X-C", "two"))
    assert.same({ "zero", "one", "two" }, m:header_all("X-C"))
    assert.matches("X%-C: zero\r\nX%-C: one\r\n.*X%-C: two\r\n", tostring(m))
  end)

  it("insert_header of a new name goes to the top, append_header to the end of the head", function()
    local m = parse(request())
    m:insert_header("X-Top", "t")
    m:append_header("X-End", "e")
    local s = tostring(m)
    local first = s:match("^[^\r\n]*\r\n([^\r\n]*)\r\n")
    assert.equal("X-Top: t", first)
    assert.matches("X%-End: e\r\n\r\n$", s)
  end)

  it("insert_header('Via') goes above a compact v: line", function()
    local m = parse(torture("wsinv.dat"))
    m:insert_header("Via", "SIP/2.0/UDP proxy.example.com;branch=z9hG4bKnew")
    local vias = m:header_all("v")
    assert.equal(4, #vias)
    assert.equal("SIP/2.0/UDP proxy.example.com;branch=z9hG4bKnew", vias[1])
  end)

  it("delete_header removes every line (full and compact names) and returns the count", function()
    local m = parse(request { headers = { "X-D: 1", "X-D: 2" } })
    assert.equal(2, m:delete_header("X-D"))
    assert.is_nil(m:header("X-D"))
    assert.is_false(m:has_header("X-D"))
    assert.equal(0, m:delete_header("X-D"))
    local w = parse(torture("wsinv.dat"))
    assert.equal(2, w:delete_header("v")) -- a "Via" line and a "v" line
    assert.same({}, w:header_all("Via"))
  end)

  it("delete_header_top removes the first line only and returns 1, or 0", function()
    local m = parse(request { headers = { "Route: <sip:p1.example.com;lr>", "Route: <sip:p2.example.com;lr>" } })
    assert.equal(1, m:delete_header_top("Route"))
    assert.same({ "<sip:p2.example.com;lr>" }, m:header_all("Route"))
    assert.equal(1, m:delete_header_top("Route"))
    assert.equal(0, m:delete_header_top("Route"))
    assert.is_false(m:has_header("Route"))
  end)

  it("delete_header_top removes the top value of a list header, keeping the rest of its line", function()
    local m = parse(request { headers = { "Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>",
                                          "Route: <sip:p3.example.com;lr>" } })
    assert.equal(1, m:delete_header_top("Route"))
    assert.same({ "<sip:p2.example.com;lr>", "<sip:p3.example.com;lr>" }, m:header_all("Route"))
    local again = parse(tostring(m))
    assert.same({ "<sip:p2.example.com;lr>", "<sip:p3.example.com;lr>" }, again:header_all("Route"))
    assert.equal(1, m:delete_header_top("Route"))
    assert.same({ "<sip:p3.example.com;lr>" }, m:header_all("Route"))
  end)

  it("refuses values that would leave From, To, Via, CSeq, Max-Forwards or Call-ID unparseable", function()
    local m = parse(request())
    assert.has_error(function() m:set_header("From", "garbage <") end)
    assert.has_error(function() m:set_header("To", "\"unterminated <sip:a@b>") end)
    assert.has_error(function() m:insert_header("Via", "SIP/2.0/UDP host;;") end)
    assert.has_error(function() m:set_header("CSeq", "x INVITE") end)
    assert.has_error(function() m:set_header("Max-Forwards", "300") end)
    assert.has_error(function() m:set_header("Call-ID", "a b") end)
    assert.has_error(function() m:append_header("Route", "sip:a@b?x=y") end)
    assert.equal("Alice", m.from.display_name)
    assert.is_true(m:set_header("From", "<sip:carol@example.com>;tag=9"))
    assert.equal("carol", m.from.uri.user)
    assert.is_true(m:set_header("CSeq", "2 INVITE"))
    assert.equal(2, m.cseq)
  end)

  it("reads see edits at once, and the edited message serialises and re-parses", function()
    local m = parse(torture("wsinv.dat"))
    m:insert_header("Via", "SIP/2.0/UDP proxy.example.com;branch=z9hG4bKnew")
    m:append_header("Route", "<sip:last.example.com;lr>")
    m:set_header("NewFangledHeader", "x")
    m:delete_header("UnknownHeaderWithUnusualValue")
    m.ruri = "sip:carol@chicago.example.com"
    local s = tostring(m)
    assert.matches("^INVITE sip:carol@chicago%.example%.com SIP/2%.0\r\n", s)
    local again = assert(Message.parse(s))
    live[#live + 1] = again
    assert.equal(4, #again:header_all("Via"))
    assert.equal("SIP/2.0/UDP proxy.example.com;branch=z9hG4bKnew", again:header("Via"))
    assert.same({ "<sip:services.example.com;lr;unknownwith=value;unknown-no-value>",
                  "<sip:last.example.com;lr>" }, again:header_all("Route"))
    assert.equal("x", again:header("NewFangledHeader"))
    assert.is_false(again:has_header("UnknownHeaderWithUnusualValue"))
    assert.equal("sip:carol@chicago.example.com", tostring(again.ruri))
    assert.equal(m.body, again.body)
    assert.equal(68, again.max_forwards)
  end)

  it("tostring keeps untouched lines byte-exact", function()
    local raw = torture("wsinv.dat")
    local m = parse(raw)
    assert.equal(raw, tostring(m))
  end)

  it("raise for CR/LF/NUL in a value (header injection) and for bad names", function()
    local m = parse(request())
    raises("CR, LF or NUL", function() m:set_header("X-A", "a\r\nEvil: 1") end)
    raises("CR, LF or NUL", function() m:set_header("X-A", { "ok", "a\nb" }) end)
    raises("CR, LF or NUL", function() m:insert_header("X-A", "a\rb") end)
    raises("CR, LF or NUL", function() m:append_header("X-A", "a\0b") end)
    raises("invalid header name", function() m:set_header("Bad Name", "a") end)
    raises("invalid header name", function() m:append_header("X-A:", "a") end)
    raises("non-empty string", function() m:set_header("", "a") end)
    raises("must be a string", function() m:insert_header("X-A", {}) end)
    raises("must be a string", function() m:set_header("X-A", nil) end)
    assert.is_false(m:has_header("X-A"))
    assert.is_nil(tostring(m):find("Evil", 1, true))
  end)
end)

describe("Request-URI assignment", function()
  it("takes a string", function()
    local m = parse(request())
    m.ruri = "sip:carol@chicago.example.com;transport=tcp"
    assert.equal("carol", m.ruri.user)
    assert.equal("tcp", m.ruri:param("transport"))
    assert.matches("^INVITE sip:carol@chicago%.example%.com;transport=tcp SIP/2%.0\r\n", tostring(m))
  end)

  it("takes a Uri", function()
    local m = parse(request())
    m.ruri = Uri.parse("sips:dave@[2001:db8::5]:5061")
    assert.equal("2001:db8::5", m.ruri.host)
    assert.equal(5061, m.ruri.port)
    m.ruri = Uri.new { host = "192.0.2.9", params = { { "lr" } } }
    assert.equal("sip:192.0.2.9;lr", tostring(m.ruri))
  end)

  it("raises for an invalid URI and leaves the R-URI alone", function()
    local m = parse(request())
    raises("invalid URI", function() m.ruri = "not a uri" end)
    raises("invalid URI", function() m.ruri = "sip:a@b\r\nX: y" end)
    raises("invalid URI", function() m.ruri = nil end)
    assert.equal("sip:bob@biloxi.example.com", tostring(m.ruri))
  end)

  it("raises on a response", function()
    local r = parse(RESPONSE)
    raises("no Request-URI", function() r.ruri = "sip:x@y" end)
  end)
end)

describe("check_max_forwards", function()
  it("answers 483 and returns false at 0 (RFC 4475 zeromf)", function()
    local m = parse(torture("zeromf.dat"))
    assert.is_false(m:check_max_forwards(70))
    local status = split_response(assert(m:last_reply()))
    assert.equal("SIP/2.0 483 Too Many Hops", status)
  end)

  it("clamps a higher value to n", function()
    local m = parse(request { mf = 100 })
    assert.is_true(m:check_max_forwards(70))
    assert.equal(70, m.max_forwards)
    assert.equal("70", m:header("Max-Forwards"))
    assert.is_nil(m:last_reply())
  end)

  it("leaves a lower value alone", function()
    local m = parse(request { mf = 5 })
    assert.is_true(m:check_max_forwards(70))
    assert.equal(5, m.max_forwards)
  end)

  it("adds Max-Forwards when absent (RFC 3261 §16.6 step 3; RFC 4475 inv2543)", function()
    local m = parse(request { mf = false })
    assert.is_true(m:check_max_forwards(70))
    assert.equal(70, m.max_forwards)
    local o = parse(torture("inv2543.dat"))
    assert.is_true(o:check_max_forwards(70))
    assert.matches("\r\nMax%-Forwards: 70\r\n", tostring(o))
  end)

  it("reads wsinv's 0068 as 68 and clamps it", function()
    local m = parse(torture("wsinv.dat"))
    assert.is_true(m:check_max_forwards(10))
    assert.equal(10, m.max_forwards)
  end)

  it("refuses an ACK at 0 without answering it (an ACK has no answer)", function()
    local m = parse(request { method = "ACK", mf = 0, totag = "x" })
    assert.is_false(m:check_max_forwards(70))
    assert.is_nil(m:last_reply())
  end)

  it("raises for n outside 1..255", function()
    local m = parse(request())
    raises("1..255", function() m:check_max_forwards(0) end)
    raises("1..255", function() m:check_max_forwards(256) end)
    raises("1..255", function() m:check_max_forwards() end)
  end)
end)

describe("dialog predicates", function()
  it("an INVITE without To tag is initial and dialog-forming", function()
    local m = parse(request())
    assert.is_true(m:is_initial())
    assert.is_false(m:is_in_dialog())
    assert.is_true(m:is_dialog_forming())
  end)

  it("a request with a To tag is in-dialog", function()
    local m = parse(request { totag = "x" })
    assert.is_false(m:is_initial())
    assert.is_true(m:is_in_dialog())
    assert.is_false(m:is_dialog_forming())
  end)

  it("SUBSCRIBE and REFER form dialogs, OPTIONS and REGISTER do not", function()
    assert.is_true(parse(request { method = "SUBSCRIBE", headers = { "Event: presence" } }):is_dialog_forming())
    assert.is_true(parse(request { method = "REFER", headers = { "Refer-To: <sip:c@d>" } }):is_dialog_forming())
    assert.is_false(parse(request { method = "OPTIONS" }):is_dialog_forming())
    assert.is_false(parse(request { method = "REGISTER" }):is_dialog_forming())
  end)
end)

describe("loose_route", function()
  after_each(function() C.lapi_clear_local() end)

  it("leaves a Route that does not point to us and returns false", function()
    local m = parse(request { headers = { "Route: <sip:p1.example.com;lr>" } })
    assert.is_false(m:loose_route())
    assert.same({ "<sip:p1.example.com;lr>" }, m:header_all("Route"))
    assert.equal("sip:bob@biloxi.example.com", tostring(m.ruri))
  end)

  it("returns false without Route", function()
    local m = parse(request())
    assert.is_false(m:loose_route())
    assert.is_false(m:has_header("Route"))
  end)

  it("removes a top Route naming us and returns true", function()
    C.lapi_add_local_address("192.0.2.100", 5060)
    local m = parse(request { headers = { "Route: <sip:192.0.2.100;lr>, <sip:p2.example.com;lr>" } })
    assert.is_true(m:loose_route())
    assert.same({ "<sip:p2.example.com;lr>" }, m:header_all("Route"))
    assert.equal("sip:bob@biloxi.example.com", tostring(m.ruri))
  end)

  it("removes two top Routes naming us (double Record-Route)", function()
    C.lapi_add_local_address("192.0.2.100", 5060)
    local m = parse(request { headers = { "Route: <sip:192.0.2.100;lr>",
                                          "Route: <sip:192.0.2.100:5060;transport=tcp;lr>",
                                          "Route: <sip:p3.example.com;lr>" } })
    assert.is_true(m:loose_route())
    assert.same({ "<sip:p3.example.com;lr>" }, m:header_all("Route"))
  end)

  it("does not take a Route on another port of ours", function()
    C.lapi_add_local_address("192.0.2.100", 5060)
    local m = parse(request { headers = { "Route: <sip:192.0.2.100:5070;lr>" } })
    assert.is_false(m:loose_route())
    assert.equal(1, #m:header_all("Route"))
  end)

  it("a strict router's request: the last Route becomes the R-URI (RFC 3261 §16.4)", function()
    C.lapi_add_local_address("192.0.2.100", 5060)
    local m = parse(request { ruri = "sip:192.0.2.100;lr",
                              headers = { "Route: <sip:p2.example.com;lr>", "Route: <sip:bob@final.example.com>" } })
    -- true: the request goes on (to p2.example.com), routed by lunasip
    assert.is_true(m:loose_route())
    assert.equal("sip:bob@final.example.com", tostring(m.ruri))
    assert.same({ "<sip:p2.example.com;lr>" }, m:header_all("Route"))
  end)

  it("a strict router's request with only the remote target left in Route", function()
    C.lapi_add_local_address("192.0.2.100", 5060)
    local m = parse(request { ruri = "sip:192.0.2.100;lr", headers = { "Route: <sip:bob@192.0.2.4:5062>" } })
    assert.is_true(m:loose_route())
    assert.equal("sip:bob@192.0.2.4:5062", tostring(m.ruri))
    assert.is_false(m:has_header("Route"))
  end)

  it("a strict router's request after a double Record-Route: the second Route of ours goes too", function()
    C.lapi_add_local_address("192.0.2.100", 5060)
    C.lapi_add_local_address("192.0.2.100", 5062)
    local m = parse(request { ruri = "sip:192.0.2.100;lr",
                              headers = { "Route: <sip:192.0.2.100:5062;transport=tcp;lr>, <sip:p2.example.com;lr>",
                                          "Route: <sip:bob@final.example.com>" } })
    assert.is_true(m:loose_route())
    assert.equal("sip:bob@final.example.com", tostring(m.ruri))
    assert.same({ "<sip:p2.example.com;lr>" }, m:header_all("Route"))
  end)

  it("an R-URI of ours without ;lr is a request to us, not a strict router's", function()
    C.lapi_add_local_address("192.0.2.100", 5060)
    local m = parse(request { ruri = "sip:alice@192.0.2.100", headers = { "Route: <sip:p2.example.com;lr>" } })
    assert.is_false(m:loose_route())
    assert.equal("sip:alice@192.0.2.100", tostring(m.ruri))
    assert.same({ "<sip:p2.example.com;lr>" }, m:header_all("Route"))
  end)

  it("removes the only Route when it is ours: the R-URI is the next hop", function()
    C.lapi_add_local_address("192.0.2.100", 5060)
    local m = parse(request { totag = "a", headers = { "Route: <sip:192.0.2.100;lr>" } })
    assert.is_true(m:loose_route())
    assert.is_false(m:has_header("Route"))
    assert.equal("sip:bob@biloxi.example.com", tostring(m.ruri))
  end)

  it("removes at most two Routes of ours (one visit: a double Record-Route)", function()
    C.lapi_add_local_address("192.0.2.100", 5060)
    local m = parse(request { headers = { "Route: <sip:192.0.2.100;lr>, <sip:192.0.2.100;transport=tcp;lr>",
                                          "Route: <sip:192.0.2.100;lr;x=spiral>" } })
    assert.is_true(m:loose_route())
    assert.same({ "<sip:192.0.2.100;lr;x=spiral>" }, m:header_all("Route"))
  end)

  it("leaves a Route of ours that follows one of someone else", function()
    C.lapi_add_local_address("192.0.2.100", 5060)
    local m = parse(request { headers = { "Route: <sip:p1.example.com;lr>, <sip:192.0.2.100;lr>" } })
    assert.is_false(m:loose_route())
    assert.same({ "<sip:p1.example.com;lr>", "<sip:192.0.2.100;lr>" }, m:header_all("Route"))
  end)

  it("destination_myself compares the R-URI with our addresses and domains", function()
    C.lapi_add_local_address("192.0.2.100", 5060)
    C.lapi_add_local_domain("example.org")
    assert.is_true(parse(request { ruri = "sip:192.0.2.100" }):destination_myself())
    assert.is_true(parse(request { ruri = "sip:alice@EXAMPLE.org" }):destination_myself())
    assert.is_false(parse(request { ruri = "sip:192.0.2.100:5070" }):destination_myself())
    assert.is_false(parse(request()):destination_myself())
  end)
end)

describe("incoming_outbound_requested (RFC 5626 §5.1)", function()
  local contact = 'Contact: <sip:alice@192.0.2.1>;reg-id=1;+sip.instance="<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>"'

  it("is true for a REGISTER with one Via, Supported: outbound, reg-id and +sip.instance", function()
    local m = parse(request { method = "REGISTER", headers = { "Supported: path, outbound", contact } })
    assert.is_true(m:incoming_outbound_requested())
  end)

  it("is false with two Vias (not the first hop)", function()
    local m = parse(request { method = "REGISTER", vias = { "SIP/2.0/UDP x.example.com;branch=z9hG4bKx" },
                              headers = { "Supported: outbound", contact } })
    assert.is_false(m:incoming_outbound_requested())
  end)

  it("is false without Supported: outbound, or without reg-id", function()
    assert.is_false(parse(request { method = "REGISTER", headers = { "Supported: path", contact } })
      :incoming_outbound_requested())
    assert.is_false(parse(request { method = "REGISTER", headers = { "Supported: outbound",
      'Contact: <sip:alice@192.0.2.1>;+sip.instance="<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>"' } })
      :incoming_outbound_requested())
  end)

  it("for other methods looks for ;ob in the Contact URI (compact k: works)", function()
    assert.is_true(parse(request { headers = { "k: outbound", "Contact: <sip:alice@192.0.2.1;ob>" } })
      :incoming_outbound_requested())
    assert.is_false(parse(request { headers = { "k: outbound", "Contact: <sip:alice@192.0.2.1>;ob" } })
      :incoming_outbound_requested())
  end)

  it("is false in a dialog, with two Contacts, and for a response (src/flow.h)", function()
    assert.is_false(parse(request { totag = "abc", headers = { "Contact: <sip:alice@192.0.2.1;ob>" } })
      :incoming_outbound_requested())
    assert.is_false(parse(request { headers = { "Contact: <sip:alice@192.0.2.1;ob>, <sip:alice@192.0.2.2;ob>" } })
      :incoming_outbound_requested())
    assert.is_false(parse(RESPONSE):incoming_outbound_requested())
  end)
end)

describe("reply", function()
  it("writes the status line and copies Via, From, To, Call-ID, CSeq", function()
    local m = parse(request { vias = { "SIP/2.0/TCP 10.0.0.1;branch=z9hG4bK1, SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK2" } })
    assert.is_true(m:reply(486, "Busy Here"))
    local status, hdrs, body = split_response(assert(m:last_reply()))
    assert.equal("SIP/2.0 486 Busy Here", status)
    local vias = values(hdrs, "Via")
    assert.equal(2, #vias)
    assert.matches("^SIP/2%.0/UDP pc33%.atlanta%.example%.com;branch=z9hG4bK776asdhds", vias[1])
    assert.equal("SIP/2.0/TCP 10.0.0.1;branch=z9hG4bK1, SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK2", vias[2])
    assert.same({ "Alice <sip:alice@atlanta.example.com>;tag=1928301774" }, values(hdrs, "From"))
    assert.matches("^Bob <sip:bob@biloxi%.example%.com>;tag=[%w%-%.!%%%*_%+`'~]+$", values(hdrs, "To")[1])
    assert.same({ "a84b4c76e66710@pc33.atlanta.example.com" }, values(hdrs, "Call-ID"))
    assert.same({ "314159 INVITE" }, values(hdrs, "CSeq"))
    assert.same({ "0" }, values(hdrs, "Content-Length"))
    assert.equal("", body)
  end)

  it("uses the standard reason phrase when none is given", function()
    local m = parse(request())
    m:reply(404)
    assert.equal("SIP/2.0 404 Not Found", (split_response(m:last_reply())))
  end)

  it("adds no To tag to a 100 Trying, and copies Timestamp into it (RFC 3261 §8.2.6.1)", function()
    local m = parse(request { headers = { "Timestamp: 54.2" } })
    assert.is_true(m:reply(100))
    local status, hdrs = split_response(m:last_reply())
    assert.equal("SIP/2.0 100 Trying", status)
    assert.same({ "Bob <sip:bob@biloxi.example.com>" }, values(hdrs, "To"))
    assert.same({ "54.2" }, values(hdrs, "Timestamp"))
  end)

  it("uses one stable To tag for every reply to the same request", function()
    local m = parse(request())
    m:reply(180)
    local tag1 = NameAddr.parse(values(select(2, split_response(m:last_reply())), "To")[1]).tag
    m:reply(183)
    local tag2 = NameAddr.parse(values(select(2, split_response(m:last_reply())), "To")[1]).tag
    m:reply(486)
    local tag3 = NameAddr.parse(values(select(2, split_response(m:last_reply())), "To")[1]).tag
    assert.is_string(tag1)
    assert.equal(tag1, tag2)
    assert.equal(tag1, tag3)
    -- a retransmission of the same request gets the same tag; another request another one
    local again = parse(request())
    again:reply(486)
    assert.equal(tag1, NameAddr.parse(values(select(2, split_response(again:last_reply())), "To")[1]).tag)
    local other = parse(request { call_id = "other-call-id" })
    other:reply(486)
    assert.are_not.equal(tag1, NameAddr.parse(values(select(2, split_response(other:last_reply())), "To")[1]).tag)
  end)

  it("keeps an existing To tag", function()
    local m = parse(request { totag = "keepme" })
    m:reply(200)
    local _, hdrs = split_response(m:last_reply())
    assert.same({ "Bob <sip:bob@biloxi.example.com>;tag=keepme" }, values(hdrs, "To"))
  end)

  it("takes headers as a list of 'Name: value' lines, and a body with Content-Length", function()
    local m = parse(request())
    assert.is_true(m:reply(200, "OK", { "Contact: <sip:b@192.0.2.4>", "Content-Type: text/plain",
                                        "X-Foo:bar" }, "hello"))
    local status, hdrs, body = split_response(m:last_reply())
    assert.equal("SIP/2.0 200 OK", status)
    assert.same({ "<sip:b@192.0.2.4>" }, values(hdrs, "Contact"))
    assert.same({ "text/plain" }, values(hdrs, "Content-Type"))
    assert.same({ "bar" }, values(hdrs, "X-Foo"))
    assert.same({ "5" }, values(hdrs, "Content-Length"))
    assert.equal("hello", body)
  end)

  it("takes headers as a map of name to value or list of values", function()
    local m = parse(request())
    assert.is_true(m:reply(404, nil, { ["X-A"] = { "1", "2" }, ["X-B"] = "3", ["X-N"] = 7 }))
    local _, hdrs = split_response(m:last_reply())
    assert.same({ "1", "2" }, values(hdrs, "X-A"))
    assert.same({ "3" }, values(hdrs, "X-B"))
    assert.same({ "7" }, values(hdrs, "X-N"))
  end)

  it("a second final reply answers nil, 'already answered'; provisionals may repeat", function()
    local m = parse(request())
    assert.is_true(m:reply(180))
    assert.is_true(m:reply(180))
    assert.is_true(m:reply(200))
    local first = m:last_reply()
    assert.same({ nil, "already answered" }, { m:reply(486) })
    assert.same({ nil, "already answered" }, { m:reply(183) })
    assert.equal(first, m:last_reply())
  end)

  it("refuses to answer an ACK or a response, with an error at the caller", function()
    local ack = parse(request { method = "ACK" })
    raises("cannot answer", function() ack:reply(200) end)
    local r = parse(RESPONSE)
    raises("cannot answer", function() r:reply(200) end)
  end)

  it("raises for a bad status code or argument types", function()
    local m = parse(request())
    raises("100..699", function() m:reply(99) end)
    raises("100..699", function() m:reply(700) end)
    raises("100..699", function() m:reply(200.5) end)
    raises("100..699", function() m:reply("200") end)
    raises("reason must be a string", function() m:reply(200, 5) end)
    raises("headers must be a table", function() m:reply(200, nil, "X-A: 1") end)
    raises("body must be a string", function() m:reply(200, nil, nil, 5) end)
    assert.is_nil(m:last_reply())
  end)

  it("raises for CR/LF in a reason or a header (header injection)", function()
    local m = parse(request())
    raises("CR, LF or NUL", function() m:reply(200, "OK\r\nX-Evil: 1") end)
    raises("CR, LF or NUL", function() m:reply(200, nil, { "X-A: 1\r\nX-Evil: 1" }) end)
    raises("CR, LF or NUL", function() m:reply(200, nil, { ["X-A"] = "1\r\nX-Evil: 1" }) end)
    raises("CR, LF or NUL", function() m:reply(200, nil, { ["X-A"] = { "ok", "1\nX-Evil: 1" } }) end)
    raises("not 'Name: value'", function() m:reply(200, nil, { "X-A 1" }) end)
    raises("bad header name", function() m:reply(200, nil, { ["Bad Name"] = "1" }) end)
    assert.is_nil(m:last_reply())
    assert.is_true(m:reply(200))
    assert.is_nil(m:last_reply():find("Evil", 1, true))
  end)

  it("refuses headers the reply writes itself (Via, From, To, Call-ID, CSeq, Content-Length)", function()
    local m = parse(request())
    raises("invalid headers", function() m:reply(200, nil, { "Via: SIP/2.0/UDP evil.example.com" }) end)
    raises("invalid headers", function() m:reply(200, nil, { "Content-Length: 5" }) end)
    raises("invalid headers", function() m:reply(200, nil, { "i: other" }) end)
    assert.is_nil(m:last_reply())
  end)

  it("to a parsed message (no source address) writes a top Via without an empty received=", function()
    local m = parse(request())
    m:reply(200)
    local _, hdrs = split_response(m:last_reply())
    local top = values(hdrs, "Via")[1]
    assert.is_nil(top:find("received=;", 1, true), "empty received in top Via: " .. top)
    assert.is_nil(top:find("received=$"), "empty received in top Via: " .. top)
    assert.is_nil(top:find("rport=0", 1, true), "rport=0 in top Via: " .. top)
  end)

  it("produces a response that parses, with the request's Call-ID and CSeq", function()
    local m = parse(request())
    m:reply(486, "Busy Here", { "Retry-After: 30" })
    local r, err = Message.parse(m:last_reply())
    assert.is_truthy(r, err)
    if r then
      live[#live + 1] = r
      assert.equal(486, r.status_code)
      assert.equal("Busy Here", r.reason_phrase)
      assert.equal(m.call_id, r.call_id)
      assert.equal(314159, r.cseq)
      assert.is_string(r.to_tag)
      assert.equal("30", r:header("Retry-After"))
    end
  end)

  it("answers wsinv and copies its folded values unfolded", function()
    local m = parse(torture("wsinv.dat"))
    assert.is_true(m:reply(404))
    local status, hdrs = split_response(m:last_reply())
    assert.equal("SIP/2.0 404 Not Found", status)
    assert.same({ "wsinv.ndaksdj@192.0.2.1" }, values(hdrs, "Call-ID"))
    assert.matches("tag%s*=%s*1918181833n", values(hdrs, "To")[1])
    assert.equal(2, #values(hdrs, "Via"))
  end)
end)

describe("after release", function()
  it("accessors answer nil and methods nil, 'gone'", function()
    local m = assert(Message.parse(request({ headers = { "Contact: <sip:a@b>" } })))
    m:release()
    assert.is_nil(m.method)
    assert.is_nil(m.call_id)
    assert.is_nil(m.ruri)
    assert.is_nil(m.from)
    assert.is_nil(m.cseq)
    assert.is_nil(m.contact)
    assert.same({ nil, "gone" }, { m:header("Via") })
    assert.same({ nil, "gone" }, { m:header_all("Via") })
    assert.same({ nil, "gone" }, { m:has_header("Via") })
    assert.same({ nil, "gone" }, { m:reply(200) })
    assert.same({ nil, "gone" }, { m:set_header("X-A", "1") })
    assert.same({ nil, "gone" }, { m:insert_header("X-A", "1") })
    assert.same({ nil, "gone" }, { m:append_header("X-A", "1") })
    assert.same({ nil, "gone" }, { m:delete_header("X-A") })
    assert.same({ nil, "gone" }, { m:delete_header_top("X-A") })
    assert.same({ nil, "gone" }, { m:is_initial() })
    assert.same({ nil, "gone" }, { m:is_in_dialog() })
    assert.same({ nil, "gone" }, { m:is_dialog_forming() })
    assert.same({ nil, "gone" }, { m:check_max_forwards(70) })
    assert.same({ nil, "gone" }, { m:loose_route() })
    assert.same({ nil, "gone" }, { m:incoming_outbound_requested() })
    assert.same({ nil, "gone" }, { m:destination_myself() })
    assert.same({ nil, "gone" }, { m:fix_nat() })
    assert.is_nil(m:last_reply())
    assert.equal("(gone message)", tostring(m))
  end)

  it("a stale handle does not reach the message that reuses its slot", function()
    local old = assert(Message.parse(request({ call_id = "first" })))
    old:release()
    local new = parse(request({ call_id = "second" }))
    assert.is_nil(old.call_id)
    assert.equal("second", new.call_id)
    old:release() -- a second release is harmless
    assert.equal("second", new.call_id)
  end)

  it("the reply stays readable until release", function()
    local m = assert(Message.parse(request()))
    m:reply(404)
    assert.is_string(m:last_reply())
    m:release()
    assert.is_nil(m:last_reply())
  end)
end)
