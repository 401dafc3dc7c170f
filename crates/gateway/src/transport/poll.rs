//! `GET /poll?since=<id>&timeout=<duration>`: long-poll, for clients that can hold neither a
//! WebSocket nor a stream. The answer is `{"events":[…]}` (the same event objects, in order) as
//! soon as at least one event after `since` is available (history first, then live), or
//! `{"events":[]}` at the timeout; a `resync` event when completeness after `since` cannot be
//! proved. While it waits the poll is a connection like any other (registry, per-user cap,
//! presence, disconnect); the server ending it early (drain, disconnect, credentials expired)
//! answers with the events so far and `"close":{"code":…,"reason":…}`.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use hyper::body::Frame as BodyFrame;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant as TokioInstant;

use super::admit::Admitted;
use super::connection::{delivered, replayed, tokio_instant, Open};
use super::cors;
use super::public::Transport;
use crate::history::Dedup;
use crate::node::Node;
use crate::outbox::{CloseReason, Frame};

/// Wait of a poll without `timeout`.
const DEFAULT_WAIT: Duration = Duration::from_secs(25);
/// Longest wait a client may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// The `timeout` parameter (humantime, e.g. `10s`), capped at [`MAX_WAIT`]; default
/// [`DEFAULT_WAIT`].
pub(super) fn wait_param(query: Option<&str>) -> Result<Duration, String> {
    let value = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "timeout")
            .map(|(_, v)| v.into_owned())
    });
    match value {
        None => Ok(DEFAULT_WAIT),
        Some(v) => humantime::parse_duration(&v)
            .map(|d| d.min(MAX_WAIT))
            .map_err(|_| format!("`timeout` must be a duration like 25s or 500ms, got {v:?}")),
    }
}

/// The answer of a poll. Until hyper is done with it (written, or the connection gone) it
/// holds the client's admission: its registration and address slot, so an answer the client
/// does not read still counts against the per-user and per-address limits.
pub(crate) struct PollBody {
    chunk: Option<Bytes>,
    _admitted: Admitted,
    /// Dropped with the body: the watchdog of [`answer`] stands down.
    _done: oneshot::Sender<()>,
}

impl hyper::body::Body for PollBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame<Bytes>, Infallible>>> {
        Poll::Ready(self.chunk.take().map(|c| Ok(BodyFrame::data(c))))
    }
}

/// Wait for events of an admitted client and answer them. An answer not taken within ping
/// interval + pong timeout (the time a WebSocket has for its replay) has `cut` reset the
/// connection.
pub(super) async fn answer(
    admitted: Admitted,
    since: Option<String>,
    wait: Duration,
    node: &Node,
    cut: Arc<Notify>,
) -> Response<PollBody> {
    let metrics = &node.metrics;
    let open = Open::new(metrics, Transport::Poll);
    let conn = &admitted.registration.conn;
    let mut dedup = Dedup::default();
    let mut batch: Vec<Frame> = Vec::new();
    if let Some(since) = &since {
        batch = replayed(conn.user, since, &mut dedup, node).await;
    }
    let closing = if batch.is_empty() {
        // Credentials that expire meanwhile end the wait (no renewal within one poll).
        let expires = admitted.identity.expires.map(tokio_instant);
        let until = TokioInstant::now() + wait;
        let until = expires.map_or(until, |at| until.min(at));
        let waited = tokio::time::timeout_at(until, async {
            loop {
                conn.outbox.ready().await;
                let reason = conn.outbox.take(&mut batch);
                batch.retain(|frame| dedup.admit(frame));
                if reason.is_some() || !batch.is_empty() {
                    return reason;
                }
            }
        })
        .await;
        match waited {
            Ok(reason) => reason,
            Err(_) if expires.is_some_and(|at| at <= TokioInstant::now()) => {
                Some(CloseReason::AuthExpired)
            }
            Err(_) => None,
        }
    } else {
        // What was queued during the history read goes too (live events after the replayed
        // ones, duplicates filtered), and so does a close that came meanwhile (drain,
        // disconnect): the client must learn it now, not on its next poll.
        let closing = conn.outbox.take(&mut batch);
        batch.retain(|frame| dedup.admit(frame));
        closing
    };
    let body = encode(&batch, closing);
    let label = closing.map_or("poll_answered", CloseReason::label);
    delivered(node, "poll", &mut batch);
    open.closed(admitted.identity.user, label);
    let (done, written) = oneshot::channel::<()>();
    let limit = node.conn.ping_interval + node.conn.pong_timeout;
    tokio::spawn(async move {
        // Ends with the body (the sender dropped); beyond the limit the client does not read.
        if tokio::time::timeout(limit, written).await.is_err() {
            cut.notify_one();
        }
    });
    let body = PollBody {
        chunk: Some(Bytes::from(body)),
        _admitted: admitted,
        _done: done,
    };
    let mut res = Response::new(body);
    *res.status_mut() = StatusCode::OK;
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    cors::allow(res)
}

/// `{"events":[<frame>,…]}` (each frame is a JSON object, copied as is), with `close` when the
/// server ended the poll for a reason.
fn encode(batch: &[Frame], closing: Option<CloseReason>) -> String {
    let size: usize = batch.iter().map(|f| f.text.len() + 1).sum();
    let mut out = String::with_capacity(size + 64);
    out.push_str("{\"events\":[");
    for (i, frame) in batch.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(frame.text.as_str());
    }
    out.push(']');
    if let Some(reason) = closing {
        let close = serde_json::json!({ "code": reason.code(), "reason": reason.text() });
        out.push_str(",\"close\":");
        out.push_str(&close.to_string());
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_parameter_and_answers() {
        assert_eq!(wait_param(None).unwrap(), DEFAULT_WAIT);
        assert_eq!(
            wait_param(Some("timeout=2s")).unwrap(),
            Duration::from_secs(2)
        );
        assert_eq!(wait_param(Some("timeout=1h")).unwrap(), MAX_WAIT);
        assert!(wait_param(Some("timeout=soon")).is_err());
        let frames = [
            Frame::new(r#"{"type":"a"}"#.into(), std::time::Instant::now()),
            Frame::new(r#"{"type":"b"}"#.into(), std::time::Instant::now()),
        ];
        let body = encode(&frames, None);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["events"][1]["type"], "b");
        let body = encode(&[], Some(CloseReason::GoingAway));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["close"]["code"], 1001);
        assert_eq!(v["events"].as_array().map(Vec::len), Some(0));
    }
}
