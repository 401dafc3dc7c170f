//! Publishing events straight to Redis from Rust backend services.
//!
//! Semantics match the gateway's `POST /v1/publish`: the event is validated once, encoded once,
//! and sent to each user's gateway channel ([`user_channel`], `gp:user:{<id>}`) in a single
//! pipeline. With history on (the
//! default) each user's copy goes through [`PUBLISH_SCRIPT`], which appends it to the user's
//! history and publishes it with its id atomically; with history off it is a plain `PUBLISH`.
//! Every gateway node subscribed to those channels delivers the payload verbatim. (Legacy
//! backends keep publishing raw JSON to `c:<id>` / `n:<id>`; those payloads carry no ids.)

use std::collections::HashSet;

use redis::Script;

use redis::aio::ConnectionManager;

use crate::envelope::Event;
use crate::history::{new_epoch, HistoryConfig, PUBLISH_SCRIPT};
use crate::keys::{epoch_key, history_key, user_channel};
use crate::validate::{validate, Limits, ValidationError};

/// Error returned by [`Publisher`].
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The event failed validation; nothing was published.
    #[error("invalid event: {0}")]
    Invalid(#[from] ValidationError),
    /// Connecting to or talking to Redis failed. When a pipeline fails, some users may already
    /// have received the event.
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Outcome of [`Publisher::publish`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublishReport {
    /// Number of distinct users the event was published to.
    pub users: usize,
    /// Sum of the `PUBLISH` replies: how many subscriptions (gateway nodes) received it. Zero
    /// means no node currently has a subscription for any of the users.
    pub receivers: u64,
    /// `(user, event id)` for each user, when history is on.
    pub ids: Vec<(u64, String)>,
}

/// Publishes events to users through Redis. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct Publisher {
    conn: ConnectionManager,
    limits: Limits,
    history: HistoryConfig,
    script: Script,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// Connects to Redis (`redis://host:port/db`, `rediss://…`, `unix://…`). The connection is
    /// re-established automatically after failures.
    pub async fn connect(redis_url: &str) -> Result<Publisher, PublishError> {
        let client = redis::Client::open(redis_url)?;
        let conn = ConnectionManager::new(client).await?;
        Ok(Publisher::from_manager(conn))
    }

    /// Wraps an existing connection manager (e.g. one shared with other code).
    pub fn from_manager(conn: ConnectionManager) -> Publisher {
        Publisher {
            conn,
            limits: Limits::default(),
            history: HistoryConfig::default(),
            script: Script::new(PUBLISH_SCRIPT),
        }
    }

    /// Sets the validation limits (default [`Limits::default`], 64 KiB).
    pub fn with_limits(mut self, limits: Limits) -> Publisher {
        self.limits = limits;
        self
    }

    /// Sets the per-user history (default on: 1,000 events, 24 h). [`HistoryConfig::OFF`] sends
    /// plain `PUBLISH`es: such events carry no id and cannot be recovered after a disconnect.
    pub fn with_history(mut self, history: HistoryConfig) -> Publisher {
        self.history = history;
        self
    }

    /// The channel `user`'s events are published to (`gp:user:{<id>}`).
    pub fn channel(&self, user: u64) -> String {
        user_channel(user)
    }

    /// Validates and encodes `event` once, then publishes it to each distinct user in a single
    /// pipeline (duplicate ids in `users` are published to once). An empty `users` list
    /// validates the event and returns an empty report without contacting Redis.
    ///
    /// If the pipeline fails part way, some users may already have the event.
    pub async fn publish(
        &self,
        users: &[u64],
        event: &Event,
    ) -> Result<PublishReport, PublishError> {
        validate(event, &self.limits)?;
        Ok(self.publish_encoded(users, &event.encode()).await?)
    }

    /// Publishes an already validated and encoded envelope (as produced by [`Event::encode`],
    /// without an `id`). Used by the gateway, which validates and encodes once per request.
    pub async fn publish_encoded(
        &self,
        users: &[u64],
        payload: &[u8],
    ) -> Result<PublishReport, redis::RedisError> {
        let mut seen = HashSet::with_capacity(users.len());
        let distinct: Vec<u64> = users.iter().copied().filter(|u| seen.insert(*u)).collect();
        if distinct.is_empty() {
            return Ok(PublishReport::default());
        }
        if !self.history.enabled() {
            let mut pipe = redis::pipe();
            for &user in &distinct {
                pipe.cmd("PUBLISH").arg(user_channel(user)).arg(payload);
            }
            let mut conn = self.conn.clone();
            let replies: Vec<u64> = pipe.query_async(&mut conn).await?;
            return Ok(PublishReport {
                users: distinct.len(),
                receivers: replies.iter().sum(),
                ids: Vec::new(),
            });
        }
        let replies = match self.publish_with_history(&distinct, payload).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // Script cache empty (restart, SCRIPT FLUSH): nothing ran; load and retry.
                let mut conn = self.conn.clone();
                self.script.prepare_invoke().load_async(&mut conn).await?;
                self.publish_with_history(&distinct, payload).await?
            }
            other => other?,
        };
        let receivers = replies.iter().map(|(_, r)| *r).sum();
        let ids = distinct
            .iter()
            .zip(replies)
            .map(|(&user, (id, _))| (user, id))
            .collect();
        Ok(PublishReport {
            users: distinct.len(),
            receivers,
            ids,
        })
    }

    async fn publish_with_history(
        &self,
        users: &[u64],
        payload: &[u8],
    ) -> Result<Vec<(String, u64)>, redis::RedisError> {
        let epoch = new_epoch();
        let ttl = self.history.ttl.as_secs().max(1);
        let mut pipe = redis::pipe();
        for &user in users {
            pipe.cmd("EVALSHA")
                .arg(self.script.get_hash())
                .arg(2)
                .arg(history_key(user))
                .arg(epoch_key(user))
                .arg(user_channel(user))
                .arg(payload)
                .arg(self.history.size)
                .arg(ttl)
                .arg(&epoch);
        }
        let mut conn = self.conn.clone();
        pipe.query_async(&mut conn).await
    }
}
