-- Events from Lua (SPEC §5.4), under OpenSIPS' names: raise_event, subscribe_event,
-- unsubscribe_event, fetch_event_params and the event_route table of handlers. The bus
-- itself is C (src/evi.c): raise_event never runs a handler; event_route handlers run after
-- the current message's processing, in raise order, one at a time.
local ffi = require "ffi"
local lffi = require "lunasip.ffi"
local C = lffi.C

local M = {}

local T_STR, T_INT, T_BOOL, T_NIL = 0, 1, 2, 3
local MAX_PARAMS = 64
local EINVAL, E2BIG, ENOSPC, ENOMEM, ENOENT = 22, 7, 28, 12, 2
local NAMES = "1 to 64 of A-Z a-z 0-9 _ : . -"

local function valid_name(name)
  return type(name) == "string" and C.lunasip_event_name_valid(name, #name) ~= 0
end

-- event_route: assignments are checked where they are written (the error names the
-- script's line) and tell the core which events now have a handler.
local routes = {}
local event_route = setmetatable({}, {
  __index = routes,
  __newindex = function(_, name, fn)
    if not valid_name(name) then
      error(("event_route[%q]: not an event name (%s)"):format(tostring(name), NAMES), 2)
    end
    if fn ~= nil and type(fn) ~= "function" then
      error(("event_route[%q]: expected a function, got %s"):format(name, type(fn)), 2)
    end
    routes[name] = fn
    C.lunasip_event_route_changed()
  end,
})
M.event_route = event_route

-- The handler table in use: ours, or a plain table the script put in its place.
local function handlers()
  local t = rawget(_G, "event_route")
  if t == event_route then
    return routes
  end
  return type(t) == "table" and t or nil
end

local function handler(name)
  local t = handlers()
  local h = t and t[name]
  return type(h) == "function" and h or nil
end

-- One param array reused by every raise: the call is synchronous and never re-entered.
local parr = ffi.new("struct evi_param[?]", MAX_PARAMS)

local function set_value(i, value, where, level)
  local p = parr[i]
  local tv = type(value)
  p.s, p.slen, p.i = nil, 0, 0
  if tv == "string" then
    p.type, p.s, p.slen = T_STR, value, #value
  elseif tv == "number" then
    if value ~= value or value % 1 ~= 0 or value >= 2^63 or value < -2^63 then
      error(("raise_event: %s: %s is not an integer (values are strings, integers, booleans or nil)")
        :format(where, tostring(value)), level)
    end
    p.type, p.i = T_INT, value
  elseif tv == "boolean" then
    p.type, p.i = T_BOOL, value and 1 or 0
  elseif tv == "nil" then
    p.type = T_NIL
  elseif tv == "cdata" and ffi.istype("int64_t", value) then
    p.type, p.i = T_INT, value
  else
    error(("raise_event: %s: a %s cannot be sent (values are strings, integers, booleans or nil)")
      :format(where, tv), level)
  end
end

local function set_name(i, name)
  parr[i].name, parr[i].nlen = name, name and #name or 0
end

local MIX = "raise_event: params must be a map, an ordered list of {name, value} or a list of values, not a mix"

local function pair_of(params, i, level)
  local pair = params[i]
  if type(pair) ~= "table" or type(pair[1]) ~= "string" or pair[1] == "" then
    error(("raise_event: params[%d] must be a {name, value} pair"):format(i), level)
  end
  return pair
end

-- Error levels below count the frames up to raise_event's caller: raise_event -> encode ->
-- encode_any or a generated encoder -> set_value / pair_of.

-- The general encoder: any number of params (up to MAX_PARAMS). Loops over the table.
local function encode_any(params)
  local len = #params
  local total = 0
  for _ in pairs(params) do total = total + 1 end
  if total > MAX_PARAMS then
    error(("raise_event: %d params, at most %d"):format(total, MAX_PARAMS), 4)
  end
  if len > 0 and len ~= total then
    error(MIX, 4)
  end
  local n = 0
  if len > 0 and type(params[1]) == "table" then
    for i = 1, len do
      local pair = pair_of(params, i, 5)
      set_name(n, pair[1])
      set_value(n, pair[2], pair[1], 5)
      n = n + 1
    end
  elseif len > 0 then
    for i = 1, len do
      set_name(n, nil)
      set_value(n, params[i], "params[" .. i .. "]", 5)
      n = n + 1
    end
  elseif total > 0 then
    local keys = {}
    for k in pairs(params) do
      if type(k) ~= "string" or k == "" then
        error("raise_event: param names must be non-empty strings", 4)
      end
      keys[#keys + 1] = k
    end
    table.sort(keys)
    for i = 1, #keys do
      set_name(n, keys[i])
      set_value(n, params[keys[i]], keys[i], 5)
      n = n + 1
    end
  end
  return n
end

-- The fast path, for up to FAST params: straight-line code without a Lua loop. A loop inside
-- raise_event would get a trace of its own and keep the JIT from compiling the handler that
-- calls it (on_request would then run in the interpreter, several µs a request).
local FAST = 8

-- The keys of t in next() order, in a new table; nil when t is empty, false past FAST keys.
local keys_of
do
  local src = { "local next = next\nreturn function(t)\n  local k1 = next(t)\n  if k1 == nil then return nil end\n" }
  for i = 2, FAST + 1 do
    local list = {}
    for j = 1, i - 1 do list[j] = "k" .. j end
    src[#src + 1] = ("  local k%d = next(t, k%d)\n  if k%d == nil then return { %s } end\n")
      :format(i, i - 1, i, table.concat(list, ", "))
  end
  src[#src + 1] = "  return false\nend\n"
  keys_of = assert(loadstring(table.concat(src), "=lunasip.events.keys_of"))()
end

-- encoders[form][n](params, keys) for n = 1..FAST, generated once: set params 0..n-1 of parr.
local encoders = { map = {}, ordered = {}, positional = {} }
do
  local env = { set_name = set_name, set_value = set_value, pair_of = pair_of, sort = table.sort,
                type = type, error = error }
  for n = 1, FAST do
    local m = { "return function(t, ks)\n" }
    for i = 1, n do
      m[#m + 1] = ("  if type(ks[%d]) ~= 'string' or ks[%d] == '' then error('raise_event: param names must be non-empty strings', 4) end\n")
        :format(i, i)
    end
    m[#m + 1] = n > 1 and "  sort(ks)\n" or ""
    local o = { "return function(t)\n" }
    local pos = { "return function(t)\n" }
    for i = 1, n do
      m[#m + 1] = ("  set_name(%d, ks[%d]); set_value(%d, t[ks[%d]], ks[%d], 5)\n"):format(i - 1, i, i - 1, i, i)
      o[#o + 1] = ("  local p%d = pair_of(t, %d, 5); set_name(%d, p%d[1]); set_value(%d, p%d[2], p%d[1], 5)\n")
        :format(i, i, i - 1, i, i - 1, i, i)
      pos[#pos + 1] = ("  set_name(%d, nil); set_value(%d, t[%d], 'params[%d]', 5)\n"):format(i - 1, i - 1, i, i)
    end
    for form, code in pairs({ map = m, ordered = o, positional = pos }) do
      code[#code + 1] = "end\n"
      local f = assert(loadstring(table.concat(code), "=lunasip.events." .. form))
      setfenv(f, env)
      encoders[form][n] = f()
    end
  end
end

local function encode(params)
  local ks = keys_of(params)
  if ks == nil then
    return 0
  elseif ks == false then
    local n = encode_any(params) -- not a tail call: the error levels count encode's frame
    return n
  end
  local n = #ks
  local first = params[1]
  if first == nil then
    encoders.map[n](params, ks)
  elseif #params ~= n then
    error(MIX, 3)
  elseif type(first) == "table" then
    encoders.ordered[n](params)
  else
    encoders.positional[n](params)
  end
  return n
end

--- raise_event(name, params?) -> number of subscriptions it was queued for.
--- params: a map {caller = "alice"} (sent in key order), an ordered list
--- {{"caller", "alice"}, {"code", 200}}, or positional values {"alice", 200}.
function M.raise_event(name, params)
  if not valid_name(name) then
    error(("raise_event: %q is not an event name (%s)"):format(tostring(name), NAMES), 2)
  end
  local n = 0
  if params ~= nil then
    if type(params) ~= "table" then
      error("raise_event: params must be a table, got " .. type(params), 2)
    end
    n = encode(params)
  end
  -- with handlers always: the core asks the script installed when the handlers run (a
  -- callback of a script replaced by a reload raises for the new one's event_route)
  -- (parr keeps pointers to this raise's strings until the next one: C never reads it after)
  local rc = C.lunasip_event_raise(name, #name, parr, n, 1)
  if rc >= 0 then
    return rc
  elseif rc == -E2BIG then
    return nil, "payload above 64 KB"
  elseif rc == -ENOSPC then
    return nil, "too many distinct events"
  elseif rc == -ENOMEM then
    return nil, "out of memory"
  end
  error("raise_event: invalid params (names up to 64 bytes, no control characters)", 2)
end

local errbuf = ffi.new("char[?]", 512)

--- subscribe_event(name, socket, expire?) -> true. expire in seconds; nil or 0 = never.
--- A bad socket is an error; nil, err for a refusal at run time (too many subscriptions).
function M.subscribe_event(name, socket, expire)
  if not valid_name(name) then
    error(("subscribe_event: %q is not an event name (%s)"):format(tostring(name), NAMES), 2)
  end
  if type(socket) ~= "string" then
    error("subscribe_event: the socket must be a string such as \"udp:127.0.0.1:8888\"", 2)
  end
  if expire ~= nil and (type(expire) ~= "number" or expire < 0 or expire ~= expire) then
    error("subscribe_event: expire must be a number of seconds (0 or nil = never)", 2)
  end
  local rc = C.lunasip_event_subscribe(name, #name, socket, #socket, expire or 0, errbuf, 512)
  if rc == 0 then
    return true
  end
  local err = ffi.string(errbuf)
  if rc == -EINVAL then
    error("subscribe_event: " .. err, 2)
  end
  return nil, err
end

--- unsubscribe_event(name, socket) -> true, or nil, "not subscribed".
function M.unsubscribe_event(name, socket)
  if type(name) ~= "string" or type(socket) ~= "string" then
    error("unsubscribe_event(name, socket): both are strings", 2)
  end
  local rc = C.lunasip_event_unsubscribe(name, #name, socket, #socket)
  if rc == 0 then
    return true
  end
  return nil, "not subscribed"
end

local pname = ffi.new("const char *[1]")
local pnparams = ffi.new("size_t[1]")
local pnlen = ffi.new("size_t[1]")
local ptype = ffi.new("int[1]")
local ps = ffi.new("const char *[1]")
local pslen = ffi.new("size_t[1]")
local pi = ffi.new("int64_t[1]")

local function param(i)
  if C.lunasip_event_param(i, pname, pnlen, ptype, ps, pslen, pi) ~= 0 then
    return nil, nil
  end
  local t = ptype[0]
  local v
  if t == T_STR then
    v = ffi.string(ps[0], pslen[0])
  elseif t == T_INT then
    v = tonumber(pi[0])
  elseif t == T_BOOL then
    v = pi[0] ~= 0
  end
  local nm = pname[0] ~= nil and ffi.string(pname[0], pnlen[0]) or nil
  return nm, v
end

--- fetch_event_params() -> table of the running event's params (by name, or a list for
--- positional ones); fetch_event_params("a", "b") -> their values (a number picks a
--- positional param). Only inside an event_route handler.
function M.fetch_event_params(...)
  if C.lunasip_event_current(pname, pnparams) ~= 0 then
    error("fetch_event_params: only inside an event_route handler", 2)
  end
  local n = tonumber(pnparams[0])
  local nargs = select("#", ...)
  if nargs == 0 then
    local t = {}
    for i = 0, n - 1 do
      local nm, v = param(i)
      if nm then t[nm] = v else t[i + 1] = v end
    end
    return t
  end
  local out = {}
  for k = 1, nargs do
    local want = select(k, ...)
    if type(want) == "number" then
      if want >= 1 and want <= n and want % 1 == 0 then
        local _, v = param(want - 1)
        out[k] = v
      end
    elseif type(want) == "string" then
      for i = 0, n - 1 do
        local nm, v = param(i)
        if nm == want then
          out[k] = v
          break
        end
      end
    else
      error("fetch_event_params: pass param names (or positions)", 2)
    end
  end
  return unpack(out, 1, nargs)
end

--- The current event's name inside an event_route handler (nil outside).
function M.current_event()
  if C.lunasip_event_current(pname, pnparams) ~= 0 then
    return nil
  end
  return ffi.string(pname[0])
end

-- Called by the core (src/lvm.c).

function M.has_route(name)
  return handler(name) ~= nil
end

function M.dispatch(name)
  local h = handler(name)
  if h then
    h()
  end
end

-- After server.lua ran: a script that replaced event_route with its own table gets the
-- same checks the proxy table makes. Returns nil or an error message.
function M.check()
  local t = rawget(_G, "event_route")
  if t == event_route then
    return nil
  end
  if type(t) ~= "table" then
    return "event_route must stay a table, got " .. type(t)
  end
  for name, fn in pairs(t) do
    if not valid_name(name) then
      return ("event_route[%q]: not an event name (%s)"):format(tostring(name), NAMES)
    end
    if type(fn) ~= "function" then
      return ("event_route[%q]: expected a function, got %s"):format(name, type(fn))
    end
  end
  return nil
end

return M
