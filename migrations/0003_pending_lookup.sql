-- `enqueue` skips a revocation that is already waiting (pending or in flight), so re-running the
-- same file adds nothing. This index makes that check one lookup per row. It is deliberately not
-- partial on `status`: its columns never change after insert, so the dispatcher's status updates
-- never touch it (a partial index on status would be rewritten twice per job on the hot path).
-- GUIDs compare without case: the validator accepts either case, and producers may store either.

CREATE INDEX revocation_jobs_revocation ON revocation_jobs
    (entity_id, user_id COLLATE NOCASE, context_entity_id COLLATE NOCASE, access_type);
