-- lunasip.Uac and lunasip.UacRequest (SPEC §5.3): requests lunasip originates itself
-- (RFC 3261 §8.1.1), routed statefully with a proxies.conf profile. A UacRequest is built
-- and checked in Lua and handed to the core as text without Via (the core adds its own
-- Via, and Max-Forwards: 70 when absent); the callbacks are the ones of lunasip.Proxy.
local ffi = require "ffi"
local core = require "lunasip.ffi"
local urimod = require "lunasip.uri"
local Message = require "lunasip.message"
local proxy = require "lunasip.proxy"
local C = core.C
local Uri, NameAddr = urimod.Uri, urimod.NameAddr

local type, error, tostring, setmetatable, getmetatable, pairs =
  type, error, tostring, setmetatable, getmetatable, pairs
local concat, format, char, random = table.concat, string.format, string.char, math.random

local pctx = ffi.new("uint32_t[1]")
local perr = ffi.new("const char *[1]")

-- Random bytes for tags and Call-IDs. Unbuffered: with a buffer, processes forked after
-- the first read would share the buffered bytes and draw the same ids.
local urandom = io.open("/dev/urandom", "rb")
if urandom then urandom:setvbuf("no") end

local function random_hex(nbytes)
  local s = urandom and urandom:read(nbytes)
  if not s or #s ~= nbytes then
    local t = {}
    for i = 1, nbytes do t[i] = char(random(0, 255)) end
    s = concat(t)
  end
  return (s:gsub(".", function(c) return format("%02x", c:byte()) end))
end

------------------------------------------------------------------------ UacRequest
local UacRequest = {}
UacRequest.__index = UacRequest

local TOKEN = "^[%w%-%.!%%%*_%+`'~]+$"

-- Headers the request is built with from its fields (and Via, which the core writes):
-- the headers list must not carry them. Compact forms included (RFC 3261 §7.3.3).
local own_headers = {
  via = true, v = true, from = true, f = true, to = true, t = true, ["call-id"] = true,
  i = true, cseq = true, ["max-forwards"] = true, contact = true, m = true,
  ["content-type"] = true, c = true, ["content-length"] = true, l = true,
}

local function no_ctl(v)
  return type(v) == "string" and not v:find("[%z\r\n]")
end

-- A NameAddr from a string or a NameAddr (copied: the caller's object is not changed).
-- Errors point at the caller of UacRequest.new (level 3).
local function nameaddr(v, field, required)
  if v == nil then
    if required then error("UacRequest.new: " .. field .. " is required", 3) end
    return nil
  end
  if getmetatable(v) == NameAddr then v = tostring(v) end
  if not no_ctl(v) then error("UacRequest.new: " .. field .. " must be a string or a NameAddr", 3) end
  local na = NameAddr.parse(v)
  if not na then error("UacRequest.new: " .. field .. ": invalid name-addr '" .. v .. "'", 3) end
  return na
end

local function integer(v, field, lo, hi)
  if type(v) ~= "number" or v % 1 ~= 0 or v < lo or v > hi then
    error("UacRequest.new: " .. field .. " must be an integer " .. lo .. ".." .. hi, 3)
  end
  return v
end

--- lunasip.UacRequest.new{ method=, ruri=, from=, to=, call_id=?, cseq=?, contact=?,
--- max_forwards=?, headers=?, body=?, content_type=? }: a request lunasip sends itself.
--- ruri is a string or a lunasip.Uri; from, to and contact strings or lunasip.NameAddr;
--- headers as for req:reply (a list of "Name: value" or a map name -> value or list).
--- From gets a random tag when it has none; call_id is random when nil; cseq defaults
--- to 1. Misuse raises an error. The object exposes the fields and .tvars (the table the
--- response callbacks see as response.tvars).
function UacRequest.new(t)
  if type(t) ~= "table" then error("UacRequest.new: expected a table of fields", 2) end
  local self = setmetatable({ tvars = {} }, UacRequest)

  if type(t.method) ~= "string" or not t.method:match(TOKEN) then
    error("UacRequest.new: method must be a token (\"OPTIONS\", \"MESSAGE\", ...)", 2)
  end
  self.method = t.method

  local ruri = t.ruri
  if getmetatable(ruri) == Uri then ruri = tostring(ruri) end
  if not no_ctl(ruri) then error("UacRequest.new: ruri must be a string or a Uri", 2) end
  self.ruri = Uri.parse(ruri)
  if not self.ruri then error("UacRequest.new: ruri: invalid URI '" .. ruri .. "'", 2) end

  self.from = nameaddr(t.from, "from", true)
  if not self.from.tag then self.from:set_param("tag", random_hex(8)) end
  self.from_tag = self.from.tag
  self.to = nameaddr(t.to, "to", true)
  self.contact = nameaddr(t.contact, "contact", false)

  if t.call_id == nil then
    self.call_id = random_hex(16)
  elseif type(t.call_id) ~= "string" or t.call_id == "" or t.call_id:find("[%s%z]") then
    error("UacRequest.new: call_id must be a non-empty string without spaces", 2)
  else
    self.call_id = t.call_id
  end

  self.cseq = t.cseq == nil and 1 or integer(t.cseq, "cseq", 0, 2147483647)
  if t.max_forwards ~= nil then self.max_forwards = integer(t.max_forwards, "max_forwards", 0, 255) end

  local hdrs = ""
  if t.headers ~= nil then
    if type(t.headers) ~= "table" then error("UacRequest.new: headers must be a table", 2) end
    hdrs = Message._header_lines(t.headers, "UacRequest.new")
    for name in hdrs:gmatch("([^:\r\n]+):[^\r\n]*\r\n") do
      if own_headers[name:lower()] then
        error("UacRequest.new: header " .. name .. " is built from the request's fields, not headers", 2)
      end
    end
  end
  self.headers = t.headers
  self._headers = hdrs

  if t.body ~= nil and type(t.body) ~= "string" then error("UacRequest.new: body must be a string", 2) end
  if t.content_type ~= nil and (not no_ctl(t.content_type) or t.content_type == "") then
    error("UacRequest.new: content_type must be a non-empty string without CR, LF or NUL", 2)
  end
  if t.body and t.body ~= "" and not t.content_type then
    error("UacRequest.new: a body needs a content_type", 2)
  end
  self.body = t.body or ""
  self.content_type = t.content_type
  return self
end

--- The request as the core wants it (src/lapi.h lunasip_uac_route): start line, headers,
--- empty line, body; no Via.
function UacRequest:serialize()
  local out = {
    self.method, " ", tostring(self.ruri), " SIP/2.0\r\n",
    "From: ", tostring(self.from), "\r\n",
    "To: ", tostring(self.to), "\r\n",
    "Call-ID: ", self.call_id, "\r\n",
    "CSeq: ", format("%d", self.cseq), " ", self.method, "\r\n",
  }
  local function add(...)
    for i = 1, select("#", ...) do out[#out + 1] = select(i, ...) end
  end
  if self.max_forwards then add("Max-Forwards: ", format("%d", self.max_forwards), "\r\n") end
  if self.contact then add("Contact: ", tostring(self.contact), "\r\n") end
  add(self._headers)
  if self.content_type then add("Content-Type: ", self.content_type, "\r\n") end
  add("Content-Length: ", format("%d", #self.body), "\r\n\r\n", self.body)
  return concat(out)
end
UacRequest.__tostring = UacRequest.serialize

------------------------------------------------------------------------------- Uac
local Uac = {}
Uac.__index = Uac
for k, f in pairs(proxy.callbacks) do Uac[k] = f end

--- lunasip.Uac.new(profile?): routes UacRequests with a profile of proxies.conf (default
--- "default_proxy"); the same callbacks as lunasip.Proxy.
function Uac.new(profile)
  profile = proxy.check_profile(profile, "Uac.new")
  return setmetatable({ profile = profile }, Uac)
end

--- uac:route(uac_request, dst_host?, dst_port?, dst_transport?): sends the request after
--- the handler returns, to dst_host when given, else to the R-URI (RFC 3263). Returns
--- true, or nil, err. A request the core cannot parse raises an error.
function Uac:route(req, host, port, transport)
  if getmetatable(self) ~= Uac then error("route: call it as uac:route(uac_request, ...)", 2) end
  if getmetatable(req) ~= UacRequest then error("route: expected a lunasip.UacRequest", 2) end
  local hlen, tp
  host, hlen, port, tp = proxy.route_args(host, port, transport)
  local buf = req:serialize()
  local p = self.profile
  perr[0] = nil
  local rc = C.lunasip_uac_route(buf, #buf, p, #p, host, hlen, port, tp, pctx, perr)
  if rc == core.OK then
    proxy.register(pctx[0], self, req)
    return true
  end
  if rc == core.EINVAL then
    error("route: " .. (perr[0] ~= nil and ffi.string(perr[0]) or "the core refused the request"), 2)
  end
  return proxy.route_failure(rc, p)
end

return { Uac = Uac, UacRequest = UacRequest, _random_hex = random_hex }
