//! The API's accept loop: HTTP/1 connections with a header-read timeout (which also closes
//! connections idle between requests), a cap on connections served at once and on those
//! one client address may hold, errors of the HTTP layer in the API's error shape (see
//! `protocol`), and a graceful end on shutdown. `axum::serve` has none of these limits, so
//! slow or idle clients could hold sockets until the process runs out of file descriptors.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::protocol;

/// How long in-flight requests may finish after shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Connections refused for their address that are answered at once; beyond these, refused
/// connections are closed without an answer (so refusing stays cheap under a flood).
const MAX_REFUSALS_ANSWERING: usize = 1024;

/// How often at most the refusals of over-limit addresses are logged.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Limits of the connections the API serves.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest a connection may take to send its headers or stay idle.
    pub header_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// Connections one client (see [`client_of`]) may hold at once; 0: no bound.
    pub max_connections_per_client: usize,
}

/// Whom a connection's peer address counts for: an IPv4 address (also when it comes
/// IPv4-mapped), or the /64 network of an IPv6 address (one host usually has a whole /64).
pub fn client_of(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Connections open per client.
#[derive(Debug, Default)]
struct Clients {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection of a client; closing it (dropping this) frees the client's slot.
struct ClientSlot {
    clients: Arc<Clients>,
    client: IpAddr,
}

impl Clients {
    /// A slot for `client`, unless it already holds `max` connections (`max` 0: no bound).
    fn open(self: &Arc<Self>, client: IpAddr, max: usize) -> Option<ClientSlot> {
        let mut open = self.open.lock().expect("clients lock");
        let count = open.entry(client).or_insert(0);
        if max > 0 && *count >= max {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            clients: self.clone(),
            client,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.clients.open.lock().expect("clients lock");
        if let Some(count) = open.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}

/// Serves `router` on `listener` until `shutdown`, then lets requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(protocol::MAX_HEAD_BYTES);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let clients = Arc::new(Clients::default());
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_ANSWERING));
    let mut refused_since_log = 0u64;
    let mut last_refusal_log: Option<Instant> = None;
    let connections = TaskTracker::new();
    let mut warned_full = false;
    loop {
        // At the cap, stop accepting: new connections wait in the kernel's backlog until a
        // slot frees up (timeouts make sure one does).
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if !warned_full {
                    tracing::warn!(
                        max = limits.max_connections,
                        "api.max_connections reached; new connections wait"
                    );
                    warned_full = true;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                }
            }
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, most likely: pause instead of spinning.
                tracing::warn!(%error, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        warned_full = false;
        let client = client_of(peer.ip());
        let Some(client_slot) = clients.open(client, limits.max_connections_per_client) else {
            // Over its bound: answered 429 and closed at once, without taking a slot, so
            // the loop goes on to the connections of other clients.
            drop(slot);
            refused_since_log += 1;
            if last_refusal_log.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_INTERVAL) {
                tracing::warn!(
                    %client,
                    max = limits.max_connections_per_client,
                    refused = refused_since_log,
                    "api.max_connections_per_client reached; refusing this client's new connections"
                );
                last_refusal_log = Some(Instant::now());
                refused_since_log = 0;
            }
            if let Ok(permit) = refusals.clone().try_acquire_owned() {
                let max = limits.max_connections_per_client;
                tokio::spawn(async move {
                    refuse(stream, max).await;
                    drop(permit);
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Dated API versions are rewritten before routing.
        let router = router.clone();
        let service = tower::service_fn(move |request| {
            router.clone().oneshot(crate::versions::rewrite(request))
        });
        let (give_back, given_back) = oneshot::channel();
        let connection = http.serve_connection(
            TokioIo::new(protocol::Connection::new(stream, give_back)),
            TowerToHyperService::new(service),
        );
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            {
                let mut connection = std::pin::pin!(connection);
                tokio::select! {
                    _ = connection.as_mut() => {}
                    _ = shutdown.cancelled() => {
                        connection.as_mut().graceful_shutdown();
                        let _ = connection.await;
                    }
                }
            }
            // A request hyper could not parse was answered: close without a reset.
            if let Ok(stream) = given_back.await {
                protocol::linger(stream).await;
            }
            drop(client_slot);
            drop(slot);
        });
    }
    connections.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!("requests still running after the shutdown grace period were cut off");
    }
}

/// How long a refused connection's request is waited for before it is answered anyway.
const REFUSAL_WAIT: Duration = Duration::from_secs(1);

/// Answers a connection of a client over `api.max_connections_per_client` with 429 (in
/// the error shape) and closes it. The answer waits for the request's head (a moment at
/// most): HTTP clients take an answer that arrives before they sent their request for a
/// broken connection.
async fn refuse(mut stream: TcpStream, max: usize) {
    let _ = tokio::time::timeout(REFUSAL_WAIT, async {
        let mut head = Vec::new();
        let mut scratch = [0u8; 2048];
        while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&scratch[..n]),
            }
        }
    })
    .await;
    let answer = protocol::answer(
        StatusCode::TOO_MANY_REQUESTS,
        &[("retry-after", "1".to_string())],
        json!({ "connections": format!(
            "your address already holds {max} connections to this API, the most \
             api.max_connections_per_client allows; send your requests over the connections \
             you have (keep-alive) or close idle ones, then retry"
        ) }),
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&answer)).await;
    protocol::linger(stream).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_addresses_or_ipv6_networks() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(client_of(v4), v4);
        assert_eq!(client_of("::ffff:192.0.2.7".parse().unwrap()), v4);
        assert_eq!(
            client_of("2001:db8:1:2:aaaa::1".parse().unwrap()),
            client_of("2001:db8:1:2:bbbb::9".parse().unwrap())
        );
        assert_ne!(
            client_of("2001:db8:1:2::1".parse().unwrap()),
            client_of("2001:db8:1:3::1".parse().unwrap())
        );
    }

    #[test]
    fn a_client_holds_at_most_its_bound_and_closing_frees_a_slot() {
        let clients = Arc::new(Clients::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = clients.open(a, 2).unwrap();
        let _second = clients.open(a, 2).unwrap();
        assert!(clients.open(a, 2).is_none());
        assert!(
            clients.open(b, 2).is_some(),
            "another client is not affected"
        );
        drop(first);
        assert!(clients.open(a, 2).is_some());
        let unbounded: Vec<_> = (0..5000).map(|_| clients.open(b, 0)).collect();
        assert!(unbounded.iter().all(Option::is_some), "0 is no bound");
    }
}
