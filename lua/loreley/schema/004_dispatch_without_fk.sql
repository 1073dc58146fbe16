-- 004_dispatch_without_fk: loreley_dispatch no longer references evolution_jobs.
-- The foreign-key check of an INSERT into loreley_dispatch takes a KEY SHARE lock on the
-- job row. The scheduler records a dispatch right after pushing the message, and a
-- worker that picks the message up at that moment starts the job with
-- SELECT ... FOR UPDATE NOWAIT: it sees a lock conflict, acks the message and drops it,
-- and the job is stranded in QUEUED (contract §11 item 2). Without the constraint the
-- bookkeeping never locks job rows. Jobs are never deleted by the host, and an orphaned
-- bookkeeping row (a job deleted by hand) is harmless.
ALTER TABLE loreley_dispatch DROP CONSTRAINT IF EXISTS loreley_dispatch_job_id_fkey;
