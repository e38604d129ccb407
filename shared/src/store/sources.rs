//! Source rules: per project, the credentials that URLs under a prefix (or objects of an
//! `s3://` bucket) are fetched with. Secrets are stored sealed (`crate::secrets`), with the
//! id of the key that sealed them; what may be shown is stored in clear beside them.

use anyhow::Context;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use crate::secrets::Sealed;
use crate::sources::SourceKind;

/// Where an `s3://` rule's bucket is, and who reads it (the secret key is sealed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// The bucket's region (`us-east-1` for most S3-compatible stores).
    pub region: String,
    /// An S3-compatible endpoint (`https://host:port`); AWS's own without one.
    pub endpoint: Option<String>,
    /// The access key id (its secret key is sealed).
    pub access_key_id: String,
}

/// A rule to store.
#[derive(Debug, Clone)]
pub struct NewRule<'a> {
    /// The normalised prefix (`crate::sources::Prefix::as_str`).
    pub prefix: &'a str,
    /// What it reads from: the prefix's [`crate::sources::Prefix::kind`].
    pub kind: SourceKind,
    /// Whether its credentials may go over plain http.
    pub allow_http: bool,
    /// The names of the headers it sends (their values are sealed).
    pub header_names: &'a [String],
    /// Whether it sends basic auth (user and password are sealed).
    pub basic_auth: bool,
    /// Where an `s3://` rule's bucket is.
    pub s3: Option<&'a S3Location>,
    /// Its secrets ([`crate::sources::RuleSecrets`]), sealed for its project and prefix.
    pub sealed: &'a Sealed,
}

/// A stored rule. Two reads of a rule are equal only when nothing of it changed in between
/// (`--replace` sets `updated_at`, `secrets rotate` the sealed bytes): workers keep what
/// they built from a rule while it reads the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRow {
    /// Its id, as `source list` shows it.
    pub id: i64,
    /// The project whose videos it serves.
    pub project_id: i64,
    /// The normalised prefix, as stored (parse it with `crate::sources::Prefix::parse`).
    pub prefix: String,
    /// What it reads from.
    pub kind: SourceKind,
    /// Whether its credentials may go over plain http.
    pub allow_http: bool,
    /// The names of the headers it sends.
    pub header_names: Vec<String>,
    /// Whether it sends basic auth.
    pub basic_auth: bool,
    /// Where an `s3://` rule's bucket is.
    pub s3: Option<S3Location>,
    /// Its sealed secrets, and the id of the key that sealed them.
    pub sealed: Sealed,
    /// When it was added.
    pub created_at: DateTime<Utc>,
    /// When it was added or last replaced.
    pub updated_at: DateTime<Utc>,
}

/// What adding a rule did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// The project had no rule for this prefix: this is the new rule's id.
    Created(i64),
    /// `replace` was asked and the project had a rule for this prefix: it is this one now.
    Replaced(i64),
    /// The project has a rule for this prefix already (and `replace` was not asked).
    Exists(i64),
}

const COLUMNS: &str = "id, project_id, prefix, kind, allow_http, header_names, basic_auth, \
                       s3_region, s3_endpoint, s3_access_key_id, key_id, sealed, created_at, updated_at";

fn rule(row: &Row) -> RuleRow {
    let region: Option<String> = row.get(7);
    RuleRow {
        id: row.get(0),
        project_id: row.get(1),
        prefix: row.get(2),
        kind: row.get(3),
        allow_http: row.get(4),
        header_names: row.get(5),
        basic_auth: row.get(6),
        s3: region.map(|region| S3Location {
            region,
            endpoint: row.get(8),
            access_key_id: row.get::<_, Option<String>>(9).unwrap_or_default(),
        }),
        sealed: Sealed {
            key_id: row.get(10),
            bytes: row.get(11),
        },
        created_at: row.get(12),
        updated_at: row.get(13),
    }
}

/// Stores `rule` for project `project_id`; with `replace`, a rule of the same prefix is
/// replaced (same id) in the same statement, so that no fetch finds the prefix without one.
pub async fn add(
    client: &impl GenericClient,
    project_id: i64,
    rule: &NewRule<'_>,
    replace: bool,
) -> anyhow::Result<Added> {
    let s3 = rule.s3;
    let on_conflict = if replace {
        "ON CONFLICT (project_id, prefix) DO UPDATE SET kind = EXCLUDED.kind,
             allow_http = EXCLUDED.allow_http, header_names = EXCLUDED.header_names,
             basic_auth = EXCLUDED.basic_auth, s3_region = EXCLUDED.s3_region,
             s3_endpoint = EXCLUDED.s3_endpoint, s3_access_key_id = EXCLUDED.s3_access_key_id,
             key_id = EXCLUDED.key_id, sealed = EXCLUDED.sealed, updated_at = now()"
    } else {
        "ON CONFLICT (project_id, prefix) DO NOTHING"
    };
    let row = client
        .query_opt(
            &format!(
                "INSERT INTO source_rules (project_id, prefix, kind, allow_http, header_names,
                     basic_auth, s3_region, s3_endpoint, s3_access_key_id, key_id, sealed)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                 {on_conflict} RETURNING id, xmax <> 0"
            ),
            &[
                &project_id,
                &rule.prefix,
                &rule.kind,
                &rule.allow_http,
                &rule.header_names,
                &rule.basic_auth,
                &s3.map(|s| s.region.as_str()),
                &s3.and_then(|s| s.endpoint.as_deref()),
                &s3.map(|s| s.access_key_id.as_str()),
                &rule.sealed.key_id,
                &rule.sealed.bytes,
            ],
        )
        .await
        .context("storing the source rule (did you run `video-import-api migrate`?)")?;
    if let Some(row) = row {
        let id = row.get(0);
        return Ok(if row.get(1) {
            Added::Replaced(id)
        } else {
            Added::Created(id)
        });
    }
    let existing = client
        .query_one(
            "SELECT id FROM source_rules WHERE project_id = $1 AND prefix = $2",
            &[&project_id, &rule.prefix],
        )
        .await
        .context("reading the existing source rule")?;
    Ok(Added::Exists(existing.get(0)))
}

/// The rules of the project `handle`, by prefix; `None` without such a project.
pub async fn list(
    client: &impl GenericClient,
    handle: &str,
) -> anyhow::Result<Option<Vec<RuleRow>>> {
    let Some(project_id) = crate::store::projects::id_of(client, handle).await? else {
        return Ok(None);
    };
    Ok(Some(of_project(client, project_id).await?))
}

/// The rules of project `project_id`, by prefix (workers and the API's door).
pub async fn of_project(
    client: &impl GenericClient,
    project_id: i64,
) -> anyhow::Result<Vec<RuleRow>> {
    let statement = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM source_rules WHERE project_id = $1 ORDER BY prefix"
        ))
        .await
        .context("preparing the source rule lookup")?;
    let rows = client
        .query(&statement, &[&project_id])
        .await
        .context("reading the project's source rules")?;
    Ok(rows.iter().map(rule).collect())
}

/// Whether project `project_id` has any rule (a cheap look before reading them).
pub async fn any(client: &impl GenericClient, project_id: i64) -> anyhow::Result<bool> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM source_rules WHERE project_id = $1)",
            &[&project_id],
        )
        .await
        .context("looking for source rules")?;
    Ok(row.get(0))
}

/// Every rule, oldest first (key rotation).
pub async fn all(client: &impl GenericClient) -> anyhow::Result<Vec<RuleRow>> {
    let rows = client
        .query(
            &format!("SELECT {COLUMNS} FROM source_rules ORDER BY id"),
            &[],
        )
        .await
        .context("reading the source rules")?;
    Ok(rows.iter().map(rule).collect())
}

/// Replaces rule `id`'s sealed secrets `old` with `new` (sealed again by another key);
/// `false` when the rule was removed or changed since it was read.
pub async fn reseal(
    client: &impl GenericClient,
    id: i64,
    old: &Sealed,
    new: &Sealed,
) -> anyhow::Result<bool> {
    let updated = client
        .execute(
            "UPDATE source_rules SET key_id = $4, sealed = $5
             WHERE id = $1 AND key_id = $2 AND sealed = $3",
            &[&id, &old.key_id, &old.bytes, &new.key_id, &new.bytes],
        )
        .await
        .context("storing the source rule's secrets encrypted again")?;
    Ok(updated == 1)
}

/// How many rules each key id seals, for what rotation leaves.
pub async fn key_ids(client: &impl GenericClient) -> anyhow::Result<Vec<(String, i64)>> {
    let rows = client
        .query(
            "SELECT key_id, count(*) FROM source_rules GROUP BY key_id ORDER BY key_id",
            &[],
        )
        .await
        .context("counting the source rules by key")?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Removes rule `id`; `false` when there is none.
pub async fn remove(client: &impl GenericClient, id: i64) -> anyhow::Result<bool> {
    let removed = client
        .execute("DELETE FROM source_rules WHERE id = $1", &[&id])
        .await
        .context("removing the source rule")?;
    Ok(removed == 1)
}
