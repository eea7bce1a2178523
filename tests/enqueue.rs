//! `lsq-revoker enqueue` as an operator runs it: the real binary, a fresh database per test.

mod common;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Harness, USER};
use lsq_revoker::app;
use tokio_util::sync::CancellationToken;

const BINARY: &str = env!("CARGO_BIN_EXE_lsq-revoker");

const ACTIVITY: &str = "9a0e8f2c-1b7d-4c55-8f5e-2b8d6f0c1a11";

/// A stored job: user, lead, activity, access type, status.
type Row = (String, String, String, i64, String);

/// Run `lsq-revoker enqueue ARGS` against the harness's database, feeding `stdin`, off the
/// runtime that serves the simulator.
async fn enqueue(harness: &Harness, args: &[&str], stdin: Option<String>) -> Output {
    let mut command = Command::new(BINARY);
    command
        .arg("enqueue")
        .args(args)
        .env_clear()
        .envs(harness.env(&[]))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tokio::task::spawn_blocking(move || {
        let mut child = command.spawn().expect("binary starts");
        if let Some(text) = stdin {
            let mut pipe = child.stdin.take().expect("stdin piped");
            pipe.write_all(text.as_bytes()).expect("stdin written");
        }
        child.wait_with_output().expect("binary ends")
    })
    .await
    .expect("join")
}

fn write(harness: &Harness, name: &str, text: &str) -> PathBuf {
    let path = harness.dir.path().join(name);
    std::fs::write(&path, text).expect("file written");
    path
}

async fn rows(harness: &Harness) -> Vec<Row> {
    let store = harness.store().await;
    let rows = sqlx::query_as(
        "SELECT user_id, entity_id, context_entity_id, access_type, status
         FROM revocation_jobs ORDER BY id",
    )
    .fetch_all(store.pool())
    .await
    .expect("rows read");
    store.close().await;
    rows
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn succeeded(output: &Output) -> String {
    assert!(
        output.status.success(),
        "enqueue failed: {}",
        text(&output.stderr)
    );
    text(&output.stdout)
}

fn row(lead: &str, access: i64) -> Row {
    (
        USER.to_owned(),
        lead.to_owned(),
        ACTIVITY.to_owned(),
        access,
        "pending".to_owned(),
    )
}

/// `count` valid CSV lines under a header, lead ids 1..=count.
fn csv(count: usize) -> String {
    let mut text = "user_id,lead_id,activity_id,access\n".to_owned();
    for lead in 1..=count {
        text.push_str(&format!("{USER},{lead},{ACTIVITY},read\n"));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_job_from_flags_is_stored_in_the_canonical_form() {
    let harness = Harness::start(|_| {}).await;
    let output = enqueue(
        &harness,
        &[
            "--user-id",
            &USER.to_uppercase(),
            "--lead-id",
            "869196",
            "--activity-id",
            ACTIVITY,
            "--access",
            "write",
        ],
        None,
    )
    .await;
    assert_eq!(
        succeeded(&output),
        "enqueued 1 job (0 already pending, skipped)\n"
    );
    assert_eq!(rows(&harness).await, [row("869196", 2)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_and_a_file_together_are_refused_by_the_parser() {
    let harness = Harness::start(|_| {}).await;
    let output = enqueue(
        &harness,
        &["--file", "jobs.csv", "--user-id", USER, "--lead-id", "1"],
        None,
    )
    .await;
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("cannot be used with"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_file_with_a_header_enqueues_every_line() {
    let harness = Harness::start(|_| {}).await;
    let path = write(
        &harness,
        "jobs.csv",
        &format!(
            "entity_id,user_id,context_entity_id,access_type\n\
             11,{USER},{ACTIVITY},\n\
             \n\
             12,{USER},{ACTIVITY},2\n\
             13,{USER},{ACTIVITY},read\n"
        ),
    );
    let output = enqueue(&harness, &["--file", path.to_str().expect("utf-8")], None).await;
    assert_eq!(
        succeeded(&output),
        "enqueued 3 jobs (0 already pending, skipped)\n"
    );
    assert_eq!(
        rows(&harness).await,
        [row("11", 1), row("12", 2), row("13", 1)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_from_standard_input_are_enqueued() {
    let harness = Harness::start(|_| {}).await;
    let input = format!(
        "{{\"user_id\":\"{USER}\",\"lead_id\":21,\"activity_id\":\"{ACTIVITY}\"}}\n\
         {{\"user_id\":\"{USER}\",\"lead_id\":\"22\",\"activity_id\":\"{ACTIVITY}\",\"access\":\"write\"}}\n"
    );
    let output = enqueue(
        &harness,
        &["--file", "-", "--format", "jsonl"],
        Some(input.clone()),
    )
    .await;
    assert_eq!(
        succeeded(&output),
        "enqueued 2 jobs (0 already pending, skipped)\n"
    );
    assert_eq!(rows(&harness).await, [row("21", 1), row("22", 2)]);

    let output = enqueue(&harness, &["--file", "-"], Some(input)).await;
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(stderr.contains("--format"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_with_bad_lines_is_refused_whole_naming_each_line_and_its_reason() {
    let harness = Harness::start(|_| {}).await;
    harness.seed(&[common::job(1)]).await;
    let before = rows(&harness).await;
    let path = write(
        &harness,
        "jobs.jsonl",
        &format!(
            "{{\"user_id\":\"{USER}\",\"lead_id\":\"31\",\"activity_id\":\"{ACTIVITY}\"}}\n\
             {{\"user_id\":\"not-a-guid\",\"lead_id\":\"32\",\"activity_id\":\"{ACTIVITY}\"}}\n\
             \n\
             {{\"user_id\":\"{USER}\",\"lead_id\":\"33\",\"activity_id\":\"{ACTIVITY}\",\"access\":\"all\"}}\n\
             {{\"user_id\":\"{USER}\",\"lead_id\":\"34\"\n"
        ),
    );
    let output = enqueue(&harness, &["--file", path.to_str().expect("utf-8")], None).await;
    assert!(!output.status.success());
    assert_eq!(text(&output.stdout), "");
    let stderr = text(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines[0].ends_with("3 of 4 lines are invalid; nothing was enqueued"),
        "{stderr}"
    );
    assert!(
        lines[1].contains("line 2: user_id \"not-a-guid\""),
        "{stderr}"
    );
    assert!(lines[2].contains("line 4: access_type \"all\""), "{stderr}");
    assert!(lines[3].contains("line 5: is not valid JSON"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(rows(&harness).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_running_the_same_file_adds_nothing_while_its_jobs_are_pending() {
    let harness = Harness::start(|_| {}).await;
    let mut text = csv(3);
    text.push_str(&format!("{USER},1,{},read\n", ACTIVITY.to_uppercase()));
    let path = write(&harness, "jobs.csv", &text);
    let path = path.to_str().expect("utf-8");

    let first = enqueue(&harness, &["--file", path], None).await;
    assert_eq!(
        succeeded(&first),
        "enqueued 3 jobs (1 already pending, skipped)\n"
    );
    let second = enqueue(&harness, &["--file", path], None).await;
    assert_eq!(
        succeeded(&second),
        "enqueued 0 jobs (4 already pending, skipped)\n"
    );
    assert_eq!(rows(&harness).await.len(), 3);

    // Once a job has been sent, the same revocation may be asked for again.
    let store = harness.store().await;
    sqlx::query("UPDATE revocation_jobs SET status = 'completed' WHERE entity_id = '1'")
        .execute(store.pool())
        .await
        .expect("update");
    store.close().await;
    let third = enqueue(&harness, &["--file", path], None).await;
    assert_eq!(
        succeeded(&third),
        "enqueued 1 job (3 already pending, skipped)\n"
    );
    assert_eq!(rows(&harness).await.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_lines_enqueued_while_the_worker_runs_all_end_submitted() {
    const COUNT: usize = 5000;
    let harness = Harness::start(|_| {}).await;
    let path = write(&harness, "jobs.csv", &csv(COUNT));
    // The schema exists before both start, as it does once `run` has started once; two
    // processes creating a brand-new database at the same instant is not what is tested here.
    harness.store().await.close().await;
    let cancel = CancellationToken::new();
    let worker = tokio::spawn(app::run(
        harness.settings(&[("BATCH__MAX_SIZE", "100")]),
        false,
        cancel.clone(),
    ));

    let output = enqueue(&harness, &["--file", path.to_str().expect("utf-8")], None).await;
    assert_eq!(
        succeeded(&output),
        format!("enqueued {COUNT} jobs (0 already pending, skipped)\n")
    );
    let progress = text(&output.stderr);
    assert!(
        progress.contains(&format!("enqueue: {COUNT}/{COUNT} rows")),
        "{progress}"
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let jobs = harness.jobs().await;
        if jobs.len() == COUNT && jobs.iter().all(|job| job.status == "submitted") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "jobs not all submitted in time: {:?}",
            jobs.iter().find(|job| job.status != "submitted")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), worker)
        .await
        .expect("the worker stopped in time")
        .expect("join")
        .expect("the worker ran without error");
}
