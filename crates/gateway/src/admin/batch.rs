//! `POST /v1/publish/batch`: many publishes in one request, for backends with many events at
//! once. The body is `{"items":[{"users":[…],"event":{…}}, …]}`; each item is validated and
//! answered on its own (`results`, in order), the valid ones are published together (with
//! history on, the Redis broker sends them in a few script calls: see the event crate's
//! batcher). Bounds are those of `/v1/publish`: the body size, and the recipients of all items
//! together (`GATEWAY_MAX_PUBLISH_USERS`).

use bytes::Bytes;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::publish::{
    broker_publish, prepare, result, unavailable, PublishAnswer, PublishRequest, Refusal,
};
use crate::node::Node;
use crate::registry::UserId;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest<'a> {
    #[serde(borrow)]
    items: Option<Vec<&'a RawValue>>,
}

/// One item after validation: ready to publish, or its error.
enum Item {
    Valid(Vec<UserId>, Bytes),
    Invalid(String),
}

/// Validate every item, publish the valid ones concurrently (so they share broker calls), and
/// answer per item. 503 only when the broker failed every valid item.
pub(super) async fn publish_batch(body: &[u8], node: &Node) -> Result<BatchAnswer, Refusal> {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    if !body.trim_ascii_start().starts_with(b"{") {
        return Err(bad(
            "Invalid request body: expected a JSON object {\"items\": [{\"users\": […], \"event\": {…}}, …]}"
                .into(),
        ));
    }
    let request: BatchRequest =
        serde_json::from_slice(body).map_err(|e| bad(format!("Invalid request body: {e}")))?;
    let raw_items = request.items.ok_or_else(|| bad("Missing `items`".into()))?;
    if raw_items.is_empty() {
        return Err(bad("`items` must not be empty".into()));
    }
    let max = node.publish.max_users;
    let items: Vec<Item> = raw_items
        .iter()
        .map(|raw| match parse_item(raw, max, node) {
            Ok((users, encoded)) => Item::Valid(users, encoded),
            Err(reason) => Item::Invalid(reason),
        })
        .collect();
    let recipients: usize = items
        .iter()
        .map(|item| match item {
            Item::Valid(users, _) => users.len(),
            Item::Invalid(_) => 0,
        })
        .sum();
    if recipients > max {
        return Err(bad(format!(
            "Too many users: {recipients} over all items (at most {max} per request)"
        )));
    }
    let publishes = items.into_iter().map(|item| async move {
        match item {
            Item::Valid(users, encoded) => match broker_publish(node, &users, encoded).await {
                Ok(report) => match result(users.len(), report, node) {
                    Ok(answer) => Outcome::Published(answer.published, answer),
                    Err(refusal) => Outcome::Failed(refusal),
                },
                Err(e) => Outcome::Failed(unavailable(e)),
            },
            Item::Invalid(reason) => Outcome::Invalid(reason),
        }
    });
    let outcomes = futures_util::future::join_all(publishes).await;
    let published: usize = outcomes
        .iter()
        .map(|o| match o {
            Outcome::Published(users, _) => *users,
            _ => 0,
        })
        .sum();
    let failed = outcomes.iter().find_map(|o| match o {
        Outcome::Failed(refusal) => Some(refusal.clone()),
        _ => None,
    });
    if let (0, Some(refusal)) = (published, failed) {
        // Every valid item failed at the broker: the request failed (as a single publish would).
        return Err(refusal);
    }
    let results: Vec<ItemAnswer> = outcomes
        .into_iter()
        .map(|o| match o {
            Outcome::Published(_, answer) => ItemAnswer::Published(answer),
            Outcome::Failed((status, error)) => ItemAnswer::Refused {
                error,
                status: status.as_u16(),
            },
            Outcome::Invalid(error) => ItemAnswer::Refused { error, status: 400 },
        })
        .collect();
    node.metrics.events_published.inc_by(published as u64);
    Ok(BatchAnswer { published, results })
}

/// What became of one item.
enum Outcome {
    /// Published to this many users, with the answer a single publish would get.
    Published(usize, PublishAnswer),
    /// The broker failed (the event may or may not have been published).
    Failed(Refusal),
    /// Refused before publishing (400).
    Invalid(String),
}

/// The answer to a batch: events published over all items, and each item's answer in order.
#[derive(Serialize)]
pub(super) struct BatchAnswer {
    published: usize,
    results: Vec<ItemAnswer>,
}

/// One item's answer: a publish answer, or why the item was not published.
#[derive(Serialize)]
#[serde(untagged)]
enum ItemAnswer {
    Published(PublishAnswer),
    Refused { error: String, status: u16 },
}

/// One item: an object `{"users": […], "event": {…}}` under the publish API's rules.
fn parse_item(raw: &RawValue, max: usize, node: &Node) -> Result<(Vec<UserId>, Bytes), String> {
    if !raw.get().starts_with('{') {
        return Err("Invalid item: expected an object {\"users\": […], \"event\": {…}}".into());
    }
    let request: PublishRequest =
        serde_json::from_str(raw.get()).map_err(|e| format!("Invalid item: {e}"))?;
    prepare(&request, max, node)
}
