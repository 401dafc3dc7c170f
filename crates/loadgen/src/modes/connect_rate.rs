//! `connect-rate`: open N connections as fast as the concurrency bound allows.

use std::time::Instant;

use anyhow::Result;

use super::{check_budget, common_params, connect_phase, pool_config};
use crate::cli::ConnectRateArgs;
use crate::report::Report;
use crate::stats;

/// Runs the connect-rate benchmark.
pub async fn run(a: &ConnectRateArgs, deadline: Instant) -> Result<Report> {
    let c = &a.common;
    check_budget(deadline, c.settle)?;
    let cfg = pool_config(c)?;
    let connected = connect_phase(c, cfg).await?;
    let rec = stats::take_all();
    connected.pool.close().await;
    Ok(Report {
        mode: "connect-rate",
        params: common_params(c),
        loadgen_cpu_percent: connected.summary.connect_cpu.loadgen_cpu_percent,
        connect: connected.summary,
        disconnected: rec.disconnected,
        server_close_codes: rec.close_codes,
        delivery: None,
        hold_cpu: None,
        steps: Vec::new(),
        stop_reason: None,
    })
}
