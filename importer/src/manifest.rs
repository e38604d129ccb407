//! Reading a manifest, streamed row by row so that a million rows need little memory: CSV
//! (header `url,id,fileName` plus `metadata.<key>` columns or one `metadata` JSON column)
//! or JSON Lines (one video object per line, as in the API's batch). Every row is checked
//! here, and a bad one is named by its line.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde_json::{Map, Value};

/// One video of the manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Line of the manifest it starts on (1-based).
    pub line: u64,
    pub url: String,
    pub id: String,
    pub file_name: String,
    pub metadata: Map<String, Value>,
}

impl Row {
    /// The row as a video of an import batch.
    pub fn to_video(&self) -> Value {
        serde_json::json!({
            "url": self.url, "id": self.id, "fileName": self.file_name,
            "metadata": Value::Object(self.metadata.clone()),
        })
    }
}

/// A row that cannot be imported, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRow {
    pub line: u64,
    pub problem: String,
}

/// How the manifest is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    Jsonl,
}

impl Format {
    /// The format a file name suggests.
    pub fn guess(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(Format::Csv),
            "jsonl" | "ndjson" | "json" => Some(Format::Jsonl),
            _ => None,
        }
    }
}

/// The rows of the manifest at `path`, in order, each checked.
pub fn rows(
    path: &Path,
    format: Format,
) -> anyhow::Result<Box<dyn Iterator<Item = Result<Row, BadRow>>>> {
    let file = File::open(path)
        .map_err(|e| anyhow::anyhow!("cannot open the manifest {}: {e}", path.display()))?;
    Ok(match format {
        Format::Csv => Box::new(csv_rows(file)?),
        Format::Jsonl => Box::new(jsonl_rows(file)),
    })
}

fn csv_rows(
    input: impl Read + 'static,
) -> anyhow::Result<impl Iterator<Item = Result<Row, BadRow>>> {
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(input);
    let headers = reader.headers()?.clone();
    let column = |name: &str| headers.iter().position(|h| h.trim() == name);
    let (Some(url), Some(id), Some(file_name)) = (column("url"), column("id"), column("fileName"))
    else {
        anyhow::bail!(
            "the CSV header must name the columns url, id and fileName (it has: {})",
            headers.iter().collect::<Vec<_>>().join(",")
        );
    };
    let metadata_json = column("metadata");
    let metadata_columns: Vec<(usize, String)> = headers
        .iter()
        .enumerate()
        .filter_map(|(i, h)| Some((i, h.trim().strip_prefix("metadata.")?.to_string())))
        .collect();
    let width = headers.len();
    Ok(reader.into_records().map(move |record| {
        let record = record.map_err(|e| BadRow {
            line: e.position().map_or(0, |p| p.line()),
            problem: format!("is not valid CSV: {e}"),
        })?;
        let line = record.position().map_or(0, |p| p.line());
        if record.len() != width {
            return Err(BadRow {
                line,
                problem: format!("has {} fields; the header has {width}", record.len()),
            });
        }
        let field = |i: usize| record.get(i).unwrap_or_default().to_string();
        let mut metadata = match metadata_json.map(field).filter(|m| !m.trim().is_empty()) {
            Some(text) => match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(map)) => map,
                _ => {
                    return Err(BadRow {
                        line,
                        problem: "metadata is not a JSON object".into(),
                    })
                }
            },
            None => Map::new(),
        };
        for (i, key) in &metadata_columns {
            let value = field(*i);
            if !value.is_empty() {
                metadata.insert(key.clone(), Value::String(value));
            }
        }
        check(Row {
            line,
            url: field(url),
            id: field(id),
            file_name: field(file_name),
            metadata,
        })
    }))
}

fn jsonl_rows(input: impl Read + 'static) -> impl Iterator<Item = Result<Row, BadRow>> {
    BufReader::new(input)
        .lines()
        .enumerate()
        .filter_map(|(n, text)| {
            let line = n as u64 + 1;
            let text = match text {
                Ok(text) => text,
                Err(e) => {
                    return Some(Err(BadRow {
                        line,
                        problem: format!("cannot be read: {e}"),
                    }))
                }
            };
            if text.trim().is_empty() {
                return None;
            }
            let bad = |problem: &str| {
                Some(Err(BadRow {
                    line,
                    problem: problem.to_string(),
                }))
            };
            let Ok(Value::Object(mut object)) = serde_json::from_str::<Value>(&text) else {
                return bad("is not a JSON object");
            };
            let mut text_of = |key: &str| match object.remove(key) {
                Some(Value::String(s)) => Some(s),
                None => Some(String::new()),
                _ => None,
            };
            let (Some(url), Some(id), Some(file_name)) =
                (text_of("url"), text_of("id"), text_of("fileName"))
            else {
                return bad("url, id and fileName must be strings");
            };
            let metadata = match object.remove("metadata") {
                Some(Value::Object(map)) => map,
                None => Map::new(),
                Some(_) => return bad("metadata is not a JSON object"),
            };
            Some(check(Row {
                line,
                url,
                id,
                file_name,
                metadata,
            }))
        })
}

/// The checks the API would make on one video, so that bad rows are named before anything
/// is sent.
fn check(row: Row) -> Result<Row, BadRow> {
    let bad = |problem: String| {
        Err(BadRow {
            line: row.line,
            problem,
        })
    };
    if row.url.trim().is_empty() {
        return bad("url is empty".into());
    }
    match url::Url::parse(&row.url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
        _ => return bad(format!("url {:?} is not an http or https URL", row.url)),
    }
    if row.id.trim().is_empty() {
        return bad("id is empty".into());
    }
    if row.file_name.trim().is_empty() {
        return bad("fileName is empty".into());
    }
    if [&row.url, &row.id, &row.file_name]
        .iter()
        .any(|s| s.contains('\0'))
    {
        return bad("contains a NUL character".into());
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(text: &'static str) -> Vec<Result<Row, BadRow>> {
        csv_rows(text.as_bytes()).unwrap().collect()
    }

    #[test]
    fn csv_rows_carry_their_line_and_metadata() {
        let rows = csv("url,id,fileName,metadata.title,metadata.source\n\
             https://a.example/1.mp4,one,f1,First,\n\
             https://a.example/2.mp4,two,f2,\"Second, with comma\",Archive\n");
        let first = rows[0].as_ref().unwrap();
        assert_eq!(first.line, 2);
        assert_eq!(
            first.metadata,
            serde_json::json!({"title": "First"})
                .as_object()
                .unwrap()
                .clone()
        );
        let second = rows[1].as_ref().unwrap();
        assert_eq!(second.line, 3);
        assert_eq!(second.metadata["title"], "Second, with comma");
        assert_eq!(second.metadata["source"], "Archive");
    }

    #[test]
    fn a_metadata_json_column_is_read() {
        let rows = csv("url,id,fileName,metadata\nhttps://a.example/1.mp4,one,f,\"{\"\"title\"\":\"\"T\"\"}\"\n");
        assert_eq!(rows[0].as_ref().unwrap().metadata["title"], "T");
        let rows = csv("url,id,fileName,metadata\nhttps://a.example/1.mp4,one,f,[1]\n");
        assert_eq!(
            rows[0].as_ref().unwrap_err().problem,
            "metadata is not a JSON object"
        );
    }

    #[test]
    fn bad_rows_are_named_by_line() {
        let rows = csv("url,id,fileName\n\
             https://a.example/1.mp4,one,f\n\
             ,two,f\n\
             ftp://a.example/3.mp4,three,f\n\
             https://a.example/4.mp4,,f\n\
             https://a.example/5.mp4,five\n");
        let bad: Vec<(u64, String)> = rows
            .iter()
            .filter_map(|r| r.as_ref().err())
            .map(|b| (b.line, b.problem.clone()))
            .collect();
        assert_eq!(bad.len(), 4, "{bad:?}");
        assert_eq!(bad[0], (3, "url is empty".into()));
        assert_eq!(bad[1].0, 4);
        assert_eq!(bad[2], (5, "id is empty".into()));
        assert_eq!(bad[3].0, 6);
        assert!(
            csv_rows("id,url\n".as_bytes()).is_err(),
            "fileName is missing"
        );
    }

    #[test]
    fn json_lines_are_read_and_checked() {
        let text = "{\"url\":\"https://a.example/1.mp4\",\"id\":\"a\",\"fileName\":\"f\",\"metadata\":{\"t\":1}}\n\
                    \n\
                    not json\n\
                    {\"url\":\"https://a.example/2.mp4\",\"id\":\"b\",\"fileName\":\"g\"}\n";
        let rows: Vec<_> = jsonl_rows(text.as_bytes()).collect();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].as_ref().unwrap().metadata["t"], 1);
        assert_eq!(rows[1].as_ref().unwrap_err().line, 3);
        assert_eq!(rows[2].as_ref().unwrap().line, 4);
    }
}
