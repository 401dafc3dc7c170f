//! The node's live connections, by user.
//!
//! A `DashMap` from user id to that user's connections on this node. The first connection of a
//! user subscribes the node to the user's channels and the last one unsubscribes; both calls are
//! made while the user's map entry is locked, so subscribe/unsubscribe requests for one user reach
//! the broker in the same order as the registry changes (no lost or leaked subscription when a
//! user connects and disconnects concurrently).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::sync::watch;

use crate::log_limit::LogLimit;
use crate::metrics::Metrics;
use crate::outbox::{CloseReason, Frame, Outbox, PushError, QueueLimits};

/// Clients choose to stop reading: one line per second at most for their closes (the metric
/// counts every one).
static SLOW_CONSUMER_LOG: LogLimit = LogLimit::new(std::time::Duration::from_secs(1));

/// A Gleepost user id.
pub(crate) type UserId = u64;

/// Becomes `true` once the broker confirmed the subscription to a user's channels.
pub(crate) type Subscribed = watch::Receiver<bool>;

/// Subscription hooks the registry calls under the user's entry lock. Implementations must not
/// block: they enqueue the request and return at once.
pub(crate) trait Subscriptions: Send + Sync {
    /// The user's first connection on this node registered.
    fn subscribe(&self, user: UserId) -> Subscribed;
    /// The user's last connection on this node left.
    fn unsubscribe(&self, user: UserId);
    /// The user now has `count` connections on this node (presence; after every insert and
    /// removal, under the entry lock, so counts arrive in order).
    fn connections_changed(&self, _user: UserId, _count: usize) {}
}

/// One client connection as seen by the event path.
pub(crate) struct Conn {
    /// Node-unique connection id.
    pub(crate) id: u64,
    /// The authenticated user.
    pub(crate) user: UserId,
    /// Frames waiting for the socket.
    pub(crate) outbox: Outbox,
}

struct UserConns {
    conns: Vec<Arc<Conn>>,
    subscribed: Subscribed,
}

/// Live connections of this node.
pub(crate) struct Registry {
    users: DashMap<UserId, UserConns>,
    next_id: AtomicU64,
    /// Registered connections (a counter, so the capacity check is O(1)).
    count: AtomicUsize,
    /// Most registered connections; 0 = no limit.
    max: usize,
    /// Most registered connections of one user; 0 = no limit.
    max_per_user: usize,
    limits: QueueLimits,
    /// Always true: what a user's later connections wait on once its subscription is
    /// confirmed, so that the broker's per-user confirmation channel can be freed.
    confirmed: Subscribed,
}

/// A connection the registry refused: the node or the user holds its maximum already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AtCapacity {
    /// The node holds its `--max-connections`.
    #[error("node at capacity")]
    Node,
    /// The user holds `--max-connections-per-user` connections on this node.
    #[error("user at its connection limit")]
    User,
}

impl Registry {
    /// An empty registry whose connections get outboxes bounded by `limits`, holding at most
    /// `max` connections and `max_per_user` connections of one user (0 = no limit).
    pub(crate) fn new(limits: QueueLimits, max: usize, max_per_user: usize) -> Self {
        Registry {
            users: DashMap::new(),
            next_id: AtomicU64::new(1),
            count: AtomicUsize::new(0),
            max,
            max_per_user,
            limits,
            // The sender is not needed: the value never changes.
            confirmed: watch::channel(true).1,
        }
    }

    /// Register a new connection of `user`; returns it and a receiver that turns `true` when the
    /// node's subscription to the user's channels is confirmed. Refused when the registry, or the
    /// user, holds its maximum already: both checks are made under the user's entry lock, so
    /// concurrent connections of one user never exceed the per-user limit.
    pub(crate) fn insert(
        &self,
        user: UserId,
        subs: &dyn Subscriptions,
    ) -> Result<(Arc<Conn>, Subscribed), AtCapacity> {
        let entry = self.users.entry(user);
        if let Entry::Occupied(e) = &entry {
            if self.max_per_user != 0 && e.get().conns.len() >= self.max_per_user {
                return Err(AtCapacity::User);
            }
        }
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (self.max == 0 || n < self.max).then_some(n + 1)
            })
            .map_err(|_| AtCapacity::Node)?;
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            user,
            outbox: Outbox::new(),
        });
        let subscribed = match entry {
            Entry::Occupied(mut e) => {
                e.get_mut().conns.push(conn.clone());
                subs.connections_changed(user, e.get().conns.len());
                e.get().subscribed.clone()
            }
            Entry::Vacant(e) => {
                let subscribed = subs.subscribe(user);
                e.insert(UserConns {
                    conns: vec![conn.clone()],
                    subscribed: subscribed.clone(),
                });
                subs.connections_changed(user, 1);
                subscribed
            }
        };
        Ok((conn, subscribed))
    }

    /// The subscription of `user` is confirmed: the user's later connections get the
    /// registry's always-true receiver instead of the broker's per-user channel, which is then
    /// freed (a few hundred bytes per user) once the connections that waited on it are admitted.
    pub(crate) fn confirmed(&self, user: UserId) {
        if let Some(mut entry) = self.users.get_mut(&user) {
            if *entry.subscribed.borrow() {
                entry.subscribed = self.confirmed.clone();
            }
        }
    }

    /// Remove a connection; the user's last one unsubscribes the node.
    pub(crate) fn remove(&self, conn: &Conn, subs: &dyn Subscriptions) {
        if let Entry::Occupied(mut e) = self.users.entry(conn.user) {
            let before = e.get().conns.len();
            e.get_mut().conns.retain(|c| c.id != conn.id);
            if e.get().conns.len() < before {
                self.count.fetch_sub(1, Ordering::AcqRel);
                subs.connections_changed(conn.user, e.get().conns.len());
            }
            if e.get().conns.is_empty() {
                subs.unsubscribe(conn.user);
                e.remove();
            }
        }
    }

    /// Queue `frame` on every connection of `user`; returns how many connections took it.
    /// Never waits: a full queue closes that connection as a slow consumer.
    pub(crate) fn dispatch(&self, user: UserId, frame: &Frame, metrics: &Metrics) -> usize {
        let Some(entry) = self.users.get(&user) else {
            return 0;
        };
        let mut queued = 0;
        for conn in &entry.conns {
            match conn.outbox.push(frame.clone(), &self.limits) {
                Ok(()) => queued += 1,
                Err(PushError::Overflow) => {
                    metrics
                        .events_dropped
                        .with_label_values(&["slow_consumer"])
                        .inc();
                    if let Some(suppressed) = SLOW_CONSUMER_LOG.allow() {
                        tracing::warn!(
                            user,
                            conn = conn.id,
                            suppressed,
                            "slow consumer, closing connection"
                        );
                    }
                }
                Err(PushError::Closed) => {
                    metrics.events_dropped.with_label_values(&["closing"]).inc();
                }
            }
        }
        queued
    }

    /// Close every connection of `user` with `reason`; returns how many were open.
    pub(crate) fn close_user(&self, user: UserId, reason: CloseReason) -> usize {
        let Some(entry) = self.users.get(&user) else {
            return 0;
        };
        for conn in &entry.conns {
            conn.outbox.close(reason);
        }
        entry.conns.len()
    }

    /// Number of connections of `user` on this node.
    pub(crate) fn connections_of(&self, user: UserId) -> usize {
        self.users.get(&user).map_or(0, |e| e.conns.len())
    }

    /// Every user with connections here and their number (presence refresh).
    pub(crate) fn user_counts(&self) -> Vec<(UserId, usize)> {
        self.users
            .iter()
            .map(|e| (*e.key(), e.value().conns.len()))
            .collect()
    }

    /// A snapshot of every live connection (for draining).
    pub(crate) fn connections(&self) -> Vec<Arc<Conn>> {
        self.users
            .iter()
            .flat_map(|e| e.value().conns.clone())
            .collect()
    }

    /// Number of live connections.
    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// True when no connection is registered.
    pub(crate) fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

#[cfg(test)]
mod tests;
