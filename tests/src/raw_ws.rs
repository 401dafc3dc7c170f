//! A raw WebSocket client over a plain `TcpStream`: it writes frames byte by byte as a hostile
//! or broken client would (bad opcodes, RSV bits, unmasked frames, invalid UTF-8, floods) and
//! never reads unless asked, so tests can check what the gateway does to such peers.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A WebSocket connection after a successful upgrade, driven by hand.
pub struct RawWs {
    stream: TcpStream,
    /// Bytes read past the response head (the start of the first frames).
    pending: Vec<u8>,
}

/// Opcodes a test writes.
pub mod opcode {
    /// Text frame.
    pub const TEXT: u8 = 0x1;
    /// Close frame.
    pub const CLOSE: u8 = 0x8;
    /// Ping frame.
    pub const PING: u8 = 0x9;
    /// Pong frame.
    pub const PONG: u8 = 0xA;
}

impl RawWs {
    /// Upgrade `GET <path_and_query>` on `addr`; fails unless the answer is 101.
    pub async fn connect(addr: &str, path_and_query: &str) -> Result<RawWs> {
        let mut stream = TcpStream::connect(addr).await?;
        let head = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        let end = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    return Ok::<_, anyhow::Error>(pos + 4);
                }
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    bail!("closed before the upgrade response");
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .context("upgrade response timed out")??;
        let head = String::from_utf8_lossy(&buf[..end]);
        if !head.starts_with("HTTP/1.1 101") {
            bail!("upgrade refused: {head}");
        }
        Ok(RawWs {
            stream,
            pending: buf[end..].to_vec(),
        })
    }

    /// Write one frame: `first` is the first header byte (FIN, RSV bits, opcode); masked with a
    /// fixed key when `masked` (clients must mask).
    pub async fn send_frame(&mut self, first: u8, masked: bool, payload: &[u8]) -> Result<()> {
        let mut frame = vec![first];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => frame.push(mask_bit | n as u8),
            n if n <= 0xFFFF => {
                frame.push(mask_bit | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(mask_bit | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let key = [0x12, 0x34, 0x56, 0x78];
        if masked {
            frame.extend_from_slice(&key);
            frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            frame.extend_from_slice(payload);
        }
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    /// A final, masked frame of `opcode`.
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) -> Result<()> {
        self.send_frame(0x80 | opcode, true, payload).await
    }

    /// Read frames until a close frame (its code and reason) or the end of the stream (`None`),
    /// skipping every other frame, waiting at most `limit`.
    pub async fn read_close(&mut self, limit: Duration) -> Result<Option<(u16, String)>> {
        tokio::time::timeout(limit, async {
            loop {
                match self.next_frame().await? {
                    None => return Ok(None),
                    Some((0x8, payload)) => {
                        let code = match payload.get(..2) {
                            Some(b) => u16::from_be_bytes([b[0], b[1]]),
                            None => 1005,
                        };
                        let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or(&[]));
                        return Ok(Some((code, reason.into_owned())));
                    }
                    Some(_) => {}
                }
            }
        })
        .await
        .context("no close frame or end of stream in time")?
    }

    /// The next server frame (opcode, payload), `None` at the end of the stream.
    async fn next_frame(&mut self) -> Result<Option<(u8, Vec<u8>)>> {
        loop {
            if let Some((opcode, len, header)) = parse_header(&self.pending) {
                if self.pending.len() >= header + len {
                    let payload = self.pending[header..header + len].to_vec();
                    self.pending.drain(..header + len);
                    return Ok(Some((opcode, payload)));
                }
            }
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk).await {
                Ok(0) => return Ok(None),
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
                // A reset after the server closed counts as the end of the stream.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// (opcode, payload length, header length) of an unmasked server frame at the start of `buf`.
fn parse_header(buf: &[u8]) -> Option<(u8, usize, usize)> {
    let opcode = buf.first()? & 0x0F;
    let len = buf.get(1)? & 0x7F;
    match len {
        126 => Some((
            opcode,
            u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize,
            4,
        )),
        127 => {
            let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            Some((opcode, u64::from_be_bytes(bytes) as usize, 10))
        }
        n => Some((opcode, n as usize, 2)),
    }
}

/// The resident set size of process `pid`, in bytes (from `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS in /proc/<pid>/status")?;
    Ok(kib * 1024)
}
