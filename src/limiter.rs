//! The account's rate limit as an exact sliding window.
//!
//! LeadSquared allows `max_calls` calls in any `window`. A token bucket or a fixed window would
//! let up to twice that through inside one window, so this keeps the start times of the last
//! `max_calls` calls and lets a new call start only once the oldest of them is `window +
//! safety_margin` old. Then no half-open interval of length `window` ever holds more than
//! `max_calls` starts. Every call counts, whatever its outcome, and the start times are
//! restored from the database at start-up so a restart does not open a second burst.
//!
//! The type is pure: callers ask [`SlidingWindow::next_free`], sleep until then, and
//! [`SlidingWindow::record`] the start. The dispatcher is its only caller, so there is no race
//! between the two.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct SlidingWindow {
    max_calls: usize,
    window: Duration,
    /// `window + safety_margin`: the spacing enforced between a start and the start
    /// `max_calls` calls later.
    spacing: Duration,
    /// Start times of the most recent calls, oldest first; never more than `max_calls`.
    starts: VecDeque<Instant>,
}

impl SlidingWindow {
    pub fn new(max_calls: usize, window: Duration, safety_margin: Duration) -> Self {
        let max_calls = max_calls.max(1);
        Self {
            max_calls,
            window,
            spacing: window + safety_margin,
            starts: VecDeque::with_capacity(max_calls),
        }
    }

    /// Seed with calls made before this process started (any order).
    pub fn restore(&mut self, starts: impl IntoIterator<Item = Instant>) {
        let mut all: Vec<Instant> = self.starts.drain(..).chain(starts).collect();
        all.sort_unstable();
        let keep = all.len().saturating_sub(self.max_calls);
        self.starts.extend(all.into_iter().skip(keep));
    }

    /// The earliest instant at or after `now` at which one more call may start.
    pub fn next_free(&self, now: Instant) -> Instant {
        match self.starts.front() {
            Some(&oldest) if self.starts.len() >= self.max_calls => now.max(oldest + self.spacing),
            _ => now,
        }
    }

    /// Record a call starting at `at`, which must not be before [`Self::next_free`].
    pub fn record(&mut self, at: Instant) {
        debug_assert!(
            at >= self.next_free(at),
            "a call started before the window allowed it"
        );
        if self.starts.len() >= self.max_calls {
            self.starts.pop_front();
        }
        self.starts.push_back(at);
    }

    /// Calls started in the `window` that ends at `now`.
    pub fn in_window(&self, now: Instant) -> usize {
        self.starts
            .iter()
            .filter(|&&start| now.saturating_duration_since(start) < self.window)
            .count()
    }

    pub fn max_calls(&self) -> usize {
        self.max_calls
    }

    pub fn window(&self) -> Duration {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The most starts inside any half-open interval `[t, t + window)`.
    fn densest_window(starts: &[Instant], window: Duration) -> usize {
        let mut densest = 0;
        let mut first = 0;
        for (last, &end) in starts.iter().enumerate() {
            while end.duration_since(starts[first]) >= window {
                first += 1;
            }
            densest = densest.max(last - first + 1);
        }
        densest
    }

    proptest! {
        /// Callers arriving at arbitrary times, each starting as soon as the window allows,
        /// never put more than `max_calls` starts in any window — and never wait longer than
        /// the window requires.
        #[test]
        fn no_window_ever_holds_more_than_the_limit(
            max_calls in 1usize..30,
            window_ms in 1u64..10_000,
            margin_ms in 0u64..200,
            history in proptest::collection::vec(0u64..20_000, 0..40),
            gaps in proptest::collection::vec(0u64..3_000, 1..300),
        ) {
            let window = Duration::from_millis(window_ms);
            let base = Instant::now() + Duration::from_secs(60);
            let mut limiter = SlidingWindow::new(max_calls, window, Duration::from_millis(margin_ms));
            // calls made by an earlier process, spaced as that process's own limiter spaced them
            let mut earlier = SlidingWindow::new(max_calls, window, Duration::from_millis(margin_ms));
            let mut restored = Vec::new();
            let mut t = base - Duration::from_secs(40);
            for gap in history {
                t = earlier.next_free(t + Duration::from_millis(gap % 1_000));
                if t >= base { break; }
                earlier.record(t);
                restored.push(t);
            }
            limiter.restore(restored.iter().copied());

            let mut starts = restored;
            let mut arrival = base;
            for gap in gaps {
                arrival += Duration::from_millis(gap);
                let start = limiter.next_free(arrival);
                limiter.record(start);
                starts.push(start);
                arrival = start;
            }
            prop_assert!(densest_window(&starts, window) <= max_calls);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_backlog_runs_at_the_limit_and_no_faster() {
        let window = Duration::from_secs(5);
        let mut limiter = SlidingWindow::new(25, window, Duration::from_millis(100));
        let begin = Instant::now();
        let mut starts = Vec::new();
        for _ in 0..100 {
            tokio::time::sleep_until(limiter.next_free(Instant::now())).await;
            let now = Instant::now();
            limiter.record(now);
            starts.push(now);
        }
        assert_eq!(densest_window(&starts, window), 25);
        // four bursts of 25: at 0, 5.1 s, 10.2 s and 15.3 s
        assert_eq!(Instant::now() - begin, Duration::from_millis(15_300));
    }

    #[tokio::test(start_paused = true)]
    async fn calls_restored_from_before_a_restart_still_count() {
        let window = Duration::from_secs(5);
        let mut limiter = SlidingWindow::new(3, window, Duration::ZERO);
        let now = Instant::now();
        limiter.restore([
            now - Duration::from_secs(1),
            now - Duration::from_secs(2),
            now,
        ]);
        assert_eq!(limiter.in_window(now), 3);
        assert_eq!(limiter.next_free(now), now + Duration::from_secs(3));
    }
}
