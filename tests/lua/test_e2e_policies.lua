-- ctest: labels=e2e;pg;redis;git timeout=600
-- Every alternative example policy runs ticks end to end (real PostgreSQL, Redis, git,
-- example workers) and stops at SCHEDULER_MAX_TOTAL_JOBS with every job ingested. Each
-- policy gets its own experiment (a different MAPELITES_SAMPLER_DEFAULT_PRIORITY changes
-- the experiment's config hash).
local t = require "support.t"
local sys = require "loreley.sys"
local db = require "loreley.db"

package.path = t.source_dir .. "/examples/?.lua;" .. package.path
local setup = require "demo_setup"

local dir = t.tmpdir()
local stack = setup.start(dir .. "/stack")
local conn = assert(db.connect(stack.pg.url))
local TOTAL = 10

local function run_policy(name, priority, args)
  local env = setup.environment(stack, { SCHEDULER_MAX_TOTAL_JOBS = tostring(TOTAL),
    MAPELITES_SAMPLER_DEFAULT_PRIORITY = tostring(priority) })
  local workers = {}
  for i = 1, 2 do
    workers[i] = setup.spawn_worker(t.host_binary, env, { "--id", name .. i }, dir .. "/" .. name .. "-w" .. i .. ".log")
  end
  local log = dir .. "/" .. name .. ".log"
  local argv = { t.host_binary, t.source_dir .. "/examples/" .. name .. ".lua", "--" }
  for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
  local pid = assert(sys.spawn(argv, { env = env, stdout = log, stderr = "stdout" }))
  local status = sys.wait(pid, 180)
  for _, w in ipairs(workers) do sys.kill(w, "TERM") end
  for _, w in ipairs(workers) do sys.wait(w, 10) end
  if not status then sys.kill(pid, "KILL") sys.wait(pid, 5) end
  local text = t.read(log) or ""
  t.ok(status and status.code == 0, name .. " did not finish cleanly:\n" .. text:sub(-2500))
  local exp = assert(conn:query([[SELECT e.id::text AS id FROM experiments e
    WHERE e.config_snapshot->>'mapelites_sampler_default_priority' = $1]], tostring(priority)))[1].id
  local jobs = assert(conn:query([[SELECT count(*) AS n,
    count(*) FILTER (WHERE payload->'ingestion'->'map_elites'->>'status' IN ('succeeded','skipped')) AS ingested
    FROM evolution_jobs WHERE experiment_id = $1]], exp))[1]
  t.eq(jobs.n, TOTAL, name .. ": jobs")
  t.eq(jobs.ingested, TOTAL, name .. ": ingested jobs")
  return exp, text
end

t.case("policy_fitness: softmax parents", function()
  local _, text = run_policy("policy_fitness", 1, { "0.05", "16" })
  t.match(text, "tick %d+ ingested=")
end)

t.case("policy_curiosity: least-used parents", function()
  local exp = run_policy("policy_curiosity", 2, { "8" })
  -- With 10 jobs and several elites, no single parent can have taken every job.
  local top = assert(conn:query([[SELECT count(*) AS n FROM evolution_jobs WHERE experiment_id = $1
    GROUP BY base_commit_hash ORDER BY 1 DESC LIMIT 1]], exp))[1].n
  t.ok(top < TOTAL, "one parent got every job")
end)

t.case("policy_islands: three islands with migration", function()
  local exp, text = run_policy("policy_islands", 3, { "3", "2" })
  t.match(text, "migrated %x+ %(fitness [%-%d%.]+%) into island island%-2")
  local islands = assert(conn:query([[SELECT island_id, count(*) AS n FROM loreley_archive_cells
    WHERE experiment_id = $1 GROUP BY island_id ORDER BY island_id]], exp))
  t.eq(#islands, 3, "islands with elites")
  local scheduled = assert(conn:query([[SELECT count(DISTINCT island_id) AS n FROM evolution_jobs
    WHERE experiment_id = $1]], exp))[1].n
  t.eq(scheduled, 3, "jobs went to every island")
end)

conn:close()
t.finish()
