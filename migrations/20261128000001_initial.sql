-- The one schema for every service. Postgres is the source of truth; Redis and
-- RabbitMQ only hold what can be rebuilt from these tables.

CREATE TABLE tenants (
    id          UUID PRIMARY KEY,
    name        TEXT NOT NULL,
    -- Fair-share weight: a tenant of weight 2 gets twice the dispatches of a
    -- tenant of weight 1 when both have work queued.
    weight      INTEGER NOT NULL DEFAULT 1 CHECK (weight BETWEEN 1 AND 1000),
    disabled    BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at  TIMESTAMPTZ
);
CREATE UNIQUE INDEX tenants_name_live ON tenants (name) WHERE deleted_at IS NULL;

CREATE TABLE api_keys (
    id            UUID PRIMARY KEY,
    tenant_id     UUID NOT NULL REFERENCES tenants (id),
    name          TEXT,
    -- Short public part of the key, used to find the row; never enough to authenticate.
    prefix        TEXT NOT NULL UNIQUE,
    -- SHA-256 of the whole secret key, hex. The secret itself is never stored.
    secret_hash   TEXT NOT NULL,
    scopes        TEXT[],
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at    TIMESTAMPTZ,
    revoked_at    TIMESTAMPTZ,
    last_used_at  TIMESTAMPTZ
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

-- Stored by the admin API now; enforced by the limits work. NULL = unlimited.
CREATE TABLE quotas (
    tenant_id       UUID PRIMARY KEY REFERENCES tenants (id),
    rpm             BIGINT,
    tpm             BIGINT,
    max_concurrent  BIGINT,
    max_queued      BIGINT,
    token_budget    BIGINT,
    budget_period   TEXT,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE jobs (
    id               UUID PRIMARY KEY,
    tenant_id        UUID NOT NULL REFERENCES tenants (id),
    key_id           UUID REFERENCES api_keys (id),
    model            TEXT NOT NULL,
    mode             TEXT NOT NULL CHECK (mode IN ('sync', 'async')),
    lane             TEXT NOT NULL CHECK (lane IN ('interactive', 'batch')),
    status           TEXT NOT NULL CHECK (status IN
                       ('queued', 'dispatched', 'running', 'succeeded', 'failed', 'cancelled', 'expired')),
    input            JSONB,
    output           JSONB,
    error            JSONB,
    usage            JSONB,
    attempts         INTEGER NOT NULL DEFAULT 0,
    worker_id        TEXT,
    idempotency_key  TEXT,
    traceparent      TEXT,
    -- Bumped by every transition, so caches can refuse an older state.
    version          BIGINT NOT NULL DEFAULT 1,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    dispatched_at    TIMESTAMPTZ,
    started_at       TIMESTAMPTZ,
    finished_at      TIMESTAMPTZ,
    purged_at        TIMESTAMPTZ
);
CREATE UNIQUE INDEX jobs_idempotency ON jobs (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_tenant_created ON jobs (tenant_id, created_at DESC, id DESC);
CREATE INDEX jobs_queued ON jobs (created_at) WHERE status = 'queued';
CREATE INDEX jobs_active_worker ON jobs (worker_id) WHERE status IN ('dispatched', 'running');
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL AND purged_at IS NULL;

-- One row per finished job: the unique job_id makes a duplicate delivery unable
-- to count the same work twice.
CREATE TABLE usage_records (
    job_id             UUID PRIMARY KEY REFERENCES jobs (id),
    tenant_id          UUID NOT NULL REFERENCES tenants (id),
    key_id             UUID,
    model              TEXT NOT NULL,
    prompt_tokens      BIGINT NOT NULL DEFAULT 0,
    completion_tokens  BIGINT NOT NULL DEFAULT 0,
    compute_ms         BIGINT NOT NULL DEFAULT 0,
    worker_id          TEXT NOT NULL,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX usage_tenant_day ON usage_records (tenant_id, created_at);

CREATE TABLE workers (
    id                 TEXT PRIMARY KEY,
    models             JSONB NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('alive', 'draining', 'dead', 'gone')),
    registered_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_heartbeat_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE audit_log (
    id          BIGSERIAL PRIMARY KEY,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT,
    details     JSONB,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
