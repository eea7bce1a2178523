//! Claim → check → batch → pace → send → record.
//!
//! One loop owns every decision: when the next call may start (the sliding window, a pause
//! after a 429, a probe after bad credentials), what it carries (halves of a rejected batch
//! first, then newly claimed jobs), and what an answer does to its jobs. Calls themselves run
//! side by side in a [`JoinSet`], at most `api.max_in_flight` at once, so slow answers do not
//! leave budget unused. [`Dispatcher::step`] is one decision; [`Dispatcher::run`] is the loop
//! around it, with shutdown designed in: on cancellation it stops claiming, lets calls in flight
//! finish within the grace period, records their outcomes and releases the rest.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::api::{Client, Outcome, Response};
use crate::clock::Clock;
use crate::config::Settings;
use crate::job::{JobId, JobRow, Revocation};
use crate::limiter::SlidingWindow;
use crate::retry::Backoff;
use crate::store::{Retry, Store, StoreError};

/// How long calls are remembered: enough for the limiter and for an operator's "last hour".
const CALL_LOG_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// The "bad credentials" error is repeated at most this often while paused.
const MISCONFIGURED_LOG_EVERY: Duration = Duration::from_secs(60);
/// Endpoint names in the `api_calls` log.
const REVOKE: &str = "revoke";

/// One revocation in a call, and the queued jobs (duplicates) it settles.
#[derive(Debug)]
struct Item {
    revocation: Revocation,
    jobs: Vec<JobRow>,
}

/// The items of one Revoke call.
#[derive(Debug, Default)]
struct Batch {
    items: Vec<Item>,
}

impl Batch {
    /// Group valid rows by what they revoke, so duplicates share one item.
    fn from_rows(rows: impl IntoIterator<Item = (JobRow, Revocation)>) -> Self {
        let mut index: HashMap<Revocation, usize> = HashMap::new();
        let mut items: Vec<Item> = Vec::new();
        for (row, revocation) in rows {
            match index.get(&revocation) {
                Some(&at) => items[at].jobs.push(row),
                None => {
                    index.insert(revocation.clone(), items.len());
                    items.push(Item {
                        revocation,
                        jobs: vec![row],
                    });
                }
            }
        }
        Self { items }
    }

    fn jobs(&self) -> impl Iterator<Item = &JobRow> {
        self.items.iter().flat_map(|item| &item.jobs)
    }

    fn job_ids(&self) -> Vec<JobId> {
        self.jobs().map(|job| job.id).collect()
    }

    fn job_count(&self) -> usize {
        self.items.iter().map(|item| item.jobs.len()).sum()
    }

    /// The highest attempt number among the jobs, for the log.
    fn attempt(&self) -> u32 {
        self.jobs().map(|job| job.attempts + 1).max().unwrap_or(1)
    }

    fn split(mut self) -> (Batch, Batch) {
        let back = self.items.split_off(self.items.len() / 2);
        (self, Batch { items: back })
    }
}

/// A finished call and the batch it carried.
struct Answer {
    batch: Batch,
    response: Response,
    call_id: i64,
    started: Instant,
}

/// Why sending is held back.
#[derive(Debug, Clone)]
enum Pause {
    Running,
    /// A 429: nothing is sent before `until`.
    RateLimited {
        until: Instant,
    },
    /// 401/403/404: only one probe call at a time, at growing intervals, until one succeeds.
    Misconfigured {
        since: Instant,
        failures: u32,
        next_probe: Instant,
        last_logged: Instant,
    },
}

/// What one [`Dispatcher::step`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A call started carrying this many jobs.
    Sent { jobs: usize },
    /// Claimed rows were all malformed; they are `failed` and no call was made.
    Screened { failed: usize },
    /// Nothing is due. `next_due` is when the earliest waiting retry becomes due, if any.
    Idle { next_due: Option<Instant> },
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// `--until-idle` and nothing is left to do.
    Idle,
    /// Asked to stop (SIGTERM, Ctrl-C).
    Stopped,
}

/// Counts since the last summary line.
#[derive(Debug, Default, Clone, Copy)]
struct Period {
    calls: u64,
    rate_limited: u64,
    submitted: u64,
    failed: u64,
    retried: u64,
}

/// Totals over the whole run, for `demo` and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    pub calls: u64,
    pub rate_limited: u64,
    pub jobs_submitted: u64,
    pub jobs_failed: u64,
    pub jobs_retried: u64,
}

pub struct Dispatcher {
    store: Store,
    client: Client,
    settings: Arc<Settings>,
    clock: Clock,
    owner: String,
    window: SlidingWindow,
    backoff: Backoff,
    probe_backoff: Backoff,
    pause: Pause,
    /// Claimed batches waiting to be sent before anything new: halves of rejected batches.
    ready: VecDeque<Batch>,
    in_flight: JoinSet<Answer>,
    /// After finding nothing due, do not look again before this.
    idle_until: Option<Instant>,
    period: Period,
    totals: Totals,
}

impl Dispatcher {
    /// A dispatcher for a database this process holds the dispatcher lock of: stale claims
    /// are released and recent calls restored into the window.
    pub async fn start(
        store: Store,
        client: Client,
        settings: Arc<Settings>,
        clock: Clock,
    ) -> Result<Self, StoreError> {
        let now = clock.now_ms();
        let released = store.release_stale_claims(now).await?;
        if released > 0 {
            warn!(
                jobs = released,
                "returned jobs claimed by a previous run that did not finish to pending"
            );
        }
        let limits = settings.rate_limit;
        let mut window = SlidingWindow::new(limits.max_calls, limits.window, limits.safety_margin);
        let recent_from = now - millis(limits.window + limits.safety_margin);
        let recent = store.call_starts_since(recent_from).await?;
        window.restore(recent.iter().map(|&ms| clock.instant_of(ms)));
        if !recent.is_empty() {
            info!(
                calls = recent.len(),
                "restored recent calls into the rate window"
            );
        }
        let owner = format!(
            "{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        Ok(Self {
            backoff: Backoff::from_settings(&settings.retry),
            probe_backoff: Backoff::new(
                settings.dispatcher.probe_initial,
                settings.dispatcher.probe_max,
            ),
            store,
            client,
            clock,
            owner,
            window,
            pause: Pause::Running,
            ready: VecDeque::new(),
            in_flight: JoinSet::new(),
            idle_until: None,
            period: Period::default(),
            totals: Totals::default(),
            settings,
        })
    }

    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// Work until cancelled, or with `until_idle` until nothing is pending or in flight.
    pub async fn run(
        &mut self,
        cancel: CancellationToken,
        until_idle: bool,
    ) -> Result<Exit, StoreError> {
        let mut summary = tokio::time::interval(self.settings.dispatcher.summary_interval);
        summary.set_missed_tick_behavior(MissedTickBehavior::Delay);
        summary.tick().await;
        let exit = loop {
            let gate = self.send_gate(Instant::now());
            tokio::select! {
                biased;
                () = cancel.cancelled() => break Exit::Stopped,
                Some(joined) = self.in_flight.join_next(), if !self.in_flight.is_empty() => {
                    match joined {
                        Ok(answer) => self.on_answer(answer).await?,
                        Err(err) => error!(error = %err, "a call task ended abnormally; its jobs are released at the next start"),
                    }
                }
                () = sleep_until(gate.unwrap_or_else(Instant::now)), if gate.is_some() => {
                    match self.step().await? {
                        Step::Idle { next_due } => {
                            if until_idle && next_due.is_none() && self.in_flight.is_empty() && self.ready.is_empty() {
                                break Exit::Idle;
                            }
                            let poll = Instant::now() + self.settings.dispatcher.idle_poll;
                            self.idle_until = Some(next_due.map_or(poll, |due| due.min(poll)));
                        }
                        Step::Sent { .. } | Step::Screened { .. } => self.idle_until = None,
                    }
                }
                _ = summary.tick() => self.log_summary().await?,
            }
        };
        self.drain().await?;
        self.log_summary().await?;
        Ok(exit)
    }

    /// When the next call may start, or `None` while no more calls may be in flight.
    fn send_gate(&self, now: Instant) -> Option<Instant> {
        let (capacity, not_before) = match &self.pause {
            Pause::Running => (self.settings.api.max_in_flight, now),
            Pause::RateLimited { until } => (self.settings.api.max_in_flight, *until),
            Pause::Misconfigured { next_probe, .. } => (1, *next_probe),
        };
        if self.in_flight.len() >= capacity {
            return None;
        }
        let mut at = self.window.next_free(now).max(not_before);
        if self.ready.is_empty()
            && let Some(idle_until) = self.idle_until
        {
            at = at.max(idle_until);
        }
        Some(at)
    }

    /// Start one call if there is something to send; the caller has checked the gate.
    pub async fn step(&mut self) -> Result<Step, StoreError> {
        if let Pause::RateLimited { until } = self.pause
            && Instant::now() >= until
        {
            info!("rate-limit pause over; resuming");
            self.pause = Pause::Running;
        }
        let batch = match self.ready.pop_front() {
            Some(batch) => batch,
            None => {
                let now = self.clock.now_ms();
                let rows = self
                    .store
                    .claim(&self.owner, now, self.settings.batch.max_size)
                    .await?;
                if rows.is_empty() {
                    let next_due = self.store.next_due().await?;
                    return Ok(Step::Idle {
                        next_due: next_due.map(|ms| self.clock.instant_of(ms)),
                    });
                }
                let (batch, invalid) = self.screen(rows);
                if !invalid.is_empty() {
                    self.record_failed(&invalid).await?;
                }
                if batch.items.is_empty() {
                    return Ok(Step::Screened {
                        failed: invalid.len(),
                    });
                }
                batch
            }
        };
        let jobs = batch.job_count();
        let started_ms = self.clock.now_ms();
        let call_id = self
            .store
            .record_call_start(REVOKE, started_ms, jobs)
            .await?;
        let started = Instant::now();
        self.window.record(started);
        self.period.calls += 1;
        self.totals.calls += 1;
        let client = self.client.clone();
        self.in_flight.spawn(async move {
            let revocations: Vec<&Revocation> =
                batch.items.iter().map(|item| &item.revocation).collect();
            let response = client.revoke(&revocations).await;
            Answer {
                batch,
                response,
                call_id,
                started,
            }
        });
        Ok(Step::Sent { jobs })
    }

    /// Split claimed rows into a batch of valid revocations and the rows that cannot be sent.
    fn screen(&self, rows: Vec<JobRow>) -> (Batch, Vec<(JobId, String)>) {
        let mut invalid = Vec::new();
        let valid: Vec<(JobRow, Revocation)> = rows
            .into_iter()
            .filter_map(|row| match row.revocation() {
                Ok(revocation) => Some((row, revocation)),
                Err(reason) => {
                    warn!(job_id = row.id, reason = %reason, "job failed validation and was not sent");
                    invalid.push((row.id, format!("invalid job: {reason}")));
                    None
                }
            })
            .collect();
        (Batch::from_rows(valid), invalid)
    }

    async fn on_answer(&mut self, answer: Answer) -> Result<(), StoreError> {
        let Answer {
            batch,
            response,
            call_id,
            started,
        } = answer;
        let now = self.clock.now_ms();
        let request_id = match &response.outcome {
            Outcome::Accepted { request_id } => Some(request_id.as_str()),
            _ => None,
        };
        info!(
            request_id,
            jobs = batch.job_count(),
            items = batch.items.len(),
            http_status = response.status,
            latency_ms = millis(response.latency),
            attempt = batch.attempt(),
            "revoke call"
        );
        let store = self.store.clone();
        persist(|| store.record_call_end(call_id, response.status, response.latency, request_id))
            .await?;
        match response.outcome {
            Outcome::Accepted { request_id } => {
                self.resume_if_probe(started);
                let ids = batch.job_ids();
                persist(|| store.mark_submitted(&ids, &request_id, now)).await?;
                self.period.submitted += ids.len() as u64;
                self.totals.jobs_submitted += ids.len() as u64;
            }
            Outcome::RateLimited { retry_after } => {
                self.period.rate_limited += 1;
                self.totals.rate_limited += 1;
                let wait = retry_after.unwrap_or(
                    self.settings.rate_limit.window + self.settings.rate_limit.safety_margin,
                );
                let until = Instant::now() + wait;
                warn!(
                    wait_ms = millis(wait),
                    retry_after = retry_after.is_some(),
                    "rate limited by LeadSquared (429); pausing all calls"
                );
                if let Pause::RateLimited { until: current } = self.pause {
                    self.pause = Pause::RateLimited {
                        until: current.max(until),
                    };
                } else if matches!(self.pause, Pause::Running) {
                    self.pause = Pause::RateLimited { until };
                }
                self.ready.push_front(batch);
            }
            Outcome::Rejected { message } => {
                self.resume_if_probe(started);
                if batch.items.len() > 1 {
                    debug!(
                        items = batch.items.len(),
                        "call rejected; sending each half separately to find the bad item"
                    );
                    let (front, back) = batch.split();
                    self.ready.push_front(back);
                    self.ready.push_front(front);
                } else {
                    let reason = format!("rejected by LeadSquared: {message}");
                    let failures: Vec<(JobId, String)> =
                        batch.jobs().map(|job| (job.id, reason.clone())).collect();
                    for (job_id, _) in &failures {
                        warn!(job_id, reason = %reason, "job failed");
                    }
                    self.record_failed(&failures).await?;
                }
            }
            Outcome::Misconfigured { status, message } => {
                self.on_misconfigured(status, &message, started);
                // Back to pending while paused, which may last: the table tells the truth.
                let ids = batch.job_ids();
                persist(|| store.release(&ids, now)).await?;
            }
            Outcome::Retryable { message, .. } => {
                self.resume_if_probe_failed_otherwise(started);
                let max_attempts = self.settings.retry.max_attempts;
                // One delay for the whole call, so its jobs stay together in the next call.
                let run_after = now + millis(self.backoff.delay(batch.attempt()));
                let retries: Vec<Retry> = batch
                    .jobs()
                    .map(|job| Retry {
                        id: job.id,
                        run_after,
                    })
                    .collect();
                let given_up = batch
                    .jobs()
                    .filter(|job| job.attempts + 1 >= max_attempts)
                    .count();
                warn!(
                    jobs = retries.len(),
                    retrying = retries.len() - given_up,
                    given_up,
                    retry_in_ms = run_after - now,
                    error = %message,
                    "call failed"
                );
                persist(|| store.mark_retry(&retries, &message, max_attempts, now)).await?;
                self.period.retried += (retries.len() - given_up) as u64;
                self.period.failed += given_up as u64;
                self.totals.jobs_retried += (retries.len() - given_up) as u64;
                self.totals.jobs_failed += given_up as u64;
            }
        }
        Ok(())
    }

    async fn record_failed(&mut self, failures: &[(JobId, String)]) -> Result<(), StoreError> {
        let store = self.store.clone();
        let now = self.clock.now_ms();
        persist(|| store.mark_failed(failures, now)).await?;
        self.period.failed += failures.len() as u64;
        self.totals.jobs_failed += failures.len() as u64;
        Ok(())
    }

    /// A call that started after the pause began got an answer from the server other than
    /// "bad credentials": the configuration works again.
    fn resume_if_probe(&mut self, started: Instant) {
        if let Pause::Misconfigured { since, .. } = self.pause
            && started >= since
        {
            info!(
                paused_s = since.elapsed().as_secs(),
                "LeadSquared accepts the configuration again; resuming"
            );
            self.pause = Pause::Running;
        }
    }

    /// A 5xx or timeout says nothing about the keys: the probe is spent, try again later.
    fn resume_if_probe_failed_otherwise(&mut self, started: Instant) {
        if let Pause::Misconfigured {
            since,
            failures,
            last_logged,
            ..
        } = self.pause
            && started >= since
        {
            self.pause = Pause::Misconfigured {
                since,
                failures,
                next_probe: Instant::now() + self.probe_backoff.delay(failures),
                last_logged,
            };
        }
    }

    fn on_misconfigured(&mut self, status: u16, message: &str, started: Instant) {
        let now = Instant::now();
        let remedy = if status == 404 {
            "check api.base_url: it must be your account's regional host, e.g. https://api-in21.leadsquared.com"
        } else {
            "check api.access_key and api.secret_key (administrator keys of an active user) and restart or wait: the service retries by itself"
        };
        match &mut self.pause {
            Pause::Misconfigured {
                since,
                failures,
                next_probe,
                last_logged,
            } => {
                if started >= *since {
                    *failures += 1;
                    *next_probe = now + self.probe_backoff.delay(*failures);
                }
                if now.duration_since(*last_logged) >= MISCONFIGURED_LOG_EVERY {
                    *last_logged = now;
                    error!(http_status = status, error = %message, remedy, paused_s = since.elapsed().as_secs(), "LeadSquared still refuses the configuration; sending is paused, probing with one call at a time");
                }
            }
            _ => {
                error!(http_status = status, error = %message, remedy, "LeadSquared refused the configuration; pausing all calls until a probe succeeds");
                self.pause = Pause::Misconfigured {
                    since: now,
                    failures: 1,
                    next_probe: now + self.probe_backoff.delay(1),
                    last_logged: now,
                };
            }
        }
    }

    async fn log_summary(&mut self) -> Result<(), StoreError> {
        let counts = self.store.status_counts().await?;
        let paused = match self.pause {
            Pause::Running => "no",
            Pause::RateLimited { .. } => "rate_limited",
            Pause::Misconfigured { .. } => "misconfigured",
        };
        info!(
            pending = counts.pending,
            in_flight = counts.in_flight,
            submitted = counts.submitted,
            completed = counts.completed,
            failed = counts.failed,
            calls = self.period.calls,
            rate_limited = self.period.rate_limited,
            jobs_submitted = self.period.submitted,
            jobs_failed = self.period.failed,
            jobs_retried = self.period.retried,
            calls_in_window = self.window.in_window(Instant::now()),
            paused,
            "summary"
        );
        self.period = Period::default();
        let cutoff = self.clock.now_ms() - millis(CALL_LOG_RETENTION);
        self.store.prune_calls(cutoff).await?;
        Ok(())
    }

    /// Let calls in flight finish within the grace period and record them; release the rest.
    async fn drain(&mut self) -> Result<(), StoreError> {
        let grace = self.settings.dispatcher.shutdown_grace;
        let deadline = Instant::now() + grace;
        if !self.in_flight.is_empty() {
            info!(
                calls = self.in_flight.len(),
                grace_ms = millis(grace),
                "stopping: waiting for calls in flight"
            );
        }
        while !self.in_flight.is_empty() {
            match tokio::time::timeout_at(deadline, self.in_flight.join_next()).await {
                Ok(Some(Ok(answer))) => self.on_answer(answer).await?,
                Ok(Some(Err(err))) => error!(error = %err, "a call task ended abnormally"),
                Ok(None) => break,
                Err(_) => {
                    warn!(
                        calls = self.in_flight.len(),
                        "grace period over; abandoning calls in flight (their jobs go back to pending and may be sent again)"
                    );
                    self.in_flight.abort_all();
                    while self.in_flight.join_next().await.is_some() {}
                }
            }
        }
        self.ready.clear();
        let released = self
            .store
            .release_claims_of(&self.owner, self.clock.now_ms())
            .await?;
        if released > 0 {
            info!(jobs = released, "released claimed jobs that were not sent");
        }
        Ok(())
    }
}

/// Recording an outcome is retried briefly: losing it would send the jobs again after a
/// restart (harmless, revocation is idempotent) but the table would lie until then.
async fn persist<T, F, Fut>(operation: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    operation
        .retry(
            ExponentialBuilder::new()
                .with_min_delay(Duration::from_millis(50))
                .with_max_delay(Duration::from_secs(2))
                .with_max_times(5),
        )
        .notify(|err, wait| warn!(error = %err, retry_in_ms = millis(wait), "database write failed; retrying"))
        .await
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
