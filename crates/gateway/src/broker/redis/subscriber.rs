//! The node's Redis pub/sub links: per-user channel subscriptions, the message reader and
//! reconnection (the RESP connection: `pubsub.rs`; one link and its commands: `links.rs`;
//! bookkeeping: `subscriptions.rs`; what a push does: `reader.rs`; gap repair after a
//! reconnect: `repair.rs`; the self-probe: `probe.rs`; what a session awaits beside its pushes:
//! `side_tasks.rs`).
//!
//! A standalone server has one link; a cluster one per primary, each serving the users whose
//! gateway channel's slot it owns (from `CLUSTER SLOTS` at connect). Subscribe/unsubscribe
//! requests arrive in registry order on one queue. The task applies every request waiting in
//! the queue at once and keeps at most one round of commands in flight per link: requests
//! arriving meanwhile go out together once it is confirmed (so a connection storm becomes a few
//! large commands). It confirms each waiting connection when Redis confirmed its user's
//! channels; messages keep flowing meanwhile. Any failure of any link — an error, a stale
//! probe, an unsolicited `sunsubscribe` (slot migrated, failover), a changed slot map, a new
//! primary under Sentinel — ends the session: every link reconnects from a fresh slot map (or
//! to the primary the sentinels name), resubscribes every wanted user in batches and repairs
//! the gap from history, as after any pub/sub outage.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use rand::Rng;
use tokio::sync::mpsc;

use super::context::Context;
use super::history::ReadError;
use super::links::{Link, LinkError, BATCH_USERS};
use super::pubsub::PubSubError;
use super::reader::{self, Channel, Pushed};
use super::side_tasks::{
    check_topology, checked, next_primary, read_epochs, EpochRead, TopologyCheck,
};
use super::subscriptions::{SubCommand, Wanted};
use super::topology::LinkSpec;
use super::{probe, repair};
use crate::registry::UserId;

/// Most queued requests applied before talking to Redis.
const MAX_REQUESTS_PER_ROUND: usize = 4_096;
/// On a cluster or under Sentinel, the deployment (slot map, primary) is compared with the
/// links' every this many probe intervals.
const TOPOLOGY_CHECK_TICKS: u32 = 5;

#[derive(Debug, thiserror::Error)]
enum SessionError {
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
    #[error("no link serves user {0}: a slot without an owner")]
    Unserved(UserId),
    #[error("redis dropped shard channel {0} (slot migrated or failed over)")]
    ShardChannelDropped(String),
    #[error("the Redis topology changed (the cluster's slot map, or the sentinels' primary)")]
    TopologyChanged,
    #[error("the primary moved to {0}:{1}")]
    PrimaryChanged(String, u16),
    #[error("gap repair: {0}")]
    Repair(#[from] ReadError),
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
    while let Ok(cmd) = requests.try_recv() {
        wanted.apply(cmd, shared.state.delivered_ms());
    }
    // A Redis that stops answering must not wedge the subscriber: time out and reconnect.
    let limit = shared.pubsub_limit();
    let specs = tokio::time::timeout(limit, shared.topology.links())
        .await
        .map_err(|_| SessionError::TopologyTimeout)??;
    let mut links = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let name = format!("gleepost-gateway-{}-sub{i}", shared.node_name());
        links.push(Link::open(spec.clone(), &shared.probe_channel, &name, limit).await?);
    }
    shared.set_probe_targets(links.iter().map(|l| l.probe.clone()).collect());
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
    let mut held = Vec::new();
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
        for i in 0..links.len() {
            tokio::time::timeout(limit, settle(shared, &mut links, i, wanted, &mut held))
                .await
                .map_err(|_| SessionError::CommandTimeout)??;
        }
    }
    if reconnect {
        let users: std::collections::HashSet<UserId> = links
            .iter()
            .flat_map(|l| l.sent.current.iter().copied())
            .collect();
        repair::repair(shared, &users, wanted).await?;
    }
    for (channel, payload) in held {
        reader::handle_message(shared, channel.as_bytes(), payload, wanted);
    }
    shared.state.set_subscribed(true);
    let connected = Instant::now();
    if *attempt > 0 {
        tracing::info!(
            users = wanted.users.len(),
            links = links.len(),
            "redis subscription restored"
        );
    }
    *attempt = 0;

    let mut check = tokio::time::interval(settings.probe_interval);
    let mut ticks: u32 = 0;
    // Under way beside the pushes (sentinels that do not answer take seconds, and pushes,
    // probes included, must go on being read meanwhile).
    let mut topology: Option<TopologyCheck<'_>> = None;
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
                if links.iter().all(|l| l.sent.settled()) || wanted.dirty.len() >= BATCH_USERS {
                    let added = sync(shared, &mut links, wanted).await?;
                    read_epochs(shared, wanted, added, &mut epoch_reads);
                }
            }
            (i, pushed) = next_push(&mut links) => {
                on_push(shared, &mut links, i, pushed?, wanted, &mut None)?;
                if links.iter().all(|l| l.sent.settled()) && !wanted.dirty.is_empty() {
                    let added = sync(shared, &mut links, wanted).await?;
                    read_epochs(shared, wanted, added, &mut epoch_reads);
                }
            }
            Some(addr) = next_primary(&mut primary) => {
                if links.first().and_then(|l| l.spec.primary.as_ref()) != Some(&addr) {
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
                if connected.elapsed() > settings.probe_timeout && !shared.probe_fresh() {
                    return Err(SessionError::ProbeLost);
                }
                if links.iter().any(|l| l.sent.overdue(limit)) {
                    return Err(SessionError::CommandTimeout);
                }
                ticks = ticks.wrapping_add(1);
                let due = ticks % TOPOLOGY_CHECK_TICKS == 0;
                if shared.topology.can_move() && due && topology.is_none() {
                    let current: Vec<LinkSpec> = links.iter().map(|l| l.spec.clone()).collect();
                    topology = Some(check_topology(shared, current));
                }
            }
        }
    }
}

/// The next push of any link (with its index).
async fn next_push(links: &mut [Link]) -> (usize, Result<Pushed, PubSubError>) {
    if let [link] = links {
        return (0, reader::next(&mut link.conn).await);
    }
    let reads = links
        .iter_mut()
        .map(|l| Box::pin(reader::next(&mut l.conn)));
    let (pushed, i, _) = futures_util::future::select_all(reads).await;
    (i, pushed)
}

/// Handle one push of link `i`. Messages go to the connections, or to `held` while the
/// session is settling.
fn on_push(
    shared: &Context,
    links: &mut [Link],
    i: usize,
    pushed: Pushed,
    wanted: &mut Wanted,
    held: &mut Option<&mut Vec<(Channel, bytes::Bytes)>>,
) -> Result<(), SessionError> {
    match pushed {
        Pushed::Message { channel, payload } => {
            shared.dispatcher.metrics().broker_messages.inc();
            if channel.as_bytes() == links[i].probe.as_bytes() {
                if let Some((back, ms)) = probe::on_probe(shared, &payload) {
                    (links[i].probe_back, links[i].probe_ms) = (back, ms);
                    probe_returned(shared, links, held.is_none());
                }
            } else if let Some(held) = held {
                held.push((channel, payload));
            } else {
                reader::handle_message(shared, channel.as_bytes(), payload, wanted);
            }
        }
        Pushed::Confirmed => confirmed(&mut links[i], wanted),
        Pushed::ShardUnsubscribed(channel) => {
            if !links[i].shard_unsubscribed(&channel) {
                let channel = String::from_utf8_lossy(&channel).into_owned();
                return Err(SessionError::ShardChannelDropped(channel));
            }
            confirmed(&mut links[i], wanted);
        }
        Pushed::Other => {}
    }
    Ok(())
}

/// One channel of link's commands was confirmed.
fn confirmed(link: &mut Link, wanted: &mut Wanted) {
    if link.sent.confirmed() {
        link.sent.release_waiters(wanted);
    }
}

/// A probe came back on some link: readiness and the node-wide repair point follow the
/// oldest of the links' latest probes (a cluster's shards each have their own). While the
/// session `settled` is false (channels still being subscribed, the repair not done) a probe
/// proves nothing about the users' channels: the repair point stays where the last session
/// left it, or the repair of users without a delivered event would start after the outage.
fn probe_returned(shared: &Context, links: &[Link], settled: bool) {
    let back = links.iter().map(|l| l.probe_back).min().unwrap_or(0);
    if back != 0 {
        shared.state.probes_back_since(back);
        if settled {
            // Everything published before each probe was delivered before it: a repair point.
            let ms = links.iter().map(|l| l.probe_ms).min().unwrap_or(0);
            shared.state.delivered_until(ms);
        }
    }
}

/// Read link `i` until every command sent on it is confirmed, holding the messages that
/// arrive meanwhile (probes are taken).
async fn settle(
    shared: &Context,
    links: &mut [Link],
    i: usize,
    wanted: &mut Wanted,
    held: &mut Vec<(Channel, bytes::Bytes)>,
) -> Result<(), SessionError> {
    while !links[i].sent.settled() {
        let pushed = reader::next(&mut links[i].conn).await?;
        on_push(shared, links, i, pushed, wanted, &mut Some(held))?;
    }
    Ok(())
}

/// Send the commands that bring the links' subscriptions in line with the dirty part of
/// `wanted` (confirmations arrive later, through the reader); returns the users subscribed.
async fn sync(
    shared: &Context,
    links: &mut [Link],
    wanted: &mut Wanted,
) -> Result<Vec<UserId>, SessionError> {
    let mut dirty: Vec<Vec<UserId>> = vec![Vec::new(); links.len()];
    let mut added = Vec::new();
    for user in wanted.take_dirty() {
        let i = links.iter().position(|l| l.spec.serves(user));
        let i = i.ok_or(SessionError::Unserved(user))?;
        dirty[i].push(user);
    }
    let templates = &shared.settings.channels;
    let limit = shared.pubsub_limit();
    for (link, users) in links.iter_mut().zip(dirty) {
        if users.is_empty() {
            continue;
        }
        let (add, remove) = link.sent.plan(&wanted.users, users);
        link.subscribe(&add, templates, limit).await?;
        link.unsubscribe(&remove, templates, limit).await?;
        // Waiters of users that were subscribed already (a reconnect of a connected user).
        link.sent.release_waiters(wanted);
        added.extend(add);
    }
    let channels: usize = links.iter().map(|l| l.channels(templates.len())).sum();
    shared
        .dispatcher
        .metrics()
        .subscribed_channels
        .set(channels as i64);
    Ok(added)
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
