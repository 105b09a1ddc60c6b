//! `GET /`: a one-page web client for trying the service from a browser, desktop or phone.
//!
//! The page is static and embedded in the binary (no build step, no CDN, no external fonts):
//! `page/index.html` with `page/page.css` and `page/page.js` inlined into it when first served.
//! It posts the picked image to `POST /predict` with `Accept: text/event-stream` and reads the
//! stream with `fetch` (not `EventSource`, which cannot send `Authorization`), so it also works
//! behind `--api-key`: the page itself is open (see [`super::middleware::require_api_key`]),
//! and the key the user types is kept in the browser and sent with each request.
//!
//! The inline script and style are allowed by their SHA-256 in the `Content-Security-Policy`,
//! computed from the same bytes that are served, so the policy needs no `'unsafe-inline'` and
//! cannot drift from the page.

use std::sync::LazyLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

const HTML: &str = include_str!("page/index.html");
const CSS: &str = include_str!("page/page.css");
const JS: &str = include_str!("page/page.js");

/// Where [`HTML`] takes the style and the script.
const STYLE_SLOT: &str = "<style></style>";
const SCRIPT_SLOT: &str = "<script></script>";

/// The served document and the policy that allows exactly its inline style and script.
struct Page {
    html: String,
    csp: HeaderValue,
}

static PAGE: LazyLock<Page> = LazyLock::new(|| {
    let html = HTML.replacen(STYLE_SLOT, &format!("<style>{CSS}</style>"), 1).replacen(
        SCRIPT_SLOT,
        &format!("<script>{JS}</script>"),
        1,
    );
    let csp = format!(
        "default-src 'none'; script-src '{}'; style-src '{}'; img-src 'self' blob: data:; connect-src 'self'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        sha256_source(JS),
        sha256_source(CSS),
    );
    // Only base64 and ASCII words: always a valid header value.
    let csp = HeaderValue::from_str(&csp).unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"));
    Page { html, csp }
});

/// A CSP hash source, `sha256-<base64>`, for an inline element's exact text.
fn sha256_source(text: &str) -> String {
    format!("sha256-{}", base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes())))
}

/// The web page: pick, drop or photograph an image; the fast answer, then the refined one.
///
/// `no-cache` so a new binary's page is picked up at once (it is small). Open with
/// `--api-key` too: the page asks for the key and sends it with its requests.
#[utoipa::path(
    get,
    path = "/",
    tag = "page",
    security(()),
    responses((status = 200, description = "The page (HTML, with its style and script inline).",
        content((String = "text/html")))),
)]
pub async fn index() -> Response {
    let page = &*PAGE;
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (header::CONTENT_SECURITY_POLICY, page.csp.clone()),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        ],
        page.html.clone(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    async fn get_page(router: Router, auth: Option<&str>) -> Response {
        let mut request = Request::builder().uri("/");
        if let Some(auth) = auth {
            request = request.header(header::AUTHORIZATION, auth);
        }
        router.oneshot(request.body(Body::empty()).expect("request")).await.expect("response")
    }

    #[tokio::test]
    async fn get_slash_answers_the_page_as_html_with_its_policy() {
        let response = get_page(Router::new().route("/", get(index)), None).await;
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers().clone();
        assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(headers[header::CACHE_CONTROL], "no-cache");
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().expect("ASCII");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert!(csp.contains(&sha256_source(JS)) && csp.contains(&sha256_source(CSS)), "{csp}");
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
        let html = std::str::from_utf8(&body).expect("UTF-8");
        assert!(html.starts_with("<!doctype html>"));
        assert!(html.contains("<title>Tandem</title>"));
        // The hashed text is exactly what sits between the tags.
        assert!(html.contains(&format!("<style>{CSS}</style>")));
        assert!(html.contains(&format!("<script>{JS}</script>")));
        assert!(html.contains(r#"accept="image/*" capture="environment""#));
    }

    #[test]
    fn the_inlined_files_cannot_close_their_own_tags() {
        assert!(!CSS.to_ascii_lowercase().contains("</style"));
        assert!(!JS.to_ascii_lowercase().contains("</script"));
        assert_eq!(HTML.matches(STYLE_SLOT).count(), 1);
        assert_eq!(HTML.matches(SCRIPT_SLOT).count(), 1);
    }

    #[tokio::test]
    async fn the_page_is_open_when_api_keys_are_required_and_the_api_is_not() {
        let access = super::super::Access { api_keys: vec!["s3cret".into()], ..Default::default() };
        let routes = Router::new().route("/", get(index)).route("/predict", get(|| async { "ok" }));
        let router = super::super::with_common_layers(routes, &Arc::new(access));
        assert_eq!(get_page(router.clone(), None).await.status(), StatusCode::OK);
        let predict = Request::builder().uri("/predict").body(Body::empty()).expect("request");
        assert_eq!(router.oneshot(predict).await.expect("response").status(), StatusCode::UNAUTHORIZED);
    }
}
