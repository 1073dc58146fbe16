-- The demo problem of the example worker: pack N circles in the unit square so that the
-- sum of their radii is as large as possible (the problem of Loreley's own example).
--
-- A solution is a Python file, `packing.py`, whose function `circles()` returns the
-- circles as (x, y, r) tuples. The worker reads the base commit's file and the
-- inspirations' files, proposes a variation, legalises it (no overlap, inside the
-- square), and evaluates it: composite_score = the sum of radii. Different strategies
-- leave different code behind (helper functions, notes), so solutions differ in shape
-- as well as in numbers, which is what the descriptor sees.
local M = {}

M.N = 26
M.FILE = "packing.py"

-- Parses the (x, y, r) tuples out of the file. Returns a list or nil, reason.
function M.parse(text)
  if type(text) ~= "string" then return nil, "no file" end
  local circles = {}
  for x, y, r in text:gmatch("%(%s*([-%d%.eE]+)%s*,%s*([-%d%.eE]+)%s*,%s*([-%d%.eE]+)%s*%)") do
    x, y, r = tonumber(x), tonumber(y), tonumber(r)
    if x and y and r then circles[#circles + 1] = { x, y, r } end
  end
  if #circles == 0 then return nil, "no circles found" end
  return circles
end

-- Makes the circles legal: inside the unit square, no two overlapping (radii shrink).
function M.legalise(circles)
  for _, c in ipairs(circles) do
    c[1] = math.max(0, math.min(1, c[1]))
    c[2] = math.max(0, math.min(1, c[2]))
    c[3] = math.max(0, math.min(c[3], c[1], c[2], 1 - c[1], 1 - c[2]))
  end
  for _ = 1, 4 do
    local changed = false
    for i = 1, #circles do
      local a = circles[i]
      for j = i + 1, #circles do
        local b = circles[j]
        local d = math.sqrt((a[1] - b[1]) ^ 2 + (a[2] - b[2]) ^ 2)
        local over = a[3] + b[3] - d
        if over > 1e-12 then
          local total = a[3] + b[3]
          if total > 0 then
            a[3] = math.max(0, a[3] - over * a[3] / total - 1e-12)
            b[3] = math.max(0, b[3] - over * b[3] / total - 1e-12)
            changed = true
          end
        end
      end
    end
    if not changed then break end
  end
  return circles
end

-- Grows every radius as far as the walls and the neighbours allow (one pass).
function M.grow(circles)
  for i, a in ipairs(circles) do
    local room = math.min(a[1], a[2], 1 - a[1], 1 - a[2])
    for j, b in ipairs(circles) do
      if i ~= j then
        local d = math.sqrt((a[1] - b[1]) ^ 2 + (a[2] - b[2]) ^ 2)
        room = math.min(room, d - b[3])
      end
    end
    if room > a[3] then a[3] = room end
  end
  return circles
end

-- The metrics Loreley's evaluator would report (composite_score first).
function M.evaluate(circles)
  local sum, min_r, overlap = 0, math.huge, 0
  for i, a in ipairs(circles) do
    sum = sum + a[3]
    min_r = math.min(min_r, a[3])
    for j = i + 1, #circles do
      local b = circles[j]
      local d = math.sqrt((a[1] - b[1]) ^ 2 + (a[2] - b[2]) ^ 2)
      overlap = math.max(overlap, a[3] + b[3] - d)
    end
  end
  local valid = overlap <= 1e-9 and #circles == M.N
  return {
    { name = "composite_score", value = valid and sum or 0, unit = nil, higher_is_better = true,
      details = { valid = valid } },
    { name = "sum_radii", value = sum, unit = nil, higher_is_better = true, details = {} },
    { name = "min_radius", value = min_r == math.huge and 0 or min_r, unit = nil,
      higher_is_better = true, details = {} },
    { name = "circles", value = #circles, unit = "count", higher_is_better = true, details = {} },
  }, valid, sum
end

local function copy(circles)
  local out = {}
  for i, c in ipairs(circles) do out[i] = { c[1], c[2], c[3] } end
  return out
end

-- A starting layout: a jittered grid with small radii.
function M.initial(rng)
  local circles = {}
  local side = math.ceil(math.sqrt(M.N))
  for i = 0, M.N - 1 do
    local gx, gy = i % side, math.floor(i / side)
    circles[#circles + 1] = { (gx + 0.5) / side + (rng:random() - 0.5) * 0.02,
      (gy + 0.5) / side + (rng:random() - 0.5) * 0.02, 0.2 / side }
  end
  return M.legalise(circles)
end

local STRATEGIES = { "jitter", "crossover", "swap", "hex", "shake" }
M.STRATEGIES = STRATEGIES

-- Proposes a child from the base (and inspirations, lists of circles). Returns the
-- circles and the strategy used.
function M.vary(base, inspirations, rng)
  local child = copy(base)
  local strategy = STRATEGIES[rng:random(#STRATEGIES)]
  if strategy == "crossover" and #inspirations == 0 then strategy = "jitter" end
  if strategy == "jitter" then
    local k = rng:random(1, 6)
    for _ = 1, k do
      local c = child[rng:random(#child)]
      local step = 0.05 * rng:random()
      c[1] = c[1] + (rng:random() - 0.5) * step
      c[2] = c[2] + (rng:random() - 0.5) * step
    end
  elseif strategy == "crossover" then
    local other = inspirations[rng:random(#inspirations)]
    local cx, cy, radius = rng:random(), rng:random(), 0.2 + 0.3 * rng:random()
    for i, c in ipairs(child) do
      local o = other[i]
      if o and (o[1] - cx) ^ 2 + (o[2] - cy) ^ 2 < radius ^ 2 then
        child[i] = { o[1], o[2], o[3] }
      end
    end
  elseif strategy == "swap" then
    local i, j = rng:random(#child), rng:random(#child)
    child[i][3], child[j][3] = child[j][3], child[i][3]
  elseif strategy == "hex" then
    local rows = rng:random(4, 6)
    local per = math.ceil(M.N / rows)
    local i = 0
    for row = 0, rows - 1 do
      for col = 0, per - 1 do
        i = i + 1
        if i > M.N then break end
        local offset = (row % 2) * 0.5
        child[i] = { (col + 0.5 + offset * 0.9) / (per + 0.5), (row + 0.5) / rows, 0.01 }
      end
    end
  elseif strategy == "shake" then
    for _, c in ipairs(child) do
      c[1] = c[1] + (rng:random() - 0.5) * 0.01
      c[2] = c[2] + (rng:random() - 0.5) * 0.01
      c[3] = c[3] * 0.97
    end
  end
  M.legalise(child)
  M.grow(child)
  M.legalise(child)
  return child, strategy
end

local HELPERS = {
  jitter = "def nudge(c, dx, dy):\n    return (c[0] + dx, c[1] + dy, c[2])\n",
  crossover = "def blend(a, b, centre, radius):\n    return [y if inside(y, centre, radius) else x for x, y in zip(a, b)]\n",
  swap = "def swap_radii(cs, i, j):\n    cs[i], cs[j] = (cs[i][0], cs[i][1], cs[j][2]), (cs[j][0], cs[j][1], cs[i][2])\n",
  hex = "class HexLattice:\n    def __init__(self, rows):\n        self.rows = rows\n\n    def centres(self):\n        return [(c + 0.5 * (r % 2), r) for r in range(self.rows) for c in range(self.rows)]\n",
  shake = "def shake(cs, amount):\n    return [(x + amount, y - amount, r * 0.97) for x, y, r in cs]\n",
}

-- Renders the solution file. `lineage` lists the strategies that led here (newest last).
function M.render(circles, lineage)
  local lines = {
    "# Circle packing: " .. M.N .. " circles in the unit square; maximise the sum of radii.",
    "# lineage: " .. table.concat(lineage, " -> "),
    "",
  }
  local seen = {}
  for _, s in ipairs(lineage) do
    if HELPERS[s] and not seen[s] then
      seen[s] = true
      lines[#lines + 1] = HELPERS[s]
    end
  end
  lines[#lines + 1] = "def circles():"
  lines[#lines + 1] = "    return ["
  for _, c in ipairs(circles) do
    lines[#lines + 1] = ("        (%.6f, %.6f, %.6f),"):format(c[1], c[2], c[3])
  end
  lines[#lines + 1] = "    ]"
  return table.concat(lines, "\n") .. "\n"
end

-- The lineage recorded in a file ("# lineage: a -> b"), at most the last 8 steps.
function M.lineage(text)
  local list = {}
  local line = type(text) == "string" and text:match("# lineage: ([^\n]*)") or nil
  if line then
    for s in line:gmatch("[%w_]+") do list[#list + 1] = s end
  end
  while #list > 8 do table.remove(list, 1) end
  return list
end

return M
