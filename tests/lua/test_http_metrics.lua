-- ctest: labels=unit;cli timeout=120
-- The Prometheus text format of /metrics, read by a strict parser written from the
-- format's rules (tests/lua/support/prometheus.lua): loreley.metrics' writer with
-- awkward label values and histograms, the parser's own refusals, and the /metrics of a
-- running host (HELP/TYPE, names, counters growing, the tick histogram).
local t = require "support.t"
local prom = require "support.prometheus"
local client = require "support.http_client"
local metrics = require "loreley.metrics"
local sys = require "loreley.sys"
local host = require "loreley.host"

if not package.preload["loreley.http"] then
  io.stderr:write("SKIP: this loreley-host was built without LORELEY_HTTP\n")
  return
end

t.case("the writer: families, label escaping, histograms the parser accepts", function()
  local h = metrics.histogram { 0.1, 1, 10 }
  for _, v in ipairs { 0.05, 0.1, 0.5, 3, 50, 0.2 } do metrics.observe(h, v) end
  -- per bucket (not cumulative): <=0.1: 2, <=1: 2, <=10: 1, +Inf: 1
  t.same(h.counts, { 2, 2, 1, 1 })
  t.eq(h.count, 6)
  t.near(h.sum, 53.85, 1e-12)
  local tricky = 'a "quoted" \\ back\nslash'
  local e = metrics.exposition()
  e:counter("demo_events_total", "Events.\nSecond line with a \\ backslash.",
    { { { kind = tricky }, 3 }, { { kind = "plain" }, 0 } })
  e:gauge("demo_temperature_celsius", "A gauge.", -1.5)
  e:gauge("demo_special", "Non-finite values.", { { { v = "inf" }, math.huge },
    { { v = "ninf" }, -math.huge }, { { v = "nan" }, 0 / 0 } })
  e:histogram("demo_duration_seconds", "A histogram with labels.", { { { stage = "x" }, h },
    { { stage = "y" }, metrics.histogram { 0.1, 1, 10 } } })
  local text = e:text()
  local fams = assert(prom.parse(text))
  t.eq(fams.demo_events_total.type, "counter")
  t.eq(fams.demo_events_total.help, "Events.\\nSecond line with a \\\\ backslash.")
  t.eq(prom.value(fams, "demo_events_total", { kind = tricky }), 3)
  t.match(text, 'kind="a \\"quoted\\" \\\\ back\\nslash"', "escaped on the wire")
  t.eq(prom.value(fams, "demo_temperature_celsius"), -1.5)
  t.eq(prom.value(fams, "demo_special", { v = "inf" }), math.huge)
  t.eq(prom.value(fams, "demo_special", { v = "ninf" }), -math.huge)
  local nan = prom.value(fams, "demo_special", { v = "nan" })
  t.ok(nan ~= nan, "NaN")
  t.eq(prom.value(fams, "demo_duration_seconds_bucket", { stage = "x", le = "0.1" }), 2)
  t.eq(prom.value(fams, "demo_duration_seconds_bucket", { stage = "x", le = "1" }), 4)
  t.eq(prom.value(fams, "demo_duration_seconds_bucket", { stage = "x", le = "10" }), 5)
  t.eq(prom.value(fams, "demo_duration_seconds_bucket", { stage = "x", le = "+Inf" }), 6)
  t.eq(prom.value(fams, "demo_duration_seconds_count", { stage = "x" }), 6)
  t.eq(prom.value(fams, "demo_duration_seconds_count", { stage = "y" }), 0)
end)

t.case("the writer refuses what the format forbids", function()
  local e = metrics.exposition()
  t.raises(function() e:counter("demo_events", "no _total", 1) end, "must end in _total")
  t.raises(function() e:gauge("1bad", "a name starting with a digit", 1) end, "invalid metric name")
  t.raises(function() e:gauge("demo_g", "bad label", { { { ["bad-label"] = "x" }, 1 } }) end,
    "invalid label name")
  t.raises(function() e:gauge("demo_h", "reserved label", { { { le = "1" }, 1 } }) end,
    "invalid label name")
  e:gauge("demo_once", "x", 1)
  t.raises(function() e:gauge("demo_once", "x", 2) end, "written twice")
  t.raises(function() metrics.histogram { 1, 1 } end, "must increase")
end)

t.case("the parser refuses broken expositions (it can fail)", function()
  local function refused(text, pattern)
    local ok, err = prom.parse(text)
    t.eq(ok, nil, "accepted: " .. text)
    t.match(err, pattern)
  end
  local hist = "# HELP h_seconds x\n# TYPE h_seconds histogram\n"
  refused('m 1', "newline")
  refused('# TYPE m counter\nm{a="x} 1\n', "unterminated")
  refused('# TYPE m counter\nm{a="\\x"} 1\n', "invalid escape")
  refused('# TYPE m counter\nm -1\n', "negative")
  refused('# TYPE m gauge\nm one\n', "invalid value")
  refused('# TYPE m gauge\nm 1\nm 2\n', "repeated")
  refused('# TYPE m gauge\n# TYPE m counter\nm 1\n', "second TYPE")
  refused('# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\na{x="y"} 2\n', "not contiguous")
  refused(hist .. 'h_seconds_bucket{le="1"} 2\nh_seconds_bucket{le="+Inf"} 1\n'
    .. 'h_seconds_sum 1\nh_seconds_count 1\n', "cumulative")
  refused(hist .. 'h_seconds_bucket{le="1"} 1\nh_seconds_sum 1\nh_seconds_count 1\n', "+Inf")
  refused(hist .. 'h_seconds_bucket{le="1"} 1\nh_seconds_bucket{le="+Inf"} 2\n'
    .. 'h_seconds_sum 1\nh_seconds_count 1\n', "differs")
  refused(hist .. 'h_seconds_bucket{le="+Inf"} 2\nh_seconds_count 2\n', "_sum is missing")
end)

t.case("db.error_count and broker.error_count count failed calls", function()
  local db = require "loreley.db"
  local broker = require "loreley.broker"
  local closed = assert(sys.free_port())
  local d0, b0 = db.error_count(), broker.error_count()
  local conn, err = db.connect(("postgresql://u:p@127.0.0.1:%d/x"):format(closed),
    { connect_timeout = 2 })
  t.eq(conn, nil); t.ok(err)
  t.eq(db.error_count(), d0 + 1)
  local b, berr = broker.connect(("redis://127.0.0.1:%d/0"):format(closed))
  t.eq(b, nil); t.ok(berr)
  t.eq(broker.error_count(), b0 + 1)
  t.eq(db.error_count(), d0 + 1, "the broker's failure counted as a database error")
end)

-- A policy that ticks every 0.1 s with one stage that fails every third tick.
local dir = t.tmpdir()
local policy = t.write(dir .. "/policy.lua", [[
return { tick = function(ctx)
  ctx:stage("work", function() if ctx.tick % 3 == 0 then error("third tick") end end)
  ctx:stage("idle", function() end)
  ctx:summary { scheduled = 0 }
  return 0.1
end }
]])

local hosts = {}   -- stopped at the end, even when a case failed half-way

local function start_host(extra_env, args)
  local argv = { "--http", "127.0.0.1:0" }
  for _, a in ipairs(args or {}) do argv[#argv + 1] = a end
  argv[#argv + 1] = policy
  local pid, log = t.spawn_host(argv, { env = extra_env })
  hosts[#hosts + 1] = pid
  local port
  t.wait_for(10, function()
    port = tonumber((t.read(log) or ""):match("status page on http://127%.0%.0%.1:(%d+)/"))
    return port
  end)
  return pid, log, port
end

t.case("a running host's /metrics follows the format and counts ticks", function()
  local pid, log, port = start_host()
  t.ok(port, "no listening line in the log:\n" .. (t.read(log) or ""))
  -- a busy host (a tick every 0.1 s) publishes a snapshot at most every 0.5 s
  local r
  t.ok(t.wait_for(10, function()
    r = assert(client.get(port, "/metrics"))
    return (prom.value(assert(prom.parse(r.body)), "loreley_ticks_total") or 0) >= 4
  end), "the snapshot did not reach 4 ticks")
  t.eq(r.status, 200)
  t.match(r.headers["content-type"], "^text/plain; version=0%.0%.4")
  local fams = assert(prom.parse(r.body))
  -- every family has HELP and TYPE; counters end in _total; names carry the prefix
  for name, fam in pairs(fams) do
    t.ok(fam.help and fam.help ~= "", name .. " has no HELP")
    t.ok(fam.type and fam.type ~= "untyped", name .. " has no TYPE")
    t.match(name, "^loreley_", "prefix")
    if fam.type == "counter" then t.match(name, "_total$", "counter name") end
  end
  local expected = {
    loreley_ticks_total = "counter", loreley_tick_duration_seconds = "histogram",
    loreley_tick_failures_total = "counter", loreley_stage_duration_seconds = "histogram",
    loreley_stage_failures_total = "counter", loreley_jobs = "gauge",
    loreley_jobs_scheduled_total = "counter", loreley_jobs_dispatched_total = "counter",
    loreley_jobs_ingested_total = "counter", loreley_ingestions_total = "counter",
    loreley_archive_elites = "gauge", loreley_archive_coverage_ratio = "gauge",
    loreley_archive_qd_score = "gauge", loreley_archive_best_fitness = "gauge",
    loreley_database_errors_total = "counter", loreley_broker_errors_total = "counter",
    loreley_policy_reloads_total = "counter", loreley_scheduling_paused = "gauge",
    loreley_http_responses_total = "counter",
  }
  for name, kind in pairs(expected) do
    t.ok(fams[name], name .. " is missing")
    t.eq(fams[name].type, kind, name)
  end
  local ticks = prom.value(fams, "loreley_ticks_total")
  t.ok(ticks >= 4, "ticks " .. tostring(ticks))
  t.eq(prom.value(fams, "loreley_tick_duration_seconds_count"), ticks)
  -- the stage "work" failed on ticks 3, 6, ...: failures = floor(runs / 3)
  local runs = prom.value(fams, "loreley_stage_duration_seconds_count", { stage = "work" })
  t.eq(prom.value(fams, "loreley_stage_failures_total", { stage = "work" }), math.floor(runs / 3))
  t.eq(prom.value(fams, "loreley_stage_failures_total", { stage = "idle" }), 0)
  t.eq(prom.value(fams, "loreley_scheduling_paused"), 0)
  -- counters only grow
  host.sleep(1.2)
  local later = assert(prom.parse(assert(client.get(port, "/metrics")).body))
  t.ok(prom.value(later, "loreley_ticks_total") > ticks, "ticks did not grow")
  t.ok(prom.value(later, "loreley_http_responses_total", { code = "200" }) >= 1)
  -- HEAD: the headers only
  local head = assert(client.request { port = port, method = "HEAD", path = "/metrics" })
  t.eq(head.status, 200)
  t.eq(head.body, "")
  sys.kill(pid, "TERM")
  t.eq(assert(sys.wait(pid, 10)).code, 0)
end)

for _, pid in ipairs(hosts) do
  if sys.alive(pid) then sys.kill(pid, "KILL") sys.wait(pid, 5) end
end
t.finish()
