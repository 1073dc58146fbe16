-- ctest: labels=unit
-- loreley.descriptor through Lua: options from settings, hostile inputs on a real
-- filesystem (symlinks out of the root, "..", FIFOs, oversize, binary, invalid UTF-8,
-- CRLF, a 10 MB line, thousands of files), the pipeline in one call and its seams, the
-- reducer's rows and changes (SHAPES.md), save/load, bounds and clip.
local t = require "support.t"
local descriptor = require "loreley.descriptor"
local settings = require "loreley.settings"
local sys = require "loreley.sys"

local function count(tbl) local n = 0 for _ in pairs(tbl) do n = n + 1 end return n end

local function find(list, path)
  for _, e in ipairs(list) do if e.path == path then return e end end
end

local function mkdir(path) assert(sys.run { "mkdir", "-p", path }.code == 0) end

t.case("options come from a settings table, with the contract defaults", function()
  local s = assert(settings.load { env = {
    MAPELITES_PREPROCESS_MAX_FILES = "3", MAPELITES_CODE_EMBEDDING_DIMENSIONS = "64",
    MAPELITES_DIMENSION_REDUCTION_TARGET_DIMS = "2", LORELEY_DIMENSION_REDUCTION_WHITEN = "true",
    MAPELITES_FEATURE_LOWER_BOUNDS = "[-1]" }, dotenv = false })
  local o = descriptor.options(s)
  t.eq(o.max_files, 3)
  t.eq(o.dimensions, 64)
  t.eq(o.target_dims, 2)
  t.eq(o.whiten, true)
  t.eq(o.max_file_size_kb, 512)
  t.eq(o.allowed_extensions[1], ".py")
  t.eq(o.excluded_globs[1], "tests/**")
  t.eq(o.normalize, true)
  t.eq(o.clip, true)
  -- editing opts leaves the settings alone
  o.allowed_extensions[1] = ".zz"
  t.eq(s.mapelites_preprocess_allowed_extensions[1], ".py")
  local lo, hi = descriptor.bounds(s)
  t.same(lo, { -1, -1 })
  t.same(hi, { 6, 6 })
  t.same({ descriptor.bounds(o) }, { { -1, -1 }, { 6, 6 } })
  local d = descriptor.options()
  t.eq(d.max_files, nil, "no settings: nothing copied, defaults apply")
end)

t.case("misuse raises with the key named", function()
  t.raises(function() descriptor.preprocess({}, { max_file = 3 }) end, "unknown option 'max_file'")
  t.raises(function() descriptor.preprocess({}, { max_files = "3" }) end, "max_files")
  t.raises(function() descriptor.preprocess({}, { excluded_globs = { 1 } }) end, "excluded_globs")
  t.raises(function() descriptor.preprocess({}, { read = 5 }) end, "'read' must be a function")
  t.raises(function() descriptor.options({ mapelites_dimensionality_penultimate_normalize = "yes" }) end,
    "normalize")
  t.raises(function() descriptor.compute({}, { lower_bounds = { "a" } }) end, "lower_bounds")
  t.raises(function() descriptor.chunk({ { path = "a.py" } }, nil) end, "'content' must be a string")
  t.raises(function() descriptor.options({ mapelites_code_embedding_dimensions = 70000 }) end,
    "dimensions")
  local r = descriptor.reducer { target_dims = 2 }
  t.raises(function() r:observe("h", { 1, 0 / 0 }) end, "not finite")
  t.raises(function() r:observe("", { 1 }) end, "empty")
  t.raises(function() descriptor.clip({ 1, 2 }, { 0 }, { 1, 1 }) end, "lower bounds")
end)

t.case("hostile files on disk: symlinks out of the root, '..', FIFOs, oversize", function()
  local root = t.tmpdir() .. "/repo"
  local outside = t.tmpdir()
  mkdir(root .. "/src")
  t.write(outside .. "/secret.py", "password = 1\n")
  t.write(root .. "/src/real.py", "def real():\n    return 1\n")
  t.write(root .. "/src/big.py", string.rep("x = 1\n", 400))           -- 2400 bytes
  assert(sys.run { "ln", "-s", outside .. "/secret.py", root .. "/src/escape.py" }.code == 0)
  assert(sys.run { "ln", "-s", "../" .. "../" .. outside:match("[^/]+$") .. "/secret.py",
    root .. "/src/rel_escape.py" }.code == 0)
  assert(sys.run { "ln", "-s", "real.py", root .. "/src/alias.py" }.code == 0)
  assert(sys.run { "ln", "-s", "loop.py", root .. "/src/loop.py" }.code == 0)
  assert(sys.run { "mkfifo", root .. "/src/fifo.py" }.code == 0)
  local files = {
    { path = "src/escape.py", change_count = 9 },
    { path = "src/rel_escape.py", change_count = 9 },
    { path = "../" .. outside:match("[^/]+$") .. "/secret.py", change_count = 9 },
    { path = outside .. "/secret.py", change_count = 9 },
    { path = "src/alias.py", change_count = 8 },
    { path = "src/loop.py", change_count = 7 },
    { path = "src/fifo.py", change_count = 6 },
    { path = "src/big.py", change_count = 5 },
    { path = "src/missing.py", change_count = 4 },
  }
  local opts = { repo_root = root, max_files = 0, max_file_size_kb = 2 }
  local kept, skipped = descriptor.preprocess(files, opts)
  t.eq(#kept, 1)
  t.eq(kept[1].path, "src/real.py", "an inside symlink resolves to its target")
  t.eq(kept[1].content, "def real():\n    return 1")
  t.eq(#skipped, 8)
  for _, k in ipairs(kept) do
    t.no_match(k.content, "password", "never read outside the root")
  end
  local outside_count = 0
  for _, s in ipairs(skipped) do
    if s.reason:find("outside the repository root", 1, true) then outside_count = outside_count + 1 end
  end
  t.eq(outside_count, 4)
  t.match(find(skipped, "src/loop.py").reason, "symbolic links")
  t.match(find(skipped, "src/fifo.py").reason, "not a regular file")
  t.match(find(skipped, "src/big.py").reason, "larger than 2048 bytes")
  t.match(find(skipped, "src/missing.py").reason, "^unreadable")
end)

t.case("hostile content: binary, invalid UTF-8, CRLF, empty, a 10 MB line", function()
  local line = string.rep("value_1 = other + 2; ", 500000)               -- 10.5 MB
  local files = {
    { path = "bin.c", change_count = 9, content = "int x;\0\1\2" },
    { path = "utf.py", change_count = 8, content = "s = '\255\254ok'\r\nt = 1\r" },
    { path = "empty.py", change_count = 7, content = "" },
    { path = "long.js", change_count = 6, content = line },
    { path = "huge.js", change_count = 5, content = line },
  }
  local kept, skipped = descriptor.preprocess(files, { max_files = 0, max_file_size_kb = 16384 })
  t.eq(#kept, 3)
  t.eq(kept[1].content, "s = 'ok'\nt = 1")
  t.eq(#kept[2].content, #line - 1, "only the final strip (one trailing space)")
  t.match(find(skipped, "bin.c").reason, "NUL")
  t.match(find(skipped, "empty.py").reason, "empty")
  local chunked = descriptor.chunk({ kept[2] }, {})
  t.eq(#chunked[1].chunks, 1)
  t.eq(chunked[1].total_lines, 1)
  local v = assert(descriptor.embed(chunked, {}))
  t.eq(#v, 256)
  -- with the default limit the line is skipped before anything is copied
  local _, sk = descriptor.preprocess({ files[4] }, {})
  t.match(sk[1].reason, "larger than 524288 bytes")
end)

t.case("thousands of files in one commit", function()
  local files = {}
  for i = 1, 5000 do
    files[i] = { path = ("pkg/m%04d.py"):format(i), change_count = i % 113,
                 content = ("def f%d():\n    return %d\n"):format(i, i) }
  end
  local kept, skipped = descriptor.preprocess(files, {})
  t.eq(#kept, 6)
  t.eq(#skipped, 4994)
  t.eq(kept[1].change_count, 112)
  t.match(skipped[#skipped].reason, "MAPELITES_PREPROCESS_MAX_FILES")
  local m, info = descriptor.compute(files, { max_files = 0 })
  t.eq(#m, 4)
  t.eq(#info.kept, 5000)
  t.eq(info.chunk_count, 5000)
  t.eq(info.embedded_chunks, 512, "MAX_CHUNKS_PER_COMMIT caps the embedding")
end)

t.case("input coercion: strings, pairs and mappings as the reference accepts", function()
  local sel = descriptor.select({ "a.py", { "b.py", "7" }, { file = "c.py", lines_changed = 3 },
    { path = "d.py", change_count = 0, delta = 2 }, { path = 5 }, 42 }, {})
  t.eq(#sel, 4)
  t.eq(sel[1].path, "b.py")
  t.eq(sel[1].change_count, 7)
  t.eq(sel[2].path, "c.py")
  t.eq(sel[3].path, "d.py")
  t.eq(sel[3].change_count, 2, "0 is falsy: delta is used")
  t.eq(sel[4].path, "a.py")
end)

local CODE = {
  { path = "src/server.py", change_count = 30, content = [[
import socket

class Server:
    def __init__(self, host, port):
        self.host = host
        self.port = port

    def serve(self):
        with socket.socket() as s:
            s.bind((self.host, self.port))
            s.listen()
]] },
  { path = "src/util.c", change_count = 5, content = "int add(int a, int b) {\n    return a + b;\n}\n" },
  { path = "README.md", change_count = 50, content = "# readme\n" },
}

t.case("compute: one call from files to clipped measures", function()
  local opts = descriptor.options(nil)
  local m, info = descriptor.compute(CODE, opts)
  t.eq(#m, 4)
  t.eq(#info.kept, 2)
  t.eq(info.kept[1].path, "src/server.py")
  t.eq(#info.skipped, 1)
  t.eq(info.skipped[1].path, "README.md")
  t.eq(#info.embedding, 256)
  -- before any fit: the first four coordinates of the normalised embedding
  local norm = 0
  for _, x in ipairs(info.embedding) do norm = norm + x * x end
  for i = 1, 4 do t.near(m[i], info.embedding[i] / math.sqrt(norm), 1e-12) end
  -- the same as the steps one by one
  local kept = descriptor.preprocess(CODE, opts)
  local v = assert(descriptor.embed(descriptor.chunk(kept, opts), opts))
  t.same(v, info.embedding)
  -- deterministic, bit for bit
  local m2, info2 = descriptor.compute(CODE, opts)
  t.same(m2, m)
  t.same(info2.embedding, info.embedding)
  -- clipping to tight bounds
  local mc = descriptor.compute(CODE, { lower_bounds = { -0.01 }, upper_bounds = { 0.01 } })
  for i = 1, 4 do t.ok(mc[i] >= -0.01 and mc[i] <= 0.01) end
  local mu = descriptor.compute(CODE, { lower_bounds = { -0.01 }, upper_bounds = { 0.01 }, clip = false })
  t.same(mu, m)
end)

t.case("compute: early exits carry the reference's messages", function()
  local m, reason, info = descriptor.compute({ { path = "x.txt", content = "hi" } }, {})
  t.eq(m, nil)
  t.eq(reason, "No eligible files after preprocessing.")
  t.eq(#info.skipped, 1)
  m, reason = descriptor.compute(CODE, { embed = function() return nil, "offline" end })
  t.eq(reason, "Unable to derive final embedding.")
  m, reason = descriptor.compute({}, {})
  t.eq(reason, "No eligible files after preprocessing.")
end)

t.case("compute: the read and embed seams", function()
  local asked = {}
  local opts = {
    read = function(path, limit)
      asked[#asked + 1] = path
      t.eq(limit, 524288)
      if path == "gone.py" then return nil, "deleted in this commit" end
      return "def " .. path:gsub("%W", "_") .. "():\n    pass\n"
    end,
    embed = function(chunked)
      t.eq(#chunked, 1)
      t.eq(chunked[1].path, "here.py")
      t.eq(chunked[1].chunks[1].id, "here.py::chunk-0000")
      return { 3, 4, 0, 0, 0 }
    end,
  }
  local m, info = descriptor.compute({ { path = "here.py", change_count = 2 },
                                       { path = "gone.py", change_count = 1 } }, opts)
  t.same(asked, { "here.py", "gone.py" })
  t.match(find(info.skipped, "gone.py").reason, "deleted in this commit")
  t.same(info.embedding, { 3, 4, 0, 0, 0 })
  t.near(m[1], 0.6, 1e-15)
  t.near(m[2], 0.8, 1e-15)
  t.raises(function()
    descriptor.compute({ { path = "a.py" } }, { read = function() return 42 end })
  end, "opts.read")
end)

t.case("compute with a reducer records the commit", function()
  local r = descriptor.reducer { min_fit_samples = 3, refit_interval = 2, target_dims = 2 }
  local fitted_at
  for i = 1, 5 do
    local files = { { path = "m.py", change_count = 1,
                      content = ("def f%d(a, b):\n    return a * %d + b\n"):format(i, i * i) } }
    local m, info = descriptor.compute(files, { target_dims = 2 }, r, "commit" .. i)
    t.eq(#m, 2)
    t.eq(info.refitted, i == 3 or i == 5, "refit at 3 and 5 (" .. i .. ")")
    if info.refitted then fitted_at = true end
  end
  t.ok(fitted_at)
  t.eq(r:history_len(), 5)
  t.ok(r:fitted())
  local st = r:stats()
  t.eq(st.history_len, 5)
  t.eq(st.feature_count, 256)
  t.eq(st.samples_since_fit, 0)
  t.eq(st.components, 2)
  t.raises(function() descriptor.compute(CODE, {}, r) end, "bad argument")
end)

local function unpack_vector(s)
  local out = {}
  for i = 1, #s / 8 do
    local b = { s:byte(8 * i - 7, 8 * i) }
    -- little-endian float64
    local sign = b[8] >= 128 and -1 or 1
    local exp = (b[8] % 128) * 16 + math.floor(b[7] / 16)
    local mant = b[7] % 16
    for k = 6, 1, -1 do mant = mant * 256 + b[k] end
    if exp == 0 and mant == 0 then out[i] = 0 * sign
    else out[i] = sign * (1 + mant / 2 ^ 52) * 2 ^ (exp - 1023) end
  end
  return out
end

local function vec(i, F)
  local v = {}
  for d = 1, F do v[d] = math.sin(i * d * 0.7) + (d == (i % F) + 1 and 1 or 0) end
  return v
end

t.case("reducer rows: shape, incremental changes, round trips", function()
  local opts = { target_dims = 3, min_fit_samples = 4, history_size = 6, refit_interval = 3 }
  local r = descriptor.reducer(opts)
  for i = 1, 5 do r:observe("h" .. i, vec(i, 8)) end
  local rows = r:rows()
  t.eq(count(rows), 3, "projection, samples_since_fit, history")
  t.eq(type(rows.projection), "string")
  t.eq(rows.samples_since_fit, 1)
  t.eq(#rows.history, 5)
  t.eq(rows.history[1].seq, 1)
  t.eq(rows.history[1].commit_hash, "h1")
  t.eq(#rows.history[1].vector, 8 * 8)
  -- the stored vector is the normalised input
  local v1, n = vec(1, 8), 0
  for _, x in ipairs(v1) do n = n + x * x end
  local stored = unpack_vector(rows.history[1].vector)
  for d = 1, 8 do t.near(stored[d], v1[d] / math.sqrt(n), 1e-15) end
  -- nothing changed since rows()
  local c = r:take_changes()
  t.eq(c.projection, nil)
  t.eq(#c.append, 0)
  t.eq(c.trim_before_seq, 1)
  -- three more: the window of 6 evicts two, the third new sample refits
  for i = 6, 8 do r:observe("h" .. i, vec(i, 8)) end
  c = r:take_changes()
  t.eq(#c.append, 3)
  t.eq(c.append[1].seq, 6)
  t.eq(c.append[3].commit_hash, "h8")
  t.eq(c.trim_before_seq, 3)
  t.eq(type(c.projection), "string", "refitted at h7")
  t.eq(c.samples_since_fit, 1)
  -- a re-observed commit is appended again with a new seq (the store upserts by hash)
  r:observe("h5", vec(5, 8))
  c = r:take_changes()
  t.eq(#c.append, 1)
  t.eq(c.append[1].commit_hash, "h5")
  t.eq(c.append[1].seq, 9)

  -- rebuild from the full rows and from the blob: identical behaviour
  local full = r:rows()
  local a = assert(descriptor.reducer_from_rows(full, opts))
  local b = assert(descriptor.load_reducer(r:save(), opts))
  t.eq(a:history_len(), 6)
  local probe = vec(42, 8)
  t.same(a:project(probe), r:project(probe))
  t.same(b:project(probe), r:project(probe))
  local m1, f1 = r:observe("h9", vec(9, 8))
  local m2, f2 = a:observe("h9", vec(9, 8))
  t.same(m2, m1)
  t.eq(f2, f1)
  -- rebuild from a store that applied the changes row by row (upsert by commit_hash)
  local store = { history = {}, samples_since_fit = 0 }
  local r2 = descriptor.reducer(opts)
  local function apply(ch)
    if ch.projection then store.projection = ch.projection end
    store.samples_since_fit = ch.samples_since_fit
    local kept = {}
    for _, row in ipairs(store.history) do
      local replaced = false
      for _, new in ipairs(ch.append) do
        if new.commit_hash == row.commit_hash then replaced = true end
      end
      if row.seq >= ch.trim_before_seq and not replaced then kept[#kept + 1] = row end
    end
    for _, row in ipairs(ch.append) do kept[#kept + 1] = row end
    store.history = kept
  end
  for i = 1, 12 do
    r2:observe("k" .. (i % 9), vec(i, 8))
    apply(r2:take_changes())
  end
  local rebuilt = assert(descriptor.reducer_from_rows(store, opts))
  t.same(rebuilt:rows(), r2:rows())
  t.same(rebuilt:project(probe), r2:project(probe))
end)

t.case("reducer rows: invalid rows give nil and a message naming the row", function()
  local opts = {}
  local good = string.rep("\0", 16)
  local cases = {
    { { history = { { seq = 1, commit_hash = "a", vector = good }, { seq = 1, commit_hash = "b", vector = good } } },
      "history row 2: seq 1" },
    { { history = { { seq = 1, commit_hash = "a", vector = "abc" } } }, "history row 1: vector" },
    { { history = { { seq = 1, commit_hash = "", vector = good } } }, "history row 1: commit_hash" },
    { { history = { { seq = 1.5, commit_hash = "a", vector = good } } }, "history row 1: seq" },
    { { history = { { seq = 1, commit_hash = "a", vector = good },
                    { seq = 2, commit_hash = "b", vector = good .. good } } }, "history row 2: vector has 4 values" },
    { { projection = "nope" }, "projection blob" },
    { { samples_since_fit = -1 }, "samples_since_fit" },
    { { history = { "x" } }, "history row 1: expected a table" },
  }
  for i, c in ipairs(cases) do
    local r, err = descriptor.reducer_from_rows(c[1], opts)
    t.eq(r, nil, "case " .. i)
    t.match(err, c[2]:gsub("%p", "%%%0"), "case " .. i)
  end
  local r, err = descriptor.load_reducer("garbage", opts)
  t.eq(r, nil)
  t.match(err, "reducer blob")
  local empty = assert(descriptor.reducer_from_rows({}, opts))
  t.eq(empty:history_len(), 0)
  t.eq(empty:fitted(), false)
end)

t.case("reducer: closed-form PCA through Lua, whitening", function()
  -- c +- 3u, c +- w with u = (0.6, 0.8), w = (0.8, -0.6): variances 6 and 2/3
  local pts = { { 3, 0 }, { -3, 0 }, { 0, 1 }, { 0, -1 } }
  for _, whiten in ipairs { false, true } do
    local r = descriptor.reducer { min_fit_samples = 4, target_dims = 2, normalize = false, whiten = whiten }
    for i, p in ipairs(pts) do
      r:observe("p" .. i, { 1 + 0.6 * p[1] + 0.8 * p[2], 2 + 0.8 * p[1] - 0.6 * p[2] })
    end
    local pca = r:pca()
    t.near(pca.components[1][1], 0.6, 1e-12)
    t.near(pca.components[1][2], 0.8, 1e-12)
    t.near(pca.components[2][1], 0.8, 1e-12)
    t.near(pca.components[2][2], -0.6, 1e-12)
    t.near(pca.explained_variance[1], 6, 1e-12)
    t.near(pca.explained_variance[2], 2 / 3, 1e-12)
    t.near(pca.explained_variance_ratio[1], 0.9, 1e-12)
    local m = r:project { 1 + 0.6 * 2 + 0.8 * 0.5, 2 + 0.8 * 2 - 0.6 * 0.5 }
    if whiten then
      t.near(m[1], 2 / math.sqrt(6), 1e-12)
      t.near(m[2], 0.5 / math.sqrt(2 / 3), 1e-12)
    else
      t.near(m[1], 2, 1e-12)
      t.near(m[2], 0.5, 1e-12)
    end
  end
end)

t.case("bounds and clip (§3.8)", function()
  local lo, hi = descriptor.bounds { lower_bounds = { 1 }, upper_bounds = { 3, 0.5 }, target_dims = 3 }
  t.same(lo, { 1, 1, 1 })
  t.same(hi, { 3, 2, 2 })
  lo, hi = descriptor.bounds {}
  t.same(lo, { -6, -6, -6, -6 })
  t.same(hi, { 6, 6, 6, 6 })
  t.same(descriptor.clip({ -7, 0, 7, 1 }, lo, hi), { -6, 0, 6, 1 })
end)

t.case("tokens: what the embedding sees", function()
  t.same(descriptor.tokens("getHTTPResponse(user_id, 0x1F) -> None"),
    { "get", "http", "response", "user", "id", "0x1f", "->", "none" })
end)

t.finish()
