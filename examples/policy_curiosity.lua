-- A curious policy: prefer parents that have had few children. Elites that were rarely
-- explored get their turn; a lineage that keeps failing to improve stops hogging the
-- budget. The base is the least-used of a few uniformly drawn candidates (ties broken
-- at random, since the candidates come shuffled).
--
-- Children per commit are counted from the experiment's jobs at start-up and kept up to
-- date as jobs are scheduled, so a restart (or a SIGHUP reload) loses nothing.
--
--   loreley-host examples/policy_curiosity.lua -- [candidates]
local stages = require "loreley.stages"
local sampler = require "loreley.sampler"

local function count_children(ctx)
  local s = ctx.loreley
  local rows = assert(s.conn:query([[
SELECT base_commit_hash AS hash, count(*) AS n FROM evolution_jobs
WHERE experiment_id = $1 AND base_commit_hash IS NOT NULL GROUP BY base_commit_hash]],
    s.experiment.id))
  local children = {}
  for _, r in ipairs(rows) do children[r.hash] = r.n end
  return children
end

local function least_used_base(children, candidates)
  return function(archive, rng)
    local pool = archive:sample(candidates, rng, { replace = false })
    local best, best_n
    for _, e in ipairs(pool) do
      local n = children[e.commit_hash] or 0
      if not best or n < best_n then best, best_n = e, n end
    end
    if best then children[best.commit_hash] = (children[best.commit_hash] or 0) + 1 end
    return best
  end
end

return {
  init = function(ctx)
    stages.init(ctx)
    if not ctx.loreley.store then return end   -- stopped while waiting to lead
    ctx.children = count_children(ctx)
    ctx.curious_sampler = sampler.new {
      settings = ctx.settings, rng = ctx.loreley.rng,
      choose_base = least_used_base(ctx.children, tonumber(ctx.args[1]) or 8),
    }
  end,

  tick = function(ctx)
    local counts = stages.tick(ctx, { sampler = ctx.curious_sampler })
    return stages.next_delay(counts)
  end,

  shutdown = stages.shutdown,
}
