//! Raw mode: ONNX Runtime alone, in this process, on the same image the HTTP modes send.
//!
//! The image is preprocessed once (that time is reported separately); then, for each batch
//! size, the tensor is repeated into a batch and `Model::infer` runs back to back: warm-up,
//! then `--duration` seconds or `--iterations` runs, whichever ends first. The model is loaded
//! with `Model::load` on this thread, with the tier's `serve` settings (intra-op threads,
//! spinning), so nothing but ORT and the softmax on its output is timed.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Serialize;

use super::stats::{Latency, Summary, cell, round3};
use super::{BenchArgs, print_report};
use crate::engine::{Model, ModelConfig, Spin};
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
    let preprocess = models.preprocess(tier);

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

    let labels = Arc::new(Labels::load(&models.labels_path())?);
    let spin = args.spinning.unwrap_or_else(|| models.spin(tier));
    let config = ModelConfig {
        path: models.model_path(tier),
        labels,
        preprocess: preprocess.clone(),
        intra_threads: models.intra_threads(),
        spin,
    };
    let load_started = Instant::now();
    let mut model = Model::load(&config)?;
    let load_ms = load_started.elapsed().as_secs_f64() * 1e3;

    let warmup = Duration::from_secs_f64(args.warmup);
    let duration = Duration::from_secs_f64(args.duration);
    let mut batches = Vec::with_capacity(args.batch.len());
    for &size in &args.batch {
        let n = size as usize;
        let batch: Vec<f32> = tensor.repeat(n);
        let warm_started = Instant::now();
        let mut warm_runs = 0;
        while warm_runs < MIN_WARMUP_RUNS || warm_started.elapsed() < warmup {
            std::hint::black_box(model.infer(&batch, n, true)?);
            warm_runs += 1;
        }
        let mut latency = Latency::new();
        let started = Instant::now();
        let mut runs: u64 = 0;
        loop {
            let t = Instant::now();
            std::hint::black_box(model.infer(&batch, n, true).with_context(|| format!("batch of {n}"))?);
            latency.record(t.elapsed());
            runs += 1;
            if started.elapsed() >= duration || args.iterations.is_some_and(|max| runs >= max) {
                break;
            }
        }
        let elapsed = started.elapsed().as_secs_f64().max(1e-9);
        let summary = latency.summary();
        batches.push(BatchReport {
            batch: size,
            runs,
            images_per_s: round3(runs as f64 * n as f64 / elapsed),
            p50_ms: summary.as_ref().map_or(0.0, |s| s.p50_ms),
            p50_ms_per_image: summary.as_ref().map_or(0.0, |s| round3(s.p50_ms / n as f64)),
            latency: summary,
        });
    }
    let best = batches
        .iter()
        .max_by(|a, b| a.images_per_s.total_cmp(&b.images_per_s))
        .map(|b| Best { batch: b.batch, images_per_s: b.images_per_s });

    let report = Report {
        mode: "raw",
        tier: tier.as_str(),
        model: config.name(),
        image: args.image.display().to_string(),
        image_bytes: image.len(),
        crop: preprocess.crop,
        intra_threads: config.intra_threads,
        spinning: config.spin,
        load_ms: round3(load_ms),
        warmup_s: args.warmup,
        duration_s: args.duration,
        preprocess: preprocess_latency.summary(),
        batches,
        best,
    };
    print_report(args.json, &report, || report.text())?;
    Ok(true)
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
    /// The batch size with the most images per second.
    best: Option<Best>,
}

#[derive(Debug, Serialize)]
struct BatchReport {
    batch: u32,
    /// `Model::infer` calls timed.
    runs: u64,
    /// Images per second of wall time over the timed runs.
    images_per_s: f64,
    /// Median of one `Model::infer` call (the whole batch).
    p50_ms: f64,
    p50_ms_per_image: f64,
    latency: Option<Summary>,
}

#[derive(Debug, Serialize)]
struct Best {
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
            "{:>5} {:>7} {:>8} {:>8} {:>8} {:>10} {:>9}",
            "batch", "runs", "p50 ms", "p90 ms", "p99 ms", "ms/image", "images/s"
        );
        for b in &self.batches {
            let l = b.latency.as_ref();
            let _ = writeln!(
                out,
                "{:>5} {:>7} {:>8} {:>8} {:>8} {:>10} {:>9.1}",
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
            let _ = writeln!(out, "\nbest: batch {} at {:.1} images/s", best.batch, best.images_per_s);
        }
        out
    }
}
