-- ctest: labels=e2e;pg;redis;git timeout=300
-- examples/status.lua prints the archive summary of a deployment, read-only, and its
-- figures agree with the database; --out writes the heatmap and the elites CSV.
local t = require "support.t"
local sys = require "loreley.sys"
local db = require "loreley.db"

package.path = t.source_dir .. "/examples/?.lua;" .. package.path
local setup = require "demo_setup"

local dir = t.tmpdir()
local stack = setup.start(dir .. "/stack")
local env = setup.environment(stack, { SCHEDULER_MAX_TOTAL_JOBS = "16" })
local w = setup.spawn_worker(t.host_binary, env, {}, dir .. "/w.log")
local pid = setup.spawn_host(t.host_binary, env, t.source_dir .. "/examples/policy.lua", dir .. "/h.log")
local st = sys.wait(pid, 120)
sys.kill(w, "TERM")
sys.wait(w, 10)
assert(st and st.code == 0, t.read(dir .. "/h.log"))
local conn = assert(db.connect(stack.pg.url))

t.case("the summary matches the database", function()
  local out = dir .. "/out"
  assert(sys.run { "mkdir", "-p", out })
  local r = assert(sys.run({ t.host_binary, "--once", t.source_dir .. "/examples/status.lua", "--",
    "--out", out }, { env = env }))
  t.eq(r.code, 0, r.stderr)
  local cells = assert(conn:query("SELECT count(*) AS n, max(objective) AS best FROM loreley_archive_cells"))[1]
  t.match(r.stdout, "jobs: 16 %(succeeded=16%)")
  local n, best = r.stdout:match("island main: (%d+) elites, coverage [%d%.]+%%, QD score [%-%d%.e+]+, best fitness ([%-%d%.e+]+)")
  t.eq(tonumber(n), cells.n)
  t.near(tonumber(best), cells.best, 1e-5)
  -- 12^4 cells in the demo's grid: coverage = elites / 20736
  t.match(r.stdout, ("coverage %.4f%%%%"):format(cells.n / 20736 * 100):gsub("%.", "%%."))
  local svg = t.read(out .. "/archive-main.svg")
  t.match(svg, "^<svg ")
  t.match(svg, ("%d elites"):format(cells.n))
  local csv = t.read(out .. "/elites-main.csv")
  local lines = 0
  for _ in csv:gmatch("\n") do lines = lines + 1 end
  t.eq(lines, cells.n + 1, "one CSV row per elite plus the header")
  t.match(csv, "^rank,cell,commit_hash,objective,measure_1,measure_2,measure_3,measure_4\n1,")
end)

t.case("--all lists experiments; unknown options are errors", function()
  local r = assert(sys.run({ t.host_binary, "--once", t.source_dir .. "/examples/status.lua", "--", "--all" }, { env = env }))
  t.eq(r.code, 0)
  t.match(r.stdout, "%x+%-%x+%-%x+%-%x+%-%x+  .*  16 job%(s%)")
  r = assert(sys.run({ t.host_binary, "--once", t.source_dir .. "/examples/status.lua", "--", "--bogus" }, { env = env }))
  t.eq(r.code, 1)
  t.match(r.stderr, "unknown option %-%-bogus")
end)

conn:close()
t.finish()
