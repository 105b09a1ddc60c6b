//! [`Classifier`]: the handle the rest of the crate holds to one model on its lanes.
//!
//! It owns the sending end of the model's request queue. Its entry points decide where each
//! image is decoded ([`DecodeOn`]), queue it for the lanes (`lane.rs`) with an in-flight guard
//! and hand back the answer to await; they never run inference on the caller's thread.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use crossbeam_channel::{Sender, TrySendError};
use tokio::sync::oneshot;

use super::decode::{self, Hold};
use super::inflight::InFlight;
use super::lane::{self, Input, LaneSetup, Request};
use super::tensors::TensorPool;
use super::{BatchConfig, ClassifyError, DecodeOn, EngineError, ModelConfig, Prediction, Tier, WorkPool};
use crate::fingerprint::ModelIdentity;
use crate::labels::Labels;
use crate::pipeline::{self, PreprocessConfig};

/// A request queued for the model: resolves to its prediction.
pub struct PendingPrediction(oneshot::Receiver<Result<Prediction, ClassifyError>>);

impl Future for PendingPrediction {
    type Output = Result<Prediction, ClassifyError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|reply| reply.unwrap_or(Err(ClassifyError::Stopped)))
    }
}

/// The settings that shape the model's output, for its identity.
fn identity_settings(config: &ModelConfig, top_k: usize) -> String {
    let preprocess = serde_json::to_string(&config.preprocess).unwrap_or_default();
    let labels = config.labels.names().join("\n");
    format!("preprocess {preprocess}\ntop_k {top_k}\nlabels {labels}")
}

/// What the model's answers depend on besides the image: its file, hashed, and the settings
/// that shape its output.
fn model_identity(path: &std::path::Path, settings: &str) -> Result<ModelIdentity, EngineError> {
    let file = path.display().to_string();
    ModelIdentity::of_file(path, settings).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => EngineError::ModelMissing { file },
        _ => EngineError::InvalidModel { file, reason: format!("cannot be read: {err}") },
    })
}

/// A handle to one model on its own inference thread. Cheap to clone.
#[derive(Clone)]
pub struct Classifier {
    inner: Arc<Inner>,
}

struct Inner {
    requests: Sender<Request>,
    preprocess: PreprocessConfig,
    name: String,
    tier: Tier,
    decode_on: DecodeOn,
    /// Requests queued for or running on the inference thread, not yet answered.
    in_flight: InFlight,
    tensors: Arc<TensorPool>,
    /// Inference threads running, one per lane of the model.
    lanes: usize,
    /// The names of the classes it scores (checked against its output when it loaded).
    labels: Arc<Labels>,
    pool: Option<WorkPool>,
    /// The model as it answers: its file, preprocessing, labels and top-k (the cache's key).
    identity: ModelIdentity,
}

impl Classifier {
    /// Starts the inference thread, which loads the model; returns once it is ready (or failed).
    pub fn start(config: ModelConfig, batching: BatchConfig) -> Result<Self, EngineError> {
        // Multi-consumer: every lane waits on it, and each request wakes only one of them.
        let (requests, queue) = crossbeam_channel::bounded(batching.queue_capacity.max(1));
        let tier = batching.tier;
        // Registered so the series is in /metrics (at 0) before the first image.
        let _ = metrics::histogram!(crate::metrics::INFERENCE_WAIT, "tier" => tier.as_str());
        let decode_on = batching.decode_on;
        let pool = batching.pool.clone();
        let in_flight = InFlight::default();
        // Enough for a steady load's requests in flight; past that (an overload burst) tensors
        // are allocated and freed as before, so a burst does not leave memory held.
        let tensors = Arc::new(TensorPool::new(config.preprocess.tensor_len(), batching.queue_capacity.clamp(1, 16)));
        let name = config.name();
        let settings = identity_settings(&config, batching.top_k);
        let identity = model_identity(&config.path, &settings)?;
        let preprocess = config.preprocess.clone();
        let labels = Arc::clone(&config.labels);
        let setup = LaneSetup { config, batching, queue, in_flight: in_flight.clone(), tensors: Arc::clone(&tensors) };
        let path = setup.config.path.clone();
        let lanes = lane::start(setup)?;
        // Hashed before and after the load: a file replaced meanwhile would be cached under the
        // wrong identity, so it is refused instead.
        if model_identity(&path, &settings)? != identity {
            return Err(EngineError::InvalidModel {
                file: path.display().to_string(),
                reason: "the file changed on disk while it was being loaded".into(),
            });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                requests,
                preprocess,
                name,
                tier,
                decode_on,
                in_flight,
                tensors,
                lanes,
                labels,
                pool,
                identity,
            }),
        })
    }

    /// The model as it answers (see [`ModelIdentity`]): the key its answers are cached under.
    pub fn identity(&self) -> &ModelIdentity {
        &self.inner.identity
    }

    /// The model's file name.
    pub fn model_name(&self) -> &str {
        &self.inner.name
    }

    /// The input the model takes, as `[channels, height, width]` of an NCHW tensor.
    pub fn input_shape(&self) -> [usize; 3] {
        let side = self.inner.preprocess.crop as usize;
        [3, side, side]
    }

    /// Classes the model scores: the length of each row of probabilities.
    pub fn classes(&self) -> usize {
        self.inner.labels.len()
    }

    /// The names of the classes the model scores.
    pub fn labels(&self) -> &Labels {
        &self.inner.labels
    }

    /// Inference threads (lanes) serving this model.
    pub fn lanes(&self) -> usize {
        self.inner.lanes
    }

    /// Requests queued for or running on the inference thread, not yet answered.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.get()
    }

    /// Classifies an encoded image. Decoding runs where [`BatchConfig::decode_on`] says,
    /// inference on the model's own thread: the calling task only waits.
    pub async fn classify(&self, image: impl Into<Bytes>) -> Result<Prediction, ClassifyError> {
        self.admit(image.into()).await?.await
    }

    /// Decodes the image and queues it for the model. Resolves once the image is known to be
    /// good and is queued (a bad image or a full queue is refused here), to the prediction
    /// still to await: the caller can start other work while the model runs.
    pub async fn admit(&self, image: Bytes) -> Result<PendingPrediction, ClassifyError> {
        self.admit_holding(image, Box::new(())).await
    }

    /// [`Classifier::admit`], keeping `hold` until the decode has ended even if this future is
    /// dropped first. A decode that has not started when the future is dropped never starts.
    pub async fn admit_holding(&self, image: Bytes, hold: Hold) -> Result<PendingPrediction, ClassifyError> {
        self.admit_keeping(image, hold, false).await
    }

    /// [`Classifier::admit_holding`], with the whole row of probabilities in the prediction
    /// ([`Prediction::probabilities`]).
    pub async fn admit_for_probabilities(&self, image: Bytes, hold: Hold) -> Result<PendingPrediction, ClassifyError> {
        self.admit_keeping(image, hold, true).await
    }

    /// Queues an already preprocessed tensor (NCHW, [`Classifier::input_shape`], normalized as
    /// the model expects) for the model, with the whole row of probabilities in the prediction.
    /// A tensor of another length is refused.
    pub fn submit_tensor(&self, tensor: Vec<f32>) -> Result<PendingPrediction, ClassifyError> {
        let expected = self.inner.preprocess.tensor_len();
        if tensor.len() != expected {
            return Err(ClassifyError::TensorSize { got: tensor.len(), expected });
        }
        self.submit(Input::Tensor(tensor), true)
    }

    async fn admit_keeping(&self, image: Bytes, hold: Hold, keep: bool) -> Result<PendingPrediction, ClassifyError> {
        let on_inference_thread = match self.inner.decode_on {
            DecodeOn::BlockingPool => false,
            DecodeOn::InferenceThread => true,
            DecodeOn::InferenceThreadWhenIdle => self.inner.in_flight.get() == 0,
        };
        if !on_inference_thread {
            // A full inference queue is refused once decoded, before the caller commits to
            // anything else.
            let tensor = self.preprocess(image, hold).await?;
            return self.submit(Input::Tensor(tensor), keep);
        }
        let (decoded_tx, decoded) = oneshot::channel();
        let pending = self.submit(Input::Encoded { image, decoded: decoded_tx, hold }, keep)?;
        decoded.await.map_err(|_| ClassifyError::Stopped)??;
        Ok(pending)
    }

    /// Blocking form of [`Classifier::classify`] for command-line tools (not for async code).
    pub fn classify_blocking(&self, image: &[u8]) -> Result<Prediction, ClassifyError> {
        let tensor = pipeline::preprocess(image, &self.inner.preprocess)?;
        let (reply, answer) = oneshot::channel();
        let request = self.request(Input::Tensor(tensor), reply, false);
        // A refused request comes back inside the error and is uncounted as it drops.
        if self.inner.requests.send(request).is_err() {
            return Err(ClassifyError::Stopped);
        }
        answer.blocking_recv().map_err(|_| ClassifyError::Stopped)?
    }

    /// Decodes and preprocesses an image for this model off the async runtime (on the
    /// classifier's [`WorkPool`], or tokio's blocking pool without one), keeping `hold` until
    /// the decode has ended.
    async fn preprocess(&self, image: Bytes, hold: Hold) -> Result<Vec<f32>, ClassifyError> {
        let config = self.inner.preprocess.clone();
        let tier = self.inner.tier;
        let tensors = Arc::clone(&self.inner.tensors);
        let work = move || {
            let mut tensor = tensors.take();
            match decode::decode_into(&image, &config, tier, &mut tensor, hold) {
                Ok(()) => Ok(tensor),
                Err(err) => {
                    tensors.give(tensor);
                    Err(err)
                }
            }
        };
        let tensor = match &self.inner.pool {
            Some(pool) => pool.run(work).await.map_err(|_| ClassifyError::Stopped)??,
            None => tokio::task::spawn_blocking(work).await.map_err(|_| ClassifyError::Stopped)??,
        };
        Ok(tensor)
    }

    /// Queues an input for the inference thread without blocking, and returns the answer to
    /// await. A full inference queue is refused here.
    fn submit(&self, input: Input, keep_probabilities: bool) -> Result<PendingPrediction, ClassifyError> {
        let (reply, answer) = oneshot::channel();
        match self.inner.requests.try_send(self.request(input, reply, keep_probabilities)) {
            Ok(()) => Ok(PendingPrediction(answer)),
            // The refused request is inside the error: uncounted as it drops.
            Err(TrySendError::Full(_)) => Err(ClassifyError::Overloaded),
            Err(TrySendError::Disconnected(_)) => Err(ClassifyError::Stopped),
        }
    }

    /// A request for the lanes, counted in flight from now: before it is visible to a lane,
    /// which uncounts it once answered.
    fn request(&self, input: Input, reply: lane::Reply, keep_probabilities: bool) -> Request {
        Request { input, reply, queued_at: Instant::now(), counted: self.inner.in_flight.enter(), keep_probabilities }
    }
}
