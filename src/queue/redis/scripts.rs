//! The Lua scripts that make each state change of a job one atomic step (see "Atomicity" in
//! the module above), each read from its own `.lua` file beside this one.
//!
//! Every script that deletes a queued job's image has `drop_image.lua` prepended, so the image
//! and its bytes in `{prefix}:queued_bytes` always go together; every script that ends a job
//! has `ended.lua`, which tells the job's watchers and queues its webhook in the same step;
//! every script that moves a job other jobs may follow has `runs.lua` (see "Shared runs" in
//! `keys.rs`), which moves them with it.
//! Scripts are sent as `EVALSHA` and reloaded by the client after a Redis restart (`NOSCRIPT`).

use redis::Script;

/// Fence, image check, bound checks, record and stream entry in one step; the staged image is
/// kept (expiry removed) and its bytes counted if the job is queued, deleted if the queue is
/// full or the fence passed.
/// With the cache on, a job whose bytes have a cached result completes with it at once, and one
/// whose bytes are already queued or running follows that run instead.
/// KEYS: stream, job hash, image, queued bytes, the in-flight key of its bytes,
/// `{prefix}:accurate_model`. ARGV: max_queue, unfinished ttl ms, job id, sync json,
/// created_at_ms, max_queue_bytes, deadline (ms, Redis' clock), callback url or '', the image's
/// hash or '' (cache off), cache ttl ms, `{prefix}:cache:`, final ttl ms. Returns the cached
/// result's JSON if there was one (the job is completed); else 1 if queued, 3 if it follows a
/// run, 0 if the queue is full (jobs), 2 if it is full (bytes), -1 if the image is not staged,
/// -2 if run at or after the deadline (the caller has given up).
const ENQUEUE_LUA: &str = concat!(include_str!("ended.lua"), include_str!("runs.lua"), include_str!("enqueue.lua"));

/// Stores a job completed without a worker (a cached result, or the fast answer the cascade
/// kept) and deletes its staged image.
/// KEYS: stream, job hash, image. ARGV: sync json, result json, created_at_ms, now ms, final ttl
/// ms, callback url or '', source, job id. Returns 1.
const FINISH_NOW_LUA: &str = concat!(include_str!("ended.lua"), include_str!("finish_now.lua"));

/// Reads the cached result for an image under the accurate model the workers announced.
/// KEYS: `{prefix}:accurate_model`. ARGV: `{prefix}:cache:`, the image's hash. Returns the
/// result's JSON, or nil.
const LOOKUP_LUA: &str = include_str!("lookup.lua");

/// Starts a batch of delivered entries.
/// KEYS: stream, dead-letter stream, queued bytes, then (job hash, image) per entry.
/// ARGV: group, max_attempts, now ms, unfinished ttl ms, final ttl ms, dead-letter maxlen, then
/// (entry id, job id) per entry. Returns three values per entry: (attempt, created_at_ms, the
/// job's `sync` JSON or '') for a started job, (-1, 0, '') for one whose record is gone or
/// already finished (its entry is dropped), (-2, 0, '') for one that used up its attempts on
/// workers that died, or whose image is missing (ended `failed`, dead-lettered). The fast
/// answer comes back here, where the record is read anyway, for the worker's tier agreement.
const START_LUA: &str = concat!(
    include_str!("drop_image.lua"),
    include_str!("ended.lua"),
    include_str!("runs.lua"),
    include_str!("start.lua")
);

/// Stores the result and removes the entry, in one step. A job already finished (by a worker
/// that was thought dead but was only slow) keeps its first outcome.
/// KEYS: stream, job hash, image, queued bytes. ARGV: group, entry id, result json, now ms,
/// final ttl ms, `{prefix}:cache:{identity}:` of this worker's model or ''. Its followers
/// complete with it; a stored result is cached if the job asked (`content`, `cache_ttl`).
/// Returns 1 if the result was stored, 0 if the job was already finished or gone.
/// `results_reported` counts every result a worker hands in, stored or not: above 1 means the
/// job was computed more than once (a duplicate), which operators and the fault suite watch.
const COMPLETE_LUA: &str = concat!(
    include_str!("drop_image.lua"),
    include_str!("ended.lua"),
    include_str!("runs.lua"),
    include_str!("complete.lua")
);

/// Records a failed attempt: back of the queue as a new entry (the image stays where it is),
/// or `failed` + dead letter (image deleted); the old entry is acknowledged and deleted either way.
/// KEYS: stream, job hash, dead-letter stream, image, queued bytes.
/// ARGV: group, entry id, attempt, max_attempts, error, now ms, final ttl ms, unfinished ttl ms,
/// job id, dead-letter maxlen.
/// Returns 1 retrying, 2 dead, 0 when this delivery no longer held the job (nothing changed),
/// 3 when it no longer held it and the job had already failed.
const FAIL_LUA: &str = concat!(
    include_str!("drop_image.lua"),
    include_str!("ended.lua"),
    include_str!("runs.lua"),
    include_str!("fail.lua")
);

/// Removes what an enqueue whose answer was lost may have queued (see "Enqueue outcome" in
/// `enqueue.rs`): the record, so a worker drops the entry (`START_LUA`) or does not store its
/// result (`COMPLETE_LUA`), and the image: a staged one (never counted) outright, a queued one
/// through `drop_image`, so its bytes go back once (the worker that meets the entry later finds
/// no image).
/// KEYS: job hash, image, queued bytes. Returns 1 if there was a record.
const CANCEL_LUA: &str = concat!(include_str!("drop_image.lua"), include_str!("cancel.lua"));

/// Cancels a job no worker has started (`DELETE /job/{id}`): `canceled`, its entry out of the
/// stream (acknowledged too, for one read but not yet started), its image dropped.
/// A job others follow hands its run to the first of them still queued instead.
/// KEYS: stream, job hash, image, queued bytes. ARGV: group, now ms, final ttl ms, job id,
/// unfinished ttl ms. Returns the status the job had: `queued` (now canceled), another (left as
/// it is), or '' (no record).
const WITHDRAW_LUA: &str = concat!(
    include_str!("drop_image.lua"),
    include_str!("ended.lua"),
    include_str!("runs.lua"),
    include_str!("withdraw.lua")
);

/// A worker's heartbeat and lease renewal (KEYS, ARGV and reply in the file).
const HEARTBEAT_LUA: &str = include_str!("heartbeat.lua");

/// Counts the live workers (KEYS and reply in the file).
const LIVE_WORKERS_LUA: &str = include_str!("live_workers.lua");

/// Every script, prepared once per queue (each knows its SHA for `EVALSHA`).
pub(super) struct Scripts {
    pub enqueue: Script,
    pub cancel: Script,
    pub withdraw: Script,
    pub start: Script,
    pub complete: Script,
    pub fail: Script,
    pub heartbeat: Script,
    pub live_workers: Script,
    pub finish_now: Script,
    pub lookup: Script,
}

impl Scripts {
    pub fn new() -> Self {
        Self {
            enqueue: Script::new(ENQUEUE_LUA),
            cancel: Script::new(CANCEL_LUA),
            withdraw: Script::new(WITHDRAW_LUA),
            start: Script::new(START_LUA),
            complete: Script::new(COMPLETE_LUA),
            fail: Script::new(FAIL_LUA),
            heartbeat: Script::new(HEARTBEAT_LUA),
            live_workers: Script::new(LIVE_WORKERS_LUA),
            finish_now: Script::new(FINISH_NOW_LUA),
            lookup: Script::new(LOOKUP_LUA),
        }
    }
}
