//! The benchmark modes and what they share: validation, the connect phase and delivery
//! accounting.

pub mod connect_rate;
pub mod fanout;
pub mod idle;
pub mod max_rate;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::cli::{Common, Mode, PublishArgs};
use crate::conn::{self, Pool, PoolConfig};
use crate::publish::Totals;
use crate::report::{ConnectSummary, Delivery, Report};
use crate::stats::{self, Percentiles, Recorder};
use crate::sys::{self, round, CpuMeter, CpuShare};
use crate::{jwt, target};

/// Runs the selected mode until it finishes or `deadline` passes.
pub async fn run(mode: &Mode, deadline: Instant) -> Result<Report> {
    match mode {
        Mode::Idle(a) => idle::run(a, deadline).await,
        Mode::Fanout(a) => fanout::run(a, deadline).await,
        Mode::MaxRate(a) => max_rate::run(a, deadline).await,
        Mode::ConnectRate(a) => connect_rate::run(a, deadline).await,
    }
}

/// The common flags of a mode.
pub fn common(mode: &Mode) -> &Common {
    match mode {
        Mode::Idle(a) => &a.common,
        Mode::Fanout(a) => &a.common,
        Mode::MaxRate(a) => &a.common,
        Mode::ConnectRate(a) => &a.common,
    }
}

/// Validates every target before any traffic: loopback only, sane numbers.
pub fn validate(mode: &Mode) -> Result<()> {
    let c = common(mode);
    for url in &c.urls {
        target::parse(url, "ws", 80)?;
    }
    for ip in &c.source_ips {
        target::ensure_loopback(*ip)?;
    }
    if c.urls.is_empty() || c.connections == 0 {
        bail!("need at least one --url and one connection");
    }
    let publish: Option<&PublishArgs> = match mode {
        Mode::Fanout(a) => Some(&a.publish),
        Mode::MaxRate(a) => Some(&a.publish),
        _ => None,
    };
    if let Some(p) = publish {
        match p.publish {
            crate::cli::PublishVia::Http | crate::cli::PublishVia::HttpBatch => {
                target::parse(&p.admin_url, "http", 80).map(drop)?
            }
            crate::cli::PublishVia::Redis | crate::cli::PublishVia::RedisHistory => {
                target::parse(&p.redis_url, "redis", 6379).map(drop)?
            }
        }
    }
    Ok(())
}

/// Builds the pool configuration: targets, tokens, fd limit, port-range warning.
pub fn pool_config(c: &Common) -> Result<Arc<PoolConfig>> {
    let targets = c
        .urls
        .iter()
        .map(|u| target::parse(u, "ws", 80))
        .collect::<Result<Vec<_>>>()?;
    let nofile = sys::raise_nofile_limit()?;
    if nofile < u64::from(c.connections) + 64 {
        eprintln!(
            "warning: file-descriptor limit {nofile} is below {} connections; raise the hard \
             limit (ulimit -Hn) to open them all",
            c.connections
        );
    }
    if let Some((lo, hi)) = sys::local_port_range() {
        let per_pair = u64::from(hi.saturating_sub(lo) + 1);
        let pairs = (targets.len() * c.source_ips.len().max(1)) as u64;
        if u64::from(c.connections) > per_pair * pairs {
            eprintln!(
                "warning: {} connections exceed the {per_pair} ephemeral ports per source/target \
                 pair; add --source-ip 127.0.0.x addresses or gateway URLs",
                c.connections
            );
        }
    }
    let tokens = jwt::mint_tokens(&c.jwt_secret, c.first_user, c.user_count(), c.jwt_ttl)?;
    Ok(Arc::new(PoolConfig {
        targets,
        tokens,
        first_user: c.first_user,
        connections: c.connections,
        concurrency: c.concurrency,
        connect_timeout: c.connect_timeout,
        source_ips: c.source_ips.clone(),
        auth_header: c.auth == crate::cli::AuthMode::Header,
    }))
}

/// Open connections plus what the connect phase measured.
pub struct Connected {
    /// The receive tasks.
    pub pool: Pool,
    /// Established connections per user index.
    pub conns_per_user: Vec<u32>,
    /// Connect-phase summary.
    pub summary: ConnectSummary,
}

/// [`connect_phase`] for the publishing modes: fails when no connection could be established.
pub async fn connect_for_publishing(c: &Common, cfg: Arc<PoolConfig>) -> Result<Connected> {
    let connected = connect_phase(c, cfg).await?;
    if connected.summary.established == 0 {
        connected.pool.close().await;
        anyhow::bail!(
            "no connection could be established: {:?}",
            connected.summary.connect_errors
        );
    }
    Ok(connected)
}

/// Opens all connections, waits `settle`, samples server RSS before and after.
pub async fn connect_phase(c: &Common, cfg: Arc<PoolConfig>) -> Result<Connected> {
    let rss_before = sys::total_rss_kib(&c.server_pids)?;
    let cpu = CpuMeter::start(&c.server_pids);
    let (pool, report) = conn::connect_all(cfg).await;
    let connect_cpu = cpu.finish();
    tokio::time::sleep(c.settle).await;
    let rss_after = sys::total_rss_kib(&c.server_pids)?;
    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if report.established > 0 => {
            Some(round((a as f64 - b as f64) / report.established as f64, 3))
        }
        _ => None,
    };
    let secs = report.elapsed.as_secs_f64();
    let summary = ConnectSummary {
        established: report.established,
        failed: report.failed,
        connect_errors: report.errors.clone(),
        connect_seconds: round(secs, 3),
        accepts_per_sec: round(report.established as f64 / secs.max(1e-9), 1),
        handshake_us: Percentiles::of(&report.handshake_us),
        connect_cpu,
        server_rss_kib_before: rss_before,
        server_rss_kib_after: rss_after,
        server_rss_kib_per_conn: per_conn,
        loadgen_rss_kib: sys::rss_kib(std::process::id()).ok(),
    };
    Ok(Connected {
        pool,
        conns_per_user: report.conns_per_user,
        summary,
    })
}

/// Σ over users of accepted events × established connections.
pub fn expected(per_user: &[u64], conns_per_user: &[u32]) -> u64 {
    per_user
        .iter()
        .zip(conns_per_user)
        .map(|(&p, &c)| p * u64::from(c))
        .sum()
}

/// Waits until `expected` unique deliveries were counted or `timeout` passes.
pub async fn wait_deliveries(expected: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while stats::peek_counts().0 < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Combines publish totals, the recorder and the CPU share into delivery numbers.
pub fn delivery(
    rate_target: f64,
    totals: &Totals,
    publish_secs: f64,
    conns_per_user: &[u32],
    rec: &Recorder,
    window_secs: f64,
    cpu: CpuShare,
) -> Delivery {
    let expected = expected(&totals.per_user, conns_per_user);
    let lost = stats::lost(expected, rec.unique);
    Delivery {
        rate_target,
        published: totals.dispatched,
        publish_rate: round(totals.dispatched as f64 / publish_secs.max(1e-9), 1),
        publish_errors: totals.errors,
        publish_first_error: totals.first_error.clone(),
        publish_requests: (totals.requests > 0).then_some(totals.requests),
        events_per_request: (totals.requests > 0)
            .then(|| round(totals.requested as f64 / totals.requests as f64, 2)),
        http_wait_us: totals.http_wait_us,
        http_answer_us: totals.http_answer_us,
        expected,
        delivered: rec.unique,
        delivered_measured: rec.measured,
        delivered_per_sec: round(rec.measured as f64 / window_secs.max(1e-9), 1),
        lost,
        loss_pct: if expected == 0 {
            0.0
        } else {
            round(lost as f64 * 100.0 / expected as f64, 4)
        },
        duplicated: rec.duplicated,
        out_of_order: rec.out_of_order,
        gaps: rec.gaps,
        misrouted: rec.misrouted,
        unparsed: rec.unparsed,
        latency_us: Percentiles::of(&rec.latency),
        loadgen_cpu_ns_per_delivery: (rec.measured > 0)
            .then(|| round(cpu.loadgen_cpu_seconds * 1e9 / rec.measured as f64, 1)),
        cpu,
    }
}

/// Fails early when the planned phases cannot fit in `--max-seconds`.
pub fn check_budget(deadline: Instant, planned: Duration) -> Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if planned + Duration::from_secs(2) > left {
        bail!(
            "the planned run ({:.1} s plus connecting) does not fit in --max-seconds ({:.1} s left)",
            planned.as_secs_f64(),
            left.as_secs_f64()
        );
    }
    Ok(())
}

/// Parameters common to all modes, for the report.
pub fn common_params(c: &Common) -> serde_json::Value {
    serde_json::json!({
        "urls": c.urls,
        "connections": c.connections,
        "users": c.user_count(),
        "first_user": c.first_user,
        "auth": format!("{:?}", c.auth).to_lowercase(),
        "source_ips": c.source_ips,
        "concurrency": c.concurrency,
        "threads": c.threads,
        "server_pids": c.server_pids,
        "settle_s": c.settle.as_secs_f64(),
        "max_seconds": c.max_seconds,
    })
}

/// Adds the publish parameters to `params`.
pub fn publish_params(params: &mut serde_json::Value, p: &PublishArgs) {
    params["publish"] = clap::ValueEnum::to_possible_value(&p.publish)
        .map_or_else(String::new, |v| v.get_name().to_string())
        .into();
    params["payload_bytes"] = p.payload_bytes.into();
    params["event_type"] = p.event_type.clone().into();
    params["drain_s"] = p.drain.as_secs_f64().into();
    match p.publish {
        crate::cli::PublishVia::Http => {
            params["admin_url"] = p.admin_url.clone().into();
            params["http_connections"] = p.http_connections.into();
            params["http2"] = p.http2.into();
        }
        crate::cli::PublishVia::HttpBatch => {
            params["admin_url"] = p.admin_url.clone().into();
            params["http_connections"] = p.http_connections.into();
            params["http2"] = p.http2.into();
            params["batch_size"] = p.batch_size.into();
        }
        crate::cli::PublishVia::Redis => {
            params["redis_url"] = p.redis_url.clone().into();
            params["channel_prefix"] = p.channel_prefix.clone().into();
        }
        crate::cli::PublishVia::RedisHistory => {
            params["redis_url"] = p.redis_url.clone().into();
            params["channel_prefix"] = p.channel_prefix.clone().into();
            params["history_maxlen"] = p.history_maxlen.into();
            params["history_ttl_s"] = p.history_ttl.as_secs().into();
        }
    }
}
