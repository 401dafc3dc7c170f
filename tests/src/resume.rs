//! Helpers for tests of history, resume and slow consumers (issue 4): numbered events, a checker
//! that every event arrives exactly once and in order, resuming clients, a raw WebSocket client
//! that can stop reading, and the gateway's resident memory.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
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

/// Resident memory of a process, in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn vm_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/<pid>/status")
}

/// A WebSocket client written by hand on a plain TCP socket with a small receive buffer: after
/// the handshake it reads nothing until told to, so the gateway sees a client that stopped
/// reading.
pub struct RawClient {
    stream: TcpStream,
    /// Bytes read past the handshake response.
    buf: Vec<u8>,
}

/// What a [`RawClient`] read once it resumed reading.
#[derive(Debug, Default)]
pub struct RawRead {
    /// Text frames, in order.
    pub texts: Vec<String>,
    /// Close code of the close frame, if one came.
    pub close_code: Option<u16>,
}

impl RawClient {
    /// Upgrade `url_path` (e.g. `/ws?access_token=…`) on `addr`, with a receive buffer of
    /// `rcvbuf` bytes (set before connecting, which turns off receive autotuning).
    pub async fn connect(addr: &str, url_path: &str, rcvbuf: u32) -> Result<RawClient> {
        let socket = TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(rcvbuf)?;
        let mut stream = socket.connect(addr.parse()?).await?;
        let request = format!(
            "GET {url_path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        let head_end = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    return Ok::<_, anyhow::Error>(pos + 4);
                }
                // Whatever follows the head (early frames) stays in `buf`.
                let n = stream.read(&mut chunk).await?;
                ensure!(n > 0, "connection closed during the handshake");
                buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .context("handshake timed out")??;
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        ensure!(
            head.starts_with("HTTP/1.1 101"),
            "upgrade refused: {head:?}"
        );
        buf.drain(..head_end);
        Ok(RawClient { stream, buf })
    }

    /// Read every frame until the connection ends (close frame, EOF or reset), bounded by
    /// `limit` overall.
    pub async fn read_to_end(mut self, limit: Duration) -> Result<RawRead> {
        let mut out = RawRead::default();
        tokio::time::timeout(limit, async {
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                while let Some((opcode, payload, used)) = parse_ws_frame(&self.buf)? {
                    self.buf.drain(..used);
                    match opcode {
                        0x1 => out
                            .texts
                            .push(String::from_utf8(payload).context("text frame is not UTF-8")?),
                        0x8 => {
                            out.close_code = (payload.len() >= 2)
                                .then(|| u16::from_be_bytes([payload[0], payload[1]]));
                            return Ok::<_, anyhow::Error>(());
                        }
                        _ => {} // ping/pong/binary
                    }
                }
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return Ok(()),
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .context("raw client: connection did not end in time")??;
        Ok(out)
    }
}

/// One complete unfragmented server frame at the start of `buf`: `(opcode, payload, bytes used)`.
fn parse_ws_frame(buf: &[u8]) -> Result<Option<(u8, Vec<u8>, usize)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    ensure!(buf[0] & 0x80 != 0, "fragmented frames are not expected");
    ensure!(buf[1] & 0x80 == 0, "server frames must not be masked");
    let opcode = buf[0] & 0x0f;
    let (len, header) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b) as usize, 10)
        }
        126 | 127 => return Ok(None),
        n => (n as usize, 2),
    };
    if buf.len() < header + len {
        return Ok(None);
    }
    Ok(Some((
        opcode,
        buf[header..header + len].to_vec(),
        header + len,
    )))
}
