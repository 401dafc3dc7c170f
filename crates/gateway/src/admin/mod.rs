//! The admin port: `POST /v1/publish`, `POST /v1/publish/batch`, `POST /v1/disconnect`, `GET /v1/presence`,
//! `GET /metrics`, `GET /healthz`, `GET /readyz`.
//!
//! Every error is JSON `{"error": "<what is wrong>"}` with a 4xx/5xx status. [`route`] maps a
//! request to its handler by method and path ([`ROUTES`]); [`server`] serves it with hyper
//! (timeouts, connection cap, lingering close).

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Serialize;

use crate::node::Node;
use publish::with_body;

mod api_keys;
mod batch;
mod control;
mod http1;
mod http2;
mod publish;
mod server;
mod slots;

pub(crate) use api_keys::ApiKeys;
pub(crate) use server::{serve, AdminLimits};

/// What the admin port answers.
pub(crate) type AdminResponse = Response<Full<Bytes>>;

/// What the connection layer tells a request's handler: when the request (body included) must
/// be complete, and its share of the connection's slot, to mark busy once it is (freed when
/// this is dropped).
pub(crate) struct InFlight {
    /// The body must be read by then (408 beyond).
    pub(crate) deadline: tokio::time::Instant,
    request: slots::RequestSlot,
}

impl InFlight {
    /// The complete request is about to be handled: its connection is not evicted meanwhile.
    /// False when too many requests are handled at once (the share kept for `/healthz` and
    /// `/metrics` would be used up): answer 503.
    pub(crate) fn busy(&self) -> bool {
        self.request.busy()
    }
}

/// The admin routes: method and path of every endpoint (docs/openapi.yaml lists the same).
const ROUTES: [(Method, &str); 7] = [
    (Method::GET, "/healthz"),
    (Method::GET, "/readyz"),
    (Method::GET, "/metrics"),
    (Method::POST, "/v1/publish"),
    (Method::POST, "/v1/publish/batch"),
    (Method::POST, "/v1/disconnect"),
    (Method::GET, "/v1/presence"),
];

/// Answer one admin request. Routes that carry a body check the key and the declared length
/// before any byte of it is read (in [`publish::with_body`]).
async fn route(req: Request<Incoming>, in_flight: &InFlight, node: &Node) -> AdminResponse {
    let path = req.uri().path();
    let Some((method, path)) = ROUTES.iter().find(|(_, p)| *p == path) else {
        return error(StatusCode::NOT_FOUND, "Not found");
    };
    if req.method() != method {
        return error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed");
    }
    match *path {
        "/healthz" => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        "/readyz" => match node.readiness() {
            Ok(()) => json(StatusCode::OK, &serde_json::json!({ "ready": true })),
            Err(reason) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({ "ready": false, "reason": reason }),
            ),
        },
        "/metrics" => {
            let _ = node.readiness(); // refresh the ready gauge
            match node.metrics.render() {
                Ok(body) => {
                    let mut res = Response::new(Full::new(Bytes::from(body)));
                    res.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                    );
                    res
                }
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            }
        }
        "/v1/publish" => {
            let timer = publish::Timer::start(node, "publish");
            let res = with_body(req, in_flight, node, async |b| {
                publish::publish(b, node).await
            });
            timer.answer(publish::answer(node, res.await))
        }
        "/v1/publish/batch" => {
            let timer = publish::Timer::start(node, "batch");
            let res = with_body(req, in_flight, node, async |b| {
                batch::publish_batch(b, node).await
            });
            timer.answer(publish::answer(node, res.await))
        }
        "/v1/disconnect" => {
            let res = with_body(req, in_flight, node, async |b| {
                control::run_disconnect(b, node).await
            });
            control::answer(node, "disconnect", res.await)
        }
        // The only route left: "/v1/presence".
        _ => control::presence(req, in_flight, node).await,
    }
}

/// A JSON response.
fn json(status: StatusCode, body: &impl Serialize) -> AdminResponse {
    // Serializing the answers (derived or `serde_json::Value`) into memory cannot fail.
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut res = Response::new(Full::new(Bytes::from(bytes)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// A JSON error response.
fn error(status: StatusCode, message: &str) -> AdminResponse {
    json(status, &serde_json::json!({ "error": message }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// `(method, path)` of every route that [`super::route`] serves.
    fn served_routes() -> BTreeSet<(String, String)> {
        super::ROUTES
            .iter()
            .map(|(m, p)| (m.as_str().to_ascii_lowercase(), (*p).to_string()))
            .collect()
    }

    /// docs/openapi.yaml parses, is OpenAPI 3.1, and lists exactly the routes the code serves;
    /// every operation documents its responses with a description.
    #[test]
    fn openapi_document_lists_every_route() {
        let doc: serde_json::Value =
            serde_yaml_ng::from_str(include_str!("../../../../docs/openapi.yaml")).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                documented.insert((method.clone(), path.clone()));
                let responses = operation["responses"].as_object().unwrap();
                assert!(responses.contains_key("200"), "{method} {path}: no 200");
                for (status, response) in responses {
                    let described = response.get("description").or(response.get("$ref"));
                    assert!(described.is_some(), "{method} {path} {status}");
                }
            }
        }
        let served = served_routes();
        assert_eq!(served, documented);
    }
}
