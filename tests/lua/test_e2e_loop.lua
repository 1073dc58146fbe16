-- ctest: labels=e2e;pg;redis;git timeout=600
-- The whole loop with real PostgreSQL, Redis, git and the example worker: jobs flow from
-- pending to ingested, the archive grows, ingestion states are recorded, the rows match
-- what Loreley's worker expects, SCHEDULER_MAX_TOTAL_JOBS stops the run, and a host
-- restarted mid-run resumes with the same archive.
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
  local rows = assert(conn:query(sql, ...))
  local row = rows[1]
  if not row then return nil end
  for _, v in pairs(row) do return v end
end

local function wait_exit(pid, seconds, log)
  local status = sys.wait(pid, seconds)
  if not status then
    sys.kill(pid, "KILL")
    sys.wait(pid, 5)
    error(("process %d did not exit within %d s; log:\n%s"):format(pid, seconds,
      (t.read(log) or ""):sub(-3000)))
  end
  return status
end

local workers = {}
local function start_workers(env, n)
  for i = 1, n do
    workers[#workers + 1] = setup.spawn_worker(t.host_binary, env, { "--id", "w" .. i },
      dir .. "/worker" .. i .. ".log")
  end
end
local function stop_workers()
  for _, pid in ipairs(workers) do sys.kill(pid, "TERM") end
  for _, pid in ipairs(workers) do sys.wait(pid, 10) end
  workers = {}
end

local TOTAL = 12
local env = setup.environment(stack, { SCHEDULER_MAX_TOTAL_JOBS = tostring(TOTAL) })

t.case("jobs flow from pending to ingested and MAX_TOTAL_JOBS stops the run", function()
  start_workers(env, 2)
  local log = dir .. "/host1.log"
  local pid = setup.spawn_host(t.host_binary, env, POLICY, log)
  local status = wait_exit(pid, 240, log)
  stop_workers()
  local text = t.read(log)
  t.eq(status.code, 0, "host exit code; log:\n" .. text:sub(-2000))
  t.match(text, "bootstrap: root commit %x+ is the first elite")
  t.match(text, "reached max total jobs and all jobs finished; shutting down")
  t.match(text, "tick %d+ ingested=%d+ dispatched=%d+ scheduled=%d+ unfinished=%d+")
  t.eq(scalar("SELECT count(*) FROM evolution_jobs"), TOTAL, "jobs created")
  t.eq(scalar("SELECT count(*) FROM evolution_jobs WHERE status = 'SUCCEEDED'"), TOTAL,
    "every job succeeded")
  -- every job's ingestion was recorded (part C) and most entered the archive
  local states = assert(conn:query([[SELECT payload->'ingestion'->'map_elites'->>'status' AS s,
    count(*) AS n FROM evolution_jobs GROUP BY 1]]))
  local by = {}
  for _, r in ipairs(states) do by[r.s == db.null and "none" or r.s] = r.n end
  t.eq(by.none, nil, "a job without an ingestion record")
  t.ok((by.succeeded or 0) >= 1, "no job entered the archive")
  t.eq((by.succeeded or 0) + (by.skipped or 0), TOTAL, "failed ingestions")
  local cells = scalar("SELECT count(*) FROM loreley_archive_cells")
  t.ok(cells >= 2, "archive did not grow: " .. tostring(cells))
  -- the reducer history holds the root and every ingested commit
  t.eq(scalar("SELECT count(*) FROM loreley_reducer_history"), TOTAL + 1)
end)

t.case("rows made by this host are what Loreley's worker expects (§1.4, §1.5, §11)", function()
  local rows = assert(conn:query([[SELECT id::text AS id, status::text AS status, base_commit_hash,
    island_id, experiment_id::text AS eid, inspiration_commit_hashes AS insp, payload, priority,
    scheduled_at FROM evolution_jobs ORDER BY created_at LIMIT 3]]))
  t.ok(#rows == 3)
  for _, r in ipairs(rows) do
    t.match(r.id, "^%x+%-%x+%-4%x+%-[89ab]%x+%-%x+$", "uuid4 id")
    t.match(r.base_commit_hash, "^%x+$")
    t.eq(#r.base_commit_hash, 40)
    t.eq(r.island_id, "main")
    t.ok(r.eid ~= db.null)
    t.eq(r.priority, 0)
    t.ok(r.scheduled_at ~= db.null)
    local p = r.payload
    t.eq(p.island_id, "main")
    t.same(p.grid.shape, { 12, 12, 12, 12 })
    t.same(p.grid.feature_bounds.lower, { -0.5, -0.5, -0.5, -0.5 })
    t.eq(p.sampling.requested_inspirations, 3)
    t.eq(p.sampling.selection.initial_radius, 1)
    t.eq(p.sampling.selection.max_radius, 3)
    t.ok(type(p.sampling.selection.radius_used) == "number")
    t.eq(p.base.commit_hash, r.base_commit_hash)
    t.ok(type(p.base.cell_index) == "number" and type(p.base.fitness) == "number")
    t.match(p.base.timestamp, "^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d[%.%d]*%+00:00$")
    t.eq(#p.base.measures, 4)
    t.same(p.base.solution, p.base.measures)
    t.eq(#r.insp, #p.inspirations)
    for i, rec in ipairs(p.inspirations) do t.eq(rec.commit_hash, r.insp[i]) end
    -- the base commit has its commits row (foreign key) and the result was written
    t.eq(scalar("SELECT count(*) FROM commits WHERE commit_hash = $1", r.base_commit_hash), 1)
    t.match(p.result.commit_hash, "^%x+$")
    t.ok(#p.result.metrics >= 1)
  end
  -- the worker's own rows: one commits row and metrics per job
  t.eq(scalar("SELECT count(*) FROM commits WHERE author = 'Loreley Worker'"), TOTAL)
  t.eq(scalar("SELECT count(DISTINCT commit_hash) FROM metrics WHERE name = 'composite_score'"), TOTAL)
end)

t.case("a host restarted mid-run resumes with the same archive and reducer", function()
  local before = assert(conn:query([[SELECT cell_index, commit_hash, objective, threshold
    FROM loreley_archive_cells ORDER BY cell_index]]))
  local history_before = scalar("SELECT count(*) FROM loreley_reducer_history")
  -- More jobs: raise the cap; the host must load the archive, not bootstrap again.
  local env2 = setup.environment(stack, { SCHEDULER_MAX_TOTAL_JOBS = tostring(TOTAL + 8) })
  local log = dir .. "/host2.log"
  local pid = setup.spawn_host(t.host_binary, env2, POLICY, log)
  t.ok(t.wait_for(60, function() return (t.read(log) or ""):find("Scheduler online") end),
    "host 2 did not start")
  local text = t.read(log)
  t.match(text, ("island main: %d elites, reducer history %d"):format(#before, history_before))
  t.no_match(text, "bootstrap: root commit")
  -- The archive in the database is unchanged by the restart itself.
  local after = assert(conn:query([[SELECT cell_index, commit_hash, objective, threshold
    FROM loreley_archive_cells ORDER BY cell_index]]))
  t.same(after, before)
  start_workers(env2, 2)
  local status = wait_exit(pid, 240, log)
  stop_workers()
  t.eq(status.code, 0)
  t.eq(scalar("SELECT count(*) FROM evolution_jobs"), TOTAL + 8)
  t.eq(scalar([[SELECT count(*) FROM evolution_jobs
    WHERE payload->'ingestion'->'map_elites'->>'status' IS NULL]]), 0)
  -- every cell that existed is still occupied, by an equal or better elite
  for _, r in ipairs(before) do
    local obj = scalar([[SELECT objective FROM loreley_archive_cells WHERE cell_index = $1]], r.cell_index)
    t.ok(obj and obj >= r.objective, "cell lost or worsened: " .. r.cell_index)
  end
end)

t.case("two hosts on one experiment never both schedule", function()
  local env3 = setup.environment(stack, { SCHEDULER_MAX_TOTAL_JOBS = tostring(TOTAL + 12) })
  local log_a, log_b = dir .. "/lead_a.log", dir .. "/lead_b.log"
  local a = setup.spawn_host(t.host_binary, env3, POLICY, log_a)
  t.ok(t.wait_for(60, function() return (t.read(log_a) or ""):find("Scheduler online") end))
  local b = setup.spawn_host(t.host_binary, env3, POLICY, log_b)
  t.ok(t.wait_for(60, function()
    return (t.read(log_b) or ""):find("another scheduler leads experiment")
  end), "second host did not wait")
  host.sleep(2)
  t.no_match(t.read(log_b), "Scheduler online", "second host started scheduling")
  t.no_match(t.read(log_b), "tick %d+ ingested", "second host ticked")
  -- The leader dies; the follower takes over.
  sys.kill(a, "KILL")
  sys.wait(a, 10)
  t.ok(t.wait_for(60, function() return (t.read(log_b) or ""):find("took over as the scheduler") end),
    "follower did not take over")
  start_workers(env3, 2)
  local status = wait_exit(b, 240, log_b)
  stop_workers()
  t.eq(status.code, 0)
  t.eq(scalar("SELECT count(*) FROM evolution_jobs"), TOTAL + 12)
end)

stop_workers()
conn:close()
t.finish()
