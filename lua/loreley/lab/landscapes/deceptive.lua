-- deceptive: the best region is reached only through low-fitness cells.
--
-- The genome is a point in the unit square and the measures are the point itself.
-- A broad hill around (0.25, 0.25) (height 0.5) pulls every greedy climber towards
-- it; beyond its reach the floor is flat and low (0.05). The global peak (height 1.5)
-- sits at (0.78, 0.78) in a narrow basin of radius 0.2, separated from the hill by a
-- band of floor-level cells. The run starts at (0.15, 0.15), on the hill's slope.
local HILL = { 0.25, 0.25 }
local PEAK = { 0.78, 0.78 }

local function distance(p, q)
  return math.sqrt((p[1] - q[1]) ^ 2 + (p[2] - q[2]) ^ 2)
end

return {
  description = "deceptive: a broad local hill, and a higher peak across a band of low cells",
  dims = 2,
  cells = 20,
  step = 0.05,
  root = function() return { 0.15, 0.15 } end,
  evaluate = function(p)
    local hill = 0.5 * math.max(0, 1 - distance(p, HILL) / 0.4)
    local peak = 1.5 * math.max(0, 1 - distance(p, PEAK) / 0.2)
    return 0.05 + hill + peak, { p[1], p[2] }
  end,
}
