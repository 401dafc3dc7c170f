//! A one-request HTTP/1.1 client for the JWKS document: `GET`, one connection per fetch, a whole
//! deadline, a bounded body, no redirects (a 3xx is a failure: the URL must name the document).

use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Largest JWKS document accepted, in bytes.
const MAX_BODY: usize = 1 << 20;

/// Why a fetch failed (each is counted and logged; the cached keys stay).
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    /// Connecting, sending or reading failed.
    #[error("{0}")]
    Io(String),
    /// Not done within the deadline.
    #[error("timed out")]
    Timeout,
    /// A status other than 200.
    #[error("HTTP status {0}")]
    Status(StatusCode),
    /// The body is larger than [`MAX_BODY`].
    #[error("document larger than {MAX_BODY} bytes")]
    TooLarge,
}

/// Where the JWKS document is: a parsed `http://` URL.
#[derive(Clone, Debug)]
pub(crate) struct JwksUrl {
    uri: Uri,
    host: String,
    port: u16,
}

impl JwksUrl {
    /// Parse `http://host[:port]/path`; other schemes and URLs with credentials are refused.
    pub(crate) fn parse(url: &str) -> Result<JwksUrl, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "{url:?}: only http:// JWKS URLs are supported (serve the document through a \
                 local TLS-terminating proxy or sidecar for an https:// issuer)"
            ));
        }
        let authority = uri.authority().ok_or(format!("{url:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("{url:?}: credentials in the URL are not supported"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(80);
        Ok(JwksUrl { uri, host, port })
    }

    /// The URL as configured (it holds no credentials), for logs.
    pub(crate) fn as_str(&self) -> String {
        self.uri.to_string()
    }

    /// `GET` the document within `timeout`.
    pub(crate) async fn fetch(&self, timeout: Duration) -> Result<Bytes, FetchError> {
        tokio::time::timeout(timeout, self.get())
            .await
            .unwrap_or(Err(FetchError::Timeout))
    }

    async fn get(&self) -> Result<Bytes, FetchError> {
        let io = |e: &dyn std::fmt::Display| FetchError::Io(e.to_string());
        let stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| io(&e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| io(&e))?;
        // Drives the connection until the response is read (or the fetch is dropped).
        let driver = tokio::spawn(conn);
        let path = self
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let host = self.uri.authority().map_or("", |a| a.as_str()).to_owned();
        let request = Request::get(path)
            .header(header::HOST, host)
            .header(header::ACCEPT, "application/json")
            .header(header::CONNECTION, "close")
            .header(header::USER_AGENT, "gleepost-gateway")
            .body(Empty::<Bytes>::new())
            .map_err(|e| io(&e))?;
        let result = async {
            let response = sender.send_request(request).await.map_err(|e| io(&e))?;
            if response.status() != StatusCode::OK {
                return Err(FetchError::Status(response.status()));
            }
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        FetchError::TooLarge
                    } else {
                        io(&e)
                    }
                })?;
            Ok(body.to_bytes())
        }
        .await;
        driver.abort();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let url = JwksUrl::parse("http://127.0.0.1:8081/.well-known/jwks.json").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("127.0.0.1", 8081));
        let url = JwksUrl::parse("http://[::1]/k").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("::1", 80));
        for bad in [
            "https://idp.example/jwks",
            "ftp://x/",
            "http://user:pw@x/",
            "/jwks",
            "not a url",
        ] {
            assert!(JwksUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
