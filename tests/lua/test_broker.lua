-- ctest: labels=redis timeout=120
-- loreley.broker against a real redis-server: the exact keys, fields and JSON of
-- shared/spec/dramatiq-redis.md §0-§2 (read back with redis-cli, an independent client),
-- escaping, delayed and batch enqueue, duplicate suppression, the worker side, and the
-- §7 validation rules. Expected bytes come from the spec, from Python's json module or
-- are written out here; never from the code under test.
local t = require "support.t"
local broker = require "loreley.broker"
local localstack = require "loreley.localstack"
local settings = require "loreley.settings"
local host = require "loreley.host"
local sys = require "loreley.sys"
local cjson = require "cjson"

local dir = t.tmpdir()
local redis = assert(localstack.redis { dir = dir .. "/r" })
local NS, Q = "loreley", "loreley.evolution"

local UUID4 = "^%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$"

local function cli(...) return assert(redis:cli(...)) end
local function lines(s)
  local out = {}
  for l in s:gmatch("[^\n]+") do out[#out + 1] = l end
  return out
end
local function now_ms() return math.floor(host.time() * 1000) end

-- The broker under test, from the settings a deployment would use.
local function open(extra)
  local env = { TASKS_REDIS_URL = redis.url, TASKS_REDIS_NAMESPACE = NS, TASKS_QUEUE_NAME = Q }
  for k, v in pairs(extra or {}) do env[k] = v end
  local s = assert(settings.load { env = env, dotenv = false })
  return assert(broker.from_settings(s))
end

-- The dedupe id, computed here from its definition (docs/broker.md): the first 16 bytes
-- of SHA-256("loreley.broker.dedupe.v1" NUL queue NUL key), version 8, RFC 9562 variant.
local function expected_dedupe_id(queue, key)
  local hex = host.sha256("loreley.broker.dedupe.v1\0" .. queue .. "\0" .. key):sub(1, 32)
  local b = {}
  for i = 1, 16 do b[i] = tonumber(hex:sub(2 * i - 1, 2 * i), 16) end
  b[7] = bit.bor(bit.band(b[7], 0x0f), 0x80)
  b[9] = bit.bor(bit.band(b[9], 0x3f), 0x80)
  for i = 1, 16 do b[i] = ("%02x"):format(b[i]) end
  local h = table.concat(b)
  return ("%s-%s-%s-%s-%s"):format(h:sub(1, 8), h:sub(9, 12), h:sub(13, 16), h:sub(17, 20),
    h:sub(21, 32))
end

local python = sys.exists("/usr/bin/python3") and "/usr/bin/python3" or nil

t.case("enqueue writes exactly the spec's keys, fields and JSON (§0, §2)", function()
  cli("FLUSHALL")
  local b = open()
  local job = "0b7e8f3c-1d2a-4c55-9e1f-2a3b4c5d6e7f"
  local before = now_ms()
  local rid, mid, status = b:enqueue(nil, "run_evolution_job", { job })
  local after = now_ms()
  t.eq(status, "enqueued")
  t.match(rid, UUID4, "redis_message_id is a version-4 UUID")
  t.match(mid, UUID4, "message_id is a version-4 UUID")
  t.ok(rid ~= mid, "the two ids differ")
  -- Exactly two keys: the list and the hash (no heartbeat, no other state).
  local keys = lines(cli("KEYS", "*"))
  table.sort(keys)
  t.same(keys, { "loreley:loreley.evolution", "loreley:loreley.evolution.msgs" })
  t.eq(cli("TYPE", "loreley:loreley.evolution"), "list")
  t.eq(cli("TYPE", "loreley:loreley.evolution.msgs"), "hash")
  -- The id appears three times: list element, hash field, options.redis_message_id.
  t.same(lines(cli("LRANGE", "loreley:loreley.evolution", 0, -1)), { rid })
  t.same(lines(cli("HKEYS", "loreley:loreley.evolution.msgs")), { rid })
  local payload = cli("HGET", "loreley:loreley.evolution.msgs", rid)
  local ts = tonumber(payload:match('"message_timestamp":(%d+)}$'))
  t.ok(ts and ts >= before - 1 and ts <= after + 1, "millisecond timestamp of now: " .. tostring(ts))
  -- Byte for byte the form of the spec's §2 example (Python's output).
  t.eq(payload, '{"queue_name":"loreley.evolution","actor_name":"run_evolution_job","args":["'
    .. job .. '"],"kwargs":{},"options":{"redis_message_id":"' .. rid .. '"},"message_id":"'
    .. mid .. '","message_timestamp":' .. ts .. "}")
  -- Field by field, decoded.
  local m = cjson.decode(payload)
  t.eq(m.queue_name, Q)
  t.eq(m.actor_name, "run_evolution_job")
  t.same(m.args, { job })
  t.same(m.kwargs, {})
  t.same(m.options, { redis_message_id = rid })
  t.eq(m.message_id, mid)
  t.eq(m.message_timestamp, ts)
  -- Fresh ids every time.
  local rid2, mid2 = b:enqueue(nil, "run_evolution_job", { job })
  t.ok(rid2 ~= rid and mid2 ~= mid and rid2 ~= mid2)
  t.eq(tonumber(cli("LLEN", "loreley:loreley.evolution")), 2)
  b:close()
end)

t.case("the payload is set before the id is pushed, inside MULTI/EXEC (MONITOR)", function()
  cli("FLUSHALL")
  local b = open()
  local log = dir .. "/monitor.txt"
  local pid = assert(sys.spawn({ "redis-cli", "-p", tostring(redis.port), "MONITOR" },
    { stdout = log }))
  t.ok(t.wait_for(5, function() return (t.read(log) or ""):find("OK") end), "MONITOR started")
  local rid = assert(b:enqueue(nil, "run_evolution_job", { "j" }))
  t.ok(t.wait_for(5, function() return (t.read(log) or ""):find('"EXEC"') end), "EXEC seen")
  sys.kill(pid, "TERM")
  sys.wait(pid, 5)
  local cmds = {}
  for line in t.read(log):gmatch("[^\n]+") do
    local c = line:match('%] "(%u+)"')
    if c then cmds[#cmds + 1] = c end
  end
  t.same(cmds, { "MULTI", "HSET", "RPUSH", "EXEC" })
  t.ok(t.read(log):find('"HSET" "loreley:loreley.evolution.msgs" "' .. rid .. '"', 1, true))
  t.ok(t.read(log):find('"RPUSH" "loreley:loreley.evolution" "' .. rid .. '"', 1, true))
  b:close()
end)

t.case("non-ASCII and control characters are escaped as Python's json.dumps does", function()
  cli("FLUSHALL")
  local b = open()
  local args = { "\195\169\226\130\172\240\159\152\128", "\n\t\0\31\127\"\\/", 42, -0.5, true,
    { 1, "x" } }
  local kwargs = { b = 1.5, a = { true, false, cjson.null }, ["k\195\169"] = {} }
  local rid = assert(b:enqueue(nil, "run_evolution_job", args, { kwargs = kwargs }))
  local payload = cli("HGET", "loreley:loreley.evolution.msgs", rid)
  -- python3: json.dumps([...], separators=(",", ":")) of the same values; object keys
  -- sorted (Lua tables have no order); an empty table inside kwargs is {}.
  t.match(payload, '"args":%["\\u00e9\\u20ac\\ud83d\\ude00","\\n\\t\\u0000\\u001f\\u007f\\"\\\\/",42,%-0%.5,true,%[1,"x"%]%],', "args")
  t.match(payload, '"kwargs":{"a":%[true,false,null%],"b":1%.5,"k\\u00e9":{}},', "kwargs")
  t.no_match(payload, "[\128-\255]", "ASCII only")
  t.no_match(payload, "[%z\1-\31]", "no raw control characters")
  t.ok(broker.validate_message(payload, Q, rid))
  if python then
    -- Python's own decoder and encoder: the same bytes come back, and the keys are
    -- the seven of a Dramatiq message in order.
    local r = assert(sys.run({ python, "-c", [[
import json, sys
data = sys.stdin.buffer.read()
fields = json.loads(data.decode("utf-8"))
assert list(fields) == ["queue_name", "actor_name", "args", "kwargs", "options", "message_id", "message_timestamp"], list(fields)
assert isinstance(fields["args"], list) and isinstance(fields["kwargs"], dict)
assert fields["args"][0] == "\u00e9\u20ac\U0001F600", fields["args"][0]
assert fields["args"][1] == "\n\t\x00\x1f\x7f\"\\/"
assert json.dumps(fields, separators=(",", ":")).encode() == data, "not byte-identical"
print("python-ok")
]] }, { input = payload, timeout = 30 }))
    t.eq(r.code, 0, r.stderr)
    t.match(r.stdout, "python%-ok")
  else
    io.stderr:write("  (python3 not found: Python round trip skipped)\n")
  end
  b:close()
end)

t.case("a message that cannot be encoded is never sent (nil, message, 'invalid')", function()
  cli("FLUSHALL")
  local b = open()
  local cases = {
    { { "bad \255 utf8" }, "args[1]: string is not valid UTF-8 (byte 4)" },
    { { 0 / 0 }, "args[1]: NaN has no JSON form" },
    { { 1, { -1 / 0 } }, "args[2][1]: -inf has no JSON form" },
    { { print }, "args[1]: a function cannot be sent as JSON" },
    { { [1] = "a", [3] = "c" }, "array has holes" },
    { { 1, x = 2 }, "mixes array items and string keys" },
    { { { [1.5] = 1 } }, "args[1]: table key 1.5" },
    { { name = "x" }, "args must be an array" },
  }
  local cyc = {}
  cyc[1] = cyc
  cases[#cases + 1] = { { cyc }, "nested more than 32 levels" }
  for i, c in ipairs(cases) do
    local rid, err, code = b:enqueue(nil, "run_evolution_job", c[1])
    t.eq(rid, nil, "case " .. i)
    t.eq(code, "invalid", "case " .. i)
    t.ok(err:find(c[2], 1, true), ("case %d: %q lacks %q"):format(i, err, c[2]))
  end
  local _, err = b:enqueue(nil, "a", { "x" }, { kwargs = { 1, 2 } })
  t.match(err, "kwargs must be a table with string keys")
  _, err = b:enqueue(nil, "a", { "x" }, { kwargs = { ["\255"] = 1 } })
  t.match(err, "key is not valid UTF%-8")
  _, err = b:enqueue(nil, "bad\255actor", { "x" })
  t.match(err, "actor_name is not valid UTF%-8")
  t.eq(cli("DBSIZE"), "0", "nothing reached Redis")
  b:close()
end)

t.case("misuse raises and names what was wrong", function()
  local b = open()
  t.raises(function() b:enqueue("bad queue", "a", {}) end, "is not a Dramatiq queue name")
  t.raises(function() b:enqueue("q.DQ", "a", {}) end, "reserves")
  t.raises(function() b:enqueue(nil, "", {}) end, "actor name must be 1..256 bytes")
  t.raises(function() b:enqueue(nil, "a", "x") end, "args must be a table")
  t.raises(function() b:enqueue(nil, "a", {}, { delay = 5 }) end, "unknown option 'delay'")
  t.raises(function() b:enqueue(nil, "a", {}, { delay_ms = -1 }) end, "delay_ms must be")
  t.raises(function() b:enqueue(nil, "a", {}, { delay_ms = 8 * 86400000 }) end, "7 days")
  t.raises(function() b:enqueue(nil, "a", { 1 }, { dedupe = true }) end, "args[1]")
  t.raises(function() b:enqueue_many { { actor = "a", args = {}, prio = 1 } } end,
    "item 1: unknown option 'prio'")
  t.raises(function() b:fetch(nil, 0, "c") end, "n must be in 1..1000")
  t.raises(function() b:fetch(nil, 1, "bad id*") end, "consumer id")
  t.raises(function() broker.connect { url = redis.url, host = "x" } end, "either url or host")
  t.raises(function() broker.connect { url = redis.url, namespace = "a b" } end, "namespace")
  t.raises(function() broker.connect(redis.url, { tiemout = 1 }) end, "unknown option 'tiemout'")
  b:close()
  b:close()   -- idempotent
  t.eq(tostring(b), "loreley.broker (closed)")
  t.raises(function() b:ping() end, "broker is closed")
end)

t.case("delayed enqueue goes through <queue>.DQ with an integer eta (§6)", function()
  cli("FLUSHALL")
  local b = open()
  local rid, mid = assert(b:enqueue(nil, "run_evolution_job", { "J" }, { delay_ms = 1500 }))
  t.eq(cli("EXISTS", "loreley:loreley.evolution"), "0", "the main queue is untouched")
  t.same(lines(cli("LRANGE", "loreley:loreley.evolution.DQ", 0, -1)), { rid })
  local payload = cli("HGET", "loreley:loreley.evolution.DQ.msgs", rid)
  local eta, ts = payload:match('"eta":(%d+)},"message_id":"[^"]+","message_timestamp":(%d+)}$')
  t.ok(eta, payload)
  t.eq(tonumber(eta) - tonumber(ts), 1500, "eta = timestamp + delay")
  t.eq(payload, '{"queue_name":"loreley.evolution.DQ","actor_name":"run_evolution_job","args":["J"],'
    .. '"kwargs":{},"options":{"redis_message_id":"' .. rid .. '","eta":' .. eta
    .. '},"message_id":"' .. mid .. '","message_timestamp":' .. ts .. "}")
  t.eq(b:queue_length(), 0)
  t.eq(b:queue_length(Q .. ".DQ"), 1)
  local st = b:stats()
  t.eq(st.delayed, 1)
  t.eq(st.queued, 0)
  b:close()
end)

t.case("batch enqueue: one MULTI/EXEC, order kept, per-item results", function()
  cli("FLUSHALL")
  cli("CONFIG", "RESETSTAT")
  local b = open()
  local items = {}
  for i = 1, 2500 do
    items[i] = { actor = "run_evolution_job", args = { ("job-%04d"):format(i) } }
  end
  items[7] = { queue = "other.queue", actor = "x", args = { 7 } }
  items[8] = { actor = "run_evolution_job", args = { "\255" } }            -- invalid
  items[9] = { actor = "run_evolution_job", args = { "d-9" }, opts = { dedupe = true } }
  items[10] = { actor = "run_evolution_job", args = { "late" }, opts = { delay_ms = 60000 } }
  local results, n = b:enqueue_many(items)
  t.eq(#results, 2500)
  t.eq(n, 2499)
  t.eq(results[8].status, "invalid")
  t.match(results[8].error, "args%[1%]: string is not valid UTF%-8")
  t.eq(results[8].redis_message_id, nil)
  t.eq(results[9].redis_message_id, expected_dedupe_id(Q, "d-9"))
  local main = {}
  for i, r in ipairs(results) do
    if i ~= 8 then
      t.eq(r.status, "enqueued", "item " .. i)
      t.match(r.message_id, UUID4)
      if i ~= 7 and i ~= 10 then main[#main + 1] = r.redis_message_id end
    end
  end
  -- The list holds the ids in the order of the items (the dedupe item comes after the
  -- plain ones: it is written by its own script call after EXEC).
  local listed = lines(cli("LRANGE", "loreley:loreley.evolution", 0, -1))
  t.eq(#listed, 2497)
  local plain = {}
  for _, id in ipairs(main) do if id ~= results[9].redis_message_id then plain[#plain + 1] = id end end
  for i = 1, #plain do t.eq(listed[i], plain[i], "position " .. i) end
  t.eq(listed[#listed], results[9].redis_message_id)
  t.same(lines(cli("LRANGE", "loreley:other.queue", 0, -1)), { results[7].redis_message_id })
  t.same(lines(cli("LRANGE", "loreley:loreley.evolution.DQ", 0, -1)), { results[10].redis_message_id })
  -- Every payload is where its id says and passes the §7 checks for its list.
  t.eq(tonumber(cli("HLEN", "loreley:loreley.evolution.msgs")), 2497)
  for _, i in ipairs { 1, 2, 1234, 2500 } do
    local r = results[i]
    local payload = cli("HGET", "loreley:loreley.evolution.msgs", r.redis_message_id)
    local info = assert(broker.validate_message(payload, Q, r.redis_message_id))
    t.eq(info.message_id, r.message_id)
    t.same(cjson.decode(payload).args, { ("job-%04d"):format(i) })
  end
  -- One transaction, HSET/RPUSH carrying 1000 messages each (3 chunks for 2496 plain
  -- messages on the main queue, 1 each for the two other lists), and one script call for
  -- the dedupe item, whose own HSET and RPUSH Redis counts too: 5 + 1 each.
  local stats = cli("INFO", "commandstats")
  t.match(stats, "cmdstat_multi:calls=1,")
  t.match(stats, "cmdstat_exec:calls=1,")
  t.match(stats, "cmdstat_evalsha:calls=1,")
  t.match(stats, "cmdstat_hset:calls=6,")
  t.match(stats, "cmdstat_rpush:calls=6,")
  -- An empty batch is fine and sends nothing.
  local none, zero = b:enqueue_many {}
  t.same(none, {})
  t.eq(zero, 0)
  b:close()
end)

t.case("duplicate suppression: a job's message waiting or held is never doubled", function()
  cli("FLUSHALL")
  local b = open()
  local job = "6f1d2c3b-4a59-4687-9a0b-1c2d3e4f5a6b"
  local want = expected_dedupe_id(Q, job)
  local rid, mid, status = b:enqueue(nil, "run_evolution_job", { job }, { dedupe = true })
  t.eq(status, "enqueued")
  t.eq(rid, want, "the redis id is derived from the queue and the job")
  t.match(mid, UUID4, "message_id stays a fresh uuid4")
  t.eq(broker.dedupe_id(Q, job), want)
  local payload = cli("HGET", "loreley:loreley.evolution.msgs", rid)
  t.ok(broker.validate_message(payload, Q, rid))
  t.same({ b:is_waiting(nil, job) }, { true, "queued" })

  -- Re-dispatch while waiting: nothing new, and the caller learns the waiting message.
  local rid2, mid2, status2 = b:enqueue(nil, "run_evolution_job", { job }, { dedupe = true })
  t.eq(status2, "duplicate")
  t.eq(rid2, rid)
  t.eq(mid2, mid)
  t.eq(b:queue_length(), 1)
  t.eq(cli("HGET", "loreley:loreley.evolution.msgs", rid), payload, "payload unchanged")
  -- dedupe = key works the same as dedupe = true with args[1].
  local _, _, s3 = b:enqueue(nil, "run_evolution_job", { job }, { dedupe = job })
  t.eq(s3, "duplicate")

  -- A worker takes it: held (in its acks set), still suppressed.
  local got = b:fetch(nil, 10, "worker-1")
  t.eq(#got, 1)
  t.same({ b:is_waiting(nil, job) }, { true, "held" })
  local _, _, s4 = b:enqueue(nil, "run_evolution_job", { job }, { dedupe = true })
  t.eq(s4, "duplicate")
  t.eq(b:queue_length(), 0)

  -- Acked (done): a new dispatch is a new message (same redis id, new message id).
  t.eq(b:ack(nil, rid, "worker-1"), true)
  t.eq(b:is_waiting(nil, job), false)
  local rid5, mid5, s5 = b:enqueue(nil, "run_evolution_job", { job }, { dedupe = true })
  t.eq(s5, "enqueued")
  t.eq(rid5, rid)
  t.ok(mid5 ~= mid)
  -- Dead-lettered (nack): no longer waiting either.
  b:fetch(nil, 1, "worker-1")
  t.eq(b:nack(nil, rid, "worker-1"), true)
  t.eq(b:is_waiting(nil, job), false)
  t.eq(select(3, b:enqueue(nil, "run_evolution_job", { job }, { dedupe = true })), "enqueued")

  -- Delayed and immediate dispatches of one job suppress each other.
  local other = "b2c3d4e5-f6a7-4b8c-9d0e-1f2a3b4c5d6e"
  t.eq(select(3, b:enqueue(nil, "run_evolution_job", { other }, { dedupe = true, delay_ms = 60000 })), "enqueued")
  t.same({ b:is_waiting(nil, other) }, { true, "delayed" })
  t.eq(select(3, b:enqueue(nil, "run_evolution_job", { other }, { dedupe = true })), "duplicate")
  t.eq(tonumber(cli("LLEN", "loreley:loreley.evolution.DQ")), 1)
  -- Other jobs and other queues are independent.
  t.eq(b:is_waiting(nil, "never-sent"), false)
  t.eq(select(3, b:enqueue("other.queue", "run_evolution_job", { job }, { dedupe = true })), "enqueued")
  -- In a batch, a job twice: the second is the duplicate.
  local res = b:enqueue_many {
    { actor = "run_evolution_job", args = { "batch-job" }, opts = { dedupe = true } },
    { actor = "run_evolution_job", args = { "batch-job" }, opts = { dedupe = true } },
  }
  t.eq(res[1].status, "enqueued")
  t.eq(res[2].status, "duplicate")
  t.eq(res[2].message_id, res[1].message_id)
  b:close()
end)

t.case("duplicate suppression is atomic across concurrent dispatchers", function()
  cli("FLUSHALL")
  local script = t.write(dir .. "/racer.lua", [[
local broker = require "loreley.broker"
local b = assert(broker.connect(os.getenv("BROKER_URL")))
local counts = { enqueued = 0, duplicate = 0 }
for i = 1, 300 do
  local job = "race-" .. (i % 10)
  local rid, mid, status = assert(b:enqueue(nil, "run_evolution_job", { job }, { dedupe = true }))
  counts[status] = counts[status] + 1
end
io.stdout:write(("enqueued=%d duplicate=%d\n"):format(counts.enqueued, counts.duplicate))
]])
  local pids, outs = {}, {}
  for i = 1, 3 do
    outs[i] = dir .. "/racer" .. i .. ".out"
    pids[i] = assert(sys.spawn({ t.host_binary, "--once", script },
      { env = { BROKER_URL = redis.url }, stdout = outs[i], stderr = outs[i] }))
  end
  local enqueued = 0
  for i = 1, 3 do
    local st = assert(sys.wait(pids[i], 60))
    t.eq(st.code, 0, t.read(outs[i]))
    local e, d = t.read(outs[i]):match("enqueued=(%d+) duplicate=(%d+)")
    t.eq(tonumber(e) + tonumber(d), 300)
    enqueued = enqueued + tonumber(e)
  end
  t.eq(enqueued, 10, "exactly one message per job over 900 racing dispatches")
  t.eq(tonumber(cli("LLEN", "loreley:loreley.evolution")), 10)
  t.eq(tonumber(cli("HLEN", "loreley:loreley.evolution.msgs")), 10)
end)

t.case("the worker side: fetch, ack, nack, requeue, heartbeat as Dramatiq does (§3, §4)", function()
  cli("FLUSHALL")
  local b = open()
  local ids = {}
  for i = 1, 4 do ids[i] = assert(b:enqueue(nil, "run_evolution_job", { "j" .. i })) end
  local before = now_ms()
  local got = b:fetch(nil, 3, "c-1")
  t.eq(#got, 3)
  for i = 1, 3 do
    t.eq(got[i].redis_message_id, ids[i], "FIFO")
    t.eq(got[i].error, nil)
    t.same(got[i].message.args, { "j" .. i })
    t.eq(got[i].message.options.redis_message_id, ids[i])
    t.eq(got[i].payload, cli("HGET", "loreley:loreley.evolution.msgs", ids[i]))
  end
  local acks = "loreley:__acks__.c-1.loreley.evolution"
  local held = lines(cli("SMEMBERS", acks))
  table.sort(held)
  local want = { ids[1], ids[2], ids[3] }
  table.sort(want)
  t.same(held, want)
  t.ok(tonumber(cli("ZSCORE", "loreley:__heartbeats__", "c-1")) >= before, "heartbeat")
  t.eq(b:queue_length(), 1)
  -- ack: SREM + HDEL; a second ack (or another consumer's) is a no-op.
  t.eq(b:ack(nil, ids[1], "c-1"), true)
  t.eq(b:ack(nil, ids[1], "c-1"), false)
  t.eq(b:ack(nil, ids[2], "c-2"), false)
  t.eq(cli("HEXISTS", "loreley:loreley.evolution.msgs", ids[1]), "0")
  -- nack: the stored bytes move to the dead-letter queue <q>.XQ.
  local stored = cli("HGET", "loreley:loreley.evolution.msgs", ids[2])
  t.eq(b:nack(nil, ids[2], "c-1"), true)
  t.ok(tonumber(cli("ZSCORE", "loreley:loreley.evolution.XQ", ids[2])) >= before)
  t.eq(cli("HGET", "loreley:loreley.evolution.XQ.msgs", ids[2]), stored)
  t.eq(cli("HEXISTS", "loreley:loreley.evolution.msgs", ids[2]), "0")
  -- requeue: the consumer's unacked ids go back at the end of the queue.
  t.eq(b:requeue(nil, "c-1"), 1)
  t.same(lines(cli("LRANGE", "loreley:loreley.evolution", 0, -1)), { ids[4], ids[3] })
  t.eq(cli("EXISTS", acks), "0")
  local two = b:fetch(nil, 5, "c-1")
  t.eq(#two, 2)
  t.eq(b:requeue(nil, "c-1", { ids[3] }), 1, "only the listed id")
  t.same(lines(cli("SMEMBERS", acks)), { ids[4] })
  -- A delayed message is fetched from <q>.DQ and dead-letters to <q>.XQ (no .DQ.XQ).
  local d = assert(b:enqueue(nil, "run_evolution_job", { "late" }, { delay_ms = 1000 }))
  local dq = b:fetch(Q .. ".DQ", 1000, "c-1")
  t.eq(#dq, 1)
  t.eq(dq[1].error, nil)
  t.eq(dq[1].message.queue_name, Q .. ".DQ")
  t.eq(type(dq[1].message.options.eta), "number")
  t.eq(b:nack(Q .. ".DQ", d, "c-1"), true)
  t.ok(cli("ZSCORE", "loreley:loreley.evolution.XQ", d) ~= "")
  t.eq(cli("EXISTS", "loreley:loreley.evolution.DQ.XQ"), "0")
  -- An id without a payload, and a payload a worker would choke on, are reported.
  cli("RPUSH", "loreley:loreley.evolution", "ghost")
  cli("HSET", "loreley:loreley.evolution.msgs", "bad", '{"queue_name":"loreley.evolution","priority":1}')
  cli("RPUSH", "loreley:loreley.evolution", "bad")
  local odd = b:fetch(nil, 10, "c-3")
  t.eq(#odd, 3)
  t.eq(odd[1].redis_message_id, ids[3])
  t.eq(odd[2].redis_message_id, "ghost")
  t.match(odd[2].error, "no payload")
  t.match(odd[3].error, "unexpected top%-level key 'priority'")
  t.eq(b:heartbeat("c-3"), true)
  t.eq(b:fetch(nil, 5, "c-3")[1], nil, "empty queue: empty array")
  b:close()
end)

t.case("validation rejects every §7 mistake an enqueuer can make", function()
  local rid = "669ab6da-1737-4c29-b9ec-3351f4bfc0d1"
  local good = assert(broker.build_message {
    queue = Q, actor = "run_evolution_job", args = { "ref-5f710385-1" },
    redis_message_id = rid, message_id = "1338987a-0391-431c-87a5-337a0217895a",
    timestamp_ms = 1795980323521 })
  -- The spec's §2 example, byte for byte.
  t.eq(good, '{"queue_name":"loreley.evolution","actor_name":"run_evolution_job","args":["ref-5f710385-1"],"kwargs":{},"options":{"redis_message_id":"669ab6da-1737-4c29-b9ec-3351f4bfc0d1"},"message_id":"1338987a-0391-431c-87a5-337a0217895a","message_timestamp":1795980323521}')
  t.ok(broker.validate_message(good, Q, rid))
  local function sub(a, b) return (good:gsub(a:gsub("%p", "%%%0"), (b:gsub("%%", "%%%%")))) end
  local rows = {
    { "payload not UTF-8", sub('"args":["ref', '"args":["\255ref'), "not valid UTF-8" },
    { "payload not JSON", good:sub(1, -2), "not valid JSON" },
    { "extra top-level key", sub('"kwargs":{}', '"kwargs":{},"priority":0'), "unexpected top-level key 'priority'" },
    { "queue_name missing", sub('"queue_name":"loreley.evolution",', ""), "missing key 'queue_name'" },
    { "actor_name missing", sub('"actor_name":"run_evolution_job",', ""), "missing key 'actor_name'" },
    { "args missing", sub('"args":["ref-5f710385-1"],', ""), "missing key 'args'" },
    { "kwargs missing", sub('"kwargs":{},', ""), "missing key 'kwargs'" },
    { "options missing", sub('"options":{"redis_message_id":"' .. rid .. '"},', ""), "missing key 'options'" },
    { "redis_message_id missing", sub('{"redis_message_id":"' .. rid .. '"}', "{}"), "missing options.redis_message_id" },
    { "redis_message_id not the pushed id", sub(rid .. '"}', '5b0f3c1e-0a4f-4d3c-9c55-0f1e2d3c4b5a"}'), "differs from the pushed id" },
    { "queue_name not the list", sub('"loreley.evolution"', '"loreley.other"'), "differs from the queue" },
    { "args not an array", sub('["ref-5f710385-1"]', '"abc"'), "args must be an array" },
    { "timestamp in seconds", sub("1795980323521", "1795980323"), "(seconds?)" },
    { "eta not numeric", sub(rid .. '"}', rid .. '","eta":"soon"}'), "eta must be an integer" },
    { "eta null", sub(rid .. '"}', rid .. '","eta":null}'), "got null" },
    { "message_id missing", sub(',"message_id":"1338987a-0391-431c-87a5-337a0217895a"', ""), "missing key 'message_id'" },
    { "message_timestamp missing", sub(',"message_timestamp":1795980323521', ""), "missing key 'message_timestamp'" },
    { "raw control character", sub("ref-", "ref\1"), "raw control character" },
  }
  for _, row in ipairs(rows) do
    local ok, err = broker.validate_message(row[2], Q, rid)
    t.eq(ok, nil, row[1])
    t.ok(err and err:find(row[3], 1, true), ("%s: got %s"):format(row[1], tostring(err)))
  end
  -- build_message validates too: a queue_name that is not a queue fails.
  local json, err = broker.build_message { queue = Q, actor = "a", args = { 0 / 0 } }
  t.eq(json, nil)
  t.match(err, "has no JSON form")
  t.raises(function() broker.build_message { queue = Q, actor = "a", args = {}, message_id = "x" } end,
    "message_id must be a UUID")
end)

t.case("connection forms: unix:// socket with a database, URL errors", function()
  local sock_dir = dir .. "/unix"
  assert(sys.run { "mkdir", "-p", sock_dir })
  local sock = sock_dir .. "/r.sock"
  local r = assert(sys.run { "redis-server", "--port", "0", "--unixsocket", sock,
    "--daemonize", "yes", "--dir", sock_dir, "--save", "", "--appendonly", "no",
    "--pidfile", sock_dir .. "/r.pid", "--logfile", sock_dir .. "/r.log" })
  t.eq(r.code, 0, r.stderr)
  t.ok(t.wait_for(10, function() return sys.exists(sock) end), "socket appears")
  local function ucli(...)
    local argv = { "redis-cli", "-s", sock }
    for _, a in ipairs { ... } do argv[#argv + 1] = tostring(a) end
    return (assert(sys.run(argv)).stdout:gsub("\n$", ""))
  end
  t.ok(t.wait_for(10, function() return ucli("PING") == "PONG" end))
  local b = assert(broker.connect("unix://" .. sock .. "?db=2", { namespace = "ns1" }))
  t.eq(b:info().url, "unix://" .. sock .. "?db=2")
  local rid = assert(b:enqueue("jobs", "act", { 1 }))
  t.eq(ucli("-n", 2, "LRANGE", "ns1:jobs", 0, -1), rid, "written to database 2")
  t.eq(ucli("-n", 0, "DBSIZE"), "0")
  b:close()
  ucli("SHUTDOWN", "NOSAVE")

  local bad, msg, code = broker.connect("rediss://:secret@127.0.0.1:6379/0")
  t.eq(bad, nil)
  t.eq(code, "config")
  t.match(msg, "TLS is not supported by this build")
  t.no_match(msg, "secret")
  bad, msg, code = broker.connect("redis://127.0.0.1:6379/x")
  t.eq(code, "config")
  t.match(msg, "not a database number")
  local s = assert(settings.load { env = { TASKS_REDIS_URL = "rediss://h/0" }, dotenv = false })
  bad, msg, code = broker.from_settings(s)
  t.eq(code, "config")
  t.match(msg, "^TASKS_REDIS_URL: TLS is not supported by this build")
  local u = assert(broker.parse_url("redis://alice:pw@[::1]:7001/3?socket_timeout=0.5"))
  t.same(u, { scheme = "redis", host = "::1", port = 7001, db = 3, has_username = true,
    has_password = true, display = "redis://[::1]:7001/3", timeout = 0.5 })
end)

t.case("from_settings: host/port/db/password parts, namespace and queue", function()
  cli("FLUSHALL")
  local s = assert(settings.load { dotenv = false, env = {
    TASKS_REDIS_HOST = "127.0.0.1", TASKS_REDIS_PORT = tostring(redis.port),
    TASKS_REDIS_DB = "3", TASKS_REDIS_NAMESPACE = "loreley.exp1",
    TASKS_QUEUE_NAME = "loreley.evolution.exp1" } })
  local b = assert(broker.from_settings(s, { timeout = 2 }))
  local info = b:info()
  t.eq(info.url, ("redis://127.0.0.1:%d/3"):format(redis.port))
  t.eq(info.namespace, "loreley.exp1")
  t.eq(info.queue, "loreley.evolution.exp1")
  t.eq(info.timeout, 2)
  local rid = assert(b:enqueue(nil, "run_evolution_job", { "x" }))
  t.eq(cli("-n", 3, "LRANGE", "loreley.exp1:loreley.evolution.exp1", 0, -1), rid)
  local payload = cli("-n", 3, "HGET", "loreley.exp1:loreley.evolution.exp1.msgs", rid)
  t.eq(cjson.decode(payload).queue_name, "loreley.evolution.exp1")
  b:close()
end)

t.finish()
