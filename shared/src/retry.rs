//! Retrying steps that depend on PostgreSQL.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Runs `step` until it succeeds, backing off up to 10 s; `None` if `shutdown` comes first.
/// A database outage then pauses work instead of failing videos that did nothing wrong.
pub async fn until_ok<T, F, Fut>(shutdown: &CancellationToken, mut step: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut delay = Duration::from_millis(200);
    loop {
        match step().await {
            Ok(value) => return Some(value),
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), retry_in = ?delay, "database step failed; retrying");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}
