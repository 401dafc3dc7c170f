//! The public HTTP server and its three transports: `GET /ws` (WebSocket; the request is
//! checked by `handshake.rs`), `GET /sse` (Server-Sent Events, `sse.rs`) and `GET /poll`
//! (long-poll, `poll.rs`). Each client is admitted the same way (`admit.rs`: the address's
//! limits, authentication, registration, the broker subscription, revocation) and only then
//! answered, so every event published after the answer reaches the client.
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
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::client_ip::TrustedProxies;
use super::handshake::{self, HARD_MAX_HEADERS, HARD_MAX_HEAD_BYTES};
use super::limits::{LimitSettings, Limits, CLEANUP_INTERVAL};
use super::{admit, connection, cors, poll, sse};
use crate::config::Config;
use crate::log_limit::LogLimit;
use crate::node::Node;

/// What the public port needs beyond the node: its time bound and per-address limits.
pub(crate) struct Edge {
    handshake_timeout: Duration,
    pub(super) proxies: TrustedProxies,
    pub(super) limits: Arc<Limits>,
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
                    let stop = stop.clone();
                    tokio::spawn(serve_connection(stream, peer, node.clone(), edge.clone(), stop));
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

/// Serve one client connection. Once `stop` turns true (the node stops accepting for its
/// drain) it takes no new request: the one in flight is answered, then the connection closes,
/// so a keep-alive client cannot come back to a draining node on the same connection.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    node: Arc<Node>,
    edge: Arc<Edge>,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    // A peer that stops reading leaves unsent data in the kernel: once the gateway closes such
    // a connection (slow consumer, pong timeout, a cut stream) the socket would otherwise
    // linger in FIN-WAIT-1 with its send buffer (megabytes) for as long as the peer keeps
    // answering window probes with a zero window, outside every bound of the node. The kernel
    // aborts a connection whose data goes unacknowledged for twice what the gateway gives a
    // silent peer (ping interval + pong timeout), plus the close handshake's grace: on a live
    // connection the gateway's own timers always act first.
    let silent = node.conn.ping_interval + node.conn.pong_timeout;
    let dead_after = silent * 2 + super::ending::CLOSE_GRACE;
    if let Err(e) = socket2::SockRef::from(&stream).set_tcp_user_timeout(Some(dead_after)) {
        tracing::debug!(error = %e, "TCP_USER_TIMEOUT not set");
    }
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(edge.handshake_timeout)
        .max_buf_size(HARD_MAX_HEAD_BYTES)
        .max_header_size(HARD_MAX_HEAD_BYTES)
        .max_headers(HARD_MAX_HEADERS);
    // Notified by an SSE stream or a poll answer whose client does not read: the connection
    // is reset.
    let cut = Arc::new(Notify::new());
    let cut_by_stream = cut.clone();
    let stopping = stop.clone();
    let service = service_fn(move |req| {
        let (node, edge, cut) = (node.clone(), edge.clone(), cut_by_stream.clone());
        let stopping = *stopping.borrow();
        async move {
            // A panic while handling a request is contained: counted, logged once (the panic
            // hook), answered 500 JSON; the connection task goes on.
            let metrics = node.metrics.clone();
            let handled = AssertUnwindSafe(handle(req, node, edge, peer.ip(), cut, stopping))
                .catch_unwind()
                .await;
            Ok::<_, Infallible>(handled.unwrap_or_else(|_| {
                metrics.panics.inc();
                json_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal error").map(Either::Left)
            }))
        }
    });
    let mut conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut closing = false;
    loop {
        tokio::select! {
            ended = &mut conn => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "http connection ended with an error");
                }
                break;
            }
            // The sender only ever sends `true` (or is dropped): either way, stop.
            _ = stop.changed(), if !closing => {
                std::pin::Pin::new(&mut conn).graceful_shutdown();
                closing = true;
            }
            () = cut.notified() => {
                // The socket taken back from hyper is reset (`SO_LINGER` 0) as it drops: the
                // kernel discards what the client did not take, as for a WebSocket that does
                // not take its close. Dropping the rest frees what hyper still buffers.
                if let Some(parts) = conn.into_parts() {
                    let socket = parts.io.into_inner();
                    let reset = socket2::SockRef::from(&socket).set_linger(Some(Duration::ZERO));
                    if let Err(e) = reset {
                        tracing::debug!(error = %e, "SO_LINGER not set");
                    }
                }
                tracing::debug!("http connection reset: its client does not read");
                break;
            }
        }
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
    cut: Arc<Notify>,
    stopping: bool,
) -> Response<Body> {
    let deadline = Instant::now() + edge.handshake_timeout;
    if let Some(page) = super::demo::route(edge.dev, &req) {
        return page.map(Either::Left);
    }
    let transport = match req.uri().path() {
        "/ws" => Transport::WebSocket,
        "/sse" => Transport::Sse,
        "/poll" => Transport::Poll,
        _ => return json_error(StatusCode::NOT_FOUND, "Not found").map(Either::Left),
    };
    if req.method() == Method::OPTIONS && transport != Transport::WebSocket {
        return cors::preflight().map(Either::Left);
    }
    if req.method() != Method::GET {
        return json_error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed").map(Either::Left);
    }
    let accept = match transport {
        Transport::WebSocket => match handshake::check(&req) {
            Ok(accept) => Some(accept),
            Err(bad) => return bad.response().map(Either::Left),
        },
        _ => None,
    };
    let wait = match transport {
        Transport::Poll => match poll::wait_param(req.uri().query()) {
            Ok(wait) => wait,
            Err(message) => {
                let bad = json_error(StatusCode::BAD_REQUEST, &message);
                return cors::allow(bad).map(Either::Left);
            }
        },
        _ => Duration::ZERO,
    };
    if stopping {
        // The node drains: its connections are being closed; connect again (another node).
        let refused = json_error(StatusCode::SERVICE_UNAVAILABLE, "Node shutting down");
        return cors::allow(refused).map(Either::Left);
    }
    let admitted = match admit::admit(&req, &node, &edge, peer, deadline).await {
        Ok(admitted) => admitted,
        Err(refusal) if transport == Transport::WebSocket => return refusal.map(Either::Left),
        Err(refusal) => return cors::allow(refusal).map(Either::Left),
    };
    let since = resume_point(req.headers(), req.uri().query());
    match (transport, accept) {
        (Transport::WebSocket, Some(accept)) => {
            connection::spawn(hyper::upgrade::on(&mut req), admitted, since);
            let mut res = Response::new(Full::new(Bytes::new()));
            *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let headers = res.headers_mut();
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
            res.map(Either::Left)
        }
        (Transport::Sse, _) => {
            sse::start(admitted, since, node, cut).map(|body| Either::Right(Either::Left(body)))
        }
        _ => poll::answer(admitted, since, wait, &node, cut)
            .await
            .map(|body| Either::Right(Either::Right(body))),
    }
}

/// The response body of the public port: a whole body, an SSE stream, or a poll's answer.
pub(crate) type Body = Either<Full<Bytes>, Either<sse::SseBody, poll::PollBody>>;

/// Which endpoint a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Transport {
    WebSocket,
    Sse,
    Poll,
}

impl Transport {
    /// The `transport` label of metrics and logs.
    pub(super) fn label(self) -> &'static str {
        match self {
            Transport::WebSocket => "ws",
            Transport::Sse => "sse",
            Transport::Poll => "poll",
        }
    }
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
