//! What `serve` and `tandem worker` say about their queue: readiness with the live workers,
//! `tandem_workers_live`, and one log line per Redis outage. Real processes, real Redis servers.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{RedisServer, Tandem, as_predict, free_port, get_json, images_dir, parse, post_bytes, unique_prefix};
use serde_json::Value;
use tandem::api::types::{NotReady, Ready};

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

/// Polls `/metrics` until it has `line`, or panics after `timeout`.
fn wait_metric(tandem: &Tandem, timeout: Duration, line: &str) {
    let deadline = Instant::now() + timeout;
    loop {
        let text = metrics(tandem);
        if text.lines().any(|l| l == line) {
            return;
        }
        assert!(Instant::now() < deadline, "no `{line}` within {timeout:?}:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Redis' clock (ms) and the highest score in the live-workers set: until when the latest
/// heartbeat counts.
fn counted_until(url: &str, prefix: &str) -> (u64, Option<u64>) {
    let mut conn = redis::Client::open(url).expect("url").get_connection().expect("connect");
    let ((secs, micros), top): ((u64, u64), Vec<(String, f64)>) = redis::pipe()
        .cmd("TIME")
        .cmd("ZRANGE")
        .arg(format!("{prefix}:workers"))
        .arg(-1)
        .arg(-1)
        .arg("WITHSCORES")
        .query(&mut conn)
        .expect("TIME, ZRANGE");
    (secs * 1000 + micros / 1000, top.first().map(|(_, score)| *score as u64))
}

/// Not about priority: the test workers compete for the CPU on equal terms.
const NORMAL: [&str; 2] = ["--accurate-priority", "normal"];

/// The live workers a ready body counts; `None` for any other body (a 503's).
fn live(body: &Value) -> Option<u64> {
    serde_json::from_value::<Ready>(body.clone()).ok().map(|ready| ready.workers.live)
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
    assert!(parse::<Ready>(&body).warning.is_some_and(|w| w.contains("no live worker")), "{body}");
    assert!(metrics(&server).contains("tandem_workers_live 0"), "gauge at 0 without workers");

    let mut worker = Tandem::worker_http(&[&args[..], &NORMAL].concat());
    let (status, body) = get_json(&worker.url("/health/ready"));
    assert_eq!(status, 200, "{body}");
    let ready: Ready = parse(&body);
    assert_eq!((ready.status.as_str(), ready.queue.as_str()), ("ready", "redis"), "{body}");
    let body = wait_ready_until(&server, Duration::from_secs(5), "the worker counted", |s, b| {
        s == 200 && live(b).is_some_and(|n| n >= 1)
    });
    assert!(parse::<Ready>(&body).warning.is_none(), "no warning with a live worker: {body}");
    wait_metric(&server, Duration::from_secs(5), "tandem_workers_live 1");

    // The worker's own readiness follows its Redis.
    redis.kill();
    let (status, body) = get_json(&worker.url("/health/ready"));
    assert_eq!(status, 503, "{body}");
    let not_ready: NotReady = parse(&body);
    assert_eq!(
        (not_ready.error.code.as_str(), not_ready.status.as_str()),
        ("queue_unavailable", "not_ready"),
        "{body}"
    );
    redis.restart();
    wait_ready_until(&worker, Duration::from_secs(10), "worker ready again", |s, _| s == 200);
    // Redis came back empty: the heartbeat puts the worker back by itself.
    wait_ready_until(&server, Duration::from_secs(10), "the worker counted again", |s, b| {
        s == 200 && live(b) == Some(1)
    });

    // A worker killed outright drops out once its heartbeat runs out (6 s at the default
    // --reclaim-after), with no clean goodbye. Measured from a beat seen to count for 2 s more
    // (on Redis' clock), not from the kill: a beat may be late on a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (killed_at, until) = loop {
        let (now, until) = counted_until(&url, &prefix);
        if let Some(until) = until.filter(|&until| until > now + 2000) {
            break (now, until);
        }
        assert!(Instant::now() < deadline, "no heartbeat counting 2 s ahead: {until:?} at {now}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = worker.child.kill();
    let _ = worker.child.wait();
    let body = wait_ready_until(&server, Duration::from_secs(15), "the killed worker gone", |s, b| {
        s == 200 && live(b) == Some(0)
    });
    let (gone_at, _) = counted_until(&url, &prefix);
    assert!(
        gone_at >= until && gone_at >= killed_at + 2000,
        "its last heartbeat still counted for a while: killed at {killed_at}, counted until {until}, gone by {gone_at}"
    );
    assert!(parse::<Ready>(&body).warning.is_some(), "{body}");
}

#[test]
fn a_worker_that_stops_cleanly_leaves_at_once() {
    let prefix = unique_prefix("leave");
    let url = common::redis_url();
    let args = ["--redis-url", &url, "--redis-prefix", &prefix];
    let server = Tandem::serve(&args);
    let mut worker = Tandem::worker_http(&[&args[..], &NORMAL].concat());
    wait_ready_until(&server, Duration::from_secs(5), "the worker counted", |s, b| s == 200 && live(b) == Some(1));
    assert_eq!(worker.terminate(Duration::from_secs(20)), Some(0));
    let (status, body) = get_json(&server.url("/health/ready"));
    assert_eq!((status, live(&body)), (200, Some(0)), "gone without waiting for its heartbeat to run out: {body}");
}

/// The scheduling policy (field 41 of `/proc/.../stat`) of each thread of `pid`, by name.
fn thread_policies(pid: u32) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks").flatten() {
        let (Ok(comm), Ok(stat)) =
            (std::fs::read_to_string(task.path().join("comm")), std::fs::read_to_string(task.path().join("stat")))
        else {
            continue;
        };
        // After the `(comm)` field: field 3 onwards.
        let after = &stat[stat.rfind(')').expect("stat") + 1..];
        let policy = after.split_whitespace().nth(41 - 3).and_then(|p| p.parse().ok()).expect("policy");
        out.push((comm.trim().to_owned(), policy));
    }
    out
}

/// A worker at SCHED_IDLE (the default) beats from a thread at the priority it was started
/// with, so a busy machine neither drops it from the live workers nor lapses its jobs' leases;
/// the rest of it stays at SCHED_IDLE.
#[test]
fn a_worker_at_idle_priority_beats_from_a_normal_priority_thread() {
    const SCHED_OTHER: i32 = 0;
    const SCHED_IDLE: i32 = 5;
    let prefix = unique_prefix("beat-thread");
    let url = common::redis_url();
    let worker = Tandem::worker_http(&["--redis-url", &url, "--redis-prefix", &prefix, "--accurate-priority", "idle"]);
    let threads = thread_policies(worker.child.id());
    let beat: Vec<i32> = threads.iter().filter(|(name, _)| name == "heartbeat").map(|(_, p)| *p).collect();
    assert_eq!(beat, vec![SCHED_OTHER], "one heartbeat thread, not lowered: {threads:?}");
    assert!(
        threads.iter().all(|(name, p)| name == "heartbeat" || *p == SCHED_IDLE),
        "the rest is lowered: {threads:?}"
    );
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
        assert_eq!(status, 200, "{body}");
        assert!(as_predict(&body).job_id.is_none(), "{body}");
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
        if as_predict(&body).job_id.is_some() {
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
