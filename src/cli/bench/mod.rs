//! `tandem bench`: the built-in load generator, and a reference timing of ONNX Runtime alone.
//!
//! Three modes, each bounded in time and count and stopping by itself:
//!
//! - **HTTP load** (`--url`): `--concurrency` closed-loop connections send `POST /predict` with
//!   the image for `--duration` seconds after `--warmup`; `--mix health:N` adds N connections
//!   that poll `GET /health` alongside, with their own latency stats. See [`http`].
//! - **Jobs** (`--url --jobs N`): submits N predictions and follows each job to completion,
//!   reporting completion throughput and job latency. See [`jobs`].
//! - **Raw** (`--raw`): loads one tier's model in this process and times `Model::infer` alone
//!   per batch size, the ceiling the service is measured against. See [`raw`].
//!
//! Every mode prints a table, or one JSON object with `--json`. The service targets are ratios
//! of these numbers: `POST /predict` p50 at concurrency 1 against raw batch-1 p50 of the fast
//! tier; req/s at concurrency 8 against raw fast-tier images/s; worker jobs/s against raw
//! accurate-tier images/s at the best batch size.

mod http;
mod jobs;
mod raw;
mod stats;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use crate::cli::args::ModelArgs;
use crate::engine::{Spin, Tier};

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Base URL of a running `tandem serve` (e.g. http://127.0.0.1:8000). Required unless --raw.
    #[arg(long, env = "TANDEM_BENCH_URL", required_unless_present = "raw", conflicts_with = "raw")]
    pub url: Option<String>,

    /// Image file sent with every `POST /predict` (and preprocessed once for --raw).
    #[arg(long, env = "TANDEM_BENCH_IMAGE")]
    pub image: PathBuf,

    /// Concurrent `POST /predict` connections (with --jobs: concurrent submitters). 0 with
    /// --mix: only the mix routes, e.g. a `/health` probe in a process of its own beside
    /// another bench's load.
    #[arg(long, env = "TANDEM_BENCH_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u32).range(0..=4096))]
    pub concurrency: u32,

    /// Seconds timed (with --raw: per batch size). Requests after the end are not started.
    #[arg(long, env = "TANDEM_BENCH_DURATION", default_value_t = 10.0, value_parser = positive_seconds)]
    pub duration: f64,

    /// Paced load: total `POST /predict` requests per second across the connections (0: each
    /// connection sends its next request as soon as the last is answered). A light paced load
    /// shows the fast tier's latency while the accurate tier works (target 4).
    #[arg(long, env = "TANDEM_BENCH_RATE", default_value_t = 0.0, value_parser = non_negative_seconds)]
    pub rate: f64,

    /// Seconds of load before measuring starts (with --raw: per batch size); not recorded.
    #[arg(long, env = "TANDEM_BENCH_WARMUP", default_value_t = 1.0, value_parser = non_negative_seconds)]
    pub warmup: f64,

    /// Extra connections on other routes during the load, each with its own stats:
    /// `health:N` (GET /health), `live:N`, `ready:N`; comma-separated.
    #[arg(long, env = "TANDEM_BENCH_MIX", value_name = "ROUTE:N", value_parser = parse_mix, conflicts_with_all = ["raw", "jobs"])]
    pub mix: Option<Mix>,

    /// Milliseconds each --mix connection waits after an answer before its next request
    /// (0: back to back, which on a small machine takes CPU from `POST /predict`).
    #[arg(long, env = "TANDEM_BENCH_MIX_INTERVAL", default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub mix_interval: u64,

    /// Jobs mode: submit this many `POST /predict` and follow each `GET /job/{id}` to the end.
    #[arg(long, env = "TANDEM_BENCH_JOBS", value_parser = clap::value_parser!(u64).range(1..=1_000_000), conflicts_with = "raw")]
    pub jobs: Option<u64>,

    /// Jobs mode: milliseconds between two polls of the same job.
    #[arg(long, env = "TANDEM_BENCH_POLL_INTERVAL", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub poll_interval: u64,

    /// Jobs mode: seconds to wait for the last jobs once all are submitted; unfinished ones are
    /// reported as timed out.
    #[arg(long, env = "TANDEM_BENCH_JOB_TIMEOUT", default_value_t = 120.0, value_parser = positive_seconds)]
    pub job_timeout: f64,

    /// Seconds one HTTP request may take before it counts as a transport error.
    #[arg(long, env = "TANDEM_BENCH_TIMEOUT", default_value_t = 30.0, value_parser = positive_seconds)]
    pub timeout: f64,

    /// Send each request as an Open Inference Protocol inference on MODEL instead of
    /// `POST /predict` (the image as binary BYTES, its top-5 classes in JSON), e.g.
    /// `mobilenet_v2` (the fast model alone) or `tandem` (the fast answer and a job).
    #[arg(long, env = "TANDEM_BENCH_V2", value_name = "MODEL", conflicts_with_all = ["raw", "jobs"])]
    pub v2: Option<String>,

    /// Make every `POST /predict` body different (a JPEG comment with a counter after the
    /// image's first marker: the same pixels), so that a result cache (`serve --cache-ttl`)
    /// never hits. JPEG images only.
    #[arg(long, env = "TANDEM_BENCH_UNIQUE", conflicts_with_all = ["raw", "v2"])]
    pub unique: bool,

    /// Print one JSON object instead of a table.
    #[arg(long, env = "TANDEM_BENCH_JSON")]
    pub json: bool,

    /// Time ONNX Runtime alone, in this process, on the same image (no HTTP).
    #[arg(long, env = "TANDEM_BENCH_RAW", help_heading = "Raw mode (--raw)")]
    pub raw: bool,

    /// Which tier's model --raw times.
    #[arg(long, env = "TANDEM_BENCH_TIER", value_enum, default_value_t = Tier::Fast, help_heading = "Raw mode (--raw)")]
    pub tier: Tier,

    /// Batch sizes --raw times, one after the other.
    #[arg(long, env = "TANDEM_BENCH_BATCH", value_delimiter = ',', default_values_t = [1, 2, 4, 8], value_parser = clap::value_parser!(u32).range(1..=1024), help_heading = "Raw mode (--raw)")]
    pub batch: Vec<u32>,

    /// --raw: sessions run side by side, each on its own thread with intra-threads / N ORT
    /// threads, summed; one figure per N and batch size (default: 1, and the tier's lanes as
    /// `serve` sets them, e.g. --fast-lanes, if that is more).
    #[arg(long, env = "TANDEM_BENCH_LANES", value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=64), help_heading = "Raw mode (--raw)")]
    pub lanes: Vec<u32>,

    /// --raw: stop each batch size after this many model runs, if --duration has not run out first.
    #[arg(long, env = "TANDEM_BENCH_ITERATIONS", value_parser = clap::value_parser!(u64).range(1..), help_heading = "Raw mode (--raw)")]
    pub iterations: Option<u64>,

    /// --raw: when idle ORT threads spin (default: as `serve` does, --fast-spin for the fast
    /// tier, off for the accurate). Every raw run has the machine to itself, so `idle` spins
    /// in every run, as `always` does, but stops after each.
    #[arg(long, env = "TANDEM_BENCH_SPINNING", value_enum, help_heading = "Raw mode (--raw)")]
    pub spinning: Option<Spin>,

    #[command(flatten, next_help_heading = "Model (--raw)")]
    pub models: ModelArgs,
}

/// `--mix`: how many connections hit each extra route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix(pub Vec<(MixRoute, u32)>);

/// A cheap route polled alongside `POST /predict`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MixRoute {
    Health,
    Live,
    Ready,
}

impl MixRoute {
    pub fn name(self) -> &'static str {
        match self {
            MixRoute::Health => "health",
            MixRoute::Live => "live",
            MixRoute::Ready => "ready",
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            MixRoute::Health => "/health",
            MixRoute::Live => "/health/live",
            MixRoute::Ready => "/health/ready",
        }
    }
}

fn parse_mix(text: &str) -> Result<Mix, String> {
    let mut routes: Vec<(MixRoute, u32)> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, count)) = part.split_once(':') else {
            return Err(format!("`{part}` is not ROUTE:N (e.g. health:2)"));
        };
        let route = match name.trim() {
            "health" => MixRoute::Health,
            "live" => MixRoute::Live,
            "ready" => MixRoute::Ready,
            other => return Err(format!("unknown route `{other}` (expected health, live or ready)")),
        };
        let count: u32 = count.trim().parse().map_err(|_| format!("`{count}` in `{part}` is not a count"))?;
        if !(1..=1024).contains(&count) {
            return Err(format!("`{part}`: the count must be between 1 and 1024"));
        }
        if routes.iter().any(|(r, _)| *r == route) {
            return Err(format!("route `{name}` is given twice"));
        }
        routes.push((route, count));
    }
    if routes.is_empty() {
        return Err("expected ROUTE:N (e.g. health:2)".into());
    }
    Ok(Mix(routes))
}

fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Ok(s),
        _ => Err(format!("`{text}` is not a number of seconds in (0, 86400]")),
    }
}

fn non_negative_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && (0.0..=86_400.0).contains(&s) => Ok(s),
        _ => Err(format!("`{text}` is not a number of seconds in [0, 86400]")),
    }
}

/// Runs the mode the flags select. `Ok(false)`: the run finished but measured nothing useful
/// (no request or job succeeded); the report is printed either way.
pub fn run(args: &BenchArgs) -> anyhow::Result<bool> {
    let image = std::fs::read(&args.image).with_context(|| format!("cannot read {}", args.image.display()))?;
    if image.is_empty() {
        anyhow::bail!("{} is empty", args.image.display());
    }
    if args.raw {
        args.models.configure_decode_memory();
        return raw::run(args, &image);
    }
    let Some(url) = &args.url else {
        anyhow::bail!("--url is required unless --raw is given");
    };
    if args.concurrency == 0 && (args.mix.is_none() || args.jobs.is_some()) {
        anyhow::bail!("--concurrency 0 needs --mix (and no --jobs): there would be nothing to send");
    }
    let mut target = Target::new(url, &args.image, image, Duration::from_secs_f64(args.timeout))?;
    if let Some(model) = &args.v2 {
        target = target.speaking_v2(model)?;
    }
    if args.unique {
        target = target.with_unique_bodies()?;
    }
    target.check_reachable()?;
    match args.jobs {
        Some(count) => jobs::run(args, &target, count),
        None => http::run(args, &target),
    }
}

/// The service under test and the request body every `POST /predict` carries.
pub(crate) struct Target {
    /// Without a trailing slash.
    pub base: String,
    pub image: std::sync::Arc<[u8]>,
    pub image_name: String,
    pub content_type: &'static str,
    pub timeout: Duration,
    /// `--v2`: where each request goes instead, its body and its JSON header's length.
    pub v2: Option<V2Request>,
    /// `--unique`: the count of bodies sent, which each body carries in a JPEG comment.
    pub unique: Option<std::sync::atomic::AtomicU64>,
}

/// One Open Inference Protocol inference, prepared once.
pub(crate) struct V2Request {
    pub url: String,
    pub body: std::sync::Arc<[u8]>,
    pub header_length: String,
}

impl Target {
    fn new(url: &str, path: &Path, image: Vec<u8>, timeout: Duration) -> anyhow::Result<Self> {
        let base = url.trim().trim_end_matches('/').to_owned();
        let rest = base.strip_prefix("http://").or_else(|| base.strip_prefix("https://"));
        if rest.is_none_or(|host| host.is_empty() || host.contains(['?', '#'])) {
            anyhow::bail!("--url must be an http:// or https:// base URL such as http://127.0.0.1:8000, got `{url}`");
        }
        Ok(Self {
            base,
            image: image.into(),
            image_name: path.display().to_string(),
            content_type: content_type(path),
            timeout,
            v2: None,
            unique: None,
        })
    }

    /// Every body different (`--unique`): the image must be a JPEG, whose comment carries a count.
    fn with_unique_bodies(mut self) -> anyhow::Result<Self> {
        if !self.image.starts_with(&[0xFF, 0xD8]) {
            anyhow::bail!("--unique needs a JPEG image (it adds a JPEG comment to each body)");
        }
        // From a random count: a second bench against the same cache sends new bytes too.
        self.unique = Some(std::sync::atomic::AtomicU64::new(uuid::Uuid::new_v4().as_u64_pair().0));
        Ok(self)
    }

    /// The image with a comment segment holding `count` right after its start-of-image marker.
    fn unique_body(&self, count: u64) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.image.len() + 12);
        // SOI, then COM: marker, a length of 10 (itself and 8 bytes), the count.
        body.extend_from_slice(&[0xFF, 0xD8, 0xFF, 0xFE, 0x00, 0x0A]);
        body.extend_from_slice(&count.to_be_bytes());
        body.extend_from_slice(&self.image[2..]);
        body
    }

    /// Requests go to `POST /v2/models/{model}/infer`, with the binary-data extension.
    fn speaking_v2(mut self, model: &str) -> anyhow::Result<Self> {
        let length = u32::try_from(self.image.len()).context("the image is too large for a BYTES element")?;
        let mut element = length.to_le_bytes().to_vec();
        element.extend_from_slice(&self.image);
        let header = serde_json::json!({
            "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                        "parameters": {"binary_data_size": element.len()}}],
            "outputs": [{"name": "probabilities", "parameters": {"classification": 5}}],
        });
        let header = serde_json::to_vec(&header)?;
        let header_length = header.len().to_string();
        let body: Vec<u8> = [header, element].concat();
        self.v2 =
            Some(V2Request { url: self.url(&format!("/v2/models/{model}/infer")), body: body.into(), header_length });
        Ok(self)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// One keep-alive connection's client: 4xx/5xx are answers, not errors.
    pub fn agent(&self) -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(self.timeout))
            .max_idle_connections(4)
            .max_idle_connections_per_host(4)
            .user_agent(concat!("tandem-bench/", env!("CARGO_PKG_VERSION")))
            .build()
            .into()
    }

    /// `GET /health` once, so an unreachable service is one clear error, not a table of failures.
    fn check_reachable(&self) -> anyhow::Result<()> {
        let url = self.url("/health");
        let response = self.agent().get(&url).call().with_context(|| format!("cannot reach {url}"))?;
        let status = response.status().as_u16();
        if status != 200 {
            anyhow::bail!("GET {url} answered {status}: is this a tandem service?");
        }
        Ok(())
    }

    /// Sends one `POST /predict`; the body is read to the end so the connection is reused.
    pub fn predict(&self, agent: &ureq::Agent) -> Result<(u16, Vec<u8>), ureq::Error> {
        let response = match &self.v2 {
            Some(v2) => agent
                .post(&v2.url)
                .header("content-type", "application/octet-stream")
                .header("inference-header-content-length", &v2.header_length)
                .send(&v2.body[..])?,
            None => {
                let request = agent.post(self.url("/predict")).header("content-type", self.content_type);
                match &self.unique {
                    Some(count) => {
                        let body = self.unique_body(count.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
                        request.send(&body[..])?
                    }
                    None => request.send(&self.image[..])?,
                }
            }
        };
        let status = response.status().as_u16();
        let body = response.into_body().read_to_vec()?;
        Ok((status, body))
    }

    /// Sends one GET and reads the body to the end.
    pub fn get(&self, agent: &ureq::Agent, url: &str) -> Result<(u16, Vec<u8>), ureq::Error> {
        let response = agent.get(url).call()?;
        let status = response.status().as_u16();
        let body = response.into_body().read_to_vec()?;
        Ok((status, body))
    }
}

/// The `image/*` type the service expects for the file's extension.
fn content_type(path: &Path) -> &'static str {
    let extension = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("png") => "image/png",
        Some("webp") => "image/webp",
        Some("bmp") => "image/bmp",
        Some("gif") => "image/gif",
        _ => "application/octet-stream",
    }
}

/// Prints the report as one JSON line, or its text form.
fn print_report(json: bool, report: &impl serde::Serialize, text: impl FnOnce() -> String) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(report)?)?;
    } else {
        write!(out, "{}", text())?;
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_routes_and_counts() {
        assert_eq!(parse_mix("health:2"), Ok(Mix(vec![(MixRoute::Health, 2)])));
        assert_eq!(parse_mix("health:1, ready:3"), Ok(Mix(vec![(MixRoute::Health, 1), (MixRoute::Ready, 3)])));
    }

    #[test]
    fn mix_rejects_bad_forms() {
        for bad in ["", "health", "health:", "health:x", "health:0", "predict:2", "health:1,health:2", "health:5000"] {
            assert!(parse_mix(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn target_url_is_validated_and_trimmed() {
        let t = Target::new("http://127.0.0.1:8000/", Path::new("a.JPG"), vec![1], Duration::from_secs(1)).unwrap();
        assert_eq!(t.url("/health"), "http://127.0.0.1:8000/health");
        assert_eq!(t.content_type, "image/jpeg");
        for bad in ["127.0.0.1:8000", "ftp://x", "http://", "http://x/?a=1"] {
            assert!(Target::new(bad, Path::new("a.jpg"), vec![1], Duration::from_secs(1)).is_err(), "{bad}");
        }
    }

    #[test]
    fn unique_bodies_are_different_bytes_of_the_same_pixels() {
        let shared = std::env::var_os("TANDEM_SHARED_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
        let Ok(photo) = std::fs::read(shared.join("images/sample_01.jpg")) else { return };
        let t = Target::new("http://127.0.0.1:1", Path::new("a.jpg"), photo.clone(), Duration::from_secs(1))
            .and_then(Target::with_unique_bodies)
            .expect("a JPEG target");
        let (a, b) = (t.unique_body(0), t.unique_body(1));
        assert_ne!(a, b);
        let config = crate::pipeline::PreprocessConfig::default();
        let pixels = |bytes: &[u8]| {
            let mut out = vec![0.0; config.tensor_len()];
            crate::pipeline::preprocess_into(bytes, &config, &mut out).expect("decodes");
            out
        };
        assert_eq!(pixels(&a), pixels(&photo), "the comment changes no pixel");
        let not_jpeg = Target::new("http://127.0.0.1:1", Path::new("a.png"), vec![0x89, b'P'], Duration::from_secs(1));
        assert!(not_jpeg.and_then(Target::with_unique_bodies).is_err());
    }

    #[test]
    fn seconds_parsers() {
        assert!(positive_seconds("0").is_err());
        assert!(positive_seconds("nan").is_err());
        assert_eq!(positive_seconds("2.5"), Ok(2.5));
        assert_eq!(non_negative_seconds("0"), Ok(0.0));
        assert!(non_negative_seconds("-1").is_err());
    }
}
