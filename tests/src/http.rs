//! A minimal HTTP/1.1 client for tests (one request per connection), so tests see exactly what
//! the gateway sends, including on the WebSocket endpoint.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response: status, headers (lower-cased names) and body.
#[derive(Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
    /// The body (`Content-Length` bytes).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("body is not JSON: {}", self.body_text()))
    }

    /// An error answer: `status` with a JSON `{"error": …}` body; `what` starts the error.
    pub fn ensure_error(&self, what: &str, status: u16) -> Result<()> {
        ensure!(
            self.status == status,
            "{what}: status {} (want {status}), body {}",
            self.status,
            self.body_text()
        );
        let body = self.json()?;
        ensure!(body["error"].is_string(), "{what}: body {body}");
        Ok(())
    }

    /// The body as JSON of an answer that must be 200; `what` (the request) starts the error.
    pub fn ok_json(&self, what: &str) -> Result<serde_json::Value> {
        ensure!(
            self.status == 200,
            "{what}: {} {}",
            self.status,
            self.body_text()
        );
        self.json().context(what.to_string())
    }
}

/// Send one request to `addr` (`host:port`) and read the response head and its
/// `Content-Length` body.
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpResponse> {
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut stream = TcpStream::connect(addr).await?;
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        read_response(&mut stream).await
    })
    .await
    .context("HTTP request timed out")?
}

/// A connection to `addr` on a socket with a receive buffer of `rcvbuf` bytes (set before
/// connecting, which turns off receive autotuning): a client that stops reading fills it
/// quickly.
pub async fn connect_with_rcvbuf(addr: &str, rcvbuf: u32) -> Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(rcvbuf)?;
    tokio::time::timeout(Duration::from_secs(10), socket.connect(addr.parse()?))
        .await
        .with_context(|| format!("connecting to {addr} timed out"))?
        .map_err(Into::into)
}

/// Send `raw` exactly as given (a request written by hand, e.g. an HTTP/1.0 request line) and
/// read the response.
pub async fn exchange(addr: &str, raw: &[u8]) -> Result<HttpResponse> {
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(raw).await?;
        read_response(&mut stream).await
    })
    .await
    .context("HTTP request timed out")?
}

/// Read from `stream` until the peer closes it (EOF or reset), at most `limit`; returns what
/// arrived before. Fails if the connection is still open after `limit`.
pub async fn closed_within<S: AsyncRead + Unpin>(
    stream: &mut S,
    limit: Duration,
) -> Result<Vec<u8>> {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .context("the server did not close the connection in time")?;
    Ok(received)
}

/// Read one response (head and its `Content-Length` or chunked body) from `stream`.
pub async fn read_response(stream: &mut TcpStream) -> Result<HttpResponse> {
    let (mut response, mut body) = read_head(stream).await?;
    if response
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        response.body = read_chunked(stream, body).await?;
        return Ok(response);
    }
    let length: usize = response
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut chunk = [0u8; 4096];
    while body.len() < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    response.body = body;
    Ok(response)
}

/// A chunked body from `stream`, `raw` being what arrived with the head: the chunks' data up
/// to the last (empty) chunk.
async fn read_chunked(stream: &mut TcpStream, mut raw: Vec<u8>) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&raw[..eol]).into_owned();
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .with_context(|| format!("bad chunk size line {line:?}"))?;
            if raw.len() >= eol + 2 + size + 2 {
                if size == 0 {
                    return Ok(body);
                }
                body.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
                raw.drain(..eol + 2 + size + 2);
                continue;
            }
        }
        let n = stream.read(&mut chunk).await?;
        ensure!(n > 0, "connection closed inside a chunked body");
        raw.extend_from_slice(&chunk[..n]);
    }
}

/// Read a response head from `stream`; returns it (with an empty body) and the bytes that
/// arrived after it (the start of the body, or of the first WebSocket frames).
pub async fn read_head(stream: &mut TcpStream) -> Result<(HttpResponse, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        let n = stream.read(&mut chunk).await?;
        ensure!(n > 0, "connection closed before the response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let rest = buf.split_off(end + 4);
    buf.truncate(end);
    Ok((parse_head(&String::from_utf8_lossy(&buf))?, rest))
}

/// A response head (status line and headers, without the blank line) as a response with an
/// empty body.
pub fn parse_head(head: &str) -> Result<HttpResponse> {
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: Vec::new(),
    })
}

/// The `Sec-WebSocket-Key` of the RFC 6455 example (the base64 of 16 bytes).
pub const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Attempt a WebSocket upgrade of `path` with extra headers; returns the raw response (for
/// checking that failures are answered before any upgrade).
pub async fn upgrade_attempt(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<HttpResponse> {
    let head = upgrade_head(addr, path, "HTTP/1.1", Some(WS_KEY), headers);
    exchange(addr, head.as_bytes()).await
}

/// The head of a WebSocket upgrade request of `path` as [`upgrade_attempt`] sends it, with the
/// protocol of the request line (`"HTTP/1.1"`) and the `Sec-WebSocket-Key` (`None`: no such
/// header) chosen, for requests a WebSocket library would refuse to send.
pub fn upgrade_head(
    addr: &str,
    path: &str,
    version: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
) -> String {
    let mut head = format!(
        "GET {path} {version}\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\n"
    );
    if let Some(key) = key {
        head.push_str(&format!("Sec-WebSocket-Key: {key}\r\n"));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// The next answer sent on `rx` by spawned requests, bounded by `limit`.
pub async fn next_answer(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Result<HttpResponse>>,
    limit: Duration,
) -> Result<HttpResponse> {
    tokio::time::timeout(limit, rx.recv())
        .await
        .context("no answer in time")?
        .context("the requests' senders are gone")?
}
