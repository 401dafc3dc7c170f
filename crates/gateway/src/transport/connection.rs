//! One client connection after the upgrade: drains its outbox into the socket (several frames,
//! one flush), pings, watches for pongs and credential expiry, ignores client data (bounded),
//! and closes with a documented code.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::time::{sleep_until, Instant as TokioInstant};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::auth::Identity;
use crate::history::{resync_frame, Dedup, Replay};
use crate::node::Node;
use crate::outbox::{CloseReason, Frame};
use crate::registry::{Conn, Subscribed, UserId};
use gleepost_event::EventId;

type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// How long to wait for the client's reply to our close frame.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A connection's place in the registry; leaving the registry (and, for the user's last
/// connection, unsubscribing) happens when this is dropped, whatever ends the connection.
pub struct Registration {
    node: Arc<Node>,
    /// The registered connection.
    pub conn: Arc<Conn>,
    /// Turns true once the broker subscription for the user is confirmed.
    pub subscribed: Subscribed,
}

impl Registration {
    /// Register a connection of `user`.
    pub fn new(node: Arc<Node>, user: UserId) -> Self {
        let (conn, subscribed) = node.registry.insert(user, node.broker.subscriptions());
        Registration {
            node,
            conn,
            subscribed,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.node
            .registry
            .remove(&self.conn, self.node.broker.subscriptions());
    }
}

/// Why a session ended (metric label).
enum End {
    Closed(CloseReason),
    ClientClosed,
    ClientGone,
    PongTimeout,
    TooBig,
    SocketError,
}

impl End {
    fn label(&self) -> &'static str {
        match self {
            End::Closed(reason) => reason.label(),
            End::ClientClosed => "client_closed",
            End::ClientGone => "client_gone",
            End::PongTimeout => "pong_timeout",
            End::TooBig => "message_too_big",
            End::SocketError => "socket_error",
        }
    }
}

/// Finish the upgrade and serve the connection until it ends.
pub async fn run(
    on_upgrade: OnUpgrade,
    registration: Registration,
    identity: Identity,
    since: Option<String>,
) {
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let node = registration.node.clone();
    let ws = WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        Role::Server,
        Some(node.conn.websocket),
    )
    .await;
    let metrics = &node.metrics;
    metrics.connections.inc();
    metrics.connections_opened.inc();
    let end = session(ws, &registration.conn, identity.expires, since, &node).await;
    metrics.connections.dec();
    metrics
        .connections_closed
        .with_label_values(&[end.label()])
        .inc();
    tracing::debug!(
        user = identity.user,
        reason = end.label(),
        "connection closed"
    );
    drop(registration);
}

async fn session(
    mut ws: Socket,
    conn: &Conn,
    expires: Option<SystemTime>,
    since: Option<String>,
    node: &Node,
) -> End {
    let settings = &node.conn;
    let mut dedup = Dedup::default();
    if let Some(since) = since {
        if let Err(end) = resume(&mut ws, conn.user, &since, &mut dedup, node).await {
            return end;
        }
    }
    let far_future = TokioInstant::now() + std::time::Duration::from_secs(100 * 365 * 86_400);
    let expiry = expires.map_or(far_future, |at| {
        TokioInstant::now() + at.duration_since(SystemTime::now()).unwrap_or_default()
    });
    let mut ping = tokio::time::interval_at(
        TokioInstant::now() + settings.ping_interval,
        settings.ping_interval,
    );
    let mut pong_deadline: Option<TokioInstant> = None;
    let mut batch: Vec<Frame> = Vec::new();
    loop {
        tokio::select! {
            biased;
            _ = conn.outbox.ready() => {
                let closing = conn.outbox.take(&mut batch);
                if closing == Some(CloseReason::SlowConsumer) {
                    batch.clear();
                    return close(ws, CloseReason::SlowConsumer).await;
                }
                let written = tokio::select! {
                    written = write_batch(&mut ws, &mut batch, &mut dedup, node) => written,
                    // The client stopped reading and its queue overflowed meanwhile.
                    _ = conn.outbox.overflowed() => Err(End::Closed(CloseReason::SlowConsumer)),
                };
                match written {
                    Ok(()) => {}
                    Err(End::Closed(reason)) => return close(ws, reason).await,
                    Err(end) => return end,
                }
                if let Some(reason) = closing {
                    return close(ws, reason).await;
                }
            }
            msg = ws.next() => match msg {
                None => return End::ClientGone,
                Some(Ok(Message::Pong(_))) => pong_deadline = None,
                Some(Ok(Message::Close(_))) => {
                    // tungstenite queued the close reply; flushing sends it.
                    let _ = ws.flush().await;
                    return End::ClientClosed;
                }
                // Receive-only protocol: client data is ignored (pings are answered by
                // tungstenite on the next write).
                Some(Ok(_)) => {}
                Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                    let frame = CloseFrame {
                        code: CloseCode::Size,
                        reason: "message too big".into(),
                    };
                    let _ = ws.send(Message::Close(Some(frame))).await;
                    return End::TooBig;
                }
                Some(Err(_)) => return End::SocketError,
            },
            _ = ping.tick() => {
                if ws.send(Message::Ping(Bytes::new())).await.is_err() {
                    return End::SocketError;
                }
                pong_deadline.get_or_insert(TokioInstant::now() + settings.pong_timeout);
            }
            _ = sleep_until(pong_deadline.unwrap_or(far_future)), if pong_deadline.is_some() => {
                return End::PongTimeout;
            }
            _ = sleep_until(expiry) => return close(ws, CloseReason::AuthExpired).await,
        }
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
    let mut batch: Vec<Frame> = frames
        .into_iter()
        .map(|text| Frame { text, entered })
        .collect();
    node.metrics.events_replayed.inc_by(batch.len() as u64);
    write_batch(ws, &mut batch, dedup, node).await
}

/// Write every frame of `batch` not already sent and flush once.
async fn write_batch(
    ws: &mut Socket,
    batch: &mut Vec<Frame>,
    dedup: &mut Dedup,
    node: &Node,
) -> Result<(), End> {
    batch.retain(|frame| dedup.admit(frame.text.as_bytes()));
    if batch.is_empty() {
        return Ok(());
    }
    for frame in batch.iter() {
        if ws.feed(Message::Text(frame.text.clone())).await.is_err() {
            return Err(End::SocketError);
        }
    }
    if ws.flush().await.is_err() {
        return Err(End::SocketError);
    }
    let metrics = &node.metrics;
    metrics.events_delivered.inc_by(batch.len() as u64);
    let now = Instant::now();
    for frame in batch.drain(..) {
        metrics
            .delivery_latency
            .observe(now.duration_since(frame.entered).as_secs_f64());
    }
    Ok(())
}

/// Send a close frame and wait (bounded) for the client's reply.
async fn close(mut ws: Socket, reason: CloseReason) -> End {
    let frame = CloseFrame {
        code: CloseCode::from(reason.code()),
        reason: reason.text().into(),
    };
    // Bounded: a client that stopped reading may never take the close frame.
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        if ws.send(Message::Close(Some(frame))).await.is_ok() {
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_close() {
                    break;
                }
            }
        }
    })
    .await;
    End::Closed(reason)
}
