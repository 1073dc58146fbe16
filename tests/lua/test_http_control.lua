-- ctest: labels=unit;cli timeout=180
-- The control plane of a running host: every endpoint with a good token, a wrong one,
-- none, malformed bodies, wrong methods and paths, an oversized body, a foreign Host
-- header; refusals change nothing (neither /api/control nor what the policy sees on
-- the main thread); good requests change what the next tick sees; a reload answers with
-- the new version or 409; a request the main thread cannot take in time gets 503 and
-- is never applied; with no token configured the control plane is off.
local t = require "support.t"
local client = require "support.http_client"
local prom = require "support.prometheus"
local json = require "loreley.json"
local host = require "loreley.host"
local sys = require "loreley.sys"

if not package.preload["loreley.http"] then
  io.stderr:write("SKIP: this loreley-host was built without LORELEY_HTTP\n")
  return
end

local TOKEN = "s3cret-T0ken-for-tests"
local dir = t.tmpdir()
local POLICY_TEXT = [[
local host = require "loreley.host"
return { tick = function(ctx)
  local s = ctx.settings
  host.info("view %d paused=%s schedule=%d dispatch=%d ingest=%d max_unfinished=%d version=%s",
    ctx.tick, tostring(ctx.paused == true), s.scheduler_schedule_batch_size,
    s.scheduler_dispatch_batch_size, s.scheduler_ingest_batch_size,
    s.scheduler_max_unfinished_jobs, ctx.policy_version)
  return 0.1
end }
]]
local policy = t.write(dir .. "/policy.lua", POLICY_TEXT)

local hosts = {}   -- stopped at the end, even when a case failed half-way

local function start_host(env, path)
  local pid, log = t.spawn_host({ "--http", "127.0.0.1:0", path or policy }, { env = env })
  hosts[#hosts + 1] = pid
  local port
  t.wait_for(10, function()
    port = tonumber((t.read(log) or ""):match("status page on http://127%.0%.0%.1:(%d+)/"))
    return port
  end)
  assert(port, "the host did not start its HTTP server:\n" .. (t.read(log) or ""))
  return pid, log, port
end

local function stop_host(pid)
  sys.kill(pid, "TERM")
  t.eq(assert(sys.wait(pid, 10)).code, 0, "host exit code")
end

-- The last "view" line the policy logged after `after` (a tick number), as a table.
local function view(log, after)
  local last
  for tick, rest in (t.read(log) or ""):gmatch("view (%d+) ([^\n]*)") do
    if tonumber(tick) > (after or 0) then
      last = { tick = tonumber(tick) }
      for k, v in rest:gmatch("(%w[%w_]*)=(%S+)") do last[k] = tonumber(v) or v end
    end
  end
  return last
end

local function next_view(log)
  local now = view(log) or { tick = 0 }
  local v
  t.ok(t.wait_for(5, function() v = view(log, now.tick) return v end), "no tick after " .. now.tick)
  return v
end

local function get_json(port, path)
  local r = assert(client.get(port, path))
  t.eq(r.status, 200, path)
  return assert(json.decode(r.body))
end

local function decode(r) return json.decode(r.body) or {} end

-- The part of /api/control that a change would alter.
local function control_state(port)
  local c = get_json(port, "/api/control")
  return { paused = c.paused, overrides = c.overrides, effective = c.effective,
    changes_total = c.changes_total }
end

local function policy_version(text) return host.sha256(text):sub(1, 12) end

t.case("without LORELEY_HTTP_TOKEN the control plane is off (403) and nothing changes", function()
  local pid, log, port = start_host({ LORELEY_HTTP_TOKEN = false })
  t.match(t.read(log), "control plane off")
  local before = control_state(port)
  t.eq(get_json(port, "/api/control").enabled, false)
  for _, ep in ipairs { "pause", "resume", "limits", "reload" } do
    for _, token in ipairs { false, "anything" } do
      local r = assert(client.post(port, "/api/control/" .. ep, '{"schedule_batch_size":5}',
        token or nil))
      t.eq(r.status, 403, ep)
      t.match(decode(r).error, "control plane is off")
    end
  end
  t.same(control_state(port), before)
  local v = next_view(log)
  t.eq(v.paused, "false")
  t.eq(v.schedule, 2)
  t.eq(get_json(port, "/api/policy").reloads, 0)
  stop_host(pid)
end)

local pid, log, port = start_host({ LORELEY_HTTP_TOKEN = TOKEN })

t.case("missing or wrong tokens are refused (401/403) on every endpoint, nothing changes", function()
  local before = control_state(port)
  local first = next_view(log)
  local bodies = { pause = '{"reason":"x"}', resume = "{}", limits = '{"schedule_batch_size":9}',
    reload = "{}" }
  for ep, body in pairs(bodies) do
    local path = "/api/control/" .. ep
    local r = assert(client.post(port, path, body))
    t.eq(r.status, 401, ep .. " without a token")
    t.match(r.headers["www-authenticate"] or "", "^Bearer")
    r = assert(client.post(port, path, body, nil, { Authorization = "Basic " .. TOKEN }))
    t.eq(r.status, 401, ep .. " with a Basic scheme")
    for _, wrong in ipairs { "wrong", TOKEN .. "x", TOKEN:sub(1, -2), TOKEN:upper(), "" } do
      r = assert(client.post(port, path, body, wrong))
      t.eq(r.status, 403, ep .. " with token " .. wrong)
      t.match(decode(r).error, "wrong bearer token")
    end
  end
  t.same(control_state(port), before)
  local v = next_view(log)
  t.eq(v.paused, "false"); t.eq(v.schedule, 2); t.eq(v.version, first.version)
  t.eq(get_json(port, "/api/policy").reloads, 0)
  t.no_match(t.read(log), "control: pause")
end)

t.case("malformed bodies are refused with 400 naming the problem, nothing changes", function()
  local before = control_state(port)
  local cases = {
    { "pause", "not json", "not valid JSON" },
    { "pause", "[1, 2]", "JSON object" },
    { "pause", '"text"', "JSON object" },
    { "pause", '{"reason": 5}', "reason must be a string" },
    { "pause", '{"reason": "' .. ("x"):rep(300) .. '"}', "at most 200" },
    { "pause", '{"why": "typo"}', 'unknown key "why"' },
    { "resume", '{"now": true}', 'unknown key "now"' },
    { "reload", '{"file": "/etc/passwd"}', 'unknown key "file"' },
    { "limits", "{}", "names no limit" },
    { "limits", "", "names no limit" },
    { "limits", '{"schedule_batch_size": 0}', "schedule_batch_size must be an integer from 1" },
    { "limits", '{"schedule_batch_size": 1.5}', "must be an integer" },
    { "limits", '{"schedule_batch_size": "4"}', "must be an integer" },
    { "limits", '{"dispatch_batch_size": -1}', "dispatch_batch_size must be an integer from 0" },
    { "limits", '{"ingest_batch_size": 10001}', "to 10000" },
    { "limits", '{"max_unfinished_jobs": 1e9}', "max_unfinished_jobs must be" },
    { "limits", '{"max_unfinished_jobs": true}', "max_unfinished_jobs must be" },
    -- one good value and one bad one: nothing is applied
    { "limits", '{"schedule_batch_size": 5, "ingest_batch_size": -3}', "ingest_batch_size" },
    { "limits", '{"schedule_batch_size": 5, "batch": 3}', 'unknown key "batch"' },
    { "limits", '{"schedule_batch_size": 5', "not valid JSON" },
  }
  for _, c in ipairs(cases) do
    local r = assert(client.post(port, "/api/control/" .. c[1], c[2], TOKEN))
    t.eq(r.status, 400, c[1] .. " " .. c[2]:sub(1, 60))
    t.match(decode(r).error, c[3], c[1] .. " " .. c[2]:sub(1, 60))
  end
  t.same(control_state(port), before)
  local v = next_view(log)
  t.eq(v.paused, "false"); t.eq(v.schedule, 2); t.eq(v.ingest, 2)
  t.eq(get_json(port, "/api/policy").reloads, 0)
end)

t.case("wrong methods (405), unknown paths (404), big bodies (413), foreign Host (421)", function()
  local before = control_state(port)
  local r = assert(client.get(port, "/api/control/pause", { Authorization = "Bearer " .. TOKEN }))
  t.eq(r.status, 405); t.eq(r.headers.allow, "POST")
  r = assert(client.request { port = port, method = "PUT", path = "/api/control/limits",
    body = '{"schedule_batch_size":3}', headers = { Authorization = "Bearer " .. TOKEN } })
  t.eq(r.status, 405)
  r = assert(client.post(port, "/api/status", "{}", TOKEN))
  t.eq(r.status, 405); t.eq(r.headers.allow, "GET, HEAD")
  r = assert(client.post(port, "/api/control/stop", "{}", TOKEN))
  t.eq(r.status, 404); t.match(decode(r).error, "known: pause, resume, limits, reload")
  r = assert(client.post(port, "/api/control/", "{}", TOKEN))
  t.eq(r.status, 404)
  t.eq(assert(client.get(port, "/nowhere")).status, 404)
  t.eq(assert(client.get(port, "/api/heatmap/1")).status, 404, "no island: no heatmap")
  r = assert(client.post(port, "/api/control/limits",
    '{"schedule_batch_size": 3, "pad": "' .. ("x"):rep(70000) .. '"}', TOKEN))
  t.eq(r.status, 413)
  r = assert(client.request { port = port, path = "/api/status", host_header = "evil.example:80" })
  t.eq(r.status, 421)
  r = assert(client.request { port = port, method = "POST", path = "/api/control/pause",
    host_header = "rebound.example", body = "{}", headers = { Authorization = "Bearer " .. TOKEN } })
  t.eq(r.status, 421)
  for _, h in ipairs { "localhost:" .. port, "127.0.0.1", "[::1]:" .. port } do
    t.eq(assert(client.request { port = port, path = "/api/status", host_header = h }).status, 200, h)
  end
  t.same(control_state(port), before)
  t.eq(next_view(log).schedule, 2)
end)

t.case("pause, resume and limits change what the next tick sees; changes are recorded", function()
  local r = assert(client.post(port, "/api/control/pause", '{"reason":"maintenance"}', TOKEN))
  t.eq(r.status, 200)
  local body = decode(r)
  t.eq(body.changed, true); t.eq(body.control.paused, true)
  t.eq(body.control.pause_reason, "maintenance")
  local v = next_view(log)
  t.eq(v.paused, "true")
  local fams = assert(prom.parse(assert(client.get(port, "/metrics")).body))
  t.eq(prom.value(fams, "loreley_scheduling_paused"), 1)
  t.eq(get_json(port, "/api/status").state, "paused")
  -- pausing again changes nothing
  r = assert(client.post(port, "/api/control/pause", "", TOKEN))
  t.eq(r.status, 200); t.eq(decode(r).changed, false)
  r = assert(client.post(port, "/api/control/resume", "{}", TOKEN))
  t.eq(r.status, 200); t.eq(decode(r).changed, true)
  t.eq(next_view(log).paused, "false")

  r = assert(client.post(port, "/api/control/limits",
    '{"schedule_batch_size": 7, "max_unfinished_jobs": 3, "dispatch_batch_size": 0}', TOKEN))
  t.eq(r.status, 200)
  body = decode(r)
  t.eq(body.control.effective.schedule_batch_size, 7)
  t.eq(body.control.settings.schedule_batch_size, 2, "the setting is remembered")
  t.same(body.control.overrides, { schedule_batch_size = 7, max_unfinished_jobs = 3,
    dispatch_batch_size = 0 })
  v = next_view(log)
  t.eq(v.schedule, 7); t.eq(v.max_unfinished, 3); t.eq(v.dispatch, 0); t.eq(v.ingest, 2)
  fams = assert(prom.parse(assert(client.get(port, "/metrics")).body))
  t.eq(prom.value(fams, "loreley_scheduler_limit", { name = "schedule_batch_size" }), 7)
  -- null restores the setting
  r = assert(client.post(port, "/api/control/limits",
    '{"schedule_batch_size": null, "dispatch_batch_size": null}', TOKEN))
  t.eq(r.status, 200)
  t.same(decode(r).control.overrides, { max_unfinished_jobs = 3 })
  v = next_view(log)
  t.eq(v.schedule, 2); t.eq(v.dispatch, 4); t.eq(v.max_unfinished, 3)

  local c = get_json(port, "/api/control")
  t.eq(c.changes_total, 4, "pause, resume, limits, limits")
  t.eq(c.changes[1].action, "limits")
  t.same(c.changes[1].detail.schedule_batch_size, { from = 7, to = 2 })
  t.eq(c.changes[4].action, "pause")
  t.eq(c.changes[4].remote, "127.0.0.1")
  t.eq(c.changes[4].source, "http")
  local text = t.read(log)
  t.match(text, 'control: pause {"reason":"maintenance"} %(http from 127%.0%.0%.1%)')
  t.match(text, "control: resume")
  t.match(text, 'control: limits {.*"schedule_batch_size":{"from":2,"to":7}')
end)

t.case("reload: the new version, or 409 and the running policy kept", function()
  local old = policy_version(POLICY_TEXT)
  t.eq(get_json(port, "/api/policy").version, old)
  local new_text = POLICY_TEXT .. "-- edited\n"
  t.write(policy, new_text)
  local r = assert(client.post(port, "/api/control/reload", "{}", TOKEN))
  t.eq(r.status, 200)
  local body = decode(r)
  t.eq(body.version, policy_version(new_text))
  t.eq(body.previous_version, old)
  t.eq(body.changed, true)
  t.eq(next_view(log).version, policy_version(new_text))
  local p = get_json(port, "/api/policy")
  t.eq(p.reloads, 1); t.eq(p.reload_failures, 0)
  t.write(policy, "return { tick = 42 }\n")
  r = assert(client.post(port, "/api/control/reload", "", TOKEN))
  t.eq(r.status, 409)
  t.match(decode(r).error, "running policy %(version " .. policy_version(new_text) .. "%) is kept")
  t.eq(next_view(log).version, policy_version(new_text))
  p = get_json(port, "/api/policy")
  t.eq(p.reloads, 1); t.eq(p.reload_failures, 1)
  local fams = assert(prom.parse(assert(client.get(port, "/metrics")).body))
  t.eq(prom.value(fams, "loreley_policy_reloads_total", { result = "ok" }), 1)
  t.eq(prom.value(fams, "loreley_policy_reloads_total", { result = "failed" }), 1)
  -- a SIGHUP reload is recorded too (source: signal)
  t.write(policy, POLICY_TEXT)
  sys.kill(pid, "HUP")
  t.ok(t.wait_for(5, function() return get_json(port, "/api/policy").reloads == 2 end))
  local c = get_json(port, "/api/control")
  t.eq(c.changes[1].action, "reload"); t.eq(c.changes[1].source, "signal")
  t.eq(c.changes[1].detail.version, old)
  t.eq(c.changes[2].detail.result, "failed")
end)

stop_host(pid)

t.case("a request not taken within the control timeout gets 503 and is never applied", function()
  local slow = t.write(dir .. "/slow.lua", [[
local host = require "loreley.host"
return { tick = function(ctx)
  host.info("busy %d start", ctx.tick)
  host.sleep(3)   -- a long tick: the main thread cannot serve control requests
  host.info("view %d paused=%s", ctx.tick, tostring(ctx.paused == true))
  return 0.05
end }
]])
  local spid, slog, sport = start_host({ LORELEY_HTTP_TOKEN = TOKEN,
    LORELEY_HTTP_CONTROL_TIMEOUT_SECONDS = "0.5" }, slow)
  t.ok(t.wait_for(10, function() return (t.read(slog) or ""):find("busy 2 start") end))
  local started = host.now()
  local r = assert(client.post(sport, "/api/control/pause", "{}", TOKEN))
  local waited = host.now() - started
  t.eq(r.status, 503)
  t.match(decode(r).error, "nothing was changed")
  t.eq(r.headers["retry-after"], "5")
  t.ok(waited >= 0.45 and waited < 2.5, "waited " .. waited .. " s")
  -- GETs are answered from the snapshot meanwhile, at once
  started = host.now()
  t.eq(assert(client.get(sport, "/api/status")).status, 200)
  t.ok(host.now() - started < 0.5, "a GET waited for the tick")
  t.ok(t.wait_for(10, function() return (t.read(slog) or ""):find("view 2 ") end))
  t.ok(t.wait_for(10, function() return (t.read(slog) or ""):find("view 3 ") end))
  t.no_match(t.read(slog), "view %d+ paused=true", "the withdrawn request was applied")
  t.eq(get_json(sport, "/api/control").changes_total, 0)
  sys.kill(spid, "TERM")
  t.eq(assert(sys.wait(spid, 10)).code, 0)
end)

for _, p in ipairs(hosts) do
  if sys.alive(p) then sys.kill(p, "KILL") sys.wait(p, 5) end
end
t.finish()
