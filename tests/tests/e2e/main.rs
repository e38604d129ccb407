//! One test binary for every cross-binary test (they start the real api, worker and
//! notifier; see `tests/src/lib.rs`).

mod api;
mod cancel;
mod clients;
mod durability;
mod hardening;
mod importer;
mod messages;
mod observability;
mod pipeline;
mod proxy;
mod readback;
mod restarts;
mod rounds;
mod schema;
mod sources;
mod tracing;
mod upgrades;
mod verify;
mod webhooks;
mod worker;
