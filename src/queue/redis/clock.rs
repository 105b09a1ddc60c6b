//! Redis' clock as seen from this process, for the enqueue fence ("Enqueue outcome" in
//! `enqueue.rs`): a deadline on Redis' own clock, so clock skew between hosts plays no part.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

/// Maps this process's monotonic clock to Redis' (`TIME`), from the latest `TIME` answer. The
/// offset is taken when the answer arrives, so it is never ahead of the true one (Redis read
/// its clock before): a deadline computed with it is early, never late.
pub(super) struct RedisClock {
    epoch: Instant,
    /// Redis' time (ms) minus ours (ms since `epoch`); `i64::MIN` until first seen.
    offset_ms: AtomicI64,
}

impl RedisClock {
    pub fn new() -> Self {
        Self { epoch: Instant::now(), offset_ms: AtomicI64::new(i64::MIN) }
    }

    fn local_ms(&self, at: Instant) -> i64 {
        i64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(i64::MAX)
    }

    /// Records a `TIME` answer (seconds, microseconds) received at `received`.
    pub fn observe(&self, (secs, micros): (u64, u64), received: Instant) {
        let redis_ms = i64::try_from(secs.saturating_mul(1000).saturating_add(micros / 1000)).unwrap_or(i64::MAX);
        self.offset_ms.store(redis_ms.saturating_sub(self.local_ms(received)), Ordering::Relaxed);
    }

    /// Redis' time (ms) at our `at`, or `None` before any `TIME` was seen.
    pub fn redis_ms(&self, at: Instant) -> Option<i64> {
        let offset = self.offset_ms.load(Ordering::Relaxed);
        (offset != i64::MIN).then(|| offset.saturating_add(self.local_ms(at)))
    }
}
