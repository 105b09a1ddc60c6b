//! Helpers the queue tests share (`redis_queue.rs`, `queue_contract.rs`): test jobs, and a
//! fresh Redis key prefix to look under, deleted when done.
#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use redis::Value;
use tandem::engine::Prediction;
use tandem::jobs::now_ms;
use tandem::queue::{QueuePolicy, RedisQueue, RedisQueueConfig, ReplicaAcks};
use uuid::Uuid;

/// How long a queue under test waits before taking over a job: longer than any test.
pub const LONG_RECLAIM: Duration = Duration::from_secs(60);

pub fn redis_url() -> String {
    std::env::var("TANDEM_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

pub fn prediction(label: &str) -> Prediction {
    Prediction {
        model: "m".into(),
        label: label.into(),
        class_index: 7,
        score: 0.25,
        top_k: Vec::new(),
        inference_ms: 1.5,
        probabilities: None,
    }
}

/// A job whose image is binary (NUL, 0xFF, invalid UTF-8) so base64 or string mangling shows.
pub fn job() -> NewJob {
    let mut image = vec![0u8, 0xFF, 0xFE, b'\r', b'\n', 0x80];
    image.extend(Uuid::new_v4().as_bytes());
    NewJob { id: Uuid::new_v4(), image: Bytes::from(image), fast: prediction("fast"), created_at_ms: now_ms() }
}

pub fn job_of(size: usize) -> NewJob {
    NewJob { image: Bytes::from(vec![0xA5; size]), ..job() }
}

/// A job as `POST /predict` hands it to the queue: staged with its image, committed with its
/// fast answer.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: Uuid,
    pub image: Bytes,
    pub fast: Prediction,
    pub created_at_ms: u64,
}

pub fn policy(max_queue: usize, max_attempts: u32, result_ttl: Duration) -> QueuePolicy {
    QueuePolicy { max_queue, result_ttl, max_attempts, ..QueuePolicy::default() }
}

pub fn config(
    url: &str,
    prefix: &str,
    consumer: &str,
    reclaim_after: Duration,
    policy: QueuePolicy,
) -> RedisQueueConfig {
    RedisQueueConfig {
        url: url.into(),
        prefix: prefix.into(),
        consumer: consumer.into(),
        reclaim_after,
        policy,
        replica_acks: ReplicaAcks::OFF,
    }
}

/// A fresh key prefix whose keys are deleted when this is dropped.
pub struct Keys {
    pub url: String,
    pub prefix: String,
}

impl Keys {
    pub fn new() -> Self {
        Self::at(&redis_url())
    }

    pub fn at(url: &str) -> Self {
        Self { url: url.into(), prefix: format!("tandem-test-{}", Uuid::new_v4()) }
    }

    pub fn queue_config(&self, consumer: &str, reclaim_after: Duration, policy: QueuePolicy) -> RedisQueueConfig {
        config(&self.url, &self.prefix, consumer, reclaim_after, policy)
    }

    pub async fn queue(&self, consumer: &str, reclaim_after: Duration, policy: QueuePolicy) -> RedisQueue {
        RedisQueue::connect(self.queue_config(consumer, reclaim_after, policy)).await.expect("connect")
    }

    pub fn stream(&self) -> String {
        format!("{}:jobs", self.prefix)
    }

    pub fn dead(&self) -> String {
        format!("{}:dead", self.prefix)
    }

    pub fn job(&self, id: Uuid) -> String {
        format!("{}:job:{id}", self.prefix)
    }

    pub fn image(&self, id: Uuid) -> String {
        format!("{}:image:{id}", self.prefix)
    }

    /// `PTTL` of a key: -2 if it does not exist, -1 if it never expires.
    pub async fn pttl(&self, key: &str) -> i64 {
        redis::cmd("PTTL").arg(key).query_async(&mut self.raw().await).await.expect("PTTL")
    }

    /// How many images are stored under this prefix.
    pub async fn images(&self) -> usize {
        let found: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:image:*", self.prefix))
            .query_async(&mut self.raw().await)
            .await
            .expect("KEYS");
        found.len()
    }

    pub async fn raw(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.url.as_str()).expect("url");
        client.get_multiplexed_async_connection().await.expect("a direct connection to the test Redis")
    }

    pub async fn xlen(&self) -> u64 {
        redis::cmd("XLEN").arg(self.stream()).query_async(&mut self.raw().await).await.expect("XLEN")
    }

    /// The dead-letter entries' fields, as strings.
    pub async fn dead_letters(&self) -> Vec<Vec<(String, String)>> {
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(self.dead())
            .arg("-")
            .arg("+")
            .query_async(&mut self.raw().await)
            .await
            .expect("XRANGE");
        entries.into_iter().map(|(_, fields)| fields).collect()
    }

    /// The queued-bytes counter; `None` when the key is missing (which means 0).
    pub async fn queued_bytes(&self) -> Option<u64> {
        redis::cmd("GET")
            .arg(format!("{}:queued_bytes", self.prefix))
            .query_async(&mut self.raw().await)
            .await
            .expect("GET")
    }

    pub async fn pending(&self) -> u64 {
        let summary: Value = redis::cmd("XPENDING")
            .arg(self.stream())
            .arg("workers")
            .query_async(&mut self.raw().await)
            .await
            .expect("XPENDING");
        match summary {
            Value::Array(items) => match items.first() {
                Some(Value::Int(count)) => *count as u64,
                other => panic!("XPENDING count: {other:?}"),
            },
            other => panic!("XPENDING: {other:?}"),
        }
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        // Best effort: the server may be one a test has killed.
        let Ok(client) = redis::Client::open(self.url.as_str()) else { return };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(1)) else { return };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let keys: Vec<String> =
            redis::cmd("KEYS").arg(format!("{}:*", self.prefix)).query(&mut conn).unwrap_or_default();
        if !keys.is_empty() {
            let _ = redis::cmd("DEL").arg(keys).query::<()>(&mut conn);
        }
    }
}

pub fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
}
