//! The budget of what a client may send. The protocol is receive-only (clients send pongs and
//! maybe a keep-alive), so a client is flooding, and is closed with 1008, when it sends in a
//! one-second window more than `--client-frame-rate` messages, or more bytes than that many
//! frames of `--max-client-frame` bytes can hold. The session counts messages; bytes are
//! counted here, beneath tungstenite, because fragments never become a message the session
//! could count (endless empty continuation frames after a non-final text frame burned a core).
//! This bounds the CPU a client costs and the pongs it can make the server queue.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Duration, Instant};

/// Room for a frame's header (2 bytes, 8 of length, 4 of mask) beside its payload.
const FRAME_HEADER: u32 = 14;

/// A client's TCP stream whose reads fail with [`Flooded`] once the client sends more bytes
/// in a second than its frame budget allows; also the budget of its messages.
pub(super) struct Budgeted {
    stream: TcpStream,
    allowance: Allowance,
}

impl Budgeted {
    /// `stream`, allowing `max_frames` messages per second of at most `max_frame` bytes each.
    pub(super) fn new(stream: TcpStream, max_frames: u32, max_frame: usize) -> Self {
        Budgeted {
            stream,
            allowance: Allowance::new(Instant::now(), max_frames, max_frame),
        }
    }

    /// The TCP stream.
    pub(super) fn tcp(&self) -> &TcpStream {
        &self.stream
    }

    /// Count one message from the client; false when it is over its budget.
    pub(super) fn admit_frame(&mut self) -> bool {
        self.allowance.frame(Instant::now())
    }
}

/// The error of a read beyond the byte budget (the connection is closed with 1008).
#[derive(Debug, thiserror::Error)]
#[error("the client sent more bytes than its frame budget allows")]
pub(super) struct Flooded;

/// Whether `error` is a read refused by the budget.
pub(super) fn is_flood(error: &io::Error) -> bool {
    error.get_ref().is_some_and(|inner| inner.is::<Flooded>())
}

impl AsyncRead for Budgeted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.stream).poll_read(cx, buf))?;
        let read = buf.filled().len() - before;
        if this.allowance.bytes(Instant::now(), read) {
            Poll::Ready(Ok(()))
        } else {
            Poll::Ready(Err(io::Error::other(Flooded)))
        }
    }
}

impl AsyncWrite for Budgeted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// A fixed one-second window of messages and bytes.
struct Allowance {
    window_start: Instant,
    frames: u32,
    bytes: u32,
    max_frames: u32,
    max_bytes: u32,
}

impl Allowance {
    fn new(now: Instant, max_frames: u32, max_frame: usize) -> Self {
        let per_frame = u32::try_from(max_frame)
            .unwrap_or(u32::MAX)
            .saturating_add(FRAME_HEADER);
        Allowance {
            window_start: now,
            frames: 0,
            bytes: 0,
            max_frames,
            max_bytes: max_frames.saturating_mul(per_frame),
        }
    }

    /// Start a new window when `now` is past the current one.
    fn roll(&mut self, now: Instant) {
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.frames = 0;
            self.bytes = 0;
        }
    }

    /// Count one message received at `now`; false when over the budget.
    fn frame(&mut self, now: Instant) -> bool {
        self.roll(now);
        self.frames = self.frames.saturating_add(1);
        self.frames <= self.max_frames
    }

    /// Count `n` bytes received at `now`; false when over the budget.
    fn bytes(&mut self, now: Instant, n: usize) -> bool {
        self.roll(now);
        self.bytes = self
            .bytes
            .saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
        self.bytes <= self.max_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_budget_refills_each_second() {
        let t0 = Instant::now();
        let mut budget = Allowance::new(t0, 32, 4096);
        for _ in 0..32 {
            assert!(budget.frame(t0));
        }
        assert!(!budget.frame(t0 + Duration::from_millis(999)));
        assert!(budget.frame(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn the_byte_budget_is_that_many_frames_of_the_largest_size() {
        let t0 = Instant::now();
        let mut budget = Allowance::new(t0, 2, 100);
        assert!(budget.bytes(t0, 228));
        assert!(!budget.bytes(t0, 1));
        assert!(budget.bytes(t0 + Duration::from_secs(1), 228));
    }
}
