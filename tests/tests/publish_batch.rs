//! `POST /v1/publish/batch`: many publishes in one request. Each item is answered on its own
//! (a bad item is a per-item 400, the others are published), the envelope's errors are a 400
//! for the whole request, the recipients of all items together are bounded, and through Redis
//! every item reaches the user's connections on another node once, in order, with the ids the
//! answer gave.

use anyhow::{ensure, Context, Result};
use gleepost_tests::{data_text, Gateway, GatewayOptions, RedisServer};
use serde_json::Value;

/// A valid event with a marker in its data.
fn marker(n: u32) -> String {
    format!(r#"{{"type":"marker","location":"/m","data":{{"marker":{n}}}}}"#)
}

/// A batch body of `(users, event)` items.
fn batch(items: &[(&str, String)]) -> String {
    let items: Vec<String> = items
        .iter()
        .map(|(users, event)| format!(r#"{{"users":{users},"event":{event}}}"#))
        .collect();
    format!(r#"{{"items":[{}]}}"#, items.join(","))
}

#[tokio::test(flavor = "multi_thread")]
async fn items_are_answered_one_by_one_and_bad_items_do_not_stop_good_ones() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default().arg(&["--max-publish-users", "3"])).await?;
    let mut nine = gw.connect(9).await?;
    let mut ten = gw.connect(10).await?;
    let body = batch(&[
        ("[9]", marker(1)),
        ("[9]", r#"{"type":"Bad type","data":{}}"#.into()),
        ("[10,9]", marker(2)),
        ("[]", marker(3)),
    ]);
    let res = gw.admin_post("/v1/publish/batch", &body).await?;
    ensure!(
        res.status == 200,
        "status {}: {}",
        res.status,
        res.body_text()
    );
    let answer = res.json()?;
    ensure!(answer["published"] == 3, "3 user copies: {answer}");
    let results = answer["results"].as_array().context("results")?;
    ensure!(results.len() == 4, "one result per item: {answer}");
    ensure!(
        results[0]["published"] == 1 && results[0]["online"]["9"] == true,
        "{answer}"
    );
    for bad in [&results[1], &results[3]] {
        ensure!(bad["status"] == 400, "bad item answered {bad}");
        ensure!(bad["error"].is_string(), "bad item answered {bad}");
    }
    ensure!(results[2]["published"] == 2, "{answer}");
    for (client, expected) in [(&mut nine, [1, 2].as_slice()), (&mut ten, &[2])] {
        for n in expected {
            let frame = client.next_text().await?;
            let want = format!(r#"{{"marker":{n}}}"#);
            ensure!(data_text(&frame) == Some(want.as_str()), "got {frame}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn envelope_errors_refuse_the_whole_request_with_a_json_reason() -> Result<()> {
    let gw = Gateway::start(GatewayOptions::default().arg(&["--max-publish-users", "3"])).await?;
    let mut nine = gw.connect(9).await?;
    let cases = [
        ("not an object", format!("[{}]", marker(1)), "object"),
        ("no items", "{}".to_string(), "items"),
        ("empty items", r#"{"items":[]}"#.to_string(), "empty"),
        ("unknown member", r#"{"items":[],"x":1}"#.to_string(), "x"),
        (
            "too many recipients over all items",
            batch(&[("[9,10]", marker(1)), ("[11,12]", marker(2))]),
            "too many",
        ),
    ];
    for (what, body, needle) in cases {
        let res = gw.admin_post("/v1/publish/batch", &body).await?;
        ensure!(
            res.status == 400,
            "{what}: status {} {}",
            res.status,
            res.body_text()
        );
        let reason = res.json()?["error"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase();
        ensure!(reason.contains(needle), "{what}: reason {reason:?}");
    }
    let unauthorized = gleepost_tests::http::request(
        &gw.admin,
        "POST",
        "/v1/publish/batch",
        &[("Content-Type", "application/json")],
        batch(&[("[9]", marker(1))]).as_bytes(),
    )
    .await?;
    ensure!(
        unauthorized.status == 401,
        "no key: {}",
        unauthorized.status
    );
    // Nothing refused was delivered: the next event is the first accepted one.
    gw.publish(&[9], &marker(7)).await?;
    let frame = nine.next_text().await?;
    ensure!(data_text(&frame) == Some(r#"{"marker":7}"#), "got {frame}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_through_redis_reaches_the_other_node_in_order_with_its_ids() -> Result<()> {
    let redis = RedisServer::start().await?;
    let (a, b) = Gateway::two_on_redis(&redis, &[]).await?;
    let users: Vec<u64> = (100..120).collect();
    let mut clients = Vec::new();
    for &user in &users {
        clients.push(b.connect(user).await?);
    }
    // 300 items: 15 per user, interleaved, in three requests of 100.
    let mut answered: Vec<Vec<String>> = vec![Vec::new(); users.len()];
    for request in 0..3u32 {
        let items: Vec<(String, String)> = (0..100u32)
            .map(|i| {
                let n = request * 100 + i;
                (
                    format!("[{}]", users[(n as usize) % users.len()]),
                    marker(n),
                )
            })
            .collect();
        let items: Vec<(&str, String)> =
            items.iter().map(|(u, e)| (u.as_str(), e.clone())).collect();
        let res = a.admin_post("/v1/publish/batch", &batch(&items)).await?;
        ensure!(
            res.status == 200,
            "status {}: {}",
            res.status,
            res.body_text()
        );
        let answer = res.json()?;
        ensure!(answer["published"] == 100, "{answer}");
        for (i, result) in answer["results"]
            .as_array()
            .context("results")?
            .iter()
            .enumerate()
        {
            let n = request as usize * 100 + i;
            let user = users[n % users.len()];
            let id = result["ids"][user.to_string()]
                .as_str()
                .with_context(|| format!("no id for item {n}: {result}"))?;
            answered[n % users.len()].push(id.to_string());
        }
    }
    for (k, client) in clients.iter_mut().enumerate() {
        for (j, id) in answered[k].iter().enumerate() {
            let event: Value = client.next_event().await?;
            let n = (j * users.len() + k) as u64;
            ensure!(
                event["data"]["marker"] == n,
                "user {}: got {event}, want {n}",
                users[k]
            );
            ensure!(
                event["id"] == id.as_str(),
                "user {}: id {} != {id}",
                users[k],
                event["id"]
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_answers_503_with_a_reason_and_the_node_stays_up() -> Result<()> {
    let mut redis = RedisServer::start().await?;
    let (a, _b) = Gateway::two_on_redis(&redis, &[]).await?;
    redis.kill();
    let res = a
        .admin_post(
            "/v1/publish/batch",
            &batch(&[("[9]", marker(1)), ("[10]", marker(2))]),
        )
        .await?;
    ensure!(
        res.status == 503,
        "status {}: {}",
        res.status,
        res.body_text()
    );
    ensure!(res.json()?["error"].is_string(), "{}", res.body_text());
    ensure!(
        a.admin_get("/healthz").await?.status == 200,
        "the node must stay alive"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_whose_history_key_is_of_the_wrong_type_is_refused_alone() -> Result<()> {
    // User 5's history key holds a string (written by another program): Redis refuses that
    // user's copy (WRONGTYPE). Before, the script call stopped there: the users before it were
    // published, yet the whole request (and every request sharing the call) was answered 503,
    // so a retry published their event twice.
    let redis = RedisServer::start().await?;
    let gw = Gateway::on_redis(&redis, &[]).await?;
    let (mut one, mut two) = (gw.connect(1).await?, gw.connect(2).await?);
    let key = gleepost_event::keys::history_key(5);
    let () = redis.cmd(&["SET", &key, "not a stream"]).await?;

    let res = gw
        .publish_raw(&format!(r#"{{"users":[1,5,2],"event":{}}}"#, marker(1)))
        .await?;
    ensure!(res.status == 200, "{}: {}", res.status, res.body_text());
    let answer = res.json()?;
    ensure!(answer["published"] == 2, "{answer}");
    ensure!(
        answer["ids"]["1"].is_string() && answer["ids"]["2"].is_string(),
        "{answer}"
    );
    ensure!(answer["ids"].get("5").is_none(), "{answer}");
    let refused = answer["failed"]["5"].as_str().unwrap_or_default();
    ensure!(refused.contains("WRONGTYPE"), "{answer}");

    // Alone, user 5 gets 503 (nothing was published); in a batch, only that item fails.
    let res = gw
        .publish_raw(&format!(r#"{{"users":[5],"event":{}}}"#, marker(2)))
        .await?;
    ensure!(res.status == 503, "{}: {}", res.status, res.body_text());
    let body = batch(&[("[5]", marker(3)), ("[1]", marker(4))]);
    let res = gw.admin_post("/v1/publish/batch", &body).await?;
    ensure!(res.status == 200, "{}: {}", res.status, res.body_text());
    let answer = res.json()?;
    let results = answer["results"].as_array().context("results")?;
    ensure!(results[0]["status"] == 503, "{answer}");
    ensure!(results[1]["published"] == 1, "{answer}");

    for (client, expected) in [(&mut one, [1, 4].as_slice()), (&mut two, &[1])] {
        for n in expected {
            let frame = client.next_text().await?;
            let want = format!(r#"{{"marker":{n}}}"#);
            ensure!(data_text(&frame) == Some(want.as_str()), "got {frame}");
        }
    }
    let refused = gw.metric("gleepost_gateway_events_refused_total").await?;
    ensure!(refused == 3.0, "events_refused_total {refused}");
    Ok(())
}
