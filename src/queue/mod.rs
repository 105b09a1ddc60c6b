//! Job queue backends: the embedded in-process queue (zero-setup default) and Redis Streams
//! (shared by any number of `serve` and `worker` processes).
//!
//! Both give the same contract (`tests/queue_contract.rs` runs it against each): a job is
//! queued in two steps, [`JobQueue::stage`] then [`StagedJob::commit`], which returns only once
//! the job is stored (so a job id a client has seen always resolves); a job leaves the queue
//! only once its result is stored; and a job that fails `max_attempts` times ends `failed`
//! instead of blocking the queue. Dispatch is a plain enum: two backends do not need trait
//! objects.

mod delivery;
pub mod embedded;
pub mod events;
mod outage;
pub mod presence;
pub mod redis;
mod staged;

use std::time::Duration;

use bytes::Bytes;

pub use delivery::{Delivery, FailOutcome, Receipt, WebhookTask};
pub use embedded::EmbeddedQueue;
pub use events::{JobEvents, JobWatch};
pub use presence::WorkerPresence;
pub use redis::{RedisQueue, RedisQueueConfig, ReplicaAcks};
pub use staged::StagedJob;

use crate::engine::Prediction;
use crate::fingerprint::{ContentHash, ModelIdentity};
use crate::jobs::{JobId, JobRecord, JobStatus};

#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    #[error("the job queue is full ({limit} jobs waiting)")]
    Full { limit: usize },
    /// The images of the queued jobs would pass `max_queue_bytes`: full all the same.
    #[error("the job queue is full (its images would pass {} in all)", bytesize::ByteSize(*.limit))]
    FullBytes { limit: u64 },
    #[error("the job queue is unavailable: {0}")]
    Unavailable(String),
    #[error("the job queue is shutting down")]
    Closed,
}

/// What [`JobQueue::cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The job was waiting and is now `canceled` (or was canceled already).
    Canceled,
    /// A worker has started it, or it has ended: it is left as it is, in this status.
    TooLate(JobStatus),
    /// No such job (unknown or expired).
    Unknown,
}

/// How many jobs are in the queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Not yet taken by any worker.
    pub waiting: u64,
    /// Taken by a worker, not yet finished.
    pub pending: u64,
}

/// Settings both backends share.
#[derive(Debug, Clone)]
pub struct QueuePolicy {
    /// Jobs waiting or running before a commit answers [`QueueError::Full`].
    pub max_queue: usize,
    /// Bytes of images that jobs waiting or running may hold in all, before a commit answers
    /// [`QueueError::FullBytes`]: a queue bounded only in jobs holds as much memory as clients send.
    pub max_queue_bytes: u64,
    /// How long a finished job's record stays readable.
    pub result_ttl: Duration,
    /// Attempts before a job is declared failed.
    pub max_attempts: u32,
    /// The accurate tier's result cache and the in-flight dedupe.
    pub cache: CachePolicy,
}

impl Default for QueuePolicy {
    fn default() -> Self {
        Self {
            max_queue: 10_000,
            max_queue_bytes: 1 << 30,
            result_ttl: Duration::from_secs(3600),
            max_attempts: 3,
            cache: CachePolicy::default(),
        }
    }
}

/// The result cache: the accurate answer for an image's bytes, kept for `ttl` (zero: no cache,
/// and no in-flight dedupe either); embedded, also at most `entries` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    pub ttl: Duration,
    pub entries: usize,
}

impl Default for CachePolicy {
    fn default() -> Self {
        Self { ttl: Duration::ZERO, entries: 10_000 }
    }
}

impl CachePolicy {
    pub fn is_on(&self) -> bool {
        !self.ttl.is_zero()
    }
}

/// Jobs that may share one run (see [`Enqueued::SharedRun`]); past it, the same bytes queue a
/// run of their own: every step of a run visits each follower, so their number is bounded.
const MAX_FOLLOWERS: usize = 1000;

/// What a backend stores for a new job.
struct NewJob<'a> {
    pub id: JobId,
    pub fast: &'a Prediction,
    pub created_at_ms: u64,
    pub callback_url: Option<&'a str>,
}

/// How [`StagedJob::commit`] queued a job.
#[derive(Debug, Clone, PartialEq)]
pub enum Enqueued {
    /// It waits for a worker of its own.
    Queued,
    /// The same image bytes were already queued or running: the job shares that run and ends
    /// with it (its result's source is `shared_run`).
    SharedRun,
    /// The accurate result for the same bytes was cached: the job is completed already, with it
    /// (source `cache`). Checked in the same step as the queueing, so a run that ended while
    /// the request waited for its fast answer is not run again.
    Cached(Prediction),
}

#[derive(Clone)]
pub enum JobQueue {
    Embedded(EmbeddedQueue),
    Redis(RedisQueue),
}

impl JobQueue {
    pub fn backend(&self) -> &'static str {
        match self {
            JobQueue::Embedded(_) => "embedded",
            JobQueue::Redis(_) => "redis",
        }
    }

    /// The first step of queueing a job: with Redis its image is stored (a plain `SET`, so the
    /// write can overlap the fast model); embedded, nothing happens yet. The job is queued only
    /// by [`StagedJob::commit`], with its fast answer; a staging error comes out there.
    pub async fn stage(&self, id: JobId, image: Bytes, created_at_ms: u64) -> StagedJob {
        match self {
            JobQueue::Embedded(q) => q.stage(id, image, created_at_ms),
            JobQueue::Redis(q) => q.stage(id, image, created_at_ms).await,
        }
    }

    /// Whether the result cache (and the in-flight dedupe) is on.
    pub fn cache_on(&self) -> bool {
        self.policy().cache.is_on()
    }

    fn policy(&self) -> &QueuePolicy {
        match self {
            JobQueue::Embedded(q) => q.policy(),
            JobQueue::Redis(q) => q.policy(),
        }
    }

    /// The accurate model's answer for these image bytes, if cached (always `None` with the
    /// cache off). With Redis, for the model the workers last announced
    /// ([`Self::announce_accurate_model`]).
    pub async fn cached_result(&self, content: &ContentHash) -> Result<Option<Prediction>, QueueError> {
        if !self.cache_on() {
            return Ok(None);
        }
        match self {
            JobQueue::Embedded(q) => Ok(q.cached_result(content)),
            JobQueue::Redis(q) => q.cached_result(content).await,
        }
    }

    /// Says which accurate model this worker runs: the results it stores are cached under that
    /// identity, and (Redis) every `serve` looks results up under the one announced last.
    /// `first`: as the worker starts, when it names the model; after, it only puts the name back
    /// if it is gone (a Redis that lost its data), so the last worker started keeps naming it.
    pub async fn announce_accurate_model(&self, identity: &ModelIdentity, first: bool) -> Result<(), QueueError> {
        match self {
            JobQueue::Embedded(_) => Ok(()),
            JobQueue::Redis(q) => q.announce_accurate_model(identity, first).await,
        }
    }

    /// The job's record, or `None` if unknown or expired.
    pub async fn get(&self, id: JobId) -> Result<Option<JobRecord>, QueueError> {
        match self {
            JobQueue::Embedded(q) => Ok(q.get(id)),
            JobQueue::Redis(q) => q.get(id).await,
        }
    }

    /// Withdraws a job no worker has started: it ends `canceled`, its image is let go, and no
    /// worker will run it. A running job is left to finish (its result is stored).
    pub async fn cancel(&self, id: JobId) -> Result<CancelOutcome, QueueError> {
        match self {
            JobQueue::Embedded(q) => Ok(q.cancel(id)),
            JobQueue::Redis(q) => q.cancel(id).await,
        }
    }

    /// Starts watching a job's state changes, in this process or (Redis) any other. Watch
    /// first, then [`Self::get`]: a change in between still wakes the watch.
    pub fn watch(&self, id: JobId) -> JobWatch {
        match self {
            JobQueue::Embedded(q) => q.events().watch(id),
            JobQueue::Redis(q) => q.watch(id),
        }
    }

    /// Whether the queue can take jobs now.
    pub async fn check_ready(&self) -> Result<(), QueueError> {
        match self {
            JobQueue::Embedded(q) => q.check_ready(),
            JobQueue::Redis(q) => q.check_ready().await,
        }
    }

    /// Counts the calling worker as live (in [`Self::live_workers`]) until the returned
    /// presence is left or dropped. With Redis it beats from its own task meanwhile.
    pub fn register_worker(&self) -> WorkerPresence {
        WorkerPresence::register(self)
    }

    /// Workers taking jobs from this queue now: the embedded worker of this process, or every
    /// worker process on this Redis whose heartbeat has not run out.
    pub async fn live_workers(&self) -> Result<u64, QueueError> {
        match self {
            JobQueue::Embedded(q) => Ok(q.live_workers()),
            JobQueue::Redis(q) => q.live_workers().await,
        }
    }

    pub async fn depth(&self) -> Result<QueueDepth, QueueError> {
        match self {
            JobQueue::Embedded(q) => Ok(q.depth()),
            JobQueue::Redis(q) => q.depth().await,
        }
    }

    /// Up to `max` jobs for this worker, waiting at most `wait` for the first one. Jobs whose
    /// worker died are taken over here too (Redis). A returned job is already marked running.
    pub async fn take(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        match self {
            JobQueue::Embedded(q) => q.take(max, wait).await,
            JobQueue::Redis(q) => q.take(max, wait).await,
        }
    }

    /// Stores the accurate answer and removes the job from the queue, in one step. A job that
    /// already has an outcome keeps it (the first stored wins). With Redis, retried briefly
    /// while Redis does not answer.
    pub async fn complete(&self, delivery: &Delivery, result: &Prediction) -> Result<(), QueueError> {
        match self {
            JobQueue::Embedded(q) => q.complete(delivery, result),
            JobQueue::Redis(q) => q.complete(delivery, result).await,
        }
    }

    /// The worker is done with a delivery, whether or not its outcome could be stored. With
    /// Redis its lease is renewed until then, so a live worker keeps its jobs however long they
    /// run; after, one whose outcome was not stored is taken over after `reclaim_after`.
    pub fn release(&self, delivery: &Delivery) {
        if let JobQueue::Redis(q) = self {
            q.release(delivery);
        }
    }

    /// Up to `max` webhooks to send (jobs with a `callback_url` that have ended), waiting at
    /// most `wait` for the first. With Redis, webhooks whose sender stopped renewing them for
    /// `reclaim_after` are taken over first.
    pub async fn take_webhooks(&self, max: usize, wait: Duration) -> Result<Vec<WebhookTask>, QueueError> {
        match self {
            JobQueue::Embedded(q) => Ok(q.take_webhooks(max, wait).await),
            JobQueue::Redis(q) => q.take_webhooks(max, wait).await,
        }
    }

    /// Counts one more attempt at a webhook; returns the count (from 1), or 0 if the job's
    /// record is gone. With Redis the count is in the record, so a sender that takes over a
    /// webhook goes on from it.
    pub async fn count_webhook_attempt(&self, task: &mut WebhookTask) -> Result<u32, QueueError> {
        match self {
            JobQueue::Embedded(_) => {
                task.attempts += 1;
                Ok(task.attempts)
            }
            JobQueue::Redis(q) => q.count_webhook_attempt(task).await,
        }
    }

    /// The sender is still at this webhook (between attempts): with Redis, it is not taken over.
    pub async fn renew_webhook(&self, task: &WebhookTask) -> Result<(), QueueError> {
        match self {
            JobQueue::Embedded(_) => Ok(()),
            JobQueue::Redis(q) => q.renew_webhook(task).await,
        }
    }

    /// The webhook was delivered or given up.
    pub async fn webhook_done(&self, task: &WebhookTask) -> Result<(), QueueError> {
        match self {
            JobQueue::Embedded(_) => Ok(()),
            JobQueue::Redis(q) => q.webhook_done(task).await,
        }
    }

    /// Records a failed attempt: the job is retried, or ends `failed` once out of attempts. With
    /// Redis, retried briefly while Redis does not answer.
    pub async fn fail(&self, delivery: &Delivery, error: &str) -> Result<FailOutcome, QueueError> {
        match self {
            JobQueue::Embedded(q) => q.fail(delivery, error),
            JobQueue::Redis(q) => q.fail(delivery, error).await,
        }
    }
}
