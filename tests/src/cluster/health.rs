//! When is the cluster settled: every running node agrees on a complete, healthy topology.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use anyhow::{ensure, Context, Result};

use super::topology::View;
use super::{ClusterNode, RedisCluster, SETTLE};
use crate::eventually;

impl RedisCluster {
    /// Wait until every running node reports `cluster_state:ok`, knows every node, sees the
    /// running ones healthy and the killed ones failed, has no slot in migration, sees the
    /// same complete slot map and roles as the others, and (a replica) has its link up.
    pub async fn wait_settled(&self) -> Result<()> {
        self.settle(&HashMap::new()).await
    }

    /// [`RedisCluster::wait_settled`], with the roles `expected_masters` (replica id →
    /// primary id) too.
    pub(super) async fn settle(&self, expected_masters: &HashMap<String, String>) -> Result<()> {
        eventually(SETTLE, "cluster settled", || {
            self.check_settled(expected_masters)
        })
        .await
    }

    /// `Ok` when the cluster is settled (see [`RedisCluster::settle`]).
    pub(super) async fn check_settled(
        &self,
        expected_masters: &HashMap<String, String>,
    ) -> Result<()> {
        let running: Vec<ClusterNode> = self
            .nodes()
            .into_iter()
            .filter(|n| n.pid.is_some())
            .collect();
        let mut first: Option<(ClusterNode, View)> = None;
        for node in &running {
            let info: String = self.node_cmd(node, &["CLUSTER", "INFO"]).await?;
            ensure!(
                info.contains("cluster_state:ok\r"),
                "node :{} cluster_state is not ok",
                node.port
            );
            let known = format!("cluster_known_nodes:{}\r", self.nodes.len());
            ensure!(
                info.contains(&known),
                "node :{} does not know all nodes",
                node.port
            );
            let view = self.view_of(node).await?;
            for member in &self.nodes {
                let line = view
                    .line(&member.id)
                    .with_context(|| format!("node :{} lacks {}", node.port, member.id))?;
                if member.down.load(Ordering::SeqCst) {
                    ensure!(
                        line.has_flag("fail"),
                        "node :{} has not failed :{} yet",
                        node.port,
                        line.port
                    );
                } else {
                    ensure!(
                        !line.is_troubled() && (line.connected || line.has_flag("myself")),
                        "node :{} sees :{} as {:?}",
                        node.port,
                        line.port,
                        line.flags
                    );
                }
            }
            let myself = view.myself().context("no myself line")?;
            ensure!(
                myself.open_slots.is_empty(),
                "node :{} has open slots {:?}",
                node.port,
                myself.open_slots
            );
            view.check_coverage()
                .with_context(|| format!("view of node :{}", node.port))?;
            if myself.master.is_some() {
                let replication: String = self.node_cmd(node, &["INFO", "replication"]).await?;
                ensure!(
                    replication.contains("master_link_status:up\r"),
                    "replica :{} has no link to its primary",
                    node.port
                );
            }
            for (replica, master) in expected_masters {
                let line = view.line(replica).context("replica not in view")?;
                ensure!(
                    line.master.as_ref() == Some(master),
                    "node :{} sees :{} not yet a replica of {master}",
                    node.port,
                    line.port
                );
            }
            match &first {
                None => first = Some((node.clone(), view)),
                Some((other, reference)) => {
                    ensure!(
                        view.slot_map() == reference.slot_map(),
                        "nodes :{} and :{} disagree on the slot map",
                        node.port,
                        other.port
                    );
                    for member in self.nodes.iter().filter(|m| !m.down.load(Ordering::SeqCst)) {
                        let ours = view
                            .line(&member.id)
                            .map(|l| (&l.master, l.has_flag("master")));
                        let theirs = reference
                            .line(&member.id)
                            .map(|l| (&l.master, l.has_flag("master")));
                        ensure!(
                            ours == theirs,
                            "nodes :{} and :{} disagree on the role of {}",
                            node.port,
                            other.port,
                            member.id
                        );
                    }
                }
            }
        }
        Ok(())
    }
}
