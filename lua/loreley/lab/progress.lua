-- loreley.lab.progress: a one-line progress bar on stderr, for long lab runs.
--
--   local progress = require "loreley.lab.progress"
--   local bar = progress.new { total = 1000, label = "default seed 1", enabled = nil }
--   bar:update(done[, detail])    -- redrawn at most ten times a second
--   bar:finish()                  -- clears the line
--   progress.stderr_is_terminal() -> bool
--
-- enabled = nil draws only when stderr is a terminal; true or false forces it.
local host = require "loreley.host"

local M = {}

function M.stderr_is_terminal()
  local ok, ffi = pcall(require, "ffi")
  if not ok then return false end
  local tty
  ok, tty = pcall(function()
    pcall(ffi.cdef, "int isatty(int fd);")
    return ffi.C.isatty(2) == 1
  end)
  return ok and tty or false
end

local Bar = {}
Bar.__index = Bar

function M.new(opts)
  local enabled = opts.enabled
  if enabled == nil then enabled = M.stderr_is_terminal() end
  return setmetatable({ total = math.max(1, opts.total or 1), label = opts.label or "",
    enabled = enabled, started = host.now(), last = -1, drawn = false }, Bar)
end

local WIDTH = 30

function Bar:render(done, detail)
  local fraction = math.max(0, math.min(1, done / self.total))
  local filled = math.floor(fraction * WIDTH + 0.5)
  local elapsed = host.now() - self.started
  local eta = ""
  if fraction > 0.02 and fraction < 1 then
    eta = (" eta %ds"):format(math.floor(elapsed * (1 - fraction) / fraction + 0.5))
  end
  return ("%s [%s%s] %3d%% %d/%d jobs %ds%s%s"):format(self.label, ("#"):rep(filled),
    ("."):rep(WIDTH - filled), math.floor(fraction * 100), done, self.total,
    math.floor(elapsed), eta, detail and ("  " .. detail) or "")
end

function Bar:update(done, detail)
  if not self.enabled then return end
  local now = host.now()
  if now - self.last < 0.1 and done < self.total then return end
  self.last = now
  io.stderr:write("\r\27[K" .. self:render(done, detail))
  io.stderr:flush()
  self.drawn = true
end

function Bar:finish()
  if self.enabled and self.drawn then
    io.stderr:write("\r\27[K")
    io.stderr:flush()
    self.drawn = false
  end
end

return M
