//! Following accepted requests until LeadSquared confirms them.

mod common;

use std::time::Duration;

use common::{Harness, MAX_CALLS, WINDOW, job, jobs};
use lsq_revoker::app;
use lsq_revoker::simulator::{Endpoint, max_calls_in_any_window};
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(60);

const POLLING: [(&str, &str); 4] = [
    ("STATUS_POLL__ENABLED", "true"),
    ("STATUS_POLL__INITIAL_DELAY_MS", "200"),
    ("STATUS_POLL__MAX_INTERVAL_MS", "400"),
    ("STATUS_POLL__GIVE_UP_AFTER_MS", "30000"),
];

fn polling(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    POLLING.iter().chain(extra).copied().collect()
}

async fn requests(harness: &Harness) -> Vec<(String, String, i64, Option<String>)> {
    let store = harness.store().await;
    let rows = sqlx::query_as(
        "SELECT request_id, outcome, polls, last_error FROM revoke_requests ORDER BY sent_at",
    )
    .fetch_all(store.pool())
    .await
    .expect("requests read");
    store.close().await;
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_ends_completed_with_a_few_polls_per_request_and_no_429() {
    let harness =
        Harness::start(|config| config.processing_time = Duration::from_millis(300)).await;
    harness.seed(&jobs(100)).await;

    harness.run_until_idle(&polling(&[]), LIMIT).await;

    let states = harness.jobs().await;
    assert!(
        states.iter().all(|job| job.status == "completed"),
        "{states:?}"
    );
    let stats = harness.simulator.stats();
    assert_eq!(stats.rate_limited, 0);
    assert!(
        max_calls_in_any_window(&harness.arrivals(), WINDOW) <= MAX_CALLS,
        "polls share the window"
    );
    let requests = requests(&harness).await;
    assert_eq!(
        requests.len(),
        10,
        "one request per call, polled once whatever its job count"
    );
    assert!(
        requests
            .iter()
            .all(|(_, outcome, _, _)| outcome == "completed")
    );
    let polls: i64 = requests.iter().map(|(_, _, polls, _)| polls).sum();
    assert_eq!(polls as u64, stats.status_calls);
    assert!(
        polls <= 3 * 10,
        "{polls} polls for 10 requests processed in 300 ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_item_in_a_batch_is_isolated_and_the_others_complete() {
    let failing = job(3).entity_id;
    let harness = Harness::start(|config| {
        config.processing_time = Duration::from_millis(50);
        config.failing_lead_ids = [failing.clone()].into_iter().collect();
    })
    .await;
    harness.seed(&jobs(10)).await;

    harness.run_until_idle(&polling(&[]), LIMIT).await;

    for state in harness.jobs().await {
        if state.id == 4 {
            assert_eq!(state.status, "failed");
            let reason = state.last_error.unwrap_or_default();
            assert!(
                reason.contains(&failing) && reason.contains("could not apply"),
                "{reason}"
            );
        } else {
            assert_eq!(state.status, "completed", "{state:?}");
        }
    }
    let outcomes: Vec<String> = requests(&harness)
        .await
        .into_iter()
        .map(|(_, outcome, _, _)| outcome)
        .collect();
    assert!(
        outcomes.contains(&"split".to_owned()) && outcomes.contains(&"failed".to_owned()),
        "{outcomes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_differing_in_guid_case_fail_together_and_are_not_resubmitted_forever() {
    let failing = job(0);
    let harness = Harness::start(|config| {
        config.processing_time = Duration::from_millis(50);
        config.failing_lead_ids = [failing.entity_id.clone()].into_iter().collect();
    })
    .await;
    let mut shouted = failing.clone();
    shouted.user_id = shouted.user_id.to_uppercase();
    harness.seed(&[failing.clone(), shouted]).await;

    harness.run_until_idle(&polling(&[]), LIMIT).await;

    let states = harness.jobs().await;
    assert_eq!(states.len(), 2);
    for state in states {
        assert_eq!(state.status, "failed", "{state:?}");
        let reason = state.last_error.unwrap_or_default();
        assert!(reason.contains("could not apply"), "{reason}");
    }
    assert_eq!(
        harness.simulator.stats().revoke_calls,
        1,
        "one item, one call: nothing to split"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_a_verdict_fails_its_jobs_after_the_deadline_naming_the_request() {
    let harness = Harness::start(|config| config.processing_time = Duration::from_secs(3600)).await;
    harness.seed(&jobs(3)).await;

    harness
        .run_until_idle(
            &polling(&[("STATUS_POLL__GIVE_UP_AFTER_MS", "1000")]),
            LIMIT,
        )
        .await;

    let states = harness.jobs().await;
    for state in &states {
        assert_eq!(state.status, "failed");
        let reason = state.last_error.as_deref().unwrap_or_default();
        let request_id = state.request_id.as_deref().expect("the request id is kept");
        assert!(
            reason.contains("never confirmed") && reason.contains(request_id),
            "{reason}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_polling_resumes_without_sending_revocations_again() {
    let harness =
        Harness::start(|config| config.processing_time = Duration::from_millis(1500)).await;
    harness.seed(&jobs(30)).await;
    let cancel = CancellationToken::new();
    let first = tokio::spawn(app::run(
        harness.settings(&polling(&[])),
        false,
        cancel.clone(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !harness
        .jobs()
        .await
        .iter()
        .all(|job| job.status == "submitted")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "all submitted in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel();
    first.await.expect("task").expect("first run");
    let revokes = harness.simulator.stats().revoke_calls;

    harness.run_until_idle(&polling(&[]), LIMIT).await;

    harness.assert_all_jobs("completed").await;
    assert_eq!(
        harness.simulator.stats().revoke_calls,
        revokes,
        "no revocation was sent twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmations_advance_while_a_backlog_is_being_sent() {
    let harness = Harness::start(|config| config.processing_time = Duration::from_millis(50)).await;
    harness.seed(&jobs(200)).await;

    harness
        .run_until_idle(
            &polling(&[
                ("BATCH__MAX_SIZE", "5"),
                ("STATUS_POLL__INITIAL_DELAY_MS", "50"),
            ]),
            LIMIT,
        )
        .await;

    let calls = harness.simulator.calls();
    let last_revoke = calls
        .iter()
        .rposition(|call| call.endpoint == Endpoint::Revoke)
        .expect("revokes");
    let polls_before = calls[..last_revoke]
        .iter()
        .filter(|call| call.endpoint == Endpoint::Status)
        .count();
    let revokes = calls
        .iter()
        .filter(|call| call.endpoint == Endpoint::Revoke)
        .count();
    // every_nth_call = 5: at least one call in five goes to a due poll while revocations wait
    assert!(
        polls_before * 5 >= revokes - 5,
        "{polls_before} polls before the last of {revokes} revocations"
    );
    harness.assert_all_jobs("completed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_request_id_fails_its_jobs_with_a_reason() {
    let harness = Harness::start(|_| {}).await;
    let store = harness.store().await;
    store.insert_jobs(&jobs(2)).await.expect("seeded");
    sqlx::query("UPDATE revocation_jobs SET status = 'submitted', request_id = 'feedfacefeedfacefeedfacefeedface'")
        .execute(store.pool())
        .await
        .expect("submitted");
    sqlx::query("INSERT INTO revoke_requests (request_id, job_count, job_ids, sent_at, next_poll_at) SELECT 'feedfacefeedfacefeedfacefeedface', 2, json_group_array(id), 0, 0 FROM revocation_jobs")
        .execute(store.pool())
        .await
        .expect("request");
    store.close().await;

    harness.run_until_idle(&polling(&[]), LIMIT).await;

    for state in harness.jobs().await {
        assert_eq!(state.status, "failed");
        let reason = state.last_error.unwrap_or_default();
        assert!(
            reason.contains("does not know request id feedface"),
            "{reason}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_polling_off_jobs_stay_submitted_and_are_never_polled() {
    let harness = Harness::start(|_| {}).await;
    harness.seed(&jobs(20)).await;

    harness
        .run_until_idle(&[("STATUS_POLL__ENABLED", "false")], LIMIT)
        .await;

    harness.assert_all_jobs("submitted").await;
    assert_eq!(harness.simulator.stats().status_calls, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_submitted_while_polling_was_off_are_confirmed_once_it_is_on() {
    let harness = Harness::start(|_| {}).await;
    harness.seed(&jobs(20)).await;
    harness
        .run_until_idle(&[("STATUS_POLL__ENABLED", "false")], LIMIT)
        .await;
    let revoke_calls = harness.simulator.stats().revoke_calls;

    harness.run_until_idle(&polling(&[]), LIMIT).await;

    let states = harness.jobs().await;
    assert!(
        states.iter().all(|job| job.status == "completed"),
        "{states:?}"
    );
    let stats = harness.simulator.stats();
    assert_eq!(stats.revoke_calls, revoke_calls, "nothing was sent again");
    assert!(stats.status_calls >= 1);
}
