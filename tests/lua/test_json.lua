-- ctest: labels=unit
-- loreley.json round-trips payloads without loss: full double precision, [] vs {},
-- null, UTF-8 and ASCII escapes.
local t = require "support.t"
local json = require "loreley.json"

t.case("numbers: shortest round-trip text, integers as integers", function()
  t.eq(json.encode(1 / 3), "0.3333333333333333")
  t.eq(json.encode(0.1), "0.1")
  t.eq(json.encode(1e-6), "1e-06")
  t.eq(json.encode(-1000000), "-1000000")
  t.eq(json.encode(2 ^ 53), "9007199254740992")
  t.eq(json.encode(1e300), "1e+300")
  for _, v in ipairs { 1 / 3, 0.1, 1e-300, 123456.789, -2.5e-8, 5e-324, 1.7976931348623157e308 } do
    t.eq(json.decode(json.encode(v)), v, "round trip " .. tostring(v))
  end
end)

t.case("arrays stay arrays, objects stay objects", function()
  local v = assert(json.decode('{"a":[],"b":{},"c":[1,null,3],"d":[{"x":[]}]}'))
  t.ok(json.is_array(v.a))
  t.ok(not json.is_array(v.b))
  t.eq(v.c[2], json.null)
  t.eq(#v.c, 3)
  local out = json.encode(v, { sort_keys = true })
  t.eq(out, '{"a":[],"b":{},"c":[1,null,3],"d":[{"x":[]}]}')
  t.eq(json.encode(json.array()), "[]")
  t.eq(json.encode({}), "{}")
  t.eq(json.encode({ 1, 2, 3 }), "[1,2,3]")
end)

t.case("sparse and mixed tables are objects; non-string keys raise", function()
  t.raises(function() json.encode({ [1] = 1, [3] = 3 }) end, "object keys must be strings")
  t.raises(function() json.encode({ 1, x = 2 }) end, "object keys must be strings")
  t.raises(function() json.encode({ f = print }) end, "cannot encode a function")
  local cyc = {}
  cyc.self = cyc
  t.raises(function() json.encode(cyc) end, "cycle")
end)

t.case("strings: escapes, UTF-8, ascii mode with surrogate pairs", function()
  t.eq(json.encode('a"b\\c\n\t\1'), '"a\\"b\\\\c\\n\\t\\u0001"')
  t.eq(json.encode("ñ日😀"), '"ñ日😀"')
  t.eq(json.encode("ñ日😀", { ascii = true }), '"\\u00f1\\u65e5\\ud83d\\ude00"')
  t.eq(json.decode('"\\u00f1\\u65e5\\ud83d\\ude00"'), "ñ日😀")
  t.raises(function() json.encode("\255") end, "not valid UTF-8")
  t.raises(function() json.encode("\237\160\128") end, "not valid UTF-8")   -- encoded surrogate
end)

t.case("sort_keys and non-finite modes", function()
  t.eq(json.encode({ b = 1, a = { d = 1, c = 2 } }, { sort_keys = true }), '{"a":{"c":2,"d":1},"b":1}')
  t.raises(function() json.encode(-math.huge) end, "cannot encode -inf")
  t.eq(json.encode(-math.huge, { nonfinite = "null" }), "null")
  t.eq(json.encode(-math.huge, { nonfinite = "sentinel" }), '{"__float__":"-inf"}')
  t.eq(json.encode({ math.huge, -math.huge, 0 / 0 }, { nonfinite = "python" }), "[Infinity,-Infinity,NaN]")
  t.raises(function() json.encode(1, { nonfinte = "null" }) end, "unknown option 'nonfinte'")
end)

t.case("bad JSON returns nil and where", function()
  for _, bad in ipairs { "", "{", "[1,]", '{"a" 1}', "nul", "01", "1.", '"\\x"', '"abc',
    "[1] x", '"\\ud800"', "\"\1\"", "NaN", "-Infinity", ("["):rep(1000) .. ("]"):rep(1000) } do
    local v, err = json.decode(bad)
    t.eq(v, nil, "accepted: " .. bad:sub(1, 20))
    t.match(err, "^invalid JSON: .* at byte %d+$")
  end
  t.eq(json.decode(" [1, 2.5e3, -0.5, true, false, null] ")[2], 2500)
end)

t.case("large nested documents round-trip (output far beyond LUAL_BUFFERSIZE)", function()
  local doc = { items = json.array() }
  for i = 1, 3000 do
    doc.items[i] = { id = "job-" .. i, values = { i / 7, -i * 1e-9, i }, tags = json.array(),
      nested = { deeper = { text = ("x"):rep(i % 50) .. "ñ" } } }
  end
  local text = json.encode(doc, { sort_keys = true })
  t.ok(#text > 200000, "document too small: " .. #text)
  local back = assert(json.decode(text))
  t.eq(#back.items, 3000)
  t.eq(back.items[2999].values[1], 2999 / 7)
  t.eq(back.items[10].nested.deeper.text, ("x"):rep(10) .. "ñ")
  t.eq(json.encode(back, { sort_keys = true }), text)
end)

t.case("floats = python writes numbers as Python floats; int_keys stay integers", function()
  local opts = { floats = "python", int_keys = { cell_index = true, shape = true } }
  t.eq(json.encode({ fitness = 6, measures = { 1, 0.1, 1e-6, 1.5e16, -0.0 } }, { floats = "python", sort_keys = true }),
    '{"fitness":6.0,"measures":[1.0,0.1,1e-06,1.5e+16,-0.0]}')
  t.eq(json.encode({ cell_index = 12, shape = { 32, 32 } }, { floats = "python", int_keys = opts.int_keys, sort_keys = true }),
    '{"cell_index":12,"shape":[32,32]}')
  t.raises(function() json.encode({ cell_index = 1.5 }, opts) end, "'cell_index' must be an integer")
  t.raises(function() json.encode({}, { floats = "decimal" }) end, "floats must be shortest or python")
end)

t.case("json.raw embeds JSON text verbatim", function()
  local text = json.encode({ a = json.raw('{"x":[1.0,2]}'), b = json.array { json.raw("null") } }, { sort_keys = true })
  t.eq(text, '{"a":{"x":[1.0,2]},"b":[null]}')
  t.raises(function() json.raw(nil) end)
end)

t.finish()
