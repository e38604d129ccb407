//! The body every finished job's webhook carries: Livingdocs' fields, plus the Standard
//! Webhooks envelope fields `type` and `timestamp`. Built by the notifier, described in the
//! API's OpenAPI document.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use utoipa::ToSchema;

use crate::store::JobState;

/// The event type of a finished import job.
pub const EVENT_TYPE: &str = "import.videos.finished";

/// A finished import job, as POSTed to its webhook.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Payload {
    /// Always `import.videos.finished`.
    #[serde(rename = "type")]
    #[schema(example = "import.videos.finished")]
    pub event_type: String,
    /// When the job finished (the event's time; the same on every retry).
    pub timestamp: DateTime<Utc>,
    /// The job id.
    pub id: String,
    pub state: JobState,
    pub system_name: String,
    pub overview: Overview,
    /// The caller's `context`, byte for byte.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub context: Option<Box<RawValue>>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The first 100 failed videos with their reasons.
    pub failures: Vec<Failure>,
}

/// Counts of a finished job's videos.
#[derive(Debug, Serialize, ToSchema)]
pub struct Overview {
    pub total: i32,
    pub imported: i32,
    pub skipped: i32,
    pub failed: i32,
}

/// One failed video.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    pub external_id: String,
    pub reason: String,
}
