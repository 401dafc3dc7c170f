//! Dev mode's demo page: with `--dev`, `GET /` on the public port serves a page that shows the
//! live event stream of a user through the official JavaScript client (`clients/js`). The page
//! and the client's modules are compiled into the binary (no npm at build time).

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response};
use http_body_util::Full;

/// Path, content type and body of every file the demo serves.
const FILES: [(&str, &str, &str); 5] = [
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../../../../clients/js/demo/index.html"),
    ),
    (
        "/client/index.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../../clients/js/src/index.js"),
    ),
    (
        "/client/transports.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../../clients/js/src/transports.js"),
    ),
    (
        "/client/backoff.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../../clients/js/src/backoff.js"),
    ),
    (
        "/client/json.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../../clients/js/src/json.js"),
    ),
];

/// The demo's answer to `req`, or `None` when it is not a demo request (or not dev mode).
pub(crate) fn route<B>(dev: bool, req: &Request<B>) -> Option<Response<Full<Bytes>>> {
    if !dev || req.method() != Method::GET {
        return None;
    }
    let (_, content_type, body) = FILES.iter().find(|(p, _, _)| *p == req.uri().path())?;
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let headers = res.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Some(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).unwrap()
    }

    #[test]
    fn serves_the_page_and_the_client_only_in_dev_mode() {
        let page = route(true, &get("/")).unwrap();
        assert_eq!(
            page.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert!(route(true, &get("/client/index.js")).is_some());
        assert!(route(false, &get("/")).is_none());
        assert!(route(true, &get("/client/missing.js")).is_none());
        assert!(route(true, &Request::post("/").body(()).unwrap()).is_none());
    }

    #[test]
    fn every_module_the_client_imports_is_served() {
        for (path, _, body) in FILES.iter().filter(|(p, _, _)| p.ends_with(".js")) {
            for line in body.lines().filter(|l| l.contains(" from './")) {
                let module = line
                    .split("from './")
                    .nth(1)
                    .unwrap()
                    .split('\'')
                    .next()
                    .unwrap();
                let wanted = format!("/client/{module}");
                assert!(
                    FILES.iter().any(|(p, _, _)| *p == wanted),
                    "{path} imports {module}, which the demo does not serve"
                );
            }
        }
    }
}
