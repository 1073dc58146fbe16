-- loreley.monitor: the HTTP face of a live run (docs/http.md). The host starts it when
-- --http or LORELEY_HTTP_LISTEN names an address (daemon mode only) and calls it on its
-- main thread, never from the server's threads:
--
--   monitor.start(ctx, listen) -> true | nil, message, "invalid" | "system"
--   monitor.service(ctx, event, ok, wait)   event: "init" | "tick" | "reload" |
--                                  "request"; after "tick", ok = the tick did not raise
--                                  and wait = seconds until the next tick
--   monitor.stop(ctx)
--
-- After every event it renders a snapshot and publishes it to the server, which answers
-- GET requests from it alone:
--   /               the status page (lua/loreley/status.html, embedded)
--   /metrics        Prometheus text format
--   /api/status     the run at a glance (what the page shows)
--   /api/heatmap/N  the heatmap of the N-th island of /api/status
--   /api/control    pause state, limits, recent changes       /api/policy  the policy
-- Control requests (POST /api/control/...) are answered by loreley.control on "request".
-- The state lives in ctx.monitor, so it survives policy reloads.
--
-- Cost per tick: a few table updates; then, unless the last snapshot is younger than
-- MIN_PUBLISH seconds and the next tick comes sooner than that (a busy host), the
-- snapshot: one indexed count of the unfinished jobs, the status JSON and the metrics
-- text. Finished jobs are counted again only when the unfinished counts moved (or every
-- FINISHED_EVERY seconds); an island's heatmap and best elites are rebuilt only when its
-- archive changed (loreley.http.heatmap, in C). So a snapshot is at most MIN_PUBLISH
-- seconds (plus one tick) old while the host is busy, and current while it sleeps.
local host = require "loreley.host"
local http = require "loreley.http"
local json = require "loreley.json"
local metrics = require "loreley.metrics"
local control = require "loreley.control"
local db = require "loreley.db"
local broker = require "loreley.broker"

local M = {}

local TOP_ELITES = 10
local THROUGHPUT_BUCKET = 10    -- seconds per point of the throughput series
local THROUGHPUT_POINTS = 360   -- one hour
local FINISHED_EVERY = 10       -- seconds between counts of finished jobs
local RECENT_ERRORS = 30
local MIN_PUBLISH = 0.5         -- seconds between snapshots while ticks follow closely
local HEATMAP_SHARE = 0.02      -- busy host: heatmaps take at most this share of the time
local HEATMAP_BINS = 32         -- CVT archives: cells per axis
local HEATMAP_MAX_CELLS = 512   -- grid archives: cells per axis at most
local STATUSES = { "PENDING", "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED" }
local FINISHED = { "SUCCEEDED", "FAILED", "CANCELLED" }

local JSON_TYPE = "application/json; charset=utf-8"
local METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
local HTML_TYPE = "text/html; charset=utf-8"

local function encode(v)
  return json.encode(v, { nonfinite = "null" })
end

local function heatmap_dims(text)
  local a, b = tostring(text or "1,2"):match("^%s*(%d+)%s*,%s*(%d+)%s*$")
  return { tonumber(a) or 1, tonumber(b) or 2 }
end

-- --- start and stop --------------------------------------------------------------------------

function M.start(ctx, listen)
  local settings = ctx.settings
  local token = settings.loreley_http_token
  local ok, server, err = pcall(http.start, {
    listen = listen, token = token, endpoints = control.ENDPOINTS,
    control_timeout = settings.loreley_http_control_timeout_seconds,
  })
  if not ok then return nil, tostring(server), "invalid" end
  if not server then return nil, err, "system" end
  local page = assert(host.resource("loreley/status.html"))
  server:publish("/", page, HTML_TYPE)
  ctx.monitor = {
    server = server,
    address = server:address(),
    started_at = host.time(),
    ticks = 0,
    tick_failures = 0,
    tick_histogram = metrics.histogram(),
    render_histogram = metrics.histogram(),
    last_tick_at = nil,
    jobs = nil,                -- {PENDING = n, ...} once the job store exists
    finished_at = -math.huge,  -- host.now() of the last count of finished jobs
    throughput = {},           -- { {t, scheduled, dispatched, ingested}, ... }
    seen = { scheduled = 0, dispatched = 0, ingested = 0 },
    islands = {},              -- island id -> cached heatmap and best elites
    dims = heatmap_dims(settings.loreley_http_heatmap_dims),
    control = control.new(ctx),
    state = "starting",
  }
  M.publish(ctx)
  host.info("HTTP: status page on http://%s/ (metrics at /metrics, JSON at /api/status); "
    .. "control plane %s", server:address(),
    (token or "") ~= "" and "on (bearer token)" or "off (no LORELEY_HTTP_TOKEN)")
  return true
end

function M.stop(ctx)
  local m = ctx.monitor
  if not m or not m.server then return end
  control.flush(ctx, m.control)
  m.server:close()
  m.server = nil
end

-- --- what happened since the last event --------------------------------------------------------

local function counters(ctx)
  return ctx.loreley and ctx.loreley.counters or {}
end

-- Adds the jobs scheduled, dispatched and ingested since the last tick to the current
-- point of the throughput series.
local function update_throughput(ctx, m)
  local c = counters(ctx)
  local now = host.time()
  local t = math.floor(now / THROUGHPUT_BUCKET) * THROUGHPUT_BUCKET
  local series = m.throughput
  local last = series[#series]
  if not last or last[1] ~= t then
    last = { t, 0, 0, 0 }
    series[#series + 1] = last
    if #series > THROUGHPUT_POINTS then table.remove(series, 1) end
  end
  local keys = { "scheduled", "dispatched", "ingested" }
  for i, k in ipairs(keys) do
    local v = c[k] or 0
    last[i + 1] = last[i + 1] + math.max(0, v - (m.seen[k] or 0))
    m.seen[k] = v
  end
end

-- Jobs by status: the unfinished ones every call (an indexed count); the finished ones
-- (a scan of the experiment's jobs) when the unfinished counts moved (a job finished or
-- was created), when forced, and at least every FINISHED_EVERY seconds.
local function update_jobs(ctx, m, force)
  local s = ctx.loreley
  if not (s and s.store and s.store.count_by_status) then return end
  local counts, err = s.store:count_by_status()
  if not counts then
    m.jobs_error = tostring(err)
    return
  end
  local moved = not m.jobs
  m.jobs = m.jobs or {}
  for k, v in pairs(counts) do
    if m.jobs[k] ~= v then moved = true end
    m.jobs[k] = v
  end
  if force or moved or host.now() - m.finished_at >= FINISHED_EVERY then
    local finished = s.store:count_by_status(FINISHED)
    if finished then
      for k, v in pairs(finished) do m.jobs[k] = v end
      m.finished_at = host.now()
    end
  end
  m.jobs_at = host.time()
  m.jobs_error = nil
end

-- --- the snapshot ----------------------------------------------------------------------------------

-- Each island's view: stats, and the heatmap and best elites, rebuilt only when the
-- archive changed (its identity, elite count or QD score). Publishes changed heatmaps.
-- While the host is busy, an island is rebuilt at most once per HEATMAP_SHARE^-1 times
-- its last build time (a 10^5-cell heatmap takes a few ms), so the views never take more
-- than about 2 % of the main thread.
local function island_views(ctx, m, busy)
  local s = ctx.loreley
  local views = json.array()
  if not (s and s.islands) then return views end
  local ids = {}
  for id in pairs(s.islands) do ids[#ids + 1] = id end
  table.sort(ids)
  for i, id in ipairs(ids) do
    local a = s.islands[id].archive
    local st = a:stats()
    local cache = m.islands[id]
    if not cache then
      cache = { version = 0 }
      m.islands[id] = cache
    end
    local path = "/api/heatmap/" .. i
    local key = ("%s|%d|%.17g"):format(tostring(a), st.num_elites, st.qd_score)
    if (cache.key ~= key or cache.path ~= path)
        and not (busy and cache.path == path and host.now() < (cache.next_build or 0)) then
      local build_started = host.now()
      local d = a:dimensions()
      local dims = { math.min(m.dims[1], d), math.min(m.dims[2], d) }
      local text, occupied = http.heatmap(a, { dims = dims, bins = HEATMAP_BINS,
        max_cells = HEATMAP_MAX_CELLS })
      cache.version = cache.version + 1
      -- text is one JSON object: the island and the version go in front of its fields.
      m.server:publish(path, ('{"island":%s,"version":%d,%s'):format(encode(id),
        cache.version, text:sub(2)))
      local best = json.array()
      for _, cell in ipairs(http.best(a, TOP_ELITES)) do
        local e = a:get(cell)
        best[#best + 1] = { cell = cell, commit_hash = e.commit_hash, objective = e.objective,
          measures = json.array(e.measures) }
      end
      cache.key, cache.path, cache.dims, cache.occupied, cache.best = key, path, dims, occupied,
        best
      cache.next_build = host.now() + (host.now() - build_started) / HEATMAP_SHARE
    end
    views[#views + 1] = { id = id, kind = a:kind(), dimensions = a:dimensions(),
      cells = st.cells, elites = st.num_elites, coverage = st.coverage, qd_score = st.qd_score,
      best_fitness = st.obj_max or json.null,
      heatmap = { url = path, version = cache.version, dims = json.array(cache.dims),
        occupied = cache.occupied },
      best = cache.best }
  end
  return views
end

local function stage_list(ctx)
  local names = {}
  for name in pairs(ctx.stats and ctx.stats.stages or {}) do names[#names + 1] = name end
  table.sort(names)
  local out = json.array()
  for _, name in ipairs(names) do
    local st = ctx.stats.stages[name]
    out[#out + 1] = { name = name, runs = st.runs, failures = st.failures, seconds = st.seconds,
      last_seconds = st.last_seconds, last_error = st.last_error or json.null, histogram = st.histogram }
  end
  return out
end

local function policy_doc(ctx)
  return { path = ctx.policy_path, version = ctx.policy_version, reloads = ctx.reloads or 0,
    reload_failures = ctx.reload_failures or 0 }
end

local function status_doc(ctx, m, islands, stages, control_state)
  local c = counters(ctx)
  local s = ctx.loreley
  local recent = host.recent_logs()
  local errors = json.array()
  for i = math.max(1, #recent - RECENT_ERRORS + 1), #recent do errors[#errors + 1] = recent[i] end
  local stage_rows = json.array()
  for i, st in ipairs(stages) do
    stage_rows[i] = { name = st.name, runs = st.runs, failures = st.failures,
      seconds = st.seconds, last_seconds = st.last_seconds, last_error = st.last_error }
  end
  local points = json.array()
  for i, p in ipairs(m.throughput) do points[i] = json.array { p[1], p[2], p[3], p[4] } end
  local state = m.state
  if state == "running" and ctx.paused then state = "paused" end
  return {
    host = { version = host.version, address = m.address, started_at = m.started_at,
      now = host.time() },
    state = state,
    policy = policy_doc(ctx),
    experiment = s and s.experiment and { id = s.experiment.id, name = s.experiment.name }
      or json.null,
    tick = { count = m.ticks, failures = m.tick_failures,
      last_seconds = ctx.last_tick_seconds or json.null, last_at = m.last_tick_at or json.null,
      interval_seconds = ctx.settings.scheduler_poll_interval_seconds,
      summary = ctx.stats and ctx.stats.last_summary or json.null },
    jobs = m.jobs or json.null,
    jobs_at = m.jobs_at or json.null,
    jobs_error = m.jobs_error or json.null,
    totals = { scheduled = c.scheduled or 0, dispatched = c.dispatched or 0,
      ingested = c.ingested or 0, dispatch_failures = c.dispatch_failures or 0,
      ingestion_failures = c.ingestion_failures or 0 },
    ingestions = { ["0"] = c.ingestion_status_0 or 0, ["1"] = c.ingestion_status_1 or 0,
      ["2"] = c.ingestion_status_2 or 0, failed = c.ingestion_failures or 0 },
    errors_total = { database = db.error_count(), broker = broker.error_count() },
    stages = stage_rows,
    islands = islands,
    throughput = { bucket_seconds = THROUGHPUT_BUCKET, points = points },
    control = control_state,
    errors = errors,
  }
end

local function metrics_text(ctx, m, islands, stages, control_state)
  local e = metrics.exposition()
  local c = counters(ctx)
  e:gauge("loreley_build_info", "The host's version and the running policy's version.",
    { { { version = host.version, policy_version = ctx.policy_version or "" }, 1 } })
  e:gauge("loreley_start_time_seconds", "When the host started, in seconds since the epoch.",
    m.started_at)
  e:counter("loreley_ticks_total", "Ticks run.", m.ticks)
  e:counter("loreley_tick_failures_total", "Ticks that raised an error.", m.tick_failures)
  e:histogram("loreley_tick_duration_seconds", "Duration of each tick.", m.tick_histogram)
  if m.last_tick_at then
    e:gauge("loreley_last_tick_timestamp_seconds", "When the last tick ended.", m.last_tick_at)
  end
  local hist, failures = {}, {}
  for i, st in ipairs(stages) do
    hist[i] = { { stage = st.name }, st.histogram }
    failures[i] = { { stage = st.name }, st.failures }
  end
  e:histogram("loreley_stage_duration_seconds", "Duration of each run of a tick stage.", hist)
  e:counter("loreley_stage_failures_total", "Runs of a tick stage that failed.", failures)
  local jobs = {}
  if m.jobs then
    for _, status in ipairs(STATUSES) do
      if m.jobs[status] then jobs[#jobs + 1] = { { status = status:lower() }, m.jobs[status] } end
    end
  end
  e:gauge("loreley_jobs", "Jobs of this experiment by status.", jobs)
  e:counter("loreley_jobs_scheduled_total", "Jobs created by the schedule stage.",
    c.scheduled or 0)
  e:counter("loreley_jobs_dispatched_total", "Jobs sent to the worker queue.", c.dispatched or 0)
  e:counter("loreley_jobs_ingested_total", "Succeeded jobs whose commit entered an archive.",
    c.ingested or 0)
  e:counter("loreley_dispatch_failures_total", "Jobs the broker did not accept.",
    c.dispatch_failures or 0)
  e:counter("loreley_ingestions_total", "Ingestion outcomes by archive status code (2 new "
    .. "cell, 1 improved cell, 0 not added).", {
      { { status_code = "0" }, c.ingestion_status_0 or 0 },
      { { status_code = "1" }, c.ingestion_status_1 or 0 },
      { { status_code = "2" }, c.ingestion_status_2 or 0 } })
  e:counter("loreley_ingestion_failures_total", "Ingestions that failed (retried later).",
    c.ingestion_failures or 0)
  local elites, cells, coverage, qd, best = {}, {}, {}, {}, {}
  for _, v in ipairs(islands) do
    local l = { island = v.id }
    elites[#elites + 1] = { l, v.elites }
    cells[#cells + 1] = { l, v.cells }
    coverage[#coverage + 1] = { l, v.coverage }
    qd[#qd + 1] = { l, v.qd_score }
    if v.best_fitness ~= json.null then best[#best + 1] = { l, v.best_fitness } end
  end
  e:gauge("loreley_archive_elites", "Elites in each island's archive.", elites)
  e:gauge("loreley_archive_cells", "Cells of each island's archive.", cells)
  e:gauge("loreley_archive_coverage_ratio", "Occupied cells over all cells.", coverage)
  e:gauge("loreley_archive_qd_score", "QD score of each island's archive.", qd)
  e:gauge("loreley_archive_best_fitness", "Best objective ever inserted per island.", best)
  e:counter("loreley_database_errors_total", "Failed database calls of this process.",
    db.error_count())
  e:counter("loreley_broker_errors_total", "Failed broker (Redis) calls of this process.",
    broker.error_count())
  e:counter("loreley_policy_reloads_total", "Policy reloads by result.", {
    { { result = "ok" }, ctx.reloads or 0 }, { { result = "failed" }, ctx.reload_failures or 0 } })
  e:gauge("loreley_scheduling_paused", "1 while scheduling is paused.", ctx.paused and 1 or 0)
  local limits = {}
  for _, l in ipairs(control.LIMITS) do
    limits[#limits + 1] = { { name = l.key }, control_state.effective[l.key] }
  end
  e:gauge("loreley_scheduler_limit", "Batch sizes and the unfinished-jobs cap in effect.",
    limits)
  e:counter("loreley_control_changes_total", "Changes applied through the control plane "
    .. "and reloads seen.", control_state.changes_total)
  local counts, codes, responses = m.server:responses(), {}, {}
  for code in pairs(counts) do codes[#codes + 1] = code end
  table.sort(codes)
  for i, code in ipairs(codes) do responses[i] = { { code = tostring(code) }, counts[code] } end
  e:counter("loreley_http_responses_total", "HTTP responses by status code.", responses)
  e:histogram("loreley_http_snapshot_duration_seconds", "Main-thread time spent on the HTTP "
    .. "face per event (snapshot and control requests).", m.render_histogram)
  return e:text()
end

-- Renders every document and publishes it. busy: the next tick comes soon.
function M.publish(ctx, busy)
  local m = ctx.monitor
  m.published_at = host.now()
  local islands = island_views(ctx, m, busy)
  local stages = stage_list(ctx)
  local control_state = control.describe(ctx, m.control)
  m.server:publish("/api/status", encode(status_doc(ctx, m, islands, stages, control_state)))
  m.server:publish("/metrics", metrics_text(ctx, m, islands, stages, control_state),
    METRICS_TYPE)
  m.server:publish("/api/control", encode(control_state))
  m.server:publish("/api/policy", encode(policy_doc(ctx)))
end

-- --- events --------------------------------------------------------------------------------

function M.service(ctx, event, ok, wait)
  local m = ctx.monitor
  if not m or not m.server then return end
  local started = host.now()
  if event == "tick" then
    m.ticks = m.ticks + 1
    if not ok then m.tick_failures = m.tick_failures + 1 end
    if ctx.last_tick_seconds then metrics.observe(m.tick_histogram, ctx.last_tick_seconds) end
    m.last_tick_at = host.time()
    m.state = "running"
    update_throughput(ctx, m)
    if (wait or 0) < MIN_PUBLISH and started - m.published_at < MIN_PUBLISH then
      metrics.observe(m.render_histogram, host.now() - started)
      return   -- a busy host: the next tick comes soon, the snapshot is fresh enough
    end
    update_jobs(ctx, m, false)
    control.flush(ctx, m.control)
  elseif event == "init" then
    m.state = "running"
    update_jobs(ctx, m, true)
    control.flush(ctx, m.control)
  end
  -- Control answers go out after the snapshot shows their effect, so a client that
  -- reads /api/control or /api/policy after its answer sees the change.
  local answers
  if event == "reload" then
    answers = control.after_reload(ctx, m.control)
  elseif event == "request" then
    answers = control.serve(ctx, m.control, m.server)
  end
  M.publish(ctx, event == "tick" and (wait or 0) < 1)
  for _, a in ipairs(answers or {}) do m.server:reply(a[1], a[2], a[3]) end
  metrics.observe(m.render_histogram, host.now() - started)
end

return M
