//! What every task of one gateway node shares.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gleepost_event::Limits;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::admin::ApiKeys;
use crate::auth::Authenticator;
use crate::broker::Broker;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::replay_budget::ReplayBudget;

/// Per-connection settings.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnSettings {
    /// Interval between pings.
    pub(crate) ping_interval: Duration,
    /// Close when a ping is not answered within this time.
    pub(crate) pong_timeout: Duration,
    /// Longest wait for the broker to confirm a new user's subscription.
    pub(crate) subscribe_timeout: Duration,
    /// WebSocket protocol limits and buffer sizes.
    pub(crate) websocket: WebSocketConfig,
    /// Most frames a client may send in one second (closed with 1008 beyond).
    pub(crate) client_frame_rate: u32,
    /// Most bytes of one replay (a user's replay budget is counted in these).
    pub(crate) max_replay_bytes: usize,
}

/// Shared state of one gateway node.
pub(crate) struct Node {
    /// Live connections by user.
    pub(crate) registry: Arc<Registry>,
    /// Delivery between nodes (or in process).
    pub(crate) broker: Broker,
    /// Every metric.
    pub(crate) metrics: Arc<Metrics>,
    /// Client authentication.
    pub(crate) auth: Authenticator,
    /// Event validation limits (of an event as delivered, id included).
    pub(crate) limits: Limits,
    /// Publish API: key and bounds.
    pub(crate) publish: PublishSettings,
    /// Per-connection settings.
    pub(crate) conn: ConnSettings,
    /// Each user's budget of history replays.
    pub(crate) replay_budget: ReplayBudget,
    draining: AtomicBool,
}

/// Settings of the publish API.
#[derive(Clone, Debug)]
pub(crate) struct PublishSettings {
    /// Bearer keys (any one is accepted).
    pub(crate) api_keys: ApiKeys,
    /// Most recipients per request.
    pub(crate) max_users: usize,
    /// Largest request body.
    pub(crate) max_body: u64,
    /// How long a token revocation lasts (`POST /v1/disconnect`).
    pub(crate) revocation_ttl: Duration,
    /// History is on: the broker adds an id to every event, so a published event must leave
    /// room for it under the limits.
    pub(crate) adds_ids: bool,
}

impl Node {
    /// Assemble a node.
    pub(crate) fn new(
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
            replay_budget: ReplayBudget::new(conn.max_replay_bytes),
            draining: AtomicBool::new(false),
        })
    }

    /// Ready (`Ok`): not draining and the broker delivers end to end; otherwise why not.
    /// Updates the `ready` gauge.
    pub(crate) fn readiness(&self) -> Result<(), &'static str> {
        let readiness = if self.draining.load(Ordering::Acquire) {
            Err("draining")
        } else {
            self.broker.readiness()
        };
        self.metrics.ready.set(i64::from(readiness.is_ok()));
        readiness
    }

    /// Start draining: readiness fails from now on.
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.metrics.ready.set(0);
        self.metrics.draining.set(1);
    }
}
