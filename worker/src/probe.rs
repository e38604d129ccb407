//! Technical metadata (duration, frame size, codec) read from a stored video without loading
//! it whole: MP4/MOV by walking box headers with range reads and parsing only `moov`;
//! Matroska/WebM from the `Info` and `Tracks` elements at the start of the file. (The MP4 and
//! Matroska crates want a seekable reader over the whole file; this needs a few range reads.)

use bytes::Bytes;
use serde::Serialize;

use video_import_shared::storage::Storage;

/// Largest `moov` box read into memory.
const MAX_MOOV: u64 = 64 * 1024 * 1024;
/// Bytes of a Matroska file searched for `Info` and `Tracks`.
const MATROSKA_HEAD: u64 = 512 * 1024;
/// Top-level MP4 boxes looked at before giving up (real files have a handful): a file of
/// millions of tiny boxes must not cost millions of range reads.
const MAX_TOP_LEVEL_BOXES: usize = 64;

/// What could be learned about the video; a field is `None` when the container did not say.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TechMeta {
    pub duration_seconds: Option<f64>,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub codec: Option<String>,
}

/// The stored object being inspected: read from the bytes the upload kept where they
/// suffice (every small video, and the `moov` of most), from storage otherwise.
struct Stored<'a> {
    storage: &'a Storage,
    key: &'a str,
    head: &'a Bytes,
}

impl Stored<'_> {
    async fn read(&self, range: std::ops::Range<u64>) -> Result<Bytes, String> {
        if range.end <= self.head.len() as u64 {
            return Ok(self.head.slice(range.start as usize..range.end as usize));
        }
        self.storage
            .read(self.key, range)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Reads the metadata of the stored object `key` of `size` bytes whose first bytes are
/// `head`; never fails the import.
pub async fn inspect(
    storage: &Storage,
    key: &str,
    head: &Bytes,
    size: u64,
    mime_type: &str,
) -> TechMeta {
    let stored = Stored { storage, key, head };
    let result = match mime_type {
        "video/mp4" | "video/quicktime" | "video/x-m4v" | "video/3gpp" => {
            inspect_mp4(&stored, size).await
        }
        "video/webm" | "video/x-matroska" => stored
            .read(0..size.min(MATROSKA_HEAD))
            .await
            .map(|head| matroska(&head)),
        _ => Ok(TechMeta::default()),
    };
    result.unwrap_or_else(|error| {
        tracing::warn!(key, %error, "could not read the video's technical metadata");
        TechMeta::default()
    })
}

async fn inspect_mp4(stored: &Stored<'_>, size: u64) -> Result<TechMeta, String> {
    let mut offset = 0u64;
    for _ in 0..MAX_TOP_LEVEL_BOXES {
        if offset + 8 > size {
            return Err("no moov box".into());
        }
        let header = stored.read(offset..(offset + 16).min(size)).await?;
        let (box_size, header_len) = box_size(&header, size - offset)?;
        if &header[4..8] == b"moov" {
            if box_size > MAX_MOOV {
                return Err(format!("moov box of {box_size} bytes is too large"));
            }
            let moov = stored.read(offset + header_len..offset + box_size).await?;
            return Ok(mp4_moov(&moov));
        }
        offset += box_size;
    }
    Err(format!(
        "no moov box among the first {MAX_TOP_LEVEL_BOXES} boxes"
    ))
}

/// Size of the box at the start of `header` and the length of its header.
fn box_size(header: &[u8], remaining: u64) -> Result<(u64, u64), String> {
    if header.len() < 8 {
        return Err("truncated box header".into());
    }
    let size = u32::from_be_bytes(header[0..4].try_into().unwrap()) as u64;
    let (size, len) = match size {
        0 => (remaining, 8),
        1 if header.len() >= 16 => (u64::from_be_bytes(header[8..16].try_into().unwrap()), 16),
        s => (s, 8),
    };
    if size < len {
        return Err(format!("invalid box size {size}"));
    }
    Ok((size, len))
}

/// Child boxes of `data` as (type, body).
fn boxes(data: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut rest = data;
    std::iter::from_fn(move || {
        let (size, len) = box_size(rest, rest.len() as u64).ok()?;
        let size = usize::try_from(size).ok()?;
        if size > rest.len() {
            return None;
        }
        let (kind, body) = (&rest[4..8], &rest[len as usize..size]);
        rest = &rest[size..];
        Some((kind, body))
    })
}

fn child<'a>(data: &'a [u8], kind: &[u8]) -> Option<&'a [u8]> {
    boxes(data).find(|(k, _)| *k == kind).map(|(_, b)| b)
}

fn be_u32(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

fn be_u64(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(data.get(at..at + 8)?.try_into().ok()?))
}

/// Parses `moov`: duration from `mvhd`, size from the video track's `tkhd`, codec from `stsd`.
fn mp4_moov(moov: &[u8]) -> TechMeta {
    let mut meta = TechMeta::default();
    if let Some(mvhd) = child(moov, b"mvhd") {
        let (timescale, duration) = if mvhd.first() == Some(&1) {
            (be_u32(mvhd, 20), be_u64(mvhd, 24))
        } else {
            (be_u32(mvhd, 12), be_u32(mvhd, 16).map(u64::from))
        };
        if let (Some(t), Some(d)) = (timescale, duration) {
            if t > 0 && d != u64::MAX && d != u32::MAX as u64 {
                meta.duration_seconds = Some(d as f64 / t as f64);
            }
        }
    }
    for (kind, trak) in boxes(moov) {
        if kind != b"trak" {
            continue;
        }
        let Some(mdia) = child(trak, b"mdia") else {
            continue;
        };
        let is_video = child(mdia, b"hdlr").and_then(|h| h.get(8..12)) == Some(b"vide");
        if !is_video {
            continue;
        }
        if let Some(tkhd) = child(trak, b"tkhd") {
            let at = if tkhd.first() == Some(&1) { 88 } else { 76 };
            meta.width = be_u32(tkhd, at)
                .map(|w| (w >> 16) as i32)
                .filter(|w| *w > 0);
            meta.height = be_u32(tkhd, at + 4)
                .map(|h| (h >> 16) as i32)
                .filter(|h| *h > 0);
        }
        let stsd = child(mdia, b"minf")
            .and_then(|m| child(m, b"stbl"))
            .and_then(|s| child(s, b"stsd"));
        if let Some(entry) = stsd.and_then(|s| s.get(8..)) {
            if let Some(fourcc) = entry.get(4..8) {
                meta.codec = Some(mp4_codec(fourcc));
            }
            // Visual sample entry: coded width and height at bytes 32..36.
            if meta.width.is_none() {
                meta.width = entry
                    .get(32..34)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]) as i32);
                meta.height = entry
                    .get(34..36)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]) as i32);
            }
        }
        break;
    }
    meta
}

fn mp4_codec(fourcc: &[u8]) -> String {
    match fourcc {
        b"avc1" | b"avc3" => "h264".into(),
        b"hvc1" | b"hev1" => "hevc".into(),
        b"av01" => "av1".into(),
        b"vp09" => "vp9".into(),
        b"mp4v" => "mpeg4".into(),
        b"apch" | b"apcn" | b"apcs" | b"apco" | b"ap4h" => "prores".into(),
        other => String::from_utf8_lossy(other).trim().to_string(),
    }
}

/// An EBML variable-length integer: (value without the length marker, length).
fn vint(data: &[u8]) -> Option<(u64, usize)> {
    let first = *data.first()?;
    let len = first.leading_zeros() as usize + 1;
    if len > 8 || data.len() < len {
        return None;
    }
    let mut value = (first as u64) & (0xFF >> len);
    for b in &data[1..len] {
        value = (value << 8) | *b as u64;
    }
    Some((value, len))
}

/// An element ID keeps its marker bits.
fn element_id(data: &[u8]) -> Option<(u32, usize)> {
    let (_, len) = vint(data)?;
    let mut id = 0u32;
    for b in &data[..len.min(4)] {
        id = (id << 8) | *b as u32;
    }
    Some((id, len))
}

/// Elements of `data` as (id, body); a body of unknown size runs to the end of `data`.
fn elements(data: &[u8]) -> impl Iterator<Item = (u32, &[u8])> {
    let mut rest = data;
    std::iter::from_fn(move || {
        let (id, id_len) = element_id(rest)?;
        let (size, size_len) = vint(&rest[id_len..])?;
        let start = id_len + size_len;
        let unknown = size == (1u64 << (7 * size_len)) - 1;
        let end = if unknown {
            rest.len()
        } else {
            start
                .checked_add(usize::try_from(size).ok()?)?
                .min(rest.len())
        };
        let body = &rest[start..end];
        rest = &rest[end..];
        Some((id, body))
    })
}

fn uint(body: &[u8]) -> u64 {
    body.iter().take(8).fold(0, |v, b| (v << 8) | *b as u64)
}

fn float(body: &[u8]) -> Option<f64> {
    match body.len() {
        4 => Some(f32::from_be_bytes(body.try_into().ok()?) as f64),
        8 => Some(f64::from_be_bytes(body.try_into().ok()?)),
        _ => None,
    }
}

/// Parses `Info` (duration) and the first video `TrackEntry` (size, codec).
fn matroska(data: &[u8]) -> TechMeta {
    const SEGMENT: u32 = 0x1853_8067;
    const INFO: u32 = 0x1549_A966;
    const TRACKS: u32 = 0x1654_AE6B;
    const CLUSTER: u32 = 0x1F43_B675;
    let mut meta = TechMeta::default();
    let Some((_, segment)) = elements(data).find(|(id, _)| *id == SEGMENT) else {
        return meta;
    };
    for (id, body) in elements(segment) {
        match id {
            INFO => {
                let mut scale = 1_000_000u64;
                let mut duration = None;
                for (id, value) in elements(body) {
                    match id {
                        0x2A_D7B1 => scale = uint(value),
                        0x4489 => duration = float(value),
                        _ => {}
                    }
                }
                meta.duration_seconds = duration.map(|d| d * scale as f64 / 1e9);
            }
            TRACKS => {
                for (_, entry) in elements(body).filter(|(id, _)| *id == 0xAE) {
                    let mut video = false;
                    let mut codec = None;
                    let mut size = (None, None);
                    for (id, value) in elements(entry) {
                        match id {
                            0x83 => video = uint(value) == 1,
                            0x86 => codec = Some(String::from_utf8_lossy(value).to_string()),
                            0xE0 => {
                                for (id, v) in elements(value) {
                                    match id {
                                        0xB0 => size.0 = Some(uint(v) as i32),
                                        0xBA => size.1 = Some(uint(v) as i32),
                                        _ => {}
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                    if video {
                        meta.codec = codec.map(|c| matroska_codec(&c));
                        (meta.width, meta.height) = size;
                        break;
                    }
                }
            }
            CLUSTER => break,
            _ => {}
        }
    }
    meta
}

fn matroska_codec(id: &str) -> String {
    match id {
        "V_VP8" => "vp8".into(),
        "V_VP9" => "vp9".into(),
        "V_AV1" => "av1".into(),
        "V_MPEG4/ISO/AVC" => "h264".into(),
        "V_MPEGH/ISO/HEVC" => "hevc".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/../tests/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    #[test]
    fn reads_an_mp4_made_by_ffmpeg() {
        let file = fixture("sample.mp4");
        let moov = boxes(&file).find(|(k, _)| *k == b"moov").unwrap().1;
        let meta = mp4_moov(moov);
        assert_eq!(meta.width, Some(64));
        assert_eq!(meta.height, Some(48));
        assert_eq!(meta.codec.as_deref(), Some("h264"));
        let d = meta.duration_seconds.unwrap();
        assert!((d - 1.0).abs() < 0.05, "{d}");
    }

    #[test]
    fn reads_a_webm_made_by_ffmpeg() {
        let meta = matroska(&fixture("sample.webm"));
        assert_eq!(meta.width, Some(64));
        assert_eq!(meta.height, Some(48));
        assert_eq!(meta.codec.as_deref(), Some("vp8"));
        let d = meta.duration_seconds.unwrap();
        assert!((d - 1.0).abs() < 0.05, "{d}");
    }

    /// `file` with one random kind of damage: flipped bytes, a cut, a box or element size
    /// overwritten with an extreme value, or a slice repeated.
    fn mutate(file: &[u8], rng: &mut impl rand::Rng) -> Vec<u8> {
        let mut out = file.to_vec();
        let at = rng.random_range(0..out.len());
        match rng.random_range(0..4) {
            0 => {
                for _ in 0..rng.random_range(1..8) {
                    let i = rng.random_range(0..out.len());
                    out[i] ^= 1 << rng.random_range(0..8);
                }
            }
            1 => out.truncate(at),
            2 => {
                let value: u32 = [0, 1, 7, 8, 9, 0x7FFF_FFFF, u32::MAX][rng.random_range(0..7)];
                for (i, b) in value.to_be_bytes().iter().enumerate() {
                    if let Some(slot) = out.get_mut(at + i) {
                        *slot = *b;
                    }
                }
            }
            _ => {
                let end = (at + rng.random_range(1..64)).min(out.len());
                let slice = out[at..end].to_vec();
                out.splice(at..at, slice);
            }
        }
        out
    }

    /// Local storage in a fresh folder of its own.
    async fn temp_storage() -> (Storage, std::path::PathBuf) {
        let root =
            std::env::temp_dir().join(format!("probe-{}", video_import_shared::ids::random_id(8)));
        let storage = Storage::open(&video_import_shared::config::StorageSettings {
            root: root.display().to_string(),
            ..video_import_shared::config::Settings::default().storage
        })
        .await
        .unwrap();
        (storage, root)
    }

    /// Mutated real files: the parsers neither panic nor hang, and the box walk stays
    /// within its bound of range reads.
    #[tokio::test]
    async fn mutated_files_never_panic_or_hang() {
        use rand::SeedableRng;

        let (storage, root) = temp_storage().await;
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        for (name, mime) in [
            ("sample.mp4", "video/mp4"),
            ("other.mp4", "video/mp4"),
            ("sample.webm", "video/webm"),
        ] {
            let file = fixture(name);
            for case in 0..300 {
                let bad = mutate(&file, &mut rng);
                let _ = crate::sniff::detect(&bad[..bad.len().min(crate::sniff::SNIFF_BYTES)]);
                let key = format!("m/{name}/{case}");
                let mut upload = storage.upload(&key).await.unwrap();
                upload
                    .write(&bytes::Bytes::copy_from_slice(&bad))
                    .await
                    .unwrap();
                let stored = upload.finish().await.unwrap();
                // Every other case reads storage rather than the kept head.
                let head = if case % 2 == 0 {
                    stored.head.0
                } else {
                    Bytes::new()
                };
                let inspected = inspect(&storage, &key, &head, bad.len() as u64, mime);
                tokio::time::timeout(std::time::Duration::from_secs(5), inspected)
                    .await
                    .unwrap_or_else(|_| panic!("{name} case {case} hung"));
            }
        }
        let _ = std::fs::remove_dir_all(&root);
    }

    #[tokio::test]
    async fn a_file_of_tiny_boxes_costs_a_bounded_number_of_reads() {
        let (storage, root) = temp_storage().await;
        // A million empty `free` boxes, then a `moov` that is never reached.
        let mut file = [0, 0, 0, 8, b'f', b'r', b'e', b'e'].repeat(1_000_000);
        file.extend_from_slice(&fixture("sample.mp4"));
        let mut upload = storage.upload("tiny").await.unwrap();
        upload
            .write(&bytes::Bytes::copy_from_slice(&file))
            .await
            .unwrap();
        upload.finish().await.unwrap();
        let stored = Stored {
            storage: &storage,
            key: "tiny",
            head: &Bytes::new(),
        };
        assert_eq!(
            inspect_mp4(&stored, file.len() as u64).await,
            Err("no moov box among the first 64 boxes".into())
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn garbage_gives_nothing_rather_than_a_panic() {
        assert_eq!(
            mp4_moov(&[0, 0, 0, 9, b'm', b'v', b'h', b'd', 1]),
            TechMeta::default()
        );
        assert_eq!(
            matroska(&[0x18, 0x53, 0x80, 0x67, 0xFF, 0x15]),
            TechMeta::default()
        );
        assert_eq!(matroska(b""), TechMeta::default());
    }
}
