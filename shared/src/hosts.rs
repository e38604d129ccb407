//! Per-host state: the one map that the worker's download slots (per source host) and the
//! notifier's delivery slots (per receiver host) are kept in, with one key and one eviction.

use std::collections::HashMap;
use std::sync::Mutex;

/// Most hosts remembered; beyond it, idle ones are forgotten so the map does not grow with
/// every host ever seen.
pub const MAX_HOSTS: usize = 10_000;

/// `host:port` of `url`: what slots, pauses and held deliveries are counted by (the whole
/// text when it does not parse; the API refuses such URLs at the door).
pub fn host_key(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| {
            Some(format!(
                "{}:{}",
                u.host_str()?,
                u.port_or_known_default().unwrap_or(0)
            ))
        })
        .unwrap_or_else(|| url.to_string())
}

/// What a host's entry must tell the map: whether it may be forgotten.
pub trait HostState {
    /// Nothing in flight and nothing to remember.
    fn is_idle(&self) -> bool;
}

/// State per host, created on first use; a lock held only for a map lookup.
pub struct PerHost<T> {
    hosts: Mutex<HashMap<String, T>>,
    new: Box<dyn Fn() -> T + Send + Sync>,
}

impl<T: HostState> PerHost<T> {
    /// An empty map whose entries start as `new()`.
    pub fn new(new: impl Fn() -> T + Send + Sync + 'static) -> Self {
        Self {
            hosts: Mutex::new(HashMap::new()),
            new: Box::new(new),
        }
    }

    /// Runs `f` on the entry of host `key` (see [`host_key`]), creating it if needed.
    pub fn with<R>(&self, key: &str, f: impl FnOnce(&mut T) -> R) -> R {
        let mut hosts = self.hosts.lock().expect("per-host map lock");
        if hosts.len() >= MAX_HOSTS && !hosts.contains_key(key) {
            hosts.retain(|_, h| !h.is_idle());
        }
        let host = hosts.entry(key.to_string()).or_insert_with(|| (self.new)());
        f(host)
    }

    /// Runs `f` on the entry of host `key` if there is one, without creating it.
    pub fn peek<R>(&self, key: &str, f: impl FnOnce(Option<&mut T>) -> R) -> R {
        f(self.hosts.lock().expect("per-host map lock").get_mut(key))
    }

    /// Hosts remembered now.
    pub fn len(&self) -> usize {
        self.hosts.lock().expect("per-host map lock").len()
    }

    /// Whether no host is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Count(u32);
    impl HostState for Count {
        fn is_idle(&self) -> bool {
            self.0 == 0
        }
    }

    #[test]
    fn hosts_are_keyed_by_host_and_port() {
        assert_eq!(host_key("http://a.example/x"), "a.example:80");
        assert_eq!(host_key("https://a.example/x"), "a.example:443");
        assert_eq!(host_key("http://a.example:8080/x"), "a.example:8080");
        assert_eq!(host_key("not a url"), "not a url");
    }

    #[test]
    fn a_full_map_forgets_idle_hosts_only() {
        let map = PerHost::new(|| Count(0));
        map.with("busy", |c| c.0 = 1);
        for i in 0..MAX_HOSTS - 1 {
            map.with(&format!("idle{i}"), |_| ());
        }
        assert_eq!(map.len(), MAX_HOSTS);
        map.with("new", |_| ());
        assert_eq!(map.len(), 2, "only the busy host and the new one are kept");
        assert_eq!(map.peek("busy", |c| c.map(|c| c.0)), Some(1));
    }
}
