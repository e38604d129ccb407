//! The API's request and response bodies, typed so that the OpenAPI document is generated
//! from the same definitions the handlers serialize.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
pub use video_import_shared::store::{DamageKind, ItemState, JobState, WebhookState};

/// Body of `POST /api/v1/import/videos`. It documents the body; `validate` parses it field
/// by field, so that every missing or mistyped field is named.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)]
#[serde(rename_all = "camelCase")]
pub struct ImportRequest {
    /// Identifier of the system the videos come from; with each video's `id` the upsert key.
    /// At most 200 bytes of UTF-8 (after trimming white space), no control characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$",
        example = "identifier-for-your-system"
    )]
    pub system_name: String,
    /// Notified by POST when the job is done.
    #[serde(default)]
    #[schema(example = "https://my-domain.com/webhooks/video-import")]
    pub webhook: Option<String>,
    /// Sent back verbatim in the webhook; at most 8192 bytes.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub context: Option<Box<serde_json::value::RawValue>>,
    /// 1 to `api.max_batch_size` videos.
    #[schema(min_items = 1)]
    pub videos: Vec<VideoInput>,
}

/// One video of an import batch.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)] // documents the body, see `ImportRequest`
#[serde(rename_all = "camelCase")]
pub struct VideoInput {
    /// http(s) URL of the video file, written `http(s)://host/…`, or `s3://bucket/key` of a
    /// bucket a source rule of the project covers; no `data:` URLs, no control characters.
    #[schema(example = "https://archive.example/sample.mp4")]
    pub url: String,
    /// Your id of the video (stored as `externalId`), unique within the batch; at most 1024
    /// bytes of UTF-8, no control characters.
    #[schema(
        min_length = 1,
        max_length = 1024,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$",
        example = "123abc"
    )]
    pub id: String,
    /// File name of the media-library entry; at most 1024 bytes of UTF-8, no control
    /// characters.
    #[schema(
        min_length = 1,
        max_length = 1024,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$",
        example = "sample"
    )]
    pub file_name: String,
    /// Metadata, validated against the project's schema. Numbers must be storable exactly
    /// (64-bit integers, or at most 15 significant digits).
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    /// Fixity values of the file: the worker checks what it stores against each one given,
    /// and fails the video (nothing kept) when one differs.
    #[serde(default)]
    pub checksum: Option<ChecksumInput>,
}

/// Fixity values, hex (either case); at least one.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[allow(dead_code)] // documents the body, see `ImportRequest`
pub struct ChecksumInput {
    #[schema(min_length = 64, max_length = 64, pattern = "^[0-9a-fA-F]{64}$")]
    pub sha256: Option<String>,
    #[schema(min_length = 32, max_length = 32, pattern = "^[0-9a-fA-F]{32}$")]
    pub md5: Option<String>,
}

/// The job was accepted.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    /// Job id, for the status endpoint.
    #[schema(example = "k3j9x0q2m1ab")]
    pub id: String,
}

/// Counts of a job's videos by state.
#[derive(Debug, Serialize, ToSchema)]
pub struct Overview {
    pub total: i32,
    pub imported: i32,
    pub skipped: i32,
    pub failed: i32,
    pub pending: i32,
}

/// A job's status.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    #[serde(flatten)]
    pub summary: JobSummary,
    /// The job whose failed videos this job retries (`POST /api/v1/import/videos/{id}/retry`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<String>,
    pub videos: Vec<VideoStatus>,
    /// Present once the job is finished, if it has a webhook.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookStatus>,
}

/// One video's outcome, in Livingdocs' words (`success`, `skipped`, `failed`), and
/// `pending` while it is not finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VideoOutcome {
    Success,
    Skipped,
    Failed,
    Pending,
}

impl From<ItemState> for VideoOutcome {
    fn from(state: ItemState) -> Self {
        match state {
            ItemState::Imported => VideoOutcome::Success,
            ItemState::Skipped => VideoOutcome::Skipped,
            ItemState::Failed => VideoOutcome::Failed,
            ItemState::Pending => VideoOutcome::Pending,
        }
    }
}

/// One video's outcome. `status`, `externalId`, `title`, `reason` and `video` are
/// Livingdocs'; `state`, `systemName` and `lastError` are ours.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VideoStatus {
    /// Livingdocs' outcome: what a Livingdocs client reads.
    pub status: VideoOutcome,
    pub external_id: String,
    /// The `fileName` it was imported with.
    pub title: String,
    /// Ours: the same outcome in this service's state names (`imported` for `success`).
    pub state: ItemState,
    pub system_name: String,
    /// Why it failed or was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Still pending: why the last try failed and when the next comes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub video: Option<VideoRef>,
}

/// The media-library entry a video became: `mediaId`, `originalUrl`, `url`, `width`,
/// `height` and `mimeType` are Livingdocs'; `size`, `duration`, `codec` and `sha256` ours.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VideoRef {
    pub media_id: String,
    /// Where the video was fetched from (without credentials).
    pub original_url: String,
    /// Where the stored video is read back (`GET /api/v1/mediaLibrary/{id}/asset`);
    /// absolute when `api.public_url` is set.
    #[schema(example = "https://videos.example/api/v1/mediaLibrary/omk2sqwglims/asset")]
    pub url: String,
    pub mime_type: Option<String>,
    pub size: Option<i64>,
    /// Seconds.
    pub duration: Option<f64>,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub codec: Option<String>,
    /// SHA-256 of the stored file, hex.
    pub sha256: Option<String>,
    /// MD5 of the stored file, hex (absent for files stored before it was kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
    /// The fixity values the video was submitted with, which the stored file matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified: Option<ChecksumInput>,
}

/// Webhook delivery state.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookStatus {
    pub state: WebhookState,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// A page of jobs, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobList {
    pub jobs: Vec<JobSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A job without its videos.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobSummary {
    pub id: String,
    pub finished: bool,
    pub state: JobState,
    pub system_name: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Set when the job was cancelled; its unfinished videos failed with reason `cancelled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancelled_at: Option<DateTime<Utc>>,
    /// Set once retention (`retention.finished_jobs_secs` after it finished) removed its
    /// videos' details and webhook history: its status answers 410 with this summary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pruned_at: Option<DateTime<Utc>>,
    pub overview: Overview,
}

/// A media-library entry in Livingdocs' shape (`id`, `version`, `systemName`, `externalId`,
/// `mediaType`, `metadata`, `asset`, `createdAt`, `updatedAt`), with our `fileName`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MediaEntry {
    pub id: String,
    pub version: i32,
    pub system_name: String,
    pub external_id: String,
    /// Always `video`.
    #[schema(example = "video")]
    pub media_type: String,
    pub file_name: String,
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub asset: Asset,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The stored file of an entry: `key`, `url`, `size`, `width`, `height`, `duration`,
/// `filename` and `mimeType` are Livingdocs'; `sha256`, `originalUrl` and `codec` ours.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Asset {
    pub key: String,
    /// Where the file is read back (`GET /api/v1/mediaLibrary/{id}/asset`); absolute when
    /// `api.public_url` is set.
    pub url: String,
    /// The entry's file name (Livingdocs spells it in lower case here).
    #[serde(rename = "filename")]
    pub filename: String,
    pub size: i64,
    pub mime_type: String,
    pub sha256: String,
    /// MD5 of the file, hex (absent for files stored before it was kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
    pub original_url: String,
    /// Seconds, read from the file.
    pub duration: Option<f64>,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub codec: Option<String>,
    /// Present while the stored file is marked damaged (`storage verify` or the worker's
    /// continuous verification found it missing or changed): the next import of this video
    /// downloads it again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damaged: Option<AssetDamage>,
}

/// What the storage verifier found wrong with an entry's stored file.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AssetDamage {
    pub kind: DamageKind,
    /// What was expected and what was found.
    #[schema(example = "wrong size: expected 2815 bytes, found 1000")]
    pub reason: String,
    /// When it was first found.
    pub found_at: DateTime<Utc>,
}

/// A job after a cancel request.
#[derive(Debug, Serialize, ToSchema)]
pub struct Cancelled {
    #[serde(flatten)]
    pub job: JobSummary,
    /// Videos that were still pending and now failed with reason `cancelled`.
    pub cancelled: i32,
}

/// A redelivery was queued.
#[derive(Debug, Serialize, ToSchema)]
pub struct Redelivery {
    pub id: String,
    pub webhook: RedeliveryState,
}

/// The webhook after a redelivery request.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedeliveryState {
    pub state: WebhookState,
    pub webhook_id: String,
    /// Attempts made before this redelivery.
    pub attempts: i32,
}

/// A 429: the daily limit answers an array (as Livingdocs), the rate limit an object.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // documents the two shapes; `ApiError` builds them
pub enum TooManyRequests {
    UsageLimit(Vec<ErrorBody>),
    RateLimit(ErrorBody),
}

/// A job whose videos' details were removed after the retention period: what it asked for
/// cannot be answered, and what is left of the job.
#[derive(Debug, Serialize, ToSchema)]
pub struct PrunedDetails {
    /// What happened and what to do instead.
    #[schema(
        example = "Job k3j9x0q2m1ab finished at 2026-11-27T04:49:14Z; its videos' details and webhook history were removed at 2026-12-27T04:50:02Z, after the retention period (retention.finished_jobs_secs). Its overview is below and in the job list; its imported videos stay in the media library."
    )]
    pub message: String,
    /// The job's summary as the job list shows it (`finishedAt`, `prunedAt`, `overview`).
    #[serde(flatten)]
    pub job: JobSummary,
}

/// `410 Gone` for a pruned job: the error shape with the job's summary in `error_details`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PrunedError {
    #[schema(example = 410)]
    pub status: u16,
    #[schema(example = "Gone")]
    pub error: String,
    pub error_details: PrunedDetails,
    /// Also in the `x-request-id` header; quote it when asking for help.
    pub request_id: String,
}

/// Every error: Livingdocs' shape plus the request id.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub status: u16,
    #[schema(example = "Bad Request")]
    pub error: String,
    /// For validation errors, each offending field path mapped to its problem.
    #[schema(value_type = Object)]
    pub error_details: Value,
    /// Also in the `x-request-id` header; quote it when asking for help.
    pub request_id: String,
}
