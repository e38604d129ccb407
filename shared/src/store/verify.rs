//! What the storage verifier reads: entries with their stored object's key, size and hashes
//! (in id order a page at a time, or a random sample), and where the continuous verifier
//! got to. Marking and clearing damage is `entries`' business.

use anyhow::Context;
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

/// An entry as the verifier checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The entry's id.
    pub id: String,
    /// The project's handle.
    pub project: String,
    /// The system the entry was imported from (`systemName`).
    pub system_name: String,
    /// The entry's id in that system.
    pub external_id: String,
    /// Where its object is in storage.
    pub key: String,
    /// The object's size in bytes, as stored.
    pub size: i64,
    /// The object's SHA-256 (hex), as stored.
    pub sha256: String,
    /// `None` for entries stored before MD5s were kept.
    pub md5: Option<String>,
    /// Marked damaged now.
    pub damaged: bool,
}

const COLUMNS: &str = "m.id, p.handle, m.system_name, m.external_id, m.asset_key, m.asset_size,
    m.sha256, m.md5, m.damaged_at IS NOT NULL";

impl Stored {
    fn from_row(row: &Row) -> Self {
        Self {
            id: row.get(0),
            project: row.get(1),
            system_name: row.get(2),
            external_id: row.get(3),
            key: row.get(4),
            size: row.get(5),
            sha256: row.get(6),
            md5: row.get(7),
            damaged: row.get(8),
        }
    }
}

/// Up to `limit` entries after entry `after` (from the first without one) in id order, of
/// `project` only when given: a stable order, so a run can stop and continue.
pub async fn page(
    client: &impl GenericClient,
    after: Option<&str>,
    project: Option<i64>,
    limit: i64,
) -> anyhow::Result<Vec<Stored>> {
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM media_entries m JOIN projects p ON p.id = m.project_id
                 WHERE ($1::text IS NULL OR m.id > $1) AND ($2::int8 IS NULL OR m.project_id = $2)
                 ORDER BY m.id LIMIT $3"
            ),
            &[&after, &project, &limit],
        )
        .await
        .context("reading the entries to verify")?;
    Ok(rows.iter().map(Stored::from_row).collect())
}

/// `n` entries chosen at random (of `project` only when given), in id order.
pub async fn sample(
    client: &impl GenericClient,
    project: Option<i64>,
    n: i64,
) -> anyhow::Result<Vec<Stored>> {
    let rows = client
        .query(
            &format!(
                "SELECT * FROM (
                     SELECT {COLUMNS} FROM media_entries m JOIN projects p ON p.id = m.project_id
                     WHERE $1::int8 IS NULL OR m.project_id = $1
                     ORDER BY random() LIMIT $2) s
                 ORDER BY 1"
            ),
            &[&project, &n],
        )
        .await
        .context("choosing entries to verify")?;
    Ok(rows.iter().map(Stored::from_row).collect())
}

/// The last entry the continuous verifier checked in its current round (`None`: the round
/// starts at the first entry).
pub async fn position(client: &impl GenericClient) -> anyhow::Result<Option<String>> {
    let row = client
        .query_opt("SELECT last_entry_id FROM storage_verify", &[])
        .await
        .context("reading where the verifier got to")?;
    Ok(row.and_then(|r| r.get(0)))
}

/// Records that the continuous verifier checked entry `id` (the next starts after it).
pub async fn advance(client: &impl GenericClient, id: &str) -> anyhow::Result<()> {
    client
        .execute(
            "INSERT INTO storage_verify (last_entry_id) VALUES ($1)
             ON CONFLICT (singleton) DO UPDATE
                 SET last_entry_id = EXCLUDED.last_entry_id, updated_at = now()",
            &[&id],
        )
        .await
        .context("recording where the verifier got to")?;
    Ok(())
}

/// Records that a round reached the last entry: the next starts at the first.
pub async fn finish_round(client: &impl GenericClient) -> anyhow::Result<()> {
    client
        .execute(
            "INSERT INTO storage_verify (last_entry_id, last_round_finished_at)
             VALUES (NULL, now())
             ON CONFLICT (singleton) DO UPDATE
                 SET last_entry_id = NULL, last_round_finished_at = now(),
                     round_started_at = now(), updated_at = now()",
            &[],
        )
        .await
        .context("recording the end of the verifier's round")?;
    Ok(())
}
