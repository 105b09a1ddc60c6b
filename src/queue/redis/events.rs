//! Job events across processes: every script that changes a job's state publishes its id on
//! `{prefix}:jobs:events` in the same atomic step (`start.lua`, `complete.lua`, `fail.lua`), and
//! each process that has watchers holds one subscription to it, fanned out in memory through
//! [`JobEvents`]. No watcher polls Redis: a thousand clients waiting on one `serve` cost one
//! connection.
//!
//! The subscription starts with the first watch, so workers, which never watch, never subscribe.
//! When it drops (Redis restarted, a network cut, which the pings notice) it is made again with
//! a backoff, and once subscribed again every watcher is woken to look again, for the events
//! that may have gone by meanwhile.

use std::time::Duration;

use futures_util::StreamExt as _;

use super::endpoint::Endpoint;
use crate::queue::events::JobEvents;

/// Connecting, subscribing and each ping must answer within this.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a quiet subscription is pinged: a connection cut without a reset (no keepalive on
/// it) would otherwise wait for messages forever.
const PING_EVERY: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// A subscription that lasted this long ends the backoff: it was not failing again at once.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// Runs the subscription for as long as the process does (see `RedisQueue::watch`).
pub(super) fn spawn_subscriber(
    runtime: &tokio::runtime::Handle,
    endpoint: std::sync::Arc<Endpoint>,
    channel: String,
    events: JobEvents,
) -> tokio::task::JoinHandle<()> {
    runtime.spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = tokio::time::Instant::now();
            match subscribe(&endpoint, &channel, &events).await {
                Ok(()) => tracing::debug!(%channel, "job events subscription ended; subscribing again"),
                Err(err) => tracing::debug!(%channel, error = %err, "job events subscription failed"),
            }
            if started.elapsed() >= HEALTHY_AFTER {
                backoff = Duration::from_millis(100);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    })
}

/// Subscribes and forwards events until the connection ends or stops answering pings.
async fn subscribe(endpoint: &Endpoint, channel: &str, events: &JobEvents) -> Result<(), String> {
    // With Sentinel, the primary as it is now (a subscription made again follows a failover).
    let connect = async { endpoint.client().await?.get_async_pubsub().await };
    let pubsub = tokio::time::timeout(ANSWER_TIMEOUT, connect)
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|err| err.to_string())?;
    let (mut sink, mut messages) = pubsub.split();
    tokio::time::timeout(ANSWER_TIMEOUT, sink.subscribe(channel))
        .await
        .map_err(|_| "subscribe timed out".to_owned())?
        .map_err(|err| err.to_string())?;
    // Whatever changed while this process was not subscribed is looked at again now.
    events.changed_all();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            message = messages.next() => {
                let Some(message) = message else { return Ok(()) };
                let Ok(payload) = message.get_payload::<String>() else { continue };
                if let Ok(id) = uuid::Uuid::try_parse(&payload) {
                    events.changed(id);
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(ANSWER_TIMEOUT, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(err)) => return Err(format!("ping failed: {err}")),
                    Err(_) => return Err("ping timed out".into()),
                }
            }
        }
    }
}
