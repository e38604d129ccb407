//! A local webhook receiver that records every request and answers with scripted statuses.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// One received request.
#[derive(Debug, Clone)]
pub struct Received {
    /// Its headers (`webhook-id`, `webhook-timestamp`, `webhook-signature`, …).
    pub headers: HeaderMap,
    /// Its body, byte for byte as sent (what the signature covers).
    pub body: Bytes,
    /// When it arrived.
    pub at: Instant,
}

impl Received {
    /// A header's value.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("webhook body is JSON")
    }

    /// Checks `webhook-signature` against `secret` twice, and requires both to agree: once
    /// written here from the specification (not with the notifier's code), once with the
    /// Standard Webhooks reference crate (`standardwebhooks`), which is what a receiver
    /// written in Rust would use. A disagreement panics, naming what the crate said: it
    /// means one of the two reads the specification otherwise.
    ///
    /// The reference crate also refuses a `webhook-timestamp` more than five minutes from
    /// now (replay protection), at the time of this call. Every test here checks a
    /// signature within seconds or a few minutes of its delivery; a test that checks an old
    /// delivery on purpose must use [`Received::signature_valid_by_spec`] and say why.
    pub fn signature_valid(&self, secret: &str) -> bool {
        let own = self.signature_valid_by_spec(secret);
        let reference = standardwebhooks::Webhook::new(secret)
            .expect("whsec_ secret is base64")
            .verify(&self.body, &self.headers);
        assert_eq!(
            own,
            reference.is_ok(),
            "the specification check says {own}, the standardwebhooks crate says {reference:?} \
             for webhook {} (timestamp {}, signatures {:?})",
            self.header("webhook-id"),
            self.header("webhook-timestamp"),
            self.header("webhook-signature"),
        );
        own
    }

    /// The check of [`Received::signature_valid`] written from the specification alone,
    /// without the reference crate's five-minute limit on the timestamp.
    pub fn signature_valid_by_spec(&self, secret: &str) -> bool {
        let key = base64::engine::general_purpose::STANDARD
            .decode(secret.trim_start_matches("whsec_"))
            .expect("whsec_ secret is base64");
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(
            format!(
                "{}.{}.",
                self.header("webhook-id"),
                self.header("webhook-timestamp")
            )
            .as_bytes(),
        );
        mac.update(&self.body);
        let expected =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        self.header("webhook-signature")
            .split(' ')
            .any(|s| s == format!("v1,{expected}"))
    }
}

#[derive(Clone, Default)]
struct Shared {
    received: Arc<Mutex<Vec<Received>>>,
    /// Statuses to answer, in order; 204 once empty.
    script: Arc<Mutex<VecDeque<u16>>>,
    /// `Retry-After` seconds sent with every non-2xx answer.
    retry_after: Option<u64>,
    /// Hold every request this long before answering (a receiver that hangs).
    hang: Arc<Mutex<Option<Duration>>>,
    in_flight: Arc<Mutex<(usize, usize)>>,
}

/// The receiver; its URL is `url`.
pub struct Receiver {
    pub url: String,
    shared: Shared,
}

impl Receiver {
    /// Starts on a free port; answers the `script` statuses first, then 204.
    pub async fn start(script: &[u16]) -> Receiver {
        Self::start_with(script, None, None).await
    }

    /// Like `start`, with a `Retry-After` on failures and a delay before every answer.
    pub async fn start_with(
        script: &[u16],
        retry_after: Option<u64>,
        hang: Option<Duration>,
    ) -> Receiver {
        let shared = Shared {
            retry_after,
            hang: Arc::new(Mutex::new(hang)),
            ..Shared::default()
        };
        shared.script.lock().unwrap().extend(script);
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url, shared }
    }

    /// Changes how long later requests hang before the answer (`None`: not at all).
    pub fn set_hang(&self, hang: Option<Duration>) {
        *self.shared.hang.lock().unwrap() = hang;
    }

    /// The most requests this receiver ever had in flight at once.
    pub fn max_in_flight(&self) -> usize {
        self.shared.in_flight.lock().unwrap().1
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Asserts that every request received so far carries a valid signature by `secret`
    /// (both checks of [`Received::signature_valid`]), and that there was at least one;
    /// returns how many were checked. Tests call it once at their end, so that no delivery,
    /// a retry or a redelivery included, goes unchecked.
    pub fn assert_all_signed_by(&self, secret: &str) -> usize {
        let received = self.received();
        assert!(!received.is_empty(), "no webhook request to check");
        for (i, hook) in received.iter().enumerate() {
            assert!(
                hook.signature_valid(secret),
                "request {i} of {} (webhook {}) is not signed by the secret: {:?}",
                received.len(),
                hook.header("webhook-id"),
                hook.header("webhook-signature"),
            );
        }
        received.len()
    }

    /// Waits until at least `n` requests arrived (at most `secs` seconds).
    pub async fn wait_for(&self, n: usize, secs: u64) -> Vec<Received> {
        let what = format!("{n} webhook requests");
        crate::poll_until(&what, Duration::from_secs(secs), async || {
            let got = self.received();
            if got.len() >= n {
                Ok(got)
            } else {
                Err(format!("{} requests", got.len()))
            }
        })
        .await
    }
}

async fn receive(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    shared.received.lock().unwrap().push(Received {
        headers,
        body,
        at: Instant::now(),
    });
    {
        let mut in_flight = shared.in_flight.lock().unwrap();
        in_flight.0 += 1;
        in_flight.1 = in_flight.1.max(in_flight.0);
    }
    let hang = *shared.hang.lock().unwrap();
    if let Some(hang) = hang {
        tokio::time::sleep(hang).await;
    }
    shared.in_flight.lock().unwrap().0 -= 1;
    let status = shared.script.lock().unwrap().pop_front().unwrap_or(204);
    let status = StatusCode::from_u16(status).unwrap();
    match shared.retry_after.filter(|_| !status.is_success()) {
        Some(secs) => (status, [("retry-after", secs.to_string())]).into_response(),
        None => status.into_response(),
    }
}
