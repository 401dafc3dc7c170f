//! What the Redis broker's tasks share: settings, the topology's connections, the dispatcher
//! into the registry, the publisher, the history reader and the link [`State`].

use std::time::Duration;

use gleepost_event::keys::Template;
use gleepost_event::{HistoryConfig, Limits, Publisher};

use super::history::RedisHistory;
use super::state::State;
use super::topology::Topology;
use crate::broker::Dispatcher;

/// A pub/sub round (connect, subscribe, resubscribe) may take this many Redis command timeouts
/// (`--redis-timeout`) before it is abandoned; a new user's subscription is waited for as long.
pub(crate) const PUBSUB_TIMEOUT_FACTOR: u32 = 5;

/// Which Redis deployment.
#[derive(Clone, Debug)]
pub(crate) enum RedisTarget {
    /// One server: a `redis://…` or `unix://…` URL.
    Standalone(String),
    /// A primary under Sentinel.
    Sentinel {
        /// The sentinels' URLs `redis://[user:pass@]host:port` (their own credentials).
        sentinels: Vec<String>,
        /// The monitored master name.
        master: String,
        /// The data nodes' credentials and database.
        node: redis::RedisConnectionInfo,
    },
    /// A Redis Cluster: seed URLs `redis://[user:pass@]host:port`.
    Cluster(Vec<String>),
}

/// Settings of the Redis broker.
#[derive(Clone, Debug)]
pub(crate) struct RedisSettings {
    /// Where Redis is.
    pub(crate) target: RedisTarget,
    /// Legacy channel templates of a user (raw payloads of existing backends, delivered
    /// verbatim); the publish API and `Publisher` use the user's gateway channel
    /// (`gleepost_event::keys::user_channel`), the only one whose event ids are trusted.
    pub(crate) channels: Vec<Template>,
    /// Timeout of request-path commands (publish, token check) and of connecting.
    pub(crate) timeout: Duration,
    /// Interval of the self-probe.
    pub(crate) probe_interval: Duration,
    /// Unready (and reconnect) when no probe came back within this time.
    pub(crate) probe_timeout: Duration,
    /// Limits applied to payloads arriving on channels.
    pub(crate) limits: Limits,
    /// Per-user history written by publishes.
    pub(crate) history: HistoryConfig,
    /// Most events replayed on one resume or repair.
    pub(crate) max_replay: usize,
    /// Most bytes of events one history read returns: a replay is the connection's own copy
    /// of its events.
    pub(crate) max_replay_bytes: usize,
    /// Replicas that must acknowledge each publish (`WAIT`) before the API answers 200.
    pub(crate) publish_replicas: u32,
    /// Most recipients of one publish request (its wait is the longest a command may take).
    pub(crate) max_publish_users: usize,
}

impl RedisSettings {
    /// How long a publish to `users` may take: the script, then (with `--publish-replicas`) a
    /// `WAIT` of up to one more timeout; one more timeout per started 1,000 users beyond the
    /// first (a 10,000-user pipeline takes Redis most of a second: a bound that ignores its
    /// size answers 503 for a publish most users already got).
    pub(super) fn publish_limit(&self, users: usize) -> Duration {
        let rounds = 1 + u32::from(self.publish_replicas > 0);
        let size = u32::try_from(users.saturating_sub(1) / 1000).unwrap_or(u32::MAX);
        self.timeout * rounds.saturating_add(size)
    }

    /// How long a history read may take. Bounded like subscriptions, not like publishes: a
    /// resume storm (a drained node's clients all resuming here) queues a thousand reads on the
    /// one command connection, and one that misses a publish-sized bound becomes a `resync`
    /// (`unavailable`) where the events were there to replay.
    pub(super) fn history_limit(&self) -> Duration {
        self.timeout * PUBSUB_TIMEOUT_FACTOR
    }

    /// The command connection's own response timeout (standalone, Sentinel): a backstop
    /// behind every caller's bound (each request is bounded where it is made), as long as the
    /// longest of them. At the request timeout itself it cut history reads and large publishes
    /// short (a 503 for a publish Redis ran), and under Sentinel a slow read dropped a healthy
    /// primary. A cluster keeps the request timeout (`cluster.rs` says why).
    pub(super) fn response_backstop(&self) -> Duration {
        self.history_limit()
            .max(self.publish_limit(self.max_publish_users))
    }
}

/// Shared by the broker handle, the subscriber task and the probe task.
pub(super) struct Context {
    pub(super) settings: RedisSettings,
    pub(super) topology: Topology,
    pub(super) dispatcher: Dispatcher,
    /// The node's private probe channel (the base name of each link's probe channel).
    pub(super) probe_channel: String,
    /// The probe channels of the current links (set by the subscriber, read by the probe).
    pub(super) probe_targets: std::sync::Mutex<Vec<String>>,
    /// Publishes (with history when enabled).
    pub(super) publisher: Publisher,
    /// History reader (None when history is off).
    pub(super) history: Option<RedisHistory>,
    pub(super) state: State,
}

impl Context {
    /// The current links' probe channels.
    pub(super) fn probe_targets(&self) -> Vec<String> {
        self.probe_targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replace the probe channels (a new set of links).
    pub(super) fn set_probe_targets(&self, targets: Vec<String>) {
        *self.probe_targets.lock().unwrap_or_else(|p| p.into_inner()) = targets;
    }

    /// True when a probe came back within the probe timeout.
    pub(super) fn probe_fresh(&self) -> bool {
        self.state.probe_fresh(self.settings.probe_timeout)
    }

    /// This node's name in Redis (`CLIENT SETNAME gleepost-gateway-<name>-…`): its probe
    /// channel's unique part.
    pub(super) fn node_name(&self) -> &str {
        self.probe_channel
            .strip_prefix(gleepost_event::keys::PROBE_CHANNEL_PREFIX)
            .unwrap_or(&self.probe_channel)
    }

    /// The longest wait for a pub/sub connect or command round (a Redis that stops answering
    /// must not wedge the subscriber).
    pub(super) fn pubsub_limit(&self) -> Duration {
        self.settings.timeout * PUBSUB_TIMEOUT_FACTOR
    }
}
