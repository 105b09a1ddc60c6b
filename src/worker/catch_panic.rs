//! Catching a panic of a future where it is awaited, rather than spawning a task for it.
//!
//! A job's model run panicking must cost the job one attempt, not the worker's task (and with
//! it the job's outcome and its slot). `futures::FutureExt::catch_unwind` does this, but the
//! `futures` crate is not a dependency; this is the same twenty lines.

use std::any::Any;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Polls `inner`, turning a panic inside any of its polls into `Err` with the panic's payload.
pub(super) struct CatchPanic<F> {
    /// Boxed, so this is `Unpin` whatever `F` is, without a pin projection.
    inner: Pin<Box<F>>,
}

impl<F: Future> CatchPanic<F> {
    /// The future is polled only on this task: a panic leaves nothing half-updated that anyone
    /// else can see, since it is dropped right after (so asserting unwind safety is sound).
    pub fn new(inner: F) -> Self {
        Self { inner: Box::pin(inner) }
    }
}

impl<F: Future> Future for CatchPanic<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.inner.as_mut();
        match catch_unwind(AssertUnwindSafe(move || inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_comes_out_as_an_error_and_a_value_as_itself() {
        assert_eq!(CatchPanic::new(async { 7 }).await.ok(), Some(7));
        let panicked = CatchPanic::new(async {
            tokio::task::yield_now().await;
            panic!("boom");
        })
        .await;
        assert!(panicked.is_err());
    }
}
