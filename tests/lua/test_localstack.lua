-- ctest: labels=pg;redis timeout=300
-- loreley.localstack starts real PostgreSQL and Redis servers on loopback, restarts
-- them on the same port, and stops them.
local t = require "support.t"
local localstack = require "loreley.localstack"
local sys = require "loreley.sys"

local dir = t.tmpdir()

t.case("postgres: start, query, restart on the same port, stop", function()
  local pg = assert(localstack.postgres { dir = dir .. "/pg" })
  t.match(pg.url, "^postgresql://postgres:postgres@127%.0%.0%.1:%d+/loreley$")
  t.eq(assert(pg:psql("SELECT 40 + 2")):gsub("%s", ""), "42")
  local port = pg.port
  assert(pg:restart())
  t.eq(pg.port, port)
  t.eq(assert(pg:psql("SELECT current_database()")):gsub("%s", ""), "loreley")
  local pid = pg:pid()
  t.ok(pid and sys.alive(pid))
  assert(pg:stop())
  t.ok(not sys.alive(pid), "postmaster still running after stop")
  -- A second start reuses the data directory (no initdb).
  assert(pg:start())
  t.eq(assert(pg:psql("SELECT 1")):gsub("%s", ""), "1")
  pg:kill()
  t.ok(not pg.running)
end)

t.case("redis: start, command, password, kill", function()
  local r = assert(localstack.redis { dir = dir .. "/redis", password = "p@ss word" })
  t.match(r.url, "^redis://:p%%40ss%%20word@127%.0%.0%.1:%d+/0$")
  t.eq(r:cli("SET", "k", "v"), "OK")
  t.eq(r:cli("GET", "k"), "v")
  local pid = r:pid()
  r:kill()
  t.ok(not sys.alive(pid))
  assert(r:start())
  t.eq(r:cli("PING"), "PONG")
  r:stop()
end)

t.finish()
