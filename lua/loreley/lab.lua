-- loreley.lab: the policy lab, `loreley-host --simulate [options] POLICY.lua...`.
--
-- Runs scheduling policies, unmodified, through the real stages and job-store SQL,
-- against simulated workers and a synthetic fitness landscape, on a private PostgreSQL
-- and Redis and a virtual clock, and compares them. User guide: docs/lab.md.
--
--   require("loreley.lab").main(args, settings) -> exit code   (src/host.c calls it)
--   lab.compare_table(results, budgets, policies) -> rows        (for tests and tools)
--   lab.summarise(values) -> {n, mean, sd, min, max}
--
-- One policy and one seed is one run, in this process. Several policies, or --seeds K,
-- is a comparison: each run is a child `loreley-host --simulate` on the same servers
-- (its own database and Redis namespace), so a run gives the same bytes whether it ran
-- alone or in a comparison, and --parallel can use more cores.
local host = require "loreley.host"
local sys = require "loreley.sys"
local read_file = sys.read_file
local write_file = sys.write_file
local json = require "loreley.json"
local settings_mod = require "loreley.settings"
local cli = require "loreley.lab.cli"
local landscape_mod = require "loreley.lab.landscape"
local policy_mod = require "loreley.lab.policy"
local stack_mod = require "loreley.lab.stack"
local run_mod = require "loreley.lab.run"
local series = require "loreley.lab.series"
local progress = require "loreley.lab.progress"

local M = {}

local EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

-- Settings the lab sets itself for every run; --set cannot change them.
local OWNED = {
  DATABASE_URL = "the lab's private PostgreSQL", TASKS_REDIS_URL = "the lab's private Redis",
  TASKS_REDIS_NAMESPACE = "one namespace per run", SCHEDULER_MAX_TOTAL_JOBS = "--jobs",
  LORELEY_SAMPLER_SEED = "--seed", MAPELITES_DIMENSION_REDUCTION_TARGET_DIMS = "the landscape's dims",
  MAPELITES_FEATURE_LOWER_BOUNDS = "the landscape's lower", MAPELITES_FEATURE_UPPER_BOUNDS =
  "the landscape's upper",
}

local function usage_error(message)
  io.stderr:write(("loreley-host --simulate: %s\nTry 'loreley-host --simulate --help'.\n")
    :format(message))
  return EXIT_USAGE
end

local function fail(message)
  host.error("%s", message)
  return EXIT_FAILURE
end



local function mkdir_p(dir)
  local r = sys.run { "mkdir", "-p", dir }
  if not r or r.code ~= 0 then
    return nil, ("cannot create %s: %s"):format(dir, r and r.stderr or "mkdir failed")
  end
  return true
end

local function json_array_literal(list)
  local copy = {}
  for i, v in ipairs(list) do copy[i] = v end
  return json.encode(json.array(copy))
end

-- The setting overrides of every run: the landscape's measure space, the archive
-- cells, then --set.
local function overrides(o, ls, settings)
  local env = {}
  env.MAPELITES_DIMENSION_REDUCTION_TARGET_DIMS = tostring(ls.dims)
  env.MAPELITES_FEATURE_LOWER_BOUNDS = json_array_literal(ls.lower)
  env.MAPELITES_FEATURE_UPPER_BOUNDS = json_array_literal(ls.upper)
  local sources = rawget(settings, "_sources") or {}
  if o.cells then
    env.MAPELITES_ARCHIVE_CELLS_PER_DIM = tostring(o.cells)
  elseif (sources.mapelites_archive_cells_per_dim or "default") == "default" then
    env.MAPELITES_ARCHIVE_CELLS_PER_DIM = tostring(ls.cells)
  end
  for _, key in ipairs(o.set_order) do
    if OWNED[key] then
      return nil, ("--set %s: the lab sets it (%s)"):format(key, OWNED[key])
    end
    env[key] = o.set[key]
  end
  -- Validate once, as the host validates its settings at start-up.
  local probe = sys.environ()
  for k, v in pairs(env) do probe[k] = v end
  local ok, err = settings_mod.load { env = probe }
  if not ok then return nil, err end
  return env
end

-- Unique run names from the policy file names.
local function policy_names(paths)
  local names, used = {}, {}
  for i, path in ipairs(paths) do
    local base = (path:match("([^/]+)$") or path):gsub("%.lua$", "")
    base = base:gsub("[^%w%-_.]", "_")
    local name, k = base, 2
    while used[name] do
      name = ("%s-%d"):format(base, k)
      k = k + 1
    end
    used[name] = true
    names[i] = name
  end
  return names
end

-- --- statistics and the comparison table ---------------------------------------------------

function M.summarise(values)
  local n = #values
  if n == 0 then return { n = 0 } end
  local sum, lo, hi = 0, math.huge, -math.huge
  for _, v in ipairs(values) do
    sum = sum + v
    if v < lo then lo = v end
    if v > hi then hi = v end
  end
  local mean = sum / n
  local ss = 0
  for _, v in ipairs(values) do ss = ss + (v - mean) ^ 2 end
  return { n = n, mean = mean, sd = n > 1 and math.sqrt(ss / (n - 1)) or 0, min = lo, max = hi }
end

M.METRICS = { { "qd_score", "QD score" }, { "coverage", "coverage" },
  { "best_fitness", "best fitness" }, { "archive_size", "archive size" } }

-- rows: { {policy, budget, metric, n, mean, sd, min, max}, ... } from the runs' series
-- (the row at or before each budget; a run that stopped before a budget is left out).
function M.compare_table(results, budgets, policies)
  local rows = {}
  for _, policy in ipairs(policies) do
    for _, budget in ipairs(budgets) do
      for _, metric in ipairs(M.METRICS) do
        local values = {}
        for _, r in ipairs(results) do
          if r.name == policy and r.jobs_done >= budget then
            local row = series.at(r.rows, budget)
            if row and row[metric[1]] == row[metric[1]] then values[#values + 1] = row[metric[1]] end
          end
        end
        local s = M.summarise(values)
        rows[#rows + 1] = { policy = policy, budget = budget, metric = metric[1], n = s.n,
          mean = s.mean, sd = s.sd, min = s.min, max = s.max }
      end
    end
  end
  return rows
end

local function fmt(v)
  if v == nil then return "n/a" end
  if v ~= 0 and (math.abs(v) >= 1e5 or math.abs(v) < 1e-3) then return ("%.3e"):format(v) end
  return ("%.4g"):format(v)
end

-- Pads to a display width (the ± sign is two bytes, one column).
local function pad(text, width)
  local columns = #text:gsub("[\128-\191]", "")
  return text .. (" "):rep(math.max(1, width - columns))
end

local function print_table(rows, budgets, policies, seeds)
  local width = 24
  for _, p in ipairs(policies) do width = math.max(width, #p + 2) end
  local out = {}
  for _, metric in ipairs(M.METRICS) do
    out[#out + 1] = ("%s (mean ± sd over %d seed%s)"):format(metric[2], seeds, seeds == 1 and "" or "s")
    local header = { pad("jobs", 8) }
    for _, p in ipairs(policies) do header[#header + 1] = pad(p, width) end
    out[#out + 1] = (table.concat(header, ""):gsub("%s+$", ""))
    for _, budget in ipairs(budgets) do
      local line = { pad(tostring(budget), 8) }
      for _, p in ipairs(policies) do
        local cell = "n/a"
        for _, r in ipairs(rows) do
          if r.policy == p and r.budget == budget and r.metric == metric[1] and r.n > 0 then
            cell = ("%s ± %s"):format(fmt(r.mean), fmt(r.sd))
            if r.n < seeds then cell = cell .. (" (%d runs)"):format(r.n) end
          end
        end
        line[#line + 1] = pad(cell, width)
      end
      out[#out + 1] = (table.concat(line, ""):gsub("%s+$", ""))
    end
    out[#out + 1] = ""
  end
  io.stdout:write(table.concat(out, "\n"))
  io.stdout:flush()
end

local function compare_csv(rows)
  local lines = { "policy,jobs,metric,runs,mean,sd,min,max" }
  for _, r in ipairs(rows) do
    local f = series.format_number
    lines[#lines + 1] = table.concat({ r.policy, r.budget, r.metric, r.n,
      r.n > 0 and f(r.mean) or "", r.n > 0 and f(r.sd) or "", r.n > 0 and f(r.min) or "",
      r.n > 0 and f(r.max) or "" }, ",")
  end
  return table.concat(lines, "\n") .. "\n"
end

-- Mean series per policy (over the runs' common rows) with a min..max band.
local function mean_series(results, policies)
  local named = {}
  for _, policy in ipairs(policies) do
    local runs = {}
    for _, r in ipairs(results) do if r.name == policy then runs[#runs + 1] = r end end
    local rows, band = {}, {}
    for _, m in ipairs(M.METRICS) do band[m[1]] = {} end
    if #runs > 0 then
      for _, first in ipairs(runs[1].rows) do
        local x = first.jobs
        local values = {}
        for _, r in ipairs(runs) do
          local row
          for _, rr in ipairs(r.rows) do if rr.jobs == x then row = rr end end
          if row then values[#values + 1] = row end
        end
        if #values == #runs then
          local row = { jobs = x }
          for _, m in ipairs(M.METRICS) do
            local list = {}
            for i, v in ipairs(values) do list[i] = v[m[1]] end
            local s = M.summarise(list)
            row[m[1]] = s.mean
            local b = band[m[1]]
            b[#b + 1] = { x, s.min, s.max }
          end
          rows[#rows + 1] = row
        end
      end
    end
    named[#named + 1] = { name = policy, rows = rows, band = #runs > 1 and band or nil }
  end
  return named
end

-- --- one run in this process ------------------------------------------------------------------

local function result_json(r, spec)
  local summary = {
    policy = spec.policy_path, name = r.name, seed = r.seed, landscape = spec.landscape.name,
    jobs = r.jobs, jobs_done = r.jobs_done, complete = r.complete, stop_reason = r.stop_reason,
    message = r.message, sim_seconds = r.sim_seconds, ticks = r.ticks,
    tick_failures = r.tick_failures, workers = r.workers,
    final = r.rows[#r.rows],
  }
  return json.encode(summary, { sort_keys = true, nonfinite = "null" }) .. "\n"
end

local function describe_result(r)
  local last = r.rows[#r.rows] or {}
  return ("%s seed %d: %d/%d jobs, qd_score %s, coverage %.2f%%, best %s, %d elites; "
    .. "%.1f h simulated, %d ticks%s"):format(r.name, r.seed, r.jobs_done, r.jobs,
      fmt(last.qd_score), (last.coverage or 0) * 100, fmt(last.best_fitness),
      last.archive_size or 0, r.sim_seconds / 3600, r.ticks,
      r.complete and "" or (" — stopped early: " .. tostring(r.message or r.stop_reason)))
end

-- Where the wall-clock time of a run went (--profile).
local function profile_text(r)
  local p = r.profile
  local lines = { ("profile: %.2f s in %d ticks (%.3f ms a tick), %.2f s in the simulated "
    .. "workers (%.3f ms a job), %.2f s vacuuming, %.2f s elsewhere (database copy, clock, "
    .. "outputs)"):format(p.tick_seconds, r.ticks,
      r.ticks > 0 and p.tick_seconds / r.ticks * 1000 or 0, p.worker_seconds,
      r.jobs_done > 0 and p.worker_seconds / r.jobs_done * 1000 or 0, p.vacuum_seconds,
      r.wall_seconds - p.tick_seconds - p.worker_seconds - p.vacuum_seconds) }
  local names = {}
  for name in pairs(p.stages) do names[#names + 1] = name end
  table.sort(names, function(a, b) return p.stages[a].seconds > p.stages[b].seconds end)
  for _, name in ipairs(names) do
    local st = p.stages[name]
    lines[#lines + 1] = ("  stage %-10s %7d runs %8.2f s %8.3f ms a run"):format(name, st.runs,
      st.seconds, st.runs > 0 and st.seconds / st.runs * 1000 or 0)
  end
  return table.concat(lines, "\n") .. "\n"
end

local function single_run(o, spec, stack)
  local bar
  if o.progress_file then
    spec.progress = function(done, jobs, sim)
      local f = io.open(o.progress_file, "wb")
      if f then f:write(("%d %d %.3f\n"):format(done, jobs, sim)) f:close() end
    end
  else
    bar = progress.new { total = spec.jobs, label = ("%s seed %d"):format(spec.name, spec.seed),
      enabled = o.progress }
    spec.progress = function(done, _, sim)
      bar:update(done, ("sim %.1f h"):format(sim / 3600))
    end
  end
  local r, err = run_mod.execute(spec)
  if bar then bar:finish() end
  if not r then return nil, err end
  if spec.progress and o.progress_file then spec.progress(r.jobs_done, r.jobs, r.sim_seconds) end
  local ok, werr = write_file(("%s/%s-seed%d.json"):format(o.out, spec.name, spec.seed),
    result_json(r, spec))
  if not ok then return nil, "cannot write the run summary: " .. tostring(werr) end
  if not o.child then
    io.stdout:write(describe_result(r), (" (%.1f s)\n"):format(r.wall_seconds))
    if o.profile then io.stdout:write(profile_text(r)) end
    io.stdout:write(("outputs: %s, %s%s\n"):format(r.csv_path, r.svg_path,
      r.heatmap_path and (", " .. r.heatmap_path) or ""))
  end
  return r
end

-- --- a comparison: one child process per run ---------------------------------------------------

local function self_binary()
  local r = sys.run { "readlink", "/proc/" .. sys.getpid() .. "/exe" }
  if r and r.code == 0 then return (r.stdout:gsub("%s+$", "")) end
  return "loreley-host"
end

local function child_argv(binary, o, stack, job)
  local argv = { binary }
  if host.log_level() == "DEBUG" then argv[#argv + 1] = "--log-level=DEBUG" end
  local function add(...) for _, a in ipairs { ... } do argv[#argv + 1] = tostring(a) end end
  add("--simulate", "--child", "--stack-pg", stack.pg_url, "--stack-redis", stack.redis_url,
    "--name", job.name, "--seed", job.seed, "--progress-file", job.progress_file,
    "--landscape", o.landscape, "--jobs", o.jobs, "--workers", o.workers,
    "--latency", o.latency_text, "--fail-rate", o.fail_rate, "--every", o.every,
    "--out", o.out, "--max-sim-time", o.max_sim_seconds, "--no-progress")
  if o.cells then add("--cells", o.cells) end
  for _, key in ipairs(o.set_order) do add("--set", key .. "=" .. o.set[key]) end
  if o.keep_databases then add("--keep-databases") end
  if o.verbose then add("--verbose") end
  add(job.policy)
  if #o.policy_args > 0 then
    add("--")
    for _, a in ipairs(o.policy_args) do add(a) end
  end
  return argv
end

local function read_progress(path)
  local text = read_file(path)
  local done = text and tonumber(text:match("^(%d+)"))
  return done or 0
end

local function load_child_result(o, job)
  local base = ("%s/%s-seed%d"):format(o.out, job.name, job.seed)
  local summary = read_file(base .. ".json")
  local csv = read_file(base .. ".csv")
  if not summary or not csv then return nil end
  local s = json.decode(summary)
  local rows = series.parse_csv(csv)
  if type(s) ~= "table" or not rows then return nil end
  return { name = job.name, seed = job.seed, rows = rows, jobs = s.jobs, jobs_done = s.jobs_done,
    complete = s.complete == true, stop_reason = s.stop_reason,
    message = s.message ~= json.null and s.message or nil, sim_seconds = s.sim_seconds or 0,
    ticks = s.ticks or 0 }
end

local function comparison(o, names, stack, ls)
  local binary = self_binary()
  local jobs = {}
  for i, path in ipairs(o.policies) do
    for k = 0, o.seeds - 1 do
      jobs[#jobs + 1] = { policy = path, name = names[i], seed = o.seed + k }
    end
  end
  local logs = o.out .. "/logs"
  local ok, err = mkdir_p(logs)
  if not ok then return fail(err) end
  local bar = progress.new { total = #jobs * o.jobs, label = ("%d runs"):format(#jobs),
    enabled = o.progress }
  local pending, running, finished = 1, {}, 0
  local results, failures = {}, {}
  local started = host.now()
  while finished < #jobs do
    while pending <= #jobs and #running < o.parallel and not host.stop_requested() do
      local job = jobs[pending]
      pending = pending + 1
      job.progress_file = ("%s/%s-seed%d.progress"):format(logs, job.name, job.seed)
      job.log = ("%s/%s-seed%d.log"):format(logs, job.name, job.seed)
      os.remove(job.progress_file)
      os.remove(job.log)
      job.pid = assert(sys.spawn(child_argv(binary, o, stack, job),
        { stdout = job.log, stderr = "stdout", env = { NO_COLOR = "1" } }))
      running[#running + 1] = job
    end
    if host.stop_requested() then
      for _, job in ipairs(running) do sys.kill(job.pid, "TERM") end
      for _, job in ipairs(running) do sys.wait(job.pid, 30) end
      bar:finish()
      return fail("interrupted")
    end
    local still = {}
    for _, job in ipairs(running) do
      local status = sys.wait(job.pid, 0)
      if status then
        finished = finished + 1
        job.done = o.jobs
        local r = load_child_result(o, job)
        if status.code ~= 0 or not r then
          local log = (read_file(job.log) or ""):gsub("%s+$", "")
          failures[#failures + 1] = ("%s seed %d failed (exit %s); its log (%s) ends:\n%s")
            :format(job.name, job.seed, tostring(status.code or ("signal " .. tostring(status.signal))),
              job.log, log:sub(-1500))
        end
        if r then
          results[#results + 1] = r
          bar:finish()
          io.stdout:write(describe_result(r), "\n")
          io.stdout:flush()
        end
      else
        job.done = read_progress(job.progress_file)
        still[#still + 1] = job
      end
    end
    running = still
    local done = 0
    for _, job in ipairs(jobs) do done = done + (job.done or 0) end
    bar:update(done, ("%d/%d runs done"):format(finished, #jobs))
    if #running > 0 then host.sleep(0.05) end
  end
  bar:finish()
  -- The table and plot: results in (policy, seed) order, whatever order runs ended in.
  table.sort(results, function(a, b)
    if a.name ~= b.name then
      local ia, ib
      for i, n in ipairs(names) do
        if n == a.name then ia = i end
        if n == b.name then ib = i end
      end
      return ia < ib
    end
    return a.seed < b.seed
  end)
  local rows = M.compare_table(results, o.budgets, names)
  io.stdout:write(("\n%s: %d run(s) per policy, seeds %d..%d, %d jobs each, %d workers, "
    .. "latency %s%s (%.1f s)\n\n"):format(ls.name, o.seeds, o.seed, o.seed + o.seeds - 1, o.jobs,
      o.workers, o.latency_text, o.fail_rate > 0 and (", fail rate " .. o.fail_rate) or "",
      host.now() - started))
  print_table(rows, o.budgets, names, o.seeds)
  local wok, werr = write_file(o.out .. "/compare.csv", compare_csv(rows))
  if wok then
    wok, werr = write_file(o.out .. "/compare.svg", series.svg(mean_series(results, names),
      ("%s: mean over %d seed(s), band min..max"):format(ls.name, o.seeds)))
  end
  if not wok then return fail("cannot write the comparison: " .. tostring(werr)) end
  io.stdout:write(("outputs: %s/compare.csv, %s/compare.svg and one CSV/SVG per run\n")
    :format(o.out, o.out))
  local incomplete = 0
  for _, r in ipairs(results) do if not r.complete then incomplete = incomplete + 1 end end
  for _, f in ipairs(failures) do host.error("%s", f) end
  if #failures > 0 or incomplete > 0 then
    host.error("%d run(s) failed and %d stopped before their budget", #failures, incomplete)
    return EXIT_FAILURE
  end
  return EXIT_OK
end

-- --- main --------------------------------------------------------------------------------------

local function list_landscapes()
  for _, name in ipairs(landscape_mod.builtin) do
    local ls = assert(landscape_mod.load(name))
    io.stdout:write(("%-10s %s (dims %d, %d cells per dimension)\n"):format(name,
      ls.description, ls.dims, ls.cells))
  end
  return EXIT_OK
end

function M.main(args, settings)
  local o, err = cli.parse(args or {})
  if not o then return usage_error(err) end
  if o.help then
    io.stdout:write(cli.USAGE)
    return EXIT_OK
  end
  if o.list_landscapes then return list_landscapes() end
  for _, path in ipairs(o.policies) do
    local f = io.open(path, "rb")
    if not f then return usage_error(("no such policy file: %s"):format(path)) end
    f:close()
  end
  local ls, lerr, kind = landscape_mod.load(o.landscape)
  if not ls then
    if kind == "usage" then return usage_error(lerr) end
    return fail(lerr)
  end
  local checked, cerr = ls:check(o.seed)
  if not checked then return fail(cerr) end
  for _, path in ipairs(o.policies) do
    local p, perr = policy_mod.load(path)
    if not p then return fail(perr) end
  end
  local env, eerr = overrides(o, ls, settings)
  if not env then return usage_error(eerr) end
  if not o.verbose and host.log_level() ~= "DEBUG" then host.set_log_level("WARNING") end
  local ok, merr = mkdir_p(o.out)
  if not ok then return fail(merr) end

  local names = policy_names(o.policies)
  local stack, serr, tmp
  if o.stack_pg then
    stack = stack_mod.attach(o.stack_pg, o.stack_redis)
  else
    local dir = o.work_dir
    if not dir then
      tmp = assert(sys.mkdtemp("/tmp/loreley-lab-"))
      sys.run { "chmod", "755", tmp }
      dir = tmp
    end
    stack, serr = stack_mod.start(dir)
    if stack then
      ok, serr = stack:prepare()
      if not ok then stack:stop() end
    end
    if not stack or not ok then
      if tmp then sys.run { "rm", "-rf", tmp } end
      return fail(serr)
    end
  end

  local rc
  if o.child or (#o.policies == 1 and o.seeds == 1) then
    local spec = { policy_path = o.policies[1], name = o.name or names[1], seed = o.seed,
      jobs = o.jobs, every = o.every, workers = o.workers, latency = o.latency,
      fail_rate = o.fail_rate, landscape = ls, stack = stack, env = env,
      policy_args = o.policy_args, out_dir = o.out, max_sim_seconds = o.max_sim_seconds,
      keep_database = o.keep_databases }
    local r, rerr = single_run(o, spec, stack)
    if not r then
      rc = fail(rerr)
    elseif not r.complete then
      rc = fail(("%s seed %d stopped before its budget (%s): %s"):format(r.name, r.seed,
        r.stop_reason, tostring(r.message or r.stop_reason)))
    else
      rc = EXIT_OK
    end
  else
    rc = comparison(o, names, stack, ls)
  end
  stack:stop()
  if tmp then sys.run { "rm", "-rf", tmp } end
  return rc
end

return M
