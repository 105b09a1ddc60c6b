//! What only the embedded queue does; the contract both backends keep is
//! `tests/queue_contract.rs`.

use super::*;
use crate::engine::Prediction;
use bytes::Bytes;
use uuid::Uuid;

fn prediction(label: &str) -> Prediction {
    Prediction {
        model: "m".into(),
        label: label.into(),
        class_index: 1,
        score: 0.5,
        top_k: Vec::new(),
        inference_ms: 1.0,
        probabilities: None,
    }
}

/// Stages and commits a job with an image of `size` bytes.
async fn enqueue_of(q: &EmbeddedQueue, size: usize) -> Result<JobId, QueueError> {
    let id = Uuid::new_v4();
    q.stage(id, Bytes::from(vec![7; size]), now_ms()).commit(&prediction("fast"), None, None).await?;
    Ok(id)
}

/// Images of 4 bytes against a 10-byte bound: two fit; a third fits only once a job's image
/// is gone (not merely its job finished: the worker may still hold the image).
#[tokio::test]
async fn the_queue_is_bounded_in_image_bytes_and_gives_them_back_exactly() {
    let q = EmbeddedQueue::new(QueuePolicy { max_queue_bytes: 10, max_attempts: 2, ..QueuePolicy::default() });
    enqueue_of(&q, 4).await.expect("first");
    enqueue_of(&q, 4).await.expect("second");
    assert_eq!(q.held_bytes(), 8);
    let refused = enqueue_of(&q, 4).await;
    assert!(matches!(refused, Err(QueueError::FullBytes { limit: 10 })), "{refused:?}");
    assert!(refused.is_err_and(|err| err.to_string().contains("10 B")));
    enqueue_of(&q, 2).await.expect("a smaller one still fits");
    assert_eq!(q.held_bytes(), 10);

    // Completed: counted until the worker drops the image.
    let taken = q.take(1, Duration::ZERO).await.expect("take");
    q.complete(&taken[0], &prediction("a")).expect("complete");
    assert_eq!(q.held_bytes(), 10);
    drop(taken);
    assert_eq!(q.held_bytes(), 6);

    // Retried: the same buffer goes back in the queue, counted once.
    let taken = q.take(1, Duration::ZERO).await.expect("take");
    assert_eq!(q.fail(&taken[0], "boom").expect("fail"), FailOutcome::Retrying);
    drop(taken);
    assert_eq!(q.held_bytes(), 6);

    // Dead after its attempts, and a delivery dropped without an outcome: both give back.
    let rest = q.take(4, Duration::ZERO).await.expect("take");
    let retried = rest.iter().find(|d| d.attempt == 2).expect("the retried job");
    assert_eq!(q.fail(retried, "boom twice").expect("fail"), FailOutcome::Dead);
    drop(rest);
    assert_eq!(q.held_bytes(), 0);

    // An image larger than the whole bound is refused, and takes nothing.
    assert!(matches!(enqueue_of(&q, 11).await, Err(QueueError::FullBytes { .. })));
    assert_eq!(q.held_bytes(), 0);
}

#[test]
fn a_worker_counts_as_live_while_registered() {
    let q = EmbeddedQueue::new(QueuePolicy::default());
    assert_eq!(q.live_workers(), 0);
    let worker = q.register_worker();
    assert_eq!(q.live_workers(), 1);
    drop(worker);
    assert_eq!(q.live_workers(), 0);
}

#[tokio::test]
async fn finished_records_expire_and_are_purged() {
    let q = EmbeddedQueue::new(QueuePolicy {
        max_queue: 10,
        result_ttl: Duration::ZERO,
        max_attempts: 1,
        ..QueuePolicy::default()
    });
    let id = enqueue_of(&q, 3).await.expect("enqueue");
    let taken = q.take(1, Duration::ZERO).await.expect("take");
    q.complete(&taken[0], &prediction("a")).expect("complete");
    assert!(q.get(id).is_none());
    enqueue_of(&q, 3).await.expect("enqueue purges expired records");
    assert_eq!(q.state().records.len(), 1);
}

#[tokio::test]
async fn a_delivery_carries_the_fast_class_and_an_empty_receipt() {
    let q = EmbeddedQueue::new(QueuePolicy::default());
    enqueue_of(&q, 3).await.expect("enqueue");
    let taken = q.take(1, Duration::ZERO).await.expect("take");
    assert_eq!((taken[0].fast_class, &taken[0].receipt), (Some(1), &Receipt::default()));
}
