//! The webhooks stream (`{prefix}:jobs:webhooks`, see `keys.rs`): each entry is one job whose
//! webhook is to be sent, added by the script that ended the job. Senders read it through the
//! `webhooks` group, keep an entry pending (renewing it, as jobs' leases are) while they retry,
//! and acknowledge and delete it once it is delivered or given up. An entry whose sender stops
//! renewing it for `reclaim_after` (it crashed) is taken over by another sender, which goes on
//! from the attempts counted in the job's record: a delivery survives its sender's crash.

use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::{Script, Value};

use super::RedisQueue;
use super::conn::has_code;
use super::conn::{AbandonOnDrop, OP_TIMEOUT, Retry};
use super::keys::WEBHOOK_GROUP;
use super::reply::{parse_entries, parse_read_reply};
use super::take::BLOCK_CHUNK;
use crate::queue::{QueueError, Receipt, WebhookTask};

/// Counts an attempt in the job's record, unless the record is gone (then 0).
const COUNT_ATTEMPT_LUA: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HINCRBY', KEYS[1], 'webhook_attempts', 1)
";

impl RedisQueue {
    /// Up to `max` webhooks: first any whose sender stopped renewing them, then new ones,
    /// waiting up to `wait` (in chunks) for the first.
    pub async fn take_webhooks(&self, max: usize, wait: Duration) -> Result<Vec<WebhookTask>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        self.ensure_webhook_group().await?;
        let mut taken = self.reclaim_webhooks(max).await?;
        if taken.is_empty() {
            taken = self.read_webhooks(max, wait.min(BLOCK_CHUNK)).await?;
        }
        Ok(taken)
    }

    async fn reclaim_webhooks(&self, max: usize) -> Result<Vec<WebhookTask>, QueueError> {
        let inner = &self.inner;
        let min_idle = u64::try_from(inner.config.reclaim_after.as_millis()).unwrap_or(u64::MAX);
        let (stream, consumer) = (&inner.keys.webhooks, &inner.config.consumer);
        let reply: Value = self
            .call(&inner.main, "reclaim webhooks", OP_TIMEOUT, Retry::Unsent, |mut conn| async move {
                redis::cmd("XAUTOCLAIM")
                    .arg(stream)
                    .arg(WEBHOOK_GROUP)
                    .arg(consumer)
                    .arg(min_idle)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(max)
                    .query_async(&mut conn)
                    .await
            })
            .await
            .map_err(|err| self.group_lost(err))?;
        let entries = match reply {
            Value::Array(parts) => parts.into_iter().nth(1).map(parse_entries).unwrap_or_default(),
            _ => Vec::new(),
        };
        let tasks = tasks(entries);
        if !tasks.is_empty() {
            tracing::info!(count = tasks.len(), "took over webhooks whose sender stopped (after --reclaim-after)");
        }
        Ok(tasks)
    }

    async fn read_webhooks(&self, max: usize, block: Duration) -> Result<Vec<WebhookTask>, QueueError> {
        let inner = &self.inner;
        let block_ms = u64::try_from(block.as_millis()).unwrap_or(0).max(1);
        let (stream, consumer) = (&inner.keys.webhooks, &inner.config.consumer);
        // Only the one sender loop of this process reads here: no lock needed. Dropped
        // mid-read, the BLOCK would go on at the server: that connection is thrown away.
        let mut abandon = AbandonOnDrop { conn: &inner.hooks, armed: true };
        let reply: Value = self
            .call(&inner.hooks, "read webhooks", OP_TIMEOUT + block, Retry::Unsent, |mut conn| async move {
                redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(WEBHOOK_GROUP)
                    .arg(consumer)
                    .arg("COUNT")
                    .arg(max)
                    .arg("BLOCK")
                    .arg(block_ms)
                    .arg("STREAMS")
                    .arg(stream)
                    .arg(">")
                    .query_async(&mut conn)
                    .await
            })
            .await
            .map_err(|err| self.group_lost(err))?;
        abandon.armed = false;
        Ok(tasks(parse_read_reply(reply)))
    }

    /// A read failed: the group may be gone (Redis restarted empty), so it is made again
    /// (or found there) before the next read.
    fn group_lost(&self, err: QueueError) -> QueueError {
        self.inner.webhook_group_ready.store(false, Ordering::Relaxed);
        err
    }

    async fn ensure_webhook_group(&self) -> Result<(), QueueError> {
        if self.inner.webhook_group_ready.load(Ordering::Relaxed) {
            return Ok(());
        }
        let stream = &self.inner.keys.webhooks;
        self.call(&self.inner.main, "create the webhook group", OP_TIMEOUT, Retry::Unsent, |mut conn| async move {
            let created = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(stream)
                .arg(WEBHOOK_GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async::<()>(&mut conn)
                .await;
            match created {
                Err(err) if has_code(&err, "BUSYGROUP") => Ok(()),
                other => other,
            }
        })
        .await?;
        self.inner.webhook_group_ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Counts one more attempt at the task's webhook in the job's record; returns the count
    /// (from 1), or 0 if the record is gone (expired).
    pub async fn count_webhook_attempt(&self, task: &WebhookTask) -> Result<u32, QueueError> {
        let key = self.inner.keys.job(task.id);
        let script = Script::new(COUNT_ATTEMPT_LUA);
        let mut invocation = script.prepare_invoke();
        invocation.key(&key);
        let invocation = &invocation;
        let count: i64 = self
            .call(&self.inner.main, "count webhook attempt", OP_TIMEOUT, Retry::Unsent, |mut conn| async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        Ok(u32::try_from(count).unwrap_or(0))
    }

    /// Tells other senders this one is still at the task (resets its idle time), so it is not
    /// taken over while it waits between attempts.
    pub async fn renew_webhook(&self, task: &WebhookTask) -> Result<(), QueueError> {
        let inner = &self.inner;
        let (stream, consumer, entry) = (&inner.keys.webhooks, &inner.config.consumer, task.receipt.entry_id());
        let _: Value = self
            .call(&inner.main, "renew webhook", OP_TIMEOUT, Retry::Unsent, |mut conn| async move {
                redis::cmd("XCLAIM")
                    .arg(stream)
                    .arg(WEBHOOK_GROUP)
                    .arg(consumer)
                    .arg(0)
                    .arg(entry)
                    .arg("JUSTID")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(())
    }

    /// The webhook was delivered or given up: its entry goes.
    pub async fn webhook_done(&self, task: &WebhookTask) -> Result<(), QueueError> {
        let inner = &self.inner;
        let (stream, entry) = (&inner.keys.webhooks, task.receipt.entry_id());
        let _: Value = self
            .call(&inner.main, "webhook done", OP_TIMEOUT, Retry::Outcome, |mut conn| async move {
                redis::pipe()
                    .atomic()
                    .cmd("XACK")
                    .arg(stream)
                    .arg(WEBHOOK_GROUP)
                    .arg(entry)
                    .cmd("XDEL")
                    .arg(stream)
                    .arg(entry)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok(())
    }
}

fn tasks(entries: Vec<super::reply::RawEntry>) -> Vec<WebhookTask> {
    entries
        .into_iter()
        .filter_map(|raw| {
            let (entry, id) = raw.into_job();
            match id {
                Some(id) => Some(WebhookTask { id, attempts: 0, receipt: Receipt::redis(entry) }),
                None => {
                    tracing::warn!(entry, "unreadable webhook entry skipped");
                    None
                }
            }
        })
        .collect()
}
