//! What a subscriber session reads from its links and sends them: the next push of any link
//! and what it does, reading one link until its commands are confirmed, the subscription
//! commands that follow the registry's requests, and when a link must be given up.

use super::context::Context;
use super::link_set::{Hold, Links};
use super::links::Link;
use super::probe;
use super::pubsub::PubSubError;
use super::reader::{self, Pushed};
use super::subscriber::SessionError;
use super::subscriptions::Wanted;
use crate::registry::UserId;

/// Why `link` must be given up, if it must: its probe did not come back within the probe
/// timeout (from when it opened), or a command it was sent is not confirmed in time.
pub(super) fn stale(shared: &Context, link: &Link) -> Option<SessionError> {
    let since = link.probe_back.max(link.opened);
    let timeout = u64::try_from(shared.settings.probe_timeout.as_nanos()).unwrap_or(u64::MAX);
    if shared.state.now_nanos().saturating_sub(since) > timeout {
        return Some(SessionError::ProbeLost);
    }
    link.sent
        .overdue(shared.pubsub_limit())
        .then_some(SessionError::CommandTimeout)
}

/// Deliver the messages link `i` held while it settled.
pub(super) fn dispatch_held(
    shared: &Context,
    links: &mut Links<'_>,
    i: usize,
    wanted: &mut Wanted,
) {
    for (channel, payload) in links.release(i) {
        reader::handle_message(shared, channel.as_bytes(), payload, wanted);
    }
}

/// The next push of any link (with its index).
pub(super) async fn next_push(links: &mut [Link]) -> (usize, Result<Pushed, PubSubError>) {
    if let [link] = links {
        return (0, reader::next(&mut link.conn).await);
    }
    let reads = links
        .iter_mut()
        .map(|l| Box::pin(reader::next(&mut l.conn)));
    let (pushed, i, _) = futures_util::future::select_all(reads).await;
    (i, pushed)
}

/// Handle one push of link `i`. Messages go to the connections, or are held while links are
/// settling.
pub(super) fn on_push(
    shared: &Context,
    links: &mut Links<'_>,
    i: usize,
    pushed: Pushed,
    wanted: &mut Wanted,
) -> Result<(), SessionError> {
    match pushed {
        Pushed::Message { channel, payload } => {
            shared.dispatcher.metrics().broker_messages.inc();
            let link = &mut links.up[i];
            if channel.as_bytes() == link.probe.as_bytes() {
                if let Some((back, ms)) = probe::on_probe(shared, &payload) {
                    (link.probe_back, link.probe_ms) = (back, ms);
                    links.probe_returned();
                }
            } else {
                match links.hold_or(i, channel, payload) {
                    Hold::Kept => {}
                    Hold::Full => return Err(SessionError::HeldOverflow),
                    Hold::Deliver(channel, payload) => {
                        reader::handle_message(shared, channel.as_bytes(), payload, wanted);
                    }
                }
            }
        }
        Pushed::Confirmed => confirmed(&mut links.up[i], wanted),
        Pushed::ShardUnsubscribed(channel) => {
            if !links.up[i].shard_unsubscribed(&channel) {
                let channel = String::from_utf8_lossy(&channel).into_owned();
                return Err(SessionError::ShardChannelDropped(channel));
            }
            confirmed(&mut links.up[i], wanted);
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

/// Read link `i` until every command sent on it is confirmed (bounded by the pub/sub limit),
/// its messages held meanwhile (probes are taken).
pub(super) async fn settle(
    shared: &Context,
    links: &mut Links<'_>,
    i: usize,
    wanted: &mut Wanted,
) -> Result<(), SessionError> {
    let settle = async {
        while !links.up[i].sent.settled() {
            let pushed = reader::next(&mut links.up[i].conn).await?;
            on_push(shared, links, i, pushed, wanted)?;
        }
        Ok(())
    };
    tokio::time::timeout(shared.pubsub_limit(), settle)
        .await
        .unwrap_or(Err(SessionError::CommandTimeout))
}

/// Send the commands that bring the up links' subscriptions in line with the dirty part of
/// `wanted` (confirmations arrive later, through the reader); returns the users subscribed.
/// Users that no up link serves are parked; a link whose commands fail is given up (or the
/// session, if it is the only one).
pub(super) async fn sync(
    shared: &Context,
    links: &mut Links<'_>,
    wanted: &mut Wanted,
) -> Result<Vec<UserId>, SessionError> {
    let mut dirty: Vec<Vec<UserId>> = vec![Vec::new(); links.up.len()];
    for user in wanted.take_dirty() {
        match links.up.iter().position(|l| l.spec.serves(user)) {
            Some(i) => dirty[i].push(user),
            None => links.park(user, wanted.users.contains(&user)),
        }
    }
    let templates = &shared.settings.channels;
    let limit = shared.pubsub_limit();
    let (mut added, mut failed) = (Vec::new(), Vec::new());
    for (i, users) in dirty.into_iter().enumerate() {
        if users.is_empty() {
            continue;
        }
        let link = &mut links.up[i];
        let (add, remove) = link.sent.plan(&wanted.users, users);
        let sent = match link.subscribe(&add, templates, limit).await {
            Ok(()) => link.unsubscribe(&remove, templates, limit).await,
            Err(e) => Err(e),
        };
        match sent {
            Ok(()) => {
                // Waiters of users that were subscribed already (a reconnect of a connected
                // user).
                link.sent.release_waiters(wanted);
                added.extend(add);
            }
            // Users whose command did not go out wait for the link with the others.
            Err(e) => failed.push((i, e, add)),
        }
    }
    // Newest first: failing a link moves the last one into its place.
    for (i, e, add) in failed.into_iter().rev() {
        for user in add {
            links.park(user, true);
        }
        links.fail(i, SessionError::from(e), wanted)?;
    }
    shared
        .dispatcher
        .metrics()
        .subscribed_channels
        .set(links.channels() as i64);
    Ok(added)
}
