//! Decoding an image into a model's input tensor, wherever that runs (a decode thread or the
//! inference thread, see [`super::DecodeOn`]).
//!
//! The one place that times a decode (`tandem_preprocess_duration_seconds`) and that ends the
//! caller's [`Hold`], so that both mean the same whichever thread decoded.

use std::time::Instant;

use super::Tier;
use crate::pipeline::{self, ImageError, PreprocessConfig};

/// Something the caller wants kept until its image's decode has ended, whatever becomes of
/// the caller: e.g. a request's in-flight permit, so that a request that timed out still
/// counts against the limit while its decode runs on.
pub type Hold = Box<dyn std::any::Any + Send>;

/// Decodes and preprocesses `image` into `tensor` (of the model's input length), then drops
/// `hold` and records how long it took.
pub(super) fn decode_into(
    image: &[u8],
    config: &PreprocessConfig,
    tier: Tier,
    tensor: &mut [f32],
    hold: Hold,
) -> Result<(), ImageError> {
    let started = Instant::now();
    let outcome = pipeline::preprocess_into(image, config, tensor);
    drop(hold);
    metrics::histogram!(crate::metrics::PREPROCESS_DURATION, "tier" => tier.as_str())
        .record(started.elapsed().as_secs_f64());
    outcome
}
