//! One client connection after the upgrade: drains its outbox into the socket (several frames,
//! one flush), pings, watches for pongs and credential expiry, ignores client data (bounded),
//! and closes with a documented code.
//!
//! Bounded whatever the client does: the write buffer is capped (`server::websocket_config`),
//! every socket write has a deadline (the pong timeout), client frames have a per-second
//! budget, and only a pong carrying the payload of our last ping counts, so a client that stops
//! reading is closed within ping interval + pong timeout even if it keeps sending.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::time::Instant as TokioInstant;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::admit::Admitted;
use super::budget::FrameBudget;
use super::ending::{self, close, End};
use super::timer::{Due, Timer};
use crate::auth::{AuthError, Identity};
use crate::history::{resync_frame, Dedup, Replay};
use crate::metrics::Metrics;
use crate::node::Node;
use crate::outbox::{CloseReason, Frame};
use crate::registry::{AtCapacity, Conn, Subscribed, UserId};
use gleepost_event::EventId;

pub(super) type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// A connection's place in the registry; leaving the registry (and, for the user's last
/// connection, unsubscribing) happens when this is dropped, whatever ends the connection.
pub(crate) struct Registration {
    node: Arc<Node>,
    /// The registered connection.
    pub(crate) conn: Arc<Conn>,
    /// Turns true once the broker subscription for the user is confirmed.
    pub(crate) subscribed: Subscribed,
}

impl Registration {
    /// Register a connection of `user` (refused when the node holds `--max-connections`).
    pub(crate) fn new(node: Arc<Node>, user: UserId) -> Result<Self, AtCapacity> {
        let (conn, subscribed) = node.registry.insert(user, node.broker.subscriptions())?;
        Ok(Registration {
            node,
            conn,
            subscribed,
        })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.node
            .registry
            .remove(&self.conn, self.node.broker.subscriptions());
    }
}

/// Serve an admitted client on a task of its own: finish the upgrade and serve the connection
/// until it ends. A panic in the connection's code is caught: counted (`panics_total`), logged
/// once by the panic hook, and the registration, the gauge and the socket are released as on
/// any other ending.
pub(super) fn spawn(on_upgrade: OnUpgrade, admitted: Admitted, since: Option<String>) {
    tokio::spawn(task(on_upgrade, admitted, since));
}

/// The future of a connection's task: what every open connection holds while it is idle.
fn task(
    on_upgrade: OnUpgrade,
    admitted: Admitted,
    since: Option<String>,
) -> impl Future<Output = ()> + Send + 'static {
    let metrics = admitted.registration.node.metrics.clone();
    ending::contain_panic(serve(on_upgrade, admitted, since), metrics)
}

/// Counts an open connection of `transport` in the gauges, and decrements them however the
/// session ends (panics included).
pub(super) struct Open<'a>(&'a Metrics, &'static str);

impl<'a> Open<'a> {
    /// Count a connection of `transport` (`ws`, `sse`, `poll`) as opened and open.
    pub(super) fn new(metrics: &'a Metrics, transport: &'static str) -> Self {
        metrics.connections.inc();
        metrics
            .transport_connections
            .with_label_values(&[transport])
            .inc();
        metrics.connections_opened.inc();
        Open(metrics, transport)
    }

    /// The session of `user` ended for `reason` (a `connections_closed_total` label): no
    /// longer open, counted and logged.
    pub(super) fn closed(self, user: UserId, reason: &str) {
        let (metrics, transport) = (self.0, self.1);
        drop(self);
        metrics
            .connections_closed
            .with_label_values(&[reason])
            .inc();
        tracing::debug!(user, reason, transport, "connection closed");
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.connections.dec();
        self.0
            .transport_connections
            .with_label_values(&[self.1])
            .dec();
    }
}

// `serve` and `session` return `async move` blocks instead of being `async fn`s: an
// `async fn` keeps its arguments twice in its state (as passed and as bound), and this state
// (the task's future) is what every idle connection holds. For the same reason the socket is
// made here and lent to `session`, never moved between futures.
#[allow(clippy::manual_async_fn)] // on purpose, see above
fn serve(
    on_upgrade: OnUpgrade,
    admitted: Admitted,
    since: Option<String>,
) -> impl Future<Output = ()> + Send {
    async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let (registration, identity) = (&admitted.registration, &admitted.identity);
        let node = &*registration.node;
        let mut ws = WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            Some(node.conn.websocket),
        )
        .await;
        let open = Open::new(&node.metrics, "ws");
        let end = session(&mut ws, &registration.conn, identity, since, node).await;
        drop(ws);
        open.closed(identity.user, end.label());
        // The registration, then the address slot.
        drop(admitted);
    }
}

#[allow(clippy::manual_async_fn)] // on purpose, see above `serve`
fn session<'a>(
    ws: &'a mut Socket,
    conn: &'a Conn,
    identity: &'a Identity,
    since: Option<String>,
    node: &'a Node,
) -> impl Future<Output = End> + Send + 'a {
    async move {
        let settings = &node.conn;
        let mut dedup = Dedup::default();
        if let Some(since) = since {
            // Boxed: the history read is large and happens once; keeping it out of the
            // connection's future keeps every idle connection small. Bounded like a silent client:
            // one that does not take its replay must not hold it (up to `--max-replay` events) in
            // memory for ever.
            let limit = settings.ping_interval + settings.pong_timeout;
            let resumed = Box::pin(tokio::time::timeout(
                limit,
                resume(ws, conn.user, &since, &mut dedup, node),
            ))
            .await;
            match resumed {
                Ok(Ok(())) => {}
                Ok(Err(End::Closed(reason))) => return Box::pin(close(ws, reason)).await,
                Ok(Err(end)) => return end,
                Err(_) => return Box::pin(close(ws, CloseReason::SlowConsumer)).await,
            }
        }
        let now = TokioInstant::now();
        let mut timer = Timer {
            next_ping: now + settings.ping_interval,
            pong_due: None,
            ping_payload: 0,
            expiry: identity.expires.map(tokio_instant),
        };
        let mut budget = FrameBudget::new(now, settings.client_frame_rate);
        // Every write is bounded: a client that stops reading blocks it at most this long.
        let deadline = settings.pong_timeout;
        // One timer per connection (pings, pong deadline, credential expiry): idle connections
        // stay small.
        let sleep = tokio::time::sleep_until(timer.deadline());
        tokio::pin!(sleep);
        let mut batch: Vec<Frame> = Vec::new();
        loop {
            tokio::select! {
                biased;
                _ = conn.outbox.ready() => {
                    let closing = conn.outbox.take(&mut batch);
                    if closing == Some(CloseReason::SlowConsumer) {
                        batch.clear();
                        return Box::pin(close(ws, CloseReason::SlowConsumer)).await;
                    }
                    let written = {
                        let write = std::pin::pin!(write_batch(ws, &mut batch, &mut dedup, node));
                        tokio::select! {
                            biased;
                            written = within(deadline, write)
                                => written.unwrap_or(Err(End::Closed(CloseReason::SlowConsumer))),
                            // The client stopped reading and its queue overflowed meanwhile.
                            _ = conn.outbox.overflowed() => Err(End::Closed(CloseReason::SlowConsumer)),
                        }
                    };
                    match written {
                        Ok(()) => {}
                        Err(End::Closed(reason)) => return Box::pin(close(ws, reason)).await,
                        Err(end) => return end,
                    }
                    if let Some(reason) = closing {
                        return Box::pin(close(ws, reason)).await;
                    }
                }
                msg = ws.next() => {
                    if msg.as_ref().is_some_and(Result::is_ok) && !budget.admit(TokioInstant::now()) {
                        return Box::pin(close(ws, CloseReason::TooManyFrames)).await;
                    }
                    match msg {
                        None => return End::ClientGone,
                        Some(Ok(Message::Pong(payload))) => {
                            // Only the answer to our last ping: a client that does not read cannot
                            // keep itself alive with unsolicited pongs.
                            if payload.as_ref() == timer.ping_payload.to_be_bytes() {
                                timer.pong_due = None;
                                sleep.as_mut().reset(timer.deadline());
                            }
                        }
                        Some(Ok(Message::Close(_))) => {
                            // tungstenite queued the close reply; flushing sends it (bounded).
                            let _ = within(deadline, ws.flush()).await;
                            return End::ClientClosed;
                        }
                        // Receive-only protocol: client data is ignored (pings are answered by
                        // tungstenite on the next write, into the bounded write buffer).
                        Some(Ok(_)) => {}
                        Some(Err(e)) => match ending::socket_error(&e) {
                            Ok(reason) => return Box::pin(close(ws, reason)).await,
                            Err(end) => return end,
                        },
                    }
                }
                _ = &mut sleep => {
                    match timer.fire(TokioInstant::now(), settings.ping_interval, settings.pong_timeout) {
                        Due::Expired => match Box::pin(renew(identity, node)).await {
                            Some(expiry) => timer.expiry = expiry,
                            None => return Box::pin(close(ws, CloseReason::AuthExpired)).await,
                        },
                        Due::PongTimeout => return End::PongTimeout,
                        Due::Ping => {
                            timer.ping_payload = rand::random();
                            let ping = Message::Ping(Bytes::copy_from_slice(
                                &timer.ping_payload.to_be_bytes(),
                            ));
                            match within(deadline, ws.send(ping)).await {
                                Some(Ok(())) => {}
                                Some(Err(e)) => match ending::socket_error(&e) {
                                    Ok(reason) => return Box::pin(close(ws, reason)).await,
                                    Err(end) => return end,
                                },
                                // The client stopped reading: nothing more gets to it.
                                None => return Box::pin(close(ws, CloseReason::SlowConsumer)).await,
                            }
                        }
                        Due::Nothing => {}
                    }
                    sleep.as_mut().reset(timer.deadline());
                }
            }
        }
    }
}

/// How long to wait before checking renewable credentials again when the store did not answer.
const RENEW_RETRY: Duration = Duration::from_secs(5);

/// The tokio instant of a wall-clock time (now when it is past).
pub(super) fn tokio_instant(at: SystemTime) -> TokioInstant {
    TokioInstant::now() + at.duration_since(SystemTime::now()).unwrap_or_default()
}

/// The credentials expired: check them again if they are renewable. `Some(new expiry)` keeps
/// the connection; `None` closes it (4001). A store that does not answer is asked again later:
/// a Redis blip must not log everyone out.
pub(super) async fn renew(identity: &Identity, node: &Node) -> Option<Option<TokioInstant>> {
    let renewal = identity.renewal.as_ref()?;
    let floor = TokioInstant::now() + Duration::from_secs(1);
    match node.auth.renew(identity.user, renewal).await {
        Ok(expires) => {
            tracing::debug!(user = identity.user, "credentials renewed");
            // Not sooner than the floor: a key about to vanish is checked once more, not in a loop.
            Some(expires.map(|at| tokio_instant(at).max(floor)))
        }
        Err(AuthError::Unavailable | AuthError::KeysUnavailable) => {
            Some(Some(TokioInstant::now() + RENEW_RETRY))
        }
        Err(AuthError::Invalid(_)) => None,
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
    write_batch(ws, &mut batch, dedup, node).await
}

/// What a client resuming after `since` gets before live events (history, or a `resync`
/// event), counted; `dedup` starts after `since` when the history proves it.
pub(super) async fn replayed(
    user: UserId,
    since: &str,
    dedup: &mut Dedup,
    node: &Node,
) -> Vec<Frame> {
    let frames = match node.broker.replay(user, since).await {
        Replay::Events(frames) => {
            if let Some(id) = EventId::parse(since) {
                *dedup = Dedup::after(&id);
            }
            frames
        }
        Replay::Resync { reason, latest } => {
            node.metrics.resyncs.with_label_values(&[reason]).inc();
            vec![resync_frame(reason, latest.as_deref())]
        }
    };
    let entered = Instant::now();
    let batch: Vec<Frame> = frames
        .into_iter()
        .map(|text| Frame::new(text, entered))
        .collect();
    node.metrics.events_replayed.inc_by(batch.len() as u64);
    batch
}

/// `task`, bounded by `deadline`: `None` when it did not finish in time. A task that finishes at
/// its first poll (a writable socket: nearly every write) costs no timer at all; only a write
/// that has to wait arms one, on the heap: the connection's future, which every idle connection
/// holds, has no room for a second timer.
async fn within<F: Future + Unpin>(deadline: Duration, mut task: F) -> Option<F::Output> {
    let first = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut task).poll(cx))).await;
    match first {
        Poll::Ready(output) => Some(output),
        Poll::Pending => Box::pin(tokio::time::timeout(deadline, task)).await.ok(),
    }
}

/// Write every frame of `batch` not already sent and flush once.
async fn write_batch(
    ws: &mut Socket,
    batch: &mut Vec<Frame>,
    dedup: &mut Dedup,
    node: &Node,
) -> Result<(), End> {
    batch.retain(|frame| dedup.admit(frame));
    if batch.is_empty() {
        return Ok(());
    }
    for frame in batch.iter() {
        if let Err(e) = ws.feed(Message::Text(frame.text.clone())).await {
            return Err(ending::ending(&e));
        }
    }
    if let Err(e) = ws.flush().await {
        return Err(ending::ending(&e));
    }
    delivered(node, "ws", batch);
    Ok(())
}

/// Count the frames of `batch` as delivered on `transport` (and their latency); empties it.
pub(super) fn delivered(node: &Node, transport: &str, batch: &mut Vec<Frame>) {
    let metrics = &node.metrics;
    metrics.events_delivered.inc_by(batch.len() as u64);
    metrics
        .transport_delivered
        .with_label_values(&[transport])
        .inc_by(batch.len() as u64);
    let now = Instant::now();
    for frame in batch.drain(..) {
        metrics
            .delivery_latency
            .observe(now.duration_since(frame.entered).as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, C, F: Future>(_: fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn a_connection_task_is_small() {
        let size = future_size(task);
        eprintln!("connection task future: {size} bytes");
        assert!(size <= 4096, "{size} bytes");
    }
}
