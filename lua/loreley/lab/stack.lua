-- loreley.lab.stack: the private PostgreSQL and Redis of a lab session, and one fresh
-- database per simulated run.
--
--   local stack = require "loreley.lab.stack"
--   local s = assert(stack.start(dir))            -- localstack servers under dir
--   local s = assert(stack.attach(pg_url, redis_url))   -- servers a parent lab started
--   assert(s:prepare())                           -- the template: clock + migrations
--   local url = assert(s:create_database(name))   -- a copy of the template
--   s:drop_database(name)   s:stop()
--   s.pg_url (the admin database)   s.redis_url
--
-- Every run gets its own database, copied from a template that already holds the
-- virtual clock (loreley.lab.clock) and every migration, so runs start from identical
-- files and never see each other's rows. Autovacuum is off on the private server: a
-- vacuum at a wall-clock moment would change the physical row order that breaks ties
-- in a query without a total ORDER BY; the lab vacuums itself at fixed points of a run.
-- Run databases use generic plans (plan_cache_mode): the tick queries are planned once
-- per connection instead of at every execution, whatever the statistics say.
local db = require "loreley.db"
local sys = require "loreley.sys"
local localstack = require "loreley.localstack"
local schema = require "loreley.schema"
local clock = require "loreley.lab.clock"

local M = {}
local Stack = {}
Stack.__index = Stack

M.TEMPLATE = "loreley_lab_template"

local function url_for(admin_url, name)
  return (admin_url:gsub("/[^/?]*$", "/" .. name, 1))
end

-- Database names the lab makes: letters, digits and underscores, at most 63 bytes.
function M.database_name(text)
  local name = text:lower():gsub("[^%w_]", "_")
  if not name:match("^[%a_]") then name = "r_" .. name end
  return name:sub(1, 63)
end

function M.start(dir)
  local ok, err = sys.run { "mkdir", "-p", dir }
  if not ok or ok.code ~= 0 then return nil, ("cannot create %s: %s"):format(dir, tostring(err)) end
  local pg, perr = localstack.postgres { dir = dir .. "/postgres" }
  if not pg then return nil, "PostgreSQL: " .. tostring(perr) end
  local redis, rerr = localstack.redis { dir = dir .. "/redis" }
  if not redis then
    pg:stop()
    return nil, "Redis: " .. tostring(rerr)
  end
  local s = setmetatable({ pg = pg, redis = redis, pg_url = pg.url, redis_url = redis.url,
    owner = true }, Stack)
  return s
end

function M.attach(pg_url, redis_url)
  return setmetatable({ pg_url = pg_url, redis_url = redis_url, owner = false }, Stack)
end

function Stack:admin()
  if not self.conn then
    local conn, err = db.connect(self.pg_url)
    if not conn then return nil, "PostgreSQL: " .. tostring(err) end
    self.conn = conn
  end
  return self.conn
end

local function drop(conn, name)
  return conn:script(('DROP DATABASE IF EXISTS "%s" WITH (FORCE)'):format(name))
end

-- (Re)creates the template database: the virtual clock, then the migrations (so column
-- defaults read the virtual clock too). Turns autovacuum off on the server.
function Stack:prepare()
  local conn, err = self:admin()
  if not conn then return nil, err end
  local ok
  ok, err = conn:script("ALTER SYSTEM SET autovacuum = off")
  if ok then ok, err = conn:query("SELECT pg_reload_conf()") end
  if not ok then return nil, "autovacuum off: " .. tostring(err) end
  ok, err = drop(conn, M.TEMPLATE)
  if ok then ok, err = conn:script(('CREATE DATABASE "%s"'):format(M.TEMPLATE)) end
  if not ok then return nil, "template database: " .. tostring(err) end
  local tconn
  tconn, err = db.connect(url_for(self.pg_url, M.TEMPLATE))
  if not tconn then return nil, "template database: " .. tostring(err) end
  ok, err = clock.install_database(tconn, M.TEMPLATE)
  tconn:close()
  if not ok then return nil, err end
  -- A new session, so the search_path set above applies to the migrations.
  tconn, err = db.connect(url_for(self.pg_url, M.TEMPLATE))
  if not tconn then return nil, "template database: " .. tostring(err) end
  ok, err = schema.migrate(tconn)
  tconn:close()
  if not ok then return nil, "migrations: " .. tostring(err) end
  return true
end

-- A fresh copy of the template; returns its URL. The clock schema comes with the copy;
-- the search_path, a per-database setting, is set again.
function Stack:create_database(name)
  local conn, err = self:admin()
  if not conn then return nil, err end
  local ok
  ok, err = drop(conn, name)
  if ok then
    ok, err = conn:script(('CREATE DATABASE "%s" TEMPLATE "%s"'):format(name, M.TEMPLATE))
  end
  if ok then
    ok, err = conn:script(('ALTER DATABASE "%s" SET search_path = public, loreley_lab, pg_catalog')
      :format(name))
  end
  if ok then
    ok, err = conn:script(('ALTER DATABASE "%s" SET plan_cache_mode = force_generic_plan')
      :format(name))
  end
  if not ok then return nil, ("database %s: %s"):format(name, tostring(err)) end
  return url_for(self.pg_url, name)
end

function Stack:drop_database(name)
  local conn = self:admin()
  if conn then drop(conn, name) end
end

function Stack:stop()
  if self.conn then self.conn:close() self.conn = nil end
  if self.owner then
    if self.redis then self.redis:stop() end
    if self.pg then self.pg:stop() end
  end
end

return M
