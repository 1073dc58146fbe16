-- loreley.sampler: picks the base elite and the inspirations of a new job (spec §3.10).
--
--   local sampler = require "loreley.sampler"
--   local s = sampler.new { settings = ctx.settings, rng = host.rng(seed),
--                           choose_base = fn?, choose_inspirations = fn? }
--   local pick = s:sample(archive)   -- nil when the archive is empty
--   pick.base, pick.inspirations, pick.selection   (elites as loreley.archive returns them)
--
-- The default strategy is the reference's: a uniform base over occupied cells, then
-- inspirations from occupied cells within a growing Chebyshev radius of the base cell
-- (shuffled per radius), then a uniform fallback over the rest. Every random choice
-- comes from the seeded generator, so a run can be reproduced.
--
-- A policy replaces either step:
--   choose_base(archive, rng, sampler) -> elite | nil
--   choose_inspirations(archive, base, count, rng, sampler) -> elites, selection
local cjson = require "cjson.safe"

local M = {}
local Sampler = {}
Sampler.__index = Sampler

-- The default base: uniform over occupied cells.
function M.uniform_base(archive, rng)
  local picked = archive:sample(1, rng)
  return picked and picked[1]
end

-- The default inspirations (§3.10). Returns the elites and the `selection` record.
function M.neighbourhood_inspirations(archive, base, count, rng, self)
  local settings = self.settings
  local r0 = math.max(1, settings.mapelites_sampler_neighbor_radius)
  local selection = { initial_radius = r0 }
  if count <= 0 then
    selection.radius_used = 0
    selection.fallback_inspirations = 0
    return {}, selection
  end
  local rmax = math.max(settings.mapelites_sampler_neighbor_radius,
    settings.mapelites_sampler_neighbor_max_radius)
  selection.max_radius = rmax
  local chosen, used = {}, { [base.commit_hash] = true }
  local radius_used = 0
  for r = r0, rmax do
    if #chosen >= count then break end
    local cells = archive:neighbours(base.cell, r)
    rng:shuffle(cells)
    local added = false
    for _, cell in ipairs(cells) do
      local e = archive:get(cell)
      if e and not used[e.commit_hash] then
        used[e.commit_hash] = true
        chosen[#chosen + 1] = e
        added = true
        if #chosen >= count then break end
      end
    end
    if added then radius_used = r end
  end
  selection.radius_used = radius_used
  local fallback = 0
  local fallback_size = settings.mapelites_sampler_fallback_sample_size
  if #chosen < count and fallback_size > 0 then
    local need = math.min(count - #chosen, fallback_size)
    local stats = archive:stats()
    -- A uniform draw without replacement, large enough to skip the elites already used.
    local want = math.min(stats.num_elites, need + #chosen + 1)
    for _, e in ipairs(archive:sample(want, rng, { replace = false }) or {}) do
      if fallback >= need then break end
      if not used[e.commit_hash] then
        used[e.commit_hash] = true
        chosen[#chosen + 1] = e
        fallback = fallback + 1
      end
    end
  end
  selection.fallback_inspirations = fallback
  return chosen, selection
end

-- sampler.new{settings, rng, choose_base?, choose_inspirations?}
function M.new(opts)
  assert(type(opts) == "table", "sampler.new: options table required")
  for k in pairs(opts) do
    if k ~= "settings" and k ~= "rng" and k ~= "choose_base" and k ~= "choose_inspirations" then
      error(("sampler.new: unknown option '%s'"):format(tostring(k)), 2)
    end
  end
  assert(opts.settings, "sampler.new: settings required")
  assert(opts.rng, "sampler.new: rng required (require('loreley.host').rng(seed))")
  return setmetatable({
    settings = opts.settings,
    rng = opts.rng,
    choose_base = opts.choose_base or M.uniform_base,
    choose_inspirations = opts.choose_inspirations or M.neighbourhood_inspirations,
  }, Sampler)
end

-- Returns {base, inspirations, selection, requested_inspirations} or nil, reason.
function Sampler:sample(archive)
  if archive:stats().num_elites == 0 then return nil, "archive is empty" end
  local base = self.choose_base(archive, self.rng, self)
  if not base then return nil, "no base elite" end
  local count = math.max(0, self.settings.mapelites_sampler_inspiration_count)
  local inspirations, selection = self.choose_inspirations(archive, base, count, self.rng, self)
  return {
    base = base,
    inspirations = inspirations or {},
    selection = selection or {},
    requested_inspirations = count,
  }
end

-- --- payload records (§1.5 part A) ----------------------------------------------------

-- Python's datetime.fromtimestamp(ts, UTC).isoformat(): microseconds, dropped when 0.
function M.iso_timestamp(ts)
  local whole = math.floor(ts)
  local micro = math.floor((ts - whole) * 1e6 + 0.5)
  if micro >= 1000000 then whole, micro = whole + 1, micro - 1000000 end
  local base = os.date("!%Y-%m-%dT%H:%M:%S", whole)
  if micro == 0 then return base .. "+00:00" end
  return ("%s.%06d+00:00"):format(base, micro)
end

-- The RECORD of an elite: commit_hash, cell_index, fitness, timestamp (ISO), plus
-- measures, solution and metadata when present (metadata only if include_metadata).
function M.record(elite, include_metadata)
  local r = {
    commit_hash = elite.commit_hash,
    cell_index = elite.cell,
    fitness = elite.objective,
    timestamp = M.iso_timestamp(elite.timestamp or 0),
  }
  if elite.measures and #elite.measures > 0 then r.measures = elite.measures end
  if elite.solution and #elite.solution > 0 then r.solution = elite.solution end
  if include_metadata and elite.metadata and elite.metadata ~= "" then
    local meta = cjson.decode(elite.metadata)
    if type(meta) == "table" and next(meta) ~= nil then r.metadata = meta end
  end
  return r
end

-- Payload part A for a pick (grid = {shape = {...}, lower = {...}, upper = {...}}).
function M.payload(pick, island_id, grid, settings)
  local include = settings.mapelites_sampler_include_metadata
  local inspirations = {}
  for i, e in ipairs(pick.inspirations) do inspirations[i] = M.record(e, include) end
  local selection = pick.selection
  local sel = { initial_radius = selection.initial_radius, radius_used = selection.radius_used,
    fallback_inspirations = selection.fallback_inspirations }
  if pick.requested_inspirations > 0 then sel.max_radius = selection.max_radius end
  return {
    island_id = island_id,
    grid = { shape = grid.shape, feature_bounds = { lower = grid.lower, upper = grid.upper } },
    sampling = { requested_inspirations = pick.requested_inspirations, selection = sel },
    base = M.record(pick.base, include),
    inspirations = inspirations,
  }
end

return M
