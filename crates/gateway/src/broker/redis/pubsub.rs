//! The node's Redis pub/sub connection, spoken directly in RESP2: (S)SUBSCRIBE/(S)UNSUBSCRIBE
//! commands out; `message`/`smessage` pushes and subscription confirmations in, parsed in place
//! from one read buffer.
//!
//! Why not redis-rs here (it serves every other command): its pub/sub path parses each push into
//! owned values with a parser-combinator and forwards it over a channel to another task. At
//! ~2,000 messages/s that path was 39 % of the gateway's userland instructions (callgrind, see
//! the notes); the subset of RESP2 a subscribed connection receives is small enough to read
//! here without allocating per message.

use std::ops::Range;

use bytes::{Buf, BytesMut};
use redis::{ConnectionAddr, ConnectionInfo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest frame accepted. Redis itself disconnects a pub/sub client whose output buffer passes
/// 32 MiB (default `client-output-buffer-limit pubsub`), so this bound never binds first.
const MAX_FRAME: usize = 64 << 20;
/// Read-buffer growth step.
const READ_CHUNK: usize = 64 << 10;
/// An empty read buffer larger than this is replaced by a fresh `READ_CHUNK` one.
const SHRINK_ABOVE: usize = 1 << 20;

/// Failure of the pub/sub connection; every one ends the session (the subscriber reconnects).
#[derive(Debug, thiserror::Error)]
pub(crate) enum PubSubError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("unexpected RESP from redis: {0}")]
    Protocol(&'static str),
    #[error("redis replied with an error: {0}")]
    Server(String),
    #[error("connection closed by redis")]
    Closed,
    #[error("unsupported redis address for the subscriber (redis:// over TCP or unix only)")]
    UnsupportedAddress,
}

/// One push from Redis, borrowed from the read buffer until the next call to
/// [`PubSubConn::next`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Push<'a> {
    /// A message published to a subscribed channel.
    Message {
        channel: &'a [u8],
        payload: &'a [u8],
    },
    /// Confirmation of one channel of a SUBSCRIBE.
    Subscribed,
    /// Confirmation of one channel of an UNSUBSCRIBE.
    Unsubscribed,
    /// Confirmation of one channel of an SSUBSCRIBE.
    ShardSubscribed,
    /// One channel of an SUNSUBSCRIBE, or a shard channel Redis dropped by itself (its slot
    /// moved to another node, or this node lost it in a failover).
    ShardUnsubscribed { channel: &'a [u8] },
    /// Anything else a subscribed connection may receive (ignored).
    Other,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connection in subscribed mode.
pub(crate) struct PubSubConn {
    io: Box<dyn Io>,
    buf: BytesMut,
    /// Length of the frame last returned by `next`, dropped from `buf` on the next call.
    consumed: usize,
    out: Vec<u8>,
}

impl PubSubConn {
    /// Connect to the address of `info`, authenticate with its credentials, if any, and name
    /// the connection `name` (`CLIENT SETNAME`, shown by `CLIENT LIST`).
    pub(crate) async fn connect(info: &ConnectionInfo, name: &str) -> Result<Self, PubSubError> {
        let io: Box<dyn Io> = match info.addr() {
            ConnectionAddr::Tcp(host, port) => {
                let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                stream.set_nodelay(true)?;
                Box::new(stream)
            }
            ConnectionAddr::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
            _ => return Err(PubSubError::UnsupportedAddress),
        };
        let mut conn = PubSubConn {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
            consumed: 0,
            out: Vec::new(),
        };
        let settings = info.redis_settings();
        if let Some(password) = settings.password() {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(user) = settings.username() {
                args.push(user.as_bytes());
            }
            args.push(password.as_bytes());
            conn.send(&args).await?;
            conn.next().await?;
        }
        conn.send(&[b"CLIENT", b"SETNAME", name.as_bytes()]).await?;
        conn.next().await?;
        Ok(conn)
    }

    /// SUBSCRIBE to `channels` (one confirmation per channel follows).
    pub(crate) async fn subscribe(&mut self, channels: &[String]) -> Result<(), PubSubError> {
        self.channel_command(b"SUBSCRIBE", channels).await
    }

    /// UNSUBSCRIBE from `channels` (one confirmation per channel follows).
    pub(crate) async fn unsubscribe(&mut self, channels: &[String]) -> Result<(), PubSubError> {
        self.channel_command(b"UNSUBSCRIBE", channels).await
    }

    /// SSUBSCRIBE to shard `channels`, all of one slot (one confirmation per channel follows).
    pub(crate) async fn ssubscribe(&mut self, channels: &[String]) -> Result<(), PubSubError> {
        self.channel_command(b"SSUBSCRIBE", channels).await
    }

    /// SUNSUBSCRIBE from shard `channels`, all of one slot.
    pub(crate) async fn sunsubscribe(&mut self, channels: &[String]) -> Result<(), PubSubError> {
        self.channel_command(b"SUNSUBSCRIBE", channels).await
    }

    async fn channel_command(
        &mut self,
        command: &[u8],
        channels: &[String],
    ) -> Result<(), PubSubError> {
        let mut args: Vec<&[u8]> = Vec::with_capacity(channels.len() + 1);
        args.push(command);
        args.extend(channels.iter().map(|c| c.as_bytes()));
        self.send(&args).await
    }

    async fn send(&mut self, args: &[&[u8]]) -> Result<(), PubSubError> {
        self.out.clear();
        encode_command(&mut self.out, args);
        self.io.write_all(&self.out).await?;
        Ok(())
    }

    /// The next push. Cancel-safe: a dropped call loses nothing (reads only append to the
    /// buffer). An error reply from Redis is returned as [`PubSubError::Server`].
    pub(crate) async fn next(&mut self) -> Result<Push<'_>, PubSubError> {
        self.buf.advance(std::mem::take(&mut self.consumed));
        if self.buf.is_empty() && self.buf.capacity() > SHRINK_ABOVE {
            // Give back the memory of a rare huge message.
            self.buf = BytesMut::with_capacity(READ_CHUNK);
        }
        let frame = loop {
            if let Some(frame) = parse(&self.buf)? {
                break frame;
            }
            if self.buf.len() > MAX_FRAME {
                return Err(PubSubError::Protocol("frame larger than 64 MiB"));
            }
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
                self.buf.reserve(READ_CHUNK);
            }
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Err(PubSubError::Closed);
            }
        };
        self.consumed = frame.len;
        let buf = &self.buf[..];
        Ok(match frame.kind {
            Kind::Error(text) => {
                return Err(PubSubError::Server(
                    String::from_utf8_lossy(&buf[text]).into_owned(),
                ))
            }
            Kind::Push([Item::Bulk(kind), Item::Bulk(channel), Item::Bulk(payload)]) => {
                match &buf[kind] {
                    b"message" | b"smessage" => Push::Message {
                        channel: &buf[channel],
                        payload: &buf[payload],
                    },
                    b"subscribe" => Push::Subscribed,
                    b"unsubscribe" => Push::Unsubscribed,
                    _ => Push::Other,
                }
            }
            Kind::Push([Item::Bulk(kind), Item::Bulk(channel), Item::Int]) => match &buf[kind] {
                b"subscribe" => Push::Subscribed,
                b"unsubscribe" => Push::Unsubscribed,
                b"ssubscribe" => Push::ShardSubscribed,
                b"sunsubscribe" => Push::ShardUnsubscribed {
                    channel: &buf[channel],
                },
                _ => Push::Other,
            },
            Kind::Push([Item::Bulk(kind), _, Item::Int]) => match &buf[kind] {
                b"subscribe" => Push::Subscribed,
                b"unsubscribe" => Push::Unsubscribed,
                _ => Push::Other,
            },
            Kind::Push(_) | Kind::Other => Push::Other,
        })
    }
}

/// Append `args` to `out` as one RESP2 command (an array of bulk strings).
fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.push(b'*');
    out.extend_from_slice(args.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for arg in args {
        out.push(b'$');
        out.extend_from_slice(arg.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// A complete frame at the start of the buffer: its length and what it holds (as ranges of the
/// buffer, so the parse borrows nothing).
struct Frame {
    len: usize,
    kind: Kind,
}

enum Kind {
    /// `-ERR …`: the text.
    Error(Range<usize>),
    /// A three-element array (every push a channel subscriber receives).
    Push([Item; 3]),
    /// Any other well-formed frame.
    Other,
}

enum Item {
    Bulk(Range<usize>),
    Int,
    Other,
}

/// Parse one frame at the start of `buf`; `Ok(None)` when it is not complete yet.
fn parse(buf: &[u8]) -> Result<Option<Frame>, PubSubError> {
    let Some((head, mut pos)) = line(buf, 0)? else {
        return Ok(None);
    };
    let kind = match buf.first() {
        Some(b'-') => Kind::Error(head.start + 1..head.end),
        Some(b'+') | Some(b':') => Kind::Other,
        Some(b'$') => match bulk(buf, head, pos)? {
            Some((_, end)) => {
                pos = end;
                Kind::Other
            }
            None => return Ok(None),
        },
        Some(b'*') => {
            let count = number(&buf[head.start + 1..head.end])?;
            let mut items = [Item::Other, Item::Other, Item::Other];
            for i in 0..count.max(0) {
                let Some((line_range, next)) = line(buf, pos)? else {
                    return Ok(None);
                };
                let item = match buf[line_range.start] {
                    b'$' => match bulk(buf, line_range, next)? {
                        Some((Some(data), end)) => {
                            pos = end;
                            Item::Bulk(data)
                        }
                        Some((None, end)) => {
                            pos = end;
                            Item::Other
                        }
                        None => return Ok(None),
                    },
                    b':' => {
                        pos = next;
                        Item::Int
                    }
                    b'+' | b'-' => {
                        pos = next;
                        Item::Other
                    }
                    _ => return Err(PubSubError::Protocol("nested or unknown array element")),
                };
                if let Some(slot) = items.get_mut(i as usize) {
                    *slot = item;
                }
            }
            if count == 3 {
                Kind::Push(items)
            } else {
                Kind::Other
            }
        }
        _ => return Err(PubSubError::Protocol("unknown frame type")),
    };
    Ok(Some(Frame { len: pos, kind }))
}

/// The line starting at `from` (without its CRLF, type byte included) and the position after
/// it; `Ok(None)` when incomplete.
fn line(buf: &[u8], from: usize) -> Result<Option<(Range<usize>, usize)>, PubSubError> {
    let rest = buf.get(from..).unwrap_or_default();
    let Some(cr) = memchr::memchr(b'\r', rest) else {
        return Ok(None);
    };
    match rest.get(cr + 1) {
        None => Ok(None),
        Some(b'\n') if cr > 0 => Ok(Some((from..from + cr, from + cr + 2))),
        Some(_) => Err(PubSubError::Protocol("malformed line")),
    }
}

/// A bulk string whose `$len` header is `head`, data starting at `data`: the data range (None
/// for a nil bulk) and the position after it; `Ok(None)` when incomplete.
#[allow(clippy::type_complexity)]
fn bulk(
    buf: &[u8],
    head: Range<usize>,
    data: usize,
) -> Result<Option<(Option<Range<usize>>, usize)>, PubSubError> {
    let len = number(&buf[head.start + 1..head.end])?;
    if len < 0 {
        return Ok(Some((None, data)));
    }
    let len = len as usize;
    if len > MAX_FRAME {
        return Err(PubSubError::Protocol("bulk string larger than 64 MiB"));
    }
    let end = data + len;
    if buf.len() < end + 2 {
        return Ok(None);
    }
    if &buf[end..end + 2] != b"\r\n" {
        return Err(PubSubError::Protocol("bulk string not terminated by CRLF"));
    }
    Ok(Some((Some(data..end), end + 2)))
}

/// A RESP decimal (array count, bulk length): an optional `-`, then 1 to 18 digits.
fn number(text: &[u8]) -> Result<i64, PubSubError> {
    const BAD: PubSubError = PubSubError::Protocol("bad length");
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() || digits.len() > 18 {
        return Err(BAD);
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(BAD);
        }
        // At most 18 digits: cannot overflow an i64.
        n = n * 10 + i64::from(d - b'0');
    }
    Ok(if negative { -n } else { n })
}

#[cfg(test)]
#[path = "pubsub_tests.rs"]
mod tests;
