//! Shutdown: signals and the staggered drain of connections.

use std::time::Duration;

use rand::seq::SliceRandom;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::{sleep_until, Instant};

use crate::outbox::CloseReason;
use crate::registry::Registry;

/// Resolves on SIGTERM or SIGINT, with the signal's name.
pub(crate) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Install the handlers (do this before serving, so no signal is missed).
    pub(crate) fn install() -> std::io::Result<Self> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Wait for the next SIGTERM or SIGINT.
    pub(crate) async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Close every connection with [`CloseReason::GoingAway`], spread evenly over `window` in random
/// order (so reconnects to other nodes arrive as a steady trickle, not a storm). Connections
/// registered while draining are closed at the end. Returns how many were asked to close.
pub(crate) async fn drain(registry: &Registry, window: Duration) -> usize {
    let mut conns = registry.connections();
    conns.shuffle(&mut rand::rng());
    let n = conns.len();
    let start = Instant::now();
    for (i, conn) in conns.iter().enumerate() {
        let at = start + window.mul_f64(i as f64 / n as f64);
        if at > Instant::now() {
            sleep_until(at).await;
        }
        conn.outbox.close(CloseReason::GoingAway);
    }
    let first: std::collections::HashSet<u64> = conns.iter().map(|c| c.id).collect();
    let late: Vec<_> = registry
        .connections()
        .into_iter()
        .filter(|c| !first.contains(&c.id))
        .collect();
    for conn in &late {
        conn.outbox.close(CloseReason::GoingAway);
    }
    n + late.len()
}

/// Wait until every connection has left the registry, at most `limit`. Connections that
/// register meanwhile (admitted before the node stopped accepting, their authentication still
/// under way when the drain ended) are closed too, so that they get 1001 rather than an exit.
pub(crate) async fn wait_closed(registry: &Registry, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while !registry.is_empty() {
        if Instant::now() >= deadline {
            return false;
        }
        // Closing twice is harmless: the first reason wins.
        for conn in registry.connections() {
            conn.outbox.close(CloseReason::GoingAway);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::QueueLimits;
    use crate::registry::{Subscribed, Subscriptions, UserId};

    struct Always;
    impl Subscriptions for Always {
        fn subscribe(&self, _: UserId) -> Subscribed {
            tokio::sync::watch::channel(true).1
        }
        fn unsubscribe(&self, _: UserId) {}
    }

    #[tokio::test]
    async fn a_connection_registered_after_the_drain_is_closed_while_waiting() {
        let limits = QueueLimits {
            max_events: 8,
            max_bytes: 1024,
        };
        let registry = Registry::new(limits, 0, 0);
        assert_eq!(drain(&registry, Duration::ZERO).await, 0);
        let (late, _) = registry.insert(9, &Always).unwrap();
        assert!(!wait_closed(&registry, Duration::from_millis(50)).await);
        assert_eq!(
            late.outbox.take(&mut Vec::new()),
            Some(CloseReason::GoingAway)
        );
    }
}
