//! The job model shared by the API, the queue backends and the worker (what a worker is
//! handed, a `Delivery`, belongs to the queue: `queue::delivery`).
//!
//! A job is one image waiting for (or done with) the accurate tier. Its record carries the
//! fast tier's answer too, so `GET /job/{id}` can show both side by side.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::engine::Prediction;

/// Random (v4) UUID: unguessable, so a job's result is readable only by whoever holds its id.
pub type JobId = Uuid;

/// Where a job is in its life. Its name (`as_str`) is the one spelling everywhere: in JSON
/// (serde goes through it), in Redis' job hashes and in the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "&'static str", try_from = "String")]
pub enum JobStatus {
    Queued,
    Running,
    Completed,
    Failed,
    /// Withdrawn by `DELETE /job/{id}` before any worker started it.
    Canceled,
}

impl JobStatus {
    /// Every status, in the order of a job's life: what `parse` accepts, and the values of the
    /// `JobStatus` schema in the API document (`api::openapi`), so a status added here is in both.
    pub const ALL: [JobStatus; 5] =
        [JobStatus::Queued, JobStatus::Running, JobStatus::Completed, JobStatus::Failed, JobStatus::Canceled];

    /// Completed, failed or canceled: nothing changes a job after this.
    pub fn is_final(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Failed | JobStatus::Canceled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Canceled => "canceled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        JobStatus::ALL.into_iter().find(|status| status.as_str() == text)
    }
}

impl From<JobStatus> for &'static str {
    fn from(status: JobStatus) -> Self {
        status.as_str()
    }
}

/// The API document's schema: a string, one of [`JobStatus::ALL`]'s names. Written by hand
/// (serde goes through `as_str`, which a derive would not see), from `ALL`, so it cannot miss a
/// status.
impl utoipa::PartialSchema for JobStatus {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(JobStatus::ALL.map(JobStatus::as_str)))
            .description(Some(format!(
                "Where a job is in its life (also the name of its server-sent events); final, nothing \
                 changes after: {}.",
                JobStatus::ALL
                    .into_iter()
                    .filter(|s| s.is_final())
                    .map(|s| format!("`{}`", s.as_str()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
            .into()
    }
}

impl utoipa::ToSchema for JobStatus {
    fn name() -> std::borrow::Cow<'static, str> {
        "JobStatus".into()
    }
}

impl TryFrom<String> for JobStatus {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        JobStatus::parse(&text).ok_or_else(|| format!("unknown job status {text:?}"))
    }
}

/// Where a completed job's result came from. Its name (`as_str`) is its one spelling, in JSON
/// and in Redis' job hashes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResultSource {
    /// A worker ran the accurate model on this job's image.
    #[default]
    Worker,
    /// The accurate model's answer for the same image bytes, from the result cache: no run.
    Cache,
    /// A run for the same image bytes was already queued or running; this job shared it.
    SharedRun,
    /// Not refined: the fast model was confident enough (`--refine-below`); the result is its
    /// answer.
    Cascade,
}

impl ResultSource {
    pub const ALL: [ResultSource; 4] =
        [ResultSource::Worker, ResultSource::Cache, ResultSource::SharedRun, ResultSource::Cascade];

    pub fn as_str(self) -> &'static str {
        match self {
            ResultSource::Worker => "worker",
            ResultSource::Cache => "cache",
            ResultSource::SharedRun => "shared_run",
            ResultSource::Cascade => "cascade",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        ResultSource::ALL.into_iter().find(|source| source.as_str() == text)
    }

    /// Whether the result is the accurate model's answer (not the fast one kept).
    pub fn is_refined(self) -> bool {
        self != ResultSource::Cascade
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
    /// Where the job's final state is POSTed (a webhook), if the client asked.
    pub callback_url: Option<String>,
    /// Where the result came from, once completed.
    pub source: ResultSource,
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
            callback_url: None,
            source: ResultSource::Worker,
        }
    }

    /// Time spent waiting before the latest attempt started.
    pub fn queue_ms(&self) -> Option<u64> {
        self.started_at_ms.map(|start| start.saturating_sub(self.created_at_ms))
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_millis() as u64
}

/// RFC 3339 with milliseconds, as the API shows times.
pub fn format_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_is_spelled_one_way_in_json_and_in_text() {
        for status in JobStatus::ALL {
            let json = serde_json::to_string(&status).expect("serialize");
            assert_eq!(json, format!("\"{}\"", status.as_str()));
            assert_eq!(serde_json::from_str::<JobStatus>(&json).expect("deserialize"), status);
            assert_eq!(JobStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(JobStatus::parse("done"), None);
        assert!(serde_json::from_str::<JobStatus>("\"Queued\"").is_err());
    }

    #[test]
    fn a_result_source_is_spelled_one_way_in_json_and_in_text() {
        for source in ResultSource::ALL {
            let json = serde_json::to_string(&source).expect("serialize");
            assert_eq!(json, format!("\"{}\"", source.as_str()));
            assert_eq!(ResultSource::parse(source.as_str()), Some(source));
        }
    }
}
