//! The world the faults act on: two gateway nodes on either one `redis-server` (own process,
//! free port; node A reaching it through a [`Forwarder`], node B directly) or a Sentinel
//! deployment (primary, replica, three sentinels: [`RedisSentinel`]). Nodes are replaced when
//! killed or restarted (new ports); clients and the publisher find the current addresses and
//! readiness in an [`AddressBook`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use super::forwarder::Forwarder;
use crate::{http, Gateway, GatewayOptions, RedisSentinel, RedisServer, READY};

/// Names of the node slots (index 0 is behind the forwarder).
pub const NODE_NAMES: [&str; 2] = ["A", "B"];

/// The gateway flags of every node, besides the harness's own (ports, keys, logs), as the
/// report lists them.
pub const NODE_ARGS: [&str; 10] = [
    "--probe-interval",
    "200ms",
    "--probe-timeout",
    "1s",
    "--pong-timeout",
    "5s",
    "--pre-drain-delay",
    "1s",
    "--drain-window",
    "2s",
];

/// Current public and admin address of each node slot (`None` while it is down) and whether
/// its `/readyz` last answered 200.
#[derive(Default)]
pub struct AddressBook {
    nodes: [RwLock<Option<(String, String)>>; 2],
    ready: [AtomicBool; 2],
}

impl AddressBook {
    /// Public address of node `i`, when up.
    pub fn public(&self, i: usize) -> Option<String> {
        let slot = self.nodes[i].read().unwrap_or_else(|p| p.into_inner());
        slot.as_ref().map(|(public, _)| public.clone())
    }

    /// Admin address of node `i`, when up.
    pub fn admin(&self, i: usize) -> Option<String> {
        let slot = self.nodes[i].read().unwrap_or_else(|p| p.into_inner());
        slot.as_ref().map(|(_, admin)| admin.clone())
    }

    /// Node `i` was ready at the last poll.
    pub fn is_ready(&self, i: usize) -> bool {
        self.ready[i].load(Ordering::Relaxed)
    }

    fn set(&self, i: usize, addrs: Option<(String, String)>) {
        if addrs.is_none() {
            self.ready[i].store(false, Ordering::Relaxed);
        }
        *self.nodes[i].write().unwrap_or_else(|p| p.into_inner()) = addrs;
    }
}

/// What the nodes run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// One Redis server, node A behind the forwarder.
    Standalone,
    /// A primary with one replica under three sentinels; the nodes' `--publish-replicas`.
    Sentinel(u32),
}

/// Redis (and the forwarder) or Sentinel, and the two nodes.
pub struct World {
    /// The topology.
    pub topology: Topology,
    /// The Redis server and node A's forwarder to it (standalone).
    pub standalone: Option<(Mutex<RedisServer>, Forwarder)>,
    /// The Sentinel deployment.
    pub sentinel: Option<Mutex<RedisSentinel>>,
    /// The running node of each slot.
    pub nodes: [Mutex<Option<Gateway>>; 2],
    /// Where the nodes are.
    pub book: Arc<AddressBook>,
    monitor: JoinHandle<()>,
}

impl World {
    /// Start the Redis side of `topology` and both nodes, and wait until both are ready.
    pub async fn start(topology: Topology) -> Result<World> {
        let (standalone, sentinel) = match topology {
            Topology::Standalone => {
                let redis = RedisServer::start().await?;
                let upstream: SocketAddr = format!("127.0.0.1:{}", redis.port()).parse()?;
                let forwarder = Forwarder::start(upstream).await?;
                (Some((Mutex::new(redis), forwarder)), None)
            }
            Topology::Sentinel(_) => (None, Some(Mutex::new(RedisSentinel::start(1).await?))),
        };
        let book = Arc::new(AddressBook::default());
        let monitor = tokio::spawn(monitor(book.clone()));
        let world = World {
            topology,
            standalone,
            sentinel,
            nodes: [Mutex::new(None), Mutex::new(None)],
            book,
            monitor,
        };
        for i in 0..2 {
            world.start_node(i).await?;
        }
        Ok(world)
    }

    /// The Redis server and the forwarder (standalone worlds only).
    pub fn redis(&self) -> Result<&(Mutex<RedisServer>, Forwarder)> {
        self.standalone
            .as_ref()
            .context("this fault needs the standalone world")
    }

    async fn options_of(&self, i: usize) -> GatewayOptions {
        let options = match (&self.standalone, &self.sentinel, self.topology) {
            (Some((_, forwarder)), _, _) if i == 0 => GatewayOptions::redis(forwarder.url()),
            (Some((redis, _)), _, _) => GatewayOptions::redis(redis.lock().await.url()),
            (_, Some(sentinel), Topology::Sentinel(replicas)) => {
                GatewayOptions::sentinel(sentinel.lock().await.sentinel_urls_csv())
                    .arg(&["--publish-replicas", &replicas.to_string()])
            }
            _ => GatewayOptions::default(),
        };
        options.arg(&NODE_ARGS)
    }

    /// Start node `i` (replacing a stopped one) and wait until it is ready.
    pub async fn start_node(&self, i: usize) -> Result<()> {
        let options = self.options_of(i).await;
        let gw = Gateway::start_ready(options)
            .await
            .with_context(|| format!("starting node {}", NODE_NAMES[i]))?;
        self.book
            .set(i, Some((gw.public.clone(), gw.admin.clone())));
        *self.nodes[i].lock().await = Some(gw);
        Ok(())
    }

    /// SIGKILL node `i` and wait until it is gone.
    pub async fn kill_node(&self, i: usize) -> Result<()> {
        let mut slot = self.nodes[i].lock().await;
        let mut gw = slot.take().context("node is not running")?;
        self.book.set(i, None);
        gw.signal(libc::SIGKILL);
        gw.wait_exit(Duration::from_secs(10)).await?;
        Ok(())
    }

    /// SIGTERM node `i` and wait for its drain to end and the process to exit 0.
    pub async fn terminate_node(&self, i: usize) -> Result<()> {
        let mut slot = self.nodes[i].lock().await;
        let gw = slot.as_mut().context("node is not running")?;
        gw.signal(libc::SIGTERM);
        // Pre-drain delay + drain window + the exit waits, with margin.
        let status = gw.wait_exit(Duration::from_secs(30)).await?;
        self.book.set(i, None);
        slot.take();
        if !status.success() {
            bail!("node {} exited with {status} after SIGTERM", NODE_NAMES[i]);
        }
        Ok(())
    }

    /// Wait until both nodes are up and ready.
    pub async fn wait_all_ready(&self) -> Result<()> {
        for (i, node) in self.nodes.iter().enumerate() {
            let node = node.lock().await;
            let gw = node.as_ref().context("node is down")?;
            gw.wait_ready(true, READY)
                .await
                .with_context(|| format!("node {}", NODE_NAMES[i]))?;
        }
        Ok(())
    }

    /// Sum of a metric sample over the running nodes.
    pub async fn metric_sum(&self, sample: &str) -> Result<f64> {
        let mut sum = 0.0;
        for node in &self.nodes {
            if let Some(gw) = node.lock().await.as_ref() {
                sum += gw.metric(sample).await?;
            }
        }
        Ok(sum)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.monitor.abort();
    }
}

/// Poll each node's `/readyz` every 100 ms (what a load balancer in front of the admin
/// service would do for the publisher).
async fn monitor(book: Arc<AddressBook>) {
    loop {
        for i in 0..2 {
            let ready = match book.admin(i) {
                Some(admin) => matches!(
                    tokio::time::timeout(
                        Duration::from_secs(1),
                        http::request(&admin, "GET", "/readyz", &[], b"")
                    )
                    .await,
                    Ok(Ok(r)) if r.status == 200
                ),
                None => false,
            };
            book.ready[i].store(ready && book.admin(i).is_some(), Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
