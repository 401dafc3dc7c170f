//! What a subscriber session awaits beside its pushes, so that none of it keeps the pushes
//! (deliveries, probes) from being read: the epoch reads of newly subscribed users, the
//! periodic check of the topology, and the primary announcements under Sentinel.

use std::future::Future;
use std::pin::Pin;

use futures_util::stream::FuturesUnordered;
use gleepost_event::sentinel::NodeAddr;
use tokio::sync::watch;

use super::context::Context;
use super::epochs;
use super::subscriptions::Wanted;
use super::topology::LinkSpec;
use crate::registry::UserId;

/// An epoch read under way ([`epochs::read`]).
pub(super) type EpochRead<'a> =
    Pin<Box<dyn Future<Output = Vec<(UserId, Option<u64>)>> + Send + 'a>>;

/// Start reading the epochs of the `added` users that have none known yet.
pub(super) fn read_epochs<'a>(
    shared: &'a Context,
    wanted: &Wanted,
    added: Vec<UserId>,
    reads: &mut FuturesUnordered<EpochRead<'a>>,
) {
    if shared.history.is_none() {
        return;
    }
    let users = wanted.epochs_unknown(added);
    if !users.is_empty() {
        reads.push(Box::pin(epochs::read(shared, users)));
    }
}

/// A topology check under way: true when the deployment is no longer the links'.
pub(super) type TopologyCheck<'a> = Pin<Box<dyn Future<Output = bool> + Send + 'a>>;

/// Whether the deployment is still the links' (a slot that moved without a `sunsubscribe`
/// reaching us, a new primary whose announcement was missed): true when not (reconnect).
pub(super) fn check_topology(shared: &Context, current: Vec<LinkSpec>) -> TopologyCheck<'_> {
    Box::pin(async move {
        let limit = shared.pubsub_limit();
        // Unchanged, or not answering: the probes decide.
        matches!(
            tokio::time::timeout(limit, shared.topology.moved(&current)).await,
            Ok(true)
        )
    })
}

/// The result of the check under way (never, while none is).
pub(super) async fn checked(check: &mut Option<TopologyCheck<'_>>) -> bool {
    match check {
        Some(check) => check.await,
        None => std::future::pending().await,
    }
}

/// The next primary announced on `changes` (never, without Sentinel).
pub(super) async fn next_primary(
    changes: &mut Option<watch::Receiver<Option<NodeAddr>>>,
) -> Option<NodeAddr> {
    let Some(rx) = changes else {
        return std::future::pending().await;
    };
    if rx.changed().await.is_err() {
        return std::future::pending().await;
    }
    rx.borrow_and_update().clone()
}
