-- bench/db.lua: the job-store calls a tick makes, with 100,000 jobs in evolution_jobs.
--
--   build/loreley-host --once bench/db.lua            (BENCH_JOBS=100000 BENCH_ITER=300)
--
-- Starts a private PostgreSQL 15 (loreley.localstack, loopback, fsync off like the tests),
-- applies the migrations, fills evolution_jobs with BENCH_JOBS rows shaped like a long
-- run (two experiments; mostly succeeded-and-ingested jobs with part A + result +
-- ingestion payloads; some failed; a few pending, queued, running and not yet ingested),
-- then times each call BENCH_ITER times and prints median and p90 in milliseconds. The
-- reference's own queries (no experiment filter, no partial index) are timed for
-- comparison. Figures: bench/db.md.
local db = require "loreley.db"
local host = require "loreley.host"
local localstack = require "loreley.localstack"
local schema = require "loreley.schema"
local settings = require "loreley.settings"
local experiment = require "loreley.experiment"
local jobstore = require "loreley.jobstore"
local sys = require "loreley.sys"

local JOBS = tonumber(os.getenv("BENCH_JOBS") or "") or 100000
local ITER = tonumber(os.getenv("BENCH_ITER") or "") or 300

local dir = assert(sys.mkdtemp("/tmp/loreley-bench-db-"))
sys.run { "chmod", "755", dir }
local pg = assert(localstack.postgres { dir = dir .. "/pg" })
local conn = assert(db.connect(pg.url))
assert(schema.migrate(conn))

local s = assert(settings.load { dotenv = false, env = {} })
local exp = assert(experiment.setup(conn, { root = "/srv/bench", remotes = {}, settings = s }))
local repo = assert(conn:query("SELECT id::text AS id, slug FROM repositories"))[1]
local other = assert(experiment.get_or_create_experiment(conn, repo,
  assert(settings.load { dotenv = false, env = { MAPELITES_ARCHIVE_CELLS_PER_DIM = "16" } })))
local store = jobstore.new(conn, exp.id)
local seed = ("%040x"):format(1)
assert(store:insert_commit { commit_hash = seed, island_id = "main" })

-- --- fill ----------------------------------------------------------------------------------
local t0 = host.now()
local PART_A = [[{"island_id":"main","grid":{"shape":[32,32,32,32],"feature_bounds":{"lower":[-6.0,-6.0,-6.0,-6.0],"upper":[6.0,6.0,6.0,6.0]}},"sampling":{"requested_inspirations":3,"selection":{"initial_radius":1,"max_radius":3,"radius_used":1,"fallback_inspirations":0}},"base":{"commit_hash":"0000000000000000000000000000000000000001","cell_index":540000,"fitness":0.5,"timestamp":"2025-11-29T10:41:48.123456+00:00","measures":[0.1,0.2,-0.3,0.4]},"inspirations":[{"commit_hash":"0000000000000000000000000000000000000001","cell_index":540001,"fitness":0.4,"timestamp":"2025-11-29T10:41:48.123456+00:00","measures":[0.1,0.2,-0.3,0.5]}]}]]
-- status by i % 1000: 0..9 PENDING, 10 QUEUED, 11 RUNNING, 12..13 SUCCEEDED not ingested,
-- 14..40 FAILED, else SUCCEEDED and ingested; every 10th job belongs to the other experiment.
assert(conn:exec([[
INSERT INTO evolution_jobs (id, status, base_commit_hash, island_id, experiment_id,
  inspiration_commit_hashes, payload, priority, scheduled_at, started_at, completed_at,
  created_at, updated_at)
SELECT gen_random_uuid(),
  (CASE WHEN i % 1000 < 10 THEN 'PENDING' WHEN i % 1000 = 10 THEN 'QUEUED'
        WHEN i % 1000 = 11 THEN 'RUNNING' WHEN i % 1000 BETWEEN 14 AND 40 THEN 'FAILED'
        ELSE 'SUCCEEDED' END)::job_status,
  $1, 'main', CASE WHEN i % 10 = 0 THEN $3::uuid ELSE $2::uuid END,
  ARRAY[$1]::varchar(64)[],
  CASE WHEN i % 1000 < 12 OR i % 1000 BETWEEN 14 AND 40 THEN $4::jsonb
       WHEN i % 1000 < 14 THEN $4::jsonb || jsonb_build_object('result', jsonb_build_object(
         'commit_hash', lpad(to_hex(i), 40, '0'), 'plan_summary', 'p', 'metrics',
         jsonb_build_array(jsonb_build_object('name', 'composite_score', 'value', 0.5))))
       ELSE $4::jsonb || jsonb_build_object('result', jsonb_build_object(
         'commit_hash', lpad(to_hex(i), 40, '0'), 'plan_summary', 'p', 'metrics',
         jsonb_build_array(jsonb_build_object('name', 'composite_score', 'value', 0.5))),
         'ingestion', jsonb_build_object('map_elites', jsonb_build_object('attempts', 1,
           'status', 'succeeded', 'last_attempt_at', '2025-11-29T10:41:48+00:00',
           'delta', 0.1, 'status_code', 2)))
  END,
  (i % 7), now() - make_interval(secs => $5 - i), now() - make_interval(secs => $5 - i),
  CASE WHEN i % 1000 >= 12 THEN now() - make_interval(secs => $5 - i) END,
  now() - make_interval(secs => $5 - i), now() - make_interval(secs => $5 - i)
FROM generate_series(1, $5) AS i]], seed, exp.id, other.id, PART_A, JOBS))
assert(conn:script("VACUUM ANALYZE"))   -- as autovacuum leaves a long-lived table
local fill = host.now() - t0
local counts = assert(conn:query([[SELECT count(*) AS n, count(*) FILTER (WHERE experiment_id = $1) AS ours,
  count(*) FILTER (WHERE status = 'PENDING') AS pending FROM evolution_jobs]], exp.id))[1]

-- --- timing --------------------------------------------------------------------------------
local function measure(name, fn)
  fn(0)   -- warm up: prepares the statement
  local times = {}
  for i = 1, ITER do
    local a = host.now()
    fn(i)
    times[i] = (host.now() - a) * 1000
  end
  table.sort(times)
  local median = times[math.floor((ITER + 1) / 2)]
  local p90 = times[math.floor(ITER * 0.9)]
  print(("%-44s median %7.3f ms   p90 %7.3f ms"):format(name, median, p90))
  return median
end

local function archive_row(i)
  return { cell = i % 1048576, commit_hash = seed, objective = i * 0.001, threshold = 0.5,
    measures = { 0.1, -0.2, 0.3, i * 1e-6 }, metadata = '{"summary":"s"}', timestamp = 1764412908 + i }
end

print(("loreley-host %s, PostgreSQL %d, %d jobs (%d in the experiment, %d pending), fill %.1f s, %d iterations")
  :format(host.version, conn:info().server_version, counts.n, counts.ours, counts.pending, fill, ITER))
print("job store (scoped to the experiment):")
local results = {}
results.count = measure("count_unfinished()", function() assert(store:count_unfinished()) end)
results.claim = measure("claim_pending(4)  [fetch + mark QUEUED]", function()
  assert(store:claim_pending(4))
end)
results.scan = measure("find_ingestable(2)", function() assert(store:find_ingestable(2)) end)
local pending_ingest = assert(store:find_ingestable(1000))
local created = {}
results.create = measure("create_job(part A, 3 inspirations)", function(i)
  local base = archive_row(i)
  local job = assert(store:create_job { island_id = "main", base = base,
    inspirations = { archive_row(i + 1), archive_row(i + 2), archive_row(i + 3) },
    grid = { shape = { 32, 32, 32, 32 }, lower = { -6, -6, -6, -6 }, upper = { 6, 6, 6, 6 } },
    sampling = { requested_inspirations = 3, initial_radius = 1, max_radius = 3, radius_used = 1,
      fallback_inspirations = 0 } })
  created[#created + 1] = job.id
end)
results.record = measure("record_ingestion(failed, with record)", function(i)
  local cand = pending_ingest[i % #pending_ingest + 1]
  assert(store:record_ingestion(cand.id, { status = "failed", reason = "bench", delta = 0.5,
    status_code = 0, record = { commit_hash = seed, cell_index = i, fitness = 0.5,
      island_id = "main", timestamp = 1764412908.5 } }))
end)
results.cell = measure("upsert_cell()", function(i) assert(store:upsert_cell("main", archive_row(i))) end)
measure("mark_queued({id})", function(i)
  assert(store:mark_queued { created[i % #created + 1] })
end)
measure("count_jobs(1000)  [MAX_TOTAL_JOBS cap 1000]", function() assert(store:count_jobs(1000)) end)
measure("count_jobs()  [every job of the experiment]", function() assert(store:count_jobs()) end)

print("the reference's queries (no experiment filter, no partial index), for comparison:")
measure("ref: count unfinished (all experiments)", function()
  assert(conn:query("SELECT count(id) AS n FROM evolution_jobs WHERE status IN ('PENDING','QUEUED','RUNNING')"))
end)
measure("ref: ingestion window (oldest 32 SUCCEEDED)", function()
  assert(conn:query("SELECT * FROM evolution_jobs WHERE status = 'SUCCEEDED' ORDER BY completed_at ASC LIMIT 32"))
end)
assert(conn:exec("DROP INDEX ix_loreley_jobs_to_ingest"))
measure("find_ingestable(2) without ix_loreley_jobs_to_ingest", function()
  assert(store:find_ingestable(2))
end)

local ok = true
for _, k in ipairs { "count", "claim", "scan", "create", "record", "cell" } do
  if results[k] > 1.0 then ok = false end
end
print(ok and "every per-tick call <= 1 ms median" or "SOME CALL EXCEEDS 1 ms median")
conn:close()
pg:destroy()
sys.run { "rm", "-rf", dir }
