-- The Files API (docs/batches.md): a tenant's uploaded batch input files and
-- the output and error files its batches write. Content lives in
-- `file_chunks` (the default store, shared by every API replica) or in an
-- object store bucket (`store = 'object'`, key in `object_key`).
CREATE TABLE files (
    id          TEXT PRIMARY KEY,
    tenant_id   UUID NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    purpose     TEXT NOT NULL CHECK (purpose IN ('batch', 'batch_output')),
    filename    TEXT NOT NULL,
    bytes       BIGINT NOT NULL,
    lines       BIGINT NOT NULL,
    sha256      TEXT NOT NULL,
    store       TEXT NOT NULL CHECK (store IN ('postgres', 'object')),
    object_key  TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ
);
CREATE INDEX files_by_tenant ON files (tenant_id, created_at, id);
CREATE INDEX files_by_expiry ON files (expires_at) WHERE expires_at IS NOT NULL;

-- A file's content in the Postgres store, in chunks of up to 1 MiB, numbered
-- from 0. The foreign key is checked at commit, so an upload streams its
-- chunks first and writes the file's row (with its size and checksum) last,
-- all in one transaction: an upload cut off midway leaves nothing.
CREATE TABLE file_chunks (
    file_id  TEXT NOT NULL REFERENCES files (id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    seq      INT NOT NULL,
    data     BYTEA NOT NULL,
    PRIMARY KEY (file_id, seq)
);
-- JSONL compresses, but compressing each MiB costs more CPU than the bytes
-- saved are worth here.
ALTER TABLE file_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

-- Per-tenant overrides of the platform's file limits (settings); a NULL
-- field takes the platform's default.
CREATE TABLE file_limits (
    tenant_id         UUID PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    max_file_bytes    BIGINT CHECK (max_file_bytes > 0),
    max_batch_lines   BIGINT CHECK (max_batch_lines > 0),
    max_stored_bytes  BIGINT CHECK (max_stored_bytes > 0),
    max_batch_enqueued_tokens BIGINT CHECK (max_batch_enqueued_tokens > 0),
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
