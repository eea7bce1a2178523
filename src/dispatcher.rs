//! Claim → check → batch → pace → send → record, and the status polls that confirm each request.
//!
//! One loop owns every decision: when the next call may start (the sliding window, a pause
//! after a 429, a probe after bad credentials), what it is (halves of a refused batch first, then
//! a due status poll when it is the polls' turn, then newly claimed jobs, then any due poll), and
//! what an answer does to its jobs. Calls run side by side in a [`JoinSet`], at most
//! `api.max_in_flight` at once, so slow answers do not leave budget unused.
//! [`Dispatcher::step`] is one decision; [`Dispatcher::run`] is the loop around it, with
//! shutdown designed in: on cancellation it stops claiming, lets calls in flight finish within
//! the grace period, records their outcomes and releases the rest. Each event that matters to
//! an operator (a call's answer, a wait for the window, a batch, a stage reached, a pause) is
//! also reported to [`Metrics`] with one call.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::api::{Client, Outcome, Response, StatusReport, refuses_the_host};
use crate::batch::Batch;
use crate::clock::Clock;
use crate::config::Settings;
use crate::job::{JobId, JobRow, Revocation, Status};
use crate::limiter::SlidingWindow;
use crate::metrics::{DispatcherState, Metrics};
use crate::poller::{self, Schedule, Verdict};
use crate::retry::Backoff;
use crate::store::{CallEnd, DueRequest, PollRecord, Retry, Store, StoreError};

/// How long calls are remembered: enough for the limiter and for an operator's "last hour".
const CALL_LOG_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// The "bad credentials" error is repeated at most this often while paused.
const MISCONFIGURED_LOG_EVERY: Duration = Duration::from_secs(60);
/// A claimed poll whose answer was never recorded (a crash) is due again this long after the
/// call's timeout.
const POLL_LEASE: Duration = Duration::from_secs(60);

/// A call that was started, and what it was about.
struct Call {
    id: i64,
    started: Instant,
}

/// A finished call.
enum Answer {
    Revoke {
        batch: Batch,
        response: Response<String>,
        call: Call,
    },
    Status {
        request: DueRequest,
        response: Response<StatusReport>,
        call: Call,
    },
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
    /// A Revoke call started carrying this many jobs.
    Sent { jobs: usize },
    /// A status poll started.
    Polled,
    /// Claimed rows were all malformed; they are `failed` and no call was made.
    Screened { failed: usize },
    /// Nothing is due. `next_due` is when the earliest waiting retry or poll becomes due.
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

/// What the dispatcher did, over a summary period or a whole run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    pub calls: u64,
    pub polls: u64,
    pub rate_limited: u64,
    pub jobs_submitted: u64,
    pub jobs_completed: u64,
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
    /// `Some` when status polling is on.
    polls: Option<Schedule>,
    pause: Pause,
    /// Claimed batches waiting to be sent before anything new: halves of refused batches.
    ready: VecDeque<Batch>,
    in_flight: JoinSet<Answer>,
    /// Revoke calls since the last poll, for the polls' share of the budget.
    revokes_since_poll: u32,
    /// After finding nothing due, do not look again before this.
    idle_until: Option<Instant>,
    /// Since when a ready call is held back by the sliding window alone (for metrics).
    window_held_since: Option<Instant>,
    metrics: Metrics,
    period: Totals,
    totals: Totals,
}

impl Dispatcher {
    /// A dispatcher for a database this process holds the dispatcher lock of: stale claims
    /// are released and recent calls restored into the window. It reports to `metrics`.
    pub async fn start(
        store: Store,
        client: Client,
        settings: Arc<Settings>,
        clock: Clock,
        metrics: Metrics,
    ) -> Result<Self, StoreError> {
        let now = clock.now_ms();
        let released = store.release_stale_claims(now).await?;
        if released > 0 {
            warn!(
                jobs = released,
                "returned jobs claimed by a previous run that did not finish to pending"
            );
        }
        if settings.status_poll.enabled {
            let adopted = store.adopt_unfollowed_requests(now).await?;
            if adopted > 0 {
                info!(
                    requests = adopted,
                    "following requests submitted while status polling was off"
                );
            }
        }
        let limits = settings.rate_limit;
        let mut window = SlidingWindow::new(limits.max_calls, limits.window, limits.safety_margin);
        let recent_from = now - millis(limits.window + limits.safety_margin);
        let recent = store.call_starts_since(recent_from).await?;
        // A start "in the future" (the wall clock was set back since) counts as now, so it
        // holds the window for one window at most.
        window.restore(recent.iter().map(|&ms| clock.instant_of(ms.min(now))));
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
            polls: settings
                .status_poll
                .enabled
                .then(|| Schedule::new(&settings.status_poll)),
            store,
            client,
            clock,
            owner,
            window,
            pause: Pause::Running,
            ready: VecDeque::new(),
            in_flight: JoinSet::new(),
            revokes_since_poll: 0,
            idle_until: None,
            window_held_since: None,
            metrics,
            period: Totals::default(),
            totals: Totals::default(),
            settings,
        })
    }

    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// Work until cancelled, or with `until_idle` until no job is pending, in flight or waiting
    /// for a retry, and (with status polling) no request awaits a verdict.
    pub async fn run(
        &mut self,
        cancel: CancellationToken,
        until_idle: bool,
    ) -> Result<Exit, StoreError> {
        let mut summary = tokio::time::interval(self.settings.dispatcher.summary_interval);
        summary.set_missed_tick_behavior(MissedTickBehavior::Delay);
        summary.tick().await;
        let exit = loop {
            let now = Instant::now();
            let gate = self.send_gate(now);
            self.note_window_hold(now);
            tokio::select! {
                biased;
                () = cancel.cancelled() => break Exit::Stopped,
                Some(joined) = self.in_flight.join_next(), if !self.in_flight.is_empty() => {
                    match joined {
                        Ok(answer) => self.on_answer(answer).await?,
                        Err(err) => error!(error = %err, "a call task ended abnormally; its jobs are released at the next start"),
                    }
                    // While the window holds the next step back, notice here that all is done.
                    let now = Instant::now();
                    let held_back = self.send_gate(now).is_some_and(|at| at > now);
                    if until_idle && held_back && self.nothing_left().await? {
                        break Exit::Idle;
                    }
                }
                () = sleep_until(gate.unwrap_or_else(Instant::now)), if gate.is_some() => {
                    match self.step().await? {
                        Step::Idle { next_due } => {
                            self.window_held_since = None;
                            if until_idle && next_due.is_none() && self.in_flight.is_empty() && self.ready.is_empty() {
                                break Exit::Idle;
                            }
                            let poll = Instant::now() + self.settings.dispatcher.idle_poll;
                            self.idle_until = Some(next_due.map_or(poll, |due| due.min(poll)));
                        }
                        Step::Sent { .. } | Step::Polled | Step::Screened { .. } => self.idle_until = None,
                    }
                }
                _ = summary.tick() => self.log_summary().await?,
            }
        };
        self.drain().await?;
        self.log_summary().await?;
        Ok(exit)
    }

    /// Nothing in flight or waiting to be sent, no job pending (due or not) and, with polling,
    /// no request awaiting a verdict.
    async fn nothing_left(&self) -> Result<bool, StoreError> {
        if !self.in_flight.is_empty() || !self.ready.is_empty() {
            return Ok(false);
        }
        if self.store.any_pending().await? {
            return Ok(false);
        }
        Ok(match self.polls {
            Some(_) => self.store.next_poll_due().await?.is_none(),
            None => true,
        })
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

    /// Note when a call that is ready (a free slot, no pause, work waiting: halves of a refused
    /// batch, or a backlog since the last step sent) starts being held back by the sliding
    /// window alone; `lsq_revoker_limiter_wait_seconds` is the time from then to its start.
    fn note_window_hold(&mut self, now: Instant) {
        let work_waiting = !self.ready.is_empty() || self.idle_until.is_none();
        let slot_free = matches!(self.pause, Pause::Running)
            && self.in_flight.len() < self.settings.api.max_in_flight;
        if self.window_held_since.is_none()
            && work_waiting
            && slot_free
            && self.window.next_free(now) > now
        {
            self.window_held_since = Some(now);
        }
    }

    /// Start one call if there is something to send; the caller has checked the gate.
    ///
    /// The order is the budget rule: halves of a refused batch first (their jobs are already
    /// claimed); then, once `status_poll.every_nth_call - 1` Revoke calls went out since the last
    /// poll, a due poll; then new revocations; then any due poll. So with a backlog revocations
    /// get most of the budget, and confirmations still advance.
    pub async fn step(&mut self) -> Result<Step, StoreError> {
        if let Pause::RateLimited { until } = self.pause
            && Instant::now() >= until
        {
            info!("rate-limit pause over; resuming");
            self.pause = Pause::Running;
            self.metrics.dispatcher_state(DispatcherState::Running);
        }
        if let Some(batch) = self.ready.pop_front() {
            return self.send_revoke(batch).await;
        }
        let polls_turn = self.revokes_since_poll + 1 >= self.settings.status_poll.every_nth_call;
        if polls_turn && let Some(request) = self.claim_poll().await? {
            return self.send_poll(request).await;
        }
        let now = self.clock.now_ms();
        let rows = self
            .store
            .claim(&self.owner, now, self.settings.batch.max_size)
            .await?;
        if !rows.is_empty() {
            let (batch, invalid) = screen(rows);
            if !invalid.is_empty() {
                self.record_failed(&invalid).await?;
            }
            if batch.items.is_empty() {
                return Ok(Step::Screened {
                    failed: invalid.len(),
                });
            }
            return self.send_revoke(batch).await;
        }
        if let Some(request) = self.claim_poll().await? {
            return self.send_poll(request).await;
        }
        let job_due = self.store.next_due().await?;
        let poll_due = match self.polls {
            Some(_) => self.store.next_poll_due().await?,
            None => None,
        };
        let next_due = [job_due, poll_due].into_iter().flatten().min();
        Ok(Step::Idle {
            next_due: next_due.map(|ms| self.clock.instant_of(ms)),
        })
    }

    /// Record the start of a call in the window and in the call log, before it is sent.
    async fn start_call(&mut self, endpoint: &str, jobs: usize) -> Result<Call, StoreError> {
        let id = self
            .store
            .record_call_start(endpoint, self.clock.now_ms(), jobs)
            .await?;
        let started = Instant::now();
        self.window.record(started);
        let held = self.window_held_since.take();
        self.metrics
            .limiter_wait(held.map_or(Duration::ZERO, |since| {
                started.saturating_duration_since(since)
            }));
        self.tally(|totals| totals.calls += 1);
        Ok(Call { id, started })
    }

    async fn send_revoke(&mut self, batch: Batch) -> Result<Step, StoreError> {
        let jobs = batch.job_count();
        let call = self.start_call("revoke", jobs).await?;
        self.metrics.batch(jobs);
        self.revokes_since_poll += 1;
        let client = self.client.clone();
        self.in_flight.spawn(async move {
            let response = client.revoke(&batch.revocations()).await;
            Answer::Revoke {
                batch,
                response,
                call,
            }
        });
        Ok(Step::Sent { jobs })
    }

    async fn claim_poll(&mut self) -> Result<Option<DueRequest>, StoreError> {
        if self.polls.is_none() {
            return Ok(None);
        }
        let now = self.clock.now_ms();
        let lease = millis(self.settings.api.timeout + POLL_LEASE);
        self.store.claim_due_request(now, now + lease).await
    }

    async fn send_poll(&mut self, request: DueRequest) -> Result<Step, StoreError> {
        let call = self.start_call("status", 0).await?;
        self.revokes_since_poll = 0;
        self.tally(|totals| totals.polls += 1);
        let client = self.client.clone();
        self.in_flight.spawn(async move {
            let response = client.status(&request.request_id).await;
            Answer::Status {
                request,
                response,
                call,
            }
        });
        Ok(Step::Polled)
    }

    async fn on_answer(&mut self, answer: Answer) -> Result<(), StoreError> {
        match answer {
            Answer::Revoke {
                batch,
                response,
                call,
            } => self.on_revoke_answer(batch, response, call).await,
            Answer::Status {
                request,
                response,
                call,
            } => self.on_status_answer(request, response, call).await,
        }
    }

    async fn on_revoke_answer(
        &mut self,
        batch: Batch,
        response: Response<String>,
        call: Call,
    ) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let request_id = match &response.outcome {
            Outcome::Accepted(request_id) => Some(request_id.as_str()),
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
        let end = CallEnd {
            call: call.id,
            http_status: response.status,
            latency: response.latency,
            request_id,
        };
        if request_id.is_none() {
            persist(|| store.record_call_end(&end)).await?;
        }
        self.metrics.api_call("revoke", response.status);
        match response.outcome {
            Outcome::Accepted(ref request_id) => {
                self.resume_if_probe(call.started);
                let ids = batch.job_ids();
                let first_poll = self.polls.map(|schedule| now + millis(schedule.first()));
                persist(|| store.mark_submitted(&ids, &end, request_id, now, first_poll)).await?;
                let created: Vec<Option<i64>> = batch.jobs().map(|job| job.created_at).collect();
                self.metrics.jobs_reached(Status::Submitted, now, &created);
                self.tally(|totals| totals.jobs_submitted += ids.len() as u64);
            }
            Outcome::RateLimited { retry_after } => {
                self.on_rate_limited(retry_after);
                self.ready.push_front(batch);
            }
            Outcome::Rejected { message } => {
                self.resume_if_probe(call.started);
                if batch.items.len() > 1 {
                    debug!(
                        items = batch.items.len(),
                        "call refused; sending each half separately to find the bad item"
                    );
                    self.requeue_in_halves(batch);
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
                self.on_misconfigured(status, &message, call.started);
                // Back to pending while paused, which may last: the table tells the truth.
                let ids = batch.job_ids();
                persist(|| store.release(&ids, now)).await?;
            }
            Outcome::Retryable { message, .. } => {
                self.probe_spent(call.started);
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
                    .count() as u64;
                let retrying = retries.len() as u64 - given_up;
                warn!(
                    jobs = retries.len(),
                    retrying,
                    given_up,
                    retry_in_ms = run_after - now,
                    error = %message,
                    "call failed"
                );
                persist(|| store.mark_retry(&retries, &message, max_attempts, now)).await?;
                self.tally(|totals| {
                    totals.jobs_retried += retrying;
                    totals.jobs_failed += given_up;
                });
            }
        }
        Ok(())
    }

    async fn on_status_answer(
        &mut self,
        request: DueRequest,
        response: Response<StatusReport>,
        call: Call,
    ) -> Result<(), StoreError> {
        let Some(schedule) = self.polls else {
            return Ok(());
        };
        let now = self.clock.now_ms();
        let id = request.request_id.as_str();
        let polls = request.polls + 1;
        let report = match &response.outcome {
            Outcome::Accepted(report) => Some(report),
            _ => None,
        };
        info!(
            request_id = id,
            poll = polls,
            http_status = response.status,
            latency_ms = millis(response.latency),
            share_status = report.and_then(|report| report.share_status),
            "status poll"
        );
        let store = self.store.clone();
        let end = CallEnd {
            call: call.id,
            http_status: response.status,
            latency: response.latency,
            request_id: Some(id),
        };
        persist(|| store.record_call_end(&end)).await?;
        self.metrics.api_call("status", response.status);
        let age = Duration::from_millis(u64::try_from(now - request.sent_at).unwrap_or(0));
        let next_poll = now + millis(schedule.after(polls));
        let give_up_after = self.settings.status_poll.give_up_after.as_secs();
        let never_confirmed = |last: &str| {
            format!(
                "status never confirmed within {give_up_after}s: ask LeadSquared about request id {id} (last answer: {last})"
            )
        };
        let nothing = PollRecord::default();
        match response.outcome {
            Outcome::Accepted(report) => {
                self.resume_if_probe(call.started);
                let record = PollRecord {
                    share_status: report.share_status,
                    response_text: report.response_text.as_deref(),
                    error_message: report.error_message.as_deref(),
                };
                match poller::verdict(&report, &self.settings.status_poll) {
                    Verdict::Completed => {
                        let created =
                            persist(|| store.settle_request(id, &record, None, now)).await?;
                        self.metrics.jobs_reached(Status::Completed, now, &created);
                        let jobs = created.len();
                        info!(request_id = id, jobs, polls, "revocation confirmed");
                        self.tally(|totals| totals.jobs_completed += jobs as u64);
                    }
                    Verdict::Failed { error } => self.on_request_error(id, &record, &error).await?,
                    Verdict::Awaiting if schedule.given_up(age) => {
                        let last = format!(
                            "ShareStatus {:?}, {:?}",
                            report.share_status, report.response_text
                        );
                        self.give_up_request(id, &record, &never_confirmed(&last))
                            .await?;
                    }
                    Verdict::Awaiting => {
                        persist(|| store.record_poll(id, &record, None, next_poll, now)).await?;
                    }
                }
            }
            Outcome::RateLimited { retry_after } => {
                self.on_rate_limited(retry_after);
                let error = "HTTP 429";
                persist(|| store.record_poll(id, &nothing, Some(error), now, now)).await?;
            }
            Outcome::Misconfigured { status, message } => {
                self.on_misconfigured(status, &message, call.started);
                persist(|| store.record_poll(id, &nothing, Some(&message), now, now)).await?;
            }
            Outcome::Rejected { message } => {
                self.resume_if_probe(call.started);
                let reason = format!("LeadSquared does not know request id {id}: {message}");
                self.give_up_request(id, &nothing, &reason).await?;
            }
            Outcome::Retryable { message, .. } if schedule.given_up(age) => {
                self.probe_spent(call.started);
                self.give_up_request(id, &nothing, &never_confirmed(&message))
                    .await?;
            }
            Outcome::Retryable { message, .. } => {
                self.probe_spent(call.started);
                warn!(request_id = id, error = %message, "status poll failed; asking again later");
                persist(|| store.record_poll(id, &nothing, Some(&message), next_poll, now)).await?;
            }
        }
        Ok(())
    }

    /// A request reported an error: with several items, resubmit them in halves until the one
    /// that fails is alone; with one, its jobs fail with the vendor's message.
    async fn on_request_error(
        &mut self,
        id: &str,
        record: &PollRecord<'_>,
        error: &str,
    ) -> Result<(), StoreError> {
        let store = self.store.clone();
        let now = self.clock.now_ms();
        // Counted as the batch would send them (GUIDs compared as GUIDs, duplicates as one
        // item), not as stored: two rows differing in GUID case are one item, which must fail
        // here rather than be resubmitted alone, again and again.
        let rows = persist(|| store.request_jobs(id)).await?;
        let items = Batch::from_rows(rows.iter().filter_map(|row| {
            let revocation = row.revocation().ok()?;
            Some((row.clone(), revocation))
        }))
        .items
        .len();
        if items > 1 {
            let rows = persist(|| store.split_request(id, record, &self.owner, now)).await?;
            warn!(
                request_id = id,
                jobs = rows.len(),
                error,
                "request reported an error; resubmitting its jobs in halves to find the failing one"
            );
            let (batch, invalid) = screen(rows);
            self.record_failed(&invalid).await?;
            if batch.items.len() > 1 {
                self.requeue_in_halves(batch);
            } else if !batch.items.is_empty() {
                self.ready.push_front(batch);
            }
            Ok(())
        } else {
            let reason =
                format!("LeadSquared could not apply the revocation (request {id}): {error}");
            self.give_up_request(id, record, &reason).await
        }
    }

    async fn give_up_request(
        &mut self,
        id: &str,
        record: &PollRecord<'_>,
        reason: &str,
    ) -> Result<(), StoreError> {
        let store = self.store.clone();
        let now = self.clock.now_ms();
        let jobs = persist(|| store.settle_request(id, record, Some(reason), now))
            .await?
            .len() as u64;
        warn!(request_id = id, jobs, reason, "request failed");
        self.tally(|totals| totals.jobs_failed += jobs);
        Ok(())
    }

    fn requeue_in_halves(&mut self, batch: Batch) {
        let (front, back) = batch.split();
        self.ready.push_front(back);
        self.ready.push_front(front);
    }

    async fn record_failed(&mut self, failures: &[(JobId, String)]) -> Result<(), StoreError> {
        if failures.is_empty() {
            return Ok(());
        }
        let store = self.store.clone();
        let now = self.clock.now_ms();
        persist(|| store.mark_failed(failures, now)).await?;
        self.tally(|totals| totals.jobs_failed += failures.len() as u64);
        Ok(())
    }

    fn tally(&mut self, count: impl Fn(&mut Totals)) {
        count(&mut self.period);
        count(&mut self.totals);
    }

    fn on_rate_limited(&mut self, retry_after: Option<Duration>) {
        self.tally(|totals| totals.rate_limited += 1);
        let limits = self.settings.rate_limit;
        let wait = retry_after.unwrap_or(limits.window + limits.safety_margin);
        let until = Instant::now() + wait;
        warn!(
            wait_ms = millis(wait),
            retry_after = retry_after.is_some(),
            "rate limited by LeadSquared (429); pausing all calls"
        );
        match self.pause {
            Pause::RateLimited { until: current } => {
                self.pause = Pause::RateLimited {
                    until: current.max(until),
                };
            }
            Pause::Running => {
                self.pause = Pause::RateLimited { until };
                self.metrics.dispatcher_state(DispatcherState::RateLimited);
            }
            // Still paused on the configuration; the next probe waits for the 429 too.
            Pause::Misconfigured {
                ref mut next_probe, ..
            } => *next_probe = (*next_probe).max(until),
        }
    }

    /// A call that started after the pause began got an answer other than "bad credentials"
    /// from the server: the configuration works again.
    fn resume_if_probe(&mut self, started: Instant) {
        if let Pause::Misconfigured { since, .. } = self.pause
            && started >= since
        {
            info!(
                paused_s = since.elapsed().as_secs(),
                "LeadSquared accepts the configuration again; resuming"
            );
            self.pause = Pause::Running;
            self.metrics.dispatcher_state(DispatcherState::Running);
        }
    }

    /// A 5xx or timeout says nothing about the keys: the probe is spent, try again later.
    fn probe_spent(&mut self, started: Instant) {
        if let Pause::Misconfigured {
            since,
            failures,
            ref mut next_probe,
            ..
        } = self.pause
            && started >= since
        {
            *next_probe = Instant::now() + self.probe_backoff.delay(failures);
        }
    }

    fn on_misconfigured(&mut self, status: u16, message: &str, started: Instant) {
        let now = Instant::now();
        let remedy = if refuses_the_host(status) {
            "check api.base_url: it must be your account's regional host, e.g. https://api-in21.leadsquared.com"
        } else {
            "check api.access_key and api.secret_key (administrator keys of an active user); the service resumes by itself once they work"
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
                self.metrics
                    .dispatcher_state(DispatcherState::Misconfigured {
                        http_status: status,
                    });
            }
        }
    }

    async fn log_summary(&mut self) -> Result<(), StoreError> {
        let counts = self.store.status_counts().await?;
        let awaiting = self.store.awaiting_requests().await?;
        let paused = match self.pause {
            Pause::Running => "no",
            Pause::RateLimited { .. } => "rate_limited",
            Pause::Misconfigured { .. } => "misconfigured",
        };
        let period = self.period;
        info!(
            pending = counts.pending,
            in_flight = counts.in_flight,
            submitted = counts.submitted,
            completed = counts.completed,
            failed = counts.failed,
            requests_awaiting = awaiting,
            calls = period.calls,
            polls = period.polls,
            rate_limited = period.rate_limited,
            jobs_submitted = period.jobs_submitted,
            jobs_completed = period.jobs_completed,
            jobs_failed = period.jobs_failed,
            jobs_retried = period.jobs_retried,
            calls_in_window = self.window.in_window(Instant::now()),
            paused,
            "summary"
        );
        self.period = Totals::default();
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

/// Split claimed rows into a batch of valid revocations and the rows that cannot be sent.
fn screen(rows: Vec<JobRow>) -> (Batch, Vec<(JobId, String)>) {
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
