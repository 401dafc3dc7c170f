//! Group commit of history publishes: concurrent publishes through one
//! [`Publisher`](crate::Publisher) share Redis calls.
//!
//! Each publish is queued as a job; one task takes every job waiting (up to [`MAX_ITEMS`]
//! users) and runs them as one [`PUBLISH_SCRIPT`] call per [`ITEMS_PER_CALL`] users, all in one
//! pipeline on a single server (per slot on a cluster), while the previous batch is still on
//! the wire ([`IN_FLIGHT`] batches at most). An idle publisher sends each publish at once; a
//! busy one sends fewer, larger calls, which is what costs Redis less (a call's fixed cost is
//! about as large as one user's work in it). Per user, events keep the order they were queued
//! in: batches are written in order on one connection.
//!
//! The task also decides, per user, whether a call refreshes the history's TTLs
//! ([`Refreshes`]), so that decision needs no lock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::{RedisError, Script, Value};
use tokio::sync::{mpsc, oneshot};

use crate::conn::RedisConn;
use crate::history::{new_epoch, HistoryConfig, PUBLISH_SCRIPT};
use crate::keys::{epoch_key, history_key, slot_of, user_channel};
use crate::refresh::Refreshes;

/// Users per script call: bounds how long one call holds Redis (about 7 µs each).
const ITEMS_PER_CALL: usize = 64;
/// Users per batch (one pipeline); a single larger publish is sent alone.
const MAX_ITEMS: usize = 512;
/// Batches on the wire at once.
const IN_FLIGHT: usize = 2;
/// Publishes queued before new ones fail at once (the caller answers "unavailable").
const QUEUE: usize = 16_384;

/// Per user of a publish: the event id and how many subscriptions received it.
pub(crate) type Assigned = Vec<(String, u64)>;

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
}

impl Batcher {
    /// Start the task on the current Tokio runtime.
    pub(crate) fn spawn(settings: Settings) -> Batcher {
        let (jobs, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(Arc::new(settings), rx));
        Batcher { jobs }
    }

    /// Publish `payload` to `users` (distinct, not empty) with history.
    pub(crate) async fn publish(
        &self,
        users: Vec<u64>,
        payload: &[u8],
    ) -> Result<Assigned, RedisError> {
        let (reply, result) = oneshot::channel();
        let job = Job {
            users,
            payload: payload.to_vec(),
            reply,
        };
        self.jobs.try_send(job).map_err(|e| {
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

/// The task: take what is queued, send it, repeat; at most [`IN_FLIGHT`] batches at once.
async fn run(settings: Arc<Settings>, mut rx: mpsc::Receiver<Job>) {
    let script = Arc::new(Script::new(PUBLISH_SCRIPT));
    let mut refreshes = Refreshes::new(settings.history.refresh_interval(), Instant::now());
    let mut in_flight = FuturesUnordered::new();
    loop {
        tokio::select! {
            biased;
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            job = rx.recv(), if in_flight.len() < IN_FLIGHT => {
                let Some(job) = job else { break };
                let mut jobs = vec![job];
                let mut items = jobs[0].users.len();
                while items < MAX_ITEMS {
                    let Ok(job) = rx.try_recv() else { break };
                    items += job.users.len();
                    jobs.push(job);
                }
                // A caller that gave up (its deadline passed) is not published for.
                jobs.retain(|job| !job.reply.is_closed());
                if jobs.is_empty() {
                    continue;
                }
                let batch = Batch::new(jobs, &settings, &mut refreshes);
                in_flight.push(batch.send(settings.clone(), script.clone()));
            }
            else => break,
        }
    }
    while in_flight.next().await.is_some() {}
}

/// One user's copy: its job, its position among the job's users.
#[derive(Clone, Copy)]
struct Item {
    job: usize,
    position: usize,
    user: u64,
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

    /// Run the calls and hand each job its result (or the error, to every job).
    async fn send(self, settings: Arc<Settings>, script: Arc<Script>) {
        let epoch = new_epoch();
        let commands: Vec<redis::Cmd> = self
            .calls
            .iter()
            .map(|items| self.command(items, &settings, &script, &epoch))
            .collect();
        let replies = if settings.conn.is_cluster() {
            cluster_calls(&settings, &script, &commands, &self.calls).await
        } else {
            single_pipeline(&settings, &script, &commands).await
        };
        let mut results: Vec<Vec<(String, u64)>> = self
            .jobs
            .iter()
            .map(|job| vec![(String::new(), 0); job.users.len()])
            .collect();
        let outcome = replies.and_then(|replies| {
            for (items, reply) in self.calls.iter().zip(replies) {
                let assigned = parse_reply(reply, items.len())?;
                for (item, slot) in items.iter().zip(assigned) {
                    results[item.job][item.position] = slot;
                }
            }
            Ok(())
        });
        for (job, result) in self.jobs.into_iter().zip(results) {
            // The caller may have stopped waiting: nothing to do then.
            let _ = job.reply.send(match &outcome {
                Ok(()) => Ok(result),
                Err(e) => Err(e.clone()),
            });
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
        let mut cmd = redis::cmd("EVALSHA");
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

/// `items` in runs of at most `size`.
fn chunks(items: Vec<Item>, size: usize) -> Vec<Vec<Item>> {
    items.chunks(size).map(<[Item]>::to_vec).collect()
}

/// Every call in one pipeline (plus the `WAIT`, on the same connection: a failover in
/// between would let a `WAIT` on the new primary return at once); reloads the script once if
/// the server lost it (then nothing ran).
async fn single_pipeline(
    settings: &Settings,
    script: &Script,
    commands: &[redis::Cmd],
) -> Result<Vec<Value>, RedisError> {
    let mut pipe = redis::pipe();
    for cmd in commands {
        pipe.add_command(cmd.clone());
    }
    let wait = settings.replicas.map(|(replicas, timeout)| {
        pipe.add_command(wait_command(replicas, timeout));
        replicas
    });
    let mut conn = settings.conn.clone();
    let mut values: Vec<Value> = match pipe.query_async(&mut conn).await {
        Err(e) if is_noscript(&e) => {
            script.prepare_invoke().load_async(&mut conn).await?;
            pipe.query_async(&mut conn).await?
        }
        other => other?,
    };
    if let Some(replicas) = wait {
        let acked = values.pop().unwrap_or(Value::Nil);
        enough_replicas(acked, replicas)?;
    }
    Ok(values)
}

/// Each call on its slot's owner (concurrently), then the `WAIT`s per slot when configured.
async fn cluster_calls(
    settings: &Settings,
    script: &Script,
    commands: &[redis::Cmd],
    calls: &[Vec<Item>],
) -> Result<Vec<Value>, RedisError> {
    let runs = commands.iter().map(|cmd| {
        let mut conn = settings.conn.clone();
        async move {
            match cmd.query_async::<Value>(&mut conn).await {
                Err(e) if is_noscript(&e) => {
                    script.prepare_invoke().load_async(&mut conn).await?;
                    cmd.query_async(&mut conn).await
                }
                other => other,
            }
        }
    });
    let values = futures_util::future::try_join_all(runs).await?;
    if let (RedisConn::Cluster(conn), Some((replicas, timeout))) =
        (&settings.conn, settings.replicas)
    {
        use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
        let waits = calls.iter().filter_map(|items| items.first()).map(|item| {
            let mut conn = conn.clone();
            let route = Route::with_key(history_key(item.user), SlotAddr::Master);
            let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
            async move {
                let acked = conn
                    .route_command(wait_command(replicas, timeout), routing)
                    .await?;
                enough_replicas(acked, replicas)
            }
        });
        futures_util::future::try_join_all(waits).await?;
    }
    Ok(values)
}

/// `WAIT <replicas> <timeout ms>`.
fn wait_command(replicas: u32, timeout: Duration) -> redis::Cmd {
    let ms = u64::try_from(timeout.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let mut wait = redis::cmd("WAIT");
    wait.arg(replicas).arg(ms);
    wait
}

/// Fewer acknowledgements than `replicas` fail the publish.
fn enough_replicas(acked: Value, replicas: u32) -> Result<(), RedisError> {
    let acked: u64 =
        redis::from_redis_value(acked).map_err(|e| parse_error("WAIT reply", e.to_string()))?;
    if acked < u64::from(replicas) {
        return Err(io_error(
            "fewer replicas acknowledged the publish than required",
            format!("{acked} of {replicas}"),
        ));
    }
    Ok(())
}

/// `(id, receivers)` per item from the script's flat reply `epoch, stream id, receivers, …`.
fn parse_reply(reply: Value, items: usize) -> Result<Vec<(String, u64)>, RedisError> {
    let values: Vec<Value> = redis::from_redis_value(reply)
        .map_err(|e| parse_error("publish script reply", e.to_string()))?;
    if values.len() != items * 3 {
        return Err(parse_error(
            "publish script reply",
            format!("{} values for {items} users", values.len()),
        ));
    }
    let mut out = Vec::with_capacity(items);
    let mut values = values.into_iter();
    while let (Some(epoch), Some(sid), Some(receivers)) =
        (values.next(), values.next(), values.next())
    {
        let parsed: Result<(String, String, u64), _> = (|| {
            Ok::<_, redis::ParsingError>((
                redis::from_redis_value(epoch)?,
                redis::from_redis_value(sid)?,
                redis::from_redis_value(receivers)?,
            ))
        })();
        let (epoch, sid, receivers) =
            parsed.map_err(|e| parse_error("publish script reply", e.to_string()))?;
        out.push((format!("{epoch}-{sid}"), receivers));
    }
    Ok(out)
}

fn is_noscript(e: &RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

fn io_error(what: &'static str, detail: String) -> RedisError {
    RedisError::from((redis::ErrorKind::Io, what, detail))
}

fn parse_error(what: &'static str, detail: String) -> RedisError {
    RedisError::from((redis::ErrorKind::Parse, what, detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_map_to_ids_in_order() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = Value::Array(vec![
            bulk("ep"),
            bulk("5-0"),
            Value::Int(2),
            bulk("ep"),
            bulk("5-1"),
            Value::Int(0),
        ]);
        assert_eq!(
            parse_reply(reply, 2).unwrap(),
            [("ep-5-0".to_string(), 2), ("ep-5-1".to_string(), 0)]
        );
        let short = Value::Array(vec![bulk("ep"), bulk("5-0")]);
        assert!(parse_reply(short, 1).is_err());
    }
}
