-- A strict reader of the Prometheus text exposition format (version 0.0.4), written from
-- the format's rules, for the tests of /metrics:
--   - "# HELP name text" and "# TYPE name counter|gauge|histogram|summary|untyped"; at
--     most one of each per family, before the family's samples; HELP escapes \\ and \n;
--   - a sample: name{label="value",...} value [timestamp]; names match
--     [a-zA-Z_:][a-zA-Z0-9_:]*, label names [a-zA-Z_][a-zA-Z0-9_]*; label values escape
--     \\, \" and \n only; a value is a float, +Inf, -Inf or NaN;
--   - the samples of a family are contiguous; no series (name + labels) repeats;
--   - a counter's samples are >= 0 (and the family should end in _total);
--   - a histogram has, per label set, name_bucket samples with an "le" label in
--     increasing order, cumulative (non-decreasing) counts, a last bucket le="+Inf",
--     name_count equal to the +Inf bucket, and name_sum;
--   - the text ends with a newline.
--
--   local prom = require "support.prometheus"
--   local families = assert(prom.parse(text))   -- nil, "line N: what is wrong"
--   families[name] = {type, help, samples = { {name, labels = {k = v}, value}, ... }}
--   prom.value(families, name[, labels]) -> the value of one series, or nil
local M = {}

local function unescape_label(s, lineno)
  local out, i = {}, 1
  while i <= #s do
    local c = s:sub(i, i)
    if c == "\\" then
      local n = s:sub(i + 1, i + 1)
      if n == "\\" then out[#out + 1] = "\\"
      elseif n == '"' then out[#out + 1] = '"'
      elseif n == "n" then out[#out + 1] = "\n"
      else return nil, ("line %d: invalid escape \\%s in a label value"):format(lineno, n) end
      i = i + 2
    else
      out[#out + 1] = c
      i = i + 1
    end
  end
  return table.concat(out)
end

local function parse_value(text)
  if text == "+Inf" then return math.huge end
  if text == "-Inf" then return -math.huge end
  if text == "NaN" then return 0 / 0 end
  if not text:match("^[+-]?%d*%.?%d+[eE]?[+-]?%d*$") and not text:match("^[+-]?%d+%.?%d*[eE][+-]?%d+$") then
    return nil
  end
  return tonumber(text)
end

-- Splits 'name{a="x",b="y"} value' into name, labels, value text.
local function parse_sample(line, lineno)
  local name, rest = line:match("^([%a_:][%w_:]*)(.*)$")
  if not name then return nil, ("line %d: invalid metric name in %q"):format(lineno, line) end
  local labels = {}
  local order = {}
  if rest:sub(1, 1) == "{" then
    local i = 2
    while true do
      if rest:sub(i, i) == "}" then i = i + 1 break end
      local lname, j = rest:match("^([%a_][%w_]*)=\"()", i)
      if not lname then
        return nil, ("line %d: invalid label at %q"):format(lineno, rest:sub(i))
      end
      -- the value runs to the first unescaped quote
      local k = j
      while true do
        local c = rest:sub(k, k)
        if c == "" then return nil, ("line %d: unterminated label value"):format(lineno) end
        if c == "\\" then k = k + 2
        elseif c == '"' then break
        elseif c == "\n" then return nil, ("line %d: raw newline in a label value"):format(lineno)
        else k = k + 1 end
      end
      local value, err = unescape_label(rest:sub(j, k - 1), lineno)
      if not value then return nil, err end
      if labels[lname] then return nil, ("line %d: label %s repeated"):format(lineno, lname) end
      labels[lname] = value
      order[#order + 1] = lname
      i = k + 1
      local sep = rest:sub(i, i)
      if sep == "," then i = i + 1
      elseif sep ~= "}" then return nil, ("line %d: expected , or } after a label"):format(lineno) end
    end
    rest = rest:sub(i)
  end
  local value_text, ts = rest:match("^ (%S+)( ?%S*)$")
  if not value_text then return nil, ("line %d: expected ' value' after the series"):format(lineno) end
  if ts ~= "" and not ts:match("^ %-?%d+$") then
    return nil, ("line %d: invalid timestamp"):format(lineno)
  end
  local value = parse_value(value_text)
  if value == nil then return nil, ("line %d: invalid value %q"):format(lineno, value_text) end
  return name, labels, value, order
end

local function series_key(name, labels)
  local keys = {}
  for k in pairs(labels) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = { name }
  for _, k in ipairs(keys) do parts[#parts + 1] = k .. "=" .. labels[k] end
  return table.concat(parts, "\0")
end

-- The family a sample name belongs to, given the declared families.
local function family_of(families, name)
  if families[name] then return name end
  for _, suffix in ipairs { "_bucket", "_sum", "_count" } do
    local base = name:match("^(.*)" .. suffix .. "$")
    if base and families[base] and families[base].type == "histogram" then return base end
  end
  return name
end

local function check_histogram(fam)
  local groups, order = {}, {}
  for _, s in ipairs(fam.samples) do
    local base = {}
    for k, v in pairs(s.labels) do if k ~= "le" then base[k] = v end end
    local key = series_key("", base)
    local g = groups[key]
    if not g then
      g = { buckets = {} }
      groups[key] = g
      order[#order + 1] = key
    end
    if s.name == fam.name .. "_bucket" then
      if not s.labels.le then return nil, fam.name .. "_bucket without an le label" end
      local le = parse_value(s.labels.le)
      if not le then return nil, ("%s: invalid le %q"):format(fam.name, s.labels.le) end
      g.buckets[#g.buckets + 1] = { le = le, value = s.value }
    elseif s.name == fam.name .. "_sum" then g.sum = s.value
    elseif s.name == fam.name .. "_count" then g.count = s.value
    else return nil, ("%s: unexpected sample %s in a histogram"):format(fam.name, s.name) end
  end
  for _, key in ipairs(order) do
    local g = groups[key]
    if #g.buckets == 0 then return nil, fam.name .. ": a histogram series without buckets" end
    for i = 2, #g.buckets do
      if not (g.buckets[i].le > g.buckets[i - 1].le) then
        return nil, fam.name .. ": bucket bounds are not increasing"
      end
      if g.buckets[i].value < g.buckets[i - 1].value then
        return nil, fam.name .. ": bucket counts are not cumulative"
      end
    end
    local last = g.buckets[#g.buckets]
    if last.le ~= math.huge then return nil, fam.name .. ': the last bucket is not le="+Inf"' end
    if g.count == nil then return nil, fam.name .. "_count is missing" end
    if g.sum == nil then return nil, fam.name .. "_sum is missing" end
    if g.count ~= last.value then
      return nil, ("%s_count (%s) differs from the +Inf bucket (%s)"):format(fam.name,
        tostring(g.count), tostring(last.value))
    end
  end
  return true
end

function M.parse(text)
  if text:sub(-1) ~= "\n" then return nil, "the exposition does not end with a newline" end
  local families, seen_series, done = {}, {}, {}
  local current
  local lineno = 0
  for line in text:gmatch("([^\n]*)\n") do
    lineno = lineno + 1
    if line:match("^#") then
      local kind, name, rest = line:match("^# (%u+) ([%a_:][%w_:]*) ?(.*)$")
      if kind == "HELP" or kind == "TYPE" then
        if done[name] then
          return nil, ("line %d: %s of %s after its samples ended"):format(lineno, kind, name)
        end
        local fam = families[name] or { name = name, samples = {} }
        families[name] = fam
        if current and current ~= name then done[current] = true end
        current = name
        if #fam.samples > 0 then
          return nil, ("line %d: %s of %s after its samples"):format(lineno, kind, name)
        end
        if kind == "HELP" then
          if fam.help then return nil, ("line %d: second HELP for %s"):format(lineno, name) end
          local i = 1
          while i <= #rest do   -- HELP escapes only \\ and \n
            if rest:sub(i, i) == "\\" then
              if not rest:sub(i + 1, i + 1):match("^[\\n]$") then
                return nil, ("line %d: invalid escape in HELP"):format(lineno)
              end
              i = i + 2
            else
              i = i + 1
            end
          end
          fam.help = rest
        else
          if fam.type then return nil, ("line %d: second TYPE for %s"):format(lineno, name) end
          if not ({ counter = 1, gauge = 1, histogram = 1, summary = 1, untyped = 1 })[rest] then
            return nil, ("line %d: unknown type %q"):format(lineno, rest)
          end
          fam.type = rest
        end
      end
    elseif line:match("^%s*$") then
      -- blank lines are allowed
    else
      local name, labels, value = parse_sample(line, lineno)
      if not name then return nil, labels end
      local fname = family_of(families, name)
      if done[fname] then
        return nil, ("line %d: samples of %s are not contiguous"):format(lineno, fname)
      end
      if current and current ~= fname then done[current] = true end
      current = fname
      local fam = families[fname]
      if not fam then
        fam = { name = fname, samples = {}, type = "untyped" }
        families[fname] = fam
      end
      fam.type = fam.type or "untyped"
      if fam.type == "histogram" and labels.le == nil and name == fname .. "_bucket" then
        return nil, ("line %d: bucket without le"):format(lineno)
      end
      if fam.type ~= "histogram" and labels.le ~= nil and fam.type ~= "summary" then
        return nil, ("line %d: le label outside a histogram"):format(lineno)
      end
      local key = series_key(name, labels)
      if seen_series[key] then return nil, ("line %d: series repeated: %s"):format(lineno, line) end
      seen_series[key] = true
      if fam.type == "counter" and not (value >= 0) then
        return nil, ("line %d: a counter is negative or NaN"):format(lineno)
      end
      fam.samples[#fam.samples + 1] = { name = name, labels = labels, value = value }
    end
  end
  for _, fam in pairs(families) do
    if fam.type == "histogram" then
      local ok, err = check_histogram(fam)
      if not ok then return nil, err end
    end
  end
  return families
end

function M.value(families, name, labels)
  labels = labels or {}
  local fam = families[family_of(families, name)]
  if not fam then return nil end
  for _, s in ipairs(fam.samples) do
    if s.name == name then
      local match = true
      for k, v in pairs(labels) do if s.labels[k] ~= v then match = false end end
      for k in pairs(s.labels) do if labels[k] == nil then match = false end end
      if match then return s.value end
    end
  end
  return nil
end

return M
