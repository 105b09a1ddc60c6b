//! Start-up steps `serve` and `worker` share: the async runtime, a listening socket, the Redis
//! queue. Each fails with one line that names what was given and what would work.

use anyhow::Context as _;

use super::args::QueueArgs;
use crate::queue::{JobQueue, QueuePolicy, RedisQueue, RedisQueueConfig, ReplicaAcks};

pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

/// Binds `HOST:PORT`, the host an IP or a name (every address it resolves to is tried in turn).
pub(super) async fn bind(addr: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|err| {
        let hint = match err.kind() {
            std::io::ErrorKind::AddrInUse => " (another process is using that port: stop it or pass another --addr)",
            std::io::ErrorKind::AddrNotAvailable => " (that address is not on this machine)",
            _ if !addr.contains(':') => " (expected HOST:PORT, e.g. 127.0.0.1:8000 or localhost:8000)",
            _ => "",
        };
        anyhow::anyhow!("cannot listen on {addr}: {err}{hint}")
    })
}

/// Refuses a Redis URL that cannot work, naming it (its password left out) and the forms that do.
pub(super) fn check_redis_url(url: &str) -> anyhow::Result<()> {
    RedisQueue::check_url(url).map_err(|err| anyhow::anyhow!("invalid --redis-url {:?}: {err}", without_password(url)))
}

/// `scheme://user:secret@host/...` as `scheme://***@host/...`: everything up to the last `@`
/// (a password may hold `/` or `@`).
fn without_password(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rfind('@') {
            Some(at) => format!("{scheme}://***{}", &rest[at..]),
            None => url.to_owned(),
        },
        None if url.contains('@') => "***".to_owned(),
        None => url.to_owned(),
    }
}

/// `policy`: `args.policy()`, with what only `serve` sets (the cache); `replica_acks` too.
pub(super) async fn connect_redis(
    url: &str,
    args: &QueueArgs,
    policy: QueuePolicy,
    replica_acks: ReplicaAcks,
) -> anyhow::Result<JobQueue> {
    let config = RedisQueueConfig {
        url: url.to_owned(),
        prefix: args.redis_prefix.clone(),
        consumer: consumer_name(),
        reclaim_after: args.reclaim_after(),
        policy,
        replica_acks,
    };
    let queue = RedisQueue::connect(config).await.context("cannot set up the Redis queue")?;
    // One call now, so a Redis that does not answer is logged at start-up (the queue logs
    // each outage once) rather than only noticed in the replies; it is not fatal: Redis may
    // come up later, and everything resumes when it does.
    let _ = queue.check_ready().await;
    Ok(JobQueue::Redis(queue))
}

/// Unique per process, readable in `XINFO CONSUMERS`: host, pid and a random suffix.
fn consumer_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into());
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &random[..8])
}
