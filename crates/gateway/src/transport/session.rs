//! The socket loop of one WebSocket connection: drains its outbox into the socket (several
//! frames, one flush), pings, watches for pongs and credential expiry, ignores client data
//! (bounded), and closes with a documented code.
//!
//! Bounded whatever the client does: the write buffer is capped (`server::websocket_config`),
//! every socket write has a deadline (the pong timeout), client frames have a per-second
//! budget, and only a pong carrying the payload of our last ping counts, so a client that stops
//! reading is closed within ping interval + pong timeout even if it keeps sending.
//!
//! Small while idle: the loop's state is what every open connection holds. One `select!`
//! decides the next [`Step`] and holds nothing once it has; what follows awaits only small
//! futures (a write is polled in place, its deadline timer boxed only when it has to wait) or
//! boxed rare ones (resume, renewal, close).

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::time::{Instant as TokioInstant, Sleep};
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use super::connection::{delivered, renew, replayed, tokio_instant, Socket};
use super::ending::{self, close, End};
use super::timer::{Due, Timer};
use crate::auth::Identity;
use crate::history::Dedup;
use crate::node::Node;
use crate::outbox::{CloseReason, Frame};
use crate::registry::{Conn, UserId};

/// What the loop does after its `select!`.
enum Step {
    /// Frames are queued, or a close was asked for.
    Deliver,
    /// The timer fired: ping, pong timeout or credential expiry.
    Timer,
    /// Nothing more to do for the client's frame.
    Continue,
    /// The client sent a close frame: our reply is queued. With an invalid close code the
    /// reply is 1002 and the session ends as a protocol error.
    ClientClosed(End),
    /// The session ends (with a close frame for [`End::Closed`]).
    End(End),
}

/// Serve the connection on `ws` until it ends. An `async` block, not an `async fn`: an
/// `async fn` keeps its arguments twice in its state (as passed and as bound).
#[allow(clippy::manual_async_fn)] // on purpose, see above
pub(super) fn session<'a>(
    ws: &'a mut Socket,
    conn: &'a Conn,
    identity: &'a Identity,
    since: &'a Option<String>,
    node: &'a Node,
) -> impl Future<Output = End> + Send + 'a {
    async move {
        // Settings are read where used, not kept in locals: every local the loop keeps is
        // held by each idle connection.
        let mut dedup = Dedup::default();
        if let Some(since) = since {
            let settings = &node.conn;
            // Boxed: the history read is large and happens once. Bounded like a silent client:
            // one that does not take its replay must not hold it (up to `--max-replay` events)
            // in memory for ever.
            let limit = settings.ping_interval + settings.pong_timeout;
            let resumed = Box::pin(tokio::time::timeout(
                limit,
                resume(ws, conn.user, since, &mut dedup, node),
            ))
            .await;
            let end = match resumed {
                Ok(Ok(())) => None,
                Ok(Err(end)) => Some(end),
                Err(_) => Some(SLOW),
            };
            if let Some(end) = end {
                return finish(ws, end).await;
            }
        }
        let now = TokioInstant::now();
        let mut timer = Timer {
            next_ping: now + node.conn.ping_interval,
            pong_due: None,
            ping_payload: 0,
            expiry: identity.expires.map(tokio_instant),
        };
        // One timer per connection (pings, pong deadline, credential expiry).
        let sleep = tokio::time::sleep_until(timer.deadline());
        tokio::pin!(sleep);
        let mut batch: Vec<Frame> = Vec::new();
        loop {
            let step = tokio::select! {
                biased;
                _ = conn.outbox.ready() => Step::Deliver,
                msg = ws.next() => client_frame(msg, ws, &mut timer, sleep.as_mut()),
                _ = &mut sleep => Step::Timer,
            };
            let end = match step {
                Step::Continue => continue,
                Step::End(end) => end,
                Step::ClientClosed(end) => {
                    // tungstenite queued the close reply; flushing sends it (bounded).
                    let _ = within(write_deadline(node), ws.flush()).await;
                    return end;
                }
                Step::Deliver => {
                    let closing = conn.outbox.take(&mut batch);
                    if closing == Some(CloseReason::SlowConsumer) {
                        batch.clear();
                        SLOW
                    } else {
                        batch.retain(|frame| dedup.admit(frame));
                        let mut sent = 0;
                        let write = poll_fn(|cx| match poll_write(ws, &batch, &mut sent, cx) {
                            Poll::Ready(written) => {
                                Poll::Ready(written.map_err(|e| ending::ending(&e)))
                            }
                            // The client stopped reading and its queue overflowed meanwhile.
                            Poll::Pending => conn.outbox.poll_overflowed(cx).map(|()| Err(SLOW)),
                        });
                        let written = within(write_deadline(node), write)
                            .await
                            .unwrap_or(Err(SLOW));
                        match (written, closing) {
                            (Ok(()), None) => {
                                delivered(node, "ws", &mut batch);
                                continue;
                            }
                            (Ok(()), Some(reason)) => {
                                delivered(node, "ws", &mut batch);
                                End::Closed(reason)
                            }
                            (Err(end), _) => end,
                        }
                    }
                }
                Step::Timer => {
                    let now = TokioInstant::now();
                    let (ping_interval, pong_timeout) =
                        (node.conn.ping_interval, node.conn.pong_timeout);
                    let due = timer.fire(now, ping_interval, pong_timeout);
                    let ended = match due {
                        Due::Expired => match Box::pin(renew(identity, node)).await {
                            Some(expiry) => {
                                timer.expiry = expiry;
                                None
                            }
                            None => Some(End::Closed(CloseReason::AuthExpired)),
                        },
                        Due::PongTimeout => return End::PongTimeout,
                        Due::Ping => {
                            timer.ping_payload = rand::random();
                            let payload = timer.ping_payload;
                            let mut queued = false;
                            let ping = poll_fn(|cx| poll_ping(ws, payload, &mut queued, cx));
                            match within(write_deadline(node), ping).await {
                                Some(Ok(())) => None,
                                Some(Err(e)) => Some(ending::ending(&e)),
                                // The client stopped reading: nothing more gets to it.
                                None => Some(SLOW),
                            }
                        }
                        Due::Nothing => None,
                    };
                    match ended {
                        None => {
                            sleep.as_mut().reset(timer.deadline());
                            continue;
                        }
                        Some(end) => end,
                    }
                }
            };
            return finish(ws, end).await;
        }
    }
}

/// A client that does not read: closed with 4000.
const SLOW: End = End::Closed(CloseReason::SlowConsumer);

/// Every write is bounded: a client that stops reading blocks it at most this long.
fn write_deadline(node: &Node) -> Duration {
    node.conn.pong_timeout
}

/// End the session: send the close frame (bounded; boxed, it happens once) for
/// [`End::Closed`].
async fn finish(ws: &mut Socket, end: End) -> End {
    match end {
        End::Closed(reason) => Box::pin(close(ws, reason)).await,
        end => end,
    }
}

/// What a frame from the client (or the end of its stream) means.
fn client_frame(
    msg: Option<Result<Message, WsError>>,
    ws: &mut Socket,
    timer: &mut Timer,
    sleep: Pin<&mut Sleep>,
) -> Step {
    if msg.as_ref().is_some_and(Result::is_ok) && !ws.get_mut().admit_frame() {
        return Step::End(End::Closed(CloseReason::TooManyFrames));
    }
    match msg {
        None => Step::End(End::ClientGone),
        Some(Ok(Message::Pong(payload))) => {
            // Only the answer to our last ping: a client that does not read cannot keep
            // itself alive with unsolicited pongs.
            if payload.as_ref() == timer.ping_payload.to_be_bytes() {
                timer.pong_due = None;
                sleep.reset(timer.deadline());
            }
            Step::Continue
        }
        // tungstenite answers a close code that may not be sent (999, 1005, 5000, …) with
        // 1002 and hands us that reply; a client's own 1002 counts the same (a protocol error
        // that one side saw).
        Some(Ok(Message::Close(Some(frame)))) if frame.code == CloseCode::Protocol => {
            Step::ClientClosed(End::Closed(CloseReason::ProtocolError))
        }
        Some(Ok(Message::Close(_))) => Step::ClientClosed(End::ClientClosed),
        // Receive-only protocol: client data is ignored (pings are answered by tungstenite on
        // the next write, into the bounded write buffer).
        Some(Ok(_)) => Step::Continue,
        Some(Err(e)) => Step::End(ending::ending(&e)),
    }
}

/// Send what the client missed after `since` (or a `resync` event) before any live event.
async fn resume(
    ws: &mut Socket,
    user: UserId,
    since: &str,
    dedup: &mut Dedup,
    node: &Node,
) -> Result<(), End> {
    let mut batch = replayed(user, since, dedup, node).await;
    batch.retain(|frame| dedup.admit(frame));
    let mut sent = 0;
    poll_fn(|cx| poll_write(ws, &batch, &mut sent, cx))
        .await
        .map_err(|e| ending::ending(&e))?;
    delivered(node, "ws", &mut batch);
    Ok(())
}

/// Write the frames of `batch` from `*sent` on, then flush once (nothing at all for an empty
/// batch). Polled in place by the loop: no future of its own to keep in the connection's state.
fn poll_write(
    ws: &mut Socket,
    batch: &[Frame],
    sent: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<Result<(), WsError>> {
    if batch.is_empty() {
        return Poll::Ready(Ok(()));
    }
    while let Some(frame) = batch.get(*sent) {
        ready!(ws.poll_ready_unpin(cx))?;
        ws.start_send_unpin(Message::Text(frame.text.clone()))?;
        *sent += 1;
    }
    ws.poll_flush_unpin(cx)
}

/// Send a ping carrying `payload` and flush (`queued` once it is in the write buffer), like
/// `SinkExt::send` without keeping the message in the connection's state.
fn poll_ping(
    ws: &mut Socket,
    payload: u64,
    queued: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Result<(), WsError>> {
    if !*queued {
        ready!(ws.poll_ready_unpin(cx))?;
        let ping = Bytes::copy_from_slice(&payload.to_be_bytes());
        ws.start_send_unpin(Message::Ping(ping))?;
        *queued = true;
    }
    ws.poll_flush_unpin(cx)
}

/// `task`, bounded by `deadline`: `None` when it did not finish in time. A task that finishes at
/// its first poll (a writable socket: nearly every write) costs no timer at all; only a write
/// that has to wait arms one, on the heap: the connection's state has no room for a second
/// timer. An `async` block for the reason given at [`session`].
#[allow(clippy::manual_async_fn)] // on purpose, see above
fn within<F: Future + Unpin>(
    deadline: Duration,
    mut task: F,
) -> impl Future<Output = Option<F::Output>> {
    async move {
        if let Poll::Ready(output) = poll_fn(|cx| Poll::Ready(Pin::new(&mut task).poll(cx))).await {
            return Some(output);
        }
        Box::pin(tokio::time::timeout(deadline, task)).await.ok()
    }
}
