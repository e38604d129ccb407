//! Outgoing proxies: the SSRF-checked clients never use the environment's proxy variables,
//! use `fetch.proxy` and `webhook.proxy` when configured, and check the proxy's own address
//! like a target's. Everything here stays on 127.0.0.1: the test proxy forwards only to
//! 127.0.0.1 and answers anything else with 403 without connecting.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use video_import_tests::receiver::Receiver;
use video_import_tests::videos::VideoServer;
use video_import_tests::{batch, Options, Stack, NO_TEST_SERVERS};

/// A forward HTTP proxy on 127.0.0.1 that records every connection and request line.
struct RecordingProxy {
    /// `http://127.0.0.1:PORT`.
    url: String,
    seen: Arc<Mutex<Seen>>,
}

#[derive(Default)]
struct Seen {
    connections: usize,
    requests: Vec<String>,
}

impl RecordingProxy {
    async fn start() -> RecordingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Seen::default()));
        let recorder = seen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                recorder.lock().unwrap().connections += 1;
                tokio::spawn(serve(client, recorder.clone()));
            }
        });
        RecordingProxy { url, seen }
    }

    fn connections(&self) -> usize {
        self.seen.lock().unwrap().connections
    }

    fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().requests.clone()
    }
}

/// Serves one request of one connection: absolute-form requests to `http://127.0.0.1:PORT`
/// are forwarded (with `Connection: close`), anything else (CONNECT, other hosts) gets 403.
async fn serve(mut client: TcpStream, seen: Arc<Mutex<Seen>>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    seen.lock().unwrap().requests.push(request_line.clone());
    let mut parts = request_line.split(' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let Some(rest) = target.strip_prefix("http://127.0.0.1:") else {
        let _ = client
            .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await;
        return;
    };
    let (port, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let Ok(mut upstream) = TcpStream::connect(("127.0.0.1", port.parse().unwrap_or(0))).await
    else {
        let _ = client
            .write_all(
                b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            )
            .await;
        return;
    };
    let mut forwarded = format!(
        "{method} {} HTTP/1.1\r\n",
        if path.is_empty() { "/" } else { path }
    );
    let mut body_len = 0usize;
    for line in lines.filter(|l| !l.is_empty()) {
        let name = line
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if name == "content-length" {
            body_len = line[line.find(':').unwrap() + 1..]
                .trim()
                .parse()
                .unwrap_or(0);
        }
        if !matches!(
            name.as_str(),
            "connection" | "proxy-connection" | "keep-alive"
        ) {
            forwarded.push_str(line);
            forwarded.push_str("\r\n");
        }
    }
    forwarded.push_str("connection: close\r\n\r\n");
    let mut body = vec![0u8; body_len];
    if client.read_exact(&mut body).await.is_err() {
        return;
    }
    if upstream.write_all(forwarded.as_bytes()).await.is_err()
        || upstream.write_all(&body).await.is_err()
    {
        return;
    }
    // The upstream closes after its answer (connection: close), which ends the copy.
    let _ = tokio::io::copy(&mut upstream, &mut client).await;
    let _ = client.shutdown().await;
}

/// The environment variables reqwest would read by default, all pointing at `proxy`.
fn proxy_variables(proxy: &str) -> Vec<(String, String)> {
    ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"]
        .iter()
        .flat_map(|name| [name.to_string(), name.to_ascii_lowercase()])
        .map(|name| (name, proxy.to_string()))
        .collect()
}

#[tokio::test]
async fn proxy_variables_in_the_environment_do_not_bypass_the_guard() {
    let proxy = RecordingProxy::start().await;
    let videos = VideoServer::start().await;
    let receiver = Receiver::start(&[]).await;
    let mut env = proxy_variables(&proxy.url);
    env.extend([
        (
            "VIDEO_IMPORT__FETCH__ALLOWED_NETWORKS".to_string(),
            NO_TEST_SERVERS.to_string(),
        ),
        (
            "VIDEO_IMPORT__WEBHOOK__ALLOWED_NETWORKS".to_string(),
            NO_TEST_SERVERS.to_string(),
        ),
    ]);
    let stack = Stack::start(Options {
        env,
        ..Options::default()
    })
    .await;
    let project = stack.project("proxyenv").await;
    // Names, so that the API lets them in and the worker and notifier decide.
    let video = videos
        .url("/videos/sample.mp4")
        .replace("127.0.0.1", "localhost");
    let webhook = receiver.url.replace("127.0.0.1", "localhost");
    let job = stack
        .import(
            &project.token,
            &batch("archive")
                .webhook(&webhook)
                .video_with(video, "a", "a", json!({})),
        )
        .await;
    let status = stack.wait_finished(&project.token, &job, 30).await;
    let reason = status["videos"][0]["reason"].as_str().unwrap_or_default();
    assert_eq!(status["videos"][0]["state"], "failed", "{status}");
    assert!(
        reason.starts_with("refused to connect to localhost")
            && reason.contains("allowed_networks"),
        "{reason}"
    );
    let status = stack.wait_webhook(&project.token, &job, "failed").await;
    let error = status["webhook"]["lastError"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("refused to connect to localhost"),
        "{error}"
    );
    assert_eq!(
        proxy.connections(),
        0,
        "the proxy got requests: {:?}",
        proxy.requests()
    );
    assert_eq!(videos.hits("/videos/sample.mp4"), 0);
    assert!(receiver.received().is_empty());
    stack.finish().await;
}

#[tokio::test]
async fn a_configured_proxy_carries_the_requests_and_target_names_are_still_judged() {
    let proxy = RecordingProxy::start().await;
    let videos = VideoServer::start().await;
    let receiver = Receiver::start(&[]).await;
    // The harness admits 127.0.0.1/32, where the proxy runs, for fetches and webhooks.
    let stack = Stack::start(Options {
        env: vec![
            ("VIDEO_IMPORT__FETCH__PROXY".into(), proxy.url.clone()),
            ("VIDEO_IMPORT__WEBHOOK__PROXY".into(), proxy.url.clone()),
        ],
        ..Options::default()
    })
    .await;
    let project = stack.project("proxied").await;
    let video = videos.url("/videos/sample.mp4");
    let job = stack
        .import(
            &project.token,
            &batch("archive")
                .webhook(&receiver.url)
                .video_with(&video, "a", "a", json!({})),
        )
        .await;
    let status = stack.wait_webhook(&project.token, &job, "delivered").await;
    assert_eq!(status["videos"][0]["state"], "imported", "{status}");
    let requests = proxy.requests();
    assert!(
        requests.contains(&format!("GET {video} HTTP/1.1")),
        "{requests:?}"
    );
    assert!(
        requests.contains(&format!("POST {} HTTP/1.1", receiver.url)),
        "{requests:?}"
    );
    // The proxy would resolve these names in its own network: refused before asking it.
    let before = proxy.requests().len();
    let job = stack
        .import(
            &project.token,
            &batch("archive")
                .video_with(
                    "http://metadata.google.internal/computeMetadata/v1/",
                    "b",
                    "b",
                    json!({}),
                )
                .video_with("http://archive/a.mp4", "c", "c", json!({})),
        )
        .await;
    let status = stack.wait_finished(&project.token, &job, 30).await;
    for (video, domain) in status["videos"]
        .as_array()
        .unwrap()
        .iter()
        .zip([".internal", "single-label"])
    {
        assert_eq!(video["state"], "failed", "{status}");
        let reason = video["reason"].as_str().unwrap_or_default();
        assert!(
            reason.starts_with("refused to fetch from")
                && reason.contains(domain)
                && reason.contains("fetch.proxy"),
            "{reason}"
        );
    }
    assert_eq!(proxy.requests().len(), before, "{:?}", proxy.requests());
    stack.finish().await;
}

#[tokio::test]
async fn a_proxy_on_a_refused_address_stops_the_binaries_at_start() {
    let proxy = RecordingProxy::start().await;
    let stack = Stack::start(Options::api_only(&[])).await;
    let by_name = proxy.url.replace("127.0.0.1", "localhost");
    for (binary, section) in [
        ("video-import-worker", "FETCH"),
        ("video-import-notifier", "WEBHOOK"),
        ("video-import-api", "FETCH"),
    ] {
        for url in [&proxy.url, &by_name] {
            let key = format!("VIDEO_IMPORT__{section}__PROXY");
            let allowed = format!("VIDEO_IMPORT__{section}__ALLOWED_NETWORKS");
            let args: &[&str] = if binary == "video-import-api" {
                &["serve"]
            } else {
                &[]
            };
            let out = tokio::time::timeout(
                Duration::from_secs(30),
                stack.run_binary(
                    binary,
                    args,
                    &[
                        (key.as_str(), url.as_str()),
                        (allowed.as_str(), NO_TEST_SERVERS),
                    ],
                ),
            )
            .await
            .unwrap_or_else(|_| panic!("{binary} with {key}={url} did not stop"));
            let setting = format!("{}.proxy", section.to_ascii_lowercase());
            assert_eq!(
                out.status.code(),
                Some(2),
                "{binary} {key}={url}: {}",
                out.stderr
            );
            assert!(
                out.stderr.contains(&format!("{setting} = \"{url}/\""))
                    && out.stderr.contains(&format!(
                        "{}.allowed_networks",
                        section.to_ascii_lowercase()
                    )),
                "{binary} {key}={url}: {}",
                out.stderr
            );
        }
    }
    assert_eq!(proxy.connections(), 0, "{:?}", proxy.requests());
    stack.finish().await;
}
