//! `POST /v1/disconnect` and `GET /v1/presence`: the backend's control of live connections, on
//! every node through the broker. Same key, body bounds and error shape as the publish API.

use std::time::{SystemTime, UNIX_EPOCH};

use http::{Request, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::publish::{authorize, parse_users, Refusal};
use super::{error, json, AdminResponse, InFlight};
use crate::node::Node;
use crate::registry::UserId;

/// Handle one presence request (`?users=9,10`).
pub(super) async fn presence(
    req: Request<Incoming>,
    in_flight: &InFlight,
    node: &Node,
) -> AdminResponse {
    let query = req.uri().query().unwrap_or_default();
    let res = async {
        authorize(req.headers(), node)?;
        if !in_flight.busy() {
            return Err(busy());
        }
        let users =
            query_users(query, node.publish.max_users).map_err(|m| (StatusCode::BAD_REQUEST, m))?;
        let counts = node.broker.presence(&users).await.map_err(unavailable)?;
        let users: Map<String, Value> = counts
            .into_iter()
            .map(|(user, n)| (user.to_string(), json!({ "connections": n })))
            .collect();
        Ok(json!({ "users": users }))
    }
    .await;
    answer(node, "presence", res)
}

fn busy() -> Refusal {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "Too many requests in flight on this node; retry later".into(),
    )
}

fn unavailable(e: crate::broker::BrokerError) -> Refusal {
    tracing::warn!(error = %e, "control request failed");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "Broker unavailable; retry later".into(),
    )
}

/// The response, counted by endpoint and status.
pub(super) fn answer(node: &Node, endpoint: &str, res: Result<Value, Refusal>) -> AdminResponse {
    let (status, response) = match res {
        Ok(body) => (StatusCode::OK, json(StatusCode::OK, &body)),
        Err((status, message)) => (status, error(status, &message)),
    };
    node.metrics
        .control_requests
        .with_label_values(&[endpoint, status.as_str()])
        .inc();
    response
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectRequest<'a> {
    #[serde(borrow)]
    users: Option<&'a RawValue>,
    revoke_tokens_before: Option<u64>,
}

/// Revoke (when asked), then close every connection of the users on every node.
pub(super) async fn run_disconnect(body: &[u8], node: &Node) -> Result<Value, Refusal> {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    if !body.trim_ascii_start().starts_with(b"{") {
        return Err(bad(
            "Invalid request body: expected a JSON object {\"users\": […]}".into(),
        ));
    }
    let request: DisconnectRequest =
        serde_json::from_slice(body).map_err(|e| bad(format!("Invalid request body: {e}")))?;
    let users = parse_users(request.users, node.publish.max_users).map_err(bad)?;
    let mut result = json!({});
    if let Some(before) = request.revoke_tokens_before {
        if before > crate::auth::MAX_TIMESTAMP {
            return Err(bad(
                "`revoke_tokens_before` is not a unix time in seconds".into()
            ));
        }
        let ttl = node.publish.revocation_ttl;
        node.broker
            .revoke(&users, before, ttl)
            .await
            .map_err(unavailable)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        result["revoke_tokens_before"] = before.into();
        result["revoked_until"] = (now + ttl.as_secs()).into();
    }
    let reached = node.broker.disconnect(&users).await.map_err(unavailable)?;
    let users: Map<String, Value> = reached
        .into_iter()
        .map(|(user, nodes)| (user.to_string(), json!({ "nodes": nodes })))
        .collect();
    result["users"] = users.into();
    Ok(result)
}

/// `users=9,10` from a query string: distinct non-negative ids, at least one, at most `max`.
fn query_users(query: &str, max: usize) -> Result<Vec<UserId>, String> {
    let list = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "users")
        .map(|(_, v)| v.into_owned())
        .ok_or("Missing `users` (e.g. ?users=9,10)")?;
    let mut users = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let user = crate::auth::parse_user_id(part)
            .ok_or_else(|| format!("`users` must be comma-separated user ids, got {part:?}"))?;
        if seen.insert(user) {
            users.push(user);
        }
    }
    if users.is_empty() {
        return Err("`users` must not be empty".into());
    }
    if users.len() > max {
        return Err(format!(
            "Too many users: {} (at most {max} per request)",
            users.len()
        ));
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_queries() {
        assert_eq!(query_users("users=9,10", 5).unwrap(), [9, 10]);
        assert_eq!(query_users("users=9%2C9,10", 5).unwrap(), [9, 10]);
        assert!(query_users("", 5).unwrap_err().contains("Missing"));
        assert!(query_users("users=", 5).unwrap_err().contains("empty"));
        assert!(query_users("users=a", 5).unwrap_err().contains("user ids"));
        assert!(query_users("users=-1", 5).is_err());
        assert!(query_users("users=1,2,3", 2)
            .unwrap_err()
            .contains("Too many"));
    }
}
