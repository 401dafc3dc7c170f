//! Topology of a primary under Redis Sentinel (`REDIS_SENTINEL_URLS`, `REDIS_SENTINEL_MASTER`):
//! one command connection to the primary ([`SentinelConn`]: found through the sentinels, `ROLE`
//! checked, moved after a failure, a `READONLY` answer or a refresh) and, opened by the
//! subscriber, one pub/sub connection to the same primary.
//!
//! The watcher task subscribes to `+switch-master` on one sentinel at a time and refreshes the
//! primary when the monitored master switched; the subscriber sees the new address and moves
//! its pub/sub connection, then repairs the gap from history as after any pub/sub outage. The
//! subscriber's periodic topology check asks the sentinels too, so a switch whose announcement
//! was missed (the watched sentinel down) is found within a few probe intervals.

use std::sync::Weak;
use std::time::Duration;

use gleepost_event::sentinel::NodeAddr;
use gleepost_event::{RedisConn, SentinelConn};
use redis::{ConnectionInfo, RedisConnectionInfo};
use tokio::sync::watch;

use super::context::Context;
use super::pubsub::{PubSubConn, PubSubError, Push};
use crate::broker::BrokerError;

/// The sentinels' announcement of a new primary: `<name> <old ip> <old port> <new ip> <new port>`.
const SWITCH_CHANNEL: &str = "+switch-master";

/// The connections to a Sentinel-monitored primary.
pub(super) struct Sentinel {
    conn: SentinelConn,
}

impl Sentinel {
    /// Parse the sentinel URLs; nothing is connected yet. `timeout` bounds each step of
    /// finding the primary, `backstop` every response of the primary.
    pub(super) fn new(
        sentinels: &[String],
        master: &str,
        node: RedisConnectionInfo,
        timeout: Duration,
        backstop: Duration,
    ) -> Result<Self, BrokerError> {
        Ok(Sentinel {
            conn: SentinelConn::with_timeouts(sentinels, master, node, timeout, backstop)?,
        })
    }

    /// The shared command connection (to the current primary).
    pub(super) fn commands(&self) -> RedisConn {
        RedisConn::Sentinel(self.conn.clone())
    }

    /// Where the pub/sub connection goes now: the primary the sentinels name, asked again (a
    /// reconnect follows a failure, and the failure may be the primary's).
    pub(super) async fn link(&self) -> Result<(NodeAddr, ConnectionInfo), PubSubError> {
        let addr = self
            .conn
            .refresh()
            .await
            .map_err(|e| PubSubError::Server(e.to_string()))?;
        let info = self.conn.node_info(&addr);
        Ok((addr, info))
    }

    /// True when the sentinels name another primary than `addr` (they were reachable).
    pub(super) async fn moved_from(&self, addr: &NodeAddr) -> bool {
        matches!(self.conn.ask_sentinels().await, Ok(now) if &now != addr)
    }

    /// Changes of the primary in use.
    pub(super) fn primary_changes(&self) -> watch::Receiver<Option<NodeAddr>> {
        self.conn.primary_changes()
    }

    /// The underlying connection (for the watcher).
    pub(super) fn conn(&self) -> &SentinelConn {
        &self.conn
    }
}

/// Watch `+switch-master` on the sentinels, one at a time, and refresh the primary when the
/// monitored master switched. Ends when the broker is dropped.
pub(super) async fn watch_switches(shared: Weak<Context>, conn: SentinelConn, timeout: Duration) {
    let sentinels: Vec<ConnectionInfo> = conn.sentinels().to_vec();
    let mut index = 0usize;
    loop {
        let Some(name) = shared
            .upgrade()
            .map(|s| format!("gleepost-gateway-{}-sentinel", s.node_name()))
        else {
            return;
        };
        let info = &sentinels[index % sentinels.len()];
        index = index.wrapping_add(1);
        match listen(info, &name, &conn, timeout).await {
            Ok(()) => {}
            Err(e) => tracing::debug!(error = %e, "sentinel watch connection ended"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One watch connection: subscribe and handle announcements until it fails.
async fn listen(
    info: &ConnectionInfo,
    name: &str,
    conn: &SentinelConn,
    timeout: Duration,
) -> Result<(), PubSubError> {
    let connect = async {
        let mut pubsub = PubSubConn::connect(info, name).await?;
        pubsub.subscribe(&[SWITCH_CHANNEL.to_string()]).await?;
        Ok::<_, PubSubError>(pubsub)
    };
    let mut pubsub = tokio::time::timeout(timeout * 2, connect)
        .await
        .map_err(|_| PubSubError::Closed)??;
    loop {
        let switched = match pubsub.next().await? {
            Push::Message { payload, .. } => switched_master(payload, conn.master_name()),
            _ => None,
        };
        if let Some(to) = switched {
            tracing::warn!(master = conn.master_name(), new_primary = %to, "sentinel switched the primary");
            if let Err(e) = conn.refresh().await {
                tracing::warn!(error = %e, "the new primary is not usable yet");
            }
        }
    }
}

/// The new primary (`host:port`) of a `+switch-master` payload about `master`.
fn switched_master(payload: &[u8], master: &str) -> Option<String> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut words = text.split(' ');
    if words.next()? != master {
        return None;
    }
    let (_, _, host, port) = (words.next()?, words.next()?, words.next()?, words.next()?);
    Some(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_announcements_of_our_master_only() {
        let payload = b"gp 127.0.0.1 7000 127.0.0.1 7001";
        assert_eq!(
            switched_master(payload, "gp").as_deref(),
            Some("127.0.0.1:7001")
        );
        assert_eq!(switched_master(payload, "other"), None);
        assert_eq!(switched_master(b"gp 127.0.0.1", "gp"), None);
    }
}
