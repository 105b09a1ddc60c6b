//! The counting of queued images' bytes (see "Counting image bytes" in the module above).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

/// `bytes` of a queued image, counted in a queue's `image_bytes` until dropped.
pub(super) struct HeldBytes {
    count: Arc<AtomicU64>,
    bytes: u64,
}

impl HeldBytes {
    /// Counts `bytes` more, unless that would pass `limit`.
    pub(super) fn take(count: &Arc<AtomicU64>, bytes: u64, limit: u64) -> Option<Self> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|&total| total <= limit)
            })
            .ok()?;
        Some(Self { count: Arc::clone(count), bytes })
    }
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        self.count.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// A queued job's image, the owner of the `Bytes` its deliveries carry: its bytes stay counted
/// for as long as any copy of it is alive.
pub(super) struct QueuedImage {
    pub image: Bytes,
    pub _held: HeldBytes,
}

impl AsRef<[u8]> for QueuedImage {
    fn as_ref(&self) -> &[u8] {
        &self.image
    }
}
