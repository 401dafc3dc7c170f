//! Which Redis the broker talks to: one standalone server or a Redis Cluster. The layers above
//! see the same things either way: a command connection ([`RedisConn`]) and a list of pub/sub
//! links, each serving some users (all of them on a standalone server, the users whose gateway
//! channel's slot it owns on a cluster).

use std::time::Duration;

use gleepost_event::keys::{slot_of, user_channel};
use gleepost_event::RedisConn;
use redis::ConnectionInfo;

use super::cluster::{Cluster, Shard};
use super::pubsub::{PubSubConn, PubSubError};
use super::standalone::Standalone;
use crate::broker::BrokerError;
use crate::registry::UserId;

/// The Redis deployment.
pub(super) enum Topology {
    /// `REDIS_URL`.
    Standalone(Standalone),
    /// `REDIS_CLUSTER_URLS`.
    Cluster(Cluster),
}

/// Where one pub/sub connection goes and what it serves.
#[derive(Clone, Debug)]
pub(super) struct LinkSpec {
    /// Connection settings.
    pub(super) info: ConnectionInfo,
    /// Slots served (cluster: the gateway channels are shard channels, `SSUBSCRIBE`d on their
    /// slot's owner); `None` for a standalone server (classic `SUBSCRIBE`, every user).
    pub(super) shard: Option<Shard>,
}

impl Topology {
    /// A standalone server at `url`.
    pub(super) fn standalone(url: &str, timeout: Duration) -> Result<Self, BrokerError> {
        Ok(Topology::Standalone(Standalone::new(url, timeout)?))
    }

    /// A cluster reached through `seeds`.
    pub(super) fn cluster(seeds: &[String], timeout: Duration) -> Result<Self, BrokerError> {
        Ok(Topology::Cluster(Cluster::new(seeds, timeout)?))
    }

    /// The shared command connection.
    pub(super) fn commands(&self) -> RedisConn {
        match self {
            Topology::Standalone(s) => s.commands(),
            Topology::Cluster(c) => c.commands(),
        }
    }

    /// The pub/sub links to open now (a cluster: one per primary, from the current slot map).
    pub(super) async fn links(&self) -> Result<Vec<LinkSpec>, PubSubError> {
        match self {
            Topology::Standalone(s) => Ok(vec![LinkSpec {
                info: s.info().clone(),
                shard: None,
            }]),
            Topology::Cluster(c) => {
                let shards = c
                    .shards()
                    .await
                    .map_err(|e| PubSubError::Server(e.to_string()))?;
                Ok(shards
                    .into_iter()
                    .map(|shard| LinkSpec {
                        info: c.node_info(&shard),
                        shard: Some(shard),
                    })
                    .collect())
            }
        }
    }
}

impl LinkSpec {
    /// Open the link's pub/sub connection, named `name`.
    pub(super) async fn connect(&self, name: &str) -> Result<PubSubConn, PubSubError> {
        PubSubConn::connect(&self.info, name).await
    }

    /// True when this link serves `user` (its gateway channel's slot is here).
    pub(super) fn serves(&self, user: UserId) -> bool {
        match &self.shard {
            None => true,
            Some(shard) => shard.owns(slot_of(user_channel(user).as_bytes())),
        }
    }
}
