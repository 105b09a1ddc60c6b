//! What `serve` and `tandem worker` say about their queue: readiness with the live workers,
//! `tandem_workers_live`, and one log line per Redis outage. Real processes, real Redis servers.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{RedisServer, Tandem, free_port, get_json, images_dir, post_bytes, unique_prefix};
use serde_json::Value;

fn photo() -> Vec<u8> {
    std::fs::read(images_dir().join("sample_03.jpg")).expect("photo")
}

fn metrics(tandem: &Tandem) -> String {
    let response = common::agent().get(&tandem.url("/metrics")).call().expect("GET /metrics");
    response.into_body().read_to_string().expect("metrics body")
}

/// Polls `/health/ready` until `accept` holds for its (status, body), or panics after `timeout`.
fn wait_ready_until(tandem: &Tandem, timeout: Duration, what: &str, accept: impl Fn(u16, &Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, body) = get_json(&tandem.url("/health/ready"));
        if accept(status, &body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}; last {status} {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn live(body: &Value) -> Option<u64> {
    body["workers"]["live"].as_u64()
}

fn log_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn readiness_counts_live_workers_and_a_worker_has_its_own() {
    let mut redis = RedisServer::start(false);
    let url = redis.url();
    let prefix = unique_prefix("live-workers");
    let args = ["--redis-url", &url, "--redis-prefix", &prefix];
    let server = Tandem::serve(&args);

    // No worker: still ready (fast answers work), but it says jobs will wait.
    let (status, body) = get_json(&server.url("/health/ready"));
    assert_eq!((status, live(&body)), (200, Some(0)), "{body}");
    assert!(body["warning"].as_str().is_some_and(|w| w.contains("no live worker")), "{body}");
    assert!(metrics(&server).contains("tandem_workers_live 0"), "gauge at 0 without workers");

    let mut worker = Tandem::worker_http(&args);
    let (status, body) = get_json(&worker.url("/health/ready"));
    assert_eq!(
        (status, body["status"].as_str(), body["queue"].as_str()),
        (200, Some("ready"), Some("redis")),
        "{body}"
    );
    let body = wait_ready_until(&server, Duration::from_secs(5), "the worker counted", |s, b| {
        s == 200 && live(b).is_some_and(|n| n >= 1)
    });
    assert!(body.get("warning").is_none(), "no warning with a live worker: {body}");
    assert!(metrics(&server).contains("tandem_workers_live 1"));

    // The worker's own readiness follows its Redis.
    redis.kill();
    let (status, body) = get_json(&worker.url("/health/ready"));
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("queue_unavailable")), "{body}");
    redis.restart();
    wait_ready_until(&worker, Duration::from_secs(10), "worker ready again", |s, _| s == 200);
    // Redis came back empty: the heartbeat puts the worker back by itself.
    wait_ready_until(&server, Duration::from_secs(10), "the worker counted again", |s, b| {
        s == 200 && live(b) == Some(1)
    });

    // A worker killed outright drops out once its heartbeat runs out (6 s at the default
    // --reclaim-after), with no clean goodbye.
    let killed = Instant::now();
    let _ = worker.child.kill();
    let _ = worker.child.wait();
    let body = wait_ready_until(&server, Duration::from_secs(10), "the killed worker gone", |s, b| {
        s == 200 && live(b) == Some(0)
    });
    assert!(killed.elapsed() >= Duration::from_secs(2), "its last heartbeat still counted for a while");
    assert!(body["warning"].is_string(), "{body}");
}

#[test]
fn a_worker_that_stops_cleanly_leaves_at_once() {
    let prefix = unique_prefix("leave");
    let url = common::redis_url();
    let args = ["--redis-url", &url, "--redis-prefix", &prefix];
    let server = Tandem::serve(&args);
    let mut worker = Tandem::worker_http(&args);
    wait_ready_until(&server, Duration::from_secs(5), "the worker counted", |s, b| s == 200 && live(b) == Some(1));
    assert_eq!(worker.terminate(Duration::from_secs(20)), Some(0));
    let (status, body) = get_json(&server.url("/health/ready"));
    assert_eq!((status, live(&body)), (200, Some(0)), "gone without waiting for its heartbeat to run out: {body}");
}

#[test]
fn a_redis_outage_is_logged_once_when_it_starts_and_once_when_it_ends() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let prefix = unique_prefix("outage");
    let log = std::env::temp_dir().join(format!("{prefix}.log"));
    let server = Tandem::serve_with_log(&["--redis-url", &url, "--redis-prefix", &prefix], &log);
    let down = "Redis does not answer";

    // Said at start-up, before any request...
    assert_eq!(log_text(&log).matches(down).count(), 1, "{}", log_text(&log));
    // ...and not again for each request that cannot queue its job.
    for _ in 0..5 {
        let (status, body) = post_bytes(&server.url("/predict"), "image/jpeg", &photo());
        assert_eq!((status, body["job_id"].is_null()), (200, true), "{body}");
    }
    let (status, _) = get_json(&server.url("/health/ready"));
    assert_eq!(status, 503);
    let text = log_text(&log);
    assert_eq!(text.matches(down).count(), 1, "one line per outage:\n{text}");
    assert!(text.contains("127.0.0.1:") && !text.contains("reachable again"), "{text}");

    let _redis = RedisServer::start_on(port, false);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = post_bytes(&server.url("/predict"), "image/jpeg", &photo());
        assert_eq!(status, 200, "{body}");
        if body["job_id"].is_string() {
            break;
        }
        assert!(Instant::now() < deadline, "jobs not queued again once Redis is up: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = log_text(&log);
    assert_eq!(text.matches("Redis reachable again").count(), 1, "{text}");
    assert_eq!(text.matches(down).count(), 1, "{text}");
    drop(server);
    let _ = std::fs::remove_file(&log);
}
