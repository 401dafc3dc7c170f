//! Pipelined Redis publishing over one connection, hand-encoded RESP (no per-command
//! allocation): every tick's batch is written with a single `write`, and a reader task counts
//! the replies.
//!
//! Two command shapes: raw `PUBLISH <prefix><uid> <json>` (`--publish redis`, no history), and
//! `EVALSHA` of [`gleepost_event::history::PUBLISH_SCRIPT`] (`--publish redis-history`), which
//! appends the event to the user's history stream and publishes it with an `id` to the user's
//! gateway channel `gp:user:{<uid>}` (`--channel-prefix` does not apply), as the publish API
//! and the Rust `Publisher` do. The script is loaded with `SCRIPT LOAD` before the first
//! event, so `EVALSHA` never meets `NOSCRIPT` unless the script cache is flushed mid-run (then
//! the replies are counted as publish errors).

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use gleepost_event::history::{new_epoch, HistoryConfig, PUBLISH_SCRIPT};
use gleepost_event::keys::{epoch_key, history_key};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::{push_u64, Acks, EventSpec};
use crate::cli::{PublishArgs, PublishVia};
use crate::stats::now_ns;
use crate::target;

/// What `EVALSHA` needs besides the event: the script's SHA1, per-user keys (built once, so
/// publishing does not allocate) and the constant arguments.
struct HistoryScript {
    sha: Vec<u8>,
    /// `(history_key, epoch_key)` per user index.
    keys: Vec<(Vec<u8>, Vec<u8>)>,
    /// Per user index: whether its TTLs were set by this run (like `Publisher`, which
    /// refreshes them once per refresh interval, not on every event).
    refreshed: Vec<bool>,
    maxlen: Vec<u8>,
    /// The keys' TTL in milliseconds.
    ttl: Vec<u8>,
    epoch: Vec<u8>,
}

/// Redis publishing backend.
/// `gleepost_event::keys::user_channel` without its allocation: prefix, id, `}`.
const USER_CHANNEL_PREFIX: &[u8] = b"gp:user:{";

pub(crate) struct RedisPublisher {
    writer: OwnedWriteHalf,
    spec: EventSpec,
    prefix: Vec<u8>,
    first_user: u64,
    acks: Arc<Acks>,
    history: Option<HistoryScript>,
    buf: Vec<u8>,
    json: Vec<u8>,
    channel: Vec<u8>,
}

impl RedisPublisher {
    /// Connects (and authenticates if the URL carries a password); with `redis-history` also
    /// loads the publish script.
    pub(crate) async fn connect(
        args: &PublishArgs,
        spec: EventSpec,
        first_user: u64,
        users: u32,
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
        let history = if args.publish == PublishVia::RedisHistory {
            let sha = load_script(&mut read, &mut writer, PUBLISH_SCRIPT).await?;
            let keys: Vec<_> = (0..u64::from(users.max(1)))
                .map(|i| {
                    let user = first_user + i;
                    (history_key(user).into_bytes(), epoch_key(user).into_bytes())
                })
                .collect();
            let mut maxlen = Vec::new();
            push_u64(&mut maxlen, args.history_maxlen);
            let history = HistoryConfig {
                size: usize::try_from(args.history_maxlen).unwrap_or(usize::MAX),
                ttl: args.history_ttl,
            };
            let mut ttl = Vec::new();
            push_u64(
                &mut ttl,
                u64::try_from(history.key_ttl().as_millis()).unwrap_or(u64::MAX),
            );
            Some(HistoryScript {
                sha,
                refreshed: vec![false; keys.len()],
                keys,
                maxlen,
                ttl,
                epoch: new_epoch().into_bytes(),
            })
        } else {
            None
        };
        tokio::spawn(count_replies(read, acks.clone()));
        Ok(RedisPublisher {
            writer,
            spec,
            prefix: args.channel_prefix.as_bytes().to_vec(),
            first_user,
            acks,
            history,
            buf: Vec::with_capacity(64 * 1024),
            json: Vec::with_capacity(1024),
            channel: Vec::with_capacity(64),
        })
    }

    /// Sends one pipelined batch of `PUBLISH` (or `EVALSHA`) commands.
    pub(crate) async fn send(&mut self, batch: &[(u32, u64)]) -> Result<()> {
        self.buf.clear();
        let t = now_ns();
        for &(ui, seq) in batch {
            let user = self.first_user + u64::from(ui);
            self.json.clear();
            self.spec.write_event(&mut self.json, seq, t, user);
            self.channel.clear();
            if self.history.is_some() {
                // The gateway's own channel: only there are the script's ids trusted.
                self.channel.extend_from_slice(USER_CHANNEL_PREFIX);
                push_u64(&mut self.channel, user);
                self.channel.push(b'}');
            } else {
                self.channel.extend_from_slice(&self.prefix);
                push_u64(&mut self.channel, user);
            }
            match &mut self.history {
                None => encode_command(&mut self.buf, &[b"PUBLISH", &self.channel, &self.json]),
                Some(h) => {
                    let (stream, epoch_key) = &h.keys[ui as usize];
                    let refresh = !std::mem::replace(&mut h.refreshed[ui as usize], true);
                    // One user per call, as a lone publish sends it (the layout is the
                    // script's: keys, constants, payloads, then channel, payload, refresh).
                    encode_command(
                        &mut self.buf,
                        &[
                            b"EVALSHA",
                            &h.sha,
                            b"2",
                            stream,
                            epoch_key,
                            &h.maxlen,
                            &h.ttl,
                            &h.epoch,
                            b"PUBLISH",
                            b"1",
                            &self.json,
                            &self.channel,
                            b"1",
                            if refresh { b"1" } else { b"0" },
                        ],
                    )
                }
            }
            self.acks.accepted(ui);
        }
        self.writer
            .write_all(&self.buf)
            .await
            .context("writing to Redis")
    }
}

/// `SCRIPT LOAD`s `script` and returns its SHA1 (hex) from the bulk reply.
async fn load_script(
    read: &mut BufReader<OwnedReadHalf>,
    writer: &mut OwnedWriteHalf,
    script: &str,
) -> Result<Vec<u8>> {
    let mut cmd = Vec::new();
    encode_command(&mut cmd, &[b"SCRIPT", b"LOAD", script.as_bytes()]);
    writer.write_all(&cmd).await?;
    let mut header = String::new();
    read.read_line(&mut header).await?;
    let len: usize = match header.strip_prefix('$') {
        Some(n) => n.trim_end().parse().context("SCRIPT LOAD reply length")?,
        None => bail!("Redis SCRIPT LOAD failed: {}", header.trim_end()),
    };
    let mut sha = vec![0u8; len + 2];
    read.read_exact(&mut sha).await?;
    sha.truncate(len);
    if len != 40 || !sha.iter().all(u8::is_ascii_hexdigit) {
        bail!(
            "unexpected SCRIPT LOAD reply {:?}",
            String::from_utf8_lossy(&sha)
        );
    }
    Ok(sha)
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

/// Counts replies (`:n` or an array = ok, `-ERR …` = error) until the connection closes.
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

/// Incremental counter of complete top-level RESP replies: simple strings, integers and
/// errors, bulk strings (skipped by length) and arrays of those, nested. A top-level error
/// counts as an error; anything else (including an array holding an error) as ok.
#[derive(Debug, Default)]
pub(crate) struct ReplyCounter {
    /// Header line read so far (type byte and length; never the body of a bulk string).
    line: Vec<u8>,
    /// Bytes of a bulk string body (plus its CRLF) still to skip.
    skip: usize,
    /// Elements still expected by each open array, outermost first.
    open: Vec<u64>,
    last_error: String,
}

impl ReplyCounter {
    /// Consumes bytes; returns (ok replies, error replies) completed in them.
    pub(crate) fn feed(&mut self, mut data: &[u8]) -> (u64, u64) {
        let (mut ok, mut errors) = (0, 0);
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                if self.skip == 0 {
                    self.element_done(false, &mut ok, &mut errors);
                }
                continue;
            }
            let end = memchr::memchr(b'\n', data);
            let part = &data[..end.unwrap_or(data.len())];
            // Keep the type byte, lengths and the start of an error message; a long simple
            // string or error line is consumed without growing the buffer.
            let room = 256usize.saturating_sub(self.line.len());
            self.line.extend_from_slice(&part[..part.len().min(room)]);
            let Some(i) = end else { break };
            data = &data[i + 1..];
            self.header_done(&mut ok, &mut errors);
            self.line.clear();
        }
        (ok, errors)
    }

    fn header_done(&mut self, ok: &mut u64, errors: &mut u64) {
        let line = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
        let Some((&kind, rest)) = line.split_first() else {
            return;
        };
        let len = || -> i64 {
            std::str::from_utf8(rest)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(-1)
        };
        match kind {
            b'$' | b'=' | b'!' => match usize::try_from(len()) {
                Ok(n) => self.skip = n + 2,
                Err(_) => self.element_done(false, ok, errors),
            },
            b'*' | b'~' | b'>' | b'%' => {
                let n = len();
                let n = if kind == b'%' { n.saturating_mul(2) } else { n };
                match u64::try_from(n) {
                    Ok(n) if n > 0 => self.open.push(n),
                    _ => self.element_done(false, ok, errors),
                }
            }
            b'-' => {
                if self.open.is_empty() {
                    self.last_error = String::from_utf8_lossy(line).into_owned();
                }
                self.element_done(true, ok, errors);
            }
            _ => self.element_done(false, ok, errors),
        }
    }

    /// One element finished: closes the arrays it completes and counts a finished top-level
    /// reply.
    fn element_done(&mut self, is_error: bool, ok: &mut u64, errors: &mut u64) {
        let mut top_level_error = is_error;
        loop {
            let Some(left) = self.open.last_mut() else {
                if top_level_error {
                    *errors += 1;
                } else {
                    *ok += 1;
                }
                return;
            };
            *left -= 1;
            if *left > 0 {
                return;
            }
            self.open.pop();
            top_level_error = false;
        }
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

    #[test]
    fn script_replies_are_counted_whole() {
        // EVALSHA of the publish script answers {epoch, stream id, receivers}; NOSCRIPT is
        // an error.
        let replies: &[u8] = b"*3\r\n$3\r\nabc\r\n$15\r\n1700000000000-0\r\n:2\r\n\
            -NOSCRIPT No matching script.\r\n\
            *2\r\n$5\r\na\r\nb\n\r\n:0\r\n\
            *0\r\n$-1\r\n*3\r\n*1\r\n:1\r\n-ERR inner\r\n+OK\r\n";
        let mut whole = ReplyCounter::default();
        assert_eq!(whole.feed(replies), (5, 1));
        assert_eq!(whole.last_error, "-NOSCRIPT No matching script.");
        // Byte by byte: same counts, whatever the split.
        let mut c = ReplyCounter::default();
        let (mut ok, mut err) = (0, 0);
        for b in replies.chunks(1) {
            let (o, e) = c.feed(b);
            ok += o;
            err += e;
        }
        assert_eq!((ok, err), (5, 1));
        assert!(c.open.is_empty() && c.skip == 0 && c.line.is_empty());
    }
}
