//! The source rules of each project as the worker uses them: read from PostgreSQL (never
//! from a message), cached for [`CACHE_FOR`], their secrets opened with the worker's own
//! keys. An `s3://` rule becomes an `object_store` client of its bucket whose HTTP client is
//! the worker's guarded one (the same address policy and proxy as video URLs).

use std::collections::HashMap;
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
use video_import_shared::sources::{HasPrefix, Prefix, RuleSecrets, SourceKind};
use video_import_shared::store::sources::{self, RuleRow};

use crate::error::{FailureClass, FetchError};

/// How long a project's rules are used before they are read again: a rule added, replaced
/// or removed reaches every worker within this time.
pub const CACHE_FOR: Duration = Duration::from_secs(10);

/// One rule, ready to use.
pub struct Rule {
    pub id: i64,
    pub prefix: Prefix,
    pub allow_http: bool,
    pub access: Access,
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

/// A project's rules, and when they were read.
type Cached = (Instant, Arc<Vec<Rule>>);

impl Rule {
    /// Who the rule is, in reasons: `source rule 7 (https://archive.example/masters/)`.
    pub fn name(&self) -> String {
        format!("source rule {} ({})", self.id, self.prefix)
    }

    /// The error of a video that needs this rule while it is unusable.
    pub fn unusable(&self) -> Option<FetchError> {
        match &self.access {
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

/// Builds the rules of projects and caches them.
pub struct SourceRules {
    pool: Pool,
    keys: Keyring,
    /// The address policy (and proxy) every S3 endpoint is reached under.
    policy: AddressPolicy,
    options: netguard::ClientOptions,
    cache: Mutex<HashMap<i64, Cached>>,
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
            pool,
            keys,
            policy,
            options,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The rules of project `project_id` (at most [`CACHE_FOR`] old).
    pub async fn of(&self, project_id: i64) -> Result<Arc<Vec<Rule>>, FetchError> {
        if let Some((at, rules)) = self.cache.lock().expect("not poisoned").get(&project_id) {
            if at.elapsed() < CACHE_FOR {
                return Ok(rules.clone());
            }
        }
        self.read(project_id).await
    }

    /// The rules of project `project_id` as they are now, when `cached` lacks a rule a
    /// video needs (it may have been added moments ago): read again, unless another video
    /// did since `cached` was read. Only such videos pay for it, and the API turns most
    /// of them away before they are queued.
    pub async fn fresh(
        &self,
        project_id: i64,
        cached: &Arc<Vec<Rule>>,
    ) -> Result<Arc<Vec<Rule>>, FetchError> {
        if let Some((_, rules)) = self.cache.lock().expect("not poisoned").get(&project_id) {
            if !Arc::ptr_eq(rules, cached) {
                return Ok(rules.clone());
            }
        }
        self.read(project_id).await
    }

    async fn read(&self, project_id: i64) -> Result<Arc<Vec<Rule>>, FetchError> {
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
        let rules: Arc<Vec<Rule>> = Arc::new(rows.iter().map(|row| self.build(row)).collect());
        let mut cache = self.cache.lock().expect("not poisoned");
        // Projects that stopped importing are forgotten.
        cache.retain(|_, (at, _)| at.elapsed() < CACHE_FOR * 6);
        cache.insert(project_id, (Instant::now(), rules.clone()));
        Ok(rules)
    }

    fn build(&self, row: &RuleRow) -> Rule {
        let unusable = |reason: String, transient: bool| Unusable { reason, transient };
        let access = match Prefix::parse(&row.prefix) {
            Err(why) => Err(unusable(format!("its prefix {why}"), false)),
            Ok(prefix) => {
                RuleSecrets::open(&self.keys, row.project_id, prefix.as_str(), &row.sealed)
                    .map_err(|e| unusable(e.to_string(), true))
                    .and_then(|secrets| match prefix.kind() {
                        SourceKind::Http => http_access(&secrets).map_err(|e| unusable(e, false)),
                        SourceKind::S3 => self.s3_access(&prefix, row, &secrets),
                    })
            }
        };
        Rule {
            id: row.id,
            prefix: Prefix::parse(&row.prefix)
                .unwrap_or_else(|_| Prefix::parse("s3://unusable/").expect("a valid prefix")),
            allow_http: row.allow_http,
            access: access.unwrap_or_else(Access::Unusable),
        }
    }

    /// A client of the rule's bucket, through the worker's guarded HTTP client.
    fn s3_access(
        &self,
        prefix: &Prefix,
        row: &RuleRow,
        secrets: &RuleSecrets,
    ) -> Result<Access, Unusable> {
        let unusable = |reason: String| Unusable {
            reason,
            transient: false,
        };
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
