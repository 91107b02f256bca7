-- lunasip (lua/lunasip.lua): what server.lua gets from require "lunasip", and the
-- dispatcher the core calls for each request (SPEC §5.1, §5.2).
local lunasip = require "lunasip"

local INVITE = table.concat({
  "INVITE sip:bob@biloxi.example.com SIP/2.0",
  "Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds",
  "Max-Forwards: 70",
  "To: Bob <sip:bob@biloxi.example.com>",
  "From: Alice <sip:alice@atlanta.example.com>;tag=1928301774",
  "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
  "CSeq: 314159 INVITE",
  "Content-Length: 0",
}, "\r\n") .. "\r\n\r\n"

describe("lunasip", function()
  it("exports Uri, NameAddr, Message, log and a version", function()
    assert.is_table(lunasip.Uri)
    assert.is_function(lunasip.Uri.parse)
    assert.is_function(lunasip.NameAddr.parse)
    assert.is_function(lunasip.Message.parse)
    assert.is_function(lunasip.log.info)
    assert.matches("^%d+%.%d+%.%d+", lunasip.version)
    assert.equal(lunasip, require "lunasip")
  end)

  describe("_dispatch_request", function()
    local saved
    before_each(function() saved = rawget(_G, "SipEvents") end)
    after_each(function() rawset(_G, "SipEvents", saved) end)

    it("hands SipEvents.on_request the message behind a handle", function()
      local m = assert(lunasip.Message.parse(INVITE))
      local seen
      rawset(_G, "SipEvents", { on_request = function(req) seen = req end })
      lunasip._dispatch_request(m._h, m._g)
      assert.is_table(seen)
      assert.equal("INVITE", seen.method)
      assert.equal("a84b4c76e66710@pc33.atlanta.example.com", seen.call_id)
      assert.is_true(seen:reply(486))
      assert.matches("^SIP/2%.0 486 ", m:last_reply())
      m:release()
      assert.is_nil(seen.method)
    end)

    it("raises when server.lua defines no SipEvents.on_request", function()
      rawset(_G, "SipEvents", nil)
      assert.has_error(function() lunasip._dispatch_request(1, 0) end,
                       "SipEvents.on_request is not defined in server.lua")
      rawset(_G, "SipEvents", {})
      assert.has_error(function() lunasip._dispatch_request(1, 0) end,
                       "SipEvents.on_request is not defined in server.lua")
    end)

    it("lets a handler's error through to the core (which answers 500)", function()
      local m = assert(lunasip.Message.parse(INVITE))
      rawset(_G, "SipEvents", { on_request = function() error("boom", 0) end })
      assert.has_error(function() lunasip._dispatch_request(m._h, m._g) end, "boom")
      m:release()
    end)
  end)
end)
