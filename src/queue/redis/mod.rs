//! Redis Streams backend: shared by any number of `serve` and `worker` processes.
//!
//! The queue's operations live here and in the files beside this one, each for one concern:
//! the key layout (`keys.rs`), the scripts (`scripts.rs` and the `.lua` files), queueing a job
//! (`enqueue.rs`, with "Enqueueing" and "Enqueue outcome"), handing jobs out (`take.rs`),
//! heartbeats and live workers (`heartbeat.rs`, "Live workers"), connections, timeouts and the
//! one retry policy (`conn.rs`), reply parsing (`reply.rs`) and Redis' clock (`clock.rs`).
//!
//! # Atomicity
//!
//! Every state change is one Lua script (`scripts.rs`), so a crash between two commands cannot
//! leave a job half-moved: `enqueue` (fence + image check + bound check + record + `XADD`), the
//! start of each delivery in `take` (attempt counted, `running` — or ended `failed` when crashed
//! workers used up its attempts), `complete` (result + TTL + `XACK` + `XDEL`) and `fail` (retry
//! as a new entry at the back of the stream, or dead-letter; plus `XACK` + `XDEL`).
//! `{prefix}:queued_bytes` moves in the same scripts as the images it counts, so no crash leaks
//! or double-counts it: a job taken over from a dead worker keeps its image, and its count,
//! until the script that finishes it or dead-letters it deletes both.
//!
//! # Live workers
//!
//! See `heartbeat.rs`.
//!
//! # Taking over jobs
//!
//! A job is leased to its worker: the lease is its pending entry's idle time, which every
//! heartbeat of that worker resets (`XCLAIM ... JUSTID` to itself, in `heartbeat.lua`) for each
//! job it is running, from `take` until the worker releases it ([`RedisQueue::release`]). An
//! entry idle longer than `reclaim_after` is taken over by whichever `take` looks next
//! (`XAUTOCLAIM`). So a live worker keeps its jobs however long they run, and a job is taken
//! over only when nobody renews it: its worker stopped (`kill -9`, a lost machine), was cut off
//! from Redis for `reclaim_after`, or never got the delivery (a `take` whose answer was lost;
//! one cancelled mid-read drops its blocking connection), or gave up storing its outcome. The
//! beat comes every third of `reclaim_after` (or of the heartbeat TTL, if shorter).
//! Why a per-job lease and not "claim only from workers whose heartbeat ran out": a live worker
//! may hold entries it is not running (the lost deliveries above), which would then never be
//! taken over.
//! A worker cut off from Redis may still finish a job that was taken over meanwhile: the first
//! result stored wins (`COMPLETE_LUA`), and its next heartbeat, seeing the entry is no longer
//! its own, stops renewing it rather than claiming it back.

mod cache;
mod clock;
mod conn;
mod endpoint;
mod enqueue;
mod events;
mod heartbeat;
mod keys;
mod replicas;
mod reply;
mod scripts;
mod take;
mod webhooks;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::Value;
use tokio::time::Instant;

use super::events::{JobEvents, JobWatch};
use super::outage::Outage;
use super::{CancelOutcome, Delivery, FailOutcome, QueueDepth, QueueError, QueuePolicy};
use crate::engine::Prediction;
use crate::jobs::{JobId, JobRecord, JobStatus, now_ms};
use clock::RedisClock;
use conn::{Conn, OP_TIMEOUT, Retry, unavailable};
use endpoint::Endpoint;
use keys::{GROUP, Keys};
use reply::parse_record;
use scripts::Scripts;
use take::BLOCK_CHUNK;

pub use endpoint::InvalidUrl;
pub(in crate::queue) use enqueue::Staging;
pub use replicas::ReplicaAcks;

#[derive(Debug, Clone)]
pub struct RedisQueueConfig {
    pub url: String,
    /// Every key starts with this, so several deployments can share one Redis.
    pub prefix: String,
    /// This process's consumer name in the group: unique per process.
    pub consumer: String,
    /// A job taken by a worker that has not finished it after this long is taken over.
    pub reclaim_after: Duration,
    pub policy: QueuePolicy,
    /// Whether a commit waits for replicas (`replicas.rs`): `serve` only.
    pub replica_acks: ReplicaAcks,
}

/// A job's record lives at least this long while the job is unfinished (refreshed when it
/// starts or is retried), so a short `result_ttl` cannot make a waiting job vanish.
const UNFINISHED_MIN_TTL: Duration = Duration::from_secs(3600);
/// The dead-letter stream is trimmed to about this many entries.
const DEAD_LETTER_MAXLEN: usize = 10_000;

#[derive(Clone)]
pub struct RedisQueue {
    inner: Arc<Inner>,
}

struct Inner {
    config: RedisQueueConfig,
    keys: Keys,
    /// Ordinary commands: short, multiplexed.
    main: Conn,
    /// Only for heartbeats: they run on their own thread and runtime (`presence.rs`), which
    /// opens this connection on first use and so drives its I/O, whether or not the process's
    /// own runtime is starved.
    beat: Conn,
    /// Only for `XREADGROUP ... BLOCK`; the lock keeps one blocking read on it at a time, so a
    /// read never waits out another's block inside its own response timeout.
    blocking: Conn,
    blocking_lock: tokio::sync::Mutex<()>,
    /// Only for the webhook sender's `XREADGROUP ... BLOCK` (connected on first use).
    hooks: Conn,
    /// Only for `WAIT` (`replicas.rs`), which blocks its connection; connected on first use.
    acks: Conn,
    /// Started by the first commit that waits for replicas.
    acknowledger: std::sync::OnceLock<replicas::Acknowledger>,
    webhook_group_ready: AtomicBool,
    /// Whether this process has made sure the consumer group exists.
    group_ready: AtomicBool,
    reclaim: Mutex<ReclaimState>,
    scripts: Scripts,
    /// Whether Redis is answering, so an outage is logged once (see `outage.rs`).
    outage: Outage,
    /// `host:port` of the Redis (or the sentinels), for log lines (never the URL: it may hold a
    /// password).
    addr: String,
    /// Redis' clock as last seen from here, for the enqueue fence.
    clock: RedisClock,
    /// The stream entries of the jobs this process is running, each with its job and how many
    /// deliveries of it are running: the heartbeat renews their lease (see "Taking over jobs").
    held: Mutex<HashMap<String, (JobId, u32)>>,
    /// This process's watchers, and the one subscription that wakes them (`events.rs`),
    /// started by the first watch.
    events: JobEvents,
    /// The subscription task, started by the first watch and started again if it ever ends.
    subscriber: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Where that subscription connects (an endpoint of its own, like each connection's).
    events_endpoint: Arc<Endpoint>,
    /// `{prefix}:cache:{identity}:`, once this worker has announced its model: where the results
    /// it stores are cached.
    cache_prefix: Mutex<Option<String>>,
}

struct ReclaimState {
    /// When this process may next look for abandoned jobs.
    next_at: Option<Instant>,
    /// Where the `XAUTOCLAIM` scan of the pending list goes on from.
    cursor: String,
}

impl RedisQueue {
    /// Refuses a Redis URL that cannot work (`redis://`, `unix://`, `redis+sentinel://`), saying
    /// why and what would.
    pub fn check_url(url: &str) -> Result<(), InvalidUrl> {
        Endpoint::parse(url).map(|_| ())
    }

    /// Sets up the queue without connecting: Redis may be down now and come up later.
    /// Fails only on a malformed URL.
    pub async fn connect(config: RedisQueueConfig) -> Result<Self, QueueError> {
        // One each per connection: with Sentinel, each asks the sentinels on its own connections,
        // driven by its own runtime (the heartbeats' is not the process's).
        let url = config.url.as_str();
        let endpoint =
            || Endpoint::parse(url).map_err(|err| QueueError::Unavailable(format!("invalid Redis URL: {err}")));
        let conn = |extra| -> Result<Conn, QueueError> {
            Conn::new(endpoint()?, extra).map_err(|err| unavailable("connect", &err))
        };
        let (main, beat, blocking, hooks) =
            (conn(Duration::ZERO)?, conn(Duration::ZERO)?, conn(BLOCK_CHUNK)?, conn(BLOCK_CHUNK)?);
        let acks = conn(config.replica_acks.timeout)?;
        let events_endpoint = Arc::new(endpoint()?);
        let addr = events_endpoint.describe();
        let keys = Keys::new(&config.prefix);
        let scripts = Scripts::new();
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                keys,
                main,
                beat,
                blocking,
                blocking_lock: tokio::sync::Mutex::new(()),
                hooks,
                acks,
                acknowledger: std::sync::OnceLock::new(),
                webhook_group_ready: AtomicBool::new(false),
                group_ready: AtomicBool::new(false),
                reclaim: Mutex::new(ReclaimState { next_at: None, cursor: "0-0".into() }),
                scripts,
                outage: Outage::default(),
                addr,
                clock: RedisClock::new(),
                held: Mutex::new(HashMap::new()),
                events: JobEvents::default(),
                subscriber: Mutex::new(None),
                events_endpoint,
                cache_prefix: Mutex::new(None),
            }),
        })
    }

    /// Watches a job's state changes made by any process (see `events.rs`). The first call on
    /// a tokio runtime starts the subscription there (off one, the watch only wakes on
    /// `changed_all`); a subscription task that ended is started again.
    pub fn watch(&self, id: JobId) -> JobWatch {
        let inner = &self.inner;
        let watch = inner.events.watch(id);
        let mut subscriber = inner.subscriber.lock().unwrap_or_else(PoisonError::into_inner);
        if subscriber.as_ref().is_none_or(tokio::task::JoinHandle::is_finished)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let (endpoint, channel, events) =
                (inner.events_endpoint.clone(), inner.keys.events.clone(), inner.events.clone());
            *subscriber = Some(events::spawn_subscriber(&runtime, endpoint, channel, events));
        }
        watch
    }

    pub async fn get(&self, id: JobId) -> Result<Option<JobRecord>, QueueError> {
        let key = self.inner.keys.job(id);
        let key = &key;
        let fields: Vec<(String, String)> = self
            .call(&self.inner.main, "get", OP_TIMEOUT, Retry::Unsent, |mut conn| async move {
                redis::cmd("HGETALL").arg(key).query_async(&mut conn).await
            })
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        match parse_record(id, fields) {
            Ok(record) => Ok(Some(record)),
            Err(reason) => {
                tracing::warn!(job = %id, reason, "unreadable job record in Redis");
                Ok(None)
            }
        }
    }

    /// Answers once Redis does, and makes sure the consumer group exists.
    pub async fn check_ready(&self) -> Result<(), QueueError> {
        self.create_group().await
    }

    pub async fn depth(&self) -> Result<QueueDepth, QueueError> {
        self.ensure_group().await?;
        let stream = &self.inner.keys.stream;
        let (length, pending): (u64, Value) = self
            .call(&self.inner.main, "depth", OP_TIMEOUT, Retry::Unsent, |mut conn| async move {
                redis::pipe()
                    .atomic()
                    .cmd("XLEN")
                    .arg(stream)
                    .cmd("XPENDING")
                    .arg(stream)
                    .arg(GROUP)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        // XPENDING's summary form: [count, lowest id, highest id, per-consumer counts].
        let pending = match pending {
            Value::Array(items) => match items.first() {
                Some(Value::Int(count)) => u64::try_from(*count).unwrap_or(0),
                _ => 0,
            },
            _ => 0,
        };
        Ok(QueueDepth { waiting: length.saturating_sub(pending), pending })
    }

    /// Stores the accurate answer and removes the job from the queue, in one script. Retried
    /// briefly while Redis does not answer ("Retries" in `conn.rs`).
    pub async fn complete(&self, delivery: &Delivery, result: &Prediction) -> Result<(), QueueError> {
        let inner = &self.inner;
        let mut invocation = inner.scripts.complete.prepare_invoke();
        invocation
            .key(&inner.keys.stream)
            .key(inner.keys.job(delivery.id))
            .key(inner.keys.image(delivery.id))
            .key(&inner.keys.queued_bytes)
            .arg(GROUP)
            .arg(delivery.receipt.entry_id())
            .arg(to_json(result)?)
            .arg(now_ms())
            .arg(ttl_ms(inner.config.policy.result_ttl))
            .arg(self.own_cache_prefix());
        let invocation = &invocation;
        let stored: i64 = self
            .call(&inner.main, "complete", OP_TIMEOUT, Retry::Outcome, |mut conn| async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        if stored == 0 {
            tracing::info!(job = %delivery.id, "job already finished or expired; this result was not stored");
        }
        Ok(())
    }

    /// Cancels a job no worker has started, in one script (`WITHDRAW_LUA`).
    pub async fn cancel(&self, id: JobId) -> Result<CancelOutcome, QueueError> {
        let inner = &self.inner;
        let mut invocation = inner.scripts.withdraw.prepare_invoke();
        invocation
            .key(&inner.keys.stream)
            .key(inner.keys.job(id))
            .key(inner.keys.image(id))
            .key(&inner.keys.queued_bytes)
            .arg(GROUP)
            .arg(now_ms())
            .arg(ttl_ms(inner.config.policy.result_ttl))
            .arg(id.to_string())
            .arg(ttl_ms(self.unfinished_ttl()));
        let invocation = &invocation;
        // Running it twice is harmless (the second finds `canceled`), so it may be retried.
        let before: String = self
            .call(&inner.main, "cancel", OP_TIMEOUT, Retry::Outcome, |mut conn| async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        Ok(match before.as_str() {
            "" => CancelOutcome::Unknown,
            "queued" | "canceled" => CancelOutcome::Canceled,
            other => match JobStatus::parse(other) {
                Some(status) => CancelOutcome::TooLate(status),
                None => return Err(QueueError::Unavailable(format!("cancel: unknown job status {other:?}"))),
            },
        })
    }

    /// Records a failed attempt: the job is retried, or dead-lettered once out of attempts.
    /// Retried briefly while Redis does not answer, like `complete`.
    pub async fn fail(&self, delivery: &Delivery, error: &str) -> Result<FailOutcome, QueueError> {
        let inner = &self.inner;
        let mut invocation = inner.scripts.fail.prepare_invoke();
        invocation
            .key(&inner.keys.stream)
            .key(inner.keys.job(delivery.id))
            .key(&inner.keys.dead)
            .key(inner.keys.image(delivery.id))
            .key(&inner.keys.queued_bytes)
            .arg(GROUP)
            .arg(delivery.receipt.entry_id())
            .arg(delivery.attempt)
            .arg(self.max_attempts())
            .arg(error)
            .arg(now_ms())
            .arg(ttl_ms(inner.config.policy.result_ttl))
            .arg(ttl_ms(self.unfinished_ttl()))
            .arg(delivery.id.to_string())
            .arg(DEAD_LETTER_MAXLEN);
        let invocation = &invocation;
        let outcome: i64 = self
            .call(&inner.main, "fail", OP_TIMEOUT, Retry::Outcome, |mut conn| async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        match outcome {
            1 => Ok(FailOutcome::Retrying),
            2 => Ok(FailOutcome::Dead),
            3 => {
                tracing::info!(job = %delivery.id, "job was no longer held by this worker; it had already failed");
                Ok(FailOutcome::Dead)
            }
            _ => {
                tracing::info!(job = %delivery.id, "job was no longer held by this worker; nothing recorded");
                Ok(FailOutcome::Retrying)
            }
        }
    }

    pub(crate) fn policy(&self) -> &QueuePolicy {
        &self.inner.config.policy
    }

    fn max_attempts(&self) -> u32 {
        self.inner.config.policy.max_attempts.max(1)
    }

    fn unfinished_ttl(&self) -> Duration {
        self.inner.config.policy.result_ttl.max(UNFINISHED_MIN_TTL)
    }
}

fn to_json(prediction: &Prediction) -> Result<String, QueueError> {
    serde_json::to_string(prediction)
        .map_err(|err| QueueError::Unavailable(format!("could not encode a prediction: {err}")))
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}
