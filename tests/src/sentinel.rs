//! A private Redis Sentinel deployment per test: one primary and its replicas
//! (`redis-server --replicaof`) and three sentinels (`redis-server sentinel.conf --sentinel`)
//! monitoring them as [`MASTER`], all on free loopback ports, with short down-after and
//! failover timeouts so a failover takes a few seconds. Killed on drop.
//!
//! Who is primary is answered by the sentinels and checked with `ROLE`, so it stays true
//! after failovers; the operations that change it return once the change is complete.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use redis::Value;

use crate::eventually;
use crate::redis::{query, Launch};
use crate::RedisServer;

/// The master name the sentinels monitor.
pub const MASTER: &str = "gpmaster";
/// `down-after-milliseconds`: a dead primary is failed over a few seconds after it died.
pub const DOWN_AFTER_MS: u64 = 1000;
/// How long a failover may take at most.
const SETTLE: Duration = Duration::from_secs(40);
/// How long the sentinels may take to turn a restarted former primary into a replica. A
/// sentinel sends `REPLICAOF` only after its `INFO` poll of the node (every 10 s) has seen it
/// report `master` for more than 8 s while up, and while its view of the new primary is fresh
/// (an `INFO` reply within 20 s): ≈ 20 s on an idle machine, and one clean-clone CI run on a
/// loaded one exceeded 40 s.
const REPLICA_RETURN: Duration = Duration::from_secs(120);

/// A running Sentinel deployment (see the module documentation).
pub struct RedisSentinel {
    /// Data nodes; index 0 started as the primary.
    data: Vec<RedisServer>,
    sentinels: Vec<RedisServer>,
}

impl RedisSentinel {
    /// Start a primary with `replicas` replicas and three sentinels, and wait until every
    /// replica is in sync and every sentinel knows every replica and the other sentinels.
    pub async fn start(replicas: usize) -> Result<RedisSentinel> {
        Self::start_with(replicas, None).await
    }

    /// [`RedisSentinel::start`] with data nodes that require `password` (`requirepass`,
    /// `masterauth`; the sentinels get `auth-pass`).
    pub async fn start_with(replicas: usize, password: Option<&str>) -> Result<RedisSentinel> {
        let primary = RedisServer::launch(data_launch(None, password)).await?;
        let mut data = vec![primary];
        for _ in 0..replicas {
            let launch = data_launch(Some(data[0].port()), password);
            data.push(RedisServer::launch(launch).await?);
        }
        let auth = password
            .map(|p| format!("sentinel auth-pass {MASTER} {p}\n"))
            .unwrap_or_default();
        let primary_port = data[0].port();
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let conf = format!(
                "bind 127.0.0.1\n\
                 sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\n\
                 sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n\
                 sentinel failover-timeout {MASTER} 4000\n\
                 sentinel parallel-syncs {MASTER} 1\n{auth}"
            );
            let launch = Launch {
                own_dir: true,
                sentinel: Some(conf),
                ..Launch::default()
            };
            sentinels.push(RedisServer::launch(launch).await?);
        }
        let deployment = RedisSentinel { data, sentinels };
        deployment.settled().await?;
        Ok(deployment)
    }

    /// The sentinels' URLs, comma separated (`REDIS_SENTINEL_URLS`).
    pub fn sentinel_urls_csv(&self) -> String {
        let urls: Vec<String> = self.sentinels.iter().map(|s| s.url()).collect();
        urls.join(",")
    }

    /// Data node `i` (0 started as the primary).
    pub fn node(&self, i: usize) -> &RedisServer {
        &self.data[i]
    }

    /// The index of the data node the sentinels name as primary and whose `ROLE` is `master`.
    pub async fn primary(&self) -> Result<usize> {
        let port = self.named_primary_port().await?;
        let i = self
            .data
            .iter()
            .position(|d| d.port() == port)
            .with_context(|| format!("the sentinels name port {port}, not one of ours"))?;
        ensure!(
            self.role(i).await? == "master",
            "the sentinels name node {i} as primary but its ROLE is not master"
        );
        Ok(i)
    }

    /// `ROLE` of data node `i` (`master` or `slave`).
    pub async fn role(&self, i: usize) -> Result<String> {
        let reply: Value = self.data[i].cmd(&["ROLE"]).await?;
        match reply {
            Value::Array(items) => match items.into_iter().next() {
                Some(Value::BulkString(b)) => Ok(String::from_utf8(b)?),
                other => bail!("unexpected ROLE reply {other:?}"),
            },
            other => bail!("unexpected ROLE reply {other:?}"),
        }
    }

    /// Send `sig` to every sentinel (`SIGSTOP`: they accept connections but answer nothing).
    pub fn signal_sentinels(&self, sig: i32) {
        for s in &self.sentinels {
            s.signal(sig);
        }
    }

    /// SIGKILL every sentinel (the data nodes keep running).
    pub fn kill_sentinels(&mut self) {
        for s in &mut self.sentinels {
            s.kill();
        }
    }

    /// SIGKILL the current primary; returns its index.
    pub async fn kill_primary(&mut self) -> Result<usize> {
        let i = self.primary().await?;
        self.data[i].kill();
        Ok(i)
    }

    /// Ask a sentinel for a failover (`SENTINEL FAILOVER`): the primary stays up and is demoted
    /// to a replica of the promoted one. Returns the old primary's index once the switch is
    /// complete and it answers as a replica.
    pub async fn manual_failover(&self) -> Result<usize> {
        let old = self.primary().await?;
        let _: Value = self.sentinels[0]
            .cmd(&["SENTINEL", "FAILOVER", MASTER])
            .await
            .context("SENTINEL FAILOVER")?;
        self.wait_failover(old).await?;
        eventually(SETTLE, "the old primary is demoted", || async {
            ensure!(self.role(old).await? == "slave", "still a primary");
            Ok(())
        })
        .await?;
        Ok(old)
    }

    /// Wait until the sentinels name a primary other than node `old` and it answers as
    /// `master`; returns its index.
    pub async fn wait_failover(&self, old: usize) -> Result<usize> {
        eventually(SETTLE, "sentinel failover", || async {
            let i = self.primary().await?;
            ensure!(i != old, "node {old} is still the primary");
            Ok(i)
        })
        .await
    }

    /// Restart data node `i` as it was started (a former primary starts as a primary with no
    /// data) and wait until the sentinels turned it into a replica in sync with the primary.
    pub async fn restart_as_replica(&mut self, i: usize) -> Result<()> {
        self.data[i].restart().await?;
        eventually(
            REPLICA_RETURN,
            "the restarted node becomes a replica",
            || async {
                let reply: String = self.data[i].cmd(&["INFO", "replication"]).await?;
                ensure!(reply.contains("role:slave"), "not a replica yet");
                ensure!(
                    reply.contains("master_link_status:up"),
                    "replica link not up yet"
                );
                Ok(())
            },
        )
        .await
    }

    /// Number of commands of type `command` (e.g. `evalsha`) node `i` has run
    /// (`INFO commandstats`).
    pub async fn calls(&self, i: usize, command: &str) -> Result<u64> {
        let info: String = self.data[i].cmd(&["INFO", "commandstats"]).await?;
        let prefix = format!("cmdstat_{command}:calls=");
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0))
    }

    /// The port the sentinels (a majority of those answering) name as primary.
    async fn named_primary_port(&self) -> Result<u16> {
        let mut votes: Vec<u16> = Vec::new();
        for s in &self.sentinels {
            let asked = query::<Option<(String, u16)>>(
                &s.url(),
                &["SENTINEL", "get-master-addr-by-name", MASTER],
            )
            .await;
            if let Ok(Some((_, port))) = asked {
                votes.push(port);
            }
        }
        let Some(&first) = votes.first() else {
            bail!("no sentinel names a primary");
        };
        ensure!(
            votes.iter().all(|&p| p == first) && votes.len() >= 2,
            "the sentinels disagree or too few answer: {votes:?}"
        );
        Ok(first)
    }

    /// Every replica in sync; every sentinel sees every replica and the other two sentinels.
    async fn settled(&self) -> Result<()> {
        let replicas = self.data.len() - 1;
        eventually(SETTLE, "sentinel deployment settles", || async {
            let info: String = self.data[0].cmd(&["INFO", "replication"]).await?;
            let online = info.matches("state=online").count();
            ensure!(online == replicas, "{online} of {replicas} replicas online");
            for s in &self.sentinels {
                let seen: Vec<Value> = s.cmd(&["SENTINEL", "replicas", MASTER]).await?;
                ensure!(
                    seen.len() == replicas,
                    "a sentinel sees {} replicas",
                    seen.len()
                );
                let peers: Vec<Value> = s.cmd(&["SENTINEL", "sentinels", MASTER]).await?;
                ensure!(peers.len() == 2, "a sentinel sees {} peers", peers.len());
            }
            Ok(())
        })
        .await
    }
}

/// A data node: a private directory (so a restart keeps its port and state of replication
/// config), replicating from `primary` when given.
fn data_launch(primary: Option<u16>, password: Option<&str>) -> Launch {
    let mut args = Vec::new();
    if let Some(port) = primary {
        args.extend([
            "--replicaof".to_string(),
            "127.0.0.1".to_string(),
            port.to_string(),
        ]);
    }
    if let Some(password) = password {
        args.extend(["--masterauth".to_string(), password.to_string()]);
    }
    Launch {
        own_dir: true,
        password: password.map(str::to_string),
        args,
        ..Launch::default()
    }
}
