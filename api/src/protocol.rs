//! Errors of the HTTP layer itself, in the API's error shape.
//!
//! hyper answers a request it cannot parse (a garbage request line, a header with bytes
//! HTTP does not allow, too many or too large headers) on its own, before any router sees
//! it, with a status line and an empty body. [`Connection`] sits between hyper and the
//! socket: when hyper writes such an automatic answer (recognisable: 400, 414 or 431, no
//! body, and no `x-request-id`, which every routed answer carries), it writes an answer in
//! the error shape instead, naming what is wrong with the request as far as the bytes
//! read tell. Afterwards the connection is closed gracefully ([`linger`]), so the client
//! reads the answer instead of a reset.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::model::ErrorBody;

/// Most header fields in one request (hyper's own limit).
pub const MAX_HEADERS: usize = 100;
/// Most bytes of a request line and its headers.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Longest request target hyper takes.
const MAX_URI_BYTES: usize = u16::MAX as usize - 1;
/// Bytes of the request being read that are kept to explain a parse error.
const KEPT_BYTES: usize = MAX_HEAD_BYTES + 1024;
/// How long a connection refused with an error answer is read (and discarded) before it is
/// closed, so that the client, still sending, reads the answer rather than a reset.
const LINGER: Duration = Duration::from_secs(1);
/// Most bytes read and discarded while lingering.
const LINGER_BYTES: usize = 1024 * 1024;

/// A client's TCP connection as hyper sees it; see the module documentation.
pub struct Connection {
    stream: Option<TcpStream>,
    /// What was read since the last answer began: the request hyper may fail to parse.
    request: Vec<u8>,
    /// The replacement answer (and whatever hyper wrote before it), still to be written.
    pending: Vec<u8>,
    written: usize,
    replaced: bool,
    /// Gets the socket back, when an answer was replaced, so it can be closed gracefully.
    give_back: Option<oneshot::Sender<TcpStream>>,
}

impl Connection {
    /// Wraps `stream`; `give_back` receives it after hyper is done with it if an error
    /// answer was written (see [`linger`]).
    pub fn new(stream: TcpStream, give_back: oneshot::Sender<TcpStream>) -> Self {
        Connection {
            stream: Some(stream),
            request: Vec::new(),
            pending: Vec::new(),
            written: 0,
            replaced: false,
            give_back: Some(give_back),
        }
    }

    fn stream(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(
            self.stream
                .as_mut()
                .expect("the stream is present until drop"),
        )
    }

    /// Writes what is pending.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let (written, pending) = (self.written, std::mem::take(&mut self.pending));
            let result = self.stream().poll_write(cx, &pending[written..]);
            self.pending = pending;
            match ready!(result)? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                n => self.written += n,
            }
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if self.replaced {
            if let (Some(stream), Some(give_back)) = (self.stream.take(), self.give_back.take()) {
                let _ = give_back.send(stream);
            }
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(this.stream().poll_read(cx, buf))?;
        let read = &buf.filled()[before..];
        let room = KEPT_BYTES.saturating_sub(this.request.len());
        this.request
            .extend_from_slice(&read[..read.len().min(room)]);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        if !this.replaced {
            if let Some((start, status)) = automatic_answer(buf) {
                this.pending = buf[..start].to_vec();
                this.pending
                    .extend_from_slice(&error_answer(status, &this.request));
                this.replaced = true;
                // Written now if the socket takes it, else by the flush hyper sends next.
                if let Poll::Ready(Err(e)) = this.drain(cx) {
                    return Poll::Ready(Err(e));
                }
                return Poll::Ready(Ok(buf.len()));
            }
        }
        // An answer is on its way: the next request starts after it.
        this.request.clear();
        this.stream().poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        this.stream().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drain(cx))?;
        this.stream().poll_shutdown(cx)
    }

    // Not vectored, so hyper hands over each answer as one buffer (its head and body
    // together), which is what `automatic_answer` looks at.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// Closes a connection after an error answer: stops writing, then reads and discards what
/// the client still sends for a moment, so that closing does not reset the connection and
/// destroy the answer before the client has read it.
pub async fn linger(mut stream: TcpStream) {
    let _ = tokio::time::timeout(LINGER, async {
        let _ = stream.shutdown().await;
        let mut scratch = [0u8; 4096];
        let mut discarded = 0;
        while discarded < LINGER_BYTES {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => discarded += n,
            }
        }
    })
    .await;
}

/// Where hyper's automatic answer to a request it could not parse starts in `buf`, and its
/// status: an answer head with status 400, 414 or 431, `content-length: 0` and no
/// `x-request-id`, at the very end of `buf` (after what remains of earlier answers).
fn automatic_answer(buf: &[u8]) -> Option<(usize, u16)> {
    if !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let start = buf.windows(9).rposition(|w| w == b"HTTP/1.1 ")?;
    let head = &buf[start..];
    if head[..head.len() - 4].windows(4).any(|w| w == b"\r\n\r\n") {
        return None;
    }
    let status: u16 = std::str::from_utf8(head.get(9..12)?).ok()?.parse().ok()?;
    if !matches!(status, 400 | 414 | 431) {
        return None;
    }
    let lower = head.to_ascii_lowercase();
    let has = |needle: &[u8]| lower.windows(needle.len()).any(|w| w == needle);
    (has(b"\r\ncontent-length: 0\r\n") && !has(b"\r\nx-request-id:")).then_some((start, status))
}

/// The answer in the error shape (with `Connection: close`) for a request hyper refused
/// with `status`; `request` is what was read of it.
pub fn error_answer(status: u16, request: &[u8]) -> Vec<u8> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    let (field, message) = match status {
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => (
            "headers".to_string(),
            format!(
                "are too many or too large: a request may have at most {MAX_HEADERS} header fields \
                 and {} KiB of request line and headers; send fewer or shorter headers",
                MAX_HEAD_BYTES / 1024
            ),
        ),
        StatusCode::URI_TOO_LONG => (
            "url".to_string(),
            format!("is longer than {MAX_URI_BYTES} bytes; shorten it"),
        ),
        _ => diagnose(request),
    };
    let mut details = serde_json::Map::new();
    details.insert(field, Value::String(message));
    answer(status, &[], Value::Object(details))
}

/// An HTTP/1.1 answer in the error shape, written by the accept loop itself (no router
/// involved), with `extra` headers and `Connection: close`.
pub fn answer(status: StatusCode, extra: &[(&str, String)], details: Value) -> Vec<u8> {
    let request_id = format!("req_{}", video_import_shared::ids::random_id(16));
    let body = ErrorBody {
        status: status.as_u16(),
        error: status.canonical_reason().unwrap_or("Error").to_string(),
        error_details: details,
        request_id: request_id.clone(),
    };
    let body = serde_json::to_vec(&body).unwrap_or_else(|_| json!({}).to_string().into_bytes());
    let mut head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         x-request-id: {request_id}\r\nconnection: close\r\n",
        body.len()
    );
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&body);
    bytes
}

/// Which part of `request` (the bytes read of a request hyper could not parse) is at
/// fault, and what to do about it.
fn diagnose(request: &[u8]) -> (String, String) {
    let generic = || {
        (
            "request".to_string(),
            "is not valid HTTP/1.1 (its request line or headers are malformed); send a \
             well-formed HTTP/1.1 request"
                .to_string(),
        )
    };
    // Nothing kept: the request was read together with the one before (pipelined).
    if request.iter().all(u8::is_ascii_whitespace) {
        return generic();
    }
    let end = request
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(request.len());
    let mut lines = request[..end]
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let request_line = lines.next().unwrap_or_default();
    let parts: Vec<&[u8]> = request_line.split(|&b| b == b' ').collect();
    let [method, target, version] = parts.as_slice() else {
        return (
            "request".into(),
            format!(
                "the request line {} is not `METHOD /path HTTP/1.1`; send a well-formed HTTP/1.1 request",
                preview(request_line)
            ),
        );
    };
    if method.is_empty() || !method.iter().all(|&b| is_token(b)) {
        return (
            "method".into(),
            format!("{} is not an HTTP method; use GET or POST", preview(method)),
        );
    }
    if target.is_empty() || !target.iter().all(|&b| b.is_ascii_graphic()) {
        return (
            "url".into(),
            format!(
                "{} holds a character a URL may not hold unencoded (a space, a control \
                 character or a non-ASCII byte); percent-encode it",
                preview(target)
            ),
        );
    }
    if !matches!(*version, b"HTTP/1.1" | b"HTTP/1.0") {
        return (
            "version".into(),
            format!("{} is not spoken here; send HTTP/1.1", preview(version)),
        );
    }
    let mut lengths = Vec::new();
    let mut chunked_last = None;
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return (
                "headers".into(),
                format!(
                    "the line {} is not a header; each header line is `Name: value`",
                    preview(line)
                ),
            );
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| is_token(b)) {
            return (
                "headers".into(),
                format!(
                    "the header name {} holds a character a header name may not hold (names \
                     are letters, digits and !#$%&'*+-.^_`|~); fix the header",
                    preview(name)
                ),
            );
        }
        let name = String::from_utf8_lossy(name).into_owned();
        if let Some(&bad) = value
            .iter()
            .find(|&&b| (b < 0x20 && b != b'\t') || b == 0x7f)
        {
            return (
                name,
                format!("holds the control character 0x{bad:02x}, which a header value may not hold; remove it"),
            );
        }
        let value = String::from_utf8_lossy(value).trim().to_ascii_lowercase();
        if name.eq_ignore_ascii_case("content-length") {
            lengths.push(value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked_last = Some(value.rsplit(',').next().unwrap_or_default().trim() == "chunked");
        }
    }
    if lengths
        .iter()
        .any(|v| v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()))
        || lengths.windows(2).any(|w| w[0] != w[1])
    {
        return (
            "Content-Length".into(),
            "must be one number: the body's size in bytes".into(),
        );
    }
    if chunked_last == Some(false) || chunked_last.is_some() && *version == b"HTTP/1.0" {
        return (
            "Transfer-Encoding".into(),
            "is not one this API reads; send the body with Content-Length, or as HTTP/1.1 with \
             `Transfer-Encoding: chunked` last"
                .into(),
        );
    }
    generic()
}

/// A byte of an HTTP token (method, header name).
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// At most 60 bytes of `bytes`, quoted, with anything unprintable escaped.
fn preview(bytes: &[u8]) -> String {
    let shown: String = bytes[..bytes.len().min(60)].escape_ascii().to_string();
    let more = if bytes.len() > 60 { "…" } else { "" };
    format!("\"{shown}{more}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diagnosis(request: &str) -> (String, String) {
        diagnose(request.as_bytes())
    }

    #[test]
    fn only_hypers_bare_answers_are_replaced() {
        let bare =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        assert_eq!(automatic_answer(bare), Some((0, 431)));
        let mut after =
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-request-id: r\r\n\r\n{}".to_vec();
        let start = after.len();
        after.extend_from_slice(bare);
        assert_eq!(automatic_answer(&after), Some((start, 431)));
        for ours in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nx-request-id: r\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        ] {
            assert_eq!(automatic_answer(ours), None, "{}", ours.escape_ascii());
        }
    }

    #[test]
    fn the_part_at_fault_is_named() {
        let cases = [
            ("garbage\r\n\r\n", "request"),
            ("G(T / HTTP/1.1\r\n\r\n", "method"),
            ("GET /a\x01b HTTP/1.1\r\n\r\n", "url"),
            ("GET / HTTP/2.0\r\n\r\n", "version"),
            ("GET / HTTP/1.1\r\nno colon here\r\n\r\n", "headers"),
            ("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", "headers"),
            ("GET / HTTP/1.1\r\nX-Evil: a\x01b\r\n\r\n", "X-Evil"),
            (
                "POST / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
                "Content-Length",
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "Content-Length",
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                "Transfer-Encoding",
            ),
            ("GET / HTTP/1.1\r\nHost: fine\r\n\r\n", "request"),
            ("", "request"),
        ];
        for (request, field) in cases {
            assert_eq!(diagnosis(request).0, field, "{}", request.escape_debug());
        }
        assert!(diagnosis("GET / HTTP/1.1\r\nX-Evil: a\x01b\r\n\r\n")
            .1
            .contains("0x01"));
    }

    #[test]
    fn the_answer_has_the_error_shape() {
        let bytes = error_answer(431, b"");
        let text = String::from_utf8(bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{head}"
        );
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let body: Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["status"], 431);
        assert_eq!(body["error"], "Request Header Fields Too Large");
        assert!(body["error_details"]["headers"]
            .as_str()
            .unwrap()
            .contains("at most 100"));
        assert!(head.contains(&format!(
            "x-request-id: {}",
            body["request_id"].as_str().unwrap()
        )));
    }
}
