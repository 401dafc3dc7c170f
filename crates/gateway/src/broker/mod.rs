//! Brokers carry published events to the nodes holding the recipients' connections.
//!
//! - [`MemoryBroker`]: in-process, for a single node (no `REDIS_URL`).
//! - [`RedisBroker`]: per-user Redis channels on one shared subscription per node.
//!
//! Either way an event is encoded once per publish and the same bytes reach every recipient.

mod memory;
mod probe;
pub(crate) mod pubsub;
mod redis;
mod repair;
mod subscriber;
mod subscriptions;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Utf8Bytes;

pub use self::memory::MemoryBroker;
pub use self::redis::{RedisBroker, RedisSettings};

use crate::history::Replay;
use crate::metrics::Metrics;
use crate::outbox::Frame;
use crate::registry::{Registry, Subscriptions, UserId};

/// Publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Redis refused or failed the command.
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// Redis did not answer in time.
    #[error("broker timed out")]
    Timeout,
}

/// The node's broker.
pub enum Broker {
    /// Embedded single-node broker.
    Memory(MemoryBroker),
    /// Redis pub/sub broker.
    Redis(RedisBroker),
}

impl Broker {
    /// The subscription hooks the registry calls.
    pub fn subscriptions(&self) -> &dyn Subscriptions {
        match self {
            Broker::Memory(b) => b,
            Broker::Redis(b) => b,
        }
    }

    /// Publish one encoded event (no id) to every user in `users`; returns the ids assigned
    /// per user (empty when history is off).
    pub async fn publish(
        &self,
        users: &[UserId],
        event: Bytes,
    ) -> Result<Vec<(UserId, String)>, BrokerError> {
        match self {
            Broker::Memory(b) => Ok(b.publish(users, event)),
            Broker::Redis(b) => b.publish(users, &event).await,
        }
    }

    /// What a connection of `user` resuming after `since` gets before live events.
    pub async fn replay(&self, user: UserId, since: &str) -> Replay {
        match self {
            Broker::Memory(b) => b.replay(user, since),
            Broker::Redis(b) => b.replay(user, since).await,
        }
    }

    /// True while the broker delivers end to end.
    pub fn is_ready(&self) -> bool {
        match self {
            Broker::Memory(_) => true,
            Broker::Redis(b) => b.is_ready(),
        }
    }
}

/// Hands events arriving from a broker to the registry: the step between the broker and the
/// connections' queues.
#[derive(Clone)]
pub struct Dispatcher {
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
}

impl Dispatcher {
    /// A dispatcher into `registry`.
    pub fn new(registry: Arc<Registry>, metrics: Arc<Metrics>) -> Self {
        Dispatcher { registry, metrics }
    }

    /// Queue an event (already validated, valid UTF-8) on every local connection of `user`.
    pub fn dispatch(&self, user: UserId, text: Utf8Bytes, entered: Instant) -> usize {
        let frame = Frame::new(text, entered);
        self.registry.dispatch(user, &frame, &self.metrics)
    }

    /// Queue a frame on every local connection of `user` (history replays, resync events).
    pub fn dispatch_frame(&self, user: UserId, frame: &Frame) -> usize {
        self.registry.dispatch(user, frame, &self.metrics)
    }

    /// Users with connections on this node.
    pub fn users(&self) -> Vec<UserId> {
        self.registry.users()
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}
