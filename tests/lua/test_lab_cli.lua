-- ctest: labels=unit;cli timeout=120
-- The policy lab without servers: its command line (usage errors exit 2), landscapes
-- (the built-in ones, and broken scripts reported with file:line before any server
-- starts), latency distributions, the seeded ids, the series CSV and the comparison
-- statistics.
local t = require "support.t"
local host = require "loreley.host"
local cli = require "loreley.lab.cli"
local landscape = require "loreley.lab.landscape"
local fleet = require "loreley.lab.fleet"
local clock = require "loreley.lab.clock"
local series = require "loreley.lab.series"
local lab = require "loreley.lab"

local dir = t.tmpdir()
local POLICY = t.source_dir .. "/examples/policy.lua"

-- Runs `loreley-host --simulate args...`; no server is needed for anything here.
local function simulate(args)
  local argv = { "--simulate" }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return t.run_host(argv, { timeout = 30, env = { LORELEY_LUA_DIR = false } })
end

-- --- the command line ------------------------------------------------------------------

t.case("--help and --list-landscapes exit 0", function()
  local r = simulate { "--help" }
  t.eq(r.code, 0)
  t.match(r.stdout, "usage: loreley%-host %-%-simulate %[options%] POLICY%.lua")
  t.match(r.stdout, "%-%-latency DIST")
  r = simulate { "--list-landscapes" }
  t.eq(r.code, 0)
  for _, name in ipairs { "smooth", "deceptive", "plateaus" } do
    t.match(r.stdout, "\n?" .. name .. " +%a")
  end
end)

t.case("bad command lines are usage errors (exit 2) that name the problem", function()
  local cases = {
    { { "--frobnicate", POLICY }, "unknown option '%-%-frobnicate'" },
    { {}, "no policy file given" },
    { { "--jobs", "abc", POLICY }, "%-%-jobs needs an integer >= 1, got 'abc'" },
    { { "--jobs=0", POLICY }, "%-%-jobs needs an integer >= 1, got '0'" },
    { { "--workers", "2.5", POLICY }, "%-%-workers needs an integer" },
    { { "--fail-rate", "2", POLICY }, "%-%-fail%-rate needs a number in %[0, 1%]" },
    { { "--latency", "weird:1", POLICY }, "unknown distribution 'weird'" },
    { { "--latency", "exponential:-3", POLICY }, "the mean must be > 0" },
    { { "--latency", "uniform:5", POLICY }, "uniform takes two values" },
    { { "--latency", "300", POLICY }, "expected KIND:PARAMS" },
    { { "--budgets", "10,x", POLICY }, "%-%-budgets needs an integer >= 1, got 'x'" },
    { { "--jobs", "100", "--budgets", "50,200", POLICY }, "200 is beyond the job budget" },
    { { "--seed" }, "%-%-seed needs a value" },
    { { "--set", "NOEQUALS", POLICY }, "%-%-set needs NAME=VALUE" },
    { { "--set", "SCHEDULER_MAX_TOTAL_JOBS=5", POLICY }, "the lab sets it %(%-%-jobs%)" },
    { { "--set", "SCHEDULER_POLL_INTERVAL_SECONDS=soon", POLICY },
      "SCHEDULER_POLL_INTERVAL_SECONDS='soon'" },
    { { dir .. "/missing.lua" }, "no such policy file: .*missing%.lua" },
    { { "--landscape", "nosuch", POLICY }, "unknown landscape 'nosuch' %(built%-in: smooth, deceptive, plateaus" },
    { { "--landscape", dir .. "/nofile.lua", POLICY }, "landscape .*nofile%.lua" },
  }
  for _, c in ipairs(cases) do
    local r = simulate(c[1])
    local shown = table.concat(c[1], " ")
    t.eq(r.code, 2, shown .. "; stderr: " .. r.stderr)
    t.match(r.stderr, c[2], shown)
    t.match(r.stderr, "Try 'loreley%-host %-%-simulate %-%-help'")
  end
end)

t.case("cli.parse: defaults, --opt=value, repeated --set, policy arguments after --", function()
  local o = assert(cli.parse { "a.lua", "--jobs=200", "--set", "scheduler_poll_interval_seconds=5",
    "--set", "MAPELITES_SAMPLER_INSPIRATION_COUNT=2", "b.lua", "--", "--x", "1" })
  t.same(o.policies, { "a.lua", "b.lua" })
  t.eq(o.jobs, 200)
  t.eq(o.every, 4)                   -- jobs / 50
  t.same(o.budgets, { 50, 100, 200 })
  t.eq(o.set.SCHEDULER_POLL_INTERVAL_SECONDS, "5")
  t.same(o.set_order, { "SCHEDULER_POLL_INTERVAL_SECONDS", "MAPELITES_SAMPLER_INSPIRATION_COUNT" })
  t.same(o.policy_args, { "--x", "1" })
  t.eq(o.latency.kind, "exponential")
  t.eq(o.latency.a, 300)
  t.eq(o.workers, 4)
  t.eq(o.seed, 1)
  t.eq(o.seeds, 1)
end)

-- --- landscapes -----------------------------------------------------------------------------

t.case("built-in landscapes: known values at known points", function()
  local smooth = assert(landscape.load("smooth"))
  local f, m = smooth:evaluate { 0.35, 0.35, 0.35, 0.35 }
  t.near(f, 1.0, 1e-12, "smooth optimum")
  t.same(m, { 0.35, 0.35 })
  local deceptive = assert(landscape.load("deceptive"))
  f, m = deceptive:evaluate { 0.78, 0.78 }
  t.near(f, 1.55, 1e-12, "deceptive peak: floor 0.05 + 1.5")
  t.same(m, { 0.78, 0.78 })
  f = deceptive:evaluate { 0.25, 0.25 }
  t.near(f, 0.55, 1e-12, "deceptive hill: floor 0.05 + 0.5")
  f = deceptive:evaluate { 0.55, 0.6 }
  t.near(f, 0.05, 1e-12, "between hill and peak: the floor")
  local plateaus = assert(landscape.load("plateaus"))
  f = plateaus:evaluate { 0.7, 0.35 }
  t.near(f, 1.1, 1e-12, "top terrace")
  -- two points of one terrace have the same fitness
  t.eq(plateaus:evaluate { 0.7, 0.36 }, plateaus:evaluate { 0.7, 0.355 })
  for _, name in ipairs(landscape.builtin) do
    local ls = assert(landscape.load(name))
    t.eq(ls.dims, 2, name)
    t.ok(ls:check(1), name)
  end
end)

t.case("a landscape in three lines: defaults for root, vary and bounds", function()
  local path = t.write(dir .. "/mine.lua", [[
return { dims = 2, evaluate = function(g) return 1 - (g[1] - 0.7)^2 - (g[2] - 0.2)^2, { g[1], g[2] } end }
]])
  local ls = assert(landscape.load(path))
  t.eq(ls.name, "mine")
  t.same(ls.lower, { 0, 0 })
  t.same(ls.upper, { 1, 1 })
  t.eq(ls.cells, 20)
  local g, f, m = ls:root(host.rng(1))
  t.same(g, { 0.5, 0.5 })
  t.near(f, 1 - 0.04 - 0.09, 1e-12)
  t.same(m, { 0.5, 0.5 })
  -- children stay inside the genome bounds and repeat with the same generator state
  local a = { ls:child({ 0.99, 0.01 }, { { 0.5, 0.5 } }, host.rng("x")) }
  local b = { ls:child({ 0.99, 0.01 }, { { 0.5, 0.5 } }, host.rng("x")) }
  t.same(a, b)
  for i = 1, 2 do t.ok(a[1][i] >= 0 and a[1][i] <= 1) end
end)

t.case("the example landscape loads and passes its check", function()
  local ls = assert(landscape.load(t.source_dir .. "/examples/lab_landscape.lua"))
  t.eq(ls.name, "lab_landscape")
  t.eq(ls.cells, 24)
  t.ok(ls:check(3))
  local f = ls:evaluate { 0.8, 0.5 }   -- on the ring
  t.near(f, 1, 1e-12)
end)

-- Each broken landscape: the text, and what the report must say (file:line first).
local BROKEN = {
  { "syntax", "return {\n  dims = 2,\n  evaluate = function(g) return 1 {2} end\n  root = 3,\n}\n",
    "syntax%.lua:3: .end. expected" },
  { "no_evaluate", "return { dims = 2 }\n", "syntax_none" },
  { "not_a_table", "return 42\n", "must return a table, got number" },
  { "typo", "return { dims = 2, evalute = function() end, evaluate = function(g) return 1, {0, 0} end }\n",
    "unknown key 'evalute'" },
  { "string_fitness", "return {\n  dims = 2,\n  evaluate = function(g)\n    return 'high', { 0, 0 }\n  end,\n}\n",
    "string_fitness%.lua:3: evaluate returned fitness of type string" },
  { "nan_fitness", "return {\n  dims = 2,\n\n  evaluate = function(g) return 0 / 0, { 0, 0 } end,\n}\n",
    "nan_fitness%.lua:4: evaluate returned fitness %-?nan" },
  { "few_measures", "return {\n  dims = 2,\n  evaluate = function(g) return 1, { 0.5 } end,\n}\n",
    "few_measures%.lua:3: evaluate returned 1 measure%(s%); the landscape declares dims = 2" },
  { "inf_measure", "return {\n  dims = 2,\n  evaluate = function(g) return 1, { 0.5, 1 / 0 } end,\n}\n",
    "inf_measure%.lua:3: evaluate returned measure 2 = inf" },
  { "raises", "return {\n  dims = 2,\n  evaluate = function(g)\n    return g.missing.field, { 0, 0 }\n  end,\n}\n",
    "raises%.lua:4: attempt to index field 'missing'" },
  { "vary_nil", "return {\n  dims = 2,\n  evaluate = function(g) return 1, { 0, 0 } end,\n"
    .. "  vary = function(base, insp, rng)\n  end,\n}\n", "vary_nil%.lua:4: vary returned nil" },
  { "bad_bounds", "return { dims = 2, lower = { 0 }, evaluate = function() return 1, { 0, 0 } end }\n",
    "lower must have 2 numbers" },
  { "bad_dims", "return { dims = 0, evaluate = function() return 1, {} end }\n",
    "dims must be an integer >= 1" },
}
BROKEN[2][3] = "no_evaluate%.lua: the landscape table has no 'evaluate' function"

t.case("broken landscapes are reported with file and line (load and check)", function()
  for _, c in ipairs(BROKEN) do
    local path = t.write(("%s/%s.lua"):format(dir, c[1]), c[2])
    local ls, err, kind = landscape.load(path)
    if ls then
      local ok
      ok, err = ls:check(1)
      t.eq(ok, nil, c[1] .. " passed its check")
    else
      t.eq(kind, "invalid", c[1])
    end
    t.match(err, c[3], c[1])
  end
end)

t.case("broken landscapes on the command line: exit 1 with the report, no server started", function()
  for _, c in ipairs(BROKEN) do
    local path = ("%s/%s.lua"):format(dir, c[1])
    local started = host.now()
    local r = simulate { "--landscape", path, "--out", dir .. "/out", POLICY }
    t.eq(r.code, 1, c[1] .. ": " .. r.stderr)
    t.match(r.stderr, c[3], c[1])
    t.ok(host.now() - started < 5, c[1] .. " took long: were servers started?")
  end
end)

t.case("a broken policy is reported as the host reports it (exit 1)", function()
  local bad = t.write(dir .. "/bad_policy.lua", "return { tick = function() end, shutdwn = function() end }\n")
  local r = simulate { bad }
  t.eq(r.code, 1)
  t.match(r.stderr, "bad_policy%.lua: unknown key 'shutdwn' in the policy table %(allowed: tick, init, shutdown%)")
  bad = t.write(dir .. "/syntax_policy.lua", "return {\n  tick = function(ctx)\n    if then\n  end,\n}\n")
  r = simulate { bad }
  t.eq(r.code, 1)
  t.match(r.stderr, "syntax_policy%.lua:3:")
end)

-- --- the pieces -----------------------------------------------------------------------------

t.case("latency distributions: shapes and sample means", function()
  local rng = host.rng(5)
  local function mean(text, n)
    local d = assert(fleet.parse_latency(text))
    local sum = 0
    for _ = 1, n do
      local v = fleet.draw_latency(d, rng)
      t.ok(v >= 0, text .. " drew a negative latency")
      sum = sum + v
    end
    return sum / n
  end
  t.eq(mean("fixed:42", 10), 42)
  t.near(mean("uniform:10,30", 20000), 20, 0.3)
  t.near(mean("exponential:300", 40000), 300, 6)
  t.near(mean("exp:5", 40000), 5, 0.1)
  -- lognormal: median 100, sigma 0.5 -> mean 100 * exp(0.125) = 113.31
  t.near(mean("lognormal:100,0.5", 40000), 113.31, 1.5)
end)

t.case("the seeded id stream gives version-4 UUIDs, the same for the same seed", function()
  local a, b, c = clock.new(3), clock.new(3), clock.new(4)
  local seen = {}
  for _ = 1, 200 do
    local id = a:uuid4()
    t.match(id, "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$")
    t.eq(b:uuid4(), id)
    t.ok(not seen[id], "repeated id")
    seen[id] = true
  end
  t.ok(c:uuid4() ~= clock.new(3):uuid4())
  -- install points loreley.host at the clock, and restores it
  local real = host.uuid4
  local restore = a:install()
  a:set(12.5)
  t.eq(host.time(), clock.EPOCH + 12.5)
  t.eq(host.uuid4(), b:uuid4())
  restore()
  t.eq(host.uuid4, real)
  t.ok(host.time() > clock.EPOCH + 86400 * 300, "host.time is the wall clock again")
  t.raises(function() a:set(1) end, "cannot go back")
end)

t.case("series: CSV round trip and lookup at a budget", function()
  local rows = {
    { jobs = 0, sim_seconds = 0, qd_score = 0.5, coverage = 0.0025, best_fitness = 0.5, archive_size = 1 },
    { jobs = 10, sim_seconds = 123.45, qd_score = 3.25, coverage = 0.02, best_fitness = 0.75, archive_size = 8 },
    { jobs = 17, sim_seconds = 200, qd_score = 1 / 3, coverage = 0.03, best_fitness = 0.8, archive_size = 12 },
  }
  local text = series.csv(rows)
  t.eq(text:match("^[^\n]*"), "jobs,sim_seconds,qd_score,coverage,best_fitness,archive_size")
  t.match(text, "\n10,123%.45,3%.25,0%.02,0%.75,8\n")
  t.match(text, "\n17,200,0%.3333333333,")
  local back = assert(series.parse_csv(text))
  t.eq(#back, 3)
  t.eq(back[2].sim_seconds, 123.45)
  t.eq(series.at(back, 12).jobs, 10)
  t.eq(series.at(back, 17).jobs, 17)
  t.eq(series.at(back, 1000).jobs, 17)
  -- an empty archive has no best fitness: written and read back as nan
  local empty = assert(series.parse_csv(series.csv { { jobs = 0, sim_seconds = 0, qd_score = 0,
    coverage = 0, best_fitness = 0 / 0, archive_size = 0 } }))
  t.ok(empty[1].best_fitness ~= empty[1].best_fitness, "nan expected")
  local svg = series.svg({ { name = "a", rows = back } }, "t")
  local plots = 0
  for _ in svg:gmatch('<polyline class="series" data%-name="a"') do plots = plots + 1 end
  t.eq(plots, 4, "one line per panel")
end)

t.case("series statistics over islands: the union of the cells, or sums across grids", function()
  local run = require "loreley.lab.run"
  local archive = require "loreley.archive"
  local function island(dims, rows)
    local a = archive.grid { dims = dims, lower = { 0, 0 }, upper = { 1, 1 } }
    for i, r in ipairs(rows) do a:add("c" .. i, r[1], { r[2], r[3] }) end
    return { archive = a, shape = dims, lower = { 0, 0 }, upper = { 1, 1 } }
  end
  -- main: cells (0,0)=1.0 and (1,1)=2.0; other: (1,1)=3.0 and (0,1)=0.5 on the same 2x2 grid
  local islands = {
    main = island({ 2, 2 }, { { 1.0, 0.1, 0.1 }, { 2.0, 0.9, 0.9 } }),
    other = island({ 2, 2 }, { { 3.0, 0.9, 0.9 }, { 0.5, 0.1, 0.9 } }),
  }
  local st = run.island_stats(islands, 0)
  t.eq(st.elites, 3, "three distinct cells")
  t.eq(st.cells, 4)
  t.eq(st.qd_score, 1.0 + 3.0 + 0.5)
  t.eq(st.best, 3.0)
  t.eq(run.island_stats(islands, 0.25).qd_score, 4.5 - 3 * 0.25)
  -- one island: its own statistics
  st = run.island_stats({ main = islands.main }, 0)
  t.eq(st.qd_score, 3.0)
  t.eq(st.elites, 2)
  -- different grids: sums
  islands.other = island({ 4, 4 }, { { 3.0, 0.9, 0.9 } })
  st = run.island_stats(islands, 0)
  t.eq(st.elites, 3)
  t.eq(st.cells, 4 + 16)
  t.eq(st.qd_score, 6.0)
end)

t.case("comparison statistics: mean and sample standard deviation per budget", function()
  local s = lab.summarise { 2, 4, 4, 4, 5, 5, 7, 9 }
  t.eq(s.mean, 5)
  t.near(s.sd, math.sqrt(32 / 7), 1e-12)
  t.eq(s.min, 2)
  t.eq(s.max, 9)
  local function run(name, seed, qd)
    return { name = name, seed = seed, jobs_done = 20, rows = {
      { jobs = 0, qd_score = 0, coverage = 0, best_fitness = 0, archive_size = 1 },
      { jobs = 10, qd_score = qd, coverage = 0.1, best_fitness = 1, archive_size = 5 },
      { jobs = 20, qd_score = 2 * qd, coverage = 0.2, best_fitness = 1, archive_size = 9 } } }
  end
  local rows = lab.compare_table({ run("a", 1, 1), run("a", 2, 3), run("b", 1, 10) },
    { 10, 20 }, { "a", "b" })
  local function find(policy, budget, metric)
    for _, r in ipairs(rows) do
      if r.policy == policy and r.budget == budget and r.metric == metric then return r end
    end
  end
  t.eq(find("a", 10, "qd_score").mean, 2)
  t.near(find("a", 10, "qd_score").sd, math.sqrt(2), 1e-12)
  t.eq(find("a", 20, "qd_score").mean, 4)
  t.eq(find("b", 20, "qd_score").n, 1)
  t.eq(find("b", 20, "qd_score").sd, 0)
end)

t.finish()
