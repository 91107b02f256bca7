-- Stream connections (tcp, tls, ws, wss) as server.lua sees them (SPEC §5.1, §5.2): the conn
-- argument of the WebSocketEvents and TLS handshake callbacks, and msg.connection. An
-- object holds the connection's id, never a pointer: the C side (src/lapi_conn.c) looks the
-- connection up on every call. Once the connection is gone its fields keep their last
-- values, conn:is_open() is false and conn:close() does nothing.
--
-- Each Lua state keeps one object per live connection (Connection._objects), so the
-- callbacks and msg.connection get the same object and the same conn.cvars; the core drops
-- it when the connection closes (_release), in every state. After a reload the new state's
-- first look at conn.cvars copies what an older state keeps there: strings, numbers,
-- booleans and tables of those. Functions, userdata, cdata and coroutines belong to their
-- state and are not carried over; neither are metatables.
local ffi = require "ffi"
local core = require "lunasip.ffi"

local type, error, tostring, setmetatable, getmetatable, rawget, rawset, ffi_string =
  type, error, tostring, setmetatable, getmetatable, rawget, rawset, ffi.string

local capi = core.C
local info = ffi.new("struct lunasip_conn_info")

-- import_cvars(id, t) (src/lapi_conn.c), present in lunasip's own states only (not under
-- busted): copies an older state's cvars of that connection into t.
local import_cvars
do
  local loader = package.preload["lunasip.core_conn"]
  if loader then import_cvars = loader().import_cvars end
end

local objects = {}     -- connection id -> object, while the connection lives
local Connection = { _objects = objects }
local methods = {}

local function cvars_of(self)
  local cv = rawget(self, "_cv")
  if cv then return cv end
  cv = {}
  rawset(self, "_cv", cv)
  if import_cvars and not rawget(self, "_gone") then import_cvars(rawget(self, "_id"), cv) end
  return cv
end

local mt = {
  __index = function(self, k)
    if k == "cvars" then return cvars_of(self) end
    local m = methods[k]
    if m ~= nil then return m end
    return rawget(self, "_f")[k]
  end,
  __newindex = function(_, k)
    error("conn." .. tostring(k) .. " is read-only (keep your own data in conn.cvars)", 2)
  end,
  -- "ws:[::1]:40000" (the remote end)
  __tostring = function(self)
    local f = rawget(self, "_f")
    local ip = f.remote_ip or "?"
    if ip:find(":", 1, true) then ip = "[" .. ip .. "]" end
    return tostring(f.transport) .. ":" .. ip .. ":" .. tostring(f.remote_port)
  end,
}

local function new(id, f, gone)
  f.id = id
  local o = { _id = id, _f = f }
  if gone then o._gone = true end
  return setmetatable(o, mt)
end

local function opt(s)
  if s == "" then return nil end
  return s
end

local function check_id(id, what)
  if type(id) ~= "number" or id < 1 or id % 1 ~= 0 then
    error(what .. ": connection id must be a positive integer", 3)
  end
end

--- Connection.get(id) -> the object of a live connection, or nil, "gone". Scripts may keep
--- conn.id (a number) and come back to the connection with it.
function Connection.get(id)
  check_id(id, "Connection.get")
  local o = objects[id]
  if o then return o end
  if capi.lunasip_conn_info(id, info) ~= core.OK then return nil, "gone" end
  o = new(id, {
    transport = ffi_string(info.transport),
    remote_ip = ffi_string(info.remote_ip), remote_port = info.remote_port,
    local_ip = ffi_string(info.local_ip), local_port = info.local_port,
    tls_version = opt(ffi_string(info.tls_version)), tls_sni = opt(ffi_string(info.tls_sni)),
  })
  objects[id] = o
  return o
end

--- Whether x is a connection object.
function Connection.is(x)
  return type(x) == "table" and getmetatable(x) == mt
end

--- conn:is_open() -> true while the connection is up and no close was asked for.
function methods:is_open()
  if rawget(self, "_gone") or rawget(self, "_closing") then return false end
  return capi.lunasip_conn_is_open(rawget(self, "_id")) == 1
end

--- conn:close() -> true when the connection will close, false when it is gone already.
--- Inside a TLS handshake callback or WebSocketEvents.on_connection for this connection it
--- rejects it; elsewhere the close happens once the running handler has returned (queued
--- output, such as a reply sent just before, is flushed first).
function methods:close()
  if rawget(self, "_gone") or rawget(self, "_closing") then return false end
  if capi.lunasip_conn_close(rawget(self, "_id")) ~= core.OK then return false end
  rawset(self, "_closing", true)
  return true
end

--- conn:http_reject(code, reason?) inside WebSocketEvents.on_connection: refuses the
--- WebSocket upgrade with that HTTP status (400..699) and reason phrase.
function methods:http_reject(code, reason)
  if type(code) ~= "number" or code % 1 ~= 0 or code < 400 or code > 699 then
    error("http_reject: code must be an integer 400..699", 2)
  end
  if reason ~= nil then
    if type(reason) ~= "string" then error("http_reject: reason must be a string", 2) end
    if reason:find("[%z\r\n]") then error("http_reject: reason must not contain CR, LF or NUL", 2) end
    if #reason > core.REASON_MAX then
      error("http_reject: reason longer than " .. core.REASON_MAX .. " bytes", 2)
    end
  end
  local rc = capi.lunasip_conn_http_reject(rawget(self, "_id"), code, reason, reason and #reason or 0)
  if rc == core.NONE then
    error("http_reject: only valid inside WebSocketEvents.on_connection, on its connection", 2)
  end
  if rc ~= core.OK then error("http_reject: invalid code or reason", 2) end
  rawset(self, "_closing", true)
  return true
end

-- The http_request of WebSocketEvents.on_connection: method, uri, path, query, version,
-- host, origin, headers (lower-case name -> first value) and this method.
local HttpRequest = {}
HttpRequest.__index = HttpRequest

--- http_request:header(name) -> the first value of that header (any case), or nil.
function HttpRequest:header(name)
  if type(name) ~= "string" then error("http_request:header: name must be a string", 2) end
  return self.headers[name:lower()]
end

-- ----- called by the core (src/lapi_conn.c) -----

--- The object of connection id in this state, made from the values the core gives when
--- this state has none yet.
function Connection._object(id, transport, remote_ip, remote_port, local_ip, local_port, tls_version, tls_sni)
  local o = objects[id]
  if o then return o end
  o = new(id, {
    transport = transport, remote_ip = remote_ip, remote_port = remote_port,
    local_ip = local_ip, local_port = local_port, tls_version = tls_version, tls_sni = tls_sni,
  })
  objects[id] = o
  return o
end

--- An object for a connection that is gone already (msg.connection of a message whose
--- connection closed before the handler ran): not kept, answers as a closed connection.
function Connection._detached(id, f)
  return new(id, f, true)
end

--- The connection closed: this state forgets its object (and so its cvars). An object the
--- script still holds keeps its last values.
function Connection._release(id)
  local o = objects[id]
  if o then
    rawset(o, "_gone", true)
    objects[id] = nil
  end
end

--- A reload installed this state: the core hands over what an older state keeps of a
--- live connection (its fields and a copy of its cvars), unless this state has cvars for
--- it already.
function Connection._adopt(id, f, cv)
  local o = objects[id]
  if o and rawget(o, "_cv") then return end
  if not o then
    o = new(id, f)
    objects[id] = o
  end
  rawset(o, "_cv", cv)
end

--- Runs _G[tname][fname](conn, arg) (the core checked it exists). Returns false when the
--- handler returned false (a rejection), else true; an error propagates to the core,
--- which logs it and rejects.
function Connection._dispatch(tname, fname, id, transport, remote_ip, remote_port, local_ip, local_port,
                              tls_version, tls_sni, arg)
  local t = _G[tname]
  local f = type(t) == "table" and t[fname]
  if type(f) ~= "function" then return true end
  local conn = Connection._object(id, transport, remote_ip, remote_port, local_ip, local_port, tls_version, tls_sni)
  if fname == "on_connection" then setmetatable(arg, HttpRequest) end
  return f(conn, arg) ~= false
end

--- Tests: replaces the C functions (a table with lunasip_conn_* fields); returns the old.
function Connection._set_capi(c)
  local old = capi
  capi = c
  return old
end

return Connection
