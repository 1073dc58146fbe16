-- ctest: labels=unit;cli
-- loreley.settings: every type with good and bad values, .env precedence, secrets.
local t = require "support.t"
local settings = require "loreley.settings"

local function load(env, dotenv)
  return settings.load { env = env or {}, dotenv = dotenv or false }
end

t.case("defaults match the contract (§5)", function()
  local s = assert(load())
  t.eq(s.app_name, "Loreley")
  t.eq(s.environment, "development")
  t.eq(s.db_port, 5432)
  t.eq(s.db_scheme, "postgresql+psycopg")
  t.eq(s.tasks_queue_name, "loreley.evolution")
  t.eq(s.tasks_redis_namespace, "loreley")
  t.eq(s.scheduler_poll_interval_seconds, 30.0)
  t.eq(s.scheduler_max_unfinished_jobs, 4)
  t.eq(s.scheduler_max_total_jobs, nil)
  t.eq(s.scheduler_schedule_batch_size, 2)
  t.eq(s.scheduler_dispatch_batch_size, 4)
  t.eq(s.scheduler_ingest_batch_size, 2)
  t.eq(s.mapelites_archive_threshold_min, -math.huge)
  t.eq(s.mapelites_archive_epsilon, 1e-6)
  t.eq(s.mapelites_dimensionality_target_dims, 4)
  t.same(s.mapelites_feature_lower_bounds, { -6, -6, -6, -6 })
  t.eq(#s.mapelites_preprocess_allowed_extensions, 25)
  t.eq(s.mapelites_preprocess_excluded_globs[1], "tests/**")
  t.eq(s.worker_evaluator_timeout_seconds, 900)
  t.eq(s.tasks_redis_password, nil)
  t.match(s.worker_repo_worktree, "/%.cache/loreley/worker%-repo$")
  t.no_match(s.worker_repo_worktree, "^~")
end)

t.case("good values of every type", function()
  local s = assert(load {
    APP_NAME = "X",                                         -- str
    TASKS_REDIS_PASSWORD = "pw",                            -- str?
    DB_PORT = " 6543 ",                                     -- int (whitespace)
    SCHEDULER_MAX_TOTAL_JOBS = "1_000",                     -- int? (underscore)
    SCHEDULER_POLL_INTERVAL_SECONDS = "2.5",                -- float
    MAPELITES_ARCHIVE_THRESHOLD_MIN = "-inf",               -- float: -inf
    MAPELITES_FITNESS_FLOOR = "-1e6",                       -- float: exponent
    MAPELITES_FEATURE_CLIP = "off",                         -- bool
    MAPELITES_FITNESS_HIGHER_IS_BETTER = "No",
    MAPELITES_PREPROCESS_STRIP_COMMENTS = "1",
    MAPELITES_PREPROCESS_ALLOWED_FILENAMES = '["Makefile", "BUILD"]', -- list_str
    MAPELITES_FEATURE_UPPER_BOUNDS = "[1, 2.5, \"3\"]",     -- list_float
  })
  t.eq(s.app_name, "X")
  t.eq(s.tasks_redis_password, "pw")
  t.eq(s.db_port, 6543)
  t.eq(s.scheduler_max_total_jobs, 1000)
  t.eq(s.scheduler_poll_interval_seconds, 2.5)
  t.eq(s.mapelites_archive_threshold_min, -math.huge)
  t.eq(s.mapelites_fitness_floor, -1e6)
  t.eq(s.mapelites_feature_clip, false)
  t.eq(s.mapelites_fitness_higher_is_better, false)
  t.eq(s.mapelites_preprocess_strip_comments, true)
  t.same(s.mapelites_preprocess_allowed_filenames, { "Makefile", "BUILD" })
  t.same(s.mapelites_feature_upper_bounds, { 1, 2.5, 3 })
  local nan = assert(load { MAPELITES_ARCHIVE_THRESHOLD_MIN = "nan" })
  t.ok(nan.mapelites_archive_threshold_min ~= nan.mapelites_archive_threshold_min, "nan")
  local inf = assert(load { MAPELITES_ARCHIVE_THRESHOLD_MIN = "Infinity" })
  t.eq(inf.mapelites_archive_threshold_min, math.huge)
end)

local BAD = {
  { "DB_PORT", "abc", "expected an integer" },
  { "DB_PORT", "5432.5", "expected an integer" },
  { "DB_PORT", "0x10", "expected an integer" },
  { "DB_PORT", "70000", "out of range: must be <= 65535" },
  { "DB_PORT", "0", "out of range: must be >= 1" },
  { "TASKS_REDIS_DB", "-1", "out of range: must be >= 0" },
  { "SCHEDULER_MAX_TOTAL_JOBS", "many", "expected an integer" },
  { "SCHEDULER_POLL_INTERVAL_SECONDS", "fast", "expected a number" },
  { "SCHEDULER_POLL_INTERVAL_SECONDS", "0x1p4", "expected a number" },
  { "SCHEDULER_POLL_INTERVAL_SECONDS", "inf", "expected a finite number" },
  { "SCHEDULER_POLL_INTERVAL_SECONDS", "-1", "out of range: must be >= 0" },
  { "MAPELITES_ARCHIVE_LEARNING_RATE", "1.5", "out of range: must be <= 1" },
  { "MAPELITES_FEATURE_CLIP", "maybe", "expected a boolean" },
  { "MAPELITES_PREPROCESS_ALLOWED_FILENAMES", "Makefile", "expected a JSON array" },
  { "MAPELITES_PREPROCESS_ALLOWED_FILENAMES", "[\"a\", 3]", "element 2 is a number; expected a string" },
  { "MAPELITES_PREPROCESS_ALLOWED_FILENAMES", "[\"a\",", "invalid JSON" },
  { "MAPELITES_FEATURE_LOWER_BOUNDS", "[1, \"x\"]", "element 2 is a string; expected a number" },
  { "MAPELITES_FEATURE_LOWER_BOUNDS", "[1, {}]", "element 2 is an object; expected a number" },
  { "MAPELITES_FEATURE_LOWER_BOUNDS", "{\"a\": 1}", "expected a JSON array" },
  { "LOG_LEVEL", "LOUD", "expected one of" },
  { "TASKS_QUEUE_NAME", "1queue", "expected a Dramatiq queue name" },
  { "MAPELITES_DEFAULT_ISLAND_ID", ("x"):rep(65), "longer than 64 characters" },
}

t.case("bad values name the variable, the value and the expected type", function()
  for _, case in ipairs(BAD) do
    local s, err = load { [case[1]] = case[2] }
    t.eq(s, nil, case[1] .. "=" .. case[2] .. " was accepted")
    t.ok(err:find(case[1] .. "='" .. case[2] .. "'", 1, true), "value missing in: " .. err)
    t.ok(err:find(case[3], 1, true), ("expected %q in %q"):format(case[3], err))
  end
end)

t.case("every problem is reported at once", function()
  local s, err = load { DB_PORT = "x", MAPELITES_FEATURE_CLIP = "perhaps" }
  t.eq(s, nil)
  t.match(err, "DB_PORT")
  t.match(err, "MAPELITES_FEATURE_CLIP")
end)

t.case("names are case-insensitive; field names are not env names", function()
  t.eq(assert(load { mapelites_archive_cells_per_dim = "16" }).mapelites_archive_cells_per_dim, 16)
  t.eq(assert(load { MAPELITES_DIMENSIONALITY_TARGET_DIMS = "8" }).mapelites_dimensionality_target_dims, 4)
  t.eq(assert(load { MAPELITES_DIMENSION_REDUCTION_TARGET_DIMS = "8" }).mapelites_dimensionality_target_dims, 8)
end)

t.case("reading an unknown setting raises", function()
  local s = assert(load())
  t.raises(function() return s.scheduler_max_unfinshed_jobs end, "unknown setting 'scheduler_max_unfinshed_jobs'")
end)

t.case(".env is read and the environment wins", function()
  local dir = t.tmpdir()
  local path = t.write(dir .. "/.env", table.concat({
    "# comment",
    "export MAPELITES_SAMPLER_INSPIRATION_COUNT=5",
    "MAPELITES_SAMPLER_NEIGHBOR_RADIUS = 2   # inline comment",
    "APP_NAME=\"Quoted # not a comment\"",
    "APP_ENV='single'",
    "",
  }, "\n"))
  local s = assert(settings.load { env = { MAPELITES_SAMPLER_INSPIRATION_COUNT = "7" }, dotenv = path })
  t.eq(s.mapelites_sampler_inspiration_count, 7)
  t.eq(s.mapelites_sampler_neighbor_radius, 2)
  t.eq(s.app_name, "Quoted # not a comment")
  t.eq(s.environment, "single")
  t.eq(s._sources.mapelites_sampler_inspiration_count, "environment")
  t.eq(s._sources.mapelites_sampler_neighbor_radius, path)
  local bad = t.write(dir .. "/bad.env", "JUST_A_WORD\n")
  local s2, err = settings.load { env = {}, dotenv = bad }
  t.eq(s2, nil)
  t.match(err, "bad%.env:1: expected KEY=VALUE")
end)

t.case("the host reads ./.env from its working directory; a bad value exits 2", function()
  local dir = t.tmpdir()
  t.write(dir .. "/.env", "DB_PORT=notaport\n")
  local r = t.run_host({ "--check", t.fixtures .. "/policies/sleepy.lua" }, { cwd = dir })
  t.eq(r.code, 2)
  t.match(r.stderr, "DB_PORT='notaport' %(from %.env%): expected an integer")
  r = t.run_host({ "--check", t.fixtures .. "/policies/sleepy.lua" },
    { cwd = dir, env = { DB_PORT = "6000" } })
  t.eq(r.code, 0)
  t.match(r.stdout, "DB_PORT=6000  %(environment%)")
end)

t.case("--check prints resolved settings with secrets masked", function()
  local r = t.run_host({ "--check", t.fixtures .. "/policies/sleepy.lua" }, { env = {
    DATABASE_URL = "postgresql+psycopg://loreley:s3cr%40t@db.example:5432/loreley",
    TASKS_REDIS_URL = "redis://:hunter2@cache:6379/1",
    DB_PASSWORD = "dbpass-zz",
    TASKS_REDIS_PASSWORD = "redispass-zz",
    OPENAI_API_KEY = "sk-zzzz",
  } })
  t.eq(r.code, 0)
  local out = r.stdout
  for _, secret in ipairs { "s3cr", "hunter2", "dbpass%-zz", "redispass%-zz", "sk%-zzzz" } do
    t.no_match(out, secret, "secret printed")
    t.no_match(r.stderr, secret, "secret logged")
  end
  t.match(out, "DATABASE_URL=postgresql%+psycopg://loreley:%*%*%*@db%.example:5432/loreley")
  t.match(out, "TASKS_REDIS_URL=redis://:%*%*%*@cache:6379/1")
  t.match(out, "DB_PASSWORD=%*%*%*")
  t.match(out, "SCHEDULER_POLL_INTERVAL_SECONDS=30")
  t.match(out, "policy .*sleepy%.lua: ok %(version %x+; tick, init, shutdown%)")
end)

t.case("a bad secret value is reported without the value", function()
  local r = t.run_host({ "--check", t.fixtures .. "/policies/sleepy.lua" },
    { env = { DATABASE_URL = "postgresql://u:topsecret@h/db", DB_PORT = "x" } })
  t.eq(r.code, 2)
  t.no_match(r.stderr, "topsecret")
end)

t.finish()
