-- loreley.settings: Loreley's environment settings, typed and validated.
--
-- Names, types and defaults are those of Loreley's `Settings` (spec §5) for everything
-- the scheduler side uses; host-only settings carry a LORELEY_ prefix. Values come from
-- the process environment, which wins over a `.env` file in the working directory.
-- Environment names match case-insensitively; only the listed name (the pydantic alias)
-- is read, never the field name.
--
--   local settings = require "loreley.settings"
--   local s = assert(settings.load())        -- nil, "message" when a value is invalid
--   s.scheduler_poll_interval_seconds        -- fields are read by their field name
--   settings.current()                       -- the table the host loaded at start-up
--   settings.describe(s)                     -- "NAME=value" lines, secrets masked
--
-- Reading a field that does not exist raises (a typo must fail loudly); optional
-- fields that are unset read as nil.
local cjson = require "cjson.safe"
local sys = require "loreley.sys"
local read_file = sys.read_file

local M = {}

-- Value types:
--   str, str?      text (str? may be unset: nil)
--   int, int?      integers          float   numbers; inf, -inf and nan accepted
--   bool           true/false/1/0/yes/no/on/off/t/f/y/n (any case)
--   list_str       JSON array of strings       list_float   JSON array of numbers
-- Row fields: env name, field name, type, default, extras:
--   secret = true        never printed
--   url_secret = true    printed with the password part of the URL masked
--   min / max            inclusive numeric range (out of range is an error)
--   choices              allowed values (case-insensitive for strings)
local EXTENSIONS = { ".py", ".pyi", ".js", ".jsx", ".ts", ".tsx", ".go", ".rs", ".java",
  ".kt", ".swift", ".m", ".mm", ".c", ".cc", ".cpp", ".cxx", ".cs", ".h", ".hpp", ".php",
  ".rb", ".scala", ".sql", ".sh" }
local LOG_LEVELS = { "TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "WARN", "ERROR", "CRITICAL" }

local SPEC = {
  -- application and logging
  { "APP_NAME", "app_name", "str", "Loreley" },
  { "APP_ENV", "environment", "str", "development" },
  { "LOG_LEVEL", "log_level", "str", "INFO", choices = LOG_LEVELS },
  { "OPENAI_API_KEY", "openai_api_key", "str?", nil, secret = true },
  { "OPENAI_BASE_URL", "openai_base_url", "str?", nil },
  -- database
  { "DATABASE_URL", "database_url", "str?", nil, url_secret = true },
  { "DB_SCHEME", "db_scheme", "str", "postgresql+psycopg" },
  { "DB_HOST", "db_host", "str", "localhost" },
  { "DB_PORT", "db_port", "int", 5432, min = 1, max = 65535 },
  { "DB_USER", "db_username", "str", "postgres" },
  { "DB_PASSWORD", "db_password", "str", "postgres", secret = true },
  { "DB_NAME", "db_name", "str", "loreley" },
  { "DB_POOL_SIZE", "db_pool_size", "int", 10, min = 0 },
  { "DB_MAX_OVERFLOW", "db_max_overflow", "int", 20, min = 0 },
  { "DB_POOL_TIMEOUT", "db_pool_timeout", "int", 30, min = 0 },
  { "DB_ECHO", "db_echo", "bool", false },
  { "METRICS_RETENTION_DAYS", "metrics_retention_days", "int", 30 },
  -- task queue (Dramatiq over Redis)
  { "TASKS_REDIS_URL", "tasks_redis_url", "str?", nil, url_secret = true },
  { "TASKS_REDIS_HOST", "tasks_redis_host", "str", "localhost" },
  { "TASKS_REDIS_PORT", "tasks_redis_port", "int", 6379, min = 1, max = 65535 },
  { "TASKS_REDIS_DB", "tasks_redis_db", "int", 0, min = 0 },
  { "TASKS_REDIS_PASSWORD", "tasks_redis_password", "str?", nil, secret = true },
  { "TASKS_REDIS_NAMESPACE", "tasks_redis_namespace", "str", "loreley" },
  { "TASKS_QUEUE_NAME", "tasks_queue_name", "str", "loreley.evolution",
    pattern = "^[a-zA-Z_][a-zA-Z0-9._-]*$", pattern_help = "a Dramatiq queue name [a-zA-Z_][a-zA-Z0-9._-]*" },
  { "TASKS_WORKER_MAX_RETRIES", "tasks_worker_max_retries", "int", 0 },
  { "TASKS_WORKER_TIME_LIMIT_SECONDS", "tasks_worker_time_limit_seconds", "int", 3600 },
  -- scheduler
  { "SCHEDULER_REPO_ROOT", "scheduler_repo_root", "str?", nil },
  { "SCHEDULER_POLL_INTERVAL_SECONDS", "scheduler_poll_interval_seconds", "float", 30.0,
    min = 0, finite = true },
  { "SCHEDULER_MAX_UNFINISHED_JOBS", "scheduler_max_unfinished_jobs", "int", 4 },
  { "SCHEDULER_MAX_TOTAL_JOBS", "scheduler_max_total_jobs", "int?", nil },
  { "SCHEDULER_SCHEDULE_BATCH_SIZE", "scheduler_schedule_batch_size", "int", 2 },
  { "SCHEDULER_DISPATCH_BATCH_SIZE", "scheduler_dispatch_batch_size", "int", 4 },
  { "SCHEDULER_INGEST_BATCH_SIZE", "scheduler_ingest_batch_size", "int", 2 },
  -- worker repository (the scheduler's fallback root and the job branches)
  { "WORKER_REPO_REMOTE_URL", "worker_repo_remote_url", "str?", nil, url_secret = true },
  { "WORKER_REPO_BRANCH", "worker_repo_branch", "str", "main" },
  { "WORKER_REPO_WORKTREE", "worker_repo_worktree", "str", "~/.cache/loreley/worker-repo",
    expand_home = true },
  { "WORKER_REPO_JOB_BRANCH_PREFIX", "worker_repo_job_branch_prefix", "str", "evolution/job" },
  { "WORKER_REPO_FETCH_DEPTH", "worker_repo_fetch_depth", "int?", nil, min = 1 },
  { "WORKER_EVOLUTION_COMMIT_AUTHOR", "worker_evolution_commit_author", "str", "Loreley Worker" },
  { "WORKER_EVOLUTION_COMMIT_EMAIL", "worker_evolution_commit_email", "str", "worker@loreley.local" },
  -- evaluator settings that enter the experiment identity
  { "WORKER_EVALUATOR_PLUGIN", "worker_evaluator_plugin", "str?", nil },
  { "WORKER_EVALUATOR_PYTHON_PATHS", "worker_evaluator_python_paths", "list_str", {} },
  { "WORKER_EVALUATOR_TIMEOUT_SECONDS", "worker_evaluator_timeout_seconds", "int", 900 },
  { "WORKER_EVALUATOR_MAX_METRICS", "worker_evaluator_max_metrics", "int", 64 },
  -- MAP-Elites: preprocess (§3.2)
  { "MAPELITES_PREPROCESS_MAX_FILES", "mapelites_preprocess_max_files", "int", 6, min = 0 },
  { "MAPELITES_PREPROCESS_MAX_FILE_SIZE_KB", "mapelites_preprocess_max_file_size_kb", "int", 512 },
  { "MAPELITES_PREPROCESS_ALLOWED_EXTENSIONS", "mapelites_preprocess_allowed_extensions",
    "list_str", EXTENSIONS },
  { "MAPELITES_PREPROCESS_ALLOWED_FILENAMES", "mapelites_preprocess_allowed_filenames",
    "list_str", { "Dockerfile", "Makefile" } },
  { "MAPELITES_PREPROCESS_EXCLUDED_GLOBS", "mapelites_preprocess_excluded_globs", "list_str",
    { "tests/**", "__pycache__/**", "node_modules/**", "build/**", "dist/**", ".git/**" } },
  { "MAPELITES_PREPROCESS_MAX_BLANK_LINES", "mapelites_preprocess_max_blank_lines", "int", 2 },
  { "MAPELITES_PREPROCESS_TAB_WIDTH", "mapelites_preprocess_tab_width", "int", 4 },
  { "MAPELITES_PREPROCESS_STRIP_COMMENTS", "mapelites_preprocess_strip_comments", "bool", true },
  { "MAPELITES_PREPROCESS_STRIP_BLOCK_COMMENTS", "mapelites_preprocess_strip_block_comments",
    "bool", true },
  -- chunking (§3.3)
  { "MAPELITES_CHUNK_TARGET_LINES", "mapelites_chunk_target_lines", "int", 80 },
  { "MAPELITES_CHUNK_MIN_LINES", "mapelites_chunk_min_lines", "int", 20 },
  { "MAPELITES_CHUNK_OVERLAP_LINES", "mapelites_chunk_overlap_lines", "int", 8 },
  { "MAPELITES_CHUNK_MAX_CHUNKS_PER_FILE", "mapelites_chunk_max_chunks_per_file", "int", 64 },
  { "MAPELITES_CHUNK_BOUNDARY_KEYWORDS", "mapelites_chunk_boundary_keywords", "list_str",
    { "def ", "class ", "async def ", "fn ", "function ", "impl ", "struct ", "interface ",
      "module ", "export " } },
  -- code embedding (§3.4)
  { "MAPELITES_CODE_EMBEDDING_MODEL", "mapelites_code_embedding_model", "str",
    "text-embedding-3-small" },
  { "MAPELITES_CODE_EMBEDDING_DIMENSIONS", "mapelites_code_embedding_dimensions", "int?", nil,
    min = 0, max = 65536 },
  { "MAPELITES_CODE_EMBEDDING_BATCH_SIZE", "mapelites_code_embedding_batch_size", "int", 12 },
  { "MAPELITES_CODE_EMBEDDING_MAX_CHUNKS_PER_COMMIT",
    "mapelites_code_embedding_max_chunks_per_commit", "int", 512, min = 0 },
  { "MAPELITES_CODE_EMBEDDING_MAX_RETRIES", "mapelites_code_embedding_max_retries", "int", 3 },
  { "MAPELITES_CODE_EMBEDDING_RETRY_BACKOFF_SECONDS",
    "mapelites_code_embedding_retry_backoff_seconds", "float", 2.0 },
  -- summaries (§3.5; part of the experiment identity)
  { "MAPELITES_SUMMARY_MODEL", "mapelites_summary_model", "str", "gpt-4.1-mini" },
  { "MAPELITES_SUMMARY_TEMPERATURE", "mapelites_summary_temperature", "float", 0.2 },
  { "MAPELITES_SUMMARY_MAX_OUTPUT_TOKENS", "mapelites_summary_max_output_tokens", "int", 512 },
  { "MAPELITES_SUMMARY_SOURCE_CHAR_LIMIT", "mapelites_summary_source_char_limit", "int", 6000 },
  { "MAPELITES_SUMMARY_MAX_RETRIES", "mapelites_summary_max_retries", "int", 3 },
  { "MAPELITES_SUMMARY_RETRY_BACKOFF_SECONDS", "mapelites_summary_retry_backoff_seconds",
    "float", 2.0 },
  { "MAPELITES_SUMMARY_EMBEDDING_MODEL", "mapelites_summary_embedding_model", "str",
    "text-embedding-3-small" },
  { "MAPELITES_SUMMARY_EMBEDDING_DIMENSIONS", "mapelites_summary_embedding_dimensions", "int?",
    nil },
  { "MAPELITES_SUMMARY_EMBEDDING_BATCH_SIZE", "mapelites_summary_embedding_batch_size", "int", 16 },
  -- dimension reduction (§3.6): field names say "dimensionality", env names do not
  { "MAPELITES_DIMENSION_REDUCTION_TARGET_DIMS", "mapelites_dimensionality_target_dims", "int", 4,
    max = 64 },
  { "MAPELITES_DIMENSION_REDUCTION_MIN_FIT_SAMPLES", "mapelites_dimensionality_min_fit_samples",
    "int", 32 },
  { "MAPELITES_DIMENSION_REDUCTION_HISTORY_SIZE", "mapelites_dimensionality_history_size", "int",
    4096, max = 1000000 },
  { "MAPELITES_DIMENSION_REDUCTION_REFIT_INTERVAL", "mapelites_dimensionality_refit_interval",
    "int", 50 },
  { "MAPELITES_DIMENSION_REDUCTION_PENULTIMATE_NORMALIZE",
    "mapelites_dimensionality_penultimate_normalize", "bool", true },
  -- archive (§3.8)
  { "MAPELITES_FEATURE_LOWER_BOUNDS", "mapelites_feature_lower_bounds", "list_float",
    { -6.0, -6.0, -6.0, -6.0 } },
  { "MAPELITES_FEATURE_UPPER_BOUNDS", "mapelites_feature_upper_bounds", "list_float",
    { 6.0, 6.0, 6.0, 6.0 } },
  { "MAPELITES_ARCHIVE_CELLS_PER_DIM", "mapelites_archive_cells_per_dim", "int", 32,
    max = 1048576 },
  { "MAPELITES_ARCHIVE_LEARNING_RATE", "mapelites_archive_learning_rate", "float", 1.0,
    min = 0, max = 1, finite = true },
  { "MAPELITES_ARCHIVE_THRESHOLD_MIN", "mapelites_archive_threshold_min", "float", -math.huge },
  { "MAPELITES_ARCHIVE_EPSILON", "mapelites_archive_epsilon", "float", 1e-6, finite = true },
  { "MAPELITES_ARCHIVE_QD_SCORE_OFFSET", "mapelites_archive_qd_score_offset", "float", 0.0,
    finite = true },
  { "MAPELITES_DEFAULT_ISLAND_ID", "mapelites_default_island_id", "str", "main", max_length = 64 },
  -- fitness (§3.7)
  { "MAPELITES_FITNESS_METRIC", "mapelites_fitness_metric", "str", "composite_score" },
  { "MAPELITES_FITNESS_HIGHER_IS_BETTER", "mapelites_fitness_higher_is_better", "bool", true },
  { "MAPELITES_FITNESS_FLOOR", "mapelites_fitness_floor", "float", -1000000.0 },
  { "MAPELITES_FEATURE_CLIP", "mapelites_feature_clip", "bool", true },
  -- sampler (§3.10)
  { "MAPELITES_SAMPLER_INSPIRATION_COUNT", "mapelites_sampler_inspiration_count", "int", 3 },
  { "MAPELITES_SAMPLER_NEIGHBOR_RADIUS", "mapelites_sampler_neighbor_radius", "int", 1 },
  { "MAPELITES_SAMPLER_NEIGHBOR_MAX_RADIUS", "mapelites_sampler_neighbor_max_radius", "int", 3 },
  { "MAPELITES_SAMPLER_FALLBACK_SAMPLE_SIZE", "mapelites_sampler_fallback_sample_size", "int", 8 },
  { "MAPELITES_SAMPLER_DEFAULT_PRIORITY", "mapelites_sampler_default_priority", "int", 0 },
  { "MAPELITES_SAMPLER_INCLUDE_METADATA", "mapelites_sampler_include_metadata", "bool", true },

  -- host-only settings (not Loreley's; LORELEY_ prefix) ---------------------------------
  -- LuaJIT's trace compiler. Off by default: Debian 12's LuaJIT 2.1.0-beta3 snapshot
  -- miscompiled a trace of the scheduler loop (a SIGSEGV inside JIT code, seen in about
  -- one run in three of the end-to-end test); the hot paths are C, so the interpreter
  -- costs little.
  { "LORELEY_JIT", "loreley_jit", "bool", false },
  { "LORELEY_SAMPLER_SEED", "loreley_sampler_seed", "int?", nil },
  -- loreley.git fetch: timeout and credentials (docs/git.md); repo:fetch also reads
  -- the LORELEY_GIT_* credential variables from the process environment itself
  { "LORELEY_GIT_FETCH_TIMEOUT_SECONDS", "loreley_git_fetch_timeout_seconds", "float", 300.0,
    min = 1, finite = true },
  { "LORELEY_GIT_USERNAME", "loreley_git_username", "str?", nil },
  { "LORELEY_GIT_PASSWORD", "loreley_git_password", "str?", nil, secret = true },
  { "LORELEY_GIT_TOKEN", "loreley_git_token", "str?", nil, secret = true },
  { "LORELEY_GIT_SSH_KEY", "loreley_git_ssh_key", "str?", nil, expand_home = true },
  { "LORELEY_GIT_SSH_PUBLIC_KEY", "loreley_git_ssh_public_key", "str?", nil, expand_home = true },
  { "LORELEY_GIT_SSH_PASSPHRASE", "loreley_git_ssh_passphrase", "str?", nil, secret = true },
  -- schema migrations on start-up (off: run loreley-host --init-db yourself)
  { "LORELEY_AUTO_MIGRATE", "loreley_auto_migrate", "bool", true },
  -- start-up and recovery (loreley.stages)
  { "LORELEY_BOOTSTRAP_COMMIT", "loreley_bootstrap_commit", "str?", nil },
  { "LORELEY_INGEST_MAX_ATTEMPTS", "loreley_ingest_max_attempts", "int", 5, min = 1 },
  { "LORELEY_RECOVERY_GRACE_SECONDS", "loreley_recovery_grace_seconds", "float", 60.0,
    min = 0, finite = true },
  { "LORELEY_RESCHEDULE_OVERDUE", "loreley_reschedule_overdue", "bool", false },
  -- descriptor: whiten the PCA scores (unit variance per component)
  { "LORELEY_DIMENSION_REDUCTION_WHITEN", "loreley_dimension_reduction_whiten", "bool", false },
  -- the HTTP face (docs/http.md): metrics, status page, control plane; off when unset
  { "LORELEY_HTTP_LISTEN", "loreley_http_listen", "str?", nil,
    pattern = "^[%w%.:%[%]]+$", pattern_help = "PORT or ADDR:PORT, e.g. 127.0.0.1:9464" },
  { "LORELEY_HTTP_TOKEN", "loreley_http_token", "str?", nil, secret = true },
  { "LORELEY_HTTP_CONTROL_TIMEOUT_SECONDS", "loreley_http_control_timeout_seconds", "float", 10.0,
    min = 0.1, max = 3600, finite = true },
  { "LORELEY_HTTP_HEATMAP_DIMS", "loreley_http_heatmap_dims", "str", "1,2",
    pattern = "^%s*%d+%s*,%s*%d+%s*$", pattern_help = "two measure dimensions, e.g. 1,2" },
}

M.SPEC = SPEC

local by_field = {}
for _, row in ipairs(SPEC) do
  row.env, row.field, row.type, row.default = row[1], row[2], row[3], row[4]
  by_field[row.field] = row
end
M.by_field = by_field

-- --- parsing -------------------------------------------------------------------------

local function trim(s) return (s:gsub("^%s+", ""):gsub("%s+$", "")) end

local BOOLS = {
  ["1"] = true, ["true"] = true, ["yes"] = true, ["on"] = true, ["t"] = true, ["y"] = true,
  ["0"] = false, ["false"] = false, ["no"] = false, ["off"] = false, ["f"] = false, ["n"] = false,
}

local function parse_int(text)
  local t = trim(text):gsub("_", "")
  if not t:match("^[+-]?%d+$") then return nil end
  local v = tonumber(t)
  if not v or math.abs(v) > 2^53 then return nil end
  return v
end

local function parse_float(text)
  local t = trim(text):lower()
  local sign, word = t:match("^([+-]?)(%a+)$")
  if word == "inf" or word == "infinity" then
    return sign == "-" and -math.huge or math.huge
  elseif word == "nan" then
    return 0 / 0
  end
  -- Decimal notation only (tonumber alone would also take hex).
  if not (t:match("^[+-]?%d+%.?%d*$") or t:match("^[+-]?%.%d+$")
          or t:match("^[+-]?%d+%.?%d*e[+-]?%d+$") or t:match("^[+-]?%.%d+e[+-]?%d+$")) then
    return nil
  end
  return tonumber(t)
end

local function describe_json_type(v)
  if type(v) == "table" then return "an object" end
  if v == cjson.null then return "null" end
  return "a " .. type(v)
end

local function parse_list(text, element)
  local t = trim(text)
  if t:sub(1, 1) ~= "[" then return nil, "expected a JSON array such as [\"a\", \"b\"]" end
  local decoded, err = cjson.decode(t)
  if decoded == nil then return nil, "invalid JSON (" .. tostring(err) .. ")" end
  local out = {}
  for i = 1, #decoded do
    local v = decoded[i]
    if element == "str" then
      if type(v) ~= "string" then
        return nil, ("element %d is %s; expected a string"):format(i, describe_json_type(v))
      end
      out[i] = v
    else
      local n = type(v) == "number" and v or (type(v) == "string" and parse_float(v))
      if not n then
        return nil, ("element %d is %s; expected a number"):format(i, describe_json_type(v))
      end
      out[i] = n
    end
  end
  -- cjson gives arrays with holes for [1,null,2]; reject anything that is not a plain array.
  for k in pairs(decoded) do
    if type(k) ~= "number" or k < 1 or k > #decoded then
      return nil, "expected a JSON array"
    end
  end
  return out
end

local TYPE_NAMES = {
  str = "a string", ["str?"] = "a string", int = "an integer", ["int?"] = "an integer",
  float = "a number (inf, -inf and nan accepted)", bool = "a boolean (true/false/1/0/yes/no/on/off)",
  list_str = "a JSON array of strings", list_float = "a JSON array of numbers",
}

-- Returns value, or nil and the reason (without the variable name).
local function parse_value(row, text)
  local ty = row.type
  if ty == "str" or ty == "str?" then
    if row.max_length and #text > row.max_length then
      return nil, ("longer than %d characters"):format(row.max_length)
    end
    if row.pattern and not text:match(row.pattern) then
      return nil, "expected " .. row.pattern_help
    end
    if row.choices then
      for _, c in ipairs(row.choices) do
        if c:upper() == text:upper() then return text end
      end
      return nil, "expected one of " .. table.concat(row.choices, ", ")
    end
    return text
  elseif ty == "int" or ty == "int?" then
    if ty == "int?" and trim(text) == "" then return nil end
    local v = parse_int(text)
    if not v then return nil, "expected " .. TYPE_NAMES[ty] end
    return v
  elseif ty == "float" then
    local v = parse_float(text)
    if not v then return nil, "expected " .. TYPE_NAMES[ty] end
    return v
  elseif ty == "bool" then
    local v = BOOLS[trim(text):lower()]
    if v == nil then return nil, "expected " .. TYPE_NAMES[ty] end
    return v
  elseif ty == "list_str" then
    return parse_list(text, "str")
  elseif ty == "list_float" then
    return parse_list(text, "float")
  end
  error("settings: unknown type " .. tostring(ty) .. " for " .. row.env)
end

local function check_range(row, v)
  if type(v) ~= "number" then return true end
  if row.finite and (v ~= v or v == math.huge or v == -math.huge) then
    return false, "expected a finite number"
  end
  if row.min and v < row.min then
    return false, ("out of range: must be >= %s"):format(row.min)
  end
  if row.max and v > row.max then
    return false, ("out of range: must be <= %s"):format(row.max)
  end
  return true
end

-- --- .env files ----------------------------------------------------------------------

-- Parses dotenv text: KEY=VALUE lines, optional "export ", '#' comments, single or double
-- quotes (double quotes understand \n, \t, \" and \\). Returns {KEY = value} or nil, err.
function M.parse_dotenv(text, origin)
  local out = {}
  local lineno = 0
  for line in (text .. "\n"):gmatch("([^\n]*)\n") do
    lineno = lineno + 1
    line = line:gsub("\r$", "")
    local s = trim(line)
    if s ~= "" and s:sub(1, 1) ~= "#" then
      s = s:gsub("^export%s+", "")
      local key, rest = s:match("^([%w_%.%-]+)%s*=%s*(.*)$")
      if not key then
        return nil, ("%s:%d: expected KEY=VALUE"):format(origin or ".env", lineno)
      end
      local value
      local q = rest:sub(1, 1)
      if q == '"' or q == "'" then
        local close = rest:find(q, 2, true)
        while close and q == '"' and rest:sub(close - 1, close - 1) == "\\" do
          close = rest:find(q, close + 1, true)
        end
        if not close then
          return nil, ("%s:%d: unterminated quoted value"):format(origin or ".env", lineno)
        end
        value = rest:sub(2, close - 1)
        if q == '"' then
          value = value:gsub("\\(.)", { n = "\n", t = "\t", ['"'] = '"', ["\\"] = "\\" })
        end
      else
        value = trim((rest:gsub("%s+#.*$", "")))
      end
      out[key] = value
    end
  end
  return out
end


-- --- loading -------------------------------------------------------------------------

local Settings = {}
Settings.__index = function(_, key)
  if by_field[key] then return nil end
  if key == "_sources" then return nil end
  error(("unknown setting '%s'"):format(tostring(key)), 2)
end

local function copy_default(v)
  if type(v) ~= "table" then return v end
  local out = {}
  for i, x in ipairs(v) do out[i] = x end
  return out
end

local function expand_home(path)
  if path:sub(1, 1) == "~" and (path:sub(2, 2) == "/" or #path == 1) then
    local home = os.getenv("HOME") or ""
    return home .. path:sub(2)
  end
  return path
end

local current

-- settings.load{env = table?, dotenv = path|false?} -> settings | nil, message.
-- env defaults to the process environment; dotenv defaults to "./.env" (false: none).
function M.load(opts)
  opts = opts or {}
  local env = opts.env
  if not env then env = sys.environ() end
  local lower_env = {}
  for k, v in pairs(env) do lower_env[k:lower()] = v end
  local dot = {}
  local dotenv_path = opts.dotenv
  if dotenv_path == nil then dotenv_path = ".env" end
  if dotenv_path then
    local text = read_file(dotenv_path)
    if text then
      local parsed, err = M.parse_dotenv(text, dotenv_path)
      if not parsed then return nil, "settings: " .. err end
      for k, v in pairs(parsed) do dot[k:lower()] = v end
    end
  end

  local values, sources, problems = {}, {}, {}
  for _, row in ipairs(SPEC) do
    local name = row.env:lower()
    local text, source = lower_env[name], "environment"
    if text == nil then text, source = dot[name], dotenv_path end
    local value
    if text == nil then
      value, source = copy_default(row.default), "default"
    else
      local v, err = parse_value(row, text)
      if err == nil then
        local ok, range_err = check_range(row, v)
        if not ok then err = range_err end
      end
      if err then
        local shown = (row.secret or row.url_secret) and "<hidden>" or ("'" .. text .. "'")
        problems[#problems + 1] = ("%s=%s (from %s): %s"):format(row.env, shown, source, err)
      end
      value = v
    end
    if row.expand_home and type(value) == "string" then value = expand_home(value) end
    values[row.field] = value
    sources[row.field] = source
  end
  if #problems > 0 then
    return nil, "invalid settings:\n  " .. table.concat(problems, "\n  ")
  end
  values._sources = sources
  local s = setmetatable(values, Settings)
  if not opts.env then current = s end
  return s
end

-- The settings the host loaded at start-up (loads them on first use otherwise).
function M.current()
  if not current then current = assert(M.load()) end
  return current
end

-- --- display -------------------------------------------------------------------------

-- Masks the password of a URL: scheme://user:secret@host -> scheme://user:***@host.
function M.mask_url(url)
  if type(url) ~= "string" then return url end
  local masked = url:gsub("^([%w+.-]+://[^:/@]*):[^@/]*@", "%1:***@")
  -- A URL with only a password (redis://:secret@host) is covered by the same pattern.
  return masked
end

local function show(v)
  if v == nil then return "(unset)" end
  if type(v) == "table" then
    local parts = {}
    for i, x in ipairs(v) do
      parts[i] = type(x) == "string" and ("%q"):format(x) or tostring(x)
    end
    return "[" .. table.concat(parts, ", ") .. "]"
  end
  return tostring(v)
end

-- One "NAME=value  (source)" line per setting, secrets masked.
function M.describe(s)
  local lines = {}
  for _, row in ipairs(SPEC) do
    local v = s[row.field]
    local text
    if row.secret then
      text = v == nil and "(unset)" or "***"
    elseif row.url_secret then
      text = show(M.mask_url(v))
    else
      text = show(v)
    end
    local source = rawget(s, "_sources") and s._sources[row.field] or "default"
    lines[#lines + 1] = ("%s=%s  (%s)"):format(row.env, text, source)
  end
  return table.concat(lines, "\n") .. "\n"
end

return M
