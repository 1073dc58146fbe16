-- ctest: labels=unit timeout=60
-- Repository and experiment identity against every case of the golden file computed by
-- the reference (tests/golden/experiment_identity.json, a copy of
-- shared/golden): config snapshot text and SHA-256 at 331a15c and with the later
-- non-finite encodings, remote URL normalisation, slugs and canonicalise_repository
-- results at 331a15c and 5487812. No database needed.
local t = require "support.t"
local cjson = require "cjson"
local settings = require "loreley.settings"
local experiment = require "loreley.experiment"
local db = require "loreley.db"

local golden_path = t.source_dir .. "/tests/golden/experiment_identity.json"
local golden = cjson.decode((assert(t.read(golden_path), "missing " .. golden_path)))
local dir = t.tmpdir()

local function by_kind(kind)
  local out = {}
  for _, c in ipairs(golden.cases) do
    if c.kind == kind then out[#out + 1] = c end
  end
  return out
end

local function load_settings(case)
  local dotenv = false
  if type(case.dotenv) == "string" then
    dotenv = t.write(dir .. "/" .. case.name .. ".env", case.dotenv)
  end
  local env = {}
  for k, v in pairs(case.env) do env[k] = v end
  return assert(settings.load { env = env, dotenv = dotenv })
end

t.case("config hash: every golden case, all three encodings", function()
  local cases = by_kind("config_hash")
  t.ok(#cases >= 18, "expected the 18 config_hash cases")
  for _, case in ipairs(cases) do
    local s = load_settings(case)
    t.eq(#experiment.config_snapshot(s), case.key_count, case.name .. " key count")
    t.eq(experiment.canonical_json(s, "331a15c"), case.snapshot_canonical_json,
      case.name .. " 331a15c text")
    t.eq(experiment.config_hash(s, "331a15c"), case.sha256, case.name .. " 331a15c hash")
    local later = case.later_encodings
    t.eq(experiment.canonical_json(s, "3bcb21d"),
      later["3bcb21d_nonfinite_to_null"].snapshot_canonical_json, case.name .. " 3bcb21d text")
    t.eq(experiment.config_hash(s, "3bcb21d"), later["3bcb21d_nonfinite_to_null"].sha256,
      case.name .. " 3bcb21d hash")
    t.eq(experiment.canonical_json(s, "2f7f203"),
      later["2f7f203_nonfinite_sentinel"].snapshot_canonical_json, case.name .. " 2f7f203 text")
    t.eq(experiment.config_hash(s), later["2f7f203_nonfinite_sentinel"].sha256,
      case.name .. " default (2f7f203) hash")
    t.eq(experiment.config_hash(s, "331a15c"):sub(1, 8), case.experiment_name_suffix,
      case.name .. " name suffix")
  end
end)

t.case("config hash: the spec's recorded default hashes", function()
  local s = assert(settings.load { env = {}, dotenv = false })
  local checked = golden.meta.spec_hashes_checked
  t.eq(experiment.config_hash(s, "331a15c"), checked["331a15c"])
  t.eq(experiment.config_hash(s, "3bcb21d"), checked["3bcb21d"])
  t.eq(experiment.config_hash(s, "2f7f203"), checked["2f7f203"])
  t.eq(experiment.config_hash(s), "a213c35b398dca2f3f7d5ee583976e6a5cc4f991f20ad31becd507f49d551db7")
end)

t.case("threshold_min encodings", function()
  local s = assert(settings.load { env = {}, dotenv = false })
  local names = { ["331a15c312e6fac8ab37140dae92c6a705f88132"] = "331a15c",
    ["3bcb21d4917f9749bd5da917f3dee65ee64dba35"] = "3bcb21d",
    ["2f7f2034c36ad1d40e1b403373780152df5495da"] = "2f7f203" }
  local cases = by_kind("threshold_min_encoding")
  t.eq(#cases, 3)
  for _, case in ipairs(cases) do
    local enc = assert(names[case.commit], case.commit)
    local text = experiment.canonical_json(s, enc)
    t.eq(text, case.snapshot_canonical_json, enc)
    t.ok(text:find(case.threshold_min_fragment, 1, true), enc .. " fragment")
    t.eq(experiment.config_hash(s, enc), case.sha256, enc)
  end
end)

local function check_value(got, err, expected, what)
  if expected.error then
    t.eq(got, nil, what .. " should fail")
    t.eq(err, expected.error.message, what .. " error")
  else
    t.eq(got, expected.value, what)
  end
end

local function check_canonical(desc, err, expected, what)
  if expected.error then
    t.eq(desc, nil, what .. " should fail")
    t.ok(err:find(expected.error.message, 1, true), what .. ": error " .. tostring(err))
    return
  end
  t.ok(desc, what .. ": " .. tostring(err))
  t.eq(desc.slug, expected.slug, what .. " slug")
  t.eq(desc.remote_url, expected.remote_url ~= cjson.null and expected.remote_url or nil,
    what .. " remote_url")
  t.eq(desc.root_path, expected.root_path, what .. " root_path")
  -- extra as the reference writes it (JSON null for a missing origin)
  t.same(cjson.decode(db.json_encode(desc.extra)), expected.extra, what .. " extra")
end

t.case("remote URLs: normalisation, slug of the URL, canonicalise_repository", function()
  local cases = by_kind("remote_url")
  t.ok(#cases >= 29)
  for _, case in ipairs(cases) do
    for _, variant in ipairs { "331a15c", "5487812" } do
      local what = case.name .. "@" .. variant
      local got, err = experiment.normalise_remote_url(case.url, variant)
      check_value(got, err, case.normalise_remote_url[variant], what .. " normalise")
      got, err = experiment.build_slug(case.url, variant)
      check_value(got, err, case.build_slug_from_source_of_url[variant], what .. " slug")
      -- GitPython hands .git/config values over with backslash escapes undecoded: the
      -- reference saw "C:\\Users..." for a URL stored as C:\Users... (windows_path).
      local url = case.name == "windows_path" and case.url:gsub("\\", "\\\\") or case.url
      local desc, derr = experiment.describe_repository(case.canonicalise_repository.root,
        { { name = "origin", url = url } }, { variant = variant })
      check_canonical(desc, derr, case.canonicalise_repository[variant], what .. " canonical")
    end
  end
end)

t.case("local roots", function()
  local cases = by_kind("local_root")
  t.ok(#cases >= 8)
  for _, case in ipairs(cases) do
    for _, variant in ipairs { "331a15c", "5487812" } do
      local expected = case.canonicalise_repository[variant]
      if not expected.error then   -- "not a git repository" is the git module's error
        -- the reference resolves symlinks first: the root it saw is expected.root_path
        local desc, err = experiment.describe_repository(expected.root_path, case.remotes,
          { variant = variant })
        check_canonical(desc, err, expected, case.name .. "@" .. variant)
      end
    end
  end
end)

t.case("slug sources", function()
  local cases = by_kind("slug_source")
  t.ok(#cases >= 18)
  for _, case in ipairs(cases) do
    for _, variant in ipairs { "331a15c", "5487812" } do
      local got, err = experiment.build_slug(case.source, variant)
      check_value(got, err, case.build_slug_from_source[variant], ("%q@%s"):format(case.source,
        variant))
    end
  end
end)

t.case("the reference's own tests, run against our helpers", function()
  for _, case in ipairs(by_kind("loreley_test")) do
    local variant = case.helpers_from
    if case.test:find("test_build_slug_from_source_basic", 1, true) then
      local got = experiment.build_slug("https://github.com/Owner/Repo.git", variant)
      t.eq(got == "github.com/owner/repo", case.result == "passed", case.test .. "@" .. variant)
    elseif case.test:find("canonicalises_and_strips_credentials", 1, true) then
      local a = experiment.normalise_remote_url("https://user:pass@example.com:8443/Owner/Repo.git",
        variant)
      local b = experiment.normalise_remote_url("git@github.com:Owner/Repo.git", variant)
      local passed = a:sub(1, 25) == "https://example.com:8443/" and not a:find("user")
        and b:sub(1, 21) == "ssh://git@github.com/" and b:sub(-15) == "/Owner/Repo.git"
      t.eq(passed, case.result == "passed", case.test .. "@" .. variant)
    end
  end
end)

t.case("snapshot helpers: Python float repr and ensure_ascii", function()
  t.eq(db.float_repr(1e-6), "1e-06")
  t.eq(db.float_repr(-1000000.0), "-1000000.0")
  t.eq(db.float_repr(1e16), "1e+16")
  t.eq(db.float_repr(1e15), "1000000000000000.0")
  t.eq(db.float_repr(0.1 + 0.2), "0.30000000000000004")
  t.eq(db.float_repr(5e-324), "5e-324")
  t.eq(db.float_repr(-0.0), "-0.0")
  t.eq(experiment.json_string_ascii("a\"\\\n\127é😀\1"),
    [["a\"\\\n\u007f\u00e9\ud83d\ude00\u0001"]])
  t.eq(experiment.json_string_ascii("\255"), [["\udcff"]])
  t.raises(function() experiment.normalise_remote_url("x", "nope") end, "unknown variant")
  -- leader key: SHA-256("6ba7b810-...")[:8] as a signed big-endian int64, computed with
  -- Python: int.from_bytes(hashlib.sha256(b"6ba7b810-9dad-11d1-80b4-00c04fd430c8").digest()[:8], "big", signed=True)
  t.eq(experiment.leader_key("6BA7B810-9dad-11d1-80b4-00c04fd430c8"), "-1908013363269876436")
  t.raises(function() experiment.config_hash({}, "nope") end, "unknown encoding")
end)

t.finish()
