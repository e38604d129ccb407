//! BagIt payload manifests (RFC 8493 §2.1.3) as fixity values for a URL list:
//! `manifest-sha256.txt` or `manifest-md5.txt`, one `<checksum> <path>` line per file. A
//! manifest path (without the bag's `data/`) names the row whose URL path ends with it; the
//! longest such path wins, so `a/x.mp4` and `b/x.mp4` stay apart.

use std::collections::HashMap;
use std::path::Path;

use crate::check::Problem;
use crate::manifest::Row;

/// Which checksum a manifest holds, from its file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Md5,
}

/// The checksums of every given manifest, indexed by file name.
#[derive(Debug, Default)]
pub struct Fixity {
    /// Last path segment → (path below `data/`, algorithm, checksum).
    by_name: HashMap<String, Vec<(String, Algorithm, String)>>,
}

impl Fixity {
    /// Reads the manifests at `paths` (each named `manifest-sha256.txt` or
    /// `manifest-md5.txt`, as BagIt names them).
    pub fn read(paths: &[std::path::PathBuf]) -> anyhow::Result<Self> {
        let mut fixity = Fixity::default();
        for path in paths {
            let algorithm = algorithm_of(path)?;
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim_end_matches('\r');
                if line.trim().is_empty() {
                    continue;
                }
                let Some((checksum, file)) = line.split_once(char::is_whitespace) else {
                    anyhow::bail!(
                        "{} line {}: expected `<checksum> <path>`",
                        path.display(),
                        n + 1
                    );
                };
                let file = decode(file.trim_start());
                let file = file.strip_prefix("data/").unwrap_or(&file).to_string();
                let name = file.rsplit('/').next().unwrap_or_default().to_string();
                fixity.by_name.entry(name).or_default().push((
                    file,
                    algorithm,
                    checksum.trim().to_string(),
                ));
            }
        }
        Ok(fixity)
    }

    /// Whether no manifest was given.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Fills `row`'s missing checksums from the manifests; a value that differs from one
    /// the row has already is a problem (two sources disagree on the file).
    pub fn apply(&self, row: &mut Row) -> Vec<Problem> {
        let path = url_path(&row.url);
        let name = path.rsplit('/').next().unwrap_or_default();
        let Some(candidates) = self.by_name.get(name) else {
            return Vec::new();
        };
        let matches = |file: &str| path == file || path.ends_with(&format!("/{file}"));
        let longest = candidates
            .iter()
            .filter(|(file, _, _)| matches(file))
            .map(|(file, _, _)| file.len())
            .max();
        let mut problems = Vec::new();
        for (file, algorithm, checksum) in candidates {
            if !matches(file) || Some(file.len()) != longest {
                continue;
            }
            let (field, slot) = match algorithm {
                Algorithm::Sha256 => ("sha256", &mut row.checksum.sha256),
                Algorithm::Md5 => ("md5", &mut row.checksum.md5),
            };
            match slot {
                Some(given) if !given.eq_ignore_ascii_case(checksum) => problems.push(Problem::of(
                    field,
                    format!("is {given} here but {checksum} for data/{file} in the BagIt manifest"),
                )),
                Some(_) => {}
                None => *slot = Some(checksum.clone()),
            }
        }
        problems
    }
}

fn algorithm_of(path: &Path) -> anyhow::Result<Algorithm> {
    match path.file_name().and_then(|n| n.to_str()) {
        Some("manifest-sha256.txt") => Ok(Algorithm::Sha256),
        Some("manifest-md5.txt") => Ok(Algorithm::Md5),
        _ => anyhow::bail!(
            "{}: a BagIt payload manifest is named manifest-sha256.txt or manifest-md5.txt",
            path.display()
        ),
    }
}

/// RFC 8493 §2.1.3 percent-encodes CR, LF and `%` in manifest paths.
fn decode(path: &str) -> String {
    path.replace("%0D", "\r")
        .replace("%0d", "\r")
        .replace("%0A", "\n")
        .replace("%0a", "\n")
        .replace("%25", "%")
}

/// The URL's path, percent-decoded ("" when it is no URL).
fn url_path(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .map(|u| {
            percent_encoding::percent_decode_str(u.path())
                .decode_utf8_lossy()
                .into_owned()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Checksum;

    fn row(url: &str) -> Row {
        Row {
            line: 2,
            url: url.into(),
            id: "i".into(),
            file_name: "f".into(),
            metadata: Default::default(),
            checksum: Checksum::default(),
        }
    }

    fn fixity(lines: &str) -> Fixity {
        // A folder per call: the tests run at once.
        static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("bagit-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("manifest-sha256.txt");
        std::fs::write(&path, lines).unwrap();
        let read = Fixity::read(&[path]).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        read
    }

    #[test]
    fn the_longest_manifest_path_the_url_ends_with_gives_the_checksum() {
        let f = fixity("aaa  data/a/x.mp4\nbbb  data/b/x.mp4\nccc data/tape 42.mp4\r\n");
        let mut a = row("https://h.example/masters/a/x.mp4");
        assert!(f.apply(&mut a).is_empty());
        assert_eq!(a.checksum.sha256.as_deref(), Some("aaa"));
        let mut b = row("https://h.example/b/x.mp4?sig=1");
        f.apply(&mut b);
        assert_eq!(b.checksum.sha256.as_deref(), Some("bbb"));
        let mut spaced = row("https://h.example/tape%2042.mp4");
        f.apply(&mut spaced);
        assert_eq!(
            spaced.checksum.sha256.as_deref(),
            Some("ccc"),
            "percent-decoded URL"
        );
        let mut other = row("https://h.example/c/x.mp4");
        f.apply(&mut other);
        assert_eq!(other.checksum.sha256, None, "no manifest path matches");
    }

    #[test]
    fn a_value_that_disagrees_with_the_row_is_a_problem() {
        let f = fixity("aaa  data/x.mp4\n");
        let mut r = row("https://h.example/x.mp4");
        r.checksum.sha256 = Some("bbb".into());
        let problems = f.apply(&mut r);
        assert_eq!(
            problems[0].to_string(),
            "sha256 is bbb here but aaa for data/x.mp4 in the BagIt manifest"
        );
    }
}
