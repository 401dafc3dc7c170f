//! The admin port: `POST /v1/publish`, `POST /v1/publish/batch`, `POST /v1/disconnect`, `GET /v1/presence`,
//! `GET /metrics`, `GET /healthz`, `GET /readyz`.
//!
//! Every error is JSON `{"error": "<what is wrong>"}` with a 4xx/5xx status. The routes are warp
//! filters served by [`server`] (timeouts, connection cap, lingering close).

use std::convert::Infallible;
use std::sync::Arc;

use warp::http::StatusCode;
use warp::reply::{self, Response};
use warp::{Filter, Rejection, Reply};

use crate::node::Node;

mod api_keys;
mod batch;
mod control;
mod publish;
mod server;
mod slots;

pub(crate) use api_keys::ApiKeys;
pub(crate) use server::{serve, AdminLimits};

/// What the connection layer tells a request's handler: when the request (body included) must
/// be complete, and the connection to mark busy once it is.
#[derive(Clone)]
pub(crate) struct InFlight {
    /// The body must be read by then (408 beyond).
    pub(crate) deadline: tokio::time::Instant,
    slot: slots::SlotRef,
}

impl InFlight {
    /// The complete request is about to be handled: its connection is not evicted meanwhile.
    /// False when too many requests are handled at once (the share kept for `/healthz` and
    /// `/metrics` would be used up): answer 503.
    pub(crate) fn busy(&self) -> bool {
        self.slot.busy()
    }
}

/// All admin routes.
fn routes(node: Arc<Node>) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let with_node = {
        let node = node.clone();
        warp::any().map(move || node.clone())
    };
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| reply::json(&serde_json::json!({"status": "ok"})).into_response());
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with_node.clone())
        .map(|node: Arc<Node>| {
            let (status, body) = match node.readiness() {
                Ok(()) => (StatusCode::OK, serde_json::json!({ "ready": true })),
                Err(reason) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({ "ready": false, "reason": reason }),
                ),
            };
            reply::with_status(reply::json(&body), status).into_response()
        });
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with_node.clone())
        .map(|node: Arc<Node>| {
            let _ = node.readiness(); // refresh the ready gauge
            match node.metrics.render() {
                Ok(body) => reply::with_header(
                    body,
                    "content-type",
                    "text/plain; version=0.0.4; charset=utf-8",
                )
                .into_response(),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
            }
        });
    // Nothing of the body is read before the key and the length are checked (in `publish`).
    let publish = warp::path!("v1" / "publish")
        .and(warp::post())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and(warp::ext::get::<InFlight>())
        .and(with_node.clone())
        .then(publish::handle);
    let publish_batch = warp::path!("v1" / "publish" / "batch")
        .and(warp::post())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and(warp::ext::get::<InFlight>())
        .and(with_node.clone())
        .then(batch::handle);
    let disconnect = warp::path!("v1" / "disconnect")
        .and(warp::post())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and(warp::ext::get::<InFlight>())
        .and(with_node.clone())
        .then(control::disconnect);
    let presence = warp::path!("v1" / "presence")
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(warp::ext::get::<InFlight>())
        .and(with_node)
        .then(control::presence);
    healthz
        .or(readyz)
        .unify()
        .or(metrics)
        .unify()
        .or(publish)
        .unify()
        .or(publish_batch)
        .unify()
        .or(disconnect)
        .unify()
        .or(presence)
        .unify()
        .recover(recover)
        .unify()
}

/// A JSON error response.
fn error(status: StatusCode, message: &str) -> Response {
    reply::with_status(
        reply::json(&serde_json::json!({ "error": message })),
        status,
    )
    .into_response()
}

async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    let (status, message) = if rejection.is_not_found() {
        (StatusCode::NOT_FOUND, "Not found")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")
    } else {
        tracing::debug!(?rejection, "unhandled admin rejection");
        (StatusCode::BAD_REQUEST, "Bad request")
    };
    Ok(error(status, message))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// `(method, path)` of every route in [`super::routes`], read from this file's source: each
    /// `warp::path!(…)` and the method filter that follows it.
    fn served_routes() -> BTreeSet<(String, String)> {
        let source = include_str!("mod.rs");
        let source = &source[..source.find("#[cfg(test)]").unwrap()];
        let mut routes = BTreeSet::new();
        for (at, _) in source.match_indices("warp::path!(") {
            let rest = &source[at + "warp::path!(".len()..];
            let segments = &rest[..rest.find(')').unwrap()];
            let path: String = segments
                .split('/')
                .map(|s| format!("/{}", s.trim().trim_matches('"')))
                .collect();
            let method = ["get", "post", "put", "delete", "patch"]
                .into_iter()
                .filter_map(|m| Some((rest.find(&format!("warp::{m}()"))?, m)))
                .min()
                .unwrap()
                .1;
            routes.insert((method.to_string(), path));
        }
        routes
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
        assert_eq!(served.len(), 7, "source scan found {served:?}");
        assert_eq!(served, documented);
    }
}
