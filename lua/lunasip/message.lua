-- Requests and responses as seen by server.lua (SPEC §5.2). A message object holds a
-- handle (slot + generation) to the C message, never a pointer: once the message is gone
-- every accessor answers nil, "gone". Reads go through the FFI accessors of src/lapi.c.
local ffi = require "ffi"
local core = require "lunasip.ffi"
local urimod = require "lunasip.uri"
local Connection = require "lunasip.connection"
local C = core.C
local Uri, NameAddr = urimod.Uri, urimod.NameAddr

local ffi_string, type, tostring, tonumber, error, setmetatable, getmetatable, rawset, rawget, pairs, ipairs =
  ffi.string, type, tostring, tonumber, error, setmetatable, getmetatable, rawset, rawget, pairs, ipairs
local concat = table.concat

local pstr = ffi.new("const char *[1]")
local plen = ffi.new("size_t[1]")
local pint = ffi.new("int64_t[1]")
local piter = ffi.new("uint64_t[1]")

-- field ids (src/lapi.h enum lapi_str_field / lapi_int_field / lapi_edit_op)
local F_METHOD, F_RURI, F_CALL_ID, F_BODY, F_REASON, F_SOURCE_IP, F_TRANSPORT, F_FROM, F_TO,
      F_FROM_TAG, F_TO_TAG, F_LOCAL_IP = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11
local I_IS_REQUEST, I_STATUS, I_CSEQ, I_MAX_FORWARDS, I_SOURCE_PORT, I_LOCAL_PORT, I_VIA_COUNT, I_CONN_ID =
      0, 1, 2, 3, 4, 5, 6, 7
local E_DELETE, E_DELETE_TOP, E_INSERT, E_APPEND = 0, 1, 2, 3

local function str(self, field)
  local rc = C.lunasip_msg_str(self._h, self._g, field, pstr, plen)
  if rc ~= 0 then return nil, rc == core.GONE and "gone" or nil end
  return ffi_string(pstr[0], plen[0])
end

local function int(self, field)
  local rc = C.lunasip_msg_int(self._h, self._g, field, pint)
  if rc ~= 0 then return nil, rc == core.GONE and "gone" or nil end
  return tonumber(pint[0])
end

local function check_name(name)
  if type(name) ~= "string" or name == "" then error("header name must be a non-empty string", 3) end
end

local function check_hvalue(v)
  if type(v) == "number" then v = tostring(v) end
  if type(v) ~= "string" then error("header value must be a string", 3) end
  if v:find("[%z\r\n]") then error("header value must not contain CR, LF or NUL", 3) end
  return v
end

-- Raises at level 3 (the caller of the method): callers must not tail-call it, or the
-- method's frame is gone and the error points one level too far.
local function edit_result(rc)
  if rc >= 0 then return true end
  if rc == core.GONE then return nil, "gone" end
  if rc == core.EINVAL then error("invalid header name or value", 3) end
  return nil, "out of memory"
end

-- Getters: msg.<field>. Parsed objects (ruri, from, to, contact) are cached until an edit.
local getters = {}

function getters:method() return str(self, F_METHOD) end
function getters:call_id() return str(self, F_CALL_ID) end
function getters:body() return str(self, F_BODY) end
function getters:reason_phrase() return str(self, F_REASON) end
function getters:transport() return str(self, F_TRANSPORT) end
function getters:source_ip() return str(self, F_SOURCE_IP) end
function getters:source_port() return int(self, I_SOURCE_PORT) end
function getters:from_tag() return str(self, F_FROM_TAG) end
function getters:to_tag() return str(self, F_TO_TAG) end
function getters:cseq() return int(self, I_CSEQ) end
function getters:max_forwards() return int(self, I_MAX_FORWARDS) end
function getters:status_code() return int(self, I_STATUS) end

local function cached(self, key, make)
  local c = rawget(self, "_c")
  if not c then
    c = {}
    rawset(self, "_c", c)
  end
  local v = c[key]
  if v == nil then
    v = make(self) or false
    c[key] = v
  end
  return v or nil
end

-- (the constructors are upvalue-free functions, not closures made per call: the JIT
-- compiles no closure creation)
local function make_ruri(m)
  local s = str(m, F_RURI)
  return s and Uri.parse(s)
end
local function make_from(m)
  local s = str(m, F_FROM)
  return s and NameAddr.parse(s)
end
local function make_to(m)
  local s = str(m, F_TO)
  return s and NameAddr.parse(s)
end
local function make_contact(m)
  local s = m:header("Contact")
  if not s or s == "*" then return nil end
  return NameAddr.parse(s)
end
function getters:ruri() return cached(self, "ruri", make_ruri) end
function getters:from() return cached(self, "from", make_from) end
function getters:to() return cached(self, "to", make_to) end
function getters:contact() return cached(self, "contact", make_contact) end
function getters:tvars()
  local t = {}
  rawset(self, "tvars", t)
  return t
end
-- Stream transports (tcp, tls, ws, wss): msg.connection is the connection object
-- (lua/lunasip/connection.lua), the same one the WebSocketEvents and TLS callbacks get, and
-- msg.cvars its per-connection table. Over UDP there is no connection: msg.connection
-- describes the flow the message came on (transport and addresses), and msg.cvars is nil.
function getters:connection()
  local id = int(self, I_CONN_ID)
  local conn
  if id and id ~= 0 then
    conn = Connection.get(id)
    if not conn then -- closed before we looked: the message still tells where it came from
      conn = Connection._detached(id, {
        transport = str(self, F_TRANSPORT),
        remote_ip = str(self, F_SOURCE_IP), remote_port = int(self, I_SOURCE_PORT),
        local_ip = str(self, F_LOCAL_IP), local_port = int(self, I_LOCAL_PORT),
      })
    end
  else
    conn = {
      transport = str(self, F_TRANSPORT),
      remote_ip = str(self, F_SOURCE_IP), remote_port = int(self, I_SOURCE_PORT),
      local_ip = str(self, F_LOCAL_IP), local_port = int(self, I_LOCAL_PORT),
      close = function() return false end,
    }
  end
  rawset(self, "connection", conn)
  return conn
end
function getters:cvars()
  local id = int(self, I_CONN_ID)
  if not id or id == 0 then return nil end
  local cv = self.connection.cvars
  rawset(self, "cvars", cv)
  return cv
end

local Message = {}
local methods = {}

-- Keys that cannot be assigned (ruri can: it edits the R-URI).
local readonly = {}
for k in pairs(getters) do readonly[k] = true end
readonly.tvars, readonly.cvars, readonly.connection = nil, nil, nil

local mt = {
  __index = function(self, k)
    local g = getters[k]
    if g then return g(self) end
    return methods[k]
  end,
  __newindex = function(self, k, v)
    if k == "ruri" then
      local s = tostring(v)
      local rc = C.lunasip_msg_set_ruri(self._h, self._g, s, #s)
      if rc == core.EINVAL then error("msg.ruri: invalid URI '" .. s .. "'", 2) end
      if rc == core.NONE then error("msg.ruri: a response has no Request-URI", 2) end
      rawset(self, "_c", nil)
      return
    end
    if readonly[k] then error("msg." .. tostring(k) .. " is read-only", 2) end
    rawset(self, k, v)
  end,
  __tostring = function(self)
    local cap = 65536
    for _ = 1, 3 do
      local buf = ffi.new("char[?]", cap)
      local n = tonumber(C.lunasip_msg_serialize(self._h, self._g, buf, cap))
      if n == core.GONE then return "(gone message)" end
      if n >= 0 then return ffi_string(buf, n) end
      cap = cap * 4
    end
    return "(message too large)"
  end,
}

function methods:header(name)
  check_name(name)
  piter[0] = 0
  local rc = C.lunasip_msg_header(self._h, self._g, name, #name, piter, pstr, plen)
  if rc ~= 0 then return nil, rc == core.GONE and "gone" or nil end
  return ffi_string(pstr[0], plen[0])
end

function methods:header_all(name)
  check_name(name)
  local out = {}
  piter[0] = 0
  local rc = C.lunasip_msg_header(self._h, self._g, name, #name, piter, pstr, plen)
  if rc == core.GONE then return nil, "gone" end
  while rc == 0 do
    out[#out + 1] = ffi_string(pstr[0], plen[0])
    rc = C.lunasip_msg_header(self._h, self._g, name, #name, piter, pstr, plen)
  end
  return out
end

function methods:has_header(name)
  check_name(name)
  piter[0] = 0
  local rc = C.lunasip_msg_header(self._h, self._g, name, #name, piter, pstr, plen)
  if rc == core.GONE then return nil, "gone" end
  return rc == 0
end

-- The predicates below read several fields: once the message is gone they must answer
-- nil, "gone" rather than what absent fields would mean (no To tag = "initial").
local function gone(self)
  return C.lunasip_msg_int(self._h, self._g, I_IS_REQUEST, pint) == core.GONE
end

local function invalidate(self) rawset(self, "_c", nil) end

function methods:set_header(name, v)
  check_name(name)
  -- nil is a mistake (a misspelt variable), not "delete": that is delete_header or {}
  if v == nil then error("header value must be a string or a list", 2) end
  local vals = type(v) == "table" and v or { v }
  local arr = ffi.new("struct sip_str[?]", #vals)
  local keep = {}
  for i, x in ipairs(vals) do
    x = check_hvalue(x)
    keep[i] = x
    arr[i - 1].s, arr[i - 1].len = x, #x
  end
  invalidate(self)
  local ok, err = edit_result(C.lunasip_msg_set_header(self._h, self._g, name, #name, arr, #vals))
  return ok, err
end

function methods:insert_header(name, v)
  check_name(name)
  v = check_hvalue(v)
  invalidate(self)
  local ok, err = edit_result(C.lunasip_msg_edit(self._h, self._g, E_INSERT, name, #name, v, #v))
  return ok, err
end

function methods:append_header(name, v)
  check_name(name)
  v = check_hvalue(v)
  invalidate(self)
  local ok, err = edit_result(C.lunasip_msg_edit(self._h, self._g, E_APPEND, name, #name, v, #v))
  return ok, err
end

--- Deletes every header of that name; returns how many were removed.
function methods:delete_header(name)
  check_name(name)
  invalidate(self)
  local rc = C.lunasip_msg_edit(self._h, self._g, E_DELETE, name, #name, nil, 0)
  if rc < 0 then
    local ok, err = edit_result(rc)
    return ok, err
  end
  return rc
end

--- Deletes the first header line of that name; returns 1 or 0.
function methods:delete_header_top(name)
  check_name(name)
  invalidate(self)
  local rc = C.lunasip_msg_edit(self._h, self._g, E_DELETE_TOP, name, #name, nil, 0)
  if rc < 0 then
    local ok, err = edit_result(rc)
    return ok, err
  end
  return rc
end

-- "Name: value\r\n" lines from a list of "Name: value" strings or a map name → value|list.
-- what names the caller in errors ("reply"). Errors are raised for the caller of the
-- function that calls header_lines (which must not tail-call it).
local function header_lines(headers, what)
  local out = {}
  local function add(name, v)
    if type(name) ~= "string" or not name:match("^[%w%-%.!%%%*_%+`'~]+$") then
      error(what .. ": bad header name '" .. tostring(name) .. "'", 4)
    end
    if type(v) == "number" then v = tostring(v) end
    if type(v) ~= "string" or v:find("[%z\r\n]") then
      error(what .. ": header " .. name .. ": value must be a string without CR, LF or NUL", 4)
    end
    out[#out + 1] = name .. ": " .. v .. "\r\n"
  end
  if #headers > 0 then
    for _, line in ipairs(headers) do
      local n, v = tostring(line):match("^([^:]+):%s*(.*)$")
      if not n then error(what .. ": header line '" .. tostring(line) .. "' is not 'Name: value'", 3) end
      add(n:match("^%s*(.-)%s*$"), v)
    end
  else
    for n, v in pairs(headers) do
      if type(v) == "table" then
        for _, x in ipairs(v) do add(n, x) end
      else
        add(n, v)
      end
    end
  end
  return concat(out)
end

--- req:reply(code, reason?, headers?, body?) → true, or nil, err ("gone", "already answered",
--- "send failed"). Misuse (bad code, bad header) raises an error.
function methods:reply(code, reason, headers, body)
  if type(code) ~= "number" or code < 100 or code > 699 or code % 1 ~= 0 then
    error("reply: status code must be an integer 100..699", 2)
  end
  if reason ~= nil and type(reason) ~= "string" then error("reply: reason must be a string", 2) end
  if reason and reason:find("[%z\r\n]") then error("reply: reason must not contain CR, LF or NUL", 2) end
  local h = ""
  if headers ~= nil then
    if type(headers) ~= "table" then error("reply: headers must be a table", 2) end
    h = header_lines(headers, "reply")
  end
  if body ~= nil and type(body) ~= "string" then error("reply: body must be a string", 2) end
  local rc = C.lunasip_msg_reply(self._h, self._g, code, reason, reason and #reason or 0, h, #h,
                                 body, body and #body or 0)
  if rc == 0 then return true end
  if rc == core.GONE then return nil, "gone" end
  if rc == core.EDONE then return nil, "already answered" end
  if rc == core.EINVAL then error("reply: cannot answer this message (a response or an ACK?) or invalid headers", 2) end
  return nil, "send failed"
end

--- RFC 3261 §16.3 step 3: 483 at Max-Forwards 0 (returns false; an ACK is only refused,
--- never answered), else clamps to n.
function methods:check_max_forwards(n)
  if type(n) ~= "number" or n < 1 or n > 255 then error("check_max_forwards: n must be 1..255", 2) end
  local rc = C.lunasip_msg_clamp_max_forwards(self._h, self._g, math.floor(n))
  if rc == 1 then return true end
  if rc == 0 then
    -- an ACK never gets a response: it is just not forwarded
    if self.method ~= "ACK" then self:reply(483) end
    return false
  end
  if rc == core.GONE then return nil, "gone" end
  if rc == core.EINVAL then error("check_max_forwards: not a request", 2) end
  return nil, "out of memory"
end

function methods:fix_nat()
  local rc = C.lunasip_msg_fix_nat(self._h, self._g)
  if rc == core.GONE then return nil, "gone" end
  return rc == 0
end

function methods:destination_myself()
  local rc = C.lunasip_msg_destination_myself(self._h, self._g)
  if rc == core.GONE then return nil, "gone" end
  return rc == 1
end

function methods:is_initial()
  if gone(self) then return nil, "gone" end
  return self.to_tag == nil
end
function methods:is_in_dialog()
  if gone(self) then return nil, "gone" end
  return self.to_tag ~= nil
end

local dialog_forming = { INVITE = true, SUBSCRIBE = true, REFER = true }
function methods:is_dialog_forming()
  if gone(self) then return nil, "gone" end
  return dialog_forming[self.method] == true and self.to_tag == nil
end

--- RFC 3261 §16.4 (SPEC §4), run on a request before routing it:
---  * strict router: when the R-URI is a URI lunasip put in a Record-Route (one of ours,
---    with ;lr), the previous hop routed strictly: the last Route value becomes the R-URI
---    and leaves the Route set;
---  * then a top Route naming lunasip is removed, and the one right after it too when it
---    names lunasip as well (the double Record-Route written when the transport or the IP
---    family changes).
--- Returns true when the request is to be routed onward by lunasip: a Route of ours was
--- removed, or the strict-router case was undone (as OverSIP's loose_route, which
--- answers whether a Route of ours was removed). false: no Route of ours (an in-dialog
--- request like that does not belong to a dialog lunasip routes).
function methods:loose_route()
  local rc = C.lunasip_msg_loose_route(self._h, self._g)
  if rc < 0 then
    if rc == core.GONE then return nil, "gone" end
    if rc == core.EINVAL then error("loose_route: not a request", 2) end
    return nil, "out of memory"
  end
  if rc == 1 then invalidate(self) end
  return rc == 1
end

--- RFC 5626 §5.1 (src/flow.h flow_outbound_requested): an initial request from the first
--- hop (one Via) whose single Contact asks for Outbound: reg-id and +sip.instance with
--- Supported: outbound (REGISTER), or ;ob in the Contact URI (others). False for a response.
function methods:incoming_outbound_requested()
  local rc = C.lunasip_msg_outbound_requested(self._h, self._g)
  if rc == core.GONE then return nil, "gone" end
  return rc == 1
end

--- Wraps a handle (from the core) in a message object.
function Message.wrap(h, g)
  return setmetatable({ _h = h, _g = g }, mt)
end

--- Whether x is a message object (from Message.wrap or Message.parse).
function Message.is(x)
  return type(x) == "table" and getmetatable(x) == mt
end

-- For lunasip.UacRequest: the same header-list conventions as req:reply.
Message._header_lines = header_lines

--- Parses raw bytes into a message that lives until msg:release() (tests and tools).
function Message.parse(raw)
  if type(raw) ~= "string" then error("Message.parse: expected a string", 2) end
  local ph, pg = ffi.new("uint32_t[1]"), ffi.new("uint32_t[1]")
  local preason = ffi.new("const char *[1]")
  local rc = C.lunasip_msg_parse(raw, #raw, ph, pg, preason)
  if rc ~= 0 then
    return nil, (rc > 1 and (rc .. " ") or "") .. (preason[0] ~= nil and ffi_string(preason[0]) or "malformed")
  end
  return Message.wrap(ph[0], pg[0])
end

--- For a message from Message.parse: ends it (later accessors answer nil, "gone").
function methods:release()
  C.lunasip_msg_free(self._h, self._g)
end

--- For a message from Message.parse: the response req:reply produced, as bytes.
function methods:last_reply()
  if C.lunasip_msg_last_reply(self._h, self._g, pstr, plen) ~= 0 then return nil end
  return ffi_string(pstr[0], plen[0])
end

Message.methods = methods
return Message
