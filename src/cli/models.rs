//! `tandem models pull`: the default model set into a directory, with sha256 checks.
//!
//! The downloading itself (temporary file, size and hash checks, atomic rename) is
//! [`crate::models::pull`]; this is its command line.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::models::pull::{self, DEFAULT_BASE_URL};

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Download the default model set (with sha256 checks), skipping files already present.
    Pull(PullArgs),
}

/// Flags of `tandem models pull`.
#[derive(Debug, Args)]
#[command(after_help = PULL_AFTER_HELP)]
pub struct PullArgs {
    /// Directory the model and labels files are downloaded into (created if missing).
    #[arg(long, env = "TANDEM_MODEL_DIR", default_value = "models")]
    pub model_dir: PathBuf,

    /// Base URL the model files are downloaded from; each file's path is appended to it
    /// (redirects are followed).
    #[arg(long, env = "TANDEM_MODELS_BASE_URL", default_value = DEFAULT_BASE_URL)]
    pub base_url: String,

    /// Also re-hash files already present (sha256 of every byte) instead of only checking their
    /// size; a file that does not match is downloaded again.
    #[arg(long, env = "TANDEM_MODELS_VERIFY")]
    pub verify: bool,
}

const PULL_AFTER_HELP: &str = "\
Each file is downloaded to a temporary file in --model-dir, fsynced, checked against its expected size and \
sha256, and only then renamed into place; a rejected download leaves nothing behind.
A file already present with the expected size is skipped without being read (--verify re-hashes it). A present \
file with the wrong size, or the wrong sha256 under --verify, is downloaded again and replaced. Every file is \
attempted; the command fails if any could not be downloaded and verified.";

pub fn run(command: &ModelsCommand) -> anyhow::Result<()> {
    match command {
        ModelsCommand::Pull(args) => pull::pull_defaults(&args.base_url, &args.model_dir, args.verify),
    }
}
