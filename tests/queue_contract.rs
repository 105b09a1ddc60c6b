//! The queue contract, written once and run against both backends: the embedded queue, and
//! Redis (`TANDEM_TEST_REDIS_URL`, else the local one) under a fresh random key prefix.
//!
//! Each case is an async fn over a [`JobQueue`]; `contract!` runs it once per backend. What can
//! only be seen underneath, in Redis' keys (an image's expiry, the stream, the dead letters),
//! is checked too when the backend is Redis; what only one backend does has its tests beside
//! it (`src/queue/embedded.rs`, `tests/redis_queue.rs`).

use std::time::{Duration, Instant};

use tandem::jobs::JobStatus;
use tandem::queue::{
    CancelOutcome, EmbeddedQueue, FailOutcome, JobQueue, QueueDepth, QueueError, QueuePolicy, Receipt,
};
use uuid::Uuid;

mod queue_support;

use queue_support::{Keys, LONG_RECLAIM, NewJob, field, job, policy, prediction};

/// One backend under test: the queue, and with Redis the keys beneath it.
struct Backend {
    queue: JobQueue,
    redis: Option<Keys>,
}

#[derive(Clone, Copy)]
enum Kind {
    Embedded,
    Redis,
}

impl Backend {
    async fn open(kind: Kind, policy: QueuePolicy) -> Self {
        match kind {
            Kind::Embedded => Self { queue: JobQueue::Embedded(EmbeddedQueue::new(policy)), redis: None },
            Kind::Redis => {
                let keys = Keys::new();
                let queue = JobQueue::Redis(keys.queue("c1", LONG_RECLAIM, policy).await);
                Self { queue, redis: Some(keys) }
            }
        }
    }
}

/// Stages and commits a job, as `POST /predict` does.
async fn enqueue(q: &JobQueue, job: NewJob) -> Result<(), QueueError> {
    q.stage(job.id, job.image, job.created_at_ms).await.commit(&job.fast, None).await
}

/// Runs each named case against each backend, as `case::embedded` and `case::redis`.
macro_rules! contract {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test]
            async fn embedded() {
                super::$case(super::Kind::Embedded).await;
            }

            #[tokio::test]
            async fn redis() {
                super::$case(super::Kind::Redis).await;
            }
        }
    )*};
}

contract!(
    a_job_goes_queued_running_completed,
    take_waits_for_a_job_and_gives_up_after_the_timeout,
    the_queue_is_bounded,
    a_failing_job_is_retried_behind_others_then_fails_for_good,
    finished_records_expire_after_result_ttl,
    only_a_waiting_job_can_be_canceled,
    an_ended_job_with_a_callback_gives_one_webhook,
);

async fn a_job_goes_queued_running_completed(kind: Kind) {
    let backend = Backend::open(kind, policy(10, 3, Duration::from_secs(60))).await;
    let q = &backend.queue;
    q.check_ready().await.expect("ready");
    let j = job();
    let (id, image, created) = (j.id, j.image.clone(), j.created_at_ms);
    enqueue(q, j).await.expect("enqueue");
    if let Some(keys) = &backend.redis {
        assert_eq!(keys.pttl(&keys.image(id)).await, -1, "a queued job's image does not expire");
    }

    let record = q.get(id).await.expect("get").expect("a queued record");
    assert_eq!(record.status, JobStatus::Queued);
    assert_eq!(record.attempts, 0);
    assert_eq!(record.fast, prediction("fast"));
    assert_eq!(record.created_at_ms, created);
    assert_eq!(record.result, None);
    assert_eq!(q.depth().await.expect("depth"), QueueDepth { waiting: 1, pending: 0 });

    let taken = q.take(4, Duration::from_secs(1)).await.expect("take");
    assert_eq!(taken.len(), 1);
    let delivery = &taken[0];
    assert_eq!((delivery.id, delivery.attempt, delivery.created_at_ms), (id, 1, created));
    assert_eq!(delivery.image, image, "the image comes back byte for byte");
    assert_eq!(delivery.fast_class, Some(prediction("fast").class_index), "the fast answer's class comes along");
    if backend.redis.is_some() {
        assert_ne!(delivery.receipt, Receipt::default(), "a Redis delivery names its stream entry");
    }

    let record = q.get(id).await.expect("get").expect("a running record");
    assert_eq!(record.status, JobStatus::Running);
    assert_eq!(record.attempts, 1);
    assert!(record.started_at_ms.is_some_and(|at| at >= created));
    assert_eq!(q.depth().await.expect("depth"), QueueDepth { waiting: 0, pending: 1 });

    q.complete(delivery, &prediction("accurate")).await.expect("complete");
    let record = q.get(id).await.expect("get").expect("a completed record");
    assert_eq!(record.status, JobStatus::Completed);
    assert_eq!(record.result, Some(prediction("accurate")));
    assert_eq!(record.fast, prediction("fast"));
    assert_eq!(record.error, None);
    assert_eq!(record.attempts, 1);
    assert!(record.completed_at_ms.is_some());
    assert_eq!(q.depth().await.expect("depth"), QueueDepth::default());
    if let Some(keys) = &backend.redis {
        assert_eq!(keys.xlen().await, 0, "a finished job's entry is deleted");
        let ttl = keys.pttl(&keys.job(id)).await;
        assert!(ttl > 0 && ttl <= 60_000, "the finished record expires after result_ttl (PTTL {ttl})");
        assert_eq!(keys.images().await, 0, "the image is deleted with the job's entry");
    }

    assert_eq!(q.get(Uuid::new_v4()).await.expect("get"), None, "unknown ids are None");
    assert!(q.take(1, Duration::from_millis(50)).await.expect("take").is_empty());
}

async fn take_waits_for_a_job_and_gives_up_after_the_timeout(kind: Kind) {
    let backend = Backend::open(kind, policy(10, 3, Duration::from_secs(60))).await;
    let q = &backend.queue;
    let started = Instant::now();
    assert!(q.take(1, Duration::from_millis(300)).await.expect("take").is_empty());
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(280) && waited < Duration::from_secs(2), "waited {waited:?}");
    assert!(q.take(1, Duration::ZERO).await.expect("take without waiting").is_empty());

    let waiter = {
        let q = q.clone();
        tokio::spawn(async move { q.take(1, Duration::from_secs(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let j = job();
    let id = j.id;
    enqueue(q, j).await.expect("enqueue");
    let taken = waiter.await.expect("join").expect("take");
    assert_eq!(taken.iter().map(|d| d.id).collect::<Vec<_>>(), vec![id]);
    assert!(started.elapsed() < Duration::from_secs(2), "a blocked take wakes when a job arrives");
}

async fn the_queue_is_bounded(kind: Kind) {
    let backend = Backend::open(kind, policy(2, 3, Duration::from_secs(60))).await;
    let q = &backend.queue;
    enqueue(q, job()).await.expect("first");
    enqueue(q, job()).await.expect("second");
    let refused = job();
    let refused_id = refused.id;
    assert!(matches!(enqueue(q, refused).await, Err(QueueError::Full { limit: 2 })));
    assert_eq!(q.get(refused_id).await.expect("get"), None, "a refused job leaves no record");
    if let Some(keys) = &backend.redis {
        assert_eq!(keys.pttl(&keys.image(refused_id)).await, -2, "nor its image");
    }
    // A running job still counts; a finished one frees its place.
    let taken = q.take(1, Duration::from_secs(1)).await.expect("take");
    assert_eq!(taken.len(), 1);
    assert!(matches!(enqueue(q, job()).await, Err(QueueError::Full { limit: 2 })));
    q.complete(&taken[0], &prediction("a")).await.expect("complete");
    enqueue(q, job()).await.expect("room again");
    assert_eq!(q.depth().await.expect("depth"), QueueDepth { waiting: 2, pending: 0 });
    if let Some(keys) = &backend.redis {
        assert_eq!(keys.xlen().await, 2);
    }
}

async fn a_failing_job_is_retried_behind_others_then_fails_for_good(kind: Kind) {
    let backend = Backend::open(kind, policy(10, 2, Duration::from_secs(60))).await;
    let q = &backend.queue;
    let poison = job();
    let (poison_id, poison_image) = (poison.id, poison.image.clone());
    enqueue(q, poison).await.expect("enqueue");
    let good = job();
    let good_id = good.id;
    enqueue(q, good).await.expect("enqueue");

    let first = q.take(1, Duration::from_secs(1)).await.expect("take");
    assert_eq!((first[0].id, first[0].attempt), (poison_id, 1));
    assert_eq!(q.fail(&first[0], "boom").await.expect("fail"), FailOutcome::Retrying);
    let record = q.get(poison_id).await.expect("get").expect("record");
    assert_eq!((record.status, record.error.as_deref(), record.attempts), (JobStatus::Queued, Some("boom"), 1));
    if let Some(keys) = &backend.redis {
        assert_eq!(keys.xlen().await, 2, "the retry replaces the old entry");
    }

    let next = q.take(1, Duration::from_secs(1)).await.expect("take");
    assert_eq!(next[0].id, good_id, "a retried job goes behind the others");
    q.complete(&next[0], &prediction("ok")).await.expect("complete");

    let again = q.take(1, Duration::from_secs(1)).await.expect("take");
    assert_eq!((again[0].id, again[0].attempt), (poison_id, 2));
    assert_eq!(again[0].image, poison_image, "the retry carries the same image");
    if backend.redis.is_some() {
        assert_ne!(again[0].receipt, first[0].receipt, "a retry is a new stream entry");
    }
    assert_eq!(q.fail(&again[0], "boom twice").await.expect("fail"), FailOutcome::Dead);

    let record = q.get(poison_id).await.expect("get").expect("record");
    assert_eq!(record.status, JobStatus::Failed);
    assert_eq!(record.error.as_deref(), Some("boom twice"));
    assert_eq!(record.attempts, 2);
    assert!(record.completed_at_ms.is_some());
    let good = q.get(good_id).await.expect("get").expect("record");
    assert_eq!((good.status, good.result.map(|p| p.label)), (JobStatus::Completed, Some("ok".into())));
    assert_eq!(q.depth().await.expect("depth"), QueueDepth::default());

    if let Some(keys) = &backend.redis {
        let dead = keys.dead_letters().await;
        assert_eq!(dead.len(), 1);
        assert_eq!(field(&dead[0], "id"), Some(poison_id.to_string().as_str()));
        assert_eq!(field(&dead[0], "error"), Some("boom twice"));
        assert_eq!(field(&dead[0], "attempts"), Some("2"));
        assert_eq!(keys.xlen().await, 0);
        assert_eq!(keys.images().await, 0, "a dead job's image is deleted, a finished one's too");

        // A stale second report about the same delivery (from a worker thought dead: only
        // Redis has several workers on one job) changes nothing.
        assert_eq!(q.fail(&again[0], "late").await.expect("fail"), FailOutcome::Dead);
        assert_eq!(q.get(poison_id).await.expect("get").and_then(|r| r.error).as_deref(), Some("boom twice"));
        assert_eq!(keys.dead_letters().await.len(), 1);
    }

    // The queue goes on.
    let after = job();
    let after_id = after.id;
    enqueue(q, after).await.expect("enqueue");
    let taken = q.take(4, Duration::from_secs(1)).await.expect("take");
    assert_eq!(taken.iter().map(|d| (d.id, d.attempt)).collect::<Vec<_>>(), vec![(after_id, 1)]);
}

async fn finished_records_expire_after_result_ttl(kind: Kind) {
    let backend = Backend::open(kind, policy(10, 3, Duration::from_secs(1))).await;
    let q = &backend.queue;
    let j = job();
    let id = j.id;
    enqueue(q, j).await.expect("enqueue");
    let taken = q.take(1, Duration::from_secs(1)).await.expect("take");
    q.complete(&taken[0], &prediction("a")).await.expect("complete");
    assert!(q.get(id).await.expect("get").is_some());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(q.get(id).await.expect("get"), None);
    if let Some(keys) = &backend.redis {
        let exists: i64 =
            redis::cmd("EXISTS").arg(keys.job(id)).query_async(&mut keys.raw().await).await.expect("EXISTS");
        assert_eq!(exists, 0);
    }
}

async fn only_a_waiting_job_can_be_canceled(kind: Kind) {
    let backend = Backend::open(kind, policy(10, 3, Duration::from_secs(60))).await;
    let q = &backend.queue;
    let (first, second, third) = (job(), job(), job());
    let (first_id, second_id, third_id) = (first.id, second.id, third.id);
    for j in [first, second, third] {
        enqueue(q, j).await.expect("enqueue");
    }
    let mut watch = q.watch(second_id);
    assert_eq!(q.cancel(second_id).await.expect("cancel"), CancelOutcome::Canceled);
    tokio::time::timeout(Duration::from_secs(5), watch.changed()).await.expect("the cancel wakes the job's watchers");
    let record = q.get(second_id).await.expect("get").expect("record");
    assert_eq!((record.status, record.attempts), (JobStatus::Canceled, 0));
    assert!(record.completed_at_ms.is_some());
    assert_eq!(q.cancel(second_id).await.expect("cancel again"), CancelOutcome::Canceled, "a second cancel is a no-op");
    assert_eq!(q.cancel(Uuid::new_v4()).await.expect("cancel"), CancelOutcome::Unknown);
    assert_eq!(q.depth().await.expect("depth"), QueueDepth { waiting: 2, pending: 0 }, "it left the queue");
    if let Some(keys) = &backend.redis {
        assert_eq!(keys.xlen().await, 2, "its stream entry is deleted");
        assert_eq!(keys.pttl(&keys.image(second_id)).await, -2, "its image is deleted");
        let ttl = keys.pttl(&keys.job(second_id)).await;
        assert!(ttl > 0 && ttl <= 60_000, "the canceled record expires after result_ttl (PTTL {ttl})");
    }

    // A running job is left to finish; so is one that has ended.
    let taken = q.take(1, Duration::from_secs(1)).await.expect("take");
    assert_eq!(taken[0].id, first_id);
    assert_eq!(q.cancel(first_id).await.expect("cancel"), CancelOutcome::TooLate(JobStatus::Running));
    q.complete(&taken[0], &prediction("done")).await.expect("complete");
    assert_eq!(q.get(first_id).await.expect("get").expect("record").status, JobStatus::Completed);
    assert_eq!(q.cancel(first_id).await.expect("cancel"), CancelOutcome::TooLate(JobStatus::Completed));

    // The canceled job is never handed out.
    let rest = q.take(4, Duration::from_secs(1)).await.expect("take");
    assert_eq!(rest.iter().map(|d| d.id).collect::<Vec<_>>(), vec![third_id], "the canceled job never runs");
    q.complete(&rest[0], &prediction("done")).await.expect("complete");
    assert_eq!(q.depth().await.expect("depth"), QueueDepth::default());
    if let Some(keys) = &backend.redis {
        assert_eq!(keys.images().await, 0);
        assert_eq!(keys.queued_bytes().await, None, "the canceled job's bytes were given back");
    }
}

async fn an_ended_job_with_a_callback_gives_one_webhook(kind: Kind) {
    let backend = Backend::open(kind, policy(10, 1, Duration::from_secs(60))).await;
    let q = &backend.queue;
    let url = "http://127.0.0.1:9/hook";
    let (done, dead, canceled, plain) = (job(), job(), job(), job());
    let ids = [done.id, dead.id, canceled.id];
    for j in [done, dead, canceled] {
        q.stage(j.id, j.image, j.created_at_ms).await.commit(&j.fast, Some(url)).await.expect("enqueue");
    }
    enqueue(q, plain).await.expect("enqueue");
    assert_eq!(q.get(ids[0]).await.expect("get").expect("record").callback_url.as_deref(), Some(url));
    assert!(q.take_webhooks(4, Duration::from_millis(200)).await.expect("take").is_empty(), "nothing has ended");

    q.cancel(ids[2]).await.expect("cancel");
    let taken = q.take(2, Duration::from_secs(1)).await.expect("take");
    q.complete(&taken[0], &prediction("done")).await.expect("complete");
    assert_eq!(q.fail(&taken[1], "boom").await.expect("fail"), FailOutcome::Dead);
    let rest = q.take(1, Duration::from_secs(1)).await.expect("take");
    q.complete(&rest[0], &prediction("plain")).await.expect("complete");

    let mut webhooks = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while webhooks.len() < 3 && Instant::now() < deadline {
        webhooks.extend(q.take_webhooks(4, Duration::from_millis(500)).await.expect("take"));
    }
    let mut got: Vec<Uuid> = webhooks.iter().map(|t| t.id).collect();
    got.sort();
    let mut want = ids.to_vec();
    want.sort();
    assert_eq!(got, want, "one webhook per ended job with a callback (canceled, failed, completed), none without");
    for task in &mut webhooks {
        assert_eq!(q.count_webhook_attempt(task).await.expect("count"), 1);
        assert_eq!(q.count_webhook_attempt(task).await.expect("count"), 2, "attempts are counted");
        q.renew_webhook(task).await.expect("renew");
        q.webhook_done(task).await.expect("done");
    }
    assert!(q.take_webhooks(4, Duration::from_millis(200)).await.expect("take").is_empty(), "each is handed out once");
}
