//! `POST /v1/publish`: the key and the declared length are checked from the headers before any
//! byte of the body is read; the body must arrive within the request deadline.

use bytes::{Buf, Bytes};
use gleepost_event::history::MAX_ID_MEMBER_BYTES;
use gleepost_event::{validate_raw, ValidationError};
use http::{header, HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{error, json, AdminResponse, InFlight};
use crate::broker::{BrokerError, Published};
use crate::node::Node;
use crate::registry::UserId;

/// Run `handler` on the body of `req` once [`authorized_body`] accepted it: the shared front of
/// every admin route that carries a body.
pub(super) async fn with_body<T>(
    req: Request<Incoming>,
    in_flight: &InFlight,
    node: &Node,
    handler: impl AsyncFnOnce(&[u8]) -> Result<T, Refusal>,
) -> Result<T, Refusal> {
    let body = authorized_body(req, in_flight, node).await?;
    handler(&body).await
}

/// The response to a publish request (single or batch), counted in `publish_requests_total`
/// by status.
pub(super) fn answer(node: &Node, res: Result<impl Serialize, Refusal>) -> AdminResponse {
    let (status, response) = match res {
        Ok(result) => (StatusCode::OK, json(StatusCode::OK, &result)),
        Err((status, message)) => (status, error(status, &message)),
    };
    node.metrics
        .publish_requests
        .with_label_values(&[status.as_str()])
        .inc();
    response
}

/// Times a publish request, headers to answer, into `publish_duration_seconds{route}`.
pub(super) struct Timer {
    histogram: prometheus::Histogram,
    started: std::time::Instant,
}

impl Timer {
    /// Starts timing a request of `route` (`publish` or `batch`).
    pub(super) fn start(node: &Node, route: &str) -> Timer {
        Timer {
            histogram: node.metrics.publish_duration.with_label_values(&[route]),
            started: std::time::Instant::now(),
        }
    }

    /// Records the request's time and hands its answer on. A request dropped before its
    /// answer (the client reset the stream or left) is not recorded.
    pub(super) fn answer(self, response: AdminResponse) -> AdminResponse {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
        response
    }
}

/// The body of an admin request that carries one: the key and the declared length checked
/// before any byte of it is read, the body read by the request's deadline, and a share of the
/// admin port left for `/healthz` and `/metrics` (503 beyond).
async fn authorized_body(
    req: Request<Incoming>,
    in_flight: &InFlight,
    node: &Node,
) -> Result<Vec<u8>, Refusal> {
    let (head, body) = req.into_parts();
    authorize(&head.headers, node)?;
    let length = declared_length(&head.headers, node.publish.max_body)?;
    let body = read_body(body, length, in_flight.deadline, node).await?;
    if !in_flight.busy() {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many requests in flight on this node; retry later".into(),
        ));
    }
    Ok(body)
}

/// A refused request: its status and the reason shown in the JSON body.
pub(super) type Refusal = (StatusCode, String);

/// The request carries one of the admin API keys (`Authorization: Bearer <key>`).
pub(super) fn authorize(headers: &HeaderMap, node: &Node) -> Result<(), Refusal> {
    if node.publish.api_keys.authorizes(headers) {
        Ok(())
    } else {
        Err((StatusCode::UNAUTHORIZED, "Invalid API key".into()))
    }
}

/// The `Content-Length`, required and at most `max`.
pub(super) fn declared_length(headers: &HeaderMap, max: u64) -> Result<usize, Refusal> {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| {
            (
                StatusCode::LENGTH_REQUIRED,
                "A Content-Length header is required".to_string(),
            )
        })?;
    if length > max {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body too large (at most {max} bytes)"),
        ));
    }
    // At most `max`, itself a configured u64 that a body of this size had to fit in memory.
    usize::try_from(length).map_err(|_| {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request body too large".into(),
        )
    })
}

/// Read the body (hyper enforces the declared `length`) by `deadline`, else 408.
pub(super) async fn read_body(
    mut body: Incoming,
    length: usize,
    deadline: tokio::time::Instant,
    node: &Node,
) -> Result<Vec<u8>, Refusal> {
    let mut out = Vec::with_capacity(length);
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| {
                (
                    StatusCode::BAD_REQUEST,
                    "Request body could not be read".to_string(),
                )
            })?;
            // Trailers (chunked bodies only, refused above for lack of a length) carry no data.
            if let Ok(mut data) = frame.into_data() {
                while data.has_remaining() {
                    let part = data.chunk();
                    out.extend_from_slice(part);
                    let n = part.len();
                    data.advance(n);
                }
            }
        }
        Ok(())
    };
    match tokio::time::timeout_at(deadline, read).await {
        Ok(result) => result.map(|()| out),
        Err(_) => {
            node.metrics
                .admin_dropped
                .with_label_values(&["timeout"])
                .inc();
            Err((
                StatusCode::REQUEST_TIMEOUT,
                "Request body not received in time".into(),
            ))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PublishRequest<'a> {
    #[serde(borrow)]
    pub(super) users: Option<&'a RawValue>,
    #[serde(borrow)]
    pub(super) event: Option<&'a RawValue>,
}

/// Validate and publish a complete, authorized request body.
pub(super) async fn publish(body: &[u8], node: &Node) -> Result<PublishAnswer, Refusal> {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    // serde would also accept a struct written as an array (`[[9], {…}]`): require an object.
    if !body.trim_ascii_start().starts_with(b"{") {
        return Err(bad(
            "Invalid request body: expected a JSON object {\"users\": […], \"event\": {…}}".into(),
        ));
    }
    let request: PublishRequest =
        serde_json::from_slice(body).map_err(|e| bad(format!("Invalid request body: {e}")))?;
    let (users, encoded) = prepare(&request, node.publish.max_users, node).map_err(bad)?;
    let published = broker_publish(node, &users, encoded)
        .await
        .map_err(unavailable)?;
    let answer = result(users.len(), published, node)?;
    node.metrics
        .events_published
        .inc_by(answer.published as u64);
    Ok(answer)
}

/// One publish through the broker, timed into `broker_publish_duration_seconds` (answered or
/// failed; a publish whose request is dropped meanwhile is not recorded).
pub(super) async fn broker_publish(
    node: &Node,
    users: &[UserId],
    encoded: Bytes,
) -> Result<Published, BrokerError> {
    let started = std::time::Instant::now();
    let published = node.broker.publish(users, encoded).await;
    node.metrics
        .broker_publish_duration
        .observe(started.elapsed().as_secs_f64());
    published
}

/// The recipients and the encoded event (validated once, no id) of one publish.
pub(super) fn prepare(
    request: &PublishRequest<'_>,
    max_users: usize,
    node: &Node,
) -> Result<(Vec<UserId>, Bytes), String> {
    let users = parse_users(request.users, max_users)?;
    let event = request.event.ok_or("Missing `event`")?;
    let limits = if node.publish.adds_ids {
        node.limits.before_id()
    } else {
        node.limits
    };
    let event = validate_raw(event, &limits).map_err(|e| match e {
        ValidationError::TooLarge { size, max } if node.publish.adds_ids => format!(
            "Invalid event: encoded event is {size} bytes; the maximum is {max} bytes \
             (GATEWAY_MAX_EVENT_BYTES {} less {MAX_ID_MEMBER_BYTES} kept for the id)",
            node.limits.max_event_bytes
        ),
        e => format!("Invalid event: {e}"),
    })?;
    if event.id.is_some() {
        return Err("Invalid event: `id` is assigned by the gateway".into());
    }
    Ok((users, event.encode()))
}

/// Log lines of failed publishes: at most one per second.
static PUBLISH_FAILED_LOG: crate::log_limit::LogLimit =
    crate::log_limit::LogLimit::new(std::time::Duration::from_secs(1));

/// A broker failure as the API answers it (503: the event may or may not have been published).
pub(super) fn unavailable(e: BrokerError) -> Refusal {
    // A Redis outage fails every publish: one line per second (the metric counts each 503).
    if let Some(suppressed) = PUBLISH_FAILED_LOG.allow() {
        tracing::warn!(error = %e, suppressed, "publish failed");
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "Broker unavailable; the event may not have been published".to_string(),
    )
}

/// The answer to one publish: `published`, `ids` (when history is on) and `online`, objects
/// keyed by user id in the order of the request's `users`, and `failed` (only when Redis
/// refused some users' copies).
#[derive(Serialize)]
pub(super) struct PublishAnswer {
    pub(super) published: usize,
    #[serde(skip_serializing_if = "PerUser::is_empty")]
    ids: PerUser<String>,
    online: PerUser<bool>,
    #[serde(skip_serializing_if = "PerUser::is_empty")]
    failed: PerUser<String>,
}

/// A JSON object keyed by user id (serde_json writes integer keys as strings).
struct PerUser<T>(Vec<(UserId, T)>);

impl<T> PerUser<T> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<T: Serialize> Serialize for PerUser<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(user, value)| (user, value)))
    }
}

/// Log lines of copies Redis refused: at most one per second.
static REFUSED_LOG: crate::log_limit::LogLimit =
    crate::log_limit::LogLimit::new(std::time::Duration::from_secs(1));

/// The answer to a publish to `users` users; 503 when Redis refused every user's copy
/// (not published: see `failed` in openapi.yaml for the one exception on a cluster). Refused
/// copies are counted (`events_refused_total`) and logged.
pub(super) fn result(
    users: usize,
    published: Published,
    node: &Node,
) -> Result<PublishAnswer, Refusal> {
    let failed = published.failed;
    if let Some((user, error)) = failed.first() {
        node.metrics.events_refused.inc_by(failed.len() as u64);
        if let Some(suppressed) = REFUSED_LOG.allow() {
            tracing::warn!(user, %error, refused = failed.len(), suppressed, "Redis refused users' copies of a publish");
        }
        if failed.len() == users {
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                format!("Redis refused the event for every user (user {user}: {error})"),
            ));
        }
    }
    Ok(PublishAnswer {
        published: users - failed.len(),
        ids: PerUser(published.ids),
        online: PerUser(published.online),
        failed: PerUser(failed),
    })
}

/// `users` must be a non-empty array of distinct user ids, at most `max`.
pub(super) fn parse_users(raw: Option<&RawValue>, max: usize) -> Result<Vec<UserId>, String> {
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
    fn length_rules() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, v.parse().unwrap());
            }
            h
        };
        let status = |h: &HeaderMap| declared_length(h, 100).unwrap_err().0;
        assert_eq!(
            declared_length(&headers(&[("content-length", "100")]), 100).unwrap(),
            100
        );
        assert_eq!(status(&headers(&[])), StatusCode::LENGTH_REQUIRED);
        assert_eq!(
            status(&headers(&[("transfer-encoding", "chunked")])),
            StatusCode::LENGTH_REQUIRED
        );
        assert_eq!(
            status(&headers(&[("content-length", "101")])),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            status(&headers(&[("content-length", "99999999999999999999999")])),
            StatusCode::LENGTH_REQUIRED
        );
    }
}
