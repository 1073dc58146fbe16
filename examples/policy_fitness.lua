-- A policy with fitness-aware parents: the base of each new job is drawn with a softmax
-- over fitness instead of uniformly (the reference ignores fitness when it picks a
-- parent; only the archive's elitism applies).
--
-- To stay cheap on archives of any size, the softmax runs over a uniform sample of
-- CANDIDATES elites ("softmax tournament"): with TEMPERATURE -> 0 it always takes the
-- fittest candidate, with a large temperature it is the uniform choice again.
-- Fitness is rescaled to [0, 1] within the candidates, so the temperature does not
-- depend on the units of the metric.
--
--   loreley-host examples/policy_fitness.lua -- [temperature] [candidates]
local stages = require "loreley.stages"
local sampler = require "loreley.sampler"

local function softmax_base(temperature, candidates)
  return function(archive, rng)
    local pool = archive:sample(candidates, rng, { replace = false })
    if #pool <= 1 then return pool[1] end
    local lo, hi = math.huge, -math.huge
    for _, e in ipairs(pool) do
      lo, hi = math.min(lo, e.objective), math.max(hi, e.objective)
    end
    local span = hi - lo
    local weights, total = {}, 0
    for i, e in ipairs(pool) do
      local x = span > 0 and (e.objective - hi) / span or 0   -- in [-1, 0]
      weights[i] = math.exp(x / temperature)
      total = total + weights[i]
    end
    local r = rng:random() * total
    for i, w in ipairs(weights) do
      r = r - w
      if r <= 0 then return pool[i] end
    end
    return pool[#pool]
  end
end

return {
  init = function(ctx)
    stages.init(ctx)
    if not ctx.loreley.store then return end   -- stopped while waiting to lead
    local temperature = tonumber(ctx.args[1]) or 0.1
    local candidates = tonumber(ctx.args[2]) or 32
    ctx.fitness_sampler = sampler.new {
      settings = ctx.settings, rng = ctx.loreley.rng,
      choose_base = softmax_base(temperature, candidates),
    }
  end,

  tick = function(ctx)
    local counts = stages.tick(ctx, { sampler = ctx.fitness_sampler })
    return stages.next_delay(counts)
  end,

  shutdown = stages.shutdown,
}
