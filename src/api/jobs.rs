//! `GET /job/{id}` (with its long-poll), `DELETE /job/{id}` and `GET /job/{id}/events`: a job's
//! state, read, waited for, canceled or streamed.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::error::ApiError;
use super::query::{parse_query, wanted_top_k};
use super::types::{ErrorBody, JobResponse};
use super::{AppState, openapi, watch};
use crate::queue::CancelOutcome;

/// `GET /job/{id}`'s query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct JobQuery {
    /// Classes in each answer's `top_k`, 1 to 5: what the models compute, the default.
    // The maximum is `cli::tiers::TOP_K` (the test in `api::jobs` checks they agree).
    #[param(minimum = 1, maximum = 5)]
    top_k: Option<usize>,
    /// Seconds to wait for the job to be final before answering (long-poll), cut to
    /// `--max-wait`; absent or 0: answer now.
    #[param(minimum = 0)]
    wait: Option<f64>,
}

/// `GET /job/{id}/events`' query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    /// Classes in each answer's `top_k`, 1 to 5: what the models compute, the default.
    // The maximum is `cli::tiers::TOP_K` (the test in `api::jobs` checks they agree).
    #[param(minimum = 1, maximum = 5)]
    top_k: Option<usize>,
}

/// A job: its state, the fast answer, and the accurate one once completed.
///
/// With `?wait=SECONDS`, a job not yet final is answered as soon as it is (or when the wait runs
/// out, as it is then); such a wait counts against `--max-watchers`.
#[utoipa::path(
    get,
    path = "/job/{id}",
    tag = "jobs",
    params(
        ("id" = Uuid, Path, description = "The `job_id` `POST /predict` gave.",
            example = "0b3e6a4e-6f1e-4c43-9a57-8f3f7f7d2a11"),
        JobQuery,
    ),
    responses(
        (status = 200, description = "The job.", body = JobResponse),
        (status = 400, description = "The id is not a UUID (`invalid_job_id`) or the query is wrong \
            (`invalid_query`).", body = ErrorBody),
        (status = 404, description = "No such job: unknown, or expired (`job_not_found`).", body = ErrorBody),
        (status = 429, description = "`?wait` past `--max-watchers` (`too_many_watchers`).", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait: 1."))),
        (status = 503, description = "The queue does not answer (`queue_unavailable`).", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait: 1."))),
    ),
)]
pub(super) async fn job(
    State(state): State<AppState>,
    Path(id): Path<String>,
    uri: Uri,
) -> Result<Json<JobResponse>, ApiError> {
    let query: JobQuery = parse_query(&uri)?;
    let top_k = wanted_top_k(query.top_k, state.inner.limits.top_k)?;
    let uuid = Uuid::try_parse(&id).map_err(|_| ApiError::InvalidJobId(id.clone()))?;
    let record = match query.wait {
        None | Some(0.0) => state.inner.queue.get(uuid).await.map_err(ApiError::Queue)?,
        Some(seconds) if seconds.is_finite() && seconds > 0.0 => {
            let wait = Duration::from_secs_f64(seconds.min(state.inner.limits.max_wait.as_secs_f64()));
            watch::wait_until_final(&state, uuid, wait).await?
        }
        Some(_) => return Err(ApiError::InvalidQuery("wait: expected a number of seconds, 0 or more".into())),
    };
    let record = record.ok_or(ApiError::JobNotFound(id))?;
    Ok(Json(JobResponse::new(&record, top_k)))
}

/// Cancels a job no worker has started.
///
/// 200 with its `canceled` body (also when it was canceled already); it never runs, and a
/// `callback_url` is told. A running or ended job is left as it is (409): a running one
/// finishes and keeps its result.
#[utoipa::path(
    delete,
    path = "/job/{id}",
    tag = "jobs",
    params(
        ("id" = Uuid, Path, description = "The `job_id` `POST /predict` gave.",
            example = "0b3e6a4e-6f1e-4c43-9a57-8f3f7f7d2a11"),
    ),
    responses(
        (status = 200, description = "The job, now `canceled`.", body = JobResponse),
        (status = 400, description = "The id is not a UUID (`invalid_job_id`).", body = ErrorBody),
        (status = 404, description = "No such job: unknown, or expired (`job_not_found`).", body = ErrorBody),
        (status = 409, description = "A worker has started the job, or it has ended (`job_not_cancelable`).",
            body = ErrorBody),
        (status = 503, description = "The queue does not answer (`queue_unavailable`).", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait: 1."))),
    ),
)]
pub(super) async fn cancel_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<JobResponse>, ApiError> {
    let uuid = Uuid::try_parse(&id).map_err(|_| ApiError::InvalidJobId(id.clone()))?;
    let queue = &state.inner.queue;
    match queue.cancel(uuid).await.map_err(ApiError::Queue)? {
        CancelOutcome::Unknown => Err(ApiError::JobNotFound(id)),
        CancelOutcome::TooLate(status) => Err(ApiError::NotCancelable { id, status: status.as_str() }),
        CancelOutcome::Canceled => {
            metrics::counter!(crate::metrics::JOBS_CANCELED).increment(1);
            let record = queue.get(uuid).await.map_err(ApiError::Queue)?.ok_or(ApiError::JobNotFound(id))?;
            Ok(Json(JobResponse::new(&record, state.inner.limits.top_k)))
        }
    }
}

/// A job's states as server-sent events: the state now, then each change, closed after the
/// final one (see [`watch`]).
#[utoipa::path(
    get,
    path = "/job/{id}/events",
    tag = "jobs",
    params(
        ("id" = Uuid, Path, description = "The `job_id` `POST /predict` gave.",
            example = "0b3e6a4e-6f1e-4c43-9a57-8f3f7f7d2a11"),
        EventsQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "A reconnecting client's last event id \
            (`<status>-<attempts>`): a state it has seen is not sent again."),
    ),
    responses(
        (status = 200, description = "Server-sent events, one per state: the event name is the status \
            (`queued`, `running`, then a final one: `completed`, `failed` or `canceled`), the id \
            `<status>-<attempts>`, the data a `JobResponse`. The stream ends after the final state; a \
            comment every 15 s keeps it open while idle.",
            content((openapi::JobEvent = "text/event-stream", example = json!(openapi::JOB_EVENTS_EXAMPLE)))),
        (status = 204, description = "`Last-Event-ID` is the job's final event: nothing more will come \
            (an `EventSource` stops reconnecting)."),
        (status = 400, description = "The id is not a UUID (`invalid_job_id`) or the query is wrong \
            (`invalid_query`).", body = ErrorBody),
        (status = 404, description = "No such job: unknown, or expired (`job_not_found`).", body = ErrorBody),
        (status = 429, description = "Past `--max-watchers` (`too_many_watchers`).", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait: 1."))),
        (status = 503, description = "The queue does not answer (`queue_unavailable`).", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait: 1."))),
    ),
)]
pub(super) async fn job_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let query: EventsQuery = parse_query(&uri)?;
    let top_k = wanted_top_k(query.top_k, state.inner.limits.top_k)?;
    let uuid = Uuid::try_parse(&id).map_err(|_| ApiError::InvalidJobId(id.clone()))?;
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    Ok(watch::events(&state, uuid, top_k, last_event_id).await?.into_response())
}

/// A job's webhook body: the JSON `GET /job/{id}` gives, with every class the models computed.
pub fn webhook_body(record: &crate::jobs::JobRecord) -> Option<Vec<u8>> {
    serde_json::to_vec(&JobResponse::new(record, usize::MAX)).ok()
}

#[cfg(test)]
mod tests {
    /// Every `top_k` query parameter says the range the handlers accept (`wanted_top_k`): 1 to
    /// what `serve`'s models compute. A document without the maximum calls `?top_k=6` valid,
    /// and a client that trusts it gets a 400.
    #[test]
    fn every_top_k_parameter_has_the_range_the_server_accepts() {
        let doc = serde_json::to_value(super::super::openapi::document()).expect("serializable");
        let mut seen = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("path item") {
                for param in operation["parameters"].as_array().into_iter().flatten() {
                    if param["name"] == "top_k" {
                        let schema = &param["schema"];
                        assert_eq!(schema["minimum"], 1, "{method} {path}");
                        assert_eq!(schema["maximum"], crate::cli::tiers::TOP_K, "{method} {path}");
                        seen.push(format!("{method} {path}"));
                    }
                }
            }
        }
        seen.sort();
        assert_eq!(seen, ["get /job/{id}", "get /job/{id}/events", "post /predict"]);
    }
}
