//! Waiting for a job instead of polling it: `GET /job/{id}?wait=SECONDS` (long-poll),
//! `GET /job/{id}/events` (server-sent events), and `POST /predict` with
//! `Accept: text/event-stream` (the fast answer, then the job's events, in one connection).
//!
//! Both hold a watcher permit (`--max-watchers`; past it, 429) and a queue watch
//! ([`crate::queue::JobWatch`]), and read the job again each time the watch wakes, never on a
//! timer: a waiting client costs memory, not Redis round trips. The watch is taken before the
//! first read, so a change in between is not missed.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::{Stream, StreamExt as _};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::AppState;
use super::error::ApiError;
use super::types::JobResponse;
use crate::jobs::{JobId, JobRecord};
use crate::queue::JobWatch;

/// How often an idle event stream sends a comment, so proxies do not close it.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// After a failed read (Redis down), how long an event stream waits before reading again.
const RETRY_READ: Duration = Duration::from_secs(1);

/// The bound on clients waiting at once.
pub struct Watchers {
    permits: Arc<Semaphore>,
    limit: usize,
}

/// A client counted in `tandem_watchers` while it waits.
pub struct WatcherPermit {
    _permit: OwnedSemaphorePermit,
}

impl Watchers {
    pub fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        Self { permits: Arc::new(Semaphore::new(limit)), limit }
    }

    fn admit(&self) -> Result<WatcherPermit, ApiError> {
        let permit = Arc::clone(&self.permits)
            .try_acquire_owned()
            .map_err(|_| ApiError::TooManyWatchers { limit: self.limit })?;
        metrics::gauge!(crate::metrics::WATCHERS).increment(1.0);
        Ok(WatcherPermit { _permit: permit })
    }
}

impl Drop for WatcherPermit {
    fn drop(&mut self) {
        metrics::gauge!(crate::metrics::WATCHERS).decrement(1.0);
    }
}

/// The job once it is final, or as it is when `wait` runs out; `None` if there is no such job.
pub async fn wait_until_final(state: &AppState, id: JobId, wait: Duration) -> Result<Option<JobRecord>, ApiError> {
    let queue = &state.inner.queue;
    let _permit = state.inner.watchers.admit()?;
    let mut watch = queue.watch(id);
    let mut stopping = state.inner.stopping.subscribe();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let record = queue.get(id).await.map_err(ApiError::Queue)?;
        match &record {
            Some(job) if !job.status.is_final() && !*stopping.borrow() => {}
            _ => return Ok(record),
        }
        tokio::select! {
            () = watch.changed() => {}
            _ = stopping.changed() => {}
            () = tokio::time::sleep_until(deadline) => return Ok(record),
        }
    }
}

/// The event stream of one job: its state now, then each change, closed after the final one.
/// `last_event_id` (the `Last-Event-ID` of a reconnecting client) skips a state it has seen.
pub async fn events(
    state: &AppState,
    id: JobId,
    top_k: usize,
    last_event_id: Option<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>> + use<>>, ApiError> {
    Ok(sse(job_events(state, id, top_k, last_event_id).await?))
}

/// `POST /predict` asked for `text/event-stream`: the fast answer as the first event (`fast`,
/// the same JSON as the plain answer), then the job's events, in one connection. Without a job
/// (the queue could not take it), or past `--max-watchers`, the fast answer is the only event.
pub async fn predict_events(
    state: &AppState,
    answer: &super::types::PredictResponse,
    top_k: usize,
) -> Sse<impl Stream<Item = Result<Event, Infallible>> + use<>> {
    let fast =
        Event::default().event("fast").json_data(answer).unwrap_or_else(|_| Event::default().comment("unencodable"));
    let first = futures_util::stream::once(std::future::ready(Ok(fast)));
    // No job (the queue could not take it: `async_error` in the fast event says why): the fast
    // answer is all there is. A job that cannot be followed: an `error` event says why.
    let (rest, error) = match answer.job_id {
        Some(id) => match job_events(state, id, top_k, None).await {
            Ok(events) => (Some(events), None),
            Err(err) => (None, Some(error_event(&err))),
        },
        None => (None, None),
    };
    let error = futures_util::stream::iter(error.map(Ok));
    sse(first.chain(futures_util::stream::iter(rest).flatten()).chain(error))
}

/// An `error` event with the API's error JSON.
fn error_event(err: &ApiError) -> Event {
    let body = super::types::ErrorBody::new(err.code(), err.to_string());
    Event::default().event("error").json_data(body).unwrap_or_else(|_| Event::default().comment("unencodable"))
}

fn sse<S>(stream: S) -> Sse<axum::response::sse::KeepAliveStream<S>>
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

async fn job_events(
    state: &AppState,
    id: JobId,
    top_k: usize,
    last_event_id: Option<String>,
) -> Result<impl Stream<Item = Result<Event, Infallible>> + use<>, ApiError> {
    let permit = state.inner.watchers.admit()?;
    let watch = state.inner.queue.watch(id);
    let stopping = state.inner.stopping.subscribe();
    // A job that does not exist is a 404 now, not an empty stream; one whose end the client has
    // seen (it reconnected with the final event's id) is a 204, which tells an EventSource to
    // stop reconnecting.
    match state.inner.queue.get(id).await.map_err(ApiError::Queue)? {
        None => return Err(ApiError::JobNotFound(id.to_string())),
        Some(job) if job.status.is_final() && last_event_id.as_deref() == Some(event_id(&job).as_str()) => {
            return Err(ApiError::NothingNew);
        }
        Some(_) => {}
    }
    let follow =
        Follow { state: state.clone(), watch, stopping, top_k, last: last_event_id, done: false, _permit: permit };
    Ok(futures_util::stream::unfold(follow, |mut follow| async move {
        let event = follow.next_event().await?;
        Some((Ok(event), follow))
    }))
}

/// One client's stream: what it was last sent, and whether the job has ended.
struct Follow {
    state: AppState,
    watch: JobWatch,
    stopping: tokio::sync::watch::Receiver<bool>,
    top_k: usize,
    /// The id of the last event sent (or the client's `Last-Event-ID`).
    last: Option<String>,
    done: bool,
    _permit: WatcherPermit,
}

impl Follow {
    /// The next state to send; `None` ends the stream (after the final state, or if the job
    /// has gone: expired or undone).
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if self.done || *self.stopping.borrow() {
                return None;
            }
            match self.state.inner.queue.get(self.watch.id()).await {
                Ok(None) => return None,
                Ok(Some(job)) => {
                    let id = event_id(&job);
                    if self.last.as_deref() != Some(id.as_str()) {
                        self.done = job.status.is_final();
                        self.last = Some(id.clone());
                        let body = JobResponse::new(&job, self.top_k);
                        let event = Event::default().event(job.status.as_str()).id(id);
                        return Some(event.json_data(body).unwrap_or_else(|_| Event::default().comment("unencodable")));
                    }
                    if job.status.is_final() {
                        // A reconnecting client that has seen the end: nothing more will come.
                        return None;
                    }
                    tokio::select! {
                        () = self.watch.changed() => {}
                        _ = self.stopping.changed() => {}
                    }
                }
                // Redis down: the subscription wakes every watcher once it is back; until
                // then, a slow retry so that a stream does not hang on a missed wake-up.
                Err(_) => tokio::select! {
                    () = tokio::time::sleep(RETRY_READ) => {}
                    _ = self.stopping.changed() => {}
                },
            }
        }
    }
}

/// A state's event id: the status and the attempt, so a second run of a job (after a worker
/// was lost) is a new event, and a reconnecting client is sent only what it has not seen.
fn event_id(job: &JobRecord) -> String {
    format!("{}-{}", job.status.as_str(), job.attempts)
}
