-- 001_contract: the tables Loreley's ORM maps (loreley/db/models.py at 331a15c), exactly
-- as SQLAlchemy's PostgreSQL dialect creates them: the same names, types, constraints
-- and indexes. Defaults other than created_at/updated_at are client-side (the writer
-- supplies id, status, priority, {} and '{}'), as in the reference.
-- Idempotent: an existing table, type or index is left as it is, so a database that
-- Loreley's own tooling created works unchanged.

DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                 WHERE t.typname = 'job_status' AND n.nspname = current_schema()) THEN
    -- The enum stores the Python member NAMES (upper case), not the lower-case values.
    CREATE TYPE job_status AS ENUM ('PENDING', 'QUEUED', 'RUNNING', 'SUCCEEDED', 'FAILED',
                                    'CANCELLED');
  END IF;
END
$$;

CREATE TABLE IF NOT EXISTS repositories (
  id          uuid NOT NULL,
  slug        varchar(255) NOT NULL,
  remote_url  varchar(1024),
  root_path   varchar(1024),
  extra       jsonb NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (id),
  CONSTRAINT uq_repositories_slug UNIQUE (slug)
);
CREATE INDEX IF NOT EXISTS ix_repositories_slug ON repositories (slug);

CREATE TABLE IF NOT EXISTS experiments (
  id              uuid NOT NULL,
  repository_id   uuid NOT NULL,
  config_hash     varchar(64) NOT NULL,
  name            varchar(255),
  config_snapshot jsonb NOT NULL,
  status          varchar(32),
  created_at      timestamptz NOT NULL DEFAULT now(),
  updated_at      timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (id),
  CONSTRAINT uq_experiments_repo_config UNIQUE (repository_id, config_hash),
  FOREIGN KEY (repository_id) REFERENCES repositories (id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS ix_experiments_repository_id ON experiments (repository_id);
CREATE INDEX IF NOT EXISTS ix_experiments_config_hash ON experiments (config_hash);

CREATE TABLE IF NOT EXISTS commits (
  id                 uuid NOT NULL,
  commit_hash        varchar(64) NOT NULL,
  parent_commit_hash varchar(64),
  island_id          varchar(64),
  experiment_id      uuid,
  author             varchar(128),
  message            text,
  evaluation_summary text,
  tags               varchar(64)[] NOT NULL,
  extra_context      jsonb NOT NULL,
  created_at         timestamptz NOT NULL DEFAULT now(),
  updated_at         timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (id),
  FOREIGN KEY (experiment_id) REFERENCES experiments (id) ON DELETE SET NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS ix_commits_commit_hash ON commits (commit_hash);
CREATE INDEX IF NOT EXISTS ix_commits_experiment_id ON commits (experiment_id);
CREATE INDEX IF NOT EXISTS ix_commits_island_id ON commits (island_id);
CREATE INDEX IF NOT EXISTS ix_commits_parent_hash ON commits (parent_commit_hash);

CREATE TABLE IF NOT EXISTS map_elites_states (
  experiment_id uuid NOT NULL,
  island_id     varchar(64) NOT NULL,
  snapshot      jsonb NOT NULL,
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (experiment_id, island_id),
  FOREIGN KEY (experiment_id) REFERENCES experiments (id) ON DELETE CASCADE
);

CREATE TABLE IF NOT EXISTS evolution_jobs (
  id                        uuid NOT NULL,
  status                    job_status NOT NULL,
  base_commit_hash          varchar(64),
  island_id                 varchar(64),
  experiment_id             uuid,
  inspiration_commit_hashes varchar(64)[] NOT NULL,
  payload                   jsonb NOT NULL,
  plan_summary              text,
  priority                  integer NOT NULL,
  scheduled_at              timestamptz,
  started_at                timestamptz,
  completed_at              timestamptz,
  last_error                text,
  created_at                timestamptz NOT NULL DEFAULT now(),
  updated_at                timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (id),
  FOREIGN KEY (base_commit_hash) REFERENCES commits (commit_hash) ON DELETE SET NULL,
  FOREIGN KEY (experiment_id) REFERENCES experiments (id) ON DELETE SET NULL
);
CREATE INDEX IF NOT EXISTS ix_evolution_jobs_status ON evolution_jobs (status);
CREATE INDEX IF NOT EXISTS ix_evolution_jobs_base_commit ON evolution_jobs (base_commit_hash);
CREATE INDEX IF NOT EXISTS ix_evolution_jobs_experiment_id ON evolution_jobs (experiment_id);

CREATE TABLE IF NOT EXISTS metrics (
  id               uuid NOT NULL,
  commit_hash      varchar(64) NOT NULL,
  name             varchar(128) NOT NULL,
  value            double precision NOT NULL,
  unit             varchar(32),
  higher_is_better boolean NOT NULL,
  details          jsonb NOT NULL,
  created_at       timestamptz NOT NULL DEFAULT now(),
  updated_at       timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (id),
  CONSTRAINT uq_metric_commit_name UNIQUE (commit_hash, name),
  FOREIGN KEY (commit_hash) REFERENCES commits (commit_hash) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS ix_metrics_commit_hash ON metrics (commit_hash);
