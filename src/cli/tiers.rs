//! A tier's whole settings, built from the flags in one place.
//!
//! The flags name each setting once per tier (`--fast-crop`, `--accurate-crop`) or once for
//! both (`--mean`, `--intra-threads`); what a tier's model is run *for* decides the rest: the
//! fast tier answering `POST /predict` batches per lane at `--fast-nice` and decodes on its
//! inference thread when idle; the accurate tier refining jobs batches up to
//! `--accurate-max-batch` at `--accurate-priority` and decodes on its own thread, never beside
//! the foreground; `classify` and `eval` run one image at a time on one lane. [`settings`] (with
//! [`model`]) is the only place a [`ModelConfig`] and a [`BatchConfig`] are assembled; `serve`,
//! `worker`, `classify` and `eval` go through it, `bench --raw` through [`model`] (it times the
//! ONNX Runtime session alone, without a lane or batching).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use super::args::{FastTierArgs, ModelArgs, WorkerPoolArgs};
use crate::engine::{
    BatchConfig, Classifier, DecodeOn, EngineError, ModelConfig, Spin, ThreadPriority, Tier, WorkPool,
};
use crate::labels::Labels;
use crate::models::files;
use crate::pipeline::PreprocessConfig;
use crate::pipeline::budget;

/// Classes each served tier reports; `?top_k=` may ask for fewer.
pub const TOP_K: usize = 5;

/// What a command runs a tier's model for.
pub enum Run<'a> {
    /// `serve`'s fast tier, answering `POST /predict`: at most `max_inflight` requests wait for
    /// it, and `pool` decodes for it under load ([`decode_pool`]).
    Answer { fast: &'a FastTierArgs, max_inflight: usize, pool: WorkPool },
    /// The accurate tier, refining jobs: in `tandem worker`, or in `serve` on the embedded queue.
    Refine(&'a WorkerPoolArgs),
    /// `classify` and `eval`: one image at a time, on one lane, nothing batched.
    OneByOne { tier: Tier, top_k: usize },
}

impl Run<'_> {
    pub fn tier(&self) -> Tier {
        match self {
            Run::Answer { .. } => Tier::Fast,
            Run::Refine(_) => Tier::Accurate,
            Run::OneByOne { tier, .. } => *tier,
        }
    }
}

/// Everything [`Classifier::start`] takes.
#[derive(Debug, Clone)]
pub struct TierSettings {
    pub model: ModelConfig,
    pub batching: BatchConfig,
}

/// The tier's model and batching settings for `run`.
pub fn settings(models: &ModelArgs, labels: &Arc<Labels>, run: Run<'_>) -> TierSettings {
    let tier = run.tier();
    let mut model = model(models, labels, tier);
    let batching = match run {
        Run::Answer { fast, max_inflight, pool } => BatchConfig {
            max_batch: fast.max_batch.max(1),
            max_delay: Duration::from_millis(fast.max_batch_delay_ms),
            queue_capacity: max_inflight.max(1),
            top_k: TOP_K,
            tier,
            priority: fast_priority(fast),
            decode_on: DecodeOn::InferenceThreadWhenIdle,
            pool: Some(pool),
        },
        Run::Refine(pool) => BatchConfig {
            max_batch: pool.accurate_max_batch.max(1),
            max_delay: Duration::from_millis(pool.accurate_max_batch_delay_ms),
            queue_capacity: pool.concurrency.max(1),
            top_k: TOP_K,
            tier,
            priority: pool.accurate_priority.into(),
            decode_on: DecodeOn::InferenceThread,
            pool: None,
        },
        Run::OneByOne { top_k, .. } => {
            // One image at a time: a second lane would never be used.
            model.lanes = 1;
            BatchConfig { top_k, tier, ..BatchConfig::default() }
        }
    };
    TierSettings { model, batching }
}

/// Starts the tier's model on its own inference thread(s), with [`settings`].
pub fn start(models: &ModelArgs, labels: &Arc<Labels>, run: Run<'_>) -> Result<Classifier, EngineError> {
    let TierSettings { model, batching } = settings(models, labels, run);
    Classifier::start(model, batching)
}

/// The tier's model as `serve` runs it (lanes included). `bench --raw` times this one, varying
/// only the lanes and spinning it is told to.
pub fn model(models: &ModelArgs, labels: &Arc<Labels>, tier: Tier) -> ModelConfig {
    ModelConfig {
        path: model_path(models, tier),
        labels: Arc::clone(labels),
        preprocess: preprocess(models, tier),
        intra_threads: models.intra_threads(),
        spin: spin(models, tier),
        lanes: lanes(models, tier),
    }
}

/// How the tier's input is prepared.
pub fn preprocess(models: &ModelArgs, tier: Tier) -> PreprocessConfig {
    let (resize, crop) = match tier {
        Tier::Fast => (models.fast_resize, models.fast_crop),
        Tier::Accurate => (models.accurate_resize, models.accurate_crop),
    };
    // The fast tier answers a client: it never waits for decode memory. The accurate tier
    // works in the background and waits its turn rather than lose an attempt.
    let decode_priority = match tier {
        Tier::Fast => budget::Priority::Foreground,
        Tier::Accurate => budget::Priority::Background,
    };
    PreprocessConfig {
        resize,
        crop,
        mean: models.mean,
        std: models.std,
        max_pixels: models.max_pixels,
        decode_priority,
    }
}

/// Decoding and large-body parsing for `serve`, off the async runtime: one thread per core, at
/// the fast tier's priority, below the threads that accept requests and answer `/health`.
pub fn decode_pool(fast: &FastTierArgs) -> anyhow::Result<WorkPool> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    WorkPool::start("decode", cores, fast_priority(fast)).context("cannot start the decode threads")
}

/// Checks, before anything loads, that the files a command running `tiers` uses are there
/// (labels included); with `--pull-missing`, first downloads those of them that are missing and
/// named as in the default set. `labels_flag` is how the command names its class-names file in
/// hints (`--labels`, or `--class-labels` in `tandem eval`).
pub fn ensure_files(models: &ModelArgs, tiers: &[Tier], labels_flag: &'static str) -> anyhow::Result<()> {
    let model_files = tiers.iter().map(|&tier| (tier, model_path(models, tier)));
    let needed = files::needed(models.labels_path(), labels_flag, model_files);
    files::ensure(&needed, models.pull_missing.then_some(models.models_base_url.as_str()))
}

fn model_path(models: &ModelArgs, tier: Tier) -> PathBuf {
    match tier {
        Tier::Fast => models.resolve(&models.fast_model),
        Tier::Accurate => models.resolve(&models.accurate_model),
    }
}

/// `--fast-spin` for the fast tier; the accurate tier never spins.
fn spin(models: &ModelArgs, tier: Tier) -> Spin {
    match tier {
        Tier::Fast => models.fast_spin,
        Tier::Accurate => Spin::Off,
    }
}

/// `--fast-lanes` for the fast tier (0: one per intra-op thread, at most 4); one for the
/// accurate tier, whose batches are large enough to use every core.
fn lanes(models: &ModelArgs, tier: Tier) -> usize {
    match tier {
        Tier::Fast if models.fast_lanes > 0 => models.fast_lanes,
        Tier::Fast => models.intra_threads().min(4),
        Tier::Accurate => 1,
    }
}

fn fast_priority(fast: &FastTierArgs) -> ThreadPriority {
    ThreadPriority::Nice(fast.fast_nice)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::parse_serve;
    use crate::engine::Priority;

    /// The fast tier gets one lane per intra-op thread, at most 4, unless told; the accurate
    /// tier always one.
    #[test]
    fn fast_lanes_default_to_one_per_thread_up_to_four() {
        let lanes = |args: &[&str]| {
            let serve = parse_serve(args);
            (lanes(&serve.models, Tier::Fast), lanes(&serve.models, Tier::Accurate))
        };
        assert_eq!(lanes(&["--intra-threads", "2"]), (2, 1));
        assert_eq!(lanes(&["--intra-threads", "16"]), (4, 1));
        assert_eq!(lanes(&["--intra-threads", "16", "--fast-lanes", "8"]), (8, 1));
        assert_eq!(lanes(&["--intra-threads", "1"]), (1, 1));
        assert_eq!(parse_serve(&[]).fast.max_batch, 1);
    }

    /// Each use of a tier gets its batching, queue, priority and decoding from the flags.
    #[test]
    fn each_run_takes_its_tiers_flags() {
        let serve = parse_serve(&[
            "--intra-threads",
            "4",
            "--fast-max-batch",
            "3",
            "--fast-max-batch-delay",
            "2",
            "--fast-nice",
            "7",
            "--max-inflight",
            "9",
            "--concurrency",
            "6",
            "--accurate-max-batch",
            "5",
            "--accurate-max-batch-delay",
            "4",
            "--accurate-priority",
            "low",
            "--fast-crop",
            "200",
            "--accurate-resize",
            "320",
            "--model-dir",
            "/m",
            "--accurate-model",
            "/abs/big.onnx",
        ]);
        let labels = Arc::new(Labels::parse("a\nb\n"));
        let pool = WorkPool::start("test", 1, ThreadPriority::Nice(0)).expect("pool");
        let fast = settings(&serve.models, &labels, Run::Answer { fast: &serve.fast, max_inflight: 9, pool });
        assert_eq!(fast.model.path, PathBuf::from("/m/mobilenet_v2.onnx"));
        assert_eq!((fast.model.preprocess.crop, fast.model.lanes, fast.model.spin), (200, 4, Spin::Idle));
        assert_eq!(fast.model.preprocess.decode_priority, budget::Priority::Foreground);
        let b = &fast.batching;
        assert_eq!((b.max_batch, b.max_delay, b.queue_capacity, b.top_k), (3, Duration::from_millis(2), 9, TOP_K));
        assert_eq!(
            (b.tier, b.priority, b.decode_on),
            (Tier::Fast, ThreadPriority::Nice(7), DecodeOn::InferenceThreadWhenIdle)
        );
        assert!(b.pool.is_some());

        let accurate = settings(&serve.models, &labels, Run::Refine(&serve.workers));
        assert_eq!(accurate.model.path, PathBuf::from("/abs/big.onnx"));
        assert_eq!((accurate.model.preprocess.resize, accurate.model.lanes, accurate.model.spin), (320, 1, Spin::Off));
        assert_eq!(accurate.model.preprocess.decode_priority, budget::Priority::Background);
        let b = &accurate.batching;
        assert_eq!((b.max_batch, b.max_delay, b.queue_capacity), (5, Duration::from_millis(4), 6));
        assert_eq!(
            (b.tier, b.priority, b.decode_on),
            (Tier::Accurate, Priority::Low.into(), DecodeOn::InferenceThread)
        );
        assert!(b.pool.is_none());

        let one = settings(&serve.models, &labels, Run::OneByOne { tier: Tier::Fast, top_k: 3 });
        assert_eq!((one.model.lanes, one.batching.top_k, one.batching.max_batch), (1, 3, 1));
        assert_eq!(one.batching.decode_on, DecodeOn::BlockingPool);
    }
}
