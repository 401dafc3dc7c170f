//! Bad payloads on a user's channel (issue 3): not JSON, not an object, no `type`, oversize are
//! dropped and counted by reason; valid events on the same channel keep flowing, verbatim.

use std::collections::BTreeMap;

use anyhow::{ensure, Result};
use gleepost_tests::{Gateway, RedisServer};

const MALFORMED: &str = "gleepost_gateway_broker_malformed_payloads_total";

#[tokio::test(flavor = "multi_thread")]
async fn malformed_payloads_are_counted_by_reason_and_not_delivered_while_valid_events_flow(
) -> Result<()> {
    let redis = RedisServer::start().await?;
    let gw = Gateway::on_redis(&redis, &["--max-event-bytes", "1024"]).await?;
    let mut client = gw.connect(9).await?;

    let first = r#"{"type":"message","data":{"n":1}}"#;
    let oversize = format!(r#"{{"type":"message","data":"{}"}}"#, "a".repeat(2_000));
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("not_json", b"not json at all".to_vec()),
        ("not_json", br#"{"type":"message","data":"#.to_vec()),
        ("not_json", b"\xff\xfe{}".to_vec()),
        ("not_object", b"[1,2,3]".to_vec()),
        ("not_object", br#"[{"type":"message","data":1}]"#.to_vec()),
        ("not_object", br#""message""#.to_vec()),
        ("not_object", b"42".to_vec()),
        ("no_type", br#"{"data":{"n":2}}"#.to_vec()),
        ("no_type", br#"{"type":"","data":1}"#.to_vec()),
        ("no_type", br#"{"type":7,"data":1}"#.to_vec()),
        ("oversize", oversize.into_bytes()),
    ];
    let marker = r#"{"type":"marker","data":{"n":3}}"#;

    redis.publish("c:9", first.as_bytes()).await?;
    for (i, (_, payload)) in bad.iter().enumerate() {
        let channel = if i % 2 == 0 { "c:9" } else { "n:9" };
        let receivers = redis.publish(channel, payload).await?;
        ensure!(receivers == 1, "the node is not subscribed to {channel}");
    }
    redis.publish("c:9", marker.as_bytes()).await?;

    // Only the valid events arrive, in order and verbatim: the next frame after `first` is the
    // marker, so nothing malformed slipped through in between.
    let got = client.next_text().await?;
    ensure!(got == first, "first frame: {got}");
    let got = client.next_text().await?;
    ensure!(
        got == marker,
        "after the malformed payloads, expected the marker, got {got}"
    );

    // The node handled the bad payloads before the marker, so the counters are final.
    let mut want: BTreeMap<&str, f64> = BTreeMap::new();
    for (reason, _) in &bad {
        *want.entry(reason).or_default() += 1.0;
    }
    for (reason, count) in want {
        let sample = format!(r#"{MALFORMED}{{reason="{reason}"}}"#);
        let value = gw.metric(&sample).await?;
        ensure!(value == count, "{sample} = {value}, expected {count}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_on_the_probe_channel_is_counted_and_the_node_stays_ready() -> Result<()> {
    let redis = RedisServer::start().await?;
    let gw = Gateway::on_redis(&redis, &[]).await?;
    let mut conn = redis.connection().await?;
    let channels: Vec<String> = redis::cmd("PUBSUB")
        .arg(&["CHANNELS", "gp:probe:*"])
        .query_async(&mut conn)
        .await?;
    ensure!(channels.len() == 1, "probe channels: {channels:?}");
    // Not a probe: unparsable, a send time in this node's future, a zero send time.
    let bad: [&[u8]; 4] = [b"garbage", b"1:2:3", b"18446744073709551615:1", b"0:1"];
    for payload in bad {
        let receivers = redis.publish(&channels[0], payload).await?;
        ensure!(
            receivers == 1,
            "the node is not subscribed to its probe channel"
        );
    }
    let sample = format!(r#"{MALFORMED}{{reason="bad_probe"}}"#);
    gleepost_tests::metrics::wait_metric(&gw, &sample, bad.len() as f64).await?;
    // Its own probes still count: it stays ready, and delivers.
    gw.wait_ready(true, std::time::Duration::from_secs(30))
        .await?;
    let mut client = gw.connect(9).await?;
    let event = r#"{"type":"marker","data":1}"#;
    redis.publish("c:9", event.as_bytes()).await?;
    let got = client.next_text().await?;
    ensure!(got == event, "got {got}");
    Ok(())
}
