//! What the result cache costs on a request's path: the SHA-256 of the image's bytes
//! (`fingerprint::ContentHash`), for the 26 KB photo and the 1 MB one, median and p90 per
//! image, one at a time on the calling thread. Run it with `cargo bench --bench fingerprint`.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use tandem::fingerprint::ContentHash;

/// (file under the shared images, TANDEM_SHARED_DIR or ../shared, measured runs)
const CASES: [(&str, usize); 3] =
    [("sample_01.jpg", 20_000), ("large/photo_1600x1200.jpg", 2_000), ("large/photo_4000x3000.jpg", 500)];

fn main() {
    let shared = std::env::var_os("TANDEM_SHARED_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    let dir = shared.join("images");
    println!("SHA-256 of the image bytes (the cache key)");
    for (name, runs) in CASES {
        let bytes = match std::fs::read(dir.join(name)) {
            Ok(bytes) => bytes,
            Err(e) => {
                println!("{name:28} skipped: {e}");
                continue;
            }
        };
        for _ in 0..(runs / 10).max(3) {
            black_box(ContentHash::of(black_box(&bytes)));
        }
        let mut times: Vec<Duration> = (0..runs)
            .map(|_| {
                let start = Instant::now();
                black_box(ContentHash::of(black_box(&bytes)));
                start.elapsed()
            })
            .collect();
        times.sort_unstable();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let median = times[runs / 2];
        println!(
            "{name:28} {:>7} KB  median {:9.1} µs  p90 {:9.1} µs  {:6.0} MB/s  ({runs} runs)",
            bytes.len() / 1024,
            us(median),
            us(times[runs * 9 / 10]),
            bytes.len() as f64 / median.as_secs_f64() / 1e6,
        );
    }
}
