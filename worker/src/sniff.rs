//! Telling a video from anything else by its first bytes, not by what the server claims.

/// Bytes looked at before deciding.
pub const SNIFF_BYTES: usize = 8192;

/// A recognised video container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoKind {
    pub mime_type: String,
    pub extension: String,
}

/// The video kind of `head`, or what it was detected as instead.
pub fn detect(head: &[u8]) -> Result<VideoKind, String> {
    // Ogg holding a video stream (infer calls every Ogg file audio).
    if head.starts_with(b"OggS") && head.windows(7).any(|w| w == b"\x80theora") {
        return Ok(VideoKind {
            mime_type: "video/ogg".into(),
            extension: "ogv".into(),
        });
    }
    if let Some(kind) = infer::get(head) {
        if kind.matcher_type() == infer::MatcherType::Video {
            return Ok(VideoKind {
                mime_type: kind.mime_type().to_string(),
                extension: kind.extension().to_string(),
            });
        }
        return Err(kind.mime_type().to_string());
    }
    // MPEG transport streams: a sync byte every 188 bytes (infer does not know them).
    if head.len() >= 188 * 3 && (0..3).all(|i| head[i * 188] == 0x47) {
        return Ok(VideoKind {
            mime_type: "video/mp2t".into(),
            extension: "ts".into(),
        });
    }
    Err(describe_other(head))
}

fn describe_other(head: &[u8]) -> String {
    let text = String::from_utf8_lossy(&head[..head.len().min(512)]).to_ascii_lowercase();
    let trimmed = text.trim_start();
    if trimmed.starts_with("<!doctype html") || trimmed.starts_with("<html") {
        "text/html".into()
    } else if trimmed.starts_with('{') || trimmed.starts_with('[') {
        "application/json".into()
    } else if trimmed.starts_with("<?xml") {
        "application/xml".into()
    } else if head.is_empty() {
        "an empty file".into()
    } else if std::str::from_utf8(head).is_ok() {
        "text/plain".into()
    } else {
        "application/octet-stream".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mp4_is_a_video() {
        let mut head = vec![0, 0, 0, 0x18];
        head.extend_from_slice(b"ftypisom\0\0\x02\0isomiso2");
        let kind = detect(&head).unwrap();
        assert_eq!(kind.mime_type, "video/mp4");
    }

    #[test]
    fn theora_in_ogg_is_a_video() {
        let mut head = b"OggS\0\x02".to_vec();
        head.resize(28, 0);
        head.extend_from_slice(b"\x80theora\x03\x02");
        assert_eq!(detect(&head).unwrap().mime_type, "video/ogg");
    }

    #[test]
    fn html_and_images_are_not() {
        assert_eq!(detect(b"<!DOCTYPE html><html>").unwrap_err(), "text/html");
        assert_eq!(
            detect(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR").unwrap_err(),
            "image/png"
        );
        assert_eq!(detect(b"").unwrap_err(), "an empty file");
    }
}
