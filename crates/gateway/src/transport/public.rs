//! The public HTTP server: `GET /ws` authenticates, registers the connection, waits for the
//! broker subscription, and only then answers `101 Switching Protocols`, so every event published
//! after the handshake response reaches the client.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::connection;
use crate::auth::AuthError;
use crate::node::Node;

/// How long a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Accept connections on `listener` until `stop` turns true.
pub async fn serve(listener: TcpListener, node: Arc<Node>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_connection(stream, node.clone()));
                }
                Err(e) => {
                    // Typically EMFILE: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // The sender only ever sends `true` (or is dropped): either way, stop.
            _ = stop.changed() => break,
        }
    }
    tracing::info!("public listener closed");
}

async fn serve_connection(stream: TcpStream, node: Arc<Node>) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| {
        let node = node.clone();
        async move { Ok::<_, Infallible>(handle(req, node).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "http connection ended with an error");
    }
}

/// A JSON error response `{"error": "<message>"}`.
pub fn json_error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

async fn handle(mut req: Request<Incoming>, node: Arc<Node>) -> Response<Full<Bytes>> {
    if req.uri().path() != "/ws" {
        return json_error(StatusCode::NOT_FOUND, "Not found");
    }
    if req.method() != Method::GET {
        return json_error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed");
    }
    let identity = match node
        .auth
        .authenticate(req.headers(), req.uri().query())
        .await
    {
        Ok(identity) => identity,
        Err(e) => {
            node.metrics
                .auth_failures
                .with_label_values(&[e.label()])
                .inc();
            tracing::debug!(reason = e.label(), "connection rejected");
            return match e {
                AuthError::Invalid(_) => {
                    json_error(StatusCode::UNAUTHORIZED, "Invalid credentials")
                }
                AuthError::Unavailable => json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Authentication temporarily unavailable",
                ),
            };
        }
    };
    let accept = match accept_key(req.headers()) {
        Ok(accept) => accept,
        Err(message) => return json_error(StatusCode::BAD_REQUEST, message),
    };

    let Ok(registration) = connection::Registration::new(node.clone(), identity.user) else {
        node.metrics
            .connections_refused
            .with_label_values(&["capacity"])
            .inc();
        tracing::debug!(user = identity.user, "connection refused: node at capacity");
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "Server at capacity");
    };
    let mut subscribed = registration.subscribed.clone();
    let confirmed = tokio::time::timeout(node.conn.subscribe_timeout, async {
        subscribed.wait_for(|s| *s).await.is_ok()
    })
    .await;
    if confirmed != Ok(true) {
        node.metrics
            .connections_refused
            .with_label_values(&["broker"])
            .inc();
        tracing::warn!(user = identity.user, "subscription not confirmed in time");
        return json_error(StatusCode::SERVICE_UNAVAILABLE, "Broker unavailable");
    }

    let on_upgrade = hyper::upgrade::on(&mut req);
    let since = resume_point(req.headers(), req.uri().query());
    tokio::spawn(connection::run(on_upgrade, registration, identity, since));

    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = res.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    res
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

/// Check the upgrade headers; returns the `Sec-WebSocket-Accept` value.
fn accept_key(headers: &HeaderMap) -> Result<HeaderValue, &'static str> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return Err("Expected a WebSocket upgrade request");
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err("Unsupported WebSocket version (expected 13)");
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or("Missing Sec-WebSocket-Key")?;
    HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
        .map_err(|_| "Invalid Sec-WebSocket-Key")
}
