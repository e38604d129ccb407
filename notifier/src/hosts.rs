//! Per-host slots: deliveries in flight to one receiver host are bounded, so a slow or dead
//! receiver cannot take every slot of the notifier.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
pub use video_import_shared::hosts::host_key;
use video_import_shared::hosts::{HostState, PerHost};

use crate::schedule;

/// Bounds the deliveries in flight to one receiver host; shared by every delivery handler
/// and the releaser of held deliveries.
pub struct HostSlots {
    per_host: usize,
    hosts: PerHost<Host>,
}

struct Host {
    slots: Arc<Semaphore>,
    per_host: usize,
    /// Handlers waiting for one of its slots now.
    waiting: Arc<AtomicUsize>,
    /// Set when a wait for a slot ran out, cleared when a slot is taken at once: while set,
    /// deliveries that find no free slot do not wait at all.
    congested: bool,
}

impl HostState for Host {
    fn is_idle(&self) -> bool {
        self.slots.available_permits() == self.per_host
    }
}

impl HostSlots {
    /// At most `per_host` deliveries in flight to each host.
    pub fn new(per_host: usize) -> Self {
        Self {
            per_host,
            hosts: PerHost::new(move || Host {
                slots: Arc::new(Semaphore::new(per_host)),
                per_host,
                waiting: Arc::new(AtomicUsize::new(0)),
                congested: false,
            }),
        }
    }

    /// Slots per host.
    pub fn per_host(&self) -> usize {
        self.per_host
    }

    /// Free slots of `host` and the handlers already waiting for one.
    pub fn free(&self, host: &str) -> (usize, usize) {
        self.hosts.peek(host, |h| match h {
            Some(h) => (
                h.slots.available_permits(),
                h.waiting.load(Ordering::Relaxed),
            ),
            None => (self.per_host, 0),
        })
    }

    /// A slot for the host of `url`, waiting up to `schedule::HOST_WAIT` for one: a fast host
    /// frees slots within that; a slow or dead one does not, and `None` is the answer. Once a
    /// wait has run out, the host's other deliveries do not wait at all until one of them
    /// finds a free slot, so a dead receiver cannot fill the notifier's handlers with waiting.
    pub async fn acquire(&self, url: &str) -> Option<OwnedSemaphorePermit> {
        let key = host_key(url);
        let wait = self.hosts.with(&key, |host| {
            if let Ok(permit) = host.slots.clone().try_acquire_owned() {
                host.congested = false;
                return Err(Some(permit));
            }
            if host.congested {
                return Err(None);
            }
            Ok((host.slots.clone(), host.waiting.clone()))
        });
        let (slots, waiting) = match wait {
            Ok(wait) => wait,
            Err(answer) => return answer,
        };
        waiting.fetch_add(1, Ordering::Relaxed);
        let permit = tokio::time::timeout(schedule::HOST_WAIT, slots.acquire_owned()).await;
        waiting.fetch_sub(1, Ordering::Relaxed);
        match permit {
            Ok(permit) => permit.ok(),
            Err(_) => {
                self.hosts.peek(&key, |h| {
                    if let Some(host) = h {
                        host.congested = true;
                    }
                });
                None
            }
        }
    }
}
