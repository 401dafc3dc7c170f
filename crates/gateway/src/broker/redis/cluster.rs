//! Topology of a Redis Cluster (`REDIS_CLUSTER_URLS`): one cluster command connection (redis-rs
//! routes each keyed command to its slot's owner and follows `MOVED`/`ASK`) and, opened by the
//! subscriber, one pub/sub connection per primary, holding the shard channels of the slots it
//! owns. The slot map is read with `CLUSTER SLOTS` whenever the subscriber (re)connects: after
//! an error, a `MOVED`, an unsolicited `sunsubscribe` (slot migrated, failover) or a periodic
//! check that finds the map changed.

use std::collections::HashSet;
use std::time::Duration;

use gleepost_event::RedisConn;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{ConnectionInfo, IntoConnectionInfo, Value};

use crate::broker::BrokerError;

/// One primary and the slot ranges it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Shard {
    /// `host:port` of the primary.
    pub(super) addr: (String, u16),
    /// Inclusive slot ranges.
    pub(super) slots: Vec<(u16, u16)>,
}

impl Shard {
    /// True when `slot` is served by this shard.
    pub(super) fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
    }
}

/// The connections to a Redis Cluster.
pub(super) struct Cluster {
    /// Seed node settings (credentials are reused for every node).
    seed: ConnectionInfo,
    commands: RedisConn,
}

impl Cluster {
    /// Parse the seed URLs; nothing is connected yet (the command connection connects in the
    /// background and on use). `timeout` bounds connecting and every response: unlike the
    /// other topologies' backstop, because redis-rs's cluster connection retries a command
    /// itself (after a failover, a slot move) for as long as its response timeout allows, and a
    /// publish its caller had given up on (answered 503) ran seconds later, after newer
    /// events of the same user (seen out of order in `cluster_faults`).
    pub(super) fn new(seeds: &[String], timeout: Duration) -> Result<Self, BrokerError> {
        let infos = seeds
            .iter()
            .map(|s| s.as_str().into_connection_info())
            .collect::<Result<Vec<_>, _>>()?;
        let seed = infos.first().cloned().ok_or(BrokerError::NoSeeds)?;
        let client: ClusterClient = ClusterClientBuilder::new(infos)
            .tcp_settings(gleepost_event::tcp_settings())
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .build()?;
        let config = redis::cluster::ClusterConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout);
        let commands = client.get_pending_async_connection_with_config(config);
        Ok(Cluster {
            seed,
            commands: RedisConn::Cluster(commands),
        })
    }

    /// The shared cluster command connection.
    pub(super) fn commands(&self) -> RedisConn {
        self.commands.clone()
    }

    /// The primaries and their slots, from `CLUSTER SLOTS`.
    pub(super) async fn shards(&self) -> Result<Vec<Shard>, redis::RedisError> {
        let mut conn = self.commands.clone();
        let reply: Value = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut conn)
            .await?;
        parse_slots(reply).ok_or_else(|| {
            redis::RedisError::from((redis::ErrorKind::Parse, "unexpected CLUSTER SLOTS reply"))
        })
    }

    /// The slots that any of `shards` is migrating or importing (each node lists only its own,
    /// on its `myself` line of `CLUSTER NODES`). A node that does not answer adds none.
    pub(super) async fn migrating_slots(&self, shards: &[Shard]) -> HashSet<u16> {
        let RedisConn::Cluster(conn) = &self.commands else {
            return HashSet::new();
        };
        let asks = shards.iter().map(|shard| {
            let mut conn = conn.clone();
            let (host, port) = shard.addr.clone();
            async move {
                let node = SingleNodeRoutingInfo::ByAddress { host, port };
                let reply = conn
                    .route_command(
                        redis::cmd("CLUSTER").arg("NODES").clone(),
                        RoutingInfo::SingleNode(node),
                    )
                    .await;
                match reply {
                    Ok(Value::BulkString(text)) => own_migrations(&String::from_utf8_lossy(&text)),
                    Ok(Value::VerbatimString { text, .. }) => own_migrations(&text),
                    _ => Vec::new(),
                }
            }
        });
        futures_util::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Connection settings of a node: its address with the seeds' credentials.
    pub(super) fn node_info(&self, shard: &Shard) -> ConnectionInfo {
        let (host, port) = &shard.addr;
        self.seed
            .clone()
            .set_addr(redis::ConnectionAddr::Tcp(host.clone(), *port))
    }
}

/// The slots a node migrates or imports, from its `CLUSTER NODES`: the `[<slot>->-<id>]` and
/// `[<slot>-<-<id>]` entries of its `myself` line.
fn own_migrations(nodes: &str) -> Vec<u16> {
    let Some(myself) = nodes.lines().find(|l| {
        l.split(' ')
            .nth(2)
            .is_some_and(|f| f.split(',').any(|f| f == "myself"))
    }) else {
        return Vec::new();
    };
    myself
        .split(' ')
        .skip(8)
        .filter_map(|entry| {
            let entry = entry.strip_prefix('[')?;
            let (slot, _) = entry.split_once('-')?;
            slot.parse().ok()
        })
        .collect()
}

/// `CLUSTER SLOTS`: `[[start, end, [host, port, id, …], replicas…], …]`, grouped by primary.
fn parse_slots(reply: Value) -> Option<Vec<Shard>> {
    let Value::Array(ranges) = reply else {
        return None;
    };
    let mut shards: Vec<Shard> = Vec::new();
    for range in ranges {
        let Value::Array(items) = range else {
            return None;
        };
        let mut it = items.into_iter();
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(node))) =
            (it.next(), it.next(), it.next())
        else {
            return None;
        };
        let mut node = node.into_iter();
        let host = match node.next()? {
            Value::BulkString(b) => String::from_utf8(b).ok()?,
            Value::SimpleString(s) => s,
            _ => return None,
        };
        let Some(Value::Int(port)) = node.next() else {
            return None;
        };
        let addr = (host, u16::try_from(port).ok()?);
        let range = (u16::try_from(start).ok()?, u16::try_from(end).ok()?);
        match shards.iter_mut().find(|s| s.addr == addr) {
            Some(shard) => shard.slots.push(range),
            None => shards.push(Shard {
                addr,
                slots: vec![range],
            }),
        }
    }
    for shard in &mut shards {
        shard.slots.sort_unstable();
    }
    shards.sort_by(|a, b| a.addr.cmp(&b.addr));
    Some(shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(host.into()),
            Value::Int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    #[test]
    fn slots_group_by_primary() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("127.0.0.1", 7001),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(10922),
                node("127.0.0.1", 7002),
                node("127.0.0.1", 7005),
            ]),
            Value::Array(vec![
                Value::Int(10923),
                Value::Int(16383),
                node("127.0.0.1", 7001),
            ]),
        ]);
        let shards = parse_slots(reply).unwrap();
        assert_eq!(shards.len(), 2);
        assert_eq!(shards[0].slots, vec![(0, 5460), (10923, 16383)]);
        assert!(shards[0].owns(16383) && !shards[0].owns(5461));
        assert!(shards[1].owns(5461));
        assert_eq!(parse_slots(Value::Int(1)), None);
    }

    #[test]
    fn a_node_lists_its_own_migrating_and_importing_slots() {
        let nodes = "\
a1 127.0.0.1:7001@17001 master - 0 0 1 connected 0-5460
b2 127.0.0.1:7002@17002 myself,master - 0 0 2 connected 5461-10922 [5798->-a1] [12000-<-c3]
c3 127.0.0.1:7003@17003 master - 0 0 3 connected 10923-16383 [9->-b2]
";
        assert_eq!(own_migrations(nodes), vec![5798, 12000]);
        assert_eq!(
            own_migrations("a1 127.0.0.1:7001@17001 master - 0 0 1 connected 0-5460"),
            Vec::<u16>::new()
        );
    }
}
