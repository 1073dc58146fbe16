-- Builds real git repositories for the tests with the git CLI (through loreley.sys.run),
-- and reads what git itself says about them (numstat, cat-file), so expected values
-- never come from loreley.git.
local sys = require "loreley.sys"

local M = {}

-- A fixed identity and clock, and no user or system configuration.
local ENV = {
  GIT_AUTHOR_NAME = "Ada Tester", GIT_AUTHOR_EMAIL = "ada@example.org",
  GIT_COMMITTER_NAME = "Ada Tester", GIT_COMMITTER_EMAIL = "ada@example.org",
  GIT_AUTHOR_DATE = "2025-01-02T03:04:05+01:00", GIT_COMMITTER_DATE = "2025-01-02T03:04:05+01:00",
  GIT_CONFIG_GLOBAL = "/dev/null", GIT_CONFIG_NOSYSTEM = "1", GIT_TERMINAL_PROMPT = "0",
  LANG = "C", LC_ALL = "C",
}
M.ENV = ENV

-- Runs `git -C dir args...`; returns stdout, or raises with git's stderr.
function M.git(dir, ...)
  local argv = { "git", "-C", dir }
  for _, a in ipairs { ... } do argv[#argv + 1] = a end
  local r = assert(sys.run(argv, { env = ENV, timeout = 60 }))
  if r.code ~= 0 then
    error(("%s failed (%s): %s"):format(table.concat(argv, " "), tostring(r.code), r.stderr), 2)
  end
  return r.stdout
end

-- Like M.git but returns the whole result (code, stdout, stderr) without raising.
function M.try(dir, ...)
  local argv = { "git", "-C", dir }
  for _, a in ipairs { ... } do argv[#argv + 1] = a end
  return assert(sys.run(argv, { env = ENV, timeout = 60 }))
end

function M.trim(s) return (s:gsub("%s+$", "")) end

-- git init (work tree, or bare when bare is true) on branch main.
function M.init(dir, bare)
  assert(sys.run { "mkdir", "-p", dir })
  if bare then M.git(dir, "init", "-q", "--bare", "-b", "main") else M.git(dir, "init", "-q", "-b", "main") end
  return dir
end

local function write(path, content)
  local parent = path:match("^(.*)/[^/]*$")
  if parent then assert(sys.run { "mkdir", "-p", parent }) end
  local f = assert(io.open(path, "wb"))
  f:write(content)
  f:close()
end
M.write = write

-- Applies files ({path = content | false to delete}) and commits everything; returns
-- the new commit's hash. Keys are applied in sorted order.
function M.commit(dir, files, message)
  local paths = {}
  for p in pairs(files or {}) do paths[#paths + 1] = p end
  table.sort(paths)
  for _, p in ipairs(paths) do
    local content = files[p]
    if content == false then
      M.git(dir, "rm", "-q", "-r", "--", p)
    else
      write(dir .. "/" .. p, content)
    end
  end
  M.git(dir, "add", "-A")
  M.git(dir, "commit", "-q", "--allow-empty", "-m", message or "change")
  return M.trim(M.git(dir, "rev-parse", "HEAD"))
end

function M.rev(dir, rev) return M.trim(M.git(dir, "rev-parse", "--verify", rev)) end

-- Parses `--numstat -z` output into {path = {insertions, deletions, binary, old_path}}.
local function parse_numstat(out)
  local result, pos = {}, 1
  while pos <= #out do
    local ins, del, rest = out:match("^([%d%-]+)\t([%d%-]+)\t()", pos)
    if not ins then break end
    pos = rest
    local path, old_path
    if out:sub(pos, pos) == "\0" then          -- a rename: \0old\0new\0
      local a, b = out:find("\0", pos + 1, true)
      old_path = out:sub(pos + 1, a - 1)
      local c = out:find("\0", a + 1, true)
      path = out:sub(a + 1, c - 1)
      pos = c + 1
    else
      local a = out:find("\0", pos, true)
      path = out:sub(pos, a - 1)
      pos = a + 1
    end
    local binary = ins == "-"
    result[path] = {
      insertions = binary and 0 or tonumber(ins), deletions = binary and 0 or tonumber(del),
      binary = binary, old_path = old_path,
    }
  end
  return result
end

-- What git says commit changed against its first parent (or, for a root commit, the
-- whole tree), renames detected as `git show` does by default.
function M.numstat(dir, commit)
  local parents = M.trim(M.git(dir, "log", "-1", "--format=%P", commit))
  if parents == "" then
    return parse_numstat(M.git(dir, "show", "--numstat", "-z", "-M", "--format=", commit))
  end
  local first = parents:match("^(%x+)")
  return parse_numstat(M.git(dir, "diff", "--numstat", "-z", "-M", first, commit))
end

-- {path = status letter} from `git diff --name-status` (first parent or root).
function M.name_status(dir, commit)
  local parents = M.trim(M.git(dir, "log", "-1", "--format=%P", commit))
  local out
  if parents == "" then
    out = M.git(dir, "show", "--name-status", "-z", "-M", "--format=", commit)
  else
    out = M.git(dir, "diff", "--name-status", "-z", "-M", parents:match("^(%x+)"), commit)
  end
  local fields = {}
  for f in out:gmatch("([^%z]*)%z") do fields[#fields + 1] = f end
  local result, i = {}, 1
  while i <= #fields do
    local status = fields[i]
    if status:match("^[RC]") then
      result[fields[i + 2]] = status:sub(1, 1)
      i = i + 3
    else
      result[fields[i + 1]] = status
      i = i + 2
    end
  end
  return result
end

-- The path of the loose object file of an object.
function M.object_file(gitdir, hash)
  return ("%s/objects/%s/%s"):format(gitdir, hash:sub(1, 2), hash:sub(3))
end

return M
