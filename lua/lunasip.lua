-- The lunasip Lua library: `local lunasip = require "lunasip"` in server.lua.
-- SPEC §5: lunasip.Uri, lunasip.NameAddr, lunasip.log, and the dispatcher the core calls
-- for every request it hands to SipEvents.on_request.
local uri = require "lunasip.uri"
local Message = require "lunasip.message"

local lunasip = {
  version = "0.1.0",
  Uri = uri.Uri,
  NameAddr = uri.NameAddr,
  Message = Message,
  log = require "lunasip.log",
}

local wrap = Message.wrap

--- Called by the core (src/lvm.c) with a message handle; errors propagate to the core's
--- traceback handler, which logs them and answers 500.
function lunasip._dispatch_request(h, g)
  local on_request = SipEvents and SipEvents.on_request
  if not on_request then
    error("SipEvents.on_request is not defined in server.lua", 0)
  end
  on_request(wrap(h, g))
end

return lunasip
