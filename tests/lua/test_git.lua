-- ctest: labels=git timeout=120
-- loreley.git on real repositories made with the git CLI: opening, revisions, commit
-- details, changed files (compared with git's own --numstat), blob reads, corrupted
-- objects, shallow clones and misuse.
local t = require "support.t"
local g = require "support.gitrepo"
local git = require "loreley.git"
local sys = require "loreley.sys"

local root = t.tmpdir()

-- Compares changed_files with what git itself prints for the same commit.
local function check_against_git(repo, dir, commit)
  local ours = assert(repo:changed_files(commit))
  local expected = g.numstat(dir, commit)
  local statuses = g.name_status(dir, commit)
  local seen = {}
  for _, c in ipairs(ours) do
    local e = expected[c.path]
    t.ok(e, "git does not list " .. c.path)
    t.eq(c.insertions, e.insertions, c.path .. " insertions")
    t.eq(c.deletions, e.deletions, c.path .. " deletions")
    t.eq(c.binary, e.binary, c.path .. " binary")
    t.eq(c.old_path, e.old_path, c.path .. " old_path")
    local lines = e.insertions + e.deletions
    t.eq(c.change_count, lines > 0 and lines or 1, c.path .. " change_count")
    local letter = ({ added = "A", modified = "M", deleted = "D", renamed = "R",
      copied = "C", typechange = "T" })[c.status]
    t.eq(letter, statuses[c.path], c.path .. " status")
    seen[c.path] = true
  end
  for path in pairs(expected) do t.ok(seen[path], "missing from changed_files: " .. path) end
  return ours
end

local function by_path(list)
  local m = {}
  for _, c in ipairs(list) do m[c.path] = c end
  return m
end

-- A history with every kind of change. The lines of big.txt are rewritten in places so
-- the counts depend on the diff itself, not on file sizes.
local work = g.init(root .. "/work")
local lines = {}
for i = 1, 200 do lines[i] = ("line %d of the big file\n"):format(i) end
local big1 = table.concat(lines)
for _, i in ipairs { 3, 4, 50, 51, 52, 120 } do lines[i] = ("changed line %d\n"):format(i) end
table.insert(lines, 10, "an inserted line\n")
table.remove(lines, 180)
local big2 = table.concat(lines)
local rename_src = {}
for i = 1, 30 do rename_src[i] = ("def f%d(): return %d\n"):format(i, i) end
local renamed_body = table.concat(rename_src)
rename_src[7] = "def f7(): return 'seven'\n"

local UNICODE = "dir with space/naïve ✓ file.py"
local c_root = g.commit(work, {
  ["README.md"] = "# demo\n\nhello\n",
  ["src/main.py"] = "import os\n\nprint('hi')\n",
  ["src/old_name.py"] = renamed_body,
  ["big.txt"] = big1,
  ["image.bin"] = "\0\1\2binary\0data\n",
  ["no_newline.txt"] = "last line without newline",
  ["empty.txt"] = "",
  ["to_delete.txt"] = "one\ntwo\nthree\n",
  ["typechange.txt"] = "a\nb\n",
  [UNICODE] = "x = 1\n",
}, "root commit")
local c_second = (function()
  g.git(work, "mv", "src/old_name.py", "src/new_name.py")
  g.git(work, "rm", "-q", "typechange.txt")
  assert(sys.run { "ln", "-s", "README.md", work .. "/typechange.txt" })
  return g.commit(work, {
    ["src/new_name.py"] = table.concat(rename_src),
    ["big.txt"] = big2,
    ["image.bin"] = "\0\1\2binary\0data, changed\n",
    ["no_newline.txt"] = "last line without newline\n",
    ["to_delete.txt"] = false,
    [UNICODE] = "x = 2\ny = 3\n",
    ["src/main.py"] = "import sys\n\nprint('hi')\nprint('bye')\n",
  }, "second: rename, delete, binary, typechange, unicode")
end)()
g.git(work, "tag", "v1")
g.git(work, "tag", "-a", "-m", "annotated", "v1-annotated")

-- A merge: the feature branch changes main.py, main changes README.md.
g.git(work, "checkout", "-q", "-b", "feature")
local c_feature = g.commit(work, { ["src/feature.py"] = "feature = True\n" }, "feature")
g.git(work, "checkout", "-q", "main")
local c_main_side = g.commit(work, { ["README.md"] = "# demo\n\nhello, world\n" }, "main side")
g.git(work, "merge", "-q", "--no-ff", "-m", "merge feature", "feature")
local c_merge = g.rev(work, "HEAD")

-- A submodule entry (a gitlink) added, then moved to another commit.
g.git(work, "update-index", "--add", "--cacheinfo", "160000," .. c_root .. ",vendor/lib")
g.git(work, "commit", "-q", "-m", "add submodule")
local c_sub_add = g.rev(work, "HEAD")
g.git(work, "update-index", "--cacheinfo", "160000," .. c_second .. ",vendor/lib")
g.git(work, "commit", "-q", "-m", "move submodule")
local c_sub_move = g.rev(work, "HEAD")

local repo = assert(git.open(work))

t.case("open: roots of work trees, bare repositories and .git directories", function()
  t.eq(repo:path(), work)
  t.eq(repo:is_bare(), false)
  local bare = root .. "/bare.git"
  g.git(root, "clone", "-q", "--bare", work, bare)
  local b = assert(git.open(bare))
  t.eq(b:path(), bare)
  t.eq(b:is_bare(), true)
  t.eq(b:resolve("main"), g.rev(work, "main"))
  b:close()
  local dotgit = assert(git.open(work .. "/.git"))
  t.eq(dotgit:resolve("HEAD"), g.rev(work, "HEAD"))
  dotgit:close()
end)

t.case("open: not a repository (plain directory, subdirectory, missing path)", function()
  local plain = root .. "/plain"
  assert(sys.run { "mkdir", "-p", plain })
  local r, err = git.open(plain)
  t.eq(r, nil)
  t.eq(err, plain .. " is not a git repository")
  -- No search in parent directories, like the contract's Repo(root).
  r, err = git.open(work .. "/src")
  t.eq(r, nil)
  t.eq(err, work .. "/src is not a git repository")
  r, err = git.open(root .. "/does/not/exist")
  t.eq(r, nil)
  t.match(err, "is not a git repository$")
  t.raises(function() git.open() end, "bad argument #1")
end)

t.case("remotes and their URLs", function()
  local clone = root .. "/remotes"
  g.git(root, "clone", "-q", work, clone)
  g.git(clone, "remote", "add", "mirror", "https://user:secret@example.com/o/r.git")
  local r = assert(git.open(clone))
  local remotes = r:remotes()
  table.sort(remotes, function(a, b) return a.name < b.name end)
  t.same(remotes, { { name = "mirror", url = "https://user:secret@example.com/o/r.git" },
    { name = "origin", url = work } })
  t.eq(r:remote_url("origin"), work)
  local url, err = r:remote_url("nope")
  t.eq(url, nil)
  t.eq(err, "no remote named nope")
  t.same(repo:remotes(), {})
  r:close()
end)

t.case("resolve: hashes, branches, tags, relative revisions", function()
  t.eq(repo:resolve("HEAD"), g.rev(work, "HEAD"))
  t.eq(repo:resolve("main"), g.rev(work, "main"))
  t.eq(repo:resolve("feature"), c_feature)
  t.eq(repo:resolve("v1"), c_second)
  t.eq(repo:resolve("v1-annotated"), c_second)   -- annotated tags are peeled
  t.eq(repo:resolve(c_second:sub(1, 10)), c_second)
  t.eq(repo:resolve(c_second:upper()), c_second)
  t.eq(repo:resolve(c_merge .. "^1"), c_main_side)
  t.eq(repo:resolve(c_merge .. "^2"), c_feature)
  local h, err = repo:resolve("no-such-branch")
  t.eq(h, nil)
  t.eq(err, "revision no-such-branch not found")
  -- A blob is not a commit.
  local blob = g.trim(g.git(work, "rev-parse", c_root .. ":README.md"))
  h, err = repo:resolve(blob)
  t.eq(h, nil)
  t.match(err, "is a blob, not a commit")
  h, err = repo:resolve("a\0b")
  t.eq(h, nil)
  t.match(err, "NUL")
end)

t.case("a hash that exists nowhere is an error, not a crash", function()
  local nowhere = "0123456789abcdef0123456789abcdef01234567"
  t.eq(g.try(work, "cat-file", "-e", nowhere).code ~= 0, true)   -- git agrees
  local h, err = repo:resolve(nowhere)
  t.eq(h, nil)
  t.eq(err, "revision " .. nowhere .. " not found")
  t.eq(repo:has_commit(nowhere), false)
  local files, ferr = repo:changed_files(nowhere)
  t.eq(files, nil)
  t.match(ferr, "not found")
  local info, ierr = repo:commit_info(nowhere)
  t.eq(info, nil)
  t.match(ierr, "not found")
  local content, reason = repo:read(nowhere, "README.md")
  t.eq(content, nil)
  t.eq(reason, "revision not found")
end)

t.case("has_commit: commits only, full or abbreviated", function()
  t.eq(repo:has_commit(c_root), true)
  t.eq(repo:has_commit(c_root:sub(1, 12)), true)
  t.eq(repo:has_commit(g.trim(g.git(work, "rev-parse", c_root .. "^{tree}"))), false)
  t.eq(repo:has_commit("not a hash"), false)
  t.eq(repo:has_commit(""), false)
  t.eq(repo:has_commit("abc"), false)   -- shorter than git's minimum prefix
end)

t.case("head: branch, detached HEAD, unborn branch", function()
  local h, branch = repo:head()
  t.eq(h, g.rev(work, "HEAD"))
  t.eq(branch, "main")
  local det = root .. "/detached"
  g.git(root, "clone", "-q", work, det)
  g.git(det, "checkout", "-q", "--detach", c_second)
  local r = assert(git.open(det))
  h, branch = r:head()
  t.eq(h, c_second)
  t.eq(branch, nil)
  t.eq(r:resolve("HEAD"), c_second)
  t.eq(#assert(r:changed_files("HEAD")), #assert(repo:changed_files(c_second)))
  r:close()
  local empty = g.init(root .. "/empty")
  r = assert(git.open(empty))
  local none, err = r:head()
  t.eq(none, nil)
  t.match(err, "unborn")
  none, err = r:resolve("HEAD")
  t.eq(none, nil)
  t.match(err, "not found")
  r:close()
end)

t.case("commit_info matches git log", function()
  local info = assert(repo:commit_info(c_merge))
  t.eq(info.hash, c_merge)
  t.same(info.parents, { c_main_side, c_feature })
  t.eq(info.tree, g.rev(work, c_merge .. "^{tree}"))
  t.eq(info.author, "Ada Tester")
  t.eq(info.email, "ada@example.org")
  t.eq(info.time, tonumber(g.trim(g.git(work, "log", "-1", "--format=%at", c_merge))))
  t.eq(info.offset, 60)
  t.eq(info.summary, "merge feature")
  t.eq(info.message, g.git(work, "log", "-1", "--format=%B", c_merge):sub(1, #info.message))
  t.eq(info.shallow, false)
  t.same(assert(repo:commit_info(c_root)).parents, {})
end)

t.case("changed_files: root commit lists the whole tree like git show --numstat", function()
  local files = check_against_git(repo, work, c_root)
  t.eq(#files, 10)
  local m = by_path(files)
  t.eq(m["big.txt"].insertions, 200)
  t.eq(m["big.txt"].status, "added")
  t.eq(m["image.bin"].binary, true)
  t.eq(m["image.bin"].change_count, 1)
  t.eq(m["empty.txt"].insertions, 0)
  t.eq(m["empty.txt"].change_count, 1)    -- lines or 1
  t.ok(m[UNICODE], "the non-ASCII path is raw UTF-8, not git's quoted form")
end)

t.case("changed_files: modify, delete, rename, binary, typechange, spaces and UTF-8", function()
  local files = check_against_git(repo, work, c_second)
  local m = by_path(files)
  t.eq(m["src/new_name.py"].status, "renamed")
  t.eq(m["src/new_name.py"].old_path, "src/old_name.py")
  t.eq(m["src/new_name.py"].insertions, 1)
  t.eq(m["src/new_name.py"].deletions, 1)
  t.eq(m["src/old_name.py"], nil)
  t.eq(m["to_delete.txt"].status, "deleted")
  t.eq(m["to_delete.txt"].deletions, 3)
  t.eq(m["image.bin"].binary, true)
  t.eq(m["image.bin"].insertions, 0)
  t.eq(m["typechange.txt"].status, "typechange")
  t.eq(m[UNICODE].status, "modified")
  t.eq(m["no_newline.txt"].insertions, 1)
  t.eq(m["no_newline.txt"].deletions, 1)
  -- Sorted by path, as git prints them.
  for i = 2, #files do t.ok(files[i - 1].path < files[i].path, "order at " .. i) end
end)

t.case("changed_files: a merge commit is diffed against its first parent", function()
  local files = check_against_git(repo, work, c_merge)
  t.eq(#files, 1)
  t.eq(files[1].path, "src/feature.py")
  t.eq(files[1].status, "added")
  t.same(by_path(assert(repo:changed_files(c_main_side)))["README.md"] ~= nil, true)
end)

t.case("changed_files: a submodule entry (gitlink)", function()
  local added = check_against_git(repo, work, c_sub_add)
  t.eq(#added, 1)
  t.eq(added[1].path, "vendor/lib")
  t.eq(added[1].status, "added")
  t.eq(added[1].insertions, 1)
  local moved = check_against_git(repo, work, c_sub_move)
  t.eq(moved[1].insertions, 1)
  t.eq(moved[1].deletions, 1)
  local content, reason = repo:read(c_sub_move, "vendor/lib")
  t.eq(content, nil)
  t.eq(reason, "not a file")
end)

t.case("read: content, missing, too large, binary, directory", function()
  local expected = g.git(work, "show", c_second .. ":big.txt")
  t.eq(repo:read(c_second, "big.txt"), expected)
  t.eq(repo:read(c_second, "big.txt", #expected), expected)
  t.eq(repo:read("v1", UNICODE), "x = 2\ny = 3\n")
  t.eq(repo:read(c_root, "empty.txt"), "")
  t.eq(repo:size(c_second, "big.txt"),
    tonumber(g.trim(g.git(work, "cat-file", "-s", c_second .. ":big.txt"))))
  local content, reason, msg = repo:read(c_second, "big.txt", #expected - 1)
  t.eq(content, nil)
  t.eq(reason, "too large")
  t.match(msg, tostring(#expected) .. " bytes")
  content, reason = repo:read(c_second, "to_delete.txt")
  t.eq(content, nil)
  t.eq(reason, "missing")
  t.eq(select(2, repo:size(c_second, "to_delete.txt")), "missing")
  t.eq(select(2, repo:read(c_root, "image.bin")), "binary")
  t.eq(select(2, repo:read(c_root, "src")), "not a file")
  t.eq(select(2, repo:read(c_root, "src/main.py/x")), "missing")
  t.eq(select(2, repo:read("no-such-rev", "README.md")), "revision not found")
  -- A tree id works as a tree-ish.
  t.eq(repo:read(g.rev(work, c_root .. "^{tree}"), "README.md"), "# demo\n\nhello\n")
  t.raises(function() repo:read(c_root, "") end, "path must not be empty")
  t.raises(function() repo:read(c_root, "x", -1) end, "max_bytes")
end)

t.case("read: the size is checked before the blob is loaded", function()
  -- A large loose blob whose compressed body is cut short: the header still reads, so
  -- size() and a too-small limit answer without inflating the rest; a full read fails.
  local dir = g.init(root .. "/truncated")
  local chunk = {}
  for i = 1, 20000 do chunk[i] = ("%08x\n"):format((i * 2654435761) % 4294967296) end
  local c = g.commit(dir, { ["huge.txt"] = table.concat(chunk) })
  local blob = g.trim(g.git(dir, "rev-parse", c .. ":huge.txt"))
  local path = g.object_file(dir .. "/.git", blob)
  local data = assert(t.read(path))
  assert(sys.run { "chmod", "u+w", path })
  t.write(path, data:sub(1, 64))
  local r = assert(git.open(dir))
  t.eq(r:size(c, "huge.txt"), 20000 * 9)
  local content, reason = r:read(c, "huge.txt", 1000)
  t.eq(content, nil)
  t.eq(reason, "too large")
  content, reason = r:read(c, "huge.txt")
  t.eq(content, nil)
  t.eq(reason, "error")
  r:close()
end)

t.case("corrupted objects return errors, never crash", function()
  local dir = g.init(root .. "/corrupt")
  local c1 = g.commit(dir, { ["a.txt"] = "alpha\n", ["b.txt"] = "beta\n" })
  local c2 = g.commit(dir, { ["a.txt"] = "alpha 2\n" })
  local blob = g.trim(g.git(dir, "rev-parse", c2 .. ":a.txt"))
  local function clobber(hash, bytes)
    local path = g.object_file(dir .. "/.git", hash)
    assert(sys.run { "chmod", "u+w", path })
    t.write(path, bytes)
  end
  clobber(blob, "this is not zlib data at all")
  t.ok(g.try(dir, "cat-file", "-p", blob).code ~= 0, "git also fails to read it")
  local r = assert(git.open(dir))
  local content, reason, msg = r:read(c2, "a.txt")
  t.eq(content, nil)
  t.eq(reason, "error")
  t.match(msg, blob)
  local files, err = r:changed_files(c2)
  t.eq(files, nil)
  t.match(err, "cannot")
  t.eq(r:read(c2, "b.txt"), "beta\n")           -- the rest of the repository still reads
  t.eq(#assert(r:changed_files(c1)), 2)
  -- A commit object replaced by another valid object (bit rot that still inflates):
  -- the content no longer hashes to its name.
  r:close()
  local other = g.trim(g.git(dir, "rev-parse", c1 .. ":b.txt"))
  clobber(c2, assert(t.read(g.object_file(dir .. "/.git", other))))
  r = assert(git.open(dir))
  local h, herr = r:resolve(c2)
  t.eq(h, nil)
  t.ok(herr and #herr > 0)
  local has, has_err = r:has_commit(c2)
  t.ok(has == false or (has == nil and has_err), "has_commit of a corrupted commit")
  local info, ierr = r:commit_info(c2)
  t.eq(info, nil)
  t.ok(ierr)
  files, err = r:changed_files(c2)
  t.eq(files, nil)
  t.ok(err)
  t.eq(r:resolve(c1), c1)
  r:close()
  -- A loose object cut short (libgit2 1.5 alone would spin for ever on it).
  local b_blob = g.trim(g.git(dir, "rev-parse", c1 .. ":b.txt"))
  local b_file = g.object_file(dir .. "/.git", b_blob)
  clobber(b_blob, assert(t.read(b_file)):sub(1, 8))
  r = assert(git.open(dir))
  files, err = r:changed_files(c1)
  t.eq(files, nil)
  t.match(err, "truncated")
  local content2, reason2 = r:read(c1, "b.txt")
  t.eq(content2, nil)
  t.eq(reason2, "error")
  r:close()
end)

t.case("shallow clone: the boundary commit is diffed like a root commit", function()
  local clone = root .. "/shallow"
  g.git(root, "clone", "-q", "--depth", "1", "file://" .. work, clone)
  local r = assert(git.open(clone))
  t.eq(r:is_shallow(), true)
  local head = r:head()
  t.eq(head, g.rev(work, "main"))
  local info = assert(r:commit_info(head))
  t.same(info.parents, {})
  t.eq(info.shallow, true)
  t.eq(g.trim(g.git(clone, "log", "-1", "--format=%P")), "")   -- git agrees
  local files = check_against_git(r, clone, head)
  t.ok(#files > 5, "the whole tree")
  -- A new commit on top diffs against the boundary normally.
  g.git(clone, "config", "user.name", "x")
  local c = g.commit(clone, { ["README.md"] = "shallow change\n" })
  files = check_against_git(r, clone, c)
  t.eq(#files, 1)
  t.eq(assert(r:commit_info(c)).shallow, false)
  r:close()
end)

t.case("a closed repository raises; close is idempotent", function()
  local r = assert(git.open(work))
  t.match(tostring(r), "^loreley.git.repo %(")
  r:close()
  r:close()
  t.eq(tostring(r), "loreley.git.repo (closed)")
  t.raises(function() r:resolve("HEAD") end, "repository is closed")
  t.raises(function() r:changed_files("HEAD") end, "repository is closed")
  t.raises(function() r:read("HEAD", "README.md") end, "repository is closed")
  t.raises(function() r:fetch("origin") end, "repository is closed")
  t.raises(function() repo.resolve({}, "HEAD") end, "bad argument #1")
end)

t.case("the library reports its libgit2", function()
  t.match(git.libgit2_version, "^%d+%.%d+%.%d+$")
  t.eq(type(git.features.https), "boolean")
  t.eq(git.features.threads, true)
end)

repo:close()
t.finish()
