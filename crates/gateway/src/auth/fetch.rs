//! A one-request HTTP/1.1 client for the JWKS document: `GET` over plain TCP (`http://`) or TLS
//! (`https://`, [`super::tls`]), one connection per fetch, a whole deadline (connect, TLS
//! handshake, request, body), a bounded body, no redirects (a 3xx is a failure: the URL must name
//! the document).

use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Largest JWKS document accepted, in bytes.
const MAX_BODY: usize = 1 << 20;

/// Why a fetch failed (each is counted and logged; the cached keys stay).
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    /// Connecting, sending or reading failed.
    #[error("{0}")]
    Io(String),
    /// The TLS handshake failed (e.g. a certificate that is not trusted or not for the host).
    #[error("TLS handshake: {0}")]
    Tls(String),
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

/// Where the JWKS document is: a parsed `http://` or `https://` URL.
#[derive(Clone, Debug)]
pub(crate) struct JwksUrl {
    uri: Uri,
    host: String,
    port: u16,
    /// The name the server's certificate must be for (`https://` only).
    server_name: Option<ServerName<'static>>,
}

impl JwksUrl {
    /// Parse `http[s]://host[:port]/path`; other schemes and URLs with credentials are refused.
    pub(crate) fn parse(url: &str) -> Result<JwksUrl, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        let (tls, default_port) = match uri.scheme_str() {
            Some("http") => (false, 80),
            Some("https") => (true, 443),
            _ => return Err(format!("{url:?}: not an http:// or https:// URL")),
        };
        let authority = uri.authority().ok_or(format!("{url:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("{url:?}: credentials in the URL are not supported"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(default_port);
        let server_name = if tls {
            let name = ServerName::try_from(host.clone())
                .map_err(|e| format!("{url:?}: {host:?} is not a TLS server name: {e}"))?;
            Some(name)
        } else {
            None
        };
        Ok(JwksUrl {
            uri,
            host,
            port,
            server_name,
        })
    }

    /// The URL as configured (it holds no credentials), for logs.
    pub(crate) fn as_str(&self) -> String {
        self.uri.to_string()
    }
}

/// Fetches one JWKS URL: its TLS client (with the root certificates) is set up once.
pub(crate) struct JwksClient {
    url: JwksUrl,
    /// For `https://`: the TLS client and the name the certificate must be for.
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl JwksClient {
    /// A client of `url`; for `https://`, loads the root certificates (an error when none can be).
    pub(crate) fn new(url: JwksUrl) -> Result<JwksClient, String> {
        let tls = match &url.server_name {
            Some(name) => Some((super::tls::connector()?, name.clone())),
            None => None,
        };
        Ok(JwksClient { url, tls })
    }

    /// The URL, for logs.
    pub(crate) fn url(&self) -> String {
        self.url.as_str()
    }

    /// `GET` the document within `timeout` (the TLS handshake included).
    pub(crate) async fn fetch(&self, timeout: Duration) -> Result<Bytes, FetchError> {
        tokio::time::timeout(timeout, self.get())
            .await
            .unwrap_or(Err(FetchError::Timeout))
    }

    async fn get(&self) -> Result<Bytes, FetchError> {
        let url = &self.url;
        let stream = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| FetchError::Io(e.to_string()))?;
        match &self.tls {
            Some((tls, name)) => {
                let stream = tls
                    .connect(name.clone(), stream)
                    .await
                    .map_err(|e| FetchError::Tls(e.to_string()))?;
                self.request(stream).await
            }
            None => self.request(stream).await,
        }
    }

    /// The request and its response over an open connection.
    async fn request<S>(&self, stream: S) -> Result<Bytes, FetchError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let io = |e: &dyn std::fmt::Display| FetchError::Io(e.to_string());
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| io(&e))?;
        // Drives the connection until the response is read (or the fetch is dropped).
        let driver = tokio::spawn(conn);
        let path = self
            .url
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let host = self
            .url
            .uri
            .authority()
            .map_or("", |a| a.as_str())
            .to_owned();
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
        assert!(url.server_name.is_none());
        let url = JwksUrl::parse("https://idp.example/.well-known/jwks.json").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("idp.example", 443));
        assert_eq!(
            url.server_name,
            Some(ServerName::try_from("idp.example").unwrap())
        );
        let url = JwksUrl::parse("https://[::1]:8443/k").unwrap();
        assert_eq!(url.port, 8443);
        assert!(matches!(url.server_name, Some(ServerName::IpAddress(_))));
        for bad in [
            "ftp://x/",
            "https://user:pw@x/",
            "http://user:pw@x/",
            "/jwks",
            "not a url",
        ] {
            assert!(JwksUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
