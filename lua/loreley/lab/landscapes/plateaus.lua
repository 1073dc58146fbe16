-- plateaus: terraces of equal fitness.
--
-- The genome is a point in the unit square and the measures are the point itself. The
-- fitness rises towards (0.7, 0.35) in eight flat steps: inside a terrace every
-- mutation is neutral, so progress comes only from stepping over an edge, and a
-- policy that only follows fitness improvements gets no signal on the flats.
local TOP = { 0.7, 0.35 }
local LEVELS = 8

return {
  description = "plateaus: eight flat terraces rising towards (0.7, 0.35)",
  dims = 2,
  cells = 20,
  step = 0.03,
  root = function() return { 0.1, 0.9 } end,
  evaluate = function(p)
    local d = math.sqrt((p[1] - TOP[1]) ^ 2 + (p[2] - TOP[2]) ^ 2)
    local height = math.max(0, 1 - d / 0.9)
    return 0.1 + math.floor(height * LEVELS) / LEVELS, { p[1], p[2] }
  end,
}
