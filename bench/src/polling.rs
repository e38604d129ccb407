//! Scenario 12, status polling that costs nothing: 200 clients polling one finished
//! 1,000-video job with `If-None-Match`, then without (the full body), beside `/healthz`
//! under the same load in the same run: latency percentiles and the API's CPU per request.

use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{ETAG, IF_NONE_MATCH};
use video_import_tests::videos::fixture;
use video_import_tests::Stack;

use crate::scenarios::{batch, options, post};
use crate::servers;
use crate::Row;

const CLIENTS: usize = 200;
const SECONDS: u64 = 10;

/// Clock ticks per second of the times in /proc (`getconf CLK_TCK`, 100 on Linux).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(100.0)
}

/// CPU time (user + system) the process has used so far, in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the name.
    (field(11) + field(12)) / clock_ticks()
}

/// Seconds the machine's CPUs have spent busy so far (all but idle and iowait, summed over
/// the CPUs), from /proc/stat.
pub(crate) fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let fields: Vec<f64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let total: f64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0.0) + fields.get(4).copied().unwrap_or(0.0);
    (total - idle) / clock_ticks()
}

/// What one load measured.
struct Load {
    requests: usize,
    p50: Duration,
    p99: Duration,
    cpu_per_request: Duration,
    rate: f64,
}

impl Load {
    fn describe(&self) -> String {
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, {:.0} µs API CPU per request, {:.0} requests/s",
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            self.cpu_per_request.as_secs_f64() * 1e6,
            self.rate
        )
    }
}

/// `CLIENTS` clients sending GET `url` for `SECONDS`, with `If-None-Match: etag` when given;
/// every answer must have `expect` as its status.
async fn load(
    stack: &Stack,
    pid: u32,
    url: &str,
    token: Option<&str>,
    etag: Option<&str>,
    expect: u16,
) -> anyhow::Result<Load> {
    let until = Instant::now() + Duration::from_secs(SECONDS);
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let http = stack.http.clone();
        let (url, token, etag) = (
            url.to_string(),
            token.map(str::to_string),
            etag.map(str::to_string),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < until {
                let mut request = http.get(&url);
                if let Some(token) = &token {
                    request = request.bearer_auth(token);
                }
                if let Some(etag) = &etag {
                    request = request.header(IF_NONE_MATCH, etag);
                }
                let t = Instant::now();
                let response = request.send().await?;
                let status = response.status().as_u16();
                response.bytes().await?;
                anyhow::ensure!(status == expect, "{url} answered {status}, not {expect}");
                latencies.push(t.elapsed());
            }
            Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu_before;
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    Ok(Load {
        requests: latencies.len(),
        p50: pct(0.50),
        p99: pct(0.99),
        cpu_per_request: Duration::from_secs_f64(cpu / latencies.len() as f64),
        rate: latencies.len() as f64 / elapsed,
    })
}

/// Scenario 12.
pub async fn polling() -> anyhow::Result<Vec<Row>> {
    let stack = Stack::start(options(
        2,
        false,
        &[
            ("VIDEO_IMPORT__FETCH__CONCURRENCY", "64"),
            // The 200 clients stand for 200 machines but all come from 127.0.0.1.
            ("VIDEO_IMPORT__API__MAX_CONNECTIONS_PER_CLIENT", "0"),
        ],
    ))
    .await;
    let project = stack.project("bench").await;
    let base = servers::videos(Bytes::from(fixture("bench16k.mp4")), Duration::ZERO).await;
    let job = post(&stack, &project, &batch(&base, 0, 1000, None)).await?;
    let status = stack.wait_finished(&project.token, &job, 600).await;
    anyhow::ensure!(status["overview"]["imported"] == 1000, "{status}");
    let url = format!("{}/api/v1/import/videos/status?id={job}", stack.api_url);
    let first = stack
        .http
        .get(&url)
        .bearer_auth(&project.token)
        .send()
        .await?;
    let etag = first
        .headers()
        .get(ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("the status has no ETag"))?;
    let body = first.bytes().await?.len();
    let pid = stack.pid("api").expect("api running");
    let healthz = format!("{}/healthz", stack.api_url);

    let health = load(&stack, pid, &healthz, None, None, 200).await?;
    println!("/healthz, {CLIENTS} clients: {}", health.describe());
    let cheap = load(&stack, pid, &url, Some(&project.token), Some(&etag), 304).await?;
    println!(
        "status with If-None-Match (304), {CLIENTS} clients: {}",
        cheap.describe()
    );
    let full = load(&stack, pid, &url, Some(&project.token), None, 200).await?;
    println!(
        "status without (200, {body} bytes), {CLIENTS} clients: {}",
        full.describe()
    );
    println!(
        "requests: healthz {}, 304 {}, full {}",
        health.requests, cheap.requests, full.requests
    );
    stack.finish().await;
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    Ok(vec![Row {
        scenario: "12 polling: 200 clients polling one finished 1,000-video job",
        figure: format!(
            "If-None-Match (304): {}; full body ({} KiB): p99 {}, {:.0} µs CPU",
            cheap.describe(),
            body / 1024,
            ms(full.p99),
            full.cpu_per_request.as_secs_f64() * 1e6
        ),
        baseline: format!("/healthz under the same load: {}", health.describe()),
        ratio: format!(
            "304 p99 {:.2} × healthz p99, CPU {:.2} × healthz",
            cheap.p99.as_secs_f64() / health.p99.as_secs_f64(),
            cheap.cpu_per_request.as_secs_f64() / health.cpu_per_request.as_secs_f64()
        ),
        target: "304 polls cost about what /healthz costs",
    }])
}
