//! Result model, the human table and the JSON output.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::stats::Percentiles;
use crate::sys::CpuShare;

/// Connect-phase numbers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnectSummary {
    /// Connections that completed the WebSocket upgrade.
    pub established: u64,
    /// Connections that failed.
    pub failed: u64,
    /// Failure reasons with counts.
    pub connect_errors: BTreeMap<String, u64>,
    /// Duration of the connect phase.
    pub connect_seconds: f64,
    /// Successful handshakes per second during the connect phase.
    pub accepts_per_sec: f64,
    /// Connect + upgrade latency of established connections (µs).
    pub handshake_us: Percentiles,
    /// CPU shares during the connect phase.
    pub connect_cpu: CpuShare,
    /// Sum of server VmRSS before connecting (KiB).
    pub server_rss_kib_before: Option<u64>,
    /// Sum of server VmRSS after connecting and settling (KiB).
    pub server_rss_kib_after: Option<u64>,
    /// (after − before) / established.
    pub server_rss_kib_per_conn: Option<f64>,
    /// The load generator's own VmRSS after connecting (KiB).
    pub loadgen_rss_kib: Option<u64>,
}

/// Publish/delivery numbers of one run or step.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Delivery {
    /// Target publish rate (events/s).
    pub rate_target: f64,
    /// Events handed to the publish backend.
    pub published: u64,
    /// Achieved publish rate (events/s).
    pub publish_rate: f64,
    /// Failed publishes.
    pub publish_errors: u64,
    /// First publish error.
    pub publish_first_error: Option<String>,
    /// HTTP publish requests sent (`http`, `http-batch`; absent for Redis publishing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish_requests: Option<u64>,
    /// Events per HTTP publish request (`http-batch`: the mean batch size).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events_per_request: Option<f64>,
    /// HTTP paths: µs from an event being queued in the load generator to its request being
    /// sent (the lane's queue), events stamped in the measurement window (as `latency_us`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_wait_us: Option<Percentiles>,
    /// HTTP paths: µs from an event being queued to the publish API's 200 answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_answer_us: Option<Percentiles>,
    /// Σ over users of accepted events × established connections of the user.
    pub expected: u64,
    /// Unique deliveries (all events of the run, warmup included).
    pub delivered: u64,
    /// Deliveries of events published in the measurement window.
    pub delivered_measured: u64,
    /// Measured deliveries per second of measurement window.
    pub delivered_per_sec: f64,
    /// expected − delivered.
    pub lost: u64,
    /// lost / expected in percent.
    pub loss_pct: f64,
    /// Deliveries received twice on a connection.
    pub duplicated: u64,
    /// Deliveries that arrived after a newer one.
    pub out_of_order: u64,
    /// Sequence jumps seen by connections.
    pub gaps: u64,
    /// Deliveries to a connection of another user.
    pub misrouted: u64,
    /// Data messages without benchmark fields.
    pub unparsed: u64,
    /// Publish-to-receive latency of measured deliveries (µs).
    pub latency_us: Percentiles,
    /// CPU shares during the measurement window.
    pub cpu: CpuShare,
    /// Load generator CPU nanoseconds per measured delivery (publishing included).
    pub loadgen_cpu_ns_per_delivery: Option<f64>,
}

/// One step of `max-rate`.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Whether the step met the latency and loss limits.
    pub pass: bool,
    /// Why it failed.
    pub reason: Option<String>,
    /// Its numbers.
    #[serde(flatten)]
    pub delivery: Delivery,
}

/// The whole result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Mode name.
    pub mode: &'static str,
    /// Echo of the parameters.
    pub params: serde_json::Value,
    /// Connect phase.
    #[serde(flatten)]
    pub connect: ConnectSummary,
    /// Established connections that closed before the end.
    pub disconnected: u64,
    /// Close frames received from the server, by close code (1005 = no code).
    pub server_close_codes: BTreeMap<u16, u64>,
    /// Headline delivery numbers (fanout: the run; max-rate: the best passing step).
    #[serde(flatten)]
    pub delivery: Option<Delivery>,
    /// Load generator CPU (% of one core) of the headline phase.
    pub loadgen_cpu_percent: f64,
    /// idle: CPU shares while holding the connections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_cpu: Option<CpuShare>,
    /// max-rate: all steps.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
    /// max-rate: why stepping stopped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
}

impl Report {
    /// Human-readable table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let c = &self.connect;
        let mut row = |k: &str, v: String| {
            let _ = writeln!(t, "  {k:<26} {v}");
        };
        row("mode", self.mode.to_string());
        row(
            "established / failed",
            format!("{} / {}", c.established, c.failed),
        );
        for (why, n) in &c.connect_errors {
            row("  failure", format!("{n} × {why}"));
        }
        row(
            "connect",
            format!(
                "{:.2} s, {:.0} accepts/s, handshake p50 {} µs p99 {} µs max {} µs",
                c.connect_seconds,
                c.accepts_per_sec,
                c.handshake_us.p50,
                c.handshake_us.p99,
                c.handshake_us.max
            ),
        );
        row("connect cpu", cpu_text(&c.connect_cpu));
        if let Some(per) = c.server_rss_kib_per_conn {
            row(
                "server rss",
                format!(
                    "{} → {} KiB, {per:.2} KiB/conn",
                    c.server_rss_kib_before.unwrap_or(0),
                    c.server_rss_kib_after.unwrap_or(0)
                ),
            );
        }
        if let Some(own) = c.loadgen_rss_kib {
            let per = own as f64 / c.established.max(1) as f64;
            row(
                "loadgen rss",
                format!("{own} KiB ({per:.2} KiB/conn incl. baseline)"),
            );
        }
        row("disconnected", self.disconnected.to_string());
        for (code, n) in &self.server_close_codes {
            row("  server close", format!("{n} × code {code}"));
        }
        if let Some(d) = &self.delivery {
            delivery_rows(&mut row, d);
        }
        if let Some(h) = &self.hold_cpu {
            row("hold cpu", cpu_text(h));
        }
        row(
            "loadgen cpu",
            format!("{:.1} % of a core", self.loadgen_cpu_percent),
        );
        if let Some(r) = &self.stop_reason {
            row("stopped because", r.clone());
        }
        if !self.steps.is_empty() {
            let _ = writeln!(
                t,
                "\n  {:>10} {:>10} {:>12} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7}  result",
                "rate",
                "pub/s",
                "deliv/s",
                "loss%",
                "p50µs",
                "p99µs",
                "p999µs",
                "maxµs",
                "lg%cpu",
                "srv%"
            );
            for s in &self.steps {
                let d = &s.delivery;
                let _ = writeln!(
                    t,
                    "  {:>10.0} {:>10.0} {:>12.0} {:>8.3} {:>8} {:>8} {:>8} {:>8} {:>7.1} {:>7}  {}",
                    d.rate_target,
                    d.publish_rate,
                    d.delivered_per_sec,
                    d.loss_pct,
                    d.latency_us.p50,
                    d.latency_us.p99,
                    d.latency_us.p999,
                    d.latency_us.max,
                    d.cpu.loadgen_cpu_percent,
                    d.cpu.server_cpu_percent.map_or("-".into(), |v| format!("{v:.1}")),
                    if s.pass { "pass".to_string() } else { format!("FAIL: {}", s.reason.as_deref().unwrap_or("")) }
                );
            }
        }
        t
    }
}

fn cpu_text(c: &CpuShare) -> String {
    let server = c
        .server_cpu_percent
        .map_or(String::new(), |s| format!(", server {s:.1} %"));
    format!(
        "loadgen {:.1} % of a core over {:.2} s{server}",
        c.loadgen_cpu_percent, c.wall_seconds
    )
}

fn delivery_rows(row: &mut impl FnMut(&str, String), d: &Delivery) {
    row(
        "published",
        format!(
            "{} ({:.0}/s, target {:.0}/s), errors {}",
            d.published, d.publish_rate, d.rate_target, d.publish_errors
        ),
    );
    if let Some(e) = &d.publish_first_error {
        row("  first publish error", e.clone());
    }
    if let (Some(n), Some(per)) = (d.publish_requests, d.events_per_request) {
        row(
            "  http requests",
            format!("{n} ({per:.2} events per request)"),
        );
    }
    for (label, p) in [
        ("  queued → sent µs", &d.http_wait_us),
        ("  queued → answered µs", &d.http_answer_us),
    ] {
        if let Some(p) = p {
            row(
                label,
                format!("p50 {} p99 {} max {} (n={})", p.p50, p.p99, p.max, p.count),
            );
        }
    }
    row(
        "delivered",
        format!(
            "{} of {} expected; {:.0}/s in the window",
            d.delivered, d.expected, d.delivered_per_sec
        ),
    );
    row("lost", format!("{} ({:.4} %)", d.lost, d.loss_pct));
    row(
        "dup / out-of-order / gaps",
        format!("{} / {} / {}", d.duplicated, d.out_of_order, d.gaps),
    );
    if d.misrouted + d.unparsed > 0 {
        row(
            "misrouted / unparsed",
            format!("{} / {}", d.misrouted, d.unparsed),
        );
    }
    let l = &d.latency_us;
    row(
        "latency µs",
        format!(
            "p50 {} p90 {} p99 {} p99.9 {} max {} (n={})",
            l.p50, l.p90, l.p99, l.p999, l.max, l.count
        ),
    );
    row("window cpu", cpu_text(&d.cpu));
    if let Some(ns) = d.loadgen_cpu_ns_per_delivery {
        row(
            "loadgen cost",
            format!(
                "{ns:.0} ns/delivery ≈ {:.1} % of a core per 10k deliveries/s",
                ns / 1e3
            ),
        );
    }
}

/// Prints the table (stdout, or stderr when JSON goes to stdout) and writes the JSON if asked.
pub fn emit(report: &Report, json: Option<&str>) -> Result<()> {
    let table = report.table();
    let text = serde_json::to_string_pretty(report).context("serialising the report")?;
    match json {
        Some("-") => {
            eprint!("{table}");
            println!("{text}");
        }
        Some(path) => {
            print!("{table}");
            std::fs::write(path, text + "\n").with_context(|| format!("writing {path}"))?;
        }
        None => print!("{table}"),
    }
    std::io::stdout().flush().context("flushing stdout")
}
