//! Usage limits: a project's daily video limit (a sliding 24-hour window, enforced inside
//! the import transaction) and an optional per-token request rate.

use std::num::NonZeroU32;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use deadpool_postgres::Transaction;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use video_import_shared::store::usage;

use crate::error::ApiError;

/// Fails with the seed's 429 unless `requested` more videos fit in the project's last 24
/// hours. Locks the project row, so concurrent batches of one project are counted one
/// after the other and cannot both squeeze past the limit.
pub async fn check_daily_limit(
    tx: &Transaction<'_>,
    project_id: i64,
    limit: i32,
    requested: i32,
) -> Result<(), ApiError> {
    let window = usage::window(tx, project_id).await?;
    let used: i64 = window.jobs.iter().map(|(total, _)| total).sum();
    let (limit, requested) = (limit as i64, requested as i64);
    if used + requested <= limit {
        return Ok(());
    }
    Err(ApiError::UsageLimit {
        message: format!(
            "Your plan does not allow you to upload more than {limit} per day.\n      \
             You already uploaded {used} in the last 24 hours and are trying to upload {requested} more.\n      \
             Please try again later."
        ),
        retry_after: seconds_until_room(
            &window.jobs,
            window.now,
            used + requested - limit,
            requested <= limit,
        ),
    })
}

/// Seconds until jobs totalling `excess` videos have left the 24-hour window; `None` when
/// the batch can never fit.
fn seconds_until_room(
    window: &[(i64, DateTime<Utc>)],
    now: DateTime<Utc>,
    excess: i64,
    can_fit: bool,
) -> Option<u64> {
    if !can_fit {
        return None;
    }
    let mut freed = 0;
    for (total, started_at) in window {
        freed += total;
        if freed >= excess {
            let leaves = *started_at + Duration::hours(24);
            return Some((leaves - now).num_seconds().max(0) as u64 + 1);
        }
    }
    None
}

/// Per-token request rate (in-process, per API instance).
#[derive(Clone)]
pub struct RateLimit {
    limiter: Arc<DefaultKeyedRateLimiter<i64>>,
}

impl RateLimit {
    /// `None` when `per_second` is 0 (off).
    pub fn new(per_second: u32, burst: u32) -> Option<Self> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(burst).unwrap_or(rate);
        Some(Self {
            limiter: Arc::new(DefaultKeyedRateLimiter::keyed(
                Quota::per_second(rate).allow_burst(burst),
            )),
        })
    }

    /// Fails with 429 and the seconds to wait when `token_id` is over its rate.
    pub fn check(&self, token_id: i64) -> Result<(), ApiError> {
        self.limiter.check_key(&token_id).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::RateLimited {
                retry_after: wait.as_secs() + 1,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_frees_up_when_enough_old_jobs_leave_the_window() {
        let now = Utc::now();
        let window = [
            (30, now - Duration::hours(23)),
            (50, now - Duration::hours(10)),
        ];
        // 20 too many: the first job (30) leaving in one hour is enough.
        let secs = seconds_until_room(&window, now, 20, true).unwrap();
        assert!((3600..=3602).contains(&secs), "{secs}");
        // 40 too many: both must go; the second leaves in 14 hours.
        let secs = seconds_until_room(&window, now, 40, true).unwrap();
        assert!((50_400..=50_402).contains(&secs), "{secs}");
        assert_eq!(seconds_until_room(&window, now, 10, false), None);
    }

    #[test]
    fn the_rate_limit_allows_the_burst_then_refuses() {
        let limit = RateLimit::new(1, 3).unwrap();
        for _ in 0..3 {
            assert!(limit.check(7).is_ok());
        }
        assert!(matches!(
            limit.check(7),
            Err(ApiError::RateLimited { retry_after: 1 })
        ));
        assert!(limit.check(8).is_ok(), "tokens are limited separately");
        assert!(RateLimit::new(0, 0).is_none());
    }
}
