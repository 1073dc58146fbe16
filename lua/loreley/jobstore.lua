-- loreley.jobstore: the job-store SQL of the tick stages, every statement scoped to the
-- scheduler's experiment (the reference mixes experiments in dispatch, count and ingest).
--
--   local jobstore = require "loreley.jobstore"
--   local store = jobstore.new(conn, experiment_id)
--
-- Jobs (evolution_jobs, contract §1.4/§1.5):
--   store:count_unfinished([at_most]) -> n             PENDING + QUEUED + RUNNING
--   store:count_jobs([at_most]) -> n                   every job of the experiment
--   store:count_by_status([statuses]) -> {PENDING = n, ...}   (the metrics endpoint)
--   store:claim_pending(limit) -> jobs                 PENDING -> QUEUED, committed
--   store:mark_queued(ids) -> jobs                     the same for given ids
--   store:create_job(spec) -> job                      PENDING, payload part A (plus
--                                                      "loreley": {policy_version} when given)
--   store:create_seed_job(spec) -> job                 PENDING, payload {} (§6.7)
--   store:insert_commit(spec) -> inserted (bool)       the commits row a bootstrap needs
--   store:job(id) -> row | false
-- Ingestion:
--   store:find_ingestable(limit[, opts]) -> candidates (succeeded, not yet ingested)
--   store:record_ingestion(job_id, state) -> true | false (no such job here)
-- Archive and reducer state (docs: SHAPES rows):
--   store:ingest{island_id, row?, changes, job_id?, state?}   one ingestion, one statement
--   store:upsert_cell(island_id, row)  store:upsert_cells(island_id, rows)
--   store:load_cells(island_id) -> rows
--   store:save_reducer_changes(island_id, changes)  store:save_reducer(island_id, rows)
--   store:load_reducer(island_id) -> rows | false
--   store:save_island(island_id, config)  store:list_islands() -> islands
-- Dispatch bookkeeping:
--   store:record_dispatch(job_id, redis_message_id)  store:record_dispatches({{id, rid}, ...})
--   store:record_dispatch_failure(job_id, err)
--   store:find_stranded_queued(older_than_s, limit) -> jobs
--   store:find_overdue_running(older_than_s, limit) -> jobs
--
-- Errors: bad arguments raise; database failures return nil, message, sqlstate.
-- Row shapes and the SQL behind each call: docs/db.md.
local db = require "loreley.db"
local host = require "loreley.host"
local json = require "loreley.json"

local M = {}

local Store = {}
Store.__index = Store

local NULL = db.null
local UUID = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"

local function nn(v) if v == NULL then return nil end return v end

local function fail(fmt, ...) error("loreley.jobstore: " .. fmt:format(...), 3) end

local function check_uuid(v, what)
  if type(v) ~= "string" or not v:match(UUID) then
    fail("%s must be a UUID string, got %s", what, type(v) == "string" and ("'" .. v .. "'")
      or type(v))
  end
  return v
end

local function check_string(v, what, optional)
  if v == nil and optional then return nil end
  if type(v) ~= "string" or v == "" then fail("%s must be a non-empty string", what) end
  return v
end

local function is_integer(v)
  return type(v) == "number" and v == math.floor(v) and math.abs(v) <= 2 ^ 53
end

local function check_integer(v, what, optional)
  if v == nil and optional then return nil end
  if not is_integer(v) then fail("%s must be an integer, got %s", what, tostring(v)) end
  return v
end

local function is_finite(v)
  return type(v) == "number" and v == v and v ~= math.huge and v ~= -math.huge
end

local function check_finite(v, what)
  if not is_finite(v) then fail("%s must be a finite number, got %s", what, tostring(v)) end
  return v
end

local function check_numbers(list, what, optional)
  if list == nil and optional then return nil end
  if type(list) ~= "table" then fail("%s must be an array of numbers", what) end
  for i = 1, #list do
    if not is_finite(list[i]) then   -- the label is built only on failure (hot path)
      fail("%s[%d] must be a finite number, got %s", what, i, tostring(list[i]))
    end
  end
  return list
end

-- Creates a store bound to one connection and one experiment.
function M.new(conn, experiment_id)
  if type(conn) ~= "userdata" then fail("conn must be a loreley.db connection") end
  check_uuid(experiment_id, "experiment_id")
  return setmetatable({ conn = conn, experiment_id = experiment_id:lower() }, Store)
end

-- --- typed JSON text (Python's json.dumps for the fields the contract types) -------------

local function jfloat(x, what) return db.float_repr(check_finite(x, what)) end

-- The numbers of part A that Python holds as ints; every other number is a float and
-- is written as Python writes floats (6.0, 1e-06), so the payload reads back as the
-- reference's sampler would have written it.
local PART_A_INT_KEYS = { cell_index = true, shape = true, requested_inspirations = true,
  initial_radius = true, max_radius = true, radius_used = true, fallback_inspirations = true }

-- Part A RECORD of an archive row (SHAPES archive row): commit_hash, cell_index, fitness,
-- timestamp (ISO, UTC), plus measures/solution when non-empty and metadata when wanted
-- and non-empty.
local function record_fields(row, what, include_metadata)
  if type(row) ~= "table" then fail("%s must be an archive row", what) end
  check_string(row.commit_hash, what .. ".commit_hash")
  check_integer(row.cell, what .. ".cell")
  check_finite(row.objective, what .. ".objective")
  local r = { commit_hash = row.commit_hash, cell_index = row.cell, fitness = row.objective,
    timestamp = db.iso(check_finite(row.timestamp, what .. ".timestamp")) }
  if row.measures ~= nil and #check_numbers(row.measures, what .. ".measures") > 0 then
    r.measures = row.measures
  end
  if row.solution ~= nil and #check_numbers(row.solution, what .. ".solution") > 0 then
    r.solution = row.solution
  end
  if include_metadata and row.metadata ~= nil then
    -- The archive's metadata is JSON text this host wrote: an object is checked by its
    -- first character rather than decoded (scheduling is on the hot path).
    if type(row.metadata) ~= "string" then fail("%s.metadata must be JSON text", what) end
    if not row.metadata:find("^%s*{") then
      fail("%s.metadata must be the JSON text of an object", what)
    end
    if not row.metadata:find("^%s*{%s*}%s*$") then r.metadata = json.raw(row.metadata) end
  end
  return r
end

-- The JSON text of a record, memoised: the same elites are drawn as bases and
-- inspirations again and again, and writing their floats as Python does is most of the
-- cost of a payload. An elite is identified by everything its record holds (a replaced
-- elite has another commit, time or objective); the cache is emptied when it grows
-- past RECORD_CACHE_MAX entries.
local RECORD_CACHE_MAX = 65536
local record_cache, record_cache_size = {}, 0

local function record_json(row, what, include_metadata)
  if type(row) ~= "table" then fail("%s must be an archive row", what) end
  local key = type(row.commit_hash) == "string" and type(row.cell) == "number"
    and type(row.objective) == "number" and type(row.timestamp) == "number"
    and ("%s:%.17g:%.17g:%.17g:%s:%s"):format(row.commit_hash, row.cell, row.objective,
      row.timestamp, include_metadata and "m" or "-", tostring(row.solution ~= nil))
  local text = key and record_cache[key]
  if text then return json.raw(text) end
  text = json.encode(record_fields(row, what, include_metadata),
    { floats = "python", int_keys = PART_A_INT_KEYS })
  if key then
    if record_cache_size >= RECORD_CACHE_MAX then record_cache, record_cache_size = {}, 0 end
    record_cache[key] = text
    record_cache_size = record_cache_size + 1
  end
  return json.raw(text)
end

-- The complete part A payload (§1.5) as JSON text.
local function part_a(spec)
  local grid, sampling = spec.grid, spec.sampling
  if type(grid) ~= "table" then fail("spec.grid must be {shape, lower, upper}") end
  if type(sampling) ~= "table" then fail("spec.sampling must be a table") end
  local include = spec.include_metadata ~= false
  local selection = {
    initial_radius = check_integer(sampling.initial_radius, "sampling.initial_radius"),
    max_radius = check_integer(sampling.max_radius, "sampling.max_radius", true),
    radius_used = check_integer(sampling.radius_used, "sampling.radius_used"),
    fallback_inspirations = check_integer(sampling.fallback_inspirations,
      "sampling.fallback_inspirations"),
  }
  local inspirations = json.array()
  for i, row in ipairs(spec.inspirations or {}) do
    inspirations[i] = record_json(row, ("inspirations[%d]"):format(i), include)
  end
  local payload = {
    island_id = check_string(spec.island_id, "spec.island_id"),
    grid = {
      shape = check_numbers(grid.shape, "grid.shape"),
      feature_bounds = { lower = check_numbers(grid.lower, "grid.lower"),
        upper = check_numbers(grid.upper, "grid.upper") },
    },
    sampling = {
      requested_inspirations = check_integer(sampling.requested_inspirations,
        "sampling.requested_inspirations"),
      selection = selection,
    },
    base = record_json(spec.base, "base", include),
    inspirations = inspirations,
  }
  if spec.extra_context ~= nil then
    if type(spec.extra_context) ~= "table" then fail("spec.extra_context must be a table") end
    payload.extra_context = json.raw(db.json_encode(spec.extra_context))
  end
  -- The host's own key (workers ignore unknown keys): the policy that scheduled the job.
  if spec.policy_version ~= nil then
    payload.loreley = { policy_version = check_string(spec.policy_version, "spec.policy_version") }
  end
  return json.encode(payload, { floats = "python", int_keys = PART_A_INT_KEYS })
end
M.part_a = part_a

-- --- jobs ------------------------------------------------------------------------------

local SQL_COUNT_UNFINISHED = [[
SELECT count(*) AS n FROM evolution_jobs
WHERE experiment_id = $1 AND status IN ('PENDING', 'QUEUED', 'RUNNING')]]

local SQL_COUNT_UNFINISHED_UPTO = [[
SELECT count(*) AS n FROM (SELECT 1 FROM evolution_jobs
  WHERE experiment_id = $1 AND status IN ('PENDING', 'QUEUED', 'RUNNING') LIMIT $2) s]]

-- PENDING + QUEUED + RUNNING jobs of the experiment. With at_most, counting stops there:
-- the schedule stage only needs to know whether the count reached its cap, which costs
-- the same at 10 unfinished jobs as at 100,000.
function Store:count_unfinished(at_most)
  local rows, err, code
  if at_most == nil then
    rows, err, code = self.conn:query(SQL_COUNT_UNFINISHED, self.experiment_id)
  else
    check_integer(at_most, "at_most")
    rows, err, code = self.conn:query(SQL_COUNT_UNFINISHED_UPTO, self.experiment_id, at_most)
  end
  if not rows then return nil, err, code end
  return rows[1].n
end

local SQL_COUNT_ALL = "SELECT count(*) AS n FROM evolution_jobs WHERE experiment_id = $1"
local SQL_COUNT_UPTO = [[
SELECT count(*) AS n FROM (SELECT 1 FROM evolution_jobs WHERE experiment_id = $1 LIMIT $2) s]]

-- Every job of the experiment, whoever created it (SCHEDULER_MAX_TOTAL_JOBS). With
-- at_most, counting stops there (cheap when the cap is small).
function Store:count_jobs(at_most)
  local rows, err, code
  if at_most == nil then
    rows, err, code = self.conn:query(SQL_COUNT_ALL, self.experiment_id)
  else
    check_integer(at_most, "at_most")
    rows, err, code = self.conn:query(SQL_COUNT_UPTO, self.experiment_id, at_most)
  end
  if not rows then return nil, err, code end
  return rows[1].n
end

local SQL_COUNT_BY_STATUS = [[
SELECT status::text AS status, count(*) AS n FROM evolution_jobs
WHERE experiment_id = $1 AND status::text = ANY($2::text[])
GROUP BY status]]
local SQL_COUNT_UNFINISHED_BY_STATUS = [[
SELECT status::text AS status, count(*) AS n FROM evolution_jobs
WHERE experiment_id = $1 AND status IN ('PENDING', 'QUEUED', 'RUNNING')
GROUP BY status]]

M.STATUSES = { "PENDING", "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED" }
local KNOWN_STATUS = {}
for _, st in ipairs(M.STATUSES) do KNOWN_STATUS[st] = true end

-- Jobs of the experiment per status: {PENDING = n, ...} with every asked status present
-- (0 when none). statuses defaults to the three unfinished ones, which the partial index
-- ix_loreley_jobs_unfinished answers; finished statuses cost a scan of the experiment's
-- jobs, so ask for them sparingly.
function Store:count_by_status(statuses)
  local rows, err, code
  if statuses == nil then
    statuses = { "PENDING", "QUEUED", "RUNNING" }
    rows, err, code = self.conn:query(SQL_COUNT_UNFINISHED_BY_STATUS, self.experiment_id)
  else
    if type(statuses) ~= "table" then fail("statuses must be an array of job statuses") end
    for i, st in ipairs(statuses) do
      if not KNOWN_STATUS[st] then fail("statuses[%d]: unknown job status %s", i, tostring(st)) end
    end
    rows, err, code = self.conn:query(SQL_COUNT_BY_STATUS, self.experiment_id,
      db.json_array(statuses))
  end
  if not rows then return nil, err, code end
  local out = {}
  for _, st in ipairs(statuses) do out[st] = 0 end
  for _, r in ipairs(rows) do out[r.status] = r.n end
  return out
end

local function sort_dispatch_order(jobs)
  table.sort(jobs, function(a, b)
    if a.priority ~= b.priority then return a.priority > b.priority end
    local sa, sb = a.previous_scheduled_at, b.previous_scheduled_at
    if sa ~= sb then
      if sa == nil then return false end
      if sb == nil then return true end
      return sa < sb
    end
    if a.created_at ~= b.created_at then return a.created_at < b.created_at end
    return a.id < b.id
  end)
  return jobs
end

local function queued_rows(rows)
  local jobs = {}
  for i, r in ipairs(rows) do
    jobs[i] = { id = r.id, island_id = nn(r.island_id), base_commit_hash = nn(r.base_commit_hash),
      priority = r.priority, scheduled_at = r.scheduled_at,
      previous_scheduled_at = nn(r.previous_scheduled_at), created_at = r.created_at }
  end
  return sort_dispatch_order(jobs)
end

local SQL_CLAIM_PENDING = [[
WITH picked AS (
  SELECT id, scheduled_at AS previous_scheduled_at FROM evolution_jobs
  WHERE experiment_id = $1 AND status = 'PENDING'
  ORDER BY priority DESC, scheduled_at ASC NULLS LAST, created_at ASC
  LIMIT $2
  FOR UPDATE SKIP LOCKED)
UPDATE evolution_jobs j
SET status = 'QUEUED', scheduled_at = coalesce(j.scheduled_at, now()), updated_at = now()
FROM picked
WHERE j.id = picked.id AND j.status = 'PENDING'
RETURNING j.id::text AS id, j.island_id, j.base_commit_hash, j.priority, j.scheduled_at,
          picked.previous_scheduled_at, j.created_at]]

-- Takes up to limit PENDING jobs in the contract's order (priority DESC, scheduled_at ASC
-- NULLS LAST, created_at ASC), skipping rows another transaction holds, and marks them
-- QUEUED (scheduled_at = coalesce(scheduled_at, now)). One statement, so the update is
-- COMMITTED and its row locks released when this returns: only then may the caller push
-- the messages to Redis (§11.2). Returns the jobs in dispatch order:
-- {id, island_id, base_commit_hash, priority, scheduled_at, created_at}.
function Store:claim_pending(limit)
  check_integer(limit, "limit")
  if limit <= 0 then return {} end
  if self.conn:info().in_transaction then
    fail("claim_pending must not run inside conn:tx: the QUEUED update has to be committed "
      .. "before any message is sent")
  end
  local rows, err, code = self.conn:query(SQL_CLAIM_PENDING, self.experiment_id, limit)
  if not rows then return nil, err, code end
  return queued_rows(rows)
end

local SQL_MARK_QUEUED = [[
UPDATE evolution_jobs
SET status = 'QUEUED', scheduled_at = coalesce(scheduled_at, now()), updated_at = now()
WHERE experiment_id = $1 AND id = ANY($2::uuid[]) AND status = 'PENDING'
RETURNING id::text AS id, island_id, base_commit_hash, priority, scheduled_at,
          scheduled_at AS previous_scheduled_at, created_at]]

-- Marks the given jobs QUEUED when they are still PENDING (the schedule stage's new jobs);
-- committed on return like claim_pending.
function Store:mark_queued(ids)
  if type(ids) ~= "table" then fail("ids must be an array of job ids") end
  for i, id in ipairs(ids) do check_uuid(id, ("ids[%d]"):format(i)) end
  if #ids == 0 then return {} end
  local rows, err, code = self.conn:query(SQL_MARK_QUEUED, self.experiment_id, ids)
  if not rows then return nil, err, code end
  return queued_rows(rows)
end

local SQL_INSERT_JOB = [[
INSERT INTO evolution_jobs (id, status, base_commit_hash, island_id, experiment_id,
  inspiration_commit_hashes, payload, priority, scheduled_at, created_at, updated_at)
VALUES ($1, 'PENDING', $2, $3, $4, $5, $6::jsonb, $7, now(), now(), now())
RETURNING id::text AS id, scheduled_at, created_at]]

local function insert_job(self, base_hash, island_id, inspirations, payload, priority)
  local id = host.uuid4()
  local rows, err, code = self.conn:query(SQL_INSERT_JOB, id, base_hash, island_id,
    self.experiment_id, db.json_array(inspirations), payload, priority)
  if not rows then return nil, err, code end
  return { id = rows[1].id, status = "PENDING", base_commit_hash = base_hash,
    island_id = island_id, experiment_id = self.experiment_id,
    inspiration_commit_hashes = inspirations, priority = priority, payload_json = payload,
    scheduled_at = rows[1].scheduled_at, created_at = rows[1].created_at }
end

-- A new PENDING job as the reference's sampler writes it (§1.4 create, §1.5 part A):
--   spec = { island_id, base = archive row, inspirations = {archive rows},
--            sampling = {requested_inspirations, initial_radius, max_radius?, radius_used,
--                        fallback_inspirations},
--            grid = {shape = {ints}, lower = {floats}, upper = {floats}},
--            priority = 0, include_metadata = true, extra_context = nil,
--            policy_version = nil (written as payload.loreley.policy_version) }
-- The base commit must have a commits row (foreign key); a missing one is a database
-- error (23503), returned.
function Store:create_job(spec)
  if type(spec) ~= "table" then fail("create_job: spec must be a table") end
  check_string(spec.island_id, "spec.island_id")
  local payload = part_a(spec)
  local inspirations = {}
  for i, row in ipairs(spec.inspirations or {}) do inspirations[i] = row.commit_hash end
  local priority = check_integer(spec.priority or 0, "spec.priority")
  return insert_job(self, spec.base.commit_hash, spec.island_id, inspirations, payload, priority)
end

-- A bootstrap job (§6.7): PENDING, base = the seed commit, payload {} (the worker then
-- derives its goal), scheduled now. spec = {base_commit_hash, island_id, priority = 0}.
function Store:create_seed_job(spec)
  if type(spec) ~= "table" then fail("create_seed_job: spec must be a table") end
  check_string(spec.base_commit_hash, "spec.base_commit_hash")
  check_string(spec.island_id, "spec.island_id")
  local priority = check_integer(spec.priority or 0, "spec.priority")
  return insert_job(self, spec.base_commit_hash, spec.island_id, {}, "{}", priority)
end

local SQL_INSERT_COMMIT = [[
INSERT INTO commits (id, commit_hash, parent_commit_hash, island_id, experiment_id, author,
  message, evaluation_summary, tags, extra_context, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, now(), now())
ON CONFLICT (commit_hash) DO NOTHING
RETURNING id::text AS id]]

-- The commits row a bootstrap needs before its job (the base-commit foreign key):
--   spec = {commit_hash, parent_commit_hash?, island_id?, author?, message?,
--           evaluation_summary?, tags = {}?, extra_context = {}?}
-- Returns true when inserted, false when a row for that hash already exists. Never
-- insert a hash a worker may still produce: its own insert would then fail (§11.9).
function Store:insert_commit(spec)
  if type(spec) ~= "table" then fail("insert_commit: spec must be a table") end
  check_string(spec.commit_hash, "spec.commit_hash")
  local extra = spec.extra_context
  if extra ~= nil and type(extra) ~= "table" then fail("spec.extra_context must be a table") end
  local rows, err, code = self.conn:query(SQL_INSERT_COMMIT, host.uuid4(), spec.commit_hash,
    spec.parent_commit_hash, spec.island_id, self.experiment_id, spec.author, spec.message,
    spec.evaluation_summary, db.json_array(spec.tags or {}),
    extra and db.json_encode(extra) or "{}")
  if not rows then return nil, err, code end
  return rows[1] ~= nil
end

local SQL_JOB = [[
SELECT id::text AS id, status::text AS status, base_commit_hash, island_id,
  experiment_id::text AS experiment_id, inspiration_commit_hashes, payload, plan_summary,
  priority, scheduled_at, started_at, completed_at, last_error, created_at, updated_at
FROM evolution_jobs WHERE id = $1 AND experiment_id = $2]]

-- One job of this experiment (every column, payload decoded), or false.
function Store:job(id)
  check_uuid(id, "id")
  local rows, err, code = self.conn:query(SQL_JOB, id, self.experiment_id)
  if not rows then return nil, err, code end
  return rows[1] or false
end

-- --- ingestion -------------------------------------------------------------------------

-- Must match the predicate of ix_loreley_jobs_to_ingest (002_job_indexes.sql).
local SQL_INGESTABLE = [[
SELECT id::text AS id, island_id, base_commit_hash, experiment_id::text AS experiment_id,
  completed_at, jsonb_typeof(payload) AS payload_type, payload
FROM evolution_jobs
WHERE experiment_id = $1 AND status = 'SUCCEEDED'
  AND coalesce(payload #>> '{ingestion,map_elites,status}', '') NOT IN ('succeeded', 'skipped')
  AND (CASE WHEN jsonb_typeof(payload #> '{ingestion,map_elites,attempts}') = 'number'
            THEN (payload #>> '{ingestion,map_elites,attempts}')::numeric ELSE 0 END) < $2
ORDER BY (CASE WHEN jsonb_typeof(payload #> '{ingestion,map_elites,attempts}') = 'number'
               THEN (payload #>> '{ingestion,map_elites,attempts}')::numeric ELSE 0 END) ASC,
         completed_at ASC NULLS LAST, id
LIMIT $3]]

local function is_array(v)
  if type(v) ~= "table" then return false end
  local n = #v
  for k in pairs(v) do
    if type(k) ~= "number" or k < 1 or k > n or k ~= math.floor(k) then return false end
  end
  return true
end

-- Checks the worker's result (§1.5 part B); fills cand.commit_hash and cand.metrics, or
-- returns the reason it cannot be ingested.
local function inspect_result(cand, payload_type)
  if payload_type ~= "object" then
    return ("payload is not a JSON object (it is %s)"):format(payload_type == "array"
      and "an array" or ("a " .. tostring(payload_type)))
  end
  local result = cand.payload.result
  if result == nil or result == NULL then return "payload.result is missing" end
  if type(result) ~= "table" or (is_array(result) and next(result) ~= nil) then
    return "payload.result is not a JSON object"
  end
  cand.result = result
  local hash = result.commit_hash
  if type(hash) ~= "string" then return "payload.result.commit_hash is missing" end
  hash = hash:gsub("^%s+", ""):gsub("%s+$", "")
  if hash == "" then return "payload.result.commit_hash is empty" end
  cand.commit_hash = hash
  local metrics = result.metrics
  if metrics == nil or metrics == NULL then metrics = {} end
  if type(metrics) ~= "table" or not is_array(metrics) then
    return "payload.result.metrics is not a list"
  end
  local out = {}
  for i, m in ipairs(metrics) do
    if type(m) ~= "table" or (is_array(m) and next(m) ~= nil) then
      return ("payload.result.metrics[%d] is not an object"):format(i)
    end
    if type(m.name) ~= "string" or m.name == "" then
      return ("payload.result.metrics[%d].name is missing or empty"):format(i)
    end
    if type(m.value) ~= "number" or m.value ~= m.value then
      return ("payload.result.metrics[%d].value (%s) is not a number"):format(i, m.name)
    end
    out[i] = { name = m.name, value = m.value, unit = nn(m.unit),
      higher_is_better = m.higher_is_better ~= false and m.higher_is_better ~= NULL,
      details = nn(m.details) }
  end
  cand.metrics = out
  return nil
end

-- The worker's result of a decoded payload, checked as find_ingestable checks it:
-- returns nil, commit_hash, metrics when it can be ingested, or the reason it cannot.
-- (For tools and fuzzing; payload is what loreley.json decodes.)
function M.inspect_payload(payload)
  local kind = type(payload)
  if kind == "table" then
    kind = (getmetatable(payload) == json.array_mt or (payload[1] ~= nil)) and "array" or "object"
  elseif payload == NULL then
    kind = "null"
  end
  local cand = { payload = payload }
  local reason = inspect_result(cand, kind)
  if reason then return reason end
  return nil, cand.commit_hash, cand.metrics
end

-- Succeeded jobs of this experiment whose ingestion has not succeeded or been skipped,
-- filtered in SQL (never the reference's oldest-32 window): fewest attempts first, then
-- oldest completion. opts.max_attempts (default 5; math.huge: no limit) leaves out jobs
-- that failed that many times. Each candidate:
--   { id, island_id, base_commit_hash, experiment_id, completed_at, payload, attempts,
--     ingestion_status, commit_hash, result, metrics = {{name, value, unit,
--     higher_is_better, details}}, malformed = nil | "reason" }
-- A malformed row (payload not an object, result missing, commit_hash empty, a metric
-- that is not numeric) comes back with `malformed` set and no commit_hash: record it as
-- failed with that reason (record_ingestion) instead of ingesting it.
function Store:find_ingestable(limit, opts)
  check_integer(limit, "limit")
  opts = opts or {}
  local max_attempts = opts.max_attempts or 5
  if max_attempts == math.huge then max_attempts = 2 ^ 31 end
  check_integer(max_attempts, "opts.max_attempts")
  if limit <= 0 then return {} end
  local rows, err, code = self.conn:query(SQL_INGESTABLE, self.experiment_id, max_attempts,
    limit)
  if not rows then return nil, err, code end
  local out = {}
  for i, r in ipairs(rows) do
    local cand = { id = r.id, island_id = nn(r.island_id),
      base_commit_hash = nn(r.base_commit_hash), experiment_id = r.experiment_id,
      completed_at = nn(r.completed_at), payload = r.payload, attempts = 0, metrics = {} }
    if r.payload_type == "object" then
      local state = type(r.payload.ingestion) == "table" and r.payload.ingestion.map_elites
      if type(state) == "table" then
        if type(state.attempts) == "number" then cand.attempts = math.floor(state.attempts) end
        if type(state.status) == "string" then cand.ingestion_status = state.status end
      end
    end
    cand.malformed = inspect_result(cand, r.payload_type)
    if cand.malformed then cand.commit_hash, cand.result = nil, nil end
    out[i] = cand
  end
  return out
end

local SQL_RECORD_INGESTION = [[
UPDATE evolution_jobs
SET payload = loreley_ingestion_payload(payload, $3, $4, $5, $6::jsonb, $7, $8, $9::jsonb),
    updated_at = now()
WHERE id = $1 AND experiment_id = $2
RETURNING id]]

local STATES = { succeeded = true, skipped = true, failed = true }

-- Records part C (§1.5, §6.5) in one UPDATE computed from the row's current payload (a
-- concurrent write is never overwritten; every other payload key survives):
--   state = { status = "succeeded"|"skipped"|"failed", reason?, delta?, status_code?,
--             message?, record = {commit_hash, cell_index, fitness, island_id,
--             timestamp (epoch)}?, at = epoch (default now) }
-- attempts is incremented; reason/delta/status_code/message are removed when nil; an
-- older record survives when none is given. Returns true, or false when the job is not
-- one of this experiment's.
-- The parameters of a part C record: status, time, reason, delta, status_code, message,
-- record (JSON text or NULL).
local function ingestion_params(state)
  if type(state) ~= "table" or not STATES[state.status] then
    fail("state.status must be succeeded, skipped or failed")
  end
  local delta = state.delta ~= nil and jfloat(state.delta, "state.delta") or NULL
  check_integer(state.status_code, "state.status_code", true)
  if state.reason ~= nil and type(state.reason) ~= "string" then fail("state.reason must be a string") end
  if state.message ~= nil and type(state.message) ~= "string" then
    fail("state.message must be a string")
  end
  local record = NULL
  if state.record ~= nil then
    local r = state.record
    if type(r) ~= "table" then fail("state.record must be a table") end
    record = json.encode({
      commit_hash = check_string(r.commit_hash, "record.commit_hash"),
      cell_index = check_integer(r.cell_index, "record.cell_index"),
      fitness = check_finite(r.fitness, "record.fitness"),
      island_id = check_string(r.island_id, "record.island_id"),
      timestamp = check_finite(r.timestamp, "record.timestamp"),
    }, { floats = "python", int_keys = PART_A_INT_KEYS })
  end
  local at = state.at or host.time()
  return state.status, db.iso(at), state.reason, delta, state.status_code, state.message, record
end

function Store:record_ingestion(job_id, state)
  check_uuid(job_id, "job_id")
  local rows, err, code = self.conn:query(SQL_RECORD_INGESTION, job_id, self.experiment_id,
    ingestion_params(state))
  if not rows then return nil, err, code end
  return rows[1] ~= nil
end

-- --- archive cells ---------------------------------------------------------------------

-- Every elite can become a job's base, and evolution_jobs.base_commit_hash references
-- commits: the cell's commit gets a commits row when it has none (a worker that wrote its
-- result without one, a migrated elite). Only succeeded work reaches the archive, so this
-- never races a worker's own insert of the same hash (§11 item 9).
local SQL_UPSERT_CELL = [[
WITH commit_row AS (
  INSERT INTO commits (id, commit_hash, island_id, experiment_id, tags, extra_context)
  VALUES (gen_random_uuid(), $4, $2, $1, '{}', '{}')
  ON CONFLICT (commit_hash) DO NOTHING)
INSERT INTO loreley_archive_cells (experiment_id, island_id, cell_index, commit_hash,
  objective, threshold, measures, solution, metadata, added_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (experiment_id, island_id, cell_index) DO UPDATE SET
  commit_hash = EXCLUDED.commit_hash, objective = EXCLUDED.objective,
  threshold = EXCLUDED.threshold, measures = EXCLUDED.measures, solution = EXCLUDED.solution,
  metadata = EXCLUDED.metadata, added_at = EXCLUDED.added_at, updated_at = now()]]

local function check_cell(row, what)
  if type(row) ~= "table" then fail("%s must be an archive row", what) end
  check_integer(row.cell, what .. ".cell")
  if row.cell < 0 then fail("%s.cell must be >= 0", what) end
  check_string(row.commit_hash, what .. ".commit_hash")
  check_finite(row.objective, what .. ".objective")
  if type(row.threshold) ~= "number" or row.threshold ~= row.threshold then
    fail("%s.threshold must be a number", what)
  end
  check_numbers(row.measures, what .. ".measures")
  check_numbers(row.solution, what .. ".solution", true)
  if row.metadata ~= nil and type(row.metadata) ~= "string" then
    fail("%s.metadata must be JSON text or nil", what)
  end
  check_finite(row.timestamp, what .. ".timestamp")
end

-- Writes one occupied cell (SHAPES archive row); replaces the cell's previous elite.
function Store:upsert_cell(island_id, row)
  check_string(island_id, "island_id")
  check_cell(row, "row")
  local n, err, code = self.conn:exec(SQL_UPSERT_CELL, self.experiment_id, island_id, row.cell,
    row.commit_hash, row.objective, row.threshold, db.json_array(row.measures),
    row.solution and db.json_array(row.solution) or NULL, row.metadata, row.timestamp)
  if not n then return nil, err, code end
  return true
end

-- Several cells in one transaction.
function Store:upsert_cells(island_id, rows)
  check_string(island_id, "island_id")
  if type(rows) ~= "table" then fail("rows must be an array of archive rows") end
  for i, row in ipairs(rows) do check_cell(row, ("rows[%d]"):format(i)) end
  return self.conn:tx(function()
    for _, row in ipairs(rows) do
      local ok, err, code = self:upsert_cell(island_id, row)
      if not ok then return nil, err, code end
    end
    return true
  end)
end

local SQL_LOAD_CELLS = [[
SELECT cell_index, commit_hash, objective, threshold, measures, solution, metadata, added_at
FROM loreley_archive_cells WHERE experiment_id = $1 AND island_id = $2
ORDER BY cell_index]]

-- Every occupied cell of the island as SHAPES archive rows, by cell index.
function Store:load_cells(island_id)
  check_string(island_id, "island_id")
  local rows, err, code = self.conn:query(SQL_LOAD_CELLS, self.experiment_id, island_id)
  if not rows then return nil, err, code end
  local out = {}
  for i, r in ipairs(rows) do
    out[i] = { cell = r.cell_index, commit_hash = r.commit_hash, objective = r.objective,
      threshold = r.threshold, measures = r.measures, solution = nn(r.solution),
      metadata = nn(r.metadata), timestamp = r.added_at }
  end
  return out
end

-- --- reducer state ---------------------------------------------------------------------

local SQL_REDUCER_WITH_PROJECTION = [[
INSERT INTO loreley_reducer_state (experiment_id, island_id, projection, samples_since_fit)
VALUES ($1, $2, $3, $4)
ON CONFLICT (experiment_id, island_id) DO UPDATE SET projection = EXCLUDED.projection,
  samples_since_fit = EXCLUDED.samples_since_fit, updated_at = now()]]
local SQL_REDUCER_COUNTER = [[
INSERT INTO loreley_reducer_state (experiment_id, island_id, samples_since_fit)
VALUES ($1, $2, $3)
ON CONFLICT (experiment_id, island_id) DO UPDATE SET
  samples_since_fit = EXCLUDED.samples_since_fit, updated_at = now()]]
local SQL_HISTORY_INSERT = [[
INSERT INTO loreley_reducer_history (experiment_id, island_id, seq, commit_hash, vector)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (experiment_id, island_id, seq) DO UPDATE SET commit_hash = EXCLUDED.commit_hash,
  vector = EXCLUDED.vector]]
local SQL_HISTORY_TRIM = [[
DELETE FROM loreley_reducer_history WHERE experiment_id = $1 AND island_id = $2 AND seq < $3]]
local SQL_HISTORY_CLEAR = [[
DELETE FROM loreley_reducer_history WHERE experiment_id = $1 AND island_id = $2]]

local function check_history_row(h, what)
  if type(h) ~= "table" then fail("%s must be a history row", what) end
  check_integer(h.seq, what .. ".seq")
  check_string(h.commit_hash, what .. ".commit_hash")
  if type(h.vector) ~= "string" or #h.vector % 8 ~= 0 then
    fail("%s.vector must be a string of little-endian float64 values", what)
  end
end

local function save_history(self, island_id, rows)
  for _, h in ipairs(rows) do
    local ok, err, code = self.conn:exec(SQL_HISTORY_INSERT, self.experiment_id, island_id,
      h.seq, h.commit_hash, h.vector)
    if not ok then return nil, err, code end
  end
  return true
end


-- The reducer's changes in one transaction (more than one new history row).
local function save_changes_tx(self, island_id, changes, append)
  return self.conn:tx(function(c)
    local ok, err, code
    if changes.projection ~= nil then
      ok, err, code = c:exec(SQL_REDUCER_WITH_PROJECTION, self.experiment_id, island_id,
        changes.projection, changes.samples_since_fit)
    else
      ok, err, code = c:exec(SQL_REDUCER_COUNTER, self.experiment_id, island_id,
        changes.samples_since_fit)
    end
    if not ok then return nil, err, code end
    ok, err, code = save_history(self, island_id, append)
    if not ok then return nil, err, code end
    if changes.trim_before_seq then
      ok, err, code = c:exec(SQL_HISTORY_TRIM, self.experiment_id, island_id,
        changes.trim_before_seq)
      if not ok then return nil, err, code end
    end
    return true
  end)
end

-- Persists reducer:take_changes() incrementally: the projection when it is present, the
-- counter, the appended history rows, the removal of the rows before trim_before_seq
-- (store:ingest without a cell or a job: one statement in the common case).
function Store:save_reducer_changes(island_id, changes)
  return self:ingest { island_id = island_id, changes = changes }
end

-- Replaces the whole reducer state with reducer:rows() (first save, or a reset).
function Store:save_reducer(island_id, rows)
  check_string(island_id, "island_id")
  if type(rows) ~= "table" then fail("rows must be a reducer:rows() table") end
  check_integer(rows.samples_since_fit, "rows.samples_since_fit")
  if rows.projection ~= nil and type(rows.projection) ~= "string" then
    fail("rows.projection must be a string or nil")
  end
  local history = rows.history or {}
  for i, h in ipairs(history) do check_history_row(h, ("rows.history[%d]"):format(i)) end
  return self.conn:tx(function(c)
    local ok, err, code = c:exec(SQL_REDUCER_WITH_PROJECTION, self.experiment_id, island_id,
      rows.projection, rows.samples_since_fit)
    if not ok then return nil, err, code end
    ok, err, code = c:exec(SQL_HISTORY_CLEAR, self.experiment_id, island_id)
    if not ok then return nil, err, code end
    return save_history(self, island_id, history)
  end)
end

local SQL_REDUCER_LOAD = [[
SELECT projection, samples_since_fit FROM loreley_reducer_state
WHERE experiment_id = $1 AND island_id = $2]]
local SQL_HISTORY_LOAD = [[
SELECT seq, commit_hash, vector FROM loreley_reducer_history
WHERE experiment_id = $1 AND island_id = $2 ORDER BY seq]]

-- The SHAPES reducer rows of the island ({projection, samples_since_fit, history}), or
-- false when nothing was ever saved for it.
function Store:load_reducer(island_id)
  check_string(island_id, "island_id")
  local state, err, code = self.conn:query(SQL_REDUCER_LOAD, self.experiment_id, island_id)
  if not state then return nil, err, code end
  local history
  history, err, code = self.conn:query(SQL_HISTORY_LOAD, self.experiment_id, island_id)
  if not history then return nil, err, code end
  if not state[1] and #history == 0 then return false end
  local out = { projection = state[1] and nn(state[1].projection),
    samples_since_fit = state[1] and state[1].samples_since_fit or 0, history = {} }
  for i, h in ipairs(history) do
    out.history[i] = { seq = h.seq, commit_hash = h.commit_hash, vector = h.vector }
  end
  return out
end

-- --- one ingestion, one statement ------------------------------------------------------

-- Everything an ingestion changes, written by ONE statement (data-modifying CTEs are
-- atomic): the cell with its commits row when the commit entered the archive, the
-- reducer's counter, projection, new history row and trimmed rows, and the job's part C
-- record. One round trip per ingested commit instead of a transaction of five.
local SQL_INGEST = [[
WITH commit_row AS (
  INSERT INTO commits (id, commit_hash, island_id, experiment_id, tags, extra_context)
  SELECT gen_random_uuid(), $4, $2, $1, '{}', '{}' WHERE $3::bigint IS NOT NULL
  ON CONFLICT (commit_hash) DO NOTHING),
cell AS (
  INSERT INTO loreley_archive_cells (experiment_id, island_id, cell_index, commit_hash,
    objective, threshold, measures, solution, metadata, added_at)
  SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 WHERE $3::bigint IS NOT NULL
  ON CONFLICT (experiment_id, island_id, cell_index) DO UPDATE SET
    commit_hash = EXCLUDED.commit_hash, objective = EXCLUDED.objective,
    threshold = EXCLUDED.threshold, measures = EXCLUDED.measures, solution = EXCLUDED.solution,
    metadata = EXCLUDED.metadata, added_at = EXCLUDED.added_at, updated_at = now()
  RETURNING 1),
state AS (
  INSERT INTO loreley_reducer_state (experiment_id, island_id, projection, samples_since_fit)
  VALUES ($1, $2, $11, $12)
  ON CONFLICT (experiment_id, island_id) DO UPDATE SET
    projection = CASE WHEN $13 THEN EXCLUDED.projection ELSE loreley_reducer_state.projection END,
    samples_since_fit = EXCLUDED.samples_since_fit, updated_at = now()
  RETURNING 1),
appended AS (
  INSERT INTO loreley_reducer_history (experiment_id, island_id, seq, commit_hash, vector)
  SELECT $1, $2, $14, $15, $16 WHERE $14::bigint IS NOT NULL
  ON CONFLICT (experiment_id, island_id, seq) DO UPDATE SET commit_hash = EXCLUDED.commit_hash,
    vector = EXCLUDED.vector
  RETURNING 1),
trimmed AS (
  DELETE FROM loreley_reducer_history
  WHERE experiment_id = $1 AND island_id = $2 AND seq < $17
  RETURNING 1),
job AS (
  UPDATE evolution_jobs
  SET payload = loreley_ingestion_payload(payload, $19, $20, $21, $22::jsonb, $23, $24, $25::jsonb),
      updated_at = now()
  WHERE $18::uuid IS NOT NULL AND id = $18 AND experiment_id = $1
  RETURNING 1)
SELECT (SELECT count(*) FROM job) AS job_updated]]

-- store:ingest{island_id, row = archive row | nil, changes = reducer:take_changes(),
--              job_id = uuid | nil, state = part C state | nil} -> true | nil, err, code
-- Writes an ingestion atomically (the cell, the reducer's changes, the job's record).
-- The rare change with more than one new history row goes through a transaction.
function Store:ingest(spec)
  if type(spec) ~= "table" then fail("ingest: spec must be a table") end
  local island_id = check_string(spec.island_id, "spec.island_id")
  local row, changes = spec.row, spec.changes
  if row ~= nil then check_cell(row, "spec.row") end
  if type(changes) ~= "table" then fail("spec.changes must be a reducer:take_changes() table") end
  check_integer(changes.samples_since_fit, "changes.samples_since_fit")
  if changes.projection ~= nil and type(changes.projection) ~= "string" then
    fail("changes.projection must be a string")
  end
  local append = changes.append or {}
  for i, h in ipairs(append) do check_history_row(h, ("changes.append[%d]"):format(i)) end
  check_integer(changes.trim_before_seq, "changes.trim_before_seq", true)
  if spec.job_id ~= nil then check_uuid(spec.job_id, "spec.job_id") end
  if #append > 1 then
    return self.conn:tx(function()
      if row then
        local ok, err, code = self:upsert_cell(island_id, row)
        if not ok then return nil, err, code end
      end
      local ok, err, code = save_changes_tx(self, island_id, changes, append)
      if not ok then return nil, err, code end
      if spec.job_id and spec.state then
        ok, err, code = self:record_ingestion(spec.job_id, spec.state)
        if not ok then return nil, err, code end
      end
      return true
    end)
  end
  local h = append[1] or {}
  local r = row or {}
  local status, at, reason, delta, status_code, message, record = NULL, NULL, NULL, NULL, NULL, NULL, NULL
  if spec.job_id and spec.state then
    status, at, reason, delta, status_code, message, record = ingestion_params(spec.state)
  end
  local rows, err, code = self.conn:query(SQL_INGEST, self.experiment_id, island_id,
    row and r.cell or NULL, row and r.commit_hash or NULL, row and r.objective or NULL,
    row and r.threshold or NULL, row and db.json_array(r.measures) or NULL,
    row and r.solution and db.json_array(r.solution) or NULL, row and r.metadata or NULL,
    row and r.timestamp or NULL,
    changes.projection or NULL, changes.samples_since_fit, changes.projection ~= nil,
    h.seq or NULL, h.commit_hash or NULL, h.vector or NULL, changes.trim_before_seq or 0,
    spec.job_id and spec.state and spec.job_id or NULL,
    status, at, reason or NULL, delta, status_code or NULL, message or NULL, record)
  if not rows then return nil, err, code end
  return true
end

-- --- islands ---------------------------------------------------------------------------

local SQL_SAVE_ISLAND = [[
INSERT INTO loreley_islands (experiment_id, island_id, config) VALUES ($1, $2, $3::jsonb)
ON CONFLICT (experiment_id, island_id) DO UPDATE SET config = EXCLUDED.config,
  updated_at = now()]]

-- Stores the island's archive configuration (a table, kept as JSON).
function Store:save_island(island_id, config)
  check_string(island_id, "island_id")
  if type(config) ~= "table" then fail("config must be a table") end
  local ok, err, code = self.conn:exec(SQL_SAVE_ISLAND, self.experiment_id, island_id,
    db.json_encode(config))
  if not ok then return nil, err, code end
  return true
end

local SQL_LIST_ISLANDS = [[
WITH ids AS (
  SELECT island_id FROM loreley_islands WHERE experiment_id = $1
  UNION SELECT DISTINCT island_id FROM loreley_archive_cells WHERE experiment_id = $1
  UNION SELECT island_id FROM loreley_reducer_state WHERE experiment_id = $1)
SELECT ids.island_id, i.config,
  (SELECT count(*) FROM loreley_archive_cells c
    WHERE c.experiment_id = $1 AND c.island_id = ids.island_id) AS cells,
  (SELECT count(*) FROM loreley_reducer_history h
    WHERE h.experiment_id = $1 AND h.island_id = ids.island_id) AS history,
  (r.projection IS NOT NULL) AS fitted, r.samples_since_fit
FROM ids
LEFT JOIN loreley_islands i ON i.experiment_id = $1 AND i.island_id = ids.island_id
LEFT JOIN loreley_reducer_state r ON r.experiment_id = $1 AND r.island_id = ids.island_id
ORDER BY ids.island_id]]

-- Islands with any saved state: {island_id, config (table or nil), cells, history,
-- fitted (bool), samples_since_fit (or nil)}, by island id.
function Store:list_islands()
  local rows, err, code = self.conn:query(SQL_LIST_ISLANDS, self.experiment_id)
  if not rows then return nil, err, code end
  local out = {}
  for i, r in ipairs(rows) do
    out[i] = { island_id = r.island_id, config = nn(r.config), cells = r.cells,
      history = r.history, fitted = r.fitted == true, samples_since_fit = nn(r.samples_since_fit) }
  end
  return out
end

-- --- dispatch bookkeeping --------------------------------------------------------------

local SQL_DISPATCH_SENT = [[
INSERT INTO loreley_dispatch (job_id, experiment_id, attempts, last_sent_at, redis_message_id)
SELECT id, experiment_id, 1, now(), $3 FROM evolution_jobs WHERE id = $1 AND experiment_id = $2
ON CONFLICT (job_id) DO UPDATE SET attempts = loreley_dispatch.attempts + 1,
  last_sent_at = now(), redis_message_id = EXCLUDED.redis_message_id, last_error = NULL,
  updated_at = now()]]
local SQL_DISPATCH_FAILED = [[
INSERT INTO loreley_dispatch (job_id, experiment_id, attempts, last_error)
SELECT id, experiment_id, 1, $3 FROM evolution_jobs WHERE id = $1 AND experiment_id = $2
ON CONFLICT (job_id) DO UPDATE SET attempts = loreley_dispatch.attempts + 1,
  last_error = EXCLUDED.last_error, updated_at = now()]]

-- After a message was pushed to Redis: when, and its redis_message_id.
function Store:record_dispatch(job_id, redis_message_id)
  check_uuid(job_id, "job_id")
  check_string(redis_message_id, "redis_message_id")
  local n, err, code = self.conn:exec(SQL_DISPATCH_SENT, job_id, self.experiment_id,
    redis_message_id)
  if not n then return nil, err, code end
  return n > 0
end

local SQL_DISPATCH_SENT_MANY = [[
INSERT INTO loreley_dispatch (job_id, experiment_id, attempts, last_sent_at, redis_message_id)
SELECT j.id, j.experiment_id, 1, now(), d.rid
FROM unnest($2::uuid[], $3::text[]) AS d(job_id, rid)
JOIN evolution_jobs j ON j.id = d.job_id AND j.experiment_id = $1
ON CONFLICT (job_id) DO UPDATE SET attempts = loreley_dispatch.attempts + 1,
  last_sent_at = now(), redis_message_id = EXCLUDED.redis_message_id, last_error = NULL,
  updated_at = now()]]

-- record_dispatch for many jobs in one statement: sent = { {job_id, redis_message_id}, ... }.
-- Returns the number recorded.
function Store:record_dispatches(sent)
  if type(sent) ~= "table" then fail("sent must be an array of {job_id, redis_message_id}") end
  if #sent == 0 then return 0 end
  local ids, rids = {}, {}
  for i, pair in ipairs(sent) do
    ids[i] = check_uuid(pair[1], ("sent[%d][1]"):format(i))
    rids[i] = check_string(pair[2], ("sent[%d][2]"):format(i))
  end
  return self.conn:exec(SQL_DISPATCH_SENT_MANY, self.experiment_id, ids, rids)
end

-- After a failed push: the error (the job stays QUEUED; find_stranded_queued finds it).
function Store:record_dispatch_failure(job_id, message)
  check_uuid(job_id, "job_id")
  local n, err, code = self.conn:exec(SQL_DISPATCH_FAILED, job_id, self.experiment_id,
    tostring(message))
  if not n then return nil, err, code end
  return n > 0
end

local SQL_STRANDED = [[
SELECT j.id::text AS id, j.island_id, j.base_commit_hash, j.scheduled_at, j.updated_at,
  d.last_sent_at, d.redis_message_id, coalesce(d.attempts, 0) AS attempts, d.last_error
FROM evolution_jobs j LEFT JOIN loreley_dispatch d ON d.job_id = j.id
WHERE j.experiment_id = $1 AND j.status = 'QUEUED'
  AND j.updated_at < now() - make_interval(secs => $2)
  AND (d.last_sent_at IS NULL OR d.last_sent_at < now() - make_interval(secs => $2))
ORDER BY j.updated_at, j.id
LIMIT $3]]

-- QUEUED jobs with no recorded message, or none for older_than seconds (candidates for
-- a re-send): {id, island_id, base_commit_hash, scheduled_at, updated_at, last_sent_at,
-- redis_message_id, attempts, last_error}.
function Store:find_stranded_queued(older_than, limit)
  check_finite(older_than, "older_than")
  check_integer(limit, "limit")
  local rows, err, code = self.conn:query(SQL_STRANDED, self.experiment_id, older_than, limit)
  if not rows then return nil, err, code end
  for _, r in ipairs(rows) do
    r.island_id, r.base_commit_hash = nn(r.island_id), nn(r.base_commit_hash)
    r.last_sent_at, r.redis_message_id = nn(r.last_sent_at), nn(r.redis_message_id)
    r.scheduled_at, r.last_error = nn(r.scheduled_at), nn(r.last_error)
  end
  return rows
end

local SQL_OVERDUE = [[
SELECT id::text AS id, island_id, base_commit_hash, started_at, updated_at
FROM evolution_jobs
WHERE experiment_id = $1 AND status = 'RUNNING'
  AND started_at < now() - make_interval(secs => $2)
ORDER BY started_at, id
LIMIT $3]]

-- RUNNING jobs started more than older_than seconds ago (past the worker time limit).
function Store:find_overdue_running(older_than, limit)
  check_finite(older_than, "older_than")
  check_integer(limit, "limit")
  local rows, err, code = self.conn:query(SQL_OVERDUE, self.experiment_id, older_than, limit)
  if not rows then return nil, err, code end
  for _, r in ipairs(rows) do r.island_id, r.base_commit_hash = nn(r.island_id), nn(r.base_commit_hash) end
  return rows
end

return M
