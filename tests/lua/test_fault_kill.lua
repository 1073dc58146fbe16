-- ctest: labels=fault;e2e;pg;redis;git timeout=900
-- kill -9 of the host at random moments of a run with real PostgreSQL, Redis and the
-- example workers, LORELEY_FAULT_TRIALS times (default 50), each followed by a restart.
-- At the end every invariant must hold:
--   * every job was created once, ran once, and is SUCCEEDED (workers are reliable here);
--   * no job was ingested twice (map_elites.attempts == 1) and none is left un-ingested;
--   * no Dramatiq message is left over, none was dead-lettered, none duplicated;
--   * every archive cell a job's ingestion recorded still exists, holding the best
--     objective ever recorded for it, and the reducer history has every ingested commit;
--   * the archive rebuilt from the database equals what a host loads at start-up.
local t = require "support.t"
local sys = require "loreley.sys"
local host = require "loreley.host"
local db = require "loreley.db"

package.path = t.source_dir .. "/examples/?.lua;" .. package.path
local setup = require "demo_setup"

local TRIALS = tonumber(os.getenv("LORELEY_FAULT_TRIALS") or "") or 50
local TOTAL = 700
local dir = t.tmpdir()
local stack = setup.start(dir .. "/stack")
local conn = assert(db.connect(stack.pg.url))
local env = setup.environment(stack, {
  SCHEDULER_MAX_TOTAL_JOBS = tostring(TOTAL),
  SCHEDULER_MAX_UNFINISHED_JOBS = "6", SCHEDULER_SCHEDULE_BATCH_SIZE = "3",
  SCHEDULER_DISPATCH_BATCH_SIZE = "3", SCHEDULER_INGEST_BATCH_SIZE = "3",
  SCHEDULER_POLL_INTERVAL_SECONDS = "1",
  -- a QUEUED job without a message is re-sent after 2 s (the host may die between the
  -- commit of QUEUED and the push to Redis)
  LORELEY_RECOVERY_GRACE_SECONDS = "2",
})

local function scalar(sql, ...)
  local rows = assert(conn:query(sql, ...))
  for _, v in pairs(rows[1] or {}) do return v end
end

local workers = {}
for i = 1, 2 do
  workers[i] = setup.spawn_worker(t.host_binary, env, { "--id", "fw" .. i, "--job-seconds", "0.05" },
    dir .. "/w" .. i .. ".log")
end

local rng = host.rng(os.getenv("LORELEY_FAULT_SEED") or "kill-9")
local log = dir .. "/host.log"
local kills, finished = 0, false
local started = host.now()
for trial = 1, TRIALS do
  local pid = setup.spawn_host(t.host_binary, env, t.source_dir .. "/examples/policy.lua", log)
  -- a random moment: during start-up, a tick, or the sleep between ticks
  local wait = rng:uniform(0.05, 0.6)
  local st = sys.wait(pid, wait)
  if st then
    -- The host finished the run (all jobs done) before this kill: nothing to kill.
    t.eq(st.code, 0, "host exited on its own with an error; log:\n" .. (t.read(log) or ""):sub(-2000))
    finished = true
    break
  end
  sys.kill(pid, "KILL")
  sys.wait(pid, 10)
  kills = kills + 1
  if trial % 10 == 0 then
    io.stderr:write(("  %d kills, %d jobs so far\n"):format(kills, scalar("SELECT count(*) FROM evolution_jobs")))
  end
end

-- Let a last host finish the run undisturbed.
if not finished then
  local pid = setup.spawn_host(t.host_binary, env, t.source_dir .. "/examples/policy.lua", log)
  local st = sys.wait(pid, 300)
  if not st then sys.kill(pid, "KILL") sys.wait(pid, 5) end
  t.ok(st and st.code == 0, "final host did not finish; log:\n" .. (t.read(log) or ""):sub(-3000))
end
for _, w in ipairs(workers) do sys.kill(w, "TERM") end
for _, w in ipairs(workers) do sys.wait(w, 10) end
io.stderr:write(("  %d kill -9 trials, run finished in %.1f s\n"):format(kills, host.now() - started))

t.case(("the run survived %d kill -9 (at least %d required)"):format(kills, math.min(TRIALS, 50)), function()
  t.ok(kills >= math.min(TRIALS, 50), ("only %d kills happened before the run ended"):format(kills))
end)

t.case("every job was created once, ran once and succeeded", function()
  t.eq(scalar("SELECT count(*) FROM evolution_jobs"), TOTAL)
  t.eq(scalar("SELECT count(*) FROM evolution_jobs WHERE status = 'SUCCEEDED'"), TOTAL)
  -- one commit and one metrics set per job: a job that ran twice would have two
  t.eq(scalar("SELECT count(*) FROM commits WHERE author = 'Loreley Worker'"), TOTAL)
  t.eq(scalar([[SELECT count(*) FROM (SELECT commit_hash FROM metrics WHERE name = 'composite_score'
    GROUP BY commit_hash HAVING count(*) > 1) d]]), 0)
end)

t.case("no job was ingested twice, none is left un-ingested", function()
  t.eq(scalar([[SELECT count(*) FROM evolution_jobs
    WHERE payload->'ingestion'->'map_elites'->>'status' IN ('succeeded', 'skipped')]]), TOTAL)
  t.eq(scalar([[SELECT count(*) FROM evolution_jobs
    WHERE (payload->'ingestion'->'map_elites'->>'attempts')::int <> 1]]), 0, "attempts other than 1")
end)

t.case("no message left over, duplicated or dead-lettered", function()
  local q = "loreley:loreley.evolution"
  t.eq(stack.redis:cli("LLEN", q), "0")
  t.eq(stack.redis:cli("HLEN", q .. ".msgs"), "0")
  t.eq(stack.redis:cli("ZCARD", q .. ".XQ"), "0")
end)

t.case("no archive cell lost: each holds the best objective ever recorded for it", function()
  local records = assert(conn:query([[
    SELECT (payload->'ingestion'->'map_elites'->'record'->>'cell_index')::bigint AS cell,
           max((payload->'ingestion'->'map_elites'->'record'->>'fitness')::float8) AS best
    FROM evolution_jobs WHERE payload->'ingestion'->'map_elites'->>'status' = 'succeeded'
    GROUP BY 1]]))
  t.ok(#records > 0, "no ingestion entered the archive")
  for _, r in ipairs(records) do
    local obj = scalar("SELECT objective FROM loreley_archive_cells WHERE cell_index = $1", r.cell)
    t.ok(obj, "cell " .. r.cell .. " lost")
    t.ok(obj >= r.best - 1e-12, ("cell %d holds %s, a job recorded %s"):format(r.cell, obj, r.best))
  end
  -- every ingested commit (and the root) is in the reducer history exactly once
  t.eq(scalar("SELECT count(DISTINCT commit_hash) FROM loreley_reducer_history"), TOTAL + 1)
end)

t.case("a host restarted now loads the same archive", function()
  local cells = scalar("SELECT count(*) FROM loreley_archive_cells")
  local r = assert(sys.run({ t.host_binary, "--once", t.source_dir .. "/examples/status.lua" }, { env = env }))
  t.eq(r.code, 0, r.stderr)
  t.match(r.stdout, ("island main: %d elites"):format(cells))
end)

conn:close()
t.finish()
