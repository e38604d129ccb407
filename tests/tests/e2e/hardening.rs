//! The API against careless and hostile clients (issue #23, items 7 and 8): one address
//! cannot take every connection, requests the HTTP layer refuses are answered in the error
//! shape, and a batch's problems (every missing field, URLs without a host or with control
//! characters, charsets other than UTF-8, numbers that cannot be stored exactly) are all
//! reported at once, each under its field.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use video_import_tests::{Options, Stack};

/// A TCP connection to `to` from the loopback address `from` (all of 127.0.0.0/8 is
/// loopback on Linux, so each address is another client).
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::from(from), 0)).unwrap();
    socket.connect(to).await.unwrap()
}

fn api_address(stack: &Stack) -> SocketAddr {
    stack.api_url.trim_start_matches("http://").parse().unwrap()
}

/// Sends `request` on a new connection and reads the answer to its end: the status, the
/// headers (lower-cased) and the body.
async fn raw_exchange(address: SocketAddr, request: &[u8]) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(address).await.unwrap();
    // The API may answer and stop reading before everything is sent.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the API answers and closes the connection")
        .expect("the answer is read without a reset");
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP answer: {:?}", String::from_utf8_lossy(&answer)));
    let head = String::from_utf8_lossy(&answer[..end]).into_owned();
    let body = answer[end + 4..].to_vec();
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {head:?}"));
    (status, head.to_ascii_lowercase(), body)
}

/// The body must be the error shape with `status`, repeating the x-request-id header.
fn assert_error_shape(status: u16, head: &str, body: &[u8]) -> Value {
    let body: Value = serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("a JSON body: {head}\n{}", String::from_utf8_lossy(body)));
    assert_eq!(body["status"], status, "{body}");
    assert!(body["error"].is_string(), "{body}");
    assert!(body["error_details"].is_object(), "{body}");
    let id = body["request_id"].as_str().expect("a request id");
    assert!(
        head.contains(&format!("x-request-id: {}", id.to_ascii_lowercase())),
        "{head}"
    );
    assert!(head.contains("content-type: application/json"), "{head}");
    body
}

#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    let stack = Stack::start(Options::api_only(&[
        ("VIDEO_IMPORT__API__MAX_CONNECTIONS", "300"),
        ("VIDEO_IMPORT__API__MAX_CONNECTIONS_PER_CLIENT", "100"),
        ("VIDEO_IMPORT__API__HEADER_TIMEOUT_SECS", "20"),
    ]))
    .await;
    let address = api_address(&stack);
    // One client opens 1,000 connections and sends nothing on them.
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(connect_from([127, 0, 0, 3], address).await);
    }

    // Another client is answered at once (without the bound it waits in the backlog behind
    // the idle connections until the header timeout frees slots: 20 s and more).
    let other = reqwest::Client::builder()
        .local_address(IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let started = Instant::now();
    let healthz = tokio::time::timeout(
        Duration::from_secs(60),
        other.get(format!("{}/healthz", stack.api_url)).send(),
    )
    .await
    .expect("/healthz answers within a minute")
    .unwrap();
    let waited = started.elapsed();
    assert_eq!(healthz.status(), 200);
    assert!(
        waited < Duration::from_secs(5),
        "another client waited {waited:?} behind one client's idle connections"
    );

    // Of the one client's connections, 100 are served (idle until the header timeout);
    // the other 900 are answered 429 in the error shape and closed.
    let reads = idle.into_iter().map(|mut stream| async move {
        let mut answer = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        (stream, read.is_ok().then_some(answer))
    });
    let (open, answers): (Vec<_>, Vec<_>) = futures::future::join_all(reads)
        .await
        .into_iter()
        .partition(|(_, answer)| answer.is_none());
    assert_eq!(open.len(), 100, "connections kept open for the one client");
    let answers: Vec<Vec<u8>> = answers.into_iter().filter_map(|(_, a)| a).collect();
    assert_eq!(answers.len(), 900);
    for answer in answers {
        let text = String::from_utf8_lossy(&answer).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
        assert!(head.starts_with("HTTP/1.1 429 "), "{text}");
        let head = head.to_ascii_lowercase();
        assert!(head.contains("retry-after: 1"), "{head}");
        let body = assert_error_shape(429, &head, body.as_bytes());
        assert!(
            body["error_details"]["connections"]
                .as_str()
                .unwrap()
                .contains("api.max_connections_per_client"),
            "{body}"
        );
    }

    // A request of the one client over its bound gets the same answer through an ordinary
    // HTTP client.
    let same = reqwest::Client::builder()
        .local_address(IpAddr::from([127, 0, 0, 3]))
        .build()
        .unwrap();
    let refused = same
        .get(format!("{}/healthz", stack.api_url))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["status"], 429, "{body}");
    assert!(stack
        .log("api")
        .contains("api.max_connections_per_client reached"));
    drop(open);
    stack.finish().await;
}

#[tokio::test]
async fn requests_the_http_layer_refuses_get_the_error_shape() {
    let stack = Stack::start(Options::api_only(&[])).await;
    let address = api_address(&stack);

    // 2,000 headers.
    let mut many = b"GET /healthz HTTP/1.1\r\nHost: api\r\n".to_vec();
    for i in 0..2000 {
        many.extend_from_slice(format!("X-Header-{i}: {i}\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let (status, head, body) = raw_exchange(address, &many).await;
    assert_eq!(status, 431, "{head}");
    let body = assert_error_shape(431, &head, &body);
    assert_eq!(body["error"], "Request Header Fields Too Large");
    assert!(
        body["error_details"]["headers"]
            .as_str()
            .unwrap()
            .contains("at most 100 header fields"),
        "{body}"
    );

    // One header of 200 KB, which the API stops reading at 64 KiB.
    let mut large = b"GET /healthz HTTP/1.1\r\nHost: api\r\nX-Large: ".to_vec();
    large.extend(std::iter::repeat_n(b'a', 200_000));
    large.extend_from_slice(b"\r\n\r\n");
    let (status, head, body) = raw_exchange(address, &large).await;
    assert_eq!(status, 431, "{head}");
    assert_error_shape(431, &head, &body);

    // A header value with a control character: the header is named.
    let (status, head, body) = raw_exchange(
        address,
        b"GET /healthz HTTP/1.1\r\nHost: api\r\nX-Evil: a\x01b\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400, "{head}");
    let body = assert_error_shape(400, &head, &body);
    assert!(
        body["error_details"]["X-Evil"]
            .as_str()
            .unwrap()
            .contains("0x01"),
        "{body}"
    );

    // Garbage instead of a request line (a TLS hello to a plain-HTTP port, say).
    let (status, head, body) = raw_exchange(
        address,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400, "{head}");
    let body = assert_error_shape(400, &head, &body);
    assert!(
        body["error_details"].as_object().unwrap().len() == 1,
        "{body}"
    );

    // A request line that is no HTTP at all.
    let (status, head, body) = raw_exchange(address, b"HELLO THERE\r\n\r\n").await;
    assert_eq!(status, 400, "{head}");
    let body = assert_error_shape(400, &head, &body);
    assert!(body["error_details"]["request"].is_string(), "{body}");

    // The API still serves well-formed requests, with keep-alive.
    let (code, _) = stack.get(None, "/healthz").await;
    assert_eq!(code, 200);
    let (code, _) = stack.get(None, "/healthz").await;
    assert_eq!(code, 200);
    stack.finish().await;
}

fn video(url: &str, id: &str) -> Value {
    json!({"url": url, "id": id, "fileName": "f", "metadata": {"title": "t"}})
}

async fn post(stack: &Stack, token: &str, content_type: &str, body: &str) -> (u16, Value) {
    let response = stack
        .http
        .post(format!("{}/api/v1/import/videos", stack.api_url))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The offending fields of a 400.
fn details(body: &Value) -> serde_json::Map<String, Value> {
    body["error_details"]
        .as_object()
        .cloned()
        .unwrap_or_default()
}

const JSON: &str = "application/json";

/// A stack with only the API, and a token of a new project.
async fn api_with_token(handle: &str) -> (Stack, String) {
    let stack = Stack::start(Options::api_only(&[])).await;
    let project = stack.project(handle).await;
    (stack, project.token)
}

#[tokio::test]
async fn every_missing_field_of_a_video_is_reported_at_once() {
    let (stack, token) = api_with_token("missing").await;
    // A video without id, fileName and metadata names all three (and the other videos'
    // problems too).
    let body = json!({"systemName": "s", "videos": [
        {"url": "https://archive.example/a.mp4"},
        {"url": "https://archive.example/b.mp4", "id": 7, "fileName": "f", "metadata": []},
    ]});
    let (code, answer) = post(&stack, &token, JSON, &body.to_string()).await;
    assert_eq!(code, 400, "{answer}");
    let found = details(&answer);
    for (field, message) in [
        ("videos[0].id", "is required"),
        ("videos[0].fileName", "is required"),
        ("videos[0].metadata", "is required"),
        ("videos[1].id", "must be a string, not a number"),
        ("videos[1].metadata", "must be a JSON object, not an array"),
    ] {
        assert_eq!(found.get(field), Some(&json!(message)), "{field}: {answer}");
    }
    assert_eq!(found.len(), 5, "{answer}");
    assert!(stack.sql("SELECT 1 FROM jobs").await.is_empty());
    stack.finish().await;
}

#[tokio::test]
async fn urls_without_a_host_or_with_control_characters_are_refused() {
    let (stack, token) = api_with_token("urls").await;
    let body = json!({"systemName": "s", "webhook": "https:///hook", "videos": [
        video("http:///a.mp4", "a"),
        video("http:/b.mp4", "b"),
        video("https://archive.example/c\r\nX-Injected: 1.mp4", "c"),
        video("https://archive.example/d\t.mp4", "d"),
        video("https://archive.example/fine.mp4", "e"),
    ]});
    let (code, answer) = post(&stack, &token, JSON, &body.to_string()).await;
    assert_eq!(code, 400, "{answer}");
    let found = details(&answer);
    let message = |field: &str| {
        found
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    for field in ["webhook", "videos[0].url", "videos[1].url"] {
        assert!(
            message(field).contains("must name a host"),
            "{field}: {answer}"
        );
    }
    for field in ["videos[2].url", "videos[3].url"] {
        assert!(
            message(field).contains("control character"),
            "{field}: {answer}"
        );
    }
    assert_eq!(found.len(), 5, "{answer}");
    assert!(stack.sql("SELECT 1 FROM job_items").await.is_empty());
    stack.finish().await;
}

/// Names (`systemName`, `id`, `fileName`): limits count bytes, as the messages say, and a
/// control character (a line break, a tab, an escape) is refused, naming the character.
#[tokio::test]
async fn names_are_limited_in_bytes_and_hold_no_control_characters() {
    let (stack, token) = api_with_token("names").await;
    let url = "https://archive.example/v.mp4";
    let with = |id: &str, file_name: &str| json!({"url": url, "id": id, "fileName": file_name, "metadata": {}});
    let body = json!({"systemName": "日".repeat(67), "videos": [
        with("line\nbreak", "f"),
        with("b", "tab\there"),
        with("c", "\u{1b}[31mred"),
        with(&"é".repeat(513), "f"),
        with(&"é".repeat(512), &"日".repeat(341)),
    ]});
    let (code, answer) = post(&stack, &token, JSON, &body.to_string()).await;
    assert_eq!(code, 400, "{answer}");
    let found = details(&answer);
    let message = |field: &str| found[field].as_str().unwrap_or_default().to_string();
    assert_eq!(
        message("systemName"),
        "is 201 bytes long (UTF-8); at most 200 bytes are allowed: shorten it"
    );
    assert!(message("videos[0].id").contains("U+000A"), "{answer}");
    assert!(message("videos[1].fileName").contains("U+0009"), "{answer}");
    assert!(message("videos[2].fileName").contains("U+001B"), "{answer}");
    assert!(
        message("videos[3].id").contains("1026 bytes long"),
        "{answer}"
    );
    // 1024 bytes of two- and three-byte characters are within the limits.
    assert_eq!(found.len(), 5, "{answer}");
    let fine = json!({"systemName": "日".repeat(66), "videos": [with(&"é".repeat(512), &"日".repeat(341))]});
    let (code, answer) = post(&stack, &token, JSON, &fine.to_string()).await;
    assert_eq!(code, 200, "{answer}");
    stack.finish().await;
}

#[tokio::test]
async fn metadata_numbers_are_stored_exactly_or_refused() {
    let (stack, token) = api_with_token("numbers").await;
    // A number that would be stored rounded is refused, naming where it is.
    let body = r#"{"systemName": "s", "videos": [{"url": "https://archive.example/n.mp4",
        "id": "n", "fileName": "f", "metadata": {"title": "t", "ids": [1, 1180591620717411303424]}}]}"#;
    let (code, answer) = post(&stack, &token, JSON, body).await;
    assert_eq!(code, 400, "{answer}");
    let message = details(&answer)
        .get("videos[0].metadata.ids[1]")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    assert!(message.contains("1180591620717411303424"), "{answer}");
    assert!(message.contains("as a string"), "{answer}");
    assert!(stack.sql("SELECT 1 FROM job_items").await.is_empty());

    // Numbers that are kept exactly are accepted and stored as sent.
    let body = r#"{"systemName": "s", "videos": [{"url": "https://archive.example/ok.mp4",
        "id": "ok", "fileName": "f",
        "metadata": {"title": "t", "n": [18446744073709551615, -9223372036854775808, 1.5, 0.1, 2.5e-3]}}]}"#;
    let (code, answer) = post(&stack, &token, JSON, body).await;
    assert_eq!(code, 200, "{answer}");
    let rows = stack
        .sql("SELECT (metadata->'n')::text FROM job_items WHERE external_id = 'ok'")
        .await;
    let stored: String = rows[0].get(0);
    assert_eq!(
        stored,
        "[18446744073709551615, -9223372036854775808, 1.5, 0.1, 0.0025]"
    );
    stack.finish().await;
}

#[tokio::test]
async fn a_charset_other_than_utf8_is_415_in_the_error_shape() {
    let (stack, token) = api_with_token("charsets").await;
    let body = json!({"systemName": "s", "videos": [video("https://archive.example/u.mp4", "u")]})
        .to_string();
    for content_type in [
        "application/json; charset=utf-16",
        "application/json; charset=\"UTF-16LE\"",
        "application/json;charset=iso-8859-1",
    ] {
        let (code, answer) = post(&stack, &token, content_type, &body).await;
        assert_eq!(code, 415, "{content_type}: {answer}");
        assert!(answer["request_id"].is_string(), "{answer}");
        let message = answer["error_details"]["message"]
            .as_str()
            .unwrap_or_default();
        assert!(message.contains("UTF-8"), "{answer}");
    }
    assert!(stack.sql("SELECT 1 FROM jobs").await.is_empty());
    // UTF-8, spelled in any case, is read.
    for content_type in [
        "application/json; charset=UTF-8",
        "application/json; charset=utf-8",
    ] {
        let (code, answer) = post(
            &stack,
            &token,
            content_type,
            &body.replace("\"u\"", "\"v\""),
        )
        .await;
        assert_eq!(code, 200, "{content_type}: {answer}");
    }
    stack.finish().await;
}
