//! Node handles and one node's view of the cluster (`CLUSTER NODES`).

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;

use crate::redis::{connect, query};

/// A handle on one node of a [`super::RedisCluster`]: cheap to clone, compared by node id.
/// The pid is the one the node had when the handle was taken ([`super::RedisCluster::restart`]
/// returns a fresh handle).
#[derive(Clone, Debug)]
pub struct ClusterNode {
    pub(crate) port: u16,
    pub(crate) pid: Option<u32>,
    pub(crate) id: String,
}

impl PartialEq for ClusterNode {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for ClusterNode {}

impl std::hash::Hash for ClusterNode {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

impl ClusterNode {
    /// Its client port on 127.0.0.1 (the cluster bus is this + 10000).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `redis-server` pid (`None` once the harness killed it).
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Its cluster node id (40 hex characters; kept across restarts).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A new (non-cluster) multiplexed connection to this node only.
    pub async fn connection(&self) -> Result<MultiplexedConnection> {
        connect(&self.url(), &AsyncConnectionConfig::new()).await
    }

    /// Run one command on this node (no redirection) and return its reply.
    pub async fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> Result<T> {
        query(&self.url(), args)
            .await
            .with_context(|| format!("{} on node :{}", args.join(" "), self.port))
    }

    /// The client ids of the gateways' pub/sub connections on this node (`CLIENT LIST`
    /// entries named `gleepost-gateway-<node>-sub<i>`), sorted: a reconnected link has a new
    /// id.
    pub async fn gateway_link_ids(&self) -> Result<Vec<u64>> {
        let list: String = self.cmd(&["CLIENT", "LIST"]).await?;
        let mut ids: Vec<u64> = list
            .lines()
            .filter(|l| l.contains(" name=gleepost-gateway-") && l.contains("-sub"))
            .filter_map(|l| l.strip_prefix("id=")?.split(' ').next()?.parse().ok())
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }
}

/// One line of `CLUSTER NODES`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NodeLine {
    pub(crate) id: String,
    pub(crate) port: u16,
    pub(crate) flags: Vec<String>,
    /// The primary's id, for a replica.
    pub(crate) master: Option<String>,
    pub(crate) connected: bool,
    /// Owned slot ranges (inclusive).
    pub(crate) slots: Vec<(u16, u16)>,
    /// Slots this node is migrating or importing (`[slot->-id]`, `[slot-<-id]`).
    pub(crate) open_slots: Vec<u16>,
}

impl NodeLine {
    fn parse(line: &str) -> Result<NodeLine> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            bail!("short CLUSTER NODES line: {line:?}");
        }
        let address = fields[1].split(['@', ',']).next().unwrap_or_default();
        let port = address
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .with_context(|| format!("no port in {line:?}"))?;
        let mut slots = Vec::new();
        let mut open_slots = Vec::new();
        for field in &fields[8..] {
            if let Some(open) = field.strip_prefix('[') {
                let slot = open.split('-').next().unwrap_or_default();
                open_slots.push(slot.parse().with_context(|| format!("slot in {line:?}"))?);
                continue;
            }
            let (start, end) = field.split_once('-').unwrap_or((field, field));
            slots.push((
                start.parse().with_context(|| format!("slot in {line:?}"))?,
                end.parse().with_context(|| format!("slot in {line:?}"))?,
            ));
        }
        Ok(NodeLine {
            id: fields[0].to_owned(),
            port,
            flags: fields[2].split(',').map(str::to_owned).collect(),
            master: (fields[3] != "-").then(|| fields[3].to_owned()),
            connected: fields[7] == "connected",
            slots,
            open_slots,
        })
    }

    pub(crate) fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// A primary that the viewer does not consider failed.
    pub(crate) fn is_live_master(&self) -> bool {
        self.has_flag("master") && !self.has_flag("fail")
    }

    /// Suspected or confirmed failed, or not yet fully met.
    pub(crate) fn is_troubled(&self) -> bool {
        ["fail", "fail?", "handshake", "noaddr"]
            .iter()
            .any(|f| self.has_flag(f))
    }
}

/// One node's `CLUSTER NODES`, parsed.
#[derive(Clone, Debug)]
pub(crate) struct View {
    pub(crate) lines: Vec<NodeLine>,
}

impl View {
    pub(crate) fn parse(text: &str) -> Result<View> {
        let lines = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(NodeLine::parse)
            .collect::<Result<_>>()?;
        Ok(View { lines })
    }

    pub(crate) fn line(&self, id: &str) -> Option<&NodeLine> {
        self.lines.iter().find(|l| l.id == id)
    }

    /// The viewer's own line.
    pub(crate) fn myself(&self) -> Option<&NodeLine> {
        self.lines.iter().find(|l| l.has_flag("myself"))
    }

    /// Slot range start → (end, owner id), over live primaries.
    pub(crate) fn slot_map(&self) -> BTreeMap<u16, (u16, String)> {
        let mut map = BTreeMap::new();
        for line in self.lines.iter().filter(|l| l.is_live_master()) {
            for &(start, end) in &line.slots {
                map.insert(start, (end, line.id.clone()));
            }
        }
        map
    }

    /// The id of the live primary that owns `slot`.
    pub(crate) fn owner_of(&self, slot: u16) -> Option<&str> {
        self.lines
            .iter()
            .filter(|l| l.is_live_master())
            .find(|l| l.slots.iter().any(|&(s, e)| (s..=e).contains(&slot)))
            .map(|l| l.id.as_str())
    }

    /// Live primaries that own slots, by their first slot.
    pub(crate) fn primaries(&self) -> Vec<&NodeLine> {
        let mut primaries: Vec<&NodeLine> = self
            .lines
            .iter()
            .filter(|l| l.is_live_master() && !l.slots.is_empty())
            .collect();
        primaries.sort_by_key(|l| l.slots.iter().map(|s| s.0).min());
        primaries
    }

    /// `Ok` when the slot map covers all 16384 slots without overlap.
    pub(crate) fn check_coverage(&self) -> Result<()> {
        let mut next = 0u32;
        for (&start, (end, owner)) in self.slot_map().iter() {
            if u32::from(start) != next {
                bail!("slots {next}..{start} have no live owner (then {owner})");
            }
            next = u32::from(*end) + 1;
        }
        if next != u32::from(super::SLOTS) {
            bail!("slots {next}..16383 have no live owner");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cluster_nodes_lines() -> Result<()> {
        let line = NodeLine::parse(
            "07c3 127.0.0.1:30004@40004,host myself,master - 0 0 1 connected 0-5460 7000 \
             [5461->-e7d1] [93-<-292f]",
        )?;
        assert_eq!(line.port, 30004);
        assert!(line.has_flag("myself") && line.is_live_master());
        assert_eq!(line.slots, vec![(0, 5460), (7000, 7000)]);
        assert_eq!(line.open_slots, vec![5461, 93]);
        let replica =
            NodeLine::parse("e7d1 127.0.0.1:30005@40005 slave,fail? 07c3 1 2 1 disconnected")?;
        assert_eq!(replica.master.as_deref(), Some("07c3"));
        assert!(replica.is_troubled() && !replica.connected && replica.slots.is_empty());
        Ok(())
    }
}
