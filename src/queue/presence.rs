//! A worker's presence: what makes it count in [`super::JobQueue::live_workers`], so that
//! `/health/ready` and `tandem_workers_live` can say when no worker is taking jobs.
//!
//! The embedded worker is counted by a guard on its queue. A Redis worker beats from its own
//! task, independent of whether its job slots are busy, every third of its heartbeat TTL (or of
//! `reclaim_after` if shorter: each beat also renews the leases of the jobs it runs, so that a
//! live worker keeps them; the Redis side, and why a heartbeat rather than the consumer group's
//! idle times, is "Live workers" and "Taking over jobs" in `redis.rs`). Two beats in a row can be
//! lost or late before the worker drops out or a job's lease runs out. A failed beat is not logged here: the queue logs each outage once.

use tokio::task::JoinHandle;

use super::JobQueue;
use super::embedded::EmbeddedWorker;
use super::redis::RedisQueue;

/// Held by a running worker. Drop it (or, for a clean stop, [`Self::leave`]) when it stops
/// taking jobs.
pub struct WorkerPresence {
    kind: Kind,
}

enum Kind {
    /// Held for its `Drop`, which uncounts the worker.
    Embedded {
        _counted: EmbeddedWorker,
    },
    Redis {
        queue: RedisQueue,
        beat: JoinHandle<()>,
    },
}

impl WorkerPresence {
    /// Must be called on a tokio runtime (the Redis heartbeat is a task).
    pub(super) fn register(queue: &JobQueue) -> Self {
        let kind = match queue {
            JobQueue::Embedded(q) => Kind::Embedded { _counted: q.register_worker() },
            JobQueue::Redis(q) => Kind::Redis { queue: q.clone(), beat: tokio::spawn(beat(q.clone())) },
        };
        Self { kind }
    }

    /// Stops counting at once, rather than when the last heartbeat runs out.
    pub async fn leave(self) {
        if let Kind::Redis { queue, beat } = &self.kind {
            beat.abort();
            if let Err(err) = queue.leave().await {
                tracing::debug!(error = %err, "could not leave the live workers; the heartbeat runs out instead");
            }
        }
    }
}

impl Drop for WorkerPresence {
    fn drop(&mut self) {
        if let Kind::Redis { beat, .. } = &self.kind {
            beat.abort();
        }
    }
}

async fn beat(queue: RedisQueue) {
    let ttl = queue.heartbeat_ttl();
    let mut every = tokio::time::interval(queue.beat_interval());
    // After a stall (a starved process, an outage) beat once, not a burst of missed beats.
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if let Err(err) = queue.heartbeat(ttl).await {
            tracing::debug!(error = %err, "heartbeat failed");
        }
    }
}
