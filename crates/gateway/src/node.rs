//! What every task of one gateway node shares.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gleepost_event::Limits;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::auth::Authenticator;
use crate::broker::Broker;
use crate::metrics::Metrics;
use crate::registry::Registry;

/// Per-connection settings.
#[derive(Clone, Copy, Debug)]
pub struct ConnSettings {
    /// Interval between pings.
    pub ping_interval: Duration,
    /// Close when a ping is not answered within this time.
    pub pong_timeout: Duration,
    /// Longest wait for the broker to confirm a new user's subscription.
    pub subscribe_timeout: Duration,
    /// WebSocket protocol limits and buffer sizes.
    pub websocket: WebSocketConfig,
    /// Most frames a client may send in one second (closed with 1008 beyond).
    pub client_frame_rate: u32,
}

/// Shared state of one gateway node.
pub struct Node {
    /// Live connections by user.
    pub registry: Arc<Registry>,
    /// Delivery between nodes (or in process).
    pub broker: Broker,
    /// Every metric.
    pub metrics: Arc<Metrics>,
    /// Client authentication.
    pub auth: Authenticator,
    /// Event validation limits.
    pub limits: Limits,
    /// Publish API: key and bounds.
    pub publish: PublishSettings,
    /// Per-connection settings.
    pub conn: ConnSettings,
    draining: AtomicBool,
}

/// Settings of the publish API.
#[derive(Clone, Debug)]
pub struct PublishSettings {
    /// Bearer key.
    pub api_key: String,
    /// Most recipients per request.
    pub max_users: usize,
    /// Largest request body.
    pub max_body: u64,
}

impl Node {
    /// Assemble a node.
    pub fn new(
        registry: Arc<Registry>,
        broker: Broker,
        metrics: Arc<Metrics>,
        auth: Authenticator,
        limits: Limits,
        publish: PublishSettings,
        conn: ConnSettings,
    ) -> Arc<Self> {
        Arc::new(Node {
            registry,
            broker,
            metrics,
            auth,
            limits,
            publish,
            conn,
            draining: AtomicBool::new(false),
        })
    }

    /// Ready (`Ok`): not draining and the broker delivers end to end; otherwise why not.
    /// Updates the `ready` gauge.
    pub fn readiness(&self) -> Result<(), &'static str> {
        let readiness = if self.draining.load(Ordering::Acquire) {
            Err("draining")
        } else {
            self.broker.readiness()
        };
        self.metrics.ready.set(i64::from(readiness.is_ok()));
        readiness
    }

    /// Start draining: readiness fails from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.metrics.ready.set(0);
        self.metrics.draining.set(1);
    }
}
