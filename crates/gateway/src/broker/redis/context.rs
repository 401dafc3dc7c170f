//! What the Redis broker's tasks share: settings, the topology's connections, the dispatcher
//! into the registry, the publisher, the history reader and the link [`State`].

use std::time::Duration;

use gleepost_event::keys::Template;
use gleepost_event::{HistoryConfig, Limits, Publisher};

use super::history::RedisHistory;
use super::standalone::Standalone;
use super::state::State;
use crate::broker::Dispatcher;

/// Settings of the Redis broker.
#[derive(Clone, Debug)]
pub(crate) struct RedisSettings {
    /// `redis://…` URL.
    pub(crate) url: String,
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
}

/// Shared by the broker handle, the subscriber task and the probe task.
pub(super) struct Context {
    pub(super) settings: RedisSettings,
    pub(super) topology: Standalone,
    pub(super) dispatcher: Dispatcher,
    /// The node's private probe channel.
    pub(super) probe_channel: String,
    /// Publishes (with history when enabled).
    pub(super) publisher: Publisher,
    /// History reader (None when history is off).
    pub(super) history: Option<RedisHistory>,
    pub(super) state: State,
}

impl Context {
    /// True when a probe came back within the probe timeout.
    pub(super) fn probe_fresh(&self) -> bool {
        self.state.probe_fresh(self.settings.probe_timeout)
    }

    /// The longest wait for a pub/sub connect or command round (a Redis that stops answering
    /// must not wedge the subscriber).
    pub(super) fn pubsub_limit(&self) -> Duration {
        self.settings.timeout * 5
    }
}
