//! CORS for the SSE and long-poll endpoints: any origin may read them. Credentials are tokens
//! in the request (never cookies), so `*` exposes nothing a page could not already send.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// `response` readable from any origin.
pub(super) fn allow<B>(mut response: Response<B>) -> Response<B> {
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    response
}

/// The answer to a preflight `OPTIONS` (a page sending `Authorization` or `Last-Event-ID`).
pub(super) fn preflight() -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = StatusCode::NO_CONTENT;
    let headers = res.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Last-Event-ID, X-GP-Auth"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    allow(res)
}
