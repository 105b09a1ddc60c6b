//! The pattern's one step, shared by `POST /predict` and the Open Inference Protocol's
//! `tandem` model: the fast model answers, and the job for the accurate one is queued before
//! that answer leaves, so a job id a client sees always resolves.

use bytes::Bytes;
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use crate::engine::{Hold, Prediction};
use crate::jobs::now_ms;

/// The fast answer, and the job queued for the accurate tier (or why there is none).
pub(super) struct Answered {
    pub fast: Prediction,
    pub job_id: Option<Uuid>,
    pub async_error: Option<String>,
}

/// Classifies `image` with the fast model and queues its job; `hold` is kept until the decode
/// has ended. If the queue cannot take the job, the fast answer still comes, with the reason
/// instead of an id. `keep_probabilities`: the answer has every class's probability.
pub(super) async fn fast_then_enqueue(
    state: &AppState,
    image: Bytes,
    callback_url: Option<&str>,
    hold: Hold,
    keep_probabilities: bool,
) -> Result<Answered, ApiError> {
    let fast = &state.inner.fast;
    // Decoded and queued for the fast model first: a bad image or a full inference queue is
    // refused before anything is stored.
    let answer = if keep_probabilities {
        fast.admit_for_probabilities(image.clone(), hold).await?
    } else {
        fast.admit_holding(image.clone(), hold).await?
    };

    // The job is enqueued before answering, so a job id the client sees always resolves; with
    // Redis, the image is written while the fast model runs. If the queue cannot take the job,
    // the fast answer still goes out, with the reason instead of an id.
    let id = Uuid::new_v4();
    let (answer, staged) = tokio::join!(answer, state.inner.queue.stage(id, image, now_ms()));
    let mut fast = match answer {
        Ok(fast) => fast,
        Err(err) => {
            staged.abandon().await;
            return Err(err.into());
        }
    };
    // How long the request waits for its job to be queued, once its fast answer is ready (not
    // recorded when staging failed already: then nothing is tried).
    let tried = staged.is_staged();
    let committing = std::time::Instant::now();
    // The job stores the fast answer as every client sees it: without the probabilities.
    let probabilities = fast.probabilities.take();
    let queued = staged.commit(&fast, callback_url).await;
    fast.probabilities = probabilities;
    if tried {
        metrics::histogram!(crate::metrics::ENQUEUE_DURATION).record(committing.elapsed().as_secs_f64());
    }
    let (job_id, async_error) = match queued {
        Ok(()) => {
            metrics::counter!(crate::metrics::JOBS_ENQUEUED).increment(1);
            (Some(id), None)
        }
        Err(err) => {
            let reason = match err {
                crate::queue::QueueError::Full { .. } | crate::queue::QueueError::FullBytes { .. } => "full",
                _ => "unavailable",
            };
            metrics::counter!(crate::metrics::JOBS_REJECTED, "reason" => reason).increment(1);
            tracing::debug!(error = %err, "job not queued");
            (None, Some(err.to_string()))
        }
    };
    Ok(Answered { fast, job_id, async_error })
}
