//! Asset storage on the local filesystem. A download is written to a temporary file and
//! renamed into place only when complete, so no entry ever points at half a file.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::fs;
use tokio::io::{AsyncWriteExt, BufWriter};

/// The storage root (`storage.root`).
#[derive(Debug, Clone)]
pub struct Storage {
    root: PathBuf,
}

impl Storage {
    /// Creates the root and its temporary folder if needed.
    pub async fn open(root: &str) -> anyhow::Result<Self> {
        let root = PathBuf::from(root);
        fs::create_dir_all(root.join(".tmp"))
            .await
            .map_err(|e| anyhow::anyhow!("cannot create storage.root {}: {e}", root.display()))?;
        Ok(Self { root })
    }

    /// A new temporary file to stream a download into.
    pub async fn create_temp(&self) -> std::io::Result<TempAsset> {
        let path = self
            .root
            .join(".tmp")
            .join(format!("{}.part", video_import_shared::ids::random_id(16)));
        let file = fs::File::create(&path).await?;
        Ok(TempAsset {
            guard: TempGuard(Some(path)),
            file: BufWriter::with_capacity(256 * 1024, file),
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Makes a finished download visible at `key` (atomically, by a hard link); the
    /// temporary file goes when the `FinishedAsset` is dropped, so a failed commit can
    /// remove the key and publish again.
    pub async fn publish(&self, asset: &FinishedAsset, key: &str) -> std::io::Result<()> {
        let target = self.path_of(key);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).await?;
        }
        let source = asset.guard.0.as_ref().expect("temp file present");
        match fs::hard_link(source, &target).await {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        }
    }

    /// Deletes the asset at `key`; a missing file is not an error.
    pub async fn remove(&self, key: &str) {
        if let Err(e) = fs::remove_file(self.path_of(key)).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(key, error = %e, "could not remove replaced asset");
            }
        }
    }

    /// Where `key` lives on disk.
    pub fn path_of(&self, key: &str) -> PathBuf {
        self.root.join(Path::new(key))
    }
}

/// Deletes the temporary file on drop unless it was published.
#[derive(Debug)]
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A temporary file being written, hashing and counting as it goes.
#[derive(Debug)]
pub struct TempAsset {
    guard: TempGuard,
    file: BufWriter<fs::File>,
    hasher: Sha256,
    size: u64,
}

impl TempAsset {
    /// Appends a chunk.
    pub async fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        self.file.write_all(chunk).await
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Flushes to disk and returns the size and SHA-256.
    pub async fn finish(mut self) -> std::io::Result<FinishedAsset> {
        self.file.flush().await?;
        self.file.get_mut().sync_all().await?;
        Ok(FinishedAsset {
            guard: self.guard,
            size: self.size,
            sha256: hex::encode(self.hasher.finalize()),
        })
    }
}

/// A complete download waiting to be published or dropped.
#[derive(Debug)]
pub struct FinishedAsset {
    guard: TempGuard,
    pub size: u64,
    pub sha256: String,
}
