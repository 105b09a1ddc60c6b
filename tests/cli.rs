//! `tandem classify` and `tandem eval` as a user runs them.

mod common;

use std::process::Command;

use serde_json::Value;

fn tandem(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tandem")).args(args).output().expect("run tandem");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `tandem eval DIR --labels LABELS --json` with the shared models, EfficientNet-Lite2 as the
/// accurate tier, and `extra` flags.
fn eval_json(dir: &std::path::Path, labels: &std::path::Path, extra: &[&str]) -> (bool, String, String) {
    let models = common::models_dir().display().to_string();
    let (dir, labels) = (dir.display().to_string(), labels.display().to_string());
    let mut args = vec!["eval", &dir, "--labels", &labels, "--model-dir", &models];
    args.extend(["--accurate-model", "efficientnet_lite2.onnx", "--json"]);
    args.extend_from_slice(extra);
    tandem(&args)
}

#[test]
fn classify_json_gives_a_line_per_image_and_fails_on_a_bad_one() {
    let models = common::models_dir().display().to_string();
    let good = common::images_dir().join("sample_04.jpg").display().to_string();
    let bad = common::images_dir().join("bad_inputs/not_an_image.png").display().to_string();
    let (ok, stdout, stderr) = tandem(&["classify", "--model-dir", &models, "--json", "--top-k", "3", &good, &bad]);
    assert!(!ok, "a failed image makes the exit status non-zero");
    let lines: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(lines.len(), 2, "{stdout}{stderr}");
    assert_eq!(lines[0]["file"], good.as_str());
    assert_eq!(lines[0]["model"], "mobilenet_v2.onnx");
    assert_eq!(lines[0]["top_k"][0]["class_index"], 407, "ambulance: {stdout}");
    assert_eq!(lines[0]["top_k"].as_array().map(Vec::len), Some(3));
    assert_eq!(lines[1]["file"], bad.as_str());
    assert!(lines[1]["error"].as_str().is_some_and(|e| e.contains("not an image")), "{stdout}");
}

#[test]
fn classify_with_the_accurate_tier_prints_text() {
    let models = common::models_dir().display().to_string();
    let photo = common::images_dir().join("sample_02.jpg").display().to_string();
    let (ok, stdout, stderr) = tandem(&[
        "classify",
        "--model-dir",
        &models,
        "--accurate-model",
        "efficientnet_lite2.onnx",
        "--tier",
        "accurate",
        &photo,
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("efficientnet_lite2.onnx") && stdout.contains("teapot"), "{stdout}");
}

#[test]
fn a_missing_model_is_one_clear_line() {
    let (ok, _, stderr) = tandem(&["classify", "--model-dir", "/nonexistent", "x.jpg"]);
    assert!(!ok);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/nonexistent") && !stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_missing_labels_file_is_one_line_with_its_cause_once_and_a_hint() {
    let dir = std::env::temp_dir().join(format!("tandem-no-models-{}", uuid::Uuid::new_v4().simple()));
    let (ok, _, stderr) = tandem(&["classify", "--model-dir", &dir.display().to_string(), "x.jpg"]);
    assert!(!ok);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&format!("labels file {}/imagenet_classes.txt not found", dir.display())), "{stderr}");
    assert!(stderr.contains("tandem models pull") && stderr.contains("TANDEM_MODEL_DIR"), "{stderr}");
    assert!(!stderr.contains("os error"), "no raw I/O error, and never twice: {stderr}");
}

/// `--model-dir` was given and exists: the hint names the tier's flag and what is there.
#[test]
fn a_missing_model_in_an_existing_directory_names_the_tier_flag_and_the_models_there() {
    let models = common::models_dir().display().to_string();
    let photo = common::images_dir().join("sample_01.jpg").display().to_string();
    let (ok, _, stderr) = tandem(&["classify", "--tier", "accurate", "--model-dir", &models, &photo]);
    assert!(!ok);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&format!("accurate-tier model file {models}/resnet50.onnx not found")), "{stderr}");
    assert!(stderr.contains("pass --accurate-model (or TANDEM_ACCURATE_MODEL)"), "{stderr}");
    assert!(stderr.contains("efficientnet_lite2.onnx") && stderr.contains("mobilenet_v2.onnx"), "{stderr}");
    assert!(!stderr.contains("models pull"), "the directory is not empty: {stderr}");
}

#[test]
fn a_text_file_as_model_is_named_not_an_onnx_model_and_a_class_mismatch_names_the_labels() {
    let dir = std::env::temp_dir().join(format!("tandem-bad-model-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let text = dir.join("notes.onnx");
    std::fs::write(&text, "this is a text file, not a model\n").expect("write");
    let three = dir.join("three.txt");
    std::fs::write(&three, "a\nb\nc\n").expect("write");
    let models = common::models_dir().display().to_string();
    let photo = common::images_dir().join("sample_01.jpg").display().to_string();

    let text_arg = text.display().to_string();
    let (ok, _, not_onnx) = tandem(&["classify", "--model-dir", &models, "--fast-model", &text_arg, &photo]);
    assert!(!ok);
    let three_arg = three.display().to_string();
    let (ok2, _, mismatch) = tandem(&["classify", "--model-dir", &models, "--labels", &three_arg, &photo]);
    let _ = std::fs::remove_dir_all(&dir);

    assert!(!ok2);
    assert!(not_onnx.contains(&format!("{text_arg} is not an ONNX model")), "{not_onnx}");
    assert!(!not_onnx.contains("Protobuf"), "{not_onnx}");
    assert!(mismatch.contains(&format!("1000 classes but the labels file {three_arg} has 3 lines")), "{mismatch}");
}

/// `--mean`/`--std` take the documented `R,G,B` form, as the environment variables do.
#[test]
fn mean_and_std_take_the_documented_comma_form() {
    let models = common::models_dir().display().to_string();
    let photo = common::images_dir().join("sample_04.jpg").display().to_string();
    let (ok, stdout, stderr) = tandem(&["classify", "--model-dir", &models, "--mean", "0.5,0.5,0.5", "--json", &photo]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("\"top_k\""), "{stdout}");
    let (ok, _, stderr) = tandem(&["classify", "--model-dir", &models, "--mean", "0.5", "0.5", "0.5", &photo]);
    assert!(!ok && stderr.contains("three comma-separated numbers"), "{stderr}");
}

#[test]
fn eval_reports_both_tiers_and_lists_unreadable_images() {
    // The shared labels plus one listed file that is not an image.
    let dir = std::env::temp_dir().join(format!("tandem-eval-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut csv = std::fs::read_to_string(common::images_dir().join("labels.csv")).expect("labels.csv");
    for line in csv.lines().skip(1) {
        let file = line.split(',').next().expect("file column");
        std::fs::copy(common::images_dir().join(file), dir.join(file)).expect("copy photo");
    }
    std::fs::write(dir.join("broken.jpg"), b"not a jpeg").expect("write");
    csv.push_str("broken.jpg,1,n0,x\n");
    let labels = dir.join("labels.csv");
    std::fs::write(&labels, csv).expect("write labels");

    let (ok, stdout, stderr) = eval_json(&dir, &labels, &[]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ok, "{stderr}");
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| panic!("JSON: {stdout}"));
    assert_eq!(report["images"], 20);
    assert_eq!(report["unreadable"], serde_json::json!(["broken.jpg"]));
    // Expected figures follow from golden.csv (both tiers' reference top-1 and top-5) and the truth.
    let golden = common::golden();
    let labels_truth = std::fs::read_to_string(common::images_dir().join("labels.csv")).expect("labels.csv");
    let truth_of = |file: &str| -> usize {
        labels_truth
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{file},")).and_then(|rest| rest.split(',').next()?.parse().ok()))
            .expect("file in labels.csv")
    };
    let top1_of = |model: &str| -> std::collections::HashMap<String, usize> {
        golden.iter().filter(|g| g.model == model).map(|g| (g.file.clone(), g.top1)).collect()
    };
    let (fast, accurate) = (top1_of("mobilenet_v2.onnx"), top1_of("efficientnet_lite2.onnx"));
    let count = |f: &dyn Fn(&str, usize, usize, usize) -> bool| {
        fast.keys().filter(|file| f(file, truth_of(file), fast[*file], accurate[*file])).count() as f64
    };
    let expected_fast_top1 = count(&|_, t, f, _| f == t) / 20.0;
    let expected_accurate_top1 = count(&|_, t, _, a| a == t) / 20.0;
    let expected_agreement = count(&|_, _, f, a| f == a) / 20.0;
    let expected_fixed = count(&|_, t, f, a| f != t && a == t) as u64;
    let expected_broken = count(&|_, t, f, a| f == t && a != t) as u64;
    let close = |v: &Value, want: f64| v.as_f64().is_some_and(|x| (x - want).abs() < 1e-9);
    assert!(close(&report["tiers"]["fast"]["top1"], expected_fast_top1), "{report}");
    assert!(close(&report["tiers"]["accurate"]["top1"], expected_accurate_top1), "{report}");
    assert!(close(&report["agreement"], expected_agreement), "{report}");
    for tier in ["fast", "accurate"] {
        let t = &report["tiers"][tier];
        assert!(t["top5"].as_f64().is_some_and(|v| v >= 0.95), "{tier}: {report}");
        assert!(t["p50_ms"].as_f64().is_some_and(|v| v > 0.0) && t["p99_ms"].as_f64() >= t["p50_ms"].as_f64());
    }
    assert_eq!(report["tiers"]["accurate"]["model"], "efficientnet_lite2.onnx");
    assert_eq!((report["fixed"].as_u64(), report["broken"].as_u64()), (Some(expected_fixed), Some(expected_broken)));
}

/// `eval --cascade` against a reference computed here from `golden.csv` (Pillow + ONNX Runtime
/// probabilities): per threshold, the images whose fast top-1 probability reaches it are kept
/// at their fast answer, the rest take the accurate one. A threshold within 0.002 of a photo's
/// reference probability is left out (the two preprocessings may round it to either side);
/// most are not.
#[test]
fn eval_cascade_matches_a_reference_from_golden() {
    let images = common::images_dir();
    let labels = images.join("labels.csv");
    let (ok, stdout, stderr) = eval_json(&images, &labels, &["--cascade"]);
    assert!(ok, "{stderr}");
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| panic!("JSON: {stdout}"));
    let truth_text = std::fs::read_to_string(&labels).expect("labels.csv");
    let truth: std::collections::HashMap<String, usize> = truth_text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split(',');
            Some((f.next()?.to_owned(), f.next()?.parse().ok()?))
        })
        .collect();
    let golden = common::golden();
    let row = |file: &str, model: &str| golden.iter().find(|g| g.file == file && g.model == model).expect("golden row");
    let photos: Vec<(f32, bool, bool)> = truth
        .iter()
        .map(|(file, &t)| {
            let fast = row(file, "mobilenet_v2.onnx");
            let accurate = row(file, "efficientnet_lite2.onnx");
            (fast.top5[0].1, fast.top1 == t, accurate.top1 == t)
        })
        .collect();
    let n = photos.len() as f64;
    let curve = report["cascade"].as_array().expect("cascade curve");
    assert_eq!(curve.len(), 20, "0.05 to 0.95 and 0.99: {report}");
    let mut compared = 0;
    for point in curve {
        let t = point["threshold"].as_f64().expect("threshold");
        if photos.iter().any(|(p, _, _)| (f64::from(*p) - t).abs() < 0.002) {
            continue;
        }
        compared += 1;
        let skipped = photos.iter().filter(|(p, _, _)| f64::from(*p) >= t).count() as f64 / n;
        let top1 = photos
            .iter()
            .filter(|(p, fast_right, accurate_right)| if f64::from(*p) >= t { *fast_right } else { *accurate_right })
            .count() as f64
            / n;
        let close = |v: &Value, want: f64| v.as_f64().is_some_and(|x| (x - want).abs() < 1e-9);
        assert!(close(&point["skipped"], skipped), "threshold {t}: skipped {} vs {skipped}", point["skipped"]);
        assert!(close(&point["top1"], top1), "threshold {t}: top-1 {} vs {top1}", point["top1"]);
    }
    assert!(compared >= 15, "only {compared} thresholds were clear of the photos' probabilities");
    // The accurate tier is no better than the fast one on these photos (golden.csv), so there is
    // no gain to keep, and the recommendation is the threshold that skips most at no loss.
    let (fast_hits, accurate_hits) = photos.iter().fold((0, 0), |(f, a), p| (f + p.1 as u32, a + p.2 as u32));
    if accurate_hits <= fast_hits {
        assert!(curve.iter().all(|p| p["gain_kept"].is_null()), "{report}");
        assert_eq!(report["recommended_threshold"], serde_json::json!(0.05), "{report}");
    } else {
        assert!(curve.iter().all(|p| p["gain_kept"].is_number()), "{report}");
    }
}
