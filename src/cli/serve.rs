//! `tandem serve`: wiring the flags to the fast tier, the queue, the HTTP API and, on the
//! embedded queue, the accurate tier's worker in this process.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio::sync::watch;

use super::args::{AccessArgs, FastTierArgs, ModelArgs, QueueArgs, WebhookArgs, WorkerPoolArgs, parse_seconds};
use super::refine::RefineArgs;
use super::startup::{bind, check_redis_url, connect_redis, runtime};
use super::tiers::{self, Run};
use super::worker::{start_accurate, worker_config};
use crate::api::{self, Access, Limits};
use crate::engine::Tier;
use crate::labels::Labels;
use crate::queue::{EmbeddedQueue, JobQueue, ReplicaAcks};

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on: `HOST:PORT`, the host a name or an IP (`0.0.0.0:8000`: every interface).
    #[arg(long, env = "TANDEM_ADDR", default_value = "127.0.0.1:8000")]
    pub addr: String,

    #[command(flatten)]
    pub models: ModelArgs,

    #[command(flatten)]
    pub queue: QueueArgs,

    /// Redis replicas that must have a job before `POST /predict` hands out its id (Redis `WAIT`).
    ///
    /// Redis replicates asynchronously, so without it a failover can lose the jobs acknowledged
    /// just before it (their ids then answer 404). A job the replicas do not acknowledge within
    /// --redis-wait-timeout is withdrawn and answered `"job_id": null` with an `async_error`.
    /// 0: off.
    #[arg(long, env = "TANDEM_REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,

    /// Seconds --redis-wait-replicas waits for the replicas.
    #[arg(long, env = "TANDEM_REDIS_WAIT_TIMEOUT", default_value_t = 0.5, value_parser = parse_seconds)]
    pub redis_wait_timeout: f64,

    #[command(flatten)]
    pub workers: WorkerPoolArgs,

    #[command(flatten)]
    pub fast: FastTierArgs,

    #[command(flatten)]
    pub refine: RefineArgs,

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

    /// Seconds a `GET /job/{id}?wait=` may wait for the job to finish.
    ///
    /// A longer `wait` is cut to it.
    #[arg(long, env = "TANDEM_MAX_WAIT", default_value_t = 30.0, value_parser = parse_seconds)]
    pub max_wait: f64,

    /// Clients waiting for jobs at once (long-polls and event streams); more get 429.
    #[arg(long, env = "TANDEM_MAX_WATCHERS", default_value_t = 10_000)]
    pub max_watchers: usize,

    /// Seconds a client has to send its request headers (against slow clients).
    #[arg(long, env = "TANDEM_HEADER_TIMEOUT", default_value_t = 10.0, value_parser = parse_seconds)]
    pub header_timeout: f64,

    /// Seconds to finish open requests (and embedded jobs) once told to stop.
    ///
    /// On SIGTERM or Ctrl-C, `serve` stops accepting, then has this long for the requests in
    /// flight and, on the embedded queue, the jobs running. Set it below the stop timeout of
    /// whatever stops the process (`docker stop`: 10 s by default).
    #[arg(long, env = "TANDEM_DRAIN_TIMEOUT", default_value_t = 30.0, value_parser = parse_seconds)]
    pub drain_timeout: f64,

    #[command(flatten)]
    pub access: AccessArgs,

    #[command(flatten)]
    pub webhooks: WebhookArgs,
}

impl ServeArgs {
    /// The tiers this process runs: the accurate one too unless Redis workers run it.
    pub fn tiers(&self) -> &'static [Tier] {
        if self.queue.redis_url.is_some() { &[Tier::Fast] } else { &[Tier::Fast, Tier::Accurate] }
    }
}

pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    runtime()?.block_on(run_async(args))
}

async fn run_async(args: &ServeArgs) -> anyhow::Result<()> {
    // Everything that can be checked without the models is checked first, and the port is
    // taken, so a typo or a port in use is reported at once rather than after the models load.
    // Connections made while they load wait in the listen backlog and are answered after.
    let access = access(&args.access)?;
    if let Some(url) = &args.queue.redis_url {
        check_redis_url(url)?;
    }
    let webhook_allow = args.webhooks.allow_list()?;
    // With Redis the workers send webhooks; embedded, this process does, so it needs the secret.
    let webhook_sender = match args.queue.redis_url {
        Some(_) => None,
        None => args.webhooks.sender(args.queue.reclaim_after())?,
    };
    let listener = bind(&args.addr).await?;
    // Then the model files: missing ones are named (and pulled, with --pull-missing).
    tiers::ensure_files(&args.models, args.tiers(), "--labels")?;
    args.models.configure_decode_memory();
    crate::metrics::install();
    crate::metrics::register_serve_series();

    let labels = Arc::new(Labels::load(&args.models.labels_path())?);
    let pool = tiers::decode_pool(&args.fast)?;
    let answer = Run::Answer { fast: &args.fast, max_inflight: args.max_inflight, pool: pool.clone() };
    let fast = tiers::start(&args.models, &labels, answer)?;
    tracing::info!(model = fast.model_name(), "fast tier loaded");

    let (stop_workers, workers_stopped) = watch::channel(false);
    let stop_webhooks = watch::Sender::new(false);
    let mut policy = args.queue.policy();
    policy.cache = args.refine.cache_policy();
    let (queue, embedded_worker) = match &args.queue.redis_url {
        Some(url) => {
            let acks = ReplicaAcks {
                replicas: args.redis_wait_replicas,
                timeout: Duration::from_secs_f64(args.redis_wait_timeout.max(0.001)),
            };
            (connect_redis(url, &args.queue, policy, acks).await?, None)
        }
        None => {
            let queue = JobQueue::Embedded(EmbeddedQueue::new(policy));
            let accurate = start_accurate(&args.models, &labels, &args.workers)?;
            let handle = tokio::spawn(crate::worker::run(
                queue.clone(),
                accurate,
                worker_config(&args.workers),
                workers_stopped,
            ));
            if let Some(config) = webhook_sender {
                tokio::spawn(crate::webhooks::run(queue.clone(), config, stop_webhooks.subscribe()));
            }
            (queue, Some(handle))
        }
    };

    let limits = Limits {
        max_body: args.max_body,
        max_inflight: args.max_inflight,
        request_timeout: Duration::from_secs_f64(args.request_timeout.max(0.001)),
        max_uploads: args.max_uploads.max(1),
        upload_memory: usize::try_from(args.upload_memory.as_u64()).unwrap_or(usize::MAX),
        body_timeout: Duration::from_secs_f64(args.body_timeout.max(0.001)),
        top_k: tiers::TOP_K,
        max_wait: Duration::from_secs_f64(args.max_wait),
        max_watchers: args.max_watchers.max(1),
        webhook_allow,
    };
    let accurate_model = args.models.accurate_model.file_name().map(|n| n.to_string_lossy().into_owned());
    let accurate_model = accurate_model.unwrap_or_else(|| args.models.accurate_model.display().to_string());
    let state = api::AppState::new(fast, accurate_model, queue.clone(), limits, access, pool, args.refine.refinement());
    let router = api::router(state.clone());
    let local = listener.local_addr().map_or_else(|_| args.addr.clone(), |a| a.to_string());
    tracing::info!(addr = %local, queue = queue.backend(), "tandem serving");
    let drain = Duration::from_secs_f64(args.drain_timeout);
    let (stopping, stop_asked) = crate::shutdown::signal_with_deadline(drain);
    let stopping = async move {
        stopping.await;
        state.release_watchers();
    };
    api::server::serve(listener, router, Duration::from_secs_f64(args.header_timeout.max(0.001)), drain, stopping)
        .await;

    if let Some(handle) = embedded_worker {
        let _ = stop_workers.send(true);
        // Jobs finishing in the drain still send their webhooks until the process ends.
        stop_webhooks.send_replace(true);
        let deadline = stop_asked.get().copied().unwrap_or_else(|| tokio::time::Instant::now() + drain);
        if tokio::time::timeout_at(deadline, handle).await.is_err() {
            tracing::warn!("embedded jobs still running after --drain-timeout; they are dropped");
        }
    }
    tracing::info!("tandem stopped");
    Ok(())
}

/// The `--api-key` / `--cors-origin` settings, checked.
fn access(args: &AccessArgs) -> anyhow::Result<Access> {
    let api_keys: Vec<String> = args.api_keys.iter().map(|k| k.trim().to_owned()).collect();
    // A blank key must not quietly mean "no authentication".
    if api_keys.iter().any(String::is_empty) {
        anyhow::bail!("--api-key (TANDEM_API_KEY) has an empty key: give each key, or leave it unset");
    }
    if (args.protect_health || args.protect_metrics) && api_keys.is_empty() {
        anyhow::bail!("--protect-health and --protect-metrics need --api-key");
    }
    for origin in &args.cors_origins {
        api::check_cors_origin(origin).map_err(anyhow::Error::msg)?;
    }
    Ok(Access {
        api_keys,
        open_health: !args.protect_health,
        open_metrics: !args.protect_metrics,
        cors_origins: args.cors_origins.clone(),
    })
}
