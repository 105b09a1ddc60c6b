//! Command-line tools that use the engine directly, without the HTTP service.

pub mod classify;
pub mod eval;
pub mod serve;

use std::sync::Arc;

use crate::config::{ModelArgs, Tier};
use crate::engine::{BatchConfig, Classifier, EngineError, ModelConfig};
use crate::labels::Labels;

/// Loads one tier's model on its own inference thread.
pub fn load_tier(
    models: &ModelArgs,
    labels: &Arc<Labels>,
    tier: Tier,
    top_k: usize,
) -> Result<Classifier, EngineError> {
    let config = ModelConfig {
        path: models.model_path(tier),
        labels: Arc::clone(labels),
        preprocess: models.preprocess(tier),
        intra_threads: models.intra_threads(),
        spin: models.spin(tier),
        lanes: 1,
    };
    Classifier::start(config, BatchConfig { top_k, tier, ..BatchConfig::default() })
}
