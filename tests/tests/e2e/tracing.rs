//! Traces exported over OTLP/HTTP, as an operator's collector (Jaeger, Tempo) receives them:
//! one trace per job across the API, the worker and the notifier, with the trace id the job
//! stored and every log line printed; and a dead or stuck collector costs nothing but spans,
//! which are counted.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use video_import_tests::otlp::{Collector, ReceivedSpan, SilentCollector};
use video_import_tests::receiver::Receiver;
use video_import_tests::videos::VideoServer;
use video_import_tests::{batch, free_port, Kind, Options, Stack};

const ENDPOINT: &str = "VIDEO_IMPORT__TELEMETRY__OTLP_ENDPOINT";

fn options(env: &[(&str, &str)]) -> Options {
    Options::with_env(env)
}

/// The value of the series `series` (name and labels, as `/metrics` writes them) in `text`.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

const EXPORTED: &str = "video_import_trace_spans_exported_total";
const QUEUE_FULL: &str = "video_import_trace_spans_dropped_total{reason=\"queue_full\"}";
const EXPORT_FAILED: &str = "video_import_trace_spans_dropped_total{reason=\"export_failed\"}";
const FAILURES: &str = "video_import_trace_export_failures_total";

/// The spans of `job` (the `job` field of the API's request span, the worker's video spans
/// and the notifier's webhook spans).
fn of_job<'a>(spans: &'a [ReceivedSpan], job: &str, name: &str) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.name == name && s.attribute("job") == job)
        .collect()
}

/// The `trace_id` values the JSON log lines that mention `job` carry, in any of their spans.
fn logged_trace_ids(log: &str, job: &str) -> BTreeSet<String> {
    log.lines()
        .filter(|line| line.contains(job))
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .flat_map(|line| {
            let mut spans: Vec<Value> = line["spans"].as_array().cloned().unwrap_or_default();
            spans.push(line["span"].clone());
            spans
        })
        .filter_map(|span| span["trace_id"].as_str().map(str::to_string))
        .filter(|id| !id.is_empty())
        .collect()
}

#[tokio::test]
async fn a_job_s_spans_from_api_worker_and_notifier_form_one_trace_with_its_stored_id() {
    let collector = Collector::start().await;
    let stack = Stack::start(options(&[
        (ENDPOINT, &collector.url),
        ("VIDEO_IMPORT__LOG__FORMAT", "json"),
    ]))
    .await;
    let videos = VideoServer::start().await;
    // The first attempt fails: the retry's span is the first attempt's child.
    let receiver = Receiver::start(&[500]).await;
    let project = stack.project("traced").await;
    let body = batch("archive")
        .webhook(&receiver.url)
        .video_with(videos.url("/videos/sample.mp4"), "a", "a", json!({}))
        .video_with(videos.url("/videos/missing.mp4"), "b", "b", json!({}));
    let job = stack.import(&project.token, &body).await;
    // A caller that sends its own traceparent: that job's trace is the caller's, its request
    // span the caller's span's child.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let accepted: Value = stack
        .http
        .post(format!("{}/api/v1/import/videos", stack.api_url))
        .bearer_auth(&project.token)
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .json(&batch("archive").video_with(videos.url("/videos/other.mp4"), "c", "c", json!({})))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let called = accepted["id"].as_str().unwrap().to_string();
    stack.wait_finished(&project.token, &job, 30).await;
    stack.wait_finished(&project.token, &called, 30).await;
    receiver.wait_for(2, 30).await;
    stack.wait_webhook(&project.token, &job, "delivered").await;
    let rows = stack
        .sql(&format!("SELECT trace_id FROM jobs WHERE id = '{job}'"))
        .await;
    let trace_id: String = rows[0].get(0);

    // Spans go out in batches (every few seconds): wait for the job's from all three.
    let spans = collector
        .wait_for(
            "the jobs' spans from the API, the worker and the notifier",
            Duration::from_secs(30),
            |spans| {
                let counts = [
                    of_job(spans, &job, "request").len(),
                    of_job(spans, &job, "video").len(),
                    of_job(spans, &job, "webhook").len() / 2,
                    of_job(spans, &called, "request").len(),
                    of_job(spans, &called, "video").len(),
                ];
                if counts[0] >= 1
                    && counts[1] >= 2
                    && counts[2] >= 1
                    && counts[3] >= 1
                    && counts[4] >= 1
                {
                    Ok(())
                } else {
                    Err(format!(
                        "request, video, webhook, caller's request, video: {counts:?} of {} spans",
                        spans.len()
                    ))
                }
            },
        )
        .await;

    // The API's request span is the root of the job's trace, whose id the job stored.
    let requests = of_job(&spans, &job, "request");
    assert_eq!(requests.len(), 1, "{requests:?}");
    let request = requests[0];
    assert_eq!(request.trace_id, trace_id);
    assert_eq!(request.parent_span_id, "", "a root: {request:?}");
    assert_eq!(request.service, "video-import-api");
    assert_eq!(request.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(request.attribute("http.route"), "/api/v1/import/videos");
    assert_eq!(request.attribute("http.request.method"), "POST");
    assert_eq!(request.attribute("http.response.status_code"), "200");
    // What the log lines print as trace_id is the exported trace id.
    assert_eq!(request.attribute("trace_id"), trace_id);

    // Each video's span is the request span's child, in the worker.
    let video_spans = of_job(&spans, &job, "video");
    assert_eq!(video_spans.len(), 2, "one try each: {video_spans:?}");
    for video in &video_spans {
        assert_eq!(video.service, "video-import-worker");
        assert_eq!(video.trace_id, trace_id);
        assert_eq!(video.parent_span_id, request.span_id, "{video:?}");
        assert_eq!(video.attribute("trace_id"), trace_id);
    }

    // The webhook delivery is in the same trace: its first attempt the child of the video
    // that finished the job, its retry the child of the first attempt.
    let attempts = of_job(&spans, &job, "webhook");
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    let first = attempts
        .iter()
        .find(|a| a.attribute("attempt") == "1")
        .unwrap();
    let retry = attempts
        .iter()
        .find(|a| a.attribute("attempt") == "2")
        .unwrap();
    for attempt in [first, retry] {
        assert_eq!(attempt.service, "video-import-notifier");
        assert_eq!(attempt.trace_id, trace_id);
        assert_eq!(attempt.attribute("trace_id"), trace_id);
    }
    assert!(
        video_spans
            .iter()
            .any(|v| v.span_id == first.parent_span_id),
        "the first attempt's parent is one of the job's video spans: {first:?}"
    );
    assert_eq!(retry.parent_span_id, first.span_id);

    // The caller's trace goes on: its request span is the caller's span's child.
    let called_request = of_job(&spans, &called, "request")[0];
    assert_eq!(called_request.trace_id, caller_trace);
    assert_eq!(called_request.parent_span_id, caller_span);
    let called_video = of_job(&spans, &called, "video")[0];
    assert_eq!(called_video.trace_id, caller_trace);
    assert_eq!(called_video.parent_span_id, called_request.span_id);

    // Every log line about the job, in each binary, carries the exported trace id.
    for (kind, name) in [
        (Kind::Api, "api"),
        (Kind::Worker, "worker0"),
        (Kind::Notifier, "notifier0"),
    ] {
        assert_eq!(stack.running(kind)[0].name, name);
        let logged = logged_trace_ids(&stack.log(name), &job);
        assert_eq!(
            logged,
            BTreeSet::from([trace_id.clone()]),
            "{name}'s log lines about {job}"
        );
    }

    // Health checks and scrapes (the harness polled /readyz) are not exported.
    assert!(
        spans.iter().all(|s| s.name != "probe"
            && !matches!(s.attribute("url.path"), "/readyz" | "/healthz" | "/metrics")),
        "probes exported"
    );
    // OTLP/HTTP with protobuf bodies, compressed.
    for (content_type, encoding) in collector.requests() {
        assert_eq!(
            (content_type.as_str(), encoding.as_str()),
            ("application/x-protobuf", "gzip")
        );
    }
    // Counted, none lost.
    for (job_name, address) in &stack.scrape_targets {
        let text = stack.metrics(address).await;
        assert!(metric(&text, EXPORTED) >= 1.0, "{job_name}: {text}");
        assert_eq!(metric(&text, QUEUE_FULL), 0.0, "{job_name}");
        assert_eq!(metric(&text, EXPORT_FAILED), 0.0, "{job_name}");
    }
    receiver.assert_all_signed_by(&project.secret);
    stack.finish().await;
}

#[tokio::test]
async fn a_dead_or_stuck_collector_costs_nothing_but_spans_which_are_counted() {
    // Nothing listens there.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let mut stack = Stack::start(options(&[
        (ENDPOINT, &dead),
        ("VIDEO_IMPORT__TELEMETRY__EXPORT_TIMEOUT_SECS", "2"),
    ]))
    .await;
    let videos = VideoServer::start().await;
    let receiver = Receiver::start(&[]).await;
    let project = stack.project("untraced").await;
    let body = batch("archive").webhook(&receiver.url).video_with(
        videos.url("/videos/sample.mp4"),
        "a",
        "a",
        json!({}),
    );
    let job = stack.import(&project.token, &body).await;
    let status = stack.wait_finished(&project.token, &job, 30).await;
    assert_eq!(status["state"], "success", "{status}");
    stack.wait_webhook(&project.token, &job, "delivered").await;

    // Every binary tried, failed, and counted the spans it could not export.
    for (binary, address) in stack.scrape_targets.clone() {
        let what = format!("{binary} to count its failed exports");
        stack
            .poll_until(&what, Duration::from_secs(30), async || {
                let text = stack.metrics(&address).await;
                let (failed, failures) = (metric(&text, EXPORT_FAILED), metric(&text, FAILURES));
                if failed >= 1.0 && failures >= 1.0 {
                    Ok(())
                } else {
                    Err(format!("{failed} spans dropped, {failures} failed exports"))
                }
            })
            .await;
    }
    let worker = stack.running(Kind::Worker)[0].name.clone();
    assert!(
        stack.log(&worker).contains("cannot export spans"),
        "the worker says why spans are lost"
    );

    // A collector that accepts but never answers, and a queue of two spans: requests are
    // answered as ever, and the spans beyond the queue are dropped and counted.
    let stuck = SilentCollector::start().await;
    let api = stack
        .spawn_api(
            "api-stuck",
            &[
                (ENDPOINT, &stuck.url),
                ("VIDEO_IMPORT__TELEMETRY__QUEUE_SIZE", "2"),
            ],
        )
        .await;
    let status_url = format!("{api}/api/v1/import/videos/status?id={job}");
    for _ in 0..10 {
        let answer = stack
            .http
            .get(&status_url)
            .bearer_auth(&project.token)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    let address = api.trim_start_matches("http://").to_string();
    stack
        .poll_until(
            "the stuck collector's API to count spans beyond its queue",
            Duration::from_secs(10),
            async || {
                let text = stack.metrics(&address).await;
                let full = metric(&text, QUEUE_FULL);
                if full >= 1.0 {
                    Ok(())
                } else {
                    Err(format!("{full} dropped"))
                }
            },
        )
        .await;
    // Stopping waits for the stuck collector no longer than the export timeout (2 s here):
    // a binary that waited for it would not stop at all.
    let stopping = Instant::now();
    let exit = stack.terminate("api-stuck").await;
    eprintln!(
        "the API with a stuck collector stopped in {:?}",
        stopping.elapsed()
    );
    assert!(exit.success(), "{exit}\n{}", stack.log("api-stuck"));
    assert!(
        stopping.elapsed() < Duration::from_secs(20),
        "stopped after {:?}",
        stopping.elapsed()
    );
    receiver.assert_all_signed_by(&project.secret);
    stack.finish().await;
}
