-- The Batch API (docs/batches.md). A batch's lines are jobs of its tenant in
-- the batch lane, stored in bulk at create (`jobs.batch_id`, `batch_line`
-- counting from 1, `custom_id`); the batch row holds what OpenAI's batch
-- object shows, and once it has ended, its final counts and usage (a line's
-- job may be purged later).
CREATE TABLE batches (
    id                  TEXT PRIMARY KEY,
    tenant_id           UUID NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    key_id              UUID,
    endpoint            TEXT NOT NULL,
    input_file_id       TEXT NOT NULL,
    completion_window   TEXT NOT NULL,
    model               TEXT,
    model_version       TEXT,
    status              TEXT NOT NULL CHECK (status IN ('validating', 'failed', 'in_progress', 'finalizing',
                                                        'completed', 'expired', 'cancelling', 'cancelled')),
    -- How an unfinished batch is to end: 'cancelled' or 'expired' (NULL: completed).
    ending              TEXT CHECK (ending IN ('cancelled', 'expired')),
    metadata            JSONB,
    errors              JSONB,
    output_file_id      TEXT,
    error_file_id       TEXT,
    output_expires_secs BIGINT,
    total               INT NOT NULL DEFAULT 0,
    completed_count     INT,
    failed_count        INT,
    usage               JSONB,
    idempotency_key     TEXT,
    request_hash        TEXT NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    in_progress_at      TIMESTAMPTZ,
    expires_at          TIMESTAMPTZ,
    finalizing_at       TIMESTAMPTZ,
    completed_at        TIMESTAMPTZ,
    failed_at           TIMESTAMPTZ,
    expired_at          TIMESTAMPTZ,
    cancelling_at       TIMESTAMPTZ,
    cancelled_at        TIMESTAMPTZ
);
CREATE UNIQUE INDEX batches_idempotency ON batches (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX batches_by_tenant ON batches (tenant_id, created_at, id);
CREATE INDEX batches_recent_requests ON batches (tenant_id, key_id, request_hash, created_at);
CREATE INDEX batches_open ON batches (created_at) WHERE status IN ('in_progress', 'finalizing', 'cancelling');

ALTER TABLE jobs
    ADD COLUMN batch_id TEXT,
    ADD COLUMN batch_line INT,
    ADD COLUMN custom_id TEXT,
    -- How the line's response body is shaped (for embeddings: base64 or not).
    ADD COLUMN batch_opts JSONB;
CREATE INDEX jobs_by_batch ON jobs (batch_id, batch_line) WHERE batch_id IS NOT NULL;
-- Admission counts only jobs outside batches (a batch is bounded on its own).
CREATE INDEX jobs_queued_unbatched ON jobs (created_at) WHERE status = 'queued' AND batch_id IS NULL;
CREATE INDEX jobs_tenant_unfinished_unbatched ON jobs (tenant_id)
    WHERE status IN ('queued', 'dispatched', 'running') AND batch_id IS NULL;
