//! What a Livingdocs client reads back: the status in Livingdocs' shape (`status`, `title`,
//! `video.url`), the stored video through that URL (whole, in ranges, conditionally),
//! cheap polling (ETag, 304, gzip), and a retry of a job's failed videos.

use std::io::Read;

use reqwest::header::{
    ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG,
    IF_NONE_MATCH, IF_RANGE, RANGE,
};
use serde_json::{json, Value};
use video_import_tests::receiver::Receiver;
use video_import_tests::services::OwnS3;
use video_import_tests::videos::{fixture, sha256, VideoServer};
use video_import_tests::{batch, Options, Stack};

/// GET `path` (relative to the API, or absolute) with `token` and extra headers.
async fn get(
    stack: &Stack,
    token: &str,
    path: &str,
    headers: &[(reqwest::header::HeaderName, &str)],
) -> reqwest::Response {
    let url = if path.starts_with("http") {
        path.to_string()
    } else {
        format!("{}{path}", stack.api_url)
    };
    let mut request = stack.http.get(url).bearer_auth(token);
    for (name, value) in headers {
        request = request.header(name, *value);
    }
    request.send().await.expect("GET")
}

/// A client written from Livingdocs' status documentation: it knows `status`, `title`,
/// `reason` and `video.url`, nothing of ours.
#[tokio::test]
async fn a_livingdocs_client_reads_status_and_title_and_fetches_the_video_through_its_url() {
    let stack = Stack::start(Options::default()).await;
    let videos = VideoServer::start().await;
    let project = stack.project("ld").await;
    let first = stack
        .import(
            &project.token,
            &batch("archive").video_with(
                videos.url("/videos/sample.mp4"),
                "a",
                "my video",
                json!({}),
            ),
        )
        .await;
    stack.wait_finished(&project.token, &first, 30).await;
    let job = stack
        .import(
            &project.token,
            &batch("archive")
                .video_with(videos.url("/videos/sample.mp4"), "a", "my video", json!({}))
                .video_with(
                    videos.url("/videos/missing.mp4"),
                    "b",
                    "my third video",
                    json!({}),
                ),
        )
        .await;
    let status = stack.wait_finished(&project.token, &job, 60).await;

    let by_id = |id: &str| -> Value {
        status["videos"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["externalId"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("video {id} in {status}"))
    };
    let skipped = by_id("a");
    assert_eq!(skipped["status"], "skipped", "{skipped}");
    assert_eq!(skipped["title"], "my video");
    assert!(skipped["reason"].is_string(), "{skipped}");
    let failed = by_id("b");
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["title"], "my third video");
    assert!(
        failed["reason"].as_str().unwrap().contains("404"),
        "{failed}"
    );
    assert!(failed.get("video").is_none(), "{failed}");

    let first_status = stack.status(&project.token, &first).await;
    let video = &first_status["videos"][0];
    assert_eq!(video["status"], "success");
    for key in [
        "mediaId",
        "originalUrl",
        "url",
        "width",
        "height",
        "mimeType",
    ] {
        assert!(!video["video"][key].is_null(), "video.{key} in {video}");
    }
    assert_eq!(video["video"]["mimeType"], "video/mp4");
    assert_eq!(video["video"]["mediaId"], skipped["video"]["mediaId"]);
    let url = video["video"]["url"].as_str().unwrap();
    let media_id = video["video"]["mediaId"].as_str().unwrap();
    assert_eq!(url, format!("/api/v1/mediaLibrary/{media_id}/asset"));
    // A relative URL, resolved against the API's address as a browser would.
    let response = get(&stack, &project.token, url, &[]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()[CONTENT_TYPE], "video/mp4");
    let bytes = response.bytes().await.unwrap();
    assert_eq!(
        sha256(&bytes),
        sha256(&fixture("sample.mp4")),
        "the bytes of the source"
    );

    // The media-library entry in Livingdocs' shape.
    let (code, entry) = stack
        .get(
            Some(&project.token),
            &format!("/api/v1/mediaLibrary/{media_id}"),
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(entry["mediaType"], "video");
    let asset = &entry["asset"];
    for key in [
        "key", "url", "size", "width", "height", "duration", "filename", "mimeType",
    ] {
        assert!(!asset[key].is_null(), "asset.{key} in {entry}");
    }
    assert_eq!(asset["url"], url);
    assert_eq!(asset["filename"], "my video");
    assert_eq!(asset["size"], fixture("sample.mp4").len());

    // With api.public_url set, the URLs are absolute.
    let mut stack = stack;
    let other = stack
        .spawn_api(
            "api-public",
            &[("VIDEO_IMPORT__API__PUBLIC_URL", "https://videos.example")],
        )
        .await;
    let response = stack
        .http
        .get(format!("{other}/api/v1/import/videos/status?id={first}"))
        .bearer_auth(&project.token)
        .send()
        .await
        .unwrap();
    let shown: Value = response.json().await.unwrap();
    assert_eq!(
        shown["videos"][0]["video"]["url"],
        format!("https://videos.example/api/v1/mediaLibrary/{media_id}/asset")
    );
    stack.finish().await;
}

#[tokio::test]
async fn the_asset_is_served_whole_in_ranges_and_conditionally() {
    let stack = Stack::start(Options::default()).await;
    let videos = VideoServer::start().await;
    let project = stack.project("assets").await;
    // The sample followed by 3 MB of zeros: larger than one read chunk.
    let padding = 3_000_000;
    let mut expected = fixture("sample.mp4");
    expected.resize(expected.len() + padding, 0);
    let size = expected.len();
    let job = stack
        .import(
            &project.token,
            &batch("archive").video(videos.url(&format!("/padded/{padding}/sample.mp4")), "p"),
        )
        .await;
    let status = stack.wait_finished(&project.token, &job, 60).await;
    let media_id = status["videos"][0]["video"]["mediaId"]
        .as_str()
        .unwrap_or_else(|| panic!("imported: {status}"))
        .to_string();
    let path = format!("/api/v1/mediaLibrary/{media_id}/asset");
    let token = &project.token;

    let whole = get(&stack, token, &path, &[(ACCEPT_ENCODING, "gzip")]).await;
    assert_eq!(whole.status(), 200);
    let etag = whole.headers()[ETAG].to_str().unwrap().to_string();
    assert_eq!(
        etag,
        format!("\"{}\"", sha256(&expected)),
        "ETag is the SHA-256"
    );
    assert_eq!(whole.headers()[CONTENT_LENGTH], size.to_string().as_str());
    assert_eq!(whole.headers()["accept-ranges"], "bytes");
    assert!(
        whole.headers().get(CONTENT_ENCODING).is_none(),
        "a video is never compressed"
    );
    assert!(whole.bytes().await.unwrap() == expected);

    let part = get(&stack, token, &path, &[(RANGE, "bytes=100-199")]).await;
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()[CONTENT_RANGE],
        format!("bytes 100-199/{size}").as_str()
    );
    assert_eq!(part.headers()[CONTENT_LENGTH], "100");
    assert_eq!(part.bytes().await.unwrap(), &expected[100..200]);

    // A range across read chunks, and a suffix range.
    let from = 200_000;
    let part = get(&stack, token, &path, &[(RANGE, &format!("bytes={from}-"))]).await;
    assert_eq!(part.status(), 206);
    assert!(part.bytes().await.unwrap() == expected[from..]);
    let tail = get(&stack, token, &path, &[(RANGE, "bytes=-10")]).await;
    assert_eq!(tail.status(), 206);
    assert_eq!(tail.bytes().await.unwrap(), &expected[size - 10..]);

    let beyond = get(&stack, token, &path, &[(RANGE, &format!("bytes={size}-"))]).await;
    assert_eq!(beyond.status(), 416);
    assert_eq!(
        beyond.headers()[CONTENT_RANGE],
        format!("bytes */{size}").as_str()
    );
    let error: Value = beyond.json().await.unwrap();
    assert!(error["error_details"]["Range"].is_string(), "{error}");

    let unchanged = get(&stack, token, &path, &[(IF_NONE_MATCH, &etag)]).await;
    assert_eq!(unchanged.status(), 304);
    assert_eq!(unchanged.headers()[ETAG], etag.as_str());
    assert!(unchanged.bytes().await.unwrap().is_empty());
    let changed = get(
        &stack,
        token,
        &path,
        &[(RANGE, "bytes=0-9"), (IF_RANGE, "\"an-older-file\"")],
    )
    .await;
    assert_eq!(
        changed.status(),
        200,
        "If-Range with another tag: the whole file"
    );
    assert_eq!(changed.bytes().await.unwrap().len(), size);
    let same = get(
        &stack,
        token,
        &path,
        &[(RANGE, "bytes=0-9"), (IF_RANGE, &etag)],
    )
    .await;
    assert_eq!(same.status(), 206);

    // Another project's token does not see it; a token without the read scope may not.
    let other = stack.project("other").await;
    assert_eq!(get(&stack, &other.token, &path, &[]).await.status(), 404);
    let write_only = stack.token("assets", &["public-api:write"]).await;
    assert_eq!(get(&stack, &write_only, &path, &[]).await.status(), 403);
    let missing = get(&stack, token, "/api/v1/mediaLibrary/nope/asset", &[]).await;
    assert_eq!(missing.status(), 404);
    stack.finish().await;
}

#[tokio::test]
async fn status_and_job_list_answer_304_while_unchanged_and_gzip_when_asked() {
    let stack = Stack::start(Options::default()).await;
    let videos = VideoServer::start().await;
    let project = stack.project("polling").await;
    let urls: Vec<String> = (0..40)
        .map(|i| videos.url(&format!("/videos/sample.mp4?{i}")))
        .collect();
    let job = stack
        .import(&project.token, &batch("archive").urls(urls))
        .await;
    stack.wait_finished(&project.token, &job, 60).await;
    let token = &project.token;
    let status_path = format!("/api/v1/import/videos/status?id={job}");

    let first = get(&stack, token, &status_path, &[]).await;
    assert_eq!(first.status(), 200);
    let etag = first.headers()[ETAG].to_str().unwrap().to_string();
    let body: Value = first.json().await.unwrap();
    let again = get(&stack, token, &status_path, &[(IF_NONE_MATCH, &etag)]).await;
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()[ETAG], etag.as_str());
    assert!(again.bytes().await.unwrap().is_empty());

    // gzip when asked: the same JSON, compressed.
    let zipped = get(&stack, token, &status_path, &[(ACCEPT_ENCODING, "gzip")]).await;
    assert_eq!(zipped.status(), 200);
    assert_eq!(zipped.headers()[CONTENT_ENCODING], "gzip");
    let compressed = zipped.bytes().await.unwrap();
    let mut json = String::new();
    flate2::read::GzDecoder::new(&compressed[..])
        .read_to_string(&mut json)
        .expect("a gzip body");
    assert_eq!(serde_json::from_str::<Value>(&json).unwrap(), body);
    assert!(compressed.len() * 3 < json.len(), "gzip shrinks the status");

    // A change (a webhook redelivery round here) changes the tag.
    let (code, _) = stack
        .get(
            Some(token),
            &format!("/api/v1/import/videos/status?id={job}"),
        )
        .await;
    assert_eq!(code, 200);
    stack
        .sql(&format!(
            "UPDATE job_items SET attempts = attempts + 1, updated_at = now() WHERE job_id = '{job}' AND idx = 0"
        ))
        .await;
    let changed = get(&stack, token, &status_path, &[(IF_NONE_MATCH, &etag)]).await;
    assert_eq!(changed.status(), 200, "a video's tries changed");
    assert_ne!(changed.headers()[ETAG], etag.as_str());

    let list_path = "/api/v1/import/videos";
    let list = get(&stack, token, list_path, &[]).await;
    let list_tag = list.headers()[ETAG].to_str().unwrap().to_string();
    let same = get(&stack, token, list_path, &[(IF_NONE_MATCH, &list_tag)]).await;
    assert_eq!(same.status(), 304);
    stack
        .import(
            &project.token,
            &batch("archive").video(videos.url("/videos/sample.mp4"), "n"),
        )
        .await;
    let grown = get(&stack, token, list_path, &[(IF_NONE_MATCH, &list_tag)]).await;
    assert_eq!(grown.status(), 200, "a new job changes the list");
    let page: Value = grown.json().await.unwrap();
    assert_eq!(page["jobs"].as_array().unwrap().len(), 2);
    stack.finish().await;
}

#[tokio::test]
async fn a_retry_imports_exactly_the_failed_videos_and_its_webhook_carries_the_context() {
    let stack = Stack::start(Options::default()).await;
    let videos = VideoServer::start().await;
    let receiver = Receiver::start(&[]).await;
    let project = stack.project("retry").await;
    let context = json!({"myIdentifier": "batch-7", "nested": {"n": 1}});
    let job = stack
        .import(
            &project.token,
            &batch("archive")
                .webhook(&receiver.url)
                .context(context.clone())
                .video(videos.url("/videos/sample.mp4"), "good")
                .video_with(
                    videos.url("/videos/gone1.mp4"),
                    "bad1",
                    "first",
                    json!({"title": "t1"}),
                )
                .video_with(videos.url("/videos/gone2.mp4"), "bad2", "second", json!({})),
        )
        .await;
    let status = stack.wait_finished(&project.token, &job, 60).await;
    assert_eq!(status["overview"]["failed"], 2, "{status}");
    receiver.wait_for(1, 30).await;

    let retry = |job: String, query: &'static str, key: Option<&'static str>| {
        let request = stack
            .http
            .post(format!(
                "{}/api/v1/import/videos/{job}/retry{query}",
                stack.api_url
            ))
            .bearer_auth(&project.token);
        let request = match key {
            Some(key) => request.header("idempotency-key", key),
            None => request,
        };
        async move {
            let response = request.send().await.unwrap();
            let code = response.status().as_u16();
            (code, response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (code, created) = retry(job.clone(), "", Some("retry-once")).await;
    assert_eq!(code, 200, "{created}");
    let retried = created["id"].as_str().unwrap().to_string();
    assert_ne!(retried, job);
    let (code, replay) = retry(job.clone(), "", Some("retry-once")).await;
    assert_eq!(
        (code, &replay["id"]),
        (200, &created["id"]),
        "same key: same job"
    );

    let status = stack.wait_finished(&project.token, &retried, 60).await;
    assert_eq!(status["retryOf"], job.as_str());
    assert_eq!(status["systemName"], "archive");
    let ids: Vec<&str> = status["videos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["externalId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["bad1", "bad2"], "exactly the failed videos, in order");
    assert_eq!(status["videos"][0]["title"], "first");
    let hooks = receiver.wait_for(2, 30).await;
    let hook = hooks
        .iter()
        .find(|h| h.json()["id"] == retried.as_str())
        .expect("the retry's webhook");
    assert!(hook.signature_valid(&project.secret));
    assert_eq!(hook.json()["context"], context, "the original context");

    // Nothing failed: 422. Unknown job: 404. A running job: 409.
    let clean = stack
        .import(
            &project.token,
            &batch("archive").video(videos.url("/videos/sample.mp4"), "c"),
        )
        .await;
    stack.wait_finished(&project.token, &clean, 60).await;
    let (code, error) = retry(clean, "", None).await;
    assert_eq!(code, 422, "{error}");
    assert_eq!(retry("nope".into(), "", None).await.0, 404);
    let slow = stack
        .import(
            &project.token,
            &batch("archive").video(videos.url("/slow/2000/sample.mp4"), "s"),
        )
        .await;
    let (code, error) = retry(slow.clone(), "", None).await;
    assert_eq!(code, 409, "{error}");

    // Cancelled videos are retried only when asked.
    let response = stack
        .http
        .post(format!(
            "{}/api/v1/import/videos/{slow}/cancel",
            stack.api_url
        ))
        .bearer_auth(&project.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (code, error) = retry(slow.clone(), "", None).await;
    assert_eq!(code, 422, "only cancelled videos: {error}");
    assert!(error["error_details"]["message"]
        .as_str()
        .unwrap()
        .contains("includeCancelled"));
    let (code, created) = retry(slow, "?includeCancelled=true", None).await;
    assert_eq!(code, 200, "{created}");
    stack.finish().await;
}

/// With object storage (moto's S3 API here), videos go under the `storage.url` prefix; the
/// API streams them back, or, with `storage.presign_secs`, redirects to a presigned URL
/// that the bucket answers itself, ranges included.
#[tokio::test]
async fn with_s3_storage_the_asset_streams_or_redirects_to_a_presigned_url() {
    let s3 = OwnS3::start("vit-assets").await;
    let mut stack = Stack::start(Options {
        env: s3.env("archive/videos"),
        ..Options::default()
    })
    .await;
    let videos = VideoServer::start().await;
    let project = stack.project("s3").await;
    let job = stack
        .import(
            &project.token,
            &batch("archive").video(videos.url("/videos/sample.mp4"), "s"),
        )
        .await;
    let status = stack.wait_finished(&project.token, &job, 60).await;
    assert_eq!(status["videos"][0]["status"], "success", "{status}");
    let media_id = status["videos"][0]["video"]["mediaId"].as_str().unwrap();
    let keys = s3.keys().await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(
        keys[0].starts_with("archive/videos/"),
        "stored under storage.url's prefix: {keys:?}"
    );
    let expected = fixture("sample.mp4");
    let path = format!("/api/v1/mediaLibrary/{media_id}/asset");

    let streamed = get(&stack, &project.token, &path, &[(RANGE, "bytes=10-19")]).await;
    assert_eq!(streamed.status(), 206);
    assert_eq!(streamed.bytes().await.unwrap(), &expected[10..20]);

    let presigning = stack
        .spawn_api(
            "api-presign",
            &[("VIDEO_IMPORT__STORAGE__PRESIGN_SECS", "300")],
        )
        .await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let redirect = no_redirects
        .get(format!("{presigning}{path}"))
        .bearer_auth(&project.token)
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), 307);
    assert_eq!(
        redirect.headers()[ETAG],
        format!("\"{}\"", sha256(&expected)).as_str()
    );
    let location = redirect.headers()["location"].to_str().unwrap().to_string();
    assert!(
        location.starts_with(&s3.url(&keys[0])) && location.contains("X-Amz-Expires=300"),
        "{location}"
    );
    // The presigned URL needs no token, and the bucket serves ranges itself.
    let whole = no_redirects.get(&location).send().await.unwrap();
    assert_eq!(whole.status(), 200);
    assert!(whole.bytes().await.unwrap() == expected);
    let part = no_redirects
        .get(&location)
        .header(RANGE, "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.bytes().await.unwrap(), &expected[..10]);
    // (moto does not check signatures, so a tampered URL is not tried here.)
    stack.finish().await;
}
