-- ctest: labels=pg timeout=240
-- loreley.schema, loreley.experiment (database part) and loreley.jobstore against a real
-- PostgreSQL 15: migrations (twice, concurrently, --init-db end to end), rows written
-- exactly the way Loreley's worker writes them (§1.4: start, success, failure) and read
-- back by the job store, the worker's start preconditions (§11) on rows this store
-- creates, malformed rows, experiment scoping, archive cells, reducer state, SQL
-- injection through every string parameter, and a server restart in the middle.
local t = require "support.t"
local db = require "loreley.db"
local localstack = require "loreley.localstack"
local settings = require "loreley.settings"
local schema = require "loreley.schema"
local experiment = require "loreley.experiment"
local jobstore = require "loreley.jobstore"
local host = require "loreley.host"
local sys = require "loreley.sys"
local cjson = require "cjson"

local dir = t.tmpdir()
local pg = assert(localstack.postgres { dir = dir .. "/pg" })
local url = pg.url:gsub("^postgresql://", "postgresql+psycopg://")
local conn = assert(db.connect(url))
local worker = assert(db.connect(url))   -- plays Loreley's Python worker

local function q(c, sql, ...)
  local rows, err, code = c:query(sql, ...)
  if not rows then error(("query failed: %s [%s]\n%s"):format(err, tostring(code), sql), 2) end
  return rows
end

local function hash(n) return ("%040x"):format(n) end

-- --- schema ------------------------------------------------------------------------------

t.case("migrations: applied once, idempotent, contract DDL as the ORM makes it", function()
  local first = assert(schema.migrate(conn))
  t.eq(first.version, 4)
  t.same(first.applied, { "001_contract.sql", "002_job_indexes.sql", "003_host_tables.sql",
    "004_control_log.sql" })
  local second = assert(schema.migrate(conn))
  t.eq(#second.applied, 0, "nothing applied the second time")
  local st = assert(schema.status(conn))
  t.eq(st.version, 4); t.eq(#st.pending, 0)
  -- the migration statements themselves are idempotent too (a database created by hand)
  for _, m in ipairs(schema.MIGRATIONS) do assert(conn:script(schema.sql(m))) end
  local labels = {}
  for _, r in ipairs(q(conn, [[SELECT enumlabel FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid
                               WHERE t.typname = 'job_status' ORDER BY e.enumsortorder]])) do
    labels[#labels + 1] = r.enumlabel
  end
  t.same(labels, { "PENDING", "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED" })
  -- only created_at/updated_at have server defaults on the contract tables
  local defaults = q(conn, [[SELECT table_name || '.' || column_name AS col FROM information_schema.columns
    WHERE table_schema = current_schema() AND column_default IS NOT NULL
      AND table_name IN ('repositories','experiments','commits','metrics','evolution_jobs','map_elites_states')
    ORDER BY 1]])
  t.eq(#defaults, 12, "created_at and updated_at of six tables")
  for _, r in ipairs(defaults) do
    t.ok(r.col:match("%.created_at$") or r.col:match("%.updated_at$"), r.col)
  end
  local names = {}
  for _, r in ipairs(q(conn, "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")) do
    names[r.indexname] = true
  end
  for _, n in ipairs { "ix_repositories_slug", "ix_experiments_repository_id",
      "ix_experiments_config_hash", "ix_commits_commit_hash", "ix_commits_experiment_id",
      "ix_commits_island_id", "ix_commits_parent_hash", "ix_metrics_commit_hash",
      "ix_evolution_jobs_status", "ix_evolution_jobs_base_commit",
      "ix_evolution_jobs_experiment_id", "uq_repositories_slug", "uq_experiments_repo_config",
      "uq_metric_commit_name", "ix_loreley_jobs_pending", "ix_loreley_jobs_to_ingest",
      "ix_loreley_jobs_unfinished" } do
    t.ok(names[n], "index " .. n)
  end
end)

t.case("--init-db end to end, twice at once on a fresh database; AUTO_MIGRATE off", function()
  assert(conn:exec("CREATE DATABASE fresh"))
  local fresh_url = url:gsub("/loreley$", "/fresh")
  local env = { DATABASE_URL = fresh_url, LOG_FORMAT = false, NO_COLOR = "1" }
  local off = assert(settings.load { dotenv = false, env = { LORELEY_AUTO_MIGRATE = "false" } })
  t.eq(off.loreley_auto_migrate, false)
  local fc = assert(db.connect(fresh_url))
  local res, err = schema.ensure(fc, off)
  t.eq(res, nil); t.match(err, "loreley%-host %-%-init%-db")
  local logs = { dir .. "/a.log", dir .. "/b.log" }
  local pids = {}
  for i = 1, 2 do
    pids[i] = assert(sys.spawn({ t.host_binary, "--init-db" },
      { env = env, stdout = logs[i], stderr = "stdout" }))
  end
  for i = 1, 2 do t.eq(assert(sys.wait(pids[i], 60)).code, 0, t.read(logs[i])) end
  t.eq(q(fc, "SELECT count(*) AS n FROM loreley_schema_migrations")[1].n, 4)
  local text = t.read(logs[1]) .. t.read(logs[2])
  t.match(text, "migrated to version 4")
  t.no_match(text, ":postgres@", "the password is masked")
  t.ok(schema.ensure(fc, off), "nothing pending now")
  local r = t.run_host({ "--init-db" }, { env = { DATABASE_URL = fresh_url } })
  t.eq(r.code, 0); t.match(r.stderr, "up to date %(version 4%)")
  local bad = t.run_host({ "--init-db" }, { env = { DATABASE_URL =
    ("postgresql://postgres:Wr0ngPassw0rd@127.0.0.1:%d/fresh"):format(pg.port) } })
  t.eq(bad.code, 1); t.match(bad.stderr, "password authentication failed")
  t.no_match(bad.stderr, "Wr0ngPassw0rd")
  fc:close()
end)

-- --- experiment rows ---------------------------------------------------------------------

local defaults = assert(settings.load { dotenv = false, env = {} })
local exp, repo

t.case("repository and experiment: get_or_create twice, default settings work", function()
  local remotes = { { name = "origin", url = "git@github.com:Owner/Repo.git" } }
  local e1, r1 = experiment.setup(conn, { root = "/srv/repo", remotes = remotes, settings = defaults })
  t.ok(e1, r1)
  t.eq(r1.created, true); t.eq(e1.created, true)
  t.eq(r1.slug, "github.com/owner/repo")
  t.eq(e1.config_hash, "a213c35b398dca2f3f7d5ee583976e6a5cc4f991f20ad31becd507f49d551db7")
  t.eq(e1.name, "github.com/owner/repo-a213c35b")
  local e2, r2 = experiment.setup(conn, { root = "/elsewhere", remotes = remotes, settings = defaults })
  t.eq(e2.id, e1.id); t.eq(r2.id, r1.id); t.eq(e2.created, false)
  local row = q(conn, [[SELECT config_snapshot -> 'mapelites_archive_threshold_min' AS tmin,
      config_snapshot ->> 'mapelites_archive_learning_rate' AS lr, status, root_path, r.extra
    FROM experiments e JOIN repositories r ON r.id = e.repository_id WHERE e.id = $1]], e1.id)[1]
  t.same(row.tmin, { __float__ = "-inf" })
  t.eq(row.lr, "1.0", "floats keep Python's repr in JSONB")
  t.eq(row.status, "active")
  t.eq(row.root_path, "/srv/repo", "root_path is kept once set")
  t.eq(row.extra.root_path, "/elsewhere", "extra merged, new keys over old")
  t.eq(row.extra.canonical_origin, "ssh://github.com/Owner/Repo.git")
  -- the reference's encoding is refused with a clear message, not a JSONB syntax error
  local bad, berr = experiment.get_or_create_experiment(conn, r1, defaults, { encoding = "331a15c" })
  t.eq(bad, nil); t.match(berr, "JSONB rejects")
  exp, repo = e1, r1
end)

local store = jobstore.new(conn, exp.id)
local other_exp = assert(experiment.get_or_create_experiment(conn, repo,
  assert(settings.load { dotenv = false, env = { MAPELITES_ARCHIVE_CELLS_PER_DIM = "16" } })))
local other = jobstore.new(conn, other_exp.id)
t.ok(other_exp.id ~= exp.id, "a second experiment")

local function archive_row(n, extra)
  local row = { cell = n, commit_hash = hash(n), objective = n + 0.25, threshold = n - 0.5,
    measures = { -6.0, 0.1, 1 / 3, 6.0 }, solution = nil, metadata = nil,
    timestamp = 1764412908.123456 + n }
  for k, v in pairs(extra or {}) do row[k] = v end
  return row
end

local GRID = { shape = { 32, 32, 32, 32 }, lower = { -6, -6, -6, -6 }, upper = { 6, 6, 6, 6 } }

local function new_job(s, base, inspirations, opts)
  opts = opts or {}
  return s:create_job { island_id = opts.island_id or "main", base = base,
    inspirations = inspirations or {}, grid = GRID, priority = opts.priority,
    sampling = { requested_inspirations = 3, initial_radius = 1, max_radius = 3, radius_used = 2,
      fallback_inspirations = 1 }, include_metadata = opts.include_metadata }
end

-- --- the worker, as Loreley 331a15c writes (§1.4, §4.4) ----------------------------------

local function worker_start(id)
  return worker:tx(function(c)
    local rows, err, code = c:query([[SELECT id, status::text AS status, base_commit_hash,
        payload::text AS payload FROM evolution_jobs WHERE id = $1 FOR UPDATE NOWAIT]], id)
    if not rows then return nil, err, code end
    local job = rows[1]
    if job.status ~= "PENDING" and job.status ~= "QUEUED" then return nil, "precondition: " .. job.status end
    if job.base_commit_hash == db.null or job.base_commit_hash == "" then
      return nil, "Evolution job is missing base_commit_hash."
    end
    assert(c:exec([[UPDATE evolution_jobs SET status = 'RUNNING', started_at = now(),
      last_error = NULL, updated_at = now() WHERE id = $1]], id))
    return job.payload
  end)
end

local function worker_succeed(id, payload_at_start, commit, metrics, extra_result)
  local result = { commit_hash = commit, plan_summary = "plan", tests_executed = { "pytest" },
    tests_recommended = db.json_array(), evaluation_summary = "ok", metrics = metrics }
  for k, v in pairs(extra_result or {}) do result[k] = v end
  return worker:tx(function(c)
    assert(c:exec([[UPDATE evolution_jobs SET status = 'SUCCEEDED', completed_at = now(),
        plan_summary = 'plan', payload = $2::jsonb || jsonb_build_object('result', $3::jsonb),
        last_error = NULL, updated_at = now() WHERE id = $1]], id, payload_at_start, result))
    local job = q(c, "SELECT base_commit_hash, island_id, experiment_id::text AS e FROM evolution_jobs WHERE id = $1", id)[1]
    assert(c:exec([[INSERT INTO commits (id, commit_hash, parent_commit_hash, island_id, experiment_id,
        author, message, evaluation_summary, tags, extra_context)
      VALUES ($1, $2, $3, $4, $5, 'Loreley Worker', 'subject', 'ok', '{}', $6::jsonb)]],
      host.uuid4(), commit, job.base_commit_hash, job.island_id, job.e, { job = { id = id } }))
    for _, m in ipairs(metrics) do
      assert(c:exec([[INSERT INTO metrics (id, commit_hash, name, value, unit, higher_is_better, details)
        VALUES ($1, $2, $3, $4, $5, $6, '{}')]], host.uuid4(), commit, m.name, m.value,
        m.unit or db.null, m.higher_is_better ~= false))
    end
    return true
  end)
end

local function worker_fail(id, message)
  return worker:exec([[UPDATE evolution_jobs SET status = 'FAILED', completed_at = now(),
    last_error = $2, updated_at = now() WHERE id = $1 AND status NOT IN ('SUCCEEDED', 'CANCELLED')]],
    id, message)
end

local METRICS = { { name = "composite_score", value = 0.75, unit = db.null, higher_is_better = true,
  details = {} }, { name = "runtime", value = 12, unit = "s", higher_is_better = false, details = {} } }

-- --- jobs --------------------------------------------------------------------------------

local seed = hash(1)

t.case("bootstrap: commits row, seed job, and the foreign key", function()
  local bad, err, code = store:create_seed_job { base_commit_hash = seed, island_id = "main" }
  t.eq(bad, nil); t.eq(code, "23503", err)
  t.eq(store:insert_commit { commit_hash = seed, island_id = "main", author = "Loreley Host",
    message = "root" }, true)
  t.eq(store:insert_commit { commit_hash = seed }, false, "a second insert is a no-op")
  local job = assert(store:create_seed_job { base_commit_hash = seed, island_id = "main" })
  local row = assert(store:job(job.id))
  t.eq(row.status, "PENDING"); t.eq(row.base_commit_hash, seed); t.eq(row.priority, 0)
  t.same(row.payload, {}); t.same(row.inspiration_commit_hashes, {})
  t.ok(row.scheduled_at ~= db.null, "scheduled_at = now")
  local c = q(conn, "SELECT tags, extra_context, experiment_id::text AS e FROM commits WHERE commit_hash = $1", seed)[1]
  t.same(c.tags, {}); t.same(c.extra_context, {}); t.eq(c.e, exp.id)
end)

t.case("create_job writes payload part A exactly", function()
  local base = archive_row(1, { metadata = '{"summary": "root", "metrics": {"a": 1}}',
    solution = { 0.5, -0.25 } })
  local insp = { archive_row(1, { cell = 7, metadata = "{}" }) }
  local job = assert(new_job(store, base, insp, { priority = 3 }))
  local row = q(conn, [[SELECT payload, payload::text AS text, jsonb_typeof(payload -> 'inspirations') AS it,
      inspiration_commit_hashes, priority, island_id, experiment_id::text AS e, status::text AS status
    FROM evolution_jobs WHERE id = $1]], job.id)[1]
  t.eq(row.status, "PENDING"); t.eq(row.priority, 3); t.eq(row.e, exp.id)
  t.same(row.inspiration_commit_hashes, { hash(1) })
  local expected = {
    island_id = "main",
    grid = { shape = { 32, 32, 32, 32 }, feature_bounds = { lower = { -6, -6, -6, -6 }, upper = { 6, 6, 6, 6 } } },
    sampling = { requested_inspirations = 3, selection = { initial_radius = 1, max_radius = 3,
      radius_used = 2, fallback_inspirations = 1 } },
    base = { commit_hash = hash(1), cell_index = 1, fitness = 1.25,
      timestamp = "2025-11-29T10:41:49.123456+00:00", measures = { -6, 0.1, 1 / 3, 6 },
      solution = { 0.5, -0.25 }, metadata = { summary = "root", metrics = { a = 1 } } },
    inspirations = { { commit_hash = hash(1), cell_index = 7, fitness = 1.25,
      timestamp = "2025-11-29T10:41:49.123456+00:00", measures = { -6, 0.1, 1 / 3, 6 } } },
  }
  t.same(row.payload, expected)
  -- Python's json.dumps spelling survives in JSONB: floats keep ".0"
  t.match(row.text, '"lower": %[%-6%.0, %-6%.0, %-6%.0, %-6%.0%]')
  t.match(row.text, '"fitness": 1%.25')
  t.match(row.text, '"shape": %[32, 32, 32, 32%]')
  local none = assert(new_job(store, archive_row(1), {}, { include_metadata = false }))
  local p = q(conn, "SELECT jsonb_typeof(payload -> 'inspirations') AS it, payload -> 'base' ? 'metadata' AS has FROM evolution_jobs WHERE id = $1", none.id)[1]
  t.eq(p.it, "array", "no inspirations is [] not {}")
  t.eq(p.has, false)
  t.raises(function() new_job(store, archive_row(1, { objective = 0 / 0 })) end, "base.objective must be a finite number")
  t.raises(function() new_job(store, archive_row(1, { metadata = "not json" })) end, "base.metadata")
  t.raises(function() store:create_job { island_id = "main" } end, "spec.grid")
end)

t.case("the worker's start preconditions hold on rows this store creates (§11)", function()
  local job = assert(new_job(store, archive_row(1), {}))
  local claimed = assert(store:claim_pending(100))
  local ids = {}
  for _, j in ipairs(claimed) do ids[j.id] = true end
  t.ok(ids[job.id], "claimed")
  -- claim_pending committed: the worker's FOR UPDATE NOWAIT finds no lock (§11.2)
  local payload = assert(worker_start(job.id))
  local row = assert(store:job(job.id))
  t.eq(row.status, "RUNNING")
  t.eq(type(row.payload), "table", "payload is a JSON object (§11.4)")
  t.eq(cjson.decode(payload).island_id, "main")
  t.eq(row.last_error, db.null)
  t.raises(function() conn:tx(function() return store:claim_pending(1) end) end,
    "must not run inside conn:tx")
end)

t.case("claim_pending: contract order, scoped, SKIP LOCKED, committed", function()
  assert(conn:exec("UPDATE evolution_jobs SET status = 'CANCELLED' WHERE status IN ('PENDING','QUEUED','RUNNING')"))
  local a = assert(new_job(store, archive_row(1), {}, { priority = 0 }))
  local b = assert(new_job(store, archive_row(1), {}, { priority = 5 }))
  local c = assert(new_job(store, archive_row(1), {}, { priority = 0 }))
  local d = assert(new_job(store, archive_row(1), {}, { priority = 0 }))
  assert(conn:exec("UPDATE evolution_jobs SET scheduled_at = NULL WHERE id = $1", a.id))
  assert(conn:exec("UPDATE evolution_jobs SET scheduled_at = now() - interval '1 hour' WHERE id = $1", d.id))
  local foreign = assert(new_job(other, archive_row(1), {}, { priority = 9 }))
  t.eq(assert(store:count_unfinished()), 4)
  t.eq(assert(other:count_unfinished()), 1)
  -- the worker (another session) holds d: it is skipped, not waited for
  local got = worker:tx(function(w)
    q(w, "SELECT id FROM evolution_jobs WHERE id = $1 FOR UPDATE", d.id)
    return assert(store:claim_pending(10))
  end)
  local order = {}
  for i, j in ipairs(got) do order[i] = j.id end
  t.same(order, { b.id, c.id, a.id }, "priority DESC, scheduled_at ASC NULLS LAST, created_at ASC")
  local row = assert(store:job(a.id))
  t.eq(row.status, "QUEUED"); t.ok(row.scheduled_at ~= db.null, "scheduled_at filled")
  got = assert(store:claim_pending(10))
  t.eq(#got, 1); t.eq(got[1].id, d.id)
  t.eq(#assert(store:claim_pending(10)), 0)
  t.eq(store:job(foreign.id), false, "another experiment's job is invisible")
  t.eq(assert(other:job(foreign.id)).status, "PENDING")
  local marked = assert(other:mark_queued { foreign.id, a.id })
  t.eq(#marked, 1); t.eq(marked[1].id, foreign.id)
  t.eq(assert(store:count_jobs()) >= 4, true)
  t.eq(assert(store:count_jobs(2)), 2, "counting stops at the cap")
end)

-- --- ingestion ---------------------------------------------------------------------------

local function succeeded_job(s, n, metrics, extra_result)
  local job = assert(new_job(s, archive_row(1), {}))
  assert(s:mark_queued { job.id })
  local payload = assert(worker_start(job.id))
  assert(worker_succeed(job.id, payload, hash(n), metrics or METRICS, extra_result))
  return job
end

t.case("worker success, failure, then find_ingestable and record_ingestion", function()
  local ok_job = succeeded_job(store, 100)
  local failed = assert(new_job(store, archive_row(1), {}))
  assert(worker_start(failed.id))
  t.eq(assert(worker_fail(failed.id, "RuntimeError: tests failed")), 1)
  local foreign = succeeded_job(other, 101)
  local cands = assert(store:find_ingestable(10))
  t.eq(#cands, 1, "only this experiment's succeeded job")
  local c = cands[1]
  t.eq(c.id, ok_job.id); t.eq(c.commit_hash, hash(100)); t.eq(c.malformed, nil)
  t.eq(c.island_id, "main"); t.eq(c.base_commit_hash, hash(1)); t.eq(c.attempts, 0)
  t.eq(#c.metrics, 2); t.eq(c.metrics[1].name, "composite_score"); t.eq(c.metrics[1].value, 0.75)
  t.eq(c.metrics[2].higher_is_better, false)
  t.eq(c.result.plan_summary, "plan"); t.eq(type(c.completed_at), "number")
  t.eq(c.payload.base.commit_hash, hash(1))
  t.eq(#assert(other:find_ingestable(10)), 1)
  -- attempts: failed twice, then succeeded; record given once survives later attempts
  t.eq(assert(store:record_ingestion(c.id, { status = "failed", reason = "git fetch failed",
    record = { commit_hash = hash(100), cell_index = 5, fitness = 0.75, island_id = "main",
      timestamp = 1764412908.5 } })), true)
  t.eq(assert(store:record_ingestion(c.id, { status = "failed", reason = "again", message = "m" })), true)
  -- a concurrent writer adds a key between our read and our write: it survives
  assert(worker:exec([[UPDATE evolution_jobs SET payload = jsonb_set(payload, '{ingestion,other}', '"keep"')
    WHERE id = $1]], c.id))
  t.eq(assert(store:record_ingestion(c.id, { status = "succeeded", delta = 1.0, status_code = 2,
    at = 1764412908 })), true)
  local p = assert(store:job(c.id)).payload
  local state = p.ingestion.map_elites
  t.eq(state.attempts, 3); t.eq(state.status, "succeeded"); t.eq(state.delta, 1)
  t.eq(state.status_code, 2); t.eq(state.reason, nil, "nil drops the key"); t.eq(state.message, nil)
  t.eq(state.last_attempt_at, "2025-11-29T10:41:48+00:00")
  t.same(state.record, { commit_hash = hash(100), cell_index = 5, fitness = 0.75, island_id = "main",
    timestamp = 1764412908.5 })
  t.eq(p.ingestion.other, "keep"); t.eq(p.result.commit_hash, hash(100)); t.eq(p.island_id, "main")
  local text = q(conn, "SELECT payload #>> '{ingestion,map_elites,delta}' AS d FROM evolution_jobs WHERE id = $1", c.id)[1].d
  t.eq(text, "1.0", "delta written as Python writes a float")
  t.eq(#assert(store:find_ingestable(10)), 0, "ingested jobs leave the scan")
  t.eq(store:record_ingestion(foreign.id, { status = "skipped" }), false,
    "another experiment's job is not touched")
  t.raises(function() store:record_ingestion(c.id, { status = "done" }) end, "state.status")
  t.raises(function() store:record_ingestion(c.id, { status = "failed", delta = 0 / 0 }) end, "state.delta")
end)

t.case("no starvation: newer succeeded jobs are found after 32 older ones are ingested", function()
  local jobs = {}
  for i = 1, 40 do jobs[i] = succeeded_job(store, 1000 + i) end
  for i = 1, 32 do
    assert(conn:exec("UPDATE evolution_jobs SET completed_at = now() - make_interval(secs => $2) WHERE id = $1",
      jobs[i].id, 1000 - i))
    assert(store:record_ingestion(jobs[i].id, { status = "skipped", reason = "unchanged" }))
  end
  local found = assert(store:find_ingestable(100))
  t.eq(#found, 8)
  local want = {}
  for i = 33, 40 do want[jobs[i].id] = true end
  for _, cnd in ipairs(found) do t.ok(want[cnd.id], "a newer job") end
  -- a job that keeps failing goes behind fresh ones, and leaves after max_attempts
  for _ = 1, 2 do assert(store:record_ingestion(jobs[33].id, { status = "failed", reason = "x" })) end
  found = assert(store:find_ingestable(100))
  t.eq(found[#found].id, jobs[33].id, "fewest attempts first")
  t.eq(#assert(store:find_ingestable(100, { max_attempts = 2 })), 7)
  for i = 33, 40 do assert(store:record_ingestion(jobs[i].id, { status = "skipped" })) end
end)

t.case("malformed rows come back as data, and can be recorded as failed", function()
  local cases = {}
  local function bad(payload_sql, expect)
    local job = assert(new_job(store, archive_row(1), {}))
    assert(conn:exec("UPDATE evolution_jobs SET status = 'SUCCEEDED', completed_at = now(), payload = " ..
      payload_sql .. " WHERE id = $1", job.id))
    cases[job.id] = expect
  end
  bad([['[1, 2]'::jsonb]], "payload is not a JSON object %(it is an array%)")
  bad([['"text"'::jsonb]], "payload is not a JSON object")
  bad([['{"island_id": "main"}'::jsonb]], "payload.result is missing")
  bad([['{"result": [1]}'::jsonb]], "payload.result is not a JSON object")
  bad([['{"result": {"commit_hash": "   "}}'::jsonb]], "commit_hash is empty")
  bad([['{"result": {"commit_hash": 42}}'::jsonb]], "commit_hash is missing")
  bad([['{"result": {"commit_hash": "abc", "metrics": [{"name": "m", "value": "1.5"}]}}'::jsonb]],
    "metrics%[1%]%.value %(m%) is not a number")
  bad([['{"result": {"commit_hash": "abc", "metrics": [{"name": "m", "value": true}]}}'::jsonb]],
    "is not a number")
  bad([['{"result": {"commit_hash": "abc", "metrics": {"m": 1}}}'::jsonb]], "metrics is not a list")
  bad([['{"result": {"commit_hash": "abc", "metrics": [{"value": 1}]}}'::jsonb]], "name is missing")
  bad([['{"result": {"commit_hash": " abc ", "metrics": null}}'::jsonb]], nil)
  local found = assert(store:find_ingestable(100))
  t.eq(#found, 11)
  for _, cnd in ipairs(found) do
    local expect = cases[cnd.id]
    if expect then
      t.match(cnd.malformed, expect)
      t.eq(cnd.commit_hash, nil)
    else
      t.eq(cnd.malformed, nil); t.eq(cnd.commit_hash, "abc", "trimmed"); t.same(cnd.metrics, {})
    end
    assert(store:record_ingestion(cnd.id, { status = expect and "failed" or "skipped",
      reason = cnd.malformed }))
  end
  local arr = q(conn, [[SELECT payload -> 'loreley_original_payload' AS orig,
    payload #>> '{ingestion,map_elites,status}' AS st FROM evolution_jobs
    WHERE payload ? 'loreley_original_payload' AND jsonb_typeof(payload -> 'loreley_original_payload') = 'array']])
  t.eq(#arr, 1); t.same(arr[1].orig, { 1, 2 }); t.eq(arr[1].st, "failed")
  t.eq(#assert(store:find_ingestable(100, { max_attempts = 1 })), 0)
end)

-- --- archive cells, reducer, islands, dispatch --------------------------------------------

t.case("archive cells round trip exactly; upsert replaces; scoped by island", function()
  local rows = {
    archive_row(0, { metadata = '{ "k" : [1, 2.50] }', solution = { 1e-300, -0.0 } }),
    archive_row(1048575, { objective = -1e6, threshold = -math.huge, measures = { 5e-324, 1e308, -6, 6 } }),
    archive_row(42, { objective = 0.1 + 0.2, threshold = 0.30000000000000004 }),
  }
  assert(store:upsert_cells("main", rows))
  local loaded = assert(store:load_cells("main"))
  t.eq(#loaded, 3)
  table.sort(rows, function(x, y) return x.cell < y.cell end)
  for i, r in ipairs(rows) do t.same(loaded[i], r, "cell " .. r.cell) end
  t.eq(loaded[1].metadata, '{ "k" : [1, 2.50] }', "metadata kept byte for byte")
  assert(store:upsert_cell("main", archive_row(42, { commit_hash = hash(4242), objective = 9 })))
  loaded = assert(store:load_cells("main"))
  t.eq(#loaded, 3); t.eq(loaded[2].commit_hash, hash(4242)); t.eq(loaded[2].objective, 9)
  t.eq(#assert(store:load_cells("island-2")), 0)
  t.eq(#assert(other:load_cells("main")), 0)
  t.raises(function() store:upsert_cell("main", archive_row(1, { cell = -1 })) end, "row.cell must be >= 0")
  t.raises(function() store:upsert_cell("main", archive_row(1, { measures = { 0 / 0 } })) end, "row.measures[1]")
end)

local function vec(...)
  local out = {}
  for _, x in ipairs { ... } do
    out[#out + 1] = string.char(x % 256, 0, 0, 0, 0, 0, 0xF0, 0x3F)   -- 8 bytes each
  end
  return table.concat(out)
end

t.case("reducer state saved incrementally and loaded back", function()
  t.eq(store:load_reducer("main"), false, "nothing saved yet")
  assert(store:save_reducer_changes("main", { samples_since_fit = 2,
    append = { { seq = 1, commit_hash = hash(1), vector = vec(1, 2) },
               { seq = 2, commit_hash = hash(2), vector = vec(3, 4) } } }))
  assert(store:save_reducer_changes("main", { projection = "PCA1\0\1\2\255", samples_since_fit = 0,
    append = { { seq = 3, commit_hash = hash(3), vector = vec(5, 6) } }, trim_before_seq = 2 }))
  assert(store:save_reducer_changes("main", { samples_since_fit = 1, append = {} }))
  local r = assert(store:load_reducer("main"))
  t.eq(r.projection, "PCA1\0\1\2\255", "projection kept when a later change has none")
  t.eq(r.samples_since_fit, 1)
  t.same(r.history, { { seq = 2, commit_hash = hash(2), vector = vec(3, 4) },
                      { seq = 3, commit_hash = hash(3), vector = vec(5, 6) } })
  assert(store:save_reducer("side", { samples_since_fit = 0, history = {
    { seq = 9, commit_hash = hash(9), vector = vec(9) } } }))
  local side = assert(store:load_reducer("side"))
  t.eq(side.projection, nil); t.eq(#side.history, 1)
  t.eq(other:load_reducer("main"), false)
  t.raises(function() store:save_reducer_changes("main", { samples_since_fit = 0,
    append = { { seq = 4, commit_hash = hash(4), vector = "odd" } } }) end, "little-endian float64")
end)

t.case("islands and dispatch bookkeeping", function()
  assert(store:save_island("main", { dims = 4, cells_per_dim = 32, threshold_min = { __float__ = "-inf" } }))
  assert(store:save_island("empty", { dims = 2 }))
  local islands = assert(store:list_islands())
  local by = {}
  for _, i in ipairs(islands) do by[i.island_id] = i end
  t.eq(by.main.cells, 3); t.eq(by.main.history, 2); t.eq(by.main.fitted, true)
  t.eq(by.main.config.cells_per_dim, 32)
  t.eq(by.side.fitted, false); t.eq(by.side.config, nil)
  t.eq(by.empty.cells, 0)
  t.eq(#assert(other:list_islands()), 0)
  local job = assert(new_job(store, archive_row(1), {}))
  assert(store:mark_queued { job.id })
  assert(conn:exec("UPDATE evolution_jobs SET updated_at = now() - interval '1 hour' WHERE id = $1", job.id))
  local stranded = assert(store:find_stranded_queued(60, 10))
  local seen = false
  for _, s in ipairs(stranded) do if s.id == job.id then seen = true; t.eq(s.attempts, 0) end end
  t.ok(seen, "a QUEUED job with no message is stranded")
  t.eq(assert(store:record_dispatch(job.id, "6a1b0e2c-0000-4000-8000-000000000001")), true)
  for _, s in ipairs(assert(store:find_stranded_queued(60, 10))) do t.ok(s.id ~= job.id, "sent just now") end
  t.eq(assert(store:record_dispatch_failure(job.id, "redis down")), true)
  local d = q(conn, "SELECT attempts, redis_message_id, last_error FROM loreley_dispatch WHERE job_id = $1", job.id)[1]
  t.eq(d.attempts, 2); t.eq(d.last_error, "redis down")
  t.eq(other:record_dispatch(job.id, "x"), false, "scoped to the experiment")
  assert(worker_start(job.id))
  assert(conn:exec("UPDATE evolution_jobs SET started_at = now() - interval '2 hours' WHERE id = $1", job.id))
  local overdue = assert(store:find_overdue_running(3600, 10))
  t.eq(#overdue, 1); t.eq(overdue[1].id, job.id)
end)

t.case("SQL injection through every string parameter is stored as data", function()
  local evil = "x'); DROP TABLE evolution_jobs; --"
  local quote = "Robert'); DELETE FROM commits; --\\"
  t.eq(store:insert_commit { commit_hash = evil, parent_commit_hash = quote, island_id = quote,
    author = quote, message = quote, evaluation_summary = quote, tags = { quote, evil },
    extra_context = { [quote] = evil } }, true)
  local job = assert(new_job(store, archive_row(1, { commit_hash = evil, metadata = '{"q": "' .. "'; --" .. '"}' }),
    { archive_row(2, { commit_hash = quote }) }, { island_id = evil }))
  local row = assert(store:job(job.id))
  t.eq(row.island_id, evil); t.eq(row.base_commit_hash, evil)
  t.same(row.inspiration_commit_hashes, { quote })
  t.eq(row.payload.base.metadata.q, "'; --")
  assert(store:upsert_cell(evil, archive_row(3, { commit_hash = quote, metadata = evil })))
  t.eq(assert(store:load_cells(evil))[1].metadata, evil)
  assert(store:save_reducer_changes(evil, { projection = evil, samples_since_fit = 0,
    append = { { seq = 1, commit_hash = quote, vector = vec(1) } } }))
  t.eq(assert(store:load_reducer(evil)).projection, evil)
  assert(store:save_island(evil, { name = quote }))
  assert(store:mark_queued { job.id })
  assert(conn:exec("UPDATE evolution_jobs SET status = 'SUCCEEDED', payload = payload || $2::jsonb WHERE id = $1",
    job.id, { result = { commit_hash = quote, metrics = db.json_array() } }))
  assert(store:record_ingestion(job.id, { status = "failed", reason = evil, message = quote,
    record = { commit_hash = quote, cell_index = 1, fitness = 1, island_id = evil, timestamp = 1 } }))
  assert(store:record_dispatch(job.id, evil:sub(1, 60)))
  assert(store:record_dispatch_failure(job.id, quote))
  local st = assert(store:job(job.id)).payload.ingestion.map_elites
  t.eq(st.reason, evil); t.eq(st.message, quote); t.eq(st.record.island_id, evil)
  local desc = assert(experiment.describe_repository("/tmp/x'; DROP TABLE repositories; --",
    { { name = "origin'--", url = "https://h/" .. evil } }))
  local r = assert(experiment.get_or_create_repository(conn, desc))
  t.eq(r.root_path, "/tmp/x'; DROP TABLE repositories; --")
  for _, tbl in ipairs { "evolution_jobs", "commits", "repositories", "experiments", "metrics",
                         "loreley_archive_cells", "loreley_reducer_history" } do
    t.eq(q(conn, "SELECT to_regclass($1) IS NOT NULL AS present", tbl)[1].present, true, tbl)
  end
  t.ok(q(conn, "SELECT count(*) AS n FROM commits")[1].n > 1, "commits intact")
  t.raises(function() jobstore.new(conn, "1; DROP TABLE x") end, "experiment_id must be a UUID")
end)

t.case("the server restarts in the middle: one failed call, then the store works", function()
  t.ok(store:count_unfinished())
  assert(pg:restart())
  local n, err, code = store:count_unfinished()
  t.eq(n, nil); t.match(err, "connection"); t.eq(code:sub(1, 2), "08")
  t.eq(type(assert(store:count_unfinished())), "number")
  t.ok(store:claim_pending(1))
  t.ok(store:find_ingestable(2))
end)

worker:close()
conn:close()
pg:stop()
t.finish()
