//! The store's hot-path statements on a real SQLite file: what a claim returns and what recording
//! an accepted call writes, including the cases the dispatcher never makes on purpose.

use std::time::Duration;

use lsq_revoker::store::{CallEnd, NewJob, Store};

async fn store_with(jobs: usize) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("queue.db").display());
    let store = Store::open(&url).await.expect("open");
    let rows: Vec<NewJob> = (0..jobs)
        .map(|n| NewJob {
            user_id: format!("0203f172-8642-11e7-9bed-{n:012x}"),
            entity_id: (869_000 + n).to_string(),
            context_entity_id: "9a0e8f2c-1b7d-4c55-8f5e-2b8d6f0c1a11".to_owned(),
            access_type: 1,
        })
        .collect();
    store.insert_jobs(&rows).await.expect("insert");
    (dir, store)
}

async fn statuses(store: &Store) -> Vec<(i64, String, Option<String>)> {
    sqlx::query_as("SELECT id, status, claimed_by FROM revocation_jobs ORDER BY id")
        .fetch_all(store.pool())
        .await
        .expect("read jobs")
}

#[tokio::test]
async fn a_claim_takes_due_pending_jobs_oldest_first_and_returns_exactly_those() {
    let (_dir, store) = store_with(7).await;
    // Job 2 waits for a retry, job 3 is already failed: neither may be claimed.
    sqlx::query("UPDATE revocation_jobs SET run_after = 10000 WHERE id = 2")
        .execute(store.pool())
        .await
        .expect("delay");
    sqlx::query("UPDATE revocation_jobs SET status = 'failed' WHERE id = 3")
        .execute(store.pool())
        .await
        .expect("fail");

    let first = store.claim("owner-a", 5000, 3).await.expect("claim");
    let second = store.claim("owner-a", 5000, 3).await.expect("claim");
    let third = store.claim("owner-a", 5000, 3).await.expect("claim");

    let ids = |rows: &[lsq_revoker::job::JobRow]| rows.iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(&first), [1, 4, 5]);
    assert_eq!(ids(&second), [6, 7], "same owner, same millisecond");
    assert!(third.is_empty());
    assert_eq!(first[0].entity_id, "869000");
    let held: Vec<i64> = statuses(&store)
        .await
        .into_iter()
        .filter(|(_, status, owner)| status == "in_flight" && owner.as_deref() == Some("owner-a"))
        .map(|(id, _, _)| id)
        .collect();
    assert_eq!(held, [1, 4, 5, 6, 7]);

    let later = store.claim("owner-a", 10_000, 3).await.expect("claim");
    assert_eq!(ids(&later), [2], "due once its run_after has come");
}

#[tokio::test]
async fn recording_an_accepted_call_twice_lists_each_job_once() {
    let (_dir, store) = store_with(3).await;
    let claimed = store.claim("owner-a", 1000, 10).await.expect("claim");
    let ids: Vec<i64> = claimed.iter().map(|job| job.id).collect();
    let call = store
        .record_call_start("revoke", 1000, ids.len())
        .await
        .expect("call");
    let end = CallEnd {
        call,
        http_status: Some(200),
        latency: Duration::from_millis(12),
        request_id: Some("req-1"),
    };
    // As after a write that failed late and was retried whole.
    for _ in 0..2 {
        store
            .mark_submitted(&ids, &end, "req-1", 1100, Some(4000))
            .await
            .expect("record");
    }

    let (count, listed): (i64, String) =
        sqlx::query_as("SELECT job_count, job_ids FROM revoke_requests WHERE request_id = 'req-1'")
            .fetch_one(store.pool())
            .await
            .expect("request row");
    assert_eq!(count, 3);
    let mut listed: Vec<i64> = serde_json::from_str(&listed).expect("json");
    listed.sort_unstable();
    assert_eq!(listed, ids);
    let jobs: Vec<(String, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT status, request_id, claimed_by FROM revocation_jobs")
            .fetch_all(store.pool())
            .await
            .expect("jobs");
    assert!(
        jobs.iter()
            .all(|job| job == &("submitted".to_owned(), Some("req-1".to_owned()), None))
    );
    let (status, latency, request): (i64, i64, String) =
        sqlx::query_as("SELECT http_status, latency_ms, request_id FROM api_calls WHERE id = ?1")
            .bind(call)
            .fetch_one(store.pool())
            .await
            .expect("call row");
    assert_eq!((status, latency, request.as_str()), (200, 12, "req-1"));
}

#[tokio::test]
async fn with_polling_off_an_accepted_call_records_no_request() {
    let (_dir, store) = store_with(2).await;
    let ids: Vec<i64> = store
        .claim("owner-a", 1000, 10)
        .await
        .expect("claim")
        .iter()
        .map(|job| job.id)
        .collect();
    let call = store
        .record_call_start("revoke", 1000, 2)
        .await
        .expect("call");
    let end = CallEnd {
        call,
        http_status: Some(200),
        latency: Duration::ZERO,
        request_id: Some("req-2"),
    };
    store
        .mark_submitted(&ids, &end, "req-2", 1100, None)
        .await
        .expect("record");
    let requests: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM revoke_requests")
        .fetch_one(store.pool())
        .await
        .expect("count");
    assert_eq!(requests, 0);
    assert!(
        statuses(&store)
            .await
            .iter()
            .all(|(_, status, _)| status == "submitted")
    );
}
