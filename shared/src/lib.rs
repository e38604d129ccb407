//! The library the three video-import binaries share: configuration, database, queue
//! topology, messages, the outbox relay, SSRF-safe HTTP clients and operational endpoints.

pub mod batch;
pub mod config;
pub mod consume;
pub mod db;
pub mod direct_io;
pub mod fields;
pub mod hosts;
pub mod ids;
pub mod md5_lanes;
pub mod messages;
pub mod metrics;
pub mod netguard;
pub mod ops;
pub mod otlp;
pub mod outbox;
pub mod periodic;
pub mod process;
pub mod queue;
pub mod redact;
pub mod retry;
pub mod secrets;
pub mod service;
pub mod shutdown;
pub mod single_flight;
pub mod sources;
pub mod storage;
pub mod store;
pub mod sweep;
pub mod telemetry;
pub mod trace;
pub mod verify;
pub mod webhook;
