//! The Redis connection behind a [`crate::Publisher`] (and the gateway's commands): one server
//! through a reconnecting [`SingleConn`], the primary under Sentinel through
//! [`SentinelConn`] (which follows failovers), or a Redis Cluster through redis-rs's cluster
//! connection, which routes every keyed command (scripts included) to its slot's owner and
//! follows `MOVED`/`ASK`.

use redis::aio::ConnectionLike;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::sentinel::SentinelConn;
use crate::single::SingleConn;

/// TCP settings of every Redis connection this crate and the gateway open: `TCP_NODELAY` on
/// (redis-rs leaves Nagle's algorithm on), so that a pipeline sent while the previous one is
/// still unanswered (the publish batcher keeps two on the wire) leaves at once instead of
/// waiting for the previous segment's ACK.
pub fn tcp_settings() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

/// A connection to a standalone Redis, a Sentinel-monitored primary or a Redis Cluster. Cheap
/// to clone.
#[derive(Clone)]
pub enum RedisConn {
    /// One Redis server (reconnects by itself).
    Single(SingleConn),
    /// The primary of a Sentinel-monitored master (moves to the new primary on failover).
    Sentinel(SentinelConn),
    /// A Redis Cluster (slot map refreshed on `MOVED` and errors).
    Cluster(ClusterConnection),
}

impl RedisConn {
    /// True for a cluster: pipelines must stay within one slot, and pub/sub of the gateway's
    /// channels is sharded (`SPUBLISH`).
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }

    /// The command that publishes to a user's gateway channel: `SPUBLISH` on a cluster (the
    /// message stays within the slot's shard), `PUBLISH` otherwise.
    pub fn publish_command(&self) -> &'static str {
        if self.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Sentinel(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Sentinel(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}
