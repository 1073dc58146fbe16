-- loreley.lab.cli: the command line of `loreley-host --simulate`.
--
--   local cli = require "loreley.lab.cli"
--   local opts = cli.parse(args) -> opts | nil, message      (message: a usage error)
--   cli.USAGE
local fleet = require "loreley.lab.fleet"

local M = {}

M.USAGE = [[
usage: loreley-host --simulate [options] POLICY.lua... [-- policy args]

Runs scheduling policies, unmodified, against simulated workers and a synthetic
fitness landscape, on a private PostgreSQL and Redis, with a virtual clock. One
policy and one seed: one run. Several policies or --seeds K: a comparison.

options:
  --landscape NAME|FILE  smooth (default), deceptive, plateaus, or a Lua file
  --jobs N               job budget of each run (default 500): SCHEDULER_MAX_TOTAL_JOBS
  --seed N               the first seed (default 1)
  --seeds K              runs per policy, seeds N..N+K-1 (default 1)
  --workers N            simulated workers (default 4)
  --latency DIST         job duration: fixed:S, uniform:A,B, exponential:MEAN,
                         lognormal:MEDIAN,SIGMA (seconds; default exponential:300)
  --fail-rate P          probability that a job fails (default 0)
  --every N              one series row every N jobs (default jobs/50, at least 1)
  --budgets A,B,...      job budgets of the comparison table (default jobs/4,jobs/2,jobs)
  --cells N              archive cells per measure dimension (default: the landscape's,
                         unless MAPELITES_ARCHIVE_CELLS_PER_DIM is set)
  --set NAME=VALUE       a setting for the runs (repeatable), e.g.
                         --set SCHEDULER_MAX_UNFINISHED_JOBS=16
  --out DIR              output directory (default lab-out)
  --work-dir DIR         where the private servers live (default: a temporary directory)
  --parallel N           comparison runs at a time (default 1)
  --max-sim-time S       stop a run after S simulated seconds (default: no limit)
  --keep-databases       keep each run's database (on the private server)
  --progress, --no-progress   force the progress bar on or off (default: on a terminal)
  --verbose, -v          keep the stages' INFO log (default: warnings and errors)
  --profile              print where a run's wall-clock time went (stages, workers)
  --list-landscapes      print the built-in landscapes and exit
  --help, -h             print this help and exit

outputs (in --out): NAME-seedS.csv (jobs, sim_seconds, qd_score, coverage,
best_fitness, archive_size every N jobs), NAME-seedS.svg (the four series),
NAME-seedS-archive.svg (the final archive), NAME-seedS.json (the run's summary);
with several runs also compare.csv, compare.svg and a table on stdout.
exit codes: 0 every run reached its budget, 1 a run failed or stopped early,
2 usage error
]]

local function integer(text, name, min)
  local n = tonumber(text)
  if not n or n ~= math.floor(n) or n < min or n > 2 ^ 53 then
    return nil, ("%s needs an integer >= %d, got '%s'"):format(name, min, tostring(text))
  end
  return n
end

local function number(text, name, min, max)
  local n = tonumber(text)
  if not n or n ~= n or n < min or (max and n > max) or n == math.huge then
    return nil, ("%s needs a number in [%s, %s], got '%s'"):format(name, tostring(min),
      max and tostring(max) or "inf", tostring(text))
  end
  return n
end

local VALUED = {
  ["--landscape"] = true, ["--jobs"] = true, ["--seed"] = true, ["--seeds"] = true,
  ["--workers"] = true, ["--latency"] = true, ["--fail-rate"] = true, ["--every"] = true,
  ["--budgets"] = true, ["--cells"] = true, ["--set"] = true, ["--out"] = true,
  ["--work-dir"] = true, ["--parallel"] = true, ["--max-sim-time"] = true,
  -- between a comparison and its runs (not in the help)
  ["--stack-pg"] = true, ["--stack-redis"] = true, ["--name"] = true,
  ["--progress-file"] = true,
}

local FLAGS = {
  ["--keep-databases"] = true, ["--progress"] = true, ["--no-progress"] = true,
  ["--verbose"] = true, ["-v"] = true, ["--list-landscapes"] = true, ["--help"] = true,
  ["-h"] = true, ["--child"] = true, ["--profile"] = true,
}

local SETTING_NAME = "^[A-Za-z_][A-Za-z0-9_]*$"

function M.parse(args)
  local o = { landscape = "smooth", jobs = 500, seed = 1, seeds = 1, workers = 4,
    latency_text = "exponential:300", fail_rate = 0, out = "lab-out", parallel = 1,
    max_sim_seconds = 0, set = {}, set_order = {}, policies = {}, policy_args = {} }
  local i = 1
  local n = #args
  while i <= n do
    local a = args[i]
    if a == "--" then
      for j = i + 1, n do o.policy_args[#o.policy_args + 1] = args[j] end
      break
    end
    local name, inline = a:match("^(%-%-[%w-]+)=(.*)$")
    name = name or a
    if a:sub(1, 1) ~= "-" or a == "-" then
      o.policies[#o.policies + 1] = a
    elseif VALUED[name] then
      local value = inline
      if value == nil then
        i = i + 1
        value = args[i]
        if value == nil then return nil, ("%s needs a value"):format(name) end
      end
      local err
      if name == "--landscape" then o.landscape = value
      elseif name == "--jobs" then o.jobs, err = integer(value, name, 1)
      elseif name == "--seed" then o.seed, err = integer(value, name, 0)
      elseif name == "--seeds" then o.seeds, err = integer(value, name, 1)
      elseif name == "--workers" then o.workers, err = integer(value, name, 1)
      elseif name == "--latency" then o.latency_text = value
      elseif name == "--fail-rate" then o.fail_rate, err = number(value, name, 0, 1)
      elseif name == "--every" then o.every, err = integer(value, name, 1)
      elseif name == "--cells" then o.cells, err = integer(value, name, 2)
      elseif name == "--parallel" then o.parallel, err = integer(value, name, 1)
      elseif name == "--max-sim-time" then o.max_sim_seconds, err = number(value, name, 0)
      elseif name == "--out" then o.out = value
      elseif name == "--work-dir" then o.work_dir = value
      elseif name == "--stack-pg" then o.stack_pg = value
      elseif name == "--stack-redis" then o.stack_redis = value
      elseif name == "--name" then o.name = value
      elseif name == "--progress-file" then o.progress_file = value
      elseif name == "--budgets" then
        o.budgets = {}
        for part in (value .. ","):gmatch("([^,]*),") do
          local b
          b, err = integer(part, "--budgets", 1)
          if not b then break end
          o.budgets[#o.budgets + 1] = b
        end
      elseif name == "--set" then
        local key, v = value:match("^([^=]+)=(.*)$")
        if not key or not key:match(SETTING_NAME) then
          err = ("--set needs NAME=VALUE, got '%s'"):format(value)
        else
          key = key:upper()
          if o.set[key] == nil then o.set_order[#o.set_order + 1] = key end
          o.set[key] = v
        end
      end
      if err then return nil, err end
    elseif FLAGS[name] and inline == nil then
      if name == "--keep-databases" then o.keep_databases = true
      elseif name == "--progress" then o.progress = true
      elseif name == "--no-progress" then o.progress = false
      elseif name == "--verbose" or name == "-v" then o.verbose = true
      elseif name == "--list-landscapes" then o.list_landscapes = true
      elseif name == "--help" or name == "-h" then o.help = true
      elseif name == "--child" then o.child = true
      elseif name == "--profile" then o.profile = true
      end
    else
      return nil, ("unknown option '%s'"):format(a)
    end
    i = i + 1
  end
  if o.help or o.list_landscapes then return o end
  if #o.policies == 0 then return nil, "no policy file given" end
  local latency, lerr = fleet.parse_latency(o.latency_text)
  if not latency then return nil, lerr end
  o.latency = latency
  o.every = o.every or math.max(1, math.floor(o.jobs / 50))
  if not o.budgets then
    o.budgets = {}
    for _, b in ipairs { math.floor(o.jobs / 4), math.floor(o.jobs / 2), o.jobs } do
      if b >= 1 and b ~= o.budgets[#o.budgets] then o.budgets[#o.budgets + 1] = b end
    end
  end
  for _, b in ipairs(o.budgets) do
    if b > o.jobs then
      return nil, ("--budgets: %d is beyond the job budget of a run (--jobs %d)"):format(b, o.jobs)
    end
  end
  if (o.stack_pg == nil) ~= (o.stack_redis == nil) then
    return nil, "--stack-pg and --stack-redis go together"
  end
  return o
end

return M
