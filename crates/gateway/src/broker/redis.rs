//! The Redis broker: publishing with PUBLISH to per-user channels, receiving through one shared
//! pub/sub connection per node (see [`super::subscriber`]).
//!
//! Redis connections per node: one pub/sub connection plus one multiplexed command connection
//! (publish, self-probe, token checks), whatever the number of clients.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gleepost_event::keys::Template;
use gleepost_event::{HistoryConfig, Limits, Publisher};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{mpsc, watch};

use super::probe;
use super::subscriber;
use super::subscriptions::SubCommand;
use super::{BrokerError, Dispatcher};
use crate::history::{RedisHistory, Replay};
use crate::registry::{Subscribed, Subscriptions, UserId};

/// Settings of the Redis broker.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// `redis://…` URL.
    pub url: String,
    /// Channel templates of a user; the first is where the publish API publishes.
    pub channels: Vec<Template>,
    /// Timeout of request-path commands (publish, token check) and of connecting.
    pub timeout: Duration,
    /// Interval of the self-probe.
    pub probe_interval: Duration,
    /// Unready (and reconnect) when no probe came back within this time.
    pub probe_timeout: Duration,
    /// Limits applied to payloads arriving on channels.
    pub limits: Limits,
    /// Per-user history written by publishes.
    pub history: HistoryConfig,
    /// Most events replayed on one resume or repair.
    pub max_replay: usize,
}

/// State shared between the broker handle, the subscriber task and the probe task.
pub(super) struct Shared {
    pub(super) settings: RedisSettings,
    pub(super) client: redis::Client,
    pub(super) commands: ConnectionManager,
    pub(super) dispatcher: Dispatcher,
    /// The node's private probe channel.
    pub(super) probe_channel: String,
    /// Time base of the probe timestamps.
    pub(super) base: Instant,
    /// The pub/sub connection is up and every wanted channel is subscribed.
    pub(super) subscribed: AtomicBool,
    /// Nanoseconds since `base` when a probe last came back.
    pub(super) last_probe_back: AtomicU64,
    /// Newest Redis time (ms) known to have been delivered on the subscription: from event ids
    /// and probes. Gap repair after a reconnect reads history from there.
    pub(super) delivered_ms: AtomicU64,
    /// Publishes (with history when enabled).
    pub(super) publisher: Publisher,
    /// History reader (None when history is off).
    pub(super) history: Option<RedisHistory>,
}

impl Shared {
    /// Nanoseconds since the time base.
    pub(super) fn now_nanos(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// True when a probe came back within the probe timeout.
    pub(super) fn probe_fresh(&self) -> bool {
        let back = self.last_probe_back.load(Ordering::Acquire);
        back != 0
            && self.now_nanos().saturating_sub(back) < self.settings.probe_timeout.as_nanos() as u64
    }
}

/// Handle of the Redis broker.
pub struct RedisBroker {
    shared: Arc<Shared>,
    commands_tx: mpsc::UnboundedSender<SubCommand>,
}

impl RedisBroker {
    /// Connect the command connection and start the subscriber and probe tasks.
    pub async fn start(
        settings: RedisSettings,
        dispatcher: Dispatcher,
    ) -> Result<Self, BrokerError> {
        let client = redis::Client::open(settings.url.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let commands = tokio::time::timeout(
            settings.timeout * 5,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .map_err(|_| BrokerError::Timeout)??;
        let probe_channel = format!(
            "{}{}-{:016x}",
            gleepost_event::keys::PROBE_CHANNEL_PREFIX,
            std::process::id(),
            rand::random::<u64>()
        );
        let mut publisher = Publisher::from_manager(commands.clone())
            .with_limits(settings.limits)
            .with_history(settings.history);
        if let Some(channel) = settings.channels.first() {
            publisher = publisher.with_channel(channel.clone());
        }
        let history = settings
            .history
            .enabled()
            .then(|| RedisHistory::new(commands.clone(), settings.max_replay, settings.timeout));
        let shared = Arc::new(Shared {
            publisher,
            history,
            delivered_ms: AtomicU64::new(0),
            settings,
            client,
            commands,
            dispatcher,
            probe_channel,
            base: Instant::now(),
            subscribed: AtomicBool::new(false),
            last_probe_back: AtomicU64::new(0),
        });
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        tokio::spawn(subscriber::run(shared.clone(), commands_rx));
        tokio::spawn(probe::run(Arc::downgrade(&shared)));
        Ok(RedisBroker {
            shared,
            commands_tx,
        })
    }

    /// The shared command connection (for token checks).
    pub fn commands(&self) -> ConnectionManager {
        self.shared.commands.clone()
    }

    /// Publish the encoded event (no id) to each user's primary channel, in one pipeline,
    /// through the history script when history is on; returns the ids assigned.
    pub async fn publish(
        &self,
        users: &[UserId],
        event: &[u8],
    ) -> Result<Vec<(UserId, String)>, BrokerError> {
        let publish = self.shared.publisher.publish_encoded(users, event);
        let report = tokio::time::timeout(self.shared.settings.timeout, publish)
            .await
            .map_err(|_| BrokerError::Timeout)??;
        Ok(report.ids)
    }

    /// Events of `user` after `since`, from Redis history.
    pub async fn replay(&self, user: UserId, since: &str) -> Replay {
        match &self.shared.history {
            Some(history) => history.replay(user, since).await,
            None => Replay::Resync {
                reason: "history_off",
                latest: None,
            },
        }
    }

    /// Subscribed, and the self-probe comes back in time.
    pub fn is_ready(&self) -> bool {
        self.shared.subscribed.load(Ordering::Acquire) && self.shared.probe_fresh()
    }
}

impl Subscriptions for RedisBroker {
    fn subscribe(&self, user: UserId) -> Subscribed {
        let (tx, rx) = watch::channel(false);
        // The subscriber task lives as long as the process; if it is gone the sender is dropped
        // and waiters see the subscription fail.
        let _ = self.commands_tx.send(SubCommand::Subscribe(user, tx));
        rx
    }

    fn unsubscribe(&self, user: UserId) {
        let _ = self.commands_tx.send(SubCommand::Unsubscribe(user));
    }
}
