//! Inference engine: ONNX Runtime models on dedicated threads, with dynamic batching.
//!
//! A [`Classifier`] owns one OS thread per *lane* of its [`Model`] (one lane by default) and
//! runs every batch there, so CPU-bound inference never runs on the async runtime's worker
//! threads. Lanes take batches from one shared queue and run them side by side, each on its
//! share of the cores: a run on one thread needs no hand-off between threads inside the model,
//! so it loses nothing when request handling takes a core for a moment, where a run spread
//! over every core waits for the slowest of them at each operator. Where an image is
//! decoded is a [`DecodeOn`] choice: the fast tier decodes on its [`WorkPool`] (tokio's blocking
//! pool without one), in parallel with the model, when the model is busy, and on its idle inference thread otherwise
//! (two thread hand-offs fewer for a lone request); a background tier always decodes on its
//! inference thread, at that thread's low priority.
//! Batching is Triton-style: take whatever is already waiting, up to `max_batch`, and wait at
//! most `max_delay` for more (0 by default: never hold a request back to fill a batch).
//!
//! One image's walk through the engine:
//! 1. `handle.rs` [`Classifier::admit_holding`] picks where it is decoded. Off the inference
//!    thread, `decode.rs` `decode_into` turns it into a tensor from `tensors.rs` on the
//!    [`WorkPool`]; either way it is queued as a `lane.rs` `Request` carrying an
//!    `inflight.rs` guard, and the caller gets a [`PendingPrediction`].
//! 2. `lane.rs` `Lane::run`, on an inference thread, takes it with whatever else is waiting
//!    (`collect_batch`), decodes it there if it came encoded (`Lane::decode`), runs the batch
//!    on `model.rs` [`Model::infer`] (`Lane::infer`), and in `Lane::reply` turns its row into a
//!    `prediction.rs` [`Prediction`] (top-k) after dropping the batch's in-flight guards.
//!
//! Modules point one way: `handle` → `lane` → `model`, `decode`, `inflight`, `tensors`,
//! `prediction`; `error`, `batching` and `tier` are leaves every other one may use.

mod batching;
mod decode;
mod error;
mod handle;
mod inflight;
mod lane;
mod model;
pub mod pool;
mod prediction;
pub mod priority;
pub mod runtime;
mod tensors;
mod tier;

pub use batching::{BatchConfig, DecodeOn};
pub use decode::Hold;
pub use error::{ClassifyError, EngineError};
pub use handle::{Classifier, PendingPrediction};
pub use model::{Model, ModelConfig, Spin};
pub use pool::WorkPool;
pub use prediction::{ClassScore, Prediction};
pub use priority::{Priority, ThreadPriority};
pub use runtime::RuntimeError;
pub use tier::Tier;
