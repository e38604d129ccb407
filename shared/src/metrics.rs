//! Metrics every binary shares. Every family is named `video_import_…` (the registry adds the
//! prefix), so nothing collides with other services in one Prometheus; `process_*` comes
//! from the default registry's process collector. Label values that are known in advance
//! are created at 0, so `rate()` has data before the first event. `docs/metrics.md` is the
//! catalogue.

use std::sync::Arc;

use deadpool_postgres::Pool;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// The prefix of every family.
pub const NAMESPACE: &str = "video_import";

/// A registry whose families are prefixed `video_import_`, holding `build_info` for
/// `component` (api, worker or notifier).
pub fn registry(component: &str) -> Registry {
    let registry =
        Registry::new_custom(Some(NAMESPACE.into()), None).expect("a valid metric prefix");
    let info = IntGaugeVec::new(
        Opts::new("build_info", "Always 1; the labels say which build runs"),
        &["version", "component"],
    )
    .expect("valid metric");
    info.with_label_values(&[env!("CARGO_PKG_VERSION"), component])
        .set(1);
    registry
        .register(Box::new(info))
        .expect("build_info is registered once");
    crate::otlp::register_metrics(&registry);
    registry
}

/// Registers `metric` in `registry`; a second registration of the same family is ignored
/// (tests build several components in one process).
pub fn register<M: Collector + Clone + 'static>(registry: &Registry, metric: &M) {
    let _ = registry.register(Box::new(metric.clone()));
}

/// The database pool's connections by state, read at each scrape.
struct PoolCollector {
    pool: Pool,
    connections: IntGaugeVec,
}

impl Collector for PoolCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.connections.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let status = self.pool.status();
        let set =
            |state: &str, n: usize| self.connections.with_label_values(&[state]).set(n as i64);
        set("max", status.max_size);
        set("open", status.size);
        set("available", status.available);
        set("waiting", status.waiting);
        self.connections.collect()
    }
}

/// Registers `video_import_db_pool_connections{state}`: max, open, available and waiting
/// (requests waiting for a connection; above 0 the pool is exhausted).
pub fn register_pool(registry: &Registry, pool: &Pool) {
    let connections = IntGaugeVec::new(
        Opts::new(
            "db_pool_connections",
            "Database pool connections by state: max, open, available, waiting (requests)",
        ),
        &["state"],
    )
    .expect("valid metric");
    let _ = registry.register(Box::new(PoolCollector {
        pool: pool.clone(),
        connections,
    }));
}

/// RabbitMQ link health: whether each link (the publisher, each consumer) is connected, and
/// how often it had to reconnect.
#[derive(Clone)]
pub struct AmqpMetrics {
    connected: IntGaugeVec,
    reconnects: IntCounterVec,
}

impl AmqpMetrics {
    /// Registers the families in `registry`.
    pub fn new(registry: &Registry) -> Self {
        let connected = IntGaugeVec::new(
            Opts::new("amqp_connected", "1 while the link to RabbitMQ is up"),
            &["link"],
        )
        .expect("valid metric");
        let reconnects = IntCounterVec::new(
            Opts::new(
                "amqp_reconnects_total",
                "Times a link to RabbitMQ was lost and opened again",
            ),
            &["link"],
        )
        .expect("valid metric");
        register(registry, &connected);
        register(registry, &reconnects);
        Self {
            connected,
            reconnects,
        }
    }

    /// The handle of one link, its series created at 0.
    pub fn link(&self, name: &str) -> AmqpLink {
        let link = AmqpLink {
            connected: self.connected.with_label_values(&[name]),
            reconnects: self.reconnects.with_label_values(&[name]),
            ever: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
        link.connected.set(0);
        link
    }
}

/// One RabbitMQ link's series.
#[derive(Clone)]
pub struct AmqpLink {
    connected: IntGauge,
    reconnects: prometheus::IntCounter,
    /// Whether it was connected before (a later connect is a reconnect).
    ever: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for AmqpLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpLink")
            .field("connected", &self.connected.get())
            .finish()
    }
}

impl AmqpLink {
    /// The link is up.
    pub fn up(&self) {
        if self.ever.swap(true, std::sync::atomic::Ordering::Relaxed) {
            self.reconnects.inc();
        }
        self.connected.set(1);
    }

    /// The link is down.
    pub fn down(&self) {
        self.connected.set(0);
    }
}

/// Counts refused outgoing addresses (`video_import_ssrf_refusals_total{component}`).
pub fn ssrf_refusals(registry: &Registry, component: &str) -> prometheus::IntCounter {
    let refusals = IntCounterVec::new(
        Opts::new(
            "ssrf_refusals_total",
            "URLs refused because their address is private, loopback, link-local or reserved",
        ),
        &["component"],
    )
    .expect("valid metric");
    register(registry, &refusals);
    refusals.with_label_values(&[component])
}

/// Counts messages the broker set aside (`video_import_dead_letters_total{kind}`).
pub fn dead_letters(registry: &Registry, kind: &str) -> prometheus::IntCounter {
    let dead = IntCounterVec::new(
        Opts::new(
            "dead_letters_total",
            "Messages the broker set aside after too many deliveries, settled by failing their work",
        ),
        &["kind"],
    )
    .expect("valid metric");
    register(registry, &dead);
    dead.with_label_values(&[kind])
}

/// Histogram buckets for durations from milliseconds to an hour.
pub fn duration_buckets() -> Vec<f64> {
    vec![
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
        600.0, 1800.0, 3600.0,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_prefixed_and_build_info_is_there() {
        let registry = registry("test");
        let amqp = AmqpMetrics::new(&registry);
        let link = amqp.link("publisher");
        link.up();
        link.down();
        link.up();
        let families = registry.gather();
        let names: Vec<&str> = families.iter().map(|f| f.name()).collect();
        assert!(
            names.iter().all(|n| n.starts_with("video_import_")),
            "{names:?}"
        );
        assert!(names.contains(&"video_import_build_info"));
        let reconnects = families
            .iter()
            .find(|f| f.name() == "video_import_amqp_reconnects_total")
            .unwrap();
        assert_eq!(reconnects.get_metric()[0].get_counter().get_value(), 1.0);
    }
}
