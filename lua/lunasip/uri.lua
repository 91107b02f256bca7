-- lunasip.Uri and lunasip.NameAddr: parse (with the C parser of src/sip_grammar.c, so Lua
-- and the core agree on the grammar) and build. RFC 3261 §19.1, §20.10, §25.1; RFC 3966.
local ffi = require "ffi"
local core = require "lunasip.ffi"
local C = core.C

local ffi_string, type, tostring, setmetatable = ffi.string, type, tostring, setmetatable
local concat, lower = table.concat, string.lower

local uri_buf = ffi.new("struct sip_uri")
local na_buf = ffi.new("struct sip_nameaddr")
local pp = ffi.new("const char *[1]")
local pname, pvalue = ffi.new("struct sip_str"), ffi.new("struct sip_str")
local Uri, NameAddr

local function slice(s)
  if s.s == nil then return nil end
  return ffi_string(s.s, s.len)
end

-- Params as an ordered list of { name, value } (value true for a bare name).
local function parse_params(sl)
  local list = {}
  if sl.s == nil or sl.len == 0 then return list end
  pp[0] = sl.s
  local stop = sl.s + sl.len
  while true do
    local r = C.sip_param_next(pp, stop, pname, pvalue)
    if r ~= 1 then break end
    list[#list + 1] = { ffi_string(pname.s, pname.len), pvalue.s ~= nil and ffi_string(pvalue.s, pvalue.len) or true }
  end
  return list
end

local function check_value(what, v)
  if type(v) ~= "string" and v ~= true then
    error(what .. ": expected a string or true", 3)
  end
  if v ~= true and v:find("[%z\r\n]") then
    error(what .. ": CR, LF and NUL are not allowed", 3)
  end
end

-- Whether name[=value] reads back as exactly that one param where it goes (URI params
-- and header params do not take the same characters), so a value can neither smuggle in
-- another param (";") nor end the URI or the header value.
local function param_ok(self, name, value)
  local text = value == true and name or (name .. "=" .. value)
  local back
  if getmetatable(self) == Uri then back = Uri.parse("sip:x;" .. text)
  else back = NameAddr.parse("<sip:x>;" .. text) end
  local p = back and back.params
  return p ~= nil and #p == 1 and p[1][1] == name and p[1][2] == value
end

-- How param names compare: case-insensitively, and with %HH escapes resolved, since an
-- escaped character equals its plain form (RFC 3261 §19.1.4; RFC 4475 esc01's ;%6C%72 is lr).
local function key(name)
  if not name:find("%", 1, true) then return lower(name) end
  return lower((name:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)))
end

-- Shared param methods for Uri and NameAddr.
local param_methods = {}

function param_methods:param(name)
  local n = key(name)
  for _, p in ipairs(self.params) do
    if key(p[1]) == n then return p[2] end
  end
  return nil
end

function param_methods:has_param(name)
  return self:param(name) ~= nil
end

function param_methods:set_param(name, value)
  if type(name) ~= "string" or not name:match("^[%w%-%.!%%%*_%+`'~%[%]/:&]+$") then
    error("set_param: bad parameter name", 2)
  end
  if value == nil then value = true end
  check_value("set_param", value)
  if not param_ok(self, name, value) then
    error("set_param: invalid value for parameter " .. name, 2)
  end
  local n = key(name)
  for _, p in ipairs(self.params) do
    if key(p[1]) == n then p[2] = value; return self end
  end
  self.params[#self.params + 1] = { name, value }
  return self
end

function param_methods:del_param(name)
  local n = key(name)
  for i = #self.params, 1, -1 do
    if key(self.params[i][1]) == n then table.remove(self.params, i) end
  end
  return self
end

local function params_tostring(list)
  local out = {}
  for i, p in ipairs(list) do
    out[i] = p[2] == true and (";" .. p[1]) or (";" .. p[1] .. "=" .. p[2])
  end
  return concat(out)
end

---------------------------------------------------------------------------- Uri
Uri = {}
Uri.__index = Uri
for k, f in pairs(param_methods) do Uri[k] = f end

local scheme_names = { [1] = "sip", [2] = "sips", [3] = "tel" }
local host_types = { [1] = "domain", [2] = "ipv4", [3] = "ipv6" }

local function uri_from_c(u)
  local self = setmetatable({}, Uri)
  self.scheme = scheme_names[u.scheme] or lower(ffi_string(u.scheme_str.s, u.scheme_str.len))
  if u.scheme == 0 then
    self.opaque = slice(u.opaque)
    self.params = {}
    return self
  end
  self.user = slice(u.user)
  self.password = slice(u.password)
  local host = slice(u.host)
  self.host_type = host_types[u.host_type]
  if self.host_type == "ipv6" and host then host = host:sub(2, -2) end
  self.host = host
  if u.port_str.s ~= nil then self.port = u.port end
  self.params = parse_params(u.params)
  self.headers = slice(u.headers)
  return self
end

--- Parses a URI string; returns a Uri or nil, err.
function Uri.parse(s)
  if type(s) ~= "string" then return nil, "not a string" end
  if C.sip_uri_parse(s, #s, uri_buf) ~= 0 then return nil, "invalid URI" end
  return uri_from_c(uri_buf)
end

local function same_fields(a, b)
  if lower(tostring(a.scheme)) ~= b.scheme then return false end
  for _, k in ipairs { "user", "password", "host", "port", "headers", "opaque" } do
    if (a[k] == nil) ~= (b[k] == nil) or (a[k] ~= nil and tostring(a[k]) ~= tostring(b[k])) then return false end
  end
  if #a.params ~= #b.params then return false end
  for i, p in ipairs(a.params) do
    if p[1] ~= b.params[i][1] or p[2] ~= b.params[i][2] then return false end
  end
  return true
end

--- Builds a Uri from fields: { scheme="sip", user=, password=, host=, port=, params={{"lr",true}}, headers= }.
function Uri.new(t)
  if type(t) ~= "table" then error("Uri.new: expected a table", 2) end
  local self = setmetatable({}, Uri)
  self.scheme = t.scheme or "sip"
  self.user, self.password, self.host, self.port = t.user, t.password, t.host, t.port
  self.opaque, self.headers = t.opaque, t.headers
  self.params = {}
  for _, p in ipairs(t.params or {}) do self.params[#self.params + 1] = { p[1], p[2] == nil and true or p[2] } end
  if type(self.host) == "string" then self.host = self.host:match("^%[(.*)%]$") or self.host end
  if self.host and self.host:find(":", 1, true) then self.host_type = "ipv6"
  elseif self.host and self.host:match("^%d+%.%d+%.%d+%.%d+$") then self.host_type = "ipv4"
  elseif self.host then self.host_type = "domain" end
  -- validate by round trip through the parser: it must accept the text and read back the
  -- same fields (a ";" in a param value or in the host would otherwise make other params)
  local back, err = Uri.parse(tostring(self))
  if not back then error("Uri.new: " .. err .. ": " .. tostring(self), 2) end
  if not same_fields(self, back) then error("Uri.new: fields do not read back as given: " .. tostring(self), 2) end
  self.host_type = back.host_type
  return self
end

function Uri:__tostring()
  if self.opaque then return self.scheme .. ":" .. self.opaque end
  local out = { self.scheme, ":" }
  if self.user then
    out[#out + 1] = self.user
    if self.password then out[#out + 1] = ":" .. self.password end
    if self.scheme ~= "tel" then out[#out + 1] = "@" end
  end
  if self.host then
    out[#out + 1] = self.host_type == "ipv6" and ("[" .. self.host .. "]") or self.host
  end
  if self.port then out[#out + 1] = ":" .. self.port end
  out[#out + 1] = params_tostring(self.params)
  if self.headers then out[#out + 1] = "?" .. self.headers end
  return concat(out)
end

------------------------------------------------------------------------ NameAddr
NameAddr = {}
NameAddr.__index = function(self, k)
  if k == "tag" then return self:param("tag") end
  return NameAddr[k]
end
for k, f in pairs(param_methods) do NameAddr[k] = f end

-- A display name as written → its text: quotes removed, quoted-pairs resolved.
local function unquote(d)
  if not d then return nil end
  if d:sub(1, 1) == '"' then
    return (d:sub(2, -2):gsub("\\(.)", "%1"))
  end
  return d
end

--- Parses a name-addr or addr-spec (From, To, Contact, Route values); returns a
--- NameAddr or nil, err.
function NameAddr.parse(s)
  if type(s) ~= "string" then return nil, "not a string" end
  if C.sip_nameaddr_parse(s, #s, 0, na_buf) ~= 0 then return nil, "invalid name-addr" end
  local self = setmetatable({}, NameAddr)
  self.display_name = unquote(slice(na_buf.display))
  self.uri = uri_from_c(na_buf.uri)
  self.params = parse_params(na_buf.params)
  return self
end

--- Builds a NameAddr: NameAddr.new(uri, display_name?, params?) where uri is a Uri or a string.
function NameAddr.new(uri, display_name, params)
  if type(uri) == "string" then
    local u, err = Uri.parse(uri)
    if not u then error("NameAddr.new: " .. err, 2) end
    uri = u
  elseif getmetatable(uri) ~= Uri then
    error("NameAddr.new: expected a Uri or a string", 2)
  end
  if display_name ~= nil and (type(display_name) ~= "string" or display_name:find("[%z\r\n]")) then
    error("NameAddr.new: display name must be a string without CR, LF or NUL", 2)
  end
  local self = setmetatable({ uri = uri, display_name = display_name, params = {} }, NameAddr)
  for _, p in ipairs(params or {}) do
    local v = p[2] == nil and true or p[2]
    if type(p[1]) ~= "string" or (v ~= true and type(v) ~= "string") or not param_ok(self, p[1], v) then
      error("NameAddr.new: invalid parameter " .. tostring(p[1]), 2)
    end
    self.params[#self.params + 1] = { p[1], v }
  end
  return self
end

function NameAddr:__tostring()
  local out = {}
  if self.display_name and self.display_name ~= "" then
    out[1] = '"' .. self.display_name:gsub('[\\"]', "\\%0") .. '" '
  end
  out[#out + 1] = "<" .. tostring(self.uri) .. ">"
  out[#out + 1] = params_tostring(self.params)
  return concat(out)
end

return { Uri = Uri, NameAddr = NameAddr, uri_from_c = uri_from_c }
