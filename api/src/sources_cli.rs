//! `source add|list|remove` (credentials per project and URL prefix or bucket) and
//! `secrets rotate|new-key` (the key that encrypts them). Everything prints JSON; nothing
//! prints a secret.

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::{json, Value};
use video_import_shared::config::Settings;
use video_import_shared::db;
use video_import_shared::netguard::AddressPolicy;
use video_import_shared::secrets::{Hidden, Keyring, SecretKey};
use video_import_shared::sources::{self, Prefix, RuleSecrets, SourceKind};
use video_import_shared::store::projects;
use video_import_shared::store::sources::{self as store, Added, NewRule, RuleRow, S3Location};

/// Source rules: the credentials a project's videos are fetched with.
#[derive(Debug, Subcommand)]
pub enum SourceCommand {
    /// Fetch the project's URLs under PREFIX with these headers, basic auth or S3 keys
    /// (encrypted at rest with secrets.key; the longest matching prefix wins).
    Add {
        #[arg(long)]
        project: String,
        /// https://host[:port]/path/, http://… (with --allow-http) or s3://bucket/[prefix].
        #[arg(long)]
        prefix: String,
        /// A header sent with every request to the prefix's origin, as 'NAME: VALUE';
        /// repeatable.
        #[arg(long = "header", value_name = "NAME: VALUE")]
        headers: Vec<Hidden>,
        /// Basic auth, as USER:PASSWORD.
        #[arg(long, value_name = "USER:PASSWORD")]
        basic: Option<Hidden>,
        /// Let the credentials go over plain http (an http:// prefix needs it).
        #[arg(long)]
        allow_http: bool,
        /// The bucket's region (s3:// prefixes).
        #[arg(long)]
        s3_region: Option<String>,
        /// An S3-compatible endpoint, https://host[:port] (AWS's own without it).
        #[arg(long)]
        s3_endpoint: Option<String>,
        /// The access key id (s3:// prefixes).
        #[arg(long)]
        s3_access_key_id: Option<String>,
        /// The secret access key (s3:// prefixes); better on standard input.
        #[arg(long)]
        s3_secret_access_key: Option<Hidden>,
        /// Read the secrets from standard input instead of the command line (where `ps` and
        /// shell histories show them): a JSON object with any of `headers` (["NAME: VALUE",
        /// …]), `basic` ("USER:PASSWORD") and `s3SecretAccessKey`.
        #[arg(long)]
        secrets_from_stdin: bool,
        /// Replace the project's rule of the same prefix (keeping its id) instead of refusing.
        #[arg(long)]
        replace: bool,
    },
    /// List a project's rules: ids, prefixes, header names; never a secret.
    List {
        #[arg(long)]
        project: String,
    },
    /// Remove a rule by the id `source list` shows.
    Remove { id: i64 },
}

/// The encryption key of secrets at rest.
#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Encrypt every stored secret again with secrets.key (opening each with secrets.key or
    /// secrets.previous_keys); afterwards the previous keys are no longer needed.
    Rotate,
    /// Print a new random key for secrets.key.
    NewKey,
}

/// Largest standard input `--secrets-from-stdin` reads.
const MAX_STDIN_SECRETS: u64 = 1024 * 1024;

/// The secrets of a rule as `--secrets-from-stdin` reads them (`Debug` shows none).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StdinSecrets {
    /// `NAME: VALUE` each.
    #[serde(default)]
    headers: Vec<Hidden>,
    /// `USER:PASSWORD`.
    basic: Option<Hidden>,
    s3_secret_access_key: Option<Hidden>,
}

impl StdinSecrets {
    /// Reads one JSON object (at most [`MAX_STDIN_SECRETS`] bytes) from `input`.
    fn read(input: impl std::io::Read) -> anyhow::Result<Self> {
        use std::io::Read;
        let mut text = String::new();
        input
            .take(MAX_STDIN_SECRETS + 1)
            .read_to_string(&mut text)
            .context("--secrets-from-stdin: reading standard input")?;
        if text.len() as u64 > MAX_STDIN_SECRETS {
            bail!("--secrets-from-stdin: standard input is over {MAX_STDIN_SECRETS} bytes");
        }
        // Only where it went wrong, never serde's own message: that may quote a value, and
        // the values are secrets.
        serde_json::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "--secrets-from-stdin: standard input is not a JSON object of headers ([\"NAME: \
                 VALUE\", …]), basic (\"USER:PASSWORD\") and s3SecretAccessKey (a string), \
                 and nothing else (line {}, column {})",
                e.line(),
                e.column()
            )
        })
    }

    /// Adds these secrets to those of the command line; a secret given both ways is refused.
    fn merge_into(
        self,
        headers: &mut Vec<Hidden>,
        basic: &mut Option<Hidden>,
        s3_secret: &mut Option<Hidden>,
    ) -> anyhow::Result<()> {
        if self.basic.is_some() && basic.is_some() {
            bail!("--basic is given on the command line and on standard input; give it once");
        }
        if self.s3_secret_access_key.is_some() && s3_secret.is_some() {
            bail!(
                "--s3-secret-access-key is given on the command line and on standard input; \
                 give it once"
            );
        }
        headers.extend(self.headers);
        *basic = basic.take().or(self.basic);
        *s3_secret = s3_secret.take().or(self.s3_secret_access_key);
        Ok(())
    }
}

/// Runs a `source` command.
pub async fn source(command: SourceCommand, settings: &Settings) -> anyhow::Result<()> {
    match command {
        SourceCommand::Add {
            project,
            prefix,
            headers,
            basic,
            allow_http,
            s3_region,
            s3_endpoint,
            s3_access_key_id,
            s3_secret_access_key,
            secrets_from_stdin,
            replace,
        } => {
            let (mut headers, mut basic, mut s3_secret_access_key) =
                (headers, basic, s3_secret_access_key);
            if secrets_from_stdin {
                let given = StdinSecrets::read(std::io::stdin().lock())?;
                given.merge_into(&mut headers, &mut basic, &mut s3_secret_access_key)?;
            }
            let s3 = S3Options {
                region: s3_region,
                endpoint: s3_endpoint,
                access_key_id: s3_access_key_id,
                secret_access_key: s3_secret_access_key,
            };
            let rule = checked_rule(&prefix, &headers, basic.as_ref(), allow_http, s3, settings)?;
            let keys = Keyring::from_settings(&settings.secrets);
            if keys.current_id().is_none() {
                bail!("{}", video_import_shared::secrets::SecretsError::NoKey);
            }
            let pool = db::connect_migrated(&settings.database).await?;
            let client = pool.get().await?;
            let Some(project_id) = projects::id_of(&client, &project).await? else {
                bail!("no project {project:?}; create it with `video-import-api project create {project}`");
            };
            let sealed = rule.secrets.seal(&keys, project_id, rule.prefix.as_str())?;
            let new = NewRule {
                prefix: rule.prefix.as_str(),
                kind: rule.prefix.kind(),
                allow_http: rule.allow_http,
                header_names: &rule.header_names,
                basic_auth: rule.secrets.basic.is_some(),
                s3: rule.s3.as_ref(),
                sealed: &sealed,
            };
            let (id, replaced) = match store::add(&client, project_id, &new, replace).await? {
                Added::Created(id) => (id, false),
                Added::Replaced(id) => (id, true),
                Added::Exists(id) => bail!(
                    "project {project:?} has a rule for {} already (id {id}); add --replace to \
                     replace it, or `video-import-api source remove {id}` first",
                    rule.prefix
                ),
            };
            let rows = store::of_project(&client, project_id).await?;
            let row = rows
                .iter()
                .find(|r| r.id == id)
                .context("the rule just stored")?;
            let mut shown = shown(&project, row);
            shown["replaced"] = json!(replaced);
            println!("{shown}");
            Ok(())
        }
        SourceCommand::List { project } => {
            let pool = db::connect_migrated(&settings.database).await?;
            let client = pool.get().await?;
            let Some(rows) = store::list(&client, &project).await? else {
                bail!("no project {project:?}");
            };
            let rules: Vec<Value> = rows.iter().map(|r| shown(&project, r)).collect();
            println!("{}", Value::Array(rules));
            Ok(())
        }
        SourceCommand::Remove { id } => {
            let pool = db::connect_migrated(&settings.database).await?;
            let client = pool.get().await?;
            if !store::remove(&client, id).await? {
                bail!("no source rule with id {id}; `source list --project HANDLE` shows the ids");
            }
            println!("{}", json!({"id": id, "removed": true}));
            Ok(())
        }
    }
}

/// A rule as commands show it: everything but its secrets.
fn shown(project: &str, row: &RuleRow) -> Value {
    json!({
        "id": row.id,
        "project": project,
        "prefix": row.prefix,
        "kind": row.kind.as_str(),
        "headers": row.header_names,
        "basicAuth": row.basic_auth,
        "allowHttp": row.allow_http,
        "s3": row.s3.as_ref().map(|s3| json!({
            "region": s3.region,
            "endpoint": s3.endpoint,
            "accessKeyId": s3.access_key_id,
        })),
        "keyId": row.sealed.key_id,
        "createdAt": row.created_at,
        "updatedAt": row.updated_at,
    })
}

/// The `--s3-*` options as given.
struct S3Options {
    region: Option<String>,
    endpoint: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<Hidden>,
}

/// A rule that passed every check, its secrets still in clear.
struct CheckedRule {
    prefix: Prefix,
    allow_http: bool,
    header_names: Vec<String>,
    s3: Option<S3Location>,
    secrets: RuleSecrets,
}

/// Checks the options of `source add` (every problem at once); an S3 endpoint is checked
/// against `fetch.allowed_networks` as the worker will check it.
fn checked_rule(
    prefix: &str,
    headers: &[Hidden],
    basic: Option<&Hidden>,
    allow_http: bool,
    s3: S3Options,
    settings: &Settings,
) -> anyhow::Result<CheckedRule> {
    let mut problems: Vec<String> = Vec::new();
    let prefix = match Prefix::parse(prefix) {
        Ok(prefix) => Some(prefix),
        Err(why) => {
            problems.push(format!("--prefix {why}"));
            None
        }
    };
    let kind = prefix.as_ref().map(Prefix::kind);
    let mut secrets = RuleSecrets::default();
    let mut header_names = Vec::new();
    if headers.len() > sources::MAX_HEADERS {
        problems.push(format!(
            "--header is given {} times; a rule sends at most {}",
            headers.len(),
            sources::MAX_HEADERS
        ));
    }
    for header in headers {
        match sources::parse_header(header.expose()) {
            Ok((name, value)) => {
                if header_names
                    .iter()
                    .any(|n: &String| n.eq_ignore_ascii_case(&name))
                {
                    problems.push(format!("--header {name} is given twice"));
                }
                header_names.push(name.clone());
                secrets.headers.push((name, Hidden(value)));
            }
            Err(why) => problems.push(format!("--header: {why}")),
        }
    }
    if let Some(basic) = basic {
        match sources::parse_basic(basic.expose()) {
            Ok((user, password)) => secrets.basic = Some((Hidden(user), Hidden(password))),
            Err(why) => problems.push(format!("--basic: {why}")),
        }
        if header_names
            .iter()
            .any(|n| n.eq_ignore_ascii_case("authorization"))
        {
            problems.push(
                "--basic and --header 'Authorization: …' both set Authorization; give one".into(),
            );
        }
    }
    let s3_given = s3.region.is_some()
        || s3.endpoint.is_some()
        || s3.access_key_id.is_some()
        || s3.secret_access_key.is_some();
    let mut location = None;
    match kind {
        Some(SourceKind::Http) => {
            if s3_given {
                problems.push("--s3-* options are for s3:// prefixes".into());
            }
            if headers.is_empty() && basic.is_none() {
                problems.push(
                    "give what to send: --header 'NAME: VALUE' or --basic USER:PASSWORD".into(),
                );
            }
            let prefix = prefix.as_ref().expect("parsed");
            if prefix.scheme() == "http" && !allow_http {
                problems.push(format!(
                    "--prefix {prefix} is plain http: the credentials would cross the network \
                     readable by anyone on the way; use the https:// prefix, or add --allow-http \
                     if the network is trusted"
                ));
            }
            if prefix.scheme() == "https" && allow_http {
                problems.push(format!(
                    "--allow-http is for http:// prefixes; the credentials of --prefix {prefix} \
                     go over https only (a plain-http URL of its host needs a rule of its own, \
                     for the http:// prefix)"
                ));
            }
        }
        Some(SourceKind::S3) => {
            if !headers.is_empty() || basic.is_some() {
                problems.push("--header and --basic are for http(s) prefixes; an s3:// rule takes --s3-access-key-id and --s3-secret-access-key".into());
            }
            if allow_http {
                problems.push("--allow-http is for http:// prefixes; an s3:// rule uses plain http only when its --s3-endpoint is http://".into());
            }
            let region = s3.region.unwrap_or_default();
            if region.is_empty()
                || region.len() > 64
                || !region
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                problems.push("--s3-region is required: the bucket's region, such as eu-central-1 (us-east-1 for most S3-compatible stores)".into());
            }
            let access_key_id = s3.access_key_id.unwrap_or_default();
            if access_key_id.is_empty()
                || access_key_id.len() > 256
                || access_key_id
                    .chars()
                    .any(|c| c.is_control() || c.is_whitespace())
            {
                problems.push("--s3-access-key-id is required: the key id, without spaces".into());
            }
            match s3.secret_access_key {
                Some(secret)
                    if !secret.expose().is_empty()
                        && secret.expose().len() <= 1024
                        && !secret.expose().chars().any(char::is_control) =>
                {
                    secrets.s3_secret_access_key = Some(secret);
                }
                _ => problems
                    .push("--s3-secret-access-key is required: the secret key, on one line".into()),
            }
            let endpoint = match s3.endpoint {
                None => None,
                Some(text) => match url::Url::parse(text.trim()) {
                    Err(e) => {
                        problems.push(format!(
                            "--s3-endpoint is not a URL ({e}); give https://HOST[:PORT]"
                        ));
                        None
                    }
                    Ok(url) => {
                        let policy = AddressPolicy::new(
                            settings.fetch.allow_private_networks,
                            &settings.fetch.allowed_networks,
                        )
                        .via_proxy("fetch", settings.fetch.proxy.as_ref());
                        if let Err(why) = policy.check_endpoint(&url) {
                            problems.push(format!("--s3-endpoint {why}"));
                        }
                        Some(url.as_str().trim_end_matches('/').to_string())
                    }
                },
            };
            location = Some(S3Location {
                region,
                endpoint,
                access_key_id,
            });
        }
        None => {}
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(CheckedRule {
        prefix: prefix.expect("parsed"),
        allow_http,
        header_names,
        s3: location,
        secrets,
    })
}

/// Runs a `secrets` command.
pub async fn secrets(command: SecretsCommand, settings: &Settings) -> anyhow::Result<()> {
    match command {
        SecretsCommand::NewKey => {
            let key = SecretKey::generate();
            println!(
                "{}",
                json!({"key": key.to_base64(), "keyId": key.id(),
                       "use": "set it as secrets.key (VIDEO_IMPORT__SECRETS__KEY) on the API and every worker"})
            );
            Ok(())
        }
        SecretsCommand::Rotate => {
            let keys = Keyring::from_settings(&settings.secrets);
            let Some(current) = keys.current_id().map(str::to_string) else {
                bail!("{}", video_import_shared::secrets::SecretsError::NoKey);
            };
            let pool = db::connect_migrated(&settings.database).await?;
            let client = pool.get().await?;
            let (mut reencrypted, mut current_already) = (0, 0);
            let mut failed = Vec::new();
            for row in store::all(&client).await? {
                if keys.is_current(&row.sealed) {
                    current_already += 1;
                    continue;
                }
                let resealed = RuleSecrets::open(&keys, row.project_id, &row.prefix, &row.sealed)
                    .and_then(|secrets| secrets.seal(&keys, row.project_id, &row.prefix));
                match resealed {
                    Ok(new) => {
                        if store::reseal(&client, row.id, &row.sealed, &new).await? {
                            reencrypted += 1;
                        } else {
                            failed.push(json!({"id": row.id, "reason": "changed while rotating; run the command again"}));
                        }
                    }
                    Err(e) => failed.push(json!({"id": row.id, "reason": e.to_string()})),
                }
            }
            let by_key: serde_json::Map<String, Value> = store::key_ids(&client)
                .await?
                .into_iter()
                .map(|(id, count)| (id, json!(count)))
                .collect();
            let previous_needed = by_key.keys().any(|id| *id != current);
            println!(
                "{}",
                json!({"keyId": current, "reencrypted": reencrypted,
                       "alreadyCurrent": current_already, "failed": failed,
                       "rulesByKey": by_key, "previousKeysNeeded": previous_needed})
            );
            if !failed.is_empty() {
                bail!(
                    "{} rule(s) could not be encrypted again (see \"failed\"); the previous keys are still needed",
                    failed.len()
                );
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hidden(values: &[&str]) -> Vec<Hidden> {
        values.iter().map(|v| Hidden(v.to_string())).collect()
    }

    fn no_s3() -> S3Options {
        S3Options {
            region: None,
            endpoint: None,
            access_key_id: None,
            secret_access_key: None,
        }
    }

    #[test]
    fn secrets_from_standard_input_are_merged_and_never_echoed() {
        let given = StdinSecrets::read(
            br#"{"headers": ["X-Key: s3cr3t"], "basic": "u:pw", "s3SecretAccessKey": "k3y"}"#
                .as_slice(),
        )
        .unwrap();
        let shown = format!("{given:?}");
        for secret in ["s3cr3t", "u:pw", "k3y"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        let (mut headers, mut basic, mut s3) = (hidden(&["Y: 1"]), None, None);
        given.merge_into(&mut headers, &mut basic, &mut s3).unwrap();
        assert_eq!(headers, hidden(&["Y: 1", "X-Key: s3cr3t"]));
        assert_eq!(
            (
                basic.as_ref().map(Hidden::expose),
                s3.as_ref().map(Hidden::expose)
            ),
            (Some("u:pw"), Some("k3y"))
        );
        // A value of the wrong kind: the message says where, and never quotes it.
        let wrong = StdinSecrets::read(br#"{"headers": "X-Key: s3cr3t"}"#.as_slice())
            .unwrap_err()
            .to_string();
        assert!(wrong.contains("line 1"), "{wrong}");
        assert!(!wrong.contains("s3cr3t"), "{wrong}");
        // Given twice: refused.
        let twice = StdinSecrets::read(br#"{"basic": "u:pw"}"#.as_slice()).unwrap();
        let mut basic = Some(Hidden("other:pw".to_string()));
        assert!(twice
            .merge_into(&mut Vec::new(), &mut basic, &mut None)
            .is_err());
    }

    #[test]
    fn allow_http_is_refused_where_it_means_nothing() {
        let settings = Settings::default();
        let headers = hidden(&["X-Key: v"]);
        let refused = |prefix: &str| {
            checked_rule(prefix, &headers, None, true, no_s3(), &settings)
                .err()
                .map(|e| e.to_string())
        };
        let https = refused("https://archive.example/masters/").expect("refused");
        assert!(
            https.contains("--allow-http") && https.contains("https://archive.example/masters/"),
            "{https}"
        );
        assert_eq!(refused("http://127.0.0.1:9000/"), None, "http:// needs it");
        let plain = checked_rule(
            "https://archive.example/masters/",
            &headers,
            None,
            false,
            no_s3(),
            &settings,
        )
        .unwrap();
        assert!(!plain.allow_http);
        assert_eq!(plain.prefix.kind(), SourceKind::Http);
    }

    #[test]
    fn the_command_line_never_prints_its_secrets() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(subcommand)]
            command: SourceCommand,
        }
        let cli = Cli::try_parse_from([
            "video-import-api",
            "add",
            "--project",
            "p",
            "--prefix",
            "s3://masters/",
            "--s3-secret-access-key",
            "s3cr3t-one",
            "--basic",
            "u:s3cr3t-two",
            "--header",
            "X-Key: s3cr3t-three",
        ])
        .unwrap();
        let shown = format!("{cli:?}");
        assert!(shown.contains("masters"), "{shown}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }
}
