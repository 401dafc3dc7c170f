//! The public HTTP server: `GET /ws` checks the request (`handshake.rs`) and the client
//! address's limits (`limits.rs`), authenticates, registers the connection, waits for the
//! broker subscription, and only then answers `101 Switching Protocols`, so every event published
//! after the handshake response reaches the client.
//!
//! Time is bounded twice: a client has `--handshake-timeout` to send its request head (hyper's
//! header read timeout, also between keep-alive requests), and the gateway answers within the
//! same time from then on (authentication and subscription; 503 beyond).

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{timeout_at, Instant};

use super::client_ip::{AddrKey, TrustedProxies};
use super::connection;
use super::handshake::{self, HARD_MAX_HEADERS, HARD_MAX_HEAD_BYTES};
use super::limits::{LimitSettings, Limits, Refused, CLEANUP_INTERVAL};
use crate::auth::{AuthError, Credentials, Identity};
use crate::config::Config;
use crate::log_limit::LogLimit;
use crate::node::Node;
use crate::registry::AtCapacity;

/// What the public port needs beyond the node: its time bound and per-address limits.
pub(crate) struct Edge {
    handshake_timeout: Duration,
    proxies: TrustedProxies,
    limits: Arc<Limits>,
    /// Dev mode: `GET /` serves the demo page (`demo.rs`).
    dev: bool,
}

impl Edge {
    /// The public port's settings from the configuration.
    pub(crate) fn new(config: &Config) -> Arc<Self> {
        Arc::new(Edge {
            handshake_timeout: config.handshake_timeout,
            proxies: TrustedProxies::new(config.trusted_proxies.clone()),
            limits: Limits::new(LimitSettings {
                max_connections_per_ip: config.max_connections_per_ip,
                connect_rate_per_ip: config.connect_rate_per_ip,
                auth_failures_per_ip: config.auth_failures_per_ip,
            }),
            dev: config.dev,
        })
    }
}

/// Accept connections on `listener` until `stop` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    edge: Arc<Edge>,
    mut stop: watch::Receiver<bool>,
) {
    let mut cleanup = tokio::time::interval(CLEANUP_INTERVAL);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tokio::spawn(serve_connection(stream, peer, node.clone(), edge.clone()));
                }
                Err(e) => {
                    // Typically EMFILE: back off briefly instead of spinning.
                    if let Some(suppressed) = ACCEPT_LOG.allow() {
                        tracing::warn!(error = %e, suppressed, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = cleanup.tick() => edge.limits.cleanup(),
            // The sender only ever sends `true` (or is dropped): either way, stop.
            _ = stop.changed() => break,
        }
    }
    tracing::info!("public listener closed");
}

/// Log lines a flood (or a Redis outage) would repeat: at most one per second each.
static ACCEPT_LOG: LogLimit = LogLimit::new(Duration::from_secs(1));
static SUBSCRIBE_LOG: LogLimit = LogLimit::new(Duration::from_secs(1));

async fn serve_connection(stream: TcpStream, peer: SocketAddr, node: Arc<Node>, edge: Arc<Edge>) {
    let _ = stream.set_nodelay(true);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(edge.handshake_timeout)
        .max_buf_size(HARD_MAX_HEAD_BYTES)
        .max_header_size(HARD_MAX_HEAD_BYTES)
        .max_headers(HARD_MAX_HEADERS);
    let service = service_fn(move |req| {
        let (node, edge) = (node.clone(), edge.clone());
        async move {
            // A panic while handling a request is contained: counted, logged once (the panic
            // hook), answered 500 JSON; the connection task goes on.
            let metrics = node.metrics.clone();
            let handled = AssertUnwindSafe(handle(req, node, edge, peer.ip()))
                .catch_unwind()
                .await;
            Ok::<_, Infallible>(handled.unwrap_or_else(|_| {
                metrics.panics.inc();
                json_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal error")
            }))
        }
    });
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "http connection ended with an error");
    }
}

/// A JSON error response `{"error": "<message>"}`.
pub(crate) fn json_error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

async fn handle(
    mut req: Request<Incoming>,
    node: Arc<Node>,
    edge: Arc<Edge>,
    peer: IpAddr,
) -> Response<Full<Bytes>> {
    let deadline = Instant::now() + edge.handshake_timeout;
    if let Some(page) = super::demo::route(edge.dev, &req) {
        return page;
    }
    if req.uri().path() != "/ws" {
        return json_error(StatusCode::NOT_FOUND, "Not found");
    }
    if req.method() != Method::GET {
        return json_error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed");
    }
    let accept = match handshake::check(&req) {
        Ok(accept) => accept,
        Err(bad) => return bad.response(),
    };
    let addr = AddrKey::of(edge.proxies.client(peer, req.headers()));
    // Held until the WebSocket ends (or the handshake fails).
    let slot = match edge.limits.admit(addr) {
        Ok(slot) => slot,
        Err(refused) => return refuse(&node, refused, &addr),
    };
    let authenticated = timeout_at(
        deadline,
        node.auth.authenticate(req.headers(), req.uri().query()),
    )
    .await
    .unwrap_or(Err(AuthError::Unavailable));
    let identity = match authenticated {
        Ok(identity) => identity,
        Err(e) => {
            node.metrics
                .auth_failures
                .with_label_values(&[e.label()])
                .inc();
            tracing::debug!(reason = e.label(), "connection rejected");
            return match e {
                AuthError::Invalid(_) => {
                    edge.limits.auth_failed(addr);
                    json_error(StatusCode::UNAUTHORIZED, "Invalid credentials")
                }
                AuthError::Unavailable => json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Authentication temporarily unavailable",
                ),
            };
        }
    };

    let registration = match connection::Registration::new(node.clone(), identity.user) {
        Ok(registration) => registration,
        Err(AtCapacity::User) => return refuse(&node, Refused::PerUser, &addr),
        Err(AtCapacity::Node) => {
            node.metrics
                .connections_refused
                .with_label_values(&["capacity"])
                .inc();
            tracing::debug!(user = identity.user, "connection refused: node at capacity");
            return json_error(StatusCode::SERVICE_UNAVAILABLE, "Server at capacity");
        }
    };
    let mut subscribed = registration.subscribed.clone();
    let wait_until = deadline.min(Instant::now() + node.conn.subscribe_timeout);
    let confirmed = timeout_at(wait_until, async {
        subscribed.wait_for(|s| *s).await.is_ok()
    })
    .await;
    if confirmed != Ok(true) {
        node.metrics
            .connections_refused
            .with_label_values(&["broker"])
            .inc();
        if let Some(suppressed) = SUBSCRIBE_LOG.allow() {
            tracing::warn!(
                user = identity.user,
                suppressed,
                "subscription not confirmed in time"
            );
        }
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "Broker unavailable");
    }
    // Checked once the subscription is confirmed: a disconnect published after a revocation
    // cannot slip between this check and the subscription.
    if let Err(e) = timeout_at(deadline, not_revoked(&node, &identity))
        .await
        .unwrap_or(Err(AuthError::Unavailable))
    {
        node.metrics
            .auth_failures
            .with_label_values(&[e.label()])
            .inc();
        return match e {
            AuthError::Invalid(_) => {
                edge.limits.auth_failed(addr);
                json_error(StatusCode::UNAUTHORIZED, "Invalid credentials")
            }
            AuthError::Unavailable => json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Authentication temporarily unavailable",
            ),
        };
    }

    let on_upgrade = hyper::upgrade::on(&mut req);
    let since = resume_point(req.headers(), req.uri().query());
    tokio::spawn(async move {
        let _slot = slot;
        connection::run(on_upgrade, registration, identity, since).await;
    });

    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = res.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    res
}

/// A JWT issued before its user's revocation time (or without `iat` while one holds) is
/// refused (`POST /v1/disconnect` with `revoke_tokens_before`).
async fn not_revoked(node: &Node, identity: &Identity) -> Result<(), AuthError> {
    let Credentials::Jwt { issued_at } = identity.credentials else {
        return Ok(());
    };
    match node.broker.revoked_before(identity.user).await {
        Ok(Some(before)) if issued_at.is_none_or(|iat| iat < before) => {
            Err(AuthError::Invalid("jwt_revoked"))
        }
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::debug!(error = %e, "revocation check failed");
            Err(AuthError::Unavailable)
        }
    }
}

/// Count and answer a 429.
fn refuse(node: &Node, refused: Refused, addr: &AddrKey) -> Response<Full<Bytes>> {
    node.metrics
        .connections_refused
        .with_label_values(&[refused.label()])
        .inc();
    tracing::debug!(reason = refused.label(), %addr, "connection refused: limit");
    refused.response()
}

/// The id the client resumes after: `?since=<id>` or header `Last-Event-ID`.
pub(crate) fn resume_point(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    let from_query = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "since")
            .map(|(_, v)| v.into_owned())
    });
    from_query.or_else(|| {
        headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    })
}
