-- loreley.lab.clock: the policy lab's virtual clock and its deterministic identities.
--
--   local clock = require "loreley.lab.clock"
--   local c = clock.new(seed)          -- simulated time starts at clock.EPOCH
--   c:now() -> seconds since the start of the run      c:time() -> epoch seconds
--   c:set(seconds)                                      (never backwards)
--   c:uuid4() -> a version-4 UUID from the seeded id stream
--   local restore = c:install()        -- loreley.host.time/uuid4 now come from c
--   restore()
--   clock.install_database(conn)       -- now() of a database follows the virtual clock
--   c:sync(conn)                       -- writes the virtual time into that database
--
-- Everything the stages and the job store stamp or number goes through loreley.host
-- (host.time for archive timestamps and ingestion records, host.uuid4 for job, commit,
-- experiment and repository ids) or through PostgreSQL's now() (created_at,
-- scheduled_at, updated_at, the recovery stage's age tests). The lab process does
-- nothing but simulate, so for the length of a run it points the first two at the
-- virtual clock and the seeded id stream, and a database made with install_database
-- resolves now() to the clock's row. Time then advances only when the lab says so,
-- and the same seed gives the same ids, timestamps and orderings.
local host = require "loreley.host"

local M = {}

-- Simulated runs start at 2025-01-01T00:00:00Z, whatever the wall clock says.
M.EPOCH = 1735689600

local Clock = {}
Clock.__index = Clock

function M.new(seed)
  return setmetatable({ t = 0, ids = host.rng("loreley.lab.ids:" .. tostring(seed)),
    issued = 0 }, Clock)
end

function Clock:now() return self.t end
function Clock:time() return M.EPOCH + self.t end

function Clock:set(t)
  if t < self.t then
    error(("virtual clock cannot go back (from %.6f to %.6f)"):format(self.t, t), 2)
  end
  self.t = t
end

-- A version-4 UUID (RFC 9562 layout: version nibble 4, variant bits 10) whose 122
-- random bits come from the seeded stream.
function Clock:uuid4()
  local r = self.ids
  self.issued = self.issued + 1
  local a, b, c, d = r:below(2 ^ 32), r:below(2 ^ 32), r:below(2 ^ 32), r:below(2 ^ 32)
  return ("%08x-%04x-4%03x-%04x-%04x%08x"):format(a, math.floor(b / 65536),
    b % 4096, 32768 + c % 16384, math.floor(c / 65536) % 65536, d)
end

-- Points loreley.host.time and loreley.host.uuid4 at this clock; returns the function
-- that puts the real ones back.
function Clock:install()
  local real_time, real_uuid4 = host.time, host.uuid4
  host.time = function() return self:time() end
  host.uuid4 = function() return self:uuid4() end
  return function()
    host.time, host.uuid4 = real_time, real_uuid4
  end
end

-- The schema that gives a database a virtual now(). With the database's search_path
-- set to "public, loreley_lab, pg_catalog", an unqualified now() in any statement
-- (the job store's SQL, column defaults created afterwards) resolves to
-- loreley_lab.now(), which reads the single row the lab updates.
M.SCHEMA_SQL = [[
CREATE SCHEMA IF NOT EXISTS loreley_lab;
CREATE TABLE IF NOT EXISTS loreley_lab.clock (t timestamptz NOT NULL);
INSERT INTO loreley_lab.clock (t) SELECT to_timestamp(%d) WHERE NOT EXISTS (SELECT 1 FROM loreley_lab.clock);
CREATE OR REPLACE FUNCTION loreley_lab.now() RETURNS timestamptz
  LANGUAGE sql STABLE PARALLEL SAFE AS 'SELECT t FROM loreley_lab.clock';
]]

-- Creates the clock in the connected database and makes its now() virtual for every
-- session opened afterwards. Returns true or nil, message.
function M.install_database(conn, dbname)
  local ok, err = conn:script(M.SCHEMA_SQL:format(M.EPOCH))
  if not ok then return nil, "virtual clock schema: " .. tostring(err) end
  ok, err = conn:script(('ALTER DATABASE "%s" SET search_path = public, loreley_lab, pg_catalog')
    :format(dbname))
  if not ok then return nil, "virtual clock search_path: " .. tostring(err) end
  return true
end

local SQL_SYNC = "UPDATE loreley_lab.clock SET t = to_timestamp($1::float8)"

-- Writes the virtual time into the database (one statement).
function Clock:sync(conn)
  local n, err = conn:exec(SQL_SYNC, self:time())
  if not n then return nil, "virtual clock update: " .. tostring(err) end
  return true
end

return M
