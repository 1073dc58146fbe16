-- Several islands with migration. Each island is its own MAP-Elites archive (with its
-- own reducer); new jobs go to the islands in turn, and every MIGRATE_EVERY ticks the
-- best elite of each island is offered to the next one in the ring, so good ideas
-- spread while the islands keep diverging. An empty island is seeded by migration.
--
--   loreley-host examples/policy_islands.lua -- [islands] [migrate_every]
--   e.g. -- 3 10   (islands main, island-2, island-3; migrate every 10 ticks)
local stages = require "loreley.stages"
local host = require "loreley.host"

-- Offers `elite` (from another island) to `island`; persists the cell when it enters.
local function migrate(ctx, elite, island)
  local status, _, cell = island.archive:add(elite.commit_hash, elite.objective, elite.measures,
    { metadata = elite.metadata, timestamp = host.time() })
  if status > 0 then
    assert(ctx.loreley.store:upsert_cell(island.id, island.archive:row(cell)))
    host.info("migrated %s (fitness %.4f) into island %s", elite.commit_hash:sub(1, 12),
      elite.objective, island.id)
  end
  return status > 0
end

local function best_elite(island)
  local best
  for e in island.archive:elites() do
    if not best or e.objective > best.objective then best = e end
  end
  return best
end

local function migration_round(ctx)
  local ids = ctx.island_ids
  local moved = 0
  for i, id in ipairs(ids) do
    local from = stages.island(ctx, id)
    local to = stages.island(ctx, ids[i % #ids + 1])
    local elite = best_elite(from)
    if elite and migrate(ctx, elite, to) then moved = moved + 1 end
  end
  return moved
end

return {
  init = function(ctx)
    stages.init(ctx)
    if not ctx.loreley.store then return end   -- stopped while waiting to lead
    local n = math.max(1, tonumber(ctx.args[1]) or 3)
    ctx.migrate_every = math.max(1, tonumber(ctx.args[2]) or 10)
    ctx.island_ids = { ctx.loreley.default_island }
    for i = 2, n do ctx.island_ids[i] = "island-" .. i end
    for _, id in ipairs(ctx.island_ids) do stages.island(ctx, id) end
    migration_round(ctx)   -- seeds empty islands from the bootstrapped one
  end,

  tick = function(ctx)
    if not stages.lead(ctx) then return end
    local ids = ctx.island_ids
    local island = ids[(ctx.tick - 1) % #ids + 1]
    local counts = stages.tick(ctx, { island = island })
    if ctx.tick % ctx.migrate_every == 0 then ctx:stage("migrate", migration_round) end
    return stages.next_delay(counts)
  end,

  shutdown = stages.shutdown,
}
