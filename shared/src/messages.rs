//! Messages exchanged over RabbitMQ. They carry ids only: PostgreSQL holds the state, so a
//! redelivered or duplicated message is harmless.

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
}

/// Deliver a finished job's webhook.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeliverWebhook {
    pub job_id: String,
    /// Number of this attempt, starting at 1.
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// Times this attempt already waited because its receiver's host had no free slot.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub waited: u32,
    /// The receiver's URL (a job's webhook never changes), so the notifier can check the
    /// host's free slots before it reads the database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn first_attempt() -> u32 {
    1
}
