//! Parsing and checking an import batch before anything is stored. Every problem names its
//! field path (`videos[3].url`) and says how to fix it.

use std::collections::HashMap;

use serde_json::Value;
use video_import_shared::netguard::AddressPolicy;

use crate::error::ApiError;
use crate::model::ImportRequest;

/// Largest `context`, as in Livingdocs.
pub const MAX_CONTEXT_BYTES: usize = 8192;
const MAX_SYSTEM_NAME: usize = 200;
const MAX_ID: usize = 1024;
const MAX_FILE_NAME: usize = 1024;
const MAX_URL: usize = 8192;

/// A batch that passed every check.
#[derive(Debug)]
pub struct Batch {
    pub system_name: String,
    pub webhook: Option<String>,
    /// The caller's context, byte for byte.
    pub context: Option<String>,
    pub videos: Vec<Video>,
}

/// One video of a valid batch.
pub use video_import_shared::store::jobs::NewVideo as Video;

/// Which addresses the worker may download from and the notifier may deliver to: a URL
/// whose host is a refused IP literal is turned away at the door.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    pub videos: AddressPolicy,
    pub webhook: AddressPolicy,
    /// Counts the URLs refused at the door.
    pub refusals: Option<prometheus::IntCounter>,
}

impl Targets {
    fn count_refusal(&self, why: &str) {
        if why.starts_with(REFUSED_PREFIX) {
            if let Some(refusals) = &self.refusals {
                refusals.inc();
            }
        }
    }
}

/// How a refused address's message starts.
const REFUSED_PREFIX: &str = "points to ";

/// Parses `body` and checks it against the limits; collects every problem it can.
pub fn batch(body: &[u8], max_videos: usize, targets: &Targets) -> Result<Batch, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let raw: ImportRequest = serde_path_to_error::deserialize(&mut de).map_err(parse_error)?;
    de.end()
        .map_err(|e| ApiError::invalid("body", format!("is not valid JSON: {e}")))?;

    let mut errors = Vec::new();

    // PostgreSQL cannot store NUL in text or JSONB: name each such field before anything else.
    let mut nul_free = |field: &dyn Fn() -> String, value: &str| {
        let ok = !value.contains('\0');
        if !ok {
            errors.push((field(), NUL_MESSAGE.to_string()));
        }
        ok
    };
    let mut clean = nul_free(&|| "systemName".into(), &raw.system_name);
    if let Some(webhook) = &raw.webhook {
        clean &= nul_free(&|| "webhook".into(), webhook);
    }
    for (i, video) in raw.videos.iter().enumerate() {
        clean &= nul_free(&|| format!("videos[{i}].url"), &video.url);
        clean &= nul_free(&|| format!("videos[{i}].id"), &video.id);
        clean &= nul_free(&|| format!("videos[{i}].fileName"), &video.file_name);
        for (key, value) in &video.metadata {
            let path = format!("videos[{i}].metadata.{key}");
            clean &= nul_free(&|| path.clone(), key);
            clean &= nul_free_json(&path, value, &mut nul_free);
        }
    }
    if !clean {
        errors.truncate(100);
        return Err(ApiError::Invalid(errors));
    }
    let mut bad = |field: String, message: &str| errors.push((field, message.to_string()));

    let system_name = raw.system_name.trim().to_string();
    if system_name.is_empty() {
        bad("systemName".into(), "must not be empty");
    } else if system_name.len() > MAX_SYSTEM_NAME {
        bad("systemName".into(), "must be at most 200 characters");
    }
    if let Some(webhook) = &raw.webhook {
        if let Err(why) = check_url(webhook, &targets.webhook, "webhook.allowed_networks") {
            targets.count_refusal(&why);
            bad("webhook".into(), &why);
        }
    }
    let context = match raw.context {
        Some(ctx) if ctx.get() != "null" => {
            if !ctx.get().starts_with('{') {
                bad("context".into(), "must be a JSON object");
            } else if ctx.get().len() > MAX_CONTEXT_BYTES {
                bad(
                    "context".into(),
                    &format!(
                        "is {} bytes; it may be at most {MAX_CONTEXT_BYTES} bytes",
                        ctx.get().len()
                    ),
                );
            }
            Some(ctx.get().to_string())
        }
        _ => None,
    };
    if raw.videos.is_empty() {
        bad("videos".into(), "must contain at least one video");
    } else if raw.videos.len() > max_videos {
        bad(
            "videos".into(),
            &format!(
                "has {} videos; a batch may have at most {max_videos}: split it into several batches",
                raw.videos.len()
            ),
        );
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, video) in raw.videos.iter().enumerate() {
        if let Err(why) = check_url(&video.url, &targets.videos, "fetch.allowed_networks") {
            targets.count_refusal(&why);
            bad(format!("videos[{i}].url"), &why);
        }
        let id = video.id.as_str();
        if id.trim().is_empty() {
            bad(format!("videos[{i}].id"), "must not be empty");
        } else if id.len() > MAX_ID {
            bad(format!("videos[{i}].id"), "must be at most 1024 characters");
        } else if let Some(first) = seen.insert(id, i) {
            bad(
                format!("videos[{i}].id"),
                &format!("duplicates videos[{first}].id {id:?}; ids must be unique within a batch"),
            );
        }
        if video.file_name.trim().is_empty() {
            bad(format!("videos[{i}].fileName"), "must not be empty");
        } else if video.file_name.len() > MAX_FILE_NAME {
            bad(
                format!("videos[{i}].fileName"),
                "must be at most 1024 characters",
            );
        }
    }
    if !errors.is_empty() {
        errors.truncate(100);
        return Err(ApiError::Invalid(errors));
    }
    Ok(Batch {
        system_name,
        webhook: raw.webhook,
        context,
        videos: raw
            .videos
            .into_iter()
            .map(|v| Video {
                url: v.url,
                external_id: v.id,
                file_name: v.file_name,
                metadata: Value::Object(v.metadata),
            })
            .collect(),
    })
}

/// Middleware: a path or query parameter containing NUL is refused with 400 naming it,
/// before any handler could hand it to PostgreSQL (which cannot store or compare it).
pub async fn refuse_nul_in_uri(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;

    let uri = request.uri();
    let path = percent_decode(uri.path());
    if path.contains('\0') {
        return ApiError::invalid("path", NUL_MESSAGE).into_response();
    }
    for (name, value) in url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()) {
        if name.contains('\0') || value.contains('\0') {
            return ApiError::invalid(name.replace('\0', "\\u0000"), NUL_MESSAGE).into_response();
        }
    }
    next.run(request).await
}

/// `%XX` sequences of a path decoded (as path parameters are).
fn percent_decode(path: &str) -> String {
    let bytes: Vec<u8> =
        url::form_urlencoded::parse(format!("p={}", path.replace('+', "%2B")).as_bytes())
            .next()
            .map(|(_, v)| v.into_owned().into_bytes())
            .unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// What a field containing NUL is told.
const NUL_MESSAGE: &str =
    "contains a NUL character (\\u0000), which cannot be stored; remove it and send the batch again";

/// Checks every key and string inside a metadata value; `false` when one holds NUL.
fn nul_free_json(
    path: &str,
    value: &Value,
    check: &mut impl FnMut(&dyn Fn() -> String, &str) -> bool,
) -> bool {
    match value {
        Value::String(text) => check(&|| path.to_string(), text),
        Value::Array(items) => items.iter().enumerate().fold(true, |ok, (n, item)| {
            nul_free_json(&format!("{path}[{n}]"), item, check) && ok
        }),
        Value::Object(map) => map.iter().fold(true, |ok, (key, item)| {
            let inner = format!("{path}.{key}");
            let key_ok = check(&|| inner.clone(), key);
            nul_free_json(&inner, item, check) && key_ok && ok
        }),
        _ => true,
    }
}

/// Only absolute http(s) URLs with a host that is not a refused IP literal (`allow_key`
/// names the setting that admits one); `data:` URLs are named explicitly.
fn check_url(url: &str, policy: &AddressPolicy, allow_key: &str) -> Result<(), String> {
    if url.len() > MAX_URL {
        return Err("must be at most 8192 characters".into());
    }
    if url.trim_start().to_ascii_lowercase().starts_with("data:") {
        return Err("data: URLs are not allowed; give an http or https URL to the file".into());
    }
    let parsed = url::Url::parse(url).map_err(|e| format!("is not a valid URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "must be an http or https URL, not {}:",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("must name a host".into());
    }
    if let Some(ip) = policy.refused_literal(&parsed) {
        return Err(format!(
            "{REFUSED_PREFIX}{ip}, a private, loopback, link-local or reserved address; use a public \
             address, or ask the operator to admit the network with {allow_key}"
        ));
    }
    Ok(())
}

/// Turns a serde error into the field it concerns.
fn parse_error(error: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = error.path().to_string();
    let inner = error.into_inner();
    if inner.is_syntax() || inner.is_eof() {
        return ApiError::invalid("body", format!("is not valid JSON: {inner}"));
    }
    let message = inner.to_string();
    // serde reports a missing field at its parent; name the field itself.
    if let Some(rest) = message.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or_default();
        let field = if path == "." || path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        };
        return ApiError::invalid(field, "is required");
    }
    let message = message
        .split(" at line ")
        .next()
        .unwrap_or(&message)
        .to_string();
    let field = if path == "." || path.is_empty() {
        "body".to_string()
    } else {
        path
    };
    ApiError::invalid(field, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(body: &str) -> Vec<(String, String)> {
        match batch(body.as_bytes(), 3, &Targets::default()) {
            Err(ApiError::Invalid(f)) => f,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    const VIDEO: &str =
        r#"{"url":"https://a.example/v.mp4","id":"a","fileName":"a","metadata":{}}"#;

    #[test]
    fn missing_fields_are_named_with_their_path() {
        let f = fields(r#"{"systemName":"s","videos":[{"id":"a","fileName":"a","metadata":{}}]}"#);
        assert_eq!(f[0].0, "videos[0].url");
        assert_eq!(fields(r#"{"videos":[]}"#)[0].0, "systemName");
    }

    #[test]
    fn wrong_types_are_named_with_their_path() {
        let f = fields(&format!(
            r#"{{"systemName":"s","videos":[{VIDEO},{{"url":"https://a/b","id":7,"fileName":"a","metadata":{{}}}}]}}"#
        ));
        assert_eq!(f[0].0, "videos[1].id");
        assert!(f[0].1.contains("expected a string"), "{}", f[0].1);
    }

    #[test]
    fn every_semantic_problem_is_reported() {
        let body = r#"{"systemName":"s","webhook":"ftp://x/y","context":[1],"videos":[
            {"url":"data:video/mp4;base64,AAAA","id":"a","fileName":"a","metadata":{}},
            {"url":"https://a.example/v.mp4","id":"a","fileName":"b","metadata":{}}]}"#;
        let f = fields(body);
        let names: Vec<&str> = f.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            ["webhook", "context", "videos[0].url", "videos[1].id"]
        );
        assert!(f[2].1.contains("data: URLs are not allowed"));
        assert!(f[3].1.contains("duplicates videos[0].id"));
    }

    #[test]
    fn batch_size_and_context_size_are_bounded() {
        let four = [VIDEO; 4].join(",").replace(r#""id":"a""#, r#""id":"X""#);
        let f = fields(&format!(r#"{{"systemName":"s","videos":[{four}]}}"#));
        assert!(f
            .iter()
            .any(|(k, m)| k == "videos" && m.contains("at most 3")));
        let big = "x".repeat(MAX_CONTEXT_BYTES);
        let f = fields(&format!(
            r#"{{"systemName":"s","context":{{"k":"{big}"}},"videos":[{VIDEO}]}}"#
        ));
        assert_eq!(f[0].0, "context");
        assert!(fields(r#"{"systemName":"s","videos":[]}"#)[0]
            .1
            .contains("at least one"));
    }

    #[test]
    fn context_is_kept_byte_for_byte() {
        let body = format!(
            r#"{{"systemName":"s","context":{{ "b": 1.50, "a" : "\u00e9" }},"videos":[{VIDEO}]}}"#
        );
        let b = batch(body.as_bytes(), 3, &Targets::default()).unwrap();
        assert_eq!(
            b.context.as_deref(),
            Some(r#"{ "b": 1.50, "a" : "\u00e9" }"#)
        );
    }

    #[test]
    fn private_ip_literals_are_refused_at_the_door() {
        let body = r#"{"systemName":"s","webhook":"http://[::ffff:127.0.0.1]:9/hook","videos":[
            {"url":"http://169.254.169.254/latest","id":"a","fileName":"a","metadata":{}},
            {"url":"http://localhost/v.mp4","id":"b","fileName":"b","metadata":{}}]}"#;
        let f = fields(body);
        let names: Vec<&str> = f.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            ["webhook", "videos[0].url"],
            "names are checked later"
        );
        assert!(f[0].1.contains("webhook.allowed_networks"), "{}", f[0].1);
        assert!(f[1].1.contains("169.254.169.254"), "{}", f[1].1);
        let trusted = Targets {
            videos: AddressPolicy::new(false, &["169.254.0.0/16".parse().unwrap()]),
            webhook: AddressPolicy::new(true, &[]),
            refusals: None,
        };
        assert!(batch(body.as_bytes(), 3, &trusted).is_ok());
    }

    #[test]
    fn nul_characters_are_refused_naming_the_field() {
        let body = r#"{"systemName":"s\u0000","videos":[
            {"url":"https://a.example/v\u0000.mp4","id":"a\u0000","fileName":"b\u0000","metadata":
              {"ti\u0000tle":"x","tags":["ok","n\u0000"],"deep":{"k":"\u0000"}}}]}"#;
        let f = fields(body);
        let names: Vec<&str> = f.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "systemName",
                "videos[0].url",
                "videos[0].id",
                "videos[0].fileName",
                "videos[0].metadata.deep.k",
                "videos[0].metadata.tags[1]",
                "videos[0].metadata.ti\0tle",
            ]
        );
        assert!(f[0].1.contains("NUL"), "{}", f[0].1);
    }

    #[test]
    fn percent_decoding_finds_nul_in_paths() {
        assert!(percent_decode("/api/v1/mediaLibrary/a%00b").contains('\0'));
        assert_eq!(percent_decode("/api/v1/a+b%20c"), "/api/v1/a+b c");
    }

    #[test]
    fn an_empty_file_name_is_refused() {
        let f = fields(
            r#"{"systemName":"s","videos":[{"url":"https://a.example/v.mp4","id":"a","fileName":" ","metadata":{}}]}"#,
        );
        assert_eq!(
            f,
            [(
                "videos[0].fileName".to_string(),
                "must not be empty".to_string()
            )]
        );
    }

    #[test]
    fn malformed_json_is_reported_as_such() {
        let f = fields(r#"{"systemName": "s", "videos": [}"#);
        assert_eq!(f[0].0, "body");
        assert!(f[0].1.starts_with("is not valid JSON"));
    }
}
