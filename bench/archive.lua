-- bench/archive.lua: the loreley.archive binding's cost per call, from Lua
-- (build/loreley-host --once bench/archive.lua). Medians of rounds; see bench/archive.md.
local archive = require "loreley.archive"
local host = require "loreley.host"

local function median(t)
  table.sort(t)
  local n = #t
  return n % 2 == 1 and t[(n + 1) / 2] or (t[n / 2] + t[n / 2 + 1]) / 2
end

local rng = host.rng(1)
local function item(i)
  local m = { rng:uniform(-6, 6), rng:uniform(-6, 6), rng:uniform(-6, 6), rng:uniform(-6, 6) }
  return { commit_hash = ("%040x"):format(i), objective = rng:normal(), measures = m, solution = m,
           timestamp = 1.7e9 }
end

for _, n in ipairs { 1000, 100000, 1000000 } do
  local a = archive.grid { dims = { 32, 32, 32, 32 }, lower = { -6, -6, -6, -6 }, upper = { 6, 6, 6, 6 } }
  local filled = 0
  while #a < n do
    local batch = {}
    for i = 1, math.min(1000, n - #a) do batch[i] = item(filled + i) end
    filled = filled + #batch
    a:add_many(batch)
  end
  local R, B = 50, 1000
  local t_single, t_batch, t_sample = {}, {}, {}
  for r = 1, R do
    local batch = {}
    for i = 1, B do batch[i] = item(i) end
    local t0 = host.now()
    for i = 1, B do
      local it = batch[i]
      a:add(it.commit_hash, it.objective, it.measures, { solution = it.solution, timestamp = it.timestamp })
    end
    t_single[r] = (host.now() - t0) / B * 1e9
    t0 = host.now()
    a:add_many(batch)
    t_batch[r] = (host.now() - t0) / B * 1e9
    local g = host.rng(r)
    t0 = host.now()
    for _ = 1, B do a:sample(1, g) end
    t_sample[r] = (host.now() - t0) / B * 1e9
  end
  print(("%8d elites (%d at the end): a:add %6.0f ns, a:add_many %6.0f ns/elite, a:sample(1) %6.0f ns"):format(
    n, #a, median(t_single), median(t_batch), median(t_sample)))
end
