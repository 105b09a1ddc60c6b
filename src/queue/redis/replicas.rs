//! `--redis-wait-replicas`: a job id is handed out only once that many replicas have the job.
//!
//! Redis replicates asynchronously: a job acknowledged by the primary and not yet sent on when
//! the primary dies is gone after a failover (its id answers 404). With acknowledgement on, each
//! commit is followed by Redis' `WAIT`, which returns once the replicas have everything the
//! connection wrote; a job they have not acknowledged within the timeout is withdrawn (canceled,
//! then its record deleted, as an enqueue whose answer was lost is undone) and the client
//! answered `"job_id": null` with an `async_error`, as for any job that could not be queued. A
//! worker that started it meanwhile stores no result. What is left: a job that ended within the
//! wait (a fast worker, or completed at once from the cache or by the cascade) may have had its
//! webhook sent already.
//! A round counts only for commits made on the server its `WAIT` ran on (with Sentinel the two
//! connections find the primary each on their own): a commit on another is not acknowledged.
//!
//! `WAIT` blocks the connection it is sent on, so it never goes on the shared one: one task sends
//! it on a connection of its own, behind a one-key write (`WAIT` waits for the connection's own
//! last write, which comes after every commit already answered), and each round answers every
//! commit that asked before it began: a group commit, so a slow replica costs each request about
//! one or two of its round trips, never a queue of them.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::RedisQueue;
use super::conn::Retry;
use crate::jobs::JobId;
use crate::queue::QueueError;

/// How many replicas must have a job before its id is handed out, and for how long to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaAcks {
    /// 0: off (the default; Redis' own asynchronous replication).
    pub replicas: u32,
    pub timeout: Duration,
}

impl ReplicaAcks {
    pub const OFF: Self = Self { replicas: 0, timeout: Duration::ZERO };

    pub fn is_on(&self) -> bool {
        self.replicas > 0
    }
}

/// A commit waiting: where to answer, and the server it was made on.
type Waiter = (oneshot::Sender<Result<(), String>>, Option<String>);

/// The handle commits ask through; the task behind it runs the rounds.
pub(super) struct Acknowledger {
    asks: mpsc::UnboundedSender<Waiter>,
}

impl Acknowledger {
    /// Starts the task on the current runtime.
    pub fn start(queue: &RedisQueue) -> Self {
        let (asks, mut incoming) = mpsc::unbounded_channel::<Waiter>();
        // The task holds the queue weakly: it ends with the queue (its channel's last sender).
        let queue = std::sync::Arc::downgrade(&queue.inner);
        tokio::spawn(async move {
            while let Some(first) = incoming.recv().await {
                let mut round = vec![first];
                while let Ok(more) = incoming.try_recv() {
                    round.push(more);
                }
                let Some(inner) = queue.upgrade() else { return };
                let queue = RedisQueue { inner };
                let acked = queue.wait_for_replicas().await;
                let waited_on = queue.inner.acks.server();
                for (answer, committed_on) in round {
                    let outcome = match &acked {
                        Ok(()) if committed_on.is_none() || committed_on != waited_on => {
                            Err("the Redis primary changed between the commit and its acknowledgement".to_owned())
                        }
                        other => other.clone(),
                    };
                    let _ = answer.send(outcome);
                }
            }
        });
        Self { asks }
    }

    /// Returns once the replicas have everything committed (on `committed_on`) before this call,
    /// or why not.
    pub async fn acknowledged(&self, committed_on: Option<String>) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.asks.send((tx, committed_on)).map_err(|_| "the replica acknowledgement task has stopped".to_owned())?;
        rx.await.map_err(|_| "the replica acknowledgement task has stopped".to_owned())?
    }
}

impl RedisQueue {
    /// One round: a one-key write, then `WAIT`, on the acknowledgement connection.
    async fn wait_for_replicas(&self) -> Result<(), String> {
        let inner = &self.inner;
        let acks = inner.config.replica_acks;
        let timeout_ms = u64::try_from(acks.timeout.as_millis()).unwrap_or(u64::MAX).max(1);
        let marker = &inner.keys.replication_marker;
        let limit = acks.timeout + super::conn::OP_TIMEOUT;
        let replicas: i64 = self
            .call(&inner.acks, "wait for the replicas", limit, Retry::Unsent, |mut conn| async move {
                redis::pipe()
                    .cmd("INCR")
                    .arg(marker)
                    .ignore()
                    .cmd("WAIT")
                    .arg(acks.replicas)
                    .arg(timeout_ms)
                    .query_async::<(i64,)>(&mut conn)
                    .await
                    .map(|(replicas,)| replicas)
            })
            .await
            .map_err(|err| err.to_string())?;
        if replicas >= i64::from(acks.replicas) {
            Ok(())
        } else {
            Err(format!(
                "the job was not acknowledged by {} Redis replica(s) within {timeout_ms} ms ({replicas} did), so it \
                 was withdrawn",
                acks.replicas
            ))
        }
    }
}

impl RedisQueue {
    /// With acknowledgement on, the server ordinary commands go to now: taken before a commit,
    /// for [`Self::replicated`] after it. `None` with it off (nothing to compare).
    pub(in crate::queue) fn before_commit(&self) -> Option<String> {
        if self.inner.config.replica_acks.is_on() { self.inner.main.server() } else { None }
    }

    /// With acknowledgement on, returns once the replicas have job `id`, committed just now
    /// (`before`: [`Self::before_commit`]); a job they do not acknowledge in time is withdrawn,
    /// and the error says why (see the module's doc).
    pub(in crate::queue) async fn replicated(&self, id: JobId, before: Option<String>) -> Result<(), QueueError> {
        if !self.inner.config.replica_acks.is_on() {
            return Ok(());
        }
        // The server the commit was made on: the main connection's, unless it moved during the
        // commit (then unknown, and so never acknowledged).
        let after = self.inner.main.server();
        let committed_on = if before.is_some() && before != after { None } else { after };
        let acknowledger = self.inner.acknowledger.get_or_init(|| Acknowledger::start(self));
        let Err(reason) = acknowledger.acknowledged(committed_on).await else { return Ok(()) };
        // A job still queued is canceled first, so that a run other jobs share passes to one of
        // them (`withdraw.lua`); then its record goes, whatever its state: a worker running it
        // stores no result (its followers still get it), and its id resolves to nothing.
        let canceled = self.cancel(id).await;
        if canceled.is_err() || self.undo_enqueue(id).await.is_err() {
            // Redis did not answer: the undo keeps trying in the background.
            self.cancel_in_background(id, std::time::Instant::now());
        }
        Err(QueueError::Unavailable(reason))
    }
}
