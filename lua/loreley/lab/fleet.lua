-- loreley.lab.fleet: simulated workers inside the lab process.
--
--   local fleet = require "loreley.lab.fleet"
--   local f = fleet.new { conn =, broker =, queue =, workers = n, latency = dist,
--                         fail_rate = p, clock =, world =, seed =, settings = }
--   f:wake()           -- idle workers take messages (after a tick put some there)
--   f:run_until(t)     -- completes every job due by simulated time t, in time order
--   f:busy() -> n      f.stats = {started, succeeded, failed, skipped}
--   fleet.parse_latency("lognormal:300,0.5") -> dist | nil, message
--
-- Each worker consumes the real Dramatiq queue with its own consumer id (fetch, ack on
-- success, nack into the dead-letter queue on failure) and writes the rows Loreley's
-- worker writes (examples/worker.lua, contract §1.4-§1.6): RUNNING with started_at;
-- then SUCCEEDED with completed_at, plan_summary, payload.result (commit_hash, metrics,
-- summaries) plus the commits row and one metrics row, or FAILED with last_error. The
-- timestamps are simulated time. Each write is one statement (the success write uses
-- data-modifying CTEs, so it is still one atomic change): the rows are the worker's, the
-- round trips fewer.
--
-- A job's randomness (latency, failure, the landscape's variation) comes from a
-- generator seeded with the run seed and the job id, so it does not depend on which
-- worker runs it or when.
local host = require "loreley.host"
local json = require "loreley.json"
local db = require "loreley.db"

local M = {}
local Fleet = {}
Fleet.__index = Fleet

local ACTOR = "run_evolution_job"

-- --- latency distributions ----------------------------------------------------------------

local function positive(v) return v and v == v and v > 0 and v < math.huge end

-- "fixed:S", "uniform:A,B", "exponential:MEAN" (or "exp:"), "lognormal:MEDIAN,SIGMA".
function M.parse_latency(text)
  if type(text) ~= "string" then return nil, "latency must be text such as exponential:300" end
  local kind, rest = text:match("^(%a+):(.+)$")
  if not kind then
    return nil, ("latency '%s': expected KIND:PARAMS, e.g. fixed:60, uniform:30,90, "
      .. "exponential:300, lognormal:300,0.5"):format(text)
  end
  local nums = {}
  for part in (rest .. ","):gmatch("([^,]*),") do
    local n = tonumber(part)
    if not n then return nil, ("latency '%s': '%s' is not a number"):format(text, part) end
    nums[#nums + 1] = n
  end
  local function want(n, what)
    if #nums ~= n then
      return nil, ("latency '%s': %s takes %s"):format(text, kind, what)
    end
    return true
  end
  local ok, err
  if kind == "fixed" then
    ok, err = want(1, "one value (seconds)")
    if ok and not (nums[1] >= 0 and nums[1] < math.huge) then
      ok, err = nil, ("latency '%s': seconds must be >= 0"):format(text)
    end
    if ok then return { kind = "fixed", a = nums[1], text = text } end
  elseif kind == "uniform" then
    ok, err = want(2, "two values (lowest,highest seconds)")
    if ok and not (nums[1] >= 0 and nums[2] >= nums[1] and nums[2] < math.huge) then
      ok, err = nil, ("latency '%s': need 0 <= lowest <= highest"):format(text)
    end
    if ok then return { kind = "uniform", a = nums[1], b = nums[2], text = text } end
  elseif kind == "exponential" or kind == "exp" then
    ok, err = want(1, "one value (the mean in seconds)")
    if ok and not positive(nums[1]) then
      ok, err = nil, ("latency '%s': the mean must be > 0"):format(text)
    end
    if ok then return { kind = "exponential", a = nums[1], text = text } end
  elseif kind == "lognormal" then
    ok, err = want(2, "two values (median seconds,sigma)")
    if ok and not (positive(nums[1]) and nums[2] >= 0 and nums[2] < math.huge) then
      ok, err = nil, ("latency '%s': need median > 0 and sigma >= 0"):format(text)
    end
    if ok then return { kind = "lognormal", a = nums[1], b = nums[2], text = text } end
  else
    return nil, ("latency '%s': unknown distribution '%s' (fixed, uniform, exponential, "
      .. "lognormal)"):format(text, kind)
  end
  return nil, err
end

function M.draw_latency(dist, rng)
  local k = dist.kind
  if k == "fixed" then return dist.a end
  if k == "uniform" then return rng:uniform(dist.a, dist.b) end
  if k == "exponential" then return -dist.a * math.log(1 - rng:random()) end
  return dist.a * math.exp(dist.b * rng:normal(0, 1))   -- lognormal
end

-- --- a min-heap of completions, ordered by (time, worker) --------------------------------

local function before(a, b)
  if a.due ~= b.due then return a.due < b.due end
  return a.index < b.index
end

local function heap_push(h, w)
  h[#h + 1] = w
  local i = #h
  while i > 1 do
    local p = math.floor(i / 2)
    if not before(h[i], h[p]) then break end
    h[i], h[p] = h[p], h[i]
    i = p
  end
end

local function heap_pop(h)
  local top = h[1]
  local last = h[#h]
  h[#h] = nil
  if #h > 0 then
    h[1] = last
    local i, n = 1, #h
    while true do
      local l, r, m = 2 * i, 2 * i + 1, i
      if l <= n and before(h[l], h[m]) then m = l end
      if r <= n and before(h[r], h[m]) then m = r end
      if m == i then break end
      h[i], h[m] = h[m], h[i]
      i = m
    end
  end
  return top
end

-- --- the database writes of Loreley's worker ----------------------------------------------

local SQL_START = [[
UPDATE evolution_jobs SET status = 'RUNNING', started_at = $2, last_error = NULL, updated_at = $2
WHERE id = $1 AND status IN ('PENDING', 'QUEUED') AND coalesce(base_commit_hash, '') <> ''
RETURNING id::text AS id, base_commit_hash, island_id, experiment_id::text AS experiment_id,
  inspiration_commit_hashes]]

local SQL_STATUS = [[
SELECT status::text AS status, coalesce(base_commit_hash, '') AS base FROM evolution_jobs
WHERE id = $1]]

local SQL_MISSING_BASE = [[
UPDATE evolution_jobs SET status = 'FAILED', completed_at = $2,
  last_error = 'Evolution job is missing base_commit_hash.', updated_at = $2
WHERE id = $1 AND status IN ('PENDING', 'QUEUED')]]

local SQL_SUCCEED = [[
WITH job AS (
  UPDATE evolution_jobs SET status = 'SUCCEEDED', completed_at = $2, plan_summary = $3,
    payload = payload || jsonb_build_object('result', $4::jsonb), last_error = NULL,
    updated_at = $2
  WHERE id = $1
  RETURNING id),
made AS (
  INSERT INTO commits (id, commit_hash, parent_commit_hash, island_id, experiment_id, author,
    message, evaluation_summary, tags, extra_context, created_at, updated_at)
  SELECT $5, $6, $7, $8, $9, $10, $11, $12, '{}', $13::jsonb, $2, $2 FROM job
  RETURNING commit_hash)
INSERT INTO metrics (id, commit_hash, name, value, unit, higher_is_better, details,
  created_at, updated_at)
SELECT $14, commit_hash, $15, $16, NULL, $17, '{}'::jsonb, $2, $2 FROM made]]

local SQL_FAIL = [[
UPDATE evolution_jobs SET status = 'FAILED', completed_at = $2, last_error = $3, updated_at = $2
WHERE id = $1 AND status NOT IN ('SUCCEEDED', 'CANCELLED')]]

local function text(v) if v == nil or v == db.null then return nil end return v end

local function check(what, ok, err)
  if ok == nil then error(("lab worker: %s: %s"):format(what, tostring(err)), 0) end
  return ok
end

-- fleet.new{...}: see the header.
function M.new(opts)
  local self = setmetatable({
    conn = opts.conn, broker = opts.broker, queue = opts.queue, clock = opts.clock,
    world = opts.world, seed = opts.seed, settings = opts.settings,
    latency = opts.latency, fail_rate = opts.fail_rate or 0,
    workers = {}, heap = {}, queue_empty = false,
    stats = { started = 0, succeeded = 0, failed = 0, skipped = 0, dead_lettered = 0 },
  }, Fleet)
  for i = 1, opts.workers do
    self.workers[i] = { index = i, consumer = ("lab-worker-%d"):format(i), job = nil }
  end
  local metric = self.settings.mapelites_fitness_metric
  if metric == nil or metric == "" then metric = "composite_score" end
  self.metric = metric
  self.higher_is_better = self.settings.mapelites_fitness_higher_is_better
  return self
end

function Fleet:busy() return #self.heap end

-- The genomes of the job's base and inspirations (the "checkout" of the real worker).
local function genomes_of(self, job)
  local world = self.world
  local base = world.genomes[job.base_commit_hash]
  if base == nil then
    return nil, ("base commit %s is not one the lab made"):format(tostring(job.base_commit_hash))
  end
  local inspirations = {}
  local hashes = job.inspiration_commit_hashes
  if type(hashes) == "table" then
    for _, h in ipairs(hashes) do
      local g = world.genomes[h]
      if g ~= nil then inspirations[#inspirations + 1] = g end
    end
  end
  return base, inspirations
end

-- Starts the job of a fetched message at the current simulated time. Returns true when
-- the worker is now busy.
function Fleet:start(w, m)
  local msg = m.message
  if m.error or type(msg) ~= "table" or msg.actor_name ~= ACTOR or type(msg.args) ~= "table"
      or type(msg.args[1]) ~= "string" then
    host.warn("lab worker %s: dead-lettering message %s: %s", w.consumer,
      tostring(m.redis_message_id), tostring(m.error or "not a run_evolution_job message"))
    self.broker:nack(self.queue, m.redis_message_id, w.consumer)
    self.stats.dead_lettered = self.stats.dead_lettered + 1
    return false
  end
  local job_id = msg.args[1]:match("^%s*(.-)%s*$")
  local now = self.clock:time()
  local rows = check("start job " .. job_id, self.conn:query(SQL_START, job_id, now))
  local job = rows[1]
  if not job then
    local st = check("read job " .. job_id, self.conn:query(SQL_STATUS, job_id))[1]
    if st and (st.status == "PENDING" or st.status == "QUEUED") and st.base == "" then
      check("fail job " .. job_id, self.conn:exec(SQL_MISSING_BASE, job_id, now))
    end
    host.info("lab worker %s: skipping job %s (%s)", w.consumer, job_id,
      st and ("job is " .. st.status) or "job not found")
    self.broker:ack(self.queue, m.redis_message_id, w.consumer)
    self.stats.skipped = self.stats.skipped + 1
    return false
  end
  local rng = host.rng(("loreley.lab.job:%s:%s"):format(tostring(self.seed), job.id))
  local run = { job = job, message_id = m.redis_message_id }
  run.latency = M.draw_latency(self.latency, rng)
  run.fails = self.fail_rate > 0 and rng:random() < self.fail_rate
  if not run.fails then
    local base, inspirations = genomes_of(self, job)
    if base == nil then
      run.fails, run.error = true, inspirations
    else
      run.genome, run.fitness, run.measures = self.world.landscape:child(base, inspirations, rng)
      run.inspirations = #inspirations
    end
  end
  w.job = run
  w.due = self.clock:now() + run.latency
  heap_push(self.heap, w)
  self.stats.started = self.stats.started + 1
  return true
end

-- Fetches one message for an idle worker; false when the queue is empty.
function Fleet:take(w)
  if self.queue_empty then return false end
  while true do
    local got = check("fetch", self.broker:fetch(self.queue, 1, w.consumer))
    if #got == 0 then
      self.queue_empty = true   -- only a tick enqueues: empty until the next one
      return false
    end
    if self:start(w, got[1]) then return true end
  end
end

-- After a tick: every idle worker, in order, takes a message if there is one.
function Fleet:wake()
  self.queue_empty = false
  for _, w in ipairs(self.workers) do
    if not w.job and not self:take(w) then break end
  end
end

local function json_genome(g)
  if type(g) ~= "table" or #g == 0 then return nil end
  for i = 1, #g do
    local v = g[i]
    if type(v) ~= "number" or v ~= v or v == math.huge or v == -math.huge then return nil end
  end
  return json.array(g)
end

-- Writes the job's outcome at its due time and frees the worker.
function Fleet:finish(w)
  local run = w.job
  local job = run.job
  local now = self.clock:time()
  local world = self.world
  if run.fails then
    local reason = run.error or "evaluation failed (simulated failure)"
    check("fail job " .. job.id, self.conn:exec(SQL_FAIL, job.id, now, reason))
    self.broker:nack(self.queue, run.message_id, w.consumer)
    self.stats.failed = self.stats.failed + 1
    world:job_failed(job.id)
  else
    local hash = host.sha256(("loreley.lab.commit:%s:%s"):format(tostring(self.seed), job.id))
      :sub(1, 40)
    world:remember(hash, run.genome, run.measures, run.fitness)
    local value = self.higher_is_better and run.fitness or -run.fitness
    local summary = ("Simulated variation of %s with %d inspiration(s)")
      :format(job.base_commit_hash:sub(1, 12), run.inspirations)
    local evaluation = ("%s: fitness %.6g"):format(world.landscape.name, run.fitness)
    local metric = { name = self.metric, value = value, unit = json.null,
      higher_is_better = self.higher_is_better, details = {} }
    local result = json.encode({
      commit_hash = hash, plan_summary = summary,
      tests_executed = json.array { "landscape " .. world.landscape.name },
      tests_recommended = json.array(), evaluation_summary = evaluation,
      metrics = json.array { metric },
    }, { sort_keys = true })
    local extra = json.encode({
      job = { id = job.id, island_id = text(job.island_id), experiment_id = text(job.experiment_id) },
      base_commit = job.base_commit_hash,
      inspirations = json.array(type(job.inspiration_commit_hashes) == "table"
        and job.inspiration_commit_hashes or {}),
      plan = { summary = summary, strategy = "simulated" },
      evaluation = { summary = evaluation, metrics = json.array { metric } },
      lab = { landscape = world.landscape.name, genome = json_genome(run.genome),
        latency_seconds = run.latency },
      worker = { app_name = self.settings.app_name, environment = self.settings.environment,
        completed_at = db.iso(now) },
    }, { sort_keys = true })
    check("record the result of job " .. job.id, self.conn:exec(SQL_SUCCEED, job.id, now,
      summary, result, host.uuid4(), hash, job.base_commit_hash, text(job.island_id),
      text(job.experiment_id), self.settings.worker_evolution_commit_author,
      "lab: " .. summary, evaluation, extra, host.uuid4(), self.metric, value,
      self.higher_is_better))
    self.broker:ack(self.queue, run.message_id, w.consumer)
    self.stats.succeeded = self.stats.succeeded + 1
  end
  w.job, w.due = nil, nil
end

-- Completes, in (time, worker) order, every job due by simulated time t; a worker that
-- finishes takes its next message at once. The clock ends at t.
function Fleet:run_until(t)
  local heap = self.heap
  while heap[1] and heap[1].due <= t do
    local w = heap_pop(heap)
    self.clock:set(w.due)
    self:finish(w)
    self:take(w)
  end
  self.clock:set(t)
end

-- The earliest completion time, or nil when no worker is busy.
function Fleet:next_due()
  return self.heap[1] and self.heap[1].due
end

return M
