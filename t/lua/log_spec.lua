-- lunasip.log (lua/lunasip/log.lua): string.format, then one "[lua]" line through the C
-- logger (SPEC §9). Lines go to stderr; the specs capture fd 2 to read them back.
local ffi = require "ffi"
local lunasip = require "lunasip"
local log = lunasip.log
local C = require("lunasip.ffi").C

pcall(ffi.cdef, [[
int dup(int fd);
int dup2(int oldfd, int newfd);
int close(int fd);
int open(const char *path, int flags, ...);
]])
pcall(ffi.cdef, [[void log_set_level(int l);]])

local O_WRONLY, O_CREAT, O_TRUNC = 1, 64, 512

-- Runs f with stderr redirected to a file; returns what was written.
local function capture(f)
  local path = os.tmpname()
  local fd = ffi.C.open(path, O_WRONLY + O_CREAT + O_TRUNC, ffi.cast("int", 384))
  assert(fd >= 0, "open " .. path)
  io.stderr:flush()
  local saved = ffi.C.dup(2)
  ffi.C.dup2(fd, 2)
  ffi.C.close(fd)
  local ok, err = pcall(f)
  ffi.C.dup2(saved, 2)
  ffi.C.close(saved)
  local h = assert(io.open(path, "rb"))
  local out = h:read("*a")
  h:close()
  os.remove(path)
  assert(ok, err)
  return out
end

describe("lunasip.log", function()
  after_each(function() C.log_set_level(1) end) -- info, the default

  it("has the five levels", function()
    for _, name in ipairs { "debug", "info", "notice", "warn", "error" } do
      assert.is_function(log[name])
    end
  end)

  it("formats its arguments and writes one [lua] line with the level", function()
    local out = capture(function() log.info("hello %s %d %5.2f", "x", 3, 1.5) end)
    assert.matches("^%S+ lunasip%[%d+%] INFO %[lua%] hello x 3  1%.50\n$", out)
  end)

  it("writes each level under its name", function()
    C.log_set_level(0)
    local out = capture(function()
      log.debug("d"); log.info("i"); log.notice("n"); log.warn("w"); log.error("e")
    end)
    local levels = {}
    for lvl in out:gmatch(" (%u+) %[lua%] %a\n") do levels[#levels + 1] = lvl end
    assert.same({ "DEBUG", "INFO", "NOTICE", "WARN", "ERROR" }, levels)
  end)

  it("leaves out levels below the current one", function()
    C.log_set_level(3)
    local out = capture(function() log.info("quiet"); log.warn("loud") end)
    assert.is_nil(out:find("quiet", 1, true))
    assert.truthy(out:find("loud", 1, true))
  end)

  it("does not raise for format args of any type, or a lone string with %", function()
    local out = capture(function()
      log.info("nil %s", nil)
      log.info("table %s", {})
      log.info("bool %s %s", true, false)
      log.warn("100%")
      log.info("%s")
      log.info(42)
      log.notice()
    end)
    assert.truthy(out:find("[lua] nil nil\n", 1, true))
    assert.truthy(out:find("[lua] bool true false\n", 1, true))
    assert.truthy(out:find("[lua] 100%\n", 1, true))
    assert.truthy(out:find("[lua] %s\n", 1, true))
    assert.truthy(out:find("[lua] 42\n", 1, true))
    assert.truthy(out:find("[lua] nil\n", 1, true))
  end)

  it("raises for a bad format, pointing at the caller", function()
    local f = function() log.error("%d", "notanumber") end
    local ok, err = pcall(f)
    assert.is_false(ok)
    assert.matches("log_spec%.lua:" .. debug.getinfo(f, "S").linedefined .. ": ", err)
    assert.matches("number expected", err)
    local g = function() log.warn("100% %q", "x") end
    local ok2, err2 = pcall(g)
    assert.is_false(ok2)
    assert.matches("log_spec%.lua:" .. debug.getinfo(g, "S").linedefined .. ": ", err2)
  end)

  it("skips formatting (so does not raise) at a disabled level", function()
    assert.has_no.errors(function() log.debug("%d", "notanumber") end)
  end)

  it("escapes control characters so a value cannot forge a line", function()
    local out = capture(function() log.info("user=%s", "a\nlunasip[1] ERROR forged\0") end)
    local lines = select(2, out:gsub("\n", "\n"))
    assert.equal(1, lines)
    assert.truthy(out:find("user=a\\x0alunasip[1] ERROR forged\\x00\n", 1, true))
  end)

  it("caps a long message", function()
    local out = capture(function() log.info("%s", string.rep("x", 10000)) end)
    assert.is_true(#out < 5000)
    assert.matches("%.%.%.\n$", out)
  end)
end)
