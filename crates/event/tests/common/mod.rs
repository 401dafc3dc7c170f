//! A `redis-server` child process on a free port, shared by the test files that need one.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process, killed on drop.
pub struct RedisServer {
    /// The server process (a test may signal it, e.g. to freeze it).
    pub child: Child,
    port: u16,
}

impl RedisServer {
    /// Starts a server on a free port. Retries with another port if the chosen one was taken by
    /// someone else in the meantime (the server then exits, or another process answers).
    pub fn start() -> RedisServer {
        let mut last_error = String::new();
        for _ in 0..5 {
            match RedisServer::try_start() {
                Ok(server) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("cannot start redis-server: {last_error}");
    }

    fn try_start() -> Result<RedisServer, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free local port: {e}"))?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!("spawning redis-server failed (is it installed and on PATH?): {e}")
            })?;
        let mut server = RedisServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = server.child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!(
                    "redis-server exited early with {status} (port {port})"
                ));
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                // Make sure the server answering is ours, not another test's on a reused port.
                let pid = server_pid(&server.url())?;
                if pid != server.child.id() {
                    return Err(format!("port {port} is served by another process ({pid})"));
                }
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(format!("no connection on port {port} within 10 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A publisher on this server keeping `size` events per user for a minute.
    #[allow(dead_code)] // each test file compiles this module; not all of them publish
    pub async fn history_publisher(&self, size: usize) -> gleepost_event::Publisher {
        gleepost_event::Publisher::connect(&self.url())
            .await
            .unwrap()
            .with_history(gleepost_event::HistoryConfig {
                size,
                ttl: Duration::from_secs(60),
            })
    }
}

/// The `process_id` reported by `INFO server`.
fn server_pid(url: &str) -> Result<u32, String> {
    let mut conn = redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .map_err(|e| format!("connecting to {url}: {e}"))?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut conn)
        .map_err(|e| format!("INFO on {url}: {e}"))?;
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
        .ok_or_else(|| format!("no process_id in INFO from {url}"))
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
