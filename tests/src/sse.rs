//! The two HTTP transports from a client's side, over raw HTTP/1.1 so tests see what a proxy in
//! between passes on: [`SseStream`], a minimal Server-Sent Events reader (`GET /sse`, chunked or
//! until EOF), and [`poll`], one long-poll request (`GET /poll`).

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http::{self, HttpResponse};
use crate::resume::SeqCheck;
use crate::token;

/// `/sse?access_token=<jwt for user>`, with `&since=<id>` when given.
pub fn sse_path(user: u64, since: Option<&str>) -> String {
    let since = since.map(|s| format!("&since={s}")).unwrap_or_default();
    format!("/sse?access_token={}{since}", token(user))
}

/// One dispatched SSE event (comments and `retry:` lines are not events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field; `message` when the event has none.
    pub event: String,
    /// The `id:` field of this event, if it had one.
    pub id: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// An open `text/event-stream` response.
pub struct SseStream {
    stream: TcpStream,
    /// Status and headers of the response (its body is read by [`SseStream::next_event`]).
    pub head: HttpResponse,
    /// The last `retry:` value seen (ms).
    pub retry: Option<u64>,
    /// Comment lines seen so far (`: ping` heartbeats).
    pub comments: usize,
    chunked: bool,
    /// Body bytes received, not yet decoded (chunked transfer coding).
    raw: Vec<u8>,
    /// Decoded body bytes not yet parsed into lines.
    body: Vec<u8>,
    /// The event being received: `event`, `id` and `data` fields so far.
    pending: (Option<String>, Option<String>, Option<String>),
    ended: bool,
}

impl SseStream {
    /// `GET path` on `addr` with `headers` (e.g. `Last-Event-ID`); fails unless the answer is
    /// 200 `text/event-stream` (the error says what came instead).
    pub async fn connect(addr: &str, path: &str, headers: &[(&str, &str)]) -> Result<SseStream> {
        tokio::time::timeout(Duration::from_secs(10), Self::open(addr, path, headers))
            .await
            .with_context(|| format!("GET {path:.40}… on {addr} timed out"))?
    }

    /// [`SseStream::connect`] on a socket with a receive buffer of `rcvbuf` bytes (set before
    /// connecting, which turns off receive autotuning): a client that stops reading fills it
    /// quickly.
    pub async fn connect_with_rcvbuf(
        addr: &str,
        path: &str,
        headers: &[(&str, &str)],
        rcvbuf: u32,
    ) -> Result<SseStream> {
        let stream = http::connect_with_rcvbuf(addr, rcvbuf).await?;
        tokio::time::timeout(
            Duration::from_secs(10),
            Self::request(stream, addr, path, headers),
        )
        .await
        .with_context(|| format!("GET {path:.40}… on {addr} timed out"))?
    }

    async fn open(addr: &str, path: &str, headers: &[(&str, &str)]) -> Result<SseStream> {
        let stream = TcpStream::connect(addr).await?;
        Self::request(stream, addr, path, headers).await
    }

    async fn request(
        mut stream: TcpStream,
        addr: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<SseStream> {
        let mut head =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await?;
        let (response, rest) = http::read_head(&mut stream).await?;
        if response.status != 200 {
            bail!(
                "GET /sse answered {} {}",
                response.status,
                String::from_utf8_lossy(&rest)
            );
        }
        ensure!(
            response.header("content-type") == Some("text/event-stream"),
            "GET /sse answered content-type {:?}",
            response.header("content-type")
        );
        let chunked = response
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        Ok(SseStream {
            stream,
            head: response,
            retry: None,
            comments: 0,
            chunked,
            raw: rest,
            body: Vec::new(),
            pending: Default::default(),
            ended: false,
        })
    }

    /// The client's end of the connection.
    pub fn local_addr(&self) -> Result<std::net::SocketAddr> {
        Ok(self.stream.local_addr()?)
    }

    /// The next event, waiting at most `limit`; `None` once the stream ended. Cancel-safe (e.g.
    /// in `tokio::select!`): a partly received event is kept for the next call.
    pub async fn next_event(&mut self, limit: Duration) -> Result<Option<SseEvent>> {
        let deadline = Instant::now() + limit;
        loop {
            let Some(line) = self.next_line(deadline).await? else {
                return Ok(None);
            };
            let pending = &mut self.pending;
            if line.is_empty() {
                let (event, id, data) = std::mem::take(pending);
                if let Some(data) = data {
                    let event = event.unwrap_or_else(|| "message".into());
                    return Ok(Some(SseEvent { event, id, data }));
                }
                continue;
            }
            if line.starts_with(':') {
                self.comments += 1;
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((&line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
            match field {
                "event" => pending.0 = Some(value),
                "id" => pending.1 = Some(value),
                "retry" => self.retry = value.parse().ok(),
                "data" => match &mut pending.2 {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(&value);
                    }
                    None => pending.2 = Some(value),
                },
                _ => {}
            }
        }
    }

    /// The next line of the body (without its line break); `None` at the end of the stream.
    async fn next_line(&mut self, deadline: Instant) -> Result<Option<String>> {
        loop {
            if let Some(pos) = self.body.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.body.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Some(
                    String::from_utf8(line).context("SSE line is not UTF-8")?,
                ));
            }
            if self.ended {
                return Ok(None);
            }
            self.decode()?;
            if self.ended || self.body.contains(&b'\n') {
                continue;
            }
            let mut chunk = [0u8; 8192];
            let left = deadline.saturating_duration_since(Instant::now());
            let n = tokio::time::timeout(left, self.stream.read(&mut chunk))
                .await
                .context("no SSE event arrived in time")??;
            if n == 0 {
                // The connection ended: without chunked coding that is the end of the body.
                ensure!(!self.chunked, "connection closed inside a chunked SSE body");
                self.ended = true;
            }
            self.raw.extend_from_slice(&chunk[..n]);
        }
    }

    /// Move what `raw` holds of the body to `body` (undoing chunked coding).
    fn decode(&mut self) -> Result<()> {
        if !self.chunked {
            self.body.append(&mut self.raw);
            return Ok(());
        }
        while let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") {
            let size_line = String::from_utf8_lossy(&self.raw[..line_end]).into_owned();
            let hex = size_line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(hex, 16)
                .with_context(|| format!("bad chunk size line {size_line:?}"))?;
            if size == 0 {
                self.ended = true;
                self.raw.clear();
                return Ok(());
            }
            let start = line_end + 2;
            if self.raw.len() < start + size + 2 {
                return Ok(());
            }
            self.body.extend_from_slice(&self.raw[start..start + size]);
            self.raw.drain(..start + size + 2);
        }
        Ok(())
    }
}

/// One long-poll as `user`: `GET /poll?access_token=…&timeout=<timeout>` (plus `&since=<id>`)
/// on `addr`; the whole response. `timeout` must stay under the 10 s bound of [`http::request`].
pub async fn poll(
    addr: &str,
    user: u64,
    since: Option<&str>,
    timeout: &str,
) -> Result<HttpResponse> {
    http::request(addr, "GET", &poll_path(user, since, timeout), &[], b"").await
}

/// `/poll?access_token=…&timeout=<timeout>` (plus `&since=<id>`) for `user`.
pub fn poll_path(user: u64, since: Option<&str>, timeout: &str) -> String {
    let since = since.map(|s| format!("&since={s}")).unwrap_or_default();
    format!(
        "/poll?access_token={}&timeout={timeout}{since}",
        token(user)
    )
}

/// The events of a 200 `/poll` answer, each accepted by `check`; returns the `close` code, if any.
pub fn accept_poll(res: &HttpResponse, check: &mut SeqCheck) -> Result<Option<u64>> {
    ensure!(
        res.status == 200,
        "{}: /poll answered {} {}",
        check.name,
        res.status,
        res.body_text()
    );
    let body = res.json()?;
    let events = body["events"]
        .as_array()
        .with_context(|| format!("{}: no events in {body}", check.name))?;
    for event in events {
        check.accept(&event.to_string())?;
    }
    Ok(body["close"]["code"].as_u64())
}
