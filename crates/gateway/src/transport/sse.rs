//! `GET /sse`: the event stream as Server-Sent Events, for clients and networks where a
//! WebSocket upgrade fails. Each event is one SSE event (`id:` when it has one, `data:` the same
//! JSON object a WebSocket client gets); a comment line is the heartbeat at the ping interval;
//! the stream ends with a final `close` event carrying the WebSocket close code of the reason.
//!
//! Bounded like a WebSocket: the session task hands the response body at most [`CHUNKS`]
//! chunks (one batch of frames each), and a chunk the client does not take within the pong
//! timeout (it stopped reading and the socket is full) ends the stream as a slow consumer. When
//! the gateway ends a stream, what is still queued (its `close` event) gets the same deadline,
//! as a WebSocket close frame does; beyond it the HTTP connection is reset (`public.rs`): hyper
//! writes a body only as the client reads, so it would otherwise keep the connection, and the
//! chunks it and the kernel hold, for as long as the client neither reads nor disconnects.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderValue, Response, StatusCode};
use hyper::body::Frame as BodyFrame;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant as TokioInstant;

use super::admit::Admitted;
use super::connection::{delivered, renew, replayed, tokio_instant, Open};
use super::cors;
use super::ending::{self, End};
use super::public::Transport;
use crate::history::Dedup;
use crate::node::Node;
use crate::outbox::{CloseReason, Frame};

/// Chunks waiting for the client's socket.
const CHUNKS: usize = 4;
/// A chunk at least this large is followed by a marker (an SSE comment) that hyper takes only
/// once it wrote most of the chunk, within ping interval + pong timeout: the deadline then
/// covers the socket write, not just the hand-over (a single large replay would otherwise sit
/// in hyper's buffer, unread, until the kernel's timeout).
const LARGE_CHUNK: usize = 64 * 1024;
/// The reconnect delay suggested to the browser (`retry:`, ms).
const RETRY_MS: u32 = 1000;

/// The body of an SSE response: the chunks of its session task, until the task ends.
pub(crate) struct SseBody {
    chunks: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame<Bytes>, Infallible>>> {
        self.chunks
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(BodyFrame::data(c))))
    }
}

/// Start the stream of an admitted client: the response now, the session in its own task.
/// `cut` drops the HTTP connection (a client that does not take the stream's end in time).
pub(super) fn start(
    admitted: Admitted,
    since: Option<String>,
    node: Arc<Node>,
    cut: Arc<Notify>,
) -> Response<SseBody> {
    let (tx, chunks) = mpsc::channel(CHUNKS);
    let metrics = node.metrics.clone();
    tokio::spawn(ending::contain_panic(
        run(tx, admitted, since, node, cut),
        metrics,
    ));
    let mut res = Response::new(SseBody { chunks });
    *res.status_mut() = StatusCode::OK;
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    cors::allow(res)
}

async fn run(
    tx: mpsc::Sender<Bytes>,
    admitted: Admitted,
    since: Option<String>,
    node: Arc<Node>,
    cut: Arc<Notify>,
) {
    let Admitted {
        registration,
        identity,
        slot,
    } = admitted;
    let metrics = &node.metrics;
    let open = Open::new(metrics, Transport::Sse);
    let end = session(&tx, &registration.conn, &identity, since, &node).await;
    if let End::Closed(reason) = &end {
        // Best effort: a client that does not read does not get it.
        let _ = tx.try_send(close_event(*reason));
    }
    open.closed(identity.user, end.label());
    drop((registration, slot));
    if let End::Closed(_) = end {
        // Every chunk taken by the body within the write deadline (all slots free again), or
        // the body gone: the stream ends normally. Otherwise the client does not read.
        let taken = tokio::time::timeout(node.conn.pong_timeout, tx.reserve_many(CHUNKS)).await;
        if taken.is_err() {
            cut.notify_one();
        }
    }
}

async fn session(
    tx: &mpsc::Sender<Bytes>,
    conn: &crate::registry::Conn,
    identity: &crate::auth::Identity,
    since: Option<String>,
    node: &Node,
) -> End {
    let settings = &node.conn;
    // A chunk must be taken within this time: otherwise the client does not read.
    let deadline = settings.pong_timeout;
    // …and a large one written within this (the time a WebSocket has for its replay).
    let written_by = settings.ping_interval + settings.pong_timeout;
    let send = |chunk: Bytes| async move {
        let large = chunk.len() >= LARGE_CHUNK;
        match tokio::time::timeout(deadline, tx.send(chunk)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(End::ClientGone),
            Err(_) => return Err(End::Closed(CloseReason::SlowConsumer)),
        }
        if large {
            // Every slot free again: the marker, and so (most of) the chunk, was taken.
            let written = async {
                let sent = tx.send(Bytes::from_static(b":\n\n")).await.is_ok();
                sent && tx.reserve_many(CHUNKS).await.is_ok()
            };
            match tokio::time::timeout(written_by, written).await {
                Ok(true) => {}
                Ok(false) => return Err(End::ClientGone),
                Err(_) => return Err(End::Closed(CloseReason::SlowConsumer)),
            }
        }
        Ok(())
    };
    if let Err(end) = send(Bytes::from(format!("retry: {RETRY_MS}\n\n"))).await {
        return end;
    }
    let mut dedup = Dedup::default();
    let mut batch: Vec<Frame> = Vec::new();
    if let Some(since) = since {
        batch = Box::pin(replayed(conn.user, &since, &mut dedup, node)).await;
        if let Err(end) = write(&send, &mut batch, &mut dedup, node).await {
            return end;
        }
    }
    let mut next_ping = TokioInstant::now() + settings.ping_interval;
    let mut expiry = identity.expires.map(tokio_instant);
    loop {
        let wake = expiry.map_or(next_ping, |e| e.min(next_ping));
        tokio::select! {
            biased;
            _ = conn.outbox.ready() => {
                let closing = conn.outbox.take(&mut batch);
                if closing == Some(CloseReason::SlowConsumer) {
                    return End::Closed(CloseReason::SlowConsumer);
                }
                if let Err(end) = write(&send, &mut batch, &mut dedup, node).await {
                    return end;
                }
                if let Some(reason) = closing {
                    return End::Closed(reason);
                }
            }
            _ = tx.closed() => return End::ClientGone,
            _ = tokio::time::sleep_until(wake) => {
                let now = TokioInstant::now();
                if expiry.is_some_and(|e| e <= now) {
                    match Box::pin(renew(identity, node)).await {
                        Some(renewed) => expiry = renewed,
                        None => return End::Closed(CloseReason::AuthExpired),
                    }
                }
                if next_ping <= now {
                    next_ping = now + settings.ping_interval;
                    if let Err(end) = send(Bytes::from_static(b": ping\n\n")).await {
                        return end;
                    }
                }
            }
        }
    }
}

/// Send the frames of `batch` not already sent as one chunk.
async fn write<F, Fut>(
    send: &F,
    batch: &mut Vec<Frame>,
    dedup: &mut Dedup,
    node: &Node,
) -> Result<(), End>
where
    F: Fn(Bytes) -> Fut,
    Fut: std::future::Future<Output = Result<(), End>>,
{
    batch.retain(|frame| dedup.admit(frame));
    if batch.is_empty() {
        return Ok(());
    }
    let size: usize = batch.iter().map(|f| f.text.len() + 64).sum();
    let mut chunk = BytesMut::with_capacity(size);
    for frame in batch.iter() {
        encode(&mut chunk, frame);
    }
    send(chunk.freeze()).await?;
    delivered(node, "sse", batch);
    Ok(())
}

/// One frame as an SSE event: `id:` (when it has one), then its text as `data:` lines (a
/// verbatim legacy payload may contain line breaks: one `data:` line each, which the client
/// joins back with `\n`).
fn encode(out: &mut BytesMut, frame: &Frame) {
    if let Some((epoch, ms, seq)) = frame.event_id() {
        out.put_slice(format!("id: {epoch}-{ms}-{seq}\n").as_bytes());
    }
    for line in frame.text.as_str().split('\n') {
        out.put_slice(b"data: ");
        out.put_slice(line.strip_suffix('\r').unwrap_or(line).as_bytes());
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
}

/// The stream's last event: why it ends, as the WebSocket close code.
fn close_event(reason: CloseReason) -> Bytes {
    let data = serde_json::json!({ "code": reason.code(), "reason": reason.text() });
    Bytes::from(format!("event: close\ndata: {data}\n\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_encoded_one_data_line_per_line() {
        let mut out = BytesMut::new();
        let text = r#"{"type":"x","location":"/","data":1,"id":"ab1-5-0"}"#;
        encode(
            &mut out,
            &Frame::new(text.into(), std::time::Instant::now()),
        );
        assert_eq!(
            &out[..],
            format!("id: ab1-5-0\ndata: {text}\n\n").as_bytes()
        );
        let mut out = BytesMut::new();
        let legacy = "{\"type\":\"x\",\r\n\"data\":1}";
        encode(
            &mut out,
            &Frame::verbatim(legacy.into(), std::time::Instant::now()),
        );
        assert_eq!(&out[..], b"data: {\"type\":\"x\",\ndata: \"data\":1}\n\n");
        let close = close_event(CloseReason::Disconnected);
        assert!(close.starts_with(b"event: close\ndata: {\"code\":4003"));
    }
}
