-- The demo loop: a private PostgreSQL and Redis under a state directory, the demo
-- repository (circle packing), the scheduler running examples/policy.lua and a few
-- example workers, until a set number of jobs has been ingested. Then the archive's
-- coverage, QD score and best fitness, a heatmap (SVG) and the elites (CSV).
--
--   loreley-host --once examples/demo.lua [-- --jobs N] [--workers W] [--state DIR]
--                                            [--policy FILE] [--keep-servers]
-- (scripts/demo installs, builds and runs this.) Running it again continues the same
-- experiment: the archive is loaded from the database and N more jobs are run.
-- Nothing outside the state directory is touched; no system service is used.
local host = require "loreley.host"
local sys = require "loreley.sys"
local db = require "loreley.db"
local summary = require "loreley.summary"

local here = (arg[0] or ""):match("^(.*)/[^/]*$") or "."
package.path = here .. "/?.lua;" .. package.path
local setup = require "demo_setup"

local opts = { jobs = 200, workers = 3, state = "state", policy = here .. "/policy.lua" }
local i = 1
while arg[i] do
  local a, v = arg[i], arg[i + 1]
  if a == "--jobs" then opts.jobs = assert(tonumber(v), "--jobs needs a number"); i = i + 1
  elseif a == "--workers" then opts.workers = assert(tonumber(v), "--workers needs a number"); i = i + 1
  elseif a == "--state" then opts.state = v; i = i + 1
  elseif a == "--policy" then opts.policy = v; i = i + 1
  elseif a == "--keep-servers" then opts.keep = true
  else error("demo: unknown option " .. tostring(a) ..
    " (--jobs N, --workers W, --state DIR, --policy FILE, --keep-servers)", 0) end
  i = i + 1
end

local function absolute(path)
  if path:sub(1, 1) == "/" then return path end
  return (os.getenv("PWD") or ".") .. "/" .. path
end
local state = absolute(opts.state)
local binary = "/proc/self/exe"
do   -- the path of this loreley-host, for the children
  local r = sys.run { "readlink", "-f", "/proc/" .. sys.getpid() .. "/exe" }
  if r and r.code == 0 then binary = r.stdout:gsub("%s+$", "") end
end

host.info("demo: state in %s (PostgreSQL, Redis, repository, logs)", state)
local stack = setup.start(state, { keep = opts.keep })
assert(sys.run { "mkdir", "-p", state .. "/logs" })
local conn = assert(db.connect(stack.pg.url))
local existing = 0
do
  local rows = conn:query("SELECT count(*) AS n FROM evolution_jobs")
  if rows then existing = rows[1].n end
end
local target = existing + opts.jobs
local env = setup.environment(stack, {
  SCHEDULER_MAX_TOTAL_JOBS = tostring(target),
  LORELEY_SAMPLER_SEED = false,
  MAPELITES_DIMENSION_REDUCTION_MIN_FIT_SAMPLES = "32",
  LORELEY_DIMENSION_REDUCTION_WHITEN = "true",
  MAPELITES_FEATURE_LOWER_BOUNDS = "[-2.5,-2.5,-2.5,-2.5]",
  MAPELITES_FEATURE_UPPER_BOUNDS = "[2.5,2.5,2.5,2.5]",
  MAPELITES_ARCHIVE_CELLS_PER_DIM = "10",
})

local workers = {}
for w = 1, opts.workers do
  workers[w] = setup.spawn_worker(binary, env, { "--id", "demo-worker-" .. w },
    state .. "/logs/worker-" .. w .. ".log")
end
local host_log = state .. "/logs/host.log"
local pid = setup.spawn_host(binary, env, absolute(opts.policy), host_log)
host.info("demo: scheduler pid %d, %d worker(s); running %d job(s) (%d already in the database)",
  pid, opts.workers, opts.jobs, existing)

local function ingested_count()
  local rows = conn:query([[SELECT count(*) AS n FROM evolution_jobs
    WHERE payload->'ingestion'->'map_elites'->>'status' IN ('succeeded', 'skipped')]])
  return rows and rows[1].n or 0
end

-- Follow the host's log: print each tick summary with the progress.
local offset, finished = 0, nil
while true do
  local f = io.open(host_log, "rb")
  if f then
    f:seek("set", offset)
    local chunk = f:read("*a") or ""
    f:close()
    local last = chunk:match(".*\n()") or 1
    offset = offset + last - 1
    for line in chunk:sub(1, last - 1):gmatch("[^\n]+") do
      if line:find(" tick %d+ ") or line:find("ERROR") or line:find("bootstrap:") then
        local done = ingested_count() - existing
        io.stderr:write(("[%3d/%d] %s\n"):format(math.max(0, done), opts.jobs, line))
      end
    end
  end
  finished = sys.wait(pid, 0)
  if finished then break end
  if host.stop_requested() then
    sys.kill(pid, "TERM")
    finished = sys.wait(pid, 15) or {}
    break
  end
  host.sleep(0.5)
end
for _, w in ipairs(workers) do sys.kill(w, "TERM") end
for _, w in ipairs(workers) do sys.wait(w, 10) end

local root_remotes = require("loreley.git").open(stack.root):remotes()
local exp = assert(summary.find_experiment(conn, require("loreley.settings").load { env = (function()
  local e = sys.environ()
  for k, v in pairs(env) do e[k] = v or nil end
  return e
end)(), dotenv = false }, stack.root, root_remotes))
local report = assert(summary.collect(conn, exp))
print()
print(summary.format(report))
local files = assert(summary.write_files(report, state))
for _, path in ipairs(files) do print("wrote " .. path) end
print(("logs in %s/logs; run again to continue the same experiment"):format(state))
conn:close()
if finished and finished.code ~= 0 then
  error(("demo: the scheduler exited with %s; see %s"):format(
    finished.code and ("code " .. finished.code) or ("signal " .. tostring(finished.signal)), host_log), 0)
end
