//! The result cache and the jobs completed without a worker, on Redis (see "Shared runs and the
//! result cache" in `keys.rs`).

use std::sync::PoisonError;

use super::conn::{OP_TIMEOUT, Retry};
use super::{RedisQueue, to_json, ttl_ms};
use crate::engine::Prediction;
use crate::fingerprint::{ContentHash, ModelIdentity};
use crate::jobs::{ResultSource, now_ms};
use crate::queue::{NewJob, QueueError};

impl RedisQueue {
    /// Names the accurate model this worker runs: the results it stores are cached under it, and
    /// every `serve` reads the cache under the model announced last.
    pub(crate) async fn announce_accurate_model(
        &self,
        identity: &ModelIdentity,
        first: bool,
    ) -> Result<(), QueueError> {
        let inner = &self.inner;
        *inner.cache_prefix.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(format!("{}{}:", inner.keys.cache_prefix, identity));
        let key = &inner.keys.accurate_model;
        let identity = identity.as_str();
        self.call(&inner.main, "announce the model", OP_TIMEOUT, Retry::Outcome, |mut conn| async move {
            let mut set = redis::cmd("SET");
            set.arg(key).arg(identity);
            if !first {
                set.arg("NX");
            }
            set.query_async::<()>(&mut conn).await
        })
        .await
    }

    /// Where this worker's results are cached, or '' before it has announced its model.
    pub(super) fn own_cache_prefix(&self) -> String {
        self.inner.cache_prefix.lock().unwrap_or_else(PoisonError::into_inner).clone().unwrap_or_default()
    }

    /// The cached accurate result for these bytes, under the announced model (`lookup.lua`).
    pub(crate) async fn cached_result(&self, content: &ContentHash) -> Result<Option<Prediction>, QueueError> {
        let inner = &self.inner;
        let mut invocation = inner.scripts.lookup.prepare_invoke();
        invocation.key(&inner.keys.accurate_model).arg(&inner.keys.cache_prefix).arg(content.hex());
        let invocation = &invocation;
        let found: Option<String> = self
            .call(&inner.main, "read the cache", OP_TIMEOUT, Retry::Unsent, |mut conn| async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        // An entry that does not parse (written by another version) is a miss, not an error.
        Ok(found.and_then(|json| serde_json::from_str(&json).ok()))
    }

    /// Stores a job completed without a worker, and deletes its staged image (`finish_now.lua`).
    pub(in crate::queue) async fn finish_now(
        &self,
        job: &NewJob<'_>,
        result: &Prediction,
        source: ResultSource,
    ) -> Result<(), QueueError> {
        let inner = &self.inner;
        let mut invocation = inner.scripts.finish_now.prepare_invoke();
        invocation
            .key(&inner.keys.stream)
            .key(inner.keys.job(job.id))
            .key(inner.keys.image(job.id))
            .arg(to_json(job.fast)?)
            .arg(to_json(result)?)
            .arg(job.created_at_ms)
            .arg(now_ms())
            .arg(ttl_ms(inner.config.policy.result_ttl))
            .arg(job.callback_url.unwrap_or(""))
            .arg(source.as_str())
            .arg(job.id.to_string());
        let invocation = &invocation;
        // Running it twice writes the same record twice: it may be retried.
        self.call(&inner.main, "store a finished job", OP_TIMEOUT, Retry::Outcome, |mut conn| async move {
            invocation.invoke_async::<i64>(&mut conn).await
        })
        .await
        .map(|_| ())
    }
}
