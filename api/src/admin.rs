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
    },
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
            let schema: Option<serde_json::Value> = match metadata_schema {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    Some(
                        serde_json::from_str(&text)
                            .with_context(|| format!("{} is not valid JSON", path.display()))?,
                    )
                }
                None => None,
            };
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
        Command::Token(TokenCommand::Create { project, scopes }) => {
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
            client
                .execute(
                    "INSERT INTO tokens (project_id, token_hash, scopes) VALUES ($1, $2, $3)",
                    &[&project_id, &hash_token(&token), &scopes],
                )
                .await?;
            println!(
                "{}",
                json!({"token": token, "project": project, "scopes": scopes})
            );
            Ok(())
        }
    }
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
