//! `tandem serve` and `tandem worker`: wiring configuration to the engine, queue, API and worker.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::api::{self, Access, Limits};
use crate::config::{AccessArgs, ModelArgs, QueueArgs, ServeArgs, Tier, WorkerArgs, WorkerPoolArgs};
use crate::engine::{BatchConfig, Classifier, DecodeOn, ModelConfig, ThreadPriority, WorkPool};
use crate::labels::Labels;
use crate::queue::{EmbeddedQueue, JobQueue, RedisQueue, RedisQueueConfig};
use crate::worker::{self, WorkerConfig};

/// How long `serve` waits for open requests once told to stop.
const DRAIN: Duration = Duration::from_secs(30);

pub fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    runtime()?.block_on(serve_async(args))
}

pub fn worker(args: &WorkerArgs) -> anyhow::Result<()> {
    // The heartbeat first, at the priority the process was started with: a starved worker must
    // not drop out of the live workers nor lose its jobs' leases (`queue::presence`).
    crate::queue::presence::start_heartbeat_thread().context("cannot start the heartbeat thread")?;
    // A worker process is all background work: lower the whole process (every thread created
    // from here on inherits it) so a `serve` on the same machine wins the cores.
    if let Err(err) = crate::engine::priority::apply_to_current_thread(args.workers.accurate_priority) {
        tracing::warn!(error = %err, "cannot lower the worker's priority");
    }
    runtime()?.block_on(worker_async(args))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

async fn serve_async(args: &ServeArgs) -> anyhow::Result<()> {
    // Everything that can be checked without the models is checked first, and the port is
    // taken, so a typo or a port in use is reported at once rather than after the models load.
    // Connections made while they load wait in the listen backlog and are answered after.
    let access = access(&args.access)?;
    if let Some(url) = &args.queue.redis_url {
        check_redis_url(url)?;
    }
    let listener = bind(&args.addr).await?;
    // Then the model files: missing ones are named (and pulled, with --pull-missing).
    crate::models::pull::pull_missing(&args.models, args.tiers())?;
    args.models.configure_decode_memory();
    crate::metrics::install();
    crate::metrics::register_serve_series();

    let labels = Arc::new(Labels::load(&args.models.labels_path())?);
    // Decoding and large-body parsing, off the runtime, one thread per core, at the fast
    // tier's priority: below the threads that accept requests and answer `/health`.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pool = WorkPool::start("decode", cores, ThreadPriority::Nice(args.fast_nice))
        .context("cannot start the decode threads")?;
    let fast_batching = BatchConfig {
        max_batch: args.max_batch.max(1),
        max_delay: Duration::from_millis(args.max_batch_delay_ms),
        queue_capacity: args.max_inflight.max(1),
        top_k: TOP_K,
        tier: Tier::Fast,
        priority: ThreadPriority::Nice(args.fast_nice),
        decode_on: DecodeOn::InferenceThreadWhenIdle,
        pool: Some(pool.clone()),
    };
    let fast = Classifier::start(model_config(&args.models, &labels, Tier::Fast), fast_batching)?;
    tracing::info!(model = fast.model_name(), "fast tier loaded");

    let (stop_workers, workers_stopped) = watch::channel(false);
    let (queue, embedded_worker) = match &args.queue.redis_url {
        Some(url) => (connect_redis(url, &args.queue).await?, None),
        None => {
            let queue = JobQueue::Embedded(EmbeddedQueue::new(args.queue.policy()));
            let accurate = start_accurate(&args.models, &labels, &args.workers)?;
            let handle =
                tokio::spawn(worker::run(queue.clone(), accurate, worker_config(&args.workers), workers_stopped));
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
        top_k: TOP_K,
    };
    let router = api::router(api::AppState::new(fast, queue.clone(), limits, access, pool));
    let local = listener.local_addr().map_or_else(|_| args.addr.clone(), |a| a.to_string());
    tracing::info!(addr = %local, queue = queue.backend(), "tandem serving");
    api::server::serve(
        listener,
        router,
        Duration::from_secs_f64(args.header_timeout.max(0.001)),
        DRAIN,
        api::server::shutdown_signal(),
    )
    .await;

    if let Some(handle) = embedded_worker {
        let _ = stop_workers.send(true);
        let _ = handle.await;
    }
    tracing::info!("tandem stopped");
    Ok(())
}

async fn worker_async(args: &WorkerArgs) -> anyhow::Result<()> {
    let Some(url) = &args.queue.redis_url else {
        anyhow::bail!(
            "`tandem worker` needs --redis-url (or TANDEM_REDIS_URL); without Redis, `tandem serve` runs the workers itself"
        );
    };
    check_redis_url(url)?;
    let metrics_listener = match &args.metrics_addr {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    crate::models::pull::pull_missing(&args.models, &[Tier::Accurate])?;
    args.models.configure_decode_memory();
    let labels = Arc::new(Labels::load(&args.models.labels_path())?);
    let accurate = start_accurate(&args.models, &labels, &args.workers)?;
    let queue = connect_redis(url, &args.queue).await?;
    crate::metrics::install();
    crate::metrics::register_worker_series();
    if let Some(listener) = metrics_listener {
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let router = api::worker_router(queue.clone());
        tokio::spawn(api::server::serve(
            listener,
            router,
            Duration::from_secs(10),
            Duration::ZERO,
            std::future::pending(),
        ));
        tracing::info!(%addr, "worker metrics listening");
    }
    let (stop, stopped) = watch::channel(false);
    let handle = tokio::spawn(worker::run(queue, accurate, worker_config(&args.workers), stopped));
    tracing::info!(concurrency = args.workers.concurrency, "tandem worker running");
    api::server::shutdown_signal().await;
    let _ = stop.send(true);
    let _ = handle.await;
    Ok(())
}

/// Classes each tier reports; `?top_k=` may ask for fewer.
const TOP_K: usize = 5;

/// Binds `HOST:PORT`, the host an IP or a name (every address it resolves to is tried in turn).
async fn bind(addr: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|err| {
        let hint = match err.kind() {
            std::io::ErrorKind::AddrInUse => " (another process is using that port: stop it or pass another --addr)",
            std::io::ErrorKind::AddrNotAvailable => " (that address is not on this machine)",
            _ if !addr.contains(':') => " (expected HOST:PORT, e.g. 127.0.0.1:8000 or localhost:8000)",
            _ => "",
        };
        anyhow::anyhow!("cannot listen on {addr}: {err}{hint}")
    })
}

/// Refuses a Redis URL that cannot work, naming it and the forms that do.
fn check_redis_url(url: &str) -> anyhow::Result<()> {
    use redis::IntoConnectionInfo as _;
    url.into_connection_info().map(|_| ()).map_err(|err| {
        anyhow::anyhow!(
            "invalid --redis-url {url:?}: expected redis://[:PASSWORD@]HOST[:PORT][/DB] or unix:///PATH/redis.sock \
             (TLS `rediss://` is not built in); {err}"
        )
    })
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

fn model_config(models: &ModelArgs, labels: &Arc<Labels>, tier: Tier) -> ModelConfig {
    ModelConfig {
        path: models.model_path(tier),
        labels: Arc::clone(labels),
        preprocess: models.preprocess(tier),
        intra_threads: models.intra_threads(),
        spin: models.spin(tier),
        lanes: models.lanes(tier),
    }
}

fn start_accurate(models: &ModelArgs, labels: &Arc<Labels>, pool: &WorkerPoolArgs) -> anyhow::Result<Classifier> {
    let batching = BatchConfig {
        max_batch: pool.accurate_max_batch.max(1),
        max_delay: Duration::from_millis(pool.accurate_max_batch_delay_ms),
        queue_capacity: pool.concurrency.max(1),
        top_k: TOP_K,
        tier: Tier::Accurate,
        priority: pool.accurate_priority.into(),
        decode_on: DecodeOn::InferenceThread,
        pool: None,
    };
    let accurate = Classifier::start(model_config(models, labels, Tier::Accurate), batching)?;
    tracing::info!(model = accurate.model_name(), "accurate tier loaded");
    Ok(accurate)
}

fn worker_config(pool: &WorkerPoolArgs) -> WorkerConfig {
    WorkerConfig { concurrency: pool.concurrency.max(1), priority: pool.accurate_priority, ..WorkerConfig::default() }
}

async fn connect_redis(url: &str, args: &QueueArgs) -> anyhow::Result<JobQueue> {
    let config = RedisQueueConfig {
        url: url.to_owned(),
        prefix: args.redis_prefix.clone(),
        consumer: consumer_name(),
        reclaim_after: args.reclaim_after(),
        policy: args.policy(),
    };
    let queue = RedisQueue::connect(config).await.context("cannot set up the Redis queue")?;
    // One call now, so a Redis that does not answer is logged at start-up (the queue logs
    // each outage once) rather than only noticed in the replies; it is not fatal: Redis may
    // come up later, and everything resumes when it does.
    let _ = queue.check_ready().await;
    Ok(JobQueue::Redis(queue))
}

/// Unique per process, readable in `XINFO CONSUMERS`: host, pid and a random suffix.
fn consumer_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into());
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &random[..8])
}
