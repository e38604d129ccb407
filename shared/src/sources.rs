//! Source rules, the pure part: a rule's prefix (parsed and normalised so that it compares
//! with what the worker fetches), which rule covers a URL (the longest prefix), where a
//! rule's credentials may go (its own origin, and plain http only when the rule says so),
//! and which URLs carry their own authentication. The rules themselves are rows
//! (`store::sources`); their secrets are sealed (`secrets`).

use std::fmt;

use crate::secrets::{Hidden, Keyring, Sealed, SecretsError};

/// Most headers one rule may send.
pub const MAX_HEADERS: usize = 32;
/// Longest header value (and basic-auth user and password) a rule may hold.
pub const MAX_VALUE_BYTES: usize = 8192;
/// Longest prefix.
pub const MAX_PREFIX_BYTES: usize = 2048;

/// Headers a rule may not set: the worker sets them itself (conditional and range requests,
/// framing), or they belong to the connection or to a proxy.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "range",
    "if-range",
    "if-none-match",
    "if-modified-since",
    "if-match",
    "if-unmodified-since",
    "proxy-authorization",
    "proxy-connection",
];

/// Query parameters that make a URL carry its own signature: S3 (SigV4 and SigV2), Google
/// Cloud Storage, Azure SAS, CloudFront and other CDNs' signed URLs.
const SIGNATURE_PARAMETERS: &[&str] = &[
    "x-amz-signature",
    "x-goog-signature",
    "signature",
    "sig",
    "x-amz-credential",
];

/// What a rule reads from: web servers, or an S3 bucket. Stored as `kind` (set from the
/// prefix's scheme when the rule is added, see [`Prefix::kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    /// An `https://` or `http://` prefix: headers or basic auth sent to its origin.
    Http,
    /// An `s3://bucket/` prefix: objects read with the rule's S3 keys.
    S3,
}

crate::store::states::state_enum!(SourceKind, "source kind", {
    Http => "http",
    S3 => "s3",
});

/// A rule's prefix: scheme, host, port and the start of the path, normalised as the URL
/// parser normalises the URLs it is compared with (scheme and host in lower case, no default
/// port, dot segments resolved, the path percent-encoded). `s3://bucket/prefix` names a
/// bucket (compared as given, S3 names are case-sensitive) and a key prefix.
#[derive(Clone, PartialEq, Eq)]
pub struct Prefix {
    url: url::Url,
}

impl fmt::Debug for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Prefix({})", self.as_str())
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Scheme, host and port: where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl Origin {
    /// The origin of `url` (ports as the scheme's default when not written).
    pub fn of(url: &url::Url) -> Self {
        Self {
            scheme: url.scheme().to_string(),
            host: url.host_str().unwrap_or_default().to_string(),
            port: url.port_or_known_default(),
        }
    }
}

impl Prefix {
    /// Parses and normalises `text`: `https://host[:port]/path…`, `http://…` or
    /// `s3://bucket/[key prefix]`; no user name or password (give them as `--basic`), query
    /// or fragment. The error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.len() > MAX_PREFIX_BYTES {
            return Err(format!("is longer than {MAX_PREFIX_BYTES} bytes"));
        }
        if let Some(c) = text.chars().find(|c| c.is_control()) {
            return Err(format!(
                "contains the control character U+{:04X}; remove it",
                c as u32
            ));
        }
        let url = url::Url::parse(text).map_err(|e| {
            format!("is not a URL ({e}); give https://host/path/, http://host:port/path/ or s3://bucket/prefix/")
        })?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(
                "holds a user name or password; give them with --basic USER:PASSWORD instead"
                    .into(),
            );
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("has a query or fragment; a prefix is scheme, host, port and path".into());
        }
        match url.scheme() {
            "http" | "https" => {
                // The url crate finds `videos` as the host of `https:///videos`: read the text.
                let names_host = text
                    .split_once("://")
                    .is_some_and(|(_, rest)| !rest.starts_with(['/', '\\', '@', ':']));
                if url.host_str().is_none_or(str::is_empty) || !names_host {
                    return Err("names no host; give https://host/path/".into());
                }
            }
            "s3" => {
                let bucket = url.host_str().unwrap_or_default();
                if !is_bucket_name(bucket) {
                    return Err(format!(
                        "names the bucket {bucket:?}; give s3://bucket/ or s3://bucket/prefix/ \
                         with a bucket name of letters, digits, '.', '-' or '_'"
                    ));
                }
                if url.port().is_some() {
                    return Err(
                        "an s3:// prefix has no port; give the endpoint with --s3-endpoint".into(),
                    );
                }
            }
            other => {
                return Err(format!(
                    "is a {other}: URL; a prefix is https://, http:// or s3://"
                ))
            }
        }
        let mut url = url;
        if url.path().is_empty() {
            url.set_path("/");
        }
        Ok(Self { url })
    }

    /// The normalised text, as stored and shown.
    pub fn as_str(&self) -> &str {
        self.url.as_str()
    }

    /// Whether it is an `s3://` prefix.
    pub fn kind(&self) -> SourceKind {
        match self.url.scheme() {
            "s3" => SourceKind::S3,
            _ => SourceKind::Http,
        }
    }

    /// Its scheme: `https`, `http` or `s3`.
    pub fn scheme(&self) -> &str {
        self.url.scheme()
    }

    /// The bucket of an `s3://` prefix, the host of another.
    pub fn host(&self) -> &str {
        self.url.host_str().unwrap_or_default()
    }

    /// Its origin.
    pub fn origin(&self) -> Origin {
        Origin::of(&self.url)
    }

    /// Whether `url` starts with this prefix: the same origin, and its path starts with the
    /// prefix's path (compared as text: end a prefix with `/` to cover one folder only).
    pub fn covers(&self, url: &url::Url) -> bool {
        Origin::of(url) == self.origin() && url.path().starts_with(self.url.path())
    }

    /// Whether `url` is the plain-http form of a URL this (https) prefix covers: `http://`,
    /// the same host, both on their scheme's default port, and the path under the prefix.
    fn covers_in_clear(&self, url: &url::Url) -> bool {
        self.url.scheme() == "https"
            && url.scheme() == "http"
            && url.host_str() == self.url.host_str()
            && url.port().is_none()
            && self.url.port().is_none()
            && url.path().starts_with(self.url.path())
    }

    /// The prefix's length, for the longest match.
    fn len(&self) -> usize {
        self.url.as_str().len()
    }
}

/// Whether `name` can be a bucket: S3's rules, with the upper case and `_` of legacy and
/// S3-compatible stores admitted.
fn is_bucket_name(name: &str) -> bool {
    (1..=255).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// What a URL is to a project's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage<'a, R> {
    /// The rule with the longest prefix that covers it.
    Rule(&'a R),
    /// No rule covers it, but it is the plain-http form of a URL an https rule covers: its
    /// credentials cannot go there (that rule has no `--allow-http`).
    InClear(&'a R),
    /// No rule concerns it.
    None,
}

/// What a rule is to matching: its prefix.
pub trait HasPrefix {
    /// The prefix the rule covers.
    fn prefix(&self) -> &Prefix;
}

/// Why an `s3://bucket/key` URL cannot be read: no rule of its project covers it. The API
/// says it at the door (`400`), the worker when the rule went away after that.
pub fn no_rule_for_s3(bucket: &str, key: &str) -> String {
    format!(
        "no source rule of this project covers s3://{bucket}/{key}: an operator adds one with \
         `video-import-api source add --project HANDLE --prefix s3://{bucket}/ --s3-region \
         REGION --s3-access-key-id KEY --s3-secret-access-key SECRET`"
    )
}

/// The rule of `rules` that covers `url`: the longest prefix wins.
pub fn coverage<'a, R: HasPrefix>(rules: &'a [R], url: &url::Url) -> Coverage<'a, R> {
    if let Some(rule) = rules
        .iter()
        .filter(|r| r.prefix().covers(url))
        .max_by_key(|r| r.prefix().len())
    {
        return Coverage::Rule(rule);
    }
    match rules
        .iter()
        .filter(|r| r.prefix().covers_in_clear(url))
        .max_by_key(|r| r.prefix().len())
    {
        Some(rule) => Coverage::InClear(rule),
        None => Coverage::None,
    }
}

/// Whether a request to `target` may carry the credentials of a rule with `prefix`: only to
/// the rule's own origin (scheme, host and port: a redirect to another origin goes without
/// them, so does a redirect from https to http), and over plain http only if the rule
/// allows it. Pure: the worker asks it for every request, redirect hops and Range
/// requests included.
pub fn may_send(prefix: &Prefix, allow_http: bool, target: &url::Url) -> bool {
    Origin::of(target) == prefix.origin() && (target.scheme() == "https" || allow_http)
}

/// Whether `url` authenticates itself: a user name in it, or a signature in its query
/// (a presigned URL). Such a URL gets no `Authorization` from a rule (S3 refuses a request
/// with two ways of authenticating).
pub fn carries_own_auth(url: &url::Url) -> bool {
    !url.username().is_empty()
        || url
            .query_pairs()
            .any(|(name, _)| SIGNATURE_PARAMETERS.contains(&name.to_ascii_lowercase().as_str()))
}

/// Parses `--header 'NAME: VALUE'`: a valid header name a rule may set, and a value of
/// visible characters; the error names the header but never the value.
pub fn parse_header(text: &str) -> Result<(String, String), String> {
    let Some((name, value)) = text.split_once(':') else {
        return Err("give it as 'NAME: VALUE'".into());
    };
    let name = name.trim();
    let value = value.trim();
    if name.is_empty() || !name.bytes().all(is_token_byte) {
        return Err(format!("{name:?} is not a header name"));
    }
    if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(format!(
            "{name} is set by the worker itself (or belongs to the connection); a rule cannot set it"
        ));
    }
    if value.is_empty() {
        return Err(format!("{name} has no value"));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "{name}'s value is longer than {MAX_VALUE_BYTES} bytes"
        ));
    }
    if value.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
        return Err(format!(
            "{name}'s value holds a control character (a line break?); a header value is one line"
        ));
    }
    Ok((name.to_string(), value.to_string()))
}

/// Parses `--basic USER:PASSWORD` (the user has no `:`; the password may).
pub fn parse_basic(text: &str) -> Result<(String, String), String> {
    let Some((user, password)) = text.split_once(':') else {
        return Err("give it as USER:PASSWORD".into());
    };
    if user.is_empty() {
        return Err("the user name is empty; give USER:PASSWORD".into());
    }
    if user.len() > MAX_VALUE_BYTES || password.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "the user name and the password may be at most {MAX_VALUE_BYTES} bytes each"
        ));
    }
    if text.chars().any(char::is_control) {
        return Err("holds a control character; give USER:PASSWORD on one line".into());
    }
    Ok((user.to_string(), password.to_string()))
}

/// A byte of an HTTP token (RFC 9110), what header names are made of.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The bucket and key of an `s3://bucket/key` URL; `None` for anything else or without a key.
pub fn s3_object(url: &url::Url) -> Option<(&str, &str)> {
    if url.scheme() != "s3" {
        return None;
    }
    let bucket = url.host_str().filter(|b| is_bucket_name(b))?;
    let key = url.path().strip_prefix('/').filter(|k| !k.is_empty())?;
    Some((bucket, key))
}

/// A rule's secrets, sealed together as one value bound to the rule's project and prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuleSecrets {
    /// Headers sent with every request to the rule's origin: name and value.
    #[serde(default)]
    pub headers: Vec<(String, Hidden)>,
    /// Basic auth: user and password.
    #[serde(default)]
    pub basic: Option<(Hidden, Hidden)>,
    /// An `s3://` rule's secret access key.
    #[serde(default)]
    pub s3_secret_access_key: Option<Hidden>,
}

/// What a rule's sealed secrets are bound to: its project and prefix (a sealed value copied
/// to another rule does not open).
fn context(project_id: i64, prefix: &str) -> Vec<u8> {
    format!("video-import source rule\0{project_id}\0{prefix}").into_bytes()
}

impl RuleSecrets {
    /// Seals the secrets of the rule with `prefix` of project `project_id`.
    pub fn seal(
        &self,
        keys: &Keyring,
        project_id: i64,
        prefix: &str,
    ) -> Result<Sealed, SecretsError> {
        let plain = serde_json::to_vec(self).expect("secrets serialise");
        keys.seal(&plain, &context(project_id, prefix))
    }

    /// Opens the secrets of the rule with `prefix` of project `project_id`.
    pub fn open(
        keys: &Keyring,
        project_id: i64,
        prefix: &str,
        sealed: &Sealed,
    ) -> Result<Self, SecretsError> {
        let plain = keys.open(sealed, &context(project_id, prefix))?;
        serde_json::from_slice(&plain).map_err(|_| SecretsError::Damaged {
            key_id: sealed.key_id.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rule(Prefix, &'static str);

    impl HasPrefix for Rule {
        fn prefix(&self) -> &Prefix {
            &self.0
        }
    }

    fn prefix(text: &str) -> Prefix {
        Prefix::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn url(text: &str) -> url::Url {
        text.parse().unwrap()
    }

    #[test]
    fn prefixes_are_normalised_as_urls_are() {
        for (given, normal) in [
            (
                "HTTPS://Archive.Example:443/Masters/",
                "https://archive.example/Masters/",
            ),
            ("https://archive.example", "https://archive.example/"),
            (
                "http://127.0.0.1:8080/a/./b/../c",
                "http://127.0.0.1:8080/a/c",
            ),
            ("http://archive.example:80/x", "http://archive.example/x"),
            (
                "https://archive.example:8443/x y",
                "https://archive.example:8443/x%20y",
            ),
            (
                "https://xn--mnchen-3ya.example/",
                "https://xn--mnchen-3ya.example/",
            ),
            (
                "https://münchen.example/",
                "https://xn--mnchen-3ya.example/",
            ),
            ("  s3://masters/tape-1/ ", "s3://masters/tape-1/"),
            ("s3://masters", "s3://masters/"),
            ("S3://Masters/A", "s3://Masters/A"),
        ] {
            assert_eq!(prefix(given).as_str(), normal, "{given}");
        }
        // A URL written another way but meaning the same is covered.
        let p = prefix("HTTPS://Archive.Example:443/Masters/");
        assert!(p.covers(&url("https://ARCHIVE.example/Masters/a.mp4")));
        assert!(p.covers(&url("https://archive.example:443/Masters/./a.mp4")));
        assert!(
            !p.covers(&url("https://archive.example/masters/a.mp4")),
            "paths are case-sensitive"
        );
        assert!(!p.covers(&url("https://archive.example:8443/Masters/a.mp4")));
        assert!(!p.covers(&url("http://archive.example/Masters/a.mp4")));
        assert!(!p.covers(&url("https://archive.example.evil/Masters/a.mp4")));
        assert!(!p.covers(&url(
            "https://evil.example/Masters/a.mp4?https://archive.example/Masters/"
        )));
        let s3 = prefix("s3://masters/tape-1/");
        assert!(s3.covers(&url("s3://masters/tape-1/a.mp4")));
        assert!(!s3.covers(&url("s3://masters/tape-2/a.mp4")));
        assert!(!s3.covers(&url("s3://masters2/tape-1/a.mp4")));
        assert!(
            !s3.covers(&url("s3://Masters/tape-1/a.mp4")),
            "bucket names are compared as given"
        );
    }

    #[test]
    fn bad_prefixes_say_what_is_wrong() {
        for (text, says) in [
            ("archive.example/videos", "not a URL"),
            ("ftp://archive.example/", "ftp: URL"),
            ("https://user:pw@archive.example/", "--basic"),
            ("https://archive.example/?token=1", "query"),
            ("https://archive.example/#x", "query or fragment"),
            ("s3://", "bucket"),
            ("s3://bad bucket/", "not a URL"),
            ("s3://masters:9000/", "no port"),
            ("https:///videos", "host"),
            ("https://archive.example/a\nb", "control character"),
        ] {
            let why = Prefix::parse(text).expect_err(text);
            assert!(why.contains(says), "{text}: {why}");
            assert!(!why.contains("pw@"), "{why}");
        }
    }

    #[test]
    fn the_longest_prefix_wins() {
        let rules = [
            Rule(prefix("https://archive.example/"), "site"),
            Rule(prefix("https://archive.example/masters/"), "masters"),
            Rule(prefix("https://archive.example/masters/tape-7/"), "tape"),
            Rule(prefix("http://127.0.0.1:9000/"), "local"),
            Rule(prefix("s3://masters/"), "bucket"),
        ];
        let name = |u: &str| match coverage(&rules, &url(u)) {
            Coverage::Rule(r) => r.1,
            Coverage::InClear(r) => panic!("{u}: in clear of {}", r.1),
            Coverage::None => "none",
        };
        assert_eq!(name("https://archive.example/masters/tape-7/a.mp4"), "tape");
        assert_eq!(
            name("https://archive.example/masters/tape-8/a.mp4"),
            "masters"
        );
        assert_eq!(name("https://archive.example/a.mp4"), "site");
        assert_eq!(name("https://cdn.example/a.mp4"), "none");
        assert_eq!(name("http://127.0.0.1:9000/a.mp4"), "local");
        assert_eq!(name("http://127.0.0.1:9001/a.mp4"), "none");
        assert_eq!(name("s3://masters/a.mp4"), "bucket");
        assert_eq!(name("s3://other/a.mp4"), "none");
        // The plain-http form of a URL an https rule covers is named as such.
        let https_only = [Rule(prefix("https://archive.example/masters/"), "masters")];
        assert!(matches!(
            coverage(&https_only, &url("http://archive.example/masters/a.mp4")),
            Coverage::InClear(r) if r.1 == "masters"
        ));
        assert!(matches!(
            coverage(
                &https_only,
                &url("http://archive.example:8080/masters/a.mp4")
            ),
            Coverage::None
        ));
        assert!(matches!(
            coverage(&https_only, &url("http://archive.example/other/a.mp4")),
            Coverage::None
        ));
    }

    #[test]
    fn credentials_go_to_their_own_origin_only_and_over_http_only_when_allowed() {
        let https = prefix("https://archive.example/masters/");
        assert!(may_send(
            &https,
            false,
            &url("https://archive.example/masters/a.mp4")
        ));
        // A same-origin redirect outside the prefix still gets them: it is the same server.
        assert!(may_send(
            &https,
            false,
            &url("https://archive.example/store/a.mp4")
        ));
        for other in [
            "https://cdn.example/a.mp4",
            "https://archive.example:8443/masters/a.mp4",
            "http://archive.example/masters/a.mp4",
            "https://sub.archive.example/masters/a.mp4",
        ] {
            assert!(!may_send(&https, false, &url(other)), "{other}");
            assert!(!may_send(&https, true, &url(other)), "{other}");
        }
        let local = prefix("http://127.0.0.1:9000/");
        assert!(!may_send(
            &local,
            false,
            &url("http://127.0.0.1:9000/a.mp4")
        ));
        assert!(may_send(&local, true, &url("http://127.0.0.1:9000/a.mp4")));
        assert!(!may_send(&local, true, &url("http://127.0.0.1:9001/a.mp4")));
        assert!(!may_send(&local, true, &url("http://localhost:9000/a.mp4")));
    }

    #[test]
    fn signed_and_credentialed_urls_are_told_apart() {
        for signed in [
            "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=ab",
            "https://storage.googleapis.com/b/k?X-Goog-Signature=ab",
            "https://a.blob.core.windows.net/c/k?sv=2020&sig=ab",
            "https://d1.cloudfront.net/k?Expires=1&Signature=ab&Key-Pair-Id=K",
            "https://user:pw@archive.example/a.mp4",
        ] {
            assert!(carries_own_auth(&url(signed)), "{signed}");
        }
        for plain in [
            "https://archive.example/a.mp4",
            "https://archive.example/signature/a.mp4?v=1",
            "https://archive.example/a.mp4?design=1",
        ] {
            assert!(!carries_own_auth(&url(plain)), "{plain}");
        }
    }

    #[test]
    fn headers_and_basic_credentials_are_checked_without_showing_values() {
        assert_eq!(
            parse_header("X-Archive-Key:  k3y value ").unwrap(),
            ("X-Archive-Key".into(), "k3y value".into())
        );
        assert_eq!(
            parse_header("Authorization: Bearer a:b").unwrap().1,
            "Bearer a:b"
        );
        for (text, says) in [
            ("NoColon", "NAME: VALUE"),
            ("Bad Name: v", "not a header name"),
            ("Range: bytes=0-", "set by the worker"),
            ("Host: evil.example", "set by the worker"),
            ("X-Key:", "no value"),
            ("X-Key: a\r\nInjected: s3cr3t", "control character"),
        ] {
            let why = parse_header(text).expect_err(text);
            assert!(why.contains(says), "{text}: {why}");
            assert!(!why.contains("s3cr3t"), "{why}");
        }
        assert_eq!(
            parse_basic("archivist:pa:ss").unwrap(),
            ("archivist".into(), "pa:ss".into())
        );
        assert!(parse_basic(":pw").is_err());
        assert!(parse_basic("nopassword").is_err());
    }

    #[test]
    fn secrets_that_open_but_are_not_secrets_are_damaged_not_a_missing_key() {
        let keys = Keyring::new(Some(crate::secrets::SecretKey::generate()), vec![]);
        let prefix = "https://archive.example/";
        let sealed = keys.seal(b"not json", &context(7, prefix)).unwrap();
        let error = RuleSecrets::open(&keys, 7, prefix, &sealed).unwrap_err();
        assert!(matches!(error, SecretsError::Damaged { .. }), "{error}");
        assert!(!error.mendable_by_configuration());
        let good = RuleSecrets::default().seal(&keys, 7, prefix).unwrap();
        assert_eq!(
            RuleSecrets::open(&keys, 7, prefix, &good).unwrap(),
            RuleSecrets::default()
        );
    }

    #[test]
    fn kinds_are_stored_by_name() {
        for kind in SourceKind::ALL {
            assert_eq!(kind.as_str().parse::<SourceKind>().unwrap(), *kind);
        }
        assert_eq!(prefix("s3://masters/").kind(), SourceKind::S3);
        assert_eq!(prefix("http://127.0.0.1:9000/").kind(), SourceKind::Http);
        let unknown = "ftp".parse::<SourceKind>().unwrap_err().to_string();
        assert_eq!(unknown, "unknown source kind \"ftp\"");
    }

    #[test]
    fn s3_urls_name_a_bucket_and_a_key() {
        assert_eq!(
            s3_object(&url("s3://masters/tape-1/a%20b.mp4")),
            Some(("masters", "tape-1/a%20b.mp4"))
        );
        assert_eq!(s3_object(&url("s3://masters/")), None);
        assert_eq!(s3_object(&url("s3://masters")), None);
        assert_eq!(s3_object(&url("https://masters/a.mp4")), None);
    }
}
