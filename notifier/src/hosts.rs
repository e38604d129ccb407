//! Per-host slots: deliveries in flight to one receiver host are bounded, so a slow or dead
//! receiver cannot take every slot of the notifier.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::schedule;

/// Bounds the deliveries in flight to one receiver host; shared by every delivery handler
/// and the releaser of held deliveries (a lock held only for a map lookup).
pub struct HostSlots {
    per_host: usize,
    hosts: Mutex<HashMap<String, Host>>,
}

struct Host {
    slots: Arc<Semaphore>,
    /// Handlers waiting for one of its slots now.
    waiting: Arc<AtomicUsize>,
    /// Set when a wait for a slot ran out, cleared when a slot is taken at once: while set,
    /// deliveries that find no free slot do not wait at all.
    congested: bool,
}

pub use video_import_shared::webhook::receiver_host as host_key;

impl HostSlots {
    /// At most `per_host` deliveries in flight to each host.
    pub fn new(per_host: usize) -> Self {
        Self {
            per_host,
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// Slots per host.
    pub fn per_host(&self) -> usize {
        self.per_host
    }

    /// Free slots of `host` and the handlers already waiting for one.
    pub fn free(&self, host: &str) -> (usize, usize) {
        match self.hosts.lock().expect("host slots lock").get(host) {
            Some(h) => (
                h.slots.available_permits(),
                h.waiting.load(Ordering::Relaxed),
            ),
            None => (self.per_host, 0),
        }
    }

    /// A slot for the host of `url`, waiting up to `schedule::HOST_WAIT` for one: a fast host
    /// frees slots within that; a slow or dead one does not, and `None` is the answer. Once a
    /// wait has run out, the host's other deliveries do not wait at all until one of them
    /// finds a free slot, so a dead receiver cannot fill the notifier's handlers with waiting.
    pub async fn acquire(&self, url: &str) -> Option<OwnedSemaphorePermit> {
        let key = host_key(url);
        let (slots, waiting) = {
            let mut hosts = self.hosts.lock().expect("host slots lock");
            // Forget idle hosts so the map does not grow with every receiver ever seen.
            if hosts.len() > 10_000 {
                hosts.retain(|_, h| h.slots.available_permits() < self.per_host);
            }
            let host = hosts.entry(key.clone()).or_insert_with(|| Host {
                slots: Arc::new(Semaphore::new(self.per_host)),
                waiting: Arc::new(AtomicUsize::new(0)),
                congested: false,
            });
            if let Ok(permit) = host.slots.clone().try_acquire_owned() {
                host.congested = false;
                return Some(permit);
            }
            if host.congested {
                return None;
            }
            (host.slots.clone(), host.waiting.clone())
        };
        waiting.fetch_add(1, Ordering::Relaxed);
        let permit = tokio::time::timeout(schedule::HOST_WAIT, slots.acquire_owned()).await;
        waiting.fetch_sub(1, Ordering::Relaxed);
        match permit {
            Ok(permit) => permit.ok(),
            Err(_) => {
                if let Some(host) = self.hosts.lock().expect("host slots lock").get_mut(&key) {
                    host.congested = true;
                }
                None
            }
        }
    }
}
