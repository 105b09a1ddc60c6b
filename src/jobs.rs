//! The job model shared by the API, the queue backends and the worker.
//!
//! A job is one image waiting for (or done with) the accurate tier. Its record carries the
//! fast tier's answer too, so `GET /job/{id}` can show both side by side.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::engine::Prediction;

/// Random (v4) UUID: unguessable, so a job's result is readable only by whoever holds its id.
pub type JobId = Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Completed,
    Failed,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "queued" => Some(JobStatus::Queued),
            "running" => Some(JobStatus::Running),
            "completed" => Some(JobStatus::Completed),
            "failed" => Some(JobStatus::Failed),
            _ => None,
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Failed)
    }
}

/// Everything known about a job. Times are milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: JobId,
    pub status: JobStatus,
    /// The fast tier's answer, given when the job was created.
    pub fast: Prediction,
    /// The accurate tier's answer, once completed.
    pub result: Option<Prediction>,
    /// The last error, once failed (or while being retried).
    pub error: Option<String>,
    /// How many times a worker has started this job.
    pub attempts: u32,
    pub created_at_ms: u64,
    /// When the latest attempt started.
    pub started_at_ms: Option<u64>,
    pub completed_at_ms: Option<u64>,
}

impl JobRecord {
    pub fn new(id: JobId, fast: Prediction, created_at_ms: u64) -> Self {
        Self {
            id,
            status: JobStatus::Queued,
            fast,
            result: None,
            error: None,
            attempts: 0,
            created_at_ms,
            started_at_ms: None,
            completed_at_ms: None,
        }
    }

    /// Time spent waiting before the latest attempt started.
    pub fn queue_ms(&self) -> Option<u64> {
        self.started_at_ms.map(|start| start.saturating_sub(self.created_at_ms))
    }
}

/// A job handed to the queue by `POST /predict`.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: JobId,
    /// The encoded image, exactly as received (stored once, as binary).
    pub image: Bytes,
    pub fast: Prediction,
    pub created_at_ms: u64,
}

/// A job handed to a worker by the queue.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: JobId,
    pub image: Bytes,
    /// 1 for the first attempt; counts attempts cut short by crashes too.
    pub attempt: u32,
    pub created_at_ms: u64,
    /// Backend bookkeeping (the Redis stream entry id); empty for the embedded queue.
    pub tag: String,
}

/// What happened to a job whose attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOutcome {
    /// It goes back on the queue for another attempt.
    Retrying,
    /// It used up its attempts: it is `failed` and copied to the dead-letter stream.
    Dead,
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_millis() as u64
}

/// RFC 3339 with milliseconds, as the API shows times.
pub fn format_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}
