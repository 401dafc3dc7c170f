//! Pipelined Redis `PUBLISH` over one connection, hand-encoded RESP (no per-command
//! allocation): every tick's batch is written with a single `write`, and a reader task counts
//! the integer (or error) replies.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::{push_u64, Acks, EventSpec};
use crate::cli::PublishArgs;
use crate::stats::now_ns;
use crate::target;

/// Redis publishing backend.
pub(crate) struct RedisPublisher {
    writer: OwnedWriteHalf,
    spec: EventSpec,
    prefix: Vec<u8>,
    first_user: u64,
    acks: Arc<Acks>,
    buf: Vec<u8>,
    json: Vec<u8>,
    channel: Vec<u8>,
}

impl RedisPublisher {
    /// Connects (and authenticates if the URL carries a password).
    pub(crate) async fn connect(
        args: &PublishArgs,
        spec: EventSpec,
        first_user: u64,
        acks: Arc<Acks>,
    ) -> Result<Self> {
        let t = target::parse(&args.redis_url, "redis", 6379)?;
        let stream = TcpStream::connect(t.addr)
            .await
            .with_context(|| format!("connecting to Redis at {}", t.addr))?;
        stream.set_nodelay(true)?;
        let (read, mut writer) = stream.into_split();
        let mut read = BufReader::new(read);
        if let Some(userinfo) = &t.userinfo {
            let (user, pass) = userinfo.split_once(':').unwrap_or(("", userinfo.as_str()));
            let mut cmd = Vec::new();
            let parts: Vec<&[u8]> = if user.is_empty() {
                vec![b"AUTH", pass.as_bytes()]
            } else {
                vec![b"AUTH", user.as_bytes(), pass.as_bytes()]
            };
            encode_command(&mut cmd, &parts);
            writer.write_all(&cmd).await?;
            let mut line = String::new();
            read.read_line(&mut line).await?;
            if !line.starts_with("+OK") {
                bail!("Redis AUTH failed: {}", line.trim_end());
            }
        }
        tokio::spawn(count_replies(read, acks.clone()));
        Ok(RedisPublisher {
            writer,
            spec,
            prefix: args.channel_prefix.as_bytes().to_vec(),
            first_user,
            acks,
            buf: Vec::with_capacity(64 * 1024),
            json: Vec::with_capacity(1024),
            channel: Vec::with_capacity(64),
        })
    }

    /// Sends one pipelined batch of `PUBLISH` commands.
    pub(crate) async fn send(&mut self, batch: &[(u32, u64)]) -> Result<()> {
        self.buf.clear();
        let t = now_ns();
        for &(ui, seq) in batch {
            let user = self.first_user + u64::from(ui);
            self.json.clear();
            self.spec.write_event(&mut self.json, seq, t, user);
            self.channel.clear();
            self.channel.extend_from_slice(&self.prefix);
            push_u64(&mut self.channel, user);
            encode_command(&mut self.buf, &[b"PUBLISH", &self.channel, &self.json]);
            self.acks.accepted(ui);
        }
        self.writer
            .write_all(&self.buf)
            .await
            .context("writing to Redis")
    }
}

/// Appends a RESP array of bulk strings.
pub(crate) fn encode_command(out: &mut Vec<u8>, parts: &[&[u8]]) {
    out.push(b'*');
    push_u64(out, parts.len() as u64);
    out.extend_from_slice(b"\r\n");
    for p in parts {
        out.push(b'$');
        push_u64(out, p.len() as u64);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(p);
        out.extend_from_slice(b"\r\n");
    }
}

/// Counts single-line replies (`:n` = ok, `-ERR …` = error) until the connection closes.
async fn count_replies(mut read: BufReader<OwnedReadHalf>, acks: Arc<Acks>) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut counter = ReplyCounter::default();
    loop {
        let n = match read.read(&mut buf).await {
            Ok(0) => {
                acks.error(|| "Redis closed the connection".into());
                return;
            }
            Ok(n) => n,
            Err(e) => {
                acks.error(|| format!("reading from Redis: {e}"));
                return;
            }
        };
        let (ok, errors) = counter.feed(&buf[..n]);
        acks.ok(ok);
        for _ in 0..errors {
            let msg = counter.last_error.clone();
            acks.error(|| format!("Redis replied {msg}"));
        }
    }
}

/// Incremental counter of single-line RESP replies.
#[derive(Debug, Default)]
pub(crate) struct ReplyCounter {
    mid_line: bool,
    is_error: bool,
    last_error: String,
}

impl ReplyCounter {
    /// Consumes bytes; returns (ok replies, error replies) completed in them.
    pub(crate) fn feed(&mut self, mut data: &[u8]) -> (u64, u64) {
        let (mut ok, mut errors) = (0, 0);
        while !data.is_empty() {
            if !self.mid_line {
                self.is_error = data[0] == b'-';
                if self.is_error {
                    self.last_error.clear();
                }
                self.mid_line = true;
            }
            let end = memchr::memchr(b'\n', data);
            let line = &data[..end.unwrap_or(data.len())];
            if self.is_error && self.last_error.len() < 200 {
                self.last_error
                    .push_str(String::from_utf8_lossy(line).trim_end_matches('\r'));
            }
            match end {
                Some(i) => {
                    if self.is_error {
                        errors += 1;
                    } else {
                        ok += 1;
                    }
                    self.mid_line = false;
                    data = &data[i + 1..];
                }
                None => break,
            }
        }
        (ok, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_encoding() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"PUBLISH", b"c:9", b"{}"]);
        assert_eq!(out, b"*3\r\n$7\r\nPUBLISH\r\n$3\r\nc:9\r\n$2\r\n{}\r\n");
    }

    #[test]
    fn reply_counting_across_reads() {
        let mut c = ReplyCounter::default();
        assert_eq!(c.feed(b":1\r\n:0\r"), (1, 0));
        assert_eq!(c.feed(b"\n-ERR wr"), (1, 0));
        assert_eq!(c.feed(b"ong type\r\n:2\r\n"), (1, 1));
        assert_eq!(c.last_error, "-ERR wrong type");
    }
}
