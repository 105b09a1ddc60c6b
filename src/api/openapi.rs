//! The API document: OpenAPI 3.1 at `GET /openapi.json`, and Swagger UI at `/docs`, served
//! from files compiled in (no other host is ever asked for anything).
//!
//! The document is not written by hand. Its schemas are the wire types of [`super::types`]
//! (`ToSchema`; their doc comments are the descriptions) and the query types the handlers
//! parse (`IntoParams`); its paths come from `#[utoipa::path]` on each handler, registered
//! together with the route in [`super::api_routes`] (`utoipa_axum::routes!`), the one list of
//! what the router serves. What is said once for every operation (the API key's 401) is added
//! here, in [`document`].

use std::sync::{Arc, LazyLock};

use axum::Json;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi as Document, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_swagger_ui::Config;

use super::types::ErrorBody;

mod events;
pub(super) use events::{JobEvent, PredictEvent};

/// The security scheme's name in the document.
pub const API_KEY: &str = "api_key";

/// Where the document is served, and where Swagger UI reads it from.
pub const DOCUMENT_PATH: &str = "/openapi.json";

const DESCRIPTION: &str = "\
Time-lagged image inference: a fast model answers now, an accurate model refines in the background.

`POST /predict` answers at once with the fast model's prediction and a `job_id`; the job is queued \
before the answer is sent, and an accurate model takes it in the background. Its result is read \
with `GET /job/{id}`: poll it, long-poll it (`?wait=SECONDS`: answered as soon as the job is \
final), or follow it as server-sent events (`GET /job/{id}/events`). `POST /predict` with \
`Accept: text/event-stream` does both in one connection: a `fast` event, then the job's events.

Every error, whatever its status, has the body `ErrorBody`: `{\"error\": {\"code\", \"message\"}}`, \
`code` stable and machine-readable; under `/v2` errors are the protocol's `{\"error\": \"<message>\"}` \
(`V2ErrorBody`), except the API key's 401. Every response carries an `x-request-id` header (the client's, \
if it sent a sane one). With `--api-key`, every route needs `Authorization: Bearer <key>`, except \
the health routes (unless `--protect-health`) and `/metrics` (unless `--protect-metrics`).";

#[derive(OpenApi)]
#[openapi(
    info(title = "Tandem", version = env!("CARGO_PKG_VERSION"), description = DESCRIPTION),
    modifiers(&BearerKey),
    security(("api_key" = [])),
    components(schemas(ErrorBody, ImageUpload)),
    tags(
        (name = "predict", description = "Classify an image: the fast answer now, the accurate one as a job."),
        (name = "jobs", description = "The accurate tier's answer: poll, long-poll or stream a job."),
        (name = "health", description = "Liveness and readiness, for load balancers and orchestrators."),
        (name = "operations", description = "Prometheus metrics."),
        (name = "docs", description = "This document, and Swagger UI to read and try it."),
        (name = "v2", description = "The Open Inference Protocol (KServe v2), as Triton and KServe clients speak it: \
            the fast model, the accurate model and `tandem` (the fast answer and its jobs)."),
    ),
)]
struct ApiDoc;

/// `--api-key` as a bearer token.
struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "One of the keys `tandem serve` was given with `--api-key` (`TANDEM_API_KEY`). Without \
                 `--api-key` no key is needed.",
            ))
            .build();
        components.add_security_scheme(API_KEY, SecurityScheme::Http(scheme));
    }
}

/// The document's base: info, tags, the security scheme; the paths are added by the router's
/// registration ([`super::api_routes`]).
pub(super) fn base() -> Document {
    ApiDoc::openapi()
}

/// The whole document, as `GET /openapi.json` serves it.
pub fn document() -> Document {
    let (_, mut doc) = super::api_routes().split_for_parts();
    add_unauthorized(&mut doc);
    doc
}

/// Every operation that can need the key gets its 401 (said once here rather than on each).
fn add_unauthorized(doc: &mut Document) {
    let unauthorized = |open_flag: Option<&str>| {
        let when = match open_flag {
            Some(flag) => format!("Only with `--api-key` and `{flag}`: the key is missing or wrong."),
            None => "Only with `--api-key`: the key is missing or wrong (`unauthorized`).".to_owned(),
        };
        ResponseBuilder::new()
            .description(when)
            .header(
                "WWW-Authenticate",
                utoipa::openapi::Header::new(
                    utoipa::openapi::ObjectBuilder::new().schema_type(utoipa::openapi::schema::Type::String),
                ),
            )
            .content("application/json", utoipa::openapi::Content::new(Some(RefOr::Ref(schema_ref::<ErrorBody>()))))
            .build()
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        if super::middleware::always_open(path) {
            continue;
        }
        let open_flag = if path == "/health" || path.starts_with("/health/") {
            Some("--protect-health")
        } else if path == "/metrics" {
            Some("--protect-metrics")
        } else {
            None
        };
        let operations =
            [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch, &mut item.head];
        for operation in operations.into_iter().flatten() {
            operation.responses.responses.entry("401".to_owned()).or_insert_with(|| unauthorized(open_flag).into());
        }
    }
}

fn schema_ref<T: ToSchema>() -> utoipa::openapi::Ref {
    utoipa::openapi::Ref::from_schema_name(T::name())
}

/// The document, built once.
static DOCUMENT: LazyLock<Document> = LazyLock::new(document);

/// How Swagger UI is set up: it reads [`DOCUMENT_PATH`], and never sends the document to
/// swagger.io's validator (its default), so the page works offline and leaks nothing.
static SWAGGER: LazyLock<Arc<Config<'static>>> =
    LazyLock::new(|| Arc::new(Config::from(DOCUMENT_PATH).validator_url("none").try_it_out_enabled(true)));

/// `POST /predict`'s raw form: the encoded image as the body (JPEG, PNG, WebP, GIF, BMP, TIFF).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary, content_media_type = "image/*")]
#[allow(dead_code)]
pub struct RawImage(Vec<u8>);

/// `POST /predict`'s `multipart/form-data` form: the image as a file part named `image`.
// The handler reads the parts itself (`input`); this type exists for the document.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ImageUpload {
    /// The encoded image (JPEG, PNG, WebP, GIF, BMP, TIFF), as a file. Other parts are ignored.
    #[schema(value_type = String, format = Binary, content_media_type = "image/*")]
    image: Vec<u8>,
}

/// What `POST /predict` with `Accept: text/event-stream` sends (bodies shortened).
pub(super) const PREDICT_EVENTS_EXAMPLE: &str = "\
event: fast
data: {\"job_id\":\"0b3e6a4e-6f1e-4c43-9a57-8f3f7f7d2a11\",\"result_sync\":\"tabby\",\"sync\":{...},\"status_url\":\"/job/0b3e6a4e-6f1e-4c43-9a57-8f3f7f7d2a11\"}

event: queued
id: queued-0
data: {\"job_id\":\"0b3e6a4e-6f1e-4c43-9a57-8f3f7f7d2a11\",\"prediction\":\"\",\"status\":\"queued\",...}

event: completed
id: completed-1
data: {\"job_id\":\"0b3e6a4e-6f1e-4c43-9a57-8f3f7f7d2a11\",\"prediction\":\"tiger cat\",\"status\":\"completed\",...}

";

/// What `GET /job/{id}/events` sends (bodies shortened).
pub(super) const JOB_EVENTS_EXAMPLE: &str = "\
event: running
id: running-1
data: {\"job_id\":\"0b3e6a4e-6f1e-4c43-9a57-8f3f7f7d2a11\",\"prediction\":\"\",\"status\":\"running\",...}

event: completed
id: completed-1
data: {\"job_id\":\"0b3e6a4e-6f1e-4c43-9a57-8f3f7f7d2a11\",\"prediction\":\"tiger cat\",\"status\":\"completed\",...}

";

/// This document: OpenAPI 3.1, JSON.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "docs",
    security(()),
    responses(
        (status = 200, description = "The OpenAPI 3.1 document.", content(("application/json"))),
    ),
)]
pub(super) async fn openapi_json() -> Json<&'static Document> {
    Json(&DOCUMENT)
}

/// Swagger UI: redirects to `/docs/`.
#[utoipa::path(
    get,
    path = "/docs",
    tag = "docs",
    security(()),
    responses((status = 303, description = "To `/docs/`.", headers(("Location" = String, description = "`/docs/`")))),
)]
pub(super) async fn docs_redirect() -> Redirect {
    Redirect::to("/docs/")
}

/// Swagger UI's page, to read this document and try its operations.
///
/// The page and every file it loads are served from here (compiled in): it works with no
/// internet access.
#[utoipa::path(
    get,
    path = "/docs/",
    tag = "docs",
    security(()),
    responses((status = 200, description = "Swagger UI's HTML page.", content_type = "text/html", body = String)),
)]
pub(super) async fn docs_index() -> Response {
    swagger_file("index.html")
}

/// A file of Swagger UI's page (its scripts, stylesheets and icons).
#[utoipa::path(
    get,
    path = "/docs/{file}",
    tag = "docs",
    security(()),
    params(("file" = String, Path, description = "A file of Swagger UI's distribution.", example = "swagger-ui.css")),
    responses(
        (status = 200, description = "The file, with its content type.", content(("*/*"))),
        (status = 404, description = "No such file (`not_found`).", body = ErrorBody),
    ),
)]
pub(super) async fn docs_file(Path(file): Path<String>) -> Response {
    swagger_file(&file)
}

fn swagger_file(file: &str) -> Response {
    match utoipa_swagger_ui::serve(file, Arc::clone(&SWAGGER)) {
        Ok(Some(found)) => {
            let mut response = ([(header::CONTENT_TYPE, found.content_type)], found.bytes.into_owned()).into_response();
            if found.gzpipped {
                response.headers_mut().insert(header::CONTENT_ENCODING, axum::http::HeaderValue::from_static("gzip"));
            }
            response
        }
        Ok(None) => {
            (StatusCode::NOT_FOUND, Json(ErrorBody::new("not_found", format!("no file /docs/{file}")))).into_response()
        }
        Err(err) => super::error::ApiError::Internal(format!("Swagger UI: {err}")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use axum::routing::get;

    use super::*;
    use crate::jobs::JobStatus;

    /// (method, path) pairs, e.g. `("GET", "/job/{id}")`.
    type Routes = BTreeSet<(String, String)>;

    /// Every (method, path) the document describes.
    fn documented(doc: &Document) -> Routes {
        let mut routes = Routes::new();
        for (path, item) in &doc.paths.paths {
            let operations = [
                ("GET", &item.get),
                ("PUT", &item.put),
                ("POST", &item.post),
                ("DELETE", &item.delete),
                ("PATCH", &item.patch),
                ("HEAD", &item.head),
                ("OPTIONS", &item.options),
                ("TRACE", &item.trace),
            ];
            for (method, operation) in operations {
                if operation.is_some() {
                    routes.insert((method.to_owned(), path.clone()));
                }
            }
        }
        routes
    }

    /// Every (method, path) an axum router registers, read from its `Debug` output.
    ///
    /// axum has no public way to list a router's routes, and these tests must see the routes
    /// the router really has, not a list kept beside it: one added with a plain `.route()`
    /// (outside `routes!`, so undocumented) must show up. The `Debug` output has, for the
    /// router's own routes (`path_router`; the fallback's are apart), each route's path by id
    /// (`Node { paths: {RouteId(4): "/health", ..} }`) and each route's methods by id
    /// (`RouteId(4): MethodRouter(.. allow_header: Bytes(b"GET,HEAD") })`). If a new axum
    /// prints something else, this finds nothing (or a route with no methods) and the tests
    /// fail: they cannot pass by reading nothing, since they compare with the document.
    fn registered(router: &axum::Router<crate::api::AppState>) -> Result<Routes, String> {
        let debug = format!("{router:?}");
        let own = debug
            .split_once("path_router: PathRouter {")
            .and_then(|(_, rest)| rest.split_once(", fallback_router:"))
            .map(|(own, _)| own)
            .ok_or("no path_router in the router's Debug output")?;
        let (routes, node) = own.split_once("node: Node { paths: {").ok_or("no Node paths in the Debug output")?;
        let mut paths = std::collections::HashMap::new();
        for entry in node.split("RouteId(").skip(1) {
            let (id, rest) = entry.split_once("): \"").ok_or_else(|| format!("unreadable path entry {entry:?}"))?;
            let (path, _) = rest.split_once('"').ok_or_else(|| format!("unreadable path entry {entry:?}"))?;
            paths.insert(id.to_owned(), path.to_owned());
        }
        let mut registered = Routes::new();
        for entry in routes.split("RouteId(").skip(1) {
            let (id, rest) = entry.split_once(')').ok_or_else(|| format!("unreadable route {entry:?}"))?;
            let path = paths.get(id).ok_or_else(|| format!("route {id} has no path"))?;
            // A service rather than a method router (`route_service`) answers every method.
            let methods = rest
                .split_once("allow_header: Bytes(b\"")
                .and_then(|(_, rest)| rest.split_once('"'))
                .map(|(methods, _)| methods)
                .ok_or_else(|| format!("{path}: no methods (a service for any method?)"))?;
            for method in methods.split(',').filter(|m| *m != "HEAD" || !methods.contains("GET")) {
                registered.insert((method.to_owned(), path.clone()));
            }
        }
        if registered.is_empty() {
            return Err("no routes read from the router's Debug output".into());
        }
        Ok(registered)
    }

    /// What is registered and not documented, and what is documented and not registered.
    fn differences(router: &axum::Router<crate::api::AppState>, doc: &Document) -> (Routes, Routes) {
        let registered = registered(router).unwrap_or_else(|e| panic!("cannot read the router's routes: {e}"));
        let documented = documented(doc);
        (&registered - &documented, &documented - &registered)
    }

    #[test]
    fn the_document_describes_every_route_the_router_serves_and_no_other() {
        let (undocumented, unserved) = differences(&crate::api::served_routes(), &document());
        assert!(undocumented.is_empty(), "served but not in the document (register with `routes!`): {undocumented:?}");
        assert!(unserved.is_empty(), "in the document but not served: {unserved:?}");
    }

    /// The check above is not vacuous: a route added beside `routes!` is caught, and so is a
    /// documented one the router lacks.
    #[test]
    fn a_route_added_without_its_document_entry_is_caught() {
        let router = crate::api::served_routes().route("/undocumented", get(|| async { "" }));
        let (undocumented, unserved) = differences(&router, &document());
        assert_eq!(undocumented, Routes::from([("GET".to_owned(), "/undocumented".to_owned())]));
        assert!(unserved.is_empty());

        let router = crate::api::served_routes().route("/job/{id}/extra", get(|| async { "" }).delete(|| async { "" }));
        let (undocumented, _) = differences(&router, &document());
        assert_eq!(undocumented.len(), 2, "{undocumented:?}");

        let mut doc = document();
        let (_, item) = doc.paths.paths.iter().next().map(|(p, i)| (p.clone(), i.clone())).expect("a path");
        doc.paths.paths.insert("/not-served".to_owned(), item);
        let (_, unserved) = differences(&crate::api::served_routes(), &doc);
        assert!(unserved.iter().any(|(_, path)| path == "/not-served"), "{unserved:?}");
    }

    #[test]
    fn the_document_is_openapi_3_1_for_this_version() {
        let doc = serde_json::to_value(document()).expect("serializable");
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["title"], "Tandem");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        assert!(doc.get("servers").is_none(), "servers are left to the client (relative)");
        assert_eq!(doc["components"]["securitySchemes"][API_KEY]["scheme"], "bearer");
        // Served as built: `/openapi.json` gives the same document.
        assert_eq!(serde_json::to_value(&*DOCUMENT).expect("serializable"), doc);
    }

    #[test]
    fn job_status_is_a_string_enum_of_every_status() {
        let doc = serde_json::to_value(document()).expect("serializable");
        let schema = &doc["components"]["schemas"]["JobStatus"];
        assert_eq!(schema["type"], "string");
        let names: Vec<&str> = JobStatus::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(schema["enum"], serde_json::json!(names));
        assert_eq!(
            doc["components"]["schemas"]["JobResponse"]["properties"]["status"]["$ref"],
            "#/components/schemas/JobStatus"
        );
    }

    #[test]
    fn every_operation_says_what_it_answers_and_who_may_call_it() {
        let doc = serde_json::to_value(document()).expect("serializable");
        let paths = doc["paths"].as_object().expect("paths");
        for (path, item) in paths {
            for (method, operation) in item.as_object().expect("path item") {
                let responses = operation["responses"].as_object().expect("responses");
                assert!(
                    responses.keys().any(|s| s.starts_with('2') || s.starts_with('3')),
                    "{method} {path}: no success"
                );
                // The page and the document itself are open: no key, so no 401.
                let open = super::super::middleware::always_open(path);
                assert_eq!(responses.contains_key("401"), !open, "{method} {path}: 401 for the API key iff not open");
                for (status, response) in responses {
                    if status.starts_with('4') || status.starts_with('5') {
                        let body = &response["content"]["application/json"]["schema"];
                        let schema = body["$ref"].as_str().unwrap_or_default();
                        // Under /v2, the protocol's own shape; its readiness routes answer with
                        // the status alone.
                        let v2 = path.starts_with("/v2");
                        let status_only = v2 && path.ends_with("/ready") && response.get("content").is_none();
                        assert!(
                            schema.ends_with("/ErrorBody")
                                || schema.ends_with("/NotReady")
                                || (v2 && schema.ends_with("/V2ErrorBody"))
                                || status_only,
                            "{method} {path} {status}: the error body is {body}"
                        );
                    }
                }
                // A path parameter has an example, for the route tests to fill the path with.
                for param in operation["parameters"].as_array().into_iter().flatten() {
                    if param["in"] == "path" {
                        assert!(param.get("example").is_some(), "{method} {path}: {} has no example", param["name"]);
                    }
                }
            }
        }
        // The health routes and /metrics may be called without the key.
        for open in ["/health", "/health/live", "/health/ready", "/metrics"] {
            assert_eq!(paths[open]["get"]["security"], serde_json::json!([{}, {API_KEY: []}]), "{open}");
        }
        // The page, the document and Swagger UI need no key at all.
        for open in ["/", "/openapi.json", "/docs", "/docs/", "/docs/{file}"] {
            assert_eq!(paths[open]["get"]["security"], serde_json::json!([{}]), "{open}");
        }
        assert!(paths["/predict"]["post"].get("security").is_none(), "the document's default: the key");
        assert_eq!(doc["security"], serde_json::json!([{API_KEY: []}]));
    }

    #[test]
    fn predict_takes_the_three_forms_and_answers_json_or_events() {
        let doc = serde_json::to_value(document()).expect("serializable");
        let predict = &doc["paths"]["/predict"]["post"];
        let body = predict["requestBody"]["content"].as_object().expect("request bodies");
        for form in ["application/json", "image/*", "multipart/form-data"] {
            assert!(body.contains_key(form), "no {form} body");
        }
        let raw = &doc["components"]["schemas"]["RawImage"];
        assert_eq!((raw["type"].as_str(), raw["format"].as_str()), (Some("string"), Some("binary")));
        let upload = &doc["components"]["schemas"]["ImageUpload"]["properties"]["image"];
        assert_eq!(upload["format"], "binary");
        let ok = predict["responses"]["200"]["content"].as_object().expect("200 content");
        assert!(ok.contains_key("application/json") && ok.contains_key("text/event-stream"));
        let statuses: Vec<&String> = predict["responses"].as_object().expect("responses").keys().collect();
        for status in ["400", "401", "408", "413", "415", "422", "429", "431", "500", "503"] {
            assert!(statuses.iter().any(|s| *s == status), "POST /predict lacks {status}");
        }
    }

    #[tokio::test]
    async fn swagger_ui_is_served_from_the_compiled_in_files() {
        use axum::body::to_bytes;
        for (file, kind) in
            [("index.html", "text/html"), ("swagger-ui-bundle.js", "javascript"), ("swagger-ui.css", "text/css")]
        {
            let response = swagger_file(file);
            assert_eq!(response.status(), StatusCode::OK, "{file}");
            let content_type = response.headers()[header::CONTENT_TYPE].to_str().expect("ascii").to_owned();
            assert!(content_type.contains(kind), "{file}: {content_type}");
        }
        let initializer = to_bytes(swagger_file("swagger-initializer.js").into_body(), 1 << 20).await.expect("body");
        let initializer = String::from_utf8_lossy(&initializer);
        assert!(initializer.contains("\"url\": \"/openapi.json\""), "{initializer}");
        assert!(initializer.contains("\"validatorUrl\": \"none\""), "{initializer}");
        assert_eq!(swagger_file("no-such-file.js").status(), StatusCode::NOT_FOUND);
    }
}
