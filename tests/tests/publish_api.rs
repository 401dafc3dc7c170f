//! `POST /v1/publish`: every validation rule answers 4xx with a JSON `{"error": …}` that says
//! what is wrong, a wrong or missing key answers 401, and nothing rejected is delivered.

use anyhow::{ensure, Context, Result};
use gleepost_tests::http::{self, HttpResponse};
use gleepost_tests::{data_text, seed, Client, Gateway, GatewayOptions, API_KEY};

/// Limits small enough to test: 3 users per request, 1 KiB events, 8 KiB bodies.
async fn gateway() -> Result<Gateway> {
    Gateway::start(GatewayOptions::default().arg(&[
        "--max-publish-users",
        "3",
        "--max-event-bytes",
        "1024",
        "--max-publish-body",
        "8192",
    ]))
    .await
}

/// A valid event with a marker in its data.
fn marker(n: u32) -> String {
    format!(r#"{{"type":"marker","location":"/m","data":{{"marker":{n}}}}}"#)
}

/// The response is `status` with a JSON `{"error": "..."}` mentioning `needle` (any case).
fn assert_error(what: &str, res: &HttpResponse, status: u16, needle: &str) -> Result<()> {
    ensure!(
        res.status == status,
        "{what}: status {} (want {status}), body {}",
        res.status,
        res.body_text()
    );
    let content_type = res.header("content-type").unwrap_or_default();
    ensure!(
        content_type.starts_with("application/json"),
        "{what}: content-type {content_type:?}"
    );
    let body = res.json().with_context(|| what.to_string())?;
    let obj = body.as_object().context("error body is not an object")?;
    ensure!(obj.len() == 1, "{what}: unexpected members in {body}");
    let message = body["error"]
        .as_str()
        .with_context(|| format!("{what}: no error string in {body}"))?;
    ensure!(
        message.to_lowercase().contains(&needle.to_lowercase()),
        "{what}: error {message:?} does not mention {needle:?}"
    );
    Ok(())
}

/// The next frame of `client` is `marker(n)`: nothing else arrived before it.
async fn assert_next_is_marker(client: &mut Client, n: u32) -> Result<()> {
    let frame = client.next_text().await?;
    let expected = format!(r#"{{"marker":{n}}}"#);
    ensure!(
        data_text(&frame) == Some(expected.as_str()),
        "expected marker {n} first, got {frame}"
    );
    Ok(())
}

/// Request bodies and the 400 error each must produce (a word its message must contain).
fn invalid_requests() -> Vec<(&'static str, String, &'static str)> {
    let ok = seed::MESSAGE;
    let event = |members: &str| format!(r#"{{"users":[9],"event":{{{members}}}}}"#);
    let long_type = "t".repeat(65);
    let long_location = format!("/{}", "l".repeat(512));
    let big_data = "x".repeat(1100);
    vec![
        ("body not JSON", "this is not json".into(), "body"),
        ("body truncated", r#"{"users":[9],"event":"#.into(), "body"),
        ("body an array", format!("[[9],{ok}]"), "body"),
        (
            "unknown member",
            format!(r#"{{"users":[9],"event":{ok},"extra":1}}"#),
            "extra",
        ),
        ("missing users", format!(r#"{{"event":{ok}}}"#), "users"),
        (
            "users null",
            format!(r#"{{"users":null,"event":{ok}}}"#),
            "users",
        ),
        (
            "users empty",
            format!(r#"{{"users":[],"event":{ok}}}"#),
            "empty",
        ),
        (
            "users not an array",
            format!(r#"{{"users":9,"event":{ok}}}"#),
            "users",
        ),
        (
            "users an object",
            format!(r#"{{"users":{{"id":9}},"event":{ok}}}"#),
            "users",
        ),
        (
            "users negative",
            format!(r#"{{"users":[9,-1],"event":{ok}}}"#),
            "users",
        ),
        (
            "users strings",
            format!(r#"{{"users":["9"],"event":{ok}}}"#),
            "users",
        ),
        (
            "users fractional",
            format!(r#"{{"users":[9.5],"event":{ok}}}"#),
            "users",
        ),
        (
            "users too big",
            format!(r#"{{"users":[99999999999999999999999],"event":{ok}}}"#),
            "users",
        ),
        (
            "users duplicate",
            format!(r#"{{"users":[9,10,9],"event":{ok}}}"#),
            "duplicate",
        ),
        (
            "users too many",
            format!(r#"{{"users":[9,10,11,12],"event":{ok}}}"#),
            "too many",
        ),
        ("missing event", r#"{"users":[9]}"#.into(), "event"),
        (
            "event null",
            r#"{"users":[9],"event":null}"#.into(),
            "event",
        ),
        (
            "event a string",
            r#"{"users":[9],"event":"message"}"#.into(),
            "object",
        ),
        (
            "event an array",
            format!(r#"{{"users":[9],"event":[{ok}]}}"#),
            "object",
        ),
        (
            "missing type",
            event(r#""location":"/x","data":{}"#),
            "type",
        ),
        ("type empty", event(r#""type":"","data":{}"#), "empty"),
        ("type not a string", event(r#""type":7,"data":{}"#), "type"),
        (
            "type too long",
            event(&format!(r#""type":"{long_type}","data":{{}}"#)),
            "65",
        ),
        (
            "type upper case",
            event(r#""type":"Message","data":{}"#),
            "'M'",
        ),
        (
            "type with a space",
            event(r#""type":"new conversation","data":{}"#),
            "type",
        ),
        (
            "type with a slash",
            event(r#""type":"a/b","data":{}"#),
            "type",
        ),
        (
            "location relative",
            event(r#""type":"x","location":"conversations/67","data":{}"#),
            "start with",
        ),
        (
            "location empty",
            event(r#""type":"x","location":"","data":{}"#),
            "location",
        ),
        (
            "location not a string",
            event(r#""type":"x","location":67,"data":{}"#),
            "location",
        ),
        (
            "location too long",
            event(&format!(
                r#""type":"x","location":"{long_location}","data":{{}}"#
            )),
            "513",
        ),
        (
            "missing data",
            event(r#""type":"x","location":"/x""#),
            "data",
        ),
        (
            "event too large",
            event(&format!(r#""type":"x","data":"{big_data}""#)),
            "1024",
        ),
        (
            "event with an id (ids are assigned by the gateway)",
            event(r#""type":"x","data":{},"id":"abc-1-0""#),
            "id",
        ),
    ]
}

#[tokio::test]
async fn every_validation_rule_is_a_400_with_a_json_reason_and_nothing_is_delivered() -> Result<()>
{
    let gw = gateway().await?;
    let mut nine = gw.connect(9).await?;
    let cases = invalid_requests();
    for (what, body, needle) in &cases {
        let res = gw.publish_raw(body).await?;
        assert_error(what, &res, 400, needle)?;
    }
    let rejected = gw
        .metric(r#"gleepost_gateway_publish_requests_total{status="400"}"#)
        .await?;
    ensure!(
        rejected == cases.len() as f64,
        "{rejected} requests counted as 400"
    );
    ensure!(gw.metric("gleepost_gateway_events_published_total").await? == 0.0);

    gw.publish(&[9], &marker(1)).await?;
    assert_next_is_marker(&mut nine, 1).await
}

#[tokio::test]
async fn values_at_the_limits_are_accepted() -> Result<()> {
    let gw = gateway().await?;
    let mut clients = Vec::new();
    for user in [9, 10, 11] {
        clients.push(gw.connect(user).await?);
    }
    let kind = format!("a-z.0_9{}", "t".repeat(57)); // 64 characters
    let location = format!("/{}", "l".repeat(511)); // 512 characters
    let event = format!(r#"{{"type":"{kind}","location":"{location}","data":null}}"#);
    let result = gw.publish(&[9, 10, 11], &event).await?;
    ensure!(result["published"] == 3, "publish result {result}");
    for client in &mut clients {
        let frame = client.next_event().await?;
        ensure!(frame["type"] == kind.as_str() && frame["location"] == location.as_str());
        ensure!(frame["data"].is_null());
    }
    // `users: [0]` is a user id like any other.
    gw.publish(&[0], &marker(0)).await?;
    Ok(())
}

#[tokio::test]
async fn body_over_the_limit_is_413_json() -> Result<()> {
    let gw = gateway().await?;
    let mut nine = gw.connect(9).await?;
    let padding = "p".repeat(9000);
    let body = format!(r#"{{"users":[9],"event":{{"type":"x","data":"{padding}"}}}}"#);
    let res = gw.publish_raw(&body).await?;
    assert_error("body over --max-publish-body", &res, 413, "large")?;

    gw.publish(&[9], &marker(2)).await?;
    assert_next_is_marker(&mut nine, 2).await
}

#[tokio::test]
async fn wrong_or_missing_api_key_is_401_json() -> Result<()> {
    let gw = gateway().await?;
    let mut nine = gw.connect(9).await?;
    let body = format!(r#"{{"users":[9],"event":{}}}"#, seed::MESSAGE);
    let wrong = format!("Bearer {API_KEY}x");
    let prefix = format!("Bearer {}", &API_KEY[..API_KEY.len() - 1]);
    let basic = format!("Basic {API_KEY}");
    let bare = API_KEY.to_string();
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("no Authorization", vec![]),
        ("wrong key", vec![("Authorization", &wrong)]),
        ("a prefix of the key", vec![("Authorization", &prefix)]),
        ("empty bearer", vec![("Authorization", "Bearer")]),
        ("Basic scheme", vec![("Authorization", &basic)]),
        ("bare key", vec![("Authorization", &bare)]),
    ];
    for (what, headers) in &cases {
        let mut headers = headers.clone();
        headers.push(("Content-Type", "application/json"));
        let res =
            http::request(&gw.admin, "POST", "/v1/publish", &headers, body.as_bytes()).await?;
        assert_error(what, &res, 401, "key")?;
    }
    let unauthorized = gw
        .metric(r#"gleepost_gateway_publish_requests_total{status="401"}"#)
        .await?;
    ensure!(
        unauthorized == cases.len() as f64,
        "{unauthorized} counted as 401"
    );

    gw.publish(&[9], &marker(3)).await?;
    assert_next_is_marker(&mut nine, 3).await
}

#[tokio::test]
async fn other_methods_and_paths_are_json_errors() -> Result<()> {
    let gw = gateway().await?;
    let auth = format!("Bearer {API_KEY}");
    for (method, path) in [
        ("GET", "/v1/publish"),
        ("PUT", "/v1/publish/batch"),
        ("POST", "/healthz"),
        ("DELETE", "/v1/presence"),
    ] {
        let res = http::request(&gw.admin, method, path, &[("Authorization", &auth)], b"").await?;
        assert_error(&format!("{method} {path}"), &res, 405, "method not allowed")?;
    }
    for path in ["/v1/nothing", "/v1/publish/", "/healthz/x", "/"] {
        let res = gw.admin_get(path).await?;
        assert_error(&format!("GET {path}"), &res, 404, "not found")?;
    }
    // The query string is not part of the path.
    let res = gw.admin_get("/healthz?probe=1").await?;
    ensure!(
        res.status == 200,
        "GET /healthz?probe=1 answered {}",
        res.status
    );
    Ok(())
}

/// A publish body for user 9 whose event encodes to exactly `size` bytes.
fn event_of_size(size: usize) -> String {
    let pad = "p".repeat(size - r#"{"type":"x","data":""}"#.len());
    format!(r#"{{"users":[9],"event":{{"type":"x","data":"{pad}"}}}}"#)
}

#[tokio::test]
async fn the_size_limit_holds_for_the_event_as_delivered_id_included() -> Result<()> {
    // With history on, the gateway keeps room for the id it adds (60 bytes at most): an event
    // that fits only without it is refused rather than accepted and then dropped by every node
    // as oversize (the Redis path checks the delivered payload against the same limit).
    let redis = gleepost_tests::RedisServer::start().await?;
    let on_redis = Gateway::on_redis(&redis, &["--max-event-bytes", "1024"]).await?;
    let embedded =
        Gateway::start(GatewayOptions::default().arg(&["--max-event-bytes", "1024"])).await?;
    let room = 1024 - 60;
    for (broker, gw) in [("redis", &on_redis), ("embedded", &embedded)] {
        let mut nine = gw.connect(9).await?;
        let res = gw.publish_raw(&event_of_size(room + 1)).await?;
        assert_error(
            &format!("{broker}: one byte over"),
            &res,
            400,
            &room.to_string(),
        )?;
        let res = gw.publish_raw(&event_of_size(room)).await?;
        ensure!(
            res.status == 200,
            "{broker}: {} {}",
            res.status,
            res.body_text()
        );
        let frame = nine.next_text().await?;
        let event: serde_json::Value = serde_json::from_str(&frame)?;
        ensure!(
            event["id"].is_string() && frame.len() <= 1024,
            "{broker}: delivered {} bytes: {event}",
            frame.len()
        );
    }
    let dropped = on_redis
        .metric(r#"gleepost_gateway_broker_malformed_payloads_total{reason="oversize"}"#)
        .await?;
    ensure!(dropped == 0.0, "{dropped} payloads dropped as oversize");

    // With history off no id is added: the whole limit is the event's.
    let plain = Gateway::on_redis(
        &redis,
        &["--max-event-bytes", "1024", "--history-size", "0"],
    )
    .await?;
    let mut nine = plain.connect(9).await?;
    let res = plain.publish_raw(&event_of_size(1024)).await?;
    ensure!(
        res.status == 200,
        "history off: {} {}",
        res.status,
        res.body_text()
    );
    ensure!(nine.next_text().await?.len() == 1024);
    Ok(())
}
