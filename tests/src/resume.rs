//! Helpers for tests of history, resume and slow consumers (issue 4): numbered events, a checker
//! that every event arrives exactly once and in order, and resuming clients. (The raw
//! WebSocket client that can stop reading is `raw_ws`.)

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::{Client, Gateway};

/// The envelope of the numbered test event `seq` (data `{"seq":n,"pad":"…"}` with `pad` bytes
/// of padding, for events of a chosen size).
pub fn seq_event(seq: u64, pad: usize) -> String {
    format!(
        r#"{{"type":"message","location":"/conversations/1","data":{{"seq":{seq},"pad":"{}"}}}}"#,
        "x".repeat(pad)
    )
}

/// Publish numbered event `seq` to `user` through the API; returns its id.
pub async fn publish_seq(gw: &Gateway, user: u64, seq: u64) -> Result<String> {
    let res = gw.publish(&[user], &seq_event(seq, 0)).await?;
    res["ids"][user.to_string()]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("publish result has no id for user {user}: {res}"))
}

/// The first frame must be a `resync` with `reason`; returns its id.
pub async fn expect_resync(client: &mut Client, reason: &str) -> Result<Option<String>> {
    let text = client.next_text().await.context("waiting for resync")?;
    match parse_frame(&text)? {
        Frame::Resync { reason: got, id } => {
            ensure!(got == reason, "resync reason {got}, expected {reason}");
            Ok(id)
        }
        other => bail!("expected resync ({reason}) first, got {other:?}"),
    }
}

/// The next frame is numbered event `seq` (with an id when `with_id`).
pub async fn expect_seq(client: &mut Client, seq: u64, with_id: bool) -> Result<()> {
    let text = client
        .next_text()
        .await
        .with_context(|| format!("waiting for seq {seq}"))?;
    match parse_frame(&text)? {
        Frame::Event { seq: got, id } if got == seq && id.is_some() == with_id => Ok(()),
        other => anyhow::bail!("expected seq {seq} (id: {with_id}), got {other:?}"),
    }
}

/// Connect as `user` resuming after `since` (`?since=<id>`).
pub async fn connect_since(gw: &Gateway, user: u64, since: &str) -> Result<Client> {
    Client::connect(&format!("{}&since={since}", gw.ws_url(user))).await
}

/// Connect as `user` resuming after `id` given in the `Last-Event-ID` header.
pub async fn connect_last_event_id(gw: &Gateway, user: u64, id: &str) -> Result<Client> {
    let mut request = gw.ws_url(user).into_client_request()?;
    request
        .headers_mut()
        .insert("Last-Event-ID", HeaderValue::from_str(id)?);
    Client::connect_request(request).await
}

/// A parsed frame: `seq` of a numbered event, or the control event it is.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A numbered test event and its id.
    Event {
        /// `data.seq`.
        seq: u64,
        /// The event id (`None` when the event carries none).
        id: Option<String>,
    },
    /// A `resync` control event.
    Resync {
        /// `data.reason`.
        reason: String,
        /// The latest id to resume from, when the history is not empty.
        id: Option<String>,
    },
}

/// Parse a frame of a test stream (numbered events and `resync`).
pub fn parse_frame(text: &str) -> Result<Frame> {
    let v: Value =
        serde_json::from_str(text).with_context(|| format!("frame is not JSON: {text}"))?;
    let id = v["id"].as_str().map(str::to_owned);
    if v["type"] == "resync" {
        let reason = v["data"]["reason"]
            .as_str()
            .with_context(|| format!("resync without a reason: {text}"))?;
        return Ok(Frame::Resync {
            reason: reason.to_string(),
            id,
        });
    }
    let seq = v["data"]["seq"]
        .as_u64()
        .with_context(|| format!("not a numbered event: {text:.200}"))?;
    Ok(Frame::Event { seq, id })
}

/// Checks one connection's (or one client's, across reconnects) stream of numbered events:
/// exactly `next, next+1, …`, each with an id. Any gap, duplicate, reordering or `resync` fails
/// at once with the position where it happened.
#[derive(Debug, Clone)]
pub struct SeqCheck {
    /// Who (for messages).
    pub name: String,
    /// The seq expected next.
    pub next: u64,
    /// Id of the last accepted event.
    pub last_id: Option<String>,
}

impl SeqCheck {
    /// Expect `first` next.
    pub fn new(name: impl Into<String>, first: u64) -> Self {
        SeqCheck {
            name: name.into(),
            next: first,
            last_id: None,
        }
    }

    /// Number of the last event accepted (0 when none).
    pub fn last(&self) -> u64 {
        self.next - 1
    }

    /// Accept one frame; fails unless it is the next numbered event with an increasing id.
    pub fn accept(&mut self, text: &str) -> Result<()> {
        match parse_frame(text)? {
            Frame::Event { seq, id } => {
                ensure!(
                    seq == self.next,
                    "{}: got seq {seq}, expected {} ({})",
                    self.name,
                    self.next,
                    if seq < self.next {
                        "duplicate or reordered"
                    } else {
                        "events lost"
                    }
                );
                let id = id.with_context(|| format!("{}: seq {seq} has no id", self.name))?;
                self.next += 1;
                self.last_id = Some(id);
                Ok(())
            }
            Frame::Resync { reason, .. } => bail!(
                "{}: unexpected resync ({reason}) after seq {}",
                self.name,
                self.last()
            ),
        }
    }

    /// Read from `client` until seq `last` was accepted.
    pub async fn read_until(&mut self, client: &mut Client, last: u64) -> Result<()> {
        while self.next <= last {
            let text = client.next_text().await.with_context(|| {
                format!("{}: waiting for seq {} of {last}", self.name, self.next)
            })?;
            self.accept(&text)?;
        }
        Ok(())
    }
}
