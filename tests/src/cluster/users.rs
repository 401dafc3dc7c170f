//! Users and the primaries that own them: where a user's keys live, users of other primaries,
//! and starting to move a user's slot away.

use anyhow::{Context, Result};

use super::{slot_of, ClusterNode, Migration, RedisCluster};

impl RedisCluster {
    /// The primary that owns `user`'s slot (`gp:user:{<id>}`, the slot of all its keys).
    pub async fn owner_of_user(&self, user: u64) -> Result<ClusterNode> {
        self.owner_of_slot(slot_of(&format!("gp:user:{{{user}}}")))
            .await
    }

    /// Those of `users` whose slot is not on `owner`, in order.
    pub async fn users_elsewhere(&self, users: &[u64], owner: &ClusterNode) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        for &user in users {
            if self.owner_of_user(user).await? != *owner {
                out.push(user);
            }
        }
        Ok(out)
    }

    /// A primary other than `owner`.
    pub async fn other_primary(&self, owner: &ClusterNode) -> Result<ClusterNode> {
        self.primaries()
            .await?
            .into_iter()
            .find(|p| p != owner)
            .context("no other primary")
    }

    /// Begin moving the slot of `user`'s keys to another primary (its keys move, the slot does
    /// not yet: [`RedisCluster::begin_migration`]); returns the migration and the slot's owner
    /// until it finishes.
    pub async fn begin_moving(&self, user: u64) -> Result<(Migration<'_>, ClusterNode)> {
        let owner = self.owner_of_user(user).await?;
        let target = self.other_primary(&owner).await?;
        let migration = self
            .begin_migration(slot_of(&format!("gp:user:{{{user}}}")), &target)
            .await?
            .context("the slot is on the target already")?;
        Ok((migration, owner))
    }
}
