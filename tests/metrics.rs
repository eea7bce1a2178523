//! `/metrics` and `/healthz` of a running worker, against the simulator and a real database.

mod common;

use std::future::Future;
use std::time::Duration;

use common::{Harness, jobs};
use lsq_revoker::app::{self, RunReport};
use lsq_revoker::dispatcher::Exit;
use lsq_revoker::metrics::{self, Metrics};
use reqwest::StatusCode;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long any one expected change may take to show.
const SHOWS_WITHIN: Duration = Duration::from_secs(8);

const POLLING: [(&str, &str); 3] = [
    ("STATUS_POLL__ENABLED", "true"),
    ("STATUS_POLL__INITIAL_DELAY_MS", "100"),
    ("STATUS_POLL__MAX_INTERVAL_MS", "200"),
];

/// A daemon `run` serving metrics on a loopback port of its own.
struct Worker {
    base: String,
    http: reqwest::Client,
    cancel: CancellationToken,
    task: JoinHandle<anyhow::Result<RunReport>>,
}

impl Worker {
    async fn start(harness: &Harness, extra: &[(&str, &str)]) -> Self {
        let listen = format!("127.0.0.1:{}", free_port());
        let mut env = extra.to_vec();
        env.push(("METRICS__LISTEN", &listen));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(app::run(harness.settings(&env), false, cancel.clone()));
        let worker = Self {
            base: format!("http://{listen}"),
            http: reqwest::Client::new(),
            cancel,
            task,
        };
        eventually("the metrics server answers", || async {
            worker.health().await.map(drop)
        })
        .await;
        worker
    }

    async fn scrape(&self) -> String {
        let response = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("/metrics answers");
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        response.text().await.expect("metrics text")
    }

    /// The value of one exposed series, e.g. `lsq_revoker_jobs{status="failed"}`.
    async fn value(&self, series: &str) -> Option<f64> {
        value(&self.scrape().await, series)
    }

    async fn health(&self) -> Option<(StatusCode, serde_json::Value)> {
        let response = self
            .http
            .get(format!("{}/healthz", self.base))
            .send()
            .await
            .ok()?;
        let status = response.status();
        Some((status, response.json().await.ok()?))
    }

    async fn stop(self) -> RunReport {
        self.cancel.cancel();
        tokio::time::timeout(SHOWS_WITHIN, self.task)
            .await
            .expect("the worker stops in time")
            .expect("task")
            .expect("run")
    }
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// Ask `check` every 50 ms until it gives a value, failing the test after [`SHOWS_WITHIN`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + SHOWS_WITHIN;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_jobs_by_status_and_calls_by_code_as_a_backlog_is_worked_off() {
    let harness = Harness::start(|config| {
        config.server_error_rate = 1.0;
        config.processing_time = Duration::from_millis(100);
    })
    .await;
    let mut seeded = jobs(21);
    seeded[20].user_id = "not-a-guid".to_owned();
    harness.seed(&seeded).await;
    let worker = Worker::start(&harness, &POLLING).await;

    eventually("a 500 is counted", || async {
        worker
            .value(r#"lsq_revoker_api_calls_total{endpoint="revoke",code="500"}"#)
            .await
            .filter(|&count| count >= 1.0)
    })
    .await;
    harness.simulator.set_server_error_rate(0.0);
    eventually("every valid job is completed", || async {
        (worker
            .value(r#"lsq_revoker_jobs{status="completed"}"#)
            .await
            == Some(20.0))
        .then_some(())
    })
    .await;

    let text = worker.scrape().await;
    let stats = harness.simulator.stats();
    let series = |name: &str| value(&text, name).unwrap_or_default();
    assert_eq!(
        series(r#"lsq_revoker_jobs{status="failed"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(series(r#"lsq_revoker_jobs{status="pending"}"#), 0.0);
    assert_eq!(series("lsq_revoker_requests_awaiting"), 0.0);
    assert_eq!(
        series(r#"lsq_revoker_api_calls_total{endpoint="revoke",code="200"}"#),
        stats.accepted as f64
    );
    assert_eq!(
        series(r#"lsq_revoker_api_calls_total{endpoint="revoke",code="500"}"#),
        stats.server_errors as f64
    );
    assert!(series(r#"lsq_revoker_api_calls_total{endpoint="status",code="200"}"#) >= 2.0);
    assert_eq!(
        series("lsq_revoker_batch_jobs_count"),
        stats.revoke_calls as f64,
        "one batch per Revoke call"
    );
    assert!(series("lsq_revoker_batch_jobs_sum") >= 20.0);
    assert_eq!(
        series("lsq_revoker_limiter_wait_seconds_count"),
        (stats.revoke_calls + stats.status_calls) as f64,
        "one wait per call"
    );
    for stage in ["submitted", "completed"] {
        assert_eq!(
            series(&format!(
                "lsq_revoker_job_latency_seconds_count{{stage=\"{stage}\"}}"
            )),
            20.0,
            "{stage}"
        );
    }
    assert_eq!(
        series(r#"lsq_revoker_dispatcher_paused{reason="misconfigured"}"#),
        0.0
    );
    assert_eq!(worker.stop().await.exit, Exit::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_names_the_credentials_while_they_are_refused_and_recovers_with_the_keys() {
    let harness = Harness::start(|_| {}).await;
    let worker = Worker::start(&harness, &[]).await;
    let (status, body) = worker.health().await.expect("healthz answers");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ok");

    harness
        .simulator
        .set_keys("rotated-access", "rotated-secret");
    harness.seed(&jobs(5)).await;
    let body = eventually("healthz reports the refused keys", || async {
        worker
            .health()
            .await
            .filter(|(status, _)| *status == StatusCode::SERVICE_UNAVAILABLE)
            .map(|(_, body)| body)
    })
    .await;
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("credentials"), "{body}");
    assert_eq!(body["dispatcher"], "misconfigured");
    assert_eq!(
        worker
            .value(r#"lsq_revoker_dispatcher_paused{reason="misconfigured"}"#)
            .await,
        Some(1.0)
    );

    harness
        .simulator
        .set_keys(common::ACCESS_KEY, common::SECRET_KEY);
    eventually("healthz is ok again", || async {
        worker
            .health()
            .await
            .filter(|(status, body)| *status == StatusCode::OK && body["status"] == "ok")
    })
    .await;
    eventually("the jobs go out once the keys work", || async {
        (worker
            .value(r#"lsq_revoker_jobs{status="submitted"}"#)
            .await
            == Some(5.0))
        .then_some(())
    })
    .await;
    assert_eq!(
        worker
            .value(r#"lsq_revoker_api_calls_total{endpoint="revoke",code="401"}"#)
            .await,
        Some(harness.simulator.stats().unauthorized as f64)
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_unhealthy_while_the_database_does_not_answer_and_metrics_still_serve() {
    let harness = Harness::start(|_| {}).await;
    let store = harness.store().await;
    let server = metrics::serve(
        "127.0.0.1:0".parse().expect("address"),
        Metrics::new(),
        store.clone(),
        CancellationToken::new(),
    )
    .await
    .expect("serves");
    let base = format!("http://{}", server.address());
    store.close().await;

    let response = reqwest::get(format!("{base}/healthz"))
        .await
        .expect("healthz answers");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(body["database"], "unreachable", "{body}");
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("database")),
        "{body}"
    );
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("text");
    assert!(text.contains("lsq_revoker_dispatcher_paused"), "{text}");
    assert!(
        !text.contains("lsq_revoker_jobs"),
        "no stale job counts: {text}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_address_in_use_stops_run_with_one_line_naming_the_setting() {
    let harness = Harness::start(|_| {}).await;
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let listen = taken.local_addr().expect("address").to_string();

    let err = app::run(
        harness.settings(&[("METRICS__LISTEN", &listen)]),
        true,
        CancellationToken::new(),
    )
    .await
    .expect_err("the address is taken");

    let line = format!("{err:#}");
    assert!(line.contains("metrics.listen"), "{line}");
    assert!(line.contains(&listen), "{line}");
    assert!(!line.contains('\n'), "{line}");
}
