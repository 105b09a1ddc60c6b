//! `serve`'s flags for spending the accurate tier only where it changes the answer: the
//! cascade (`--refine-below`) and the result cache with its in-flight dedupe (`--cache-ttl`,
//! `--cache-entries`).

use std::time::Duration;

use clap::Args;

use crate::api::Refinement;
use crate::cache::MemoryCache;
use crate::queue::CachePolicy;

#[derive(Debug, Clone, Args)]
pub struct RefineArgs {
    /// The cascade: a fast answer whose top-1 probability is at least this (0 to 1) is final,
    /// and the accurate tier is not run for it. Unset: every image is refined.
    ///
    /// `POST /predict` then answers `"final": true` and the job is `completed` at once, its
    /// `result_source` `cascade`. Pick the value from `tandem eval --cascade` on images like
    /// yours: it prints, per threshold, the accurate runs skipped and the accuracy kept.
    #[arg(long, env = "TANDEM_REFINE_BELOW", value_name = "P", value_parser = parse_probability)]
    pub refine_below: Option<f32>,

    /// Seconds a result is cached by its image's bytes (SHA-256) and its model; 0: no cache.
    ///
    /// With the cache on, an image whose accurate result is cached is answered with it at once
    /// (`"final": true`, `result_source` `cache`), and one whose bytes are already queued or
    /// running shares that run instead of queueing another (`shared_run`). Accurate results
    /// are cached in Redis with `--redis-url` (shared by every `serve`, kept across restarts),
    /// else in this process's memory; fast answers always in memory. A model file that changed
    /// gives new keys: no earlier answer is served for it.
    #[arg(long, env = "TANDEM_CACHE_TTL", value_name = "SECONDS", default_value_t = 0)]
    pub cache_ttl: u64,

    /// Results each in-memory cache (the fast tier's; the accurate tier's when embedded) keeps at
    /// most, least recently used out first.
    #[arg(long, env = "TANDEM_CACHE_ENTRIES", default_value_t = 10_000)]
    pub cache_entries: usize,
}

impl RefineArgs {
    pub fn cache_policy(&self) -> CachePolicy {
        CachePolicy { ttl: Duration::from_secs(self.cache_ttl), entries: self.cache_entries.max(1) }
    }

    /// The cascade and the fast cache, for the HTTP service.
    pub fn refinement(&self) -> Refinement {
        let cache = self.cache_policy();
        Refinement {
            refine_below: self.refine_below,
            fast_cache: cache.is_on().then(|| MemoryCache::new(cache.entries, cache.ttl)),
        }
    }
}

fn parse_probability(text: &str) -> Result<f32, String> {
    match text.trim().parse::<f32>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("{text:?} is not a probability from 0 to 1")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threshold_is_a_probability() {
        assert_eq!(parse_probability("0.7"), Ok(0.7));
        assert_eq!(parse_probability("1"), Ok(1.0));
        assert!(parse_probability("1.5").is_err());
        assert!(parse_probability("-0.1").is_err());
        assert!(parse_probability("NaN").is_err());
    }
}
