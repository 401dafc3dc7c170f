//! Which Redis the broker talks to: one standalone server, a primary under Sentinel or a Redis
//! Cluster. The layers above see the same things either way: a command connection
//! ([`RedisConn`]) and a list of pub/sub links, each serving some users (all of them on a
//! standalone server or a Sentinel primary, the users whose gateway channel's slot it owns on
//! a cluster), and whether the links must move (a failover, a changed slot map).

use std::collections::HashSet;
use std::time::Duration;

use gleepost_event::keys::{slot_of, user_channel};
use gleepost_event::sentinel::NodeAddr;
use gleepost_event::RedisConn;
use redis::{ConnectionInfo, RedisConnectionInfo};
use tokio::sync::watch;

use super::cluster::{Cluster, Shard};
use super::pubsub::{PubSubConn, PubSubError};
use super::sentinel::Sentinel;
use super::standalone::Standalone;
use crate::broker::BrokerError;
use crate::registry::UserId;

/// The Redis deployment.
pub(super) enum Topology {
    /// `REDIS_URL`.
    Standalone(Standalone),
    /// `REDIS_SENTINEL_URLS` and `REDIS_SENTINEL_MASTER`.
    Sentinel(Sentinel),
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
    /// Under Sentinel: the primary the link is on (it moves when the primary changes).
    pub(super) primary: Option<NodeAddr>,
}

impl Topology {
    /// A standalone server at `url`; `timeout` bounds connecting, `backstop` every response
    /// (each caller bounds its own request more tightly).
    pub(super) fn standalone(
        url: &str,
        timeout: Duration,
        backstop: Duration,
    ) -> Result<Self, BrokerError> {
        Ok(Topology::Standalone(Standalone::new(
            url, timeout, backstop,
        )?))
    }

    /// The primary of `master`, found through `sentinels`.
    pub(super) fn sentinel(
        sentinels: &[String],
        master: &str,
        node: RedisConnectionInfo,
        timeout: Duration,
        backstop: Duration,
    ) -> Result<Self, BrokerError> {
        Ok(Topology::Sentinel(Sentinel::new(
            sentinels, master, node, timeout, backstop,
        )?))
    }

    /// A cluster reached through `seeds`.
    pub(super) fn cluster(seeds: &[String], timeout: Duration) -> Result<Self, BrokerError> {
        Ok(Topology::Cluster(Cluster::new(seeds, timeout)?))
    }

    /// The shared command connection.
    pub(super) fn commands(&self) -> RedisConn {
        match self {
            Topology::Standalone(s) => s.commands(),
            Topology::Sentinel(s) => s.commands(),
            Topology::Cluster(c) => c.commands(),
        }
    }

    /// The pub/sub links to open now (Sentinel: on the primary the sentinels name now; a
    /// cluster: one per primary, from the current slot map).
    pub(super) async fn links(&self) -> Result<Vec<LinkSpec>, PubSubError> {
        match self {
            Topology::Standalone(s) => Ok(vec![LinkSpec {
                info: s.info().clone(),
                shard: None,
                primary: None,
            }]),
            Topology::Sentinel(s) => {
                let (addr, info) = s.link().await?;
                Ok(vec![LinkSpec {
                    info,
                    shard: None,
                    primary: Some(addr),
                }])
            }
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
                        primary: None,
                    })
                    .collect())
            }
        }
    }

    /// True when links can move (Sentinel, cluster): the subscriber checks them periodically.
    pub(super) fn can_move(&self) -> bool {
        !matches!(self, Topology::Standalone(_))
    }

    /// True when `current` no longer matches the deployment: the sentinels name another
    /// primary, or the cluster's slot map changed. A Redis that does not answer is no change
    /// (the probes decide).
    pub(super) async fn moved(&self, current: &[LinkSpec]) -> bool {
        match self {
            Topology::Standalone(_) => false,
            Topology::Sentinel(s) => match current.first().and_then(|l| l.primary.as_ref()) {
                Some(addr) => s.moved_from(addr).await,
                None => false,
            },
            Topology::Cluster(_) => match self.links().await {
                Ok(specs) => !specs
                    .iter()
                    .map(|s| &s.shard)
                    .eq(current.iter().map(|l| &l.shard)),
                Err(_) => false,
            },
        }
    }

    /// The slots being migrated in the cluster of `current`'s shards (none elsewhere).
    pub(super) async fn migrating(&self, current: &[LinkSpec]) -> HashSet<u16> {
        let Topology::Cluster(c) = self else {
            return HashSet::new();
        };
        let shards: Vec<Shard> = current.iter().filter_map(|l| l.shard.clone()).collect();
        c.migrating_slots(&shards).await
    }

    /// Changes of the primary in use (Sentinel only).
    pub(super) fn primary_changes(&self) -> Option<watch::Receiver<Option<NodeAddr>>> {
        match self {
            Topology::Sentinel(s) => Some(s.primary_changes()),
            _ => None,
        }
    }
}

impl LinkSpec {
    /// Open the link's pub/sub connection, named `name`.
    pub(super) async fn connect(&self, name: &str) -> Result<PubSubConn, PubSubError> {
        PubSubConn::connect(&self.info, name).await
    }

    /// The node the link goes to, for logs (`host:port`).
    pub(super) fn name(&self) -> String {
        self.info.addr().to_string()
    }

    /// True when this link serves `user` (its gateway channel's slot is here).
    pub(super) fn serves(&self, user: UserId) -> bool {
        match &self.shard {
            None => true,
            Some(shard) => shard.owns(slot_of(user_channel(user).as_bytes())),
        }
    }
}
