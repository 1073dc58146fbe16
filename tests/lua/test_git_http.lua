-- ctest: labels=git timeout=120
-- loreley.git fetch over smart HTTP with credentials: a loopback server puts HTTP Basic
-- authentication in front of `git http-backend` (tests/lua/support/git_http_server.lua).
-- The same credential path serves https (TLS is libgit2's part).
local t = require "support.t"
local g = require "support.gitrepo"
local git = require "loreley.git"
local sys = require "loreley.sys"

local root = t.tmpdir()
local TOKEN = "tok-5ecret-value"
local upstream = g.init(root .. "/upstream")
g.commit(upstream, { ["app.py"] = "print('v1')\n" }, "base")

local port = assert(sys.free_port())
local ready = root .. "/ready"
local server = assert(sys.spawn({ t.host_binary, "--once",
  t.source_dir .. "/tests/lua/support/git_http_server.lua", "--",
  tostring(port), root, "x-access-token", TOKEN, ready },
  { stdout = root .. "/server.log", stderr = "stdout",
    env = { LUA_PATH = t.source_dir .. "/tests/lua/?.lua;;", LOG_FORMAT = false } }))
local up = t.wait_for(10, function() return sys.exists(ready) end, 0.05)
local url = ("http://127.0.0.1:%d/upstream"):format(port)

local function server_log() return t.read(root .. "/server.log") or "" end

-- A clone made with the git CLI (credentials in the URL once, then removed).
local dir = root .. "/clone"
local function clone_once()
  g.git(root, "clone", "-q", ("http://x-access-token:%s@127.0.0.1:%d/upstream"):format(TOKEN, port), dir)
  g.git(dir, "remote", "set-url", "origin", url)
end

local job_n = 0
local function new_job()
  job_n = job_n + 1
  local id = "job-" .. job_n
  g.git(upstream, "checkout", "-q", "-b", "evolution/job/" .. id, "main")
  local h = g.commit(upstream, { ["app.py"] = ("print(%d)\n"):format(job_n) }, id)
  g.git(upstream, "checkout", "-q", "main")
  return h
end

t.case("the server runs and refuses anonymous requests", function()
  t.ok(up, "server did not start: " .. server_log())
  local r = g.try(root, "ls-remote", url)
  t.ok(r.code ~= 0, "anonymous ls-remote must fail")
  clone_once()
end)

t.case("token from the options (user name defaults to x-access-token)", function()
  local r = assert(git.open(dir))
  local job = new_job()
  t.eq(r:has_commit(job), false)
  local ok, err = r:fetch("origin", { credentials = { token = TOKEN }, timeout = 30 })
  t.eq(ok, true, tostring(err))
  t.eq(r:has_commit(job), true)
  t.match(server_log(), "auth=ok")
  r:close()
end)

t.case("user name and password from the options", function()
  local r = assert(git.open(dir))
  local job = new_job()
  assert(r:fetch("origin", { credentials = { username = "x-access-token", password = TOKEN } }))
  t.eq(r:has_commit(job), true)
  r:close()
end)

t.case("credentials from the environment (LORELEY_GIT_TOKEN)", function()
  local r = assert(git.open(dir))
  local job = new_job()
  assert(sys.setenv("LORELEY_GIT_TOKEN", TOKEN))
  local ok, err = r:fetch("origin")
  assert(sys.setenv("LORELEY_GIT_TOKEN", nil))
  t.eq(ok, true, tostring(err))
  t.eq(r:has_commit(job), true)
  r:close()
end)

t.case("a wrong password fails once, and the message names no secret", function()
  local r = assert(git.open(dir))
  local job = new_job()
  local ok, err = r:fetch("origin", { credentials = { username = "x-access-token",
    password = "wrong-pass-123" }, timeout = 30 })
  t.eq(ok, nil)
  t.match(err, "authentication to .* failed %(tried: user name and password%)")
  t.no_match(err, "wrong%-pass%-123")
  t.eq(r:has_commit(job), false)
  r:close()
end)

t.case("no credentials: the message says what to set", function()
  local r = assert(git.open(dir))
  local ok, err = r:fetch("origin", { credentials = false })
  t.eq(ok, nil)
  t.match(err, "LORELEY_GIT_TOKEN")
  r:close()
end)

t.case("credentials inside the remote URL are used and never shown", function()
  local other = root .. "/url-clone"
  g.git(root, "clone", "-q", dir, other)
  g.git(other, "remote", "set-url", "origin",
    ("http://x-access-token:%s@127.0.0.1:%d/upstream"):format(TOKEN, port))
  local r = assert(git.open(other))
  local job = new_job()
  assert(r:fetch("origin", { credentials = false }))
  t.eq(r:has_commit(job), true)
  g.git(other, "remote", "set-url", "origin",
    ("http://x-access-token:%s@127.0.0.1:%d/upstream"):format("bad-url-secret", port))
  r:close()
  r = assert(git.open(other))
  local ok, err = r:fetch("origin", { credentials = false })
  t.eq(ok, nil)
  t.no_match(err, "bad%-url%-secret")
  r:close()
end)

sys.kill(server, "TERM")
sys.wait(server, 5)
t.finish()
