//! Group commit: requests that arrive while a write is under way are written together by
//! the next one, so a busy process pays one round trip and one commit per group instead of
//! one per request. The worker records videos' outcomes with it, the notifier its attempts,
//! holds and retries, and local storage writes and syncs small files in groups.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Mutex};

type Reply<R> = oneshot::Sender<Result<R, String>>;

/// Hands requests of type `T` to the writers and waits for each one's answer `R`.
pub struct Batcher<T, R> {
    requests: mpsc::Sender<(T, Reply<R>)>,
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// Starts `writers` tasks that write groups of at most `max_group` requests with `write`,
    /// which answers each request in order; they stop once the `Batcher` is dropped.
    pub fn start<F, Fut>(writers: usize, max_group: usize, write: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<Vec<R>>> + Send,
    {
        let (requests, receiver) = mpsc::channel::<(T, Reply<R>)>(max_group * writers * 4);
        let receiver = Arc::new(Mutex::new(receiver));
        let write = Arc::new(write);
        for _ in 0..writers {
            let receiver = receiver.clone();
            let write = write.clone();
            tokio::spawn(async move {
                loop {
                    let group = {
                        let mut receiver = receiver.lock().await;
                        let Some(first) = receiver.recv().await else {
                            return;
                        };
                        let mut group = vec![first];
                        while group.len() < max_group {
                            match receiver.try_recv() {
                                Ok(request) => group.push(request),
                                Err(_) => break,
                            }
                        }
                        group
                    };
                    let (items, replies): (Vec<T>, Vec<Reply<R>>) = group.into_iter().unzip();
                    match write(items).await {
                        Ok(answers) => {
                            for (reply, answer) in replies.into_iter().zip(answers) {
                                let _ = reply.send(Ok(answer));
                            }
                        }
                        Err(error) => {
                            // Every caller retries its own request.
                            let error = format!("{error:#}");
                            for reply in replies {
                                let _ = reply.send(Err(error.clone()));
                            }
                        }
                    }
                }
            });
        }
        Self { requests }
    }

    /// Writes `item` with the next group and returns its answer.
    pub async fn submit(&self, item: T) -> anyhow::Result<R> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send((item, reply))
            .await
            .map_err(|_| anyhow::anyhow!("the writers stopped"))?;
        answer
            .await
            .map_err(|_| anyhow::anyhow!("the writer stopped"))?
            .map_err(|e| anyhow::anyhow!(e))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn requests_that_arrive_together_are_written_together_and_answered_in_order() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let batcher = Arc::new(Batcher::start(2, 128, move |items: Vec<u32>| {
            let calls = counted.clone();
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                // Slow enough that the other requests queue up behind the first groups.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                Ok(items.iter().map(|n| n * 10).collect::<Vec<_>>())
            }
        }));
        let tasks: Vec<_> = (0..200u32)
            .map(|n| {
                let batcher = batcher.clone();
                tokio::spawn(async move { (n, batcher.submit(n).await.unwrap()) })
            })
            .collect();
        for task in tasks {
            let (n, answer) = task.await.unwrap();
            assert_eq!(answer, n * 10, "each request gets its own answer");
        }
        let calls = calls.load(Ordering::SeqCst);
        assert!(calls < 20, "200 requests took {calls} writes");
    }

    #[tokio::test]
    async fn a_failed_write_fails_every_request_of_its_group() {
        let batcher = Batcher::start(1, 8, |_: Vec<u32>| async {
            Err::<Vec<()>, _>(anyhow::anyhow!("database down"))
        });
        let error = batcher.submit(1).await.unwrap_err();
        assert!(error.to_string().contains("database down"), "{error}");
    }
}
