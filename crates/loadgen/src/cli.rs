//! Command line interface: subcommands and their flags.

use std::net::IpAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Top-level command line.
#[derive(Debug, Parser)]
#[command(
    name = "gleepost-loadgen",
    version,
    about = "Load generator for the Gleepost realtime gateway (loopback targets only, bounded in time)"
)]
pub struct Cli {
    /// Benchmark mode.
    #[command(subcommand)]
    pub mode: Mode,
}

/// Benchmark modes.
#[derive(Debug, Subcommand)]
pub enum Mode {
    /// Open N connections, let them settle, report server RSS per connection, hold, close.
    Idle(IdleArgs),
    /// Open N connections and publish at a fixed rate; report delivery, loss and latency.
    Fanout(FanoutArgs),
    /// Open N connections and step the publish rate up until p99 or loss exceed their limits.
    MaxRate(MaxRateArgs),
    /// Open N connections as fast as possible (bounded concurrency); report handshakes per second.
    ConnectRate(ConnectRateArgs),
}

/// How the JWT is presented on the upgrade request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// `?access_token=<jwt>` query parameter.
    Query,
    /// `Authorization: Bearer <jwt>` header.
    Header,
}

/// Publishing path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PublishVia {
    /// `POST /v1/publish` on the admin port (one event per user per request).
    Http,
    /// `POST /v1/publish/batch` on the admin port: each request carries what is queued for its
    /// connection (up to `--batch-size` events, one `{users, event}` item each).
    HttpBatch,
    /// Pipelined `PUBLISH <prefix><uid> <json>` on one Redis connection (no history, no id).
    Redis,
    /// Pipelined `EVALSHA` of the gateway's history publish script on one Redis connection:
    /// each event is appended to the user's history stream and published with an `id`, exactly
    /// like the publish API and `Publisher` do.
    RedisHistory,
}

/// Flags shared by every mode: targets, connections, auth, bounds and output.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Gateway WebSocket URL (repeatable; connections are spread round-robin so that a user's
    /// connections land on different URLs).
    #[arg(long = "url", default_value = "ws://127.0.0.1:8080/ws")]
    pub urls: Vec<String>,
    /// Number of WebSocket connections to open.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub connections: u32,
    /// Number of distinct users (connection i belongs to user first_user + i % users).
    /// Defaults to the number of connections.
    #[arg(long, short = 'u')]
    pub users: Option<u32>,
    /// First user id.
    #[arg(long, default_value_t = 1)]
    pub first_user: u64,
    /// HS256 secret used to mint the JWTs (the gateway's GATEWAY_JWT_SECRET).
    #[arg(long, env = "GATEWAY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
    /// Lifetime of the minted tokens (`exp` = now + this).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub jwt_ttl: Duration,
    /// Where the JWT goes on the upgrade request.
    #[arg(long, value_enum, default_value_t = AuthMode::Query)]
    pub auth: AuthMode,
    /// Local source address to bind (repeatable; round-robin). Use several 127.0.0.x addresses
    /// to go past ~28k connections per gateway port.
    #[arg(long = "source-ip")]
    pub source_ips: Vec<IpAddr>,
    /// Maximum number of handshakes in flight while connecting.
    #[arg(long, default_value_t = 256)]
    pub concurrency: u32,
    /// Timeout of one TCP connect + WebSocket handshake.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Tokio worker threads (1 = current-thread runtime; pin with `taskset -c N`).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Gateway process id whose VmRSS and CPU are sampled from /proc (repeatable).
    #[arg(long = "server-pid")]
    pub server_pids: Vec<u32>,
    /// Pause after all connections are established before sampling server RSS.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub settle: Duration,
    /// Also write the result as JSON to this path (`-` = stdout; the table then goes to stderr).
    #[arg(long)]
    pub json: Option<String>,
    /// Hard bound on the whole run, in seconds.
    #[arg(long, default_value_t = 120)]
    pub max_seconds: u64,
}

impl Common {
    /// Number of users (defaults to the number of connections, at least 1).
    pub fn user_count(&self) -> u32 {
        self.users.unwrap_or(self.connections).max(1)
    }
}

/// Flags of the modes that publish events.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// Publishing path.
    #[arg(long, value_enum, default_value_t = PublishVia::Http)]
    pub publish: PublishVia,
    /// Gateway admin base URL (publish API).
    #[arg(long, default_value = "http://127.0.0.1:9090")]
    pub admin_url: String,
    /// Admin API key (the gateway's GATEWAY_API_KEY).
    #[arg(long, env = "GATEWAY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Keep-alive HTTP connections publishing in parallel (a user always uses the same one,
    /// so per-user order is preserved).
    #[arg(long, default_value_t = 8)]
    pub http_connections: u32,
    /// Publish over HTTP/2 (h2c, prior knowledge): the `--http-connections` lanes, still one
    /// request at a time each, are concurrent streams of one connection per 100 lanes.
    #[arg(long)]
    pub http2: bool,
    /// `http-batch`: most events in one request (a request carries what is queued for its
    /// connection when it is sent, never waiting to fill up).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,
    /// Redis URL (`redis://[[user]:password@]host[:port][/db]`).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Redis channel prefix of `--publish redis` (legacy raw publishes); the channel is prefix +
    /// user id. `redis-history` always uses the gateway channel `gp:user:{<uid>}`.
    #[arg(long, default_value = "c:")]
    pub channel_prefix: String,
    /// `redis-history`: most events kept per user's stream (`XADD MAXLEN ~`).
    #[arg(long, default_value_t = 1000)]
    pub history_maxlen: u64,
    /// `redis-history`: lifetime of the history keys after the user's last event.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub history_ttl: Duration,
    /// Event `type`.
    #[arg(long, default_value = "bench")]
    pub event_type: String,
    /// Size of the event's `data` object in bytes (padded with a `pad` string).
    #[arg(long, default_value_t = 128)]
    pub payload_bytes: usize,
    /// How long to wait for outstanding deliveries after publishing stops.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub drain: Duration,
}

/// `idle` mode flags.
#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    /// Common flags.
    #[command(flatten)]
    pub common: Common,
    /// Keep the connections open this long after measuring, then close them.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub hold: Duration,
}

/// `fanout` mode flags.
#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    /// Common flags.
    #[command(flatten)]
    pub common: Common,
    /// Publish flags.
    #[command(flatten)]
    pub publish: PublishArgs,
    /// Events published per second (each to one user, users round-robin).
    #[arg(long, short = 'r', default_value_t = 1000.0)]
    pub rate: f64,
    /// Measured publishing time.
    #[arg(long, short = 'd', default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Unmeasured publishing time before the measurement.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
}

/// `max-rate` mode flags.
#[derive(Debug, Clone, Args)]
pub struct MaxRateArgs {
    /// Common flags.
    #[command(flatten)]
    pub common: Common,
    /// Publish flags.
    #[command(flatten)]
    pub publish: PublishArgs,
    /// Publish rate of the first step (events/s).
    #[arg(long, default_value_t = 1000.0)]
    pub start_rate: f64,
    /// Rate multiplier between steps.
    #[arg(long, default_value_t = 1.5)]
    pub factor: f64,
    /// Upper bound of the publish rate.
    #[arg(long, default_value_t = 10_000_000.0)]
    pub rate_limit: f64,
    /// Length of one step (including its warmup).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub step: Duration,
    /// Unmeasured start of every step.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub step_warmup: Duration,
    /// A step fails when its p99 delivery latency exceeds this (milliseconds).
    #[arg(long, default_value_t = 50.0)]
    pub max_p99_ms: f64,
    /// A step fails when its loss exceeds this percentage of expected deliveries.
    #[arg(long, default_value_t = 0.1)]
    pub max_loss_pct: f64,
    /// Maximum number of steps.
    #[arg(long, default_value_t = 30)]
    pub max_steps: u32,
    /// Run a failing step again, at the same rate, up to this many times before stopping: a
    /// transient stall on a shared machine fails one attempt, a real ceiling fails them all.
    /// Every attempt is reported in `steps` and counts towards `--max-steps`.
    #[arg(long, default_value_t = 0)]
    pub retries: u32,
}

/// `connect-rate` mode flags.
#[derive(Debug, Clone, Args)]
pub struct ConnectRateArgs {
    /// Common flags.
    #[command(flatten)]
    pub common: Common,
}

/// Parses `1.5s`, `250ms`, `2m`, `100us`, `1h` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (examples: 10s, 500ms, 2m)"))?;
    let secs = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown duration unit {other:?} in {s:?}")),
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("duration out of range: {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
