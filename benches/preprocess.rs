//! Preprocessing latency (decode → resize → crop → normalize), one image at a time on the
//! calling thread: median and p90 per image. `harness = false` and no criterion, to keep the
//! dependency tree lean. Run on one core with `taskset -c 0 cargo bench --bench preprocess`.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use tandem::pipeline::{PreprocessConfig, preprocess_into};

/// (file under the shared images, TANDEM_SHARED_DIR or ../shared, measured runs)
const CASES: [(&str, usize); 3] =
    [("sample_01.jpg", 3000), ("large/photo_1600x1200.jpg", 300), ("large/photo_4000x3000.jpg", 60)];

fn main() {
    let shared = std::env::var_os("TANDEM_SHARED_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    let dir = shared.join("images");
    let config = PreprocessConfig::default();
    let mut out = vec![0.0; config.tensor_len()];
    println!("preprocess, resize {} crop {}", config.resize, config.crop);
    for (name, runs) in CASES {
        let bytes = match std::fs::read(dir.join(name)) {
            Ok(bytes) => bytes,
            Err(e) => {
                println!("{name:28} skipped: {e}");
                continue;
            }
        };
        // Warm-up: page in the code, let the allocator settle.
        for _ in 0..(runs / 10).max(3) {
            preprocess_into(black_box(&bytes), &config, &mut out).expect("preprocess");
        }
        let mut times: Vec<Duration> = (0..runs)
            .map(|_| {
                let start = Instant::now();
                preprocess_into(black_box(&bytes), &config, &mut out).expect("preprocess");
                black_box(&out);
                start.elapsed()
            })
            .collect();
        times.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "{name:28} {:>7} KB  median {:8.3} ms  p90 {:8.3} ms  ({runs} runs)",
            bytes.len() / 1024,
            ms(times[runs / 2]),
            ms(times[runs * 9 / 10]),
        );
    }
}
