//! Redis Streams backend: shared by any number of `serve` and `worker` processes.
//!
//! # Keys (all under `config.prefix`)
//!
//! - `{prefix}:jobs` — a stream holding only *unfinished* jobs, one entry per job with one
//!   field, `id` (the job's UUID). Consumer group `workers` reads it. An entry is acknowledged
//!   *and deleted* in the same atomic step that stores the job's outcome, so `XLEN` is
//!   "waiting + running".
//! - `{prefix}:image:{uuid}` — the encoded image, binary, stored once. It lives exactly as long
//!   as the job's stream entry: every step that deletes the entry deletes the image with it
//!   (an undone enqueue deletes it, with the record, before its entry: see "Enqueue outcome").
//!   It is written by a plain `SET` *before* the job is queued (see "Enqueueing").
//! - `{prefix}:job:{uuid}` — a hash with the job's record: `status`, `sync` and `result` (JSON),
//!   `error`, `attempts`, `created_at_ms`, `started_at_ms`, `completed_at_ms`. It expires
//!   `result_ttl` after the job finishes (while unfinished, after at least an hour; see
//!   `UNFINISHED_MIN_TTL`).
//! - `{prefix}:workers` — a sorted set of live workers: member the worker's consumer name,
//!   score the time (ms, Redis' clock) until which its latest heartbeat counts (see "Live
//!   workers"). The set expires by itself a minute after the last heartbeat.
//! - `{prefix}:dead` — the dead-letter stream (capped near `DEAD_LETTER_MAXLEN`): one entry
//!   (`id`, `error`, `attempts`, `failed_at_ms`) per job that used up its attempts.
//! - `{prefix}:queued_bytes` — an integer: the bytes of the images of all queued (waiting or
//!   running) jobs, the count `max_queue_bytes` bounds. Checked and added to (`INCRBY`, the
//!   image's `STRLEN`) by the script that queues a job, so the bound holds across any number of
//!   `serve` processes; given back (`DECRBY`) by each script that deletes a queued job's image,
//!   sized from the image itself so that deleting it twice gives back once (`drop_image.lua`).
//!   A missing key is 0: a Redis that came back empty has lost the images with the counter.
//!   With no job queued it is reset, so drift (an image deleted by hand or evicted) lasts only
//!   until the queue drains. Staged images are not counted: there are at most `--max-inflight`
//!   of them per `serve`, each for the length of one request.
//!
//! # Enqueueing
//!
//! `POST /predict` stores the image while the fast model runs (`stage_image`: `SET` with a
//! short expiry), then queues the job with its fast answer (`enqueue_staged`: one small
//! script). The image never passes through Lua: a 1 MB script argument costs Redis about 2 ms
//! of copying, a plain `SET` 0.2 ms. An image staged by a request that then failed, or by a
//! process that died, expires by itself (`STAGED_IMAGE_TTL`); queueing the job removes the
//! expiry.
//!
//! # Enqueue outcome
//!
//! A client answered `"job_id": null` must never see its job run, although an enqueue that this
//! side gave up on (Redis stalled, e.g. `SIGSTOP`, for longer than the response timeout) still
//! sits in the socket and runs when Redis wakes. We fence rather than answer "outcome unknown":
//! the client's answer then stays a plain yes or no, and nothing unresolvable is handed out.
//!
//! - The fence: the enqueue script carries a deadline, `ENQUEUE_FENCE` (1 s) after the call
//!   starts, and queues nothing (deleting the staged image) if Redis' `TIME` has reached it. The
//!   deadline is on Redis' clock, so clock skew between hosts plays no part: staging reads Redis'
//!   `TIME` in the same round trip as its `SET`, and the offset to our monotonic clock is taken
//!   when that answer arrives, so the deadline is early, never late (`RedisClock`). Normal
//!   enqueues take milliseconds; one run 1 s late would have been given up at 1.5 s anyway.
//! - The undo: the fence leaves 0.5 s between the latest moment the script may run and the
//!   moment this side gives up, but a reply can still be lost or late (a connection cut, this
//!   process starved). So every enqueue call that ends without an answer starts a background
//!   task that, once the fence has passed (from then on the script, if Redis runs it yet, is
//!   refused), deletes the job's record and its image (`CANCEL_LUA`; a queued image's bytes
//!   go back through `drop_image.lua`, a still-staged one was never counted), retrying while
//!   Redis does not answer for up to `CANCEL_FOR`. A worker drops an entry whose record is gone
//!   (giving back nothing more: its image is gone), or does not store its result.
//!
//! What is left: the undo lives in the `serve` process, so if that process dies within those
//! seconds *and* the script's reply was lost, the job runs. Redis' clock stepping back (NTP) by
//! more than the margin while a request is in flight weakens the fence by that much.
//!
//! # Atomicity
//!
//! Every state change is one Lua script, so a crash between two commands cannot leave a job
//! half-moved: `enqueue` (fence + image check + bound check + record + `XADD`), the start of each delivery in `take`
//! (attempt counted, `running` — or ended `failed` when crashed workers used up its attempts),
//! `complete` (result + TTL + `XACK` + `XDEL`) and `fail` (retry as a new entry at the back of
//! the stream, or dead-letter; plus `XACK` + `XDEL`). Scripts are sent as `EVALSHA` and reloaded
//! by the client after a Redis restart (`NOSCRIPT`). `{prefix}:queued_bytes` moves in the same
//! scripts as the images it counts, so no crash leaks or double-counts it: a job taken over from
//! a dead worker keeps its image, and its count, until the script that finishes it or
//! dead-letters it deletes both.
//!
//! # Connections and outages
//!
//! `connect` never touches the network: connections are made lazily by two
//! [`ConnectionManager`]s (which reconnect by themselves), one for ordinary commands and one
//! dedicated to the blocking `XREADGROUP ... BLOCK` of `take` — a blocked command on a
//! multiplexed connection would hold up every command queued behind it. Each call is bounded
//! (connect ~1 s, answer ~1.5 s, whole call `OP_TIMEOUT`) so a Redis outage turns into a
//! prompt [`QueueError::Unavailable`] rather than a hang. A Redis restarted empty is picked up
//! again by itself: the consumer group is recreated on `NOGROUP` (from id `0`, so entries added
//! before the group existed are still delivered) and the call is retried once. Every call
//! reports how it ended to one `Outage` per queue, which logs a warning when Redis stops
//! answering and a line when it is back, once per outage whichever calls notice (`outage.rs`).
//!
//! # Live workers
//!
//! Each worker process beats from its own task (`queue::presence`), every third of
//! [`RedisQueue::heartbeat_ttl`]: one script sets its score to Redis' `TIME` plus the TTL and
//! drops members whose time has run out; `live_workers` counts the members not yet run out,
//! on the same clock; a worker that stops cleanly removes itself. The TTL is `reclaim_after`
//! clamped to 1-6 s: a worker silent for `reclaim_after` loses its jobs to the others anyway,
//! so it must not count as live for longer, and 6 s lets a `kill -9`'d worker drop out of
//! `/health/ready` within seconds at the default `reclaim_after` (30 s).
//! Why not the consumer group's own bookkeeping (`XINFO CONSUMERS` idle times): a worker whose
//! slots are all busy does not read the stream until a job finishes (many seconds on a starved
//! machine), so it would look gone; and consumers stay in the group forever, so that list grows
//! with every worker process that ever ran.
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

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, ErrorKind, RedisError, RedisResult, Script, ServerErrorKind, Value};
use tokio::time::Instant;

use super::outage::{Outage, Transition};
use super::{QueueDepth, QueueError, QueuePolicy};
use crate::engine::Prediction;
use crate::jobs::{Delivery, FailOutcome, JobId, JobRecord, JobStatus, NewJob, now_ms};

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
}

/// The consumer group every worker reads through.
const GROUP: &str = "workers";
/// The longest a worker's heartbeat counts (see "Live workers").
const HEARTBEAT_TTL_MAX: Duration = Duration::from_secs(6);
/// The shortest: a beat every third of it must still be cheap.
const HEARTBEAT_TTL_MIN: Duration = Duration::from_secs(1);
/// Expiry of the whole live-workers set, longer than any heartbeat counts.
const WORKERS_SET_TTL: Duration = Duration::from_secs(60);
/// How long one attempt to open a TCP connection (and say hello) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long Redis may take to answer one ordinary command.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(1500);
/// The bound on one whole call (connecting included), whatever happens underneath.
const OP_TIMEOUT: Duration = Duration::from_millis(2500);
/// The longest single `XREADGROUP ... BLOCK`; a longer `take` wait is made of several.
const BLOCK_CHUNK: Duration = Duration::from_secs(5);
/// How late Redis may run an enqueue script: past this after the call started (on Redis' own
/// clock, see "Enqueue outcome"), the script queues nothing. Well under `RESPONSE_TIMEOUT`, so an
/// enqueue that runs in time is answered before this side gives up on it.
const ENQUEUE_FENCE: Duration = Duration::from_millis(1000);
/// How long an enqueue whose answer never came keeps trying to make sure it left no job.
const CANCEL_FOR: Duration = Duration::from_secs(300);
/// The pause between those tries.
const CANCEL_RETRY: Duration = Duration::from_secs(1);
/// How long a staged image waits for its job to be queued (a request's whole life is far shorter).
const STAGED_IMAGE_TTL: Duration = Duration::from_secs(300);
/// A job's record lives at least this long while the job is unfinished (refreshed when it
/// starts or is retried), so a short `result_ttl` cannot make a waiting job vanish.
const UNFINISHED_MIN_TTL: Duration = Duration::from_secs(3600);
/// The dead-letter stream is trimmed to about this many entries.
const DEAD_LETTER_MAXLEN: usize = 10_000;
/// Consecutive failed calls after which a connection is thrown away and made anew.
const REBUILD_AFTER_FAILURES: u32 = 3;
/// The most often one process looks for jobs whose worker died.
const MAX_RECLAIM_INTERVAL: Duration = Duration::from_secs(1);

/// Fence, image check, bound checks, record and stream entry in one step; the staged image is
/// kept (expiry removed) and its bytes counted if the job is queued, deleted if the queue is
/// full or the fence passed.
/// KEYS: stream, job hash, image, queued bytes. ARGV: max_queue, unfinished ttl ms, job id, sync
/// json, created_at_ms, max_queue_bytes, deadline (ms, Redis' clock). Returns 1 if queued, 0 if
/// the queue is full (jobs), 2 if it is full (bytes), -1 if the image is not staged, -2 if run at
/// or after the deadline (the caller has given up).
const ENQUEUE_LUA: &str = include_str!("enqueue.lua");

/// Starts a batch of delivered entries.
/// KEYS: stream, dead-letter stream, queued bytes, then (job hash, image) per entry.
/// ARGV: group, max_attempts, now ms, unfinished ttl ms, final ttl ms, dead-letter maxlen, then
/// (entry id, job id) per entry. Returns two integers per entry: (attempt, created_at_ms) for a started job,
/// (-1, 0) for one whose record is gone or already finished (its entry is dropped), (-2, 0) for
/// one that used up its attempts on workers that died, or whose image is missing (ended
/// `failed`, dead-lettered).
const START_LUA: &str = concat!(include_str!("drop_image.lua"), include_str!("start.lua"));

/// Stores the result and removes the entry, in one step. A job already finished (by a worker
/// that was thought dead but was only slow) keeps its first outcome.
/// KEYS: stream, job hash, image, queued bytes. ARGV: group, entry id, result json, now ms,
/// final ttl ms.
/// Returns {1 if the result was stored (0 if the job was already finished or gone), the job's
/// `sync` JSON or ''}: the fast answer comes back in the same round trip, for tier agreement.
/// `results_reported` counts every result a worker hands in, stored or not: above 1 means the
/// job was computed more than once (a duplicate), which operators and the fault suite watch.
const COMPLETE_LUA: &str = concat!(include_str!("drop_image.lua"), include_str!("complete.lua"));

/// Records a failed attempt: back of the queue as a new entry (the image stays where it is),
/// or `failed` + dead letter (image deleted); the old entry is acknowledged and deleted either way.
/// KEYS: stream, job hash, dead-letter stream, image, queued bytes.
/// ARGV: group, entry id, attempt, max_attempts, error, now ms, final ttl ms, unfinished ttl ms,
/// job id, dead-letter maxlen.
/// Returns 1 retrying, 2 dead, 0 when this delivery no longer held the job (nothing changed),
/// 3 when it no longer held it and the job had already failed.
const FAIL_LUA: &str = concat!(include_str!("drop_image.lua"), include_str!("fail.lua"));

/// Removes what an enqueue whose answer was lost may have queued (see "Enqueue outcome"): the
/// record, so a worker drops the entry (`START_LUA`) or does not store its result
/// (`COMPLETE_LUA`), and the image: a staged one (never counted) outright, a queued one through
/// `drop_image`, so its bytes go back once (the worker that meets the entry later finds no image).
/// KEYS: job hash, image, queued bytes. Returns 1 if there was a record.
const CANCEL_LUA: &str = concat!(include_str!("drop_image.lua"), include_str!("cancel.lua"));

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
    /// Whether this process has made sure the consumer group exists.
    group_ready: AtomicBool,
    reclaim: Mutex<ReclaimState>,
    scripts: Scripts,
    /// Whether Redis is answering, so an outage is logged once (see `outage.rs`).
    outage: Outage,
    /// `host:port` of the Redis, for log lines (never the URL: it may hold a password).
    addr: String,
    /// Redis' clock as last seen from here, for the enqueue fence.
    clock: RedisClock,
    /// The stream entries of the jobs this process is running, each with its job and how many
    /// deliveries of it are running: the heartbeat renews their lease (see "Taking over jobs").
    held: Mutex<HashMap<String, (JobId, u32)>>,
}

/// Maps this process's monotonic clock to Redis' (`TIME`), from the latest `TIME` answer. The
/// offset is taken when the answer arrives, so it is never ahead of the true one (Redis read
/// its clock before): a deadline computed with it is early, never late.
struct RedisClock {
    epoch: std::time::Instant,
    /// Redis' time (ms) minus ours (ms since `epoch`); `i64::MIN` until first seen.
    offset_ms: AtomicI64,
}

impl RedisClock {
    fn new() -> Self {
        Self { epoch: std::time::Instant::now(), offset_ms: AtomicI64::new(i64::MIN) }
    }

    fn local_ms(&self, at: std::time::Instant) -> i64 {
        i64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(i64::MAX)
    }

    /// Records a `TIME` answer (seconds, microseconds) received at `received`.
    fn observe(&self, (secs, micros): (u64, u64), received: std::time::Instant) {
        let redis_ms = i64::try_from(secs.saturating_mul(1000).saturating_add(micros / 1000)).unwrap_or(i64::MAX);
        self.offset_ms.store(redis_ms.saturating_sub(self.local_ms(received)), Ordering::Relaxed);
    }

    /// Redis' time (ms) at our `at`, or `None` before any `TIME` was seen.
    fn redis_ms(&self, at: std::time::Instant) -> Option<i64> {
        let offset = self.offset_ms.load(Ordering::Relaxed);
        (offset != i64::MIN).then(|| offset.saturating_add(self.local_ms(at)))
    }
}

struct Keys {
    stream: String,
    dead: String,
    workers: String,
    job_prefix: String,
    image_prefix: String,
    queued_bytes: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Self {
            stream: format!("{prefix}:jobs"),
            dead: format!("{prefix}:dead"),
            workers: format!("{prefix}:workers"),
            job_prefix: format!("{prefix}:job:"),
            image_prefix: format!("{prefix}:image:"),
            queued_bytes: format!("{prefix}:queued_bytes"),
        }
    }

    fn job(&self, id: JobId) -> String {
        format!("{}{}", self.job_prefix, id)
    }

    fn image(&self, id: JobId) -> String {
        format!("{}{}", self.image_prefix, id)
    }
}

struct Scripts {
    enqueue: Script,
    cancel: Script,
    start: Script,
    complete: Script,
    fail: Script,
    heartbeat: Script,
    live_workers: Script,
}

struct ReclaimState {
    /// When this process may next look for abandoned jobs.
    next_at: Option<Instant>,
    /// Where the `XAUTOCLAIM` scan of the pending list goes on from.
    cursor: String,
}

/// A lazily connected, self-repairing [`ConnectionManager`].
struct Conn {
    client: Client,
    response_timeout: Duration,
    manager: Mutex<ConnectionManager>,
    failures: AtomicU32,
}

impl Conn {
    fn new(client: Client, response_timeout: Duration) -> RedisResult<Self> {
        let manager = Self::build(&client, response_timeout)?;
        Ok(Self { client, response_timeout, manager: Mutex::new(manager), failures: AtomicU32::new(0) })
    }

    /// Connects on first use; one quick retry per connection attempt, each bounded.
    fn build(client: &Client, response_timeout: Duration) -> RedisResult<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(response_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(200));
        ConnectionManager::new_lazy_with_config(client.clone(), config)
    }

    fn manager(&self) -> ConnectionManager {
        self.manager.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn succeeded(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }

    /// The manager reconnects by itself after a dropped connection, but not after a command
    /// that timed out on a connection that looks alive, nor after a connection attempt that
    /// failed with a server error: throw it away then, or after several failures in a row.
    fn failed(&self, hung: bool) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if !hung && failures < REBUILD_AFTER_FAILURES {
            return;
        }
        match Self::build(&self.client, self.response_timeout) {
            Ok(fresh) => {
                *self.manager.lock().unwrap_or_else(PoisonError::into_inner) = fresh;
                self.failures.store(0, Ordering::Relaxed);
            }
            Err(err) => tracing::warn!(error = %err, "could not set up a new Redis connection"),
        }
    }
}

/// Throws the connection away when dropped while armed.
struct AbandonOnDrop<'a> {
    conn: &'a Conn,
    armed: bool,
}

impl Drop for AbandonOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.conn.failed(true);
        }
    }
}

/// One stream entry as read from Redis: its fields are `None` when the entry was deleted.
/// The one field of the stored fast answer that tier agreement needs.
#[derive(serde::Deserialize)]
struct SyncClass {
    class_index: usize,
}

struct RawEntry {
    entry_id: String,
    fields: Option<Vec<(Value, Value)>>,
}

impl RawEntry {
    fn field(&self, name: &str) -> Option<&Value> {
        self.fields.as_ref()?.iter().find(|(key, _)| bytes_of(key) == Some(name.as_bytes())).map(|(_, value)| value)
    }

    /// The job id, or `None` for an entry that is not a well-formed job.
    fn into_job(self) -> (String, Option<JobId>) {
        let id = self.field("id").and_then(bytes_of).and_then(|raw| std::str::from_utf8(raw).ok()?.parse().ok());
        (self.entry_id, id)
    }
}

impl RedisQueue {
    /// Sets up the queue without connecting: Redis may be down now and come up later.
    /// Fails only on a malformed URL.
    pub async fn connect(config: RedisQueueConfig) -> Result<Self, QueueError> {
        let client = Client::open(config.url.as_str())
            .map_err(|err| QueueError::Unavailable(format!("invalid Redis URL: {err}")))?;
        let addr = client.get_connection_info().addr().to_string();
        let main = Conn::new(client.clone(), RESPONSE_TIMEOUT).map_err(|err| unavailable("connect", &err))?;
        let beat = Conn::new(client.clone(), RESPONSE_TIMEOUT).map_err(|err| unavailable("connect", &err))?;
        let blocking = Conn::new(client, BLOCK_CHUNK + RESPONSE_TIMEOUT).map_err(|err| unavailable("connect", &err))?;
        let keys = Keys::new(&config.prefix);
        let scripts = Scripts {
            enqueue: Script::new(ENQUEUE_LUA),
            cancel: Script::new(CANCEL_LUA),
            start: Script::new(START_LUA),
            complete: Script::new(COMPLETE_LUA),
            fail: Script::new(FAIL_LUA),
            heartbeat: Script::new(include_str!("heartbeat.lua")),
            live_workers: Script::new(include_str!("live_workers.lua")),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                keys,
                main,
                beat,
                blocking,
                blocking_lock: tokio::sync::Mutex::new(()),
                group_ready: AtomicBool::new(false),
                reclaim: Mutex::new(ReclaimState { next_at: None, cursor: "0-0".into() }),
                scripts,
                outage: Outage::default(),
                addr,
                clock: RedisClock::new(),
                held: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Stores and queues a job: [`Self::stage_image`], then [`Self::enqueue_staged`].
    pub async fn enqueue(&self, job: NewJob) -> Result<(), QueueError> {
        self.stage_image(job.id, &job.image).await?;
        self.enqueue_staged(job.id, &job.fast, job.created_at_ms).await
    }

    /// Stores a job's image ahead of the job, with a plain `SET` (see "Enqueueing" above). It
    /// expires after `STAGED_IMAGE_TTL` unless [`Self::enqueue_staged`] queues its job. Redis'
    /// `TIME` comes back in the same round trip, for the enqueue fence.
    pub async fn stage_image(&self, id: JobId, image: &[u8]) -> Result<(), QueueError> {
        let key = &self.inner.keys.image(id);
        let ttl = ttl_ms(STAGED_IMAGE_TTL);
        let time: (u64, u64) = self
            .call(&self.inner.main, "store the image", OP_TIMEOUT, |mut conn| async move {
                // TIME after the SET: the upload's transfer time does not blur the clock reading.
                redis::pipe()
                    .cmd("SET")
                    .arg(key)
                    .arg(image)
                    .arg("PX")
                    .arg(ttl)
                    .ignore()
                    .cmd("TIME")
                    .query_async::<((u64, u64),)>(&mut conn)
                    .await
                    .map(|(time,)| time)
            })
            .await?;
        self.inner.clock.observe(time, std::time::Instant::now());
        Ok(())
    }

    /// Redis' time (ms) at a moment of ours, both returned: now, from the clock as last seen, or
    /// asked of Redis if never seen yet.
    async fn redis_time(&self) -> Result<(i64, std::time::Instant), QueueError> {
        let clock = &self.inner.clock;
        let now = std::time::Instant::now();
        if let Some(redis_ms) = clock.redis_ms(now) {
            return Ok((redis_ms, now));
        }
        let time: (u64, u64) = self
            .call(&self.inner.main, "read Redis' clock", OP_TIMEOUT, |mut conn| async move {
                redis::cmd("TIME").query_async(&mut conn).await
            })
            .await?;
        let received = std::time::Instant::now();
        clock.observe(time, received);
        let redis_ms =
            clock.redis_ms(received).ok_or_else(|| QueueError::Unavailable("Redis' clock could not be read".into()))?;
        Ok((redis_ms, received))
    }

    /// Queues a job whose image [`Self::stage_image`] stored: bound check, record (with the fast
    /// answer) and stream entry in one script.
    /// The script is fenced: run by Redis later than `ENQUEUE_FENCE` after this call started, it
    /// queues nothing; and if no answer comes, the job is removed in the background (see
    /// "Enqueue outcome"). So an error here always means no job, ever.
    pub async fn enqueue_staged(&self, id: JobId, sync: &Prediction, created_at_ms: u64) -> Result<(), QueueError> {
        let inner = &self.inner;
        let limit = inner.config.policy.max_queue;
        let byte_limit = inner.config.policy.max_queue_bytes;
        let (redis_now, now) = self.redis_time().await?;
        let deadline = redis_now.saturating_add(i64::try_from(ENQUEUE_FENCE.as_millis()).unwrap_or(i64::MAX));
        // From here on, by our clock, Redis' clock is surely past the deadline.
        let fence_at = now + ENQUEUE_FENCE;
        let mut invocation = inner.scripts.enqueue.prepare_invoke();
        invocation
            .key(&inner.keys.stream)
            .key(inner.keys.job(id))
            .key(inner.keys.image(id))
            .key(&inner.keys.queued_bytes)
            .arg(limit)
            .arg(ttl_ms(self.unfinished_ttl()))
            .arg(id.to_string())
            .arg(to_json(sync)?)
            .arg(created_at_ms)
            .arg(byte_limit)
            .arg(deadline);
        let invocation = &invocation;
        let queued: i64 = match self
            .call(
                &inner.main,
                "enqueue",
                OP_TIMEOUT,
                |mut conn| async move { invocation.invoke_async(&mut conn).await },
            )
            .await
        {
            Ok(queued) => queued,
            Err(err) => {
                // The script may have run with its answer lost (or be about to run): undo it.
                self.cancel_in_background(id, fence_at);
                return Err(err);
            }
        };
        match queued {
            1 => Ok(()),
            0 => Err(QueueError::Full { limit }),
            2 => Err(QueueError::FullBytes { limit: byte_limit }),
            -2 => Err(QueueError::Unavailable(format!(
                "enqueue: Redis ran it more than {} ms late (stalled?), so it queued nothing",
                ENQUEUE_FENCE.as_millis()
            ))),
            _ => Err(QueueError::Unavailable(
                "enqueue: the job's image was not in Redis (staging failed or expired)".into(),
            )),
        }
    }

    /// After an enqueue without an answer: waits until its fence has passed (from then on the
    /// script, should Redis run it yet, queues nothing), then removes whatever it queued,
    /// retrying while Redis does not answer, up to `CANCEL_FOR`.
    fn cancel_in_background(&self, id: JobId, fence_at: std::time::Instant) {
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(Instant::from_std(fence_at)).await;
            let give_up = Instant::now() + CANCEL_FOR;
            loop {
                match queue.undo_enqueue(id).await {
                    Ok(true) => {
                        tracing::warn!(job = %id, "an enqueue whose answer was lost had queued its job; removed it, as its client was told it was not queued");
                        return;
                    }
                    Ok(false) => return,
                    Err(err) if Instant::now() >= give_up => {
                        tracing::warn!(job = %id, error = %err, "could not make sure that an enqueue without an answer left no job");
                        return;
                    }
                    Err(_) => tokio::time::sleep(CANCEL_RETRY).await,
                }
            }
        });
    }

    /// Runs `CANCEL_LUA` once; whether a record was removed. Public for the tests only (the
    /// undo of an enqueue that did get its answer would remove a job its client was given).
    #[doc(hidden)]
    pub async fn undo_enqueue(&self, id: JobId) -> Result<bool, QueueError> {
        let inner = &self.inner;
        let mut invocation = inner.scripts.cancel.prepare_invoke();
        invocation.key(inner.keys.job(id)).key(inner.keys.image(id)).key(&inner.keys.queued_bytes);
        let invocation = &invocation;
        let existed: i64 = self
            .call(&inner.main, "cancel an enqueue", OP_TIMEOUT, |mut conn| async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        Ok(existed == 1)
    }

    /// Deletes a staged image whose job will not be queued (best effort: it expires anyway).
    pub async fn discard_staged(&self, id: JobId) {
        let key = &self.inner.keys.image(id);
        let deleted = self
            .call(&self.inner.main, "discard the image", OP_TIMEOUT, |mut conn| async move {
                redis::cmd("UNLINK").arg(key).query_async::<()>(&mut conn).await
            })
            .await;
        if let Err(err) = deleted {
            tracing::debug!(job = %id, error = %err, "staged image left to expire");
        }
    }

    pub async fn get(&self, id: JobId) -> Result<Option<JobRecord>, QueueError> {
        let key = self.inner.keys.job(id);
        let key = &key;
        let fields: Vec<(String, String)> = self
            .call(&self.inner.main, "get", OP_TIMEOUT, |mut conn| async move {
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
            .call(&self.inner.main, "depth", OP_TIMEOUT, |mut conn| async move {
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

    /// How long one heartbeat keeps this worker counted as live (see "Live workers").
    pub fn heartbeat_ttl(&self) -> Duration {
        self.inner.config.reclaim_after.clamp(HEARTBEAT_TTL_MIN, HEARTBEAT_TTL_MAX)
    }

    /// How often a worker beats: a third of the heartbeat's TTL, and of `reclaim_after`, which
    /// the beat's lease renewal must stay well inside.
    pub fn beat_interval(&self) -> Duration {
        (self.heartbeat_ttl().min(self.inner.config.reclaim_after) / 3).max(Duration::from_millis(10))
    }

    /// Counts this process's consumer as a live worker for `ttl` from now (Redis' clock), and
    /// renews the lease of every job it is running (see "Taking over jobs"). On a connection of
    /// its own: call it from one runtime only (the heartbeat thread's, `presence.rs`).
    pub async fn heartbeat(&self, ttl: Duration) -> Result<(), QueueError> {
        let inner = &self.inner;
        let held: Vec<String> = inner.held.lock().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect();
        let mut invocation = inner.scripts.heartbeat.prepare_invoke();
        invocation
            .key(&inner.keys.workers)
            .key(&inner.keys.stream)
            .arg(&inner.config.consumer)
            .arg(ttl_ms(ttl))
            .arg(ttl_ms(WORKERS_SET_TTL.max(ttl)))
            .arg(GROUP)
            .arg(&held);
        let invocation = &invocation;
        let lost: Vec<String> =
            self.call(&inner.beat, "heartbeat", OP_TIMEOUT, |mut conn| async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        if !lost.is_empty() {
            let mut held = inner.held.lock().unwrap_or_else(PoisonError::into_inner);
            for entry in lost {
                if let Some((job, _)) = held.remove(&entry) {
                    tracing::warn!(
                        %job,
                        "another worker took over a job this one is running (Redis did not hear from this \
                         worker for --reclaim-after); the first result stored wins"
                    );
                }
            }
        }
        Ok(())
    }

    /// Stops counting this process's consumer as a live worker (a clean stop).
    pub async fn leave(&self) -> Result<(), QueueError> {
        let (key, consumer) = (&self.inner.keys.workers, &self.inner.config.consumer);
        self.call(&self.inner.main, "leave the live workers", OP_TIMEOUT, |mut conn| async move {
            redis::cmd("ZREM").arg(key).arg(consumer).query_async::<()>(&mut conn).await
        })
        .await
    }

    /// Workers (of every process on this Redis and prefix) whose heartbeat has not run out.
    pub async fn live_workers(&self) -> Result<u64, QueueError> {
        let inner = &self.inner;
        let mut invocation = inner.scripts.live_workers.prepare_invoke();
        invocation.key(&inner.keys.workers);
        let invocation = &invocation;
        self.call(&inner.main, "count live workers", OP_TIMEOUT, |mut conn| async move {
            invocation.invoke_async::<u64>(&mut conn).await
        })
        .await
    }

    /// Up to `max` jobs, waiting at most `wait` for the first. Jobs abandoned by a worker that
    /// died (pending longer than `reclaim_after`) are taken over first, at most once per
    /// `min(reclaim_after / 2, 1 s)` per process.
    pub async fn take(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + wait;
        self.ensure_group().await?;
        let mut taken = match self.reclaim_cursor() {
            Some(cursor) => self.reclaim(max, cursor).await?,
            None => Vec::new(),
        };
        loop {
            let want = max - taken.len();
            if want == 0 {
                break;
            }
            let block = if taken.is_empty() {
                deadline.saturating_duration_since(Instant::now()).min(BLOCK_CHUNK)
            } else {
                Duration::ZERO
            };
            match self.read_new(want, block).await {
                Ok(read) => taken.extend(read),
                // Jobs already started belong to this worker now: hand them over, not an error.
                Err(err) if !taken.is_empty() => {
                    tracing::warn!(error = %err, "reading more jobs failed");
                    break;
                }
                Err(err) => return Err(err),
            }
            if !taken.is_empty() || Instant::now() >= deadline {
                break;
            }
        }
        Ok(taken)
    }

    pub async fn complete(&self, delivery: &Delivery, result: &Prediction) -> Result<Option<usize>, QueueError> {
        let inner = &self.inner;
        let mut invocation = inner.scripts.complete.prepare_invoke();
        invocation
            .key(&inner.keys.stream)
            .key(inner.keys.job(delivery.id))
            .key(inner.keys.image(delivery.id))
            .key(&inner.keys.queued_bytes)
            .arg(GROUP)
            .arg(&delivery.tag)
            .arg(to_json(result)?)
            .arg(now_ms())
            .arg(ttl_ms(inner.config.policy.result_ttl));
        let invocation = &invocation;
        let (stored, sync): (i64, String) =
            self.call(&inner.main, "complete", OP_TIMEOUT, |mut conn| async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        if stored == 0 {
            tracing::info!(job = %delivery.id, "job already finished or expired; this result was not stored");
        }
        Ok(serde_json::from_str::<SyncClass>(&sync).ok().map(|s| s.class_index))
    }

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
            .arg(&delivery.tag)
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
            .call(&inner.main, "fail", OP_TIMEOUT, |mut conn| async move { invocation.invoke_async(&mut conn).await })
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

    fn max_attempts(&self) -> u32 {
        self.inner.config.policy.max_attempts.max(1)
    }

    fn unfinished_ttl(&self) -> Duration {
        self.inner.config.policy.result_ttl.max(UNFINISHED_MIN_TTL)
    }

    fn reclaim_interval(&self) -> Duration {
        (self.inner.config.reclaim_after / 2).clamp(Duration::from_millis(10), MAX_RECLAIM_INTERVAL)
    }

    /// The cursor to go on scanning from if it is time to look for abandoned jobs.
    fn reclaim_cursor(&self) -> Option<String> {
        let now = Instant::now();
        let mut state = self.inner.reclaim.lock().unwrap_or_else(PoisonError::into_inner);
        if state.next_at.is_some_and(|at| at > now) {
            return None;
        }
        state.next_at = Some(now + self.reclaim_interval());
        Some(state.cursor.clone())
    }

    /// Takes over jobs pending longer than `reclaim_after` (their worker died) with XAUTOCLAIM.
    async fn reclaim(&self, max: usize, cursor: String) -> Result<Vec<Delivery>, QueueError> {
        let inner = &self.inner;
        let min_idle = u64::try_from(inner.config.reclaim_after.as_millis()).unwrap_or(u64::MAX);
        let (stream, consumer, cursor) = (&inner.keys.stream, &inner.config.consumer, &cursor);
        let reply: Value = self
            .call(&inner.main, "reclaim", OP_TIMEOUT, |mut conn| async move {
                redis::cmd("XAUTOCLAIM")
                    .arg(stream)
                    .arg(GROUP)
                    .arg(consumer)
                    .arg(min_idle)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(max)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        // [next cursor, claimed entries, deleted ids (Redis 7: already dropped from the PEL)]
        let mut parts = match reply {
            Value::Array(parts) => parts.into_iter(),
            _ => return Ok(Vec::new()),
        };
        if let Some(next) = parts.next().as_ref().and_then(string_of) {
            inner.reclaim.lock().unwrap_or_else(PoisonError::into_inner).cursor = next;
        }
        let entries = parts.next().map(parse_entries).unwrap_or_default();
        if !entries.is_empty() {
            tracing::info!(
                count = entries.len(),
                "took over jobs whose lease was not renewed for --reclaim-after (their worker stopped or lost Redis)"
            );
        }
        self.start(entries).await
    }

    /// Reads new entries for this consumer, blocking up to `block` on the dedicated connection.
    async fn read_new(&self, count: usize, block: Duration) -> Result<Vec<Delivery>, QueueError> {
        let inner = &self.inner;
        let reply =
            if block.as_millis() == 0 {
                // BLOCK 0 would mean "forever": no BLOCK at all, on the ordinary connection.
                let read = &self.read_command(count, None);
                self.call(&inner.main, "take", OP_TIMEOUT, |mut conn| async move {
                    read.query_async::<Value>(&mut conn).await
                })
                .await?
            } else {
                // Another task of this process may be blocked on the connection: wait for it, but
                // not past our own deadline.
                let deadline = Instant::now() + block;
                let Ok(_guard) = tokio::time::timeout_at(deadline, inner.blocking_lock.lock()).await else {
                    return Ok(Vec::new());
                };
                let block = deadline.saturating_duration_since(Instant::now());
                if block.as_millis() == 0 {
                    return Ok(Vec::new());
                }
                let read = &self.read_command(count, Some(block));
                // If this future is dropped mid-read (the caller gave up on `take`), the BLOCK
                // goes on at the server, the next read would queue behind it and the abandoned
                // one could swallow a job: drop that connection.
                let mut abandon = AbandonOnDrop { conn: &inner.blocking, armed: true };
                let reply = self
                    .call(&inner.blocking, "take", block + OP_TIMEOUT, |mut conn| async move {
                        read.query_async::<Value>(&mut conn).await
                    })
                    .await;
                abandon.armed = false;
                reply?
            };
        self.start(parse_read_reply(reply)).await
    }

    fn read_command(&self, count: usize, block: Option<Duration>) -> redis::Cmd {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP").arg(GROUP).arg(&self.inner.config.consumer).arg("COUNT").arg(count);
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(ttl_ms(block));
        }
        cmd.arg("STREAMS").arg(&self.inner.keys.stream).arg(">");
        cmd
    }

    /// Counts an attempt for each delivered entry and marks it running, in one script; drops
    /// entries whose job is gone or that used up their attempts on workers that died.
    async fn start(&self, entries: Vec<RawEntry>) -> Result<Vec<Delivery>, QueueError> {
        let inner = &self.inner;
        let mut jobs = Vec::with_capacity(entries.len());
        let mut junk = Vec::new();
        for entry in entries {
            match entry.into_job() {
                (entry_id, Some(id)) => jobs.push((entry_id, id)),
                (entry_id, None) => junk.push(entry_id),
            }
        }
        if !junk.is_empty() {
            tracing::warn!(count = junk.len(), "dropping malformed or deleted stream entries");
            let (stream, junk) = (&inner.keys.stream, &junk);
            self.call(&inner.main, "take", OP_TIMEOUT, |mut conn| async move {
                redis::pipe()
                    .atomic()
                    .cmd("XACK")
                    .arg(stream)
                    .arg(GROUP)
                    .arg(junk)
                    .ignore()
                    .cmd("XDEL")
                    .arg(stream)
                    .arg(junk)
                    .ignore()
                    .query_async::<()>(&mut conn)
                    .await
            })
            .await?;
        }
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = inner.scripts.start.prepare_invoke();
        invocation.key(&inner.keys.stream).key(&inner.keys.dead).key(&inner.keys.queued_bytes);
        for (_, id) in &jobs {
            invocation.key(inner.keys.job(*id)).key(inner.keys.image(*id));
        }
        invocation
            .arg(GROUP)
            .arg(self.max_attempts())
            .arg(now_ms())
            .arg(ttl_ms(self.unfinished_ttl()))
            .arg(ttl_ms(inner.config.policy.result_ttl))
            .arg(DEAD_LETTER_MAXLEN);
        for (entry_id, id) in &jobs {
            invocation.arg(entry_id).arg(id.to_string());
        }
        let invocation = &invocation;
        let started: Vec<i64> = self
            .call(&inner.main, "take", OP_TIMEOUT, |mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await?;
        let mut deliveries = Vec::with_capacity(jobs.len());
        for ((tag, id), outcome) in jobs.into_iter().zip(started.chunks_exact(2)) {
            let (attempt, created_at_ms) = (outcome[0], outcome[1]);
            match attempt {
                -2 => tracing::warn!(job = %id, "job failed: out of attempts (workers stopped) or its image is gone"),
                n if n > 0 => deliveries.push(Delivery {
                    id,
                    image: Bytes::new(),
                    attempt: u32::try_from(n).unwrap_or(u32::MAX),
                    created_at_ms: u64::try_from(created_at_ms).unwrap_or(0),
                    tag,
                }),
                _ => tracing::debug!(job = %id, "dropped the entry of a job that is gone or finished"),
            }
        }
        self.load_images(&mut deliveries).await?;
        // Held from here: handed to the caller, which runs them and then releases each.
        let mut held = self.inner.held.lock().unwrap_or_else(PoisonError::into_inner);
        for delivery in &deliveries {
            held.entry(delivery.tag.clone()).or_insert((delivery.id, 0)).1 += 1;
        }
        Ok(deliveries)
    }

    /// The worker is done with a delivery (its outcome stored, or given up on): its lease is no
    /// longer renewed, so if the outcome was not stored the job is taken over after
    /// `reclaim_after`.
    pub fn release(&self, delivery: &Delivery) {
        let mut held = self.inner.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, running)) = held.get_mut(&delivery.tag) {
            *running = running.saturating_sub(1);
            if *running == 0 {
                held.remove(&delivery.tag);
            }
        }
    }

    /// Fetches the images of started jobs in one `MGET`. The start script has just checked that
    /// each exists; one deleted since (by hand) arrives empty and fails as an empty image.
    async fn load_images(&self, deliveries: &mut [Delivery]) -> Result<(), QueueError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = deliveries.iter().map(|d| self.inner.keys.image(d.id)).collect();
        let keys = &keys;
        let images: Vec<Option<Vec<u8>>> = self
            .call(&self.inner.main, "take", OP_TIMEOUT, |mut conn| async move {
                redis::cmd("MGET").arg(keys).query_async(&mut conn).await
            })
            .await?;
        for (delivery, image) in deliveries.iter_mut().zip(images) {
            delivery.image = image.map(Bytes::from).unwrap_or_default();
        }
        Ok(())
    }

    /// Creates the consumer group (and the stream) unless this process already has.
    async fn ensure_group(&self) -> Result<(), QueueError> {
        if self.inner.group_ready.load(Ordering::Relaxed) { Ok(()) } else { self.create_group().await }
    }

    /// `XGROUP CREATE ... 0 MKSTREAM`: from `0`, so that jobs added while the group did not
    /// exist (Redis restarted empty, then `enqueue` made the stream anew) are still delivered.
    async fn create_group(&self) -> Result<(), QueueError> {
        let stream = &self.inner.keys.stream;
        self.call_once(&self.inner.main, "create the consumer group", OP_TIMEOUT, |mut conn| async move {
            let created = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(stream)
                .arg(GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async::<()>(&mut conn)
                .await;
            match created {
                Err(err) if has_code(&err, "BUSYGROUP") => Ok(()),
                other => other,
            }
        })
        .await?;
        self.inner.group_ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// [`Self::call_once`], and once more after recreating the consumer group if Redis lost it.
    async fn call<T, F, Fut>(&self, conn: &Conn, what: &str, limit: Duration, op: F) -> Result<T, QueueError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        match self.try_call(conn, what, limit, &op).await {
            Err(CallError::NoGroup) => {
                tracing::info!("the Redis consumer group is gone (Redis restarted?); recreating it");
                self.inner.group_ready.store(false, Ordering::Relaxed);
                self.create_group().await?;
                self.try_call(conn, what, limit, &op).await.map_err(|err| err.into_queue_error(what))
            }
            other => other.map_err(|err| err.into_queue_error(what)),
        }
    }

    async fn call_once<T, F, Fut>(&self, conn: &Conn, what: &str, limit: Duration, op: F) -> Result<T, QueueError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.try_call(conn, what, limit, &op).await.map_err(|err| err.into_queue_error(what))
    }

    /// Runs `op` within `limit`. A refused connection means the command was never sent, so it
    /// is tried once more (the manager is already reconnecting — Redis may just be back).
    async fn try_call<T, F, Fut>(&self, conn: &Conn, what: &str, limit: Duration, op: &F) -> Result<T, CallError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let started = std::time::Instant::now();
        let mut retried = false;
        let outcome = loop {
            let err = match tokio::time::timeout(limit, op(conn.manager())).await {
                Ok(Ok(value)) => {
                    conn.succeeded();
                    break Ok(value);
                }
                Ok(Err(err)) => err,
                Err(_) => {
                    conn.failed(true);
                    break Err(CallError::TimedOut(limit));
                }
            };
            if has_code(&err, "NOGROUP") {
                conn.succeeded();
                break Err(CallError::NoGroup);
            }
            conn.failed(err.is_timeout());
            if err.is_connection_refusal() && !retried {
                retried = true;
                continue;
            }
            tracing::debug!(what, error = %err, "Redis call failed");
            break Err(CallError::Redis(err));
        };
        self.note_outcome(started, &outcome);
        outcome
    }

    /// Logs the start and the end of an outage, once each (see `outage.rs`).
    fn note_outcome<T>(&self, started: std::time::Instant, outcome: &Result<T, CallError>) {
        let inner = &self.inner;
        let now = std::time::Instant::now();
        let transition = match outcome {
            Err(err) if err.is_outage() => inner.outage.unreachable(started, now),
            _ => inner.outage.answered(started, now),
        };
        match (transition, outcome) {
            (Some(Transition::WentDown), Err(err)) => tracing::warn!(
                redis = %inner.addr,
                error = %err,
                "Redis does not answer: until it does, new jobs are not queued (POST /predict answers \
                 with \"job_id\": null) and workers wait; retrying"
            ),
            (Some(Transition::CameBack { down_for, failed_calls }), _) => tracing::info!(
                redis = %inner.addr,
                down_for_s = down_for.as_secs_f64(),
                failed_calls,
                "Redis reachable again"
            ),
            _ => {}
        }
    }
}

enum CallError {
    NoGroup,
    TimedOut(Duration),
    Redis(RedisError),
}

impl CallError {
    /// Whether Redis could not be reached (or cannot serve at all), as opposed to Redis
    /// answering this call with an error.
    fn is_outage(&self) -> bool {
        match self {
            CallError::NoGroup => false,
            CallError::TimedOut(_) => true,
            CallError::Redis(err) => {
                err.is_io_error()
                    || err.is_connection_dropped()
                    || err.is_timeout()
                    || matches!(
                        err.kind(),
                        ErrorKind::AuthenticationFailed
                            | ErrorKind::Server(ServerErrorKind::BusyLoading | ServerErrorKind::MasterDown)
                    )
            }
        }
    }

    fn into_queue_error(self, what: &str) -> QueueError {
        match self {
            CallError::NoGroup => QueueError::Unavailable(format!("{what}: the Redis consumer group is missing")),
            CallError::TimedOut(limit) => {
                QueueError::Unavailable(format!("{what}: Redis did not answer within {} ms", limit.as_millis()))
            }
            CallError::Redis(err) => unavailable(what, &err),
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::NoGroup => f.write_str("the Redis consumer group is missing"),
            CallError::TimedOut(limit) => write!(f, "no answer within {} ms", limit.as_millis()),
            CallError::Redis(err) => write!(f, "{err}"),
        }
    }
}

fn unavailable(what: &str, err: &RedisError) -> QueueError {
    QueueError::Unavailable(format!("{what}: {err}"))
}

fn has_code(err: &RedisError, code: &str) -> bool {
    err.code() == Some(code) || err.to_string().contains(code)
}

fn to_json(prediction: &Prediction) -> Result<String, QueueError> {
    serde_json::to_string(prediction)
        .map_err(|err| QueueError::Unavailable(format!("could not encode a prediction: {err}")))
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

fn bytes_of(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.as_bytes()),
        _ => None,
    }
}

fn string_of(value: &Value) -> Option<String> {
    bytes_of(value).and_then(|bytes| String::from_utf8(bytes.to_vec()).ok())
}

/// `XREADGROUP`'s reply: nil on timeout, else per stream `[key, entries]` (RESP2) or a map
/// from key to entries (RESP3). We read one stream.
fn parse_read_reply(reply: Value) -> Vec<RawEntry> {
    match reply {
        Value::Array(streams) => streams
            .into_iter()
            .flat_map(|stream| match stream {
                Value::Array(mut pair) if pair.len() == 2 => parse_entries(pair.swap_remove(1)),
                _ => Vec::new(),
            })
            .collect(),
        Value::Map(streams) => streams.into_iter().flat_map(|(_, entries)| parse_entries(entries)).collect(),
        _ => Vec::new(),
    }
}

/// A list of `[id, [field, value, ...]]`; the fields are nil for an entry deleted meanwhile.
fn parse_entries(entries: Value) -> Vec<RawEntry> {
    let Value::Array(entries) = entries else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|entry| {
            let Value::Array(parts) = entry else {
                return None;
            };
            let mut parts = parts.into_iter();
            let entry_id = string_of(&parts.next()?)?;
            let fields = match parts.next() {
                Some(Value::Array(flat)) => {
                    let mut pairs = Vec::with_capacity(flat.len() / 2);
                    let mut flat = flat.into_iter();
                    while let (Some(key), Some(value)) = (flat.next(), flat.next()) {
                        pairs.push((key, value));
                    }
                    Some(pairs)
                }
                Some(Value::Map(pairs)) => Some(pairs),
                _ => None,
            };
            Some(RawEntry { entry_id, fields })
        })
        .collect()
}

fn parse_record(id: JobId, fields: Vec<(String, String)>) -> Result<JobRecord, String> {
    let mut record: Option<JobRecord> = None;
    let mut status = None;
    let mut result = None;
    let mut error = None;
    let mut attempts = 0;
    let mut created_at_ms = 0;
    let mut started_at_ms = None;
    let mut completed_at_ms = None;
    let number = |name: &str, text: &str| text.parse::<u64>().map_err(|err| format!("{name}: {err}"));
    for (name, value) in fields {
        match name.as_str() {
            "status" => status = Some(JobStatus::parse(&value).ok_or_else(|| format!("status {value:?}"))?),
            "sync" => {
                let sync = serde_json::from_str(&value).map_err(|err| format!("sync: {err}"))?;
                record = Some(JobRecord::new(id, sync, 0));
            }
            "result" => result = Some(serde_json::from_str(&value).map_err(|err| format!("result: {err}"))?),
            "error" => error = Some(value),
            "attempts" => attempts = u32::try_from(number("attempts", &value)?).unwrap_or(u32::MAX),
            "created_at_ms" => created_at_ms = number("created_at_ms", &value)?,
            "started_at_ms" => started_at_ms = Some(number("started_at_ms", &value)?),
            "completed_at_ms" => completed_at_ms = Some(number("completed_at_ms", &value)?),
            _ => {}
        }
    }
    let mut record = record.ok_or("no sync prediction")?;
    record.status = status.ok_or("no status")?;
    record.result = result;
    record.error = error;
    record.attempts = attempts;
    record.created_at_ms = created_at_ms;
    record.started_at_ms = started_at_ms;
    record.completed_at_ms = completed_at_ms;
    Ok(record)
}
