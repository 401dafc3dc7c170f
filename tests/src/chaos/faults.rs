//! The faults, each injected into a running [`World`] while the publisher and the sessions go
//! on. [`Fault::inject`] returns when the fault's cause is removed (the heal); the suite then
//! waits for the sessions to settle. To add a fault: a variant, its name, its description for
//! the report, its injection, and a place in the plans of [`super::Plan`].

use std::time::Duration;

use anyhow::{ensure, Context, Result};

use super::clients::SessionHandle;
use super::world::{Topology, World};
use crate::eventually;

/// One fault.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Nothing: the steady state, for comparison.
    Baseline(Duration),
    /// `CLIENT KILL TYPE pubsub` on Redis (both nodes' subscriptions), `times` times, `gap` apart.
    PubsubKill {
        /// How many kills.
        times: u32,
        /// Time between kills.
        gap: Duration,
    },
    /// Redis SIGKILLed and started again on its port without its data (no persistence), after
    /// `down`.
    RedisRestartEmpty {
        /// Time Redis stays down.
        down: Duration,
    },
    /// Node A and Redis partitioned by the forwarder for this long.
    Partition(Duration),
    /// Node B SIGKILLed; restarted (new ports) after `down`.
    NodeKill {
        /// Time the node stays down.
        down: Duration,
    },
    /// SIGTERM to each node in turn; each is restarted once it has drained and exited.
    RollingTerm,
    /// One session stops reading until the gateway has closed it, then reads again and resumes.
    SlowConsumer,
    /// Sentinel world with this `--publish-replicas`: the primary SIGKILLed, the sentinels
    /// promote the replica; the old primary is then restarted and becomes a replica.
    SentinelFailover {
        /// The nodes' `--publish-replicas`.
        publish_replicas: u32,
    },
}

/// Slow-consumer closes and pong timeouts, the two ways a node drops a client that stopped
/// reading.
const DROPPED_READERS: [&str; 2] = [
    "gleepost_gateway_connections_closed_total{reason=\"slow_consumer\"}",
    "gleepost_gateway_connections_closed_total{reason=\"pong_timeout\"}",
];

impl Fault {
    /// The ledger line's name.
    pub fn name(&self) -> String {
        match self {
            Fault::Baseline(_) => "baseline (no fault)".into(),
            Fault::PubsubKill { times, .. } => format!("pub/sub connections killed ×{times}"),
            Fault::RedisRestartEmpty { .. } => "Redis restarted empty".into(),
            Fault::Partition(d) => format!("{} s partition node A ↔ Redis", d.as_secs()),
            Fault::NodeKill { .. } => "gateway node SIGKILL".into(),
            Fault::RollingTerm => "rolling SIGTERM of every node".into(),
            Fault::SlowConsumer => "one client stops reading".into(),
            Fault::SentinelFailover { publish_replicas } => {
                format!(
                    "Sentinel failover (primary SIGKILL), --publish-replicas {publish_replicas}"
                )
            }
        }
    }

    /// The world it needs.
    pub fn topology(&self) -> Topology {
        match self {
            Fault::SentinelFailover { publish_replicas } => Topology::Sentinel(*publish_replicas),
            _ => Topology::Standalone,
        }
    }

    /// What the fault does, for the report.
    pub fn description(&self) -> String {
        match self {
            Fault::Baseline(d) => format!(
                "{} s of the steady stream without any fault: the reference for the latency columns.",
                d.as_secs()
            ),
            Fault::PubsubKill { times, gap } => format!(
                "`CLIENT KILL TYPE pubsub` on Redis {times} time(s), {} s apart: both nodes lose their \
                 subscription connection (node A's through the forwarder), reconnect, resubscribe \
                 and repair the gap from history; clients stay connected.",
                gap.as_secs_f64()
            ),
            Fault::RedisRestartEmpty { down } => format!(
                "Redis SIGKILLed and, after {} s, started again on the same port without its data \
                 (no RDB, no AOF): every history and epoch is gone, so the events acknowledged before \
                 cannot be replayed; clients must get `resync` (new epoch), never a silent gap.",
                down.as_secs_f64()
            ),
            Fault::Partition(d) => format!(
                "The forwarder between node A and Redis stops moving bytes for {} s, in both \
                 directions, without closing any connection (no packet answered, no reset); node A's \
                 probe fails, it turns unready and tries new connections, which hang too. Then the \
                 forwarder delivers what it held and forwards again.",
                d.as_secs()
            ),
            Fault::NodeKill { down } => format!(
                "Node B SIGKILLed (no drain, its clients see the TCP connection end), started again \
                 after {} s on new ports; its clients reconnect to node A with `since`.",
                down.as_secs_f64()
            ),
            Fault::RollingTerm => "SIGTERM to node A, wait for its drain (1 s pre-drain, 2 s window, \
                 close 1001) and exit 0, start it again; then the same for node B. Clients move with \
                 `since` to the other node each time."
                .into(),
            Fault::SlowConsumer => "One session (user 11 on node B, 4 KiB socket receive buffer, \
                 events of 16 KB) stops reading; the node closes it (slow consumer 4000, or the write \
                 deadline); then it reads what it had, reconnects with `since` and resumes. Every other \
                 session goes on reading."
                .into(),
            Fault::SentinelFailover { publish_replicas } => format!(
                "Own world: a primary with one replica under three sentinels (down-after 1 s, \
                 failover timeout 4 s), both nodes with `REDIS_SENTINEL_URLS` and \
                 `--publish-replicas {publish_replicas}`. The primary is SIGKILLed; the sentinels \
                 promote the replica and the nodes follow it (+switch-master), resubscribe and repair \
                 from history; then the old primary is restarted and the sentinels make it a replica. \
                 {}",
                if *publish_replicas == 0 {
                    "With 0 an event acknowledged just before the kill may not have reached the \
                     replica: its clients must get `resync` for it, never a silent gap."
                } else {
                    "With 1 every acknowledged event is on the replica before the 200, so every one \
                     must arrive; publishes get 503 while no replica is in sync."
                }
            ),
        }
    }

    /// Inject the fault; returns once its cause is removed, with what was observed on the way
    /// (for the report).
    pub async fn inject(&self, world: &World, slow: &SessionHandle) -> Result<Option<String>> {
        match self {
            Fault::Baseline(d) => tokio::time::sleep(*d).await,
            Fault::PubsubKill { times, gap } => {
                let mut total = 0;
                for k in 0..*times {
                    if k > 0 {
                        tokio::time::sleep(*gap).await;
                        world.wait_all_ready().await?;
                    }
                    let killed: i64 = world
                        .redis()?
                        .0
                        .lock()
                        .await
                        .cmd(&["CLIENT", "KILL", "TYPE", "pubsub"])
                        .await?;
                    ensure!(
                        killed >= 2,
                        "killed {killed} pub/sub connections, expected 2"
                    );
                    total += killed;
                }
                return Ok(Some(format!("{total} pub/sub connections killed in all")));
            }
            Fault::RedisRestartEmpty { down } => {
                let mut redis = world.redis()?.0.lock().await;
                redis.kill();
                tokio::time::sleep(*down).await;
                redis.restart().await.context("restarting Redis")?;
            }
            Fault::Partition(d) => {
                let forwarder = &world.redis()?.1;
                forwarder.partition();
                tokio::time::sleep(*d).await;
                forwarder.heal();
            }
            Fault::NodeKill { down } => {
                world.kill_node(1).await?;
                tokio::time::sleep(*down).await;
                world.start_node(1).await?;
            }
            Fault::RollingTerm => {
                for i in 0..2 {
                    world.terminate_node(i).await?;
                    world.start_node(i).await?;
                }
            }
            Fault::SlowConsumer => {
                let before = dropped_readers(world).await?;
                let paused = std::time::Instant::now();
                slow.pause(true);
                let closed = eventually(Duration::from_secs(60), "slow client closed", || async {
                    let now = dropped_readers(world).await?;
                    ensure!(
                        now.iter().sum::<f64>() > before.iter().sum(),
                        "not closed yet"
                    );
                    Ok(now)
                })
                .await;
                slow.pause(false);
                let now = closed?;
                return Ok(Some(format!(
                    "the session was closed by the node {:.1} s after it stopped reading (slow_consumer +{}, \
                     pong_timeout +{})",
                    paused.elapsed().as_secs_f64(),
                    now[0] - before[0],
                    now[1] - before[1]
                )));
            }
            Fault::SentinelFailover { .. } => {
                let sentinel = world
                    .sentinel
                    .as_ref()
                    .context("this fault needs the Sentinel world")?;
                let mut sentinel = sentinel.lock().await;
                let killed = std::time::Instant::now();
                let old = sentinel.kill_primary().await?;
                let new = sentinel.wait_failover(old).await?;
                let promoted = killed.elapsed();
                sentinel.restart_as_replica(old).await?;
                return Ok(Some(format!(
                    "data node {new} promoted {:.1} s after the primary (node {old}) was killed; \
                     node {old} back as a replica after {:.1} s",
                    promoted.as_secs_f64(),
                    killed.elapsed().as_secs_f64()
                )));
            }
        }
        Ok(None)
    }
}

async fn dropped_readers(world: &World) -> Result<[f64; 2]> {
    let mut out = [0.0; 2];
    for (value, sample) in out.iter_mut().zip(DROPPED_READERS) {
        *value = world.metric_sum(sample).await?;
    }
    Ok(out)
}
