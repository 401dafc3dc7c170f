//! An admin connection over HTTP/2 (h2c, prior knowledge): many requests in flight on one
//! connection, each counted in the port's busy share on its own and bounded by the request
//! timeout from its headers on. Bounds: [`MAX_STREAMS`] concurrent requests, 16 KiB of headers,
//! flow-control windows of [`WINDOW`] bytes (what an unauthenticated client can make the
//! gateway buffer), h2's limits on reset streams (the "rapid reset" attack), a connection with
//! no request open for the request timeout is closed (`GOAWAY`), and a closing connection gets
//! the request timeout to finish before it is dropped.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::server::{dropped, service, Deadline};
use super::slots::SlotGuard;
use crate::node::Node;

/// Most requests in flight on one connection (`SETTINGS_MAX_CONCURRENT_STREAMS`; the RFC's
/// recommended minimum). It also bounds the answers a client that does not read can leave
/// queued on a connection: this many times the largest (`/metrics`, ≈ 10 KiB), until the
/// connection is dropped ([`serve`]: at most twice the request timeout after the last request).
const MAX_STREAMS: u32 = 100;
/// Initial flow-control window of a request and of the connection, in bytes (the protocol's
/// default): body bytes the client may send before the gateway reads them.
const WINDOW: u32 = 65_535;
/// Largest request head (`SETTINGS_MAX_HEADER_LIST_SIZE`).
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Streams the client may reset before the gateway handled them, and streams the gateway may
/// reset for the client's protocol errors, before the connection is closed (`GOAWAY`): the
/// `h2` crate's defaults against reset floods, set here so that the documented values hold.
const MAX_PENDING_RESETS: usize = 20;
const MAX_ERROR_RESETS: usize = 1024;

/// Serve one HTTP/2 connection until it closes, is evicted, idles for `timeout`, or `stop`
/// turns true (then `GOAWAY`: open requests finish, within `timeout`).
pub(super) async fn serve(
    stream: TcpStream,
    guard: SlotGuard,
    node: Arc<Node>,
    timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let service = service(
        guard.0.clone(),
        node.clone(),
        Deadline::SinceHeaders(timeout),
    );
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_local_error_reset_streams(MAX_ERROR_RESETS)
        .initial_stream_window_size(WINDOW)
        .initial_connection_window_size(WINDOW);
    let mut conn = pin!(builder.serve_connection(TokioIo::new(stream), service));
    // Once closing: when the connection is dropped whatever it still does.
    let mut closing: Option<Instant> = None;
    if *stop.borrow() {
        conn.as_mut().graceful_shutdown();
        closing = Some(Instant::now() + timeout);
    }
    loop {
        let idle_until = guard.0.idle_since().map(|t| Instant::from_std(t) + timeout);
        // While requests are open, look again after `timeout`.
        let wake = closing
            .or(idle_until)
            .unwrap_or_else(|| Instant::now() + timeout);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    dropped(&node, "error", &e);
                }
                return;
            }
            () = guard.0.evicted() => return,
            // The sender only ever sends `true` (or is dropped): either way, stop.
            _ = stop.changed(), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing = Some(Instant::now() + timeout);
            }
            () = tokio::time::sleep_until(wake) => {
                if closing.is_some() {
                    dropped(&node, "timeout", &"requests not finished in time after GOAWAY");
                    return;
                }
                // Requests may have come and gone while asleep: look again.
                let idle_since = guard.0.idle_since().map(Instant::from_std);
                if idle_since.is_some_and(|t| t + timeout <= Instant::now()) {
                    conn.as_mut().graceful_shutdown();
                    closing = Some(Instant::now() + timeout);
                }
            }
        }
    }
}
