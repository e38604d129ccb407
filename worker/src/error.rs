//! Why a download did not produce a video: whether trying again can help, and the failure's
//! class for metrics, both declared where the error is made.

use std::time::Duration;

/// A bounded class of a failure, for the `video_import_failures_total` metric (the reason
/// itself names the URL's details and goes to the job's status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureClass {
    InvalidUrl,
    Refused,
    Http4xx,
    Http429,
    Http5xx,
    Redirect,
    TooLarge,
    NotAVideo,
    Timeout,
    Unreachable,
    ConnectionBroke,
    Truncated,
    Storage,
    HostNotFound,
    /// The broker set the message aside after too many deliveries without an ack.
    DeadLettered,
    /// The stored file did not match a checksum it was submitted with.
    ChecksumMismatch,
    /// A source rule forbids or cannot make the request (credentials over plain http, no
    /// rule for an `s3://` bucket, secrets the worker cannot open).
    SourceRule,
    Other,
}

impl FailureClass {
    /// Every class, so that each series exists from the start.
    pub const ALL: [FailureClass; 18] = [
        FailureClass::InvalidUrl,
        FailureClass::Refused,
        FailureClass::Http4xx,
        FailureClass::Http429,
        FailureClass::Http5xx,
        FailureClass::Redirect,
        FailureClass::TooLarge,
        FailureClass::NotAVideo,
        FailureClass::Timeout,
        FailureClass::Unreachable,
        FailureClass::ConnectionBroke,
        FailureClass::Truncated,
        FailureClass::Storage,
        FailureClass::HostNotFound,
        FailureClass::DeadLettered,
        FailureClass::ChecksumMismatch,
        FailureClass::SourceRule,
        FailureClass::Other,
    ];

    /// The metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureClass::InvalidUrl => "invalid_url",
            FailureClass::Refused => "refused",
            FailureClass::Http4xx => "http_4xx",
            FailureClass::Http429 => "http_429",
            FailureClass::Http5xx => "http_5xx",
            FailureClass::Redirect => "redirect",
            FailureClass::TooLarge => "too_large",
            FailureClass::NotAVideo => "not_a_video",
            FailureClass::Timeout => "timeout",
            FailureClass::Unreachable => "unreachable",
            FailureClass::ConnectionBroke => "connection_broke",
            FailureClass::Truncated => "truncated",
            FailureClass::Storage => "storage",
            FailureClass::HostNotFound => "host_not_found",
            FailureClass::DeadLettered => "dead_lettered",
            FailureClass::ChecksumMismatch => "checksum_mismatch",
            FailureClass::SourceRule => "source_rule",
            FailureClass::Other => "other",
        }
    }

    /// The class of an HTTP error status.
    pub fn of_status(status: u16) -> Self {
        match status {
            429 => FailureClass::Http429,
            500..=599 => FailureClass::Http5xx,
            300..=399 => FailureClass::Redirect,
            _ => FailureClass::Http4xx,
        }
    }
}

/// Why a download did not produce a video.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// Trying again will not help (404, not a video, too large, refused address).
    #[error("{reason}")]
    Permanent { class: FailureClass, reason: String },
    /// Worth another try later (connection failure, timeout, 5xx, 429).
    #[error("{reason}")]
    Transient {
        class: FailureClass,
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Our own storage failed; not the source's fault.
    #[error("cannot store the video: {0}")]
    Storage(String),
    /// The URL's host does not exist in DNS: worth a quick retry (DNS can be briefly
    /// inconsistent), not the delay schedule.
    #[error("{0}")]
    HostNotFound(String),
    /// Stopped on purpose (its job was cancelled): not a failure, nothing to record.
    #[error("the download was stopped: its job was cancelled")]
    Stopped,
    /// What was stored differs from a checksum the video was submitted with (the stored
    /// copy is removed): tried once more, in case the transfer was damaged, then failed.
    #[error("{0}")]
    ChecksumMismatch(String),
}

impl FetchError {
    /// A failure that trying again will not mend.
    pub fn permanent(class: FailureClass, reason: impl Into<String>) -> Self {
        FetchError::Permanent {
            class,
            reason: reason.into(),
        }
    }

    /// A failure worth another try, with no pause asked by the source.
    pub fn transient(class: FailureClass, reason: impl Into<String>) -> Self {
        FetchError::Transient {
            class,
            reason: reason.into(),
            retry_after: None,
        }
    }

    /// Its class, for metrics.
    pub fn class(&self) -> FailureClass {
        match self {
            FetchError::Permanent { class, .. } | FetchError::Transient { class, .. } => *class,
            FetchError::Storage(_) => FailureClass::Storage,
            FetchError::HostNotFound(_) => FailureClass::HostNotFound,
            FetchError::Stopped => FailureClass::Other,
            FetchError::ChecksumMismatch(_) => FailureClass::ChecksumMismatch,
        }
    }
}

impl From<object_store::Error> for FetchError {
    fn from(e: object_store::Error) -> Self {
        FetchError::Storage(e.to_string())
    }
}
