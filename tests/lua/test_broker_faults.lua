-- ctest: labels=redis;fault timeout=120
-- loreley.broker when the world misbehaves, against real redis-servers: the server killed
-- and restarted mid-run, a wrong or missing password, nothing listening, a server that
-- stops answering, replies of an unexpected type (WRONGTYPE), a flushed script cache.
-- Failures come back as nil, message, code; the host never crashes; credentials never
-- appear in a message or a log line.
local t = require "support.t"
local broker = require "loreley.broker"
local localstack = require "loreley.localstack"
local settings = require "loreley.settings"
local host = require "loreley.host"
local sys = require "loreley.sys"

local dir = t.tmpdir()
local SECRET = "hunter2-Secret"
local redis = assert(localstack.redis { dir = dir .. "/r", password = SECRET })
local function cli(...) return assert(redis:cli(...)) end

local function url_with(password)
  return ("redis://:%s@127.0.0.1:%d/0"):format(password, redis.port)
end

t.case("server killed and restarted mid-run: errors, then recovery, no crash", function()
  cli("FLUSHALL")
  local b = assert(broker.connect(redis.url, { backoff = 0.02, backoff_max = 0.05, timeout = 2 }))
  local log, sent = {}, {}
  for i = 1, 60 do
    if i == 20 then redis:kill() end
    if i == 40 then assert(redis:start()) end
    local rid, err, code = b:enqueue(nil, "run_evolution_job", { "job-" .. i }, { dedupe = true })
    log[i] = rid and "ok" or code
    if rid then
      sent[#sent + 1] = i
    else
      t.ok(code == "connection", ("call %d: code %s (%s)"):format(i, tostring(code), err))
      t.match(err, "^redis://127%.0%.0%.1:%d+/0: ")
      t.no_match(err, SECRET)
    end
    host.sleep(0.02)
  end
  for i = 1, 19 do t.eq(log[i], "ok", "before the kill, call " .. i) end
  for i = 20, 39 do t.eq(log[i], "connection", "while down, call " .. i) end
  -- Back within a few calls (backoff <= 50 ms, 20 ms between calls), then steady.
  local first
  for i = 40, 60 do if log[i] == "ok" then first = first or i end end
  t.ok(first and first <= 44, "recovered at call " .. tostring(first))
  for i = first, 60 do t.eq(log[i], "ok", "after recovery, call " .. i) end
  -- The restarted server (no persistence) holds exactly what was sent after it came back.
  t.eq(tonumber(cli("LLEN", "loreley:loreley.evolution")), 60 - first + 1)
  local info = b:info()
  t.eq(info.connects, 2)
  t.ok(info.connection_failures >= 1)
  t.ok(info.connected)
  t.no_match(info.last_error or "", SECRET)
  b:close()
end)

t.case("a restart between two calls is invisible: the dead connection is replaced", function()
  local b = assert(broker.connect(redis.url))
  assert(b:ping())
  assert(redis:restart())
  local rid, err = b:enqueue(nil, "run_evolution_job", { "after-restart" })
  t.ok(rid, err)
  t.eq(cli("LRANGE", "loreley:loreley.evolution", 0, -1), rid)
  t.ok(b:ping() < 1)
  b:close()
end)

t.case("wrong or missing password: nil, message, 'auth'; the password is never shown", function()
  local b, err, code = broker.connect(url_with("wrong-" .. SECRET))
  t.eq(b, nil)
  t.eq(code, "auth")
  t.match(err, "authentication failed: WRONGPASS")
  t.no_match(err, SECRET)
  b, err, code = broker.connect(("redis://127.0.0.1:%d/0"):format(redis.port))
  t.eq(code, "auth")
  t.match(err, "the server requires a password: NOAUTH")
  b, err, code = broker.connect(("redis://alice:%s@127.0.0.1:%d/0"):format(SECRET, redis.port))
  t.eq(code, "auth")
  t.match(err, "WRONGPASS")
  t.no_match(err, SECRET)
  t.no_match(err, "alice")
  -- The same through the settings' parts.
  local s = assert(settings.load { dotenv = false, env = { TASKS_REDIS_HOST = "127.0.0.1",
    TASKS_REDIS_PORT = tostring(redis.port), TASKS_REDIS_PASSWORD = "nope-" .. SECRET } })
  b, err, code = broker.from_settings(s)
  t.eq(code, "auth")
  t.no_match(err, SECRET)
  s = assert(settings.load { dotenv = false, env = { TASKS_REDIS_HOST = "127.0.0.1",
    TASKS_REDIS_PORT = tostring(redis.port), TASKS_REDIS_PASSWORD = SECRET } })
  b = assert(broker.from_settings(s))
  t.no_match(tostring(b), SECRET)
  for _, v in pairs(b:info()) do t.no_match(tostring(v), SECRET) end
  t.ok(b:ping())
  b:close()
  -- A lazy broker reports the refusal at its first call, as a failure of the world.
  local lazy = assert(broker.connect(url_with("bad"), { lazy = true }))
  local rid, e2, c2 = lazy:enqueue(nil, "a", { "x" })
  t.eq(rid, nil)
  t.eq(c2, "auth")
  t.match(e2, "WRONGPASS")
  lazy:close()
end)

t.case("nothing listening: refused, then backoff between attempts", function()
  local port = assert(sys.free_port())
  local b, err, code = broker.connect(("redis://:%s@127.0.0.1:%d/0"):format(SECRET, port))
  t.eq(b, nil)
  t.eq(code, "connection")
  t.match(err, ("^redis://127%%.0%%.0%%.1:%d/0: cannot connect: Connection refused"):format(port))
  t.no_match(err, SECRET)
  local lazy = assert(broker.connect(("redis://127.0.0.1:%d/0"):format(port),
    { lazy = true, backoff = 5 }))
  t.eq(lazy:info().connected, false)
  local rid, e1, c1 = lazy:enqueue(nil, "a", { "x" })
  t.eq(rid, nil)
  t.eq(c1, "connection")
  t.match(e1, "Connection refused$")
  -- Within the backoff no new attempt is made; the last error is repeated.
  local _, e2, c2 = lazy:ping()
  t.eq(c2, "connection")
  t.match(e2, "Connection refused %(next connection attempt in %d+ ms%)")
  t.eq(lazy:info().connection_failures, 1)
  lazy:close()
  local u, e3, c3 = broker.connect("unix://" .. dir .. "/nothing.sock")
  t.eq(u, nil)
  t.eq(c3, "connection")
  t.match(e3, "No such file or directory")
end)

t.case("a server that stops answering: 'timeout', then recovery", function()
  cli("FLUSHALL")
  local b = assert(broker.connect(redis.url, { timeout = 0.2 }))
  assert(b:ping())
  cli("CLIENT", "PAUSE", "1200", "ALL")
  local t0 = host.now()
  local rid, err, code = b:enqueue(nil, "run_evolution_job", { "slow-job" }, { dedupe = true })
  local took = host.now() - t0
  t.eq(rid, nil)
  t.eq(code, "timeout")
  t.match(err, "no reply to .* within 0%.2 s; connection reset")
  t.ok(took < 0.9, ("gave up after %.3f s"):format(took))
  -- Connecting to a paused server times out in the handshake.
  local c, cerr, ccode = broker.connect(redis.url, { timeout = 0.2 })
  t.eq(c, nil)
  t.eq(ccode, "timeout")
  t.no_match(cerr, SECRET)
  -- Once it answers again the next call reconnects; a dedupe re-send is safe whatever
  -- became of the timed-out one: exactly one message.
  t.ok(t.wait_for(5, function()
    local r = b:enqueue(nil, "run_evolution_job", { "slow-job" }, { dedupe = true })
    return r ~= nil
  end, 0.1), "recovered")
  t.eq(tonumber(cli("LLEN", "loreley:loreley.evolution")), 1)
  b:close()
end)

t.case("replies of an unexpected type (WRONGTYPE): reported, nothing half-written", function()
  cli("FLUSHALL")
  local b = assert(broker.connect(redis.url))
  -- The queue's list is a string: HSET would succeed and RPUSH fail; the payload is undone.
  cli("SET", "loreley:q1", "not a list")
  local rid, err, code = b:enqueue("q1", "a", { "x" })
  t.eq(rid, nil)
  t.eq(code, "server")
  t.match(err, "RPUSH failed: WRONGTYPE")
  t.eq(cli("EXISTS", "loreley:q1.msgs"), "0", "no payload left without its id")
  -- The hash is a string: the id pushed without its payload is removed again.
  cli("SET", "loreley:q2.msgs", "not a hash")
  rid, err, code = b:enqueue("q2", "a", { "x" })
  t.eq(code, "server")
  t.match(err, "HSET failed: WRONGTYPE")
  t.eq(cli("EXISTS", "loreley:q2"), "0", "no id left without its payload")
  -- The dedupe script undoes its HSET when the RPUSH fails, and fails before writing
  -- when a hash has the wrong type.
  rid, err, code = b:enqueue("q1", "a", { "x" }, { dedupe = true })
  t.eq(code, "server")
  t.match(err, "enqueue %(dedupe%) failed: WRONGTYPE")
  rid, err, code = b:enqueue("q2", "a", { "x" }, { dedupe = true })
  t.eq(code, "server")
  t.match(err, "WRONGTYPE")
  t.eq(cli("DBSIZE"), "2", "only the two strings set above")
  -- Reads and the worker side.
  local function check(what, ok, e, c)
    t.eq(ok, nil, what)
    t.eq(c, "server", what)
    t.match(e, "WRONGTYPE", what)
  end
  check("queue_length", b:queue_length("q1"))
  check("stats", b:stats("q2"))
  check("is_waiting", b:is_waiting("q1", "x"))
  check("fetch", b:fetch("q1", 1, "c"))
  cli("SET", "loreley:__heartbeats__", "x")
  check("heartbeat", b:heartbeat("c"))
  cli("DEL", "loreley:__heartbeats__")
  -- A batch: the bad queue's items fail, the others are written.
  local res, n = b:enqueue_many {
    { queue = "q1", actor = "a", args = { 1 } },
    { queue = "good", actor = "a", args = { 2 } },
    { queue = "q2", actor = "a", args = { 3 } },
    { queue = "q1", actor = "a", args = { "k4" }, opts = { dedupe = true } },
  }
  t.eq(n, 1)
  t.eq(res[1].status, "failed")
  t.match(res[1].error, "RPUSH failed: WRONGTYPE")
  t.eq(res[2].status, "enqueued")
  t.eq(res[3].status, "failed")
  t.match(res[3].error, "HSET failed: WRONGTYPE")
  t.eq(res[4].status, "failed")
  t.eq(cli("EXISTS", "loreley:q1.msgs"), "0")
  t.eq(cli("EXISTS", "loreley:q2"), "0")
  t.eq(cli("LRANGE", "loreley:good", 0, -1), res[2].redis_message_id)
  -- The connection is still in step and usable.
  t.ok(b:ping())
  t.ok(b:enqueue("good", "a", { 5 }))
  b:close()
end)

t.case("a flushed script cache is reloaded (NOSCRIPT)", function()
  cli("FLUSHALL")
  local b = assert(broker.connect(redis.url))
  cli("SCRIPT", "FLUSH")
  local _, _, status = assert(b:enqueue(nil, "a", { "j1" }, { dedupe = true }))
  t.eq(status, "enqueued")
  cli("SCRIPT", "FLUSH")
  local res = b:enqueue_many { { actor = "a", args = { "j2" }, opts = { dedupe = true } },
    { actor = "a", args = { "j1" }, opts = { dedupe = true } } }
  t.eq(res[1].status, "enqueued")
  t.eq(res[2].status, "duplicate")
  cli("SCRIPT", "FLUSH")
  t.eq(#b:fetch(nil, 10, "c"), 2)
  cli("SCRIPT", "FLUSH")
  t.eq(b:requeue(nil, "c"), 2)
  b:close()
end)

t.case("a peer that is not Redis: protocol errors, no crash", function()
  if not sys.exists("/usr/bin/python3") then
    io.stderr:write("  (python3 not found: non-Redis peer case skipped)\n")
    return
  end
  -- A listener that answers every request with a fixed reply: first a valid RESP
  -- integer (a reply of the wrong type for PING), then text that is not RESP at all.
  local function peer(reply)
    local port = assert(sys.free_port())
    local ready = dir .. "/peer-" .. port
    local pid = assert(sys.spawn({ "/usr/bin/python3", "-c", ([[
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", %d)); s.listen(8); open(%q, "w").close()
s.settimeout(20)
while True:
    c, _ = s.accept()
    c.settimeout(2)
    try:
        while c.recv(65536):
            c.sendall(%s)
    except Exception:
        pass
    c.close()
]]):format(port, ready, reply) }))
    t.ok(t.wait_for(10, function() return sys.exists(ready) end), "peer listening")
    return port, pid
  end
  local port, pid = peer([[b":7\r\n" * 16]])
  local b, err, code = broker.connect(("redis://127.0.0.1:%d/0"):format(port), { timeout = 1 })
  t.eq(b, nil)
  t.eq(code, "protocol")
  t.match(err, "unexpected reply to PING: an integer instead of a status")
  sys.kill(pid, "KILL")
  sys.wait(pid, 5)
  port, pid = peer([[b"HTTP/1.0 400 Bad Request\r\n\r\n"]])
  b, err, code = broker.connect(("redis://127.0.0.1:%d/0"):format(port), { timeout = 1 })
  t.eq(b, nil)
  t.eq(code, "protocol")
  t.match(err, "protocol error")
  sys.kill(pid, "KILL")
  sys.wait(pid, 5)
end)

t.case("credentials never reach the log", function()
  local script = t.write(dir .. "/logging.lua", [[
local broker = require "loreley.broker"
local localstack = require "loreley.localstack"
local host = require "loreley.host"
local r = assert(localstack.redis { dir = os.getenv("RDIR"), password = os.getenv("PW") })
local b = assert(broker.connect(r.url, { backoff = 0.01 }))
assert(b:enqueue(nil, "a", { "x" }))
r:kill()
host.sleep(0.1)
host.warn("enqueue while down: %s", select(2, b:enqueue(nil, "a", { "x" })))
assert(r:start())
host.sleep(0.1)
assert(b:enqueue(nil, "a", { "x" }))
local wrong = ("redis://:x%s@127.0.0.1:%d/0"):format(os.getenv("PW"), r.port)
host.warn("wrong password: %s", select(2, broker.connect(wrong)))
host.warn("%s %s", tostring(b), b:info().last_error)
r:stop()
]])
  local res = t.run_host({ "--log-level", "DEBUG", "--once", script },
    { env = { RDIR = dir .. "/r2", PW = SECRET } })
  local out = res.stdout .. res.stderr
  t.eq(res.code, 0, out)
  t.match(out, "connected to redis://127%.0%.0%.1:%d+/0")
  t.match(out, "reconnected to redis://127%.0%.0%.1:%d+/0")
  t.match(out, "enqueue while down: redis://127%.0%.0%.1:%d+/0: ")
  t.match(out, "wrong password: redis://127%.0%.0%.1:%d+/0: authentication failed")
  t.no_match(out, SECRET)
end)

t.finish()
