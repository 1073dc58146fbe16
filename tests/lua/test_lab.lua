-- ctest: labels=pg;redis timeout=900
-- The policy lab end to end, on real PostgreSQL and Redis (its own private servers):
-- a seed repeats a run byte for byte (outputs and database), the simulated workers
-- write the rows Loreley's worker writes, simulated time drives the stages (poll
-- interval, latencies, the recovery stage's age tests), every example policy runs,
-- and runs that cannot finish say why.
local t = require "support.t"
local sys = require "loreley.sys"
local db = require "loreley.db"
local json = require "loreley.json"
local localstack = require "loreley.localstack"
local series = require "loreley.lab.series"
local clock = require "loreley.lab.clock"

local dir = t.tmpdir()
local WORK = dir .. "/servers"   -- one data directory for every run here: initdb once
local POLICY = t.source_dir .. "/examples/policy.lua"
local FIXTURES = t.fixtures .. "/lab"

local function simulate(args, timeout)
  local argv = { "--simulate", "--work-dir", WORK, "--no-progress" }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return t.run_host(argv, { timeout = timeout or 300, env = { LORELEY_LUA_DIR = false } })
end

local function ok_run(r, what)
  t.eq(r.code, 0, ("%s: exit code; stderr:\n%s\nstdout:\n%s"):format(what, r.stderr:sub(-3000),
    r.stdout:sub(-1500)))
end

-- Starts the private PostgreSQL the lab left behind, runs fn(conn) on a kept database.
local function with_database(name, fn)
  local pg = assert(localstack.postgres { dir = WORK .. "/postgres" })
  local conn = assert(db.connect((pg.url:gsub("/loreley$", "/" .. name))))
  local ok, err = pcall(fn, conn)
  conn:close()
  pg:stop()
  if not ok then error(err, 0) end
end

-- Every row of every table a run writes, as text.
local DUMP = {
  [[SELECT id::text AS id, status::text AS status, base_commit_hash, island_id,
    experiment_id::text AS e, inspiration_commit_hashes::text AS insp, payload::text AS payload,
    plan_summary, priority, scheduled_at::text AS sa, started_at::text AS st,
    completed_at::text AS ca, last_error, created_at::text AS cr, updated_at::text AS up
    FROM evolution_jobs ORDER BY created_at, id]],
  [[SELECT id::text AS id, commit_hash, parent_commit_hash, island_id, author, message,
    evaluation_summary, extra_context::text AS x, created_at::text AS cr FROM commits
    ORDER BY commit_hash]],
  [[SELECT id::text AS id, commit_hash, name, value, higher_is_better, created_at::text AS cr
    FROM metrics ORDER BY id]],
  [[SELECT island_id, cell_index, commit_hash, objective, threshold, measures::text AS m,
    solution::text AS s, metadata, added_at FROM loreley_archive_cells ORDER BY island_id, cell_index]],
  [[SELECT job_id::text AS j, attempts, last_sent_at::text AS l, redis_message_id
    FROM loreley_dispatch ORDER BY job_id]],
  [[SELECT id::text AS id, name, config_hash, config_snapshot::text AS c FROM experiments]],
  [[SELECT island_id, seq, commit_hash FROM loreley_reducer_history ORDER BY island_id, seq]],
}

local function dump(conn)
  local out = {}
  for _, sql in ipairs(DUMP) do
    for _, row in ipairs(assert(conn:query(sql))) do
      local keys = {}
      for k in pairs(row) do keys[#keys + 1] = k end
      table.sort(keys)
      local parts = {}
      for i, k in ipairs(keys) do parts[i] = k .. "=" .. tostring(row[k]) end
      out[#out + 1] = table.concat(parts, "|")
    end
    out[#out + 1] = "--"
  end
  return table.concat(out, "\n")
end

local function csv_rows(path)
  return assert(series.parse_csv(assert(t.read(path), "missing " .. path)))
end

local RUN = { "--landscape", "deceptive", "--jobs", "300", "--fail-rate", "0.05",
  "--seed", "1", "--keep-databases" }

local first = {}

t.case("the same seed gives the same run: outputs and database byte for byte", function()
  local files = { "policy-seed1.csv", "policy-seed1.svg", "policy-seed1-archive.svg",
    "policy-seed1.json" }
  local dumps = {}
  for i = 1, 2 do
    local args = { "--out", ("%s/same%d"):format(dir, i) }
    for _, a in ipairs(RUN) do args[#args + 1] = a end
    args[#args + 1] = POLICY
    local r = simulate(args)
    ok_run(r, "run " .. i)
    t.match(r.stdout, "policy seed 1: 300/300 jobs, qd_score [%d.]+")
    with_database("lab_policy_1", function(conn) dumps[i] = dump(conn) end)
  end
  for _, f in ipairs(files) do
    local a, b = t.read(dir .. "/same1/" .. f), t.read(dir .. "/same2/" .. f)
    t.ok(a and #a > 100, "missing or empty " .. f)
    t.ok(a == b, f .. " differs between two runs with one seed")
  end
  t.ok(#dumps[1] > 10000, "the database dump is too small")
  t.ok(dumps[1] == dumps[2], "the databases of two runs with one seed differ")
  first.csv = t.read(dir .. "/same1/policy-seed1.csv")
  local rows = csv_rows(dir .. "/same1/policy-seed1.csv")
  t.eq(rows[1].jobs, 0)
  t.eq(rows[1].archive_size, 1, "the bootstrap elite")
  t.eq(rows[#rows].jobs, 300)
  t.eq(rows[2].jobs, 6, "a row every jobs/50 = 6 jobs")
  for i = 2, #rows do
    t.ok(rows[i].qd_score >= rows[i - 1].qd_score, "QD score went down at row " .. i)
    t.ok(rows[i].sim_seconds >= rows[i - 1].sim_seconds)
  end
  local summary = assert(json.decode(t.read(dir .. "/same1/policy-seed1.json")))
  t.eq(summary.complete, true)
  t.eq(summary.jobs_done, 300)
  first.summary = summary
end)

t.case("the simulated workers write the rows Loreley's worker writes", function()
  with_database("lab_policy_1", function(conn)
    local function scalar(sql, ...)
      local row = assert(conn:query(sql, ...))[1]
      for _, v in pairs(row) do return v end
    end
    local succeeded = scalar("SELECT count(*) FROM evolution_jobs WHERE status = 'SUCCEEDED'")
    local failed = scalar("SELECT count(*) FROM evolution_jobs WHERE status = 'FAILED'")
    t.eq(succeeded + failed, 300, "every job finished")
    t.ok(failed >= 5 and failed <= 30, "fail rate 0.05 gave " .. failed .. " failures of 300")
    t.eq(first.summary.workers.succeeded, succeeded)
    t.eq(first.summary.workers.failed, failed)
    -- success: payload.result, the commits row (parent = the base) and the metrics row
    local jobs = assert(conn:query([[SELECT id::text AS id, base_commit_hash AS base,
      payload->'result' AS result, started_at, completed_at, plan_summary
      FROM evolution_jobs WHERE status = 'SUCCEEDED']]))
    for _, j in ipairs(jobs) do
      local hash = j.result.commit_hash
      t.match(hash, "^%x+$")
      t.eq(#hash, 40)
      t.eq(j.result.metrics[1].name, "composite_score")
      t.eq(type(j.result.metrics[1].value), "number")
      t.ok(j.plan_summary ~= db.null)
      t.ok(j.completed_at > j.started_at)
      t.ok(j.started_at >= clock.EPOCH and j.completed_at < clock.EPOCH + 86400 * 30,
        "timestamps are simulated time")
      local c = assert(conn:query("SELECT parent_commit_hash AS p, author FROM commits WHERE commit_hash = $1", hash))[1]
      t.eq(c.p, j.base)
      t.eq(c.author, "Loreley Worker")
      local m = assert(conn:query("SELECT value FROM metrics WHERE commit_hash = $1 AND name = 'composite_score'", hash))[1]
      t.eq(m.value, j.result.metrics[1].value)
    end
    t.eq(scalar([[SELECT count(*) FROM evolution_jobs WHERE status = 'FAILED'
      AND last_error = 'evaluation failed (simulated failure)' AND completed_at IS NOT NULL]]), failed)
    -- every succeeded job was ingested (part C), and the archive holds what the CSV says
    t.eq(scalar([[SELECT count(*) FROM evolution_jobs WHERE status = 'SUCCEEDED'
      AND payload->'ingestion'->'map_elites'->>'status' IN ('succeeded', 'skipped')]]), succeeded)
    local rows = csv_rows(dir .. "/same1/policy-seed1.csv")
    t.eq(scalar("SELECT count(*) FROM loreley_archive_cells"), rows[#rows].archive_size)
    t.near(scalar("SELECT sum(objective) FROM loreley_archive_cells"), rows[#rows].qd_score, 1e-6)
  end)
end)

t.case("simulated time: poll interval, tick delays and latencies, not the wall clock", function()
  -- One worker, jobs of exactly 100 s, a 30 s poll interval, 3 jobs, and a landscape
  -- whose every child lands in a new cell (so every ingest makes a record). The default
  -- policy ticks at 0 (2 jobs), 0.05 (1 job), 0.1, then every 30 s, and 0.05 s after
  -- each tick that did something; the jobs run 0-100, 100-200 and 200-300, are ingested
  -- at 120.1, 210.15 and 300.2, and the last tick stops the run.
  local landscape = t.write(dir .. "/spread.lua", [[
return {
  dims = 1, cells = 1000,
  root = function() return { 0.5 } end,
  vary = function(base, inspirations, rng) return { rng:random() } end,
  evaluate = function(g) return 1, { g[1] } end,
}
]])
  local out = dir .. "/clock"
  local r = simulate { "--jobs", "3", "--workers", "1", "--latency", "fixed:100",
    "--landscape", landscape, "--set", "SCHEDULER_POLL_INTERVAL_SECONDS=30",
    "--keep-databases", "--out", out, POLICY }
  ok_run(r, "clock run")
  local summary = assert(json.decode(t.read(out .. "/policy-seed1.json")))
  t.near(summary.sim_seconds, 300.2, 1e-6)
  t.eq(summary.ticks, 15)
  t.eq(summary.stop_reason, "finished")
  local rows = csv_rows(out .. "/policy-seed1.csv")
  t.eq(rows[#rows].archive_size, 4, "root + 3 children in new cells")
  with_database("lab_policy_1", function(conn)
    local jobs = assert(conn:query([[SELECT extract(epoch FROM created_at)::float8 AS c,
      extract(epoch FROM started_at)::float8 AS s, extract(epoch FROM completed_at)::float8 AS d,
      payload->'ingestion'->'map_elites'->>'last_attempt_at' AS i
      FROM evolution_jobs ORDER BY started_at]]))
    t.eq(#jobs, 3)
    local want = { { 0, 0, 100, "00:02:00.100000" }, { 0, 100, 200, "00:03:30.150000" },
      { 0.05, 200, 300, "00:05:00.200000" } }
    for i, w in ipairs(want) do
      t.near(jobs[i].c - clock.EPOCH, w[1], 1e-5, "created_at of job " .. i)
      t.near(jobs[i].s - clock.EPOCH, w[2], 1e-5, "started_at of job " .. i)
      t.near(jobs[i].d - clock.EPOCH, w[3], 1e-5, "completed_at of job " .. i)
      t.eq(jobs[i].i, "2025-01-01T" .. w[4] .. "+00:00", "ingestion time of job " .. i)
    end
  end)
end)

t.case("the recovery stage ages jobs in simulated time", function()
  -- A 100 s worker time limit (+10 s grace) and jobs of 500 s: the scheduler marks the
  -- running job FAILED after 110 simulated seconds, although the run takes about a second.
  local r = simulate { "--jobs", "2", "--workers", "1", "--latency", "fixed:500",
    "--set", "TASKS_WORKER_TIME_LIMIT_SECONDS=100", "--set", "LORELEY_RECOVERY_GRACE_SECONDS=10",
    "--out", dir .. "/overdue", POLICY }
  ok_run(r, "overdue run")
  t.match(r.stderr, "job %x+%-[%x-]+ was RUNNING past its time limit: marked FAILED")
  local summary = assert(json.decode(t.read(dir .. "/overdue/policy-seed1.json")))
  t.eq(summary.stop_reason, "finished")
  t.ok(summary.sim_seconds > 110 and summary.sim_seconds < 1000, tostring(summary.sim_seconds))
end)

t.case("every example policy runs in the lab, and repeats with the same seed", function()
  local listing = assert(sys.run { "sh", "-c", "ls " .. t.source_dir .. "/examples/policy*.lua" })
  local policies = {}
  for path in listing.stdout:gmatch("[^\n]+") do policies[#policies + 1] = path end
  t.ok(#policies >= 1, "no examples/policy*.lua found")
  for _, path in ipairs(policies) do
    local name = path:match("([^/]+)%.lua$")
    local csv = {}
    for i = 1, 2 do
      local out = ("%s/examples%d"):format(dir, i)
      local r = simulate { "--jobs", "40", "--workers", "3", "--out", out, path }
      ok_run(r, path)
      csv[i] = t.read(("%s/%s-seed1.csv"):format(out, name))
    end
    local rows = assert(series.parse_csv(csv[1]))
    t.eq(rows[#rows].jobs, 40, path)
    t.ok(rows[#rows].archive_size >= 2, path .. ": the archive did not grow")
    t.ok(csv[1] == csv[2], path .. ": two runs with one seed differ")
  end
end)

t.case("a policy requires the files beside it and gets its arguments, as under the host", function()
  local r = simulate { "--jobs", "12", "--out", dir .. "/sibling",
    FIXTURES .. "/sibling/policy_sibling.lua", "--", "--tag", "sibling" }
  ok_run(r, "sibling policy")
  t.match(r.stdout, "policy_sibling seed 1: 12/12 jobs")
end)

t.case("a policy that never schedules is reported as stalled (exit 1)", function()
  local r = simulate { "--jobs", "10", "--out", dir .. "/idle", FIXTURES .. "/policy_idle.lua" }
  t.eq(r.code, 1, r.stderr)
  t.match(r.stderr, "policy_idle seed 1 stopped before its budget %(stalled%): nothing happened "
    .. "for 100 ticks and no job is in flight %(0 of 10 jobs done%)")
  local rows = csv_rows(dir .. "/idle/policy_idle-seed1.csv")
  t.eq(rows[#rows].jobs, 0)
end)

t.case("a tick that raises is logged like the host does; a run of them ends the run", function()
  local r = simulate { "--jobs", "10", "--out", dir .. "/raises", FIXTURES .. "/policy_raises.lua" }
  t.eq(r.code, 1)
  t.match(r.stderr, "tick 1 failed: [^\n]*policy_raises%.lua:8: policy bug on tick 1")
  t.match(r.stderr, "20 ticks in a row failed; the last: [^\n]*policy bug on tick 20")
end)

t.finish()
