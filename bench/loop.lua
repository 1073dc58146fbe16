-- Benchmarks of the scheduler loop (issue 8), with real PostgreSQL, Redis and git:
--
--   build/loreley-host --once bench/loop.lua [-- --quick]
--
-- Prints medians with units, beside the reference's figures where the issue gives them:
--   tick with no ingestion work at 10,000 elites and 10,000 unfinished jobs
--   scheduling one job (sampling and payload, database write excluded)
--   ingesting one commit of 6 changed files (git, descriptor, archive, persistence)
--   restart with 100,000 elites ready to schedule
--   tick at 10^6 elites and 10^5 unfinished jobs
--   the full loop with example workers doing trivial jobs (jobs/s)
local host = require "loreley.host"
local sys = require "loreley.sys"
local db = require "loreley.db"
local settings_mod = require "loreley.settings"
local context = require "loreley.context"
local stages = require "loreley.stages"
local jobstore = require "loreley.jobstore"

local source = os.getenv("LORELEY_SOURCE_DIR") or "."
package.path = source .. "/examples/?.lua;" .. package.path
local setup = require "demo_setup"

local quick = false
for _, a in ipairs(arg) do if a == "--quick" then quick = true end end

local function median(xs)
  table.sort(xs)
  local n = #xs
  if n == 0 then return 0 end
  if n % 2 == 1 then return xs[(n + 1) / 2] end
  return (xs[n / 2] + xs[n / 2 + 1]) / 2
end

local function report(name, value, unit, target, reference)
  print(("%-58s %10.3f %-5s (target %s%s)"):format(name, value, unit, target,
    reference and ("; reference " .. reference) or ""))
end

local dir = assert(sys.mkdtemp("/tmp/loreley-bench-"))
sys.run { "chmod", "755", dir }
local stack = setup.start(dir .. "/stack", { max_connections = 200 })
local binary = "build/loreley-host"
do
  local r = sys.run { "readlink", "-f", "/proc/" .. sys.getpid() .. "/exe" }
  if r and r.code == 0 then binary = r.stdout:gsub("%s+$", "") end
end

local function settings_for(overrides)
  local env = {}
  for k, v in pairs(setup.environment(stack, overrides)) do if v then env[k] = v end end
  env.LOG_LEVEL = "WARNING"
  return assert(settings_mod.load { env = env, dotenv = false })
end

local function fake_hash(i, salt)
  return host.sha256((salt or "") .. i):sub(1, 40)
end

-- A ctx with the stages initialised against the stack (the bootstrap runs once).
local function new_ctx(overrides)
  local ctx = context.new { settings = settings_for(overrides), args = {}, once = false }
  host.set_log_level("WARNING")
  stages.init(ctx)
  host.set_log_level("INFO")
  return ctx
end

-- Fills island `main` with n elites: archive in memory, cells and commits rows in the
-- database (in bulk SQL, as a long run would have left them).
local function fill(ctx, n, salt)
  local s = ctx.loreley
  local island = stages.island(ctx, "main")
  local rng = host.rng(42)
  local lower, upper = island.lower, island.upper
  local batch = {}
  local cells = 1
  for _, c in ipairs(island.shape) do cells = cells * c end
  assert(n <= cells, "more elites than cells")
  local stride = math.floor(cells / n)
  for i = 1, n do
    -- the centre of a distinct cell, so n elites really are n elites
    local k, m = (i - 1) * stride, {}
    for d = #lower, 1, -1 do
      local c = island.shape[d]
      m[d] = lower[d] + (k % c + 0.5) * (upper[d] - lower[d]) / c
      k = math.floor(k / c)
    end
    batch[#batch + 1] = { commit_hash = fake_hash(i, salt), objective = rng:random(), measures = m,
      timestamp = 1.7e9 }
    if #batch == 10000 or i == n then
      island.archive:add_many(batch)
      batch = {}
    end
  end
  -- persist: commits rows for every elite (jobs reference their base), cells
  assert(s.conn:exec("BEGIN"))
  local rows = island.archive:rows()
  local hashes, cells, objs, ths, ms = {}, {}, {}, {}, {}
  local function flush()
    if #hashes == 0 then return end
    assert(s.conn:exec([[INSERT INTO commits (id, commit_hash, island_id, experiment_id, tags, extra_context)
      SELECT gen_random_uuid(), h, 'main', $2, '{}', '{}' FROM unnest($1::text[]) h
      ON CONFLICT DO NOTHING]], hashes, s.experiment.id))
    assert(s.conn:exec([[INSERT INTO loreley_archive_cells (experiment_id, island_id, cell_index,
      commit_hash, objective, threshold, measures, added_at)
      SELECT $1, 'main', c, h, o, t, ARRAY[m0, m1, m2, m3], 1.7e9
      FROM unnest($2::bigint[], $3::text[], $4::float8[], $5::float8[], $6::float8[], $7::float8[],
        $8::float8[], $9::float8[]) AS u(c, h, o, t, m0, m1, m2, m3)
      ON CONFLICT (experiment_id, island_id, cell_index) DO UPDATE SET commit_hash = EXCLUDED.commit_hash,
        objective = EXCLUDED.objective, threshold = EXCLUDED.threshold, measures = EXCLUDED.measures]],
      s.experiment.id, cells, hashes, objs, ths, ms[1], ms[2], ms[3], ms[4]))
    hashes, cells, objs, ths, ms = {}, {}, {}, {}, { {}, {}, {}, {} }
  end
  ms = { {}, {}, {}, {} }
  for _, r in ipairs(rows) do
    hashes[#hashes + 1] = r.commit_hash
    cells[#cells + 1] = r.cell
    objs[#objs + 1] = r.objective
    ths[#ths + 1] = r.threshold
    for d = 1, 4 do ms[d][#ms[d] + 1] = r.measures[d] end
    if #hashes == 20000 then flush() end
  end
  flush()
  assert(s.conn:exec("COMMIT"))
  return island
end

-- n unfinished (QUEUED) jobs of the experiment, in bulk.
local function add_unfinished(ctx, n)
  local s = ctx.loreley
  assert(s.conn:exec([[INSERT INTO evolution_jobs (id, status, island_id, experiment_id,
    inspiration_commit_hashes, payload, priority, scheduled_at)
    SELECT gen_random_uuid(), 'QUEUED', 'main', $1, '{}', '{}', 0, now()
    FROM generate_series(1, $2)]], s.experiment.id, n))
  assert(s.conn:exec("ANALYZE evolution_jobs"))
end

local function time_ticks(ctx, n)
  local xs = {}
  for i = 1, n do
    ctx.tick = i
    ctx.tick_started = host.now()
    local t0 = host.now()
    host.set_log_level("WARNING")
    stages.tick(ctx)
    host.set_log_level("INFO")
    xs[#xs + 1] = (host.now() - t0) * 1000
  end
  return median(xs)
end

print(("loreley-host loop benchmarks (%s)"):format(quick and "quick" or "full"))

-- 1. tick with no ingestion work at 10,000 elites and 10,000 unfinished jobs
local ctx = new_ctx { SCHEDULER_MAX_UNFINISHED_JOBS = "4" }
fill(ctx, 10000, "a")
add_unfinished(ctx, 10000)
report("tick, no ingestion work, 10^4 elites, 10^4 unfinished", time_ticks(ctx, quick and 20 or 100),
  "ms", "<= 5 ms", "91 ms at 100 elites, 357 ms at 10^4 elites")

-- 2. scheduling one job: sampling + payload part A (no database write)
do
  local island = stages.island(ctx, "main")
  local s = ctx.loreley
  local xs = {}
  for _ = 1, 5 do
    local t0 = host.now()
    local n = 2000
    for _ = 1, n do
      local pick = s.sampler:sample(island.archive)
      local sel = pick.selection
      jobstore.part_a { island_id = island.id, base = pick.base, inspirations = pick.inspirations,
        sampling = { requested_inspirations = pick.requested_inspirations,
          initial_radius = sel.initial_radius, max_radius = sel.max_radius,
          radius_used = sel.radius_used, fallback_inspirations = sel.fallback_inspirations },
        grid = { shape = island.shape, lower = island.lower, upper = island.upper } }
    end
    xs[#xs + 1] = (host.now() - t0) / n * 1e6
  end
  report("schedule one job (sampling + payload), 10^4 elites", median(xs), "us", "<= 50 us")
end

-- 3. ingesting one commit of 6 changed files (real git repository, real descriptor)
do
  local work = dir .. "/ingest-work"
  local env = { GIT_AUTHOR_NAME = "b", GIT_AUTHOR_EMAIL = "b@b", GIT_COMMITTER_NAME = "b",
    GIT_COMMITTER_EMAIL = "b@b", GIT_CONFIG_GLOBAL = "/dev/null", GIT_CONFIG_NOSYSTEM = "1" }
  local git = require "loreley.git"
  local repo = git.open(stack.origin)
  local base = repo:resolve("main")
  local hashes = {}
  local rng = host.rng(9)
  for c = 1, quick and 15 or 40 do
    local files = {}
    for f = 1, 6 do
      local lines = {}
      for l = 1, 200 do
        lines[l] = ("def f%d_%d(x):\n    return x * %d + %d  # v%d"):format(f, l, rng:random(1000), c, rng:random(1e6))
      end
      files[("pkg/mod%d.py"):format(f)] = table.concat(lines, "\n") .. "\n"
    end
    hashes[c] = assert(repo:commit { parent = base, files = files, message = "bench " .. c,
      author = "bench", email = "b@b" })
  end
  local s = ctx.loreley
  s.repo = repo   -- the scheduler reads the commits where they are
  local xs = {}
  for i, h in ipairs(hashes) do
    local t0 = host.now()
    stages.ingest_commit(ctx, "main", h, { { name = "composite_score", value = rng:random() } },
      { bench = true })
    if i > 3 then xs[#xs + 1] = (host.now() - t0) * 1000 end
  end
  report("ingest one commit of 6 files x 200 lines", median(xs), "ms", "<= 10 ms", "about 1 ms for the archive add alone")
  local _ = work and env
end

-- 4. restart with 100,000 elites ready to schedule
do
  local big = { MAPELITES_SAMPLER_DEFAULT_PRIORITY = "5", MAPELITES_ARCHIVE_CELLS_PER_DIM = "32" }
  local ctx2 = new_ctx(big)   -- its own experiment, on the default 32^4 grid
  fill(ctx2, quick and 30000 or 100000, "r")
  local n = ctx2.loreley.islands.main.archive:stats().num_elites
  stages.shutdown(ctx2)   -- the scheduler stops (and releases the leader lock)
  local xs = {}
  for _ = 1, quick and 2 or 5 do
    local t0 = host.now()
    local ctx3 = new_ctx(big)
    local pick = ctx3.loreley.sampler:sample(stages.island(ctx3, "main").archive)
    assert(pick, "nothing to schedule after restart")
    xs[#xs + 1] = host.now() - t0
    stages.shutdown(ctx3)
  end
  report(("restart with %d elites until ready to schedule"):format(n), median(xs), "s", "<= 2 s")
end

-- 5. at scale: 10^6 elites and 10^5 unfinished jobs
do
  local ctx4 = new_ctx { MAPELITES_SAMPLER_DEFAULT_PRIORITY = "6", SCHEDULER_MAX_UNFINISHED_JOBS = "4",
    MAPELITES_ARCHIVE_CELLS_PER_DIM = "32" }
  local island = stages.island(ctx4, "main")
  local rng = host.rng(5)
  local batch = {}
  local target = quick and 200000 or 1000000
  local stride = math.floor(32 ^ 4 / target)
  for i = 1, target do
    local k, m = (i - 1) * stride, {}
    for d = 4, 1, -1 do
      m[d] = -0.5 + (k % 32 + 0.5) / 32
      k = math.floor(k / 32)
    end
    batch[#batch + 1] = { commit_hash = fake_hash(i, "s"), objective = rng:random(), measures = m }
    if #batch == 20000 then island.archive:add_many(batch) batch = {} end
  end
  add_unfinished(ctx4, quick and 20000 or 100000)
  report(("tick at %d elites, %d unfinished"):format(island.archive:stats().num_elites,
    quick and 20000 or 100000), time_ticks(ctx4, quick and 20 or 50), "ms", "<= 10 ms")
  stages.shutdown(ctx4)
end
stages.shutdown(ctx)

-- 6. the full loop: host + example workers doing trivial jobs. The scheduler's clone
-- shares the origin's object store (one machine, git clone --shared), as the demo's
-- workers write into the origin; the figure with a fetch per tick follows.
local loop_runs = 0
local function full_loop(total, shared)
  loop_runs = loop_runs + 1   -- a fresh stack per run: a reused database is already done
  local lstack = setup.start(("%s/loop-%d-%s"):format(dir, loop_runs, shared and "shared" or "fetch"),
    { shared = shared, max_connections = 200 })
  local env = setup.environment(lstack, {
    SCHEDULER_MAX_TOTAL_JOBS = tostring(total),
    SCHEDULER_MAX_UNFINISHED_JOBS = "64", SCHEDULER_SCHEDULE_BATCH_SIZE = "64",
    SCHEDULER_DISPATCH_BATCH_SIZE = "64", SCHEDULER_INGEST_BATCH_SIZE = "64",
    LOG_LEVEL = "WARNING" })
  local workers = {}
  for w = 1, 4 do
    workers[w] = setup.spawn_worker(binary, env, { "--id", "bench" .. w }, dir .. "/bw" .. w .. ".log")
  end
  local t0 = host.now()
  local pid = setup.spawn_host(binary, env, source .. "/examples/policy.lua", dir .. "/bench-host.log")
  local st = sys.wait(pid, 600)
  local elapsed = host.now() - t0
  for _, w in ipairs(workers) do sys.kill(w, "TERM") end
  for _, w in ipairs(workers) do sys.wait(w, 10) end
  assert(st and st.code == 0, "host failed; see " .. dir .. "/bench-host.log")
  local check = assert(require("loreley.db").connect(lstack.pg.url))
  local done = assert(check:query([[SELECT count(*) AS n FROM evolution_jobs
    WHERE payload->'ingestion'->'map_elites'->>'status' IN ('succeeded', 'skipped')]]))[1].n
  check:close()
  if done ~= total then
    error(("full loop: %d of %d jobs ingested when the host stopped; log:\n%s"):format(done, total,
      (sys.read_file(dir .. "/bench-host.log") or ""):sub(-3000)))
  end
  lstack.pg:stop()
  lstack.redis:stop()
  return total / elapsed
end

do
  local total = quick and 600 or 2000
  local runs = quick and 1 or 3
  local shared, fetched = {}, {}
  for r = 1, runs do
    shared[r] = full_loop(total, true)
    fetched[r] = full_loop(total, false)
  end
  report(("full loop, %d jobs, 4 workers, shared object store"):format(total), median(shared),
    "job/s", ">= 200 job/s", "about 1 job per tick interval")
  report(("full loop, %d jobs, 4 workers, fetch per tick"):format(total), median(fetched),
    "job/s", "(informative)")
end

sys.run { "rm", "-rf", dir }
