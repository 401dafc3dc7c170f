//! The gateway binary run as an operator runs its one-shot subcommands (`publish`, `client`,
//! `token`): a clean environment, bounded, its output once it exits.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::gateway::gateway_binary;

/// `gleepost-gateway <args>` as an operator would run it: with `env` on top of an environment
/// without any Redis, dev mode, colour or backtrace settings; its output once it exits (at most
/// 30 s; killed beyond).
pub async fn gateway_command(args: &[&str], env: &[(&str, &str)]) -> Result<std::process::Output> {
    let mut command = tokio::process::Command::new(gateway_binary()?);
    command.args(args);
    for name in [
        "REDIS_URL",
        "REDIS_CLUSTER_URLS",
        "REDIS_SENTINEL_URLS",
        "REDIS_SENTINEL_MASTER",
        "GATEWAY_DEV",
        "NO_COLOR",
        "RUST_BACKTRACE",
        "RUST_LIB_BACKTRACE",
    ] {
        command.env_remove(name);
    }
    command
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .with_context(|| format!("`gleepost-gateway {}` did not finish", args.join(" ")))?
        .context("running gleepost-gateway")
}

/// Run `gleepost-gateway publish --users <users> --event <event>` with `env` (e.g. `REDIS_URL`
/// or `REDIS_CLUSTER_URLS`), like an operator would; fails unless it succeeds.
pub async fn publish_subcommand(env: &[(&str, &str)], users: &[u64], event: &str) -> Result<()> {
    let users: Vec<String> = users.iter().map(u64::to_string).collect();
    let users = users.join(",");
    let output = gateway_command(&["publish", "--users", &users, "--event", event], env).await?;
    if !output.status.success() {
        bail!(
            "`gleepost-gateway publish` failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
