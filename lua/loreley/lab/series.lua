-- loreley.lab.series: the per-N-jobs record of a run, and its CSV and SVG forms.
--
--   local series = require "loreley.lab.series"
--   series.COLUMNS                      -- jobs, sim_seconds, qd_score, coverage,
--                                       -- best_fitness, archive_size
--   series.csv(rows) -> text            series.parse_csv(text) -> rows | nil, message
--   series.svg(named, title) -> SVG text: four stacked line plots (QD score, coverage,
--       best fitness, archive size) against jobs; named = { {name =, rows =,
--       band = {column = {{x, lo, hi}, ...}}?}, ... }
--   series.at(rows, jobs) -> the last row with rows.jobs <= jobs (nil before the first)
--
-- A row is { jobs, sim_seconds, qd_score, coverage, best_fitness, archive_size }, keyed
-- by column name. Numbers are written with %.10g, the same bytes for the same values.
local report = require "loreley.report"

local M = {}

M.COLUMNS = { "jobs", "sim_seconds", "qd_score", "coverage", "best_fitness", "archive_size" }

M.PANELS = {
  { column = "qd_score", title = "QD score", ylabel = "QD score" },
  { column = "coverage", title = "Coverage (fraction of cells)", ylabel = "coverage" },
  { column = "best_fitness", title = "Best fitness", ylabel = "fitness" },
  { column = "archive_size", title = "Archive size", ylabel = "elites" },
}

local function number(v)
  if v == nil then return "" end
  if v ~= v then return "nan" end
  if v == math.floor(v) and math.abs(v) < 1e15 then return ("%d"):format(v) end
  return ("%.10g"):format(v)
end
M.format_number = number

function M.csv(rows)
  local lines = { table.concat(M.COLUMNS, ",") }
  for _, r in ipairs(rows) do
    local parts = {}
    for i, c in ipairs(M.COLUMNS) do parts[i] = number(r[c]) end
    lines[#lines + 1] = table.concat(parts, ",")
  end
  return table.concat(lines, "\n") .. "\n"
end

function M.parse_csv(text)
  local rows, header = {}, nil
  local n = 0
  for line in text:gmatch("[^\n]+") do
    n = n + 1
    local fields = {}
    for f in (line .. ","):gmatch("([^,]*),") do fields[#fields + 1] = f end
    if not header then
      header = fields
    else
      local row = {}
      for i, name in ipairs(header) do
        local v = tonumber(fields[i])
        if fields[i] == "nan" then v = 0 / 0 end
        if v == nil and fields[i] ~= "" then
          return nil, ("line %d: '%s' is not a number (column %s)"):format(n, tostring(fields[i]), name)
        end
        row[name] = v
      end
      rows[#rows + 1] = row
    end
  end
  if not header then return nil, "empty CSV" end
  return rows
end

function M.at(rows, jobs)
  local found
  for _, r in ipairs(rows) do
    if r.jobs <= jobs then found = r else break end
  end
  return found
end

local function nest(svg, y)
  -- report.line_plot_svg returns a whole document; placed inside another one, an <svg>
  -- element takes x/y offsets.
  return (svg:gsub("^<svg ", ('<svg x="0" y="%d" '):format(y), 1))
end

function M.svg(named, title)
  local width, height = 720, 300
  local parts = {}
  local total = 40 + #M.PANELS * height
  parts[#parts + 1] = ('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
    .. 'viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">'):format(width, total,
      width, total)
  parts[#parts + 1] = ('<rect width="%d" height="%d" fill="#ffffff"/>'):format(width, total)
  parts[#parts + 1] = ('<text x="20" y="26" font-size="16" font-weight="bold">%s</text>')
    :format(report.escape_xml(title or "policy lab"))
  for i, panel in ipairs(M.PANELS) do
    local plotted = {}
    for j, s in ipairs(named) do
      local points = {}
      for k, r in ipairs(s.rows) do points[k] = { r.jobs, r[panel.column] } end
      plotted[j] = { name = s.name, points = points, band = s.band and s.band[panel.column] }
    end
    local svg = report.line_plot_svg(plotted, { title = panel.title, xlabel = "jobs",
      ylabel = panel.ylabel, width = width, height = height })
    parts[#parts + 1] = nest(svg, 40 + (i - 1) * height)
  end
  parts[#parts + 1] = "</svg>\n"
  return table.concat(parts, "\n")
end

return M
