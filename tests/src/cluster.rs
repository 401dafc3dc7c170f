//! A private Redis Cluster per test: `redis-server --cluster-enabled yes` processes on free
//! loopback ports, each in its own directory (for `nodes.conf`), formed by hand (slot ranges,
//! `CLUSTER MEET`, `CLUSTER REPLICATE`), with a short `cluster-node-timeout` so failovers take
//! a few seconds. Killed on drop, like [`RedisServer`].
//!
//! Topology questions ([`RedisCluster::primaries`], [`RedisCluster::owner_of_slot`], …) are
//! answered from a live node's `CLUSTER NODES`, so they stay true after migrations and
//! failovers; the operations that change the topology return once every running node agrees.

mod faults;
mod health;
mod reshard;
mod routing;
mod shard_sub;
mod slot;
mod topology;
mod users;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use futures_util::future::try_join_all;
use redis::aio::MultiplexedConnection;

pub use reshard::Migration;
pub use shard_sub::{ShardPush, ShardSubscriber};
pub use slot::{slot_of, SLOTS};
pub use topology::ClusterNode;

use crate::eventually;
use crate::redis::Launch;
use crate::RedisServer;
use topology::View;

/// `cluster-node-timeout` of every node: a dead primary is failed over ~2–3 s after it died.
pub const NODE_TIMEOUT_MS: u64 = 1000;
/// How long forming, settling after a change, and a failover may take at most.
const SETTLE: Duration = Duration::from_secs(30);
/// Client ports are drawn from here; bus ports (+10000) then lie in 25000..=32767. Both ranges
/// are below Linux's ephemeral range (32768..), where [`crate::free_port`] and outgoing
/// connections take their ports, and below 55535 as the bus port requires.
const PORTS: std::ops::RangeInclusive<u16> = 15000..=22767;

/// A running Redis Cluster (see the module documentation).
pub struct RedisCluster {
    nodes: Vec<Member>,
    /// The first `started_primaries` nodes were started as primaries.
    started_primaries: usize,
    /// Harness connections per port (routing, migration).
    conns: Mutex<HashMap<u16, MultiplexedConnection>>,
    /// Slot → port of its owner, as last learnt from a reply or a `MOVED`.
    routes: Mutex<HashMap<u16, u16>>,
    /// Primaries killed by [`RedisCluster::kill_primary`]: their slots and replica ids.
    killed: Mutex<HashMap<String, faults::Killed>>,
}

struct Member {
    server: RedisServer,
    id: String,
    /// Killed by the harness (and not restarted).
    down: AtomicBool,
}

/// A lock that a panicking holder cannot poison for the others (plain maps inside).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A client port in [`PORTS`] whose bus port is free too (both bound, then released).
fn free_cluster_port() -> std::io::Result<u16> {
    let mut last = None;
    for _ in 0..100 {
        let port = rand::random_range(PORTS);
        let client = std::net::TcpListener::bind(("127.0.0.1", port));
        let bus = std::net::TcpListener::bind(("127.0.0.1", port + 10000));
        match (client, bus) {
            (Ok(_), Ok(_)) => return Ok(port),
            (Err(e), _) | (_, Err(e)) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no port tried")))
}

fn node_launch() -> Launch {
    let args = [
        ("--cluster-enabled", "yes".to_owned()),
        ("--cluster-config-file", "nodes.conf".to_owned()),
        ("--cluster-node-timeout", NODE_TIMEOUT_MS.to_string()),
        // A replica fails over however long ago it last heard of its primary.
        ("--cluster-replica-validity-factor", "0".to_owned()),
        // Replicas stay where the harness put them.
        ("--cluster-allow-replica-migration", "no".to_owned()),
        // A replica syncs at once (the default waits 5 s for more replicas to share a transfer).
        ("--repl-diskless-sync-delay", "0".to_owned()),
    ];
    Launch {
        args: args
            .into_iter()
            .flat_map(|(k, v)| [k.to_owned(), v])
            .collect(),
        own_dir: true,
        pick_port: Some(free_cluster_port),
        ..Launch::default()
    }
}

impl RedisCluster {
    /// Start `primaries` primaries (the i-th started owns the i-th of equal slot ranges) with
    /// `replicas_per_primary` replicas each, and wait until every node reports
    /// `cluster_state:ok`, agrees on the slot map and every replica is attached. Fails (never
    /// skips) with the reason when anything cannot start.
    pub async fn start(primaries: usize, replicas_per_primary: usize) -> Result<RedisCluster> {
        ensure!(
            (1..=usize::from(SLOTS)).contains(&primaries),
            "a cluster needs 1..=16384 primaries, not {primaries}"
        );
        let total = primaries * (1 + replicas_per_primary);
        let servers = try_join_all((0..total).map(|_| RedisServer::launch(node_launch())))
            .await
            .context("starting cluster nodes (redis-server --cluster-enabled yes)")?;
        let info: String = servers[0].cmd(&["INFO", "server"]).await?;
        let version = info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("unknown");
        ensure!(
            version
                .split('.')
                .next()
                .and_then(|m| m.parse::<u32>().ok())
                >= Some(7),
            "redis-server {version} found; the cluster harness needs >= 7.0 (sharded pub/sub)"
        );
        let mut nodes = Vec::with_capacity(total);
        for server in servers {
            let id: String = server.cmd(&["CLUSTER", "MYID"]).await?;
            nodes.push(Member {
                server,
                id,
                down: AtomicBool::new(false),
            });
        }
        let cluster = RedisCluster {
            nodes,
            started_primaries: primaries,
            conns: Mutex::default(),
            routes: Mutex::default(),
            killed: Mutex::default(),
        };
        cluster.form(replicas_per_primary).await.with_context(|| {
            format!("forming a cluster of {primaries} primaries × {replicas_per_primary} replicas")
        })?;
        Ok(cluster)
    }

    async fn form(&self, replicas_per_primary: usize) -> Result<()> {
        let nodes = self.nodes();
        let primaries = self.started_primaries;
        for (i, primary) in nodes[..primaries].iter().enumerate() {
            let start = i * usize::from(SLOTS) / primaries;
            let end = (i + 1) * usize::from(SLOTS) / primaries - 1;
            let (start, end) = (start.to_string(), end.to_string());
            self.node_cmd::<()>(primary, &["CLUSTER", "ADDSLOTSRANGE", &start, &end])
                .await?;
        }
        // Distinct epochs up front, as `redis-cli --cluster create` does: no epoch collisions
        // to resolve, so the slot map converges at once.
        for (i, node) in nodes.iter().enumerate() {
            let epoch = (i + 1).to_string();
            self.node_cmd::<()>(node, &["CLUSTER", "SET-CONFIG-EPOCH", &epoch])
                .await?;
        }
        for node in &nodes[1..] {
            let port = node.port.to_string();
            self.node_cmd::<()>(&nodes[0], &["CLUSTER", "MEET", "127.0.0.1", &port])
                .await?;
        }
        eventually(SETTLE, "every node has met every other", || async {
            for node in &nodes {
                let view = self.view_of(node).await?;
                ensure!(
                    view.lines.len() == nodes.len(),
                    "node :{} knows {} nodes",
                    node.port,
                    view.lines.len()
                );
                if let Some(line) = view.lines.iter().find(|l| l.has_flag("handshake")) {
                    bail!("node :{} is in handshake with :{}", node.port, line.port);
                }
            }
            Ok(())
        })
        .await?;
        let mut expected = HashMap::new();
        for (k, replica) in nodes[primaries..].iter().enumerate() {
            let primary = &nodes[k / replicas_per_primary];
            self.node_cmd::<()>(replica, &["CLUSTER", "REPLICATE", &primary.id])
                .await?;
            expected.insert(replica.id.clone(), primary.id.clone());
        }
        self.settle(&expected).await
    }

    /// `redis://127.0.0.1:<port>` of the nodes started as primaries (seed URLs; any one that
    /// answers tells a client the whole topology, also after a failover).
    pub fn seed_urls(&self) -> Vec<String> {
        self.nodes()[..self.started_primaries]
            .iter()
            .map(ClusterNode::url)
            .collect()
    }

    /// [`RedisCluster::seed_urls`] joined with `,` (for `--redis-cluster-urls`).
    pub fn urls_csv(&self) -> String {
        self.seed_urls().join(",")
    }

    /// Every node, running or not, in start order (primaries first, then the replicas of the
    /// first primary, of the second, …).
    pub fn nodes(&self) -> Vec<ClusterNode> {
        self.nodes.iter().map(Member::handle).collect()
    }

    /// The live primaries that own slots, by their first slot.
    pub async fn primaries(&self) -> Result<Vec<ClusterNode>> {
        let view = self.any_view().await?;
        view.primaries()
            .iter()
            .map(|line| self.by_id(&line.id))
            .collect()
    }

    /// The running replicas of `primary`.
    pub async fn replicas_of(&self, primary: &ClusterNode) -> Result<Vec<ClusterNode>> {
        let view = self.any_view().await?;
        let replicas = view
            .lines
            .iter()
            .filter(|l| l.master.as_deref() == Some(primary.id()) && !l.has_flag("fail"))
            .map(|line| self.by_id(&line.id))
            .collect::<Result<Vec<_>>>()?;
        Ok(replicas.into_iter().filter(|n| n.pid.is_some()).collect())
    }

    /// The primary that owns `slot` now.
    pub async fn owner_of_slot(&self, slot: u16) -> Result<ClusterNode> {
        let view = self.any_view().await?;
        let owner = view
            .owner_of(slot)
            .with_context(|| format!("slot {slot} has no live owner"))?;
        self.by_id(owner)
    }

    /// `n_per_shard` user ids per primary, whose `gp:user:{<id>}` (and so `gp:hist:{<id>}`)
    /// slot that primary owns: the first primary's ids, then the second's, … (primaries in
    /// [`RedisCluster::primaries`] order; ids ascending from 1 within each).
    pub async fn users_on_every_shard(&self, n_per_shard: usize) -> Result<Vec<u64>> {
        let view = self.any_view().await?;
        let primaries: Vec<&str> = view.primaries().iter().map(|l| l.id.as_str()).collect();
        let mut shards = vec![Vec::with_capacity(n_per_shard); primaries.len()];
        let mut user = 0u64;
        while shards.iter().any(|s| s.len() < n_per_shard) {
            user += 1;
            ensure!(user < 100_000_000, "no users found for some shard");
            let owner = view.owner_of(slot_of(&format!("gp:user:{{{user}}}")));
            let shard = primaries.iter().position(|p| Some(*p) == owner);
            if let Some(ids) = shard.map(|i| &mut shards[i]) {
                if ids.len() < n_per_shard {
                    ids.push(user);
                }
            }
        }
        Ok(shards.concat())
    }

    /// `CLUSTER NODES` of the first running node that answers (primaries by start order first).
    async fn any_view(&self) -> Result<View> {
        let mut last = None;
        for node in self.nodes().iter().filter(|n| n.pid.is_some()) {
            match self.view_of(node).await {
                Ok(view) => return Ok(view),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("every node is down")))
            .context("no cluster node answered CLUSTER NODES")
    }

    fn index_of(&self, node: &ClusterNode) -> Result<usize> {
        self.nodes
            .iter()
            .position(|m| m.id == node.id)
            .with_context(|| format!("node {} is not in this cluster", node.id))
    }

    fn member(&self, node: &ClusterNode) -> Result<&Member> {
        Ok(&self.nodes[self.index_of(node)?])
    }

    fn by_id(&self, id: &str) -> Result<ClusterNode> {
        self.nodes
            .iter()
            .find(|m| m.id == id)
            .map(Member::handle)
            .with_context(|| format!("node {id} is not one of the harness's"))
    }
}

impl Member {
    fn handle(&self) -> ClusterNode {
        ClusterNode {
            port: self.server.port(),
            pid: self
                .server
                .pid()
                .filter(|_| !self.down.load(Ordering::SeqCst)),
            id: self.id.clone(),
        }
    }
}
