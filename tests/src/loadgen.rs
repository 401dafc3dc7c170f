//! Running the `gleepost-loadgen` binary (built next to the gateway binary) and reading its
//! JSON report; the `lean-forwarder` baseline it is measured against.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::credentials::{API_KEY, JWT_SECRET};
use crate::eventually;
use crate::gateway::built_binary;

/// Path of the load generator built by `cargo build` in the same target directory as the
/// gateway binary (the Makefile builds every binary before the tests).
pub fn loadgen_binary() -> Result<PathBuf> {
    built_binary("gleepost-loadgen")
}

/// A `lean-forwarder` process (crates/lean-forwarder, the benchmarks' baseline: WebSocket plus
/// one Redis subscription, JWT not verified) on a free loopback port; killed on drop.
pub struct LeanForwarder {
    child: tokio::process::Child,
    port: u16,
}

impl LeanForwarder {
    /// Starts one subscribed to `redis_url` and waits until it accepts connections.
    pub async fn start(redis_url: &str) -> Result<LeanForwarder> {
        let port = crate::free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let child = tokio::process::Command::new(built_binary("lean-forwarder")?)
            .args(["--listen", &listen, "--redis-url", redis_url])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("spawning lean-forwarder")?;
        let mut forwarder = LeanForwarder { child, port };
        eventually(
            Duration::from_secs(15),
            "lean-forwarder listening",
            || async {
                tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                Ok(())
            },
        )
        .await?;
        if let Some(status) = forwarder.child.try_wait()? {
            bail!("lean-forwarder exited: {status}");
        }
        Ok(forwarder)
    }

    /// Its WebSocket URL.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// Runs `gleepost-loadgen <args> --json -` with the test gateways' credentials, bounded by
/// `limit`, and returns its JSON report (fails on a non-zero exit).
pub async fn run_json(args: &[&str], limit: Duration) -> Result<serde_json::Value> {
    let child = tokio::process::Command::new(loadgen_binary()?)
        .args(args)
        .args(["--json", "-"])
        .env("GATEWAY_JWT_SECRET", JWT_SECRET)
        .env("GATEWAY_API_KEY", API_KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("spawning gleepost-loadgen")?;
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .context("gleepost-loadgen did not finish in time")??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("gleepost-loadgen failed ({}): {stderr}", out.status);
    }
    eprintln!("{stderr}");
    serde_json::from_slice(&out.stdout).context("gleepost-loadgen printed no JSON report")
}
