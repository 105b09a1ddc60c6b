//! `--max-queue-bytes` against real processes: uploads that are small pictures padded to 2 MB
//! while the accurate tier lags. The queue takes jobs until their images would pass the bound,
//! then answers with the fast result and `"job_id": null`, like a full queue; memory stays
//! bounded; the bytes come back as the jobs finish (embedded queue, and Redis shared by two
//! `serve` processes).

mod common;

use std::io::Cursor;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Tandem, agent, get_json, post_bytes, redis_url, unique_prefix, wait_for_job};

/// Each upload's size: 4 fit in 8 MiB (8,000,000 <= 8,388,608 bytes), 5 do not.
const UPLOAD: usize = 2_000_000;
const BOUND: &str = "8MiB";
const BOUND_TEXT: &str = "images would pass 8.0 MiB";

/// A 64x64 JPEG padded with APP15 segments to about `total` bytes: cheap to decode and
/// classify, expensive to hold.
fn padded_jpeg(total: usize) -> Vec<u8> {
    let picture = image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, 128]));
    let mut small = Vec::new();
    image::DynamicImage::ImageRgb8(picture)
        .write_to(&mut Cursor::new(&mut small), image::ImageFormat::Jpeg)
        .expect("encode");
    let mut jpeg = small[..2].to_vec(); // SOI
    let mut room = total.saturating_sub(small.len());
    while room > 4 {
        let data = (room - 4).min(65_533);
        jpeg.extend_from_slice(&[0xFF, 0xEF]);
        jpeg.extend_from_slice(&u16::try_from(data + 2).expect("segment length").to_be_bytes());
        jpeg.extend(std::iter::repeat_n(0x5A, data));
        room -= data + 4;
    }
    jpeg.extend_from_slice(&small[2..]);
    jpeg
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok()).unwrap_or(0)
}

fn metrics(base: &str) -> String {
    let Ok(response) = agent().get(&format!("{base}/metrics")).call() else { return String::new() };
    response.into_body().read_to_string().unwrap_or_default()
}

/// The sum of a metric's series, from `/metrics`.
fn metric(base: &str, name: &str) -> f64 {
    metrics(base)
        .lines()
        .filter(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn queued_bytes(conn: &mut redis::Connection, prefix: &str) -> Option<u64> {
    redis::cmd("GET").arg(format!("{prefix}:queued_bytes")).query(conn).expect("GET queued_bytes")
}

/// One `POST /predict` reply: the job id, or the reason there is none.
fn post(url: &str, image: &[u8]) -> Result<String, String> {
    let (status, body) = post_bytes(url, "image/jpeg", image);
    assert_eq!(status, 200, "{body}");
    assert!(body["result_sync"].is_string(), "the fast answer always goes out: {body}");
    match body["job_id"].as_str() {
        Some(id) => Ok(id.to_owned()),
        None => Err(body["async_error"].as_str().unwrap_or_default().to_owned()),
    }
}

#[test]
fn the_embedded_queue_is_bounded_in_image_bytes_and_memory() {
    // One accurate job at a time, at idle priority under load: the queue fills.
    let server = Tandem::serve(&["--concurrency", "1", "--accurate-max-batch", "1", "--max-queue-bytes", BOUND]);
    let pid = server.child.id();
    let url = server.url("/predict");
    let image = Arc::new(padded_jpeg(UPLOAD));
    assert!((UPLOAD - 8..=UPLOAD).contains(&image.len()), "{}", image.len());

    // Warm up: one job all the way through, so both tiers have run once before the baseline.
    let warm = post(&url, &image).expect("an empty queue takes a job");
    assert_eq!(wait_for_job(&server.base, &warm, Duration::from_secs(60))["status"], "completed");
    let baseline = rss_kib(pid);

    // 4 clients x 30 uploads = 240 MB sent; the queue may hold 8 MiB of it.
    let done = Arc::new(AtomicBool::new(false));
    let (peak, deepest) = (Arc::new(AtomicU64::new(baseline)), Arc::new(AtomicU64::new(0)));
    let sampler = {
        let (done, peak, deepest) = (Arc::clone(&done), Arc::clone(&peak), Arc::clone(&deepest));
        let base = server.base.clone();
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                // Waiting plus running.
                deepest.fetch_max(metric(&base, "tandem_queue_depth") as u64, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let replies: Arc<Mutex<Vec<Result<String, String>>>> = Arc::default();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (url, image, replies) = (url.clone(), Arc::clone(&image), Arc::clone(&replies));
            std::thread::spawn(move || {
                for _ in 0..30 {
                    let reply = post(&url, &image);
                    replies.lock().expect("lock").push(reply);
                }
            })
        })
        .collect();
    for client in clients {
        client.join().expect("client");
    }
    done.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");

    let replies = std::mem::take(&mut *replies.lock().expect("lock"));
    let accepted: Vec<&String> = replies.iter().filter_map(|r| r.as_ref().ok()).collect();
    let refused: Vec<&String> = replies.iter().filter_map(|r| r.as_ref().err()).collect();
    let (peak, deepest) = (peak.load(Ordering::Relaxed), deepest.load(Ordering::Relaxed));
    eprintln!(
        "embedded: {} accepted, {} refused, deepest queue {deepest}, RSS {} -> {} MiB",
        accepted.len(),
        refused.len(),
        baseline / 1024,
        peak / 1024
    );
    assert!(!refused.is_empty(), "the accurate tier never fell behind: nothing was refused");
    for reason in &refused {
        assert!(reason.contains(BOUND_TEXT), "refused for another reason: {reason}");
    }
    assert!(deepest <= 4, "{deepest} jobs of {UPLOAD} bytes were queued at once under {BOUND}");
    // Held images (8 MiB) plus the requests being read and answered (4 x 2 MB, a few copies
    // each) and allocator slack; 240 MB queued would be far past it.
    let growth_mib = peak.saturating_sub(baseline) / 1024;
    assert!(growth_mib < 100, "RSS grew {growth_mib} MiB ({} -> {} KiB)", baseline, peak);

    // Every accepted job finishes, and then their bytes are back: the queue takes jobs again.
    for id in &accepted {
        assert_eq!(wait_for_job(&server.base, id, Duration::from_secs(120))["status"], "completed");
    }
    // The worker drops a job's image just after storing its result.
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..4 {
        post(&url, &image).expect("an idle queue has room for 4 again");
    }
    let full = metric(&server.base, "tandem_jobs_rejected_total{reason=\"full\"}");
    assert_eq!(full as usize, refused.len(), "refusals are counted as reason=\"full\"");
}

#[test]
fn the_redis_queue_is_bounded_in_image_bytes_across_serve_processes() {
    let (url, prefix) = (redis_url(), unique_prefix("queue-bytes"));
    let redis = ["--redis-url", url.as_str(), "--redis-prefix", prefix.as_str()];
    let serve_args = [&redis[..], &["--max-queue-bytes", BOUND]].concat();
    let servers = [Tandem::serve(&serve_args), Tandem::serve(&serve_args)];
    let image = padded_jpeg(UPLOAD);
    let mut conn = redis::Client::open(url.as_str()).expect("url").get_connection().expect("connect to Redis");

    // No worker yet: jobs stay queued. Alternating between the two processes, 4 get in.
    let replies: Vec<_> = (0..6).map(|i| post(&servers[i % 2].url("/predict"), &image)).collect();
    let accepted: Vec<&String> = replies.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(accepted.len(), 4, "{replies:?}");
    for refused in &replies[4..] {
        assert!(refused.as_ref().is_err_and(|reason| reason.contains(BOUND_TEXT)), "{refused:?}");
    }
    assert_eq!(queued_bytes(&mut conn, &prefix), Some(4 * image.len() as u64));

    // A worker drains the queue: every byte comes back, and the counter is gone (0).
    let worker = Tandem::worker(&[&redis[..], &["--concurrency", "2"]].concat());
    for id in &accepted {
        let job = wait_for_job(&servers[0].base, id, Duration::from_secs(120));
        assert_eq!(job["status"], "completed", "{job}");
    }
    assert_eq!(queued_bytes(&mut conn, &prefix), None);
    let again = post(&servers[1].url("/predict"), &image).expect("room again");
    assert_eq!(wait_for_job(&servers[1].base, &again, Duration::from_secs(60))["status"], "completed");
    assert_eq!(queued_bytes(&mut conn, &prefix), None);
    let (status, job) = get_json(&servers[0].url(&format!("/job/{again}")));
    assert_eq!((status, &job["status"]), (200, &serde_json::json!("completed")));
    drop(worker);

    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}:*")).query(&mut conn).unwrap_or_default();
    if !keys.is_empty() {
        let _ = redis::cmd("DEL").arg(keys).query::<()>(&mut conn);
    }
}
