//! The count of a model's requests queued for or running on its lanes, not yet answered.
//!
//! It decides two things: [`super::DecodeOn::InferenceThreadWhenIdle`] decodes on the inference
//! thread only when it is 0, and a batch whose size equals it has the machine to itself (the
//! `alone` run that may let ONNX Runtime spin). So it must go down exactly once per request,
//! on every path: each request carries an [`InFlightGuard`], counted when it is made (before the
//! request is visible to a lane) and uncounted when it is dropped — with a refused request, a
//! skipped or failed decode, or, for a batch that ran, by the lane just before the replies go
//! out, so that a caller who has its answer never sees its own request still in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The shared count; cheap to clone.
#[derive(Clone, Default)]
pub(super) struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// Requests counted now.
    pub(super) fn get(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }

    /// Counts one request until the guard is dropped.
    pub(super) fn enter(&self) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(Arc::clone(&self.0))
    }
}

/// One request counted in [`InFlight`]; dropping it uncounts the request.
pub(super) struct InFlightGuard(Arc<AtomicUsize>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guard_counts_until_dropped() {
        let count = InFlight::default();
        let first = count.enter();
        let second = count.enter();
        assert_eq!(count.get(), 2);
        drop(first);
        assert_eq!(count.get(), 1);
        drop(second);
        assert_eq!(count.get(), 0);
    }
}
