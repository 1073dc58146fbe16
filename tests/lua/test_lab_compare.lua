-- ctest: labels=pg;redis;slow timeout=900
-- The lab's comparison mode: two policies over three seeds, run as child processes two
-- at a time. A policy known to be worse (it always mutates the same, best elite) scores
-- measurably lower than the default policy on the deceptive landscape, seed by seed and
-- on average; a run gives the same bytes alone and inside a comparison; the table, the
-- comparison CSV and the combined plot are written.
local t = require "support.t"
local series = require "loreley.lab.series"

local dir = t.tmpdir()
local WORK = dir .. "/servers"
local POLICY = t.source_dir .. "/examples/policy.lua"
local GREEDY = t.fixtures .. "/lab/policy_greedy.lua"
local COMMON = { "--landscape", "deceptive", "--jobs", "300", "--fail-rate", "0.05",
  "--workers", "4" }

local function simulate(args)
  local argv = { "--simulate", "--work-dir", WORK, "--no-progress" }
  for _, a in ipairs(COMMON) do argv[#argv + 1] = a end
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return t.run_host(argv, { timeout = 600, env = { LORELEY_LUA_DIR = false } })
end

local function final(path)
  local rows = assert(series.parse_csv(assert(t.read(path), "missing " .. path)))
  return rows[#rows]
end

local compare = dir .. "/compare"
local result

t.case("two policies over three seeds: table, CSV and plot", function()
  result = simulate { "--seeds", "3", "--parallel", "2", "--out", compare, POLICY, GREEDY }
  t.eq(result.code, 0, result.stderr:sub(-3000))
  local out = result.stdout
  t.match(out, "deceptive: 3 run%(s%) per policy, seeds 1%.%.3, 300 jobs each, 4 workers")
  t.match(out, "QD score %(mean ± sd over 3 seeds%)\njobs +policy +policy_greedy\n75 ")
  t.match(out, "\n300 +[%d.]+ ± [%d.e+-]+ +[%d.]+ ± ")
  for _, name in ipairs { "policy", "policy_greedy" } do
    for seed = 1, 3 do
      t.match(out, ("%s seed %d: 300/300 jobs"):format(name, seed))
      t.eq(final(("%s/%s-seed%d.csv"):format(compare, name, seed)).jobs, 300)
    end
  end
  local csv = assert(t.read(compare .. "/compare.csv"))
  t.eq(csv:match("^[^\n]*"), "policy,jobs,metric,runs,mean,sd,min,max")
  local lines = 0
  for _ in csv:gmatch("\n[^\n]") do lines = lines + 1 end
  t.eq(lines, 2 * 3 * 4, "2 policies x 3 budgets x 4 metrics")
  t.match(csv, "\npolicy,300,qd_score,3,")
  local svg = assert(t.read(compare .. "/compare.svg"))
  local n = 0
  for _ in svg:gmatch('<polyline class="series"') do n = n + 1 end
  t.eq(n, 8, "two policies in each of four panels")
  t.match(svg, 'data%-name="policy_greedy"')
end)

t.case("the greedy policy scores lower than the default, seed by seed and on average", function()
  local sum = { policy = 0, policy_greedy = 0 }
  for seed = 1, 3 do
    local d = final(("%s/policy-seed%d.csv"):format(compare, seed))
    local g = final(("%s/policy_greedy-seed%d.csv"):format(compare, seed))
    t.ok(g.qd_score < d.qd_score, ("seed %d: greedy %g >= default %g"):format(seed, g.qd_score,
      d.qd_score))
    t.ok(g.archive_size < d.archive_size, ("seed %d: coverage"):format(seed))
    sum.policy = sum.policy + d.qd_score
    sum.policy_greedy = sum.policy_greedy + g.qd_score
  end
  t.ok(sum.policy_greedy < 0.8 * sum.policy, ("mean QD score: greedy %g, default %g")
    :format(sum.policy_greedy / 3, sum.policy / 3))
end)

t.case("a run gives the same bytes alone and inside a comparison", function()
  local alone = dir .. "/alone"
  local r = simulate { "--seed", "2", "--out", alone, GREEDY }
  t.eq(r.code, 0, r.stderr:sub(-2000))
  for _, suffix in ipairs { ".csv", ".svg", "-archive.svg", ".json" } do
    local a = t.read(alone .. "/policy_greedy-seed2" .. suffix)
    local b = t.read(compare .. "/policy_greedy-seed2" .. suffix)
    t.ok(a and a == b, "policy_greedy-seed2" .. suffix .. " differs")
  end
  -- and different seeds are different runs
  t.ok(t.read(compare .. "/policy-seed1.csv") ~= t.read(compare .. "/policy-seed2.csv"))
end)

t.finish()
