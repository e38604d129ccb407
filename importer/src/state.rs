//! The state file: one JSON line per accepted batch (its position, its job and the manifest
//! lines of its videos), appended as soon as the API accepts the batch. A re-run of the same
//! command skips the batches it lists; a batch accepted but not yet written is found again by
//! its Idempotency-Key, so no batch ever becomes two jobs.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One accepted batch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Accepted {
    /// Position of the batch in the manifest (0-based).
    pub batch: u64,
    /// The job the API created for it.
    pub job: String,
    /// The manifest line of each of its videos, in batch order.
    pub lines: Vec<u64>,
}

/// The header line: which manifest (by content hash) the file belongs to.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    manifest_sha256: String,
    batch_size: usize,
}

/// The state of one manifest's import.
pub struct State {
    path: PathBuf,
    file: File,
    /// Accepted batches by position.
    pub accepted: BTreeMap<u64, Accepted>,
}

impl State {
    /// Opens (or creates) the state file at `path` for the manifest with content hash
    /// `manifest_sha256`, cut into batches of `batch_size`.
    pub fn open(path: &Path, manifest_sha256: &str, batch_size: usize) -> anyhow::Result<Self> {
        let mut accepted = BTreeMap::new();
        let mut exists = path.exists();
        if exists {
            let reader = BufReader::new(File::open(path)?);
            let mut lines = reader.lines();
            let header: Header = match lines.next() {
                Some(line) => serde_json::from_str(&line?)?,
                None => anyhow::bail!("the state file {} is empty; remove it", path.display()),
            };
            for line in lines {
                let line = line?;
                // A line cut short by a crash is simply not accepted yet.
                if let Ok(batch) = serde_json::from_str::<Accepted>(&line) {
                    accepted.insert(batch.batch, batch);
                }
            }
            if header.manifest_sha256 != manifest_sha256 || header.batch_size != batch_size {
                if !accepted.is_empty() {
                    anyhow::bail!(
                        "the state file {} belongs to another manifest or batch size; \
                         pass --state with a new file, or remove it to start over",
                        path.display()
                    );
                }
                // No batch was accepted: nothing to resume, the file starts over.
                std::fs::remove_file(path)?;
                exists = false;
            }
        }
        let mut file = OpenOptions::new().create(true).append(true).open(path)?;
        if !exists {
            let header = Header {
                manifest_sha256: manifest_sha256.to_string(),
                batch_size,
            };
            writeln!(file, "{}", serde_json::to_string(&header)?)?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            accepted,
        })
    }

    /// Records an accepted batch, durably.
    pub fn record(&mut self, batch: Accepted) -> anyhow::Result<()> {
        writeln!(self.file, "{}", serde_json::to_string(&batch)?)?;
        self.file.sync_data()?;
        self.accepted.insert(batch.batch, batch);
        Ok(())
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(batch: u64) -> Accepted {
        Accepted {
            batch,
            job: format!("job{batch}"),
            lines: vec![batch + 2],
        }
    }

    #[test]
    fn a_run_resumes_from_its_state_file() {
        let dir = std::env::temp_dir().join(format!("video-import-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.video-import-state");
        let mut state = State::open(&path, "abc", 2).unwrap();
        state.record(accepted(0)).unwrap();
        drop(state);
        let state = State::open(&path, "abc", 2).unwrap();
        assert_eq!(
            state.accepted.values().cloned().collect::<Vec<_>>(),
            [accepted(0)]
        );
        let error = State::open(&path, "abc", 3).err().unwrap();
        assert!(
            error.to_string().contains("--state with a new file"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_state_file_without_accepted_batches_starts_over_for_other_options() {
        let dir =
            std::env::temp_dir().join(format!("video-import-state-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.video-import-state");
        drop(State::open(&path, "abc", 1000).unwrap());
        // Every batch of 1000 was refused; the run is tried again with batches of 500.
        let mut state = State::open(&path, "abc", 500).unwrap();
        assert!(state.accepted.is_empty());
        state.record(accepted(0)).unwrap();
        drop(state);
        assert_eq!(State::open(&path, "abc", 500).unwrap().accepted.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
