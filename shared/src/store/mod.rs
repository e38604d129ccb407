//! The system of record: the PostgreSQL schema, its migrations and every query against it.
//! The binaries change a job, an item, an entry or a webhook delivery only by calling these
//! functions, so each state change has one home. The store knows rows, not the wire: what a
//! row becomes on RabbitMQ is `crate::messages`'s business.
//!
//! - [`states`]: `JobState`, `ItemState`, `WebhookState`, `Waiting`, and who moves a row
//!   into each;
//! - [`model`]: `Item` and `Validators`, the values the modules below pass each other;
//! - [`migrate`]: the embedded migrations (`migrations/`);
//! - [`projects`], [`tokens`]: administration and authentication; [`sources`]: source
//!   rules (credentials per URL prefix or bucket, their secrets sealed);
//! - [`jobs`]: accepting a batch, counting finished videos and finishing the job, reading,
//!   listing and cancelling jobs;
//! - [`idempotency`]: Idempotency-Key claims; [`usage`]: the daily-limit window;
//! - [`dispatch`]: jobs whose videos are still to be handed to the fetch queue, in fair order;
//! - [`items`]: one video of a job: pending checks, failed tries, status rows;
//! - [`entries`]: the media library;
//! - [`outcomes`]: the worker's group commit of finished videos;
//! - [`webhooks`]: deliveries, their rounds and attempts, held deliveries;
//! - [`outbox`]: messages written with the state they announce;
//! - [`backlog`]: how much work of each kind waits; [`locks`]: one-at-a-time work;
//! - [`verify`]: the entries the storage verifier reads, and where it got to; [`sweeps`]:
//!   when the storage sweeper last finished.
//! - [`retention`]: pruning finished jobs down to tombstones, expired idempotency keys.

pub mod backlog;
pub mod dispatch;
pub mod entries;
pub mod idempotency;
pub mod items;
pub mod jobs;
pub mod locks;
pub mod migrate;
pub mod model;
pub mod outbox;
pub mod outcomes;
pub mod projects;
pub mod retention;
pub mod sources;
pub mod states;
pub mod sweeps;
pub mod tokens;
pub mod usage;
pub mod verify;
pub mod webhooks;

pub use model::{Checksum, Item, Validators};
pub use states::{DamageKind, ItemState, JobState, UnknownState, Waiting, WebhookState};
