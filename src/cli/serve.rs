//! `tandem serve` and `tandem worker`: wiring configuration to the engine, queue, API and worker.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::api::{self, Limits};
use crate::config::{ModelArgs, QueueArgs, ServeArgs, Tier, WorkerArgs, WorkerPoolArgs};
use crate::engine::{BatchConfig, Classifier, DecodeOn, ModelConfig, ThreadPriority};
use crate::labels::Labels;
use crate::queue::{EmbeddedQueue, JobQueue, RedisQueue, RedisQueueConfig};
use crate::worker::{self, WorkerConfig};

/// How long `serve` waits for open requests once told to stop.
const DRAIN: Duration = Duration::from_secs(30);

pub fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    runtime()?.block_on(serve_async(args))
}

pub fn worker(args: &WorkerArgs) -> anyhow::Result<()> {
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
    crate::metrics::install();
    let labels = Arc::new(Labels::load(&args.models.labels_path())?);
    let fast_batching = BatchConfig {
        max_batch: args.max_batch.max(1),
        max_delay: Duration::from_millis(args.max_batch_delay_ms),
        queue_capacity: args.max_inflight.max(1),
        top_k: 5,
        tier: Tier::Fast.as_str(),
        priority: ThreadPriority::Nice(args.fast_nice),
        decode_on: DecodeOn::InferenceThreadWhenIdle,
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
    };
    let router = api::router(api::AppState::new(fast, queue.clone(), limits));
    let listener =
        tokio::net::TcpListener::bind(args.addr).await.with_context(|| format!("cannot listen on {}", args.addr))?;
    let local = listener.local_addr().unwrap_or(args.addr);
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
    let labels = Arc::new(Labels::load(&args.models.labels_path())?);
    let accurate = start_accurate(&args.models, &labels, &args.workers)?;
    let queue = connect_redis(url, &args.queue).await?;
    crate::metrics::install();
    if let Some(addr) = args.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
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
        top_k: 5,
        tier: Tier::Accurate.as_str(),
        priority: pool.accurate_priority.into(),
        decode_on: DecodeOn::InferenceThread,
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
