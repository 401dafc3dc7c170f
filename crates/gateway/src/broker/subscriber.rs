//! The node's shared Redis pub/sub connection: per-user channel subscriptions, the message
//! reader and reconnection (gap repair after a reconnect: `repair.rs`; the self-probe: `probe.rs`).
//!
//! Subscribe/unsubscribe requests arrive in registry order on one queue. The task applies every
//! request waiting in the queue at once (so a connection storm becomes a few large SUBSCRIBE
//! commands), keeps the set of wanted users, and confirms each waiting connection once its user's
//! channels are subscribed. After a reconnect it resubscribes every wanted user in batches.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use gleepost_event::check_broker_payload;
use gleepost_event::history::frame_id;
use gleepost_event::EventId;
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::redis::Shared;
use super::{probe, repair};
use crate::history::ReadError;
use crate::registry::UserId;

/// Users per SUBSCRIBE/UNSUBSCRIBE command.
const BATCH_USERS: usize = 512;
/// Most queued requests applied before talking to Redis.
const MAX_REQUESTS_PER_ROUND: usize = 4_096;

/// A registry request to the subscriber.
pub(crate) enum SubCommand {
    /// Subscribe the user's channels; the sender turns `true` once confirmed.
    Subscribe(UserId, watch::Sender<bool>),
    /// Unsubscribe the user's channels.
    Unsubscribe(UserId),
}

#[derive(Default)]
struct Wanted {
    users: HashSet<UserId>,
    waiters: HashMap<UserId, Vec<watch::Sender<bool>>>,
    /// Users whose wanted state changed since the last sync.
    dirty: HashSet<UserId>,
    /// Id of the last event delivered to each subscribed user through the subscription: gap
    /// repair resumes each user from there, so a trimmed or reset history gives a `resync`
    /// instead of a silent gap.
    delivered: HashMap<UserId, EventId>,
}

impl Wanted {
    fn apply(&mut self, cmd: SubCommand) {
        match cmd {
            SubCommand::Subscribe(user, tx) => {
                self.users.insert(user);
                self.waiters.entry(user).or_default().push(tx);
                self.dirty.insert(user);
            }
            SubCommand::Unsubscribe(user) => {
                self.users.remove(&user);
                self.delivered.remove(&user);
                self.dirty.insert(user);
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("subscription command timed out")]
    CommandTimeout,
    #[error("subscription connection closed")]
    Closed,
    #[error("self-probe did not come back: subscription presumed dead")]
    ProbeLost,
    #[error("gap repair: {0}")]
    Repair(#[from] ReadError),
}

/// Run the subscriber until the broker handle is dropped.
pub(crate) async fn run(shared: Arc<Shared>, mut requests: mpsc::UnboundedReceiver<SubCommand>) {
    let mut wanted = Wanted::default();
    let mut attempt: u32 = 0;
    let mut reconnect = false;
    loop {
        let result = session(&shared, &mut requests, &mut wanted, &mut attempt, reconnect).await;
        reconnect = true;
        let err = match result {
            Ok(()) => return,
            Err(e) => e,
        };
        shared.subscribed.store(false, Ordering::Release);
        let metrics = shared.dispatcher.metrics();
        metrics.subscribed_channels.set(0);
        metrics.broker_reconnects.inc();
        let delay = backoff(attempt);
        tracing::warn!(error = %err, retry_in = ?delay, "redis subscription lost");
        attempt = attempt.saturating_add(1);
        tokio::time::sleep(delay).await;
    }
}

/// Exponential backoff with jitter: a random delay in [d/2, d], d = 100 ms · 2^attempt ≤ 5 s.
fn backoff(attempt: u32) -> Duration {
    let max = Duration::from_millis(100).saturating_mul(1 << attempt.min(6));
    let max = max.min(Duration::from_secs(5));
    let jittered = rand::rng().random_range(max.as_millis() / 2..=max.as_millis());
    Duration::from_millis(jittered as u64)
}

async fn session(
    shared: &Shared,
    requests: &mut mpsc::UnboundedReceiver<SubCommand>,
    wanted: &mut Wanted,
    attempt: &mut u32,
    reconnect: bool,
) -> Result<(), SessionError> {
    let settings = &shared.settings;
    let pubsub = tokio::time::timeout(settings.timeout * 5, shared.client.get_async_pubsub())
        .await
        .map_err(|_| SessionError::ConnectTimeout)??;
    let (mut sink, mut stream) = pubsub.split();
    tokio::time::timeout(settings.timeout * 5, sink.subscribe(&shared.probe_channel))
        .await
        .map_err(|_| SessionError::CommandTimeout)??;

    // Everything wanted is (re)subscribed on a fresh connection.
    let mut current: HashSet<UserId> = HashSet::new();
    while let Ok(cmd) = requests.try_recv() {
        wanted.apply(cmd);
    }
    wanted.dirty = wanted.users.clone();
    sync(shared, &mut sink, wanted, &mut current).await?;
    if reconnect {
        // Messages arriving from now on wait in the subscription's buffer until the repair is
        // queued, so every connection sees history first, then live (duplicates filtered).
        repair::repair(shared, &current, &mut wanted.delivered).await?;
    }
    shared.subscribed.store(true, Ordering::Release);
    let connected = Instant::now();
    if *attempt > 0 {
        tracing::info!(users = current.len(), "redis subscription restored");
    }
    *attempt = 0;

    let mut check = tokio::time::interval(settings.probe_interval);
    let mut malformed_log = LogLimiter::default();
    loop {
        tokio::select! {
            cmd = requests.recv() => {
                let Some(cmd) = cmd else { return Ok(()) };
                wanted.apply(cmd);
                let mut n = 1;
                while n < MAX_REQUESTS_PER_ROUND {
                    let Ok(cmd) = requests.try_recv() else { break };
                    wanted.apply(cmd);
                    n += 1;
                }
                sync(shared, &mut sink, wanted, &mut current).await?;
            }
            msg = stream.next() => {
                let Some(msg) = msg else { return Err(SessionError::Closed) };
                handle_message(shared, &msg, &mut malformed_log, wanted);
            }
            _ = check.tick() => {
                if connected.elapsed() > settings.probe_timeout && !shared.probe_fresh() {
                    return Err(SessionError::ProbeLost);
                }
            }
        }
    }
}

/// Bring the connection's subscriptions in line with the dirty part of `wanted`, then confirm
/// waiting connections.
async fn sync(
    shared: &Shared,
    sink: &mut redis::aio::PubSubSink,
    wanted: &mut Wanted,
    current: &mut HashSet<UserId>,
) -> Result<(), SessionError> {
    let mut add = Vec::new();
    let mut remove = Vec::new();
    for user in wanted.dirty.drain() {
        match (wanted.users.contains(&user), current.contains(&user)) {
            (true, false) => add.push(user),
            (false, true) => remove.push(user),
            _ => {}
        }
    }
    let templates = &shared.settings.channels;
    let names = |users: &[UserId]| -> Vec<String> {
        users
            .iter()
            .flat_map(|&u| templates.iter().map(move |t| t.render_id(u)))
            .collect()
    };
    // A Redis that stops answering must not wedge the subscriber: time out and reconnect.
    let limit = shared.settings.timeout * 5;
    let timed = |_: tokio::time::error::Elapsed| SessionError::CommandTimeout;
    for chunk in add.chunks(BATCH_USERS) {
        tokio::time::timeout(limit, sink.subscribe(names(chunk).as_slice()))
            .await
            .map_err(timed)??;
        current.extend(chunk);
    }
    for chunk in remove.chunks(BATCH_USERS) {
        tokio::time::timeout(limit, sink.unsubscribe(names(chunk).as_slice()))
            .await
            .map_err(timed)??;
        for user in chunk {
            current.remove(user);
        }
    }
    // Confirm every waiter whose user is subscribed now; waiters of users no longer wanted
    // belong to connections that already left.
    wanted.waiters.retain(|user, senders| {
        if current.contains(user) {
            for tx in senders.drain(..) {
                let _ = tx.send(true);
            }
        }
        wanted.users.contains(user) && !current.contains(user)
    });
    let channels = current.len() * templates.len() + 1;
    shared
        .dispatcher
        .metrics()
        .subscribed_channels
        .set(channels as i64);
    Ok(())
}

fn handle_message(
    shared: &Shared,
    msg: &redis::Msg,
    malformed_log: &mut LogLimiter,
    wanted: &mut Wanted,
) {
    let metrics = shared.dispatcher.metrics();
    metrics.broker_messages.inc();
    let channel = msg.get_channel_name();
    let payload = msg.get_payload_bytes();
    if channel == shared.probe_channel {
        probe::on_probe(shared, payload);
        return;
    }
    let Some(user) = shared
        .settings
        .channels
        .iter()
        .find_map(|t| t.match_id(channel.as_bytes()))
    else {
        tracing::debug!(channel, "message on an unexpected channel");
        return;
    };
    let entered = Instant::now();
    let reason = match check_broker_payload(payload, &shared.settings.limits) {
        Ok(()) => match Utf8Bytes::try_from(Bytes::copy_from_slice(payload)) {
            Ok(text) => {
                if let Some((epoch, ms, seq)) = frame_id(payload) {
                    shared.delivered_ms.fetch_max(ms, Ordering::AcqRel);
                    match wanted.delivered.get_mut(&user) {
                        Some(last) if last.epoch == epoch => (last.ms, last.seq) = (ms, seq),
                        // Only users still wanted (entries leave with the user).
                        _ if wanted.users.contains(&user) => {
                            let epoch = epoch.to_string();
                            wanted.delivered.insert(user, EventId { epoch, ms, seq });
                        }
                        _ => {}
                    }
                }
                shared.dispatcher.dispatch(user, text, entered);
                return;
            }
            Err(_) => "not_utf8",
        },
        Err(e) => e.reason(),
    };
    metrics.broker_malformed.with_label_values(&[reason]).inc();
    if let Some(suppressed) = malformed_log.allow() {
        tracing::warn!(
            channel,
            reason,
            bytes = payload.len(),
            suppressed,
            "dropped malformed broker payload"
        );
    }
}

/// At most one log line per second; reports how many were suppressed since the last one.
#[derive(Default)]
struct LogLimiter {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < Duration::from_secs(1) => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_grows() {
        for attempt in 0..40 {
            let d = backoff(attempt);
            assert!(d <= Duration::from_secs(5));
            assert!(d >= Duration::from_millis(50));
        }
        assert!(backoff(0) <= Duration::from_millis(100));
    }

    #[test]
    fn last_request_per_user_wins() {
        let mut w = Wanted::default();
        let (tx, _rx) = watch::channel(false);
        w.apply(SubCommand::Subscribe(1, tx.clone()));
        w.apply(SubCommand::Unsubscribe(1));
        w.apply(SubCommand::Subscribe(2, tx.clone()));
        w.apply(SubCommand::Unsubscribe(2));
        w.apply(SubCommand::Subscribe(2, tx));
        assert!(!w.users.contains(&1));
        assert!(w.users.contains(&2));
        assert_eq!(w.dirty.len(), 2);
    }
}
