//! How a connection ends: the metric label of every ending, the close code a client read error
//! earns (1002 protocol error, 1007 invalid UTF-8, 1009 too big), the bounded close, and a
//! panic contained to its connection.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use super::budget;
use super::connection::Socket;
use crate::metrics::Metrics;
use crate::outbox::CloseReason;

/// How long to wait for the client's reply to our close frame.
pub(super) const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Why a session ended (metric label).
pub(super) enum End {
    /// The gateway closed it with a close frame.
    Closed(CloseReason),
    /// The client sent a close frame.
    ClientClosed,
    /// The client's TCP connection ended without a close handshake.
    ClientGone,
    /// A ping went unanswered.
    PongTimeout,
    /// Any other socket failure.
    SocketError,
}

impl End {
    /// Metric label (`connections_closed_total{reason}`).
    pub(super) fn label(&self) -> &'static str {
        match self {
            End::Closed(reason) => reason.label(),
            End::ClientClosed => "client_closed",
            End::ClientGone => "client_gone",
            End::PongTimeout => "pong_timeout",
            End::SocketError => "socket_error",
        }
    }
}

/// What a failed read or write means for the connection: the close frame it earns, or how it
/// ended when no close frame can be sent.
pub(super) fn socket_error(error: &WsError) -> Result<CloseReason, End> {
    match error {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => Ok(CloseReason::TooBig),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Err(End::ClientGone),
        WsError::Protocol(_) => Ok(CloseReason::ProtocolError),
        WsError::Utf8(_) => Ok(CloseReason::InvalidUtf8),
        // The bounded write buffer is full (our frames or pongs to the client's pings): the
        // client does not read.
        WsError::WriteBufferFull(_) => Ok(CloseReason::SlowConsumer),
        // More bytes than the client's frame budget (fragments the session never sees).
        WsError::Io(e) if budget::is_flood(e) => Ok(CloseReason::TooManyFrames),
        // The peer vanished: reset, closed under a write (EPIPE), aborted, or ended mid-frame.
        WsError::Io(e) if client_vanished(e.kind()) => Err(End::ClientGone),
        WsError::ConnectionClosed | WsError::AlreadyClosed => Err(End::ClientGone),
        _ => Err(End::SocketError),
    }
}

/// I/O errors that mean the client's side of the TCP connection is gone.
fn client_vanished(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        kind,
        ConnectionReset | BrokenPipe | ConnectionAborted | UnexpectedEof | NotConnected
            // The kernel gave up on it (TCP_USER_TIMEOUT, see `public.rs`).
            | TimedOut
    )
}

/// [`socket_error`] as the session's ending: a close reason becomes `End::Closed` (the caller
/// sends the close frame).
pub(super) fn ending(error: &WsError) -> End {
    match socket_error(error) {
        Ok(reason) => End::Closed(reason),
        Err(end) => end,
    }
}

/// Send a close frame and wait (bounded) for the client's reply. A client that does not answer
/// it within [`CLOSE_GRACE`] is not reading: the connection is reset when dropped, so that the
/// kernel frees at once what it still holds for the client (its send buffer, megabytes)
/// instead of keeping it in FIN-WAIT-1 for as long as the client keeps its end open.
pub(super) async fn close(ws: &mut Socket, reason: CloseReason) -> End {
    let frame = CloseFrame {
        code: CloseCode::from(reason.code()),
        reason: reason.text().into(),
    };
    let answered = tokio::time::timeout(CLOSE_GRACE, async {
        if ws.send(Message::Close(Some(frame))).await.is_err() {
            return false;
        }
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                return true;
            }
        }
        false
    })
    .await;
    // Without the client's reply (not in time, our frame not even written, or the stream
    // ended first) nothing tells that it took what was sent.
    if !matches!(answered, Ok(true)) {
        reset_on_drop(ws);
    }
    End::Closed(reason)
}

/// Make dropping `ws` reset the TCP connection (`SO_LINGER` 0): the kernel discards what the
/// client did not take.
pub(super) fn reset_on_drop(ws: &Socket) {
    if let Err(e) = socket2::SockRef::from(ws.get_ref().tcp()).set_linger(Some(Duration::ZERO)) {
        tracing::debug!(error = %e, "SO_LINGER not set");
    }
}

/// Run a connection's task; a panic is caught and counted (`panics_total`, and
/// `connections_closed_total{reason="panic"}`); the panic hook has logged it once. Everything
/// the task owned (registration, socket, gauges' guards) is dropped while unwinding.
///
/// A combinator, not an `async fn`: the task is stored once in the returned future (an
/// `async fn` would hold it twice, as its argument and as the awaited future), and this is
/// what every idle connection keeps in memory.
pub(super) fn contain_panic(
    task: impl Future<Output = ()>,
    metrics: Arc<Metrics>,
) -> impl Future<Output = ()> {
    AssertUnwindSafe(task).catch_unwind().map(move |caught| {
        if caught.is_err() {
            metrics.panics.inc();
            metrics
                .connections_closed
                .with_label_values(&["panic"])
                .inc();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Released(Arc<AtomicBool>);
    impl Drop for Released {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_vanished_client_is_client_gone_not_a_socket_error() {
        use std::io::{Error, ErrorKind};
        let label = |error: WsError| ending(&error).label();
        for kind in [
            ErrorKind::ConnectionReset,
            ErrorKind::BrokenPipe,
            ErrorKind::ConnectionAborted,
            ErrorKind::UnexpectedEof,
            ErrorKind::NotConnected,
        ] {
            assert_eq!(
                label(WsError::Io(Error::from(kind))),
                "client_gone",
                "{kind:?}"
            );
        }
        assert_eq!(
            label(WsError::Protocol(
                ProtocolError::ResetWithoutClosingHandshake
            )),
            "client_gone"
        );
        assert_eq!(label(WsError::ConnectionClosed), "client_gone");
        // What is not the client leaving stays a socket error.
        assert_eq!(
            label(WsError::Io(Error::from(ErrorKind::OutOfMemory))),
            "socket_error"
        );
    }

    #[tokio::test]
    async fn a_panicking_connection_task_is_counted_and_releases_what_it_held() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let released = Arc::new(AtomicBool::new(false));
        let held = Released(released.clone());
        contain_panic(
            async move {
                let _held = held;
                tokio::task::yield_now().await;
                panic!("boom");
            },
            metrics.clone(),
        )
        .await;
        assert!(released.load(Ordering::SeqCst));
        assert_eq!(metrics.panics.get(), 1);
        contain_panic(async {}, metrics.clone()).await;
        assert_eq!(metrics.panics.get(), 1);
    }
}
