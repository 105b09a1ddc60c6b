//! Both real models on the 20 shared photos, against Pillow + ONNX Runtime reference top-5s.

mod common;

use std::sync::Arc;

use tandem::engine::{BatchConfig, Classifier, ClassifyError, DecodeOn, ModelConfig, Prediction, Spin};
use tandem::labels::Labels;
use tandem::pipeline::ImageError;
use tandem::pipeline::PreprocessConfig;

const TOLERANCE: f32 = 0.02;

fn classifier(model: &str, max_batch: usize) -> Classifier {
    // All 1000 probabilities, so each reference class can be looked up whatever its rank.
    classifier_with(model, BatchConfig { top_k: 1000, max_batch, ..BatchConfig::default() }, Spin::Always, 1)
}

fn classifier_with(model: &str, batching: BatchConfig, spin: Spin, lanes: usize) -> Classifier {
    let labels = Arc::new(Labels::load(&common::models_dir().join("imagenet_classes.txt")).expect("labels"));
    let config = ModelConfig {
        path: common::models_dir().join(model),
        labels,
        preprocess: PreprocessConfig::default(),
        intra_threads: 2,
        spin,
        lanes,
    };
    Classifier::start(config, batching).expect("model loads")
}

fn check_model(model: &str) {
    let rows: Vec<_> = common::golden().into_iter().filter(|g| g.model == model).collect();
    assert_eq!(rows.len(), 20, "golden.csv should have 20 rows for {model}");
    let classifier = classifier(model, 1);
    let mut failures = Vec::new();
    let mut worst = 0.0f32;
    for row in &rows {
        let bytes = std::fs::read(common::images_dir().join(&row.file)).expect("photo");
        let prediction = classifier.classify_blocking(&bytes).expect("classify");
        if prediction.class_index != row.top1 {
            failures.push(format!("{}: top-1 {} != reference {}", row.file, prediction.class_index, row.top1));
        }
        for &(class, reference) in &row.top5 {
            let ours = prediction.top_k.iter().find(|c| c.class_index == class).map_or(0.0, |c| c.score);
            worst = worst.max((ours - reference).abs());
            if (ours - reference).abs() > TOLERANCE {
                failures.push(format!("{}: class {class} p={ours:.5}, reference {reference:.5}", row.file));
            }
        }
    }
    eprintln!("{model}: worst top-5 probability difference {worst:.5} over {} photos", rows.len());
    assert!(failures.is_empty(), "{model} differs from golden.csv:\n{}", failures.join("\n"));
}

#[test]
fn mobilenet_v2_matches_golden() {
    check_model("mobilenet_v2.onnx");
}

#[test]
fn efficientnet_lite2_matches_golden() {
    check_model("efficientnet_lite2.onnx");
}

/// A batch of several images gives the same answers as one at a time.
#[test]
fn batched_inference_matches_single() {
    let single = classifier("mobilenet_v2.onnx", 1);
    let batched = classifier("mobilenet_v2.onnx", 8);
    let photos = samples(8);
    let references: Vec<_> = photos.iter().map(|p| single.classify_blocking(p).expect("classify")).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().expect("runtime");
    runtime.block_on(check_all_at_once(&batched, &photos, &references));
}

#[test]
fn a_model_whose_classes_differ_from_its_labels_is_refused() {
    let labels = Arc::new(Labels::parse("only\ntwo\n"));
    let config = ModelConfig {
        path: common::models_dir().join("mobilenet_v2.onnx"),
        labels,
        preprocess: PreprocessConfig::default(),
        intra_threads: 1,
        spin: Spin::Off,
        lanes: 1,
    };
    let Err(err) = Classifier::start(config, BatchConfig::default()) else { panic!("mismatch accepted") };
    let message = err.to_string();
    assert!(message.contains("mobilenet_v2.onnx") && message.contains("1000") && message.contains('2'), "{message}");
}

#[test]
fn a_crop_that_does_not_fit_a_fixed_input_is_refused() {
    let labels = Arc::new(Labels::load(&common::models_dir().join("imagenet_classes.txt")).expect("labels"));
    let config = ModelConfig {
        path: common::models_dir().join("mobilenet_v2.onnx"),
        labels,
        preprocess: PreprocessConfig { resize: 292, crop: 260, ..PreprocessConfig::default() },
        intra_threads: 1,
        spin: Spin::Off,
        lanes: 1,
    };
    let Err(err) = Classifier::start(config, BatchConfig::default()) else { panic!("wrong crop accepted") };
    assert!(err.to_string().contains("224"), "{err}");
}

#[test]
fn a_file_that_is_not_a_model_is_refused_with_its_name() {
    let labels = Arc::new(Labels::parse("a\n"));
    let config = ModelConfig {
        path: common::models_dir().join("imagenet_classes.txt"),
        labels,
        preprocess: PreprocessConfig::default(),
        intra_threads: 1,
        spin: Spin::Off,
        lanes: 1,
    };
    let Err(err) = Classifier::start(config, BatchConfig::default()) else { panic!("not a model accepted") };
    assert!(err.to_string().contains("imagenet_classes.txt"), "{err}");
}

/// `sample_01.jpg` to `sample_{n}.jpg`.
fn samples(n: usize) -> Vec<Vec<u8>> {
    (1..=n).map(|i| std::fs::read(common::images_dir().join(format!("sample_{i:02}.jpg"))).expect("photo")).collect()
}

/// Classifies each photo in turn and checks it against its reference answer.
async fn check_one_at_a_time(classifier: &Classifier, photos: &[Vec<u8>], references: &[Prediction]) {
    for (photo, reference) in photos.iter().zip(references) {
        let answer = classifier.classify(photo.clone()).await.expect("classify");
        assert_eq!(answer.class_index, reference.class_index);
        assert!((answer.score - reference.score).abs() < 1e-5, "{} vs {}", answer.score, reference.score);
    }
}

/// Classifies every photo at once (so they queue up behind each other) and checks each answer.
async fn check_all_at_once(classifier: &Classifier, photos: &[Vec<u8>], references: &[Prediction]) {
    let tasks: Vec<_> = photos
        .iter()
        .cloned()
        .map(|photo| {
            let classifier = classifier.clone();
            tokio::spawn(async move { classifier.classify(photo).await })
        })
        .collect();
    for (task, reference) in tasks.into_iter().zip(references) {
        let answer = task.await.expect("join").expect("classify");
        assert_eq!(answer.class_index, reference.class_index);
        assert!((answer.score - reference.score).abs() < 1e-4);
    }
}

/// The fast tier's serving setup (decoding on the idle inference thread, spinning only in runs
/// that are alone) gives exactly the answers of the plain one, whichever thread decoded, and
/// refuses a bad image at `admit` without leaving it counted as in flight.
#[test]
fn decoding_on_the_idle_inference_thread_gives_the_same_answers() {
    let plain = classifier_with("mobilenet_v2.onnx", BatchConfig::default(), Spin::Off, 1);
    let batching = BatchConfig { max_batch: 2, decode_on: DecodeOn::InferenceThreadWhenIdle, ..BatchConfig::default() };
    let serving = classifier_with("mobilenet_v2.onnx", batching, Spin::Idle, 1);
    let photos = samples(6);
    let references: Vec<_> = photos.iter().map(|p| plain.classify_blocking(p).expect("classify")).collect();
    let bad = std::fs::read(common::images_dir().join("bad_inputs/truncated.jpg")).expect("bad input");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().expect("runtime");
    runtime.block_on(async {
        // One at a time: each is decoded on the (idle) inference thread and runs alone.
        check_one_at_a_time(&serving, &photos, &references).await;
        match serving.admit(bad.clone().into()).await {
            Err(ClassifyError::Image(ImageError::Truncated(_))) => {}
            Err(other) => panic!("a truncated JPEG gave {other}"),
            Ok(_) => panic!("a truncated JPEG was admitted"),
        }
        assert_eq!(serving.in_flight(), 0, "a refused image stays counted");
        // All at once: the later ones find the thread busy and decode on the blocking pool.
        check_all_at_once(&serving, &photos, &references).await;
        assert_eq!(serving.in_flight(), 0);
    });
}

/// Two lanes (one-thread sessions side by side, plus the whole-machine session for lone runs)
/// give exactly the answers of one plain session, one at a time and many at once, and leave
/// nothing counted in flight.
#[test]
fn lanes_give_the_same_answers_as_one_session() {
    let plain = classifier_with("mobilenet_v2.onnx", BatchConfig::default(), Spin::Off, 1);
    let batching = BatchConfig { decode_on: DecodeOn::InferenceThreadWhenIdle, ..BatchConfig::default() };
    let lanes = classifier_with("mobilenet_v2.onnx", batching, Spin::Idle, 2);
    assert_eq!((plain.lanes(), lanes.lanes()), (1, 2));
    let photos = samples(12);
    let references: Vec<_> = photos.iter().map(|p| plain.classify_blocking(p).expect("classify")).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().expect("runtime");
    runtime.block_on(async {
        check_one_at_a_time(&lanes, &photos, &references).await;
        for _ in 0..3 {
            check_all_at_once(&lanes, &photos, &references).await;
        }
        assert_eq!(lanes.in_flight(), 0);
    });
}
