-- 003_host_tables: the host's own state (Loreley's workers never read these tables).
--   loreley_islands          per-island archive configuration
--   loreley_archive_cells    one row per occupied archive cell, with its CMA-MAE threshold
--   loreley_reducer_state    per-island PCA projection and refit counter
--   loreley_reducer_history  the reducer's sample history, one row per sample
--   loreley_dispatch         when a job was last sent to Redis, and the message id
-- and loreley_ingestion_payload(), which writes payload part C in place.

CREATE TABLE IF NOT EXISTS loreley_islands (
  experiment_id uuid NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
  island_id     varchar(64) NOT NULL,
  config        jsonb NOT NULL DEFAULT '{}'::jsonb,
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (experiment_id, island_id)
);

CREATE TABLE IF NOT EXISTS loreley_archive_cells (
  experiment_id uuid NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
  island_id     varchar(64) NOT NULL,
  cell_index    bigint NOT NULL CHECK (cell_index >= 0),
  commit_hash   varchar(64) NOT NULL,
  objective     double precision NOT NULL,
  threshold     double precision NOT NULL,
  measures      double precision[] NOT NULL,
  solution      double precision[],
  metadata      text,                               -- JSON text, kept byte for byte
  added_at      double precision NOT NULL,          -- epoch seconds at insertion (exact)
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (experiment_id, island_id, cell_index)
);

CREATE TABLE IF NOT EXISTS loreley_reducer_state (
  experiment_id     uuid NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
  island_id         varchar(64) NOT NULL,
  projection        bytea,
  samples_since_fit integer NOT NULL DEFAULT 0,
  created_at        timestamptz NOT NULL DEFAULT now(),
  updated_at        timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (experiment_id, island_id)
);

CREATE TABLE IF NOT EXISTS loreley_reducer_history (
  experiment_id uuid NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
  island_id     varchar(64) NOT NULL,
  seq           bigint NOT NULL,
  commit_hash   varchar(64) NOT NULL,
  vector        bytea NOT NULL,                     -- little-endian float64 values
  created_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (experiment_id, island_id, seq)
);

CREATE TABLE IF NOT EXISTS loreley_dispatch (
  job_id           uuid NOT NULL REFERENCES evolution_jobs (id) ON DELETE CASCADE,
  experiment_id    uuid NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
  attempts         integer NOT NULL DEFAULT 0,
  last_sent_at     timestamptz,
  redis_message_id varchar(64),
  last_error       text,
  created_at       timestamptz NOT NULL DEFAULT now(),
  updated_at       timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (job_id)
);
CREATE INDEX IF NOT EXISTS ix_loreley_dispatch_experiment ON loreley_dispatch (experiment_id);

-- payload with part C recorded (contract §1.5, §6.5): map_elites.attempts + 1, status and
-- last_attempt_at set, reason/delta/status_code/message set or removed when NULL, record
-- replaced only when given; every other key of payload and of payload.ingestion kept.
-- A payload that is not a JSON object is kept under "loreley_original_payload".
CREATE OR REPLACE FUNCTION loreley_ingestion_payload(
  payload jsonb, state_status text, attempt_at text, reason text, delta jsonb,
  status_code integer, message text, record jsonb)
RETURNS jsonb LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
  p jsonb := CASE WHEN jsonb_typeof(payload) = 'object' THEN payload
                  ELSE jsonb_build_object('loreley_original_payload', payload) END;
  ingestion jsonb := CASE WHEN jsonb_typeof(p -> 'ingestion') = 'object' THEN p -> 'ingestion'
                          ELSE '{}'::jsonb END;
  state jsonb := CASE WHEN jsonb_typeof(ingestion -> 'map_elites') = 'object'
                      THEN ingestion -> 'map_elites' ELSE '{}'::jsonb END;
  attempts bigint := 0;
BEGIN
  IF jsonb_typeof(state -> 'attempts') = 'number' THEN
    attempts := least(greatest(floor((state ->> 'attempts')::numeric), 0), 1000000000)::bigint;
  END IF;
  state := (state - 'reason' - 'delta' - 'status_code' - 'message')
           || jsonb_build_object('attempts', attempts + 1, 'status', state_status,
                                 'last_attempt_at', attempt_at)
           || jsonb_strip_nulls(jsonb_build_object('reason', reason, 'delta', delta,
                                                   'status_code', status_code,
                                                   'message', message));
  IF record IS NOT NULL THEN
    state := state || jsonb_build_object('record', record);
  END IF;
  RETURN p || jsonb_build_object('ingestion', ingestion || jsonb_build_object('map_elites', state));
END
$$;
