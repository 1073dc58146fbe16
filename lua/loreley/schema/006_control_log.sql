-- 006_control_log: the changes made to a running host through its HTTP control plane
-- (docs/http.md) and the policy reloads it saw, one row per applied change. Loreley's
-- workers never read it.
--   action   pause | resume | limits | reload
--   source   http (a control request) | signal (SIGHUP)
--   detail   what changed, e.g. {"schedule_batch_size": {"from": 2, "to": 4}}

CREATE TABLE IF NOT EXISTS loreley_control_log (
  id             bigserial PRIMARY KEY,
  experiment_id  uuid NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
  at             timestamptz NOT NULL,
  action         varchar(32) NOT NULL,
  source         varchar(16) NOT NULL,
  remote         varchar(64),
  detail         jsonb NOT NULL DEFAULT '{}'::jsonb,
  policy_version varchar(16),
  created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ix_loreley_control_log_experiment
  ON loreley_control_log (experiment_id, at);
