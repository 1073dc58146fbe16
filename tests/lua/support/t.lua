-- Test helpers for tests/lua/test_*.lua (each file is one CTest test, run with
-- `loreley-host --once`). A failed check raises; t.case isolates cases so one run
-- reports every failing case, then t.finish() raises if any failed.
local sys = require "loreley.sys"
local host = require "loreley.host"

local t = { failures = 0, cases = 0 }

local function fmt(v)
  if type(v) == "string" then return ("%q"):format(v) end
  return tostring(v)
end

local function fail(msg, level)
  error(msg, (level or 1) + 2)
end

function t.ok(v, msg)
  if not v then fail("expected a true value: " .. (msg or "")) end
  return v
end

function t.eq(actual, expected, msg)
  if actual ~= expected then
    fail(("%sexpected %s, got %s"):format(msg and (msg .. ": ") or "", fmt(expected), fmt(actual)))
  end
end

function t.near(actual, expected, tol, msg)
  tol = tol or 1e-9
  if type(actual) ~= "number" or math.abs(actual - expected) > tol then
    fail(("%sexpected %s (+-%g), got %s"):format(msg and (msg .. ": ") or "", fmt(expected),
      tol, fmt(actual)))
  end
end

function t.match(s, pattern, msg)
  if type(s) ~= "string" or not s:find(pattern) then
    fail(("%sexpected %s to match %q"):format(msg and (msg .. ": ") or "", fmt(s), pattern))
  end
end

function t.no_match(s, pattern, msg)
  if type(s) == "string" and s:find(pattern) then
    fail(("%sexpected %s not to match %q"):format(msg and (msg .. ": ") or "", fmt(s), pattern))
  end
end

-- Deep equality for plain tables.
local function deep_eq(a, b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then
    return type(a) == "number" and type(b) == "number" and a ~= a and b ~= b
  end
  for k, v in pairs(a) do if not deep_eq(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end
t.deep_eq = deep_eq

function t.same(actual, expected, msg)
  if not deep_eq(actual, expected) then
    local cjson = require "cjson"
    local function enc(v) local ok, s = pcall(cjson.encode, v) return ok and s or tostring(v) end
    fail(("%sexpected %s, got %s"):format(msg and (msg .. ": ") or "", enc(expected), enc(actual)))
  end
end

-- Expects fn to raise an error whose message matches pattern (plain find).
function t.raises(fn, pattern, msg)
  local ok, err = pcall(fn)
  if ok then fail("expected an error" .. (msg and (": " .. msg) or "")) end
  if pattern and not tostring(err):find(pattern, 1, true) then
    fail(("expected error containing %q, got %q"):format(pattern, tostring(err)))
  end
  return err
end

function t.case(name, fn)
  t.cases = t.cases + 1
  local ok, err = xpcall(fn, debug.traceback)
  if ok then
    io.stderr:write(("  ok    %s\n"):format(name))
  else
    t.failures = t.failures + 1
    io.stderr:write(("  FAIL  %s\n%s\n"):format(name, tostring(err)))
  end
end

function t.finish()
  io.stderr:write(("%d case(s), %d failed\n"):format(t.cases, t.failures))
  if t.failures > 0 then error(("%d of %d case(s) failed"):format(t.failures, t.cases), 0) end
end

-- Paths of the build under test.
t.host_binary = os.getenv("LORELEY_HOST") or "build/loreley-host"
t.source_dir = os.getenv("LORELEY_SOURCE_DIR") or "."
t.fixtures = t.source_dir .. "/tests/lua/fixtures"

-- A temporary directory removed when the test exits.
local tmpdirs = {}
function t.tmpdir()
  local dir = assert(sys.mkdtemp("/tmp/loreley-test-"))
  -- Open to other users: a PostgreSQL started by root runs as `postgres` and must reach it.
  sys.run { "chmod", "755", dir }
  tmpdirs[#tmpdirs + 1] = dir
  return dir
end
local cleanup = newproxy(true)
getmetatable(cleanup).__gc = function()
  if os.getenv("LORELEY_KEEP_TMP") then return end
  for _, d in ipairs(tmpdirs) do sys.run { "rm", "-rf", d } end
end
t._cleanup = cleanup

function t.write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  return path
end

function t.read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

-- Runs loreley-host with args; returns {code, signal, stdout, stderr}.
-- opts.env: overrides (string sets, false removes); opts.cwd; opts.timeout (default 60).
function t.run_host(args, opts)
  opts = opts or {}
  local argv = { t.host_binary }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local env = { LOG_FORMAT = false, NO_COLOR = "1" }
  for k, v in pairs(opts.env or {}) do env[k] = v end
  local r = assert(sys.run(argv, { env = env, cwd = opts.cwd, timeout = opts.timeout or 60 }))
  return r
end

-- Starts loreley-host in the background; returns pid and the path of its stderr log.
function t.spawn_host(args, opts)
  opts = opts or {}
  local argv = { t.host_binary }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local env = { LOG_FORMAT = false, NO_COLOR = "1" }
  for k, v in pairs(opts.env or {}) do env[k] = v end
  local log = opts.log or (t.tmpdir() .. "/host.log")
  local pid = assert(sys.spawn(argv, { env = env, cwd = opts.cwd, stdout = log, stderr = "stdout" }))
  return pid, log
end

-- Waits until fn() is true (polling); returns true, or false after timeout seconds.
function t.wait_for(timeout, fn, interval)
  local deadline = host.now() + timeout
  while host.now() < deadline do
    if fn() then return true end
    host.sleep(interval or 0.05)
  end
  return fn() and true or false
end

return t
