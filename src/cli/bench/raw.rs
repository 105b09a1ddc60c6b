//! Raw mode: ONNX Runtime alone, in this process, on the same image the HTTP modes send.
//!
//! The image is preprocessed once (that time is reported separately); then, for each number of
//! lanes and each batch size, the tensor is repeated into a batch and `Model::infer` runs back
//! to back on every lane at once, one thread per lane: warm-up, then `--duration` seconds or
//! `--iterations` runs per lane, whichever ends first. The model is loaded with `Model::load`
//! (and `Model::more_lanes`), with the tier's `serve` settings (`cli::tiers::model`: intra-op
//! threads, spinning, lanes), so
//! nothing but ORT and the softmax on its output is timed. One lane runs as a lone `serve`
//! request does (every thread, spinning per the setting); several run as `serve` does under load.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use super::stats::{Latency, Summary, cell, round3};
use super::{BenchArgs, print_report};
use crate::cli::tiers;
use crate::engine::{Model, Spin};
use crate::labels::Labels;
use crate::pipeline;

/// Model runs before timing starts, whatever `--warmup` says.
const MIN_WARMUP_RUNS: u32 = 2;
/// Preprocessing is timed for at most this long, and this many runs.
const PREPROCESS_TIME: Duration = Duration::from_secs(2);
const PREPROCESS_RUNS: u32 = 200;

pub fn run(args: &BenchArgs, image: &[u8]) -> anyhow::Result<bool> {
    let models = &args.models;
    let tier = args.tier;
    let preprocess = tiers::preprocess(models, tier);

    let tensor = pipeline::preprocess(image, &preprocess)
        .with_context(|| format!("cannot preprocess {}", args.image.display()))?;
    let mut preprocess_latency = Latency::new();
    let pre_started = Instant::now();
    let pre_budget = PREPROCESS_TIME.min(Duration::from_secs_f64(args.duration));
    for _ in 0..PREPROCESS_RUNS {
        let t = Instant::now();
        let out = pipeline::preprocess(image, &preprocess)?;
        preprocess_latency.record(t.elapsed());
        std::hint::black_box(out);
        if pre_started.elapsed() >= pre_budget {
            break;
        }
    }

    tiers::ensure_files(models, &[tier], "--labels")?;
    let labels = Arc::new(Labels::load(&models.labels_path())?);
    let mut config = tiers::model(models, &labels, tier);
    let serve_lanes = config.lanes;
    config.spin = args.spinning.unwrap_or(config.spin);
    let lane_counts: Vec<usize> = if args.lanes.is_empty() {
        let mut counts = vec![1];
        counts.extend((serve_lanes > 1).then_some(serve_lanes));
        counts
    } else {
        args.lanes.iter().map(|&n| n as usize).collect()
    };
    let mut load_ms = None;
    let mut batches = Vec::with_capacity(args.batch.len() * lane_counts.len());
    for &lanes in &lane_counts {
        config.lanes = lanes;
        let load_started = Instant::now();
        let first = Model::load(&config)?;
        load_ms.get_or_insert(load_started.elapsed().as_secs_f64() * 1e3);
        let mut models = first.more_lanes(&config)?;
        models.insert(0, first);
        for &size in &args.batch {
            batches.push(time_batches(&mut models, &tensor, size, args)?);
        }
    }
    let best = batches.iter().max_by(|a, b| a.images_per_s.total_cmp(&b.images_per_s)).map(|b| Best {
        lanes: b.lanes,
        batch: b.batch,
        images_per_s: b.images_per_s,
    });

    let report = Report {
        mode: "raw",
        tier: tier.as_str(),
        model: config.name(),
        image: args.image.display().to_string(),
        image_bytes: image.len(),
        crop: preprocess.crop,
        intra_threads: config.intra_threads,
        spinning: config.spin,
        load_ms: round3(load_ms.unwrap_or_default()),
        warmup_s: args.warmup,
        duration_s: args.duration,
        preprocess: preprocess_latency.summary(),
        batches,
        best,
    };
    print_report(args.json, &report, || report.text())?;
    Ok(true)
}

/// Runs batches of `size` on every lane at once for the configured time, and sums them.
fn time_batches(models: &mut [Model], tensor: &[f32], size: u32, args: &BenchArgs) -> anyhow::Result<BatchReport> {
    let n = size as usize;
    let batch: Vec<f32> = tensor.repeat(n);
    let lanes = models.len();
    // One lane is a lone request (the whole-machine session, if the model has one); several
    // are the lane sessions, as under load.
    let alone = lanes == 1;
    let warmup = Duration::from_secs_f64(args.warmup);
    let duration = Duration::from_secs_f64(args.duration);
    let ready = std::sync::Barrier::new(lanes);
    let per_lane: Vec<anyhow::Result<(Latency, u64, Duration)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = models
            .iter_mut()
            .map(|model| {
                let (batch, ready) = (&batch, &ready);
                scope.spawn(move || -> anyhow::Result<(Latency, u64, Duration)> {
                    let warm_started = Instant::now();
                    let mut warm_runs = 0;
                    while warm_runs < MIN_WARMUP_RUNS || warm_started.elapsed() < warmup {
                        std::hint::black_box(model.infer(batch, n, alone)?);
                        warm_runs += 1;
                    }
                    ready.wait();
                    let mut latency = Latency::new();
                    let started = Instant::now();
                    let mut runs: u64 = 0;
                    loop {
                        let t = Instant::now();
                        std::hint::black_box(model.infer(batch, n, alone).with_context(|| format!("batch of {n}"))?);
                        latency.record(t.elapsed());
                        runs += 1;
                        if started.elapsed() >= duration || args.iterations.is_some_and(|max| runs >= max) {
                            break;
                        }
                    }
                    Ok((latency, runs, started.elapsed()))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a timing thread panicked"))))
            .collect()
    });
    let mut latency = Latency::new();
    let (mut runs, mut images_per_s) = (0u64, 0.0);
    for lane in per_lane {
        let (lane_latency, lane_runs, elapsed) = lane?;
        latency.merge(&lane_latency);
        runs += lane_runs;
        images_per_s += lane_runs as f64 * n as f64 / elapsed.as_secs_f64().max(1e-9);
    }
    let summary = latency.summary();
    Ok(BatchReport {
        lanes,
        batch: size,
        runs,
        images_per_s: round3(images_per_s),
        p50_ms: summary.as_ref().map_or(0.0, |s| s.p50_ms),
        p50_ms_per_image: summary.as_ref().map_or(0.0, |s| round3(s.p50_ms / n as f64)),
        latency: summary,
    })
}

#[derive(Debug, Serialize)]
struct Report {
    mode: &'static str,
    tier: &'static str,
    model: String,
    image: String,
    image_bytes: usize,
    crop: u32,
    intra_threads: usize,
    spinning: Spin,
    /// `Model::load`, including its one warm-up run.
    load_ms: f64,
    warmup_s: f64,
    /// Per batch size.
    duration_s: f64,
    /// `pipeline::preprocess` of the image (decode, resize, crop, normalize), not in `batches`.
    preprocess: Option<Summary>,
    batches: Vec<BatchReport>,
    /// The lanes and batch size with the most images per second.
    best: Option<Best>,
}

#[derive(Debug, Serialize)]
struct BatchReport {
    /// Sessions running side by side (their images/s summed).
    lanes: usize,
    batch: u32,
    /// `Model::infer` calls timed, all lanes together.
    runs: u64,
    /// Images per second of wall time over the timed runs.
    images_per_s: f64,
    /// Median of one `Model::infer` call (the whole batch, on one lane).
    p50_ms: f64,
    p50_ms_per_image: f64,
    latency: Option<Summary>,
}

#[derive(Debug, Serialize)]
struct Best {
    lanes: usize,
    batch: u32,
    images_per_s: f64,
}

impl Report {
    fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "ONNX Runtime alone: {} ({} tier), {} intra-op threads, spinning {}, loaded in {:.0} ms",
            self.model,
            self.tier,
            self.intra_threads,
            self.spinning.as_str(),
            self.load_ms
        );
        let pre = self.preprocess.as_ref();
        let _ = writeln!(
            out,
            "{} ({} bytes): preprocess to {c}x{c} p50 {} ms, p99 {} ms (not included below)\n",
            self.image,
            self.image_bytes,
            cell(pre.map(|s| s.p50_ms)),
            cell(pre.map(|s| s.p99_ms)),
            c = self.crop
        );
        let _ = writeln!(
            out,
            "{:>5} {:>5} {:>7} {:>8} {:>8} {:>8} {:>10} {:>9}",
            "lanes", "batch", "runs", "p50 ms", "p90 ms", "p99 ms", "ms/image", "images/s"
        );
        for b in &self.batches {
            let l = b.latency.as_ref();
            let _ = writeln!(
                out,
                "{:>5} {:>5} {:>7} {:>8} {:>8} {:>8} {:>10} {:>9.1}",
                b.lanes,
                b.batch,
                b.runs,
                cell(l.map(|s| s.p50_ms)),
                cell(l.map(|s| s.p90_ms)),
                cell(l.map(|s| s.p99_ms)),
                cell(Some(b.p50_ms_per_image)),
                b.images_per_s
            );
        }
        if let Some(best) = &self.best {
            let _ = writeln!(
                out,
                "\nbest: {} lane(s), batch {} at {:.1} images/s",
                best.lanes, best.batch, best.images_per_s
            );
        }
        out
    }
}
