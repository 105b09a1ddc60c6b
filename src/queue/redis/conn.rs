//! Connections to Redis, the bounds on every call, and the one retry policy of this backend.
//!
//! `connect` never touches the network: connections are made lazily by [`ConnectionManager`]s
//! (which reconnect by themselves, to the same address): one for ordinary commands, one for
//! heartbeats (driven by the heartbeat thread's runtime, `presence.rs`) and one dedicated to the
//! blocking `XREADGROUP ... BLOCK` of `take` — a blocked command on a multiplexed connection
//! would hold up every command queued behind it. Each call is bounded (connect ~1 s, answer ~1.5 s, whole
//! call `OP_TIMEOUT`) so a Redis outage turns into a prompt [`QueueError::Unavailable`] rather
//! than a hang. Every call reports how it ended to one `Outage` per queue, which logs a warning
//! when Redis stops answering and a line when it is back, once per outage whichever calls
//! notice (`outage.rs`).
//!
//! With Sentinel (`endpoint.rs`) the primary's address is asked of the sentinels each time a
//! manager is made, and a manager is thrown away at the first failure that may mean the primary
//! moved: a lost or refused connection, or `READONLY` (the server is a replica now: Sentinel
//! demoted it). The next call then finds the new primary.
//!
//! # Retries
//!
//! All retrying of a Redis call happens in [`RedisQueue::call`], as its [`Retry`] says:
//!
//! - always, what cannot have run: a refused connection means the command was never sent, so
//!   it is tried once more (the manager is already reconnecting — Redis may just be back), and
//!   so does `READONLY` (a replica runs no write; the try after it asks for the primary); and
//!   a Redis restarted empty is picked up again by itself: the consumer group is recreated on
//!   `NOGROUP` (from id `0`, so entries added before the group existed are still delivered) and
//!   the call is tried once more.
//! - for a job's outcome ([`Retry::Outcome`]), a few quick tries more, to ride out a Redis blip
//!   without giving the job up: storing an outcome twice is harmless (the first stored wins).
//!   Never for an enqueue: its fence and undo (`enqueue.rs`) rely on one try per call.
//!
//! The worker's take loop backs off on its own (`worker.rs`): waiting for jobs is not a call
//! that must succeed.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, RedisResult, ServerErrorKind};

use super::RedisQueue;
use super::endpoint::Endpoint;
use super::keys::GROUP;
use crate::queue::QueueError;
use crate::queue::outage::Transition;

/// How long one attempt to open a TCP connection (and say hello) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long Redis may take to answer one ordinary command.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(1500);
/// The bound on one whole call (connecting included), whatever happens underneath.
pub(super) const OP_TIMEOUT: Duration = Duration::from_millis(2500);
/// Consecutive failed calls after which a connection is thrown away and made anew.
const REBUILD_AFTER_FAILURES: u32 = 3;
/// [`Retry::Outcome`]: tries after the first, and the pause before the first of them (doubling).
const OUTCOME_RETRIES: u32 = 5;
const OUTCOME_FIRST_PAUSE: Duration = Duration::from_millis(100);

/// How much of a failed call [`RedisQueue::call`] tries again (see "Retries").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Retry {
    /// Only what cannot have run: a refused connection, a lost consumer group.
    Unsent,
    /// That, and then up to `OUTCOME_RETRIES` more tries, 100 ms apart and doubling, while the
    /// call fails: for storing a job's outcome.
    Outcome,
}

/// A lazily connected, self-repairing [`ConnectionManager`].
pub(super) struct Conn {
    endpoint: Endpoint,
    response_timeout: Duration,
    /// `None`: made on the next call (at first with Sentinel, and after a failure).
    current: Mutex<Option<Current>>,
    /// One lookup at a time: calls that find no manager wait for the one being made.
    making: tokio::sync::Mutex<()>,
    failures: AtomicU32,
}

struct Current {
    manager: ConnectionManager,
    /// `host:port` of the server it connects to.
    server: String,
}

impl Conn {
    /// A connection for commands Redis answers within `extra` more than an ordinary one.
    pub fn new(endpoint: Endpoint, extra: Duration) -> RedisResult<Self> {
        let response_timeout = RESPONSE_TIMEOUT + extra;
        let current = match &endpoint {
            Endpoint::Direct(client) => Some(Self::build(client, response_timeout)?),
            Endpoint::Sentinel { .. } => None,
        };
        Ok(Self {
            endpoint,
            response_timeout,
            current: Mutex::new(current),
            making: tokio::sync::Mutex::new(()),
            failures: AtomicU32::new(0),
        })
    }

    /// Connects on first use; one quick retry per connection attempt, each bounded.
    fn build(client: &redis::Client, response_timeout: Duration) -> RedisResult<Current> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(response_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(200));
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        Ok(Current { manager, server: client.get_connection_info().addr().to_string() })
    }

    fn existing(&self) -> Option<ConnectionManager> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map(|c| c.manager.clone())
    }

    /// The manager, made now if there is none (asking the sentinels where the primary is).
    async fn manager(&self) -> RedisResult<ConnectionManager> {
        if let Some(manager) = self.existing() {
            return Ok(manager);
        }
        let _making = self.making.lock().await;
        if let Some(manager) = self.existing() {
            return Ok(manager);
        }
        let fresh = Self::build(&self.endpoint.client().await?, self.response_timeout)?;
        let manager = fresh.manager.clone();
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(fresh);
        Ok(manager)
    }

    /// `host:port` of the server the connection goes to now; `None` while there is no manager.
    pub fn server(&self) -> Option<String> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map(|c| c.server.clone())
    }

    fn succeeded(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }

    /// The manager reconnects by itself after a dropped connection, but not after a command
    /// that timed out on a connection that looks alive, nor after a connection attempt that
    /// failed with a server error: throw it away then, or after several failures in a row.
    /// `moved`: the failure may mean the primary moved (see the module's doc): with Sentinel,
    /// look for it again at once.
    fn failed(&self, hung: bool, moved: bool) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if !hung && failures < REBUILD_AFTER_FAILURES && !(moved && self.endpoint.is_sentinel()) {
            return;
        }
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = None;
        self.failures.store(0, Ordering::Relaxed);
    }
}

/// Throws the connection away when dropped while armed.
pub(super) struct AbandonOnDrop<'a> {
    pub conn: &'a Conn,
    pub armed: bool,
}

impl Drop for AbandonOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.conn.failed(true, false);
        }
    }
}

impl RedisQueue {
    /// Runs `op` on `conn` within `limit` per try, retried as `retry` says (see "Retries").
    pub(super) async fn call<T, F, Fut>(
        &self,
        conn: &Conn,
        what: &str,
        limit: Duration,
        retry: Retry,
        op: F,
    ) -> Result<T, QueueError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let mut pause = OUTCOME_FIRST_PAUSE;
        let mut retries = 0;
        loop {
            match self.call_unsent(conn, what, limit, &op).await {
                Err(_) if retry == Retry::Outcome && retries < OUTCOME_RETRIES => {
                    retries += 1;
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                other => return other,
            }
        }
    }

    /// One try, and once more after recreating the consumer group if Redis lost it.
    async fn call_unsent<T, F, Fut>(&self, conn: &Conn, what: &str, limit: Duration, op: &F) -> Result<T, QueueError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        match self.try_call(conn, what, limit, op).await {
            Err(CallError::NoGroup) => {
                tracing::info!("the Redis consumer group is gone (Redis restarted?); recreating it");
                self.inner.group_ready.store(false, Ordering::Relaxed);
                self.create_group().await?;
                self.try_call(conn, what, limit, op).await.map_err(|err| err.into_queue_error(what))
            }
            other => other.map_err(|err| err.into_queue_error(what)),
        }
    }

    /// Runs `op` within `limit`. A refused connection means the command was never sent, so it
    /// is tried once more (the manager is already reconnecting — Redis may just be back).
    async fn try_call<T, F, Fut>(&self, conn: &Conn, what: &str, limit: Duration, op: &F) -> Result<T, CallError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let started = Instant::now();
        let mut retried = false;
        let outcome = loop {
            let attempt = async { op(conn.manager().await?).await };
            let err = match tokio::time::timeout(limit, attempt).await {
                Ok(Ok(value)) => {
                    conn.succeeded();
                    break Ok(value);
                }
                Ok(Err(err)) => err,
                Err(_) => {
                    conn.failed(true, false);
                    break Err(CallError::TimedOut(limit));
                }
            };
            if has_code(&err, "NOGROUP") {
                conn.succeeded();
                break Err(CallError::NoGroup);
            }
            // By its code, also inside a message: a script's write refused on a replica may come
            // wrapped in ERR.
            let read_only = has_code(&err, "READONLY");
            conn.failed(err.is_timeout(), read_only || err.is_io_error() || err.is_connection_dropped());
            if (err.is_connection_refusal() || read_only) && !retried {
                retried = true;
                continue;
            }
            tracing::debug!(what, error = %err, "Redis call failed");
            break Err(CallError::Redis(err));
        };
        self.note_outcome(started, &outcome);
        outcome
    }

    /// Creates the consumer group (and the stream) unless this process already has.
    pub(super) async fn ensure_group(&self) -> Result<(), QueueError> {
        if self.inner.group_ready.load(Ordering::Relaxed) { Ok(()) } else { self.create_group().await }
    }

    /// `XGROUP CREATE ... 0 MKSTREAM`: from `0`, so that jobs added while the group did not
    /// exist (Redis restarted empty, then `enqueue` made the stream anew) are still delivered.
    pub(super) async fn create_group(&self) -> Result<(), QueueError> {
        let what = "create the consumer group";
        let stream = &self.inner.keys.stream;
        let create = |mut conn: ConnectionManager| async move {
            let created = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(stream)
                .arg(GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async::<()>(&mut conn)
                .await;
            match created {
                Err(err) if has_code(&err, "BUSYGROUP") => Ok(()),
                other => other,
            }
        };
        // Not `call`: a NOGROUP here would recurse.
        self.try_call(&self.inner.main, what, OP_TIMEOUT, &create).await.map_err(|err| err.into_queue_error(what))?;
        self.inner.group_ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Logs the start and the end of an outage, once each (see `outage.rs`).
    fn note_outcome<T>(&self, started: Instant, outcome: &Result<T, CallError>) {
        let inner = &self.inner;
        let now = Instant::now();
        let transition = match outcome {
            Err(err) if err.is_outage() => inner.outage.unreachable(started, now),
            _ => inner.outage.answered(started, now),
        };
        match (transition, outcome) {
            (Some(Transition::WentDown), Err(err)) => tracing::warn!(
                redis = %inner.addr,
                error = %err,
                "Redis does not answer: until it does, new jobs are not queued (POST /predict answers \
                 with \"job_id\": null) and workers wait; retrying"
            ),
            (Some(Transition::CameBack { down_for, failed_calls }), _) => tracing::info!(
                redis = %inner.addr,
                down_for_s = down_for.as_secs_f64(),
                failed_calls,
                "Redis reachable again"
            ),
            _ => {}
        }
    }
}

enum CallError {
    NoGroup,
    TimedOut(Duration),
    Redis(RedisError),
}

impl CallError {
    /// Whether Redis could not be reached (or cannot serve at all), as opposed to Redis
    /// answering this call with an error.
    fn is_outage(&self) -> bool {
        match self {
            CallError::NoGroup => false,
            CallError::TimedOut(_) => true,
            CallError::Redis(err) => {
                err.is_io_error()
                    || err.is_connection_dropped()
                    || err.is_timeout()
                    || matches!(
                        err.kind(),
                        ErrorKind::AuthenticationFailed
                            | ErrorKind::MasterNameNotFoundBySentinel
                            | ErrorKind::Server(
                                ServerErrorKind::BusyLoading | ServerErrorKind::MasterDown | ServerErrorKind::ReadOnly
                            )
                    )
            }
        }
    }

    fn into_queue_error(self, what: &str) -> QueueError {
        match self {
            CallError::NoGroup => QueueError::Unavailable(format!("{what}: the Redis consumer group is missing")),
            CallError::TimedOut(limit) => {
                QueueError::Unavailable(format!("{what}: Redis did not answer within {} ms", limit.as_millis()))
            }
            CallError::Redis(err) => unavailable(what, &err),
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::NoGroup => f.write_str("the Redis consumer group is missing"),
            CallError::TimedOut(limit) => write!(f, "no answer within {} ms", limit.as_millis()),
            CallError::Redis(err) => write!(f, "{err}"),
        }
    }
}

pub(super) fn unavailable(what: &str, err: &RedisError) -> QueueError {
    QueueError::Unavailable(format!("{what}: {err}"))
}

pub(super) fn has_code(err: &RedisError, code: &str) -> bool {
    err.code() == Some(code) || err.to_string().contains(code)
}
