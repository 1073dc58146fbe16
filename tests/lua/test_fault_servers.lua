-- ctest: labels=fault;e2e;pg;redis;git timeout=900
-- Faults of the world during a run, with real servers and example workers:
--   * PostgreSQL restarted mid-run; Redis killed and restarted mid-run (its data lost):
--     stages fail and are logged, the loop goes on, and the run completes with nothing
--     lost (lost messages are re-dispatched, the leader lock is taken again);
--   * a worker killed mid-job: the job, RUNNING past the time limit plus the grace
--     period, is marked FAILED with a reason (or rescheduled when configured);
--   * a worker that writes a malformed result: the ingestion fails with the reason and
--     the run goes on.
-- Each case runs its own experiment (MAPELITES_SAMPLER_DEFAULT_PRIORITY differs).
local t = require "support.t"
local sys = require "loreley.sys"
local host = require "loreley.host"
local db = require "loreley.db"

package.path = t.source_dir .. "/examples/?.lua;" .. package.path
local setup = require "demo_setup"

local dir = t.tmpdir()
local stack = setup.start(dir .. "/stack")
local conn = assert(db.connect(stack.pg.url))
local POLICY = t.source_dir .. "/examples/policy.lua"

local function scalar(sql, ...)
  local rows, err = conn:query(sql, ...)
  assert(rows, err)
  for _, v in pairs(rows[1] or {}) do return v end
end

local function experiment_of(priority)
  local rows = conn:query([[SELECT id::text AS id FROM experiments
    WHERE config_snapshot->>'mapelites_sampler_default_priority' = $1]], tostring(priority))
  return rows and rows[1] and rows[1].id   -- nil before the host has migrated and registered
end

local function env_for(priority, total, extra)
  local env = setup.environment(stack, {
    MAPELITES_SAMPLER_DEFAULT_PRIORITY = tostring(priority),
    SCHEDULER_MAX_TOTAL_JOBS = tostring(total),
    LORELEY_RECOVERY_GRACE_SECONDS = "1",
    TASKS_WORKER_TIME_LIMIT_SECONDS = "3",
  })
  for k, v in pairs(extra or {}) do env[k] = v end
  return env
end

local function run(name, env, nworkers, worker_args, during)
  local workers = {}
  for i = 1, nworkers do
    local args = { "--id", name .. i }
    for _, a in ipairs(worker_args and worker_args(i) or {}) do args[#args + 1] = a end
    workers[i] = setup.spawn_worker(t.host_binary, env, args, dir .. "/" .. name .. "-w" .. i .. ".log")
  end
  local log = dir .. "/" .. name .. ".log"
  local pid = setup.spawn_host(t.host_binary, env, POLICY, log)
  if during then during(pid, workers, log) end
  local st = sys.wait(pid, 300)
  for _, w in ipairs(workers) do if sys.alive(w) then sys.kill(w, "TERM") end end
  for _, w in ipairs(workers) do sys.wait(w, 10) end
  if not st then sys.kill(pid, "KILL") sys.wait(pid, 5) end
  local text = t.read(log) or ""
  t.ok(st and st.code == 0, name .. ": host did not finish the run:\n" .. text:sub(-3000))
  return text
end

local function jobs_done(exp)
  return scalar([[SELECT count(*) FROM evolution_jobs WHERE experiment_id = $1
    AND status IN ('SUCCEEDED', 'FAILED')]], exp)
end

-- Every job terminal, every succeeded job ingested exactly once.
local function check_invariants(exp, total)
  t.eq(scalar("SELECT count(*) FROM evolution_jobs WHERE experiment_id = $1", exp), total, "jobs")
  t.eq(scalar([[SELECT count(*) FROM evolution_jobs WHERE experiment_id = $1
    AND status NOT IN ('SUCCEEDED', 'FAILED')]], exp), 0, "unfinished jobs left")
  t.eq(scalar([[SELECT count(*) FROM evolution_jobs WHERE experiment_id = $1 AND status = 'SUCCEEDED'
    AND coalesce(payload->'ingestion'->'map_elites'->>'status', '') NOT IN ('succeeded', 'skipped')]], exp),
    0, "succeeded jobs not ingested")
  t.eq(scalar([[SELECT count(*) FROM evolution_jobs WHERE experiment_id = $1
    AND (payload->'ingestion'->'map_elites'->>'attempts')::int > 1
    AND payload->'ingestion'->'map_elites'->>'status' = 'succeeded']], exp), 0, "ingested twice")
end

t.case("PostgreSQL restarted mid-run: stages fail, the loop goes on, nothing is lost", function()
  local total = 60
  local env = env_for(1, total)
  local text = run("pg", env, 2, function() return { "--job-seconds", "0.05" } end, function()
    t.ok(t.wait_for(60, function()
      local e = experiment_of(1)
      return e and jobs_done(e) >= 15
    end), "run did not start")
    assert(stack.pg:restart { mode = "fast" })
    conn = assert(db.connect(stack.pg.url))
  end)
  t.match(text, "stage %a+ failed: ")
  check_invariants(experiment_of(1), total)
  t.ok(scalar([[SELECT count(*) FROM evolution_jobs WHERE experiment_id = $1 AND status = 'SUCCEEDED']],
    experiment_of(1)) >= total - 4, "most jobs succeeded")
end)

t.case("Redis killed and restarted mid-run (data lost): lost messages are re-dispatched", function()
  local total = 60
  local env = env_for(2, total)
  local text = run("redis", env, 2, function() return { "--job-seconds", "0.05" } end, function()
    t.ok(t.wait_for(60, function()
      local e = experiment_of(2)
      return e and jobs_done(e) >= 15
    end), "run did not start")
    stack.redis:kill()
    host.sleep(1.5)
    assert(stack.redis:start())
  end)
  t.match(text, "re%-dispatching %d+ QUEUED job%(s%) without a waiting message")
  check_invariants(experiment_of(2), total)
end)

t.case("a worker killed mid-job: the job is marked FAILED past the time limit", function()
  local total = 6
  local env = env_for(3, total)
  local killed = false
  run("killed", env, 1, function() return { "--job-seconds", "30" } end, function(_, workers)
    t.ok(t.wait_for(30, function()   -- the only worker is inside a 30 s job now
      local e = experiment_of(3)
      return e and scalar("SELECT count(*) FROM evolution_jobs WHERE experiment_id = $1 AND status = 'RUNNING'", e) > 0
    end), "the slow worker never started a job")
    sys.kill(workers[1], "KILL")
    killed = true
    workers[2] = setup.spawn_worker(t.host_binary, env, { "--id", "killed-2" }, dir .. "/killed-w2.log")
  end)
  t.ok(killed)
  local exp = experiment_of(3)
  local failed = assert(conn:query([[SELECT last_error FROM evolution_jobs
    WHERE experiment_id = $1 AND status = 'FAILED']], exp))
  t.ok(#failed >= 1, "no job was failed")
  t.match(failed[1].last_error, "exceeded the worker time limit %(3 s%) plus 1 s grace")
  check_invariants(exp, total)
end)

t.case("with LORELEY_RESCHEDULE_OVERDUE the killed worker's job is scheduled again", function()
  local total = 6
  local env = env_for(4, total, { LORELEY_RESCHEDULE_OVERDUE = "true" })
  run("resched", env, 1, function() return { "--job-seconds", "30" } end, function(_, workers)
    t.ok(t.wait_for(30, function()
      local e = experiment_of(4)
      return e and scalar("SELECT count(*) FROM evolution_jobs WHERE experiment_id = $1 AND status = 'RUNNING'", e) > 0
    end), "the slow worker never started a job")
    sys.kill(workers[1], "KILL")
    workers[2] = setup.spawn_worker(t.host_binary, env, { "--id", "resched-2" }, dir .. "/resched-w2.log")
  end)
  local exp = experiment_of(4)
  local failed = scalar([[SELECT count(*) FROM evolution_jobs WHERE experiment_id = $1 AND status = 'FAILED']], exp)
  t.ok(failed >= 1)
  -- the copy: same base as a failed job, created after it, and it succeeded
  t.ok(scalar([[SELECT count(*) FROM evolution_jobs f JOIN evolution_jobs c
    ON c.experiment_id = f.experiment_id AND c.base_commit_hash = f.base_commit_hash
    AND c.created_at > f.created_at AND c.status = 'SUCCEEDED'
    WHERE f.experiment_id = $1 AND f.status = 'FAILED']], exp) >= 1, "no rescheduled copy succeeded")
end)

t.case("a worker writing malformed results: ingestion fails with the reason, the run goes on", function()
  local total = 12
  local env = env_for(5, total)
  local text = run("malformed", env, 2, function(i) return i == 1 and { "--malformed-rate", "1" } or {} end)
  local exp = experiment_of(5)
  local bad = assert(conn:query([[SELECT payload->'ingestion'->'map_elites'->>'reason' AS reason
    FROM evolution_jobs WHERE experiment_id = $1
    AND payload->'ingestion'->'map_elites'->>'status' = 'failed']], exp))
  t.ok(#bad >= 1, "no malformed result was seen")
  t.match(bad[1].reason, "payload.result.metrics%[1%].value %(composite_score%) is not a number")
  t.match(text, "MAP%-Elites ingest failed job=")
  t.ok(scalar([[SELECT count(*) FROM evolution_jobs WHERE experiment_id = $1
    AND payload->'ingestion'->'map_elites'->>'status' = 'succeeded']], exp) >= 1, "good results ingested")
end)

conn:close()
t.finish()
