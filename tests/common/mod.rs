//! One simulator and one fresh SQLite file per test, and the settings that join them.
#![allow(dead_code)] // each test binary uses its own subset

use std::sync::Arc;
use std::time::Duration;

use lsq_revoker::app::{self, RunReport};
use lsq_revoker::config::Settings;
use lsq_revoker::simulator::{Endpoint, Simulator, SimulatorConfig};
use lsq_revoker::store::{NewJob, Store};
use tokio_util::sync::CancellationToken;

pub const ACCESS_KEY: &str = "test-access-key";
pub const SECRET_KEY: &str = "test-secret-key-5f1c9a";

/// Tests run on a short window so pacing shows in seconds, not minutes.
pub const MAX_CALLS: usize = 5;
pub const WINDOW: Duration = Duration::from_millis(500);

pub struct Harness {
    pub simulator: Simulator,
    pub dir: tempfile::TempDir,
    pub database_url: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobState {
    pub id: i64,
    pub status: String,
    pub attempts: i64,
    pub request_id: Option<String>,
    pub last_error: Option<String>,
}

impl Harness {
    /// A simulator with the test window and keys, adjusted by `adjust`.
    pub async fn start(adjust: impl FnOnce(&mut SimulatorConfig)) -> Self {
        let mut config = SimulatorConfig {
            access_key: ACCESS_KEY.to_owned(),
            secret_key: SECRET_KEY.to_owned(),
            rate_limit: Some((MAX_CALLS, WINDOW)),
            ..SimulatorConfig::default()
        };
        adjust(&mut config);
        let simulator = Simulator::start(config).await.expect("simulator starts");
        let dir = tempfile::tempdir().expect("tempdir");
        let database_url = format!("sqlite://{}", dir.path().join("queue.db").display());
        Self {
            simulator,
            dir,
            database_url,
        }
    }

    /// Environment for a worker against this harness: test-speed settings, then `extra`.
    pub fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("DATABASE__URL", self.database_url.clone()),
            ("API__BASE_URL", self.simulator.base_url()),
            ("API__ACCESS_KEY", ACCESS_KEY.to_owned()),
            ("API__SECRET_KEY", SECRET_KEY.to_owned()),
            ("API__TIMEOUT_MS", "3000".to_owned()),
            ("RATE_LIMIT__MAX_CALLS", MAX_CALLS.to_string()),
            ("RATE_LIMIT__WINDOW_MS", WINDOW.as_millis().to_string()),
            ("RATE_LIMIT__SAFETY_MARGIN_MS", "20".to_owned()),
            ("BATCH__MAX_SIZE", "10".to_owned()),
            ("RETRY__INITIAL_BACKOFF_MS", "20".to_owned()),
            ("RETRY__MAX_BACKOFF_MS", "100".to_owned()),
            ("DISPATCHER__IDLE_POLL_MS", "20".to_owned()),
            ("DISPATCHER__SUMMARY_INTERVAL_MS", "1000".to_owned()),
            ("DISPATCHER__PROBE_INITIAL_MS", "100".to_owned()),
            ("DISPATCHER__PROBE_MAX_MS", "400".to_owned()),
            ("DISPATCHER__SHUTDOWN_GRACE_MS", "3000".to_owned()),
            ("STATUS_POLL__ENABLED", "false".to_owned()),
        ]
        .into_iter()
        .map(|(key, value)| (format!("LSQ_REVOKER__{key}"), value))
        .collect();
        env.extend(
            extra
                .iter()
                .map(|(key, value)| (format!("LSQ_REVOKER__{key}"), (*value).to_owned())),
        );
        env
    }

    pub fn settings(&self, extra: &[(&str, &str)]) -> Arc<Settings> {
        Arc::new(Settings::load_with(None, self.env(extra)).expect("test settings are valid"))
    }

    pub async fn store(&self) -> Store {
        Store::open(&self.database_url)
            .await
            .expect("database opens")
    }

    pub async fn seed(&self, jobs: &[NewJob]) {
        let store = self.store().await;
        store.insert_jobs(jobs).await.expect("jobs inserted");
        store.close().await;
    }

    /// Run the real dispatcher until idle, failing the test if that takes longer than `limit`.
    pub async fn run_until_idle(&self, extra: &[(&str, &str)], limit: Duration) -> RunReport {
        tokio::time::timeout(
            limit,
            app::run(self.settings(extra), true, CancellationToken::new()),
        )
        .await
        .expect("the run reached idle in time")
        .expect("the run succeeded")
    }

    pub async fn jobs(&self) -> Vec<JobState> {
        let store = self.store().await;
        type Row = (i64, String, i64, Option<String>, Option<String>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT id, status, attempts, request_id, last_error FROM revocation_jobs ORDER BY id",
        )
        .fetch_all(store.pool())
        .await
        .expect("jobs read");
        store.close().await;
        rows.into_iter()
            .map(|(id, status, attempts, request_id, last_error)| JobState {
                id,
                status,
                attempts,
                request_id,
                last_error,
            })
            .collect()
    }

    /// Every job has `status` (and there is at least one); a failure names the first that has not.
    pub async fn assert_all_jobs(&self, status: &str) {
        let jobs = self.jobs().await;
        assert!(!jobs.is_empty(), "no jobs in the table");
        if let Some(job) = jobs.iter().find(|job| job.status != status) {
            panic!("every job should be {status}, but {job:?} is not");
        }
    }

    /// Arrival times of every call the simulator saw on an API route.
    pub fn arrivals(&self) -> Vec<Duration> {
        self.simulator
            .calls()
            .into_iter()
            .filter(|call| !matches!(call.endpoint, Endpoint::Other))
            .map(|call| call.at)
            .collect()
    }
}

pub const USER: &str = "0203f172-8642-11e7-9bed-069b743e848f";

/// A valid job for lead `n` (distinct activity per `n`).
pub fn job(n: usize) -> NewJob {
    NewJob {
        user_id: USER.to_owned(),
        entity_id: (100_000 + n).to_string(),
        context_entity_id: format!("9a0e8f2c-1b7d-4c55-8f5e-{n:012x}"),
        access_type: 1,
    }
}

pub fn jobs(count: usize) -> Vec<NewJob> {
    (0..count).map(job).collect()
}
