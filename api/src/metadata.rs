//! Metadata validated against the project's JSON Schema (or the Livingdocs fallback fields),
//! with every problem of the batch reported.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, LazyLock, Mutex};

use jsonschema::error::ValidationErrorKind;
use jsonschema::Validator;
use serde_json::{json, Value};

use crate::error::{ApiError, MetadataProblem};
use crate::validate::Video;

/// Most problems reported for one batch.
const MAX_PROBLEMS: usize = 200;

/// Without a project schema: Livingdocs' fallback fields, optional strings; other
/// properties are allowed.
static FALLBACK: LazyLock<Value> = LazyLock::new(|| {
    json!({
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "caption": {"type": "string"},
            "source": {"type": "string"},
            "description": {"type": "string"}
        }
    })
});

/// Compiles a schema; the error says what is wrong with it.
pub fn compile(schema: &Value) -> Result<Validator, String> {
    jsonschema::meta::options()
        .validate(schema)
        .map_err(|e| e.to_string())?;
    jsonschema::validator_for(schema).map_err(|e| e.to_string())
}

/// Compiled validators per project, recompiled when the project's schema changes.
#[derive(Default)]
pub struct Schemas {
    cache: Mutex<HashMap<i64, (u64, Arc<Validator>)>>,
}

impl Schemas {
    fn validator(
        &self,
        project_id: i64,
        schema: Option<&Value>,
    ) -> Result<Arc<Validator>, ApiError> {
        let schema = schema.unwrap_or(&FALLBACK);
        let mut hasher = DefaultHasher::new();
        schema.to_string().hash(&mut hasher);
        let fingerprint = hasher.finish();
        let mut cache = self.cache.lock().expect("schema cache lock");
        if let Some((f, validator)) = cache.get(&project_id) {
            if *f == fingerprint {
                return Ok(validator.clone());
            }
        }
        let validator = Arc::new(compile(schema).map_err(|e| {
            ApiError::Internal(anyhow::anyhow!(
                "the project's metadata schema does not compile: {e}"
            ))
        })?);
        cache.insert(project_id, (fingerprint, validator.clone()));
        Ok(validator)
    }

    /// Checks every video's metadata; all problems of the batch in one error.
    pub fn check(
        &self,
        project_id: i64,
        schema: Option<&Value>,
        videos: &[Video],
    ) -> Result<(), ApiError> {
        let validator = self.validator(project_id, schema)?;
        let mut problems = Vec::new();
        for (index, video) in videos.iter().enumerate() {
            for error in validator.iter_errors(&video.metadata) {
                let path = error.instance_path().to_string();
                let property = match error.kind() {
                    ValidationErrorKind::Required { property } => {
                        property.as_str().unwrap_or_default().to_string()
                    }
                    ValidationErrorKind::AdditionalProperties { unexpected } => {
                        unexpected.first().cloned().unwrap_or_default()
                    }
                    _ => path
                        .trim_start_matches('/')
                        .split('/')
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                };
                let message = if path.is_empty() {
                    error.to_string()
                } else {
                    format!("The value of '{path}' is invalid: {error}")
                };
                problems.push(MetadataProblem {
                    metadata_property: property,
                    message,
                    index,
                    external_id: video.external_id.clone(),
                });
                if problems.len() >= MAX_PROBLEMS {
                    return Err(ApiError::Metadata(problems));
                }
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        // The validator's order is not stable; the caller's is.
        problems.sort_by(|a, b| {
            (a.index, &a.metadata_property, &a.message).cmp(&(
                b.index,
                &b.metadata_property,
                &b.message,
            ))
        });
        Err(ApiError::Metadata(problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video(id: &str, metadata: Value) -> Video {
        Video {
            url: "https://a.example/v.mp4".into(),
            external_id: id.into(),
            file_name: "f".into(),
            metadata,
            checksum: Default::default(),
        }
    }

    fn problems(schema: Option<&Value>, videos: &[Video]) -> Vec<MetadataProblem> {
        match Schemas::default().check(1, schema, videos) {
            Err(ApiError::Metadata(p)) => p,
            other => panic!("expected metadata problems, got {other:?}"),
        }
    }

    #[test]
    fn fallback_fields_must_be_strings_and_others_are_allowed() {
        let ok = [video("a", json!({"title": "t", "credit": "LC", "n": 5}))];
        assert!(Schemas::default().check(1, None, &ok).is_ok());
        let p = problems(None, &[video("a", json!({"title": 5, "caption": []}))]);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].metadata_property, "caption");
        assert_eq!(p[1].metadata_property, "title");
        assert!(
            p[1].message.starts_with("The value of '/title' is invalid"),
            "{}",
            p[1].message
        );
    }

    #[test]
    fn schemas_that_break_the_meta_schema_are_refused() {
        assert!(compile(&json!({"type": 5})).is_err());
        assert!(
            compile(&json!({"type": "object", "properties": {"a": {"maxLength": -1}}})).is_err()
        );
        assert!(compile(&FALLBACK).is_ok());
    }

    #[test]
    fn a_project_schema_reports_every_problem_with_index_and_external_id() {
        let schema = json!({
            "type": "object",
            "required": ["title"],
            "properties": {"title": {"type": "string", "maxLength": 5}, "year": {"type": "integer"}},
            "additionalProperties": false
        });
        let p = problems(
            Some(&schema),
            &[
                video("ok", json!({"title": "fine"})),
                video("b", json!({"year": 1999})),
                video(
                    "c",
                    json!({"title": "much too long", "year": "x", "extra": 1}),
                ),
            ],
        );
        let summary: Vec<(usize, &str, &str)> = p
            .iter()
            .map(|p| {
                (
                    p.index,
                    p.external_id.as_str(),
                    p.metadata_property.as_str(),
                )
            })
            .collect();
        assert!(summary.contains(&(1, "b", "title")), "{summary:?}");
        assert!(summary.contains(&(2, "c", "title")), "{summary:?}");
        assert!(summary.contains(&(2, "c", "year")), "{summary:?}");
        assert_eq!(p.len(), 4, "{p:?}");
    }
}
