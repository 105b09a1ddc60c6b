//! Inference engine: ONNX Runtime models on dedicated threads, with dynamic batching.
//!
//! A [`Classifier`] owns one OS thread per *lane* of its [`Model`] (one lane by default) and
//! runs every batch there, so CPU-bound inference never runs on the async runtime's worker
//! threads. Lanes take batches from one shared queue and run them side by side, each on its
//! share of the cores: a run on one thread needs no hand-off between threads inside the model,
//! so it loses nothing when request handling takes a core for a moment, where a run spread
//! over every core waits for the slowest of them at each operator. Where an image is
//! decoded is a [`DecodeOn`] choice: the fast tier decodes on tokio's blocking pool, in
//! parallel with the model, when the model is busy, and on its idle inference thread otherwise
//! (two thread hand-offs fewer for a lone request); a background tier always decodes on its
//! inference thread, at that thread's low priority.
//! Batching is Triton-style: take whatever is already waiting, up to `max_batch`, and wait at
//! most `max_delay` for more (0 by default: never hold a request back to fill a batch).

mod batching;
mod error;
mod model;
pub mod pool;
mod prediction;
pub mod priority;
pub mod runtime;
mod tensors;
mod tier;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use tokio::sync::oneshot;

pub use batching::{BatchConfig, DecodeOn};
pub use error::{ClassifyError, EngineError};
pub use model::{Model, ModelConfig, Spin};
pub use pool::WorkPool;
pub use prediction::{ClassScore, Prediction};
pub use priority::{Priority, ThreadPriority};
pub use runtime::RuntimeError;
pub use tier::Tier;

use crate::pipeline::{self, ImageError, PreprocessConfig};
use tensors::TensorPool;

/// Something the caller wants kept until its image's decode has ended, whatever becomes of
/// the caller: e.g. a request's in-flight permit, so that a request that timed out still
/// counts against the limit while its decode runs on.
pub type Hold = Box<dyn std::any::Any + Send>;

struct Request {
    input: Input,
    reply: oneshot::Sender<Result<Prediction, ClassifyError>>,
    /// When it was handed to the tier: the start of `tandem_inference_wait_seconds`.
    queued_at: Instant,
}

enum Input {
    /// Already preprocessed.
    Tensor(Vec<f32>),
    /// Encoded image, decoded by the inference thread itself. `decoded` hears the decoding's
    /// outcome before the model runs; on failure the reply is dropped. `hold` is dropped once
    /// the decode has ended; if `decoded` is closed before it starts, it never starts.
    Encoded { image: Bytes, decoded: oneshot::Sender<Result<(), ImageError>>, hold: Hold },
}

/// A request queued for the model: resolves to its prediction.
pub struct PendingPrediction(oneshot::Receiver<Result<Prediction, ClassifyError>>);

impl Future for PendingPrediction {
    type Output = Result<Prediction, ClassifyError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|reply| reply.unwrap_or(Err(ClassifyError::Stopped)))
    }
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
    in_flight: Arc<AtomicUsize>,
    tensors: Arc<TensorPool>,
    /// Inference threads running, one per lane of the model.
    lanes: usize,
    pool: Option<WorkPool>,
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
        let in_flight = Arc::new(AtomicUsize::new(0));
        let thread_in_flight = Arc::clone(&in_flight);
        // Enough for a steady load's requests in flight; past that (an overload burst) tensors
        // are allocated and freed as before, so a burst does not leave memory held.
        let tensors = Arc::new(TensorPool::new(config.preprocess.tensor_len(), batching.queue_capacity.clamp(1, 16)));
        let thread_tensors = Arc::clone(&tensors);
        let (ready_tx, ready_rx) = mpsc::channel();
        let name = config.name();
        let preprocess = config.preprocess.clone();
        let thread_name = format!("infer-{name}");
        std::thread::Builder::new()
            .name(thread_name.clone())
            .spawn(move || {
                // The model is created on this thread so ORT's own threads inherit its priority.
                if let Err(err) = priority::apply_to_current_thread(batching.priority) {
                    tracing::warn!(error = %err, priority = ?batching.priority, "cannot lower inference priority");
                }
                let loaded = Model::load(&config).and_then(|first| Ok((first.more_lanes(&config)?, first)));
                let (lanes, first) = match loaded {
                    Ok(loaded) => loaded,
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                        return;
                    }
                };
                // Lanes share one queue: whichever is free takes the next batch.
                let mut started = 1;
                for (i, lane) in lanes.into_iter().enumerate() {
                    let (config, batching, queue) = (config.clone(), batching.clone(), queue.clone());
                    let (in_flight, tensors) = (Arc::clone(&thread_in_flight), Arc::clone(&thread_tensors));
                    // Threads inherit this one's priority; each lowers itself too, to be explicit.
                    let spawned =
                        std::thread::Builder::new().name(format!("{thread_name}-{}", i + 1)).spawn(move || {
                            let _ = priority::apply_to_current_thread(batching.priority);
                            inference_loop(lane, &config, &batching, &queue, &in_flight, &tensors);
                        });
                    match spawned {
                        Ok(_) => started += 1,
                        Err(err) => tracing::warn!(error = %err, "cannot start an inference lane; running with fewer"),
                    }
                }
                let _ = ready_tx.send(Ok(started));
                inference_loop(first, &config, &batching, &queue, &thread_in_flight, &thread_tensors);
            })
            .map_err(|e| EngineError::Inference(format!("cannot spawn inference thread: {e}")))?;
        let lanes = ready_rx
            .recv()
            .map_err(|_| EngineError::Inference("the inference thread died while loading the model".into()))??;
        Ok(Self {
            inner: Arc::new(Inner { requests, preprocess, name, tier, decode_on, in_flight, tensors, lanes, pool }),
        })
    }

    /// The model's file name.
    pub fn model_name(&self) -> &str {
        &self.inner.name
    }

    /// Inference threads (lanes) serving this model.
    pub fn lanes(&self) -> usize {
        self.inner.lanes
    }

    /// Requests queued for or running on the inference thread, not yet answered.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Acquire)
    }

    pub fn preprocess_config(&self) -> &PreprocessConfig {
        &self.inner.preprocess
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
        let on_inference_thread = match self.inner.decode_on {
            DecodeOn::BlockingPool => false,
            DecodeOn::InferenceThread => true,
            DecodeOn::InferenceThreadWhenIdle => self.inner.in_flight.load(Ordering::Acquire) == 0,
        };
        if !on_inference_thread {
            let tensor = self.preprocess_holding(image, hold).await?;
            return self.infer(tensor);
        }
        let (decoded_tx, decoded) = oneshot::channel();
        let pending = self.submit(Input::Encoded { image, decoded: decoded_tx, hold })?;
        decoded.await.map_err(|_| ClassifyError::Stopped)??;
        Ok(pending)
    }

    /// Decodes and preprocesses an image for this model, off the async runtime: on the
    /// classifier's [`WorkPool`], or tokio's blocking pool without one.
    pub async fn preprocess(&self, image: impl AsRef<[u8]> + Send + 'static) -> Result<Vec<f32>, ClassifyError> {
        self.preprocess_holding(image, Box::new(())).await
    }

    async fn preprocess_holding(
        &self,
        image: impl AsRef<[u8]> + Send + 'static,
        hold: Hold,
    ) -> Result<Vec<f32>, ClassifyError> {
        let config = self.inner.preprocess.clone();
        let tier = self.inner.tier;
        let tensors = Arc::clone(&self.inner.tensors);
        let work = move || {
            let started = Instant::now();
            let mut tensor = tensors.take();
            let outcome = pipeline::preprocess_into(image.as_ref(), &config, &mut tensor);
            drop(hold);
            metrics::histogram!(crate::metrics::PREPROCESS_DURATION, "tier" => tier.as_str())
                .record(started.elapsed().as_secs_f64());
            match outcome {
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

    /// Queues a preprocessed tensor for the inference thread now, without blocking, and returns
    /// the answer to await. A full inference queue is refused here, before the caller commits to
    /// anything else.
    pub fn infer(&self, tensor: Vec<f32>) -> Result<PendingPrediction, ClassifyError> {
        self.submit(Input::Tensor(tensor))
    }

    /// Blocking form of [`Classifier::classify`] for command-line tools (not for async code).
    pub fn classify_blocking(&self, image: &[u8]) -> Result<Prediction, ClassifyError> {
        let tensor = pipeline::preprocess(image, &self.inner.preprocess)?;
        let (reply, answer) = oneshot::channel();
        self.inner.in_flight.fetch_add(1, Ordering::AcqRel);
        let request = Request { input: Input::Tensor(tensor), reply, queued_at: Instant::now() };
        if self.inner.requests.send(request).is_err() {
            self.inner.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(ClassifyError::Stopped);
        }
        answer.blocking_recv().map_err(|_| ClassifyError::Stopped)?
    }

    /// Queues an input for the inference thread without blocking.
    fn submit(&self, input: Input) -> Result<PendingPrediction, ClassifyError> {
        let (reply, answer) = oneshot::channel();
        // Counted before it is visible to the thread, which uncounts it once answered.
        self.inner.in_flight.fetch_add(1, Ordering::AcqRel);
        match self.inner.requests.try_send(Request { input, reply, queued_at: Instant::now() }) {
            Ok(()) => Ok(PendingPrediction(answer)),
            Err(err) => {
                self.inner.in_flight.fetch_sub(1, Ordering::AcqRel);
                Err(match err {
                    TrySendError::Full(_) => ClassifyError::Overloaded,
                    TrySendError::Disconnected(_) => ClassifyError::Stopped,
                })
            }
        }
    }
}

/// One lane: runs until every [`Classifier`] handle is dropped.
fn inference_loop(
    mut model: Model,
    config: &ModelConfig,
    batching: &BatchConfig,
    queue: &Receiver<Request>,
    in_flight: &AtomicUsize,
    tensors: &TensorPool,
) {
    let name = config.name();
    let tensor_len = config.preprocess.tensor_len();
    let max_batch = batching.max_batch.max(1);
    let mut batch: Vec<Request> = Vec::with_capacity(max_batch);
    let mut replies: Vec<oneshot::Sender<Result<Prediction, ClassifyError>>> = Vec::with_capacity(max_batch);
    let mut buffer: Vec<f32> = Vec::with_capacity(max_batch * tensor_len);
    let mut queued_at: Vec<Instant> = Vec::with_capacity(max_batch);
    let waits = metrics::histogram!(crate::metrics::INFERENCE_WAIT, "tier" => batching.tier.as_str());
    while let Ok(first) = queue.recv() {
        batch.push(first);
        collect_batch(queue, &mut batch, max_batch, batching.max_delay);

        // Nothing queued behind this batch: it has the machine to itself.
        let alone = in_flight.load(Ordering::Acquire) == batch.len();
        buffer.clear();
        // A batch of one tensor runs straight from it, without a copy into `buffer`.
        let mut single: Option<Vec<f32>> = None;
        let lone = batch.len() == 1;
        for request in batch.drain(..) {
            match request.input {
                Input::Tensor(tensor) if lone => single = Some(tensor),
                Input::Tensor(tensor) => {
                    buffer.extend_from_slice(&tensor);
                    tensors.give(tensor);
                }
                Input::Encoded { image, decoded, hold } => {
                    // Its caller gave up (a timed-out request) before the decode began.
                    if decoded.is_closed() {
                        in_flight.fetch_sub(1, Ordering::AcqRel);
                        continue;
                    }
                    let at = buffer.len();
                    buffer.resize(at + tensor_len, 0.0);
                    let decode_started = Instant::now();
                    let outcome = pipeline::preprocess_into(&image, &config.preprocess, &mut buffer[at..]);
                    drop(hold);
                    metrics::histogram!(crate::metrics::PREPROCESS_DURATION, "tier" => batching.tier.as_str())
                        .record(decode_started.elapsed().as_secs_f64());
                    if let Err(err) = outcome {
                        buffer.truncate(at);
                        in_flight.fetch_sub(1, Ordering::AcqRel);
                        let _ = decoded.send(Err(err));
                        continue;
                    }
                    let _ = decoded.send(Ok(()));
                }
            }
            replies.push(request.reply);
            queued_at.push(request.queued_at);
        }
        if replies.is_empty() {
            continue;
        }
        let input: &[f32] = single.as_deref().unwrap_or(&buffer);
        let started = Instant::now();
        // How long each image waited for this run: a starved tier shows here first.
        for at in queued_at.drain(..) {
            waits.record(started.saturating_duration_since(at).as_secs_f64());
        }
        // A panic inside one batch fails that batch's requests, not the thread that serves
        // every later one.
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.infer(input, replies.len(), alone)))
                .unwrap_or_else(|_| Err(EngineError::Inference("the model panicked on this batch".into())));
        if let Some(tensor) = single {
            tensors.give(tensor);
        }
        let elapsed = started.elapsed();
        let inference_ms = elapsed.as_secs_f64() * 1e3;
        metrics::histogram!(crate::metrics::INFERENCE_DURATION, "tier" => batching.tier.as_str(), "model" => name.clone())
            .record(elapsed.as_secs_f64());
        metrics::histogram!(crate::metrics::BATCH_SIZE, "tier" => batching.tier.as_str()).record(replies.len() as f64);
        // Uncounted before the replies go out, so that a caller who has its answer never sees
        // its own request still in flight.
        in_flight.fetch_sub(replies.len(), Ordering::AcqRel);
        match result {
            Ok(rows) => {
                for (reply, row) in replies.drain(..).zip(rows) {
                    let prediction =
                        Prediction::from_probabilities(&name, &config.labels, &row, batching.top_k, inference_ms);
                    let _ = reply.send(Ok(prediction));
                }
            }
            Err(err) => {
                for reply in replies.drain(..) {
                    let _ = reply.send(Err(err.clone().into()));
                }
            }
        }
    }
}

/// Adds to `batch` what is already waiting, waiting up to `max_delay` for more.
fn collect_batch(queue: &Receiver<Request>, batch: &mut Vec<Request>, max_batch: usize, max_delay: Duration) {
    let deadline = Instant::now() + max_delay;
    while batch.len() < max_batch {
        match queue.try_recv() {
            Ok(request) => batch.push(request),
            Err(TryRecvError::Disconnected) => return,
            Err(TryRecvError::Empty) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return;
                }
                match queue.recv_timeout(left) {
                    Ok(request) => batch.push(request),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return,
                }
            }
        }
    }
}
