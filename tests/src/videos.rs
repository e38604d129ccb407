//! A local HTTP server with real small videos and files that misbehave on purpose.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
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

#[derive(Clone, Default)]
struct Counters(Arc<Mutex<HashMap<String, u32>>>);

/// Serves:
/// - `/videos/{name}`: the fixture `name`;
/// - `/flaky/{n}/{name}`: 503 for the first `n` requests of that path, then the fixture;
/// - `/missing.mp4`: 404.
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

    /// How often `path` was requested.
    pub fn hits(&self, path: &str) -> u32 {
        *self.counters.0.lock().unwrap().get(path).unwrap_or(&0)
    }
}

fn serve_fixture(name: &str) -> Response {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    match std::fs::read(path) {
        Ok(bytes) => {
            let kind = if name.ends_with(".html") {
                "text/html"
            } else {
                // Deliberately generic: the worker must sniff, not trust this.
                "application/octet-stream"
            };
            ([(header::CONTENT_TYPE, kind)], bytes).into_response()
        }
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn video(State(c): State<Counters>, Path(name): Path<String>) -> Response {
    *c.0.lock()
        .unwrap()
        .entry(format!("/videos/{name}"))
        .or_default() += 1;
    serve_fixture(&name)
}

async fn flaky(State(c): State<Counters>, Path((n, name)): Path<(u32, String)>) -> Response {
    let seen = {
        let mut map = c.0.lock().unwrap();
        let count = map.entry(format!("/flaky/{n}/{name}")).or_default();
        *count += 1;
        *count
    };
    if seen <= n {
        (StatusCode::SERVICE_UNAVAILABLE, "try later").into_response()
    } else {
        serve_fixture(&name)
    }
}
