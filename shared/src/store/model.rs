//! The values several store modules pass each other: a video of a job as the worker needs
//! it, and its source's cache validators. Apart from the modules that read and write them,
//! so that none of those depends on another for a type.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ItemState;

/// A video of a job, as the worker needs it.
#[derive(Debug, Clone)]
pub struct Item {
    pub job_id: String,
    pub idx: i32,
    pub project_id: i64,
    pub system_name: String,
    pub external_id: String,
    pub url: String,
    pub file_name: String,
    pub metadata: Value,
    pub state: ItemState,
    /// Validators of the existing entry's source, when it came from this same URL.
    pub known: Option<Validators>,
    /// The fixity values it was submitted with, checked against what is stored.
    pub checksum: Checksum,
}

/// Fixity values of a video (lower-case hex), as its submitter gave them: what is stored
/// must match each one given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checksum {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
}

impl Checksum {
    /// Checks one value given for `algorithm`, as the API and the importer both do: the
    /// value in lower case, or why it cannot be one (an algorithm not checked, or not the
    /// algorithm's number of hex digits).
    pub fn parse(algorithm: &str, value: &str) -> Result<String, String> {
        let digits = match algorithm {
            "sha256" => 64,
            "md5" => 32,
            _ => {
                return Err(
                    "is not a checksum this service checks: give sha256, md5 or both".into(),
                )
            }
        };
        if value.len() == digits && value.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(value.to_ascii_lowercase())
        } else {
            Err(format!("must be {digits} hexadecimal digits"))
        }
    }

    /// Whether no value was given.
    pub fn is_empty(&self) -> bool {
        self.sha256.is_none() && self.md5.is_none()
    }

    /// Whether a stored file of these hashes is the one these values name: each value given
    /// is known for it and equal (an entry stored before MD5s were kept cannot match an MD5).
    pub fn matches_stored(&self, sha256: &str, md5: Option<&str>) -> bool {
        !self.is_empty()
            && self
                .sha256
                .as_ref()
                .is_none_or(|s| s.eq_ignore_ascii_case(sha256))
            && self
                .md5
                .as_ref()
                .is_none_or(|m| md5.is_some_and(|stored| m.eq_ignore_ascii_case(stored)))
    }

    /// Why stored bytes of these hashes do not match, naming the first value that differs;
    /// `None` when every value given matches.
    pub fn mismatch(&self, sha256: &str, md5: &str) -> Option<String> {
        for (name, expected, got) in [("sha256", &self.sha256, sha256), ("md5", &self.md5, md5)] {
            if let Some(expected) = expected {
                if !expected.eq_ignore_ascii_case(got) {
                    return Some(format!(
                        "checksum mismatch: expected {name} {expected}, got {got}"
                    ));
                }
            }
        }
        None
    }
}

/// The source's cache validators, sent back on re-imports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

impl Validators {
    /// Whether the source sent neither an ETag nor a Last-Modified.
    pub fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::Checksum;

    #[test]
    fn each_value_given_must_match() {
        let both = Checksum {
            sha256: Some("aa".into()),
            md5: Some("bb".into()),
        };
        assert_eq!(both.mismatch("aa", "BB"), None, "hex case does not matter");
        assert_eq!(
            both.mismatch("ab", "bb").as_deref(),
            Some("checksum mismatch: expected sha256 aa, got ab")
        );
        assert_eq!(
            both.mismatch("aa", "bc").as_deref(),
            Some("checksum mismatch: expected md5 bb, got bc")
        );
        assert_eq!(Checksum::default().mismatch("x", "y"), None);
        assert!(both.matches_stored("AA", Some("bb")));
        assert!(!both.matches_stored("aa", None), "no MD5 kept: cannot tell");
        assert!(!both.matches_stored("ab", Some("bb")));
        assert!(!Checksum::default().matches_stored("aa", Some("bb")));
    }
}
