//! One clock for the limiter and the database.
//!
//! Call starts and retry times are persisted as Unix milliseconds, but pacing needs a
//! monotonic clock. [`Clock`] anchors tokio's monotonic [`Instant`] to the wall clock once, at
//! start-up, and converts both ways; because it reads tokio's clock, tests that pause and
//! advance time move the persisted timestamps along with the timers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
    origin_ms: i64,
}

impl Clock {
    pub fn new() -> Self {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Self {
            origin: Instant::now(),
            origin_ms: i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// Now, as Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.ms_of(Instant::now())
    }

    pub fn ms_of(&self, at: Instant) -> i64 {
        let offset = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        if at >= self.origin {
            self.origin_ms.saturating_add(offset(at - self.origin))
        } else {
            self.origin_ms.saturating_sub(offset(self.origin - at))
        }
    }

    /// The instant of a persisted timestamp; one too far in the past for the monotonic clock
    /// is clamped to its earliest representable instant (old enough for every use here).
    pub fn instant_of(&self, ms: i64) -> Instant {
        let delta = Duration::from_millis(ms.abs_diff(self.origin_ms));
        if ms >= self.origin_ms {
            self.origin + delta
        } else {
            self.origin
                .checked_sub(delta)
                .unwrap_or(self.origin - self.origin.elapsed())
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn persisted_times_round_trip_and_follow_paused_time() {
        let clock = Clock::new();
        let before = clock.now_ms();
        tokio::time::advance(Duration::from_secs(7)).await;
        assert_eq!(clock.now_ms() - before, 7000);
        let at = Instant::now() - Duration::from_millis(1500);
        assert_eq!(clock.instant_of(clock.ms_of(at)), at);
    }
}
