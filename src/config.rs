//! Command-line and environment configuration.
//!
//! Every option is a `--flag` with a `TANDEM_*` environment variable, and `--help` shows its
//! default. Option groups are shared between subcommands with `#[command(flatten)]`, so a flag
//! means the same thing everywhere it appears.
//!
//! Help texts: a doc comment's first paragraph is the short help (`-h`), the whole comment the
//! long help (`--help`). Measured figures stay out of both: they go in docs/PERFORMANCE.md.
//! `serve` and `worker` show their options under the headings of [`SERVE_HEADINGS`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::engine::Spin;
use crate::pipeline::PreprocessConfig;

#[derive(Debug, Parser)]
#[command(
    name = "tandem",
    version,
    about = "Time-lagged image inference: a fast model answers now, an accurate model refines in the background",
    long_about = None,
    mut_subcommand("serve", with_headings),
    mut_subcommand("worker", with_headings)
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
    Serve(ServeArgs),
    /// Run the accurate tier on jobs from Redis (needs --redis-url).
    Worker(WorkerArgs),
    /// Print the top-k classes of each image with either tier's model.
    Classify(crate::cli::classify::ClassifyArgs),
    /// Run both tiers over a labelled image set and report accuracy, latency and agreement.
    Eval(crate::cli::eval::EvalArgs),
    /// Load-test a running service (`--url`), or time ONNX Runtime alone on the same image (`--raw`).
    ///
    /// Prints throughput and p50/p90/p99 latency per route (`--mix health:N` adds health checks
    /// alongside `POST /predict`); `--jobs N` follows N jobs to completion instead.
    Bench(crate::bench::BenchArgs),
    /// Manage model files.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Download the default model set (with sha256 checks), skipping files already present.
    Pull(crate::models::pull::PullArgs),
}

pub use crate::engine::Tier;

/// Where the model files are and how each tier's input is prepared.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Directory holding the model and labels files.
    #[arg(long, env = "TANDEM_MODEL_DIR", default_value = "models")]
    pub model_dir: PathBuf,

    /// Fast-tier ONNX model (relative to --model-dir unless absolute).
    #[arg(long, env = "TANDEM_FAST_MODEL", default_value = "mobilenet_v2.onnx")]
    pub fast_model: PathBuf,

    /// Accurate-tier ONNX model (relative to --model-dir unless absolute).
    #[arg(long, env = "TANDEM_ACCURATE_MODEL", default_value = "resnet50.onnx")]
    pub accurate_model: PathBuf,

    /// Labels file, one class per line; plain or `n01440764 tench, ...` synset lines.
    #[arg(long, env = "TANDEM_LABELS", default_value = "imagenet_classes.txt")]
    pub labels: PathBuf,

    /// Before loading, download the default model files that are configured but missing.
    ///
    /// Only the files this command uses are considered, and only those named as in the default
    /// set (`tandem models pull`: mobilenet_v2.onnx, resnet50.onnx, imagenet_classes.txt) are
    /// downloaded; any other missing file is an error, as without this flag.
    #[arg(long, env = "TANDEM_PULL_MISSING")]
    pub pull_missing: bool,

    /// Base URL --pull-missing downloads from (as `tandem models pull --base-url`).
    #[arg(long, env = "TANDEM_MODELS_BASE_URL", default_value = crate::models::pull::DEFAULT_BASE_URL)]
    pub models_base_url: String,

    /// Fast tier: the shorter side is resized to this.
    #[arg(long, env = "TANDEM_FAST_RESIZE", default_value_t = 256)]
    pub fast_resize: u32,

    /// Fast tier: side of the centered square crop fed to the model.
    #[arg(long, env = "TANDEM_FAST_CROP", default_value_t = 224)]
    pub fast_crop: u32,

    /// Accurate tier: the shorter side is resized to this.
    #[arg(long, env = "TANDEM_ACCURATE_RESIZE", default_value_t = 256)]
    pub accurate_resize: u32,

    /// Accurate tier: side of the centered square crop fed to the model.
    #[arg(long, env = "TANDEM_ACCURATE_CROP", default_value_t = 224)]
    pub accurate_crop: u32,

    /// Per-channel mean subtracted after scaling to [0,1], as `R,G,B`.
    #[arg(long, env = "TANDEM_MEAN", value_name = "R,G,B", value_parser = parse_rgb, default_value = "0.485,0.456,0.406")]
    pub mean: [f32; 3],

    /// Per-channel standard deviation divided by after the mean, as `R,G,B`.
    #[arg(long, env = "TANDEM_STD", value_name = "R,G,B", value_parser = parse_positive_rgb, default_value = "0.229,0.224,0.225")]
    pub std: [f32; 3],

    /// Images with more pixels than this are refused from their header, before decoding.
    #[arg(long, env = "TANDEM_MAX_PIXELS", default_value_t = 64_000_000)]
    pub max_pixels: u64,

    /// Memory all image decodes in this process may hold at once, e.g. `2GiB` (unset: an
    /// eighth of the machine's memory, 1 to 4 GiB). An image that needs more is refused (413);
    /// one that would pass it while others decode gets 503 (the accurate tier waits instead).
    #[arg(long, env = "TANDEM_DECODE_MEMORY", value_name = "BYTES")]
    pub decode_memory: Option<bytesize::ByteSize>,

    /// ONNX Runtime intra-op threads per model (0: one per CPU core).
    #[arg(long, env = "TANDEM_INTRA_THREADS", default_value_t = 0)]
    pub intra_threads: usize,

    /// When the fast tier's idle ORT threads busy-wait for work instead of sleeping.
    ///
    /// `idle`: only inside a run that has the model to itself (a lone request), which saves a
    /// thread wake-up per operator; under load they sleep, leaving the cores to request handling.
    /// `always` (ORT's own default) also spins under load, taking cores from request handling;
    /// `off` never spins. The accurate tier never spins. Measurements: docs/PERFORMANCE.md.
    #[arg(long, env = "TANDEM_FAST_SPIN", value_enum, default_value_t = Spin::Idle)]
    pub fast_spin: Spin,

    /// Fast tier: ORT sessions that run batches side by side under load (0: one per core, at most 4).
    ///
    /// Each lane runs on intra-threads / lanes threads; 1 is one session on every thread. A lone
    /// request still runs on every thread. Measurements: docs/PERFORMANCE.md.
    #[arg(long, env = "TANDEM_FAST_LANES", default_value_t = 0)]
    pub fast_lanes: usize,
}

impl ModelArgs {
    fn resolve(&self, file: &Path) -> PathBuf {
        if file.is_absolute() { file.to_owned() } else { self.model_dir.join(file) }
    }

    /// Spinning for a tier's model: `--fast-spin` for the fast tier, never for the accurate.
    pub fn spin(&self, tier: Tier) -> Spin {
        match tier {
            Tier::Fast => self.fast_spin,
            Tier::Accurate => Spin::Off,
        }
    }

    /// Lanes for a tier's model: `--fast-lanes` for the fast tier (0: one per intra-op thread,
    /// at most 4), one for the accurate tier, whose batches are large enough to use every core.
    pub fn lanes(&self, tier: Tier) -> usize {
        match tier {
            Tier::Fast if self.fast_lanes > 0 => self.fast_lanes,
            Tier::Fast => self.intra_threads().min(4),
            Tier::Accurate => 1,
        }
    }

    pub fn model_path(&self, tier: Tier) -> PathBuf {
        match tier {
            Tier::Fast => self.resolve(&self.fast_model),
            Tier::Accurate => self.resolve(&self.accurate_model),
        }
    }

    /// Sets the process's decode-memory ceiling ([`crate::pipeline::budget`]) from `--decode-memory`.
    pub fn configure_decode_memory(&self) {
        let limit = self.decode_memory.map_or_else(crate::pipeline::budget::default_limit, |b| b.as_u64());
        crate::pipeline::budget::configure(limit);
        tracing::debug!(bytes = limit, "decode memory limit");
    }

    pub fn labels_path(&self) -> PathBuf {
        self.resolve(&self.labels)
    }

    pub fn preprocess(&self, tier: Tier) -> PreprocessConfig {
        let (resize, crop) = match tier {
            Tier::Fast => (self.fast_resize, self.fast_crop),
            Tier::Accurate => (self.accurate_resize, self.accurate_crop),
        };
        // The fast tier answers a client: it never waits for decode memory. The accurate tier
        // works in the background and waits its turn rather than lose an attempt.
        let decode_priority = match tier {
            Tier::Fast => crate::pipeline::budget::Priority::Foreground,
            Tier::Accurate => crate::pipeline::budget::Priority::Background,
        };
        PreprocessConfig { resize, crop, mean: self.mean, std: self.std, max_pixels: self.max_pixels, decode_priority }
    }

    pub fn intra_threads(&self) -> usize {
        if self.intra_threads > 0 {
            self.intra_threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

/// `--mean`: `R,G,B`, three finite numbers separated by commas (the one form, for the flag and
/// the environment variable alike).
fn parse_rgb(text: &str) -> Result<[f32; 3], String> {
    let values = text
        .split(',')
        .map(|part| match part.trim().parse::<f32>() {
            Ok(value) if value.is_finite() => Ok(value),
            _ => Err(format!("{:?} is not a number", part.trim())),
        })
        .collect::<Result<Vec<f32>, String>>()?;
    <[f32; 3]>::try_from(values).map_err(|values| {
        format!("expected three comma-separated numbers R,G,B (e.g. 0.5,0.5,0.5), got {}", values.len())
    })
}

/// Seconds: a finite number above zero (a Duration cannot hold infinity).
fn parse_seconds(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds > 0.0 && seconds < 1e9 => Ok(seconds),
        _ => Err(format!("{text:?} is not a number of seconds above 0")),
    }
}

/// `--std`: as [`parse_rgb`], and each above zero (it is divided by).
fn parse_positive_rgb(text: &str) -> Result<[f32; 3], String> {
    let rgb = parse_rgb(text)?;
    if rgb.iter().any(|&v| v <= 0.0) {
        return Err("each of R,G,B must be above 0".into());
    }
    Ok(rgb)
}

/// A size in bytes: a plain number, or one with a unit (`512MiB`, `2GB`, `1.5 GiB`), above 0.
fn parse_byte_size(text: &str) -> Result<u64, String> {
    let size = text
        .trim()
        .parse::<bytesize::ByteSize>()
        .map_err(|err| format!("{text:?} is not a size (e.g. 512MiB, 2GB or a number of bytes): {err}"))?;
    match size.as_u64() {
        0 => Err("must be above 0".into()),
        bytes => Ok(bytes),
    }
}

/// The `serve` and `worker` option headings and their options, in the order `-h` shows them. An
/// option not listed here is shown under "Options" (and fails a unit test: give it a heading).
pub const SERVE_HEADINGS: &[(&str, &[&str])] = &[
    ("Essentials", &["addr", "metrics_addr", "model_dir", "fast_model", "accurate_model", "redis_url"]),
    (
        "Models",
        &[
            "labels",
            "pull_missing",
            "models_base_url",
            "fast_resize",
            "fast_crop",
            "accurate_resize",
            "accurate_crop",
            "mean",
            "std",
        ],
    ),
    ("Queue", &["redis_prefix", "max_queue", "max_queue_bytes", "result_ttl", "max_attempts", "reclaim_after"]),
    (
        "Limits",
        &[
            "max_inflight",
            "max_body",
            "request_timeout",
            "body_timeout",
            "header_timeout",
            "max_uploads",
            "upload_memory",
            "max_pixels",
            "decode_memory",
        ],
    ),
    ("Access", &["api_keys", "protect_health", "protect_metrics", "cors_origins"]),
    (
        "Tuning",
        &[
            "intra_threads",
            "fast_lanes",
            "fast_spin",
            "max_batch",
            "max_batch_delay_ms",
            "fast_nice",
            "concurrency",
            "accurate_max_batch",
            "accurate_max_batch_delay_ms",
            "accurate_priority",
        ],
    ),
];

/// Puts a command's options under [`SERVE_HEADINGS`], in its order. `mut_arg` moves an option to
/// the end, so visiting them in the table's order orders the headings (clap shows them in order
/// of first use); `display_order` orders the options within each.
fn with_headings(mut cmd: clap::Command) -> clap::Command {
    let ids = SERVE_HEADINGS.iter().flat_map(|&(heading, ids)| ids.iter().map(move |&id| (heading, id)));
    for (order, (heading, id)) in ids.enumerate() {
        if cmd.get_arguments().any(|arg| arg.get_id() == id) {
            cmd = cmd.mut_arg(id, |arg| arg.help_heading(heading).display_order(order));
        }
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    fn fast_spin(args: &[&str]) -> Spin {
        let cli = Cli::try_parse_from(["tandem", "serve"].iter().chain(args)).expect("parses");
        match cli.command {
            Command::Serve(serve) => serve.models.fast_spin,
            _ => unreachable!("parsed as serve"),
        }
    }

    fn serve_args(args: &[&str]) -> ServeArgs {
        let cli = Cli::try_parse_from(["tandem", "serve"].iter().chain(args)).expect("parses");
        match cli.command {
            Command::Serve(serve) => serve,
            _ => unreachable!("parsed as serve"),
        }
    }

    /// The fast tier gets one lane per intra-op thread, at most 4, unless told; the accurate
    /// tier always one.
    #[test]
    fn fast_lanes_default_to_one_per_thread_up_to_four() {
        let lanes = |args: &[&str]| {
            let serve = serve_args(args);
            (serve.models.lanes(Tier::Fast), serve.models.lanes(Tier::Accurate))
        };
        assert_eq!(lanes(&["--intra-threads", "2"]), (2, 1));
        assert_eq!(lanes(&["--intra-threads", "16"]), (4, 1));
        assert_eq!(lanes(&["--intra-threads", "16", "--fast-lanes", "8"]), (8, 1));
        assert_eq!(lanes(&["--intra-threads", "1"]), (1, 1));
        assert_eq!(serve_args(&[]).max_batch, 1);
    }

    /// One form for --mean/--std, the documented `R,G,B`, for the flag and the variable alike.
    #[test]
    fn mean_and_std_take_one_comma_triple() {
        let serve = serve_args(&["--mean", "0.5,0.5,0.5", "--std", "0.25, 0.5 ,1"]);
        assert_eq!(serve.models.preprocess(Tier::Fast).mean, [0.5; 3]);
        assert_eq!(serve.models.std, [0.25, 0.5, 1.0]);
        assert_eq!(serve_args(&[]).models.mean, [0.485, 0.456, 0.406]);
        for bad in [&["--mean", "0.5,0.5"][..], &["--mean", "0.5", "0.5", "0.5"], &["--mean", "1,2,3,4"]] {
            assert!(Cli::try_parse_from(["tandem", "serve"].iter().chain(bad)).is_err(), "{bad:?}");
        }
        assert!(Cli::try_parse_from(["tandem", "serve", "--std", "0.2,0,0.2"]).is_err(), "std 0 is refused");
        assert!(Cli::try_parse_from(["tandem", "serve", "--mean", "a,b,c"]).is_err());
        assert_eq!(
            parse_rgb("1,2"),
            Err("expected three comma-separated numbers R,G,B (e.g. 0.5,0.5,0.5), got 2".into())
        );

        let help = Cli::command().find_subcommand_mut("classify").map(|c| c.render_help().to_string());
        let help = help.unwrap_or_default();
        assert!(help.contains("--mean <R,G,B>") && !help.contains("<R,G,B> <R,G,B>"), "{help}");
        assert!(help.contains("[default: 0.485,0.456,0.406]"), "{help}");
    }

    /// --max-queue-bytes takes plain bytes or a size with a binary or decimal unit; 1 GiB if unset.
    #[test]
    fn max_queue_bytes_takes_human_sizes() {
        let bytes = |args: &[&str]| serve_args(args).queue.policy().max_queue_bytes;
        assert_eq!(bytes(&[]), 1 << 30);
        assert_eq!(bytes(&["--max-queue-bytes", "512MiB"]), 512 << 20);
        assert_eq!(bytes(&["--max-queue-bytes", "2GB"]), 2_000_000_000);
        assert_eq!(bytes(&["--max-queue-bytes", "1.5 KiB"]), 1536);
        assert_eq!(bytes(&["--max-queue-bytes", "8388608"]), 8 << 20);
        for bad in ["0", "0MiB", "lots", "12 parsecs", "-1", ""] {
            assert!(Cli::try_parse_from(["tandem", "serve", "--max-queue-bytes", bad]).is_err(), "{bad:?}");
        }
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

    /// `serve -h` and `worker -h` group every option under a heading, Essentials first.
    #[test]
    fn serve_and_worker_options_are_grouped_essentials_first() {
        let mut cmd = Cli::command();
        cmd.build();
        for name in ["serve", "worker"] {
            let Some(sub) = cmd.find_subcommand(name) else { panic!("no {name} subcommand") };
            let unlisted: Vec<_> = sub
                .get_arguments()
                .filter(|a| !a.is_positional() && a.get_id() != "help" && a.get_help_heading().is_none())
                .map(|a| a.get_id().to_string())
                .collect();
            assert!(unlisted.is_empty(), "{name}: add these to SERVE_HEADINGS: {unlisted:?}");
            let short = sub.clone().render_help().to_string();
            let essentials = short.find("Essentials:").unwrap_or(usize::MAX);
            let models = short.find("Models:").unwrap_or(0);
            assert!(essentials < models, "{name} -h:\n{short}");
            assert!(short.find("--model-dir").is_some_and(|at| at > essentials && at < models), "{short}");
            // Measured figures belong in docs/PERFORMANCE.md, not in help texts.
            let long = sub.clone().render_long_help().to_string();
            let lower = long.to_lowercase();
            for figure in ["%", " ms ", " ms)", "measured"] {
                assert!(!lower.contains(figure), "{name} --help has a figure ({figure:?}):\n{long}");
            }
        }
        let mut cmd = Cli::command();
        let serve = cmd.find_subcommand_mut("serve").map(|c| c.render_help().to_string()).unwrap_or_default();
        assert!(serve.lines().count() < 100, "serve -h is {} lines:\n{serve}", serve.lines().count());
    }

    /// `idle` by default; the old boolean spellings still work.
    #[test]
    fn fast_spin_defaults_to_idle_and_takes_booleans() {
        assert_eq!(fast_spin(&[]), Spin::Idle);
        assert_eq!(fast_spin(&["--fast-spin", "true"]), Spin::Always);
        assert_eq!(fast_spin(&["--fast-spin", "false"]), Spin::Off);
        assert_eq!(fast_spin(&["--fast-spin", "always"]), Spin::Always);
    }
}

/// Where jobs go and how long they live.
#[derive(Debug, Clone, Args)]
pub struct QueueArgs {
    /// Redis URL (e.g. redis://127.0.0.1:6379/). Unset: the embedded in-process queue.
    #[arg(long, env = "TANDEM_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key, so several deployments can share one Redis.
    #[arg(long, env = "TANDEM_REDIS_PREFIX", default_value = "tandem")]
    pub redis_prefix: String,

    /// Jobs waiting or running before new ones are refused (the fast answer is still given).
    #[arg(long, env = "TANDEM_MAX_QUEUE", default_value_t = 1000)]
    pub max_queue: usize,

    /// Bytes of images the queued jobs (waiting or running) may hold in all, e.g. `512MiB`, `2GB`
    /// or a number of bytes; past it new jobs are refused like a full queue.
    ///
    /// Every queued job keeps its whole upload, in this process's memory (embedded queue) or in
    /// Redis, so `--max-queue` alone does not bound memory: it is counted in jobs, whatever
    /// their size.
    #[arg(long, env = "TANDEM_MAX_QUEUE_BYTES", value_name = "BYTES", default_value = "1GiB", value_parser = parse_byte_size)]
    pub max_queue_bytes: u64,

    /// Seconds a job's record (and result) stays readable.
    #[arg(long, env = "TANDEM_RESULT_TTL", default_value_t = 3600)]
    pub result_ttl: u64,

    /// Attempts before a job ends `failed` and goes to the dead-letter stream.
    #[arg(long, env = "TANDEM_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,

    /// Seconds after which a job taken by a worker that went silent is taken over (Redis).
    #[arg(long, env = "TANDEM_RECLAIM_AFTER", default_value_t = 30.0, value_parser = parse_seconds)]
    pub reclaim_after: f64,
}

impl QueueArgs {
    pub fn policy(&self) -> crate::queue::QueuePolicy {
        crate::queue::QueuePolicy {
            max_queue: self.max_queue.max(1),
            max_queue_bytes: self.max_queue_bytes,
            result_ttl: Duration::from_secs(self.result_ttl.max(1)),
            max_attempts: self.max_attempts.max(1),
        }
    }

    pub fn reclaim_after(&self) -> Duration {
        Duration::from_secs_f64(self.reclaim_after.max(0.001))
    }
}

/// How the accurate tier's jobs are run.
#[derive(Debug, Clone, Args)]
pub struct WorkerPoolArgs {
    /// Accurate-tier jobs run at once (per worker process, or inside `serve` in embedded mode).
    #[arg(long, env = "TANDEM_CONCURRENCY", default_value_t = 8)]
    pub concurrency: usize,

    /// Largest batch the accurate model runs; jobs already waiting are batched together.
    ///
    /// Which size serves best depends on the model and the machine: docs/PERFORMANCE.md.
    #[arg(long, env = "TANDEM_ACCURATE_MAX_BATCH", default_value_t = 8)]
    pub accurate_max_batch: usize,

    /// Milliseconds the accurate tier may hold a job back to fill a batch (0: never).
    #[arg(long = "accurate-max-batch-delay", env = "TANDEM_ACCURATE_MAX_BATCH_DELAY", default_value_t = 0)]
    pub accurate_max_batch_delay_ms: u64,

    /// CPU priority of the accurate tier: `idle`, `low` or `normal`.
    ///
    /// `idle` (SCHED_IDLE) runs on only the cycles everything else leaves, `low` is nice 19,
    /// `normal` is the fast tier's own. In `tandem worker` it applies to the whole process.
    #[arg(long, env = "TANDEM_ACCURATE_PRIORITY", value_enum, default_value_t = crate::engine::Priority::Idle)]
    pub accurate_priority: crate::engine::Priority,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on: `HOST:PORT`, the host a name or an IP (`0.0.0.0:8000`: every interface).
    #[arg(long, env = "TANDEM_ADDR", default_value = "127.0.0.1:8000")]
    pub addr: String,

    #[command(flatten)]
    pub models: ModelArgs,

    #[command(flatten)]
    pub queue: QueueArgs,

    #[command(flatten)]
    pub workers: WorkerPoolArgs,

    /// Largest batch the fast model runs (per lane); requests already waiting are batched together.
    ///
    /// Which size serves best depends on the model, the lanes and the machine: docs/PERFORMANCE.md.
    #[arg(long = "max-batch", env = "TANDEM_MAX_BATCH", default_value_t = 1)]
    pub max_batch: usize,

    /// Milliseconds the fast tier may hold a request back to fill a batch (0: never).
    #[arg(long = "max-batch-delay", env = "TANDEM_MAX_BATCH_DELAY", default_value_t = 0)]
    pub max_batch_delay_ms: u64,

    /// Nice value of the fast tier's inference threads (ONNX Runtime's included), 0 to 19.
    ///
    /// Above the HTTP threads' 0, so accepting and parsing requests and `/health` preempt a
    /// running model rather than wait for it; far above the accurate tier's SCHED_IDLE.
    /// Measurements: docs/PERFORMANCE.md.
    #[arg(long, env = "TANDEM_FAST_NICE", default_value_t = 5, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub fast_nice: i32,

    /// `POST /predict` requests in flight at once; more get 429 with Retry-After.
    #[arg(long, env = "TANDEM_MAX_INFLIGHT", default_value_t = 64)]
    pub max_inflight: usize,

    /// Largest request body in bytes (larger: 413).
    #[arg(long, env = "TANDEM_MAX_BODY", default_value_t = 10 * 1024 * 1024)]
    pub max_body: usize,

    /// Seconds a `POST /predict` may take, from the end of its body, before it is answered 503.
    #[arg(long, env = "TANDEM_REQUEST_TIMEOUT", default_value_t = 30.0, value_parser = parse_seconds)]
    pub request_timeout: f64,

    /// Seconds a client has to send its whole request body; past it: 408. The in-flight permit
    /// (--max-inflight) is taken only once the body is in.
    #[arg(long, env = "TANDEM_BODY_TIMEOUT", default_value_t = 10.0, value_parser = parse_seconds)]
    pub body_timeout: f64,

    /// Request bodies being received at once; more get 429 (after their body is read and
    /// thrown away, so the client sees the answer).
    #[arg(long, env = "TANDEM_MAX_UPLOADS", default_value_t = 256)]
    pub max_uploads: usize,

    /// Memory the bodies being received may hold at once, e.g. `512MiB`, charged as the bytes
    /// arrive; past it: 429.
    #[arg(long, env = "TANDEM_UPLOAD_MEMORY", default_value = "512MiB", value_name = "BYTES")]
    pub upload_memory: bytesize::ByteSize,

    /// Seconds a client has to send its request headers (against slow clients).
    #[arg(long, env = "TANDEM_HEADER_TIMEOUT", default_value_t = 10.0, value_parser = parse_seconds)]
    pub header_timeout: f64,

    #[command(flatten)]
    pub access: AccessArgs,
}

/// Who may call the API: optional bearer-token keys and browser origins (CORS). Off by default.
#[derive(Debug, Clone, Args)]
pub struct AccessArgs {
    /// API key(s) a client must send as `Authorization: Bearer <key>` (comma-separated or
    /// repeated; unset: no authentication).
    #[arg(long = "api-key", env = "TANDEM_API_KEY", value_delimiter = ',', hide_env_values = true, value_name = "KEY")]
    pub api_keys: Vec<String>,

    /// With --api-key: `/health`, `/health/live` and `/health/ready` need the key too
    /// (by default they stay open, for load balancers and orchestrators).
    #[arg(long, env = "TANDEM_PROTECT_HEALTH")]
    pub protect_health: bool,

    /// With --api-key: `/metrics` needs the key too (by default it stays open, for scrapers).
    #[arg(long, env = "TANDEM_PROTECT_METRICS")]
    pub protect_metrics: bool,

    /// Origin(s) whose pages may call the API from a browser (CORS), e.g.
    /// `https://app.example.com`; `*` for any (comma-separated or repeated; unset: no CORS).
    #[arg(long = "cors-origin", env = "TANDEM_CORS_ORIGIN", value_delimiter = ',', value_name = "ORIGIN")]
    pub cors_origins: Vec<String>,
}

impl ServeArgs {
    /// The tiers this process runs: the accurate one too unless Redis workers run it.
    pub fn tiers(&self) -> &'static [Tier] {
        if self.queue.redis_url.is_some() { &[Tier::Fast] } else { &[Tier::Fast, Tier::Accurate] }
    }
}

#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// `HOST:PORT` for the worker's own `GET /metrics`, `/health/live` and `/health/ready` (unset: none).
    #[arg(long, env = "TANDEM_METRICS_ADDR")]
    pub metrics_addr: Option<String>,

    #[command(flatten)]
    pub models: ModelArgs,

    #[command(flatten)]
    pub queue: QueueArgs,

    #[command(flatten)]
    pub workers: WorkerPoolArgs,
}
