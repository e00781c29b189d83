-- Per-key rate limits, on top of the tenant's. NULL = no limit of the key's own.
ALTER TABLE api_keys ADD COLUMN rpm BIGINT, ADD COLUMN tpm BIGINT;

-- What admission charged a job: its tokens-per-minute estimate (settled in
-- Redis when it ends) and its token-budget reservation, with the budget
-- period it was reserved in (settled in `budget_ledger` when it ends).
ALTER TABLE jobs
    ADD COLUMN rate_tokens BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN budget_tokens BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN budget_period_start TIMESTAMPTZ;

-- The token-budget ledger: per tenant and budget period, what unfinished jobs
-- hold (`reserved`) and what finished jobs used (`spent`). Admission adds to
-- `reserved` only while spent + reserved + the job's bound fits the budget,
-- under the tenant's admission lock; so the budget holds exactly, and a Redis
-- restart changes nothing.
CREATE TABLE budget_ledger (
    tenant_id     UUID NOT NULL REFERENCES tenants (id),
    period_start  TIMESTAMPTZ NOT NULL,
    reserved      BIGINT NOT NULL DEFAULT 0,
    spent         BIGINT NOT NULL DEFAULT 0,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, period_start)
);

-- Settlement: when a job holding a reservation reaches a final state, by
-- whatever path (a worker's result, a cancel, expiry, a lost worker), its
-- reservation is released and its recorded tokens are spent, in the same
-- transaction as the transition. A job reaches a final state once, so it is
-- settled once.
CREATE FUNCTION settle_budget() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE budget_ledger
    SET reserved = reserved - NEW.budget_tokens,
        spent = spent + COALESCE((NEW.usage ->> 'prompt_tokens')::BIGINT, 0)
                      + COALESCE((NEW.usage ->> 'completion_tokens')::BIGINT, 0),
        updated_at = now()
    WHERE tenant_id = NEW.tenant_id AND period_start = NEW.budget_period_start;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_settle_budget
    AFTER UPDATE OF status ON jobs
    FOR EACH ROW
    WHEN (OLD.status IN ('queued', 'dispatched', 'running')
          AND NEW.status IN ('succeeded', 'failed', 'cancelled', 'expired')
          AND NEW.budget_period_start IS NOT NULL)
    EXECUTE FUNCTION settle_budget();

-- Queue-time statistics over the last hour, per tenant.
CREATE INDEX jobs_tenant_dispatched ON jobs (tenant_id, dispatched_at) WHERE dispatched_at IS NOT NULL;
