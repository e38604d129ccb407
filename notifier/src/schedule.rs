//! Every retry decision of the notifier, as pure functions: where an attempt stands in the
//! retry schedule, the delay before the next one (jittered, lengthened by a receiver's capped
//! `Retry-After`), and how many held deliveries a busy host gets back.

use std::time::Duration;

use rand::Rng;
use video_import_shared::queue;
use video_import_shared::retry::cap_retry_after;

/// How long a delivery may wait in process for a slot of its receiver's host.
pub const HOST_WAIT: Duration = Duration::from_millis(100);

/// Jitter spreads retries over ±10 % so that many failed deliveries do not return at once.
const JITTER: f64 = 0.1;

/// The retry schedule of `webhook.retry_schedule_secs`.
#[derive(Debug, Clone)]
pub struct Schedule {
    delays: Vec<Duration>,
}

impl Schedule {
    /// A schedule with these delays after the first, second, … failed attempt of a round.
    pub fn new(delays: &[Duration]) -> Self {
        Self {
            delays: delays.to_vec(),
        }
    }

    /// How many attempts of the current round `attempt` (numbered from 1 over the delivery's
    /// life) is: a redelivery starts a new round after `round_start` attempts.
    pub fn made_this_round(attempt: u32, round_start: u32) -> usize {
        let attempt = attempt.max(1);
        (attempt - round_start.min(attempt - 1)) as usize
    }

    /// The wait before the next attempt after the round's attempt number `made` failed, or
    /// `None` when the schedule is used up. `jitter` is a factor in `[1 - JITTER, 1 + JITTER]`
    /// (see [`jitter_factor`]); a receiver's `Retry-After` lengthens the wait up to the
    /// schedule's longest delay.
    pub fn next_delay(
        &self,
        made: usize,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Option<Duration> {
        let delay = self.delays.get(made.checked_sub(1)?)?;
        let longest = self.delays.iter().max().copied().unwrap_or_default();
        let after = retry_after.map_or(Duration::ZERO, |a| cap_retry_after(a, longest));
        Some(delay.mul_f64(jitter).max(after).min(queue::MAX_DELAY))
    }
}

/// A random factor for [`Schedule::next_delay`].
pub fn jitter_factor() -> f64 {
    rand::rng().random_range(1.0 - JITTER..1.0 + JITTER)
}

/// How many of a host's `held` deliveries to publish again when it has `free` of its
/// `per_host` slots in this notifier and `waiting` of its deliveries already wait for one
/// here: none while no slot is free, so a dead receiver's backlog stays held and costs
/// nothing; otherwise what the free slots take plus one slot's worth of waiting each, so a
/// receiver that answers again is drained at its concurrency limit.
pub fn to_release(free: usize, per_host: usize, waiting: usize, held: i64) -> i64 {
    if free == 0 {
        return 0;
    }
    ((free + per_host).saturating_sub(waiting) as i64)
        .min(held)
        .max(0)
}

/// Why a delivery fails when the broker set its message aside after too many deliveries.
pub fn dead_letter_reason() -> String {
    format!(
        "set aside (dead-lettered) after {} deliveries that never finished",
        queue::DELIVERY_LIMIT
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> Schedule {
        Schedule::new(&[Duration::from_secs(5), Duration::from_secs(300)])
    }

    #[test]
    fn attempts_are_counted_from_the_start_of_the_round() {
        assert_eq!(Schedule::made_this_round(1, 0), 1);
        assert_eq!(Schedule::made_this_round(3, 0), 3);
        // A redelivery after 3 attempts: attempt 4 is the round's first.
        assert_eq!(Schedule::made_this_round(4, 3), 1);
        assert_eq!(Schedule::made_this_round(5, 3), 2);
        // A round start beyond the attempt (a stale message) still counts one attempt.
        assert_eq!(Schedule::made_this_round(2, 9), 1);
        assert_eq!(Schedule::made_this_round(0, 0), 1);
    }

    #[test]
    fn the_first_failure_waits_the_first_delay_and_the_last_gives_up() {
        assert_eq!(
            schedule().next_delay(1, None, 1.0),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            schedule().next_delay(2, None, 1.0),
            Some(Duration::from_secs(300))
        );
        assert_eq!(schedule().next_delay(3, None, 1.0), None, "used up");
        assert_eq!(schedule().next_delay(0, None, 1.0), None);
        assert_eq!(Schedule::new(&[]).next_delay(1, None, 1.0), None);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..1000 {
            let f = jitter_factor();
            assert!((0.9..1.1).contains(&f), "{f}");
            let d = schedule().next_delay(2, None, f).unwrap();
            assert!(
                d >= Duration::from_secs(270) && d < Duration::from_secs(330),
                "{d:?}"
            );
        }
        assert_eq!(
            schedule().next_delay(1, None, 0.9),
            Some(Duration::from_millis(4500))
        );
    }

    #[test]
    fn retry_after_lengthens_the_wait_but_is_capped() {
        assert_eq!(
            schedule().next_delay(1, Some(Duration::ZERO), 1.0),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            schedule().next_delay(1, Some(Duration::from_secs(60)), 1.0),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            schedule().next_delay(1, Some(Duration::from_secs(u64::MAX)), 1.0),
            Some(Duration::from_secs(300)),
            "at most the longest configured delay"
        );
        let long = Schedule::new(&[Duration::from_secs(u64::MAX / 4)]);
        assert_eq!(
            long.next_delay(1, None, 1.0),
            Some(queue::MAX_DELAY),
            "never above what RabbitMQ can hold"
        );
    }

    #[test]
    fn a_busy_host_gets_back_only_what_its_free_slots_take() {
        assert_eq!(
            to_release(0, 8, 0, 500),
            0,
            "a dead host's backlog stays held"
        );
        assert_eq!(
            to_release(8, 8, 0, 500),
            16,
            "free slots plus one wait each"
        );
        assert_eq!(to_release(1, 8, 0, 500), 9);
        assert_eq!(
            to_release(8, 8, 3, 500),
            13,
            "deliveries already waiting go first"
        );
        assert_eq!(to_release(8, 8, 20, 500), 0);
        assert_eq!(to_release(8, 8, 0, 2), 2);
    }
}
