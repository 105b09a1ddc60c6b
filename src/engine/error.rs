//! The engine's two error types: why a model could not be loaded or run ([`EngineError`]), and
//! why one image got no prediction ([`ClassifyError`]). `api/error.rs` maps both to HTTP.

use super::runtime::RuntimeError;
use crate::pipeline::ImageError;

/// Why a model could not be loaded or run.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The command line checks model files first, with a hint naming the flag (see
    /// `models::files`); this is what a library caller gets.
    #[error("model file {file} not found")]
    ModelMissing { file: String },
    #[error("{file} is not an ONNX model (ONNX Runtime cannot parse it as one)")]
    NotOnnx { file: String },
    #[error("model {file} refused: {reason}")]
    InvalidModel { file: String, reason: String },
    #[error("inference failed: {0}")]
    Inference(String),
}

/// Why one image could not be classified.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClassifyError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("the inference queue is full")]
    Overloaded,
    /// A preprocessed tensor that is not one image of the model's input shape.
    #[error("the tensor has {got} values; the model takes {expected} per image")]
    TensorSize { got: usize, expected: usize },
    #[error("the inference thread has stopped")]
    Stopped,
}
