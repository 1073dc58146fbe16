-- ctest: labels=unit
-- loreley.archive, the binding: option checking, errors, element shapes (SHAPES.md rows),
-- add_many = a sequence of add, sampling with the host's generator, neighbours, stats,
-- save/load and the row form, CVT archives. (Exact semantics: test_archive_golden.lua
-- and the C tests.)
local t = require "support.t"
local archive = require "loreley.archive"
local host = require "loreley.host"
local cjson = require "cjson"

local function grid4()
  return archive.grid { dims = { 32, 32, 32, 32 }, lower = { -6, -6, -6, -6 }, upper = { 6, 6, 6, 6 } }
end

local H1 = ("a1"):rep(20)
local H2 = ("b2"):rep(20)

t.case("grid options are checked", function()
  local err = t.raises(function()
    archive.grid { dims = { 4 }, lower = { 0 }, upper = { 1 }, learnig_rate = 0.5 }
  end, "unknown option 'learnig_rate'")
  t.match(err, "expected one of")
  t.raises(function() archive.grid { dims = { 4, 4 }, lower = { 0 }, upper = { 1 } } end,
    "'dims' must be an array of 1 integers")
  t.raises(function() archive.grid { dims = { 4 }, lower = { 0 }, upper = { 1, 2 } } end,
    "upper has 2 values")
  t.raises(function() archive.grid { dims = { 4 }, lower = { 1 }, upper = { 1 } } end,
    "lower bound 1 must be below upper bound 1")
  t.raises(function() archive.grid { dims = { 0 }, lower = { 0 }, upper = { 1 } } end,
    "dims[1] must be an integer >= 1")
  t.raises(function() archive.grid { dims = { 2.5 }, lower = { 0 }, upper = { 1 } } end,
    "dims[1] must be an integer")
  t.raises(function()
    archive.grid { dims = { 4 }, lower = { 0 }, upper = { 1 }, learning_rate = 0.5 }
  end, "threshold_min must be finite when learning_rate != 1")
  t.raises(function()
    archive.grid { dims = { 4 }, lower = { 0 }, upper = { 1 }, learning_rate = "x" }
  end, "option 'learning_rate' must be a number")
  t.raises(function() archive.grid { dims = { 4 }, lower = {}, upper = {} } end,
    "'lower' must not be empty")
  -- 2^64 cells: refused by the core (63 bits); 2^56: refused here (2^53 exact numbers)
  t.raises(function()
    archive.grid { dims = { 65536, 65536, 65536, 65536 }, lower = { 0, 0, 0, 0 }, upper = { 1, 1, 1, 1 } }
  end, "63 bits")
  t.raises(function()
    archive.grid { dims = { 256, 256, 256, 256, 256, 256, 256 }, lower = { 0, 0, 0, 0, 0, 0, 0 },
      upper = { 1, 1, 1, 1, 1, 1, 1 } }
  end, "2^53")
  local a = archive.grid { dims = { 4 }, lower = { 0 }, upper = { 1 }, learning_rate = 0.5,
    threshold_min = 0, epsilon = 0, qd_score_offset = -1 }
  t.same(a:options(), { learning_rate = 0.5, threshold_min = 0, epsilon = 0, qd_score_offset = -1 })
  local d = grid4():options()
  t.eq(d.learning_rate, 1.0)
  t.eq(d.threshold_min, -math.huge)
  t.eq(d.epsilon, 1e-6)
  t.eq(d.qd_score_offset, 0)
end)

t.case("shape accessors", function()
  local a = grid4()
  t.eq(a:kind(), "grid")
  t.eq(a:dimensions(), 4)
  t.eq(a:cells(), 1048576)
  t.eq(a:size(), 0)
  t.eq(#a, 0)
  t.same(a:dims(), { 32, 32, 32, 32 })
  local lo, hi = a:bounds()
  t.same(lo, { -6, -6, -6, -6 })
  t.same(hi, { 6, 6, 6, 6 })
  t.same(a:coordinates(1048575), { 31, 31, 31, 31 })
  t.same(a:coordinates(32 + 1), { 0, 0, 1, 1 })
  t.eq(a:centroids(), nil)
  t.match(tostring(a), "grid, 4 dimensions")
end)

t.case("add: statuses, deltas, the elite's fields (the row shape)", function()
  local a = grid4()
  local status, delta, cell = a:add(H1, 1.5, { 0, 0, 0, 0 },
    { metadata = '{"k":1}', timestamp = 1700000000.25, solution = { 0, 0, 0, 0 } })
  t.eq(status, 2)
  t.eq(delta, 1.5)
  -- (32*(0+6)+1e-6)/12 = 16 per dimension: ((16*32+16)*32+16)*32+16
  t.eq(cell, 16 * 32 ^ 3 + 16 * 32 ^ 2 + 16 * 32 + 16)
  status, delta = a:add(H2, 1.5, { 0.1, 0.1, 0.1, 0.1 })
  t.eq(status, 0, "a tie is rejected")
  t.eq(delta, 0)
  status, delta = a:add(H2, 2.0, { 0.1, 0.1, 0.1, 0.1 })
  t.eq(status, 1)
  t.eq(delta, 0.5)
  status, delta = a:add(H1, 1.0, { 0.1, 0.1, 0.1, 0.1 })
  t.eq(status, 0)
  t.eq(delta, -1.0)
  local e = a:get(cell)
  t.same(e, { cell = cell, commit_hash = H2, objective = 2.0, threshold = 2.0,
    measures = { 0.1, 0.1, 0.1, 0.1 }, timestamp = e.timestamp })
  t.ok(math.abs(e.timestamp - host.time()) < 60, "default timestamp is now")
  t.eq(a:get(0), nil)
  t.same(a:row(cell), e)
  -- a plain (not hex) hash, empty metadata and an empty solution are kept as given
  local _, _, c2 = a:add("Not Hex!", -3, { 5, 5, 5, 5 }, { metadata = "", solution = {}, timestamp = 1 })
  t.same(a:get(c2), { cell = c2, commit_hash = "Not Hex!", objective = -3, threshold = -3,
    measures = { 5, 5, 5, 5 }, solution = {}, metadata = "", timestamp = 1 })
end)

t.case("add: misuse raises and changes nothing", function()
  local a = grid4()
  a:add(H1, 1, { 0, 0, 0, 0 })
  t.raises(function() a:add(H1, 0 / 0, { 0, 0, 0, 0 }) end, "objective is not finite")
  t.raises(function() a:add(H1, math.huge, { 0, 0, 0, 0 }) end, "objective is not finite")
  t.raises(function() a:add(H1, 1, { 0, 0 / 0, 0, 0 }) end, "measure 2 is not finite")
  t.raises(function() a:add(H1, 1, { 0, 0 }) end, "measures has 2 values, archive has 4 dimensions")
  t.raises(function() a:add(H1, 1, { 0, 0, 0, "x" }) end, "measures[4] must be a number")
  t.raises(function() a:add("", 1, { 0, 0, 0, 0 }) end, "commit_hash must be 1 to 255 bytes")
  t.raises(function() a:add(("x"):rep(256), 1, { 0, 0, 0, 0 }) end, "commit_hash")
  t.raises(function() a:add(H1, 1, { 0, 0, 0, 0 }, { metdata = "x" }) end, "unknown option 'metdata'")
  t.raises(function() a:add(H1, 1, { 0, 0, 0, 0 }, { metadata = 5 }) end, "metadata must be a string")
  t.raises(function() a:add(H1, 1, { 0, 0, 0, 0 }, { solution = { 1, math.huge } }) end,
    "solution value 2 is not finite")
  t.raises(function() a:add(H1, 1, { 0, 0, 0, 0 }, { timestamp = "now" }) end, "timestamp")
  t.raises(function() a:get(-1) end, "cell must be an integer")
  t.raises(function() a:get(1048576) end, "cell must be an integer")
  t.raises(function() a:get(1.5) end, "cell must be an integer")
  t.eq(#a, 1)
  t.eq(a:rows()[1].objective, 1)
end)

t.case("add_many is a sequence of add; a bad item adds nothing", function()
  local rng = host.rng(42)
  local items = {}
  for i = 1, 300 do
    local m = {}
    for d = 1, 4 do m[d] = rng:uniform(-7, 7) end
    items[i] = { commit_hash = ("%040x"):format(i), objective = rng:random(0, 5), measures = m,
      timestamp = i, metadata = (i % 3 == 0) and ('{"i":%d}'):format(i) or nil,
      solution = (i % 2 == 0) and m or nil }
  end
  local function coarse()
    return archive.grid { dims = { 3, 3, 3, 3 }, lower = { -6, -6, -6, -6 }, upper = { 6, 6, 6, 6 } }
  end
  local a, b = coarse(), coarse()
  local statuses, deltas, cells = a:add_many(items)
  t.eq(#statuses, 300)
  local seen = { [0] = 0, 0, 0 }
  for i, it in ipairs(items) do
    local s, d, c = b:add(it.commit_hash, it.objective, it.measures,
      { timestamp = it.timestamp, metadata = it.metadata, solution = it.solution })
    t.eq(statuses[i], s, "status " .. i)
    t.eq(deltas[i], d, "delta " .. i)
    t.eq(cells[i], c, "cell " .. i)
    seen[s] = seen[s] + 1
  end
  t.ok(seen[0] > 0 and seen[1] > 0 and seen[2] > 0, "all three statuses occur")
  t.same(a:rows(), b:rows())
  t.same(a:stats(), b:stats())
  local n = #a
  local err = t.raises(function()
    a:add_many { items[1], { commit_hash = "x", objective = 1, measures = { 0, 0 } } }
  end, "item 2: measures has 2 values, archive has 4 dimensions")
  t.raises(function() a:add_many { items[1], { commit_hash = "x", objective = 0 / 0, measures = { 0, 0, 0, 0 } } } end,
    "entry 1: objective is not finite")
  t.raises(function() a:add_many { { commit_hash = "x", objectiv = 1, measures = { 0, 0, 0, 0 } } } end,
    "unknown option 'objectiv'")
  t.raises(function() a:add_many { 5 } end, "item 1: expected a table")
  t.eq(#a, n, "nothing was added")
  t.ok(err)
  local s, d, c = a:add_many {}
  t.same({ s, d, c }, { {}, {}, {} })
end)

t.case("index_of and index_of_many", function()
  local a = grid4()
  t.eq(a:index_of { -6, -6, -6, -6 }, 0)
  t.eq(a:index_of { 6, 6, 6, 6 }, 1048575)
  t.eq(a:index_of { 1e300, -1e300, 0, 0 }, 31 * 32 ^ 3 + 16 * 32 + 16)
  t.same(a:index_of_many { { -6, -6, -6, -6 }, { 6, 6, 6, 6 } }, { 0, 1048575 })
  t.raises(function() a:index_of { 0, 0, 0, 0 / 0 } end, "measure 4 is not finite")
  t.raises(function() a:index_of_many { { 0, 0, 0, 0 }, { 0, 0, 0, -math.huge } } end,
    "row 1: measure 4 is not finite")
  t.raises(function() a:index_of { 0, 0, 0 } end, "measures has 3 values")
end)

t.case("elites(), clear(), stats()", function()
  local a = archive.grid { dims = { 10 }, lower = { 0 }, upper = { 10 }, qd_score_offset = -1 }
  local s = a:stats()
  t.same(s, { num_elites = 0, cells = 10, coverage = 0, qd_score = 0, norm_qd_score = 0 })
  for i = 0, 4 do a:add("h" .. i, i, { i + 0.5 }) end
  local n, sum = 0, 0
  for e in a:elites() do
    n = n + 1
    sum = sum + e.objective
    t.eq(e.commit_hash, "h" .. (n - 1), "insertion order")
  end
  t.eq(n, 5)
  t.eq(sum, 10)
  s = a:stats()
  -- qd_score = sum - n * offset = 10 + 5; norm = 15 / 10; mean = 10 / 5
  t.same(s, { num_elites = 5, cells = 10, coverage = 0.5, qd_score = 15, norm_qd_score = 1.5,
    obj_max = 4, obj_mean = 2 })
  a:clear()
  t.eq(#a, 0)
  t.same(a:stats(), { num_elites = 0, cells = 10, coverage = 0, qd_score = 0, norm_qd_score = 0 })
  t.eq(a:add("x", -100, { 3 }), 2, "thresholds were reset")
end)

t.case("sample: seeded, with and without replacement", function()
  local a = archive.grid { dims = { 100 }, lower = { 0 }, upper = { 100 } }
  t.same(a:sample(3, host.rng(1)), {}, "an empty archive samples nothing")
  for i = 0, 49 do a:add("h" .. i, i, { i * 2 + 0.5 }) end
  local x = a:sample(20, host.rng(7))
  local y = a:sample(20, host.rng(7))
  t.eq(#x, 20)
  t.same(x, y, "same seed, same elites")
  for _, e in ipairs(x) do t.eq(e.commit_hash, "h" .. (e.cell / 2)) end
  -- with replacement: the i-th draw is rng:below(50) on an identically seeded generator
  local r = host.rng(9)
  local cells = a:sample(30, host.rng(9), { cells = true })
  for i = 1, 30 do t.eq(cells[i], 2 * r:below(50) + 0, "draw " .. i) end
  -- without replacement: distinct, at most the archive's size
  local all = a:sample(80, host.rng(3), { replace = false, cells = true })
  t.eq(#all, 50)
  local seen = {}
  for _, c in ipairs(all) do
    t.eq(seen[c], nil)
    seen[c] = true
  end
  t.raises(function() a:sample(1, {}) end, "loreley.rng expected")
  t.raises(function() a:sample(-1, host.rng(1)) end, "n must be an integer")
  t.raises(function() a:sample(1, host.rng(1), { replce = false }) end, "unknown option 'replce'")
end)

t.case("neighbours: Chebyshev ball, centre excluded, clipped", function()
  local a = archive.grid { dims = { 5, 5 }, lower = { 0, 0 }, upper = { 5, 5 } }
  -- occupy (0,0) (1,1) (2,2) (4,4) (2,0); cell = 5*x + y
  for _, p in ipairs { { 0, 0 }, { 1, 1 }, { 2, 2 }, { 4, 4 }, { 2, 0 } } do
    a:add("h", 1, { p[1] + 0.5, p[2] + 0.5 })
  end
  t.same(a:neighbours(12, 1), { 6 }, "(2,2) radius 1: (1,1)")
  t.same(a:neighbours(12, 2), { 0, 6, 10, 24 }, "(2,2) radius 2")
  t.same(a:neighbours(0, 1), { 6 }, "clipped at the corner")
  t.same(a:neighbours(3, 10), { 0, 6, 10, 12, 24 }, "an empty centre, the whole grid")
  t.same(a:neighbours(12, 0), {})
  t.raises(function() a:neighbours(25, 1) end, "cell must be an integer")
  t.raises(function() a:neighbours(1, -1) end, "radius must be an integer")
end)

t.case("save/load: exact, corrupted blobs return nil, message", function()
  local a = archive.grid { dims = { 8, 8 }, lower = { -1, -1 }, upper = { 1, 1 },
    learning_rate = 0.5, threshold_min = 0 }
  local rng = host.rng(5)
  for i = 1, 200 do
    a:add(("%040x"):format(i), rng:uniform(-1, 3), { rng:uniform(-1, 1), rng:uniform(-1, 1) },
      { metadata = cjson.encode { i = i }, timestamp = i })
  end
  local blob = a:save()
  local b = assert(archive.load(blob))
  t.same(b:rows(), a:rows())
  t.same(b:stats(), a:stats())
  t.same(b:options(), a:options())
  t.eq(b:save(), blob)
  local ok, msg = archive.load(blob:sub(1, -2))
  t.eq(ok, nil)
  t.match(msg, "truncated")
  local flipped = blob:sub(1, 200) .. string.char((blob:byte(201) + 1) % 256) .. blob:sub(202)
  ok, msg = archive.load(flipped)
  t.eq(ok, nil)
  t.match(msg, "checksum")
  ok, msg = archive.load("")
  t.eq(ok, nil)
  t.match(msg, "truncated")
  ok, msg = archive.load(("x"):rep(200))
  t.eq(ok, nil)
  t.match(msg, "magic")
  t.raises(function() archive.load(nil) end, "string expected")
end)

t.case("rows: round trip, validation naming row and field", function()
  local a = grid4()
  local rng = host.rng(11)
  for i = 1, 100 do
    local m = { rng:uniform(-6, 6), rng:uniform(-6, 6), rng:uniform(-6, 6), rng:uniform(-6, 6) }
    a:add(("%040x"):format(i), rng:normal(), m, { solution = m, metadata = '{"n":' .. i .. '}', timestamp = i })
  end
  local rows = a:rows()
  t.eq(#rows, #a)
  local b = grid4()
  t.eq(b:load_rows(rows), true)
  t.same(b:rows(), rows)
  t.same(b:stats(), a:stats())
  t.raises(function() b:load_rows(rows) end, "must be empty")

  local function bad(mutate, pattern)
    local copy = {}
    for i, r in ipairs(rows) do
      local c = {}
      for k, v in pairs(r) do c[k] = v end
      copy[i] = c
    end
    mutate(copy)
    local c = grid4()
    local ok, msg = c:load_rows(copy)
    t.eq(ok, nil, pattern)
    t.match(msg, pattern)
    t.eq(#c, 0, "a failed load leaves the archive empty")
  end
  bad(function(r) r[3].measures = { 1, 2 } end, "^row 3: measures has 2 values, archive has 4 dimensions$")
  bad(function(r) r[2].objective = nil end, "^row 2: objective must be a number, got nil")
  bad(function(r) r[2].objective = 0 / 0 end, "^row 2: objective is not finite")
  bad(function(r) r[4].threshold = -math.huge end, "^row 4: threshold is not finite")
  bad(function(r) r[5].cell = r[5].cell + 0.5 end, "^row 5: cell .* is not an integer")
  bad(function(r) r[5].cell = 2 ^ 20 end, "^row 5: cell")
  bad(function(r) r[6].cell = r[7].cell end, "^row 6: cell %d+ does not match its measures")
  bad(function(r) r[8] = r[1] end, "^row 8: cell %d+ is already occupied")
  bad(function(r) r[9].commit_hash = 5 end, "^row 9: commit_hash must be a string")
  bad(function(r) r[9].metadata = {} end, "^row 9: metadata must be a string or nil")
  bad(function(r) r[9].solution = "x" end, "^row 9: solution must be an array")
  bad(function(r) r[9].colour = "red" end, "^row 9: unknown field 'colour'")
  bad(function(r) r[10] = "row" end, "^row 10: expected a table")
  -- JSON nulls (cjson.null) read as absent optional fields
  local c = grid4()
  local r1 = {}
  for k, v in pairs(rows[1]) do r1[k] = v end
  r1.metadata, r1.solution = cjson.null, cjson.null
  assert(c:load_rows { r1 })
  t.eq(c:get(r1.cell).metadata, nil)
  t.eq(c:get(r1.cell).solution, nil)
end)

t.case("several archives side by side; close()", function()
  local a, b = grid4(), grid4()
  a:add(H1, 1, { 0, 0, 0, 0 })
  t.eq(#a, 1)
  t.eq(#b, 0)
  a:close()
  a:close()
  t.match(tostring(a), "closed")
  t.raises(function() a:add(H1, 1, { 0, 0, 0, 0 }) end, "archive is closed")
  t.eq(#b, 0)
end)

t.case("8 dimensions of 64 cells (2.8e14 cells)", function()
  local lo, hi, dims = {}, {}, {}
  for d = 1, 8 do lo[d], hi[d], dims[d] = 0, 1, 64 end
  local a = archive.grid { dims = dims, lower = lo, upper = hi }
  t.eq(a:cells(), 2 ^ 48)
  local _, _, c = a:add(H1, 1, { 1, 1, 1, 1, 1, 1, 1, 1 })
  t.eq(c, 2 ^ 48 - 1)
  a:add(H2, 1, { 0.99, 0.99, 0.99, 0.99, 0.99, 0.99, 0.99, 0.97 })
  t.same(a:neighbours(c, 1), { 2 ^ 48 - 2 })
  t.same(a:neighbours(0, 3), {}, "a 7^8 ball, answered by a scan")
  local b = assert(archive.load(a:save()))
  t.same(b:rows(), a:rows())
end)

t.case("cvt: seeded k-means, given centroids, nearest centroid, k nearest", function()
  t.raises(function() archive.cvt { lower = { 0 }, upper = { 1 } } end, "give 'centroids' or 'cells'")
  t.raises(function() archive.cvt { lower = { 0 }, upper = { 1 }, cells = 4, sead = 1 } end, "unknown option 'sead'")
  t.raises(function() archive.cvt { lower = { 0, 0 }, upper = { 1, 1 }, centroids = { { 0, 0 }, { 1 } } } end,
    "centroids[2] has 1 values")
  t.raises(function() archive.cvt { lower = { 0 }, upper = { 1 }, cells = 10, samples = 5 } end,
    "at least as many samples")
  local x = archive.cvt { lower = { 0, 0 }, upper = { 1, 1 }, cells = 16, samples = 2000, seed = 3 }
  local y = archive.cvt { lower = { 0, 0 }, upper = { 1, 1 }, cells = 16, samples = 2000, seed = 3 }
  local z = archive.cvt { lower = { 0, 0 }, upper = { 1, 1 }, cells = 16, samples = 2000, seed = 4 }
  t.eq(x:kind(), "cvt")
  t.eq(x:cells(), 16)
  t.same(x:centroids(), y:centroids(), "same seed, same centroids")
  t.ok(not t.deep_eq(x:centroids(), z:centroids()), "another seed, other centroids")
  for _, c in ipairs(x:centroids()) do
    t.ok(c[1] > 0 and c[1] < 1 and c[2] > 0 and c[2] < 1, "centroids inside the bounds")
  end
  -- given centroids: a line of 5 points
  local a = archive.cvt { lower = { 0 }, upper = { 10 }, centroids = { { 0 }, { 2 }, { 4 }, { 6 }, { 8 } } }
  t.eq(a:index_of { 2.9 }, 1)
  t.eq(a:index_of { 3.0 }, 1, "a tie goes to the lower cell")
  t.eq(a:index_of { 100 }, 4)
  t.eq(a:add(H1, 1, { 0.1 }), 2)
  a:add(H1, 1, { 4.2 })
  a:add(H1, 1, { 7.9 })
  -- the 2 centroids nearest to centroid 1 (x=2) are 0 and 2 (x=0, x=4): both occupied
  t.same(a:neighbours(1, 2), { 0, 2 })
  t.same(a:neighbours(2, 2), {}, "centroids 1 and 3 are empty")
  t.same(a:neighbours(2, 4), { 0, 4 }, "equally near: lower cell first")
  t.same(a:neighbours(0, 4), { 2, 4 }, "nearest first")
  a:add(H1, 1, { 1.9 })
  t.same(a:neighbours(0, 4), { 1, 2, 4 }, "nearest first")
  t.eq(a:stats().coverage, 4 / 5)
  local b = assert(archive.load(a:save()))
  t.same(b:centroids(), a:centroids())
  t.same(b:rows(), a:rows())
  t.raises(function() a:coordinates(0) end, "only for grid archives")
end)

t.finish()
