-- ctest: labels=git timeout=120
-- loreley.git fetch: a commit that exists only on the remote until fetched, from a
-- plain path, a file:// URL and a git:// daemon (the smart protocol over TCP on
-- loopback); job branches under WORKER_REPO_JOB_BRANCH_PREFIX, tags, a bare commit id,
-- a shallow clone, errors and the timeout.
local t = require "support.t"
local g = require "support.gitrepo"
local git = require "loreley.git"
local sys = require "loreley.sys"
local host = require "loreley.host"

local root = t.tmpdir()
local JOB = "0c6f3a51-5a7e-4f7e-9a53-3f1f2d8d9b10"

-- The remote: a work tree with main, an unrelated branch and, later, job branches.
local upstream = g.init(root .. "/upstream")
g.commit(upstream, { ["app.py"] = "print('v1')\n", ["lib/util.py"] = "X = 1\n" }, "base")

-- Adds a job branch with one commit on top of main in upstream; returns its hash.
local function push_job(prefix, id, files)
  g.git(upstream, "checkout", "-q", "-b", prefix .. "/" .. id, "main")
  local h = g.commit(upstream, files, "job " .. id)
  g.git(upstream, "checkout", "-q", "main")
  return h
end

local function clone(name, url, extra)
  local dir = root .. "/" .. name
  local args = { "clone", "-q" }
  for _, a in ipairs(extra or {}) do args[#args + 1] = a end
  args[#args + 1] = url
  args[#args + 1] = dir
  g.git(root, unpack(args))
  return dir
end

t.case("path remote: a job commit appears only after fetch", function()
  local dir = clone("path-clone", upstream)
  local r = assert(git.open(dir))
  local job = push_job("evolution/job", JOB, { ["app.py"] = "print('v2')\nprint('more')\n" })
  g.git(upstream, "tag", "job-tag", job)
  t.eq(r:has_commit(job), false)
  local missing, merr = r:resolve(job)
  t.eq(missing, nil)
  t.match(merr, "not found")
  local ok, stats = r:fetch("origin")
  t.eq(ok, true, tostring(stats))
  t.ok(stats.refs >= 1, "updated refs")
  t.eq(r:has_commit(job), true)
  t.eq(r:resolve("refs/remotes/origin/evolution/job/" .. JOB), job)
  t.eq(r:resolve("job-tag"), job)                      -- tags come along
  -- What git itself sees in the clone after our fetch.
  t.eq(g.rev(dir, "origin/evolution/job/" .. JOB), job)
  local files = assert(r:changed_files(job))
  local expected = g.numstat(dir, job)
  t.eq(#files, 1)
  t.eq(files[1].path, "app.py")
  t.eq(files[1].insertions, expected["app.py"].insertions)
  t.eq(files[1].deletions, expected["app.py"].deletions)
  t.eq(r:read(job, "app.py"), "print('v2')\nprint('more')\n")
  r:close()
end)

t.case("file:// remote: only job branches and tags when asked so", function()
  local dir = clone("file-clone", "file://" .. upstream)
  local r = assert(git.open(dir))
  local job = push_job("evolution/job", "second", { ["lib/util.py"] = "X = 2\n" })
  g.git(upstream, "checkout", "-q", "-b", "unrelated", "main")
  local unrelated = g.commit(upstream, { ["other.txt"] = "o\n" }, "unrelated")
  g.git(upstream, "checkout", "-q", "main")
  g.git(upstream, "tag", "later-tag", unrelated)
  assert(r:fetch("origin", { configured = false, tags = false }))
  t.eq(r:has_commit(job), true)
  t.eq(r:resolve("origin/evolution/job/second"), job)
  -- Not a job branch: no ref for it. (libgit2's local transport copies every object
  -- the remote has, so only the refs tell; the git:// case checks the objects.)
  t.eq(r:resolve("origin/unrelated"), nil)
  t.eq(r:resolve("later-tag"), nil)
  -- Tags alone bring the tagged commit.
  assert(r:fetch("origin", { configured = false, prefix = false, tags = true }))
  t.eq(r:resolve("later-tag"), unrelated)
  r:close()
end)

t.case("a custom job branch prefix (WORKER_REPO_JOB_BRANCH_PREFIX)", function()
  local dir = clone("prefix-clone", upstream, { "--single-branch", "--no-tags" })
  local r = assert(git.open(dir))
  local job = push_job("lab/jobs", "j1", { ["app.py"] = "print('lab')\n" })
  -- A single-branch clone's configured refspec covers main only.
  assert(r:fetch("origin", { prefix = "evolution/job", tags = false }))
  t.eq(r:has_commit(job), false)
  assert(r:fetch("origin", { prefix = "lab/jobs/", tags = false }))
  t.eq(r:resolve("refs/remotes/origin/lab/jobs/j1"), job)
  t.raises(function() r:fetch("origin", { prefix = "bad..prefix" }) end, "not a valid branch prefix")
  t.raises(function() r:fetch("origin", { prefix = 7 }) end, "'prefix' must be a string or false")
  r:close()
end)

t.case("url.<base>.insteadOf rewriting and a remote name with dots", function()
  local dir = clone("alias-clone", upstream)
  g.git(dir, "config", "url." .. root .. "/.insteadOf", "alias:")
  g.git(dir, "remote", "add", "my.mirror", "alias:upstream")
  local r = assert(git.open(dir))
  t.eq(r:remote_url("my.mirror"), "alias:upstream")     -- as configured
  local names = {}
  for _, rem in ipairs(r:remotes()) do names[#names + 1] = rem.name end
  t.same(names, { "origin", "my.mirror" })
  local job = push_job("evolution/job", "alias", { ["alias.txt"] = "a\n" })
  local ok, err = r:fetch("my.mirror", { configured = false })
  t.eq(ok, true, tostring(err))
  t.eq(r:resolve("refs/remotes/my.mirror/evolution/job/alias"), job)
  r:close()
end)

t.case("a commit on no branch, fetched by its id", function()
  local dir = clone("commit-clone", upstream)
  local r = assert(git.open(dir))
  local tree = g.trim(g.git(upstream, "rev-parse", "main^{tree}"))
  local dangling = g.trim(g.git(upstream, "commit-tree", "-p", "main", "-m", "dangling", tree))
  g.git(upstream, "update-ref", "refs/hidden/keep", dangling)   -- reachable, not advertised as a branch
  t.eq(r:has_commit(dangling), false)
  local ok, err = r:fetch("origin", { commit = dangling, configured = false, prefix = false,
    tags = false })
  t.eq(ok, true, tostring(err))
  t.eq(r:has_commit(dangling), true)
  local no, why = r:fetch("origin", { commit = "abc" })
  t.eq(no, nil)
  t.match(why, "not a full 40%-hex hash")
  r:close()
end)

t.case("fetch into a shallow clone", function()
  local dir = clone("shallow-clone", "file://" .. upstream, { "--depth", "1" })
  local r = assert(git.open(dir))
  t.eq(r:is_shallow(), true)
  local job = push_job("evolution/job", "shallow", { ["app.py"] = "print('shallow')\n" })
  assert(r:fetch("origin"))
  t.eq(r:has_commit(job), true)
  local files = assert(r:changed_files(job))
  t.eq(#files, 1)
  t.eq(files[1].path, "app.py")
  local expected = g.numstat(dir, job)
  t.eq(files[1].insertions, expected["app.py"].insertions)
  t.eq(files[1].deletions, expected["app.py"].deletions)
  -- libgit2 1.5 cannot deepen or make shallow fetches: asking is an error, not a no-op.
  if not git.features.shallow_fetch then
    t.raises(function() r:fetch("origin", { depth = 1 }) end, "libgit2 >= 1.7")
  end
  r:close()
end)

t.case("errors: unknown remote, unreachable URL, bad options", function()
  local dir = clone("err-clone", upstream)
  g.git(dir, "remote", "add", "gone", root .. "/no-such-repo")
  g.git(dir, "remote", "add", "secret", "https://user:hunter2@127.0.0.1:1/r.git")
  local r = assert(git.open(dir))
  local ok, err = r:fetch("nope")
  t.eq(ok, nil)
  t.eq(err, "no remote named nope")
  ok, err = r:fetch("gone")
  t.eq(ok, nil)
  t.match(err, "^fetch from gone failed: ")
  ok, err = r:fetch("secret", { timeout = 20 })
  t.eq(ok, nil)
  t.no_match(err, "hunter2")                        -- secrets never reach messages
  t.raises(function() r:fetch("origin", { tag = true }) end, "unknown option 'tag'")
  t.raises(function() r:fetch("origin", { timeout = 0 }) end, "'timeout' must be > 0")
  t.raises(function() r:fetch("origin", { credentials = { user = "x" } }) end,
    "unknown option 'user'")
  t.raises(function() r:fetch() end, "string expected")
  ok, err = r:fetch("origin", { configured = false, prefix = false, tags = false })
  t.eq(ok, nil)
  t.match(err, "nothing to fetch")
  r:close()
end)

-- A git daemon on loopback: the smart protocol over TCP, as with a real server.
local daemon_port = assert(sys.free_port())
local daemon = assert(sys.spawn({ "git", "daemon", "--reuseaddr", "--listen=127.0.0.1",
  "--port=" .. daemon_port, "--base-path=" .. root, "--export-all", "--informative-errors",
  root }, { stdout = root .. "/daemon.log", stderr = "stdout", env = g.ENV }))
local daemon_url = ("git://127.0.0.1:%d/upstream"):format(daemon_port)
local daemon_up = t.wait_for(10, function()
  return g.try(root, "ls-remote", daemon_url).code == 0
end, 0.1)

t.case("git:// remote served by git daemon", function()
  t.ok(daemon_up, "git daemon did not start: " .. tostring(t.read(root .. "/daemon.log")))
  local dir = clone("daemon-clone", daemon_url)
  local r = assert(git.open(dir))
  t.eq(r:remote_url("origin"), daemon_url)
  local job = push_job("evolution/job", "daemon", { ["net.py"] = "n = 1\n" })
  t.eq(r:has_commit(job), false)
  g.git(upstream, "checkout", "-q", "-b", "not-a-job", "main")
  local other = g.commit(upstream, { ["other.py"] = "o = 1\n" }, "not a job")
  g.git(upstream, "checkout", "-q", "main")
  local ok, stats = r:fetch("origin", { timeout = 30, configured = false, tags = false })
  t.eq(ok, true, tostring(stats))
  t.eq(r:has_commit(other), false)          -- the smart protocol sends only what was asked
  t.ok(stats.objects >= 3, "received objects: " .. tostring(stats.objects))
  t.ok(stats.bytes > 0)
  t.eq(r:has_commit(job), true)
  t.eq(assert(r:changed_files(job))[1].path, "net.py")
  r:close()
end)

t.case("timeout: a server that accepts and never answers", function()
  local ffi = require "ffi"
  ffi.cdef [[
    int socket(int domain, int type, int protocol);
    int bind(int fd, const void *addr, unsigned int len);
    int listen(int fd, int backlog);
    int close(int fd);
  ]]
  local port = assert(sys.free_port())
  local fd = ffi.C.socket(2, 1, 0)   -- AF_INET, SOCK_STREAM
  t.ok(fd >= 0)
  -- struct sockaddr_in: family, port (network order), 127.0.0.1, padding.
  local addr = ffi.new("uint8_t[16]")
  addr[0], addr[1] = 2, 0
  addr[2], addr[3] = math.floor(port / 256), port % 256
  addr[4], addr[5], addr[6], addr[7] = 127, 0, 0, 1
  t.eq(ffi.C.bind(fd, addr, 16), 0)
  t.eq(ffi.C.listen(fd, 8), 0)   -- the kernel completes handshakes; nobody answers
  local dir = clone("silent-clone", upstream)
  g.git(dir, "remote", "add", "silent", ("git://127.0.0.1:%d/x"):format(port))
  local r = assert(git.open(dir))
  local started = host.now()
  local ok, err, code = r:fetch("silent", { timeout = 0.5 })
  local elapsed = host.now() - started
  ffi.C.close(fd)   -- resets the waiting connection: the abandoned transfer ends
  t.eq(ok, nil)
  t.eq(err, "fetch from silent timed out after 0.5 s")
  t.eq(code, "timeout")
  t.ok(elapsed < 10, "returned after the timeout, not at the end of the transfer")
  -- The repository is still usable, and a fetch from a live remote works.
  assert(r:fetch("origin"))
  r:close()
end)

if daemon then
  sys.kill(daemon, "TERM")
  sys.wait(daemon, 5)
end
t.finish()
