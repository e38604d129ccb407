//! The worker's wiring: builds its state from the settings and runs its loops (the outbox
//! relay, the dispatcher, the storage sweeper and verifier, the retention pruner, the
//! operational endpoints, and the consumers of the fetch queue and its dead letters) until
//! SIGTERM.

use std::sync::Arc;

use video_import_shared::config::Settings;
use video_import_shared::consume;
use video_import_shared::db;
use video_import_shared::outbox::Relay;
use video_import_shared::queue;
use video_import_shared::secrets::Keyring;
use video_import_shared::service::Service;
use video_import_shared::storage::Storage;
use video_import_shared::{sweep, verify};

use crate::dispatch::Dispatcher;
use crate::fetch::Fetcher;
use crate::group_commit::{self, PendingCheck, Recorder};
use crate::hosts::SourceHosts;
use crate::import::{Held, Importer};
use crate::metrics::WorkerMetrics;
use crate::prune::Pruner;
use crate::retry_policy::RetryPolicy;

/// Runs the worker until SIGTERM.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let service = Service::start(&settings, "worker").await?;
    let storage = Storage::open(&settings.storage).await?;
    let hosts = Arc::new(SourceHosts::new(settings.fetch.per_host_concurrency));
    let fetcher = Fetcher::new(
        &settings.fetch,
        storage.clone(),
        hosts.clone(),
        service.pool.clone(),
        Keyring::from_settings(&settings.secrets),
    )?;
    let metrics = WorkerMetrics::new(&service.registry)?;
    let relay = Relay::new(
        service.pool.clone(),
        service.publisher.clone(),
        &service.registry,
    );
    let relay_task = tokio::spawn(relay.clone().run(service.shutdown.clone()));
    let dispatcher = Dispatcher::new(
        service.pool.clone(),
        service.publisher.clone(),
        settings.fetch.dispatch_ahead,
        settings.fetch.concurrency as u32,
        settings.fetch.videos_per_message,
        &service.registry,
    );
    let dispatch_task = tokio::spawn(dispatcher.run(service.shutdown.clone()));
    let ops_task = service.serve_ops(settings.metrics.listen).await?;
    if let Some(interval) = settings.storage.sweep_every() {
        tokio::spawn(sweep::every(
            storage.clone(),
            service.pool.clone(),
            settings.storage.sweep_grace,
            interval,
            service.shutdown.clone(),
        ));
    }
    let verify_metrics = verify::VerifyMetrics::new(&service.registry)?;
    if let Some(rate) = verify::Rate::mib_per_sec(settings.storage.verify_rate_mib) {
        tokio::spawn(verify::continuously(
            storage.clone(),
            service.pool.clone(),
            rate,
            verify_metrics,
            service.shutdown.clone(),
        ));
    }
    let prune_task = if settings.retention.enabled() {
        let pruner = Pruner::new(service.pool.clone(), &settings.retention, &service.registry)?;
        Some(tokio::spawn(pruner.run(service.shutdown.clone())))
    } else {
        None
    };
    // The group commits and pending checks run many times a second: in sessions that plan
    // each of their statements once.
    let key_lookups =
        db::connect_key_lookups(&settings.database, group_commit::KEY_LOOKUP_SESSIONS).await?;
    let importer = Arc::new(Importer {
        recorder: Recorder::start(key_lookups.clone(), service.shutdown.clone()),
        pending: PendingCheck::start(key_lookups),
        pool: service.pool.clone(),
        fetcher,
        hosts,
        storage,
        retries: RetryPolicy::new(&settings.fetch),
        publisher: service.publisher.clone(),
        relay,
        held: Held::new(metrics.held.clone(), settings.fetch.concurrency),
        metrics,
        slots: tokio::sync::Semaphore::new(settings.fetch.concurrency),
        cancels_seen: Default::default(),
        shutdown: service.shutdown.clone(),
    });
    let held = importer.held.clone();
    let room: consume::Room = Arc::new(move || held.has_room());
    let fetch_handler = consume::handler(importer.clone(), Importer::take);
    let dead_handler = consume::handler(importer, |importer, message| async move {
        importer.settle(message).await
    });
    service
        .consume(
            queue::FETCH,
            crate::import::prefetch(
                settings.fetch.concurrency,
                settings.fetch.videos_per_message,
            ),
            Some(room),
            settings.fetch.shutdown_grace,
            fetch_handler,
            dead_handler,
        )
        .await;
    service.shutdown.cancel();
    let _ = relay_task.await;
    let _ = dispatch_task.await;
    if let Some(task) = prune_task {
        let _ = task.await;
    }
    ops_task.await??;
    Ok(())
}
