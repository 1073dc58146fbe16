-- The default Loreley policy, as a short tutorial. Copy this file and change it.
--
-- Run it:        loreley-host examples/policy.lua          (a daemon: Ctrl-C stops it)
-- One tick:      loreley-host --once examples/policy.lua
-- Change it live: edit the file, then `kill -HUP <pid>`: the host loads the new file,
-- checks it, and keeps the old one if the new one is broken.
--
-- A policy is a table with tick (required), init and shutdown. Everything the host
-- gives a policy comes in `ctx`: ctx.settings (Loreley's settings), ctx.tick (the
-- counter), ctx.args (arguments after --), and ctx:stage(name, fn, ...), which runs
-- one stage so that a failure is logged and counted as 0 instead of stopping the tick.
local stages = require "loreley.stages"

return {
  -- Start-up: open the repository, the database and Redis, find (or create) this
  -- experiment, become its only scheduler (others wait), load every island's archive
  -- and reducer, and bootstrap an empty archive from the root commit.
  init = stages.init,

  -- One tick, in the reference scheduler's order (contract §6.4).
  tick = function(ctx)
    -- Only the leader schedules: if another scheduler holds this experiment, do nothing.
    if not stages.lead(ctx) then return end

    -- Re-send jobs whose message was lost, fail jobs stuck RUNNING past their limit.
    ctx:stage("recover", stages.recover)
    -- Finished jobs: read each new commit, place it in the archive.
    local ingested = ctx:stage("ingest", stages.ingest)
    -- Waiting jobs: mark them QUEUED and hand them to the workers through Redis.
    local dispatched = ctx:stage("dispatch", stages.dispatch)
    -- How much work is in flight (PENDING + QUEUED + RUNNING)?
    local unfinished = ctx:stage("measure", stages.measure)
    -- New jobs while there is room: a base elite and its inspirations from the archive.
    -- (stages.schedule(ctx, unfinished, { sampler = s }) takes another sampler: see
    -- examples/policy_fitness.lua and examples/policy_curiosity.lua.)
    local scheduled = ctx:stage("schedule", stages.schedule, unfinished)

    ctx:summary { ingested = ingested, dispatched = dispatched, scheduled = scheduled,
                  unfinished = unfinished + scheduled }
    -- SCHEDULER_MAX_TOTAL_JOBS reached and nothing unfinished: stop the host.
    ctx:stage("finish", stages.finish, unfinished + scheduled)

    -- Return a delay in seconds for the next tick, nil for the poll interval
    -- (SCHEDULER_POLL_INTERVAL_SECONDS), or false to stop. While work is flowing, tick
    -- again soon; when idle, wait the full interval.
    if ingested + dispatched + scheduled > 0 then return 0.05 end
  end,

  -- (All of the tick above is also one call: `return stages.next_delay(stages.tick(ctx))`.)

  shutdown = stages.shutdown,
}
