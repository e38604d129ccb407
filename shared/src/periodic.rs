//! Background rounds: a task that runs one round every tick until shutdown, and says once
//! when its rounds start failing and once when they work again, not every tick.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Runs `round` every `tick` until `shutdown`. The first failure of an outage is logged as
/// `failing` (with the error), the first success after it as `recovered`.
pub async fn every<F, Fut, T>(
    tick: Duration,
    shutdown: CancellationToken,
    failing: &str,
    recovered: &str,
    mut round: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut down = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        match round().await {
            Ok(_) if down => {
                down = false;
                tracing::info!("{recovered}");
            }
            Ok(_) => {}
            Err(error) if !down => {
                down = true;
                tracing::warn!(error = %format!("{error:#}"), "{failing}");
            }
            Err(_) => {}
        }
    }
}
