//! Any node delivers any event (issue 3): whatever way an event is published — node A's publish
//! API, a legacy backend's raw `PUBLISH c:<id>` / `PUBLISH n:<id>`, the Rust `Publisher`, the
//! `gleepost-gateway publish` subcommand — it reaches the user's connections on every node,
//! exactly once per connection and in publish order.

use anyhow::{bail, ensure, Context, Result};
use gleepost_tests::redis_inspect::{numsub, user_channels};
use gleepost_tests::subcommands::publish_subcommand;
use gleepost_tests::{ensure_same_event, seed, Client, Gateway, RedisServer};
use serde_json::Value;

/// Every frame up to and including the marker event (`type` = `marker`).
async fn frames_until_marker(client: &mut Client) -> Result<Vec<Value>> {
    let mut frames = Vec::new();
    loop {
        let event = client
            .next_event()
            .await
            .with_context(|| format!("waiting for the marker after {} frames", frames.len()))?;
        let done = event["type"] == "marker";
        frames.push(event);
        if done {
            return Ok(frames);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn api_publish_on_node_a_reaches_a_user_connected_only_to_node_b() -> Result<()> {
    let redis = RedisServer::start().await?;
    let (a, b) = Gateway::two_on_redis(&redis, &[]).await?;
    let mut on_b = b.connect(9).await?;

    let subscribers = numsub(&redis, &user_channels(9)).await?;
    ensure!(
        subscribers.iter().all(|(_, n)| *n == 1),
        "only node B should be subscribed to user 9's channels: {subscribers:?}"
    );

    for event in [seed::MESSAGE, seed::NEW_CONVERSATION, seed::NOTIFICATION] {
        a.publish(&[9], event).await?;
        ensure_same_event(&on_b.next_text().await?, event)?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_publish_on_c_and_n_channels_reaches_node_b_verbatim() -> Result<()> {
    let redis = RedisServer::start().await?;
    let (a, b) = Gateway::two_on_redis(&redis, &[]).await?;
    let mut on_b = b.connect(9).await?;
    let _elsewhere = a.connect(10).await?; // node A is subscribed to other users only

    // Odd spacing, key order, number formats, escapes and an unknown member: all kept.
    let legacy = r#"{ "type" : "message", "location":"/conversations/67", "data" : {"z":1,"a":[1.50,2e3,-0.0],"s":"caf\u00e9 \"q\"\n"} , "extra":{"kept":true} }"#;
    let receivers = redis.publish("c:9", legacy.as_bytes()).await?;
    ensure!(
        receivers == 1,
        "PUBLISH c:9 reached {receivers} nodes, expected node B only"
    );
    let frame = on_b.next_text().await?;
    ensure!(
        frame == legacy,
        "raw c:9 payload not delivered verbatim:\n got  {frame}\n sent {legacy}"
    );

    let receivers = redis.publish("n:9", seed::NOTIFICATION.as_bytes()).await?;
    ensure!(
        receivers == 1,
        "PUBLISH n:9 reached {receivers} nodes, expected 1"
    );
    let frame = on_b.next_text().await?;
    ensure!(
        frame == seed::NOTIFICATION,
        "raw n:9 payload not delivered verbatim:\n got  {frame}\n sent {}",
        seed::NOTIFICATION
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn each_connection_of_a_user_on_both_nodes_gets_each_event_exactly_once_in_order(
) -> Result<()> {
    let redis = RedisServer::start().await?;
    let (a, b) = Gateway::two_on_redis(&redis, &[]).await?;
    // User 9: twice on node A, once on node B. User 10: once on node B, as a bystander.
    let mut nine = [
        a.connect(9).await?,
        a.connect(9).await?,
        b.connect(9).await?,
    ];
    let mut ten = b.connect(10).await?;

    // One subscription per node, however many connections the node holds for the user.
    let subscribers = numsub(&redis, &user_channels(9)).await?;
    ensure!(
        subscribers.iter().all(|(_, n)| *n == 2),
        "user 9's channels should have one subscriber per node: {subscribers:?}"
    );

    const N: u64 = 24;
    for seq in 0..N {
        let event = format!(r#"{{"type":"message","location":"/seq","data":{{"seq":{seq}}}}}"#);
        match seq % 4 {
            0 => drop(a.publish(&[9], &event).await?),
            1 => drop(b.publish(&[9], &event).await?),
            2 => drop(redis.publish("c:9", event.as_bytes()).await?),
            _ => drop(redis.publish("n:9", event.as_bytes()).await?),
        }
        let other = format!(r#"{{"type":"other","data":{{"seq":{seq}}}}}"#);
        a.publish(&[10], &other).await?;
    }
    a.publish(&[9, 10], r#"{"type":"marker","data":null}"#)
        .await?;

    for (i, conn) in nine.iter_mut().enumerate() {
        let frames = frames_until_marker(conn).await?;
        let seqs: Vec<u64> = frames[..frames.len() - 1]
            .iter()
            .map(|f| match (f["type"].as_str(), f["data"]["seq"].as_u64()) {
                (Some("message"), Some(seq)) => Ok(seq),
                _ => bail!("connection {i} of user 9 got a foreign frame: {f}"),
            })
            .collect::<Result<_>>()?;
        ensure!(
            seqs == (0..N).collect::<Vec<_>>(),
            "connection {i} of user 9 did not get each event exactly once in order: {seqs:?}"
        );
    }
    let frames = frames_until_marker(&mut ten).await?;
    let seqs: Vec<u64> = frames[..frames.len() - 1]
        .iter()
        .map(|f| match (f["type"].as_str(), f["data"]["seq"].as_u64()) {
            (Some("other"), Some(seq)) => Ok(seq),
            _ => bail!("user 10 got a frame meant for user 9: {f}"),
        })
        .collect::<Result<_>>()?;
    ensure!(
        seqs == (0..N).collect::<Vec<_>>(),
        "user 10 did not get its own events exactly once: {seqs:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn rust_publisher_reaches_users_on_every_node() -> Result<()> {
    let redis = RedisServer::start().await?;
    let (a, b) = Gateway::two_on_redis(&redis, &[]).await?;
    let mut nine = a.connect(9).await?;
    let mut ten = b.connect(10).await?;

    let publisher = gleepost_event::Publisher::connect(&redis.url()).await?;
    let event = gleepost_event::Event::from_json(seed::MESSAGE.as_bytes())?;
    let report = publisher.publish(&[9, 10], &event).await?;
    ensure!(report.users == 2, "publisher report: {report:?}");

    ensure_same_event(&nine.next_text().await?, seed::MESSAGE)?;
    ensure_same_event(&ten.next_text().await?, seed::MESSAGE)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_subcommand_reaches_connected_clients_on_both_nodes() -> Result<()> {
    let redis = RedisServer::start().await?;
    let (a, b) = Gateway::two_on_redis(&redis, &[]).await?;
    let mut nine = a.connect(9).await?;
    let mut ten = b.connect(10).await?;

    let event = r#"{"type":"video-ready","location":"/posts/12","data":{"post":12,"url":"https://example.invalid/v.mp4"}}"#;
    publish_subcommand(&[("REDIS_URL", &redis.url())], &[9, 10], event).await?;

    ensure_same_event(&nine.next_text().await?, event)?;
    ensure_same_event(&ten.next_text().await?, event)?;
    Ok(())
}
