//! Queueing a job from `POST /predict`: its image first, then the job, fenced and undone so
//! that an enqueue this side gave up on never leaves a job behind.
//!
//! # Enqueueing
//!
//! `POST /predict` stores the image while the fast model runs (`stage`, then
//! `stage_image`: `SET` with a short expiry, sent at once), then queues the job with its
//! fast answer (`StagedJob::commit`, then `commit_staged`: one small script). The script goes out
//! as soon as the fast answer is there, without waiting for the `SET`'s reply: both travel on the
//! one multiplexed connection, whose commands Redis runs in order, so the image is in by the time
//! the script runs, and the request waits one round trip after its fast answer, not two (with
//! Redis 20 ms away, 20 ms less). A script that overtook its image after all (the `SET` went out
//! on a connection made anew) finds no image and queues nothing; it is sent once more when the
//! `SET` has answered. The image never passes
//! through Lua: a 1 MB script argument costs Redis about 2 ms of copying, a plain `SET` 0.2 ms. An image staged by a request that then failed, or by a
//! process that died, expires by itself (`STAGED_IMAGE_TTL`); queueing the job removes the
//! expiry.
//!
//! # Enqueue outcome
//!
//! A client answered `"job_id": null` must never see its job run, although an enqueue that this
//! side gave up on (Redis stalled, e.g. `SIGSTOP`, for longer than the response timeout) still
//! sits in the socket and runs when Redis wakes. We fence rather than answer "outcome unknown":
//! the client's answer then stays a plain yes or no, and nothing unresolvable is handed out.
//!
//! - The fence: the enqueue script carries a deadline, `ENQUEUE_FENCE` (1 s) after the call
//!   starts, and queues nothing (deleting the staged image) if Redis' `TIME` has reached it. The
//!   deadline is on Redis' clock, so clock skew between hosts plays no part: staging reads Redis'
//!   `TIME` in the same round trip as its `SET`, and the offset to our monotonic clock is taken
//!   when that answer arrives, so the deadline is early, never late (`RedisClock`). Normal
//!   enqueues take milliseconds; one run 1 s late would have been given up at 1.5 s anyway.
//! - The undo: the fence leaves 0.5 s between the latest moment the script may run and the
//!   moment this side gives up, but a reply can still be lost or late (a connection cut, this
//!   process starved). So every enqueue call that ends without an answer starts a background
//!   task that, once the fence has passed (from then on the script, if Redis runs it yet, is
//!   refused), deletes the job's record and its image (`CANCEL_LUA`; a queued image's bytes
//!   go back through `drop_image.lua`, a still-staged one was never counted), retrying while
//!   Redis does not answer for up to `CANCEL_FOR`. A worker drops an entry whose record is gone
//!   (giving back nothing more: its image is gone), or does not store its result.
//!
//! What is left: the undo lives in the `serve` process, so if that process dies within those
//! seconds *and* the script's reply was lost, the job runs. Redis' clock stepping back (NTP) by
//! more than the margin while a request is in flight weakens the fence by that much.

use std::future::Future as _;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::RedisQueue;
use super::conn::{OP_TIMEOUT, Retry};
use super::{to_json, ttl_ms};
use crate::fingerprint::ContentHash;
use crate::jobs::JobId;
use crate::queue::{Enqueued, NewJob, QueueError};

/// How late Redis may run an enqueue script: past this after the call started (on Redis' own
/// clock, see "Enqueue outcome"), the script queues nothing. Well under `RESPONSE_TIMEOUT`, so an
/// enqueue that runs in time is answered before this side gives up on it.
const ENQUEUE_FENCE: Duration = Duration::from_millis(1000);
/// How long an enqueue whose answer never came keeps trying to make sure it left no job.
const CANCEL_FOR: Duration = Duration::from_secs(300);
/// The pause between those tries.
const CANCEL_RETRY: Duration = Duration::from_secs(1);
/// How long a staged image waits for its job to be queued (a request's whole life is far shorter).
const STAGED_IMAGE_TTL: Duration = Duration::from_secs(300);

/// A job's image on its way into Redis: `RedisQueue::stage_image`, polled once here so that its
/// `SET` is queued on the connection ahead of anything sent later (the connection's own task
/// writes it), then left to a task of its own, so that its reply is taken as it arrives: the
/// `TIME` read with it sets the enqueue fence's clock, and a Sentinel lookup it started is not
/// left parked while the fast model runs.
pub(in crate::queue) struct Staging {
    state: StagingState,
}

enum StagingState {
    Sending(JoinHandle<Result<(), QueueError>>),
    Done(Result<(), QueueError>),
}

impl Staging {
    pub async fn start(queue: &RedisQueue, id: JobId, image: Bytes) -> Self {
        let queue = queue.clone();
        let mut sending = Box::pin(async move { queue.stage_image(id, &image).await });
        let first = std::future::poll_fn(|cx| Poll::Ready(sending.as_mut().poll(cx))).await;
        let state = match first {
            Poll::Ready(done) => StagingState::Done(done),
            Poll::Pending => StagingState::Sending(tokio::spawn(sending)),
        };
        Self { state }
    }

    /// Whether the image is known not to be stored, without waiting.
    pub fn failed_already(&mut self) -> bool {
        if let StagingState::Sending(task) = &mut self.state
            && task.is_finished()
            && let Some(done) = task.now_or_never()
        {
            self.state = StagingState::Done(done.unwrap_or_else(task_failed));
        }
        matches!(self.state, StagingState::Done(Err(_)))
    }

    /// Waits for the `SET`'s reply: whether the image is stored.
    pub async fn settle(&mut self) -> bool {
        if let StagingState::Sending(task) = &mut self.state {
            self.state = StagingState::Done(task.await.unwrap_or_else(task_failed));
        }
        matches!(self.state, StagingState::Done(Ok(())))
    }

    pub async fn wait(self) -> Result<(), QueueError> {
        match self.state {
            StagingState::Sending(task) => task.await.unwrap_or_else(task_failed),
            StagingState::Done(done) => done,
        }
    }
}

fn task_failed(err: tokio::task::JoinError) -> Result<(), QueueError> {
    Err(QueueError::Unavailable(format!("store the image: {err}")))
}

/// What the enqueue script did, before a missing image is taken for an error.
enum Reply {
    Done(Enqueued),
    /// The image was not in Redis: nothing was queued.
    ImageMissing,
}

impl RedisQueue {
    /// Queues a staged job with its fast answer; the script is sent at once, behind the image's
    /// `SET` (see "Enqueueing"). An error means the job is not queued, ever.
    pub(in crate::queue) async fn commit_staged(
        &self,
        job: &NewJob<'_>,
        content: Option<&ContentHash>,
        staging: Staging,
    ) -> Result<Enqueued, QueueError> {
        // The `SET` was queued on the connection when staging started, unless the connection was
        // still being made then: a script that overtakes it finds no image, and is sent again.
        let before = self.before_commit();
        let (staged, queued) = tokio::join!(staging.wait(), self.enqueue_staged(job, content));
        let missing =
            || QueueError::Unavailable("enqueue: the job's image was not in Redis (staging failed or expired)".into());
        let queued = match (staged, queued?) {
            (_, Reply::Done(queued)) => queued,
            (Err(err), Reply::ImageMissing) => return Err(err),
            // It overtook its image: nothing was queued, and now the image is in.
            (Ok(()), Reply::ImageMissing) => match self.enqueue_staged(job, content).await? {
                Reply::Done(queued) => queued,
                Reply::ImageMissing => return Err(missing()),
            },
        };
        self.replicated(job.id, before).await?;
        Ok(queued)
    }

    /// Stores a job's image ahead of the job, with a plain `SET` (see "Enqueueing" above). It
    /// expires after `STAGED_IMAGE_TTL` unless [`Self::enqueue_staged`] queues its job. Redis'
    /// `TIME` comes back in the same round trip, for the enqueue fence.
    pub(crate) async fn stage_image(&self, id: JobId, image: &[u8]) -> Result<(), QueueError> {
        let key = &self.inner.keys.image(id);
        let ttl = ttl_ms(STAGED_IMAGE_TTL);
        let time: (u64, u64) = self
            .call(&self.inner.main, "store the image", OP_TIMEOUT, Retry::Unsent, |mut conn| async move {
                // TIME after the SET: the upload's transfer time does not blur the clock reading.
                redis::pipe()
                    .cmd("SET")
                    .arg(key)
                    .arg(image)
                    .arg("PX")
                    .arg(ttl)
                    .ignore()
                    .cmd("TIME")
                    .query_async::<((u64, u64),)>(&mut conn)
                    .await
                    .map(|(time,)| time)
            })
            .await?;
        self.inner.clock.observe(time, std::time::Instant::now(), self.inner.main.server());
        Ok(())
    }

    /// Redis' time (ms) at a moment of ours, both returned: now, from the clock as last seen, or
    /// asked of Redis if never seen yet.
    async fn redis_time(&self) -> Result<(i64, std::time::Instant), QueueError> {
        let clock = &self.inner.clock;
        let now = std::time::Instant::now();
        if let Some(redis_ms) = clock.redis_ms(now, &self.inner.main.server()) {
            return Ok((redis_ms, now));
        }
        let time: (u64, u64) = self
            .call(&self.inner.main, "read Redis' clock", OP_TIMEOUT, Retry::Unsent, |mut conn| async move {
                redis::cmd("TIME").query_async(&mut conn).await
            })
            .await?;
        let received = std::time::Instant::now();
        let server = self.inner.main.server();
        clock.observe(time, received, server.clone());
        let redis_ms = clock
            .redis_ms(received, &server)
            .ok_or_else(|| QueueError::Unavailable("Redis' clock could not be read".into()))?;
        Ok((redis_ms, received))
    }

    /// Queues a job whose image [`Self::stage_image`] stored: bound check, record (with the fast
    /// answer) and stream entry in one script.
    /// The script is fenced: run by Redis later than `ENQUEUE_FENCE` after this call started, it
    /// queues nothing; and if no answer comes, the job is removed in the background (see
    /// "Enqueue outcome"). So an error here always means no job, ever. With `content` (the
    /// cache on), a job for bytes already queued or running follows that run.
    async fn enqueue_staged(&self, job: &NewJob<'_>, content: Option<&ContentHash>) -> Result<Reply, QueueError> {
        let inner = &self.inner;
        let id = job.id;
        let content = content.filter(|_| inner.config.policy.cache.is_on()).map(ContentHash::hex).unwrap_or_default();
        let limit = inner.config.policy.max_queue;
        let byte_limit = inner.config.policy.max_queue_bytes;
        let (redis_now, now) = self.redis_time().await?;
        let deadline = redis_now.saturating_add(i64::try_from(ENQUEUE_FENCE.as_millis()).unwrap_or(i64::MAX));
        // From here on, by our clock, Redis' clock is surely past the deadline.
        let fence_at = now + ENQUEUE_FENCE;
        let mut invocation = inner.scripts.enqueue.prepare_invoke();
        invocation
            .key(&inner.keys.stream)
            .key(inner.keys.job(id))
            .key(inner.keys.image(id))
            .key(&inner.keys.queued_bytes)
            .key(inner.keys.inflight(&content))
            .arg(limit)
            .arg(ttl_ms(self.unfinished_ttl()))
            .arg(id.to_string())
            .arg(to_json(job.fast)?)
            .arg(job.created_at_ms)
            .arg(byte_limit)
            .arg(deadline)
            .arg(job.callback_url.unwrap_or(""))
            .key(&inner.keys.accurate_model)
            .arg(&content)
            .arg(ttl_ms(inner.config.policy.cache.ttl))
            .arg(&inner.keys.cache_prefix)
            .arg(ttl_ms(inner.config.policy.result_ttl))
            .arg(crate::queue::MAX_FOLLOWERS);
        let invocation = &invocation;
        let queued: redis::Value = match self
            .call(&inner.main, "enqueue", OP_TIMEOUT, Retry::Unsent, |mut conn| async move {
                invocation.invoke_async(&mut conn).await
            })
            .await
        {
            Ok(queued) => queued,
            Err(err) => {
                // The script may have run with its answer lost (or be about to run): undo it.
                self.cancel_in_background(id, fence_at);
                return Err(err);
            }
        };
        let queued = match queued {
            redis::Value::Int(code) => code,
            other => {
                let cached = super::reply::string_of(&other).and_then(|json| serde_json::from_str(&json).ok());
                return cached
                    .map(|cached| Reply::Done(Enqueued::Cached(cached)))
                    .ok_or_else(|| QueueError::Unavailable("enqueue: the cached result could not be read".into()));
            }
        };
        match queued {
            1 => Ok(Reply::Done(Enqueued::Queued)),
            3 => Ok(Reply::Done(Enqueued::SharedRun)),
            0 => Err(QueueError::Full { limit }),
            2 => Err(QueueError::FullBytes { limit: byte_limit }),
            -2 => Err(QueueError::Unavailable(format!(
                "enqueue: Redis ran it more than {} ms late (stalled?), so it queued nothing",
                ENQUEUE_FENCE.as_millis()
            ))),
            _ => Ok(Reply::ImageMissing),
        }
    }

    /// After an enqueue without an answer: waits until its fence has passed (from then on the
    /// script, should Redis run it yet, queues nothing), then removes whatever it queued,
    /// retrying while Redis does not answer, up to `CANCEL_FOR`.
    pub(super) fn cancel_in_background(&self, id: JobId, fence_at: std::time::Instant) {
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(Instant::from_std(fence_at)).await;
            let give_up = Instant::now() + CANCEL_FOR;
            loop {
                match queue.undo_enqueue(id).await {
                    Ok(true) => {
                        tracing::warn!(job = %id, "an enqueue whose answer was lost had queued its job; removed it, as its client was told it was not queued");
                        return;
                    }
                    Ok(false) => return,
                    Err(err) if Instant::now() >= give_up => {
                        tracing::warn!(job = %id, error = %err, "could not make sure that an enqueue without an answer left no job");
                        return;
                    }
                    Err(_) => tokio::time::sleep(CANCEL_RETRY).await,
                }
            }
        });
    }

    /// Runs `CANCEL_LUA` once; whether a record was removed. Public for the tests only (the
    /// undo of an enqueue that did get its answer would remove a job its client was given).
    #[doc(hidden)]
    pub async fn undo_enqueue(&self, id: JobId) -> Result<bool, QueueError> {
        let inner = &self.inner;
        let mut invocation = inner.scripts.cancel.prepare_invoke();
        invocation.key(inner.keys.job(id)).key(inner.keys.image(id)).key(&inner.keys.queued_bytes);
        let invocation = &invocation;
        let existed: i64 = self
            .call(&inner.main, "cancel an enqueue", OP_TIMEOUT, Retry::Unsent, |mut conn| async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        Ok(existed == 1)
    }

    /// Deletes a staged image whose job will not be queued (best effort: it expires anyway).
    pub(crate) async fn discard_staged(&self, id: JobId) {
        let key = &self.inner.keys.image(id);
        let deleted = self
            .call(&self.inner.main, "discard the image", OP_TIMEOUT, Retry::Unsent, |mut conn| async move {
                redis::cmd("UNLINK").arg(key).query_async::<()>(&mut conn).await
            })
            .await;
        if let Err(err) = deleted {
            tracing::debug!(job = %id, error = %err, "staged image left to expire");
        }
    }
}
