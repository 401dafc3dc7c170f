//! One WebSocket connection: upgrade (user id = the JWT's `sub`, **not verified**), then
//! forward the user's queued messages as text frames until either side goes away.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;

use crate::hub::Hub;

/// Serves one accepted TCP connection.
pub(crate) async fn serve(stream: TcpStream, hub: Arc<Hub>) {
    let _ = stream.set_nodelay(true);
    let mut user = None;
    // The handshake callback's signature is fixed by tungstenite.
    #[allow(clippy::result_large_err)]
    let check = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        user = user_of(req.uri().query());
        if user.is_some() {
            return Ok(resp);
        }
        let mut denied = ErrorResponse::new(Some("missing or malformed access_token".into()));
        *denied.status_mut() = StatusCode::UNAUTHORIZED;
        Err(denied)
    };
    // Buffers for many connections: clients only send control frames, and the gateway's write
    // batch size (tungstenite's defaults are 128 KiB each per connection).
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(16 * 1024);
    let accepted = tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config));
    let Ok(mut ws) = accepted.await else {
        return;
    };
    let Some(user) = user else { return };
    let (id, mut queue) = hub.join(user);
    loop {
        tokio::select! {
            next = queue.recv() => {
                let Some(first) = next else {
                    // Dropped by the hub: its queue was full.
                    let frame = CloseFrame { code: CloseCode::Policy, reason: "slow consumer".into() };
                    let _ = ws.send(Message::Close(Some(frame))).await;
                    break;
                };
                // Everything queued goes out in one flush.
                let mut sent = ws.feed(Message::Text(first)).await;
                while sent.is_ok() {
                    let Ok(more) = queue.try_recv() else { break };
                    sent = ws.feed(Message::Text(more)).await;
                }
                if sent.is_err() || ws.flush().await.is_err() {
                    break;
                }
            }
            frame = ws.next() => match frame {
                // Pings are answered by tungstenite; other frames from the client are ignored.
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    hub.leave(user, id);
}

/// The user id in the `sub` claim of the `access_token` query parameter, decoded without any
/// signature or expiry check (a benchmark baseline: see the crate documentation).
fn user_of(query: Option<&str>) -> Option<u64> {
    let token = query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("access_token="))?;
    let claims = URL_SAFE_NO_PAD.decode(token.split('.').nth(1)?).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&claims).ok()?;
    match claims.get("sub")? {
        serde_json::Value::String(s) => s.parse().ok(),
        serde_json::Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_from_an_unverified_token() {
        let claims = URL_SAFE_NO_PAD.encode(br#"{"sub":"42","exp":1}"#);
        let q = format!("x=1&access_token=e30.{claims}.c2ln");
        assert_eq!(user_of(Some(&q)), Some(42));
        let numeric = URL_SAFE_NO_PAD.encode(br#"{"sub":7}"#);
        assert_eq!(
            user_of(Some(&format!("access_token=e30.{numeric}."))),
            Some(7)
        );
        assert_eq!(user_of(Some("access_token=garbage")), None);
        assert_eq!(user_of(None), None);
    }
}
