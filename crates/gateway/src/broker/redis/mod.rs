//! The Redis broker: per-user channels on one shared pub/sub connection per node.
//!
//! Layers, bottom up: the RESP pub/sub connection (`pubsub.rs`) and the topology that opens
//! connections (`standalone.rs`, `sentinel.rs`, `cluster.rs`); the link state (`state.rs`) and what the tasks share
//! (`context.rs`); history reads (`history.rs`); the tasks: the subscriber (`subscriber.rs`,
//! bookkeeping in `subscriptions.rs`), its gap repair (`repair.rs`) and the self-probe
//! (`probe.rs`); the backend's control of connections (`control.rs`: disconnect, revocation)
//! and presence (`presence.rs`); and this handle, which the node calls.
//!
//! Redis connections per node: one pub/sub connection plus one multiplexed command connection
//! (publish, self-probe, token checks), whatever the number of clients.

mod cluster;
mod context;
mod control;
mod epochs;
mod history;
mod link_io;
mod link_set;
mod links;
mod migrations;
mod presence;
mod probe;
pub(crate) mod pubsub;
mod reader;
mod repair;
mod sentinel;
mod side_tasks;
mod standalone;
mod state;
mod subscriber;
mod subscriptions;
mod topology;

use std::sync::Arc;
use std::time::Duration;

use gleepost_event::Publisher;
use gleepost_event::RedisConn;
use tokio::sync::{mpsc, watch};

use self::context::Context;
pub(crate) use self::context::{RedisSettings, RedisTarget, PUBSUB_TIMEOUT_FACTOR};
use self::history::RedisHistory;
use self::state::State;
use self::subscriptions::SubCommand;
use self::topology::Topology;
use super::{BrokerError, Dispatcher, Published};
use crate::history::Replay;
use crate::registry::{Subscribed, Subscriptions, UserId};

/// Handle of the Redis broker.
pub(crate) struct RedisBroker {
    shared: Arc<Context>,
    commands_tx: mpsc::UnboundedSender<SubCommand>,
    /// Connection counts per user, to the presence writer.
    presence_tx: mpsc::UnboundedSender<(UserId, usize)>,
}

impl RedisBroker {
    /// Start the subscriber and probe tasks; they connect (and reconnect) in the background,
    /// so a Redis that is down at start-up leaves the node up and unready.
    pub(crate) fn start(
        settings: RedisSettings,
        dispatcher: Dispatcher,
    ) -> Result<Self, BrokerError> {
        let backstop = settings.response_backstop();
        let topology = match &settings.target {
            RedisTarget::Standalone(url) => Topology::standalone(url, settings.timeout, backstop)?,
            RedisTarget::Sentinel {
                sentinels,
                master,
                node,
            } => Topology::sentinel(sentinels, master, node.clone(), settings.timeout, backstop)?,
            RedisTarget::Cluster(seeds) => Topology::cluster(seeds, settings.timeout)?,
        };
        let commands = topology.commands();
        let probe_channel = format!(
            "{}{}-{:016x}",
            gleepost_event::keys::PROBE_CHANNEL_PREFIX,
            std::process::id(),
            rand::random::<u64>()
        );
        let publisher = Publisher::from_conn(commands.clone())
            .with_limits(settings.limits)
            .with_history(settings.history)
            .with_replicas(settings.publish_replicas, settings.timeout);
        let history = settings.history.enabled().then(|| {
            RedisHistory::new(
                commands.clone(),
                settings.max_replay,
                settings.max_replay_bytes,
                settings.history_limit(),
            )
        });
        let shared = Arc::new(Context {
            publisher,
            history,
            settings,
            topology,
            dispatcher,
            probe_channel,
            probe_targets: std::sync::Mutex::new(Vec::new()),
            state: State::new(),
        });
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        tokio::spawn(subscriber::run(shared.clone(), commands_rx));
        tokio::spawn(probe::run(Arc::downgrade(&shared)));
        let (presence_tx, presence_rx) = mpsc::unbounded_channel();
        tokio::spawn(presence::run(Arc::downgrade(&shared), presence_rx));
        if let Topology::Sentinel(s) = &shared.topology {
            let watch = sentinel::watch_switches(
                Arc::downgrade(&shared),
                s.conn().clone(),
                shared.settings.timeout,
            );
            tokio::spawn(watch);
        }
        Ok(RedisBroker {
            shared,
            commands_tx,
            presence_tx,
        })
    }

    /// The node is exiting: other nodes stop counting its connections in presence now.
    pub(crate) async fn leave(&self) {
        if let Err(e) = presence::leave(&self.shared).await {
            tracing::warn!(error = %e, "presence: node key not deleted; it expires by itself");
        }
    }

    /// The shared command connection (for token checks).
    pub(crate) fn commands(&self) -> RedisConn {
        self.shared.topology.commands()
    }

    /// Publish the encoded event (no id) to each user's primary channel, in one pipeline,
    /// through the history script when history is on; returns the ids assigned.
    pub(crate) async fn publish(
        &self,
        users: &[UserId],
        event: &[u8],
    ) -> Result<Published, BrokerError> {
        let publish = self.shared.publisher.publish_encoded(users, event);
        let limit = self.shared.settings.publish_limit(users.len());
        let report = tokio::time::timeout(limit, publish)
            .await
            .map_err(|_| BrokerError::Timeout)??;
        Ok(Published {
            ids: report.ids,
            online: report.online.into_iter().map(|(u, n)| (u, n > 0)).collect(),
            failed: report.failed,
        })
    }

    /// Close every connection of each user on every node; per user, the nodes reached.
    pub(crate) async fn disconnect(
        &self,
        users: &[UserId],
    ) -> Result<Vec<(UserId, u64)>, BrokerError> {
        let conn = self.shared.topology.commands();
        self.bounded(control::disconnect(&conn, users)).await
    }

    /// Revoke the users' JWTs issued before `before` for `ttl`.
    pub(crate) async fn revoke(
        &self,
        users: &[UserId],
        before: u64,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        let conn = self.shared.topology.commands();
        self.bounded(control::revoke(&conn, users, before, ttl))
            .await
    }

    /// The revocation time of `user`'s JWTs, if any.
    pub(crate) async fn revoked_before(&self, user: UserId) -> Result<Option<u64>, BrokerError> {
        let conn = self.shared.topology.commands();
        self.bounded(control::revoked_before(&conn, user)).await
    }

    /// Connections of each user over all live nodes.
    pub(crate) async fn presence(
        &self,
        users: &[UserId],
    ) -> Result<Vec<(UserId, u64)>, BrokerError> {
        let conn = self.shared.topology.commands();
        self.bounded(presence::read(&conn, users)).await
    }

    /// `task`, failing with a timeout after the request-path timeout.
    async fn bounded<T>(
        &self,
        task: impl std::future::Future<Output = Result<T, BrokerError>>,
    ) -> Result<T, BrokerError> {
        tokio::time::timeout(self.shared.settings.timeout, task)
            .await
            .map_err(|_| BrokerError::Timeout)?
    }

    /// Events of `user` after `since`, from Redis history.
    pub(crate) async fn replay(&self, user: UserId, since: &str) -> Replay {
        match &self.shared.history {
            Some(history) => history.replay(user, since).await,
            None => Replay::Resync {
                reason: "history_off",
                latest: None,
            },
        }
    }

    /// `Ok` while subscribed and the self-probe comes back in time; otherwise why not.
    pub(crate) fn readiness(&self) -> Result<(), &'static str> {
        if !self.shared.state.is_subscribed() {
            return Err("redis_not_subscribed");
        }
        if !self.shared.probe_fresh() {
            return Err("redis_probe_stale");
        }
        Ok(())
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

    fn connections_changed(&self, user: UserId, count: usize) {
        // The writer lives as long as the broker.
        let _ = self.presence_tx.send((user, count));
    }
}
