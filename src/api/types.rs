//! The wire format: every JSON body the HTTP API sends, and the JSON form of `POST /predict`
//! it reads, as named types.
//!
//! Handlers build these structs and nothing else (no hand-built `serde_json::Value`), and the
//! same types are read back by `tandem bench` and by the integration tests, so a change to the
//! format is a change here, seen by all three. An OpenAPI document is generated from them.
//!
//! The shapes are a contract with clients, kept exactly as they were when they were built by
//! hand: fields appear in declaration order (serde_json's `preserve_order`), a field that is
//! `null` today is an `Option` serialized as `null`, and one that is absent today is skipped
//! when `None`. Milliseconds are rounded to 0.01 and a top-level `score` to 4 decimals, for
//! reading; `top_k` scores keep the model's full precision, for clients that compare or
//! threshold them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::engine::Prediction;
use crate::jobs::{JobRecord, JobStatus, ResultSource, format_ms};

/// `POST /predict`'s JSON form (`Content-Type: application/json`); the image may also come as
/// the raw body or as a multipart `image` field. Other fields are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PredictRequest {
    /// The encoded image (JPEG, PNG, WebP, GIF, BMP, TIFF), base64 (standard alphabet, padded or
    /// not, line breaks ignored), optionally as a `data:<type>;base64,` URL.
    // The example, a 1x1 PNG, is a request that works (Swagger UI's "Try it out" sends it).
    #[schema(
        min_length = 1,
        example = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="
    )]
    pub image_data: String,
}

/// One class of a prediction's `top_k`, best first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TopClass {
    /// The class's name (its index as text when the model has no labels).
    pub label: String,
    /// The class's index in the model's output.
    pub class_index: usize,
    /// The model's probability for the class, unrounded. The model computes an `f32`; it is
    /// sent widened to `f64` (exactly), as it always has been.
    pub score: f64,
}

/// One tier's answer for one image, as the API shows it (`sync`, and `result` of a job).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PredictionBody {
    /// The model file that answered, e.g. `mobilenet_v2.onnx`.
    pub model: String,
    /// The best class's name.
    pub label: String,
    /// The best class's index in the model's output.
    pub class_index: usize,
    /// The best class's probability, rounded to 4 decimals.
    pub score: f64,
    /// The best classes, best first: at most the `?top_k=` asked for (default: all the model
    /// computes), scores unrounded.
    pub top_k: Vec<TopClass>,
    /// Wall time of the model run this image was part of (its whole batch), in milliseconds
    /// rounded to 0.01.
    pub inference_ms: f64,
}

impl PredictionBody {
    /// A tier's answer with at most `top_k` classes.
    pub fn new(prediction: &Prediction, top_k: usize) -> Self {
        Self {
            model: prediction.model.clone(),
            label: prediction.label.clone(),
            class_index: prediction.class_index,
            score: round_to(f64::from(prediction.score), 4),
            top_k: prediction
                .top_k
                .iter()
                .take(top_k)
                .map(|c| TopClass { label: c.label.clone(), class_index: c.class_index, score: f64::from(c.score) })
                .collect(),
            inference_ms: round_to(prediction.inference_ms, 2),
        }
    }
}

/// `POST /predict`'s 200 body: the fast tier's answer now, and the job that will refine it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PredictResponse {
    /// The job the accurate tier will answer; `null` when the queue could not take it (then
    /// `async_error` says why). A job id the client sees always resolves: the job is queued
    /// before this answer is sent.
    #[schema(required = true)]
    pub job_id: Option<Uuid>,
    /// The fast tier's label (the same as `sync.label`).
    pub result_sync: String,
    /// The fast tier's answer.
    pub sync: PredictionBody,
    /// Where to poll the job: `/job/{job_id}`; `null` with `job_id`.
    #[schema(required = true)]
    pub status_url: Option<String>,
    /// Why the job was not queued (the queue is full or unavailable); absent when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_error: Option<String>,
    /// `true` when this answer is final: nothing more will come, and the job (if any) is
    /// `completed` already, with `result`. Absent (false) when the accurate tier will refine it.
    #[serde(rename = "final", default, skip_serializing_if = "is_false")]
    pub is_final: bool,
    /// The job's result, when final: the accurate tier's answer from the result cache, or the
    /// fast answer itself when the cascade kept it (`result_source` says which).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<PredictionBody>,
    /// Where `result` came from, when final: `cache` or `cascade`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_source: Option<ResultSource>,
}

fn is_false(value: &bool) -> bool {
    !value
}

impl PredictResponse {
    /// The answer for the fast tier's `sync`, with the job queued as `job_id`, or not queued
    /// because of `async_error`.
    pub fn new(fast: &Prediction, top_k: usize, job_id: Option<Uuid>, async_error: Option<String>) -> Self {
        Self {
            job_id,
            result_sync: fast.label.clone(),
            sync: PredictionBody::new(fast, top_k),
            status_url: job_id.map(|id| format!("/job/{id}")),
            async_error,
            is_final: false,
            result: None,
            result_source: None,
        }
    }

    /// The answer made final: `result` (from `source`) is the job's result already.
    pub fn finished(self, result: &Prediction, source: ResultSource, top_k: usize) -> Self {
        Self { is_final: true, result: Some(PredictionBody::new(result, top_k)), result_source: Some(source), ..self }
    }
}

/// `GET /job/{id}`'s 200 body: the job's state, the fast answer it was created with, and the
/// accurate answer once completed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobResponse {
    /// The job's id, as `POST /predict` gave it.
    pub job_id: Uuid,
    /// The accurate tier's label once completed; `""` until then, as the original design had.
    pub prediction: String,
    /// `queued`, `running`, `completed`, `failed` or `canceled`.
    pub status: JobStatus,
    /// The fast tier's answer, given when the job was created.
    pub sync: PredictionBody,
    /// How many times a worker has started the job (attempts cut short by crashes count).
    pub attempts: u32,
    /// When the job was created (RFC 3339, milliseconds, UTC).
    pub created_at: String,
    /// Milliseconds from creation to the start of the latest attempt; absent until started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_ms: Option<u64>,
    /// The accurate tier's answer; present only once completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<PredictionBody>,
    /// Whether both tiers chose the same class; present only once completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agrees_with_sync: Option<bool>,
    /// Where `result` came from; present only once completed: `worker` (the accurate model ran on
    /// this image), `cache` (its answer for the same bytes, cached), `shared_run` (a run for the
    /// same bytes, queued before this job, answered both) or `cascade` (not refined: the fast
    /// model was at least `--refine-below` sure, so `result` is its answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_source: Option<ResultSource>,
    /// Whether `result` is the accurate tier's answer (`false`: the cascade kept the fast one);
    /// present only once completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refined: Option<bool>,
    /// The accurate model run's time (`result.inference_ms`); present only once completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_ms: Option<f64>,
    /// When the job completed or failed (RFC 3339); absent before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    /// The last error: once failed, or while a failed attempt is being retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl JobResponse {
    /// The job's body, with at most `top_k` classes in each answer.
    pub fn new(record: &JobRecord, top_k: usize) -> Self {
        // A result is shown only with the status that says it is final.
        let result = record.result.as_ref().filter(|_| record.status == JobStatus::Completed);
        Self {
            job_id: record.id,
            prediction: result.map(|r| r.label.clone()).unwrap_or_default(),
            status: record.status,
            sync: PredictionBody::new(&record.fast, top_k),
            attempts: record.attempts,
            created_at: format_ms(record.created_at_ms),
            queue_ms: record.queue_ms(),
            result: result.map(|r| PredictionBody::new(r, top_k)),
            agrees_with_sync: result.map(|r| r.class_index == record.fast.class_index),
            result_source: result.map(|_| record.source),
            refined: result.map(|_| record.source.is_refined()),
            inference_ms: result.map(|r| round_to(r.inference_ms, 2)),
            completed_at: record.completed_at_ms.map(format_ms),
            error: record.error.clone(),
        }
    }
}

/// Every error's body, whatever its status: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

impl ErrorBody {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self { error: ErrorDetail::new(code, message) }
    }
}

/// An error's code and message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable (`invalid_base64`, `overloaded`, `job_not_found`, ...): one
    /// per kind of error, for clients to branch on.
    pub code: String,
    /// For people: what was wrong, with the detail that helps fix it. Its words may change.
    pub message: String,
}

impl ErrorDetail {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self { code: code.to_owned(), message: message.into() }
    }
}

/// `GET /health` (`"healthy"`) and `GET /health/live` (`"alive"`): the process answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `"healthy"` or `"alive"`, by route.
    pub status: String,
}

impl Health {
    pub fn new(status: &str) -> Self {
        Self { status: status.to_owned() }
    }
}

/// `GET /health/ready`'s 200 body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Ready {
    /// Always `"ready"`.
    pub status: String,
    /// The job queue's backend: `embedded` or `redis`.
    pub queue: String,
    /// Who takes the jobs this process queues.
    pub workers: Workers,
    /// Present when something the service needs is missing though it can still answer (a
    /// `serve` with no live worker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// The workers a ready body counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Workers {
    /// Workers taking jobs now: the embedded one, or Redis workers whose heartbeat is recent.
    pub live: u64,
}

/// `GET /health/ready`'s 503 body: the error shape, plus the status and the queue's backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NotReady {
    /// Why not ready (`queue_unavailable`, with the queue's error).
    pub error: ErrorDetail,
    /// Always `"not_ready"`.
    pub status: String,
    /// The job queue's backend: `embedded` or `redis`.
    pub queue: String,
}

/// Rounds to `decimals` places, for the fields a person reads.
fn round_to(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

#[cfg(test)]
mod tests;
