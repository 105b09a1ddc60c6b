//! The flag groups several subcommands share, and the parsers of their values.
//!
//! Every option is a `--flag` with a `TANDEM_*` environment variable, and `--help` shows its
//! default. A group is flattened into each subcommand that uses it (`#[command(flatten)]`), so a
//! flag means the same thing everywhere it appears. What a group's flags mean for one tier
//! (model path, preprocessing, lanes, spinning, batching, priority) is worked out in one place,
//! [`super::tiers`]; this file only declares them.
//!
//! Help texts: a doc comment's first paragraph is the short help (`-h`), the whole comment the
//! long help (`--help`). Measured figures stay out of both: they go in docs/PERFORMANCE.md.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use crate::engine::{Priority, Spin};

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
    /// `file` as given if absolute, else under `--model-dir`.
    pub fn resolve(&self, file: &Path) -> PathBuf {
        if file.is_absolute() { file.to_owned() } else { self.model_dir.join(file) }
    }

    pub fn labels_path(&self) -> PathBuf {
        self.resolve(&self.labels)
    }

    /// ONNX Runtime intra-op threads per model: `--intra-threads`, or one per core if 0.
    pub fn intra_threads(&self) -> usize {
        if self.intra_threads > 0 {
            self.intra_threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// Sets the process's decode-memory ceiling ([`crate::pipeline::budget`]) from `--decode-memory`.
    pub fn configure_decode_memory(&self) {
        let limit = self.decode_memory.map_or_else(crate::pipeline::budget::default_limit, |b| b.as_u64());
        crate::pipeline::budget::configure(limit);
        tracing::debug!(bytes = limit, "decode memory limit");
    }
}

/// Where jobs go and how long they live.
#[derive(Debug, Clone, Args)]
pub struct QueueArgs {
    /// Redis URL (e.g. redis://127.0.0.1:6379/), or Redis Sentinel's
    /// (redis+sentinel://HOST[:PORT][,HOST[:PORT]...]/SERVICE[/DB]: the sentinels, and the name
    /// they know the primary by; a failover is followed without a restart). Unset: the embedded
    /// in-process queue.
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
            cache: crate::queue::CachePolicy::default(),
        }
    }

    pub fn reclaim_after(&self) -> Duration {
        Duration::from_secs_f64(self.reclaim_after.max(0.001))
    }
}

/// How the fast tier batches and where it stands among the threads (`serve` only: the fast tier
/// answers `POST /predict`). The accurate tier's counterpart is [`WorkerPoolArgs`].
#[derive(Debug, Clone, Args)]
pub struct FastTierArgs {
    /// Largest batch the fast model runs (per lane); requests already waiting are batched together.
    ///
    /// Which size serves best depends on the model, the lanes and the machine: docs/PERFORMANCE.md.
    /// `--max-batch`, the old name, still works.
    #[arg(long = "fast-max-batch", alias = "max-batch", env = "TANDEM_MAX_BATCH", default_value_t = 1)]
    pub max_batch: usize,

    /// Milliseconds the fast tier may hold a request back to fill a batch (0: never).
    ///
    /// `--max-batch-delay`, the old name, still works.
    #[arg(
        long = "fast-max-batch-delay",
        alias = "max-batch-delay",
        env = "TANDEM_MAX_BATCH_DELAY",
        default_value_t = 0
    )]
    pub max_batch_delay_ms: u64,

    /// Nice value of the fast tier's inference threads (ONNX Runtime's included), 0 to 19.
    ///
    /// Above the HTTP threads' 0, so accepting and parsing requests and `/health` preempt a
    /// running model rather than wait for it; far above the accurate tier's SCHED_IDLE. The
    /// accurate tier's counterpart is --accurate-priority, a class rather than a number: its
    /// `normal` is nice 0, `low` nice 19 and `idle` below every nice value. Measurements:
    /// docs/PERFORMANCE.md.
    #[arg(long, env = "TANDEM_FAST_NICE", default_value_t = 5, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub fast_nice: i32,
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
    /// `normal` leaves the process's own priority. In `tandem worker` it applies to the whole
    /// process. The fast tier's counterpart is --fast-nice, a nice value rather than a class:
    /// from `normal`'s 0 to `low`'s 19, all above `idle`.
    #[arg(long, env = "TANDEM_ACCURATE_PRIORITY", value_enum, default_value_t = Priority::Idle)]
    pub accurate_priority: Priority,
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

/// `--mean`: `R,G,B`, three finite numbers separated by commas (the one form, for the flag and
/// the environment variable alike).
pub fn parse_rgb(text: &str) -> Result<[f32; 3], String> {
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

/// `--std`: as [`parse_rgb`], and each above zero (it is divided by).
pub fn parse_positive_rgb(text: &str) -> Result<[f32; 3], String> {
    let rgb = parse_rgb(text)?;
    if rgb.iter().any(|&v| v <= 0.0) {
        return Err("each of R,G,B must be above 0".into());
    }
    Ok(rgb)
}

/// Seconds: a finite number above zero (a Duration cannot hold infinity).
pub fn parse_seconds(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds > 0.0 && seconds < 1e9 => Ok(seconds),
        _ => Err(format!("{text:?} is not a number of seconds above 0")),
    }
}

/// A size in bytes: a plain number, or one with a unit (`512MiB`, `2GB`, `1.5 GiB`), above 0.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let size = text
        .trim()
        .parse::<bytesize::ByteSize>()
        .map_err(|err| format!("{text:?} is not a size (e.g. 512MiB, 2GB or a number of bytes): {err}"))?;
    match size.as_u64() {
        0 => Err("must be above 0".into()),
        bytes => Ok(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::tiers;
    use crate::cli::{Cli, parse_serve};
    use crate::engine::Tier;
    use clap::{CommandFactory, Parser};

    /// One form for --mean/--std, the documented `R,G,B`, for the flag and the variable alike.
    #[test]
    fn mean_and_std_take_one_comma_triple() {
        let serve = parse_serve(&["--mean", "0.5,0.5,0.5", "--std", "0.25, 0.5 ,1"]);
        assert_eq!(tiers::preprocess(&serve.models, Tier::Fast).mean, [0.5; 3]);
        assert_eq!(serve.models.std, [0.25, 0.5, 1.0]);
        assert_eq!(parse_serve(&[]).models.mean, [0.485, 0.456, 0.406]);
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
        let bytes = |args: &[&str]| parse_serve(args).queue.policy().max_queue_bytes;
        assert_eq!(bytes(&[]), 1 << 30);
        assert_eq!(bytes(&["--max-queue-bytes", "512MiB"]), 512 << 20);
        assert_eq!(bytes(&["--max-queue-bytes", "2GB"]), 2_000_000_000);
        assert_eq!(bytes(&["--max-queue-bytes", "1.5 KiB"]), 1536);
        assert_eq!(bytes(&["--max-queue-bytes", "8388608"]), 8 << 20);
        for bad in ["0", "0MiB", "lots", "12 parsecs", "-1", ""] {
            assert!(Cli::try_parse_from(["tandem", "serve", "--max-queue-bytes", bad]).is_err(), "{bad:?}");
        }
    }

    /// `idle` by default; the old boolean spellings still work.
    #[test]
    fn fast_spin_defaults_to_idle_and_takes_booleans() {
        let fast_spin = |args: &[&str]| parse_serve(args).models.fast_spin;
        assert_eq!(fast_spin(&[]), Spin::Idle);
        assert_eq!(fast_spin(&["--fast-spin", "true"]), Spin::Always);
        assert_eq!(fast_spin(&["--fast-spin", "false"]), Spin::Off);
        assert_eq!(fast_spin(&["--fast-spin", "always"]), Spin::Always);
    }

    /// `--fast-max-batch` and `--fast-max-batch-delay` mirror the accurate tier's flags; the
    /// old names stay as aliases.
    #[test]
    fn fast_batching_flags_take_their_old_names_too() {
        let fast = |args: &[&str]| {
            let serve = parse_serve(args);
            (serve.fast.max_batch, serve.fast.max_batch_delay_ms)
        };
        assert_eq!(fast(&[]), (1, 0));
        assert_eq!(fast(&["--fast-max-batch", "4", "--fast-max-batch-delay", "2"]), (4, 2));
        assert_eq!(fast(&["--max-batch", "3", "--max-batch-delay", "5"]), (3, 5));
        assert!(Cli::try_parse_from(["tandem", "serve", "--max-batch", "2", "--fast-max-batch", "3"]).is_err());
    }
}

/// Webhooks: a job's final state POSTed to the `callback_url` its `POST /predict` gave.
/// `serve` checks callback URLs against --webhook-allow; whoever runs the accurate tier
/// (`serve` on the embedded queue, `tandem worker` with Redis) sends them, signed.
#[derive(Debug, Clone, Args)]
pub struct WebhookArgs {
    /// Host(s) webhooks may be sent to: `host`, `host:port` or `*.domain` (comma-separated or
    /// repeated; unset: webhooks are off and a callback_url is refused with 422).
    #[arg(long = "webhook-allow", env = "TANDEM_WEBHOOK_ALLOW", value_delimiter = ',', value_name = "HOST")]
    pub webhook_allow: Vec<String>,

    /// Key that signs webhooks (HMAC-SHA256, Standard Webhooks headers): `whsec_<base64>` or
    /// any text of 16 bytes or more. Needed wherever webhooks are sent.
    #[arg(long = "webhook-secret", env = "TANDEM_WEBHOOK_SECRET", hide_env_values = true, value_name = "SECRET")]
    pub webhook_secret: Option<String>,

    /// Attempts at each webhook before it is given up; the pause after a failed one starts at
    /// a second and doubles, up to a minute.
    #[arg(long = "webhook-attempts", env = "TANDEM_WEBHOOK_ATTEMPTS", default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub webhook_attempts: u32,

    /// Seconds one webhook attempt may take (connect, send, the receiver's answer).
    #[arg(long = "webhook-timeout", env = "TANDEM_WEBHOOK_TIMEOUT", default_value_t = 10.0, value_parser = parse_seconds)]
    pub webhook_timeout: f64,

    /// Webhook POSTs in flight at once, per process.
    #[arg(long = "webhook-concurrency", env = "TANDEM_WEBHOOK_CONCURRENCY", default_value_t = 32)]
    pub webhook_concurrency: usize,
}

impl WebhookArgs {
    /// The allow list, checked.
    pub fn allow_list(&self) -> anyhow::Result<crate::webhooks::AllowList> {
        crate::webhooks::AllowList::parse(&self.webhook_allow).map_err(anyhow::Error::msg)
    }

    /// The sender's settings, if webhooks are on here; they need --webhook-secret.
    /// `reclaim_after`: another process takes over a webhook its sender stopped renewing.
    pub fn sender(&self, reclaim_after: Duration) -> anyhow::Result<Option<crate::webhooks::WebhookConfig>> {
        let allow = self.allow_list()?;
        if !allow.is_enabled() {
            return Ok(None);
        }
        let Some(secret) = &self.webhook_secret else {
            anyhow::bail!(
                "--webhook-allow needs --webhook-secret (TANDEM_WEBHOOK_SECRET) here: webhooks are sent signed"
            );
        };
        let secret = crate::webhooks::Secret::parse(secret).map_err(anyhow::Error::msg)?;
        let timeout = Duration::from_secs_f64(self.webhook_timeout.max(0.001));
        Ok(Some(crate::webhooks::WebhookConfig {
            allow,
            secret,
            max_attempts: self.webhook_attempts,
            timeout,
            concurrency: self.webhook_concurrency.max(1),
            first_pause: Duration::from_secs(1),
            renew_every: (reclaim_after / 3).max(Duration::from_millis(10)),
            render: crate::api::webhook_body,
        }))
    }
}
