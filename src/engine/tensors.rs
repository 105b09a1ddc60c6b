//! Reused input tensors, shared by a model's decoders and its lanes.
//!
//! An image's tensor is 600 KB: allocating and zeroing one per request, and the page faults of
//! handing it back to the OS, cost more than the copy into a batch. A decoder takes a tensor
//! here; the lane gives it back once it is copied into the batch (or run).

use std::sync::{Mutex, PoisonError};

/// A bounded free list of tensors of one length. The lock is held only to push or pop.
pub(super) struct TensorPool {
    free: Mutex<Vec<Vec<f32>>>,
    len: usize,
    keep: usize,
}

impl TensorPool {
    /// Tensors of `len` floats, keeping at most `keep` free ones: past that (an overload
    /// burst) tensors are allocated and freed as before, so a burst does not leave memory held.
    pub(super) fn new(len: usize, keep: usize) -> Self {
        Self { free: Mutex::new(Vec::with_capacity(keep)), len, keep }
    }

    /// A tensor of the right length; its contents are whatever the last user left.
    pub(super) fn take(&self) -> Vec<f32> {
        let reused = self.free.lock().unwrap_or_else(PoisonError::into_inner).pop();
        reused.unwrap_or_else(|| vec![0.0; self.len])
    }

    /// Keeps `tensor` for a later [`TensorPool::take`], if it has the right length and there is room.
    pub(super) fn give(&self, tensor: Vec<f32>) {
        if tensor.len() == self.len {
            let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
            if free.len() < self.keep {
                free.push(tensor);
            }
        }
    }
}
