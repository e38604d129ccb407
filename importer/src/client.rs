//! Talking to the API: posting a batch with its Idempotency-Key and reading a job's status.
//! 429s wait for their `Retry-After` (and say so); 5xx answers and network errors are
//! retried with exponential back-off (backon); other 4xx answers are the batch's own fault
//! and come back with the API's field errors.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use serde_json::Value;

/// Longest wait for one 429 (the daily limit can ask for hours: we wait, and say so).
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

/// Why a request did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The API refused the request (4xx other than 429): its error body.
    #[error("the API refused it ({status}): {body}")]
    Refused { status: u16, body: Value },
    /// Network errors and 5xx answers that outlasted the retries.
    #[error("{0}")]
    Failed(String),
}

/// Something worth showing while a call waits.
pub trait Notice: Sync {
    /// The API asked us to wait `secs` seconds (`why` says for what).
    fn waiting(&self, secs: u64, why: &str);
}

/// An API client for one token.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// A transient failure, worth another try.
#[derive(Debug)]
struct Transient(String);

impl Api {
    /// A client of the API at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str, token: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .user_agent(concat!("video-import/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
        })
    }

    /// Posts `batch` under `key`; the job id.
    pub async fn import(
        &self,
        batch: &Value,
        key: &str,
        notice: &dyn Notice,
    ) -> Result<String, CallError> {
        let body = serde_json::to_vec(batch).expect("a batch serializes");
        let answer = self
            .call(notice, || {
                self.http
                    .post(format!("{}/api/v1/import/videos", self.base))
                    .header(AUTHORIZATION, format!("Bearer {}", self.token))
                    .header(CONTENT_TYPE, "application/json")
                    .header("Idempotency-Key", key)
                    .body(body.clone())
            })
            .await?;
        answer["id"].as_str().map(str::to_string).ok_or_else(|| {
            CallError::Failed(format!("the API answered without a job id: {answer}"))
        })
    }

    /// Asks for a job of the failed videos of job `id` (also the cancelled ones with
    /// `include_cancelled`); the new job's id. The Idempotency-Key names the job, so asking
    /// again (a lost answer, the command run twice) never makes a second retry of it.
    pub async fn retry(
        &self,
        id: &str,
        include_cancelled: bool,
        notice: &dyn Notice,
    ) -> Result<String, CallError> {
        let query = if include_cancelled {
            "?includeCancelled=true"
        } else {
            ""
        };
        let key = format!("video-import-retry-{id}{query}");
        let answer = self
            .call(notice, || {
                self.http
                    .post(format!(
                        "{}/api/v1/import/videos/{id}/retry{query}",
                        self.base
                    ))
                    .header(AUTHORIZATION, format!("Bearer {}", self.token))
                    .header("Idempotency-Key", key.as_str())
            })
            .await?;
        answer["id"].as_str().map(str::to_string).ok_or_else(|| {
            CallError::Failed(format!("the API answered without a job id: {answer}"))
        })
    }

    /// The status of job `id`.
    pub async fn status(&self, id: &str, notice: &dyn Notice) -> Result<Value, CallError> {
        self.call(notice, || {
            self.http
                .get(format!("{}/api/v1/import/videos/status?id={id}", self.base))
                .header(AUTHORIZATION, format!("Bearer {}", self.token))
        })
        .await
    }

    /// Sends the request `build` makes until it succeeds, waits out 429s, retries transient
    /// failures with back-off.
    async fn call(
        &self,
        notice: &dyn Notice,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Value, CallError> {
        loop {
            let once = || async {
                let response = build()
                    .send()
                    .await
                    .map_err(|e| Transient(format!("cannot reach the API: {}", e.without_url())))?;
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok());
                let bytes = response.bytes().await.unwrap_or_default();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                if status.is_server_error() {
                    return Err(Transient(format!("the API answered {status}: {body}")));
                }
                Ok((status, retry_after, body))
            };
            let backoff = ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(500))
                .with_max_delay(Duration::from_secs(30))
                .with_max_times(8)
                .with_jitter();
            let (status, retry_after, body) = once
                .retry(backoff)
                .notify(|e: &Transient, delay| {
                    notice.waiting(delay.as_secs().max(1), &format!("{}; trying again", e.0))
                })
                .await
                .map_err(|e| CallError::Failed(e.0))?;
            if status == StatusCode::TOO_MANY_REQUESTS {
                let secs = retry_after.unwrap_or(5).clamp(1, MAX_WAIT.as_secs());
                let why = if body.is_array() {
                    "the project's daily limit"
                } else {
                    "the rate limit"
                };
                notice.waiting(secs, why);
                tokio::time::sleep(Duration::from_secs(secs)).await;
                continue;
            }
            if status.is_success() {
                return Ok(body);
            }
            return Err(CallError::Refused {
                status: status.as_u16(),
                body,
            });
        }
    }
}
