//! The source rules of each project as the worker uses them: read from PostgreSQL (never
//! from a message), cached for [`CACHE_FOR`], their secrets opened with the worker's own
//! keys. An `s3://` rule becomes an `object_store` client of its bucket whose HTTP client is
//! the worker's guarded one (the same address policy and proxy as video URLs).
//!
//! Downloads that find a project's rules expired at the same moment share one read
//! (`SingleFlight`), and a rule whose row has not changed since the last read is reused as
//! it was built: its S3 client (with its connection pool) and its headers outlive the cache.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use deadpool_postgres::Pool;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::{HttpClient, HttpConnector};
use object_store::{ClientOptions, RetryConfig};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use video_import_shared::netguard::{self, AddressPolicy};
use video_import_shared::secrets::Keyring;
use video_import_shared::single_flight::SingleFlight;
use video_import_shared::sources::{HasPrefix, Prefix, RuleSecrets, SourceKind};
use video_import_shared::store::sources::{self, RuleRow};

use crate::error::{FailureClass, FetchError};

/// How long a project's rules are used before they are read again: a rule added, replaced
/// or removed reaches every worker within this time.
pub const CACHE_FOR: Duration = Duration::from_secs(10);

/// One rule, ready to use. A clone shares what was built for it.
#[derive(Clone)]
pub struct Rule {
    /// Its id, as `source list` shows it.
    pub id: i64,
    /// The URLs it covers.
    pub prefix: Prefix,
    /// Whether its credentials may go over plain http.
    pub allow_http: bool,
    /// How its requests authenticate: built once per version of its row.
    pub access: Arc<Access>,
    /// The row it was built from: while a read finds the same, the rule is reused.
    row: RuleRow,
}

impl HasPrefix for Rule {
    fn prefix(&self) -> &Prefix {
        &self.prefix
    }
}

/// How a rule's requests authenticate.
pub enum Access {
    /// Headers for every request to the rule's origin; `Authorization` (from `--basic` or a
    /// header of that name) is kept apart, as a URL that authenticates itself gets none.
    Http {
        headers: HeaderMap,
        authorization: Option<HeaderValue>,
    },
    /// A client of the rule's bucket.
    S3(Arc<AmazonS3>),
    /// The rule cannot be used (its secrets do not open with this worker's keys, its
    /// endpoint is refused).
    Unusable(Unusable),
}

/// Why a rule cannot be used, and whether configuring the worker can mend it (a key).
pub struct Unusable {
    reason: String,
    transient: bool,
}

impl Unusable {
    /// A reason no configuration of the worker mends: the rule must be added again.
    fn permanent(reason: String) -> Self {
        Self {
            reason,
            transient: false,
        }
    }
}

impl Rule {
    /// Who the rule is, in reasons: `source rule 7 (https://archive.example/masters/)`.
    pub fn name(&self) -> String {
        format!("source rule {} ({})", self.id, self.prefix)
    }

    /// The error of a video that needs this rule while it is unusable.
    pub fn unusable(&self) -> Option<FetchError> {
        match &*self.access {
            Access::Unusable(Unusable { reason, transient }) => {
                let reason = format!("cannot use {}: {reason}", self.name());
                Some(if *transient {
                    FetchError::transient(FailureClass::SourceRule, reason)
                } else {
                    FetchError::permanent(FailureClass::SourceRule, reason)
                })
            }
            _ => None,
        }
    }
}

/// A project's rules as last read.
struct Cached {
    /// When the read that found them started.
    read_at: Instant,
    rules: Arc<Vec<Rule>>,
    /// The rows left out (their prefix does not parse), logged when first found.
    left_out: Vec<RuleRow>,
}

/// Which read a request waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Want {
    /// Rules at most [`CACHE_FOR`] old.
    Current,
    /// Rules read after the request arrived: a rule it needs may have been added just now.
    Newer,
}

/// A project's rules, or why they could not be read.
type Read = Result<Arc<Vec<Rule>>, FetchError>;

/// Reads the rules of projects, builds them and caches them.
pub struct SourceRules {
    inner: Arc<Inner>,
    /// One read of a project's rules at a time for all its downloads.
    reads: SingleFlight<(i64, Want), Read>,
}

/// What a read needs; shared with the reads' own tasks.
struct Inner {
    pool: Pool,
    builder: Builder,
    cache: Mutex<HashMap<i64, Cached>>,
    /// Reads of PostgreSQL so far.
    #[cfg(test)]
    reads: std::sync::atomic::AtomicUsize,
}

/// Makes rules of rows: opens their secrets with the worker's keys, builds S3 clients whose
/// endpoints are reached under the worker's address policy.
struct Builder {
    keys: Keyring,
    /// The address policy (and proxy) every S3 endpoint is reached under.
    policy: AddressPolicy,
    options: netguard::ClientOptions,
}

impl SourceRules {
    /// Rules read with `pool`, opened with `keys`; S3 endpoints reached under `policy`.
    pub fn new(
        pool: Pool,
        keys: Keyring,
        policy: AddressPolicy,
        options: netguard::ClientOptions,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                builder: Builder {
                    keys,
                    policy,
                    options,
                },
                cache: Mutex::new(HashMap::new()),
                #[cfg(test)]
                reads: Default::default(),
            }),
            reads: SingleFlight::default(),
        }
    }

    /// The rules of project `project_id` (at most [`CACHE_FOR`] old). When they expired,
    /// the downloads that ask at once share one read: a download that asks while a read is
    /// under way waits for the next, which finds the rules the first one stored.
    pub async fn of(&self, project_id: i64) -> Result<Arc<Vec<Rule>>, FetchError> {
        if let Some(rules) = self.inner.current(project_id) {
            return Ok(rules);
        }
        let inner = self.inner.clone();
        self.shared((project_id, Want::Current), move || async move {
            match inner.current(project_id) {
                Some(rules) => Ok(rules),
                None => inner.read(project_id).await,
            }
        })
        .await
    }

    /// The rules of project `project_id` as they are now, when `cached` lacks a rule a
    /// video needs (it may have been added moments ago): read again, unless another video
    /// did since `cached` was read. Only such videos pay for it, and the API turns most
    /// of them away before they are queued; those that ask at once share a read that
    /// starts after they asked.
    pub async fn fresh(
        &self,
        project_id: i64,
        cached: &Arc<Vec<Rule>>,
    ) -> Result<Arc<Vec<Rule>>, FetchError> {
        if let Some(rules) = self.inner.newer_than(project_id, cached) {
            return Ok(rules);
        }
        let inner = self.inner.clone();
        self.shared((project_id, Want::Newer), move || async move {
            inner.read(project_id).await
        })
        .await
    }

    /// The result of the read of `key` this request shares.
    async fn shared<F, Fut>(&self, key: (i64, Want), read: F) -> Read
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Read> + Send + 'static,
    {
        self.reads
            .run(key, move || {
                let reading = read();
                async move { Some(reading.await) }
            })
            .await
            .unwrap_or_else(|| {
                Err(FetchError::transient(
                    FailureClass::Other,
                    "the read of the project's source rules stopped without an answer",
                ))
            })
    }

    /// Makes the cached rules of `project_id` old enough to be read again.
    #[cfg(test)]
    fn expire(&self, project_id: i64) {
        let mut cache = self.inner.cache.lock().expect("not poisoned");
        if let Some(cached) = cache.get_mut(&project_id) {
            cached.read_at = Instant::now()
                .checked_sub(CACHE_FOR * 2)
                .expect("the clock is past CACHE_FOR");
        }
    }
}

impl Inner {
    /// The cached rules of `project_id`, if they are at most [`CACHE_FOR`] old.
    fn current(&self, project_id: i64) -> Option<Arc<Vec<Rule>>> {
        let cache = self.cache.lock().expect("not poisoned");
        cache
            .get(&project_id)
            .filter(|cached| cached.read_at.elapsed() < CACHE_FOR)
            .map(|cached| cached.rules.clone())
    }

    /// The cached rules of `project_id`, if they were read after `rules` were.
    fn newer_than(&self, project_id: i64, rules: &Arc<Vec<Rule>>) -> Option<Arc<Vec<Rule>>> {
        let cache = self.cache.lock().expect("not poisoned");
        cache
            .get(&project_id)
            .filter(|cached| !Arc::ptr_eq(&cached.rules, rules))
            .map(|cached| cached.rules.clone())
    }

    /// Reads the rules of `project_id`, builds those whose rows changed, and caches them.
    async fn read(&self, project_id: i64) -> Read {
        let read_at = Instant::now();
        #[cfg(test)]
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let unavailable = |e: anyhow::Error| {
            FetchError::transient(
                FailureClass::Other,
                format!("cannot read the project's source rules: {e:#}"),
            )
        };
        let client = self.pool.get().await.map_err(|e| unavailable(e.into()))?;
        let rows = sources::of_project(&client, project_id)
            .await
            .map_err(unavailable)?;
        drop(client);
        let (previous, left_out) = {
            let cache = self.cache.lock().expect("not poisoned");
            cache
                .get(&project_id)
                .map(|c| (c.rules.clone(), c.left_out.clone()))
                .unwrap_or_default()
        };
        let (rules, left_out) = self.builder.assemble(rows, &previous, &left_out);
        let rules = Arc::new(rules);
        let mut cache = self.cache.lock().expect("not poisoned");
        // Projects that stopped importing are forgotten.
        cache.retain(|_, cached| cached.read_at.elapsed() < CACHE_FOR * 6);
        // Two reads of a project can overlap (one for downloads, one for a rule just
        // added): the one that started later stays.
        if let Some(later) = cache.get(&project_id).filter(|c| c.read_at > read_at) {
            return Ok(later.rules.clone());
        }
        cache.insert(
            project_id,
            Cached {
                read_at,
                rules: rules.clone(),
                left_out,
            },
        );
        Ok(rules)
    }
}

impl Builder {
    /// The rules of `rows`: a rule whose row is the same as in `previous` is that rule again
    /// (its S3 client, its headers), the others are built. A row whose prefix does not parse
    /// (changed outside video-import-api) is left out, so that it covers nothing, and is
    /// logged unless it is in `left_out` (left out by the read before, logged then). Returns
    /// the rules and the rows left out.
    fn assemble(
        &self,
        rows: Vec<RuleRow>,
        previous: &[Rule],
        left_out: &[RuleRow],
    ) -> (Vec<Rule>, Vec<RuleRow>) {
        let mut rules = Vec::with_capacity(rows.len());
        let mut unparsed = Vec::new();
        for row in rows {
            if let Some(same) = previous.iter().find(|rule| rule.row == row) {
                rules.push(same.clone());
                continue;
            }
            match Prefix::parse(&row.prefix) {
                Ok(prefix) => rules.push(self.build(row, prefix)),
                Err(why) => {
                    if !left_out.contains(&row) {
                        tracing::error!(
                            rule = row.id,
                            project = row.project_id,
                            "source rule {} is not used: its stored prefix {why}; remove it \
                             (`video-import-api source remove {}`) and add it again",
                            row.id,
                            row.id
                        );
                    }
                    unparsed.push(row);
                }
            }
        }
        (rules, unparsed)
    }

    /// The rule of `row`, whose prefix is `prefix`.
    fn build(&self, row: RuleRow, prefix: Prefix) -> Rule {
        let access = self.access(&row, &prefix).unwrap_or_else(Access::Unusable);
        Rule {
            id: row.id,
            prefix,
            allow_http: row.allow_http,
            access: Arc::new(access),
            row,
        }
    }

    /// How the requests of the rule of `row` authenticate, or why they cannot. Only a key
    /// the worker lacks can be mended by configuring it; damaged secrets or settings need
    /// the rule added again.
    fn access(&self, row: &RuleRow, prefix: &Prefix) -> Result<Access, Unusable> {
        if row.kind != prefix.kind() {
            return Err(Unusable::permanent(format!(
                "it is stored as an {} rule, which its prefix is not; add it again",
                row.kind
            )));
        }
        let secrets = RuleSecrets::open(&self.keys, row.project_id, prefix.as_str(), &row.sealed)
            .map_err(|e| Unusable {
                transient: e.mendable_by_configuration(),
                reason: e.to_string(),
            })?;
        match row.kind {
            SourceKind::Http => http_access(&secrets).map_err(Unusable::permanent),
            SourceKind::S3 => self.s3_access(prefix, row, &secrets),
        }
    }

    /// A client of the rule's bucket, through the worker's guarded HTTP client.
    fn s3_access(
        &self,
        prefix: &Prefix,
        row: &RuleRow,
        secrets: &RuleSecrets,
    ) -> Result<Access, Unusable> {
        let unusable = Unusable::permanent;
        let (Some(s3), Some(secret)) = (&row.s3, &secrets.s3_secret_access_key) else {
            return Err(unusable(
                "it has no S3 region or keys; add it again with --s3-region and the keys".into(),
            ));
        };
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(prefix.host())
            .with_region(&s3.region)
            .with_access_key_id(&s3.access_key_id)
            .with_secret_access_key(secret.expose())
            // Our retry policy retries (and resumes): object_store's own would multiply it.
            .with_retry(RetryConfig {
                max_retries: 0,
                ..RetryConfig::default()
            })
            .with_http_connector(GuardedConnector {
                policy: self.policy.clone(),
                options: self.options.clone(),
            });
        if let Some(endpoint) = &s3.endpoint {
            let parsed: url::Url = endpoint
                .parse()
                .map_err(|e| unusable(format!("its endpoint is not a URL ({e})")))?;
            self.policy
                .check_endpoint(&parsed)
                .map_err(|why| unusable(format!("its endpoint {endpoint} {why}")))?;
            builder = builder
                .with_endpoint(endpoint.trim_end_matches('/'))
                .with_allow_http(parsed.scheme() == "http");
        }
        builder
            .build()
            .map(|store| Access::S3(Arc::new(store)))
            .map_err(|e| unusable(format!("its S3 settings are not usable: {e}")))
    }
}

/// The headers of an http rule, their values marked sensitive (never shown by the HTTP
/// libraries' own logging).
fn http_access(secrets: &RuleSecrets) -> Result<Access, String> {
    let mut headers = HeaderMap::new();
    let mut authorization = None;
    for (name, value) in &secrets.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("its header {name:?} is not a header name"))?;
        let mut value = HeaderValue::from_str(value.expose())
            .map_err(|_| format!("its header {name} has a value no header may have"))?;
        value.set_sensitive(true);
        if name == AUTHORIZATION {
            authorization = Some(value);
        } else {
            headers.append(name, value);
        }
    }
    if let Some((user, password)) = &secrets.basic {
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            user.expose(),
            password.expose()
        ));
        let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
            .map_err(|_| "its basic credentials make no header".to_string())?;
        value.set_sensitive(true);
        authorization = Some(value);
    }
    Ok(Access::Http {
        headers,
        authorization,
    })
}

/// `object_store`'s HTTP client for S3 rules: the worker's guarded client, so an endpoint's
/// name is resolved and checked against `fetch.allowed_networks` on every connection, the
/// configured proxy (and no environment proxy) is used, and every redirect hop is checked.
#[derive(Debug)]
struct GuardedConnector {
    policy: AddressPolicy,
    options: netguard::ClientOptions,
}

impl HttpConnector for GuardedConnector {
    fn connect(&self, _: &ClientOptions) -> object_store::Result<HttpClient> {
        netguard::client(self.policy.clone(), &self.options)
            .map(HttpClient::new)
            .map_err(|e| object_store::Error::Generic {
                store: "S3",
                source: e.into(),
            })
    }
}
