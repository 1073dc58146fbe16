-- ctest: labels=e2e;pg;redis;git timeout=300
-- The HTTP face of a real run (PostgreSQL, Redis, git, the example workers, the default
-- policy): /metrics and /api/status against the database, pausing that really stops
-- scheduling, limits the next ticks obey, a reload whose version the new jobs carry,
-- the control log table, and the status page loaded in headless Chromium with its
-- heatmap, best elites and job counts checked against the database (skipped, with a
-- message, when Debian's chromium is not installed).
local t = require "support.t"
local client = require "support.http_client"
local prom = require "support.prometheus"
local sys = require "loreley.sys"
local host = require "loreley.host"
local db = require "loreley.db"
local json = require "loreley.json"

if not package.preload["loreley.http"] then
  io.stderr:write("SKIP: this loreley-host was built without LORELEY_HTTP\n")
  return
end

package.path = t.source_dir .. "/examples/?.lua;" .. package.path
local setup = require "demo_setup"

local TOKEN = "e2e-token-" .. host.uuid4()
local dir = t.tmpdir()
local stack = setup.start(dir .. "/stack")
local conn = assert(db.connect(stack.pg.url))
local POLICY_TEXT = assert(t.read(t.source_dir .. "/examples/policy.lua"))
local policy = t.write(dir .. "/policy.lua", POLICY_TEXT)
-- A short recovery grace: a worker that meets the row still locked by the scheduler's
-- dispatch bookkeeping drops the message (contract §11.2), and recovery re-sends it.
local env = setup.environment(stack, { LORELEY_HTTP_TOKEN = TOKEN,
  LORELEY_HTTP_HEATMAP_DIMS = "1,3", LORELEY_RECOVERY_GRACE_SECONDS = "2" })

local function scalar(sql, ...)
  local rows = assert(conn:query(sql, ...))
  local row = rows[1]
  if not row then return nil end
  for _, v in pairs(row) do return v end
end

local log = dir .. "/host.log"
local pid = setup.spawn_host(t.host_binary, env, policy, log, { "--http", "127.0.0.1:0" })
local port
t.wait_for(30, function()
  port = tonumber((t.read(log) or ""):match("status page on http://127%.0%.0%.1:(%d+)/"))
  return port
end)
assert(port, "no HTTP server:\n" .. (t.read(log) or ""))

local workers = {}
for i = 1, 2 do
  workers[i] = setup.spawn_worker(t.host_binary, env, { "--id", "w" .. i },
    dir .. "/worker" .. i .. ".log")
end

local function get_json(path)
  local r = assert(client.get(port, path))
  assert(r.status == 200, path .. ": " .. r.status)
  return assert(json.decode(r.body))
end

local function scrape()
  local r = assert(client.get(port, "/metrics"))
  t.eq(r.status, 200)
  return assert(prom.parse(r.body))
end

local function post(endpoint, body)
  local r = assert(client.post(port, "/api/control/" .. endpoint, body, TOKEN))
  return r, json.decode(r.body)
end

-- Waits for two more ticks (so whatever was true at the call has been acted on).
local function two_ticks()
  local now = prom.value(scrape(), "loreley_ticks_total")
  t.ok(t.wait_for(10, function() return prom.value(scrape(), "loreley_ticks_total") >= now + 2 end),
    "the host stopped ticking")
end

t.case("jobs flow; /metrics of a live run follows the format", function()
  t.ok(t.wait_for(60, function()
    return (prom.value(scrape(), "loreley_jobs_ingested_total") or 0) >= 6
  end), "fewer than 6 jobs ingested:\n" .. (t.read(log) or ""):sub(-3000))
  local fams = scrape()
  for _, st in ipairs { "pending", "queued", "running", "succeeded", "failed", "cancelled" } do
    t.ok(prom.value(fams, "loreley_jobs", { status = st }), "loreley_jobs{status=" .. st .. "}")
  end
  t.ok(prom.value(fams, "loreley_archive_elites", { island = "main" }) >= 2)
  t.ok(prom.value(fams, "loreley_jobs_dispatched_total") >= 6)
  t.ok(prom.value(fams, "loreley_stage_duration_seconds_count", { stage = "ingest" }) >= 1)
  t.eq(prom.value(fams, "loreley_database_errors_total"), 0)
  t.eq(prom.value(fams, "loreley_broker_errors_total"), 0)
end)

t.case("pause: no new job; the run drains; the numbers match the database", function()
  local r, body = post("pause", '{"reason":"e2e check"}')
  t.eq(r.status, 200, r.body)
  t.eq(body.changed, true)
  t.eq(body.recorded, true, "the change was written to loreley_control_log")
  two_ticks()
  local created = scalar("SELECT count(*) FROM evolution_jobs")
  -- drain: every job finished and ingested
  local drained = t.wait_for(60, function()
    return scalar([[SELECT count(*) FROM evolution_jobs WHERE status IN ('PENDING','QUEUED','RUNNING')
      OR (status = 'SUCCEEDED' AND coalesce(payload #>> '{ingestion,map_elites,status}', '')
          NOT IN ('succeeded', 'skipped'))]]) == 0
  end)
  if not drained then
    local left = assert(conn:query([[SELECT id::text AS id, status::text AS status, updated_at,
      payload->'ingestion' AS ingestion FROM evolution_jobs
      WHERE status IN ('PENDING','QUEUED','RUNNING') OR (status = 'SUCCEEDED'
        AND coalesce(payload #>> '{ingestion,map_elites,status}', '') NOT IN ('succeeded', 'skipped'))]]))
    io.stderr:write("undrained jobs: ", json.encode(left), "\nhost log:\n", (t.read(log) or ""):sub(-6000),
      "\nworker logs:\n", (t.read(dir .. "/worker1.log") or ""):sub(-3000), "\n",
      (t.read(dir .. "/worker2.log") or ""):sub(-3000), "\n")
  end
  t.ok(drained, "the run did not drain")
  two_ticks()
  t.eq(scalar("SELECT count(*) FROM evolution_jobs"), created, "a job was created while paused")
  two_ticks()

  local fams = scrape()
  local status = get_json("/api/status")
  t.eq(status.state, "paused")
  local rows = assert(conn:query("SELECT status::text AS s, count(*) AS n FROM evolution_jobs GROUP BY 1"))
  local by = {}
  for _, row in ipairs(rows) do by[row.s] = row.n end
  for _, st in ipairs { "PENDING", "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED" } do
    t.eq(prom.value(fams, "loreley_jobs", { status = st:lower() }), by[st] or 0, st)
    t.eq(status.jobs[st], by[st] or 0, st)
  end
  local total = scalar("SELECT count(*) FROM evolution_jobs")
  t.eq(prom.value(fams, "loreley_jobs_scheduled_total"), total)
  -- every job was sent once, plus any re-sent by recovery
  local dispatched = prom.value(fams, "loreley_jobs_dispatched_total")
  t.ok(dispatched >= total and dispatched <= scalar("SELECT sum(attempts) FROM loreley_dispatch"),
    "dispatched " .. dispatched .. " of " .. total .. " jobs")
  local ing = {}
  for _, row in ipairs(assert(conn:query([[SELECT payload->'ingestion'->'map_elites'->>'status' AS s,
      (payload->'ingestion'->'map_elites'->>'status_code')::int AS c, count(*) AS n
      FROM evolution_jobs GROUP BY 1, 2]]))) do
    if row.s == "succeeded" then ing[row.c] = (ing[row.c] or 0) + row.n end
    if row.s == "skipped" then ing[0] = (ing[0] or 0) + row.n end
  end
  t.eq(prom.value(fams, "loreley_jobs_ingested_total"), (ing[1] or 0) + (ing[2] or 0))
  t.eq(prom.value(fams, "loreley_ingestions_total", { status_code = "2" }), ing[2] or 0)
  t.eq(prom.value(fams, "loreley_ingestions_total", { status_code = "1" }), ing[1] or 0)
  t.eq(prom.value(fams, "loreley_ingestions_total", { status_code = "0" }), ing[0] or 0)
  -- the archive: elites, coverage (12^4 cells), QD score (offset 0) and best fitness
  local n = scalar("SELECT count(*) FROM loreley_archive_cells")
  local best = scalar("SELECT max(objective) FROM loreley_archive_cells")
  local sum = scalar("SELECT sum(objective) FROM loreley_archive_cells")
  t.eq(prom.value(fams, "loreley_archive_elites", { island = "main" }), n)
  t.eq(prom.value(fams, "loreley_archive_cells", { island = "main" }), 12 ^ 4)
  t.near(prom.value(fams, "loreley_archive_coverage_ratio", { island = "main" }), n / 12 ^ 4, 1e-12)
  t.eq(prom.value(fams, "loreley_archive_best_fitness", { island = "main" }), best)
  t.near(prom.value(fams, "loreley_archive_qd_score", { island = "main" }), sum, 1e-9)
  t.eq(prom.value(fams, "loreley_scheduling_paused"), 1)
  -- every job carries the policy version that scheduled it
  t.eq(scalar([[SELECT count(*) FROM evolution_jobs WHERE payload->'loreley'->>'policy_version' = $1]],
    host.sha256(POLICY_TEXT):sub(1, 12)), total)
end)

-- The database's projection of the archive on measures 1 and 3: {["x,y"] = {best, count}}.
local function db_projection()
  local cells = {}
  for _, row in ipairs(assert(conn:query("SELECT cell_index, objective FROM loreley_archive_cells"))) do
    -- 12^4 grid, row-major, last dimension fastest: coordinate k = cell / 12^(3-k) % 12
    local c = row.cell_index
    local x, y = math.floor(c / 12 ^ 3) % 12, math.floor(c / 12) % 12
    local key = x .. "," .. y
    local e = cells[key]
    if not e then cells[key] = { best = row.objective, count = 1 }
    else
      e.count = e.count + 1
      if row.objective > e.best then e.best = row.objective end
    end
  end
  return cells
end

t.case("/api/heatmap/1 is the database's projection on measures 1 and 3", function()
  local status = get_json("/api/status")
  t.eq(#status.islands, 1)
  local island = status.islands[1]
  t.eq(island.id, "main")
  t.same(island.heatmap.dims, { 1, 3 })
  local h = get_json(island.heatmap.url)
  t.eq(h.nx, 12); t.eq(h.ny, 12); t.same(h.dims, { 1, 3 })
  local expected = db_projection()
  local seen = 0
  for i = 1, h.nx * h.ny do
    local x, y = (i - 1) % h.nx, math.floor((i - 1) / h.nx)
    local e = expected[x .. "," .. y]
    if e then
      seen = seen + 1
      t.eq(h.best[i], e.best, "best at " .. x .. "," .. y)
      t.eq(h.count[i], e.count, "count at " .. x .. "," .. y)
    else
      t.eq(h.best[i], json.null, "empty at " .. x .. "," .. y)
    end
  end
  local occupied = 0
  for _ in pairs(expected) do occupied = occupied + 1 end
  t.eq(seen, occupied); t.eq(h.occupied, occupied)
  -- the levels the page draws: (best - min) / (max - min) * 65535, rounded
  local lo, hi = math.huge, -math.huge
  for _, e in pairs(expected) do lo, hi = math.min(lo, e.best), math.max(hi, e.best) end
  t.eq(h.min, lo); t.eq(h.max, hi)
  for i = 1, h.nx * h.ny do
    local e = expected[((i - 1) % h.nx) .. "," .. math.floor((i - 1) / h.nx)]
    t.eq(h.level[i], e and math.floor((e.best - lo) / (hi - lo) * 65535 + 0.5) or -1)
  end
  -- the best elites, as the database orders them
  local top = assert(conn:query([[SELECT cell_index, objective, commit_hash FROM loreley_archive_cells
    ORDER BY objective DESC, cell_index ASC LIMIT 10]]))
  t.eq(#island.best, #top)
  for i, row in ipairs(top) do
    t.eq(island.best[i].cell, row.cell_index)
    t.eq(island.best[i].objective, row.objective)
    t.eq(island.best[i].commit_hash, row.commit_hash)
  end
end)

-- Every start tag carrying attribute `marker`, as {name = value} tables.
local function tags_with(html, marker)
  local out = {}
  for attrs in html:gmatch("<%w+(%s[^>]*)>") do
    if attrs:find(" " .. marker .. '="', 1, true) then
      local a = {}
      for k, v in attrs:gmatch('([%w%-]+)="([^"]*)"') do
        a[k] = v:gsub("&quot;", '"'):gsub("&lt;", "<"):gsub("&gt;", ">"):gsub("&amp;", "&")
      end
      out[#out + 1] = a
    end
  end
  return out
end

-- Width and height of a PNG file.
local function png_size(path)
  local data = t.read(path)
  if not data or data:sub(1, 8) ~= "\137PNG\r\n\26\n" then return nil end
  local function u32(i)
    local a, b, c, d = data:byte(i, i + 3)
    return ((a * 256 + b) * 256 + c) * 256 + d
  end
  return u32(17), u32(21), #data
end

local chromium = sys.run { "sh", "-c", "command -v chromium" }
chromium = chromium and chromium.code == 0 and chromium.stdout:match("%S+")

local function run_chromium(args)
  local argv = { chromium, "--headless", "--no-sandbox", "--disable-gpu",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run", "--disable-dev-shm-usage", "--user-data-dir=" .. dir .. "/chromium" }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  return assert(sys.run(argv, { timeout = 60, env = { HOME = dir } }))
end

t.case("the status page in headless Chromium shows the database's heatmap and counts", function()
  if not chromium then
    io.stderr:write("  SKIP  the page test: Debian's chromium is not installed "
      .. "(apt-get install chromium)\n")
    return
  end
  local url = ("http://127.0.0.1:%d/?refresh=60"):format(port)
  local r = run_chromium { "--virtual-time-budget=5000", "--dump-dom", url }
  t.eq(r.code, 0, r.stderr:sub(-2000))
  local html = r.stdout
  t.match(html, '<body data%-loaded="1"', "the page did not load its data")
  -- job counts
  local rows = assert(conn:query("SELECT status::text AS s, count(*) AS n FROM evolution_jobs GROUP BY 1"))
  local by = {}
  for _, row in ipairs(rows) do by[row.s] = row.n end
  local jobs = tags_with(html, "data-status")
  t.eq(#jobs, 6)
  for _, a in ipairs(jobs) do
    t.eq(tonumber(a["data-count"]), by[a["data-status"]] or 0, a["data-status"])
  end
  local ingested = tags_with(html, "data-total")
  local totals = {}
  for _, a in ipairs(ingested) do totals[a["data-total"]] = a end
  t.ok(totals.scheduled and totals.ingested, "totals rows")
  t.match(html, 'data%-paused="1"', "paused shown")
  -- the island, its heatmap cells and best elites
  local islands = tags_with(html, "data-island")
  t.eq(#islands, 1)
  t.eq(islands[1]["data-island"], "main")
  t.eq(tonumber(islands[1]["data-elites"]), scalar("SELECT count(*) FROM loreley_archive_cells"))
  local canvas = tags_with(html, "data-occupied")
  t.eq(#canvas, 1)
  t.eq(canvas[1]["data-nx"], "12"); t.eq(canvas[1]["data-ny"], "12")
  local expected = db_projection()
  local occupied = 0
  for _ in pairs(expected) do occupied = occupied + 1 end
  t.eq(tonumber(canvas[1]["data-occupied"]), occupied)
  local cells = tags_with(html, "data-best")
  local listed = 0
  for _, a in ipairs(cells) do
    if a["data-x"] then
      listed = listed + 1
      local e = expected[a["data-x"] .. "," .. a["data-y"]]
      t.ok(e, "a cell the database does not have: " .. a["data-x"] .. "," .. a["data-y"])
      t.eq(tonumber(a["data-best"]), e.best)
      t.eq(tonumber(a["data-count"]), e.count)
    end
  end
  t.eq(listed, occupied)
  local top = assert(conn:query([[SELECT cell_index, objective, commit_hash FROM loreley_archive_cells
    ORDER BY objective DESC, cell_index ASC LIMIT 10]]))
  local elites = tags_with(html, "data-commit")
  t.eq(#elites, #top)
  for i, row in ipairs(top) do
    t.eq(tonumber(elites[i]["data-cell"]), row.cell_index)
    t.eq(tonumber(elites[i]["data-objective"]), row.objective)
    t.eq(elites[i]["data-commit"], row.commit_hash)
  end
  -- a throughput chart with points, and a screenshot of the whole page
  t.match(html, '<svg[^>]* data%-points="[1-9]')
  local shot = dir .. "/status.png"
  r = run_chromium { "--virtual-time-budget=5000", "--window-size=1280,1600",
    "--screenshot=" .. shot, url }
  t.eq(r.code, 0, r.stderr:sub(-2000))
  local w, hgt, bytes = png_size(shot)
  t.eq(w, 1280); t.eq(hgt, 1600)
  t.ok(bytes > 20000, "the screenshot is nearly empty: " .. tostring(bytes) .. " bytes")
  if os.getenv("LORELEY_KEEP_SCREENSHOT") then
    sys.run { "cp", shot, os.getenv("LORELEY_KEEP_SCREENSHOT") }
  end
end)

t.case("limits and resume: the next ticks obey the new cap; a reload's version is on new jobs", function()
  local r, body = post("limits", '{"schedule_batch_size": 1, "max_unfinished_jobs": 2}')
  t.eq(r.status, 200, r.body)
  t.eq(body.control.effective.max_unfinished_jobs, 2)
  local before = scalar("SELECT count(*) FROM evolution_jobs")
  local log_mark = #(t.read(log) or "")
  r = post("resume", "{}")
  t.eq(r.status, 200)
  t.ok(t.wait_for(60, function() return scalar("SELECT count(*) FROM evolution_jobs") >= before + 4 end),
    "no jobs after resume")
  local tail = (t.read(log) or ""):sub(log_mark)
  local ticks = 0
  for s, u in tail:gmatch("tick %d+ ingested=%d+ dispatched=%d+ scheduled=(%d+) unfinished=(%d+)") do
    ticks = ticks + 1
    t.ok(tonumber(s) <= 1, "scheduled " .. s .. " > batch size 1")
    t.ok(tonumber(u) <= 2, "unfinished " .. u .. " > cap 2")
  end
  t.ok(ticks >= 2, "no tick lines after resume")
  -- reload an edited policy: new jobs carry the new version
  local new_text = POLICY_TEXT .. "\n-- edited for the reload test\n"
  t.write(policy, new_text)
  local new_version = host.sha256(new_text):sub(1, 12)
  r, body = post("reload", "{}")
  t.eq(r.status, 200, r.body)
  t.eq(body.version, new_version)
  t.eq(get_json("/api/policy").version, new_version)
  t.ok(t.wait_for(60, function()
    return scalar([[SELECT count(*) FROM evolution_jobs
      WHERE payload->'loreley'->>'policy_version' = $1]], new_version) >= 2
  end), "no job with the new policy version")
  t.eq(scalar([[SELECT count(*) FROM evolution_jobs WHERE payload->'loreley'->>'policy_version'
    NOT IN ($1, $2) OR payload->'loreley' IS NULL]], host.sha256(POLICY_TEXT):sub(1, 12), new_version), 0)
end)

t.case("Redis down: broker errors and dispatch failures show in /metrics", function()
  local before = scrape()
  t.eq(prom.value(before, "loreley_broker_errors_total"), 0)
  stack.redis:kill()
  local fams
  local seen = t.wait_for(30, function()
    fams = scrape()
    return prom.value(fams, "loreley_broker_errors_total") > 0
      and prom.value(fams, "loreley_dispatch_failures_total") > 0
  end)
  assert(stack.redis:start())
  t.ok(seen, "no broker error counted while Redis was down:\n" .. (t.read(log) or ""):sub(-2000))
  t.ok(prom.value(fams, "loreley_broker_errors_total")
    >= prom.value(fams, "loreley_dispatch_failures_total"), "every failed dispatch is a broker error")
  local s = get_json("/api/status")
  t.ok(s.errors_total.broker > 0)
  local logged = false
  for _, e in ipairs(s.errors) do
    if e.message:find("Failed to enqueue job", 1, true) then logged = true end
  end
  t.ok(logged, "the failed dispatch is not among the last errors of /api/status")
end)

t.case("the control log table holds every change, with the experiment and the source", function()
  sys.kill(pid, "TERM")
  t.eq(assert(sys.wait(pid, 30)).code, 0)
  local rows = assert(conn:query([[SELECT action, source, remote, detail, policy_version,
    experiment_id::text AS e FROM loreley_control_log ORDER BY id]]))
  local actions = {}
  for i, row in ipairs(rows) do
    actions[i] = row.action
    t.eq(row.source, "http"); t.eq(row.remote, "127.0.0.1")
    t.eq(row.e, scalar("SELECT id::text FROM experiments LIMIT 1"))
  end
  t.same(actions, { "pause", "limits", "resume", "reload" })
  t.eq(rows[1].detail.reason, "e2e check")
  t.same(rows[2].detail.max_unfinished_jobs, { from = 8, to = 2 })
  t.eq(rows[4].detail.result, "ok")
  t.eq(rows[4].policy_version, host.sha256(POLICY_TEXT .. "\n-- edited for the reload test\n"):sub(1, 12))
end)

for _, w in ipairs(workers) do sys.kill(w, "TERM") end
for _, w in ipairs(workers) do sys.wait(w, 10) end
if sys.alive(pid) then sys.kill(pid, "KILL") sys.wait(pid, 5) end
conn:close()
t.finish()
