//! Politeness towards source hosts: at most `fetch.per_host_concurrency` downloads from one
//! host at once per worker, and a host that answered 429 or 503 with `Retry-After` is left
//! alone until then by every download queued for it, not only by the one that got the answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use video_import_shared::hosts::{host_key, HostState, PerHost};

/// A pause this short is waited out in process; a longer one hands the video back to the
/// delay queue.
const WAIT_IN_PROCESS: Duration = Duration::from_secs(5);

/// What a download must do before it may start.
#[derive(Debug, PartialEq, Eq)]
pub enum Turn {
    /// Go: the permit is held for the download's duration (not while it is recorded).
    Go,
    /// Go, after waiting for the host's slot or a short pause (what was true before the wait
    /// may not be any more).
    GoAfterWait,
    /// The host asked for a pause this long: try again later.
    Later(Duration),
}

struct Host {
    slots: Arc<Semaphore>,
    per_host: usize,
    paused_until: Option<Instant>,
}

impl HostState for Host {
    fn is_idle(&self) -> bool {
        self.slots.available_permits() == self.per_host
            && self
                .paused_until
                .is_none_or(|until| until <= Instant::now())
    }
}

/// Per-host slots and pauses, shared by every download of the worker.
pub struct SourceHosts {
    hosts: PerHost<Host>,
}

impl SourceHosts {
    /// At most `per_host` downloads from one host at once.
    pub fn new(per_host: usize) -> Self {
        let per_host = per_host.max(1);
        Self {
            hosts: PerHost::new(move || Host {
                slots: Arc::new(Semaphore::new(per_host)),
                per_host,
                paused_until: None,
            }),
        }
    }

    /// Waits for a slot of the host of `url`, then out a short pause of the host; a long
    /// pause answers [`Turn::Later`] without a permit. The pause is looked at once the slot
    /// is ours, so a download that waited for a slot still honours a pause asked meanwhile.
    pub async fn turn(&self, url: &str) -> (Turn, Option<OwnedSemaphorePermit>) {
        let key = host_key(url);
        let slots = self.hosts.with(&key, |h| h.slots.clone());
        let (permit, waited) = match slots.clone().try_acquire_owned() {
            Ok(permit) => (Some(permit), false),
            Err(_) => (slots.acquire_owned().await.ok(), true),
        };
        let pause = self
            .hosts
            .with(&key, |h| h.paused_until)
            .map(|until| until.saturating_duration_since(Instant::now()))
            .filter(|left| !left.is_zero());
        match pause {
            Some(left) if left > WAIT_IN_PROCESS => (Turn::Later(left), None),
            Some(left) => {
                tokio::time::sleep(left).await;
                (Turn::GoAfterWait, permit)
            }
            None if waited => (Turn::GoAfterWait, permit),
            None => (Turn::Go, permit),
        }
    }

    /// The host of `url` asked for a pause of `pause`: no download of it starts before then.
    pub fn pause(&self, url: &str, pause: Duration) {
        let until = Instant::now() + pause;
        self.hosts.with(&host_key(url), |host| {
            host.paused_until = Some(host.paused_until.map_or(until, |u| u.max(until)));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_host_gets_at_most_its_slots_and_others_are_not_held_up() {
        let hosts = SourceHosts::new(2);
        let (_, a) = hosts.turn("http://a.example/1").await;
        let (_, b) = hosts.turn("http://a.example:80/2").await;
        let third =
            tokio::time::timeout(Duration::from_millis(100), hosts.turn("http://a.example/3"))
                .await;
        assert!(third.is_err(), "a third download of one host waits");
        let (turn, other) = hosts.turn("http://b.example/1").await;
        assert_eq!(turn, Turn::Go);
        assert!(other.is_some());
        let waiting = tokio::spawn({
            let hosts = std::sync::Arc::new(hosts);
            async move { hosts.turn("http://a.example/3").await.0 }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop((a, b));
        assert_eq!(waiting.await.unwrap(), Turn::GoAfterWait);
    }

    #[tokio::test]
    async fn a_paused_host_waits_or_goes_back_to_the_queue() {
        let hosts = SourceHosts::new(4);
        hosts.pause("https://slow.example/x", Duration::from_secs(60));
        let (turn, permit) = hosts.turn("https://slow.example/y").await;
        assert!(matches!(turn, Turn::Later(d) if d > Duration::from_secs(50)));
        assert!(permit.is_none());
        hosts.pause("https://brief.example/x", Duration::from_millis(200));
        let started = Instant::now();
        let (turn, _) = hosts.turn("https://brief.example/y").await;
        assert_eq!(turn, Turn::GoAfterWait);
        assert!(started.elapsed() >= Duration::from_millis(150));
    }
}
