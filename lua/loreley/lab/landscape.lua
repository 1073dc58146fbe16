-- loreley.lab.landscape: synthetic fitness landscapes for the policy lab.
--
-- A landscape is a Lua file that returns a table; it stands in for the LLM (vary) and
-- the evaluator plus descriptor (evaluate), with no git and no embedding:
--
--   return {
--     dims = 2,                          -- measures per individual (required)
--     evaluate = function(genome)        -- required: fitness (higher is better), measures
--       return 1 - (genome[1] - 0.7)^2 - (genome[2] - 0.2)^2, { genome[1], genome[2] }
--     end,
--   }
--
-- Optional keys:
--   name          shown in outputs (default: the file name)
--   description   one line for --list-landscapes
--   lower, upper  measure bounds, numbers or arrays of dims numbers (default 0 and 1):
--                 the archive's MAPELITES_FEATURE_LOWER/UPPER_BOUNDS
--   cells         archive cells per measure dimension (default 20)
--   size          genome length for the default root and vary (default dims)
--   genome_lower, genome_upper   genome bounds, numbers or arrays (default 0 and 1)
--   step          the default vary's mutation: a normal step of step * (upper - lower)
--                 per gene (default 0.05)
--   crossover     the default vary's probability of taking genes from an inspiration
--                 (default 0.5)
--   root(rng) -> genome                  the first individual (default: genome midpoint)
--   vary(base, inspirations, rng) -> genome   a child from the base genome and the
--                 inspirations' genomes (default: uniform crossover with one inspiration,
--                 then a normal mutation of every gene, clipped to the genome bounds)
--
-- rng is a seeded loreley.host rng (rng:random(), rng:uniform(a, b), rng:normal(mu,
-- sigma), rng:below(n), rng:choice(t)); use it, not math.random, so runs repeat.
--
--   local landscape = require "loreley.lab.landscape"
--   local ls = assert(landscape.load("deceptive"))     -- a built-in name or a file path
--   ls:root(rng) -> genome, fitness, measures
--   ls:child(base_genome, inspiration_genomes, rng) -> genome, fitness, measures
--   ls:check(seed) -> true | nil, message               -- a smoke test of every function
--   landscape.builtin  -- { "smooth", "deceptive", "plateaus" }
-- Mistakes in a landscape (a syntax error, a missing or misspelt key, a function that
-- returns the wrong thing, NaN fitness) raise or return a message that names the file
-- and the line of the function at fault.
local host = require "loreley.host"

local M = {}

M.builtin = { "smooth", "deceptive", "plateaus" }

local KEYS = { name = "string", description = "string", dims = "number", lower = "bounds",
  upper = "bounds", cells = "number", size = "number", genome_lower = "bounds",
  genome_upper = "bounds", step = "number", crossover = "number", root = "function",
  vary = "function", evaluate = "function" }

local Landscape = {}
Landscape.__index = Landscape

local function is_finite(v)
  return type(v) == "number" and v == v and v ~= math.huge and v ~= -math.huge
end

-- "file:line" of a function (its definition), for messages about what it returned.
local function where(fn)
  local info = debug.getinfo(fn, "S")
  return ("%s:%d"):format(info.short_src, info.linedefined)
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = tostring(k) end
  table.sort(keys)
  return keys
end

-- A number or an array of n numbers -> an array of n finite numbers.
local function expand(value, n, default, what, path)
  if value == nil then value = default end
  local out = {}
  if type(value) == "number" then
    for i = 1, n do out[i] = value end
  elseif type(value) == "table" then
    if #value ~= n then
      error(("%s: %s must have %d numbers (one per dimension), got %d"):format(path, what, n,
        #value), 0)
    end
    for i = 1, n do out[i] = value[i] end
  else
    error(("%s: %s must be a number or an array of numbers, got %s"):format(path, what,
      type(value)), 0)
  end
  for i = 1, n do
    if not is_finite(out[i]) then
      error(("%s: %s[%d] must be a finite number, got %s"):format(path, what, i,
        tostring(out[i])), 0)
    end
  end
  return out
end

local function check_integer(v, what, path, min)
  if type(v) ~= "number" or v ~= math.floor(v) or v < min or v > 64 and what == "dims" then
    error(("%s: %s must be an integer >= %d%s, got %s"):format(path, what, min,
      what == "dims" and " (and <= 64)" or "", tostring(v)), 0)
  end
  return v
end

-- Builds a landscape object from the table a file returned; raises with "path: ...".
function M.from_table(t, path, default_name)
  if type(t) ~= "table" then
    error(("%s: a landscape must return a table, got %s"):format(path, type(t)), 0)
  end
  for _, key in ipairs(sorted_keys(t)) do
    local want = KEYS[key]
    if not want then
      error(("%s: unknown key '%s' in the landscape table (allowed: %s)"):format(path, key,
        table.concat(sorted_keys(KEYS), ", ")), 0)
    end
    local v = t[key]
    local ok = want == "bounds" and (type(v) == "number" or type(v) == "table")
      or type(v) == want
    if not ok then
      error(("%s: landscape '%s' must be a %s, got %s"):format(path, key,
        want == "bounds" and "number or an array of numbers" or want, type(v)), 0)
    end
  end
  if t.evaluate == nil then
    error(("%s: the landscape table has no 'evaluate' function (genome -> fitness, measures)")
      :format(path), 0)
  end
  if t.dims == nil then
    error(("%s: the landscape table has no 'dims' (the number of measures)"):format(path), 0)
  end
  local self = setmetatable({ path = path, source = t }, Landscape)
  self.name = t.name or default_name
  self.description = t.description or ""
  self.dims = check_integer(t.dims, "dims", path, 1)
  self.lower = expand(t.lower, self.dims, 0, "lower", path)
  self.upper = expand(t.upper, self.dims, 1, "upper", path)
  for i = 1, self.dims do
    if self.upper[i] <= self.lower[i] then
      error(("%s: upper[%d] (%s) must be above lower[%d] (%s)"):format(path, i,
        tostring(self.upper[i]), i, tostring(self.lower[i])), 0)
    end
  end
  self.cells = check_integer(t.cells or 20, "cells", path, 2)
  self.size = check_integer(t.size or self.dims, "size", path, 1)
  self.genome_lower = expand(t.genome_lower, self.size, 0, "genome_lower", path)
  self.genome_upper = expand(t.genome_upper, self.size, 1, "genome_upper", path)
  self.step = t.step or 0.05
  if not is_finite(self.step) or self.step < 0 then
    error(("%s: step must be a finite number >= 0, got %s"):format(path, tostring(t.step)), 0)
  end
  self.crossover = t.crossover or 0.5
  if not is_finite(self.crossover) or self.crossover < 0 or self.crossover > 1 then
    error(("%s: crossover must be a probability in [0, 1], got %s"):format(path,
      tostring(t.crossover)), 0)
  end
  self.evaluate_fn = t.evaluate
  self.root_fn = t.root
  self.vary_fn = t.vary
  return self
end

local function read_builtin(name)
  local path = "loreley/lab/landscapes/" .. name .. ".lua"
  local text = host.resource(path)
  if not text then return nil end
  return text, "[embedded]/" .. path
end

-- landscape.load(name_or_path) -> landscape | nil, message, kind
-- A name without "/" and ".lua" is a built-in landscape; anything else is a file. kind
-- is "usage" when there is no such landscape, "invalid" when it is broken.
function M.load(spec)
  if type(spec) ~= "string" or spec == "" then
    return nil, "landscape: a built-in name or a file path is required", "usage"
  end
  local chunk, err, path, default_name
  if not spec:find("/", 1, true) and not spec:match("%.lua$") then
    local text, chunkpath = read_builtin(spec)
    if not text then
      return nil, ("unknown landscape '%s' (built-in: %s; or give a .lua file)")
        :format(spec, table.concat(M.builtin, ", ")), "usage"
    end
    path, default_name = chunkpath, spec
    chunk, err = loadstring(text, "@" .. chunkpath)
  else
    path = spec
    default_name = spec:match("([^/]+)%.lua$") or spec:match("[^/]+$")
    local f, ferr = io.open(spec, "rb")
    if not f then return nil, ("landscape %s"):format(tostring(ferr)), "usage" end
    local text = f:read("*a")
    f:close()
    if text:sub(1, 2) == "#!" then text = text:gsub("^[^\n]*", "") end
    chunk, err = loadstring(text, "@" .. spec)
  end
  if not chunk then return nil, ("landscape %s"):format(tostring(err)), "invalid" end
  local ok, value = pcall(chunk)
  if not ok then
    return nil, ("landscape %s failed while loading: %s"):format(path, tostring(value)), "invalid"
  end
  local built
  ok, built = pcall(M.from_table, value, path, default_name)
  if not ok then return nil, tostring(built), "invalid" end
  return built
end

-- --- running the functions ------------------------------------------------------------

local function call(self, fn, what, ...)
  local results = { pcall(fn, ...) }
  if not results[1] then
    error(("landscape %s: %s failed: %s"):format(self.name, what, tostring(results[2])), 0)
  end
  return unpack(results, 2, table.maxn(results))
end

-- Checks what evaluate returned; raises "file:line: evaluate returned ...".
function Landscape:evaluate(genome)
  local fitness, measures = call(self, self.evaluate_fn, "evaluate", genome)
  local at = where(self.evaluate_fn)
  if type(fitness) ~= "number" then
    error(("%s: evaluate returned fitness of type %s (expected a finite number)")
      :format(at, type(fitness)), 0)
  end
  if not is_finite(fitness) then
    error(("%s: evaluate returned fitness %s (expected a finite number)")
      :format(at, tostring(fitness)), 0)
  end
  if type(measures) ~= "table" then
    error(("%s: evaluate returned measures of type %s (expected an array of %d numbers)")
      :format(at, type(measures), self.dims), 0)
  end
  if #measures ~= self.dims then
    error(("%s: evaluate returned %d measure(s); the landscape declares dims = %d")
      :format(at, #measures, self.dims), 0)
  end
  local copy = {}
  for i = 1, self.dims do
    local m = measures[i]
    if not is_finite(m) then
      error(("%s: evaluate returned measure %d = %s (expected a finite number)")
        :format(at, i, tostring(m)), 0)
    end
    copy[i] = m
  end
  return fitness, copy
end

local function check_genome(self, fn, what, genome)
  if genome == nil then
    error(("%s: %s returned nil (expected a genome)"):format(where(fn), what), 0)
  end
  return genome
end

local function clip(self, g)
  local lo, hi = self.genome_lower, self.genome_upper
  for i = 1, self.size do
    local v = g[i]
    if v < lo[i] then v = lo[i] elseif v > hi[i] then v = hi[i] end
    g[i] = v
  end
  return g
end

function Landscape:default_root()
  local g = {}
  for i = 1, self.size do g[i] = (self.genome_lower[i] + self.genome_upper[i]) / 2 end
  return g
end

local function check_vector(self, g, what)
  if type(g) ~= "table" or #g ~= self.size then
    error(("landscape %s: the default vary needs %s genomes of %d numbers, got %s"):format(
      self.name, what, self.size, type(g) == "table" and (#g .. " value(s)") or type(g)), 0)
  end
end

-- The default vary: uniform crossover with one random inspiration (probability
-- `crossover`), then a normal step on every gene, clipped to the genome bounds.
function Landscape:default_vary(base, inspirations, rng)
  check_vector(self, base, "base")
  local child = {}
  for i = 1, self.size do child[i] = base[i] end
  if #inspirations > 0 and rng:random() < self.crossover then
    local other = inspirations[rng:random(#inspirations)]
    check_vector(self, other, "inspiration")
    for i = 1, self.size do
      if rng:random() < 0.5 then child[i] = other[i] end
    end
  end
  for i = 1, self.size do
    child[i] = child[i] + rng:normal(0, self.step * (self.genome_upper[i] - self.genome_lower[i]))
  end
  return clip(self, child)
end

-- The first individual: genome, fitness, measures.
function Landscape:root(rng)
  local genome
  if self.root_fn then
    genome = check_genome(self, self.root_fn, "root", call(self, self.root_fn, "root", rng))
  else
    genome = self:default_root()
  end
  local fitness, measures = self:evaluate(genome)
  return genome, fitness, measures
end

-- A child of base with the inspirations' genomes: genome, fitness, measures.
function Landscape:child(base, inspirations, rng)
  local genome
  if self.vary_fn then
    genome = check_genome(self, self.vary_fn, "vary",
      call(self, self.vary_fn, "vary", base, inspirations, rng))
  else
    genome = self:default_vary(base, inspirations, rng)
  end
  local fitness, measures = self:evaluate(genome)
  return genome, fitness, measures
end

-- Runs root, vary and evaluate a few times, so a broken landscape is reported before
-- any server starts. Returns true or nil, message.
function Landscape:check(seed)
  local ok, err = pcall(function()
    local rng = host.rng("loreley.lab.check:" .. tostring(seed or 0))
    local root = self:root(rng)
    local pool = { root }
    for _ = 1, 8 do
      local base = pool[rng:random(#pool)]
      local child = self:child(base, { pool[rng:random(#pool)] }, rng)
      pool[#pool + 1] = child
    end
  end)
  if not ok then return nil, tostring(err) end
  return true
end

return M
