//! Downloading a video: SSRF-checked, streamed straight into storage, sniffed, bounded in size
//! and time, resumed with a Range request when the connection breaks, conditional when the
//! entry already has the source's validators, with quick retries (backon) for hiccups.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::Retryable;
use futures::StreamExt;
use reqwest::header::{
    HeaderMap, ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, ETAG, IF_MODIFIED_SINCE,
    IF_NONE_MATCH, IF_RANGE, LAST_MODIFIED, RANGE, RETRY_AFTER,
};
use reqwest::StatusCode;
use video_import_shared::config::FetchSettings;
use video_import_shared::ids;
use video_import_shared::netguard::{self, AddressPolicy, ClientOptions};
use video_import_shared::retry::parse_retry_after;
use video_import_shared::store::entries::{NewAsset, Validators};

use crate::hosts::SourceHosts;
use crate::probe::{self, TechMeta};
use crate::retry_policy::{self, RetryPolicy};
use crate::sniff::{self, VideoKind};
use video_import_shared::storage::{Storage, StoredAsset, Upload};

/// Times one download may pick up again where a broken connection left it.
const MAX_RESUMES: u32 = 3;

/// Why a download did not produce a video.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// Trying again will not help (404, not a video, too large, refused address).
    #[error("{0}")]
    Permanent(String),
    /// Worth another try later (connection failure, timeout, 5xx, 429).
    #[error("{reason}")]
    Transient {
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
}

/// Every class [`FetchError::class`] can answer, plus the worker's own.
pub const FAILURE_CLASSES: [&str; 16] = [
    "invalid_url",
    "refused",
    "http_4xx",
    "http_429",
    "http_5xx",
    "redirect",
    "too_large",
    "not_a_video",
    "timeout",
    "unreachable",
    "connection_broke",
    "truncated",
    "storage",
    "host_not_found",
    "dead_lettered",
    "other",
];

impl FetchError {
    /// A bounded class of the reason, for metrics (the reason itself names the URL's
    /// details and goes to the job's status).
    pub fn class(&self) -> &'static str {
        let reason = match self {
            FetchError::Storage(_) => return "storage",
            FetchError::HostNotFound(_) => return "host_not_found",
            FetchError::Permanent(reason) => reason.as_str(),
            FetchError::Transient { reason, .. } => reason.as_str(),
        };
        let answered = |codes: &str| reason.starts_with(&format!("the server answered {codes}"));
        if reason.starts_with("the URL is not valid") {
            "invalid_url"
        } else if reason.starts_with("refused to") {
            "refused"
        } else if reason.contains("redirect") {
            "redirect"
        } else if answered("429") {
            "http_429"
        } else if answered("5") {
            "http_5xx"
        } else if answered("4") {
            "http_4xx"
        } else if reason.starts_with("the video is larger than the limit") {
            "too_large"
        } else if reason.starts_with("not a video") {
            "not_a_video"
        } else if reason.contains("did not answer in time") || reason.contains("took longer than") {
            "timeout"
        } else if reason.starts_with("cannot reach the server") {
            "unreachable"
        } else if reason.starts_with("the connection broke") {
            "connection_broke"
        } else if reason.starts_with("the server announced") {
            "truncated"
        } else {
            "other"
        }
    }

    fn transient(reason: impl Into<String>) -> Self {
        FetchError::Transient {
            reason: reason.into(),
            retry_after: None,
        }
    }
}

fn storage_error(e: object_store::Error) -> FetchError {
    FetchError::Storage(e.to_string())
}

/// The source's validators in a response's headers.
fn validators(headers: &HeaderMap) -> Validators {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    Validators {
        etag: text(ETAG),
        last_modified: text(LAST_MODIFIED),
    }
}

/// What a download produced.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per download, moved once
pub enum Fetched {
    /// A new copy, stored at `asset.key`.
    Stored(Downloaded),
    /// The source answered 304 to our validators: the stored copy is current.
    NotModified,
}

/// A complete, stored, sniffed download.
#[derive(Debug, Clone)]
pub struct Downloaded {
    pub asset: StoredAsset,
    pub kind: VideoKind,
    pub validators: Validators,
    pub meta: TechMeta,
}

impl Downloaded {
    /// The download as its media-library entry records it.
    pub fn to_asset(&self) -> NewAsset {
        NewAsset {
            key: self.asset.key.clone(),
            size: self.asset.size as i64,
            mime_type: self.kind.mime_type.clone(),
            sha256: self.asset.sha256.clone(),
            validators: self.validators.clone(),
            duration_seconds: self.meta.duration_seconds,
            width: self.meta.width,
            height: self.meta.height,
            codec: self.meta.codec.clone(),
        }
    }
}

/// Downloads videos with the configured limits.
pub struct Fetcher {
    client: reqwest::Client,
    policy: AddressPolicy,
    retries: RetryPolicy,
    /// Told when a source asks for a pause, so that every download of its host waits.
    hosts: Arc<SourceHosts>,
    settings: FetchSettings,
    storage: Storage,
}

impl Fetcher {
    /// A fetcher whose client only reaches permitted addresses.
    pub fn new(
        settings: &FetchSettings,
        storage: Storage,
        hosts: Arc<SourceHosts>,
    ) -> anyhow::Result<Self> {
        let policy =
            AddressPolicy::new(settings.allow_private_networks, &settings.allowed_networks);
        let client = netguard::client(
            policy.clone(),
            &ClientOptions {
                connect_timeout: settings.connect_timeout,
                read_timeout: settings.read_timeout,
                max_redirects: settings.max_redirects,
                user_agent: concat!("video-import-worker/", env!("CARGO_PKG_VERSION")).into(),
            },
        )?;
        Ok(Self {
            client,
            policy,
            retries: RetryPolicy::new(settings),
            hosts,
            settings: settings.clone(),
            storage,
        })
    }

    /// Downloads `url` into storage under the project's keys, retrying quick hiccups.
    pub async fn download(
        &self,
        url: &str,
        project_id: i64,
        known: Option<&Validators>,
    ) -> Result<Fetched, FetchError> {
        (|| self.download_once(url, project_id, known))
            .retry(self.retries.quick_backoff())
            .when(RetryPolicy::retry_quickly)
            .adjust(RetryPolicy::quick_delay)
            .notify(|e, delay| {
                if let FetchError::Transient {
                    retry_after: Some(pause),
                    ..
                } = e
                {
                    self.hosts.pause(url, *pause);
                }
                tracing::debug!(url = %netguard::redact_url(url), error = %e, ?delay, "retrying download")
            })
            .await
    }

    async fn download_once(
        &self,
        url: &str,
        project_id: i64,
        known: Option<&Validators>,
    ) -> Result<Fetched, FetchError> {
        let parsed: url::Url = url
            .parse()
            .map_err(|e| FetchError::Permanent(format!("the URL is not valid: {e}")))?;
        self.policy
            .check_url(&parsed)
            .map_err(|r| FetchError::Permanent(r.0))?;
        let started = Instant::now();
        let mut request = self.client.get(parsed.clone());
        if let Some(known) = known {
            if let Some(etag) = &known.etag {
                request = request.header(IF_NONE_MATCH, etag);
            }
            if let Some(modified) = &known.last_modified {
                request = request.header(IF_MODIFIED_SINCE, modified);
            }
        }
        let response = request.send().await.map_err(request_error)?;
        let status = response.status();
        if status == StatusCode::NOT_MODIFIED && known.is_some() {
            return Ok(Fetched::NotModified);
        }
        if !status.is_success() {
            return Err(status_error(status, response.headers()));
        }
        let max = self.settings.max_bytes;
        let declared = content_length(response.headers());
        if let Some(len) = declared.filter(|&len| len > max) {
            return Err(too_large(len, max));
        }
        let validators = validators(response.headers());
        let resumable = response
            .headers()
            .get(ACCEPT_RANGES)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"bytes"));
        let allowed = self.time_allowed(declared);
        let mut sink = Sink::new(&self.storage, project_id, max);
        let pumped = tokio::time::timeout(
            allowed,
            self.pump(
                &parsed,
                response,
                resumable.then_some(&validators),
                &mut sink,
            ),
        )
        .await
        .unwrap_or_else(|_| {
            Err(FetchError::transient(format!(
                "the download took longer than the {} s allowed for it \
                         (fetch.total_timeout_secs, fetch.min_bytes_per_sec)",
                allowed.as_secs()
            )))
        });
        if let Err(e) = pumped {
            sink.abort().await;
            return Err(e);
        }
        if let Some(len) = declared.filter(|&len| len != sink.received) {
            sink.abort().await;
            return Err(FetchError::transient(format!(
                "the server announced {len} bytes but sent {}",
                sink.received
            )));
        }
        let (asset, kind) = sink.finish().await?;
        let meta = probe::inspect(&self.storage, &asset.key, asset.size, &kind.mime_type).await;
        tracing::debug!(bytes = asset.size, elapsed = ?started.elapsed(), "downloaded");
        Ok(Fetched::Stored(Downloaded {
            asset,
            kind,
            validators,
            meta,
        }))
    }

    /// Time a download may take: 60 s plus its size at the slowest accepted speed, capped.
    fn time_allowed(&self, declared: Option<u64>) -> Duration {
        let cap = self.settings.total_timeout;
        match declared {
            Some(len) => {
                Duration::from_secs(60 + len / self.settings.min_bytes_per_sec.max(1)).min(cap)
            }
            None => cap,
        }
    }

    /// Streams the body into `sink`. When the connection breaks and the server accepts
    /// ranges (`resumable` holds its validators), it continues with a Range request.
    async fn pump(
        &self,
        url: &url::Url,
        response: reqwest::Response,
        resumable: Option<&Validators>,
        sink: &mut Sink<'_>,
    ) -> Result<(), FetchError> {
        let mut body = response.bytes_stream().boxed();
        let mut resumes = 0;
        loop {
            let broke = loop {
                match body.next().await {
                    None => return Ok(()),
                    Some(Ok(chunk)) => sink.write(&chunk).await?,
                    Some(Err(e)) => break e,
                }
            };
            let from = sink.received;
            let broken = format!(
                "the connection broke after {from} bytes: {}",
                netguard::describe(&broke.without_url())
            );
            let Some(validators) = resumable.filter(|_| from > 0) else {
                return Err(FetchError::transient(broken));
            };
            // A resume request may itself meet a dying connection: each try counts.
            body = loop {
                if resumes == MAX_RESUMES {
                    return Err(FetchError::transient(format!(
                        "{broken}; gave up resuming after {MAX_RESUMES} Range requests"
                    )));
                }
                resumes += 1;
                match self.resume(url, from, validators).await {
                    Ok(response) => break response.bytes_stream().boxed(),
                    Err(Resume::Refused(status)) => {
                        return Err(FetchError::transient(format!(
                            "{broken}; the server cannot resume it (answered {status} to a Range request)"
                        )))
                    }
                    Err(Resume::Failed(e)) => {
                        tracing::debug!(url = %netguard::redact_url(url.as_str()), error = %e, "resume request failed");
                    }
                }
            };
            tracing::info!(url = %netguard::redact_url(url.as_str()), from, "connection broke; resumed with a Range request");
        }
    }

    /// Asks for the rest of the file from byte `from`, of the same version only.
    async fn resume(
        &self,
        url: &url::Url,
        from: u64,
        validators: &Validators,
    ) -> Result<reqwest::Response, Resume> {
        let mut request = self
            .client
            .get(url.clone())
            .header(RANGE, format!("bytes={from}-"));
        if let Some(v) = validators
            .etag
            .as_ref()
            .or(validators.last_modified.as_ref())
        {
            request = request.header(IF_RANGE, v);
        }
        let response = request
            .send()
            .await
            .map_err(|e| Resume::Failed(netguard::describe(&e.without_url())))?;
        let continues = response.status() == StatusCode::PARTIAL_CONTENT
            && response
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with(&format!("bytes {from}-")));
        if continues {
            Ok(response)
        } else {
            Err(Resume::Refused(response.status()))
        }
    }
}

/// Why a resume request did not continue the download.
enum Resume {
    /// The server answered, but not with the rest of the same file.
    Refused(StatusCode),
    /// The request did not get an answer.
    Failed(String),
}

/// Where the body goes: held back until its first bytes show it is a video, then uploaded.
struct Sink<'a> {
    storage: &'a Storage,
    project_id: i64,
    max: u64,
    head: Vec<u8>,
    upload: Option<(Upload, VideoKind)>,
    received: u64,
}

impl<'a> Sink<'a> {
    fn new(storage: &'a Storage, project_id: i64, max: u64) -> Self {
        Self {
            storage,
            project_id,
            max,
            head: Vec::with_capacity(sniff::SNIFF_BYTES),
            upload: None,
            received: 0,
        }
    }

    async fn write(&mut self, chunk: &[u8]) -> Result<(), FetchError> {
        let total = self.received + chunk.len() as u64;
        if total > self.max {
            return Err(too_large(total, self.max));
        }
        self.received = total;
        match &mut self.upload {
            Some((upload, _)) => upload.write(chunk).await.map_err(storage_error),
            None => {
                self.head.extend_from_slice(chunk);
                if self.head.len() >= sniff::SNIFF_BYTES {
                    self.start().await?;
                }
                Ok(())
            }
        }
    }

    /// Sniffs the first bytes and opens the upload under a fresh key.
    async fn start(&mut self) -> Result<(), FetchError> {
        let kind = sniff::detect(&self.head).map_err(|detected| {
            FetchError::Permanent(format!("not a video (detected: {detected})"))
        })?;
        let key = format!(
            "{}/{}.{}",
            self.project_id,
            ids::random_id(16),
            kind.extension
        );
        let mut upload = self.storage.upload(&key).await.map_err(storage_error)?;
        upload.write(&self.head).await.map_err(storage_error)?;
        self.head = Vec::new();
        self.upload = Some((upload, kind));
        Ok(())
    }

    async fn finish(mut self) -> Result<(StoredAsset, VideoKind), FetchError> {
        if self.upload.is_none() {
            self.start().await?;
        }
        let (upload, kind) = self.upload.take().expect("upload started");
        let asset = upload.finish().await.map_err(storage_error)?;
        Ok((asset, kind))
    }

    async fn abort(&mut self) {
        if let Some((upload, _)) = self.upload.take() {
            upload.abort().await;
        }
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn too_large(len: u64, max: u64) -> FetchError {
    FetchError::Permanent(format!(
        "the video is larger than the limit: {len} bytes or more, fetch.max_bytes is {max}"
    ))
}

fn status_error(status: StatusCode, headers: &HeaderMap) -> FetchError {
    let text = format!(
        "the server answered {} {} for the video URL",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .replace("  ", " ");
    if retry_policy::is_transient_status(status) {
        let retry_after = headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, chrono::Utc::now()));
        FetchError::Transient {
            reason: text,
            retry_after,
        }
    } else if status.is_redirection() {
        FetchError::Permanent(format!("{text} (a redirect that was not followed)"))
    } else {
        FetchError::Permanent(text)
    }
}

fn request_error(error: reqwest::Error) -> FetchError {
    // The URL may hold credentials or a presigned signature: never part of a reason.
    let error = error.without_url();
    if let Some(refusal) = netguard::refusal_in(&error) {
        return FetchError::Permanent(refusal);
    }
    if let Some(missing) = netguard::host_not_found_in(&error) {
        return FetchError::HostNotFound(missing.to_string());
    }
    if error.is_redirect() {
        return FetchError::Permanent(format!(
            "redirects not followed: {}",
            netguard::describe(&error)
        ));
    }
    if error.is_timeout() {
        return FetchError::transient(format!(
            "the server did not answer in time: {}",
            netguard::describe(&error)
        ));
    }
    FetchError::transient(format!(
        "cannot reach the server: {}",
        netguard::describe(&error)
    ))
}
