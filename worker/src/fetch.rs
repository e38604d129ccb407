//! Downloading a video: SSRF-checked, streamed straight into storage, sniffed, bounded in size
//! and time, resumed with a Range request when the connection breaks, conditional when the
//! entry already has the source's validators, with quick retries (backon) for hiccups.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::Retryable;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::{GetOptions, GetRange, ObjectStore};
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT_RANGES, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, ETAG,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, LAST_MODIFIED, LOCATION, RANGE, RETRY_AFTER,
};
use reqwest::StatusCode;
use tokio_util::sync::CancellationToken;
use video_import_shared::config::FetchSettings;
use video_import_shared::ids;
use video_import_shared::netguard::{self, AddressPolicy, ClientOptions};
use video_import_shared::redact::{self, Show};
use video_import_shared::retry::parse_retry_after;
use video_import_shared::sources::{self as rules, Coverage};
use video_import_shared::store::entries::NewAsset;
use video_import_shared::store::{Checksum, Validators};

use crate::error::{FailureClass, FetchError};
use crate::hosts::SourceHosts;
use crate::probe::{self, TechMeta};
use crate::retry_policy::{self, RetryPolicy};
use crate::sniff::{self, VideoKind};
use crate::sources::{Access, Rule, SourceRules};
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
    /// Follows no redirect: [`Fetcher::send`] does, deciding at every hop what it carries.
    client: reqwest::Client,
    policy: AddressPolicy,
    /// The projects' source rules: credentials by URL prefix, `s3://` buckets.
    rules: SourceRules,
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
        pool: deadpool_postgres::Pool,
        keys: video_import_shared::secrets::Keyring,
    ) -> anyhow::Result<Self> {
        let policy =
            AddressPolicy::new(settings.allow_private_networks, &settings.allowed_networks)
                .via_proxy("fetch", settings.proxy.as_ref());
        let options = ClientOptions {
            connect_timeout: settings.connect_timeout,
            read_timeout: settings.read_timeout,
            max_redirects: settings.max_redirects,
            user_agent: concat!("video-import-worker/", env!("CARGO_PKG_VERSION")).into(),
        };
        let client = netguard::client_without_redirects(policy.clone(), &options)?;
        Ok(Self {
            client,
            rules: SourceRules::new(pool, keys, policy.clone(), options),
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
        let mut rules = self.rules.of(project_id).await?;
        if parsed.scheme() == "s3" && !matches!(rules::coverage(&rules, &parsed), Coverage::Rule(_))
        {
            // The API found a rule for it: one added moments ago is not cached yet.
            rules = self.rules.fresh(project_id, &rules).await?;
        }
        let started = Instant::now();
        let mut first = {
            let source = self.source(&parsed, &rules)?;
            self.open(&source, known).await?
        };
        if let First::NoCredentials(refused) = first {
            // A rule added moments ago may not have reached this worker's cache: read the
            // project's rules again, and ask once more only if one covers the URL now.
            let fresh = self.rules.fresh(project_id, &rules).await?;
            if !matches!(rules::coverage(&fresh, &parsed), Coverage::Rule(_)) {
                return Err(refused);
            }
            tracing::info!("a source rule newer than the cached ones covers the URL: asking again with its credentials");
            rules = fresh;
            let source = self.source(&parsed, &rules)?;
            first = self.open(&source, known).await?;
        }
        let source = self.source(&parsed, &rules)?;
        let opened = match first {
            First::Body(opened) => opened,
            First::Current => return Ok(Fetched::NotModified),
            First::NoCredentials(refused) => return Err(refused),
        };
        let max = self.settings.max_bytes;
        if let Some(len) = opened.declared.filter(|&len| len > max) {
            return Err(too_large(len, max));
        }
        let Opened {
            body,
            declared,
            validators,
            resumable,
        } = opened;
        let allowed = self.time_allowed(declared);
        let mut sink = Sink::new(&self.storage, project_id, max);
        let pumping = tokio::time::timeout(
            allowed,
            self.pump(&source, body, resumable.then_some(&validators), &mut sink),
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

    /// Where `url` is read from: an object of an `s3://` rule's bucket, or a web server
    /// (with the credentials of the rule that covers it, if any). A URL that no rule lets
    /// the worker read fails here, before anything is sent.
    fn source<'r>(&self, url: &url::Url, rules: &'r [Rule]) -> Result<Source<'r>, FetchError> {
        if url.scheme() == "s3" {
            let Some((bucket, key)) = rules::s3_object(url) else {
                return Err(FetchError::permanent(
                    FailureClass::InvalidUrl,
                    "an s3:// URL names a bucket and a key: s3://bucket/path/to/video.mp4",
                ));
            };
            let rule = match rules::coverage(rules, url) {
                Coverage::Rule(rule) => rule,
                _ => {
                    return Err(FetchError::permanent(
                        FailureClass::SourceRule,
                        rules::no_rule_for_s3(bucket, key),
                    ))
                }
            };
            if let Some(error) = rule.unusable() {
                return Err(error);
            }
            let Access::S3(store) = &*rule.access else {
                return Err(FetchError::permanent(
                    FailureClass::SourceRule,
                    format!("{} is not an s3:// rule", rule.name()),
                ));
            };
            let path = object_store::path::Path::from_url_path(key).map_err(|e| {
                FetchError::permanent(
                    FailureClass::InvalidUrl,
                    format!("the object key is not valid: {e}"),
                )
            })?;
            return Ok(Source::S3 {
                store: store.clone(),
                path,
                shown: format!("s3://{bucket}/{key}"),
            });
        }
        self.policy
            .check_url(url)
            .map_err(|r| FetchError::permanent(FailureClass::Refused, r.0))?;
        let rule = match rules::coverage(rules, url) {
            Coverage::Rule(rule) => Some(rule),
            // Sending the credentials in clear is refused; going without them would only be
            // refused by the server: the video fails, for good, saying which rule.
            Coverage::InClear(rule) => {
                return Err(FetchError::permanent(
                    FailureClass::SourceRule,
                    format!(
                        "{} sends its credentials over https only, and this URL is plain http; \
                         give the https:// URL, or add a rule for the http:// prefix with \
                         --allow-http if the network is trusted",
                        rule.name()
                    ),
                ))
            }
            Coverage::None => None,
        };
        Ok(Source::Http {
            url: url.clone(),
            rule,
            rules,
        })
    }

    /// The first response of `source`: its body and what it declared, or that the `known`
    /// version is current, or a refusal for want of credentials no rule gave.
    async fn open(
        &self,
        source: &Source<'_>,
        known: Option<&Validators>,
    ) -> Result<First, FetchError> {
        match source {
            Source::Http { url, rule, .. } => {
                let mut extra = HeaderMap::new();
                if let Some(known) = known {
                    if let Some(etag) = known.etag.as_deref().and_then(header_value) {
                        extra.insert(IF_NONE_MATCH, etag);
                    }
                    if let Some(modified) = known.last_modified.as_deref().and_then(header_value) {
                        extra.insert(IF_MODIFIED_SINCE, modified);
                    }
                }
                let response = self.send(source, extra).await?;
                let status = response.status();
                if status == StatusCode::NOT_MODIFIED && known.is_some() {
                    return Ok(First::Current);
                }
                let unauthenticated =
                    status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN;
                if unauthenticated && rule.is_none() {
                    return Ok(First::NoCredentials(status_error(
                        status,
                        response.headers(),
                    )));
                }
                if !status.is_success() {
                    return Err(status_error(status, response.headers()));
                }
                let headers = response.headers();
                let resumable = headers
                    .get(ACCEPT_RANGES)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"bytes"));
                tracing::debug!(url = %redact::url(url.as_str(), Show::ForLogs), "source answered");
                Ok(First::Body(Opened {
                    declared: content_length(headers),
                    validators: validators(headers),
                    resumable,
                    body: http_body(response),
                }))
            }
            Source::S3 { store, path, shown } => {
                let options = GetOptions {
                    if_none_match: known.and_then(|k| k.etag.clone()),
                    ..GetOptions::default()
                };
                let result = match store.get_opts(path, options).await {
                    Ok(result) => result,
                    Err(object_store::Error::NotModified { .. }) if known.is_some() => {
                        return Ok(First::Current)
                    }
                    Err(e) => return Err(object_error(e, shown)),
                };
                let validators = Validators {
                    etag: result.meta.e_tag.clone(),
                    last_modified: Some(
                        result
                            .meta
                            .last_modified
                            .format("%a, %d %b %Y %H:%M:%S GMT")
                            .to_string(),
                    ),
                };
                Ok(First::Body(Opened {
                    declared: Some(result.range.end - result.range.start),
                    resumable: validators.etag.is_some(),
                    validators,
                    body: object_body(result.into_stream()),
                }))
            }
        }
    }

    /// GETs an http source with `extra` headers, following redirects itself (each hop
    /// checked like the URL): every request carries the credentials of the rule that covers
    /// it, or of the video's rule while it stays on that rule's origin, and never plain
    /// http unless the rule allows it; `Authorization` never goes to a URL that
    /// authenticates itself (a presigned URL).
    async fn send(
        &self,
        source: &Source<'_>,
        extra: HeaderMap,
    ) -> Result<reqwest::Response, FetchError> {
        let Source::Http { url, rule, rules } = source else {
            unreachable!("only http sources are sent");
        };
        let mut hop = url.clone();
        let mut followed = 0;
        loop {
            let mut request = self.client.get(hop.clone()).headers(extra.clone());
            let credentials = match rules::coverage(rules, &hop) {
                Coverage::Rule(covering) => Some(covering),
                _ => *rule,
            }
            .filter(|r| rules::may_send(&r.prefix, r.allow_http, &hop));
            if let Some(rule) = credentials {
                if let Some(error) = rule.unusable() {
                    return Err(error);
                }
                if let Access::Http {
                    headers,
                    authorization,
                } = &*rule.access
                {
                    request = request.headers(headers.clone());
                    if let Some(value) = authorization
                        .clone()
                        .filter(|_| !rules::carries_own_auth(&hop))
                    {
                        request = request.header(AUTHORIZATION, value);
                    }
                }
            }
            let response = request.send().await.map_err(request_error)?;
            let status = response.status();
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .filter(|_| is_followed_redirect(status));
            let Some(location) = location else {
                return Ok(response);
            };
            if followed == self.settings.max_redirects {
                return Err(FetchError::permanent(
                    FailureClass::Redirect,
                    format!(
                        "redirects not followed: more than {} redirects",
                        self.settings.max_redirects
                    ),
                ));
            }
            let next = hop.join(location).map_err(|e| {
                FetchError::permanent(
                    FailureClass::Redirect,
                    format!("the server redirected to a URL that is not valid: {e}"),
                )
            })?;
            self.policy
                .check_url(&next)
                .map_err(|r| FetchError::permanent(FailureClass::Refused, r.0))?;
            tracing::debug!(to = %redact::url(next.as_str(), Show::ForLogs), "following a redirect");
            hop = next;
            followed += 1;
        }
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

    /// Streams the body into `sink`. When the connection breaks and the source accepts
    /// ranges (`resumable` holds its validators), it continues with a Range request.
    async fn pump(
        &self,
        source: &Source<'_>,
        mut body: Body,
        resumable: Option<&Validators>,
        sink: &mut Sink<'_>,
    ) -> Result<(), FetchError> {
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
            let broken = format!("the connection broke after {from} bytes: {broke}");
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
                match self.resume(source, from, validators).await {
                    Ok(body) => break body,
                    Err(Resume::Refused(status)) => {
                        return Err(FetchError::transient(FailureClass::ConnectionBroke, format!(
                            "{broken}; the server cannot resume it (answered {status} to a Range request)"
                        )))
                    }
                    Err(Resume::Failed(e)) => {
                        tracing::debug!(source = %source, error = %e, "resume request failed");
                    }
                }
            };
            tracing::info!(source = %source, from, "connection broke; resumed with a Range request");
        }
    }

    /// Asks for the rest of the file from byte `from`, of the same version only.
    async fn resume(
        &self,
        source: &Source<'_>,
        from: u64,
        validators: &Validators,
    ) -> Result<Body, Resume> {
        match source {
            Source::Http { .. } => {
                let mut extra = HeaderMap::new();
                extra.insert(
                    RANGE,
                    HeaderValue::from_str(&format!("bytes={from}-")).expect("a header value"),
                );
                if let Some(v) = validators
                    .etag
                    .as_ref()
                    .or(validators.last_modified.as_ref())
                    .and_then(|v| header_value(v))
                {
                    extra.insert(IF_RANGE, v);
                }
                let response = self
                    .send(source, extra)
                    .await
                    .map_err(|e| Resume::Failed(e.to_string()))?;
                let continues = response.status() == StatusCode::PARTIAL_CONTENT
                    && response
                        .headers()
                        .get(CONTENT_RANGE)
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.starts_with(&format!("bytes {from}-")));
                if continues {
                    Ok(http_body(response))
                } else {
                    Err(Resume::Refused(response.status().to_string()))
                }
            }
            Source::S3 { store, path, .. } => {
                let options = GetOptions {
                    range: Some(GetRange::Offset(from)),
                    if_match: validators.etag.clone(),
                    ..GetOptions::default()
                };
                match store.get_opts(path, options).await {
                    Ok(result) if result.range.start == from => {
                        Ok(object_body(result.into_stream()))
                    }
                    Ok(_) => Err(Resume::Refused("another range".into())),
                    Err(object_store::Error::Precondition { .. }) => Err(Resume::Refused(
                        "412 Precondition Failed (the object changed)".into(),
                    )),
                    Err(e) => Err(Resume::Failed(netguard::describe(&e))),
                }
            }
        }
    }
}

/// A body as chunks, a broken connection described (without the URL, which may carry a
/// signature).
type Body = BoxStream<'static, Result<Bytes, String>>;

fn http_body(response: reqwest::Response) -> Body {
    response
        .bytes_stream()
        .map(|chunk| chunk.map_err(|e| netguard::describe(&e.without_url())))
        .boxed()
}

fn object_body(stream: BoxStream<'static, object_store::Result<Bytes>>) -> Body {
    stream
        .map(|chunk| chunk.map_err(|e| netguard::describe(&e)))
        .boxed()
}

/// What a video is read from.
enum Source<'r> {
    /// A web server; `rule` covers the video's URL (its credentials go with it on its
    /// origin), `rules` are the project's (a redirect hop may be covered by another).
    Http {
        url: url::Url,
        rule: Option<&'r Rule>,
        rules: &'r [Rule],
    },
    /// An object of an `s3://` rule's bucket.
    S3 {
        store: Arc<object_store::aws::AmazonS3>,
        path: object_store::path::Path,
        /// `s3://bucket/key`, for messages.
        shown: String,
    },
}

impl std::fmt::Display for Source<'_> {
    /// As logs may show it: never a query (it may hold a signature).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Http { url, .. } => f.write_str(&redact::url(url.as_str(), Show::ForLogs)),
            Source::S3 { shown, .. } => f.write_str(shown),
        }
    }
}

/// What a source's first response said.
enum First {
    /// Here is the video.
    Body(Opened),
    /// The version the entry has is current (304).
    Current,
    /// 401 or 403 to a request that no rule gave credentials: a rule added moments ago may
    /// not have reached this worker yet.
    NoCredentials(FetchError),
}

/// The first response of a source.
struct Opened {
    body: Body,
    /// The body's length, when the source said.
    declared: Option<u64>,
    validators: Validators,
    /// Whether a broken transfer can continue with a Range request.
    resumable: bool,
}

/// A validator as a header value; `None` for text no header may carry.
fn header_value(text: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(text).ok()
}

/// Redirect statuses that are followed (with a `Location`); other 3xx are answers.
fn is_followed_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// An `object_store` error of reading `shown` as a video's reason.
fn object_error(error: object_store::Error, shown: &str) -> FetchError {
    match &error {
        object_store::Error::NotFound { .. } => FetchError::permanent(
            FailureClass::Http4xx,
            format!("the object {shown} does not exist (404 Not Found)"),
        ),
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
            FetchError::permanent(
                FailureClass::Http4xx,
                format!(
                    "the bucket refused to give {shown} to the source rule's keys ({}); check the rule's access key",
                    netguard::describe(&error)
                ),
            )
        }
        _ => {
            if let Some(refusal) = netguard::refusal_in(&error) {
                return FetchError::permanent(FailureClass::Refused, refusal);
            }
            if let Some(missing) = netguard::host_not_found_in(&error) {
                return FetchError::HostNotFound(missing.to_string());
            }
            FetchError::transient(
                FailureClass::Unreachable,
                format!("cannot read {shown}: {}", netguard::describe(&error)),
            )
        }
    }
}

/// Why a resume request did not continue the download.
enum Resume {
    /// The server answered, but not with the rest of the same file.
    Refused(String),
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

    async fn write(&mut self, chunk: &Bytes) -> Result<(), FetchError> {
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
        let head = Bytes::from(std::mem::take(&mut self.head));
        upload.write(&head).await.map_err(storage_error)?;
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
