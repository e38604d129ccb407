//! A small OTLP/HTTP trace collector: takes what the binaries export (`POST /v1/traces`,
//! protobuf, gzip when the exporter compresses) and decodes it with the protocol's own
//! types (`opentelemetry-proto`), as Jaeger or Tempo would; and a collector that accepts
//! connections but never answers, for tests of a stuck one.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;
use tokio::task::JoinHandle;

/// One span as the collector received it.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// Its resource's `service.name`.
    pub service: String,
    /// Its resource's `service.version`.
    pub version: String,
    pub name: String,
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// 16 lowercase hex digits; empty for a root span.
    pub parent_span_id: String,
    /// Its attributes (the span's fields among them), each value as text.
    pub attributes: HashMap<String, String>,
}

impl ReceivedSpan {
    /// An attribute's value ("" when it has none).
    pub fn attribute(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
    }
}

#[derive(Clone, Default)]
struct Shared {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    /// Every request's `Content-Type` and `Content-Encoding`.
    requests: Arc<Mutex<Vec<(String, String)>>>,
}

/// The collector; point `telemetry.otlp_endpoint` at `url`. Stops when dropped.
pub struct Collector {
    /// Its base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    shared: Shared,
    task: JoinHandle<()>,
}

impl Collector {
    /// Starts on a free port of 127.0.0.1.
    pub async fn start() -> Collector {
        let shared = Shared::default();
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Collector { url, shared, task }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.shared.spans.lock().unwrap().clone()
    }

    /// `(Content-Type, Content-Encoding)` of every export request so far.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Waits (at most `timeout`) until `done` says the spans received are enough; returns
    /// them. `done` answers `Err(what is missing)` until then.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[ReceivedSpan]) -> Result<(), String>,
    ) -> Vec<ReceivedSpan> {
        crate::poll_until(what, timeout, async || {
            let spans = self.spans();
            done(&spans).map(|()| spans)
        })
        .await
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, Vec<u8>) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (content_type, encoding) = (header("content-type"), header("content-encoding"));
    shared
        .requests
        .lock()
        .unwrap()
        .push((content_type.clone(), encoding.clone()));
    let body = match encoding.as_str() {
        "gzip" => {
            let mut plain = Vec::new();
            if flate2::read::GzDecoder::new(&body[..])
                .read_to_end(&mut plain)
                .is_err()
            {
                return (StatusCode::BAD_REQUEST, b"bad gzip".to_vec());
            }
            plain
        }
        "" => body.to_vec(),
        _ => return (StatusCode::UNSUPPORTED_MEDIA_TYPE, Vec::new()),
    };
    if content_type != "application/x-protobuf" {
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, Vec::new());
    }
    let Ok(request) = ExportTraceServiceRequest::decode(&body[..]) else {
        return (
            StatusCode::BAD_REQUEST,
            b"not an ExportTraceServiceRequest".to_vec(),
        );
    };
    let mut received = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        let version = resource.get("service.version").cloned().unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                received.push(ReceivedSpan {
                    service: service.clone(),
                    version: version.clone(),
                    name: span.name,
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    attributes: attributes(&span.attributes),
                });
            }
        }
    }
    shared.spans.lock().unwrap().extend(received);
    (
        StatusCode::OK,
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

/// Attributes as text.
fn attributes(pairs: &[KeyValue]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(AnyValue::StringValue(s)) => s.clone(),
                Some(AnyValue::IntValue(i)) => i.to_string(),
                Some(AnyValue::BoolValue(b)) => b.to_string(),
                Some(AnyValue::DoubleValue(d)) => d.to_string(),
                Some(other) => format!("{other:?}"),
                None => String::new(),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

/// A collector that accepts connections but never reads or answers a request (one that
/// hangs). Stops when dropped.
pub struct SilentCollector {
    /// Its base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    task: JoinHandle<()>,
}

impl SilentCollector {
    /// Starts on a free port of 127.0.0.1.
    pub async fn start() -> SilentCollector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                // Kept open, never read from or written to, until the collector is dropped.
                held.push(socket);
            }
        });
        SilentCollector { url, task }
    }
}

impl Drop for SilentCollector {
    fn drop(&mut self) {
        self.task.abort();
    }
}
