//! W3C Trace Context for one job: a `traceparent` starts at the import request (the
//! caller's, when it sends one) and travels with the job's messages, so every log line
//! about the job, in every binary, carries its `trace_id`.

use rand::RngCore;

/// The AMQP header (and HTTP header) that carries the context.
pub const HEADER: &str = "traceparent";

/// A trace id and the id of the span that passed it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub parent_id: String,
}

fn hex_id(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut raw);
    hex::encode(raw)
}

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl TraceParent {
    /// A new trace.
    pub fn root() -> Self {
        Self {
            trace_id: hex_id(16),
            parent_id: hex_id(8),
        }
    }

    /// Reads a `traceparent` header (version 00); `None` when it is malformed or all zeros.
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let (version, trace_id, parent_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let valid = version == "00"
            && parts.next().is_none()
            && is_hex(trace_id, 32)
            && is_hex(parent_id, 16)
            && is_hex(flags, 2)
            && trace_id.bytes().any(|b| b != b'0')
            && parent_id.bytes().any(|b| b != b'0');
        valid.then(|| Self {
            trace_id: trace_id.to_string(),
            parent_id: parent_id.to_string(),
        })
    }

    /// The same trace, passed on by a new span.
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id.clone(),
            parent_id: hex_id(8),
        }
    }

    /// The header value (sampled).
    pub fn header(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.parent_id)
    }
}

/// A child context of `trace_id` as a header value, for messages of a job whose trace id
/// is stored.
pub fn header_for(trace_id: &str) -> Option<String> {
    is_hex(trace_id, 32).then(|| {
        TraceParent {
            trace_id: trace_id.to_string(),
            parent_id: String::new(),
        }
        .child()
        .header()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_garbage_is_refused() {
        let root = TraceParent::root();
        assert_eq!(TraceParent::parse(&root.header()), Some(root.clone()));
        let child = root.child();
        assert_eq!(child.trace_id, root.trace_id);
        assert_ne!(child.parent_id, root.parent_id);
        let w3c = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            TraceParent::parse(w3c).unwrap().trace_id,
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        let header = header_for(&root.trace_id).unwrap();
        assert_eq!(TraceParent::parse(&header).unwrap().trace_id, root.trace_id);
        assert_eq!(header_for("nope"), None);
    }
}
