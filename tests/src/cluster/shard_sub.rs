//! A raw RESP2 `SSUBSCRIBE` connection to one node: what a sharded pub/sub client sees on the
//! wire, including the unsolicited `sunsubscribe` a node pushes when it loses the slot.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::ClusterNode;

/// A push received by a [`ShardSubscriber`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardPush {
    /// `smessage`: a message published to a subscribed shard channel.
    Message {
        /// The shard channel.
        channel: String,
        /// The payload, as published.
        payload: Vec<u8>,
    },
    /// `sunsubscribe`: the subscription ended (asked for, or pushed by the node because the
    /// channel's slot moved away from it or it stopped being a primary).
    Unsubscribed {
        /// The shard channel.
        channel: String,
        /// Subscriptions left on the connection.
        remaining: i64,
    },
}

/// A raw TCP connection in sharded pub/sub mode (no redirection is followed: subscribing to a
/// channel the node does not own is an error, e.g. `MOVED`).
pub struct ShardSubscriber {
    stream: TcpStream,
    /// Bytes read and not parsed yet.
    buffer: Vec<u8>,
}

/// One RESP2 reply element.
enum Item {
    Bulk(Vec<u8>),
    Int(i64),
}

impl ShardSubscriber {
    /// `SSUBSCRIBE channels…` on `node` (all channels in one slot, as Redis requires);
    /// returns once every subscription is confirmed.
    pub async fn connect(node: &ClusterNode, channels: &[&str]) -> Result<ShardSubscriber> {
        let stream = TcpStream::connect(("127.0.0.1", node.port()))
            .await
            .with_context(|| format!("connecting to node :{}", node.port()))?;
        let mut subscriber = ShardSubscriber {
            stream,
            buffer: Vec::new(),
        };
        let mut request = format!("*{}\r\n$10\r\nSSUBSCRIBE\r\n", channels.len() + 1).into_bytes();
        for channel in channels {
            request.extend_from_slice(format!("${}\r\n{channel}\r\n", channel.len()).as_bytes());
        }
        subscriber.stream.write_all(&request).await?;
        for channel in channels {
            let frame = subscriber
                .frame(Duration::from_secs(5))
                .await
                .with_context(|| format!("SSUBSCRIBE {channel} on node :{}", node.port()))?;
            match frame.as_slice() {
                [Item::Bulk(kind), Item::Bulk(name), Item::Int(_)]
                    if kind == b"ssubscribe" && name == channel.as_bytes() => {}
                _ => bail!("unexpected reply to SSUBSCRIBE {channel}"),
            }
        }
        Ok(subscriber)
    }

    /// The next push, waiting at most `limit`.
    pub async fn next(&mut self, limit: Duration) -> Result<ShardPush> {
        let frame = self.frame(limit).await?;
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        match frame.as_slice() {
            [Item::Bulk(kind), Item::Bulk(channel), Item::Bulk(payload)] if kind == b"smessage" => {
                Ok(ShardPush::Message {
                    channel: text(channel),
                    payload: payload.clone(),
                })
            }
            [Item::Bulk(kind), Item::Bulk(channel), Item::Int(remaining)]
                if kind == b"sunsubscribe" =>
            {
                Ok(ShardPush::Unsubscribed {
                    channel: text(channel),
                    remaining: *remaining,
                })
            }
            _ => bail!("unexpected push of {} elements", frame.len()),
        }
    }

    /// One top-level RESP2 array (pushes are arrays of bulk strings and integers). Cancel-safe:
    /// bytes read stay in the buffer, so a timeout loses nothing.
    async fn frame(&mut self, limit: Duration) -> Result<Vec<Item>> {
        tokio::time::timeout(limit, async {
            loop {
                if let Some((items, used)) = parse_frame(&self.buffer)? {
                    self.buffer.drain(..used);
                    return Ok(items);
                }
                let n = self.stream.read_buf(&mut self.buffer).await?;
                ensure!(n > 0, "connection closed by the node");
            }
        })
        .await
        .with_context(|| format!("no push within {limit:?}"))?
    }
}

/// A complete top-level array at the start of `bytes` and its length, or `None` when more
/// bytes are needed.
fn parse_frame(bytes: &[u8]) -> Result<Option<(Vec<Item>, usize)>> {
    let mut at = 0;
    let Some(header) = line(bytes, &mut at) else {
        return Ok(None);
    };
    let Some(count) = header.strip_prefix('*') else {
        bail!("reply: {header}");
    };
    let count: usize = count.parse().context("array length")?;
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        let Some(element) = line(bytes, &mut at) else {
            return Ok(None);
        };
        if let Some(int) = element.strip_prefix(':') {
            items.push(Item::Int(int.parse().context("integer")?));
        } else if let Some(len) = element.strip_prefix('$') {
            let len: usize = len.parse().context("bulk length")?;
            let Some(bulk) = bytes.get(at..at + len + 2) else {
                return Ok(None);
            };
            ensure!(bulk.ends_with(b"\r\n"), "bulk string not terminated");
            items.push(Item::Bulk(bulk[..len].to_vec()));
            at += len + 2;
        } else {
            bail!("unexpected element {element:?}");
        }
    }
    Ok(Some((items, at)))
}

/// The `\r\n`-terminated line at `*at` (without the terminator), advancing `*at` past it.
fn line(bytes: &[u8], at: &mut usize) -> Option<String> {
    let rest = bytes.get(*at..)?;
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    *at += end + 2;
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pushes_only_when_complete() -> Result<()> {
        let push = b"*3\r\n$12\r\nsunsubscribe\r\n$4\r\na{b}\r\n:0\r\n";
        for cut in 0..push.len() {
            assert!(parse_frame(&push[..cut])?.is_none(), "cut at {cut}");
        }
        let (items, used) = parse_frame(push)?.context("complete")?;
        assert_eq!(used, push.len());
        assert!(
            matches!(items.as_slice(), [Item::Bulk(k), Item::Bulk(c), Item::Int(0)]
            if k == b"sunsubscribe" && c == b"a{b}")
        );
        assert!(parse_frame(b"-MOVED 1 127.0.0.1:1\r\n").is_err());
        Ok(())
    }
}
