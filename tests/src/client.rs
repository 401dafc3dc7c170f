//! A real WebSocket client (tokio-tungstenite) with bounded waits.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Default wait for an expected frame.
pub const WAIT: Duration = Duration::from_secs(10);

/// A connected WebSocket client.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    /// A close frame with this code and reason.
    Code(u16, String),
    /// The TCP connection ended without a close frame.
    Dropped,
}

impl Client {
    /// Connect to a URL.
    pub async fn connect(url: &str) -> Result<Client> {
        let request = url.into_client_request()?;
        Self::connect_request(request).await
    }

    /// Connect to a URL sending these extra headers (e.g. `X-Forwarded-For`).
    pub async fn connect_with_headers(url: &str, headers: &[(&str, &str)]) -> Result<Client> {
        let mut request = url.into_client_request()?;
        for (name, value) in headers {
            request.headers_mut().append(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())?,
                value.parse()?,
            );
        }
        Self::connect_request(request).await
    }

    /// Connect with a prepared request (extra headers).
    pub async fn connect_request(
        request: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> Result<Client> {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .context("WebSocket connect timed out")??;
        Ok(Client { ws })
    }

    /// The next text frame (pings/pongs skipped), or how the connection ended.
    async fn next_text_or_end(&mut self) -> Result<String> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
                Some(Ok(Message::Close(frame))) => bail!("closed by server: {frame:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("socket error: {e}"),
                None => bail!("connection ended"),
            }
        }
    }

    /// The next text frame (pings/pongs skipped), waiting at most `limit`.
    pub async fn next_text_within(&mut self, limit: Duration) -> Result<String> {
        tokio::time::timeout(limit, self.next_text_or_end())
            .await
            .context("no event arrived in time")?
    }

    /// The next text frame, waiting at most [`WAIT`].
    pub async fn next_text(&mut self) -> Result<String> {
        self.next_text_within(WAIT).await
    }

    /// The next event as JSON.
    pub async fn next_event(&mut self) -> Result<serde_json::Value> {
        let text = self.next_text().await?;
        serde_json::from_str(&text).with_context(|| format!("frame is not JSON: {text}"))
    }

    /// Fail if a text frame arrives within `window`, or if the connection ends meanwhile (a
    /// closed connection receives nothing, which proves nothing).
    pub async fn expect_silence(&mut self, window: Duration) -> Result<()> {
        match tokio::time::timeout(window, self.next_text_or_end()).await {
            Err(_) => Ok(()),
            Ok(Ok(text)) => bail!("unexpected event: {text}"),
            Ok(Err(ended)) => Err(ended.context("expected an open, silent connection")),
        }
    }

    /// Read until the connection ends, skipping events; returns how it ended.
    pub async fn closed_within(&mut self, limit: Duration) -> Result<Closed> {
        tokio::time::timeout(limit, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Close(Some(frame)))) => {
                        return Closed::Code(frame.code.into(), frame.reason.to_string())
                    }
                    Some(Ok(Message::Close(None))) => return Closed::Code(1005, String::new()),
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return Closed::Dropped,
                }
            }
        })
        .await
        .context("connection was not closed in time")
    }

    /// Send a text frame (the gateway ignores client data).
    pub async fn send_text(&mut self, text: String) -> Result<()> {
        Ok(self.ws.send(Message::text(text)).await?)
    }

    /// Send a binary frame (ignored by the gateway, like text).
    pub async fn send_binary(&mut self, data: Vec<u8>) -> Result<()> {
        Ok(self.ws.send(Message::binary(data)).await?)
    }

    /// Close politely.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
