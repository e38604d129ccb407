//! Reading a manifest, streamed row by row so that a million rows need little memory: CSV
//! (header `url,id,fileName` plus `metadata.<key>` columns or one `metadata` JSON column)
//! or JSON Lines (one video object per line, as in the API's batch). A UTF-8 byte order
//! mark is left out. Fixity values come from `sha256`/`md5` columns (CSV) or fields (JSON
//! Lines, also as a `checksum` object). Here rows are read; `check` says whether the API
//! would take them.

use std::cell::RefCell;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::rc::Rc;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::check::Problem;
use crate::quoting::{self, Quoting, StrayKind, Watched};

/// One video of the manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Line of the manifest it starts on (1-based).
    pub line: u64,
    pub url: String,
    pub id: String,
    pub file_name: String,
    pub metadata: Map<String, Value>,
    /// Fixity values, as written in the manifest (checked by `check`).
    pub checksum: Checksum,
}

/// A row's fixity values; empty cells and missing fields are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Checksum {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
}

impl Checksum {
    /// Whether neither value is given.
    pub fn is_empty(&self) -> bool {
        self.sha256.is_none() && self.md5.is_none()
    }
}

/// A row as a video of the API's batch, borrowed.
#[derive(Serialize)]
struct Video<'a> {
    url: &'a str,
    id: &'a str,
    #[serde(rename = "fileName")]
    file_name: &'a str,
    metadata: &'a Map<String, Value>,
    #[serde(skip_serializing_if = "Checksum::is_empty")]
    checksum: &'a Checksum,
}

impl Row {
    fn as_video(&self) -> Video<'_> {
        Video {
            url: &self.url,
            id: &self.id,
            file_name: &self.file_name,
            metadata: &self.metadata,
            checksum: &self.checksum,
        }
    }

    /// The row as a video of an import batch.
    pub fn to_video(&self) -> Value {
        serde_json::to_value(self.as_video()).expect("a row serializes")
    }

    /// Bytes of the row as a video in a batch's JSON body.
    pub fn json_len(&self) -> usize {
        struct Count(usize);
        impl std::io::Write for Count {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0 += buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut count = Count(0);
        serde_json::to_writer(&mut count, &self.as_video()).expect("a row serializes");
        count.0
    }
}

/// A row that cannot be read, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRow {
    pub line: u64,
    pub problems: Vec<Problem>,
    /// Nothing after this row can be read (a quote that is never closed).
    pub ends_reading: bool,
}

impl BadRow {
    fn new(line: u64, problem: Problem) -> Self {
        Self {
            line,
            problems: vec![problem],
            ends_reading: false,
        }
    }
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

/// The rows of the manifest at `path`, in order.
pub fn rows(
    path: &Path,
    format: Format,
) -> anyhow::Result<Box<dyn Iterator<Item = Result<Row, BadRow>>>> {
    let file = File::open(path)
        .map_err(|e| anyhow::anyhow!("cannot open the manifest {}: {e}", path.display()))?;
    let input = quoting::without_bom(file)
        .map_err(|e| anyhow::anyhow!("cannot read the manifest {}: {e}", path.display()))?;
    Ok(match format {
        Format::Csv => Box::new(csv_rows(input)?),
        Format::Jsonl => Box::new(jsonl_rows(input)),
    })
}

/// What a quote out of place is told.
fn stray_message(column: u64, what: StrayKind) -> String {
    let what = match what {
        StrayKind::QuoteInside => "has a quote inside a value that does not start with one",
        StrayKind::AfterClosingQuote => "has text after its closing quote",
    };
    format!(
        "(column {column}) {what}; quote the whole value and double each quote inside it, \
         e.g. \"bad\"\"quote\""
    )
}

/// CSV rows; `input` has no BOM.
fn csv_rows(
    input: impl Read + 'static,
) -> anyhow::Result<impl Iterator<Item = Result<Row, BadRow>>> {
    let quoting = Rc::new(RefCell::new(Quoting::default()));
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(Watched::new(input, quoting.clone()));
    let headers = reader
        .headers()
        .map_err(|e| anyhow::anyhow!("the CSV header cannot be read: {e}"))?
        .clone();
    let header_end = reader.position().byte();
    if let Some(stray) = quoting.borrow_mut().strays_before(header_end).first() {
        anyhow::bail!(
            "line {}: the CSV header {}",
            stray.line,
            stray_message(stray.column, stray.what)
        );
    }
    if let Some(opened) = quoting.borrow().unterminated() {
        anyhow::bail!(
            "line {}: the CSV header has a quote (column {}) that is never closed; close it",
            opened.line,
            opened.column
        );
    }
    let names: Vec<String> = headers.iter().map(|h| h.trim().to_string()).collect();
    let column = |name: &str| names.iter().position(|h| h == name);
    let (Some(url), Some(id), Some(file_name)) = (column("url"), column("id"), column("fileName"))
    else {
        anyhow::bail!(
            "the CSV header must name the columns url, id and fileName (it has: {})",
            names.join(",")
        );
    };
    let metadata_json = column("metadata");
    let (sha256, md5) = (column("sha256"), column("md5"));
    let metadata_columns: Vec<(usize, String)> = names
        .iter()
        .enumerate()
        .filter_map(|(i, h)| Some((i, h.strip_prefix("metadata.")?.to_string())))
        .collect();
    let width = names.len();
    let field_name = move |i: usize| {
        names
            .get(i)
            .filter(|n| !n.is_empty())
            .cloned()
            .unwrap_or_else(|| format!("field {}", i + 1))
    };
    let mut record = csv::StringRecord::new();
    let mut done = false;
    Ok(std::iter::from_fn(move || {
        if done {
            return None;
        }
        let read = reader.read_record(&mut record);
        let end = reader.position().byte();
        let mut quoting = quoting.borrow_mut();
        let (start, mut line) = match &read {
            Ok(false) => return None,
            Ok(true) => {
                let p = record.position().expect("a record read has a position");
                (p.byte(), p.line())
            }
            Err(e) => e.position().map_or((end, 0), |p| (p.byte(), p.line())),
        };
        if let Some(found) = quoting.line_of_record_at(start) {
            line = found;
        }
        let within = |offset: u64| start <= offset && offset < end;
        if let Some(opened) = quoting.unterminated().filter(|o| within(o.offset)) {
            done = true;
            return Some(Err(BadRow {
                line: opened.line,
                problems: vec![Problem::row(format!(
                    "has a quote (column {}) that is never closed: every line after it would be \
                     read as part of one value, so nothing after it can be read; close the quote, \
                     or double it (\"\") if it is part of the value",
                    opened.column
                ))],
                ends_reading: true,
            }));
        }
        let strays = quoting.strays_before(end);
        drop(quoting);
        if let Err(e) = read {
            let problem = match e.kind() {
                csv::ErrorKind::Utf8 { err, .. } => Problem::of(
                    field_name(err.field()),
                    "is not valid UTF-8; save the manifest as UTF-8",
                ),
                csv::ErrorKind::Io(_) => {
                    done = true;
                    Problem::row(format!("cannot be read: {e}"))
                }
                _ => Problem::row(format!("is not valid CSV: {e}")),
            };
            return Some(Err(BadRow::new(line, problem)));
        }
        if !strays.is_empty() {
            return Some(Err(BadRow {
                line,
                problems: strays
                    .iter()
                    .map(|s| Problem::of(field_name(s.field), stray_message(s.column, s.what)))
                    .collect(),
                ends_reading: false,
            }));
        }
        if record.len() != width {
            return Some(Err(BadRow::new(
                line,
                Problem::row(format!(
                    "has {} fields; the header has {width}",
                    record.len()
                )),
            )));
        }
        let field = |i: usize| record.get(i).unwrap_or_default().to_string();
        let mut metadata = match metadata_json.map(field).filter(|m| !m.trim().is_empty()) {
            Some(text) => match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(map)) => map,
                _ => {
                    return Some(Err(BadRow::new(
                        line,
                        Problem::of("metadata", "is not a JSON object"),
                    )))
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
        let cell = |i: Option<usize>| {
            i.map(|i| field(i).trim().to_string())
                .filter(|v| !v.is_empty())
        };
        Some(Ok(Row {
            line,
            url: field(url),
            id: field(id),
            file_name: field(file_name),
            metadata,
            checksum: Checksum {
                sha256: cell(sha256),
                md5: cell(md5),
            },
        }))
    }))
}

/// The JSON type of `value`, for messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// JSON Lines rows; `input` has no BOM.
fn jsonl_rows(input: impl Read + 'static) -> impl Iterator<Item = Result<Row, BadRow>> {
    let mut input = BufReader::new(input);
    let mut line = 0u64;
    let mut bytes = Vec::new();
    std::iter::from_fn(move || loop {
        bytes.clear();
        line += 1;
        match input.read_until(b'\n', &mut bytes) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) => {
                return Some(Err(BadRow::new(
                    line,
                    Problem::row(format!("cannot be read: {e}")),
                )))
            }
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        return Some(json_row(line, &bytes).map_err(|problems| BadRow {
            line,
            problems,
            ends_reading: false,
        }));
    })
}

/// One line of JSON Lines as a row.
fn json_row(line: u64, bytes: &[u8]) -> Result<Row, Vec<Problem>> {
    let mut object = match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(object)) => object,
        Ok(other) => {
            return Err(vec![Problem::row(format!(
                "is {}, not a JSON object",
                kind(&other)
            ))])
        }
        Err(e) => {
            return Err(vec![Problem::row(format!(
                "is not a JSON object: {e} (each line holds one {{\"url\", \"id\", \"fileName\", \"metadata\"}} object)"
            ))])
        }
    };
    let mut problems = Vec::new();
    let mut text_of = |key: &str| match object.remove(key) {
        Some(Value::String(s)) => s,
        None => String::new(),
        Some(other) => {
            problems.push(Problem::of(
                key,
                format!("must be a string, not {}", kind(&other)),
            ));
            String::new()
        }
    };
    let (url, id, file_name) = (text_of("url"), text_of("id"), text_of("fileName"));
    let metadata = match object.remove("metadata") {
        Some(Value::Object(map)) => map,
        None => Map::new(),
        Some(other) => {
            problems.push(Problem::of(
                "metadata",
                format!("is {}, not a JSON object", kind(&other)),
            ));
            Map::new()
        }
    };
    // `sha256`/`md5` beside the other fields, or in a `checksum` object as the API takes.
    let mut checksum_fields = match object.remove("checksum") {
        Some(Value::Object(map)) => map,
        None => Map::new(),
        Some(other) => {
            problems.push(Problem::of(
                "checksum",
                format!("is {}, not a JSON object", kind(&other)),
            ));
            Map::new()
        }
    };
    let mut hex_of = |key: &str| {
        let value = object.remove(key).or_else(|| checksum_fields.remove(key));
        match value {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
            None | Some(Value::Null) | Some(Value::String(_)) => None,
            Some(other) => {
                problems.push(Problem::of(
                    key,
                    format!("must be a string of hex digits, not {}", kind(&other)),
                ));
                None
            }
        }
    };
    let checksum = Checksum {
        sha256: hex_of("sha256"),
        md5: hex_of("md5"),
    };
    for unknown in checksum_fields.keys() {
        problems.push(Problem::of(
            format!("checksum.{unknown}"),
            "is not a checksum the service checks: give sha256, md5 or both",
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Row {
        line,
        url,
        id,
        file_name,
        metadata,
        checksum,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(text: &'static str) -> Vec<Result<Row, BadRow>> {
        csv_rows(text.as_bytes()).unwrap().collect()
    }

    /// Each row's line, or its line and problems.
    fn lines(rows: &[Result<Row, BadRow>]) -> Vec<Result<u64, (u64, Vec<String>)>> {
        rows.iter()
            .map(|r| match r {
                Ok(row) => Ok(row.line),
                Err(bad) => Err((
                    bad.line,
                    bad.problems.iter().map(Problem::to_string).collect(),
                )),
            })
            .collect()
    }

    #[test]
    fn checksums_come_from_columns_fields_or_a_checksum_object() {
        let rows = csv("url,id,fileName,sha256,md5\n\
             https://a.example/1.mp4,one,f1,ABC,\n\
             https://a.example/2.mp4,two,f2,,def\n");
        let one = rows[0].as_ref().unwrap();
        assert_eq!(one.checksum.sha256.as_deref(), Some("ABC"));
        assert_eq!(one.checksum.md5, None, "an empty cell gives none");
        assert_eq!(
            one.to_video()["checksum"],
            serde_json::json!({"sha256": "ABC"})
        );
        let two = rows[1].as_ref().unwrap();
        assert_eq!(two.checksum.md5.as_deref(), Some("def"));
        let row = json_row(
            1,
            br#"{"url":"u","id":"i","fileName":"f","sha256":"aa","checksum":{"md5":"bb"}}"#,
        )
        .unwrap();
        assert_eq!(row.checksum.sha256.as_deref(), Some("aa"));
        assert_eq!(row.checksum.md5.as_deref(), Some("bb"));
        let plain = json_row(1, br#"{"url":"u","id":"i","fileName":"f"}"#).unwrap();
        assert!(
            plain.to_video().get("checksum").is_none(),
            "no checksum: not sent"
        );
        let bad = json_row(
            1,
            br#"{"url":"u","id":"i","fileName":"f","checksum":{"sha1":"aa"}}"#,
        )
        .unwrap_err();
        assert_eq!(
            bad[0].to_string(),
            "checksum.sha1 is not a checksum the service checks: give sha256, md5 or both"
        );
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
    fn crlf_blank_lines_and_values_over_several_lines_keep_the_line_numbers() {
        let rows = csv("url,id,fileName,metadata.title\r\n\
             https://a.example/1.mp4,one,f,A\r\n\
             \r\n\
             https://a.example/2.mp4,two,f,\"two\r\nlines\"\r\n\
             https://a.example/3.mp4,three,f\r\n\
             https://a.example/4.mp4,four,f,D\r\n");
        assert_eq!(
            lines(&rows),
            [
                Ok(2),
                Ok(4),
                Err((6, vec!["has 3 fields; the header has 4".to_string()])),
                Ok(7)
            ]
        );
        assert_eq!(rows[1].as_ref().unwrap().metadata["title"], "two\r\nlines");
        assert_eq!(rows[3].as_ref().unwrap().file_name, "f");
        let lf = csv(
            "url,id,fileName\n\nhttps://a.example/1.mp4,one,f\n\n\nhttps://a.example/2.mp4,two,f",
        );
        assert_eq!(lines(&lf), [Ok(3), Ok(6)]);
    }

    #[test]
    fn an_unterminated_quote_ends_reading_where_it_opened() {
        let rows = csv("url,id,fileName\n\
             https://a.example/1.mp4,one,f\n\
             https://a.example/2.mp4,two,\"f\n\
             https://a.example/3.mp4,three,f\n\
             https://a.example/4.mp4,four,f\n");
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows[0].as_ref().unwrap().line, 2);
        let bad = rows[1].as_ref().unwrap_err();
        assert_eq!(bad.line, 3);
        assert!(bad.ends_reading);
        assert!(
            bad.problems[0]
                .to_string()
                .starts_with("has a quote (column 29) that is never closed"),
            "{:?}",
            bad.problems
        );
        // In the header: nothing can be read at all.
        let error = csv_rows("url,\"id,fileName\nhttps://a.example/1.mp4,one,f\n".as_bytes())
            .err()
            .unwrap();
        assert!(error.to_string().contains("never closed"), "{error}");
    }

    #[test]
    fn stray_quotes_are_refused_naming_line_column_and_field() {
        let rows = csv("url,id,fileName\n\
             https://a.example/1.mp4,\"bad\"quote,f\n\
             https://a.example/2.mp4,two,b\"ad\n\
             https://a.example/3.mp4,\"fine \"\"quoted\"\"\",f\n");
        assert_eq!(
            lines(&rows)[..2],
            [
                Err((
                    2,
                    vec![
                        "id (column 30) has text after its closing quote; quote the whole value \
                          and double each quote inside it, e.g. \"bad\"\"quote\""
                            .to_string()
                    ]
                )),
                Err((
                    3,
                    vec![
                        "fileName (column 30) has a quote inside a value that does not start \
                          with one; quote the whole value and double each quote inside it, e.g. \
                          \"bad\"\"quote\""
                            .to_string()
                    ]
                )),
            ]
        );
        assert_eq!(rows[2].as_ref().unwrap().id, "fine \"quoted\"");
    }

    #[test]
    fn a_metadata_json_column_is_read() {
        let rows = csv("url,id,fileName,metadata\nhttps://a.example/1.mp4,one,f,\"{\"\"title\"\":\"\"T\"\"}\"\n");
        assert_eq!(rows[0].as_ref().unwrap().metadata["title"], "T");
        let rows = csv("url,id,fileName,metadata\nhttps://a.example/1.mp4,one,f,[1]\n");
        assert_eq!(
            lines(&rows),
            [Err((2, vec!["metadata is not a JSON object".to_string()]))]
        );
    }

    #[test]
    fn rows_with_the_wrong_shape_are_named_by_line() {
        let rows = csv("url,id,fileName\n\
             https://a.example/1.mp4,one,f\n\
             https://a.example/5.mp4,five\n");
        assert_eq!(
            lines(&rows),
            [
                Ok(2),
                Err((3, vec!["has 2 fields; the header has 3".to_string()]))
            ]
        );
        assert!(
            csv_rows("id,url\n".as_bytes()).is_err(),
            "fileName is missing"
        );
        let rows: Vec<_> = csv_rows(&b"url,id,fileName\nhttps://a.example/1.mp4,o\xffne,f\n"[..])
            .unwrap()
            .collect();
        assert_eq!(
            lines(&rows),
            [Err((
                2,
                vec!["id is not valid UTF-8; save the manifest as UTF-8".to_string()]
            ))]
        );
    }

    #[test]
    fn json_lines_are_read_with_their_line_and_problems_by_field() {
        let text = "{\"url\":\"https://a.example/1.mp4\",\"id\":\"a\",\"fileName\":\"f\",\"metadata\":{\"t\":1}}\r\n\
                    \r\n\
                    not json\r\n\
                    {\"url\":\"https://a.example/2.mp4\",\"id\":\"b\",\"fileName\":\"g\"}\r\n\
                    {\"url\":\"https://a.example/3.mp4\",\"id\":3,\"fileName\":\"g\",\"metadata\":[]}\n\
                    [1]\n";
        let rows: Vec<_> = jsonl_rows(text.as_bytes()).collect();
        assert_eq!(rows.len(), 5);
        assert_eq!(rows[0].as_ref().unwrap().metadata["t"], 1);
        assert_eq!(rows[1].as_ref().unwrap_err().line, 3);
        assert_eq!(rows[2].as_ref().unwrap().line, 4);
        assert_eq!(rows[2].as_ref().unwrap().file_name, "g");
        assert_eq!(
            lines(&rows)[3..],
            [
                Err((
                    5,
                    vec![
                        "id must be a string, not a number".to_string(),
                        "metadata is an array, not a JSON object".to_string()
                    ]
                )),
                Err((6, vec!["is an array, not a JSON object".to_string()]))
            ]
        );
    }

    #[test]
    fn a_bom_on_line_1_is_left_out() {
        let dir = std::env::temp_dir().join(format!("video-import-bom-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let jsonl = dir.join("bom.jsonl");
        std::fs::write(
            &jsonl,
            "\u{feff}{\"url\":\"https://a.example/1.mp4\",\"id\":\"a\",\"fileName\":\"f\"}\n",
        )
        .unwrap();
        let read: Vec<_> = rows(&jsonl, Format::Jsonl).unwrap().collect();
        assert_eq!(read[0].as_ref().unwrap().id, "a", "{read:?}");
        let csv = dir.join("bom.csv");
        std::fs::write(
            &csv,
            "\u{feff}\"url\",id,fileName\r\nhttps://a.example/1.mp4,a,f\r\n",
        )
        .unwrap();
        let read: Vec<_> = rows(&csv, Format::Csv).unwrap().collect();
        assert_eq!(lines(&read), [Ok(2)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn json_len_is_the_length_of_the_video_in_a_batch() {
        let row = Row {
            line: 2,
            url: "https://a.example/\"1\".mp4".into(),
            id: "é".into(),
            file_name: "f".into(),
            metadata: serde_json::json!({"t": [1, "x"]})
                .as_object()
                .unwrap()
                .clone(),
            checksum: Checksum {
                sha256: Some("ab".into()),
                md5: None,
            },
        };
        assert_eq!(
            row.json_len(),
            serde_json::to_vec(&row.to_video()).unwrap().len()
        );
    }
}
