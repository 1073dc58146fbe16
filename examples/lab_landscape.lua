-- A landscape for the policy lab, to copy: a ring of good solutions.
--
--   loreley-host --simulate --landscape examples/lab_landscape.lua examples/policy.lua
--
-- A landscape stands in for the LLM and the evaluator. `evaluate` is the only function
-- you must write: it turns a genome (here a point in the unit square) into a fitness
-- (higher is better) and the measures that place it in the archive. Without `root` and
-- `vary`, the lab starts from the middle of the genome bounds and varies a genome by
-- mixing in an inspiration's genes and adding a small normal step to each gene (`step`
-- of the genome range). See docs/lab.md for every key.
local CENTRE = { 0.5, 0.5 }

return {
  description = "a ring of radius 0.3: the best solutions lie on a circle",
  dims = 2,                 -- two measures, each in [0, 1] (change with lower/upper)
  cells = 24,               -- 24 x 24 archive cells
  step = 0.04,
  root = function(rng) return { 0.5 + rng:uniform(-0.05, 0.05), 0.5 } end,
  evaluate = function(p)
    local r = math.sqrt((p[1] - CENTRE[1]) ^ 2 + (p[2] - CENTRE[2]) ^ 2)
    local fitness = math.exp(-((r - 0.3) / 0.05) ^ 2)
    -- measures: where the point is (x, y)
    return fitness, { p[1], p[2] }
  end,
}
