//! The admin port: `POST /v1/publish`, `GET /metrics`, `GET /healthz`, `GET /readyz`.
//!
//! Every error is JSON `{"error": "<what is wrong>"}` with a 4xx/5xx status.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use gleepost_event::parse_and_validate;
use serde::Deserialize;
use serde_json::value::RawValue;
use warp::http::StatusCode;
use warp::reply::{self, Response};
use warp::{Filter, Rejection, Reply};

use crate::node::Node;
use crate::registry::UserId;

/// All admin routes.
pub fn routes(node: Arc<Node>) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
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
    let publish = warp::path!("v1" / "publish")
        .and(warp::post())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::body::content_length_limit(node.publish.max_body))
        .and(warp::body::bytes())
        .and(with_node)
        .then(publish);
    healthz
        .or(readyz)
        .unify()
        .or(metrics)
        .unify()
        .or(publish)
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
    use warp::reject::{LengthRequired, MethodNotAllowed, PayloadTooLarge};
    let (status, message) = if rejection.is_not_found() {
        (StatusCode::NOT_FOUND, "Not found")
    } else if rejection.find::<PayloadTooLarge>().is_some() {
        (StatusCode::PAYLOAD_TOO_LARGE, "Request body too large")
    } else if rejection.find::<LengthRequired>().is_some() {
        (
            StatusCode::LENGTH_REQUIRED,
            "A Content-Length header is required",
        )
    } else if rejection.find::<MethodNotAllowed>().is_some() {
        (StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")
    } else {
        tracing::debug!(?rejection, "unhandled admin rejection");
        (StatusCode::BAD_REQUEST, "Bad request")
    };
    Ok(error(status, message))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest<'a> {
    #[serde(borrow)]
    users: Option<&'a RawValue>,
    #[serde(borrow)]
    event: Option<&'a RawValue>,
}

async fn publish(authorization: Option<String>, body: Bytes, node: Arc<Node>) -> Response {
    let res = publish_inner(authorization.as_deref(), &body, &node).await;
    let (status, response) = match res {
        Ok(result) => (StatusCode::OK, reply::json(&result).into_response()),
        Err((status, message)) => (status, error(status, &message)),
    };
    node.metrics
        .publish_requests
        .with_label_values(&[status.as_str()])
        .inc();
    response
}

async fn publish_inner(
    authorization: Option<&str>,
    body: &[u8],
    node: &Node,
) -> Result<serde_json::Value, (StatusCode, String)> {
    let authorized = authorization
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|key| {
            constant_time_eq(key.trim().as_bytes(), node.publish.api_key.as_bytes())
        });
    if !authorized {
        return Err((StatusCode::UNAUTHORIZED, "Invalid API key".into()));
    }
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    // serde would also accept a struct written as an array (`[[9], {…}]`): require an object.
    if !body.trim_ascii_start().starts_with(b"{") {
        return Err(bad(
            "Invalid request body: expected a JSON object {\"users\": […], \"event\": {…}}".into(),
        ));
    }
    let request: PublishRequest =
        serde_json::from_slice(body).map_err(|e| bad(format!("Invalid request body: {e}")))?;
    let users = parse_users(request.users, node.publish.max_users).map_err(bad)?;
    let event = request.event.ok_or_else(|| bad("Missing `event`".into()))?;
    let event = parse_and_validate(event.get().as_bytes(), &node.limits)
        .map_err(|e| bad(format!("Invalid event: {e}")))?;
    if event.id.is_some() {
        return Err(bad("Invalid event: `id` is assigned by the gateway".into()));
    }
    let encoded = event.encode();
    let ids = node.broker.publish(&users, encoded).await.map_err(|e| {
        tracing::warn!(error = %e, "publish failed");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "Broker unavailable; the event may not have been published".to_string(),
        )
    })?;
    node.metrics.events_published.inc_by(users.len() as u64);
    let mut result = serde_json::json!({ "published": users.len() });
    if !ids.is_empty() {
        let ids: serde_json::Map<String, serde_json::Value> = ids
            .into_iter()
            .map(|(user, id)| (user.to_string(), id.into()))
            .collect();
        result["ids"] = ids.into();
    }
    Ok(result)
}

/// `users` must be a non-empty array of distinct user ids, at most `max`.
fn parse_users(raw: Option<&RawValue>, max: usize) -> Result<Vec<UserId>, String> {
    let raw = raw.ok_or("Missing `users`")?;
    let users: Vec<UserId> = serde_json::from_str(raw.get())
        .map_err(|_| "`users` must be an array of non-negative integer user ids".to_string())?;
    if users.is_empty() {
        return Err("`users` must not be empty".into());
    }
    if users.len() > max {
        return Err(format!(
            "Too many users: {} (at most {max} per request)",
            users.len()
        ));
    }
    let mut seen = std::collections::HashSet::with_capacity(users.len());
    if let Some(dup) = users.iter().find(|u| !seen.insert(**u)) {
        return Err(format!("Duplicate user id {dup} in `users`"));
    }
    Ok(users)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn users_rules() {
        assert_eq!(parse_users(Some(&raw("[9,2147]")), 10).unwrap(), [9, 2147]);
        assert!(parse_users(None, 10).unwrap_err().contains("Missing"));
        assert!(parse_users(Some(&raw("[]")), 10)
            .unwrap_err()
            .contains("empty"));
        assert!(parse_users(Some(&raw("[1,2,3]")), 2)
            .unwrap_err()
            .contains("Too many"));
        assert!(parse_users(Some(&raw("[1,1]")), 5)
            .unwrap_err()
            .contains("Duplicate"));
        for bad in ["[-1]", "[\"9\"]", "[1.5]", "{}", "9"] {
            assert!(parse_users(Some(&raw(bad)), 5).is_err(), "{bad}");
        }
    }

    #[test]
    fn key_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
