//! Group commit: requests that arrive while a write is under way are written together by
//! the next one, so a busy process pays one round trip and one commit per group instead of
//! one per request. The worker records videos' outcomes with it, the notifier its attempts,
//! holds and retries, and local storage writes and syncs small files in groups.
//!
//! A writer may also wait a little for more requests before it writes ([`Linger`]): each
//! write's fixed cost (a transaction's statements and commit) is then shared by more
//! requests, at the price of that wait, which is why it waits only while busy.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::time::{timeout_at, Instant};

type Reply<R> = oneshot::Sender<Result<R, String>>;

/// Whether a writer waits for more requests before it writes a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linger {
    /// Write at once: the first request and whatever else has arrived meanwhile.
    Never,
    /// After a group of more than one request (the process is busy: requests arrive while
    /// groups are written), wait up to this long for more before writing the next, or until
    /// the group is full. After a lone request (an idle process) write at once, so a
    /// request on its own never waits.
    WhileBusy(Duration),
}

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
        Self::start_lingering(writers, max_group, Linger::Never, write)
    }

    /// [`Batcher::start`], with each writer waiting for more requests as `linger` says.
    pub fn start_lingering<F, Fut>(
        writers: usize,
        max_group: usize,
        linger: Linger,
        write: F,
    ) -> Self
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
                let mut busy = false;
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
                        if let (Linger::WhileBusy(wait), true) = (linger, busy) {
                            let until = Instant::now() + wait;
                            while group.len() < max_group {
                                match timeout_at(until, receiver.recv()).await {
                                    Ok(Some(request)) => group.push(request),
                                    // Dropped (write what is here) or waited long enough.
                                    Ok(None) | Err(_) => break,
                                }
                            }
                        }
                        group
                    };
                    busy = group.len() > 1;
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

    /// Submits `n` on its own task after `after` (of paused time), returning its answer.
    fn submit_after(
        batcher: &Arc<Batcher<u32, u32>>,
        n: u32,
        after: Duration,
    ) -> tokio::task::JoinHandle<u32> {
        let batcher = batcher.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            batcher.submit(n).await.unwrap()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_writer_waits_for_more_and_an_idle_one_writes_at_once() {
        let groups = Arc::new(std::sync::Mutex::new(Vec::<Vec<u32>>::new()));
        let written = groups.clone();
        let batcher = Arc::new(Batcher::start_lingering(
            1,
            4,
            Linger::WhileBusy(Duration::from_millis(10)),
            move |items: Vec<u32>| {
                written.lock().unwrap().push(items.clone());
                async move { Ok(items) }
            },
        ));
        let ms = Duration::from_millis;
        // Idle: 1 is written alone, and 2, five milliseconds later, alone too.
        let (one, two) = (
            submit_after(&batcher, 1, ms(0)),
            submit_after(&batcher, 2, ms(5)),
        );
        assert_eq!((one.await.unwrap(), two.await.unwrap()), (1, 2));
        // 3 and 4 arrive together: a group of two, so the writer is busy now ...
        let (three, four) = (
            submit_after(&batcher, 3, ms(0)),
            submit_after(&batcher, 4, ms(0)),
        );
        assert_eq!((three.await.unwrap(), four.await.unwrap()), (3, 4));
        // ... and waits for 6, five milliseconds behind 5; then for 8 again, but a group is
        // full at four: 9 goes into the next one.
        let later: Vec<_> = [
            (5, 0),
            (6, 5),
            (7, 30),
            (8, 31),
            (9, 31),
            (10, 31),
            (11, 31),
        ]
        .into_iter()
        .map(|(n, at)| submit_after(&batcher, n, ms(at)))
        .collect();
        for (task, n) in later.into_iter().zip(5..) {
            assert_eq!(task.await.unwrap(), n, "each request gets its own answer");
        }
        // Not busy after a lone request: 12, five milliseconds behind a lone write, is alone.
        let (twelve, thirteen) = (
            submit_after(&batcher, 12, ms(0)),
            submit_after(&batcher, 13, ms(5)),
        );
        assert_eq!((twelve.await.unwrap(), thirteen.await.unwrap()), (12, 13));
        assert_eq!(
            *groups.lock().unwrap(),
            vec![
                vec![1],
                vec![2],
                vec![3, 4],
                vec![5, 6],
                vec![7, 8, 9, 10],
                vec![11],
                vec![12],
                vec![13],
            ]
        );
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
