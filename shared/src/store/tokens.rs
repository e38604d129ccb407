//! API tokens: only their SHA-256 is stored; each carries a project and scopes.

use anyhow::Context;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;

/// What a token hash unlocks.
#[derive(Debug, Clone)]
pub struct TokenGrant {
    pub id: i64,
    pub project_id: i64,
    pub scopes: Vec<String>,
    pub expired: bool,
    pub revoked: bool,
}

/// A token as `token list` shows it (never the token itself).
#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub id: i64,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The grant of the token whose hash is `hash`, if any (on every API request).
pub async fn find(client: &impl GenericClient, hash: &str) -> anyhow::Result<Option<TokenGrant>> {
    let statement = client
        .prepare_cached(
            "SELECT project_id, scopes, expires_at IS NOT NULL AND expires_at <= now(),
                    revoked_at IS NOT NULL, id
             FROM tokens WHERE token_hash = $1",
        )
        .await
        .context("preparing the token lookup")?;
    let row = client
        .query_opt(&statement, &[&hash])
        .await
        .context("looking up the token")?;
    Ok(row.map(|row| TokenGrant {
        project_id: row.get(0),
        scopes: row.get(1),
        expired: row.get(2),
        revoked: row.get(3),
        id: row.get(4),
    }))
}

/// Stores a new token's hash for the project `handle`; its id, or `None` without such a
/// project.
pub async fn create(
    client: &impl GenericClient,
    handle: &str,
    hash: &str,
    scopes: &[String],
    expires_at: Option<DateTime<Utc>>,
) -> anyhow::Result<Option<i64>> {
    let row = client
        .query_opt(
            "INSERT INTO tokens (project_id, token_hash, scopes, expires_at)
             SELECT id, $2, $3, $4 FROM projects WHERE handle = $1 RETURNING id",
            &[&handle, &hash, &scopes, &expires_at],
        )
        .await
        .context("creating the token")?;
    Ok(row.map(|r| r.get(0)))
}

/// The tokens of the project `handle`, oldest first.
pub async fn list(client: &impl GenericClient, handle: &str) -> anyhow::Result<Vec<TokenInfo>> {
    let rows = client
        .query(
            "SELECT t.id, t.scopes, t.created_at, t.expires_at, t.revoked_at
             FROM tokens t JOIN projects p ON p.id = t.project_id
             WHERE p.handle = $1 ORDER BY t.id",
            &[&handle],
        )
        .await
        .context("listing the tokens")?;
    Ok(rows
        .iter()
        .map(|r| TokenInfo {
            id: r.get(0),
            scopes: r.get(1),
            created_at: r.get(2),
            expires_at: r.get(3),
            revoked_at: r.get(4),
        })
        .collect())
}

/// Revokes the token `id` (again is harmless); `false` when there is no such token.
pub async fn revoke(client: &impl GenericClient, id: i64) -> anyhow::Result<bool> {
    let revoked = client
        .execute(
            "UPDATE tokens SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1",
            &[&id],
        )
        .await
        .context("revoking the token")?;
    Ok(revoked == 1)
}
