//! One webhook attempt: build the payload from the finished job, sign it (Standard
//! Webhooks, one signature per active secret), POST it without following redirects, and say
//! how it went.

use std::time::Duration;

use chrono::Utc;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use serde_json::value::RawValue;
use video_import_shared::netguard::{self, AddressPolicy};
use video_import_shared::retry::parse_retry_after;
use video_import_shared::store::webhooks::Due;
use video_import_shared::webhook::{self, Failure, Overview, Payload};

use crate::sign;

/// The body of `job_id`'s webhook, given its delivery and its first failed videos.
pub fn body(job_id: &str, due: &Due, failures: Vec<(String, String)>) -> anyhow::Result<Vec<u8>> {
    let job = &due.job;
    let context: Option<Box<RawValue>> = match &job.context {
        Some(text) => Some(RawValue::from_string(text.clone())?),
        None => None,
    };
    let payload = Payload {
        event_type: webhook::EVENT_TYPE.into(),
        timestamp: job.finished_at.unwrap_or(job.started_at),
        id: job_id.to_string(),
        state: job.state,
        system_name: job.system_name.clone(),
        overview: Overview {
            total: job.total,
            imported: job.imported,
            skipped: job.skipped,
            failed: job.failed,
        },
        context,
        started_at: job.started_at,
        finished_at: job.finished_at,
        failures: failures
            .into_iter()
            .map(|(external_id, reason)| Failure {
                external_id,
                reason,
            })
            .collect(),
    };
    Ok(serde_json::to_vec(&payload)?)
}

/// How one POST went.
pub enum Attempt {
    Delivered(u16),
    /// Worth retrying; with the receiver's Retry-After if it sent one.
    Failed {
        error: String,
        status: Option<u16>,
        retry_after: Option<Duration>,
    },
    /// 410 Gone: the receiver asked us to stop.
    Gone,
    /// The URL's address is one the notifier may not reach; retrying cannot help.
    Refused(String),
}

/// POSTs `body` to the delivery's URL, signed with each of its secrets, unless `policy`
/// refuses the URL's address (checked here for IP literals; names are checked by the
/// client's resolver, every address they resolve to).
pub async fn post(
    client: &reqwest::Client,
    policy: &AddressPolicy,
    due: &Due,
    body: Vec<u8>,
    timeout: Duration,
) -> Attempt {
    let url = match reqwest::Url::parse(&due.url) {
        Ok(url) => url,
        Err(e) => return Attempt::Refused(format!("the webhook URL is not valid: {e}")),
    };
    if let Err(refused) = policy.check_url(&url) {
        return Attempt::Refused(refused.0);
    }
    let timestamp = Utc::now().timestamp();
    // One signature per active secret, so receivers can rotate without downtime.
    let signature = due
        .secrets
        .iter()
        .map(|secret| sign::signature(secret, &due.webhook_id, timestamp, &body))
        .collect::<Vec<_>>()
        .join(" ");
    let response = client
        .post(url)
        .timeout(timeout)
        .header(CONTENT_TYPE, "application/json")
        .header("webhook-id", &due.webhook_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await;
    match response {
        Ok(r) if r.status().is_success() => Attempt::Delivered(r.status().as_u16()),
        Ok(r) if r.status() == reqwest::StatusCode::GONE => Attempt::Gone,
        Ok(r) => {
            let status = r.status();
            let retry_after = r
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, Utc::now()));
            let error = if status.is_redirection() {
                format!("the receiver answered {status} (redirects are not followed)")
            } else {
                format!("the receiver answered {status}")
            };
            Attempt::Failed {
                error,
                status: Some(status.as_u16()),
                retry_after,
            }
        }
        Err(e) => {
            if let Some(refused) = netguard::refusal_in(&e) {
                return Attempt::Refused(refused);
            }
            let error = if e.is_timeout() {
                format!("no answer within {} s", timeout.as_secs())
            } else {
                format!(
                    "cannot reach the receiver: {}",
                    netguard::describe(&e.without_url())
                )
            };
            Attempt::Failed {
                error,
                status: None,
                retry_after: None,
            }
        }
    }
}
