//! The states a job, an item (one video of a job) and a webhook delivery move through. They
//! are the only spellings of the state names: serde, SQL and the API schema all go through
//! these types, and each variant says which binary moves a row into it.

use serde::{Deserialize, Serialize};

/// A name that is not one of the type's variants (a state, or another name stored as text).
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownState {
    kind: &'static str,
    value: String,
}

impl UnknownState {
    /// `value`, which is no `kind` (`"item state"`, `"source kind"`).
    pub(crate) fn new(kind: &'static str, value: &str) -> Self {
        Self {
            kind,
            value: value.to_string(),
        }
    }
}

/// Implements `as_str`, `FromStr`, `Display` and the TEXT column conversions from one table
/// (also for name types outside this module: `crate::sources::SourceKind`).
macro_rules! state_enum {
    ($name:ident, $kind:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $name {
            /// Every variant, in the order a row moves through them.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name stored in PostgreSQL and shown in the API.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::store::states::UnknownState;

            fn from_str(value: &str) -> Result<Self, Self::Err> {
                match value {
                    $($text => Ok($name::$variant),)+
                    _ => Err($crate::store::states::UnknownState::new($kind, value)),
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::tokio_postgres::types::ToSql for $name {
            fn to_sql(
                &self,
                ty: &::tokio_postgres::types::Type,
                out: &mut ::bytes::BytesMut,
            ) -> Result<
                ::tokio_postgres::types::IsNull,
                Box<dyn ::std::error::Error + Sync + Send>,
            > {
                ::tokio_postgres::types::ToSql::to_sql(&self.as_str(), ty, out)
            }

            fn accepts(ty: &::tokio_postgres::types::Type) -> bool {
                <&str as ::tokio_postgres::types::ToSql>::accepts(ty)
            }

            ::tokio_postgres::types::to_sql_checked!();
        }

        impl<'a> ::tokio_postgres::types::FromSql<'a> for $name {
            fn from_sql(
                ty: &::tokio_postgres::types::Type,
                raw: &'a [u8],
            ) -> Result<Self, Box<dyn ::std::error::Error + Sync + Send>> {
                Ok(<&str as ::tokio_postgres::types::FromSql>::from_sql(ty, raw)?.parse()?)
            }

            fn accepts(ty: &::tokio_postgres::types::Type) -> bool {
                <&str as ::tokio_postgres::types::FromSql>::accepts(ty)
            }
        }
    };
}

pub(crate) use state_enum;

/// Where an import job is: `started` while videos are pending, then `success` or `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Set by the api when it accepts the batch.
    Started,
    /// Set by the worker that records the job's last video, when no video failed.
    Success,
    /// Set by the worker that records the job's last video, when at least one failed.
    Failed,
}

state_enum!(JobState, "job state", {
    Started => "started",
    Success => "success",
    Failed => "failed",
});

impl JobState {
    /// The state a job ends in, given how many of its videos failed.
    pub fn finished_with(failed: i32) -> Self {
        if failed > 0 {
            JobState::Failed
        } else {
            JobState::Success
        }
    }
}

/// Where one video of a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ItemState {
    /// Set by the api when it accepts the batch; the worker retries it while it stays here.
    Pending,
    /// Set by the worker: a media-library entry was created or updated.
    Imported,
    /// Set by the worker: the entry exists already with the same file and metadata.
    Skipped,
    /// Set by the worker when it gives up (with the reason), or by the worker's dead-letter
    /// consumer when the broker set the message aside.
    Failed,
}

state_enum!(ItemState, "item state", {
    Pending => "pending",
    Imported => "imported",
    Skipped => "skipped",
    Failed => "failed",
});

/// Where a finished job's webhook delivery is. A new round (a redelivery request) moves it
/// back to `Pending`; only an attempt of the current round moves it on (see
/// `store::webhooks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WebhookState {
    /// Created by the worker that finishes the job; set again by the api on a redelivery
    /// request; kept by the notifier while attempts are left.
    Pending,
    /// Set by the notifier when the receiver answered 2xx.
    Delivered,
    /// Set by the notifier when the schedule is used up or the receiver answered 410, or by
    /// the notifier's dead-letter consumer when the broker set the message aside.
    Failed,
}

state_enum!(WebhookState, "webhook state", {
    Pending => "pending",
    Delivered => "delivered",
    Failed => "failed",
});

/// Where a `Pending` delivery's next attempt waits. Kept in the `held_*` columns beside
/// `state` rather than as a state of its own, so that the previous release, which reads
/// only `state`, keeps working during a rolling upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Waiting {
    /// A message in RabbitMQ (a delay queue, the webhook queue, or the outbox on its way).
    /// Set when the delivery is created or its round starts; set again by the notifier's
    /// releaser when it publishes a held delivery.
    Queued,
    /// In PostgreSQL only (`held_host`, `held_round`, `held_attempt`, `held_at`), because its
    /// receiver's host had no free slot: set by the notifier that found none, or by the
    /// worker creating a delivery whose host has held deliveries already. Moved back to
    /// `Queued` by the notifier's releaser once the host has a free slot, or by the api on a
    /// redelivery request (which queues its new round).
    Held,
}

impl Waiting {
    /// The waiting place of a row whose `held_host` is `held_host`.
    pub fn of(held_host: Option<&str>) -> Self {
        match held_host {
            Some(_) => Waiting::Held,
            None => Waiting::Queued,
        }
    }
}

/// What re-reading an entry's stored object found wrong with it (`damage_kind` of a
/// marked entry). Set by the verifier (`storage verify`, or a worker with
/// `storage.verify_rate_mib`) through `entries::mark_damaged`; cleared with the rest of the
/// mark by a re-import that stores the file again, or a re-verification that finds it fine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DamageKind {
    /// No object at the entry's key.
    Missing,
    /// The object's size is not the entry's.
    WrongSize,
    /// The object's SHA-256 (or MD5) is not the entry's.
    WrongHash,
}

state_enum!(DamageKind, "damage kind", {
    Missing => "missing",
    WrongSize => "wrong_size",
    WrongHash => "wrong_hash",
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_text_and_serde() {
        for state in ItemState::ALL {
            assert_eq!(state.as_str().parse::<ItemState>().unwrap(), *state);
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                serde_json::json!(state.as_str())
            );
        }
        for kind in DamageKind::ALL {
            assert_eq!(kind.as_str().parse::<DamageKind>().unwrap(), *kind);
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::json!(kind.as_str())
            );
        }
        for state in JobState::ALL {
            assert_eq!(state.to_string().parse::<JobState>().unwrap(), *state);
        }
        for state in WebhookState::ALL {
            let back: WebhookState =
                serde_json::from_value(serde_json::json!(state.as_str())).unwrap();
            assert_eq!(back, *state);
        }
        let err = "done".parse::<ItemState>().unwrap_err();
        assert_eq!(err.to_string(), "unknown item state \"done\"");
    }

    #[test]
    fn a_job_fails_when_any_video_failed() {
        assert_eq!(JobState::finished_with(0), JobState::Success);
        assert_eq!(JobState::finished_with(1), JobState::Failed);
    }
}
