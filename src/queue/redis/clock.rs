//! Redis' clock as seen from this process, for the enqueue fence ("Enqueue outcome" in
//! `enqueue.rs`): a deadline on Redis' own clock, so clock skew between hosts plays no part.

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// Maps this process's monotonic clock to Redis' (`TIME`), from the latest `TIME` answer. The
/// offset is taken when the answer arrives, so it is never ahead of the true one (Redis read
/// its clock before): a deadline computed with it is early, never late. It holds for the server
/// it was read from only: after a failover (Sentinel) the new primary's clock is read anew.
pub(super) struct RedisClock {
    epoch: Instant,
    /// The latest reading; `None` until first seen.
    seen: Mutex<Option<Reading>>,
}

struct Reading {
    /// Redis' time (ms) minus ours (ms since `epoch`).
    offset_ms: i64,
    /// The server (`host:port`) it was read from.
    server: Option<String>,
}

impl RedisClock {
    pub fn new() -> Self {
        Self { epoch: Instant::now(), seen: Mutex::new(None) }
    }

    fn local_ms(&self, at: Instant) -> i64 {
        i64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(i64::MAX)
    }

    /// Records a `TIME` answer (seconds, microseconds) from `server`, received at `received`.
    pub fn observe(&self, (secs, micros): (u64, u64), received: Instant, server: Option<String>) {
        let redis_ms = i64::try_from(secs.saturating_mul(1000).saturating_add(micros / 1000)).unwrap_or(i64::MAX);
        let offset_ms = redis_ms.saturating_sub(self.local_ms(received));
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = Some(Reading { offset_ms, server });
    }

    /// Redis' time (ms) at our `at` on `server`, or `None` before a `TIME` of that server was seen.
    pub fn redis_ms(&self, at: Instant, server: &Option<String>) -> Option<i64> {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let reading = seen.as_ref().filter(|r| r.server.is_some() && r.server == *server)?;
        Some(reading.offset_ms.saturating_add(self.local_ms(at)))
    }
}
