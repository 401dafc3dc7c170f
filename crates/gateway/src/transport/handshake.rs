//! What a WebSocket upgrade request must look like, checked before anything costs: HTTP/1.1,
//! bounded headers (nginx-like: 8 KiB per line, 32 KiB in all, 100 headers), no body, the
//! upgrade headers of RFC 6455 and a `Sec-WebSocket-Key` that is the base64 of 16 bytes.
//!
//! hyper enforces hard limits above ours ([`HARD_MAX_HEAD_BYTES`], [`HARD_MAX_HEADERS`]): a
//! request past them is answered `431` without a body and its connection closed, so no request
//! head ever holds more memory than that.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::Full;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::public::json_error;

/// Longest request line or header line, in bytes.
pub(crate) const MAX_LINE_BYTES: usize = 8 * 1024;
/// Largest request head (request line and every header line), in bytes.
pub(crate) const MAX_HEAD_BYTES: usize = 32 * 1024;
/// Most header lines.
pub(crate) const MAX_HEADERS: usize = 100;
/// hyper's limit on the request head: past it, `431` without a body.
pub(crate) const HARD_MAX_HEAD_BYTES: usize = 64 * 1024;
/// hyper's limit on header lines: past it, `431` without a body.
pub(crate) const HARD_MAX_HEADERS: usize = 128;

/// A request refused before authentication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BadRequest {
    status: StatusCode,
    message: &'static str,
}

impl BadRequest {
    const fn new(status: StatusCode, message: &'static str) -> Self {
        BadRequest { status, message }
    }

    /// The JSON error answer.
    pub(crate) fn response(self) -> Response<Full<Bytes>> {
        json_error(self.status, self.message)
    }
}

const fn bad(message: &'static str) -> BadRequest {
    BadRequest::new(StatusCode::BAD_REQUEST, message)
}

/// Check an upgrade request; returns the `Sec-WebSocket-Accept` value to answer with.
pub(crate) fn check<B>(req: &Request<B>) -> Result<HeaderValue, BadRequest> {
    if req.version() != Version::HTTP_11 {
        return Err(bad("WebSocket upgrades need HTTP/1.1"));
    }
    check_size(req)?;
    let headers = req.headers();
    if headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
    {
        return Err(bad("A WebSocket upgrade request has no body"));
    }
    if !has_token(headers, header::CONNECTION, "upgrade")
        || !has_token(headers, header::UPGRADE, "websocket")
    {
        return Err(bad("Expected a WebSocket upgrade request"));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(bad("Unsupported WebSocket version (expected 13)"));
    }
    let mut keys = headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
    let (Some(key), None) = (keys.next(), keys.next()) else {
        return Err(bad("Expected one Sec-WebSocket-Key"));
    };
    if !valid_key(key.as_bytes()) {
        return Err(bad(
            "Invalid Sec-WebSocket-Key (expected the base64 of 16 bytes)",
        ));
    }
    HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
        .map_err(|_| bad("Invalid Sec-WebSocket-Key"))
}

/// The head is within [`MAX_LINE_BYTES`], [`MAX_HEAD_BYTES`] and [`MAX_HEADERS`] (sizes as
/// sent, give or take optional whitespace).
fn check_size<B>(req: &Request<B>) -> Result<(), BadRequest> {
    let uri = req.uri();
    let target = uri
        .authority()
        .map_or(0, |a| a.as_str().len() + "http://".len())
        + uri.path_and_query().map_or(1, |p| p.as_str().len());
    let request_line = req.method().as_str().len() + 1 + target + " HTTP/1.1\r\n".len();
    if request_line > MAX_LINE_BYTES {
        return Err(BadRequest::new(
            StatusCode::URI_TOO_LONG,
            "Request line too long",
        ));
    }
    if req.headers().len() > MAX_HEADERS {
        return Err(too_large("Too many request headers"));
    }
    let mut total = request_line;
    for (name, value) in req.headers() {
        let line = name.as_str().len() + ": ".len() + value.len() + "\r\n".len();
        if line > MAX_LINE_BYTES {
            return Err(too_large("Request header line too long"));
        }
        total += line;
    }
    if total > MAX_HEAD_BYTES {
        return Err(too_large("Request headers too large"));
    }
    Ok(())
}

const fn too_large(message: &'static str) -> BadRequest {
    BadRequest::new(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, message)
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// RFC 6455 §4.2.1: the key is a base64-encoded 16-byte value (24 characters, padded).
fn valid_key(key: &[u8]) -> bool {
    let mut nonce = [0u8; 18]; // decode_slice wants room for the padding's whole last chunk
    key.len() == 24 && STANDARD.decode_slice(key, &mut nonce) == Ok(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade(key: &str) -> http::request::Builder {
        Request::get("/ws?access_token=x")
            .header("host", "gw")
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", key)
    }

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn status(req: http::request::Builder) -> StatusCode {
        match check(&req.body(()).unwrap()) {
            Ok(_) => StatusCode::SWITCHING_PROTOCOLS,
            Err(e) => e.status,
        }
    }

    #[test]
    fn the_rfc_example_is_accepted() {
        let accept = check(&upgrade(KEY).body(()).unwrap()).unwrap();
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn keys_must_be_base64_of_16_bytes() {
        for key in [
            "",
            "abc",
            "dGhlIHNhbXBsZSBub25jZQ",               // unpadded
            "dGhlIHNhbXBsZSBub25jZQ=x",             // bad padding
            "dGhlIHNhbXBsZSBub25j",                 // 15 bytes
            "dGhlIHNhbXBsZSBub25jZSE=",             // 17 bytes
            "dGhlIHNhbXBsZSBub25jZR==",             // non-zero trailing bits
            "dGhlIHNhbXBsZSBub25j!!==",             // not base64
            "dGhlIHNhbXBsZSBub25jZQ==dGhlIHNhbXBs", // too long
        ] {
            assert_eq!(status(upgrade(key)), StatusCode::BAD_REQUEST, "{key:?}");
        }
        assert_eq!(status(upgrade(&"A".repeat(1_000))), StatusCode::BAD_REQUEST);
        // Past the line limit, the size check answers first.
        assert_eq!(
            status(upgrade(&"A".repeat(10_000))),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        let two_keys = upgrade(KEY).header("sec-websocket-key", KEY);
        assert_eq!(status(two_keys), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn only_http_11_upgrades_without_a_body() {
        for version in [Version::HTTP_10, Version::HTTP_09] {
            assert_eq!(
                status(upgrade(KEY).version(version)),
                StatusCode::BAD_REQUEST
            );
        }
        assert_eq!(
            status(upgrade(KEY).header("content-length", "5")),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(upgrade(KEY).header("transfer-encoding", "chunked")),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(upgrade(KEY).header("content-length", "0")),
            StatusCode::SWITCHING_PROTOCOLS
        );
    }

    #[test]
    fn heads_are_bounded_per_line_in_total_and_in_count() {
        let long = "v".repeat(MAX_LINE_BYTES);
        assert_eq!(
            status(upgrade(KEY).header("x-long", &long)),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        let mut many = upgrade(KEY);
        for i in 0..MAX_HEADERS {
            many = many.header(format!("x-h{i}"), "1");
        }
        assert_eq!(status(many), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let mut big = upgrade(KEY);
        let chunk = "v".repeat(4 * 1024);
        for i in 0..8 {
            big = big.header(format!("x-h{i}"), &chunk);
        }
        assert_eq!(status(big), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let mut fits = upgrade(KEY);
        for i in 0..7 {
            fits = fits.header(format!("x-h{i}"), &chunk);
        }
        assert_eq!(status(fits), StatusCode::SWITCHING_PROTOCOLS);
        let long_uri = format!("/ws?access_token={}", "t".repeat(MAX_LINE_BYTES));
        let req = Request::get(long_uri)
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", KEY);
        assert_eq!(status(req), StatusCode::URI_TOO_LONG);
    }
}
