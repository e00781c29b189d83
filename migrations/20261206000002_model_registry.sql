-- The model registry: models, their immutable versions, labels that point
-- at a version, what an admin asked to have loaded, and what each worker
-- has loaded.

CREATE TABLE models (
    name        TEXT PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('echo', 'embedder', 'chat')),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A version never changes once registered: its files are checksummed and
-- a worker refuses files that no longer match.
CREATE TABLE model_versions (
    model       TEXT NOT NULL REFERENCES models (name),
    version     TEXT NOT NULL CHECK (version ~ '^[a-z0-9][a-z0-9._-]{0,63}$'),
    -- Relative to MAAS_MODELS_DIR; NULL for a built-in model.
    path        TEXT,
    -- sha256 over the version's files (see docs/models.md); NULL: built in.
    checksum    TEXT,
    -- Runtime settings: slots, precision, batch budget.
    settings    JSONB NOT NULL DEFAULT '{}',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (model, version)
);

CREATE TABLE model_labels (
    model       TEXT NOT NULL,
    label       TEXT NOT NULL CHECK (label ~ '^[a-z0-9][a-z0-9._-]{0,63}$'),
    version     TEXT NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (model, label),
    FOREIGN KEY (model, version) REFERENCES model_versions (model, version)
);

-- Desired state: the versions that should be loaded, on every worker
-- (replicas NULL) or on that many.
CREATE TABLE model_loads (
    model        TEXT NOT NULL,
    version      TEXT NOT NULL,
    replicas     INT CHECK (replicas IS NULL OR replicas > 0),
    requested_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (model, version),
    FOREIGN KEY (model, version) REFERENCES model_versions (model, version)
);

-- Observed state: each version on each worker.
CREATE TABLE model_replicas (
    worker_id   TEXT NOT NULL,
    model       TEXT NOT NULL,
    version     TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('loading', 'warming', 'ready', 'draining', 'failed', 'unloaded')),
    reason      TEXT,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (worker_id, model, version)
);

-- The exact version that ran each job, and each usage record.
ALTER TABLE jobs ADD COLUMN model_version TEXT;
ALTER TABLE usage_records ADD COLUMN model_version TEXT;

-- A fresh install registers the versions the fetched model files provide,
-- each with its `stable` label; stable versions load on every worker.
INSERT INTO models (name, kind) VALUES
    ('echo', 'echo'),
    ('all-minilm-l6-v2', 'embedder'),
    ('smollm2-135m-instruct', 'chat');
INSERT INTO model_versions (model, version, path, settings) VALUES
    ('echo', 'builtin', NULL, '{}'),
    ('all-minilm-l6-v2', 'f16', 'all-minilm-l6-v2', '{"precision": "f16"}'),
    ('smollm2-135m-instruct', 'q4_1', 'smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf', '{}');
INSERT INTO model_labels (model, label, version) VALUES
    ('echo', 'stable', 'builtin'),
    ('all-minilm-l6-v2', 'stable', 'f16'),
    ('smollm2-135m-instruct', 'stable', 'q4_1');
INSERT INTO model_loads (model, version, replicas) VALUES
    ('echo', 'builtin', NULL),
    ('all-minilm-l6-v2', 'f16', NULL),
    ('smollm2-135m-instruct', 'q4_1', NULL);

-- A withdrawn version drains until none of its jobs is unfinished.
CREATE INDEX jobs_unfinished_version ON jobs (model, model_version)
    WHERE status IN ('queued', 'dispatched', 'running');
