//! Startup and shutdown order of one gateway node.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use gleepost_event::keys::Template;
use gleepost_event::Limits;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::admin::ApiKeys;
use crate::auth::{
    Authenticator, GleepostAuth, Jwks, JwksClient, JwksMetrics, JwksUrl, JwtAuth, Minter, PublicKey,
};
use crate::broker::redis::PUBSUB_TIMEOUT_FACTOR;
use crate::broker::{Broker, Dispatcher, MemoryBroker, RedisBroker, RedisSettings, RingLimits};
use crate::config::{Config, LogFormat};
use crate::metrics::Metrics;
use crate::node::{ConnSettings, Node, PublishSettings};
use crate::outbox::QueueLimits;
use crate::registry::Registry;
use crate::shutdown::{self, Signals};
use crate::{admin, capacity, dev, transport};

/// Longest wait for connections to finish their close handshake after the drain.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Initialise logging from the configuration.
pub fn init_logging(config: &Config) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .with_context(|| format!("invalid log filter {:?}", config.log))?;
    // Colours only for a terminal: a pipe or a file gets plain text, no escape codes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("logging already initialised: {e}"))
}

/// The JWT secret (optional when a public key source is configured) and the API key list:
/// configured, or generated in dev mode.
fn credentials(config: &Config) -> Result<(Option<String>, String)> {
    let generate = || dev::random_secret();
    let public_keys = config.jwks_url.is_some() || config.jwt_public_key_file.is_some();
    let secret = match (&config.jwt_secret, config.dev) {
        (Some(s), _) if !s.is_empty() => Some(s.clone()),
        (_, true) => Some(generate()),
        _ if public_keys => None,
        _ => bail!(
            "GATEWAY_JWT_SECRET is required unless GATEWAY_JWT_PUBLIC_KEY_FILE or \
             GATEWAY_JWKS_URL is set (or run with --dev for generated credentials)"
        ),
    };
    let key = match (&config.api_key, config.dev) {
        (Some(k), _) if !k.trim_matches([',', ' ']).is_empty() => k.clone(),
        (_, true) => generate(),
        _ => bail!("GATEWAY_API_KEY is required (or run with --dev for generated credentials)"),
    };
    if secret.as_ref().is_some_and(|s| s.len() < 32) {
        tracing::warn!("GATEWAY_JWT_SECRET is shorter than 32 bytes; use a longer random secret");
    }
    Ok((secret, key))
}

/// The client JWT verifier: every configured key source, and the iss / aud rules.
fn jwt_auth(config: &Config, secret: Option<&str>, metrics: &Metrics) -> Result<JwtAuth> {
    let public_key = match &config.jwt_public_key_file {
        Some(path) => {
            let pem = std::fs::read(path).with_context(|| {
                format!("reading GATEWAY_JWT_PUBLIC_KEY_FILE {}", path.display())
            })?;
            let key = PublicKey::from_pem(&pem)
                .with_context(|| format!("GATEWAY_JWT_PUBLIC_KEY_FILE {}", path.display()))?;
            tracing::info!(path = %path.display(), alg = ?key.alg, "JWT public key loaded");
            Some(key)
        }
        None => None,
    };
    let jwks = match &config.jwks_url {
        Some(url) => {
            if config.jwks_refresh < Duration::from_secs(1) {
                bail!("GATEWAY_JWKS_REFRESH must be at least 1s");
            }
            let client = JwksUrl::parse(url)
                .and_then(JwksClient::new)
                .map_err(|e| anyhow::anyhow!(e))
                .context("GATEWAY_JWKS_URL")?;
            let jwks_metrics = JwksMetrics {
                failures: metrics.jwks_refresh_failures.clone(),
                refreshes: metrics.jwks_refreshes.clone(),
                keys: metrics.jwks_keys.clone(),
                last_success: metrics.jwks_last_success.clone(),
            };
            Some(Jwks::start(client, config.jwks_refresh, jwks_metrics))
        }
        None => None,
    };
    let rules = config.claim_rules();
    Ok(JwtAuth::with_keys(
        secret.map(str::as_bytes),
        public_key,
        jwks,
        rules,
    ))
}

/// Run a node until SIGTERM/SIGINT, then drain and return.
pub async fn run(config: Config) -> Result<()> {
    init_logging(&config)?;
    // One structured log line per panic (instead of the default hook's stderr text); the
    // connection task that panicked is caught, counted and cleaned up where it runs.
    std::panic::set_hook(Box::new(|info| tracing::error!(panic = %info, "panic")));
    let mut signals = Signals::install().context("installing signal handlers")?;
    let (jwt_secret, api_key) = credentials(&config)?;
    let api_keys = ApiKeys::parse(&api_key).context("GATEWAY_API_KEY holds no key")?;
    tracing::info!(keys = api_keys.len(), "admin API keys");
    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    let jwt = jwt_auth(&config, jwt_secret.as_deref(), &metrics)?;
    let open_files = capacity::raise_open_files();
    let memory = capacity::memory_limit();
    let max_connections = config
        .max_connections
        .unwrap_or_else(|| capacity::derived_max_connections(open_files, memory));
    tracing::info!(
        open_files,
        memory_limit = memory,
        max_connections,
        derived = config.max_connections.is_none(),
        "capacity"
    );
    metrics
        .open_files_limit
        .set(i64::try_from(open_files).unwrap_or(i64::MAX));
    metrics
        .max_connections
        .set(i64::try_from(max_connections).unwrap_or(i64::MAX));
    let limits = Limits {
        max_event_bytes: config.max_event_bytes,
    };
    let registry = Arc::new(Registry::new(
        QueueLimits {
            max_events: config.queue_events,
            max_bytes: config.queue_bytes,
        },
        max_connections,
        config.max_connections_per_user,
    ));
    let dispatcher = Dispatcher::new(registry.clone(), metrics.clone());
    let (broker, gleepost) = match config.redis_target()? {
        Some(target) => {
            let channels = config
                .channels
                .iter()
                .map(|c| {
                    Template::parse_channel(c).with_context(|| format!("channel template {c:?}"))
                })
                .collect::<Result<Vec<_>>>()?;
            let settings = RedisSettings {
                target,
                channels,
                timeout: config.redis_timeout,
                probe_interval: config.probe_interval,
                probe_timeout: config.probe_timeout,
                limits,
                history: config.history(),
                max_replay: config.max_replay,
                max_replay_bytes: config.max_replay_bytes,
                publish_replicas: config.publish_replicas,
                max_publish_users: config.max_publish_users,
            };
            let broker = RedisBroker::start(settings, dispatcher)
                .context("invalid REDIS_URL, REDIS_CLUSTER_URLS or REDIS_SENTINEL_URLS")?;
            let token_key = Template::parse_token_key(&config.token_key)
                .with_context(|| format!("token key template {:?}", config.token_key))?;
            let gleepost = GleepostAuth::new(broker.commands(), token_key, config.redis_timeout);
            (Broker::Redis(broker), Some(gleepost))
        }
        None => {
            if !config.dev {
                tracing::info!(
                    "no REDIS_URL: embedded broker, this node delivers only its own publishes"
                );
            }
            (
                Broker::Memory(MemoryBroker::new(
                    dispatcher,
                    RingLimits {
                        history: config.history(),
                        max_replay: config.max_replay,
                        max_replay_bytes: config.max_replay_bytes,
                        max_bytes: usize::try_from(config.history_max_bytes).unwrap_or(usize::MAX),
                    },
                )),
                None,
            )
        }
    };
    let node = Node::new(
        registry.clone(),
        broker,
        metrics,
        Authenticator::new(jwt, gleepost),
        limits,
        PublishSettings {
            api_keys,
            max_users: config.max_publish_users,
            max_body: config.max_publish_body,
            revocation_ttl: config.revocation_ttl,
            adds_ids: config.history().enabled(),
        },
        ConnSettings {
            ping_interval: config.ping_interval,
            pong_timeout: config.pong_timeout,
            subscribe_timeout: config.redis_timeout * PUBSUB_TIMEOUT_FACTOR,
            websocket: websocket_config(&config),
            client_frame_rate: config.client_frame_rate,
            max_replay_bytes: config.max_replay_bytes,
        },
    );

    let public = bind(config.listen(), "public")?;
    let admin = bind(config.admin_listen(), "admin")?;
    let public_addr = public.local_addr()?;
    let admin_addr = admin.local_addr()?;
    tracing::info!(public = %public_addr, admin = %admin_addr, redis = config.redis_url.is_some() || !config.redis_cluster_urls.is_empty(), "listening");
    if let (true, Some(secret)) = (config.dev, &jwt_secret) {
        let minter = Minter::new(secret.as_bytes(), config.claim_rules());
        // The first key: what a developer pastes (a configured list may hold several).
        let key = api_key.split(',').map(str::trim).find(|k| !k.is_empty());
        dev::print_banner(&minter, key.unwrap_or_default(), public_addr, admin_addr)?;
    }

    let (stop_public, stop_public_rx) = watch::channel(false);
    let public_task = tokio::spawn(transport::public::serve(
        public,
        node.clone(),
        transport::public::Edge::new(&config),
        stop_public_rx,
    ));
    let (stop_admin, stop_admin_rx) = watch::channel(false);
    let admin_limits = admin::AdminLimits {
        max_connections: config.admin_max_connections as usize,
        request_timeout: config.handshake_timeout,
    };
    let admin_task = tokio::spawn(admin::serve(
        admin,
        node.clone(),
        admin_limits,
        stop_admin_rx,
    ));

    let signal = signals.recv().await;
    let pre_drain = config.pre_drain_delay();
    let window = config.drain_window();
    tracing::info!(
        signal,
        ?pre_drain,
        ?window,
        connections = registry.len(),
        "shutting down: unready, draining"
    );
    node.start_draining();
    let mut forced = false;
    tokio::select! {
        _ = tokio::time::sleep(pre_drain) => {}
        s = signals.recv() => { forced = true; tracing::info!(signal = s, "second signal: closing now"); }
    }
    let _ = stop_public.send(true);
    let _ = public_task.await;
    let window = if forced { Duration::ZERO } else { window };
    tokio::select! {
        n = shutdown::drain(&registry, window) => tracing::info!(closed = n, "drain finished"),
        s = signals.recv() => {
            tracing::info!(signal = s, "second signal: closing now");
            shutdown::drain(&registry, Duration::ZERO).await;
        }
    }
    if !shutdown::wait_closed(&registry, CLOSE_WAIT).await {
        tracing::warn!(left = registry.len(), "connections still open at exit");
    }
    node.broker.leave().await;
    let _ = stop_admin.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), admin_task).await;
    tracing::info!("bye");
    Ok(())
}

/// Listen backlog: large enough that a reconnect storm queues in the kernel instead of
/// overflowing (the default of 128 made clients retry after 1 s under bursts).
const LISTEN_BACKLOG: u32 = 4096;

fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener> {
    let bound = (|| {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    })();
    bound.with_context(|| format!("binding the {what} listener to {addr}"))
}

/// Bytes of frames gathered before a socket write.
const WRITE_BUFFER: usize = 16 * 1024;

/// The write buffer's bound: a batch's buffer, one largest event (with its id and frame
/// header) and room for a few pongs.
fn max_write_buffer(max_event_bytes: usize) -> usize {
    WRITE_BUFFER + max_event_bytes + 4 * 1024
}

/// Small buffers keep idle connections cheap; client messages are bounded.
pub(crate) fn websocket_config(config: &Config) -> WebSocketConfig {
    WebSocketConfig::default()
        // Client data is tiny (pongs: 14 bytes): a small read buffer, grown only for larger
        // frames; also the most read at once, so a 4 KiB client frame takes 64 reads
        // (512 → 128 → 64 bytes took 0.4 and 0.06 KiB off every idle connection).
        .read_buffer_size(64)
        // Frames of one batch accumulate up to this size before a write; flush sends the rest.
        .write_buffer_size(WRITE_BUFFER)
        // Bounded: our writes wait for the socket beyond `WRITE_BUFFER` + one event, so only
        // pongs to a client that pings and never reads can fill the rest; then it is closed
        // as a slow consumer (tungstenite's default is unbounded).
        .max_write_buffer_size(max_write_buffer(config.max_event_bytes))
        .max_message_size(Some(config.max_client_frame))
        .max_frame_size(Some(config.max_client_frame))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cli;
    use clap::Parser;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::WebSocketStream;

    /// A masked client ping with the largest control payload (125 bytes; mask 0: sent as is).
    fn ping() -> Vec<u8> {
        let mut frame = vec![0x89, 0x80 | 125, 0, 0, 0, 0];
        frame.extend([b'p'; 125]);
        frame
    }

    #[tokio::test]
    async fn pongs_to_a_client_that_does_not_read_are_bounded() {
        // Found by the `client_frames` fuzz target: each pong was appended to an unbounded
        // write buffer while the client did not read (a ping flood held GiBs).
        const PINGS: usize = 8_000; // ≈ 1 MB of pongs
        let config = Cli::try_parse_from(["gleepost-gateway"]).unwrap().config;
        let (client, server) = tokio::io::duplex(8 << 10);
        let (mut from_server, mut to_server) = tokio::io::split(client);
        let mut ws =
            WebSocketStream::from_raw_socket(server, Role::Server, Some(websocket_config(&config)))
                .await;
        let flood = async {
            for _ in 0..PINGS {
                to_server.write_all(&ping()).await.unwrap();
            }
        };
        let read = async {
            for _ in 0..PINGS {
                assert!(matches!(ws.next().await, Some(Ok(Message::Ping(_)))));
            }
        };
        tokio::join!(flood, read);
        // The client reads at last: it gets what the server held for it, then end of stream.
        let flushed = async move {
            let _ = ws.flush().await;
        };
        let mut received = Vec::new();
        let ((), got) = tokio::join!(flushed, from_server.read_to_end(&mut received));
        got.unwrap();
        assert!(
            received.len() < 256 << 10,
            "{} bytes of pongs held for one connection",
            received.len()
        );
    }
}
