//! The embedded queue: jobs and results in this process's memory.
//!
//! The zero-setup default: `tandem serve` with no Redis runs the accurate tier on in-process
//! workers fed from here. Bounded by `max_queue` jobs and `max_queue_bytes` of images; finished
//! records expire after `result_ttl`. Nothing survives a restart of the process — use Redis for
//! that.
//!
//! # Cache and shared runs
//!
//! With the cache on (`QueuePolicy::cache`), a completed job's result is kept by its image's
//! hash in a bounded LRU (`crate::cache`), and a job whose bytes are already queued or running
//! is not queued again: it *follows* that job (`State::followers`), mirrors its `running`,
//! and ends when it ends, with its result. Canceling a followed job hands its place in the queue
//! (its delivery) to its first follower still waiting, so the others are not left without a run.
//!
//! # Counting image bytes
//!
//! A queued job keeps its whole upload until its worker is done with it, so the bytes bound is
//! what bounds this queue's memory. Each queued image is wrapped (`Bytes::from_owner`) with a
//! `HeldBytes` guard that gives its bytes back when the last copy of the image is dropped:
//! the count follows the memory itself, whichever way a job ends (completed, dead, or a worker
//! task dropped mid-job), and a retried job, whose image is the same buffer, is not counted
//! twice. The count is an atomic beside the lock, not under it: a guard may drop anywhere,
//! possibly while this queue's lock is held, so it must never take it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;

mod held;
mod runs;

use super::events::JobEvents;
use super::{
    CancelOutcome, Delivery, Enqueued, FailOutcome, NewJob, QueueDepth, QueueError, QueuePolicy, Receipt, WebhookTask,
};
use crate::cache::MemoryCache;
use crate::engine::Prediction;
use crate::fingerprint::ContentHash;
use crate::jobs::{JobId, JobRecord, JobStatus, ResultSource, now_ms};
use held::{HeldBytes, QueuedImage};

#[derive(Clone)]
pub struct EmbeddedQueue {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    /// Wakes a waiting `take` when a job arrives.
    arrived: Notify,
    policy: QueuePolicy,
    /// Workers taking from this queue now (the one inside `serve`, while it runs).
    workers: AtomicU64,
    /// Told of every state change, after the lock is released.
    events: JobEvents,
    /// Wakes the webhook sender when a job with a callback ends.
    webhook_ready: Notify,
    /// Completed results by image hash, with the cache on.
    results: Option<MemoryCache<ContentHash, Prediction>>,
}

#[derive(Default)]
struct State {
    waiting: VecDeque<Delivery>,
    running: usize,
    records: HashMap<JobId, Entry>,
    /// Finished jobs in completion order, so expiry never scans the whole map.
    expiries: VecDeque<(Instant, JobId)>,
    /// Bytes of the images of queued jobs (see "Counting image bytes").
    image_bytes: Arc<AtomicU64>,
    /// Jobs with a callback that have ended: their webhooks, to send.
    webhooks: VecDeque<JobId>,
    /// With the cache on: the unfinished job each image's bytes are being run for.
    running_for: HashMap<ContentHash, JobId>,
    /// The jobs that share a queued or running job's run (see "Cache and shared runs").
    followers: HashMap<JobId, Vec<JobId>>,
}

struct Entry {
    record: JobRecord,
    expires_at: Option<Instant>,
    /// The image's hash, with the cache on: where its result is cached.
    content: Option<ContentHash>,
}

impl EmbeddedQueue {
    pub fn new(policy: QueuePolicy) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::default(),
                arrived: Notify::new(),
                workers: AtomicU64::new(0),
                events: JobEvents::default(),
                webhook_ready: Notify::new(),
                results: policy.cache.is_on().then(|| MemoryCache::new(policy.cache.entries, policy.cache.ttl)),
                policy,
            }),
        }
    }

    /// Counts a worker as live until the returned guard is dropped.
    pub fn register_worker(&self) -> EmbeddedWorker {
        self.inner.workers.fetch_add(1, Ordering::Relaxed);
        EmbeddedWorker { inner: Arc::clone(&self.inner) }
    }

    pub fn live_workers(&self) -> u64 {
        self.inner.workers.load(Ordering::Relaxed)
    }

    /// Where this queue announces its jobs' state changes.
    pub fn events(&self) -> &JobEvents {
        &self.inner.events
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves plain data behind; keep serving it.
        self.inner.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn policy(&self) -> &QueuePolicy {
        &self.inner.policy
    }

    /// Queues a job with its fast answer (`StagedJob::commit`); with `content`, one whose bytes
    /// are already queued or running follows that job instead.
    pub(super) fn enqueue(
        &self,
        job: &NewJob<'_>,
        image: Bytes,
        content: Option<&ContentHash>,
    ) -> Result<Enqueued, QueueError> {
        let content = content.filter(|_| self.inner.results.is_some());
        let mut state = self.state();
        state.expire(Instant::now());
        // Looked up under the lock the run's `complete` caches under: a run that ended while
        // this request waited for its fast answer is found here, not run again.
        if let Some(result) = content.and_then(|c| self.cached_result(c)) {
            let record = state.new_record(job);
            state.records.insert(job.id, Entry { record, expires_at: None, content: None });
            state.finish(job.id, self.inner.policy.result_ttl, |record| {
                record.status = JobStatus::Completed;
                record.result = Some(result.clone());
                record.source = ResultSource::Cache;
            });
            drop(state);
            self.job_ended(job.id);
            return Ok(Enqueued::Cached(result));
        }
        let leader = content.and_then(|c| state.unfinished_run_for(c));
        let room = leader.is_some_and(|l| state.followers.get(&l).map_or(0, Vec::len) < super::MAX_FOLLOWERS);
        if let Some(leader) = leader.filter(|_| room) {
            let mut record = state.new_record(job);
            // A follower mirrors its leader from the start: it may be running already.
            if let Some(leading) = state.records.get(&leader) {
                record.status = leading.record.status;
                record.started_at_ms = leading.record.started_at_ms;
                record.attempts = leading.record.attempts;
            }
            state.records.insert(job.id, Entry { record, expires_at: None, content: None });
            state.followers.entry(leader).or_default().push(job.id);
            return Ok(Enqueued::SharedRun);
        }
        let limit = self.inner.policy.max_queue;
        if state.waiting.len() + state.running >= limit {
            return Err(QueueError::Full { limit });
        }
        let byte_limit = self.inner.policy.max_queue_bytes;
        let held = HeldBytes::take(&state.image_bytes, image.len() as u64, byte_limit)
            .ok_or(QueueError::FullBytes { limit: byte_limit })?;
        let image = Bytes::from_owner(QueuedImage { image, _held: held });
        let record = state.new_record(job);
        state.records.insert(job.id, Entry { record, expires_at: None, content: content.copied() });
        if let Some(content) = content {
            state.running_for.insert(*content, job.id);
        }
        state.waiting.push_back(Delivery {
            id: job.id,
            image,
            attempt: 0,
            created_at_ms: job.created_at_ms,
            fast_class: None,
            receipt: Receipt::default(),
        });
        drop(state);
        self.inner.arrived.notify_one();
        Ok(Enqueued::Queued)
    }

    /// Stores a job as completed already (`StagedJob::finish_now`): no worker sees it.
    pub(super) fn finish_now(&self, job: &NewJob<'_>, result: &Prediction, source: ResultSource) {
        let mut state = self.state();
        state.expire(Instant::now());
        let record = state.new_record(job);
        state.records.insert(job.id, Entry { record, expires_at: None, content: None });
        state.finish(job.id, self.inner.policy.result_ttl, |record| {
            record.status = JobStatus::Completed;
            record.result = Some(result.clone());
            record.source = source;
        });
        drop(state);
        self.job_ended(job.id);
    }

    /// The cached accurate result for these bytes, if any.
    pub fn cached_result(&self, content: &ContentHash) -> Option<Prediction> {
        self.inner.results.as_ref()?.get(content)
    }

    /// Results in the cache now (0 with it off).
    pub fn cached_results(&self) -> usize {
        self.inner.results.as_ref().map_or(0, MemoryCache::len)
    }

    pub fn get(&self, id: JobId) -> Option<JobRecord> {
        let state = self.state();
        let entry = state.records.get(&id)?;
        match entry.expires_at {
            Some(at) if at <= Instant::now() => None,
            _ => Some(entry.record.clone()),
        }
    }

    pub fn check_ready(&self) -> Result<(), QueueError> {
        Ok(())
    }

    /// Bytes of images the queued jobs hold now (see "Counting image bytes").
    pub fn held_bytes(&self) -> u64 {
        self.state().image_bytes.load(Ordering::Acquire)
    }

    pub fn depth(&self) -> QueueDepth {
        let state = self.state();
        QueueDepth { waiting: state.waiting.len() as u64, pending: state.running as u64 }
    }

    pub async fn take(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register interest before looking, so a job enqueued in between still wakes us.
            let arrived = self.inner.arrived.notified();
            let taken = self.take_now(max);
            if !taken.is_empty() {
                for delivery in &taken {
                    self.changed_with_followers(delivery.id);
                }
                return Ok(taken);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    fn take_now(&self, max: usize) -> Vec<Delivery> {
        let mut state = self.state();
        let count = max.min(state.waiting.len());
        let mut taken: Vec<Delivery> = state.waiting.drain(..count).collect();
        state.running += taken.len();
        let started = now_ms();
        for delivery in &mut taken {
            delivery.attempt += 1;
            if let Some(entry) = state.records.get_mut(&delivery.id) {
                entry.record.status = JobStatus::Running;
                entry.record.attempts = delivery.attempt;
                entry.record.started_at_ms = Some(started);
                delivery.fast_class = Some(entry.record.fast.class_index);
            }
            state.mirror(delivery.id, JobStatus::Running, Some(started), delivery.attempt);
        }
        if !state.waiting.is_empty() {
            // More work than this taker wanted: let another worker have it.
            self.inner.arrived.notify_one();
        }
        taken
    }

    pub fn complete(&self, delivery: &Delivery, result: &Prediction) -> Result<(), QueueError> {
        let ttl = self.inner.policy.result_ttl;
        let mut state = self.state();
        state.running = state.running.saturating_sub(1);
        let content = state.records.get(&delivery.id).and_then(|entry| entry.content);
        if let (Some(content), Some(results)) = (content, &self.inner.results) {
            results.put(content, result.clone());
        }
        let ended = state.finish_run(delivery.id, ttl, |record, leader| {
            record.status = JobStatus::Completed;
            record.result = Some(result.clone());
            record.error = None;
            if !leader {
                record.source = ResultSource::SharedRun;
            }
        });
        drop(state);
        for id in ended {
            self.job_ended(id);
        }
        Ok(())
    }

    /// Tells the watchers of a job, and of those that follow it, that it changed.
    fn changed_with_followers(&self, id: JobId) {
        let followers = self.state().followers.get(&id).cloned().unwrap_or_default();
        self.inner.events.changed(id);
        for follower in followers {
            self.inner.events.changed(follower);
        }
    }

    /// Tells a job's watchers, and the webhook sender, that it has ended.
    fn job_ended(&self, id: JobId) {
        self.inner.events.changed(id);
        self.inner.webhook_ready.notify_one();
    }

    /// Up to `max` webhooks of ended jobs, waiting at most `wait` for the first.
    pub async fn take_webhooks(&self, max: usize, wait: Duration) -> Vec<WebhookTask> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let ready = self.inner.webhook_ready.notified();
            let taken: Vec<WebhookTask> = {
                let mut state = self.state();
                let count = max.min(state.webhooks.len());
                state
                    .webhooks
                    .drain(..count)
                    .map(|id| WebhookTask { id, attempts: 0, receipt: Receipt::default() })
                    .collect()
            };
            if !taken.is_empty() || tokio::time::timeout_at(deadline, ready).await.is_err() {
                return taken;
            }
        }
    }

    pub fn cancel(&self, id: JobId) -> CancelOutcome {
        let mut state = self.state();
        state.expire(Instant::now());
        let Some(entry) = state.records.get(&id) else { return CancelOutcome::Unknown };
        match entry.record.status {
            JobStatus::Queued => {}
            JobStatus::Canceled => return CancelOutcome::Canceled,
            other => return CancelOutcome::TooLate(other),
        }
        // Queued means waiting (a retried job is put back before its status says queued):
        // dropping its delivery lets go of its image and the bytes it counted, unless a
        // follower takes its place (see "Cache and shared runs").
        let at = state.waiting.iter().position(|d| d.id == id);
        let heir = at.and_then(|_| state.hand_over(id));
        let withdrawn = match (at, heir) {
            (Some(at), Some(heir)) => {
                let created_at_ms = state.records.get(&heir).map(|entry| entry.record.created_at_ms);
                if let Some(delivery) = state.waiting.get_mut(at) {
                    delivery.id = heir;
                    delivery.created_at_ms = created_at_ms.unwrap_or(delivery.created_at_ms);
                }
                None
            }
            (Some(at), None) => state.waiting.remove(at),
            (None, _) => None,
        };
        state.finish(id, self.inner.policy.result_ttl, |record| record.status = JobStatus::Canceled);
        state.forget_run(id);
        drop(state);
        drop(withdrawn);
        self.job_ended(id);
        CancelOutcome::Canceled
    }

    pub fn fail(&self, delivery: &Delivery, error: &str) -> Result<FailOutcome, QueueError> {
        let policy = &self.inner.policy;
        let mut state = self.state();
        state.running = state.running.saturating_sub(1);
        if delivery.attempt >= policy.max_attempts {
            let ended = state.finish_run(delivery.id, policy.result_ttl, |record, _| {
                record.status = JobStatus::Failed;
                record.error = Some(error.to_owned());
            });
            drop(state);
            for id in ended {
                self.job_ended(id);
            }
            return Ok(FailOutcome::Dead);
        }
        if let Some(entry) = state.records.get_mut(&delivery.id) {
            entry.record.status = JobStatus::Queued;
            entry.record.error = Some(error.to_owned());
        }
        state.mirror(delivery.id, JobStatus::Queued, None, delivery.attempt);
        state.waiting.push_back(delivery.clone());
        drop(state);
        self.inner.arrived.notify_one();
        self.changed_with_followers(delivery.id);
        Ok(FailOutcome::Retrying)
    }
}

/// A worker counted in [`EmbeddedQueue::live_workers`]; uncounted when dropped.
pub struct EmbeddedWorker {
    inner: Arc<Inner>,
}

impl Drop for EmbeddedWorker {
    fn drop(&mut self) {
        self.inner.workers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl State {
    fn new_record(&self, job: &NewJob<'_>) -> JobRecord {
        let mut record = JobRecord::new(job.id, job.fast.clone(), job.created_at_ms);
        record.callback_url = job.callback_url.map(str::to_owned);
        record
    }

    fn finish(&mut self, id: JobId, ttl: Duration, update: impl FnOnce(&mut JobRecord)) {
        let now = Instant::now();
        if let Some(entry) = self.records.get_mut(&id) {
            update(&mut entry.record);
            entry.record.completed_at_ms = Some(now_ms());
            entry.expires_at = Some(now + ttl);
            self.expiries.push_back((now + ttl, id));
            if entry.record.callback_url.is_some() {
                self.webhooks.push_back(id);
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.expiries.front() {
            if at > now {
                break;
            }
            self.expiries.pop_front();
            self.records.remove(&id);
            self.followers.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests;
