//! Commands routed to the owner of a key's slot, following `MOVED` and `ASK` and waiting out
//! failovers, like a cluster client; over cached harness connections.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ErrorKind, RedisError, ServerErrorKind};

use super::topology::View;
use super::{lock, slot_of, ClusterNode, RedisCluster, SETTLE};
use crate::redis::{command, connect};

/// Reply deadline of harness connections (`MIGRATE` batches included).
const REPLY: Duration = Duration::from_secs(10);

/// What to do after an error.
enum Next {
    /// `MOVED`: the owner is this port.
    Moved(u16),
    /// `ASK`: this port, once, after `ASKING`.
    Ask(u16),
    /// Topology in flux or node unreachable: ask any node again shortly.
    Retry,
    /// A real error of the command.
    Fail,
}

fn classify(e: &RedisError) -> Next {
    let port = || {
        e.redirect_node()
            .and_then(|(addr, _)| addr.rsplit_once(':'))
            .and_then(|(_, port)| port.parse().ok())
    };
    match e.kind() {
        ErrorKind::Server(ServerErrorKind::Moved) => port().map_or(Next::Retry, Next::Moved),
        ErrorKind::Server(ServerErrorKind::Ask) => port().map_or(Next::Retry, Next::Ask),
        ErrorKind::Server(
            ServerErrorKind::TryAgain | ServerErrorKind::ClusterDown | ServerErrorKind::MasterDown,
        ) => Next::Retry,
        _ if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => Next::Retry,
        _ => Next::Fail,
    }
}

impl RedisCluster {
    /// The harness's connection to the node on `port` (made on first use).
    pub(super) async fn conn(&self, port: u16) -> Result<MultiplexedConnection> {
        if let Some(conn) = lock(&self.conns).get(&port) {
            return Ok(conn.clone());
        }
        let config = AsyncConnectionConfig::new().set_response_timeout(Some(REPLY));
        let conn = connect(&format!("redis://127.0.0.1:{port}"), &config).await?;
        lock(&self.conns).insert(port, conn.clone());
        Ok(conn)
    }

    /// Run one command on `node` over the harness's connection (no redirection).
    pub(super) async fn node_cmd<T: redis::FromRedisValue>(
        &self,
        node: &ClusterNode,
        args: &[&str],
    ) -> Result<T> {
        let mut conn = self.conn(node.port()).await?;
        let reply = command(args).query_async(&mut conn).await;
        if let Err(e) = &reply {
            if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                self.forget(node.port());
            }
        }
        reply.with_context(|| format!("{} on node :{}", args.join(" "), node.port()))
    }

    /// `node`'s `CLUSTER NODES`.
    pub(super) async fn view_of(&self, node: &ClusterNode) -> Result<View> {
        View::parse(&self.node_cmd::<String>(node, &["CLUSTER", "NODES"]).await?)
    }

    /// Drop the cached connection to `port` (killed, restarted or broken).
    pub(super) fn forget(&self, port: u16) {
        lock(&self.conns).remove(&port);
        lock(&self.routes).retain(|_, p| *p != port);
    }

    /// Run `cmd` on the owner of `slot_key`'s slot: follows `MOVED` and `ASK` (with
    /// `ASKING`), and retries while a slot has no reachable owner (`CLUSTERDOWN`,
    /// `TRYAGAIN`, a killed primary not yet failed over), for at most 30 s. A command whose
    /// reply was lost (connection dropped, 10 s reply timeout) is sent again, so a write may
    /// then apply twice.
    pub async fn query_routed<T: redis::FromRedisValue>(
        &self,
        slot_key: &str,
        cmd: &redis::Cmd,
    ) -> Result<T> {
        let slot = slot_of(slot_key);
        let deadline = Instant::now() + SETTLE;
        let mut ask = None;
        let mut round = 0usize;
        loop {
            let hint = lock(&self.routes).get(&slot).copied();
            let port = match (ask, hint) {
                (Some(port), _) | (None, Some(port)) => port,
                (None, None) => self.any_running_port(round)?,
            };
            let mut conn = match self.conn(port).await {
                Ok(conn) => conn,
                Err(_) if Instant::now() < deadline => {
                    self.forget(port);
                    (ask, round) = (None, round + 1);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => return Err(e.context(format!("routed command for slot {slot}"))),
            };
            let reply = if ask.is_some() {
                let mut pipe = redis::pipe();
                pipe.cmd("ASKING").ignore().add_command(cmd.clone());
                pipe.query_async::<(T,)>(&mut conn).await.map(|(v,)| v)
            } else {
                cmd.query_async::<T>(&mut conn).await
            };
            let e = match reply {
                Ok(value) => {
                    if ask.is_none() {
                        lock(&self.routes).insert(slot, port);
                    }
                    return Ok(value);
                }
                Err(e) => e,
            };
            ask = None;
            round += 1;
            match classify(&e) {
                // Nodes may bounce a client between them for a moment while a new slot owner
                // is gossiped: after a few redirects in a row, pause a little.
                Next::Moved(_) | Next::Ask(_) if Instant::now() >= deadline => {
                    return Err(e).with_context(|| format!("redirected for {SETTLE:?}"))
                }
                Next::Moved(owner) => {
                    lock(&self.routes).insert(slot, owner);
                    if round > 4 {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                Next::Ask(target) => ask = Some(target),
                Next::Retry if Instant::now() < deadline => {
                    if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                        self.forget(port);
                    }
                    lock(&self.routes).remove(&slot);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Next::Retry | Next::Fail => {
                    return Err(e).with_context(|| format!("routed command for slot {slot}"))
                }
            }
        }
    }

    /// [`RedisCluster::query_routed`] with string arguments (the first one is the command).
    pub async fn cmd_routed<T: redis::FromRedisValue>(
        &self,
        slot_key: &str,
        args: &[&str],
    ) -> Result<T> {
        self.query_routed(slot_key, &command(args)).await
    }

    /// `SPUBLISH channel payload` on the owner of the channel's slot; returns the number of
    /// receivers (subscribers on that shard).
    pub async fn spublish(&self, channel: &str, payload: &[u8]) -> Result<i64> {
        let mut cmd = redis::cmd("SPUBLISH");
        cmd.arg(channel).arg(payload);
        self.query_routed(channel, &cmd).await
    }

    /// A running node's port, a different one each `round`.
    fn any_running_port(&self, round: usize) -> Result<u16> {
        let running: Vec<u16> = self
            .nodes()
            .iter()
            .filter(|n| n.pid().is_some())
            .map(|n| n.port())
            .collect();
        running
            .get(round % running.len().max(1))
            .copied()
            .context("every cluster node is down")
    }
}
