//! Operations as an operator sees them: a real Prometheus scrapes the three binaries of a
//! running stack; promtool finds every scrape clean; every dashboard panel and alert rule
//! parses and evaluates, and the panels return data.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use video_import_tests::receiver::Receiver;
use video_import_tests::videos::VideoServer;
use video_import_tests::{batch, free_port, Kind, Options, Stack};

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// Runs `promtool check metrics` on `text`; its verdict.
async fn promtool_check(text: &str) -> (bool, String) {
    let mut child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; .ci/run installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .await
        .unwrap();
    let out = child.wait_with_output().await.unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// `text` percent-encoded for a query string.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Asks Prometheus at `base` for the instant value of `expr`.
async fn query(http: &reqwest::Client, base: &str, expr: &str) -> Value {
    http.get(format!("{base}/api/v1/query?query={}", encode(expr)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn prometheus_scrapes_every_binary_and_the_dashboard_and_alerts_work() {
    let stack = Stack::start(Options::default()).await;
    let videos = VideoServer::start().await;
    let receiver = Receiver::start(&[]).await;
    let project = stack.project("observed").await;
    let body = batch("archive")
        .webhook(&receiver.url)
        .video_with(videos.url("/videos/sample.mp4"), "a", "a", json!({}))
        .video_with(videos.url("/videos/other.mp4"), "b", "b", json!({}))
        .video_with(videos.url("/videos/missing.mp4"), "c", "c", json!({}));
    let job = stack.import(&project.token, &body).await;
    stack.wait_finished(&project.token, &job, 30).await;
    receiver.wait_for(1, 30).await;

    // Every scrape is clean, namespaced, and has the process and build families.
    for (job, address) in &stack.scrape_targets {
        let text = stack.metrics(address).await;
        let (clean, said) = promtool_check(&text).await;
        assert!(clean, "{job}: promtool check metrics: {said}");
        assert!(text.contains("video_import_build_info{"), "{job}");
        assert!(text.contains("process_resident_memory_bytes"), "{job}");
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split(' ').nth(2).unwrap();
            assert!(
                name.starts_with("video_import_") || name.starts_with("process_"),
                "{job}: {name} has no namespace"
            );
        }
    }

    // A real Prometheus, started by deploy/observe.sh as an operator would, scrapes all
    // three every second and evaluates the alert rules.
    let dir = stack.dir.join("prometheus");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut observe = tokio::process::Command::new(repo("deploy/observe.sh"));
    observe.args([
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--scrape-interval",
        "1s",
        "--data",
        &dir.display().to_string(),
    ]);
    for (job, address) in &stack.scrape_targets {
        let flag = match job.as_str() {
            "video-import-api" => "--api",
            "video-import-worker" => "--worker",
            _ => "--notifier",
        };
        observe.args([flag, address]);
    }
    std::fs::create_dir_all(&dir).unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let _prometheus = observe
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("deploy/observe.sh (Debian's prometheus package; .ci/run installs it)");
    let targets = stack.scrape_targets.len();
    let up_query = format!("{base}/api/v1/query?query={}", encode("sum(up)"));
    stack
        .poll_until(
            "Prometheus to scrape every binary",
            Duration::from_secs(20),
            async || {
                let answer = match stack.http.get(&up_query).send().await {
                    Ok(answer) => answer.json().await.unwrap_or(Value::Null),
                    Err(e) => return Err(format!("Prometheus: {e}")),
                };
                let up: usize = answer["data"]["result"][0]["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if up == targets {
                    Ok(())
                } else {
                    Err(format!("{up} of {targets} targets up"))
                }
            },
        )
        .await;
    // A few more scrapes, so that rates have two samples.
    tokio::time::sleep(Duration::from_secs(4)).await;

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo("deploy/grafana/video-import.json")).unwrap(),
    )
    .unwrap();
    let mut panels = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let answer = query(&stack.http, &base, expr).await;
            assert_eq!(
                answer["status"], "success",
                "{}: {expr}: {answer}",
                panel["title"]
            );
            assert!(
                !answer["data"]["result"].as_array().unwrap().is_empty(),
                "{} returns no data: {expr}",
                panel["title"]
            );
            panels += 1;
        }
    }
    assert!(panels >= 15, "{panels} panel queries");

    // Every alert rule was evaluated without error.
    let rules_url = format!("{base}/api/v1/rules");
    let rules: Vec<Value> = stack
        .poll_until(
            "every alert rule evaluated",
            Duration::from_secs(10),
            async || {
                let answer: Value = stack
                    .http
                    .get(&rules_url)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let rules: Vec<Value> = answer["data"]["groups"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|g| g["rules"].as_array().unwrap().clone())
                    .collect();
                let unknown = rules.iter().filter(|r| r["health"] == "unknown").count();
                if !rules.is_empty() && unknown == 0 {
                    Ok(rules)
                } else {
                    Err(format!(
                        "{} rules, {unknown} not evaluated yet",
                        rules.len()
                    ))
                }
            },
        )
        .await;
    assert!(rules.len() >= 12, "{} rules loaded", rules.len());
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "{rule}");
        let answer = query(&stack.http, &base, rule["query"].as_str().unwrap()).await;
        assert_eq!(answer["status"], "success", "{rule}");
    }
    // Nothing is wrong with this stack: no alert fires.
    let firing: Vec<&Value> = rules.iter().filter(|r| r["state"] == "firing").collect();
    assert!(firing.is_empty(), "{firing:?}");
    receiver.assert_all_signed_by(&project.secret);
    stack.finish().await;
}

#[tokio::test]
async fn one_trace_id_follows_a_job_through_all_three_binaries() {
    let stack = Stack::start(Options {
        env: vec![("VIDEO_IMPORT__LOG__FORMAT".into(), "json".into())],
        ..Options::default()
    })
    .await;
    let videos = VideoServer::start().await;
    let receiver = Receiver::start(&[]).await;
    let project = stack.project("traced").await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let body = batch("archive").webhook(&receiver.url).video_with(
        videos.url("/videos/sample.mp4"),
        "t1",
        "t",
        json!({}),
    );
    let accepted: Value = stack
        .http
        .post(format!("{}/api/v1/import/videos", stack.api_url))
        .bearer_auth(&project.token)
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job = accepted["id"].as_str().unwrap();
    stack.wait_finished(&project.token, job, 30).await;
    receiver.wait_for(1, 30).await;
    stack.wait_webhook(&project.token, job, "delivered").await;
    let processes = [Kind::Api, Kind::Worker, Kind::Notifier].map(|kind| {
        let running = stack.running(kind);
        assert_eq!(running.len(), 1, "one {kind:?}");
        running[0].name.clone()
    });
    for name in &processes {
        let log = stack.log(name);
        let traced: Vec<Value> = log
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|line| line.to_string().contains(trace_id))
            .collect();
        assert!(
            !traced.is_empty(),
            "{name} logged nothing with the trace id:\n{log}"
        );
        assert!(
            traced.iter().any(|l| l.to_string().contains(job)),
            "{name}: the traced lines are about the job"
        );
    }
    receiver.assert_all_signed_by(&project.secret);
    stack.finish().await;
}

/// `healthcheck` (the image's and compose's health check: the image has no curl) exits 0
/// while the binary's own `/readyz` answers 200 and 1 once it is gone.
#[tokio::test]
async fn each_binarys_healthcheck_says_whether_its_process_is_ready() {
    let mut stack = Stack::start(Options::default()).await;
    for proc in [
        stack.running(Kind::Api)[0].clone(),
        stack.running(Kind::Worker)[0].clone(),
        stack.running(Kind::Notifier)[0].clone(),
    ] {
        let (binary, key) = match proc.kind {
            Kind::Api => ("video-import-api", "VIDEO_IMPORT__API__LISTEN"),
            Kind::Worker => ("video-import-worker", "VIDEO_IMPORT__METRICS__LISTEN"),
            _ => ("video-import-notifier", "VIDEO_IMPORT__METRICS__LISTEN"),
        };
        // The wildcard address, as in the image: the check asks on loopback.
        let listen = format!("0.0.0.0:{}", proc.metrics_port);
        let check = async |stack: &Stack| {
            stack
                .run_binary(binary, &["healthcheck"], &[(key, listen.as_str())])
                .await
        };
        let ready = check(&stack).await;
        assert!(ready.status.success(), "{binary}: {}", ready.stderr);
        stack.kill(&proc.name).await;
        let gone = check(&stack).await;
        assert_eq!(
            gone.status.code(),
            Some(1),
            "{binary} after its process is gone"
        );
        assert!(gone.stderr.contains("not ready"), "{}", gone.stderr);
    }
    stack.finish().await;
}
