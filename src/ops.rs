//! The operator's commands: `stats`, `requeue`, `prune`, and the daemon's periodic retention.
//!
//! They work on the same settings and database as `run`, while it runs: reads are plain
//! queries (WAL lets them run beside the worker), and writes are short statements on rows the
//! dispatcher does not hold (`failed`, `completed`), so nothing here disturbs it.

use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::refuses_the_host;
use crate::clock::Clock;
use crate::config::{RetentionSettings, Settings};
use crate::job::JobId;
use crate::lock::DispatcherLock;
use crate::store::{Pruned, RequeueFilter, StatusCounts, Store};

/// How many failure reasons `stats` lists.
const TOP_REASONS: usize = 5;
const HOUR_MS: i64 = 3_600_000;

/// `lsq-revoker stats --json`: the shape is stable; fields may be added, never renamed.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub jobs: StatusCounts,
    /// Seconds since the oldest pending job was inserted.
    pub oldest_pending_age_s: Option<f64>,
    pub retry_waiting: RetryWaiting,
    /// Requests accepted by LeadSquared and not yet confirmed.
    pub requests_awaiting: u64,
    pub top_failure_reasons: Vec<FailureReason>,
    pub last_hour: LastHour,
    pub dispatcher: DispatcherState,
}

#[derive(Debug, Clone, Serialize)]
pub struct RetryWaiting {
    pub jobs: u64,
    /// Seconds until the first of them is due.
    pub next_due_in_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailureReason {
    /// The reason with ids and quoted values masked, so alike failures count together.
    pub reason: String,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastHour {
    pub calls: u64,
    pub rate_limited: u64,
    /// Calls as a share of what the limit allows in an hour (0.0–1.0).
    pub limit_share: f64,
    pub max_calls: usize,
    pub window_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DispatcherState {
    pub running: bool,
    pub pid: Option<String>,
    /// `no`, `rate_limited` (a 429 in the last window) or `misconfigured` (the last answer was
    /// 401/403/404: sending is paused until a probe succeeds).
    pub paused: &'static str,
    pub pause_reason: Option<String>,
}

pub async fn stats(settings: &Settings) -> anyhow::Result<Stats> {
    let store = open(settings).await?;
    let now = Clock::new().now_ms();
    let jobs = store.status_counts().await?;
    let oldest = store.oldest_pending().await?;
    let (waiting, next_due) = store.waiting_for_retry(now).await?;
    let requests_awaiting = store.awaiting_requests().await?;
    let reasons = store.failure_reasons().await?;
    let (calls, rate_limited) = store.calls_since(now - HOUR_MS).await?;
    let last_answer = store.last_answer().await?;
    let pid = match store.path() {
        Some(path) => DispatcherLock::holder(path).context("checking the dispatcher lock")?,
        None => None,
    };
    store.close().await;

    let limits = settings.rate_limit;
    let window_ms = u64::try_from(limits.window.as_millis()).unwrap_or(u64::MAX);
    let allowed_per_hour = limits.max_calls as f64 * 3_600_000.0 / window_ms as f64;
    let seconds = |ms: i64| ms as f64 / 1000.0;
    let (paused, pause_reason) = match last_answer {
        Some((_, code))
            if pid.is_some() && (code == 401 || code == 403 || refuses_the_host(code)) =>
        {
            (
                "misconfigured",
                Some(format!(
                    "LeadSquared answered HTTP {code}: check {}",
                    if refuses_the_host(code) {
                        "api.base_url"
                    } else {
                        "api.access_key and api.secret_key"
                    }
                )),
            )
        }
        Some((at, 429))
            if pid.is_some() && now - at < i64::try_from(window_ms).unwrap_or(i64::MAX) * 2 =>
        {
            (
                "rate_limited",
                Some("LeadSquared answered HTTP 429".to_owned()),
            )
        }
        _ => ("no", None),
    };
    Ok(Stats {
        jobs,
        oldest_pending_age_s: oldest.map(|created| seconds(now - created).max(0.0)),
        retry_waiting: RetryWaiting {
            jobs: waiting,
            next_due_in_s: next_due.map(|due| seconds(due - now).max(0.0)),
        },
        requests_awaiting,
        top_failure_reasons: group_reasons(reasons),
        last_hour: LastHour {
            calls,
            rate_limited,
            limit_share: calls as f64 / allowed_per_hour,
            max_calls: limits.max_calls,
            window_ms,
        },
        dispatcher: DispatcherState {
            running: pid.is_some(),
            pid,
            paused,
            pause_reason,
        },
    })
}

/// Count alike reasons together: a reason naming a job's own GUID or lead id is one reason.
fn group_reasons(reasons: Vec<(String, u64)>) -> Vec<FailureReason> {
    let mut grouped: Vec<FailureReason> = Vec::new();
    for (reason, count) in reasons {
        let reason = mask(&reason);
        match grouped.iter_mut().find(|known| known.reason == reason) {
            Some(known) => known.count += count,
            None => grouped.push(FailureReason { reason, count }),
        }
    }
    grouped.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.reason.cmp(&b.reason)));
    grouped.truncate(TOP_REASONS);
    grouped
}

/// Quoted values become `"…"` and long tokens with digits (GUIDs, ids) become `#`.
fn mask(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len());
    let mut quoted = false;
    for (n, part) in reason.split('"').enumerate() {
        if n > 0 {
            out.push('"');
        }
        if quoted {
            out.push('…');
        } else {
            let words: Vec<String> = part
                .split(' ')
                .map(|word| {
                    let digits = word.chars().any(|c| c.is_ascii_digit());
                    let bare = word.trim_matches(|c: char| !c.is_ascii_alphanumeric());
                    if digits && bare.len() >= 6 {
                        word.replace(bare, "#")
                    } else {
                        word.to_owned()
                    }
                })
                .collect();
            out.push_str(&words.join(" "));
        }
        quoted = !quoted;
    }
    out
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dispatcher = match (&self.dispatcher.pid, self.dispatcher.paused) {
            (None, _) => "not running".to_owned(),
            (Some(pid), "no") => format!("running (pid {pid})"),
            (Some(pid), paused) => format!(
                "running (pid {pid}), PAUSED: {paused}{}",
                self.dispatcher
                    .pause_reason
                    .as_deref()
                    .map(|reason| format!(" — {reason}"))
                    .unwrap_or_default()
            ),
        };
        let jobs = &self.jobs;
        writeln!(f, "dispatcher        {dispatcher}")?;
        writeln!(
            f,
            "jobs              pending {} · in_flight {} · submitted {} · completed {} · failed {}",
            jobs.pending, jobs.in_flight, jobs.submitted, jobs.completed, jobs.failed
        )?;
        writeln!(
            f,
            "oldest pending    {}",
            self.oldest_pending_age_s.map_or("—".to_owned(), age)
        )?;
        writeln!(
            f,
            "waiting to retry  {} jobs{}",
            self.retry_waiting.jobs,
            self.retry_waiting
                .next_due_in_s
                .map(|s| format!(", next in {}", age(s)))
                .unwrap_or_default()
        )?;
        writeln!(f, "awaiting verdict  {} requests", self.requests_awaiting)?;
        let hour = &self.last_hour;
        write!(
            f,
            "last hour         {} calls · {} × 429 · {:.1}% of the limit ({} per {} ms)",
            hour.calls,
            hour.rate_limited,
            hour.limit_share * 100.0,
            hour.max_calls,
            hour.window_ms
        )?;
        if !self.top_failure_reasons.is_empty() {
            write!(f, "\ntop failure reasons")?;
            for reason in &self.top_failure_reasons {
                write!(f, "\n  {:>7}  {}", reason.count, reason.reason)?;
            }
        }
        Ok(())
    }
}

/// `95` → `1m 35s`.
fn age(seconds: f64) -> String {
    let total = seconds.round() as u64;
    match total {
        0..60 => format!("{total}s"),
        60..3600 => format!("{}m {}s", total / 60, total % 60),
        3600..86400 => format!("{}h {}m", total / 3600, total % 3600 / 60),
        _ => format!("{}d {}h", total / 86400, total % 86400 / 3600),
    }
}

/// `lsq-revoker requeue`: which `failed` jobs to put back; the filters combine.
#[derive(Debug, clap::Args)]
pub struct RequeueArgs {
    /// Every failed job.
    #[arg(long, conflicts_with_all = ["ids", "reason", "older_than"])]
    pub all: bool,
    /// Only these jobs (comma-separated ids); each must exist and be failed.
    #[arg(long, value_delimiter = ',', value_name = "ID,...")]
    pub ids: Option<Vec<JobId>>,
    /// Only jobs whose last_error contains this text (case-insensitive).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Only jobs that failed longer ago than this (e.g. 2h, 7d).
    #[arg(long, value_name = "AGE", value_parser = age_argument)]
    pub older_than: Option<Duration>,
    /// Show what would be requeued; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `lsq-revoker prune`.
#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// How old a finished job must be, e.g. 30d, 12h.
    #[arg(long, value_name = "AGE", value_parser = age_argument)]
    pub older_than: Duration,
    /// Delete failed jobs older than AGE too (by default they stay until requeued).
    #[arg(long)]
    pub failed: bool,
    /// Show what would be deleted; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `30d`, `12h`, `90m` on the command line.
fn age_argument(text: &str) -> Result<Duration, String> {
    crate::config::parse_duration(text)?.ok_or_else(|| "is empty; give e.g. 30d".to_owned())
}

/// What `requeue` did, or with `dry_run` would do.
#[derive(Debug, Clone)]
pub struct Requeued {
    pub ids: Vec<JobId>,
    pub dry_run: bool,
}

/// Bad input that names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum RequeueError {
    #[error("choose the jobs to requeue: --all, --ids, --reason or --older-than")]
    NoFilter,
    #[error("{0}")]
    NotFailed(String),
}

pub async fn requeue(settings: &Settings, args: RequeueArgs) -> anyhow::Result<Requeued> {
    let now = Clock::new().now_ms();
    let filter = RequeueFilter {
        ids: args.ids,
        reason: args.reason,
        failed_before: args.older_than.map(|age| now - millis(age)),
    };
    let any_filter =
        filter.ids.is_some() || filter.reason.is_some() || filter.failed_before.is_some();
    if !args.all && !any_filter {
        return Err(RequeueError::NoFilter.into());
    }
    let store = open(settings).await?;
    if let Some(ids) = &filter.ids {
        let wrong = store.not_failed(ids).await?;
        if !wrong.is_empty() {
            let described: Vec<String> = wrong
                .iter()
                .map(|(id, status)| match status {
                    Some(status) => format!("job {id} is {status}, not failed"),
                    None => format!("job {id} does not exist"),
                })
                .collect();
            store.close().await;
            return Err(RequeueError::NotFailed(described.join("; ")).into());
        }
    }
    let ids = store.requeue(&filter, now, args.dry_run).await?;
    store.close().await;
    Ok(Requeued {
        ids,
        dry_run: args.dry_run,
    })
}

impl std::fmt::Display for Requeued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = if self.dry_run {
            "would requeue"
        } else {
            "requeued"
        };
        write!(f, "{verb} {} failed jobs", self.ids.len())?;
        if self.dry_run && !self.ids.is_empty() {
            let shown: Vec<String> = self.ids.iter().take(20).map(ToString::to_string).collect();
            let more = self.ids.len().saturating_sub(shown.len());
            write!(f, ": {}", shown.join(", "))?;
            if more > 0 {
                write!(f, " … and {more} more")?;
            }
        }
        Ok(())
    }
}

/// What `prune` deleted, or with `dry_run` would delete.
#[derive(Debug, Clone, Copy)]
pub struct PruneReport {
    pub pruned: Pruned,
    pub dry_run: bool,
}

pub async fn prune(settings: &Settings, args: PruneArgs) -> anyhow::Result<PruneReport> {
    let store = open(settings).await?;
    let before = Clock::new().now_ms() - millis(args.older_than);
    let pruned = store
        .prune(Some(before), args.failed.then_some(before), args.dry_run)
        .await?;
    store.close().await;
    Ok(PruneReport {
        pruned,
        dry_run: args.dry_run,
    })
}

impl std::fmt::Display for PruneReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = if self.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        let Pruned {
            completed_jobs,
            failed_jobs,
            requests,
        } = self.pruned;
        write!(
            f,
            "{verb} {completed_jobs} completed jobs, {failed_jobs} failed jobs, {requests} finished requests"
        )
    }
}

/// The daemon's retention: every `retention.interval`, prune what the settings say.
pub async fn retain(store: Store, settings: RetentionSettings, cancel: CancellationToken) {
    if settings.completed.is_none() && settings.failed.is_none() {
        return;
    }
    let clock = Clock::new();
    let mut tick = tokio::time::interval(settings.interval);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = clock.now_ms();
        let cutoff = |age: Option<Duration>| age.map(|age| now - millis(age));
        match store
            .prune(cutoff(settings.completed), cutoff(settings.failed), false)
            .await
        {
            Ok(pruned) if pruned != Pruned::default() => info!(
                completed_jobs = pruned.completed_jobs,
                failed_jobs = pruned.failed_jobs,
                requests = pruned.requests,
                "retention pruned old rows"
            ),
            Ok(_) => {}
            Err(err) => {
                warn!(error = %err, "retention could not prune; trying again next interval")
            }
        }
    }
}

async fn open(settings: &Settings) -> anyhow::Result<Store> {
    Store::open(&settings.database.url)
        .await
        .with_context(|| format!("database.url = {:?}", settings.database.url))
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alike_reasons_are_counted_together() {
        let grouped = group_reasons(vec![
            ("invalid job: user_id \"a\" is not a GUID".to_owned(), 2),
            ("invalid job: user_id \"b\" is not a GUID".to_owned(), 3),
            (
                "rejected by LeadSquared: HTTP 400: Lead 869196 does not exist".to_owned(),
                1,
            ),
            (
                "rejected by LeadSquared: HTTP 400: Lead 990001 does not exist".to_owned(),
                1,
            ),
        ]);
        assert_eq!(grouped.len(), 2);
        assert_eq!(grouped[0].count, 5);
        assert_eq!(
            grouped[0].reason,
            "invalid job: user_id \"…\" is not a GUID"
        );
        assert_eq!(
            grouped[1].reason,
            "rejected by LeadSquared: HTTP 400: Lead # does not exist"
        );
    }

    #[test]
    fn ages_read_at_a_glance() {
        assert_eq!(age(42.0), "42s");
        assert_eq!(age(95.0), "1m 35s");
        assert_eq!(age(7300.0), "2h 1m");
        assert_eq!(age(90000.0), "1d 1h");
    }
}
