-- bench/http.lua: what the HTTP face costs a running host, and how fast its page draws a
-- big island. Figures and the exact commands: bench/http.md.
--
--   build/loreley-host --once bench/http.lua                 (both parts)
--   BENCH_PART=tick build/loreley-host --once bench/http.lua (part 1 only; or page)
--
-- Part 1, tick time. bench/http_policy.lua "tick" (a fixed-work tick every 0.02 s, one
-- island of 10^4 elites that gains an elite per tick) runs three times, each for
-- BENCH_SECONDS (default 60) in alternating 5 s phases: without --http; with --http
-- and no client; with --http and 50 requests/s from this process (alternately /metrics
-- and /api/status, one connection per request, paced every 20 ms). The tick's work
-- time is read from its "work" log lines; with load, only the ticks inside the loaded
-- phases count. Also reported: the main-thread time per tick the HTTP face takes (the
-- snapshot), from loreley_http_snapshot_duration_seconds.
--
-- Part 2, the page. bench/http_policy.lua "page2d" (10^5 elites on a 317 x 317 grid, so
-- 10^5 heatmap cells) and "page4d" (10^5 elites on 18^4, an 18 x 18 projection); the
-- page is loaded BENCH_PAGE_RUNS times (default 5) in headless Chromium; the page
-- records performance.now() when the heatmap has been drawn (from navigation start:
-- fetching /api/status and /api/heatmap/1, parsing, drawing, listing cells).
package.path = (os.getenv("LORELEY_SOURCE_DIR") or ".") .. "/tests/lua/?.lua;" .. package.path
local client = require "support.http_client"
local prom = require "support.prometheus"
local host = require "loreley.host"
local sys = require "loreley.sys"
local http = require "loreley.http"
local archive = require "loreley.archive"

local BINARY = os.getenv("LORELEY_HOST") or "build/loreley-host"
local SOURCE = os.getenv("LORELEY_SOURCE_DIR") or "."
local POLICY = SOURCE .. "/bench/http_policy.lua"
local SECONDS = tonumber(os.getenv("BENCH_SECONDS") or "") or 60
local PAGE_RUNS = tonumber(os.getenv("BENCH_PAGE_RUNS") or "") or 5
local PART = os.getenv("BENCH_PART") or "all"
local ONLY_LOADED = os.getenv("BENCH_ONLY_LOADED") == "1"   -- part 1: the loaded run only
local PHASE = tonumber(os.getenv("BENCH_PHASE") or "") or 2

local dir = assert(sys.mkdtemp("/tmp/loreley-bench-http-"))

local function median(list)
  local s = {}
  for i, v in ipairs(list) do s[i] = v end
  table.sort(s)
  if #s == 0 then return 0 / 0 end
  if #s % 2 == 1 then return s[(#s + 1) / 2] end
  return (s[#s / 2] + s[#s / 2 + 1]) / 2
end

local function mean(list)
  local sum = 0
  for _, v in ipairs(list) do sum = sum + v end
  return sum / #list
end

local function percentile(list, p)
  local s = {}
  for i, v in ipairs(list) do s[i] = v end
  table.sort(s)
  return s[math.max(1, math.ceil(#s * p))]
end

local spawned = {}   -- hosts this script started, stopped at the end even after an error

local function spawn(args, log, env)
  local argv = { BINARY }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  local pid = assert(sys.spawn(argv, { stdout = log, stderr = "stdout",
    env = env or { LOG_FORMAT = false, NO_COLOR = "1" } }))
  spawned[#spawned + 1] = pid
  return pid
end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("*a")
  f:close()
  return s
end

local function wait_for(seconds, fn)
  local deadline = host.now() + seconds
  while host.now() < deadline do
    local v = fn()
    if v then return v end
    host.sleep(0.05)
  end
end

local function port_of(log)
  return wait_for(60, function()
    return tonumber(read(log):match("status page on http://127%.0%.0%.1:(%d+)/"))
  end)
end

-- {at = seconds of the day, work = wall seconds, cpu = thread CPU seconds} per "work" line.
local function work_lines(text)
  local out = {}
  for h, m, s, w, c in text:gmatch("(%d%d):(%d%d):(%d%d%.%d%d%d) INFO    work ([%d%.e%-]+) ([%d%.e%-]+)") do
    out[#out + 1] = { at = tonumber(h) * 3600 + tonumber(m) * 60 + tonumber(s), work = tonumber(w),
      cpu = tonumber(c) }
  end
  return out
end

-- CPU seconds (user + system) of the whole process and of its main thread, from /proc.
local CLOCK_TICK = 100   -- sysconf(_SC_CLK_TCK) on Linux
local function cpu_seconds(pid)
  local function ticks(path)
    local text = read(path)
    local rest = text:match("%) (.*)$")
    if not rest then return 0 end
    local fields = {}
    for f in rest:gmatch("%S+") do fields[#fields + 1] = f end
    return (tonumber(fields[12]) + tonumber(fields[13])) / CLOCK_TICK   -- utime, stime
  end
  return ticks("/proc/" .. pid .. "/stat"), ticks(("/proc/%d/task/%d/stat"):format(pid, pid))
end

local function day_clock() return host.time() % 86400 end

-- Runs the tick policy for SECONDS in PHASE-second phases; load(phase_index) says whether
-- to send requests in a phase. Returns the work times inside loaded / unloaded phases,
-- the requests answered, and the final metrics.
local function run_tick(with_http, load)
  local log = dir .. ("/tick-%s-%s.log"):format(with_http and "http" or "plain", load and "load" or "idle")
  local args = {}
  if with_http then args = { "--http", "127.0.0.1:0" } end
  args[#args + 1] = POLICY
  args[#args + 1] = "--"
  args[#args + 1] = "tick"
  local pid = spawn(args, log)
  local port
  if with_http then port = assert(port_of(log), "no HTTP server: " .. read(log)) end
  assert(wait_for(60, function() return read(log):find("INFO    work ") end), read(log))
  host.sleep(1)
  local phases, answered, failed = {}, 0, 0
  local phase_count = math.floor(SECONDS / PHASE)
  local total0, main0 = cpu_seconds(pid)
  local run_started = host.now()
  for i = 1, phase_count do
    local loaded = load and i % 2 == 0
    local from = day_clock()
    local deadline = host.now() + PHASE
    local next_at = host.now()
    local n = 0
    while host.now() < deadline do
      if loaded then
        n = n + 1
        local r = client.get(port, n % 2 == 0 and "/metrics" or "/api/status")
        if r and r.status == 200 then answered = answered + 1 else failed = failed + 1 end
        next_at = next_at + 0.02
        local left = next_at - host.now()
        if left > 0 then host.sleep(left) end
      else
        host.sleep(math.max(0, deadline - host.now()))
      end
    end
    phases[#phases + 1] = { from = from, to = day_clock(), loaded = loaded }
  end
  -- CPU of every thread but the main one (the server's), per second of the run
  local total1, main1 = cpu_seconds(pid)
  local others = ((total1 - total0) - (main1 - main0)) / (host.now() - run_started)
  local metrics
  if with_http then metrics = assert(prom.parse(assert(client.get(port, "/metrics")).body)) end
  sys.kill(pid, "TERM")
  sys.wait(pid, 10)
  local lines = work_lines(read(log))
  local on, off, cpu_on, cpu_off = {}, {}, {}, {}
  for _, l in ipairs(lines) do
    for _, p in ipairs(phases) do
      -- leave 0.1 s at each phase edge out
      if l.at > p.from + 0.1 and l.at < p.to - 0.1 then
        if p.loaded then
          on[#on + 1], cpu_on[#cpu_on + 1] = l.work, l.cpu
        else
          off[#off + 1], cpu_off[#cpu_off + 1] = l.work, l.cpu
        end
      end
    end
  end
  local loaded_seconds = math.floor(phase_count / 2) * PHASE
  return { on = on, off = off, cpu_on = cpu_on, cpu_off = cpu_off, answered = answered,
    failed = failed, metrics = metrics, seconds = phase_count * PHASE,
    loaded_seconds = loaded_seconds, others = others,
    load_share = loaded_seconds / (phase_count * PHASE) }
end

local function ms(v) return ("%.3f ms"):format(v * 1000) end

local function part_tick()
  print(("Part 1: tick work time, %d s per run in %d s phases"):format(SECONDS, PHASE))
  local none = { on = {}, off = {}, cpu_on = {}, cpu_off = {}, others = 0 }
  local plain = ONLY_LOADED and none or run_tick(false, false)
  local idle = ONLY_LOADED and none or run_tick(true, false)
  local loaded = run_tick(true, true)
  local function row(name, list)
    if #list == 0 then return end   -- a run BENCH_ONLY_LOADED left out
    print(("  %-44s n=%4d  median %s  mean %s  p10 %s  p90 %s"):format(name, #list,
      ms(median(list)), ms(mean(list)), ms(percentile(list, 0.1)), ms(percentile(list, 0.9))))
  end
  local all_plain = {}
  for _, v in ipairs(plain.off) do all_plain[#all_plain + 1] = v end
  local all_idle = {}
  for _, v in ipairs(idle.off) do all_idle[#all_idle + 1] = v end
  print("  wall time of the tick's work:")
  row("no --http", all_plain)
  row("--http, no client", all_idle)
  row("--http, phases without load (same run)", loaded.off)
  row("--http, phases with 50 requests/s (same run)", loaded.on)
  local function change(f, a, b) return (f(a) - f(b)) / f(b) * 100 end
  local function p10(list) return percentile(list, 0.1) end
  print(("  load vs no load in the same run: median %+.2f %%, mean %+.2f %%, p10 %+.2f %%")
    :format(change(median, loaded.on, loaded.off), change(mean, loaded.on, loaded.off),
      change(p10, loaded.on, loaded.off)))
  print("  CPU time of the tick's work (the main thread's own clock):")
  row("no --http", plain.cpu_off)
  row("--http, phases without load (same run)", loaded.cpu_off)
  row("--http, phases with 50 requests/s (same run)", loaded.cpu_on)
  print(("  load vs no load in the same run: median %+.2f %%, mean %+.2f %%, p10 %+.2f %%")
    :format(change(median, loaded.cpu_on, loaded.cpu_off), change(mean, loaded.cpu_on,
      loaded.cpu_off), change(p10, loaded.cpu_on, loaded.cpu_off)))
  -- the loaded run has load in load_share of its time: the requests' own CPU per loaded
  -- second is the difference of the two runs' rates divided by that share
  print(("  CPU of the server threads: %.2f %% of a core with no client; %.2f %% over the "
    .. "loaded run, so %.2f %% of a core while serving 50 requests/s"):format(idle.others * 100,
      loaded.others * 100, (loaded.others - idle.others) / loaded.load_share * 100 + idle.others * 100))
  print(("  requests answered %d (%.1f per loaded second), failed %d"):format(loaded.answered,
    loaded.answered / loaded.loaded_seconds, loaded.failed))
  local fams = loaded.metrics
  local snap_sum = prom.value(fams, "loreley_http_snapshot_duration_seconds_sum")
  local snap_n = prom.value(fams, "loreley_http_snapshot_duration_seconds_count")
  local tick_sum = prom.value(fams, "loreley_tick_duration_seconds_sum")
  local tick_n = prom.value(fams, "loreley_tick_duration_seconds_count")
  print(("  main-thread time of the HTTP face per event: mean %s (%d events); tick mean %s "
    .. "(%d ticks): %.2f %% of tick time"):format(ms(snap_sum / snap_n), snap_n,
    ms(tick_sum / tick_n), tick_n, snap_sum / tick_sum * 100))
end

-- --- part 2 --------------------------------------------------------------------------------


local function chromium_path()
  local r = sys.run { "sh", "-c", "command -v chromium" }
  return r and r.code == 0 and r.stdout:match("%S+")
end

-- Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: JSON
-- messages ending in NUL on fds 3 and 4), so the page runs in real time and reports its
-- own performance.now() readings (--dump-dom would need a virtual time budget, under
-- which the page's clocks stand still while it computes).
local ffi = require "ffi"
local json = require "loreley.json"
ffi.cdef [[
  int pipe(int fds[2]);
  int fork(void);
  int dup2(int from, int to);
  int close(int fd);
  int open(const char *path, int flags, ...);
  int execvp(const char *file, char *const argv[]);
  void _exit(int code);
  long read(int fd, void *buf, unsigned long n);
  long write(int fd, const void *buf, unsigned long n);
]]   -- poll and struct loreley_client_pollfd come from support.http_client
local C = ffi.C

local Browser = {}
Browser.__index = Browser

local function launch(chromium)
  local args = { chromium, "--headless", "--no-sandbox", "--disable-gpu",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run", "--disable-dev-shm-usage", "--user-data-dir=" .. dir .. "/chromium",
    "--window-size=1280,1600", "--remote-debugging-pipe" }
  local argv = ffi.new("char *[?]", #args + 1)
  local keep = {}
  for i, a in ipairs(args) do
    keep[i] = ffi.new("char[?]", #a + 1, a)
    argv[i - 1] = keep[i]
  end
  local to_browser, from_browser = ffi.new("int[2]"), ffi.new("int[2]")
  assert(C.pipe(to_browser) == 0 and C.pipe(from_browser) == 0)
  local pid = C.fork()
  assert(pid >= 0, "fork failed")
  if pid == 0 then
    local null = C.open("/dev/null", 2)
    C.dup2(to_browser[0], 3)
    C.dup2(from_browser[1], 4)
    C.dup2(null, 1)
    C.dup2(null, 2)
    C.execvp(args[1], argv)
    C._exit(127)
  end
  C.close(to_browser[0])
  C.close(from_browser[1])
  return setmetatable({ pid = pid, out = to_browser[1], inp = from_browser[0], next_id = 0,
    pending = "", buf = ffi.new("uint8_t[65536]"), keep = keep }, Browser)
end

-- Sends one command and returns its result (events are skipped).
function Browser:call(method, params, session)
  self.next_id = self.next_id + 1
  local id = self.next_id
  local msg = json.encode { id = id, method = method, params = params or {}, sessionId = session }
    .. "\0"
  assert(C.write(self.out, msg, #msg) == #msg, "write to chromium failed")
  local deadline = host.now() + 60
  while true do
    local nul = self.pending:find("\0", 1, true)
    if nul then
      local text = self.pending:sub(1, nul - 1)
      self.pending = self.pending:sub(nul + 1)
      local m = json.decode(text)
      if m and m.id == id then
        if m.error then error(method .. ": " .. json.encode(m.error)) end
        return m.result
      end
    else
      local pfd = ffi.new("struct loreley_client_pollfd[1]")
      pfd[0].fd, pfd[0].events = self.inp, 1
      assert(host.now() < deadline, "chromium did not answer " .. method)
      if C.poll(pfd, 1, 1000) > 0 then
        local n = C.read(self.inp, self.buf, 65536)
        assert(n > 0, "chromium closed the pipe")
        self.pending = self.pending .. ffi.string(self.buf, n)
      end
    end
  end
end

function Browser:close()
  pcall(self.call, self, "Browser.close")
  C.close(self.out)
  C.close(self.inp)
  sys.wait(self.pid, 10)
  sys.reap()
end

-- Loads the page once; returns the page's own timings (ms since navigation start).
local function page_run(browser, session, port, run)
  browser:call("Page.navigate", { url = ("http://127.0.0.1:%d/?refresh=600&run=%d"):format(port, run) },
    session)
  local expression = [[(function () {
    var b = document.body;
    if (!b || !b.hasAttribute("data-first-heatmap-ms")) return null;
    var s = document.querySelector(".island");
    return JSON.stringify({ heatmap: +b.getAttribute("data-first-heatmap-ms"),
      render: +b.getAttribute("data-first-render-ms"),
      draw: s ? +s.getAttribute("data-draw-ms") : null,
      occupied: +document.querySelector("canvas.heatmap").getAttribute("data-occupied"),
      listed: document.querySelectorAll("ul.cells li").length });
  })()]]
  local deadline = host.now() + 60
  while host.now() < deadline do
    local r = browser:call("Runtime.evaluate", { expression = expression, returnByValue = true },
      session)
    local v = r.result and r.result.value
    if type(v) == "string" then return assert(json.decode(v)) end
    host.sleep(0.05)
  end
  error("the page did not draw its heatmap within 60 s")
end

local function part_page()
  -- server side: building the heatmap JSON of 10^5 elites, in this process
  for _, spec in ipairs { { "2-D 317 x 317", 317, 2 }, { "4-D 18^4", 18, 4 } } do
    local dims, lower, upper = {}, {}, {}
    for i = 1, spec[3] do dims[i], lower[i], upper[i] = spec[2], -0.5, 0.5 end
    local a = archive.grid { dims = dims, lower = lower, upper = upper }
    local rng = host.rng(1)
    local items, seen, total = {}, {}, spec[2] ^ spec[3]
    while #items < 100000 do
      local cell = rng:below(total)
      if not seen[cell] then
        seen[cell] = true
        local m, rest = {}, cell
        for k = spec[3], 1, -1 do
          local coord = rest % spec[2]
          rest = (rest - coord) / spec[2]
          m[k] = -0.5 + (coord + 0.5) / spec[2]
        end
        items[#items + 1] = { commit_hash = ("%040x"):format(cell), objective = rng:random(), measures = m }
      end
    end
    a:add_many(items)
    local times, size = {}, 0
    for _ = 1, 11 do
      local t0 = host.now()
      local text = http.heatmap(a, { dims = { 1, 2 } })
      http.best(a, 10)
      times[#times + 1] = host.now() - t0
      size = #text
    end
    print(("Part 2 (server): heatmap + best 10 of 10^5 elites, %s: median %s, JSON %.0f KB")
      :format(spec[1], ms(median(times)), size / 1024))
  end
  local chromium = chromium_path()
  if not chromium then
    print("Part 2 (page): skipped, Debian's chromium is not installed (apt-get install chromium)")
  else
    local version = sys.run { chromium, "--version" }
    print("Part 2 (page): " .. (version and version.stdout:match("[^\n]*") or chromium))
    for _, mode in ipairs { "page2d", "page4d" } do
      local log = dir .. "/" .. mode .. ".log"
      local pid = spawn({ "--http", "127.0.0.1:0", POLICY, "--", mode }, log)
      local port = assert(port_of(log), read(log))
      assert(wait_for(120, function() return read(log):find("bench island ready") end))
      host.sleep(0.5)
      local status = assert(client.get(port, "/api/status"))
      local heat = assert(client.get(port, "/api/heatmap/1"))
      local browser = launch(chromium)
      local target = browser:call("Target.createTarget", { url = "about:blank" })
      local session = browser:call("Target.attachToTarget", { targetId = target.targetId,
        flatten = true }).sessionId
      local cold = page_run(browser, session, port, 0)   -- the first load: a cold browser
      local runs = {}
      for i = 1, PAGE_RUNS do runs[i] = page_run(browser, session, port, i) end
      browser:close()
      sys.kill(pid, "TERM")
      sys.wait(pid, 10)
      local heatmap, render, draw = {}, {}, {}
      for i, r in ipairs(runs) do heatmap[i], render[i], draw[i] = r.heatmap, r.render, r.draw end
      print(("  %s: /api/status %.0f KB, /api/heatmap/1 %.0f KB, %d occupied cells, %d listed")
        :format(mode, #status.body / 1024, #heat.body / 1024, runs[1].occupied, runs[1].listed))
      print(("    heatmap drawn %.0f ms after navigation start (median of %d loads; min %.0f, "
        .. "max %.0f; first, cold load %.0f); drawing and listing after the JSON parse %.0f ms; "
        .. "whole page %.0f ms"):format(median(heatmap), #heatmap, math.min(unpack(heatmap)),
          math.max(unpack(heatmap)), cold.heatmap, median(draw), median(render)))
    end
  end
end

local ok, err = xpcall(function()
  if PART == "all" or PART == "tick" then part_tick() end
  if PART == "all" or PART == "page" then part_page() end
end, debug.traceback)
for _, pid in ipairs(spawned) do
  if sys.alive(pid) then
    sys.kill(pid, "KILL")
    sys.wait(pid, 5)
  end
end
sys.run { "rm", "-rf", dir }
if not ok then error(err, 0) end
