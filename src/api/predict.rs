//! `POST /predict`: receive the body within the upload bounds, answer with the fast tier, and
//! queue the job for the accurate one before the answer leaves.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::ApiError;
use super::query::{parse_query, wanted_top_k};
use super::types::{ErrorBody, PredictRequest, PredictResponse};
use super::{AppState, answer, input, openapi, upload, watch};
use crate::engine::Hold;

/// `POST /predict`'s query: everything else is refused, so a typo is not silently ignored.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct PredictQuery {
    /// Classes in the answer's `top_k`, 1 to 5: what the models compute, the default.
    // The maximum is `cli::tiers::TOP_K` (the test in `api::jobs` checks they agree).
    #[param(minimum = 1, maximum = 5)]
    top_k: Option<usize>,
    /// Where to POST the job's final state (a webhook, signed in the Standard Webhooks layout)
    /// once it is completed, failed or canceled: an http(s) URL on a host `--webhook-allow`
    /// allows, percent-encoded.
    callback_url: Option<String>,
}

/// Classify an image: the fast model's answer now, and a job for the accurate one.
///
/// The image comes in one of three forms, by `Content-Type`. The job is queued before the
/// answer is sent, so its `job_id` always resolves; if the queue cannot take it, the fast answer
/// still comes, with `job_id: null` and `async_error`. With `Accept: text/event-stream` the
/// answer is a stream instead: the fast answer, then the job's states, in one connection.
#[utoipa::path(
    post,
    path = "/predict",
    tag = "predict",
    params(PredictQuery),
    request_body(
        description = "The image: JSON with `image_data` (base64), the raw image bytes (`image/*` or \
            `application/octet-stream`), or `multipart/form-data` with an `image` file part.",
        content(
            (PredictRequest = "application/json"),
            (openapi::RawImage = "image/*"),
            (openapi::RawImage = "application/octet-stream"),
            (openapi::ImageUpload = "multipart/form-data"),
        ),
    ),
    responses(
        (status = 200, description = "The fast answer (JSON); or, when the request's `Accept` has \
            `text/event-stream`, server-sent events: first `fast` (data: the same `PredictResponse`), \
            then the job's states as in `GET /job/{id}/events` (`queued`, `running`, then a final one \
            `completed`, `failed` or `canceled`; data: `JobResponse`, id: `<status>-<attempts>`), after which \
            the stream ends. Without a job (`job_id: null`) `fast` is the only event; if the job cannot \
            be followed (past `--max-watchers`, queue down) an `error` event (data: `ErrorBody`) ends it.",
            content(
                (PredictResponse = "application/json"),
                (openapi::PredictEvent = "text/event-stream", example = json!(openapi::PREDICT_EVENTS_EXAMPLE)),
            ),
        ),
        (status = 400, description = "The body or query is malformed: `invalid_json`, `invalid_base64`, \
            `invalid_multipart`, `body_unreadable`, `empty_image`, `not_an_image`, `truncated_image`, \
            `unsupported_format`, `image_too_complex`, `invalid_query`.", body = ErrorBody),
        (status = 408, description = "The body did not arrive within `--body-timeout` (`body_timeout`).",
            body = ErrorBody),
        (status = 413, description = "The body is over `--max-body` (`body_too_large`), or the image over \
            the pixel or memory bounds (`image_too_large`).", body = ErrorBody),
        (status = 415, description = "Not one of the three forms (`unsupported_media_type`).", body = ErrorBody),
        (status = 422, description = "JSON without `image_data` (`missing_field`) or with it not a string \
            (`invalid_field`); a `callback_url` on a host `--webhook-allow` does not allow \
            (`callback_not_allowed`), not an http(s) URL (`invalid_callback_url`), or given to a server \
            without webhooks (`webhooks_disabled`).", body = ErrorBody),
        (status = 429, description = "Too many requests at once, or bodies being received (`overloaded`).",
            body = ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait: 1."))),
        (status = 431, description = "Over 100 headers or 32 KiB of them (`headers_too_large`).", body = ErrorBody),
        (status = 500, description = "The model failed (`inference_failed`) or another fault (`internal`).",
            body = ErrorBody),
        (status = 503, description = "No answer within `--request-timeout` (`timeout`), or the decoders are \
            all busy (`decode_busy`).", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait: 1."))),
    ),
)]
pub(super) async fn predict(State(state): State<AppState>, request: Request<Body>) -> Result<Response, ApiError> {
    let uri = request.uri().clone();
    let streamed = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.split(',').any(|kind| kind.trim().starts_with("text/event-stream")));
    let received = upload::receive(&state, request, upload::Form::Image).await?;
    // Checked after the body is in, so that a client still writing gets the 400.
    let query: PredictQuery = parse_query(&uri)?;
    let top_k = wanted_top_k(query.top_k, state.inner.limits.top_k)?;
    if let Some(url) = &query.callback_url {
        state.inner.limits.webhook_allow.check(url)?;
    }
    // Only a request whose body is in takes an in-flight permit; past the bound, refuse at
    // once rather than queue without limit. The permit is shared with the decode (and a big
    // body's parse), which keep it until they end even if the request times out first.
    let Ok(permit) = Arc::clone(&state.inner.inflight).try_acquire_owned() else {
        return Err(ApiError::Overloaded);
    };
    let permit = Arc::new(permit);
    let timeout = state.inner.limits.request_timeout;
    let callback = query.callback_url.as_deref();
    let Json(answer) = tokio::time::timeout(timeout, predict_now(&state, received, top_k, callback, permit))
        .await
        .map_err(|_| ApiError::Timeout(timeout.as_secs_f64()))??;
    if streamed {
        return Ok(watch::predict_events(&state, &answer, top_k).await.into_response());
    }
    Ok(Json(answer).into_response())
}

async fn predict_now(
    state: &AppState,
    received: input::Received,
    top_k: usize,
    callback_url: Option<&str>,
    permit: Arc<tokio::sync::OwnedSemaphorePermit>,
) -> Result<Json<PredictResponse>, ApiError> {
    let image = match received {
        // Parsing JSON and decoding base64 is CPU work in proportion to the body: off the
        // runtime's threads for a big one, so it cannot hold up `/health` and other requests.
        input::Received::Json(body) if body.len() > upload::PARSE_OFF_RUNTIME => {
            let hold = Arc::clone(&permit);
            let parsed = state.inner.pool.run(move || {
                let _hold = hold;
                input::image_from_json(&body)
            });
            parsed.await.map_err(|e| ApiError::Internal(e.to_string()))??
        }
        other => other.into_image().await?,
    };
    let hold: Hold = Box::new(permit);
    let answered = answer::fast_then_enqueue(state, image, callback_url, hold, false, true).await?;
    let response = PredictResponse::new(&answered.fast, top_k, answered.job_id, answered.async_error);
    Ok(Json(match &answered.finished {
        Some((result, source)) => response.finished(result, *source, top_k),
        None => response,
    }))
}
