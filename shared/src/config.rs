//! Layered configuration: built-in defaults, an optional TOML file, then
//! `VIDEO_IMPORT__SECTION__KEY` environment variables.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Every setting of every binary; each binary reads the sections it needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub api: ApiSettings,
    pub metrics: MetricsSettings,
    pub storage: StorageSettings,
    pub fetch: FetchSettings,
    pub webhook: WebhookSettings,
    pub retention: RetentionSettings,
    pub log: LogSettings,
    pub telemetry: TelemetrySettings,
    pub secrets: SecretsSettings,
}

/// PostgreSQL connection and pool.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: String,
    pub pool_size: usize,
    /// How long to wait for a pooled connection before failing the request.
    #[serde(rename = "pool_timeout_secs", with = "secs")]
    pub pool_timeout: Duration,
}

/// RabbitMQ connection and queue naming.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    /// One node's URL, or a cluster's: several separated by commas (or a list in TOML).
    /// Each process connects to a node that answers and moves to another when it goes away.
    #[serde(deserialize_with = "url_list")]
    pub url: String,
    /// Prefix of every exchange and queue name; lets several deployments (or tests) share a vhost.
    pub prefix: String,
}

/// The HTTP API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    pub listen: SocketAddr,
    /// Most videos accepted in one batch.
    pub max_batch_size: usize,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Requests per second one token may send (0: no limit).
    pub rate_limit_per_second: u32,
    /// Requests one token may send at once above that rate.
    pub rate_limit_burst: u32,
    /// Longest a connection may take to send a request's headers, or stay idle between
    /// requests, before it is closed.
    #[serde(rename = "header_timeout_secs", with = "secs")]
    pub header_timeout: Duration,
    /// Longest a request's body may take to arrive (answered 408 after).
    #[serde(rename = "body_timeout_secs", with = "secs")]
    pub body_timeout: Duration,
    /// Connections served at once; more wait to be accepted until one closes.
    pub max_connections: usize,
    /// Connections one client address (an IPv4 address, or an IPv6 /64) may hold at once;
    /// more are answered 429 and closed (0: no bound). Behind a reverse proxy the address
    /// is the proxy's.
    pub max_connections_per_client: usize,
    /// The API's address as clients reach it (`https://videos.example`, no trailing slash):
    /// `video.url` and `asset.url` are absolute under it. Empty: they are paths
    /// (`/api/v1/mediaLibrary/{id}/asset`) on whatever address the client used.
    #[serde(default)]
    pub public_url: String,
}

/// Where the worker and notifier serve `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    pub listen: SocketAddr,
}

/// Where downloaded videos are stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    /// Folder used when `url` is empty.
    pub root: String,
    /// Object storage URL such as `s3://bucket/prefix` (credentials from `AWS_*` variables).
    #[serde(default)]
    pub url: String,
    /// Stored objects that no entry references are removed once they are this old.
    #[serde(rename = "sweep_grace_secs", with = "secs")]
    pub sweep_grace: Duration,
    /// How often a worker sweeps unreferenced objects and rewrites mostly unused packs (0:
    /// never; `video-import-api storage sweep` does it on demand). Unset, see
    /// [`StorageSettings::sweep_every`].
    #[serde(rename = "sweep_interval_secs", with = "optional_secs", default)]
    pub sweep_interval: Option<Duration>,
    /// With object storage, how long the presigned URL that an asset read is redirected to
    /// stays valid (0: the API streams the file itself). At most 7 days (SigV4's limit).
    #[serde(rename = "presign_secs", with = "secs", default)]
    pub presign: Duration,
    /// MiB per second at which a worker re-reads stored objects to check them against their
    /// entries, one worker at a time (0: never; `video-import-api storage verify` does it on
    /// demand).
    #[serde(default)]
    pub verify_rate_mib: f64,
    /// Local storage: small files (under 1 MiB, every small video) are created, written and
    /// synced in groups, by this many group writers per worker, each syncing its group's
    /// files one after the other: at most this many of their syncs reach the disk at once.
    pub sync_writers: usize,
    /// Local storage: how the small files of one group write are kept: `packed` (one pack
    /// file for the group, one sync for all of them) or `files` (a file each, each synced).
    #[serde(default)]
    pub small_files: SmallFiles,
}

/// How often workers sweep when `storage.sweep_interval_secs` is not set, on local storage.
const DEFAULT_LOCAL_SWEEP: Duration = Duration::from_secs(3600);

impl StorageSettings {
    /// How often a worker sweeps, if at all: `storage.sweep_interval_secs` (0: never) or,
    /// unset, hourly on local storage (a folder the service owns, whose packs give the space
    /// of replaced videos back only through the sweeper) and never on object storage, where a
    /// bucket may hold objects that are not the service's: set it once the prefix is its own.
    pub fn sweep_every(&self) -> Option<Duration> {
        match self.sweep_interval {
            Some(interval) if interval.is_zero() => None,
            Some(interval) => Some(interval),
            None if self.url.is_empty() => Some(DEFAULT_LOCAL_SWEEP),
            None => None,
        }
    }
}

/// How local storage keeps small files (those under 1 MiB, written in groups).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmallFiles {
    /// The files of one group write in one pack file (`packs/*.pack`), each asset a range of
    /// it: one file created and synced per group instead of one per video. A pack is removed
    /// by the sweeper once no entry references any of its ranges.
    #[default]
    Packed,
    /// A file each, as for large videos: what releases before packs wrote, and what a
    /// rolling upgrade from one needs until every api runs this release.
    Files,
}

/// How the worker downloads videos.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchSettings {
    /// Allow loopback, private and link-local addresses (tests, trusted networks).
    pub allow_private_networks: bool,
    /// CIDR ranges admitted even when private networks are refused (trusted archive hosts).
    #[serde(default)]
    pub allowed_networks: Vec<IpNet>,
    #[serde(rename = "connect_timeout_secs", with = "secs")]
    pub connect_timeout: Duration,
    /// Longest pause between two chunks of a body.
    #[serde(rename = "read_timeout_secs", with = "secs")]
    pub read_timeout: Duration,
    /// Longest a whole download may take (keep it below RabbitMQ's consumer_timeout).
    #[serde(rename = "total_timeout_secs", with = "secs")]
    pub total_timeout: Duration,
    /// Slowest transfer accepted: a download of N bytes may take 60 s + N / this.
    pub min_bytes_per_sec: u64,
    /// Largest video accepted, in bytes.
    pub max_bytes: u64,
    pub max_redirects: usize,
    /// Downloads running at once in one worker.
    pub concurrency: usize,
    /// Downloads from one source host running at once in one worker.
    pub per_host_concurrency: usize,
    /// Most videos kept ready in the fetch queue: the dispatcher tops it up, in fair order,
    /// to twice the workers' download slots but never beyond this, so a new batch waits
    /// behind at most this many videos of other jobs.
    pub dispatch_ahead: u32,
    /// Most videos the dispatcher packs into one fetch message (v5): the broker's work is
    /// per message, so packing saves most of it (32 took a fifth off the machine's CPU per
    /// video against 16). 1 publishes one video per message (v3/v4), which the release
    /// before v5 reads: use it while such workers still run.
    pub videos_per_message: u32,
    /// After SIGTERM, how long in-flight downloads may run on before they are handed back.
    #[serde(rename = "shutdown_grace_secs", with = "secs")]
    pub shutdown_grace: Duration,
    /// Quick in-process tries of one download before it is handed back to the queue with a delay.
    pub quick_retries: usize,
    /// Delays of the later tries that go back through RabbitMQ; their count is the number of
    /// such tries before the video fails with its last reason.
    #[serde(rename = "retry_delays_secs", with = "secs_list")]
    pub retry_delays: Vec<Duration>,
    /// HTTP proxy every download goes through (`http://` or `https://`); none when empty.
    /// The environment's `HTTP_PROXY` and the like are never used.
    #[serde(default, with = "proxy_url", skip_serializing_if = "Option::is_none")]
    pub proxy: Option<url::Url>,
}

/// How the notifier delivers webhooks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Allow loopback, private and link-local receivers.
    pub allow_private_networks: bool,
    /// CIDR ranges admitted even when private networks are refused.
    #[serde(default)]
    pub allowed_networks: Vec<IpNet>,
    /// Longest one POST to a receiver may take.
    #[serde(rename = "timeout_secs", with = "secs")]
    pub timeout: Duration,
    /// Delays before each retry after the first attempt fails.
    #[serde(rename = "retry_schedule_secs", with = "secs_list")]
    pub retry_schedule: Vec<Duration>,
    /// Deliveries running at once in one notifier.
    pub concurrency: usize,
    /// Deliveries running at once to one receiver host; more wait in a delay queue.
    pub per_host_concurrency: usize,
    /// HTTP proxy every webhook goes through (`http://` or `https://`); none when empty.
    #[serde(default, with = "proxy_url", skip_serializing_if = "Option::is_none")]
    pub proxy: Option<url::Url>,
}

/// Keys that encrypt secrets at rest (source credentials, see `crate::secrets`). `Debug`
/// shows their ids; serialised (the config crate takes the defaults serialised), each key
/// is `(hidden)`: the defaults hold none, and nothing else serialises settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsSettings {
    /// The key that encrypts (and decrypts): 32 bytes in base64. Needed by the API to add
    /// source rules and by workers to use them.
    #[serde(default, with = "secret_key", skip_serializing_if = "Option::is_none")]
    pub key: Option<crate::secrets::SecretKey>,
    /// Keys that only decrypt: the keys before `key`, while `video-import-api secrets rotate`
    /// encrypts everything again with `key`.
    #[serde(
        default,
        deserialize_with = "secret_keys",
        serialize_with = "secret_key::serialize_all"
    )]
    pub previous_keys: Vec<crate::secrets::SecretKey>,
}

/// An optional key; empty is none (so an environment variable can unset it).
mod secret_key {
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::secrets::SecretKey;

    /// What a key serialises as: never the key.
    const HIDDEN: &str = "(hidden)";

    pub fn serialize<S: Serializer>(value: &Option<SecretKey>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(_) => s.serialize_str(HIDDEN),
            None => s.serialize_none(),
        }
    }

    /// A list of keys, each as `(hidden)`.
    pub fn serialize_all<S: Serializer>(keys: &[SecretKey], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(keys.len()))?;
        for _ in keys {
            seq.serialize_element(HIDDEN)?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretKey>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) if !text.trim().is_empty() => SecretKey::from_base64(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
            _ => Ok(None),
        }
    }
}

/// A list of keys; empty entries are left out (an empty variable is an empty list).
fn secret_keys<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<crate::secrets::SecretKey>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let texts = match OneOrMany::deserialize(d)? {
        OneOrMany::One(text) => vec![text],
        OneOrMany::Many(texts) => texts,
    };
    texts
        .iter()
        .filter(|t| !t.trim().is_empty())
        .map(|t| crate::secrets::SecretKey::from_base64(t).map_err(serde::de::Error::custom))
        .collect()
}

/// How long finished jobs keep their videos' rows, webhook history and keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// A job finished longer ago than this loses its videos' rows, its webhook delivery and
    /// attempts, its dispatch row and idempotency keys; its row stays as a tombstone with
    /// its overview. Zero keeps everything.
    #[serde(rename = "finished_jobs_secs", with = "secs")]
    pub finished_jobs: Duration,
    /// How often a worker's pruner looks for such jobs (one prunes at a time).
    #[serde(rename = "interval_secs", with = "secs")]
    pub interval: Duration,
}

impl RetentionSettings {
    /// Whether finished jobs are pruned at all.
    pub fn enabled(&self) -> bool {
        !self.finished_jobs.is_zero()
    }
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// `tracing` filter, e.g. `info` or `video_import_worker=debug,info`.
    pub filter: String,
    pub format: LogFormat,
}

/// Traces exported over OTLP/HTTP (protobuf); off while `otlp_endpoint` is empty.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// The collector's OTLP/HTTP base URL, e.g. `http://collector:4318`: spans are POSTed
    /// to `{it}/v1/traces`. None: no span is exported.
    #[serde(default, with = "proxy_url", skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<url::Url>,
    /// Share of traces (jobs) exported, from 0 to 1. Decided from the trace id alone, so the
    /// three binaries keep or leave out the same jobs (give them the same ratio).
    pub sample_ratio: f64,
    /// Most finished spans a process keeps waiting for export; beyond that, spans are
    /// dropped (and counted), never waited for.
    pub queue_size: usize,
    /// Longest one export request (with its retries) may take; also the longest a stopping
    /// binary waits for its last spans to go out.
    #[serde(rename = "export_timeout_secs", with = "secs")]
    pub export_timeout: Duration,
}

impl TelemetrySettings {
    /// Where spans are POSTed: `{otlp_endpoint}/v1/traces` (`None` when export is off).
    pub fn traces_url(&self) -> Option<String> {
        let endpoint = self.otlp_endpoint.as_ref()?;
        Some(format!(
            "{}/v1/traces",
            endpoint.as_str().trim_end_matches('/')
        ))
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// A string, or a list of strings joined with commas.
fn url_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(url) => url,
        OneOrMany::Many(urls) => urls.join(","),
    })
}

/// Durations configured as whole seconds.
mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(value.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

/// An optional duration configured as whole seconds: absent (or empty) is none.
mod optional_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_u64(d.as_secs()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_secs))
    }
}

/// Lists of durations configured as whole seconds. A single number is a list of one: the
/// `config` crate reads `VIDEO_IMPORT__..._SECS=60` as a number, not as a list.
mod secs_list {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(value: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        let secs: Vec<u64> = value.iter().map(Duration::as_secs).collect();
        secs.serialize(s)
    }

    struct Seconds;

    impl<'de> Visitor<'de> for Seconds {
        type Value = Vec<Duration>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of whole seconds, such as [30, 120]")
        }

        fn visit_u64<E: de::Error>(self, secs: u64) -> Result<Self::Value, E> {
            Ok(vec![Duration::from_secs(secs)])
        }

        fn visit_i64<E: de::Error>(self, secs: i64) -> Result<Self::Value, E> {
            let secs = u64::try_from(secs)
                .map_err(|_| E::invalid_value(de::Unexpected::Signed(secs), &self))?;
            self.visit_u64(secs)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut delays = Vec::new();
            while let Some(secs) = seq.next_element::<u64>()? {
                delays.push(Duration::from_secs(secs));
            }
            Ok(delays)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        d.deserialize_any(Seconds)
    }
}

/// An optional URL (a proxy, the trace collector); empty is none (so an environment variable
/// can unset it). Only its syntax is checked here; `Settings::validate` checks what it is
/// allowed to be.
mod proxy_url {
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<url::Url>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(url) => s.serialize_str(url.as_str()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<url::Url>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        url::Url::parse(text).map(Some).map_err(|e| {
            // The value itself is named by the caller (`Settings::load`).
            de::Error::custom(format!("not a URL ({e}); give http://HOST:PORT"))
        })
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            database: DatabaseSettings {
                url: "postgres://postgres@127.0.0.1:5432/video_import".into(),
                pool_size: 16,
                pool_timeout: Duration::from_secs(10),
            },
            amqp: AmqpSettings {
                url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
                prefix: "video-import".into(),
            },
            api: ApiSettings {
                listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
                max_batch_size: 1000,
                max_body_bytes: 16 * 1024 * 1024,
                rate_limit_per_second: 0,
                rate_limit_burst: 20,
                header_timeout: Duration::from_secs(10),
                body_timeout: Duration::from_secs(60),
                max_connections: 1024,
                max_connections_per_client: 256,
                public_url: String::new(),
            },
            metrics: MetricsSettings {
                listen: default_metrics_listen("video-import-worker"),
            },
            storage: StorageSettings {
                root: "./data/videos".into(),
                url: String::new(),
                // Longer than any download may take (fetch.total_timeout_secs) and its commit.
                sweep_grace: Duration::from_secs(86_400),
                sweep_interval: None,
                presign: Duration::ZERO,
                verify_rate_mib: 0.0,
                sync_writers: 4,
                small_files: SmallFiles::Packed,
            },
            fetch: FetchSettings {
                allow_private_networks: false,
                allowed_networks: Vec::new(),
                connect_timeout: Duration::from_secs(10),
                read_timeout: Duration::from_secs(30),
                // RabbitMQ closes a channel whose delivery stays unacked for 30 min.
                total_timeout: Duration::from_secs(1500),
                min_bytes_per_sec: 256 * 1024,
                max_bytes: 10 * 1024 * 1024 * 1024,
                max_redirects: 5,
                concurrency: 32,
                per_host_concurrency: 16,
                dispatch_ahead: 512,
                videos_per_message: 32,
                shutdown_grace: Duration::from_secs(30),
                quick_retries: 2,
                retry_delays: secs_of(&[30, 120, 600, 1800]),
                proxy: None,
            },
            webhook: WebhookSettings {
                allow_private_networks: false,
                allowed_networks: Vec::new(),
                timeout: Duration::from_secs(15),
                // Standard Webhooks' schedule after the immediate attempt: about three days.
                retry_schedule: secs_of(&[5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400]),
                concurrency: 64,
                per_host_concurrency: 8,
                proxy: None,
            },
            retention: RetentionSettings {
                // Brightcove keeps job status for 7 days; an archive migration is followed
                // for weeks.
                finished_jobs: Duration::from_secs(30 * 86_400),
                interval: Duration::from_secs(60),
            },
            log: LogSettings {
                filter: "info".into(),
                format: LogFormat::Text,
            },
            telemetry: TelemetrySettings {
                otlp_endpoint: None,
                sample_ratio: 1.0,
                // The OpenTelemetry SDK's default: at most a few MB of spans per process.
                queue_size: 2048,
                export_timeout: Duration::from_secs(5),
            },
            secrets: SecretsSettings::default(),
        }
    }
}

fn secs_of(secs: &[u64]) -> Vec<Duration> {
    secs.iter().copied().map(Duration::from_secs).collect()
}

/// Configuration that could not be loaded; the message names the key at fault and its value.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl Settings {
    /// Loads defaults, then `file` (if any), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_over(Settings::default(), file)
    }

    /// [`Settings::load`] for the binary `binary`, whose own defaults differ where two
    /// binaries on one machine would otherwise clash (`metrics.listen`).
    pub fn load_for(binary: &str, file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut defaults = Settings::default();
        defaults.metrics.listen = default_metrics_listen(binary);
        Self::load_over(defaults, file)
    }

    fn load_over(defaults: Settings, file: Option<&Path>) -> Result<Self, ConfigError> {
        let defaults =
            config::Config::try_from(&defaults).map_err(|e| ConfigError(e.to_string()))?;
        let mut builder = config::Config::builder().add_source(defaults);
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("VIDEO_IMPORT")
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("fetch.allowed_networks")
                .with_list_parse_key("fetch.retry_delays_secs")
                .with_list_parse_key("webhook.allowed_networks")
                .with_list_parse_key("webhook.retry_schedule_secs")
                .with_list_parse_key("secrets.previous_keys")
                .try_parsing(true),
        );
        let built = builder.build().map_err(|e| ConfigError(e.to_string()))?;
        let settings: Settings = built
            .clone()
            .try_deserialize()
            .map_err(|e| ConfigError(explain(&built, e)))?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, value: &dyn std::fmt::Display, why: &str| {
            Err(ConfigError(format!("{key} = {value}: {why}")))
        };
        const MAX_VIDEOS_PER_MESSAGE: u32 = 64;
        const MAX_SYNC_WRITERS: usize = 64;
        let at_least_one = "must be at least 1";
        if self.api.max_batch_size == 0 {
            return bad("api.max_batch_size", &0, at_least_one);
        }
        for node in nodes(&self.amqp.url) {
            if !matches!(url::Url::parse(node), Ok(u) if matches!(u.scheme(), "amqp" | "amqps")) {
                let all: Vec<String> = nodes(&self.amqp.url)
                    .into_iter()
                    .map(|n| crate::redact::url(n, crate::redact::Show::WithoutCredentials))
                    .collect();
                return bad(
                    "amqp.url",
                    &shown(&all.join(", ")),
                    &format!(
                        "{} is not an amqp:// URL; give one node's URL or several separated by commas",
                        shown(node)
                    ),
                );
            }
        }
        if !self.api.public_url.is_empty() {
            let url = url::Url::parse(&self.api.public_url);
            let fine = matches!(&url, Ok(u) if matches!(u.scheme(), "http" | "https")
                && u.host().is_some() && u.query().is_none() && u.username().is_empty());
            if !fine || self.api.public_url.ends_with('/') {
                return bad(
                    "api.public_url",
                    &shown(&self.api.public_url),
                    "must be an http(s) URL such as https://videos.example (or https://example.org/videos), without a trailing slash, query or credentials",
                );
            }
        }
        if self.storage.presign > Duration::from_secs(7 * 86_400) {
            return bad(
                "storage.presign_secs",
                &self.storage.presign.as_secs(),
                "must be at most 604800 (7 days, the longest a presigned URL may be valid)",
            );
        }
        let rate = self.storage.verify_rate_mib;
        if !rate.is_finite() || rate < 0.0 {
            return bad(
                "storage.verify_rate_mib",
                &rate,
                "must be 0 (no continuous verification) or a positive number of MiB per second, such as 20 or 0.5",
            );
        }
        if !(1..=MAX_SYNC_WRITERS).contains(&self.storage.sync_writers) {
            return bad(
                "storage.sync_writers",
                &self.storage.sync_writers,
                &format!("must be from 1 to {MAX_SYNC_WRITERS} (raise it where one sync takes long, as on a network disk)"),
            );
        }
        if self.api.max_connections == 0 {
            return bad("api.max_connections", &0, at_least_one);
        }
        if self.api.header_timeout.is_zero() {
            return bad("api.header_timeout_secs", &0, at_least_one);
        }
        if self.api.body_timeout.is_zero() {
            return bad("api.body_timeout_secs", &0, at_least_one);
        }
        if self.fetch.concurrency == 0 {
            return bad("fetch.concurrency", &0, at_least_one);
        }
        if self.fetch.dispatch_ahead == 0 {
            return bad("fetch.dispatch_ahead", &0, at_least_one);
        }
        if !(1..=MAX_VIDEOS_PER_MESSAGE).contains(&self.fetch.videos_per_message) {
            return bad(
                "fetch.videos_per_message",
                &self.fetch.videos_per_message,
                &format!("between 1 and {MAX_VIDEOS_PER_MESSAGE}"),
            );
        }
        if self.fetch.per_host_concurrency == 0 {
            return bad("fetch.per_host_concurrency", &0, at_least_one);
        }
        if self.webhook.per_host_concurrency == 0 {
            return bad("webhook.per_host_concurrency", &0, at_least_one);
        }
        if self.webhook.concurrency == 0 {
            return bad("webhook.concurrency", &0, at_least_one);
        }
        if self.retention.enabled() && self.retention.interval.is_zero() {
            return bad(
                "retention.interval_secs",
                &0,
                "must be at least 1 while retention.finished_jobs_secs is set (0 there keeps everything)",
            );
        }
        // PostgreSQL intervals and chrono durations both hold far more than this: a typo
        // (milliseconds for seconds) is refused rather than silently keeping everything.
        if self.retention.finished_jobs > Duration::from_secs(100 * 365 * 86_400) {
            return bad(
                "retention.finished_jobs_secs",
                &self.retention.finished_jobs.as_secs(),
                "must be at most 3153600000 (100 years); 0 keeps everything",
            );
        }
        // A proxy is an address we connect to: the section's own address policy admits it
        // or refuses it, as it would a target.
        for (key, proxy, allow_private, allowed) in [
            (
                "fetch.proxy",
                &self.fetch.proxy,
                self.fetch.allow_private_networks,
                &self.fetch.allowed_networks,
            ),
            (
                "webhook.proxy",
                &self.webhook.proxy,
                self.webhook.allow_private_networks,
                &self.webhook.allowed_networks,
            ),
        ] {
            let Some(proxy) = proxy else { continue };
            let policy = crate::netguard::AddressPolicy::new(allow_private, allowed);
            if let Err(why) = policy.check_proxy(key, proxy) {
                return bad(key, &shown(proxy.as_str()), &why);
            }
        }
        self.telemetry.validate()
    }
}

impl TelemetrySettings {
    /// The collector is the operator's (not checked against any address policy, as a
    /// private address is where it usually is), but must be a plain http(s) base URL.
    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, value: &dyn std::fmt::Display, why: &str| {
            Err(ConfigError(format!("{key} = {value}: {why}")))
        };
        if let Some(endpoint) = &self.otlp_endpoint {
            let fine = matches!(endpoint.scheme(), "http" | "https")
                && endpoint.host().is_some()
                && endpoint.query().is_none()
                && endpoint.fragment().is_none();
            if !fine {
                return bad(
                    "telemetry.otlp_endpoint",
                    &shown(endpoint.as_str()),
                    "must be the collector's OTLP/HTTP base URL, such as http://collector:4318 (spans go to its /v1/traces), without a query",
                );
            }
            if !endpoint.username().is_empty() || endpoint.password().is_some() {
                return bad(
                    "telemetry.otlp_endpoint",
                    &shown(endpoint.as_str()),
                    "must not carry credentials; give the collector's headers in OTEL_EXPORTER_OTLP_HEADERS (e.g. authorization=Bearer%20...)",
                );
            }
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return bad(
                "telemetry.sample_ratio",
                &self.sample_ratio,
                "must be from 0 (no trace) to 1 (every trace)",
            );
        }
        if self.queue_size == 0 {
            return bad("telemetry.queue_size", &0, "must be at least 1");
        }
        if self.export_timeout.is_zero() {
            return bad("telemetry.export_timeout_secs", &0, "must be at least 1");
        }
        Ok(())
    }
}

/// The default `metrics.listen` of each binary: its own port, so that a worker and a
/// notifier run side by side on one machine without configuration.
pub fn default_metrics_listen(binary: &str) -> SocketAddr {
    let port = match binary {
        "video-import-notifier" => 9092,
        _ => 9091,
    };
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A configured text as an error message may show it: quoted, without the user name and
/// password of a URL (also of one too broken to parse).
fn shown(text: &str) -> String {
    let redacted = crate::redact::url(text, crate::redact::Show::WithoutCredentials);
    if url::Url::parse(text).is_err() {
        if let Some((scheme, rest)) = text.split_once("://") {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            if let Some(at) = rest[..authority_end].rfind('@') {
                return format!("{:?}", format!("{scheme}://…@{}", &rest[at + 1..]));
            }
        }
    }
    format!("{redacted:?}")
}

/// A configured value as an error message may show it (strings through [`shown`]).
fn shown_value(value: &config::Value) -> String {
    match &value.kind {
        config::ValueKind::String(text) => shown(text),
        config::ValueKind::Array(items) => {
            let items: Vec<String> = items.iter().map(shown_value).collect();
            format!("[{}]", items.join(", "))
        }
        config::ValueKind::Table(_) => "a table".into(),
        other => other.to_string(),
    }
}

/// A deserialization error as `key = value (in origin): why`: the crate's own message names
/// the key, and only sometimes the value (never for CIDRs and socket addresses).
fn explain(config: &config::Config, error: config::ConfigError) -> String {
    let (key, why, origin) = match &error {
        config::ConfigError::Type {
            key: Some(key),
            expected,
            origin,
            ..
        } => (key.clone(), format!("expected {expected}"), origin.clone()),
        config::ConfigError::At {
            key: Some(key),
            error: inner,
            origin,
        } => (key.clone(), inner.to_string(), origin.clone()),
        _ => return error.to_string(),
    };
    // An unknown setting is reported at its section: name the setting itself.
    let key = match why
        .strip_prefix("unknown field `")
        .and_then(|r| r.split_once('`'))
    {
        Some((field, _)) => format!("{key}.{field}"),
        None => key,
    };
    let Ok(value) = config.get::<config::Value>(&key) else {
        return format!("{key}: {why}");
    };
    // A key, even a bad one (a paste cut short), is never repeated.
    if key.starts_with("secrets.") {
        return format!("{key} = (not shown): {why}");
    }
    let origin = origin.or_else(|| value.origin().map(str::to_string));
    let origin = origin.map(|o| format!(" (in {o})")).unwrap_or_default();
    format!("{key} = {}{origin}: {why}", shown_value(&value))
}

/// The nodes of `amqp.url`: one URL, or several separated by commas (a cluster).
pub fn nodes(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads `toml` as the configuration file.
    fn load(toml: &str) -> Result<Settings, ConfigError> {
        let path = std::env::temp_dir().join(format!(
            "video-import-config-{}.toml",
            crate::ids::random_id(8)
        ));
        std::fs::write(&path, toml).unwrap();
        let loaded = Settings::load(Some(&path));
        let _ = std::fs::remove_file(&path);
        loaded
    }

    #[test]
    fn values_are_typed_once_at_load() {
        let settings = load(
            "[fetch]\nallowed_networks = [\"10.20.0.0/16\"]\nretry_delays_secs = [1, 2]\n\
             connect_timeout_secs = 3\n[log]\nformat = \"json\"\n",
        )
        .unwrap();
        assert_eq!(
            settings.fetch.allowed_networks,
            vec!["10.20.0.0/16".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            settings.fetch.retry_delays,
            vec![Duration::from_secs(1), Duration::from_secs(2)]
        );
        assert_eq!(settings.fetch.connect_timeout, Duration::from_secs(3));
        assert_eq!(settings.log.format, LogFormat::Json);
        assert_eq!(settings.webhook.timeout, Duration::from_secs(15));
        let cluster =
            load("[amqp]\nurl = [\"amqp://a:5672/%2f\", \"amqp://b:5672/%2f\"]\n").unwrap();
        assert_eq!(
            nodes(&cluster.amqp.url),
            ["amqp://a:5672/%2f", "amqp://b:5672/%2f"]
        );
        let one = load("[webhook]\nretry_schedule_secs = 60\n").unwrap();
        assert_eq!(one.webhook.retry_schedule, vec![Duration::from_secs(60)]);
        assert_eq!(
            one.retention.finished_jobs,
            Duration::from_secs(30 * 86_400),
            "retention defaults to 30 days"
        );
        let kept = load("[retention]\nfinished_jobs_secs = 0\ninterval_secs = 0\n").unwrap();
        assert!(!kept.retention.enabled(), "0 keeps everything");
    }

    #[test]
    fn workers_sweep_local_storage_hourly_unless_told_and_a_bucket_only_when_told() {
        let local = load("").unwrap();
        assert_eq!(local.storage.sweep_every(), Some(Duration::from_secs(3600)));
        let off = load("[storage]\nsweep_interval_secs = 0\n").unwrap();
        assert_eq!(off.storage.sweep_every(), None);
        let bucket = load("[storage]\nurl = \"s3://media/imports\"\n").unwrap();
        assert_eq!(bucket.storage.sweep_every(), None, "a bucket may be shared");
        let told =
            load("[storage]\nurl = \"s3://media/imports\"\nsweep_interval_secs = 600\n").unwrap();
        assert_eq!(told.storage.sweep_every(), Some(Duration::from_secs(600)));
    }

    #[test]
    fn a_bad_value_names_its_key_and_the_value() {
        for (toml, key, value) in [
            (
                "[fetch]\nallowed_networks = [\"10.0.0.0/8\", \"intranet\"]\n",
                "fetch.allowed_networks[1]",
                "\"intranet\"",
            ),
            (
                "[metrics]\nlisten = \"everywhere\"\n",
                "metrics.listen",
                "\"everywhere\"",
            ),
            ("[log]\nformat = \"xml\"\n", "log.format", "\"xml\""),
            (
                "[webhook]\ntimeout_secs = -1\n",
                "webhook.timeout_secs",
                "-1",
            ),
            (
                "[webhook]\nretry_schedule_secs = [5, \"soon\"]\n",
                "webhook.retry_schedule_secs[1]",
                "\"soon\"",
            ),
            (
                "[api]\nmax_batch_size = \"lots\"\n",
                "api.max_batch_size",
                "\"lots\"",
            ),
            (
                "[api]\nlistn = \"127.0.0.1:1\"\n",
                "api.listn",
                "\"127.0.0.1:1\"",
            ),
            ("[api]\nmax_batch_size = 0\n", "api.max_batch_size", "0"),
            (
                "[api]\nbody_timeout_secs = 0\n",
                "api.body_timeout_secs",
                "0",
            ),
            ("[webhook]\nconcurrency = 0\n", "webhook.concurrency", "0"),
            (
                "[retention]\ninterval_secs = 0\n",
                "retention.interval_secs",
                "0",
            ),
            (
                "[retention]\nfinished_jobs_secs = 2592000000000\n",
                "retention.finished_jobs_secs",
                "2592000000000",
            ),
            (
                "[amqp]\nurl = \"amqp://a/%2f, http://b\"\n",
                "amqp.url",
                "\"amqp://a/%2f, http://b\": \"http://b\" is not",
            ),
            (
                "[fetch]\nproxy = \"socks5://203.0.113.7:1080\"\n",
                "fetch.proxy",
                "\"socks5://203.0.113.7:1080\"",
            ),
            (
                "[webhook]\nproxy = \"http://proxy.example:3128/path\"\n",
                "webhook.proxy",
                "\"http://proxy.example:3128/path\"",
            ),
            (
                "[fetch]\nproxy = \"proxy:3128\"\n",
                "fetch.proxy",
                "\"proxy:3128\"",
            ),
            (
                "[telemetry]\notlp_endpoint = \"collector:4318\"\n",
                "telemetry.otlp_endpoint",
                "\"collector:4318\": must be the collector's OTLP/HTTP base URL",
            ),
            (
                "[telemetry]\notlp_endpoint = \"http://collector:4318/?x=1\"\n",
                "telemetry.otlp_endpoint",
                "\"http://collector:4318/?x=1\"",
            ),
            (
                "[telemetry]\nsample_ratio = 1.5\n",
                "telemetry.sample_ratio",
                "1.5: must be from 0",
            ),
            ("[telemetry]\nqueue_size = 0\n", "telemetry.queue_size", "0"),
            (
                "[telemetry]\nexport_timeout_secs = 0\n",
                "telemetry.export_timeout_secs",
                "0",
            ),
        ] {
            let error = load(toml).unwrap_err().to_string();
            assert!(
                error.contains(&format!("{key} = {value}")),
                "{toml}: {error}"
            );
        }
    }

    #[test]
    fn the_verify_rate_is_a_number_of_mib_per_second_or_zero() {
        assert_eq!(load("").unwrap().storage.verify_rate_mib, 0.0);
        assert_eq!(
            load("[storage]\nverify_rate_mib = 20\n")
                .unwrap()
                .storage
                .verify_rate_mib,
            20.0
        );
        assert_eq!(
            load("[storage]\nverify_rate_mib = 0.5\n")
                .unwrap()
                .storage
                .verify_rate_mib,
            0.5
        );
        for (toml, value) in [
            ("[storage]\nverify_rate_mib = -1\n", "-1"),
            ("[storage]\nverify_rate_mib = \"fast\"\n", "\"fast\""),
        ] {
            let error = load(toml).unwrap_err().to_string();
            assert!(
                error.contains(&format!("storage.verify_rate_mib = {value}")),
                "{toml}: {error}"
            );
        }
    }

    #[test]
    fn the_sync_writers_are_a_count_from_1_to_64() {
        assert_eq!(load("").unwrap().storage.sync_writers, 4);
        assert_eq!(
            load("[storage]\nsync_writers = 16\n")
                .unwrap()
                .storage
                .sync_writers,
            16
        );
        for value in ["0", "65"] {
            let error = load(&format!("[storage]\nsync_writers = {value}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                error.contains(&format!(
                    "storage.sync_writers = {value}: must be from 1 to 64"
                )),
                "{value}: {error}"
            );
        }
    }

    #[test]
    fn values_in_messages_show_no_credentials() {
        for (toml, host) in [
            (
                "[amqp]\nurl = \"amqp://guest:hunter2@a/%2f, http://u:hunter2@b\"\n",
                "http://b",
            ),
            (
                "[fetch]\nproxy = \"http://user:hunter2@127.0.0.1:3128\"\n",
                "http://127.0.0.1:3128",
            ),
            (
                "[fetch]\nproxy = \"http://user:hun ter2@pro xy:3128\"\n",
                "pro xy:3128",
            ),
            (
                "[api]\nmax_batch_size = \"http://u:hunter2@x\"\n",
                "http://x",
            ),
        ] {
            let error = load(toml).unwrap_err().to_string();
            assert!(
                !error.contains("hunter2") && !error.contains("hun ter2"),
                "{toml}: {error}"
            );
            assert!(error.contains(host), "the host is still named: {error}");
        }
    }

    #[test]
    fn the_collector_is_a_base_url_and_export_is_off_without_one() {
        let off = load("").unwrap();
        assert_eq!(off.telemetry.traces_url(), None);
        assert_eq!(off.telemetry.sample_ratio, 1.0);
        for (endpoint, traces) in [
            ("http://collector:4318", "http://collector:4318/v1/traces"),
            ("http://collector:4318/", "http://collector:4318/v1/traces"),
            (
                "https://otlp.example/tenant-a/",
                "https://otlp.example/tenant-a/v1/traces",
            ),
            // A private address is fine: the collector is the operator's, not a user's.
            ("http://10.0.0.7:4318", "http://10.0.0.7:4318/v1/traces"),
        ] {
            let settings = load(&format!(
                "[telemetry]\notlp_endpoint = \"{endpoint}\"\nsample_ratio = 0.25\n"
            ))
            .unwrap();
            assert_eq!(settings.telemetry.traces_url().as_deref(), Some(traces));
            assert_eq!(settings.telemetry.sample_ratio, 0.25);
        }
        let empty = load("[telemetry]\notlp_endpoint = \"\"\n").unwrap();
        assert_eq!(empty.telemetry.traces_url(), None);
        let error = load("[telemetry]\notlp_endpoint = \"http://u:hunter2@collector:4318\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("OTEL_EXPORTER_OTLP_HEADERS") && !error.contains("hunter2"),
            "{error}"
        );
    }

    #[test]
    fn a_proxy_is_admitted_like_a_target() {
        let public = load("[fetch]\nproxy = \"http://203.0.113.7:3128\"\n");
        // 203.0.113.0/24 is documentation space: refused like any target, by its address.
        let error = public.unwrap_err().to_string();
        assert!(
            error.contains("fetch.proxy = \"http://203.0.113.7:3128/\"")
                && error.contains("fetch.allowed_networks"),
            "{error}"
        );
        let named = load("[webhook]\nproxy = \"https://proxy.example.com:3128\"\n").unwrap();
        assert_eq!(
            named.webhook.proxy.map(String::from).as_deref(),
            Some("https://proxy.example.com:3128/")
        );
        let admitted = load(
            "[fetch]\nproxy = \"http://127.0.0.1:3128\"\nallowed_networks = [\"127.0.0.1/32\"]\n",
        )
        .unwrap();
        assert!(admitted.fetch.proxy.is_some());
        let error = load("[webhook]\nproxy = \"http://localhost:3128\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("webhook.allowed_networks"), "{error}");
        let none = load("[fetch]\nproxy = \"\"\n").unwrap();
        assert!(none.fetch.proxy.is_none() && none.webhook.proxy.is_none());
    }

    #[test]
    fn a_bad_secrets_key_is_refused_naming_the_key_and_never_showing_it() {
        let good = crate::secrets::SecretKey::generate();
        let loaded = load(&format!(
            "[secrets]\nkey = \"{}\"\nprevious_keys = [\"{}\"]\n",
            good.to_base64(),
            good.to_base64()
        ))
        .unwrap();
        assert_eq!(loaded.secrets.key.as_ref(), Some(&good));
        assert_eq!(loaded.secrets.previous_keys, vec![good.clone()]);
        let cut = &good.to_base64()[..30];
        for toml in [
            format!("[secrets]\nkey = \"{cut}\"\n"),
            format!(
                "[secrets]\nprevious_keys = [\"{}\", \"{cut}\"]\n",
                good.to_base64()
            ),
        ] {
            let error = load(&toml).unwrap_err().to_string();
            assert!(error.contains("secrets."), "{error}");
            assert!(error.contains("openssl rand -base64 32"), "{error}");
            assert!(!error.contains(cut), "the key is shown: {error}");
        }
        assert!(!format!("{loaded:?}").contains(&good.to_base64()));
    }

    #[test]
    fn settings_with_keys_never_show_them_printed_or_serialised() {
        let (key, previous) = (
            crate::secrets::SecretKey::generate(),
            crate::secrets::SecretKey::generate(),
        );
        let settings = Settings {
            secrets: SecretsSettings {
                key: Some(key.clone()),
                previous_keys: vec![previous.clone()],
            },
            ..Settings::default()
        };
        let printed = format!("{settings:?} {settings:#?}");
        let json = serde_json::to_string(&settings).unwrap();
        for shown in [&printed, &json] {
            for secret in [&key, &previous] {
                let base64 = secret.to_base64();
                assert!(
                    !shown.contains(base64.trim_end_matches('=')),
                    "a key in {shown}"
                );
            }
        }
        assert!(printed.contains(key.id()), "Debug names the key by its id");
        let secrets = &serde_json::from_str::<serde_json::Value>(&json).unwrap()["secrets"];
        assert_eq!(
            *secrets,
            serde_json::json!({"key": "(hidden)", "previous_keys": ["(hidden)"]})
        );
        // Without keys (the defaults the config crate is given) nothing is written in their
        // place, and the defaults load.
        let none = serde_json::to_value(Settings::default()).unwrap();
        assert_eq!(none["secrets"], serde_json::json!({"previous_keys": []}));
        assert!(load("").unwrap().secrets.key.is_none());
    }
}
