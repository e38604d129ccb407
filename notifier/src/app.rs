//! The notifier's wiring: builds its state from the settings and runs its loops (the
//! releaser of held deliveries, the group writers, the operational endpoints, and the
//! consumers of the webhook queue and its dead letters) until SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use video_import_shared::batch::Batcher;
use video_import_shared::config::Settings;
use video_import_shared::consume;
use video_import_shared::netguard::{self, AddressPolicy, ClientOptions};
use video_import_shared::queue::{self, Outgoing};
use video_import_shared::service::Service;
use video_import_shared::store::webhooks::{self, AttemptRecord, Hold};

use crate::deliver::Notifier;
use crate::hold::Releaser;
use crate::hosts::HostSlots;
use crate::metrics::Metrics;
use crate::schedule::Schedule;

/// Messages handled at once per POST slot: most of them wait for their host's slot (or are
/// held), so a burst of deliveries to a dead receiver cannot keep the others from arriving.
const HANDLERS_PER_POST: usize = 4;

/// Statements of each kind (attempts, holds, retry publishes) under way at once.
const WRITERS: usize = 2;
/// Most requests written by one of them.
const MAX_GROUP: usize = 128;

/// Runs the notifier until SIGTERM.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let service = Service::start(&settings, "notifier").await?;
    let webhook = &settings.webhook;
    let policy = AddressPolicy::new(webhook.allow_private_networks, &webhook.allowed_networks)
        .via_proxy("webhook", webhook.proxy.as_ref());
    let client = netguard::client(
        policy.clone(),
        &ClientOptions {
            connect_timeout: webhook.timeout.min(Duration::from_secs(10)),
            read_timeout: webhook.timeout,
            // A receiver's redirect is an answer, not an instruction: never followed.
            max_redirects: 0,
            user_agent: concat!("video-import-notifier/", env!("CARGO_PKG_VERSION")).into(),
        },
    )?;
    let ops_task = service.serve_ops(settings.metrics.listen).await?;
    let hosts = Arc::new(HostSlots::new(webhook.per_host_concurrency));
    let metrics = Metrics::new(&service.registry)?;
    let releaser = Releaser {
        pool: service.pool.clone(),
        publisher: service.publisher.clone(),
        hosts: hosts.clone(),
        released: metrics.released.clone(),
    };
    let release_task = tokio::spawn(releaser.run(service.shutdown.clone()));
    let pool = service.pool.clone();
    let attempts = Batcher::start(WRITERS, MAX_GROUP, move |records: Vec<AttemptRecord>| {
        let pool = pool.clone();
        async move {
            let client = pool.get().await?;
            webhooks::record_attempts(&client, &records).await?;
            Ok(vec![(); records.len()])
        }
    });
    let pool = service.pool.clone();
    let holds = Batcher::start(WRITERS, MAX_GROUP, move |holds: Vec<Hold>| {
        let pool = pool.clone();
        async move {
            let client = pool.get().await?;
            webhooks::hold(&client, &holds).await
        }
    });
    let publisher = service.publisher.clone();
    let retries = Batcher::start(WRITERS, MAX_GROUP, move |messages: Vec<Outgoing>| {
        let publisher = publisher.clone();
        async move {
            publisher.publish(&messages).await?;
            Ok(vec![(); messages.len()])
        }
    });
    let notifier = Arc::new(Notifier {
        hosts,
        attempts,
        holds,
        posts: Arc::new(Semaphore::new(webhook.concurrency)),
        pool: service.pool.clone(),
        client,
        policy,
        retries,
        schedule: Schedule::new(&webhook.retry_schedule),
        timeout: webhook.timeout,
        metrics,
        shutdown: service.shutdown.clone(),
    });
    let handler = consume::handler(notifier.clone(), |notifier, message| async move {
        notifier.handle(message).await
    });
    let dead_handler = consume::handler(notifier, |notifier, message| async move {
        notifier.settle(message).await
    });
    service
        .consume(
            queue::WEBHOOK,
            webhook.concurrency * HANDLERS_PER_POST,
            None,
            webhook.timeout + Duration::from_secs(5),
            handler,
            dead_handler,
        )
        .await;
    service.shutdown.cancel();
    let _ = release_task.await;
    ops_task.await??;
    Ok(())
}
