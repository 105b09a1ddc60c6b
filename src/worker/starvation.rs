//! Noticing an accurate tier that waits far longer than it runs, and saying why.
//!
//! The accurate tier runs under `SCHED_IDLE` by default (`--accurate-priority idle`): on a
//! machine whose CPUs other processes keep busy it gets almost nothing, and jobs wait seconds
//! for runs of tens of milliseconds. Nothing fails, so nothing else would say so. Each completed
//! job reports how long it waited (creation to result, less its model run) and how long its run
//! took; a job that waited more than [`WAIT_RATIO`] times its run *and* more than [`MIN_WAIT`]
//! gives a warning naming the remedy, at most one per [`WARN_EVERY`] per process (a starved
//! tier finishes every job late, and one line a minute is enough to be found).
//!
//! The one lock is held only to read and set the time of the last warning.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::engine::Priority;

/// A wait this many times the job's run counts as starved...
pub const WAIT_RATIO: f64 = 20.0;
/// ...if it is also longer than this (a fast model run makes a short wait a large ratio).
pub const MIN_WAIT: Duration = Duration::from_secs(5);
/// At most one warning per this long.
pub const WARN_EVERY: Duration = Duration::from_secs(60);

pub struct StarvationWatch {
    priority: Priority,
    last_warning: Mutex<Option<Instant>>,
}

impl StarvationWatch {
    /// `priority`: the accurate tier's, so the warning names the remedy that applies.
    pub fn new(priority: Priority) -> Self {
        Self { priority, last_warning: Mutex::new(None) }
    }

    /// A job completed after waiting `waited` for a model run of `ran`: warns if that is starved
    /// and no warning went out within [`WARN_EVERY`].
    pub fn job_finished(&self, waited: Duration, ran: Duration) {
        if !self.should_warn(waited, ran, Instant::now()) {
            return;
        }
        let (waited_s, run_ms) = (waited.as_secs_f64(), ran.as_secs_f64() * 1e3);
        match self.priority {
            Priority::Idle => tracing::warn!(
                waited_s,
                run_ms,
                "accurate-tier jobs wait far longer than they run. The accurate tier runs under SCHED_IDLE \
                 (--accurate-priority idle), so while other processes keep the CPUs busy it gets only what \
                 they leave: --accurate-priority low (nice 19) gives it a share. If the machine is not busy, \
                 the workers are behind the queue: add workers"
            ),
            Priority::Low | Priority::Normal => tracing::warn!(
                waited_s,
                run_ms,
                "accurate-tier jobs wait far longer than they run: the workers are behind the queue or \
                 short of CPU; add workers or cores"
            ),
        }
    }

    /// Whether this job is starved and the last warning is older than [`WARN_EVERY`]; if so,
    /// `now` becomes the time of the last warning.
    fn should_warn(&self, waited: Duration, ran: Duration, now: Instant) -> bool {
        if !starved(waited, ran) {
            return false;
        }
        let mut last = self.last_warning.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|at| now.saturating_duration_since(at) < WARN_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }
}

fn starved(waited: Duration, ran: Duration) -> bool {
    waited > MIN_WAIT && waited.as_secs_f64() > WAIT_RATIO * ran.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn starved_needs_both_a_long_wait_and_a_large_ratio() {
        assert!(starved(ms(7_900), ms(120)), "the reported case: 7.9 s for a ResNet50 run");
        assert!(!starved(ms(4_000), ms(10)), "400x, but under 5 s");
        assert!(!starved(ms(30_000), ms(2_000)), "30 s, but only 15x its run");
        assert!(!starved(ms(5_000), ms(1)), "exactly 5 s is not more than 5 s");
        assert!(starved(ms(20_001), ms(1_000)), "just over 20x and over 5 s");
    }

    #[test]
    fn at_most_one_warning_per_minute() {
        let watch = StarvationWatch::new(Priority::Idle);
        let t = Instant::now();
        assert!(!watch.should_warn(ms(100), ms(50), t), "a healthy job warns nothing");
        assert!(watch.should_warn(ms(8_000), ms(100), t));
        assert!(!watch.should_warn(ms(9_000), ms(100), t + Duration::from_secs(30)));
        assert!(!watch.should_warn(ms(9_000), ms(100), t + Duration::from_secs(59)));
        assert!(!watch.should_warn(ms(100), ms(50), t + Duration::from_secs(61)), "healthy again");
        assert!(watch.should_warn(ms(9_000), ms(100), t + Duration::from_secs(61)));
        assert!(!watch.should_warn(ms(9_000), ms(100), t + Duration::from_secs(62)));
    }
}
