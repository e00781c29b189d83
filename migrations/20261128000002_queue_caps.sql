-- Counting a tenant's unfinished jobs at admission (the max_queued cap).
CREATE INDEX jobs_tenant_unfinished ON jobs (tenant_id) WHERE status IN ('queued', 'dispatched', 'running');
