-- Benchmark of loreley.broker against a private redis-server on loopback TCP.
--
--   build/loreley-host --once bench/broker.lua [-- quick]
--
-- Measures, in one run and on one connection:
--   * the loopback round trip: b:ping() (PING -> +PONG through the same code path),
--     and `redis-cli --latency` against the same server (it pings every 10 ms from its
--     own idle process, so it sees a colder path than a tight loop);
--   * a single enqueue (MULTI/HSET/RPUSH/EXEC, one round trip), and a single enqueue
--     with duplicate suppression (one EVALSHA), each sample timed alone;
--   * batch enqueue: enqueue_many of 10,000 and 100,000 messages (one pipeline).
-- Ping and enqueue samples are interleaved in blocks so drift affects both alike.
-- Results are medians (and p90/p99 for latencies); figures go to bench/broker.md.
local broker = require "loreley.broker"
local localstack = require "loreley.localstack"
local host = require "loreley.host"
local sys = require "loreley.sys"

local quick = false
for _, a in ipairs(arg or {}) do if a == "quick" then quick = true end end

local dir = assert(sys.mkdtemp("/tmp/loreley-bench-broker-"))
local redis = assert(localstack.redis { dir = dir .. "/r" })
local b = assert(broker.connect(redis.url))
local JOB = "0b7e8f3c-1d2a-4c55-9e1f-2a3b4c5d6e7f"

local function percentile(sorted, p)
  local i = math.max(1, math.min(#sorted, math.floor(p * #sorted + 0.5)))
  return sorted[i]
end
local function summary(samples)
  table.sort(samples)
  return { median = percentile(samples, 0.5), p90 = percentile(samples, 0.9),
    p99 = percentile(samples, 0.99), n = #samples }
end
local function us(s) return s * 1e6 end

-- Warm up (connection, scripts, JIT).
for _ = 1, 2000 do assert(b:ping()) end
for i = 1, 2000 do assert(b:enqueue(nil, "run_evolution_job", { JOB .. i })) end
assert(redis:cli("FLUSHALL"))

-- 1. Latencies, interleaved: PING, enqueue, enqueue with dedupe.
local rounds, per = quick and 5 or 20, 1000
local ping, single, dedupe = {}, {}, {}
local now = host.now
for r = 1, rounds do
  for _ = 1, per do
    local t0 = now()
    b:ping()
    ping[#ping + 1] = now() - t0
  end
  for i = 1, per do
    local t0 = now()
    local rid = b:enqueue(nil, "run_evolution_job", { JOB })
    single[#single + 1] = now() - t0
    assert(rid)
  end
  for i = 1, per do
    local t0 = now()
    local rid = b:enqueue(nil, "run_evolution_job", { ("job-%d-%d"):format(r, i) },
      { dedupe = true })
    dedupe[#dedupe + 1] = now() - t0
    assert(rid)
  end
  assert(redis:cli("FLUSHALL"))
end
ping, single, dedupe = summary(ping), summary(single), summary(dedupe)

-- 2. redis-cli --latency against the same server for ~3 s (prints "min max avg n", ms).
local lat = sys.run({ "timeout", "-s", "INT", quick and "1" or "3", "redis-cli", "-h", "127.0.0.1",
  "-p", tostring(redis.port), "--latency" }, { timeout = 10 })
local cli_min, cli_max, cli_avg, cli_n = (lat and lat.stdout or ""):match(
  "(%d+) (%d+) ([%d%.]+) (%d+)%s*$")

-- 3. Batch enqueue throughput.
local function batch(n, reps)
  local items = {}
  for i = 1, n do
    items[i] = { actor = "run_evolution_job", args = { ("%s-%d"):format(JOB, i) } }
  end
  local rates = {}
  for _ = 1, reps do
    collectgarbage()
    local t0 = now()
    local res, sent = b:enqueue_many(items)
    local dt = now() - t0
    assert(res and sent == n, "batch failed")
    rates[#rates + 1] = n / dt
    assert(redis:cli("FLUSHALL"))
  end
  table.sort(rates)
  return { median = percentile(rates, 0.5), min = rates[1], max = rates[#rates], reps = reps }
end
local b10k = batch(10000, quick and 3 or 9)
local b100k = batch(100000, quick and 1 or 5)

local function line(name, s)
  return ("%-32s median %7.1f us   p90 %7.1f us   p99 %7.1f us   (%d samples)"):format(
    name, us(s.median), us(s.p90), us(s.p99), s.n)
end
print(("redis-server %s on 127.0.0.1 (loopback TCP), %s"):format(
  (assert(redis:cli("INFO", "server")):match("redis_version:([%d%.]+)")), tostring(b)))
print(line("PING round trip (b:ping)", ping))
print(line("enqueue (MULTI/HSET/RPUSH/EXEC)", single))
print(line("enqueue with dedupe (EVALSHA)", dedupe))
print(("single enqueue / PING round trip:   %.2f x (median)"):format(single.median / ping.median))
print(("dedupe enqueue / PING round trip:   %.2f x (median)"):format(dedupe.median / ping.median))
if cli_avg then
  print(("redis-cli --latency (same server):  min %s ms, max %s ms, avg %.3f ms = %.0f us (%s samples)")
    :format(cli_min, cli_max, tonumber(cli_avg), tonumber(cli_avg) * 1000, cli_n))
  print(("single enqueue / redis-cli avg:     %.2f x"):format(single.median / (tonumber(cli_avg) / 1000)))
else
  print("redis-cli --latency: no figure (" .. tostring(lat and lat.stdout) .. ")")
end
print(("batch enqueue_many, 10,000 msgs:    median %.0f msg/s (min %.0f, max %.0f, %d runs)")
  :format(b10k.median, b10k.min, b10k.max, b10k.reps))
print(("batch enqueue_many, 100,000 msgs:   median %.0f msg/s (min %.0f, max %.0f, %d runs)")
  :format(b100k.median, b100k.min, b100k.max, b100k.reps))

b:close()
redis:stop()
sys.run { "rm", "-rf", dir }
