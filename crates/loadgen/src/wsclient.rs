//! Minimal WebSocket client protocol: the HTTP/1.1 upgrade handshake and an allocation-free
//! parser for server frames (RFC 6455). Only what a receive-only client needs: text/binary data
//! frames (possibly fragmented), ping (answered with a masked pong), pong, close.

use std::fmt::Write as _;

use crate::scan::{scan, Fields};

/// Fixed `Sec-WebSocket-Key` (the RFC 6455 sample nonce); the load generator needs no secrecy.
pub const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// `Sec-WebSocket-Accept` the server must answer for [`WS_KEY`].
pub const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Opcode of a continuation frame.
pub const OP_CONT: u8 = 0x0;
/// Opcode of a text frame.
pub const OP_TEXT: u8 = 0x1;
/// Opcode of a binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Opcode of a close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Opcode of a ping frame.
pub const OP_PING: u8 = 0x9;
/// Opcode of a pong frame.
pub const OP_PONG: u8 = 0xA;

/// Data frames whose payload is only partly buffered are scanned once this many payload bytes
/// are available; the rest of the frame is skipped without buffering. The benchmark fields are
/// always within the first hundred bytes.
pub const SCAN_WINDOW: usize = 1024;
/// Largest number of bytes a [`FrameReader`] ever carries over between reads.
pub const MAX_CARRY: usize = SCAN_WINDOW + 14;

/// Protocol violations by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsError {
    /// RSV bits set although no extension was negotiated.
    ReservedBits,
    /// Server frames must not be masked.
    MaskedFrame,
    /// Unknown opcode.
    BadOpcode(u8),
    /// Control frame fragmented or longer than 125 bytes.
    BadControlFrame,
    /// 64-bit length with the most significant bit set.
    BadLength,
    /// Continuation frame without a message in progress, or a new message inside one.
    BadFragmentation,
}

impl std::fmt::Display for WsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "websocket protocol error: {self:?}")
    }
}

impl std::error::Error for WsError {}

/// Writes the upgrade request for `path` (which may already contain a query) into `out`.
pub fn write_upgrade_request(out: &mut String, host: &str, path: &str, jwt: &str, in_header: bool) {
    // Writing into a String cannot fail.
    let _ = if in_header {
        write!(
            out,
            "GET {path} HTTP/1.1\r\nAuthorization: Bearer {jwt}\r\n"
        )
    } else {
        let sep = if path.contains('?') { '&' } else { '?' };
        write!(out, "GET {path}{sep}access_token={jwt} HTTP/1.1\r\n")
    };
    let _ = write!(
        out,
        "Host: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
}

/// Outcome of inspecting buffered handshake response bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshake {
    /// The response head is not complete yet.
    Incomplete,
    /// `101` with the right accept key; frame bytes start at this offset.
    Upgraded(usize),
    /// Any other status (e.g. 401).
    Status(u16),
    /// Malformed response or wrong accept key.
    Invalid(&'static str),
}

/// Parses a buffered HTTP response head of an upgrade request.
pub fn parse_handshake(buf: &[u8]) -> Handshake {
    let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") else {
        return Handshake::Incomplete;
    };
    let Ok(head) = std::str::from_utf8(&buf[..end]) else {
        return Handshake::Invalid("response head is not UTF-8");
    };
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1.1 "))
        .and_then(|l| l.get(..3))
        .and_then(|s| s.parse::<u16>().ok());
    match status {
        None => return Handshake::Invalid("malformed status line"),
        Some(101) => {}
        Some(code) => return Handshake::Status(code),
    }
    let accepted = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("sec-websocket-accept") && v.trim() == WS_ACCEPT
        })
    });
    if accepted {
        Handshake::Upgraded(end + 4)
    } else {
        Handshake::Invalid("missing or wrong Sec-WebSocket-Accept")
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Final fragment of a message.
    pub fin: bool,
    /// Frame opcode.
    pub opcode: u8,
    /// Header length in bytes (2, 4 or 10 for unmasked frames).
    pub header_len: usize,
    /// Payload length in bytes.
    pub payload_len: u64,
}

/// Parses a server frame header; `Ok(None)` if more bytes are needed.
pub fn parse_header(b: &[u8]) -> Result<Option<FrameHeader>, WsError> {
    let (Some(&b0), Some(&b1)) = (b.first(), b.get(1)) else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(WsError::ReservedBits);
    }
    if b1 & 0x80 != 0 {
        return Err(WsError::MaskedFrame);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    let (header_len, payload_len) = match b1 & 0x7F {
        126 => match b.get(2..4) {
            Some(l) => (4, u64::from(u16::from_be_bytes([l[0], l[1]]))),
            None => return Ok(None),
        },
        127 => match b.get(2..10) {
            Some(l) => {
                let mut a = [0u8; 8];
                a.copy_from_slice(l);
                let len = u64::from_be_bytes(a);
                if len >> 63 != 0 {
                    return Err(WsError::BadLength);
                }
                (10, len)
            }
            None => return Ok(None),
        },
        n => (2, u64::from(n)),
    };
    match opcode {
        OP_CONT | OP_TEXT | OP_BINARY => {}
        OP_CLOSE | OP_PING | OP_PONG if fin && payload_len <= 125 => {}
        OP_CLOSE | OP_PING | OP_PONG => return Err(WsError::BadControlFrame),
        other => return Err(WsError::BadOpcode(other)),
    }
    Ok(Some(FrameHeader {
        fin,
        opcode,
        header_len,
        payload_len,
    }))
}

/// Appends a masked client control frame (pong or close) with `payload` (≤ 125 bytes) to `out`.
pub fn write_control_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    let payload = &payload[..payload.len().min(125)];
    out.push(0x80 | opcode);
    // Length ≤ 125 fits in 7 bits.
    out.push(0x80 | payload.len() as u8);
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

/// Receives what the [`FrameReader`] finds.
pub trait FrameSink {
    /// A complete data message; `fields` are the benchmark fields, if present.
    fn message(&mut self, fields: Option<Fields>);
    /// A ping with its payload (the caller should answer with a pong).
    fn ping(&mut self, payload: &[u8]);
    /// A close frame with its status code, if any. No further frames are processed.
    fn close(&mut self, code: Option<u16>);
}

/// Incremental frame parser state of one connection.
///
/// Bytes are read into a large (possibly shared) buffer after [`MAX_CARRY`] reserved bytes;
/// [`FrameReader::place_carry`] puts the carried-over partial frame just before them, and
/// [`FrameReader::process`] consumes complete frames and keeps the unconsumed tail (at most
/// [`MAX_CARRY`] bytes). Long data frames are scanned on their first [`SCAN_WINDOW`] bytes and
/// the rest is skipped, so memory per connection stays bounded whatever the frame size.
#[derive(Debug, Default)]
pub struct FrameReader {
    carry: Vec<u8>,
    skip: u64,
    skip_fin: bool,
    msg_open: bool,
    msg_fields: Option<Fields>,
    closed: bool,
}

impl FrameReader {
    /// Copies the carried-over bytes into `buf` so that they end at `end` (which must be at
    /// least [`MAX_CARRY`]) and returns where they start. Newly read bytes go at `buf[end..]`,
    /// so nothing needs restoring when a read turns out not to be ready.
    pub fn place_carry(&mut self, buf: &mut [u8], end: usize) -> usize {
        let start = end - self.carry.len();
        buf[start..end].copy_from_slice(&self.carry);
        self.carry.clear();
        start
    }

    /// Whether a close frame was received.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Consumes `data` (carry followed by newly read bytes), reporting frames to `sink` and
    /// keeping any partial frame for the next call.
    pub fn process<S: FrameSink>(&mut self, data: &[u8], sink: &mut S) -> Result<(), WsError> {
        let mut pos = 0;
        while pos < data.len() && !self.closed {
            if self.skip > 0 {
                let n = self.skip.min((data.len() - pos) as u64);
                pos += n as usize; // n ≤ data.len() - pos
                self.skip -= n;
                if self.skip == 0 {
                    self.end_data_frame(self.skip_fin, sink);
                }
                continue;
            }
            let avail = &data[pos..];
            let Some(h) = parse_header(avail)? else { break };
            let payload_avail = avail.len() - h.header_len.min(avail.len());
            if (payload_avail as u64) >= h.payload_len {
                // Whole frame buffered; payload_len ≤ avail.len() so the cast is lossless.
                let payload = &avail[h.header_len..h.header_len + h.payload_len as usize];
                pos += h.header_len + payload.len();
                self.whole_frame(h, payload, sink)?;
            } else if h.opcode <= OP_BINARY && payload_avail >= SCAN_WINDOW {
                // Long data frame: scan the buffered prefix now, skip the rest as it arrives.
                self.start_data_frame(h.opcode, &avail[h.header_len..])?;
                self.skip = h.payload_len - payload_avail as u64;
                self.skip_fin = h.fin;
                pos = data.len();
            } else {
                break;
            }
        }
        if pos < data.len() && !self.closed {
            self.carry.extend_from_slice(&data[pos..]);
        }
        debug_assert!(self.carry.len() <= MAX_CARRY);
        Ok(())
    }

    fn whole_frame<S: FrameSink>(
        &mut self,
        h: FrameHeader,
        payload: &[u8],
        sink: &mut S,
    ) -> Result<(), WsError> {
        match h.opcode {
            OP_PING => sink.ping(payload),
            OP_PONG => {}
            OP_CLOSE => {
                self.closed = true;
                let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                sink.close(code);
            }
            _ => {
                self.start_data_frame(h.opcode, payload)?;
                self.end_data_frame(h.fin, sink);
            }
        }
        Ok(())
    }

    fn start_data_frame(&mut self, opcode: u8, payload_prefix: &[u8]) -> Result<(), WsError> {
        if opcode == OP_CONT {
            // Fields split across fragments are not reassembled; the first fragment counts.
            if !self.msg_open {
                return Err(WsError::BadFragmentation);
            }
        } else {
            if self.msg_open {
                return Err(WsError::BadFragmentation);
            }
            self.msg_open = true;
            self.msg_fields = scan(payload_prefix);
        }
        Ok(())
    }

    fn end_data_frame<S: FrameSink>(&mut self, fin: bool, sink: &mut S) {
        if fin {
            self.msg_open = false;
            sink.message(self.msg_fields.take());
        }
    }
}

#[cfg(test)]
#[path = "wsclient_tests.rs"]
mod tests;
