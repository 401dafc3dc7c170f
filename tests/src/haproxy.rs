//! A real HAProxy (Debian's `haproxy` package) in front of two gateway nodes, running the
//! configuration docs/operations.md recommends: the file `docs/haproxy.cfg` itself, unchanged.
//! That file takes its addresses from the environment (HAProxy expands `"${VAR}"`), so the test
//! fills in ports without rewriting a line and the documented text cannot drift from the tested
//! one.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use gleepost_tests::haproxy::{two_nodes, HaProxy};
//! use gleepost_tests::sse::{sse_path, SseStream};
//! let redis = gleepost_tests::RedisServer::start().await?;
//! let nodes = two_nodes(&redis).await?; // or any two `Gateway`s on one Redis
//! let lb = HaProxy::start([&nodes[0], &nodes[1]]).await?; // once both are UP behind it
//! let ws = gleepost_tests::Client::connect(&lb.ws_url(7)).await?;
//! let sse = SseStream::connect(&lb.public, &sse_path(7, None), &[]).await?;
//! nodes[0].publish(&[7], r#"{"type":"typing","data":{}}"#).await?;
//! # Ok(()) }
//! ```
//!
//! The nodes are `node1` and `node2` (in the order given) in HAProxy's backend `gateway`; a node
//! restarted on the same addresses ([`crate::GatewayOptions::listen`]) is the same server.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::eventually;
use crate::{free_port, token, Gateway, GatewayOptions, RedisServer};

/// Name of HAProxy's backend of gateway nodes in `docs/haproxy.cfg`.
pub const BACKEND: &str = "gateway";
/// Server names of the nodes, in the order [`HaProxy::start`] takes them.
pub const NODES: [&str; 2] = ["node1", "node2"];
/// Bound on waits for HAProxy itself (start, both nodes UP).
const START: Duration = Duration::from_secs(20);

/// Options of a node behind the balancer on `redis`: a quick readiness probe (100 ms), a short
/// drain window (3 s), and the default pre-drain delay (5 s), which the recommended health-check
/// timing must fit in. Restart a node with `.listen(&old.public, &old.admin)` added.
pub fn node_options(redis: &RedisServer) -> GatewayOptions {
    GatewayOptions::redis(redis.url())
        .fast_probes()
        .arg(&["--drain-window", "3s"])
}

/// Two ready nodes with [`node_options`] on one Redis, for [`HaProxy::start`].
pub async fn two_nodes(redis: &RedisServer) -> Result<[Gateway; 2]> {
    let (a, b) = Gateway::start_two_ready(node_options(redis), node_options(redis)).await?;
    Ok([a, b])
}

/// The recommended configuration file (`docs/haproxy.cfg` of this repository).
pub fn config_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/haproxy.cfg")
}

/// What HAProxy's runtime API says about one server of the backend (`show stat`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStat {
    /// `node1`, `node2`.
    pub name: String,
    /// `UP`, `DOWN`, `UP 1/2` (going down), `DOWN 1/2` (coming up), `MAINT`, …
    pub status: String,
    /// Result of the last health check, e.g. `L7OK`, `L7STS` (bad HTTP status), `L4CON`
    /// (connection refused).
    pub check_status: String,
    /// HTTP status of the last health check (empty when there was none).
    pub check_code: String,
    /// Connections to this server right now.
    pub sessions: u64,
    /// Connections to this server since HAProxy started.
    pub total_sessions: u64,
}

/// A running `haproxy -f docs/haproxy.cfg -db`; killed on drop.
pub struct HaProxy {
    child: Child,
    /// Where clients connect (`127.0.0.1:port`).
    pub public: String,
    dir: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
}

impl HaProxy {
    /// Start HAProxy on a free loopback port in front of `nodes` (`node1`, `node2`) and return
    /// once both are UP behind it (their `/readyz` passed its health checks). Fails with a clear
    /// message, never skips, when `haproxy` is not installed.
    pub async fn start(nodes: [&Gateway; 2]) -> Result<HaProxy> {
        let mut last_err = None;
        for _ in 0..5 {
            match Self::spawn(nodes).await {
                Ok(lb) => {
                    lb.wait_status(&NODES, "UP", START).await?;
                    return Ok(lb);
                }
                // Not installed: no other port will help.
                Err(e) if e.downcast_ref::<std::io::Error>().is_some() => return Err(e),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
    }

    /// One attempt: a new port, a new process; returns once the runtime API answers.
    async fn spawn(nodes: [&Gateway; 2]) -> Result<HaProxy> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let port = free_port()?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("gp-haproxy-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let public = format!("127.0.0.1:{port}");
        let mut command = Command::new("haproxy");
        command
            .arg("-f")
            .arg(config_path())
            .arg("-db")
            .env("GP_LISTEN", &public)
            .env("GP_STATS_SOCKET", dir.join("admin.sock"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (i, node) in nodes.iter().enumerate() {
            let admin_port = node
                .admin
                .rsplit_once(':')
                .map(|(_, p)| p)
                .context("admin address without a port")?;
            command
                .env(format!("GP_NODE{}", i + 1), &node.public)
                .env(format!("GP_NODE{}_ADMIN_PORT", i + 1), admin_port);
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e).context(
                    "could not run haproxy (install it: \
                     apt-get install -y --no-install-recommends haproxy; .ci/run does)",
                );
            }
        };
        let logs = Arc::new(Mutex::new(Vec::new()));
        collect(child.stdout.take(), &logs);
        collect(child.stderr.take(), &logs);
        let mut lb = HaProxy {
            child,
            public,
            dir,
            logs,
        };
        let deadline = Instant::now() + START;
        loop {
            let error = match lb.stats().await {
                Ok(_) => return Ok(lb),
                Err(e) => e,
            };
            let exited = lb.child.try_wait()?;
            if exited.is_some() || Instant::now() > deadline {
                bail!(
                    "haproxy did not start (exit status {exited:?}; runtime API: {error:#}); \
                     its output:\n{}",
                    lb.logs().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `ws://<balancer>/ws` without credentials.
    pub fn ws_base(&self) -> String {
        format!("ws://{}/ws", self.public)
    }

    /// `ws://<balancer>/ws?access_token=<jwt for user>`.
    pub fn ws_url(&self, user: u64) -> String {
        format!("{}?access_token={}", self.ws_base(), token(user))
    }

    /// Every server of the backend, as the runtime API's `show stat` reports it.
    pub async fn stats(&self) -> Result<Vec<ServerStat>> {
        let csv = self.runtime("show stat").await?;
        let mut lines = csv.lines();
        let header = lines
            .next()
            .and_then(|l| l.strip_prefix("# "))
            .with_context(|| format!("unexpected `show stat` output: {csv:.200}"))?;
        let columns: Vec<&str> = header.split(',').collect();
        let col = |name: &str| {
            columns
                .iter()
                .position(|c| *c == name)
                .with_context(|| format!("`show stat` has no column {name}"))
        };
        let (px, sv, status) = (col("pxname")?, col("svname")?, col("status")?);
        let (check, code) = (col("check_status")?, col("check_code")?);
        let (scur, stot) = (col("scur")?, col("stot")?);
        let mut servers = Vec::new();
        for line in lines.filter(|l| !l.is_empty()) {
            let fields: Vec<&str> = line.split(',').collect();
            let field = |i: usize| fields.get(i).copied().unwrap_or_default();
            if field(px) != BACKEND || matches!(field(sv), "BACKEND" | "FRONTEND") {
                continue;
            }
            servers.push(ServerStat {
                name: field(sv).to_owned(),
                status: field(status).to_owned(),
                check_status: field(check).trim_start_matches('*').to_owned(),
                check_code: field(code).to_owned(),
                sessions: field(scur).parse().unwrap_or(0),
                total_sessions: field(stot).parse().unwrap_or(0),
            });
        }
        ensure!(!servers.is_empty(), "no server of {BACKEND} in `show stat`");
        Ok(servers)
    }

    /// The stat of server `name` (`node1`, `node2`).
    pub async fn server(&self, name: &str) -> Result<ServerStat> {
        self.stats()
            .await?
            .into_iter()
            .find(|s| s.name == name)
            .with_context(|| format!("no server {name} in {BACKEND}"))
    }

    /// Wait (bounded by `limit`) until every server in `names` has `status` (`"UP"`, `"DOWN"`).
    pub async fn wait_status(&self, names: &[&str], status: &str, limit: Duration) -> Result<()> {
        let what = format!("{names:?} {status} behind haproxy");
        eventually(limit, &what, || async {
            let stats = self.stats().await?;
            for name in names {
                let stat = stats
                    .iter()
                    .find(|s| s.name == *name)
                    .with_context(|| format!("no server {name}"))?;
                ensure!(stat.status == status, "{name} is {stat:?}");
            }
            Ok(())
        })
        .await
    }

    /// Send one command to the runtime API (the `stats socket`) and return its answer.
    pub async fn runtime(&self, command: &str) -> Result<String> {
        tokio::time::timeout(Duration::from_secs(5), async {
            let mut socket = UnixStream::connect(self.dir.join("admin.sock")).await?;
            socket.write_all(format!("{command}\n").as_bytes()).await?;
            let mut answer = String::new();
            socket.read_to_string(&mut answer).await?;
            Ok::<_, anyhow::Error>(answer)
        })
        .await
        .with_context(|| format!("haproxy runtime API: `{command}` timed out"))?
    }

    /// HAProxy's output so far (its log lines: one per request or tunnel, and its alerts).
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Append every line of `pipe` to `logs`, on a thread of its own.
fn collect(pipe: Option<impl Read + Send + 'static>, logs: &Arc<Mutex<Vec<String>>>) {
    let Some(pipe) = pipe else { return };
    let logs = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            logs.lock().unwrap_or_else(|p| p.into_inner()).push(line);
        }
    });
}
