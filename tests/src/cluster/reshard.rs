//! Online slot migration, the way `redis-cli --cluster reshard` does it.

use anyhow::{bail, ensure, Context, Result};
use redis::aio::MultiplexedConnection;

use super::{ClusterNode, RedisCluster, SETTLE};
use crate::eventually;

/// Keys per `CLUSTER GETKEYSINSLOT` / `MIGRATE` round.
const BATCH: usize = 100;
/// `MIGRATE` I/O timeout (ms).
const MIGRATE_TIMEOUT_MS: u64 = 5000;

async fn setslot(
    conn: &mut MultiplexedConnection,
    slot: u16,
    state: &str,
    id: &str,
) -> redis::RedisResult<()> {
    redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg(state)
        .arg(id)
        .query_async(conn)
        .await
}

impl RedisCluster {
    /// Move `slot` with its keys to the primary `to`, online: [`RedisCluster::begin_migration`]
    /// then [`Migration::finish`]; returns once every running node agrees that `to` owns it.
    /// Clients that keep writing to the slot meanwhile lose nothing if they follow
    /// `ASK`/`MOVED` (the old owner serves the keys it still has, `ASK`s for the others; new
    /// keys are created at `to`). Returns the number of keys handed to `MIGRATE` (0 when `to`
    /// owns the slot already).
    pub async fn migrate_slot(&self, slot: u16, to: &ClusterNode) -> Result<usize> {
        match self.begin_migration(slot, to).await? {
            Some(migration) => migration.finish().await,
            None => Ok(0),
        }
    }

    /// The first half of an online migration, the way `redis-cli --cluster reshard` does it:
    /// `SETSLOT IMPORTING` on `to`, `MIGRATING` on the owner, then `MIGRATE` of every key in
    /// batches (`GETKEYSINSLOT`). The slot is then still the old owner's, which `ASK`s every
    /// command on its keys to `to`. `None` when `to` owns the slot already.
    pub async fn begin_migration(
        &self,
        slot: u16,
        to: &ClusterNode,
    ) -> Result<Option<Migration<'_>>> {
        ensure!(slot < super::SLOTS, "no slot {slot}");
        let view = self.any_view().await?;
        let from = self.by_id(
            view.owner_of(slot)
                .with_context(|| format!("slot {slot} has no live owner"))?,
        )?;
        let target_line = view.line(to.id()).filter(|l| l.is_live_master());
        ensure!(
            target_line.is_some(),
            "node :{} is not a live primary",
            to.port()
        );
        if from == *to {
            return Ok(None);
        }
        let migration = Migration {
            cluster: self,
            slot,
            from,
            to: to.clone(),
            moved: 0,
        };
        let mut target = self.conn(to.port()).await?;
        let mut source = self.conn(migration.from.port()).await?;
        setslot(&mut target, slot, "IMPORTING", migration.from.id())
            .await
            .with_context(|| migration.what("IMPORTING"))?;
        setslot(&mut source, slot, "MIGRATING", to.id())
            .await
            .with_context(|| migration.what("MIGRATING"))?;
        // Once the source has no key of the slot left, none can appear there again: it
        // `ASK`s every command on a missing key to the target.
        let moved = move_keys(&mut source, slot, to.port())
            .await
            .with_context(|| migration.what("MIGRATE"))?;
        Ok(Some(Migration { moved, ..migration }))
    }
}

/// A slot whose keys have moved to their new owner, which does not own the slot yet.
pub struct Migration<'a> {
    cluster: &'a RedisCluster,
    slot: u16,
    from: ClusterNode,
    to: ClusterNode,
    moved: usize,
}

impl Migration<'_> {
    fn what(&self, step: &str) -> String {
        format!(
            "migrating slot {} :{} → :{}: {step}",
            self.slot,
            self.from.port(),
            self.to.port()
        )
    }

    /// `SETSLOT NODE` on the new owner, on the old owner and on every other primary; returns
    /// once every running node agrees, with the number of keys handed to `MIGRATE`.
    pub async fn finish(self) -> Result<usize> {
        let (cluster, slot, to) = (self.cluster, self.slot, &self.to);
        let view = cluster.any_view().await?;
        let mut target = cluster.conn(to.port()).await?;
        let mut source = cluster.conn(self.from.port()).await?;
        // The importing node first: it takes the slot with a new epoch. (A key still on the
        // source then would be deleted as soon as the source hears of that epoch.)
        setslot(&mut target, slot, "NODE", to.id())
            .await
            .with_context(|| self.what("NODE on the target"))?;
        setslot(&mut source, slot, "NODE", to.id())
            .await
            .with_context(|| self.what("NODE on the source"))?;
        for line in view.lines.iter().filter(|l| l.is_live_master()) {
            if line.id == self.from.id() || line.id == to.id() {
                continue;
            }
            let mut conn = cluster.conn(line.port).await?;
            setslot(&mut conn, slot, "NODE", to.id())
                .await
                .with_context(|| self.what(&format!("NODE on :{}", line.port)))?;
        }
        eventually(SETTLE, &self.what("every node agrees"), || async {
            cluster.check_settled(&Default::default()).await?;
            for node in cluster.nodes().iter().filter(|n| n.pid().is_some()) {
                let view = cluster.view_of(node).await?;
                if view.owner_of(slot) != Some(to.id()) {
                    bail!("node :{} does not see the new owner yet", node.port());
                }
            }
            Ok(())
        })
        .await?;
        Ok(self.moved)
    }
}

/// `MIGRATE` every key of `slot` from `source` to the node on `to_port`, in batches, until
/// `CLUSTER GETKEYSINSLOT` is empty; returns the number of keys handed over.
async fn move_keys(source: &mut MultiplexedConnection, slot: u16, to_port: u16) -> Result<usize> {
    let mut moved = 0;
    loop {
        let keys: Vec<Vec<u8>> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(BATCH)
            .query_async(source)
            .await?;
        if keys.is_empty() {
            return Ok(moved);
        }
        // "OK", or "NOKEY" when all of them expired or were deleted meanwhile.
        let _: redis::Value = redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(to_port)
            .arg("")
            .arg(0)
            .arg(MIGRATE_TIMEOUT_MS)
            .arg("KEYS")
            .arg(&keys)
            .query_async(source)
            .await?;
        moved += keys.len();
    }
}
