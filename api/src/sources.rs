//! The door's look at the project's source rules: an `s3://` video URL needs a rule for its
//! bucket, and an http URL whose https form a rule covers cannot get that rule's credentials
//! (they never go over plain http unless the rule says so). Both fail at once with `400`
//! naming the field, rather than later in the worker. Rules change without the API knowing:
//! the worker looks again before every download.

use deadpool_postgres::GenericClient;
use video_import_shared::sources::{coverage, no_rule_for_s3, Coverage, HasPrefix, Prefix};
use video_import_shared::store::sources;

use crate::error::ApiError;
use crate::validate::Video;

/// A rule as the door sees it: its id and prefix.
struct DoorRule {
    id: i64,
    prefix: Prefix,
}

impl HasPrefix for DoorRule {
    fn prefix(&self) -> &Prefix {
        &self.prefix
    }
}

/// Checks `videos` of project `project_id` against its rules; every problem at once, as
/// `videos[i].url`. Reads the rules only when a URL could need one (`s3://` or `http://`).
pub async fn check(
    client: &impl GenericClient,
    project_id: i64,
    videos: &[Video],
) -> Result<(), ApiError> {
    let concerned: Vec<(usize, url::Url)> = videos
        .iter()
        .enumerate()
        .filter_map(|(i, v)| Some((i, url::Url::parse(&v.url).ok()?)))
        .filter(|(_, url)| matches!(url.scheme(), "s3" | "http"))
        .collect();
    if concerned.is_empty() {
        return Ok(());
    }
    let rules: Vec<DoorRule> = sources::of_project(client, project_id)
        .await?
        .into_iter()
        .filter_map(|row| {
            Some(DoorRule {
                id: row.id,
                prefix: Prefix::parse(&row.prefix).ok()?,
            })
        })
        .collect();
    let mut problems = Vec::new();
    for (i, url) in concerned {
        let field = format!("videos[{i}].url");
        match (url.scheme(), coverage(&rules, &url)) {
            ("s3", Coverage::Rule(_)) | ("http", Coverage::Rule(_) | Coverage::None) => {}
            ("s3", _) => problems.push((
                field,
                no_rule_for_s3(
                    url.host_str().unwrap_or_default(),
                    url.path().trim_start_matches('/'),
                ),
            )),
            (_, Coverage::InClear(rule)) => problems.push((
                field,
                format!(
                    "source rule {} ({}) sends its credentials over https only, and this URL is \
                     plain http: give the https:// URL",
                    rule.id, rule.prefix
                ),
            )),
            _ => {}
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        problems.truncate(100);
        Err(ApiError::Invalid(problems))
    }
}
