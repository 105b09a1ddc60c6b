//! The pattern's one step, shared by `POST /predict` and the Open Inference Protocol's
//! `tandem` model: the fast model answers, and the job for the accurate one is queued before
//! that answer leaves, so a job id a client sees always resolves.
//!
//! Where it can, the step spends less (see [`Refinement`]): a fast answer for bytes seen before
//! comes from the fast cache; an accurate result for them, from the result cache, makes the job
//! complete at once; a fast answer at least `--refine-below` sure is final (the cascade); and a
//! job for bytes already queued shares that run (the queue's dedupe). Each decision is made
//! here, once, and recorded on the job: a worker never sees a job it would not run.

use bytes::Bytes;
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use crate::cache::MemoryCache;
use crate::engine::{Hold, Prediction};
use crate::fingerprint::ContentHash;
use crate::jobs::{ResultSource, now_ms};
use crate::queue::{Enqueued, QueueError};

/// How `serve` spends the accurate tier only where it changes the answer.
#[derive(Default)]
pub struct Refinement {
    /// The cascade: a fast answer whose top-1 probability is at least this is final, and the
    /// accurate tier is not run (`--refine-below`; `None`: every image is refined).
    pub refine_below: Option<f32>,
    /// The fast tier's answers by image bytes (with `--cache-ttl`), in this process's memory.
    pub fast_cache: Option<MemoryCache<ContentHash, Prediction>>,
}

/// The fast answer, and the job queued for the accurate tier (or why there is none).
pub(super) struct Answered {
    pub fast: Prediction,
    pub job_id: Option<Uuid>,
    pub async_error: Option<String>,
    /// Known already, so the job (if any) is completed: the result, and where it came from.
    pub finished: Option<(Prediction, ResultSource)>,
}

/// What happens to the image after its fast answer.
enum Next {
    /// Queued for the accurate tier (or sharing a run already queued).
    Refine,
    /// Completed now, with this result.
    Finish(Prediction, ResultSource),
}

/// Classifies `image` with the fast model and queues its job; `hold` is kept until the decode
/// has ended. If the queue cannot take the job, the fast answer still comes, with the reason
/// instead of an id. `keep_probabilities`: the answer has every class's probability.
/// `cascade`: a confident fast answer may be final (`--refine-below`).
pub(super) async fn fast_then_enqueue(
    state: &AppState,
    image: Bytes,
    callback_url: Option<&str>,
    hold: Hold,
    keep_probabilities: bool,
    cascade: bool,
) -> Result<Answered, ApiError> {
    let inner = &state.inner;
    let queue = &inner.queue;
    let fast_cache = inner.refinement.fast_cache.as_ref();
    let content =
        if queue.cache_on() || fast_cache.is_some() { Some(content_hash(state, &image).await?) } else { None };

    // A cached fast answer is used only where its probabilities are not wanted (they are not kept).
    let cached_fast = match (fast_cache, &content) {
        (Some(cache), Some(content)) if !keep_probabilities => {
            let found = cache.get(content);
            count_cache(crate::engine::Tier::Fast, found.is_some());
            found
        }
        _ => None,
    };
    // Decoded and queued for the fast model first: a bad image or a full inference queue is
    // refused before anything is stored.
    let fast_was_cached = cached_fast.is_some();
    let pending = match &cached_fast {
        Some(_) => None,
        None if keep_probabilities => Some(inner.fast.admit_for_probabilities(image.clone(), hold).await?),
        None => Some(inner.fast.admit_holding(image.clone(), hold).await?),
    };
    let answer = async {
        match (pending, cached_fast) {
            (Some(pending), _) => pending.await,
            (None, Some(fast)) => Ok(fast),
            (None, None) => Err(crate::engine::ClassifyError::Stopped),
        }
    };

    // The job is enqueued before answering, so a job id the client sees always resolves; with
    // Redis, the image is written while the fast model runs.
    let id = Uuid::new_v4();
    let (answer, mut staged) = tokio::join!(answer, queue.stage(id, image, now_ms()));
    let mut fast = match answer {
        Ok(fast) => fast,
        Err(err) => {
            staged.abandon().await;
            return Err(err.into());
        }
    };
    // The job stores the fast answer as every client sees it: without the probabilities.
    let probabilities = fast.probabilities.take();
    if let (Some(cache), Some(content), false) = (fast_cache, &content, fast_was_cached) {
        cache.put(*content, fast.clone());
    }
    // The cascade first: a confident fast answer is final without a look at the cache (the
    // accurate results of confident images are not computed, so rarely cached).
    let next = match inner.refinement.refine_below.filter(|_| cascade) {
        Some(threshold) => {
            let confident = fast.score >= threshold;
            let refined = if confident { "false" } else { "true" };
            metrics::counter!(crate::metrics::CASCADE_DECISIONS, "refined" => refined).increment(1);
            if confident { Next::Finish(fast.clone(), ResultSource::Cascade) } else { Next::Refine }
        }
        None => Next::Refine,
    };

    // How long the request waits for its job to be stored, once its fast answer is ready (not
    // recorded when staging failed already: then nothing is tried).
    let tried = staged.is_staged();
    let committing = std::time::Instant::now();
    let (stored, finished) = match next {
        Next::Refine => {
            // With the cache on, the commit also looks the result up and finds a run to share,
            // in the same step (one round trip with Redis).
            let content = content.as_ref().filter(|_| queue.cache_on());
            let queued = staged.commit(&fast, callback_url, content).await;
            if content.is_some() && queued.is_ok() {
                count_cache(crate::engine::Tier::Accurate, matches!(queued, Ok(Enqueued::Cached(_))));
            }
            match queued {
                Ok(Enqueued::Queued) => {
                    metrics::counter!(crate::metrics::JOBS_ENQUEUED).increment(1);
                    (Ok(()), None)
                }
                Ok(Enqueued::SharedRun) => {
                    metrics::counter!(crate::metrics::JOBS_DEDUPLICATED).increment(1);
                    (Ok(()), None)
                }
                Ok(Enqueued::Cached(result)) => (Ok(()), Some((result, ResultSource::Cache))),
                Err(err) => (Err(err), None),
            }
        }
        Next::Finish(result, source) => {
            // Final only with a job that says so: with none, the client is told why (`async_error`).
            let stored = staged.finish_now(&fast, &result, source, callback_url).await;
            let finished = stored.is_ok().then_some((result, source));
            (stored, finished)
        }
    };
    fast.probabilities = probabilities;
    if tried {
        metrics::histogram!(crate::metrics::ENQUEUE_DURATION).record(committing.elapsed().as_secs_f64());
    }
    let (job_id, async_error) = match stored {
        Ok(()) => (Some(id), None),
        Err(err) => {
            let reason = match err {
                QueueError::Full { .. } | QueueError::FullBytes { .. } => "full",
                _ => "unavailable",
            };
            metrics::counter!(crate::metrics::JOBS_REJECTED, "reason" => reason).increment(1);
            tracing::debug!(error = %err, "job not queued");
            (None, Some(err.to_string()))
        }
    };
    Ok(Answered { fast, job_id, async_error, finished })
}

/// The image's SHA-256; a big image's off the runtime's threads, like its parse.
async fn content_hash(state: &AppState, image: &Bytes) -> Result<ContentHash, ApiError> {
    if image.len() <= super::upload::PARSE_OFF_RUNTIME {
        return Ok(ContentHash::of(image));
    }
    let image = image.clone();
    state.inner.pool.run(move || ContentHash::of(&image)).await.map_err(|e| ApiError::Internal(e.to_string()))
}

fn count_cache(tier: crate::engine::Tier, hit: bool) {
    let result = if hit { "hit" } else { "miss" };
    metrics::counter!(crate::metrics::CACHE_REQUESTS, "tier" => tier.as_str(), "result" => result).increment(1);
}
