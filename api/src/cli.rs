//! Command line: `migrate`, `serve`, and project and token administration (source rules
//! and secrets in `sources_cli`).

use std::path::PathBuf;

use anyhow::{bail, Context};
use base64::Engine;
use clap::{Parser, Subcommand};
use rand::RngCore;
use serde_json::json;
use std::time::Duration;
use video_import_shared::config::Settings;
use video_import_shared::process::ExitWith;
use video_import_shared::storage::Storage;
use video_import_shared::store::{self, projects, tokens};
use video_import_shared::{db, sweep, verify};

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
    /// Look after stored videos.
    #[command(subcommand)]
    Storage(StorageCommand),
    /// Source rules: credentials per URL prefix, s3:// buckets.
    #[command(subcommand)]
    Source(crate::sources_cli::SourceCommand),
    /// The key that encrypts stored secrets.
    #[command(subcommand)]
    Secrets(crate::sources_cli::SecretsCommand),
    /// Exit 0 when the running API's /readyz (on api.listen) answers 200, 1 when not: for
    /// container health checks (the image has no curl).
    Healthcheck,
}

/// Storage maintenance.
#[derive(Debug, Subcommand)]
pub enum StorageCommand {
    /// Remove stored objects that no media-library entry references (left by a worker that
    /// stopped between upload and commit), once older than the grace period.
    Sweep {
        /// Override storage.sweep_grace_secs: only objects at least this old are removed.
        #[arg(long)]
        grace_secs: Option<u64>,
        /// Count what would be removed without removing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Re-read stored objects and compare each with its entry's size and SHA-256 (and MD5);
    /// mark damaged entries, so that their next import downloads them again. Prints a JSON
    /// report; exits with code 3 when any object is missing, changed or unreadable.
    Verify {
        /// Only this project's entries.
        #[arg(long)]
        project: Option<String>,
        /// Only this many entries, chosen at random.
        #[arg(long)]
        sample: Option<u64>,
        /// Read at most this many MiB per second (e.g. 20 or 0.5); no bound without it.
        #[arg(long)]
        rate: Option<f64>,
    },
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
        // Answered in `main`, before logging starts.
        Command::Healthcheck => unreachable!("main answers healthcheck itself"),
        Command::Migrate => {
            let pool = db::connect(&settings.database).await?;
            let applied = store::migrate::run(&pool).await?;
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
            let pool = db::connect_migrated(&settings.database).await?;
            let client = pool.get().await?;
            let secret = new_secret("whsec_");
            let limits = projects::Limits {
                daily_limit,
                metadata_schema: schema,
            };
            if !projects::create(&client, &handle, &secret, &limits).await? {
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
            let pool = db::connect_migrated(&settings.database).await?;
            let client = pool.get().await?;
            let secret = new_secret("whsec_");
            let Some(until) =
                projects::rotate_secret(&client, &handle, &secret, overlap_hours).await?
            else {
                bail!("no project {handle:?}");
            };
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
            let pool = db::connect_migrated(&settings.database).await?;
            let client = pool.get().await?;
            let update = projects::LimitsUpdate {
                daily_limit: if no_daily_limit {
                    Some(None)
                } else {
                    daily_limit.map(Some)
                },
                metadata_schema: if no_metadata_schema {
                    Some(None)
                } else {
                    schema.map(Some)
                },
            };
            let Some((daily_limit, has_schema)) =
                projects::update_limits(&client, &handle, &update).await?
            else {
                bail!("no project {handle:?}");
            };
            println!(
                "{}",
                json!({"handle": handle, "dailyLimit": daily_limit, "metadataSchema": has_schema})
            );
            Ok(())
        }
        Command::Source(command) => crate::sources_cli::source(command, &settings).await,
        Command::Secrets(command) => crate::sources_cli::secrets(command, &settings).await,
        Command::Storage(StorageCommand::Sweep {
            grace_secs,
            dry_run,
        }) => {
            let grace = grace_secs.map_or(settings.storage.sweep_grace, Duration::from_secs);
            let pool = db::connect_migrated(&settings.database).await?;
            let storage = Storage::open(&settings.storage).await?;
            let Some(report) = sweep::sweep(&storage, &pool, grace, dry_run).await? else {
                bail!("another sweep is running (a worker with storage.sweep_interval_secs, or another command); try again later");
            };
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Storage(StorageCommand::Verify {
            project,
            sample,
            rate,
        }) => verify_storage(&settings, project, sample, rate).await,
        Command::Token(TokenCommand::List { project }) => {
            let pool = db::connect_migrated(&settings.database).await?;
            let client = pool.get().await?;
            let tokens: Vec<serde_json::Value> = tokens::list(&client, &project)
                .await?
                .iter()
                .map(|t| {
                    json!({
                        "id": t.id,
                        "scopes": t.scopes,
                        "createdAt": t.created_at,
                        "expiresAt": t.expires_at,
                        "revokedAt": t.revoked_at,
                    })
                })
                .collect();
            println!("{}", serde_json::Value::Array(tokens));
            Ok(())
        }
        Command::Token(TokenCommand::Revoke { id }) => {
            let pool = db::connect_migrated(&settings.database).await?;
            let client = pool.get().await?;
            let revoked = tokens::revoke(&client, id).await?;
            if !revoked {
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
            let pool = db::connect_migrated(&settings.database).await?;
            let client = pool.get().await?;
            let token = new_secret("vit_");
            let expires_at = lifetime.map(|d| chrono::Utc::now() + d);
            let Some(id) =
                tokens::create(&client, &project, &hash_token(&token), &scopes, expires_at).await?
            else {
                bail!("no project {project:?}; create it with `video-import-api project create {project}`");
            };
            println!(
                "{}",
                json!({"token": token, "id": id, "project": project,
                       "scopes": scopes, "expiresAt": expires_at})
            );
            Ok(())
        }
    }
}

/// `storage verify`: checks the options (all their problems at once), verifies, prints the
/// report, and exits with code 3 when anything is bad.
async fn verify_storage(
    settings: &Settings,
    project: Option<String>,
    sample: Option<u64>,
    rate: Option<f64>,
) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    if sample == Some(0) {
        problems.push("--sample must be at least 1 (or left out to check every entry)".to_string());
    }
    let rate = match rate {
        None => None,
        Some(mib) => {
            let parsed = verify::Rate::mib_per_sec(mib);
            if parsed.is_none() {
                problems.push(format!(
                    "--rate {mib}: give a positive number of MiB per second, such as 20 or 0.5 (or leave it out for no bound)"
                ));
            }
            parsed
        }
    };
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    let pool = db::connect_migrated(&settings.database).await?;
    let project = match project {
        None => None,
        Some(handle) => {
            let client = pool.get().await?;
            match projects::id_of(&client, &handle).await? {
                Some(id) => Some(id),
                None => bail!("--project: no project {handle:?}"),
            }
        }
    };
    let storage = Storage::open(&settings.storage).await?;
    let options = verify::Options {
        project,
        sample,
        rate,
    };
    let report = verify::run(&storage, &pool, &options).await?;
    println!("{}", serde_json::to_string(&report)?);
    let bad = report.bad_count();
    if bad > 0 {
        return Err(ExitWith {
            code: 3,
            message: format!(
                "{bad} of {} stored objects are missing, changed or unreadable (listed in the \
                 report); the missing and changed ones are marked, and their next import \
                 downloads them again",
                report.checked
            ),
        }
        .into());
    }
    Ok(())
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
