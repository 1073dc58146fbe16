-- ctest: labels=unit;cli timeout=180
-- The HTTP server on its own (loreley.http in this process: snapshots, the control queue,
-- the control timeout, stopping with a request in flight, the archive views) and in a
-- host: a port in use or an invalid address stops start-up with a clear message before
-- init runs; idle, slow and many concurrent clients do not stall the tick loop.
local t = require "support.t"

if not package.preload["loreley.http"] then
  io.stderr:write("SKIP: this loreley-host was built without LORELEY_HTTP\n")
  return
end

local client = require "support.http_client"
local http = require "loreley.http"
local json = require "loreley.json"
local archive = require "loreley.archive"
local host = require "loreley.host"
local sys = require "loreley.sys"

local dir = t.tmpdir()

-- --- loreley.http in this process ------------------------------------------------------------

t.case("http.start: options and addresses are checked", function()
  t.raises(function() http.start { listen = "127.0.0.1:0", bogus = 1 } end, "unknown option 'bogus'")
  t.raises(function() http.start { listen = "127.0.0.1:70000" } end, "from 0 to 65535")
  t.raises(function() http.start { listen = "example.org:80" } end, "not a numeric IPv4")
  t.raises(function() http.start { listen = "::1:80" } end, "in brackets")
  t.raises(function() http.start { listen = "127.0.0.1:0", control_timeout = 0 } end, "control_timeout")
  t.raises(function() http.start { listen = "127.0.0.1:0", endpoints = { "Bad Name" } } end,
    "invalid control endpoint name")
  t.same(assert(http.parse_listen("9464")), { host = "127.0.0.1", port = 9464, ipv6 = false })
  t.same(assert(http.parse_listen("localhost:1")), { host = "127.0.0.1", port = 1, ipv6 = false })
  t.same(assert(http.parse_listen("0.0.0.0:80")), { host = "0.0.0.0", port = 80, ipv6 = false })
  t.same(assert(http.parse_listen("[::1]:8080")), { host = "::1", port = 8080, ipv6 = true })
  local s = assert(http.start { listen = "127.0.0.1:0" })
  local busy, err = http.start { listen = "127.0.0.1:" .. s:port() }
  t.eq(busy, nil)
  t.match(err, "cannot listen on 127%.0%.0%.1:" .. s:port() .. " for HTTP: Address already in use")
  s:close()
  t.match(tostring(s), "closed")
  t.raises(function() s:port() end, "closed")
end)

t.case("snapshots: GET and HEAD serve the last published document", function()
  local s = assert(http.start { listen = "127.0.0.1:0" })
  local port = s:port()
  t.match(s:address(), "^127%.0%.0%.1:%d+$")
  t.eq(assert(client.get(port, "/doc")).status, 404)
  s:publish("/doc", '{"n":1}')
  local r = assert(client.get(port, "/doc"))
  t.eq(r.status, 200); t.eq(r.body, '{"n":1}')
  t.eq(r.headers["content-type"], "application/json; charset=utf-8")
  t.eq(r.headers["cache-control"], "no-store")
  s:publish("/doc", ("x"):rep(300000), "text/plain")
  r = assert(client.get(port, "/doc"))
  t.eq(#r.body, 300000); t.eq(r.headers["content-type"], "text/plain")
  s:publish("/page", "<p>hi</p>", "text/html; charset=utf-8")
  r = assert(client.get(port, "/page?refresh=2"))
  t.eq(r.body, "<p>hi</p>")
  t.match(r.headers["content-security-policy"], "default%-src 'none'")
  r = assert(client.request { port = port, method = "HEAD", path = "/doc" })
  t.eq(r.status, 200); t.eq(r.body, "")
  t.eq(s:responses()[200], 4)
  t.eq(s:responses()[404], 1)
  s:close()
end)

-- Sends a control request on a raw connection (the reply is read later).
local function send_control(port, endpoint, body, token)
  local c = assert(client.connect(port))
  assert(c:send(client.request_text { port = port, method = "POST",
    path = "/api/control/" .. endpoint, body = body,
    headers = { Authorization = "Bearer " .. token } }))
  return c
end

local function take_one(s, timeout)
  local got
  t.wait_for(timeout or 5, function()
    got = s:take()
    return #got > 0
  end, 0.01)
  return got
end

t.case("control requests: queued, taken, answered; withdrawn after the timeout", function()
  local s = assert(http.start { listen = "127.0.0.1:0", token = "tok", endpoints = { "go" },
    control_timeout = 0.5 })
  local port = s:port()
  local c = send_control(port, "go", '{"a":1}', "tok")
  local got = take_one(s)
  t.eq(#got, 1)
  t.eq(got[1].endpoint, "go"); t.eq(got[1].body, '{"a":1}'); t.eq(got[1].remote, "127.0.0.1")
  t.eq(s:reply(got[1].id, 201, '{"done":true}'), true)
  t.eq(s:reply(got[1].id, 200, "{}"), false, "answered twice")
  local r = assert(c:read_response(5))
  c:close()
  t.eq(r.status, 201); t.eq(r.body, '{"done":true}')
  -- not taken: 503 after the timeout, and the queue is empty afterwards
  local started = host.now()
  c = send_control(port, "go", "{}", "tok")
  r = assert(c:read_response(5))
  c:close()
  t.eq(r.status, 503)
  t.ok(host.now() - started >= 0.45, "answered before the timeout")
  t.eq(#s:take(), 0, "a withdrawn request was still queued")
  -- refused before queueing: nothing to take
  c = send_control(port, "go", "{}", "wrong")
  t.eq(assert(c:read_response(5)).status, 403)
  c:close()
  t.eq(#s:take(), 0)
  -- taken, then the server stops: the client gets 503, not a hang
  c = send_control(port, "go", "{}", "tok")
  got = take_one(s)
  t.eq(#got, 1)
  s:close()
  r = assert(c:read_response(5))
  c:close()
  t.eq(r.status, 503)
  t.match(r.body, "shutting down")
end)

t.case("heatmaps: the grid's own cells, projections, CVT bins, best elites", function()
  -- 4 x 3 grid over [0,4] x [0,3]: measure (x + 0.5, y + 0.5) lands in cell (x, y)
  local a = archive.grid { dims = { 4, 3 }, lower = { 0, 0 }, upper = { 4, 3 } }
  a:add("c1", 1.5, { 0.5, 0.5 })
  a:add("c2", 2.5, { 3.5, 2.5 })
  a:add("c3", -1, { 1.5, 0.5 })
  local text, occupied = http.heatmap(a, { dims = { 1, 2 } })
  t.eq(occupied, 3)
  local h = assert(json.decode(text))
  t.eq(h.nx, 4); t.eq(h.ny, 3); t.eq(h.elites, 3); t.eq(h.occupied, 3)
  t.same(h.lower, { 0, 0 }); t.same(h.upper, { 4, 3 })
  local null = json.null
  -- index y * nx + x
  t.same(h.best, { 1.5, -1, null, null, null, null, null, null, null, null, null, 2.5 })
  t.same(h.count, { 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1 })
  -- levels: (best - min) / (max - min) * 65535, rounded; -1 where empty
  t.eq(h.min, -1); t.eq(h.max, 2.5)
  t.same(h.level, { math.floor(2.5 / 3.5 * 65535 + 0.5), 0, -1, -1, -1, -1, -1, -1, -1, -1, -1, 65535 })
  -- swapped axes
  h = assert(json.decode((http.heatmap(a, { dims = { 2, 1 } }))))
  t.eq(h.nx, 3); t.eq(h.ny, 4)
  t.eq(h.best[0 * 3 + 0 + 1], 1.5); t.eq(h.best[1 * 3 + 0 + 1], -1); t.eq(h.best[3 * 3 + 2 + 1], 2.5)
  -- a 3-D grid projected on dimensions 1 and 3 keeps the best over dimension 2
  local b = archive.grid { dims = { 2, 5, 2 }, lower = { 0, 0, 0 }, upper = { 2, 5, 2 } }
  b:add("p", 1, { 0.5, 0.5, 1.5 })
  b:add("q", 7, { 0.5, 4.5, 1.5 })
  b:add("r", 3, { 1.5, 2.5, 0.5 })
  h = assert(json.decode((http.heatmap(b, { dims = { 1, 3 } }))))
  t.eq(h.nx, 2); t.eq(h.ny, 2)
  t.same(h.best, { null, 3, 7, null })
  t.same(h.count, { 0, 1, 2, 0 })
  -- more cells than max_cells per axis: coordinates are scaled down
  local big = archive.grid { dims = { 100, 2 }, lower = { 0, 0 }, upper = { 100, 2 } }
  big:add("lo", 1, { 0.5, 0.5 })
  big:add("hi", 2, { 99.5, 1.5 })
  h = assert(json.decode((http.heatmap(big, { dims = { 1, 2 }, max_cells = 10 }))))
  t.eq(h.nx, 10); t.eq(h.ny, 2)
  t.eq(h.best[1], 1); t.eq(h.best[1 * 10 + 9 + 1], 2)
  -- over 4096 cells: levels and counts only (exact values cost too much to write)
  local wide = archive.grid { dims = { 80, 80 }, lower = { 0, 0 }, upper = { 80, 80 } }
  wide:add("w1", 10, { 0.5, 0.5 })
  wide:add("w2", 20, { 79.5, 79.5 })
  wide:add("w3", 15, { 40.5, 0.5 })
  h = assert(json.decode((http.heatmap(wide, { dims = { 1, 2 } }))))
  t.eq(h.nx, 80); t.eq(h.best, nil)
  t.eq(h.level[1], 0); t.eq(h.level[80 * 80], 65535); t.eq(h.level[41], 32768)
  t.eq(h.count[41], 1); t.eq(h.level[2], -1)
  -- one elite: the top level; none: min and max are null
  h = assert(json.decode((http.heatmap(archive.grid { dims = { 2, 2 }, lower = { 0, 0 },
    upper = { 1, 1 } }, {}))))
  t.eq(h.min, null); t.eq(h.max, null); t.same(h.level, { -1, -1, -1, -1 })
  -- CVT: measures binned over the bounds
  local cvt = archive.cvt { lower = { 0, 0 }, upper = { 1, 1 },
    centroids = { { 0.1, 0.1 }, { 0.9, 0.9 }, { 0.1, 0.9 } } }
  cvt:add("u", 5, { 0.05, 0.1 })
  cvt:add("v", 6, { 0.95, 0.9 })
  h = assert(json.decode((http.heatmap(cvt, { dims = { 1, 2 }, bins = 4 }))))
  t.eq(h.nx, 4); t.eq(h.ny, 4)
  t.eq(h.best[1], 5); t.eq(h.best[3 * 4 + 3 + 1], 6); t.eq(h.occupied, 2)
  t.raises(function() http.heatmap(a, { dims = { 1, 3 } }) end, "the archive has 2")
  -- best elites: highest objective first
  t.same(http.best(a, 2), { a:index_of { 3.5, 2.5 }, a:index_of { 0.5, 0.5 } })
  t.same(http.best(a, 10), { 11, 0, 3 })
  t.same(http.best(a, 0), {})
end)

-- --- in a host -------------------------------------------------------------------------------

local POLICY = t.write(dir .. "/policy.lua", [[
local host = require "loreley.host"
return {
  init = function(ctx) host.info("init ran") end,
  tick = function(ctx)
    ctx:stage("work", function() local x = 0 for i = 1, 20000 do x = x + i end return x end)
    ctx:summary { scheduled = 0 }
    return 0.1
  end,
}
]])

local hosts = {}   -- stopped at the end, even when a case failed half-way

local function spawn(args, env)
  local argv = {}
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  argv[#argv + 1] = POLICY
  local pid, log = t.spawn_host(argv, { env = env })
  hosts[#hosts + 1] = pid
  return pid, log
end

local function port_of(log)
  local port
  t.wait_for(10, function()
    port = tonumber((t.read(log) or ""):match("status page on http://127%.0%.0%.1:(%d+)/"))
    return port
  end)
  return port
end

t.case("start-up: a port in use, an invalid address, a missing value", function()
  local pid, log = spawn({ "--http", "127.0.0.1:0" })
  local port = assert(port_of(log), "first host did not start")
  -- the same port again, by option and by setting: exit 1, a clear message, init not run
  for _, how in ipairs { "option", "setting" } do
    local args = how == "option" and { "--http", "127.0.0.1:" .. port, POLICY } or { POLICY }
    local r = t.run_host(args, { env = { LORELEY_HTTP_LISTEN = how == "setting"
      and ("127.0.0.1:" .. port) or false }, timeout = 20 })
    t.eq(r.code, 1, how .. ": " .. r.stderr)
    t.match(r.stderr, "cannot listen on 127%.0%.0%.1:" .. port
      .. " for HTTP: Address already in use %(another process listens there")
    t.no_match(r.stderr, "init ran")
    t.no_match(r.stderr, "stack traceback")
  end
  sys.kill(pid, "TERM")
  t.eq(assert(sys.wait(pid, 10)).code, 0)
  local cases = {
    { { "--http", "127.0.0.1:99999", POLICY }, {}, 2, "port must be a number from 0 to 65535" },
    { { "--http", "my-host:80", POLICY }, {}, 2, "'my%-host' is not a numeric IPv4 address" },
    { { "--http" }, {}, 2, "%-%-http needs an address" },
    { { "--http=", POLICY }, {}, 2, "%-%-http= needs an address" },
    { { POLICY }, { LORELEY_HTTP_LISTEN = "127.0.0.1 80" }, 2, "LORELEY_HTTP_LISTEN='127%.0%.0%.1 80'" },
    { { POLICY }, { LORELEY_HTTP_HEATMAP_DIMS = "1" }, 2, "two measure dimensions" },
    { { POLICY }, { LORELEY_HTTP_CONTROL_TIMEOUT_SECONDS = "0" }, 2,
      "LORELEY_HTTP_CONTROL_TIMEOUT_SECONDS" },
  }
  for _, c in ipairs(cases) do
    local r = t.run_host(c[1], { env = c[2], timeout = 20 })
    t.eq(r.code, c[3], table.concat(c[1], " ") .. ": " .. r.stderr)
    t.match(r.stderr, c[4])
    t.no_match(r.stderr, "init ran")
  end
  -- --check masks the token and shows the address
  local r = t.run_host({ "--check", POLICY }, { env = { LORELEY_HTTP_TOKEN = "very-secret-value",
    LORELEY_HTTP_LISTEN = "127.0.0.1:9464" } })
  t.eq(r.code, 0, r.stderr)
  t.no_match(r.stdout, "very%-secret%-value")
  t.match(r.stdout, "LORELEY_HTTP_TOKEN=%*%*%*  %(environment%)")
  t.match(r.stdout, "LORELEY_HTTP_LISTEN=127%.0%.0%.1:9464  %(environment%)")
  -- --once never starts a server
  r = t.run_host({ "--once", "--http", "127.0.0.1:0", POLICY })
  t.eq(r.code, 0, r.stderr)
  t.no_match(r.stderr, "status page on")
end)

-- Tick end times (seconds of the day) from the host's "tick N" lines.
local function tick_times(text)
  local out = {}
  for h, m, s, n in text:gmatch("(%d%d):(%d%d):(%d%d%.%d%d%d) INFO    tick (%d+) ") do
    out[#out + 1] = { tick = tonumber(n), at = tonumber(h) * 3600 + tonumber(m) * 60 + tonumber(s) }
  end
  return out
end

local function gaps(times, from, to)
  local list = {}
  for i = 2, #times do
    if times[i].at >= from and times[i].at <= to then
      list[#list + 1] = times[i].at - times[i - 1].at
    end
  end
  return list
end

local function clock()   -- seconds of the day, UTC, as the log writes them
  local now = host.time()
  return now % 86400
end

t.case("idle, slow and many concurrent clients do not stall the tick loop", function()
  local pid, log = spawn({ "--http", "127.0.0.1:0" })
  local port = assert(port_of(log), "host did not start")
  host.sleep(1.5)
  local attack_from = clock()
  local conns = {}
  -- 40 clients that connect and send nothing
  for _ = 1, 40 do conns[#conns + 1] = assert(client.connect(port)) end
  -- 10 clients that send a request line and then one header byte at a time
  local slow = {}
  for _ = 1, 10 do
    local c = assert(client.connect(port))
    c:send("GET /api/status HTTP/1.1\r\n")
    slow[#slow + 1] = c
  end
  -- 3 s of bursts: 10 concurrent requests at a time (every connection slot left), read
  -- as they come; some are refused at the connection limit, which is expected
  local answered, deadline = 0, host.now() + 3
  while host.now() < deadline do
    local burst = {}
    for i = 1, 10 do
      local c = client.connect(port)
      if c then
        c:send(client.request_text { port = port, path = i % 2 == 0 and "/metrics" or "/api/status" })
        burst[#burst + 1] = c
      end
    end
    for _, c in ipairs(burst) do
      local r = c:read_response(5)
      if r and r.status == 200 then answered = answered + 1 end
      c:close()
    end
    for _, c in ipairs(slow) do c:send("X") end
  end
  local attack_to = clock()
  host.sleep(0.3)
  local text = t.read(log)
  local times = tick_times(text)
  local during = gaps(times, attack_from, attack_to)
  table.sort(during)
  t.ok(#during >= 15, ("only %d ticks in %.1f s of clients"):format(#during, attack_to - attack_from))
  local worst = during[#during]
  t.ok(worst < 1.0, ("the tick loop stalled for %.3f s"):format(worst))
  t.ok(answered >= 20, "only " .. answered .. " requests answered during the burst")
  -- the idle and slow clients are still connected; a normal request is still answered
  -- once they go away
  for _, c in ipairs(conns) do c:close() end
  for _, c in ipairs(slow) do c:close() end
  local ok = t.wait_for(5, function()
    local r = client.get(port, "/api/status")
    return r and r.status == 200
  end, 0.1)
  t.ok(ok, "the server did not recover after the clients left")
  -- stopping is prompt even with a client connected and silent
  local idle = assert(client.connect(port))
  local stop_started = host.now()
  sys.kill(pid, "TERM")
  t.eq(assert(sys.wait(pid, 10)).code, 0)
  t.ok(host.now() - stop_started < 3, "stopping waited for an idle client")
  idle:close()
  io.stderr:write(("  (tick gaps during the clients: median %.3f s, worst %.3f s, %d answered)\n")
    :format(during[math.ceil(#during / 2)], worst, answered))
end)

for _, pid in ipairs(hosts) do
  if sys.alive(pid) then sys.kill(pid, "KILL") sys.wait(pid, 5) end
end
t.finish()
