//! One read for many concurrent requests: requests for the same key that arrive while a read
//! is under way share the *next* read, which starts once that one ends. Two hundred clients
//! polling one job's status then cost at most one fingerprint query at a time, not two
//! hundred, and every request still gets a result read after it arrived: a client that
//! changed something and then asks sees its change (read-your-writes), a token revoked
//! before a request arrived is never accepted for it. Nothing is kept once a read ended.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};

/// A read of a key, shared by every request that waits for it; `None` when it failed.
type Read<V> = Shared<BoxFuture<'static, Option<V>>>;

/// The reads of one key: the one under way, and the one the requests that arrived during it
/// wait for.
struct Slot<V> {
    running: Read<V>,
    queued: Option<Read<V>>,
}

/// Reads of each key.
type Slots<K, V> = Arc<Mutex<HashMap<K, Slot<V>>>>;

/// Concurrent reads of one key shared; `None` from a read means it failed.
pub struct SingleFlight<K, V> {
    slots: Slots<K, V>,
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        Self {
            slots: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

impl<K, V> SingleFlight<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// The result of a read of `key` that starts after this call: the future `read()` makes,
    /// run now when no read of the key is under way, else the one queued behind it (queued
    /// now if there is none; `read` must do its work in the future, not when called). Reads
    /// run on tasks of their own, so a request that goes away cancels nothing.
    pub async fn run<F, Fut>(&self, key: K, read: F) -> Option<V>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Option<V>> + Send + 'static,
    {
        let shared = {
            let mut slots = self.slots.lock().expect("not poisoned");
            match slots.get_mut(&key) {
                None => {
                    let running = self.spawn(key.clone(), None, read());
                    slots.insert(
                        key,
                        Slot {
                            running: running.clone(),
                            queued: None,
                        },
                    );
                    running
                }
                Some(slot) => match &slot.queued {
                    Some(queued) => queued.clone(),
                    None => {
                        let after = slot.running.clone();
                        let queued = self.spawn(key, Some(after), read());
                        slot.queued = Some(queued.clone());
                        queued
                    }
                },
            }
        };
        shared.await
    }

    /// A read running `future` once `after` (the read under way) has ended; when it ends,
    /// the read queued behind it (if any) becomes the one under way, or the key is gone.
    fn spawn(
        &self,
        key: K,
        after: Option<Read<V>>,
        future: impl Future<Output = Option<V>> + Send + 'static,
    ) -> Read<V> {
        let slots = self.slots.clone();
        let task = tokio::spawn(async move {
            if let Some(after) = after {
                let _ = after.await;
            }
            let value = future.await;
            let mut slots = slots.lock().expect("not poisoned");
            if let Some(slot) = slots.get_mut(&key) {
                match slot.queued.take() {
                    Some(next) => slot.running = next,
                    None => {
                        slots.remove(&key);
                    }
                }
            }
            value
        });
        async move { task.await.ok().flatten() }.boxed().shared()
    }

    /// Keys with a read under way.
    #[cfg(test)]
    fn keys(&self) -> usize {
        self.slots.lock().expect("not poisoned").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::oneshot;

    /// A read that counts itself when it starts and waits for `release`, then answers what
    /// it was sent.
    fn held(
        reads: &Arc<AtomicUsize>,
        release: oneshot::Receiver<u32>,
    ) -> impl FnOnce() -> BoxFuture<'static, Option<u32>> {
        let reads = reads.clone();
        move || {
            async move {
                reads.fetch_add(1, Ordering::SeqCst);
                release.await.ok()
            }
            .boxed()
        }
    }

    #[tokio::test]
    async fn requests_during_a_read_share_the_next_one_which_starts_after_it() {
        let flights: Arc<SingleFlight<&str, u32>> = Arc::new(SingleFlight::default());
        let reads = Arc::new(AtomicUsize::new(0));
        let (first_release, first_held) = oneshot::channel();
        let first = {
            let (flights, read) = (flights.clone(), held(&reads, first_held));
            tokio::spawn(async move { flights.run("job", read).await })
        };
        while flights.keys() == 0 {
            tokio::task::yield_now().await;
        }
        // Two requests while the first read is under way: they share one queued read, which
        // must not start before the first ends (it may have begun before they arrived).
        let (second_release, second_held) = oneshot::channel();
        let second = {
            let (flights, read) = (flights.clone(), held(&reads, second_held));
            tokio::spawn(async move { flights.run("job", read).await })
        };
        tokio::task::yield_now().await;
        let third = {
            let flights = flights.clone();
            tokio::spawn(async move { flights.run("job", || async { Some(99) }).await })
        };
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1, "the queued read waits");
        first_release.send(1).unwrap();
        assert_eq!(first.await.unwrap(), Some(1));
        while reads.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        second_release.send(2).unwrap();
        assert_eq!(second.await.unwrap(), Some(2));
        assert_eq!(third.await.unwrap(), Some(2), "shares the queued read");
        assert_eq!(reads.load(Ordering::SeqCst), 2);
        // Once both ended, nothing is kept: the next request reads again.
        assert_eq!(flights.keys(), 0);
        assert_eq!(flights.run("job", || async { Some(5) }).await, Some(5));
    }

    #[tokio::test]
    async fn a_request_that_goes_away_does_not_cancel_the_read_for_the_others() {
        let flights: Arc<SingleFlight<&str, u32>> = Arc::new(SingleFlight::default());
        let reads = Arc::new(AtomicUsize::new(0));
        let (release, held_read) = oneshot::channel();
        let first = {
            let (flights, read) = (flights.clone(), held(&reads, held_read));
            tokio::spawn(async move { flights.run("job", read).await })
        };
        while flights.keys() == 0 {
            tokio::task::yield_now().await;
        }
        first.abort();
        let later = {
            let flights = flights.clone();
            tokio::spawn(async move { flights.run("job", || async { Some(7) }).await })
        };
        tokio::task::yield_now().await;
        release.send(3).unwrap();
        assert_eq!(later.await.unwrap(), Some(7));
    }

    #[tokio::test]
    async fn a_failed_read_is_none_and_not_kept() {
        let flights: SingleFlight<&str, u32> = SingleFlight::default();
        assert_eq!(flights.run("job", || async { None }).await, None);
        assert_eq!(flights.run("job", || async { Some(2) }).await, Some(2));
        assert_eq!(flights.keys(), 0);
    }
}
