//! The typed bodies against the JSON the handlers built by hand before they existed: the same
//! bytes, field for field, `null` for `null` and absent for absent.

use serde_json::{Value, json};

use super::*;
use crate::engine::ClassScore;

/// The hand-built bodies, verbatim, as the reference the types must match.
mod before {
    use super::*;

    fn round_to(value: f64, decimals: i32) -> f64 {
        let scale = 10f64.powi(decimals);
        (value * scale).round() / scale
    }

    pub fn prediction_json(prediction: &Prediction, top_k: usize) -> Value {
        json!({
            "model": prediction.model,
            "label": prediction.label,
            "class_index": prediction.class_index,
            "score": round_to(f64::from(prediction.score), 4),
            "top_k": prediction.top_k.iter().take(top_k).collect::<Vec<_>>(),
            "inference_ms": round_to(prediction.inference_ms, 2),
        })
    }

    pub fn predict_body(sync: &Prediction, top_k: usize, queued: Result<Uuid, String>) -> Value {
        let mut body = json!({
            "job_id": null,
            "result_sync": sync.label,
            "sync": prediction_json(sync, top_k),
            "status_url": null,
        });
        match queued {
            Ok(id) => {
                body["job_id"] = json!(id);
                body["status_url"] = json!(format!("/job/{id}"));
            }
            Err(err) => body["async_error"] = json!(err),
        }
        body
    }

    pub fn job_body(record: &JobRecord, top_k: usize) -> Value {
        let completed = record.status == JobStatus::Completed;
        let prediction = match (&record.result, completed) {
            (Some(result), true) => result.label.clone(),
            _ => String::new(),
        };
        let mut body = json!({
            "job_id": record.id,
            "prediction": prediction,
            "status": serde_json::to_value(record.status).expect("status"),
            "sync": prediction_json(&record.fast, top_k),
            "attempts": record.attempts,
            "created_at": format_ms(record.created_at_ms),
        });
        if let Some(queue_ms) = record.queue_ms() {
            body["queue_ms"] = json!(queue_ms);
        }
        if let (Some(result), true) = (&record.result, completed) {
            body["result"] = prediction_json(result, top_k);
            body["agrees_with_sync"] = json!(result.class_index == record.fast.class_index);
            // Added with the result cache and the cascade (issue 18): where the result came from.
            body["result_source"] = json!(record.source.as_str());
            body["refined"] = json!(record.source.is_refined());
            body["inference_ms"] = json!(round_to(result.inference_ms, 2));
        }
        if let Some(at) = record.completed_at_ms {
            body["completed_at"] = json!(format_ms(at));
        }
        if let Some(error) = &record.error {
            body["error"] = json!(error);
        }
        body
    }
}

fn prediction(model: &str, scores: &[f32], inference_ms: f64) -> Prediction {
    let top_k: Vec<ClassScore> = scores
        .iter()
        .enumerate()
        .map(|(i, &score)| ClassScore { label: format!("class {i}"), class_index: i * 7, score })
        .collect();
    Prediction {
        model: model.to_owned(),
        label: top_k[0].label.clone(),
        class_index: top_k[0].class_index,
        score: top_k[0].score,
        top_k,
        inference_ms,
        probabilities: None,
    }
}

/// Scores whose `f32` and `f64` texts differ, a value that rounds, and the odd ones.
fn predictions() -> Vec<Prediction> {
    vec![
        prediction("mobilenet_v2.onnx", &[0.1, 0.033_333_33, 0.012_345_678, 1e-7, 0.0], 12.345_678),
        prediction("efficientnet_lite2.onnx", &[0.999_95, 0.000_05], 0.004_9),
        prediction("m.onnx", &[f32::NAN, f32::INFINITY], f64::NAN),
        prediction("m.onnx", &[1.0], 1e12),
    ]
}

fn same_bytes(typed: &impl Serialize, hand_built: &Value) {
    let typed = serde_json::to_string(typed).expect("serialize");
    assert_eq!(typed, hand_built.to_string());
}

#[test]
fn a_prediction_is_the_hand_built_json_for_every_top_k() {
    for p in predictions() {
        for k in [1, 2, 5, 10] {
            same_bytes(&PredictionBody::new(&p, k), &before::prediction_json(&p, k));
        }
    }
}

#[test]
fn a_predict_answer_is_the_hand_built_json_queued_or_not() {
    let id = Uuid::new_v4();
    for p in predictions() {
        same_bytes(&PredictResponse::new(&p, 5, Some(id), None), &before::predict_body(&p, 5, Ok(id)));
        let refused = "the job queue is full (10 jobs)".to_owned();
        same_bytes(
            &PredictResponse::new(&p, 3, None, Some(refused.clone())),
            &before::predict_body(&p, 3, Err(refused)),
        );
    }
}

#[test]
fn a_job_is_the_hand_built_json_in_every_state() {
    let [fast, accurate, ..] = <[Prediction; 4]>::try_from(predictions()).expect("four");
    let mut record = JobRecord::new(Uuid::new_v4(), fast, 1_700_000_000_123);
    let mut states = vec![record.clone()];
    record.status = JobStatus::Running;
    record.attempts = 1;
    record.started_at_ms = Some(1_700_000_000_500);
    states.push(record.clone());
    record.error = Some("inference failed: boom".into());
    states.push(record.clone());
    // A result kept on a record that is not completed is not shown.
    record.result = Some(accurate.clone());
    record.status = JobStatus::Failed;
    record.completed_at_ms = Some(1_700_000_001_000);
    states.push(record.clone());
    record.status = JobStatus::Completed;
    record.error = None;
    states.push(record.clone());
    for record in &states {
        for k in [1, 5] {
            same_bytes(&JobResponse::new(record, k), &before::job_body(record, k));
        }
    }
}

#[test]
fn every_body_reads_back_as_its_type() {
    // Scores exact in binary: serde_json's default float parsing may be off in the last digit.
    let p = &prediction("m.onnx", &[0.5, 0.25, 0.125], 1.5);
    let answer = PredictResponse::new(p, 5, Some(Uuid::new_v4()), None);
    let text = serde_json::to_string(&answer).expect("serialize");
    let read: PredictResponse = serde_json::from_str(&text).expect("deserialize");
    assert_eq!(read, answer);
    let mut record = JobRecord::new(Uuid::new_v4(), p.clone(), 1_700_000_000_000);
    record.status = JobStatus::Completed;
    record.result = Some(p.clone());
    record.started_at_ms = Some(1_700_000_000_010);
    record.completed_at_ms = Some(1_700_000_000_020);
    let job = JobResponse::new(&record, 2);
    let read: JobResponse = serde_json::from_str(&serde_json::to_string(&job).expect("serialize")).expect("read");
    assert_eq!(read, job);
}

#[test]
fn errors_and_health_bodies_keep_their_shapes() {
    same_bytes(
        &ErrorBody::new("not_found", "no route /x"),
        &json!({"error": {"code": "not_found", "message": "no route /x"}}),
    );
    same_bytes(&Health::new("healthy"), &json!({"status": "healthy"}));
    let ready = Ready { status: "ready".into(), queue: "redis".into(), workers: Workers { live: 0 }, warning: None };
    same_bytes(&ready, &json!({"status": "ready", "queue": "redis", "workers": {"live": 0}}));
    let warned = Ready { warning: Some("no live worker".into()), ..ready };
    same_bytes(
        &warned,
        &json!({"status": "ready", "queue": "redis", "workers": {"live": 0}, "warning": "no live worker"}),
    );
    let not_ready = NotReady {
        error: ErrorDetail::new("queue_unavailable", "down"),
        status: "not_ready".into(),
        queue: "redis".into(),
    };
    same_bytes(
        &not_ready,
        &json!({"error": {"code": "queue_unavailable", "message": "down"}, "status": "not_ready", "queue": "redis"}),
    );
}
