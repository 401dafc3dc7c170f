//! Publishing events straight to Redis from Rust backend services.
//!
//! Semantics match the gateway's `POST /v1/publish` (except that duplicate user ids are
//! published to once, where the API answers 400): the event is validated once, encoded once,
//! and sent to each user's gateway channel ([`user_channel`], `gp:user:{<id>}`) in a single
//! pipeline. With history on (the
//! default) each user's copy goes through [`PUBLISH_SCRIPT`], which appends it to the user's
//! history and publishes it with its id atomically; with history off it is a plain `PUBLISH`.
//! Every gateway node subscribed to those channels delivers the payload verbatim. (Legacy
//! backends keep publishing raw JSON to `c:<id>` / `n:<id>`; those payloads carry no ids.)

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::batcher::{Batcher, Settings};
use crate::conn::RedisConn;
use crate::envelope::Event;
use crate::history::HistoryConfig;
use crate::keys::user_channel;
use crate::single::SingleConn;
use crate::validate::{validate, Limits, ValidationError};

/// Error returned by [`Publisher`].
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The event failed validation; nothing was published.
    #[error("invalid event")]
    Invalid(#[from] ValidationError),
    /// The first connection to Redis failed (`address`: host and port of the server or of the
    /// cluster's seeds, without credentials).
    #[error("connecting to Redis at {address}")]
    Connect {
        /// Where the connection was tried.
        address: String,
        /// Why it failed.
        source: redis::RedisError,
    },
    /// Talking to Redis failed. When a pipeline fails, some users may already have received
    /// the event.
    #[error("Redis")]
    Redis(#[from] redis::RedisError),
}

/// Outcome of [`Publisher::publish`]. Check [`PublishReport::failed`]: a publish that reached
/// Redis may be refused for some users only.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublishReport {
    /// Number of distinct users the event was published to (not counting `failed`).
    pub users: usize,
    /// Sum of the `PUBLISH` replies: how many subscriptions (gateway nodes) received it. Zero
    /// means no node currently has a subscription for any of the users.
    pub receivers: u64,
    /// `(user, event id)` for each user, when history is on.
    pub ids: Vec<(u64, String)>,
    /// `(user, receivers)` for each user: how many subscriptions (gateway nodes) received the
    /// user's copy; 0 means no node held a connection of that user.
    pub online: Vec<(u64, u64)>,
    /// `(user, Redis's error)` for each user whose copy Redis refused, with history on: the
    /// user's own keys answered with an error (e.g. `WRONGTYPE`: a key holding something
    /// else), or Redis refused the script call of that user (e.g. `OOM`). That copy was not
    /// published (it may have been stored in the user's history); the others were.
    pub failed: Vec<(u64, String)>,
}

/// Publishes events to users through Redis. Cheap to clone; clones share one connection.
///
/// With history on, concurrent publishes of one publisher (and its clones) share Redis calls:
/// the first publish starts a task on the current Tokio runtime that sends what is queued as
/// a few script calls per round trip (see the `batcher` module); per user, events keep the
/// order they were published in.
#[derive(Clone)]
pub struct Publisher {
    conn: RedisConn,
    limits: Limits,
    history: HistoryConfig,
    /// Replicas that must acknowledge each publish (`WAIT`), and how long to wait for them.
    replicas: Option<(u32, Duration)>,
    /// The group-commit task of history publishes, started by the first one.
    batcher: Arc<OnceLock<Batcher>>,
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
        let info = redis::IntoConnectionInfo::into_connection_info(redis_url)?
            .set_tcp_settings(crate::conn::tcp_settings());
        let client = redis::Client::open(info)?;
        let address = client.get_connection_info().addr().to_string();
        let config = ConnectionManagerConfig::new();
        let conn = ConnectionManager::new_with_config(client.clone(), config.clone())
            .await
            .map_err(|source| PublishError::Connect { address, source })?;
        let conn = SingleConn::from_parts(conn, client, config);
        Ok(Publisher::from_conn(RedisConn::Single(conn)))
    }

    /// Connects to a Redis Cluster through its seed nodes (`redis://[user:pass@]host:port`):
    /// each user's event goes to its slot's owner, published with `SPUBLISH` to the user's
    /// gateway channel by the same script that appends it to the history.
    pub async fn connect_cluster(seed_urls: &[String]) -> Result<Publisher, PublishError> {
        let client = redis::cluster::ClusterClientBuilder::new(seed_urls.to_vec())
            .tcp_settings(crate::conn::tcp_settings())
            .build()?;
        let address = seed_urls
            .iter()
            .map(
                |url| match redis::IntoConnectionInfo::into_connection_info(url.as_str()) {
                    Ok(info) => info.addr().to_string(),
                    Err(_) => "?".to_string(),
                },
            )
            .collect::<Vec<_>>()
            .join(", ");
        let conn = client
            .get_async_connection()
            .await
            .map_err(|source| PublishError::Connect { address, source })?;
        Ok(Publisher::from_conn(RedisConn::Cluster(conn)))
    }

    /// Connects to the primary of `master` through its sentinels (`redis://[user:pass@]host:port`);
    /// `node` carries the data nodes' credentials. The publisher follows failovers: it asks the
    /// sentinels again when the primary fails or answers `READONLY`.
    pub async fn connect_sentinel(
        sentinel_urls: &[String],
        master: &str,
        node: redis::RedisConnectionInfo,
        timeout: Duration,
    ) -> Result<Publisher, PublishError> {
        let conn = crate::sentinel::SentinelConn::new(sentinel_urls, master, node, timeout)?;
        conn.primary_addr().await?;
        Ok(Publisher::from_conn(RedisConn::Sentinel(conn)))
    }

    /// Wraps an existing connection manager (e.g. one shared with other code).
    pub fn from_manager(conn: ConnectionManager) -> Publisher {
        Publisher::from_conn(RedisConn::Single(SingleConn::from_manager(conn)))
    }

    /// Wraps an existing standalone or cluster connection.
    pub fn from_conn(conn: RedisConn) -> Publisher {
        Publisher {
            conn,
            limits: Limits::default(),
            history: HistoryConfig::default(),
            replicas: None,
            batcher: Arc::new(OnceLock::new()),
        }
    }

    /// After each publish, wait (Redis `WAIT`) until `replicas` replicas of every written node
    /// acknowledged it, at most `timeout`; fewer acknowledgements fail the publish (the event
    /// may still be delivered: it was written to the primary). 0 (the default) does not wait:
    /// an event acknowledged just before its primary dies may then be lost (clients get
    /// `resync`, never a silent gap).
    pub fn with_replicas(mut self, replicas: u32, timeout: Duration) -> Publisher {
        self.replicas = (replicas > 0).then_some((replicas, timeout));
        self.batcher = Arc::new(OnceLock::new());
        self
    }

    /// Sets the validation limits (default [`Limits::default`], 64 KiB): the limits of an
    /// event as delivered. With history on, [`Publisher::publish`] keeps room in them for the
    /// id ([`Limits::before_id`]).
    pub fn with_limits(mut self, limits: Limits) -> Publisher {
        self.limits = limits;
        self
    }

    /// The limits an event must meet before it is published: room kept for its id when the
    /// history adds one.
    fn event_limits(&self) -> Limits {
        if self.history.enabled() {
            self.limits.before_id()
        } else {
            self.limits
        }
    }

    /// Sets the per-user history (default on: 1,000 events, 24 h). [`HistoryConfig::OFF`] sends
    /// plain `PUBLISH`es: such events carry no id and cannot be recovered after a disconnect.
    pub fn with_history(mut self, history: HistoryConfig) -> Publisher {
        self.history = history;
        self.batcher = Arc::new(OnceLock::new());
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
        validate(event, &self.event_limits())?;
        Ok(self.publish_encoded(users, &event.encode()).await?)
    }

    /// Publishes an already validated and encoded envelope (as produced by [`Event::encode`],
    /// without an `id`, within [`Limits::before_id`] when history is on). Used by the gateway,
    /// which validates and encodes once per request.
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
        if !self.history.enabled() && self.conn.is_cluster() {
            // One slot per command on a cluster: no cross-slot pipeline, one SPUBLISH each.
            let publishes = distinct.iter().map(|&user| {
                let mut conn = self.conn.clone();
                async move {
                    redis::cmd("SPUBLISH")
                        .arg(user_channel(user))
                        .arg(payload)
                        .query_async::<u64>(&mut conn)
                        .await
                }
            });
            let replies = futures_util::future::try_join_all(publishes).await?;
            return Ok(PublishReport {
                users: distinct.len(),
                receivers: replies.iter().sum(),
                ids: Vec::new(),
                online: distinct.iter().copied().zip(replies).collect(),
                failed: Vec::new(),
            });
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
                online: distinct.iter().copied().zip(replies).collect(),
                failed: Vec::new(),
            });
        }
        let batcher = self.batcher.get_or_init(|| {
            Batcher::spawn(Settings {
                conn: self.conn.clone(),
                history: self.history,
                replicas: self.replicas,
            })
        });
        let copies = batcher.publish(distinct.clone(), payload).await?;
        let mut report = PublishReport::default();
        for (user, copy) in distinct.into_iter().zip(copies) {
            match copy {
                Ok((id, receivers)) => {
                    report.users += 1;
                    report.receivers += receivers;
                    report.ids.push((user, id));
                    report.online.push((user, receivers));
                }
                Err(error) => report.failed.push((user, error)),
            }
        }
        Ok(report)
    }
}
