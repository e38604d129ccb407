//! Livingdocs' dated API versions. Since release-2025-03 Livingdocs serves its public API
//! under `/api/{YYYY-MM}/…`, one version per release in odd months, with `v1` and `beta`
//! equal to `2025-03`. Every one of them answers here exactly like `/api/v1/…`; a dated
//! version older than 2025-03 answers 410 Gone, as Livingdocs does for retired versions.

use axum::extract::Request;
use axum::http::Uri;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Datelike;

use crate::error::ApiError;

/// The first dated version.
const FIRST: (i32, u32) = (2025, 3);

/// A request for a retired version, rewritten to `/api/v1` so that it routes, and answered
/// 410 by [`refuse_retired`].
#[derive(Debug, Clone)]
struct Retired(String);

/// What `/api/{version}` names.
#[derive(Debug, PartialEq, Eq)]
enum Version {
    /// Served as `v1`.
    Current,
    /// Older than the first dated version.
    Retired,
    /// Not a version (a future month, an even month, or no date at all).
    Unknown,
}

/// Classifies `segment` given today's (year, month).
fn version(segment: &str, today: (i32, u32)) -> Version {
    if segment == "v1" || segment == "beta" {
        return Version::Current;
    }
    let Some((year, month)) = segment.split_once('-') else {
        return Version::Unknown;
    };
    let (Ok(year), Ok(month)) = (year.parse::<i32>(), month.parse::<u32>()) else {
        return Version::Unknown;
    };
    if year.to_string().len() != 4 || month.to_string().len() > 2 || month.is_multiple_of(2) {
        return Version::Unknown;
    }
    if !(1..=12).contains(&month) || (year, month) > today {
        Version::Unknown
    } else if (year, month) < FIRST {
        Version::Retired
    } else {
        Version::Current
    }
}

/// Rewrites `/api/{version}/rest` to `/api/v1/rest` for every version served like `v1`;
/// runs before routing. Other paths are left alone (an unknown version ends in a 404).
pub fn rewrite<B>(mut request: axum::http::Request<B>) -> axum::http::Request<B> {
    let path = request.uri().path().to_string();
    let Some(rest) = path.strip_prefix("/api/") else {
        return request;
    };
    let Some((segment, tail)) = rest.split_once('/') else {
        return request;
    };
    if segment == "v1" {
        return request;
    }
    let now = chrono::Utc::now();
    let found = version(segment, (now.year(), now.month()));
    if found == Version::Unknown {
        return request;
    }
    let query = request
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    if found == Version::Retired {
        let retired = Retired(segment.to_string());
        request.extensions_mut().insert(retired);
    }
    if let Ok(uri) = format!("/api/v1/{tail}{query}").parse::<Uri>() {
        *request.uri_mut() = uri;
    }
    request
}

/// Middleware: answers 410 for a retired version.
pub async fn refuse_retired(request: Request, next: Next) -> Response {
    if let Some(Retired(version)) = request.extensions().get::<Retired>() {
        return ApiError::VersionGone(version.clone()).into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dated_versions_from_2025_03_up_to_this_month_are_served() {
        let today = (2026, 11);
        assert_eq!(version("v1", today), Version::Current);
        assert_eq!(version("beta", today), Version::Current);
        assert_eq!(version("2025-03", today), Version::Current);
        assert_eq!(version("2026-05", today), Version::Current);
        assert_eq!(version("2026-11", today), Version::Current);
        assert_eq!(version("2025-01", today), Version::Retired);
        assert_eq!(version("2024-11", today), Version::Retired);
        assert_eq!(
            version("2026-04", today),
            Version::Unknown,
            "even months are no release"
        );
        assert_eq!(
            version("2027-01", today),
            Version::Unknown,
            "not yet released"
        );
        assert_eq!(version("2026-13", today), Version::Unknown);
        assert_eq!(version("v2", today), Version::Unknown);
        assert_eq!(version("26-05", today), Version::Unknown);
    }

    #[test]
    fn paths_and_queries_are_kept() {
        let request = axum::http::Request::builder()
            .uri("/api/2026-05/import/videos/status?id=abc")
            .body(())
            .unwrap();
        assert_eq!(
            rewrite(request).uri().to_string(),
            "/api/v1/import/videos/status?id=abc"
        );
        let request = axum::http::Request::builder()
            .uri("/api/2024-11/mediaLibrary")
            .body(())
            .unwrap();
        let rewritten = rewrite(request);
        assert_eq!(rewritten.uri().path(), "/api/v1/mediaLibrary");
        assert!(rewritten.extensions().get::<Retired>().is_some());
        let request = axum::http::Request::builder()
            .uri("/healthz")
            .body(())
            .unwrap();
        assert_eq!(rewrite(request).uri().path(), "/healthz");
    }
}
