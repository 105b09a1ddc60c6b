//! `tandem serve` and `tandem worker` as real processes, over real HTTP, with a real Redis.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{
    Tandem, as_error, as_predict, base64, get_json, images_dir, job_id, post_bytes, post_json, predict, redis_url,
    unique_prefix, wait_for_job, wait_for_job_done,
};
use serde_json::{Value, json};
use tandem::api::types::{Health, Ready};
use tandem::jobs::JobStatus;

/// Golden top-1 per photo for one model.
fn golden_top1(model: &str) -> HashMap<String, usize> {
    common::golden().into_iter().filter(|g| g.model == model).map(|g| (g.file, g.top1)).collect()
}

fn photo(file: &str) -> Vec<u8> {
    std::fs::read(images_dir().join(file)).expect("photo")
}

fn multipart(field: &str, bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = "tandem-test-boundary-7MA4YWxk";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"x.jpg\"\r\n\
         Content-Type: image/jpeg\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Posts a photo in one of the three accepted forms (JSON base64, raw body, multipart).
fn post_photo(base: &str, bytes: &[u8], form: usize) -> (u16, Value) {
    let url = format!("{base}/predict");
    match form % 3 {
        0 => post_json(&url, &json!({"image_data": base64(bytes)})),
        1 => post_bytes(&url, "image/jpeg", bytes),
        _ => {
            let (content_type, body) = multipart("image", bytes);
            post_bytes(&url, &content_type, &body)
        }
    }
}

/// All 20 photos: sync answers match the fast model's golden top-1 and every job completes
/// with the accurate model's golden top-1.
fn check_both_tiers(server: &Tandem) {
    let fast = golden_top1("mobilenet_v2.onnx");
    let accurate = golden_top1("efficientnet_lite2.onnx");
    let mut files: Vec<&String> = fast.keys().collect();
    files.sort();
    assert_eq!(files.len(), 20);
    let mut jobs = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let (status, body) = post_photo(&server.base, &photo(file), i);
        assert_eq!(status, 200, "{file}: {body}");
        let answer = as_predict(&body);
        assert_eq!(answer.sync.class_index, fast[*file], "{file} fast top-1: {body}");
        assert_eq!(answer.result_sync, answer.sync.label);
        assert_eq!(answer.sync.model, "mobilenet_v2.onnx");
        assert_eq!(answer.sync.top_k.len(), 5);
        let id = answer.job_id.unwrap_or_else(|| panic!("{file}: no job id: {body}")).to_string();
        assert_eq!(answer.status_url, Some(format!("/job/{id}")));
        jobs.push((file.to_string(), id, answer.sync.class_index));
    }
    for (file, id, sync_class) in jobs {
        let raw = wait_for_job(&server.base, &id, Duration::from_secs(120));
        let job = common::as_job(&raw);
        assert_eq!(job.status, JobStatus::Completed, "{file}: {raw}");
        let result = job.result.as_ref().unwrap_or_else(|| panic!("{file}: no result: {raw}"));
        assert_eq!(result.class_index, accurate[&file], "{file} accurate top-1: {raw}");
        assert_eq!(result.model, "efficientnet_lite2.onnx");
        assert_eq!(job.prediction, result.label);
        assert_eq!(job.sync.class_index, sync_class);
        assert_eq!(job.agrees_with_sync, Some(sync_class == result.class_index));
        // The types say what each field is; that `inference_ms` is written as a float is the
        // JSON's own detail.
        assert!(job.completed_at.is_some() && !job.created_at.is_empty(), "{raw}");
        assert!(job.queue_ms.is_some() && raw["inference_ms"].is_f64(), "{raw}");
    }
}

#[test]
fn embedded_mode_answers_now_and_refines_every_job() {
    let server = Tandem::serve(&[]);
    let (status, ready) = get_json(&server.url("/health/ready"));
    let ready: Ready = common::parse(&ready);
    assert_eq!((status, ready.queue.as_str()), (200, "embedded"));
    // The embedded worker is the one live worker.
    assert_eq!((ready.workers.live, &ready.warning), (1, &None), "{ready:?}");
    // Wait metrics exist (at 0) before the first job.
    let metrics = common::agent().get(&server.url("/metrics")).call().expect("GET /metrics");
    let text = metrics.into_body().read_to_string().expect("body");
    for needle in [
        "tandem_job_queue_wait_seconds_count 0",
        r#"tandem_inference_wait_seconds_count{tier="accurate"} 0"#,
        "tandem_workers_live 1",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    check_both_tiers(&server);
}

#[test]
fn redis_mode_answers_now_and_refines_every_job() {
    let prefix = unique_prefix("modes");
    let redis = ["--redis-url", &redis_url(), "--redis-prefix", &prefix];
    let server = Tandem::serve(&redis);
    let (status, ready) = get_json(&server.url("/health/ready"));
    assert_eq!((status, common::parse::<Ready>(&ready).queue.as_str()), (200, "redis"));
    let _worker = Tandem::worker(&redis);
    check_both_tiers(&server);
}

#[test]
fn two_workers_complete_200_jobs_exactly_once() {
    let prefix = unique_prefix("two-workers");
    let redis = ["--redis-url", &redis_url(), "--redis-prefix", &prefix];
    let server = Tandem::serve(&redis);
    let workers = [Tandem::worker(&[&redis[..], &["--concurrency", "2"]].concat()), Tandem::worker(&redis)];
    let photos: Vec<Vec<u8>> = (1..=20).map(|i| photo(&format!("sample_{i:02}.jpg"))).collect();
    let mut ids = Vec::new();
    for i in 0..200 {
        ids.push(job_id(&predict(&server.url("/predict"), "image/jpeg", &photos[i % photos.len()])));
    }
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), 200, "job ids are unique");
    for id in &ids {
        let job = wait_for_job_done(&server.base, id, Duration::from_secs(300));
        assert_eq!(job.status, JobStatus::Completed, "{job:?}");
        // One attempt each: no job was delivered twice.
        assert_eq!(job.attempts, 1, "{job:?}");
    }
    drop(workers);
}

#[test]
fn bad_requests_get_json_errors_and_the_server_keeps_serving() {
    let server = Tandem::serve(&["--max-body", "2000000"]);
    let url = server.url("/predict");
    let bad = images_dir().join("bad_inputs");
    let cases: Vec<(&str, (u16, Value), u16, &str)> = vec![
        ("empty.jpg", post_bytes(&url, "image/jpeg", &[]), 400, "empty_image"),
        (
            "not_an_image.png",
            post_bytes(&url, "image/png", &std::fs::read(bad.join("not_an_image.png")).expect("file")),
            400,
            "not_an_image",
        ),
        (
            "truncated.jpg",
            post_json(&url, &json!({"image_data": base64(&std::fs::read(bad.join("truncated.jpg")).expect("file"))})),
            400,
            "truncated_image",
        ),
        ("bad base64", post_json(&url, &json!({"image_data": "this is %% not base64"})), 400, "invalid_base64"),
        ("no image_data", post_json(&url, &json!({"image": "aGk="})), 422, "missing_field"),
        ("image_data not a string", post_json(&url, &json!({"image_data": 42})), 422, "invalid_field"),
        ("broken JSON", post_bytes(&url, "application/json", b"{\"image_data\": "), 400, "invalid_json"),
        ("wrong content type", post_bytes(&url, "text/plain", b"hello"), 415, "unsupported_media_type"),
        (
            "multipart without image",
            {
                let (content_type, body) = multipart("picture", b"abc");
                post_bytes(&url, &content_type, &body)
            },
            422,
            "missing_field",
        ),
        ("body over --max-body", post_bytes(&url, "image/jpeg", &vec![0u8; 2_500_000]), 413, "body_too_large"),
    ];
    for (name, (status, body), want_status, want_code) in cases {
        assert_eq!(status, want_status, "{name}: {body}");
        let error = as_error(&body).error;
        assert_eq!(error.code, want_code, "{name}: {body}");
        assert!(!error.message.is_empty(), "{name}: {body}");
    }
    let (status, body) = post_photo(&server.base, &photo("sample_01.jpg"), 1);
    assert_eq!(status, 200, "still serving after bad input: {body}");
}

/// Sends `head` (request line and headers) and then `body` on one connection, and returns what
/// the server answered: the client writes all of its body before reading, as most do.
fn raw_exchange(stream: &mut TcpStream, head: &str, body: &[u8]) -> std::io::Result<String> {
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    read_response(stream)
}

/// One HTTP/1.1 response with a Content-Length body, as text.
fn read_response(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        received.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&received);
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .and_then(|v| v.parse::<usize>().ok());
            if length.is_some_and(|len| rest.len() >= len) {
                break;
            }
        }
    }
    Ok(String::from_utf8_lossy(&received).into_owned())
}

/// An over-long body gets its 413 even when the client sends all of it before reading (the
/// server drains it instead of closing on unread data, which resets the connection), the
/// connection stays usable, and a client that asks for `100 Continue` is refused before sending.
#[test]
fn over_long_bodies_get_their_413_not_a_reset() {
    let server = Tandem::serve(&["--max-body", "200000"]);
    let addr = server.base.trim_start_matches("http://").to_owned();
    let body = vec![0u8; 16 << 20];
    let head = format!(
        "POST /predict HTTP/1.1\r\nhost: {addr}\r\ncontent-type: image/jpeg\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    for round in 0..20 {
        let mut stream = TcpStream::connect(&addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        let answer = raw_exchange(&mut stream, &head, &body).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(answer.starts_with("HTTP/1.1 413"), "round {round}: {answer}");
        assert!(answer.contains("body_too_large"), "round {round}: {answer}");
        if round == 0 {
            let health = format!("GET /health HTTP/1.1\r\nhost: {addr}\r\n\r\n");
            let answer = raw_exchange(&mut stream, &health, &[]).expect("GET on the same connection");
            assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("healthy"), "{answer}");
        }
    }
    let mut stream = TcpStream::connect(&addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let waiting = head.replace("\r\n\r\n", "\r\nexpect: 100-continue\r\n\r\n");
    let answer = raw_exchange(&mut stream, &waiting, &[]).expect("answer without a body");
    assert!(answer.starts_with("HTTP/1.1 413") && answer.contains("body_too_large"), "{answer}");
}

#[test]
fn unknown_and_malformed_job_ids() {
    let server = Tandem::serve(&[]);
    let (status, body) = get_json(&server.url(&format!("/job/{}", uuid::Uuid::new_v4())));
    assert_eq!((status, as_error(&body).error.code.as_str()), (404, "job_not_found"), "{body}");
    let (status, body) = get_json(&server.url("/job/not-a-uuid"));
    assert_eq!((status, as_error(&body).error.code.as_str()), (400, "invalid_job_id"), "{body}");
    let (status, body) = get_json(&server.url("/health"));
    assert_eq!((status, &body), (200, &json!({"status": "healthy"})));
    assert_eq!(common::parse::<Health>(&body), Health::new("healthy"));
    let (status, _) = get_json(&server.url("/health/live"));
    assert_eq!(status, 200);
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let prefix = unique_prefix("sigterm");
    let redis = ["--redis-url", &redis_url(), "--redis-prefix", &prefix];
    let mut server = Tandem::serve(&redis);
    let mut worker = Tandem::worker(&redis);
    let (status, body) = post_photo(&server.base, &photo("sample_02.jpg"), 1);
    assert_eq!(status, 200, "{body}");
    let id = job_id(&as_predict(&body));
    wait_for_job(&server.base, &id, Duration::from_secs(60));
    assert_eq!(worker.terminate(Duration::from_secs(20)), Some(0), "worker exits 0 on SIGTERM");
    assert_eq!(server.terminate(Duration::from_secs(20)), Some(0), "serve exits 0 on SIGTERM");
}

#[test]
fn e2e_script_checks_a_running_deployment() {
    let server = Tandem::serve(&[]);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/e2e.sh");
    let output = std::process::Command::new("bash")
        .arg(script)
        .arg(&server.base)
        .arg(images_dir().join("sample_04.jpg"))
        .output()
        .expect("run scripts/e2e.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "e2e.sh failed: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("fast:    ambulance") && stdout.contains("accurate: ambulance"), "{stdout}");

    // A refused image: the server's own JSON error is shown, not just curl's status line.
    let output = std::process::Command::new("bash")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/e2e.sh"))
        .arg(&server.base)
        .arg(images_dir().join("bad_inputs/not_an_image.png"))
        .output()
        .expect("run scripts/e2e.sh");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a refused image fails the check");
    assert!(stderr.contains("HTTP 400") && stderr.contains(r#""code":"#), "{stderr}");
}

#[test]
fn metrics_follow_prometheus_conventions_and_count_what_happened() {
    let server = Tandem::serve(&[]);
    let (status, body) = post_photo(&server.base, &photo("sample_05.jpg"), 1);
    assert_eq!(status, 200, "{body}");
    wait_for_job(&server.base, &job_id(&as_predict(&body)), Duration::from_secs(60));
    let _ = get_json(&server.url("/job/not-a-uuid"));
    let response = common::agent().get(&server.url("/metrics")).call().expect("GET /metrics");
    assert_eq!(response.status(), 200);
    let text = response.into_body().read_to_string().expect("body");
    for needle in [
        r#"tandem_http_requests_total{route="/predict",method="POST",status="200"} 1"#,
        r#"tandem_http_requests_total{route="/job/{id}",method="GET",status="400"} 1"#,
        "tandem_http_request_duration_seconds_bucket{",
        r#"tandem_inference_duration_seconds_count{tier="fast",model="mobilenet_v2.onnx"}"#,
        r#"tandem_inference_duration_seconds_count{tier="accurate",model="efficientnet_lite2.onnx"}"#,
        r#"tandem_inference_batch_size_bucket{tier="fast""#,
        r#"tandem_queue_depth{state="waiting"} 0"#,
        "tandem_jobs_enqueued_total 1",
        r#"tandem_jobs_finished_total{status="completed"} 1"#,
        "tandem_job_attempts_total 1",
        "tandem_job_queue_wait_seconds_count 1",
        r#"tandem_inference_wait_seconds_count{tier="accurate"} 1"#,
        r#"tandem_tier_agreement_total{agree="true"} 1"#,
        "# TYPE tandem_job_duration_seconds histogram",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

/// `--drain-timeout` bounds a worker's stop: told to stop while its job waits for a batch that
/// will not fill for 20 s, it exits 0 within the drain time, and the job is left in Redis for
/// another worker to take over.
#[test]
fn a_worker_stops_within_its_drain_timeout_and_leaves_its_job_to_another() {
    let prefix = unique_prefix("drain");
    let url = redis_url();
    let redis = ["--redis-url", url.as_str(), "--redis-prefix", &prefix, "--reclaim-after", "1"];
    let server = Tandem::serve(&redis);
    let log = std::env::temp_dir().join(format!("{prefix}.log"));
    let stuck = ["--accurate-max-batch", "8", "--accurate-max-batch-delay", "20000", "--drain-timeout", "1"];
    let mut worker = Tandem::worker_with_log(&[&redis[..], &stuck[..]].concat(), &log);
    let (status, body) = post_photo(&server.base, &photo("sample_03.jpg"), 1);
    assert_eq!(status, 200, "{body}");
    let id = job_id(&as_predict(&body));
    let deadline = Instant::now() + Duration::from_secs(60);
    while get_json(&server.url(&format!("/job/{id}"))).1["status"] != "running" {
        assert!(Instant::now() < deadline, "the job never started: {}", get_json(&server.url(&format!("/job/{id}"))).1);
        std::thread::sleep(Duration::from_millis(50));
    }
    let stopping = Instant::now();
    assert_eq!(worker.terminate(Duration::from_secs(15)), Some(0), "the worker exits 0 on SIGTERM");
    let stopped_in = stopping.elapsed();
    assert!(stopped_in < Duration::from_secs(5), "stopped in {stopped_in:?}, past --drain-timeout 1");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("--drain-timeout"), "the worker says it left jobs behind: {text}");
    let _taker = Tandem::worker(&redis);
    let job = wait_for_job(&server.base, &id, Duration::from_secs(60));
    assert_eq!(job["status"], "completed", "{job}");
}
