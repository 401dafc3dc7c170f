//! Presence over all nodes: each node writes its connection count of each user into the user's
//! hash `gp:presence:{<id>}` (field: the node's name) and keeps `gp:node:<name>` alive; a count
//! counts only while its node's key exists, so a node that dies stops counting within
//! [`NODE_TTL`].
//!
//! Writes are coalesced: the registry reports every change, the writer task sends the latest
//! count per user every [`FLUSH`]; every [`REFRESH`] it rewrites all of its users (a Redis that
//! lost its data, hashes that expired) and every [`HEARTBEAT`] it renews its node key. A node
//! that exits deletes its key ([`leave`]): its counts stop counting at once.

use std::collections::{HashMap, HashSet};
use std::sync::Weak;
use std::time::Duration;

use gleepost_event::keys::{node_key, presence_key};
use gleepost_event::RedisConn;
use tokio::sync::mpsc;

use super::context::Context;
use crate::broker::BrokerError;
use crate::registry::UserId;

/// Coalescing window of count changes.
const FLUSH: Duration = Duration::from_millis(100);
/// Interval of the node key's renewal.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// A node's counts stop counting this long after its last heartbeat.
pub(crate) const NODE_TTL: Duration = Duration::from_secs(15);
/// Interval of the full rewrite of the node's counts.
const REFRESH: Duration = Duration::from_secs(60);
/// Lifetime of a presence hash after its last write (renewed by every refresh).
const HASH_TTL: Duration = Duration::from_secs(3 * 60);
/// Users per write round.
const CHUNK: usize = 512;

/// Write the node's counts as they change. Ends when the broker is dropped.
pub(super) async fn run(
    shared: Weak<Context>,
    mut changes: mpsc::UnboundedReceiver<(UserId, usize)>,
) {
    let mut dirty: HashMap<UserId, usize> = HashMap::new();
    let mut flush = tokio::time::interval(FLUSH);
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    let mut beats: u64 = 0;
    loop {
        tokio::select! {
            change = changes.recv() => {
                let Some((user, count)) = change else { return };
                dirty.insert(user, count);
            }
            _ = flush.tick() => {
                let Some(shared) = shared.upgrade() else { return };
                if dirty.is_empty() {
                    continue;
                }
                let batch: Vec<(UserId, usize)> = dirty.drain().collect();
                if let Err(e) = write(&shared, &batch).await {
                    tracing::debug!(error = %e, "presence write failed; retried");
                    // Newer changes that arrived meanwhile win.
                    for (user, count) in batch {
                        dirty.entry(user).or_insert(count);
                    }
                }
            }
            _ = heartbeat.tick() => {
                let Some(shared) = shared.upgrade() else { return };
                beats += 1;
                if let Err(e) = beat(&shared).await {
                    tracing::debug!(error = %e, "presence heartbeat failed");
                }
                if beats % (REFRESH.as_secs() / HEARTBEAT.as_secs()) == 0 {
                    for (user, count) in shared.dispatcher.user_counts() {
                        dirty.entry(user).or_insert(count);
                    }
                }
            }
        }
    }
}

/// The node is exiting: delete its key, so that its counts stop counting now rather than
/// [`NODE_TTL`] later, and never renew it again.
pub(super) async fn leave(shared: &Context) -> Result<(), BrokerError> {
    shared.state.leave();
    let mut conn = shared.topology.commands();
    let mut command = redis::cmd("DEL");
    command.arg(node_key(shared.node_name()));
    let del = command.query_async::<()>(&mut conn);
    tokio::time::timeout(shared.settings.timeout, del)
        .await
        .map_err(|_| BrokerError::Timeout)??;
    Ok(())
}

/// Renew the node key (not once the node is exiting).
async fn beat(shared: &Context) -> Result<(), BrokerError> {
    if shared.state.has_left() {
        return Ok(());
    }
    let mut conn = shared.topology.commands();
    let mut command = redis::cmd("SET");
    command
        .arg(node_key(shared.node_name()))
        .arg(1)
        .arg("EX")
        .arg(NODE_TTL.as_secs());
    let set = command.query_async::<()>(&mut conn);
    tokio::time::timeout(shared.settings.timeout, set)
        .await
        .map_err(|_| BrokerError::Timeout)??;
    if shared.state.has_left() {
        // The node left while this renewal was under way: its key must not outlive it.
        return leave(shared).await;
    }
    Ok(())
}

/// Write the node's count of each user (0 removes its field).
async fn write(shared: &Context, counts: &[(UserId, usize)]) -> Result<(), BrokerError> {
    let conn = shared.topology.commands();
    let node = shared.node_name();
    for chunk in counts.chunks(CHUNK) {
        // One pipeline per user: its commands share the user's slot (cluster).
        let writes = chunk.iter().map(|&(user, count)| {
            let mut conn = conn.clone();
            let key = presence_key(user);
            let mut pipe = redis::pipe();
            if count > 0 {
                pipe.cmd("HSET").arg(&key).arg(node).arg(count).ignore();
                pipe.cmd("EXPIRE")
                    .arg(&key)
                    .arg(HASH_TTL.as_secs())
                    .ignore();
            } else {
                pipe.cmd("HDEL").arg(&key).arg(node).ignore();
            }
            async move { pipe.query_async::<()>(&mut conn).await }
        });
        let all = futures_util::future::try_join_all(writes);
        tokio::time::timeout(shared.settings.timeout, all)
            .await
            .map_err(|_| BrokerError::Timeout)??;
    }
    Ok(())
}

/// Connections of each user over the live nodes.
pub(super) async fn read(
    conn: &RedisConn,
    users: &[UserId],
) -> Result<Vec<(UserId, u64)>, BrokerError> {
    let reads = users.iter().map(|&user| {
        let mut conn = conn.clone();
        async move {
            let fields: HashMap<String, u64> = redis::cmd("HGETALL")
                .arg(presence_key(user))
                .query_async(&mut conn)
                .await?;
            Ok::<_, redis::RedisError>((user, fields))
        }
    });
    let hashes = futures_util::future::try_join_all(reads).await?;
    let nodes: HashSet<&str> = hashes
        .iter()
        .flat_map(|(_, f)| f.keys().map(String::as_str))
        .collect();
    let checks = nodes.into_iter().map(|node| {
        let mut conn = conn.clone();
        async move {
            let alive: bool = redis::cmd("EXISTS")
                .arg(node_key(node))
                .query_async(&mut conn)
                .await?;
            Ok::<_, redis::RedisError>((node, alive))
        }
    });
    let alive: HashSet<&str> = futures_util::future::try_join_all(checks)
        .await?
        .into_iter()
        .filter_map(|(node, alive)| alive.then_some(node))
        .collect();
    Ok(hashes
        .iter()
        .map(|(user, fields)| {
            let count = fields
                .iter()
                .filter(|(node, _)| alive.contains(node.as_str()))
                .map(|(_, n)| n)
                .sum();
            (*user, count)
        })
        .collect())
}
