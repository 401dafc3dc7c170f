//! Command line and environment configuration.
//!
//! Every setting is a CLI flag with a `GATEWAY_*` environment twin (plus `REDIS_URL`,
//! `REDIS_CLUSTER_URLS` and the `REDIS_SENTINEL_*` variables). Defaults are
//! safe for production: without `--dev` the gateway refuses to start without a JWT key (HS256
//! secret, public key file or JWKS URL) and an API key. The README's configuration table mirrors
//! this file (checked by `config/readme_table.rs`); `config/effective.rs` derives the settings in
//! use (Redis deployment, claim rules, listen addresses, drain timings).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;

use crate::config_values::parse_listen;
pub use crate::config_values::ListenAddr;

mod effective;
#[cfg(test)]
mod readme_table;
#[cfg(test)]
mod tests;

/// Top-level command line.
#[derive(Debug, Parser)]
#[command(
    name = "gleepost-gateway",
    version,
    about = "Gleepost realtime WebSocket gateway"
)]
pub struct Cli {
    /// Gateway settings (used by every subcommand).
    #[command(flatten)]
    pub config: Config,
    /// What to do; default: serve.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands besides serving.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mint a JWT for a user from the configured secret (`GATEWAY_JWT_SECRET`).
    Token {
        /// User id (the `sub` claim).
        #[arg(long)]
        user: u64,
        /// Lifetime of the token, e.g. `1h`, `30m`.
        #[arg(long, default_value = "1h", value_parser = parse_positive_duration)]
        ttl: Duration,
    },
    /// Publish one event to users through the broker (`REDIS_URL`, `REDIS_CLUSTER_URLS` or
    /// the Sentinel settings).
    Publish {
        /// Recipient user ids, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        users: Vec<u64>,
        /// The event envelope as JSON: `{"type":…, "location":…, "data":…}`.
        #[arg(long)]
        event: String,
    },
    /// Connect to a gateway WebSocket URL and print every event received (a tiny test client).
    Client {
        /// e.g. `ws://127.0.0.1:8080/ws?access_token=<jwt>`.
        url: String,
    },
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Gateway settings.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Development mode: embedded broker allowed, generated JWT secret and API key, prints a token
    /// and ready-to-paste commands; both ports on loopback unless given. `GATEWAY_DEV` takes
    /// 1/0, true/false, yes/no, on/off.
    #[arg(long, env = "GATEWAY_DEV", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub dev: bool,

    /// Public listen address (WebSocket endpoint `GET /ws`): IP:PORT, localhost:PORT or a bare
    /// PORT. Default: 0.0.0.0:8080; 127.0.0.1:8080 with --dev (a bare port keeps that host).
    #[arg(long, env = "GATEWAY_LISTEN", value_parser = parse_listen)]
    pub listen: Option<ListenAddr>,

    /// Admin listen address (publish API, metrics, health), in the forms of --listen.
    /// Default: 0.0.0.0:9090; 127.0.0.1:9090 with --dev.
    #[arg(long, env = "GATEWAY_ADMIN_LISTEN", value_parser = parse_listen)]
    pub admin_listen: Option<ListenAddr>,

    /// Most open connections on the admin port (at least 2); beyond it the connection that has
    /// waited longest for its request is closed to make room, and at most 7/8 of them handle a
    /// publish at once, so `/healthz` and `/metrics` are always served.
    #[arg(long, env = "GATEWAY_ADMIN_MAX_CONNECTIONS", default_value_t = 512, value_parser = clap::value_parser!(u32).range(2..))]
    pub admin_max_connections: u32,

    /// Redis URL; unset (and no cluster or Sentinel) means the embedded single-node broker.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// Redis Cluster seed URLs, comma separated (`redis://[user:pass@]host:port`): cluster mode
    /// with sharded pub/sub. At most one of `REDIS_URL`, `REDIS_CLUSTER_URLS` and
    /// `REDIS_SENTINEL_URLS`.
    #[arg(long, env = "REDIS_CLUSTER_URLS", value_delimiter = ',')]
    pub redis_cluster_urls: Vec<String>,

    /// Redis Sentinel URLs, comma separated (`redis://[user:pass@]host:port`, the sentinels'
    /// own credentials): the primary of `REDIS_SENTINEL_MASTER`, followed across failovers.
    #[arg(long, env = "REDIS_SENTINEL_URLS", value_delimiter = ',')]
    pub redis_sentinel_urls: Vec<String>,

    /// The master name the sentinels monitor (`sentinel monitor <name> …`); required with
    /// `REDIS_SENTINEL_URLS`.
    #[arg(long, env = "REDIS_SENTINEL_MASTER")]
    pub redis_sentinel_master: Option<String>,

    /// Username of the data nodes under Sentinel (ACL user; unset: `default`).
    #[arg(long, env = "REDIS_SENTINEL_NODE_USERNAME")]
    pub redis_sentinel_node_username: Option<String>,

    /// Password of the data nodes under Sentinel (`requirepass` / the ACL user's).
    #[arg(long, env = "REDIS_SENTINEL_NODE_PASSWORD", hide_env_values = true)]
    pub redis_sentinel_node_password: Option<String>,

    /// Database number on the data nodes under Sentinel.
    #[arg(long, env = "REDIS_SENTINEL_NODE_DB", default_value_t = 0)]
    pub redis_sentinel_node_db: i64,

    /// HS256 secret for client JWTs. Required unless `--dev`, `--jwt-public-key-file` or
    /// `--jwks-url` is set.
    #[arg(long, env = "GATEWAY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM public key (`-----BEGIN PUBLIC KEY-----`) verifying client JWTs: RSA (RS256), EC
    /// P-256 (ES256) or Ed25519 (EdDSA).
    #[arg(long, env = "GATEWAY_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// `http://` or `https://` URL of a JWKS document whose RS256, ES256 and EdDSA keys verify
    /// client JWTs (chosen by the token's `kid`); TLS trusts the system's root certificates, or
    /// those of `SSL_CERT_FILE` / `SSL_CERT_DIR` when set.
    #[arg(long, env = "GATEWAY_JWKS_URL")]
    pub jwks_url: Option<String>,

    /// Interval between JWKS fetches (at least 1 s); a token with an unknown `kid` also triggers
    /// one, at most every 10 s.
    #[arg(long, env = "GATEWAY_JWKS_REFRESH", default_value = "5m", value_parser = parse_positive_duration)]
    pub jwks_refresh: Duration,

    /// The `iss` claim client JWTs must carry (unset: not checked).
    #[arg(long, env = "GATEWAY_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// A value the `aud` claim of client JWTs must hold (unset: not checked).
    #[arg(long, env = "GATEWAY_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Bearer key of the admin API (publish); several comma-separated keys are all accepted
    /// (rotation). Required unless `--dev`.
    #[arg(long, env = "GATEWAY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Log format.
    #[arg(long, env = "GATEWAY_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "GATEWAY_LOG", default_value = "info")]
    pub log: String,

    /// Most client connections (any transport) this node holds; beyond it, new ones get 503.
    /// Unset: derived from the file limit and the cgroup memory limit; 0 = no limit.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Runtime worker threads; 0 = one per available core (CPU affinity and cgroup quota
    /// respected). With one, the single-threaded scheduler runs everything on the main thread.
    #[arg(long, env = "GATEWAY_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,

    /// Interval between WebSocket pings to each client.
    #[arg(long, env = "GATEWAY_PING_INTERVAL", default_value = "30s", value_parser = parse_positive_duration)]
    pub ping_interval: Duration,

    /// A client that has not answered a ping within this time is disconnected.
    #[arg(long, env = "GATEWAY_PONG_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub pong_timeout: Duration,

    /// Longest time a client may take to send a complete request (headers and body) on either
    /// port; slower requests are cut.
    #[arg(long, env = "GATEWAY_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub handshake_timeout: Duration,

    /// Largest event as delivered (encoded envelope, id included), in bytes.
    #[arg(long, env = "GATEWAY_MAX_EVENT_BYTES", default_value_t = 65_536)]
    pub max_event_bytes: usize,

    /// How long a token revocation of `POST /v1/disconnect` lasts: set it to at least the
    /// longest JWT lifetime you issue (a revoked token older than this is accepted again).
    #[arg(long, env = "GATEWAY_REVOCATION_TTL", default_value = "24h", value_parser = parse_positive_duration)]
    pub revocation_ttl: Duration,

    /// Most recipients in one publish request.
    #[arg(long, env = "GATEWAY_MAX_PUBLISH_USERS", default_value_t = 10_000)]
    pub max_publish_users: usize,

    /// Largest publish request body, in bytes (413 beyond).
    #[arg(long, env = "GATEWAY_MAX_PUBLISH_BODY", default_value_t = 1_048_576)]
    pub max_publish_body: u64,

    /// Largest client frame/message accepted, in bytes (close 1009 beyond).
    #[arg(long, env = "GATEWAY_MAX_CLIENT_FRAME", default_value_t = 4_096)]
    pub max_client_frame: usize,

    /// Most frames (pings, pongs, data) a client may send per second, and bytes per second:
    /// that many frames of `--max-client-frame` (fragments count there); beyond, the
    /// connection is closed with 1008. The protocol is receive-only: clients only answer pings.
    #[arg(long, env = "GATEWAY_CLIENT_FRAME_RATE", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub client_frame_rate: u32,

    /// Most connections (any transport) of one user on this node (429 beyond; 0 = no limit).
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS_PER_USER", default_value_t = 100)]
    pub max_connections_per_user: usize,

    /// Most connections of any transport (and handshakes in progress) from one client address
    /// (429 beyond; 0 = no limit). IPv6 addresses count per /64.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: usize,

    /// Connection attempts per second from one client address, with bursts of as many
    /// (429 beyond; 0 = no limit).
    #[arg(long, env = "GATEWAY_CONNECT_RATE_PER_IP", default_value_t = 0)]
    pub connect_rate_per_ip: u32,

    /// Failed authentications per second from one client address, with bursts of as many; beyond,
    /// the address's attempts get 429 without their credentials being checked (0 = no limit).
    #[arg(long, env = "GATEWAY_AUTH_FAILURES_PER_IP", default_value_t = 50)]
    pub auth_failures_per_ip: u32,

    /// Comma-separated proxy addresses or CIDRs whose `X-Forwarded-For` header names the client
    /// address (default: none, the TCP peer is the client).
    #[arg(long, env = "GATEWAY_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_cidr)]
    pub trusted_proxies: Vec<IpNet>,

    /// Per-connection outbound queue bound, in events (slow consumer beyond).
    #[arg(long, env = "GATEWAY_QUEUE_EVENTS", default_value_t = 1_024)]
    pub queue_events: usize,

    /// Per-connection outbound queue bound, in bytes (slow consumer beyond).
    #[arg(long, env = "GATEWAY_QUEUE_BYTES", default_value_t = 4_194_304)]
    pub queue_bytes: usize,

    /// Comma-separated legacy channel templates a user's connections receive (`{id}` = user
    /// id): raw payloads of existing backends, delivered verbatim. The publish API and
    /// `Publisher` use each user's gateway channel `gp:user:{<id>}` besides these.
    #[arg(
        long,
        env = "GATEWAY_CHANNELS",
        value_delimiter = ',',
        default_value = "c:{id},n:{id}"
    )]
    pub channels: Vec<String>,

    /// Redis key template whose existence makes a Gleepost token valid.
    #[arg(
        long,
        env = "GATEWAY_TOKEN_KEY",
        default_value = "users:{id}:token:{token}"
    )]
    pub token_key: String,

    /// Replicas that must acknowledge each publish (Redis `WAIT`) before the publish API answers
    /// 200 (0 = do not wait). With 1, an acknowledged event survives its primary's failover.
    #[arg(long, env = "GATEWAY_PUBLISH_REPLICAS", default_value_t = 0)]
    pub publish_replicas: u32,

    /// Timeout of a Redis command on the request path (token check, publish; a publish gets
    /// one more per 1,000 recipients beyond the first, history reads and pub/sub rounds five;
    /// on a cluster every command is cut at one).
    #[arg(long, env = "GATEWAY_REDIS_TIMEOUT", default_value = "1s", value_parser = parse_positive_duration)]
    pub redis_timeout: Duration,

    /// Interval between broker probes (a message this node publishes to itself).
    #[arg(long, env = "GATEWAY_PROBE_INTERVAL", default_value = "1s", value_parser = parse_positive_duration)]
    pub probe_interval: Duration,

    /// The node is unready when no probe came back within this time.
    #[arg(long, env = "GATEWAY_PROBE_TIMEOUT", default_value = "3s", value_parser = parse_positive_duration)]
    pub probe_timeout: Duration,

    /// Events kept per user for resume and gap repair; 0 turns history off.
    #[arg(long, env = "GATEWAY_HISTORY_SIZE", default_value_t = 1_000)]
    pub history_size: usize,

    /// How long a user's history lives after their last event.
    #[arg(long, env = "GATEWAY_HISTORY_TTL", default_value = "24h", value_parser = parse_positive_duration)]
    pub history_ttl: Duration,

    /// Embedded broker: most bytes of events its history holds over all users; beyond, the
    /// histories of the users published to least recently are dropped (`resync` on resume).
    #[arg(long, env = "GATEWAY_HISTORY_MAX_BYTES", default_value_t = 268_435_456, value_parser = clap::value_parser!(u64).range(1..))]
    pub history_max_bytes: u64,

    /// Most events replayed on one resume; more means `resync` instead.
    #[arg(long, env = "GATEWAY_MAX_REPLAY", default_value_t = 1_000)]
    pub max_replay: usize,

    /// Most bytes of events one replay from Redis holds (a resume's or a repair's read, the
    /// connection's own copy); more means `resync` instead.
    #[arg(long, env = "GATEWAY_MAX_REPLAY_BYTES", default_value_t = 4_194_304)]
    pub max_replay_bytes: usize,

    /// After SIGTERM, keep serving (unready) this long so load balancers notice. Default: 5s;
    /// 0s with --dev.
    #[arg(long, env = "GATEWAY_PRE_DRAIN_DELAY", value_parser = parse_duration)]
    pub pre_drain_delay: Option<Duration>,

    /// Spread the closing of connections over this window after the pre-drain delay. Default:
    /// 20s; 0s with --dev.
    #[arg(long, env = "GATEWAY_DRAIN_WINDOW", value_parser = parse_duration)]
    pub drain_window: Option<Duration>,
}

/// Default public port.
pub const DEFAULT_PUBLIC_PORT: u16 = 8080;
/// Default admin port.
pub const DEFAULT_ADMIN_PORT: u16 = 9090;

/// Production defaults of the drain settings (dev mode uses zero so Ctrl-C is instant).
pub const DEFAULT_PRE_DRAIN_DELAY: Duration = Duration::from_secs(5);
/// See [`DEFAULT_PRE_DRAIN_DELAY`].
pub const DEFAULT_DRAIN_WINDOW: Duration = Duration::from_secs(20);

/// Parse `30s`, `1h`, `250ms`… (humantime syntax).
pub fn parse_duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

/// Parse a duration that must be longer than zero (timers, timeouts, lifetimes: zero would
/// make an interval spin or panic, or every wait fail at once).
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be longer than zero, e.g. 500ms, 10s, 1m".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// Parse a CIDR (`10.0.0.0/8`, `fd00::/8`) or a single address (`10.1.2.3`, one host).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is neither an IP address nor a CIDR"))
}
