//! The Redis Streams queue against a real Redis (`TANDEM_TEST_REDIS_URL`, else the local one).
//!
//! Every test works under its own random key prefix, so they run in parallel, and deletes its
//! keys when done (even when it fails). The outage tests start their own `redis-server`.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tandem::engine::Prediction;
use tandem::jobs::JobStatus;
use tandem::queue::{Delivery, FailOutcome, QueueDepth, QueueError, QueuePolicy, RedisQueue};
use uuid::Uuid;

mod common;
mod queue_support;

use common::{RedisServer, free_port};
use queue_support::{Keys, LONG_RECLAIM, NewJob, config, field, job, job_of, policy, prediction};

/// Stages and commits a job, as `POST /predict` does.
async fn enqueue(q: &RedisQueue, job: NewJob) -> Result<(), QueueError> {
    q.stage(job.id, job.image, job.created_at_ms).await.commit(&job.fast, None, None).await.map(|_| ())
}

fn byte_policy(max_queue_bytes: u64, max_attempts: u32) -> QueuePolicy {
    QueuePolicy { max_queue_bytes, ..policy(100, max_attempts, Duration::from_secs(60)) }
}

/// Two handles on one prefix stand for two `serve` processes: 10 enqueues of 1,000 bytes at
/// once, from both, against a 2,500-byte bound: exactly 2 get in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_is_bounded_in_image_bytes_across_processes() {
    let keys = Keys::new();
    let a = keys.queue("serve-a", LONG_RECLAIM, byte_policy(2500, 3)).await;
    let b = keys.queue("serve-b", LONG_RECLAIM, byte_policy(2500, 3)).await;
    let attempts: Vec<_> = (0..10)
        .map(|i| {
            let q = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { enqueue(&q, job_of(1000)).await })
        })
        .collect();
    let mut queued = 0;
    for attempt in attempts {
        match attempt.await.expect("join") {
            Ok(()) => queued += 1,
            Err(QueueError::FullBytes { limit: 2500 }) => {}
            Err(other) => panic!("unexpected: {other:?}"),
        }
    }
    assert_eq!(queued, 2);
    assert_eq!(keys.queued_bytes().await, Some(2000));
    assert_eq!(keys.images().await, 2, "refused jobs leave no image");
    let refused = enqueue(&a, job_of(1000)).await.expect_err("full");
    assert!(refused.to_string().contains("images would pass"), "{refused}");

    // Finished jobs give their bytes back: room again, and the counter back to nothing.
    let taken = a.take(4, Duration::from_secs(1)).await.expect("take");
    assert_eq!(taken.len(), 2);
    a.complete(&taken[0], &prediction("a")).await.expect("complete");
    assert_eq!(keys.queued_bytes().await, Some(1000));
    enqueue(&b, job_of(1500)).await.expect("room again");
    a.complete(&taken[1], &prediction("a")).await.expect("complete");
    let last = b.take(1, Duration::from_secs(1)).await.expect("take");
    b.complete(&last[0], &prediction("b")).await.expect("complete");
    assert_eq!(keys.queued_bytes().await, None, "0 is a missing key");
}

/// Completed, retried, failed for good, taken over from a dead worker, dead-lettered after
/// crashes, and late answers from the worker thought dead: each job's bytes go back exactly once.
#[tokio::test]
async fn queued_bytes_are_given_back_once_whatever_way_a_job_ends() {
    let keys = Keys::new();
    let reclaim = Duration::from_millis(100);
    let p = byte_policy(1 << 20, 2);
    let first = keys.queue("w1", reclaim, p.clone()).await;
    let (a, b, c) = (job_of(1000), job_of(2000), job_of(4000));
    let (a_id, b_id, c_id) = (a.id, b.id, c.id);
    for j in [a, b, c] {
        enqueue(&first, j).await.expect("enqueue");
    }
    assert_eq!(keys.queued_bytes().await, Some(7000));
    let stale = first.take(3, Duration::from_secs(1)).await.expect("take");
    assert_eq!(stale.len(), 3);
    let stale_of = |id| stale.iter().find(|d| d.id == id).expect("delivered");
    assert_eq!(first.fail(stale_of(c_id), "boom").await.expect("fail"), FailOutcome::Retrying);
    assert_eq!(keys.queued_bytes().await, Some(7000), "a retried job keeps its image");
    // w1 now "dies" holding a and b.

    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = keys.queue("w2", reclaim, p.clone()).await;
    let mut taken: Vec<Delivery> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while taken.len() < 3 && Instant::now() < deadline {
        taken.extend(second.take(4, Duration::from_millis(200)).await.expect("take"));
    }
    let taken_of = |id| taken.iter().find(|d| d.id == id).expect("taken over");
    second.complete(taken_of(a_id), &prediction("a")).await.expect("complete");
    assert_eq!(keys.queued_bytes().await, Some(6000));
    first.complete(stale_of(a_id), &prediction("late")).await.expect("late complete");
    assert_eq!(keys.queued_bytes().await, Some(6000), "a late duplicate result gives nothing back again");
    assert_eq!(second.fail(taken_of(c_id), "boom twice").await.expect("fail"), FailOutcome::Dead);
    assert_eq!(keys.queued_bytes().await, Some(2000));
    // w2 "dies" holding b, on its last attempt: the next take dead-letters it.

    tokio::time::sleep(Duration::from_millis(200)).await;
    let third = keys.queue("w3", reclaim, p).await;
    assert!(third.take(4, Duration::from_millis(300)).await.expect("take").is_empty());
    assert_eq!(third.get(b_id).await.expect("get").map(|r| r.status), Some(JobStatus::Failed));
    assert_eq!(keys.queued_bytes().await, None);
    first.fail(stale_of(b_id), "late failure").await.expect("late fail");
    second.complete(taken_of(b_id), &prediction("late")).await.expect("late complete");
    assert_eq!(keys.queued_bytes().await, None, "late outcomes give nothing back");
    assert_eq!(keys.images().await, 0);
}

/// A Redis that lost its data (restarted empty) or a counter that drifted (an image deleted
/// by hand) is taken as it is: a missing counter is 0, and an empty queue resets it.
#[tokio::test]
async fn the_queued_bytes_counter_recovers_from_an_empty_or_drifted_redis() {
    let keys = Keys::new();
    let q = keys.queue("c1", LONG_RECLAIM, byte_policy(5000, 3)).await;
    enqueue(&q, job_of(3000)).await.expect("enqueue");
    let mut raw = keys.raw().await;
    let all: Vec<String> =
        redis::cmd("KEYS").arg(format!("{}:*", keys.prefix)).query_async(&mut raw).await.expect("KEYS");
    redis::cmd("DEL").arg(all).query_async::<()>(&mut raw).await.expect("DEL: Redis lost everything");
    enqueue(&q, job_of(4000)).await.expect("the lost job's bytes are not counted");
    assert_eq!(keys.queued_bytes().await, Some(4000));

    let taken = q.take(1, Duration::from_secs(1)).await.expect("take");
    redis::cmd("DEL").arg(keys.image(taken[0].id)).query_async::<()>(&mut raw).await.expect("DEL by hand");
    q.complete(&taken[0], &prediction("a")).await.expect("complete");
    assert_eq!(keys.queued_bytes().await, Some(4000), "the deleted image's bytes drifted");
    enqueue(&q, job_of(4500)).await.expect("an empty queue resets the counter");
    assert_eq!(keys.queued_bytes().await, Some(4500));
}

#[tokio::test]
async fn a_job_whose_worker_died_is_taken_over_and_completed_once() {
    let keys = Keys::new();
    let p = policy(10, 3, Duration::from_secs(60));
    let a = keys.queue("worker-a", LONG_RECLAIM, p.clone()).await;
    let j = job();
    let (id, image) = (j.id, j.image.clone());
    enqueue(&a, j).await.expect("enqueue");
    let taken = a.take(1, Duration::from_secs(1)).await.expect("take");
    assert_eq!(taken.len(), 1);
    let receipt = taken[0].receipt.clone();
    drop(a); // "killed": never completes

    let b = keys.queue("worker-b", Duration::from_millis(200), p).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reclaimed = b.take(4, Duration::from_secs(1)).await.expect("take");
    assert_eq!(reclaimed.len(), 1, "the abandoned job is taken over");
    let delivery: &Delivery = &reclaimed[0];
    assert_eq!((delivery.id, delivery.attempt), (id, 2));
    assert_eq!(delivery.receipt, receipt);
    assert_eq!(delivery.image, image);
    assert_eq!(b.get(id).await.expect("get").map(|r| (r.status, r.attempts)), Some((JobStatus::Running, 2)));
    b.complete(delivery, &prediction("accurate")).await.expect("complete");

    // Nothing is left to take over or deliver again, however long we wait.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(b.take(4, Duration::from_millis(300)).await.expect("take").is_empty());
    let record = b.get(id).await.expect("get").expect("record");
    assert_eq!((record.status, record.attempts), (JobStatus::Completed, 2));
    assert_eq!(record.result.map(|p| p.label), Some("accurate".into()));
    assert_eq!(keys.xlen().await, 0);
    assert_eq!(keys.pending().await, 0);

    // The "dead" worker's late answer does not overwrite the stored one.
    let late = keys.queue("worker-a", LONG_RECLAIM, policy(10, 3, Duration::from_secs(60))).await;
    late.complete(&taken[0], &prediction("late")).await.expect("late complete");
    assert_eq!(late.get(id).await.expect("get").and_then(|r| r.result).map(|p| p.label), Some("accurate".into()));
}

#[tokio::test]
async fn a_job_that_keeps_killing_its_worker_ends_failed() {
    let keys = Keys::new();
    let p = policy(10, 2, Duration::from_secs(60));
    let reclaim = Duration::from_millis(100);
    let first = keys.queue("crash-1", reclaim, p.clone()).await;
    let poison = job();
    let poison_id = poison.id;
    enqueue(&first, poison).await.expect("enqueue");
    assert_eq!(first.take(1, Duration::from_secs(1)).await.expect("take")[0].attempt, 1);
    drop(first);

    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = keys.queue("crash-2", reclaim, p.clone()).await;
    let taken = second.take(1, Duration::from_secs(1)).await.expect("take");
    assert_eq!(taken.iter().map(|d| (d.id, d.attempt)).collect::<Vec<_>>(), vec![(poison_id, 2)]);
    drop(second);

    let good = job();
    let good_id = good.id;
    let third = keys.queue("survivor", reclaim, p).await;
    enqueue(&third, good).await.expect("enqueue");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let taken = third.take(4, Duration::from_secs(1)).await.expect("take");
    assert_eq!(
        taken.iter().map(|d| (d.id, d.attempt)).collect::<Vec<_>>(),
        vec![(good_id, 1)],
        "the poison job is not handed out a third time"
    );

    let record = third.get(poison_id).await.expect("get").expect("record");
    assert_eq!(record.status, JobStatus::Failed);
    assert_eq!(record.attempts, 2);
    let error = record.error.expect("an error");
    assert!(error.contains("gave up after 2 attempts"), "{error}");
    let dead = keys.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(field(&dead[0], "id"), Some(poison_id.to_string().as_str()));
    assert_eq!(field(&dead[0], "attempts"), Some("2"));
    assert_eq!(keys.xlen().await, 1, "only the good job's entry is left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_consumers_take_each_job_exactly_once() {
    let keys = Keys::new();
    let p = policy(100, 3, Duration::from_secs(60));
    let producer = keys.queue("producer", LONG_RECLAIM, p.clone()).await;
    let mut ids = HashSet::new();
    for _ in 0..50 {
        let j = job();
        ids.insert(j.id);
        enqueue(&producer, j).await.expect("enqueue");
    }
    let mut workers = Vec::new();
    for name in ["consumer-1", "consumer-2"] {
        let q = keys.queue(name, LONG_RECLAIM, p.clone()).await;
        workers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                let taken = q.take(3, Duration::from_millis(300)).await.expect("take");
                if taken.is_empty() {
                    return seen;
                }
                for delivery in taken {
                    assert_eq!(delivery.attempt, 1);
                    q.complete(&delivery, &prediction("done")).await.expect("complete");
                    seen.push(delivery.id);
                }
            }
        }));
    }
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.await.expect("worker"));
    }
    assert_eq!(all.len(), 50, "no job delivered twice, none lost");
    assert_eq!(all.iter().copied().collect::<HashSet<_>>(), ids);
    for id in ids {
        let record = producer.get(id).await.expect("get").expect("record");
        assert_eq!((record.status, record.attempts), (JobStatus::Completed, 1));
    }
    assert_eq!(keys.xlen().await, 0);
}

fn assert_unavailable<T: std::fmt::Debug>(what: &str, result: Result<T, QueueError>, started: Instant) {
    assert!(matches!(result, Err(QueueError::Unavailable(_))), "{what}: {result:?}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "{what} took {took:?}");
}

#[tokio::test]
async fn nothing_listening_is_unavailable_promptly() {
    let url = format!("redis://127.0.0.1:{}/", free_port());
    let started = Instant::now();
    let q = RedisQueue::connect(config(&url, "tandem-test-nothing", "c1", LONG_RECLAIM, QueuePolicy::default()))
        .await
        .expect("connect does not need Redis up");
    assert!(started.elapsed() < Duration::from_millis(500));

    let started = Instant::now();
    assert_unavailable("enqueue", enqueue(&q, job()).await, started);
    let started = Instant::now();
    assert_unavailable("check_ready", q.check_ready().await, started);
    let started = Instant::now();
    assert_unavailable("take", q.take(1, Duration::from_secs(1)).await, started);
    let started = Instant::now();
    assert_unavailable("get", q.get(Uuid::new_v4()).await, started);
    let started = Instant::now();
    assert_unavailable("depth", q.depth().await, started);
}

#[tokio::test]
async fn a_redis_that_accepts_but_never_answers_is_unavailable_promptly() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("redis://127.0.0.1:{}/", listener.local_addr().expect("addr").port());
    // Accepts connections and holds them open without a word.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let q = RedisQueue::connect(config(&url, "tandem-test-mute", "c1", LONG_RECLAIM, QueuePolicy::default()))
        .await
        .expect("connect");
    for _ in 0..2 {
        let started = Instant::now();
        assert_unavailable("enqueue", enqueue(&q, job()).await, started);
        let started = Instant::now();
        assert_unavailable("check_ready", q.check_ready().await, started);
    }
}

#[tokio::test]
async fn the_queue_recovers_by_itself_after_redis_restarts_empty() {
    let mut server = RedisServer::start(false);
    let url = server.url();
    let keys = Keys::at(&url);
    let q = keys.queue("c1", LONG_RECLAIM, policy(10, 3, Duration::from_secs(60))).await;

    q.check_ready().await.expect("ready");
    let j = job();
    let first_id = j.id;
    enqueue(&q, j).await.expect("enqueue");
    let taken = q.take(1, Duration::from_secs(1)).await.expect("take");
    q.complete(&taken[0], &prediction("before")).await.expect("complete");
    enqueue(&q, job()).await.expect("enqueue a job that the crash will lose");

    server.kill();
    let started = Instant::now();
    assert_unavailable("enqueue while down", enqueue(&q, job()).await, started);
    let started = Instant::now();
    assert_unavailable("check_ready while down", q.check_ready().await, started);
    let started = Instant::now();
    assert_unavailable("take while down", q.take(1, Duration::from_secs(1)).await, started);

    server.restart();
    // The first call back: enqueue (which makes the stream anew, without the group).
    let j = job();
    let id = j.id;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match enqueue(&q, j.clone()).await {
            Ok(()) => break,
            Err(err) => assert!(Instant::now() < deadline, "enqueue never worked again: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(q.get(first_id).await.expect("get"), None, "the restarted Redis is empty");
    // take meets NOGROUP, recreates the group from 0 and still sees the job added before it.
    let taken = q.take(4, Duration::from_secs(1)).await.expect("take after restart");
    assert_eq!(taken.iter().map(|d| (d.id, d.attempt)).collect::<Vec<_>>(), vec![(id, 1)]);
    q.complete(&taken[0], &prediction("after")).await.expect("complete after restart");
    let record = q.get(id).await.expect("get").expect("record");
    assert_eq!((record.status, record.result.map(|p| p.label)), (JobStatus::Completed, Some("after".into())));
    q.check_ready().await.expect("ready after restart");
    assert_eq!(q.depth().await.expect("depth"), QueueDepth::default());
}

/// The API and the worker hold these futures across `.await`s in spawned tasks.
#[allow(dead_code)]
fn futures_are_send(q: RedisQueue, d: Delivery, p: Prediction, j: NewJob) {
    fn send<T: Send>(_: T) {}
    send(q.stage(j.id, j.image.clone(), j.created_at_ms));
    send(enqueue(&q, j));
    send(q.get(d.id));
    send(q.check_ready());
    send(q.depth());
    send(q.take(1, Duration::ZERO));
    send(q.complete(&d, &p));
    send(q.fail(&d, "e"));
}

#[tokio::test]
async fn a_cancelled_take_does_not_hold_up_or_swallow_the_next_job() {
    let keys = Keys::new();
    let q = keys.queue("c1", LONG_RECLAIM, policy(10, 3, Duration::from_secs(60))).await;
    q.check_ready().await.expect("ready");
    let cancelled = tokio::time::timeout(Duration::from_millis(200), q.take(1, Duration::from_secs(4))).await;
    assert!(cancelled.is_err(), "the take was still waiting");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let j = job();
    let id = j.id;
    enqueue(&q, j).await.expect("enqueue");
    let started = Instant::now();
    let taken = q.take(1, Duration::from_secs(2)).await.expect("take");
    assert_eq!(taken.iter().map(|d| d.id).collect::<Vec<_>>(), vec![id]);
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_lost_consumer_group_is_recreated_without_skipping_jobs() {
    let keys = Keys::new();
    let q = keys.queue("c1", LONG_RECLAIM, policy(10, 3, Duration::from_secs(60))).await;
    q.check_ready().await.expect("ready");
    let j = job();
    let id = j.id;
    enqueue(&q, j).await.expect("enqueue");
    let destroyed: i64 = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(keys.stream())
        .arg("workers")
        .query_async(&mut keys.raw().await)
        .await
        .expect("XGROUP DESTROY");
    assert_eq!(destroyed, 1);
    assert_eq!(q.depth().await.expect("depth"), QueueDepth { waiting: 1, pending: 0 });
    redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(keys.stream())
        .arg("workers")
        .query_async::<i64>(&mut keys.raw().await)
        .await
        .expect("XGROUP DESTROY");
    let taken = q.take(1, Duration::from_secs(1)).await.expect("take");
    assert_eq!(taken.iter().map(|d| (d.id, d.attempt)).collect::<Vec<_>>(), vec![(id, 1)]);
}

#[tokio::test]
async fn an_image_is_staged_before_its_job_and_expires_if_the_job_never_comes() {
    let keys = Keys::new();
    let q = keys.queue("c1", LONG_RECLAIM, policy(10, 3, Duration::from_secs(60))).await;
    let j = job();
    let mut staged = q.stage(j.id, j.image.clone(), j.created_at_ms).await;
    assert!(staged.stored().await, "staged");
    let ttl = keys.pttl(&keys.image(j.id)).await;
    assert!(ttl > 0, "a staged image expires unless its job is queued (PTTL {ttl})");
    assert_eq!(q.get(j.id).await.expect("get"), None, "staging alone creates no job");
    assert_eq!(keys.xlen().await, 0);

    staged.commit(&j.fast, None, None).await.expect("enqueue the staged job");
    assert_eq!(keys.pttl(&keys.image(j.id)).await, -1, "queueing the job keeps its image");
    let taken = q.take(1, Duration::from_secs(1)).await.expect("take");
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].image, j.image);

    // Staged, then its image gone (expired, say) before the commit.
    let unstaged = job();
    let mut staged = q.stage(unstaged.id, unstaged.image.clone(), unstaged.created_at_ms).await;
    assert!(staged.stored().await, "staged");
    redis::cmd("DEL").arg(keys.image(unstaged.id)).query_async::<()>(&mut keys.raw().await).await.expect("DEL");
    let refused = staged.commit(&unstaged.fast, None, None).await;
    assert!(matches!(refused, Err(QueueError::Unavailable(_))), "no image, no job: {refused:?}");
    assert_eq!(q.get(unstaged.id).await.expect("get"), None);

    let dropped = job();
    let mut staged = q.stage(dropped.id, dropped.image.clone(), dropped.created_at_ms).await;
    assert!(staged.stored().await, "staged");
    assert!(keys.pttl(&keys.image(dropped.id)).await > 0, "staged");
    staged.abandon().await;
    assert_eq!(keys.pttl(&keys.image(dropped.id)).await, -2, "a discarded image is gone at once");
}

#[tokio::test]
async fn a_job_whose_image_vanished_fails_instead_of_running_on_nothing() {
    let keys = Keys::new();
    let q = keys.queue("c1", LONG_RECLAIM, policy(10, 3, Duration::from_secs(60))).await;
    let lost = job();
    let lost_id = lost.id;
    enqueue(&q, lost).await.expect("enqueue");
    let next = job();
    let next_id = next.id;
    enqueue(&q, next).await.expect("enqueue");
    redis::cmd("DEL").arg(keys.image(lost_id)).query_async::<()>(&mut keys.raw().await).await.expect("DEL");

    let taken = q.take(2, Duration::from_secs(1)).await.expect("take");
    let ids: Vec<Uuid> = taken.iter().map(|d| d.id).collect();
    assert_eq!(ids, vec![next_id], "only the job with an image is handed out");
    let record = q.get(lost_id).await.expect("get").expect("record");
    assert_eq!(record.status, JobStatus::Failed);
    assert!(record.error.as_deref().is_some_and(|e| e.contains("image")), "{:?}", record.error);
    let dead = keys.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(field(&dead[0], "id"), Some(lost_id.to_string().as_str()));
}

#[tokio::test]
async fn live_workers_are_those_whose_heartbeat_has_not_run_out() {
    let keys = Keys::new();
    let p = policy(100, 3, Duration::from_secs(60));
    let a = keys.queue("worker-a", Duration::from_secs(30), p.clone()).await;
    let b = keys.queue("worker-b", Duration::from_secs(30), p).await;
    assert_eq!(a.heartbeat_ttl(), Duration::from_secs(6), "reclaim_after 30 s, capped at 6 s");
    assert_eq!(a.live_workers().await.expect("count"), 0);
    a.heartbeat(Duration::from_secs(30)).await.expect("beat a");
    // 2 s: long enough to outlive the next two calls on a loaded machine.
    b.heartbeat(Duration::from_secs(2)).await.expect("beat b");
    b.heartbeat(Duration::from_secs(2)).await.expect("a second beat counts once");
    assert_eq!(a.live_workers().await.expect("count"), 2);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(b.live_workers().await.expect("count"), 1, "b's heartbeat ran out");
    a.leave().await.expect("leave");
    assert_eq!(b.live_workers().await.expect("count"), 0, "a left at once");
    assert!(keys.pttl(&format!("{}:workers", keys.prefix)).await > 0, "the set expires by itself");
}

/// The owner of each pending entry of the stream: `XPENDING stream workers - + 100`.
async fn pending_owners(keys: &Keys) -> Vec<String> {
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(keys.stream())
        .arg("workers")
        .arg("-")
        .arg("+")
        .arg(100)
        .query_async(&mut keys.raw().await)
        .await
        .expect("XPENDING");
    pending.into_iter().map(|(_, owner, _, _)| owner).collect()
}

/// Issue 13 item 12: a worker that keeps beating keeps its job however long it runs; one that
/// goes silent (cut off from Redis) loses it, and its beats, once back, do not claim it back; a
/// job released without an outcome is taken over too.
#[tokio::test]
async fn a_renewed_lease_keeps_a_job_with_its_worker_and_a_lapsed_one_lets_it_go() {
    let keys = Keys::new();
    let p = policy(10, 5, Duration::from_secs(60));
    // Long enough that a beat and the next take, on a loaded machine, are well inside it.
    let reclaim = Duration::from_secs(1);
    let a = keys.queue("worker-a", reclaim, p.clone()).await;
    let b = keys.queue("worker-b", reclaim, p).await;
    assert_eq!(a.beat_interval(), reclaim / 3, "a third of reclaim_after (and of the TTL)");
    let j = job();
    let id = j.id;
    enqueue(&a, j).await.expect("enqueue");
    let taken = a.take(1, Duration::from_secs(1)).await.expect("take");
    assert_eq!(taken.len(), 1);

    // Three times reclaim_after, a renewing the lease all along: b never gets the job.
    for _ in 0..9 {
        a.heartbeat(a.heartbeat_ttl()).await.expect("beat");
        assert!(b.take(1, Duration::ZERO).await.expect("take").is_empty(), "a live worker's job stayed with it");
        tokio::time::sleep(a.beat_interval()).await;
    }
    assert_eq!(pending_owners(&keys).await, vec!["worker-a".to_owned()]);
    assert_eq!(a.get(id).await.expect("get").map(|r| r.attempts), Some(1));

    // a goes silent (cut off from Redis) for longer than reclaim_after: b takes the job over.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let reclaimed = b.take(1, Duration::from_secs(1)).await.expect("take");
    assert_eq!(reclaimed.iter().map(|d| (d.id, d.attempt)).collect::<Vec<_>>(), vec![(id, 2)]);
    // a is back and still runs the job: its beats leave it with b.
    a.heartbeat(a.heartbeat_ttl()).await.expect("beat");
    a.heartbeat(a.heartbeat_ttl()).await.expect("beat");
    assert_eq!(pending_owners(&keys).await, vec!["worker-b".to_owned()]);

    // b gives up on it without an outcome stored (say Redis refused the result): its beats no
    // longer renew it, and a takes it over.
    b.release(&reclaimed[0]);
    for _ in 0..5 {
        b.heartbeat(b.heartbeat_ttl()).await.expect("beat");
        tokio::time::sleep(b.beat_interval()).await;
    }
    let again = a.take(1, Duration::from_secs(1)).await.expect("take");
    assert_eq!(again.iter().map(|d| (d.id, d.attempt)).collect::<Vec<_>>(), vec![(id, 3)]);
    a.complete(&again[0], &prediction("accurate")).await.expect("complete");
    assert_eq!(keys.pending().await, 0);
    assert_eq!(a.get(id).await.expect("get").map(|r| r.status), Some(JobStatus::Completed));
}

/// Issue 13 item 11: Redis stalls (SIGSTOP) after the image is staged and before the enqueue
/// runs; the enqueue gives up; Redis wakes and runs it: it queues nothing, and leaves no image.
#[tokio::test]
async fn an_enqueue_that_redis_runs_after_its_caller_gave_up_queues_nothing() {
    let redis = RedisServer::start(false);
    let keys = Keys::at(&redis.url());
    let q = keys.queue("c1", LONG_RECLAIM, policy(10, 3, Duration::from_secs(60))).await;
    // One job queued first, so the script is loaded: else the late EVALSHA only gets NOSCRIPT.
    let first = job();
    let first_bytes = first.image.len() as u64;
    enqueue(&q, first).await.expect("enqueue");
    let j = job();
    let mut staged = q.stage(j.id, j.image.clone(), j.created_at_ms).await;
    assert!(staged.stored().await, "staged");
    assert!(keys.pttl(&keys.image(j.id)).await > 0, "staged");
    redis.pause();
    let started = Instant::now();
    let outcome = staged.commit(&j.fast, None, None).await;
    let gave_up_after = started.elapsed();
    redis.resume();
    assert!(matches!(outcome, Err(QueueError::Unavailable(_))), "{outcome:?}");
    assert!(gave_up_after < Duration::from_secs(3), "{gave_up_after:?}");
    // Redis has run the enqueue by the time it answers this (the undo, which could also remove
    // the record, never touches the stream).
    assert_eq!(keys.xlen().await, 1, "the late enqueue queued nothing");
    assert_eq!(q.get(j.id).await.expect("get"), None);
    assert_eq!(keys.pttl(&keys.image(j.id)).await, -2, "and deleted the staged image");
    assert_eq!(keys.queued_bytes().await, Some(first_bytes), "and counted none of its bytes");

    // Redis answering in time, the same steps queue the job.
    let k = job();
    let staged = q.stage(k.id, k.image.clone(), k.created_at_ms).await;
    staged.commit(&k.fast, None, None).await.expect("enqueue");
    assert_eq!(keys.xlen().await, 2);
}

/// A TCP proxy to a Redis that passes on whatever clients send but, while `swallow` is on,
/// drops Redis' replies: an answer lost on the way back.
struct LossyProxy {
    port: u16,
    swallow: Arc<AtomicBool>,
}

impl LossyProxy {
    fn start(redis_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let swallow = Arc::new(AtomicBool::new(false));
        let dropping = Arc::clone(&swallow);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let (Ok(mut client), Ok(mut server)) = (client, TcpStream::connect(("127.0.0.1", redis_port))) else {
                    continue;
                };
                let (Ok(mut client_in), Ok(mut server_out)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                std::thread::spawn(move || std::io::copy(&mut client_in, &mut server_out));
                let dropping = Arc::clone(&dropping);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    while let Ok(n) = server.read(&mut buf) {
                        if n == 0 || (!dropping.load(Ordering::SeqCst) && client.write_all(&buf[..n]).is_err()) {
                            return;
                        }
                    }
                });
            }
        });
        Self { port, swallow }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

/// Issue 13 item 11: an enqueue whose script ran in time but whose answer was lost is undone
/// in the background once its fence has passed; a worker then drops its entry.
#[tokio::test]
async fn an_enqueue_whose_answer_was_lost_is_undone() {
    let redis = RedisServer::start(false);
    let proxy = LossyProxy::start(redis.port);
    let keys = Keys::at(&redis.url());
    let config = config(&proxy.url(), &keys.prefix, "c1", LONG_RECLAIM, policy(10, 3, Duration::from_secs(60)));
    let q = RedisQueue::connect(config).await.expect("connect");
    // One job queued normally first, so the script is loaded (a swallowed NOSCRIPT would mean
    // the script never ran).
    let k = job();
    enqueue(&q, k.clone()).await.expect("enqueue");
    let j = job();
    let mut staged = q.stage(j.id, j.image.clone(), j.created_at_ms).await;
    assert!(staged.stored().await, "staged");
    assert!(keys.pttl(&keys.image(j.id)).await > 0, "staged");
    proxy.swallow.store(true, Ordering::SeqCst);
    let outcome = staged.commit(&j.fast, None, None).await;
    proxy.swallow.store(false, Ordering::SeqCst);
    assert!(matches!(outcome, Err(QueueError::Unavailable(_))), "{outcome:?}");
    assert_eq!(keys.xlen().await, 2, "the script ran: only its answer was lost");
    let k_bytes = k.image.len() as u64;
    assert_eq!(keys.queued_bytes().await, Some(k_bytes + j.image.len() as u64), "both counted");

    let deadline = Instant::now() + Duration::from_secs(5);
    while keys.pttl(&keys.job(j.id)).await != -2 {
        assert!(Instant::now() < deadline, "the job's record was not removed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(keys.pttl(&keys.image(j.id)).await, -2, "the undo deleted the queued image");
    assert_eq!(keys.queued_bytes().await, Some(k_bytes), "and gave its bytes back");
    let taken = q.take(2, Duration::from_millis(500)).await.expect("take");
    assert_eq!(taken.iter().map(|d| d.id).collect::<Vec<_>>(), vec![k.id], "only the job given an id runs");
    q.complete(&taken[0], &prediction("accurate")).await.expect("complete");
    assert_eq!(keys.xlen().await, 0, "the worker dropped the undone job's entry");
    assert_eq!(keys.images().await, 0, "and its image");
    assert_eq!(keys.queued_bytes().await, None, "given back once: the counter is 0, not below");
}

/// The undo meets a job that a worker is already running: the worker's outcome is not stored,
/// and the job's bytes go back once (at the undo), not again when the worker finishes.
#[tokio::test]
async fn an_undone_job_that_was_running_gives_its_bytes_back_once() {
    let keys = Keys::new();
    let q = keys.queue("c1", LONG_RECLAIM, policy(10, 3, Duration::from_secs(60))).await;
    let (k, j) = (job(), job());
    let k_bytes = k.image.len() as u64;
    enqueue(&q, k).await.expect("enqueue");
    enqueue(&q, j.clone()).await.expect("enqueue");
    let taken = q.take(2, Duration::from_secs(1)).await.expect("take");
    assert_eq!(taken.len(), 2);
    assert!(q.undo_enqueue(j.id).await.expect("cancel"), "there was a record");
    assert_eq!(keys.queued_bytes().await, Some(k_bytes));
    assert!(!q.undo_enqueue(j.id).await.expect("cancel"), "a second undo finds nothing");
    assert_eq!(keys.queued_bytes().await, Some(k_bytes), "and gives nothing back");
    for delivery in &taken {
        q.complete(delivery, &prediction("accurate")).await.expect("complete");
    }
    assert_eq!(q.get(j.id).await.expect("get"), None, "the undone job's result is not stored");
    assert_eq!((keys.xlen().await, keys.images().await), (0, 0));
    assert_eq!(keys.queued_bytes().await, None, "each job's bytes went back once");
}
