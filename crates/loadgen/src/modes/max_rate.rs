//! `max-rate`: step the publish rate up until p99 latency or loss exceed their limits (or the
//! publisher itself cannot keep up); report the last passing step.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::{
    check_budget, common_params, connect_for_publishing, delivery, pool_config, publish_params,
};
use crate::cli::MaxRateArgs;
use crate::publish::Publisher;
use crate::report::{Delivery, Report, Step};
use crate::stats::{self, now_ns};
use crate::sys::CpuMeter;

/// Runs the max-rate search.
pub async fn run(a: &MaxRateArgs, deadline: Instant) -> Result<Report> {
    let c = &a.common;
    if a.step <= a.step_warmup || a.factor <= 1.0 || a.start_rate <= 0.0 {
        bail!("need --step > --step-warmup, --factor > 1 and --start-rate > 0");
    }
    let step_cost = a.step + a.publish.drain * 2;
    check_budget(deadline, c.settle + step_cost)?;
    let cfg = pool_config(c)?;
    let mut publisher = Publisher::connect(&a.publish, c.first_user, cfg.users()).await?;
    let connected = connect_for_publishing(c, cfg).await?;
    let mut disconnected = stats::take_all().disconnected;
    let mut close_codes = BTreeMap::new();

    let mut steps: Vec<Step> = Vec::new();
    let mut best: Option<usize> = None;
    let mut rate = a.start_rate;
    let mut failed_attempts = 0;
    let stop_reason = loop {
        if steps.len() as u32 >= a.max_steps {
            break format!("--max-steps {} reached", a.max_steps);
        }
        if rate > a.rate_limit {
            break format!("--rate-limit {} reached", a.rate_limit);
        }
        if deadline.saturating_duration_since(Instant::now()) < step_cost + Duration::from_secs(2) {
            break "time bound (--max-seconds) reached".to_string();
        }
        let (d, total_dis, codes) =
            one_step(a, &mut publisher, &connected.conns_per_user, rate).await?;
        let dis = total_dis - disconnected;
        disconnected = total_dis;
        close_codes = codes;
        let reason = judge(a, &d, dis);
        let pass = reason.is_none();
        steps.push(Step {
            pass,
            reason: reason.clone(),
            delivery: d,
        });
        if let Some(r) = reason {
            if failed_attempts < a.retries {
                failed_attempts += 1;
                continue;
            }
            let attempts = if failed_attempts > 0 {
                format!(" ({} attempts)", failed_attempts + 1)
            } else {
                String::new()
            };
            break format!("step at {rate:.0}/s failed{attempts}: {r}");
        }
        failed_attempts = 0;
        best = Some(steps.len() - 1);
        rate *= a.factor;
    };
    connected.pool.close().await;

    let headline = best.map(|i| steps[i].delivery.clone());
    let mut params = common_params(c);
    publish_params(&mut params, &a.publish);
    params["start_rate"] = a.start_rate.into();
    params["factor"] = a.factor.into();
    params["step_s"] = a.step.as_secs_f64().into();
    params["step_warmup_s"] = a.step_warmup.as_secs_f64().into();
    params["max_p99_ms"] = a.max_p99_ms.into();
    params["max_loss_pct"] = a.max_loss_pct.into();
    params["retries"] = a.retries.into();
    Ok(Report {
        mode: "max-rate",
        params,
        connect: connected.summary,
        disconnected,
        server_close_codes: close_codes,
        loadgen_cpu_percent: headline.as_ref().map_or(0.0, |d| d.cpu.loadgen_cpu_percent),
        delivery: headline,
        hold_cpu: None,
        steps,
        stop_reason: Some(stop_reason),
    })
}

/// Publishes one step and accounts for it. Returns its numbers, the disconnections and the
/// close codes so far (cumulative).
async fn one_step(
    a: &MaxRateArgs,
    publisher: &mut Publisher,
    conns_per_user: &[u32],
    rate: f64,
) -> Result<(Delivery, u64, BTreeMap<u16, u64>)> {
    stats::set_window(u64::MAX, u64::MAX);
    let start = Instant::now();
    publisher.run(rate, a.step_warmup).await?;
    let window_start = now_ns();
    stats::set_window(window_start, u64::MAX);
    let cpu = CpuMeter::start(&a.common.server_pids);
    publisher.run(rate, a.step - a.step_warmup).await?;
    let window_end = now_ns();
    stats::set_window(window_start, window_end);
    let cpu = cpu.finish();
    let publish_secs = start.elapsed().as_secs_f64();
    publisher.settle(a.publish.drain).await;
    let totals = publisher.take_totals();
    let expected = super::expected(&totals.per_user, conns_per_user);
    super::wait_deliveries(expected, a.publish.drain).await;
    let rec = stats::take_all();
    let window_secs = (window_end - window_start) as f64 / 1e9;
    let d = delivery(
        rate,
        &totals,
        publish_secs,
        conns_per_user,
        &rec,
        window_secs,
        cpu,
    );
    Ok((d, rec.disconnected, rec.close_codes))
}

/// Why a step fails, or `None` if it passes.
fn judge(a: &MaxRateArgs, d: &Delivery, disconnected: u64) -> Option<String> {
    let p99_limit_us = (a.max_p99_ms * 1000.0) as u64;
    if d.latency_us.p99 > p99_limit_us {
        return Some(format!("p99 {} µs > {} ms", d.latency_us.p99, a.max_p99_ms));
    }
    if d.loss_pct > a.max_loss_pct {
        return Some(format!("loss {:.4} % > {} %", d.loss_pct, a.max_loss_pct));
    }
    if disconnected > 0 {
        return Some(format!("{disconnected} connections dropped"));
    }
    if d.publish_errors > 0 {
        return Some(format!("{} publish errors", d.publish_errors));
    }
    if d.publish_rate < d.rate_target * 0.95 {
        return Some(format!(
            "publisher reached only {:.0}/s of {:.0}/s (publish path saturated)",
            d.publish_rate, d.rate_target
        ));
    }
    if d.latency_us.count == 0 {
        return Some("no measured deliveries".into());
    }
    None
}
