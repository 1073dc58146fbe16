-- ctest: labels=e2e;pg;redis;git timeout=300
-- The example worker against real PostgreSQL, Redis and git: the success path writes
-- exactly the rows of §1.4/§1.5 (and the commit on the job branch); a missing job, a job
-- already running, a locked job, a job without a base commit, a failing evaluation and a
-- malformed message are each handled as Loreley's worker and Dramatiq would.
local t = require "support.t"
local sys = require "loreley.sys"
local db = require "loreley.db"
local json = require "loreley.json"
local broker_mod = require "loreley.broker"
local settings_mod = require "loreley.settings"
local experiment = require "loreley.experiment"
local jobstore = require "loreley.jobstore"

package.path = t.source_dir .. "/examples/?.lua;" .. package.path
local setup = require "demo_setup"

local dir = t.tmpdir()
local stack = setup.start(dir .. "/stack")
local env = setup.environment(stack)
local settings = assert(settings_mod.load { env = (function()
  local e = {}
  for k, v in pairs(env) do if v then e[k] = v end end
  return e
end)(), dotenv = false })
local conn = assert(db.connect(stack.pg.url))
local schema = require "loreley.schema"
assert(schema.migrate(conn))
local exp = assert(experiment.setup(conn, { root = stack.root, remotes = {}, settings = settings }))
local store = jobstore.new(conn, exp.id)
local b = assert(broker_mod.from_settings(settings))
local QUEUE = settings.tasks_queue_name

local root = setup and require("loreley.git").open(stack.origin):resolve("main")
assert(store:insert_commit { commit_hash = root, island_id = "main", author = "test" })

local function new_job(base)
  local job = assert(store:create_seed_job { base_commit_hash = base or root, island_id = "main" })
  assert(store:mark_queued { job.id })
  return job.id
end

local function enqueue(job_id)
  assert(b:enqueue(QUEUE, "run_evolution_job", { job_id }, { dedupe = job_id }))
end

local function run_worker(args)
  local argv = { "--max-jobs", "1", "--idle-exit", "2" }
  for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
  local log = t.tmpdir() .. "/worker.log"
  local pid = setup.spawn_worker(t.host_binary, env, argv, log)
  local status = sys.wait(pid, 60)
  t.ok(status and status.code == 0, "worker exit: " .. (t.read(log) or ""))
  return t.read(log) or ""
end

local function job_row(id)
  return assert(conn:query([[SELECT status::text AS status, payload, last_error, plan_summary,
    started_at, completed_at FROM evolution_jobs WHERE id = $1]], id))[1]
end

local function dead_letters()
  return tonumber(stack.redis:cli("ZCARD", "loreley:" .. QUEUE .. ".XQ")) or 0
end

t.case("success: RUNNING then SUCCEEDED with result, commits and metrics rows, job branch", function()
  local id = new_job()
  enqueue(id)
  local log = run_worker()
  t.match(log, "worker: job " .. id:gsub("%-", "%%-") .. " %-> %x+")
  local row = job_row(id)
  t.eq(row.status, "SUCCEEDED")
  t.ok(row.started_at ~= db.null and row.completed_at ~= db.null)
  t.eq(row.last_error, db.null)
  t.match(row.plan_summary, "strategy")
  local result = row.payload.result
  t.match(result.commit_hash, "^%x+$")
  t.eq(#result.commit_hash, 40)
  t.ok(type(result.evaluation_summary) == "string")
  local names = {}
  for _, m in ipairs(result.metrics) do names[m.name] = m end
  t.ok(names.composite_score and type(names.composite_score.value) == "number")
  t.eq(names.composite_score.higher_is_better, true)
  -- commits and metrics rows (the worker's, §1.4 success)
  local c = assert(conn:query([[SELECT parent_commit_hash, island_id, experiment_id::text AS e,
    author, extra_context FROM commits WHERE commit_hash = $1]], result.commit_hash))[1]
  t.eq(c.parent_commit_hash, root)
  t.eq(c.island_id, "main")
  t.eq(c.e, exp.id)
  t.eq(c.author, "Loreley Worker")
  t.eq(c.extra_context.job.id, id)
  local m = assert(conn:query([[SELECT count(*) AS n FROM metrics WHERE commit_hash = $1]], result.commit_hash))[1]
  t.eq(m.n, #result.metrics)
  -- the commit is on the job branch of the origin, child of the base (git's own view)
  local r = assert(sys.run { "git", "-C", stack.origin, "rev-parse", "evolution/job/" .. id })
  t.eq(r.stdout:gsub("%s", ""), result.commit_hash)
  r = assert(sys.run { "git", "-C", stack.origin, "rev-parse", result.commit_hash .. "^" })
  t.eq(r.stdout:gsub("%s", ""), root)
  -- the message was acked: nothing left in Redis for it
  t.eq(b:is_waiting(QUEUE, id), false)
end)

t.case("a message for a job that does not exist is acked and dropped", function()
  local ghost = "00000000-0000-4000-8000-000000000000"
  enqueue(ghost)
  local before = dead_letters()
  local log = run_worker()
  t.match(log, "skipping job 00000000%-0000%-4000%-8000%-000000000000: job not found")
  t.eq(b:is_waiting(QUEUE, ghost), false)
  t.eq(dead_letters(), before)
end)

t.case("a job already RUNNING is left alone (precondition), message acked", function()
  local id = new_job()
  assert(conn:exec("UPDATE evolution_jobs SET status = 'RUNNING', started_at = now() WHERE id = $1", id))
  enqueue(id)
  local log = run_worker()
  t.match(log, "skipping job .*: job is RUNNING")
  t.eq(job_row(id).status, "RUNNING")
  t.eq(b:is_waiting(QUEUE, id), false)
end)

t.case("a job locked by another transaction: lock conflict, acked, untouched", function()
  local id = new_job()
  local other = assert(db.connect(stack.pg.url))
  assert(other:exec("BEGIN"))
  assert(other:query("SELECT id FROM evolution_jobs WHERE id = $1 FOR UPDATE", id))
  enqueue(id)
  local log = run_worker()
  assert(other:exec("ROLLBACK"))
  other:close()
  t.match(log, "skipping job .*: lock conflict")
  t.eq(job_row(id).status, "QUEUED")
end)

t.case("a job without a base commit is marked FAILED as Loreley's worker does", function()
  local id = new_job()
  assert(conn:exec("UPDATE evolution_jobs SET base_commit_hash = NULL WHERE id = $1", id))
  enqueue(id)
  run_worker()
  local row = job_row(id)
  t.eq(row.status, "FAILED")
  t.eq(row.last_error, "Evolution job is missing base_commit_hash.")
end)

t.case("a failing evaluation: FAILED with the reason, message dead-lettered", function()
  local id = new_job()
  enqueue(id)
  local before = dead_letters()
  local log = run_worker { "--fail-rate", "1" }
  t.match(log, "failed: evaluation failed %(injected fault%)")
  local row = job_row(id)
  t.eq(row.status, "FAILED")
  t.match(row.last_error, "evaluation failed")
  t.ok(row.completed_at ~= db.null)
  t.eq(dead_letters(), before + 1)
end)

t.case("a malformed message is dead-lettered, not run", function()
  local rid = "11111111-1111-4111-8111-111111111111"
  stack.redis:cli("HSET", "loreley:" .. QUEUE .. ".msgs", rid, json.encode {
    queue_name = QUEUE, actor_name = "some_other_actor", args = { "x" }, kwargs = {},
    options = { redis_message_id = rid }, message_id = rid, message_timestamp = 0 })
  stack.redis:cli("RPUSH", "loreley:" .. QUEUE, rid)
  local before = dead_letters()
  local log = run_worker()
  t.match(log, "dead%-lettering message " .. rid:gsub("%-", "%%-"))
  t.eq(dead_letters(), before + 1)
end)

b:close()
conn:close()
t.finish()
