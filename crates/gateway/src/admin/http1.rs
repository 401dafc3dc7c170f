//! An admin connection over HTTP/1.1: keep-alive, hyper's header read timeout, a bounded read
//! buffer, and a lingering close so that a client still sending a refused body reads the
//! answer.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::server::{dropped, service, Deadline};
use super::slots::SlotGuard;
use crate::node::Node;

/// Largest read buffer of a connection, hence largest request head (431 beyond).
const MAX_BUF: usize = 16 * 1024;
/// After answering, at most this much of what the client still sends (a refused body) is read
/// and discarded, within the request timeout, before the socket is closed.
const LINGER_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Serve one HTTP/1.1 connection until it closes, is evicted, or `stop` turns true (then the
/// request in progress finishes, with keep-alive off).
pub(super) async fn serve(
    stream: TcpStream,
    guard: SlotGuard,
    node: Arc<Node>,
    timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let service = service(guard.0.clone(), node.clone(), Deadline::SinceIdle(timeout));
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
        dropped(&node, if e.is_timeout() { "timeout" } else { "error" }, &e);
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
