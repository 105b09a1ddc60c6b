//! What an HTTP client meets around the engine, against real `tandem serve` processes: every
//! error status in the one JSON shape, `--max-body` as the one body limit, `?top_k`, request
//! ids and the request log, counters that exist from the start, API keys and CORS, and the
//! start-up checks that come before the models load.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    Tandem, agent, as_error, as_job, as_predict, free_port, get_json, images_dir, model_args, post_bytes, read_json,
};
use serde_json::{Value, json};
use tandem::api::types::ErrorDetail;

/// `tandem serve` with its log in a file, so a test can read what it said; `key` is sent while
/// waiting for readiness.
fn serve_logged(extra: &[&str], addr_host: &str, key: Option<&str>) -> (Tandem, PathBuf) {
    let port = free_port();
    let log = std::env::temp_dir().join(format!("tandem-http-{}.log", uuid::Uuid::new_v4().simple()));
    let file = std::fs::File::create(&log).expect("log file");
    let mut args: Vec<String> = vec!["serve".into(), "--addr".into(), format!("{addr_host}:{port}")];
    args.extend(model_args());
    args.extend(extra.iter().map(|s| s.to_string()));
    let child = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(&args)
        .env("TANDEM_LOG", "info,ort=warn")
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("spawn tandem");
    let mut server = Tandem { child, base: format!("http://{addr_host}:{port}") };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("tandem exited before it was ready: {status}");
        }
        let mut request = agent().get(&server.url("/health/ready"));
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        if request.call().is_ok_and(|r| r.status() == 200) {
            return (server, log);
        }
        assert!(Instant::now() < deadline, "not ready within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn multipart(bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = "tandem-http-surface-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.jpg\"\r\n\
         Content-Type: image/jpeg\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// The one error shape with this status and code, and a message; returns the error.
fn assert_error_shape(status: u16, body: &Value, want_status: u16, want_code: &str) -> ErrorDetail {
    assert_eq!(status, want_status, "{body}");
    let error = as_error(body).error;
    assert_eq!(error.code, want_code, "{body}");
    assert!(!error.message.is_empty(), "{body}");
    error
}

/// Sends raw bytes and returns the status line and the whole response.
fn raw_request(base: &str, request: &[u8]) -> String {
    let addr = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    stream.write_all(request).expect("write");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

fn wait_for_log(log: &PathBuf, needle: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.lines().any(&needle) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn errors_limits_top_k_request_ids_and_counters_on_a_default_server() {
    let (server, log) = serve_logged(&[], "127.0.0.1", None);

    // Counters that can exist are there at 0 before anything happened.
    let metrics = agent().get(&server.url("/metrics")).call().expect("metrics").into_body().read_to_string();
    let metrics = metrics.expect("metrics text");
    for series in [
        "tandem_jobs_rejected_total{reason=\"full\"} 0",
        "tandem_jobs_rejected_total{reason=\"unavailable\"} 0",
        "tandem_jobs_enqueued_total 0",
        "tandem_jobs_finished_total{status=\"failed\"} 0",
    ] {
        assert!(metrics.contains(series), "{series} missing from /metrics:\n{metrics}");
    }

    // A 4.4 MB 12 MP photo as multipart, under the default 10 MB --max-body (axum's own 2 MB
    // multipart default must not apply).
    let photo = std::fs::read(images_dir().join("large/photo_4000x3000.jpg")).expect("12 MP photo");
    assert!(photo.len() > 4_000_000);
    let (content_type, body) = multipart(&photo);
    let (status, answer) = post_bytes(&server.url("/predict"), &content_type, &body);
    assert_eq!(status, 200, "{answer}");
    let answer = as_predict(&answer);
    assert!(answer.job_id.is_some(), "{answer:?}");

    // Rounded for reading: milliseconds to 0.01, the top-level score to 4 decimals.
    let ms = answer.sync.inference_ms;
    assert!(((ms * 100.0).round() - ms * 100.0).abs() < 1e-6, "{ms}");
    let score = answer.sync.score;
    assert!(((score * 1e4).round() - score * 1e4).abs() < 1e-6, "{score}");

    // ?top_k: fewer classes, bounded; an unknown parameter is refused, not ignored.
    let sample = std::fs::read(images_dir().join("sample_01.jpg")).expect("photo");
    let (status, one) = post_bytes(&server.url("/predict?top_k=1"), "image/jpeg", &sample);
    assert_eq!(status, 200, "{one}");
    let one = as_predict(&one);
    assert_eq!(one.sync.top_k.len(), 1, "{one:?}");
    let (status, body) = post_bytes(&server.url("/predict?top_k=6"), "image/jpeg", &sample);
    assert_error_shape(status, &body, 400, "invalid_query");
    let (status, body) = post_bytes(&server.url("/predict?topk=1"), "image/jpeg", &sample);
    assert_error_shape(status, &body, 400, "invalid_query");
    let job = format!("/job/{}?top_k=2", common::job_id(&one));
    let (status, body) = get_json(&server.url(&job));
    assert_eq!(status, 200, "{body}");
    assert_eq!(as_job(&body).sync.top_k.len(), 2, "{body}");

    // Every status the router produces is the one JSON shape; 405 keeps `Allow`.
    let response = agent().post(&server.url("/health")).send(&b""[..]).expect("POST /health");
    let allow = response.headers().get("allow").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (status, body) = read_json(response);
    let error = assert_error_shape(status, &body, 405, "method_not_allowed");
    assert!(allow.is_some_and(|a| a.contains("GET")), "Allow header kept");
    assert!(error.message.contains("allowed: GET"), "{body}");
    let (status, body) = read_json(agent().get(&server.url("/predict")).call().expect("GET /predict"));
    assert_error_shape(status, &body, 405, "method_not_allowed");
    let (status, body) = get_json(&server.url("/no/such/route"));
    assert_error_shape(status, &body, 404, "not_found");
    let (status, body) = post_bytes(&server.url("/predict"), "text/plain", b"hello");
    assert_error_shape(status, &body, 415, "unsupported_media_type");
    let mut request = agent().get(&server.url("/health"));
    for i in 0..150 {
        request = request.header(format!("x-filler-{i}"), "1");
    }
    let (status, body) = read_json(request.call().expect("many headers"));
    assert_error_shape(status, &body, 431, "headers_too_large");
    // A method no route knows: JSON too, and counted under `other`, not its own label.
    let response = raw_request(&server.base, b"FOO1 /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    assert!(response.starts_with("HTTP/1.1 405"), "{response}");
    assert!(response.contains("\"method_not_allowed\""), "{response}");
    let metrics = agent().get(&server.url("/metrics")).call().expect("metrics").into_body().read_to_string();
    let metrics = metrics.expect("metrics text");
    assert!(!metrics.contains("FOO1") && metrics.contains("method=\"other\""), "{metrics}");

    // Each response carries a request id (the client's own, when it sends a sane one), and
    // the log has one line per request with it.
    let response = agent().get(&server.url("/job/not-a-uuid")).header("x-request-id", "client-id-42").call();
    let response = response.expect("GET job");
    assert_eq!(response.headers().get("x-request-id").and_then(|v| v.to_str().ok()), Some("client-id-42"));
    let response = agent().get(&server.url("/health")).call().expect("health");
    let generated = response.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert!(generated.is_some_and(|id| id.len() == 32), "a fresh id when the client sends none");
    let text = wait_for_log(&log, |line| line.contains("client-id-42"));
    let line =
        text.lines().find(|line| line.contains("client-id-42")).unwrap_or_else(|| panic!("no log line:\n{text}"));
    for part in ["GET", "/job/{id}", "status=400", "ms="] {
        assert!(line.contains(part), "{part} missing from the request log line: {line}");
    }
    let _ = std::fs::remove_file(log);
}

#[test]
fn over_the_body_limit_in_multipart_says_the_configured_limit() {
    let server = Tandem::serve(&["--max-body", "1000000"]);
    let photo = std::fs::read(images_dir().join("large/photo_4000x3000.jpg")).expect("12 MP photo");
    let (content_type, body) = multipart(&photo);
    let (status, answer) = post_bytes(&server.url("/predict"), &content_type, &body);
    let error = assert_error_shape(status, &answer, 413, "body_too_large");
    assert!(error.message.contains("1000000"), "{answer}");
}

#[test]
fn api_keys_cors_and_the_timeout_as_configured() {
    let server = Tandem::serve(&[
        "--api-key",
        "k1,k2",
        "--cors-origin",
        "https://app.example.com",
        "--request-timeout",
        "0.001",
    ]);
    let sample = std::fs::read(images_dir().join("sample_01.jpg")).expect("photo");
    let predict = server.url("/predict");

    // No key, a wrong key: 401 with the JSON shape and WWW-Authenticate.
    let response = agent().post(&predict).header("content-type", "image/jpeg").send(&sample[..]).expect("POST");
    assert_eq!(response.headers().get("www-authenticate").and_then(|v| v.to_str().ok()), Some("Bearer"));
    let (status, body) = read_json(response);
    assert_error_shape(status, &body, 401, "unauthorized");
    let wrong = agent().post(&predict).header("authorization", "Bearer k3").header("content-type", "image/jpeg");
    let (status, body) = read_json(wrong.send(&sample[..]).expect("POST"));
    assert_error_shape(status, &body, 401, "unauthorized");
    // Either key passes; the request then meets the 1 ms timeout, reported as configured.
    for key in ["k1", "k2"] {
        let with_key = agent().post(&predict).header("authorization", format!("Bearer {key}"));
        let (status, body) = read_json(with_key.header("content-type", "image/jpeg").send(&sample[..]).expect("POST"));
        let error = assert_error_shape(status, &body, 503, "timeout");
        assert!(error.message.contains("0.001 s"), "{body}");
    }
    // Refused before its body is used, a large upload is still answered, not reset: without
    // a key (401), and with a bad query parameter (400).
    let photo = std::fs::read(images_dir().join("large/photo_4000x3000.jpg")).expect("12 MP photo");
    let response = agent().post(&predict).header("content-type", "image/jpeg").send(&photo[..]);
    assert_eq!(response.expect("a 401, not a broken pipe").status(), 401);
    let with_key = agent().post(&server.url("/predict?nope=1")).header("authorization", "Bearer k1");
    let response = with_key.header("content-type", "image/jpeg").send(&photo[..]);
    assert_eq!(response.expect("a 400, not a broken pipe").status(), 400);
    // Health and metrics stay open by default.
    assert_eq!(get_json(&server.url("/health")).0, 200);
    assert_eq!(agent().get(&server.url("/metrics")).call().expect("metrics").status(), 200);

    // CORS: the preflight is answered (without a key) for the allowed origin only.
    let preflight = |origin: &str| {
        agent()
            .options(&predict)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type")
            .call()
            .expect("OPTIONS")
    };
    let allowed = preflight("https://app.example.com");
    assert_eq!(allowed.status(), 200);
    let header = |r: &ureq::http::Response<ureq::Body>, name: &str| {
        r.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
    };
    assert_eq!(header(&allowed, "access-control-allow-origin").as_deref(), Some("https://app.example.com"));
    assert!(header(&allowed, "access-control-allow-headers").is_some_and(|h| h.contains("authorization")));
    let other = preflight("https://evil.example.net");
    assert_eq!(header(&other, "access-control-allow-origin"), None);
    // And a real call from the allowed origin carries the header, on errors too.
    let response = agent().get(&server.url("/health")).header("origin", "https://app.example.com").call();
    let response = response.expect("GET with origin");
    assert_eq!(header(&response, "access-control-allow-origin").as_deref(), Some("https://app.example.com"));
}

#[test]
fn a_host_name_address_json_logs_and_protected_health() {
    let flags = ["--api-key", "s3cret", "--protect-health", "--protect-metrics", "--log-format", "json"];
    let (server, log) = serve_logged(&flags, "localhost", Some("s3cret"));
    let (status, body) = get_json(&server.url("/health"));
    assert_error_shape(status, &body, 401, "unauthorized");
    let response = agent().get(&server.url("/metrics")).call().expect("metrics");
    assert_eq!(response.status(), 401);
    let authed = agent().get(&server.url("/health")).header("authorization", "Bearer s3cret").call();
    assert_eq!(read_json(authed.expect("health")).1, json!({"status": "healthy"}));
    // Probes are logged at debug; a refused prediction at info, as one JSON object.
    let (status, _) = post_bytes(&server.url("/predict"), "image/jpeg", b"x");
    assert_eq!(status, 401);
    let text = wait_for_log(&log, |line| line.contains("\"status\":401"));
    let line = text.lines().find(|l| l.contains("\"status\":401")).unwrap_or_else(|| panic!("no JSON line:\n{text}"));
    let value: Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
    assert_eq!((value["route"].as_str(), value["method"].as_str()), (Some("/predict"), Some("POST")), "{value}");
    assert!(value["request_id"].is_string() && value["ms"].is_number(), "{value}");
    let _ = std::fs::remove_file(log);
}

/// Configuration is checked, and the port taken, before any model loads: a model directory
/// that does not exist is never reached.
#[test]
fn start_up_checks_come_before_the_models_load() {
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_tandem")).args(args).output().expect("run tandem");
        (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
    };
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let (ok, stderr) = run(&["serve", "--model-dir", "/nonexistent", "--addr", &addr]);
    assert!(!ok);
    assert!(stderr.contains(&format!("cannot listen on {addr}")), "{stderr}");
    assert!(!stderr.contains("nonexistent") && !stderr.contains("worker stopped"), "{stderr}");

    let (ok, stderr) = run(&["serve", "--model-dir", "/nonexistent", "--redis-url", "http://127.0.0.1:6379/"]);
    assert!(!ok);
    assert!(stderr.contains("http://127.0.0.1:6379/") && stderr.contains("redis://"), "{stderr}");
    assert!(!stderr.contains("nonexistent"), "{stderr}");
    // Sentinel URLs are checked as well; a password never reaches the message.
    let (ok, stderr) =
        run(&["serve", "--model-dir", "/nonexistent", "--redis-url", "redis+sentinel://:s3c/ret@s1:26379"]);
    assert!(!ok && stderr.contains("SERVICE") && stderr.contains("redis+sentinel://***@s1:26379"), "{stderr}");
    assert!(!stderr.contains("s3c") && !stderr.contains("ret@") && !stderr.contains("nonexistent"), "{stderr}");

    let (ok, stderr) = run(&["serve", "--model-dir", "/nonexistent", "--cors-origin", "not an origin"]);
    assert!(!ok && stderr.contains("--cors-origin"), "{stderr}");

    // A blank key would silently mean "no authentication": refused.
    let (ok, stderr) = run(&["serve", "--model-dir", "/nonexistent", "--api-key", " "]);
    assert!(!ok && stderr.contains("empty key"), "{stderr}");
    // Durations are finite.
    let (ok, stderr) = run(&["serve", "--model-dir", "/nonexistent", "--body-timeout", "inf"]);
    assert!(!ok && stderr.contains("--body-timeout"), "{stderr}");
}
