//! Downloading a video: SSRF-checked, streamed to a temporary file, sniffed, bounded in size
//! and time, with quick retries (backon) for transient failures.

use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use futures::StreamExt;
use reqwest::header::{CONTENT_LENGTH, RETRY_AFTER};
use reqwest::StatusCode;
use video_import_shared::config::FetchSettings;
use video_import_shared::netguard::{self, AddressPolicy, ClientOptions};

use crate::sniff::{self, VideoKind};
use crate::store::{FinishedAsset, Storage};

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
    /// Our own disk failed; not the source's fault.
    #[error("cannot write the download to storage: {0}")]
    Storage(String),
}

impl FetchError {
    fn transient(reason: impl Into<String>) -> Self {
        FetchError::Transient {
            reason: reason.into(),
            retry_after: None,
        }
    }
}

/// A complete, sniffed download.
#[derive(Debug)]
pub struct Downloaded {
    pub asset: FinishedAsset,
    pub kind: VideoKind,
}

/// Downloads videos with the configured limits.
pub struct Fetcher {
    client: reqwest::Client,
    settings: FetchSettings,
    storage: Storage,
}

impl Fetcher {
    /// A fetcher whose client only reaches permitted addresses.
    pub fn new(settings: &FetchSettings, storage: Storage) -> anyhow::Result<Self> {
        let policy =
            AddressPolicy::new(settings.allow_private_networks, &settings.allowed_networks);
        let client = netguard::client(
            policy,
            &ClientOptions {
                connect_timeout: Duration::from_secs(settings.connect_timeout_secs),
                read_timeout: Duration::from_secs(settings.read_timeout_secs),
                max_redirects: settings.max_redirects,
                user_agent: concat!("video-import-worker/", env!("CARGO_PKG_VERSION")).into(),
            },
        )?;
        Ok(Self {
            client,
            settings: settings.clone(),
            storage,
        })
    }

    /// Downloads `url`, retrying quick hiccups in process.
    pub async fn download(&self, url: &str) -> Result<Downloaded, FetchError> {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(5))
            .with_max_times(self.settings.quick_retries)
            .with_jitter();
        (|| self.download_once(url))
            .retry(backoff)
            .when(|e| match e {
                // A long Retry-After goes back through the queue instead of holding a slot.
                FetchError::Transient { retry_after, .. } => {
                    retry_after.is_none_or(|d| d <= Duration::from_secs(5))
                }
                _ => false,
            })
            .adjust(|e, delay| match e {
                FetchError::Transient {
                    retry_after: Some(after),
                    ..
                } => delay.map(|d| d.max(*after)),
                _ => delay,
            })
            .notify(|e, delay| tracing::debug!(url, error = %e, ?delay, "retrying download"))
            .await
    }

    async fn download_once(&self, url: &str) -> Result<Downloaded, FetchError> {
        let parsed: url::Url = url
            .parse()
            .map_err(|e| FetchError::Permanent(format!("the URL is not valid: {e}")))?;
        let policy = AddressPolicy::new(
            self.settings.allow_private_networks,
            &self.settings.allowed_networks,
        );
        policy
            .check_url(&parsed)
            .map_err(|r| FetchError::Permanent(r.0))?;
        let total = Duration::from_secs(self.settings.total_timeout_secs);
        match tokio::time::timeout(total, self.stream_to_storage(parsed)).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::transient(format!(
                "the download took longer than {} s (fetch.total_timeout_secs)",
                total.as_secs()
            ))),
        }
    }

    async fn stream_to_storage(&self, url: url::Url) -> Result<Downloaded, FetchError> {
        let started = Instant::now();
        let response = self.client.get(url).send().await.map_err(request_error)?;
        let status = response.status();
        if !status.is_success() {
            return Err(status_error(status, response.headers()));
        }
        let max = self.settings.max_bytes;
        let declared = response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(len) = declared.filter(|&len| len > max) {
            return Err(too_large(len, max));
        }
        let mut temp = self
            .storage
            .create_temp()
            .await
            .map_err(|e| FetchError::Storage(e.to_string()))?;
        let mut head: Vec<u8> = Vec::with_capacity(sniff::SNIFF_BYTES);
        let mut kind: Option<VideoKind> = None;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                FetchError::transient(format!(
                    "the connection broke after {} bytes: {}",
                    temp.size(),
                    netguard::describe(&e)
                ))
            })?;
            if temp.size() + chunk.len() as u64 > max {
                return Err(too_large(temp.size() + chunk.len() as u64, max));
            }
            if kind.is_none() {
                let take = (sniff::SNIFF_BYTES - head.len()).min(chunk.len());
                head.extend_from_slice(&chunk[..take]);
                if head.len() >= sniff::SNIFF_BYTES {
                    kind = Some(sniff_or_fail(&head)?);
                }
            }
            temp.write(&chunk)
                .await
                .map_err(|e| FetchError::Storage(e.to_string()))?;
        }
        let kind = match kind {
            Some(kind) => kind,
            None => sniff_or_fail(&head)?,
        };
        if let Some(len) = declared.filter(|&len| len != temp.size()) {
            return Err(FetchError::transient(format!(
                "the server announced {len} bytes but sent {}",
                temp.size()
            )));
        }
        let asset = temp
            .finish()
            .await
            .map_err(|e| FetchError::Storage(e.to_string()))?;
        tracing::debug!(bytes = asset.size, elapsed = ?started.elapsed(), "downloaded");
        Ok(Downloaded { asset, kind })
    }
}

fn sniff_or_fail(head: &[u8]) -> Result<VideoKind, FetchError> {
    sniff::detect(head)
        .map_err(|detected| FetchError::Permanent(format!("not a video (detected: {detected})")))
}

fn too_large(len: u64, max: u64) -> FetchError {
    FetchError::Permanent(format!(
        "the video is larger than the limit: {len} bytes, fetch.max_bytes is {max}"
    ))
}

fn status_error(status: StatusCode, headers: &reqwest::header::HeaderMap) -> FetchError {
    let text = format!(
        "the server answered {} {} for the video URL",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
    .replace("  ", " ");
    if status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
    {
        let retry_after = headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
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
    if let Some(refusal) = netguard::refusal_in(&error) {
        return FetchError::Permanent(refusal);
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
