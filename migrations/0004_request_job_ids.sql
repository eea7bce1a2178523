-- A request lists the jobs it carried, so a verdict finds them by primary key. This replaces the
-- index on revocation_jobs.request_id: it took an entry per job at a random place on every
-- Revoke call and never shrank, which cost more than a tenth of the worker's CPU.
-- Jobs keep request_id (the public contract); a verdict settles the listed jobs that still carry it.

ALTER TABLE revoke_requests ADD COLUMN job_ids TEXT NOT NULL DEFAULT '[]';

-- Requests recorded before this migration: list their jobs (the index still exists here).
UPDATE revoke_requests
SET job_ids = (SELECT json_group_array(id) FROM revocation_jobs AS j
               WHERE j.request_id = revoke_requests.request_id);

DROP INDEX revocation_jobs_request;

-- Retention deletes finished jobs by age in short chunks; without this each chunk, and every
-- pass that finds nothing, scanned the whole table while holding the write lock. Only finished
-- jobs (completed or failed) have finished_at, so a job enters this index once, when it
-- finishes, at its end (finished_at grows); `finished_at < ?` implies the partial condition.
CREATE INDEX revocation_jobs_finished ON revocation_jobs (finished_at)
    WHERE finished_at IS NOT NULL;
