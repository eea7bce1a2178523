//! Following an accepted request until LeadSquared confirms it.
//!
//! A `submitted` job only means the Revoke call was accepted; the revocation is applied
//! asynchronously. Every accepted request is recorded in `revoke_requests` and polled with
//! Status/Get on a growing interval until a verdict: processed (its jobs are `completed`), an
//! error (its jobs are resubmitted in halves to isolate the one that fails), or no verdict before
//! `status_poll.give_up_after` (its jobs are `failed`, naming the request id). This module holds
//! those rules; the dispatcher makes the calls, since polls spend the same budget as revocations.

use std::time::Duration;

use crate::api::StatusReport;
use crate::config::StatusPollSettings;
use crate::retry::Backoff;

/// What a Status/Get answer means for the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Processed without error: the access is revoked.
    Completed,
    /// Processed with an error message: some item could not be revoked.
    Failed { error: String },
    /// Not processed yet: ask again later.
    Awaiting,
}

/// Read a report by the documented rules: a non-null `ErrorMessage` is a failure whatever the
/// `ShareStatus`; a processed `ShareStatus` without one is success; anything else is awaited.
pub fn verdict(report: &StatusReport, settings: &StatusPollSettings) -> Verdict {
    if let Some(error) = &report.error_message {
        return Verdict::Failed {
            error: error.clone(),
        };
    }
    match report.share_status {
        Some(code) if settings.processed_share_status.contains(&code) => Verdict::Completed,
        _ => Verdict::Awaiting,
    }
}

/// When to poll next.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    initial: Duration,
    backoff: Backoff,
    give_up_after: Duration,
}

impl Schedule {
    pub fn new(settings: &StatusPollSettings) -> Self {
        Self {
            initial: settings.initial_delay,
            backoff: Backoff::new(settings.initial_delay, settings.max_interval),
            give_up_after: settings.give_up_after,
        }
    }

    /// From the Revoke call to the first poll.
    pub fn first(&self) -> Duration {
        self.initial
    }

    /// After `polls` polls without a verdict: doubling from the initial delay, with jitter,
    /// capped at `max_interval`.
    pub fn after(&self, polls: u32) -> Duration {
        self.backoff.delay(polls)
    }

    /// Whether a request sent `age` ago has waited too long for a verdict.
    pub fn given_up(&self, age: Duration) -> bool {
        age >= self.give_up_after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> StatusPollSettings {
        StatusPollSettings {
            enabled: true,
            initial_delay: Duration::from_secs(3),
            max_interval: Duration::from_secs(60),
            give_up_after: Duration::from_secs(3600),
            processed_share_status: vec![6],
            every_nth_call: 5,
        }
    }

    fn report(share_status: Option<i64>, error: Option<&str>) -> StatusReport {
        StatusReport {
            share_status,
            response_text: None,
            error_message: error.map(str::to_owned),
        }
    }

    #[test]
    fn a_processed_status_without_error_completes() {
        assert_eq!(
            verdict(&report(Some(6), None), &settings()),
            Verdict::Completed
        );
    }

    #[test]
    fn an_error_message_fails_whatever_the_share_status() {
        for status in [Some(6), Some(1), None] {
            assert!(matches!(
                verdict(&report(status, Some("no access")), &settings()),
                Verdict::Failed { .. }
            ));
        }
    }

    #[test]
    fn undocumented_statuses_are_awaited_unless_configured_as_processed() {
        assert_eq!(
            verdict(&report(Some(1), None), &settings()),
            Verdict::Awaiting
        );
        assert_eq!(verdict(&report(None, None), &settings()), Verdict::Awaiting);
        let mut custom = settings();
        custom.processed_share_status.push(7);
        assert_eq!(verdict(&report(Some(7), None), &custom), Verdict::Completed);
    }

    #[test]
    fn polls_grow_from_the_initial_delay_to_the_cap() {
        let schedule = Schedule::new(&settings());
        assert_eq!(schedule.first(), Duration::from_secs(3));
        let second = schedule.after(1);
        assert!(
            (Duration::from_secs(3)..Duration::from_secs(6)).contains(&second),
            "{second:?}"
        );
        assert_eq!(schedule.after(30), Duration::from_secs(60));
        assert!(schedule.given_up(Duration::from_secs(3600)));
        assert!(!schedule.given_up(Duration::from_secs(3599)));
    }
}
