-- loreley.localstack: private PostgreSQL and Redis servers on loopback ports, under a
-- directory of the caller's, for the demo, the policy lab and the test suite. Nothing
-- here touches system services.
--
--   local localstack = require "loreley.localstack"
--   local pg = assert(localstack.postgres{ dir = "/tmp/x/pg" })
--   pg.url            -- postgresql://postgres:postgres@127.0.0.1:PORT/loreley
--   pg:stop()  pg:start()  pg:restart()  pg:kill()  pg:psql("SELECT 1")
--   local redis = assert(localstack.redis{ dir = "/tmp/x/redis" })
--   redis.url  redis:stop()  redis:start()  redis:kill()  redis:cli("PING")
--
-- Servers stop when their object is garbage-collected or the host exits, unless
-- `keep = true` was given. Started as root, PostgreSQL runs as the `postgres` user
-- (initdb and postgres refuse root); its data then lives in a directory that user can
-- reach.
local sys = require "loreley.sys"
local read_file = sys.read_file
local write_file = sys.write_file
local host = require "loreley.host"

local M = {}

local function run(argv, opts)
  local r, err = sys.run(argv, opts)
  if not r then return nil, err end
  if r.code ~= 0 then
    local out = (r.stderr ~= "" and r.stderr or r.stdout):gsub("%s+$", "")
    return nil, ("%s failed (%s): %s"):format(argv[1]:match("[^/]+$"),
      r.code and ("exit " .. r.code) or ("signal " .. tostring(r.signal)), out), r
  end
  return r
end



local function log_tail(path, lines)
  local text = read_file(path)
  if not text then return "" end
  local all = {}
  for line in text:gmatch("[^\n]+") do all[#all + 1] = line end
  return table.concat(all, "\n", math.max(1, #all - (lines or 15) + 1))
end

local function mkdir_p(path)
  return run({ "mkdir", "-p", path })
end

local function wait_until(timeout, fn)
  local deadline = host.now() + timeout
  repeat
    if fn() then return true end
    host.sleep(0.05)
  until host.now() > deadline
  return fn()
end

-- Attaches a __gc sentinel that stops the server unless it was told to keep running.
local function guard(server)
  if server.keep then return end
  local proxy = newproxy(true)
  getmetatable(proxy).__gc = function()
    if server.running then pcall(server.stop, server, { mode = "immediate" }) end
  end
  server._gc = proxy
end

-- --- PostgreSQL ------------------------------------------------------------------------

local function find_pg_bindir()
  local env = os.getenv("LORELEY_PG_BINDIR")
  if env and env ~= "" then return env end
  for _, v in ipairs { "15", "16", "17", "14", "13" } do
    local dir = "/usr/lib/postgresql/" .. v .. "/bin"
    if sys.exists(dir .. "/pg_ctl") then return dir end
  end
  return nil
end

local Postgres = {}
Postgres.__index = Postgres

function Postgres:_as_owner(argv)
  if self.as_postgres then
    local wrapped = { "runuser", "-u", "postgres", "--" }
    for _, a in ipairs(argv) do wrapped[#wrapped + 1] = a end
    return wrapped
  end
  return argv
end

function Postgres:_url(database)
  local function enc(s)
    return (s:gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
  end
  return ("postgresql://%s:%s@127.0.0.1:%d/%s"):format(enc(self.user), enc(self.password),
    self.port, database or self.database)
end

-- Starts the server (initdb on first use). Returns true or nil, message.
function Postgres:start()
  if self.running then return true end
  local port = self.fixed_port or self.port or assert(sys.free_port())
  self.port = port   -- kept across restarts, so clients reconnect to the same URL
  local opts = table.concat({
    "-p", tostring(port), "-k", self.data, "-c", "listen_addresses=127.0.0.1",
    "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
    "-c", "max_connections=" .. tostring(self.max_connections),
    "-c", "shared_buffers=64MB", "-c", "log_min_messages=warning",
  }, " ")
  local ok, err = run(self:_as_owner {
    self.bindir .. "/pg_ctl", "-D", self.data, "-l", self.data .. "/server.log", "-w",
    "-t", "60", "-o", opts, "start" }, { timeout = 90 })
  if not ok then
    return nil, ("%s\n%s"):format(err, log_tail(self.data .. "/server.log"))
  end
  self.running = true
  self.url = self:_url()
  if not self.database_ready then
    local exists = self:psql(("SELECT 1 FROM pg_database WHERE datname = '%s'")
      :format(self.database), "postgres")
    if exists and not exists:match("1") then
      local _, cerr = self:psql(('CREATE DATABASE "%s"'):format(self.database), "postgres")
      if cerr then return nil, cerr end
    end
    self.database_ready = true
  end
  return true
end

-- mode: "fast" (default), "smart" or "immediate" (like a crash: no checkpoint).
function Postgres:stop(opts)
  if not self.running then return true end
  local mode = opts and opts.mode or "fast"
  local ok, err = run(self:_as_owner {
    self.bindir .. "/pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop" },
    { timeout = 90 })
  if not ok then return nil, err end
  self.running = false
  return true
end

function Postgres:restart(opts)
  local ok, err = self:stop(opts)
  if not ok then return nil, err end
  return self:start()
end

-- The server's process id (postmaster.pid), or nil.
function Postgres:pid()
  local text = self.as_postgres
    and (run({ "runuser", "-u", "postgres", "--", "cat", self.data .. "/postmaster.pid" }) or {}).stdout
    or read_file(self.data .. "/postmaster.pid")
  return text and tonumber(text:match("^(%d+)"))
end

-- The pids whose parent is pid (from /proc).
local function children_of(pid)
  local out = {}
  local listing = sys.run { "ls", "/proc" }
  for entry in (listing and listing.stdout or ""):gmatch("%d+") do
    local stat = read_file("/proc/" .. entry .. "/stat")
    local ppid = stat and stat:match("%) %a (%d+)")
    if ppid and tonumber(ppid) == pid then out[#out + 1] = tonumber(entry) end
  end
  return out
end

-- SIGKILL to the postmaster and its backends: the hardest way a database can go away.
-- Waits until every process is gone, so start() can follow at once.
function Postgres:kill()
  local pid = self:pid()
  if pid then
    local victims = children_of(pid)
    table.insert(victims, 1, pid)
    for _, p in ipairs(victims) do sys.kill(p, "KILL") end
    wait_until(10, function()
      for _, p in ipairs(victims) do if sys.alive(p) then return false end end
      return true
    end)
  end
  self.running = false
  return true
end

-- Runs SQL through psql over the Unix socket; returns its output or nil, message.
function Postgres:psql(sql, database)
  local r, err = run(self:_as_owner {
    self.bindir .. "/psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
    "-h", self.data, "-p", tostring(self.port), "-U", self.user, "-d", database or self.database,
    "-c", sql }, { timeout = 120 })
  if not r then return nil, err end
  return r.stdout
end

-- Stops the server and removes its data directory.
function Postgres:destroy()
  self:stop { mode = "immediate" }
  run { "rm", "-rf", self.data }
  return true
end

-- localstack.postgres{dir, port?, user?, password?, database?, keep?, max_connections?}
function M.postgres(opts)
  opts = opts or {}
  assert(type(opts.dir) == "string", "localstack.postgres: dir is required")
  local bindir = find_pg_bindir()
  if not bindir then
    return nil, "PostgreSQL server binaries not found: apt-get install postgresql-15"
  end
  local self = setmetatable({
    dir = opts.dir, bindir = bindir, fixed_port = opts.port, keep = opts.keep,
    user = opts.user or "postgres", password = opts.password or "postgres",
    database = opts.database or "loreley", max_connections = opts.max_connections or 100,
    as_postgres = sys.geteuid() == 0,
  }, Postgres)
  local ok, err = mkdir_p(opts.dir)
  if not ok then return nil, err end
  self.data = opts.dir .. "/data"
  if self.as_postgres then
    -- postgres must reach the data directory: when a parent is closed to it (a
    -- mkdtemp directory, /root), the data goes to a directory named after this one.
    local reach = sys.run { "runuser", "-u", "postgres", "--", "test", "-x", opts.dir }
    if not reach or reach.code ~= 0 then
      self.data = "/var/tmp/loreley-pg-" .. host.sha256(opts.dir):sub(1, 16)
    end
  end
  if not sys.exists(self.data .. "/PG_VERSION") then
    run { "rm", "-rf", self.data }
    local made, merr = mkdir_p(self.data)
    if not made then return nil, merr end
    if self.as_postgres then
      local chown, cerr = run { "chown", "postgres:postgres", self.data }
      if not chown then return nil, cerr end
    end
    run { "chmod", "700", self.data }
    local pwfile = self.data .. ".pwfile"   -- beside the data directory: initdb wants it empty
    write_file(pwfile, self.password .. "\n")
    if self.as_postgres then run { "chown", "postgres:postgres", pwfile } end
    local init, ierr = run(self:_as_owner {
      bindir .. "/initdb", "-D", self.data, "-U", self.user, "--pwfile=" .. pwfile,
      "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C",
      "--no-sync", "--no-instructions" }, { timeout = 120 })
    os.remove(pwfile)
    if not init then return nil, ierr end
  end
  local started, serr = self:start()
  if not started then return nil, serr end
  guard(self)
  return self
end

-- --- Redis -------------------------------------------------------------------------------

local Redis = {}
Redis.__index = Redis

function Redis:_cli_base()
  local argv = { "redis-cli", "-h", "127.0.0.1", "-p", tostring(self.port) }
  if self.password then
    argv[#argv + 1] = "--no-auth-warning"
    argv[#argv + 1] = "-a"
    argv[#argv + 1] = self.password
  end
  return argv
end

-- Runs one redis-cli command; returns its output or nil, message.
function Redis:cli(...)
  local argv = self:_cli_base()
  for _, a in ipairs { ... } do argv[#argv + 1] = tostring(a) end
  local r, err = run(argv, { timeout = 30 })
  if not r then return nil, err end
  return (r.stdout:gsub("\n$", ""))
end

function Redis:start()
  if self.running then return true end
  self.port = self.fixed_port or self.port or assert(sys.free_port())
  local argv = { "redis-server", "--port", tostring(self.port), "--bind", "127.0.0.1",
    "--dir", self.dir, "--daemonize", "yes", "--pidfile", self.dir .. "/redis.pid",
    "--logfile", self.dir .. "/redis.log", "--save", "",
    "--appendonly", self.persist and "yes" or "no" }
  if self.password then
    argv[#argv + 1] = "--requirepass"
    argv[#argv + 1] = self.password
  end
  local ok, err = run(argv, { timeout = 30 })
  if not ok then return nil, err end
  local up = wait_until(15, function()
    local r = sys.run(self:_cli_base_with("PING"), { timeout = 5 })
    return r and r.stdout:match("PONG")
  end)
  if not up then
    return nil, "redis-server did not answer PING:\n" .. log_tail(self.dir .. "/redis.log")
  end
  self.running = true
  local auth = self.password and (":" .. self.password:gsub("[^%w%-%._~]", function(c)
    return ("%%%02X"):format(c:byte()) end) .. "@") or ""
  self.url = ("redis://%s127.0.0.1:%d/0"):format(auth, self.port)
  return true
end

function Redis:_cli_base_with(...)
  local argv = self:_cli_base()
  for _, a in ipairs { ... } do argv[#argv + 1] = a end
  return argv
end

function Redis:pid()
  return tonumber((read_file(self.dir .. "/redis.pid") or ""):match("%d+"))
end

function Redis:stop()
  if not self.running then return true end
  local pid = self:pid()
  sys.run(self:_cli_base_with("SHUTDOWN", "NOSAVE"), { timeout = 10 })
  wait_until(10, function() return not (pid and sys.alive(pid)) end)
  if pid and sys.alive(pid) then sys.kill(pid, "KILL") end
  self.running = false
  return true
end

function Redis:kill()
  local pid = self:pid()
  if pid then sys.kill(pid, "KILL") end
  wait_until(10, function() return not (pid and sys.alive(pid)) end)
  self.running = false
  return true
end

function Redis:restart()
  self:stop()
  return self:start()
end

-- localstack.redis{dir, port?, password?, persist?, keep?}
function M.redis(opts)
  opts = opts or {}
  assert(type(opts.dir) == "string", "localstack.redis: dir is required")
  local ok, err = mkdir_p(opts.dir)
  if not ok then return nil, err end
  local self = setmetatable({ dir = opts.dir, fixed_port = opts.port, password = opts.password,
    persist = opts.persist, keep = opts.keep }, Redis)
  local started, serr = self:start()
  if not started then return nil, serr end
  guard(self)
  return self
end

return M
