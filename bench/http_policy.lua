-- bench/http_policy.lua: the policies bench/http.lua runs under `loreley-host --http`.
--
--   loreley-host --http 127.0.0.1:0 bench/http_policy.lua -- tick     a fixed-work tick
--   loreley-host --http 127.0.0.1:0 bench/http_policy.lua -- page2d   one island, 10^5 elites
--   loreley-host --http 127.0.0.1:0 bench/http_policy.lua -- page4d   on a 2-D / 4-D grid
--
-- "tick": the island holds 10^4 elites on the default 12^4 grid and gains one elite per
-- tick (so the heatmap and best elites are rebuilt after every tick, as in a live run);
-- the tick's work is fixed: clear a scratch archive, add the same 20,000 elites to it in
-- one batch, draw 2,000 samples. Each tick logs "work <wall seconds> <thread CPU
-- seconds>" and returns 0.02.
local ffi = require "ffi"
local host = require "loreley.host"
local archive = require "loreley.archive"

ffi.cdef [[
  struct bench_timespec { long tv_sec; long tv_nsec; };
  int clock_gettime(int clock, struct bench_timespec *ts);
]]
local ts = ffi.new("struct bench_timespec")
local function thread_cpu()   -- CLOCK_THREAD_CPUTIME_ID: this (the main) thread only
  ffi.C.clock_gettime(3, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) / 1e9
end

local mode = arg and arg[1] or "tick"

-- Fills a grid archive with n elites at distinct cells (uniform objective in [0, 1)).
local function fill(a, n, rng)
  local dims = a:dims()
  local lower, upper = a:bounds()
  local total = 1
  for _, c in ipairs(dims) do total = total * c end
  local items, seen = {}, {}
  while #items < n do
    local cell = rng:below(total)
    if not seen[cell] then
      seen[cell] = true
      local m, rest = {}, cell
      for k = #dims, 1, -1 do
        local coord = rest % dims[k]
        rest = (rest - coord) / dims[k]
        m[k] = lower[k] + (coord + 0.5) / dims[k] * (upper[k] - lower[k])
      end
      items[#items + 1] = { commit_hash = ("%040x"):format(cell), objective = rng:random(),
        measures = m }
    end
  end
  a:add_many(items)
  return items
end

local function grid(cells, d)
  local dims, lower, upper = {}, {}, {}
  for i = 1, d do dims[i], lower[i], upper[i] = cells, -0.5, 0.5 end
  return archive.grid { dims = dims, lower = lower, upper = upper }
end

return {
  init = function(ctx)
    local rng = host.rng(20251129)
    local a
    local started = host.now()
    if mode == "page2d" then
      a = grid(317, 2)               -- 100,489 cells
      fill(a, 100000, rng)
    elseif mode == "page4d" then
      a = grid(18, 4)                -- 104,976 cells
      fill(a, 100000, rng)
    else
      a = grid(12, 4)
      fill(a, 10000, rng)
      ctx.scratch = grid(12, 4)
      ctx.work = fill(grid(12, 4), 20000, host.rng(7))
      ctx.rng = host.rng(3)
    end
    host.info("bench island ready: %d elites (%.2f s)", #a, host.now() - started)
    ctx.loreley = { islands = { main = { id = "main", archive = a } }, default_island = "main",
      counters = {} }
  end,
  tick = function(ctx)
    if mode ~= "tick" then return end
    local started, cpu = host.now(), thread_cpu()
    local scratch = ctx.scratch
    scratch:clear()
    scratch:add_many(ctx.work)
    scratch:sample(2000, ctx.rng)
    local m = {}
    for k = 1, 4 do m[k] = ctx.rng:uniform(-0.5, 0.5) end
    ctx.loreley.islands.main.archive:add(("%040x"):format(ctx.tick), 1 + ctx.tick, m)
    host.info("work %.6f %.6f", host.now() - started, thread_cpu() - cpu)
    return 0.02
  end,
}
