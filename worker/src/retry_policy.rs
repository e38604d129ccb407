//! Every retry decision of the worker, as pure functions: which failures are worth another
//! try, the quick in-process tries for hiccups, the later tries that wait in a RabbitMQ delay
//! queue, the download again of a video whose skip met a file found damaged meanwhile, and
//! the reason a video fails with when the tries are used up.

use std::time::Duration;

use backon::ExponentialBuilder;
use reqwest::StatusCode;
use video_import_shared::config::FetchSettings;
use video_import_shared::queue;
use video_import_shared::retry::cap_retry_after;

use crate::error::FetchError;

/// Shortest pause before a quick retry.
const QUICK_MIN_DELAY: Duration = Duration::from_millis(200);
/// Longest pause before a quick retry; a source asking for longer is retried through the
/// queue instead of holding a download slot.
const QUICK_MAX_DELAY: Duration = Duration::from_secs(5);

/// What to do with a video whose download failed, after its quick tries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Hand it back through the delay queue, to be tried again after this long.
    RetryIn(Duration),
    /// Record it as failed with this reason.
    GiveUp(String),
}

/// The worker's retry rules, from `fetch.quick_retries` and `fetch.retry_delays_secs`.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    quick_retries: usize,
    delays: Vec<Duration>,
}

impl RetryPolicy {
    /// The policy the settings configure.
    pub fn new(settings: &FetchSettings) -> Self {
        Self {
            quick_retries: settings.quick_retries,
            delays: settings.retry_delays.clone(),
        }
    }

    /// Back-off of the quick in-process tries (with jitter).
    pub fn quick_backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(QUICK_MIN_DELAY)
            .with_max_delay(QUICK_MAX_DELAY)
            .with_max_times(self.quick_retries)
            .with_jitter()
    }

    /// Whether `error` is tried again at once, in process: a transient failure whose source
    /// asks for no more than a short wait.
    pub fn retry_quickly(error: &FetchError) -> bool {
        match error {
            FetchError::Transient { retry_after, .. } => {
                retry_after.is_none_or(|d| d <= QUICK_MAX_DELAY)
            }
            FetchError::HostNotFound(_) => true,
            FetchError::Permanent { .. }
            | FetchError::Storage(_)
            | FetchError::Stopped
            | FetchError::ChecksumMismatch(_) => false,
        }
    }

    /// The pause before a quick retry: the back-off's, or the source's Retry-After if longer.
    pub fn quick_delay(error: &FetchError, backoff: Option<Duration>) -> Option<Duration> {
        match error {
            FetchError::Transient {
                retry_after: Some(after),
                ..
            } => backoff.map(|d| d.max((*after).min(QUICK_MAX_DELAY))),
            _ => backoff,
        }
    }

    /// A source's `Retry-After`, capped at the longest configured delay (and RabbitMQ's
    /// limit): how long its host is left alone.
    pub fn cap(&self, retry_after: Duration) -> Duration {
        let longest = self.delays.iter().max().copied().unwrap_or_default();
        cap_retry_after(retry_after, longest)
    }

    /// What follows a failure of try number `attempt` (0 for the first message) once its
    /// quick tries are spent. A source's Retry-After lengthens the wait, but never beyond the
    /// longest configured delay.
    pub fn after_failure(&self, error: &FetchError, attempt: u32) -> Next {
        let retry_after = match error {
            FetchError::Permanent { reason, .. } | FetchError::HostNotFound(reason) => {
                return Next::GiveUp(reason.clone())
            }
            FetchError::Stopped => return Next::GiveUp(FetchError::Stopped.to_string()),
            // Once more after the first delay (a transfer damaged on the way), then given up
            // with the mismatch as the reason.
            FetchError::ChecksumMismatch(reason) => {
                return match (attempt, self.delays.first()) {
                    (0, Some(delay)) => Next::RetryIn(*delay),
                    _ => Next::GiveUp(reason.clone()),
                }
            }
            FetchError::Transient { retry_after, .. } => *retry_after,
            FetchError::Storage(_) => None,
        };
        let longest = self.delays.iter().max().copied().unwrap_or_default();
        match self.delays.get(attempt as usize) {
            Some(delay) => Next::RetryIn(
                retry_after.map_or(*delay, |after| cap_retry_after(after, longest).max(*delay)),
            ),
            None => Next::GiveUp(format!("{error} (gave up after {} tries)", attempt + 1)),
        }
    }
}

/// What to do with a video whose recording found that the stored file its 304 (or its
/// checksum match) was to keep had been marked damaged meanwhile (nothing was recorded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterDamage {
    /// Download it again at once, with no conditional request and no checksum-match skip.
    DownloadAgain,
    /// Record it as failed with this reason.
    GiveUp(String),
}

/// What follows when the recorder answers that the stored file was marked damaged
/// meanwhile; `fresh` says whether the download was already one without conditions. Once
/// again, without conditions: that download stores a new file (or fails on its own), so it
/// cannot be answered this way; if it were, the video fails rather than loop.
pub fn after_damaged_meanwhile(fresh: bool) -> AfterDamage {
    if fresh {
        AfterDamage::GiveUp(
            "the stored file was found damaged while this video was on its way, and again \
             after it was downloaded anew; import it again"
                .into(),
        )
    } else {
        AfterDamage::DownloadAgain
    }
}

/// Whether a source's HTTP status is worth another try: server errors, 429 and 408.
pub fn is_transient_status(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
}

/// Why a video fails when the broker set its message aside after too many deliveries.
pub fn dead_letter_reason() -> String {
    format!(
        "set aside (dead-lettered) after {} deliveries that never finished: the worker \
         crashed or was stopped while importing it each time",
        queue::DELIVERY_LIMIT
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FailureClass;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            quick_retries: 2,
            delays: vec![Duration::from_secs(30), Duration::from_secs(120)],
        }
    }

    fn transient(retry_after: Option<u64>) -> FetchError {
        FetchError::Transient {
            class: FailureClass::Http5xx,
            reason: "the server answered 503".into(),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[test]
    fn a_checksum_mismatch_is_tried_once_more_then_fails_with_the_mismatch() {
        let mismatch =
            FetchError::ChecksumMismatch("checksum mismatch: expected md5 aa, got bb".into());
        assert!(!RetryPolicy::retry_quickly(&mismatch));
        assert_eq!(
            policy().after_failure(&mismatch, 0),
            Next::RetryIn(Duration::from_secs(30))
        );
        assert_eq!(
            policy().after_failure(&mismatch, 1),
            Next::GiveUp("checksum mismatch: expected md5 aa, got bb".into())
        );
    }

    #[test]
    fn the_first_failure_waits_the_first_delay() {
        assert_eq!(
            policy().after_failure(&transient(None), 0),
            Next::RetryIn(Duration::from_secs(30))
        );
        assert_eq!(
            policy().after_failure(&FetchError::Storage("disk full".into()), 1),
            Next::RetryIn(Duration::from_secs(120))
        );
    }

    #[test]
    fn the_last_try_gives_up_with_the_reason_and_the_count() {
        assert_eq!(
            policy().after_failure(&transient(None), 2),
            Next::GiveUp("the server answered 503 (gave up after 3 tries)".into())
        );
        let none = RetryPolicy {
            quick_retries: 0,
            delays: vec![],
        };
        assert!(matches!(
            none.after_failure(&transient(None), 0),
            Next::GiveUp(_)
        ));
    }

    #[test]
    fn permanent_failures_give_up_at_once() {
        let error =
            FetchError::permanent(FailureClass::Http4xx, "the server answered 404 Not Found");
        assert_eq!(
            policy().after_failure(&error, 0),
            Next::GiveUp("the server answered 404 Not Found".into())
        );
        assert!(!RetryPolicy::retry_quickly(&error));
    }

    #[test]
    fn retry_after_lengthens_the_wait_but_is_capped() {
        // Zero: the configured delay stands.
        assert_eq!(
            policy().after_failure(&transient(Some(0)), 0),
            Next::RetryIn(Duration::from_secs(30))
        );
        assert_eq!(
            policy().after_failure(&transient(Some(90)), 0),
            Next::RetryIn(Duration::from_secs(90))
        );
        // Huge: at most the longest configured delay.
        assert_eq!(
            policy().after_failure(&transient(Some(u64::MAX / 2)), 0),
            Next::RetryIn(Duration::from_secs(120))
        );
    }

    #[test]
    fn only_short_waits_are_retried_in_process() {
        assert!(RetryPolicy::retry_quickly(&transient(None)));
        assert!(RetryPolicy::retry_quickly(&transient(Some(5))));
        assert!(!RetryPolicy::retry_quickly(&transient(Some(6))));
        assert!(!RetryPolicy::retry_quickly(&FetchError::Storage(
            "x".into()
        )));
        let backoff = Some(Duration::from_millis(300));
        assert_eq!(
            RetryPolicy::quick_delay(&transient(Some(2)), backoff),
            Some(Duration::from_secs(2))
        );
        assert_eq!(RetryPolicy::quick_delay(&transient(None), backoff), backoff);
        assert_eq!(RetryPolicy::quick_delay(&transient(Some(2)), None), None);
    }

    #[test]
    fn a_host_that_does_not_exist_gets_quick_retries_only() {
        let missing = FetchError::HostNotFound("host not found: a.invalid does not exist".into());
        assert!(RetryPolicy::retry_quickly(&missing));
        assert_eq!(
            policy().after_failure(&missing, 0),
            Next::GiveUp("host not found: a.invalid does not exist".into())
        );
        // A resolver that failed is another matter: the schedule applies.
        let failed = FetchError::Transient {
            class: FailureClass::Unreachable,
            reason: "cannot reach the server: cannot resolve a.example: timed out".into(),
            retry_after: None,
        };
        assert_eq!(
            policy().after_failure(&failed, 0),
            Next::RetryIn(Duration::from_secs(30))
        );
    }

    #[test]
    fn server_errors_429_and_408_are_transient() {
        for status in [500, 502, 503, 429, 408] {
            assert!(is_transient_status(StatusCode::from_u16(status).unwrap()));
        }
        for status in [400, 401, 403, 404, 410, 301] {
            assert!(!is_transient_status(StatusCode::from_u16(status).unwrap()));
        }
    }

    #[test]
    fn a_skip_that_met_a_damaged_file_is_downloaded_again_once() {
        assert_eq!(after_damaged_meanwhile(false), AfterDamage::DownloadAgain);
        match after_damaged_meanwhile(true) {
            AfterDamage::GiveUp(reason) => {
                assert!(reason.contains("found damaged"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_dead_letter_reason_names_the_delivery_limit() {
        assert!(dead_letter_reason().starts_with("set aside (dead-lettered) after 20 deliveries"));
    }
}
