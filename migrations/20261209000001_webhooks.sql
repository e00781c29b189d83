-- Webhooks (docs/webhooks.md). A tenant's endpoints, each with the event
-- types it wants and its signing secret (a symmetric key: it must be usable
-- to sign, so it is stored, shown once, and never logged). After a rotation
-- that keeps the old secret, deliveries carry a signature by each until
-- `previous_secret_until`.
CREATE TABLE webhook_endpoints (
    id                    TEXT PRIMARY KEY,
    tenant_id             UUID NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name                  TEXT NOT NULL,
    url                   TEXT NOT NULL,
    event_types           TEXT[] NOT NULL,
    secret                TEXT NOT NULL,
    previous_secret       TEXT,
    previous_secret_until TIMESTAMPTZ,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_by_tenant ON webhook_endpoints (tenant_id, created_at, id);

-- One event to one endpoint: written in the transaction that ends the batch
-- (nothing is lost), then delivered at least once by any API replica, with
-- backoff. `payload` is the exact body every attempt sends and signs.
CREATE TABLE webhook_deliveries (
    id               TEXT PRIMARY KEY,
    event_id         TEXT NOT NULL,
    endpoint_id      TEXT NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    tenant_id        UUID NOT NULL,
    event_type       TEXT NOT NULL,
    payload          TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         INT NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ,
    last_status_code INT,
    last_error       TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    ended_at         TIMESTAMPTZ,
    UNIQUE (event_id, endpoint_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint_id, created_at DESC);
CREATE INDEX webhook_deliveries_ended ON webhook_deliveries (ended_at) WHERE status <> 'pending';

-- Every attempt, for the delivery log.
CREATE TABLE webhook_attempts (
    delivery_id TEXT NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt     INT NOT NULL,
    at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    status_code INT,
    error       TEXT,
    duration_ms INT NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);

-- A batch with the 1h completion window: its lines are served before the
-- same tenant's other batch-lane work (fair share across tenants unchanged).
ALTER TABLE jobs ADD COLUMN urgent BOOLEAN NOT NULL DEFAULT false;

-- When a batch's first line ended (its time to first line is observed once).
ALTER TABLE batches ADD COLUMN first_line_at TIMESTAMPTZ;
