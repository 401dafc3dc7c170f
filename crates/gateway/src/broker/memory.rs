//! The embedded broker: publishing hands the event straight to this node's registry.

use std::time::Instant;

use bytes::Bytes;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::Dispatcher;
use crate::registry::{Subscribed, Subscriptions, UserId};

/// In-process broker for a single node.
pub struct MemoryBroker {
    dispatcher: Dispatcher,
    /// Subscriptions are immediate: every user shares this already-confirmed receiver.
    confirmed: Subscribed,
    _confirmed_tx: watch::Sender<bool>,
}

impl MemoryBroker {
    /// A broker delivering into `dispatcher`.
    pub fn new(dispatcher: Dispatcher) -> Self {
        let (tx, rx) = watch::channel(true);
        MemoryBroker {
            dispatcher,
            confirmed: rx,
            _confirmed_tx: tx,
        }
    }

    /// Deliver an encoded event to every local connection of each user.
    pub fn publish(&self, users: &[UserId], event: Bytes) {
        let entered = Instant::now();
        match Utf8Bytes::try_from(event) {
            Ok(text) => {
                for &user in users {
                    self.dispatcher.dispatch(user, text.clone(), entered);
                }
            }
            // Encoded events are serde_json output, always UTF-8; count it if that ever breaks.
            Err(_) => self
                .dispatcher
                .metrics()
                .events_dropped
                .with_label_values(&["not_utf8"])
                .inc(),
        }
    }
}

impl Subscriptions for MemoryBroker {
    fn subscribe(&self, _user: UserId) -> Subscribed {
        self.confirmed.clone()
    }

    fn unsubscribe(&self, _user: UserId) {}
}
