//! Ctrl-C and SIGTERM, the two ways a person or a CI runner asks muster to
//! stop.

/// Waits for the next Ctrl-C (SIGINT) or SIGTERM.
pub async fn wait_for_interrupt() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
