//! Handing jobs to a worker: new entries of the stream, and entries whose worker stopped
//! renewing their lease ("Taking over jobs" in `mod.rs`), each started by one script.

use std::sync::PoisonError;
use std::time::Duration;

use bytes::Bytes;
use redis::Value;
use tokio::time::Instant;

use super::conn::{AbandonOnDrop, OP_TIMEOUT, Retry};
use super::keys::GROUP;
use super::reply::{RawEntry, Started, parse_entries, parse_read_reply, parse_started, string_of};
use super::{DEAD_LETTER_MAXLEN, RedisQueue, ttl_ms};
use crate::jobs::now_ms;
use crate::queue::{Delivery, QueueError, Receipt};

/// The longest single `XREADGROUP ... BLOCK`; a longer `take` wait is made of several.
pub(super) const BLOCK_CHUNK: Duration = Duration::from_secs(5);
/// The most often one process looks for jobs whose worker died.
const MAX_RECLAIM_INTERVAL: Duration = Duration::from_secs(1);

impl RedisQueue {
    /// Up to `max` jobs, waiting at most `wait` for the first. Jobs abandoned by a worker that
    /// died (pending longer than `reclaim_after`) are taken over first, at most once per
    /// `min(reclaim_after / 2, 1 s)` per process.
    pub async fn take(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + wait;
        self.ensure_group().await?;
        let mut taken = match self.reclaim_cursor() {
            Some(cursor) => self.reclaim(max, cursor).await?,
            None => Vec::new(),
        };
        loop {
            let want = max - taken.len();
            if want == 0 {
                break;
            }
            let block = if taken.is_empty() {
                deadline.saturating_duration_since(Instant::now()).min(BLOCK_CHUNK)
            } else {
                Duration::ZERO
            };
            match self.read_new(want, block).await {
                Ok(read) => taken.extend(read),
                // Jobs already started belong to this worker now: hand them over, not an error.
                Err(err) if !taken.is_empty() => {
                    tracing::warn!(error = %err, "reading more jobs failed");
                    break;
                }
                Err(err) => return Err(err),
            }
            if !taken.is_empty() || Instant::now() >= deadline {
                break;
            }
        }
        Ok(taken)
    }

    fn reclaim_interval(&self) -> Duration {
        (self.inner.config.reclaim_after / 2).clamp(Duration::from_millis(10), MAX_RECLAIM_INTERVAL)
    }

    /// The cursor to go on scanning from if it is time to look for abandoned jobs.
    fn reclaim_cursor(&self) -> Option<String> {
        let now = Instant::now();
        let mut state = self.inner.reclaim.lock().unwrap_or_else(PoisonError::into_inner);
        if state.next_at.is_some_and(|at| at > now) {
            return None;
        }
        state.next_at = Some(now + self.reclaim_interval());
        Some(state.cursor.clone())
    }

    /// Takes over jobs pending longer than `reclaim_after` (their worker died) with XAUTOCLAIM.
    async fn reclaim(&self, max: usize, cursor: String) -> Result<Vec<Delivery>, QueueError> {
        let inner = &self.inner;
        let min_idle = u64::try_from(inner.config.reclaim_after.as_millis()).unwrap_or(u64::MAX);
        let (stream, consumer, cursor) = (&inner.keys.stream, &inner.config.consumer, &cursor);
        let reply: Value = self
            .call(&inner.main, "reclaim", OP_TIMEOUT, Retry::Unsent, |mut conn| async move {
                redis::cmd("XAUTOCLAIM")
                    .arg(stream)
                    .arg(GROUP)
                    .arg(consumer)
                    .arg(min_idle)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(max)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        // [next cursor, claimed entries, deleted ids (Redis 7: already dropped from the PEL)]
        let mut parts = match reply {
            Value::Array(parts) => parts.into_iter(),
            _ => return Ok(Vec::new()),
        };
        if let Some(next) = parts.next().as_ref().and_then(string_of) {
            inner.reclaim.lock().unwrap_or_else(PoisonError::into_inner).cursor = next;
        }
        let entries = parts.next().map(parse_entries).unwrap_or_default();
        if !entries.is_empty() {
            tracing::info!(
                count = entries.len(),
                "took over jobs whose lease was not renewed for --reclaim-after (their worker stopped or lost Redis)"
            );
        }
        self.start(entries).await
    }

    /// Reads new entries for this consumer, blocking up to `block` on the dedicated connection.
    async fn read_new(&self, count: usize, block: Duration) -> Result<Vec<Delivery>, QueueError> {
        let inner = &self.inner;
        let reply = if block.as_millis() == 0 {
            // BLOCK 0 would mean "forever": no BLOCK at all, on the ordinary connection.
            let read = &self.read_command(count, None);
            self.call(&inner.main, "take", OP_TIMEOUT, Retry::Unsent, |mut conn| async move {
                read.query_async::<Value>(&mut conn).await
            })
            .await?
        } else {
            // Another task of this process may be blocked on the connection: wait for it, but
            // not past our own deadline.
            let deadline = Instant::now() + block;
            let Ok(_guard) = tokio::time::timeout_at(deadline, inner.blocking_lock.lock()).await else {
                return Ok(Vec::new());
            };
            let block = deadline.saturating_duration_since(Instant::now());
            if block.as_millis() == 0 {
                return Ok(Vec::new());
            }
            let read = &self.read_command(count, Some(block));
            // If this future is dropped mid-read (the caller gave up on `take`), the BLOCK
            // goes on at the server, the next read would queue behind it and the abandoned
            // one could swallow a job: drop that connection.
            let mut abandon = AbandonOnDrop { conn: &inner.blocking, armed: true };
            let reply = self
                .call(&inner.blocking, "take", block + OP_TIMEOUT, Retry::Unsent, |mut conn| async move {
                    read.query_async::<Value>(&mut conn).await
                })
                .await;
            abandon.armed = false;
            reply?
        };
        self.start(parse_read_reply(reply)).await
    }

    fn read_command(&self, count: usize, block: Option<Duration>) -> redis::Cmd {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP").arg(GROUP).arg(&self.inner.config.consumer).arg("COUNT").arg(count);
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(ttl_ms(block));
        }
        cmd.arg("STREAMS").arg(&self.inner.keys.stream).arg(">");
        cmd
    }

    /// Counts an attempt for each delivered entry and marks it running, in one script; drops
    /// entries whose job is gone or that used up their attempts on workers that died.
    async fn start(&self, entries: Vec<RawEntry>) -> Result<Vec<Delivery>, QueueError> {
        let inner = &self.inner;
        let mut jobs = Vec::with_capacity(entries.len());
        let mut junk = Vec::new();
        for entry in entries {
            match entry.into_job() {
                (entry_id, Some(id)) => jobs.push((entry_id, id)),
                (entry_id, None) => junk.push(entry_id),
            }
        }
        if !junk.is_empty() {
            tracing::warn!(count = junk.len(), "dropping malformed or deleted stream entries");
            let (stream, junk) = (&inner.keys.stream, &junk);
            self.call(&inner.main, "take", OP_TIMEOUT, Retry::Unsent, |mut conn| async move {
                redis::pipe()
                    .atomic()
                    .cmd("XACK")
                    .arg(stream)
                    .arg(GROUP)
                    .arg(junk)
                    .ignore()
                    .cmd("XDEL")
                    .arg(stream)
                    .arg(junk)
                    .ignore()
                    .query_async::<()>(&mut conn)
                    .await
            })
            .await?;
        }
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = inner.scripts.start.prepare_invoke();
        invocation.key(&inner.keys.stream).key(&inner.keys.dead).key(&inner.keys.queued_bytes);
        for (_, id) in &jobs {
            invocation.key(inner.keys.job(*id)).key(inner.keys.image(*id));
        }
        invocation
            .arg(GROUP)
            .arg(self.max_attempts())
            .arg(now_ms())
            .arg(ttl_ms(self.unfinished_ttl()))
            .arg(ttl_ms(inner.config.policy.result_ttl))
            .arg(DEAD_LETTER_MAXLEN);
        for (entry_id, id) in &jobs {
            invocation.arg(entry_id).arg(id.to_string());
        }
        // The images come in the same round trip, fetched right after the script (an image of an
        // entry it drops comes for nothing; that is rare): one round trip fewer per batch.
        let image_keys: Vec<String> = jobs.iter().map(|(_, id)| inner.keys.image(*id)).collect();
        let (invocation, image_keys) = (&invocation, &image_keys);
        let (started, images): (Vec<Value>, Vec<Option<Vec<u8>>>) = self
            .call(&inner.main, "take", OP_TIMEOUT, Retry::Unsent, |mut conn| async move {
                let start_then_images = || {
                    let mut pipe = redis::pipe();
                    pipe.invoke_script(invocation).cmd("MGET").arg(image_keys);
                    pipe
                };
                match start_then_images().query_async(&mut conn).await {
                    // After a Redis restart the script is not loaded: load it, then again (the
                    // failed call changed nothing).
                    Err(err) if err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                        invocation.load_async(&mut conn).await?;
                        start_then_images().query_async(&mut conn).await
                    }
                    other => other,
                }
            })
            .await?;
        let mut deliveries = Vec::with_capacity(jobs.len());
        let outcomes = parse_started(started).into_iter().zip(images);
        for ((entry_id, id), (outcome, image)) in jobs.into_iter().zip(outcomes) {
            match outcome {
                Started::Failed => {
                    tracing::warn!(job = %id, "job failed: out of attempts (workers stopped) or its image is gone")
                }
                // The start script has just checked that the image exists; one deleted since (by
                // hand) arrives empty and fails as an empty image.
                Started::Running { attempt, created_at_ms, fast_class } => deliveries.push(Delivery {
                    id,
                    image: image.map(Bytes::from).unwrap_or_default(),
                    attempt,
                    created_at_ms,
                    fast_class,
                    receipt: Receipt::redis(entry_id),
                }),
                Started::Dropped => tracing::debug!(job = %id, "dropped the entry of a job that is gone or finished"),
            }
        }
        // Held from here: handed to the caller, which runs them and then releases each.
        let mut held = self.inner.held.lock().unwrap_or_else(PoisonError::into_inner);
        for delivery in &deliveries {
            held.entry(delivery.receipt.entry_id().to_owned()).or_insert((delivery.id, 0)).1 += 1;
        }
        Ok(deliveries)
    }

    /// The worker is done with a delivery (its outcome stored, or given up on): its lease is no
    /// longer renewed, so if the outcome was not stored the job is taken over after
    /// `reclaim_after`.
    pub fn release(&self, delivery: &Delivery) {
        let mut held = self.inner.held.lock().unwrap_or_else(PoisonError::into_inner);
        let entry_id = delivery.receipt.entry_id();
        if let Some((_, running)) = held.get_mut(entry_id) {
            *running = running.saturating_sub(1);
            if *running == 0 {
                held.remove(entry_id);
            }
        }
    }
}
