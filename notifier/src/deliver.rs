//! Delivering one job's webhook: build the payload from PostgreSQL, sign it, POST it without
//! following redirects, record the attempt, and schedule the next one through a delay queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use futures::future::BoxFuture;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};
use rand::Rng;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use video_import_shared::config::Settings;
use video_import_shared::consume::{self, ConsumerConfig, Disposition};
use video_import_shared::messages::DeliverWebhook;
use video_import_shared::netguard::{self, AddressPolicy, ClientOptions};
use video_import_shared::ops::{self, Ops};
use video_import_shared::queue::{self, Outgoing, Publisher, Topology};
use video_import_shared::retry::until_ok;
use video_import_shared::{db, shutdown};

use crate::sign;

/// Most failed videos listed in one payload.
const MAX_FAILURES: i64 = 100;

/// How long a delivery may wait in process for a slot of its receiver's host.
const HOST_WAIT: Duration = Duration::from_secs(1);

/// How long a delivery first waits when its receiver's host has all its slots in use; it
/// doubles with each further wait (up to 16 times), so a dead host costs little.
const HOST_BUSY_DELAY: Duration = Duration::from_secs(5);

struct Notifier {
    hosts: HostSlots,
    pool: Pool,
    client: reqwest::Client,
    publisher: Arc<Publisher>,
    schedule: Vec<Duration>,
    metrics: Metrics,
    shutdown: CancellationToken,
}

#[derive(Clone)]
struct Metrics {
    deliveries: IntCounterVec,
    seconds: Histogram,
}

/// Runs the notifier until SIGTERM.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let shutdown = shutdown::on_signal();
    let pool = db::connect(&settings.database).await?;
    let topology = Topology::new(&settings.amqp.prefix);
    let publisher = Arc::new(Publisher::new(&settings.amqp.url, topology.clone()));
    let registry = Registry::new();
    let deliveries = IntCounterVec::new(
        Opts::new(
            "webhook_attempts_total",
            "Webhook attempts by result: delivered, retry, failed",
        ),
        &["result"],
    )?;
    let seconds = Histogram::with_opts(
        HistogramOpts::new(
            "webhook_attempt_duration_seconds",
            "Time of one webhook POST",
        )
        .buckets(vec![0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 30.0]),
    )?;
    registry.register(Box::new(deliveries.clone()))?;
    registry.register(Box::new(seconds.clone()))?;
    let client = netguard::client(
        AddressPolicy::new(
            settings.webhook.allow_private_networks,
            &settings.webhook.allowed_networks,
        ),
        &ClientOptions {
            connect_timeout: Duration::from_secs(settings.webhook.timeout_secs.min(10)),
            read_timeout: Duration::from_secs(settings.webhook.timeout_secs),
            // A receiver's redirect is an answer, not an instruction: never followed.
            max_redirects: 0,
            user_agent: concat!("video-import-notifier/", env!("CARGO_PKG_VERSION")).into(),
        },
    )?;
    let ops_task = tokio::spawn(ops::serve(
        settings.metrics.listen.clone(),
        Ops {
            pool: pool.clone(),
            publisher: publisher.clone(),
            registry,
        },
        shutdown.clone(),
    ));
    let notifier = Arc::new(Notifier {
        hosts: HostSlots::new(settings.webhook.per_host_concurrency),
        pool,
        client,
        publisher,
        schedule: settings
            .webhook
            .retry_schedule_secs
            .iter()
            .map(|s| Duration::from_secs(*s))
            .collect(),
        metrics: Metrics {
            deliveries,
            seconds,
        },
        shutdown: shutdown.clone(),
    });
    let timeout = Duration::from_secs(settings.webhook.timeout_secs);
    let handler: consume::Handler = Arc::new(move |message| -> BoxFuture<'static, Disposition> {
        let notifier = notifier.clone();
        Box::pin(async move { notifier.handle(&message.data, timeout).await })
    });
    consume::run(
        ConsumerConfig {
            url: settings.amqp.url.clone(),
            queue: topology.queue(queue::WEBHOOK),
            topology,
            prefetch: settings.webhook.concurrency.min(u16::MAX as usize) as u16,
            grace: timeout + Duration::from_secs(5),
        },
        handler,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    ops_task.await??;
    Ok(())
}

/// The webhook body.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Payload<'a> {
    id: &'a str,
    state: &'a str,
    system_name: &'a str,
    overview: Overview,
    /// The caller's context, byte for byte.
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<&'a RawValue>,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    failures: Vec<Failure>,
}

#[derive(Serialize)]
struct Overview {
    total: i32,
    imported: i32,
    skipped: i32,
    failed: i32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Failure {
    external_id: String,
    reason: String,
}

/// A delivery ready to send.
struct Prepared {
    webhook_id: String,
    url: String,
    /// The current secret, then the previous one while a rotation overlaps.
    secrets: Vec<String>,
    body: Vec<u8>,
    /// Attempts made before the current round (redelivery starts a new round).
    round_start: u32,
}

/// How one POST went.
enum Attempt {
    Delivered(u16),
    /// Worth retrying; with the receiver's Retry-After if it sent one.
    Failed {
        error: String,
        status: Option<u16>,
        retry_after: Option<Duration>,
    },
    /// 410 Gone: the receiver asked us to stop.
    Gone,
}

impl Notifier {
    async fn handle(&self, data: &[u8], timeout: Duration) -> Disposition {
        let message: DeliverWebhook = match serde_json::from_slice(data) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, body = %String::from_utf8_lossy(data), "dropping unreadable webhook message");
                return Disposition::Ack;
            }
        };
        // A receiver that is slow or down may hold only a few slots; its other deliveries
        // wait in the delay queue instead of blocking deliveries to everyone else. With the
        // URL in the message, that is decided before touching the database.
        let early = match &message.url {
            Some(url) => match self.hosts.acquire(url).await {
                Some(permit) => Some(permit),
                None => return self.wait_for_host(&message, url).await,
            },
            None => None,
        };
        let prepared = match until_ok(&self.shutdown, || self.prepare(&message)).await {
            Some(Some(p)) => p,
            Some(None) => return Disposition::Ack, // delivered, given up, or this attempt was made
            None => return Disposition::Requeue,
        };
        let _permit = match early {
            Some(permit) => permit,
            None => match self.hosts.acquire(&prepared.url).await {
                Some(permit) => permit,
                None => return self.wait_for_host(&message, &prepared.url).await,
            },
        };
        let started = Instant::now();
        let attempt = self.post(&prepared, timeout).await;
        let elapsed = started.elapsed();
        self.metrics.seconds.observe(elapsed.as_secs_f64());

        // Position in the retry schedule, counted from the start of this round.
        let made = (message.attempt - prepared.round_start.min(message.attempt - 1)) as usize;
        let next_delay = match &attempt {
            Attempt::Failed { retry_after, .. } => self
                .schedule
                .get(made - 1)
                .map(|d| jitter(*d).max(retry_after.unwrap_or_default())),
            _ => None,
        };
        if let Some(delay) = next_delay {
            // Schedule first: if we crash before recording, the redelivered message repeats
            // this attempt instead of losing the retry.
            let next = DeliverWebhook {
                job_id: message.job_id.clone(),
                attempt: message.attempt + 1,
                waited: 0,
                url: Some(prepared.url.clone()),
            };
            if self.publish_after(&next, delay).await == Disposition::Requeue {
                return Disposition::Requeue;
            }
        }
        let result = match (&attempt, next_delay) {
            (Attempt::Delivered(_), _) => "delivered",
            (_, Some(_)) => "retry",
            _ => "failed",
        };
        self.metrics.deliveries.with_label_values(&[result]).inc();
        match &attempt {
            Attempt::Delivered(status) => {
                tracing::info!(job = %message.job_id, attempt = message.attempt, status, "webhook delivered")
            }
            Attempt::Failed { error, .. } => {
                tracing::info!(job = %message.job_id, attempt = message.attempt, %error, retry_in = ?next_delay, "webhook attempt failed")
            }
            Attempt::Gone => {
                tracing::info!(job = %message.job_id, "webhook receiver answered 410 Gone; not retrying")
            }
        }
        match until_ok(&self.shutdown, || {
            self.record(&message, &attempt, next_delay.is_some(), made, elapsed)
        })
        .await
        {
            Some(()) => Disposition::Ack,
            None => Disposition::Requeue,
        }
    }

    /// Sends the delivery to the delay queue because its host has no free slot; each
    /// further wait doubles (5 s up to 80 s).
    async fn wait_for_host(&self, message: &DeliverWebhook, url: &str) -> Disposition {
        let delay = HOST_BUSY_DELAY * 2u32.pow(message.waited.min(4));
        let later = DeliverWebhook {
            waited: message.waited + 1,
            url: Some(url.to_string()),
            ..message.clone()
        };
        self.publish_after(&later, jitter(delay)).await
    }

    /// Publishes `next` to be handled after `delay`.
    async fn publish_after(&self, next: &DeliverWebhook, delay: Duration) -> Disposition {
        let outgoing = Outgoing {
            routing_key: queue::WEBHOOK.into(),
            payload: serde_json::to_vec(next).expect("messages serialize"),
            delay: Some(delay),
        };
        match self.publisher.publish(&[outgoing]).await {
            Ok(()) => Disposition::Ack,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot schedule the webhook; handing the message back");
                Disposition::Requeue
            }
        }
    }

    /// Loads the job and builds the signed body; `None` if there is nothing to send.
    async fn prepare(&self, message: &DeliverWebhook) -> anyhow::Result<Option<Prepared>> {
        let client = self.pool.get().await?;
        let statement = client
            .prepare_cached(
                "SELECT d.state, d.attempts, d.webhook_id, d.url, p.webhook_secret,
                        j.state, j.system_name, j.total, j.imported, j.skipped, j.failed,
                        j.context, j.started_at, j.finished_at, d.round_start,
                        CASE WHEN p.previous_secret_expires_at > now() THEN p.previous_secret END
                 FROM webhook_deliveries d JOIN jobs j ON j.id = d.job_id
                 JOIN projects p ON p.id = j.project_id
                 WHERE d.job_id = $1",
            )
            .await?;
        let Some(row) = client.query_opt(&statement, &[&message.job_id]).await? else {
            return Ok(None);
        };
        let attempts_made: i32 = row.get(1);
        if row.get::<_, String>(0) != "pending" || attempts_made >= message.attempt as i32 {
            return Ok(None);
        }
        let failed: i32 = row.get(10);
        let failures = if failed == 0 {
            Vec::new()
        } else {
            let statement = client
                .prepare_cached(
                    "SELECT external_id, reason FROM job_items
                     WHERE job_id = $1 AND state = 'failed' ORDER BY idx LIMIT $2",
                )
                .await?;
            client
                .query(&statement, &[&message.job_id, &MAX_FAILURES])
                .await?
                .iter()
                .map(|r| Failure {
                    external_id: r.get(0),
                    reason: r.get::<_, Option<String>>(1).unwrap_or_default(),
                })
                .collect()
        };
        let context: Option<String> = row.get(11);
        let context: Option<Box<RawValue>> = match context {
            Some(text) => Some(RawValue::from_string(text)?),
            None => None,
        };
        let payload = Payload {
            id: &message.job_id,
            state: &row.get::<_, String>(5),
            system_name: &row.get::<_, String>(6),
            overview: Overview {
                total: row.get(7),
                imported: row.get(8),
                skipped: row.get(9),
                failed: row.get(10),
            },
            context: context.as_deref(),
            started_at: row.get(12),
            finished_at: row.get(13),
            failures,
        };
        let mut secrets = vec![row.get::<_, String>(4)];
        secrets.extend(row.get::<_, Option<String>>(15));
        Ok(Some(Prepared {
            body: serde_json::to_vec(&payload)?,
            webhook_id: row.get(2),
            url: row.get(3),
            secrets,
            round_start: row.get::<_, i32>(14).max(0) as u32,
        }))
    }

    async fn post(&self, prepared: &Prepared, timeout: Duration) -> Attempt {
        let timestamp = Utc::now().timestamp();
        // One signature per active secret, so receivers can rotate without downtime.
        let signature = prepared
            .secrets
            .iter()
            .map(|secret| sign::signature(secret, &prepared.webhook_id, timestamp, &prepared.body))
            .collect::<Vec<_>>()
            .join(" ");
        let response = self
            .client
            .post(&prepared.url)
            .timeout(timeout)
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", &prepared.webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(prepared.body.clone())
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
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
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
                let error = netguard::refusal_in(&e).unwrap_or_else(|| {
                    if e.is_timeout() {
                        format!("no answer within {} s", timeout.as_secs())
                    } else {
                        format!("cannot reach the receiver: {}", netguard::describe(&e))
                    }
                });
                Attempt::Failed {
                    error,
                    status: None,
                    retry_after: None,
                }
            }
        }
    }

    /// Stores the attempt and the delivery's new state.
    async fn record(
        &self,
        message: &DeliverWebhook,
        attempt: &Attempt,
        will_retry: bool,
        made_this_round: usize,
        elapsed: Duration,
    ) -> anyhow::Result<()> {
        let (status, error, state): (Option<i32>, Option<String>, &str) = match attempt {
            Attempt::Delivered(s) => (Some(*s as i32), None, "delivered"),
            Attempt::Gone => (
                Some(410),
                Some("the receiver answered 410 Gone; not retrying".into()),
                "failed",
            ),
            Attempt::Failed { error, status, .. } => {
                let state = if will_retry { "pending" } else { "failed" };
                let error = if will_retry {
                    error.clone()
                } else {
                    format!("{error}; gave up after {made_this_round} attempts")
                };
                (status.map(i32::from), Some(error), state)
            }
        };
        let client = self.pool.get().await?;
        let duration_ms = elapsed.as_millis().min(i32::MAX as u128) as i32;
        // One statement, so one round trip and one commit: the attempt and the new state.
        let statement = client
            .prepare_cached(
                "WITH attempt AS (
                     INSERT INTO webhook_attempts (job_id, http_status, error, duration_ms)
                     VALUES ($1, $5, $4, $6)
                 )
                 UPDATE webhook_deliveries SET attempts = GREATEST(attempts, $2), state = $3,
                     last_error = COALESCE($4, last_error),
                     delivered_at = CASE WHEN $3 = 'delivered' THEN now() ELSE delivered_at END
                 WHERE job_id = $1",
            )
            .await?;
        client
            .execute(
                &statement,
                &[
                    &message.job_id,
                    &(message.attempt as i32),
                    &state,
                    &error,
                    &status,
                    &duration_ms,
                ],
            )
            .await?;
        Ok(())
    }
}

/// Bounds the deliveries in flight to one receiver host.
struct HostSlots {
    per_host: usize,
    hosts: Mutex<HashMap<String, Host>>,
}

struct Host {
    slots: Arc<Semaphore>,
    /// Set when a wait for a slot ran out: until then, others do not wait at all.
    congested_until: Option<Instant>,
}

impl HostSlots {
    fn new(per_host: usize) -> Self {
        Self {
            per_host,
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for the host of `url`, waiting up to `HOST_WAIT` for one: a fast host frees
    /// slots within that; a slow or dead one does not, and `None` is the answer. Once a
    /// wait has run out, the host's other deliveries do not wait for a while, so a dead
    /// receiver cannot fill the notifier's slots with waiting.
    async fn acquire(&self, url: &str) -> Option<OwnedSemaphorePermit> {
        let key = reqwest::Url::parse(url)
            .ok()
            .map(|u| {
                format!(
                    "{}:{}",
                    u.host_str().unwrap_or_default(),
                    u.port_or_known_default().unwrap_or(0)
                )
            })
            .unwrap_or_default();
        let slots = {
            let mut hosts = self.hosts.lock().expect("host slots lock");
            // Forget idle hosts so the map does not grow with every receiver ever seen.
            if hosts.len() > 10_000 {
                hosts.retain(|_, h| h.slots.available_permits() < self.per_host);
            }
            let host = hosts.entry(key.clone()).or_insert_with(|| Host {
                slots: Arc::new(Semaphore::new(self.per_host)),
                congested_until: None,
            });
            if let Ok(permit) = host.slots.clone().try_acquire_owned() {
                host.congested_until = None;
                return Some(permit);
            }
            if host.congested_until.is_some_and(|t| t > Instant::now()) {
                return None;
            }
            host.slots.clone()
        };
        match tokio::time::timeout(HOST_WAIT, slots.acquire_owned()).await {
            Ok(permit) => permit.ok(),
            Err(_) => {
                if let Some(host) = self.hosts.lock().expect("host slots lock").get_mut(&key) {
                    host.congested_until = Some(Instant::now() + HOST_WAIT);
                }
                None
            }
        }
    }
}

/// ±10 % so that many failed deliveries do not all come back at the same second.
fn jitter(delay: Duration) -> Duration {
    delay.mul_f64(rand::rng().random_range(0.9..1.1))
}
