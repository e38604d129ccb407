//! The system of record: the PostgreSQL schema, its migrations and every query against it.
//! The binaries change a job, an item, an entry or a webhook delivery only by calling these
//! functions, so each state change has one home.
//!
//! - [`states`]: `JobState`, `ItemState`, `WebhookState`, and who moves a row into each;
//! - [`migrate`]: the embedded migrations (`migrations/`);
//! - [`projects`], [`tokens`]: administration and authentication;
//! - [`jobs`]: accepting a batch, idempotency keys, the daily-limit window, counting finished
//!   videos and finishing the job, reading jobs;
//! - [`dispatch`]: jobs whose videos are still to be handed to the fetch queue, in fair order;
//! - [`items`]: one video of a job: loading it for the worker, failed tries, status rows;
//! - [`entries`]: the media library;
//! - [`outcomes`]: the worker's group commit of finished videos;
//! - [`webhooks`]: deliveries and their attempts;
//! - [`outbox`]: messages written with the state they announce.

pub mod dispatch;
pub mod entries;
pub mod items;
pub mod jobs;
pub mod migrate;
pub mod outbox;
pub mod outcomes;
pub mod projects;
pub mod states;
pub mod tokens;
pub mod webhooks;

pub use states::{ItemState, JobState, UnknownState, WebhookState};
