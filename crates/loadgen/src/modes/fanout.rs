//! `fanout`: N connections, publish at a fixed rate, measure delivery.

use std::time::Instant;

use anyhow::Result;

use super::{
    check_budget, common_params, connect_for_publishing, delivery, pool_config, publish_params,
};
use crate::cli::FanoutArgs;
use crate::publish::Publisher;
use crate::report::Report;
use crate::stats::{self, now_ns};
use crate::sys::CpuMeter;

/// Runs the fanout benchmark.
pub async fn run(a: &FanoutArgs, deadline: Instant) -> Result<Report> {
    let c = &a.common;
    check_budget(
        deadline,
        c.settle + a.warmup + a.duration + a.publish.drain * 2,
    )?;
    let cfg = pool_config(c)?;
    let mut publisher = Publisher::connect(&a.publish, c.first_user, cfg.users()).await?;
    let connected = connect_for_publishing(c, cfg).await?;
    stats::take_all();

    let publish_start = Instant::now();
    stats::set_window(u64::MAX, u64::MAX);
    publisher.run(a.rate, a.warmup).await?;
    let window_start = now_ns();
    stats::set_window(window_start, u64::MAX);
    let cpu = CpuMeter::start(&c.server_pids);
    publisher.run(a.rate, a.duration).await?;
    let window_end = now_ns();
    stats::set_window(window_start, window_end);
    let cpu = cpu.finish();
    let publish_secs = publish_start.elapsed().as_secs_f64();

    publisher.settle(a.publish.drain).await;
    let totals = publisher.take_totals();
    let expected = super::expected(&totals.per_user, &connected.conns_per_user);
    super::wait_deliveries(expected, a.publish.drain).await;
    let rec = stats::take_all();
    connected.pool.close().await;

    let window_secs = (window_end - window_start) as f64 / 1e9;
    let d = delivery(
        a.rate,
        &totals,
        publish_secs,
        &connected.conns_per_user,
        &rec,
        window_secs,
        cpu,
    );
    let mut params = common_params(c);
    publish_params(&mut params, &a.publish);
    params["rate"] = a.rate.into();
    params["duration_s"] = a.duration.as_secs_f64().into();
    params["warmup_s"] = a.warmup.as_secs_f64().into();
    Ok(Report {
        mode: "fanout",
        params,
        connect: connected.summary,
        disconnected: rec.disconnected,
        server_close_codes: rec.close_codes,
        loadgen_cpu_percent: d.cpu.loadgen_cpu_percent,
        delivery: Some(d),
        hold_cpu: None,
        steps: Vec::new(),
        stop_reason: None,
    })
}
