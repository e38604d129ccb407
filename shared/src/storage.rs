//! Asset storage through `object_store`: the local filesystem by default, S3-compatible
//! storage when `storage.url` is set. Uploads are multipart, so an object becomes visible
//! only once complete; keys are fresh for every upload, so nothing committed is overwritten.
//! Locally, small videos are packed by default: the files of one group write go into one
//! pack file, and each asset's key names its range of it ([`Location`]).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::{fs, io};

use crate::batch::Batcher;
use crate::config::{SmallFiles, StorageSettings};
use crate::direct_io::{self, Buffer};
use crate::md5_lanes::{Md5Lanes, Md5Stream};
use anyhow::Context;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
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
    /// How local uploads create files and sync folders (the folder syncs shared by the
    /// uploads into one folder among them), and the small files' group writes.
    local: Arc<GroupWrites>,
    /// The MD5 of the uploads in flight, hashed together.
    md5: Arc<Md5Lanes>,
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
                local: GroupWrites::on(Disk::default(), settings.sync_writers, SmallFiles::Files),
                md5: Arc::default(),
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
            local: GroupWrites::on(Disk::default(), settings.sync_writers, settings.small_files),
            md5: Arc::default(),
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
            Some(root) => Sink::Local(LocalWrite::new(root.clone(), key, self.local.clone())),
            None => {
                let upload = self.store.put_multipart(&Path::from(key)).await?;
                Sink::Multipart(WriteMultipart::new_with_chunk_size(upload, PART_BYTES))
            }
        };
        Ok(Upload {
            key: key.to_string(),
            sink,
            hasher: Sha256::new(),
            md5: Md5Stream::new(self.md5.clone()),
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
        match Location::of(key) {
            Location::Object(object) => self.store.get_range(&Path::from(object), range).await,
            Location::Packed { pack, offset, len } => match in_pack(offset, len, range) {
                Some(within) => self.store.get_range(&Path::from(pack), within).await,
                None => Ok(Bytes::new()),
            },
        }
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
        let (object, range, packed_len) = match Location::of(key) {
            Location::Object(object) => (object, range, None),
            Location::Packed { pack, offset, len } => {
                // What of the asset its pack still holds: all of it, unless the pack was cut
                // short (the size then tells, as a short file's does).
                let pack_size = self.store.head(&Path::from(pack)).await?.size;
                let held = len.min(pack_size.saturating_sub(offset));
                let Some(within) = in_pack(offset, held, range.unwrap_or(0..held)) else {
                    return Ok((held, futures::stream::empty().boxed()));
                };
                (pack, Some(within), Some(held))
            }
        };
        let options = GetOptions::default().with_range(range);
        let result = self.store.get_opts(&Path::from(object), options).await?;
        let range = result.range.clone();
        let size = packed_len.unwrap_or(result.meta.size);
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

    /// Deletes the object at `key`; a missing object is not an error. A packed asset goes
    /// with its pack when it is the pack's only one; otherwise its bytes stay until no entry
    /// references any range of the pack and the sweeper removes it.
    pub async fn remove(&self, key: &str) {
        let key = match Location::of(key) {
            Location::Object(key) => key,
            Location::Packed { pack, offset, len } => {
                let alone = offset == 0
                    && matches!(self.store.head(&Path::from(pack)).await, Ok(m) if m.size == len);
                if !alone {
                    return;
                }
                pack
            }
        };
        match self.store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => tracing::warn!(key, error = %e, "could not remove an asset"),
        }
    }

    /// Every object last modified before `before`.
    pub fn objects_before(
        &self,
        before: DateTime<Utc>,
    ) -> impl futures::Stream<Item = object_store::Result<StoredObject>> + '_ {
        self.store.list(None).filter_map(move |meta| async move {
            match meta {
                Ok(meta) if meta.last_modified < before => Some(Ok(StoredObject {
                    key: meta.location.to_string(),
                    size: meta.size,
                })),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            }
        })
    }

    /// Sets the object `key`'s modification time to now on local storage (nothing elsewhere):
    /// the sweeper, which goes by that time, then leaves it alone for another grace period.
    pub async fn touch(&self, key: &str) -> io::Result<()> {
        let Some(root) = &self.root else {
            return Ok(());
        };
        let path = root.join(key);
        tokio::task::spawn_blocking(move || {
            fs::File::options()
                .write(true)
                .open(&path)?
                .set_modified(std::time::SystemTime::now())
        })
        .await
        .map_err(io::Error::other)?
    }

    /// Whether small videos are packed here (local storage with `storage.small_files =
    /// packed`): what [`Storage::pack`] needs.
    pub fn packs_small_files(&self) -> bool {
        self.root.is_some() && self.local.small_files == SmallFiles::Packed
    }

    /// Writes `assets` (each all of one asset's bytes) one after the other into one new
    /// pack, synced with its folder as a group write's, and returns each one's key, in order.
    /// The sweeper moves the videos still used out of mostly unused packs with it. Only
    /// where [`Storage::packs_small_files`]; an error elsewhere.
    pub async fn pack(&self, assets: &[Bytes]) -> io::Result<Vec<String>> {
        let root = match &self.root {
            Some(root) if self.packs_small_files() => root.clone(),
            _ => {
                return Err(io::Error::other(
                    "only local storage with storage.small_files = packed keeps packs",
                ))
            }
        };
        let group: Vec<SmallFile> = assets
            .iter()
            .map(|bytes| {
                let mut buffer = direct_io::buffer();
                buffer.extend_from_slice(bytes);
                SmallFile {
                    root: root.clone(),
                    key: String::new(),
                    path: root.clone(),
                    bytes: buffer,
                }
            })
            .collect();
        let disk = self.local.disk.clone();
        tokio::task::spawn_blocking(move || write_pack(&disk, &group))
            .await
            .map_err(io::Error::other)?
            .into_iter()
            .collect()
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

/// Appends `bytes` to `buffer`, growing it as `Vec` would but never past `limit` bytes of
/// capacity (doubling would take a buffer just under 1 MiB to 2 MiB): what a download holds
/// stays what [`LOCAL_BUFFER`] and [`HEAD_KEPT`] say. The caller keeps the length within
/// `limit`.
fn append_within<B: Grow>(buffer: &mut B, bytes: &[u8], limit: usize) {
    let needed = buffer.len() + bytes.len();
    debug_assert!(needed <= limit, "{needed} bytes do not fit in {limit}");
    if needed > buffer.capacity() {
        let grown = (buffer.capacity() * 2).max(needed).min(limit);
        buffer.reserve_exact(grown - buffer.len());
    }
    buffer.extend_from_slice(bytes);
}

/// What [`append_within`] needs of a buffer: the head's `Vec` and the pending [`Buffer`].
trait Grow {
    fn len(&self) -> usize;
    fn capacity(&self) -> usize;
    fn reserve_exact(&mut self, additional: usize);
    fn extend_from_slice(&mut self, bytes: &[u8]);
}

/// Both buffers' own methods of the same names.
macro_rules! grow_by_own_methods {
    ($($buffer:ty),*) => {$(
        impl Grow for $buffer {
            fn len(&self) -> usize {
                <$buffer>::len(self)
            }
            fn capacity(&self) -> usize {
                <$buffer>::capacity(self)
            }
            fn reserve_exact(&mut self, additional: usize) {
                <$buffer>::reserve_exact(self, additional)
            }
            fn extend_from_slice(&mut self, bytes: &[u8]) {
                <$buffer>::extend_from_slice(self, bytes)
            }
        }
    )*};
}

grow_by_own_methods!(Vec<u8>, Buffer);

/// A local upload: written straight into its file, synced with its folder on `finish`.
struct LocalWrite {
    root: PathBuf,
    key: String,
    path: PathBuf,
    local: Arc<GroupWrites>,
    /// Open once the first bytes were written.
    file: Option<fs::File>,
    /// Aligned for direct writes (see [`direct_io`]).
    pending: Buffer,
    /// The write under way on the blocking pool, kept here until it has ended: a flush whose
    /// future is dropped (its download timed out) leaves it behind, so that `abort` can wait
    /// for it before removing the file it may still be creating.
    writing: Option<tokio::task::JoinHandle<Written>>,
}

/// What a write on the blocking pool hands back: the open file and the emptied buffer.
type Written = io::Result<(fs::File, Buffer)>;

impl LocalWrite {
    fn new(root: PathBuf, key: &str, local: Arc<GroupWrites>) -> Self {
        Self {
            path: root.join(key),
            key: key.to_string(),
            root,
            local,
            file: None,
            pending: direct_io::buffer(),
            writing: None,
        }
    }

    /// Writes what is pending, opening the file first if needed (on the blocking pool: one
    /// hop for all of it).
    async fn flush(&mut self, sync: bool) -> io::Result<()> {
        // A flush dropped mid-way left its write running: it ends first.
        self.settle().await?;
        let mut file = self.file.take();
        let mut pending = std::mem::replace(&mut self.pending, direct_io::buffer());
        let (root, path) = (self.root.clone(), self.path.clone());
        let disk = self.local.disk.clone();
        self.writing = Some(tokio::task::spawn_blocking(move || {
            let mut open = match file.take() {
                Some(f) => f,
                None => {
                    // Past the page cache from its first write (only files of more than
                    // LOCAL_BUFFER bytes come here; small ones go in groups).
                    let created = (disk.create)(&root, &path)?;
                    direct_io::enable(&created);
                    created
                }
            };
            direct_io::write_all(&mut open, &pending)?;
            pending.clear();
            if sync {
                open.sync_all()
                    .and_then(|()| sync_folder_of(&root, &path, &disk))
                    .map_err(sync_failed)?;
            }
            Ok((open, pending))
        }));
        self.settle().await
    }

    /// Writes what is pending and syncs the file and its folder to disk, and returns the
    /// key the bytes are stored under. A file never opened (all of it fits in the buffer:
    /// every small video) is written and synced with the other small files finishing at the
    /// same time ([`GroupWrites`]), packed with them unless `storage.small_files` is `files`.
    async fn finish(&mut self) -> io::Result<String> {
        if self.file.is_some() || self.writing.is_some() {
            self.flush(true).await?;
            return Ok(self.key.clone());
        }
        let file = SmallFile {
            root: self.root.clone(),
            key: self.key.clone(),
            path: self.path.clone(),
            bytes: std::mem::replace(&mut self.pending, direct_io::buffer()),
        };
        self.local.write(file).await
    }

    /// Waits for the write under way, if any, and takes its file (and its emptied buffer)
    /// back. Dropped while waiting, it leaves the write where it was.
    async fn settle(&mut self) -> io::Result<()> {
        let Some(writing) = self.writing.as_mut() else {
            return Ok(());
        };
        let written = writing.await;
        self.writing = None;
        let (file, buffer) = written.expect("the write task does not panic")?;
        self.file = Some(file);
        if self.pending.is_empty() {
            self.pending = buffer;
        }
        Ok(())
    }
}

/// Creates the file at `path` (never an existing one), with its folders below `root`.
fn create_new(root: &std::path::Path, path: &std::path::Path) -> io::Result<fs::File> {
    let open = || {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
    };
    match open() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let parent = path.parent().unwrap_or(root);
            fs::create_dir_all(parent)?;
            open()
        }
        other => other,
    }
}

/// Syncs `folder` to disk (its entries: the files and folders made in it).
fn sync_folder(folder: &std::path::Path) -> io::Result<()> {
    fs::File::open(folder)?.sync_all()
}

/// The error of a failed sync, saying so.
fn sync_failed(source: io::Error) -> io::Error {
    io::Error::new(
        source.kind(),
        format!("syncing the stored file to disk failed: {source}"),
    )
}

/// Syncs the folder of the file at `path` to disk, and, until that has been done once for
/// the folder, every folder above it up to `root` (a new folder's entry lives in its
/// parent, and the upload that created the folder may not have synced it yet when another
/// one, writing into the folder too, is done).
fn sync_folder_of(root: &std::path::Path, path: &std::path::Path, disk: &Disk) -> io::Result<()> {
    let Some(folder) = path.parent() else {
        return Ok(());
    };
    let folder_sync = disk.folder(folder);
    folder_sync.sync(folder, &*disk.sync_folder)?;
    if !folder_sync.parents_durable.load(Ordering::Acquire) {
        let mut dir = Some(folder);
        while let Some(d) = dir.filter(|d| *d != root && d.starts_with(root)) {
            let parent = d.parent().unwrap_or(root);
            (disk.sync_folder)(parent)?;
            dir = Some(parent);
        }
        folder_sync.parents_durable.store(true, Ordering::Release);
    }
    Ok(())
}

/// Creating a file of the given root and path.
type CreateFile = dyn Fn(&std::path::Path, &std::path::Path) -> io::Result<fs::File> + Send + Sync;
/// Syncing a folder.
type SyncFolder = dyn Fn(&std::path::Path) -> io::Result<()> + Send + Sync;

/// The file system as local uploads use it: how a file is created and a folder synced
/// ([`create_new`] and [`sync_folder`]; tests put in ones that wait or fail), and the
/// folder syncs of each folder uploads go into.
struct Disk {
    create: Box<CreateFile>,
    sync_folder: Box<SyncFolder>,
    folders: std::sync::Mutex<std::collections::HashMap<PathBuf, Arc<FolderSync>>>,
}

impl Default for Disk {
    fn default() -> Self {
        Self {
            create: Box::new(create_new),
            sync_folder: Box::new(sync_folder),
            folders: Default::default(),
        }
    }
}

impl Disk {
    /// The syncs of `folder`.
    fn folder(&self, folder: &std::path::Path) -> Arc<FolderSync> {
        self.folders
            .lock()
            .expect("not poisoned")
            .entry(folder.to_path_buf())
            .or_default()
            .clone()
    }
}

/// A small file to create, write and sync: all of it is in `bytes`.
struct SmallFile {
    root: PathBuf,
    /// Its key, and its path (the key below `root`) when it is written as a file of its own.
    key: String,
    path: PathBuf,
    bytes: Buffer,
}

/// Files a group write takes at most.
const GROUP_FILES: usize = 32;

/// Small files written in groups: the files whose uploads finish while a group is being
/// written go together in the next one, written and synced in one call on the blocking
/// pool. One hand-off to a blocking thread per group instead of per file: thread hand-offs
/// were the largest share of a worker's CPU for small videos (docs/benchmarks.md, ninth
/// round). Packed (the default), the group is one new pack file, synced once with its
/// folder: a file's sync, which writes its inode and flushes the disk's cache, was a third
/// of a small video's cost (twelfth round). As files, each is created and synced on its
/// own, their folders once per group. Either way every upload of the group is told it is
/// durable only after its bytes and the entry naming them are on disk.
struct GroupWrites {
    disk: Arc<Disk>,
    /// A pack per group, or a file per upload.
    small_files: SmallFiles,
    /// Group writes under way at once (`storage.sync_writers`): each syncs its files one
    /// after the other, so this many syncs of small files reach the disk at once.
    count: usize,
    /// Started on first use (it needs the runtime), ended with the storage.
    writers: std::sync::OnceLock<Batcher<SmallFile, io::Result<String>>>,
}

impl GroupWrites {
    /// Group writes on `disk`, `count` at once, kept as `small_files` says.
    fn on(disk: Disk, count: usize, small_files: SmallFiles) -> Arc<Self> {
        Arc::new(Self {
            disk: Arc::new(disk),
            small_files,
            count: count.max(1),
            writers: std::sync::OnceLock::new(),
        })
    }

    /// Writes and syncs `file` with the next group and returns the key its bytes are stored
    /// under (a range of the group's pack, or its own key). The writers
    /// run on the runtime of the first small upload, which must outlive the storage (each
    /// binary has one runtime). Should they stop first (at shutdown), a group already on the
    /// blocking pool may still create its files after their uploads were told it failed:
    /// those files no entry names, which the sweeper removes.
    async fn write(&self, file: SmallFile) -> io::Result<String> {
        let writers = self.writers.get_or_init(|| {
            let disk = self.disk.clone();
            let small_files = self.small_files;
            Batcher::start(self.count, GROUP_FILES, move |group: Vec<SmallFile>| {
                let disk = disk.clone();
                async move {
                    tokio::task::spawn_blocking(move || match small_files {
                        SmallFiles::Packed => write_pack(&disk, &group),
                        SmallFiles::Files => write_group(&disk, &group),
                    })
                    .await
                    .context("a group write ended early")
                }
            })
        });
        writers.submit(file).await.map_err(io::Error::other)?
    }
}

/// Writes the files of `group` one after the other into one new pack file, then syncs it
/// and its folder: each file's key (its range of the pack), in order, or the one failure
/// for all of them (the pack is then removed: nothing names it).
fn write_pack(disk: &Disk, group: &[SmallFile]) -> Vec<io::Result<String>> {
    use std::io::Write;
    let Some(root) = group.first().map(|file| &file.root) else {
        return Vec::new();
    };
    let pack = format!("{PACK_FOLDER}/{}{PACK_SUFFIX}", crate::ids::random_id(16));
    let path = root.join(&pack);
    let mut keys = Vec::with_capacity(group.len());
    let mut offset = 0;
    for file in group {
        let len = file.bytes.len() as u64;
        keys.push(Location::packed_key(&pack, offset, len));
        offset += len;
    }
    // Only a pack this write created is removed on failure (never one that was there).
    let mut created = false;
    let written = (disk.create)(root, &path).and_then(|mut open| {
        created = true;
        // Written from the uploads' own buffers (no copy of up to 32 MiB into one).
        let mut slices: Vec<io::IoSlice> = group
            .iter()
            .filter(|f| !f.bytes.is_empty())
            .map(|f| io::IoSlice::new(&f.bytes))
            .collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            match open.write_vectored(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => io::IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        open.sync_all().map_err(sync_failed)?;
        sync_folder_of(root, &path, disk).map_err(sync_failed)
    });
    match written {
        Ok(()) => keys.into_iter().map(Ok).collect(),
        Err(e) => {
            if created {
                let _ = fs::remove_file(&path);
            }
            keys.iter()
                .map(|_| Err(io::Error::new(e.kind(), e.to_string())))
                .collect()
        }
    }
}

/// Creates and writes each file of `group`, then syncs each, then each of their folders
/// once: each file's key or failure, in order. The disk starts writing each file's bytes as
/// soon as they are written, so while the first file is synced the others' bytes are on
/// their way, and their syncs find little left to wait for.
fn write_group(disk: &Disk, group: &[SmallFile]) -> Vec<io::Result<String>> {
    use std::io::Write;
    let written: Vec<io::Result<fs::File>> = group
        .iter()
        .map(|file| {
            let mut open = (disk.create)(&file.root, &file.path)?;
            open.write_all(&file.bytes)?;
            start_writeback(&open);
            Ok(open)
        })
        .collect();
    let mut outcomes: Vec<io::Result<()>> = written
        .iter()
        .map(|open| match open {
            Ok(open) => open.sync_all().map_err(sync_failed),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        })
        .collect();
    let mut folders: std::collections::HashMap<&std::path::Path, io::Result<()>> =
        Default::default();
    for (file, outcome) in group.iter().zip(&mut outcomes) {
        if outcome.is_err() {
            continue;
        }
        let folder = file.path.parent().unwrap_or(&file.root);
        let synced = folders
            .entry(folder)
            .or_insert_with(|| sync_folder_of(&file.root, &file.path, disk).map_err(sync_failed));
        if let Err(e) = synced {
            *outcome = Err(io::Error::new(e.kind(), e.to_string()));
        }
    }
    outcomes
        .into_iter()
        .zip(group)
        .map(|(outcome, file)| outcome.map(|()| file.key.clone()))
        .collect()
}

/// Asks the kernel to start writing `file`'s bytes to disk now, without waiting (a hint:
/// the sync that follows reports any failure).
fn start_writeback(file: &fs::File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain system call on an open descriptor; no memory is passed.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
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
    failed: Option<(u64, io::ErrorKind, String)>,
    /// Callers waiting for a sync to end (tests wait for them to be there).
    #[cfg(test)]
    waiting: usize,
}

impl FolderState {
    /// What a caller covered by sync number `needed` is told once that sync has ended:
    /// that sync's failure, or a later one's (told rather than risked); a later success
    /// never hides its failure.
    fn outcome(&self, needed: u64) -> Option<io::Result<()>> {
        if self.completed < needed {
            return None;
        }
        Some(match &self.failed {
            Some((number, kind, text)) if *number >= needed => {
                Err(io::Error::new(*kind, text.clone()))
            }
            _ => Ok(()),
        })
    }
}

impl FolderSync {
    /// Returns once a sync of `folder` (done by `fsync`) that started after this call has
    /// ended.
    fn sync(
        &self,
        folder: &std::path::Path,
        fsync: impl Fn(&std::path::Path) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut state = self.state.lock().expect("not poisoned");
        let needed = state.started + 1;
        loop {
            if let Some(outcome) = state.outcome(needed) {
                return outcome;
            }
            if state.running {
                #[cfg(test)]
                {
                    state.waiting += 1;
                }
                state = self.done.wait(state).expect("not poisoned");
                #[cfg(test)]
                {
                    state.waiting -= 1;
                }
                continue;
            }
            state.running = true;
            state.started += 1;
            let number = state.started;
            drop(state);
            let synced = fsync(folder);
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
    md5: Md5Stream,
    size: u64,
    /// The first [`HEAD_KEPT`] bytes.
    head: Vec<u8>,
}

impl Upload {
    /// Appends a chunk, waiting while too many parts are in flight (object storage), while
    /// a full buffer is written (local storage) or while the MD5 lanes are full.
    pub async fn write(&mut self, chunk: &Bytes) -> object_store::Result<()> {
        if let Sink::Multipart(writer) = &mut self.sink {
            writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
        }
        self.hasher.update(chunk);
        self.md5.update(chunk).await;
        self.size += chunk.len() as u64;
        let room = HEAD_KEPT.saturating_sub(self.head.len()).min(chunk.len());
        append_within(&mut self.head, &chunk[..room], HEAD_KEPT);
        match &mut self.sink {
            Sink::Multipart(writer) => writer.write(chunk),
            Sink::Local(local) => {
                // Filled to exactly LOCAL_BUFFER and written: the buffer never grows past it.
                let mut rest: &[u8] = chunk;
                while !rest.is_empty() {
                    let free = LOCAL_BUFFER - local.pending.len();
                    let (now, later) = rest.split_at(free.min(rest.len()));
                    append_within(&mut local.pending, now, LOCAL_BUFFER);
                    rest = later;
                    if local.pending.len() == LOCAL_BUFFER {
                        local.flush(false).await.map_err(local_error)?;
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
    pub async fn finish(mut self) -> object_store::Result<StoredAsset> {
        // The MD5 first: an upload whose digest cannot be had is abandoned with the reason,
        // never stored without it.
        let md5 = match self.md5.finish().await {
            Ok(digest) => digest,
            Err(e) => {
                self.abort().await;
                return Err(object_store::Error::Generic {
                    store: "MD5",
                    source: format!("{e}; nothing was stored, the video may be tried again").into(),
                });
            }
        };
        let Upload {
            mut key,
            sink,
            hasher,
            size,
            head,
            ..
        } = self;
        match sink {
            Sink::Multipart(writer) => {
                writer.finish().await?;
            }
            Sink::Local(mut local) => match local.finish().await {
                Ok(stored_under) => key = stored_under,
                Err(e) => {
                    // Not durable (or not written): it must not be used, so it must not stay.
                    let _ = tokio::fs::remove_file(&local.path).await;
                    return Err(local_error(e));
                }
            },
        }
        Ok(StoredAsset {
            key,
            size,
            sha256: hex::encode(hasher.finalize()),
            md5: hex::encode(md5),
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
            Sink::Local(mut local) => {
                // A write still running (its flush was dropped: the download timed out) may
                // yet create the file: removed before it ends, the file would stay behind.
                let _ = local.settle().await;
                drop(local.file.take());
                match tokio::fs::remove_file(&local.path).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
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

/// An object in storage, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub key: String,
    pub size: u64,
}

/// Where `range` of an asset `len` bytes long at `offset` of its pack lies in the pack, cut
/// at the asset's end (never into its neighbour's bytes); `None` when nothing is left of it.
fn in_pack(offset: u64, len: u64, range: std::ops::Range<u64>) -> Option<std::ops::Range<u64>> {
    let (start, end) = (range.start.min(len), range.end.min(len));
    (start < end).then(|| offset + start..offset + end)
}

/// The folder of pack files, below the storage root.
const PACK_FOLDER: &str = "packs";
/// How a pack file's name ends.
const PACK_SUFFIX: &str = ".pack";

/// Where a stored asset's bytes lie, as its key says: an object (a file) of its own, or a
/// range of a pack file shared with the other small files of one group write, whose key is
/// `packs/NAME.pack@OFFSET+LENGTH`. (Keys of objects are `PROJECT/RANDOM.EXT`: never that.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location<'a> {
    /// The object `key` holds the asset's bytes, all of them.
    Object(&'a str),
    /// Bytes `offset..offset + len` of the object `pack` are the asset.
    Packed {
        pack: &'a str,
        offset: u64,
        len: u64,
    },
}

impl<'a> Location<'a> {
    /// Where the asset stored under `key` lies.
    pub fn of(key: &'a str) -> Self {
        let packed = key.rsplit_once('@').and_then(|(pack, range)| {
            let (offset, len) = range.split_once('+')?;
            // Digits only: `parse` would take a leading '+' too.
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            if !(Location::is_pack(pack) && digits(offset) && digits(len)) {
                return None;
            }
            Some(Location::Packed {
                pack,
                offset: offset.parse().ok()?,
                len: len.parse().ok()?,
            })
        });
        packed.unwrap_or(Location::Object(key))
    }

    /// Whether the object `object` (a key as listed, not an asset's) is a pack file.
    pub fn is_pack(object: &str) -> bool {
        object
            .strip_prefix(PACK_FOLDER)
            .and_then(|name| name.strip_prefix('/'))
            .is_some_and(|name| name.len() > PACK_SUFFIX.len() && name.ends_with(PACK_SUFFIX))
            && !object.contains('@')
    }

    /// The object (file) that holds the asset's bytes.
    pub fn object(&self) -> &'a str {
        match *self {
            Location::Object(object) => object,
            Location::Packed { pack, .. } => pack,
        }
    }

    /// The key of the asset `len` bytes long at `offset` of the pack `pack`.
    fn packed_key(pack: &str, offset: u64, len: u64) -> String {
        format!("{pack}@{offset}+{len}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use std::path::Path as FsPath;
    use std::sync::{Condvar, Mutex};
    use std::time::{Duration, Instant};

    /// A fresh folder below the system's temporary folder.
    fn temp_folder(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("{name}-{}", crate::ids::random_id(8)));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Local storage in `root` that uses `disk`, a file for each small upload.
    fn local_storage(root: &FsPath, disk: Disk) -> Storage {
        storage_keeping(root, disk, SmallFiles::Files)
    }

    /// Local storage in `root` that uses `disk` and keeps small files as `small_files` says.
    fn storage_keeping(root: &FsPath, disk: Disk, small_files: SmallFiles) -> Storage {
        Storage {
            store: Arc::new(LocalFileSystem::new_with_prefix(root).unwrap()),
            root: Some(root.to_path_buf()),
            bucket: None,
            local: GroupWrites::on(disk, 1, small_files),
            md5: Arc::default(),
        }
    }

    /// Every file below `dir`.
    fn files_in(dir: &FsPath) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.extend(files_in(&path));
            } else {
                files.push(path);
            }
        }
        files
    }

    /// Waits (on this thread) until `done` says so; a minute without is a hang.
    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(Instant::now() < deadline, "waited a minute for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A door the test opens; other threads wait at it until then.
    #[derive(Default)]
    struct Door {
        open: Mutex<bool>,
        opened: Condvar,
    }

    impl Door {
        fn open(&self) {
            *self.open.lock().unwrap() = true;
            self.opened.notify_all();
        }

        fn pass(&self) {
            let open = self.open.lock().unwrap();
            drop(self.opened.wait_while(open, |open| !*open).unwrap());
        }
    }

    /// Opens its door when dropped, also by a failing test (whose runtime would otherwise
    /// wait for ever for a blocking task held at it).
    struct OpenOnDrop(Arc<Door>);

    impl Drop for OpenOnDrop {
        fn drop(&mut self) {
            self.0.open();
        }
    }

    /// The folder fsyncs of a test: each notes its start and end in `log`, which the callers
    /// share; sync 1 waits at `door`, and sync number `failing` fails.
    struct Syncs {
        log: Mutex<Vec<String>>,
        door: Door,
        failing: usize,
    }

    impl Syncs {
        fn new(failing: usize) -> Arc<Self> {
            Arc::new(Self {
                log: Mutex::default(),
                door: Door::default(),
                failing,
            })
        }

        fn note(&self, line: String) {
            self.log.lock().unwrap().push(line);
        }

        fn log(&self) -> Vec<String> {
            self.log.lock().unwrap().clone()
        }

        fn fsync(&self, _folder: &FsPath) -> io::Result<()> {
            let number = {
                let mut log = self.log.lock().unwrap();
                let number = log.iter().filter(|l| l.ends_with(" started")).count() + 1;
                log.push(format!("sync {number} started"));
                number
            };
            if number == 1 {
                self.door.pass();
            }
            self.note(format!("sync {number} ended"));
            if number == self.failing {
                Err(io::Error::other("the disk went away"))
            } else {
                Ok(())
            }
        }

        /// `caller` calls `sync.sync` on a thread of its own, which notes what it returned.
        fn call(
            self: &Arc<Self>,
            sync: &Arc<FolderSync>,
            caller: &'static str,
        ) -> std::thread::JoinHandle<()> {
            let (syncs, sync) = (self.clone(), sync.clone());
            std::thread::spawn(move || {
                let result = sync.sync(FsPath::new("/unused"), |f| syncs.fsync(f));
                let said = match result {
                    Ok(()) => "ok".to_string(),
                    Err(e) => e.to_string(),
                };
                syncs.note(format!("{caller} returned {said}"));
            })
        }
    }

    /// Sync 1 (of caller A) is under way and held; B and C called while it ran and wait.
    fn two_callers_during_sync_one(
        syncs: &Arc<Syncs>,
    ) -> (Arc<FolderSync>, Vec<std::thread::JoinHandle<()>>) {
        let sync = Arc::new(FolderSync::default());
        let a = syncs.call(&sync, "A");
        wait_until("sync 1 to start", || {
            syncs.log().contains(&"sync 1 started".into())
        });
        let b = syncs.call(&sync, "B");
        let c = syncs.call(&sync, "C");
        wait_until("B and C to wait", || {
            sync.state.lock().unwrap().waiting == 2
        });
        (sync, vec![a, b, c])
    }

    #[test]
    fn a_folder_sync_covers_only_callers_that_came_before_it_started() {
        let syncs = Syncs::new(0);
        let (sync, callers) = two_callers_during_sync_one(&syncs);
        syncs.door.open();
        for caller in callers {
            caller.join().unwrap();
        }
        let log = syncs.log();
        let a = log.iter().position(|l| l == "A returned ok").unwrap();
        assert!(a > 1, "A returns once its sync ended: {log:?}");
        let others: Vec<&String> = log.iter().filter(|l| !l.starts_with("A ")).collect();
        // B and C came while sync 1 ran: it does not cover them; one sync 2, started after
        // both came, covers both.
        assert_eq!(
            others[..4],
            [
                "sync 1 started",
                "sync 1 ended",
                "sync 2 started",
                "sync 2 ended"
            ],
            "{log:?}"
        );
        let mut after: Vec<&String> = others[4..].to_vec();
        after.sort();
        assert_eq!(after, ["B returned ok", "C returned ok"], "{log:?}");
        // One caller alone: a sync of its own, at once.
        syncs.call(&sync, "D").join().unwrap();
        assert_eq!(
            syncs.log()[log.len()..],
            ["sync 3 started", "sync 3 ended", "D returned ok"]
        );
    }

    #[test]
    fn a_failed_folder_sync_fails_every_caller_it_would_have_covered() {
        let syncs = Syncs::new(2);
        let (sync, callers) = two_callers_during_sync_one(&syncs);
        syncs.door.open();
        for caller in callers {
            caller.join().unwrap();
        }
        let log = syncs.log();
        for line in [
            "A returned ok",
            "B returned the disk went away",
            "C returned the disk went away",
        ] {
            assert!(log.contains(&line.to_string()), "{line}: {log:?}");
        }
        assert_eq!(log.iter().filter(|l| l.ends_with(" started")).count(), 2);
        // A later caller is covered by a later sync, which succeeds.
        syncs.call(&sync, "D").join().unwrap();
        assert_eq!(syncs.log().last().unwrap(), "D returned ok");
        // A caller that sync 2 covers, finding only after sync 3 succeeded that it ended, is
        // still told of sync 2's failure.
        let failed_two = FolderState {
            started: 3,
            completed: 3,
            failed: Some((2, io::ErrorKind::Other, "the disk went away".into())),
            ..FolderState::default()
        };
        assert_eq!(
            failed_two.outcome(2).unwrap().unwrap_err().to_string(),
            "the disk went away"
        );
        assert!(failed_two.outcome(3).unwrap().is_ok());
        assert!(failed_two.outcome(4).is_none(), "sync 4 has not ended");
    }

    /// Local storage whose folder syncs are noted in the returned list (and done), and
    /// fail for the folders in `failing` once each.
    fn noting_syncs(root: &FsPath, failing: &[PathBuf]) -> (Storage, Arc<Mutex<Vec<PathBuf>>>) {
        let synced = Arc::new(Mutex::new(Vec::new()));
        let failing = Mutex::new(failing.to_vec());
        let noted = synced.clone();
        let disk = Disk {
            sync_folder: Box::new(move |folder: &FsPath| {
                noted.lock().unwrap().push(folder.to_path_buf());
                let mut failing = failing.lock().unwrap();
                if let Some(i) = failing.iter().position(|f| f == folder) {
                    failing.remove(i);
                    return Err(io::Error::other("the disk went away"));
                }
                sync_folder(folder)
            }),
            ..Disk::default()
        };
        (local_storage(root, disk), synced)
    }

    #[tokio::test]
    async fn every_upload_into_a_new_folder_syncs_the_folders_above_until_one_has() {
        let root = temp_folder("parents");
        let folder = root.join("7");
        let (storage, synced) = noting_syncs(&root, std::slice::from_ref(&root));
        let take = || std::mem::take(&mut *synced.lock().unwrap());
        // The first upload creates the folder (its first megabyte is written) and goes on.
        let mut first = storage.upload("7/first.mp4").await.unwrap();
        first
            .write(&Bytes::from(vec![1; LOCAL_BUFFER]))
            .await
            .unwrap();
        assert!(folder.is_dir());
        assert!(take().is_empty(), "nothing synced before a finish");
        // A second upload into it is done first: it syncs its folder, and the storage root
        // (where the folder's entry is), which fails: it fails too, and leaves nothing.
        let mut second = storage.upload("7/second.mp4").await.unwrap();
        second.write(&Bytes::from_static(b"second")).await.unwrap();
        let error = second.finish().await.unwrap_err().to_string();
        assert!(error.contains("the disk went away"), "{error}");
        assert_eq!(take(), [folder.clone(), root.clone()]);
        assert!(!folder.join("second.mp4").exists());
        // So the next one to finish syncs the root again (now it works) ...
        let mut third = storage.upload("7/third.mp4").await.unwrap();
        third.write(&Bytes::from_static(b"third")).await.unwrap();
        third.finish().await.unwrap();
        assert_eq!(take(), [folder.clone(), root.clone()]);
        // ... and after that, only the folder is synced.
        first.finish().await.unwrap();
        assert_eq!(take(), vec![folder.clone()]);
        assert_eq!(
            fs::read(folder.join("first.mp4")).unwrap(),
            vec![1; LOCAL_BUFFER]
        );
        // A folder two levels down has both levels above it synced.
        let mut deep = storage.upload("8/9/deep.mp4").await.unwrap();
        deep.write(&Bytes::from_static(b"deep")).await.unwrap();
        deep.finish().await.unwrap();
        assert_eq!(take(), [root.join("8/9"), root.join("8"), root.clone()]);
        fs::remove_dir_all(&root).unwrap();
    }

    /// Starts finishing an upload of `bytes` to `key`: once this returns, its file waits in
    /// line for a group write.
    async fn finishing(
        storage: &Storage,
        key: &str,
        bytes: &[u8],
    ) -> tokio::task::JoinHandle<object_store::Result<StoredAsset>> {
        let mut upload = storage.upload(key).await.unwrap();
        upload.write(&Bytes::copy_from_slice(bytes)).await.unwrap();
        let mut finish = Box::pin(upload.finish());
        assert!(
            futures::poll!(&mut finish).is_pending(),
            "{key} waits its turn"
        );
        tokio::spawn(finish)
    }

    /// A disk for the group tests: the creation of the file named `hold` waits at `door`
    /// (and notes that it got there in `reached`); the file named `bad` is created, then its
    /// write fails (a handle that cannot write); every folder sync is noted in `synced`, and
    /// the syncs of a folder named `failing` fail.
    #[derive(Default)]
    struct GroupDisk {
        door: Arc<Door>,
        reached: Arc<std::sync::atomic::AtomicBool>,
        synced: Arc<Mutex<Vec<PathBuf>>>,
    }

    impl GroupDisk {
        fn disk(&self, hold: &'static str, bad: &'static str, failing: &'static str) -> Disk {
            let (held, at_door, noted) =
                (self.door.clone(), self.reached.clone(), self.synced.clone());
            Disk {
                create: Box::new(move |root: &FsPath, path: &FsPath| {
                    if path.ends_with(hold) {
                        at_door.store(true, Ordering::SeqCst);
                        held.pass();
                    } else if path.ends_with(bad) {
                        create_new(root, path)?;
                        return fs::File::open(path);
                    }
                    create_new(root, path)
                }),
                sync_folder: Box::new(move |f: &FsPath| {
                    noted.lock().unwrap().push(f.to_path_buf());
                    if f.ends_with(failing) {
                        return Err(io::Error::other("the disk went away"));
                    }
                    sync_folder(f)
                }),
                ..Disk::default()
            }
        }

        /// Waits until the held file's creation has reached the door.
        async fn held(&self) {
            while !self.reached.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }

        /// The folder syncs noted since the last call.
        fn syncs(&self) -> Vec<PathBuf> {
            std::mem::take(&mut *self.synced.lock().unwrap())
        }
    }

    #[tokio::test]
    async fn small_files_that_finish_together_are_synced_together_and_fail_alone() {
        let root = temp_folder("groups");
        let folder = root.join("g");
        // One group write at a time: the first file's group is held at its creation while
        // the others finish, so they wait in line and go together in the next group.
        let groups = GroupDisk::default();
        let storage = local_storage(&root, groups.disk("first.mp4", "bad.mp4", "no such"));
        let opener = OpenOnDrop(groups.door.clone());
        let first = finishing(&storage, "g/first.mp4", b"first").await;
        groups.held().await;
        let waiting = [
            finishing(&storage, "g/a.mp4", b"a").await,
            finishing(&storage, "g/bad.mp4", b"bad").await,
            finishing(&storage, "g/b.mp4", b"b").await,
        ];
        drop(opener);
        first.await.unwrap().unwrap();
        let [a, bad, b] = waiting;
        a.await.unwrap().unwrap();
        b.await.unwrap().unwrap();
        bad.await.unwrap().unwrap_err();
        assert!(
            !folder.join("bad.mp4").exists(),
            "a file created, then failed, is not kept"
        );
        for name in ["first", "a", "b"] {
            assert_eq!(
                fs::read(folder.join(format!("{name}.mp4"))).unwrap(),
                name.as_bytes()
            );
        }
        // The first group synced the new folder and the root above it; the second synced
        // the folder once for its two good files (one call per file, as before, makes more).
        assert_eq!(
            groups.syncs(),
            [folder.clone(), root.clone(), folder.clone()]
        );

        // A folder whose sync fails fails every file of the group in it, and none is kept.
        let groups = GroupDisk::default();
        let storage = local_storage(&root, groups.disk("hold.mp4", "no such", "h"));
        let opener = OpenOnDrop(groups.door.clone());
        let hold = finishing(&storage, "other/hold.mp4", b"hold").await;
        groups.held().await;
        let lost = [
            finishing(&storage, "h/c.mp4", b"c").await,
            finishing(&storage, "h/d.mp4", b"d").await,
        ];
        drop(opener);
        hold.await.unwrap().unwrap();
        for upload in lost {
            let error = upload.await.unwrap().unwrap_err().to_string();
            assert!(error.contains("the disk went away"), "{error}");
        }
        assert_eq!(files_in(&root.join("h")), Vec::<PathBuf>::new());
        let h = root.join("h");
        let syncs_of_h = groups.syncs().iter().filter(|f| **f == h).count();
        assert_eq!(
            syncs_of_h, 1,
            "one sync of the folder for the group's two files"
        );
        fs::remove_dir_all(&root).unwrap();
    }

    /// Everything `key` holds, read whole.
    async fn read_back(storage: &Storage, key: &str) -> (u64, Vec<u8>) {
        let (size, stream) = storage.read_whole(key).await.unwrap();
        let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
        (size, chunks.concat())
    }

    #[tokio::test]
    async fn small_files_that_finish_together_share_one_pack_and_read_back_alone() {
        let root = temp_folder("packs");
        // One group write at a time, its first pack's creation held while the others finish:
        // they wait in line and go together into the next pack.
        let door = Arc::new(Door::default());
        let created = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (held, counted) = (door.clone(), created.clone());
        let disk = Disk {
            create: Box::new(move |root: &FsPath, path: &FsPath| {
                if counted.fetch_add(1, Ordering::SeqCst) == 0 {
                    held.pass();
                }
                create_new(root, path)
            }),
            ..Disk::default()
        };
        let storage = storage_keeping(&root, disk, SmallFiles::Packed);
        let opener = OpenOnDrop(door);
        let first = finishing(&storage, "1/first.mp4", b"first").await;
        while created.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let waiting = [
            finishing(&storage, "1/a.mp4", b"aa").await,
            finishing(&storage, "2/b.webm", b"bbb").await,
        ];
        drop(opener);
        let first = first.await.unwrap().unwrap();
        let [a, b] = waiting;
        let (a, b) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());

        let Location::Packed { pack, .. } = Location::of(&first.key) else {
            panic!("{} is not packed", first.key)
        };
        let Location::Packed { pack: together, .. } = Location::of(&a.key) else {
            panic!("{} is not packed", a.key)
        };
        assert_ne!(pack, together, "a pack per group");
        assert_eq!(
            [Location::of(&a.key), Location::of(&b.key)],
            [
                Location::Packed {
                    pack: together,
                    offset: 0,
                    len: 2
                },
                Location::Packed {
                    pack: together,
                    offset: 2,
                    len: 3
                },
            ]
        );
        // Two pack files and nothing else: no file per upload.
        let mut packs = files_in(&root);
        packs.sort();
        let mut expected = vec![root.join(pack), root.join(together)];
        expected.sort();
        assert_eq!(packs, expected);
        assert_eq!(fs::read(root.join(together)).unwrap(), b"aabbb");

        // Each reads back alone, whole or in part, by every read the storage has.
        assert_eq!(
            read_back(&storage, &first.key).await,
            (5, b"first".to_vec())
        );
        assert_eq!(read_back(&storage, &a.key).await, (2, b"aa".to_vec()));
        assert_eq!(read_back(&storage, &b.key).await, (3, b"bbb".to_vec()));
        let part: Vec<Bytes> = storage
            .stream(&b.key, Some(1..3))
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(part.concat(), b"bb");
        assert_eq!(storage.read(&a.key, 1..2).await.unwrap(), &b"a"[..]);
        // A range past the asset's end stops at its end, never in its neighbour's bytes.
        assert_eq!(storage.read(&a.key, 0..10).await.unwrap(), &b"aa"[..]);

        // Removing one asset of a pack leaves the pack (and its neighbours) alone; removing
        // a pack's only asset removes the pack.
        storage.remove(&a.key).await;
        assert_eq!(read_back(&storage, &b.key).await, (3, b"bbb".to_vec()));
        storage.remove(&first.key).await;
        assert!(!root.join(pack).exists(), "a pack of one goes with it");

        // A pack cut short: its assets' sizes say what is left of them (as a short file's
        // size does), down to nothing; a missing pack is a missing object.
        let cut = |len| {
            let file = fs::OpenOptions::new().write(true).open(root.join(together));
            file.unwrap().set_len(len).unwrap();
        };
        cut(3);
        assert_eq!(read_back(&storage, &a.key).await, (2, b"aa".to_vec()));
        assert_eq!(read_back(&storage, &b.key).await, (1, b"b".to_vec()));
        cut(1);
        assert_eq!(read_back(&storage, &b.key).await, (0, Vec::new()));
        fs::remove_file(root.join(together)).unwrap();
        assert!(matches!(
            storage.read_whole(&b.key).await.map(|_| ()),
            Err(object_store::Error::NotFound { .. })
        ));
        fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test]
    async fn a_pack_whose_sync_fails_fails_every_upload_in_it_and_is_not_kept() {
        let root = temp_folder("failing-pack");
        let disk = Disk {
            sync_folder: Box::new(|f: &FsPath| {
                if f.ends_with(PACK_FOLDER) {
                    return Err(io::Error::other("the disk went away"));
                }
                sync_folder(f)
            }),
            ..Disk::default()
        };
        let storage = storage_keeping(&root, disk, SmallFiles::Packed);
        let error = finishing(&storage, "1/c.mp4", b"c")
            .await
            .await
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(error.contains("the disk went away"), "{error}");
        assert_eq!(files_in(&root), Vec::<PathBuf>::new(), "nothing is kept");
        fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test]
    async fn videos_moved_into_a_new_pack_read_back_from_it_alone() {
        let root = temp_folder("repack");
        let storage = storage_keeping(&root, Disk::default(), SmallFiles::Packed);
        let keys = storage
            .pack(&[
                Bytes::from_static(b"kept"),
                Bytes::new(),
                Bytes::from_static(b"also kept"),
            ])
            .await
            .unwrap();
        let Location::Packed { pack, .. } = Location::of(&keys[0]) else {
            panic!("{} is not packed", keys[0])
        };
        assert!(Location::is_pack(pack), "{pack}");
        assert_eq!(files_in(&root), [root.join(pack)], "one new pack");
        assert_eq!(fs::read(root.join(pack)).unwrap(), b"keptalso kept");
        assert_eq!(read_back(&storage, &keys[0]).await, (4, b"kept".to_vec()));
        assert_eq!(read_back(&storage, &keys[1]).await, (0, Vec::new()));
        assert_eq!(
            read_back(&storage, &keys[2]).await,
            (9, b"also kept".to_vec())
        );

        // Where small videos are not packed, nothing is written.
        let files = local_storage(&root, Disk::default());
        assert!(!files.packs_small_files());
        assert!(files.pack(&[Bytes::from_static(b"x")]).await.is_err());
        assert_eq!(files_in(&root).len(), 1);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_listed_object_is_a_pack_only_in_the_packs_folder_and_form() {
        assert!(Location::is_pack("packs/x1.pack"));
        for object in [
            "packs/x1.pack@0+1",
            "packs/.pack",
            "packs/x1.mp4",
            "packsx/x1.pack",
            "1/x1.pack",
            "packs",
        ] {
            assert!(!Location::is_pack(object), "{object}");
        }
    }

    #[test]
    fn a_key_names_a_range_of_a_pack_only_in_the_packs_own_form() {
        assert_eq!(
            Location::of("packs/x1.pack@32768+16384"),
            Location::Packed {
                pack: "packs/x1.pack",
                offset: 32768,
                len: 16384
            }
        );
        assert_eq!(Location::of("packs/x1.pack@0+1").object(), "packs/x1.pack");
        for object in [
            "1/q8w7e6r5t4y3u2i1.mp4",
            "1/a@b.mp4",
            "packs/x.pack",
            "packs/x.pack@1+",
            "packs/x.pack@+1",
            "packs/x.pack@1+-2",
            "packs/x.pack@1+2+3",
            "other/x.pack@1+2",
            "packsx/y.pack@1+2",
            "packs/x.mp4@1+2",
        ] {
            assert_eq!(Location::of(object), Location::Object(object), "{object}");
            assert_eq!(Location::of(object).object(), object);
        }
    }

    #[tokio::test]
    async fn an_upload_abandoned_while_its_file_is_being_created_leaves_no_file() {
        let root = temp_folder("abandoned");
        let door = Arc::new(Door::default());
        let held = door.clone();
        let disk = Disk {
            create: Box::new(move |root: &FsPath, path: &FsPath| {
                held.pass();
                create_new(root, path)
            }),
            ..Disk::default()
        };
        let storage = local_storage(&root, disk);
        let opener = OpenOnDrop(door);
        let mut upload = storage.upload("7/abandoned.mp4").await.unwrap();
        // Its first megabyte goes to the blocking pool, which creates the file: held there,
        // the write is still under way when its download times out (its future is dropped).
        let chunk = Bytes::from(vec![1; LOCAL_BUFFER]);
        assert!(upload.write(&chunk).now_or_never().is_none());
        let abort = tokio::spawn(upload.abort());
        // The abort waits for that write rather than removing a file not there yet.
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert!(!abort.is_finished(), "the abort did not wait for the write");
        }
        drop(opener);
        abort.await.unwrap();
        assert_eq!(files_in(&root), Vec::<PathBuf>::new(), "nothing is left");
        fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test]
    async fn a_local_upload_stores_what_was_written() {
        let root = temp_folder("upload");
        let storage = local_storage(&root, Disk::default());
        let bytes: Vec<u8> = (0..LOCAL_BUFFER * 5 / 2).map(|i| (i % 251) as u8).collect();
        // Odd chunks that straddle the buffer's end, and one larger than the whole buffer.
        for (name, size) in [("3/odd.mp4", 300 * 1024 + 7), ("3/whole.mp4", bytes.len())] {
            let mut upload = storage.upload(name).await.unwrap();
            for chunk in bytes.chunks(size) {
                upload.write(&Bytes::copy_from_slice(chunk)).await.unwrap();
                if let Sink::Local(local) = &upload.sink {
                    assert!(local.pending.capacity() <= LOCAL_BUFFER, "{name}");
                }
                assert!(upload.head.capacity() <= HEAD_KEPT, "{name}");
            }
            let stored = upload.finish().await.unwrap();
            assert_eq!(stored.size, bytes.len() as u64);
            assert_eq!(stored.sha256, hex::encode(Sha256::digest(&bytes)));
            assert_eq!(stored.md5, hex::encode(md5::Md5::digest(&bytes)), "{name}");
            assert_eq!(stored.head.0, bytes[..HEAD_KEPT]);
            assert_eq!(fs::read(root.join(name)).unwrap(), bytes, "{name}");
        }
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_buffer_grows_like_a_vec_but_never_past_its_limit() {
        let mut buffer = Vec::new();
        let mut capacities = vec![];
        for _ in 0..10 {
            append_within(&mut buffer, &[7; 100_001], 1_000_010);
            capacities.push(buffer.capacity());
        }
        assert_eq!(buffer.len(), 1_000_010);
        assert!(capacities.iter().all(|c| *c <= 1_000_010), "{capacities:?}");
        capacities.dedup();
        // Grown by doubling (100k, 200k, 400k, 800k, the limit), not once per append.
        assert_eq!(capacities.len(), 5, "{capacities:?}");
    }

    #[test]
    fn the_prefix_is_the_urls_path_without_slashes() {
        assert_eq!(bucket_prefix("s3://bucket"), "");
        assert_eq!(bucket_prefix("s3://bucket/"), "");
        assert_eq!(bucket_prefix("s3://bucket/videos"), "videos");
        assert_eq!(bucket_prefix("s3://bucket/a/b/"), "a/b");
    }
}
