//! Messages exchanged over RabbitMQ. PostgreSQL holds the state (a fetch message carries a
//! copy of its video's data, never its state), so a redelivered or duplicated message is
//! harmless.

use serde::{Deserialize, Serialize};

/// Download, store and upsert one video of a job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FetchVideo {
    pub job_id: String,
    /// Position of the video in the job's batch.
    pub idx: i32,
    /// How many earlier tries went back through the queue (0 on the first).
    #[serde(default)]
    pub attempt: u32,
    /// The video itself, so that the worker need not load it (absent in older messages,
    /// which the worker loads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<Video>,
}

/// What a worker needs to import one video, as the dispatcher read it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Video {
    pub project_id: i64,
    pub system_name: String,
    pub external_id: String,
    pub url: String,
    pub file_name: String,
    pub metadata: serde_json::Value,
    /// The existing entry's source validators, when it came from this same URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
}

/// Deliver a finished job's webhook.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeliverWebhook {
    pub job_id: String,
    /// Number of this attempt, starting at 1.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// The receiver's URL (a job's webhook never changes), so the notifier can check the
    /// host's free slots before it reads the database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

fn first_attempt() -> u32 {
    1
}
