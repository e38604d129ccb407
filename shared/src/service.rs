//! What the worker and the notifier both start with: the shutdown token, the database pool,
//! the queue topology and a publisher, a metrics registry, and the operational endpoints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use prometheus::Registry;

use crate::metrics::{self, AmqpMetrics};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::consume::{self, ConsumerConfig, Handler, Room};
use crate::ops::{self, Ops};
use crate::queue::{Publisher, Topology};
use crate::{db, shutdown};

/// The shared parts of a consuming binary; every field is a cheap handle to clone.
pub struct Service {
    /// Cancelled on SIGINT or SIGTERM; every task watches it.
    pub shutdown: CancellationToken,
    pub pool: Pool,
    pub topology: Topology,
    /// Publishes with confirms; one link shared by every task.
    pub publisher: Arc<Publisher>,
    /// Where the binary registers its metrics (prefixed `video_import_`); `/metrics` serves it.
    pub registry: Registry,
    /// RabbitMQ link health, per link.
    pub amqp: AmqpMetrics,
    amqp_url: String,
}

impl Service {
    /// Installs the signal handler and connects to PostgreSQL (failing fast when it is not
    /// there, or its schema is not one this binary runs against); RabbitMQ is connected
    /// lazily.
    pub async fn start(settings: &Settings, component: &str) -> anyhow::Result<Self> {
        let shutdown = shutdown::on_signal();
        let pool = db::connect_migrated(&settings.database).await?;
        let registry = metrics::registry(component);
        metrics::register_pool(&registry, &pool);
        let amqp = AmqpMetrics::new(&registry);
        let topology = Topology::new(&settings.amqp.prefix);
        let publisher = Arc::new(
            Publisher::new(&settings.amqp.url, topology.clone()).with_health(amqp.link("publish")),
        );
        Ok(Self {
            shutdown,
            pool,
            topology,
            publisher,
            registry,
            amqp,
            amqp_url: settings.amqp.url.clone(),
        })
    }

    /// Binds `metrics.listen` (a taken address stops the start with exit code 2) and serves
    /// `/healthz`, `/readyz` and `/metrics` there until shutdown.
    pub async fn serve_ops(
        &self,
        listen: SocketAddr,
    ) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
        let listener = crate::process::bind("metrics.listen", listen).await?;
        Ok(tokio::spawn(ops::serve(
            listener,
            Ops {
                pool: self.pool.clone(),
                publisher: self.publisher.clone(),
                registry: self.registry.clone(),
            },
            self.shutdown.clone(),
        )))
    }

    /// Consumes the queue of `routing_key` with `handle` (`prefetch` at once, more while
    /// `room` says so, `grace` to finish after shutdown) and its dead letters with `settle`,
    /// until shutdown.
    pub async fn consume(
        &self,
        routing_key: &str,
        prefetch: usize,
        room: Option<Room>,
        grace: Duration,
        handle: Handler,
        settle: Handler,
    ) {
        tokio::join!(
            consume::run(
                ConsumerConfig {
                    room,
                    ..self.consumer(routing_key, false, prefetch, grace)
                },
                handle,
                self.shutdown.clone(),
            ),
            consume::run(
                self.consumer(routing_key, true, 16, Duration::from_secs(5)),
                settle,
                self.shutdown.clone(),
            ),
        );
    }

    /// How to consume the queue of `routing_key` (its dead letters when `dead`) with
    /// `prefetch` deliveries at once and `grace` to finish them.
    fn consumer(
        &self,
        routing_key: &str,
        dead: bool,
        prefetch: usize,
        grace: Duration,
    ) -> ConsumerConfig {
        let (queue, link) = if dead {
            (
                self.topology.dead_queue(routing_key),
                format!("consume:dead.{routing_key}"),
            )
        } else {
            (
                self.topology.queue(routing_key),
                format!("consume:{routing_key}"),
            )
        };
        ConsumerConfig {
            url: self.amqp_url.clone(),
            topology: self.topology.clone(),
            queue,
            prefetch: prefetch.min(u16::MAX as usize) as u16,
            room: None,
            grace,
            link: Some(self.amqp.link(&link)),
        }
    }
}
