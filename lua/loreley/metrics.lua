-- loreley.metrics: histograms and the Prometheus text exposition format (version 0.0.4),
-- for the HTTP face's /metrics (loreley.monitor) and ctx:stage's statistics.
--
--   local metrics = require "loreley.metrics"
--   metrics.DURATION_BUCKETS          upper bounds in seconds (1 ms .. 5 min)
--   local h = metrics.histogram([bounds])   -> {bounds, counts, sum = 0, count = 0}
--   metrics.observe(h, value)         counts[i] += 1 for the first bound >= value (the
--                                     last slot is +Inf); sum and count grow
--   local e = metrics.exposition()
--   e:gauge(name, help, samples)      samples: a number, or { {labels, value}, ... }
--   e:counter(name, help, samples)    name must end in _total
--   e:histogram(name, help, samples)  samples: a histogram, or { {labels, histogram}, ... }
--   e:text() -> the exposition: "# HELP", "# TYPE", then the samples of each family
--   metrics.format_value(v)           "3", "0.25", "+Inf", "-Inf", "NaN"
--   metrics.escape_label(s)           \ " and newline escaped
--
-- Names and label names are checked (a bad one raises): metric names match
-- [a-zA-Z_:][a-zA-Z0-9_:]*, label names [a-zA-Z_][a-zA-Z0-9_]* and may not start with __
-- or be "le" (reserved for buckets). Labels of a sample are written sorted by name.
local M = {}

M.DURATION_BUCKETS = { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
  30, 60, 120, 300 }

function M.histogram(bounds)
  bounds = bounds or M.DURATION_BUCKETS
  for i = 2, #bounds do
    if not (bounds[i] > bounds[i - 1]) then
      error("loreley.metrics: histogram bounds must increase", 2)
    end
  end
  local counts = {}
  for i = 1, #bounds + 1 do counts[i] = 0 end
  return { bounds = bounds, counts = counts, sum = 0, count = 0 }
end

function M.observe(h, value)
  local bounds, i = h.bounds, 1
  while i <= #bounds and value > bounds[i] do i = i + 1 end
  h.counts[i] = h.counts[i] + 1
  h.sum = h.sum + value
  h.count = h.count + 1
end

function M.format_value(v)
  if v ~= v then return "NaN" end
  if v == math.huge then return "+Inf" end
  if v == -math.huge then return "-Inf" end
  if v == math.floor(v) and math.abs(v) < 2 ^ 53 then return ("%d"):format(v) end
  local s = ("%.15g"):format(v)
  if tonumber(s) ~= v then s = ("%.17g"):format(v) end
  return s
end
local format_value = M.format_value

function M.escape_label(s)
  return (tostring(s):gsub('[\\"\n]', { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }))
end

local function escape_help(s)
  return (tostring(s):gsub("[\\\n]", { ["\\"] = "\\\\", ["\n"] = "\\n" }))
end

local function check_name(name)
  if type(name) ~= "string" or not name:match("^[%a_:][%w_:]*$") then
    error(("loreley.metrics: invalid metric name %q"):format(tostring(name)), 3)
  end
end

-- {stage = "ingest"} -> 'stage="ingest"' (sorted), with an optional extra pair appended.
local function label_text(labels, extra_name, extra_value)
  local names = {}
  for k in pairs(labels or {}) do
    if type(k) ~= "string" or not k:match("^[%a_][%w_]*$") or k:match("^__") or k == "le" then
      error(("loreley.metrics: invalid label name %q"):format(tostring(k)), 4)
    end
    names[#names + 1] = k
  end
  table.sort(names)
  local parts = {}
  for i, k in ipairs(names) do
    parts[i] = ('%s="%s"'):format(k, M.escape_label(labels[k]))
  end
  if extra_name then parts[#parts + 1] = ('%s="%s"'):format(extra_name, extra_value) end
  if #parts == 0 then return "" end
  return "{" .. table.concat(parts, ",") .. "}"
end

local Exposition = {}
Exposition.__index = Exposition

function M.exposition()
  return setmetatable({ lines = {}, seen = {} }, Exposition)
end

local function header(self, name, kind, help)
  check_name(name)
  if self.seen[name] then
    error(("loreley.metrics: metric family %s written twice"):format(name), 3)
  end
  self.seen[name] = true
  local lines = self.lines
  lines[#lines + 1] = ("# HELP %s %s"):format(name, escape_help(help))
  lines[#lines + 1] = ("# TYPE %s %s"):format(name, kind)
end

local function simple(self, kind, name, help, samples)
  header(self, name, kind, help)
  local lines = self.lines
  if type(samples) == "number" then
    lines[#lines + 1] = name .. " " .. format_value(samples)
    return self
  end
  for _, s in ipairs(samples or {}) do
    lines[#lines + 1] = name .. label_text(s[1]) .. " " .. format_value(s[2])
  end
  return self
end

function Exposition:gauge(name, help, samples)
  return simple(self, "gauge", name, help, samples)
end

function Exposition:counter(name, help, samples)
  if type(name) == "string" and not name:match("_total$") then
    error(("loreley.metrics: counter %s must end in _total"):format(name), 2)
  end
  return simple(self, "counter", name, help, samples)
end

local function histogram_lines(lines, name, labels, h)
  local cumulative = 0
  for i, bound in ipairs(h.bounds) do
    cumulative = cumulative + h.counts[i]
    lines[#lines + 1] = ("%s_bucket%s %s"):format(name,
      label_text(labels, "le", format_value(bound)), format_value(cumulative))
  end
  lines[#lines + 1] = ("%s_bucket%s %s"):format(name, label_text(labels, "le", "+Inf"),
    format_value(h.count))
  lines[#lines + 1] = ("%s_sum%s %s"):format(name, label_text(labels), format_value(h.sum))
  lines[#lines + 1] = ("%s_count%s %s"):format(name, label_text(labels), format_value(h.count))
end

function Exposition:histogram(name, help, samples)
  header(self, name, "histogram", help)
  if samples.bounds then
    histogram_lines(self.lines, name, nil, samples)
  else
    for _, s in ipairs(samples) do histogram_lines(self.lines, name, s[1], s[2]) end
  end
  return self
end

function Exposition:text()
  return table.concat(self.lines, "\n") .. "\n"
end

return M
