//! Running the `gleepost-loadgen` binary (built next to the gateway binary) and reading its
//! JSON report.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::credentials::{API_KEY, JWT_SECRET};
use crate::gateway::built_binary;

/// Path of the load generator built by `cargo build` in the same target directory as the
/// gateway binary (the Makefile builds every binary before the tests).
pub fn loadgen_binary() -> Result<PathBuf> {
    built_binary("gleepost-loadgen")
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
