//! Source rules (#22 items 1 and 2): credentials per URL prefix, sent only where they
//! belong, encrypted at rest and never shown; `s3://` sources read through a rule; the key
//! rotated.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine;
use serde_json::{json, Value};
use video_import_shared::secrets::SecretKey;
use video_import_tests::services::OwnS3;
use video_import_tests::videos::{fixture, sha256};
use video_import_tests::{batch, stored_bytes, Options, Stack};

/// The secrets of the tests: none may ever show outside the worker's requests.
const HEADER_VALUE: &str = "k3y-VALUE-1f9a";
const USER: &str = "archivist";
const PASSWORD: &str = "pa55-VALUE-2c7e";
const OTHER_HEADER_VALUE: &str = "other-VALUE-3b1d";
const S3_SECRET: &str = "s3-SECRET-VALUE-4e8f";

/// How long a worker uses a project's rules before it reads them again (the worker's
/// `sources::CACHE_FOR`; README "Sources").
const RULES_CACHED_FOR: Duration = Duration::from_secs(10);

/// What each request of an [`Archive`] carried: its path and query, and its headers.
type Seen = Arc<Mutex<Vec<(String, HeaderMap)>>>;

/// A local archive server that records every request it gets:
/// - `/keyed/{name}`: the fixture, only with `X-Archive-Key: HEADER_VALUE` (401 without);
/// - `/keyed/drop/{name}`: the same, but the first response breaks off halfway; a Range
///   request (with the header too) gets the rest;
/// - `/keyed/away?to=URL`: with the header, a redirect to URL;
/// - `/basic/{name}`: the fixture, only with basic auth `USER:PASSWORD`;
/// - `/basic/presigned/{name}?X-Amz-Signature=…`: the fixture, only WITHOUT `Authorization`;
/// - `/open/{name}`: the fixture, for anyone;
/// - `/flaky/…/{name}`: an S3 GET of bucket `flaky` (path style), only when signed with the
///   access key id `AKIAFLAKY`; the first answer breaks off halfway, a ranged GET with the
///   object's ETag in `If-Match` gets the rest.
struct Archive {
    base: String,
    seen: Seen,
}

impl Archive {
    async fn start() -> Archive {
        let seen = Seen::default();
        let app = Router::new().fallback(serve).with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Archive { base, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The requests whose path and query start with `path`, with their headers.
    fn requests(&self, path: &str) -> Vec<HeaderMap> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p.starts_with(path))
            .map(|(_, h)| h.clone())
            .collect()
    }

    /// Whether any request this server got carried a credential of the tests.
    fn saw_any_credential(&self) -> bool {
        self.seen.lock().unwrap().iter().any(|(_, headers)| {
            headers.contains_key(header::AUTHORIZATION) || headers.contains_key("x-archive-key")
        })
    }
}

fn basic_value() -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    format!("Basic {encoded}")
}

async fn serve(State(seen): State<Seen>, uri: Uri, headers: HeaderMap) -> Response {
    seen.lock()
        .unwrap()
        .push((uri.to_string(), headers.clone()));
    let text = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let keyed = text(header::HeaderName::from_static("x-archive-key")) == HEADER_VALUE;
    let basic = text(header::AUTHORIZATION) == basic_value();
    let path = uri.path();
    if let Some(rest) = path.strip_prefix("/keyed/") {
        if !keyed {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        if rest == "away" {
            let to = uri
                .query()
                .and_then(|q| q.strip_prefix("to="))
                .unwrap_or_default()
                .to_string();
            return (StatusCode::FOUND, [(header::LOCATION, to)]).into_response();
        }
        if let Some(name) = rest.strip_prefix("drop/") {
            return dropping(name, &headers);
        }
        return file(rest);
    }
    if let Some(rest) = path.strip_prefix("/basic/") {
        if let Some(name) = rest.strip_prefix("presigned/") {
            let signed = uri.query().is_some_and(|q| q.contains("X-Amz-Signature="));
            if headers.contains_key(header::AUTHORIZATION) || !signed {
                return StatusCode::FORBIDDEN.into_response();
            }
            return file(name);
        }
        if !basic {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        return file(rest);
    }
    if let Some(key) = path.strip_prefix("/flaky/") {
        if !text(header::AUTHORIZATION).contains("Credential=AKIAFLAKY/") {
            return StatusCode::FORBIDDEN.into_response();
        }
        return dropping(key.rsplit('/').next().unwrap_or_default(), &headers);
    }
    match path.strip_prefix("/open/") {
        Some(name) => file(name),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

fn file(name: &str) -> Response {
    fixture(name).into_response()
}

/// Half the file, then a broken connection; a `Range: bytes=N-` request gets the rest (of
/// the same version: an `If-Match` other than its ETag gets 412).
fn dropping(name: &str, headers: &HeaderMap) -> Response {
    let bytes = fixture(name);
    let len = bytes.len();
    let modified = "Wed, 01 Jan 2025 00:00:00 GMT";
    if headers
        .get(header::IF_MATCH)
        .is_some_and(|v| v.as_bytes() != b"\"v1\"")
    {
        return StatusCode::PRECONDITION_FAILED.into_response();
    }
    if let Some(from) = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|r| {
            r.strip_prefix("bytes=")?
                .strip_suffix('-')?
                .parse::<usize>()
                .ok()
        })
    {
        return (
            StatusCode::PARTIAL_CONTENT,
            [
                (
                    header::CONTENT_RANGE,
                    format!("bytes {from}-{}/{len}", len - 1),
                ),
                (header::ETAG, "\"v1\"".into()),
                (header::LAST_MODIFIED, modified.into()),
            ],
            bytes[from..].to_vec(),
        )
            .into_response();
    }
    let half = Bytes::from(bytes[..len / 2].to_vec());
    let stream = futures::stream::iter([Some(half), None]).then(|part| async move {
        match part {
            Some(bytes) => Ok(bytes),
            None => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Err(std::io::Error::other("connection dropped on purpose"))
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_LENGTH, len)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, "\"v1\"")
        .header(header::LAST_MODIFIED, modified)
        .body(Body::from_stream(stream))
        .unwrap()
}

use futures::StreamExt;

fn options(env: &[(&str, &str)]) -> Options {
    Options::with_env(env)
}

/// Runs `source add ARGS` for `project`; its JSON on success.
async fn add(stack: &Stack, project: &str, args: &[&str]) -> Value {
    let mut all = vec!["source", "add", "--project", project];
    all.extend_from_slice(args);
    let out = stack.api_cli(&all).await;
    assert!(out.status.success(), "source add {args:?}: {}", out.stderr);
    serde_json::from_str(&out.stdout).expect("source add prints JSON")
}

/// Every log line the stack's processes wrote.
fn all_logs(stack: &Stack) -> String {
    let mut logs = String::new();
    for file in std::fs::read_dir(&stack.dir).unwrap() {
        let path = file.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            logs.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
    logs
}

/// The bytes of table `table` as PostgreSQL keeps them on disk (after a checkpoint), and
/// every row as text: where a secret stored in clear would show.
async fn table_bytes(stack: &Stack, table: &str) -> (Vec<u8>, String) {
    stack.sql("CHECKPOINT").await;
    let rows = stack
        .sql(&format!(
            "SELECT current_setting('data_directory') || '/' || pg_relation_filepath('{table}')"
        ))
        .await;
    let path: String = rows[0].get(0);
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("reading {table}'s file {path} (the tests run as root): {e}"));
    let text: Vec<String> = stack
        .sql(&format!("SELECT t::text FROM {table} t"))
        .await
        .iter()
        .map(|r| r.get(0))
        .collect();
    (bytes, text.join("\n"))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A header rule and a basic-auth rule: their credentials reach their origin (first
/// request, same-origin redirect, Range resume), never another origin nor a presigned URL;
/// an https-only rule refuses a plain-http URL at the door; no secret shows in any log
/// (at debug), in `source list`, or in clear in the database.
#[tokio::test]
async fn header_and_basic_rules_send_credentials_to_their_origin_only_and_never_show() {
    let key = SecretKey::generate();
    let stack = Stack::start(options(&[
        ("VIDEO_IMPORT__SECRETS__KEY", &key.to_base64()),
        ("VIDEO_IMPORT__LOG__FILTER", "debug"),
    ]))
    .await;
    let archive = Archive::start().await;
    let elsewhere = Archive::start().await;
    let project = stack.project("sources").await;
    let keyed = add(
        &stack,
        "sources",
        &[
            "--prefix",
            &archive.url("/keyed/"),
            "--header",
            &format!("X-Archive-Key: {HEADER_VALUE}"),
            "--allow-http",
        ],
    )
    .await;
    assert_eq!(keyed["headers"], json!(["X-Archive-Key"]), "{keyed}");
    assert_eq!(keyed["keyId"], key.id());
    // Its secret from standard input, out of sight of `ps` and shell histories.
    let basic = stack
        .api_cli_with_input(
            &[
                "source",
                "add",
                "--project",
                "sources",
                "--prefix",
                &archive.url("/basic/"),
                "--allow-http",
                "--secrets-from-stdin",
            ],
            &json!({"basic": format!("{USER}:{PASSWORD}")}).to_string(),
        )
        .await;
    assert!(basic.status.success(), "{}", basic.stderr);
    let basic: Value = serde_json::from_str(&basic.stdout).unwrap();
    assert_eq!(basic["basicAuth"], true, "{basic}");
    add(
        &stack,
        "sources",
        &[
            "--prefix",
            "HTTPS://Archive.Example:443/masters/",
            "--header",
            &format!("Authorization: Bearer {OTHER_HEADER_VALUE}"),
        ],
    )
    .await;
    // Credentials in clear over http need --allow-http; a prefix is added once.
    let refused = stack
        .api_cli(&[
            "source",
            "add",
            "--project",
            "sources",
            "--prefix",
            &archive.url("/x/"),
            "--header",
            "X-Key: v",
        ])
        .await;
    assert!(!refused.status.success());
    assert!(
        refused.stderr.contains("--allow-http"),
        "{}",
        refused.stderr
    );
    // ... and means nothing for an https:// prefix: refused, naming the flag.
    let meaningless = stack
        .api_cli(&[
            "source",
            "add",
            "--project",
            "sources",
            "--prefix",
            "https://cdn.archive.example/",
            "--header",
            "X-Key: v",
            "--allow-http",
        ])
        .await;
    assert!(!meaningless.status.success());
    assert!(
        meaningless
            .stderr
            .contains("--allow-http is for http:// prefixes"),
        "{}",
        meaningless.stderr
    );
    let twice = stack
        .api_cli(&[
            "source",
            "add",
            "--project",
            "sources",
            "--prefix",
            &archive.url("/basic/"),
            "--basic",
            "a:b",
            "--allow-http",
        ])
        .await;
    assert!(!twice.status.success());
    assert!(twice.stderr.contains("--replace"), "{}", twice.stderr);

    let presigned =
        "/basic/presigned/sample.mp4?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=5ig";
    let body = batch("archive")
        .video(archive.url("/keyed/sample.mp4"), "keyed")
        .video(archive.url("/basic/sample.webm"), "basic")
        .video(archive.url("/keyed/drop/sample.webm"), "resumed")
        .video(
            archive.url(&format!(
                "/keyed/away?to={}",
                elsewhere.url("/open/sample.mp4")
            )),
            "cross-origin",
        )
        .video(
            archive.url(&format!(
                "/keyed/away?to={}",
                archive.url("/open/other.mp4")
            )),
            "same-origin",
        )
        .video(archive.url(presigned), "presigned");
    let job = stack.import(&project.token, &body).await;
    let status = stack.wait_finished(&project.token, &job, 60).await;
    // The worker read the project's rules for the last time before the job finished.
    let rules_read_by = Instant::now();
    assert_eq!(status["overview"]["imported"], 6, "{status}");

    // The server saw the credentials on every request to its rule's prefixes and origin.
    for path in [
        "/keyed/sample.mp4",
        "/keyed/drop/sample.webm",
        "/open/other.mp4",
    ] {
        let requests = archive.requests(path);
        assert!(!requests.is_empty(), "{path} was requested");
        for headers in &requests {
            assert_eq!(headers["x-archive-key"], HEADER_VALUE, "{path}");
        }
    }
    let resumed = archive.requests("/keyed/drop/sample.webm");
    assert_eq!(resumed.len(), 2, "one request and one Range request");
    assert!(resumed[1].contains_key(header::RANGE));
    let stored = stack
        .sql("SELECT sha256 FROM media_entries WHERE external_id = 'resumed'")
        .await;
    assert_eq!(
        stored[0].get::<_, String>(0),
        sha256(&fixture("sample.webm"))
    );
    assert_eq!(
        archive.requests("/basic/sample.webm")[0][header::AUTHORIZATION],
        basic_value().as_str()
    );
    // Another origin got nothing; nor did the URL that carries its own signature.
    assert_eq!(elsewhere.requests("/open/sample.mp4").len(), 1);
    assert!(
        !elsewhere.saw_any_credential(),
        "credentials crossed to another origin"
    );
    let signed = archive.requests("/basic/presigned/");
    assert_eq!(signed.len(), 1);
    assert!(!signed[0].contains_key(header::AUTHORIZATION));

    // Without the rules the same URL is refused by the archive: the test can fail.
    let bare = stack.project("no-rules").await;
    let job = stack
        .import(
            &bare.token,
            &batch("archive").video(archive.url("/keyed/sample.mp4"), "k"),
        )
        .await;
    let status = stack.wait_finished(&bare.token, &job, 60).await;
    assert_eq!(status["videos"][0]["state"], "failed", "{status}");
    assert!(
        status["videos"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("401"),
        "{status}"
    );

    // An https-only rule's credentials never go over http: refused at the door, by name.
    let (code, refusal) = stack
        .import_raw(
            Some(&project.token),
            &json!({"systemName": "archive", "videos": [
                {"url": archive.url("/open/sample.mp4"), "id": "a", "fileName": "a", "metadata": {}},
                {"url": "http://archive.example/masters/a.mp4", "id": "b", "fileName": "b", "metadata": {}}]})
            .to_string(),
        )
        .await;
    assert_eq!(code, 400, "{refusal}");
    let why = refusal["error_details"]["videos[1].url"]
        .as_str()
        .unwrap_or_default();
    assert!(
        why.contains("https://archive.example/masters/") && why.contains("https only"),
        "{refusal}"
    );

    // Nothing shows a secret: `source list`, the logs at debug, the table's bytes.
    let list = stack
        .api_cli(&["source", "list", "--project", "sources"])
        .await;
    assert!(list.status.success(), "{}", list.stderr);
    let rules: Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(rules.as_array().unwrap().len(), 3, "{rules}");
    assert!(list.stdout.contains("X-Archive-Key") && list.stdout.contains("Authorization"));
    let basic_b64 = basic_value();
    let secrets = [
        HEADER_VALUE,
        PASSWORD,
        OTHER_HEADER_VALUE,
        basic_b64.trim_start_matches("Basic "),
    ];
    let logs = all_logs(&stack);
    assert!(logs.contains("DEBUG"), "the processes logged at debug");
    let (file, rows) = table_bytes(&stack, "source_rules").await;
    assert!(
        contains(&file, b"/keyed/"),
        "the table's file holds its rows"
    );
    for secret in secrets {
        assert!(!list.stdout.contains(secret), "{secret} in source list");
        assert!(!logs.contains(secret), "{secret} in the logs");
        assert!(!rows.contains(secret), "{secret} in a row");
        assert!(
            !contains(&file, secret.as_bytes()),
            "{secret} in the table's file"
        );
        assert!(
            !rows.contains(&hex::encode(secret)),
            "{secret} hex-encoded in a row"
        );
    }
    assert!(!logs.contains(USER), "the basic user in the logs");

    // Removed, a rule is gone for the fetches after the worker's cache of the project's
    // rules (read before the first job finished) expired: the archive gets no credentials,
    // answers 401, the worker reads the rules once more, finds none, and the video fails.
    // (Before that, the cached rule would still send them: the wait is what is tested.)
    let id = keyed["id"].as_i64().unwrap().to_string();
    let removed = stack.api_cli(&["source", "remove", &id]).await;
    assert!(removed.status.success(), "{}", removed.stderr);
    assert_eq!(stack.sql("SELECT 1 FROM source_rules").await.len(), 2);
    tokio::time::sleep_until((rules_read_by + RULES_CACHED_FOR).into()).await;
    let job = stack
        .import(
            &project.token,
            &batch("archive").video(archive.url("/keyed/other.mp4"), "after-removal"),
        )
        .await;
    let status = stack.wait_finished(&project.token, &job, 60).await;
    assert_eq!(status["videos"][0]["state"], "failed", "{status}");
    assert!(
        status["videos"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("401"),
        "{status}"
    );
    let after = archive.requests("/keyed/other.mp4");
    assert_eq!(
        after.len(),
        1,
        "asked once: no rule covers it after reading again"
    );
    assert!(
        !after[0].contains_key("x-archive-key"),
        "the removed rule's header was sent"
    );
    stack.finish().await;
}

/// `s3://` video URLs are read through the bucket's rule from a real S3 API (moto), through
/// the same pipeline as http (size limit, sniffing, checksums); a project without a rule
/// for the bucket is refused at the door; an endpoint the worker may not reach is refused
/// when the rule is added.
#[tokio::test]
async fn s3_sources_are_read_through_their_rule_and_need_one() {
    let s3 = OwnS3::start("masters").await;
    let http = reqwest::Client::new();
    for (key, fixture_name) in [
        ("tape-1/sample.mp4", "sample.mp4"),
        ("tape-1/big.mp4", "bench16k.mp4"),
        ("tape-1/page.mp4", "page.html"),
    ] {
        let put = http
            .put(s3.url(key))
            .body(fixture(fixture_name))
            .send()
            .await
            .unwrap();
        assert!(put.status().is_success(), "PUT {key}: {}", put.status());
    }
    let key = SecretKey::generate();
    let stack = Stack::start(options(&[
        ("VIDEO_IMPORT__SECRETS__KEY", &key.to_base64()),
        ("VIDEO_IMPORT__FETCH__MAX_BYTES", "10000"),
        ("VIDEO_IMPORT__LOG__FILTER", "debug"),
    ]))
    .await;
    let project = stack.project("buckets").await;
    let endpoint = format!("http://127.0.0.1:{}", s3.port);
    let refused = stack
        .api_cli(&[
            "source",
            "add",
            "--project",
            "buckets",
            "--prefix",
            "s3://masters/",
            "--s3-region",
            "us-east-1",
            "--s3-endpoint",
            "http://169.254.169.254",
            "--s3-access-key-id",
            "AKIATEST",
            "--s3-secret-access-key",
            S3_SECRET,
        ])
        .await;
    assert!(!refused.status.success());
    assert!(
        refused.stderr.contains("fetch.allowed_networks"),
        "{}",
        refused.stderr
    );
    assert!(!refused.stderr.contains(S3_SECRET), "{}", refused.stderr);
    let rule = add(
        &stack,
        "buckets",
        &[
            "--prefix",
            "s3://masters/tape-1/",
            "--s3-region",
            "us-east-1",
            "--s3-endpoint",
            &endpoint,
            "--s3-access-key-id",
            "AKIATEST",
            "--s3-secret-access-key",
            S3_SECRET,
        ],
    )
    .await;
    assert_eq!(rule["s3"]["accessKeyId"], "AKIATEST", "{rule}");
    assert!(!rule.to_string().contains(S3_SECRET));

    // Without a rule for the bucket (or outside the rule's prefix): 400, naming the field.
    let (code, refusal) = stack
        .import_raw(
            Some(&project.token),
            &json!({"systemName": "archive", "videos": [
                {"url": "s3://masters/tape-1/sample.mp4", "id": "a", "fileName": "a", "metadata": {}},
                {"url": "s3://other-bucket/a.mp4", "id": "b", "fileName": "b", "metadata": {}},
                {"url": "s3://masters/tape-2/a.mp4", "id": "c", "fileName": "c", "metadata": {}}]})
            .to_string(),
        )
        .await;
    assert_eq!(code, 400, "{refusal}");
    let details = refusal["error_details"].as_object().unwrap();
    assert_eq!(details.len(), 2, "{refusal}");
    for field in ["videos[1].url", "videos[2].url"] {
        let why = details[field].as_str().unwrap();
        assert!(why.contains("video-import-api source add"), "{why}");
    }

    let sample = fixture("sample.mp4");
    let body = json!({"systemName": "archive", "videos": [
        {"url": "s3://masters/tape-1/sample.mp4", "id": "sample", "fileName": "s", "metadata": {},
         "checksum": {"sha256": sha256(&sample)}},
        {"url": "s3://masters/tape-1/big.mp4", "id": "big", "fileName": "b", "metadata": {}},
        {"url": "s3://masters/tape-1/page.mp4", "id": "page", "fileName": "p", "metadata": {}},
        {"url": "s3://masters/tape-1/missing.mp4", "id": "missing", "fileName": "m", "metadata": {}}]});
    let job = stack.import(&project.token, &body).await;
    let status = stack.wait_finished(&project.token, &job, 60).await;
    let v = &status["videos"];
    assert_eq!(v[0]["status"], "success", "{status}");
    assert_eq!(v[0]["video"]["verified"]["sha256"], sha256(&sample));
    let reason = |i: usize| v[i]["reason"].as_str().unwrap_or_default().to_string();
    assert!(
        reason(1).contains("fetch.max_bytes is 10000"),
        "{}",
        reason(1)
    );
    assert!(reason(2).starts_with("not a video"), "{}", reason(2));
    assert!(reason(3).contains("does not exist"), "{}", reason(3));
    // The stored bytes are the object's.
    let media_id = v[0]["video"]["mediaId"].as_str().unwrap();
    let (_, entry) = stack
        .get(
            Some(&project.token),
            &format!("/api/v1/mediaLibrary/{media_id}"),
        )
        .await;
    let stored_key = entry["asset"]["key"].as_str().unwrap();
    assert_eq!(
        stored_bytes(&stack.dir.join("videos"), stored_key).unwrap(),
        sample
    );

    // The same again: the object's ETag says it is unchanged, so nothing is downloaded.
    let downloads = || stack.log("worker0").matches("fetch: downloaded").count();
    assert_eq!(downloads(), 1);
    let again = json!({"systemName": "archive", "videos": [
        {"url": "s3://masters/tape-1/sample.mp4", "id": "sample", "fileName": "s", "metadata": {}}]});
    let job = stack.import(&project.token, &again).await;
    let status = stack.wait_finished(&project.token, &job, 60).await;
    assert_eq!(status["videos"][0]["status"], "skipped", "{status}");
    assert_eq!(downloads(), 1, "the unchanged object was downloaded again");

    // A transfer that breaks resumes with a ranged GET of the same object version, signed
    // with the rule's keys (an S3 endpoint of our own that breaks its first answer).
    let flaky = Archive::start().await;
    add(
        &stack,
        "buckets",
        &[
            "--prefix",
            "s3://flaky/",
            "--s3-region",
            "us-east-1",
            "--s3-endpoint",
            &flaky.base,
            "--s3-access-key-id",
            "AKIAFLAKY",
            "--s3-secret-access-key",
            S3_SECRET,
        ],
    )
    .await;
    let job = stack
        .import(
            &project.token,
            &batch("archive").video("s3://flaky/tape/sample.webm", "resumed"),
        )
        .await;
    let status = stack.wait_finished(&project.token, &job, 60).await;
    assert_eq!(status["videos"][0]["status"], "success", "{status}");
    assert_eq!(
        status["videos"][0]["video"]["sha256"],
        sha256(&fixture("sample.webm"))
    );
    let requests = flaky.requests("/flaky/tape/sample.webm");
    assert_eq!(requests.len(), 2, "one GET and one ranged GET");
    assert!(requests[1].contains_key(header::RANGE));
    assert_eq!(requests[1][header::IF_MATCH], "\"v1\"");

    let logs = all_logs(&stack);
    assert!(!logs.contains(S3_SECRET), "the secret key is in the logs");
    let (file, rows) = table_bytes(&stack, "source_rules").await;
    assert!(!rows.contains(S3_SECRET) && !contains(&file, S3_SECRET.as_bytes()));
    stack.finish().await;
}

/// `secrets rotate` encrypts every rule again with the new key: a worker that has only the
/// new key fetches with the rule's credentials. A command that needs a key says what to set.
#[tokio::test]
async fn a_rotated_key_keeps_sources_working_and_the_old_key_is_no_longer_needed() {
    let old = SecretKey::generate();
    let new = SecretKey::generate();
    let mut stack =
        Stack::start(options(&[("VIDEO_IMPORT__SECRETS__KEY", &old.to_base64())])).await;
    let archive = Archive::start().await;
    let project = stack.project("rotation").await;
    let header = format!("X-Archive-Key: {HEADER_VALUE}");
    let prefix = archive.url("/keyed/");
    let args = [
        "--prefix",
        prefix.as_str(),
        "--header",
        header.as_str(),
        "--allow-http",
    ];
    let without_key = stack
        .api_cli_with(
            &[&["source", "add", "--project", "rotation"][..], &args[..]].concat(),
            &[("VIDEO_IMPORT__SECRETS__KEY", "")],
        )
        .await;
    assert!(!without_key.status.success());
    assert!(
        without_key
            .stderr
            .contains("set secrets.key (VIDEO_IMPORT__SECRETS__KEY)"),
        "{}",
        without_key.stderr
    );
    add(&stack, "rotation", &args).await;
    let job = stack
        .import(
            &project.token,
            &batch("archive").video(archive.url("/keyed/sample.mp4"), "a"),
        )
        .await;
    let status = stack.wait_finished(&project.token, &job, 60).await;
    assert_eq!(status["videos"][0]["status"], "success", "{status}");

    let rotate = stack
        .api_cli_with(
            &["secrets", "rotate"],
            &[
                ("VIDEO_IMPORT__SECRETS__KEY", &new.to_base64()),
                ("VIDEO_IMPORT__SECRETS__PREVIOUS_KEYS", &old.to_base64()),
            ],
        )
        .await;
    assert!(rotate.status.success(), "{}", rotate.stderr);
    let report: Value = serde_json::from_str(&rotate.stdout).unwrap();
    assert_eq!(report["reencrypted"], 1, "{report}");
    assert_eq!(report["previousKeysNeeded"], false, "{report}");
    let ids = stack.sql("SELECT DISTINCT key_id FROM source_rules").await;
    assert_eq!(ids.len(), 1);
    assert_eq!(ids[0].get::<_, String>(0), new.id());

    // Workers with only the new key: the old one is no longer needed.
    let worker = stack.running(video_import_tests::Kind::Worker)[0].clone();
    stack.kill(&worker.name).await;
    let port = video_import_tests::free_port().to_string();
    stack
        .spawn(
            "worker-new-key",
            "video-import-worker",
            &[],
            &[
                (
                    "VIDEO_IMPORT__METRICS__LISTEN",
                    &format!("127.0.0.1:{port}"),
                ),
                ("VIDEO_IMPORT__SECRETS__KEY", &new.to_base64()),
            ],
        )
        .await;
    let job = stack
        .import(
            &project.token,
            &batch("archive").video(archive.url("/keyed/other.mp4"), "b"),
        )
        .await;
    let status = stack.wait_finished(&project.token, &job, 60).await;
    assert_eq!(status["videos"][0]["status"], "success", "{status}");
    let fetched = archive.requests("/keyed/other.mp4");
    assert_eq!(fetched[0]["x-archive-key"], HEADER_VALUE);
    stack.finish().await;
}

/// A rule added moments before a batch: a worker that cached the project's rules without
/// it gets 401, reads the rules again and asks once more with the new rule's credentials
/// (instead of failing the video until its rule cache expires).
#[tokio::test]
async fn a_rule_added_moments_ago_is_used_on_the_sources_first_refusal() {
    let key = SecretKey::generate();
    let stack = Stack::start(options(&[("VIDEO_IMPORT__SECRETS__KEY", &key.to_base64())])).await;
    let archive = Archive::start().await;
    let project = stack.project("fresh").await;
    // The worker caches the project's rules (none yet) with this import.
    let open = batch("fresh")
        .video(archive.url("/open/sample.mp4"), "open")
        .build();
    let job = stack.import(&project.token, &open).await;
    let status = stack.wait_finished(&project.token, &job, 30).await;
    assert_eq!(status["overview"]["imported"], 1, "{status}");
    // Within the cache's 10 s: the rule, then a video that needs it.
    add(
        &stack,
        "fresh",
        &[
            "--prefix",
            &archive.url("/keyed/"),
            "--header",
            &format!("X-Archive-Key: {HEADER_VALUE}"),
            "--allow-http",
        ],
    )
    .await;
    let keyed = batch("fresh")
        .video(archive.url("/keyed/sample.mp4"), "keyed")
        .build();
    let job = stack.import(&project.token, &keyed).await;
    let status = stack.wait_finished(&project.token, &job, 30).await;
    assert_eq!(status["overview"]["imported"], 1, "{status}");
    let requests = archive.requests("/keyed/sample.mp4");
    assert_eq!(requests.len(), 2, "one refused, one with the key");
    assert!(requests[0].get("x-archive-key").is_none());
    assert_eq!(requests[1]["x-archive-key"], HEADER_VALUE);
    stack.finish().await;
}

/// A rule whose secrets are damaged (changed outside video-import-api) fails its videos at
/// once, naming the rule, with nothing sent; a rule sealed by a key the worker lacks is
/// waited for (configuring the key mends it), as the retry schedule says.
#[tokio::test]
async fn damaged_secrets_fail_at_once_and_a_missing_key_is_waited_for() {
    let key = SecretKey::generate();
    let stack = Stack::start(options(&[
        ("VIDEO_IMPORT__SECRETS__KEY", &key.to_base64()),
        // A failure that is retried waits a minute: one that is not finishes long before.
        ("VIDEO_IMPORT__FETCH__RETRY_DELAYS_SECS", "60,60"),
    ]))
    .await;
    let archive = Archive::start().await;
    let project = stack.project("damaged").await;
    let damaged = add(
        &stack,
        "damaged",
        &[
            "--prefix",
            &archive.url("/keyed/"),
            "--header",
            &format!("X-Archive-Key: {HEADER_VALUE}"),
            "--allow-http",
        ],
    )
    .await;
    let unknown = add(
        &stack,
        "damaged",
        &[
            "--prefix",
            &archive.url("/basic/"),
            "--basic",
            &format!("{USER}:{PASSWORD}"),
            "--allow-http",
        ],
    )
    .await;
    // One bit of the first rule's ciphertext flipped; the second said to be sealed by a key
    // no one configured.
    stack
        .sql(&format!(
            "UPDATE source_rules SET sealed = set_byte(sealed, length(sealed) - 1,
                 get_byte(sealed, length(sealed) - 1) # 1) WHERE id = {}",
            damaged["id"]
        ))
        .await;
    stack
        .sql(&format!(
            "UPDATE source_rules SET key_id = '0badc0de' WHERE id = {}",
            unknown["id"]
        ))
        .await;
    let job = stack
        .import(
            &project.token,
            &batch("archive")
                .video(archive.url("/keyed/sample.mp4"), "damaged")
                .video(archive.url("/basic/sample.webm"), "unknown-key"),
        )
        .await;
    // The first fails at once; the second is tried, and waits for its retry.
    let status = stack
        .poll_until(
            "both videos to be tried",
            Duration::from_secs(20),
            async || {
                let status = stack.status(&project.token, &job).await;
                let videos = &status["videos"];
                if videos[0]["state"] == "failed" && videos[1]["lastError"].is_string() {
                    Ok(status)
                } else {
                    Err(status)
                }
            },
        )
        .await;
    let reason = status["videos"][0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!(
            "cannot use source rule {} ({}): it does not decrypt",
            damaged["id"],
            archive.url("/keyed/")
        )),
        "{reason}"
    );
    // Waited for: still pending, the error saying which key to configure.
    let waiting = &status["videos"][1];
    assert_eq!(waiting["state"], "pending", "{status}");
    let last_error = waiting["lastError"].as_str().unwrap();
    assert!(
        last_error.contains(&format!("source rule {}", unknown["id"]))
            && last_error.contains("0badc0de")
            && last_error.contains("secrets.previous_keys"),
        "{last_error}"
    );
    assert!(
        archive.seen.lock().unwrap().is_empty(),
        "nothing is sent for an unusable rule"
    );
    stack.finish().await;
}
