//! Retry arithmetic every binary shares: the back-off of steps that depend on PostgreSQL or
//! RabbitMQ, and reading and capping a `Retry-After` header. Each binary's own policy
//! (`worker::retry_policy`, `notifier::schedule`) builds on these.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::queue::MAX_DELAY;

/// First pause after a failed database step or a lost broker connection.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Longest pause between two tries of a database step or a broker connection.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The pause after `current`: doubled, at most [`MAX_BACKOFF`].
pub fn next_backoff(current: Duration) -> Duration {
    (current * 2).min(MAX_BACKOFF)
}

/// Runs `step` until it succeeds, backing off up to 10 s; `None` if `shutdown` comes first.
/// A database outage then pauses work instead of failing videos that did nothing wrong.
pub async fn until_ok<T, F, Fut>(shutdown: &CancellationToken, mut step: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut delay = FIRST_BACKOFF;
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
        delay = next_backoff(delay);
    }
}

/// Reads a `Retry-After` value: delay-seconds or an HTTP date (a date in the past is 0).
/// `None` when it is neither.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let date = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (date.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or_default(),
    )
}

/// A peer's `Retry-After`, at most `longest` (the longest delay the operator configured) and
/// never above what RabbitMQ can hold a message for.
pub fn cap_retry_after(after: Duration, longest: Duration) -> Duration {
    after.min(longest).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_up_to_the_cap() {
        assert_eq!(next_backoff(FIRST_BACKOFF), Duration::from_millis(400));
        assert_eq!(next_backoff(Duration::from_secs(8)), MAX_BACKOFF);
        assert_eq!(next_backoff(MAX_BACKOFF), MAX_BACKOFF);
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        let now = DateTime::parse_from_rfc2822("Fri, 27 Nov 2026 12:00:00 GMT")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Fri, 27 Nov 2026 12:01:30 GMT", now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            parse_retry_after("Fri, 27 Nov 2026 11:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(
            parse_retry_after("99999999999999999999", now),
            None,
            "beyond u64: not a number we can use"
        );
    }

    #[test]
    fn huge_retry_after_is_capped() {
        let longest = Duration::from_secs(1800);
        assert_eq!(
            cap_retry_after(Duration::from_secs(u64::MAX), longest),
            longest
        );
        assert_eq!(
            cap_retry_after(Duration::from_secs(60), longest),
            Duration::from_secs(60)
        );
        assert_eq!(
            cap_retry_after(Duration::from_secs(u64::MAX), Duration::MAX),
            MAX_DELAY,
            "never above what RabbitMQ can hold"
        );
    }
}
