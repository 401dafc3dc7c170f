//! A connection's bounded outbound queue.
//!
//! The broker reader pushes frames without ever waiting; the connection's socket task drains them
//! in batches. The queue is bounded in events and in bytes: a push beyond either bound marks the
//! connection as a slow consumer, which closes it (the client reconnects and resumes). An idle
//! connection's queue holds no heap allocation.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::task::AtomicWaker;
use gleepost_event::history::frame_id;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// One event frame, shared (reference counted) by every connection it is queued on: all the
/// recipients of a publish without history, a user's connections with history (per-user id).
#[derive(Clone, Debug)]
pub(crate) struct Frame {
    /// The encoded event, sent as one text frame.
    pub(crate) text: Utf8Bytes,
    /// When the event entered this node, for the delivery-latency histogram.
    pub(crate) entered: Instant,
    /// The event id, read once from `text` when the frame was made, for every recipient's
    /// deduplication.
    id: Option<FrameId>,
}

/// Where a frame's event id is: the epoch as a range of the text, and the stream position.
#[derive(Clone, Copy, Debug)]
struct FrameId {
    epoch: (u32, u32),
    ms: u64,
    seq: u64,
}

impl Frame {
    /// A frame of `text` (an encoded event) that entered the node at `entered`.
    pub(crate) fn new(text: Utf8Bytes, entered: Instant) -> Frame {
        let id = frame_id(text.as_bytes()).and_then(|(epoch, ms, seq)| {
            // `epoch` is a slice of `text`: keep its offsets, not a copy.
            let start = epoch.as_ptr() as usize - text.as_bytes().as_ptr() as usize;
            let end = start + epoch.len();
            Some(FrameId {
                epoch: (u32::try_from(start).ok()?, u32::try_from(end).ok()?),
                ms,
                seq,
            })
        });
        Frame { text, entered, id }
    }

    /// A frame of a legacy payload: delivered verbatim, and an `id` member inside it is never
    /// read (it must not feed deduplication or gap repair).
    pub(crate) fn verbatim(text: Utf8Bytes, entered: Instant) -> Frame {
        Frame {
            text,
            entered,
            id: None,
        }
    }

    /// The event id as `(epoch, ms, seq)`, when the frame carries one.
    pub(crate) fn event_id(&self) -> Option<(&str, u64, u64)> {
        let id = self.id?;
        let epoch = self
            .text
            .as_str()
            .get(id.epoch.0 as usize..id.epoch.1 as usize)?;
        Some((epoch, id.ms, id.seq))
    }
}

/// Why the gateway closes a connection; each maps to a documented WebSocket close code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// Node shutting down or draining: reconnect (to another node).
    GoingAway,
    /// The client did not read fast enough; reconnect and resume.
    SlowConsumer,
    /// The client's credentials expired; reconnect with fresh ones.
    AuthExpired,
    /// The client broke the WebSocket protocol (bad opcode, RSV bits, unmasked frame…).
    ProtocolError,
    /// The client sent a text frame or close reason that is not UTF-8.
    InvalidUtf8,
    /// The client sent more frames than the per-second budget.
    TooManyFrames,
    /// The client sent a frame or message larger than `--max-client-frame`.
    TooBig,
    /// The backend disconnected the user (`POST /v1/disconnect`): get fresh credentials
    /// before reconnecting.
    Disconnected,
}

impl CloseReason {
    /// The WebSocket close code sent to the client.
    pub(crate) fn code(self) -> u16 {
        match self {
            CloseReason::GoingAway => 1001,
            CloseReason::SlowConsumer => 4000,
            CloseReason::AuthExpired => 4001,
            CloseReason::ProtocolError => 1002,
            CloseReason::InvalidUtf8 => 1007,
            CloseReason::TooManyFrames => 1008,
            CloseReason::TooBig => 1009,
            CloseReason::Disconnected => 4003,
        }
    }

    /// The close frame's reason text.
    pub(crate) fn text(self) -> &'static str {
        match self {
            CloseReason::GoingAway => "server going away, reconnect",
            CloseReason::SlowConsumer => "slow consumer, reconnect",
            CloseReason::AuthExpired => "credentials expired",
            CloseReason::ProtocolError => "protocol error",
            CloseReason::InvalidUtf8 => "invalid utf-8",
            CloseReason::TooManyFrames => "too many frames",
            CloseReason::TooBig => "message too big",
            CloseReason::Disconnected => "disconnected by the server",
        }
    }

    /// Metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            CloseReason::GoingAway => "going_away",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::AuthExpired => "auth_expired",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::InvalidUtf8 => "invalid_utf8",
            CloseReason::TooManyFrames => "too_many_frames",
            CloseReason::TooBig => "message_too_big",
            CloseReason::Disconnected => "disconnected",
        }
    }
}

/// Bounds of one outbox.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QueueLimits {
    /// Most queued events.
    pub(crate) max_events: usize,
    /// Most queued bytes.
    pub(crate) max_bytes: usize,
}

/// Result of a push that did not enqueue.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The queue was full: the connection is now closing as a slow consumer.
    Overflow,
    /// The connection is already closing.
    Closed,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Frame>,
    bytes: usize,
    closing: Option<CloseReason>,
}

/// The bounded queue between the broker reader and one socket writer.
///
/// One consumer (the connection task) waits on it: a single `AtomicWaker` holds that task's
/// waker, and a push wakes it only when the queue goes from empty to non-empty (a non-empty
/// queue means the task is already due to drain it), on overflow, or on close.
pub(crate) struct Outbox {
    state: Mutex<State>,
    waker: AtomicWaker,
    /// Set (once) when a push overflowed; read without the lock by the writer.
    overflow: AtomicBool,
}

impl Outbox {
    /// An empty outbox. Its bounds are the registry's (the same for every connection, so not
    /// kept in each outbox: every byte here is held by every idle connection).
    pub(crate) fn new() -> Self {
        Outbox {
            state: Mutex::new(State::default()),
            waker: AtomicWaker::new(),
            overflow: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent (every critical
        // section is a few field updates), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Enqueue a frame without waiting, within `limits`.
    pub(crate) fn push(&self, frame: Frame, limits: &QueueLimits) -> Result<(), PushError> {
        let mut st = self.lock();
        if st.closing.is_some() {
            return Err(PushError::Closed);
        }
        let len = frame.text.len();
        if st.queue.len() >= limits.max_events || st.bytes + len > limits.max_bytes {
            st.closing = Some(CloseReason::SlowConsumer);
            st.queue = VecDeque::new();
            st.bytes = 0;
            drop(st);
            self.overflow.store(true, Ordering::Release);
            self.waker.wake();
            return Err(PushError::Overflow);
        }
        st.bytes += len;
        st.queue.push_back(frame);
        let was_empty = st.queue.len() == 1;
        drop(st);
        if was_empty {
            self.waker.wake();
        }
        Ok(())
    }

    /// Ask the connection to close with `reason` (frames already queued are still sent for
    /// [`CloseReason::GoingAway`]). The first reason wins, except that a disconnect replaces a
    /// drain's close not yet taken: 4003 tells the client to get fresh credentials, where
    /// 1001 would send it to another node with the same ones.
    pub(crate) fn close(&self, reason: CloseReason) {
        let mut st = self.lock();
        let replaces =
            st.closing == Some(CloseReason::GoingAway) && reason == CloseReason::Disconnected;
        if st.closing.is_none() || replaces {
            st.closing = Some(reason);
        }
        drop(st);
        self.waker.wake();
    }

    /// Move every queued frame to the end of `batch`; returns the close reason if the
    /// connection should close after sending them.
    pub(crate) fn take(&self, batch: &mut Vec<Frame>) -> Option<CloseReason> {
        let mut st = self.lock();
        batch.extend(st.queue.drain(..));
        st.bytes = 0;
        if st.queue.capacity() > 64 {
            // Give memory back after a burst; idle connections keep none.
            st.queue = VecDeque::new();
        }
        st.closing
    }

    /// Wait until a frame is queued or a close was requested. Only the connection's own task
    /// may wait on its outbox (there is one waker slot).
    pub(crate) async fn ready(&self) {
        poll_fn(|cx| self.poll_ready(cx)).await
    }

    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        // Register before looking, so a push after the look wakes this task.
        self.waker.register(cx.waker());
        let st = self.lock();
        if st.queue.is_empty() && st.closing.is_none() {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }

    /// Ready once the queue overflowed (the socket writer may be stuck on a client that stopped
    /// reading: it must give up rather than wait for the socket). Same task rule as `ready`.
    pub(crate) fn poll_overflowed(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.waker.register(cx.waker());
        if self.overflow.load(Ordering::Acquire) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(s: &'static str) -> Frame {
        Frame::new(Utf8Bytes::from_static(s), Instant::now())
    }

    #[test]
    fn a_frame_knows_its_event_id() {
        let f = frame(r#"{"type":"t","data":{"id":"x-1-1"},"id":"ep-5-2"}"#);
        assert_eq!(f.event_id(), Some(("ep", 5, 2)));
        assert_eq!(frame(r#"{"type":"t","data":1}"#).event_id(), None);
    }

    #[test]
    fn overflow_by_count_closes_as_slow_consumer() {
        let limits = QueueLimits {
            max_events: 2,
            max_bytes: 1000,
        };
        let ob = Outbox::new();
        ob.push(frame("a"), &limits).unwrap();
        ob.push(frame("b"), &limits).unwrap();
        assert_eq!(ob.push(frame("c"), &limits), Err(PushError::Overflow));
        assert_eq!(ob.push(frame("d"), &limits), Err(PushError::Closed));
        let mut batch = Vec::new();
        assert_eq!(ob.take(&mut batch), Some(CloseReason::SlowConsumer));
        assert!(batch.is_empty(), "a slow consumer's queue is discarded");
    }

    /// Counts wake-ups of the connection task.
    struct CountingWaker(std::sync::atomic::AtomicUsize);

    impl futures_util::task::ArcWake for CountingWaker {
        fn wake_by_ref(arc_self: &std::sync::Arc<Self>) {
            arc_self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn push_wakes_the_waiting_task_once_per_empty_to_non_empty() {
        let limits = QueueLimits {
            max_events: 10,
            max_bytes: 100,
        };
        let ob = Outbox::new();
        let counter = std::sync::Arc::new(CountingWaker(Default::default()));
        let waker = futures_util::task::waker(counter.clone());
        let mut cx = Context::from_waker(&waker);
        assert_eq!(ob.poll_ready(&mut cx), Poll::Pending);
        ob.push(frame("1"), &limits).unwrap();
        ob.push(frame("2"), &limits).unwrap();
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            1,
            "second push must not wake"
        );
        assert_eq!(ob.poll_ready(&mut cx), Poll::Ready(()));
        let mut batch = Vec::new();
        assert_eq!(ob.take(&mut batch), None);
        assert_eq!(ob.poll_ready(&mut cx), Poll::Pending);
        ob.close(CloseReason::GoingAway);
        assert_eq!(counter.0.load(Ordering::SeqCst), 2, "close wakes");
        assert_eq!(ob.poll_ready(&mut cx), Poll::Ready(()));
    }

    #[test]
    fn overflow_by_bytes() {
        let limits = QueueLimits {
            max_events: 100,
            max_bytes: 5,
        };
        let ob = Outbox::new();
        ob.push(frame("abc"), &limits).unwrap();
        assert_eq!(ob.push(frame("def"), &limits), Err(PushError::Overflow));
    }

    #[test]
    fn take_drains_in_order_and_keeps_going_away_frames() {
        let limits = QueueLimits {
            max_events: 10,
            max_bytes: 100,
        };
        let ob = Outbox::new();
        ob.push(frame("1"), &limits).unwrap();
        ob.push(frame("2"), &limits).unwrap();
        ob.close(CloseReason::GoingAway);
        ob.close(CloseReason::AuthExpired);
        let mut batch = Vec::new();
        assert_eq!(ob.take(&mut batch), Some(CloseReason::GoingAway));
        let texts: Vec<&str> = batch.iter().map(|f| f.text.as_str()).collect();
        assert_eq!(texts, ["1", "2"]);
    }

    #[test]
    fn a_disconnect_replaces_a_drains_close_and_nothing_else() {
        let ob = Outbox::new();
        ob.close(CloseReason::GoingAway);
        ob.close(CloseReason::Disconnected);
        assert_eq!(ob.take(&mut Vec::new()), Some(CloseReason::Disconnected));
        let ob = Outbox::new();
        ob.close(CloseReason::AuthExpired);
        ob.close(CloseReason::Disconnected);
        assert_eq!(ob.take(&mut Vec::new()), Some(CloseReason::AuthExpired));
        let ob = Outbox::new();
        ob.close(CloseReason::Disconnected);
        ob.close(CloseReason::GoingAway);
        assert_eq!(ob.take(&mut Vec::new()), Some(CloseReason::Disconnected));
    }
}
