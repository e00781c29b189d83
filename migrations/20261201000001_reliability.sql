-- Attempt numbers are never reused: `attempts` numbers every dispatch and
-- only grows (a dispatch that never reached its worker is not refunded any
-- more); `starts` counts the attempts that began to run, which is what
-- MAAS_SCHEDULER_MAX_ATTEMPTS limits.
ALTER TABLE jobs ADD COLUMN starts integer NOT NULL DEFAULT 0;
UPDATE jobs SET starts = attempts WHERE status = 'running';

-- The reply queue of the API instance holding a sync or streaming caller,
-- so a job re-queued after its worker was lost (or rebuilt by a new
-- scheduler) still reaches its caller.
ALTER TABLE jobs ADD COLUMN reply_to text;
