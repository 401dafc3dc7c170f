//! Publishing events straight to Redis from Rust backend services.
//!
//! Semantics match the gateway's `POST /v1/publish`: the event is validated once, encoded once,
//! and `PUBLISH`ed to each user's channel (default `c:{id}`) in a single pipeline. Every gateway
//! node subscribed to those channels delivers the payload verbatim to the users' connections.

use std::collections::HashSet;

use redis::aio::ConnectionManager;

use crate::envelope::Event;
use crate::keys::{Template, DEFAULT_PUBLISH_CHANNEL};
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PublishReport {
    /// Number of distinct users the event was published to.
    pub users: usize,
    /// Sum of the `PUBLISH` replies: how many subscriptions (gateway nodes) received it. Zero
    /// means no node currently has a subscription for any of the users.
    pub receivers: u64,
}

/// Publishes events to users through Redis. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct Publisher {
    conn: ConnectionManager,
    channel: Template,
    limits: Limits,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("channel", &self.channel.as_str())
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
            channel: default_channel(),
            limits: Limits::default(),
        }
    }

    /// Sets the channel template (default `c:{id}`; use `n:{id}` for notifications). A `{token}`
    /// placeholder in it would render as empty; use [`Template::parse_channel`] to reject it.
    pub fn with_channel(mut self, channel: Template) -> Publisher {
        self.channel = channel;
        self
    }

    /// Sets the validation limits (default [`Limits::default`], 64 KiB).
    pub fn with_limits(mut self, limits: Limits) -> Publisher {
        self.limits = limits;
        self
    }

    /// The channel template in use.
    pub fn channel(&self) -> &Template {
        &self.channel
    }

    /// Validates and encodes `event` once, then sends one `PUBLISH` per distinct user in a
    /// single pipeline. Duplicate ids in `users` are published to once. An empty `users` list
    /// validates the event and returns an empty report without contacting Redis.
    pub async fn publish(
        &self,
        users: &[u64],
        event: &Event,
    ) -> Result<PublishReport, PublishError> {
        validate(event, &self.limits)?;
        let payload = event.encode();
        let mut seen = HashSet::with_capacity(users.len());
        let mut pipe = redis::pipe();
        for &user in users {
            if seen.insert(user) {
                pipe.cmd("PUBLISH")
                    .arg(self.channel.render_id(user))
                    .arg(payload.as_ref());
            }
        }
        if seen.is_empty() {
            return Ok(PublishReport::default());
        }
        let mut conn = self.conn.clone();
        let replies: Vec<u64> = pipe.query_async(&mut conn).await?;
        Ok(PublishReport {
            users: seen.len(),
            receivers: replies.iter().sum(),
        })
    }
}

fn default_channel() -> Template {
    match Template::parse(DEFAULT_PUBLISH_CHANNEL) {
        Ok(t) => t,
        // The default is a constant known to be a valid template (covered by a unit test).
        Err(e) => unreachable!("default channel template is invalid: {e}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_channel_parses() {
        assert_eq!(super::default_channel().render_id(9), "c:9");
    }
}
