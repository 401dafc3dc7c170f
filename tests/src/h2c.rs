//! An HTTP/2 client for the admin port (h2c with prior knowledge), on the `h2` crate so that a
//! test drives streams one by one: headers without a body, resets, flow-control windows.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::SendStream;
use http::{Method, Request};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::credentials::API_KEY;
use crate::http::HttpResponse;

/// Bound on one answer.
const LIMIT: Duration = Duration::from_secs(20);

/// One HTTP/2 connection to a gateway's admin port.
pub struct H2 {
    /// Opens streams (clone it for concurrent requests).
    pub send: SendRequest<Bytes>,
    /// The connection task: ends when the gateway closes the connection (`GOAWAY`, or a drop).
    pub conn: JoinHandle<Result<(), h2::Error>>,
}

impl H2 {
    /// Connect to `addr` (`host:port`) and send the preface and settings.
    pub async fn connect(addr: &str) -> Result<H2> {
        Self::connect_with(addr, &h2::client::Builder::new()).await
    }

    /// [`H2::connect`] with the client's own settings (`builder`), e.g. a zero window: a client
    /// that reads no answer.
    pub async fn connect_with(addr: &str, builder: &h2::client::Builder) -> Result<H2> {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let (send, conn) = builder.handshake(tcp).await.context("HTTP/2 handshake")?;
        Ok(H2 {
            send,
            conn: tokio::spawn(conn),
        })
    }

    /// Open a stream with `req`'s head; the body follows on the returned [`SendStream`].
    pub async fn open(
        &self,
        req: Request<()>,
        end_of_stream: bool,
    ) -> Result<(ResponseFuture, SendStream<Bytes>)> {
        let mut send = self.send.clone().ready().await.context("stream capacity")?;
        send.send_request(req, end_of_stream)
            .context("sending request headers")
    }

    /// One complete request: `body` sent at once (none for `GET`), the answer read.
    pub async fn request(&self, req: Request<()>, body: &[u8]) -> Result<HttpResponse> {
        let (response, mut stream) = self.open(req, body.is_empty()).await?;
        if !body.is_empty() {
            stream
                .send_data(Bytes::copy_from_slice(body), true)
                .context("sending the body")?;
        }
        answer(response).await
    }

    /// `POST /v1/publish` of `body` with the test API key.
    pub async fn publish(&self, body: &str) -> Result<HttpResponse> {
        let req = post("/v1/publish", Some(API_KEY), Some(body.len()));
        self.request(req, body.as_bytes()).await
    }
}

/// A `GET` of `path`.
pub fn get(path: &str) -> Request<()> {
    request(Method::GET, path, None, None)
}

/// A `POST` of `path` with an optional bearer `key` and declared `length`.
pub fn post(path: &str, key: Option<&str>, length: Option<usize>) -> Request<()> {
    request(Method::POST, path, key, length)
}

fn request(method: Method, path: &str, key: Option<&str>, length: Option<usize>) -> Request<()> {
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://gateway{path}"));
    if let Some(key) = key {
        builder = builder.header("authorization", format!("Bearer {key}"));
    }
    if let Some(length) = length {
        builder = builder
            .header("content-type", "application/json")
            .header("content-length", length);
    }
    // Method, URI and header values above are all valid.
    builder.body(()).expect("valid request head")
}

/// The answer to a stream: status, headers and the whole body, bounded by 20 s.
pub async fn answer(response: ResponseFuture) -> Result<HttpResponse> {
    tokio::time::timeout(LIMIT, async {
        let response = response.await.context("response head")?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let mut recv = response.into_body();
        let mut body = Vec::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.context("response body")?;
            let _ = recv.flow_control().release_capacity(chunk.len());
            body.extend_from_slice(&chunk);
        }
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    })
    .await
    .with_context(|| format!("no HTTP/2 answer within {LIMIT:?}"))?
}

/// The gateway closes `h2` (its connection task ends) within `limit`. The client side keeps
/// its handle meanwhile: a client without one would close the connection itself.
pub async fn closed_within(h2: H2, limit: Duration) -> Result<()> {
    let H2 { send, conn } = h2;
    let ended = tokio::time::timeout(limit, conn).await;
    drop(send);
    ensure!(
        ended.is_ok(),
        "HTTP/2 connection still open after {limit:?}"
    );
    Ok(())
}
