//! Plain HTTP clients as applications use them: Python's `urllib` and `requests`, run by the
//! machine's `python3` (`.ci/run` installs `requests` when it is missing).

use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Run a Python script (`python3 -c <script> <args>…`), at most a minute; returns its standard
/// output. Fails when the script fails, naming what to install if `requests` is missing.
pub async fn run(script: &str, args: &[&str]) -> Result<String> {
    let child = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .context("python3 script ran for more than 60 s")?
        .context("running python3 (install it: apt-get install -y python3)")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        if stderr.contains("No module named 'requests'") {
            bail!("python3 lacks the requests package: apt-get install -y python3-requests (or pip install requests)");
        }
        bail!("python3 script failed ({}): {stderr}", output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
