//! Group commit of history publishes: concurrent publishes through one
//! [`Publisher`](crate::Publisher) share Redis calls.
//!
//! Each publish is queued as a job; one task takes every job waiting (up to [`MAX_ITEMS`]
//! users) and runs them as one [`PUBLISH_SCRIPT`] call per [`ITEMS_PER_CALL`] users, all in one
//! pipeline on a single server, while the previous batch is still on the wire ([`IN_FLIGHT`]
//! batches at most). On a cluster the calls are per slot, each on its slot's owner in the
//! slot's lane ([`calls::Lanes`]), up to [`CLUSTER_IN_FLIGHT`] batches at once, and a job is
//! answered as soon as its own calls are: a slot or a node that cannot be written for a while
//! (being migrated, paused, cut off) holds up only the publishes to its users. A cluster batch
//! still under way after [`STEP_ASIDE`] stops counting against [`CLUSTER_IN_FLIGHT`] (it goes
//! on meanwhile), so batches stuck on one node do not hold up new ones to the others; the
//! batches set aside are bounded by their bytes ([`ASIDE_BYTES`]).
//! An idle publisher sends each publish at once; a busy one sends fewer, larger calls, which
//! is what costs Redis less (a call's fixed cost is about as large as one user's work in it). Per user, events keep the order they were
//! queued in: batches are written in order on one connection, or in order in the user's
//! slot's lane.
//!
//! The task also decides, per user, whether a call refreshes the history's TTLs
//! ([`Refreshes`]), so that decision needs no lock.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{select, Either};
use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::RedisError;
use tokio::sync::{mpsc, oneshot};

use crate::conn::RedisConn;
use crate::history::{HistoryConfig, PUBLISH_SCRIPT};
use crate::refresh::Refreshes;
use crate::script::SlotScript;

mod batch;
mod calls;

use self::batch::Batch;
use self::calls::{io_error, Lanes};

/// Users per script call: bounds how long one call holds Redis (about 7 µs each).
const ITEMS_PER_CALL: usize = 64;
/// Users per batch (one pipeline); a single larger publish is sent alone.
const MAX_ITEMS: usize = 512;
/// Batches on the wire at once.
const IN_FLIGHT: usize = 2;
/// Batches under way at once on a cluster (their calls wait in their slots' lanes)…
const CLUSTER_IN_FLIGHT: usize = 16;
/// …not counting those under way for longer than this (far above a healthy call's time, far
/// below `--redis-timeout`), which are set aside…
const STEP_ASIDE: Duration = Duration::from_millis(100);
/// …while their commands' bytes stay below this.
const ASIDE_BYTES: usize = 64 << 20;
/// Publishes queued before new ones fail at once (the caller answers "unavailable")…
const QUEUE: usize = 16_384;
/// …and the bytes of their events (a Redis that stops answering must not let callers that
/// gave up pile up their events in memory).
const QUEUE_BYTES: usize = 64 << 20;

/// One user's copy of a publish: the event id and how many subscriptions received it, or the
/// error the user's own keys answered (that copy was not published).
pub(crate) type UserCopy = Result<(String, u64), String>;

/// Per user of a publish, in order: what became of the user's copy.
pub(crate) type Assigned = Vec<UserCopy>;

/// What a batch needs besides its jobs.
pub(crate) struct Settings {
    pub(crate) conn: RedisConn,
    pub(crate) history: HistoryConfig,
    /// Replicas that must acknowledge each batch (`WAIT`), and how long to wait for them.
    pub(crate) replicas: Option<(u32, Duration)>,
}

/// One queued publish: distinct users, the encoded event (no id), where the result goes.
struct Job {
    users: Vec<u64>,
    payload: Vec<u8>,
    reply: oneshot::Sender<Result<Assigned, RedisError>>,
}

/// Handle of the batching task; the task ends when the last handle is dropped.
pub(crate) struct Batcher {
    jobs: mpsc::Sender<Job>,
    /// Bytes of the events queued and not yet taken by the task.
    queued: Arc<AtomicUsize>,
}

impl Batcher {
    /// Start the task on the current Tokio runtime.
    pub(crate) fn spawn(settings: Settings) -> Batcher {
        let (jobs, rx) = mpsc::channel(QUEUE);
        let queued = Arc::new(AtomicUsize::new(0));
        tokio::spawn(run(Arc::new(settings), rx, queued.clone()));
        Batcher { jobs, queued }
    }

    /// Publish `payload` to `users` (distinct, not empty) with history.
    pub(crate) async fn publish(
        &self,
        users: Vec<u64>,
        payload: &[u8],
    ) -> Result<Assigned, RedisError> {
        let size = payload.len();
        if self.queued.fetch_add(size, Ordering::Relaxed) + size > QUEUE_BYTES {
            self.queued.fetch_sub(size, Ordering::Relaxed);
            return Err(io_error("publish not queued", "queue full".into()));
        }
        let (reply, result) = oneshot::channel();
        let job = Job {
            users,
            payload: payload.to_vec(),
            reply,
        };
        self.jobs.try_send(job).map_err(|e| {
            self.queued.fetch_sub(size, Ordering::Relaxed);
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "queue full",
                mpsc::error::TrySendError::Closed(_) => "publisher task gone",
            };
            io_error("publish not queued", why.to_string())
        })?;
        result
            .await
            .map_err(|_| io_error("publish dropped", "publisher task gone".into()))?
    }
}

/// A batch being sent; it ends when every job has its answer.
type Sending = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A batch counted against the limit: ends with `None` when the batch is done, or with the
/// batch and its bytes when it has been under way for [`STEP_ASIDE`] (cluster only).
type Counted = Pin<Box<dyn Future<Output = Option<(Sending, usize)>> + Send>>;

/// The task: take what is queued, send it, repeat; at most [`IN_FLIGHT`] batches at once
/// ([`CLUSTER_IN_FLIGHT`] on a cluster, plus those set aside).
async fn run(settings: Arc<Settings>, mut rx: mpsc::Receiver<Job>, queued: Arc<AtomicUsize>) {
    let script = Arc::new(SlotScript::new(PUBLISH_SCRIPT));
    let (lanes, max_in_flight) = if settings.conn.is_cluster() {
        (Some(Arc::new(Lanes::new())), CLUSTER_IN_FLIGHT)
    } else {
        (None, IN_FLIGHT)
    };
    let mut refreshes = Refreshes::new(settings.history.refresh_interval(), Instant::now());
    let mut in_flight: FuturesUnordered<Counted> = FuturesUnordered::new();
    let mut aside = FuturesUnordered::new();
    let mut aside_bytes = 0usize;
    loop {
        tokio::select! {
            biased;
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                if let Some((batch, bytes)) = done {
                    aside_bytes += bytes;
                    aside.push(finish(batch, bytes));
                }
            }
            Some(bytes) = aside.next(), if !aside.is_empty() => aside_bytes -= bytes,
            job = rx.recv(), if in_flight.len() < max_in_flight && aside_bytes < ASIDE_BYTES => {
                let Some(job) = job else { break };
                let mut jobs = vec![job];
                let mut items = jobs[0].users.len();
                while items < MAX_ITEMS {
                    let Ok(job) = rx.try_recv() else { break };
                    items += job.users.len();
                    jobs.push(job);
                }
                let taken = jobs.iter().map(|job| job.payload.len()).sum();
                queued.fetch_sub(taken, Ordering::Relaxed);
                // A caller that gave up (its deadline passed) is not published for.
                jobs.retain(|job| !job.reply.is_closed());
                if jobs.is_empty() {
                    continue;
                }
                let batch = Batch::new(jobs, &settings, &mut refreshes);
                let bytes = batch.bytes();
                let sending: Sending =
                    Box::pin(batch.send(settings.clone(), script.clone(), lanes.clone()));
                in_flight.push(if lanes.is_some() {
                    Box::pin(async move {
                        match select(sending, Box::pin(tokio::time::sleep(STEP_ASIDE))).await {
                            Either::Left(((), _)) => None,
                            Either::Right(((), sending)) => Some((sending, bytes)),
                        }
                    })
                } else {
                    Box::pin(async move {
                        sending.await;
                        None
                    })
                });
            }
            else => break,
        }
    }
    // Queue closed: finish what is under way.
    while let Some(done) = in_flight.next().await {
        if let Some((batch, bytes)) = done {
            aside.push(finish(batch, bytes));
        }
    }
    while aside.next().await.is_some() {}
}

/// A batch set aside, to the end; gives back its bytes.
async fn finish(batch: Sending, bytes: usize) -> usize {
    batch.await;
    bytes
}
