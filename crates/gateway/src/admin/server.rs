//! The admin port's HTTP server: HTTP/1.x only (no HTTP/2, no h2c), every request complete
//! (headers and body) within the handshake timeout, a connection cap that never starves
//! `/healthz` and `/metrics` ([`super::slots`]), a lingering close so that a client still
//! sending a refused body reads the answer, and rate-limited logs of dropped connections.

use std::convert::Infallible;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::slots::{SlotGuard, Slots};
use super::{AdminResponse, InFlight};
use crate::log_limit::LogLimit;
use crate::node::Node;

/// Bounds of the admin port.
#[derive(Clone, Copy, Debug)]
pub struct AdminLimits {
    /// Most open connections; at the cap the longest-waiting one is closed to make room.
    pub max_connections: usize,
    /// Longest time from waiting for a request to having all of it (headers and body).
    pub request_timeout: Duration,
}

/// Largest read buffer of a connection, hence largest request head (431 beyond).
const MAX_BUF: usize = 16 * 1024;
/// After answering, at most this much of what the client still sends (a refused body) is read
/// and discarded, within the request timeout, before the socket is closed.
const LINGER_MAX_BYTES: usize = 64 * 1024 * 1024;

static DROPPED_LOG: LogLimit = LogLimit::new(Duration::from_secs(1));
static ACCEPT_LOG: LogLimit = LogLimit::new(Duration::from_secs(1));

/// Serve the admin routes on `listener` until `stop` turns true, then let open connections
/// finish their request (keep-alive off) and return once they are closed.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    limits: AdminLimits,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Slots::new(
        limits.max_connections,
        node.metrics.admin_connections.clone(),
        node.metrics.admin_dropped.with_label_values(&["evicted"]),
    );
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let guard = slots.admit();
                    let timeout = limits.request_timeout;
                    let conn = serve_connection(stream, guard, node.clone(), timeout, stop.clone());
                    tasks.spawn(conn);
                }
                Err(e) => {
                    // Typically EMFILE: back off briefly instead of spinning.
                    if let Some(suppressed) = ACCEPT_LOG.allow() {
                        tracing::warn!(error = %e, suppressed, "admin accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            // The sender only ever sends `true` (or is dropped): either way, stop.
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
    tracing::info!("admin listener closed");
}

async fn serve_connection(
    stream: TcpStream,
    guard: SlotGuard,
    node: Arc<Node>,
    timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let slot = guard.0.clone();
    let service_node = node.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let node = service_node.clone();
        let in_flight = InFlight {
            deadline: slot.deadline(timeout).into(),
            slot: slot.clone(),
        };
        // Boxed: `poll_without_shutdown` (kept so that a lingering close can follow) needs an
        // `Unpin` service future.
        Box::pin(async move {
            let response: AdminResponse = super::route(req, &in_flight, &node).await;
            in_flight.slot.idle();
            Ok::<_, Infallible>(response)
        })
    });
    let mut conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .max_buf_size(MAX_BUF)
        .serve_connection(TokioIo::new(stream), service);
    let mut stopping = *stop.borrow();
    if stopping {
        Pin::new(&mut conn).graceful_shutdown();
    }
    let result = loop {
        tokio::select! {
            result = poll_fn(|cx| conn.poll_without_shutdown(cx)) => break result,
            () = guard.0.evicted() => return,
            _ = stop.changed(), if !stopping => {
                stopping = true;
                Pin::new(&mut conn).graceful_shutdown();
            }
        }
    };
    let parts = conn.into_parts();
    if let Err(e) = result {
        // A timeout before any byte of a request is an idle keep-alive connection: normal.
        if e.is_timeout() && parts.read_buf.is_empty() {
            return;
        }
        let reason = if e.is_timeout() { "timeout" } else { "error" };
        node.metrics
            .admin_dropped
            .with_label_values(&[reason])
            .inc();
        if let Some(suppressed) = DROPPED_LOG.allow() {
            tracing::warn!(reason, error = %e, suppressed, "admin connection dropped");
        }
        if e.is_timeout() {
            return;
        }
    }
    if !stopping {
        let stream = parts.io.into_inner();
        tokio::select! {
            () = linger(stream, timeout) => {}
            () = guard.0.evicted() => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }
}

/// Close after the response without resetting the connection: send FIN, then read and discard
/// what the client still sends (the body of a refused request, bounded) until it closes too.
/// Closing with unread data would reset the connection, and a client still writing its body
/// would see a broken pipe instead of the answer.
async fn linger(mut stream: TcpStream, limit: Duration) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    let mut left = LINGER_MAX_BYTES;
    let _ = tokio::time::timeout(limit, async {
        while let Ok(n @ 1..) = stream.read(&mut buf).await {
            left = left.saturating_sub(n);
            if left == 0 {
                break;
            }
        }
    })
    .await;
}
