//! `tandem worker`: the accurate tier on jobs from Redis, in a process of its own.
//!
//! The process is all background work: it is lowered to `--accurate-priority` as a whole, after
//! the heartbeat thread has started at the priority it was given (a starved worker must keep
//! its leases, `queue::presence`). `serve` on the embedded queue runs the same accurate tier and
//! job loop in-process, through [`start_accurate`] and [`worker_config`].

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tokio::sync::watch;

use super::args::{ModelArgs, QueueArgs, WebhookArgs, WorkerPoolArgs, parse_seconds};
use super::startup::{bind, check_redis_url, connect_redis, runtime};
use super::tiers::{self, Run};
use crate::engine::{Classifier, Tier};
use crate::labels::Labels;
use crate::queue::ReplicaAcks;
use crate::worker::{self, WorkerConfig};

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

    /// Seconds to finish the jobs it holds once told to stop.
    ///
    /// On SIGTERM or Ctrl-C the worker takes no more jobs and has this long for those it runs;
    /// any still running then stay in Redis, and another worker takes them over after
    /// --reclaim-after. Set it below the stop timeout of whatever stops the process.
    #[arg(long, env = "TANDEM_DRAIN_TIMEOUT", default_value_t = 30.0, value_parser = parse_seconds)]
    pub drain_timeout: f64,

    #[command(flatten)]
    pub webhooks: WebhookArgs,
}

pub fn run(args: &WorkerArgs) -> anyhow::Result<()> {
    // The heartbeat first, at the priority the process was started with: a starved worker must
    // not drop out of the live workers nor lose its jobs' leases (`queue::presence`).
    crate::queue::presence::start_heartbeat_thread().context("cannot start the heartbeat thread")?;
    // A worker process is all background work: lower the whole process (every thread created
    // from here on inherits it) so a `serve` on the same machine wins the cores.
    if let Err(err) = crate::engine::priority::apply_to_current_thread(args.workers.accurate_priority) {
        tracing::warn!(error = %err, "cannot lower the worker's priority");
    }
    runtime()?.block_on(run_async(args))
}

async fn run_async(args: &WorkerArgs) -> anyhow::Result<()> {
    let Some(url) = &args.queue.redis_url else {
        anyhow::bail!(
            "`tandem worker` needs --redis-url (or TANDEM_REDIS_URL); without Redis, `tandem serve` runs the workers itself"
        );
    };
    check_redis_url(url)?;
    let webhook_sender = args.webhooks.sender(args.queue.reclaim_after())?;
    let metrics_listener = match &args.metrics_addr {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    tiers::ensure_files(&args.models, &[Tier::Accurate], "--labels")?;
    args.models.configure_decode_memory();
    let labels = Arc::new(Labels::load(&args.models.labels_path())?);
    let accurate = start_accurate(&args.models, &labels, &args.workers)?;
    let queue = connect_redis(url, &args.queue, args.queue.policy(), ReplicaAcks::OFF).await?;
    crate::metrics::install();
    crate::metrics::register_worker_series();
    if let Some(listener) = metrics_listener {
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let router = crate::api::worker_router(queue.clone());
        tokio::spawn(crate::api::server::serve(
            listener,
            router,
            Duration::from_secs(10),
            Duration::ZERO,
            std::future::pending(),
        ));
        tracing::info!(%addr, "worker metrics listening");
    }
    let (stop, stopped) = watch::channel(false);
    if let Some(config) = webhook_sender {
        tokio::spawn(crate::webhooks::run(queue.clone(), config, stopped.clone()));
    }
    let handle = tokio::spawn(worker::run(queue, accurate, worker_config(&args.workers), stopped));
    tracing::info!(concurrency = args.workers.concurrency, "tandem worker running");
    crate::shutdown::signal().await;
    let _ = stop.send(true);
    let drain = Duration::from_secs_f64(args.drain_timeout);
    if tokio::time::timeout(drain, handle).await.is_err() {
        tracing::warn!(?drain, "jobs still running after --drain-timeout: left to be reclaimed by another worker");
    }
    Ok(())
}

/// The accurate tier, refining jobs, on its own inference thread.
pub(super) fn start_accurate(
    models: &ModelArgs,
    labels: &Arc<Labels>,
    pool: &WorkerPoolArgs,
) -> anyhow::Result<Classifier> {
    let accurate = tiers::start(models, labels, Run::Refine(pool))?;
    tracing::info!(model = accurate.model_name(), "accurate tier loaded");
    Ok(accurate)
}

pub(super) fn worker_config(pool: &WorkerPoolArgs) -> WorkerConfig {
    WorkerConfig { concurrency: pool.concurrency.max(1), priority: pool.accurate_priority, ..WorkerConfig::default() }
}
