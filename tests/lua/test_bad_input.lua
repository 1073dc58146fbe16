-- ctest: labels=fault;pg;redis;git timeout=300
-- Bad input reaching the scheduler's stages, each reported with what was wrong and where,
-- while the host keeps running: job rows malformed at every level, metrics that are not
-- numbers, a commit hash that is not hex or exists nowhere, an unknown island, a shallow
-- repository and a detached HEAD, a Redis key of the wrong type, and archive state in
-- the database that is truncated (start-up refuses it, naming the row).
local t = require "support.t"
local sys = require "loreley.sys"
local db = require "loreley.db"
local json = require "loreley.json"
local host = require "loreley.host"
local settings_mod = require "loreley.settings"
local context = require "loreley.context"
local stages = require "loreley.stages"

package.path = t.source_dir .. "/examples/?.lua;" .. package.path
local setup = require "demo_setup"

local dir = t.tmpdir()
local stack = setup.start(dir .. "/stack")
local base_env = setup.environment(stack)

local function settings_for(overrides)
  local env = {}
  for k, v in pairs(base_env) do if v then env[k] = v end end
  for k, v in pairs(overrides or {}) do env[k] = v end
  return assert(settings_mod.load { env = env, dotenv = false })
end

local function new_ctx(overrides)
  local ctx = context.new { settings = settings_for(overrides), args = {}, once = false, tick = 1 }
  stages.init(ctx)
  return ctx
end

local ctx = new_ctx()
local s = ctx.loreley
local conn = s.conn

-- A SUCCEEDED job with the given payload (JSON text), as a worker would leave it.
local function succeeded_job(payload_json, island)
  local id = host.uuid4()
  assert(conn:exec([[INSERT INTO evolution_jobs (id, status, base_commit_hash, island_id,
    experiment_id, inspiration_commit_hashes, payload, priority, completed_at)
    VALUES ($1, 'SUCCEEDED', NULL, $2, $3, '{}', $4::jsonb, 0, now())]], id, island or "main",
    s.experiment.id, payload_json))
  return id
end

local function ingestion_state(id)
  local p = assert(conn:query("SELECT payload FROM evolution_jobs WHERE id = $1", id))[1].payload
  if type(p) ~= "table" or p[1] ~= nil then p = {} end
  return ((p.ingestion or {}).map_elites) or (p.loreley_original_payload and
    ((p.ingestion or {}).map_elites)) or {}
end

-- A real commit on the origin, made by the example worker's way of committing.
local origin = require("loreley.git").open(stack.origin)
local root = origin:resolve("main")
local function worker_commit(n)
  return assert(origin:commit { parent = root, files = { ["packing.py"] = ("# variant %d\ndef circles():\n    return [(0.5, 0.5, 0.%d)]\n"):format(n, n) },
    message = "variant " .. n, author = "w", email = "w@w", ref = "refs/heads/evolution/job/v" .. n })
end
local good_hash = worker_commit(1)

local function result(fields)
  local r = { commit_hash = good_hash, plan_summary = "p", tests_executed = json.array(),
    tests_recommended = json.array(), evaluation_summary = "e",
    metrics = json.array { { name = "composite_score", value = 1.5, unit = json.null,
      higher_is_better = true, details = {} } } }
  for k, v in pairs(fields or {}) do r[k] = v end
  return json.encode { result = r }
end

local CASES = {
  { name = "payload is an array", payload = "[1, 2]", status = "failed",
    reason = "payload is not a JSON object (it is an array)" },
  { name = "payload.result missing", payload = "{}", status = "failed", reason = "payload.result is missing" },
  { name = "payload.result not an object", payload = '{"result": "done"}', status = "failed",
    reason = "payload.result is not a JSON object" },
  { name = "commit_hash missing", payload = '{"result": {"metrics": []}}', status = "failed",
    reason = "payload.result.commit_hash is missing" },
  { name = "commit_hash empty", payload = result { commit_hash = "  " }, status = "failed",
    reason = "payload.result.commit_hash is empty" },
  { name = "commit_hash not hex", payload = result { commit_hash = "not-a-hash; DROP TABLE commits" },
    status = "failed", reason = "is not a 40-hex commit id" },
  { name = "commit nowhere", payload = result { commit_hash = ("e"):rep(40) }, status = "failed",
    reason = "not found after fetch" },
  { name = "metrics not a list", payload = result { metrics = { composite_score = 1 } },
    status = "failed", reason = "payload.result.metrics is not a list" },
  { name = "metric value a string", payload = result { metrics = json.array { { name = "composite_score", value = "NaN" } } },
    status = "failed", reason = "payload.result.metrics[1].value (composite_score) is not a number" },
  { name = "metric without a name", payload = result { metrics = json.array { { value = 1 } } },
    status = "failed", reason = "payload.result.metrics[1].name is missing or empty" },
  { name = "metric entry not an object", payload = result { metrics = json.array { 3 } },
    status = "failed", reason = "payload.result.metrics[1] is not an object" },
}

t.case("malformed job rows are recorded as failed ingestions with the reason", function()
  local ids = {}
  for i, c in ipairs(CASES) do ids[i] = succeeded_job(c.payload) end
  local saved = ctx.settings.scheduler_ingest_batch_size
  rawset(ctx.settings, "scheduler_ingest_batch_size", 50)
  local n = ctx:stage("ingest", stages.ingest)
  rawset(ctx.settings, "scheduler_ingest_batch_size", saved)
  t.eq(n, 0, "nothing entered the archive")
  t.eq(ctx.stats.stages.ingest.failures, 0, "the stage itself did not fail")
  for i, c in ipairs(CASES) do
    local st = ingestion_state(ids[i])
    t.eq(st.status, c.status, c.name)
    t.ok(type(st.reason) == "string" and st.reason:find(c.reason, 1, true),
      ("%s: reason %q lacks %q"):format(c.name, tostring(st.reason), c.reason))
    t.eq(st.attempts, 1, c.name)
  end
  -- A payload that was not an object is kept, not lost.
  local p = assert(conn:query("SELECT payload FROM evolution_jobs WHERE id = $1", ids[1]))[1].payload
  t.same(p.loreley_original_payload, { 1, 2 })
end)

t.case("a job on an unknown island creates the island; a good job is ingested", function()
  local a = succeeded_job(result { commit_hash = worker_commit(2) }, "island-new")
  local b = succeeded_job(result { commit_hash = worker_commit(3) })
  t.eq(ctx:stage("ingest", stages.ingest), 2)
  t.eq(ingestion_state(a).status, "succeeded")
  t.eq(ingestion_state(a).record.island_id, "island-new")
  t.eq(ingestion_state(b).status, "succeeded")
  t.ok(s.islands["island-new"], "island created")
end)

t.case("the loop goes on: a full tick after the bad rows", function()
  local counts = stages.tick(ctx)
  local sched = ctx.stats.stages.schedule
  t.ok(counts.scheduled > 0, "no job scheduled after bad input: " .. tostring(sched and sched.last_error))
end)

t.case("a Redis key of the wrong type: the sends fail, are logged, and recovery re-sends", function()
  local q = "loreley:" .. ctx.settings.tasks_queue_name
  stack.redis:cli("DEL", q, q .. ".msgs")   -- Redis lost its data (the earlier messages too)
  stack.redis:cli("SET", q, "not a list")
  local before = #host.recent_logs()
  rawset(ctx.settings, "scheduler_max_unfinished_jobs", 100)
  local created = stages.schedule(ctx, 0)
  t.ok(created > 0)
  local found = false
  for _, e in ipairs(host.recent_logs()) do
    if e.message:find("Failed to enqueue job id=", 1, true) and e.message:find("WRONGTYPE", 1, true) then found = true end
  end
  t.ok(found, "no 'Failed to enqueue ... WRONGTYPE' warning")
  local _ = before
  stack.redis:cli("DEL", q)
  -- the jobs are QUEUED without a message: recovery sends them once the grace has passed
  rawset(ctx.settings, "loreley_recovery_grace_seconds", 0)
  host.sleep(1.1)
  s.next_recovery = nil   -- recovery runs at most every grace/2: run it now
  local recovered = stages.recover(ctx)
  t.ok(recovered >= created, ("recovered %d of %d"):format(recovered, created))
  t.eq(tonumber(stack.redis:cli("LLEN", q)) >= created, true)
  -- and sending again does not duplicate them
  s.next_recovery = nil
  stages.recover(ctx)
  local queued = assert(conn:query([[SELECT count(*) AS n FROM evolution_jobs
    WHERE experiment_id = $1 AND status = 'QUEUED']], s.experiment.id))[1].n
  t.eq(tonumber(stack.redis:cli("LLEN", q)), queued, "one message per QUEUED job")
end)

stages.shutdown(ctx)

t.case("truncated archive state in the database: start-up refuses it, naming the row", function()
  local c = assert(db.connect(stack.pg.url))
  assert(c:exec([[UPDATE loreley_archive_cells SET measures = measures[1:2]
    WHERE cell_index = (SELECT min(cell_index) FROM loreley_archive_cells)]]))
  c:close()
  local r = t.run_host({ "--once", t.source_dir .. "/examples/policy.lua" }, { env = base_env })
  t.eq(r.code, 1)
  t.match(r.stderr, "restore archive of island [%w%-]+: row %d+: measures has 2 values, archive has 4 dimensions")
end)

t.case("a shallow scheduler clone and a detached HEAD still bootstrap and ingest", function()
  local shallow = dir .. "/shallow"
  local env = { GIT_CONFIG_GLOBAL = "/dev/null", GIT_CONFIG_NOSYSTEM = "1" }
  assert(sys.run({ "git", "clone", "-q", "--depth", "1", "file://" .. stack.origin, shallow }, { env = env }))
  assert(sys.run({ "git", "-C", shallow, "checkout", "-q", "--detach", "HEAD" }, { env = env }))
  -- another experiment (priority differs), rooted in the shallow, detached clone
  local cenv = {}
  for k, v in pairs(base_env) do cenv[k] = v end
  cenv.SCHEDULER_REPO_ROOT = shallow
  cenv.MAPELITES_SAMPLER_DEFAULT_PRIORITY = "9"
  local r = t.run_host({ "--once", t.source_dir .. "/examples/policy.lua" }, { env = cenv })
  t.eq(r.code, 0, r.stderr)
  t.match(r.stderr, "bootstrap: root commit %x+ is the first elite")
  t.match(r.stderr, "tick 1 ")
end)

t.finish()
