//! Conditional reads: `ETag`s, `If-None-Match` (answered `304 Not Modified` without a body)
//! and `If-Range`, shared by the status, the job list and the asset read.

use axum::http::header::{ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// An entity tag, written as it goes on the wire (`"…"` or `W/"…"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ETag(String);

impl ETag {
    /// A strong tag: the bytes are exactly these (an asset, tagged by its SHA-256).
    pub fn strong(opaque: &str) -> Self {
        Self(format!("\"{opaque}\""))
    }

    /// A weak tag: the same meaning, whatever the encoding (a JSON answer that may be
    /// compressed).
    pub fn weak(opaque: &str) -> Self {
        Self(format!("W/\"{opaque}\""))
    }

    /// The tag without its weakness mark, for the weak comparison of RFC 9110 §8.8.3.2.
    fn opaque(tag: &str) -> &str {
        tag.trim().trim_start_matches("W/")
    }

    /// Whether an `If-None-Match` value (`*`, or a comma-separated list) names this tag,
    /// compared weakly as RFC 9110 §13.1.2 says.
    pub fn matches_none_match(&self, if_none_match: &str) -> bool {
        let ours = Self::opaque(&self.0);
        if_none_match
            .split(',')
            .any(|tag| tag.trim() == "*" || Self::opaque(tag) == ours)
    }

    /// Whether an `If-Range` value names this tag: a strong comparison, so a weak tag
    /// never matches (RFC 9110 §13.1.5). A date is never taken (we keep no dates here).
    pub fn matches_if_range(&self, if_range: &str) -> bool {
        !self.0.starts_with("W/") && if_range.trim() == self.0
    }

    /// Whether the request's `If-None-Match` names this tag.
    pub fn is_fresh_for(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| self.matches_none_match(v))
    }

    /// The header value.
    pub fn header(&self) -> HeaderValue {
        HeaderValue::from_str(&self.0).expect("an entity tag is visible ASCII")
    }

    /// `304 Not Modified` with this tag, without a body.
    pub fn not_modified(&self) -> Response {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        response.headers_mut().insert(ETAG, self.header());
        response
    }

    /// `response` with this tag.
    pub fn tag(&self, mut response: Response) -> Response {
        response.headers_mut().insert(ETAG, self.header());
        response
    }
}

#[cfg(test)]
mod tests {
    use super::ETag;

    #[test]
    fn if_none_match_compares_weakly_and_takes_lists_and_star() {
        let tag = ETag::weak("abc");
        assert!(tag.matches_none_match("W/\"abc\""));
        assert!(tag.matches_none_match("\"abc\""), "weak comparison");
        assert!(tag.matches_none_match("\"x\", W/\"abc\""));
        assert!(tag.matches_none_match("*"));
        assert!(!tag.matches_none_match("\"abcd\""));
        assert!(!tag.matches_none_match(""));
        assert!(ETag::strong("abc").matches_none_match("W/\"abc\""));
    }

    #[test]
    fn if_range_compares_strongly() {
        let tag = ETag::strong("abc");
        assert!(tag.matches_if_range("\"abc\""));
        assert!(!tag.matches_if_range("W/\"abc\""));
        assert!(!tag.matches_if_range("Tue, 01 Dec 2026 10:00:00 GMT"));
        assert!(!ETag::weak("abc").matches_if_range("W/\"abc\""));
    }
}
