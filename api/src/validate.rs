//! Parsing and checking an import batch before anything is stored. Every problem names its
//! field path (`videos[3].url`) and says how to fix it.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use video_import_shared::fields::{self, MAX_FILE_NAME, MAX_ID, MAX_SYSTEM_NAME};
use video_import_shared::netguard::AddressPolicy;
use video_import_shared::store::Checksum;

use crate::error::ApiError;

/// Largest `context`, as in Livingdocs.
pub const MAX_CONTEXT_BYTES: usize = 8192;
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

/// The batch as sent, each field kept as its raw JSON, so that every field that is missing
/// or of the wrong type can be named (a typed parse stops at the first).
#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(rename = "systemName", default, borrow, deserialize_with = "present")]
    system_name: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    webhook: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    context: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    videos: Option<&'a RawValue>,
}

/// One video as sent (see [`RawRequest`]).
#[derive(Deserialize)]
struct RawVideo<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    url: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(rename = "fileName", default, borrow, deserialize_with = "present")]
    file_name: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    metadata: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    checksum: Option<&'a RawValue>,
}

/// Video `i`'s `checksum`: an object with `sha256` (64 hex digits) and/or `md5` (32), in
/// lower case; every problem noted.
fn checksum(problems: &mut Problems, i: usize, raw: Option<&RawValue>) -> Option<Checksum> {
    let Some(raw) = raw else {
        return Some(Checksum::default());
    };
    let field = format!("videos[{i}].checksum");
    let Ok(map) = serde_json::from_str::<Map<String, Value>>(raw.get()) else {
        problems.add(
            field,
            format!(
                "must be an object such as {{\"sha256\": \"<64 hex digits>\"}} or {{\"md5\": \"<32 hex digits>\"}}, not {}",
                kind(raw)
            ),
        );
        return None;
    };
    if map.is_empty() {
        problems.add(field, "must name sha256, md5 or both");
        return None;
    }
    let mut checksum = Checksum::default();
    let mut fine = true;
    for (name, value) in &map {
        // A value that is no string is checked as "" (so named as the wrong length).
        match Checksum::parse(name, value.as_str().unwrap_or_default()) {
            Ok(hex) if name == "sha256" => checksum.sha256 = Some(hex),
            Ok(hex) => checksum.md5 = Some(hex),
            Err(why) => {
                problems.add(format!("{field}.{name}"), why);
                fine = false;
            }
        }
    }
    fine.then_some(checksum)
}

/// A field that is present, `null` included (`None` is kept for a missing field).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

/// What kind of JSON value `raw` is, for messages.
fn kind(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// The problems of one batch, by field path.
#[derive(Default)]
struct Problems(Vec<(String, String)>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push((field.into(), message.into()));
    }

    /// The string at `field`: `None` (and the problem noted) when it is missing, not a
    /// string, or holds NUL.
    fn string(&mut self, field: &dyn Fn() -> String, raw: Option<&RawValue>) -> Option<String> {
        let Some(raw) = raw else {
            self.add(field(), "is required");
            return None;
        };
        match serde_json::from_str::<String>(raw.get()) {
            Ok(text) if text.contains('\0') => {
                self.add(field(), NUL_MESSAGE);
                None
            }
            Ok(text) => Some(text),
            Err(_) => {
                self.add(field(), format!("must be a string, not {}", kind(raw)));
                None
            }
        }
    }
}

/// Parses `body` and checks it against the limits; reports every problem of the batch at
/// once, each under its field path.
pub fn batch(body: &[u8], max_videos: usize, targets: &Targets) -> Result<Batch, ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|&b| b != b'{') {
        // Still a JSON syntax error first, if there is one.
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            return Err(ApiError::invalid("body", format!("is not valid JSON: {e}")));
        }
        return Err(ApiError::invalid(
            "body",
            "must be a JSON object with systemName and videos",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let raw: RawRequest = serde_path_to_error::deserialize(&mut de).map_err(parse_error)?;
    de.end()
        .map_err(|e| ApiError::invalid("body", format!("is not valid JSON: {e}")))?;

    let mut problems = Problems::default();
    let system_name = problems
        .string(&|| "systemName".into(), raw.system_name)
        .map(|name| name.trim().to_string());
    if let Some(Err(why)) = system_name
        .as_deref()
        .map(|name| fields::check_name(name, MAX_SYSTEM_NAME))
    {
        problems.add("systemName", why.to_string());
    }
    let webhook = match raw.webhook {
        Some(raw) if raw.get() == "null" => None,
        None => None,
        webhook => problems.string(&|| "webhook".into(), webhook),
    };
    if let Some(webhook) = &webhook {
        if let Err(why) = check_url(webhook, &targets.webhook, "webhook.allowed_networks") {
            targets.count_refusal(&why);
            problems.add("webhook", why);
        }
    }
    let context = match raw.context {
        Some(ctx) if ctx.get() != "null" => {
            if !ctx.get().starts_with('{') {
                problems.add("context", "must be a JSON object");
            } else if ctx.get().len() > MAX_CONTEXT_BYTES {
                problems.add(
                    "context",
                    format!(
                        "is {} bytes; it may be at most {MAX_CONTEXT_BYTES} bytes",
                        ctx.get().len()
                    ),
                );
            }
            Some(ctx.get().to_string())
        }
        _ => None,
    };
    let raw_videos: Vec<&RawValue> = match raw.videos {
        None => {
            problems.add("videos", "is required");
            Vec::new()
        }
        Some(raw) => match serde_json::from_str(raw.get()) {
            Ok(videos) => {
                let videos: Vec<&RawValue> = videos;
                if videos.is_empty() {
                    problems.add("videos", "must contain at least one video");
                } else if videos.len() > max_videos {
                    problems.add(
                        "videos",
                        format!(
                            "has {} videos; a batch may have at most {max_videos}: split it into several batches",
                            videos.len()
                        ),
                    );
                }
                videos
            }
            Err(_) => {
                problems.add(
                    "videos",
                    format!("must be an array of videos, not {}", kind(raw)),
                );
                Vec::new()
            }
        },
    };
    let mut videos = Vec::with_capacity(raw_videos.len());
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, raw) in raw_videos.into_iter().enumerate() {
        let video: RawVideo = match serde_json::from_str(raw.get()) {
            Ok(video) => video,
            Err(e) if raw.get().starts_with('{') => {
                problems.add(format!("videos[{i}]"), serde_message(&e));
                continue;
            }
            Err(_) => {
                problems.add(
                    format!("videos[{i}]"),
                    format!(
                        "must be an object with url, id, fileName and metadata, not {}",
                        kind(raw)
                    ),
                );
                continue;
            }
        };
        let url = problems.string(&|| format!("videos[{i}].url"), video.url);
        if let Some(url) = &url {
            if let Err(why) = check_video_url(url, &targets.videos) {
                targets.count_refusal(&why);
                problems.add(format!("videos[{i}].url"), why);
            }
        }
        let id = problems.string(&|| format!("videos[{i}].id"), video.id);
        if let Some(id) = &id {
            if let Err(why) = fields::check_name(id, MAX_ID) {
                problems.add(format!("videos[{i}].id"), why.to_string());
            } else if let Some(first) = seen.insert(id.clone(), i) {
                problems.add(
                    format!("videos[{i}].id"),
                    format!(
                        "duplicates videos[{first}].id {id:?}; ids must be unique within a batch"
                    ),
                );
            }
        }
        let file_name = problems.string(&|| format!("videos[{i}].fileName"), video.file_name);
        if let Some(file_name) = &file_name {
            if let Err(why) = fields::check_name(file_name, MAX_FILE_NAME) {
                problems.add(format!("videos[{i}].fileName"), why.to_string());
            }
        }
        let metadata = metadata(&mut problems, i, video.metadata);
        let checksum = checksum(&mut problems, i, video.checksum);
        if let (Some(url), Some(external_id), Some(file_name), Some(metadata), Some(checksum)) =
            (url, id, file_name, metadata, checksum)
        {
            videos.push(Video {
                url,
                external_id,
                file_name,
                metadata: Value::Object(metadata),
                checksum,
            });
        }
    }
    let mut errors = problems.0;
    if !errors.is_empty() {
        errors.truncate(100);
        return Err(ApiError::Invalid(errors));
    }
    Ok(Batch {
        system_name: system_name.unwrap_or_default(),
        webhook,
        context,
        videos,
    })
}

/// The metadata of video `i`: a JSON object whose keys and strings hold no NUL and whose
/// numbers can be stored exactly; `None` (and the problems noted) otherwise.
fn metadata(
    problems: &mut Problems,
    i: usize,
    raw: Option<&RawValue>,
) -> Option<Map<String, Value>> {
    let field = format!("videos[{i}].metadata");
    let Some(raw) = raw else {
        problems.add(field, "is required");
        return None;
    };
    let Ok(map) = serde_json::from_str::<Map<String, Value>>(raw.get()) else {
        problems.add(field, format!("must be a JSON object, not {}", kind(raw)));
        return None;
    };
    let before = problems.0.len();
    let mut nul_free = |field: &dyn Fn() -> String, value: &str| {
        let ok = !value.contains('\0');
        if !ok {
            problems.add(field(), NUL_MESSAGE);
        }
        ok
    };
    for (key, value) in &map {
        let path = format!("{field}.{key}");
        nul_free(&|| path.clone(), key);
        nul_free_json(&path, value, &mut nul_free);
    }
    if map.values().any(has_float) {
        numbers::each(raw.get(), &field, |path, number| {
            if let Some(stored) = numbers::changed(number) {
                problems.add(
                    path,
                    format!(
                        "is {number}, a number that cannot be stored exactly (it would become \
                         {stored}); send at most 15 significant digits (whole numbers from -2^63 \
                         to 2^64-1 are kept exactly), or send the value as a string"
                    ),
                );
            }
        });
    }
    (problems.0.len() == before).then_some(map)
}

/// Whether `value` holds a number that is not a 64-bit integer (one that may have been
/// rounded when parsed).
fn has_float(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.is_f64(),
        Value::Array(items) => items.iter().any(has_float),
        Value::Object(map) => map.values().any(has_float),
        _ => false,
    }
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

/// A video's URL: an `s3://bucket/key` URL (whether the project has a source rule for the
/// bucket is checked against the database, see `sources::check`), or an http(s) URL as
/// [`check_url`] admits it.
fn check_video_url(url: &str, policy: &AddressPolicy) -> Result<(), String> {
    let is_s3 = url
        .get(..5)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("s3://"));
    if !is_s3 {
        return check_url(url, policy, "fetch.allowed_networks").map_err(|why| {
            why.replace(
                "must be an http or https URL",
                "must be an http, https or s3 URL",
            )
        });
    }
    if url.len() > MAX_URL {
        return Err("must be at most 8192 characters".into());
    }
    if let Some(control) = url.chars().find(|c| c.is_control()) {
        return Err(format!(
            "contains the control character U+{:04X}, which a URL may not hold; remove it",
            control as u32
        ));
    }
    let parsed = url::Url::parse(url).map_err(|e| format!("is not a valid URL ({e})"))?;
    match video_import_shared::sources::s3_object(&parsed) {
        Some(_) if parsed.query().is_none() && parsed.fragment().is_none() => Ok(()),
        _ => Err(
            "must name a bucket and an object key, as in s3://bucket/path/video.mp4 \
                  (no query or fragment)"
                .into(),
        ),
    }
}

/// Only absolute http(s) URLs, written out as `http(s)://host…`, with a host that is not a
/// refused IP literal (`allow_key` names the setting that admits one) and no control
/// characters; `data:` URLs are named explicitly. The text itself is checked, not only what
/// the url crate makes of it: it drops tabs and line breaks and finds a host in
/// `http:///a.mp4` (`a.mp4`), while the text is what is stored and fetched.
fn check_url(url: &str, policy: &AddressPolicy, allow_key: &str) -> Result<(), String> {
    if url.len() > MAX_URL {
        return Err("must be at most 8192 characters".into());
    }
    if url.trim_start().to_ascii_lowercase().starts_with("data:") {
        return Err("data: URLs are not allowed; give an http or https URL to the file".into());
    }
    if let Some(control) = url.chars().find(|c| c.is_control()) {
        return Err(format!(
            "contains the control character U+{:04X} ({}), which a URL may not hold; remove it \
             (or percent-encode it, as %0A for a line feed)",
            control as u32,
            control.escape_default()
        ));
    }
    let parsed = url::Url::parse(url).map_err(|e| format!("is not a valid URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "must be an http or https URL, not {}:",
            parsed.scheme()
        ));
    }
    if !names_host(url) || parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!(
            "must name a host right after {}:// (as in {}://archive.example/video.mp4)",
            parsed.scheme(),
            parsed.scheme()
        ));
    }
    if let Some(ip) = policy.refused_literal(&parsed) {
        return Err(format!(
            "{REFUSED_PREFIX}{ip}, a private, loopback, link-local or reserved address; use a public \
             address, or ask the operator to admit the network with {allow_key}"
        ));
    }
    Ok(())
}

/// Whether the text of an http(s) URL has `://` after its scheme and a host before the
/// path: not `http:///a.mp4`, `http:/a.mp4`, `http:a.mp4`, `http:\\a.mp4` nor `http://user@:80/`.
fn names_host(url: &str) -> bool {
    let url = url.trim_start_matches(' ');
    let Some((_, rest)) = url.split_once(':') else {
        return false;
    };
    let Some(rest) = rest.strip_prefix("//") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#', '\\']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host = if host_port.starts_with('[') {
        host_port.split(']').next().unwrap_or_default()
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    !host.is_empty()
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
    let message = serde_message(&inner);
    let field = if path == "." || path.is_empty() {
        "body".to_string()
    } else {
        path
    };
    ApiError::invalid(field, message)
}

/// serde's message without its position (the field path says where).
fn serde_message(error: &serde_json::Error) -> String {
    let message = error.to_string();
    message
        .split(" at line ")
        .next()
        .unwrap_or(&message)
        .to_string()
}

/// The numbers of a JSON text, and whether each survives being stored.
///
/// Metadata is parsed into `serde_json::Value`, which keeps 64-bit integers exactly but
/// every other number as a 64-bit float, and is written to PostgreSQL (JSONB, which itself
/// would keep any number exactly) as that float's shortest text. A number with more
/// significant digits than a float holds would be stored changed, so it is refused.
mod numbers {
    /// Where a scan is inside the text.
    enum Frame {
        Object { key: String, expect_key: bool },
        Array { index: usize },
    }

    /// Calls `found` with the field path and the text of every number in `json` (valid
    /// JSON; `base` is the path of its root), in one pass.
    pub fn each(json: &str, base: &str, mut found: impl FnMut(String, &str)) {
        let bytes = json.as_bytes();
        let mut frames: Vec<Frame> = Vec::new();
        let path = |frames: &[Frame]| {
            let mut path = base.to_string();
            for frame in frames {
                match frame {
                    Frame::Object { key, .. } => {
                        path.push('.');
                        path.push_str(key);
                    }
                    Frame::Array { index } => path.push_str(&format!("[{index}]")),
                }
            }
            path
        };
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'"' => {
                    let mut end = i + 1;
                    while end < bytes.len() && bytes[end] != b'"' {
                        end += if bytes[end] == b'\\' { 2 } else { 1 };
                    }
                    if let Some(Frame::Object { key, expect_key }) = frames.last_mut() {
                        if *expect_key {
                            let text = json.get(i..=end).unwrap_or_default();
                            *key = serde_json::from_str(text).unwrap_or_default();
                            *expect_key = false;
                        }
                    }
                    i = end + 1;
                }
                b'{' => {
                    frames.push(Frame::Object {
                        key: String::new(),
                        expect_key: true,
                    });
                    i += 1;
                }
                b'[' => {
                    frames.push(Frame::Array { index: 0 });
                    i += 1;
                }
                b'}' | b']' => {
                    frames.pop();
                    i += 1;
                }
                b',' => {
                    match frames.last_mut() {
                        Some(Frame::Array { index }) => *index += 1,
                        Some(Frame::Object { expect_key, .. }) => *expect_key = true,
                        None => {}
                    }
                    i += 1;
                }
                b'-' | b'0'..=b'9' => {
                    let end = bytes[i..]
                        .iter()
                        .position(|b| !b"0123456789+-.eE".contains(b))
                        .map_or(bytes.len(), |n| i + n);
                    found(path(&frames), &json[i..end]);
                    i = end;
                }
                _ => i += 1,
            }
        }
    }

    /// What `number` (a JSON number's text) would be stored as, when that is another
    /// value; `None` when it is kept exactly.
    pub fn changed(number: &str) -> Option<String> {
        let stored = match serde_json::from_str::<serde_json::Number>(number) {
            Ok(parsed) => parsed.to_string(),
            Err(_) => return Some("nothing: it is out of range".into()),
        };
        let (sent, kept) = (decimal(number), decimal(&stored));
        (sent.is_none() || sent != kept).then_some(stored)
    }

    /// A number's exact value as (negative, significant digits, power of ten), zero as
    /// (false, "", 0); `None` for an exponent too large to hold.
    fn decimal(number: &str) -> Option<(bool, String, i64)> {
        let (negative, unsigned) = match number.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, number),
        };
        let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
            Some(at) => (&unsigned[..at], &unsigned[at + 1..]),
            None => (unsigned, "0"),
        };
        let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let digits = format!("{whole}{fraction}");
        let digits = digits.trim_start_matches('0');
        if digits.is_empty() {
            return Some((false, String::new(), 0));
        }
        let trimmed = digits.trim_end_matches('0');
        let exponent: i64 = exponent.trim_start_matches('+').parse().ok()?;
        let power = exponent
            .checked_sub(fraction.len() as i64)?
            .checked_add((digits.len() - trimmed.len()) as i64)?;
        Some((negative, trimmed.to_string(), power))
    }
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
        assert_eq!(f[0].1, "must be a string, not a number");
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

    #[test]
    fn every_missing_field_of_a_video_is_reported() {
        let f = fields(
            r#"{"systemName":"s","videos":[{"url":"https://a.example/v.mp4"},{"id":5,"fileName":null,"metadata":[]}]}"#,
        );
        let names: Vec<&str> = f.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "videos[0].id",
                "videos[0].fileName",
                "videos[0].metadata",
                "videos[1].url",
                "videos[1].id",
                "videos[1].fileName",
                "videos[1].metadata",
            ]
        );
        assert_eq!(f[0].1, "is required");
        assert_eq!(f[4].1, "must be a string, not a number");
        assert_eq!(f[5].1, "must be a string, not null");
        assert_eq!(f[6].1, "must be a JSON object, not an array");
        let f = fields(r#"{"videos":7}"#);
        assert_eq!(
            f,
            [
                ("systemName".to_string(), "is required".to_string()),
                (
                    "videos".to_string(),
                    "must be an array of videos, not a number".to_string()
                )
            ]
        );
        assert_eq!(fields("[1]")[0].0, "body");
        assert_eq!(
            fields(r#"{"systemName":"s","videos":[3]}"#)[0].0,
            "videos[0]"
        );
    }

    #[test]
    fn urls_need_a_host_in_their_text_and_no_control_characters() {
        let policy = AddressPolicy::default();
        for url in [
            "http:///a.mp4",
            "https:///a.mp4",
            "http:/a.mp4",
            "http:a.mp4",
            "http:\\\\a.mp4",
        ] {
            let why = check_url(url, &policy, "k").expect_err(url);
            assert!(why.contains("must name a host"), "{url}: {why}");
        }
        for url in ["http://user@/a.mp4", "http://:80/a.mp4"] {
            assert!(check_url(url, &policy, "k").is_err(), "{url}");
        }
        for url in [
            "https://a.example/v\r\nX-Injected: 1.mp4",
            "https://a.example/v\t.mp4",
            "https://a.example/v\u{85}.mp4",
        ] {
            let why = check_url(url, &policy, "k").expect_err(url);
            assert!(why.contains("control character"), "{url:?}: {why}");
        }
        for url in [
            "https://a.example/v.mp4",
            "HTTPS://A.example:8443/v.mp4?x=1#f",
            "http://user:pw@a.example/v.mp4",
            "http://[2606:4700::1111]:8080/v.mp4",
            "https://a.example?v.mp4",
        ] {
            assert_eq!(check_url(url, &policy, "k"), Ok(()), "{url}");
        }
    }

    #[test]
    fn s3_urls_are_taken_for_videos_only() {
        let policy = AddressPolicy::default();
        for url in ["s3://masters/tape-1/a.mp4", "S3://masters/a%20b.mp4"] {
            assert_eq!(check_video_url(url, &policy), Ok(()), "{url}");
        }
        for url in [
            "s3://masters/",
            "s3://masters",
            "s3://masters/a.mp4?versionId=1",
            "s3:///a.mp4",
        ] {
            let why = check_video_url(url, &policy).expect_err(url);
            assert!(why.contains("bucket"), "{url}: {why}");
        }
        let f = fields(
            r#"{"systemName":"s","webhook":"s3://hooks/a","videos":[{"url":"s3://masters/a.mp4","id":"a","fileName":"a","metadata":{}}]}"#,
        );
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].0, "webhook");
    }

    #[test]
    fn numbers_that_would_be_stored_changed_are_refused_naming_their_path() {
        let body = r#"{"systemName":"s","videos":[{"url":"https://a.example/v.mp4","id":"a","fileName":"a",
            "metadata":{"ok":[1.5, 0.1, 1e2, -0, 18446744073709551615, 1.0E+3, 123456789012345.6],
                        "big":1180591620717411303424, "deep":{"x":[1, 0.30000000000000001, 1e-400]}}}]}"#;
        let f = fields(body);
        let names: Vec<&str> = f.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "videos[0].metadata.big",
                "videos[0].metadata.deep.x[1]",
                "videos[0].metadata.deep.x[2]"
            ]
        );
        assert!(f[0].1.contains("1180591620717411303424"), "{}", f[0].1);
        assert!(f[0].1.contains("1.1805916207174113e+21"), "{}", f[0].1);
        let fine = r#"{"systemName":"s","videos":[{"url":"https://a.example/v.mp4","id":"a","fileName":"a",
            "metadata":{"a\"b":[1.25, {"k":2.5e-3}], "big":18446744073709551615, "neg":-9223372036854775808}}]}"#;
        assert!(batch(fine.as_bytes(), 3, &Targets::default()).is_ok());
    }

    #[test]
    fn checksums_are_checked_for_algorithm_and_length_all_at_once() {
        let sha = "A".repeat(64);
        let body = format!(
            r#"{{"systemName":"s","videos":[
            {{"url":"https://a.example/v.mp4","id":"a","fileName":"a","metadata":{{}},"checksum":{{"sha256":"{sha}","md5":"{}"}}}},
            {{"url":"https://a.example/v.mp4","id":"b","fileName":"b","metadata":{{}},"checksum":{{"sha1":"00","md5":"xyz"}}}},
            {{"url":"https://a.example/v.mp4","id":"c","fileName":"c","metadata":{{}},"checksum":{{}}}},
            {{"url":"https://a.example/v.mp4","id":"d","fileName":"d","metadata":{{}},"checksum":"abc"}}]}}"#,
            "0".repeat(32)
        );
        let f: HashMap<String, String> = match batch(body.as_bytes(), 10, &Targets::default()) {
            Err(ApiError::Invalid(f)) => f.into_iter().collect(),
            other => panic!("expected a validation error, got {other:?}"),
        };
        assert_eq!(
            f["videos[1].checksum.sha1"],
            "is not a checksum this service checks: give sha256, md5 or both"
        );
        assert_eq!(f["videos[1].checksum.md5"], "must be 32 hexadecimal digits");
        assert_eq!(f["videos[2].checksum"], "must name sha256, md5 or both");
        assert!(f["videos[3].checksum"].starts_with("must be an object"));
        assert!(!f.contains_key("videos[0].checksum.sha256"));
        let ok = format!(
            r#"{{"systemName":"s","videos":[{{"url":"https://a.example/v.mp4","id":"a","fileName":"a","metadata":{{}},"checksum":{{"sha256":"{sha}"}}}}]}}"#
        );
        let batch = batch(ok.as_bytes(), 10, &Targets::default()).unwrap();
        assert_eq!(
            batch.videos[0].checksum.sha256,
            Some("a".repeat(64)),
            "lower case"
        );
    }
}
