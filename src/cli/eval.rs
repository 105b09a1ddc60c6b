//! `tandem eval`: runs both tiers over a labelled image set and reports accuracy, latency and
//! how often the accurate tier fixes (or breaks) the fast tier's answer; with `--cascade`, what
//! each `--refine-below` threshold would skip and keep on this set.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::args::ModelArgs;
use super::tiers::{self, Run};
use crate::engine::{Classifier, Prediction, Tier};
use crate::labels::Labels;

/// Classes kept per prediction: enough for top-5 accuracy.
const TOP_K: usize = 5;

/// `--labels` here is the ground-truth CSV (as in `tandem eval DIR --labels LABELS.csv`), so the
/// class-names file, `--labels` elsewhere, is `--class-labels` (or `TANDEM_LABELS`) for this command.
#[derive(Debug, Args)]
#[command(mut_arg("labels", |arg| arg.long("class-labels")))]
pub struct EvalArgs {
    #[command(flatten)]
    pub models: ModelArgs,

    /// Directory holding the images listed in --labels.
    pub dir: PathBuf,

    /// Ground truth: CSV with a header and columns `file,class_index,...` (file relative to DIR).
    #[arg(long = "labels", id = "truth", env = "TANDEM_EVAL_LABELS", value_name = "LABELS.CSV")]
    pub labels_csv: PathBuf,

    /// Print one JSON object instead of a table.
    #[arg(long, env = "TANDEM_EVAL_JSON")]
    pub json: bool,

    /// Also the cascade's curve: for each `--refine-below` threshold, the accurate runs it skips,
    /// its top-1 and the share of the accurate tier's gain it keeps, and the threshold that
    /// skips most while keeping at least 0.99 of that gain.
    #[arg(long, env = "TANDEM_EVAL_CASCADE")]
    pub cascade: bool,
}

/// The thresholds the cascade's curve is taken at, in hundredths: 0.05 to 0.95, and 0.99.
const CASCADE_THRESHOLDS: [u32; 20] = [5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80, 85, 90, 95, 99];
/// The share of the accurate tier's gain a recommended threshold keeps at least.
const GAIN_KEPT: f64 = 0.99;

/// The cascade at one threshold: what `serve --refine-below THRESHOLD` would do on this set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CascadePoint {
    pub threshold: f64,
    /// Fraction of images whose accurate run is skipped (fast top-1 probability ≥ threshold).
    pub skipped: f64,
    /// Top-1 accuracy of the answers the cascade gives: the fast one where skipped, else the
    /// accurate one.
    pub top1: f64,
    /// (cascade − fast) / (accurate − fast), in top-1 hits; `null` when the accurate tier is no
    /// better than the fast one on this set.
    pub gain_kept: Option<f64>,
}

/// One labelled image.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledImage {
    pub file: String,
    pub class_index: usize,
}

/// Parses `file,class_index,...` rows after a header line. Only the first two fields are read.
pub fn parse_labels_csv(text: &str) -> anyhow::Result<Vec<LabelledImage>> {
    let mut rows = Vec::new();
    for (number, line) in text.lines().enumerate().skip(1) {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let mut fields = line.split(',');
        let (Some(file), Some(class)) = (fields.next(), fields.next()) else {
            anyhow::bail!("line {}: expected `file,class_index,...`, found {line:?}", number + 1);
        };
        let class_index = class
            .trim()
            .parse()
            .with_context(|| format!("line {}: class_index {class:?} is not a number", number + 1))?;
        rows.push(LabelledImage { file: file.trim().to_owned(), class_index });
    }
    Ok(rows)
}

#[derive(Debug, Serialize)]
pub struct TierReport {
    pub model: String,
    pub top1: f64,
    pub top5: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct Tiers {
    pub fast: TierReport,
    pub accurate: TierReport,
}

#[derive(Debug, Serialize)]
pub struct EvalReport {
    /// Images scored (readable ones).
    pub images: usize,
    pub unreadable: Vec<String>,
    pub tiers: Tiers,
    /// Fraction of images where both tiers give the same top-1 class.
    pub agreement: f64,
    /// Images the fast tier got wrong and the accurate tier got right.
    pub fixed: usize,
    /// Images the fast tier got right and the accurate tier got wrong.
    pub broken: usize,
    /// With `--cascade`: the curve, one point per threshold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cascade: Option<Vec<CascadePoint>>,
    /// With `--cascade`: the threshold that skips most while keeping at least 99 % of the gain
    /// (or, with no gain, all of the accurate tier's top-1); `null` if none does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recommended_threshold: Option<Option<f64>>,
}

struct Scored {
    truth: usize,
    fast: Prediction,
    accurate: Prediction,
    fast_ms: f64,
    accurate_ms: f64,
}

pub fn run(args: &EvalArgs) -> anyhow::Result<()> {
    args.models.configure_decode_memory();
    let csv = std::fs::read_to_string(&args.labels_csv)
        .with_context(|| format!("cannot read {}", args.labels_csv.display()))?;
    let rows = parse_labels_csv(&csv)?;
    tiers::ensure_files(&args.models, &[Tier::Fast, Tier::Accurate], "--class-labels")?;
    let labels = Arc::new(Labels::load(&args.models.labels_path())?);
    let fast = tiers::start(&args.models, &labels, Run::OneByOne { tier: Tier::Fast, top_k: TOP_K })?;
    let accurate = tiers::start(&args.models, &labels, Run::OneByOne { tier: Tier::Accurate, top_k: TOP_K })?;

    let progress = ProgressBar::new(rows.len() as u64);
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut scored = Vec::with_capacity(rows.len());
    let mut unreadable = Vec::new();
    for row in &rows {
        progress.set_message(row.file.clone());
        match score(&args.dir.join(&row.file), row.class_index, &fast, &accurate) {
            Ok(result) => scored.push(result),
            Err(error) => {
                progress.suspend(|| tracing::warn!(file = %row.file, %error, "unreadable image"));
                unreadable.push(row.file.clone());
            }
        }
        progress.inc(1);
    }
    progress.finish_and_clear();

    let mut report = summarize(&scored, unreadable, fast.model_name(), accurate.model_name());
    if args.cascade {
        let curve = cascade_curve(&scored);
        report.recommended_threshold = Some(recommend(&curve, report.tiers.accurate.top1));
        report.cascade = Some(curve);
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn score(path: &Path, truth: usize, fast: &Classifier, accurate: &Classifier) -> anyhow::Result<Scored> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let started = Instant::now();
    let fast_prediction = fast.classify_blocking(&bytes)?;
    let fast_ms = started.elapsed().as_secs_f64() * 1e3;
    let started = Instant::now();
    let accurate_prediction = accurate.classify_blocking(&bytes)?;
    let accurate_ms = started.elapsed().as_secs_f64() * 1e3;
    Ok(Scored { truth, fast: fast_prediction, accurate: accurate_prediction, fast_ms, accurate_ms })
}

fn summarize(scored: &[Scored], unreadable: Vec<String>, fast_model: &str, accurate_model: &str) -> EvalReport {
    let n = scored.len();
    let fraction = |count: usize| if n == 0 { 0.0 } else { count as f64 / n as f64 };
    let tier = |model: &str, pick: &dyn Fn(&Scored) -> (&Prediction, f64)| {
        let top1 = scored.iter().filter(|s| pick(s).0.class_index == s.truth).count();
        let top5 = scored.iter().filter(|s| pick(s).0.top_k.iter().take(5).any(|c| c.class_index == s.truth)).count();
        let mut latencies: Vec<f64> = scored.iter().map(|s| pick(s).1).collect();
        latencies.sort_by(f64::total_cmp);
        TierReport {
            model: model.to_owned(),
            top1: fraction(top1),
            top5: fraction(top5),
            p50_ms: percentile(&latencies, 0.50),
            p99_ms: percentile(&latencies, 0.99),
        }
    };
    let fast = tier(fast_model, &|s| (&s.fast, s.fast_ms));
    let accurate = tier(accurate_model, &|s| (&s.accurate, s.accurate_ms));
    let agree = scored.iter().filter(|s| s.fast.class_index == s.accurate.class_index).count();
    let fixed = scored.iter().filter(|s| s.fast.class_index != s.truth && s.accurate.class_index == s.truth).count();
    let broken = scored.iter().filter(|s| s.fast.class_index == s.truth && s.accurate.class_index != s.truth).count();
    EvalReport {
        images: n,
        unreadable,
        tiers: Tiers { fast, accurate },
        agreement: fraction(agree),
        fixed,
        broken,
        cascade: None,
        recommended_threshold: None,
    }
}

/// The cascade's curve: each threshold decided exactly as `serve` decides it (`f32` score ≥
/// `f32` threshold), counted in whole images.
fn cascade_curve(scored: &[Scored]) -> Vec<CascadePoint> {
    let n = scored.len().max(1) as f64;
    let hits = |pick: &dyn Fn(&Scored) -> usize| scored.iter().filter(|s| pick(s) == s.truth).count() as i64;
    let fast_hits = hits(&|s| s.fast.class_index);
    let accurate_hits = hits(&|s| s.accurate.class_index);
    CASCADE_THRESHOLDS
        .iter()
        .map(|&hundredths| {
            let threshold = hundredths as f32 / 100.0;
            let confident = |s: &Scored| s.fast.score >= threshold;
            let skipped = scored.iter().filter(|s| confident(s)).count();
            let cascade_hits = hits(&|s| if confident(s) { s.fast.class_index } else { s.accurate.class_index });
            let gain = accurate_hits - fast_hits;
            CascadePoint {
                threshold: f64::from(hundredths) / 100.0,
                skipped: skipped as f64 / n,
                top1: cascade_hits as f64 / n,
                gain_kept: (gain > 0).then(|| (cascade_hits - fast_hits) as f64 / gain as f64),
            }
        })
        .collect()
}

/// The threshold that skips most while keeping at least `GAIN_KEPT` of the gain (with no gain
/// to keep: while its top-1 is the accurate tier's, or better); the lowest one among equals.
fn recommend(curve: &[CascadePoint], accurate_top1: f64) -> Option<f64> {
    let keeps = |p: &CascadePoint| match p.gain_kept {
        Some(kept) => kept >= GAIN_KEPT - 1e-9,
        None => p.top1 >= accurate_top1 - 1e-9,
    };
    curve
        .iter()
        .filter(|p| keeps(p))
        .fold(None::<&CascadePoint>, |best, p| match best {
            Some(b) if b.skipped >= p.skipped => Some(b),
            _ => Some(p),
        })
        .map(|p| p.threshold)
}

/// Nearest-rank percentile of sorted values (0 when empty).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn print_table(report: &EvalReport) {
    println!("{} images scored, {} unreadable", report.images, report.unreadable.len());
    for file in &report.unreadable {
        println!("  unreadable: {file}");
    }
    println!("{:<9} {:<28} {:>7} {:>7} {:>9} {:>9}", "tier", "model", "top-1", "top-5", "p50 ms", "p99 ms");
    for (name, tier) in [("fast", &report.tiers.fast), ("accurate", &report.tiers.accurate)] {
        println!(
            "{:<9} {:<28} {:>6.1}% {:>6.1}% {:>9.2} {:>9.2}",
            name,
            tier.model,
            tier.top1 * 100.0,
            tier.top5 * 100.0,
            tier.p50_ms,
            tier.p99_ms
        );
    }
    println!(
        "agreement {:.1}%, accurate tier fixed {} and broke {}",
        report.agreement * 100.0,
        report.fixed,
        report.broken
    );
    if let Some(curve) = &report.cascade {
        println!("\ncascade (serve --refine-below THRESHOLD):");
        println!("{:>9} {:>9} {:>7} {:>10}", "threshold", "skipped", "top-1", "gain kept");
        for point in curve {
            let kept = point.gain_kept.map_or_else(|| "-".to_owned(), |k| format!("{:.1}%", k * 100.0));
            println!(
                "{:>9.2} {:>8.1}% {:>6.1}% {:>10}",
                point.threshold,
                point.skipped * 100.0,
                point.top1 * 100.0,
                kept
            );
        }
        match report.recommended_threshold.flatten() {
            Some(t) => println!("recommended: --refine-below {t:.2} (skips most, keeps at least 99% of the gain)"),
            None => println!("recommended: none of these thresholds keeps 99% of the gain on this set"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_csv_reads_first_two_columns() {
        let rows = parse_labels_csv("file,class_index,synset,label\na.jpg,817,n1,sports car\n\nb.jpg, 3 ,x,y\n");
        let Ok(rows) = rows else { panic!("parse failed") };
        assert_eq!(
            rows,
            vec![
                LabelledImage { file: "a.jpg".into(), class_index: 817 },
                LabelledImage { file: "b.jpg".into(), class_index: 3 }
            ]
        );
    }

    #[test]
    fn labels_csv_rejects_a_bad_class_index() {
        assert!(parse_labels_csv("file,class_index\na.jpg,many\n").is_err());
    }

    fn scored(truth: usize, fast: (usize, f32), accurate: usize) -> Scored {
        let prediction = |class_index, score| Prediction {
            model: "m".into(),
            label: String::new(),
            class_index,
            score,
            top_k: Vec::new(),
            inference_ms: 0.0,
            probabilities: None,
        };
        Scored {
            truth,
            fast: prediction(fast.0, fast.1),
            accurate: prediction(accurate, 0.9),
            fast_ms: 0.0,
            accurate_ms: 0.0,
        }
    }

    #[test]
    fn the_cascade_keeps_the_fast_answer_at_or_above_the_threshold() {
        // Fast right and sure; fast wrong but sure (the cascade keeps the error); fast wrong and
        // unsure (the accurate tier fixes it); fast right, unsure.
        let set = [scored(1, (1, 0.95), 1), scored(2, (9, 0.80), 2), scored(3, (9, 0.30), 3), scored(4, (4, 0.50), 4)];
        let curve = cascade_curve(&set);
        let at = |t: f64| curve.iter().find(|p| (p.threshold - t).abs() < 1e-9).cloned().expect("threshold");
        // At 0.80 exactly: the 0.80 one is skipped (≥), and its error kept.
        assert_eq!(at(0.80), CascadePoint { threshold: 0.80, skipped: 0.5, top1: 0.75, gain_kept: Some(0.5) });
        assert_eq!(at(0.85), CascadePoint { threshold: 0.85, skipped: 0.25, top1: 1.0, gain_kept: Some(1.0) });
        assert_eq!(at(0.99).skipped, 0.0);
        assert_eq!(recommend(&curve, 1.0), Some(0.85));
    }

    #[test]
    fn with_no_gain_to_keep_the_recommendation_keeps_the_accurate_top1() {
        let set = [scored(1, (1, 0.95), 1), scored(2, (2, 0.40), 2)];
        let curve = cascade_curve(&set);
        assert!(curve.iter().all(|p| p.gain_kept.is_none()));
        assert_eq!(recommend(&curve, 1.0), Some(0.05));
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), 50.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
