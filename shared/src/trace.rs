//! W3C Trace Context for one job: a `traceparent` starts at the import request (the
//! caller's, when it sends one) and travels with the job's messages, so every log line
//! about the job, in every binary, carries its `trace_id`.
//!
//! When spans are exported (`telemetry.otlp_endpoint`, see `otlp`), the header names real
//! spans: the API's request span is the job's root (or the caller's span's child), and each
//! span that handles a message is made a child of the context the message carries
//! ([`adopt`]), so the ids in the logs and in the exported trace are the same.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use rand::RngCore;
use tracing_opentelemetry::OpenTelemetrySpanExt;

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

    /// The span it names, as the remote parent of a span of this process. Sampled: whether
    /// a trace is exported is decided from its trace id alone (`otlp`), the same way in
    /// every binary.
    pub fn span_context(&self) -> SpanContext {
        SpanContext::new(
            TraceId::from_hex(&self.trace_id).unwrap_or(TraceId::INVALID),
            SpanId::from_hex(&self.parent_id).unwrap_or(SpanId::INVALID),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        )
    }

    /// The header that names `span` as the parent; `None` for an invalid (empty) context.
    pub fn of(span: &SpanContext) -> Option<Self> {
        span.is_valid().then(|| Self {
            trace_id: span.trace_id().to_string(),
            parent_id: span.span_id().to_string(),
        })
    }
}

/// Makes `span` a child of `parent` in the exported trace. Call it before the span is first
/// entered. Does nothing without a parent (the span starts a trace) or while spans are not
/// exported.
pub fn adopt(span: &tracing::Span, parent: Option<&TraceParent>) {
    if let Some(parent) = parent {
        let context = opentelemetry::Context::new().with_remote_span_context(parent.span_context());
        // Refused only when no span is exported (no layer) or the span has started already.
        let _ = span.set_parent(context);
    }
}

/// The current span as an exported trace knows it; `None` while spans are not exported.
pub fn current() -> Option<TraceParent> {
    let context = tracing::Span::current().context();
    TraceParent::of(context.span().span_context())
}

/// The `traceparent` of a message the current span sends on (a retry, a dead letter handed
/// back): the current span when spans are exported, so the next try's span is its child;
/// otherwise a new child of the context the handled message carried.
pub fn passed_on(received: Option<&TraceParent>) -> Option<String> {
    current()
        .or_else(|| received.map(TraceParent::child))
        .map(|t| t.header())
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

    #[test]
    fn a_header_and_an_opentelemetry_span_context_name_the_same_span() {
        let w3c =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let span = w3c.span_context();
        assert!(span.is_valid() && span.is_remote() && span.is_sampled());
        assert_eq!(
            span.trace_id(),
            TraceId::from_bytes(hex::decode(&w3c.trace_id).unwrap().try_into().unwrap())
        );
        assert_eq!(span.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(TraceParent::of(&span), Some(w3c));
        // Leading zeros are kept both ways (ids are fixed-width hex).
        let small = TraceParent {
            trace_id: "0000000000000000000000000000002a".into(),
            parent_id: "0000000000000007".into(),
        };
        assert_eq!(TraceParent::of(&small.span_context()), Some(small.clone()));
        assert_eq!(
            TraceParent::parse(&small.header()).map(|t| t.span_context()),
            Some(small.span_context())
        );
        assert_eq!(TraceParent::of(&SpanContext::empty_context()), None);
    }

    #[test]
    fn without_exported_spans_a_message_passes_on_a_new_child_of_what_it_carried() {
        // No OpenTelemetry layer in unit tests: the current span has no exported context.
        assert_eq!(current(), None);
        let received = TraceParent::root();
        let passed = TraceParent::parse(&passed_on(Some(&received)).unwrap()).unwrap();
        assert_eq!(passed.trace_id, received.trace_id);
        assert_ne!(passed.parent_id, received.parent_id);
        assert_eq!(passed_on(None), None);
        // Adopting a parent without a layer is harmless.
        adopt(&tracing::Span::none(), Some(&received));
    }

    #[test]
    fn with_exported_spans_a_message_s_span_is_a_child_of_what_it_carried() {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::layer::SubscriberExt;

        let ended = Ended::default();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_span_processor(ended.clone())
            .build();
        let subscriber = tracing_subscriber::Registry::default()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let video = tracing::subscriber::with_default(subscriber, || {
            let received =
                TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                    .unwrap();
            let span = tracing::info_span!("video");
            adopt(&span, Some(&received));
            let (inside, passed) = span.in_scope(|| (current().unwrap(), passed_on(None)));
            // The same trace, a span of its own, and that span is what goes on.
            assert_eq!(inside.trace_id, received.trace_id);
            assert_ne!(inside.parent_id, received.parent_id);
            assert_eq!(passed, Some(inside.header()));
            // Without a parent, a span starts a trace of its own.
            let root = tracing::info_span!("request");
            adopt(&root, None);
            let started = root.in_scope(current).unwrap();
            assert_ne!(started.trace_id, received.trace_id);
            // Adopting after the span started is refused and changes nothing.
            adopt(&root, Some(&received));
            assert_eq!(root.in_scope(current).unwrap(), started);
            inside
        });
        // As exported: the span the message named is the video span's parent.
        let spans = ended.0.lock().unwrap();
        let exported = spans.iter().find(|s| s.name == "video").unwrap();
        assert_eq!(TraceParent::of(&exported.span_context), Some(video));
        assert_eq!(
            exported.parent_span_id.to_string(),
            "00f067aa0ba902b7",
            "{exported:?}"
        );
        let root = spans.iter().find(|s| s.name == "request").unwrap();
        assert_eq!(root.parent_span_id, SpanId::INVALID);
    }

    /// Keeps the spans that end, as an exporter would get them.
    #[derive(Debug, Clone, Default)]
    struct Ended(std::sync::Arc<std::sync::Mutex<Vec<opentelemetry_sdk::trace::SpanData>>>);

    impl opentelemetry_sdk::trace::SpanProcessor for Ended {
        fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &opentelemetry::Context) {}

        fn on_end(&self, span: opentelemetry_sdk::trace::SpanData) {
            self.0.lock().unwrap().push(span);
        }

        fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
            Ok(())
        }

        fn shutdown_with_timeout(
            &self,
            _: std::time::Duration,
        ) -> opentelemetry_sdk::error::OTelSdkResult {
            Ok(())
        }
    }
}
