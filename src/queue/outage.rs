//! One log line when Redis stops answering, one when it answers again: never one per call.
//!
//! Every Redis call of a [`super::RedisQueue`] reports here how it ended. A `serve` whose Redis
//! is down still answers every `POST /predict` (with `"job_id": null`), so without this an
//! outage is silent at the default log level; logging each failed call instead would flood the
//! log at the request rate.
//!
//! The state is per queue (both of its connections share it), behind a std `Mutex` held only to
//! compare and update a few fields, never across an `.await`. A failure counts as the start of
//! an outage only if its call *began* after the latest successful call began: a slow call that
//! was already under way when Redis came back (a blocking read timing out on a dead connection)
//! must not turn "back" into "down" again a moment later.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// What a finished call changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Transition {
    /// Redis was answering (or had never been tried) and this call found it down.
    WentDown,
    /// Redis was down and answered this call.
    CameBack { down_for: Duration, failed_calls: u64 },
}

#[derive(Debug, Default)]
pub(super) struct Outage {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// When the current outage was noticed; `None` while Redis answers.
    down_since: Option<Instant>,
    /// Calls that failed during the current outage.
    failed_calls: u64,
    /// When the latest successful call began.
    last_ok_start: Option<Instant>,
}

impl Outage {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Plain data: a panic elsewhere cannot leave it half-updated in a way that matters.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A call that began at `started` got an answer from Redis.
    pub(super) fn answered(&self, started: Instant, now: Instant) -> Option<Transition> {
        let mut state = self.state();
        if state.last_ok_start.is_none_or(|at| started > at) {
            state.last_ok_start = Some(started);
        }
        let since = state.down_since.take()?;
        let failed_calls = std::mem::take(&mut state.failed_calls);
        Some(Transition::CameBack { down_for: now.saturating_duration_since(since), failed_calls })
    }

    /// A call that began at `started` found Redis unreachable.
    pub(super) fn unreachable(&self, started: Instant, now: Instant) -> Option<Transition> {
        let mut state = self.state();
        if state.down_since.is_some() {
            state.failed_calls += 1;
            return None;
        }
        if state.last_ok_start.is_some_and(|ok| ok >= started) {
            // Began before Redis last answered: stale news, not a new outage.
            return None;
        }
        state.down_since = Some(now);
        state.failed_calls = 1;
        Some(Transition::WentDown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn one_line_per_outage_however_many_calls_fail() {
        let (outage, t) = (Outage::default(), Instant::now());
        assert_eq!(outage.unreachable(at(t, 0), at(t, 10)), Some(Transition::WentDown), "down from the start");
        for ms in 20..40 {
            assert_eq!(outage.unreachable(at(t, ms), at(t, ms + 1)), None);
        }
        assert_eq!(
            outage.answered(at(t, 100), at(t, 110)),
            Some(Transition::CameBack { down_for: Duration::from_millis(100), failed_calls: 21 })
        );
        assert_eq!(outage.answered(at(t, 120), at(t, 121)), None, "already back");
        assert_eq!(outage.unreachable(at(t, 200), at(t, 201)), Some(Transition::WentDown), "a second outage");
    }

    #[test]
    fn a_call_begun_before_the_last_success_does_not_start_an_outage() {
        let (outage, t) = (Outage::default(), Instant::now());
        assert_eq!(outage.answered(at(t, 50), at(t, 51)), None);
        assert_eq!(outage.unreachable(at(t, 10), at(t, 60)), None, "stale failure");
        assert_eq!(outage.unreachable(at(t, 55), at(t, 60)), Some(Transition::WentDown));
    }
}
