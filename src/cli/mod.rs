//! The command tree: `tandem serve | worker | classify | eval | bench | healthcheck | models pull`.
//!
//! Each subcommand's module owns its arguments and its run function; flag groups shared by
//! several live in [`args`], and what the flags mean for one tier in [`tiers`]. This is the
//! only layer that knows clap: what it hands the library below is plain config structs
//! (`engine::ModelConfig`, `queue::QueuePolicy`, `api::Limits`, `worker::WorkerConfig`, paths).
//! `main.rs` parses [`Cli`], sets up logging from [`LogFormat`] and calls [`run`].

pub mod args;
pub mod bench;
pub mod classify;
pub mod eval;
pub mod healthcheck;
pub mod help;
pub mod models;
pub mod refine;
pub mod serve;
mod startup;
pub mod tiers;
mod values;
pub mod worker;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "tandem",
    version,
    about = "Time-lagged image inference: a fast model answers now, an accurate model refines in the background",
    long_about = None,
    mut_subcommand("serve", help::with_headings),
    mut_subcommand("worker", help::with_headings)
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log lines as `text` (for people) or `json` (one object a line, for log collectors).
    #[arg(long, global = true, env = "TANDEM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text,
          help_heading = "Logs", display_order = 1000)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service: the fast tier answers, the accurate tier refines in the background.
    ///
    /// Without --redis-url everything runs in this process on an embedded queue. With it, jobs
    /// go to Redis and `tandem worker` processes (anywhere) run the accurate tier.
    Serve(serve::ServeArgs),
    /// Run the accurate tier on jobs from Redis (needs --redis-url).
    Worker(worker::WorkerArgs),
    /// Print the top-k classes of each image with either tier's model.
    Classify(classify::ClassifyArgs),
    /// Run both tiers over a labelled image set and report accuracy, latency and agreement.
    Eval(eval::EvalArgs),
    /// Load-test a running service (`--url`), or time ONNX Runtime alone on the same image (`--raw`).
    ///
    /// Prints throughput and p50/p90/p99 latency per route (`--mix health:N` adds health checks
    /// alongside `POST /predict`); `--jobs N` follows N jobs to completion instead.
    Bench(bench::BenchArgs),
    /// Exit 0 if the local `serve` (or worker) answers `GET /health/live`: the container
    /// image's HEALTHCHECK, which needs no curl.
    Healthcheck(healthcheck::HealthcheckArgs),
    /// Manage model files.
    Models {
        #[command(subcommand)]
        command: models::ModelsCommand,
    },
}

/// Runs the parsed command. `Ok(false)`: it ran to the end but something it was given failed
/// (an image `classify` could not read, a `bench` that measured nothing); the process exits 1.
pub fn run(cli: &Cli) -> anyhow::Result<bool> {
    match &cli.command {
        Command::Serve(args) => serve::run(args).map(|()| true),
        Command::Worker(args) => worker::run(args).map(|()| true),
        Command::Classify(args) => classify::run(args),
        Command::Eval(args) => eval::run(args).map(|()| true),
        Command::Bench(args) => bench::run(args),
        Command::Healthcheck(args) => healthcheck::run(args),
        Command::Models { command } => models::run(command).map(|()| true),
    }
}

/// `tandem serve ARGS...` parsed, for the tests of the flags `serve` shares.
#[cfg(test)]
pub(crate) fn parse_serve(args: &[&str]) -> serve::ServeArgs {
    let cli = Cli::try_parse_from(["tandem", "serve"].iter().chain(args)).expect("parses");
    match cli.command {
        Command::Serve(serve) => serve,
        _ => unreachable!("parsed as serve"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The README says every option has an environment variable: every non-positional
    /// argument of every subcommand (clap's own help and version aside).
    #[test]
    fn every_option_has_an_environment_variable() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if arg.is_positional() || id == "help" || id == "version" {
                    continue;
                }
                if arg.get_env().is_none() {
                    missing.push(format!("{path} --{}", arg.get_long().unwrap_or(id)));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        walk(&cmd, "tandem", &mut missing);
        assert!(missing.is_empty(), "options without an env var: {missing:?}");
    }
}
