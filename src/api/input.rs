//! Getting the image out of a `POST /predict` request.
//!
//! Three ways in, as users of other serving tools expect: JSON `{"image_data": "<base64>"}`
//! (optionally a `data:image/...;base64,` URL), a raw body with an `image/*` content type, or
//! `multipart/form-data` with a file field `image`. The body is read with a hard size limit; an
//! over-long one is drained (bounded) before its 413, so the client sees the answer.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequest, Multipart};
use axum::http::{Request, header};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::BodyExt as _;

use super::error::ApiError;
use super::types::PredictRequest;

/// A request body read whole, and which of the three forms it is. Parsing is a step of its
/// own ([`Received::into_image`]), so that a large JSON body can be parsed off the runtime.
pub enum Received {
    Json(Bytes),
    Raw(Bytes),
    /// The request head stays: the multipart parser needs its boundary (boxed: it is large).
    Multipart {
        parts: Box<axum::http::request::Parts>,
        body: Bytes,
    },
}

impl Received {
    /// Bytes of the body as received.
    pub fn len(&self) -> usize {
        match self {
            Received::Json(body) | Received::Raw(body) | Received::Multipart { body, .. } => body.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The encoded image the body carries.
    pub async fn into_image(self) -> Result<Bytes, ApiError> {
        match self {
            Received::Json(body) => image_from_json(&body),
            Received::Raw(body) => Ok(body),
            Received::Multipart { parts, body } => image_from_multipart(*parts, body).await,
        }
    }
}

/// Extracts the encoded image from the request, enforcing `max_body`.
pub async fn read_image(request: Request<Body>, max_body: usize) -> Result<Bytes, ApiError> {
    receive(request, max_body, &mut |_| true).await?.into_image().await
}

/// Whether the client waits for `100 Continue` before sending its body: a request refused
/// before its body is read can then be answered without reading it.
pub fn expects_continue(request: &Request<Body>) -> bool {
    request.headers().get(header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// The length the client declared for its body, if it did.
pub fn declared_length(request: &Request<Body>) -> Option<u64> {
    request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
}

/// Reads the body whole, enforcing `max_body`, after checking its content type. `admit` is
/// told the size of each piece of body as it arrives; if it says no (the memory for bodies
/// being received is spent), the rest is drained and the request refused as overloaded.
pub async fn receive(
    request: Request<Body>,
    max_body: usize,
    admit: &mut impl FnMut(usize) -> bool,
) -> Result<Received, ApiError> {
    let content_type =
        request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let mime = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    // A client waiting for `100 Continue` before it sends an over-long body is answered at once:
    // the body is never asked for, so there is nothing to drain.
    let declared = declared_length(&request);
    if expects_continue(&request) && declared.is_some_and(|len| len > max_body as u64) {
        return Err(ApiError::BodyTooLarge { limit: max_body });
    }
    if mime == "application/json" || mime.ends_with("+json") {
        Ok(Received::Json(read_body(request.into_body(), max_body, admit).await?))
    } else if mime.starts_with("image/") || mime == "application/octet-stream" {
        Ok(Received::Raw(read_body(request.into_body(), max_body, admit).await?))
    } else if mime == "multipart/form-data" {
        // Read whole first, under the same limit (and drain) as the other body kinds; the
        // field would be buffered whole anyway.
        let (parts, body) = request.into_parts();
        let body = read_body(body, max_body, admit).await?;
        Ok(Received::Multipart { parts: Box::new(parts), body })
    } else {
        Err(ApiError::UnsupportedMediaType(content_type))
    }
}

/// Reads the body whole as it is, whatever its content type, enforcing `max_body` as
/// [`receive`] does.
pub async fn receive_as_is(
    request: Request<Body>,
    max_body: usize,
    admit: &mut impl FnMut(usize) -> bool,
) -> Result<Bytes, ApiError> {
    let declared = declared_length(&request);
    if expects_continue(&request) && declared.is_some_and(|len| len > max_body as u64) {
        return Err(ApiError::BodyTooLarge { limit: max_body });
    }
    read_body(request.into_body(), max_body, admit).await
}

/// Reads and throws away a body that will not be used (a request refused before its body was
/// read), so that the client, still writing, gets the answer instead of a reset connection. A
/// client waiting for `100 Continue` has sent nothing: its body is not asked for.
pub async fn discard(request: Request<Body>) {
    if !expects_continue(&request) {
        drain(request.into_body()).await;
    }
}

/// An over-long body is still read, and thrown away, for up to this long and this much before
/// its 413 goes out: closing a socket with unread data in it makes the kernel send a reset,
/// and a client still writing its body would then see "connection reset" instead of the 413
/// (nginx's "lingering close"). Past either bound the connection is simply closed.
const DRAIN_TIME: Duration = Duration::from_secs(5);
const DRAIN_BYTES: usize = 64 << 20;

/// Reads the whole body, at most `max_body` bytes of it, each piece past `admit`.
async fn read_body(mut body: Body, max_body: usize, admit: &mut impl FnMut(usize) -> bool) -> Result<Bytes, ApiError> {
    // A body that arrives in one piece is returned as it came, without a copy. Past that, each
    // piece is copied as it arrives, so no single step of the runtime's thread copies a whole
    // multi-MB body at once (which held up `/health` behind big uploads).
    let mut first: Option<Bytes> = None;
    let mut rest = bytes::BytesMut::new();
    let mut len = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| ApiError::BodyRead(err.to_string()))?;
        let Ok(data) = frame.into_data() else { continue };
        if len + data.len() > max_body {
            drain(body).await;
            return Err(ApiError::BodyTooLarge { limit: max_body });
        }
        if !admit(data.len()) {
            drain(body).await;
            return Err(ApiError::Overloaded);
        }
        len += data.len();
        match first.take() {
            None if rest.is_empty() => first = Some(data),
            earlier => {
                if let Some(earlier) = earlier {
                    rest.extend_from_slice(&earlier);
                }
                rest.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| rest.freeze()))
}

/// Reads and discards the rest of a body, within [`DRAIN_TIME`] and [`DRAIN_BYTES`].
async fn drain(mut body: Body) {
    let mut drained = 0usize;
    let discard = async {
        while let Some(Ok(frame)) = body.frame().await {
            drained += frame.data_ref().map_or(0, Bytes::len);
            if drained > DRAIN_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, discard).await;
}

/// The image of a JSON body, a [`PredictRequest`]. Read as any JSON first, so that each way a
/// body can be wrong (not JSON, no `image_data`, not a string) gets its own error.
pub fn image_from_json(body: &[u8]) -> Result<Bytes, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    let field = value.get("image_data").ok_or(ApiError::MissingField("image_data"))?;
    if !field.is_string() {
        return Err(ApiError::InvalidField { field: "image_data", reason: "expected a base64 string".into() });
    }
    let request: PredictRequest = serde_json::from_value(value).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    decode_base64(&request.image_data).map(Bytes::from)
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

async fn image_from_multipart(parts: axum::http::request::Parts, body: Bytes) -> Result<Bytes, ApiError> {
    let max_body = body.len();
    let request = Request::from_parts(parts, Body::from(body));
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
