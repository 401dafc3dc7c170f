//! Brokers carry published events to the nodes holding the recipients' connections.
//!
//! - [`MemoryBroker`]: in-process, for a single node (no `REDIS_URL`).
//! - [`RedisBroker`]: per-user Redis channels on one shared subscription per node.
//!
//! Either way an event is encoded once per publish. Without history the same bytes reach every
//! recipient; with history each user's copy carries that user's event id (spliced in per user),
//! and the connections of one user share that one frame.
//!
//! Besides events, a broker carries the backend's control of connections: disconnecting every
//! connection of a user on every node, token revocation, and presence (connections per user
//! over all nodes).

mod memory;
pub(crate) mod redis;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Utf8Bytes;

pub(crate) use self::memory::{MemoryBroker, RingLimits};
pub(crate) use self::redis::{RedisBroker, RedisSettings, RedisTarget};

use crate::history::Replay;
use crate::metrics::Metrics;
use crate::outbox::Frame;
use crate::registry::{Registry, Subscriptions, UserId};

/// Publishing failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BrokerError {
    /// Redis refused or failed the command.
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// Redis did not answer in time.
    #[error("broker timed out")]
    Timeout,
    /// `REDIS_CLUSTER_URLS` names no node.
    #[error("no Redis Cluster seed URL given")]
    NoSeeds,
}

/// What a publish did.
#[derive(Debug, Default)]
pub(crate) struct Published {
    /// The id assigned per user (empty when history is off).
    pub(crate) ids: Vec<(UserId, String)>,
    /// Per user: whether any node held a connection of the user when it was published (the
    /// node was subscribed to the user's channel).
    pub(crate) online: Vec<(UserId, bool)>,
    /// Users whose copy Redis refused (their own keys answered an error, or Redis refused
    /// their script call): not published to them. Not in `ids` nor `online`.
    pub(crate) failed: Vec<(UserId, String)>,
}

/// The node's broker.
pub(crate) enum Broker {
    /// Embedded single-node broker.
    Memory(MemoryBroker),
    /// Redis pub/sub broker.
    Redis(RedisBroker),
}

impl Broker {
    /// The subscription hooks the registry calls.
    pub(crate) fn subscriptions(&self) -> &dyn Subscriptions {
        match self {
            Broker::Memory(b) => b,
            Broker::Redis(b) => b,
        }
    }

    /// Publish one encoded event (no id) to every user in `users`; returns the ids assigned
    /// per user (empty when history is off).
    pub(crate) async fn publish(
        &self,
        users: &[UserId],
        event: Bytes,
    ) -> Result<Published, BrokerError> {
        match self {
            Broker::Memory(b) => Ok(b.publish(users, event)),
            Broker::Redis(b) => b.publish(users, &event).await,
        }
    }

    /// Close every connection of each user on every node (4003); returns per user how many
    /// nodes were reached (nodes holding a connection of the user).
    pub(crate) async fn disconnect(
        &self,
        users: &[UserId],
    ) -> Result<Vec<(UserId, u64)>, BrokerError> {
        match self {
            Broker::Memory(b) => Ok(b.disconnect(users)),
            Broker::Redis(b) => b.disconnect(users).await,
        }
    }

    /// Refuse the users' JWTs issued before `before` (unix s, or without `iat`) on every node,
    /// for `ttl`.
    pub(crate) async fn revoke(
        &self,
        users: &[UserId],
        before: u64,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        match self {
            Broker::Memory(b) => {
                b.revoke(users, before, ttl);
                Ok(())
            }
            Broker::Redis(b) => b.revoke(users, before, ttl).await,
        }
    }

    /// The time before which `user`'s JWTs are revoked, if any.
    pub(crate) async fn revoked_before(&self, user: UserId) -> Result<Option<u64>, BrokerError> {
        match self {
            Broker::Memory(b) => Ok(b.revoked_before(user)),
            Broker::Redis(b) => b.revoked_before(user).await,
        }
    }

    /// Connections of each user over all live nodes.
    pub(crate) async fn presence(
        &self,
        users: &[UserId],
    ) -> Result<Vec<(UserId, u64)>, BrokerError> {
        match self {
            Broker::Memory(b) => Ok(b.presence(users)),
            Broker::Redis(b) => b.presence(users).await,
        }
    }

    /// What a connection of `user` resuming after `since` gets before live events.
    pub(crate) async fn replay(&self, user: UserId, since: &str) -> Replay {
        match self {
            Broker::Memory(b) => b.replay(user, since),
            Broker::Redis(b) => b.replay(user, since).await,
        }
    }

    /// The node is exiting (its connections are closed): other nodes stop counting them in
    /// presence at once, not after the node key's lifetime.
    pub(crate) async fn leave(&self) {
        match self {
            // Presence is this process's registry: it ends with it.
            Broker::Memory(_) => {}
            Broker::Redis(b) => b.leave().await,
        }
    }

    /// `Ok` while the broker delivers end to end; otherwise the reason (shown by `/readyz`).
    pub(crate) fn readiness(&self) -> Result<(), &'static str> {
        match self {
            Broker::Memory(_) => Ok(()),
            Broker::Redis(b) => b.readiness(),
        }
    }
}

/// Hands events arriving from a broker to the registry: the step between the broker and the
/// connections' queues.
#[derive(Clone)]
pub(crate) struct Dispatcher {
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
}

impl Dispatcher {
    /// A dispatcher into `registry`.
    pub(crate) fn new(registry: Arc<Registry>, metrics: Arc<Metrics>) -> Self {
        Dispatcher { registry, metrics }
    }

    /// Queue an event (already validated, valid UTF-8) on every local connection of `user`.
    pub(crate) fn dispatch(&self, user: UserId, text: Utf8Bytes, entered: Instant) -> usize {
        let frame = Frame::new(text, entered);
        self.registry.dispatch(user, &frame, &self.metrics)
    }

    /// Queue a frame on every local connection of `user` (history replays, resync events).
    pub(crate) fn dispatch_frame(&self, user: UserId, frame: &Frame) -> usize {
        self.registry.dispatch(user, frame, &self.metrics)
    }

    /// Close every local connection of `user` (4003); returns how many were open.
    pub(crate) fn disconnect(&self, user: UserId) -> usize {
        self.registry
            .close_user(user, crate::outbox::CloseReason::Disconnected)
    }

    /// Number of local connections of `user`.
    pub(crate) fn connections_of(&self, user: UserId) -> usize {
        self.registry.connections_of(user)
    }

    /// Every local user and its number of connections.
    pub(crate) fn user_counts(&self) -> Vec<(UserId, usize)> {
        self.registry.user_counts()
    }

    /// The node's metrics.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}
