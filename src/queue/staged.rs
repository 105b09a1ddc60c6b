//! The two-phase enqueue of `POST /predict`: a job's image is staged while the fast model
//! runs, then the job is committed with the fast answer, or abandoned if there is none.
//!
//! A job enters the queue only with its fast answer, so every record has one; staging first
//! lets the big write (the image, with Redis) overlap the fast model instead of adding to the
//! request's latency. The request handler drives both steps and times the commit itself: the
//! queue never sees the engine or the request. The backends' `stage` are here too: a backend
//! stores and queues, and knows nothing of the two steps it is driven through.

use bytes::Bytes;

use super::redis::Staging;
use super::{EmbeddedQueue, Enqueued, NewJob, QueueError, RedisQueue};
use crate::engine::Prediction;
use crate::fingerprint::ContentHash;
use crate::jobs::{JobId, ResultSource};

/// A job whose image is stored (or, embedded, held) but which is not queued yet. Dropping it
/// unused is as good as [`Self::abandon`] but for a staged Redis image, which then expires by
/// itself.
#[must_use = "a staged job is queued only by `commit`"]
pub struct StagedJob {
    id: JobId,
    created_at_ms: u64,
    backend: Backend,
}

enum Backend {
    /// Nothing to stage in memory: the image waits here.
    Embedded { queue: EmbeddedQueue, image: Bytes },
    /// The image is on its way into Redis, or there, unless staging failed (its error comes out
    /// of `commit`).
    Redis { queue: RedisQueue, staging: Staging },
}

impl EmbeddedQueue {
    /// The first step of queueing a job: nothing to store yet, in memory.
    pub fn stage(&self, id: JobId, image: Bytes, created_at_ms: u64) -> StagedJob {
        StagedJob::embedded(self.clone(), id, image, created_at_ms)
    }
}

impl RedisQueue {
    /// Starts storing a job's image ahead of the job (see `queue::redis::enqueue`), to run while
    /// the fast model does; the job is queued only by [`StagedJob::commit`], where a staging error
    /// comes out.
    pub async fn stage(&self, id: JobId, image: Bytes, created_at_ms: u64) -> StagedJob {
        let staging = Staging::start(self, id, image).await;
        StagedJob { id, created_at_ms, backend: Backend::Redis { queue: self.clone(), staging } }
    }
}

impl StagedJob {
    fn embedded(queue: EmbeddedQueue, id: JobId, image: Bytes, created_at_ms: u64) -> Self {
        Self { id, created_at_ms, backend: Backend::Embedded { queue, image } }
    }

    /// False when staging is known to have failed already: then [`Self::commit`] returns that
    /// error.
    pub fn is_staged(&mut self) -> bool {
        match &mut self.backend {
            Backend::Embedded { .. } => true,
            Backend::Redis { staging, .. } => !staging.failed_already(),
        }
    }

    /// Waits until the image is stored (Redis: the `SET` has answered); whether it is. `commit`
    /// does not need this: it sends the job behind the image.
    pub async fn stored(&mut self) -> bool {
        match &mut self.backend {
            Backend::Embedded { .. } => true,
            Backend::Redis { staging, .. } => staging.settle().await,
        }
    }

    /// Queues the job with its fast answer; returns once it is stored. An error (the staging's
    /// own, a full queue, an unreachable Redis) means the job is not queued, ever.
    /// `callback_url`: where the job's final state is POSTed (a webhook), already checked
    /// against `--webhook-allow`. `content`, with the cache on: the image's hash, so that a job
    /// for bytes already queued or running shares that run ([`Enqueued::SharedRun`]) and its
    /// result is cached when it completes.
    pub async fn commit(
        self,
        fast: &Prediction,
        callback_url: Option<&str>,
        content: Option<&ContentHash>,
    ) -> Result<Enqueued, QueueError> {
        let job = NewJob { id: self.id, fast, created_at_ms: self.created_at_ms, callback_url };
        match self.backend {
            Backend::Embedded { queue, image } => queue.enqueue(&job, image, content),
            Backend::Redis { queue, staging } => queue.commit_staged(&job, content, staging).await,
        }
    }

    /// Stores the job as completed already, with `result` (from the cache, or the fast answer the
    /// cascade kept): no worker ever sees it, and its watchers and webhook are told at once. The
    /// staged image is let go.
    pub async fn finish_now(
        self,
        fast: &Prediction,
        result: &Prediction,
        source: ResultSource,
        callback_url: Option<&str>,
    ) -> Result<(), QueueError> {
        let job = NewJob { id: self.id, fast, created_at_ms: self.created_at_ms, callback_url };
        match self.backend {
            Backend::Embedded { queue, image } => {
                drop(image);
                queue.finish_now(&job, result, source);
                Ok(())
            }
            Backend::Redis { queue, staging } => {
                // After the `SET` has answered: the script deletes the image, so it must run
                // after it (one round trip more; this path runs no worker).
                staging.wait().await?;
                let before = queue.before_commit();
                queue.finish_now(&job, result, source).await?;
                queue.replicated(job.id, before).await
            }
        }
    }

    /// Gives the job up (its fast answer failed): a staged image is deleted at once, best effort.
    pub async fn abandon(self) {
        if let Backend::Redis { queue, staging } = self.backend
            && staging.wait().await.is_ok()
        {
            queue.discard_staged(self.id).await;
        }
    }
}
