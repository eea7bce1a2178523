-- One row per accepted Revoke call, followed until LeadSquared confirms it. A request is polled
-- once however many jobs it carries; its jobs point to it through revocation_jobs.request_id.

CREATE TABLE revoke_requests (
    request_id     TEXT    PRIMARY KEY,
    job_count      INTEGER NOT NULL,
    sent_at        INTEGER NOT NULL,
    polls          INTEGER NOT NULL DEFAULT 0,
    last_polled_at INTEGER,
    -- when the next Status/Get is due; while a poll is in flight, when to retry it if no answer is recorded
    next_poll_at   INTEGER NOT NULL,
    share_status   INTEGER,
    response_text  TEXT,
    error_message  TEXT,
    -- awaiting: no verdict yet; completed / failed: the verdict, applied to the jobs;
    -- split: the request reported an error and its jobs were resubmitted in halves
    outcome        TEXT    NOT NULL DEFAULT 'awaiting'
                   CHECK (outcome IN ('awaiting', 'completed', 'failed', 'split')),
    last_error     TEXT,
    finished_at    INTEGER
);

CREATE INDEX revoke_requests_due ON revoke_requests (outcome, next_poll_at);
CREATE INDEX revocation_jobs_request ON revocation_jobs (request_id);
