//! How a [`super::Classifier`] groups requests into batches and where it decodes their images.
//!
//! Batching is Triton-style: take whatever is already waiting, up to `max_batch`, and wait at
//! most `max_delay` for more (0 by default: never hold a request back to fill a batch).

use std::time::Duration;

use super::{ThreadPriority, Tier, WorkPool};

/// How requests are grouped into batches.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    pub max_batch: usize,
    /// How long the first request of a batch may wait for others to join it.
    pub max_delay: Duration,
    /// Requests waiting for the inference thread before new ones are refused.
    pub queue_capacity: usize,
    /// Classes reported in each [`super::Prediction::top_k`].
    pub top_k: usize,
    /// Which tier this model serves, as labelled in metrics.
    pub tier: Tier,
    /// Scheduling priority of the inference thread and of ONNX Runtime's threads.
    pub priority: ThreadPriority,
    /// Where images are decoded.
    pub decode_on: DecodeOn,
    /// Threads that decode off the inference thread ([`DecodeOn::BlockingPool`], and
    /// [`DecodeOn::InferenceThreadWhenIdle`] under load); unset: tokio's blocking pool.
    pub pool: Option<WorkPool>,
}

/// Where a [`super::Classifier`] decodes and preprocesses its images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeOn {
    /// tokio's blocking pool, at the process's priority, in parallel with inference.
    BlockingPool,
    /// The inference thread, at the model's own priority. For a background tier: even its
    /// decoding must not compete with the foreground.
    InferenceThread,
    /// The inference thread when nothing is queued or running there (a lone request skips the
    /// hand-offs to and from the blocking pool), else the blocking pool, so that under load
    /// decoding overlaps inference.
    InferenceThreadWhenIdle,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_batch: 1,
            max_delay: Duration::ZERO,
            queue_capacity: 64,
            top_k: 5,
            tier: Tier::Fast,
            priority: ThreadPriority::Nice(0),
            decode_on: DecodeOn::BlockingPool,
            pool: None,
        }
    }
}
