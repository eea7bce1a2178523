//! Every SQL statement the service runs, next to the migrations it depends on.
//!
//! Producers write into the same SQLite file while the dispatcher works, so the database runs in
//! WAL mode with a busy timeout, and every write here is one short statement, never a
//! transaction held across a round trip to this process; recording the outcome of a call touches
//! all its jobs at once through `json_each`, never row by row. Statements that always go
//! together are sent as one query (one round trip to sqlx's SQLite thread), each still
//! committing on its own.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::job::{JobId, JobRow};

/// Producers and operators get this long to wait for a write lock before SQLite says "busy".
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The error of a store operation, naming what was being done.
#[derive(Debug, thiserror::Error)]
#[error("database: {action}: {source}")]
pub struct StoreError {
    action: &'static str,
    #[source]
    source: sqlx::Error,
}

type Result<T> = std::result::Result<T, StoreError>;

trait Context<T> {
    fn doing(self, action: &'static str) -> Result<T>;
}

impl<T, E: Into<sqlx::Error>> Context<T> for std::result::Result<T, E> {
    fn doing(self, action: &'static str) -> Result<T> {
        self.map_err(|err| StoreError {
            action,
            source: err.into(),
        })
    }
}

/// A row as a producer inserts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewJob {
    pub user_id: String,
    pub entity_id: String,
    pub context_entity_id: String,
    pub access_type: i64,
}

/// A job that is to be tried again later, or given up on.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Retry {
    pub id: JobId,
    /// Unix ms before which the job is not claimed again.
    pub run_after: i64,
}

/// A request whose status is due to be asked, as claimed for one poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueRequest {
    pub request_id: String,
    /// Polls made before this one.
    pub polls: u32,
    /// Unix ms of the Revoke call.
    pub sent_at: i64,
}

/// What the latest answer about a request said, recorded verbatim.
#[derive(Debug, Clone, Default)]
pub struct PollRecord<'a> {
    pub share_status: Option<i64>,
    pub response_text: Option<&'a str>,
    pub error_message: Option<&'a str>,
}

/// How a call ended, for the `api_calls` log.
#[derive(Debug, Clone, Copy)]
pub struct CallEnd<'a> {
    pub call: i64,
    pub http_status: Option<u16>,
    pub latency: Duration,
    pub request_id: Option<&'a str>,
}

/// Jobs per status, for the periodic summary and `until-idle`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StatusCounts {
    pub pending: u64,
    pub in_flight: u64,
    pub submitted: u64,
    pub completed: u64,
    pub failed: u64,
}

impl StatusCounts {
    pub fn total(&self) -> u64 {
        self.pending + self.in_flight + self.submitted + self.completed + self.failed
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    path: Option<PathBuf>,
}

impl Store {
    /// Open (creating the file and its directory if missing) without migrating.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .doing("reading database.url")?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            // statement journals of multi-row updates stay in memory, not in temp files
            .pragma("temp_store", "memory")
            // Checkpoint at a quarter of SQLite's default WAL size: the dispatcher, which writes
            // most, then does the checkpoints, and a producer's insert does not have to.
            .pragma("wal_autocheckpoint", "250");
        let path = Some(options.get_filename().to_path_buf())
            .filter(|path| !path.as_os_str().is_empty() && path.as_os_str() != ":memory:");
        if let Some(dir) = path.as_ref().and_then(|path| path.parent())
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(sqlx::Error::Io)
                .doing("creating the database directory")?;
        }
        let pool = one_connection()
            .connect_with(options)
            .await
            .doing("opening the database")?;
        Ok(Self { pool, path })
    }

    /// A second, read-only connection to the same database, for `/metrics` and `/healthz`: a
    /// scrape's counts scan the table, and on the dispatcher's one connection that scan would
    /// hold up its claims and records (and a long prune would make health time out). A reader
    /// writes nothing, so the dispatcher's page cache stays warm.
    pub async fn reader(&self, url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .doing("reading database.url")?
            .read_only(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = one_connection()
            .connect_with(options)
            .await
            .doing("opening a reader of the database")?;
        Ok(Self {
            pool,
            path: self.path.clone(),
        })
    }

    /// Open and bring the schema up to date.
    pub async fn open(url: &str) -> Result<Self> {
        let store = Self::connect(url).await?;
        store.migrate().await?;
        Ok(store)
    }

    pub async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("./migrations")
            .run(&self.pool)
            .await
            .doing("migrating the schema")
    }

    /// The database file, when it is one (not `:memory:`).
    pub fn path(&self) -> Option<&std::path::Path> {
        self.path.as_deref()
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Insert jobs in one transaction, as a producer would (the demo, tests, benchmarks).
    pub async fn insert_jobs(&self, jobs: &[NewJob]) -> Result<u64> {
        let json = serde_json::to_string(jobs).unwrap_or_else(|_| "[]".to_owned());
        sqlx::query(
            "INSERT INTO revocation_jobs (user_id, entity_id, context_entity_id, access_type)
             SELECT j.value ->> 'user_id', j.value ->> 'entity_id',
                    j.value ->> 'context_entity_id', j.value ->> 'access_type'
             FROM json_each(?1) AS j",
        )
        .bind(json)
        .execute(&self.pool)
        .await
        .doing("inserting jobs")
        .map(|done| done.rows_affected())
    }

    /// Return every `in_flight` job to `pending`. Only called by the dispatcher holding the
    /// database's dispatcher lock, so any such row belongs to a process that died.
    pub async fn release_stale_claims(&self, now: i64) -> Result<u64> {
        sqlx::query(
            "UPDATE revocation_jobs
             SET status = 'pending', claimed_by = NULL, claimed_at = NULL, updated_at = ?1
             WHERE status = 'in_flight'",
        )
        .bind(now)
        .execute(&self.pool)
        .await
        .doing("releasing stale claims")
        .map(|done| done.rows_affected())
    }

    /// Claim up to `limit` jobs that are due, oldest first.
    ///
    /// Producers share SQLite's one write lock, and a busy producer sleeps in growing steps, so
    /// the dispatcher holds that lock for single statements only, never across a round trip to
    /// this process. Every round trip to sqlx's SQLite thread costs two thread wake-ups, so the
    /// claim is one query of several statements, run back to back on that thread: note the due
    /// ids in a temporary table, move exactly those rows to `in_flight`, and read back the rows
    /// this claim holds (as one JSON array, not row by row, since each row sqlx streams crosses
    /// a thread). Only the dispatcher holding the database's lock moves jobs out of `pending`;
    /// if a row was changed by hand in between, it is simply not among the rows returned.
    ///
    /// The limit is cast because SQLite (3.54, as bundled) plans with the value of a bare
    /// `LIMIT ?` and then prepares the statement afresh each time it is bound (once per claim);
    /// the cast keeps one plan.
    pub async fn claim(&self, owner: &str, now: i64, limit: usize) -> Result<Vec<JobRow>> {
        // Read as bytes: a producer may have stored bytes that are not UTF-8 (a BLOB GUID, say),
        // and one such row must fail validation, not stop every claim after it.
        let claimed: Vec<u8> = sqlx::query_scalar(
            "CREATE TEMP TABLE IF NOT EXISTS claim_ids (id INTEGER PRIMARY KEY);
             DELETE FROM temp.claim_ids;
             INSERT INTO temp.claim_ids
                 SELECT id FROM revocation_jobs
                 WHERE status = 'pending' AND run_after <= ?2
                 ORDER BY id LIMIT CAST(?3 AS INTEGER);
             UPDATE revocation_jobs
             SET status = 'in_flight', claimed_by = ?1, claimed_at = ?2, updated_at = ?2
             WHERE id IN temp.claim_ids AND status = 'pending';
             SELECT json_group_array(json_array(id, CAST(user_id AS TEXT), CAST(entity_id AS TEXT),
                                                CAST(context_entity_id AS TEXT),
                                                CAST(access_type AS TEXT), attempts, created_at))
             FROM revocation_jobs
             WHERE id IN temp.claim_ids
               AND status = 'in_flight' AND claimed_by = ?1 AND claimed_at = ?2",
        )
        .bind(owner)
        .bind(now)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_one(&self.pool)
        .await
        .doing("claiming due jobs")?;
        parse_job_rows(&String::from_utf8_lossy(&claimed)).doing("reading claimed jobs")
    }

    /// The API accepted `call` carrying `ids`.
    ///
    /// One round trip of three single statements rather than one transaction, to keep each hold
    /// of the write lock short (see [`Store::claim`]). The request is recorded for status
    /// polling first (when `first_poll_at` is set), with the ids of its jobs, so no accepted
    /// request goes unfollowed; a crash right after it leaves a request none of whose jobs carry
    /// its id (polled and settled harmlessly: a verdict touches only jobs that carry it) and the
    /// jobs `in_flight`, which the next start sends again. Running it twice (a retry after a
    /// failed write) records each job once.
    pub async fn mark_submitted(
        &self,
        ids: &[JobId],
        call: &CallEnd<'_>,
        request_id: &str,
        now: i64,
        first_poll_at: Option<i64>,
    ) -> Result<()> {
        // A request id LeadSquared returned twice (never seen) keeps every job it carried.
        sqlx::query(
            "INSERT INTO revoke_requests (request_id, job_count, job_ids, sent_at, next_poll_at)
             SELECT ?1, json_array_length(?2), ?2, ?3, ?4 WHERE ?4 IS NOT NULL
             ON CONFLICT (request_id) DO UPDATE
             SET (job_count, job_ids) =
                 (SELECT COUNT(*), json_group_array(value)
                  FROM (SELECT value FROM json_each(revoke_requests.job_ids)
                        UNION SELECT value FROM json_each(excluded.job_ids)));
             UPDATE revocation_jobs
             SET status = 'submitted', request_id = ?1, attempts = attempts + 1,
                 last_error = NULL, submitted_at = ?3, updated_at = ?3,
                 claimed_by = NULL, claimed_at = NULL
             WHERE id IN (SELECT value FROM json_each(?2));
             UPDATE api_calls SET http_status = ?6, latency_ms = ?7, request_id = ?1 WHERE id = ?5",
        )
        .bind(request_id)
        .bind(json_ids(ids))
        .bind(now)
        .bind(first_poll_at)
        .bind(call.call)
        .bind(call.http_status)
        .bind(latency_ms(call.latency))
        .execute(&self.pool)
        .await
        .doing("recording submitted jobs")
        .map(drop)
    }

    /// Follow requests whose jobs were submitted while status polling was off (they have no
    /// `revoke_requests` row), first polled at `first_poll_at`; returns how many. One scan of the
    /// table, at start-up.
    pub async fn adopt_unfollowed_requests(&self, first_poll_at: i64) -> Result<u64> {
        sqlx::query(
            "INSERT INTO revoke_requests (request_id, job_count, job_ids, sent_at, next_poll_at)
             SELECT request_id, COUNT(*), json_group_array(id), MIN(submitted_at), ?1
             FROM revocation_jobs
             WHERE status = 'submitted' AND request_id IS NOT NULL
               AND request_id NOT IN (SELECT request_id FROM revoke_requests)
             GROUP BY request_id",
        )
        .bind(first_poll_at)
        .execute(&self.pool)
        .await
        .doing("following requests submitted while polling was off")
        .map(|done| done.rows_affected())
    }

    /// Claim the request whose poll is most overdue: its `next_poll_at` moves to `retry_at`, so
    /// that if no answer is ever recorded (a crash) it is polled again then.
    pub async fn claim_due_request(&self, now: i64, retry_at: i64) -> Result<Option<DueRequest>> {
        let row: Option<(String, i64, i64)> = sqlx::query_as(
            "UPDATE revoke_requests SET next_poll_at = ?2
             WHERE request_id = (SELECT request_id FROM revoke_requests
                                 WHERE outcome = 'awaiting' AND next_poll_at <= ?1
                                 ORDER BY next_poll_at LIMIT 1)
             RETURNING request_id, polls, sent_at",
        )
        .bind(now)
        .bind(retry_at)
        .fetch_optional(&self.pool)
        .await
        .doing("claiming a status poll")?;
        Ok(row.map(|(request_id, polls, sent_at)| DueRequest {
            request_id,
            polls: u32::try_from(polls).unwrap_or(u32::MAX),
            sent_at,
        }))
    }

    /// When the next poll is due (Unix ms), if any request awaits a verdict.
    pub async fn next_poll_due(&self) -> Result<Option<i64>> {
        sqlx::query_scalar(
            "SELECT MIN(next_poll_at) FROM revoke_requests WHERE outcome = 'awaiting'",
        )
        .fetch_one(&self.pool)
        .await
        .doing("looking for due polls")
    }

    /// A poll was made without a verdict: record what it said and when to ask again.
    pub async fn record_poll(
        &self,
        request_id: &str,
        answer: &PollRecord<'_>,
        last_error: Option<&str>,
        next_poll_at: i64,
        now: i64,
    ) -> Result<()> {
        let poll = Poll {
            answer,
            last_error,
            outcome: None,
            next_poll_at: Some(next_poll_at),
        };
        write_poll(&self.pool, request_id, &poll, now).await
    }

    /// A verdict: the request and every job it carried end `completed` or `failed` (with
    /// `reason`), in one transaction. Returns each settled job's `created_at`, for the
    /// insert-to-`completed` latency (`None` where a producer stored something other than ms).
    pub async fn settle_request(
        &self,
        request_id: &str,
        answer: &PollRecord<'_>,
        failure: Option<&str>,
        now: i64,
    ) -> Result<Vec<Option<i64>>> {
        let (outcome, status) = match failure {
            None => ("completed", "completed"),
            Some(_) => ("failed", "failed"),
        };
        let mut tx = self.pool.begin().await.doing("settling a request")?;
        let poll = Poll {
            answer,
            last_error: failure,
            outcome: Some(outcome),
            next_poll_at: None,
        };
        write_poll(&mut *tx, request_id, &poll, now).await?;
        let jobs = sqlx::query_scalar(
            "UPDATE revocation_jobs
             SET status = ?2, last_error = ?3, finished_at = ?4, updated_at = ?4
             WHERE id IN (SELECT value FROM json_each((SELECT job_ids FROM revoke_requests
                                                       WHERE request_id = ?1)))
               AND request_id = ?1 AND status = 'submitted'
             RETURNING CASE WHEN typeof(created_at) IN ('integer', 'real')
                            THEN CAST(created_at AS INTEGER) END",
        )
        .bind(request_id)
        .bind(status)
        .bind(failure)
        .bind(now)
        .fetch_all(&mut *tx)
        .await
        .doing("settling a request's jobs")?;
        tx.commit().await.doing("settling a request")?;
        Ok(jobs)
    }

    /// A request reported an error for one of several items: mark it `split` and claim its
    /// jobs back, so the dispatcher can resubmit them in halves.
    pub async fn split_request(
        &self,
        request_id: &str,
        answer: &PollRecord<'_>,
        owner: &str,
        now: i64,
    ) -> Result<Vec<JobRow>> {
        let mut tx = self.pool.begin().await.doing("splitting a request")?;
        let poll = Poll {
            answer,
            last_error: None,
            outcome: Some("split"),
            next_poll_at: None,
        };
        write_poll(&mut *tx, request_id, &poll, now).await?;
        let rows = sqlx::query(
            "UPDATE revocation_jobs
             SET status = 'in_flight', claimed_by = ?2, claimed_at = ?3, updated_at = ?3
             WHERE id IN (SELECT value FROM json_each((SELECT job_ids FROM revoke_requests
                                                       WHERE request_id = ?1)))
               AND request_id = ?1 AND status = 'submitted'
             RETURNING id, CAST(user_id AS TEXT), CAST(entity_id AS TEXT),
                       CAST(context_entity_id AS TEXT), CAST(access_type AS TEXT), attempts,
                       created_at",
        )
        .bind(request_id)
        .bind(owner)
        .bind(now)
        .fetch_all(&mut *tx)
        .await
        .doing("claiming a split request's jobs")?;
        let jobs = job_rows(rows).doing("reading a split request's jobs")?;
        tx.commit().await.doing("splitting a request")?;
        Ok(jobs)
    }

    /// The jobs a request still holds (`submitted` under its id), read without claiming them.
    pub async fn request_jobs(&self, request_id: &str) -> Result<Vec<JobRow>> {
        let rows = sqlx::query(
            "SELECT id, CAST(user_id AS TEXT), CAST(entity_id AS TEXT),
                    CAST(context_entity_id AS TEXT), CAST(access_type AS TEXT), attempts, created_at
             FROM revocation_jobs
             WHERE id IN (SELECT value FROM json_each((SELECT job_ids FROM revoke_requests
                                                       WHERE request_id = ?1)))
               AND request_id = ?1 AND status = 'submitted'",
        )
        .bind(request_id)
        .fetch_all(&self.pool)
        .await
        .doing("reading a request's jobs")?;
        job_rows(rows).doing("reading a request's jobs")
    }

    /// Requests still waiting for a verdict.
    pub async fn awaiting_requests(&self) -> Result<u64> {
        let count: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM revoke_requests WHERE outcome = 'awaiting'")
                .fetch_one(&self.pool)
                .await
                .doing("counting awaiting requests")?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Jobs that can never succeed as they are: each with its own reason.
    pub async fn mark_failed(&self, failures: &[(JobId, String)], now: i64) -> Result<()> {
        if failures.is_empty() {
            return Ok(());
        }
        let json = serde_json::to_string(
            &failures
                .iter()
                .map(|(id, reason)| serde_json::json!({ "id": id, "reason": reason }))
                .collect::<Vec<_>>(),
        )
        .unwrap_or_default();
        sqlx::query(
            "UPDATE revocation_jobs
             SET status = 'failed', last_error = j.value ->> 'reason',
                 finished_at = ?2, updated_at = ?2, claimed_by = NULL, claimed_at = NULL
             FROM json_each(?1) AS j
             WHERE revocation_jobs.id = j.value ->> 'id'",
        )
        .bind(json)
        .bind(now)
        .execute(&self.pool)
        .await
        .doing("recording failed jobs")
        .map(drop)
    }

    /// A call failed in a way worth retrying: count the attempt, then either schedule the next
    /// one or, once `max_attempts` calls were made, give up with the error as the reason.
    pub async fn mark_retry(
        &self,
        retries: &[Retry],
        error: &str,
        max_attempts: u32,
        now: i64,
    ) -> Result<()> {
        if retries.is_empty() {
            return Ok(());
        }
        let json = serde_json::to_string(retries).unwrap_or_default();
        sqlx::query(
            "UPDATE revocation_jobs
             SET attempts = attempts + 1,
                 status = CASE WHEN attempts + 1 >= ?3 THEN 'failed' ELSE 'pending' END,
                 last_error = CASE WHEN attempts + 1 >= ?3
                                   THEN 'gave up after ' || (attempts + 1) || ' attempts; last error: ' || ?2
                                   ELSE ?2 END,
                 finished_at = CASE WHEN attempts + 1 >= ?3 THEN ?4 END,
                 run_after = j.value ->> 'run_after', updated_at = ?4,
                 claimed_by = NULL, claimed_at = NULL
             FROM json_each(?1) AS j
             WHERE revocation_jobs.id = j.value ->> 'id'",
        )
        .bind(json)
        .bind(error)
        .bind(max_attempts)
        .bind(now)
        .execute(&self.pool)
        .await
        .doing("scheduling retries")
        .map(drop)
    }

    /// Put claimed jobs back untouched: the call was not made, or did not count against them
    /// (rate limited, bad credentials, shutting down).
    pub async fn release(&self, ids: &[JobId], now: i64) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE revocation_jobs
             SET status = 'pending', claimed_by = NULL, claimed_at = NULL, updated_at = ?2
             WHERE id IN (SELECT value FROM json_each(?1)) AND status = 'in_flight'",
        )
        .bind(json_ids(ids))
        .bind(now)
        .execute(&self.pool)
        .await
        .doing("releasing claimed jobs")
        .map(drop)
    }

    /// Release every job this dispatcher still holds (shutting down).
    pub async fn release_claims_of(&self, owner: &str, now: i64) -> Result<u64> {
        sqlx::query(
            "UPDATE revocation_jobs
             SET status = 'pending', claimed_by = NULL, claimed_at = NULL, updated_at = ?2
             WHERE status = 'in_flight' AND claimed_by = ?1",
        )
        .bind(owner)
        .bind(now)
        .execute(&self.pool)
        .await
        .doing("releasing claimed jobs")
        .map(|done| done.rows_affected())
    }

    /// Record that a call starts now, before it is sent, so a crash cannot hide it from the
    /// limiter after a restart.
    pub async fn record_call_start(
        &self,
        endpoint: &str,
        started_at: i64,
        jobs: usize,
    ) -> Result<i64> {
        sqlx::query_scalar(
            "INSERT INTO api_calls (started_at, endpoint, job_count) VALUES (?1, ?2, ?3) RETURNING id",
        )
        .bind(started_at)
        .bind(endpoint)
        .bind(i64::try_from(jobs).unwrap_or(i64::MAX))
        .fetch_one(&self.pool)
        .await
        .doing("recording a call")
    }

    pub async fn record_call_end(&self, end: &CallEnd<'_>) -> Result<()> {
        sqlx::query(
            "UPDATE api_calls SET http_status = ?2, latency_ms = ?3, request_id = ?4 WHERE id = ?1",
        )
        .bind(end.call)
        .bind(end.http_status)
        .bind(latency_ms(end.latency))
        .bind(end.request_id)
        .execute(&self.pool)
        .await
        .doing("recording a call's answer")
        .map(drop)
    }

    /// Start times (Unix ms) of the calls made since `since`.
    pub async fn call_starts_since(&self, since: i64) -> Result<Vec<i64>> {
        sqlx::query_scalar(
            "SELECT started_at FROM api_calls WHERE started_at >= ?1 ORDER BY started_at",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await
        .doing("reading recent calls")
    }

    /// Forget calls older than `before`; they no longer matter to the limiter.
    pub async fn prune_calls(&self, before: i64) -> Result<u64> {
        sqlx::query("DELETE FROM api_calls WHERE started_at < ?1")
            .bind(before)
            .execute(&self.pool)
            .await
            .doing("pruning the call log")
            .map(|done| done.rows_affected())
    }

    pub async fn status_counts(&self) -> Result<StatusCounts> {
        // One pass over the table, without the sort a `GROUP BY status` needs (there is no
        // index on status: it changes on every step of a job).
        let counts: (i64, i64, i64, i64, i64) = sqlx::query_as(
            "SELECT COUNT(*) FILTER (WHERE status = 'pending'),
                    COUNT(*) FILTER (WHERE status = 'in_flight'),
                    COUNT(*) FILTER (WHERE status = 'submitted'),
                    COUNT(*) FILTER (WHERE status = 'completed'),
                    COUNT(*) FILTER (WHERE status = 'failed')
             FROM revocation_jobs",
        )
        .fetch_one(&self.pool)
        .await
        .doing("counting jobs")?;
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        Ok(StatusCounts {
            pending: count(counts.0),
            in_flight: count(counts.1),
            submitted: count(counts.2),
            completed: count(counts.3),
            failed: count(counts.4),
        })
    }

    /// Whether any job is pending, due or not (one index probe).
    pub async fn any_pending(&self) -> Result<bool> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM revocation_jobs WHERE status = 'pending')")
            .fetch_one(&self.pool)
            .await
            .doing("looking for pending jobs")
    }

    /// When the earliest pending job becomes due (Unix ms), if any job is pending.
    pub async fn next_due(&self) -> Result<Option<i64>> {
        sqlx::query_scalar("SELECT MIN(run_after) FROM revocation_jobs WHERE status = 'pending'")
            .fetch_one(&self.pool)
            .await
            .doing("looking for due jobs")
    }
}

// ---- Enqueue: `lsq-revoker enqueue` adds checked jobs, skipping those already waiting. ----

impl Store {
    /// Insert `jobs` in one statement (so one short write transaction), skipping each job whose
    /// revocation is already `pending` or `in_flight`, and return how many were inserted.
    ///
    /// The check is per row against the index `revocation_jobs_revocation` (migration 0003),
    /// GUIDs compared without case as the validator reads them. Rows within `jobs` are not
    /// checked against each other (SQLite evaluates the `SELECT` before inserting): the caller
    /// passes distinct revocations.
    pub async fn enqueue_jobs(&self, jobs: &[NewJob]) -> Result<u64> {
        let json = serde_json::to_string(jobs).unwrap_or_else(|_| "[]".to_owned());
        sqlx::query(
            "INSERT INTO revocation_jobs (user_id, entity_id, context_entity_id, access_type)
             SELECT j.value ->> 'user_id', j.value ->> 'entity_id',
                    j.value ->> 'context_entity_id', j.value ->> 'access_type'
             FROM json_each(?1) AS j
             WHERE NOT EXISTS (
                 SELECT 1 FROM revocation_jobs AS w
                 WHERE w.entity_id = j.value ->> 'entity_id'
                   AND w.user_id = (j.value ->> 'user_id') COLLATE NOCASE
                   AND w.context_entity_id = (j.value ->> 'context_entity_id') COLLATE NOCASE
                   AND w.access_type = j.value ->> 'access_type'
                   AND w.status IN ('pending', 'in_flight'))",
        )
        .bind(json)
        .execute(&self.pool)
        .await
        .doing("enqueueing jobs")
        .map(|done| done.rows_affected())
    }
}

/// One poll's answer about a request, and what follows from it.
struct Poll<'a> {
    answer: &'a PollRecord<'a>,
    last_error: Option<&'a str>,
    /// The verdict, when there is one (`completed`, `failed`, `split`).
    outcome: Option<&'a str>,
    /// When to ask again, when there is no verdict.
    next_poll_at: Option<i64>,
}

/// Record a poll on its request: counted, the answer kept verbatim, the verdict if any.
async fn write_poll<'e>(
    executor: impl sqlx::SqliteExecutor<'e>,
    request_id: &str,
    poll: &Poll<'_>,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE revoke_requests
         SET polls = polls + 1, last_polled_at = ?2,
             next_poll_at = COALESCE(?3, next_poll_at),
             outcome = COALESCE(?4, outcome),
             finished_at = CASE WHEN ?4 IS NULL THEN finished_at ELSE ?2 END,
             share_status = COALESCE(?5, share_status),
             response_text = COALESCE(?6, response_text),
             error_message = COALESCE(?7, error_message),
             last_error = ?8
         WHERE request_id = ?1",
    )
    .bind(request_id)
    .bind(now)
    .bind(poll.next_poll_at)
    .bind(poll.outcome)
    .bind(poll.answer.share_status)
    .bind(poll.answer.response_text)
    .bind(poll.answer.error_message)
    .bind(poll.last_error)
    .execute(executor)
    .await
    .doing("recording a status poll")
    .map(drop)
}

/// Rows selected as `id, user_id, entity_id, context_entity_id, access_type, attempts,
/// created_at`, with the text columns cast so that whatever a producer stored can be read and
/// reported.
fn job_rows(rows: Vec<sqlx::sqlite::SqliteRow>) -> std::result::Result<Vec<JobRow>, sqlx::Error> {
    rows.into_iter()
        .map(|row| {
            Ok(JobRow {
                id: row.try_get(0)?,
                user_id: row.try_get::<Option<String>, _>(1)?.unwrap_or_default(),
                entity_id: row.try_get::<Option<String>, _>(2)?.unwrap_or_default(),
                context_entity_id: row.try_get::<Option<String>, _>(3)?.unwrap_or_default(),
                access_type: row.try_get::<Option<String>, _>(4)?.unwrap_or_default(),
                attempts: row.try_get(5)?,
                created_at: row
                    .try_get::<Option<f64>, _>(6)
                    .ok()
                    .flatten()
                    .map(|ms| ms as i64),
            })
        })
        .collect()
}

/// The same columns, as the JSON array of arrays that a claim returns.
fn parse_job_rows(json: &str) -> std::result::Result<Vec<JobRow>, sqlx::Error> {
    type Columns = (
        JobId,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        u32,
        serde_json::Value,
    );
    let rows: Vec<Columns> =
        serde_json::from_str(json).map_err(|err| sqlx::Error::Decode(Box::new(err)))?;
    Ok(rows
        .into_iter()
        .map(
            |(id, user_id, entity_id, context_entity_id, access_type, attempts, created_at)| {
                JobRow {
                    id,
                    user_id: user_id.unwrap_or_default(),
                    entity_id: entity_id.unwrap_or_default(),
                    context_entity_id: context_entity_id.unwrap_or_default(),
                    access_type: access_type.unwrap_or_default(),
                    attempts,
                    // a producer may have stored anything; only Unix ms are measured
                    created_at: created_at.as_f64().map(|ms| ms as i64),
                }
            },
        )
        .collect())
}

/// A pool of one connection, as both the dispatcher's store and a reader use.
///
/// One connection: the dispatcher's statements are sequential anyway, and SQLite drops a
/// connection's page cache whenever another connection wrote, so a pool of several (handed out in
/// turn) would read every page afresh on each statement. No liveness ping when it is handed out:
/// sqlx's default makes a round trip to its SQLite thread before every statement, for a local
/// file that cannot have gone away.
fn one_connection() -> SqlitePoolOptions {
    SqlitePoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
}

fn latency_ms(latency: Duration) -> i64 {
    i64::try_from(latency.as_millis()).unwrap_or(i64::MAX)
}

fn json_ids(ids: &[JobId]) -> String {
    serde_json::to_string(ids).unwrap_or_else(|_| "[]".to_owned())
}

// ---- Operator queries: `stats`, `requeue`, `prune` and the daemon's retention. ----

/// Which `failed` jobs `requeue` moves back to `pending`; every given filter must match.
#[derive(Debug, Clone, Default)]
pub struct RequeueFilter {
    pub ids: Option<Vec<JobId>>,
    /// Substring of `last_error` (case-insensitive for ASCII).
    pub reason: Option<String>,
    /// Only jobs that failed before this Unix ms.
    pub failed_before: Option<i64>,
}

/// What `prune` removed (or would remove).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Pruned {
    pub completed_jobs: u64,
    pub failed_jobs: u64,
    pub requests: u64,
}

/// Deletes run in chunks this large, so producers and the worker never wait long for the lock.
const PRUNE_CHUNK: i64 = 1000;

impl Store {
    /// `created_at` of the oldest pending job.
    pub async fn oldest_pending(&self) -> Result<Option<i64>> {
        sqlx::query_scalar("SELECT MIN(created_at) FROM revocation_jobs WHERE status = 'pending'")
            .fetch_one(&self.pool)
            .await
            .doing("finding the oldest pending job")
    }

    /// Pending jobs waiting for a retry (not due before `now`), and when the first is due.
    pub async fn waiting_for_retry(&self, now: i64) -> Result<(u64, Option<i64>)> {
        let (count, next): (i64, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), MIN(run_after) FROM revocation_jobs
             WHERE status = 'pending' AND run_after > ?1",
        )
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .doing("counting jobs waiting for a retry")?;
        Ok((u64::try_from(count).unwrap_or(0), next))
    }

    /// `last_error` of failed jobs with their counts, most frequent first.
    pub async fn failure_reasons(&self) -> Result<Vec<(String, u64)>> {
        let rows: Vec<(Option<String>, i64)> = sqlx::query_as(
            "SELECT last_error, COUNT(*) FROM revocation_jobs WHERE status = 'failed'
             GROUP BY last_error ORDER BY COUNT(*) DESC",
        )
        .fetch_all(&self.pool)
        .await
        .doing("reading failure reasons")?;
        Ok(rows
            .into_iter()
            .map(|(reason, count)| {
                (
                    reason.unwrap_or_else(|| "(no reason recorded)".to_owned()),
                    u64::try_from(count).unwrap_or(0),
                )
            })
            .collect())
    }

    /// Calls started since `since`, and how many of them were answered 429.
    pub async fn calls_since(&self, since: i64) -> Result<(u64, u64)> {
        let (calls, limited): (i64, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), SUM(http_status = 429) FROM api_calls WHERE started_at >= ?1",
        )
        .bind(since)
        .fetch_one(&self.pool)
        .await
        .doing("counting recent calls")?;
        Ok((
            u64::try_from(calls).unwrap_or(0),
            u64::try_from(limited.unwrap_or(0)).unwrap_or(0),
        ))
    }

    /// Start time and HTTP status of the most recent answered call.
    pub async fn last_answer(&self) -> Result<Option<(i64, u16)>> {
        let row: Option<(i64, i64)> = sqlx::query_as(
            "SELECT started_at, http_status FROM api_calls
             WHERE http_status IS NOT NULL ORDER BY started_at DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .doing("reading the last answer")?;
        Ok(row.map(|(at, status)| (at, u16::try_from(status).unwrap_or(0))))
    }

    /// Of `ids`, those that are not `failed`, with their status (`None`: no such job).
    pub async fn not_failed(&self, ids: &[JobId]) -> Result<Vec<(JobId, Option<String>)>> {
        let found: Vec<(JobId, String)> = sqlx::query_as(
            "SELECT id, status FROM revocation_jobs WHERE id IN (SELECT value FROM json_each(?1))",
        )
        .bind(json_ids(ids))
        .fetch_all(&self.pool)
        .await
        .doing("looking up jobs")?;
        let found: BTreeMap<JobId, String> = found.into_iter().collect();
        Ok(ids
            .iter()
            .filter_map(|id| match found.get(id) {
                Some(status) if status == "failed" => None,
                other => Some((*id, other.cloned())),
            })
            .collect())
    }

    /// Put matching `failed` jobs back to `pending` with their attempts reset; with `dry_run`
    /// the same statement runs and is rolled back, so the ids are exactly those it would move.
    pub async fn requeue(
        &self,
        filter: &RequeueFilter,
        now: i64,
        dry_run: bool,
    ) -> Result<Vec<JobId>> {
        let mut tx = self.pool.begin().await.doing("requeueing jobs")?;
        let mut ids: Vec<JobId> = sqlx::query_scalar(
            "UPDATE revocation_jobs
             SET status = 'pending', attempts = 0, run_after = 0, last_error = NULL,
                 request_id = NULL, finished_at = NULL, updated_at = ?4
             WHERE status = 'failed'
               AND (?1 IS NULL OR id IN (SELECT value FROM json_each(?1)))
               AND (?2 IS NULL OR last_error LIKE '%' || ?2 || '%')
               AND (?3 IS NULL OR finished_at < ?3)
             RETURNING id",
        )
        .bind(filter.ids.as_deref().map(json_ids))
        .bind(filter.reason.as_deref())
        .bind(filter.failed_before)
        .bind(now)
        .fetch_all(&mut *tx)
        .await
        .doing("requeueing jobs")?;
        if dry_run {
            tx.rollback().await.doing("rolling back a dry run")?;
        } else {
            tx.commit().await.doing("requeueing jobs")?;
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// Delete `completed` jobs finished before `completed_before`, `failed` ones finished before
    /// `failed_before`, and finished requests no job refers to any more, in short chunks.
    pub async fn prune(
        &self,
        completed_before: Option<i64>,
        failed_before: Option<i64>,
        dry_run: bool,
    ) -> Result<Pruned> {
        if dry_run {
            let (completed, failed, requests): (i64, i64, i64) = sqlx::query_as(
                "SELECT
                   (SELECT COUNT(*) FROM revocation_jobs WHERE status = 'completed' AND finished_at < ?1),
                   (SELECT COUNT(*) FROM revocation_jobs WHERE status = 'failed' AND finished_at < ?2),
                   (SELECT COUNT(*) FROM revoke_requests r
                    WHERE r.outcome <> 'awaiting' AND r.finished_at < MAX(COALESCE(?1, 0), COALESCE(?2, 0))
                      AND NOT EXISTS (SELECT 1 FROM json_each(r.job_ids) AS e
                                      JOIN revocation_jobs j ON j.id = e.value
                                      WHERE j.request_id = r.request_id
                                        AND NOT ((j.status = 'completed' AND j.finished_at < ?1)
                                              OR (j.status = 'failed' AND j.finished_at < ?2))))",
            )
            .bind(completed_before)
            .bind(failed_before)
            .fetch_one(&self.pool)
            .await
            .doing("counting what prune would delete")?;
            let count = |n: i64| u64::try_from(n).unwrap_or(0);
            return Ok(Pruned {
                completed_jobs: count(completed),
                failed_jobs: count(failed),
                requests: count(requests),
            });
        }
        let mut pruned = Pruned::default();
        for (status, before) in [("completed", completed_before), ("failed", failed_before)] {
            let Some(before) = before else { continue };
            loop {
                let deleted = sqlx::query(
                    "DELETE FROM revocation_jobs WHERE id IN
                       (SELECT id FROM revocation_jobs WHERE status = ?1 AND finished_at < ?2 LIMIT ?3)",
                )
                .bind(status)
                .bind(before)
                .bind(PRUNE_CHUNK)
                .execute(&self.pool)
                .await
                .doing("pruning jobs")?
                .rows_affected();
                match status {
                    "completed" => pruned.completed_jobs += deleted,
                    _ => pruned.failed_jobs += deleted,
                }
                if deleted < PRUNE_CHUNK as u64 {
                    break;
                }
            }
        }
        let requests_before = completed_before.max(failed_before);
        if let Some(before) = requests_before {
            loop {
                let deleted = sqlx::query(
                    "DELETE FROM revoke_requests WHERE request_id IN
                       (SELECT r.request_id FROM revoke_requests r
                        WHERE r.outcome <> 'awaiting' AND r.finished_at < ?1
                          AND NOT EXISTS (SELECT 1 FROM json_each(r.job_ids) AS e
                                          JOIN revocation_jobs j ON j.id = e.value
                                          WHERE j.request_id = r.request_id)
                        LIMIT ?2)",
                )
                .bind(before)
                .bind(PRUNE_CHUNK)
                .execute(&self.pool)
                .await
                .doing("pruning requests")?
                .rows_affected();
                pruned.requests += deleted;
                if deleted < PRUNE_CHUNK as u64 {
                    break;
                }
            }
        }
        Ok(pruned)
    }
}
