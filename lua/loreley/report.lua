-- loreley.report: pictures and tables of an archive, with no dependencies.
--
--   report.heatmap_svg(elites, opts) -> SVG text: the best objective per cell over two
--       measure dimensions (other dimensions are projected away by taking the maximum).
--       opts: dims = {1, 2}, lower = {..}, upper = {..}, cells = 32 (per dimension),
--             title = "...", size = 480
--   report.elites_csv(elites) -> CSV text, one row per elite, best first
--   report.line_plot_svg(series, opts) -> SVG text of one or more named series
--       series: { {name = "default", points = {{x, y}, ...}}, ... }
--       opts: title, xlabel, ylabel, width, height
--   report.summary(stats) -> one line: "elites=… coverage=…% qd_score=… best=…"
-- An elite is a table with cell, commit_hash, objective, measures (as loreley.archive
-- returns them).
local M = {}

local function escape_xml(s)
  return (tostring(s):gsub("[&<>\"']", {
    ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;", ["'"] = "&#39;" }))
end
M.escape_xml = escape_xml

-- A perceptually ordered colour ramp (dark blue -> teal -> yellow), t in [0, 1].
local RAMP = {
  { 0.00, 68, 1, 84 }, { 0.25, 59, 82, 139 }, { 0.50, 33, 145, 140 },
  { 0.75, 94, 201, 98 }, { 1.00, 253, 231, 37 },
}
local function colour(t)
  if t ~= t then t = 0 end
  t = math.max(0, math.min(1, t))
  for i = 2, #RAMP do
    local a, b = RAMP[i - 1], RAMP[i]
    if t <= b[1] then
      local f = (t - a[1]) / (b[1] - a[1])
      return ("#%02x%02x%02x"):format(
        math.floor(a[2] + f * (b[2] - a[2]) + 0.5),
        math.floor(a[3] + f * (b[3] - a[3]) + 0.5),
        math.floor(a[4] + f * (b[4] - a[4]) + 0.5))
    end
  end
  return "#fde725"
end
M.colour = colour

local function fmt_num(v)
  if v == nil then return "" end
  if v ~= v then return "nan" end
  if v == math.huge then return "inf" end
  if v == -math.huge then return "-inf" end
  if v == math.floor(v) and math.abs(v) < 1e15 then return ("%d"):format(v) end
  return ("%.6g"):format(v)
end
M.format_number = fmt_num

-- Bins every elite into the (dims[1], dims[2]) plane; returns grid[x][y] = best objective.
local function bin(elites, opts)
  local dx, dy = opts.dims[1], opts.dims[2]
  local n = opts.cells
  local lower, upper = opts.lower, opts.upper
  local grid, lo_obj, hi_obj, count = {}, math.huge, -math.huge, 0
  for _, e in ipairs(elites) do
    local m = e.measures
    if m and m[dx] and m[dy] then
      local gx = math.floor((m[dx] - lower[dx]) / (upper[dx] - lower[dx]) * n)
      local gy = math.floor((m[dy] - lower[dy]) / (upper[dy] - lower[dy]) * n)
      gx = math.max(0, math.min(n - 1, gx))
      gy = math.max(0, math.min(n - 1, gy))
      grid[gx] = grid[gx] or {}
      local v = e.objective
      if grid[gx][gy] == nil or v > grid[gx][gy] then grid[gx][gy] = v end
      if v < lo_obj then lo_obj = v end
      if v > hi_obj then hi_obj = v end
      count = count + 1
    end
  end
  return grid, lo_obj, hi_obj, count
end

function M.heatmap_svg(elites, opts)
  opts = opts or {}
  local dims = opts.dims or { 1, 2 }
  local first = elites[1]
  local d = first and first.measures and #first.measures or 2
  local lower = opts.lower or {}
  local upper = opts.upper or {}
  for i = 1, math.max(d, dims[1], dims[2]) do
    lower[i] = lower[i] or -1
    upper[i] = upper[i] or 1
  end
  local n = opts.cells or 32
  local size = opts.size or 480
  local grid, lo, hi, count = bin(elites, { dims = dims, cells = n, lower = lower, upper = upper })
  local margin, legend = 56, 120
  local cell = size / n
  local w, h = margin + size + legend, margin + size + 40
  local out = {}
  out[#out + 1] = ('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
    .. 'viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">'):format(w, h, w, h)
  out[#out + 1] = ('<rect width="%d" height="%d" fill="#ffffff"/>'):format(w, h)
  out[#out + 1] = ('<text x="%d" y="20" font-size="14" font-weight="bold">%s</text>')
    :format(margin, escape_xml(opts.title or "MAP-Elites archive"))
  out[#out + 1] = ('<text x="%d" y="38" fill="#555">%d elites; best objective per cell over '
    .. 'measures %d and %d</text>'):format(margin, count, dims[1], dims[2])
  local top = 46
  out[#out + 1] = ('<rect x="%d" y="%d" width="%d" height="%d" fill="#f0f0f0" stroke="#999"/>')
    :format(margin, top, size, size)
  local span = hi - lo
  for gx, col in pairs(grid) do
    for gy, v in pairs(col) do
      local t = span > 0 and (v - lo) / span or 1
      -- y grows upwards in the plot
      out[#out + 1] = ('<rect class="cell" x="%.2f" y="%.2f" width="%.2f" height="%.2f" '
        .. 'fill="%s" data-x="%d" data-y="%d" data-objective="%s"><title>(%d, %d): %s</title></rect>')
        :format(margin + gx * cell, top + (n - 1 - gy) * cell, cell, cell, colour(t),
          gx, gy, fmt_num(v), gx, gy, fmt_num(v))
    end
  end
  -- axes labels
  out[#out + 1] = ('<text x="%d" y="%d" text-anchor="middle">measure %d: %s .. %s</text>')
    :format(margin + size / 2, top + size + 18, dims[1], fmt_num(lower[dims[1]]), fmt_num(upper[dims[1]]))
  out[#out + 1] = ('<text transform="translate(%d,%d) rotate(-90)" text-anchor="middle">'
    .. 'measure %d: %s .. %s</text>'):format(16, top + size / 2, dims[2],
      fmt_num(lower[dims[2]]), fmt_num(upper[dims[2]]))
  -- legend
  local lx = margin + size + 16
  for i = 0, 49 do
    out[#out + 1] = ('<rect x="%d" y="%.2f" width="14" height="%.2f" fill="%s"/>')
      :format(lx, top + (49 - i) * size / 50, size / 50 + 0.5, colour(i / 49))
  end
  out[#out + 1] = ('<text x="%d" y="%d">%s</text>'):format(lx + 18, top + 10,
    count > 0 and fmt_num(hi) or "")
  out[#out + 1] = ('<text x="%d" y="%d">%s</text>'):format(lx + 18, top + size,
    count > 0 and fmt_num(lo) or "")
  out[#out + 1] = "</svg>\n"
  return table.concat(out, "\n")
end

local function csv_field(v)
  local s = tostring(v == nil and "" or v)
  if s:find('[,"\n\r]') then s = '"' .. s:gsub('"', '""') .. '"' end
  return s
end

function M.elites_csv(elites)
  local sorted = {}
  for i, e in ipairs(elites) do sorted[i] = e end
  table.sort(sorted, function(a, b)
    if a.objective ~= b.objective then return a.objective > b.objective end
    return a.cell < b.cell
  end)
  local d = 0
  for _, e in ipairs(sorted) do d = math.max(d, e.measures and #e.measures or 0) end
  local header = { "rank", "cell", "commit_hash", "objective" }
  for i = 1, d do header[#header + 1] = "measure_" .. i end
  local lines = { table.concat(header, ",") }
  for rank, e in ipairs(sorted) do
    local row = { rank, fmt_num(e.cell), csv_field(e.commit_hash), fmt_num(e.objective) }
    for i = 1, d do row[#row + 1] = fmt_num(e.measures and e.measures[i]) end
    lines[#lines + 1] = table.concat(row, ",")
  end
  return table.concat(lines, "\n") .. "\n"
end

local SERIES_COLOURS = { "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
  "#e377c2", "#7f7f7f", "#bcbd22", "#17becf" }

function M.line_plot_svg(series, opts)
  opts = opts or {}
  local w, h = opts.width or 640, opts.height or 400
  local ml, mr, mt, mb = 70, 150, 40, 50
  local pw, ph = w - ml - mr, h - mt - mb
  local xmin, xmax, ymin, ymax = math.huge, -math.huge, math.huge, -math.huge
  for _, s in ipairs(series) do
    for _, p in ipairs(s.points) do
      local x, y = p[1], p[2]
      if y == y and y ~= math.huge and y ~= -math.huge then
        xmin, xmax = math.min(xmin, x), math.max(xmax, x)
        ymin, ymax = math.min(ymin, y), math.max(ymax, y)
      end
    end
  end
  if xmin > xmax then xmin, xmax, ymin, ymax = 0, 1, 0, 1 end
  if xmax == xmin then xmax = xmin + 1 end
  if ymax == ymin then ymax, ymin = ymax + 1, ymin - 1 end
  local function px(x) return ml + (x - xmin) / (xmax - xmin) * pw end
  local function py(y) return mt + ph - (y - ymin) / (ymax - ymin) * ph end
  local out = {}
  out[#out + 1] = ('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
    .. 'viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">'):format(w, h, w, h)
  out[#out + 1] = ('<rect width="%d" height="%d" fill="#ffffff"/>'):format(w, h)
  out[#out + 1] = ('<text x="%d" y="22" font-size="14" font-weight="bold">%s</text>')
    :format(ml, escape_xml(opts.title or ""))
  out[#out + 1] = ('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#999"/>')
    :format(ml, mt, pw, ph)
  for i = 0, 4 do
    local yv = ymin + (ymax - ymin) * i / 4
    local xv = xmin + (xmax - xmin) * i / 4
    out[#out + 1] = ('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#eee"/>')
      :format(ml, ml + pw, py(yv), py(yv))
    out[#out + 1] = ('<text x="%d" y="%.1f" text-anchor="end">%s</text>')
      :format(ml - 6, py(yv) + 4, fmt_num(tonumber(("%.4g"):format(yv))))
    out[#out + 1] = ('<text x="%.1f" y="%d" text-anchor="middle">%s</text>')
      :format(px(xv), mt + ph + 16, fmt_num(tonumber(("%.4g"):format(xv))))
  end
  out[#out + 1] = ('<text x="%d" y="%d" text-anchor="middle">%s</text>')
    :format(ml + pw / 2, h - 10, escape_xml(opts.xlabel or ""))
  out[#out + 1] = ('<text transform="translate(16,%d) rotate(-90)" text-anchor="middle">%s</text>')
    :format(mt + ph / 2, escape_xml(opts.ylabel or ""))
  for i, s in ipairs(series) do
    local c = SERIES_COLOURS[(i - 1) % #SERIES_COLOURS + 1]
    local pts = {}
    for _, p in ipairs(s.points) do
      if p[2] == p[2] and p[2] ~= math.huge and p[2] ~= -math.huge then
        pts[#pts + 1] = ("%.1f,%.1f"):format(px(p[1]), py(p[2]))
      end
    end
    out[#out + 1] = ('<polyline class="series" data-name="%s" fill="none" stroke="%s" '
      .. 'stroke-width="2" points="%s"/>'):format(escape_xml(s.name), c, table.concat(pts, " "))
    if s.band then   -- optional spread: { {x, lo, hi}, ... }
      local upper, lower = {}, {}
      for _, b in ipairs(s.band) do
        upper[#upper + 1] = ("%.1f,%.1f"):format(px(b[1]), py(b[3]))
        table.insert(lower, 1, ("%.1f,%.1f"):format(px(b[1]), py(b[2])))
      end
      out[#out + 1] = ('<polygon fill="%s" fill-opacity="0.15" stroke="none" points="%s %s"/>')
        :format(c, table.concat(upper, " "), table.concat(lower, " "))
    end
    out[#out + 1] = ('<rect x="%d" y="%d" width="12" height="12" fill="%s"/>')
      :format(ml + pw + 14, mt + (i - 1) * 18, c)
    out[#out + 1] = ('<text x="%d" y="%d">%s</text>')
      :format(ml + pw + 30, mt + (i - 1) * 18 + 10, escape_xml(s.name))
  end
  out[#out + 1] = "</svg>\n"
  return table.concat(out, "\n")
end

function M.summary(stats)
  return ("elites=%d coverage=%.4f%% qd_score=%s best=%s"):format(stats.num_elites or 0,
    (stats.coverage or 0) * 100, fmt_num(stats.qd_score or 0),
    (stats.num_elites or 0) > 0 and fmt_num(stats.obj_max) or "n/a")
end

return M
