//! The fault suite: real `tandem` processes, real Redis servers, real failures. Each test prints
//! its figures (run with `--nocapture` to see them; `scripts/test.sh` does).

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{RedisServer, Tandem, agent, get_json, images_dir, post_bytes, redis_url, unique_prefix, wait_for_job};
use serde_json::Value;

fn photo(file: &str) -> Vec<u8> {
    std::fs::read(images_dir().join(file)).expect("photo")
}

fn redis_hash_field(url: &str, key: &str, field: &str) -> Option<i64> {
    let client = redis::Client::open(url).ok()?;
    let mut conn = client.get_connection().ok()?;
    redis::cmd("HGET").arg(key).arg(field).query::<Option<i64>>(&mut conn).ok().flatten()
}

/// Posts `count` photos from `clients` threads; returns the job ids in order of submission.
fn submit(base: &str, count: usize, clients: usize) -> Vec<String> {
    let photos: Arc<Vec<Vec<u8>>> = Arc::new((1..=20).map(|i| photo(&format!("sample_{i:02}.jpg"))).collect());
    let next = Arc::new(Mutex::new(0usize));
    let ids = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (photos, next, ids, url) =
                (Arc::clone(&photos), Arc::clone(&next), Arc::clone(&ids), format!("{base}/predict"));
            std::thread::spawn(move || {
                loop {
                    let i = {
                        let mut n = next.lock().expect("lock");
                        if *n >= count {
                            return;
                        }
                        *n += 1;
                        *n - 1
                    };
                    let (status, body) = post_bytes(&url, "image/jpeg", &photos[i % photos.len()]);
                    assert_eq!(status, 200, "{body}");
                    let id = body["job_id"].as_str().unwrap_or_else(|| panic!("no job id: {body}")).to_owned();
                    ids.lock().expect("lock").push(id);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("client thread");
    }
    Arc::try_unwrap(ids).map(|m| m.into_inner().expect("lock")).unwrap_or_default()
}

/// `XPENDING key group`: count, first id, last id, and (consumer, count) pairs.
type PendingSummary = (u64, Option<String>, Option<String>, Option<Vec<(String, String)>>);

/// Waits until the worker with this pid (its consumer name holds the pid) has jobs in flight;
/// returns how many it holds.
fn wait_until_holding(url: &str, prefix: &str, pid: u32, timeout: Duration) -> u64 {
    holder(url, prefix, &[pid], timeout).1
}

/// Leaves the worker with this pid frozen (SIGSTOP) while it holds jobs, and returns how many:
/// what a frozen worker holds cannot finish before the kill that follows, so the kill is sure
/// to cut jobs off (a worker that is only seen holding jobs may finish them before the kill).
fn freeze_holding(url: &str, prefix: &str, pid: u32, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    let target = i32::try_from(pid).expect("pid");
    loop {
        wait_until_holding(url, prefix, pid, deadline.saturating_duration_since(Instant::now()));
        // SAFETY: signals to a child this test started and still owns.
        unsafe { libc::kill(target, libc::SIGSTOP) };
        std::thread::sleep(Duration::from_millis(20));
        let client = redis::Client::open(url).expect("url");
        let mut conn = client.get_connection().expect("redis");
        let summary: redis::RedisResult<PendingSummary> =
            redis::cmd("XPENDING").arg(format!("{prefix}:jobs")).arg("workers").query(&mut conn);
        let marker = format!("-{pid}-");
        let held = summary.ok().and_then(|(_, _, _, consumers)| {
            let consumers = consumers?;
            let (_, held) = consumers.iter().find(|(name, _)| name.contains(&marker))?;
            held.parse::<u64>().ok()
        });
        if let Some(held @ 1..) = held {
            return held;
        }
        unsafe { libc::kill(target, libc::SIGCONT) };
        assert!(Instant::now() < deadline, "worker {pid} never caught holding a job");
    }
}

#[test]
fn faultsuite_worker_killed_twice_loses_and_duplicates_nothing() {
    let prefix = unique_prefix("kill9");
    let url = redis_url();
    let redis = ["--redis-url", url.as_str(), "--redis-prefix", &prefix];
    let worker_args = [&redis[..], &["--reclaim-after", "5", "--concurrency", "2"]].concat();
    let server = Tandem::serve(&redis);
    let mut victim = Tandem::worker(&worker_args);
    let _steady = Tandem::worker(&worker_args);

    let started = Instant::now();
    let base = server.base.clone();
    let submitter = std::thread::spawn(move || submit(&base, 300, 4));
    // Two kill -9s, each while the victim holds jobs (so they are cut off mid-way), each
    // followed by a restart.
    let mut killed_holding = Vec::new();
    for _ in 0..2 {
        let held = freeze_holding(&url, &prefix, victim.child.id(), Duration::from_secs(120));
        let _ = victim.child.kill();
        let _ = victim.child.wait();
        killed_holding.push(held);
        victim = Tandem::worker(&worker_args);
    }
    let ids = submitter.join().expect("submitter");
    assert_eq!(ids.len(), 300);

    let (mut completed, mut failed, mut retried, mut duplicated) = (0, 0, 0, 0);
    for id in &ids {
        let job = wait_for_job(&server.base, id, Duration::from_secs(240));
        match job["status"].as_str() {
            Some("completed") => completed += 1,
            _ => failed += 1,
        }
        if job["attempts"].as_u64().unwrap_or(0) > 1 {
            retried += 1;
        }
        let reported = redis_hash_field(&url, &format!("{prefix}:job:{id}"), "results_reported").unwrap_or(0);
        if reported > 1 {
            duplicated += 1;
        }
    }
    let lost = 300 - completed - failed;
    eprintln!(
        "fault suite | worker kill -9 x2: 300 jobs, {completed} completed, {failed} failed, {lost} lost, \
         {duplicated} duplicated results, {retried} retried after the kills, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    eprintln!("fault suite | the victim held {killed_holding:?} jobs when killed");
    assert_eq!((completed, failed, duplicated), (300, 0, 0));
    assert!(retried >= 2, "jobs cut off by the kills were taken over and retried");
}

#[test]
fn faultsuite_redis_restart_during_load() {
    let mut redis = RedisServer::start(true);
    let prefix = unique_prefix("outage");
    let url = redis.url();
    let args = ["--redis-url", url.as_str(), "--redis-prefix", &prefix];
    let server = Tandem::serve(&args);
    let _worker = Tandem::worker(&[&args[..], &["--reclaim-after", "3"]].concat());

    let stop = Arc::new(AtomicBool::new(false));
    let responses: Arc<Mutex<Vec<(u16, Value)>>> = Arc::default();
    let readiness: Arc<Mutex<Vec<(Duration, u16)>>> = Arc::default();
    let started = Instant::now();
    let load = {
        let (stop, responses, url) = (Arc::clone(&stop), Arc::clone(&responses), server.url("/predict"));
        let image = photo("sample_03.jpg");
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let answer = post_bytes(&url, "image/jpeg", &image);
                responses.lock().expect("lock").push(answer);
                std::thread::sleep(Duration::from_millis(40));
            }
        })
    };
    let probe = {
        let (stop, readiness, url) = (Arc::clone(&stop), Arc::clone(&readiness), server.url("/health/ready"));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let status = agent().get(&url).call().map(|r| r.status().as_u16()).unwrap_or(0);
                readiness.lock().expect("lock").push((started.elapsed(), status));
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(2500));
    redis.kill();
    let killed_at = started.elapsed();
    std::thread::sleep(Duration::from_millis(2500));
    redis.restart();
    let restarted_at = started.elapsed();
    std::thread::sleep(Duration::from_millis(4000));
    stop.store(true, Ordering::Relaxed);
    load.join().expect("load thread");
    probe.join().expect("probe thread");

    let responses = responses.lock().expect("lock").clone();
    let readiness = readiness.lock().expect("lock").clone();
    let non_200 = responses.iter().filter(|(status, _)| *status != 200).count();
    let ids: Vec<String> = responses.iter().filter_map(|(_, b)| b["job_id"].as_str().map(str::to_owned)).collect();
    let without_id = responses.iter().filter(|(_, b)| b["job_id"].is_null()).count();
    let not_ready = readiness.iter().filter(|(_, s)| *s == 503).count();
    let recovered_after = readiness
        .iter()
        .find(|(at, s)| *at > restarted_at && *s == 200)
        .map(|(at, _)| (*at - restarted_at).as_secs_f64());
    let mut completed = 0;
    for id in &ids {
        if wait_for_job(&server.base, id, Duration::from_secs(90))["status"] == "completed" {
            completed += 1;
        }
    }
    eprintln!(
        "fault suite | Redis kill -9 at {:.1} s, restart (AOF) at {:.1} s: {} requests, {non_200} not 200, \
         {} with a job id ({completed} completed), {without_id} answered without one; readiness 503 x{not_ready}, \
         ready again {:.1} s after the restart",
        killed_at.as_secs_f64(),
        restarted_at.as_secs_f64(),
        responses.len(),
        ids.len(),
        recovered_after.unwrap_or(f64::NAN)
    );
    assert_eq!(non_200, 0, "serve kept answering POST /predict");
    assert!(without_id > 0 && not_ready > 0, "the outage was seen (else this test proves nothing)");
    let outage_answer = responses.iter().find(|(_, b)| b["job_id"].is_null()).map(|(_, b)| b.clone());
    assert!(
        outage_answer
            .as_ref()
            .is_some_and(|b| b["async_error"].as_str().is_some_and(|e| e.contains("unavailable"))
                && b["result_sync"].is_string()),
        "{outage_answer:?}"
    );
    assert_eq!(completed, ids.len(), "every job given an id completes");
    assert!(recovered_after.is_some(), "readiness recovered by itself");
}

#[test]
fn faultsuite_poison_job_fails_after_its_attempts_and_others_complete() {
    let prefix = unique_prefix("poison");
    let url = redis_url();
    let redis = ["--redis-url", url.as_str(), "--redis-prefix", &prefix];
    let server = Tandem::serve(&redis);
    // The worker refuses images over 100,000 pixels: sample_01 (477x256) is poison to it,
    // sample_02 (342x256) is not. serve, with the default limit, accepts both.
    let _worker = Tandem::worker(&[&redis[..], &["--max-pixels", "100000", "--max-attempts", "3"]].concat());
    let (_, poison) = post_bytes(&server.url("/predict"), "image/jpeg", &photo("sample_01.jpg"));
    let poison_id = poison["job_id"].as_str().expect("job id").to_owned();
    let good: Vec<String> = (0..5)
        .map(|_| {
            let (_, body) = post_bytes(&server.url("/predict"), "image/jpeg", &photo("sample_02.jpg"));
            body["job_id"].as_str().expect("job id").to_owned()
        })
        .collect();
    for id in &good {
        assert_eq!(wait_for_job(&server.base, id, Duration::from_secs(60))["status"], "completed");
    }
    let job = wait_for_job(&server.base, &poison_id, Duration::from_secs(60));
    let dead: Vec<HashMap<String, String>> = {
        let client = redis::Client::open(url.as_str()).expect("url");
        let mut conn = client.get_connection().expect("redis");
        let entries: redis::streams::StreamRangeReply =
            redis::cmd("XRANGE").arg(format!("{prefix}:dead")).arg("-").arg("+").query(&mut conn).expect("XRANGE");
        entries
            .ids
            .iter()
            .map(|e| {
                e.map.iter().filter_map(|(k, v)| Some((k.clone(), redis::from_redis_value(v.clone()).ok()?))).collect()
            })
            .collect()
    };
    eprintln!(
        "fault suite | poison job: {} after {} attempts ({}); 5 good jobs behind it completed; dead letters: {}",
        job["status"],
        job["attempts"],
        job["error"],
        dead.len()
    );
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["attempts"], 3, "{job}");
    assert_eq!(job["prediction"], "");
    assert!(job["error"].as_str().is_some_and(|e| e.contains("pixels")), "{job}");
    assert!(dead.iter().any(|d| d.get("id") == Some(&poison_id)), "dead-letter stream: {dead:?}");
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse().ok()).unwrap_or(0)
}

#[test]
fn faultsuite_overload_8x_gets_429_with_retry_after_and_no_5xx() {
    const INFLIGHT: usize = 4;
    let server = Tandem::serve(&["--max-inflight", &INFLIGHT.to_string(), "--max-queue", "100000"]);
    let pid = server.child.id();
    let image = photo("sample_01.jpg");
    // Steady state: a little sequential traffic first.
    for _ in 0..30 {
        assert_eq!(post_bytes(&server.url("/predict"), "image/jpeg", &image).0, 200);
    }
    let steady = rss_kib(pid, "VmRSS:");

    let statuses: Arc<Mutex<HashMap<u16, usize>>> = Arc::default();
    let missing_retry_after = Arc::new(Mutex::new(0usize));
    let deadline = Instant::now() + Duration::from_secs(5);
    let clients: Vec<_> = (0..INFLIGHT * 8)
        .map(|_| {
            let (statuses, missing, url, image) =
                (Arc::clone(&statuses), Arc::clone(&missing_retry_after), server.url("/predict"), image.clone());
            std::thread::spawn(move || {
                let agent = agent();
                while Instant::now() < deadline {
                    let Ok(response) = agent.post(&url).header("content-type", "image/jpeg").send(&image[..]) else {
                        *statuses.lock().expect("lock").entry(0).or_default() += 1;
                        continue;
                    };
                    let status = response.status().as_u16();
                    if status == 429 && response.headers().get("retry-after").is_none() {
                        *missing.lock().expect("lock") += 1;
                    }
                    *statuses.lock().expect("lock").entry(status).or_default() += 1;
                }
            })
        })
        .collect();
    for client in clients {
        client.join().expect("client");
    }
    let peak = rss_kib(pid, "VmHWM:");
    let statuses = statuses.lock().expect("lock").clone();
    let (ok, limited) = (statuses.get(&200).copied().unwrap_or(0), statuses.get(&429).copied().unwrap_or(0));
    let server_errors: usize = statuses.iter().filter(|(s, _)| **s >= 500 || **s == 0).map(|(_, n)| n).sum();
    eprintln!(
        "fault suite | 8x overload ({} clients, --max-inflight {INFLIGHT}, 5 s): {ok} x 200, {limited} x 429, \
         {server_errors} x 5xx/transport; RSS steady {:.1} MiB, peak {:.1} MiB ({:.2}x)",
        INFLIGHT * 8,
        steady as f64 / 1024.0,
        peak as f64 / 1024.0,
        peak as f64 / steady.max(1) as f64
    );
    assert_eq!(server_errors, 0, "{statuses:?}");
    assert!(ok > 0 && limited > 0, "{statuses:?}");
    assert_eq!(*missing_retry_after.lock().expect("lock"), 0, "every 429 carries Retry-After");
    assert!(peak < steady * 2, "RSS stays bounded: steady {steady} KiB, peak {peak} KiB");
    let (status, _) = get_json(&server.url("/health"));
    assert_eq!(status, 200);
}

/// Keys under `prefix` matching `pattern` (e.g. `job:*`), with their `PTTL` (-1: no expiry).
fn redis_keys(url: &str, prefix: &str, pattern: &str) -> Vec<(String, i64)> {
    let client = redis::Client::open(url).expect("url");
    let mut conn = client.get_connection().expect("redis");
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}:{pattern}")).query(&mut conn).expect("KEYS");
    keys.into_iter()
        .map(|key| {
            let ttl = redis::cmd("PTTL").arg(&key).query(&mut conn).expect("PTTL");
            (key, ttl)
        })
        .collect()
}

/// Issue 13 item 11. Redis is stopped (SIGSTOP) three times under load, each time longer than
/// the enqueue's timeout: requests whose image was staged just before a stop send their enqueue
/// into the stalled server, time out, and are answered `"job_id": null`; Redis then runs the
/// enqueue when it wakes. No such job may appear: the jobs in Redis are exactly the ids given out.
#[test]
fn faultsuite_a_stalled_redis_runs_no_job_the_client_was_told_was_not_queued() {
    let redis = RedisServer::start(false);
    let prefix = unique_prefix("stall");
    let url = redis.url();
    let args = ["--redis-url", url.as_str(), "--redis-prefix", &prefix];
    let server = Tandem::serve(&args);
    let _worker = Tandem::worker(&[&args[..], &["--reclaim-after", "3"]].concat());

    let stop = Arc::new(AtomicBool::new(false));
    let responses: Arc<Mutex<Vec<(u16, Value)>>> = Arc::default();
    // A 2 MP photo: its fast answer (decode + model) takes far longer than staging its image,
    // so at any moment some client is between "image staged" and "job queued".
    let image = Arc::new(std::fs::read(images_dir().join("large/photo_1600x1200.jpg")).expect("photo"));
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let (stop, responses, url, image) =
                (Arc::clone(&stop), Arc::clone(&responses), server.url("/predict"), Arc::clone(&image));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let answer = post_bytes(&url, "image/jpeg", &image);
                    responses.lock().expect("lock").push(answer);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    for _ in 0..3 {
        redis.pause();
        std::thread::sleep(Duration::from_secs(3));
        redis.resume();
        std::thread::sleep(Duration::from_millis(1500));
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().expect("client");
    }

    let responses = responses.lock().expect("lock").clone();
    let non_200 = responses.iter().filter(|(status, _)| *status != 200).count();
    let ids: HashSet<String> = responses.iter().filter_map(|(_, b)| b["job_id"].as_str().map(str::to_owned)).collect();
    let without_id = responses.len() - ids.len();
    for id in &ids {
        assert_eq!(wait_for_job(&server.base, id, Duration::from_secs(120))["status"], "completed", "job {id}");
    }
    // Late enqueues have long run by now (Redis answered every GET above); give the worker a
    // moment for any job it would still pick up.
    std::thread::sleep(Duration::from_secs(2));
    let records = redis_keys(&url, &prefix, "job:*");
    let strays: Vec<&String> =
        records.iter().map(|(key, _)| key).filter(|key| !ids.iter().any(|id| key.ends_with(id.as_str()))).collect();
    let kept_images: Vec<String> =
        redis_keys(&url, &prefix, "image:*").into_iter().filter(|(_, ttl)| *ttl == -1).map(|(key, _)| key).collect();
    eprintln!(
        "fault suite | Redis SIGSTOP 3 x 3 s under load: {} requests, {non_200} not 200, {} with a job id, \
         {without_id} answered without one; {} job records in Redis, {} not given to any client; \
         {} images kept without expiry",
        responses.len(),
        ids.len(),
        records.len(),
        strays.len(),
        kept_images.len()
    );
    assert_eq!(non_200, 0, "serve kept answering POST /predict");
    assert!(without_id > 0, "the stalls were seen (else this test proves nothing)");
    assert!(strays.is_empty(), "jobs exist that the client was told were not queued: {strays:?}");
    assert_eq!(records.len(), ids.len(), "every job id given out has its record");
    assert!(kept_images.is_empty(), "images of jobs that were not queued are not kept: {kept_images:?}");
    // Every job done, undone ones included: each gave its bytes back once, so the counter is 0
    // (a missing key).
    let mut conn = redis::Client::open(url.as_str()).expect("url").get_connection().expect("connect");
    let (queued, bytes): (u64, Option<i64>) = redis::pipe()
        .cmd("XLEN")
        .arg(format!("{prefix}:jobs"))
        .cmd("GET")
        .arg(format!("{prefix}:queued_bytes"))
        .query(&mut conn)
        .expect("XLEN, GET");
    assert_eq!((queued, bytes), (0, None), "an empty queue holds no bytes");
}

/// Whichever of `pids` holds jobs of the stream (its consumer name holds the pid), and how
/// many: `XPENDING` lists only consumers that hold some.
fn holder(url: &str, prefix: &str, pids: &[u32], timeout: Duration) -> (u32, u64) {
    let client = redis::Client::open(url).expect("url");
    let mut conn = client.get_connection().expect("redis");
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let summary: redis::RedisResult<PendingSummary> =
            redis::cmd("XPENDING").arg(format!("{prefix}:jobs")).arg("workers").query(&mut conn);
        if let Ok((_, _, _, Some(consumers))) = summary
            && let Some((pid, held)) = pids.iter().find_map(|pid| {
                let marker = format!("-{pid}-");
                let (_, held) = consumers.iter().find(|(name, _)| name.contains(&marker))?;
                Some((*pid, held.parse::<u64>().ok().filter(|&n| n > 0)?))
            })
        {
            return (pid, held);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no worker of {pids:?} took a job");
}

/// Issue 13 item 12. A job that runs three times longer than `--reclaim-after` stays with its
/// live worker: one attempt, one result, no takeover. The job is slow for real: the accurate
/// tier holds a lone job back for `--accurate-max-batch-delay` to fill a batch. A worker
/// killed (-9) while holding such a job loses it to the other.
#[test]
fn faultsuite_a_live_workers_slow_job_stays_with_it_and_a_killed_workers_is_taken_over() {
    let prefix = unique_prefix("lease");
    let url = redis_url();
    let redis = ["--redis-url", url.as_str(), "--redis-prefix", &prefix];
    let slow = ["--reclaim-after", "1", "--accurate-max-batch", "8", "--accurate-max-batch-delay", "3000"];
    let worker_args = [&redis[..], &slow[..]].concat();
    let server = Tandem::serve(&redis);
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).expect("log dir");
    let logs = [dir.join("a.log"), dir.join("b.log")];
    let mut workers =
        [Tandem::worker_with_log(&worker_args, &logs[0]), Tandem::worker_with_log(&worker_args, &logs[1])];
    let pids = [workers[0].child.id(), workers[1].child.id()];
    let deadline = Instant::now() + Duration::from_secs(60);
    while get_json(&server.url("/health/ready")).1["workers"]["live"].as_u64() != Some(2) {
        assert!(Instant::now() < deadline, "both workers live: {}", get_json(&server.url("/health/ready")).1);
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = |i: usize| std::fs::read_to_string(&logs[i]).unwrap_or_default();
    let post = || {
        let (status, body) = post_bytes(&server.url("/predict"), "image/jpeg", &photo("sample_05.jpg"));
        assert_eq!(status, 200, "{body}");
        body["job_id"].as_str().expect("job id").to_owned()
    };

    let started = Instant::now();
    let id = post();
    let job = wait_for_job(&server.base, &id, Duration::from_secs(60));
    let took = started.elapsed();
    let reported = redis_hash_field(&url, &format!("{prefix}:job:{id}"), "results_reported");
    let took_over = (0..2).filter(|i| log(*i).contains("took over")).count();
    eprintln!(
        "fault suite | slow job ({:.1} s, --reclaim-after 1): {}, {} attempt(s), {reported:?} result(s); \
         {took_over} worker(s) logged a takeover",
        took.as_secs_f64(),
        job["status"],
        job["attempts"]
    );
    assert!(took >= Duration::from_secs(3), "the job was slower than --reclaim-after ({took:?})");
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["attempts"], 1, "{job}");
    assert_eq!(reported, Some(1), "computed once");
    assert_eq!(took_over, 0, "no takeover from a live worker:\n{}\n{}", log(0), log(1));

    // The same, but the worker holding it is killed mid-way: the other one takes it over.
    let id = post();
    // Running: its worker has started it (its attempt is counted), not only been handed it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while get_json(&server.url(&format!("/job/{id}"))).1["status"] != "running" {
        assert!(Instant::now() < deadline, "the job never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (victim, _) = holder(&url, &prefix, &pids, Duration::from_secs(30));
    let (v, survivor) = if victim == pids[0] { (0, 1) } else { (1, 0) };
    let _ = workers[v].child.kill();
    let _ = workers[v].child.wait();
    let job = wait_for_job(&server.base, &id, Duration::from_secs(60));
    eprintln!(
        "fault suite | worker killed holding a slow job: {}, {} attempts; the survivor logged a takeover: {}",
        job["status"],
        job["attempts"],
        log(survivor).contains("took over")
    );
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["attempts"], 2, "{job}");
    assert!(log(survivor).contains("took over"), "{}", log(survivor));
    let _ = std::fs::remove_dir_all(&dir);
}
