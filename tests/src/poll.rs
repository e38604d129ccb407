//! Waiting for something to happen: one loop with one deadline and one failure message.

use std::fmt::Display;
use std::time::{Duration, Instant};

/// How often a condition is looked at again.
const INTERVAL: Duration = Duration::from_millis(50);

/// Calls `probe` until it answers `Ok` (its value is returned) or `timeout` has passed; then
/// panics naming `what` was awaited and the last `Err` the probe answered (what it saw).
pub async fn poll_until<T, E: Display>(
    what: &str,
    timeout: Duration,
    probe: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    poll_with(what, timeout, probe, String::new).await
}

/// [`poll_until`], with `context()` appended to the failure message (process logs).
pub(crate) async fn poll_with<T, E: Display>(
    what: &str,
    timeout: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, E>,
    context: impl FnOnce() -> String,
) -> T {
    let started = Instant::now();
    loop {
        let seen = match probe().await {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        // Checked after the probe, so the last look is at the deadline, not before it.
        if started.elapsed() >= timeout {
            panic!(
                "timed out after {:.1} s waiting for {what}; last seen: {seen}\n{}",
                timeout.as_secs_f64(),
                context()
            );
        }
        tokio::time::sleep(INTERVAL).await;
    }
}
