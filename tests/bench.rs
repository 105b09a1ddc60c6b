//! `tandem bench` as a real process: raw ONNX Runtime timing, HTTP load with a health mix, and
//! jobs mode against a real `tandem serve`.

mod common;

use std::process::Command;

use common::{Tandem, images_dir, models_dir};
use serde_json::Value;

/// Runs `tandem bench` with `args`, expects success and one JSON object on stdout.
fn bench(args: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .arg("bench")
        .args(args)
        .env("TANDEM_LOG", "warn,ort=warn")
        .output()
        .expect("run tandem bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "tandem bench {args:?} failed: {}\nstdout: {stdout}\nstderr: {stderr}",
        output.status
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not one JSON object ({e}): {stdout}"))
}

fn sample() -> String {
    images_dir().join("sample_01.jpg").display().to_string()
}

#[test]
fn raw_mode_times_each_lane_count_and_batch_size() {
    let models = models_dir().display().to_string();
    let image = sample();
    let report = bench(&[
        "--raw",
        "--json",
        "--image",
        &image,
        "--model-dir",
        &models,
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--batch",
        "1,2",
        "--lanes",
        "1,2",
    ]);
    assert_eq!(report["mode"], "raw");
    assert_eq!(report["tier"], "fast");
    assert_eq!(report["model"], "mobilenet_v2.onnx");
    assert!(report["preprocess"]["p50_ms"].as_f64().unwrap() > 0.0, "{report}");
    let batches = report["batches"].as_array().expect("batches");
    let sizes: Vec<(u64, u64)> =
        batches.iter().map(|b| (b["lanes"].as_u64().unwrap(), b["batch"].as_u64().unwrap())).collect();
    assert_eq!(sizes, [(1, 1), (1, 2), (2, 1), (2, 2)], "{report}");
    for b in batches {
        assert!(b["runs"].as_u64().unwrap() >= 1, "{b}");
        assert!(b["p50_ms"].as_f64().unwrap() > 0.0, "{b}");
        assert!(b["images_per_s"].as_f64().unwrap() > 0.0, "{b}");
    }
    assert!([1, 2].contains(&report["best"]["batch"].as_u64().unwrap()), "{report}");
    assert!([1, 2].contains(&report["best"]["lanes"].as_u64().unwrap()), "{report}");
}

#[test]
fn http_load_reports_predict_and_health_separately() {
    let server = Tandem::serve(&[]);
    let image = sample();
    let report = bench(&[
        "--url",
        &server.base,
        "--image",
        &image,
        "--concurrency",
        "2",
        "--duration",
        "2",
        "--warmup",
        "0.5",
        "--mix",
        "health:1",
        "--json",
    ]);
    assert_eq!(report["mode"], "http");
    for route in ["predict", "health"] {
        let r = &report["routes"][route];
        assert!(r["ok"].as_u64().unwrap() > 0, "{route}: {report}");
        assert_eq!(r["errors"], 0, "{route}: {report}");
        assert!(r["throughput_rps"].as_f64().unwrap() > 0.0, "{route}: {report}");
        assert!(r["latency"]["p50_ms"].as_f64().unwrap() > 0.0, "{route}: {report}");
        assert!(r["latency"]["p99_ms"].as_f64() >= r["latency"]["p50_ms"].as_f64(), "{route}: {report}");
    }
    assert_eq!(report["routes"]["predict"]["connections"], 2);
    assert_eq!(report["routes"]["health"]["connections"], 1);
}

#[test]
fn jobs_mode_follows_every_job_to_completion() {
    let server = Tandem::serve(&[]);
    let image = sample();
    let report = bench(&[
        "--url",
        &server.base,
        "--image",
        &image,
        "--jobs",
        "20",
        "--concurrency",
        "4",
        "--job-timeout",
        "120",
        "--json",
    ]);
    assert_eq!(report["mode"], "jobs");
    assert_eq!(report["queued"], 20, "{report}");
    assert_eq!(report["completed"], 20, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["timed_out"], 0, "{report}");
    assert!(report["jobs_per_s"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["job_latency"]["p50_ms"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["server_inference_ms"]["p50_ms"].as_f64().unwrap() > 0.0, "{report}");
}

#[test]
fn bad_flag_combinations_are_refused() {
    let image = sample();
    for args in [
        vec!["--raw", "--url", "http://127.0.0.1:1", "--image", image.as_str()],
        vec!["--url", "http://127.0.0.1:1", "--image", image.as_str(), "--mix", "health"],
        vec!["--image", image.as_str()],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_tandem")).arg("bench").args(&args).output().expect("run");
        assert!(!output.status.success(), "{args:?} should be refused");
    }
}
