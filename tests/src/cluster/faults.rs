//! Faults: killing nodes, waiting for the failover, restarting.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use anyhow::{ensure, Context, Result};

use super::{lock, ClusterNode, RedisCluster, SETTLE};
use crate::eventually;

/// What a primary killed by [`RedisCluster::kill_primary`] had.
#[derive(Clone, Debug)]
pub(super) struct Killed {
    slots: Vec<(u16, u16)>,
    replicas: Vec<String>,
}

impl RedisCluster {
    /// SIGKILL `node` (any role) and wait until its port refuses connections; it stays down
    /// until [`RedisCluster::restart`].
    pub async fn kill(&self, node: &ClusterNode) -> Result<()> {
        let member = self.member(node)?;
        member.down.store(true, Ordering::SeqCst);
        member.server.signal(libc::SIGKILL);
        self.forget(node.port);
        eventually(SETTLE, &format!("node :{} gone", node.port), || async {
            match tokio::net::TcpStream::connect(("127.0.0.1", node.port)).await {
                Ok(_) => anyhow::bail!("still accepting connections"),
                Err(_) => Ok(()),
            }
        })
        .await
    }

    /// SIGKILL a primary (an error if `node` is not a live primary now); then
    /// [`RedisCluster::wait_failover`].
    pub async fn kill_primary(&self, node: &ClusterNode) -> Result<()> {
        let view = self.any_view().await?;
        let line = view
            .line(node.id())
            .filter(|l| l.is_live_master())
            .with_context(|| format!("node :{} is not a live primary", node.port))?;
        let replicas = view
            .lines
            .iter()
            .filter(|l| l.master.as_deref() == Some(node.id()))
            .map(|l| l.id.clone())
            .collect();
        lock(&self.killed).insert(
            node.id.clone(),
            Killed {
                slots: line.slots.clone(),
                replicas,
            },
        );
        self.kill(node).await
    }

    /// Wait until a replica of `old_primary` (killed by [`RedisCluster::kill_primary`]) owns
    /// all its slots and every running node is settled (`cluster_state:ok`, same slot map,
    /// replicas attached); returns the promoted replica.
    pub async fn wait_failover(&self, old_primary: &ClusterNode) -> Result<ClusterNode> {
        let Killed { slots, replicas } = lock(&self.killed)
            .get(old_primary.id())
            .cloned()
            .with_context(|| {
                format!("node :{} was not killed by kill_primary", old_primary.port)
            })?;
        ensure!(
            !replicas.is_empty(),
            "node :{} had no replica to fail over to",
            old_primary.port
        );
        let what = format!("failover of primary :{}", old_primary.port);
        eventually(SETTLE, &what, || async {
            self.check_settled(&HashMap::new()).await?;
            let view = self.any_view().await?;
            let owner = slots
                .first()
                .and_then(|&(start, _)| view.owner_of(start))
                .context("its slots have no owner")?;
            ensure!(
                replicas.iter().any(|r| r == owner),
                "its slots are on a non-replica"
            );
            let line = view.line(owner).context("owner not in view")?;
            ensure!(
                slots.iter().all(|s| line.slots.contains(s)),
                "not all its slots moved"
            );
            self.by_id(owner)
        })
        .await
    }

    /// Start a killed node again on its port with its `nodes.conf` (same node id, data
    /// lost); wait until the cluster is settled with it (a failed-over primary comes back
    /// as a replica of its successor). Returns its new handle.
    pub async fn restart(&mut self, node: &ClusterNode) -> Result<ClusterNode> {
        let index = self.index_of(node)?;
        self.forget(node.port);
        self.nodes[index].server.restart().await?;
        self.nodes[index].down.store(false, Ordering::SeqCst);
        lock(&self.killed).remove(node.id());
        self.wait_settled().await?;
        Ok(self.nodes[index].handle())
    }
}
