-- The example worker: a stand-in for Loreley's Python worker, run by the same binary.
--
--   loreley-host --once examples/worker.lua [-- options]
--     --max-jobs N       exit after N jobs (default: run until SIGINT/SIGTERM)
--     --idle-exit S      exit after S seconds without a message
--     --id NAME          the consumer id (default worker-<uuid>)
--     --job-seconds S    pretend each job takes S seconds (default 0)
--     --fail-rate P      fail a job's evaluation with probability P (fault injection)
--     --malformed-rate P write a malformed payload.result with probability P
--
-- It consumes the Dramatiq queue as a Dramatiq worker does (fetch into its acks set,
-- ack on success, nack into the dead-letter queue on failure), and runs each job the way
-- Loreley's worker writes the database (contract §1.4, §1.5, §1.6, §11):
--   start    SELECT ... FOR UPDATE NOWAIT; PENDING/QUEUED and a base commit required;
--            RUNNING, started_at, last_error = NULL
--   work     reads the base commit's packing.py and the inspirations', proposes a
--            variation (examples/circle_packing.lua), commits it on the job branch
--            <WORKER_REPO_JOB_BRANCH_PREFIX>/<job id> of the origin repository
--            (WORKER_REPO_REMOTE_URL, a local repository here), and evaluates it
--   success  SUCCEEDED, completed_at, plan_summary, payload + "result" (part B), and in
--            the same transaction the commits row and one metrics row per metric
--   failure  FAILED, completed_at, last_error (never over SUCCEEDED or CANCELLED)
-- The change is written straight into the repository's object database (repo:commit):
-- the effect of "check out the base, edit, commit, push" without a work tree.
local host = require "loreley.host"
local settings_mod = require "loreley.settings"
local db = require "loreley.db"
local broker = require "loreley.broker"
local git = require "loreley.git"
local json = require "loreley.json"

-- circle_packing.lua sits beside this file
local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
package.path = here .. "/?.lua;" .. package.path
local problem = require "circle_packing"

local ACTOR = "run_evolution_job"

local function parse_args(list)
  local opts = { max_jobs = math.huge, idle_exit = math.huge, job_seconds = 0, fail_rate = 0,
    malformed_rate = 0 }
  local i = 1
  while i <= #list do
    local a, v = list[i], list[i + 1]
    local function num()
      local n = tonumber(v)
      if not n then error(("worker: %s needs a number, got %s"):format(a, tostring(v)), 0) end
      i = i + 1
      return n
    end
    if a == "--max-jobs" then opts.max_jobs = num()
    elseif a == "--idle-exit" then opts.idle_exit = num()
    elseif a == "--job-seconds" then opts.job_seconds = num()
    elseif a == "--fail-rate" then opts.fail_rate = num()
    elseif a == "--malformed-rate" then opts.malformed_rate = num()
    elseif a == "--id" then opts.id = v; i = i + 1
    else error("worker: unknown option " .. tostring(a), 0) end
    i = i + 1
  end
  return opts
end

local opts = parse_args(arg or {})
local settings = settings_mod.current()
local consumer = opts.id or ("worker-" .. host.uuid4())
local queue = settings.tasks_queue_name
local prefix = settings.worker_repo_job_branch_prefix

local origin = settings.worker_repo_remote_url
if not origin or origin == "" then
  error("worker: WORKER_REPO_REMOTE_URL must name the origin repository (a local path here)", 0)
end
origin = origin:gsub("^file://", "")
local repo = git.open(origin)
if not repo then error(("worker: %s is not a git repository"):format(origin), 0) end

local conn = assert(db.connect(db.settings_url(settings)))
local b = assert(broker.from_settings(settings))
local rng = host.rng(consumer)

-- --- the database writes of Loreley's worker -------------------------------------------

local START_SQL = [[
SELECT id::text AS id, status::text AS status, base_commit_hash, island_id,
  experiment_id::text AS experiment_id, inspiration_commit_hashes, payload
FROM evolution_jobs WHERE id = $1 FOR UPDATE NOWAIT]]

-- Returns the job row when it may run; otherwise nil and why (the message is then acked).
local function start(job_id)
  local job, why
  local ok, err, code = conn:tx(function(c)
    local rows, qerr, qcode = c:query(START_SQL, job_id)
    if not rows then
      -- NOWAIT: another transaction holds the row (the transaction is aborted now, so
      -- it rolls back). Loreley's worker acks such a message and leaves the job alone.
      if qcode == "55P03" then why = "lock conflict" end
      return nil, qerr, qcode
    end
    local row = rows[1]
    if not row then why = "job not found" return true end
    if row.status ~= "PENDING" and row.status ~= "QUEUED" then
      why = "job is " .. row.status
      return true
    end
    if row.base_commit_hash == db.null or row.base_commit_hash == "" then
      assert(c:exec([[UPDATE evolution_jobs SET status = 'FAILED', completed_at = now(),
        last_error = 'Evolution job is missing base_commit_hash.', updated_at = now()
        WHERE id = $1]], job_id))
      why = "missing base_commit_hash"
      return true
    end
    assert(c:exec([[UPDATE evolution_jobs SET status = 'RUNNING', started_at = now(),
      last_error = NULL, updated_at = now() WHERE id = $1]], job_id))
    job = row
    return true
  end)
  if not ok and not why then
    return nil, ("cannot start job %s: %s (%s)"):format(job_id, tostring(err), tostring(code))
  end
  return job, why
end

local function fail_job(job_id, message)
  local ok, err = conn:exec([[UPDATE evolution_jobs SET status = 'FAILED', completed_at = now(),
    last_error = $2, updated_at = now()
    WHERE id = $1 AND status NOT IN ('SUCCEEDED', 'CANCELLED')]], job_id, message)
  if not ok then host.error("worker: cannot mark job %s failed: %s", job_id, tostring(err)) end
end

local function text(v) if v == nil or v == db.null then return nil end return v end

-- The SUCCEEDED write, the commits row and the metrics rows, in one transaction.
local function succeed(job, result, summary, extra_context)
  return conn:tx(function(c)
    local n, err = c:exec([[UPDATE evolution_jobs SET status = 'SUCCEEDED', completed_at = now(),
      plan_summary = $2, payload = payload || jsonb_build_object('result', $3::jsonb),
      last_error = NULL, updated_at = now() WHERE id = $1]], job.id, summary, result.json)
    if not n then return nil, err end
    n, err = c:exec([[INSERT INTO commits (id, commit_hash, parent_commit_hash, island_id,
      experiment_id, author, message, evaluation_summary, tags, extra_context)
      VALUES ($1, $2, $3, $4, $5, $6, $7, $8, '{}', $9::jsonb)]], host.uuid4(),
      result.commit_hash, job.base_commit_hash, text(job.island_id), text(job.experiment_id),
      settings.worker_evolution_commit_author, result.subject, result.evaluation_summary,
      extra_context)
    if not n then return nil, err end
    for _, m in ipairs(result.metrics) do
      n, err = c:exec([[INSERT INTO metrics (id, commit_hash, name, value, unit,
        higher_is_better, details) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)]], host.uuid4(),
        result.commit_hash, m.name, m.value, m.unit or db.null, m.higher_is_better,
        json.encode(m.details or {}))
      if not n then return nil, err end
    end
    return true
  end)
end

-- --- the job -----------------------------------------------------------------------------

local function circles_at(commit)
  local content = repo:read(commit, problem.FILE, 1048576)
  if not content then return nil end
  return problem.parse(content), content
end

local function inspiration_hashes(job)
  local out = {}
  local payload = type(job.payload) == "table" and job.payload or {}
  if type(payload.inspirations) == "table" then
    for _, r in ipairs(payload.inspirations) do
      if type(r) == "table" and type(r.commit_hash) == "string" then out[#out + 1] = r.commit_hash end
    end
  end
  if #out == 0 and type(job.inspiration_commit_hashes) == "table" then
    for _, h in ipairs(job.inspiration_commit_hashes) do out[#out + 1] = h end
  end
  return out
end

local function run(job)
  local base = job.base_commit_hash
  local base_circles, base_text = circles_at(base)
  local job_rng = host.rng("job:" .. job.id)
  if not base_circles then base_circles = problem.initial(job_rng) end
  local inspirations = {}
  for _, h in ipairs(inspiration_hashes(job)) do
    local c = circles_at(h)
    if c then inspirations[#inspirations + 1] = c end
  end
  if opts.job_seconds > 0 then host.sleep(opts.job_seconds) end
  local child, strategy = problem.vary(base_circles, inspirations, job_rng)
  local lineage = problem.lineage(base_text)
  lineage[#lineage + 1] = strategy
  local content = problem.render(child, lineage)
  local metrics, valid, sum = problem.evaluate(child)
  if rng:random() < opts.fail_rate then
    error(("evaluation failed (injected fault) for strategy %s"):format(strategy), 0)
  end
  local subject = ("%s: circle packing, sum of radii %.4f"):format(strategy, sum)
  -- The job id in the message keeps two jobs that reach the same packing from making
  -- the same commit object (commits.commit_hash is unique, §11.9).
  local hash = assert(repo:commit {
    parent = base, files = { [problem.FILE] = content },
    message = subject .. "\n\nLoreley-Job: " .. job.id .. "\n",
    author = settings.worker_evolution_commit_author,
    email = settings.worker_evolution_commit_email,
    ref = ("refs/heads/%s/%s"):format(prefix, job.id),
  })
  local summary = ("Apply the %s strategy to the base packing (%d inspiration(s))")
    :format(strategy, #inspirations)
  local evaluation = ("%s packing of %d circles, sum of radii %.6f"):format(
    valid and "valid" or "invalid", problem.N, sum)
  local metric_rows = {}
  for i, m in ipairs(metrics) do
    metric_rows[i] = { name = m.name, value = m.value, unit = m.unit or json.null,
      higher_is_better = m.higher_is_better, details = m.details or {} }
  end
  local result = {
    commit_hash = hash, plan_summary = summary,
    tests_executed = json.array { "evaluate packing.py" }, tests_recommended = json.array(),
    evaluation_summary = evaluation, metrics = json.array(metric_rows),
  }
  if rng:random() < opts.malformed_rate then
    -- fault injection: what a broken worker might write
    result.metrics = { { name = "composite_score", value = "not a number" } }
  end
  local extra_context = json.encode {
    job = { id = job.id, island_id = text(job.island_id), experiment_id = text(job.experiment_id) },
    base_commit = base, inspirations = json.array(inspiration_hashes(job)),
    plan = { summary = summary, strategy = strategy },
    evaluation = { summary = evaluation, metrics = json.array(metric_rows) },
    worker = { app_name = settings.app_name, environment = settings.environment,
      completed_at = os.date("!%Y-%m-%dT%H:%M:%S+00:00") },
  }
  local ok, err = succeed(job, { json = json.encode(result), commit_hash = hash, subject = subject,
    evaluation_summary = evaluation, metrics = metric_rows }, summary, extra_context)
  if not ok then error("cannot record the result: " .. tostring(err), 0) end
  return hash, sum
end

-- --- the consumer loop ----------------------------------------------------------------------

local done, idle_since, last_beat = 0, host.now(), 0
host.info("worker %s consuming %s (origin %s)", consumer, queue, origin)
while not host.stop_requested() and done < opts.max_jobs do
  if host.now() - last_beat > 5 then
    b:heartbeat(consumer)
    last_beat = host.now()
  end
  local messages, err = b:fetch(queue, 1, consumer)
  if not messages then
    host.warn("worker: fetch failed: %s", tostring(err))
    host.sleep(0.5)
  elseif #messages == 0 then
    if host.now() - idle_since > opts.idle_exit then break end
    host.sleep(0.02)
  else
    idle_since = host.now()
    for _, m in ipairs(messages) do
      local msg = m.message
      if m.error or type(msg) ~= "table" or msg.actor_name ~= ACTOR
          or type(msg.args) ~= "table" or type(msg.args[1]) ~= "string" then
        host.error("worker: dead-lettering message %s: %s", tostring(m.redis_message_id),
          tostring(m.error or "not a run_evolution_job message"))
        b:nack(queue, m.redis_message_id, consumer)
      else
        local job_id = msg.args[1]:match("^%s*(.-)%s*$")
        local job, why = start(job_id)
        if not job then
          host.info("worker: skipping job %s: %s", job_id, tostring(why))
          b:ack(queue, m.redis_message_id, consumer)
        else
          local ok, hash, sum = pcall(run, job)
          if ok then
            host.info("worker: job %s -> %s (sum of radii %.4f)", job_id, hash:sub(1, 12), sum)
            b:ack(queue, m.redis_message_id, consumer)
          else
            host.warn("worker: job %s failed: %s", job_id, tostring(hash))
            fail_job(job_id, tostring(hash))
            b:nack(queue, m.redis_message_id, consumer)
          end
          done = done + 1
        end
      end
    end
  end
end
-- Messages fetched but not started go back to the queue, as a Dramatiq worker does on a
-- graceful stop.
b:requeue(queue, consumer)
host.info("worker %s stopped after %d job(s)", consumer, done)
