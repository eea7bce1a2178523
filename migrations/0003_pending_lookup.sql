-- `enqueue` skips a revocation that is already waiting (pending or in flight), so re-running the
-- same file adds nothing. This partial index makes that check one lookup per row; it holds only
-- the waiting rows, so it stays small however long the table's history grows.
-- GUIDs compare without case: the validator accepts either case, and producers may store either.

CREATE INDEX revocation_jobs_waiting ON revocation_jobs
    (entity_id, user_id COLLATE NOCASE, context_entity_id COLLATE NOCASE, access_type)
    WHERE status IN ('pending', 'in_flight');
