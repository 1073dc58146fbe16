-- ctest: labels=pg;fault timeout=240
-- loreley.db against a real PostgreSQL 15 (one server for the file): URLs and
-- credentials, typed round trips, NULL, transactions, the statement cache, advisory
-- locks, and the server restarted or killed in the middle of the test.
local t = require "support.t"
local db = require "loreley.db"
local localstack = require "loreley.localstack"
local settings = require "loreley.settings"
local host = require "loreley.host"

local dir = t.tmpdir()
local pg = assert(localstack.postgres { dir = dir .. "/pg" })
local url = pg.url:gsub("^postgresql://", "postgresql+psycopg://")
local conn = assert(db.connect(url))

local function one(sql, ...)
  local rows, err, code = conn:query(sql, ...)
  t.ok(rows, ("query failed: %s [%s]"):format(tostring(err), tostring(code)))
  return rows[1]
end

t.case("URLs: schemes, DB_* settings, encoded credentials, no password in errors", function()
  for _, u in ipairs { pg.url, url, (pg.url:gsub("^postgresql", "postgres")),
                       (pg.url:gsub("^postgresql", "postgresql+psycopg2")) } do
    local c = assert(db.connect(u))
    t.eq(c:query("SELECT current_database() AS d")[1].d, "loreley")
    c:close()
  end
  local secret = "p@ss:w/rd %+é#?"
  assert(conn:exec(("CREATE ROLE odd LOGIN PASSWORD '%s'"):format(secret:gsub("'", "''"))))
  local s = assert(settings.load { dotenv = false, env = {
    DB_HOST = "127.0.0.1", DB_PORT = tostring(pg.port), DB_USER = "odd", DB_PASSWORD = secret,
    DB_NAME = "loreley" } })
  local built = db.settings_url(s)
  t.eq(built, ("postgresql+psycopg://odd:p%%40ss%%3Aw%%2Frd%%20%%25%%2B%%C3%%A9%%23%%3F@127.0.0.1:%d/loreley")
    :format(pg.port))
  local parsed = assert(db.parse_url(built))
  t.eq(parsed.password, secret)
  t.eq(parsed.user, "odd")
  local c = assert(db.connect(built))
  t.eq(c:query("SELECT current_user AS u")[1].u, "odd")
  t.no_match(tostring(c), "p@ss", "tostring shows no password")
  c:close()
  -- DATABASE_URL wins over DB_*
  local s2 = assert(settings.load { dotenv = false, env = { DATABASE_URL = url,
    DB_PASSWORD = "ignored" } })
  t.eq(db.settings_url(s2), url)
  -- a wrong password: the error names the user, never the password
  local wrong = ("postgresql://odd:Sup3rS3cretWrong@127.0.0.1:%d/loreley"):format(pg.port)
  local bad, err, code = db.connect(wrong)
  t.eq(bad, nil)
  t.match(err, "password authentication failed")
  t.no_match(err, "Sup3rS3cret")
  t.eq(code, "08006")
  -- malformed URLs: clear errors without the secret
  local _, e1 = db.connect("mysql://u:Sup3rS3cret@h/d")
  t.match(e1, "unsupported database URL scheme 'mysql'")
  t.no_match(e1, "Sup3rS3cret")
  local _, e2 = db.connect("postgresql://u:Sup3r%zzS3cret@h/d")
  t.match(e2, "malformed %%%-escape in the password")
  t.no_match(e2, "Sup3r")
  local _, e3 = db.connect("postgresql://u:Sup3rS3cret@h:99999/d")
  t.match(e3, "port must be between 1 and 65535")
  t.no_match(e3, "Sup3rS3cret")
  local p = assert(db.parse_url("postgresql+psycopg://u@[::1]:6000/my%20db?sslmode=disable&application_name=x"))
  t.eq(p.host, "::1")
  t.eq(p.port, "6000")
  t.eq(p.dbname, "my db")
  t.eq(p.params.sslmode, "disable")
  t.eq(p.password, nil)
  -- as SQLAlchemy reads it: an unencoded '/', '#', '?' or ':' may sit in the password
  local raw = assert(db.parse_url("postgresql+psycopg://u:a/b#c?d:e@h:1/db"))
  t.eq(raw.user, "u"); t.eq(raw.password, "a/b#c?d:e"); t.eq(raw.host, "h"); t.eq(raw.port, "1")
  t.eq(raw.dbname, "db")
  local nocred = assert(db.parse_url("postgres://h:5433/db"))
  t.eq(nocred.user, nil); t.eq(nocred.host, "h"); t.eq(nocred.port, "5433")
  t.raises(function() db.connect(url, { connect_timout = 3 }) end, "unknown option 'connect_timout'")
end)

t.case("types: scalars from the server", function()
  local r = one([[SELECT 1::int2 AS i2, '-2147483648'::int4 AS i4, 9007199254740992::int8 AS i8,
    9223372036854775807::int8 AS big, 2.5::float4 AS f4, 0.1::float8 AS f8,
    'NaN'::float8 AS nan, 'Infinity'::float8 AS inf, '-Infinity'::float8 AS ninf,
    12.345::numeric AS num, true AS yes, false AS no, 'héllo'::text AS txt,
    'x'::varchar(3) AS vc, 'ab'::char(3) AS ch, '6ba7b810-9dad-11d1-80b4-00c04fd430c8'::uuid AS id,
    'PENDING'::text AS enum_text, NULL::int AS nothing, ''::text AS empty]])
  t.eq(r.i2, 1); t.eq(r.i4, -2147483648); t.eq(r.i8, 2 ^ 53)
  t.eq(r.big, "9223372036854775807", "int8 beyond 2^53 stays exact as text")
  t.eq(r.f4, 2.5); t.eq(r.f8, 0.1)
  t.ok(r.nan ~= r.nan, "NaN"); t.eq(r.inf, math.huge); t.eq(r.ninf, -math.huge)
  t.eq(r.num, 12.345)
  t.eq(r.yes, true); t.eq(r.no, false)
  t.eq(r.txt, "héllo"); t.eq(r.vc, "x"); t.eq(r.ch, "ab ")
  t.eq(r.id, "6ba7b810-9dad-11d1-80b4-00c04fd430c8")
  t.eq(r.nothing, db.null, "SQL NULL is db.null, not nil")
  t.ok(r.nothing ~= nil)
  t.eq(r.empty, "")
end)

t.case("types: parameters round trip", function()
  local blob = {}
  for i = 0, 255 do blob[#blob + 1] = string.char(i) end
  blob = table.concat(blob)
  local r = one([[SELECT $1::int AS i, $2::float8 AS f, $3::float8 AS tiny, $4::bool AS b,
    $5::text AS s, $6::bytea AS blob, $7::float8 AS nan, $8::float8 AS ninf, $9::int8 AS big,
    $10::text AS null_param, $11::text AS nil_param, $12::numeric AS num]],
    42, 1 / 3, 5e-324, false, "it's \"quoted\" \\ ;", blob, 0 / 0, -math.huge, "9223372036854775807",
    db.null, nil, 0.1)
  t.eq(r.i, 42); t.eq(r.f, 1 / 3); t.eq(r.tiny, 5e-324); t.eq(r.b, false)
  t.eq(r.s, "it's \"quoted\" \\ ;")
  t.eq(r.blob, blob, "bytea: all 256 byte values")
  t.ok(r.nan ~= r.nan); t.eq(r.ninf, -math.huge)
  t.eq(r.big, "9223372036854775807")
  t.eq(r.null_param, db.null); t.eq(r.nil_param, db.null)
  t.eq(r.num, 0.1)
end)

t.case("types: timestamps are epoch seconds (microseconds)", function()
  local epoch = 1764412908.123456
  local r = one([[SELECT $1::timestamptz AS t, $1::timestamptz = '2025-11-29 10:41:48.123456+00' AS same,
    '2025-11-29T12:41:48.5+02'::timestamptz AS offset, 'infinity'::timestamptz AS inf,
    '2000-01-02'::date AS d, '1970-01-01 00:00:01'::timestamp AS ts, '0044-03-15 BC'::date AS bc]],
    epoch)
  t.near(r.t, epoch, 1e-6)
  t.eq(r.same, true, "the parameter is read as UTC")
  t.eq(r.offset, 1764412908.5)
  t.eq(r.inf, math.huge)
  t.eq(r.d, 946771200)
  t.eq(r.ts, 1)
  t.ok(r.bc < -62135596800, "BC dates are before year 1")
  t.eq(db.iso(epoch), "2025-11-29T10:41:48.123456+00:00")
  t.eq(db.iso(1764412908), "2025-11-29T10:41:48+00:00", "no fraction when it is zero")
  t.eq(db.iso(0.0000005), "1970-01-01T00:00:00+00:00", "half a microsecond rounds to even")
  t.eq(db.iso(0.0000015), "1970-01-01T00:00:00.000002+00:00")
  t.eq(db.parse_time("2025-11-29T10:41:48.123456+00:00"), 1764412908.123456)
  t.eq(db.parse_time("2025-11-29T10:41:48Z"), 1764412908)
  t.eq(db.parse_time("yesterday"), nil)
  local now = one("SELECT now() AS n").n
  t.ok(math.abs(now - host.time()) < 5, "now() is the wall clock")
end)

t.case("types: json and jsonb", function()
  local r = one([[SELECT '{"a":[1,2.5,null,"x"],"b":{"c":true},"n":null,"e":[]}'::jsonb AS j,
    '[1,{"k":"v"}]'::json AS arr, '"text"'::jsonb AS str, 'null'::jsonb AS jnull]])
  t.eq(r.j.a[1], 1); t.eq(r.j.a[2], 2.5); t.eq(r.j.a[3], db.null); t.eq(r.j.a[4], "x")
  t.eq(r.j.b.c, true); t.eq(r.j.n, db.null); t.eq(next(r.j.e), nil)
  t.eq(r.arr[2].k, "v"); t.eq(r.str, "text"); t.eq(r.jnull, db.null)
  -- tables become JSON; db.json_array keeps an empty list a list; strings are JSON text
  local p = one([[SELECT $1::jsonb AS obj, $2::jsonb AS empty_list, $3::jsonb AS empty_obj,
    $4::jsonb AS raw, $5::jsonb AS num, jsonb_typeof($2::jsonb) AS t2, $1::jsonb -> 'k' AS k]],
    { k = { 1, 2, { deep = "é\n\"" } }, z = db.null }, db.json_array(), {},
    '{"raw": [1, 2]}', 0.1)
  t.eq(p.obj.k[3].deep, "é\n\""); t.eq(p.obj.z, db.null)
  t.eq(p.t2, "array"); t.eq(next(p.empty_obj), nil)
  t.eq(p.raw.raw[2], 2); t.eq(p.num, 0.1)
  t.eq(p.k[1], 1)
  t.eq(db.json_encode({ 1, 2, 3 }), "[1,2,3]")
  t.eq(db.json_encode({ x = 1.5, y = "a\"b" }):len(), #'{"x":1.5,"y":"a\\"b"}')
  t.raises(function() conn:query("SELECT $1::jsonb", { bad = 0 / 0 }) end, "cannot encode nan")
  t.raises(function() db.json_encode({ [1] = 1, x = 2 }) end, "object keys must be strings")
  local cyc = {}; cyc.self = cyc
  t.raises(function() db.json_encode(cyc) end, "cycle")
  -- the codec is loreley.json's: decoded arrays keep their mark, so [] round-trips
  local back = one("SELECT '{\"l\": [], \"o\": {}}'::jsonb AS v").v
  t.eq(db.json_encode(back.l), "[]")
  t.eq(db.json_encode(back.o), "{}")
  t.eq(getmetatable(back.l), require("loreley.json").array_mt)
end)

t.case("types: arrays", function()
  local r = one([=[SELECT ARRAY[1,2,NULL]::int[] AS ints, ARRAY[0.1, -2.5]::float8[] AS floats,
    ARRAY['a b', 'c"d', 'e\f', '', NULL, 'NULL', '{x}']::text[] AS texts,
    ARRAY[[1,2],[3,4]]::int[] AS grid, '{}'::int[] AS empty,
    ARRAY[true,false] AS bools, ARRAY['6ba7b810-9dad-11d1-80b4-00c04fd430c8']::uuid[] AS ids]=])
  t.same(r.ints, { 1, 2, db.null })
  t.same(r.floats, { 0.1, -2.5 })
  t.same(r.texts, { "a b", 'c"d', "e\\f", "", db.null, "NULL", "{x}" })
  t.same(r.grid, { { 1, 2 }, { 3, 4 } })
  t.same(r.empty, {})
  t.same(r.bools, { true, false })
  t.same(r.ids, { "6ba7b810-9dad-11d1-80b4-00c04fd430c8" })
  local texts = { "plain", "with,comma", 'quote"', "back\\slash", "{brace}", "NULL", "", "é" }
  local p = one([[SELECT $1::text[] AS texts, $2::float8[] AS floats, $3::int[] AS grid,
    $4::varchar(64)[] AS empty, $5::text[] AS nulls, array_length($1::text[], 1) AS n]],
    texts, { 1 / 3, 1e300, -0.5, math.huge }, { { 1, 2 }, { 3, 4 } }, db.json_array(),
    { "a", db.null })
  t.same(p.texts, texts)
  t.eq(p.n, #texts)
  t.same(p.floats, { 1 / 3, 1e300, -0.5, math.huge })
  t.same(p.grid, { { 1, 2 }, { 3, 4 } })
  t.same(p.empty, {})
  t.same(p.nulls, { "a", db.null })
end)

t.case("exec, script, errors and misuse", function()
  assert(conn:script([[CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL UNIQUE);
                       INSERT INTO items (name) VALUES ('a'), ('b'), ('c')]]))
  t.eq(conn:exec("UPDATE items SET name = name || '!' WHERE id <= $1", 2), 2)
  t.eq(conn:exec("DELETE FROM items WHERE name = $1", "nope"), 0)
  local rows, err, code = conn:query("INSERT INTO items (name) VALUES ($1)", "c")
  t.eq(rows, nil); t.match(err, "duplicate key"); t.eq(code, "23505")
  rows, err, code = conn:query("SELECT * FROM no_such_table")
  t.eq(rows, nil); t.match(err, "does not exist"); t.eq(code, "42P01")
  local ok, serr, scode = conn:script("SELECT 1; SELEC 2")
  t.eq(ok, nil); t.match(serr, "syntax error"); t.eq(scode, "42601")
  t.raises(function() conn:query("SELECT $1::int + $2::int", 1) end, "has 2 parameters")
  t.raises(function() conn:query("SELECT 1", 2) end, "has 0 parameters")
  t.raises(function() conn:query("SELECT $1::text", print) end, "cannot send a function")
  t.raises(function() conn:query({}) end)
  -- many parameters (the scratch space is not on the C stack)
  local terms, values = {}, {}
  for i = 1, 3000 do terms[i] = ("$%d::int"):format(i); values[i] = i end
  t.eq(one("SELECT " .. table.concat(terms, " + ") .. " AS total", unpack(values)).total, 3000 * 3001 / 2)
  -- the cache: the same SQL prepares once
  local before = conn:info().statements
  for i = 1, 5 do one("SELECT $1::int * 2 AS v", i) end
  t.eq(conn:info().statements, before + 1)
  -- a cached SELECT * survives a change of the table (re-prepared once)
  t.eq(#assert(conn:query("SELECT * FROM items ORDER BY id")), 3)
  assert(conn:exec("ALTER TABLE items ADD COLUMN extra int DEFAULT 7"))
  local again = assert(conn:query("SELECT * FROM items ORDER BY id"))
  t.eq(again[1].extra, 7)
end)

t.case("transactions: commit, rollback on error or raise, savepoints", function()
  assert(conn:exec("CREATE TABLE ledger (k text PRIMARY KEY, v int)"))
  local a, b = conn:tx(function(c)
    assert(c:exec("INSERT INTO ledger VALUES ($1, $2)", "one", 1))
    return "done", 2
  end)
  t.eq(a, "done"); t.eq(b, 2)
  local r, err = conn:tx(function(c)
    assert(c:exec("INSERT INTO ledger VALUES ($1, $2)", "two", 2))
    return nil, "changed my mind"
  end)
  t.eq(r, nil); t.eq(err, "changed my mind")
  local raised = t.raises(function()
    conn:tx(function(c)
      assert(c:exec("INSERT INTO ledger VALUES ($1, $2)", "three", 3))
      error("boom")
    end)
  end, "boom")
  t.match(raised, "boom")
  t.eq(one("SELECT count(*) AS n FROM ledger").n, 1, "only the committed row")
  t.eq(conn:info().in_transaction, false)
  -- a failed statement inside: fn returns the failure, everything rolls back
  r, err = conn:tx(function(c)
    assert(c:exec("INSERT INTO ledger VALUES ($1, $2)", "four", 4))
    return c:query("INSERT INTO ledger VALUES ($1, $2)", "one", 1)
  end)
  t.eq(r, nil); t.match(err, "duplicate key")
  t.eq(one("SELECT count(*) AS n FROM ledger").n, 1)
  -- nested: the inner failure rolls back to its savepoint only
  r = conn:tx(function(c)
    assert(c:exec("INSERT INTO ledger VALUES ($1, $2)", "outer", 5))
    local inner, ierr = c:tx(function(c2)
      assert(c2:exec("INSERT INTO ledger VALUES ($1, $2)", "inner", 6))
      return c2:query("INSERT INTO ledger VALUES ($1, $2)", "one", 1)
    end)
    t.eq(inner, nil); t.match(ierr, "duplicate key")
    return true
  end)
  t.eq(r, true)
  local keys = {}
  for _, row in ipairs(assert(conn:query("SELECT k FROM ledger ORDER BY k"))) do keys[#keys + 1] = row.k end
  t.same(keys, { "one", "outer" })
  -- a COMMIT that fails (deferred constraint) returns the failure
  assert(conn:script([[CREATE TABLE parent (id int PRIMARY KEY);
    CREATE TABLE child (pid int REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)]]))
  local cr, cerr, ccode = conn:tx(function(c)
    assert(c:exec("INSERT INTO child VALUES (1)"))
    return true
  end)
  t.eq(cr, nil); t.match(cerr, "foreign key"); t.eq(ccode, "23503")
  t.eq(one("SELECT count(*) AS n FROM child").n, 0)
end)

t.case("SQL injection through string parameters stays data", function()
  local evil = { "'; DROP TABLE ledger; --", "x' OR '1'='1", "$1", "\\'; SELECT pg_sleep(10); --",
    "Robert'); DROP TABLE items;--", "\"ledger\"" }
  for _, s in ipairs(evil) do
    assert(conn:exec("INSERT INTO ledger (k, v) VALUES ($1, 0)", s))
    t.eq(one("SELECT k FROM ledger WHERE k = $1", s).k, s)
  end
  t.eq(#assert(conn:query("SELECT k FROM ledger WHERE k = $1", "x' OR '1'='1")), 1)
  t.eq(one("SELECT to_regclass('ledger') IS NOT NULL AS present").present, true)
  t.eq(one("SELECT to_regclass('items') IS NOT NULL AS present").present, true)
end)

t.case("advisory locks: try, wait, release, leader key", function()
  local other = assert(db.connect(url))
  local key = db.lock_key("6ba7b810-9dad-11d1-80b4-00c04fd430c8")
  t.match(key, "^%-?%d+$")
  t.eq(conn:try_lock(key), true)
  t.eq(conn:holds_lock(key), true)
  t.eq(other:try_lock(key), false, "a second session cannot take it")
  t.eq(conn:unlock(key), true)
  t.eq(conn:holds_lock(key), false)
  t.eq(conn:unlock(key), false, "releasing a lock not held")
  t.eq(other:lock(key), true)
  t.eq(conn:try_lock(key), false)
  t.eq(other:unlock(key), true)
  t.eq(conn:try_lock(42), true)
  t.eq(conn:unlock(42), true)
  t.raises(function() conn:try_lock(1.5) end, "lock key must be an integer")
  t.raises(function() conn:try_lock("abc") end, "decimal 64-bit integer")
  other:close()
end)

t.case("the server restarts: an error, then the next call reconnects", function()
  local key = "123456789"
  t.eq(conn:try_lock(key), true)
  one("SELECT 1 AS x")
  assert(pg:restart())
  local rows, err, code = conn:query("SELECT 1 AS x")
  t.eq(rows, nil, "the first call after the restart fails")
  t.match(err, "connection")
  t.eq(code:sub(1, 2), "08")
  t.match(tostring(conn), "lost")
  t.eq(conn:holds_lock(key), false)
  local again = assert(conn:query("SELECT 2 AS x"), "the next call reconnects")
  t.eq(again[1].x, 2)
  t.eq(conn:info().reconnects >= 1, true)
  t.eq(conn:holds_lock(key), true, "the session lock was taken again")
  t.eq(#assert(conn:query("SELECT * FROM items")), 3, "statements are prepared again")
  assert(conn:unlock(key))
end)

t.case("the server is killed: errors with backoff while down, then recovery", function()
  assert(conn:exec("CREATE TABLE IF NOT EXISTS survive (v int)"))
  assert(conn:exec("CHECKPOINT"))   -- the test server runs with fsync and sync commit off
  -- killed in the middle of a transaction: the work is rolled back, nothing crashes
  local r, err = conn:tx(function(c)
    assert(c:exec("INSERT INTO survive VALUES (1)"))
    pg:kill()
    local ok, e = c:exec("INSERT INTO survive VALUES (2)")
    t.eq(ok, nil)
    local ok2, e2 = c:exec("INSERT INTO survive VALUES (3)")
    t.eq(ok2, nil, "no reconnect inside a transaction")
    t.match(e2, "inside a transaction")
    return nil, e
  end)
  t.eq(r, nil); t.match(err, "connection")
  t.eq(conn:info().in_transaction, false)
  local down, derr, dcode = conn:query("SELECT 1 AS x")
  t.eq(down, nil); t.eq(dcode, "08006"); t.match(derr, "cannot connect")
  local soon, serr = conn:query("SELECT 1 AS x")
  t.eq(soon, nil)
  t.match(serr, "next reconnect attempt in")
  -- a start right after SIGKILL can race the dying backends: retry until it takes
  t.ok(t.wait_for(30, function() return pg:start() end, 0.5), "server restarted")
  local back = t.wait_for(15, function() return conn:query("SELECT 1 AS x") ~= nil end, 0.1)
  t.ok(back, "reconnected after the server came back")
  t.eq(one("SELECT count(*) AS n FROM survive").n, 0, "the interrupted transaction left nothing")
  t.ok(conn:ping())
end)

t.case("close: idempotent, methods then raise", function()
  local c = assert(db.connect(url))
  c:close()
  c:close()
  t.match(tostring(c), "closed")
  t.raises(function() c:query("SELECT 1") end, "connection is closed")
  local lost = assert(db.connect(url))
  lost = nil   -- collected without close: __gc releases it
  collectgarbage()
  collectgarbage()
end)

conn:close()
pg:stop()
t.finish()
