-- loreley.summary: a read-only look at a deployment from its database — the archive of
-- every island (rebuilt from its stored cells, so the statistics are the archive's
-- own), jobs by status, and pictures. Used by examples/status.lua and the demo; it never
-- writes and never takes the leader lock, so it is safe beside a running scheduler.
--
--   local summary = require "loreley.summary"
--   local exp = assert(summary.find_experiment(conn, settings, root, remotes))
--   local report = assert(summary.collect(conn, exp))
--   print(summary.format(report))
--   summary.write_files(report, dir)   -- <dir>/archive-<island>.svg, elites-<island>.csv
local db = require "loreley.db"
local archive_mod = require "loreley.archive"
local experiment = require "loreley.experiment"
local report_mod = require "loreley.report"

local M = {}

local function nn(v) if v == db.null then return nil end return v end

-- The experiment the scheduler with these settings and repository uses (nothing is
-- created): the repository slug and the config hash, as at start-up.
function M.find_experiment(conn, settings, root, remotes)
  local desc, err = experiment.describe_repository(root, remotes or {})
  if not desc then return nil, err end
  local hash = experiment.config_hash(settings)
  local rows, qerr = conn:query([[
SELECT e.id::text AS id, e.name, e.config_hash, r.slug
FROM experiments e JOIN repositories r ON r.id = e.repository_id
WHERE r.slug = $1 AND e.config_hash = $2]], desc.slug, hash)
  if not rows then return nil, qerr end
  if not rows[1] then
    return nil, ("no experiment for repository %s with config hash %s yet (has the scheduler run?)")
      :format(desc.slug, hash:sub(1, 8))
  end
  return rows[1]
end

-- Every experiment in the database (for a status overview when no settings match).
function M.experiments(conn)
  return conn:query([[SELECT e.id::text AS id, e.name, e.config_hash, r.slug,
    (SELECT count(*) FROM evolution_jobs j WHERE j.experiment_id = e.id) AS jobs
    FROM experiments e JOIN repositories r ON r.id = e.repository_id ORDER BY e.created_at]])
end

local function from_stored(v)
  if type(v) == "table" and v.__float__ then
    return ({ ["-inf"] = -math.huge, inf = math.huge })[v.__float__] or 0 / 0
  end
  return v
end

-- Rebuilds an island's archive from its stored configuration and cells.
local function rebuild(conn, experiment_id, island_id, config)
  local rows, err = conn:query([[
SELECT cell_index, commit_hash, objective, threshold, measures, solution, metadata, added_at
FROM loreley_archive_cells WHERE experiment_id = $1 AND island_id = $2 ORDER BY cell_index]],
    experiment_id, island_id)
  if not rows then return nil, err end
  local a = archive_mod.grid {
    dims = config.shape, lower = config.lower, upper = config.upper,
    learning_rate = config.learning_rate, threshold_min = from_stored(config.threshold_min),
    epsilon = config.epsilon, qd_score_offset = config.qd_score_offset,
  }
  local cells = {}
  for i, r in ipairs(rows) do
    cells[i] = { cell = r.cell_index, commit_hash = r.commit_hash, objective = r.objective,
      threshold = r.threshold, measures = r.measures, solution = nn(r.solution),
      metadata = nn(r.metadata), timestamp = r.added_at }
  end
  if #cells > 0 then
    local ok, lerr = a:load_rows(cells)
    if not ok then return nil, ("island %s: %s"):format(island_id, lerr) end
  end
  return a
end

-- {experiment, jobs = {STATUS = n}, total_jobs, islands = {{id, config, archive, stats, best}}}
function M.collect(conn, exp)
  local out = { experiment = exp, jobs = {}, total_jobs = 0, islands = {} }
  local rows, err = conn:query([[SELECT status::text AS status, count(*) AS n FROM evolution_jobs
    WHERE experiment_id = $1 GROUP BY status ORDER BY status]], exp.id)
  if not rows then return nil, err end
  for _, r in ipairs(rows) do
    out.jobs[r.status] = r.n
    out.total_jobs = out.total_jobs + r.n
  end
  local ingested
  ingested, err = conn:query([[SELECT payload->'ingestion'->'map_elites'->>'status' AS s, count(*) AS n
    FROM evolution_jobs WHERE experiment_id = $1 AND status = 'SUCCEEDED' GROUP BY 1]], exp.id)
  if not ingested then return nil, err end
  out.ingestion = {}
  for _, r in ipairs(ingested) do out.ingestion[nn(r.s) or "pending"] = r.n end
  local islands
  islands, err = conn:query([[SELECT island_id, config FROM loreley_islands
    WHERE experiment_id = $1 ORDER BY island_id]], exp.id)
  if not islands then return nil, err end
  for _, r in ipairs(islands) do
    local a, aerr = rebuild(conn, exp.id, r.island_id, r.config)
    if not a then return nil, aerr end
    local best
    for e in a:elites() do
      if not best or e.objective > best.objective then best = e end
    end
    out.islands[#out.islands + 1] = { id = r.island_id, config = r.config, archive = a,
      stats = a:stats(), best = best }
  end
  return out
end

function M.format(report)
  local lines = {}
  local exp = report.experiment
  lines[#lines + 1] = ("experiment %s (%s)"):format(tostring(exp.name), exp.id)
  local parts = {}
  for _, status in ipairs { "PENDING", "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED" } do
    if report.jobs[status] then parts[#parts + 1] = ("%s=%d"):format(status:lower(), report.jobs[status]) end
  end
  lines[#lines + 1] = ("jobs: %d (%s)"):format(report.total_jobs, table.concat(parts, " "))
  local ing = {}
  for k, v in pairs(report.ingestion or {}) do ing[#ing + 1] = ("%s=%d"):format(k, v) end
  table.sort(ing)
  lines[#lines + 1] = "ingestion of succeeded jobs: " .. (#ing > 0 and table.concat(ing, " ") or "none yet")
  for _, island in ipairs(report.islands) do
    local st = island.stats
    lines[#lines + 1] = ("island %s: %d elites, coverage %.4f%%, QD score %s, best fitness %s%s")
      :format(island.id, st.num_elites, st.coverage * 100, report_mod.format_number(st.qd_score),
        st.num_elites > 0 and report_mod.format_number(st.obj_max) or "n/a",
        island.best and (" (" .. island.best.commit_hash:sub(1, 12) .. ")") or "")
  end
  return table.concat(lines, "\n")
end

-- Writes archive-<island>.svg (heatmap over measures dims[1], dims[2]) and
-- elites-<island>.csv for every island. Returns the list of paths.
function M.write_files(report, dir, dims)
  local written = {}
  for _, island in ipairs(report.islands) do
    local elites = {}
    for e in island.archive:elites() do elites[#elites + 1] = e end
    local safe = island.id:gsub("[^%w%-_%.]", "_")
    local svg = report_mod.heatmap_svg(elites, {
      dims = dims or { 1, 2 }, lower = island.config.lower, upper = island.config.upper,
      cells = island.config.shape[1],
      title = ("%s — island %s"):format(tostring(report.experiment.name), island.id),
    })
    local paths = { dir .. "/archive-" .. safe .. ".svg", dir .. "/elites-" .. safe .. ".csv" }
    local contents = { svg, report_mod.elites_csv(elites) }
    for i, path in ipairs(paths) do
      local f, err = io.open(path, "wb")
      if not f then return nil, err end
      f:write(contents[i])
      f:close()
      written[#written + 1] = path
    end
  end
  return written
end

return M
