//! Operator commands against a real database, while a worker runs.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{Harness, jobs};
use lsq_revoker::app;
use tokio_util::sync::CancellationToken;

const BINARY: &str = env!("CARGO_BIN_EXE_lsq-revoker");
const LIMIT: Duration = Duration::from_secs(60);

/// Run a command of the binary without blocking the simulator's runtime.
async fn lsq(harness: &Harness, extra: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = Command::new(BINARY);
    command
        .args(args)
        .env_clear()
        .envs(harness.env(extra))
        .env_remove("LSQ_REVOKER__API__SECRET_KEY")
        .stdin(Stdio::null());
    tokio::task::spawn_blocking(move || command.output().expect("runs"))
        .await
        .expect("join")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn wait_until(harness: &Harness, what: &str, done: impl Fn(&[common::JobState]) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done(&harness.jobs().await) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_reports_jobs_failures_budget_and_the_running_dispatcher_without_the_secret_key() {
    let harness = Harness::start(|config| {
        config.latency = (Duration::from_millis(100), Duration::from_millis(100))
    })
    .await;
    let mut seeded = jobs(300);
    seeded[0].user_id = "nobody".to_owned();
    seeded[1].user_id = "somebody".to_owned();
    harness.seed(&seeded).await;
    let cancel = CancellationToken::new();
    let worker = tokio::spawn(app::run(harness.settings(&[]), false, cancel.clone()));
    wait_until(&harness, "some submissions", |jobs| {
        jobs.iter().any(|job| job.status == "submitted")
    })
    .await;

    let output = lsq(&harness, &[], &["stats", "--json"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let stats: serde_json::Value = serde_json::from_str(&stdout(&output)).expect("json");
    assert_eq!(stats["dispatcher"]["running"], true);
    assert_eq!(stats["dispatcher"]["paused"], "no");
    let counts = &stats["jobs"];
    let total: u64 = ["pending", "in_flight", "submitted", "completed", "failed"]
        .iter()
        .map(|status| counts[status].as_u64().expect("count"))
        .sum();
    assert_eq!(total, 300);
    assert_eq!(counts["failed"], 2);
    let reasons = stats["top_failure_reasons"].as_array().expect("reasons");
    assert_eq!(
        reasons.len(),
        1,
        "alike reasons are counted together: {reasons:?}"
    );
    assert_eq!(reasons[0]["count"], 2);
    assert!(stats["last_hour"]["calls"].as_u64().expect("calls") > 0);
    assert!(stats["oldest_pending_age_s"].is_number());

    let table = stdout(&lsq(&harness, &[], &["stats"]).await);
    assert!(table.contains("dispatcher        running"), "{table}");
    assert!(table.contains("top failure reasons"), "{table}");

    cancel.cancel();
    worker.await.expect("join").expect("worker");
    let after = stdout(&lsq(&harness, &[], &["stats"]).await);
    assert!(after.contains("dispatcher        not running"), "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_shows_the_dispatcher_paused_on_bad_credentials() {
    let harness = Harness::start(|_| {}).await;
    harness.simulator.set_keys("rotated", "rotated");
    harness.seed(&jobs(5)).await;
    let cancel = CancellationToken::new();
    let worker = tokio::spawn(app::run(harness.settings(&[]), false, cancel.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let stats: serde_json::Value =
        serde_json::from_str(&stdout(&lsq(&harness, &[], &["stats", "--json"]).await))
            .expect("json");

    cancel.cancel();
    worker.await.expect("join").expect("worker");
    assert_eq!(stats["dispatcher"]["paused"], "misconfigured", "{stats}");
    assert!(
        stats["dispatcher"]["pause_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("401")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_moves_failed_jobs_back_and_the_worker_sends_them() {
    let harness = Harness::start(|config| config.server_error_rate = 1.0).await;
    harness.seed(&jobs(20)).await;
    harness
        .run_until_idle(&[("RETRY__MAX_ATTEMPTS", "1")], LIMIT)
        .await;
    harness.assert_all_jobs("failed").await;

    let dry = lsq(
        &harness,
        &[],
        &["requeue", "--reason", "http 500", "--dry-run"],
    )
    .await;
    assert!(dry.status.success(), "{}", stderr(&dry));
    assert!(
        stdout(&dry).starts_with("would requeue 20 failed jobs"),
        "{}",
        stdout(&dry)
    );
    assert!(
        harness
            .jobs()
            .await
            .iter()
            .all(|job| job.status == "failed"),
        "a dry run changes nothing"
    );

    harness.simulator.set_server_error_rate(0.0);
    let cancel = CancellationToken::new();
    let worker = tokio::spawn(app::run(harness.settings(&[]), false, cancel.clone()));
    let moved = lsq(&harness, &[], &["requeue", "--reason", "HTTP 500"]).await;
    assert_eq!(stdout(&moved).trim(), "requeued 20 failed jobs");
    wait_until(&harness, "the requeued jobs to be sent", |jobs| {
        jobs.iter().all(|job| job.status == "submitted")
    })
    .await;
    cancel.cancel();
    worker.await.expect("join").expect("worker");
    assert!(
        harness
            .jobs()
            .await
            .iter()
            .all(|job| job.attempts == 1 && job.last_error.is_none())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_refuses_unknown_or_unfailed_ids_and_missing_filters_with_one_line() {
    let harness = Harness::start(|_| {}).await;
    harness.seed(&jobs(2)).await;
    for (args, expected) in [
        (
            vec!["requeue", "--ids", "1,99"],
            "job 1 is pending, not failed; job 99 does not exist",
        ),
        (vec!["requeue"], "choose the jobs to requeue"),
        (vec!["requeue", "--older-than", "soon"], "--older-than"),
    ] {
        let output = lsq(&harness, &[], &args).await;
        assert!(!output.status.success(), "{args:?}");
        let message = stderr(&output);
        assert!(
            message
                .lines()
                .next()
                .unwrap_or_default()
                .contains(expected),
            "{message}"
        );
        assert!(!message.contains("panicked"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_deletes_old_completed_jobs_and_their_requests_and_keeps_failed_ones() {
    let harness = Harness::start(|_| {}).await;
    let mut seeded = jobs(30);
    seeded[0].entity_id = String::new();
    harness.seed(&seeded).await;
    harness
        .run_until_idle(
            &[
                ("STATUS_POLL__ENABLED", "true"),
                ("STATUS_POLL__INITIAL_DELAY_MS", "50"),
            ],
            LIMIT,
        )
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let dry = lsq(&harness, &[], &["prune", "--older-than", "1s", "--dry-run"]).await;
    assert_eq!(
        stdout(&dry).trim(),
        "would delete 29 completed jobs, 0 failed jobs, 3 finished requests"
    );
    let done = lsq(&harness, &[], &["prune", "--older-than", "1s"]).await;
    assert_eq!(
        stdout(&done).trim(),
        "deleted 29 completed jobs, 0 failed jobs, 3 finished requests"
    );

    let left = harness.jobs().await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].status, "failed");
    let bad = lsq(&harness, &[], &["prune", "--older-than", "a while"]).await;
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("not a duration"), "{}", stderr(&bad));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_applies_retention_to_completed_jobs() {
    let harness = Harness::start(|_| {}).await;
    harness.seed(&jobs(20)).await;
    let settings = harness.settings(&[
        ("STATUS_POLL__ENABLED", "true"),
        ("STATUS_POLL__INITIAL_DELAY_MS", "50"),
        ("RETENTION__COMPLETED", "300ms"),
        ("RETENTION__INTERVAL", "100ms"),
    ]);
    let cancel = CancellationToken::new();
    let worker = tokio::spawn(app::run(settings, false, cancel.clone()));
    wait_until(&harness, "completion", |jobs| {
        jobs.iter().any(|job| job.status == "completed")
    })
    .await;
    wait_until(&harness, "retention", |jobs| jobs.is_empty()).await;
    cancel.cancel();
    worker.await.expect("join").expect("worker");
}
