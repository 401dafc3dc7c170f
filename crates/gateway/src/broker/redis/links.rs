//! One pub/sub link of the subscriber: a connection to one Redis node, what was asked of it
//! ([`Sent`]), and its probe channel. On a standalone server the one link holds every user's
//! channels with `SUBSCRIBE`; on a cluster each primary's link holds the users whose gateway
//! channel (`gp:user:{<id>}`) is in its slots: the gateway channels with `SSUBSCRIBE`, one
//! command per slot (Redis requires it), and the legacy channels with a classic `SUBSCRIBE`
//! (classic pub/sub reaches every cluster node).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use gleepost_event::keys::{slot_of, user_channel, Template};

use super::cluster::Shard;
use super::pubsub::{PubSubConn, PubSubError};
use super::reader::Channel;
use super::subscriptions::Sent;
use super::topology::LinkSpec;
use crate::registry::UserId;

/// Users per (S)SUBSCRIBE/(S)UNSUBSCRIBE round on one link.
pub(super) const BATCH_USERS: usize = 512;

/// A link failed (its session ends; the subscriber reconnects every link).
#[derive(Debug, thiserror::Error)]
pub(super) enum LinkError {
    #[error("{0}")]
    PubSub(#[from] PubSubError),
    #[error("redis did not take a command in time")]
    Timeout,
    #[error("no probe channel found for a shard without slots")]
    EmptyShard,
}

/// One pub/sub connection and its bookkeeping.
pub(super) struct Link {
    pub(super) spec: LinkSpec,
    pub(super) conn: PubSubConn,
    pub(super) sent: Sent,
    /// This link's probe channel (a shard channel in one of its slots on a cluster).
    pub(super) probe: String,
    /// Shard channels this node asked to leave, not yet confirmed: any other `sunsubscribe` is
    /// Redis dropping a channel by itself (slot moved, failover).
    leaving: HashMap<Vec<u8>, u32>,
    /// When the probe last came back (ns, the state's clock; 0 = not yet) and the Redis time
    /// it carried (ms).
    pub(super) probe_back: u64,
    pub(super) probe_ms: u64,
    /// The link's index in its session's topology (its name's `sub<n>`).
    pub(super) id: usize,
    /// When the link opened (ns, the state's clock): its probe is due within the probe
    /// timeout from then.
    pub(super) opened: u64,
    /// While the link settles (its users' channels being subscribed, their gap repair not
    /// applied): the messages it delivered meanwhile, dispatched after the repair.
    pub(super) held: Option<Vec<(Channel, bytes::Bytes)>>,
    /// Bytes of the payloads held.
    pub(super) held_bytes: usize,
    /// A gap repair of its users is under way (it holds its messages meanwhile).
    pub(super) repairing: bool,
    /// Failed reopening attempts before this link opened (its backoff if it fails again
    /// before its probe came back).
    pub(super) retries: u32,
}

/// Await a command write, bounded by `limit`.
async fn timed(
    limit: Duration,
    write: impl std::future::Future<Output = Result<(), PubSubError>>,
) -> Result<(), LinkError> {
    Ok(tokio::time::timeout(limit, write)
        .await
        .map_err(|_| LinkError::Timeout)??)
}

impl Link {
    /// Connect, name the connection `name` and subscribe the link's probe channel (derived
    /// from `probe_base`).
    pub(super) async fn open(
        spec: LinkSpec,
        probe_base: &str,
        name: &str,
        limit: Duration,
    ) -> Result<Link, LinkError> {
        let mut conn = tokio::time::timeout(limit, spec.connect(name))
            .await
            .map_err(|_| LinkError::Timeout)??;
        let mut sent = Sent::default();
        let probe = match &spec.shard {
            None => {
                let probe = probe_base.to_string();
                timed(limit, conn.subscribe(std::slice::from_ref(&probe))).await?;
                probe
            }
            Some(shard) => {
                let probe = probe_in_shard(probe_base, shard).ok_or(LinkError::EmptyShard)?;
                timed(limit, conn.ssubscribe(std::slice::from_ref(&probe))).await?;
                probe
            }
        };
        sent.subscribing(&[], 1);
        Ok(Link {
            spec,
            conn,
            sent,
            probe,
            leaving: HashMap::new(),
            probe_back: 0,
            probe_ms: 0,
            id: 0,
            held: None,
            held_bytes: 0,
            repairing: false,
            opened: 0,
            retries: 0,
        })
    }

    /// Subscribe every channel of `users` (confirmations arrive later, through the reader).
    pub(super) async fn subscribe(
        &mut self,
        users: &[UserId],
        templates: &[Template],
        limit: Duration,
    ) -> Result<(), LinkError> {
        self.change(true, users, templates, limit).await
    }

    /// Unsubscribe every channel of `users`.
    pub(super) async fn unsubscribe(
        &mut self,
        users: &[UserId],
        templates: &[Template],
        limit: Duration,
    ) -> Result<(), LinkError> {
        self.change(false, users, templates, limit).await
    }

    /// Join (or leave) every channel of `users`: classic commands for the legacy channels (and,
    /// on a standalone server, the gateway channels), one shard command per slot on a cluster.
    async fn change(
        &mut self,
        join: bool,
        users: &[UserId],
        templates: &[Template],
        limit: Duration,
    ) -> Result<(), LinkError> {
        let standalone = self.spec.shard.is_none();
        for chunk in users.chunks(BATCH_USERS) {
            if standalone || !templates.is_empty() {
                let names = channel_names(chunk, templates, standalone);
                self.command(join, false, chunk, &names, limit).await?;
            }
            if !standalone {
                for (_, slot_users) in by_slot(chunk) {
                    let names: Vec<String> = slot_users.iter().map(|&u| user_channel(u)).collect();
                    self.command(join, true, &slot_users, &names, limit).await?;
                }
            }
        }
        Ok(())
    }

    /// One (S)SUBSCRIBE or (S)UNSUBSCRIBE of `names`, the channels of `users`, and its
    /// bookkeeping.
    async fn command(
        &mut self,
        join: bool,
        sharded: bool,
        users: &[UserId],
        names: &[String],
        limit: Duration,
    ) -> Result<(), LinkError> {
        if sharded && !join {
            for name in names {
                *self.leaving.entry(name.as_bytes().to_vec()).or_default() += 1;
            }
        }
        let conn = &mut self.conn;
        let write = async {
            match (join, sharded) {
                (true, false) => conn.subscribe(names).await,
                (false, false) => conn.unsubscribe(names).await,
                (true, true) => conn.ssubscribe(names).await,
                (false, true) => conn.sunsubscribe(names).await,
            }
        };
        timed(limit, write).await?;
        if join {
            self.sent.subscribing(users, names.len());
        } else {
            self.sent.unsubscribing(users, names.len());
        }
        Ok(())
    }

    /// A `sunsubscribe` for `channel` arrived: true when it confirms our own SUNSUBSCRIBE,
    /// false when Redis dropped the channel by itself.
    pub(super) fn shard_unsubscribed(&mut self, channel: &[u8]) -> bool {
        match self.leaving.get_mut(channel) {
            Some(n) => {
                *n -= 1;
                if *n == 0 {
                    self.leaving.remove(channel);
                }
                true
            }
            None => false,
        }
    }

    /// Channels subscribed once every sent command is processed (the probe included).
    pub(super) fn channels(&self, templates: usize) -> usize {
        self.sent.current.len() * (templates + 1) + 1
    }
}

/// Legacy channels of `users` and, when `gateway`, their gateway channels too.
fn channel_names(users: &[UserId], templates: &[Template], gateway: bool) -> Vec<String> {
    users
        .iter()
        .flat_map(|&u| {
            let legacy = templates.iter().map(move |t| t.render_id(u));
            legacy.chain(gateway.then(|| user_channel(u)))
        })
        .collect()
}

/// `users` grouped by the slot of their gateway channel (one SSUBSCRIBE per slot).
fn by_slot(users: &[UserId]) -> BTreeMap<u16, Vec<UserId>> {
    let mut groups: BTreeMap<u16, Vec<UserId>> = BTreeMap::new();
    for &user in users {
        groups
            .entry(slot_of(user_channel(user).as_bytes()))
            .or_default()
            .push(user);
    }
    groups
}

/// A shard channel for the probe whose slot `shard` owns: `<base>{p<n>}` for the first `n`
/// that lands there (a shard with any slot is found within a few thousand tries).
fn probe_in_shard(base: &str, shard: &Shard) -> Option<String> {
    (0..1_000_000u32)
        .map(|n| format!("{base}{{p{n}}}"))
        .find(|c| shard.owns(slot_of(c.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_channels_land_in_their_shard_and_users_group_by_slot() {
        let shard = Shard {
            addr: ("127.0.0.1".into(), 7000),
            slots: vec![(100, 100)],
        };
        let probe = probe_in_shard("gp:probe:x", &shard).unwrap();
        assert_eq!(slot_of(probe.as_bytes()), 100);
        let empty = Shard {
            addr: ("127.0.0.1".into(), 7001),
            slots: vec![],
        };
        assert_eq!(probe_in_shard("gp:probe:x", &empty), None);
        let groups = by_slot(&[1, 2, 3, 1]);
        let total: usize = groups.values().map(Vec::len).sum();
        assert_eq!(total, 4);
        for (slot, users) in groups {
            for u in users {
                assert_eq!(slot_of(user_channel(u).as_bytes()), slot);
            }
        }
    }
}
