-- loreley.schema: the database migrations, built into the binary.
--
--   local schema = require "loreley.schema"
--   schema.migrate(conn)   -> {version = N, applied = {"002_job_indexes.sql", ...}}
--                             | nil, message, sqlstate
--   schema.status(conn)    -> {version = N, latest = M, pending = {names}, unknown = {versions}}
--                             | nil, message, sqlstate
--   schema.ensure(conn, settings) -> like migrate when LORELEY_AUTO_MIGRATE is true (the
--                             default); otherwise checks that nothing is pending
--   schema.main(args, settings) -> exit code        (loreley-host --init-db)
--   schema.MIGRATIONS      -> { {version = 1, name = "001_contract.sql"}, ... }
--
-- Each migration is lua/loreley/schema/NNN_name.sql. A migration is applied once and
-- recorded in loreley_schema_migrations (version, name, checksum, applied_at); every
-- statement in them is also idempotent (IF NOT EXISTS, CREATE OR REPLACE) and none drops
-- or rewrites data. All pending migrations run in one transaction under a transaction
-- advisory lock, so two hosts starting together apply them once.
local host = require "loreley.host"
local db = require "loreley.db"

local M = {}

-- Append only: never edit or reorder a released migration; add a new file instead.
M.MIGRATIONS = {
  { version = 1, name = "001_contract.sql" },
  { version = 2, name = "002_job_indexes.sql" },
  { version = 3, name = "003_host_tables.sql" },
  { version = 4, name = "004_dispatch_without_fk.sql" },
  { version = 5, name = "005_recovery_indexes.sql" },
  { version = 6, name = "006_control_log.sql" },
}
M.LATEST = M.MIGRATIONS[#M.MIGRATIONS].version
M.LOCK_KEY = db.lock_key("loreley-host:schema-migrations")

local VERSIONS_DDL = [[
CREATE TABLE IF NOT EXISTS loreley_schema_migrations (
  version    integer NOT NULL PRIMARY KEY,
  name       text NOT NULL,
  checksum   char(64) NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now()
)]]

-- The SQL text of a migration (raises when the binary lacks it: a build problem).
function M.sql(migration)
  local text, err = host.resource("loreley/schema/" .. migration.name)
  if not text then error("loreley.schema: " .. err, 2) end
  return text
end

local function applied_versions(conn)
  local rows, err, code = conn:query(
    "SELECT version, name, checksum FROM loreley_schema_migrations ORDER BY version")
  if not rows then return nil, err, code end
  local by_version = {}
  for _, r in ipairs(rows) do by_version[r.version] = r end
  return by_version
end

-- Applies every pending migration. Returns {version, applied = {names}}.
function M.migrate(conn)
  local result, err, code = conn:tx(function(c)
    local ok, lerr, lcode = c:query("SELECT pg_advisory_xact_lock($1::bigint)", M.LOCK_KEY)
    if not ok then return nil, lerr, lcode end
    ok, lerr, lcode = c:script(VERSIONS_DDL)
    if not ok then return nil, lerr, lcode end
    local done, derr, dcode = applied_versions(c)
    if not done then return nil, derr, dcode end
    local applied = {}
    for _, m in ipairs(M.MIGRATIONS) do
      local sql = M.sql(m)
      local checksum = host.sha256(sql)
      local row = done[m.version]
      if row then
        if row.checksum ~= checksum then
          host.warn("schema migration %s was applied with a different text (checksum %s, "
            .. "this binary has %s); it is not applied again", m.name, row.checksum:sub(1, 12),
            checksum:sub(1, 12))
        end
      else
        local sok, serr, scode = c:script(sql)
        if not sok then return nil, ("migration %s failed: %s"):format(m.name, serr), scode end
        local iok, ierr, icode = c:exec(
          "INSERT INTO loreley_schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
          m.version, m.name, checksum)
        if not iok then return nil, ierr, icode end
        applied[#applied + 1] = m.name
      end
    end
    local newest = M.LATEST
    for v in pairs(done) do
      if v > newest then newest = v end
    end
    return { version = newest, applied = applied }
  end)
  if not result then return nil, err, code end
  for _, name in ipairs(result.applied) do host.info("schema: applied %s", name) end
  return result
end

-- What is applied and what is pending, without changing anything.
function M.status(conn)
  local rows, err, code = conn:query(
    "SELECT to_regclass('loreley_schema_migrations') IS NOT NULL AS present")
  if not rows then return nil, err, code end
  local done = {}
  if rows[1].present then
    done, err, code = applied_versions(conn)
    if not done then return nil, err, code end
  end
  local version, pending, unknown, known = 0, {}, {}, {}
  for _, m in ipairs(M.MIGRATIONS) do
    known[m.version] = true
    if done[m.version] then
      version = math.max(version, m.version)
    else
      pending[#pending + 1] = m.name
    end
  end
  for v in pairs(done) do
    if not known[v] then unknown[#unknown + 1] = v end
  end
  table.sort(unknown)
  return { version = version, latest = M.LATEST, pending = pending, unknown = unknown }
end

-- Start-up: migrate (LORELEY_AUTO_MIGRATE=true, the default) or insist that nothing is
-- pending. Returns the migrate/status table, or nil, message.
function M.ensure(conn, settings)
  if settings == nil or settings.loreley_auto_migrate ~= false then
    return M.migrate(conn)
  end
  local st, err, code = M.status(conn)
  if not st then return nil, err, code end
  if #st.pending > 0 then
    return nil, ("database schema is not up to date (pending: %s) and LORELEY_AUTO_MIGRATE "
      .. "is off: run loreley-host --init-db"):format(table.concat(st.pending, ", "))
  end
  return st
end

-- loreley-host --init-db: connect with DATABASE_URL (or the DB_* settings), migrate.
function M.main(args, settings)
  if args and #args > 0 then
    host.error("--init-db takes no arguments (got '%s')", tostring(args[1]))
    return 2
  end
  settings = settings or require("loreley.settings").current()
  local url = db.settings_url(settings)
  local shown = require("loreley.settings").mask_url(url)
  local conn, err = db.connect(url)
  if not conn then
    host.error("init-db: %s", err)
    return 1
  end
  local result, merr = M.migrate(conn)
  conn:close()
  if not result then
    host.error("init-db: %s", merr)
    return 1
  end
  if #result.applied == 0 then
    host.info("init-db: schema of %s is up to date (version %d)", shown, result.version)
  else
    host.info("init-db: schema of %s migrated to version %d (%d migration(s) applied)", shown,
      result.version, #result.applied)
  end
  return 0
end

return M
