-- ctest: labels=e2e;pg;redis;git;valgrind timeout=900
-- The end-to-end loop with the scheduler under valgrind memcheck: no memory error and
-- no leak attributed to the host (definitely or indirectly lost), start-up to shutdown.
-- Skipped (exit 77) in the sanitizer build, whose binary valgrind cannot run.
local t = require "support.t"
local sys = require "loreley.sys"
local db = require "loreley.db"

if os.getenv("LORELEY_SANITIZE") == "1" then
  io.stderr:write("skipped: the AddressSanitizer build cannot run under valgrind\n")
  os.exit(77, true)   -- close the Lua state first: nothing is left for LeakSanitizer
end
local probe = sys.run { "valgrind", "--version" }
assert(probe and probe.code == 0, "valgrind is not installed (scripts/install-deps installs it)")

package.path = t.source_dir .. "/examples/?.lua;" .. package.path
local setup = require "demo_setup"

local dir = t.tmpdir()
local stack = setup.start(dir .. "/stack")
local TOTAL = 12
local env = setup.environment(stack, { SCHEDULER_MAX_TOTAL_JOBS = tostring(TOTAL) })
local worker = setup.spawn_worker(t.host_binary, env, {}, dir .. "/worker.log")
local log = dir .. "/host.log"
local pid = assert(sys.spawn({ "valgrind", "--leak-check=full", "--show-leak-kinds=definite,indirect",
  "--errors-for-leak-kinds=definite,indirect", "--error-exitcode=99", "--num-callers=30",
  "--suppressions=" .. t.source_dir .. "/tests/valgrind.supp",
  t.host_binary, t.source_dir .. "/examples/policy.lua" }, { env = env, stdout = log, stderr = "stdout" }))
local status = sys.wait(pid, 800)
sys.kill(worker, "TERM")
sys.wait(worker, 10)
local text = t.read(log) or ""

t.case("the run completes under memcheck with no error and no leak", function()
  t.ok(status, "valgrind run did not finish")
  t.eq(status.code, 0, "exit code (99 means a memcheck error); log:\n" .. text:sub(-4000))
  t.match(text, "ERROR SUMMARY: 0 errors")
  t.match(text, "definitely lost: 0 bytes") -- printed by --leak-check=full when anything leaked
  t.match(text, "reached max total jobs and all jobs finished")
end)

t.case("the run under valgrind did the work", function()
  local conn = assert(db.connect(stack.pg.url))
  local n = assert(conn:query([[SELECT count(*) AS n FROM evolution_jobs
    WHERE payload->'ingestion'->'map_elites'->>'status' IN ('succeeded', 'skipped')]]))[1].n
  t.eq(n, TOTAL)
  conn:close()
end)

t.finish()
