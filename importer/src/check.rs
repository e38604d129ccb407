//! Every rule the API applies to a batch (`api/src/validate.rs`), applied here to each row
//! before anything is sent, so that a row the API would refuse is named by its line and
//! field up front instead of costing its batch a refusal. Keep it in step with the API:
//!
//! - strings: no NUL (`\u0000`) in `url`, `id`, `fileName`, or any metadata key or value;
//! - `url`: at most [`MAX_URL`] bytes, no `data:` URL, http or https with a host (or
//!   `s3://bucket/key`: whether a source rule covers the bucket is the service's to say), and no IP
//!   literal in a private, loopback, link-local or reserved network unless the service
//!   admits it ([`Networks`], mirroring `fetch.allowed_networks`);
//! - `id`: not blank, at most [`MAX_ID`] bytes, no control character, and unique: the API
//!   refuses a duplicate within a batch; here it is refused within the whole manifest, since
//!   two rows with one id are two updates of one media-library entry in no telling which
//!   order;
//! - `fileName`: not blank, at most [`MAX_FILE_NAME`] bytes, no control character (these
//!   name rules are the API's own, `video_import_shared::fields`);
//! - the row as JSON, inside a batch, must fit in a request body of `api.max_body_bytes`;
//! - the batch's `systemName` (1 to [`MAX_SYSTEM_NAME`] bytes, trimmed, no control character) and `webhook` (as a
//!   URL, against `webhook.allowed_networks`).
//!
//! Metadata is also validated against the project's JSON Schema, which only the service
//! knows: those refusals come back batch by batch, named by line.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::manifest::Row;
use video_import_shared::fields::{self, NameProblem};
use video_import_shared::store::Checksum;

pub use video_import_shared::fields::{MAX_FILE_NAME, MAX_ID, MAX_SYSTEM_NAME};
/// Longest `url` (and `webhook`), in bytes.
pub const MAX_URL: usize = 8192;
/// The API's default `api.max_body_bytes`: the largest request body.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// The API's default `api.max_batch_size`: the most videos in one batch.
pub const DEFAULT_MAX_BATCH_SIZE: usize = 1000;

/// One problem of a row (or of the options): the field at fault and what is wrong with it,
/// phrased to follow the field's name (`url` `is empty`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `url`, `id`, `fileName`, `metadata.title`, `--webhook`…; `None` for the whole row.
    pub field: Option<String>,
    pub message: String,
}

impl Problem {
    /// A problem of `field`.
    pub fn of(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// A problem of the row as a whole.
    pub fn row(message: impl Into<String>) -> Self {
        Self {
            field: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field} {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Which IP-literal hosts the service admits, as its `*.allow_private_networks` and
/// `*.allowed_networks` settings say. Host names are not resolved here: the worker checks
/// every address a name resolves to.
#[derive(Debug, Clone, Default)]
pub struct Networks {
    /// Every address is admitted (the service's `allow_private_networks`).
    pub allow_private: bool,
    /// Networks admitted anyway (the service's `allowed_networks`).
    pub allowed: Vec<IpNet>,
}

impl Networks {
    /// Whether the service would contact `ip`: the service's own classifier decides, so the
    /// two can never disagree.
    pub fn permits(&self, ip: IpAddr) -> bool {
        video_import_shared::netguard::AddressPolicy::new(self.allow_private, &self.allowed)
            .permits(ip)
    }
}

/// What the service is known (or told) to accept.
#[derive(Debug, Clone)]
pub struct Rules {
    /// For the videos' URLs (`fetch.*`).
    pub videos: Networks,
    /// For `--webhook` (`webhook.*`).
    pub webhook: Networks,
    /// The service's `api.max_body_bytes`.
    pub max_body_bytes: usize,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            videos: Networks::default(),
            webhook: Networks::default(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// Checks rows one after the other, remembering ids (as 16-byte hashes, so that a million
/// rows need about 30 MB) to find duplicates.
pub struct Checker {
    rules: Rules,
    /// Bytes of a batch body without its videos.
    envelope: usize,
    /// Hash of each id seen, and its line.
    ids: HashMap<u128, u64>,
}

impl Checker {
    /// A checker for batches with this `systemName`, `webhook` and `context`, or what is
    /// wrong with them (these are options, so every batch would be refused).
    pub fn new(
        rules: Rules,
        system_name: &str,
        webhook: Option<&str>,
        context: Option<&Value>,
    ) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let trimmed = system_name.trim();
        if system_name.contains('\0') {
            problems.push(Problem::of("--system-name", nul_message()));
        } else {
            match fields::check_name(trimmed, MAX_SYSTEM_NAME) {
                Ok(()) => {}
                Err(NameProblem::Empty) => problems.push(Problem::of(
                    "--system-name",
                    "is empty; name the archive's system",
                )),
                Err(why) => problems.push(Problem::of("--system-name", name_problem(why))),
            }
        }
        if let Some(webhook) = webhook {
            if webhook.contains('\0') {
                problems.push(Problem::of("--webhook", nul_message()));
            } else if let Err(why) = check_url(
                webhook,
                &rules.webhook,
                "webhook.allowed_networks",
                "--webhook-allowed-networks",
            ) {
                problems.push(Problem::of("--webhook", why));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let envelope = envelope_bytes(system_name, webhook, context);
        Ok(Self {
            rules,
            envelope,
            ids: HashMap::new(),
        })
    }

    /// Bytes of a batch body without its videos (`{"systemName":…,"videos":[]}`).
    pub fn envelope(&self) -> usize {
        self.envelope
    }

    /// Every problem of `row`; empty when the API would take it. Every id is remembered,
    /// also from a row with other problems, so that all problems are found in one run
    /// (with `--skip-invalid`, both rows are left out).
    pub fn check(&mut self, row: &Row) -> Vec<Problem> {
        let mut problems = Vec::new();
        for (field, value) in [
            ("url", &row.url),
            ("id", &row.id),
            ("fileName", &row.file_name),
        ] {
            if value.contains('\0') {
                problems.push(Problem::of(field, nul_message()));
            }
        }
        for (key, value) in &row.metadata {
            nul_free(&format!("metadata.{key}"), key, value, &mut problems);
        }
        let nul_in = |field: &str, problems: &[Problem]| {
            problems.iter().any(|p| p.field.as_deref() == Some(field))
        };

        if !nul_in("url", &problems) {
            if row.url.trim().is_empty() {
                problems.push(Problem::of("url", "is empty"));
            } else if let Err(why) = check_video_url(&row.url, &self.rules.videos) {
                problems.push(Problem::of("url", why));
            }
        }
        let mut id_ok = false;
        if !nul_in("id", &problems) {
            match fields::check_name(&row.id, MAX_ID) {
                Ok(()) => id_ok = true,
                Err(why) => problems.push(Problem::of("id", name_problem(why))),
            }
        }
        if !nul_in("fileName", &problems) {
            if let Err(why) = fields::check_name(&row.file_name, MAX_FILE_NAME) {
                problems.push(Problem::of("fileName", name_problem(why)));
            }
        }
        for (field, value) in [("sha256", &row.checksum.sha256), ("md5", &row.checksum.md5)] {
            if let Some(Err(why)) = value.as_ref().map(|v| Checksum::parse(field, v)) {
                problems.push(Problem::of(field, why));
            }
        }
        let bytes = row.json_len();
        if self.envelope + bytes > self.rules.max_body_bytes {
            problems.push(Problem::of(
                largest_field(row),
                format!(
                    "makes the row {bytes} bytes as JSON; a request may be at most {} bytes \
                     (the service's api.max_body_bytes), batch included: shorten it",
                    self.rules.max_body_bytes
                ),
            ));
        }
        if id_ok {
            let key = u128::from_be_bytes(
                Sha256::digest(row.id.as_bytes())[..16]
                    .try_into()
                    .expect("16 bytes"),
            );
            match self.ids.get(&key) {
                Some(first) => problems.push(Problem::of(
                    "id",
                    format!(
                        "{:?} is also on line {first}; give every row its own id (an id is one \
                         media-library entry)",
                        row.id
                    ),
                )),
                None => {
                    self.ids.insert(key, row.line);
                }
            }
        }
        problems
    }
}

/// Bytes of `{"systemName":…,"videos":[],"webhook":…,"context":…}`, as the batch is
/// serialized.
fn envelope_bytes(system_name: &str, webhook: Option<&str>, context: Option<&Value>) -> usize {
    let mut body = json!({"systemName": system_name, "videos": []});
    if let Some(webhook) = webhook {
        body["webhook"] = json!(webhook);
    }
    if let Some(context) = context {
        body["context"] = context.clone();
    }
    serde_json::to_vec(&body).map_or(0, |b| b.len())
}

/// The field that makes most of a row's size.
fn largest_field(row: &Row) -> &'static str {
    let metadata = serde_json::to_vec(&row.metadata).map_or(0, |b| b.len());
    [
        (row.url.len(), "url"),
        (row.id.len(), "id"),
        (row.file_name.len(), "fileName"),
        (metadata, "metadata"),
    ]
    .into_iter()
    .max()
    .map_or("metadata", |(_, field)| field)
}

fn too_long(bytes: usize, max: usize) -> String {
    format!("is {bytes} bytes long; the service takes at most {max}: shorten it")
}

/// A name's problem in the importer's words.
fn name_problem(why: NameProblem) -> String {
    match why {
        NameProblem::Empty => "is empty".into(),
        NameProblem::TooLong { bytes, max } => too_long(bytes, max),
        other => other.to_string(),
    }
}

fn nul_message() -> &'static str {
    "contains a NUL character (\\u0000), which the service cannot store; remove it"
}

/// Adds a problem for `key` and for every string inside `value` that holds NUL.
fn nul_free(path: &str, key: &str, value: &Value, problems: &mut Vec<Problem>) {
    if key.contains('\0') {
        problems.push(Problem::of(path.replace('\0', "\\u0000"), nul_message()));
    }
    match value {
        Value::String(text) if text.contains('\0') => {
            problems.push(Problem::of(path.replace('\0', "\\u0000"), nul_message()));
        }
        Value::Array(items) => {
            for (n, item) in items.iter().enumerate() {
                nul_free(&format!("{path}[{n}]"), "", item, problems);
            }
        }
        Value::Object(map) => nul_free_map(path, map, problems),
        _ => {}
    }
}

fn nul_free_map(path: &str, map: &Map<String, Value>, problems: &mut Vec<Problem>) {
    for (key, item) in map {
        nul_free(&format!("{path}.{key}"), key, item, problems);
    }
}

/// A video's URL: `s3://bucket/key` (whether the project has a source rule for the bucket
/// only the service knows: a URL without one comes back as a refused batch, named by line),
/// or an http(s) URL as [`check_url`] takes it.
fn check_video_url(url: &str, networks: &Networks) -> Result<(), String> {
    let is_s3 = url
        .get(..5)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("s3://"));
    if !is_s3 {
        return check_url(
            url,
            networks,
            "fetch.allowed_networks",
            "--allowed-networks",
        )
        .map_err(|why| {
            why.replace(
                "must be an http or https URL",
                "must be an http, https or s3 URL",
            )
        });
    }
    if url.len() > MAX_URL {
        return Err(too_long(url.len(), MAX_URL));
    }
    if url.chars().any(char::is_control) {
        return Err("contains a control character, which a URL may not hold".into());
    }
    let parsed = url::Url::parse(url).map_err(|e| format!("{url:?} is not a valid URL ({e})"))?;
    match video_import_shared::sources::s3_object(&parsed) {
        Some(_) if parsed.query().is_none() && parsed.fragment().is_none() => Ok(()),
        _ => Err(format!(
            "{url:?} must name a bucket and an object key, as in s3://bucket/path/video.mp4 (no query or fragment)"
        )),
    }
}

/// The API's URL rules: length, no `data:`, http(s) with a host, no refused IP literal
/// (`service_key` names the service's setting that admits one, `flag` ours).
fn check_url(url: &str, networks: &Networks, service_key: &str, flag: &str) -> Result<(), String> {
    if url.len() > MAX_URL {
        return Err(too_long(url.len(), MAX_URL));
    }
    if url.trim_start().to_ascii_lowercase().starts_with("data:") {
        return Err("is a data: URL; give an http or https URL to the file".into());
    }
    let parsed = url::Url::parse(url)
        .map_err(|e| format!("{url:?} is not a valid URL ({e}); give an http or https URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "must be an http or https URL, not {}:",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("{url:?} names no host"));
    }
    let ip = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        _ => return Ok(()),
    };
    if networks.permits(ip) {
        return Ok(());
    }
    Err(format!(
        "points to {ip}, a private, loopback, link-local or reserved address, which the service \
         refuses; use a public address, or, if the service admits the network ({service_key}), \
         pass the same networks with {flag}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(line: u64, url: &str, id: &str, file_name: &str, metadata: Value) -> Row {
        Row {
            line,
            url: url.into(),
            id: id.into(),
            file_name: file_name.into(),
            metadata: metadata.as_object().cloned().unwrap_or_default(),
            checksum: Default::default(),
        }
    }

    fn good(line: u64, id: &str) -> Row {
        row(line, "https://a.example/v.mp4", id, "f", json!({}))
    }

    #[test]
    fn s3_urls_pass_and_their_rules_are_left_to_the_service() {
        let mut checker = checker();
        assert!(checker
            .check(&row(2, "s3://masters/tape-1/a.mp4", "a", "f", json!({})))
            .is_empty());
        let problems = checker.check(&row(3, "s3://masters/", "b", "f", json!({})));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field.as_deref(), Some("url"));
    }

    #[test]
    fn checksums_must_be_hex_of_their_length() {
        let mut checker = checker();
        let mut fine = good(2, "a");
        fine.checksum.sha256 = Some("A".repeat(64));
        fine.checksum.md5 = Some("0".repeat(32));
        assert!(checker.check(&fine).is_empty());
        let mut bad = good(3, "b");
        bad.checksum.sha256 = Some("xyz".into());
        bad.checksum.md5 = Some("0".repeat(31));
        let problems: Vec<String> = checker.check(&bad).iter().map(Problem::to_string).collect();
        assert_eq!(
            problems,
            [
                "sha256 must be 64 hexadecimal digits",
                "md5 must be 32 hexadecimal digits"
            ]
        );
    }

    fn checker() -> Checker {
        Checker::new(Rules::default(), "archive", None, None).unwrap()
    }

    fn shown(problems: &[Problem]) -> Vec<String> {
        problems.iter().map(Problem::to_string).collect()
    }

    #[test]
    fn a_good_row_has_no_problem() {
        assert!(checker().check(&good(2, "a")).is_empty());
    }

    #[test]
    fn duplicate_ids_are_found_across_the_whole_manifest() {
        let mut checker = checker();
        assert!(checker.check(&good(2, "a")).is_empty());
        assert!(checker.check(&good(3, "b")).is_empty());
        assert_eq!(
            shown(&checker.check(&good(9000, "a"))),
            ["id \"a\" is also on line 2; give every row its own id (an id is one media-library entry)"]
        );
        // Ids are compared as the API compares them: byte for byte.
        assert!(checker.check(&good(9001, "a ")).is_empty());
        // The id of a row with other problems counts too: every problem shows in one run.
        assert!(!checker
            .check(&row(9002, "ftp://a/b", "c", "f", json!({})))
            .is_empty());
        assert_eq!(
            checker.check(&good(9003, "c"))[0].field.as_deref(),
            Some("id")
        );
    }

    #[test]
    fn nul_characters_are_found_in_every_field_and_deep_in_metadata() {
        let problems = checker().check(&row(
            4,
            "https://a.example/v\0.mp4",
            "a\0",
            "f\0",
            json!({"title": "x\u{0}y", "tags": ["ok", "n\u{0}"], "deep": {"k\u{0}": 1}}),
        ));
        let fields: Vec<&str> = problems
            .iter()
            .map(|p| p.field.as_deref().unwrap())
            .collect();
        assert_eq!(
            fields,
            [
                "url",
                "id",
                "fileName",
                "metadata.deep.k\\u0000",
                "metadata.tags[1]",
                "metadata.title"
            ]
        );
        assert!(problems[0].message.contains("NUL"), "{}", problems[0]);
    }

    #[test]
    fn private_ip_literals_are_refused_unless_admitted() {
        for url in [
            "http://10.0.0.1/a.mp4",
            "http://[::1]/a.mp4",
            "http://127.0.0.1:8080/a.mp4",
            "http://169.254.169.254/latest",
            "http://[::ffff:127.0.0.1]/a.mp4",
            "http://2130706433/a.mp4",
            "http://0x7f.1/a.mp4",
        ] {
            let problems = checker().check(&row(2, url, "a", "f", json!({})));
            assert_eq!(problems.len(), 1, "{url}: {problems:?}");
            assert!(
                problems[0].message.starts_with("points to ")
                    && problems[0].message.contains("--allowed-networks"),
                "{url}: {}",
                problems[0]
            );
        }
        // Names are left to the worker, which checks every address they resolve to.
        assert!(checker()
            .check(&row(2, "http://localhost/a.mp4", "a", "f", json!({})))
            .is_empty());
        let admitted = Rules {
            videos: Networks {
                allow_private: false,
                allowed: vec!["127.0.0.1/32".parse().unwrap()],
            },
            ..Rules::default()
        };
        let mut checker = Checker::new(admitted, "archive", None, None).unwrap();
        assert!(checker
            .check(&row(2, "http://127.0.0.1:8080/a.mp4", "a", "f", json!({})))
            .is_empty());
        assert!(!checker
            .check(&row(3, "http://127.0.0.2/a.mp4", "b", "f", json!({})))
            .is_empty());
        let everything = Rules {
            videos: Networks {
                allow_private: true,
                allowed: Vec::new(),
            },
            ..Rules::default()
        };
        assert!(Checker::new(everything, "archive", None, None)
            .unwrap()
            .check(&row(2, "http://10.0.0.1/a.mp4", "a", "f", json!({})))
            .is_empty());
    }

    #[test]
    fn urls_follow_the_api_rules() {
        let cases = [
            ("", "url is empty"),
            ("data:video/mp4;base64,AAAA", "url is a data: URL"),
            (
                "ftp://a.example/v.mp4",
                "url must be an http, https or s3 URL, not ftp:",
            ),
            (
                "a.example/v.mp4",
                "url \"a.example/v.mp4\" is not a valid URL",
            ),
        ];
        for (url, expected) in cases {
            let problems = shown(&checker().check(&row(2, url, "a", "f", json!({}))));
            assert_eq!(problems.len(), 1, "{url}: {problems:?}");
            assert!(problems[0].starts_with(expected), "{url}: {problems:?}");
        }
        let long = format!("https://a.example/{}", "x".repeat(MAX_URL));
        assert_eq!(
            shown(&checker().check(&row(2, &long, "a", "f", json!({})))),
            [format!(
                "url is {} bytes long; the service takes at most 8192: shorten it",
                long.len()
            )]
        );
        let longest = format!("https://a.example/{}", "x".repeat(MAX_URL - 18));
        assert!(checker()
            .check(&row(2, &longest, "a", "f", json!({})))
            .is_empty());
    }

    #[test]
    fn ids_and_file_names_are_bounded_in_bytes() {
        let mut checker = checker();
        assert!(checker.check(&good(2, &"i".repeat(MAX_ID))).is_empty());
        assert_eq!(
            shown(&checker.check(&good(3, &"i".repeat(MAX_ID + 1)))),
            ["id is 1025 bytes long; the service takes at most 1024: shorten it"]
        );
        // 342 three-byte characters: 1026 bytes, as the API counts.
        assert_eq!(
            checker.check(&good(4, &"€".repeat(342)))[0].message,
            "is 1026 bytes long; the service takes at most 1024: shorten it"
        );
        assert_eq!(
            shown(&checker.check(&row(5, "https://a/v", "x", &"n".repeat(1025), json!({})))),
            ["fileName is 1025 bytes long; the service takes at most 1024: shorten it"]
        );
        assert_eq!(
            shown(&checker.check(&row(6, "https://a/v", " ", " ", json!({})))),
            ["id is empty", "fileName is empty"]
        );
    }

    #[test]
    fn every_problem_of_a_row_is_reported_at_once() {
        let problems = shown(&checker().check(&row(2, "ftp://a/b", "", "", json!({}))));
        assert_eq!(
            problems,
            [
                "url must be an http, https or s3 URL, not ftp:",
                "id is empty",
                "fileName is empty"
            ]
        );
    }

    #[test]
    fn a_row_too_large_for_a_request_is_named_by_its_largest_field() {
        let rules = Rules {
            max_body_bytes: 1000,
            ..Rules::default()
        };
        let mut checker =
            Checker::new(rules, "archive", Some("https://h.example/hook"), None).unwrap();
        assert_eq!(
            checker.envelope(),
            r#"{"systemName":"archive","videos":[],"webhook":"https://h.example/hook"}"#.len()
        );
        let fits = 1000 - checker.envelope() - good(2, "a").json_len() - r#","t":"""#.len() + 1;
        let big = |line, id, n: usize| {
            row(
                line,
                "https://a.example/v.mp4",
                id,
                "f",
                json!({"t": "x".repeat(n)}),
            )
        };
        assert!(checker.check(&big(2, "a", fits - 1)).is_empty());
        let problems = checker.check(&big(3, "b", fits + 1));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field.as_deref(), Some("metadata"));
        assert!(
            problems[0].message.contains("at most 1000 bytes"),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn system_name_and_webhook_are_checked_once() {
        let problems = |system_name: &str, webhook: Option<&str>| {
            shown(
                &Checker::new(Rules::default(), system_name, webhook, None)
                    .err()
                    .unwrap_or_default(),
            )
        };
        assert_eq!(
            problems(" ", Some("http://192.168.1.2/hook")).len(),
            2,
            "{:?}",
            problems(" ", Some("http://192.168.1.2/hook"))
        );
        assert!(problems(&"s".repeat(201), None)[0].contains("201 bytes"));
        assert!(problems("archive", Some("http://192.168.1.2/hook"))[0]
            .contains("--webhook-allowed-networks"));
        assert!(problems(&"s".repeat(200), Some("https://h.example/hook")).is_empty());
    }

    #[test]
    fn the_refused_networks_are_the_services() {
        let ours = Networks::default();
        for refused in ["127.0.0.1", "10.1.2.3", "::1", "fec0::1", "64:ff9b:1::1"] {
            assert!(!ours.permits(refused.parse().unwrap()), "{refused}");
        }
        assert!(ours.permits("8.8.8.8".parse().unwrap()));
        let admitted = Networks {
            allowed: vec!["127.0.0.1/32".parse().unwrap()],
            ..Networks::default()
        };
        assert!(admitted.permits("127.0.0.1".parse().unwrap()));
    }
}
