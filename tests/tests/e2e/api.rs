//! The API's contract beyond the pipeline: quotas, metadata schemas, idempotency, listing,
//! token lifetimes, request ids, rate limits and the OpenAPI document.

use std::time::Duration;

use serde_json::{json, Value};
use video_import_tests::{Options, Stack};

/// `n` videos at made-up URLs (no worker runs in these tests), ids `TAG-0`, `TAG-1`, …
fn batch(n: usize, tag: &str) -> Value {
    (0..n)
        .fold(video_import_tests::batch("archive"), |batch, i| {
            let url = format!("https://archive.example/{tag}/{i}.mp4");
            batch.video_with(url, format!("{tag}-{i}"), "f", json!({"title": "t"}))
        })
        .build()
}

async fn post(stack: &Stack, token: &str, body: &Value, key: Option<&str>) -> reqwest::Response {
    let mut request = stack
        .http
        .post(format!("{}/api/v1/import/videos", stack.api_url))
        .bearer_auth(token)
        .json(body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn the_daily_limit_counts_a_sliding_window_and_answers_the_seed_429() {
    let stack = Stack::start(Options::api_only(&[])).await;
    let out = stack
        .api_cli(&["project", "create", "quota", "--daily-limit", "5"])
        .await;
    assert!(out.status.success(), "{}", out.stderr);
    let token = stack.token("quota", &["public-api:write"]).await;

    assert_eq!(
        post(&stack, &token, &batch(3, "a"), None).await.status(),
        200
    );
    assert_eq!(
        post(&stack, &token, &batch(2, "b"), None).await.status(),
        200,
        "exactly at the limit"
    );
    let refused = post(&stack, &token, &batch(1, "c"), None).await;
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((86_000..=86_401).contains(&retry_after), "{retry_after}");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body[0]["status"], 429);
    assert_eq!(body[0]["error"], "Usage Limit Exceeded");
    let message = body[0]["error_details"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("Your plan does not allow you to upload more than 5 per day."),
        "{message}"
    );
    assert!(
        message.contains(
            "You already uploaded 5 in the last 24 hours and are trying to upload 1 more."
        ),
        "{message}"
    );

    // The window slides: once the first job (3 videos) is about to leave it, Retry-After says when.
    stack
        .sql("UPDATE jobs SET started_at = now() - interval '23 hours 59 minutes 30 seconds' WHERE total = 3")
        .await;
    let refused = post(&stack, &token, &batch(1, "d"), None).await;
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((25..=32).contains(&retry_after), "{retry_after}");
    stack
        .sql("UPDATE jobs SET started_at = now() - interval '24 hours 1 second' WHERE total = 3")
        .await;
    assert_eq!(
        post(&stack, &token, &batch(3, "e"), None).await.status(),
        200
    );
    assert_eq!(
        post(&stack, &token, &batch(1, "f"), None).await.status(),
        429
    );

    // A limit can be changed and removed.
    let out = stack
        .api_cli(&["project", "update", "quota", "--daily-limit", "100"])
        .await;
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(
        post(&stack, &token, &batch(1, "g"), None).await.status(),
        200
    );
    let out = stack
        .api_cli(&["project", "update", "quota", "--no-daily-limit"])
        .await;
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(
        post(&stack, &token, &batch(500, "h"), None).await.status(),
        200
    );
    stack.finish().await;
}

#[tokio::test]
async fn concurrent_batches_cannot_both_squeeze_past_the_limit() {
    let stack = Stack::start(Options::api_only(&[])).await;
    let out = stack
        .api_cli(&["project", "create", "race", "--daily-limit", "10"])
        .await;
    assert!(out.status.success());
    let token = stack.token("race", &["public-api:write"]).await;
    let bodies: Vec<Value> = (0..6).map(|i| batch(3, &format!("r{i}"))).collect();
    let answers =
        futures::future::join_all(bodies.iter().map(|b| post(&stack, &token, b, None))).await;
    let accepted = answers.iter().filter(|r| r.status() == 200).count();
    let refused = answers.iter().filter(|r| r.status() == 429).count();
    assert_eq!(
        (accepted, refused),
        (3, 3),
        "3 × 3 fit in 10, the rest must not"
    );
    let rows = stack.sql("SELECT sum(total)::bigint FROM jobs").await;
    assert_eq!(rows[0].get::<_, i64>(0), 9);
    stack.finish().await;
}

#[tokio::test]
async fn metadata_is_checked_against_the_project_schema_with_every_problem_reported() {
    let stack = Stack::start(Options::api_only(&[])).await;
    let schema = stack.dir.join("schema.json");
    std::fs::write(
        &schema,
        json!({"type": "object", "required": ["title"], "additionalProperties": false,
               "properties": {"title": {"type": "string", "maxLength": 20}, "year": {"type": "integer"}}})
        .to_string(),
    )
    .unwrap();
    let out = stack
        .api_cli(&[
            "project",
            "create",
            "strict",
            "--metadata-schema",
            schema.to_str().unwrap(),
        ])
        .await;
    assert!(out.status.success(), "{}", out.stderr);
    let token = stack.token("strict", &["public-api:write"]).await;
    let body = video_import_tests::batch("archive")
        .video_with(
            "https://a.example/1.mp4",
            "one",
            "f",
            json!({"title": "fine", "year": 1999}),
        )
        .video_with(
            "https://a.example/2.mp4",
            "two",
            "f",
            json!({"year": "1999"}),
        )
        .video_with(
            "https://a.example/3.mp4",
            "three",
            "f",
            json!({"title": 3, "colour": "red"}),
        )
        .build();
    let response = post(&stack, &token, &body, None).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"], "ValidationError");
    assert_eq!(
        error["error_details"]["message"],
        "Metadata validation failed."
    );
    let found: Vec<(i64, String, String)> = error["error_details"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["index"].as_i64().unwrap(),
                e["externalId"].as_str().unwrap().to_string(),
                e["metadataProperty"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected = [
        (1, "two", "title"),
        (1, "two", "year"),
        (2, "three", "colour"),
        (2, "three", "title"),
    ];
    let expected: Vec<(i64, String, String)> = expected
        .iter()
        .map(|(i, e, p)| (*i, e.to_string(), p.to_string()))
        .collect();
    assert_eq!(found, expected);
    let stored = stack.sql("SELECT count(*) FROM jobs").await;
    assert_eq!(stored[0].get::<_, i64>(0), 0);

    // Without a schema, the fallback fields must be strings and others are free.
    let plain = stack.project("plain").await;
    let body = video_import_tests::batch("a")
        .video_with(
            "https://a.example/1.mp4",
            "x",
            "f",
            json!({"title": 5, "credit": "LC"}),
        )
        .build();
    let response = post(&stack, &plain.token, &body, None).await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(
        error["error_details"]["errors"][0]["metadataProperty"],
        "title"
    );

    // A schema that does not compile is refused by the CLI.
    std::fs::write(&schema, r#"{"type": 5}"#).unwrap();
    let out = stack
        .api_cli(&[
            "project",
            "create",
            "broken",
            "--metadata-schema",
            schema.to_str().unwrap(),
        ])
        .await;
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("is not a usable JSON Schema"),
        "{}",
        out.stderr
    );
    stack.finish().await;
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_job_and_refuses_another_body() {
    let stack = Stack::start(Options::api_only(&[])).await;
    let project = stack.project("idem").await;
    let first: Value = post(&stack, &project.token, &batch(2, "a"), Some("key-1"))
        .await
        .json()
        .await
        .unwrap();
    let again = post(&stack, &project.token, &batch(2, "a"), Some("key-1")).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap()["id"], first["id"]);
    let other = post(&stack, &project.token, &batch(3, "b"), Some("key-1")).await;
    assert_eq!(other.status(), 422);
    let error: Value = other.json().await.unwrap();
    assert!(error["error_details"]["Idempotency-Key"].is_string());

    // Concurrent duplicates create one job.
    let body = batch(2, "c");
    let answers = futures::future::join_all(
        (0..8).map(|_| post(&stack, &project.token, &body, Some("key-2"))),
    )
    .await;
    let mut ids = Vec::new();
    for answer in answers {
        assert_eq!(answer.status(), 200);
        ids.push(
            answer.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let jobs = stack.sql("SELECT count(*) FROM jobs").await;
    assert_eq!(jobs[0].get::<_, i64>(0), 2);
    // Keys older than 24 hours are free again.
    stack
        .sql("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
        .await;
    let fresh: Value = post(&stack, &project.token, &batch(3, "b"), Some("key-1"))
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(fresh["id"], first["id"]);
    stack.finish().await;
}

#[tokio::test]
async fn jobs_are_listed_newest_first_page_by_page() {
    let stack = Stack::start(Options::api_only(&[])).await;
    let project = stack.project("pages").await;
    let mut created = Vec::new();
    for i in 0..5 {
        let mut body = batch(1, &format!("p{i}"));
        if i == 4 {
            body["systemName"] = json!("other-system");
        }
        let answer: Value = post(&stack, &project.token, &body, None)
            .await
            .json()
            .await
            .unwrap();
        created.push(answer["id"].as_str().unwrap().to_string());
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/import/videos?limit=2&cursor={c}"),
            None => "/api/v1/import/videos?limit=2".to_string(),
        };
        let (code, page) = stack.get(Some(&project.token), &path).await;
        assert_eq!(code, 200, "{page}");
        pages += 1;
        for job in page["jobs"].as_array().unwrap() {
            seen.push(job["id"].as_str().unwrap().to_string());
            assert_eq!(job["state"], "started");
            assert_eq!(job["overview"]["total"], 1);
        }
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    created.reverse();
    assert_eq!(seen, created, "newest first, each job once");

    let (_, filtered) = stack
        .get(
            Some(&project.token),
            "/api/v1/import/videos?systemName=other-system",
        )
        .await;
    assert_eq!(filtered["jobs"].as_array().unwrap().len(), 1);
    let (_, none) = stack
        .get(Some(&project.token), "/api/v1/import/videos?state=success")
        .await;
    assert_eq!(none["jobs"].as_array().unwrap().len(), 0);
    let (code, error) = stack
        .get(Some(&project.token), "/api/v1/import/videos?cursor=bogus")
        .await;
    assert_eq!(code, 400);
    assert!(error["error_details"]["cursor"].is_string());
    let (code, _) = stack
        .get(Some(&project.token), "/api/v1/import/videos?limit=0")
        .await;
    assert_eq!(code, 400);
    let (code, error) = stack
        .get(Some(&project.token), "/api/v1/import/videos?state=bogus")
        .await;
    assert_eq!(code, 400);
    assert!(error["error_details"]["query"].is_string(), "{error}");
    // Other projects' jobs are not listed.
    let other = stack.project("elsewhere").await;
    let (_, empty) = stack.get(Some(&other.token), "/api/v1/import/videos").await;
    assert_eq!(empty["jobs"].as_array().unwrap().len(), 0);
    stack.finish().await;
}

#[tokio::test]
async fn tokens_expire_and_can_be_revoked_and_listed() {
    let stack = Stack::start(Options::api_only(&[])).await;
    stack.project("tokens").await;
    let out = stack
        .api_cli(&[
            "token",
            "create",
            "--project",
            "tokens",
            "--scope",
            "public-api:write",
            "--expires-in",
            "1s",
        ])
        .await;
    assert!(out.status.success(), "{}", out.stderr);
    let short: Value = serde_json::from_str(&out.stdout).unwrap();
    let short_token = short["token"].as_str().unwrap();
    assert!(short["expiresAt"].is_string());
    assert_eq!(
        post(&stack, short_token, &batch(1, "a"), None)
            .await
            .status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let expired = post(&stack, short_token, &batch(1, "b"), None).await;
    assert_eq!(expired.status(), 401);
    let body: Value = expired.json().await.unwrap();
    assert_eq!(
        body["error_details"]["access_token"],
        "The access token expired."
    );

    let out = stack
        .api_cli(&[
            "token",
            "create",
            "--project",
            "tokens",
            "--scope",
            "public-api:write",
        ])
        .await;
    let long: Value = serde_json::from_str(&out.stdout).unwrap();
    let long_token = long["token"].as_str().unwrap();
    assert_eq!(
        post(&stack, long_token, &batch(1, "c"), None)
            .await
            .status(),
        200
    );
    let id = long["id"].as_i64().unwrap().to_string();
    let out = stack.api_cli(&["token", "revoke", &id]).await;
    assert!(out.status.success(), "{}", out.stderr);
    let revoked = post(&stack, long_token, &batch(1, "d"), None).await;
    assert_eq!(revoked.status(), 401);
    let body: Value = revoked.json().await.unwrap();
    assert_eq!(
        body["error_details"]["access_token"],
        "The access token was revoked."
    );

    let out = stack
        .api_cli(&["token", "list", "--project", "tokens"])
        .await;
    let listed: Value = serde_json::from_str(&out.stdout).unwrap();
    let listed = listed.as_array().unwrap();
    // The project's own token from `project()`, plus the two above.
    assert_eq!(listed.len(), 3);
    assert!(
        listed.iter().all(|t| t.get("token").is_none()),
        "tokens are never shown again"
    );
    assert!(listed.iter().any(|t| t["revokedAt"].is_string()));
    assert!(listed.iter().any(|t| t["expiresAt"].is_string()));
    let out = stack
        .api_cli(&[
            "token",
            "create",
            "--project",
            "tokens",
            "--scope",
            "public-api:write",
            "--expires-in",
            "soon",
        ])
        .await;
    assert!(!out.status.success());
    assert!(out.stderr.contains("--expires-in"), "{}", out.stderr);
    stack.finish().await;
}

#[tokio::test]
async fn every_response_has_a_request_id_and_errors_repeat_it() {
    let stack = Stack::start(Options::api_only(&[])).await;
    let project = stack.project("ids").await;
    let ok = stack
        .http
        .get(format!("{}/healthz", stack.api_url))
        .send()
        .await
        .unwrap();
    assert!(ok.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .starts_with("req_"));
    let response = stack
        .http
        .get(format!(
            "{}/api/v1/import/videos/status?id=nope",
            stack.api_url
        ))
        .bearer_auth(&project.token)
        .header("x-request-id", "trace-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["x-request-id"], "trace-abc-123");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["request_id"], "trace-abc-123");
    let response = stack
        .http
        .get(format!("{}/api/v1/mediaLibrary/x", stack.api_url))
        .send()
        .await
        .unwrap();
    let header = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["request_id"], header);
    stack.finish().await;
}

#[tokio::test]
async fn a_token_over_its_rate_gets_429_with_retry_after() {
    let stack = Stack::start(Options::api_only(&[
        ("VIDEO_IMPORT__API__RATE_LIMIT_PER_SECOND", "1"),
        ("VIDEO_IMPORT__API__RATE_LIMIT_BURST", "2"),
    ]))
    .await;
    let project = stack.project("rate").await;
    let mut codes = Vec::new();
    let mut retry_after = None;
    for _ in 0..3 {
        let response = stack
            .http
            .get(format!("{}/api/v1/import/videos", stack.api_url))
            .bearer_auth(&project.token)
            .send()
            .await
            .unwrap();
        codes.push(response.status().as_u16());
        if let Some(v) = response.headers().get("retry-after") {
            retry_after = Some(v.to_str().unwrap().to_string());
        }
    }
    assert_eq!(codes, [200, 200, 429]);
    assert_eq!(retry_after.as_deref(), Some("1"));
    stack.finish().await;
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let stack = Stack::start(Options::api_only(&[])).await;
    let (code, doc) = stack.get(None, "/api/v1/openapi.json").await;
    assert_eq!(code, 200);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().unwrap();
    // Every route the service serves, with its method: a client generated from the document
    // can call each of them.
    for (path, method) in [
        ("/api/v1/import/videos", "post"),
        ("/api/v1/import/videos", "get"),
        ("/api/v1/import/videos/status", "get"),
        ("/api/v1/import/videos/{id}/webhook", "post"),
        ("/api/v1/import/videos/{id}/cancel", "post"),
        ("/api/v1/mediaLibrary", "get"),
        ("/api/v1/mediaLibrary/{id}", "get"),
    ] {
        assert!(
            paths.get(path).is_some_and(|p| p[method].is_object()),
            "{} {path} missing",
            method.to_uppercase()
        );
    }
    assert!(paths["/api/v1/import/videos"]["post"]["requestBody"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    stack.finish().await;
}

/// Sends `body` to the import route with `headers`; the status and the body as JSON
/// (`Value::Null` when it is not JSON).
async fn raw_post(stack: &Stack, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, Value) {
    let mut request = stack
        .http
        .post(format!("{}/api/v1/import/videos", stack.api_url));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.body(body).send().await.unwrap();
    let status = response.status().as_u16();
    let json = response.json().await.unwrap_or(Value::Null);
    (status, json)
}

#[tokio::test]
async fn careless_and_hostile_requests_get_clear_errors_in_the_api_shape() {
    let stack = Stack::start(Options::api_only(&[(
        "VIDEO_IMPORT__API__MAX_BODY_BYTES",
        "2000",
    )]))
    .await;
    let project = stack.project("careless").await;
    let bearer = format!("Bearer {}", project.token);
    let json_headers = [
        ("authorization", bearer.as_str()),
        ("content-type", "application/json"),
    ];
    let field = |body: &Value, name: &str| {
        body["error_details"][name]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };

    // NUL cannot be stored: a 400 naming the field, not a 503 to retry forever.
    let mut nul = batch(1, "nul");
    nul["videos"][0]["id"] = json!("a\u{0}b");
    nul["videos"][0]["metadata"] = json!({"title": "t\u{0}"});
    let (code, body) = raw_post(&stack, &json_headers, nul.to_string().into_bytes()).await;
    assert_eq!(code, 400, "{body}");
    assert!(field(&body, "videos[0].id").contains("NUL"), "{body}");
    assert!(
        field(&body, "videos[0].metadata.title").contains("NUL"),
        "{body}"
    );

    // Bodies over the limit, by one byte or by a lot, get a 413 in the JSON shape.
    for size in [2001, 2002, 100_000] {
        let (code, body) = raw_post(&stack, &json_headers, vec![b' '; size]).await;
        assert_eq!(code, 413, "{size} bytes: {body}");
        assert!(body["request_id"].is_string(), "{size} bytes: {body}");
    }

    // A body declared as something else than JSON.
    let text = [
        ("authorization", bearer.as_str()),
        ("content-type", "text/plain"),
    ];
    let (code, body) = raw_post(&stack, &text, batch(1, "t").to_string().into_bytes()).await;
    assert_eq!(code, 415, "{body}");
    assert!(body["error_details"]["message"]
        .as_str()
        .unwrap()
        .contains("application/json"));

    // Two Authorization headers: which one counts is not guessed.
    let other = stack.project("other").await;
    let response = stack
        .http
        .post(format!("{}/api/v1/import/videos", stack.api_url))
        .header("authorization", &bearer)
        .header("authorization", format!("Bearer {}", other.token))
        .json(&batch(1, "two"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        field(&body, "Authorization").contains("more than once"),
        "{body}"
    );

    // An empty fileName, like an empty id.
    let mut empty = batch(1, "empty");
    empty["videos"][0]["fileName"] = json!("");
    let (code, body) = raw_post(&stack, &json_headers, empty.to_string().into_bytes()).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(field(&body, "videos[0].fileName"), "must not be empty");

    assert!(
        stack.sql("SELECT 1 FROM jobs").await.is_empty(),
        "nothing was stored"
    );
    assert!(
        !stack.log("api").contains("ERROR"),
        "no request above wrote an ERROR line"
    );
    stack.finish().await;
}

#[tokio::test]
async fn slow_and_idle_connections_cannot_starve_the_api() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let stack = Stack::start(Options::api_only(&[
        ("VIDEO_IMPORT__API__HEADER_TIMEOUT_SECS", "2"),
        ("VIDEO_IMPORT__API__BODY_TIMEOUT_SECS", "2"),
        ("VIDEO_IMPORT__API__MAX_CONNECTIONS", "100"),
    ]))
    .await;
    let project = stack.project("slowloris").await;
    let job = stack.import(&project.token, &batch(1, "s")).await;
    let address = stack.api_url.trim_start_matches("http://").to_string();
    // 300 connections: a third send nothing, a third half a header, a third a body that
    // stops after 10 of the 1,000 bytes it announced.
    let stalled_body = format!(
        "POST /api/v1/import/videos HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"system\"",
        project.token
    );
    let mut slow = Vec::new();
    for i in 0..300 {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        match i % 3 {
            0 => {}
            1 => stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: api\r\nX-Slow: ")
                .await
                .unwrap(),
            _ => stream.write_all(stalled_body.as_bytes()).await.unwrap(),
        }
        slow.push(stream);
    }
    // Others are still served.
    for _ in 0..3 {
        let healthz = tokio::time::timeout(Duration::from_secs(20), stack.get(None, "/healthz"))
            .await
            .expect("/healthz answers while slow clients hold connections");
        assert_eq!(healthz.0, 200);
        let status = tokio::time::timeout(
            Duration::from_secs(20),
            stack.get(
                Some(&project.token),
                &format!("/api/v1/import/videos/status?id={job}"),
            ),
        )
        .await
        .expect("the status answers while slow clients hold connections");
        assert_eq!(status.0, 200);
    }
    // The API closes every slow connection; the stalled body is told so.
    for (i, stream) in slow.iter_mut().enumerate() {
        let mut answer = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "connection {i} was never closed");
        if i % 3 == 2 {
            let text = String::from_utf8_lossy(&answer);
            assert!(text.starts_with("HTTP/1.1 408"), "connection {i}: {text}");
            assert!(
                text.contains("did not arrive within 2 s"),
                "connection {i}: {text}"
            );
        }
    }
    stack.finish().await;
}

#[tokio::test]
async fn every_error_has_the_shape_and_a_request_id() {
    let stack = Stack::start(Options::api_only(&[])).await;
    let project = stack.project("shapes").await;
    let url = |path: &str| format!("{}{path}", stack.api_url);
    let send = |request: reqwest::RequestBuilder| async move {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let allow = response
            .headers()
            .get("allow")
            .map(|v| v.to_str().unwrap().to_string());
        let header = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(body["status"], status, "{body}");
        assert_eq!(body["request_id"], header.as_str(), "{body}");
        (status, allow, body)
    };
    let http = &stack.http;
    // Unknown routes, as Livingdocs answers them.
    for path in [
        "/api/v1/foo",
        "/nothing",
        "/api/v1/import/videos/x/y/z",
        "/api/2026-04/import/videos",
    ] {
        let (status, _, body) = send(http.get(url(path)).bearer_auth(&project.token)).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["error_details"]["url"], path, "{body}");
    }
    // Wrong methods name the ones the route takes.
    for (method, path, allowed) in [
        (reqwest::Method::DELETE, "/api/v1/import/videos", "POST"),
        (reqwest::Method::PUT, "/api/v1/import/videos/status", "GET"),
        (
            reqwest::Method::GET,
            "/api/v1/import/videos/abc/cancel",
            "POST",
        ),
        (reqwest::Method::POST, "/api/v1/mediaLibrary/abc", "GET"),
    ] {
        let (status, allow, body) = send(
            http.request(method.clone(), url(path))
                .bearer_auth(&project.token),
        )
        .await;
        assert_eq!(status, 405, "{method} {path}: {body}");
        assert!(
            allow.as_deref().unwrap_or_default().contains(allowed),
            "{method} {path}: Allow {allow:?}"
        );
    }
    // Bodies that are not JSON.
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let (status, _, body) = send(
            http.post(url("/api/v1/import/videos"))
                .bearer_auth(&project.token)
                .header("content-type", content_type)
                .body(batch(1, "ct").to_string()),
        )
        .await;
        assert_eq!(status, 415, "{content_type}: {body}");
    }
    // A retired dated version.
    let (status, _, body) = send(
        http.get(url("/api/2024-11/mediaLibrary/x"))
            .bearer_auth(&project.token),
    )
    .await;
    assert_eq!(status, 410, "{body}");
    stack.finish().await;
}

#[tokio::test]
async fn dated_paths_answer_like_v1() {
    let stack = Stack::start(Options::default()).await;
    let videos = video_import_tests::videos::VideoServer::start().await;
    let project = stack.project("dated").await;
    let body = video_import_tests::batch("archive").video_with(
        videos.url("/videos/sample.mp4"),
        "d1",
        "f",
        json!({"title": "t"}),
    );
    let accepted: Value = stack
        .http
        .post(format!("{}/api/2026-05/import/videos", stack.api_url))
        .bearer_auth(&project.token)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job = accepted["id"].as_str().expect("a job id").to_string();
    let v1 = stack.wait_finished(&project.token, &job, 30).await;
    for version in ["2025-03", "2026-05", "beta"] {
        let (code, dated) = stack
            .get(
                Some(&project.token),
                &format!("/api/{version}/import/videos/status?id={job}"),
            )
            .await;
        assert_eq!(code, 200);
        assert_eq!(dated, v1, "{version}");
    }
    let media_id = v1["videos"][0]["video"]["mediaId"].as_str().unwrap();
    let (_, one) = stack
        .get(
            Some(&project.token),
            &format!("/api/v1/mediaLibrary/{media_id}"),
        )
        .await;
    let (code, dated) = stack
        .get(
            Some(&project.token),
            "/api/2025-09/mediaLibrary?systemName=archive&externalId=d1",
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(dated, json!([one]));
    stack.finish().await;
}

#[tokio::test]
async fn cancelling_a_large_import_stops_it_at_once_with_one_webhook() {
    let stack = Stack::start(Options {
        env: vec![("VIDEO_IMPORT__FETCH__CONCURRENCY".into(), "8".into())],
        ..Options::default()
    })
    .await;
    let videos = video_import_tests::videos::VideoServer::start().await;
    let receiver = video_import_tests::receiver::Receiver::start(&[]).await;
    let project = stack.project("cancel").await;
    // 1,000 videos of about a second each.
    let body = (0..1000).fold(
        video_import_tests::batch("archive").webhook(&receiver.url),
        |batch, i| {
            batch.video(
                videos.url(&format!("/slow/300/sample.mp4?n={i}")),
                format!("c{i}"),
            )
        },
    );
    let job = stack.import(&project.token, &body).await;
    stack
        .poll_until(
            "8 downloads started",
            Duration::from_secs(6),
            async || match videos.hits("/slow/300/sample.mp4") {
                hits if hits >= 8 => Ok(()),
                hits => Err(format!("{hits} requests")),
            },
        )
        .await;
    let cancel = |token: String| {
        let request = stack
            .http
            .post(format!(
                "{}/api/v1/import/videos/{job}/cancel",
                stack.api_url
            ))
            .bearer_auth(token);
        async move {
            let response = request.send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let (code, cancelled) = cancel(project.token.clone()).await;
    let fetched_at_cancel = videos.hits("/slow/300/sample.mp4");
    assert_eq!(code, 200, "{cancelled}");
    assert_eq!(cancelled["finished"], true, "{cancelled}");
    assert_eq!(cancelled["state"], "failed");
    assert!(cancelled["cancelledAt"].is_string(), "{cancelled}");
    let count = cancelled["cancelled"].as_i64().unwrap();
    assert!(count > 900, "{cancelled}");
    // Again: nothing more to cancel, the same job.
    let (code, again) = cancel(project.token.clone()).await;
    assert_eq!(code, 200);
    assert_eq!(again["cancelled"], 0);
    assert_eq!(again["overview"], cancelled["overview"]);

    let status = stack.status(&project.token, &job).await;
    let reasons: Vec<&str> = status["videos"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["reason"].as_str())
        .collect();
    assert_eq!(
        reasons.iter().filter(|r| **r == "cancelled").count() as i64,
        count
    );
    let (_, list) = stack
        .get(Some(&project.token), "/api/v1/import/videos")
        .await;
    assert!(list["jobs"][0]["cancelledAt"].is_string(), "{list}");

    let hooks = receiver.wait_for(1, 30).await;
    let payload = hooks[0].json();
    assert_eq!(payload["type"], "import.videos.finished");
    assert!(payload["timestamp"].is_string(), "{payload}");
    assert_eq!(payload["overview"]["failed"].as_i64().unwrap(), count);
    // Queued messages are dropped without downloading: at most the downloads that were in
    // flight at the cancel are fetched after it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let fetched_later = videos.hits("/slow/300/sample.mp4") - fetched_at_cancel;
    assert!(
        fetched_later <= 8,
        "{fetched_later} videos were fetched after the cancel"
    );
    assert_eq!(receiver.received().len(), 1, "exactly one webhook");
    let other = stack.project("stranger").await;
    assert_eq!(cancel(other.token).await.0, 404);
    receiver.assert_all_signed_by(&project.secret);
    stack.finish().await;
}
