//! One WebSocket client after admission: its place in the registry, its task (the upgrade, then
//! the socket loop of `session.rs`), the open-connection accounting shared by every transport,
//! and the pieces the other transports reuse (replay, renewal, delivery counts).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant as TokioInstant;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use super::admit::Admitted;
use super::budget::Budgeted;
use super::ending;
use super::public::Transport;
use super::session::session;
use crate::auth::{AuthError, Identity};
use crate::history::{resync_frame, Dedup, Replay};
use crate::metrics::Metrics;
use crate::node::{ConnSettings, Node};
use crate::outbox::Frame;
use crate::registry::{AtCapacity, Conn, Subscribed, UserId};
use gleepost_event::EventId;

/// A client's WebSocket, over the TCP stream itself (taken back from hyper after the upgrade)
/// so that a close the client does not take can reset the connection
/// ([`ending::close`]), with the budget of what the client may send.
pub(super) type Socket = WebSocketStream<Budgeted>;

/// A connection's place in the registry; leaving the registry (and, for the user's last
/// connection, unsubscribing) happens when this is dropped, whatever ends the connection.
pub(crate) struct Registration {
    node: Arc<Node>,
    /// The registered connection.
    pub(crate) conn: Arc<Conn>,
}

impl Registration {
    /// Register a connection of `user` (refused when the node holds `--max-connections`), and
    /// what turns true once the broker subscription for the user is confirmed (needed only
    /// until then: the connection does not keep it).
    pub(crate) fn new(node: Arc<Node>, user: UserId) -> Result<(Self, Subscribed), AtCapacity> {
        let (conn, subscribed) = node.registry.insert(user, node.broker.subscriptions())?;
        Ok((Registration { node, conn }, subscribed))
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
pub(super) struct Open<'a>(&'a Metrics, Transport);

impl<'a> Open<'a> {
    /// Count a connection of `transport` as opened and open.
    pub(super) fn new(metrics: &'a Metrics, transport: Transport) -> Self {
        metrics.connections.inc();
        metrics
            .transport_connections
            .with_label_values(&[transport.label()])
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
        tracing::debug!(
            user,
            reason,
            transport = transport.label(),
            "connection closed"
        );
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.connections.dec();
        self.0
            .transport_connections
            .with_label_values(&[self.1.label()])
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
        let node = &*admitted.registration.node;
        // Boxed: what building the socket needs is not kept in the task's state for the
        // connection's life.
        let Some(mut ws) = Box::pin(websocket(upgraded, &node.conn)).await else {
            return;
        };
        let open = Open::new(&node.metrics, Transport::WebSocket);
        let (conn, identity) = (&admitted.registration.conn, &admitted.identity);
        let end = session(&mut ws, conn, identity, &since, node).await;
        if matches!(end, ending::End::PongTimeout) {
            // Silent for the pong timeout: what the kernel holds for it goes with a reset.
            ending::reset_on_drop(&ws);
        }
        drop(ws);
        open.closed(admitted.identity.user, end.label());
        // The registration, then the address slot.
        drop(admitted);
    }
}

/// The client's WebSocket over the TCP stream hyper upgraded, with the bytes the client sent
/// right after its upgrade request (read by hyper) first.
async fn websocket(upgraded: Upgraded, settings: &ConnSettings) -> Option<Socket> {
    // The public port serves `TokioIo<TcpStream>` (`public.rs`), so this always succeeds.
    let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() else {
        tracing::error!("upgraded connection is not a TCP stream");
        return None;
    };
    let config = settings.websocket;
    let max_frame = config.max_frame_size.unwrap_or(usize::MAX);
    let stream = Budgeted::new(parts.io.into_inner(), settings.client_frame_rate, max_frame);
    let early = parts.read_buf.to_vec();
    Some(WebSocketStream::from_partially_read(stream, early, Role::Server, Some(config)).await)
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

/// What a client resuming after `since` gets before live events (history, or a `resync`
/// event), counted (events in `events_replayed_total`, a resync in `resyncs_total`); `dedup`
/// starts after `since` when the history proves it.
pub(super) async fn replayed(
    user: UserId,
    since: &str,
    dedup: &mut Dedup,
    node: &Node,
) -> Vec<Frame> {
    let Some(reserved) = node.replay_budget.reserve(user, Instant::now()) else {
        // Spent: no read (a client looping over an old id must not keep Redis reading).
        node.metrics.resyncs.with_label_values(&["too_many"]).inc();
        let frame = resync_frame("too_many", None);
        return vec![Frame::new(frame, Instant::now())];
    };
    let replay = node.broker.replay(user, since).await;
    // What Redis read for it: the events sent, or, for a `resync` after a read (the id's
    // epoch is gone, trimmed, too many), up to a full replay (the read collects entries up to
    // the byte bound before the gateway decides); nothing when nothing was read.
    let bytes = match &replay {
        Replay::Events(frames) => frames.iter().map(|f| f.len()).sum(),
        Replay::Resync {
            reason: "unknown_id" | "unavailable" | "history_off",
            ..
        } => 0,
        Replay::Resync { .. } => usize::MAX,
    };
    reserved.settle(bytes);
    let frames = match replay {
        Replay::Events(frames) => {
            if let Some(id) = EventId::parse(since) {
                *dedup = Dedup::after(&id);
            }
            node.metrics.events_replayed.inc_by(frames.len() as u64);
            frames
        }
        Replay::Resync { reason, latest } => {
            node.metrics.resyncs.with_label_values(&[reason]).inc();
            vec![resync_frame(reason, latest.as_deref())]
        }
    };
    let entered = Instant::now();
    frames
        .into_iter()
        .map(|text| Frame::new(text, entered))
        .collect()
}

/// Count the frames of `batch` as delivered on `transport` (and their latency); empties it.
pub(super) fn delivered(node: &Node, transport: &str, batch: &mut Vec<Frame>) {
    if batch.is_empty() {
        return;
    }
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

    /// Every open connection holds its task's future: with tokio's header and trailer (96
    /// bytes, the cell aligned to 128) a future of at most 928 bytes is one 1 KiB allocation.
    /// `async fn` arguments stored twice and futures moved into futures once made it 4 KiB.
    #[test]
    fn a_connection_task_is_small() {
        let size = future_size(task);
        assert!(size <= 928, "the connection task's future is {size} bytes");
    }
}
