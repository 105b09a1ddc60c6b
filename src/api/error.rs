//! The one place errors become HTTP responses: `{"error": {"code", "message"}}` with the
//! status that fits.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::engine::{ClassifyError, EngineError};
use crate::pipeline::ImageError;
use crate::queue::QueueError;

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
    #[error("too many requests in flight; retry shortly")]
    Overloaded,
    #[error("the request took longer than {0:.1} s")]
    Timeout(f64),
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
            BodyTooLarge { .. } | Image(ImageError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            MissingField(_) | InvalidField { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            BodyRead(_) | InvalidJson(_) | InvalidBase64(_) | InvalidMultipart(_) | Image(_) | InvalidJobId(_) => {
                StatusCode::BAD_REQUEST
            }
            JobNotFound(_) => StatusCode::NOT_FOUND,
            Overloaded => StatusCode::TOO_MANY_REQUESTS,
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
            Image(ImageError::Internal(_)) => "internal",
            InvalidJobId(_) => "invalid_job_id",
            JobNotFound(_) => "job_not_found",
            Overloaded => "overloaded",
            Timeout(_) => "timeout",
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

/// The body every error shares.
pub fn error_body(code: &str, message: &str) -> serde_json::Value {
    json!({"error": {"code": code, "message": message}})
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(code = self.code(), error = %self, "request failed");
        }
        let mut response = (status, Json(error_body(self.code(), &self.to_string()))).into_response();
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
