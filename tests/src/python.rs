//! Plain HTTP clients as applications use them: Python's `urllib` and `requests`, run by the
//! machine's `python3` (`.ci/run` installs `requests` when it is missing); and virtual
//! environments with pinned packages from PyPI for Python tools ([`venv`]).

use std::path::{Path, PathBuf};
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

/// Longest time creating a virtual environment and installing its packages may take.
const INSTALL_LIMIT: Duration = Duration::from_secs(600);

static VENV_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A Python virtual environment `target/python/<name>` with exactly the packages of
/// `requirements` (a pip requirements file), created with the machine's `python3` and installed
/// from PyPI on first use, again whenever the file changes. Returns the environment's `bin`
/// directory. Fails, naming what to install, when `python3 -m venv` or pip cannot do it: a test
/// that needs the packages never runs without them.
pub async fn venv(name: &str, requirements: &Path) -> Result<PathBuf> {
    let _one_at_a_time = VENV_LOCK.lock().await;
    let wanted = std::fs::read_to_string(requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    // target/<profile>/deps/<test binary> → target/<profile>/python/<name>
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("unexpected test binary location")?
        .join("python")
        .join(name);
    let bin = dir.join("bin");
    let stamp = dir.join("installed-requirements.txt");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(bin);
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let dir_arg = dir.to_string_lossy();
    install_step(
        "python3",
        &["-m", "venv", &dir_arg],
        "creating a Python virtual environment (on Debian: apt-get install -y python3-venv)",
    )
    .await?;
    let pip = bin.join("pip");
    let requirements_arg = requirements.to_string_lossy();
    install_step(
        &pip.to_string_lossy(),
        &[
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            &requirements_arg,
        ],
        "installing Python packages from PyPI (pip needs network access to PyPI)",
    )
    .await?;
    std::fs::write(&stamp, wanted).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(bin)
}

async fn install_step(program: &str, args: &[&str], what: &str) -> Result<()> {
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(INSTALL_LIMIT, child)
        .await
        .with_context(|| format!("{what}: not done within {INSTALL_LIMIT:?}"))?
        .with_context(|| format!("{what}: could not run {program}"))?;
    if !output.status.success() {
        bail!(
            "{what}: `{program} {}` failed ({}):\n{}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
