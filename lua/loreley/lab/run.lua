-- loreley.lab.run: one simulated run of one policy with one seed.
--
--   local run = require "loreley.lab.run"
--   local result = run.execute(spec) -> result | nil, message
--   spec = { policy_path, name, seed, jobs, every, workers, latency (fleet.parse_latency),
--            fail_rate, landscape (loreley.lab.landscape), stack (loreley.lab.stack),
--            env (setting overrides: {NAME = "text"}), policy_args = {}, out_dir,
--            max_sim_seconds = 0 (no limit), keep_database = false,
--            progress = function(done, jobs, sim_seconds) | nil }
--   result = { name, seed, rows = {series rows}, complete = bool, stop_reason,
--              jobs_done, sim_seconds, wall_seconds, ticks, tick_failures,
--              workers = {started, succeeded, failed, skipped, dead_lettered},
--              csv_path, svg_path, heatmap_path, database,
--              profile = {tick_seconds, worker_seconds, stages = ctx.stats.stages} }
--
-- The run: a fresh database copied from the stack's template; settings loaded as the
-- host loads them, with the run's overrides; the policy file loaded as the host loads
-- it; ctx from loreley.context with ctx.seams set (no repository; measures, commit
-- checks and the first elite come from the landscape); then init, ticks and shutdown
-- on the virtual clock (loreley.lab.clock). A tick takes no simulated time; the next
-- one comes after the delay the tick returned (nil: SCHEDULER_POLL_INTERVAL_SECONDS,
-- at least 1 s as in the host; a delay under 1 ms counts as 1 ms, so a policy that
-- always asks for 0 still lets time pass). Between ticks the simulated workers complete
-- their jobs in time order.
--
-- The run ends when the policy stops the host (stages.finish at SCHEDULER_MAX_TOTAL_JOBS)
-- or its tick returns false, when the scheduler has seen the outcome of `jobs` jobs,
-- when nothing has happened for 100 ticks with no job in flight (stalled), after
-- max_sim_seconds, after 20 failing ticks in a row, or on SIGINT/SIGTERM. Only the
-- first two, or the budget, count as complete.
local host = require "loreley.host"
local sys = require "loreley.sys"
local write_file = sys.write_file
local db = require "loreley.db"
local broker_mod = require "loreley.broker"
local settings_mod = require "loreley.settings"
local context = require "loreley.context"
local strict = require "loreley.strict"
local report = require "loreley.report"
local clock_mod = require "loreley.lab.clock"
local fleet_mod = require "loreley.lab.fleet"
local policy_mod = require "loreley.lab.policy"
local series = require "loreley.lab.series"
local stack_mod = require "loreley.lab.stack"

local M = {}

M.MIN_STEP = 0.001        -- simulated seconds between two ticks, at least
M.STALL_TICKS = 100       -- ticks without any activity and no job in flight
M.MAX_TICK_FAILURES = 20  -- consecutive failing ticks before the run is abandoned
M.VACUUM_EVERY = 1000     -- ids issued between two vacuums
-- The tables whose rows the stages update over and over; plain VACUUM (an ANALYZE of
-- the payloads would cost more than it saves: the lab's plans are generic)
M.VACUUM_SQL = "VACUUM evolution_jobs, loreley_dispatch, loreley_archive_cells, loreley_reducer_state"

-- --- the world: what the landscape made, and what the scheduler has seen ---------------

local World = {}
World.__index = World

local function new_world(spec, clock, settings)
  local metric = settings.mapelites_fitness_metric
  if metric == nil or metric == "" then metric = "composite_score" end
  return setmetatable({
    landscape = spec.landscape, seed = spec.seed, clock = clock, every = spec.every,
    genomes = {}, measures = {}, fitness = {}, counted = {},
    seen = 0, failed = 0, offers = 0, next_mark = 0, rows = {},
    metric = metric, higher_is_better = settings.mapelites_fitness_higher_is_better,
    qd_offset = settings.mapelites_archive_qd_score_offset, ctx = nil,
  }, World)
end

function World:remember(hash, genome, measures, fitness)
  self.genomes[hash], self.measures[hash], self.fitness[hash] = genome, measures, fitness
end

local function same_grid(a, b)
  if #a.shape ~= #b.shape then return false end
  for i = 1, #a.shape do
    if a.shape[i] ~= b.shape[i] or a.lower[i] ~= b.lower[i] or a.upper[i] ~= b.upper[i] then
      return false
    end
  end
  return true
end

-- The statistics the series records. One island: its archive's. Several islands on the
-- same grid (as the stages make them): the union, cell by cell the best elite of any
-- island, so a policy with islands is measured on the same cells as one without.
-- Islands on different grids: the sums. Islands and cells are visited in a fixed order
-- (the same float sums in every run).
-- run.island_stats(islands, qd_offset) -> {qd_score, elites, cells, best}; islands is
-- ctx.loreley.islands ({id = {archive, shape, lower, upper}}).
function M.island_stats(islands, qd_offset)
  local out = { qd_score = 0, elites = 0, cells = 0, best = nil }
  if not islands then return out end
  local ids = {}
  for id in pairs(islands) do ids[#ids + 1] = id end
  table.sort(ids)
  local union = #ids > 1
  for i = 2, #ids do
    if not same_grid(islands[ids[1]], islands[ids[i]]) then union = false end
  end
  for _, id in ipairs(ids) do
    local st = islands[id].archive:stats()
    if st.obj_max and (out.best == nil or st.obj_max > out.best) then out.best = st.obj_max end
    if not union then
      out.qd_score = out.qd_score + st.qd_score
      out.elites = out.elites + st.num_elites
      out.cells = out.cells + st.cells
    end
  end
  if union then
    local best, cells = {}, {}
    for _, id in ipairs(ids) do
      for e in islands[id].archive:elites() do
        local current = best[e.cell]
        if current == nil then
          cells[#cells + 1] = e.cell
          best[e.cell] = e.objective
        elseif e.objective > current then
          best[e.cell] = e.objective
        end
      end
    end
    table.sort(cells)
    local sum = 0
    for _, cell in ipairs(cells) do sum = sum + best[cell] end
    out.qd_score = sum - #cells * qd_offset
    out.elites = #cells
    out.cells = islands[ids[1]].archive:stats().cells
  end
  return out
end

function World:stats()
  local s = self.ctx and self.ctx.loreley
  return M.island_stats(s and s.islands, self.qd_offset)
end

function World:row(jobs)
  local st = self:stats()
  return { jobs = jobs, sim_seconds = self.clock:now(), qd_score = st.qd_score,
    coverage = st.cells > 0 and st.elites / st.cells or 0, best_fitness = st.best or 0 / 0,
    archive_size = st.elites }
end

-- Records a row for every multiple of `every` the count has reached. The archive then
-- holds exactly the outcomes counted so far.
function World:observe()
  while self.seen >= self.next_mark do
    self.rows[#self.rows + 1] = self:row(self.next_mark)
    self.next_mark = self.next_mark + self.every
  end
end

function World:final_row()
  local last = self.rows[#self.rows]
  if not last or last.jobs ~= self.seen then self.rows[#self.rows + 1] = self:row(self.seen) end
end

function World:job_failed()
  self:observe()
  self.seen = self.seen + 1
  self.failed = self.failed + 1
end

-- The seams of loreley.stages (ctx.seams).
function World:seams()
  local world = self
  return {
    repository = false,
    root = "lab:" .. self.landscape.name,
    describe = function(_, _, hash)
      local m = world.measures[hash]
      if not m then
        return nil, ("commit %s was not made by the lab's workers"):format(hash), "failed"
      end
      if not world.counted[hash] and hash ~= world.root_hash then
        world:observe()
        world.counted[hash] = true
        world.seen = world.seen + 1
        world.offers = world.offers + 1
      end
      local copy = {}
      for i = 1, #m do copy[i] = m[i] end
      return copy
    end,
    ensure_commit = function(_, hash)
      if world.genomes[hash] ~= nil then return true end
      return nil, ("commit %s was not made by the lab's workers"):format(hash)
    end,
    bootstrap = function()
      local rng = host.rng("loreley.lab.root:" .. tostring(world.seed))
      local genome, fitness, measures = world.landscape:root(rng)
      local hash = host.sha256("loreley.lab.root:" .. tostring(world.seed)):sub(1, 40)
      world.root_hash = hash
      world:remember(hash, genome, measures, fitness)
      return hash, { { name = world.metric,
        value = world.higher_is_better and fitness or -fitness, higher_is_better = true } }
    end,
  }
end

-- --- settings ------------------------------------------------------------------------------

local function run_settings(spec, url, namespace)
  local env = sys.environ()
  for k, v in pairs(spec.env or {}) do env[k] = v end
  env.DATABASE_URL = url
  env.TASKS_REDIS_URL = spec.stack.redis_url
  env.TASKS_REDIS_NAMESPACE = namespace
  env.SCHEDULER_MAX_TOTAL_JOBS = tostring(spec.jobs)
  env.LORELEY_SAMPLER_SEED = tostring(spec.seed)
  return settings_mod.load { env = env }
end

-- --- the loop -------------------------------------------------------------------------------


local function call_hook(fn, ctx, what)
  local ok, err = xpcall(fn, debug.traceback, ctx)
  if not ok then return nil, ("%s failed: %s"):format(what, tostring(err)) end
  return true
end

-- Interprets what tick returned, as the host does: delay (>= 0), nil, or false.
local function tick_delay(ret, tick)
  if ret == nil then return nil end
  if ret == false then return false end
  if type(ret) == "number" and ret >= 0 and ret < math.huge then return ret end
  if type(ret) == "number" then
    host.error("tick %d returned %g; expected a delay in seconds (>= 0), nil or false", tick, ret)
  else
    host.error("tick %d returned a %s; expected a delay in seconds, nil or false", tick, type(ret))
  end
  return nil, true
end

local function loop(spec, state)
  local ctx, policy, clock, fleet, world = state.ctx, state.policy, state.clock, state.fleet,
    state.world
  local poll = math.max(1.0, ctx.settings.scheduler_poll_interval_seconds)
  local quiet_ticks, failures, last_activity = 0, 0, -1
  local next_vacuum = M.VACUUM_EVERY
  local last_progress = 0
  while true do
    assert(clock:sync(state.conn))
    ctx.tick = ctx.tick + 1
    ctx.tick_started = host.now()
    local ok, ret = xpcall(policy.tick, debug.traceback, ctx)
    ctx.last_tick_seconds = host.now() - ctx.tick_started
    state.tick_seconds = state.tick_seconds + ctx.last_tick_seconds
    state.ticks = ctx.tick
    local delay, bad
    if ok then
      delay, bad = tick_delay(ret, ctx.tick)
    else
      host.error("tick %d failed: %s", ctx.tick, tostring(ret))
      bad = true
    end
    if bad then
      failures = failures + 1
      state.tick_failures = state.tick_failures + 1
      if failures >= M.MAX_TICK_FAILURES then
        return "failed", ("%d ticks in a row failed; the last: %s"):format(failures,
          tostring(ok and ("returned " .. tostring(ret)) or ret):match("^[^\n]*"))
      end
    else
      failures = 0
    end
    world:observe()
    if spec.progress and host.now() - last_progress > 0.1 then
      last_progress = host.now()
      spec.progress(world.seen, spec.jobs, clock:now())
    end
    if host.stop_requested() then
      -- stages.finish asks through host.request_stop; a signal sets the flag directly
      if state.stop_asked then return "finished" end
      return "interrupted", "interrupted by a signal"
    end
    if delay == false then return "stopped" end
    if world.seen >= spec.jobs then return "budget" end
    if spec.max_sim_seconds and spec.max_sim_seconds > 0 and clock:now() >= spec.max_sim_seconds then
      return "time", ("simulated time limit reached (%g s)"):format(spec.max_sim_seconds)
    end
    -- Autovacuum's work, at fixed points of the run (it is off on the lab's server): dead
    -- row versions out of the partial indexes the tick queries scan.
    if clock.issued >= next_vacuum then
      next_vacuum = clock.issued + M.VACUUM_EVERY
      local t0 = host.now()
      assert(state.conn:script(M.VACUUM_SQL))
      state.vacuum_seconds = state.vacuum_seconds + (host.now() - t0)
    end
    local t0 = host.now()
    fleet:wake()
    state.worker_seconds = state.worker_seconds + (host.now() - t0)
    local activity = clock.issued + fleet.stats.started + world.seen
    if activity == last_activity and fleet:busy() == 0 then
      quiet_ticks = quiet_ticks + 1
      if quiet_ticks >= M.STALL_TICKS then
        return "stalled", ("nothing happened for %d ticks and no job is in flight "
          .. "(%d of %d jobs done)"):format(quiet_ticks, world.seen, spec.jobs)
      end
    else
      quiet_ticks = 0
    end
    last_activity = activity
    t0 = host.now()
    fleet:run_until(clock:now() + math.max(delay or poll, M.MIN_STEP))
    state.worker_seconds = state.worker_seconds + (host.now() - t0)
  end
end

-- --- one run ---------------------------------------------------------------------------------

local function prepend_path(path)
  local dir = path:match("^(.*/)[^/]*$") or "./"
  local saved = package.path
  package.path = dir .. "?.lua;" .. package.path
  return function() package.path = saved end
end

function M.execute(spec)
  local started_wall = host.now()
  local policy, perr = policy_mod.load(spec.policy_path)
  if not policy then return nil, perr end
  local dbname = stack_mod.database_name(("lab_%s_%s"):format(spec.name, tostring(spec.seed)))
  local url, uerr = spec.stack:create_database(dbname)
  if not url then return nil, uerr end
  local settings, serr = run_settings(spec, url, "lab." .. dbname)
  if not settings then return nil, serr end

  local clock = clock_mod.new(spec.seed)
  local world = new_world(spec, clock, settings)
  local state = { clock = clock, world = world, policy = policy, ticks = 0, tick_failures = 0,
    tick_seconds = 0, worker_seconds = 0, vacuum_seconds = 0 }
  local restore_clock = clock:install()
  local real_request_stop = host.request_stop
  host.request_stop = function(...)
    state.stop_asked = true
    return real_request_stop(...)
  end
  local function restore_host()
    restore_clock()
    host.request_stop = real_request_stop
  end
  local restore_path = prepend_path(spec.policy_path)
  math.randomseed(spec.seed)
  local guarded = false

  local function body()
    state.conn = assert(db.connect(url))
    assert(clock:sync(state.conn))
    state.broker = assert(broker_mod.from_settings(settings))
    state.fleet = fleet_mod.new { conn = state.conn, broker = state.broker,
      queue = settings.tasks_queue_name, workers = spec.workers, latency = spec.latency,
      fail_rate = spec.fail_rate, clock = clock, world = world, seed = spec.seed,
      settings = settings }
    local args = {}
    for i, a in ipairs(spec.policy_args or {}) do args[i] = a end
    args[0] = spec.policy_path
    local ctx = context.new { once = false, args = args, settings = settings,
      policy_path = spec.policy_path, policy_version = policy.version, tick = 0, reloads = 0 }
    ctx.seams = world:seams()
    world.ctx = ctx
    state.ctx = ctx
    strict.guard()
    guarded = true
    if policy.init then
      local ok, err = call_hook(policy.init, ctx, "init")
      if not ok then return "failed", err end
    end
    world:observe()
    local reason, message = loop(spec, state)
    if policy.shutdown then
      local ok, err = call_hook(policy.shutdown, ctx, "shutdown")
      if not ok and reason ~= "failed" then reason, message = "failed", err end
    end
    return reason, message
  end

  local ok, reason, message = xpcall(body, debug.traceback)
  if guarded then strict.unguard() end
  restore_path()
  if not ok then
    restore_host()
    if state.broker then state.broker:close() end
    if state.conn then state.conn:close() end
    return nil, ("run %s seed %s: %s"):format(spec.name, tostring(spec.seed), tostring(reason))
  end
  world:final_row()
  local result = {
    name = spec.name, seed = spec.seed, rows = world.rows, stop_reason = reason,
    message = message, jobs_done = world.seen, jobs = spec.jobs,
    complete = (reason == "finished" or reason == "stopped" or reason == "budget"),
    sim_seconds = clock:now(), ticks = state.ticks, tick_failures = state.tick_failures,
    workers = state.fleet and state.fleet.stats, database = dbname,
    -- wall-clock profile (not part of the outputs): seconds in ticks (per stage in
    -- stages) and in the simulated workers
    profile = { tick_seconds = state.tick_seconds, worker_seconds = state.worker_seconds,
      vacuum_seconds = state.vacuum_seconds,
      stages = state.ctx and state.ctx.stats.stages or {} },
  }
  -- The final archive of the default island, for the heatmap.
  local s = state.ctx and state.ctx.loreley
  local island = s and s.islands and s.islands[s.default_island]
  local elites = {}
  if island then
    for e in island.archive:elites() do elites[#elites + 1] = e end
  end
  restore_host()
  if state.broker then state.broker:close() end
  if state.conn then state.conn:close() end
  if not spec.keep_database then spec.stack:drop_database(dbname) end

  if spec.out_dir then
    local base = ("%s/%s-seed%s"):format(spec.out_dir, spec.name, tostring(spec.seed))
    result.csv_path, result.svg_path = base .. ".csv", base .. ".svg"
    local wok, werr = write_file(result.csv_path, series.csv(result.rows))
    if wok then
      wok, werr = write_file(result.svg_path, series.svg({ { name = spec.name, rows = result.rows } },
        ("%s on %s, seed %s"):format(spec.name, spec.landscape.name, tostring(spec.seed))))
    end
    if wok and island and #elites > 0 and spec.landscape.dims >= 2 then
      result.heatmap_path = base .. "-archive.svg"
      table.sort(elites, function(a, b) return a.cell < b.cell end)
      wok, werr = write_file(result.heatmap_path, report.heatmap_svg(elites, {
        lower = island.lower, upper = island.upper, cells = island.shape[1],
        title = ("%s on %s, seed %s: final archive"):format(spec.name, spec.landscape.name,
          tostring(spec.seed)) }))
    end
    if not wok then return nil, ("cannot write the outputs: %s"):format(tostring(werr)) end
  end
  result.wall_seconds = host.now() - started_wall
  return result
end

return M
