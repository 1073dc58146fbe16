-- ctest: labels=unit;cli
-- A failing stage is logged, counts 0, and neither the tick nor the loop stops.
local t = require "support.t"
local context = require "loreley.context"

local P = t.fixtures .. "/policies/"

t.case("daemon: a failing stage is isolated and the loop goes on", function()
  local r = t.run_host { P .. "stages.lua" }
  t.eq(r.code, 0)
  local failures = select(2, r.stderr:gsub("stage boom failed: [^\n]*stages%.lua:8: disk on fire", ""))
  t.eq(failures, 3, "one logged failure per tick")
  t.match(r.stderr, "tick 1 ingested=1 dispatched=0 scheduled=7 unfinished=1 %(%d+%.%d ms%)")
  t.match(r.stderr, "tick 3 ingested=1 dispatched=0 scheduled=7 unfinished=3")
  t.match(r.stderr, "third ran 3 times")
end)

t.case("ctx:stage returns results, or 0 on failure, and counts both", function()
  local ctx = context.new { tick = 1 }
  local a, b = ctx:stage("two", function(_, x) return x, x + 1 end, 5)
  t.eq(a, 5)
  t.eq(b, 6)
  t.eq(ctx:stage("bad", function() error({ code = 1 }) end), 0)
  t.eq(ctx:stage("bad", function() local x = nil; return x.y end), 0)
  t.eq(ctx.stats.stages.two.runs, 1)
  t.eq(ctx.stats.stages.two.failures, 0)
  t.eq(ctx.stats.stages.bad.runs, 2)
  t.eq(ctx.stats.stages.bad.failures, 2)
  t.match(ctx.stats.stages.bad.last_error, "attempt to index local 'x'")
end)

t.case("ctx:stage rejects misuse", function()
  local ctx = context.new {}
  t.raises(function() ctx:stage(nil, function() end) end, "name must be a string")
  t.raises(function() ctx:stage("x", 42) end, "fn must be a function")
end)

t.case("ctx:summary orders the standard counters first", function()
  local ctx = context.new { tick = 12 }
  local line = ctx:summary { unfinished = 6, zeta = 1, ingested = 1, scheduled = 2, dispatched = 4, alpha = "x" }
  t.match(line, "^tick 12 ingested=1 dispatched=4 scheduled=2 unfinished=6 alpha=x zeta=1 %(%d+%.%d ms%)$")
end)

t.finish()
