//! Metrics and health: what the dispatcher counts, and the `/metrics` and `/healthz` server
//! that `run` starts when `metrics.listen` is set.
//!
//! The dispatcher reports each event with one call on [`Metrics`]: a call's answer, how long the
//! sliding window held a ready call back, a batch's size, jobs reaching `submitted` or
//! `completed`, a change of pause. Recording is always on (it is an atomic add), so the dispatcher
//! has one code path whether or not anything is served. Jobs by status and requests awaiting a
//! verdict are not tracked as events: every scrape reads them from the database, so they agree
//! with the table whoever else writes to it (producers, `requeue`, `prune`), and they are absent
//! from a scrape that could not read it rather than stale.
//!
//! Encoding is prometheus-client's (the official Rust client), in the Prometheus text format
//! 0.0.4, served by axum.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::encoding::{EncodeLabelSet, prometheus_text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::api::refuses_the_host;
use crate::job::Status;
use crate::store::{StatusCounts, Store, StoreError};

const PREFIX: &str = "lsq_revoker";
/// A scrape or health check gives the database this long to answer.
const DATABASE_TIMEOUT: Duration = Duration::from_secs(2);
/// Requests still open when the server is stopped get this long to finish.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// From "the window let it go at once" to several windows of the slowest plan (2 calls in 5 s).
const LIMITER_WAIT_BUCKETS: [f64; 13] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Up to ten times the default `batch.max_size`.
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];
/// From a second (an idle queue) to the default `status_poll.give_up_after` and beyond.
const LATENCY_BUCKETS: [f64; 15] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0,
    86400.0, 259200.0,
];

/// Why sending is held back, as `/healthz` and `lsq_revoker_dispatcher_paused` report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DispatcherState {
    Running,
    /// After a 429. Expected when other integrations share the budget: still healthy.
    RateLimited,
    /// LeadSquared refused the keys (401/403) or the host (404): an operator must act.
    Misconfigured {
        http_status: u16,
    },
}

impl DispatcherState {
    fn as_str(self) -> &'static str {
        match self {
            DispatcherState::Running => "running",
            DispatcherState::RateLimited => "rate_limited",
            DispatcherState::Misconfigured { .. } => "misconfigured",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    endpoint: &'static str,
    /// The HTTP status, or "none" when no answer came (timeout, connection error).
    code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabel {
    stage: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The service's metrics and the dispatcher's state; clones share them.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    api_calls: Family<CallLabels, Counter>,
    limiter_wait: Histogram,
    batch_jobs: Histogram,
    job_latency: Family<StageLabel, Histogram>,
    paused: Family<ReasonLabel, Gauge>,
    /// The dispatcher's state and since when (for `/healthz`).
    state: Mutex<(DispatcherState, Instant)>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let api_calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "api_calls",
            "LeadSquared calls answered, by endpoint (revoke, status) and HTTP code (none: no answer)",
            api_calls.clone(),
        );
        let limiter_wait = Histogram::new(LIMITER_WAIT_BUCKETS);
        registry.register_with_unit(
            "limiter_wait",
            "How long a call that was ready (a free slot, no pause, work waiting) was held back by the sliding window; 0 when it was not",
            Unit::Seconds,
            limiter_wait.clone(),
        );
        let batch_jobs = Histogram::new(BATCH_BUCKETS);
        registry.register(
            "batch_jobs",
            "Jobs carried by each Revoke call",
            batch_jobs.clone(),
        );
        let job_latency: Family<StageLabel, Histogram> =
            Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS));
        registry.register_with_unit(
            "job_latency",
            "From a job's insert (created_at) to its reaching the stage: submitted (accepted by LeadSquared) or completed (confirmed)",
            Unit::Seconds,
            job_latency.clone(),
        );
        let paused = Family::<ReasonLabel, Gauge>::default();
        registry.register(
            "dispatcher_paused",
            "1 while sending is paused for the reason: rate_limited (a 429) or misconfigured (401/403/404)",
            paused.clone(),
        );
        for reason in ["rate_limited", "misconfigured"] {
            paused.get_or_create(&ReasonLabel { reason }).set(0);
        }
        Self {
            inner: Arc::new(Inner {
                registry,
                api_calls,
                limiter_wait,
                batch_jobs,
                job_latency,
                paused,
                state: Mutex::new((DispatcherState::Running, Instant::now())),
            }),
        }
    }

    /// A call to `endpoint` ("revoke" or "status") was answered with `http_status`, or not at all.
    pub fn api_call(&self, endpoint: &'static str, http_status: Option<u16>) {
        let code = http_status.map_or_else(|| "none".to_owned(), |status| status.to_string());
        self.inner
            .api_calls
            .get_or_create(&CallLabels { endpoint, code })
            .inc();
    }

    /// A call started after the sliding window held it back this long.
    pub fn limiter_wait(&self, waited: Duration) {
        self.inner.limiter_wait.observe(waited.as_secs_f64());
    }

    /// A Revoke call started carrying `jobs` jobs.
    pub fn batch(&self, jobs: usize) {
        self.inner.batch_jobs.observe(jobs as f64);
    }

    /// Jobs created at `created_at` (Unix ms; `None` is not measured) reached `stage` at `now`.
    pub fn jobs_reached(&self, stage: Status, now: i64, created_at: &[Option<i64>]) {
        let histogram = self.inner.job_latency.get_or_create(&StageLabel {
            stage: stage.as_str(),
        });
        for created in created_at.iter().flatten() {
            let age_ms = now.saturating_sub(*created).max(0);
            histogram.observe(age_ms as f64 / 1000.0);
        }
    }

    /// The dispatcher paused, resumed, or paused for another reason.
    pub fn dispatcher_state(&self, state: DispatcherState) {
        let mut current = self
            .inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if current.0 != state {
            *current = (state, Instant::now());
        }
        for (reason, on) in [
            ("rate_limited", state == DispatcherState::RateLimited),
            (
                "misconfigured",
                matches!(state, DispatcherState::Misconfigured { .. }),
            ),
        ] {
            self.inner
                .paused
                .get_or_create(&ReasonLabel { reason })
                .set(i64::from(on));
        }
    }

    fn state(&self) -> (DispatcherState, Duration) {
        let (state, since) = *self
            .inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (state, since.elapsed())
    }

    /// The exposition: the recorded families, then the ones read from the database now.
    async fn render(&self, store: &Store) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_text::encode(&mut text, &self.inner.registry)?;
        let read = async {
            Ok::<_, StoreError>((
                store.status_counts().await?,
                store.awaiting_requests().await?,
            ))
        };
        match tokio::time::timeout(DATABASE_TIMEOUT, read).await {
            Ok(Ok((counts, awaiting))) => {
                prometheus_text::encode(&mut text, &database_registry(&counts, awaiting))?;
            }
            Ok(Err(err)) => {
                warn!(error = %err, "metrics scrape without job counts: the database could not be read");
            }
            Err(_) => warn!(
                timeout_ms = DATABASE_TIMEOUT.as_millis() as u64,
                "metrics scrape without job counts: the database did not answer in time"
            ),
        }
        Ok(text)
    }
}

/// The gauges read from the database at scrape time, in a registry of their own so that a
/// scrape that cannot read the database leaves them out instead of repeating old values.
fn database_registry(counts: &StatusCounts, awaiting: u64) -> Registry {
    let mut registry = Registry::with_prefix(PREFIX);
    let jobs = Family::<StatusLabel, Gauge>::default();
    for status in Status::ALL {
        let count = match status {
            Status::Pending => counts.pending,
            Status::InFlight => counts.in_flight,
            Status::Submitted => counts.submitted,
            Status::Completed => counts.completed,
            Status::Failed => counts.failed,
        };
        jobs.get_or_create(&StatusLabel {
            status: status.as_str(),
        })
        .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
    registry.register(
        "jobs",
        "Jobs in revocation_jobs by status, read at scrape time",
        jobs,
    );
    let requests = Gauge::<i64>::default();
    requests.set(i64::try_from(awaiting).unwrap_or(i64::MAX));
    registry.register(
        "requests_awaiting",
        "Accepted requests whose status is still being polled, read at scrape time",
        requests,
    );
    registry
}

/// The running `/metrics` and `/healthz` server; dropping it stops it too.
pub struct Server {
    address: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Server {
    /// Where it listens (the system's choice when the port asked for is 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Stop accepting, let open requests finish within a short grace, then end.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if tokio::time::timeout(STOP_GRACE, &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[derive(Clone)]
struct Served {
    metrics: Metrics,
    store: Store,
}

/// Bind `address` and serve `/metrics` and `/healthz` until `stop` is cancelled or the returned
/// [`Server`] is stopped or dropped.
pub async fn serve(
    address: SocketAddr,
    metrics: Metrics,
    store: Store,
    stop: CancellationToken,
) -> std::io::Result<Server> {
    let listener = TcpListener::bind(address).await?;
    let address = listener.local_addr()?;
    let router = Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(healthz))
        .with_state(Served { metrics, store });
    let shutdown = stop.clone().cancelled_owned();
    let task = tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            error!(error = %err, "the metrics server stopped; /metrics and /healthz are unavailable");
        }
    });
    info!(address = %address, "serving /metrics and /healthz");
    Ok(Server {
        address,
        stop,
        task,
    })
}

async fn scrape(State(served): State<Served>) -> Response {
    match served.metrics.render(&served.store).await {
        Ok(text) => ([(CONTENT_TYPE, prometheus_text::CONTENT_TYPE)], text).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be encoded",
        )
            .into_response(),
    }
}

/// 200 while the service can do its work; 503 naming why not: paused on refused keys or host
/// (a 429 pause is expected and healthy), or the database does not answer.
async fn healthz(State(served): State<Served>) -> (StatusCode, Json<serde_json::Value>) {
    let (state, for_how_long) = served.metrics.state();
    let database =
        match tokio::time::timeout(DATABASE_TIMEOUT, served.store.awaiting_requests()).await {
            Ok(Ok(_)) => None,
            Ok(Err(err)) => Some(format!("database unreachable: {err}")),
            Err(_) => Some(format!(
                "database unreachable: no answer within {} s",
                DATABASE_TIMEOUT.as_secs()
            )),
        };
    let paused = match state {
        DispatcherState::Misconfigured { http_status } if refuses_the_host(http_status) => {
            Some(format!(
                "paused: LeadSquared answers {http_status} (check api.base_url: the account's regional host, https)"
            ))
        }
        DispatcherState::Misconfigured { http_status } => Some(format!(
            "paused: LeadSquared refuses the credentials (HTTP {http_status}); check api.access_key and api.secret_key"
        )),
        DispatcherState::Running | DispatcherState::RateLimited => None,
    };
    let reasons: Vec<String> = paused.into_iter().chain(database.clone()).collect();
    let mut body = serde_json::json!({
        "status": if reasons.is_empty() { "ok" } else { "unhealthy" },
        "dispatcher": state.as_str(),
        "database": if database.is_none() { "ok" } else { "unreachable" },
    });
    if state != DispatcherState::Running {
        body["paused_s"] = for_how_long.as_secs().into();
    }
    if reasons.is_empty() {
        (StatusCode::OK, Json(body))
    } else {
        body["reason"] = reasons.join("; ").into();
        (StatusCode::SERVICE_UNAVAILABLE, Json(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_exposed_with_its_labels_in_prometheus_text() {
        let metrics = Metrics::new();
        metrics.api_call("revoke", Some(200));
        metrics.api_call("status", None);
        metrics.limiter_wait(Duration::from_millis(30));
        metrics.batch(10);
        metrics.jobs_reached(Status::Submitted, 5_000, &[Some(1_000), None, Some(9_000)]);
        metrics.dispatcher_state(DispatcherState::Misconfigured { http_status: 401 });
        let mut text = String::new();
        prometheus_text::encode(&mut text, &metrics.inner.registry).expect("encodes");
        prometheus_text::encode(
            &mut text,
            &database_registry(
                &StatusCounts {
                    pending: 3,
                    ..StatusCounts::default()
                },
                2,
            ),
        )
        .expect("encodes");
        for line in [
            "lsq_revoker_api_calls_total{endpoint=\"revoke\",code=\"200\"} 1",
            "lsq_revoker_api_calls_total{endpoint=\"status\",code=\"none\"} 1",
            "lsq_revoker_limiter_wait_seconds_count 1",
            "lsq_revoker_batch_jobs_sum 10.0",
            // the job created in the future counts as 0, the unreadable one is left out
            "lsq_revoker_job_latency_seconds_count{stage=\"submitted\"} 2",
            "lsq_revoker_job_latency_seconds_sum{stage=\"submitted\"} 4.0",
            "lsq_revoker_dispatcher_paused{reason=\"misconfigured\"} 1",
            "lsq_revoker_dispatcher_paused{reason=\"rate_limited\"} 0",
            "lsq_revoker_jobs{status=\"pending\"} 3",
            "lsq_revoker_jobs{status=\"failed\"} 0",
            "lsq_revoker_requests_awaiting 2",
        ] {
            assert!(
                text.lines().any(|exposed| exposed == line),
                "{line:?} missing from\n{text}"
            );
        }
    }

    #[test]
    fn resuming_after_a_pause_clears_the_paused_gauge() {
        let metrics = Metrics::new();
        metrics.dispatcher_state(DispatcherState::RateLimited);
        let (state, _) = metrics.state();
        assert_eq!(state, DispatcherState::RateLimited);
        metrics.dispatcher_state(DispatcherState::Running);
        let mut text = String::new();
        prometheus_text::encode(&mut text, &metrics.inner.registry).expect("encodes");
        assert!(text.contains("lsq_revoker_dispatcher_paused{reason=\"rate_limited\"} 0"));
    }
}
