//! Event ids are the gateway's (issue 16): an `id` member inside a raw legacy payload
//! (`PUBLISH c:<id>`) is delivered verbatim but never feeds deduplication or gap repair, so a
//! legacy publisher (or a hostile one) cannot make later API events silently undelivered, and
//! one user's traffic never moves another user's gap-repair point.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use gleepost_event::{Event, Publisher};
use gleepost_tests::eventually;
use gleepost_tests::resume::{parse_frame, publish_seq, seq_event, Frame};
use gleepost_tests::{Client, Gateway, RedisServer};

const READY: Duration = Duration::from_secs(15);

/// The next frame must be numbered event `seq`.
async fn expect_seq(client: &mut Client, seq: u64) -> Result<()> {
    let text = client
        .next_text()
        .await
        .with_context(|| format!("waiting for seq {seq}"))?;
    match parse_frame(&text)? {
        Frame::Event { seq: got, .. } if got == seq => Ok(()),
        other => anyhow::bail!("expected seq {seq}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_legacy_payload_with_a_far_future_id_does_not_swallow_later_api_events() -> Result<()> {
    let redis = RedisServer::start().await?;
    let gw = Gateway::on_redis(&redis, &[]).await?;
    let mut client = gw.connect(9).await?;
    let first = publish_seq(&gw, 9, 1).await?;
    expect_seq(&mut client, 1).await?;
    // The id of user 9's epoch with a position far in the future.
    let epoch = first.rsplitn(3, '-').nth(2).context("id without epoch")?;
    let poison =
        format!(r#"{{"type":"message","data":{{"poison":1}},"id":"{epoch}-99999999999999-0"}}"#);
    redis.publish("c:9", poison.as_bytes()).await?;
    ensure!(
        client.next_text().await? == poison,
        "the legacy payload is delivered verbatim"
    );
    for seq in 2..=4 {
        publish_seq(&gw, 9, seq).await?;
        expect_seq(&mut client, seq).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn one_users_legacy_ids_do_not_move_another_users_gap_repair_point() -> Result<()> {
    let redis = RedisServer::start().await?;
    let gw = Gateway::on_redis(&redis, &[]).await?;
    let mut poisoned = gw.connect(9).await?;
    let mut fresh = gw.connect(10).await?; // receives nothing before the outage
    let poison = r#"{"type":"message","data":{},"id":"zz-99999999999999-0"}"#;
    redis.publish("c:9", poison.as_bytes()).await?;
    ensure!(
        poisoned.next_text().await? == poison,
        "legacy payload delivered"
    );

    // A pub/sub outage during which user 10 gets an event: SUBSCRIBE is denied, so the node
    // stays without a subscription until it is allowed again.
    redis
        .cmd::<String>(&["ACL", "SETUSER", "default", "-subscribe"])
        .await?;
    let killed: i64 = redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).await?;
    ensure!(killed == 1, "{killed} pub/sub connections killed");
    gw.wait_ready(false, READY).await?;
    let publisher = Publisher::connect(&redis.url()).await?;
    let report = publisher
        .publish(&[10], &Event::from_json(seq_event(1, 0).as_bytes())?)
        .await?;
    ensure!(
        report.receivers == 0,
        "published while no node was subscribed"
    );
    redis
        .cmd::<String>(&["ACL", "SETUSER", "default", "+subscribe"])
        .await?;
    eventually(READY, "resubscribed", || async {
        ensure!(gw.is_ready().await, "not ready");
        Ok(())
    })
    .await?;
    // Gap repair from the probe's time, not from user 9's far-future id.
    expect_seq(&mut fresh, 1).await?;
    Ok(())
}
