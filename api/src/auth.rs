//! Bearer tokens: only their SHA-256 is stored; each carries a project and scopes.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use video_import_shared::store::tokens;

use crate::error::ApiError;
use crate::state::AppState;

/// Scope for imports and their status.
pub const WRITE: &str = "public-api:write";
/// Scope for media-library reads.
pub const READ: &str = "public-api:read";
/// Every scope a token can have.
pub const SCOPES: &[&str] = &[WRITE, READ];

/// Hex SHA-256 of a token, the form stored in the database.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub project_id: i64,
    pub scopes: Vec<String>,
}

impl Caller {
    /// Fails with 403 unless the token has `scope`.
    pub fn require(&self, scope: &'static str) -> Result<(), ApiError> {
        if self.scopes.iter().any(|s| s == scope) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(scope))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if parts.headers.get_all(AUTHORIZATION).iter().nth(1).is_some() {
            return Err(ApiError::invalid(
                "Authorization",
                "was sent more than once; send one 'Authorization: Bearer <token>' header",
            ));
        }
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::Unauthorized(
                "Send the access token as 'Authorization: Bearer <token>'.",
            ))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthorized(
                "Send the access token as 'Authorization: Bearer <token>'.",
            ))?;
        // Requests with one token that arrive together (a client's pollers) share one
        // lookup, one that starts after they arrived: a revocation holds for every request
        // that arrives after it committed.
        let hash = hash_token(token);
        let shared = state
            .grants
            .run(hash.clone(), || {
                let (pool, hash) = (state.pool.clone(), hash.clone());
                async move {
                    let client = pool.get().await.ok()?;
                    tokens::find(&client, &hash).await.ok()
                }
            })
            .await;
        let found = match shared {
            Some(found) => found,
            // The shared lookup failed: look up here, for an error that says why.
            None => tokens::find(&state.pool.get().await?, &hash).await?,
        };
        let Some(grant) = found else {
            return Err(ApiError::Unauthorized("The access token is invalid."));
        };
        if grant.expired {
            return Err(ApiError::Unauthorized("The access token expired."));
        }
        if grant.revoked {
            return Err(ApiError::Unauthorized("The access token was revoked."));
        }
        if let Some(limit) = &state.rate_limit {
            limit.check(grant.id)?;
        }
        Ok(Caller {
            project_id: grant.project_id,
            scopes: grant.scopes,
        })
    }
}
