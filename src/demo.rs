//! `lsq-revoker demo`: the whole service on a fresh machine, with nothing configured.
//!
//! Starts the built-in LeadSquared simulator on loopback (strict limit, validation, some
//! latency and faults), seeds a throwaway database with a few thousand jobs including malformed
//! ones and ones the "server" rejects, runs the real dispatcher until idle and prints what
//! happened, measured from the simulator's side of the wire.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::app;
use crate::config::Settings;
use crate::dispatcher::Exit;
use crate::simulator::{Endpoint, Simulator, SimulatorConfig, max_calls_in_any_window};
use crate::store::{NewJob, Store};

/// What the demo does; the defaults are what `lsq-revoker demo` runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub jobs: usize,
    pub max_calls: usize,
    pub window: Duration,
    pub batch_size: usize,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            jobs: 3000,
            max_calls: 25,
            window: Duration::from_secs(5),
            batch_size: 50,
        }
    }
}

/// The figures the demo prints.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoReport {
    pub jobs: u64,
    pub submitted: u64,
    pub completed: u64,
    pub failed: u64,
    pub left_pending: u64,
    pub calls: u64,
    pub status_polls: u64,
    pub rate_limited: u64,
    pub server_errors: u64,
    pub rejected_calls: u64,
    pub densest_window: usize,
    pub max_calls: usize,
    pub window_ms: u64,
    pub elapsed_ms: u64,
    /// Steady-state call rate after the first window's burst, as a share of the limit.
    pub share_of_limit: f64,
    pub stopped_early: bool,
}

/// Leads whose revocation the simulator accepts but then reports as failed on the status
/// endpoint: the dispatcher resubmits those requests in halves to isolate them.
const FAILING_LEADS: [&str; 2] = ["880001", "880002"];

/// Leads the simulator rejects with a 400 when they are in a call: the dispatcher has to
/// isolate them by bisection.
const REJECTED_LEADS: [&str; 3] = ["990001", "990002", "990003"];

pub async fn run(options: DemoOptions, cancel: CancellationToken) -> anyhow::Result<DemoReport> {
    let simulator = Simulator::start(SimulatorConfig {
        rate_limit: Some((options.max_calls, options.window)),
        latency: (Duration::from_millis(5), Duration::from_millis(60)),
        server_error_rate: 0.02,
        processing_time: Duration::from_millis(1000),
        failing_lead_ids: FAILING_LEADS
            .iter()
            .map(|lead| (*lead).to_owned())
            .collect::<HashSet<_>>(),
        rejected_lead_ids: REJECTED_LEADS
            .iter()
            .map(|lead| (*lead).to_owned())
            .collect::<HashSet<_>>(),
        ..SimulatorConfig::default()
    })
    .await
    .context("starting the LeadSquared simulator on loopback")?;
    let defaults = SimulatorConfig::default();
    let dir = tempfile::tempdir().context("creating a throwaway directory")?;
    let database = format!("sqlite://{}", dir.path().join("demo.db").display());
    let env = [
        ("DATABASE__URL", database.clone()),
        ("API__BASE_URL", simulator.base_url()),
        ("API__ACCESS_KEY", defaults.access_key.clone()),
        ("API__SECRET_KEY", defaults.secret_key.clone()),
        ("RATE_LIMIT__MAX_CALLS", options.max_calls.to_string()),
        (
            "RATE_LIMIT__WINDOW_MS",
            options.window.as_millis().to_string(),
        ),
        ("BATCH__MAX_SIZE", options.batch_size.to_string()),
        ("RETRY__INITIAL_BACKOFF_MS", "200".to_owned()),
        ("RETRY__MAX_BACKOFF_MS", "2000".to_owned()),
        ("DISPATCHER__IDLE_POLL_MS", "100".to_owned()),
        ("DISPATCHER__SUMMARY_INTERVAL_MS", "10000".to_owned()),
        ("STATUS_POLL__INITIAL_DELAY_MS", "1500".to_owned()),
        ("STATUS_POLL__MAX_INTERVAL_MS", "5000".to_owned()),
    ]
    .map(|(key, value)| (format!("LSQ_REVOKER__{key}"), value));
    let settings = Arc::new(Settings::load_with(None, env)?);

    let store = Store::open(&database).await?;
    let jobs = seed(options.jobs);
    store.insert_jobs(&jobs).await?;
    store.close().await;

    let began = Instant::now();
    let report = app::run(settings, true, cancel).await?;
    let elapsed = began.elapsed();

    let store = Store::connect(&database).await?;
    let counts = store.status_counts().await?;
    store.close().await;
    let stats = simulator.stats();
    let arrivals: Vec<Duration> = simulator
        .calls()
        .iter()
        .filter(|call| !matches!(call.endpoint, Endpoint::Other))
        .map(|call| call.at)
        .collect();
    simulator.shutdown().await;
    Ok(DemoReport {
        jobs: counts.total(),
        submitted: counts.submitted,
        completed: counts.completed,
        failed: counts.failed,
        left_pending: counts.pending + counts.in_flight,
        calls: stats.calls,
        status_polls: stats.status_calls,
        rate_limited: stats.rate_limited,
        server_errors: stats.server_errors,
        rejected_calls: stats.bad_requests,
        densest_window: max_calls_in_any_window(&arrivals, options.window),
        max_calls: options.max_calls,
        window_ms: u64::try_from(options.window.as_millis()).unwrap_or(u64::MAX),
        elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        share_of_limit: share_of_limit(&arrivals, options.max_calls, options.window),
        stopped_early: report.exit == Exit::Stopped,
    })
}

/// The steady-state rate after the first window (which may burst the whole limit at once)
/// relative to the limit: `(calls − max_calls) / (max_calls · span / window)`, where `span`
/// runs from the first call to the last. 1.0 means every window was used to the full.
pub fn share_of_limit(arrivals: &[Duration], max_calls: usize, window: Duration) -> f64 {
    let (Some(first), Some(last)) = (arrivals.iter().min(), arrivals.iter().max()) else {
        return 0.0;
    };
    let span = (*last - *first).as_secs_f64();
    if arrivals.len() <= max_calls || span <= 0.0 {
        return 0.0;
    }
    (arrivals.len() - max_calls) as f64 / (max_calls as f64 * span / window.as_secs_f64())
}

/// A few thousand revocations: mostly valid, some duplicated, ~2% malformed, and a few the
/// simulator rejects.
fn seed(count: usize) -> Vec<NewJob> {
    (0..count)
        .map(|n| {
            let mut job = NewJob {
                user_id: uuid::Uuid::new_v4().to_string(),
                entity_id: (100_000 + n).to_string(),
                context_entity_id: uuid::Uuid::new_v4().to_string(),
                access_type: if n % 7 == 0 { 2 } else { 1 },
            };
            match n % 100 {
                13 => job.user_id = format!("user-{n}"),
                37 => job.entity_id = String::new(),
                71 => job.access_type = 3,
                _ => {}
            }
            if let Some(lead) = REJECTED_LEADS.get(n / 997).filter(|_| n % 997 == 500) {
                job.entity_id = (*lead).to_owned();
            }
            if let Some(lead) = FAILING_LEADS.get(n / 1400).filter(|_| n % 1400 == 700) {
                job.entity_id = (*lead).to_owned();
            }
            job
        })
        .collect()
}

impl std::fmt::Display for DemoReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "lsq-revoker demo: simulator on loopback, limit {} calls per {} ms",
            self.max_calls, self.window_ms
        )?;
        writeln!(f, "  jobs seeded        {:>8}", self.jobs)?;
        writeln!(
            f,
            "  completed          {:>8}   (revocation confirmed by a status poll)",
            self.completed
        )?;
        writeln!(
            f,
            "  submitted          {:>8}   (accepted, not confirmed yet)",
            self.submitted
        )?;
        writeln!(
            f,
            "  failed             {:>8}   (malformed rows, items refused or reported failed, retries exhausted)",
            self.failed
        )?;
        writeln!(f, "  left pending       {:>8}", self.left_pending)?;
        writeln!(
            f,
            "  API calls          {:>8}   ({} status polls, {} answered 400 and bisected, {} answered 500 and retried)",
            self.calls, self.status_polls, self.rejected_calls, self.server_errors
        )?;
        writeln!(f, "  429s               {:>8}", self.rate_limited)?;
        writeln!(
            f,
            "  busiest window     {:>8}   calls in any {} ms (limit {})",
            self.densest_window, self.window_ms, self.max_calls
        )?;
        writeln!(
            f,
            "  share of limit     {:>7.1}%   (first to last call, after the first window; the tail waits on status polls)",
            self.share_of_limit * 100.0
        )?;
        write!(
            f,
            "  elapsed            {:>7.1}s{}",
            self.elapsed_ms as f64 / 1000.0,
            if self.stopped_early {
                "   (stopped early)"
            } else {
                ""
            }
        )
    }
}
