//! Per-host slots: deliveries in flight to one receiver host are bounded, so a slow or dead
//! receiver cannot take every slot of the notifier.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::schedule;

/// Bounds the deliveries in flight to one receiver host.
pub struct HostSlots {
    per_host: usize,
    hosts: Mutex<HashMap<String, Host>>,
}

struct Host {
    slots: Arc<Semaphore>,
    /// Set when a wait for a slot ran out: until then, others do not wait at all.
    congested_until: Option<Instant>,
}

impl HostSlots {
    /// At most `per_host` deliveries in flight to each host.
    pub fn new(per_host: usize) -> Self {
        Self {
            per_host,
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for the host of `url`, waiting up to `schedule::HOST_WAIT` for one: a fast host frees
    /// slots within that; a slow or dead one does not, and `None` is the answer. Once a
    /// wait has run out, the host's other deliveries do not wait for a while, so a dead
    /// receiver cannot fill the notifier's slots with waiting.
    pub async fn acquire(&self, url: &str) -> Option<OwnedSemaphorePermit> {
        let key = reqwest::Url::parse(url)
            .ok()
            .map(|u| {
                format!(
                    "{}:{}",
                    u.host_str().unwrap_or_default(),
                    u.port_or_known_default().unwrap_or(0)
                )
            })
            .unwrap_or_default();
        let slots = {
            let mut hosts = self.hosts.lock().expect("host slots lock");
            // Forget idle hosts so the map does not grow with every receiver ever seen.
            if hosts.len() > 10_000 {
                hosts.retain(|_, h| h.slots.available_permits() < self.per_host);
            }
            let host = hosts.entry(key.clone()).or_insert_with(|| Host {
                slots: Arc::new(Semaphore::new(self.per_host)),
                congested_until: None,
            });
            if let Ok(permit) = host.slots.clone().try_acquire_owned() {
                host.congested_until = None;
                return Some(permit);
            }
            if host.congested_until.is_some_and(|t| t > Instant::now()) {
                return None;
            }
            host.slots.clone()
        };
        match tokio::time::timeout(schedule::HOST_WAIT, slots.acquire_owned()).await {
            Ok(permit) => permit.ok(),
            Err(_) => {
                if let Some(host) = self.hosts.lock().expect("host slots lock").get_mut(&key) {
                    host.congested_until = Some(Instant::now() + schedule::HOST_WAIT);
                }
                None
            }
        }
    }
}
