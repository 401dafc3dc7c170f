//! The node's Redis pub/sub links: per-user channel subscriptions, the message reader and
//! reconnection (the RESP connection: `pubsub.rs`; one link and its commands: `links.rs`; the
//! session's links and which are up: `link_set.rs`; bookkeeping: `subscriptions.rs`; what a
//! push does: `reader.rs`; gap repair after a reconnect: `repair.rs`; the self-probe:
//! `probe.rs`; what a session awaits beside its pushes: `side_tasks.rs`).
//!
//! A standalone server has one link; a cluster one per primary, each serving the users whose
//! gateway channel's slot it owns (from `CLUSTER SLOTS` at connect). Subscribe/unsubscribe
//! requests arrive in registry order on one queue. The task applies every request waiting in
//! the queue at once and keeps at most one round of commands in flight per link: requests
//! arriving meanwhile go out together once it is confirmed (so a connection storm becomes a few
//! large commands). It confirms each waiting connection when Redis confirmed its user's
//! channels; messages keep flowing meanwhile.
//!
//! On a cluster, a link that fails (an error, a stale probe, a command not confirmed in time)
//! is given up alone: its users wait while it reopens with backoff, then it subscribes them,
//! holds its messages until their gap is repaired from history, and delivers; the other links
//! go on meanwhile. A change of the whole deployment — an unsolicited `sunsubscribe` (slot
//! migrated, failover), a changed slot map, a new primary under Sentinel — or the failure of
//! the only link (standalone, Sentinel) ends the session: every link reconnects from a fresh
//! slot map (or to the primary the sentinels name), resubscribes every wanted user in batches
//! and repairs the gap from history, as after any pub/sub outage.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use rand::Rng;
use tokio::sync::mpsc;

use super::context::Context;
use super::history::ReadError;
use super::link_io::{dispatch_held, next_push, on_push, settle, stale, sync};
use super::link_set::{Fault, Links};
use super::links::{LinkError, BATCH_USERS};
use super::migrations::Migrations;
use super::pubsub::PubSubError;
use super::repair::{self, start_repair, RepairRead};
use super::side_tasks::{
    check_topology, checked, next_primary, read_epochs, EpochRead, TopologyCheck,
};
use super::subscriptions::{SubCommand, Wanted};
use crate::registry::UserId;

/// Most queued requests applied before talking to Redis.
const MAX_REQUESTS_PER_ROUND: usize = 4_096;
/// On a cluster or under Sentinel, the deployment (slot map, primary) is compared with the
/// links' every this many probe intervals.
const TOPOLOGY_CHECK_TICKS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub(super) enum SessionError {
    #[error("{0}")]
    Link(#[from] LinkError),
    #[error("{0}")]
    PubSub(#[from] PubSubError),
    #[error("reading the cluster slot map timed out")]
    TopologyTimeout,
    #[error("subscription command timed out")]
    CommandTimeout,
    #[error("self-probe did not come back: subscription presumed dead")]
    ProbeLost,
    #[error("too many messages held while the link's users are repaired")]
    HeldOverflow,
    #[error("redis dropped shard channel {0} (slot migrated or failed over)")]
    ShardChannelDropped(String),
    #[error("the Redis topology changed (the cluster's slot map, or the sentinels' primary)")]
    TopologyChanged,
    #[error("the primary moved to {0}:{1}")]
    PrimaryChanged(String, u16),
    #[error("gap repair: {0}")]
    Repair(#[from] ReadError),
}

impl Fault for SessionError {
    fn is_local(&self) -> bool {
        match self {
            SessionError::Link(_)
            | SessionError::PubSub(_)
            | SessionError::CommandTimeout
            | SessionError::ProbeLost
            | SessionError::HeldOverflow
            | SessionError::Repair(_) => true,
            SessionError::TopologyTimeout
            | SessionError::ShardChannelDropped(_)
            | SessionError::TopologyChanged
            | SessionError::PrimaryChanged(..) => false,
        }
    }
}

/// Users resubscribed at once after a reconnect (16,384 users of 3 channels: about 2.5 MB of
/// confirmations, well within Redis's pub/sub output buffer limits).
const RESUBSCRIBE_USERS: usize = 16_384;

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
        // Requests are taken meanwhile: each connection attempt during an outage queues a
        // subscribe and an unsubscribe, and the queue must not grow for as long as it lasts
        // (what they leave in `wanted` is bounded by the users, not the attempts).
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                cmd = requests.recv() => match cmd {
                    Some(cmd) => wanted.apply(cmd, shared.state.delivered_ms()),
                    None => return,
                },
            }
        }
    }
}

/// Exponential backoff with jitter: a random delay in [d/2, d], d = 100 ms · 2^attempt ≤ 5 s.
pub(super) fn backoff(attempt: u32) -> Duration {
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
    while let Ok(cmd) = requests.try_recv() {
        wanted.apply(cmd, shared.state.delivered_ms());
    }
    // A Redis that stops answering must not wedge the subscriber: time out and reconnect.
    let limit = shared.pubsub_limit();
    let specs = tokio::time::timeout(limit, shared.topology.links())
        .await
        .map_err(|_| SessionError::TopologyTimeout)??;
    let mut links = Links::open(shared, specs).await?;
    // Under Sentinel: a primary found after these links opened (by the watcher, a command's
    // failure or `READONLY`) moves them.
    let mut primary = shared.topology.primary_changes();

    // Everything wanted is (re)subscribed on fresh connections.
    while let Ok(cmd) = requests.try_recv() {
        wanted.apply(cmd, shared.state.delivered_ms());
    }
    // (Users that left meanwhile stay dirty: their repair point is dropped when synced.)
    let mut todo: Vec<UserId> = wanted.dirty.drain().collect();
    todo.extend(wanted.users.iter().copied());
    // Messages arriving until every channel is confirmed and the repair is queued are held, so
    // every connection sees history first, then live (duplicates filtered).
    links.hold();
    // Epoch reads of newly subscribed users, under way beside everything else.
    let mut epoch_reads: FuturesUnordered<EpochRead<'_>> = FuturesUnordered::new();
    // A chunk of users at a time, each confirmed before the next is sent: Redis queues one
    // confirmation per channel in the output buffer of a client that is not reading, and all
    // of a large node's at once would pass its pub/sub limit (32 MB by default: about 220,000
    // users with two legacy templates), which disconnects it, every time.
    // (At least one round, with nobody: the link's gauges are set by it.)
    let rounds: Vec<&[UserId]> = match todo.is_empty() {
        true => vec![&[]],
        false => todo.chunks(RESUBSCRIBE_USERS).collect(),
    };
    for chunk in rounds {
        wanted.dirty.extend(chunk);
        let added = sync(shared, &mut links, wanted).await?;
        read_epochs(shared, wanted, added, &mut epoch_reads);
        let mut i = 0;
        while i < links.up.len() {
            match settle(shared, &mut links, i, wanted).await {
                Ok(()) => i += 1,
                Err(e) => links.fail(i, e, wanted)?,
            }
        }
    }
    // Gap repairs, one per link, under way beside the pushes: each link delivers what it held
    // once its own users are repaired (one primary slow to answer holds up its users only).
    let mut repairs: FuturesUnordered<RepairRead<'_>> = FuturesUnordered::new();
    if reconnect {
        for link in &mut links.up {
            repairs.extend(start_repair(shared, link, wanted));
        }
    } else {
        for i in 0..links.up.len() {
            dispatch_held(shared, &mut links, i, wanted);
        }
    }
    shared.state.set_subscribed(links.complete());
    if *attempt > 0 {
        tracing::info!(
            users = wanted.users.len(),
            links = links.up.len(),
            "redis subscription restored"
        );
    }
    *attempt = 0;

    let mut check = tokio::time::interval(settings.probe_interval);
    let mut ticks: u32 = 0;
    // Under way beside the pushes (sentinels that do not answer take seconds, and pushes,
    // probes included, must go on being read meanwhile).
    let mut topology: Option<TopologyCheck<'_>> = None;
    let mut migrations = Migrations::new(shared);
    loop {
        tokio::select! {
            biased;
            cmd = requests.recv() => {
                let Some(cmd) = cmd else { return Ok(()) };
                wanted.apply(cmd, shared.state.delivered_ms());
                let mut n = 1;
                while n < MAX_REQUESTS_PER_ROUND {
                    let Ok(cmd) = requests.try_recv() else { break };
                    wanted.apply(cmd, shared.state.delivered_ms());
                    n += 1;
                }
                // While a command is in flight, requests pile up and go out together when it is
                // confirmed: a connection storm becomes a few large commands.
                if links.up.iter().all(|l| l.sent.settled()) || wanted.dirty.len() >= BATCH_USERS {
                    let added = sync(shared, &mut links, wanted).await?;
                    read_epochs(shared, wanted, added, &mut epoch_reads);
                }
            }
            (i, pushed) = next_push(&mut links.up) => {
                let handled = pushed.map_err(SessionError::from);
                let handled = handled.and_then(|p| on_push(shared, &mut links, i, p, wanted));
                match handled {
                    Err(e) => links.fail(i, e, wanted)?,
                    Ok(()) => repairs.extend(start_repair(shared, &mut links.up[i], wanted)),
                }
                if links.up.iter().all(|l| l.sent.settled()) && !wanted.dirty.is_empty() {
                    let added = sync(shared, &mut links, wanted).await?;
                    read_epochs(shared, wanted, added, &mut epoch_reads);
                }
            }
            Some(done) = links.reopening.next(), if !links.reopening.is_empty() => match links.reopened(done) {
                Ok(link) => {
                    links.adopt(link, wanted);
                    let added = sync(shared, &mut links, wanted).await?;
                    read_epochs(shared, wanted, added, &mut epoch_reads);
                }
                // A primary that stays away may have been replaced: a new slot map moves
                // every link (checked at the reopening's pace, not only every few ticks).
                Err(_) if topology.is_none() => {
                    topology = Some(check_topology(shared, links.specs.clone()));
                }
                Err(_) => {}
            },
            Some((id, opened, users, read)) = repairs.next(), if !repairs.is_empty() => {
                // (A link that failed meanwhile is no longer there: its users wait again.)
                let link = links.up.iter().position(|l| (l.id, l.opened) == (id, opened));
                match (link, read) {
                    (None, _) => {}
                    (Some(i), Err(e)) => links.fail(i, SessionError::Repair(e), wanted)?,
                    (Some(i), Ok(replays)) => {
                        repair::apply(shared, users, replays, wanted);
                        links.up[i].repairing = false;
                        dispatch_held(shared, &mut links, i, wanted);
                        let complete = links.complete();
                        shared.state.set_subscribed(complete);
                        let node = links.up[i].spec.name();
                        tracing::info!(node = %node, complete, "redis pub/sub link restored");
                    }
                }
            }
            done = migrations.next() => migrations.done(done, &links, wanted),
            Some(addr) = next_primary(&mut primary) => {
                if links.specs.first().and_then(|l| l.primary.as_ref()) != Some(&addr) {
                    return Err(SessionError::PrimaryChanged(addr.0, addr.1));
                }
            }
            Some(read) = epoch_reads.next(), if !epoch_reads.is_empty() => {
                wanted.remember_epochs(read);
            }
            moved = checked(&mut topology) => {
                topology = None;
                if moved {
                    return Err(SessionError::TopologyChanged);
                }
            }
            _ = check.tick() => {
                // Newest first: failing a link moves the last one into its place.
                for i in (0..links.up.len()).rev() {
                    if let Some(e) = stale(shared, &links.up[i]) {
                        links.fail(i, e, wanted)?;
                    }
                }
                ticks = ticks.wrapping_add(1);
                let due = ticks % TOPOLOGY_CHECK_TICKS == 0;
                if shared.topology.can_move() && due && topology.is_none() {
                    topology = Some(check_topology(shared, links.specs.clone()));
                }
                if due {
                    migrations.check(links.specs.clone());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_grows() {
        // Many draws per attempt: jitter must not hide the trend.
        let draws = |attempt: u32| (0..200).map(move |_| backoff(attempt));
        for attempt in 0..40 {
            for d in draws(attempt) {
                assert!(d <= Duration::from_secs(5));
                assert!(d >= Duration::from_millis(50));
            }
        }
        assert!(draws(0).all(|d| d <= Duration::from_millis(100)));
        // Two attempts later the shortest delay is longer than the longest one now (jitter
        // is [d/2, d] and d doubles per attempt), until the 5 s cap.
        for attempt in 0..5 {
            let longest_now = draws(attempt).max().unwrap();
            let shortest_later = draws(attempt + 2).min().unwrap();
            assert!(
                shortest_later > longest_now,
                "attempt {attempt}: {longest_now:?}, attempt {}: {shortest_later:?}",
                attempt + 2
            );
        }
        // At the cap: between 2.5 s and 5 s, not back to short delays.
        assert!(draws(30).all(|d| d >= Duration::from_millis(2_500)));
    }
}
