//! Group commit of history publishes: concurrent publishes through one
//! [`Publisher`](crate::Publisher) share Redis calls.
//!
//! Each publish is queued as a job; one task takes every job waiting (up to [`MAX_ITEMS`]
//! users) and runs them as one [`PUBLISH_SCRIPT`] call per [`ITEMS_PER_CALL`] users, all in one
//! pipeline on a single server, while the previous batch is still on the wire ([`IN_FLIGHT`]
//! batches at most). On a cluster the calls are per slot, each on its slot's owner in the
//! slot's lane ([`calls::Lanes`]), up to [`CLUSTER_IN_FLIGHT`] batches at once, and a job is
//! answered as soon as its own calls are: a slot that cannot be written for a while (being
//! migrated) holds up only the publishes to its users, as long as fewer than
//! [`CLUSTER_IN_FLIGHT`] batches wait on it; beyond, new publishes wait for a batch to end.
//! An idle publisher sends each publish at once; a busy one sends fewer, larger calls, which
//! is what costs Redis less (a call's fixed cost is about as large as one user's work in it). Per user, events keep the order they were
//! queued in: batches are written in order on one connection, or in order in the user's
//! slot's lane.
//!
//! The task also decides, per user, whether a call refreshes the history's TTLs
//! ([`Refreshes`]), so that decision needs no lock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::{RedisError, Script};
use tokio::sync::{mpsc, oneshot};

use crate::conn::RedisConn;
use crate::history::{new_epoch, HistoryConfig, PUBLISH_SCRIPT};
use crate::keys::{epoch_key, history_key, slot_of, user_channel};
use crate::refresh::Refreshes;

mod calls;

use self::calls::{cluster_call, io_error, parse_reply, single_pipeline, Lanes};

/// Users per script call: bounds how long one call holds Redis (about 7 µs each).
const ITEMS_PER_CALL: usize = 64;
/// Users per batch (one pipeline); a single larger publish is sent alone.
const MAX_ITEMS: usize = 512;
/// Batches on the wire at once.
const IN_FLIGHT: usize = 2;
/// Batches under way at once on a cluster (their calls wait in their slots' lanes).
const CLUSTER_IN_FLIGHT: usize = 16;
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

/// The task: take what is queued, send it, repeat; at most [`IN_FLIGHT`] batches at once
/// ([`CLUSTER_IN_FLIGHT`] on a cluster).
async fn run(settings: Arc<Settings>, mut rx: mpsc::Receiver<Job>, queued: Arc<AtomicUsize>) {
    let script = Arc::new(Script::new(PUBLISH_SCRIPT));
    let (lanes, max_in_flight) = if settings.conn.is_cluster() {
        (Some(Arc::new(Lanes::new())), CLUSTER_IN_FLIGHT)
    } else {
        (None, IN_FLIGHT)
    };
    let mut refreshes = Refreshes::new(settings.history.refresh_interval(), Instant::now());
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            biased;
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            job = rx.recv(), if in_flight.len() < max_in_flight => {
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
                in_flight.push(batch.send(settings.clone(), script.clone(), lanes.clone()));
            }
            else => break,
        }
    }
    while in_flight.next().await.is_some() {}
}

/// One user's copy: its job, its position among the job's users.
#[derive(Clone, Copy)]
pub(super) struct Item {
    job: usize,
    position: usize,
    pub(super) user: u64,
    refresh: bool,
}

/// Jobs taken together, and their script calls (items grouped by slot on a cluster).
struct Batch {
    jobs: Vec<Job>,
    calls: Vec<Vec<Item>>,
}

impl Batch {
    fn new(jobs: Vec<Job>, settings: &Settings, refreshes: &mut Refreshes) -> Batch {
        let now = Instant::now();
        let items = jobs.iter().enumerate().flat_map(|(j, job)| {
            job.users
                .iter()
                .enumerate()
                .map(move |(position, &user)| (j, position, user))
        });
        let items: Vec<Item> = items
            .map(|(job, position, user)| Item {
                job,
                position,
                user,
                // Recorded as refreshed even if this batch fails: the keys then still live at
                // least TTL after the previous refresh, and the next refresh comes within an
                // interval (a tenth of the TTL); a history that expires anyway is recreated
                // with a new epoch, which clients see as `resync`, never as a silent gap.
                refresh: refreshes.due(user, now),
            })
            .collect();
        let calls = if settings.conn.is_cluster() {
            // One slot per call: keys of different users only share a call in the same slot.
            let mut by_slot: BTreeMap<u16, Vec<Item>> = BTreeMap::new();
            for item in items {
                let slot = slot_of(history_key(item.user).as_bytes());
                by_slot.entry(slot).or_default().push(item);
            }
            by_slot
                .into_values()
                .flat_map(|group| chunks(group, ITEMS_PER_CALL))
                .collect()
        } else {
            chunks(items, ITEMS_PER_CALL)
        };
        Batch { jobs, calls }
    }

    /// Run the calls and hand each job its result: per user its copy, or, when any call of
    /// the job's users failed without an answer from Redis (what ran is unknown), the error.
    async fn send(self, settings: Arc<Settings>, script: Arc<Script>, lanes: Option<Arc<Lanes>>) {
        let epoch = new_epoch();
        let commands: Vec<redis::Cmd> = self
            .calls
            .iter()
            .map(|items| self.command(items, &settings, &script, &epoch))
            .collect();
        let mut results: Vec<Result<Assigned, RedisError>> = self
            .jobs
            .iter()
            .map(|job| Ok(vec![Err(String::new()); job.users.len()]))
            .collect();
        let replies: Vec<_> = self.jobs.into_iter().map(|job| Some(job.reply)).collect();
        let Some(lanes) = lanes else {
            match single_pipeline(&settings, &script, commands).await {
                Ok(values) => {
                    for (items, value) in self.calls.iter().zip(values) {
                        fill(&mut results, items, value);
                    }
                }
                Err(e) => results.iter_mut().for_each(|r| *r = Err(e.clone())),
            }
            for (reply, result) in replies.into_iter().zip(results) {
                // The caller may have stopped waiting: nothing to do then.
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            return;
        };
        // Each job is answered once its last call is done.
        let mut calls_left = vec![0usize; replies.len()];
        for items in &self.calls {
            for job in jobs_of(items) {
                calls_left[job] += 1;
            }
        }
        // A call that waited in its lane runs only if one of its callers still waits: one that
        // gave up was answered 503, and publishing after that could duplicate its retry.
        let waiting = std::sync::Mutex::new(replies);
        let still_wanted = |items: &[Item]| {
            let replies = waiting.lock().unwrap_or_else(|p| p.into_inner());
            jobs_of(items).any(|j| replies[j].as_ref().is_some_and(|r| !r.is_closed()))
        };
        let mut runs: FuturesUnordered<_> = self
            .calls
            .iter()
            .zip(&commands)
            .enumerate()
            .map(|(c, (items, cmd))| {
                let (settings, script, lanes) = (&settings, &script, &lanes);
                let user = items.first().map_or(0, |item| item.user);
                let wanted = || still_wanted(items);
                async move {
                    (
                        c,
                        cluster_call(settings, script, lanes, cmd, user, wanted).await,
                    )
                }
            })
            .collect();
        while let Some((c, outcome)) = runs.next().await {
            let items = &self.calls[c];
            match outcome {
                Ok(value) => fill(&mut results, items, value),
                Err(e) => items
                    .iter()
                    .for_each(|item| results[item.job] = Err(e.clone())),
            }
            for job in jobs_of(items) {
                calls_left[job] -= 1;
                if calls_left[job] == 0 {
                    let reply = waiting.lock().unwrap_or_else(|p| p.into_inner())[job].take();
                    if let Some(reply) = reply {
                        let result = std::mem::replace(&mut results[job], Ok(Vec::new()));
                        let _ = reply.send(result);
                    }
                }
            }
        }
    }

    /// The `EVALSHA` of one call (see [`PUBLISH_SCRIPT`] for the layout).
    fn command(
        &self,
        items: &[Item],
        settings: &Settings,
        script: &Script,
        epoch: &str,
    ) -> redis::Cmd {
        let mut payloads: Vec<usize> = items.iter().map(|item| item.job).collect();
        payloads.dedup();
        // Sized up front: keys and channels of a user id are at most ~40 bytes each.
        let args = 7 + 5 * items.len() + payloads.len();
        let bytes: usize = payloads.iter().map(|&j| self.jobs[j].payload.len()).sum();
        let mut cmd = redis::Cmd::with_capacity(args, bytes + 128 * items.len() + 128);
        cmd.arg("EVALSHA");
        cmd.arg(script.get_hash()).arg(items.len() * 2);
        for item in items {
            cmd.arg(history_key(item.user)).arg(epoch_key(item.user));
        }
        let ttl = u64::try_from(settings.history.key_ttl().as_millis()).unwrap_or(u64::MAX);
        cmd.arg(settings.history.size)
            .arg(ttl)
            .arg(epoch)
            .arg(settings.conn.publish_command())
            .arg(payloads.len());
        for &job in &payloads {
            cmd.arg(&self.jobs[job].payload[..]);
        }
        for item in items {
            // Items are in job order, so the payload's index is found by its job.
            let index = payloads.iter().position(|&j| j == item.job).unwrap_or(0) + 1;
            cmd.arg(user_channel(item.user))
                .arg(index)
                .arg(if item.refresh { "1" } else { "0" });
        }
        cmd
    }
}

/// The copies of one call's `items` from its reply (or from the error Redis answered it
/// with: the call did not run), into their jobs' results.
fn fill(
    results: &mut [Result<Assigned, RedisError>],
    items: &[Item],
    value: Result<redis::Value, RedisError>,
) {
    let copies = value.and_then(|reply| parse_reply(reply, items.len()));
    let copies = match copies {
        Ok(copies) => copies,
        Err(e) if e.kind() == redis::ErrorKind::Parse => {
            // The call ran but its reply is unreadable: what became of it is unknown.
            for item in items {
                results[item.job] = Err(e.clone());
            }
            return;
        }
        Err(e) => vec![Err(e.to_string()); items.len()],
    };
    for (item, copy) in items.iter().zip(copies) {
        if let Ok(assigned) = &mut results[item.job] {
            assigned[item.position] = copy;
        }
    }
}

/// The jobs with items in `items`, each once (items are in job order).
fn jobs_of(items: &[Item]) -> impl Iterator<Item = usize> + '_ {
    items
        .iter()
        .enumerate()
        .filter(|&(i, item)| i == 0 || items[i - 1].job != item.job)
        .map(|(_, item)| item.job)
}

/// `items` in runs of at most `size`.
fn chunks(items: Vec<Item>, size: usize) -> Vec<Vec<Item>> {
    items.chunks(size).map(<[Item]>::to_vec).collect()
}
