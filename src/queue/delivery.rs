//! What the queue hands a worker, and what it answers when an attempt fails.
//!
//! A delivery is one attempt at one job. Its [`Receipt`] is the backend's own bookkeeping for
//! that attempt (with Redis, the stream entry the job was read from): the worker only hands it
//! back, with the delivery, to `complete`, `fail` and `release`.

use bytes::Bytes;

use crate::jobs::JobId;

/// A job handed to a worker by the queue.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: JobId,
    pub image: Bytes,
    /// 1 for the first attempt; counts attempts cut short by crashes too.
    pub attempt: u32,
    pub created_at_ms: u64,
    /// The fast tier's class for this job, read when the attempt started, so that the worker
    /// can say whether the tiers agree without reading the record again. `None` if the stored
    /// fast answer could not be read.
    pub fast_class: Option<usize>,
    /// Which attempt this is, as the backend knows it (see [`Receipt`]).
    pub receipt: Receipt,
}

/// A backend's proof of one delivery, opaque outside the queue: empty for the embedded queue,
/// the Redis stream entry id for Redis. Two deliveries of the same job (a retry, a job taken
/// over) compare equal only if they came from the same entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Receipt(String);

impl Receipt {
    pub(super) fn redis(entry_id: String) -> Self {
        Self(entry_id)
    }

    /// The Redis stream entry id of the delivery.
    pub(super) fn entry_id(&self) -> &str {
        &self.0
    }
}

/// What happened to a job whose attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOutcome {
    /// It goes back on the queue for another attempt.
    Retrying,
    /// It used up its attempts: it is `failed` and copied to the dead-letter stream.
    Dead,
}

/// A webhook to send: the job whose final state goes to its `callback_url`. Like a
/// [`Delivery`], handed back to the queue (`renew_webhook`, `webhook_done`) by whoever sends it.
#[derive(Debug, Clone)]
pub struct WebhookTask {
    pub id: JobId,
    /// Embedded: attempts made so far (Redis counts them in the job's record, across processes).
    pub(super) attempts: u32,
    pub(super) receipt: Receipt,
}
