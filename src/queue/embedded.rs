//! The embedded queue: jobs and results in this process's memory.
//!
//! The zero-setup default: `tandem serve` with no Redis runs the accurate tier on in-process
//! workers fed from here. Bounded by `max_queue` jobs and `max_queue_bytes` of images; finished
//! records expire after `result_ttl`. Nothing survives a restart of the process — use Redis for
//! that.
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

use super::events::JobEvents;
use super::{CancelOutcome, Delivery, FailOutcome, QueueDepth, QueueError, QueuePolicy, Receipt, WebhookTask};
use crate::engine::Prediction;
use crate::jobs::{JobId, JobRecord, JobStatus, now_ms};

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
}

struct Entry {
    record: JobRecord,
    expires_at: Option<Instant>,
}

impl EmbeddedQueue {
    pub fn new(policy: QueuePolicy) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::default(),
                arrived: Notify::new(),
                policy,
                workers: AtomicU64::new(0),
                events: JobEvents::default(),
                webhook_ready: Notify::new(),
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

    /// Queues a job with its fast answer (`StagedJob::commit`).
    pub(super) fn enqueue(
        &self,
        id: JobId,
        image: Bytes,
        fast: &Prediction,
        created_at_ms: u64,
        callback_url: Option<&str>,
    ) -> Result<(), QueueError> {
        let mut state = self.state();
        state.expire(Instant::now());
        let limit = self.inner.policy.max_queue;
        if state.waiting.len() + state.running >= limit {
            return Err(QueueError::Full { limit });
        }
        let byte_limit = self.inner.policy.max_queue_bytes;
        let held = HeldBytes::take(&state.image_bytes, image.len() as u64, byte_limit)
            .ok_or(QueueError::FullBytes { limit: byte_limit })?;
        let image = Bytes::from_owner(QueuedImage { image, _held: held });
        let mut record = JobRecord::new(id, fast.clone(), created_at_ms);
        record.callback_url = callback_url.map(str::to_owned);
        state.records.insert(id, Entry { record, expires_at: None });
        state.waiting.push_back(Delivery {
            id,
            image,
            attempt: 0,
            created_at_ms,
            fast_class: None,
            receipt: Receipt::default(),
        });
        drop(state);
        self.inner.arrived.notify_one();
        Ok(())
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
                    self.inner.events.changed(delivery.id);
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
        state.finish(delivery.id, ttl, |record| {
            record.status = JobStatus::Completed;
            record.result = Some(result.clone());
            record.error = None;
        });
        drop(state);
        self.job_ended(delivery.id);
        Ok(())
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
        // dropping its delivery lets go of its image and the bytes it counted.
        let withdrawn = state.waiting.iter().position(|d| d.id == id).and_then(|at| state.waiting.remove(at));
        state.finish(id, self.inner.policy.result_ttl, |record| record.status = JobStatus::Canceled);
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
            state.finish(delivery.id, policy.result_ttl, |record| {
                record.status = JobStatus::Failed;
                record.error = Some(error.to_owned());
            });
            drop(state);
            self.job_ended(delivery.id);
            return Ok(FailOutcome::Dead);
        }
        if let Some(entry) = state.records.get_mut(&delivery.id) {
            entry.record.status = JobStatus::Queued;
            entry.record.error = Some(error.to_owned());
        }
        state.waiting.push_back(delivery.clone());
        drop(state);
        self.inner.arrived.notify_one();
        self.inner.events.changed(delivery.id);
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

/// `bytes` of a queued image, counted in a queue's `image_bytes` until dropped.
struct HeldBytes {
    count: Arc<AtomicU64>,
    bytes: u64,
}

impl HeldBytes {
    /// Counts `bytes` more, unless that would pass `limit`.
    fn take(count: &Arc<AtomicU64>, bytes: u64, limit: u64) -> Option<Self> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|&total| total <= limit)
            })
            .ok()?;
        Some(Self { count: Arc::clone(count), bytes })
    }
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        self.count.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// A queued job's image, the owner of the `Bytes` its deliveries carry: its bytes stay counted
/// for as long as any copy of it is alive.
struct QueuedImage {
    image: Bytes,
    _held: HeldBytes,
}

impl AsRef<[u8]> for QueuedImage {
    fn as_ref(&self) -> &[u8] {
        &self.image
    }
}

impl State {
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
        }
    }
}

#[cfg(test)]
mod tests {
    //! What only the embedded queue does; the contract both backends keep is
    //! `tests/queue_contract.rs`.

    use super::*;
    use crate::engine::Prediction;
    use bytes::Bytes;
    use uuid::Uuid;

    fn prediction(label: &str) -> Prediction {
        Prediction {
            model: "m".into(),
            label: label.into(),
            class_index: 1,
            score: 0.5,
            top_k: Vec::new(),
            inference_ms: 1.0,
            probabilities: None,
        }
    }

    /// Stages and commits a job with an image of `size` bytes.
    async fn enqueue_of(q: &EmbeddedQueue, size: usize) -> Result<JobId, QueueError> {
        let id = Uuid::new_v4();
        q.stage(id, Bytes::from(vec![7; size]), now_ms()).commit(&prediction("fast"), None).await?;
        Ok(id)
    }

    /// Images of 4 bytes against a 10-byte bound: two fit; a third fits only once a job's image
    /// is gone (not merely its job finished: the worker may still hold the image).
    #[tokio::test]
    async fn the_queue_is_bounded_in_image_bytes_and_gives_them_back_exactly() {
        let q = EmbeddedQueue::new(QueuePolicy { max_queue_bytes: 10, max_attempts: 2, ..QueuePolicy::default() });
        enqueue_of(&q, 4).await.expect("first");
        enqueue_of(&q, 4).await.expect("second");
        assert_eq!(q.held_bytes(), 8);
        let refused = enqueue_of(&q, 4).await;
        assert!(matches!(refused, Err(QueueError::FullBytes { limit: 10 })), "{refused:?}");
        assert!(refused.is_err_and(|err| err.to_string().contains("10 B")));
        enqueue_of(&q, 2).await.expect("a smaller one still fits");
        assert_eq!(q.held_bytes(), 10);

        // Completed: counted until the worker drops the image.
        let taken = q.take(1, Duration::ZERO).await.expect("take");
        q.complete(&taken[0], &prediction("a")).expect("complete");
        assert_eq!(q.held_bytes(), 10);
        drop(taken);
        assert_eq!(q.held_bytes(), 6);

        // Retried: the same buffer goes back in the queue, counted once.
        let taken = q.take(1, Duration::ZERO).await.expect("take");
        assert_eq!(q.fail(&taken[0], "boom").expect("fail"), FailOutcome::Retrying);
        drop(taken);
        assert_eq!(q.held_bytes(), 6);

        // Dead after its attempts, and a delivery dropped without an outcome: both give back.
        let rest = q.take(4, Duration::ZERO).await.expect("take");
        let retried = rest.iter().find(|d| d.attempt == 2).expect("the retried job");
        assert_eq!(q.fail(retried, "boom twice").expect("fail"), FailOutcome::Dead);
        drop(rest);
        assert_eq!(q.held_bytes(), 0);

        // An image larger than the whole bound is refused, and takes nothing.
        assert!(matches!(enqueue_of(&q, 11).await, Err(QueueError::FullBytes { .. })));
        assert_eq!(q.held_bytes(), 0);
    }

    #[test]
    fn a_worker_counts_as_live_while_registered() {
        let q = EmbeddedQueue::new(QueuePolicy::default());
        assert_eq!(q.live_workers(), 0);
        let worker = q.register_worker();
        assert_eq!(q.live_workers(), 1);
        drop(worker);
        assert_eq!(q.live_workers(), 0);
    }

    #[tokio::test]
    async fn finished_records_expire_and_are_purged() {
        let q = EmbeddedQueue::new(QueuePolicy {
            max_queue: 10,
            result_ttl: Duration::ZERO,
            max_attempts: 1,
            ..QueuePolicy::default()
        });
        let id = enqueue_of(&q, 3).await.expect("enqueue");
        let taken = q.take(1, Duration::ZERO).await.expect("take");
        q.complete(&taken[0], &prediction("a")).expect("complete");
        assert!(q.get(id).is_none());
        enqueue_of(&q, 3).await.expect("enqueue purges expired records");
        assert_eq!(q.state().records.len(), 1);
    }

    #[tokio::test]
    async fn a_delivery_carries_the_fast_class_and_an_empty_receipt() {
        let q = EmbeddedQueue::new(QueuePolicy::default());
        enqueue_of(&q, 3).await.expect("enqueue");
        let taken = q.take(1, Duration::ZERO).await.expect("take");
        assert_eq!((taken[0].fast_class, &taken[0].receipt), (Some(1), &Receipt::default()));
    }
}
