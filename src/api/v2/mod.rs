//! The Open Inference Protocol (KServe v2) over HTTP, as Triton, KServe, Seldon MLServer and
//! OpenVINO Model Server speak it, so their clients talk to Tandem unchanged: health, server
//! and model metadata, model readiness, and inference ([`infer`]), with Triton's binary tensor
//! data ([`binary`]) and classification extensions.
//!
//! Three models: the fast one and the accurate one under their file stems, and `tandem`, the
//! pattern itself (the fast answer now, with the accurate tier's job ids in its `parameters`).
//! Everything is version `1`. Errors are the protocol's `{"error": "..."}` ([`error`]).

mod binary;
mod error;
mod infer;
pub mod request;
mod response;
pub mod wire;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};

use super::AppState;
pub use binary::BinaryError;
use error::V2Error;
use request::{IMAGE_INPUT, JOB_ID, ModelSpec, PROBABILITIES, TENSOR_INPUT};
use wire::{ModelMetadata, ServerMetadata, TensorMetadata, V2ErrorBody};

/// The model that is the pattern itself.
pub const TANDEM_MODEL: &str = "tandem";
const VERSION: &str = "1";

/// A model this server answers for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    Fast,
    Accurate,
    Tandem,
}

impl Target {
    fn name(self, state: &AppState) -> String {
        match self {
            Target::Fast => stem(state.inner.fast.model_name()),
            Target::Accurate => stem(&state.inner.accurate_model),
            Target::Tandem => TANDEM_MODEL.to_owned(),
        }
    }
}

/// A model file's name without its extension: `mobilenet_v2.onnx` → `mobilenet_v2`.
fn stem(file: &str) -> String {
    file.rsplit_once('.').map_or(file, |(stem, _)| stem).to_owned()
}

/// The model named `name` (at `version`, if given).
fn resolve(state: &AppState, name: &str, version: Option<&str>) -> Result<Target, V2Error> {
    let all = [Target::Fast, Target::Accurate, Target::Tandem];
    let Some(target) = all.into_iter().find(|t| t.name(state) == name) else {
        let known: Vec<String> = all.iter().map(|t| format!("{:?}", t.name(state))).collect();
        return Err(V2Error::ModelNotFound { name: name.to_owned(), known: known.join(", ") });
    };
    match version {
        Some(v) if v != VERSION => Err(V2Error::VersionNotFound { model: name.to_owned(), version: v.to_owned() }),
        _ => Ok(target),
    }
}

/// What `target` takes and gives. The fast model (and `tandem`, which answers with it) gives
/// whole rows of probabilities; the accurate one's answers are made by workers, which keep
/// its `top_k` best classes. Only the fast model takes preprocessed tensors: a job carries the
/// encoded image to the accurate tier, which preprocesses it its own way.
fn spec(state: &AppState, target: Target) -> ModelSpec {
    let fast = &state.inner.fast;
    let top_k = state.inner.limits.top_k;
    match target {
        Target::Fast => ModelSpec {
            tensor_shape: Some(fast.input_shape()),
            classes: fast.classes(),
            rows: true,
            max_classification: fast.classes(),
            job_ids: false,
        },
        Target::Tandem => ModelSpec {
            tensor_shape: None,
            classes: fast.classes(),
            rows: true,
            max_classification: fast.classes(),
            job_ids: true,
        },
        Target::Accurate => ModelSpec {
            tensor_shape: None,
            classes: fast.classes(),
            rows: false,
            max_classification: top_k,
            job_ids: false,
        },
    }
}

fn metadata(state: &AppState, target: Target) -> ModelMetadata {
    let model = spec(state, target);
    let tensor = |name: &str, datatype: &str, shape: Vec<i64>| TensorMetadata {
        name: name.to_owned(),
        datatype: datatype.to_owned(),
        shape,
    };
    let mut inputs = vec![tensor(IMAGE_INPUT, "BYTES", vec![-1])];
    if let Some([c, h, w]) = model.tensor_shape {
        inputs.push(tensor(TENSOR_INPUT, "FP32", vec![-1, c as i64, h as i64, w as i64]));
    }
    // The accurate model's answers are its best classes as text (the classification extension).
    let probabilities = if model.rows {
        tensor(PROBABILITIES, "FP32", vec![-1, model.classes as i64])
    } else {
        tensor(PROBABILITIES, "BYTES", vec![-1, model.max_classification as i64])
    };
    let mut outputs = vec![probabilities];
    if model.job_ids {
        outputs.push(tensor(JOB_ID, "BYTES", vec![-1]));
    }
    let platform = if target == Target::Tandem { TANDEM_MODEL } else { "onnxruntime_onnx" };
    ModelMetadata {
        name: target.name(state),
        versions: vec![VERSION.into()],
        platform: platform.into(),
        inputs,
        outputs,
    }
}

/// Server liveness: 200 while the process answers (empty body).
#[utoipa::path(
    get,
    path = "/v2/health/live",
    tag = "v2",
    security((), ("api_key" = [])),
    responses((status = 200, description = "Live (the status is the answer; empty body).")),
)]
pub(crate) async fn server_live() -> StatusCode {
    StatusCode::OK
}

/// Server readiness: 200 when the models are loaded and the queue answers, else 503 (empty body).
#[utoipa::path(
    get,
    path = "/v2/health/ready",
    tag = "v2",
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "Ready (empty body)."),
        (status = 503, description = "Not ready: the queue does not answer (empty body)."),
    ),
)]
pub(crate) async fn server_ready(State(state): State<AppState>) -> StatusCode {
    match state.inner.queue.check_ready().await {
        Ok(()) => StatusCode::OK,
        Err(_) => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Server metadata: name, version, protocol extensions.
#[utoipa::path(
    get,
    path = "/v2",
    tag = "v2",
    responses((status = 200, description = "The server.", body = ServerMetadata)),
)]
pub(crate) async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: TANDEM_MODEL.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions: vec!["binary_tensor_data".into(), "classification".into()],
    })
}

/// A model's metadata: its versions, platform, inputs and outputs (-1: any size).
///
/// Every model takes `image` (BYTES: encoded images, one per element); the fast model also
/// takes `input` (FP32 `[N, 3, H, W]`, preprocessed). A request sends one of them.
#[utoipa::path(
    get,
    path = "/v2/models/{model}",
    tag = "v2",
    params(("model" = String, Path, description = "The fast or accurate model's file stem, or `tandem`.", example = "tandem")),
    responses(
        (status = 200, description = "The model.", body = ModelMetadata),
        (status = 404, description = "No such model.", body = V2ErrorBody),
    ),
)]
pub(crate) async fn model_metadata(State(state): State<AppState>, Path(model): Path<String>) -> Response {
    model_metadata_at(&state, &model, None)
}

/// A model's metadata, at a version (`1`).
#[utoipa::path(
    get,
    path = "/v2/models/{model}/versions/{version}",
    tag = "v2",
    params(
        ("model" = String, Path, description = "The fast or accurate model's file stem, or `tandem`.", example = "tandem"),
        ("version" = String, Path, description = "`1`.", example = "1"),
    ),
    responses(
        (status = 200, description = "The model.", body = ModelMetadata),
        (status = 404, description = "No such model or version.", body = V2ErrorBody),
    ),
)]
pub(crate) async fn model_version_metadata(
    State(state): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    model_metadata_at(&state, &model, Some(&version))
}

fn model_metadata_at(state: &AppState, model: &str, version: Option<&str>) -> Response {
    match resolve(state, model, version) {
        Ok(target) => Json(metadata(state, target)).into_response(),
        Err(err) => err.into_response(),
    }
}

/// Model readiness: 200 when the model can answer now, 503 when not (the accurate model: no
/// live worker, or the queue does not answer), 404 for an unknown model.
#[utoipa::path(
    get,
    path = "/v2/models/{model}/ready",
    tag = "v2",
    params(("model" = String, Path, description = "The fast or accurate model's file stem, or `tandem`.", example = "tandem")),
    responses(
        (status = 200, description = "Ready (empty body)."),
        (status = 404, description = "No such model.", body = V2ErrorBody),
        (status = 503, description = "Not ready (empty body)."),
    ),
)]
pub(crate) async fn model_ready(State(state): State<AppState>, Path(model): Path<String>) -> Response {
    model_ready_at(&state, &model, None).await
}

/// Model readiness, at a version (`1`).
#[utoipa::path(
    get,
    path = "/v2/models/{model}/versions/{version}/ready",
    tag = "v2",
    params(
        ("model" = String, Path, description = "The fast or accurate model's file stem, or `tandem`.", example = "tandem"),
        ("version" = String, Path, description = "`1`.", example = "1"),
    ),
    responses(
        (status = 200, description = "Ready (empty body)."),
        (status = 404, description = "No such model or version.", body = V2ErrorBody),
        (status = 503, description = "Not ready (empty body)."),
    ),
)]
pub(crate) async fn model_version_ready(
    State(state): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    model_ready_at(&state, &model, Some(&version)).await
}

async fn model_ready_at(state: &AppState, model: &str, version: Option<&str>) -> Response {
    let target = match resolve(state, model, version) {
        Ok(target) => target,
        Err(err) => return err.into_response(),
    };
    let queue = &state.inner.queue;
    let ready = match target {
        // Loaded before the listener opened.
        Target::Fast => true,
        Target::Tandem => queue.check_ready().await.is_ok(),
        Target::Accurate => queue.live_workers().await.is_ok_and(|live| live > 0),
    };
    if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }.into_response()
}

/// Inference.
///
/// The body is the JSON request or, with `Inference-Header-Content-Length`, that many bytes of
/// JSON followed by the inputs' binary data (Triton's binary tensor data extension). One input:
/// `image` (BYTES, encoded images: base64 strings in JSON, length-prefixed in binary) or, for
/// the fast model, `input` (FP32 `[N, 3, H, W]`). Outputs: `probabilities` (FP32 `[N, classes]`,
/// or with `parameters.classification = K` the K best as `"score:index:label"` BYTES), and for
/// `tandem` `job_id` (BYTES `[N]`). `parameters.binary_data_output` or an output's
/// `binary_data` asks for binary outputs. The accurate model answers once the workers have (its
/// `probabilities` only with `classification`, up to the computed top-k).
#[utoipa::path(
    post,
    path = "/v2/models/{model}/infer",
    tag = "v2",
    params(
        ("model" = String, Path, description = "The fast or accurate model's file stem, or `tandem`.", example = "tandem"),
        ("Inference-Header-Content-Length" = Option<u64>, Header, description = "Bytes of JSON at the \
            start of the body; the rest is binary tensor data."),
    ),
    request_body(content(
        (wire::InferRequest = "application/json"),
        (wire::BinaryBody = "application/octet-stream"),
    )),
    responses(
        (status = 200, description = "The outputs: JSON, or (when an output is binary) \
            `Inference-Header-Content-Length` bytes of JSON followed by the binary outputs.",
            content(
                (wire::InferResponse = "application/json"),
                (wire::BinaryBody = "application/octet-stream"),
            )),
        (status = 400, description = "A malformed request: JSON, shapes, datatypes, binary sizes, images.",
            body = V2ErrorBody),
        (status = 404, description = "No such model or version.", body = V2ErrorBody),
        (status = 408, description = "The body did not arrive within `--body-timeout`.", body = V2ErrorBody),
        (status = 413, description = "The body is over `--max-body`, or an image over the pixel bounds.",
            body = V2ErrorBody),
        (status = 429, description = "Too many requests in flight.", body = V2ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait: 1."))),
        (status = 500, description = "The model failed, or the accurate model's job failed.", body = V2ErrorBody),
        (status = 503, description = "No answer within `--request-timeout`, or no job could be queued.",
            body = V2ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait: 1."))),
    ),
)]
pub(crate) async fn model_infer(
    State(state): State<AppState>,
    Path(model): Path<String>,
    request: Request<Body>,
) -> Response {
    infer_at(&state, &model, None, request).await
}

/// Inference, at a version (`1`): as `POST /v2/models/{model}/infer`.
#[utoipa::path(
    post,
    path = "/v2/models/{model}/versions/{version}/infer",
    tag = "v2",
    params(
        ("model" = String, Path, description = "The fast or accurate model's file stem, or `tandem`.", example = "tandem"),
        ("version" = String, Path, description = "`1`.", example = "1"),
        ("Inference-Header-Content-Length" = Option<u64>, Header, description = "Bytes of JSON at the \
            start of the body; the rest is binary tensor data."),
    ),
    request_body(content(
        (wire::InferRequest = "application/json"),
        (wire::BinaryBody = "application/octet-stream"),
    )),
    responses(
        (status = 200, description = "As `POST /v2/models/{model}/infer`.",
            content(
                (wire::InferResponse = "application/json"),
                (wire::BinaryBody = "application/octet-stream"),
            )),
        (status = 400, description = "A malformed request.", body = V2ErrorBody),
        (status = 404, description = "No such model or version.", body = V2ErrorBody),
        (status = 408, description = "The body did not arrive within `--body-timeout`.", body = V2ErrorBody),
        (status = 413, description = "The body is over `--max-body`, or an image over the pixel bounds.",
            body = V2ErrorBody),
        (status = 429, description = "Too many requests in flight.", body = V2ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait: 1."))),
        (status = 500, description = "The model failed, or the accurate model's job failed.", body = V2ErrorBody),
        (status = 503, description = "No answer within `--request-timeout`, or no job could be queued.",
            body = V2ErrorBody, headers(("Retry-After" = u32, description = "Seconds to wait: 1."))),
    ),
)]
pub(crate) async fn model_version_infer(
    State(state): State<AppState>,
    Path((model, version)): Path<(String, String)>,
    request: Request<Body>,
) -> Response {
    infer_at(&state, &model, Some(&version), request).await
}

async fn infer_at(state: &AppState, model: &str, version: Option<&str>, request: Request<Body>) -> Response {
    let answered = match resolve(state, model, version) {
        Ok(target) => infer::infer(state, target, request).await,
        Err(err) => {
            super::input::discard(request).await;
            Err(err)
        }
    };
    answered.unwrap_or_else(IntoResponse::into_response)
}
