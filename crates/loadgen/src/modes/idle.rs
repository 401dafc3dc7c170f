//! `idle`: open N connections, measure server memory per connection, hold, close.

use std::time::Instant;

use anyhow::Result;

use super::{check_budget, common_params, connect_phase, pool_config};
use crate::cli::IdleArgs;
use crate::report::Report;
use crate::stats;
use crate::sys::CpuMeter;

/// Runs the idle benchmark.
pub async fn run(a: &IdleArgs, deadline: Instant) -> Result<Report> {
    let c = &a.common;
    check_budget(deadline, c.settle + a.hold)?;
    let cfg = pool_config(c)?;
    let connected = connect_phase(c, cfg).await?;
    let cpu = CpuMeter::start(&c.server_pids);
    let hold_until = (Instant::now() + a.hold).min(deadline - std::time::Duration::from_secs(1));
    tokio::time::sleep_until(hold_until.into()).await;
    let hold_cpu = cpu.finish();
    let rec = stats::take_all();
    connected.pool.close().await;

    let mut params = common_params(c);
    params["hold_s"] = a.hold.as_secs_f64().into();
    Ok(Report {
        mode: "idle",
        params,
        connect: connected.summary,
        disconnected: rec.disconnected,
        server_close_codes: rec.close_codes,
        loadgen_cpu_percent: hold_cpu.loadgen_cpu_percent,
        delivery: None,
        hold_cpu: Some(hold_cpu),
        steps: Vec::new(),
        stop_reason: None,
    })
}
