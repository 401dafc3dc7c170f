//! The links of one subscriber session, and which of them are up. On a cluster each primary's
//! link fails alone: one primary that stops answering (paused, partitioned, dead without a
//! replica) takes down its own link, whose users wait ("parked") while it reopens with
//! backoff, and the links to the other primaries go on delivering. A link that comes back
//! subscribes its users and repairs their gap from history (`subscriber.rs`). On a standalone
//! server or under Sentinel the one link's failure ends the session, as does a failure that
//! concerns the whole deployment (a changed slot map, a slot that moved).

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;

use futures_util::stream::FuturesUnordered;

use super::context::Context;
use super::links::{Link, LinkError};
use super::reader::Channel;
use super::subscriptions::Wanted;
use super::topology::LinkSpec;
use crate::registry::UserId;

/// A finished reopening: the link's spec, the attempt, and the link or why it did not open.
pub(super) type Reopened = (LinkSpec, u32, Result<Link, LinkError>);

/// A link being reopened: after its backoff, connect and subscribe its probe channel.
type Reopen<'a> = Pin<Box<dyn Future<Output = Reopened> + Send + 'a>>;

/// The session's links: those up (read for pushes) and those reopening.
pub(super) struct Links<'a> {
    shared: &'a Context,
    /// Links up, in no particular order (an index is valid until the next failure).
    pub(super) up: Vec<Link>,
    /// Links down, each reopening after its backoff (the session awaits them beside the
    /// pushes, and hands each result to [`Links::reopened`]).
    pub(super) reopening: FuturesUnordered<Reopen<'a>>,
    /// Wanted users that no up link serves (their link is down, or no primary owns their
    /// slot): subscribed when a link that serves them comes up.
    parked: HashSet<UserId>,
    /// The session's links in the topology's order (what a topology check compares).
    pub(super) specs: Vec<LinkSpec>,
    /// Failed links are reopened alone (a cluster of several primaries).
    isolated: bool,
}

/// Most bytes of messages one link holds while it settles (twice Redis's default hard limit
/// of a pub/sub client's output buffer, 32 MB: what the link would have been cut at had it not
/// been read). Past it the link is given up (its users repaired from history when it is back),
/// so a repair that does not end cannot grow the process.
const MAX_HELD_BYTES: usize = 64 << 20;

/// What became of a message of a link (see [`Links::hold_or`]).
pub(super) enum Hold {
    /// Held until the link's users are repaired.
    Kept,
    /// Held, and the link holds too much: give it up.
    Full,
    /// Not holding: deliver it.
    Deliver(Channel, bytes::Bytes),
}

/// What ends a link, or the session.
pub(super) trait Fault {
    /// True when the failure concerns one link only (the others go on).
    fn is_local(&self) -> bool;
}

impl<'a> Links<'a> {
    /// Open a link for each of `specs`. On a cluster a link that cannot be opened is reopened
    /// later while the others serve; the session fails only when none opens (or, with one
    /// link, when it does not).
    pub(super) async fn open(shared: &'a Context, specs: Vec<LinkSpec>) -> Result<Self, LinkError> {
        let isolated = specs.len() > 1;
        let opens = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| open_link(shared, spec.clone(), i));
        let opened = futures_util::future::join_all(opens).await;
        let mut links = Links {
            shared,
            up: Vec::with_capacity(specs.len()),
            reopening: FuturesUnordered::new(),
            parked: HashSet::new(),
            specs,
            isolated,
        };
        let mut first_error = None;
        for (i, result) in opened.into_iter().enumerate() {
            match result {
                Ok(link) => links.up.push(link),
                Err(e) => {
                    let spec = links.specs[i].clone();
                    tracing::warn!(node = %spec.name(), error = %e, "redis pub/sub link did not open");
                    links.reopen(spec, 0);
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) if !isolated || links.up.is_empty() => Err(e),
            _ => {
                links.publish_probes();
                Ok(links)
            }
        }
    }

    /// Hold the messages of every up link from now on (they are settling).
    pub(super) fn hold(&mut self) {
        for link in &mut self.up {
            link.held.get_or_insert_with(Vec::new);
        }
    }

    /// Stop holding link `i`'s messages: those held, in arrival order.
    pub(super) fn release(&mut self, i: usize) -> Vec<(Channel, bytes::Bytes)> {
        self.up[i].held_bytes = 0;
        self.up[i].held.take().unwrap_or_default()
    }

    /// Keep a message of link `i` while it is held ([`Hold::Kept`], or [`Hold::Full`] past
    /// [`MAX_HELD_BYTES`]); gives it back otherwise.
    pub(super) fn hold_or(&mut self, i: usize, channel: Channel, payload: bytes::Bytes) -> Hold {
        let link = &mut self.up[i];
        match &mut link.held {
            Some(held) => {
                link.held_bytes = link.held_bytes.saturating_add(payload.len());
                held.push((channel, payload));
                match link.held_bytes > MAX_HELD_BYTES {
                    true => Hold::Full,
                    false => Hold::Kept,
                }
            }
            None => Hold::Deliver(channel, payload),
        }
    }

    /// Every link is up and settled, and every wanted user is served.
    pub(super) fn complete(&self) -> bool {
        self.reopening.is_empty()
            && self.parked.is_empty()
            && self.up.iter().all(|l| l.held.is_none())
    }

    /// `user` became dirty and no up link serves it: parked while wanted.
    pub(super) fn park(&mut self, user: UserId, wanted: bool) {
        match wanted {
            true => self.parked.insert(user),
            false => self.parked.remove(&user),
        };
    }

    /// Up link `i` failed with `err`. Returns `err` when the session must end (the failure is
    /// not the link's alone, the link is the only one, or no other link is up); otherwise the
    /// link is dropped, its users parked, and it is reopened after a backoff.
    pub(super) fn fail<E: Fault + std::fmt::Display>(
        &mut self,
        i: usize,
        err: E,
        wanted: &Wanted,
    ) -> Result<(), E> {
        if !self.isolated || !err.is_local() || self.up.len() <= 1 {
            return Err(err);
        }
        let link = self.up.swap_remove(i);
        // A link that failed before its probe ever came back backs off further.
        let attempt = match link.probe_back {
            0 => link.retries.saturating_add(1),
            _ => 0,
        };
        tracing::warn!(
            node = %link.spec.name(),
            error = %err,
            users = link.sent.current.len(),
            "redis pub/sub link lost; the other links go on"
        );
        let users = link
            .sent
            .current
            .iter()
            .filter(|u| wanted.users.contains(u));
        // (What it held goes with it: dispatched, it would move its users' repair points past
        // the events they are missing; the repair when it is back replays them from history.)
        self.parked.extend(users);
        self.shared.state.set_subscribed(false);
        let metrics = self.shared.dispatcher.metrics();
        metrics.broker_reconnects.inc();
        metrics.subscribed_channels.set(self.channels() as i64);
        self.publish_probes();
        self.reopen(link.spec, attempt);
        Ok(())
    }

    /// A reopening finished (taken from [`Links::reopening`]): the link, or the error after
    /// which it is tried again after a longer backoff (a reason to check the topology).
    pub(super) fn reopened(&mut self, done: Reopened) -> Result<Link, LinkError> {
        let (spec, attempt, result) = done;
        match result {
            Ok(mut link) => {
                link.retries = attempt;
                Ok(link)
            }
            Err(e) => {
                tracing::debug!(node = %spec.name(), error = %e, attempt, "redis pub/sub link did not reopen");
                self.reopen(spec, attempt.saturating_add(1));
                Err(e)
            }
        }
    }

    /// Take `link` (reopened) up, holding its messages until its users are repaired: its
    /// parked users become dirty (the next sync subscribes them on it).
    pub(super) fn adopt(&mut self, mut link: Link, wanted: &mut Wanted) {
        link.held = Some(Vec::new());
        let users: Vec<UserId> = self
            .parked
            .iter()
            .copied()
            .filter(|&u| link.spec.serves(u))
            .collect();
        for user in users {
            self.parked.remove(&user);
            wanted.dirty.insert(user);
        }
        self.up.push(link);
        self.publish_probes();
    }

    /// Schedule `spec`'s reopening after the backoff of `attempt`.
    fn reopen(&mut self, spec: LinkSpec, attempt: u32) {
        let shared = self.shared;
        let index = self
            .specs
            .iter()
            .position(|s| s.shard == spec.shard)
            .unwrap_or(0);
        self.reopening.push(Box::pin(async move {
            tokio::time::sleep(super::subscriber::backoff(attempt)).await;
            let result = open_link(shared, spec.clone(), index).await;
            (spec, attempt, result)
        }));
    }

    /// The probe publisher targets the up links.
    fn publish_probes(&self) {
        let probes = self.up.iter().map(|l| l.probe.clone()).collect();
        self.shared.set_probe_targets(probes);
    }

    /// A probe came back on some link: readiness follows the oldest of the up links' latest
    /// probes, the node-wide repair point the oldest of the settled links' (a cluster's shards
    /// each have their own).
    /// A link that is down or settling (channels being subscribed, the repair not applied)
    /// proves nothing about its users' channels, and its users keep the points they had
    /// (their floors and delivered ids): it is not waited for.
    pub(super) fn probe_returned(&self) {
        let back = self.up.iter().map(|l| l.probe_back).min().unwrap_or(0);
        if back != 0 {
            self.shared.state.probes_back_since(back);
        }
        // Everything published before each probe was delivered before it (0: a settled link
        // whose probe has not come back yet).
        let settled = self.up.iter().filter(|l| l.held.is_none());
        let ms = settled.map(|l| l.probe_ms).min().unwrap_or(0);
        if ms != 0 {
            self.shared.state.delivered_until(ms);
        }
    }

    /// Pub/sub channels subscribed over the up links.
    pub(super) fn channels(&self) -> usize {
        let templates = self.shared.settings.channels.len();
        self.up.iter().map(|l| l.channels(templates)).sum()
    }
}

/// Open the `index`-th link of the session (its id) on `spec`, bounded by the pub/sub limit.
async fn open_link(shared: &Context, spec: LinkSpec, index: usize) -> Result<Link, LinkError> {
    let name = format!("gleepost-gateway-{}-sub{index}", shared.node_name());
    let mut link = Link::open(spec, &shared.probe_channel, &name, shared.pubsub_limit()).await?;
    link.id = index;
    link.opened = shared.state.now_nanos();
    Ok(link)
}
