-- Benchmark of loreley.git: changed_files on a commit touching 1,000 files, and read
-- of a 100 KB blob (loose, then packed after `git gc`). Medians of repeated runs.
--   build/loreley-host --once bench/git.lua
-- Targets (issue 6): changed_files <= 50 ms, read <= 0.2 ms.
local git = require "loreley.git"
local host = require "loreley.host"
local sys = require "loreley.sys"

local ENV = {
  GIT_AUTHOR_NAME = "Bench", GIT_AUTHOR_EMAIL = "bench@example.org",
  GIT_COMMITTER_NAME = "Bench", GIT_COMMITTER_EMAIL = "bench@example.org",
  GIT_CONFIG_GLOBAL = "/dev/null", GIT_CONFIG_NOSYSTEM = "1",
}

local function run(dir, ...)
  local argv = { "git", "-C", dir, ... }
  local r = assert(sys.run(argv, { env = ENV, timeout = 300 }))
  assert(r.code == 0, table.concat(argv, " ") .. ": " .. r.stderr)
  return (r.stdout:gsub("%s+$", ""))
end

local function write(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

local function median(samples)
  table.sort(samples)
  local n = #samples
  if n % 2 == 1 then return samples[(n + 1) / 2] end
  return (samples[n / 2] + samples[n / 2 + 1]) / 2
end

local function measure(runs, fn)
  local samples = {}
  for i = 1, runs do
    local t0 = host.now()
    fn()
    samples[i] = host.now() - t0
  end
  return median(samples), samples[1], samples[#samples]   -- median, min, max (sorted)
end

local dir = assert(sys.mkdtemp("/tmp/loreley-bench-git-"))
run(dir, "init", "-q", "-b", "main")

-- 1,000 source files of 60 lines in 20 directories.
local FILES, LINES = 1000, 60
local function file_text(i, version)
  local lines = {}
  for l = 1, LINES do
    local changed = version == 2 and (l % 15 == 0 or l == i % LINES + 1)
    lines[l] = changed and ("    value_%d_%d = compute(%d) + 1  # changed\n"):format(i, l, l)
      or ("    value_%d_%d = compute(%d)\n"):format(i, l, l)
  end
  return "def module_" .. i .. "():\n" .. table.concat(lines) .. "    return None\n"
end
for i = 1, FILES do
  local sub = ("%s/pkg%02d"):format(dir, i % 20)
  sys.run { "mkdir", "-p", sub }
  write(("%s/file%04d.py"):format(sub, i), file_text(i, 1))
end
-- A 100 KB text blob.
local big = {}
local size = 0
local n = 0
while size < 100 * 1024 do
  n = n + 1
  big[n] = ("line %06d: the quick brown fox jumps over the lazy dog %d\n"):format(n, n * 7919 % 100003)
  size = size + #big[n]
end
local big_text = table.concat(big):sub(1, 100 * 1024)
write(dir .. "/big.txt", big_text)
run(dir, "add", "-A")
run(dir, "commit", "-q", "-m", "base")
for i = 1, FILES do
  write(("%s/pkg%02d/file%04d.py"):format(dir, i % 20, i), file_text(i, 2))
end
run(dir, "add", "-A")
run(dir, "commit", "-q", "-m", "touch 1000 files")
local head = run(dir, "rev-parse", "HEAD")

local function bench(label)
  local repo = assert(git.open(dir))
  local files = assert(repo:changed_files(head))
  assert(#files == FILES, "expected 1000 changed files, got " .. #files)
  local ins = 0
  for _, f in ipairs(files) do ins = ins + f.insertions end
  local med, lo, hi = measure(21, function() assert(repo:changed_files(head)) end)
  print(("%-8s changed_files(1,000 files, %d insertions): median %.2f ms (min %.2f, max %.2f; 21 runs)")
    :format(label, ins, med * 1e3, lo * 1e3, hi * 1e3))
  assert(repo:read(head, "big.txt") == big_text)
  med, lo, hi = measure(2001, function() assert(repo:read(head, "big.txt", 200000)) end)
  print(("%-8s read(100 KB blob): median %.3f ms (min %.3f, max %.3f; 2,001 runs)")
    :format(label, med * 1e3, lo * 1e3, hi * 1e3))
  med = measure(2001, function() assert(repo:size(head, "big.txt")) end)
  print(("%-8s size(100 KB blob): median %.3f ms"):format(label, med * 1e3))
  med = measure(2001, function() assert(repo:resolve(head)) end)
  print(("%-8s resolve(full hash): median %.4f ms"):format(label, med * 1e3))
  repo:close()
end

print(("libgit2 %s"):format(git.libgit2_version))
bench("loose")
run(dir, "gc", "-q")
bench("packed")
sys.run { "rm", "-rf", dir }
