//! The transactional outbox's rows: written in the same transaction as the state they
//! announce, claimed and deleted by the relay (`crate::outbox`) once the broker confirmed them.

use anyhow::Context;
use deadpool_postgres::{GenericClient, Transaction};

/// One message waiting to be published.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: i64,
    pub routing_key: String,
    pub payload: serde_json::Value,
    /// The W3C trace context to publish it with.
    pub traceparent: Option<String>,
}

/// A message to write to the outbox: its routing key and body as `crate::messages` built
/// them (the store keeps no wire format of its own).
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub routing_key: String,
    pub payload: serde_json::Value,
    /// The W3C trace context to publish it with.
    pub traceparent: Option<String>,
}

/// Adds messages to the outbox inside the caller's transaction.
pub async fn enqueue<C: GenericClient>(client: &C, messages: &[NewMessage]) -> anyhow::Result<()> {
    if messages.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = messages.iter().map(|m| m.routing_key.as_str()).collect();
    let payloads: Vec<&serde_json::Value> = messages.iter().map(|m| &m.payload).collect();
    let traces: Vec<Option<&str>> = messages.iter().map(|m| m.traceparent.as_deref()).collect();
    let statement = client
        .prepare_cached(
            "INSERT INTO outbox (routing_key, payload, traceparent)
             SELECT * FROM unnest($1::text[], $2::jsonb[], $3::text[])",
        )
        .await
        .context("preparing the outbox insert")?;
    client
        .execute(&statement, &[&keys, &payloads, &traces])
        .await
        .with_context(|| format!("queueing {} messages", messages.len()))?;
    Ok(())
}

/// Locks up to `limit` of the oldest rows; rows other relays hold are skipped, not waited for.
pub async fn claim(tx: &Transaction<'_>, limit: i64) -> anyhow::Result<Vec<Pending>> {
    let rows = tx
        .query(
            "SELECT id, routing_key, payload, traceparent FROM outbox ORDER BY id LIMIT $1
             FOR UPDATE SKIP LOCKED",
            &[&limit],
        )
        .await
        .context("claiming outbox rows")?;
    Ok(rows
        .iter()
        .map(|row| Pending {
            id: row.get(0),
            routing_key: row.get(1),
            payload: row.get(2),
            traceparent: row.get(3),
        })
        .collect())
}

/// Removes published rows.
pub async fn remove(tx: &Transaction<'_>, ids: &[i64]) -> anyhow::Result<()> {
    tx.execute("DELETE FROM outbox WHERE id = ANY($1)", &[&ids])
        .await
        .context("deleting published outbox rows")?;
    Ok(())
}
