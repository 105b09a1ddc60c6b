//! A model's lanes: the inference threads and the loop each of them runs.
//!
//! [`start`] spawns the first inference thread, which loads the model (so that ONNX Runtime's
//! own threads inherit its priority), starts the model's other lanes on threads of their own,
//! reports how many are running and then serves as a lane itself. Every lane takes batches
//! from the one shared queue, so whichever is free takes the next one, and runs until every
//! [`super::Classifier`] handle (which holds the queue's sending end) is dropped.
//!
//! One turn of [`Lane::run`]: collect a batch ([`collect_batch`]), decode the images that came
//! encoded ([`Lane::decode`]), run the model and time it ([`Lane::infer`]), reply
//! ([`Lane::reply`]).

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use tokio::sync::oneshot;

use super::decode::{self, Hold};
use super::inflight::{InFlight, InFlightGuard};
use super::priority;
use super::tensors::TensorPool;
use super::{BatchConfig, ClassifyError, EngineError, Model, ModelConfig, Prediction};
use crate::pipeline::ImageError;

/// Where a request's answer goes.
pub(super) type Reply = oneshot::Sender<Result<Prediction, ClassifyError>>;

/// One image queued for a model.
pub(super) struct Request {
    pub(super) input: Input,
    pub(super) reply: Reply,
    /// When it was handed to the tier: the start of `tandem_inference_wait_seconds`.
    pub(super) queued_at: Instant,
    /// Counts it in flight until it is answered (or dropped unanswered).
    pub(super) counted: InFlightGuard,
    /// The answer keeps the whole row of probabilities ([`Prediction::probabilities`]).
    pub(super) keep_probabilities: bool,
}

pub(super) enum Input {
    /// Already preprocessed.
    Tensor(Vec<f32>),
    /// Encoded image, decoded by the inference thread itself. `decoded` hears the decoding's
    /// outcome before the model runs; on failure the reply is dropped. `hold` is dropped once
    /// the decode has ended; if `decoded` is closed before it starts, it never starts.
    Encoded { image: Bytes, decoded: oneshot::Sender<Result<(), ImageError>>, hold: Hold },
}

/// What every lane of one model shares.
#[derive(Clone)]
pub(super) struct LaneSetup {
    pub(super) config: ModelConfig,
    pub(super) batching: BatchConfig,
    pub(super) queue: Receiver<Request>,
    pub(super) in_flight: InFlight,
    pub(super) tensors: Arc<TensorPool>,
}

/// Starts the model's inference threads; returns once the model is loaded and its lanes are
/// running, with how many there are, or why it could not load.
pub(super) fn start(setup: LaneSetup) -> Result<usize, EngineError> {
    let thread_name = format!("infer-{}", setup.config.name());
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::Builder::new()
        .name(thread_name.clone())
        .spawn(move || first_lane(setup, &thread_name, &ready_tx))
        .map_err(|e| EngineError::Inference(format!("cannot spawn inference thread: {e}")))?;
    ready_rx.recv().map_err(|_| EngineError::Inference("the inference thread died while loading the model".into()))?
}

/// The first inference thread: loads the model and its other lanes, starts those, says how
/// many lanes run on `ready`, then serves as the first lane.
fn first_lane(setup: LaneSetup, thread_name: &str, ready: &mpsc::Sender<Result<usize, EngineError>>) {
    // The model is created on this thread so ORT's own threads inherit its priority.
    if let Err(err) = priority::apply_to_current_thread(setup.batching.priority) {
        tracing::warn!(error = %err, priority = ?setup.batching.priority, "cannot lower inference priority");
    }
    let loaded = Model::load(&setup.config).and_then(|first| Ok((first.more_lanes(&setup.config)?, first)));
    let (more, first) = match loaded {
        Ok(loaded) => loaded,
        Err(err) => {
            let _ = ready.send(Err(err));
            return;
        }
    };
    let mut started = 1;
    for (i, model) in more.into_iter().enumerate() {
        if spawn_lane(model, setup.clone(), format!("{thread_name}-{}", i + 1)) {
            started += 1;
        }
    }
    let _ = ready.send(Ok(started));
    Lane::new(first, setup).run();
}

/// Runs `model` as one more lane on a thread of its own; false if that thread cannot start
/// (the model then runs with fewer lanes).
fn spawn_lane(model: Model, setup: LaneSetup, thread_name: String) -> bool {
    let spawned = std::thread::Builder::new().name(thread_name).spawn(move || {
        // Threads inherit the first one's priority; each lowers itself too, to be explicit.
        let _ = priority::apply_to_current_thread(setup.batching.priority);
        Lane::new(model, setup).run();
    });
    match spawned {
        Ok(_) => true,
        Err(err) => {
            tracing::warn!(error = %err, "cannot start an inference lane; running with fewer");
            false
        }
    }
}

/// One lane: a model session and the loop that feeds it.
struct Lane {
    model: Model,
    setup: LaneSetup,
    /// The model's name, in every prediction and in `tandem_inference_duration_seconds`.
    name: String,
    tensor_len: usize,
    max_batch: usize,
    /// `tandem_inference_wait_seconds`: how long each image waited for its run.
    waits: metrics::Histogram,
}

/// The batch being assembled and run; its buffers are reused from batch to batch.
struct Batch {
    requests: Vec<Request>,
    /// The batch's images laid end to end, as the model takes them.
    input: Vec<f32>,
    /// A batch of one tensor runs straight from it, without a copy into `input`.
    single: Option<Vec<f32>>,
    /// Of the requests that will be run (their decode, if any, succeeded), in input order.
    replies: Vec<Reply>,
    /// Whether each of `replies` keeps its row of probabilities.
    keep: Vec<bool>,
    queued_at: Vec<Instant>,
    counted: Vec<InFlightGuard>,
}

impl Lane {
    fn new(model: Model, setup: LaneSetup) -> Self {
        let name = setup.config.name();
        let tensor_len = setup.config.preprocess.tensor_len();
        let max_batch = setup.batching.max_batch.max(1);
        let waits = metrics::histogram!(crate::metrics::INFERENCE_WAIT, "tier" => setup.batching.tier.as_str());
        Self { model, setup, name, tensor_len, max_batch, waits }
    }

    /// Runs until every [`super::Classifier`] handle is dropped.
    fn run(mut self) {
        let max_batch = self.max_batch;
        let mut batch = Batch {
            requests: Vec::with_capacity(max_batch),
            input: Vec::with_capacity(max_batch * self.tensor_len),
            single: None,
            replies: Vec::with_capacity(max_batch),
            keep: Vec::with_capacity(max_batch),
            queued_at: Vec::with_capacity(max_batch),
            counted: Vec::with_capacity(max_batch),
        };
        while let Ok(first) = self.setup.queue.recv() {
            batch.requests.push(first);
            collect_batch(&self.setup.queue, &mut batch.requests, max_batch, self.setup.batching.max_delay);
            // Nothing queued behind this batch: it has the machine to itself.
            let alone = self.setup.in_flight.get() == batch.requests.len();
            self.decode(&mut batch);
            if batch.replies.is_empty() {
                continue;
            }
            let (result, elapsed) = self.infer(&mut batch, alone);
            self.reply(&mut batch, result, elapsed);
        }
    }

    /// Lays the batch's images end to end in `batch.input`, decoding those that came encoded;
    /// a request whose decode is skipped or fails leaves the batch (and is uncounted) here.
    fn decode(&self, batch: &mut Batch) {
        let (config, tensors) = (&self.setup.config, &self.setup.tensors);
        batch.input.clear();
        let lone = batch.requests.len() == 1;
        for Request { input, reply, queued_at, counted, keep_probabilities } in batch.requests.drain(..) {
            match input {
                // Its caller gave up (a timed-out request) before its run: not run at all.
                Input::Tensor(tensor) if reply.is_closed() => {
                    tensors.give(tensor);
                    continue;
                }
                Input::Tensor(tensor) if lone => batch.single = Some(tensor),
                Input::Tensor(tensor) => {
                    batch.input.extend_from_slice(&tensor);
                    tensors.give(tensor);
                }
                Input::Encoded { image, decoded, hold } => {
                    // Its caller gave up (a timed-out request) before the decode began: dropped
                    // with its hold and its count, never decoded.
                    if decoded.is_closed() {
                        continue;
                    }
                    let at = batch.input.len();
                    batch.input.resize(at + self.tensor_len, 0.0);
                    let tier = self.setup.batching.tier;
                    let outcome = decode::decode_into(&image, &config.preprocess, tier, &mut batch.input[at..], hold);
                    if let Err(err) = outcome {
                        batch.input.truncate(at);
                        // Uncounted before its caller hears of the failure.
                        drop(counted);
                        let _ = decoded.send(Err(err));
                        continue;
                    }
                    let _ = decoded.send(Ok(()));
                }
            }
            batch.replies.push(reply);
            batch.keep.push(keep_probabilities);
            batch.queued_at.push(queued_at);
            batch.counted.push(counted);
        }
    }

    /// Runs the batch on the model: its rows of class probabilities, and the run's wall time.
    fn infer(&mut self, batch: &mut Batch, alone: bool) -> (Result<Vec<Vec<f32>>, EngineError>, Duration) {
        let started = Instant::now();
        // How long each image waited for this run: a starved tier shows here first.
        for at in batch.queued_at.drain(..) {
            self.waits.record(started.saturating_duration_since(at).as_secs_f64());
        }
        let input: &[f32] = batch.single.as_deref().unwrap_or(&batch.input);
        let n = batch.replies.len();
        let model = &mut self.model;
        // A panic inside one batch fails that batch's requests, not the thread that serves
        // every later one.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.infer(input, n, alone)))
            .unwrap_or_else(|_| Err(EngineError::Inference("the model panicked on this batch".into())));
        if let Some(tensor) = batch.single.take() {
            self.setup.tensors.give(tensor);
        }
        (result, started.elapsed())
    }

    /// Records the run and answers every request of the batch.
    fn reply(&self, batch: &mut Batch, result: Result<Vec<Vec<f32>>, EngineError>, elapsed: Duration) {
        let batching = &self.setup.batching;
        let inference_ms = elapsed.as_secs_f64() * 1e3;
        metrics::histogram!(crate::metrics::INFERENCE_DURATION, "tier" => batching.tier.as_str(), "model" => self.name.clone())
            .record(elapsed.as_secs_f64());
        metrics::histogram!(crate::metrics::BATCH_SIZE, "tier" => batching.tier.as_str())
            .record(batch.replies.len() as f64);
        // Uncounted before the replies go out, so that a caller who has its answer never sees
        // its own request still in flight.
        batch.counted.clear();
        match result {
            Ok(rows) => {
                let labels = &self.setup.config.labels;
                for ((reply, row), keep) in batch.replies.drain(..).zip(rows).zip(batch.keep.drain(..)) {
                    let mut prediction =
                        Prediction::from_probabilities(&self.name, labels, &row, batching.top_k, inference_ms);
                    if keep {
                        prediction.probabilities = Some(row);
                    }
                    let _ = reply.send(Ok(prediction));
                }
            }
            Err(err) => {
                batch.keep.clear();
                for reply in batch.replies.drain(..) {
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
