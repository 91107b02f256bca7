-- lunasip.Connection (lua/lunasip/connection.lua): the connection objects of SPEC §5.1/§5.2
-- (conn in the WebSocketEvents and TLS callbacks, msg.connection). Under busted there is no
-- live connection: the C side answers "gone" for every id, so objects are made the way the
-- core makes them (Connection._object, _dispatch) or through a stand-in for the C functions
-- (Connection._set_capi). The copy of cvars between Lua states after a reload runs for real:
-- the spec builds lunasip Lua states with lvm_create. Live sockets: t/integration.
local ffi = require "ffi"
local lunasip = require "lunasip"
local Connection = lunasip.Connection
local core = require "lunasip.ffi"

pcall(ffi.cdef, [[
struct lvm_env { const char *lua_dir; const char *conf_dir; const char *script; };
struct lvm;
int lvm_create(const struct lvm_env *env, struct lvm **out, char *err, size_t errlen);
void lvm_unref(struct lvm *vm);
void lvm_install(struct lvm *vm);
int lvm_system_event(struct lvm *vm, const char *name, const char *arg);
]])

-- f must fail with an error raised at f's own line (the caller's level) containing text.
local function raises(text, f)
  local ok, err = pcall(f)
  assert.is_false(ok, "expected an error containing '" .. text .. "'")
  err = tostring(err)
  local line = debug.getinfo(f, "S").linedefined
  assert.matches("connection_spec%.lua:" .. line .. ": ", err)
  assert.truthy(err:find(text, 1, true), "error '" .. err .. "' lacks '" .. text .. "'")
end

-- ids no real connection has under busted; each test releases what it made
local next_id = 9000
local made = {}
local function object(transport, remote_ip, tls)
  next_id = next_id + 1
  made[#made + 1] = next_id
  return Connection._object(next_id, transport or "tcp", remote_ip or "192.0.2.1", 40000, "127.0.0.1", 5060,
                            tls and "TLSv1.2" or nil, tls and "sip.example.com" or nil), next_id
end

after_each(function()
  for i = #made, 1, -1 do
    Connection._release(made[i])
    made[i] = nil
  end
end)

-- A stand-in for the lunasip_conn_* C functions: conns[id] = { open = bool, info = {...} }.
local function fake_c(conns)
  local calls = { close = {}, reject = {} }
  return {
    lunasip_conn_info = function(id, out)
      local c = conns[tonumber(id)]
      if not c then return core.GONE end
      ffi.fill(out, ffi.sizeof(out))
      ffi.copy(out.transport, c.info.transport)
      ffi.copy(out.remote_ip, c.info.remote_ip)
      ffi.copy(out.local_ip, c.info.local_ip)
      out.remote_port, out.local_port = c.info.remote_port, c.info.local_port
      if c.info.tls_version then ffi.copy(out.tls_version, c.info.tls_version) end
      if c.info.tls_sni then ffi.copy(out.tls_sni, c.info.tls_sni) end
      return core.OK
    end,
    lunasip_conn_is_open = function(id)
      local c = conns[tonumber(id)]
      return c and c.open and 1 or 0
    end,
    lunasip_conn_close = function(id)
      local c = conns[tonumber(id)]
      if not c or not c.open then return core.GONE end
      calls.close[#calls.close + 1] = tonumber(id)
      return core.OK
    end,
    lunasip_conn_http_reject = function(id, code, reason, rlen)
      local c = conns[tonumber(id)]
      if not (c and c.judged) then return core.NONE end
      calls.reject[#calls.reject + 1] = { code, reason and ffi.string(reason, rlen) }
      return core.OK
    end,
  }, calls
end

describe("Connection objects", function()
  it("are what require 'lunasip' exposes as lunasip.Connection", function()
    assert.equal(Connection, require "lunasip.connection")
    assert.is_function(Connection.get)
    assert.is_function(Connection.is)
  end)

  it("carry the fields the core gave, nil for TLS ones on plain transports", function()
    local c, id = object("ws", "192.0.2.7")
    assert.equal(id, c.id)
    assert.equal("ws", c.transport)
    assert.equal("192.0.2.7", c.remote_ip)
    assert.equal(40000, c.remote_port)
    assert.equal("127.0.0.1", c.local_ip)
    assert.equal(5060, c.local_port)
    assert.is_nil(c.tls_version)
    assert.is_nil(c.tls_sni)
    assert.is_true(Connection.is(c))
    assert.is_false(Connection.is({}))
    assert.is_false(Connection.is(nil))
    local t = object("tls", nil, true)
    assert.equal("TLSv1.2", t.tls_version)
    assert.equal("sip.example.com", t.tls_sni)
  end)

  it("print as transport:ip:port, IPv6 in brackets", function()
    assert.equal("tcp:192.0.2.1:40000", tostring((object())))
    assert.equal("wss:[2001:db8::1]:40000", tostring((object("wss", "2001:db8::1"))))
  end)

  it("are one object per connection, with one cvars table", function()
    local c, id = object()
    assert.equal(c, Connection._object(id, "udp", "x", 1, "y", 2))
    assert.equal("tcp", Connection._object(id).transport) -- the first values stay
    assert.is_table(c.cvars)
    assert.equal(c.cvars, c.cvars)
    c.cvars.user = "alice"
    assert.equal("alice", Connection._object(id).cvars.user)
    assert.equal(c, Connection._objects[id])
  end)

  it("refuse assignments to their fields (data goes into cvars)", function()
    local c = object()
    raises("conn.transport is read-only", function() c.transport = "udp" end)
    raises("conn.cvars is read-only", function() c.cvars = {} end)
    raises("conn.mine is read-only", function() c.mine = 1 end)
  end)

  it("of a gone connection: closed, close() a no-op, http_reject outside a callback an error", function()
    -- the real C side: no connection has that id
    local c = object()
    assert.is_false(c:is_open())
    assert.is_false(c:close())
    assert.is_false(c:close())
    raises("only valid inside WebSocketEvents.on_connection", function() c:http_reject(403) end)
  end)

  it("keep their last values and cvars once released; a new object starts afresh", function()
    local c, id = object("wss", "192.0.2.9")
    c.cvars.n = 1
    Connection._release(id)
    assert.is_nil(Connection._objects[id])
    assert.equal("wss", c.transport)
    assert.equal("192.0.2.9", c.remote_ip)
    assert.equal(1, c.cvars.n)
    assert.is_false(c:is_open())
    assert.is_false(c:close())
    local again = Connection._object(id, "wss", "192.0.2.9", 40000, "127.0.0.1", 10443)
    assert.are_not.equal(c, again)
    assert.is_nil(again.cvars.n)
    Connection._release(id)
    Connection._release(id) -- twice: harmless
  end)
end)

describe("Connection.get", function()
  local saved
  after_each(function()
    if saved then Connection._set_capi(saved) end
    saved = nil
  end)

  it("answers nil, 'gone' for an id no connection has", function()
    assert.same({ nil, "gone" }, { Connection.get(123456789) })
  end)

  it("refuses an id that is not a positive integer", function()
    raises("connection id must be a positive integer", function() Connection.get("1") end)
    raises("connection id must be a positive integer", function() Connection.get(0) end)
    raises("connection id must be a positive integer", function() Connection.get(1.5) end)
    raises("connection id must be a positive integer", function() Connection.get(nil) end)
  end)

  it("builds the object from the C side once and keeps it while the connection lives", function()
    local fake = fake_c {
      [77] = { open = true, info = { transport = "tls", remote_ip = "2001:db8::5", remote_port = 5061,
                                     local_ip = "::1", local_port = 5061, tls_version = "TLSv1.2" } },
    }
    saved = Connection._set_capi(fake)
    made[#made + 1] = 77
    local c = assert(Connection.get(77))
    assert.equal(77, c.id)
    assert.equal("tls", c.transport)
    assert.equal("2001:db8::5", c.remote_ip)
    assert.equal(5061, c.remote_port)
    assert.equal("::1", c.local_ip)
    assert.equal(5061, c.local_port)
    assert.equal("TLSv1.2", c.tls_version)
    assert.is_nil(c.tls_sni)
    assert.equal(c, Connection.get(77))
    assert.equal(c, Connection._object(77))
  end)

  it("close() asks the C side once; is_open() is false from then on", function()
    local fake, calls = fake_c {
      [78] = { open = true, info = { transport = "tcp", remote_ip = "192.0.2.1", remote_port = 1,
                                     local_ip = "192.0.2.2", local_port = 5060 } },
    }
    saved = Connection._set_capi(fake)
    made[#made + 1] = 78
    local c = assert(Connection.get(78))
    assert.is_true(c:is_open())
    assert.is_true(c:close())
    assert.is_false(c:is_open())
    assert.is_false(c:close())
    assert.same({ 78 }, calls.close)
  end)

  it("close() on a connection the C side calls gone returns false", function()
    local conns = { [79] = { open = true, info = { transport = "tcp", remote_ip = "192.0.2.1", remote_port = 1,
                                                   local_ip = "192.0.2.2", local_port = 5060 } } }
    local fake, calls = fake_c(conns)
    saved = Connection._set_capi(fake)
    made[#made + 1] = 79
    local c = assert(Connection.get(79))
    conns[79].open = false
    assert.is_false(c:is_open())
    assert.is_false(c:close())
    assert.same({}, calls.close)
  end)
end)

describe("conn:http_reject", function()
  local saved
  after_each(function()
    if saved then Connection._set_capi(saved) end
    saved = nil
  end)

  it("checks its code: an integer 400..699", function()
    local c = object("ws")
    raises("code must be an integer 400..699", function() c:http_reject() end)
    raises("code must be an integer 400..699", function() c:http_reject("403") end)
    raises("code must be an integer 400..699", function() c:http_reject(399) end)
    raises("code must be an integer 400..699", function() c:http_reject(700) end)
    raises("code must be an integer 400..699", function() c:http_reject(403.5) end)
    raises("code must be an integer 400..699", function() c:http_reject(101) end)
  end)

  it("checks its reason: a string without CR, LF or NUL, at most 256 bytes", function()
    local c = object("ws")
    raises("reason must be a string", function() c:http_reject(403, 42) end)
    raises("must not contain CR, LF or NUL", function() c:http_reject(403, "a\r\nX-Evil: 1") end)
    raises("must not contain CR, LF or NUL", function() c:http_reject(403, "a\0b") end)
    raises("reason longer than 256 bytes", function() c:http_reject(403, string.rep("x", 257)) end)
  end)

  it("inside on_connection records the refusal and closes the object", function()
    local conns = { [80] = { open = true, judged = true, info = { transport = "ws", remote_ip = "192.0.2.1",
      remote_port = 1, local_ip = "192.0.2.2", local_port = 10080 } } }
    local fake, calls = fake_c(conns)
    saved = Connection._set_capi(fake)
    made[#made + 1] = 80
    local c = assert(Connection.get(80))
    assert.is_true(c:http_reject(403, "Go Away"))
    assert.is_true(c:http_reject(404))
    assert.same({ { 403, "Go Away" }, { 404, nil } }, calls.reject)
    assert.is_false(c:is_open())
  end)

  it("the real C side refuses it with no upgrade being judged (and a valid code)", function()
    -- the C checks of code and reason come first: a direct call proves them
    local C = core.C
    assert.equal(core.EINVAL, C.lunasip_conn_http_reject(1, 399, nil, 0))
    assert.equal(core.EINVAL, C.lunasip_conn_http_reject(1, 700, nil, 0))
    assert.equal(core.EINVAL, C.lunasip_conn_http_reject(1, 403, "a\nb", 3))
    assert.equal(core.EINVAL, C.lunasip_conn_http_reject(1, 403, string.rep("x", 257), 257))
    assert.equal(core.NONE, C.lunasip_conn_http_reject(1, 403, "Forbidden", 9))
    assert.equal(core.GONE, C.lunasip_conn_close(1))
    assert.equal(0, C.lunasip_conn_is_open(1))
    assert.equal(core.GONE, C.lunasip_conn_info(1, ffi.new("struct lunasip_conn_info")))
  end)
end)

describe("Connection._dispatch (the core's way into the callbacks)", function()
  local saved_ws, saved_sip
  before_each(function()
    saved_ws, saved_sip = rawget(_G, "WebSocketEvents"), rawget(_G, "SipEvents")
  end)
  after_each(function()
    rawset(_G, "WebSocketEvents", saved_ws)
    rawset(_G, "SipEvents", saved_sip)
  end)

  local function dispatch(tname, fname, id, arg)
    made[#made + 1] = id
    return Connection._dispatch(tname, fname, id, "ws", "192.0.2.1", 40000, "127.0.0.1", 10080, nil, nil, arg)
  end

  local function http_request()
    return { method = "GET", uri = "/sip?token=abc", path = "/sip", query = "token=abc", version = "HTTP/1.1",
             host = "example.com", origin = "https://example.com",
             headers = { host = "example.com", ["sec-websocket-protocol"] = "sip", ["user-agent"] = "test" } }
  end

  it("accepts when there is no handler (no object is made)", function()
    rawset(_G, "WebSocketEvents", {})
    assert.is_true(dispatch("WebSocketEvents", "on_connection", 9501, http_request()))
    assert.is_nil(Connection._objects[9501])
    rawset(_G, "WebSocketEvents", nil)
    assert.is_true(dispatch("WebSocketEvents", "on_connection", 9502, http_request()))
  end)

  it("hands on_connection the connection object and the http_request with header()", function()
    local seen_conn, seen_req
    rawset(_G, "WebSocketEvents", { on_connection = function(conn, req) seen_conn, seen_req = conn, req end })
    assert.is_true(dispatch("WebSocketEvents", "on_connection", 9503, http_request()))
    assert.equal(Connection._objects[9503], seen_conn)
    assert.equal("ws", seen_conn.transport)
    assert.equal(10080, seen_conn.local_port)
    assert.equal("/sip", seen_req.path)
    assert.equal("token=abc", seen_req.query)
    assert.equal("https://example.com", seen_req.origin)
    assert.equal("sip", seen_req:header("Sec-WebSocket-Protocol"))
    assert.equal("test", seen_req:header("USER-AGENT"))
    assert.is_nil(seen_req:header("X-Absent"))
    raises("name must be a string", function() seen_req:header(nil) end)
  end)

  it("turns a false return into a rejection; nil or anything else accepts", function()
    rawset(_G, "SipEvents", { on_client_tls_handshake = function() return false end })
    assert.is_false(dispatch("SipEvents", "on_client_tls_handshake", 9504, {}))
    rawset(_G, "SipEvents", { on_client_tls_handshake = function() end })
    assert.is_true(dispatch("SipEvents", "on_client_tls_handshake", 9505, {}))
    rawset(_G, "SipEvents", { on_server_tls_handshake = function() return true end })
    assert.is_true(dispatch("SipEvents", "on_server_tls_handshake", 9506, {}))
  end)

  it("gives the TLS callbacks the pems list and the same object as later lookups", function()
    local got
    rawset(_G, "WebSocketEvents", { on_client_tls_handshake = function(conn, pems)
      got = pems
      conn.cvars.checked = #pems
    end })
    assert.is_true(dispatch("WebSocketEvents", "on_client_tls_handshake", 9507, { "PEM1", "PEM2" }))
    assert.same({ "PEM1", "PEM2" }, got)
    assert.equal(2, Connection._object(9507).cvars.checked)
  end)

  it("passes on_disconnection its client_closed flag", function()
    local flag
    rawset(_G, "WebSocketEvents", { on_disconnection = function(_, client_closed) flag = client_closed end })
    dispatch("WebSocketEvents", "on_disconnection", 9508, true)
    assert.is_true(flag)
    dispatch("WebSocketEvents", "on_disconnection", 9508, false)
    assert.is_false(flag)
  end)

  it("lets a handler's error through to the core (which logs it and rejects)", function()
    rawset(_G, "WebSocketEvents", { on_connection = function() error("boom", 0) end })
    assert.has_error(function() dispatch("WebSocketEvents", "on_connection", 9509, http_request()) end, "boom")
  end)
end)

describe("conn.cvars after a reload", function()
  it("asks the C side to import an older state's values once, never for a gone object", function()
    local calls = {}
    local saved_loaded, saved_preload = package.loaded["lunasip.connection"], package.preload["lunasip.core_conn"]
    package.loaded["lunasip.connection"] = nil
    package.preload["lunasip.core_conn"] = function()
      return { import_cvars = function(id, t)
        calls[#calls + 1] = id
        t.imported = "yes"
        return true
      end }
    end
    local ok, Fresh = pcall(require, "lunasip.connection")
    package.loaded["lunasip.connection"] = saved_loaded
    package.preload["lunasip.core_conn"] = saved_preload
    assert(ok, Fresh)
    assert.are_not.equal(Connection, Fresh)
    local c = Fresh._object(31, "tcp", "192.0.2.1", 1, "127.0.0.1", 5060)
    assert.equal("yes", c.cvars.imported)
    assert.equal("yes", c.cvars.imported)
    assert.same({ 31 }, calls)
    local gone = Fresh._detached(32, { transport = "tcp" })
    assert.is_nil(gone.cvars.imported)
    assert.same({ 31 }, calls)
  end)

  -- Real Lua states built by the core's lvm_create: each runs a script at load time; a
  -- failed check is an error of that script, so lvm_create returns it.
  local dir = os.tmpname()
  os.remove(dir)
  local states = {}
  local paths = {} -- lvm_create keeps a pointer to the script path for its log lines: keep them alive
  local function state(body)
    local path = dir .. "_" .. (#paths + 1) .. ".lua"
    paths[#paths + 1] = path
    local f = assert(io.open(path, "w"))
    f:write(body)
    f:close()
    local lua_dir = assert(package.searchpath("lunasip", package.path)):match("^(.*)/lunasip%.lua$")
    local env = ffi.new("struct lvm_env", { lua_dir, "/nonexistent", path })
    local out = ffi.new("struct lvm *[1]")
    local err = ffi.new("char[1024]")
    local rc = core.C.lvm_create(env, out, err, 1024)
    os.remove(path)
    if rc ~= 0 then return nil, ffi.string(err) end
    states[#states + 1] = out[0]
    return out[0]
  end
  after_each(function()
    for i = #states, 1, -1 do
      core.C.lvm_unref(states[i])
      states[i] = nil
    end
  end)

  it("copies strings, numbers, booleans and tables of those from an older state", function()
    assert(state [[
      local cv = lunasip.Connection._object(424242, "ws", "192.0.2.1", 5555, "127.0.0.1", 10080).cvars
      cv.user, cv.n, cv.flag, cv[1], cv[true] = "alice", 3.5, false, "first", "yes"
      cv.nested = { a = { b = "deep" }, list = { 1, 2, 3 } }
      cv.shared1 = { x = 1 }
      cv.shared2 = cv.shared1
      cv.self = cv
      cv.fn = print
      cv.co = coroutine.create(print)
      cv.cdata = require("ffi").new("int[1]")
      cv.mt = setmetatable({ v = 1 }, { __index = function() return "meta" end })
      cv[{}] = "a table key"
      cv.list_with_fn = { 1, print, 3 }
    ]])
    assert(state [[
      local function check(c, what) if not c then error("copied cvars: " .. what, 0) end end
      local cv = lunasip.Connection._object(424242, "ws", "192.0.2.1", 5555, "127.0.0.1", 10080).cvars
      check(cv.user == "alice" and cv.n == 3.5 and cv.flag == false, "scalars")
      check(cv[1] == "first" and cv[true] == "yes", "number and boolean keys")
      check(cv.nested.a.b == "deep" and #cv.nested.list == 3 and cv.nested.list[3] == 3, "nested tables")
      check(cv.shared1.x == 1 and cv.shared1 == cv.shared2, "shared tables stay shared")
      check(cv.self == cv, "a cycle to the root")
      check(cv.fn == nil and cv.co == nil and cv.cdata == nil, "functions, coroutines, cdata are not carried")
      check(cv.mt.v == 1 and cv.mt.other == nil and getmetatable(cv.mt) == nil, "metatables are not carried")
      check(cv.list_with_fn[1] == 1 and cv.list_with_fn[2] == nil and cv.list_with_fn[3] == 3, "holes")
      for k in pairs(cv) do check(type(k) ~= "table", "table keys are not carried") end
      -- a copy, not a shared table: this state's changes stay here
      cv.user = "bob"
      local other = lunasip.Connection._object(555, "tcp", "192.0.2.1", 1, "127.0.0.1", 5060).cvars
      check(next(other) == nil, "a connection no other state knows starts empty")
      local gone = lunasip.Connection._detached(424242, { transport = "ws" }).cvars
      check(next(gone) == nil, "a gone connection imports nothing")
    ]])
    -- a third state copies from the newest one that has the table
    local ok, err = state [[
      local cv = lunasip.Connection._object(424242, "ws", "192.0.2.1", 5555, "127.0.0.1", 10080).cvars
      if cv.user ~= "bob" then error("copied from the older state: user = " .. tostring(cv.user), 0) end
    ]]
    assert(ok, err)
  end)

  it("an imported table is this state's own: later reads do not import again", function()
    assert(state [[ lunasip.Connection._object(7777, "tcp", "h", 1, "l", 2).cvars.v = 1 ]])
    local ok, err = state [[
      local o = lunasip.Connection._object(7777, "tcp", "h", 1, "l", 2)
      o.cvars.v = nil
      if o.cvars.v ~= nil then error("imported twice", 0) end
    ]]
    assert(ok, err)
  end)

  it("a reload hands the replaced state's cvars to the new one before the old state closes", function()
    -- A is current and keeps cvars for connection 8888; installing B closes A (nothing else
    -- holds it); a third state then finds them in B, the only other state left
    local a = assert(state [[
      local o = lunasip.Connection._object(8888, "wss", "192.0.2.8", 443, "127.0.0.1", 10443, "TLSv1.2", "sni.example")
      o.cvars.user = "carol"
      o.cvars.deep = { list = { "x" } }
      lunasip.Connection._object(8889, "tcp", "192.0.2.8", 1, "127.0.0.1", 5060) -- no cvars: nothing to hand over
    ]])
    table.remove(states) -- installed states are released by lvm_install
    core.C.lvm_install(a)
    local b = assert(state [[ B_LOADED = true ]])
    table.remove(states)
    core.C.lvm_install(b) -- A closes here
    local ok, err = state [[
      local o = lunasip.Connection._object(8888, "x", "x", 0, "x", 0)
      local function check(c, what) if not c then error("handed over: " .. what, 0) end end
      check(o.cvars.user == "carol" and o.cvars.deep.list[1] == "x", "cvars")
    ]]
    core.C.lvm_install(nil) -- B closes
    assert(ok, err)
  end)

  it("the new state keeps the fields of a handed-over connection and its own cvars win", function()
    local a = assert(state [[
      lunasip.Connection._object(8890, "wss", "192.0.2.8", 443, "127.0.0.1", 10443, "TLSv1.2", "sni.example").cvars.v = "old"
      lunasip.Connection._object(8891, "ws", "192.0.2.9", 80, "127.0.0.1", 10080).cvars.v = "old"
    ]])
    table.remove(states)
    core.C.lvm_install(a)
    local b = assert(state [[
      lunasip.Connection._object(8891, "ws", "192.0.2.9", 80, "127.0.0.1", 10080).cvars.v = "new"
      lunasip.Connection._object(8892, "tcp", "192.0.2.9", 1, "127.0.0.1", 5060)
      function SystemEvents.on_started()
        local objs = lunasip.Connection._objects
        local o = assert(objs[8890], "8890 handed over")
        assert(o.transport == "wss" and o.remote_ip == "192.0.2.8" and o.remote_port == 443, "fields")
        assert(o.local_port == 10443 and o.tls_version == "TLSv1.2" and o.tls_sni == "sni.example", "tls fields")
        assert(o.id == 8890 and lunasip.Connection.is(o) and o.cvars.v == "old", "object")
        assert(objs[8891].cvars.v == "new", "B's own cvars win")
        assert(objs[8892].transport == "tcp", "B's own object stays")
      end
    ]])
    table.remove(states)
    core.C.lvm_install(b)
    assert.equal(0, core.C.lvm_system_event(b, "on_started", nil))
    -- B's objects, seen from a state created while B is current: copied lazily from B
    local ok, err = state [[
      local c1 = lunasip.Connection._object(8890, "?", "?", 0, "?", 0)
      local c2 = lunasip.Connection._object(8891, "?", "?", 0, "?", 0)
      if c1.cvars.v ~= "old" then error("8890: " .. tostring(c1.cvars.v), 0) end
      if c2.cvars.v ~= "new" then error("8891: " .. tostring(c2.cvars.v), 0) end
    ]]
    core.C.lvm_install(nil)
    assert(ok, err)
  end)

  it("the failed check of a script is reported (the harness itself works)", function()
    local ok, err = state [[ error("deliberate", 0) ]]
    assert.is_nil(ok)
    assert.matches("deliberate", err)
  end)
end)
