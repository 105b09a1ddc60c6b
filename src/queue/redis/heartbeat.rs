//! A worker's heartbeat on Redis and the count of live workers it feeds; the heartbeat also
//! renews the lease of each job the worker runs ("Taking over jobs" in `mod.rs`).
//!
//! # Live workers
//!
//! Each worker process beats from its own task (`queue::presence`), every third of
//! [`RedisQueue::heartbeat_ttl`]: one script sets its score to Redis' `TIME` plus the TTL and
//! drops members whose time has run out; `live_workers` counts the members not yet run out,
//! on the same clock; a worker that stops cleanly removes itself. The TTL is `reclaim_after`
//! clamped to 1-6 s: a worker silent for `reclaim_after` loses its jobs to the others anyway,
//! so it must not count as live for longer, and 6 s lets a `kill -9`'d worker drop out of
//! `/health/ready` within seconds at the default `reclaim_after` (30 s).
//! Why not the consumer group's own bookkeeping (`XINFO CONSUMERS` idle times): a worker whose
//! slots are all busy does not read the stream until a job finishes (many seconds on a starved
//! machine), so it would look gone; and consumers stay in the group forever, so that list grows
//! with every worker process that ever ran.
//!

use std::sync::PoisonError;
use std::time::Duration;

use super::RedisQueue;
use super::conn::{OP_TIMEOUT, Retry};
use super::keys::GROUP;
use super::ttl_ms;
use crate::queue::QueueError;

/// The longest a worker's heartbeat counts (see "Live workers").
const HEARTBEAT_TTL_MAX: Duration = Duration::from_secs(6);
/// The shortest: a beat every third of it must still be cheap.
const HEARTBEAT_TTL_MIN: Duration = Duration::from_secs(1);
/// Expiry of the whole live-workers set, longer than any heartbeat counts.
const WORKERS_SET_TTL: Duration = Duration::from_secs(60);

impl RedisQueue {
    /// How long one heartbeat keeps this worker counted as live (see "Live workers").
    pub fn heartbeat_ttl(&self) -> Duration {
        self.inner.config.reclaim_after.clamp(HEARTBEAT_TTL_MIN, HEARTBEAT_TTL_MAX)
    }

    /// How often a worker beats: a third of the heartbeat's TTL, and of `reclaim_after`, which
    /// the beat's lease renewal must stay well inside.
    pub fn beat_interval(&self) -> Duration {
        (self.heartbeat_ttl().min(self.inner.config.reclaim_after) / 3).max(Duration::from_millis(10))
    }

    /// Counts this process's consumer as a live worker for `ttl` from now (Redis' clock), and
    /// renews the lease of every job it is running (see "Taking over jobs"). On a connection of
    /// its own: call it from one runtime only (the heartbeat thread's, `presence.rs`).
    pub async fn heartbeat(&self, ttl: Duration) -> Result<(), QueueError> {
        let inner = &self.inner;
        let held: Vec<String> = inner.held.lock().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect();
        let mut invocation = inner.scripts.heartbeat.prepare_invoke();
        invocation
            .key(&inner.keys.workers)
            .key(&inner.keys.stream)
            .arg(&inner.config.consumer)
            .arg(ttl_ms(ttl))
            .arg(ttl_ms(WORKERS_SET_TTL.max(ttl)))
            .arg(GROUP)
            .arg(&held);
        let invocation = &invocation;
        let lost: Vec<String> = self
            .call(&inner.beat, "heartbeat", OP_TIMEOUT, Retry::Unsent, |mut conn| async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        if !lost.is_empty() {
            let mut held = inner.held.lock().unwrap_or_else(PoisonError::into_inner);
            for entry in lost {
                if let Some((job, _)) = held.remove(&entry) {
                    tracing::warn!(
                        %job,
                        "another worker took over a job this one is running (Redis did not hear from this \
                         worker for --reclaim-after); the first result stored wins"
                    );
                }
            }
        }
        Ok(())
    }

    /// Stops counting this process's consumer as a live worker (a clean stop).
    pub async fn leave(&self) -> Result<(), QueueError> {
        let (key, consumer) = (&self.inner.keys.workers, &self.inner.config.consumer);
        self.call(&self.inner.main, "leave the live workers", OP_TIMEOUT, Retry::Unsent, |mut conn| async move {
            redis::cmd("ZREM").arg(key).arg(consumer).query_async::<()>(&mut conn).await
        })
        .await
    }

    /// Workers (of every process on this Redis and prefix) whose heartbeat has not run out.
    pub async fn live_workers(&self) -> Result<u64, QueueError> {
        let inner = &self.inner;
        let mut invocation = inner.scripts.live_workers.prepare_invoke();
        invocation.key(&inner.keys.workers);
        let invocation = &invocation;
        self.call(&inner.main, "count live workers", OP_TIMEOUT, Retry::Unsent, |mut conn| async move {
            invocation.invoke_async::<u64>(&mut conn).await
        })
        .await
    }
}
