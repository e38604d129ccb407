//! One read for many concurrent requests: while a read for a key is under way, requests for
//! the same key wait for its result instead of starting their own. Two hundred clients
//! polling one job's status then cost one fingerprint query at a time, not two hundred.
//!
//! A request that joins a read already under way gets a result at most one read older than
//! its own arrival, as if it had arrived a moment earlier; a request arriving after the read
//! ended starts a new one, so no result is ever kept.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};

/// Reads under way, by key.
type InFlight<K, V> = Arc<Mutex<HashMap<K, Shared<BoxFuture<'static, Option<V>>>>>>;

/// Concurrent reads of one key shared; `None` from a read means it failed.
pub struct SingleFlight<K, V> {
    in_flight: InFlight<K, V>,
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        Self {
            in_flight: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

impl<K, V> SingleFlight<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// The result of the read of `key` under way, or of `read()` started now. The read runs
    /// on its own task, so a request that goes away does not cancel it for the others.
    pub async fn run<F, Fut>(&self, key: K, read: F) -> Option<V>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Option<V>> + Send + 'static,
    {
        let shared = {
            let mut in_flight = self.in_flight.lock().expect("not poisoned");
            match in_flight.get(&key) {
                Some(shared) => shared.clone(),
                None => {
                    let (map, done) = (self.in_flight.clone(), key.clone());
                    let future = read();
                    // The entry goes when the read ends, and never before it is inserted:
                    // removing it takes the lock held here.
                    let task = tokio::spawn(async move {
                        let value = future.await;
                        map.lock().expect("not poisoned").remove(&done);
                        value
                    });
                    let shared = async move { task.await.ok().flatten() }.boxed().shared();
                    in_flight.insert(key, shared.clone());
                    shared
                }
            }
        };
        shared.await
    }

    /// Reads under way now.
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.in_flight.lock().expect("not poisoned").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::oneshot;

    #[tokio::test]
    async fn requests_during_a_read_share_it_and_later_ones_read_again() {
        let flights: Arc<SingleFlight<&str, u32>> = Arc::new(SingleFlight::default());
        let reads = Arc::new(AtomicUsize::new(0));
        let (release, held) = oneshot::channel::<u32>();
        let first = {
            let (flights, reads) = (flights.clone(), reads.clone());
            tokio::spawn(async move {
                flights
                    .run("job", || {
                        reads.fetch_add(1, Ordering::SeqCst);
                        async move { held.await.ok() }
                    })
                    .await
            })
        };
        while flights.in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        // A second request while the first read is under way joins it.
        let second = {
            let (flights, reads) = (flights.clone(), reads.clone());
            tokio::spawn(async move {
                flights
                    .run("job", || {
                        reads.fetch_add(1, Ordering::SeqCst);
                        async { Some(99) }
                    })
                    .await
            })
        };
        // Another key is read on its own.
        let other = flights.run("other", || async { Some(7) }).await;
        assert_eq!(other, Some(7));
        release.send(42).unwrap();
        assert_eq!(first.await.unwrap(), Some(42));
        assert_eq!(second.await.unwrap(), Some(42));
        assert_eq!(reads.load(Ordering::SeqCst), 1, "one read for both");
        // Once it ended, nothing is kept: the next request reads again.
        assert_eq!(flights.in_flight(), 0);
        assert_eq!(flights.run("job", || async { Some(5) }).await, Some(5));
    }

    #[tokio::test]
    async fn a_request_that_goes_away_does_not_cancel_the_read_for_the_others() {
        let flights: Arc<SingleFlight<&str, u32>> = Arc::new(SingleFlight::default());
        let (release, held) = oneshot::channel::<u32>();
        let first = {
            let flights = flights.clone();
            tokio::spawn(async move { flights.run("job", || async move { held.await.ok() }).await })
        };
        while flights.in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        let second = {
            let flights = flights.clone();
            tokio::spawn(async move { flights.run("job", || async { Some(1) }).await })
        };
        tokio::task::yield_now().await;
        first.abort();
        release.send(3).unwrap();
        assert_eq!(second.await.unwrap(), Some(3));
    }

    #[tokio::test]
    async fn a_failed_read_is_none_and_not_kept() {
        let flights: SingleFlight<&str, u32> = SingleFlight::default();
        assert_eq!(flights.run("job", || async { None }).await, None);
        assert_eq!(flights.run("job", || async { Some(2) }).await, Some(2));
    }
}
