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
use tokio_util::sync::CancellationToken;
use video_import_shared::config::FetchSettings;
use video_import_shared::ids;
use video_import_shared::netguard::{self, AddressPolicy, ClientOptions};
use video_import_shared::redact::{self, Show};
use video_import_shared::retry::parse_retry_after;
use video_import_shared::store::entries::NewAsset;
use video_import_shared::store::{Checksum, Validators};

use crate::error::{FailureClass, FetchError};
use crate::hosts::SourceHosts;
use crate::probe::{self, TechMeta};
use crate::retry_policy::{self, RetryPolicy};
use crate::sniff::{self, VideoKind};
use video_import_shared::storage::{Storage, StoredAsset, Upload};

/// Times one download may pick up again where a broken connection left it.
const MAX_RESUMES: u32 = 3;

fn storage_error(e: object_store::Error) -> FetchError {
    FetchError::from(e)
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
            md5: Some(self.asset.md5.clone()),
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
            AddressPolicy::new(settings.allow_private_networks, &settings.allowed_networks)
                .via_proxy("fetch", settings.proxy.as_ref());
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

    /// Downloads `url` into storage under the project's keys, retrying quick hiccups; a
    /// cancelled `stop` ends it with [`FetchError::Stopped`], its partial upload abandoned.
    pub async fn download(
        &self,
        url: &str,
        project_id: i64,
        known: Option<&Validators>,
        expected: &Checksum,
        stop: &CancellationToken,
    ) -> Result<Fetched, FetchError> {
        // A video with a checksum is always downloaded: a 304 would leave it unchecked.
        let known = known.filter(|_| expected.is_empty());
        (|| self.download_once(url, project_id, known, expected, stop))
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
                tracing::debug!(url = %redact::url(url, Show::ForLogs), error = %e, ?delay, "retrying download")
            })
            .await
    }

    async fn download_once(
        &self,
        url: &str,
        project_id: i64,
        known: Option<&Validators>,
        expected: &Checksum,
        stop: &CancellationToken,
    ) -> Result<Fetched, FetchError> {
        if stop.is_cancelled() {
            return Err(FetchError::Stopped);
        }
        let parsed: url::Url = url.parse().map_err(|e| {
            FetchError::permanent(
                FailureClass::InvalidUrl,
                format!("the URL is not valid: {e}"),
            )
        })?;
        self.policy
            .check_url(&parsed)
            .map_err(|r| FetchError::permanent(FailureClass::Refused, r.0))?;
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
        let pumping = tokio::time::timeout(
            allowed,
            self.pump(
                &parsed,
                response,
                resumable.then_some(&validators),
                &mut sink,
            ),
        );
        let pumped = tokio::select! {
            pumped = pumping => pumped,
            _ = stop.cancelled() => Ok(Err(FetchError::Stopped)),
        };
        let pumped = pumped.unwrap_or_else(|_| {
            Err(FetchError::transient(
                FailureClass::Timeout,
                format!(
                    "the download took longer than the {} s allowed for it \
                         (fetch.total_timeout_secs, fetch.min_bytes_per_sec)",
                    allowed.as_secs()
                ),
            ))
        });
        if let Err(e) = pumped {
            sink.abort().await;
            return Err(e);
        }
        if let Some(len) = declared.filter(|&len| len != sink.received) {
            sink.abort().await;
            return Err(FetchError::transient(
                FailureClass::Truncated,
                format!(
                    "the server announced {len} bytes but sent {}",
                    sink.received
                ),
            ));
        }
        let (asset, kind) = sink.finish().await?;
        if let Some(why) = expected.mismatch(&asset.sha256, &asset.md5) {
            // Nothing of a file that is not what was sent is kept.
            self.storage.remove(&asset.key).await;
            return Err(FetchError::ChecksumMismatch(why));
        }
        let meta = probe::inspect(
            &self.storage,
            &asset.key,
            &asset.head.0,
            asset.size,
            &kind.mime_type,
        )
        .await;
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
                return Err(FetchError::transient(FailureClass::ConnectionBroke, broken));
            };
            // A resume request may itself meet a dying connection: each try counts.
            body = loop {
                if resumes == MAX_RESUMES {
                    return Err(FetchError::transient(
                        FailureClass::ConnectionBroke,
                        format!("{broken}; gave up resuming after {MAX_RESUMES} Range requests"),
                    ));
                }
                resumes += 1;
                match self.resume(url, from, validators).await {
                    Ok(response) => break response.bytes_stream().boxed(),
                    Err(Resume::Refused(status)) => {
                        return Err(FetchError::transient(FailureClass::ConnectionBroke, format!(
                            "{broken}; the server cannot resume it (answered {status} to a Range request)"
                        )))
                    }
                    Err(Resume::Failed(e)) => {
                        tracing::debug!(url = %redact::url(url.as_str(), Show::ForLogs), error = %e, "resume request failed");
                    }
                }
            };
            tracing::info!(url = %redact::url(url.as_str(), Show::ForLogs), from, "connection broke; resumed with a Range request");
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
            FetchError::permanent(
                FailureClass::NotAVideo,
                format!("not a video (detected: {detected})"),
            )
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
    FetchError::permanent(
        FailureClass::TooLarge,
        format!(
            "the video is larger than the limit: {len} bytes or more, fetch.max_bytes is {max}"
        ),
    )
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
            class: FailureClass::of_status(status.as_u16()),
            reason: text,
            retry_after,
        }
    } else if status.is_redirection() {
        FetchError::permanent(
            FailureClass::Redirect,
            format!("{text} (a redirect that was not followed)"),
        )
    } else {
        FetchError::permanent(FailureClass::of_status(status.as_u16()), text)
    }
}

fn request_error(error: reqwest::Error) -> FetchError {
    // The URL may hold credentials or a presigned signature: never part of a reason.
    let error = error.without_url();
    if let Some(refusal) = netguard::refusal_in(&error) {
        return FetchError::permanent(FailureClass::Refused, refusal);
    }
    if let Some(missing) = netguard::host_not_found_in(&error) {
        return FetchError::HostNotFound(missing.to_string());
    }
    if error.is_redirect() {
        return FetchError::permanent(
            FailureClass::Redirect,
            format!("redirects not followed: {}", netguard::describe(&error)),
        );
    }
    if error.is_timeout() {
        return FetchError::transient(
            FailureClass::Timeout,
            format!(
                "the server did not answer in time: {}",
                netguard::describe(&error)
            ),
        );
    }
    FetchError::transient(
        FailureClass::Unreachable,
        format!("cannot reach the server: {}", netguard::describe(&error)),
    )
}
