//! Getting the image out of a `POST /predict` request.
//!
//! Three ways in, as users of other serving tools expect: JSON `{"image_data": "<base64>"}`
//! (optionally a `data:image/...;base64,` URL), a raw body with an `image/*` content type, or
//! `multipart/form-data` with a file field `image`. The body is read with a hard size limit.

use axum::body::Body;
use axum::extract::{FromRequest, Multipart};
use axum::http::{Request, header};
use base64::Engine as _;
use bytes::Bytes;

use super::error::ApiError;

/// Extracts the encoded image from the request, enforcing `max_body`.
pub async fn read_image(request: Request<Body>, max_body: usize) -> Result<Bytes, ApiError> {
    let content_type =
        request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if mime == "application/json" || mime.ends_with("+json") {
        let body = read_body(request.into_body(), max_body).await?;
        image_from_json(&body)
    } else if mime.starts_with("image/") || mime == "application/octet-stream" {
        read_body(request.into_body(), max_body).await
    } else if mime == "multipart/form-data" {
        image_from_multipart(request, max_body).await
    } else {
        Err(ApiError::UnsupportedMediaType(content_type))
    }
}

async fn read_body(body: Body, max_body: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, max_body).await.map_err(|err| {
        // `to_bytes` reports an over-long body as a length-limit error somewhere in its chain.
        let limited = std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source())
            .any(|e| e.is::<http_body_util::LengthLimitError>());
        if limited { ApiError::BodyTooLarge { limit: max_body } } else { ApiError::BodyRead(err.to_string()) }
    })
}

fn image_from_json(body: &[u8]) -> Result<Bytes, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    let field = value.get("image_data").ok_or(ApiError::MissingField("image_data"))?;
    let text = field
        .as_str()
        .ok_or_else(|| ApiError::InvalidField { field: "image_data", reason: "expected a base64 string".into() })?;
    decode_base64(text).map(Bytes::from)
}

/// Standard base64, padded or not, with or without a `data:...;base64,` prefix; whitespace
/// (line breaks from encoders that wrap) is ignored.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, ApiError> {
    let payload = match text.strip_prefix("data:") {
        Some(rest) => match rest.split_once(',') {
            Some((meta, data)) if meta.ends_with(";base64") => data,
            _ => return Err(ApiError::InvalidBase64("a data URL must be `data:<type>;base64,<data>`".into())),
        },
        None => text,
    };
    let compact: String = payload.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine.decode(compact.as_bytes()).map_err(|e| ApiError::InvalidBase64(e.to_string()))
}

async fn image_from_multipart(request: Request<Body>, max_body: usize) -> Result<Bytes, ApiError> {
    // The multipart parser enforces the same limit as the other body kinds.
    let (parts, body) = request.into_parts();
    let limited = Body::new(http_body_util::Limited::new(body, max_body));
    let request = Request::from_parts(parts, limited);
    let mut multipart =
        Multipart::from_request(request, &()).await.map_err(|e| ApiError::InvalidMultipart(e.body_text()))?;
    loop {
        let field = multipart.next_field().await.map_err(|e| multipart_error(e, max_body))?;
        let Some(field) = field else { return Err(ApiError::MissingField("image")) };
        if field.name() == Some("image") {
            return field.bytes().await.map_err(|e| multipart_error(e, max_body));
        }
    }
}

fn multipart_error(err: axum::extract::multipart::MultipartError, max_body: usize) -> ApiError {
    if err.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::BodyTooLarge { limit: max_body }
    } else {
        ApiError::InvalidMultipart(err.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_accepts_padding_data_urls_and_line_breaks() {
        for text in ["aGVsbG8=", "aGVsbG8", "data:image/png;base64,aGVsbG8=", "aGVs\nbG8="] {
            assert_eq!(decode_base64(text).ok().as_deref(), Some(&b"hello"[..]), "{text}");
        }
    }

    #[test]
    fn base64_rejects_garbage() {
        assert!(matches!(decode_base64("not base64!!"), Err(ApiError::InvalidBase64(_))));
        assert!(matches!(decode_base64("data:image/png,aGVsbG8="), Err(ApiError::InvalidBase64(_))));
    }

    #[test]
    fn json_errors_are_told_apart() {
        assert!(matches!(image_from_json(b"{"), Err(ApiError::InvalidJson(_))));
        assert!(matches!(image_from_json(b"{}"), Err(ApiError::MissingField("image_data"))));
        assert!(matches!(image_from_json(b"[1]"), Err(ApiError::MissingField("image_data"))));
        assert!(matches!(image_from_json(br#"{"image_data": 5}"#), Err(ApiError::InvalidField { .. })));
        assert!(matches!(image_from_json(br#"{"image_data": "@@"}"#), Err(ApiError::InvalidBase64(_))));
        assert_eq!(image_from_json(br#"{"image_data": "aGk="}"#).ok(), Some(Bytes::from_static(b"hi")));
    }
}
