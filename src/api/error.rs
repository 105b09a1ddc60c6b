//! The one place errors become HTTP responses: `{"error": {"code", "message"}}` with the
//! status that fits.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::types::ErrorBody;
use crate::engine::{ClassifyError, EngineError};
use crate::pipeline::ImageError;
use crate::queue::QueueError;

/// Most headers a request may carry, and their total size (names and values). Past these the
/// request gets a JSON 431; hyper itself closes connections far past them (bare 431).
pub const HEADER_COUNT_LIMIT: usize = 100;
pub const HEADER_BYTES_LIMIT: usize = 32 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("request body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("cannot read the request body: {0}")]
    BodyRead(String),
    #[error(
        "unsupported content type {0:?}: send application/json with image_data, an image/* body, or multipart/form-data with an `image` file"
    )]
    UnsupportedMediaType(String),
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("missing field `{0}`")]
    MissingField(&'static str),
    #[error("field `{field}` is malformed: {reason}")]
    InvalidField { field: &'static str, reason: String },
    #[error("image_data is not valid base64: {0}")]
    InvalidBase64(String),
    #[error("multipart body is malformed: {0}")]
    InvalidMultipart(String),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("job id {0:?} is not a UUID")]
    InvalidJobId(String),
    #[error("no job {0} (unknown or expired)")]
    JobNotFound(String),
    /// `DELETE /job/{id}` of a job a worker has started, or that has ended.
    #[error("job {id} is {status}: only a queued job can be canceled (a running one finishes and keeps its result)")]
    NotCancelable { id: String, status: &'static str },
    #[error("too many requests in flight; retry shortly")]
    Overloaded,
    /// An event stream reconnecting after the job's final event: nothing more will come (204).
    #[error("the job has ended and its final event was already sent")]
    NothingNew,
    /// `--max-watchers`: long-polls and event streams open at once.
    #[error("too many clients waiting for jobs ({limit}); retry shortly, or poll GET /job/{{id}}")]
    TooManyWatchers { limit: usize },
    /// The configured `--request-timeout`, shown as the operator gave it.
    #[error("the request took longer than {0} s")]
    Timeout(f64),
    /// `--body-timeout`, as configured.
    #[error("the request body did not arrive within {0} s")]
    BodyTimeout(f64),
    #[error("missing or wrong API key: send `Authorization: Bearer <key>`")]
    Unauthorized,
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    #[error(transparent)]
    Callback(#[from] crate::webhooks::CallbackError),
    #[error(
        "request headers are too large ({0}); at most {HEADER_COUNT_LIMIT} headers of {HEADER_BYTES_LIMIT} bytes in all"
    )]
    HeadersTooLarge(String),
    #[error(transparent)]
    Queue(QueueError),
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            Image(ImageError::Internal(_)) => StatusCode::INTERNAL_SERVER_ERROR,
            BodyTooLarge { .. } | Image(ImageError::TooLarge { .. } | ImageError::OverMemory { .. }) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Image(ImageError::DecodeBusy { .. }) => StatusCode::SERVICE_UNAVAILABLE,
            UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            MissingField(_) | InvalidField { .. } | Callback(_) => StatusCode::UNPROCESSABLE_ENTITY,
            BodyRead(_) | InvalidJson(_) | InvalidBase64(_) | InvalidMultipart(_) | Image(_) | InvalidJobId(_)
            | InvalidQuery(_) => StatusCode::BAD_REQUEST,
            Unauthorized => StatusCode::UNAUTHORIZED,
            BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            JobNotFound(_) => StatusCode::NOT_FOUND,
            NotCancelable { .. } => StatusCode::CONFLICT,
            NothingNew => StatusCode::NO_CONTENT,
            Overloaded | TooManyWatchers { .. } => StatusCode::TOO_MANY_REQUESTS,
            Timeout(_) | Queue(_) => StatusCode::SERVICE_UNAVAILABLE,
            Inference(_) | Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable, machine-readable name for the error.
    pub fn code(&self) -> &'static str {
        use ApiError::*;
        match self {
            BodyTooLarge { .. } => "body_too_large",
            BodyRead(_) => "body_unreadable",
            UnsupportedMediaType(_) => "unsupported_media_type",
            InvalidJson(_) => "invalid_json",
            MissingField(_) => "missing_field",
            InvalidField { .. } => "invalid_field",
            InvalidBase64(_) => "invalid_base64",
            InvalidMultipart(_) => "invalid_multipart",
            Image(ImageError::Empty) => "empty_image",
            Image(ImageError::NotAnImage) => "not_an_image",
            Image(ImageError::Truncated(_)) => "truncated_image",
            Image(ImageError::Unsupported(_)) => "unsupported_format",
            Image(ImageError::TooLarge { .. }) => "image_too_large",
            Image(ImageError::TooComplex(_)) => "image_too_complex",
            Image(ImageError::OverMemory { .. }) => "image_too_large",
            Image(ImageError::DecodeBusy { .. }) => "decode_busy",
            Image(ImageError::Internal(_)) => "internal",
            InvalidJobId(_) => "invalid_job_id",
            JobNotFound(_) => "job_not_found",
            NotCancelable { .. } => "job_not_cancelable",
            Callback(crate::webhooks::CallbackError::Disabled) => "webhooks_disabled",
            Callback(crate::webhooks::CallbackError::Malformed(_)) => "invalid_callback_url",
            Callback(crate::webhooks::CallbackError::NotAllowed(_)) => "callback_not_allowed",
            NothingNew => "nothing_new",
            Overloaded => "overloaded",
            TooManyWatchers { .. } => "too_many_watchers",
            Timeout(_) => "timeout",
            Unauthorized => "unauthorized",
            BodyTimeout(_) => "body_timeout",
            InvalidQuery(_) => "invalid_query",
            HeadersTooLarge(_) => "headers_too_large",
            Queue(_) => "queue_unavailable",
            Inference(_) => "inference_failed",
            Internal(_) => "internal",
        }
    }
}

impl From<ClassifyError> for ApiError {
    fn from(err: ClassifyError) -> Self {
        match err {
            ClassifyError::Image(e) => ApiError::Image(e),
            ClassifyError::Overloaded => ApiError::Overloaded,
            ClassifyError::Engine(EngineError::Inference(e)) => ApiError::Inference(e),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// The stable `code` for an error status that did not come from an [`ApiError`] (the router's
/// own 404/405, an extractor's rejection), so that those leave in the same shape.
pub fn code_for_status(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::URI_TOO_LONG => "uri_too_long",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "unprocessable",
        StatusCode::TOO_MANY_REQUESTS => "overloaded",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "headers_too_large",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "error",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status == StatusCode::NO_CONTENT {
            return status.into_response();
        }
        if status.is_server_error() {
            tracing::warn!(code = self.code(), error = %self, "request failed");
        }
        let mut response = (status, Json(ErrorBody::new(self.code(), self.to_string()))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
