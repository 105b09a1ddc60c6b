//! When to stop: the process's shutdown signal, shared by `serve` (which then drains open
//! requests) and `worker` (which then finishes the jobs in flight).

/// Resolves on Ctrl-C or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received");
}

/// [`signal`], and when the work it stops must be done by: `drain` after the signal came. The
/// deadline is set once the future has resolved, so whatever runs after it can wait for what is
/// left of one budget instead of a fresh `drain` per phase.
pub fn signal_with_deadline(
    drain: std::time::Duration,
) -> (impl Future<Output = ()>, std::sync::Arc<std::sync::OnceLock<tokio::time::Instant>>) {
    let deadline = std::sync::Arc::new(std::sync::OnceLock::new());
    let set = deadline.clone();
    let stopping = async move {
        signal().await;
        let _ = set.set(tokio::time::Instant::now() + drain);
    };
    (stopping, deadline)
}
