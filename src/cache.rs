//! A bounded in-memory cache of answers: the embedded queue's accurate results, and every
//! `serve`'s fast ones.
//!
//! Bounded twice: by entries (least recently used out first), so its memory has a ceiling
//! whatever clients send, and by age (`ttl`), so an answer is not kept forever. One std
//! `Mutex` around an `lru::LruCache`: a lookup or an insert is a hash and a few pointer moves,
//! far shorter than the lock's cost to contend; nothing else is done under it, and the value
//! is cloned out, so no lock is held while a caller uses it.

use std::hash::Hash;
use std::num::NonZeroUsize;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use lru::LruCache;

pub struct MemoryCache<K: Hash + Eq, V: Clone> {
    entries: Mutex<LruCache<K, (Instant, V)>>,
    ttl: Duration,
}

impl<K: Hash + Eq, V: Clone> MemoryCache<K, V> {
    /// At most `capacity` entries (at least 1), each for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self { entries: Mutex::new(LruCache::new(capacity)), ttl }
    }

    /// The value stored for `key`, if it has not expired; it becomes the most recently used.
    pub fn get(&self, key: &K) -> Option<V> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        match entries.get(key) {
            Some((stored, value)) if stored.elapsed() < self.ttl => Some(value.clone()),
            Some(_) => {
                entries.pop(key);
                None
            }
            None => None,
        }
    }

    /// Stores `value` for `key`, pushing out the least recently used entry when full.
    pub fn put(&self, key: K, value: V) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.put(key, (Instant::now(), value));
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_keeps_at_most_its_capacity_and_drops_the_least_recently_used() {
        let cache = MemoryCache::new(2, Duration::from_secs(60));
        cache.put(1, "a");
        cache.put(2, "b");
        assert_eq!(cache.get(&1), Some("a"));
        cache.put(3, "c");
        assert_eq!((cache.get(&1), cache.get(&2), cache.get(&3)), (Some("a"), None, Some("c")));
        for key in 0..1000 {
            cache.put(key, "x");
        }
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn an_entry_expires_after_its_ttl() {
        let cache = MemoryCache::new(8, Duration::ZERO);
        cache.put(1, "a");
        assert_eq!(cache.get(&1), None);
        assert!(cache.is_empty());
    }
}
