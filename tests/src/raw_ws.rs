//! A WebSocket client written by hand on a plain TCP socket: after the handshake it reads
//! nothing unless told to (the gateway then sees a client that stopped reading, optionally with
//! a small receive buffer), and it writes frames byte by byte as a hostile or broken client
//! would (bad opcodes, RSV bits, unmasked frames, invalid UTF-8, floods). Also the gateway's
//! resident memory, which such tests bound.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::http;

/// Opcodes a test writes.
pub mod opcode {
    /// Text frame.
    pub const TEXT: u8 = 0x1;
    /// Ping frame.
    pub const PING: u8 = 0x9;
    /// Pong frame.
    pub const PONG: u8 = 0xA;
}

/// A WebSocket connection after a successful upgrade, driven by hand.
pub struct RawClient {
    stream: TcpStream,
    /// Bytes read past the handshake response (the start of the first frames).
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
    /// Upgrade `url_path` (e.g. `/ws?access_token=…`) on `addr`; fails unless the answer is 101.
    pub async fn connect(addr: &str, url_path: &str) -> Result<RawClient> {
        let stream = TcpStream::connect(addr).await?;
        Self::handshake(stream, addr, url_path).await
    }

    /// [`RawClient::connect`] with a receive buffer of `rcvbuf` bytes (set before connecting,
    /// which turns off receive autotuning).
    pub async fn connect_with_rcvbuf(addr: &str, url_path: &str, rcvbuf: u32) -> Result<Self> {
        let socket = TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(rcvbuf)?;
        let stream = socket.connect(addr.parse()?).await?;
        Self::handshake(stream, addr, url_path).await
    }

    async fn handshake(mut stream: TcpStream, addr: &str, url_path: &str) -> Result<RawClient> {
        let request = http::upgrade_head(addr, url_path, "HTTP/1.1", Some(http::WS_KEY), &[]);
        stream.write_all(request.as_bytes()).await?;
        // Whatever follows the head (early frames) stays in `buf`.
        let (response, buf) =
            tokio::time::timeout(Duration::from_secs(10), http::read_head(&mut stream))
                .await
                .context("handshake timed out")??;
        ensure!(
            response.status == 101,
            "upgrade refused: {} {:?}",
            response.status,
            response.headers
        );
        Ok(RawClient { stream, buf })
    }

    /// This client's end of the TCP connection.
    pub fn local_addr(&self) -> Result<std::net::SocketAddr> {
        Ok(self.stream.local_addr()?)
    }

    /// Write one frame: `first` is the first header byte (FIN, RSV bits, opcode); masked with a
    /// fixed key when `masked` (clients must mask).
    pub async fn send_frame(&mut self, first: u8, masked: bool, payload: &[u8]) -> Result<()> {
        let frame = encode_frame(first, masked, payload);
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    /// Write `count` copies of one masked frame (`first` as in [`Self::send_frame`]) in a
    /// single write: a flood of frames as fast as the socket takes them.
    pub async fn send_repeated(&mut self, first: u8, payload: &[u8], count: usize) -> Result<()> {
        let frames = encode_frame(first, true, payload).repeat(count);
        self.stream.write_all(&frames).await?;
        Ok(())
    }

    /// A final, masked frame of `opcode`.
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) -> Result<()> {
        self.send_frame(0x80 | opcode, true, payload).await
    }

    /// Every byte the server sends from now until it closes the connection (frames not
    /// parsed), waiting at most `limit`; fails if it is still open then.
    pub async fn bytes_until_closed(mut self, limit: Duration) -> Result<Vec<u8>> {
        let mut received = std::mem::take(&mut self.buf);
        received.extend(crate::http::closed_within(&mut self.stream, limit).await?);
        Ok(received)
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

/// One frame as a client writes it: `first` is the first header byte (FIN, RSV bits, opcode);
/// masked with a fixed key when `masked`.
fn encode_frame(first: u8, masked: bool, payload: &[u8]) -> Vec<u8> {
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
    frame
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

/// Resident memory of a process, in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn vm_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/<pid>/status")
}
