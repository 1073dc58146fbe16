-- ctest: labels=unit;cli timeout=120
-- SIGTERM/SIGINT stop a host sleeping in a 30 s interval within 1 s, after shutdown;
-- SIGHUP reloads the policy, keeping the running one when the new file is broken.
local t = require "support.t"
local sys = require "loreley.sys"
local host = require "loreley.host"

local P = t.fixtures .. "/policies/"

local function stop_within(sig)
  local pid, log = t.spawn_host({ P .. "sleepy.lua" }, { env = { SCHEDULER_POLL_INTERVAL_SECONDS = "30" } })
  t.ok(t.wait_for(10, function() return (t.read(log) or ""):find("sleepy tick 1") end),
    "first tick did not happen")
  host.sleep(0.2)   -- now inside the 30 s sleep
  local sent = host.now()
  assert(sys.kill(pid, sig))
  local status = sys.wait(pid, 5)
  local took = host.now() - sent
  t.ok(status, "host did not exit")
  t.eq(status.code, 0, "exit code")
  t.ok(took < 1.0, ("exit took %.3f s"):format(took))
  local text = t.read(log)
  t.match(text, "shutdown after 1 tick%(s%)")
  t.no_match(text, "sleepy tick 2")
end

t.case("SIGTERM during a 30 s sleep exits within 1 s after shutdown", function()
  stop_within("TERM")
end)

t.case("SIGINT during a 30 s sleep exits within 1 s after shutdown", function()
  stop_within("INT")
end)

local COUNTER = [[
local host = require "loreley.host"
return {
  init = function(ctx) ctx.state = { n = 0 } end,
  tick = function(ctx)
    ctx.state.n = ctx.state.n + 1
    host.info("%s tick n=%d version=%s", "NAME", ctx.state.n, ctx.policy_version)
    return 0.05
  end,
}
]]

t.case("SIGHUP reloads a valid file; ctx state survives", function()
  local dir = t.tmpdir()
  local path = t.write(dir .. "/policy.lua", (COUNTER:gsub("NAME", "old")))
  local pid, log = t.spawn_host { path }
  t.ok(t.wait_for(10, function() return (t.read(log) or ""):find("old tick n=3") end))
  t.write(path, (COUNTER:gsub("NAME", "new")))
  assert(sys.kill(pid, "HUP"))
  t.ok(t.wait_for(10, function() return (t.read(log) or ""):find("new tick") end),
    "new policy never ticked")
  assert(sys.kill(pid, "TERM"))
  t.eq(sys.wait(pid, 5).code, 0)
  local text = t.read(log)
  t.match(text, "policy reloaded: .*policy%.lua %(version %x+%)")
  -- The counter kept counting across the reload: ctx.state survived.
  local last_old = 0
  for n in text:gmatch("old tick n=(%d+)") do last_old = tonumber(n) end
  local first_new = tonumber(text:match("new tick n=(%d+)"))
  t.eq(first_new, last_old + 1, "state survives the reload")
  local v_old = text:match("old tick n=%d+ version=(%x+)")
  local v_new = text:match("new tick n=%d+ version=(%x+)")
  t.ok(v_old ~= v_new, "policy version changes")
end)

t.case("SIGHUP with a broken file keeps the running policy", function()
  local dir = t.tmpdir()
  local path = t.write(dir .. "/policy.lua", (COUNTER:gsub("NAME", "old")))
  local pid, log = t.spawn_host { path }
  t.ok(t.wait_for(10, function() return (t.read(log) or ""):find("old tick n=2") end))
  for _, broken in ipairs {
    "return { tick = function( end }",                      -- syntax error
    "return { tock = function() end }",                     -- unknown key, no tick
    "error('refusing to load')",                            -- error while loading
  } do
    t.write(path, broken)
    local before = #(t.read(log) or "")
    assert(sys.kill(pid, "HUP"))
    t.ok(t.wait_for(10, function()
      local text = t.read(log) or ""
      return text:sub(before + 1):find("policy reload failed; keeping the running policy")
    end), "reload failure not logged for: " .. broken)
  end
  local n_before = select(2, (t.read(log) or ""):gsub("old tick", ""))
  host.sleep(0.3)
  local n_after = select(2, (t.read(log) or ""):gsub("old tick", ""))
  t.ok(n_after > n_before, "old policy keeps ticking")
  assert(sys.kill(pid, "TERM"))
  t.eq(sys.wait(pid, 5).code, 0)
end)

t.case("a tick longer than the poll interval is reported as slow", function()
  local dir = t.tmpdir()
  local path = t.write(dir .. "/slow.lua", [[
local host = require "loreley.host"
return { tick = function(ctx) host.sleep(1.2); return false end }
]])
  local r = t.run_host({ path }, { env = { SCHEDULER_POLL_INTERVAL_SECONDS = "1" } })
  t.eq(r.code, 0)
  t.match(r.stderr, "slow tick 1: 1%.%d+ s, longer than the poll interval of 1%.000 s")
end)

t.case("tick's return value: a delay in seconds, or false to stop", function()
  local dir = t.tmpdir()
  local path = t.write(dir .. "/fast.lua", [[
local host = require "loreley.host"
return {
  init = function(ctx) ctx.state = { started = host.now() } end,
  tick = function(ctx)
    host.info("tick at %.3f", host.now() - ctx.state.started)
    if ctx.tick >= 5 then return false end
    return 0.2
  end,
}
]])
  local started = require("loreley.host").now()
  local r = t.run_host({ path }, { env = { SCHEDULER_POLL_INTERVAL_SECONDS = "30" } })
  local took = require("loreley.host").now() - started
  t.eq(r.code, 0)
  local times = {}
  for v in r.stderr:gmatch("tick at (%d+%.%d+)") do times[#times + 1] = tonumber(v) end
  t.eq(#times, 5, "five ticks, then false stopped the host")
  for i = 2, #times do
    t.ok(times[i] - times[i - 1] >= 0.19, ("ticks %d and %d only %.3f s apart"):format(i - 1, i, times[i] - times[i - 1]))
  end
  t.ok(took < 20, "the 30 s poll interval was used instead of the returned delay")
end)

t.finish()
