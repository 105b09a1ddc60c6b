//! `tandem classify`: the top-k classes of image files, as text or JSON lines.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use serde_json::json;

use super::args::ModelArgs;
use super::tiers::{self, Run};
use crate::engine::Tier;
use crate::labels::Labels;

#[derive(Debug, Args)]
pub struct ClassifyArgs {
    #[command(flatten)]
    pub models: ModelArgs,

    /// Which tier's model to run.
    #[arg(long, env = "TANDEM_CLASSIFY_TIER", value_enum, default_value_t = Tier::Fast)]
    pub tier: Tier,

    /// How many classes to print per image.
    #[arg(long, env = "TANDEM_CLASSIFY_TOP_K", default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
    pub top_k: u16,

    /// One JSON object per line: `{"file", "model", "top_k": [...]}` or `{"file", "error"}`.
    #[arg(long, env = "TANDEM_CLASSIFY_JSON")]
    pub json: bool,

    /// Image files (JPEG, PNG, WebP, BMP, GIF).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

/// Returns `Ok(false)` when at least one image failed (the others are still classified).
pub fn run(args: &ClassifyArgs) -> anyhow::Result<bool> {
    tiers::ensure_files(&args.models, &[args.tier], "--labels")?;
    args.models.configure_decode_memory();
    let labels = Arc::new(Labels::load(&args.models.labels_path())?);
    let classifier =
        tiers::start(&args.models, &labels, Run::OneByOne { tier: args.tier, top_k: usize::from(args.top_k) })?;
    let mut out = std::io::stdout().lock();
    let mut all_ok = true;
    for path in &args.images {
        let file = path.display().to_string();
        let result = std::fs::read(path)
            .map_err(|e| format!("cannot read {file}: {e}"))
            .and_then(|bytes| classifier.classify_blocking(&bytes).map_err(|e| e.to_string()));
        match (result, args.json) {
            (Ok(prediction), true) => {
                let line = json!({"file": file, "model": prediction.model, "top_k": prediction.top_k});
                writeln!(out, "{line}")?;
            }
            (Ok(prediction), false) => {
                writeln!(out, "{file} ({}, {:.1} ms)", prediction.model, prediction.inference_ms)?;
                for class in &prediction.top_k {
                    writeln!(out, "  {:>6.2}%  {:>4}  {}", class.score * 100.0, class.class_index, class.label)?;
                }
            }
            (Err(error), json) => {
                all_ok = false;
                if json {
                    writeln!(out, "{}", json!({"file": file, "error": error}))?;
                } else {
                    writeln!(out, "{file}: error: {error}")?;
                }
            }
        }
    }
    Ok(all_ok)
}
