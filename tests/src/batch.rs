//! Import batches (the body of `POST /api/v1/import/videos`), built up one field at a time.

use serde_json::{json, Value};

/// A batch body: `batch("archive").webhook(&url).video(&video_url, "a")`. Serialises to the
/// JSON the API takes, so it can be passed to [`crate::Stack::import`] or reqwest's `json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(transparent)]
pub struct Batch(Value);

/// A batch for `system_name`, without videos yet.
pub fn batch(system_name: &str) -> Batch {
    Batch(json!({"systemName": system_name, "videos": []}))
}

impl Batch {
    /// Sets `webhook`.
    pub fn webhook(mut self, url: &str) -> Batch {
        self.0["webhook"] = json!(url);
        self
    }

    /// Sets `context`.
    pub fn context(mut self, context: Value) -> Batch {
        self.0["context"] = context;
        self
    }

    /// Adds a video with file name `f` and empty metadata.
    pub fn video(self, url: impl Into<String>, id: impl Into<String>) -> Batch {
        self.video_with(url, id, "f", json!({}))
    }

    /// Adds a video with its file name and metadata.
    pub fn video_with(
        mut self,
        url: impl Into<String>,
        id: impl Into<String>,
        file_name: &str,
        metadata: Value,
    ) -> Batch {
        let video = json!({"url": url.into(), "id": id.into(), "fileName": file_name, "metadata": metadata});
        self.videos().push(video);
        self
    }

    /// Adds one video per URL (file name `f`, empty metadata), with ids `v0`, `v1`, … counted
    /// from the videos already in the batch.
    pub fn urls<S: Into<String>>(mut self, urls: impl IntoIterator<Item = S>) -> Batch {
        for url in urls {
            let id = format!("v{}", self.videos().len());
            self = self.video(url, id);
        }
        self
    }

    /// The body as JSON.
    pub fn build(self) -> Value {
        self.0
    }

    fn videos(&mut self) -> &mut Vec<Value> {
        self.0["videos"].as_array_mut().expect("videos is an array")
    }
}

impl From<Batch> for Value {
    fn from(batch: Batch) -> Value {
        batch.0
    }
}
