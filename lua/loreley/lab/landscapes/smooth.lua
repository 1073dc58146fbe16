-- smooth: a smooth, multimodal landscape over a four-gene genome.
--
-- Genes x1..x4 lie in [0, 1]. The measures are the means of two gene pairs,
-- ((x1 + x2) / 2, (x3 + x4) / 2), so the centre of the measure space is easy to reach
-- and its corners need both genes of a pair to move together. Each gene contributes a
-- damped cosine with its peak at 0.35 and a lower one at 0.75, so every cell has
-- local optima to climb out of; the global optimum (fitness 1) is x = 0.35 everywhere.
local PEAK = 0.35

local function gene_score(x)
  local d = x - PEAK
  return math.cos(5 * math.pi * d) * math.exp(-2 * d * d)
end

return {
  description = "smooth and multimodal: damped cosines over four genes, measures are pair means",
  dims = 2,
  cells = 20,
  size = 4,
  step = 0.04,
  root = function() return { 0.5, 0.5, 0.5, 0.5 } end,
  evaluate = function(x)
    local sum = 0
    for i = 1, 4 do sum = sum + gene_score(x[i]) end
    return 0.5 + sum / 8, { (x[1] + x[2]) / 2, (x[3] + x[4]) / 2 }
  end,
}
