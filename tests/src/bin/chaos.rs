//! `make chaos`: the full chaos suite (issue 11) on its own Redis and gateway processes; prints
//! the ledger and writes `docs/reliability.md` (`--out <path>`; `--short` for the shortened
//! plan that `make test` runs). Exits 1 when a fault lost, duplicated or reordered an event.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use gleepost_tests::chaos::{self, report, Plan};

/// The whole run may take at most this long.
const BOUND: Duration = Duration::from_secs(6 * 60);

#[tokio::main]
async fn main() -> Result<()> {
    let mut out = None;
    let mut plan = Plan::full();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => out = Some(args.next().context("--out needs a path")?),
            "--short" => plan = Plan::short(),
            other => bail!("unknown argument {other:?} (usage: chaos [--short] [--out <path>])"),
        }
    }
    eprintln!("chaos: {} plan, {} faults", plan.name, plan.faults.len());
    let outcome = tokio::time::timeout(BOUND, chaos::run(&plan))
        .await
        .context("the chaos suite did not finish within 6 minutes")??;
    let command = match &out {
        Some(path) => format!("target/release/chaos --out {path}"),
        None => "target/release/chaos".into(),
    };
    let doc = report::markdown(&outcome, &report::Machine::now(), &command);
    println!("{doc}");
    if let Some(path) = out {
        std::fs::write(&path, &doc).with_context(|| format!("writing {path}"))?;
        eprintln!(
            "chaos: wrote {path} ({:.0} s)",
            outcome.elapsed.as_secs_f64()
        );
    }
    if !outcome.lines.iter().all(|l| l.is_clean()) {
        bail!("a fault lost, duplicated or reordered events (see the ledger)");
    }
    Ok(())
}
