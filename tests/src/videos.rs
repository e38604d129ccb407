//! A local HTTP server with real small videos and sources that misbehave on purpose.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// Bytes of a fixture in `tests/fixtures`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// Hex SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// Request counters by label.
#[derive(Clone, Default)]
struct Counters(Arc<Mutex<HashMap<String, u32>>>, Arc<InFlight>);

/// Bodies being sent by `/slow` now, the most at once, and when each request came.
#[derive(Default)]
struct InFlight {
    now: std::sync::atomic::AtomicUsize,
    max: std::sync::atomic::AtomicUsize,
    arrivals: Mutex<Vec<std::time::Instant>>,
}

/// Counts a body as in flight until it is dropped.
struct Sending(Arc<InFlight>);

impl Sending {
    fn start(in_flight: &Arc<InFlight>) -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        let now = in_flight.now.fetch_add(1, SeqCst) + 1;
        in_flight.max.fetch_max(now, SeqCst);
        Sending(in_flight.clone())
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Counters {
    fn bump(&self, label: impl Into<String>) -> u32 {
        let mut map = self.0.lock().unwrap();
        let count = map.entry(label.into()).or_default();
        *count += 1;
        *count
    }
}

/// Serves, for a fixture `name`:
/// - `/videos/{name}`: the file (a missing name is a 404);
/// - `/flaky/{n}/{name}`: 503 for the first `n` requests, then the file;
/// - `/drop/{name}`: the first response breaks off halfway; Range requests are honoured;
/// - `/drop-norange/{name}`: the first response breaks off halfway; Range is ignored;
/// - `/slow/{ms}/{name}`: the file in 1 KiB pieces, `ms` milliseconds apart (counted while
///   in flight, see [`VideoServer::max_in_flight`]); each full URL is counted too, and again
///   as `URL complete` once its last piece was handed over (see [`VideoServer::counts`]);
/// - `/busy/{secs}/{name}`: the first request gets 429 with `Retry-After: secs`, later ones
///   the file after 300 ms (each request's arrival is noted, see [`VideoServer::arrivals`]);
/// - `/stall/{name}`: half the file, then nothing for a minute;
/// - `/padded/{n}/{name}`: the file followed by `n` zero bytes, with Content-Length;
/// - `/padded-chunked/{n}/{name}`: the same without Content-Length;
/// - `/etag/{name}`: the file with an ETag; `If-None-Match` gets a 304;
/// - `/redirect/{n}/{name}`: `n` redirects, then the file;
/// - `/presigned/{name}?X-Amz-Signature=…`: like a presigned object-store URL, the file only
///   for a GET that carries the signature and no `Authorization` (403 for `HEAD`);
/// - `/to?location=URL`: a redirect to any URL.
pub struct VideoServer {
    pub base: String,
    counters: Counters,
}

impl VideoServer {
    /// Starts on a free port of 127.0.0.1.
    pub async fn start() -> VideoServer {
        let counters = Counters::default();
        let app = Router::new()
            .route("/videos/{name}", get(video))
            .route("/flaky/{n}/{name}", get(flaky))
            .route("/drop/{name}", get(drop_resumable))
            .route("/drop-norange/{name}", get(drop_norange))
            .route("/slow/{ms}/{name}", get(slow))
            .route("/busy/{secs}/{name}", get(busy))
            .route("/stall/{name}", get(stall))
            .route("/padded/{n}/{name}", get(padded))
            .route("/padded-chunked/{n}/{name}", get(padded_chunked))
            .route("/etag/{name}", get(etag))
            .route("/redirect/{n}/{name}", get(redirect))
            .route(
                "/presigned/{name}",
                axum::routing::on(
                    axum::routing::MethodFilter::GET.or(axum::routing::MethodFilter::HEAD),
                    presigned,
                ),
            )
            .route("/to", get(to))
            .with_state(counters.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        VideoServer { base, counters }
    }

    /// Full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The most `/slow` bodies that were being sent at once.
    pub fn max_in_flight(&self) -> usize {
        self.counters
            .1
            .max
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// When each `/busy` request arrived.
    pub fn arrivals(&self) -> Vec<std::time::Instant> {
        self.counters.1.arrivals.lock().unwrap().clone()
    }

    /// Every counter: label and count.
    pub fn counts(&self) -> HashMap<String, u32> {
        self.counters.0.lock().unwrap().clone()
    }

    /// How often `label` was counted (a path, or a path and what happened, e.g. `… range`).
    pub fn hits(&self, label: &str) -> u32 {
        *self.counters.0.lock().unwrap().get(label).unwrap_or(&0)
    }
}

fn read_fixture(name: &str) -> Option<Vec<u8>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    std::fs::read(path).ok()
}

fn content_type(name: &str) -> &'static str {
    if name.ends_with(".html") {
        "text/html"
    } else {
        // Deliberately generic: the worker must sniff, not trust this.
        "application/octet-stream"
    }
}

fn serve_fixture(name: &str) -> Response {
    match read_fixture(name) {
        Some(bytes) => ([(header::CONTENT_TYPE, content_type(name))], bytes).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// A body that sends `first` and then breaks the connection.
fn broken_body(first: Vec<u8>) -> Body {
    let stream = futures::stream::iter([Some(Bytes::from(first)), None]).then(|item| async move {
        match item {
            Some(bytes) => Ok(bytes),
            None => {
                // Let the first part reach the client before the connection goes.
                tokio::time::sleep(Duration::from_millis(200)).await;
                Err(std::io::Error::other("connection dropped on purpose"))
            }
        }
    });
    Body::from_stream(stream)
}

fn futures_stream(
    items: Vec<Result<Bytes, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::iter(items)
}

async fn video(State(c): State<Counters>, Path(name): Path<String>) -> Response {
    c.bump(format!("/videos/{name}"));
    serve_fixture(&name)
}

async fn flaky(State(c): State<Counters>, Path((n, name)): Path<(u32, String)>) -> Response {
    if c.bump(format!("/flaky/{n}/{name}")) <= n {
        (StatusCode::SERVICE_UNAVAILABLE, "try later").into_response()
    } else {
        serve_fixture(&name)
    }
}

/// Answers a `Range: bytes=N-` request with 206, if there is one.
fn range_response(headers: &HeaderMap, bytes: &[u8]) -> Option<Response> {
    let range = headers.get(header::RANGE)?.to_str().ok()?;
    let from: usize = range
        .strip_prefix("bytes=")?
        .strip_suffix('-')?
        .parse()
        .ok()?;
    let len = bytes.len();
    Some(
        (
            StatusCode::PARTIAL_CONTENT,
            [
                (
                    header::CONTENT_RANGE,
                    format!("bytes {from}-{}/{len}", len - 1),
                ),
                (header::ETAG, "\"v1\"".to_string()),
            ],
            bytes[from..].to_vec(),
        )
            .into_response(),
    )
}

async fn drop_resumable(
    State(c): State<Counters>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(bytes) = read_fixture(&name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let label = format!("/drop/{name}");
    if let Some(partial) = range_response(&headers, &bytes) {
        c.bump(format!("{label} range"));
        return partial;
    }
    c.bump(&label);
    let half = bytes[..bytes.len() / 2].to_vec();
    Response::builder()
        .header(header::CONTENT_LENGTH, bytes.len())
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, "\"v1\"")
        .body(broken_body(half))
        .unwrap()
}

async fn drop_norange(State(c): State<Counters>, Path(name): Path<String>) -> Response {
    let Some(bytes) = read_fixture(&name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if c.bump(format!("/drop-norange/{name}")) > 1 {
        return bytes.into_response();
    }
    let half = bytes[..bytes.len() / 2].to_vec();
    Response::builder()
        .header(header::CONTENT_LENGTH, bytes.len())
        .body(broken_body(half))
        .unwrap()
}

async fn slow(
    State(c): State<Counters>,
    Path((ms, name)): Path<(u64, String)>,
    uri: Uri,
) -> Response {
    let Some(bytes) = read_fixture(&name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    c.bump(format!("/slow/{ms}/{name}"));
    c.bump(uri.to_string());
    let sending = Sending::start(&c.1);
    let len = bytes.len();
    let chunks: Vec<Bytes> = bytes.chunks(1024).map(Bytes::copy_from_slice).collect();
    let last = chunks.len() - 1;
    let complete = format!("{uri} complete");
    let pieces = futures::stream::iter(chunks.into_iter().enumerate());
    let stream = futures::StreamExt::then(pieces, move |(n, chunk)| {
        let (c, complete) = (c.clone(), complete.clone());
        async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            // The last piece is handed over: the client was still reading at the end.
            if n == last {
                c.bump(complete);
            }
            Ok::<_, std::io::Error>(chunk)
        }
    });
    let stream = futures::StreamExt::map(stream, move |chunk| {
        let _ = &sending;
        chunk
    });
    Response::builder()
        .header(header::CONTENT_LENGTH, len)
        .body(Body::from_stream(stream))
        .unwrap()
}

async fn busy(State(c): State<Counters>, Path((secs, name)): Path<(u64, String)>) -> Response {
    let Some(bytes) = read_fixture(&name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    c.1.arrivals.lock().unwrap().push(std::time::Instant::now());
    if c.bump(format!("/busy/{secs}/{name}")) == 1 {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, secs.to_string())],
        )
            .into_response();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    bytes.into_response()
}

async fn stall(State(c): State<Counters>, Path(name): Path<String>) -> Response {
    let Some(bytes) = read_fixture(&name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    c.bump(format!("/stall/{name}"));
    let len = bytes.len();
    let half = Bytes::from(bytes[..len / 2].to_vec());
    let stream = futures::stream::iter(vec![0, 1]).then(move |i| {
        let half = half.clone();
        async move {
            if i == 1 {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            Ok::<_, std::io::Error>(half)
        }
    });
    Response::builder()
        .header(header::CONTENT_LENGTH, len)
        .body(Body::from_stream(stream))
        .unwrap()
}

use futures::StreamExt;

async fn padded(Path((n, name)): Path<(usize, String)>) -> Response {
    let Some(mut bytes) = read_fixture(&name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    bytes.resize(bytes.len() + n, 0);
    bytes.into_response()
}

async fn padded_chunked(Path((n, name)): Path<(usize, String)>) -> Response {
    let Some(bytes) = read_fixture(&name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut chunks = vec![Ok(Bytes::from(bytes))];
    for _ in 0..n.div_ceil(4096) {
        chunks.push(Ok(Bytes::from(vec![0u8; 4096])));
    }
    Body::from_stream(futures_stream(chunks)).into_response()
}

async fn etag(State(c): State<Counters>, Path(name): Path<String>, headers: HeaderMap) -> Response {
    let Some(bytes) = read_fixture(&name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let tag = format!("\"{}\"", &sha256(&bytes)[..16]);
    let label = format!("/etag/{name}");
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some(tag.as_str())
    {
        c.bump(format!("{label} 304"));
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, tag)]).into_response();
    }
    c.bump(format!("{label} 200"));
    ([(header::ETAG, tag)], bytes).into_response()
}

async fn presigned(
    State(c): State<Counters>,
    method: axum::http::Method,
    Path(name): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let signed = uri
        .query()
        .is_some_and(|q| q.split('&').any(|p| p.starts_with("X-Amz-Signature=")));
    if method == axum::http::Method::HEAD {
        c.bump(format!("/presigned/{name} HEAD"));
        return StatusCode::FORBIDDEN.into_response();
    }
    if headers.contains_key(header::AUTHORIZATION) || !signed {
        c.bump(format!("/presigned/{name} refused"));
        return StatusCode::FORBIDDEN.into_response();
    }
    c.bump(format!("/presigned/{name}"));
    serve_fixture(&name)
}

async fn redirect(State(c): State<Counters>, Path((n, name)): Path<(u32, String)>) -> Response {
    c.bump(format!("/redirect/{n}/{name}"));
    if n == 0 {
        return serve_fixture(&name);
    }
    (
        StatusCode::FOUND,
        [(header::LOCATION, format!("/redirect/{}/{name}", n - 1))],
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct To {
    location: String,
}

async fn to(axum::extract::Query(to): axum::extract::Query<To>) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, to.location)]).into_response()
}
