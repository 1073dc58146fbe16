-- 005_recovery_indexes: the recovery stage's scans (QUEUED jobs not touched for a while,
-- RUNNING jobs past the worker time limit) read only the jobs they may return, however
-- many jobs are unfinished.
CREATE INDEX IF NOT EXISTS ix_loreley_jobs_queued_since
  ON evolution_jobs (experiment_id, updated_at) WHERE status = 'QUEUED';
CREATE INDEX IF NOT EXISTS ix_loreley_jobs_running_since
  ON evolution_jobs (experiment_id, started_at) WHERE status = 'RUNNING';
