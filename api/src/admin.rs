//! Command line: `migrate`, `serve`, and project and token administration.

use std::path::PathBuf;

use anyhow::{bail, Context};
use base64::Engine;
use clap::{Parser, Subcommand};
use rand::RngCore;
use serde_json::json;
use video_import_shared::config::Settings;
use video_import_shared::db;

use crate::auth::{hash_token, SCOPES};

/// Video import API.
#[derive(Debug, Parser)]
#[command(name = "video-import-api", version)]
pub struct Cli {
    /// TOML configuration file (environment variables VIDEO_IMPORT__SECTION__KEY override it).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What to do; `serve` when none is given.
#[derive(Debug, Subcommand, Default)]
pub enum Command {
    /// Apply the database schema (idempotent, safe to run concurrently).
    Migrate,
    /// Run the HTTP API.
    #[default]
    Serve,
    /// Manage projects.
    #[command(subcommand)]
    Project(ProjectCommand),
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// Project administration.
#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// Create a project and print its webhook secret.
    Create {
        handle: String,
        /// Videos the project may import in any 24 hours.
        #[arg(long)]
        daily_limit: Option<i32>,
        /// JSON Schema file for video metadata.
        #[arg(long)]
        metadata_schema: Option<PathBuf>,
    },
    /// Change a project's daily limit or metadata schema.
    Update {
        handle: String,
        /// Videos the project may import in any 24 hours.
        #[arg(long, conflicts_with = "no_daily_limit")]
        daily_limit: Option<i32>,
        /// Remove the daily limit.
        #[arg(long)]
        no_daily_limit: bool,
        /// JSON Schema file for video metadata.
        #[arg(long, conflicts_with = "no_metadata_schema")]
        metadata_schema: Option<PathBuf>,
        /// Go back to the default metadata fields.
        #[arg(long)]
        no_metadata_schema: bool,
    },
    /// Start using a new webhook secret; the old one keeps signing alongside it for a while.
    RotateSecret {
        handle: String,
        /// Hours during which deliveries carry signatures with both the old and new secret.
        #[arg(long, default_value_t = 24)]
        overlap_hours: i32,
    },
}

/// Token administration.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token for a project and print it (only its hash is stored).
    Create {
        #[arg(long)]
        project: String,
        /// public-api:write (import, status) or public-api:read (media library); repeatable.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Lifetime such as 90d, 12h or 30m; without it the token does not expire.
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// List a project's tokens (never the tokens themselves).
    List {
        #[arg(long)]
        project: String,
    },
    /// Revoke a token by the id `token list` shows.
    Revoke { id: i64 },
}

/// Runs one command to completion.
pub async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Serve => crate::app::serve(settings).await,
        Command::Migrate => {
            let pool = db::connect(&settings.database).await?;
            let applied = db::migrate(&pool).await?;
            tracing::info!(?applied, "database schema is up to date");
            Ok(())
        }
        Command::Project(ProjectCommand::Create {
            handle,
            daily_limit,
            metadata_schema,
        }) => {
            check_handle(&handle)?;
            if daily_limit.is_some_and(|n| n < 0) {
                bail!("--daily-limit must be zero or more");
            }
            let schema = metadata_schema.as_deref().map(read_schema).transpose()?;
            let pool = db::connect(&settings.database).await?;
            let client = pool.get().await?;
            let secret = new_secret("whsec_");
            let inserted = client
                .execute(
                    "INSERT INTO projects (handle, webhook_secret, daily_limit, metadata_schema)
                     VALUES ($1, $2, $3, $4) ON CONFLICT (handle) DO NOTHING",
                    &[&handle, &secret, &daily_limit, &schema],
                )
                .await
                .context("creating the project (did you run `video-import-api migrate`?)")?;
            if inserted == 0 {
                bail!("a project with handle {handle:?} exists already");
            }
            println!("{}", json!({"handle": handle, "webhookSecret": secret}));
            Ok(())
        }
        Command::Project(ProjectCommand::RotateSecret {
            handle,
            overlap_hours,
        }) => {
            if overlap_hours < 0 {
                bail!("--overlap-hours must be zero or more");
            }
            let pool = db::connect(&settings.database).await?;
            let client = pool.get().await?;
            let secret = new_secret("whsec_");
            let row = client
                .query_opt(
                    "UPDATE projects SET previous_secret = webhook_secret,
                         previous_secret_expires_at = now() + make_interval(hours => $3),
                         webhook_secret = $2
                     WHERE handle = $1 RETURNING previous_secret_expires_at",
                    &[&handle, &secret, &overlap_hours],
                )
                .await?;
            let Some(row) = row else {
                bail!("no project {handle:?}");
            };
            let until: chrono::DateTime<chrono::Utc> = row.get(0);
            println!(
                "{}",
                json!({"handle": handle, "webhookSecret": secret, "previousSecretValidUntil": until})
            );
            Ok(())
        }
        Command::Project(ProjectCommand::Update {
            handle,
            daily_limit,
            no_daily_limit,
            metadata_schema,
            no_metadata_schema,
        }) => {
            if daily_limit.is_some_and(|n| n < 0) {
                bail!("--daily-limit must be zero or more");
            }
            let schema = metadata_schema.as_deref().map(read_schema).transpose()?;
            let pool = db::connect(&settings.database).await?;
            let client = pool.get().await?;
            let row = client
                .query_opt(
                    "UPDATE projects SET
                         daily_limit = CASE WHEN $2 THEN NULL ELSE COALESCE($3, daily_limit) END,
                         metadata_schema = CASE WHEN $4 THEN NULL ELSE COALESCE($5, metadata_schema) END
                     WHERE handle = $1 RETURNING daily_limit, metadata_schema IS NOT NULL",
                    &[&handle, &no_daily_limit, &daily_limit, &no_metadata_schema, &schema],
                )
                .await?;
            let Some(row) = row else {
                bail!("no project {handle:?}");
            };
            println!(
                "{}",
                json!({"handle": handle, "dailyLimit": row.get::<_, Option<i32>>(0),
                       "metadataSchema": row.get::<_, bool>(1)})
            );
            Ok(())
        }
        Command::Token(TokenCommand::List { project }) => {
            let pool = db::connect(&settings.database).await?;
            let client = pool.get().await?;
            let rows = client
                .query(
                    "SELECT t.id, t.scopes, t.created_at, t.expires_at, t.revoked_at
                     FROM tokens t JOIN projects p ON p.id = t.project_id
                     WHERE p.handle = $1 ORDER BY t.id",
                    &[&project],
                )
                .await?;
            let tokens: Vec<serde_json::Value> = rows
                .iter()
                .map(|r| {
                    json!({
                        "id": r.get::<_, i64>(0),
                        "scopes": r.get::<_, Vec<String>>(1),
                        "createdAt": r.get::<_, chrono::DateTime<chrono::Utc>>(2),
                        "expiresAt": r.get::<_, Option<chrono::DateTime<chrono::Utc>>>(3),
                        "revokedAt": r.get::<_, Option<chrono::DateTime<chrono::Utc>>>(4),
                    })
                })
                .collect();
            println!("{}", serde_json::Value::Array(tokens));
            Ok(())
        }
        Command::Token(TokenCommand::Revoke { id }) => {
            let pool = db::connect(&settings.database).await?;
            let client = pool.get().await?;
            let revoked = client
                .execute(
                    "UPDATE tokens SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1",
                    &[&id],
                )
                .await?;
            if revoked == 0 {
                bail!("no token with id {id}; `token list --project HANDLE` shows the ids");
            }
            println!("{}", json!({"id": id, "revoked": true}));
            Ok(())
        }
        Command::Token(TokenCommand::Create {
            project,
            scopes,
            expires_in,
        }) => {
            let lifetime = expires_in.as_deref().map(parse_lifetime).transpose()?;
            for scope in &scopes {
                if !SCOPES.contains(&scope.as_str()) {
                    bail!("unknown scope {scope:?}; use one of {}", SCOPES.join(", "));
                }
            }
            let pool = db::connect(&settings.database).await?;
            let client = pool.get().await?;
            let Some(row) = client
                .query_opt("SELECT id FROM projects WHERE handle = $1", &[&project])
                .await?
            else {
                bail!("no project {project:?}; create it with `video-import-api project create {project}`");
            };
            let project_id: i64 = row.get(0);
            let token = new_secret("vit_");
            let expires_at = lifetime.map(|d| chrono::Utc::now() + d);
            let row = client
                .query_one(
                    "INSERT INTO tokens (project_id, token_hash, scopes, expires_at)
                     VALUES ($1, $2, $3, $4) RETURNING id",
                    &[&project_id, &hash_token(&token), &scopes, &expires_at],
                )
                .await?;
            println!(
                "{}",
                json!({"token": token, "id": row.get::<_, i64>(0), "project": project,
                       "scopes": scopes, "expiresAt": expires_at})
            );
            Ok(())
        }
    }
}

/// Reads a metadata JSON Schema file and checks that it compiles.
fn read_schema(path: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let schema: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    crate::metadata::compile(&schema)
        .map_err(|e| anyhow::anyhow!("{} is not a usable JSON Schema: {e}", path.display()))?;
    Ok(schema)
}

/// `90d`, `12h`, `30m` or `45s`.
fn parse_lifetime(text: &str) -> anyhow::Result<chrono::Duration> {
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let n: i64 = number.parse().ok().filter(|n| *n > 0).with_context(|| {
        format!("--expires-in {text:?}: use a number and d, h, m or s, e.g. 90d")
    })?;
    Ok(match unit {
        "d" => chrono::Duration::days(n),
        "h" => chrono::Duration::hours(n),
        "m" => chrono::Duration::minutes(n),
        "s" => chrono::Duration::seconds(n),
        _ => bail!("--expires-in {text:?}: use a number and d, h, m or s, e.g. 90d"),
    })
}

fn check_handle(handle: &str) -> anyhow::Result<()> {
    let ok = !handle.is_empty()
        && handle.len() <= 64
        && handle
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        bail!("project handle {handle:?} must be 1 to 64 letters, digits, '-' or '_'");
    }
    Ok(())
}

/// A random secret with a recognisable prefix (`whsec_` secrets are base64, as Standard
/// Webhooks libraries expect).
fn new_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let encoded = if prefix == "whsec_" {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    } else {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    };
    format!("{prefix}{encoded}")
}
