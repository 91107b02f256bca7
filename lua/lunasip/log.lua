-- lunasip.log.debug|info|notice|warn|error(fmt, ...): string.format, then one log line
-- tagged [lua] (SPEC §9). Formatting is skipped when the level is disabled.
local core = require "lunasip.ffi"
local C = core.C

local log = {}
local levels = { debug = 0, info = 1, notice = 2, warn = 3, error = 4 }

for name, level in pairs(levels) do
  log[name] = function(fmt, ...)
    if C.lunasip_log_enabled(level) == 0 then return end
    local msg = tostring(fmt)
    if select("#", ...) > 0 then
      local ok, s = pcall(string.format, msg, ...)
      -- a bad format is the caller's mistake: point the error at the caller's line
      if not ok then error("lunasip.log." .. name .. ": " .. s, 2) end
      msg = s
    end
    C.lunasip_log(level, msg, #msg)
  end
end

return log
