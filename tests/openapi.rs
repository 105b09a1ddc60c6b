//! The API document against a real `tandem serve`: `/openapi.json` is OpenAPI 3.1 with the
//! paths this service has, each documented operation is really served (a request to it does
//! not reach the router's fallback, nor its 405) and answers one of its documented statuses,
//! nothing else is served (other methods on a documented path are 405, other paths 404), and
//! Swagger UI at `/docs/` loads only from this server.
//!
//! How "nothing else" can fail for real: the unit tests in `src/api/openapi.rs` read the routes
//! the router registers (from axum's own route table) and compare them with the document, so a
//! route added with a plain `.route()` fails there. Here, from outside, every method the
//! document does not give a documented path must be a 405, and paths near the documented ones
//! (and those being added elsewhere: `GET /`, `DELETE /job/{id}`) must be the fallback's 404
//! unless the document has them: such a route, served but undocumented, fails here too.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Tandem, images_dir, job_id, predict, read_json};
use serde_json::Value;

/// Every path `serve` answers: the contract, spelled out (a route added to the router and the
/// document is added here too, on purpose).
const PATHS: &[&str] = &[
    "/",
    "/predict",
    "/job/{id}",
    "/job/{id}/events",
    "/health",
    "/health/live",
    "/health/ready",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/docs/",
    "/docs/{file}",
    "/v2",
    "/v2/health/live",
    "/v2/health/ready",
    "/v2/models/{model}",
    "/v2/models/{model}/versions/{version}",
    "/v2/models/{model}/ready",
    "/v2/models/{model}/versions/{version}/ready",
    "/v2/models/{model}/infer",
    "/v2/models/{model}/versions/{version}/infer",
];

/// Methods probed on each documented path (HEAD comes with GET; OPTIONS is CORS's).
const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH"];

/// Paths no route serves: the fallback answers them.
const UNSERVED: &[&str] = &[
    "/index.html",
    "/job",
    "/jobs",
    "/job/0b3e6a4e-6f1e-4c43-9a57-8f3f7f7d2a11/cancel",
    "/predict/x",
    "/health/x",
    "/metrics/x",
    "/openapi.yaml",
    "/openapi.json/x",
    "/docs/a/b",
    "/api",
    "/v1/predict",
];

/// A client that does not follow redirects (`/docs` is a 303) and reports errors as responses.
fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// Status and body of `method url`, with `body` as an `image/jpeg` body when given.
fn call(method: &str, url: &str, body: Option<&[u8]>) -> (u16, String) {
    let agent = client();
    let request = ureq::http::Request::builder().method(method).uri(url);
    let response = match body {
        Some(bytes) => agent.run(request.header("content-type", "image/jpeg").body(bytes.to_vec()).expect("request")),
        None => agent.run(request.body(()).expect("request")),
    }
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let text = response.into_body().read_to_string().unwrap_or_default();
    (status, text)
}

/// What the router's fallback (no such route) and its 405 (no such method) answer.
fn reached_no_route(status: u16, body: &str) -> bool {
    let code = serde_json::from_str::<Value>(body).ok().and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
    status == 405 || (status == 404 && code.as_deref() == Some("not_found"))
}

/// `path` with each `{name}` replaced: by `values`, else by its parameter's example.
fn fill(path: &str, operation: &Value, values: &[(&str, &str)]) -> String {
    let mut filled = path.to_owned();
    for param in operation["parameters"].as_array().into_iter().flatten().filter(|p| p["in"] == "path") {
        let name = param["name"].as_str().expect("a parameter's name");
        let value = values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| (*v).to_owned())
            .or_else(|| param["example"].as_str().map(str::to_owned))
            .unwrap_or_else(|| panic!("{path}: no value for {{{name}}}"));
        filled = filled.replace(&format!("{{{name}}}"), &value);
    }
    assert!(!filled.contains('{'), "{path}: a parameter left unfilled in {filled}");
    filled
}

#[test]
fn the_served_document_is_openapi_3_1_and_every_route_in_it_is_served_and_no_other() {
    let server = Tandem::serve(&[]);
    let (status, doc) = read_json(client().get(&server.url("/openapi.json")).call().expect("GET /openapi.json"));
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "Tandem");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let paths = doc["paths"].as_object().expect("paths");
    let documented: BTreeSet<&str> = paths.keys().map(String::as_str).collect();
    assert_eq!(documented, PATHS.iter().copied().collect::<BTreeSet<_>>());

    // A real job, for the job routes to answer 200 rather than a (documented) 404.
    let image = std::fs::read(images_dir().join("sample_01.jpg")).expect("sample image");
    let job = job_id(&predict(&server.url("/predict"), "image/jpeg", &image));
    let values = [("id", job.as_str())];

    for (path, item) in paths {
        let item = item.as_object().expect("path item");
        for method in METHODS {
            let operation = item.get(&method.to_ascii_lowercase());
            let url = server.url(&match operation {
                Some(operation) => fill(path, operation, &values),
                None => fill_any(path),
            });
            let body = (*method == "POST").then_some(image.as_slice());
            let (status, text) = call(method, &url, body);
            match operation {
                Some(operation) => {
                    assert!(
                        !reached_no_route(status, &text),
                        "{method} {path} is documented, not served: {status} {text}"
                    );
                    let documented = operation["responses"].as_object().expect("responses");
                    assert!(
                        documented.contains_key(&status.to_string()),
                        "{method} {path} answered {status}, not one of its documented {:?}: {text}",
                        documented.keys().collect::<Vec<_>>()
                    );
                }
                None => assert_eq!(status, 405, "{method} {path} is served but not documented: {text}"),
            }
        }
    }

    for path in UNSERVED {
        for method in METHODS {
            let (status, text) = call(method, &server.url(path), None);
            assert!(
                status == 404 && reached_no_route(status, &text),
                "{method} {path} is served ({status}) but not documented: {text}"
            );
        }
    }
}

/// `path` with its parameters filled with anything (for the methods it does not document).
fn fill_any(path: &str) -> String {
    path.replace("{id}", "0b3e6a4e-6f1e-4c43-9a57-8f3f7f7d2a11")
        .replace("{file}", "swagger-ui.css")
        .replace("{model}", "tandem")
        .replace("{version}", "1")
}

#[test]
fn swagger_ui_loads_everything_from_this_server() {
    let server = Tandem::serve(&[]);
    let (status, _) = call("GET", &server.url("/docs"), None);
    assert_eq!(status, 303);
    let (status, html) = call("GET", &server.url("/docs/"), None);
    assert_eq!(status, 200, "{html}");
    let referenced: Vec<&str> = ["src=\"", "href=\""]
        .iter()
        .flat_map(|attr| html.split(attr).skip(1).filter_map(|rest| rest.split('"').next()))
        .collect();
    assert!(referenced.iter().any(|r| r.ends_with(".js")), "no script in {html}");
    for reference in &referenced {
        assert!(!reference.contains("//") && !reference.starts_with('/'), "{reference} is not on this server's /docs/");
        let (status, _) = call("GET", &server.url(&format!("/docs/{}", reference.trim_start_matches("./"))), None);
        assert_eq!(status, 200, "/docs/{reference}");
    }
    let (_, initializer) = call("GET", &server.url("/docs/swagger-initializer.js"), None);
    assert!(initializer.contains("\"url\": \"/openapi.json\""), "{initializer}");
    assert!(!initializer.contains("http://") && !initializer.contains("https://"), "{initializer}");
}
