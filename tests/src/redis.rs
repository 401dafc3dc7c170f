//! A private `redis-server` process per test, on a free loopback port.
//!
//! The crate-internal pieces ([`Launch`], [`connect`], [`query`], [`command`]) are shared with
//! the cluster harness ([`crate::cluster`]), whose nodes are [`RedisServer`]s too.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;

use crate::free_port;

/// How a server is started (crate-internal: the cluster harness starts its nodes with it).
#[derive(Clone, Default)]
pub(crate) struct Launch {
    /// `requirepass`.
    pub(crate) password: Option<String>,
    /// Also listen on a unix socket (then [`RedisServer::url`] points there).
    pub(crate) unix: bool,
    /// Extra `redis-server` arguments (e.g. `--cluster-enabled yes`).
    pub(crate) args: Vec<String>,
    /// Run in a private directory (`--dir`, log file `redis.log`), kept across
    /// [`RedisServer::restart`] and removed on drop.
    pub(crate) own_dir: bool,
    /// Picks a candidate port; [`free_port`] when `None`.
    pub(crate) pick_port: Option<fn() -> std::io::Result<u16>>,
    /// Run as a sentinel (`redis-server <dir>/sentinel.conf --sentinel`) with these config
    /// lines (needs `own_dir`; the file is written once, then kept: Sentinel rewrites it).
    pub(crate) sentinel: Option<String>,
}

/// A `redis-server` child process; killed on drop.
pub struct RedisServer {
    port: u16,
    launch: Launch,
    /// Unix socket the server also listens on; [`RedisServer::url`] then points there.
    unix: Option<PathBuf>,
    /// Private working directory (see [`Launch::own_dir`]).
    dir: Option<PathBuf>,
    child: Option<Child>,
}

impl RedisServer {
    /// Start a fresh server. Fails (never skips) when `redis-server` cannot be run.
    pub async fn start() -> Result<RedisServer> {
        Self::launch(Launch::default()).await
    }

    /// Start a fresh server that requires `password` (`requirepass`); [`RedisServer::url`]
    /// carries it.
    pub async fn start_with_password(password: &str) -> Result<RedisServer> {
        Self::launch(Launch {
            password: Some(password.to_owned()),
            ..Launch::default()
        })
        .await
    }

    /// Start a fresh server that also listens on a unix socket; [`RedisServer::url`] is
    /// `unix://<path>`.
    pub async fn start_with_unix_socket() -> Result<RedisServer> {
        Self::launch(Launch {
            unix: true,
            ..Launch::default()
        })
        .await
    }

    /// Start a server as `launch` says, on a new candidate port after each failed attempt.
    pub(crate) async fn launch(launch: Launch) -> Result<RedisServer> {
        let mut last_err = None;
        for _ in 0..5 {
            let port = launch.pick_port.unwrap_or(free_port)()?;
            let unix = launch
                .unix
                .then(|| std::env::temp_dir().join(format!("gp-redis-{port}.sock")));
            let dir = if launch.own_dir {
                Some(private_dir(port)?)
            } else {
                None
            };
            let mut server = RedisServer {
                port,
                launch: launch.clone(),
                unix,
                dir,
                child: None,
            };
            // A failed attempt is dropped here: its process is killed, its directory removed.
            match server.spawn().await {
                Ok(()) => return Ok(server),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
            .context("could not start redis-server (install it: apt-get install -y redis-server)")
    }

    async fn spawn(&mut self) -> Result<()> {
        let mut command = Command::new("redis-server");
        if let (Some(lines), Some(dir)) = (&self.launch.sentinel, &self.dir) {
            let conf = dir.join("sentinel.conf");
            if !conf.exists() {
                std::fs::write(&conf, lines).context("writing sentinel.conf")?;
            }
            command.arg(conf).arg("--sentinel");
        }
        command.args(["--port", &self.port.to_string()]).args([
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]);
        if let Some(password) = &self.launch.password {
            command.args(["--requirepass", password]);
        }
        if let Some(path) = &self.unix {
            command.arg("--unixsocket").arg(path);
            command.args(["--unixsocketperm", "700"]);
        }
        if let Some(dir) = &self.dir {
            command.arg("--dir").arg(dir);
            command.arg("--logfile").arg(dir.join("redis.log"));
        }
        command.args(&self.launch.args);
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning redis-server")?;
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // Our own server answers with our child's pid (not another test's on a reused port).
            if let Ok(info) = self.query_info().await {
                if info.contains(&format!("process_id:{pid}\r")) {
                    return Ok(());
                }
                bail!("port {} is served by another redis-server", self.port);
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    bail!(
                        "redis-server on port {} exited at start: {status}{}",
                        self.port,
                        self.log_tail()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "redis-server did not answer on port {}{}",
                    self.port,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The last lines of the server's log file (when it has a private directory).
    fn log_tail(&self) -> String {
        let Some(dir) = &self.dir else {
            return String::new();
        };
        let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(5)..].join("\n  ");
        format!("; log:\n  {tail}")
    }

    async fn query_info(&self) -> Result<String> {
        query(&self.url(), &["INFO", "server"]).await
    }

    /// `redis://127.0.0.1:<port>/`, with `:<password>@` when the server has one.
    pub fn url(&self) -> String {
        match (&self.unix, &self.launch.password) {
            (Some(path), _) => format!("unix://{}", path.display()),
            (None, Some(password)) => format!("redis://:{password}@127.0.0.1:{}/", self.port),
            (None, None) => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    /// The same server as `user:password@` (after `ACL SETUSER` created that user).
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("redis://{user}:{password}@127.0.0.1:{}/", self.port)
    }

    /// The server's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A new multiplexed connection to this server.
    pub async fn connection(&self) -> Result<MultiplexedConnection> {
        connect(&self.url(), &AsyncConnectionConfig::new()).await
    }

    /// Run one command and return its reply.
    pub async fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> Result<T> {
        query(&self.url(), args).await
    }

    /// PUBLISH raw bytes to a channel; returns the number of receivers.
    pub async fn publish(&self, channel: &str, payload: &[u8]) -> Result<i64> {
        let mut conn = self.connection().await?;
        Ok(redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query_async(&mut conn)
            .await?)
    }

    /// The server's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL the server.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kill (if running) and start again on the same port (data is not kept; a private
    /// directory, e.g. a cluster node's `nodes.conf`, is).
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn().await
    }

    /// Send a signal to the server (e.g. `libc::SIGSTOP` / `libc::SIGCONT` to freeze/thaw it).
    pub fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe {
                libc::kill(pid as i32, sig);
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        self.kill();
        if let Some(path) = &self.unix {
            let _ = std::fs::remove_file(path);
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A new, empty directory under the temp dir, unique to this process and call.
fn private_dir(port: u16) -> Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("gp-redis-{}-{port}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// A new multiplexed connection to `url` (connecting bounded by 2 s).
pub(crate) async fn connect(
    url: &str,
    config: &AsyncConnectionConfig,
) -> Result<MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    let conn = tokio::time::timeout(
        Duration::from_secs(2),
        client.get_multiplexed_async_connection_with_config(config),
    )
    .await
    .with_context(|| format!("connecting to {url} timed out"))??;
    Ok(conn)
}

/// `args` as one command (the first one is its name).
pub(crate) fn command(args: &[&str]) -> redis::Cmd {
    let mut cmd = redis::Cmd::new();
    for a in args {
        cmd.arg(*a);
    }
    cmd
}

/// Run one command on a new connection to `url` and return its reply.
pub(crate) async fn query<T: redis::FromRedisValue>(url: &str, args: &[&str]) -> Result<T> {
    let mut conn = connect(url, &AsyncConnectionConfig::new()).await?;
    Ok(command(args).query_async(&mut conn).await?)
}
