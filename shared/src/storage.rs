//! Asset storage through `object_store`: the local filesystem by default, S3-compatible
//! storage when `storage.url` is set. Uploads are multipart, so an object becomes visible
//! only once complete; keys are fresh for every upload, so nothing committed is overwritten.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::config::StorageSettings;
use anyhow::Context;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use md5::Md5;
use object_store::aws::AmazonS3;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::signer::{Method, Signer};
use object_store::{GetOptions, GetResultPayload};
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

/// The prefix inside the bucket of `s3://bucket/prefix/…` ("" without one).
fn bucket_prefix(url: &str) -> String {
    url::Url::parse(url)
        .map(|u| u.path().trim_matches('/').to_string())
        .unwrap_or_default()
}

/// Bytes per uploaded part (S3's minimum); with two parts in flight this bounds an upload's
/// memory to about three parts.
const PART_BYTES: usize = 5 * 1024 * 1024;
const PARTS_IN_FLIGHT: usize = 2;

/// Bytes per read when streaming a local file back.
const READ_CHUNK: usize = 256 * 1024;

/// Where assets go.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    /// The folder, for local storage (whose incomplete uploads `list` does not show).
    root: Option<PathBuf>,
    /// The bucket and the prefix inside it, for object storage: what signs URLs.
    bucket: Option<(Arc<AmazonS3>, String)>,
    /// Folder syncs of local uploads, shared by the uploads into one folder.
    folders: Arc<FolderSyncs>,
}

impl Storage {
    /// Opens `storage.url` (e.g. `s3://bucket/prefix`, credentials from the usual `AWS_*`
    /// variables) or, without one, the folder `storage.root`.
    pub async fn open(settings: &StorageSettings) -> anyhow::Result<Self> {
        let root = settings
            .url
            .is_empty()
            .then(|| PathBuf::from(&settings.root));
        let store: Arc<dyn ObjectStore> = if settings.url.is_empty() {
            tokio::fs::create_dir_all(&settings.root)
                .await
                .with_context(|| format!("cannot create storage.root {:?}", settings.root))?;
            Arc::new(
                LocalFileSystem::new_with_prefix(&settings.root)
                    .with_context(|| format!("storage.root {:?}", settings.root))?,
            )
        } else if settings.url.starts_with("s3://") {
            let s3 = Arc::new(
                object_store::aws::AmazonS3Builder::from_env()
                    .with_url(&settings.url)
                    .build()
                    .with_context(|| format!("storage.url {:?}", settings.url))?,
            );
            // object_store takes only the bucket from the URL: the prefix is ours to apply.
            let prefix = bucket_prefix(&settings.url);
            let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
                s3.clone()
            } else {
                Arc::new(PrefixStore::new(s3.clone(), prefix.as_str()))
            };
            return Ok(Self {
                store,
                root,
                bucket: Some((s3, prefix)),
                folders: Arc::default(),
            });
        } else {
            anyhow::bail!(
                "storage.url {:?}: use s3://bucket/prefix, or leave it empty to use storage.root",
                settings.url
            );
        };
        Ok(Self {
            store,
            root,
            bucket: None,
            folders: Arc::default(),
        })
    }

    /// A URL that reads the object at `key` straight from object storage, valid for
    /// `expires_in`; `None` with local storage (nothing to sign).
    pub async fn presigned_get(
        &self,
        key: &str,
        expires_in: std::time::Duration,
    ) -> Option<object_store::Result<url::Url>> {
        let (s3, prefix) = self.bucket.as_ref()?;
        let path = if prefix.is_empty() {
            Path::from(key)
        } else {
            Path::from(format!("{prefix}/{key}"))
        };
        Some(s3.signed_url(Method::GET, &path, expires_in).await)
    }

    /// Starts an upload to `key`: on local storage straight into the file (its key is fresh
    /// and no entry names it before it is complete and synced, so no staging file and
    /// rename are needed), on object storage as a multipart upload.
    pub async fn upload(&self, key: &str) -> object_store::Result<Upload> {
        let sink = match &self.root {
            Some(root) => Sink::Local(LocalWrite::new(root.clone(), key, self.folders.clone())),
            None => {
                let upload = self.store.put_multipart(&Path::from(key)).await?;
                Sink::Multipart(WriteMultipart::new_with_chunk_size(upload, PART_BYTES))
            }
        };
        Ok(Upload {
            key: key.to_string(),
            sink,
            hasher: Sha256::new(),
            md5: Md5::new(),
            size: 0,
            head: Vec::new(),
        })
    }

    /// Reads `range` of the object at `key`.
    pub async fn read(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> object_store::Result<Bytes> {
        self.store.get_range(&Path::from(key), range).await
    }

    /// Streams `range` of the object at `key` (all of it without one), a chunk at a time:
    /// memory stays bounded whatever the object's size. Local files are read in
    /// [`READ_CHUNK`] pieces (object_store's own local stream reads 8 KiB per blocking call,
    /// several times slower for a large video).
    pub async fn stream(
        &self,
        key: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> object_store::Result<BoxStream<'static, std::io::Result<Bytes>>> {
        Ok(self.get(key, range).await?.1)
    }

    /// The size of the object at `key` and a stream of all its bytes, as [`Storage::stream`]
    /// reads them (a missing object is `object_store::Error::NotFound`).
    pub async fn read_whole(
        &self,
        key: &str,
    ) -> object_store::Result<(u64, BoxStream<'static, std::io::Result<Bytes>>)> {
        self.get(key, None).await
    }

    async fn get(
        &self,
        key: &str,
        range: Option<std::ops::Range<u64>>,
    ) -> object_store::Result<(u64, BoxStream<'static, std::io::Result<Bytes>>)> {
        let options = GetOptions::default().with_range(range);
        let result = self.store.get_opts(&Path::from(key), options).await?;
        let range = result.range.clone();
        let size = result.meta.size;
        let stream = match result.payload {
            GetResultPayload::File(file, _) => {
                let mut file = tokio::fs::File::from_std(file);
                file.seek(std::io::SeekFrom::Start(range.start))
                    .await
                    .map_err(|e| object_store::Error::Generic {
                        store: "LocalFileSystem",
                        source: Box::new(e),
                    })?;
                let limited = file.take(range.end - range.start);
                ReaderStream::with_capacity(limited, READ_CHUNK).boxed()
            }
            GetResultPayload::Stream(stream) => stream.map_err(std::io::Error::other).boxed(),
        };
        Ok((size, stream))
    }

    /// Deletes the object at `key`; a missing object is not an error.
    pub async fn remove(&self, key: &str) {
        match self.store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => tracing::warn!(key, error = %e, "could not remove an asset"),
        }
    }

    /// Every object last modified before `before`.
    pub fn objects_before(
        &self,
        before: DateTime<Utc>,
    ) -> impl futures::Stream<Item = object_store::Result<String>> + '_ {
        self.store.list(None).filter_map(move |meta| async move {
            match meta {
                Ok(meta) if meta.last_modified < before => Some(Ok(meta.location.to_string())),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            }
        })
    }

    /// Counts, and unless `dry_run` removes, the parts of local uploads that were never
    /// completed (a process of a version before direct writes, killed mid-upload, left them;
    /// `list` does not show them) last modified before `before`. (A direct write that never
    /// finished is an object of its own, which the sweep removes as unreferenced.) Object stores keep such parts out of sight themselves: on
    /// S3, a lifecycle rule (AbortIncompleteMultipartUpload) removes them. Returns how many.
    pub async fn stale_parts(&self, before: DateTime<Utc>, dry_run: bool) -> std::io::Result<u64> {
        let Some(root) = self.root.clone() else {
            return Ok(0);
        };
        tokio::task::spawn_blocking(move || parts_below(&root, before.into(), dry_run))
            .await
            .expect("the clean-up task does not panic")
    }
}

/// Walks `dir` and counts, unless `dry_run` removing, incomplete-upload files (`name#N`)
/// modified before `before`.
fn parts_below(
    dir: &std::path::Path,
    before: std::time::SystemTime,
    dry_run: bool,
) -> std::io::Result<u64> {
    let mut found = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            found += parts_below(&entry.path(), before, dry_run)?;
        } else if kind.is_file()
            && entry.file_name().to_string_lossy().contains('#')
            && entry.metadata()?.modified()? < before
        {
            if !dry_run {
                std::fs::remove_file(entry.path())?;
            }
            found += 1;
        }
    }
    Ok(found)
}

/// Bytes a local upload gathers before writing them: one write for most videos, and a
/// bounded buffer for large ones (local files need no 5 MiB parts).
const LOCAL_BUFFER: usize = 1024 * 1024;

/// The first bytes of every upload kept in memory, so that reading a video's technical
/// metadata (its `moov` box, Matroska's first elements) needs no read from storage when they
/// lie there, as they do for every small video.
pub const HEAD_KEPT: usize = 512 * 1024;

/// A local upload: written straight into its file, synced with its folder on `finish`.
struct LocalWrite {
    root: PathBuf,
    path: PathBuf,
    folders: Arc<FolderSyncs>,
    /// Open once the first bytes were written.
    file: Option<std::fs::File>,
    pending: Vec<u8>,
}

impl LocalWrite {
    fn new(root: PathBuf, key: &str, folders: Arc<FolderSyncs>) -> Self {
        Self {
            path: root.join(key),
            root,
            folders,
            file: None,
            pending: Vec::new(),
        }
    }

    /// Writes what is pending, opening the file first if needed (on the blocking pool: one
    /// hop for all of it).
    async fn flush(&mut self, sync: bool) -> std::io::Result<()> {
        let mut file = self.file.take();
        let mut pending = std::mem::take(&mut self.pending);
        let (root, path) = (self.root.clone(), self.path.clone());
        let folders = self.folders.clone();
        let (file, pending) = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut open = match file.take() {
                Some(f) => f,
                None => create_new(&root, &path)?,
            };
            open.write_all(&pending)?;
            pending.clear();
            if sync {
                sync_durably(&root, &path, &open, &folders).map_err(|source| {
                    std::io::Error::new(
                        source.kind(),
                        format!("syncing the stored file to disk failed: {source}"),
                    )
                })?;
            }
            Ok::<_, std::io::Error>((open, pending))
        })
        .await
        .expect("the write task does not panic")?;
        self.file = Some(file);
        self.pending = pending;
        Ok(())
    }
}

/// Creates the file at `path` (never an existing one), with its folders below `root`.
fn create_new(root: &std::path::Path, path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let open = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
    };
    match open() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = path.parent().unwrap_or(root);
            std::fs::create_dir_all(parent)?;
            open()
        }
        other => other,
    }
}

/// Syncs the written `file` at `path` and its folder to disk, and, until that has been
/// done once for the folder, every folder above it up to `root` (a new folder's entry lives
/// in its parent, and the upload that created the folder may not have synced it yet when
/// another one, writing into the folder too, is done).
fn sync_durably(
    root: &std::path::Path,
    path: &std::path::Path,
    file: &std::fs::File,
    folders: &FolderSyncs,
) -> std::io::Result<()> {
    file.sync_all()?;
    let Some(folder) = path.parent() else {
        return Ok(());
    };
    let folder_sync = folders.of(folder);
    folder_sync.sync(folder)?;
    if !folder_sync.parents_durable.load(Ordering::Acquire) {
        let mut dir = Some(folder);
        while let Some(d) = dir.filter(|d| *d != root && d.starts_with(root)) {
            let parent = d.parent().unwrap_or(root);
            std::fs::File::open(parent)?.sync_all()?;
            dir = Some(parent);
        }
        folder_sync.parents_durable.store(true, Ordering::Release);
    }
    Ok(())
}

/// The folder syncs of each folder uploads go into.
#[derive(Default)]
struct FolderSyncs {
    by_path: std::sync::Mutex<std::collections::HashMap<PathBuf, Arc<FolderSync>>>,
}

impl FolderSyncs {
    fn of(&self, folder: &std::path::Path) -> Arc<FolderSync> {
        self.by_path
            .lock()
            .expect("not poisoned")
            .entry(folder.to_path_buf())
            .or_default()
            .clone()
    }
}

/// Syncs of one folder shared by the uploads that need one at the same time: a sync that
/// starts after a file's entry was made covers it, so the uploads that finish while one
/// sync runs wait for the next, and one sync (one disk write) covers them all. (Each file
/// is still synced on its own; only its folder entry is shared.)
#[derive(Default)]
struct FolderSync {
    state: std::sync::Mutex<FolderState>,
    done: std::sync::Condvar,
    /// Whether the folders above this one (up to the storage root) were synced since it
    /// was first written to by this process.
    parents_durable: std::sync::atomic::AtomicBool,
}

/// Syncs are numbered as they start.
#[derive(Default)]
struct FolderState {
    started: u64,
    completed: u64,
    running: bool,
    /// The latest sync that failed: every caller it (or a later one) would have covered
    /// is told, rather than risk a file whose entry is not on disk.
    failed: Option<(u64, std::io::ErrorKind, String)>,
}

impl FolderSync {
    /// Returns once a sync of `folder` that started after this call has ended.
    fn sync(&self, folder: &std::path::Path) -> std::io::Result<()> {
        let mut state = self.state.lock().expect("not poisoned");
        let needed = state.started + 1;
        loop {
            if state.completed >= needed {
                return match &state.failed {
                    Some((number, kind, text)) if *number >= needed => {
                        Err(std::io::Error::new(*kind, text.clone()))
                    }
                    _ => Ok(()),
                };
            }
            if state.running {
                state = self.done.wait(state).expect("not poisoned");
                continue;
            }
            state.running = true;
            state.started += 1;
            let number = state.started;
            drop(state);
            let synced = std::fs::File::open(folder).and_then(|dir| dir.sync_all());
            state = self.state.lock().expect("not poisoned");
            state.running = false;
            state.completed = number;
            if let Err(e) = synced {
                state.failed = Some((number, e.kind(), e.to_string()));
            }
            self.done.notify_all();
        }
    }
}

/// Where an upload's bytes go.
enum Sink {
    /// Object storage: a multipart upload, visible once complete.
    Multipart(WriteMultipart),
    /// Local storage: the file itself.
    Local(LocalWrite),
}

/// The error object_store callers expect, for a failed local write.
fn local_error(source: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "LocalFileSystem",
        source: Box::new(source),
    }
}

/// An upload in progress, hashing and counting as it goes.
pub struct Upload {
    key: String,
    sink: Sink,
    hasher: Sha256,
    md5: Md5,
    size: u64,
    /// The first [`HEAD_KEPT`] bytes.
    head: Vec<u8>,
}

impl Upload {
    /// Appends a chunk, waiting while too many parts are in flight (object storage) or
    /// while a full buffer is written (local storage).
    pub async fn write(&mut self, chunk: &[u8]) -> object_store::Result<()> {
        if let Sink::Multipart(writer) = &mut self.sink {
            writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
        }
        self.hasher.update(chunk);
        self.md5.update(chunk);
        self.size += chunk.len() as u64;
        let room = HEAD_KEPT.saturating_sub(self.head.len()).min(chunk.len());
        self.head.extend_from_slice(&chunk[..room]);
        match &mut self.sink {
            Sink::Multipart(writer) => writer.write(chunk),
            Sink::Local(local) => {
                local.pending.extend_from_slice(chunk);
                if local.pending.len() >= LOCAL_BUFFER {
                    if let Err(e) = local.flush(false).await {
                        return Err(local_error(e));
                    }
                }
            }
        }
        Ok(())
    }

    /// Completes the upload; the object is visible from now on, and durable: on local
    /// storage the file and its folder are synced to disk before this returns, so that an
    /// entry committed after it never points at a file a power loss took away. (S3 answers
    /// a completed upload only once it is durable.)
    pub async fn finish(self) -> object_store::Result<StoredAsset> {
        let Upload {
            key,
            sink,
            hasher,
            md5,
            size,
            head,
        } = self;
        match sink {
            Sink::Multipart(writer) => {
                writer.finish().await?;
            }
            Sink::Local(mut local) => {
                if let Err(e) = local.flush(true).await {
                    // Not durable (or not written): it must not be used, so it must not stay.
                    let _ = tokio::fs::remove_file(&local.path).await;
                    return Err(local_error(e));
                }
            }
        }
        Ok(StoredAsset {
            key,
            size,
            sha256: hex::encode(hasher.finalize()),
            md5: hex::encode(md5.finalize()),
            head: Head(Bytes::from(head)),
        })
    }

    /// Abandons the upload; nothing becomes visible.
    pub async fn abort(self) {
        match self.sink {
            Sink::Multipart(writer) => {
                if let Err(e) = writer.abort().await {
                    tracing::warn!(key = %self.key, error = %e, "could not abort an upload");
                }
            }
            Sink::Local(local) => {
                drop(local.file);
                match tokio::fs::remove_file(&local.path).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(key = %self.key, error = %e, "could not remove an abandoned upload")
                    }
                }
            }
        }
    }
}

/// The first bytes of a stored object (at most [`HEAD_KEPT`]).
#[derive(Clone, Default)]
pub struct Head(pub Bytes);

impl std::fmt::Debug for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Head({} bytes)", self.0.len())
    }
}

/// A complete, stored download.
#[derive(Debug, Clone)]
pub struct StoredAsset {
    pub key: String,
    pub size: u64,
    pub sha256: String,
    /// Hex MD5 of the bytes, for fixity values given as MD5.
    pub md5: String,
    /// Its first bytes, for reading its metadata without reading storage again.
    pub head: Head,
}

#[cfg(test)]
mod tests {
    use super::{bucket_prefix, FolderSync};
    use std::sync::Arc;

    #[test]
    fn a_folder_sync_covers_only_callers_that_came_before_it_started() {
        let dir = std::env::temp_dir().join(format!("folder-sync-{}", crate::ids::random_id(8)));
        std::fs::create_dir_all(&dir).unwrap();
        let sync = Arc::new(FolderSync::default());
        // One after another: each call syncs once.
        sync.sync(&dir).unwrap();
        sync.sync(&dir).unwrap();
        assert_eq!(sync.state.lock().unwrap().started, 2);
        // Side by side: every caller is covered, by at most one sync each.
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (sync, dir) = (sync.clone(), dir.clone());
                std::thread::spawn(move || sync.sync(&dir))
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        let started = sync.state.lock().unwrap().started;
        assert!((3..=18).contains(&started), "{started}");
        // A folder that cannot be synced fails every caller it would have covered.
        let gone = Arc::new(FolderSync::default());
        assert!(gone.sync(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_prefix_is_the_urls_path_without_slashes() {
        assert_eq!(bucket_prefix("s3://bucket"), "");
        assert_eq!(bucket_prefix("s3://bucket/"), "");
        assert_eq!(bucket_prefix("s3://bucket/videos"), "videos");
        assert_eq!(bucket_prefix("s3://bucket/a/b/"), "a/b");
    }
}
