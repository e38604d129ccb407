//! Every retry decision of the notifier, as pure functions: where an attempt stands in the
//! retry schedule, the delay before the next one (jittered, lengthened by a receiver's capped
//! `Retry-After`), and how long deliveries to a busy host wait.

use std::time::Duration;

use rand::Rng;
use video_import_shared::queue;
use video_import_shared::retry::cap_retry_after;

/// How long a delivery may wait in process for a slot of its receiver's host.
pub const HOST_WAIT: Duration = Duration::from_secs(1);

/// How long a delivery first waits in the delay queue when its receiver's host has all its
/// slots in use; it doubles with each further wait, up to 16 times as long.
pub const HOST_BUSY_DELAY: Duration = Duration::from_secs(5);

/// Most doublings of [`HOST_BUSY_DELAY`].
const HOST_BUSY_DOUBLINGS: u32 = 4;

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

/// A random factor for [`Schedule::next_delay`] and [`host_busy_delay`].
pub fn jitter_factor() -> f64 {
    rand::rng().random_range(1.0 - JITTER..1.0 + JITTER)
}

/// How long a delivery that found its host busy `waited` times before waits now.
pub fn host_busy_delay(waited: u32, jitter: f64) -> Duration {
    (HOST_BUSY_DELAY * 2u32.pow(waited.min(HOST_BUSY_DOUBLINGS))).mul_f64(jitter)
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
    fn a_busy_host_doubles_the_wait_up_to_sixteen_times() {
        assert_eq!(host_busy_delay(0, 1.0), Duration::from_secs(5));
        assert_eq!(host_busy_delay(1, 1.0), Duration::from_secs(10));
        assert_eq!(host_busy_delay(4, 1.0), Duration::from_secs(80));
        assert_eq!(host_busy_delay(40, 1.0), Duration::from_secs(80));
        assert_eq!(host_busy_delay(0, 1.1), Duration::from_millis(5500));
    }
}
