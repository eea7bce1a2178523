//! How long to wait before trying again, for jobs and for probes.
//!
//! Schedules come from `backon` (the maintained successor of `backoff`, which RUSTSEC-2025-0012
//! marks unmaintained). The dispatcher never sleeps on them in place: a job's next try is
//! persisted as `run_after`, so a restart keeps the schedule and other jobs are not held up.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::config::RetrySettings;

/// Exponential backoff with jitter, capped at `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
        }
    }

    pub fn from_settings(settings: &RetrySettings) -> Self {
        Self::new(settings.initial_backoff, settings.max_backoff)
    }

    /// The wait after the `failures`-th consecutive failure (1-based): about
    /// `initial · 2^(failures-1)`, plus up to as much again of random jitter so that retries
    /// of many jobs spread out, never more than `max`.
    pub fn delay(&self, failures: u32) -> Duration {
        let step = usize::try_from(failures.max(1) - 1).unwrap_or(usize::MAX);
        ExponentialBuilder::new()
            .with_min_delay(self.initial)
            .with_max_delay(self.max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
            .nth(step)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_with_jitter_and_stop_at_the_cap() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for _ in 0..50 {
            let first = backoff.delay(1);
            assert!(
                (Duration::from_millis(100)..Duration::from_millis(200)).contains(&first),
                "{first:?}"
            );
            let third = backoff.delay(3);
            assert!(
                (Duration::from_millis(400)..Duration::from_millis(800)).contains(&third),
                "{third:?}"
            );
            assert_eq!(backoff.delay(40), Duration::from_secs(2));
        }
    }
}
