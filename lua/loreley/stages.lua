-- loreley.stages: the scheduler's start-up and its four tick stages (contract §6),
-- built from the host's modules. A policy calls them through ctx:stage, in any order,
-- and may replace any of them.
--
--   stages.init(ctx)             repository, database (migrations), experiment, leader lock,
--                                broker, every island's archive and reducer, bootstrap
--   stages.lead(ctx) -> bool     true while this process holds the experiment's leader lock
--   stages.recover(ctx) -> n     re-sends QUEUED jobs whose message is gone; fails RUNNING
--                                jobs past the worker time limit (§9 item 7)
--   stages.ingest(ctx) -> n      succeeded jobs -> descriptor -> archive (records made)
--   stages.dispatch(ctx) -> n    PENDING -> QUEUED -> Dramatiq messages
--   stages.measure(ctx) -> n     PENDING + QUEUED + RUNNING of this experiment
--   stages.schedule(ctx, unfinished) -> n   new jobs while capacity allows
--   stages.finish(ctx, unfinished)          stops the host at SCHEDULER_MAX_TOTAL_JOBS
--   stages.shutdown(ctx)
--   stages.tick(ctx)             the reference's tick: all of the above, then the summary
--
-- Everything the stages keep lives in ctx.loreley (connections, islands, sampler, and the
-- counters of the metrics endpoint in ctx.loreley.counters), so it survives a policy
-- reload. While ctx.paused is true (the HTTP control plane), dispatch and schedule do
-- nothing; ingestion and recovery go on. Lower-level pieces a policy can reuse:
--   stages.island(ctx, island_id) -> island {id, archive, reducer, lower, upper, shape}
--   stages.ingest_commit(ctx, island_id, commit_hash, metrics, metadata) -> outcome
--   stages.resolve_fitness(metrics, settings) -> fitness | nil
--   stages.send(ctx, jobs) -> n  stages.create_job(ctx, island, pick) -> job
local host = require "loreley.host"
local json = require "loreley.json"
local db = require "loreley.db"
local git = require "loreley.git"
local broker_mod = require "loreley.broker"
local archive_mod = require "loreley.archive"
local descriptor = require "loreley.descriptor"
local experiment = require "loreley.experiment"
local schema = require "loreley.schema"
local jobstore = require "loreley.jobstore"
local sampler_mod = require "loreley.sampler"

local M = {}

local ACTOR = "run_evolution_job"

-- Raises "what: message" when a world call failed (inside a stage: logged, stage = 0).
local function check(what, ok, err, ...)
  if ok == nil then error(("%s: %s"):format(what, tostring(err)), 2) end
  return ok, err, ...
end

local function state(ctx)
  local s = ctx.loreley
  if not s then error("loreley.stages: stages.init(ctx) has not run", 3) end
  return s
end

-- Counters for the metrics endpoint (loreley.monitor): s.counters[key] += n.
local function count(s, key, n)
  local c = s.counters
  c[key] = (c[key] or 0) + (n or 1)
end

-- --- islands ---------------------------------------------------------------------------

-- The archive configuration of a new island, from the settings (§3.8).
local function island_config(settings)
  local d = math.max(1, settings.mapelites_dimensionality_target_dims)
  local c = math.max(2, settings.mapelites_archive_cells_per_dim)
  local lower, upper = descriptor.bounds(settings)
  local shape = {}
  for i = 1, d do shape[i] = c end
  return {
    shape = shape, lower = lower, upper = upper,
    learning_rate = settings.mapelites_archive_learning_rate,
    threshold_min = settings.mapelites_archive_threshold_min,
    epsilon = settings.mapelites_archive_epsilon,
    qd_score_offset = settings.mapelites_archive_qd_score_offset,
  }
end

local function nonfinite_safe(v)   -- JSON cannot hold -inf: the sentinel of §2.3
  if v == -math.huge then return { __float__ = "-inf" } end
  if v == math.huge then return { __float__ = "inf" } end
  return v
end

local function from_stored(v)
  if type(v) == "table" and v.__float__ then
    return ({ ["-inf"] = -math.huge, inf = math.huge })[v.__float__] or 0 / 0
  end
  return v
end

local function make_archive(config)
  return archive_mod.grid {
    dims = config.shape, lower = config.lower, upper = config.upper,
    learning_rate = config.learning_rate, threshold_min = config.threshold_min,
    epsilon = config.epsilon, qd_score_offset = config.qd_score_offset,
  }
end

-- Loads an island's archive, bounds and reducer from the database (or creates it).
local function load_island(ctx, island_id, saved_config)
  local s = state(ctx)
  local settings = ctx.settings
  local config = island_config(settings)
  if saved_config then
    -- The bounds come from the stored island when there is one (as the reference's
    -- snapshot); the experiment hash pins every other archive setting.
    config.lower = saved_config.lower or config.lower
    config.upper = saved_config.upper or config.upper
    config.shape = saved_config.shape or config.shape
    config.threshold_min = from_stored(saved_config.threshold_min) or config.threshold_min
  else
    local stored = {}
    for k, v in pairs(config) do stored[k] = v end
    stored.threshold_min = nonfinite_safe(config.threshold_min)
    stored.shape = json.array(config.shape)
    check("save island " .. island_id, s.store:save_island(island_id, stored))
  end
  local archive = make_archive(config)
  local rows = check("load cells of island " .. island_id, s.store:load_cells(island_id))
  if #rows > 0 then
    check("restore archive of island " .. island_id, archive:load_rows(rows))
  end
  local opts = descriptor.options(settings)
  opts.lower_bounds, opts.upper_bounds = config.lower, config.upper
  local reducer_rows = check("load reducer of island " .. island_id,
    s.store:load_reducer(island_id))
  local reducer
  if reducer_rows then
    reducer = check("restore reducer of island " .. island_id,
      descriptor.reducer_from_rows(reducer_rows, opts))
  else
    reducer = descriptor.reducer(opts)
  end
  reducer:take_changes()   -- what is loaded is already stored
  local island = { id = island_id, archive = archive, reducer = reducer, opts = opts,
    lower = config.lower, upper = config.upper, shape = config.shape }
  s.islands[island_id] = island
  return island
end

function M.island(ctx, island_id)
  local s = state(ctx)
  island_id = island_id or s.default_island
  local island = s.islands[island_id]
  if island and not island.dirty then return island end
  return load_island(ctx, island_id, island and island.saved_config)
end

-- --- start-up --------------------------------------------------------------------------

local function repo_root(settings)
  local root = settings.scheduler_repo_root
  if root == nil or root == "" then root = settings.worker_repo_worktree end
  return experiment.resolve_root(root)
end

-- Waits for the experiment's leader lock (one scheduler per experiment). Returns true
-- when held, false when a stop was requested while waiting.
local function take_leadership(ctx)
  local s = state(ctx)
  local announced = false
  while not host.stop_requested() do
    local ok, err = s.conn:try_lock(s.lock_key)
    if ok then
      if announced then host.info("took over as the scheduler of experiment %s", s.experiment.name) end
      return true
    end
    if ok == nil then host.warn("leader lock: %s", tostring(err)) end
    if not announced then
      host.info("another scheduler leads experiment %s; waiting to take over", s.experiment.name)
      announced = true
    end
    host.sleep(1)
  end
  return false
end

-- stages.lead(ctx): true while this process holds the leader lock. After a lost
-- connection the lock may be gone: it is taken again, or scheduling pauses.
function M.lead(ctx)
  local s = state(ctx)
  local held = s.conn:holds_lock(s.lock_key)
  if held then return true end
  local ok = s.conn:try_lock(s.lock_key)
  if ok then
    host.warn("leader lock was lost (database reconnect?) and has been taken again")
    return true
  end
  if not s.follower_logged then
    host.error("another scheduler holds the leader lock of experiment %s; not scheduling",
      s.experiment.name)
    s.follower_logged = true
  end
  return false
end

local function sampler_seed(settings)
  if settings.loreley_sampler_seed then return settings.loreley_sampler_seed end
  return tonumber(host.uuid4():gsub("-", ""):sub(1, 12), 16)
end

-- The root commit a new experiment starts from (LORELEY_BOOTSTRAP_COMMIT or HEAD).
local function bootstrap_commit(ctx)
  local s = state(ctx)
  local rev = ctx.settings.loreley_bootstrap_commit
  if rev and rev ~= "" then
    return check("bootstrap commit " .. rev, s.repo:resolve(rev))
  end
  return check("bootstrap commit (HEAD of " .. s.root .. ")", s.repo:head())
end

-- When the default island is empty, ingest the root commit so sampling can start (the
-- reference schedules nothing for ever on an empty archive, §9 item 9).
function M.bootstrap(ctx)
  local s = state(ctx)
  local island = M.island(ctx, s.default_island)
  if island.archive:stats().num_elites > 0 then return false end
  local hash, metrics, author, summary
  if s.seams.bootstrap then
    hash, metrics = s.seams.bootstrap(ctx, island)
    author, summary = "loreley-host", "bootstrap"
  else
    hash = bootstrap_commit(ctx)
    local info = check("commit " .. hash, s.repo:commit_info(hash))
    author, summary = info.author, info.summary
  end
  check("commits row for " .. hash, s.store:insert_commit {
    commit_hash = hash, island_id = island.id, author = author,
    message = summary, extra_context = { bootstrap = true },
  })
  local outcome = M.ingest_commit(ctx, island.id, hash, metrics or {},
    { bootstrap = true, treeish = hash })
  if outcome.status_code and outcome.status_code > 0 then
    host.info("bootstrap: root commit %s is the first elite (cell %d)", hash:sub(1, 12),
      outcome.record.cell_index)
  else
    host.warn("bootstrap: root commit %s was not inserted: %s", hash:sub(1, 12),
      tostring(outcome.message or outcome.reason))
  end
  return true
end

-- ctx.seams, when the runner sets it before init (the policy lab does), replaces the
-- parts that touch the evolved repository:
--   seams.repository = false       no git repository (seams.root names the experiment)
--   seams.describe(ctx, island, commit_hash) -> measures | nil, message, kind
--   seams.ensure_commit(ctx, commit_hash) -> true | nil, message
--   seams.bootstrap(ctx, island) -> commit_hash, metrics   (the first elite)
function M.init(ctx)
  local settings = ctx.settings
  local seams = ctx.seams or {}
  local s = { islands = {}, default_island = settings.mapelites_default_island_id, seams = seams,
    counters = {} }
  if s.default_island == "" then s.default_island = "default" end
  ctx.loreley = s
  local remotes = {}
  if seams.repository == false then
    s.root = seams.root or "simulation"
  else
    s.root = repo_root(settings)
    s.repo = git.open(s.root)
    if not s.repo then error(("Scheduler repo %s is not a git repository."):format(s.root), 0) end
    remotes = s.repo:remotes()
  end
  s.describe = seams.describe or M.describe_commit
  s.ensure_commit = seams.ensure_commit or M.ensure_commit
  local url = db.settings_url(settings)
  s.conn = check("database", db.connect(url))
  check("schema", schema.ensure(s.conn, settings))
  s.experiment = check("experiment", experiment.setup(s.conn, {
    root = s.root, remotes = remotes, settings = settings }))
  s.lock_key = experiment.leader_key(s.experiment.id)
  if not take_leadership(ctx) then return end
  s.store = jobstore.new(s.conn, s.experiment.id)
  s.broker = check("broker", broker_mod.from_settings(settings, { lazy = true }))
  s.queue = settings.tasks_queue_name
  local seed = sampler_seed(settings)
  s.rng = host.rng(seed)
  s.sampler = sampler_mod.new { settings = settings, rng = s.rng }
  host.info("sampler seed %d (set LORELEY_SAMPLER_SEED to reproduce)", seed)
  local islands = check("islands", s.store:list_islands())
  for _, row in ipairs(islands) do
    local island = load_island(ctx, row.island_id, row.config)
    island.saved_config = row.config
    host.info("island %s: %d elites, reducer history %d%s", row.island_id,
      island.archive:stats().num_elites, island.reducer:history_len(),
      island.reducer:fitted() and " (fitted)" or "")
  end
  M.island(ctx, s.default_island)
  M.bootstrap(ctx)
  host.info("Scheduler online repo=%s experiment=%s interval=%ss max_unfinished=%d",
    s.root, s.experiment.name, tostring(settings.scheduler_poll_interval_seconds),
    settings.scheduler_max_unfinished_jobs)
end

function M.shutdown(ctx)
  local s = ctx.loreley
  if not s then return end
  if s.broker then s.broker:close() end
  if s.repo then s.repo:close() end
  if s.conn then s.conn:close() end
  host.info("Scheduler stopped")
end

-- --- fitness and ingestion ---------------------------------------------------------------

-- §3.7: the fitness metric times the direction; a missing metric gives the floor (not
-- signed); an empty metric name or a non-finite value gives nil (undefined).
function M.resolve_fitness(metrics, settings)
  local name = settings.mapelites_fitness_metric
  if name == nil or name == "" then return nil end
  local values = {}
  for _, m in ipairs(metrics or {}) do
    local key = m.name or m.metric or m.key
    local v = tonumber(m.value)
    if type(key) == "string" and v then values[key] = v end
  end
  local v = values[name]
  if v == nil then return settings.mapelites_fitness_floor end
  v = v * (settings.mapelites_fitness_higher_is_better and 1 or -1)
  if v ~= v or v == math.huge or v == -math.huge then return nil end
  return v
end

local function metrics_map(metrics)
  local out = {}
  for _, m in ipairs(metrics or {}) do
    if type(m.name) == "string" and type(m.value) == "number" then out[m.name] = m.value end
  end
  return out
end

-- Offers one commit to an island: changed files -> descriptor -> fitness -> archive, and
-- persists the changed cell and the reducer state in one transaction (with `job_state`,
-- the ingestion record of the job, when given). Returns the outcome:
--   {status_code, delta, message?, reason?, record?, failed = bool}
-- The default descriptor seam: the commit's changed files (git) through the island's
-- descriptor pipeline and reducer. Returns measures, or nil, message, kind where kind
-- is "failed" (an error: retried later), "skipped" (nothing to place) or nil (an early
-- exit of §3.1, recorded with its message).
function M.describe_commit(ctx, island, commit_hash)
  local s = state(ctx)
  local files, err = s.repo:changed_files(commit_hash)
  if not files then
    return nil, ("cannot list changed files of %s: %s"):format(commit_hash, err), "failed"
  end
  if #files == 0 then return nil, "No changed files detected for commit.", "skipped" end
  island.opts.read = function(path, max_bytes) return s.repo:read(commit_hash, path, max_bytes) end
  local ok, measures, info = pcall(descriptor.compute, files, island.opts, island.reducer, commit_hash)
  island.opts.read = nil
  if not ok then error(measures, 0) end
  if not measures then return nil, info end
  return measures
end

function M.ingest_commit(ctx, island_id, commit_hash, metrics, metadata, job_id, job_state)
  local s = state(ctx)
  local island = M.island(ctx, island_id)
  local outcome = { status_code = 0, delta = 0.0 }
  local measures, why, kind = s.describe(ctx, island, commit_hash)
  if kind == "failed" then
    outcome.failed, outcome.reason = true, why
  elseif kind == "skipped" then
    outcome.skipped, outcome.reason = true, why
  end
  local fitness
  if not measures then
    outcome.message = kind == nil and why or nil
  else
    fitness = M.resolve_fitness(metrics, ctx.settings)
    if fitness == nil then
      outcome.message = "Fitness value is undefined; skipping archive update."
    end
  end
  local row
  if fitness ~= nil then
    local meta = metadata or {}
    meta.metrics = metrics_map(metrics)
    meta.treeish = meta.treeish or commit_hash
    local now = host.time()
    -- Sorted keys: the same metadata gives the same bytes in every process (Lua's table
    -- order changes from one process to the next), so a seeded lab run repeats exactly.
    local status, delta, cell = island.archive:add(commit_hash, fitness, measures,
      { metadata = json.encode(meta, { sort_keys = true }), timestamp = now })
    outcome.status_code, outcome.delta = status, delta
    if status > 0 then
      row = island.archive:row(cell)
      outcome.record = { commit_hash = commit_hash, cell_index = cell, fitness = fitness,
        island_id = island.id, timestamp = now }
    else
      outcome.message = "Commit not inserted; objective below cell threshold."
    end
  end
  -- Persist: the cell (if changed), the reducer's new history, the job's record.
  local changes = island.reducer:take_changes()
  if job_id and job_state then job_state(outcome) end
  local ok, perr = s.store:ingest { island_id = island.id, row = row, changes = changes,
    job_id = job_id, state = outcome.state }
  if not ok then
    -- The archive or reducer in memory is ahead of the database: reload the island
    -- before its next use, so memory never holds what was not stored.
    island.dirty = true
    error(("persisting the ingestion of %s: %s"):format(commit_hash, tostring(perr)), 0)
  end
  return outcome
end

local function job_metadata(job, s)
  local payload = type(job.payload) == "table" and job.payload or {}
  local result = job.result or {}
  local function pick(t, key)
    local v = t[key]
    if v == db.null then return nil end
    return v
  end
  return {
    job = { id = job.id, base_commit = job.base_commit_hash, island_id = job.island_id,
      experiment_id = job.experiment_id, repository_id = s.experiment.repository_id,
      completed_at = job.completed_at and sampler_mod.iso_timestamp(job.completed_at) or nil },
    context = { goal = pick(payload, "goal"), constraints = pick(payload, "constraints"),
      acceptance_criteria = pick(payload, "acceptance_criteria"), tags = pick(payload, "tags"),
      notes = pick(payload, "notes") },
    result = { plan_summary = pick(result, "plan_summary"),
      evaluation_summary = pick(result, "evaluation_summary"),
      tests_executed = pick(result, "tests_executed"),
      tests_recommended = pick(result, "tests_recommended") },
    treeish = job.commit_hash,
  }
end

local function fetch_remote(s)
  local remotes = s.repo:remotes()
  if #remotes == 0 then return nil end
  if s.repo:remote_url("origin") then return "origin" end
  return remotes[1].name
end

-- Fetches, in one round, the job branches of the given jobs whose commits are missing
-- (refs/heads/<WORKER_REPO_JOB_BRANCH_PREFIX>/<job id>, where Loreley's worker pushes
-- them, §4.4): one fetch per tick instead of one per commit, and only the refs needed,
-- whatever the number of job branches on the remote. Commits still missing afterwards
-- are fetched one by one by ensure_commit.
function M.prefetch_commits(ctx, jobs)
  local s = state(ctx)
  if not s.repo then return 0 end
  local remote = fetch_remote(s)
  if not remote then return 0 end
  local prefix = ctx.settings.worker_repo_job_branch_prefix
  local refspecs = {}
  for _, job in ipairs(jobs) do
    if job.commit_hash and not s.repo:has_commit(job.commit_hash) then
      refspecs[#refspecs + 1] = ("+refs/heads/%s/%s:refs/remotes/%s/%s/%s"):format(prefix, job.id,
        remote, prefix, job.id)
    end
  end
  if #refspecs == 0 then return 0 end
  local ok, err = s.repo:fetch(remote, { prefix = false, configured = false, tags = false,
    refspecs = refspecs, timeout = ctx.settings.loreley_git_fetch_timeout_seconds })
  if not ok then host.debug("prefetch of %d job branch(es) failed: %s", #refspecs, tostring(err)) end
  return #refspecs
end

-- Makes sure the commit is in the scheduler's repository, fetching the job branches from
-- origin when it is not (the reference's fallback never ran, §9 item 4).
function M.ensure_commit(ctx, hash)
  local s = state(ctx)
  local present = s.repo:has_commit(hash)
  if present then return true end
  local remote = fetch_remote(s)
  if not remote then return nil, ("Commit %s not found and the repository has no remote."):format(hash) end
  host.info("Fetching missing commit %s", hash)
  local ok, err = s.repo:fetch(remote, { prefix = ctx.settings.worker_repo_job_branch_prefix,
    commit = hash, timeout = ctx.settings.loreley_git_fetch_timeout_seconds })
  if not ok then
    -- A server that refuses to serve a commit by id still serves the branches.
    ok, err = s.repo:fetch(remote, { prefix = ctx.settings.worker_repo_job_branch_prefix,
      timeout = ctx.settings.loreley_git_fetch_timeout_seconds })
    if not ok then return nil, ("Cannot fetch commit %s: %s"):format(hash, err) end
  end
  if not s.repo:has_commit(hash) then return nil, ("Commit %s not found after fetch."):format(hash) end
  return true
end

local function log_outcome(job, outcome)
  if outcome.record then
    host.info("Updated archive job=%s commit=%s cell=%d Δ=%.4f", job.id, job.commit_hash:sub(1, 12),
      outcome.record.cell_index, outcome.delta)
  elseif outcome.failed then
    host.warn("MAP-Elites ingest failed job=%s reason=%s", job.id, tostring(outcome.reason))
  else
    host.info("Archive unchanged job=%s commit=%s status=%d%s", job.id,
      tostring(job.commit_hash):sub(1, 12), outcome.status_code or 0,
      outcome.message and (" (" .. outcome.message .. ")") or
        (outcome.reason and (" (" .. outcome.reason .. ")") or ""))
  end
end

-- The part C record of an outcome (§1.5, §6.5).
local function state_of(outcome)
  local st = { status = "skipped", delta = outcome.delta, status_code = outcome.status_code,
    message = outcome.message, reason = outcome.reason }
  if outcome.failed then
    st.status = "failed"
    st.delta, st.status_code = nil, nil
  elseif outcome.record then
    st.status = "succeeded"
    st.record = outcome.record
  end
  return st
end

local function record_failure(s, job, reason)
  count(s, "ingestion_failures")
  host.warn("MAP-Elites ingest failed job=%s reason=%s", job.id, reason)
  local ok, err = s.store:record_ingestion(job.id, { status = "failed", reason = reason })
  if not ok then host.error("cannot record the failed ingestion of job %s: %s", job.id, tostring(err)) end
end

-- stages.ingest(ctx) -> the number of jobs whose commit entered an archive.
function M.ingest(ctx)
  local s = state(ctx)
  local batch = math.max(0, ctx.settings.scheduler_ingest_batch_size)
  if batch == 0 then return 0 end
  local jobs = check("find ingestable jobs", s.store:find_ingestable(batch,
    { max_attempts = ctx.settings.loreley_ingest_max_attempts }))
  local ingested = 0
  local fetchable = {}
  for _, job in ipairs(jobs) do
    if not job.malformed and job.commit_hash:match("^%x+$") and #job.commit_hash == 40 then
      fetchable[#fetchable + 1] = { id = job.id, commit_hash = job.commit_hash:lower() }
    end
  end
  if s.seams.ensure_commit == nil then M.prefetch_commits(ctx, fetchable) end
  for _, job in ipairs(jobs) do
    if host.stop_requested() then break end
    if job.malformed then
      record_failure(s, job, job.malformed)
    elseif not job.commit_hash:match("^%x+$") or #job.commit_hash ~= 40 then
      record_failure(s, job, ("payload.result.commit_hash %q is not a 40-hex commit id")
        :format(job.commit_hash:sub(1, 80)))
    else
      job.commit_hash = job.commit_hash:lower()
      local present, err = s.ensure_commit(ctx, job.commit_hash)
      if not present then
        record_failure(s, job, err)
      else
        local island_id = job.island_id or s.default_island
        local ok, outcome = pcall(M.ingest_commit, ctx, island_id, job.commit_hash, job.metrics,
          job_metadata(job, s), job.id, function(o) o.state = state_of(o) end)
        if not ok then
          record_failure(s, job, tostring(outcome))
        else
          log_outcome(job, outcome)
          count(s, outcome.failed and "ingestion_failures"
            or ("ingestion_status_" .. (outcome.status_code or 0)))
          if outcome.record then ingested = ingested + 1 end
        end
      end
    end
  end
  count(s, "ingested", ingested)
  return ingested
end

-- --- dispatch --------------------------------------------------------------------------

-- Sends one Dramatiq message per job (duplicate-suppressed by job id: a job whose
-- message still waits is never sent twice) and records it. Returns the number sent.
function M.send(ctx, jobs)
  local s = state(ctx)
  if #jobs == 0 then return 0 end
  local items = {}
  for i, job in ipairs(jobs) do
    items[i] = { queue = s.queue, actor = ACTOR, args = { job.id }, opts = { dedupe = job.id } }
  end
  local results, err = s.broker:enqueue_many(items)
  local sent, records = 0, {}
  for i, job in ipairs(jobs) do
    local r = results and results[i]
    if r and (r.status == "enqueued" or r.status == "duplicate") then
      if r.status == "enqueued" then sent = sent + 1 end
      records[#records + 1] = { job.id, r.redis_message_id }
      host.debug("Queued job id=%s (%s)", job.id, r.status)
    else
      local reason = r and r.error or err or "unknown error"
      count(s, "dispatch_failures")
      host.warn("Failed to enqueue job id=%s reason=%s", job.id, tostring(reason))
      s.store:record_dispatch_failure(job.id, tostring(reason))
    end
  end
  check("record dispatch", s.store:record_dispatches(records))
  count(s, "dispatched", sent)
  if sent > 0 then host.debug("Dispatched %d job(s) to Dramatiq", sent) end
  return sent
end

function M.dispatch(ctx)
  local s = state(ctx)
  if ctx.paused then return 0 end
  local batch = math.max(0, ctx.settings.scheduler_dispatch_batch_size)
  if batch == 0 then return 0 end
  local jobs = check("claim pending jobs", s.store:claim_pending(batch))
  return M.send(ctx, jobs)
end

-- --- recovery ----------------------------------------------------------------------------

-- QUEUED jobs whose message is gone (a crash between the commit and the push, a Redis
-- restart) are sent again; duplicate suppression keeps one message per job. RUNNING jobs
-- past the worker time limit plus a grace period are marked FAILED (or re-queued when
-- LORELEY_RESCHEDULE_OVERDUE is set).
function M.recover(ctx)
  local s = state(ctx)
  local settings = ctx.settings
  local grace = settings.loreley_recovery_grace_seconds
  -- Recovery looks for what has been stuck for `grace` seconds: running it every tick
  -- would only repeat the same queries. At most every grace/2 (between 0.5 and 5 s).
  local now = host.time()   -- wall-clock time (the policy lab's virtual clock)
  if s.next_recovery and now < s.next_recovery then return 0 end
  s.next_recovery = now + math.max(0.5, math.min(5, grace / 2))
  local recovered = 0
  local stranded = check("find stranded jobs", s.store:find_stranded_queued(grace, 100))
  if #stranded > 0 then
    local resend = {}
    for _, job in ipairs(stranded) do
      local waiting = s.broker:is_waiting(s.queue, job.id)
      if not waiting then resend[#resend + 1] = job end
    end
    if #resend > 0 then
      host.warn("re-dispatching %d QUEUED job(s) without a waiting message", #resend)
      recovered = recovered + M.send(ctx, resend)
    end
    -- Jobs whose message still waits: refresh their dispatch record so they are not
    -- checked again every tick.
    for _, job in ipairs(stranded) do
      if job.redis_message_id then s.store:record_dispatch(job.id, job.redis_message_id) end
    end
  end
  local limit = settings.tasks_worker_time_limit_seconds
  if limit and limit > 0 then
    local overdue = check("find overdue jobs", s.store:find_overdue_running(limit + grace, 100))
    for _, job in ipairs(overdue) do
      local reason = ("Job exceeded the worker time limit (%d s) plus %d s grace while RUNNING; "
        .. "marked FAILED by the scheduler"):format(limit, grace)
      local n = check("fail overdue job", s.conn:exec([[
UPDATE evolution_jobs SET status = 'FAILED', completed_at = now(), last_error = $3,
  updated_at = now()
WHERE id = $1 AND experiment_id = $2 AND status = 'RUNNING']], job.id, s.experiment.id, reason))
      if n > 0 then
        recovered = recovered + 1
        if settings.loreley_reschedule_overdue then
          -- A fresh PENDING copy (same base, island, inspirations and payload part A);
          -- the late worker, if it ever finishes, only touches the old row.
          local rows = check("reschedule overdue job", s.conn:query([[
INSERT INTO evolution_jobs (id, status, base_commit_hash, island_id, experiment_id,
  inspiration_commit_hashes, payload, priority, scheduled_at, created_at, updated_at)
SELECT $3, 'PENDING', base_commit_hash, island_id, experiment_id, inspiration_commit_hashes,
  payload - 'result' - 'ingestion', priority, now(), now(), now()
FROM evolution_jobs WHERE id = $1 AND experiment_id = $2
RETURNING id::text AS id]], job.id, s.experiment.id, host.uuid4()))
          host.warn("job %s was RUNNING past its time limit: marked FAILED, rescheduled as %s",
            job.id, rows[1] and rows[1].id or "?")
        else
          host.warn("job %s was RUNNING past its time limit: marked FAILED", job.id)
        end
      end
    end
  end
  return recovered
end

-- --- measure and schedule -----------------------------------------------------------------

-- stages.measure(ctx) -> unfinished jobs, counted up to SCHEDULER_MAX_UNFINISHED_JOBS + 1:
-- enough for the schedule stage's capacity and the stop check, at the same cost whether
-- ten jobs or a hundred thousand are unfinished. (The tick summary then shows the capped
-- count; the metrics count every job.)
function M.measure(ctx)
  local s = state(ctx)
  local cap = math.max(0, ctx.settings.scheduler_max_unfinished_jobs) + 1
  return check("count unfinished jobs", s.store:count_unfinished(cap))
end

-- Writes one job for a sampler pick on an island (payload part A). Returns the job.
function M.create_job(ctx, island, pick)
  local s = state(ctx)
  local settings = ctx.settings
  local function with_solution(row)   -- the reference stores solution == measures
    local copy = {}
    for k, v in pairs(row) do copy[k] = v end
    copy.solution = copy.solution or row.measures
    return copy
  end
  local inspirations = {}
  for i, e in ipairs(pick.inspirations) do inspirations[i] = with_solution(e) end
  local sel = pick.selection
  return check("create job", s.store:create_job {
    island_id = island.id,
    base = with_solution(pick.base),
    inspirations = inspirations,
    sampling = { requested_inspirations = pick.requested_inspirations,
      initial_radius = sel.initial_radius, max_radius = sel.max_radius,
      radius_used = sel.radius_used, fallback_inspirations = sel.fallback_inspirations },
    grid = { shape = island.shape, lower = island.lower, upper = island.upper },
    priority = settings.mapelites_sampler_default_priority,
    include_metadata = settings.mapelites_sampler_include_metadata,
    policy_version = ctx.policy_version,
  })
end

-- The jobs of this experiment that may still be created (math.huge when unlimited).
local function remaining_total(ctx)
  local s = state(ctx)
  local max_total = ctx.settings.scheduler_max_total_jobs
  if not max_total or max_total <= 0 then return math.huge end
  local total = check("count jobs", s.store:count_jobs(max_total))
  return max_total - total
end

-- stages.schedule(ctx, unfinished[, opts]) -> jobs created. opts.island (default: the
-- default island) and opts.sampler (default: ctx.loreley.sampler) let a policy steer it.
function M.schedule(ctx, unfinished, opts)
  local s = state(ctx)
  local settings = ctx.settings
  opts = opts or {}
  if ctx.paused then return 0 end
  local max_jobs = math.max(0, settings.scheduler_max_unfinished_jobs)
  if max_jobs == 0 then return 0 end
  local capacity = max_jobs - (unfinished or 0)
  if capacity <= 0 then return 0 end
  local target = math.min(capacity, math.max(1, settings.scheduler_schedule_batch_size))
  local remaining = remaining_total(ctx)
  if remaining <= 0 then
    if not s.limit_logged then host.info("global job limit reached") s.limit_logged = true end
    return 0
  end
  target = math.min(target, remaining)
  local island = M.island(ctx, opts.island)
  local sampler = opts.sampler or s.sampler
  local created = {}
  for _ = 1, target do
    local pick, why = sampler:sample(island.archive)
    if not pick then
      host.info("Sampler returned no job (%s)", tostring(why))
      break
    end
    local job = M.create_job(ctx, island, pick)
    created[#created + 1] = job.id
    host.debug("Scheduled job id=%s island=%s base=%s", job.id, island.id,
      pick.base.commit_hash:sub(1, 12))
  end
  if #created == 0 then return 0 end
  count(s, "scheduled", #created)
  local queued = check("mark queued", s.store:mark_queued(created))
  M.send(ctx, queued)
  return #created
end

-- Stops the host when SCHEDULER_MAX_TOTAL_JOBS jobs exist, none is unfinished and none
-- waits to be ingested.
function M.finish(ctx, unfinished)
  local max_total = ctx.settings.scheduler_max_total_jobs
  if not max_total or max_total <= 0 or (unfinished or 0) > 0 then return false end
  if remaining_total(ctx) > 0 then return false end
  -- Jobs that succeeded since this tick's ingest are ingested before stopping.
  local s = state(ctx)
  local pending = check("find ingestable jobs", s.store:find_ingestable(1,
    { max_attempts = ctx.settings.loreley_ingest_max_attempts }))
  if #pending > 0 then return false end
  host.request_stop("reached max total jobs and all jobs finished; shutting down")
  return true
end

-- The reference's tick (§6.4), with recovery first; logs the summary and returns the
-- counts. opts go to stages.schedule ({sampler = ..., island = ...}).
function M.tick(ctx, opts)
  if not M.lead(ctx) then return { ingested = 0, dispatched = 0, scheduled = 0, unfinished = 0 } end
  ctx:stage("recover", M.recover)
  local ingested = ctx:stage("ingest", M.ingest)
  local dispatched = ctx:stage("dispatch", M.dispatch)
  local unfinished = ctx:stage("measure", M.measure)
  local scheduled = ctx:stage("schedule", M.schedule, unfinished, opts)
  local counts = { ingested = ingested, dispatched = dispatched, scheduled = scheduled,
    unfinished = unfinished + scheduled }
  ctx:summary(counts)
  ctx:stage("finish", M.finish, counts.unfinished)
  return counts
end

-- The delay the default policies return: tick again soon while work flows, else the
-- poll interval (nil).
function M.next_delay(counts)
  if counts.ingested + counts.dispatched + counts.scheduled > 0 then return 0.05 end
  return nil
end

return M
