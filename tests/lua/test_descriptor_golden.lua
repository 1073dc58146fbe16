-- ctest: labels=unit
-- loreley.descriptor against tests/golden/preprocess_chunk.json (from ../shared/golden): every case, run
-- through the reference implementation, must give the same selection, preprocessed
-- text, chunk ids, line ranges and contents. The only expected differences come from
-- the deliberate `**` change (a `**` segment in an excluded glob matches any number of
-- directories); they are listed per case below with the reason.
local t = require "support.t"
local cjson = require "cjson"
local descriptor = require "loreley.descriptor"

-- A copy of ../shared/golden/preprocess_chunk.json lives in tests/golden/, so the
-- repository tests on its own (a clean clone in CI has no shared/ beside it).
local path = (os.getenv("LORELEY_GOLDEN_DIR") or (t.source_dir .. "/tests/golden")) .. "/preprocess_chunk.json"
if not t.read(path) then error("golden file not found: " .. path, 0) end
local golden = cjson.decode(t.read(path))

-- Paths the `**` difference excludes on top of the reference (case -> path -> reason).
local GLOB_DIFFERENCE = {
  excluded_globs_default = {
    ["tests/unit/a.py"] = "'tests/**' now matches any depth under tests/",
    ["src/tests/sub/b.py"] = "'**/tests/**' now matches any depth under a tests/ directory",
    ["build/sub/o.py"] = "'build/**' now matches any depth under build/",
    ["a/node_modules/b/c.js"] = "'**/node_modules/**' now matches any depth",
    [".git/hooks/pre-commit.sh"] = "'.git/**' now matches any depth under .git/",
  },
  excluded_globs_custom = {
    ["vendor/z.c"] = "'vendor/**/*.c': '**' may match zero directories",
    ["vendor/a/b/z.c"] = "'vendor/**/*.c': '**' may match two directories",
    ["deep/k.go"] = "'**/deep/*.go': a leading '**' may match zero directories",
  },
}

-- Settings table for descriptor.options: the case's overrides on top of the defaults.
local function settings_for(case)
  local s = {}
  for k, v in pairs(golden.meta.defaults) do s[k] = v end
  for k, v in pairs(case.settings_overrides) do s[k] = v end
  return s
end

-- The reference's inputs as the Lua shapes the module accepts.
local function lua_inputs(case)
  local out = {}
  for i, input in ipairs(case.inputs or {}) do
    if input.type == "ChangedFile" then
      local content = input.content
      if content == cjson.null then content = nil end
      out[i] = { path = input.path, change_count = input.change_count, content = content }
    elseif input.type == "mapping" then
      local m = {}
      for k, v in pairs(input.value) do
        if v ~= cjson.null then m[k] = v end
      end
      out[i] = m
    elseif input.type == "tuple" then
      out[i] = { input.value[1], input.value[2] }
    elseif input.type == "str" then
      out[i] = input.value
    else
      error("unknown input type " .. tostring(input.type))
    end
  end
  return out
end

local function without(list, drop)
  if not drop then return list end
  local out = {}
  for _, e in ipairs(list) do
    if not drop[e.path] then out[#out + 1] = e end
  end
  return out
end

local function check_chunked(actual, expected, label)
  t.eq(#actual, #expected, label .. ": chunked file count")
  for i, exp in ipairs(expected) do
    local got = actual[i]
    local where = ("%s: chunked[%d] %s"):format(label, i, exp.path)
    t.eq(got.path, exp.path, where .. ": path")
    t.eq(got.change_count, exp.change_count, where .. ": change_count")
    t.eq(got.total_lines, exp.total_lines, where .. ": total_lines")
    t.eq(#got.chunks, #exp.chunks, where .. ": chunk count")
    for j, ec in ipairs(exp.chunks) do
      local gc = got.chunks[j]
      local w = ("%s chunk %d"):format(where, j)
      t.eq(gc.id, ec.chunk_id, w .. ": id")
      t.eq(gc.index, ec.index, w .. ": index")
      t.eq(gc.start_line, ec.start_line, w .. ": start_line")
      t.eq(gc.end_line, ec.end_line, w .. ": end_line")
      t.eq(gc.line_count, ec.line_count, w .. ": line_count")
      t.eq(gc.change_count, ec.change_count, w .. ": change_count")
      t.eq(gc.content, ec.content, w .. ": content")
    end
  end
end

t.case("the golden file has the expected cases", function()
  t.eq(golden.meta.case_count, #golden.cases)
  t.ok(#golden.cases >= 30, "30 cases")
end)

for _, case in ipairs(golden.cases) do
  t.case(case.name, function()
    local opts = descriptor.options(settings_for(case))
    opts.repo_root = golden.meta.repo_root   -- does not exist here either: nothing on disk
    local drop = GLOB_DIFFERENCE[case.name]
    if case.chunk_input then
      local chunked = descriptor.chunk(case.chunk_input, opts)
      check_chunked(chunked, case.output.chunked, case.name)
      return
    end
    local inputs = lua_inputs(case)
    local selected = descriptor.select(inputs, opts)
    local expected_selected = without(case.output.selected, drop)
    t.eq(#selected, #expected_selected, "selected count")
    for i, exp in ipairs(expected_selected) do
      t.eq(selected[i].path, exp.path, ("selected[%d].path"):format(i))
      t.eq(selected[i].change_count, exp.change_count, ("selected[%d].change_count"):format(i))
    end
    local kept, skipped = descriptor.preprocess(inputs, opts)
    local expected_pre = without(case.output.preprocessed, drop)
    t.eq(#kept, #expected_pre, "preprocessed count")
    for i, exp in ipairs(expected_pre) do
      t.eq(kept[i].path, exp.path, ("preprocessed[%d].path"):format(i))
      t.eq(kept[i].change_count, exp.change_count, ("preprocessed[%d].change_count"):format(i))
      t.eq(kept[i].content, exp.content, ("preprocessed[%d].content (%s)"):format(i, exp.path))
    end
    -- Every input is accounted for: kept or skipped with a reason.
    t.eq(#kept + #skipped, #inputs, "kept + skipped")
    for _, s in ipairs(skipped) do
      t.ok(type(s.reason) == "string" and #s.reason > 0, "skip reason for " .. tostring(s.path))
    end
    local chunked = descriptor.chunk(kept, opts)
    local expected_chunked = without(case.output.chunked, drop)
    check_chunked(chunked, expected_chunked, case.name)
    -- The glob difference really applied (and nothing else moved).
    if drop then
      local dropped = 0
      for _, s in ipairs(skipped) do
        if drop[s.path] then
          dropped = dropped + 1
          t.match(s.reason, "^excluded by glob", s.path)
        end
      end
      local n = 0
      for _ in pairs(drop) do n = n + 1 end
      t.eq(dropped, n, "paths excluded by the ** difference")
    end
  end)
end

t.finish()
