//! MD5 of many uploads at once. One MD5 stream is serial (each 64-byte block needs the state
//! the block before left), but the uploads a worker runs side by side are independent: one
//! thread per [`Md5Lanes`] hashes all of them together, 8 or 16 streams to an AVX2 or AVX-512
//! instruction (the `md5-many` crate), which costs about a tenth of the CPU per byte that
//! hashing each stream on its own costs (0.14 against 1.3–1.5 ms per MiB on the machine of
//! docs/benchmarks.md's eleventh round).
//!
//! An upload hashes its first [`INLINE_BYTES`] where it runs (a small video never leaves
//! its task), then hands the state and every later chunk to the lanes' thread, and awaits
//! the digest when it finishes. The chunks waiting there are bounded by [`BUDGET_BYTES`]:
//! an upload that would exceed it waits for its earlier chunks to be hashed.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use md5_many::{Md5Many, Md5State};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

/// Bytes an upload hashes on its own task before it moves to the lanes: a small video costs
/// no hand-over to another thread, and its finish no wait.
pub const INLINE_BYTES: u64 = 128 * 1024;

/// Bytes of chunks that may wait for the lanes' thread at once, per [`Md5Lanes`].
pub const BUDGET_BYTES: usize = 8 * 1024 * 1024;

/// The budget's unit: a permit per KiB (a semaphore counts in `u32`).
const PERMIT_BYTES: usize = 1024;

/// Chunks smaller than this are copied together into one this large before they go to the
/// thread.
const GATHER_BYTES: usize = 64 * 1024;

/// How long the thread waits for more streams' chunks before hashing what it has, while
/// fewer than a full set of lanes have data (more lanes per instruction, fewer wake-ups).
const LINGER: Duration = Duration::from_millis(2);

/// Bytes queued that make the thread start at once whatever the lanes' count.
const ENOUGH_QUEUED: usize = 4 * 1024 * 1024;

/// Budget a stream's chunks may hold while waiting for other streams to hash beside (at
/// most `MIN_SIMD_STREAMS - 1` streams keep any, well within [`BUDGET_BYTES`]).
const KEPT_BYTES: usize = 1024 * 1024;

/// The most of the budget one chunk takes: what is left while the streams waiting for
/// company hold all they may. A larger chunk counts as this much, so that a waiting chunk
/// always gets its share once a round has hashed the rest (the budget serves its waiters in
/// order, and kept bytes go only when more bytes come, which would otherwise queue behind).
const CHUNK_PERMITS: usize = (BUDGET_BYTES - (MIN_SIMD_STREAMS - 1) * KEPT_BYTES) / PERMIT_BYTES;

/// Fewer streams with data than this are hashed one at a time: a SIMD pass costs the same
/// whether its lanes carry data or not, and two streams do not repay a 16-lane pass.
const MIN_SIMD_STREAMS: usize = 3;

/// The thread that hashes the uploads of one storage, started with its first large upload.
#[derive(Default)]
pub struct Md5Lanes {
    /// `None` when the thread could not be started: every stream then hashes on its own.
    shared: OnceLock<Option<Arc<Shared>>>,
}

struct Shared {
    commands: mpsc::Sender<Command>,
    budget: Arc<Semaphore>,
    next_id: AtomicU64,
}

impl Md5Lanes {
    fn shared(&self) -> Option<&Arc<Shared>> {
        self.shared
            .get_or_init(|| {
                let (commands, receiver) = mpsc::channel();
                let started = std::thread::Builder::new()
                    .name("md5-lanes".into())
                    .spawn(move || Hasher::new(receiver).run());
                if let Err(e) = started {
                    tracing::warn!(error = %e, "no thread for the MD5 lanes: each upload hashes its own");
                    return None;
                }
                Some(Arc::new(Shared {
                    commands,
                    budget: Arc::new(Semaphore::new(BUDGET_BYTES / PERMIT_BYTES)),
                    next_id: AtomicU64::new(0),
                }))
            })
            .as_ref()
    }
}

/// What an upload asks of the lanes' thread; one upload's commands arrive in order.
enum Command {
    /// A stream begins, from what its upload hashed itself.
    Start { id: u64, state: Md5State },
    /// The next chunk of a stream, holding its share of the budget until hashed.
    Data {
        id: u64,
        chunk: Bytes,
        permit: OwnedSemaphorePermit,
    },
    /// No more chunks: the digest, please.
    Finish {
        id: u64,
        reply: oneshot::Sender<[u8; 16]>,
    },
    /// The upload was abandoned: its state and chunks go.
    Forget { id: u64 },
}

/// The MD5 of one upload: hashed where it runs at first, by the lanes once it is large.
pub struct Md5Stream {
    lanes: Arc<Md5Lanes>,
    stage: Stage,
}

enum Stage {
    Inline(Md5State),
    Lane {
        shared: Arc<Shared>,
        id: u64,
        /// Small chunks copied together until [`GATHER_BYTES`].
        gathered: BytesMut,
    },
    Done,
}

impl Md5Stream {
    /// A stream that hashes on its own until [`INLINE_BYTES`], then in `lanes`.
    pub fn new(lanes: Arc<Md5Lanes>) -> Self {
        Self {
            lanes,
            stage: Stage::Inline(Md5State::new()),
        }
    }

    /// Hashes `chunk` next, waiting while the lanes' budget is spent.
    pub async fn update(&mut self, chunk: &Bytes) {
        if let Stage::Inline(state) = &mut self.stage {
            let shared = match self.lanes.shared() {
                Some(shared) if state.bytes_hashed() + chunk.len() as u64 > INLINE_BYTES => {
                    shared.clone()
                }
                _ => {
                    state.update(chunk);
                    return;
                }
            };
            let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
            let state = *state;
            // The thread lives as long as any sender: a send cannot fail.
            let _ = shared.commands.send(Command::Start { id, state });
            self.stage = Stage::Lane {
                shared,
                id,
                gathered: BytesMut::new(),
            };
        }
        let Stage::Lane {
            shared,
            id,
            gathered,
        } = &mut self.stage
        else {
            unreachable!("a finished stream is not updated");
        };
        // Small chunks (a source may send a few bytes at a time) are copied together, so that
        // every chunk the thread holds is worth its share of the budget and holds no larger
        // read buffer of the HTTP client behind it.
        if chunk.len() < GATHER_BYTES || !gathered.is_empty() {
            gathered.extend_from_slice(chunk);
            if gathered.len() >= GATHER_BYTES {
                let whole = gathered.split().freeze();
                send(shared, *id, whole).await;
            }
        } else {
            send(shared, *id, chunk.clone()).await;
        }
    }

    /// The digest of everything hashed.
    pub async fn finish(&mut self) -> std::io::Result<[u8; 16]> {
        match std::mem::replace(&mut self.stage, Stage::Done) {
            Stage::Inline(state) => Ok(state.finalize()),
            Stage::Lane {
                shared,
                id,
                mut gathered,
            } => {
                if !gathered.is_empty() {
                    send(&shared, id, gathered.split().freeze()).await;
                }
                let (reply, digest) = oneshot::channel();
                let _ = shared.commands.send(Command::Finish { id, reply });
                // Unanswered only if the thread is gone (a bug): said, not panicked on.
                digest
                    .await
                    .map_err(|_| std::io::Error::other("the MD5 thread stopped before it answered"))
            }
            Stage::Done => Err(std::io::Error::other("the MD5 was already finished")),
        }
    }
}

impl Drop for Md5Stream {
    fn drop(&mut self) {
        if let Stage::Lane { shared, id, .. } = &self.stage {
            let _ = shared.commands.send(Command::Forget { id: *id });
        }
    }
}

/// Hands `chunk` of stream `id` to the thread once the budget has room for it.
async fn send(shared: &Shared, id: u64, chunk: Bytes) {
    let permits = chunk.len().div_ceil(PERMIT_BYTES).min(CHUNK_PERMITS) as u32;
    let permit = shared
        .budget
        .clone()
        .acquire_many_owned(permits)
        .await
        .expect("the budget is never closed");
    let _ = shared.commands.send(Command::Data { id, chunk, permit });
}

/// One stream on the lanes' thread: its state and the chunks not yet hashed.
struct Lane {
    state: Md5State,
    /// Each chunk with its share of the budget, given back once it is hashed.
    queue: VecDeque<(Bytes, OwnedSemaphorePermit)>,
    /// Bytes of the queue's front chunk already hashed.
    offset: usize,
    finish: Option<oneshot::Sender<[u8; 16]>>,
}

impl Lane {
    fn front(&self) -> &[u8] {
        self.queue.front().map_or(&[], |(c, _)| &c[self.offset..])
    }

    /// Hashes the front chunk's next `n` bytes one stream alone.
    fn hash_front(&mut self, n: usize) {
        if let Some((chunk, _)) = self.queue.front() {
            self.state.update(&chunk[self.offset..self.offset + n]);
        }
        self.consume(n);
    }

    /// The budget this stream's waiting chunks hold, in bytes.
    fn held(&self) -> usize {
        self.queue
            .iter()
            .map(|(_, p)| p.num_permits() * PERMIT_BYTES)
            .sum()
    }

    fn unhashed(&self) -> usize {
        self.queue.iter().map(|(c, _)| c.len()).sum::<usize>() - self.offset
    }

    fn consume(&mut self, n: usize) {
        self.offset += n;
        if self
            .queue
            .front()
            .is_some_and(|(c, _)| self.offset == c.len())
        {
            self.queue.pop_front();
            self.offset = 0;
        }
    }

    /// Hashes single bytes until the state stands at a block boundary with at least a
    /// block in the front chunk (what a SIMD pass needs), or the queue is empty. Only the
    /// seams between chunks go this way: at most 63 bytes each side of one.
    fn align(&mut self) {
        loop {
            let partial = (self.state.bytes_hashed() % 64) as usize;
            let front = self.front();
            if front.is_empty() {
                return;
            }
            let take = if partial != 0 {
                (64 - partial).min(front.len())
            } else if front.len() < 64 {
                front.len()
            } else {
                return;
            };
            self.hash_front(take);
        }
    }

    /// Whole blocks ready in the front chunk (the state is aligned after [`Lane::align`]).
    fn ready(&self) -> usize {
        self.front().len() / 64 * 64
    }
}

struct Hasher {
    commands: mpsc::Receiver<Command>,
    engine: Md5Many,
    lanes: HashMap<u64, Lane>,
}

impl Hasher {
    fn new(commands: mpsc::Receiver<Command>) -> Self {
        Self {
            commands,
            engine: Md5Many::new(),
            lanes: HashMap::new(),
        }
    }

    /// Until every sender is gone: take what came, wait briefly for more while few streams
    /// have data, hash it all, answer the finished streams.
    fn run(mut self) {
        while let Ok(first) = self.commands.recv() {
            self.take(first);
            let deadline = Instant::now() + LINGER;
            loop {
                while let Ok(command) = self.commands.try_recv() {
                    self.take(command);
                }
                if self.finishing() || self.busy() {
                    break;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                match self.commands.recv_timeout(left) {
                    Ok(command) => self.take(command),
                    Err(_) => break,
                }
            }
            self.hash_queued();
            self.answer();
        }
    }

    /// A stream waits for its digest: no reason to wait for more.
    fn finishing(&self) -> bool {
        self.lanes.values().any(|l| l.finish.is_some())
    }

    /// Enough to fill the lanes: no reason to wait.
    fn busy(&self) -> bool {
        self.lanes.values().map(Lane::unhashed).sum::<usize>() >= ENOUGH_QUEUED
            || self.lanes.values().filter(|l| !l.queue.is_empty()).count() >= self.engine.lanes()
    }

    fn take(&mut self, command: Command) {
        match command {
            Command::Start { id, state } => {
                self.lanes.insert(
                    id,
                    Lane {
                        state,
                        queue: VecDeque::new(),
                        offset: 0,
                        finish: None,
                    },
                );
            }
            Command::Data { id, chunk, permit } => {
                if let Some(lane) = self.lanes.get_mut(&id) {
                    lane.queue.push_back((chunk, permit));
                }
            }
            Command::Finish { id, reply } => {
                if let Some(lane) = self.lanes.get_mut(&id) {
                    lane.finish = Some(reply);
                }
            }
            Command::Forget { id } => {
                self.lanes.remove(&id);
            }
        }
    }

    /// Hashes what is queued in SIMD passes while at least [`MIN_SIMD_STREAMS`] streams have
    /// whole blocks waiting (the seams between chunks one stream at a time). What is left
    /// then, on fewer streams, waits for the next round's company, unless its stream is
    /// finishing or holds [`KEPT_BYTES`]: a lone stream is hashed alone a piece at a time.
    fn hash_queued(&mut self) {
        let width = self.engine.lanes();
        // A CPU without SIMD lanes enough (md5-many gives 1 where it has no vector code):
        // every stream alone.
        let simd = width >= MIN_SIMD_STREAMS;
        loop {
            let mut ready: Vec<(u64, usize)> = Vec::new();
            for (id, lane) in self.lanes.iter_mut() {
                lane.align();
                if lane.ready() > 0 {
                    ready.push((*id, lane.ready()));
                }
            }
            if !simd || ready.len() < MIN_SIMD_STREAMS {
                break;
            }
            // Similar lengths side by side, so that each pass wastes little.
            ready.sort_unstable_by_key(|&(_, n)| std::cmp::Reverse(n));
            for group in ready.chunks(width) {
                if group.len() >= MIN_SIMD_STREAMS {
                    let n = group.iter().map(|&(_, n)| n).min().unwrap_or(0);
                    self.pass(group, n, width);
                }
            }
        }
        for lane in self.lanes.values_mut() {
            if !simd || lane.finish.is_some() || lane.held() >= KEPT_BYTES {
                while let Some(n) = lane.queue.front().map(|(c, _)| c.len() - lane.offset) {
                    lane.hash_front(n);
                }
            }
        }
    }

    /// One SIMD pass: `n` bytes (whole blocks) of each stream in `group`, the spare lanes of
    /// the instruction filled with copies of the first stream's bytes into a throw-away state.
    fn pass(&mut self, group: &[(u64, usize)], n: usize, width: usize) {
        let mut states: Vec<Md5State> = Vec::with_capacity(width);
        let mut inputs: Vec<&[u8]> = Vec::with_capacity(width);
        for &(id, _) in group {
            let lane = &self.lanes[&id];
            states.push(lane.state);
            inputs.push(&lane.front()[..n]);
        }
        while !states.len().is_multiple_of(width) {
            states.push(Md5State::new());
            inputs.push(inputs[0]);
        }
        self.engine.update_many(&mut states, &inputs);
        for (&(id, _), state) in group.iter().zip(states) {
            let lane = self.lanes.get_mut(&id).expect("a ready lane");
            lane.state = state;
            lane.consume(n);
        }
    }

    /// Answers the streams whose every chunk is hashed and that asked for their digest.
    fn answer(&mut self) {
        let done: Vec<u64> = self
            .lanes
            .iter()
            .filter(|(_, l)| l.finish.is_some() && l.queue.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            let mut lane = self.lanes.remove(&id).expect("a finished lane");
            if let Some(reply) = lane.finish.take() {
                let _ = reply.send(lane.state.finalize());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use md5::{Digest, Md5};

    /// Bytes that differ at every position, so a chunk hashed twice or skipped shows.
    fn bytes(len: usize, seed: u64) -> Bytes {
        let mut state = seed;
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (state >> 33) as u8
            })
            .collect::<Vec<u8>>()
            .into()
    }

    fn reference(data: &[u8]) -> [u8; 16] {
        Md5::digest(data).into()
    }

    /// Many streams at once, cut into chunks of awkward and differing sizes, the way
    /// concurrent downloads arrive: every digest equals the plain MD5 of its bytes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_hashed_together_give_each_its_own_md5() {
        let lanes = Arc::new(Md5Lanes::default());
        let mut tasks = Vec::new();
        for s in 0..40u64 {
            // 0 bytes to a few MiB: inline only, just past the hand-over, well past it.
            let len = match s % 5 {
                0 => 0,
                1 => 1000 + s as usize,
                2 => INLINE_BYTES as usize + 1,
                3 => 3 * 1024 * 1024 + 17 * s as usize,
                _ => 1024 * 1024 + 65_536 * s as usize + 63,
            };
            let data = bytes(len, s);
            let lanes = lanes.clone();
            tasks.push(tokio::spawn(async move {
                let mut stream = Md5Stream::new(lanes);
                let mut at = 0;
                let mut step = 0;
                while at < data.len() {
                    // 1 byte to ~200 KiB, never a multiple of 64 for long.
                    let size = [1, 63, 64, 65, 4096, 65_537, 200_003][(step + s as usize) % 7];
                    let end = (at + size).min(data.len());
                    stream.update(&data.slice(at..end)).await;
                    at = end;
                    step += 1;
                }
                (stream.finish().await.unwrap(), reference(&data), len)
            }));
        }
        for task in tasks {
            let (got, want, len) = task.await.unwrap();
            assert_eq!(got, want, "a stream of {len} bytes");
        }
    }

    /// A stream's bytes kept waiting for company never hold up another stream's chunk as
    /// large as the whole budget (nor the kept stream's next chunk, which queues behind it).
    #[tokio::test]
    async fn kept_bytes_never_block_a_large_chunk() {
        let lanes = Arc::new(Md5Lanes::default());
        let (a_bytes, b_bytes) = (bytes(3 * 1024 * 1024, 3), bytes(BUDGET_BYTES + 4096, 4));
        let inline = INLINE_BYTES as usize;
        let both = async {
            let mut a = Md5Stream::new(lanes.clone());
            a.update(&a_bytes.slice(..inline)).await;
            // Alone in the lanes: kept until company or more bytes come.
            a.update(&a_bytes.slice(inline..inline + 300 * 1024)).await;
            let mut b = Md5Stream::new(lanes.clone());
            b.update(&b_bytes.slice(..inline)).await;
            b.update(&b_bytes.slice(inline..)).await;
            a.update(&a_bytes.slice(inline + 300 * 1024..)).await;
            (a.finish().await.unwrap(), b.finish().await.unwrap())
        };
        let (a, b) = tokio::time::timeout(Duration::from_secs(30), both)
            .await
            .expect("no stream waits forever for the budget");
        assert_eq!(a, reference(&a_bytes));
        assert_eq!(b, reference(&b_bytes));
    }

    /// A source that sends a few bytes at a time: more chunks than the budget has permits,
    /// from a stream alone in the lanes (whose bytes are kept waiting for company).
    #[tokio::test]
    async fn many_tiny_chunks_never_exhaust_the_budget() {
        let lanes = Arc::new(Md5Lanes::default());
        let data = bytes(
            INLINE_BYTES as usize + 3 * BUDGET_BYTES / PERMIT_BYTES * 100,
            5,
        );
        let alone = async {
            let mut stream = Md5Stream::new(lanes.clone());
            for at in (0..data.len()).step_by(100) {
                stream
                    .update(&data.slice(at..(at + 100).min(data.len())))
                    .await;
            }
            stream.finish().await.unwrap()
        };
        let digest = tokio::time::timeout(Duration::from_secs(30), alone)
            .await
            .expect("tiny chunks do not use up the budget");
        assert_eq!(digest, reference(&data));
    }

    /// An abandoned stream, its chunks hashed or still waiting, leaves the thread working
    /// and the budget whole: a later stream needing all of it gets its right digest.
    #[tokio::test]
    async fn an_abandoned_stream_leaves_the_others_right() {
        let lanes = Arc::new(Md5Lanes::default());
        let big = bytes(BUDGET_BYTES, 7);
        let mut dropped = Md5Stream::new(lanes.clone());
        dropped.update(&bytes(INLINE_BYTES as usize, 1)).await;
        dropped.update(&big).await;
        drop(dropped);
        // Needs the whole budget again: only possible once the dropped stream's chunks went.
        let mut kept = Md5Stream::new(lanes.clone());
        kept.update(&big.slice(..INLINE_BYTES as usize)).await;
        kept.update(&big.slice(INLINE_BYTES as usize..)).await;
        kept.update(&big).await;
        let mut whole = big.to_vec();
        whole.extend_from_slice(&big);
        assert_eq!(kept.finish().await.unwrap(), reference(&whole));
    }
}
