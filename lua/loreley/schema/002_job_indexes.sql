-- 002_job_indexes: the indexes the host's per-tick queries need on evolution_jobs (the
-- reference has none; every query here is scoped to one experiment). All are partial,
-- so they stay as small as the work in flight, not as the job history.
-- The predicates must match the job store's queries word for word (lua/loreley/jobstore.lua)
-- for the planner to use them. None of the expressions can raise, whatever a worker
-- writes into payload (#>> on a non-object gives NULL).

-- dispatch: pending jobs in the contract's order
CREATE INDEX IF NOT EXISTS ix_loreley_jobs_pending
  ON evolution_jobs (experiment_id, priority DESC, scheduled_at ASC NULLS LAST, created_at ASC)
  WHERE status = 'PENDING';

-- measure and recovery: unfinished jobs (PENDING, QUEUED, RUNNING)
CREATE INDEX IF NOT EXISTS ix_loreley_jobs_unfinished
  ON evolution_jobs (experiment_id, status)
  WHERE status IN ('PENDING', 'QUEUED', 'RUNNING');

-- ingest: succeeded jobs whose MAP-Elites ingestion has not succeeded or been skipped
CREATE INDEX IF NOT EXISTS ix_loreley_jobs_to_ingest
  ON evolution_jobs (experiment_id, completed_at)
  WHERE status = 'SUCCEEDED'
    AND coalesce(payload #>> '{ingestion,map_elites,status}', '') NOT IN ('succeeded', 'skipped');

-- Without statistics on the ingestion-status expression the planner guesses that a fifth of
-- the table is waiting for ingestion and picks a parallel plan (about 20 ms at 100,000
-- jobs instead of 0.2 ms). Expression statistics (PostgreSQL 14+) give it the real figure.
CREATE STATISTICS IF NOT EXISTS st_loreley_jobs_ingestion_status
  ON (coalesce(payload #>> '{ingestion,map_elites,status}', '')) FROM evolution_jobs;
ANALYZE evolution_jobs;
