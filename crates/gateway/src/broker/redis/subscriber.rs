//! The node's shared Redis pub/sub connection: per-user channel subscriptions, the message
//! reader and reconnection (the RESP connection: `pubsub.rs`; bookkeeping: `subscriptions.rs`;
//! gap repair after a reconnect: `repair.rs`; the self-probe: `probe.rs`).
//!
//! Subscribe/unsubscribe requests arrive in registry order on one queue. The task applies every
//! request waiting in the queue at once and keeps at most one round of commands in flight:
//! requests arriving meanwhile go out together once it is confirmed (so a connection storm
//! becomes a few large SUBSCRIBE commands). It confirms each waiting connection when Redis
//! confirmed its user's channels; messages keep flowing meanwhile. After a reconnect it
//! resubscribes every wanted user in batches.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gleepost_event::check_broker_payload;
use gleepost_event::keys::{parse_user_channel, user_channel};
use gleepost_event::EventId;
use rand::Rng;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::context::Context;
use super::history::ReadError;
use super::pubsub::{PubSubConn, PubSubError, Push};
use super::subscriptions::{Sent, SubCommand, Wanted};
use super::{probe, repair};
use crate::log_limit::LogLimit;
use crate::outbox::Frame;
use crate::registry::UserId;

/// Malformed broker payloads are logged at most once per second (each one is counted).
static MALFORMED_LOG: LogLimit = LogLimit::new(Duration::from_secs(1));

/// Users per SUBSCRIBE/UNSUBSCRIBE command.
const BATCH_USERS: usize = 512;
/// Most queued requests applied before talking to Redis.
const MAX_REQUESTS_PER_ROUND: usize = 4_096;

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    PubSub(#[from] PubSubError),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("subscription command timed out")]
    CommandTimeout,
    #[error("self-probe did not come back: subscription presumed dead")]
    ProbeLost,
    #[error("gap repair: {0}")]
    Repair(#[from] ReadError),
}

/// Run the subscriber until the broker handle is dropped.
pub(crate) async fn run(shared: Arc<Context>, mut requests: mpsc::UnboundedReceiver<SubCommand>) {
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
        shared.state.set_subscribed(false);
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
    shared: &Context,
    requests: &mut mpsc::UnboundedReceiver<SubCommand>,
    wanted: &mut Wanted,
    attempt: &mut u32,
    reconnect: bool,
) -> Result<(), SessionError> {
    let settings = &shared.settings;
    // A Redis that stops answering must not wedge the subscriber: time out and reconnect.
    let limit = shared.pubsub_limit();
    let mut conn = tokio::time::timeout(limit, shared.topology.pubsub())
        .await
        .map_err(|_| SessionError::ConnectTimeout)??;
    let mut sent = Sent::default();
    let probe = std::slice::from_ref(&shared.probe_channel);
    timed(limit, conn.subscribe(probe)).await?;
    sent.subscribing(&[], 1);

    // Everything wanted is (re)subscribed on a fresh connection.
    while let Ok(cmd) = requests.try_recv() {
        wanted.apply(cmd);
    }
    wanted.dirty = wanted.users.clone();
    sync(shared, &mut conn, wanted, &mut sent).await?;
    // Messages arriving until every channel is confirmed and the repair is queued are held, so
    // every connection sees history first, then live (duplicates filtered).
    let mut held = Vec::new();
    tokio::time::timeout(limit, settle(&mut conn, &mut sent, wanted, &mut held))
        .await
        .map_err(|_| SessionError::CommandTimeout)??;
    if reconnect {
        repair::repair(shared, &sent.current, &mut wanted.delivered).await?;
    }
    for (channel, payload) in held {
        handle_message(shared, &channel, &payload, wanted);
    }
    shared.state.set_subscribed(true);
    let connected = Instant::now();
    if *attempt > 0 {
        tracing::info!(users = sent.current.len(), "redis subscription restored");
    }
    *attempt = 0;

    let mut check = tokio::time::interval(settings.probe_interval);
    loop {
        tokio::select! {
            biased;
            cmd = requests.recv() => {
                let Some(cmd) = cmd else { return Ok(()) };
                wanted.apply(cmd);
                let mut n = 1;
                while n < MAX_REQUESTS_PER_ROUND {
                    let Ok(cmd) = requests.try_recv() else { break };
                    wanted.apply(cmd);
                    n += 1;
                }
                // While a command is in flight, requests pile up and go out together when it is
                // confirmed: a connection storm becomes a few large commands.
                if sent.settled() || wanted.dirty.len() >= BATCH_USERS {
                    sync(shared, &mut conn, wanted, &mut sent).await?;
                }
            }
            push = conn.next() => match push? {
                Push::Message { channel, payload } => {
                    handle_message(shared, channel, payload, wanted);
                }
                Push::Subscribed | Push::Unsubscribed => {
                    if sent.confirmed() {
                        sent.release_waiters(wanted);
                        if sent.settled() && !wanted.dirty.is_empty() {
                            sync(shared, &mut conn, wanted, &mut sent).await?;
                        }
                    }
                }
                Push::Other => {}
            },
            _ = check.tick() => {
                if connected.elapsed() > settings.probe_timeout && !shared.probe_fresh() {
                    return Err(SessionError::ProbeLost);
                }
                if sent.overdue(limit) {
                    return Err(SessionError::CommandTimeout);
                }
            }
        }
    }
}

/// Await a command write, bounded by `limit`.
async fn timed(
    limit: Duration,
    write: impl std::future::Future<Output = Result<(), PubSubError>>,
) -> Result<(), SessionError> {
    Ok(tokio::time::timeout(limit, write)
        .await
        .map_err(|_| SessionError::CommandTimeout)??)
}

/// Read until every sent command is confirmed, holding the messages that arrive meanwhile.
async fn settle(
    conn: &mut PubSubConn,
    sent: &mut Sent,
    wanted: &mut Wanted,
    held: &mut Vec<(Vec<u8>, Vec<u8>)>,
) -> Result<(), SessionError> {
    while !sent.settled() {
        match conn.next().await? {
            Push::Message { channel, payload } => held.push((channel.to_vec(), payload.to_vec())),
            Push::Subscribed | Push::Unsubscribed => {
                if sent.confirmed() {
                    sent.release_waiters(wanted);
                }
            }
            Push::Other => {}
        }
    }
    Ok(())
}

/// Send the commands that bring the connection's subscriptions in line with the dirty part of
/// `wanted` (confirmations arrive later, through the reader).
async fn sync(
    shared: &Context,
    conn: &mut PubSubConn,
    wanted: &mut Wanted,
    sent: &mut Sent,
) -> Result<(), SessionError> {
    let (add, remove) = sent.plan(wanted);
    let templates = &shared.settings.channels;
    // Every user: the legacy channels, then the gateway's own channel.
    let names = |users: &[UserId]| -> Vec<String> {
        users
            .iter()
            .flat_map(|&u| {
                let legacy = templates.iter().map(move |t| t.render_id(u));
                legacy.chain(std::iter::once(user_channel(u)))
            })
            .collect()
    };
    let limit = shared.pubsub_limit();
    for chunk in add.chunks(BATCH_USERS) {
        let names = names(chunk);
        timed(limit, conn.subscribe(&names)).await?;
        sent.subscribing(chunk, names.len());
    }
    for chunk in remove.chunks(BATCH_USERS) {
        let names = names(chunk);
        timed(limit, conn.unsubscribe(&names)).await?;
        sent.unsubscribing(chunk, names.len());
    }
    // Waiters of users that were subscribed already (a reconnect of a connected user).
    sent.release_waiters(wanted);
    let channels = sent.current.len() * (templates.len() + 1) + 1;
    shared
        .dispatcher
        .metrics()
        .subscribed_channels
        .set(channels as i64);
    Ok(())
}

/// One message from a subscribed channel: validate, remember its id (gateway channel only),
/// queue it for the user's connections (or count and log it as malformed).
fn handle_message(shared: &Context, channel: &[u8], payload: &[u8], wanted: &mut Wanted) {
    let metrics = shared.dispatcher.metrics();
    metrics.broker_messages.inc();
    if channel == shared.probe_channel.as_bytes() {
        probe::on_probe(shared, payload);
        return;
    }
    // Ids are the gateway's: only events on the user's gateway channel (published by the
    // history script) carry ids that feed deduplication and gap repair; a legacy payload's
    // `id` member is delivered verbatim and never read.
    let found = match parse_user_channel(channel) {
        Some(user) => Some((user, true)),
        None => shared
            .settings
            .channels
            .iter()
            .find_map(|t| t.match_id(channel))
            .map(|user| (user, false)),
    };
    let Some((user, trusted)) = found else {
        let channel = String::from_utf8_lossy(channel);
        tracing::debug!(%channel, "message on an unexpected channel");
        return;
    };
    let entered = Instant::now();
    let reason = match check_broker_payload(payload, &shared.settings.limits) {
        Ok(()) => match Utf8Bytes::try_from(Bytes::copy_from_slice(payload)) {
            Ok(text) => {
                let frame = if trusted {
                    Frame::new(text, entered)
                } else {
                    Frame::verbatim(text, entered)
                };
                // Per user: one user's events never move another's repair point (the node-wide
                // point, for users without a delivered event, comes from the probe only).
                if let Some((epoch, ms, seq)) = frame.event_id() {
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
                shared.dispatcher.dispatch_frame(user, &frame);
                return;
            }
            Err(_) => "not_utf8",
        },
        Err(e) => e.reason(),
    };
    metrics.broker_malformed.with_label_values(&[reason]).inc();
    if let Some(suppressed) = MALFORMED_LOG.allow() {
        tracing::warn!(
            channel = %String::from_utf8_lossy(channel),
            reason,
            bytes = payload.len(),
            suppressed,
            "dropped malformed broker payload"
        );
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
}
