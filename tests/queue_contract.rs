//! The queue contract, written once and run against both backends: the embedded queue, and
//! Redis (`TANDEM_TEST_REDIS_URL`, else the local one) under a fresh random key prefix.
//!
//! Each case is an async fn over a [`JobQueue`]; `contract!` runs it once per backend. What can
//! only be seen underneath, in Redis' keys (an image's expiry, the stream, the dead letters),
//! is checked too when the backend is Redis; what only one backend does has its tests beside
//! it (`src/queue/embedded.rs`, `tests/redis_queue.rs`).

use std::time::{Duration, Instant};

use tandem::fingerprint::{ContentHash, ModelIdentity};
use tandem::jobs::{JobStatus, ResultSource};
use tandem::queue::{
    CachePolicy, CancelOutcome, EmbeddedQueue, Enqueued, FailOutcome, JobQueue, QueueDepth, QueueError, QueuePolicy,
    Receipt,
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
    q.stage(job.id, job.image, job.created_at_ms).await.commit(&job.fast, None, None).await.map(|_| ())
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
    a_job_for_bytes_already_queued_shares_that_run_and_its_result_is_cached,
    a_canceled_shared_run_goes_on_for_its_followers,
    a_failed_shared_run_fails_its_followers,
    a_job_finished_now_never_reaches_a_worker,
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
        q.stage(j.id, j.image, j.created_at_ms).await.commit(&j.fast, Some(url), None).await.expect("enqueue");
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

/// A policy with the result cache (and the in-flight dedupe) on.
fn cached(max_attempts: u32) -> QueuePolicy {
    QueuePolicy {
        cache: CachePolicy { ttl: Duration::from_secs(60), entries: 100 },
        ..policy(10, max_attempts, Duration::from_secs(60))
    }
}

/// Stages and commits a job for the bytes `content` names.
async fn enqueue_shared(q: &JobQueue, job: NewJob, content: &ContentHash) -> Enqueued {
    q.stage(job.id, job.image, job.created_at_ms).await.commit(&job.fast, None, Some(content)).await.expect("enqueue")
}

/// An identity as a worker announces it, for the Redis cache's keys.
fn identity() -> ModelIdentity {
    ModelIdentity::from_stored(format!("test{}", Uuid::new_v4().simple()))
}

async fn a_job_for_bytes_already_queued_shares_that_run_and_its_result_is_cached(kind: Kind) {
    let backend = Backend::open(kind, cached(3)).await;
    let q = &backend.queue;
    q.announce_accurate_model(&identity(), true).await.expect("announce");
    let content = ContentHash::of(b"the same photo");
    let (leader, follower, late) = (job(), job(), job());
    let (leader_id, follower_id, late_id) = (leader.id, follower.id, late.id);
    assert_eq!(q.cached_result(&content).await.expect("lookup"), None);
    assert_eq!(enqueue_shared(q, leader, &content).await, Enqueued::Queued);
    assert_eq!(enqueue_shared(q, follower, &content).await, Enqueued::SharedRun);
    assert_eq!(q.depth().await.expect("depth").waiting, 1, "one run for both");
    if let Some(keys) = &backend.redis {
        assert_eq!(keys.images().await, 1, "the follower keeps no image");
    }

    let mut watch = q.watch(follower_id);
    let taken = q.take(4, Duration::from_secs(1)).await.expect("take");
    assert_eq!(taken.iter().map(|d| d.id).collect::<Vec<_>>(), vec![leader_id]);
    assert_eq!(
        q.get(follower_id).await.expect("get").expect("record").status,
        JobStatus::Running,
        "it mirrors its run"
    );
    // Queued while the run is running: it follows too, running from the start.
    assert_eq!(enqueue_shared(q, late, &content).await, Enqueued::SharedRun);
    assert_eq!(q.get(late_id).await.expect("get").expect("record").status, JobStatus::Running);
    tokio::time::timeout(Duration::from_secs(5), watch.changed()).await.expect("the follower's watchers are told");

    q.complete(&taken[0], &prediction("refined")).await.expect("complete");
    for (id, source) in
        [(leader_id, ResultSource::Worker), (follower_id, ResultSource::SharedRun), (late_id, ResultSource::SharedRun)]
    {
        let record = q.get(id).await.expect("get").expect("record");
        assert_eq!(record.status, JobStatus::Completed, "{id}");
        assert_eq!(record.result.as_ref().map(|r| r.label.as_str()), Some("refined"));
        assert_eq!(record.source, source);
        assert!(record.completed_at_ms.is_some());
    }
    assert_eq!(
        q.cached_result(&content).await.expect("lookup").map(|r| r.label),
        Some("refined".to_owned()),
        "the result is cached by the bytes"
    );
    assert_eq!(q.cached_result(&ContentHash::of(b"another photo")).await.expect("lookup"), None);
    // The run has ended: the same bytes are completed at once, from the cache, in the commit.
    let again = job();
    let again_id = again.id;
    match enqueue_shared(q, again, &content).await {
        Enqueued::Cached(result) => assert_eq!(result.label, "refined"),
        other => panic!("expected the cached result, got {other:?}"),
    }
    let record = q.get(again_id).await.expect("get").expect("record");
    assert_eq!((record.status, record.source, record.attempts), (JobStatus::Completed, ResultSource::Cache, 0));
    assert!(q.take(4, Duration::from_millis(200)).await.expect("take").is_empty(), "no worker sees it");
    if backend.redis.is_some() {
        // Another model announced (a new file): the earlier result is not its answer.
        // Only a worker that starts names its model: a later one's beat does not take it over.
        let other = identity();
        q.announce_accurate_model(&other, false).await.expect("announce");
        assert!(q.cached_result(&content).await.expect("lookup").is_some(), "the model named first still is");
        q.announce_accurate_model(&other, true).await.expect("announce");
        assert_eq!(q.cached_result(&content).await.expect("lookup"), None, "no result of another model");
        assert_eq!(enqueue_shared(q, job(), &content).await, Enqueued::Queued, "so the bytes run again");
    }
}

async fn a_canceled_shared_run_goes_on_for_its_followers(kind: Kind) {
    let backend = Backend::open(kind, cached(3)).await;
    let q = &backend.queue;
    let content = ContentHash::of(b"a photo two clients sent");
    let (leader, first, second) = (job(), job(), job());
    let (leader_id, first_id, second_id) = (leader.id, first.id, second.id);
    enqueue_shared(q, leader, &content).await;
    enqueue_shared(q, first, &content).await;
    enqueue_shared(q, second, &content).await;
    assert_eq!(q.cancel(leader_id).await.expect("cancel"), CancelOutcome::Canceled);
    assert_eq!(q.get(leader_id).await.expect("get").expect("record").status, JobStatus::Canceled);

    let taken = q.take(4, Duration::from_secs(1)).await.expect("take");
    assert_eq!(taken.len(), 1, "one run, handed on");
    let heir = taken[0].id;
    assert!(heir == first_id || heir == second_id, "a follower took the run over");
    assert_eq!(taken[0].image.len(), job().image.len(), "with its image");
    q.complete(&taken[0], &prediction("refined")).await.expect("complete");
    for id in [first_id, second_id] {
        let record = q.get(id).await.expect("get").expect("record");
        assert_eq!((record.status, record.result.map(|r| r.label)), (JobStatus::Completed, Some("refined".to_owned())));
    }
    assert_eq!(q.get(leader_id).await.expect("get").expect("record").status, JobStatus::Canceled, "first outcome kept");
    if let Some(keys) = &backend.redis {
        assert_eq!(keys.images().await, 0);
        assert_eq!(keys.queued_bytes().await, None, "its bytes were counted once and given back once");
    }
}

async fn a_failed_shared_run_fails_its_followers(kind: Kind) {
    let backend = Backend::open(kind, cached(1)).await;
    let q = &backend.queue;
    let content = ContentHash::of(b"an image the model cannot read");
    let (leader, follower) = (job(), job());
    let follower_id = follower.id;
    enqueue_shared(q, leader, &content).await;
    enqueue_shared(q, follower, &content).await;
    let taken = q.take(1, Duration::from_secs(1)).await.expect("take");
    assert_eq!(q.fail(&taken[0], "boom").await.expect("fail"), FailOutcome::Dead);
    let record = q.get(follower_id).await.expect("get").expect("record");
    assert_eq!((record.status, record.error.as_deref()), (JobStatus::Failed, Some("boom")));
    assert_eq!(q.cached_result(&content).await.expect("lookup"), None, "a failure is not cached");

    // Redis: a run whose leader's record is gone by the time a worker meets it (an enqueue
    // undone after its answer was lost) ends its followers failed, not waiting forever.
    if let JobQueue::Redis(redis) = q {
        let content = ContentHash::of(b"a run whose leader is undone");
        let (leader, follower) = (job(), job());
        let (leader_id, follower_id) = (leader.id, follower.id);
        enqueue_shared(q, leader, &content).await;
        enqueue_shared(q, follower, &content).await;
        assert!(redis.undo_enqueue(leader_id).await.expect("undo"));
        assert!(q.take(1, Duration::from_millis(500)).await.expect("take").is_empty(), "the entry is dropped");
        let record = q.get(follower_id).await.expect("get").expect("record");
        assert_eq!(record.status, JobStatus::Failed, "{record:?}");
    }
}

async fn a_job_finished_now_never_reaches_a_worker(kind: Kind) {
    let backend = Backend::open(kind, policy(10, 3, Duration::from_secs(60))).await;
    let q = &backend.queue;
    let j = job();
    let id = j.id;
    let mut watch = q.watch(id);
    let staged = q.stage(j.id, j.image, j.created_at_ms).await;
    staged
        .finish_now(&j.fast, &prediction("cached"), ResultSource::Cache, Some("http://127.0.0.1:9/hook"))
        .await
        .expect("finish");
    tokio::time::timeout(Duration::from_secs(5), watch.changed()).await.expect("its watchers are told");
    let record = q.get(id).await.expect("get").expect("record");
    assert_eq!((record.status, record.source, record.attempts), (JobStatus::Completed, ResultSource::Cache, 0));
    assert_eq!(record.result.map(|r| r.label), Some("cached".to_owned()));
    assert!(q.take(4, Duration::from_millis(300)).await.expect("take").is_empty(), "no worker sees it");
    assert_eq!(q.depth().await.expect("depth"), QueueDepth::default());
    let hooks = q.take_webhooks(4, Duration::from_secs(2)).await.expect("webhooks");
    assert_eq!(hooks.iter().map(|t| t.id).collect::<Vec<_>>(), vec![id], "its webhook is queued");
    if let Some(keys) = &backend.redis {
        assert_eq!(keys.images().await, 0, "the staged image is deleted");
        let ttl = keys.pttl(&keys.job(id)).await;
        assert!(ttl > 0 && ttl <= 60_000, "it expires after result_ttl (PTTL {ttl})");
    }
}
