//! Gap repair: after the node's subscription was down, queue for every connected user the events
//! published meanwhile, from history, before any live event (duplicates are filtered per
//! connection by event id).

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use gleepost_event::history::frame_id;
use gleepost_event::EventId;

use super::context::Context;
use super::history::{Fresh, ReadError};
use super::links::Link;
use super::subscriptions::Wanted;
use crate::history::{resync_frame, Replay};
use crate::outbox::Frame;
use crate::registry::UserId;

/// After a reconnect, a link's gap repair queues for each of its connected users the events
/// published while the subscription was down: history after the last event delivered to the
/// user (exact resume semantics, `resync` when that cannot be proved), or, for users that got
/// no event yet, from the Redis time known delivered when the user became wanted
/// ([`Wanted::floors`]; the first such time for users wanted before any was known): [`plan`]
/// (fixed when it starts), [`read`] (under way beside the pushes), [`apply`].
/// What a repair of some users reads from history, fixed when it starts: the users' live
/// messages must be held until it is applied (their repair points must not move meanwhile).
pub(super) struct Plan {
    known: Vec<(UserId, EventId)>,
    fresh: Vec<Fresh>,
}

/// The repair of `users`: `None` when history is off, in which case they were sent a
/// `resync` (what was published meanwhile is lost to their connections, and they are told
/// so, not left with a silent gap).
pub(super) fn plan(shared: &Context, users: &HashSet<UserId>, wanted: &Wanted) -> Option<Plan> {
    if shared.history.is_none() {
        let frame = Frame::new(resync_frame("history_off", None), Instant::now());
        let metrics = shared.dispatcher.metrics();
        for &user in users {
            let queued = shared.dispatcher.dispatch_frame(user, &frame);
            metrics
                .resyncs
                .with_label_values(&["history_off"])
                .inc_by(queued as u64);
        }
        tracing::info!(users = users.len(), "gap repair: history off, resync sent");
        return None;
    }
    let delivered = &wanted.delivered;
    let (known, fresh): (Vec<UserId>, Vec<UserId>) =
        users.iter().partition(|u| delivered.contains_key(u));
    let fresh: Vec<Fresh> = fresh
        .into_iter()
        .map(|user| Fresh {
            user,
            // Wanted before any point was known: the first one known (the node-wide point is
            // later, moved by probes of other slots past what this user may have missed).
            from: wanted
                .floors
                .get(&user)
                .copied()
                .unwrap_or_else(|| shared.state.first_delivered_ms()),
            epoch: wanted.epochs.get(&user).copied(),
        })
        .collect();
    let known: Vec<(UserId, EventId)> = known
        .into_iter()
        .filter_map(|u| Some((u, delivered.get(&u)?.clone())))
        .collect();
    let (fresh, pointless): (Vec<_>, Vec<_>) = fresh.into_iter().partition(|f| f.from > 0);
    if !pointless.is_empty() {
        tracing::warn!(
            users = pointless.len(),
            "nothing was delivered before the outage: no gap repair point"
        );
    }
    Some(Plan { known, fresh })
}

/// Read what `plan` needs from history.
pub(super) async fn read(shared: &Context, plan: Plan) -> Result<Vec<(UserId, Replay)>, ReadError> {
    let Some(history) = &shared.history else {
        return Ok(Vec::new());
    };
    let mut replays = history.since_ids(&plan.known).await?;
    replays.extend(history.since_ms(&plan.fresh).await?);
    Ok(replays)
}

/// Queue the `replays` read for a repair of `users` users, and move their repair points.
pub(super) fn apply(
    shared: &Context,
    users: usize,
    replays: Vec<(UserId, Replay)>,
    wanted: &mut Wanted,
) {
    let delivered = &mut wanted.delivered;
    let node_wide = shared.state.delivered_ms();
    let entered = Instant::now();
    let (mut events, mut resyncs) = (0usize, 0usize);
    for (user, replay) in replays {
        // What the user's connections have after this repair: the next repair starts there.
        let last = match &replay {
            Replay::Events(frames) => frames.last().and_then(|t| {
                let (epoch, ms, seq) = frame_id(t.as_bytes())?;
                let epoch = epoch.to_string();
                Some(EventId { epoch, ms, seq })
            }),
            Replay::Resync { latest, .. } => latest.as_deref().and_then(EventId::parse),
        };
        // Only forward within one history (a catch-up during a migration runs beside live
        // delivery, which may have moved the point already).
        match (last, delivered.get_mut(&user)) {
            (Some(last), Some(had)) if had.epoch == last.epoch => {
                (had.ms, had.seq) = (had.ms, had.seq).max((last.ms, last.seq));
            }
            (Some(last), _) => {
                delivered.insert(user, last);
            }
            (None, _) => {}
        }
        // Counted like a resume's, once per connection the frame was queued on.
        let metrics = shared.dispatcher.metrics();
        match replay {
            Replay::Events(frames) => {
                events += frames.len();
                for text in frames {
                    let queued = shared.dispatcher.dispatch(user, text, entered);
                    metrics.events_replayed.inc_by(queued as u64);
                }
            }
            Replay::Resync { reason, latest } => {
                resyncs += 1;
                let frame = Frame::new(resync_frame(reason, latest.as_deref()), entered);
                let queued = shared.dispatcher.dispatch_frame(user, &frame);
                metrics
                    .resyncs
                    .with_label_values(&[reason])
                    .inc_by(queued as u64);
            }
        }
    }
    tracing::info!(
        users,
        from_ms = node_wide,
        events,
        resyncs,
        "gap repair queued"
    );
}

/// A gap repair under way for a reopened link.
pub(super) type RepairRead<'a> = Pin<Box<dyn Future<Output = RepairDone> + Send + 'a>>;

/// A finished gap repair of a link: the link's id and opening time (a link reopened since is
/// another), the number of users, and what was read.
pub(super) type RepairDone = (usize, u64, usize, Result<Vec<(UserId, Replay)>, ReadError>);

/// The gap repair of a reopened `link`, once every channel it was sent is confirmed (its
/// messages are held until the repair is applied).
pub(super) fn start_repair<'a>(
    shared: &'a Context,
    link: &mut Link,
    wanted: &Wanted,
) -> Option<RepairRead<'a>> {
    if link.held.is_none() || link.repairing || !link.sent.settled() {
        return None;
    }
    link.repairing = true;
    let users: HashSet<UserId> = link.sent.current.iter().copied().collect();
    let plan = plan(shared, &users, wanted);
    let (id, opened, n) = (link.id, link.opened, users.len());
    Some(Box::pin(async move {
        let read = match plan {
            Some(plan) => read(shared, plan).await,
            None => Ok(Vec::new()),
        };
        (id, opened, n, read)
    }))
}
