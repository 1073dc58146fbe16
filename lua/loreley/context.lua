-- loreley.context: the `ctx` a policy's hooks receive.
--
-- The host creates one ctx at start-up and keeps it for the whole run, across policy
-- reloads: whatever a policy stores in it (ctx.state, connections, caches) survives a
-- SIGHUP. The host sets these fields:
--   ctx.tick            tick counter (1 for the first tick; 0 during init)
--   ctx.once            true under --once
--   ctx.args            the policy arguments given after "--"
--   ctx.settings        the loaded loreley.settings table
--   ctx.policy_path, ctx.policy_version (12 hex digits of the file's SHA-256)
--   ctx.reloads         how many reloads succeeded
--   ctx.tick_started, ctx.last_tick_seconds
--   ctx.reload_failures how many reloads failed (the running policy was kept)
-- and ctx.stats collects per-stage counters for the metrics endpoint: ctx.stats.stages[name]
-- = {runs, failures, seconds, last_seconds, last_error, histogram (loreley.metrics)}.
-- When the HTTP face runs (docs/http.md), ctx.monitor holds its state and ctx.paused is
-- true while scheduling is paused (loreley.stages' schedule and dispatch honour it).
local host = require "loreley.host"
local metrics = require "loreley.metrics"

local M = {}
local Context = {}
Context.__index = Context

function M.new(fields)
  local ctx = fields or {}
  ctx.stats = ctx.stats or { stages = {}, summaries = 0 }
  ctx.tick = ctx.tick or 0
  return setmetatable(ctx, Context)
end

local function stage_stats(ctx, name)
  local s = ctx.stats.stages[name]
  if not s then
    s = { runs = 0, failures = 0, seconds = 0, last_seconds = 0, last_error = nil,
          histogram = metrics.histogram() }
    ctx.stats.stages[name] = s
  end
  return s
end

local function first_line(message)
  return (tostring(message):match("^[^\n]*"))
end

-- ctx:stage(name, fn, ...): runs fn(ctx, ...) under protection. On success returns
-- fn's results; on failure logs "stage NAME failed: reason" (traceback at DEBUG) and
-- returns 0, so the tick goes on, as the reference's stage isolation does.
function Context:stage(name, fn, ...)
  if type(name) ~= "string" then
    error("ctx:stage: name must be a string, got " .. type(name), 2)
  end
  if type(fn) ~= "function" then
    error(("ctx:stage(%q): fn must be a function, got %s"):format(name, type(fn)), 2)
  end
  local stats = stage_stats(self, name)
  local started = host.now()
  local results = { xpcall(fn, debug.traceback, self, ...) }
  local elapsed = host.now() - started
  stats.runs = stats.runs + 1
  stats.seconds = stats.seconds + elapsed
  stats.last_seconds = elapsed
  metrics.observe(stats.histogram, elapsed)
  if results[1] then
    return unpack(results, 2, table.maxn(results))
  end
  local err = results[2]
  stats.failures = stats.failures + 1
  stats.last_error = first_line(err)
  host.error("stage %s failed: %s", name, first_line(err))
  host.debug("stage %s traceback:\n%s", name, tostring(err))
  return 0
end

local summary_order = { "ingested", "dispatched", "scheduled", "unfinished" }

local function format_value(v)
  if type(v) == "number" and v == math.floor(v) and math.abs(v) < 2^53 then
    return ("%d"):format(v)
  end
  return tostring(v)
end

-- ctx:summary{ingested=1, ...}: logs the one-line tick summary, e.g.
--   tick 12 ingested=1 dispatched=4 scheduled=2 unfinished=6 (3.1 ms)
-- The four standard counters come first in that order, then other keys sorted.
function Context:summary(counts)
  counts = counts or {}
  local parts = { ("tick %d"):format(self.tick or 0) }
  local seen = {}
  for _, key in ipairs(summary_order) do
    if counts[key] ~= nil then
      parts[#parts + 1] = key .. "=" .. format_value(counts[key])
      seen[key] = true
    end
  end
  local extra = {}
  for key in pairs(counts) do
    if not seen[key] then extra[#extra + 1] = tostring(key) end
  end
  table.sort(extra)
  for _, key in ipairs(extra) do
    parts[#parts + 1] = key .. "=" .. format_value(counts[key])
  end
  local ms = self.tick_started and (host.now() - self.tick_started) * 1000 or 0
  parts[#parts + 1] = ("(%.1f ms)"):format(ms)
  local line = table.concat(parts, " ")
  self.stats.summaries = self.stats.summaries + 1
  self.stats.last_summary = counts
  host.info("%s", line)
  return line
end

M.Context = Context
return M
