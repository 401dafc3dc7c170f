//! A private `redis-server` process per test, on a free loopback port.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::free_port;

/// A `redis-server` child process; killed on drop.
pub struct RedisServer {
    port: u16,
    /// `requirepass` of the server, when it has one.
    password: Option<String>,
    /// Unix socket the server also listens on; [`RedisServer::url`] then points there.
    unix: Option<std::path::PathBuf>,
    child: Option<Child>,
}

impl RedisServer {
    /// Start a fresh server. Fails (never skips) when `redis-server` cannot be run.
    pub async fn start() -> Result<RedisServer> {
        Self::start_inner(None, false).await
    }

    /// Start a fresh server that requires `password` (`requirepass`); [`RedisServer::url`]
    /// carries it.
    pub async fn start_with_password(password: &str) -> Result<RedisServer> {
        Self::start_inner(Some(password.to_owned()), false).await
    }

    /// Start a fresh server that also listens on a unix socket; [`RedisServer::url`] is
    /// `unix://<path>`.
    pub async fn start_with_unix_socket() -> Result<RedisServer> {
        Self::start_inner(None, true).await
    }

    async fn start_inner(password: Option<String>, unix: bool) -> Result<RedisServer> {
        let mut last_err = None;
        for _ in 0..5 {
            let port = free_port()?;
            let password = password.clone();
            let unix = unix.then(|| std::env::temp_dir().join(format!("gp-redis-{port}.sock")));
            let mut server = RedisServer {
                port,
                password,
                unix,
                child: None,
            };
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
        command.args(["--port", &self.port.to_string()]).args([
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]);
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        if let Some(path) = &self.unix {
            command.arg("--unixsocket").arg(path);
            command.args(["--unixsocketperm", "700"]);
        }
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
                    bail!("redis-server exited at start: {status}");
                }
            }
            if Instant::now() > deadline {
                bail!("redis-server did not answer on port {}", self.port);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn query_info(&self) -> Result<String> {
        let mut conn = self.connection().await?;
        Ok(redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await?)
    }

    /// `redis://127.0.0.1:<port>/`, with `:<password>@` when the server has one.
    pub fn url(&self) -> String {
        match (&self.unix, &self.password) {
            (Some(path), _) => format!("unix://{}", path.display()),
            (None, Some(password)) => format!("redis://:{password}@127.0.0.1:{}/", self.port),
            (None, None) => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    /// The same server as `user:password@` (after `ACL SETUSER` created that user).
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("redis://{user}:{password}@127.0.0.1:{}/", self.port)
    }

    /// A new multiplexed connection to this server.
    pub async fn connection(&self) -> Result<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.url())?;
        let conn = tokio::time::timeout(
            Duration::from_secs(2),
            client.get_multiplexed_async_connection(),
        )
        .await
        .context("connecting to redis timed out")??;
        Ok(conn)
    }

    /// Run one command and return its reply.
    pub async fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> Result<T> {
        let mut conn = self.connection().await?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        Ok(cmd.query_async(&mut conn).await?)
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

    /// Kill (if running) and start again on the same port (data is not kept).
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
    }
}
