-- lunasip.Uri and lunasip.NameAddr (lua/lunasip/uri.lua): parsing through the C grammar
-- (RFC 3261 §19.1, §20.10, §25.1; RFC 3966; RFC 5118), building, params, serialisation.
local lunasip = require "lunasip"
local Uri, NameAddr = lunasip.Uri, lunasip.NameAddr

-- Asserts that f raises an error pointing at the spec line that defined f (misuse errors
-- are raised with level 2) and whose message contains text.
local function raises(text, f)
  local ok, err = pcall(f)
  assert.is_false(ok, "expected an error")
  err = tostring(err)
  local line = debug.getinfo(f, "S").linedefined
  assert.matches("uri_spec%.lua:" .. line .. ": ", err)
  assert.truthy(err:find(text, 1, true), "error '" .. err .. "' lacks '" .. text .. "'")
end

-- Params as "name=value" / "name" strings, in order.
local function plist(obj)
  local out = {}
  for _, p in ipairs(obj.params) do out[#out + 1] = p[2] == true and p[1] or (p[1] .. "=" .. p[2]) end
  return out
end

describe("Uri.parse", function()
  it("reads every part of a sip URI", function()
    local u = assert(Uri.parse("sip:alice@[2001:db8::1]:5070;transport=tcp;lr"))
    assert.equal("sip", u.scheme)
    assert.equal("alice", u.user)
    assert.equal("2001:db8::1", u.host)
    assert.equal("ipv6", u.host_type)
    assert.equal(5070, u.port)
    assert.equal("tcp", u:param("transport"))
    assert.is_true(u:param("lr"))
    assert.equal("sip:alice@[2001:db8::1]:5070;transport=tcp;lr", tostring(u))
  end)

  it("reads a sips URI with password, port, params and headers", function()
    local u = assert(Uri.parse("sips:bob:secret@10.0.0.1:5061;transport=tls?subject=hi&x=y"))
    assert.equal("sips", u.scheme)
    assert.equal("bob", u.user)
    assert.equal("secret", u.password)
    assert.equal("10.0.0.1", u.host)
    assert.equal("ipv4", u.host_type)
    assert.equal(5061, u.port)
    assert.same({ "transport=tls" }, plist(u))
    assert.equal("subject=hi&x=y", u.headers)
    assert.equal("sips:bob:secret@10.0.0.1:5061;transport=tls?subject=hi&x=y", tostring(u))
  end)

  it("reads a host-only URI: no user, no port", function()
    local u = assert(Uri.parse("sip:example.com"))
    assert.is_nil(u.user)
    assert.is_nil(u.port)
    assert.equal("domain", u.host_type)
    assert.same({}, u.params)
  end)

  it("keeps port 0 and 65535, refuses 65536 and a non-numeric port", function()
    assert.equal(0, Uri.parse("sip:example.com:0").port)
    assert.equal(65535, Uri.parse("sip:example.com:65535").port)
    assert.is_nil(Uri.parse("sip:example.com:65536"))
    assert.is_nil(Uri.parse("sip:a@b:abc"))
  end)

  it("reads tel URIs (RFC 3966) with the number as user", function()
    local u = assert(Uri.parse("tel:+1-201-555-0123;phone-context=example.com"))
    assert.equal("tel", u.scheme)
    assert.equal("+1-201-555-0123", u.user)
    assert.is_nil(u.host)
    assert.equal("example.com", u:param("phone-context"))
    assert.equal("tel:+1-201-555-0123;phone-context=example.com", tostring(u))
    assert.equal("tel:+12015550123", tostring(Uri.parse("tel:+12015550123")))
    assert.is_nil(Uri.parse("tel:"))
  end)

  it("keeps unknown schemes as scheme + opaque (RFC 4475 unkscm, novelsc, unksm2)", function()
    local u = assert(Uri.parse("nobodyKnowsThisScheme:totallyopaquecontent"))
    assert.equal("nobodyknowsthisscheme", u.scheme) -- schemes are case-insensitive
    assert.equal("totallyopaquecontent", u.opaque)
    assert.same({}, u.params)
    assert.is_nil(u:param("anything"))
    local s = assert(Uri.parse("soap.beep://192.0.2.103:3002"))
    assert.equal("soap.beep", s.scheme)
    assert.equal("//192.0.2.103:3002", s.opaque)
    assert.equal("soap.beep://192.0.2.103:3002", tostring(s))
    assert.equal("isbn:2983792873", tostring(Uri.parse("isbn:2983792873")))
    assert.equal("mailto:a@b.c", tostring(Uri.parse("mailto:a@b.c")))
  end)

  it("lower-cases the sip scheme but keeps user, host and param case", function()
    local u = assert(Uri.parse("SIP:Alice@Example.COM;Transport=UDP;LR"))
    assert.equal("sip", u.scheme)
    assert.equal("Alice", u.user)
    assert.equal("Example.COM", u.host)
    assert.equal("sip:Alice@Example.COM;Transport=UDP;LR", tostring(u))
  end)

  it("keeps escapes and a semicolon-laden user part as written (RFC 4475 esc01, semiuri)", function()
    local u = assert(Uri.parse("sip:%61lice@atlanta.com;transport=TCP"))
    assert.equal("%61lice", u.user)
    local s = assert(Uri.parse("sip:user;par=u%40example.net@example.com"))
    assert.equal("user;par=u%40example.net", s.user)
    assert.equal("example.com", s.host)
    assert.same({}, s.params)
    assert.equal("sip:user;par=u%40example.net@example.com", tostring(s))
  end)

  describe("IPv6 references (RFC 5118)", function()
    it("reads [addr] and [addr]:port (§4.4)", function()
      local u = assert(Uri.parse("sip:[2001:db8::10]:5070"))
      assert.equal("2001:db8::10", u.host)
      assert.equal(5070, u.port)
      assert.equal("sip:[2001:db8::10]:5070", tostring(u))
    end)

    it("reads [2001:db8::10:5070] as one address without a port (§4.3)", function()
      local u = assert(Uri.parse("sip:[2001:db8::10:5070]"))
      assert.equal("2001:db8::10:5070", u.host)
      assert.is_nil(u.port)
    end)

    it("refuses an IPv6 address without brackets (§4.2)", function()
      local u, err = Uri.parse("sip:2001:db8::10")
      assert.is_nil(u)
      assert.is_string(err)
    end)

    it("tolerates both the 3-colon and 2-colon forms (§4.10)", function()
      assert.equal("2001:db8:::192.0.2.1", Uri.parse("sip:[2001:db8:::192.0.2.1]").host)
      assert.equal("2001:db8::192.0.2.1", Uri.parse("sip:[2001:db8::192.0.2.1]").host)
    end)

    it("reads an IPv4-mapped address (§4.9)", function()
      local u = assert(Uri.parse("sip:[::ffff:192.0.2.2]"))
      assert.equal("::ffff:192.0.2.2", u.host)
      assert.equal("ipv6", u.host_type)
    end)

    it("refuses an unclosed bracket", function()
      assert.is_nil(Uri.parse("sip:a@[::1"))
    end)
  end)

  it("answers nil, err for invalid input and never raises", function()
    local bad = { "", "sip:", "sip:@example.com", "sip:a b@c", "sip:a@b;", "foo", "1sip:x",
                  "sip:a@b\r\nX: y", "sip:alice@atlanta.com?", "sip:a@b\0c", "<sip:a@b>",
                  " sip:a@b", string.rep("a", 70000) }
    for _, s in ipairs(bad) do
      local ok, u, err = pcall(Uri.parse, s)
      assert.is_true(ok, "raised on " .. s)
      assert.is_nil(u, "accepted " .. s)
      assert.is_string(err)
    end
    for _, v in ipairs { 42, true, {} } do
      local u, err = Uri.parse(v)
      assert.is_nil(u)
      assert.equal("not a string", err)
    end
    assert.same({ nil, "not a string" }, { Uri.parse(nil) })
  end)

  it("round-trips through tostring", function()
    for _, s in ipairs {
      "sip:alice@example.com", "sip:a@b;ttl=1;maddr=239.0.0.1;method=INVITE",
      "sip:a@b;x=a/b:c&d+$", "sip:a@b;x=[::1]", "sips:x@[::1]:5061;transport=tls?h=v",
      "tel:+1;ext=22", "sip:a@b;lr;lr=1",
    } do
      local u = assert(Uri.parse(s), s)
      assert.equal(s, tostring(u))
      assert.equal(s, tostring(Uri.parse(tostring(u))))
    end
  end)
end)

describe("Uri params", function()
  it("looks params up case-insensitively", function()
    local u = assert(Uri.parse("sip:a@b;Transport=TCP;LR"))
    assert.equal("TCP", u:param("transport"))
    assert.equal("TCP", u:param("TRANSPORT"))
    assert.is_true(u:param("lr"))
    assert.is_true(u:has_param("Lr"))
    assert.is_nil(u:param("x"))
    assert.is_false(u:has_param("x"))
  end)

  it("matches escaped param names with their plain form (RFC 3261 §19.1.4, RFC 4475 esc01)", function()
    local u = assert(Uri.parse("sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31"))
    assert.is_true(u:param("lr"))
    assert.is_true(u:has_param("LR"))
    assert.equal("v%61lue%25%34%31", u:param("name")) -- values stay as written
    assert.equal("v%61lue%25%34%31", u:param("n%61me"))
    u:del_param("lr")
    assert.equal("sip:cal%6Cer@host5.example.net;n%61me=v%61lue%25%34%31", tostring(u))
    u:set_param("NAME", "x")
    assert.equal("sip:cal%6Cer@host5.example.net;n%61me=x", tostring(u))
  end)

  it("set_param replaces in place (case-insensitively) or appends", function()
    local u = assert(Uri.parse("sip:a@b;Transport=TCP;lr"))
    assert.equal(u, u:set_param("TRANSPORT", "udp"))
    assert.equal("sip:a@b;Transport=udp;lr", tostring(u))
    u:set_param("maddr", "[2001:db8::1]")
    assert.equal("sip:a@b;Transport=udp;lr;maddr=[2001:db8::1]", tostring(u))
    u:set_param("ob")
    assert.is_true(u:param("ob"))
    assert.equal("sip:a@b;Transport=udp;lr;maddr=[2001:db8::1];ob", tostring(u))
    assert.equal(tostring(u), tostring(Uri.parse(tostring(u))))
  end)

  it("del_param removes every param of that name", function()
    local u = assert(Uri.parse("sip:a@b;lr;x=1;LR=2"))
    assert.equal(u, u:del_param("lr"))
    assert.equal("sip:a@b;x=1", tostring(u))
    u:del_param("nope")
    assert.equal("sip:a@b;x=1", tostring(u))
  end)

  it("set_param refuses bad names and values with an error at the caller", function()
    local u = assert(Uri.parse("sip:a@b"))
    raises("bad parameter name", function() u:set_param("x y", "a") end)
    raises("bad parameter name", function() u:set_param(nil, "a") end)
    raises("CR, LF and NUL", function() u:set_param("x", "a\r\nb") end)
    raises("expected a string or true", function() u:set_param("x", 5) end)
    assert.equal("sip:a@b", tostring(u))
  end)

  it("set_param refuses a value that would read back as something else", function()
    local u = assert(Uri.parse("sip:a@b"))
    raises("invalid value", function() u:set_param("x", "a;b=c") end)   -- a second param
    raises("invalid value", function() u:set_param("x", "") end)        -- "x=" is malformed
    raises("invalid value", function() u:set_param("x", "a?b") end)     -- would start headers
    raises("invalid value", function() u:set_param("x", '"q"') end)     -- no quoted strings in URIs
    assert.equal("sip:a@b", tostring(u))
  end)
end)

describe("Uri.new", function()
  it("builds from fields, defaulting the scheme to sip", function()
    assert.equal("sip:example.com", tostring(Uri.new { host = "example.com" }))
    local u = Uri.new { scheme = "sips", user = "bob", host = "10.0.0.1", port = 5061,
                        params = { { "transport", "tls" }, { "lr" } } }
    assert.equal("sips:bob@10.0.0.1:5061;transport=tls;lr", tostring(u))
    assert.equal("ipv4", u.host_type)
    assert.is_true(u:param("lr"))
    assert.equal("tel:+123", tostring(Uri.new { scheme = "tel", user = "+123" }))
    assert.equal("mailto:a@b", tostring(Uri.new { scheme = "mailto", opaque = "a@b" }))
  end)

  it("brackets an IPv6 host, given with or without brackets", function()
    local u = Uri.new { host = "2001:db8::1", port = 5060 }
    assert.equal("ipv6", u.host_type)
    assert.equal("sip:[2001:db8::1]:5060", tostring(u))
    local b = Uri.new { host = "[2001:db8::1]" }
    assert.equal("2001:db8::1", b.host)
    assert.equal("sip:[2001:db8::1]", tostring(b))
  end)

  it("raises for fields that do not make a valid URI", function()
    raises("expected a table", function() Uri.new("sip:a@b") end)
    raises("invalid URI", function() Uri.new {} end)
    raises("invalid URI", function() Uri.new { host = "exa mple.com" } end)
    raises("invalid URI", function() Uri.new { host = "a.com", port = 70000 } end)
    raises("invalid URI", function() Uri.new { host = "a.com", port = "x" } end)
    raises("invalid URI", function() Uri.new { host = "a.com", user = "a@b" } end)
    raises("invalid URI", function() Uri.new { scheme = "tel" } end)
    raises("invalid URI", function() Uri.new { scheme = "bad scheme", opaque = "x" } end)
    raises("Uri.new", function() Uri.new { host = "a.com\r\nX: y" } end)
  end)

  it("raises when a field would smuggle in another param (regression: x=a;y=b accepted)", function()
    raises("do not read back", function() Uri.new { host = "a.com", params = { { "x", "a;y=b" } } } end)
    raises("do not read back", function() Uri.new { host = "a.com;lr" } end)
  end)
end)

describe("NameAddr.parse", function()
  it("reads a display name, URI and tag", function()
    local n = assert(NameAddr.parse("Alice <sip:alice@atlanta.com>;tag=1928301774"))
    assert.equal("Alice", n.display_name)
    assert.equal("sip:alice@atlanta.com", tostring(n.uri))
    assert.equal("atlanta.com", n.uri.host)
    assert.equal("1928301774", n.tag)
    assert.equal('"Alice" <sip:alice@atlanta.com>;tag=1928301774', tostring(n))
  end)

  it("unquotes quoted display names and resolves quoted-pairs", function()
    local n = assert(NameAddr.parse('"Alice Smith" <sip:alice@atlanta.com>;TAG=abc'))
    assert.equal("Alice Smith", n.display_name)
    assert.equal("abc", n.tag) -- tag lookup is case-insensitive
    local w = assert(NameAddr.parse('"J Rosenberg \\\\\\"" <sip:jdrosen@example.com>;tag=98asjd8'))
    assert.equal('J Rosenberg \\"', w.display_name)
    assert.equal("a\\b", NameAddr.parse('"a\\\\b" <sip:a@b>').display_name)
    assert.equal("中", NameAddr.parse('"中" <sip:a@b>').display_name)
  end)

  it("reads unquoted display names, with or without LWS before <", function()
    assert.equal("Bob", NameAddr.parse("Bob<sip:bob@b>").display_name)
    assert.equal("Bob   Smith", NameAddr.parse("  Bob   Smith   <sip:bob@b>  ").display_name)
  end)

  it("has no display name for <uri> and an empty one for \"\"", function()
    assert.is_nil(NameAddr.parse("<sip:a@b>").display_name)
    local e = assert(NameAddr.parse('"" <sip:a@b>'))
    assert.equal("", e.display_name)
    assert.equal("<sip:a@b>", tostring(e))
  end)

  it("escapes quotes and backslashes when serialising, and reads them back", function()
    local n = assert(NameAddr.parse('"J Rosenberg \\\\\\"" <sip:jdrosen@example.com>;tag=98asjd8'))
    assert.equal('"J Rosenberg \\\\\\"" <sip:jdrosen@example.com>;tag=98asjd8', tostring(n))
    assert.equal(n.display_name, NameAddr.parse(tostring(n)).display_name)
  end)

  describe("addr-spec params vs uri params (RFC 3261 §20.10)", function()
    it("a bare addr-spec's params are header params", function()
      local n = assert(NameAddr.parse("sip:a@b;x"))
      assert.same({}, n.uri.params)
      assert.same({ "x" }, plist(n))
      assert.is_true(n:param("x"))
      assert.equal("<sip:a@b>;x", tostring(n))
    end)

    it("params inside <> belong to the URI", function()
      local n = assert(NameAddr.parse("<sip:a@b;x>"))
      assert.same({ "x" }, plist(n.uri))
      assert.same({}, n.params)
      local both = assert(NameAddr.parse("<sip:a@b;x>;y"))
      assert.same({ "x" }, plist(both.uri))
      assert.same({ "y" }, plist(both))
    end)

    it("a bare addr-spec carries its tag as a header param", function()
      local n = assert(NameAddr.parse("sip:a@b;tag=1;q=0.5"))
      assert.equal("1", n.tag)
      assert.equal("0.5", n:param("Q"))
      assert.same({}, n.uri.params)
    end)

    it("RFC 4475 cparam01/cparam02: ;unknownparam outside vs inside <>", function()
      local c1 = assert(NameAddr.parse("sip:+19725552222@gw1.example.net;unknownparam"))
      assert.is_true(c1:has_param("unknownparam"))
      assert.is_false(c1.uri:has_param("unknownparam"))
      local c2 = assert(NameAddr.parse("<sip:+19725552222@gw1.example.net;unknownparam>"))
      assert.is_false(c2:has_param("unknownparam"))
      assert.is_true(c2.uri:has_param("unknownparam"))
    end)
  end)

  it("reads IPv6 URIs, quoted param values and non-sip URIs inside <>", function()
    local n = assert(NameAddr.parse("<sip:[2001:db8::1]:5060;transport=tcp>;expires=60"))
    assert.equal("2001:db8::1", n.uri.host)
    assert.equal("tcp", n.uri:param("transport"))
    assert.equal("60", n:param("expires"))
    local o = assert(NameAddr.parse('<sip:a@b>;+sip.instance="<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>";reg-id=1'))
    assert.equal('"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>"', o:param("+SIP.INSTANCE"))
    assert.equal("1", o:param("reg-id"))
    assert.equal("tel", NameAddr.parse("<tel:+123>;tag=x").uri.scheme)
    assert.equal("urn:service:sos", tostring(NameAddr.parse("<urn:service:sos>").uri))
    assert.equal("<sip:a@b?x=y>", tostring(NameAddr.parse("<sip:a@b?x=y>")))
  end)

  it("answers nil, err for invalid input and never raises", function()
    local bad = { "", "*", "sip:a@b?x=y", "Bad, Name <sip:a@b>", '"unterminated <sip:a@b>', "<sip:a@b",
                  "< sip:a@b >", "sip:a@b;", "<sip:a@b>;tag=", "Alice <sip:a@b>,Bob <sip:c@d>",
                  "<sip:2001:db8::1>", "<sip:a@b>\r\nX: y", "<>", '"\\' }
    for _, s in ipairs(bad) do
      local ok, n, err = pcall(NameAddr.parse, s)
      assert.is_true(ok, "raised on " .. s)
      assert.is_nil(n, "accepted " .. s)
      assert.is_string(err)
    end
    assert.same({ nil, "not a string" }, { NameAddr.parse(42) })
  end)
end)

describe("NameAddr params and building", function()
  it("set_param replaces the tag and keeps order", function()
    local n = assert(NameAddr.parse("Alice <sip:a@b>;tag=1;x"))
    n:set_param("TAG", "2")
    assert.equal("2", n.tag)
    assert.equal('"Alice" <sip:a@b>;tag=2;x', tostring(n))
    n:set_param("y", '"quoted value"')
    assert.equal('"quoted value"', n:param("y"))
    n:del_param("x")
    assert.equal('"Alice" <sip:a@b>;tag=2;y="quoted value"', tostring(n))
    assert.equal(tostring(n), tostring(NameAddr.parse(tostring(n))))
  end)

  it("set_param refuses values that break the header", function()
    local n = assert(NameAddr.parse("<sip:a@b>"))
    raises("invalid value", function() n:set_param("tag", "a;b") end)
    raises("invalid value", function() n:set_param("x", "a,b") end)
    raises("invalid value", function() n:set_param("x", '"unterminated') end)
    raises("CR, LF and NUL", function() n:set_param("x", "a\nb") end)
    assert.equal("<sip:a@b>", tostring(n))
  end)

  it("NameAddr.new takes a string or a Uri, a display name and params", function()
    local n = NameAddr.new("sip:a@b", 'Bob "the" \\ Builder', { { "tag", "x" } })
    assert.equal('"Bob \\"the\\" \\\\ Builder" <sip:a@b>;tag=x', tostring(n))
    assert.equal("x", n.tag)
    local back = assert(NameAddr.parse(tostring(n)))
    assert.equal('Bob "the" \\ Builder', back.display_name)
    local u = assert(Uri.parse("sip:a@b;lr"))
    assert.equal("<sip:a@b;lr>;expires=60;ob", tostring(NameAddr.new(u, nil, { { "expires", "60" }, { "ob" } })))
  end)

  it("NameAddr.new raises for misuse", function()
    raises("invalid URI", function() NameAddr.new("bogus") end)
    raises("expected a Uri or a string", function() NameAddr.new(5) end)
    raises("display name", function() NameAddr.new("sip:a@b", 5) end)
    raises("display name", function() NameAddr.new("sip:a@b", "x\r\nVia: evil") end)
    raises("invalid parameter", function() NameAddr.new("sip:a@b", nil, { { "tag", "a;b" } }) end)
    raises("invalid parameter", function() NameAddr.new("sip:a@b", nil, { { "x y", "1" } }) end)
  end)
end)
