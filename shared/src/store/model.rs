//! The values several store modules pass each other: a video of a job as the worker needs
//! it, and its source's cache validators. Apart from the modules that read and write them,
//! so that none of those depends on another for a type.

use serde_json::Value;

use super::ItemState;

/// A video of a job, as the worker needs it.
#[derive(Debug, Clone)]
pub struct Item {
    pub job_id: String,
    pub idx: i32,
    pub project_id: i64,
    pub system_name: String,
    pub external_id: String,
    pub url: String,
    pub file_name: String,
    pub metadata: Value,
    pub state: ItemState,
    /// Validators of the existing entry's source, when it came from this same URL.
    pub known: Option<Validators>,
}

/// The source's cache validators, sent back on re-imports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

impl Validators {
    /// Whether the source sent neither an ETag nor a Last-Modified.
    pub fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }
}
