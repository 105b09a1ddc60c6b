//! `POST /v2/models/{model}/infer`: the body within the same bounds as `POST /predict`
//! (`--max-body`, the upload bounds, `--body-timeout`), one in-flight permit per image (429 past
//! `--max-inflight`), the whole answer within `--request-timeout`.
//!
//! The three models: the fast one answers from its own lanes (rows of probabilities); `tandem`
//! is `POST /predict` itself (the fast answer, and a job per image for the accurate tier,
//! whose ids the answer carries); the accurate one queues the same jobs and waits for the
//! workers' answers, so a v2 client can ask for the accurate answer synchronously whether the
//! accurate tier runs in this process or on workers elsewhere.

use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use axum::response::Response;
use futures_util::future::try_join_all;
use serde_json::Value;
use tokio::sync::OwnedSemaphorePermit;
use uuid::Uuid;

use super::binary::{BinaryError, HEADER_LENGTH};
use super::error::V2Error;
use super::request::{self, Batch, Parsed, RequestError};
use super::response::{self, Answers};
use super::wire::Parameters;
use super::{Target, spec};
use crate::api::answer::{self, Answered};
use crate::api::error::ApiError;
use crate::api::upload::{self, Form};
use crate::api::{AppState, input, watch};
use crate::engine::{Hold, Prediction};
use crate::jobs::JobStatus;

pub(super) async fn infer(state: &AppState, target: Target, request: Request<Body>) -> Result<Response, V2Error> {
    let header = request.headers().get(HEADER_LENGTH).cloned();
    let input::Received::Raw(body) = upload::receive(state, request, Form::AsIs).await? else {
        return Err(ApiError::Internal("the body was not read as it is".into()).into());
    };
    // Checked once the body is in, so that a client still writing gets the 400.
    let header = match header {
        None => None,
        Some(value) => {
            let text = value
                .to_str()
                .map_err(|_| BinaryError::BadHeader(request::short(String::from_utf8_lossy(value.as_bytes()))));
            Some(text.map_err(RequestError::from)?.to_owned())
        }
    };
    // The parse is the request's first work: it holds a permit, within --request-timeout,
    // like `POST /predict`'s; the other images' permits are taken once their count is known.
    let inflight = &state.inner.inflight;
    let first = Arc::new(Arc::clone(inflight).try_acquire_owned().map_err(|_| ApiError::Overloaded)?);
    let timeout = state.inner.limits.request_timeout;
    let work = async {
        let model = spec(state, target);
        let parsed = if body.len() > upload::PARSE_OFF_RUNTIME {
            let hold = Arc::clone(&first);
            let parsing = state.inner.pool.run(move || {
                let _hold = hold;
                request::parse(&body, header.as_deref(), &model)
            });
            parsing.await.map_err(|e| ApiError::Internal(e.to_string()))??
        } else {
            request::parse(&body, header.as_deref(), &model)?
        };
        let n = parsed.batch.len();
        let most = state.inner.limits.max_inflight.max(1);
        if n > most {
            let why = format!("a batch of {n} images is more than this server takes at once (--max-inflight {most})");
            return Err(RequestError::Invalid(why).into());
        }
        // One permit per image, as if each came in its own `POST /predict`.
        let rest = match u32::try_from(n - 1) {
            Ok(0) => None,
            Ok(more) => Some(Arc::clone(inflight).try_acquire_many_owned(more).map_err(|_| ApiError::Overloaded)?),
            Err(_) => return Err(ApiError::Overloaded.into()),
        };
        answer(state, target, parsed, Arc::new(Permits { _first: first, _rest: rest })).await
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| ApiError::Timeout(timeout.as_secs_f64()))?
}

/// A request's in-flight permits, one per image.
struct Permits {
    _first: Arc<OwnedSemaphorePermit>,
    _rest: Option<OwnedSemaphorePermit>,
}

async fn answer(state: &AppState, target: Target, parsed: Parsed, permits: Arc<Permits>) -> Result<Response, V2Error> {
    let Parsed { id, batch, outputs: wanted } = parsed;
    let name = target.name(state);
    let hold = || -> Hold { Box::new(Arc::clone(&permits)) };
    let fast = &state.inner.fast;
    match (target, batch) {
        (Target::Fast, batch) => {
            let predictions = fast_rows(state, batch, hold).await?;
            let answers = Answers { predictions: &predictions, job_ids: None, labels: Some(fast.labels()) };
            Ok(response::encode(&name, id, None, response::outputs(&wanted, &answers)))
        }
        (Target::Tandem, Batch::Images(images)) => {
            let answered = queue_jobs(state, images, hold, true).await?;
            let job_ids: Vec<Option<Uuid>> = answered.iter().map(|a| a.job_id).collect();
            let parameters = job_parameters(&answered);
            let predictions: Vec<Prediction> = answered.into_iter().map(|a| a.fast).collect();
            let answers = Answers { predictions: &predictions, job_ids: Some(&job_ids), labels: Some(fast.labels()) };
            Ok(response::encode(&name, id, Some(parameters), response::outputs(&wanted, &answers)))
        }
        (Target::Accurate, Batch::Images(images)) => {
            let answered = queue_jobs(state, images, hold, false).await?;
            // Queued: from here the request only waits for the workers, and holds no in-flight
            // permit (it still counts against --max-watchers while it waits).
            drop(permits);
            let refined = match try_join_all(answered.iter().map(|a| refined(state, a))).await {
                Ok(refined) => refined,
                Err(err) => {
                    // The answer will not be given: jobs no worker has started are withdrawn.
                    for id in answered.iter().filter_map(|a| a.job_id) {
                        let _ = state.inner.queue.cancel(id).await;
                    }
                    return Err(err);
                }
            };
            let answers = Answers { predictions: &refined, job_ids: None, labels: None };
            Ok(response::encode(&name, id, None, response::outputs(&wanted, &answers)))
        }
        // `spec` says these models take images only, and `request::parse` held them to it.
        (Target::Tandem | Target::Accurate, Batch::Tensors { .. }) => {
            Err(ApiError::Internal("a tensor reached a model that takes images".into()).into())
        }
    }
}

/// The fast model's answers with their whole rows, the images decoded side by side.
async fn fast_rows(state: &AppState, batch: Batch, hold: impl Fn() -> Hold) -> Result<Vec<Prediction>, V2Error> {
    let fast = &state.inner.fast;
    let pending = match batch {
        Batch::Images(images) => {
            try_join_all(images.into_iter().map(|image| fast.admit_for_probabilities(image, hold())))
                .await
                .map_err(ApiError::from)?
        }
        Batch::Tensors { n, values } => {
            let per_image = values.len() / n.max(1);
            let submitted: Result<Vec<_>, _> =
                values.chunks_exact(per_image.max(1)).map(|t| fast.submit_tensor(t.to_vec())).collect();
            submitted.map_err(ApiError::from)?
        }
    };
    Ok(try_join_all(pending).await.map_err(ApiError::from)?)
}

/// `POST /predict`'s step for each image: the fast answer, and its job queued. `tandem`: the
/// `tandem` model, which wants the fast rows and may keep a confident fast answer (the
/// cascade); the accurate model's client asked for the accurate answer, always.
async fn queue_jobs(
    state: &AppState,
    images: Vec<bytes::Bytes>,
    hold: impl Fn() -> Hold,
    tandem: bool,
) -> Result<Vec<Answered>, V2Error> {
    let each = images.into_iter().map(|image| answer::fast_then_enqueue(state, image, None, hold(), tandem, tandem));
    Ok(try_join_all(each).await?)
}

/// The `tandem` model's response parameters: the job ids, comma-separated (empty for an image
/// whose job could not be queued), where to read one job, why a job is missing, and, when any
/// answer is final already (the cascade, the result cache), which: `final`, `true` or `false`
/// per image, comma-separated.
fn job_parameters(answered: &[Answered]) -> Parameters {
    let ids: Vec<String> = answered.iter().map(|a| a.job_id.map(|id| id.to_string()).unwrap_or_default()).collect();
    let mut parameters = Parameters::from([("job_id".to_owned(), Value::from(ids.join(",")))]);
    if answered.iter().any(|a| a.finished.is_some()) {
        let finals: Vec<&str> = answered.iter().map(|a| if a.finished.is_some() { "true" } else { "false" }).collect();
        parameters.insert("final".into(), Value::from(finals.join(",")));
    }
    if let [Answered { job_id: Some(id), .. }] = answered {
        parameters.insert("status_url".into(), Value::from(format!("/job/{id}")));
    }
    if let Some(error) = answered.iter().find_map(|a| a.async_error.clone()) {
        parameters.insert("async_error".into(), Value::from(error));
    }
    parameters
}

/// The accurate model's answer for one queued job, once a worker has stored it.
async fn refined(state: &AppState, answered: &Answered) -> Result<Prediction, V2Error> {
    let Some(id) = answered.job_id else {
        let why = answered.async_error.as_deref().unwrap_or("unknown");
        return Err(V2Error::NotRefined(format!("the job for the accurate model could not be queued: {why}")));
    };
    let record = watch::wait_until_final(state, id, state.inner.limits.request_timeout).await?;
    let Some(record) = record else { return Err(V2Error::NotRefined(format!("job {id} expired before it ended"))) };
    match (record.status, record.result) {
        (JobStatus::Completed, Some(result)) => Ok(result),
        (JobStatus::Failed, _) => {
            let why = record.error.unwrap_or_default();
            Err(V2Error::JobFailed(format!("the accurate model failed on job {id}: {why}")))
        }
        (JobStatus::Canceled, _) => Err(V2Error::JobFailed(format!("job {id} was canceled"))),
        (status, _) => {
            Err(V2Error::NotRefined(format!("job {id} is still {} (is a worker running?)", status.as_str())))
        }
    }
}
