//! Spending the accurate tier only where it changes the answer, against real `tandem` processes
//! in embedded mode and on Redis: the cascade (`--refine-below`), the result cache and the
//! in-flight dedupe (`--cache-ttl`). Whether a job reached the accurate tier is read where it
//! happens: the worker's own `tandem_job_attempts_total`.

mod common;

use std::time::{Duration, Instant};

use common::{
    Tandem, agent, as_job, get_json, images_dir, job_id, models_dir, predict, redis_url, unique_prefix,
    wait_for_job_done,
};
use tandem::api::types::PredictResponse;
use tandem::jobs::{JobStatus, ResultSource};

/// MobileNet v2 is sure of this one (top-1 about 0.94, `golden.csv`)...
const CONFIDENT: &str = "sample_04.jpg";
/// ...and unsure of this one (about 0.30).
const UNSURE: &str = "sample_15.jpg";

fn photo(file: &str) -> Vec<u8> {
    std::fs::read(images_dir().join(file)).expect("photo")
}

fn post(base: &str, image: &[u8]) -> PredictResponse {
    predict(&format!("{base}/predict"), "image/jpeg", image)
}

/// The sum of a metric's series whose labels contain `labels` (`""`: all of them).
fn metric(base: &str, name: &str, labels: &str) -> f64 {
    let text =
        agent().get(&format!("{base}/metrics")).call().expect("metrics").into_body().read_to_string().expect("text");
    text.lines()
        .filter(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
        .filter(|line| line.contains(labels))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One deployment under test: a `serve`, and where its accurate tier runs (itself, or a
/// Redis worker with its own `/metrics`).
struct Deployment {
    serve: Tandem,
    worker: Option<Tandem>,
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Embedded,
    Redis,
}

impl Deployment {
    fn start(mode: Mode, extra: &[&str]) -> Self {
        match mode {
            Mode::Embedded => Self { serve: Tandem::serve(extra), worker: None },
            Mode::Redis => {
                let (url, prefix) = (redis_url(), unique_prefix("refine"));
                let queue = ["--redis-url", url.as_str(), "--redis-prefix", prefix.as_str()];
                let worker = Tandem::worker_http(&queue);
                Self { serve: Tandem::serve(&[&queue[..], extra].concat()), worker: Some(worker) }
            }
        }
    }

    fn base(&self) -> &str {
        &self.serve.base
    }

    /// Attempts the accurate tier has started, as its worker counts them.
    fn accurate_runs(&self) -> f64 {
        let at = self.worker.as_ref().map_or(self.base(), |w| w.base.as_str());
        metric(at, "tandem_job_attempts_total", "")
    }
}

fn the_cascade_finishes_a_confident_image_and_refines_an_unsure_one(mode: Mode) {
    let deployment = Deployment::start(mode, &["--refine-below", "0.7"]);
    let base = deployment.base();

    let confident = post(base, &photo(CONFIDENT));
    assert!(confident.is_final, "{mode:?}: a fast score of {} ≥ 0.7 is final: {confident:?}", confident.sync.score);
    assert_eq!(confident.result_source, Some(ResultSource::Cascade));
    assert_eq!(confident.result.as_ref().map(|r| &r.label), Some(&confident.sync.label));
    // Its job, read at once: completed, with the fast label, and says it was not refined.
    let (status, body) = get_json(&format!("{base}/job/{}", job_id(&confident)));
    assert_eq!(status, 200, "{body}");
    let job = as_job(&body);
    assert_eq!(
        (job.status, job.result_source, job.refined),
        (JobStatus::Completed, Some(ResultSource::Cascade), Some(false))
    );
    assert_eq!(job.prediction, confident.sync.label);

    let unsure = post(base, &photo(UNSURE));
    assert!(!unsure.is_final && unsure.result.is_none(), "{mode:?}: a fast score of {} is refined", unsure.sync.score);
    let refined = wait_for_job_done(base, &job_id(&unsure), Duration::from_secs(60));
    assert_eq!(
        (refined.status, refined.result_source, refined.refined),
        (JobStatus::Completed, Some(ResultSource::Worker), Some(true))
    );
    assert_eq!(refined.result.map(|r| r.model), Some("efficientnet_lite2.onnx".to_owned()));

    // The confident image was posted first: had it been queued, the worker would have run it
    // first. Exactly one run: the unsure image's.
    assert_eq!(deployment.accurate_runs(), 1.0, "{mode:?}: only the unsure image reached the accurate tier");
    assert_eq!(metric(base, "tandem_cascade_decisions_total", "refined=\"false\""), 1.0);
    assert_eq!(metric(base, "tandem_cascade_decisions_total", "refined=\"true\""), 1.0);
}

#[test]
fn the_cascade_finishes_a_confident_image_and_refines_an_unsure_one_embedded() {
    the_cascade_finishes_a_confident_image_and_refines_an_unsure_one(Mode::Embedded);
}

#[test]
fn the_cascade_finishes_a_confident_image_and_refines_an_unsure_one_on_redis() {
    the_cascade_finishes_a_confident_image_and_refines_an_unsure_one(Mode::Redis);
}

/// The same photo twice: the second answer carries the accurate result, with no second run;
/// then 20 copies of another at once: one run, and 20 jobs that all resolve to its result.
fn repeated_images_run_the_accurate_tier_once(mode: Mode) {
    let deployment = Deployment::start(mode, &["--cache-ttl", "600"]);
    let base = deployment.base();
    let first = post(base, &photo("sample_01.jpg"));
    assert!(!first.is_final);
    let refined = wait_for_job_done(base, &job_id(&first), Duration::from_secs(60));
    let refined_label = refined.result.as_ref().map(|r| r.label.clone()).expect("a result");

    let again = post(base, &photo("sample_01.jpg"));
    assert!(again.is_final, "{mode:?}: the accurate result is cached: {again:?}");
    assert_eq!(again.result_source, Some(ResultSource::Cache));
    let cached = again.result.as_ref().expect("the cached result");
    assert_eq!((&cached.label, cached.model.as_str()), (&refined_label, "efficientnet_lite2.onnx"));
    let job = as_job(&get_json(&format!("{base}/job/{}", job_id(&again))).1);
    assert_eq!((job.status, job.result_source, job.attempts), (JobStatus::Completed, Some(ResultSource::Cache), 0));
    assert_eq!(deployment.accurate_runs(), 1.0, "{mode:?}: no second run for the same bytes");
    assert_eq!(metric(base, "tandem_cache_requests_total", "tier=\"fast\",result=\"hit\""), 1.0);
    assert_eq!(metric(base, "tandem_cache_requests_total", "tier=\"accurate\",result=\"hit\""), 1.0);

    // 20 at once, from 20 threads.
    let image = photo("sample_02.jpg");
    let posts: Vec<_> = (0..20)
        .map(|_| {
            let (base, image) = (base.to_owned(), image.clone());
            std::thread::spawn(move || post(&base, &image))
        })
        .collect();
    let answers: Vec<PredictResponse> = posts.into_iter().map(|t| t.join().expect("post")).collect();
    let mut labels = Vec::new();
    for answer in &answers {
        let done = wait_for_job_done(base, &job_id(answer), Duration::from_secs(60));
        assert_eq!(done.status, JobStatus::Completed, "{mode:?}: {done:?}");
        labels.push(done.result.map(|r| r.label).expect("a result"));
    }
    labels.dedup();
    assert_eq!(labels.len(), 1, "{mode:?}: every job resolves to the one result: {labels:?}");
    assert_eq!(deployment.accurate_runs(), 2.0, "{mode:?}: one run for the 20 copies");
    let shared = metric(base, "tandem_jobs_deduplicated_total", "");
    let hits = metric(base, "tandem_cache_requests_total", "tier=\"accurate\",result=\"hit\"") - 1.0;
    assert_eq!(shared + hits, 19.0, "{mode:?}: the 19 others shared the run ({shared}) or found its result ({hits})");
}

#[test]
fn repeated_images_run_the_accurate_tier_once_embedded() {
    repeated_images_run_the_accurate_tier_once(Mode::Embedded);
}

/// On Redis the cache outlives a `serve`; and a changed accurate model file (a new identity,
/// announced by its worker) never gets the old model's answers.
#[test]
fn repeated_images_run_the_accurate_tier_once_on_redis_and_the_cache_outlives_serve_but_not_the_model() {
    // The accurate model is a copy, so that it can change on disk.
    let dir = std::env::temp_dir().join(unique_prefix("refine-models"));
    std::fs::create_dir_all(&dir).expect("model dir");
    for file in ["mobilenet_v2.onnx", "imagenet_classes.txt"] {
        std::fs::copy(models_dir().join(file), dir.join(file)).expect("copy");
    }
    let accurate = dir.join("accurate.onnx");
    std::fs::copy(models_dir().join("efficientnet_lite2.onnx"), &accurate).expect("copy");
    let model_dir = dir.display().to_string();
    let models = ["--model-dir", model_dir.as_str(), "--accurate-model", "accurate.onnx", "--intra-threads", "1"];

    let prefix = unique_prefix("refine-redis");
    let url = redis_url();
    let queue = ["--redis-url", url.as_str(), "--redis-prefix", prefix.as_str()];
    let serve_args = |extra: &[&'static str]| [&queue[..], &models[..], extra].concat();
    let worker_args = [&queue[..], &models[..]].concat();
    let mut worker = Tandem::http_without_model_args("worker", &worker_args);
    let mut serve = Tandem::http_without_model_args("serve", &serve_args(&["--cache-ttl", "600"]));
    let first = post(&serve.base, &photo("sample_01.jpg"));
    let refined = wait_for_job_done(&serve.base, &job_id(&first), Duration::from_secs(60));
    assert_eq!(refined.result_source, Some(ResultSource::Worker));

    // A new serve process: the cache is in Redis.
    serve.terminate(Duration::from_secs(10));
    let serve = Tandem::http_without_model_args("serve", &serve_args(&["--cache-ttl", "600"]));
    let again = post(&serve.base, &photo("sample_01.jpg"));
    assert_eq!((again.is_final, again.result_source), (true, Some(ResultSource::Cache)), "{again:?}");
    assert_eq!(metric(&worker.base, "tandem_job_attempts_total", ""), 1.0);

    // The model file changes on disk (another model under the same name) and its worker restarts.
    worker.terminate(Duration::from_secs(10));
    std::fs::copy(models_dir().join("mobilenet_v2.onnx"), &accurate).expect("replace the model");
    let announced = announced_model(&url, &prefix);
    let worker = Tandem::http_without_model_args("worker", &worker_args);
    let deadline = Instant::now() + Duration::from_secs(20);
    while announced_model(&url, &prefix) == announced {
        assert!(Instant::now() < deadline, "the new worker announces its model");
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = post(&serve.base, &photo("sample_01.jpg"));
    assert!(!after.is_final, "no answer of the old model is served for the new one: {after:?}");
    let rerun = wait_for_job_done(&serve.base, &job_id(&after), Duration::from_secs(60));
    assert_eq!(rerun.result_source, Some(ResultSource::Worker));
    assert_eq!(metric(&worker.base, "tandem_job_attempts_total", ""), 1.0, "the new model ran it");
    drop(worker);
    let _ = std::fs::remove_dir_all(&dir);

    // And the dedupe, on Redis.
    repeated_images_run_the_accurate_tier_once(Mode::Redis);
}

fn announced_model(url: &str, prefix: &str) -> Option<String> {
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client.get_connection().expect("connect");
    redis::cmd("GET").arg(format!("{prefix}:accurate_model")).query(&mut conn).expect("GET")
}
