//! Thin wrappers over the gateway's internals for the fuzz targets in `fuzz/` (see
//! `docs/fuzzing.md`). Compiled only with the `fuzzing` feature and hidden from the docs: this is
//! no API. Every reference to a private item the targets need is in this file, so moving an
//! internal means editing this file only.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use gleepost_event::keys::{Template, DEFAULT_TOKEN_KEY};
use gleepost_event::RedisConn;
use http::HeaderMap;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::IntoConnectionInfo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::auth::{Authenticator, GleepostAuth, JwtAuth};
use crate::broker::redis::pubsub::{PubSubConn, PubSubError, Push};
use crate::config::Cli;

/// The WebSocket settings the public server applies to every client connection, for the default
/// configuration (plus any `GATEWAY_*` variable set in the environment).
pub fn websocket_config() -> Result<WebSocketConfig, clap::Error> {
    let cli = Cli::try_parse_from(["gleepost-gateway"])?;
    Ok(crate::server::websocket_config(&cli.config))
}

/// Where an upgrade request resumes: `?since=<id>`, else the `Last-Event-ID` header.
pub fn resume_point(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    crate::transport::public::resume_point(headers, query)
}

/// The public port's authenticator: JWTs signed with `secret`, and Gleepost tokens checked in
/// the Redis at `store` (a `redis://` or `redis+unix://` URL, connected on first use, never
/// retried: a store that fails makes the check `AuthError::Unavailable`). Must be called inside
/// a Tokio runtime.
pub fn authenticator(secret: &[u8], store: &str) -> Result<FuzzAuthenticator, redis::RedisError> {
    let config = ConnectionManagerConfig::new()
        .set_number_of_retries(0)
        .set_connection_timeout(Some(Duration::from_millis(100)))
        .set_response_timeout(Some(Duration::from_millis(100)));
    let store = ConnectionManager::new_lazy_with_config(redis::Client::open(store)?, config)?;
    let key = Template::parse_token_key(DEFAULT_TOKEN_KEY).map_err(|e| {
        redis::RedisError::from((redis::ErrorKind::Client, "token key", e.to_string()))
    })?;
    let gleepost = GleepostAuth::new(
        RedisConn::Single(gleepost_event::SingleConn::from_manager(store)),
        key,
        Duration::from_millis(100),
    );
    Ok(FuzzAuthenticator(Authenticator::new(
        JwtAuth::new(secret),
        Some(gleepost),
    )))
}

/// The public port's authenticator (a wrapper: the gateway's own types are crate-private).
pub struct FuzzAuthenticator(Authenticator);

/// What an admitted client is.
#[derive(Debug)]
pub struct FuzzIdentity {
    /// The user.
    pub user: u64,
    /// When the credentials stop being accepted.
    pub expires: Option<std::time::SystemTime>,
    /// The credentials are checked again at `expires` (Gleepost tokens).
    pub renewable: bool,
}

impl FuzzAuthenticator {
    /// Authenticate a request from its headers and query string, like `GET /ws`.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<FuzzIdentity, String> {
        let identity = self
            .0
            .authenticate(headers, query)
            .await
            .map_err(|e| e.to_string())?;
        Ok(FuzzIdentity {
            user: identity.user,
            expires: identity.expires,
            renewable: identity.renewal.is_some(),
        })
    }
}

/// One push of the pub/sub connection, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedPush {
    /// A published message.
    Message {
        /// The channel.
        channel: Vec<u8>,
        /// The payload, byte-exact.
        payload: Vec<u8>,
    },
    /// A SUBSCRIBE confirmation.
    Subscribed,
    /// An UNSUBSCRIBE confirmation.
    Unsubscribed,
    /// An SSUBSCRIBE confirmation.
    ShardSubscribed,
    /// An SUNSUBSCRIBE (confirmation, or a shard channel dropped by Redis).
    ShardUnsubscribed {
        /// The channel.
        channel: Vec<u8>,
    },
    /// Anything else (ignored by the subscriber).
    Other,
}

/// How the pub/sub reader's session over a byte stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PubSubEnd {
    /// The stream ended (what a clean stream of complete frames gives).
    Closed,
    /// An error reply from the server, with its text.
    Server(String),
    /// Bytes that are not the RESP a subscribed connection receives.
    Protocol(String),
    /// An I/O error.
    Io(String),
}

/// Everything the pub/sub reader returned for one byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubSubRead {
    /// Every push, in order.
    pub pushes: Vec<OwnedPush>,
    /// What ended the session.
    pub end: PubSubEnd,
}

/// The name the fuzzed pub/sub connection gives itself.
const NAME: &str = "gleepost-gateway-fuzz";

/// Serve `chunks` (one write each, yielding in between, then end of stream) over a Unix socket
/// to the node's pub/sub reader (`broker::pubsub`) and read pushes until it fails.
pub async fn read_pubsub(chunks: &[&[u8]]) -> std::io::Result<PubSubRead> {
    let path = scratch_path("pubsub");
    let listener = UnixListener::bind(&path)?;
    let info = format!("redis+unix://{}", path.display())
        .into_connection_info()
        .map_err(std::io::Error::other);
    let connected = async {
        let info = info?;
        PubSubConn::connect(&info, NAME)
            .await
            .map_err(std::io::Error::other)
    };
    // The server takes the connection's CLIENT SETNAME and answers it (unread bytes would turn
    // its close into a reset), then serves the fuzz input.
    let accept = async {
        let (mut server, addr) = listener.accept().await?;
        let setname = format!(
            "*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n${}\r\n{NAME}\r\n",
            NAME.len()
        );
        let mut command = vec![0u8; setname.len()];
        server.read_exact(&mut command).await?;
        server.write_all(b"+OK\r\n").await?;
        std::io::Result::Ok((server, addr))
    };
    let (conn, accepted) = tokio::join!(connected, accept);
    // Best effort: the socket file is not needed once connected.
    let _ = std::fs::remove_file(&path);
    let (mut conn, (mut server, _)) = (conn?, accepted?);
    let serve = async move {
        for chunk in chunks {
            if server.write_all(chunk).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
        let _ = server.shutdown().await;
    };
    let read = async move {
        let mut pushes = Vec::new();
        let end = loop {
            match conn.next().await {
                Ok(push) => pushes.push(owned(push)),
                Err(e) => break end_of(e),
            }
        };
        PubSubRead { pushes, end }
    };
    let ((), read) = tokio::join!(serve, read);
    Ok(read)
}

fn owned(push: Push<'_>) -> OwnedPush {
    match push {
        Push::Message { channel, payload } => OwnedPush::Message {
            channel: channel.to_vec(),
            payload: payload.to_vec(),
        },
        Push::Subscribed => OwnedPush::Subscribed,
        Push::Unsubscribed => OwnedPush::Unsubscribed,
        Push::ShardSubscribed => OwnedPush::ShardSubscribed,
        Push::ShardUnsubscribed { channel } => OwnedPush::ShardUnsubscribed {
            channel: channel.to_vec(),
        },
        Push::Other => OwnedPush::Other,
    }
}

fn end_of(e: PubSubError) -> PubSubEnd {
    match e {
        PubSubError::Closed => PubSubEnd::Closed,
        PubSubError::Server(text) => PubSubEnd::Server(text),
        PubSubError::Protocol(what) => PubSubEnd::Protocol(what.to_string()),
        other => PubSubEnd::Io(other.to_string()),
    }
}

/// A fresh path in the temporary directory, unique in this process.
fn scratch_path(what: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("gp-fuzz-{}-{what}-{n}.sock", std::process::id()))
}

/// The event id a frame of `text` carries, as the connection's duplicate filter reads it
/// (`outbox::Frame`).
pub fn frame_event_id(text: &str) -> Option<(String, u64, u64)> {
    let frame = crate::outbox::Frame::new(
        tokio_tungstenite::tungstenite::Utf8Bytes::from(text.to_owned()),
        std::time::Instant::now(),
    );
    frame
        .event_id()
        .map(|(epoch, ms, seq)| (epoch.to_owned(), ms, seq))
}

/// The `resync` control event for a "latest" id read from the store (`history::resync_frame`).
pub fn resync_frame(reason: &str, latest: Option<&str>) -> String {
    crate::history::resync_frame(reason, latest)
        .as_str()
        .to_owned()
}

/// A connection's duplicate filter (`history::Dedup`), started after an id.
pub struct FuzzDedup(crate::history::Dedup);

impl FuzzDedup {
    /// Start after `since` (the client has it).
    pub fn after(since: &gleepost_event::EventId) -> Self {
        FuzzDedup(crate::history::Dedup::after(since))
    }

    /// True when a frame of `text` must be sent; records its id.
    pub fn admit(&mut self, text: &str) -> bool {
        let frame = crate::outbox::Frame::new(
            tokio_tungstenite::tungstenite::Utf8Bytes::from(text.to_owned()),
            std::time::Instant::now(),
        );
        self.0.admit(&frame)
    }
}
