//! The admin port's HTTP server: the accept loop, a connection cap that never starves
//! `/healthz` and `/metrics` ([`super::slots`]), and each connection served over HTTP/1.1
//! ([`super::http1`]) or, when it opens with the HTTP/2 connection preface (h2c with prior
//! knowledge, no TLS, no `Upgrade`), over HTTP/2 ([`super::http2`]). Every request is complete
//! (headers and body) within the request timeout; dropped connections are counted and logged at
//! a bounded rate.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use http::Request;
use hyper::body::Incoming;
use hyper::service::{service_fn, Service};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::slots::{SlotGuard, SlotRef, Slots};
use super::{http1, http2, AdminResponse, InFlight};
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

/// The first bytes of every HTTP/2 connection (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

static DROPPED_LOG: LogLimit = LogLimit::new(Duration::from_secs(1));
static ACCEPT_LOG: LogLimit = LogLimit::new(Duration::from_secs(1));

/// Serve the admin routes on `listener` until `stop` turns true, then let open connections
/// finish their requests (no new ones) and return once they are closed.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    limits: AdminLimits,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Slots::new(
        limits.max_connections,
        node.metrics.admin_connections.clone(),
        node.metrics.admin_in_flight.clone(),
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

/// How a connection opens.
enum Opening {
    Http1,
    Http2,
    /// The peer closed before sending a byte.
    Closed,
}

async fn serve_connection(
    stream: TcpStream,
    guard: SlotGuard,
    node: Arc<Node>,
    timeout: Duration,
    stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let deadline = Instant::from_std(guard.0.deadline(timeout));
    let opening = tokio::select! {
        opening = tokio::time::timeout_at(deadline, opening(&stream)) => opening,
        () = guard.0.evicted() => return,
    };
    match opening {
        Ok(Ok(Opening::Http1)) => http1::serve(stream, guard, node, timeout, stop).await,
        Ok(Ok(Opening::Http2)) => http2::serve(stream, guard, node, timeout, stop).await,
        Ok(Ok(Opening::Closed) | Err(_)) => {}
        Err(_elapsed) => {
            // Silence is an idle connection; part of a preface is a request not sent in time.
            let mut byte = [0u8; 1];
            if let Some(Ok(1..)) = stream.peek(&mut byte).now_or_never() {
                dropped(&node, "timeout", &"request not received in time");
            }
        }
    }
}

/// Whether the connection opens with the HTTP/2 preface, read without consuming it: HTTP/1
/// as soon as a byte differs from it (`POST`, `GET` differ at the second byte).
async fn opening(stream: &TcpStream) -> std::io::Result<Opening> {
    let mut buf = [0u8; PREFACE.len()];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Ok(Opening::Closed);
        }
        if !PREFACE.starts_with(&buf[..n]) {
            return Ok(Opening::Http1);
        }
        if n == PREFACE.len() {
            return Ok(Opening::Http2);
        }
        // A prefix of the preface so far: `peek` would return at once with the same bytes,
        // so wait a little for the rest (bounded by the caller's deadline).
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// When a request's body must be complete.
#[derive(Clone, Copy)]
pub(super) enum Deadline {
    /// HTTP/1.1: the request timeout after the connection started waiting for the request.
    SinceIdle(Duration),
    /// HTTP/2: the request timeout after the request's headers arrived.
    SinceHeaders(Duration),
}

/// The future of one admin request.
pub(super) type AdminFuture =
    Pin<Box<dyn Future<Output = Result<AdminResponse, Infallible>> + Send>>;

/// The admin routes as the hyper service of one connection: each request holds a share of the
/// connection's slot while its handler runs.
pub(super) fn service(
    slot: SlotRef,
    node: Arc<Node>,
    deadline: Deadline,
) -> impl Service<Request<Incoming>, Response = AdminResponse, Error = Infallible, Future = AdminFuture>
{
    service_fn(move |req: Request<Incoming>| -> AdminFuture {
        let node = node.clone();
        let deadline = match deadline {
            Deadline::SinceIdle(timeout) => slot.deadline(timeout),
            Deadline::SinceHeaders(timeout) => std::time::Instant::now() + timeout,
        };
        let in_flight = InFlight {
            deadline: deadline.into(),
            request: slot.begin(),
        };
        // Boxed: the HTTP/1.1 side's `poll_without_shutdown` (kept so that a lingering close can
        // follow) needs an `Unpin` future.
        Box::pin(async move {
            let response = super::route(req, &in_flight, &node).await;
            drop(in_flight);
            Ok(response)
        })
    })
}

/// Count and log (at a bounded rate) a connection dropped for `reason`.
pub(super) fn dropped(node: &Node, reason: &str, error: &dyn std::fmt::Display) {
    node.metrics
        .admin_dropped
        .with_label_values(&[reason])
        .inc();
    if let Some(suppressed) = DROPPED_LOG.allow() {
        tracing::warn!(reason, error = %error, suppressed, "admin connection dropped");
    }
}
