-- ctest: labels=unit
-- loreley.archive against tests/golden/archive_grid.json: add sequences, index_of edge
-- cases and non-finite inputs recorded from pyribs 0.8.3 GridArchive (the reference
-- scheduler's archive). Every status, cell, delta, threshold and stat must match.
local t = require "support.t"
local cjson = require "cjson"
local archive = require "loreley.archive"

local golden = cjson.decode(assert(t.read(t.source_dir .. "/tests/golden/archive_grid.json")))
local TOL = 1e-12

-- The golden file writes non-finite floats as strings.
local function num(v)
  if v == "NaN" then return 0 / 0 end
  if v == "Infinity" then return math.huge end
  if v == "-Infinity" then return -math.huge end
  return v
end

local function nums(list)
  local out = {}
  for i, v in ipairs(list) do out[i] = num(v) end
  return out
end

local function near(actual, expected, what)
  if expected == cjson.null then
    t.eq(actual, nil, what)
  else
    t.near(actual, expected, TOL, what)
  end
end

local function make(config)
  local lower, upper, dims = {}, {}, {}
  for d, r in ipairs(config.ranges) do
    lower[d], upper[d], dims[d] = r[1], r[2], config.C
  end
  return archive.grid {
    dims = dims, lower = lower, upper = upper,
    learning_rate = config.learning_rate, threshold_min = num(config.threshold_min),
    epsilon = config.epsilon, qd_score_offset = config.qd_score_offset,
  }
end

local function check_stats(a, expected, what)
  local s = a:stats()
  t.eq(s.num_elites, expected.num_elites, what .. " num_elites")
  near(s.coverage, expected.coverage, what .. " coverage")
  near(s.qd_score, expected.qd_score, what .. " qd_score")
  near(s.norm_qd_score, expected.norm_qd_score, what .. " norm_qd_score")
  near(s.obj_max, expected.obj_max, what .. " obj_max")
  near(s.obj_mean, expected.obj_mean, what .. " obj_mean")
end

t.case("the golden file has the four recorded cases", function()
  t.eq(#golden.cases, 4)
  t.eq(golden.meta.runtime.ribs, "0.8.3")
end)

for _, case in ipairs(golden.cases) do
  t.case(case.name .. ": every add (status, cell, delta, cell state, stats)", function()
    local a = make(case.config)
    t.eq(a:cells(), case.config.cells)
    for _, step in ipairs(case.adds) do
      local what = ("step %d"):format(step.step)
      local m = nums(step.measures)
      t.eq(a:index_of(m), step.index, what .. " index_of")
      t.same(a:coordinates(step.index), step.grid_index, what .. " grid index")
      local before = a:get(step.index)
      if step.cell_before.occupied then
        t.ok(before, what .. " cell should be occupied")
        t.eq(before.objective, step.cell_before.objective, what .. " occupant objective")
        t.eq(before.threshold, step.cell_before.threshold, what .. " occupant threshold")
      else
        t.eq(before, nil, what .. " cell should be empty")
      end
      local status, delta, cell = a:add(("%040x"):format(step.step), step.objective, m,
        { solution = m, timestamp = step.step })
      t.eq(status, step.status, what .. " status")
      t.eq(cell, step.index, what .. " cell")
      t.near(delta, step.value, TOL, what .. " delta")
      check_stats(a, step.stats_after, what)
    end
    check_stats(a, case.final_stats, "final")
  end)

  t.case(case.name .. ": final elites, thresholds and rows", function()
    local a = make(case.config)
    for _, step in ipairs(case.adds) do
      local m = nums(step.measures)
      a:add(("%040x"):format(step.step), step.objective, m, { solution = m })
    end
    local rows = a:rows()
    table.sort(rows, function(x, y) return x.cell < y.cell end)
    t.eq(#rows, #case.final_elites)
    for i, e in ipairs(case.final_elites) do
      local r = rows[i]
      t.eq(r.cell, e.index, "elite " .. i .. " cell")
      t.near(r.objective, e.objective, TOL, "elite " .. i .. " objective")
      t.near(r.threshold, e.threshold, TOL, "elite " .. i .. " threshold")
      t.same(r.measures, e.measures, "elite " .. i .. " measures")
      t.same(r.solution, e.solution, "elite " .. i .. " solution")
    end
    -- thresholds and stats survive a save/load (the reference loses thresholds)
    local b = assert(archive.load(a:save()))
    check_stats(b, case.final_stats, "after load")
    for _, e in ipairs(case.final_elites) do
      t.eq(b:get(e.index).threshold, a:get(e.index).threshold)
    end
    -- and the row form restores the same cells and thresholds
    local c = make(case.config)
    assert(c:load_rows(a:rows()))
    t.same(c:rows(), a:rows())
  end)

  t.case(case.name .. ": index_of edge cases", function()
    local a = make(case.config)
    for _, e in ipairs(case.index_of_edge_cases) do
      local m = nums(e.measures)
      if e.error then
        t.raises(function() a:index_of(m) end, nil, e.label)
      else
        -- a 'reference_quirk' marks pyribs' int32 wrap; expected_index is the fix
        local want = e.expected_index or e.index
        t.eq(a:index_of(m), want, e.label)
        t.same(a:index_of_many { m, m }, { want, want }, e.label)
      end
    end
  end)

  t.case(case.name .. ": non-finite objectives and measures are rejected", function()
    local a = make(case.config)
    a:add("seed", 1.0, nums(case.adds[1].measures))
    local before = a:rows()
    for _, e in ipairs(case.add_edge_cases) do
      if e.error then
        local err = t.raises(function() a:add("x", num(e.objective), nums(e.measures)) end)
        t.match(err, "not finite", e.label)
        t.raises(function()
          a:add_many { { commit_hash = "x", objective = num(e.objective), measures = nums(e.measures) } }
        end, "not finite", e.label)
      end
    end
    t.same(a:rows(), before, "a rejected add changes nothing")
  end)
end

t.finish()
