-- Prints the archive summary of a running (or stopped) deployment, read-only:
--
--   loreley-host --once examples/status.lua [-- --out DIR] [-- --all]
--
-- It finds the experiment the scheduler with the same settings (DATABASE_URL,
-- SCHEDULER_REPO_ROOT or WORKER_REPO_WORKTREE, the MAPELITES_* settings) uses, and
-- prints jobs by status, ingestion outcomes and, per island, the number of elites,
-- coverage, QD score and best fitness. --out DIR also writes each island's heatmap
-- (SVG) and elites (CSV); --all lists every experiment in the database.
local host = require "loreley.host"
local settings = require("loreley.settings").current()
local db = require "loreley.db"
local git = require "loreley.git"
local experiment = require "loreley.experiment"
local summary = require "loreley.summary"

local out_dir, list_all
local i = 1
while arg[i] do
  if arg[i] == "--out" then out_dir = arg[i + 1]; i = i + 1
  elseif arg[i] == "--all" then list_all = true
  else error("status: unknown option " .. arg[i] .. " (--out DIR, --all)", 0) end
  i = i + 1
end

local conn = assert(db.connect(db.settings_url(settings)))
if list_all then
  for _, e in ipairs(assert(summary.experiments(conn))) do
    print(("%s  %-60s  %d job(s)"):format(e.id, e.name, e.jobs))
  end
  return
end

local root = settings.scheduler_repo_root
if not root or root == "" then root = settings.worker_repo_worktree end
root = experiment.resolve_root(root)
local repo = git.open(root)
if not repo then error(("status: %s is not a git repository (set SCHEDULER_REPO_ROOT)"):format(root), 0) end
local exp, err = summary.find_experiment(conn, settings, root, repo:remotes())
if not exp then error("status: " .. err .. " (try --all)", 0) end
local report = assert(summary.collect(conn, exp))
print(summary.format(report))
if out_dir then
  local files = assert(summary.write_files(report, out_dir))
  for _, f in ipairs(files) do host.info("wrote %s", f) end
end
