//! The one Redis connection, raw RESP2: a writer sends the hub's `SUBSCRIBE` / `UNSUBSCRIBE`
//! commands (everything pending in one write), a reader parses the pushed replies in place and
//! hands each `message` payload, without copying it, to the hub.

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::hub::{Command, Hub};

/// Connects to `url` (`redis://host[:port]`) and returns a future that runs the connection
/// until it fails (it never ends otherwise).
pub(crate) async fn connect(
    url: &str,
    commands: mpsc::UnboundedReceiver<Command>,
    hub: Arc<Hub>,
) -> Result<impl Future<Output = Result<()>>> {
    let Some(rest) = url.strip_prefix("redis://") else {
        bail!("--redis-url must be redis://host[:port], got {url:?}");
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    if authority.contains('@') {
        bail!("--redis-url: no password support (a benchmark baseline)");
    }
    let addr = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:6379")
    };
    let stream = TcpStream::connect(&addr)
        .await
        .with_context(|| format!("connecting to Redis at {addr}"))?;
    stream.set_nodelay(true)?;
    let (read, write) = stream.into_split();
    Ok(async move {
        tokio::select! {
            r = write_commands(write, commands) => r,
            r = read_messages(read, hub) => r,
        }
    })
}

async fn write_commands(
    mut write: OwnedWriteHalf,
    mut commands: mpsc::UnboundedReceiver<Command>,
) -> Result<()> {
    let mut buf = Vec::with_capacity(4096);
    while let Some(first) = commands.recv().await {
        buf.clear();
        encode(&mut buf, &first);
        while let Ok(next) = commands.try_recv() {
            encode(&mut buf, &next);
        }
        write.write_all(&buf).await.context("writing to Redis")?;
    }
    Ok(())
}

fn encode(out: &mut Vec<u8>, command: &Command) {
    let (verb, channel) = match command {
        Command::Subscribe(c) => ("SUBSCRIBE", c),
        Command::Unsubscribe(c) => ("UNSUBSCRIBE", c),
    };
    out.extend_from_slice(
        format!("*2\r\n${}\r\n{verb}\r\n${}\r\n", verb.len(), channel.len()).as_bytes(),
    );
    out.extend_from_slice(channel.as_bytes());
    out.extend_from_slice(b"\r\n");
}

async fn read_messages(mut read: OwnedReadHalf, hub: Arc<Hub>) -> Result<()> {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        while let Some((len, frame)) = parse(&buf)? {
            let bytes = buf.split_to(len).freeze();
            if let Frame::Message { channel, payload } = frame {
                let Some(user) = hub.user_of_channel(&bytes[channel]) else {
                    continue;
                };
                // Text frames must be UTF-8; anything else cannot be forwarded verbatim.
                if let Ok(text) = Utf8Bytes::try_from(bytes.slice(payload)) {
                    hub.deliver(user, &text);
                }
            }
        }
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        if read
            .read_buf(&mut buf)
            .await
            .context("reading from Redis")?
            == 0
        {
            bail!("Redis closed the connection");
        }
    }
}

/// A complete reply at the start of the buffer.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    /// `message <channel> <payload>` (byte ranges in the reply).
    Message {
        channel: Range<usize>,
        payload: Range<usize>,
    },
    /// Anything else (subscribe confirmations and the like).
    Other,
}

/// Parses one RESP2 reply at the start of `buf`: its length and what it is, `None` when it is
/// not complete yet. Errors (`-…`) and malformed input fail the connection.
fn parse(buf: &[u8]) -> Result<Option<(usize, Frame)>> {
    let Some((head, mut at)) = line(buf, 0) else {
        return Ok(None);
    };
    match head.first() {
        Some(b'*') => {}
        Some(b'-') => bail!("Redis replied {}", String::from_utf8_lossy(head)),
        Some(b'+' | b':') => return Ok(Some((at, Frame::Other))),
        _ => bail!(
            "unexpected RESP from Redis: {:?}",
            String::from_utf8_lossy(head)
        ),
    }
    let n = number(&head[1..])?;
    // Pushed replies have 3 or 4 elements; keep the first three's ranges.
    let mut ranges: [Range<usize>; 3] = [0..0, 0..0, 0..0];
    for i in 0..usize::try_from(n).unwrap_or(0) {
        let Some((h, next)) = line(buf, at) else {
            return Ok(None);
        };
        let range = match h.first() {
            Some(b'$') => {
                let Ok(len) = usize::try_from(number(&h[1..])?) else {
                    at = next; // nil
                    continue;
                };
                if buf.len() < next + len + 2 {
                    return Ok(None);
                }
                at = next + len + 2;
                next..next + len
            }
            Some(b':' | b'+') => {
                at = next;
                let start = next - 2 - h.len();
                start + 1..next - 2
            }
            _ => bail!(
                "unexpected RESP element from Redis: {:?}",
                String::from_utf8_lossy(h)
            ),
        };
        if let Some(slot) = ranges.get_mut(i) {
            *slot = range;
        }
    }
    let frame = if n == 3 && &buf[ranges[0].clone()] == b"message" {
        let [_, channel, payload] = ranges;
        Frame::Message { channel, payload }
    } else {
        Frame::Other
    };
    Ok(Some((at, frame)))
}

/// The line starting at `at` (without CRLF) and the index after its CRLF.
fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(at..)?;
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..end], at + end + 2))
}

fn number(digits: &[u8]) -> Result<i64> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad RESP length {:?}", String::from_utf8_lossy(digits)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn message(channel: &str, payload: &str) -> Bytes {
        Bytes::from(format!(
            "*3\r\n$7\r\nmessage\r\n${}\r\n{channel}\r\n${}\r\n{payload}\r\n",
            channel.len(),
            payload.len()
        ))
    }

    #[test]
    fn messages_and_confirmations() {
        let m = message("c:9", "{\"a\":\"\r\n\"}");
        let (len, frame) = parse(&m).unwrap().unwrap();
        assert_eq!(len, m.len());
        let Frame::Message { channel, payload } = frame else {
            panic!("{frame:?}")
        };
        assert_eq!(&m[channel], b"c:9");
        assert_eq!(&m[payload], b"{\"a\":\"\r\n\"}");
        // Every prefix is incomplete, never an error.
        for cut in 0..m.len() {
            assert_eq!(parse(&m[..cut]).unwrap(), None, "cut at {cut}");
        }
        let sub = b"*3\r\n$9\r\nsubscribe\r\n$3\r\nc:9\r\n:1\r\n";
        assert_eq!(parse(sub).unwrap(), Some((sub.len(), Frame::Other)));
        let two = [&sub[..], &m[..]].concat();
        assert_eq!(parse(&two).unwrap().unwrap().0, sub.len());
        assert!(parse(b"-ERR wrong\r\n").is_err());
        let mut cmd = Vec::new();
        encode(&mut cmd, &Command::Subscribe("c:12".into()));
        assert_eq!(cmd, b"*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nc:12\r\n");
    }
}
