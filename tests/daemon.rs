//! The real binary as an operator runs it: signals, crashes, logs, bad settings, two instances.

mod common;

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Harness, SECRET_KEY, jobs};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const BINARY: &str = env!("CARGO_BIN_EXE_lsq-revoker");

fn command(env: &[(String, String)], args: &[&str]) -> Command {
    let mut command = Command::new(BINARY);
    command
        .args(args)
        .env_clear()
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn spawn(env: &[(String, String)], args: &[&str]) -> Child {
    command(env, args).spawn().expect("binary starts")
}

fn signal(child: &Child, signal: Signal) {
    kill(
        Pid::from_raw(i32::try_from(child.id()).expect("pid")),
        signal,
    )
    .expect("signal sent");
}

/// Wait for `child` without blocking the runtime the simulator runs on.
async fn finish(child: Child, limit: Duration) -> (Output, Duration) {
    let began = Instant::now();
    let output = tokio::time::timeout(
        limit,
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("the process exited in time")
    .expect("join")
    .expect("wait");
    (output, began.elapsed())
}

async fn wait_for(
    harness: &Harness,
    what: &str,
    mut done: impl FnMut(&[common::JobState]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if done(&harness.jobs().await) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_calls_in_flight_finish_records_them_and_exits_zero() {
    let harness = Harness::start(|config| {
        config.latency = (Duration::from_millis(1500), Duration::from_millis(1500))
    })
    .await;
    harness.seed(&jobs(200)).await;
    let child = spawn(&harness.env(&[("API__MAX_IN_FLIGHT", "3")]), &["run"]);
    wait_for(&harness, "calls in flight", |jobs| {
        jobs.iter().filter(|job| job.status == "in_flight").count() >= 30
    })
    .await;

    signal(&child, Signal::SIGTERM);
    let (output, took) = finish(child, Duration::from_secs(12)).await;

    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status,
        text(&output.stderr)
    );
    assert!(took < Duration::from_secs(10), "stopped in {took:?}");
    let states = harness.jobs().await;
    assert!(
        states
            .iter()
            .all(|job| job.status == "pending" || job.status == "submitted"),
        "no claim is left behind"
    );
    let submitted = states
        .iter()
        .filter(|job| job.status == "submitted")
        .count() as u64;
    assert_eq!(
        submitted,
        harness.simulator.stats().items_accepted,
        "every answered call was recorded"
    );
    assert!(submitted >= 30, "calls in flight were allowed to finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_claimed_by_a_killed_worker_are_sent_after_the_restart() {
    let harness = Harness::start(|config| {
        config.latency = (Duration::from_secs(30), Duration::from_secs(30))
    })
    .await;
    harness.seed(&jobs(40)).await;
    let env = harness.env(&[]);
    let mut child = spawn(&env, &["run"]);
    wait_for(&harness, "claims", |jobs| {
        jobs.iter().any(|job| job.status == "in_flight")
    })
    .await;

    signal(&child, Signal::SIGKILL);
    child.wait().expect("reaped");
    assert!(
        harness
            .jobs()
            .await
            .iter()
            .any(|job| job.status == "in_flight"),
        "the crash left claims behind"
    );

    harness
        .simulator
        .set_latency(Duration::ZERO, Duration::ZERO);
    let (output, _) = finish(
        spawn(&env, &["run", "--until-idle"]),
        Duration::from_secs(30),
    )
    .await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("returned jobs claimed by a previous run"));
    let states = harness.jobs().await;
    assert!(
        states.iter().all(|job| job.status == "submitted"),
        "{states:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_dispatcher_on_the_same_database_stands_by() {
    let harness = Harness::start(|config| {
        config.latency = (Duration::from_millis(200), Duration::from_millis(200))
    })
    .await;
    harness.seed(&jobs(10)).await;
    let env = harness.env(&[]);
    let first = spawn(&env, &["run"]);
    wait_for(&harness, "the first dispatcher", |jobs| {
        jobs.iter().any(|job| job.status != "pending")
    })
    .await;

    let second = spawn(&env, &["run", "--until-idle"]);
    tokio::time::sleep(Duration::from_millis(800)).await;
    signal(&second, Signal::SIGTERM);
    let (output, _) = finish(second, Duration::from_secs(10)).await;
    signal(&first, Signal::SIGTERM);
    finish(first, Duration::from_secs(10)).await;

    assert!(output.status.success());
    let log = text(&output.stdout);
    assert!(log.contains("standing by"), "{log}");
    assert!(
        !log.contains("revoke call"),
        "the standby made no call: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_json_lines_and_never_show_the_secret_in_any_mode() {
    let harness = Harness::start(|config| config.server_error_rate = 1.0).await;
    harness.seed(&jobs(5)).await;
    let unreachable = "http://127.0.0.1:9".to_owned();
    let mut outputs = Vec::new();
    for extra in [
        vec![("API__AUTH", "query"), ("RETRY__MAX_ATTEMPTS", "2")],
        vec![
            ("API__AUTH", "query"),
            ("LOGGING__LEVEL", "trace"),
            ("RETRY__MAX_ATTEMPTS", "2"),
        ],
        vec![
            ("API__AUTH", "header"),
            ("LOGGING__LEVEL", "trace"),
            ("LOGGING__FORMAT", "text"),
            ("RETRY__MAX_ATTEMPTS", "2"),
        ],
        vec![
            ("API__AUTH", "query"),
            ("API__BASE_URL", unreachable.as_str()),
            ("RETRY__MAX_ATTEMPTS", "2"),
        ],
    ] {
        harness.seed(&jobs(3)).await;
        let (output, _) = finish(
            spawn(&harness.env(&extra), &["run", "--until-idle"]),
            Duration::from_secs(30),
        )
        .await;
        assert!(output.status.success(), "{}", text(&output.stderr));
        outputs.push((extra, output));
    }
    for (extra, output) in &outputs {
        let all = format!("{}{}", text(&output.stdout), text(&output.stderr));
        assert!(!all.contains(SECRET_KEY), "secret leaked with {extra:?}");
        assert!(
            all.contains("revoke call") || all.contains("could not connect"),
            "{all}"
        );
    }
    let json_log = text(&outputs[0].1.stdout);
    for line in json_log.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}"));
        assert!(
            value.get("message").is_some() && value.get("level").is_some(),
            "{line}"
        );
    }
    let call: serde_json::Value = json_log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|value| value["message"] == "revoke call")
        .expect("a call was logged");
    for field in ["jobs", "http_status", "latency_ms", "attempt"] {
        assert!(call.get(field).is_some(), "call line has {field}: {call}");
    }
    let unreachable_log = text(&outputs[3].1.stdout);
    assert!(
        unreachable_log.contains("could not connect"),
        "{unreachable_log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_setting_stops_the_program_with_one_line_naming_the_variable() {
    let harness = Harness::start(|_| {}).await;
    for (key, value, expected) in [
        (
            "RATE_LIMIT__MAX_CALLS",
            "plenty",
            "LSQ_REVOKER__RATE_LIMIT__MAX_CALLS",
        ),
        ("API__SECRET_KEY", "", "LSQ_REVOKER__API__SECRET_KEY"),
        (
            "API__BASE_URL",
            "http://api.leadsquared.com",
            "LSQ_REVOKER__API__BASE_URL",
        ),
        ("API__AUTH", "cookie", "LSQ_REVOKER__API__AUTH"),
    ] {
        let output = command(&harness.env(&[(key, value)]), &["run"])
            .output()
            .expect("runs");
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{key}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(!stderr.contains("panicked"));
    }
    let output = command(
        &harness.env(&[]),
        &["--config", "/nonexistent.toml", "migrate"],
    )
    .output()
    .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("/nonexistent.toml"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_creates_the_database_file_and_its_directory() {
    let harness = Harness::start(|_| {}).await;
    let path = harness.dir.path().join("nested/dir/revoker.db");
    let url = format!("sqlite://{}", path.display());
    let output = command(
        &harness.env(&[("DATABASE__URL", url.as_str())]),
        &["migrate"],
    )
    .output()
    .expect("runs");
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(path.is_file());
}
