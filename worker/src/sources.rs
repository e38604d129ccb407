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
        self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use video_import_shared::secrets::{Hidden, SecretKey};
    use video_import_shared::sources::{coverage, Coverage};
    use video_import_shared::store::projects::{self, Limits};
    use video_import_shared::store::sources::{NewRule, S3Location};

    fn options() -> netguard::ClientOptions {
        netguard::ClientOptions {
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            max_redirects: 0,
            user_agent: "test".into(),
        }
    }

    fn builder(keys: &Keyring) -> Builder {
        video_import_shared::telemetry::init_tls();
        Builder {
            keys: keys.clone(),
            policy: AddressPolicy::new(true, &[]),
            options: options(),
        }
    }

    fn keyring() -> Keyring {
        Keyring::new(Some(SecretKey::generate()), vec![])
    }

    /// The secrets and S3 location of a rule with `prefix`.
    fn parts(prefix: &str) -> (SourceKind, RuleSecrets, Option<S3Location>) {
        if prefix.starts_with("s3://") {
            let secrets = RuleSecrets {
                s3_secret_access_key: Some(Hidden("s3cr3t".into())),
                ..RuleSecrets::default()
            };
            let location = S3Location {
                region: "us-east-1".into(),
                endpoint: Some("http://127.0.0.1:9000".into()),
                access_key_id: "AKIATEST".into(),
            };
            (SourceKind::S3, secrets, Some(location))
        } else {
            let secrets = RuleSecrets {
                headers: vec![("X-Key".into(), Hidden("v".into()))],
                ..RuleSecrets::default()
            };
            (SourceKind::Http, secrets, None)
        }
    }

    /// A stored rule `id` of project 1, sealed with `keys`.
    fn row(id: i64, prefix: &str, keys: &Keyring) -> RuleRow {
        let (kind, secrets, s3) = parts(prefix);
        let now = chrono::Utc::now();
        RuleRow {
            id,
            project_id: 1,
            prefix: prefix.into(),
            kind,
            allow_http: false,
            header_names: vec!["X-Key".into()],
            basic_auth: false,
            s3,
            sealed: secrets.seal(keys, 1, prefix).unwrap(),
            created_at: now,
            updated_at: now,
        }
    }

    fn url(text: &str) -> url::Url {
        text.parse().unwrap()
    }

    #[test]
    fn an_unchanged_row_keeps_what_was_built_and_a_changed_one_is_built_again() {
        let keys = keyring();
        let builder = builder(&keys);
        let rows = vec![
            row(1, "s3://masters/", &keys),
            row(2, "https://archive.example/", &keys),
        ];
        let (first, _) = builder.assemble(rows.clone(), &[], &[]);
        assert!(matches!(*first[0].access, Access::S3(_)));
        assert!(matches!(*first[1].access, Access::Http { .. }));
        let (again, _) = builder.assemble(rows.clone(), &first, &[]);
        for (before, now) in first.iter().zip(&again) {
            assert!(Arc::ptr_eq(&before.access, &now.access), "{}", now.name());
        }
        // Rotated (sealed again, `updated_at` as it was) and replaced (`updated_at` moved):
        // both built again, and still usable.
        let mut rotated = rows[0].clone();
        rotated.sealed = parts("s3://masters/")
            .1
            .seal(&keys, 1, "s3://masters/")
            .unwrap();
        let mut replaced = rows[1].clone();
        replaced.updated_at += chrono::Duration::seconds(1);
        replaced.allow_http = true;
        let (changed, _) = builder.assemble(vec![rotated, replaced], &again, &[]);
        for (before, now) in again.iter().zip(&changed) {
            assert!(!Arc::ptr_eq(&before.access, &now.access), "{}", now.name());
            assert!(now.unusable().is_none(), "{}", now.name());
        }
        assert!(changed[1].allow_http);
        // A removed rule is gone.
        let (left, _) = builder.assemble(vec![rows[1].clone()], &changed, &[]);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].id, 2);
    }

    #[test]
    fn only_secrets_a_key_can_mend_are_retried_the_others_fail_at_once_naming_the_rule() {
        let keys = keyring();
        let stored = row(7, "s3://masters/", &keys);
        let outcome = |builder: &Builder, row: &RuleRow| {
            let (rules, _) = builder.assemble(vec![row.clone()], &[], &[]);
            rules[0].unusable().expect("unusable")
        };
        // Sealed with a key this worker lacks: configuring it mends that.
        let error = outcome(&builder(&keyring()), &stored);
        assert!(matches!(error, FetchError::Transient { .. }), "{error}");
        assert!(error.to_string().contains(&stored.sealed.key_id), "{error}");
        // Damaged, or bound to another rule: no key mends it.
        let mut damaged = stored.clone();
        let last = damaged.sealed.bytes.len() - 1;
        damaged.sealed.bytes[last] ^= 1;
        let mut moved = stored.clone();
        moved.sealed = row(8, "s3://other/", &keys).sealed;
        // Stored as an http rule with an s3:// prefix.
        let mut mismatched = stored.clone();
        mismatched.kind = SourceKind::Http;
        for bad in [damaged, moved, mismatched] {
            let error = outcome(&builder(&keys), &bad);
            assert!(matches!(error, FetchError::Permanent { .. }), "{error}");
            assert!(
                error
                    .to_string()
                    .starts_with("cannot use source rule 7 (s3://masters/): "),
                "{error}"
            );
        }
        assert!(builder(&keys).assemble(vec![stored], &[], &[]).0[0]
            .unusable()
            .is_none());
    }

    #[test]
    fn a_rule_whose_stored_prefix_does_not_parse_covers_nothing() {
        let keys = keyring();
        let builder = builder(&keys);
        let bad = row(3, "s3://bad bucket/", &keys);
        let good = row(4, "https://archive.example/", &keys);
        let (rules, left_out) = builder.assemble(vec![bad.clone(), good.clone()], &[], &[]);
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].id, 4);
        assert_eq!(left_out, vec![bad.clone()]);
        for target in [
            "s3://unusable/a.mp4",
            "s3://bad/a.mp4",
            "s3://masters/a.mp4",
        ] {
            assert!(
                matches!(coverage(&rules, &url(target)), Coverage::None),
                "{target}"
            );
        }
        // Found again by the next read: still left out (and, being known, not logged again).
        let (rules, left_out) = builder.assemble(vec![bad.clone(), good], &rules, &left_out);
        assert_eq!((rules.len(), left_out), (1, vec![bad]));
    }

    /// Adds a rule with `prefix` to project `project_id`.
    async fn add(
        client: &deadpool_postgres::Client,
        project_id: i64,
        prefix: &str,
        keys: &Keyring,
    ) {
        let (kind, secrets, s3) = parts(prefix);
        let sealed = secrets.seal(keys, project_id, prefix).unwrap();
        let rule = NewRule {
            prefix,
            kind,
            allow_http: false,
            header_names: &[],
            basic_auth: false,
            s3: s3.as_ref(),
            sealed: &sealed,
        };
        sources::add(client, project_id, &rule, false)
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn downloads_that_find_the_rules_expired_share_one_read_and_the_built_client() {
        video_import_shared::telemetry::init_tls();
        let db = video_import_tests::Database::create().await;
        let pool = video_import_shared::db::connect(&db.settings())
            .await
            .unwrap();
        video_import_shared::store::migrate::run(&pool)
            .await
            .unwrap();
        let client = pool.get().await.unwrap();
        let limits = Limits {
            daily_limit: None,
            metadata_schema: None,
        };
        projects::create(&client, "p", "whsec_test", &limits)
            .await
            .unwrap();
        let project_id = projects::id_of(&client, "p").await.unwrap().unwrap();
        let keys = keyring();
        add(&client, project_id, "s3://masters/", &keys).await;
        let rules = Arc::new(SourceRules::new(
            pool.clone(),
            keys.clone(),
            AddressPolicy::new(true, &[]),
            options(),
        ));
        let reads = || rules.inner.reads.load(Ordering::SeqCst);

        let first = rules.of(project_id).await.unwrap();
        assert!(matches!(*first[0].access, Access::S3(_)));
        assert!(Arc::ptr_eq(&rules.of(project_id).await.unwrap(), &first));
        assert_eq!(reads(), 1, "cached");

        // Expired: a hundred downloads at once read once, and keep the S3 client.
        rules.expire(project_id);
        let all = futures::future::join_all((0..100).map(|_| rules.of(project_id))).await;
        assert_eq!(reads(), 2, "one read for a hundred downloads");
        let read = all[0].as_ref().unwrap().clone();
        assert!(!Arc::ptr_eq(&read, &first), "read again");
        for got in &all {
            assert!(Arc::ptr_eq(got.as_ref().unwrap(), &read));
        }
        assert!(
            Arc::ptr_eq(&read[0].access, &first[0].access),
            "the same client"
        );

        // A rule added just now: downloads that lack it share a read that starts after they
        // asked, and find it.
        add(&client, project_id, "https://archive.example/", &keys).await;
        let fresh =
            futures::future::join_all((0..50).map(|_| rules.fresh(project_id, &read))).await;
        let extra = reads() - 2;
        assert!((1..=2).contains(&extra), "{extra} reads for 50 downloads");
        for got in &fresh {
            let got = got.as_ref().unwrap();
            assert_eq!(got.len(), 2);
            assert!(
                Arc::ptr_eq(&got[1].access, &read[0].access),
                "s3 client kept"
            );
        }
        // Once read, the newer rules do for a download that still holds the old ones.
        let before = reads();
        rules.fresh(project_id, &read).await.unwrap();
        assert_eq!(reads(), before);
        drop(client);
        drop(pool);
    }
}
