-- ctest: labels=git
-- repo:commit writes a commit straight into the object database: git itself must see
-- the parent, the tree (changed, added and removed files), the author and the ref.
local t = require "support.t"
local g = require "support.gitrepo"
local git = require "loreley.git"

local dir = t.tmpdir() .. "/origin.git"
local work = t.tmpdir() .. "/work"
g.init(work)
local base = g.commit(work, { ["a.py"] = "print(1)\n", ["dir/b.py"] = "x = 2\n", ["gone.txt"] = "bye\n" }, "base")
assert(require("loreley.sys").run { "git", "clone", "-q", "--bare", work, dir })

t.case("commit on a bare repository with a job ref; git reads it back", function()
  local repo = assert(git.open(dir))
  local hash = assert(repo:commit {
    parent = base,
    files = { ["a.py"] = "print(2)\n", ["new/c.py"] = "y = 3\n", ["gone.txt"] = false },
    message = "job: change a, add c, drop gone",
    author = "Loreley Worker", email = "worker@loreley.local", time = 1700000000,
    ref = "refs/heads/evolution/job/1234",
  })
  t.match(hash, "^%x+$")
  t.eq(#hash, 40)
  t.eq(g.trim(g.git(dir, "rev-parse", "evolution/job/1234")), hash)
  t.eq(g.trim(g.git(dir, "rev-parse", hash .. "^")), base)
  t.eq(g.git(dir, "show", hash .. ":a.py"), "print(2)\n")
  t.eq(g.git(dir, "show", hash .. ":new/c.py"), "y = 3\n")
  t.eq(g.git(dir, "show", hash .. ":dir/b.py"), "x = 2\n")
  t.eq(g.try(dir, "cat-file", "-e", hash .. ":gone.txt").code ~= 0, true, "gone.txt removed")
  t.eq(g.trim(g.git(dir, "log", "-1", "--format=%an <%ae> %at %s", hash)),
    "Loreley Worker <worker@loreley.local> 1700000000 job: change a, add c, drop gone")
  t.eq(g.try(dir, "fsck", "--strict").code, 0, "fsck")
  -- loreley.git's own view agrees with git's numstat
  local files = assert(repo:changed_files(hash))
  local by = {}
  for _, f in ipairs(files) do by[f.path] = f end
  t.eq(by["a.py"].status, "modified")
  t.eq(by["new/c.py"].status, "added")
  t.eq(by["gone.txt"].status, "deleted")
  repo:close()
end)

t.case("bad input: unknown parent, bad ref, missing fields", function()
  local repo = assert(git.open(dir))
  local ok, err = repo:commit { parent = ("0"):rep(40), files = {}, message = "m", author = "a", email = "e" }
  t.eq(ok, nil)
  t.match(err, "not found")
  t.raises(function() repo:commit { parent = base, files = {}, message = "m", author = "a",
    email = "e", ref = "heads/x" } end, "ref must be a full name")
  t.raises(function() repo:commit { parent = base, files = { ["a"] = 1 }, message = "m" } end,
    "parent, message, author and email are required")
  t.raises(function() repo:commit { parent = base, files = {}, message = "m", author = "a",
    email = "e", colour = "red" } end, "unknown option 'colour'")
  repo:close()
end)

t.finish()
