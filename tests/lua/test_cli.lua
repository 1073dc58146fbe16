-- ctest: labels=unit;cli
-- The command line and the policy contract: each bad policy gives its message and exit
-- code; --once runs scripts; usage errors exit 2.
local t = require "support.t"

local P = t.fixtures .. "/policies/"

t.case("--help and --version exit 0", function()
  local r = t.run_host { "--help" }
  t.eq(r.code, 0)
  t.match(r.stdout, "usage: loreley%-host")
  r = t.run_host { "--version" }
  t.eq(r.code, 0)
  t.match(r.stdout, "^loreley%-host %d+%.%d+%.%d+")
end)

t.case("usage errors exit 2", function()
  local r = t.run_host { "--bogus" }
  t.eq(r.code, 2)
  t.match(r.stderr, "unknown option '%-%-bogus'")
  r = t.run_host {}
  t.eq(r.code, 2)
  t.match(r.stderr, "no policy file given")
  r = t.run_host { "--log-level", "LOUD", P .. "sleepy.lua" }
  t.eq(r.code, 2)
  t.match(r.stderr, "unknown log level 'LOUD'")
  r = t.run_host { "--once", "--check", P .. "sleepy.lua" }
  t.eq(r.code, 2)
  r = t.run_host { P .. "a.lua", P .. "b.lua" }
  t.eq(r.code, 2)
  t.match(r.stderr, "unexpected argument")
end)

t.case("missing policy file exits 1", function()
  local r = t.run_host { "--once", P .. "does_not_exist.lua" }
  t.eq(r.code, 1)
  t.match(r.stderr, "cannot open .*does_not_exist%.lua")
end)

t.case("syntax error: file:line and exit 1", function()
  local r = t.run_host { "--once", P .. "syntax_error.lua" }
  t.eq(r.code, 1)
  t.match(r.stderr, "syntax_error%.lua:3: unexpected symbol near '='")
end)

t.case("runtime error while loading: file:line, traceback, exit 1", function()
  local r = t.run_host { P .. "runtime_error_at_load.lua" }
  t.eq(r.code, 1)
  t.match(r.stderr, "runtime_error_at_load%.lua:2: attempt to index local 't' %(a nil value%)")
  t.match(r.stderr, "stack traceback:")
end)

t.case("no tick: exit 1", function()
  local r = t.run_host { P .. "no_tick.lua" }
  t.eq(r.code, 1)
  t.match(r.stderr, "no_tick%.lua: the policy table has no 'tick' function")
end)

t.case("error in init: file:line, traceback, exit 1, no tick", function()
  local r = t.run_host { P .. "init_error.lua" }
  t.eq(r.code, 1)
  t.match(r.stderr, "init failed: .*init_error%.lua:2: cannot reach the database")
  t.match(r.stderr, "stack traceback:")
  t.match(r.stderr, "init_error%.lua:7")
end)

t.case("unknown key: exit 1 naming the key", function()
  local r = t.run_host { "--once", P .. "unknown_key.lua" }
  t.eq(r.code, 1)
  t.match(r.stderr, "unknown key 'shutdwn' in the policy table")
end)

t.case("undeclared global read in tick: named, exit 1 under --once", function()
  local r = t.run_host { "--once", P .. "undeclared_read.lua" }
  t.eq(r.code, 1)
  t.match(r.stderr, "undeclared_read%.lua:3: undeclared global 'batch_sise'")
end)

t.case("undeclared global write in tick: named, exit 1 under --once", function()
  local r = t.run_host { "--once", P .. "undeclared_write.lua" }
  t.eq(r.code, 1)
  t.match(r.stderr, "undeclared_write%.lua:3: assignment to undeclared global 'counter'")
end)

t.case("tick returning the wrong type", function()
  local r = t.run_host { "--once", P .. "wrong_return.lua" }
  t.eq(r.code, 1)
  t.match(r.stderr, "tick 1 returned a string; expected a delay in seconds, nil or false")
end)

t.case("tick raising under --once: exit 1 with traceback", function()
  local r = t.run_host { "--once", P .. "tick_error.lua" }
  t.eq(r.code, 1)
  t.match(r.stderr, "tick 1 failed: .*tick_error%.lua:3: tick exploded")
end)

t.case("infinite recursion in tick is an error, not a crash", function()
  local r = t.run_host { "--once", P .. "recursion.lua" }
  t.eq(r.code, 1)
  t.match(r.stderr, "stack overflow")
end)

t.case("daemon mode refuses a file that returns no policy table", function()
  local r = t.run_host { P .. "not_a_table.lua" }
  t.eq(r.code, 1)
  t.match(r.stderr, "a policy must return a table with a tick function, got number")
end)

t.case("--once runs a script to completion, with arguments", function()
  local r = t.run_host { "--once", P .. "script.lua", "--", "a", "b" }
  t.eq(r.code, 0)
  t.match(r.stderr, "script ran with 2 argument%(s%): a,b")
  r = t.run_host { "--once", P .. "script_error.lua" }
  t.eq(r.code, 1)
  t.match(r.stderr, "script_error%.lua:3: script failed on purpose")
end)

t.case("--once with a policy: init, one tick, shutdown", function()
  local r = t.run_host { "--once", P .. "sleepy.lua" }
  t.eq(r.code, 0)
  t.match(r.stderr, "sleepy tick 1")
  t.match(r.stderr, "shutdown after 1 tick%(s%)")
  t.no_match(r.stderr, "sleepy tick 2")
end)

t.case("--log-level filters messages", function()
  local r = t.run_host { "--once", "--log-level", "ERROR", P .. "sleepy.lua" }
  t.eq(r.code, 0)
  t.no_match(r.stderr, "sleepy tick")
  r = t.run_host({ "--once", P .. "sleepy.lua" }, { env = { LOG_LEVEL = "WARNING" } })
  t.eq(r.code, 0)
  t.no_match(r.stderr, "sleepy tick")
end)

t.case("LOG_FORMAT=json gives one JSON object per line", function()
  local cjson = require "cjson"
  local r = t.run_host({ "--once", P .. "sleepy.lua" }, { env = { LOG_FORMAT = "json" } })
  t.eq(r.code, 0)
  local n = 0
  for line in r.stderr:gmatch("[^\n]+") do
    local obj = cjson.decode(line)
    t.ok(obj.time and obj.level and obj.message, line)
    n = n + 1
  end
  t.ok(n >= 2, "expected at least two log lines")
end)

t.case("coloured levels on a terminal, plain lines otherwise, NO_COLOR respected", function()
  local sys = require "loreley.sys"
  local probe = sys.run { "script", "--version" }
  if not (probe and probe.code == 0) then
    io.stderr:write("  (script(1) not available: terminal case not run)\n")
  else
    local cmd = ("%s --once %s 2>&1"):format(t.host_binary, P .. "sleepy.lua")
    local r = assert(sys.run({ "script", "-qec", cmd, "/dev/null" }, { env = { NO_COLOR = false,
      LOG_FORMAT = false }, timeout = 30 }))
    t.match(r.stdout, "\27%[32mINFO", "INFO in green on a terminal")
    r = assert(sys.run({ "script", "-qec", cmd, "/dev/null" }, { env = { NO_COLOR = "1" }, timeout = 30 }))
    t.no_match(r.stdout, "\27%[", "NO_COLOR")
  end
  local r = t.run_host({ "--once", P .. "sleepy.lua" }, { env = { NO_COLOR = false } })
  t.no_match(r.stderr, "\27%[", "no colour into a pipe")
  t.match(r.stderr, "%d%d%d%d%-%d%d%-%d%d %d%d:%d%d:%d%d%.%d%d%d INFO    sleepy tick 1")
end)

t.finish()
