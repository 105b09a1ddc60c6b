//! Job events across processes: every script that changes a job's state publishes its id on
//! `{prefix}:jobs:events` in the same atomic step (`start.lua`, `complete.lua`, `fail.lua`), and
//! each process that has watchers holds one subscription to it, fanned out in memory through
//! [`JobEvents`]. No watcher polls Redis: a thousand clients waiting on one `serve` cost one
//! connection.
//!
//! The subscription starts with the first watch, so workers, which never watch, never subscribe.
//! When it drops (Redis restarted, network cut) it is made again with a backoff, and every
//! watcher is woken to look again, for the events that may have gone by meanwhile.

use std::time::Duration;

use futures_util::StreamExt as _;
use redis::Client;

use crate::queue::events::JobEvents;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Runs the subscription for as long as the process does.
pub(super) fn spawn_subscriber(client: Client, channel: String, events: JobEvents) {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            match subscribe(&client, &channel, &events).await {
                Ok(()) => {
                    tracing::debug!(%channel, "job events subscription ended; subscribing again");
                    backoff = Duration::from_millis(100);
                }
                Err(err) => tracing::debug!(%channel, error = %err, "cannot subscribe to job events"),
            }
            events.changed_all();
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    });
}

/// Subscribes and forwards events until the connection ends.
async fn subscribe(client: &Client, channel: &str, events: &JobEvents) -> Result<(), String> {
    let mut pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|err| err.to_string())?;
    pubsub.subscribe(channel).await.map_err(|err| err.to_string())?;
    // Whatever changed while this process was not subscribed is looked at again now.
    events.changed_all();
    let mut messages = pubsub.on_message();
    while let Some(message) = messages.next().await {
        let Ok(payload) = message.get_payload::<String>() else { continue };
        if let Ok(id) = uuid::Uuid::try_parse(&payload) {
            events.changed(id);
        }
    }
    Ok(())
}
