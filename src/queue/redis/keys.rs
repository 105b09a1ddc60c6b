//! The Redis key schema: every key the queue reads or writes, and what each holds.
//!
//! # Keys (all under `config.prefix`)
//!
//! - `{prefix}:jobs` — a stream holding only *unfinished* jobs, one entry per job with one
//!   field, `id` (the job's UUID). Consumer group `workers` reads it. An entry is acknowledged
//!   *and deleted* in the same atomic step that stores the job's outcome, so `XLEN` is
//!   "waiting + running".
//! - `{prefix}:image:{uuid}` — the encoded image, binary, stored once. It lives exactly as long
//!   as the job's stream entry: every step that deletes the entry deletes the image with it
//!   (an undone enqueue deletes it, with the record, before its entry: see "Enqueue outcome"
//!   in `enqueue.rs`). It is written by a plain `SET` *before* the job is queued (see
//!   "Enqueueing" in `enqueue.rs`).
//! - `{prefix}:job:{uuid}` — a hash with the job's record: `status`, `sync` and `result` (JSON),
//!   `error`, `attempts`, `created_at_ms`, `started_at_ms`, `completed_at_ms`. It expires
//!   `result_ttl` after the job finishes (while unfinished, after at least an hour; see
//!   `UNFINISHED_MIN_TTL`).
//! - `{prefix}:workers` — a sorted set of live workers: member the worker's consumer name,
//!   score the time (ms, Redis' clock) until which its latest heartbeat counts (see "Live
//!   workers" in `mod.rs`). The set expires by itself a minute after the last heartbeat.
//! - `{prefix}:dead` — the dead-letter stream (capped near `DEAD_LETTER_MAXLEN`, `mod.rs`): one entry
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
//! Not a key but named alike: `{prefix}:jobs:events`, the pub/sub channel on which every script
//! that changes a job's state (to running, queued again, completed, failed) publishes the job's
//! UUID, in the same atomic step (`events.rs`). Always the stream's name plus `:events`, so
//! the scripts derive it from `KEYS[1]`.
//!
//! - `{prefix}:jobs:webhooks` — a stream of webhooks to send, one entry (`id`) per job with a
//!   `callback` that has ended, added by the script that ends it (`ended.lua`). Consumer group
//!   `webhooks` ([`WEBHOOK_GROUP`]); an entry is acknowledged and deleted once delivered or given
//!   up, and taken over by another process if its sender stops renewing it (`webhooks.rs`).
//!   The job hash holds the webhook's `callback` URL, its stream `entry`, and `webhook_attempts`.
//!
//! # Shared runs and the result cache (with `--cache-ttl`)
//!
//! - `{prefix}:accurate_model` — the identity (`fingerprint::ModelIdentity`) of the accurate
//!   model the workers run, set by each worker as it starts: the last one started names it.
//! - `{prefix}:cache:v1:{identity}:{sha256}` — the accurate result (JSON) for an image's bytes
//!   under that model, written by `complete.lua` with the TTL the queueing `serve` stored in the
//!   job (`cache_ttl`), read by `lookup.lua` under the announced identity. A model changed on
//!   disk gives a new identity, so no earlier result is ever read for it. These two keys are
//!   built inside the scripts (not passed as KEYS): fine on one Redis; a Redis Cluster would
//!   need them hash-tagged and passed in.
//! - `{prefix}:inflight:{sha256}` — the id of the unfinished job these bytes are being run
//!   for; its hash names the key (`inflight`) and holds `content` and `cache_ttl`. A job queued
//!   for the same bytes while it is unfinished *follows* it instead: a hash with `follows` and
//!   no image or stream entry, in the list `{prefix}:followers:{uuid}` of its leader (oldest
//!   first, at most `MAX_FOLLOWERS`; their TTLs renewed with the leader's), which
//!   `runs.lua` mirrors (`running`, queued again) and ends (with the result, `source`
//!   `shared_run`; or `failed`) with it. A canceled leader hands its run to its first follower
//!   still queued (`withdraw.lua`); a leader whose record is gone when a worker meets its entry
//!   (expired, or an undone enqueue) ends its followers `failed` (`start.lua`). A job completed without a worker (`finish_now.lua`) has
//!   `source` `cache` or `cascade`.
//!
//! # Acknowledgement by replicas (with `--redis-wait-replicas`)
//!
//! - `{prefix}:replicated` — a counter, incremented before each `WAIT` so that the `WAIT` has a
//!   write of its connection's own to wait for (`replicas.rs`). Its value means nothing.
//!
//! The consumer group every worker reads `{prefix}:jobs` through is [`GROUP`].

use crate::jobs::JobId;

/// The consumer group every worker reads through.
pub(super) const GROUP: &str = "workers";
/// The consumer group webhook senders read `{prefix}:jobs:webhooks` through.
pub(super) const WEBHOOK_GROUP: &str = "webhooks";

/// The names of one deployment's keys (see the module's header).
pub(super) struct Keys {
    pub stream: String,
    pub dead: String,
    pub workers: String,
    pub queued_bytes: String,
    /// The job-events channel: `stream` + `:events` (the scripts build it so).
    pub events: String,
    /// Webhooks to send: `stream` + `:webhooks` (the scripts build it so).
    pub webhooks: String,
    /// The identity of the accurate model the workers announced.
    pub accurate_model: String,
    /// `{prefix}:cache:`, which the scripts complete with the identity and the image's hash.
    pub cache_prefix: String,
    /// Written before each `WAIT` (`replicas.rs`).
    pub replication_marker: String,
    inflight_prefix: String,
    job_prefix: String,
    image_prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            stream: format!("{prefix}:jobs"),
            dead: format!("{prefix}:dead"),
            workers: format!("{prefix}:workers"),
            queued_bytes: format!("{prefix}:queued_bytes"),
            events: format!("{prefix}:jobs:events"),
            webhooks: format!("{prefix}:jobs:webhooks"),
            accurate_model: format!("{prefix}:accurate_model"),
            // Versioned: results written in another shape by another release are not read.
            cache_prefix: format!("{prefix}:cache:v1:"),
            replication_marker: format!("{prefix}:replicated"),
            inflight_prefix: format!("{prefix}:inflight:"),
            job_prefix: format!("{prefix}:job:"),
            image_prefix: format!("{prefix}:image:"),
        }
    }

    /// `{prefix}:job:{uuid}`: the job's record.
    pub fn job(&self, id: JobId) -> String {
        format!("{}{}", self.job_prefix, id)
    }

    /// `{prefix}:inflight:{sha256}`: the job these bytes are being run for (`content`: '' when
    /// the cache is off, a key no job uses).
    pub fn inflight(&self, content: &str) -> String {
        format!("{}{}", self.inflight_prefix, content)
    }

    /// `{prefix}:image:{uuid}`: the job's image.
    pub fn image(&self, id: JobId) -> String {
        format!("{}{}", self.image_prefix, id)
    }
}
