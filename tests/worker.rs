//! The dispatcher end to end: a real SQLite file, the simulator over loopback HTTP.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Harness, MAX_CALLS, WINDOW, job, jobs};
use lsq_revoker::dispatcher::Exit;
use lsq_revoker::simulator::{Simulator, SimulatorStats, max_calls_in_any_window};

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_submitted_without_any_window_over_the_limit() {
    let harness = Harness::start(|_| {}).await;
    harness.seed(&jobs(200)).await;

    let report = harness.run_until_idle(&[], LIMIT).await;

    assert_eq!(report.exit, Exit::Idle);
    let states = harness.jobs().await;
    assert!(
        states
            .iter()
            .all(|job| job.status == "submitted" && job.attempts == 1),
        "{states:?}"
    );
    assert!(states.iter().all(|job| job.request_id.is_some()));
    let stats = harness.simulator.stats();
    assert_eq!(stats.rate_limited, 0, "a 429 of our own making");
    assert_eq!(stats.items_accepted, 200);
    assert_eq!(stats.accepted, 20, "200 jobs in batches of 10");
    assert!(max_calls_in_any_window(&harness.arrivals(), WINDOW) <= MAX_CALLS);
    let accepted: HashSet<String> = harness
        .simulator
        .accepted_items()
        .into_iter()
        .map(|item| item.entity_id)
        .collect();
    assert_eq!(
        accepted.len(),
        200,
        "every job reached the API exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_calls_are_in_flight_when_answers_are_slow() {
    let harness = Harness::start(|config| {
        config.latency = (Duration::from_millis(300), Duration::from_millis(300))
    })
    .await;
    harness.seed(&jobs(50)).await;

    harness
        .run_until_idle(&[("API__MAX_IN_FLIGHT", "5")], LIMIT)
        .await;

    // five calls of 300 ms each fit in one 500 ms window only if they overlap
    let arrivals = harness.arrivals();
    assert_eq!(arrivals.len(), 5);
    assert!(
        arrivals[4] - arrivals[0] < Duration::from_millis(150),
        "{arrivals:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_rows_fail_with_a_reason_and_never_reach_the_api() {
    let harness = Harness::start(|_| {}).await;
    let mut seeded = jobs(6);
    seeded[1].user_id = "someone".to_owned();
    seeded[2].entity_id = String::new();
    seeded[3].access_type = 7;
    seeded[4].context_entity_id = "{9a0e8f2c-1b7d-4c55-8f5e-2b8d6f0c1a11}".to_owned();
    harness.seed(&seeded).await;

    harness.run_until_idle(&[], LIMIT).await;

    let states = harness.jobs().await;
    let statuses: Vec<&str> = states.iter().map(|job| job.status.as_str()).collect();
    assert_eq!(
        statuses,
        [
            "submitted",
            "failed",
            "failed",
            "failed",
            "failed",
            "submitted"
        ]
    );
    let reasons: Vec<&str> = states
        .iter()
        .filter_map(|job| job.last_error.as_deref())
        .collect();
    for (reason, field) in
        reasons
            .iter()
            .zip(["user_id", "entity_id", "access_type", "context_entity_id"])
    {
        assert!(reason.contains(field), "{reason:?} names {field}");
    }
    assert!(
        states
            .iter()
            .filter(|job| job.status == "failed")
            .all(|job| job.attempts == 0)
    );
    assert_eq!(
        harness.simulator.stats().bad_requests,
        0,
        "nothing malformed was sent"
    );
    assert_eq!(harness.simulator.stats().items_accepted, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_holding_bytes_that_are_not_text_fails_alone_and_the_queue_goes_on() {
    let harness = Harness::start(|_| {}).await;
    let store = harness.store().await;
    store.insert_jobs(&jobs(3)).await.expect("seeded");
    // A producer that bound a GUID's 16 raw bytes instead of its text form.
    sqlx::query(
        "UPDATE revocation_jobs SET user_id = X'0203f172864211e79bed069b743e848f' WHERE id = 2",
    )
    .execute(store.pool())
    .await
    .expect("blob user_id");
    store.close().await;

    harness.run_until_idle(&[], LIMIT).await;

    let states = harness.jobs().await;
    let statuses: Vec<&str> = states.iter().map(|job| job.status.as_str()).collect();
    assert_eq!(statuses, ["submitted", "failed", "submitted"]);
    let reason = states[1].last_error.as_deref().unwrap_or_default();
    assert!(
        reason.contains("user_id") && reason.contains("not a GUID"),
        "{reason}"
    );
    assert_eq!(harness.simulator.stats().items_accepted, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_one_bad_item_fails_only_that_item() {
    let bad = job(6).entity_id;
    let harness = Harness::start(|config| {
        config.rejected_lead_ids = [bad.clone()].into_iter().collect();
    })
    .await;
    harness.seed(&jobs(10)).await;

    harness.run_until_idle(&[], LIMIT).await;

    let states = harness.jobs().await;
    for state in &states {
        if state.id == 7 {
            assert_eq!(state.status, "failed");
            let reason = state.last_error.as_deref().unwrap_or_default();
            assert!(
                reason.contains("rejected by LeadSquared") && reason.contains(&bad),
                "{reason}"
            );
        } else {
            assert_eq!(state.status, "submitted", "{state:?}");
        }
    }
    let stats = harness.simulator.stats();
    assert_eq!(stats.items_accepted, 9);
    // 10 → 5+5 → (3+2) → (1+2) → (1+1): the bad item is isolated in at most log2(10)+1 rejections
    assert!(stats.bad_requests <= 5, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_rows_share_one_item() {
    let harness = Harness::start(|_| {}).await;
    harness.seed(&[job(1), job(1), job(2), job(1)]).await;

    harness.run_until_idle(&[], LIMIT).await;

    let states = harness.jobs().await;
    assert!(states.iter().all(|job| job.status == "submitted"));
    assert_eq!(harness.simulator.stats().items_accepted, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_with_backoff_until_max_attempts_then_fail() {
    let harness = Harness::start(|config| config.server_error_rate = 1.0).await;
    harness.seed(&jobs(3)).await;

    harness
        .run_until_idle(&[("RETRY__MAX_ATTEMPTS", "3")], LIMIT)
        .await;

    let states = harness.jobs().await;
    for state in &states {
        assert_eq!(state.status, "failed");
        assert_eq!(state.attempts, 3);
        let reason = state.last_error.as_deref().unwrap_or_default();
        assert!(
            reason.contains("gave up after 3 attempts") && reason.contains("HTTP 500"),
            "{reason}"
        );
    }
    assert_eq!(
        harness.simulator.stats().server_errors,
        3,
        "one batch, three tries"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_retried_after_a_server_error_are_submitted_once_it_recovers() {
    let harness = Harness::start(|config| config.server_error_rate = 1.0).await;
    harness.seed(&jobs(20)).await;
    let store = harness.store().await;

    let run = tokio::spawn({
        let settings = harness.settings(&[
            ("RETRY__MAX_ATTEMPTS", "50"),
            ("RETRY__MAX_BACKOFF_MS", "50"),
        ]);
        async move { lsq_revoker::app::run(settings, true, Default::default()).await }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let waiting = store.next_due().await.expect("query");
    assert!(waiting.is_some(), "jobs wait in the table for their retry");
    harness.simulator.set_server_error_rate(0.0);
    tokio::time::timeout(LIMIT, run)
        .await
        .expect("idle in time")
        .expect("task")
        .expect("run");

    let states = harness.jobs().await;
    assert!(
        states
            .iter()
            .all(|job| job.status == "submitted" && job.attempts >= 2),
        "{states:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_pauses_every_call_and_fails_no_job() {
    // The account is shared with another integration: the server allows fewer calls than we pace for.
    let harness = Harness::start(|config| config.rate_limit = Some((2, WINDOW))).await;
    harness.seed(&jobs(60)).await;

    let report = harness.run_until_idle(&[], LIMIT).await;

    assert!(report.totals.rate_limited > 0, "the test provoked 429s");
    let states = harness.jobs().await;
    assert!(
        states
            .iter()
            .all(|job| job.status == "submitted" && job.attempts == 1),
        "{states:?}"
    );
    // after each 429 the dispatcher waits a full window before sending again
    let calls = harness.simulator.calls();
    for pair in calls.windows(2) {
        if pair[0].status == 429 && pair[1].at > pair[0].at + Duration::from_millis(100) {
            assert!(
                pair[1].at - pair[0].at >= WINDOW - Duration::from_millis(50),
                "{pair:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_answering_404_pauses_everything_until_it_serves_the_api_again() {
    let harness = Harness::start(|_| {}).await;
    harness.simulator.set_wrong_host(true);
    paused_until_mended(
        &harness,
        |stats| stats.not_found,
        |simulator| simulator.set_wrong_host(false),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_on_429_is_honoured_before_the_next_call() {
    let retry_after = Duration::from_secs(1);
    let harness = Harness::start(|config| {
        config.rate_limit = Some((2, WINDOW));
        config.retry_after = Some(retry_after);
    })
    .await;
    harness.seed(&jobs(30)).await;

    let report = harness.run_until_idle(&[], LIMIT).await;

    assert!(report.totals.rate_limited > 0, "the test provoked 429s");
    harness.assert_all_jobs("submitted").await;
    // Calls already on their way when a 429 came may land just after it; the next one the
    // dispatcher starts waits the whole Retry-After (twice the window, so the window alone
    // cannot explain the gap).
    let calls = harness.simulator.calls();
    let mut checked = 0;
    for (at, call) in calls.iter().enumerate() {
        if call.status != 429 {
            continue;
        }
        if let Some(next) = calls[at + 1..]
            .iter()
            .find(|later| later.at > call.at + Duration::from_millis(100))
        {
            assert!(
                next.at - call.at >= retry_after - Duration::from_millis(50),
                "a call {:?} after a 429",
                next.at - call.at
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "some 429 was followed by a later call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_pause_everything_and_resume_by_themselves_without_spending_attempts() {
    let harness = Harness::start(|_| {}).await;
    harness
        .simulator
        .set_keys("rotated-access", "rotated-secret");
    paused_until_mended(
        &harness,
        |stats| stats.unauthorized,
        |simulator| simulator.set_keys(common::ACCESS_KEY, common::SECRET_KEY),
    )
    .await;
}

/// With the simulator refusing the configuration, a run over 30 jobs makes only a handful of
/// calls (`refused` counts them), spends no attempt and leaves every job pending; once `mend`
/// puts things right, the run resumes by itself and submits every job with one attempt.
async fn paused_until_mended(
    harness: &Harness,
    refused: impl Fn(&SimulatorStats) -> u64,
    mend: impl FnOnce(&Simulator),
) {
    harness.seed(&jobs(30)).await;
    let run = tokio::spawn({
        let settings = harness.settings(&[]);
        async move { lsq_revoker::app::run(settings, true, Default::default()).await }
    });

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let refused = refused(&harness.simulator.stats());
    // first call, then probes at ~100, 200, 400, 400 ms...: a handful, not the whole queue
    assert!((2..=8).contains(&refused), "{refused} calls while paused");
    let states = harness.jobs().await;
    assert!(
        states
            .iter()
            .all(|job| job.status == "pending" && job.attempts == 0),
        "{states:?}"
    );

    mend(&harness.simulator);
    tokio::time::timeout(LIMIT, run)
        .await
        .expect("idle in time")
        .expect("task")
        .expect("run");
    let states = harness.jobs().await;
    assert!(
        states
            .iter()
            .all(|job| job.status == "submitted" && job.attempts == 1),
        "{states:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_right_after_a_burst_does_not_open_a_second_burst() {
    let harness = Harness::start(|config| config.rate_limit = None).await;
    harness.seed(&jobs(50)).await;
    harness
        .run_until_idle(&[("BATCH__MAX_SIZE", "10")], LIMIT)
        .await;
    harness.seed(&jobs(50)).await;
    harness
        .run_until_idle(&[("BATCH__MAX_SIZE", "10")], LIMIT)
        .await;

    let arrivals = harness.arrivals();
    assert_eq!(arrivals.len(), 10);
    assert!(
        max_calls_in_any_window(&arrivals, WINDOW) <= MAX_CALLS,
        "{arrivals:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_inserting_row_by_row_is_never_refused_while_the_worker_runs_flat_out() {
    let harness = Harness::start(|config| config.rate_limit = None).await;
    harness.seed(&jobs(5000)).await;
    let run = tokio::spawn({
        let settings = harness.settings(&[("BATCH__MAX_SIZE", "100")]);
        async move { lsq_revoker::app::run(settings, true, Default::default()).await }
    });
    let producer = lsq_revoker::store::Store::connect(&harness.database_url)
        .await
        .expect("producer connects");
    for n in 0..300 {
        let new = job(10_000 + n);
        sqlx::query("INSERT INTO revocation_jobs (user_id, entity_id, context_entity_id) VALUES (?1, ?2, ?3)")
            .bind(&new.user_id)
            .bind(&new.entity_id)
            .bind(&new.context_entity_id)
            .execute(producer.pool())
            .await
            .expect("an insert is never refused");
    }
    tokio::time::timeout(LIMIT, run)
        .await
        .expect("idle in time")
        .expect("task")
        .expect("run");
    let states = harness.jobs().await;
    assert_eq!(states.len(), 5300);
    assert!(states.iter().all(|job| job.status == "submitted"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_not_followed_so_the_keys_never_reach_another_host() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::http::{HeaderMap, StatusCode, header};
    use lsq_revoker::api::{Client, Outcome};
    use lsq_revoker::job::JobRow;

    // Where the redirect points: counts every request it receives.
    let reached = Arc::new(AtomicUsize::new(0));
    let counter = reached.clone();
    let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let elsewhere_url = format!("http://{}", elsewhere.local_addr().expect("address"));
    let app = axum::Router::new().fallback(move |_headers: HeaderMap| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { StatusCode::OK }
    });
    tokio::spawn(async move { axum::serve(elsewhere, app).await });
    // The configured "API": redirects every call there, path and all.
    let api = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let api_url = format!("http://{}", api.local_addr().expect("address"));
    let target = format!("{elsewhere_url}/v2/EntityAccess.svc/Revoke");
    let app = axum::Router::new().fallback(move || {
        let target = target.clone();
        async move { (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, target)]) }
    });
    tokio::spawn(async move { axum::serve(api, app).await });

    let harness = Harness::start(|_| {}).await;
    let settings = harness.settings(&[("API__BASE_URL", &api_url)]);
    let client = Client::new(&settings.api).expect("client");
    let seeded = job(1);
    let row = JobRow {
        id: 1,
        user_id: seeded.user_id,
        entity_id: seeded.entity_id,
        context_entity_id: seeded.context_entity_id,
        access_type: "1".to_owned(),
        attempts: 0,
        created_at: None,
    };
    let revocation = row.revocation().expect("a valid revocation");
    let response = client.revoke(&[&revocation]).await;

    match &response.outcome {
        Outcome::Misconfigured { status, message } => {
            assert_eq!(*status, 307);
            assert!(message.contains(&elsewhere_url), "{message}");
            assert!(
                !message.contains("EntityAccess"),
                "only scheme and host: {message}"
            );
        }
        other => panic!("a redirect must pause like a wrong host, got {other:?}"),
    }
    assert_eq!(
        reached.load(Ordering::SeqCst),
        0,
        "the redirect was followed"
    );
}
