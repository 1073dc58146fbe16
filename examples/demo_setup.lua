-- Shared by the demo (examples/demo.lua), the end-to-end tests and the benchmarks: a
-- private PostgreSQL and Redis, the demo repository, and the environment that points a
-- host and its workers at them.
--
--   local setup = require "demo_setup"
--   local stack = setup.start(dir[, {shared, keep, max_connections}])
--                                                 -> {pg, redis, origin, root, dir}
--   local env = setup.environment(stack, { SCHEDULER_MAX_TOTAL_JOBS = "20" })
--   local pid = setup.spawn_worker(host_binary, env, {"--max-jobs", "5"}, log)
local sys = require "loreley.sys"
local localstack = require "loreley.localstack"

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
package.path = here .. "/?.lua;" .. package.path
local problem = require "circle_packing"

local M = { examples_dir = here }

local GIT_ENV = {
  GIT_AUTHOR_NAME = "Loreley Demo", GIT_AUTHOR_EMAIL = "demo@loreley.local",
  GIT_COMMITTER_NAME = "Loreley Demo", GIT_COMMITTER_EMAIL = "demo@loreley.local",
  GIT_CONFIG_GLOBAL = "/dev/null", GIT_CONFIG_NOSYSTEM = "1", GIT_TERMINAL_PROMPT = "0",
}

local function git(dir, ...)
  local argv = { "git", "-C", dir }
  for _, a in ipairs { ... } do argv[#argv + 1] = a end
  local r = assert(sys.run(argv, { env = GIT_ENV, timeout = 60 }))
  if r.code ~= 0 then error(table.concat(argv, " ") .. ": " .. r.stderr, 2) end
  return r.stdout
end

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

-- Creates the demo repository once: a bare origin (the workers' remote) holding one
-- commit with packing.py, and the scheduler's clone of it. Returns origin, root.
-- opts.shared: the scheduler's clone borrows the origin's object store (git clone
-- --shared: objects/info/alternates), so commits the workers write into the origin are
-- visible to the scheduler without a fetch, as when both live on one machine. Without
-- it the scheduler fetches each job branch, as against a remote origin.
function M.create_repository(dir, opts)
  opts = opts or {}
  local origin, root = dir .. "/origin.git", dir .. "/scheduler-repo"
  if sys.exists(root .. "/.git") and sys.exists(origin) then return origin, root end
  sys.run { "rm", "-rf", origin, root, dir .. "/seed" }
  local seed = dir .. "/seed"
  assert(sys.run { "mkdir", "-p", seed })
  git(seed, "init", "-q", "-b", "main")
  local rng = require("loreley.host").rng(20251129)
  write(seed .. "/" .. problem.FILE, problem.render(problem.initial(rng), { "grid" }))
  write(seed .. "/README.md", "# Circle packing\n\nPack 26 circles in the unit square; "
    .. "maximise the sum of their radii.\n")
  git(seed, "add", "-A")
  git(seed, "commit", "-q", "-m", "Initial packing: a jittered grid")
  assert(sys.run({ "git", "clone", "-q", "--bare", seed, origin }, { env = GIT_ENV }))
  if opts.shared then
    assert(sys.run({ "git", "clone", "-q", "--shared", origin, root }, { env = GIT_ENV }))
  else
    assert(sys.run({ "git", "clone", "-q", origin, root }, { env = GIT_ENV }))
  end
  sys.run { "rm", "-rf", seed }
  return origin, root
end

-- Starts PostgreSQL and Redis under dir and creates the repository.
function M.start(dir, opts)
  opts = opts or {}
  assert(sys.run { "mkdir", "-p", dir })
  local pg = assert(localstack.postgres { dir = dir .. "/postgres", keep = opts.keep,
    max_connections = opts.max_connections })
  local redis = assert(localstack.redis { dir = dir .. "/redis", keep = opts.keep })
  local origin, root = M.create_repository(dir, { shared = opts.shared })
  return { dir = dir, pg = pg, redis = redis, origin = origin, root = root }
end

-- The environment of a host or a worker of this stack; overrides win.
function M.environment(stack, overrides)
  local env = {
    DATABASE_URL = stack.pg.url,
    TASKS_REDIS_URL = stack.redis.url,
    SCHEDULER_REPO_ROOT = stack.root,
    WORKER_REPO_REMOTE_URL = stack.origin,
    SCHEDULER_POLL_INTERVAL_SECONDS = "1",
    SCHEDULER_MAX_UNFINISHED_JOBS = "8",
    SCHEDULER_SCHEDULE_BATCH_SIZE = "4",
    SCHEDULER_DISPATCH_BATCH_SIZE = "8",
    SCHEDULER_INGEST_BATCH_SIZE = "8",
    MAPELITES_DIMENSION_REDUCTION_MIN_FIT_SAMPLES = "16",
    MAPELITES_DIMENSION_REDUCTION_REFIT_INTERVAL = "25",
    MAPELITES_FEATURE_LOWER_BOUNDS = "[-0.5,-0.5,-0.5,-0.5]",
    MAPELITES_FEATURE_UPPER_BOUNDS = "[0.5,0.5,0.5,0.5]",
    MAPELITES_ARCHIVE_CELLS_PER_DIM = "12",
    LORELEY_SAMPLER_SEED = "7",
    LOG_FORMAT = false,
    NO_COLOR = "1",
  }
  for k, v in pairs(overrides or {}) do env[k] = v end
  return env
end

-- Starts an example worker in the background; returns its pid.
function M.spawn_worker(host_binary, env, args, log)
  local argv = { host_binary, "--once", here .. "/worker.lua", "--" }
  for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
  return assert(sys.spawn(argv, { env = env, stdout = log, stderr = "stdout" }))
end

-- Starts the host on a policy in the background; returns its pid.
function M.spawn_host(host_binary, env, policy, log, extra)
  local argv = { host_binary }
  for _, a in ipairs(extra or {}) do argv[#argv + 1] = a end
  argv[#argv + 1] = policy
  return assert(sys.spawn(argv, { env = env, stdout = log, stderr = "stdout" }))
end

return M
