//! A WebSocket client that reports events *and* how the connection ended, with the instant each
//! frame was seen, for tests that follow a client across a close and a resume (drain tests).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::client::WAIT;

/// What the server sent next.
#[derive(Debug)]
pub enum Frame {
    /// A text frame (an event) and when it was read.
    Text(String, Instant),
    /// A close frame: code, reason and when it was read (1005 when the frame had no code).
    Close(u16, String, Instant),
    /// The TCP connection ended (or failed) without a close frame.
    Dropped(Instant),
}

/// A connected WebSocket that yields [`Frame`]s.
pub struct EventStream {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl EventStream {
    /// Connect to a URL (bounded by [`WAIT`]).
    pub async fn connect(url: &str) -> Result<EventStream> {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .context("WebSocket connect timed out")??;
        Ok(EventStream { ws })
    }

    /// The next text or close frame (pings/pongs skipped), waiting at most `limit`.
    pub async fn next_frame(&mut self, limit: Duration) -> Result<Frame> {
        tokio::time::timeout(limit, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        return Frame::Text(t.to_string(), Instant::now())
                    }
                    Some(Ok(Message::Close(Some(frame)))) => {
                        return Frame::Close(
                            frame.code.into(),
                            frame.reason.to_string(),
                            Instant::now(),
                        )
                    }
                    Some(Ok(Message::Close(None))) => {
                        return Frame::Close(1005, String::new(), Instant::now())
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return Frame::Dropped(Instant::now()),
                }
            }
        })
        .await
        .context("no frame arrived in time")
    }
}
