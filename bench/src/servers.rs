//! Local servers for the benchmarks: videos from memory (optionally after a delay), one large
//! file from disk, and webhook receivers that count (or never answer).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::Mutex;

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// Serves the same video bytes at every `/v/...` path, after `delay`.
pub async fn videos(bytes: Bytes, delay: Duration) -> String {
    let app = Router::new()
        .route("/v/{n}", get(video))
        .with_state((bytes, delay));
    serve(app).await
}

async fn video(State((bytes, delay)): State<(Bytes, Duration)>) -> Response {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    ([(header::CONTENT_TYPE, "video/mp4")], bytes).into_response()
}

/// Like [`videos`], but the first request for each path answers 503 (after the same
/// `delay`): every video is tried twice, its second try coming back on its own.
pub async fn videos_failing_once(bytes: Bytes, delay: Duration) -> String {
    let seen = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let app = Router::new()
        .route("/v/{n}", get(video_failing_once))
        .with_state((bytes, delay, seen));
    serve(app).await
}

/// Paths already asked for once.
type Seen = Arc<std::sync::Mutex<std::collections::HashSet<String>>>;

async fn video_failing_once(
    State((bytes, delay, seen)): State<(Bytes, Duration, Seen)>,
    axum::extract::Path(n): axum::extract::Path<String>,
) -> Response {
    tokio::time::sleep(delay).await;
    if seen.lock().expect("not poisoned").insert(n) {
        return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    ([(header::CONTENT_TYPE, "video/mp4")], bytes).into_response()
}

/// Requests being answered now and the most at once, for a video server.
#[derive(Default)]
pub struct Concurrency {
    now: AtomicU64,
    most: AtomicU64,
}

impl Concurrency {
    /// The most requests that were being answered at once.
    pub fn most(&self) -> u64 {
        self.most.load(Ordering::Relaxed)
    }
}

/// Like [`videos`], counting how many requests are answered at once.
pub async fn counted_videos(bytes: Bytes, delay: Duration) -> (String, Arc<Concurrency>) {
    let concurrency = Arc::new(Concurrency::default());
    let app = Router::new()
        .route("/v/{n}", get(counted_video))
        .with_state((bytes, delay, concurrency.clone()));
    (serve(app).await, concurrency)
}

async fn counted_video(
    State((bytes, delay, c)): State<(Bytes, Duration, Arc<Concurrency>)>,
) -> Response {
    let now = c.now.fetch_add(1, Ordering::Relaxed) + 1;
    c.most.fetch_max(now, Ordering::Relaxed);
    tokio::time::sleep(delay).await;
    c.now.fetch_sub(1, Ordering::Relaxed);
    ([(header::CONTENT_TYPE, "video/mp4")], bytes).into_response()
}

/// Serves one file from disk at `/large.mp4`, streamed.
pub async fn large_file(path: std::path::PathBuf) -> String {
    let app = Router::new()
        .route("/large.mp4", get(large))
        .with_state(Arc::new(path));
    serve(app).await
}

async fn large(State(path): State<Arc<std::path::PathBuf>>) -> Response {
    let file = tokio::fs::File::open(path.as_ref()).await.unwrap();
    let len = file.metadata().await.unwrap().len();
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
    Response::builder()
        .header(header::CONTENT_LENGTH, len)
        .header(header::CONTENT_TYPE, "video/mp4")
        .body(Body::from_stream(stream))
        .unwrap()
}

/// Counts webhook deliveries and remembers when the last arrived.
#[derive(Clone)]
pub struct Counter {
    pub url: String,
    count: Arc<AtomicU64>,
    last: Arc<Mutex<Option<Instant>>>,
}

/// How a bench receiver answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Answer {
    /// 204 at once.
    AtOnce,
    /// Never (after an hour).
    Never,
    /// 503 at once.
    Unavailable,
    /// 204 after this long.
    After(Duration),
}

impl Counter {
    /// A receiver answering 204 at once, or never (after an hour) when `hang`.
    pub async fn start(hang: bool) -> Counter {
        Self::answering(if hang { Answer::Never } else { Answer::AtOnce }).await
    }

    /// A receiver answering as `answer` says.
    pub async fn answering(answer: Answer) -> Counter {
        let count = Arc::new(AtomicU64::new(0));
        let last = Arc::new(Mutex::new(None));
        let state = (count.clone(), last.clone(), answer);
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(state);
        let url = format!("{}/hook", serve(app).await);
        Counter { url, count, last }
    }

    /// Deliveries received.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// When the last delivery arrived.
    pub async fn last(&self) -> Option<Instant> {
        *self.last.lock().await
    }

    /// Waits until `n` deliveries arrived (at most `limit`).
    pub async fn wait_for(&self, n: u64, limit: Duration) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + limit;
        while self.count() < n {
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {} of {n} webhooks arrived within {limit:?}",
                self.count()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(self.last().await.unwrap_or_else(Instant::now))
    }
}

type CounterState = (Arc<AtomicU64>, Arc<Mutex<Option<Instant>>>, Answer);

async fn receive(State((count, last, answer)): State<CounterState>, _body: Bytes) -> Response {
    match answer {
        Answer::AtOnce => {}
        Answer::Never => tokio::time::sleep(Duration::from_secs(3600)).await,
        Answer::Unavailable => {
            count.fetch_add(1, Ordering::Relaxed);
            return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        Answer::After(delay) => tokio::time::sleep(delay).await,
    }
    count.fetch_add(1, Ordering::Relaxed);
    *last.lock().await = Some(Instant::now());
    axum::http::StatusCode::NO_CONTENT.into_response()
}

/// Serves video `i` at `/s/{i}`: `sizes[i]` bytes, the real `head` (a small MP4) followed by
/// zeros, generated as they are sent so that the source side needs neither disk nor memory.
pub async fn sized_videos(head: Bytes, sizes: Arc<Vec<u64>>) -> String {
    let app = Router::new()
        .route("/s/{n}", get(sized_video))
        .with_state((head, sizes));
    serve(app).await
}

/// Bytes per generated chunk after the head.
const ZEROS: usize = 256 * 1024;

async fn sized_video(
    State((head, sizes)): State<(Bytes, Arc<Vec<u64>>)>,
    axum::extract::Path(n): axum::extract::Path<usize>,
) -> Response {
    let Some(&size) = sizes.get(n) else {
        return axum::http::StatusCode::NOT_FOUND.into_response();
    };
    let zeros = Bytes::from(vec![0u8; ZEROS]);
    let head_len = (head.len() as u64).min(size);
    let mut left = size - head_len;
    let mut chunks = vec![head.slice(..head_len as usize)];
    // Cheap clones of one zero buffer: the body costs no memory per request.
    while left > 0 {
        let n = left.min(ZEROS as u64) as usize;
        chunks.push(zeros.slice(..n));
        left -= n as u64;
    }
    let stream = futures::stream::iter(chunks.into_iter().map(Ok::<_, std::io::Error>));
    Response::builder()
        .header(header::CONTENT_LENGTH, size)
        .header(header::CONTENT_TYPE, "video/mp4")
        .body(Body::from_stream(stream))
        .unwrap()
}
