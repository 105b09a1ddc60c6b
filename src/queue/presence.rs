//! A worker's presence: what makes it count in [`super::JobQueue::live_workers`], so that
//! `/health/ready` and `tandem_workers_live` can say when no worker is taking jobs.
//!
//! The embedded worker is counted by a guard on its queue. A Redis worker beats from its own
//! task, independent of whether its job slots are busy, every third of its heartbeat TTL (or of
//! `reclaim_after` if shorter: each beat also renews the leases of the jobs it runs, so that a
//! live worker keeps them; the Redis side, and why a heartbeat rather than the consumer group's
//! idle times, is "Live workers" and "Taking over jobs" in `redis/`). Two beats in a row can be
//! lost or late before the worker drops out or a job's lease runs out. A failed beat is not
//! logged here: the queue logs each outage once.
//!
//! # The heartbeat thread
//!
//! `tandem worker` runs at the accurate tier's priority, `SCHED_IDLE` by default: the whole
//! process is background work, and a `serve` on the same machine must win the cores. But a beat
//! that waits for idle cycles fails on a busy machine: the TTL is at most 6 s, so the worker
//! would drop out of the live count (readiness warning "no live worker", `tandem_workers_live
//! 0`) and, worse, its jobs' leases would lapse and other workers would take over jobs it is
//! merely slow to run. A starved worker is still a worker: its jobs go on when the cores free.
//!
//! So beats run on their own OS thread ("heartbeat") with a small current-thread tokio runtime
//! of its own, and on their own Redis connection, opened and driven on that runtime (a
//! connection's I/O is driven by the runtime that opened it, so sharing the process's
//! connection would put every beat behind the starved runtime again). The thread is created
//! before the process lowers itself ([`start_heartbeat_thread`], first thing in `worker()`), so
//! it keeps the priority the process was started with: Linux threads inherit their creator's
//! policy and nice value at creation only. Creating it first, rather than raising it back
//! afterwards, because leaving `SCHED_IDLE` or a nice value of 19 needs privileges
//! (`RLIMIT_NICE`, `CAP_SYS_NICE`) a worker normally lacks. And the process is still lowered as
//! a whole, rather than thread by thread, so everything else (decoding, the runtime, ONNX
//! Runtime's pools) stays at the accurate tier's priority without each having to opt in. The
//! thread costs almost nothing: it wakes every second or two for one short script.
//!
//! Where nothing started the thread first (the tests, a worker inside another program), the
//! first registration starts it, at the priority of the thread that registers.

use std::sync::OnceLock;

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
    /// Must be called on a tokio runtime. The Redis heartbeat is a task on the heartbeat thread
    /// (see the module's header).
    pub(super) fn register(queue: &JobQueue) -> Self {
        let kind = match queue {
            JobQueue::Embedded(q) => Kind::Embedded { _counted: q.register_worker() },
            JobQueue::Redis(q) => Kind::Redis { queue: q.clone(), beat: spawn_beat(q.clone()) },
        };
        Self { kind }
    }

    /// Stops counting at once, rather than when the last heartbeat runs out.
    pub async fn leave(mut self) {
        if let Kind::Redis { queue, beat } = &mut self.kind {
            beat.abort();
            // Its end awaited, so that a beat under way does not put the worker back after this.
            let _ = (&mut *beat).await;
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

/// The heartbeat thread's runtime, once started.
static HEARTBEAT_RUNTIME: OnceLock<tokio::runtime::Handle> = OnceLock::new();

/// Starts the thread that Redis workers' heartbeats run on, at the calling thread's priority:
/// call it before the process lowers its priority (see "The heartbeat thread" above). Later
/// calls do nothing.
pub fn start_heartbeat_thread() -> std::io::Result<()> {
    if HEARTBEAT_RUNTIME.get().is_none() {
        // Two callers racing both start one: the loser's thread only idles.
        let _ = HEARTBEAT_RUNTIME.set(spawn_heartbeat_thread()?);
    }
    Ok(())
}

/// Runs the heartbeat on the heartbeat thread (started now if nobody did), or, should no thread
/// be had, as a task of the calling runtime.
fn spawn_beat(queue: RedisQueue) -> JoinHandle<()> {
    if let Err(err) = start_heartbeat_thread() {
        tracing::warn!(error = %err, "cannot start the heartbeat thread; the heartbeat shares the worker's priority");
    }
    match HEARTBEAT_RUNTIME.get() {
        Some(runtime) => runtime.spawn(beat(queue)),
        None => tokio::spawn(beat(queue)),
    }
}

/// A thread running a current-thread runtime for as long as the process lives; the handle
/// spawns onto it from any thread.
fn spawn_heartbeat_thread() -> std::io::Result<tokio::runtime::Handle> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name("heartbeat".into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::priority::{Priority, apply_to_current_thread};

    /// The scheduling policy and nice value of the calling thread.
    fn own_priority() -> (i32, i32) {
        // SAFETY: plain queries of the calling thread.
        unsafe { (libc::sched_getscheduler(0), libc::getpriority(libc::PRIO_PROCESS, 0)) }
    }

    #[test]
    fn the_heartbeat_thread_keeps_its_priority_when_the_process_is_lowered_after_it_started() {
        let (on_heartbeat, on_lowered) = std::thread::spawn(|| {
            let before = own_priority();
            let heartbeat = spawn_heartbeat_thread().expect("heartbeat thread");
            apply_to_current_thread(Priority::Idle).expect("lowering needs no privilege");
            // Spawned after the lowering, onto the heartbeat thread: runs at the old priority.
            let (tx, rx) = std::sync::mpsc::channel();
            heartbeat.spawn(async move { tx.send(own_priority()).expect("send") });
            let on_heartbeat = rx.recv().expect("the heartbeat thread runs tasks");
            // A thread created after the lowering inherits it (what the worker's others do).
            let on_lowered = std::thread::spawn(own_priority).join().expect("thread");
            assert_eq!(on_heartbeat, before);
            (on_heartbeat, on_lowered)
        })
        .join()
        .expect("thread");
        assert_eq!(on_heartbeat.0, libc::SCHED_OTHER, "the heartbeat is not starved with the rest");
        assert_eq!(on_lowered.0, libc::SCHED_IDLE);
    }
}
